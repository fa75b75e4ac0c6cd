"""dpo.py: the completion log-probability (shifted, masked) against a loop over tokens, each loss type's value and
gradients at hand values (a separate per-pair formula in float64), the reference's log-probabilities computed once
before training (not per step, not again on resume) and equal to a fresh loop over tokens, a --dataset file and its
bad input; with TRL installed: loss, rewards and margins equal TRL 1.16's DPOTrainer's on the same model, reference
and batch to 1e-5 for every loss type; slow: from sft.py's 2000-step model of 3-digit addition, DPO with RPO's term
keeps the greedy exact match and learns the preference (held-out implicit-reward accuracy), and the time per epoch
against TRL's.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, loop_token_logprobs, run_main

dpo = load_algo("dpo")
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "8", "--eval-prompts", "8",
        "--train-prompts", "16", "--max-new-tokens", "6", "--sft-updates", "0"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = dpo.build_tokenizer()
    return dpo.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2), tokenizer


def loop_pair_logprobs(model, tokenizer, pairs) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    return torch.tensor([[sum(loop_token_logprobs(model, tokenizer(p)["input_ids"], [*tokenizer(y)["input_ids"], eos]))
                          for y in (c, r)] for p, c, r in pairs], dtype=torch.float64)


def tiny_llama(seed: int = 0):
    """A Llama (rotary positions, RMSNorm, gated MLP) of the same tokenizer: the shared row's positions and 4-D mask
    must hold for the architecture of the pretrained models too (SmolLM2 is a Llama)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = dpo.build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


@pytest.mark.parametrize("build", [tiny_model, tiny_llama], ids=["gpt2", "llama"])
def test_completion_logprob_against_a_loop_over_tokens(build):
    """Pairs of different lengths, each as one shared row (the prompt once, then both responses): each response's
    summed log-probability (its tokens and eos, prompt and padding left out) and token count equal a loop over
    unpadded prefixes of prompt + that response alone, so the rejected response sees neither the chosen one nor a
    shifted position; pair_logprobs gives the same in [N, 2] whatever its batch size."""
    model, tokenizer = build()
    model.eval()
    pairs = [("7+15=", "22", "23"), ("123+4=", "127", "1"), ("sort 90=", "09", "900000")]
    with torch.no_grad():
        summed, lengths = dpo.shared_pair_logprobs(model, dpo.encode_shared_pairs(tokenizer, pairs))
    expected = loop_pair_logprobs(model, tokenizer, pairs)
    torch.testing.assert_close(summed.double(), expected, rtol=1e-5, atol=1e-5)
    assert lengths.tolist() == [[3, 3], [4, 2], [3, 7]]  # the response's characters, then eos
    for batch_size in (1, 2, 3):
        torch.testing.assert_close(dpo.pair_logprobs(model, tokenizer, pairs, batch_size).double(), expected,
                                   rtol=1e-5, atol=1e-5)


def test_shared_row_mask():
    """The 4-D mask of a shared row by hand: prompt "1=" (2 columns), chosen "2" + eos, rejected "3" + eos, one
    padding column: causal, the rejected columns see the prompt and themselves only, no column sees padding."""
    model, tokenizer = tiny_model()
    rows = dpo.encode_shared_pairs(tokenizer, [("1=", "2", "3"), ("1=", "2", "34")])
    assert rows["segments"].tolist() == [[0, 0, 1, 1, 2, 2, 3], [0, 0, 1, 1, 2, 2, 2]]
    assert rows["position_ids"][0].tolist()[:6] == [0, 1, 2, 3, 2, 3]
    assert rows["sources"][0].tolist() == [[1, 2, 0], [1, 4, 0]]  # the prompt's last column scores both first tokens
    allowed = (dpo.shared_attention_mask(rows["segments"][:1], torch.float32)[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0, 0],
                       [1, 1, 0, 0, 1, 0, 0],
                       [1, 1, 0, 0, 1, 1, 0],
                       [1, 1, 1, 1, 1, 1, 0]]


