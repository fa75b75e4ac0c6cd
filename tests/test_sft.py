"""sft.py: the completion log-probability (shifted, masked) against a loop over tokens, the loss and its masks, the
tasks' pairs and scorers by hand, the held-out split, the learning-rate schedule, batched left-padded generation
against one prompt at a time, a Hugging Face folder saved by this file and loaded back by path (with and without a
chat template), bad model folders; slow: 3-digit addition reaches a stated held-out exact match.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, loop_token_logprobs, run_main

sft = load_algo("sft")
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "8", "--eval-prompts", "8",
        "--max-new-tokens", "6"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = sft.build_tokenizer()
    return sft.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2), tokenizer


def test_completion_logprob_against_a_loop_over_tokens():
    """Right-padded pairs of different lengths (training) and the same pairs left-padded (how the later files score
    sampled responses): the summed and per-token log-probabilities of the completion tokens (eos included) equal a
    loop that feeds each unpadded prefix; prompt and padding positions are masked out; the SFT loss is minus their
    mean over the batch's completion tokens."""
    model, tokenizer = tiny_model()
    model.eval()
    prompts, completions = ["7+15=", "123+4=", "sort 90="], ["22", "127", "09"]
    input_ids, attention_mask, labels = sft.encode_pairs(tokenizer, prompts, completions)
    eos = tokenizer.eos_token_id
    assert input_ids.shape == (3, 11)  # "sort 90=" + "09" + eos, the longest
    with torch.no_grad():
        logits = sft.forward_logits(model, input_ids, attention_mask)
    summed, per_token, mask = sft.token_logprobs(logits, labels)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        p_ids, c_ids = tokenizer(p)["input_ids"], [*tokenizer(c)["input_ids"], eos]
        expected = loop_token_logprobs(model, p_ids, c_ids)
        # the completion's tokens sit at positions len(p)..len(p)+len(c); the logits one before score them
        assert mask[i].nonzero().flatten().tolist() == list(range(len(p_ids) - 1, len(p_ids) + len(c_ids) - 1))
        torch.testing.assert_close(per_token[i][mask[i]].double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)
        assert summed[i].item() == pytest.approx(sum(expected), abs=1e-4)
        assert (per_token[i][~mask[i]] == 0).all()
    loss = sft.sft_loss(logits, labels)
    assert loss.item() == pytest.approx(-(per_token.sum() / mask.sum()).item(), rel=1e-6)

    # the same pairs padded on the left, positions from the attention mask: the same values
    width = input_ids.shape[1]
    lengths = attention_mask.sum(dim=1)
    left_ids, left_mask, left_labels = (torch.full_like(input_ids, tokenizer.pad_token_id), torch.zeros_like(attention_mask),
                                        torch.full_like(labels, -100))
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, width - n:], left_mask[i, width - n:], left_labels[i, width - n:] = input_ids[i, :n], 1, labels[i, :n]
    with torch.no_grad():
        left_summed, _, _ = sft.token_logprobs(sft.forward_logits(model, left_ids, left_mask), left_labels)
    torch.testing.assert_close(left_summed, summed, rtol=1e-5, atol=1e-5)


def test_logprob_sum_is_what_the_loss_gradient_raises():
    """One SGD step on the SFT loss raises the log-probability of the batch's completions (the loss is the negative
    mean of what token_logprobs sums), and a completion token's label is what is scored, not the prompt's."""
    model, tokenizer = tiny_model(1)
    input_ids, attention_mask, labels = sft.encode_pairs(tokenizer, ["1+1=", "2+2="], ["2", "4"])
    before = sft.token_logprobs(sft.forward_logits(model, input_ids, attention_mask), labels)[0].detach()
    loss = sft.sft_loss(sft.forward_logits(model, input_ids, attention_mask), labels)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    after = sft.token_logprobs(sft.forward_logits(model, input_ids, attention_mask), labels)[0].detach()
    assert (after > before).all(), (before, after)


