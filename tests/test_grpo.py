"""grpo.py: group advantages (group, batch and no scaling) by hand; the three loss aggregations on a ragged batch
against loops over sequences and tokens; the k1 and k3 KL estimators against the exact KL of a small categorical;
the log-probability of sampled completions (left-padded prompts, ragged completions, a temperature) against a loop
over tokens; the mask after eos, the rewards and the sampled groups; a gradient step moves the policy towards the
positive advantages; a checkpoint that resumes only its own task; dynamic sampling's merged batch and a run of it; the
sampled accuracy; against TRL's GRPOTrainer (skipped without TRL): the same advantages and loss to 1e-5. Slow: GRPO
learns the prompts it trains on; with dynamic sampling, from sft.py's 1000-step model of 3-digit addition, it raises
the held-out exact match with the KL to the reference below a stated bound; the time per GRPO step against TRL's.
"""

from __future__ import annotations

import math
import os
import statistics

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, loop_token_logprobs, run_main

grpo = load_algo("grpo")
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "4", "--num-generations", "3",
        "--eval-prompts", "8", "--max-new-tokens", "6", "--max-completion-length", "6", "--sft-updates", "0"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = grpo.build_tokenizer()
    return grpo.build_model(tokenizer, n_layer=1, n_embd=16, n_head=2), tokenizer


def test_group_advantages_by_hand():
    """Three groups of 4: [1, 0, 0, 1] (mean 0.5, std sqrt(1/3) with Bessel's correction), [1, 1, 1, 1] (no spread:
    all 0), [2, 0, 1, 1] (mean 1, std sqrt(2/3)); eps = 1e-4 is added to the std."""
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 1, 1], dtype=torch.float64)
    adv, zero = grpo.group_advantages(rewards, 4, "group")
    a, b = 0.5 / (math.sqrt(1 / 3) + 1e-4), 1 / (math.sqrt(2 / 3) + 1e-4)
    expected = [a, -a, -a, a, 0, 0, 0, 0, b, -b, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)
    assert zero.tolist() == [False, True, False]
    none, _ = grpo.group_advantages(rewards, 4, "none")
    assert none.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1, -1, 0, 0], abs=1e-12)
    batch, _ = grpo.group_advantages(rewards, 4, "batch")  # the group's mean, the whole batch's std
    std = statistics.stdev(rewards.tolist())
    assert batch.tolist() == pytest.approx([d / (std + 1e-4) for d in none.tolist()], abs=1e-12)
    # G = 2, rewards 1 and 0: deviations +-0.5, std sqrt(0.5)
    two, _ = grpo.group_advantages(torch.tensor([1.0, 0.0]), 2, "group")
    assert two.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4)], rel=1e-6)


def loop_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, max_len) -> float:
    """The GRPO loss, one token at a time in Python floats."""
    per_seq, total, count = [], 0.0, 0
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            term = -min(rho * adv[i], min(max(rho, 1 - eps_low), 1 + eps_high) * adv[i])
            d = ref[i][t] - logp[i][t]
            term += beta * (math.exp(d) - d - 1)
            terms.append(term)
        per_seq.append(sum(terms) / max(len(terms), 1))
        total += sum(terms)
        count += len(terms)
    return {"grpo": sum(per_seq) / len(per_seq), "dapo": total / count,
            "dr_grpo": total / (len(logp) * max_len)}[loss_type]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_loss_aggregations_on_a_ragged_batch_against_loops(loss_type: str):
    """Completions of 1, 3, 5 and 2 tokens (padded to 5): ratios inside and outside the clip range, advantages of both
    signs and a zero one, beta > 0 and an asymmetric clip (eps_high > eps). The padded positions hold garbage that
    the mask must remove. The three aggregations differ on such a batch, and each equals its loop."""
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 3, 5, 2]
    mask = torch.tensor([[1 if t < n else 0 for t in range(5)] for n in lengths])
    logp = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    old = logp + torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.4  # ratios from about 0.4 to 2.5
    ref = logp + torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.5
    logp, old, ref = (t.masked_fill(mask == 0, v) for t, v in ((logp, 3.0), (old, 1.0), (ref, -2.0)))  # garbage
    adv = torch.tensor([1.3, -0.7, 0.9, 0.0], dtype=torch.float64)
    ratio = torch.exp(logp - old)[mask == 1]
    assert (ratio < 0.8).any() and (ratio > 1.28).any()  # both sides of the clip range are exercised
    args = (0.2, 0.28, 0.04)
    loss = grpo.grpo_loss(logp, old, ref, adv, mask, *args, loss_type, 7)
    expected = loop_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), *args, loss_type, 7)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    others = {t: loop_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), *args, t, 7)
              for t in ("grpo", "dapo", "dr_grpo")}
    assert len({round(v, 6) for v in others.values()}) == 3, others
    # the stats: clipped tokens by hand, and the mean k3 over the 11 completion tokens
    stats = grpo.grpo_stats(logp, old, ref, adv, mask, 0.2, 0.28)
    r, a = torch.exp(logp - old), adv.unsqueeze(1).expand(4, 5)
    clipped = [((r[i, t] < 0.8 and a[i, t] < 0) or (r[i, t] > 1.28 and a[i, t] > 0)) for i in range(4)
               for t in range(5) if mask[i, t]]
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / 11)
    d = (ref - logp)[mask == 1]
    assert stats["kl"].item() == pytest.approx((torch.exp(d) - d - 1).mean().item())