def softplus(x: float) -> float:
    """log(1 + e^x) = -log sigmoid(-x), written out with math (the test's own formula)."""
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Four pairs. Policy and reference log-probabilities give the log-ratios u_c = (0.5, -0.5, -1, 2),
# u_r = (-0.5, 0.5, 1, -1), so h = u_c - u_r = (1, -1, -2, 3); with beta = 0.5, beta h = (0.5, -0.5, -1, 1.5).
POLICY_C, POLICY_R = [-1.0, -2.0, -3.0, -1.0], [-2.0, -1.0, -3.0, -4.0]
REF_C, REF_R = [-1.5, -1.5, -2.0, -3.0], [-1.5, -1.5, -4.0, -3.0]
LEN_C, LEN_R = [2, 4, 1, 2], [1, 2, 2, 3]
BETA, EPS = 0.5, 0.1


def by_hand(loss_type: str, eps: float = 0.0, alpha: float = 0.0) -> tuple[float, list[float], list[float]]:
    """The batch loss and its gradients with respect to the policy's chosen and rejected log-probabilities, pair by
    pair from the paper's formulas (and each one's derivative worked out by hand); alpha: RPO's term
    -alpha sum(log pi(y_c)) / sum(|y_c|), whose derivative is -alpha / sum(|y_c|) for every chosen response."""
    n, losses, grad_c, grad_r = len(POLICY_C), [], [], []
    for pc, pr, rc, rr, lc, lr in zip(POLICY_C, POLICY_R, REF_C, REF_R, LEN_C, LEN_R, strict=True):
        uc, ur = pc - rc, pr - rr
        x = BETA * (uc - ur)
        if loss_type == "sigmoid":  # -(1-eps) log s(x) - eps log s(-x); d/dx = -(1-eps) s(-x) + eps s(x)
            losses.append((1 - eps) * softplus(-x) + eps * softplus(x))
            d = -(1 - eps) * sigmoid(-x) + eps * sigmoid(x)
        elif loss_type == "robust":  # ((1-eps) softplus(-x) - eps softplus(x)) / (1 - 2 eps)
            losses.append(((1 - eps) * softplus(-x) - eps * softplus(x)) / (1 - 2 * eps))
            d = (-(1 - eps) * sigmoid(-x) - eps * sigmoid(x)) / (1 - 2 * eps)
        elif loss_type == "hinge":  # max(0, 1 - x)
            losses.append(max(0.0, 1 - x))
            d = -1.0 if x < 1 else 0.0
        if loss_type == "ipo":  # (uc / lc - ur / lr - 1 / (2 beta))^2: d/duc = 2 (.) / lc, d/dur = -2 (.) / lr
            e = uc / lc - ur / lr - 1 / (2 * BETA)
            losses.append(e * e)
            grad_c.append(2 * e / lc / n)
            grad_r.append(-2 * e / lr / n)
        else:  # x = beta (uc - ur)
            grad_c.append(BETA * d / n)
            grad_r.append(-BETA * d / n)
    rpo = -alpha * sum(POLICY_C) / sum(LEN_C)
    return sum(losses) / n + rpo, [g - alpha / sum(LEN_C) for g in grad_c], grad_r


@pytest.mark.parametrize("loss_type,eps,alpha", [("sigmoid", 0.0, 0.0), ("sigmoid", EPS, 0.0), ("robust", EPS, 0.0),
                                                 ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0), ("sigmoid", 0.0, 0.7),
                                                 ("ipo", 0.0, 0.7)])
