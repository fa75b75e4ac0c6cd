"""constitutional_ai.py: DPO on soft labels (value and gradient at hand values; p = 1 is dpo.py's sigmoid loss and
p = 1 - eps its conservative DPO; p = 1/2 symmetric with a zero gradient at h = 0), the constitution's rule critic and
rule judge on hand-written responses, the reviser by rejection sampling on scripted samples, the revised set of a real
run keeping every principle, the label agreement by hand, the LM judge's probabilities on a tiny random GPT-2 against a
hand computation from its logits (and a run judged by it), a NaN in the RL stage and a resume inside it; slow: from
sft.py's avoid-digit model, the defaults keep the exact match and the rule compliance (a rise of the rule compliance
is not shown: benchmark_results/constitutional_ai.md) and the rule judge's label agreement.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, run_main

cai = load_algo("constitutional_ai")
dpo = load_algo("dpo")
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "8", "--eval-prompts", "8",
        "--train-prompts", "16", "--rl-prompts", "16", "--max-new-tokens", "6", "--sft-updates", "0",
        "--principles", "rule"]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Four pairs: policy and reference log-probabilities give log-ratio margins h = (1, -1, -2, 3); with beta = 0.5,
# beta h = (0.5, -0.5, -1, 1.5); soft labels p = (1, 0.9, 0.5, 0.2).
POLICY_C, POLICY_R = [-1.0, -2.0, -3.0, -1.0], [-2.0, -1.0, -3.0, -4.0]
REF_C, REF_R = [-1.5, -1.5, -2.0, -3.0], [-1.5, -1.5, -4.0, -3.0]
LABELS, BETA = [1.0, 0.9, 0.5, 0.2], 0.5


def test_soft_dpo_loss_and_gradient_by_hand():
    """-[p log s(x) + (1 - p) log s(-x)], x = beta h, averaged over the batch, and d/d log pi(y_A) =
    beta (s(x) - p) / B = -d/d log pi(y_B), pair by pair in float64; and numbers written out."""
    n, losses, grads = len(LABELS), [], []
    for pc, pr, rc, rr, p in zip(POLICY_C, POLICY_R, REF_C, REF_R, LABELS, strict=True):
        x = BETA * ((pc - rc) - (pr - rr))
        losses.append(-(p * math.log(sigmoid(x)) + (1 - p) * math.log(sigmoid(-x))))
        grads.append(BETA * (sigmoid(x) - p) / n)
    pc = torch.tensor(POLICY_C, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(POLICY_R, dtype=torch.float64, requires_grad=True)
    loss = cai.soft_dpo_loss(pc, pr, torch.tensor(REF_C, dtype=torch.float64), torch.tensor(REF_R, dtype=torch.float64),
                             BETA, torch.tensor(LABELS, dtype=torch.float64))
    assert loss.item() == pytest.approx(sum(losses) / n, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(pc.grad, torch.tensor(grads, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(pr.grad, -torch.tensor(grads, dtype=torch.float64), atol=1e-12, rtol=0)
    # by hand: x = 0.5, p = 1: log(1 + e^-0.5) = 0.474077; x = -1, p = 0.5: (log(1 + e) + log(1 + e^-1)) / 2 = 0.813262
    assert losses[0] == pytest.approx(0.474077, abs=1e-6)
    assert losses[2] == pytest.approx(0.813262, abs=1e-6)


def test_p_one_is_dpo_sigmoid_and_one_minus_eps_is_conservative_dpo():
    """The soft labels generalise dpo.py's loss: p = 1 gives its sigmoid loss, p = 1 - eps its label smoothing eps."""
    args = [torch.tensor(v, dtype=torch.float64) for v in (POLICY_C, POLICY_R, REF_C, REF_R)]
    for beta in (0.1, 0.5, 2.0):
        ones = torch.ones(4, dtype=torch.float64)
        assert cai.soft_dpo_loss(*args, beta, ones).item() == pytest.approx(
            dpo.dpo_loss(*args, beta, "sigmoid").item(), abs=1e-12)
        for eps in (0.1, 0.3):
            assert cai.soft_dpo_loss(*args, beta, ones - eps).item() == pytest.approx(
                dpo.dpo_loss(*args, beta, "sigmoid", eps).item(), abs=1e-12)


