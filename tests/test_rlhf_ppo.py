"""rlhf_ppo.py: the completion's log-probabilities (left-padded prompt, completion cut at eos) against a loop over
tokens, the completion mask, the per-token rewards (KL penalty at each token, the score at the last real token,
nothing after it) by hand, the leave-one-out (group) scores by hand and a rollout of several completions per prompt,
GAE over tokens against ppo.py's compute_gae on the same arrays, masked whitening, the
adaptive KL controller at hand values, the clipped policy and value losses by hand, the reward-model folder checks and
resume refusals; slow: from sft.py's model of 3-digit addition, a deliberately weak reward model is hacked (its score
of the greedy held-out responses rises while their exact match falls).
"""

from __future__ import annotations

import glob
import math

import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, loop_token_logprobs, run_main, scalars

rl = load_algo("rlhf_ppo")
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "8", "--eval-prompts", "8",
        "--max-new-tokens", "6", "--sft-updates", "0", "--rm-updates", "0", "--ppo-epochs", "1", "--log-every", "1"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = rl.build_tokenizer()
    return rl.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2).eval(), tokenizer


def test_completion_logprobs_against_a_loop_over_tokens():
    """Prompts of different lengths left-padded, completions right-padded and cut after their first eos (a token
    after the eos is dropped): each completion token's log-probability equals a loop over the unpadded prefix, 0 after
    the eos; the values are the head on the hidden state that predicts each token."""
    model, tokenizer = tiny_model()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = ["7+15=", "123+456=", "1+2="]
    rows = [tokenizer("22")["input_ids"] + [eos, pad, pad], tokenizer("5795")["input_ids"] + [eos],
            tokenizer("3")["input_ids"] + [eos] + tokenizer("77")["input_ids"] + [pad]]
    response_ids = torch.tensor(rows)
    mask = rl.completion_mask(response_ids, eos)
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] * 2 + [False] * 3]
    response_ids = response_ids.masked_fill(~mask, pad)
    prompt_ids, prompt_mask = rl.encode_prompts(tokenizer, prompts)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    width = prompt_ids.shape[1]
    with torch.no_grad():
        logprobs = rl.response_logprobs(model, input_ids, attention_mask, width)
    assert logprobs.shape == response_ids.shape
    for i, prompt in enumerate(prompts):
        n = int(mask[i].sum())
        expected = loop_token_logprobs(model, tokenizer(prompt)["input_ids"], response_ids[i, :n].tolist())
        torch.testing.assert_close(logprobs[i, :n].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5,
                                   atol=1e-5)
        assert (logprobs[i, n:] == 0).all()
    # the value of y_t: the head on the hidden state of the prefix (prompt, y_<t), fed alone
    critic = rl.reward_model_from(model, tokenizer).eval()
    with torch.no_grad():
        values = rl.token_values(critic, input_ids, attention_mask, width)
        prefix = tokenizer(prompts[1])["input_ids"] + response_ids[1, :2].tolist()
        alone = critic.score(critic.base_model(input_ids=torch.tensor([prefix])).last_hidden_state[0, -1])
    assert values.shape == response_ids.shape
    assert values[1, 2].item() == pytest.approx(alone.item(), abs=1e-5)


def test_per_token_rewards_by_hand():
    """beta 0.1: r_t = -0.1 (logp_t - logp_ref_t) on the real tokens, the score added at the last real token, 0 after
    it; the KL per completion is the sum of logp - logp_ref over its real tokens."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.2, -0.3, -0.4, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0], [-0.2, -0.1, -0.9, -0.5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rewards, kl = rl.per_token_rewards(logp, ref, torch.tensor([2.0, -1.0]), mask, 0.1)
    expected = torch.tensor([[-0.05, 0.1, 0.0 + 2.0, 0.0], [0.0, 0.02, -0.05, 0.0 - 1.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, torch.tensor([-0.5, 0.3]))  # a negative estimate is possible
    # a one-token completion: the score and the penalty at the same token
    rewards, kl = rl.per_token_rewards(logp[:1], ref[:1], torch.tensor([3.0]), torch.tensor([[1, 0, 0, 0]]), 1.0)
    torch.testing.assert_close(rewards, torch.tensor([[-0.5 + 3.0, 0.0, 0.0, 0.0]]))


def test_leave_one_out_scores_by_hand():
    """RLOO's baseline: each score less the mean of its prompt's other scores, prompts' completions in a row."""
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    out = rl.leave_one_out_scores(scores, 3)
    torch.testing.assert_close(out, torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0.0]))
    torch.testing.assert_close(rl.leave_one_out_scores(torch.tensor([5.0, 1.0, -2.0, -2.0]), 2),
                               torch.tensor([4.0, -4.0, 0.0, 0.0]))
    # the same as K / (K - 1) times the distance from the group's mean (RLOO's identity)
    groups = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(rl.leave_one_out_scores(groups.reshape(-1), 4),
                               (4 / 3 * (groups - groups.mean(dim=1, keepdim=True))).reshape(-1))


