"""reward_model.py: the Bradley-Terry loss and its gradient at hand values, the last real token's index with right and
left padding (and the reward of a padded row against the unpadded one), the pairs built from a policy's samples
(chosen right, rejected wrong, same prompt, the reference standing in), the reward model built from a policy and saved
as a Hugging Face sequence-classification folder; slow: from an SFT model of 3-digit addition, a stated held-out
pairwise accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, run_main

rm = load_algo("reward_model")
# the slow test's bar: the measured 0.762 (benchmark_results/reward_model.md, run C) less a margin for another CPU's
# float rounding; below the 0.8, which the file does not reach yet
THRESHOLD = 0.74
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "8", "--eval-prompts", "8",
        "--train-prompts", "16", "--max-new-tokens", "6", "--sft-updates", "0"]


def tiny_reward_model(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = rm.build_tokenizer()
    policy = rm.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2)
    return rm.reward_model_from(policy, tokenizer), policy, tokenizer


def test_bradley_terry_loss_and_gradient_by_hand():
    """Differences 2, 0, -2: L = (log(1 + e^-2) + log 2 + log(1 + e^2)) / 3 = (0.126928 + 0.693147 + 2.126928) / 3;
    dL/dr_c = -sigmoid(-d) / 3 = -(0.119203, 0.5, 0.880797) / 3, and dL/dr_r is its negative."""
    chosen = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss = rm.bradley_terry_loss(chosen, rejected, torch.ones(3, dtype=torch.float64))
    assert loss.item() == pytest.approx((0.126928 + 0.693147 + 2.126928) / 3, abs=1e-6)
    loss.backward()
    expected = -torch.tensor([0.119203, 0.5, 0.880797], dtype=torch.float64) / 3
    torch.testing.assert_close(chosen.grad, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(rejected.grad, -expected, atol=1e-6, rtol=0)
    # far apart: no overflow (-log sigmoid(100) ~ e^-100, -log sigmoid(-100) ~ 100)
    far = rm.bradley_terry_loss(torch.tensor([100.0, -100.0]), torch.zeros(2), torch.ones(2))
    assert far.item() == pytest.approx(50.0, rel=1e-6)
    # only the difference counts: shifting every reward leaves the loss unchanged
    shifted = rm.bradley_terry_loss(chosen.detach() + 7, rejected.detach() + 7, torch.ones(3, dtype=torch.float64))
    assert shifted.item() == pytest.approx(loss.item(), abs=1e-12)


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert rm.last_token_index(right).tolist() == [2, 4, 0]
    assert rm.last_token_index(left).tolist() == [4, 4, 4]


def test_reward_of_a_padded_row_is_the_unpadded_rows():
    """r(x, y) of right-padded rows (training) and of the same rows padded on the left equal the head applied to the
    last hidden state of each unpadded sequence, fed alone."""
    model, _, tokenizer = tiny_reward_model(1)
    model.eval()
    prompts, responses = ["7+15=", "123+4=", "sort 90="], ["22", "1270", ""]
    input_ids, attention_mask, _ = rm.encode_pairs(tokenizer, prompts, responses)
    with torch.no_grad():
        expected = []
        for p, r in zip(prompts, responses, strict=True):
            ids = torch.tensor([tokenizer(p)["input_ids"] + tokenizer(r)["input_ids"] + [tokenizer.eos_token_id]])
            expected.append(model.score(model.base_model(input_ids=ids).last_hidden_state[0, -1]).item())
        right = rm.reward_scores(model, input_ids, attention_mask)
        width, lengths = input_ids.shape[1], attention_mask.sum(dim=1).tolist()
        left_ids, left_mask = torch.full_like(input_ids, tokenizer.pad_token_id), torch.zeros_like(attention_mask)
        for i, n in enumerate(lengths):
            left_ids[i, width - n:], left_mask[i, width - n:] = input_ids[i, :n], 1
        left = rm.reward_scores(model, left_ids, left_mask)
    torch.testing.assert_close(right, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    assert rm.score_responses(model, tokenizer, prompts, responses, 2) == pytest.approx(expected, abs=1e-5)


def test_pairs_by_hand():
    build = rm.build_preference_pairs
    p = "12+34="
    # each distinct wrong sample against a right one, in turn; duplicates once
    assert build("addition", [p], ["46"], [["46", "47", "47", "146"]]) == [(p, "46", "47"), (p, "46", "146")]
    assert build("addition", [p], ["46"], [["46", "x46", "47", "48"]]) == [(p, "46", "47"), (p, "x46", "48")]
    # no right sample: the reference is chosen; no wrong sample: no pair
    assert build("addition", [p], ["46"], [["45", "45"]]) == [(p, "46", "45")]
    assert build("addition", [p], ["46"], [["46", "46"]]) == []
    # avoid-digit: right = the sum is right AND the rule is kept; a rule-breaking reference never stands in
    q = "sum 15 no 7="
    assert build("avoid-digit", [q], ["771"], [["771", "95"]]) == []
    assert build("avoid-digit", [q], ["771"], [["96", "771", "95"]]) == [(q, "96", "771"), (q, "96", "95")]
    assert build("avoid-digit", [q], ["69"], [["771"]]) == [(q, "69", "771")]


def test_pairs_from_a_policy_are_right_against_wrong_for_the_same_prompt():
    """Sampled from a tiny untrained policy (every sample wrong) and from a list that mixes in right answers: every
    chosen scores right, every rejected wrong, both for the pair's own prompt."""
    _, policy, tokenizer = tiny_reward_model(2)
    rng = np.random.default_rng(0)
    prompts, references = rm.sample_pairs("addition", rng, 2, 12, set())
    torch.manual_seed(0)
    samples = rm.sample_responses(policy, tokenizer, prompts, 3, 1.0, 4, 8)
    assert [len(s) for s in samples] == [3] * 12
    samples = [s + [ref, str(int(ref) + 1)] for s, ref in zip(samples, references, strict=True)]
    pairs = rm.build_preference_pairs("addition", prompts, references, samples)
    assert len(pairs) >= 12
    for prompt, chosen, rejected in pairs:
        assert prompt in prompts and rm.score_addition(prompt, chosen)[0] and not rm.score_addition(prompt, rejected)[0]
        assert str(int(references[prompts.index(prompt)]) + 1) in {r for q, _, r in pairs if q == prompt}