def test_half_is_symmetric_and_a_soft_label_asks_for_a_finite_margin():
    """p = 1/2: the loss is even in h, with zero gradient at h = 0; p: the gradient vanishes at h = logit(p) / beta."""
    zero, beta = torch.zeros(1, dtype=torch.float64), 0.4
    for h in (0.3, 2.0, 7.5):
        a = cai.soft_dpo_loss(torch.tensor([h], dtype=torch.float64), zero, zero, zero, beta, zero + 0.5)
        b = cai.soft_dpo_loss(torch.tensor([-h], dtype=torch.float64), zero, zero, zero, beta, zero + 0.5)
        assert a.item() == pytest.approx(b.item(), abs=1e-12)
    for p in (0.5, 0.7, 0.9):
        h = torch.tensor([math.log(p / (1 - p)) / beta], dtype=torch.float64, requires_grad=True)
        cai.soft_dpo_loss(h, zero, zero, zero, beta, zero + p).backward()
        assert abs(h.grad.item()) < 1e-12


def test_rule_critic_and_judge_on_hand_written_responses():
    """"sum 15 no 7=": 456 and 096 keep every principle; 375 breaks the rule (and so the whole); 789 (sum 24) breaks
    the answer and the rule; "4 5 6" answers 6 and is not digits alone. The judge: 1 - eps / eps when one response
    keeps the drawn principle and the other breaks it, 1/2 for a tie."""
    prompt, task, every = "sum 15 no 7=", "avoid-digit", ["answer", "rule", "brief", "whole"]
    assert cai.task_principles(task) == every and cai.task_principles("addition") == ["answer", "brief"]
    assert cai.task_principles(task, ("rule",)) == ["rule"]
    broken = {r: [line.split("'")[1] for line in cai.critique(task, every, prompt, r)]
              for r in ("456", "096", "375", "789", "4 5 6", "")}
    assert broken == {"456": [], "096": [], "375": ["rule", "whole"], "789": ["answer", "rule", "whole"],
                      "4 5 6": ["answer", "brief", "whole"], "": ["answer", "brief", "whole"]}
    assert cai.critique(task, every, prompt, "789") == [
        f"breaks 'answer' ({cai.CONSTITUTION['answer']}): the digits of 789 sum to 24, not 15",
        f"breaks 'rule' ({cai.CONSTITUTION['rule']}): it writes the banned digit 7",
        f"breaks 'whole' ({cai.CONSTITUTION['whole']}): the digits of 789 sum to 24, not 15 and it writes the banned "
        "digit 7"]
    assert "1000 is not the answer to 999+2=" in cai.critique("addition", ["answer"], "999+2=", "1000")[0]
    assert cai.critique("addition", ["answer", "brief"], "999+2=", "1001") == []
    eps = 0.1
    assert cai.rule_judge("rule", task, prompt, "456", "375", eps) == 1 - eps
    assert cai.rule_judge("rule", task, prompt, "375", "456", eps) == eps
    assert cai.rule_judge("rule", task, prompt, "456", "096", eps) == 0.5  # both keep it
    assert cai.rule_judge("rule", task, prompt, "375", "789", eps) == 0.5  # both break it
    assert cai.rule_judge("answer", task, prompt, "375", "789", eps) == 1 - eps  # 375's digits sum to 15
    assert cai.rule_judge("whole", task, prompt, "375", "789", eps) == 0.5  # neither is right and keeps the rule
    assert cai.rule_judge("whole", task, prompt, "375", "096", eps) == eps
    assert cai.rule_judge("brief", task, prompt, "4 5 6", "789", 0.0) == 0.0
    assert cai.rule_judge("answer", "addition", "1+2=", "3", "4", 0.0) == 1.0