def test_loss_and_gradients_by_hand(loss_type: str, eps: float, alpha: float):
    expected_loss, expected_c, expected_r = by_hand(loss_type, eps, alpha)
    pc = torch.tensor(POLICY_C, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(POLICY_R, dtype=torch.float64, requires_grad=True)
    loss = dpo.dpo_loss(pc, pr, torch.tensor(REF_C, dtype=torch.float64), torch.tensor(REF_R, dtype=torch.float64),
                        BETA, loss_type, eps, torch.tensor(LEN_C), torch.tensor(LEN_R), alpha)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(pc.grad, torch.tensor(expected_c, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(pr.grad, torch.tensor(expected_r, dtype=torch.float64), atol=1e-12, rtol=0)


def test_loss_values_at_hand_points():
    """Numbers written out: sigmoid = mean(log(1 + e^-x)) over x = (0.5, -0.5, -1, 1.5); hinge = mean(0.5, 1.5, 2, 0);
    ipo's averaged margins (0.75, -0.375, -1.5, 4/3) against the target 1/(2 beta) = 1."""
    assert by_hand("sigmoid")[0] == pytest.approx((0.474077 + 0.974077 + 1.313262 + 0.201413) / 4, abs=1e-6)
    assert by_hand("hinge")[0] == pytest.approx(1.0)
    assert by_hand("ipo")[0] == pytest.approx((0.0625 + 1.890625 + 6.25 + 1 / 9) / 4)
    assert by_hand("hinge", alpha=0.5)[0] == pytest.approx(1.0 + 0.5 * 7 / 9)  # chosen log-probs sum to -7 over 9 tokens
    # the policy equal to the reference: h = 0, loss log 2 (sigmoid) and 1 (hinge), whatever beta
    same = torch.tensor([-3.0, -7.0])
    assert dpo.dpo_loss(same, same, same, same, 0.3).item() == pytest.approx(math.log(2))
    assert dpo.dpo_loss(same, same, same, same, 0.3, "hinge").item() == pytest.approx(1.0)
    assert dpo.dpo_loss(same, same, same, same, 0.3, "robust", 0.0).item() == pytest.approx(math.log(2))
    # far apart: no overflow (margins of +-1000 nats)
    far = dpo.dpo_loss(torch.tensor([0.0, -1000.0]), torch.tensor([-1000.0, 0.0]), torch.zeros(2), torch.zeros(2), 1.0)
    assert far.item() == pytest.approx(500.0, rel=1e-6)


def test_sign_test_by_hand():
    """The exact two-sided sign test on fixed / broken answers: 5-0 is 2 / 2^5, 1-6 is 2 (1 + 7) / 2^7 (the split
    0-7 and 1-6), 12-3 the sum of C(15, k) for k <= 3, twice, over 2^15; an even split and no discordant prompt are 1."""
    assert dpo.sign_test(5, 0) == pytest.approx(2 / 32)
    assert dpo.sign_test(1, 6) == pytest.approx(2 * (1 + 7) / 128)
    assert dpo.sign_test(12, 3) == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15)
    assert dpo.sign_test(3, 3) == 1.0 and dpo.sign_test(0, 0) == 1.0


def test_a_step_on_the_loss_widens_the_margin():
    """One SGD step on the sigmoid loss of a tiny model raises each pair's log-ratio margin h."""
    model, tokenizer = tiny_model(4)
    pairs = [("1+1=", "2", "3"), ("2+2=", "4", "44")]
    ref = dpo.pair_logprobs(model, tokenizer, pairs, 2)
    rows = dpo.encode_shared_pairs(tokenizer, pairs)

    def margin() -> torch.Tensor:
        logps, _ = dpo.shared_pair_logprobs(model, rows)
        return (logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1])

    before = margin().detach()
    logps, _ = dpo.shared_pair_logprobs(model, rows)
    dpo.dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], 0.1).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1.0 * p.grad
    assert (margin().detach() > before + 1e-4).all(), (before, margin())


