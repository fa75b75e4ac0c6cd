"""No copy drift: a top-level function or class defined in two or more files of algorithms/ under the same
name has the same source in each (as ast.unparse writes it: comments and layout aside, docstring included).

Where a file's version differs by design, ALLOWED names the name and the file with the reason in one line.
The version shared by most files is the reference; each file outside it needs an entry. Names in PER_FILE
are each file's own by the anatomy of a file (CONTRIBUTING.md) and are not compared.
"""

from __future__ import annotations

from code_shape import ALGORITHMS, definition_groups

PER_FILE = {
    "Args": "each file's own hyperparameters",
    "main": "each file's own training loop",
    "check_args": "validates each file's own Args",
    "load_model": "builds each file's own network from its checkpoint",
}

# (name, file): why this file's version differs from the version most files share
ALLOWED: dict[tuple[str, str], str] = {
    # networks: each file's own architecture under the usual name
    ("Actor", "sac.py"): "a squashed Gaussian policy (tanh of a sampled Normal), not ddpg/td3's deterministic actor",
    ("Agent", "gail.py"): "one class for Discrete and Box: ppo.py's categorical actor or ppo_continuous_action.py's "
                          "Gaussian, with the observation statistics as buffers",
    ("Agent", "mappo.py"): "one actor and one critic shared by all agents with one-hot ids; a global-state (or "
                           "own-observation) critic with value normalisation",
    ("Actor", "dreamer.py"): "a unimix categorical or bounded-Normal policy on the world model's state [h, z]",
    ("Actor", "mbpo.py"): "sac.py's squashed Gaussian policy, the same text as sac.py's",
    ("Actor", "trpo.py"): "a stochastic categorical or Gaussian policy with the log-prob, entropy and KL the trust region needs",
    ("Agent", "preference_reward.py"): "ppo_continuous_action.py's Agent (Gaussian policy, action bounds, observation "
                                       "statistics), the same text",
    ("Agent", "dreamer.py"): "the world model and the actor; acts with a recurrent state carried from step to step",
    ("Agent", "ppo.py"): "separate categorical actor and critic MLPs (a2c/a3c's Agent serves Discrete and Box in one class)",
    ("Agent", "ppo_distributed.py"): "ppo.py's Agent (separate categorical actor and critic MLPs), the same text",
    ("Agent", "ppo_atari.py"): "the Nature CNN trunk shared by the actor and critic heads, on uint8 frames",
    ("Agent", "ppo_continuous_action.py"): "a Gaussian policy carrying the action bounds and observation statistics",
    ("QNetwork", "c51.py"): "an MLP with n_actions x n_atoms logits (one categorical return distribution per action)",
    ("QNetwork", "dqn_atari.py"): "the Nature CNN on uint8 frame stacks",
    ("QNetwork", "rainbow.py"): "adds noisy layers, a per-atom dueling head and an expected or distributional output",
    ("ReplayBuffer", "dqn.py"): "integer actions, one column per environment; the continuous-control buffer stores action vectors",
    ("ReplayBuffer", "c51.py"): "the same buffer as dqn.py (integer actions, one column per environment)",
    # Atari: evaluation and preprocessing that the flat-observation files do not need
    ("evaluate", "dqn_atari.py"): "epsilon-greedy (the paper's 0.05) over whole Atari games through make_env's wrappers",
    ("evaluate", "decision_transformer.py"): "return-conditioned: the episodes of every target step together, each "
                                             "fed its return-to-go (target minus the rewards so far) and the last K "
                                             "steps",
    ("evaluate", "iql_marl.py"): "mappo.py's evaluate, the same text: plays a PettingZoo parallel environment through "
                                 "BatchedParallelEnv and returns team returns; reads env_kwargs from a checkpoint",
    ("evaluate", "qmix.py"): "plays a PettingZoo parallel environment through BatchedParallelEnv and returns team "
                             "returns, the recurrent agents' hidden state and last action carried through each episode; "
                             "reads env_kwargs from a checkpoint",
    ("evaluate", "maddpg.py"): "team returns summed from evaluate_agent_returns (each agent's returns, which main also "
                               "sums by side), played through PaddedParallelEnv (agents of different observation sizes)",
    ("evaluate", "mappo.py"): "plays a PettingZoo parallel environment through BatchedParallelEnv and returns team "
                              "returns; reads env_kwargs from a checkpoint",
    ("evaluate", "dreamer.py"): "carries the recurrent state through each episode (reset at its start); --pixels observations",
    ("evaluate", "muzero.py"): "the search plays every episode at once (one batched search per move); a two-player game against a uniformly random opponent, the agent first in even episodes",
    ("evaluate", "ppo_atari.py"): "whole Atari games through make_env's wrappers, scored on the raw game score across lives",
    ("make_env", "dreamer.py"): "sac.py's make_env plus the --pixels wrappers (rgb_array render resized to 64x64)",
    ("make_env", "ppo_atari.py"): "the Atari preprocessing chain (the same text as dqn_atari.py's)",
    ("make_env", "dqn_atari.py"): "the Atari preprocessing chain (the same text as ppo_atari.py's)",
    # tabular files: one environment, often a book world written in the file, no vector env or video
    **{("make_env", f): "a tabular file makes one environment (a book world of its own or gym.make), not a vector-env thunk"
       for f in ("dyna_q.py", "expected_sarsa.py", "mc_prediction.py", "policy_evaluation.py", "policy_iteration.py",
                 "q_learning.py", "sarsa.py", "value_iteration.py", "maxent_irl.py", "reward_shaping.py")},
}


def drift(files) -> list[str]:
    problems = []
    for name, groups in sorted(definition_groups(files).items()):
        if name in PER_FILE:
            continue
        for group in groups[1:]:
            for f in group:
                if (name, f) not in ALLOWED:
                    problems.append(f"{name} in {f} differs from {', '.join(groups[0])}")
    return problems


def test_no_drift():
    problems = drift(sorted(ALGORITHMS.glob("*.py")))
    assert not problems, "same name, different code (make them one, or give the reason in ALLOWED):\n" + "\n".join(problems)


def test_allowed_entries_are_live():
    """An entry for a file that no longer differs (or no longer exists) is stale: remove it."""
    groups = definition_groups(sorted(ALGORITHMS.glob("*.py")))
    stale = [key for key in ALLOWED if not any(key[1] in g for g in groups.get(key[0], [])[1:])]
    assert not stale, f"ALLOWED entries that no longer apply: {stale}"


def test_drift_is_caught(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    helper = "def soft_update(t, o, tau):\n    return t + tau * (o - t)\n"
    a.write_text(helper)
    b.write_text("# the same, laid out differently\ndef soft_update(t, o, tau):\n    return t + tau*(o - t)\n")
    assert drift([a, b]) == []
    c.write_text(helper.replace("tau * (o - t)", "(1 - tau) * (o - t)"))
    assert drift([a, b, c]) == ["soft_update in c.py differs from a.py, b.py"]