def test_label_agreement_by_hand():
    """Only pairs where the ground truth (right and rule kept) prefers one response count; a tie is a disagreement."""
    pairs = [("sum 15 no 7=", "456", "375", 0.9),  # truth prefers 456: agrees
             ("sum 15 no 7=", "375", "456", 0.9),  # truth prefers 456 (B): disagrees
             ("sum 15 no 7=", "789", "096", 0.5),  # truth prefers 096: a tie disagrees
             ("sum 15 no 7=", "789", "375", 0.9),  # neither is right: not counted
             ("sum 15 no 7=", "456", "096", 0.2)]  # both right: not counted
    assert cai.label_agreement("avoid-digit", pairs) == pytest.approx(1 / 3)
    assert math.isnan(cai.label_agreement("avoid-digit", pairs[3:]))


def test_revision_by_resampling_on_scripted_samples(monkeypatch):
    """The reviser re-samples only the faulted responses, at most `attempts` times each, keeps the first sample the
    critic finds nothing in, and reports the ones still faulted."""
    script = {"sum 15 no 7=": ["375", "177", "456"], "sum 3 no 1=": ["111", "211", "101"], "sum 9 no 0=": []}
    asked = []

    def scripted(policy, tokenizer, prompts, samples_per_prompt, temperature, max_new_tokens, batch_size):
        asked.append(list(prompts))
        return [[script[p].pop(0)] for p in prompts]

    monkeypatch.setattr(cai, "sample_responses", scripted)
    prompts = list(script)
    finals, keeps = cai.revise_by_resampling(None, None, "avoid-digit", ["answer", "rule", "brief"], prompts,
                                             ["789", "12", "9"], attempts=2, temperature=1.0, max_new_tokens=4,
                                             batch_size=8)
    assert asked == [["sum 15 no 7=", "sum 3 no 1="], ["sum 15 no 7=", "sum 3 no 1="]]
    assert finals == ["177", "211", "9"] and keeps == [False, False, True]
    script.update({"sum 15 no 7=": ["375", "177", "456"]})
    asked.clear()
    finals, keeps = cai.revise_by_resampling(None, None, "avoid-digit", ["answer", "rule"], prompts[:1], ["789"],
                                             attempts=5, temperature=1.0, max_new_tokens=4, batch_size=8)
    assert finals == ["456"] and keeps == [True] and len(asked) == 3  # stops at the first that keeps them all


def test_the_revised_set_keeps_every_principle_and_a_resume_in_the_rl_stage(tmp_path):
    """A real run (an untrained model, the rule principle): every (prompt, revision) of the SL-CAI set in its
    checkpoint keeps every principle, no held-out prompt is in it, the RL pairs' labels are in [1/2, 1]; a run resumed
    from a checkpoint inside the RL stage ends with the uninterrupted run's weights."""
    base = [*TINY, "--total-updates", "6", "--sl-updates", "2", "--eval-every", "3", "--checkpoint-every", "4",
            "--keep-checkpoints", "2", "--save-model"]
    out = run_main(cai, base, tmp_path / "a")
    run_dir = tmp_path / "a" / out["run_dir"]
    ckpt = torch.load(run_dir / "checkpoint_4.pt", weights_only=True)
    held_out = {p for p, _ in cai.heldout_pairs("avoid-digit", 3, 8)}
    assert len(ckpt["sl_set"]) == out["num_sl_examples"] > 0
    for prompt, revision in ckpt["sl_set"]:
        assert prompt not in held_out and not cai.critique("avoid-digit", ["rule"], prompt, revision)
    assert all(0.5 <= q <= 1 and a != b for _, a, b, q in ckpt["rl_pairs"]) and ckpt["ref_logps"].shape == (
        len(ckpt["rl_pairs"]), 2)
    resumed = run_main(cai, [*base, "--resume", str(run_dir / "checkpoint_4.pt")], tmp_path / "a")
    assert resumed["global_step"] == 6 and resumed["num_rl_pairs"] == out["num_rl_pairs"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / out["model_path"] / "model.safetensors")
    b = load_file(tmp_path / "a" / resumed["model_path"] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["sl_rule_compliance"] == out["sl_rule_compliance"]


def test_a_nan_in_the_rl_stage_stops_the_run(tmp_path, monkeypatch, capsys):
    """The soft-label loss of the RL stage's second step (optimiser step 4 after 2 SL steps) is NaN: one line, exit 3,
    the last finite state (step 3) saved."""
    calls, real = {"n": 0}, cai.soft_dpo_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls["n"] == 2 else loss

    monkeypatch.setattr(cai, "soft_dpo_loss", poisoned)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(cai, [*TINY, "--total-updates", "6", "--sl-updates", "2", "--eval-every", "6"], tmp_path)
    assert exit_info.value.code == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: non-finite loss at step 3;"), err
    (last,) = list((tmp_path / "runs").glob("*/*_last_finite.pt"))
    assert torch.load(last, weights_only=True)["global_step"] == 3


def tiny_judge(tmp_path, seed: int = 3):
    """A random GPT-2 with the in-code character tokenizer (it has the tokens "A" and "B"), long enough to read a
    judge prompt, saved as a folder."""
    torch.manual_seed(seed)
    tokenizer = cai.build_tokenizer()
    model = cai.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=512)
    model.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    return model.eval(), tokenizer