def test_group_baseline_runs_and_needs_a_group(tmp_path, capsys, monkeypatch):
    """Several completions per prompt with the group baseline train, each rollout holding every prompt's completions
    in a row (what leave_one_out_scores reads); the baseline without a group is bad input."""
    scored = []
    score = rl.score_with_reward_model
    monkeypatch.setattr(rl, "score_with_reward_model", lambda *a: scored.append(list(a[2])) or score(*a))
    out = run_main(rl, [*TINY, "--batch-size", "4", "--samples-per-prompt", "3", "--group-baseline",
                        "--num-minibatches", "3", "--total-updates", "6", "--eval-every", "6", "--log-every", "3"],
                   tmp_path / "a")
    assert out["global_step"] == 6 and math.isfinite(out["eval_reward_score"])
    rollouts = [p for p in scored if len(p) == 12]  # the evaluations score the 8 held-out prompts
    assert len(rollouts) == 2
    for prompts in rollouts:
        assert len(set(prompts)) == 4 and all(len(set(prompts[i:i + 3])) == 1 for i in range(0, 12, 3))
    assert_one_line_exit_2(lambda: run_main(rl, [*TINY, "--group-baseline"], tmp_path / "b"), "--samples-per-prompt",
                           capsys)
    assert_one_line_exit_2(lambda: run_main(rl, [*TINY, "--batch-size", "2", "--samples-per-prompt", "2",
                                                 "--num-minibatches", "3"], tmp_path / "c"), "num-minibatches", capsys)


def test_ptx_term_is_the_nll_of_fresh_demonstrations(tmp_path, monkeypatch):
    """--ptx-coef: each optimiser step computes sft_loss once more, on as many fresh demonstrations as the minibatch
    has completions, each the prompt's true answer (scored right by the task), never a held-out prompt; the logged
    losses/ptx_loss is that NLL (0 without the option, and sft_loss is then not called)."""
    batches = []
    sft_loss = rl.sft_loss

    def spy(logits, labels):
        batches.append(labels.clone())
        return sft_loss(logits, labels)

    monkeypatch.setattr(rl, "sft_loss", spy)
    drawn = []
    sample_pairs = rl.sample_pairs
    monkeypatch.setattr(rl, "sample_pairs", lambda *a: drawn.append(sample_pairs(*a)) or drawn[-1])
    out = run_main(rl, [*TINY, "--num-minibatches", "2", "--total-updates", "4", "--eval-every", "4", "--log-every",
                        "2", "--ptx-coef", "0.5"], tmp_path / "a")
    assert out["global_step"] == 4 and len(batches) == 4 and all(len(b) == 4 for b in batches)
    demos = [d for d in drawn if len(d[0]) == 4]  # the rollouts draw 8 prompts, each minibatch's demonstrations 4
    assert len(demos) == 4
    heldout = {p for p, _ in rl.heldout_pairs("addition", 3, 8)}
    for prompts, answers in demos:
        assert all(rl.SCORE["addition"](p, a)[0] for p, a in zip(prompts, answers, strict=True))
        assert not heldout & set(prompts)
    assert all(v > 0 for _, v in scalars(tmp_path / "a" / out["run_dir"])["losses/ptx_loss"])
    batches.clear()
    plain = run_main(rl, [*TINY, "--total-updates", "2", "--eval-every", "2", "--log-every", "2"], tmp_path / "b")
    assert not batches and [v for _, v in scalars(tmp_path / "b" / plain["run_dir"])["losses/ptx_loss"]] == [0.0]