def test_loss_at_ratio_one_is_the_advantage_weighted_log_likelihood_gradient():
    """At the first step of a batch (old = logp detached) the loss's value is -mean A (beta 0) and its gradient is
    that of -A log pi: the policy-gradient form; clipping does not act."""
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss = grpo.grpo_loss(logp, logp.detach(), None, adv, mask, 0.2, 0.2, 0.0, "grpo", 3)
    assert loss.item() == pytest.approx(-(2.0 - 1.0) / 2)
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-2.0 / 2 / 2, -2.0 / 2 / 2, 0.0, 1.0 / 2, 0.0, 0.0])


def test_kl_estimators_against_the_exact_kl_of_a_categorical():
    """pi and pi_ref over 5 outcomes; y ~ pi: the means of k1 and k3 over 400,000 samples equal KL(pi || pi_ref)
    within 4 standard errors (both unbiased); k3 is never negative while k1 is, and k3's variance is the smaller."""
    pi = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    ref = torch.tensor([0.3, 0.3, 0.1, 0.2, 0.1], dtype=torch.float64)
    exact = (pi * (pi / ref).log()).sum().item()
    gen = torch.Generator().manual_seed(0)
    y = torch.multinomial(pi, 400_000, replacement=True, generator=gen)
    k1, k3 = grpo.kl_k1_k3(pi.log()[y], ref.log()[y])
    for k in (k1, k3):
        assert abs(k.mean().item() - exact) < 4 * k.std().item() / math.sqrt(len(k)), (k.mean().item(), exact)
    assert (k3 >= 0).all() and (k1 < 0).any()
    assert k3.var() < k1.var()
    # at single values: k3 = r - 1 - log r with r = pi_ref / pi
    k1_one, k3_one = grpo.kl_k1_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert k1_one.item() == pytest.approx(math.log(2)) and k3_one.item() == pytest.approx(0.5 - 1 - math.log(0.5))


def test_mask_after_eos_by_hand():
    eos = 1
    ids = torch.tensor([[5, 6, 1, 7, 8], [1, 9, 9, 9, 9], [5, 5, 5, 5, 5], [4, 4, 4, 4, 1]])
    assert grpo.mask_after_eos(ids, eos).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1],
                                                      [1, 1, 1, 1, 1]]


