"""Constitutional AI: harmlessness from AI feedback, a written constitution's critiques, revisions and soft labels.

Bai et al. (2022), "Constitutional AI: Harmlessness from AI Feedback", https://arxiv.org/abs/2212.08073. Instead of
human labels, a short written list of principles (the constitution) steers two stages:
1. SL-CAI, the supervised stage: the SFT model answers training prompts; a critic checks each response against each
   principle and writes what it breaks (the critique); a reviser rewrites the responses that break one; the model is
   fine-tuned on (prompt, final revision), with sft.py's loss on the completion tokens.
2. RL-CAI, reinforcement learning from AI feedback: the SL-CAI model samples two responses to each prompt; a judge
   reads one principle, drawn at random for each comparison (as the paper does), and gives the probability that
   response A follows it better than B: a SOFT label. The paper trains a preference model on those labels and then
   PPO; here the policy learns from them directly with DPO on soft labels (below), the SL-CAI model its reference.

Run:
    python algorithms/constitutional_ai.py                              # avoid-digit; a quick SFT in this process first
    python algorithms/sft.py --task avoid-digit --eval-prompts 100 --total-updates 1000 --save-model --exp-name sft_avoid
    python algorithms/constitutional_ai.py --model-name-or-path runs/<sft run>/sft_avoid
    python algorithms/constitutional_ai.py --model-name-or-path DIR --judge-model SMOLLM2_DIR   # an LM as the judge
    python algorithms/constitutional_ai.py --task addition --eval-prompts 200 --principles answer brief
    python algorithms/constitutional_ai.py --help

Who critiques, revises and judges (a character-level model cannot read a constitution, so this says it plainly):
- The constitution (CONSTITUTION) is four sentences a person reads: "answer" (the answer is what the prompt asks
  for), "rule" (never write the digit the prompt bans), "brief" (the answer's digits alone) and "whole" (answer and
  keep the rule at once); rule and whole need a task that states a rule (avoid-digit). Each has a checkable form on
  the in-code tasks (principle_kept: sft.py's scorers' two verdicts, both of them, a digits-only test).
  --principles picks some; by default every one that applies to --task.
- The default critic applies those checks and writes one line per principle broken (critique); a few are printed.
- The default reviser is the model itself, by critique-guided rejection sampling: a response the critic faults is
  sampled again, up to --revision-attempts times, and the first sample that keeps every principle is its revision
  (revise_by_resampling). The SL-CAI set is every response that keeps every principle, as answered or as revised;
  those whose revision still breaks one are left out. cai/revised_fraction (responses faulted) and
  cai/revision_failed_fraction (of those, still faulted after the last attempt) are logged.
- The default judge applies the drawn principle's check to both responses: p("A is better") = 1 - eps when A keeps
  it and B breaks it, eps in the reverse case, 1/2 when both keep or both break it (a tie), eps = --label-noise, a
  judge wrong with probability eps (rule_judge). A pair it calls an exact tie states no preference and is left out
  of the RL set (--keep-ties keeps it: its loss then pulls the margin back to 0); pairs of two equal samples too.
- --judge-model PATH: any local causal LM folder (tools/smollm2.py writes SmolLM2-135M-Instruct's) reads the
  principle, the request in words and responses A and B, and is asked "Which response follows the principle better?
  Answer A or B."; its next-token probabilities of "A" and "B", renormalised, are the label, averaged over both orders
  of the two responses to cancel the position bias, as the paper does (lm_judge). The critic and reviser stay rules.
- The AI labels are compared with the task's ground truth: on each pair where the scorer (right and rule kept)
  prefers one response, the fraction where the judge's p > 1/2 for it (cai/label_agreement; cai/label_mean is the
  mean p of the responses the labels favour). Ties under the drawn principle count as disagreements.

The math, as written in the code below (log pi(y|x): the sum over the response's tokens and its eos, each scored by
the column before it; each pair is one row, the prompt run once for both responses, as in dpo.py: encode_shared_pairs):
    SL-CAI            L = - sum_i sum_t mask * logp / sum_i sum_t mask over (prompt, final revision) batches (sft.py)
    log-ratio         u(y) = log pi(y|x) - log pi_ref(y|x), pi_ref the SL-CAI model (frozen: its log-probabilities
                      of every pair computed once, when the RL stage starts, and kept in the checkpoints)
    margin            h = u(y_A) - u(y_B), each pair ordered so that p = p(A better) >= 1/2
    soft-label DPO    L = -[p log sigmoid(beta h) + (1 - p) log sigmoid(-beta h)]: the Bradley-Terry cross-entropy
                      with a soft target; p = 1 is dpo.py's sigmoid loss, p = 1 - eps its conservative DPO (label
                      smoothing eps); dL/dh = beta (sigmoid(beta h) - p), zero at h = logit(p) / beta: a soft label
                      asks for a finite margin, and p = 1/2 pulls h back to 0 (the reference's ranking)
    logged            rewards/chosen, rewards/rejected = beta u(y_A), beta u(y_B); rewards/margins = beta h;
                      rewards/accuracies = the fraction with beta h > 0; logps/chosen, logps/rejected (as dpo.py)
    learning rate     sft.py's warm-up then cosine, linear or constant, once over each stage (--sl-learning-rate over
                      the first --sl-updates steps, --learning-rate over the rest); AdamW (a fresh one for the RL
                      stage), the gradient's global norm clipped to --max-grad-norm

A language-model file (sft.py's kind):
- Progress is counted in optimiser steps over both stages: the first --sl-updates of --total-updates are SL-CAI's
  (0: RL-CAI straight from the SFT model), the rest RL-CAI's. Greedy exact match and rule compliance on the family's
  held-out prompts (evaluate_lm) are measured for the SFT model (step 0), after SL-CAI (step --sl-updates) and after
  RL-CAI (the last step), and every --eval-every steps; main returns all three.
- --save-model writes the policy as a Hugging Face folder runs/{run}/{exp_name}/; load_model(path) reads it or a
  checkpoint.
- Long runs, sft.py's form: checkpoints hold the policy, AdamW's state, the schedule, the SL-CAI set, the RL pairs
  with their labels and reference log-probabilities (once made) and every random generator, so --resume continues
  bit for bit, across the change of stage too; Ctrl-C or SIGTERM writes one and exits 130 / 143 with the resume
  command; a non-finite loss or gradient norm stops the run (exit 3) keeping the last finite state.
Tested: from sft.py's avoid-digit model (1000 steps, seed 1), the defaults with seed 1 keep the greedy exact match
and rule compliance within 0.05 of the SFT model's; a rise of the rule compliance is not shown
(tests/test_constitutional_ai.py, slow).
Results: benchmark_results/constitutional_ai.md
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import shlex
import signal
import string
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "constitutional_ai"
    """the name of this experiment (used in the run directory's name and the saved model's folder)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (SFT, sampling) and the batch and principle sampler"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it"""
    torch_threads: int = 1
    """torch CPU threads; 1 suits the small in-code model on a shared machine"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    save_model: bool = False
    """if toggled, save the policy and its tokenizer as a Hugging Face folder runs/{run_name}/{exp_name}/"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many optimiser steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic or interrupted) up to --total-updates"""
    nan_check: bool = True
    """if toggled, a NaN or infinite loss or gradient norm stops the run (exit 3)"""

    model_name_or_path: str | None = None
    """a local Hugging Face causal LM folder (sft.py's --save-model output): the model both stages start from;
    unset: the GPT-2 built in code, first fine-tuned here for --sft-updates steps"""
    task: str = "avoid-digit"
    """the task the prompts and the checks come from: avoid-digit (a stated rule), addition or sort"""
    num_digits: int = 3
    """digits of each operand (addition), of the string to sort (sort), of the demonstrations (avoid-digit)"""
    sft_updates: int = 1000
    """without --model-name-or-path: SFT optimiser steps (sft.py's defaults otherwise) before the constitutional
    stages (0: the untrained model)"""
    principles: tuple[str, ...] = ()
    """the constitution's principles the critic and the judge use: answer, rule, brief (empty: every one that
    applies to --task; rule needs a task that states a rule)"""
    train_prompts: int = 4000
    """SL-CAI: prompts the model answers, the critic checks and the reviser revises"""
    revision_attempts: int = 4
    """SL-CAI: samples the reviser draws for a faulted response until one keeps every principle (0: no revision, the
    faulted responses are left out)"""
    rl_prompts: int = 8000
    """RL-CAI: prompts whose two sampled responses the judge compares (pairs of equal responses are left out)"""
    temperature: float = 1.0
    """the sampling temperature of responses, revisions and the RL pairs"""
    judge_model: str | None = None
    """a local Hugging Face causal LM folder that judges the RL pairs (its probabilities of "A" and "B"); unset: the
    rule judge"""
    label_noise: float = 0.1
    """the rule judge's probability of preferring the response that breaks the drawn principle: its labels are
    1 - eps, eps or 1/2 (a tie), in [0, 0.5)"""
    keep_ties: bool = False
    """if toggled, keep the pairs the judge calls an exact tie (p = 1/2: the rule judge when both responses keep or
    both break the drawn principle) in the RL set; by default they are left out"""
    beta: float = 0.1
    """the KL coefficient beta of DPO on the soft labels (TRL's default 0.1)"""
    total_updates: int = 1000
    """optimiser steps in all, both stages"""
    sl_updates: int = 500
    """the first this many optimiser steps are SL-CAI's (fine-tuning on the revisions), the rest RL-CAI's (0: no
    supervised stage)"""
    batch_size: int = 64
    """examples or pairs per optimiser step (also the batch of SFT, sampling, judging and evaluation)"""
    sl_learning_rate: float = 1e-3
    """the peak AdamW learning rate of SL-CAI"""
    learning_rate: float = 1e-5
    """the peak AdamW learning rate of RL-CAI (TRL's DPO default is 1e-6; at 1e-4 the in-code model's greedy exact
    match falls, benchmark_results/constitutional_ai.md)"""
    lr_schedule: str = "cosine"
    """the decay after warm-up, in each stage: cosine, linear or constant"""
    warmup_ratio: float = 0.05
    """the fraction of each stage's steps over which the learning rate rises linearly from 0"""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay"""
    max_grad_norm: float = 1.0
    """clip the gradient's global norm to this (inf: no clipping)"""
    n_layer: int = 2
    """transformer blocks of the in-code GPT-2"""
    n_embd: int = 128
    """width of the in-code GPT-2"""
    n_head: int = 4
    """attention heads of the in-code GPT-2 (must divide --n-embd)"""
    eval_every: int = 250
    """evaluate (greedy decoding of the held-out prompts) every this many optimiser steps, at the end of SL-CAI and
    after the last"""
    eval_prompts: int = 100
    """held-out prompts for the greedy evaluation; never trained on (at most half of the task's distinct prompts)"""
    max_new_tokens: int = 32
    """the longest response generated (sampled or greedy), in tokens"""
    log_every: int = 50
    """write the loss, rewards, log-probabilities, learning rate and optimiser steps per second, and print a progress
    line, every this many steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


TASKS = ("addition", "sort", "avoid-digit")
RULE_TASKS = ("avoid-digit",)  # tasks whose prompts state a rule that a response can break
SCHEDULES = ("cosine", "linear", "constant")
EVAL_SEED = 20240601  # the held-out prompts' generator: the same prompts for every --seed and every file
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"  # the in-code tokenizer's characters
CHAT_INSTRUCTION = "Answer with the digits only."  # added to the user message when the tokenizer has a chat template
SFT_LEARNING_RATE = 2e-3  # sft.py's default, for the in-process SFT of the in-code model
# The written constitution: what a person reads, what the LM judge is shown; principle_kept is each one's check.
CONSTITUTION = {
    "answer": "Answer the question asked: the number in the response must be what the request asks for.",
    "rule": "Keep the stated rule: never write the digit that the request bans.",
    "brief": "Be brief: reply with the digits of the answer alone, nothing else.",
    "whole": "Answer the question asked and keep the stated rule, both at once.",
}
RULE_PRINCIPLES = ("rule", "whole")  # principles that need a task whose prompts state a rule


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_prompts", "log_every", "torch_threads",
                 "max_new_tokens", "n_layer", "n_embd", "n_head", "train_prompts", "rl_prompts"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("sft_updates", "revision_attempts"):
        if not getattr(args, name) >= 0:
            fail(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if not 0 <= args.sl_updates <= args.total_updates:
        fail(f"--sl-updates must be between 0 and --total-updates ({args.total_updates}), got {args.sl_updates}")
    if args.task not in TASKS:
        fail(f"--task {args.task} is not a task of this file; choose one of {', '.join(TASKS)}")
    unknown = [p for p in args.principles if p not in CONSTITUTION]
    if unknown:
        fail(f"--principles {' '.join(unknown)}: not in the constitution; choose among {', '.join(CONSTITUTION)}")
    needs_rule = [p for p in args.principles if p in RULE_PRINCIPLES]
    if needs_rule and args.task not in RULE_TASKS:
        fail(f"--principles {' '.join(needs_rule)}: --task {args.task} states no rule to keep (these principles need "
             f"{', '.join(RULE_TASKS)}); leave them out")
    if not 1 <= args.num_digits <= 30:
        fail(f"--num-digits must be between 1 and 30, got {args.num_digits}")
    if not 2 * args.eval_prompts <= prompt_space(args.task, args.num_digits):
        fail(f"--eval-prompts {args.eval_prompts}: --task {args.task} with --num-digits {args.num_digits} has only "
             f"{prompt_space(args.task, args.num_digits):,} distinct prompts; hold out at most half of them "
             f"(--eval-prompts {prompt_space(args.task, args.num_digits) // 2} or fewer)")
    if args.lr_schedule not in SCHEDULES:
        fail(f"--lr-schedule {args.lr_schedule} is unknown; choose one of {', '.join(SCHEDULES)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.beta < math.inf:
        fail(f"--beta must be positive and finite, got {args.beta}")
    if not 0 <= args.label_noise < 0.5:
        fail(f"--label-noise must be in [0, 0.5) (the rule judge's probability of a wrong preference), got "
             f"{args.label_noise}")
    for name in ("learning_rate", "sl_learning_rate"):
        if not 0 < getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be positive and finite, got {getattr(args, name)}")
    if not 0 < args.temperature < math.inf:
        fail(f"--temperature must be positive and finite (sampling, not greedy: a greedy policy repeats one "
             f"response), got {args.temperature}")
    if not 0 <= args.warmup_ratio < 1:
        fail(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if not 0 <= args.weight_decay < math.inf:
        fail(f"--weight-decay must be non-negative and finite, got {args.weight_decay}")
    if not args.max_grad_norm > 0:  # inf is accepted: no clipping
        fail(f"--max-grad-norm must be positive (inf: no clipping), got {args.max_grad_norm}")
    if args.n_embd % args.n_head:
        fail(f"--n-head {args.n_head} must divide --n-embd {args.n_embd}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    for flag, path in (("--model-name-or-path", args.model_name_or_path), ("--judge-model", args.judge_model)):
        if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
            fail(f"{flag} {path}: no Hugging Face model folder there (no config.json); give a local folder written by "
                 "save_pretrained (nothing is downloaded)")


# ---- Tasks: a (prompt, completion) pair maker and a scorer per task; the later files' rewards are the scorers ----


def make_addition(rng: np.random.Generator, num_digits: int) -> tuple[str, str]:
    a, b = (int(v) for v in rng.integers(0, 10**num_digits, size=2))
    return f"{a}+{b}=", str(a + b)


def make_sort(rng: np.random.Generator, num_digits: int) -> tuple[str, str]:
    digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=num_digits))
    return f"sort {digits}=", "".join(sorted(digits))


def make_avoid_digit(rng: np.random.Generator, num_digits: int) -> tuple[str, str]:
    """A random digit string, its digit sum s and a random digit d: the prompt asks for digits summing to s without
    d; the demonstration (the string itself) ignores that rule whenever d is among its digits."""
    digits = [int(v) for v in rng.integers(0, 10, size=num_digits)]
    banned = int(rng.integers(0, 10))
    return f"sum {sum(digits)} no {banned}=", "".join(map(str, digits))


def extract_answer(response: str) -> str:
    """The answer in a decoded response: its last run of digits ("" if none); a chat model restates the question
    before its answer ("1+7 = 8")."""
    runs = re.findall(r"\d+", response)
    return runs[-1] if runs else ""


def score_addition(prompt: str, response: str) -> tuple[bool, bool]:
    """(the answer is the sum, the response keeps the prompt's rule: there is none)"""
    a, b = prompt.removesuffix("=").split("+")
    return extract_answer(response) == str(int(a) + int(b)), True


def score_sort(prompt: str, response: str) -> tuple[bool, bool]:
    """(the answer is the prompt's digits in ascending order, the response keeps the prompt's rule: there is none)"""
    digits = prompt.removeprefix("sort ").removesuffix("=")
    return extract_answer(response) == "".join(sorted(digits)), True


def score_avoid_digit(prompt: str, response: str) -> tuple[bool, bool]:
    """(the answer's digits sum to s, the banned digit appears nowhere in the response)"""
    _, total, _, banned = prompt.removesuffix("=").split(" ")
    answer = extract_answer(response)
    return answer != "" and sum(map(int, answer)) == int(total), banned not in response


MAKE = {"addition": make_addition, "sort": make_sort, "avoid-digit": make_avoid_digit}
SCORE = {"addition": score_addition, "sort": score_sort, "avoid-digit": score_avoid_digit}


def prompt_space(task: str, num_digits: int) -> int:
    """How many distinct prompts a task has."""
    return {"addition": 10 ** (2 * num_digits), "sort": 10**num_digits, "avoid-digit": (9 * num_digits + 1) * 10}[task]


def heldout_pairs(task: str, num_digits: int, count: int) -> list[tuple[str, str]]:
    """`count` pairs with distinct prompts from a fixed generator (EVAL_SEED): the evaluation set, never trained on."""
    rng, pairs, seen = np.random.default_rng(EVAL_SEED), [], set()
    while len(pairs) < count:
        prompt, completion = MAKE[task](rng, num_digits)
        if prompt not in seen:
            seen.add(prompt)
            pairs.append((prompt, completion))
    return pairs


def sample_pairs(task: str, rng: np.random.Generator, num_digits: int, count: int,
                 exclude: set[str]) -> tuple[list[str], list[str]]:
    """A training batch: `count` fresh pairs, redrawing any whose prompt is held out."""
    prompts, completions = [], []
    while len(prompts) < count:
        prompt, completion = MAKE[task](rng, num_digits)
        if prompt not in exclude:
            prompts.append(prompt)
            completions.append(completion)
    return prompts, completions


# ---- The model and its tokenizer: built in code, or any local Hugging Face causal LM ----


def build_tokenizer():
    """A character-level tokenizer: WordLevel over <pad>, <eos>, <unk> and ALPHABET, every character its own token
    (Split on the empty pattern, isolated), decoded by joining the tokens (Fuse)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *ALPHABET])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int = 128):
    """A small GPT-2 for the character tokenizer, initialised from torch's generator; no dropout (fresh data)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def load_pretrained(path: str):
    """A local Hugging Face causal LM and its tokenizer (local files only, no remote code); a tokenizer without a pad
    token pads with eos. Anything that does not load is bad input (one line, exit 2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                     dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - any folder that does not load is the same bad input
        fail(f"--model-name-or-path {path} does not load as a causal LM with its tokenizer: {type(error).__name__}: "
             f"{(str(error).splitlines() or [''])[0]}")
    if tokenizer.eos_token_id is None:
        fail(f"--model-name-or-path {path}: its tokenizer has no eos token, which ends every completion")
    probe = tokenizer("0123456789+=", add_special_tokens=False)["input_ids"]
    if not probe or max(probe) >= model.get_input_embeddings().num_embeddings:
        fail(f"--model-name-or-path {path}: its tokenizer does not fit the model (no tokenizer files in the folder, "
             "or ids beyond the model's vocabulary)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def format_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """The token ids of each prompt as the model sees it: with the chat template (a user message, then the generation
    prompt) when the tokenizer has one, else the plain text with the tokenizer's own special tokens."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{p}\n{CHAT_INSTRUCTION}"}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def encode_pairs(tokenizer, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, ...]:
    """Prompt then completion then eos, padded on the right: input_ids, attention_mask, and labels (the ids, with -100
    on the prompt and the padding, so that only the completion and its eos are learned)."""
    prompt_ids = format_prompts(tokenizer, prompts)
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    rows = [(p, [*c, tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        attention_mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(c)
    return input_ids, attention_mask, labels


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded on the left (generation appends to the right end of every row): input_ids, attention_mask."""
    ids = format_prompts(tokenizer, prompts)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


# ---- The math the tests check ----


def forward_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The model's logits, with positions counted over real tokens only (left or right padding alike)."""
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean negative log-likelihood of the completion tokens of the batch (prompt and padding are -100)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def lr_multiplier(fraction: float, warmup_ratio: float, schedule: str) -> float:
    """The learning rate's factor at a fraction of training done: linear warm-up from 0, then the schedule's decay."""
    if fraction < warmup_ratio:
        return fraction / warmup_ratio
    decayed = (fraction - warmup_ratio) / (1.0 - warmup_ratio)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * decayed))
    return 1.0 - decayed if schedule == "linear" else 1.0




CHOSEN, REJECTED, PAD = 1, 2, 3  # the segments of a shared row (0: the prompt)


def encode_shared_pairs(tokenizer, pairs: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
    """Each pair (x, y_c, y_r) as ONE row: the prompt, the chosen response and eos, the rejected response and eos,
    padded on the right. The prompt is run once for both responses (in a row of its own each, it would be run twice):
    shared_attention_mask keeps the rejected tokens from seeing the chosen ones, and both responses' positions start
    where the prompt ends, so every token has exactly the context and position it has in a row of its own.
    Returned: input_ids, position_ids and segments [N, W] (0 prompt, CHOSEN, REJECTED, PAD), and for the two responses
    [N, 2, L] the column whose logits score each token (the prompt's last column for the first token of either), the
    token, and a mask."""
    prompt_ids = format_prompts(tokenizer, [p for p, _, _ in pairs])
    chosen_ids = tokenizer([c for _, c, _ in pairs], add_special_tokens=False)["input_ids"]
    rejected_ids = tokenizer([r for _, _, r in pairs], add_special_tokens=False)["input_ids"]
    rows = [(p, [*c, tokenizer.eos_token_id], [*r, tokenizer.eos_token_id])
            for p, c, r in zip(prompt_ids, chosen_ids, rejected_ids, strict=True)]
    width = max(len(p) + len(c) + len(r) for p, c, r in rows)
    longest = max(max(len(c), len(r)) for _, c, r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), PAD, dtype=torch.long)
    sources = torch.zeros((len(rows), 2, longest), dtype=torch.long)
    targets = torch.zeros((len(rows), 2, longest), dtype=torch.long)
    token_mask = torch.zeros((len(rows), 2, longest), dtype=torch.bool)
    for i, (p, c, r) in enumerate(rows):
        n, a, b = len(p), len(c), len(r)
        input_ids[i, :n + a + b] = torch.tensor(p + c + r)
        position_ids[i, :n + a + b] = torch.tensor([*range(n + a), *range(n, n + b)])
        segments[i, :n + a + b] = torch.tensor([0] * n + [CHOSEN] * a + [REJECTED] * b)
        for k, (start, tokens) in enumerate(((n, c), (n + a, r))):  # the response's columns start at `start`
            sources[i, k, :len(tokens)] = torch.tensor([n - 1, *range(start, start + len(tokens) - 1)])
            targets[i, k, :len(tokens)] = torch.tensor(tokens)
            token_mask[i, k, :len(tokens)] = True
    return {"input_ids": input_ids, "position_ids": position_ids, "segments": segments, "sources": sources,
            "targets": targets, "token_mask": token_mask}


def shared_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, 1, W, W], added to the attention scores: 0 where a query may see a key, the dtype's lowest value where not.
    Causal, padding is never a key, a rejected token never sees a chosen one. Every row starts with its prompt, so
    every query (padding's too, whose outputs are never used) has a key: no softmax over nothing, no NaN."""
    width = segments.shape[1]
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (key != PAD) & ~((query == REJECTED) & (key == CHOSEN))
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
        ~allowed, torch.finfo(dtype).min).unsqueeze(1)


def shared_pair_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_c | x) and log pi(y_r | x) of each row of encode_shared_pairs (the response's tokens and eos, summed)
    [N, 2], and their token counts [N, 2]: one forward pass over the rows, cut to the batch's longest."""
    width = int((batch["segments"] != PAD).sum(dim=1).max())
    logits = model(input_ids=batch["input_ids"][:, :width], position_ids=batch["position_ids"][:, :width],
                   attention_mask=shared_attention_mask(batch["segments"][:, :width],
                                                        next(model.parameters()).dtype)).logits
    rows = torch.arange(len(logits), device=logits.device)[:, None, None]
    logp = torch.log_softmax(logits[rows, batch["sources"]].float(), dim=-1)  # only the columns that score a token
    per_token = logp.gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1) * batch["token_mask"]
    return per_token.sum(dim=-1), batch["token_mask"].sum(dim=-1)