def test_gae_over_tokens_against_ppo_compute_gae():
    """Ragged completions (lengths 5, 2, 1, 4): each row's advantages and returns equal ppo.py's compute_gae on that
    completion alone as one episode that terminates at its last token; 0 after it. gamma 1, lambda 1: A_t = sum of the
    rewards from t on - V_t."""
    ppo = load_algo("ppo")
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    lengths = [5, 2, 1, 4]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5)):
        adv, ret = rl.token_advantages(rewards, values, mask, gamma, lam)
        for i, n in enumerate(lengths):
            r, v = rewards[i, :n, None], values[i, :n, None]
            next_v = torch.cat([v[1:], torch.zeros(1, 1, dtype=torch.float64)])
            term = torch.zeros(n, 1, dtype=torch.float64)
            term[-1] = 1
            a, g = ppo.compute_gae(r, v, next_v, term, torch.zeros_like(term), gamma, lam)
            torch.testing.assert_close(adv[i, :n], a[:, 0])
            torch.testing.assert_close(ret[i, :n], g[:, 0])
            assert (adv[i, n:] == 0).all() and (ret[i, n:] == 0).all()
    adv, ret = rl.token_advantages(rewards, values, mask, 1.0, 1.0)
    for i, n in enumerate(lengths):
        to_go = rewards[i, :n].flip(0).cumsum(0).flip(0)
        torch.testing.assert_close(adv[i, :n], to_go - values[i, :n])
        torch.testing.assert_close(ret[i, :n], to_go)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -50.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (real - real.mean()) / (real.std() + 1e-8)
    out = rl.masked_whiten(x, mask)
    torch.testing.assert_close(out[mask], expected)
    assert (out[~mask] == 0).all()
    # what sits under the mask does not count
    torch.testing.assert_close(rl.masked_whiten(x.masked_fill(~mask, 7.0), mask), out)


def test_adaptive_kl_controller_at_hand_values():
    """Ziegler et al.: beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""
    assert rl.adaptive_kl_coef(0.05, 1.5, 1.0, 64, 10000) == pytest.approx(0.05 * (1 + 0.2 * 64 / 10000))  # clipped
    assert rl.adaptive_kl_coef(0.05, 0.9, 1.0, 64, 10000) == pytest.approx(0.05 * (1 - 0.1 * 64 / 10000))
    assert rl.adaptive_kl_coef(0.05, 0.0, 2.0, 100, 100) == pytest.approx(0.05 * 0.8)  # clipped below
    assert rl.adaptive_kl_coef(0.2, 2.0, 2.0, 64, 10) == 0.2  # on target: unchanged


def test_clipped_losses_by_hand():
    """Policy: ratios e^0.5 (A = 1: clipped at 1.2), e^-0.5 (A = -1: clipped at 0.8, loss 0.8), 1 (A = 2), a masked
    token. Value: old 0, returns 1: a move of 0.5 is clipped to 0.2 for one term, max((0.5-1)^2, (0.2-1)^2) = 0.64;
    a move of -0.1 is inside; 0.5 * mean."""
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.5, -0.5, 0.0, 3.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss = rl.clipped_policy_loss(new, old, adv, mask, 0.2)
    expected = (-min(math.exp(0.5), 1.2) + 0.8 - 2.0) / 3  # -A * ratio, the pessimistic (larger) term
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    v_loss = rl.clipped_value_loss(torch.tensor([[0.5, -0.1, 9.0]]), torch.zeros(1, 3), torch.ones(1, 3),
                                   torch.tensor([[1, 1, 0]], dtype=torch.bool), 0.2)
    assert v_loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2, abs=1e-6)
    # the gradient flows through the unclipped term only where it is the larger one
    values = torch.tensor([[0.5, -0.1]], requires_grad=True)
    rl.clipped_value_loss(values, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.2).backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.5 * (-0.1 - 1.0)]]))


def test_reward_model_folder_and_resume_refusals(tmp_path, capsys):
    """A causal LM folder is no reward model (it would load with a random head); policy and reward model from folders
    run, and their checkpoint holds neither; it resumes only with its own reward model and value init."""
    model, tokenizer = tiny_model(1)
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    assert_one_line_exit_2(lambda: run_main(rl, [*TINY, "--reward-model", str(tmp_path / "lm")], tmp_path / "a"),
                           "is not a reward model", capsys)
    rm = rl.reward_model_from(model, tokenizer)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    base = [*TINY, "--total-updates", "4", "--eval-every", "2", "--checkpoint-every", "2"]
    out = run_main(rl, [*base, "--reward-model", str(tmp_path / "rm"), "--model-name-or-path", str(tmp_path / "lm")],
                   tmp_path / "b")
    assert out["global_step"] == 4 and 0 <= out["eval_exact_match"] <= 1 and math.isfinite(out["eval_reward_score"])
    ckpt_path = sorted(glob.glob(str(tmp_path / "b" / out["run_dir"] / "checkpoint_*.pt")))[-1]
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["reference"] is None and ckpt["reward_model"] is None  # both from folders
    argv = [*base, "--total-updates", "6", "--resume", ckpt_path, "--model-name-or-path", str(tmp_path / "lm")]
    assert_one_line_exit_2(lambda: run_main(rl, argv, tmp_path / "c"), "--reward-model", capsys)
    assert_one_line_exit_2(lambda: run_main(rl, [*argv, "--reward-model", str(tmp_path / "rm"), "--value-init",
                                                 "policy"], tmp_path / "c"), "--value-init", capsys)


@pytest.mark.slow
def test_a_weak_reward_model_is_hacked(tmp_path):
    """Reward hacking, the documented runs (benchmark_results/rlhf_ppo.md), seed 1: sft.py 2000 steps; a weak reward
    model (reward_model.py on 300 prompts for 100 steps: held-out pairwise accuracy about chance); this file's
    defaults for 400 steps against it. The reward model's score of the greedy held-out responses rises while their
    exact match falls far below the SFT model's. Bars: the measured run (greedy score -0.792 -> -0.455,
    exact match 0.770 -> 0.465 at step 400) less margins for another CPU's rounding."""
    sft = load_algo("sft")
    rm = load_algo("reward_model")
    policy = run_main(sft, ["--seed", "1", "--total-updates", "2000", "--eval-every", "1000", "--save-model"], tmp_path)
    weak = run_main(rm, ["--model-name-or-path", policy["model_path"], "--train-prompts", "300", "--total-updates",
                         "100", "--eval-every", "100", "--save-model"], tmp_path)
    out = run_main(rl, ["--model-name-or-path", policy["model_path"], "--reward-model", weak["model_path"],
                        "--total-updates", "400", "--eval-every", "80"], tmp_path)
    logged = scalars(tmp_path / out["run_dir"])
    scores = [v for _, v in logged["eval/reward_score"]]
    matches = [v for _, v in logged["eval/exact_match"]]
    assert matches[0] >= 0.7, matches  # the SFT model at step 0
    assert max(scores[1:]) >= scores[0] + 0.15, scores  # the weak reward model's score goes up ...
    assert out["eval_exact_match"] <= matches[0] - 0.2, matches  # ... while the exact match falls