def test_sampled_token_logprobs_against_a_loop_over_tokens():
    """Left-padded prompts of different lengths and right-padded completions of different lengths (one without eos),
    temperature 0.7: each completion token's log-probability equals a loop over unpadded prefixes; 0 where masked;
    the same with each prompt's two completions run as one row (num_generations 2: the prompt once, the second
    completion seeing neither the first nor a shifted position). The entropy at each position is the entropy of that
    softmax."""
    model, tokenizer = tiny_model(1)
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = ["7+15=", "123+456=", "sort 90="]
    prompt_ids, prompt_mask = grpo.encode_prompts(tokenizer, prompts)
    completions = [[*tokenizer("22")["input_ids"], eos], [*tokenizer("5796")["input_ids"]], [eos]]  # 2nd: no eos
    width = max(map(len, completions))
    completion_ids = torch.tensor([c + [pad] * (width - len(c)) for c in completions])
    mask = grpo.mask_after_eos(completion_ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    with torch.no_grad():
        logp, entropy = grpo.sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 0.7)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        expected = loop_token_logprobs(model, tokenizer(p)["input_ids"], c, 0.7)
        assert logp[i, :len(c)].tolist() == pytest.approx(expected, abs=1e-5)
        assert (logp[i, len(c):] == 0).all() and (entropy[i, len(c):] == 0).all()
    # grouped: each prompt's completions in consecutive rows, run as one row with the prompt once (main's form)
    group_prompt_ids, group_prompt_mask = (t.repeat_interleave(2, dim=0) for t in (prompt_ids, prompt_mask))
    twice = [completions[0], completions[2], completions[1], completions[1], completions[2], completions[0]]
    group_ids = torch.tensor([c + [pad] * (width - len(c)) for c in twice])
    with torch.no_grad():
        grouped, grouped_entropy = grpo.sampled_token_logprobs(model, group_prompt_ids, group_prompt_mask, group_ids,
                                                               grpo.mask_after_eos(group_ids, eos), 0.7, 2)
    for i, c in enumerate(twice):
        expected = loop_token_logprobs(model, tokenizer(prompts[i // 2])["input_ids"], c, 0.7)
        assert grouped[i, :len(c)].tolist() == pytest.approx(expected, abs=1e-5)
        assert (grouped[i, len(c):] == 0).all() and (grouped_entropy[i, len(c):] == 0).all()
    torch.testing.assert_close(grouped_entropy[0], entropy[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the entropy of the first completion token of the first row, by hand
        ids = torch.tensor([tokenizer(prompts[0])["input_ids"]])
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double() / 0.7, dim=-1)
    assert entropy[0, 0].item() == pytest.approx(-(probs * probs.log()).sum().item(), abs=1e-5)


def test_merged_groups_keep_their_tokens_and_log_probabilities():
    """Dynamic sampling's batch: groups from two generation rounds of different prompt and completion widths (one
    completion cut without eos at the round's width) merged into one batch, in the order picked. Each merged row holds
    its round's tokens, its mask padded with 0 (so a cut completion is not extended by padding), its reward, and the
    log-probabilities of its tokens equal those computed in its own round."""
    model, tokenizer = tiny_model(4)
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def round_of(prompts: list[str], completions: list[list[int]], rewards: list[float]) -> dict:
        prompt_ids, prompt_mask = (t.repeat_interleave(2, dim=0) for t in grpo.encode_prompts(tokenizer, prompts))
        width = max(map(len, completions))
        completion_ids = torch.tensor([c + [pad] * (width - len(c)) for c in completions])
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                "mask": grpo.mask_after_eos(completion_ids, eos), "rewards": torch.tensor(rewards)}

    digits = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
    first = round_of(["1+2=", "12+34="], [[*digits("3"), eos], [*digits("4"), eos], [*digits("46"), eos],
                                          [*digits("4612"), eos]], [1.0, 0.0, 1.0, 0.0])
    second = round_of(["123+456=", "5+6="], [[*digits("579"), eos], [*digits("5791")], [*digits("11"), eos], [eos]],
                      [1.0, 0.0, 1.0, 0.0])  # "5791": cut at the round's width, no eos
    parts, picks = [first, second], [(1, 1), (0, 0), (1, 0)]
    merged = grpo.merge_groups(parts, picks, 2, pad)
    assert merged["prompt_ids"].shape == (6, 8) and merged["completion_ids"].shape == (6, 5)
    assert merged["rewards"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert merged["mask"].sum(dim=1).tolist() == [3, 1, 2, 2, 4, 4]  # the cut "5791" keeps 4 tokens, not 5
    with torch.no_grad():
        logp = grpo.sampled_token_logprobs(model, merged["prompt_ids"], merged["prompt_mask"],
                                           merged["completion_ids"], merged["mask"], 1.0, 2)[0]  # main's grouped rows
        own = [grpo.sampled_token_logprobs(model, q["prompt_ids"], q["prompt_mask"], q["completion_ids"], q["mask"],
                                           1.0)[0] for q in parts]
    for k, (r, g) in enumerate(picks):
        for j in range(2):
            row, source = 2 * k + j, 2 * g + j
            n = int(parts[r]["mask"][source].sum())
            keep = merged["prompt_mask"][row] == 1
            assert merged["prompt_ids"][row][keep].tolist() == parts[r]["prompt_ids"][source][
                parts[r]["prompt_mask"][source] == 1].tolist()
            assert merged["completion_ids"][row, :n].tolist() == parts[r]["completion_ids"][source, :n].tolist()
            assert logp[row, :n].tolist() == pytest.approx(own[r][source, :n].tolist(), abs=1e-5)
            assert (logp[row, n:] == 0).all()


def test_dynamic_sampling_trains_on_groups_with_spread(tmp_path):
    """--dynamic-sampling: the batch a checkpoint holds (taken mid-batch) has --batch-size groups, each with reward
    spread, drawn over more than one round, while the groups sampled had some without spread; the rule reward gives
    the untrained model's groups some spread. Also: eval/sample_accuracy is evaluated and returned."""
    argv = [*TINY, "--task", "avoid-digit", "--reward-funcs", "rule", "--dynamic-sampling", "--total-updates", "3",
            "--eval-every", "3", "--checkpoint-every", "1", "--num-iterations", "2", "--eval-samples", "2",
            "--seed", "3"]
    out = run_main(grpo, argv, tmp_path)
    ckpt = torch.load(sorted((tmp_path / out["run_dir"]).glob("checkpoint_*.pt"))[-1], map_location="cpu",
                      weights_only=True)
    batch = ckpt["batch"]
    assert ckpt["iteration"] == 1 and batch["rewards"].shape == (12,)
    assert (batch["rewards"].view(4, 3).std(dim=1) > 0).all()
    assert batch["rounds"].item() > 1 and batch["frac_reward_zero_std"].item() > 0
    assert 0 <= out["eval_sample_accuracy"] <= 1 and 0 <= out["eval_sample_accuracy_initial"] <= 1


def test_sample_accuracy_counts_right_samples_and_leaves_torchs_generator():
    """The sampled accuracy of a model: the fraction of right answers among the samples (scored as sample_groups'
    completions by hand), the same at every call (its own seed), and torch's generator as it was before."""
    model, tokenizer = tiny_model(5)
    prompts = ["1+2=", "12+34=", "5+5="]
    torch.manual_seed(11)
    state = torch.get_rng_state()
    value = grpo.sample_accuracy(model, tokenizer, "addition", prompts, 4, 6, 1.0, 2, 99)
    assert torch.equal(torch.get_rng_state(), state)
    assert grpo.sample_accuracy(model, tokenizer, "addition", prompts, 4, 6, 1.0, 2, 99) == value
    torch.manual_seed(99)  # the same draws by hand: chunks of 2 prompts, 4 samples each
    right = []
    for chunk in (prompts[:2], prompts[2:]):
        ids = grpo.sample_groups(model, tokenizer, chunk, 4, 6, 1.0)[2]
        answers = tokenizer.batch_decode(ids, skip_special_tokens=True)
        right += [grpo.score_addition(p, a)[0] for p, a in zip([p for p in chunk for _ in range(4)], answers,
                                                               strict=True)]
    assert value == pytest.approx(sum(right) / 12)


def test_negative_eval_samples_is_bad_input(tmp_path, capsys):
    assert_one_line_exit_2(lambda: run_main(grpo, [*TINY, "--eval-samples", "-1"], tmp_path), "eval-samples", capsys)


def test_rewards_by_hand():
    prompts = ["12+34=", "12+34=", "sum 15 no 7=", "sum 15 no 7=", "sum 15 no 7=", "sum 15 no 7="]
    responses = ["46", "47", "96", "771", "95", "7"]
    assert grpo.task_rewards("addition", ["answer_and_rule"], prompts[:2], responses[:2]) == [1.0, 0.0]
    assert grpo.task_rewards("avoid-digit", ["answer_and_rule"], prompts[2:], responses[2:]) == [1.0, 0.0, 0.0, 0.0]
    assert grpo.task_rewards("avoid-digit", ["answer"], prompts[2:], responses[2:]) == [1.0, 1.0, 0.0, 0.0]
    assert grpo.task_rewards("avoid-digit", ["rule"], prompts[2:], responses[2:]) == [1.0, 0.0, 1.0, 0.0]
    assert grpo.task_rewards("avoid-digit", ["answer", "rule"], prompts[2:], responses[2:]) == [2.0, 1.0, 1.0, 0.0]


def test_sampled_groups_repeat_each_prompt_and_stop_at_eos():
    """G completions of each prompt in a row; the pad token after each first eos; the same seed, the same samples."""
    model, tokenizer = tiny_model(2)
    prompts = ["1+2=", "123+456="]
    torch.manual_seed(0)
    prompt_ids, prompt_mask, completion_ids, mask = grpo.sample_groups(model, tokenizer, prompts, 3, 8, 1.0)
    assert prompt_ids.shape[0] == completion_ids.shape[0] == 6 and completion_ids.shape[1] <= 8
    single, _ = grpo.encode_prompts(tokenizer, prompts)
    assert torch.equal(prompt_ids, single.repeat_interleave(3, dim=0))
    assert torch.equal(mask, grpo.mask_after_eos(completion_ids, tokenizer.eos_token_id))
    assert (completion_ids[mask == 0] == tokenizer.pad_token_id).all()
    torch.manual_seed(0)
    again = grpo.sample_groups(model, tokenizer, prompts, 3, 8, 1.0)[2]
    assert torch.equal(again, completion_ids)
    assert len({tuple(r) for r in completion_ids.tolist()}) > 1  # sampled, not greedy


def test_a_step_on_the_loss_moves_towards_the_positive_advantage():
    """One completion with A > 0 and one with A < 0 of the same prompt: an SGD step on the loss raises the first's
    log-probability and lowers the second's."""
    model, tokenizer = tiny_model(3)
    prompt_ids, prompt_mask = grpo.encode_prompts(tokenizer, ["12+34=", "12+34="])
    eos = tokenizer.eos_token_id
    completion_ids = torch.tensor([[*tokenizer("46")["input_ids"], eos], [*tokenizer("47")["input_ids"], eos]])
    mask = torch.ones_like(completion_ids)
    adv = torch.tensor([1.0, -1.0])

    def summed():
        return grpo.sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 1.0)[0].sum(dim=1)

    before = summed().detach()
    logp = grpo.sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 1.0)[0]
    grpo.grpo_loss(logp, logp.detach(), None, adv, mask, 0.2, 0.2, 0.0, "grpo", 3).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    after = summed().detach()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_checkpoint_resumes_only_its_own_task(tmp_path, capsys):
    base = [*TINY, "--total-updates", "4", "--eval-every", "4", "--checkpoint-every", "2", "--num-iterations", "3",
            "--train-prompts", "10"]
    out = run_main(grpo, base, tmp_path / "a")
    assert out["global_step"] == 4 and 0 <= out["eval_exact_match_initial"] <= 1
    ckpt_path = sorted((tmp_path / "a" / out["run_dir"]).glob("checkpoint_*.pt"))[-1]
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 1 and ckpt["batch"]["completion_ids"].shape[0] == 12  # mid-batch: 4 = 3 + 1
    assert ckpt["reference"] is not None and ckpt["batch"]["old_logp"] is not None
    # the training set: 10 distinct prompts, none held out
    pool = ckpt["train_prompts"]
    assert len(set(pool)) == 10 and not set(pool) & {p for p, _ in grpo.heldout_pairs("addition", 3, 8)}
    model, _ = grpo.load_model(str(ckpt_path))
    assert sum(p.numel() for p in model.parameters()) > 0
    for extra, expected in [(["--task", "sort"], "--task addition"), (["--n-layer", "2"], "another model")]:
        argv = [*base, "--resume", str(ckpt_path), *extra]
        assert_one_line_exit_2(lambda argv=argv: run_main(grpo, argv, tmp_path / "bad"), expected, capsys)


def test_a_folder_with_a_chat_template_and_no_pad_token_trains(tmp_path):
    """Like a pretrained chat model (SmolLM2-Instruct): a chat template, and no pad token (it pads with eos, so the
    completions' padding is eos too and only the first eos ends one). GRPO runs through --model-name-or-path and its
    --save-model folder loads back."""
    model, tokenizer = tiny_model(5)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    tokenizer.pad_token = None
    model.save_pretrained(tmp_path / "chat")
    tokenizer.save_pretrained(tmp_path / "chat")
    loaded, loaded_tokenizer = grpo.load_pretrained(str(tmp_path / "chat"))
    assert loaded_tokenizer.pad_token_id == loaded_tokenizer.eos_token_id
    torch.manual_seed(0)
    _, _, completion_ids, mask = grpo.sample_groups(loaded, loaded_tokenizer, ["1+2="], 4, 6, 1.0)
    first_eos = [row.index(loaded_tokenizer.eos_token_id) if loaded_tokenizer.eos_token_id in row else len(row)
                 for row in completion_ids.tolist()]
    assert mask.sum(dim=1).tolist() == [min(e + 1, completion_ids.shape[1]) for e in first_eos]
    out = run_main(grpo, ["--model-name-or-path", str(tmp_path / "chat"), *TINY[6:], "--total-updates", "2",
                          "--eval-every", "2", "--task", "avoid-digit", "--reward-funcs", "rule", "--save-model"],
                   tmp_path / "run")
    assert out["global_step"] == 2 and len(out["eval_responses"]) == 8
    again, again_tokenizer = grpo.load_model(str(tmp_path / "run" / out["model_path"]))
    assert again_tokenizer.chat_template == tokenizer.chat_template

# ---- against TRL's GRPOTrainer: the same model, prompts and completions (TRL's generation replaced) ----

# prompts of one token length (TRL scores left-padded prompts without position ids), G = 4 completions each, of
# different lengths: a right one, near misses, a group with no reward spread, an empty one (eos alone) and one cut
# at --max-completion-length without eos
TRL_PROMPTS = ["123+456=", "500+500=", "314+159=", "271+828="]
TRL_COMPLETIONS = {"123+456=": ["579", "578", "5790", "579579"], "500+500=": ["1000", "1000", "1000", "1000"],
                   "314+159=": ["473", "47x3", "4", "473"], "271+828=": ["1099", "1089", "", "10990"]}
TRL_MAX_COMPLETION_LENGTH = 6
# every setting whose default moved between TRL versions, pinned (TRL 1.16's defaults: beta 0.0, loss_type "dapo",
# scale_rewards "group", epsilon 0.2, num_iterations 1, temperature 1.0, max_completion_length 512, and
# use_bias_correction_kl True, which multiplies k3 by the ratio: the same value, another gradient when beta > 0)
TRL_PINNED = {"num_generations": 4, "epsilon": 0.2, "epsilon_high": 0.28, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
              "max_completion_length": TRL_MAX_COMPLETION_LENGTH, "use_bias_correction_kl": False,
              "importance_sampling_level": "token", "multi_objective_aggregation": "sum_then_normalize",
              "mask_truncated_completions": False, "top_entropy_quantile": 1.0, "entropy_coef": 0.0,
              "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
              "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
              "optim": "adamw_torch", "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
              "shuffle_dataset": False, "use_cpu": True, "bf16": False, "fp16": False, "report_to": "none",
              "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "seed": 0}


def completion_token_ids(tokenizer, completion: str) -> list[int]:
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids if len(ids) == TRL_MAX_COMPLETION_LENGTH else [*ids, tokenizer.eos_token_id]  # cut: no eos


def run_trl(folder: str, out_dir, steps: int, **settings) -> list[dict]:
    """TRL's GRPOTrainer on the saved model, its rollouts replaced by TRL_COMPLETIONS (the rollout_func argument: the
    prompts' ids and the completions' ids, no sampling log-probabilities); returns, per optimiser step, what its
    compute_loss saw and returned: the advantage of each (prompt, completion) row, the loss and the gradient."""
    import datasets
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    counters: dict[str, int] = {}

    def rollout(prompts, trainer):
        completions = []
        for p in prompts:
            completions.append(completion_token_ids(tokenizer, TRL_COMPLETIONS[p][counters.get(p, 0) % 4]))
            counters[p] = counters.get(p, 0) + 1
        return {"prompt_ids": [tokenizer(p)["input_ids"] for p in prompts], "completion_ids": completions,
                "logprobs": None}

    def reward(prompts, completions, **kwargs):
        return grpo.task_rewards("addition", ["answer_and_rule"], prompts, completions)

    seen: list[dict] = []

    class Recording(GRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            rows = zip(inputs["prompt_ids"].tolist(), inputs["completion_ids"].tolist(),
                       inputs["completion_mask"].tolist(), inputs["advantages"].tolist(), strict=True)
            seen.append({"loss": loss.item(), "grad": [g.detach().clone() for g in grads],
                         "advantages": {(tuple(p), tuple(c for c, m in zip(cs, ms, strict=True) if m)): a
                                        for p, cs, ms, a in rows}})
            return loss

    config = GRPOConfig(output_dir=str(out_dir), max_steps=steps, **{**TRL_PINNED, **settings})
    trainer = Recording(model=folder, reward_funcs=reward, args=config, processing_class=tokenizer,
                        train_dataset=datasets.Dataset.from_dict({"prompt": TRL_PROMPTS}), rollout_func=rollout)
    trainer.train()
    return seen


def ours(folder: str, steps: int, beta: float, loss_type: str, scale_rewards: str, num_iterations: int) -> list[dict]:
    """This file's functions on the same model, prompts and completions, with AdamW and clipping as TRL's Trainer."""
    model, tokenizer = grpo.load_pretrained(folder)
    reference = __import__("copy").deepcopy(model).eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [p for p in TRL_PROMPTS for _ in range(4)]
    completions = [completion_token_ids(tokenizer, c) for p in TRL_PROMPTS for c in TRL_COMPLETIONS[p]]
    prompt_ids, prompt_mask = grpo.encode_prompts(tokenizer, prompts)
    width = max(map(len, completions))
    completion_ids = torch.tensor([c + [pad] * (width - len(c)) for c in completions])
    mask = grpo.mask_after_eos(completion_ids, eos)
    responses = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    rewards = torch.tensor(grpo.task_rewards("addition", ["answer_and_rule"], prompts, responses))
    advantages, _ = grpo.group_advantages(rewards, 4, scale_rewards)
    with torch.no_grad():
        old = grpo.sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 1.0, 4)[0]
        ref = grpo.sampled_token_logprobs(reference, prompt_ids, prompt_mask, completion_ids, mask, 1.0, 4)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRL_PINNED["learning_rate"], weight_decay=0.0)
    results = []
    for _ in range(steps):
        logp = grpo.sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 1.0, 4)[0]
        loss = grpo.grpo_loss(logp, old if num_iterations > 1 else logp.detach(), ref, advantages, mask, 0.2, 0.28,
                              beta, loss_type, TRL_MAX_COMPLETION_LENGTH)
        optimizer.zero_grad()
        loss.backward()
        results.append({"loss": loss.item(), "grad": [p.grad.clone() for p in model.parameters()],
                        "advantages": {(tuple(prompt_ids[i].tolist()), tuple(completion_ids[i][mask[i] == 1].tolist())):
                                       advantages[i].item() for i in range(len(prompts))}})
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return results


# (loss_type, scale_rewards, beta, num_iterations, steps): the default layer runs the first (TRL's default loss and
# scaling, k3 in the loss, a second step with ratio != 1); the others, with -m slow
TRL_CASES = [pytest.param("dapo", "group", 0.04, 2, 2),
             pytest.param("grpo", "group", 0.04, 1, 1, marks=pytest.mark.slow),
             pytest.param("dapo", "none", 0.04, 1, 1, marks=pytest.mark.slow),
             pytest.param("dr_grpo", "batch", 0.0, 1, 1, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("loss_type", "scale_rewards", "beta", "num_iterations", "steps"), TRL_CASES)
def test_advantages_and_loss_equal_trls(loss_type: str, scale_rewards: str, beta: float, num_iterations: int,
                                        steps: int, tmp_path, monkeypatch):
    """The advantage of every (prompt, completion), the loss and its gradient equal those of TRL's GRPOTrainer to
    1e-5 on the same tiny model (saved to a folder: TRL rebuilds its reference from the path) and completions; with
    num_iterations 2, also at the second step (ratio != 1 after an AdamW step with clipping, as TRL's Trainer's).
    The settings differ enough that any other aggregation or scaling misses by more than 1e-3."""
    pytest.importorskip("trl")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func's notice
    model, tokenizer = tiny_model(4)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    folder = str(tmp_path / "model")
    theirs = run_trl(folder, tmp_path / "trl", steps, loss_type=loss_type, scale_rewards=scale_rewards, beta=beta,
                     num_iterations=num_iterations)
    mine = ours(folder, steps, beta, loss_type, scale_rewards, num_iterations)
    assert len(theirs) == steps
    for step, (t, m) in enumerate(zip(theirs, mine, strict=True)):
        assert t["advantages"].keys() == m["advantages"].keys()
        for key, value in m["advantages"].items():
            assert t["advantages"][key] == pytest.approx(value, abs=1e-5), key
        assert t["loss"] == pytest.approx(m["loss"], abs=1e-5), step
        for a, b in zip(t["grad"], m["grad"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(abs(v) > 0.5 for v in mine[0]["advantages"].values()) and mine[-1]["loss"] != 0


@pytest.mark.slow
def test_learns_the_prompts_it_is_trained_on(tmp_path):
    """From sft.py's 2000-step model of 3-digit addition (seed 1): the 16 held-out prompts whose sampled answers are
    right between 10% and 90% of the time (32 samples each; seed 0) are GRPO's only prompts. 60 steps of this file's
    pieces (groups of 8 at temperature 1, group-scaled advantages, the grpo loss with beta 0.04, AdamW at 3e-4, the
    gradient norm clipped to 1) raise their sampled accuracy from about 0.62 to >= 0.9 (measured 0.973), with the KL
    to the reference below 0.2 per token. What it does not show: the held-out exact match on fresh prompts does not
    rise at the budgets tried (benchmark_results/grpo.md)."""
    import copy

    sft = load_algo("sft")
    policy = run_main(sft, ["--seed", "1", "--total-updates", "2000", "--eval-every", "1000", "--save-model"], tmp_path)
    torch.manual_seed(0)
    model, tokenizer = grpo.load_pretrained(str(tmp_path / policy["model_path"]))
    reference = copy.deepcopy(model).eval().requires_grad_(False)

    def accuracy(prompts: list[str], n: int = 32) -> np.ndarray:
        _, _, completion_ids, _ = grpo.sample_groups(model, tokenizer, prompts, n, 16, 1.0)
        responses = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        rewards = grpo.task_rewards("addition", ["answer_and_rule"], [p for p in prompts for _ in range(n)], responses)
        return np.array(rewards).reshape(len(prompts), n).mean(axis=1)

    heldout = [p for p, _ in grpo.heldout_pairs("addition", 3, 200)]
    hard = [p for p, a in zip(heldout, accuracy(heldout), strict=True) if 0.1 < a < 0.9][:16]
    assert len(hard) == 16
    start = accuracy(hard).mean()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0, fused=True)
    for _ in range(60):
        prompt_ids, prompt_mask, completion_ids, mask = grpo.sample_groups(model, tokenizer, hard, 8, 16, 1.0)
        responses = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        rewards = torch.tensor(grpo.task_rewards("addition", ["answer_and_rule"], [p for p in hard for _ in range(8)],
                                                 responses))
        advantages, _ = grpo.group_advantages(rewards, 8, "group")
        with torch.no_grad():
            ref_logp = grpo.sampled_token_logprobs(reference, prompt_ids, prompt_mask, completion_ids, mask, 1.0)[0]
        logp, _ = grpo.sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, 1.0)
        loss = grpo.grpo_loss(logp, logp.detach(), ref_logp, advantages, mask, 0.2, 0.2, 0.04, "grpo", 16)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    kl = grpo.grpo_stats(logp.detach(), logp.detach(), ref_logp, advantages, mask, 0.2, 0.2)["kl"].item()
    end = accuracy(hard).mean()
    assert start < 0.75 and end >= 0.9 and kl < 0.2, (start, end, kl)

# the setting measured in benchmark_results/grpo.md ("Learning on 3-digit addition", run F2), from sft.py's 1000-step
# model of 3-digit addition (seed 1); chosen before its run
RAISE_ARGS = ["--dynamic-sampling", "--loss-type", "dapo", "--beta", "0.04", "--learning-rate", "3e-4",
              "--lr-schedule", "linear", "--warmup-ratio", "0.05", "--total-updates", "1200", "--eval-every", "1200",
              "--log-every", "25", "--seed", "1", "--save-model"]


# the stated bound on the KL to the reference per completion token (held-out samples). Measured: 0.199 (the first
# machine), 0.245 (another machine, one row per completion), 0.275 (the same machine, a group's completions in one
# row: the same numbers to 1e-5, whose rounding alone sends 1,200 steps of sampling down another path)
KL_BOUND = 0.3


@pytest.mark.slow
def test_dynamic_sampling_raises_the_heldout_exact_match_of_a_weak_sft_model(tmp_path):
    """From sft.py --seed 1 --total-updates 1000 (greedy exact match 0.362 on 1,000 held-out prompts, 0.380 on the
    usual 200), 1,200 steps of GRPO with dynamic sampling on fresh prompts (RAISE_ARGS) raise the greedy exact match on
    1,000 held-out prompts by >= 0.06 (measured 0.362 -> 0.480; about 0.015 is the standard error of each) and the
    sampled accuracy on them by >= 0.1 (measured 0.251 -> 0.419), with the KL to the reference on held-out samples
    below KL_BOUND per completion token (measured 0.199-0.275, exactly over the vocabulary, along 8 samples of each
    prompt)."""
    sft = load_algo("sft")
    policy = run_main(sft, ["--seed", "1", "--total-updates", "1000", "--eval-every", "1000", "--save-model"], tmp_path)
    start_path = str(tmp_path / policy["model_path"])
    out = run_main(grpo, ["--model-name-or-path", start_path, *RAISE_ARGS], tmp_path)
    torch.manual_seed(0)
    prompts = [p for p, _ in grpo.heldout_pairs("addition", 3, 1000)]
    reference, tokenizer = grpo.load_pretrained(start_path)
    policy_model, _ = grpo.load_pretrained(str(tmp_path / out["model_path"]))
    start, end = heldout_scores(reference, tokenizer, prompts), heldout_scores(policy_model, tokenizer, prompts)
    kl = heldout_kl(policy_model, reference, tokenizer, prompts)
    print(f"\nheld-out (1,000 prompts) start {start}, end {end}, KL per completion token {kl:.3f}")
    assert end["greedy"] >= start["greedy"] + 0.06 and end["sampled"] >= start["sampled"] + 0.1, (start, end)
    assert kl < KL_BOUND, kl


def heldout_scores(model, tokenizer, prompts: list[str]) -> dict[str, float]:
    """A model's greedy exact match and sampled accuracy (8 samples each, temperature 1) on `prompts`."""
    greedy = grpo.evaluate_lm(model, tokenizer, "addition", prompts, 32, 64)["exact_match"]
    sampled = grpo.sample_accuracy(model, tokenizer, "addition", prompts, 8, 16, 1.0, 64, grpo.EVAL_SEED)
    return {"greedy": greedy, "sampled": sampled}


def heldout_kl(policy, reference, tokenizer, prompts: list[str]) -> float:
    """KL(policy || reference) per completion token on 8 samples of the policy for each prompt: at each sampled
    position the exact sum over the vocabulary of p log(p / q), averaged over the completion tokens (eos included)."""
    total, count = 0.0, 0.0
    for i in range(0, len(prompts), 50):
        prompt_ids, prompt_mask, completion_ids, mask = grpo.sample_groups(policy, tokenizer, prompts[i:i + 50], 8, 16,
                                                                           1.0)
        ids, attention = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, mask], 1)
        with torch.no_grad():
            p, q = (torch.log_softmax(grpo.forward_logits(m, ids, attention)[:, prompt_ids.shape[1] - 1:-1].float(), -1)
                    for m in (policy, reference))
        total += ((p.exp() * (p - q)).sum(-1) * mask).sum().item()
        count += mask.sum().item()
    return total / count