def test_tasks_by_hand():
    assert sft.score_addition("12+34=", "46") == (True, True)
    assert sft.score_addition("12+34=", " The answer is 46.") == (True, True)  # the last run of digits
    assert sft.score_addition("1+7=", "1+7 = 8") == (True, True)
    assert sft.score_addition("12+34=", "046") == (False, True) and sft.score_addition("12+34=", "") == (False, True)
    assert sft.score_sort("sort 31415=", "11345") == (True, True)
    assert sft.score_sort("sort 31415=", "13145") == (False, True)
    assert sft.score_avoid_digit("sum 15 no 7=", "96") == (True, True)
    assert sft.score_avoid_digit("sum 15 no 7=", "771") == (True, False)  # right, but breaks the rule
    assert sft.score_avoid_digit("sum 15 no 7=", "95") == (False, True)
    assert sft.score_avoid_digit("sum 15 no 7=", "7") == (False, False)
    assert sft.score_avoid_digit("sum 0 no 0=", "") == (False, True)
    assert sft.extract_answer("x12y345") == "345" and sft.extract_answer("none") == ""
    rng = np.random.default_rng(0)
    for task, make in sft.MAKE.items():
        for _ in range(200):  # every demonstration is a right answer
            prompt, completion = make(rng, 4)
            assert sft.SCORE[task](prompt, completion)[0], (task, prompt, completion)
    assert sft.make_addition(np.random.default_rng(3), 2)[0].count("+") == 1
    # avoid-digit: the demonstrations ignore the rule; n = 3 random digits contain the banned one with
    # probability 1 - 0.9^3 = 0.271 (2000 draws: standard error 0.010)
    broken = [not sft.score_avoid_digit(*sft.make_avoid_digit(rng, 3))[1] for _ in range(2000)]
    assert 0.24 < np.mean(broken) < 0.30, np.mean(broken)


def test_heldout_prompts_are_fixed_distinct_and_never_trained_on():
    pairs = sft.heldout_pairs("avoid-digit", 3, 100)
    assert pairs == sft.heldout_pairs("avoid-digit", 3, 100)  # the same for every run and seed
    prompts = {p for p, _ in pairs}
    assert len(prompts) == 100
    assert sft.prompt_space("avoid-digit", 3) == 280 and sft.prompt_space("addition", 3) == 10**6
    drawn, _ = sft.sample_pairs("avoid-digit", np.random.default_rng(0), 3, 2000, exclude=prompts)
    assert not prompts & set(drawn)
    assert len(set(drawn)) > 150  # of the 180 others (sums near 0 or 27 are rare: "sum 0" is 1 draw in 1000)


def test_lr_multiplier_by_hand():
    assert sft.lr_multiplier(0.0, 0.1, "cosine") == 0.0
    assert sft.lr_multiplier(0.05, 0.1, "cosine") == pytest.approx(0.5)
    assert sft.lr_multiplier(0.1, 0.1, "cosine") == pytest.approx(1.0)
    assert sft.lr_multiplier(0.55, 0.1, "cosine") == pytest.approx(0.5)  # half-way through the decay
    assert sft.lr_multiplier(1.0, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert sft.lr_multiplier(0.55, 0.1, "linear") == pytest.approx(0.5)
    assert sft.lr_multiplier(0.9, 0.0, "linear") == pytest.approx(0.1)
    assert sft.lr_multiplier(0.9, 0.1, "constant") == 1.0


def test_character_tokenizer():
    tokenizer = sft.build_tokenizer()
    ids = tokenizer("sum 15 no 7=")["input_ids"]
    assert len(ids) == 12 and tokenizer.decode(ids) == "sum 15 no 7="
    assert tokenizer.decode([*tokenizer("42")["input_ids"], tokenizer.eos_token_id, tokenizer.pad_token_id],
                            skip_special_tokens=True) == "42"
    assert tokenizer("é")["input_ids"] == [tokenizer.unk_token_id]
    assert len(tokenizer) == 3 + len(sft.ALPHABET)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time():
    model, tokenizer = tiny_model(2)
    prompts = ["1+2=", "123+456=", "sort 9081=", "7+80="]
    batched = sft.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4)
    single = [sft.generate(model, tokenizer, [p], max_new_tokens=5, batch_size=1)[0] for p in prompts]
    assert batched == single and all(isinstance(r, str) for r in batched)
    torch.manual_seed(0)
    sampled = sft.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4, do_sample=True)
    torch.manual_seed(0)
    assert sampled == sft.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4, do_sample=True)


