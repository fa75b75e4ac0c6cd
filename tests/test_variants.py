"""A variant is its base plus the smallest diff its algorithm or environment needs.

Changed code lines between a file and its base: for each differing hunk of a line diff, the larger of lines
removed and lines added, after leaving out blank lines, comments and standalone string literals (docstrings,
the one-line docstrings under each Args field); see tests/code_shape.py. CleanRL's ppo.py -> ppo_atari.py is
41 by the same count. Each new family adds its pairs here as it lands.
"""

from __future__ import annotations

import pytest
from code_shape import ALGORITHMS, changed_lines

# (base, variant): budget of changed code lines, and what the variant changes
BUDGETS = {
    ("ppo.py", "ppo_atari.py"): (80, "Atari preprocessing, a Nature CNN with a shared trunk, frames as uint8"),
    ("ppo.py", "ppo_continuous_action.py"): (120, "a Gaussian policy and observation / reward normalisation"),
    ("ppo.py", "ppo_distributed.py"): (175, "torch.distributed collectives (gradients, advantages, KL, flags, states), "
                                            "per-rank seeds and envs, rank-0 logging and checkpoints over all ranks"),
    ("dqn.py", "c51.py"): (100, "a categorical return distribution and its projection"),
    ("dqn.py", "dqn_atari.py"): (135, "Atari preprocessing, a Nature CNN, a replay memory that stores each frame once "
                                   "(with its own checkpoint state: frames, flags, per-column positions)"),
    ("ddpg.py", "td3.py"): (100, "twin critics, target policy smoothing, delayed actor updates"),
    # offline: the same dataset skeleton (loading, statistics, gradient steps, evaluation, long runs)
    ("bc.py", "td3_bc.py"): (150, "twin critics with targets, target policy smoothing, the lambda-weighted actor loss"),
    ("td3_bc.py", "iql.py"): (205, "a value network with expectile regression, a Gaussian policy by weighted regression, "
                                   "reward scaling, a cosine schedule"),
    ("td3_bc.py", "cql.py"): (255, "SAC's tanh-Gaussian actor and temperature, the conservative penalty over sampled "
                                   "actions, the Lagrange alpha', a discrete form"),
    # language models: sft.py's model, tasks and long-run form
    ("sft.py", "reward_model.py"): (215, "a scalar head on the last token, pairs from the model's own samples, the "
                                         "Bradley-Terry loss, pairwise accuracy"),
    ("sft.py", "dpo.py"): (290, "pairs from the model's own samples, reference log-probabilities computed once, the "
                                "sigmoid / IPO / hinge / robust losses and their logged rewards, a JSONL dataset, "
                                "each pair as one row with its prompt run once (a 4-D attention mask), the prompt-by-prompt "
                                "sign test against the SFT model"),
    ("sft.py", "constitutional_ai.py"): (435, "a constitution with its critic, revision by re-sampling and the "
                                              "SL-CAI set, rule and LM judges, pairs with soft labels, DPO on soft "
                                              "labels (dpo.py's one row per pair), two stages on one step counter"),
    ("sft.py", "grpo.py"): (365, "groups of sampled completions, verifiable rewards, group advantages, the clipped token "
                                 "ratio, k3 KL to a reference, three loss aggregations, a half-used batch in checkpoints, "
                                 "DAPO's dynamic sampling, the held-out sampled accuracy, a group's completions as one "
                                 "row with the prompt once (a 4-D attention mask)"),
    ("reward_model.py", "rlhf_ppo.py"): (410, "a policy, a frozen reference and a value model beside the reward model, "
                                               "per-token KL rewards, GAE over tokens, PPO epochs, the KL controller, "
                                               "InstructGPT's PPO-ptx term"),
    # multi-agent: iql_marl.py's batched PettingZoo loop, replay and long-run form
    ("iql_marl.py", "qmix.py"): (310, "recurrent agents over whole episodes, an episode buffer, the hypernetwork mixer "
                                      "on the global state, masked TD over padded episodes, reward standardisation"),
    ("iql_marl.py", "maddpg.py"): (300, "per-agent actors and centralised critics, the Gumbel-softmax, joint replay, "
                                        "agents of different sizes, per-side returns"),
}


@pytest.mark.parametrize("pair", sorted(BUDGETS), ids=lambda p: f"{p[0]}->{p[1]}")
def test_variant_within_budget(pair: tuple[str, str]):
    base, variant = pair
    budget, why = BUDGETS[pair]
    n = changed_lines((ALGORITHMS / base).read_text(), (ALGORITHMS / variant).read_text())
    assert n <= budget, (f"{variant} changes {n} code lines of {base}, over its budget of {budget} ({why}); "
                         f"see `python tests/code_shape.py changed algorithms/{base} algorithms/{variant}`")


def test_changed_lines_counts_code_only():
    base = '"""Doc."""\nimport os\n\n\ndef f(x):\n    """One."""\n    return x + 1  # note\n'
    same_code = '"""Another doc,\nlonger."""\nimport os\n# a comment\n\ndef f(x):\n    return x + 1\n'
    assert changed_lines(base, same_code) == 0
    # one line replaced by two: a hunk of 1 removed, 2 added counts 2; one added line elsewhere counts 1
    variant = 'import os\nimport sys\n\ndef f(x):\n    y = x * 2\n    return y + 1\n'
    assert changed_lines(base, variant) == 3