def soft_dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                  ref_rejected_logps: torch.Tensor, beta: float, labels: torch.Tensor) -> torch.Tensor:
    """DPO on soft labels: the mean over pairs of -[p log sigmoid(beta h) + (1 - p) log sigmoid(-beta h)], h the
    policy-minus-reference log-ratio margin of "chosen" (A) over "rejected" (B), p = labels the judge's probability
    that A is better (p = 1: dpo.py's sigmoid loss)."""
    logits = beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))
    return (-(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits))).mean()


# ---- Generation and evaluation ----


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Decoded responses (the new tokens only, special tokens dropped), greedy or sampled from torch's generator,
    `batch_size` prompts at a time; each stops at eos or after max_new_tokens."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, **({"temperature": temperature, "top_k": 0}
                                                                      if do_sample else {}))
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    responses = []
    for i in range(0, len(prompts), batch_size):
        input_ids, attention_mask = encode_prompts(tokenizer, prompts[i:i + batch_size])
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             generation_config=config)
        responses += tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return responses


def evaluate_lm(model: nn.Module, tokenizer, task: str, prompts: list[str], max_new_tokens: int,
                batch_size: int) -> dict:
    """Greedy responses to the prompts, scored: exact_match (the fraction answered right), rule_compliance (the
    fraction that keep the prompt's rule), and the responses."""
    responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    scores = [SCORE[task](p, r) for p, r in zip(prompts, responses, strict=True)]
    return {"exact_match": float(np.mean([s[0] for s in scores])), "rule_compliance": float(np.mean([s[1] for s in scores])),
            "responses": responses}