def test_reference_logprobs_are_computed_once_and_equal_a_fresh_computation(tmp_path, monkeypatch):
    """From a saved folder: pair_logprobs sees every training and held-out pair once, before the first step, and
    afterwards only the held-out pairs (each evaluation, the policy); the checkpoint's reference log-probabilities
    equal a loop over tokens of the starting model; a resumed run computes none again and ends where the whole run
    ends."""
    model, tokenizer = tiny_model(5)
    model.save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    calls, real = [], dpo.pair_logprobs

    def spy(model, tokenizer, pairs, batch_size):
        calls.append(len(pairs))
        return real(model, tokenizer, pairs, batch_size)

    monkeypatch.setattr(dpo, "pair_logprobs", spy)
    base = ["--model-name-or-path", str(tmp_path / "sft"), *TINY, "--total-updates", "4", "--eval-every", "2",
            "--checkpoint-every", "2", "--save-model"]
    out = run_main(dpo, base, tmp_path / "a")
    n_train, n_eval = out["num_train_pairs"], out["num_eval_pairs"]
    assert calls == [n_train + n_eval, n_eval, n_eval], calls  # the reference once; then two evaluations
    ckpt = torch.load(sorted((tmp_path / "a" / out["run_dir"]).glob("checkpoint_2.pt"))[0], weights_only=True)
    assert ckpt["ref_logps"].shape == (n_train, 2) and ckpt["eval_ref_logps"].shape == (n_eval, 2)
    pairs = [tuple(p) for p in ckpt["train_pairs"]][:12] + [tuple(p) for p in ckpt["eval_pairs"]][:4]
    fresh = loop_pair_logprobs(model.eval(), tokenizer, pairs)
    stored = torch.cat([ckpt["ref_logps"][:12], ckpt["eval_ref_logps"][:4]]).double()
    torch.testing.assert_close(stored, fresh, rtol=1e-5, atol=1e-5)
    calls.clear()
    resumed = run_main(dpo, [*base, "--resume", str(tmp_path / "a" / out["run_dir"] / "checkpoint_2.pt")],
                       tmp_path / "a")
    assert calls == [n_eval], calls  # one evaluation, no reference pass
    a = torch.load(sorted((tmp_path / "a" / out["run_dir"]).glob("checkpoint_4.pt"))[0], weights_only=True)
    b = torch.load(sorted((tmp_path / "a" / resumed["run_dir"]).glob("checkpoint_4.pt"))[0], weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["ref_logps"], b["ref_logps"])


def test_a_dataset_file_and_its_bad_input(tmp_path, capsys):
    """--dataset: the file's pairs are trained on (a held-out prompt's line left out), here with conservative DPO;
    a file without the prompt/chosen/rejected columns, not JSON, or with an empty prompt is one line and exit 2, with
    nothing written."""
    heldout = dpo.heldout_pairs("addition", 3, 8)[0][0]
    rows = [{"prompt": "12+34=", "chosen": "46", "rejected": "47"}, {"prompt": "1+2=", "chosen": "3", "rejected": "12"},
            {"prompt": heldout, "chosen": "1", "rejected": "2"}]
    good = tmp_path / "pairs.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_main(dpo, [*TINY, "--dataset", str(good), "--label-smoothing", "0.2", "--total-updates", "2",
                         "--eval-every", "2", "--checkpoint-every", "2"], tmp_path / "run")
    assert out["num_train_pairs"] == 2 and out["global_step"] == 2
    # prompt by prompt against the SFT model: the fixed less the broken answers are the change in exact match
    assert out["fixed"] - out["broken"] == round((out["eval_exact_match"] - out["sft_exact_match"]) * 8)
    ckpt = torch.load(next((tmp_path / "run" / out["run_dir"]).glob("checkpoint_2.pt")), weights_only=True)
    assert [tuple(p) for p in ckpt["train_pairs"]] == [("12+34=", "46", "47"), ("1+2=", "3", "12")]
    (tmp_path / "columns.jsonl").write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    (tmp_path / "text.jsonl").write_text("prompt,chosen,rejected\n")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"prompt": "", "chosen": "2", "rejected": "3"}) + "\n")
    for name, expected in [("columns.jsonl", "lacks the string column(s) chosen, rejected"),
                           ("empty.jsonl", "line 1 has an empty prompt"),
                           ("text.jsonl", "line 1 is not JSON"), ("missing.jsonl", "no such file")]:
        cwd = tmp_path / f"bad_{name}"
        assert_one_line_exit_2(lambda name=name, cwd=cwd: run_main(dpo, [*TINY, "--dataset", str(tmp_path / name)],
                                                                   cwd), expected, capsys)
        assert not (cwd / "runs").exists()


