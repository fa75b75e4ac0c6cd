"""Group Relative Policy Optimisation (GRPO): reinforcement learning of a causal language model from verifiable rewards.

Shao et al. (2024), "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
https://arxiv.org/abs/2402.03300, section 4.1: PPO without a value network. For each prompt the policy samples a
group of G completions; each completion's advantage is its reward relative to the others of its group, and a
PPO-style clipped ratio, per token, with a KL penalty to a frozen reference, moves the policy towards the better
completions. The options that later work changed are here under TRL's names (DAPO: Yu et al. (2025),
https://arxiv.org/abs/2503.14476; Dr. GRPO: Liu et al. (2025), https://arxiv.org/abs/2503.20783), so that a TRL
GRPOTrainer user finds them: --num-generations, --beta, --epsilon, --epsilon-high, --num-iterations,
--scale-rewards group|batch|none, --loss-type grpo|dapo|dr_grpo, --max-completion-length, --reward-funcs.

Run:
    python algorithms/sft.py --total-updates 2000 --save-model       # the policy GRPO starts from
    python algorithms/grpo.py --model-name-or-path runs/<sft run>/sft
    python algorithms/grpo.py                                        # no folder: a quick SFT in this process first
    python algorithms/grpo.py --task avoid-digit --model-name-or-path runs/<sft run on avoid-digit>/sft
    python algorithms/grpo.py --model-name-or-path DIR --learning-rate 1e-6 --max-completion-length 64   # any local causal LM
    python algorithms/grpo.py --help

Models and data, with no network (sft.py's tokenizer, model, tasks and scorers, copied):
- The starting policy: --model-name-or-path, any local Hugging Face causal LM folder (sft.py's --save-model output, or
  a pretrained model with a chat template: sft.py's format_prompts makes each prompt a user message); without one,
  the small GPT-2 built in code is first fine-tuned here for --sft-updates steps with sft.py's loss and schedule.
  The reference policy is a frozen copy of the starting policy (not loaded at all when --beta is 0).
- Prompts come from the task generator, never a held-out one: fresh ones for every batch, or with --train-prompts N
  a fixed training set drawn once (what a TRL dataset is), each batch --batch-size distinct prompts of it. The
  rewards are the task's own scorers (score_<task>: verifiable, no reward model): with --reward-funcs, a list of
      answer           1 if the answer is right, else 0
      rule             1 if the response keeps the prompt's rule (avoid-digit: the banned digit appears nowhere), else 0
      answer_and_rule  1 if both (the default; the same "right" as reward_model.py's pairs)
  and a completion's reward is their sum (TRL's sum of reward functions with weights 1).

The math, as written in the code below. Per generation batch: --batch-size prompts x, G = --num-generations
completions y_1..y_G each, sampled from the policy at temperature T in no_grad, cut at the first eos (the mask m is 1
up to and including it, 0 after):
    advantage      A_i = (r_i - mean_g r) / (std_g r + 1e-4) over the group g of y_i (--scale-rewards group; the std
                   with Bessel's correction, and the 1e-4, as TRL's), the same over the whole batch's std (batch: the
                   group's mean still subtracted), or r_i - mean_g r (none: Dr. GRPO). Every token of y_i gets A_i.
                   A group whose rewards are all equal gets A = 0: nothing to learn (frac_reward_zero_std counts them).
                   --dynamic-sampling (DAPO's): such groups are dropped and more prompts drawn, round after round, until
                   the batch holds --batch-size groups with spread (after DYNAMIC_SAMPLING_ROUNDS rounds the dropped
                   groups fill what is missing); every step then learns from a full batch.
    log-probs      logp_t = log softmax(logits_t / T)[y_t]: the distribution the tokens were sampled from. The G
                   completions of a prompt go through the model as one row (group_rows): the prompt once, then
                   y_1..y_G, each seeing the prompt and itself only, its positions restarting where the prompt ends;
                   the same numbers as G rows of prompt + y_i (tests/test_grpo.py, to 1e-5), for about half the
                   tokens here, where a prompt is as long as G short answers together (the policy's and the
                   reference's passes alike)
    ratio          rho_t = exp(logp_t - logp_old_t); logp_old: the policy's when the batch was sampled. Each batch gets
                   --num-iterations (mu) optimiser steps; at the first, logp_old is logp detached (rho = 1, as TRL)
    policy term    l_t = -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps_high) A)                 (PPO's clipped surrogate)
    KL             k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1 >= 0, ref_t the reference's log-probability:
                   Schulman's estimator of KL(pi || pi_ref) from samples of pi (unbiased, like k1 = logp - ref, but
                   never negative and of lower variance); the loss adds beta k3_t to every token
    aggregation    L_t = l_t + beta k3_t, then (--loss-type)
                     grpo     mean over sequences of sum_t m L_t / sum_t m         (the paper's: per sequence first)
                     dapo     sum over all tokens of m L_t / sum of m              (TRL 1.16's default: per token)
                     dr_grpo  sum over all tokens of m L_t / (N * --max-completion-length)   (a constant normaliser)
    update         AdamW, the gradient's global norm clipped to --max-grad-norm; sft.py's learning-rate schedule

A language-model file (sft.py's kind):
- Progress is counted in optimiser steps (--total-updates, --eval-every, --log-every, --checkpoint-every); a
  generation batch lasts --num-iterations of them. Logged: the reward's mean and std, frac_reward_zero_std (the
  fraction of groups with no reward spread: the silent stall of a task too hard or too easy for the policy), the KL
  to the reference (the mean of k3 over completion tokens), the clipped fraction, the completion length, the
  entropy, the loss and gradient norm. Each evaluation greedily decodes the held-out prompts (heldout_pairs, the
  same for every file of the family) with evaluate_lm: eval/exact_match (and eval/rule_compliance), and samples
  --eval-samples completions of each at --temperature: eval/sample_accuracy, the fraction right (what the training
  reward measures, on held-out prompts; a seed of its own, the same draws at every evaluation); step 0 is the
  starting policy. With --dynamic-sampling, the reward and frac_reward_zero_std are those of every group sampled
  (dropped ones included) and charts/sampling_rounds counts the rounds.
- --save-model writes the policy as a Hugging Face folder runs/{run}/{exp_name}/ (config.json, model.safetensors,
  tokenizer files); load_model(path) reads that folder or a checkpoint.
- Long runs, sft.py's form: checkpoints hold the policy, the reference, AdamW's state, the schedule, the generation
  batch being trained on (when --num-iterations > 1 leaves some of its steps) and every random generator, so --resume
  continues bit for bit; Ctrl-C or SIGTERM writes one and exits 130 / 143 with the resume command; a non-finite loss
  or gradient norm stops the run (exit 3) keeping the last finite state.
Tested: its advantages, loss and gradient equal TRL's GRPOTrainer's on the same model and completions; it raises the
sampled accuracy of the prompts it trains on; with --dynamic-sampling on fresh prompts of 3-digit addition it raises
the held-out greedy exact match of sft.py's 1000-step model, with a bounded KL to it (tests/test_grpo.py; the page).
Results: benchmark_results/grpo.md
"""