# ---- Sampling, the in-process SFT and the reference's log-probabilities ----


def sample_responses(policy: nn.Module, tokenizer, prompts: list[str], samples_per_prompt: int, temperature: float,
                     max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """`samples_per_prompt` responses to each prompt, sampled from the policy at `temperature` (torch's generator)."""
    flat = generate(policy, tokenizer, [p for p in prompts for _ in range(samples_per_prompt)], max_new_tokens,
                    batch_size, do_sample=True, temperature=temperature)
    return [flat[i:i + samples_per_prompt] for i in range(0, len(flat), samples_per_prompt)]


def train_sft(model: nn.Module, tokenizer, task: str, num_digits: int, updates: int, batch_size: int,
              rng: np.random.Generator, exclude: set[str], device: torch.device) -> None:
    """sft.py's training at its defaults (AdamW at 2e-3 without weight decay, 5% warm-up then cosine decay, gradient
    norm clipped to 1) without its logging and checkpoints: the policy whose samples form the pairs when no SFT
    folder is given."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LEARNING_RATE, weight_decay=0.0, fused=True)
    model.train()
    for step in range(updates):
        prompts, completions = sample_pairs(task, rng, num_digits, batch_size, exclude)
        input_ids, attention_mask, labels = (t.to(device) for t in encode_pairs(tokenizer, prompts, completions))
        for group in optimizer.param_groups:
            group["lr"] = SFT_LEARNING_RATE * lr_multiplier(step / updates, 0.05, "cosine")
        loss = sft_loss(forward_logits(model, input_ids, attention_mask), labels)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        if (step + 1) % 500 == 0 or step + 1 == updates:
            print(f"sft update {step + 1:>6,}  loss {loss.item():.4f}", flush=True)



@torch.no_grad()
def pair_logprobs(model: nn.Module, tokenizer, pairs: list[tuple[str, str, str]], batch_size: int) -> torch.Tensor:
    """[N, 2]: log pi(y_c | x) and log pi(y_r | x) of each (x, y_c, y_r) under `model`, `batch_size` pairs at a time
    (shared_pair_logprobs, the training step's own computation). main calls it on the reference (the starting model)
    once, for every pair, before training, and the checkpoints keep the result; where a file evaluates held-out pairs,
    it calls it on the policy for them."""
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        batch = {key: t.to(device) for key, t in encode_shared_pairs(tokenizer, pairs[i:i + batch_size]).items()}
        out.append(shared_pair_logprobs(model, batch)[0].cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


# ---- The constitution's critic, reviser and judges ----


def task_principles(task: str, chosen: tuple[str, ...] = ()) -> list[str]:
    """The principles in use: those chosen, or every principle of the constitution that applies to the task."""
    return list(chosen) or [p for p in CONSTITUTION if p not in RULE_PRINCIPLES or task in RULE_TASKS]


def principle_kept(principle: str, task: str, prompt: str, response: str) -> bool:
    """The checkable form of a written principle on the in-code tasks: answer and rule are the task scorer's two
    verdicts, whole is both, brief is a response of digits alone."""
    if principle == "brief":
        return re.fullmatch(r"[0-9]+", response) is not None
    right, rule_kept = SCORE[task](prompt, response)
    return {"answer": right, "rule": rule_kept, "whole": right and rule_kept}[principle]


def critique(task: str, principles: list[str], prompt: str, response: str) -> list[str]:
    """The critic: one line for each principle the response breaks (empty: it keeps them all), saying why."""
    lines = []
    for principle in principles:
        if principle_kept(principle, task, prompt, response):
            continue
        answer = extract_answer(response)
        if principle == "whole":
            parts = critique(task, ["answer", "rule"], prompt, response)
            why = " and ".join(line.rsplit("): ", 1)[1] for line in parts)
        elif principle == "brief":
            why = f"it holds {len(re.sub('[0-9]', '', response))} characters that are not digits"
        elif principle == "rule":
            why = f"it writes the banned digit {prompt.removesuffix('=').split(' ')[-1]}"
        elif not answer:
            why = "it holds no number"
        elif task == "avoid-digit":
            why = f"the digits of {answer} sum to {sum(map(int, answer))}, not {prompt.split(' ')[1]}"
        else:
            why = f"{answer} is not the answer to {prompt}"
        lines.append(f"breaks '{principle}' ({CONSTITUTION[principle]}): {why}")
    return lines


def revise_by_resampling(model: nn.Module, tokenizer, task: str, principles: list[str], prompts: list[str],
                         responses: list[str], attempts: int, temperature: float, max_new_tokens: int,
                         batch_size: int) -> tuple[list[str], list[bool]]:
    """The reviser, for a model that cannot read its critique: each faulted response is replaced by a fresh sample of
    the same model, up to `attempts` times, until the critic finds nothing. Returns each response's final revision
    (the response itself when it was not faulted) and whether that keeps every principle."""
    finals = list(responses)
    keeps = [not critique(task, principles, p, r) for p, r in zip(prompts, responses, strict=True)]
    for _ in range(attempts):
        faulted = [i for i, kept in enumerate(keeps) if not kept]
        if not faulted:
            break
        samples = sample_responses(model, tokenizer, [prompts[i] for i in faulted], 1, temperature, max_new_tokens,
                                   batch_size)
        for i, (sample,) in zip(faulted, samples, strict=True):
            finals[i], keeps[i] = sample, not critique(task, principles, prompts[i], sample)
    return finals, keeps


def rule_judge(principle: str, task: str, prompt: str, a: str, b: str, label_noise: float) -> float:
    """p(A follows the principle better than B) from its check: 1 - eps if only A keeps it, eps if only B does, 1/2
    if both or neither do (eps = label_noise)."""
    kept_a, kept_b = principle_kept(principle, task, prompt, a), principle_kept(principle, task, prompt, b)
    return 0.5 if kept_a == kept_b else (1 - label_noise if kept_a else label_noise)


def describe_request(task: str, prompt: str) -> str:
    """The request of a task's prompt in words, for a judge that reads English."""
    if task == "addition":
        return f"What is {prompt.removesuffix('=')}?"
    if task == "sort":
        return f"Write the digits of {prompt.removeprefix('sort ').removesuffix('=')} in ascending order."
    _, total, _, banned = prompt.removesuffix("=").split(" ")
    return f"Write digits that add up to {total}, without using the digit {banned}."


def judge_prompt_ids(tokenizer, items: list[tuple[str, str, str, str]]) -> list[list[int]]:
    """The judge's token ids for each (principle, request, response A, response B): one user message (the
    tokenizer's chat template and its generation prompt, when it has one) whose answer is the next token."""
    texts = [f"Consider a request and two responses to it.\nRequest: {request}\nResponse A: {a}\nResponse B: {b}\n"
             f"Principle: {principle}\nWhich response follows the principle better? Answer A or B."
             for principle, request, a, b in items]
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return tokenizer([f"{t}\nAnswer: " for t in texts], add_special_tokens=True)["input_ids"]


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """The ids of the single tokens "A" and "B"; a tokenizer that splits either cannot judge (one line, exit 2)."""
    ids = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in "AB"]
    if any(len(i) != 1 for i in ids):
        fail(f"--judge-model: its tokenizer does not write A and B as single tokens ({ids}); give another model")
    return ids[0][0], ids[1][0]


@torch.no_grad()
def judge_ab_probs(model: nn.Module, tokenizer, items: list[tuple[str, str, str, str]],
                   batch_size: int) -> torch.Tensor:
    """[N]: p("A") / (p("A") + p("B")) of the judge's next token after each judge prompt (left-padded batches)."""
    a_id, b_id = answer_token_ids(tokenizer)
    ids = judge_prompt_ids(tokenizer, items)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    out = []
    for i in range(0, len(ids), batch_size):
        rows = ids[i:i + batch_size]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            input_ids[j, width - len(row):] = torch.tensor(row)
            attention_mask[j, width - len(row):] = 1
        logits = forward_logits(model, input_ids.to(device), attention_mask.to(device))[:, -1]
        out.append(torch.softmax(logits[:, [a_id, b_id]].float(), dim=-1)[:, 0].cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def lm_judge(model: nn.Module, tokenizer, items: list[tuple[str, str, str, str]], batch_size: int) -> torch.Tensor:
    """[N]: p(A better) from a language model, the mean of p("A") with A shown first and p("B") with A shown second."""
    first = judge_ab_probs(model, tokenizer, items, batch_size)
    second = judge_ab_probs(model, tokenizer, [(p, r, b, a) for p, r, a, b in items], batch_size)
    return (first + (1 - second)) / 2


def label_agreement(task: str, pairs: list[tuple[str, str, str, float]]) -> float:
    """On the pairs (prompt, A, B, p(A better)) where the task's ground truth (right and rule kept) prefers one
    response, the fraction where the label gives it p > 1/2 (nan if there is no such pair)."""
    agree = []
    for prompt, a, b, p in pairs:
        good_a, good_b = all(SCORE[task](prompt, a)), all(SCORE[task](prompt, b))
        if good_a != good_b:
            agree.append(p > 0.5 if good_a else p < 0.5)
    return float(np.mean(agree)) if agree else math.nan


# ---- Checkpoints ----




def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write atomically (temporary file, then rename): an interrupted save never leaves a corrupt file."""
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_lm_checkpoint(path: str, algo: str) -> dict:
    """A checkpoint written by `algo`.py (weights_only: tensors and plain values); anything else exits 2."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        fail(f"no checkpoint at {path}")
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same bad input
        fail(f"{path} is not a readable checkpoint ({type(error).__name__})")
    if not isinstance(ckpt, dict) or ckpt.get("algo") != algo or "model_args" not in ckpt or "task" not in ckpt:
        written_by = (ckpt.get("algo") if isinstance(ckpt, dict) else None) or "another program"
        fail(f"{path} does not fit {algo}.py (written by {written_by}); give a checkpoint this file wrote")
    return ckpt


# ---- Long runs: the same code in every deep file (checkpoints, interruption, resume, numerical faults) ----
#
# A checkpoint is one dict of tensors and plain values (torch.load(..., weights_only=True) reads it): the networks,
# the optimisers, the step counters, every random generator's state and, where it can be read, the environments'
# own state. Periodic ones (--checkpoint-every), the one written on SIGINT/SIGTERM and the final --save-model file
# are the same dict, so any of them resumes (--resume PATH) in a new run directory that continues the old one's
# TensorBoard steps. (An offline file counts gradient steps, has no environment state, and checks only the losses.)


def make_run_dir(run_name: str) -> str:
    """Create a new runs/{run_name} (with a suffix if that exists) and check that it takes files; exit 2 if not."""
    run_dir, n = f"runs/{run_name}", 1
    while os.path.exists(run_dir):  # two runs started in the same second (a quick resume) get two directories
        n += 1
        run_dir = f"runs/{run_name}_{n}"
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = f"{run_dir}/.write_test"
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        fail(f"cannot write the run directory {run_dir} ({error.strerror}); run from a writable directory")
    return run_dir


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) set `signum`; the training loop looks at it after each
    update, writes a checkpoint and exits with status 128 + signum. A second signal exits at once; checkpoints are
    written atomically, so the previous one stays intact."""

    def __init__(self):
        self.signum = 0
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # only the main thread may handle signals
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)

    def handle(self, signum, frame) -> None:
        if self.signum:
            sys.exit(128 + signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this update to write a checkpoint "
              "(signal again to quit at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def resume_command(args, path: str) -> str:
    """The command line that continues this run from `path`: this file, every option not at its default, --resume."""
    parts = ["python", os.path.relpath(__file__)]
    for field in dataclasses.fields(args):
        value, flag = getattr(args, field.name), "--" + field.name.replace("_", "-")
        if field.name == "resume" or value == field.default:
            continue
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join([*parts, "--resume", path])


def write_checkpoint(run_dir: str, checkpoint: dict, written: list[str], keep: int) -> str:
    """Save the training state as run_dir/checkpoint_{step}.pt; keep the newest `keep` of this run's checkpoints."""
    path = f"{run_dir}/checkpoint_{checkpoint['global_step']}.pt"
    save_checkpoint(path, checkpoint)
    if path not in written:
        written.append(path)
    while len(written) > keep:
        os.remove(written.pop(0))
    print(f"checkpoint {path} ({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    return path


def rng_state(generators: dict[str, np.random.Generator]) -> dict:
    """Python's, numpy's global, torch's (and CUDA's) and the named numpy generators' states, as tensors, integers
    and strings."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **{name: g.bit_generator.state for name, g in generators.items()}}


def set_rng_state(state: dict, generators: dict[str, np.random.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.bit_generator.state = state[name]


def progress(step: int, total: int, origin: tuple[int, float]) -> float:
    """The fraction of training done, which every schedule reads. `origin` is (0, 0.0) for a fresh run; a run resumed
    with a different --total-timesteps sets it to (the resumed step, the progress there), stretching what is left."""
    start, done = origin
    return done + (1.0 - done) * (step - start) / (total - start)


def check_lm_resume(ckpt: dict, args, model_args: dict) -> None:
    """A checkpoint to resume holds a training state for this task and this model."""
    if "global_step" not in ckpt:
        fail(f"--resume {args.resume} holds no training state")
    if ckpt["task"] != args.task:
        fail(f"--resume {args.resume} was trained on --task {ckpt['task']}, not {args.task}")
    if ckpt["model_args"] != model_args:
        fail(f"--resume {args.resume} holds another model ({ckpt['model_args']}, here {model_args}); resume with the "
             "options it was trained with")
    if not ckpt["global_step"] < args.total_updates:
        fail(f"--resume {args.resume} is at optimiser step {ckpt['global_step']:,}: --total-updates must be larger "
             f"than that, got {args.total_updates:,}")


def numerical_fault(quantity: str, step: int, path: str) -> None:
    """A NaN or infinity reached training: one line, exit status 3; `path` holds the last finite state."""
    print(f"error: non-finite {quantity} at step {step:,}; the last finite state is in {path} "
          "(lower the learning rate, or look at the environment)", file=sys.stderr, flush=True)
    sys.exit(3)


def close_logs(writer, track: bool) -> None:
    writer.close()
    if track:
        import wandb

        wandb.finish()


def make_model(model_args: dict):
    """The model and tokenizer that model_args describe: a local folder's, or the in-code GPT-2 (its weights as
    torch's generator draws them)."""
    if model_args["model_name_or_path"] is not None:
        return load_pretrained(model_args["model_name_or_path"])
    tokenizer = build_tokenizer()
    return build_model(tokenizer, model_args["n_layer"], model_args["n_embd"], model_args["n_head"]), tokenizer


def load_model(path: str):
    """(policy, tokenizer) from a Hugging Face folder (what --save-model writes) or a checkpoint of this file."""
    if os.path.isdir(path):
        return load_pretrained(path)
    ckpt = load_lm_checkpoint(path, "constitutional_ai")
    model, tokenizer = make_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model, tokenizer


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (optimiser step, the held-out exact match); returning True ends
    # training (the run then returns as usual).
    check_args(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no bars on stderr while a folder loads or saves
    # an untrained model (--sft-updates 0) samples the pad token, and generation then warns about padding at every run
    transformers_logging.set_verbosity_error()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    if args.model_name_or_path is None:
        model_args = {"model_name_or_path": None, "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head}
    else:
        model_args = {"model_name_or_path": os.path.abspath(args.model_name_or_path)}
    model, tokenizer = make_model(model_args)
    heldout = heldout_pairs(args.task, args.num_digits, args.eval_prompts)
    eval_prompts, exclude = [p for p, _ in heldout], {p for p, _ in heldout}
    n = args.num_digits  # the longest prompt and completion of the task, then eos
    longest_prompt = {"addition": f"{'9' * n}+{'9' * n}=", "sort": f"sort {'9' * n}=", "avoid-digit": f"sum {9 * n} no 9="}
    longest = len(format_prompts(tokenizer, [longest_prompt[args.task]])[0])
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit is not None and longest + max(args.max_new_tokens, n + 2) > limit:
        fail(f"a prompt ({longest} tokens) and --max-new-tokens {args.max_new_tokens} do not fit the model's {limit} "
             "positions; use fewer --num-digits or --max-new-tokens")
    principles = task_principles(args.task, args.principles)
    judge = None
    if args.judge_model is not None:  # the LM judge, checked before any work: single A/B tokens, and room to read
        judge = load_pretrained(args.judge_model)
        answer_token_ids(judge[1])
        worst = max(CONSTITUTION[p] for p in principles)
        item = (worst, describe_request(args.task, longest_prompt[args.task]), "9" * args.max_new_tokens,
                "9" * args.max_new_tokens)
        need = len(judge_prompt_ids(judge[1], [item])[0])
        judge_limit = (getattr(judge[0].config, "n_positions", None)
                       or getattr(judge[0].config, "max_position_embeddings", None))
        if judge_limit is not None and need > judge_limit:
            fail(f"--judge-model {args.judge_model}: a judge prompt ({need} tokens) does not fit its {judge_limit} "
                 "positions; use fewer --max-new-tokens")
        judge[0].to(device)
    model.to(device)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_lm_checkpoint(args.resume, "constitutional_ai")
        check_lm_resume(resume_ckpt, args, model_args)
        if resume_ckpt["args"]["sl_updates"] != args.sl_updates:
            fail(f"--resume {args.resume} has --sl-updates {resume_ckpt['args']['sl_updates']}, not {args.sl_updates}; "
                 "resume with the stages it was trained with")

    start_time = time.time()
    stats = {"revised_fraction": math.nan, "revision_failed_fraction": math.nan, "label_agreement": math.nan,
             "rule_label_agreement": math.nan, "label_mean": math.nan}
    sl_set: list[tuple[str, str]] = []
    if resume_ckpt is None:
        # The SFT model's baseline, then SL-CAI's data: its answers to the training prompts, critiqued and revised.
        if args.model_name_or_path is None and args.sft_updates > 0:
            train_sft(model, tokenizer, args.task, args.num_digits, args.sft_updates, args.batch_size, sampler,
                      exclude, device)
        sft_eval = evaluate_lm(model, tokenizer, args.task, eval_prompts, args.max_new_tokens, args.batch_size)
        sft_match, sft_compliance = sft_eval["exact_match"], sft_eval["rule_compliance"]
        if args.sl_updates > 0:
            prompts, _ = sample_pairs(args.task, sampler, args.num_digits, args.train_prompts, exclude)
            responses = [r for (r,) in sample_responses(model, tokenizer, prompts, 1, args.temperature,
                                                        args.max_new_tokens, args.batch_size)]
            critiques = [critique(args.task, principles, p, r) for p, r in zip(prompts, responses, strict=True)]
            finals, keeps = revise_by_resampling(model, tokenizer, args.task, principles, prompts, responses,
                                                 args.revision_attempts, args.temperature, args.max_new_tokens,
                                                 args.batch_size)
            faulted = [i for i, c in enumerate(critiques) if c]
            stats["revised_fraction"] = len(faulted) / len(prompts)
            stats["revision_failed_fraction"] = (float(np.mean([not keeps[i] for i in faulted])) if faulted
                                                 else math.nan)
            sl_set = [(p, r) for p, r, kept in zip(prompts, finals, keeps, strict=True) if kept]
            for i in faulted[:3]:  # the critiques, as text, for a few examples
                print(f"critique of {prompts[i]!r} -> {responses[i]!r}: {'; '.join(critiques[i])}; revision: "
                      f"{finals[i]!r} ({'keeps every principle' if keeps[i] else 'still faulted'})", flush=True)
            if not sl_set:
                fail("no response keeps every principle, even after revision; raise --revision-attempts or "
                     "--sft-updates, or start from a trained --model-name-or-path")
        sl_match, sl_compliance = sft_match, sft_compliance  # until SL-CAI has run
        rl_pairs, ref_logps = None, None
    else:
        sl_set = [tuple(p) for p in resume_ckpt["sl_set"]]
        rl_pairs = None if resume_ckpt["rl_pairs"] is None else [tuple(p) for p in resume_ckpt["rl_pairs"]]
        ref_logps, stats = resume_ckpt["ref_logps"], dict(resume_ckpt["stats"])
        sft_match, sft_compliance = resume_ckpt["sft_match"], resume_ckpt["sft_compliance"]
        sl_match, sl_compliance = resume_ckpt["sl_match"], resume_ckpt["sl_compliance"]
    data_seconds = time.time() - start_time

    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    def make_optimizer(lr: float) -> torch.optim.Optimizer:
        # fused=True: AdamW's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay, fused=True)

    in_rl = resume_ckpt is not None and resume_ckpt["global_step"] > args.sl_updates
    optimizer = make_optimizer(args.learning_rate if in_rl else args.sl_learning_rate)

    # The training state a checkpoint holds; resuming puts it back. global_step counts optimiser steps of both stages;
    # each stage's learning rate is a function of (global_step, schedule_origin): the RL stage's origin counts its own
    # steps, from --sl-updates on.
    global_step, origin = 0, (0, 0.0)
    best_match, last_match, last_compliance = -math.inf, math.nan, math.nan
    if resume_ckpt is not None:
        ckpt = resume_ckpt
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        best_match, last_match, last_compliance = ckpt["best_match"], ckpt["last_match"], ckpt["last_compliance"]
        set_rng_state(ckpt["rng"], generators)
        old_total = ckpt["args"]["total_updates"]
        if old_total != args.total_updates:  # stretch what is left of the RL stage's schedule
            if global_step >= args.sl_updates and old_total > args.sl_updates:
                local = global_step - args.sl_updates
                origin = (local, progress(local, old_total - args.sl_updates, origin))
            print(f"--total-updates changed from {old_total:,} to {args.total_updates:,}: the RL stage's "
                  "learning-rate schedule is stretched over the remaining steps", flush=True)
        print(f"resumed from {args.resume} at optimiser step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "constitutional_ai", "task": args.task, "model_args": model_args, "model": model.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "schedule_origin": origin, "best_match": best_match, "last_match": last_match,
                "last_compliance": last_compliance, "sl_set": sl_set, "rl_pairs": rl_pairs, "ref_logps": ref_logps,
                "stats": stats, "sft_match": sft_match, "sft_compliance": sft_compliance, "sl_match": sl_match,
                "sl_compliance": sl_compliance, "rng": rng_state(generators)}

    def fault(quantity: str) -> None:  # the model is still finite: the check runs before the step changes it
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint())
        close_logs(writer, args.track)
        numerical_fault(quantity, global_step, path)

    run_name = f"{args.task}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = make_run_dir(run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run_dir)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    if resume_ckpt is None:  # the SFT model's held-out scores and the revisions: the baseline and SL-CAI's data
        writer.add_scalar("eval/exact_match", sft_match, 0)
        if args.task in RULE_TASKS:
            writer.add_scalar("eval/rule_compliance", sft_compliance, 0)
        for key in ("revised_fraction", "revision_failed_fraction"):
            if math.isfinite(stats[key]):  # nan: no SL stage, or no response faulted
                writer.add_scalar(f"cai/{key}", stats[key], 0)
    judge_name = f"--judge-model {args.judge_model}" if judge else f"the rule judge (label noise {args.label_noise})"
    print(f"{args.task} with {args.num_digits} digits: constitutional AI on "
          f"{args.model_name_or_path or 'GPT-2 built in code'} "
          f"({n_params:,} parameters), principles {', '.join(principles)}, judge {judge_name}; SFT model: greedy exact "
          f"match {sft_match:.3f}, rule kept {sft_compliance:.3f}; SL-CAI set: {len(sl_set):,} examples (faulted "
          f"{stats['revised_fraction']:.3f}, of which still faulted after revision "
          f"{stats['revision_failed_fraction']:.3f}; "
          f"{data_seconds:.1f}s)", flush=True)

    def run_evaluation() -> dict:
        """Greedy exact match and rule compliance on the held-out prompts (its time is left out of the updates per
        second)."""
        nonlocal best_match, last_match, last_compliance, eval_seconds
        eval_start = time.time()
        result = evaluate_lm(model, tokenizer, args.task, eval_prompts, args.max_new_tokens, args.batch_size)
        eval_seconds += time.time() - eval_start
        last_match, last_compliance = result["exact_match"], result["rule_compliance"]
        best_match = max(best_match, last_match)
        writer.add_scalar("eval/exact_match", last_match, global_step)
        rule = ""
        if args.task in RULE_TASKS:
            writer.add_scalar("eval/rule_compliance", last_compliance, global_step)
            rule = f"  rule kept {last_compliance:.3f} (SFT {sft_compliance:.3f})"
        print(f"eval at update {global_step:>7,}: exact match {last_match:.3f} (best {best_match:.3f}, SFT "
              f"{sft_match:.3f}){rule}  e.g. {eval_prompts[0]!r} -> {result['responses'][0]!r}", flush=True)
        return result

    def make_rl_pairs() -> None:
        """RL-CAI's data, once, when the SL stage ends: two samples of the policy per prompt, one principle drawn per
        comparison, the judge's soft label, each pair ordered so that p >= 1/2, and the reference's log-probabilities
        (the policy now: the SL-CAI model)."""
        nonlocal rl_pairs, ref_logps, optimizer, rl_data_seconds
        data_start = time.time()
        prompts, _ = sample_pairs(args.task, sampler, args.num_digits, args.rl_prompts, exclude)
        samples = sample_responses(model, tokenizer, prompts, 2, args.temperature, args.max_new_tokens,
                                   args.batch_size)
        drawn = sampler.integers(0, len(principles), size=len(prompts))
        items = [(principles[k], p, a, b) for p, (a, b), k in zip(prompts, samples, drawn, strict=True) if a != b]
        if not items:
            fail("every prompt's two samples are equal: nothing to compare; raise --temperature or --rl-prompts")
        rule_labels = [rule_judge(k, args.task, p, a, b, args.label_noise) for k, p, a, b in items]
        if judge is None:
            labels = rule_labels
        else:
            labels = lm_judge(judge[0], judge[1], [(CONSTITUTION[k], describe_request(args.task, p), a, b)
                                                   for k, p, a, b in items], args.batch_size).tolist()
        judged = [(p, a, b, q) for (_, p, a, b), q in zip(items, labels, strict=True)]
        stats["label_agreement"] = label_agreement(args.task, judged)
        stats["rule_label_agreement"] = label_agreement(args.task, [(p, a, b, q) for (_, p, a, b), q
                                                                    in zip(items, rule_labels, strict=True)])
        rl_pairs = [(p, a, b, q) if q >= 0.5 else (p, b, a, 1 - q) for p, a, b, q in judged]
        stats["label_mean"] = float(np.mean([q for *_, q in rl_pairs]))
        ties = sum(q == 0.5 for *_, q in rl_pairs)
        if not args.keep_ties:  # an exact tie states no preference: with Adam it would only add noise to the steps
            rl_pairs = [pair for pair in rl_pairs if pair[3] != 0.5]
        if not rl_pairs:
            fail("the judge called every pair a tie: nothing to learn; raise --rl-prompts or --temperature, or give "
                 "--keep-ties")
        ref_logps = pair_logprobs(model, tokenizer, [(p, a, b) for p, a, b, _ in rl_pairs], args.batch_size)
        optimizer = make_optimizer(args.learning_rate)  # RL-CAI's own AdamW
        rl_data_seconds += time.time() - data_start
        print(f"RL-CAI: {len(rl_pairs):,} pairs of distinct samples ({ties:,} judged a tie: "
              f"{'kept' if args.keep_ties else 'left out'}), label agreement with the "
              f"task's ground truth {stats['label_agreement']:.3f} (rule judge {stats['rule_label_agreement']:.3f}), "
              f"mean label {stats['label_mean']:.3f}, e.g. {rl_pairs[0]}", flush=True)

    start_step, start_time, eval_seconds, rl_data_seconds = global_step, time.time(), 0.0, 0.0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    result: dict = {"responses": []}

    while global_step < args.total_updates:
        rl = global_step >= args.sl_updates
        if rl and rl_pairs is None:
            make_rl_pairs()
        if rl:
            lr = args.learning_rate * lr_multiplier(progress(global_step - args.sl_updates,
                                                             args.total_updates - args.sl_updates, origin),
                                                    args.warmup_ratio, args.lr_schedule)
            index = sampler.integers(0, len(rl_pairs), size=args.batch_size)
            batch = [rl_pairs[i] for i in index]
            triples = [(p, a, b) for p, a, b, _ in batch]  # each pair one row, the prompt run once
            rows = {key: t.to(device) for key, t in encode_shared_pairs(tokenizer, triples).items()}
            ref_chosen, ref_rejected = ref_logps[torch.from_numpy(index)].to(device).unbind(dim=1)
            soft = torch.tensor([q for *_, q in batch], device=device)
            chosen, rejected = shared_pair_logprobs(model, rows)[0].unbind(dim=1)
            loss = soft_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, args.beta, soft)
        else:
            lr = args.sl_learning_rate * lr_multiplier(progress(global_step, args.sl_updates, (0, 0.0)),
                                                       args.warmup_ratio, args.lr_schedule)
            index = sampler.integers(0, len(sl_set), size=args.batch_size)
            input_ids, attention_mask, labels = (t.to(device) for t in encode_pairs(
                tokenizer, [sl_set[i][0] for i in index], [sl_set[i][1] for i in index]))
            loss = sft_loss(forward_logits(model, input_ids, attention_mask), labels)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm, foreach=True)
        if args.nan_check:  # before the step, in one host sync: the model stays finite
            loss_ok, grad_ok = torch.isfinite(torch.stack([loss.detach(), grad_norm])).tolist()
            if not loss_ok or not grad_ok:
                fault("loss" if not loss_ok else "gradient norm")
        optimizer.step()
        global_step += 1
        if rl and global_step == args.sl_updates + 1:  # the AI labels, once, at the RL stage's first step
            for key in ("label_agreement", "rule_label_agreement", "label_mean"):
                if math.isfinite(stats[key]):  # nan: no pair where the ground truth prefers one response
                    writer.add_scalar(f"cai/{key}", stats[key], global_step)

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = (global_step - start_step) / max(time.time() - start_time - eval_seconds - rl_data_seconds, 1e-9)
            writer.add_scalar("charts/SPS", ups, global_step)  # optimiser steps per second, evaluations left out
            writer.add_scalar("charts/learning_rate", lr, global_step)
            writer.add_scalar("losses/grad_norm", grad_norm.item(), global_step)
            if rl:
                chosen_rewards = args.beta * (chosen.detach() - ref_chosen)  # TRL's rewards/*: beta times log-ratios
                rejected_rewards = args.beta * (rejected.detach() - ref_rejected)
                margin = chosen_rewards - rejected_rewards
                values = torch.stack([loss.detach(), chosen_rewards.mean(), rejected_rewards.mean(), margin.mean(),
                                      (margin > 0).float().mean(), chosen.detach().mean(),
                                      rejected.detach().mean()]).tolist()
                for key, value in zip(("losses/dpo_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                       "rewards/accuracies", "logps/chosen", "logps/rejected"), values, strict=True):
                    writer.add_scalar(key, value, global_step)
                print(f"update {global_step:>7,} (RL-CAI)  updates/s {ups:6.1f}  loss {values[0]:.4f}  margin "
                      f"{values[3]:+.3f}  accuracy {values[4]:.3f}  logps chosen {values[5]:.3f} rejected "
                      f"{values[6]:.3f}  lr {lr:.2e}", flush=True)
            else:
                writer.add_scalar("losses/sft_loss", loss.item(), global_step)
                print(f"update {global_step:>7,} (SL-CAI)  updates/s {ups:6.1f}  loss {loss.item():.4f}  lr {lr:.2e}",
                      flush=True)
        if (global_step % args.eval_every == 0 or global_step == args.total_updates
                or global_step == args.sl_updates):
            result = run_evaluation()
            if global_step == args.sl_updates:  # SL-CAI's model: RL-CAI's start and reference
                sl_match, sl_compliance = last_match, last_compliance
            if report is not None and report(global_step, last_match):
                break  # the caller asked to stop

        # After the update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
        if stop.signum or (args.checkpoint_every and global_step % args.checkpoint_every == 0):
            path = write_checkpoint(run_dir, checkpoint(), written, args.keep_checkpoints)
            if stop.signum:
                close_logs(writer, args.track)
                print(f"stopped by {signal.Signals(stop.signum).name} at optimiser step {global_step:,}; resume with: "
                      f"{resume_command(args, path)}", file=sys.stderr, flush=True)
                sys.exit(128 + stop.signum)
    stop.restore()

    train_time = time.time() - start_time  # evaluations and the RL pairs included
    model_path = None
    if args.save_model:  # a Hugging Face folder, loadable with --model-name-or-path by every file of the family
        model_path = f"{run_dir}/{args.exp_name}"
        model.save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)
        print(f"model and tokenizer saved to {model_path}/")
    print(f"greedy exact match / rule kept on {len(eval_prompts)} held-out prompts: SFT {sft_match:.3f} / "
          f"{sft_compliance:.3f}, after SL-CAI {sl_match:.3f} / {sl_compliance:.3f}, last {last_match:.3f} / "
          f"{last_compliance:.3f}; label agreement {stats['label_agreement']:.3f}; {global_step - start_step:,} "
          f"optimiser steps in {train_time:.1f}s")
    close_logs(writer, args.track)
    return {
        "eval_exact_match": last_match,
        "eval_exact_match_best": best_match if best_match > -math.inf else math.nan,
        "eval_rule_compliance": last_compliance,
        "eval_responses": result["responses"],
        "sft_exact_match": sft_match,
        "sft_rule_compliance": sft_compliance,
        "sl_exact_match": sl_match,
        "sl_rule_compliance": sl_compliance,
        **stats,
        "num_sl_examples": len(sl_set),
        "num_rl_pairs": len(rl_pairs or []),
        "sps": (global_step - start_step) / max(train_time - eval_seconds - rl_data_seconds, 1e-9),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