# ---- TRL 1.16's DPOTrainer on the same model, reference and batch ----


def trl_config(tmp_path, loss_type: str, beta: float, label_smoothing: float, batch_size: int, rpo_alpha: float = 0.0,
               precompute_ref_log_probs: bool = False, **extra):
    """Every DPOConfig setting that moves between TRL versions or differs from this file, pinned; RPO is TRL's
    loss_type ["sigmoid", "sft"] with loss_weights [1, alpha]."""
    from trl import DPOConfig

    losses = {"loss_type": [loss_type, "sft"], "loss_weights": [1.0, rpo_alpha]} if rpo_alpha else {
        "loss_type": [loss_type], "loss_weights": None}
    return DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, fp16=False, beta=beta, **losses,
                     label_smoothing=label_smoothing, max_length=None,
                     truncation_mode="keep_start", padding_free=False, pad_to_multiple_of=None,
                     precompute_ref_log_probs=precompute_ref_log_probs, f_divergence_type="reverse_kl", ld_alpha=None,
                     use_weighting=False, sync_ref_model=False, disable_dropout=True, gradient_checkpointing=False,
                     per_device_train_batch_size=batch_size, report_to=[], save_strategy="no",
                     dataset_num_proc=None, seed=0, **{"logging_steps": 10**6, **extra})


@pytest.mark.parametrize("loss_type,label_smoothing,rpo_alpha", [("sigmoid", 0.0, 0.0), ("robust", 0.1, 0.0),
                                                                 ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0),
                                                                 ("sigmoid", 0.0, 0.5)])