def test_lm_judge_probabilities_equal_a_hand_computation(tmp_path):
    """For each judge prompt, one unpadded forward pass: softmax over the whole vocabulary, then p(A) / (p(A) + p(B)).
    The batched, left-padded judge_ab_probs equals it at every batch size; lm_judge averages both orders:
    (p_AB("A") + p_BA("B")) / 2, in [0, 1]."""
    model, tokenizer = tiny_judge(tmp_path)
    items = [(cai.CONSTITUTION["rule"], cai.describe_request("avoid-digit", "sum 15 no 7="), "456", "375"),
             (cai.CONSTITUTION["answer"], cai.describe_request("addition", "12+5="), "17", "1234567"),
             (cai.CONSTITUTION["brief"], cai.describe_request("sort", "sort 31="), "13", "x")]
    a_id, b_id = tokenizer("A")["input_ids"][0], tokenizer("B")["input_ids"][0]
    assert len(tokenizer("A")["input_ids"]) == 1 and cai.answer_token_ids(tokenizer) == (a_id, b_id)

    def by_hand(item) -> float:
        ids = cai.judge_prompt_ids(tokenizer, [item])[0]
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), dim=-1)
        return (probs[a_id] / (probs[a_id] + probs[b_id])).item()

    expected = torch.tensor([by_hand(item) for item in items], dtype=torch.float64)
    for batch_size in (1, 2, 3):
        torch.testing.assert_close(cai.judge_ab_probs(model, tokenizer, items, batch_size).double(), expected,
                                   rtol=1e-5, atol=1e-6)
    swapped = torch.tensor([by_hand((p, r, b, a)) for p, r, a, b in items], dtype=torch.float64)
    both = cai.lm_judge(model, tokenizer, items, 2).double()
    torch.testing.assert_close(both, (expected + 1 - swapped) / 2, rtol=1e-5, atol=1e-6)
    assert ((both >= 0) & (both <= 1)).all()
    text = tokenizer.decode(cai.judge_prompt_ids(tokenizer, items[:1])[0])
    assert "Response A: 456" in text and "Response B: 375" in text and cai.CONSTITUTION["rule"] in text
    assert "without using the digit 7" in text and text.endswith("Answer A or B.\nAnswer: ")