from __future__ import annotations

import copy
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
    exp_name: str = "grpo"
    """the name of this experiment (used in the run directory's name and the saved model's folder)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (the in-code model's initialisation, sampling) and the prompt sampler"""
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
    """a local Hugging Face causal LM folder (sft.py's --save-model output); unset: the GPT-2 built in code, first
    fine-tuned here for --sft-updates steps"""
    task: str = "addition"
    """the task the prompts and the rewards come from: addition, sort or avoid-digit"""
    num_digits: int = 3
    """digits of each operand (addition), of the string to sort (sort), of the demonstrations (avoid-digit)"""
    sft_updates: int = 2000
    """without --model-name-or-path: SFT optimiser steps (sft.py's defaults otherwise) before GRPO (0: the untrained
    model)"""
    reward_funcs: list[str] = dataclasses.field(default_factory=lambda: ["answer_and_rule"])
    """the verifiable rewards, summed: answer (the answer is right), rule (the prompt's rule is kept), answer_and_rule
    (both), each 1 or 0"""
    total_updates: int = 300
    """optimiser steps of GRPO (a generation batch gives --num-iterations of them)"""
    batch_size: int = 16
    """prompts per generation batch (each gets --num-generations completions)"""
    train_prompts: int = 0
    """0: every batch draws fresh prompts from the task; N > 0: a fixed training set of N prompts drawn once (a TRL
    dataset), each batch --batch-size distinct prompts of it"""
    num_generations: int = 8
    """G: completions sampled per prompt, the group whose rewards make the advantages (TRL's default 8)"""
    dynamic_sampling: bool = False
    """if toggled, DAPO's dynamic sampling: groups without reward spread are dropped and more prompts drawn until the
    batch holds --batch-size groups with spread (at most DYNAMIC_SAMPLING_ROUNDS draws; then dropped groups fill it)"""
    temperature: float = 1.0
    """the sampling temperature; the log-probabilities of the loss are taken at the same temperature"""
    max_completion_length: int = 16
    """the longest sampled completion, in tokens (dr_grpo's constant normaliser)"""
    beta: float = 0.04
    """the KL coefficient (the paper's 0.04; TRL 1.16's default is 0.0); 0: no reference model at all"""
    epsilon: float = 0.2
    """the clipping range: ratios are clipped to [1 - epsilon, 1 + epsilon-high]"""
    epsilon_high: float | None = None
    """the upper clipping range (DAPO's clip-higher suggests 0.28); unset: --epsilon"""
    num_iterations: int = 1
    """mu: optimiser steps on each generation batch (1: the ratio is 1 and only the clipping's gradient form remains)"""
    scale_rewards: str = "group"
    """advantages divided by the group's reward std (group), the batch's (batch) or not at all (none)"""
    loss_type: str = "grpo"
    """the aggregation of the per-token losses: grpo (per sequence, the paper's), dapo (per token, TRL 1.16's
    default) or dr_grpo (sum over a constant)"""
    learning_rate: float = 3e-5
    """the peak AdamW learning rate (for the in-code model; a pretrained model wants about 1e-6, TRL's default)"""
    lr_schedule: str = "constant"
    """the decay after warm-up: cosine, linear or constant"""
    warmup_ratio: float = 0.0
    """the fraction of --total-updates over which the learning rate rises linearly from 0"""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay"""
    max_grad_norm: float = 1.0
    """clip the gradient's global norm to this (inf: no clipping; 1.0 is TRL's default)"""
    n_layer: int = 2
    """transformer blocks of the in-code GPT-2"""
    n_embd: int = 128
    """width of the in-code GPT-2"""
    n_head: int = 4
    """attention heads of the in-code GPT-2 (must divide --n-embd)"""
    eval_every: int = 100
    """evaluate (greedy decoding of the held-out prompts) every this many optimiser steps, and after the last"""
    eval_prompts: int = 200
    """held-out prompts per evaluation, never trained on (at most half of the task's distinct prompts)"""
    max_new_tokens: int = 32
    """the longest response generated at evaluation, in tokens"""
    eval_samples: int = 8
    """completions sampled per held-out prompt at each evaluation, at --temperature (a fixed seed): the fraction right
    is eval/sample_accuracy, the quantity GRPO's reward measures (0: not evaluated)"""
    log_every: int = 10
    """write the rewards, losses, learning rate and optimiser steps per second, and print a progress line, every this
    many steps"""


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
SFT_BATCH_SIZE = 64  # sft.py's default batch of the in-process SFT
REWARD_FUNCS = ("answer", "rule", "answer_and_rule")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
ADVANTAGE_EPS = 1e-4  # added to the std of the rewards (TRL's value)
DYNAMIC_SAMPLING_ROUNDS = 8  # --dynamic-sampling: the most generation rounds per batch (DAPO's max_num_gen_batches)


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_prompts", "log_every", "torch_threads",
                 "max_new_tokens", "n_layer", "n_embd", "n_head", "max_completion_length", "num_iterations"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.num_generations >= 2:
        fail(f"--num-generations must be at least 2, got {args.num_generations}: a group of one completion has no "
             "reward spread, so every advantage is 0")
    if not args.sft_updates >= 0:
        fail(f"--sft-updates must be 0 or more, got {args.sft_updates}")
    if not args.eval_samples >= 0:
        fail(f"--eval-samples must be 0 or more, got {args.eval_samples}")
    if args.train_prompts and not args.batch_size <= args.train_prompts <= prompt_space(args.task, args.num_digits) // 2:
        fail(f"--train-prompts must be 0 (fresh prompts) or between --batch-size {args.batch_size} and half the task's "
             f"{prompt_space(args.task, args.num_digits):,} distinct prompts, got {args.train_prompts}")
    if args.task not in TASKS:
        fail(f"--task {args.task} is not a task of this file; choose one of {', '.join(TASKS)}")
    if not 1 <= args.num_digits <= 30:
        fail(f"--num-digits must be between 1 and 30, got {args.num_digits}")
    if not 2 * args.eval_prompts <= prompt_space(args.task, args.num_digits):
        fail(f"--eval-prompts {args.eval_prompts}: --task {args.task} with --num-digits {args.num_digits} has only "
             f"{prompt_space(args.task, args.num_digits):,} distinct prompts; hold out at most half of them "
             f"(--eval-prompts {prompt_space(args.task, args.num_digits) // 2} or fewer)")
    if not args.reward_funcs or any(f not in REWARD_FUNCS for f in args.reward_funcs):
        fail(f"--reward-funcs {' '.join(args.reward_funcs) or '(none)'}: give one or more of {', '.join(REWARD_FUNCS)}")
    if args.scale_rewards not in SCALE_REWARDS:
        fail(f"--scale-rewards {args.scale_rewards} is unknown; choose one of {', '.join(SCALE_REWARDS)}")
    if args.loss_type not in LOSS_TYPES:
        fail(f"--loss-type {args.loss_type} is unknown; choose one of {', '.join(LOSS_TYPES)}")
    if args.lr_schedule not in SCHEDULES:
        fail(f"--lr-schedule {args.lr_schedule} is unknown; choose one of {', '.join(SCHEDULES)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf:
        fail(f"--learning-rate must be positive and finite, got {args.learning_rate}")
    if not 0 < args.temperature < math.inf:
        fail(f"--temperature must be positive and finite (GRPO samples a group; greedy decoding would give G copies of "
             f"one completion), got {args.temperature}")
    if not 0 <= args.beta < math.inf:
        fail(f"--beta must be non-negative and finite (0: no KL penalty, no reference model), got {args.beta}")
    if not 0 < args.epsilon < 1:
        fail(f"--epsilon must be in (0, 1), got {args.epsilon}")
    if args.epsilon_high is not None and not args.epsilon <= args.epsilon_high < math.inf:
        fail(f"--epsilon-high must be finite and at least --epsilon {args.epsilon}, got {args.epsilon_high}")
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
    if args.model_name_or_path is not None and not os.path.isfile(os.path.join(args.model_name_or_path, "config.json")):
        fail(f"--model-name-or-path {args.model_name_or_path}: no Hugging Face model folder there (no config.json); "
             "give a local folder written by save_pretrained (nothing is downloaded)")


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


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log pi(y | x) of each row's labelled tokens: (the sum per row [B], the per-token values [B, T-1] with 0 where
    masked, the mask [B, T-1]). The logits at position t score the token at t + 1."""
    targets, mask = labels[:, 1:], labels[:, 1:] != -100
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return per_token.sum(dim=-1), per_token, mask


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


# ---- GRPO: rewards, group advantages, log-probabilities of sampled completions, the KL estimators, the loss ----


def task_rewards(task: str, reward_funcs: list[str], prompts: list[str], responses: list[str]) -> list[float]:
    """Each response's reward: the sum over reward_funcs of the task scorer's verdicts, each 1 or 0 (answer: the answer
    is right; rule: the prompt's rule is kept; answer_and_rule: both)."""
    rewards = []
    for prompt, response in zip(prompts, responses, strict=True):
        right, kept = SCORE[task](prompt, response)
        verdicts = {"answer": right, "rule": kept, "answer_and_rule": right and kept}
        rewards.append(float(sum(verdicts[f] for f in reward_funcs)))
    return rewards


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str,
                     eps: float = ADVANTAGE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """A_i = (r_i - mean of its group) / (std + eps), the std the group's (group), the batch's (batch) or none (none);
    rewards [B * G], each group G consecutive entries. Also returns, per group [B], whether its rewards have no spread
    (then every advantage of the group is 0)."""
    grouped = rewards.view(-1, num_generations)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    group_std = grouped.std(dim=1)  # Bessel's correction, as TRL's
    if scale_rewards == "group":
        advantages = advantages / (group_std.repeat_interleave(num_generations) + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (rewards.std() + eps)
    return advantages, group_std == 0


def merge_groups(parts: list[dict], picks: list[tuple[int, int]], num_generations: int, pad_token_id: int) -> dict:
    """One batch from groups of several generation rounds (dynamic sampling): `parts` are the rounds' tensors
    (prompt_ids, prompt_mask left-padded [N, P]; completion_ids, mask right-padded [N, C]; rewards [N]), `picks` the
    (round, group) pairs to keep, in order. Every round is padded to the widest prompt (on the left) and completion (on
    the right: pad tokens with mask 0), so each row keeps its tokens and positions (forward_logits counts them over the
    mask)."""
    width_p = max(part["prompt_ids"].shape[1] for part in parts)
    width_c = max(part["completion_ids"].shape[1] for part in parts)
    rows: dict[str, list[torch.Tensor]] = {"prompt_ids": [], "prompt_mask": [], "completion_ids": [], "mask": [],
                                           "rewards": []}
    for r, g in picks:
        part, span = parts[r], slice(g * num_generations, (g + 1) * num_generations)
        grow_p, grow_c = width_p - part["prompt_ids"].shape[1], width_c - part["completion_ids"].shape[1]
        rows["prompt_ids"].append(F.pad(part["prompt_ids"][span], (grow_p, 0), value=pad_token_id))
        rows["prompt_mask"].append(F.pad(part["prompt_mask"][span], (grow_p, 0), value=0))
        rows["completion_ids"].append(F.pad(part["completion_ids"][span], (0, grow_c), value=pad_token_id))
        rows["mask"].append(F.pad(part["mask"][span], (0, grow_c), value=0))
        rows["rewards"].append(part["rewards"][span])
    return {key: torch.cat(value) for key, value in rows.items()}


def mask_after_eos(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first eos, 0 after it (all 1 if it has none) [N, C]."""
    is_eos = completion_ids == eos_token_id
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), completion_ids.shape[1])
    return (positions <= first_eos.unsqueeze(1)).long()


PROMPT, PAD = 0, -1  # segments of a group's row: the prompt, padding, and k + 1 for the group's k-th completion


def group_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, mask: torch.Tensor,
               num_generations: int) -> dict[str, torch.Tensor]:
    """Each group of num_generations consecutive rows (one prompt, left-padded, and its completions, right-padded) as
    ONE row: the prompt once, then the group's completions one after another, padding only at the end. Each
    completion's positions start where the prompt ends, and group_attention_mask lets it see the prompt and itself
    only, so each token has the context and position it has in a row of its own. Returned: input_ids, position_ids,
    segments [B, W] (B groups), and for each completion token [N, C] the group's row and the column whose logits
    score it (the prompt's last column for the first token)."""
    n, width, length = prompt_ids.shape[0], prompt_ids.shape[1], completion_ids.shape[1]
    groups, valid = n // num_generations, mask.bool()
    lengths = mask.sum(dim=1).view(groups, num_generations)
    starts = (width + lengths.cumsum(dim=1) - lengths).flatten()  # each completion's first column
    row_width = width + int(lengths.sum(dim=1).max())
    first = prompt_mask[::num_generations]  # the groups' prompts
    input_ids = torch.cat([prompt_ids[::num_generations], prompt_ids.new_zeros(groups, row_width - width)], dim=1)
    position_ids = torch.cat([(first.cumsum(dim=1) - 1).clamp(min=0), first.new_zeros(groups, row_width - width)], 1)
    segments = torch.full_like(input_ids, PAD)
    segments[:, :width] = torch.where(first.bool(), PROMPT, PAD)
    steps = torch.arange(length, device=mask.device)
    row = torch.arange(n, device=mask.device) // num_generations
    columns = starts.unsqueeze(1) + steps  # [N, C]
    rows = row.unsqueeze(1).expand(-1, length)
    input_ids[rows[valid], columns[valid]] = completion_ids[valid]
    position_ids[rows[valid], columns[valid]] = (first.sum(dim=1)[row].unsqueeze(1) + steps)[valid]
    segments[rows[valid], columns[valid]] = (torch.arange(n, device=mask.device) % num_generations + 1).unsqueeze(
        1).expand(-1, length)[valid]
    sources = torch.where(steps == 0, width - 1, columns - 1).clamp(max=row_width - 1)  # masked tokens: any column
    return {"input_ids": input_ids, "position_ids": position_ids, "segments": segments, "rows": rows,
            "sources": sources}


def group_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, W, W], added to the attention scores: 0 where a query may see a key, the dtype's lowest value where not.
    Causal; a key is the prompt or a column of the query's own completion, never padding; each column sees itself
    (the prompt's left padding would otherwise have no key: no softmax over nothing, no NaN)."""
    width = segments.shape[1]
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (key != PAD) & ((key == PROMPT) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
        ~allowed, torch.finfo(dtype).min).unsqueeze(1)


def sampled_token_logprobs(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                           completion_ids: torch.Tensor, mask: torch.Tensor, temperature: float,
                           num_generations: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | x, y_<t) of each completion token at the sampling temperature [N, C] (0 where mask is 0), and the
    policy's entropy there (no gradient). Prompts padded on the left, completions on the right, each prompt's
    num_generations completions in consecutive rows: one forward pass over group_rows, the prompt run once per group
    (with num_generations 1, a row per completion)."""
    rows = group_rows(prompt_ids, prompt_mask, completion_ids, mask, num_generations)
    logits = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"],
                   attention_mask=group_attention_mask(rows["segments"], next(model.parameters()).dtype)).logits
    logp_all = torch.log_softmax(logits[rows["rows"], rows["sources"]].float() / temperature, dim=-1)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) * mask
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(dim=-1) * mask
    return logp, entropy


def kl_k1_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample estimates of KL(pi || pi_ref) from y ~ pi: k1 = log pi(y) - log pi_ref(y) (unbiased, can be
    negative) and k3 = pi_ref(y)/pi(y) - 1 - log(pi_ref(y)/pi(y)) (unbiased, never negative: x - 1 - log x >= 0)."""
    log_ratio = ref_logp - logp
    return -log_ratio, torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, epsilon_low: float, epsilon_high: float, beta: float, loss_type: str,
              max_completion_length: int) -> torch.Tensor:
    """The GRPO loss of a batch of N completions (per-token tensors [N, C], advantages [N], mask 1 on completion
    tokens): -min(rho A, clip(rho) A) + beta k3 per token, aggregated by loss_type (see the module docstring)."""
    ratio = torch.exp(logp - old_logp)
    a = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * a)
    if beta != 0.0:
        per_token = per_token + beta * kl_k1_k3(logp, ref_logp)[1]
    mask = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    if loss_type == "dapo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    return (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)  # dr_grpo


@torch.no_grad()
def grpo_stats(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
               mask: torch.Tensor, epsilon_low: float, epsilon_high: float) -> dict[str, torch.Tensor]:
    """Means over the completion tokens: the clipped fraction (tokens whose clipped term is the minimum and has no
    gradient: rho < 1 - eps with A < 0, or rho > 1 + eps_high with A > 0) and, with a reference, the KL estimate k3."""
    ratio, a, mask = torch.exp(logp - old_logp), advantages.unsqueeze(1), mask.float()
    clipped = ((ratio < 1 - epsilon_low) & (a < 0)) | ((ratio > 1 + epsilon_high) & (a > 0))
    stats = {"clipfrac": (clipped * mask).sum() / mask.sum().clamp(min=1.0)}
    if ref_logp is not None:
        stats["kl"] = (kl_k1_k3(logp, ref_logp)[1] * mask).sum() / mask.sum().clamp(min=1.0)
    return stats


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


@torch.no_grad()
def sample_groups(model: nn.Module, tokenizer, prompts: list[str], num_generations: int,
                  max_completion_length: int, temperature: float) -> tuple[torch.Tensor, ...]:
    """num_generations completions of each prompt, sampled at `temperature` from torch's generator (top_k 0: the whole
    vocabulary), in one batch: prompt_ids, prompt_mask [N, P] (left-padded, each prompt repeated G times in a row),
    completion_ids [N, C] (the pad token after the first eos) and their mask (mask_after_eos)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_completion_length, do_sample=True, temperature=temperature, top_k=0,
                              top_p=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    prompt_ids, prompt_mask = (t.repeat_interleave(num_generations, dim=0).to(device)
                               for t in encode_prompts(tokenizer, prompts))
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    model.train(was_training)
    completion_ids = out[:, prompt_ids.shape[1]:]
    mask = mask_after_eos(completion_ids, tokenizer.eos_token_id)
    return prompt_ids, prompt_mask, completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask


def sample_accuracy(model: nn.Module, tokenizer, task: str, prompts: list[str], num_samples: int,
                    max_completion_length: int, temperature: float, batch_size: int, seed: int) -> float:
    """The fraction of `num_samples` completions per prompt, sampled at `temperature`, whose answer is right: the
    quantity GRPO's answer reward estimates on the prompts it trains on. Sampled from a generator seeded with `seed`
    (the same draws at every evaluation; torch's own generator, and so training, is left as it was)."""
    device = next(model.parameters()).device
    right = []
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            completion_ids = sample_groups(model, tokenizer, chunk, num_samples, max_completion_length, temperature)[2]
            responses = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
            right += [SCORE[task](p, r)[0] for p, r in zip([p for p in chunk for _ in range(num_samples)], responses,
                                                           strict=True)]
    return float(np.mean(right))


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
    ckpt = load_lm_checkpoint(path, "grpo")
    model, tokenizer = make_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model, tokenizer


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (optimiser step, the held-out exact match); returning True ends
    # training (the run then returns as usual).
    check_args(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no bars on stderr while a folder loads or saves

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
    if limit is not None and longest + max(args.max_new_tokens, args.max_completion_length, n + 2) > limit:
        fail(f"a prompt ({longest} tokens) and --max-new-tokens {args.max_new_tokens} or --max-completion-length "
             f"{args.max_completion_length} do not fit the model's {limit} positions; use fewer --num-digits or tokens")
    model.to(device)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_lm_checkpoint(args.resume, "grpo")
        check_lm_resume(resume_ckpt, args, model_args)
    # the training set (--train-prompts; a resumed run reads it back): distinct prompts, none held out
    pool = None if resume_ckpt is None else resume_ckpt["train_prompts"]
    if resume_ckpt is None and args.train_prompts:
        pool = list(dict.fromkeys(sample_pairs(args.task, sampler, args.num_digits, 4 * args.train_prompts, exclude)[0]))
        pool = pool[:args.train_prompts]
        if len(pool) < args.train_prompts:
            fail(f"--train-prompts {args.train_prompts}: drew only {len(pool)} distinct prompts; ask for fewer")
    epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high

    def held_out_sample_accuracy() -> float:
        """eval/sample_accuracy: --eval-samples completions per held-out prompt at --temperature (nan when 0)."""
        if not args.eval_samples:
            return math.nan
        return sample_accuracy(model, tokenizer, args.task, eval_prompts, args.eval_samples, args.max_completion_length,
                               args.temperature, 2 * args.batch_size, EVAL_SEED)

    start_time = time.time()
    if resume_ckpt is None:
        if args.model_name_or_path is None and args.sft_updates > 0:
            train_sft(model, tokenizer, args.task, args.num_digits, args.sft_updates, SFT_BATCH_SIZE, sampler, exclude,
                      device)
        start = evaluate_lm(model, tokenizer, args.task, eval_prompts, args.max_new_tokens, 2 * args.batch_size)
        initial_match, initial_compliance = start["exact_match"], start["rule_compliance"]
        initial_sampled = held_out_sample_accuracy()
    else:
        initial_match, initial_compliance = resume_ckpt["initial_match"], resume_ckpt["initial_compliance"]
        initial_sampled = resume_ckpt["initial_sampled"]
    sft_seconds = time.time() - start_time
    # the reference: a frozen copy of the starting policy (beta = 0: none, and no KL term)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if args.beta > 0 else None
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    # fused=True: AdamW's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=True)

    # The training state a checkpoint holds; resuming puts it back. global_step counts optimiser steps; the learning
    # rate is a function of (global_step, schedule_origin), so these two are the schedule's whole state. `batch` is the
    # generation batch being trained on and `iteration` how many of its --num-iterations steps are done.
    global_step, origin, batch, iteration = 0, (0, 0.0), None, 0
    best_match, last_match, last_compliance, last_sampled = -math.inf, math.nan, math.nan, math.nan
    if resume_ckpt is not None:
        ckpt = resume_ckpt
        model.load_state_dict(ckpt["model"])
        if reference is not None:
            reference.load_state_dict(ckpt["reference"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        batch, iteration = ckpt["batch"], ckpt["iteration"]
        if batch is not None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        best_match, last_match, last_compliance = ckpt["best_match"], ckpt["last_match"], ckpt["last_compliance"]
        last_sampled = ckpt["last_sampled"]
        set_rng_state(ckpt["rng"], generators)
        if ckpt["args"]["total_updates"] != args.total_updates:  # stretch what is left of the schedule
            origin = (global_step, progress(global_step, ckpt["args"]["total_updates"], origin))
            print(f"--total-updates changed from {ckpt['args']['total_updates']:,} to {args.total_updates:,}: the "
                  "learning-rate schedule is stretched over the remaining steps", flush=True)
        print(f"resumed from {args.resume} at optimiser step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "grpo", "task": args.task, "model_args": model_args, "model": model.state_dict(),
                "reference": None if reference is None else reference.state_dict(), "args": asdict(args),
                "optimizer": optimizer.state_dict(), "global_step": global_step, "schedule_origin": origin,
                "batch": batch, "iteration": iteration, "best_match": best_match, "last_match": last_match,
                "last_compliance": last_compliance, "last_sampled": last_sampled, "initial_match": initial_match,
                "initial_sampled": initial_sampled,
                "initial_compliance": initial_compliance, "train_prompts": pool, "rng": rng_state(generators)}

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
    rule = args.task in RULE_TASKS
    if resume_ckpt is None:  # the starting policy's held-out scores, at step 0
        writer.add_scalar("eval/exact_match", initial_match, 0)
        if args.eval_samples:
            writer.add_scalar("eval/sample_accuracy", initial_sampled, 0)
        if rule:
            writer.add_scalar("eval/rule_compliance", initial_compliance, 0)
    print(f"{args.task} with {args.num_digits} digits: GRPO on {args.model_name_or_path or 'GPT-2 built in code'} "
          f"({n_params:,} parameters); {args.batch_size} prompts x {args.num_generations} completions per batch, "
          f"{args.num_iterations} step(s) each; starting policy: greedy exact match {initial_match:.3f} on "
          f"{len(eval_prompts)} held-out prompts" + (f", rule kept {initial_compliance:.3f}" if rule else "")
          + (f", sampled accuracy {initial_sampled:.3f}" if args.eval_samples else "")
          + (f" (after {args.sft_updates:,} SFT steps, {sft_seconds:.1f}s)" if args.model_name_or_path is None
             and resume_ckpt is None else ""), flush=True)

    def run_evaluation() -> dict:
        """Evaluate, log, keep the best (its time is left out of the updates per second)."""
        nonlocal best_match, last_match, last_compliance, last_sampled, eval_seconds
        eval_start = time.time()
        result = evaluate_lm(model, tokenizer, args.task, eval_prompts, args.max_new_tokens, 2 * args.batch_size)
        last_sampled = held_out_sample_accuracy()
        eval_seconds += time.time() - eval_start
        last_match, last_compliance = result["exact_match"], result["rule_compliance"]
        best_match = max(best_match, last_match)
        writer.add_scalar("eval/exact_match", last_match, global_step)
        text = ""
        if args.eval_samples:
            writer.add_scalar("eval/sample_accuracy", last_sampled, global_step)
            text += f"  sampled {last_sampled:.3f} (start {initial_sampled:.3f})"
        if rule:
            writer.add_scalar("eval/rule_compliance", last_compliance, global_step)
            text += f"  rule kept {last_compliance:.3f}"
        print(f"eval at update {global_step:>7,}: exact match {last_match:.3f} (best {best_match:.3f}, start "
              f"{initial_match:.3f}){text}  e.g. {eval_prompts[0]!r} -> {result['responses'][0]!r}", flush=True)
        return result

    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    result: dict = {"responses": []}
    stats: dict[str, torch.Tensor] = {}

    while global_step < args.total_updates:
        if batch is None:  # a new generation batch: G completions of each prompt, sampled and scored
            parts, picks, dropped = [], [], []
            while len(picks) < args.batch_size and len(parts) < (DYNAMIC_SAMPLING_ROUNDS if args.dynamic_sampling
                                                                  else 1):
                if pool is None:
                    prompts, _ = sample_pairs(args.task, sampler, args.num_digits, args.batch_size, exclude)
                else:
                    prompts = [pool[i] for i in sampler.choice(len(pool), size=args.batch_size, replace=False)]
                prompt_ids, prompt_mask, completion_ids, mask = sample_groups(
                    model, tokenizer, prompts, args.num_generations, args.max_completion_length, args.temperature)
                responses = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
                rewards = torch.tensor(task_rewards(args.task, args.reward_funcs,
                                                    [p for p in prompts for _ in range(args.num_generations)], responses))
                parts.append({"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                              "mask": mask, "rewards": rewards})
                flat = (rewards.view(-1, args.num_generations).std(dim=1) == 0).tolist()
                for g, zero in enumerate(flat):  # dynamic sampling keeps the groups with spread; else every group
                    (dropped if zero and args.dynamic_sampling else picks).append((len(parts) - 1, g))
            picks = (picks + dropped)[:args.batch_size]  # out of rounds: groups without spread fill the batch
            drawn = torch.cat([part["rewards"] for part in parts]).view(-1, args.num_generations)
            merged = merge_groups(parts, picks, args.num_generations, tokenizer.pad_token_id)
            advantages, _ = group_advantages(merged["rewards"], args.num_generations, args.scale_rewards)
            # frac_reward_zero_std and the reward are those of every group sampled (with dynamic sampling, the
            # dropped ones too): what the policy scores on the task, not on the filtered batch
            batch = {**merged, "advantages": advantages.to(device), "drawn_reward": drawn.mean(),
                     "frac_reward_zero_std": (drawn.std(dim=1) == 0).float().mean(),
                     "rounds": torch.tensor(len(parts)), "old_logp": None, "ref_logp": None}
            prompt_ids, prompt_mask, completion_ids, mask = (batch[k] for k in ("prompt_ids", "prompt_mask",
                                                                                "completion_ids", "mask"))
            with torch.no_grad():
                if args.num_iterations > 1:  # the sampling policy's log-probabilities, for the later steps' ratios
                    batch["old_logp"] = sampled_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask,
                                                               args.temperature, args.num_generations)[0]
                if reference is not None:
                    batch["ref_logp"] = sampled_token_logprobs(reference, prompt_ids, prompt_mask, completion_ids,
                                                               mask, args.temperature, args.num_generations)[0]

        lr = args.learning_rate * lr_multiplier(progress(global_step, args.total_updates, origin), args.warmup_ratio,
                                                args.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logp, entropy = sampled_token_logprobs(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                               batch["mask"], args.temperature, args.num_generations)
        old_logp = logp.detach() if batch["old_logp"] is None else batch["old_logp"]
        loss = grpo_loss(logp, old_logp, batch["ref_logp"], batch["advantages"], batch["mask"], args.epsilon,
                         epsilon_high, args.beta, args.loss_type, args.max_completion_length)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm, foreach=True)
        if args.nan_check:  # before the step, in one host sync: the model stays finite
            loss_ok, grad_ok = torch.isfinite(torch.stack([loss.detach(), grad_norm])).tolist()
            if not loss_ok or not grad_ok:
                fault("loss" if not loss_ok else "gradient norm")
        optimizer.step()
        global_step += 1
        iteration += 1
        logged_batch = batch
        if iteration == args.num_iterations:
            batch, iteration = None, 0

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = (global_step - start_step) / max(time.time() - start_time - eval_seconds, 1e-9)
            stats = grpo_stats(logp, old_logp, logged_batch["ref_logp"], logged_batch["advantages"],
                               logged_batch["mask"], args.epsilon, epsilon_high)
            rewards, mask = logged_batch["rewards"], logged_batch["mask"].float()
            values = {"charts/reward": logged_batch["drawn_reward"].item(), "charts/reward_std": rewards.std().item(),
                      "charts/frac_reward_zero_std": logged_batch["frac_reward_zero_std"].item(),
                      "charts/completion_length": mask.sum(dim=1).mean().item(), "losses/grpo_loss": loss.item(),
                      "losses/clipfrac": stats["clipfrac"].item(),
                      "losses/entropy": (entropy.sum() / mask.sum()).item(), "losses/grad_norm": grad_norm.item()}
            if "kl" in stats:
                values["losses/kl"] = stats["kl"].item()
            if args.dynamic_sampling:
                values["charts/sampling_rounds"] = logged_batch["rounds"].item()
            writer.add_scalar("charts/SPS", ups, global_step)  # optimiser steps per second, evaluations left out
            writer.add_scalar("charts/learning_rate", lr, global_step)
            for key, value in values.items():
                writer.add_scalar(key, value, global_step)
            print(f"update {global_step:>6,}  updates/s {ups:5.2f}  reward {values['charts/reward']:.3f}  zero-std "
                  f"groups {values['charts/frac_reward_zero_std']:.2f}  loss {loss.item():+.4f}"
                  + (f"  kl {values['losses/kl']:.4f}" if "kl" in stats else "")
                  + f"  clipfrac {values['losses/clipfrac']:.3f}  length {values['charts/completion_length']:.1f}",
                  flush=True)
        if global_step % args.eval_every == 0 or global_step == args.total_updates:
            result = run_evaluation()
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

    train_time = time.time() - start_time  # evaluations included
    model_path = None
    if args.save_model:  # a Hugging Face folder: the next file loads it with --model-name-or-path
        model_path = f"{run_dir}/{args.exp_name}"
        model.save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)
        print(f"model and tokenizer saved to {model_path}/")
    print(f"last exact match {last_match:.3f}, best {best_match:.3f}, start {initial_match:.3f} on {len(eval_prompts)} "
          f"held-out prompts; {global_step - start_step:,} optimiser steps in {train_time:.1f}s")
    close_logs(writer, args.track)
    return {
        "eval_exact_match": last_match,
        "eval_exact_match_best": best_match if best_match > -math.inf else math.nan,
        "eval_rule_compliance": last_compliance,
        "eval_exact_match_initial": initial_match,
        "eval_rule_compliance_initial": initial_compliance,
        "eval_sample_accuracy": last_sampled,
        "eval_sample_accuracy_initial": initial_sampled,
        "eval_responses": result["responses"],
        "kl": stats["kl"].item() if "kl" in stats else math.nan,
        "sps": (global_step - start_step) / max(train_time - eval_seconds, 1e-9),  # optimiser steps per second
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