def test_loss_and_rewards_equal_trls_dpo_trainer(loss_type: str, label_smoothing: float, rpo_alpha: float, tmp_path):
    """A tiny policy and a different reference (the policy after a few SGD steps on another loss), eight pairs of
    different lengths: TRL's compute_loss on its own collated batch, and its logged rewards/chosen, rewards/rejected,
    rewards/margins, rewards/accuracies and logps/*, equal this file's dpo_loss and implicit rewards to 1e-5 (RPO:
    TRL's loss_type ["sigmoid", "sft"] with loss_weights [1, alpha])."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOTrainer

    reference, tokenizer = tiny_model(6)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # move the policy away from the reference, so that every log-ratio is non-zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs = [("12+34=", "46", "47"), ("1+2=", "3", "12"), ("sort 310=", "013", "0133"), ("5+5=", "10", "1"),
             ("99+1=", "100", "101"), ("sort 2=", "2", "22"), ("7+0=", "7", "70"), ("40+2=", "42", "24")]
    beta = 0.2
    # this file's numbers first (TRL patches the model's forward with its fused head)
    ref = dpo.pair_logprobs(reference, tokenizer, pairs, 3)
    prompts = [p for p, _, _ in pairs]
    input_ids, attention_mask, labels = dpo.encode_pairs(tokenizer, prompts + prompts, [c for _, c, _ in pairs]
                                                         + [r for _, _, r in pairs])
    policy.train()
    with torch.no_grad():  # the shared rows (prompt once) against TRL's two rows per pair
        logps, lengths = dpo.shared_pair_logprobs(policy, dpo.encode_shared_pairs(tokenizer, pairs))
    chosen, rejected = logps.unbind(dim=1)
    loss = dpo.dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta, loss_type, label_smoothing,
                        *lengths.unbind(dim=1), rpo_alpha).item()
    rewards_c, rewards_r = beta * (chosen - ref[:, 0]), beta * (rejected - ref[:, 1])
    ours = {"rewards/chosen": rewards_c.mean().item(), "rewards/rejected": rewards_r.mean().item(),
            "rewards/margins": (rewards_c - rewards_r).mean().item(),
            "rewards/accuracies": (rewards_c > rewards_r).float().mean().item(),
            "logps/chosen": chosen.mean().item(), "logps/rejected": rejected.mean().item()}

    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(reference), processing_class=tokenizer,
                         args=trl_config(tmp_path, loss_type, beta, label_smoothing, len(pairs), rpo_alpha),
                         train_dataset=Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r}
                                                          for p, c, r in pairs]))
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, inputs).item()
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    # TRL's batch is this file's: the same tokens, right padding and completion positions
    assert torch.equal(inputs["input_ids"], input_ids)
    assert torch.equal(inputs["completion_mask"][:, 1:].bool(), labels[:, 1:] != -100)
    assert abs(rewards_c - rewards_r).min() > 1e-3  # the comparison is not of zeros
    assert loss == pytest.approx(trl_loss, abs=1e-5), (loss, trl_loss)
    for key, value in ours.items():
        assert value == pytest.approx(metrics[key], abs=1e-5), (key, value, metrics[key])



# the slow learning test's settings and bars (benchmark_results/dpo.md, run E: exact match 0.785 against the SFT
# model's 0.770, held-out reward accuracy 0.852). Measured, DPO with RPO's term does not raise the exact match beyond
# the noise of 200 prompts, so the test does not claim it: it holds the exact match within 0.02 of the SFT model's
# (plain DPO at lr 1e-4 loses 0.19) and the implicit reward's held-out accuracy at >= 0.80 (a margin of 0.05 for
# another CPU's float rounding)
LEARNING = ["--rpo-alpha", "1", "--learning-rate", "3e-4", "--total-updates", "2000", "--eval-every", "500"]
MATCH_DROP, REWARD_ACCURACY = 0.02, 0.80


@pytest.mark.slow
def test_keeps_exact_match_and_learns_the_preference_on_three_digit_addition(tmp_path):
    """The documented pipeline, seed 1: sft.py for 2000 steps (--save-model), then DPO with the chosen responses'
    NLL (--rpo-alpha 1) from that folder on its own sampled pairs: the greedy exact match on the 200 held-out prompts
    stays within MATCH_DROP of the SFT model's, and the implicit reward ranks >= REWARD_ACCURACY of the held-out pairs
    right."""
    sft = load_algo("sft")
    policy = run_main(sft, ["--seed", "1", "--total-updates", "2000", "--eval-every", "1000", "--save-model"], tmp_path)
    out = run_main(dpo, ["--seed", "1", "--model-name-or-path", policy["model_path"], *LEARNING], tmp_path)
    assert out["sft_exact_match"] == policy["eval_exact_match"]
    assert out["eval_exact_match"] >= out["sft_exact_match"] - MATCH_DROP, (out["eval_exact_match"],
                                                                              out["sft_exact_match"])
    assert out["eval_reward_accuracy"] >= REWARD_ACCURACY, out["eval_reward_accuracy"]

# ---- Time per epoch against TRL (slow): each in its own process, for its peak memory ----

def near_miss_pairs(count: int, seed: int = 0) -> list[dict]:
    """3-digit additions, chosen the sum, rejected the sum with one digit changed (the shape of the file's own pairs)."""
    rng, rows = np.random.default_rng(seed), []
    for _ in range(count):
        prompt, answer = dpo.make_addition(rng, 3)
        i = int(rng.integers(len(answer)))
        wrong = answer[:i] + str((int(answer[i]) + int(rng.integers(1, 10))) % 10) + answer[i + 1:]
        rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong})
    return rows