def test_a_run_judged_by_a_language_model(tmp_path):
    """--judge-model: the RL pairs' labels come from the tiny judge (soft, in [1/2, 1] once ordered, not the rule
    judge's 1 - eps / eps / 1/2), and the agreement with the ground truth is measured."""
    tiny_judge(tmp_path)
    out = run_main(cai, [*TINY, "--total-updates", "3", "--sl-updates", "1", "--eval-every", "3", "--checkpoint-every",
                         "3", "--judge-model", str(tmp_path / "judge")], tmp_path / "run")
    ckpt = torch.load(next((tmp_path / "run" / out["run_dir"]).glob("checkpoint_3.pt")), weights_only=True)
    labels = [q for *_, q in ckpt["rl_pairs"]]
    assert labels and all(0.5 <= q <= 1 for q in labels) and not set(labels) <= {0.5, 0.9}
    assert 0.5 <= out["label_mean"] <= 1


def test_bad_judge_and_principles(tmp_path, capsys):
    """A judge folder that is not a model, a judge whose prompt does not fit its positions, the rule principle on a
    task with no rule, an unknown principle, SL steps beyond the total: one line, exit 2, nothing written."""
    torch.manual_seed(0)
    tokenizer = cai.build_tokenizer()
    short = tmp_path / "short"
    cai.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=128).save_pretrained(short)
    tokenizer.save_pretrained(short)
    for extra, expected in [(["--judge-model", str(tmp_path)], "no Hugging Face model folder"),
                            (["--judge-model", str(short)], "does not fit its 128 positions"),
                            (["--task", "addition", "--principles", "rule"], "states no rule"),
                            (["--task", "sort", "--principles", "answer", "whole"], "states no rule"),
                            (["--principles", "kindness"], "not in the constitution"),
                            (["--sl-updates", "7", "--total-updates", "6"], "sl-updates")]:
        cwd = tmp_path / f"bad{len(expected)}"
        assert_one_line_exit_2(lambda extra=extra, cwd=cwd: run_main(cai, [*TINY, *extra], cwd), expected, capsys)
        assert not (cwd / "runs").exists()


# The slow learning test (benchmark_results/constitutional_ai.md, run A): from sft.py's avoid-digit model (1000 steps,
# seed 1; greedy exact match 1.000, rule compliance 0.740 on the 100 held-out prompts), this file's defaults, seed 1,
# end at 0.970 and 0.720 with the rule judge's label agreement 0.520. Measured, neither stage raises the rule
# compliance beyond the noise of 100 prompts (0.69-0.78 in every run on the page), so the test does not claim it: it
# holds the exact match and the rule compliance within 0.05 of the SFT model's (at the RL learning rate of 1e-4 the
# exact match falls by 0.22 to 0.31: runs B and F) and the label agreement of the default constitution at >= 0.45
# (a margin for another CPU's float rounding).
SFT_AVOID = ["--task", "avoid-digit", "--eval-prompts", "100", "--total-updates", "1000", "--eval-every", "250",
             "--log-every", "250", "--seed", "1", "--save-model", "--exp-name", "sft_avoid"]
LEARNING = ["--seed", "1"]
MATCH_DROP, COMPLIANCE_DROP, AGREEMENT = 0.05, 0.05, 0.45


@pytest.mark.slow
def test_rule_compliance_holds_and_exact_match_holds_on_avoid_digit(tmp_path):
    """The documented pipeline: sft.py's avoid-digit model, then this file's defaults from its folder: the greedy exact
    match and rule compliance on the held-out prompts end within MATCH_DROP and COMPLIANCE_DROP of the SFT model's,
    and the rule judge's labels agree with the ground truth on >= AGREEMENT of the pairs it decides."""
    sft = load_algo("sft")
    policy = run_main(sft, SFT_AVOID, tmp_path)
    out = run_main(cai, ["--model-name-or-path", policy["model_path"], *LEARNING], tmp_path)
    assert out["sft_rule_compliance"] == policy["eval_rule_compliance"]
    assert out["eval_exact_match"] >= out["sft_exact_match"] - MATCH_DROP, out
    assert out["eval_rule_compliance"] >= out["sft_rule_compliance"] - COMPLIANCE_DROP, out
    assert out["label_agreement"] >= AGREEMENT, out