def test_reward_model_keeps_the_backbone_and_saves_a_sequence_classification_folder(tmp_path):
    model, policy, tokenizer = tiny_reward_model(3)
    for (name, a), (_, b) in zip(model.base_model.named_parameters(), policy.base_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert model.score.out_features == 1 and model.config.num_labels == 1
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    loaded, loaded_tokenizer = rm.load_model(str(tmp_path / "rm"))
    assert type(loaded).__name__ == "GPT2ForSequenceClassification"
    a = rm.score_responses(model, tokenizer, ["1+2=", "1+2="], ["3", "4"], 2)
    assert rm.score_responses(loaded, loaded_tokenizer, ["1+2=", "1+2="], ["3", "4"], 2) == pytest.approx(a, abs=1e-6)


def test_a_step_on_the_loss_widens_the_margin():
    model, _, tokenizer = tiny_reward_model(4)
    input_ids, attention_mask, _ = rm.encode_pairs(tokenizer, ["1+1=", "2+2=", "1+1=", "2+2="], ["2", "4", "3", "5"])

    def margin():
        r = rm.reward_scores(model, input_ids, attention_mask)
        return r[:2] - r[2:]

    before = margin().detach()
    rm.bradley_terry_loss(*rm.reward_scores(model, input_ids, attention_mask).split(2), torch.ones(2)).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    assert (margin().detach() > before).all()


def test_checkpoint_holds_the_pairs_and_resume_refuses_another_task(tmp_path, capsys):
    base = [*TINY, "--total-updates", "4", "--eval-every", "4", "--checkpoint-every", "2"]
    out = run_main(rm, base, tmp_path / "a")
    assert out["num_train_pairs"] > 0 and out["num_eval_pairs"] > 0 and 0 <= out["eval_pairwise_accuracy"] <= 1
    ckpt_path = sorted((tmp_path / "a" / out["run_dir"]).glob("checkpoint_*.pt"))[-1]
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert len(ckpt["train_pairs"]) == out["num_train_pairs"] and len(ckpt["eval_pairs"]) == out["num_eval_pairs"]
    model, _ = rm.load_model(str(ckpt_path))
    assert model.score.out_features == 1
    for extra, expected in [(["--task", "sort"], "--task addition"), (["--n-layer", "2"], "another model")]:
        argv = [*base, "--resume", str(ckpt_path), *extra]
        assert_one_line_exit_2(lambda argv=argv: run_main(rm, argv, tmp_path / "bad"), expected, capsys)


@pytest.mark.slow
def test_pairwise_accuracy_on_three_digit_addition(tmp_path):
    """The documented pipeline, seed 1: sft.py for 2000 steps (--save-model), then this file's defaults on that folder
    (20000 prompts x 4 samples, 3000 reward-model steps of 64 pairs): held-out pairwise accuracy >= THRESHOLD, and
    right responses score above wrong ones on average. Measured: benchmark_results/reward_model.md."""
    sft = load_algo("sft")
    policy = run_main(sft, ["--seed", "1", "--total-updates", "2000", "--eval-every", "1000", "--save-model"], tmp_path)
    out = run_main(rm, ["--seed", "1", "--model-name-or-path", policy["model_path"]], tmp_path)
    assert out["eval_pairwise_accuracy"] >= THRESHOLD, out["eval_pairwise_accuracy"]
    assert out["eval_reward_right"] > out["eval_reward_wrong"] and math.isfinite(out["sps"])