# ---- time per GRPO step against TRL's (slow): the same SFT model, prompts, G, lengths and settings ----

SPEED = {"batch_size": 16, "num_generations": 8, "max_completion_length": 16, "beta": 0.04, "learning_rate": 1e-4,
         "steps": 40, "skip": 10}
# the SFT model to time on: the folder of `python algorithms/sft.py --seed 1 --total-updates 2000 --save-model`
# (benchmark_results/grpo.md), named by the environment variable SFT_FOLDER
SFT_FOLDER = os.environ.get("SFT_FOLDER", "")


def time_steps(which: str, folder: str, out_dir: str) -> dict:
    """One process, one torch thread: SPEED["steps"] GRPO steps of this file's main or of TRL's GRPOTrainer (which
    generates with transformers' generate, as main does) on `folder`; the time between consecutive AdamW steps (one
    whole GRPO step: sampling, rewards, reference, loss, update) averaged after the first SPEED["skip"], and the
    process's peak resident memory before and after training."""
    import json
    import resource
    import time

    torch.set_num_threads(1)
    stamps: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        stamps.append(time.perf_counter())
        return real_step(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    b, g, steps = SPEED["batch_size"], SPEED["num_generations"], SPEED["steps"]
    if which == "ours":
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_main(grpo, ["--model-name-or-path", folder, "--total-updates", str(steps), "--eval-every", str(steps),
                        "--log-every", str(steps), "--eval-prompts", "8", "--batch-size", str(b), "--num-generations",
                        str(g), "--max-completion-length", str(SPEED["max_completion_length"]), "--beta",
                        str(SPEED["beta"]), "--learning-rate", str(SPEED["learning_rate"]), "--loss-type", "grpo"],
                 out_dir)
    else:
        import datasets
        import numpy as np
        from transformers import AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        exclude = {p for p, _ in grpo.heldout_pairs("addition", 3, 200)}
        prompts, _ = grpo.sample_pairs("addition", np.random.default_rng(1), 3, b * steps, exclude)

        def reward(prompts, completions, **kwargs):
            return grpo.task_rewards("addition", ["answer_and_rule"], prompts, completions)

        config = GRPOConfig(output_dir=out_dir, max_steps=steps, **{
            **TRL_PINNED, "per_device_train_batch_size": b * g, "num_generations": g, "max_completion_length":
            SPEED["max_completion_length"], "epsilon_high": 0.2, "beta": SPEED["beta"], "loss_type": "grpo",
            "scale_rewards": "group", "num_iterations": 1, "learning_rate": SPEED["learning_rate"],
            "logging_steps": steps, "seed": 1})
        trainer = GRPOTrainer(model=folder, reward_funcs=reward, args=config,
                              processing_class=AutoTokenizer.from_pretrained(folder),
                              train_dataset=datasets.Dataset.from_dict({"prompt": prompts}))
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        trainer.train()
    done = stamps[SPEED["skip"]:]
    result = {"which": which, "steps": len(stamps), "seconds_per_step": (done[-1] - done[0]) / (len(done) - 1),
              "peak_rss_mb_before": peak_before / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(result))
    return result


@pytest.mark.slow
def test_time_per_step_against_trl(tmp_path):
    """This file's GRPO step and TRL's on the SFT model of 3-digit addition (16 prompts x 8 completions of at most 16
    tokens, beta 0.04, one torch thread), each in its own process, alternately twice (the machine's load drifts): both
    run every step, and this file's best time per step beats TRL's best. Measured: benchmark_results/grpo.md."""
    pytest.importorskip("trl")
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not SFT_FOLDER or not (Path(SFT_FOLDER) / "config.json").is_file():
        pytest.skip("set SFT_FOLDER to the folder of sft.py --seed 1 --total-updates 2000 --save-model")
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for i, which in enumerate(["ours", "trl"] * 2):
        proc = subprocess.run([sys.executable, __file__, which, SFT_FOLDER, str(tmp_path / f"{which}{i}")],
                              capture_output=True, text=True, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["steps"] == SPEED["steps"], result
        runs[which].append(result)
    best = {w: min(r["seconds_per_step"] for r in rs) for w, rs in runs.items()}
    peak = {w: max(r["peak_rss_mb"] for r in rs) for w, rs in runs.items()}
    print(f"\nseconds per GRPO step (best of 2): ours {best['ours']:.3f}, TRL {best['trl']:.3f} "
          f"({best['trl'] / best['ours']:.2f}x); peak RSS MB: ours {peak['ours']:.0f}, TRL {peak['trl']:.0f}; all runs: "
          f"{json.dumps(runs)}")
    assert best["ours"] < best["trl"], runs


if __name__ == "__main__":  # python tests/test_grpo.py ours|trl MODEL_FOLDER OUT_DIR: one process of the timing test
    import sys

    time_steps(sys.argv[1], sys.argv[2], sys.argv[3])