# the stated bound on the KL to the reference (nats per completion, the last logged rollouts) for the raise below
SORT_KL_BOUND = 2.0


@pytest.mark.slow
def test_raises_the_exact_match_on_ten_digit_sorting(tmp_path):
    """The exact match raised over SFT by PPO against a learned reward model, the documented runs (benchmark_results/
    rlhf_ppo.md, "Sorting"), seed 1, on a task whose answers a reward model of this size can check: sft.py on
    10-digit sorting for 100 steps (greedy exact match 0.635); reward_model.py's defaults on its samples (held-out
    pairwise accuracy 1.000; a shorter run, 500 steps on 5,000 prompts, reached 0.931 and was hacked: exact match
    0.03 at step 200); this file's defaults for 800 steps against it. The greedy held-out exact match rises by >= 0.1
    (measured: 0.635 -> 0.830) with the KL to the reference below SORT_KL_BOUND (measured: 0.83)."""
    sft = load_algo("sft")
    rm = load_algo("reward_model")
    task = ["--task", "sort", "--num-digits", "10", "--seed", "1"]
    policy = run_main(sft, [*task, "--total-updates", "100", "--eval-every", "100", "--save-model"], tmp_path)
    reward = run_main(rm, ["--model-name-or-path", policy["model_path"], *task, "--save-model"], tmp_path)
    out = run_main(rl, ["--model-name-or-path", policy["model_path"], "--reward-model", reward["model_path"], *task],
                   tmp_path)
    kl = [v for _, v in scalars(tmp_path / out["run_dir"])["charts/kl"]]
    print(f"\nexact match {out['start_exact_match']:.3f} -> {out['eval_exact_match']:.3f}, KL at the end {kl[-1]:.3f}, "
          f"reward model's held-out pairwise accuracy {reward['eval_pairwise_accuracy']:.3f}")
    assert out["eval_exact_match"] >= out["start_exact_match"] + 0.1, out
    assert kl[-1] < SORT_KL_BOUND, kl