@pytest.mark.parametrize("chat", [False, True])
def test_a_saved_folder_loads_by_path_and_trains(chat: bool, tmp_path, capsys):
    """A tiny model and tokenizer saved by this file with save_pretrained (safetensors) train through
    --model-name-or-path; the run's --save-model folder loads back and answers. With a chat template the prompt is a
    user message with the instruction, then the generation prompt."""
    model, tokenizer = tiny_model(3)
    if chat:
        tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                                   "{% if add_generation_prompt %}<assistant>{% endif %}")
        text = tokenizer.decode(sft.format_prompts(tokenizer, ["1+2="])[0])
        assert text == f"<user>1+2=\n{sft.CHAT_INSTRUCTION}\n<assistant>"
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").is_file() and (tmp_path / "base" / "tokenizer.json").is_file()
    out = run_main(sft, ["--model-name-or-path", str(tmp_path / "base"), "--total-updates", "3", "--eval-every", "3",
                         *TINY, "--save-model"], tmp_path / "run")
    assert out["global_step"] == 3 and len(out["eval_responses"]) == 8
    folder = tmp_path / "run" / out["model_path"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    loaded, loaded_tokenizer = sft.load_model(str(folder))
    assert bool(loaded_tokenizer.chat_template) == chat
    assert sft.generate(loaded, loaded_tokenizer, ["12+3="], 4, 1) == sft.generate(loaded, loaded_tokenizer, ["12+3="], 4, 1)
    # the saved weights are the trained ones, not the starting ones
    start = dict(model.named_parameters())
    assert any(not torch.equal(p, start[n]) for n, p in loaded.named_parameters())


def test_bad_model_folders_and_checkpoints(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "no_tokenizer")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"algo": "bc", "env_id": "CartPole-v1", "model_args": {}}, foreign)
    for argv, expected in [(["--model-name-or-path", str(tmp_path / "broken")], "does not load"),
                           (["--model-name-or-path", str(tmp_path / "no_tokenizer")], "tokenizer does not fit"),
                           (["--resume", str(junk)], "not a readable checkpoint"),
                           (["--resume", str(foreign)], "does not fit sft.py")]:
        cwd = tmp_path / "cwd"
        assert_one_line_exit_2(lambda argv=argv, cwd=cwd: run_main(sft, [*argv, *TINY, "--total-updates", "2"], cwd),
                               expected, capsys)
        assert not (cwd / "runs").exists(), argv


def test_resume_refuses_another_task_or_model(tmp_path, capsys):
    base = [*TINY, "--total-updates", "4", "--eval-every", "4", "--checkpoint-every", "2"]
    out = run_main(sft, base, tmp_path / "a")
    ckpt = sorted((tmp_path / "a" / out["run_dir"]).glob("checkpoint_*.pt"))[-1]
    for extra, expected in [(["--task", "sort"], "--task addition"), (["--n-layer", "2"], "another model"),
                            (["--total-updates", "4"], "--total-updates must be larger")]:
        argv = [*base, "--resume", str(ckpt), *extra]
        assert_one_line_exit_2(lambda argv=argv: run_main(sft, argv, tmp_path / "bad"), expected, capsys)
    model, _ = sft.load_model(str(ckpt))  # a checkpoint loads as a model too
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_learns_three_digit_addition(tmp_path):
    """Seed 1, the file's defaults (the in-code GPT-2, 4000 optimiser steps of 64 pairs): greedy exact match on the
    200 held-out prompts >= 0.8. Measured on this machine: 0.860 (0.670 at step 1000, 0.850 at 2000, 0.840 at 3000),
    benchmark_results/sft.md; the margin is for another CPU's float rounding, not for another seed."""
    out = run_main(sft, ["--seed", "1", "--eval-every", "1000"], tmp_path)
    assert out["eval_exact_match"] >= 0.8, out["eval_exact_match"]
    assert out["global_step"] == 4000 and math.isfinite(out["sps"])