def timing_worker(which: str, pairs_path: str, model_path: str, batch_size: int, out_path: str) -> None:
    """One epoch of DPO over the file's pairs from the model folder, one torch thread, the reference's log-probabilities
    precomputed before the timed loop (both): this file's main (its optimiser steps per second, evaluations left out),
    or TRL's DPOTrainer.train() with the same optimiser, schedule, clipping, beta and loss. Writes seconds per epoch,
    the process's wall time and its peak resident memory."""
    torch.set_num_threads(1)
    start = time.time()
    steps = sum(1 for _ in open(pairs_path)) // batch_size
    if which == "ours":
        out = run_main(dpo, ["--model-name-or-path", model_path, "--dataset", pairs_path, "--batch-size",
                             str(batch_size), "--total-updates", str(steps), "--eval-every", str(steps), "--log-every",
                             "50", "--eval-prompts", "50", "--warmup-ratio", "0.05"], Path(out_path).parent / "ours")
        epoch = steps / out["sps"]
    else:
        from datasets import Dataset
        from trl import DPOTrainer

        model, tokenizer = dpo.load_pretrained(model_path)
        rows = [json.loads(line) for line in open(pairs_path)]
        config = trl_config(Path(out_path).parent, "sigmoid", 0.1, 0.0, batch_size, precompute_ref_log_probs=True,
                            learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0,
                            max_grad_norm=1.0, optim="adamw_torch_fused", num_train_epochs=1, max_steps=steps,
                            logging_steps=50, dataloader_num_workers=0)
        trainer = DPOTrainer(model=model, ref_model=None, processing_class=tokenizer, args=config,
                             train_dataset=Dataset.from_list(rows))
        begin = time.time()
        trainer.train()
        epoch = time.time() - begin
    Path(out_path).write_text(json.dumps({"seconds_per_epoch": epoch, "steps": steps, "wall": time.time() - start,
                                          "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


@pytest.mark.slow
def test_time_per_epoch_against_trl(tmp_path):
    """4096 near-miss pairs of 3-digit addition, batch 64 (64 optimiser steps), the in-code GPT-2 at its default size
    (the speed does not depend on its weights; this one is untrained): this file's time per epoch against TRL's, and
    each process's peak memory, printed (run with -s; benchmark_results/dpo.md). The bar is only that both finish and
    this file is not slower; the measured ratio is on the page."""
    pytest.importorskip("trl")
    torch.manual_seed(0)
    tokenizer = dpo.build_tokenizer()
    dpo.build_model(tokenizer, n_layer=2, n_embd=128, n_head=4).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in near_miss_pairs(4096)))
    results = {}
    for which in ("ours", "trl"):
        out = tmp_path / f"{which}.json"
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_dpo; "
                f"test_dpo.timing_worker({which!r}, {str(pairs)!r}, {str(tmp_path / 'model')!r}, 64, {str(out)!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        results[which] = json.loads(out.read_text())
    ours, trl = results["ours"], results["trl"]
    print(f"\nDPO epoch of 4096 pairs, batch 64, {ours['steps']} steps, 1 torch thread:\n"
          f"  dpo.py: {ours['seconds_per_epoch']:.1f} s per epoch, peak RSS {ours['max_rss_mb']:.0f} MB, process "
          f"{ours['wall']:.1f} s\n  TRL:    {trl['seconds_per_epoch']:.1f} s per epoch, peak RSS "
          f"{trl['max_rss_mb']:.0f} MB, process {trl['wall']:.1f} s\n"
          f"  speed-up {trl['seconds_per_epoch'] / ours['seconds_per_epoch']:.2f}x")
    assert ours["seconds_per_epoch"] < trl["seconds_per_epoch"]
