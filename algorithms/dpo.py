"""Direct Preference Optimisation (DPO): align a causal language model on preference pairs, with no reward model.

Rafailov et al. (2023), "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
https://arxiv.org/abs/2305.18290. The KL-regularised RLHF objective max E[r(x, y)] - beta KL(pi || pi_ref) has the
closed-form optimum pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x); solved for r, the reward is
beta log(pi / pi_ref) plus a term of x alone, which cancels in a Bradley-Terry comparison of two responses to the same
prompt. So the policy itself is trained with the reward model's loss on pairs, its "implicit reward" being
beta (log pi(y|x) - log pi_ref(y|x)). What a TRL DPOTrainer user expects: a policy and a frozen reference (both the
SFT model at the start), beta 0.1, the sigmoid loss with IPO and hinge as options, the rewards/* and logps/* logs.

Run:
    python algorithms/sft.py --total-updates 2000 --save-model          # the SFT model: policy and reference
    python algorithms/dpo.py --model-name-or-path runs/<sft run>/sft
    python algorithms/dpo.py                                            # no folder: a quick SFT in this process first
    python algorithms/dpo.py --model-name-or-path DIR --loss-type ipo --beta 0.5
    python algorithms/dpo.py --model-name-or-path DIR --dataset pairs.jsonl   # your own prompt/chosen/rejected lines
    python algorithms/dpo.py --help

Models and data, with no network (sft.py's tokenizer, model, tasks and scorers, reward_model.py's pairs, copied):
- The starting model: --model-name-or-path, any local Hugging Face causal LM folder (sft.py's --save-model output);
  without one, the small GPT-2 built in code is first fine-tuned here for --sft-updates steps with sft.py's loss and
  schedule (--sft-updates 0 keeps it untrained; the tests use that). It is both the policy's start and the reference.
- Preference pairs exactly as reward_model.py builds them: the SFT model samples --samples-per-prompt responses to
  each of --train-prompts prompts (never a held-out one) at --temperature, the task's scorer labels them, and each
  distinct wrong response is rejected against a right sample of the same prompt (or the reference answer when none
  was sampled and it is right): the SFT model's own near misses. --dataset PATH takes the pairs from a JSONL file of
  {"prompt", "chosen", "rejected"} strings instead (lines whose prompt is held out are left out). The held-out pairs
  come from heldout_pairs' prompts the same way, and are never trained on.
- The reference's log-probabilities of every chosen and rejected response (training and held-out) are computed ONCE,
  before training, by pair_logprobs, and stored in the checkpoints: no reference model is kept in memory, and a
  resumed run reads them back. Each optimiser step draws --batch-size pairs uniformly with replacement.
- One row per pair, the prompt run once (encode_shared_pairs, shared_attention_mask): x, then y_c and eos, then y_r
  and eos, in one row, where the usual form (TRL's) puts x + y_c and x + y_r in two rows and runs the prompt twice.
  The rejected tokens may not attend to the chosen ones, and y_r's positions restart where x ends, so each token sees
  the context and position it would have in a row of its own: the same log-probabilities (tests/test_dpo.py, to
  1e-5), with fewer tokens per step (about a third fewer for this file's tasks, whose prompts are most of a row).
  The training pairs are tokenised once, before the first step.

The math, as written in the code below, for a pair (x, y_c, y_r) with y_c preferred (log pi(y|x): the sum of the
log-probabilities of the response's tokens and its eos, each scored by the logits of the column before it; the
prompt's last column scores the first token of either response):
    log-ratio         u_c = log pi(y_c|x) - log pi_ref(y_c|x),   u_r = log pi(y_r|x) - log pi_ref(y_r|x)
    margin            h = u_c - u_r
    implicit reward   r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))   (logged: rewards/chosen, rewards/rejected,
                      their difference rewards/margins = beta h, rewards/accuracies = the fraction with beta h > 0)
    sigmoid (DPO)     L = -log sigmoid(beta h)                            (Rafailov et al., eq. 7)
                      with --label-smoothing eps: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), the
                      conservative DPO of Mitchell (2023), a Bradley-Terry loss whose labels are flipped with prob. eps
    robust            L = (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps), the unbiased loss
                      of Chowdhury et al. (2024), https://arxiv.org/abs/2403.00409, for labels flipped with prob. eps
    hinge             L = max(0, 1 - beta h)                              (SLiC, Zhao et al. (2023))
    ipo               L = (h_bar - 1 / (2 beta))^2, h_bar = u_c / |y_c| - u_r / |y_r| (Azar et al. (2023),
                      https://arxiv.org/abs/2310.12036, eq. 17): the log-ratios averaged over each response's tokens
                      (eos included), as TRL does, so that beta (the paper's tau) means the same for any length
    rpo (option)      L + alpha * (-sum_i log pi(y_c,i|x_i) / sum_i |y_c,i|), --rpo-alpha: the chosen responses'
                      negative log-likelihood per token added (Pang et al. (2024), https://arxiv.org/abs/2404.19733,
                      "Iterative Reasoning Preference Optimization"; TRL's loss_type ["sigmoid", "sft"] with weights
                      [1, alpha]): it keeps the chosen responses likely while the margin grows
    the batch loss    the mean of L over the pairs; its gradient for sigmoid is
                      dL/d log pi(y_c|x) = -beta sigmoid(-beta h) / B = -dL/d log pi(y_r|x): a pair the policy already
                      ranks right (large h) weighs little, one it ranks wrong weighs up to beta / B
    learning rate     sft.py's: linear warm-up over --warmup-ratio, then cosine, linear or constant; AdamW, the
                      gradient's global norm clipped to --max-grad-norm
With --loss-type, --beta, --label-smoothing and --rpo-alpha pinned, the loss, rewards/chosen, rewards/rejected and
rewards/margins equal TRL 1.16's DPOTrainer's on the same batch (tests/test_dpo.py; TRL's own sigmoid loss ignores
label_smoothing, so conservative DPO is checked by hand only).

Why logps/chosen can fall while the margin grows (it is logged, not hidden): the loss sees only the difference h,
and lowering log pi(y_r|x) is as good as raising log pi(y_c|x). The pairs here are near misses ("1029" against
"1009"): the tokens of their common prefix have the same context and cancel exactly, but the tokens after the first
difference are the same digits in nearly the same context ("102" + "9" against "100" + "9"), so pushing the
rejected's "9" down pushes the chosen's down too, through the features the two contexts share. The margin still
grows, and the probability that leaves both responses goes to responses in neither (likelihood displacement: Pal et
al. (2024), https://arxiv.org/abs/2402.13228; Razin et al. (2024), https://arxiv.org/abs/2410.08847). A falling chosen
log-probability is therefore no bug, but it can cost greedy answers, which evaluation measures; --rpo-alpha is the
usual counterweight.

A language-model file (sft.py's kind):
- Progress is counted in optimiser steps (--total-updates, --eval-every, --log-every, --checkpoint-every). Each
  evaluation greedily decodes the held-out prompts (evaluate_lm) and logs eval/exact_match (report() gets it; and
  eval/rule_compliance for a task with a rule), and the implicit-reward accuracy and mean margin on the held-out pairs
  (eval/reward_accuracy, eval/reward_margin). The SFT model's own scores are logged once at step 0. At the end the
  last evaluation's answers are compared with the SFT model's prompt by prompt: answers fixed, answers broken, and
  the exact two-sided sign test on those two counts (sign_test), printed and returned.
- --save-model writes the policy as a Hugging Face folder runs/{run}/{exp_name}/ (config.json, model.safetensors,
  tokenizer files); load_model(path) reads that folder or a checkpoint.
- Long runs, sft.py's form: checkpoints hold the policy, AdamW's state, the schedule, the pairs (strings), the
  reference's log-probabilities and every random generator, so --resume continues bit for bit without sampling or
  scoring again; Ctrl-C or SIGTERM writes one and exits 130 / 143 with the resume command; a non-finite loss or
  gradient norm stops the run (exit 3) keeping the last finite state.
Tested: from sft.py's 2000-step model of 3-digit addition, seed 1, with --rpo-alpha 1 --learning-rate 3e-4
--total-updates 2000, the greedy exact match stays within 0.02 of the SFT model's and the implicit reward ranks >= 0.8 of
the held-out pairs right (tests/test_dpo.py, slow); a rise of the exact match is not shown.
Results: benchmark_results/dpo.md
"""

from __future__ import annotations

import dataclasses
import json
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
    exp_name: str = "dpo"
    """the name of this experiment (used in the run directory's name and the saved model's folder)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (SFT, sampling) and the pair sampler"""
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
    """a local Hugging Face causal LM folder (sft.py's --save-model output): the policy's start and the reference;
    unset: the GPT-2 built in code, first fine-tuned here for --sft-updates steps"""
    task: str = "addition"
    """the task the prompts and the scorer come from: addition, sort or avoid-digit"""
    num_digits: int = 3
    """digits of each operand (addition), of the string to sort (sort), of the demonstrations (avoid-digit)"""
    sft_updates: int = 2000
    """without --model-name-or-path: SFT optimiser steps (sft.py's defaults otherwise) before the pairs are sampled
    (0: the untrained model)"""
    dataset: str | None = None
    """a JSONL file of {"prompt", "chosen", "rejected"} lines to train on instead of the SFT model's own samples"""
    train_prompts: int = 20000
    """prompts whose sampled responses make the training pairs"""
    samples_per_prompt: int = 4
    """responses sampled from the SFT model per prompt (training and held-out)"""
    temperature: float = 1.0
    """the sampling temperature of those responses"""
    loss_type: str = "sigmoid"
    """the preference loss: sigmoid (DPO), robust, hinge or ipo"""
    beta: float = 0.1
    """the KL coefficient beta (TRL's default 0.1); for ipo the paper's tau (the target margin is 1 / (2 beta))"""
    label_smoothing: float = 0.0
    """the probability that a label is flipped, in [0, 0.5): conservative DPO with sigmoid, the unbiased loss with
    robust (0: plain DPO)"""
    rpo_alpha: float = 0.0
    """the weight of the chosen responses' negative log-likelihood per token added to the loss (RPO; 0: plain DPO)"""
    total_updates: int = 1000
    """optimiser steps of DPO"""
    batch_size: int = 64
    """pairs per optimiser step (also the batch of SFT, sampling, scoring and evaluation)"""
    learning_rate: float = 1e-4
    """the peak AdamW learning rate (for the in-code model; TRL's default 1e-6 is for large pretrained models)"""
    lr_schedule: str = "cosine"
    """the decay after warm-up: cosine, linear or constant"""
    warmup_ratio: float = 0.05
    """the fraction of --total-updates over which the learning rate rises linearly from 0"""
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
    """evaluate (greedy decoding of the held-out prompts, the held-out pairs' rewards) every this many optimiser
    steps, and after the last"""
    eval_prompts: int = 200
    """held-out prompts: greedy evaluation, and their sampled responses make the held-out pairs; never trained on
    (at most half of the task's distinct prompts)"""
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
LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_prompts", "log_every", "torch_threads",
                 "max_new_tokens", "n_layer", "n_embd", "n_head", "train_prompts", "samples_per_prompt"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.sft_updates >= 0:
        fail(f"--sft-updates must be 0 or more, got {args.sft_updates}")
    if args.task not in TASKS:
        fail(f"--task {args.task} is not a task of this file; choose one of {', '.join(TASKS)}")
    if not 1 <= args.num_digits <= 30:
        fail(f"--num-digits must be between 1 and 30, got {args.num_digits}")
    if not 2 * args.eval_prompts <= prompt_space(args.task, args.num_digits):
        fail(f"--eval-prompts {args.eval_prompts}: --task {args.task} with --num-digits {args.num_digits} has only "
             f"{prompt_space(args.task, args.num_digits):,} distinct prompts; hold out at most half of them "
             f"(--eval-prompts {prompt_space(args.task, args.num_digits) // 2} or fewer)")
    if args.lr_schedule not in SCHEDULES:
        fail(f"--lr-schedule {args.lr_schedule} is unknown; choose one of {', '.join(SCHEDULES)}")
    if args.loss_type not in LOSS_TYPES:
        fail(f"--loss-type {args.loss_type} is unknown; choose one of {', '.join(LOSS_TYPES)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.beta < math.inf:
        fail(f"--beta must be positive and finite, got {args.beta}")
    if not 0 <= args.label_smoothing < 0.5:
        fail(f"--label-smoothing must be in [0, 0.5) (the probability that a label is flipped), got "
             f"{args.label_smoothing}")
    if args.label_smoothing > 0 and args.loss_type not in ("sigmoid", "robust"):
        fail(f"--label-smoothing is a flip probability of the sigmoid and robust losses; --loss-type {args.loss_type} "
             "does not use it")
    if not 0 <= args.rpo_alpha < math.inf:
        fail(f"--rpo-alpha must be non-negative and finite, got {args.rpo_alpha}")
    if not 0 < args.learning_rate < math.inf:
        fail(f"--learning-rate must be positive and finite, got {args.learning_rate}")
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
    if args.model_name_or_path is not None and not os.path.isfile(os.path.join(args.model_name_or_path, "config.json")):
        fail(f"--model-name-or-path {args.model_name_or_path}: no Hugging Face model folder there (no config.json); "
             "give a local folder written by save_pretrained (nothing is downloaded)")
    if args.dataset is not None:
        read_preference_file(args.dataset)  # exits 2 with one line if a line lacks a column


def read_preference_file(path: str) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples from a JSONL file, one JSON object per line with those three strings (TRL's
    explicit-prompt preference format); anything else is bad input (one line, exit 2)."""
    if not os.path.isfile(path):
        fail(f"--dataset {path}: no such file (give a JSONL file of prompt/chosen/rejected lines)")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                fail(f"--dataset {path}: line {number} is not JSON (expected one object per line)")
            missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row, dict)
                       or not isinstance(row.get(k), str)]
            if missing:
                fail(f"--dataset {path}: line {number} lacks the string column(s) {', '.join(missing)}; each line must "
                     'be {"prompt": ..., "chosen": ..., "rejected": ...}')
            if not row["prompt"]:
                fail(f"--dataset {path}: line {number} has an empty prompt (a response's first token is scored by "
                     "the prompt's last one)")
            pairs.append((row["prompt"], row["chosen"], row["rejected"]))
    if not pairs:
        fail(f"--dataset {path}: no preference pairs in the file")
    return pairs


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


def sign_test(wins: int, losses: int) -> float:
    """The exact two-sided sign test (McNemar's exact test on the discordant pairs): the probability, with wins and
    losses equally likely, of a split at least as uneven as this one."""
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None,
             rpo_alpha: float = 0.0) -> torch.Tensor:
    """The mean preference loss over a batch of pairs from the policy's and the reference's summed log-probabilities
    (the module docstring's equations), plus rpo_alpha times the chosen responses' mean negative log-likelihood per
    token; ipo and rpo_alpha > 0 need each response's token count."""
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    logits = beta * (chosen_ratio - rejected_ratio)
    eps = label_smoothing
    if loss_type == "ipo":  # log-ratios averaged over the response's tokens
        h = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - logits)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    else:  # sigmoid (conservative with eps > 0)
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    if rpo_alpha:  # the chosen responses' tokens pooled over the batch
        return losses.mean() + rpo_alpha * (-chosen_logps.sum() / chosen_lengths.sum())
    return losses.mean()


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




# ---- Preference pairs: the SFT model's own samples, scored; the reference's log-probabilities, once ----


def sample_responses(policy: nn.Module, tokenizer, prompts: list[str], samples_per_prompt: int, temperature: float,
                     max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """`samples_per_prompt` responses to each prompt, sampled from the policy at `temperature` (torch's generator)."""
    flat = generate(policy, tokenizer, [p for p in prompts for _ in range(samples_per_prompt)], max_new_tokens,
                    batch_size, do_sample=True, temperature=temperature)
    return [flat[i:i + samples_per_prompt] for i in range(0, len(flat), samples_per_prompt)]


def build_preference_pairs(task: str, prompts: list[str], references: list[str],
                           samples: list[list[str]]) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples: each distinct wrong sample of a prompt is rejected against a right sample of
    the same prompt (in turn) or, when none was sampled, the reference answer if that is right. "Right" = the task's
    scorer says the answer is right and the rule is kept."""
    pairs = []
    for prompt, reference, responses in zip(prompts, references, samples, strict=True):
        distinct = list(dict.fromkeys(responses))
        right = [r for r in distinct if all(SCORE[task](prompt, r))]
        wrong = [r for r in distinct if not all(SCORE[task](prompt, r))]
        if not right and all(SCORE[task](prompt, reference)):
            right = [reference]
        if right:
            pairs += [(prompt, right[i % len(right)], rejected) for i, rejected in enumerate(wrong)]
    return pairs


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
    ckpt = load_lm_checkpoint(path, "dpo")
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
    model.to(device)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_lm_checkpoint(args.resume, "dpo")
        check_lm_resume(resume_ckpt, args, model_args)

    start_time = time.time()
    if resume_ckpt is None:
        # The SFT model (policy and reference), its own samples scored, and the reference's log-probabilities of every
        # pair: all of it once, before training (a resumed run reads it back).
        if args.model_name_or_path is None and args.sft_updates > 0:
            train_sft(model, tokenizer, args.task, args.num_digits, args.sft_updates, args.batch_size, sampler,
                      exclude, device)
        sft_eval = evaluate_lm(model, tokenizer, args.task, eval_prompts, args.max_new_tokens, args.batch_size)
        sft_match, sft_compliance = sft_eval["exact_match"], sft_eval["rule_compliance"]
        sft_right = [SCORE[args.task](p, r)[0] for p, r in zip(eval_prompts, sft_eval["responses"], strict=True)]
        right_rate = math.nan
        if args.dataset is not None:
            train_pairs = [pair for pair in read_preference_file(args.dataset) if pair[0] not in exclude]
        else:
            prompts, references = sample_pairs(args.task, sampler, args.num_digits, args.train_prompts, exclude)
            samples = sample_responses(model, tokenizer, prompts, args.samples_per_prompt, args.temperature,
                                       args.max_new_tokens, args.batch_size)
            train_pairs = build_preference_pairs(args.task, prompts, references, samples)
            right_rate = float(np.mean([all(SCORE[args.task](p, r)) for p, rs in zip(prompts, samples, strict=True)
                                        for r in rs]))
        heldout_samples = sample_responses(model, tokenizer, eval_prompts, args.samples_per_prompt, args.temperature,
                                           args.max_new_tokens, args.batch_size)
        eval_pairs = build_preference_pairs(args.task, eval_prompts, [c for _, c in heldout], heldout_samples)
        if not train_pairs or not eval_pairs:
            fail(f"{len(train_pairs)} training and {len(eval_pairs)} held-out (right, wrong) pairs; raise --temperature, "
                 "--samples-per-prompt or --train-prompts (or give a --dataset whose prompts are not held out)")
        ref_logps = pair_logprobs(model, tokenizer, train_pairs + eval_pairs, args.batch_size)
        ref_logps, eval_ref_logps = ref_logps[:len(train_pairs)], ref_logps[len(train_pairs):]
    else:
        train_pairs = [tuple(p) for p in resume_ckpt["train_pairs"]]
        eval_pairs = [tuple(p) for p in resume_ckpt["eval_pairs"]]
        ref_logps, eval_ref_logps = resume_ckpt["ref_logps"], resume_ckpt["eval_ref_logps"]
        sft_match, sft_compliance, right_rate = (resume_ckpt["sft_match"], resume_ckpt["sft_compliance"],
                                                 resume_ckpt["sample_right_rate"])
        sft_right = resume_ckpt["sft_right"]
    pair_seconds = time.time() - start_time

    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    # fused=True: AdamW's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=True)

    # The training state a checkpoint holds; resuming puts it back. global_step counts optimiser steps; the learning
    # rate is a function of (global_step, schedule_origin), so these two are the schedule's whole state.
    global_step, origin = 0, (0, 0.0)
    best_match, last_match, last_compliance = -math.inf, math.nan, math.nan
    last_accuracy, last_margin = math.nan, math.nan
    if resume_ckpt is not None:
        ckpt = resume_ckpt
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        best_match, last_match, last_compliance = ckpt["best_match"], ckpt["last_match"], ckpt["last_compliance"]
        set_rng_state(ckpt["rng"], generators)
        if ckpt["args"]["total_updates"] != args.total_updates:  # stretch what is left of the schedule
            origin = (global_step, progress(global_step, ckpt["args"]["total_updates"], origin))
            print(f"--total-updates changed from {ckpt['args']['total_updates']:,} to {args.total_updates:,}: the "
                  "learning-rate schedule is stretched over the remaining steps", flush=True)
        print(f"resumed from {args.resume} at optimiser step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "dpo", "task": args.task, "model_args": model_args, "model": model.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "schedule_origin": origin, "best_match": best_match, "last_match": last_match,
                "last_compliance": last_compliance, "train_pairs": train_pairs, "eval_pairs": eval_pairs,
                "ref_logps": ref_logps, "eval_ref_logps": eval_ref_logps, "sft_match": sft_match,
                "sft_compliance": sft_compliance, "sample_right_rate": right_rate, "sft_right": sft_right,
                "rng": rng_state(generators)}

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
    if resume_ckpt is None:  # the SFT model's held-out scores: the baseline DPO is measured against
        writer.add_scalar("eval/exact_match", sft_match, 0)
        if args.task in RULE_TASKS:
            writer.add_scalar("eval/rule_compliance", sft_compliance, 0)
    source = f"--dataset {args.dataset}" if args.dataset else f"its samples ({right_rate:.3f} right)"
    print(f"{args.task} with {args.num_digits} digits: DPO ({args.loss_type}, beta {args.beta}) on "
          f"{args.model_name_or_path or 'GPT-2 built in code'} ({n_params:,} parameters); SFT model: greedy exact match "
          f"{sft_match:.3f} on the held-out prompts; {len(train_pairs):,} training pairs from {source} and "
          f"{len(eval_pairs):,} held-out pairs, reference log-probabilities precomputed ({pair_seconds:.1f}s), "
          f"e.g. {eval_pairs[0]}", flush=True)

    def run_evaluation() -> dict:
        """Greedy exact match on the held-out prompts, and the implicit rewards' accuracy and mean margin on the
        held-out pairs (its time is left out of the updates per second)."""
        nonlocal best_match, last_match, last_compliance, last_accuracy, last_margin, eval_seconds
        eval_start = time.time()
        result = evaluate_lm(model, tokenizer, args.task, eval_prompts, args.max_new_tokens, args.batch_size)
        margins = args.beta * ((pair_logprobs(model, tokenizer, eval_pairs, args.batch_size) - eval_ref_logps.cpu())
                               @ torch.tensor([1.0, -1.0]))
        eval_seconds += time.time() - eval_start
        last_match, last_compliance = result["exact_match"], result["rule_compliance"]
        last_accuracy, last_margin = (margins > 0).float().mean().item(), margins.mean().item()
        best_match = max(best_match, last_match)
        writer.add_scalar("eval/exact_match", last_match, global_step)
        writer.add_scalar("eval/reward_accuracy", last_accuracy, global_step)
        writer.add_scalar("eval/reward_margin", last_margin, global_step)
        rule = ""
        if args.task in RULE_TASKS:
            writer.add_scalar("eval/rule_compliance", last_compliance, global_step)
            rule = f"  rule kept {last_compliance:.3f}"
        print(f"eval at update {global_step:>7,}: exact match {last_match:.3f} (best {best_match:.3f}, SFT "
              f"{sft_match:.3f}){rule}  held-out reward accuracy {last_accuracy:.3f} margin {last_margin:+.3f}  "
              f"e.g. {eval_prompts[0]!r} -> {result['responses'][0]!r}", flush=True)
        return result

    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    result: dict = {"responses": []}
    ref_logps = ref_logps.to(device)
    train_rows = encode_shared_pairs(tokenizer, train_pairs)  # tokenised once; a step indexes its rows

    while global_step < args.total_updates:
        index = torch.from_numpy(sampler.integers(0, len(train_pairs), size=args.batch_size))
        batch = {key: t[index].to(device) for key, t in train_rows.items()}
        ref_chosen, ref_rejected = ref_logps[index.to(device)].unbind(dim=1)
        lr = args.learning_rate * lr_multiplier(progress(global_step, args.total_updates, origin), args.warmup_ratio,
                                                args.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logps, lengths = shared_pair_logprobs(model, batch)
        (chosen, rejected), (chosen_lengths, rejected_lengths) = logps.unbind(dim=1), lengths.unbind(dim=1)
        loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, args.beta, args.loss_type, args.label_smoothing,
                        chosen_lengths, rejected_lengths, args.rpo_alpha)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm, foreach=True)
        if args.nan_check:  # before the step, in one host sync: the model stays finite
            loss_ok, grad_ok = torch.isfinite(torch.stack([loss.detach(), grad_norm])).tolist()
            if not loss_ok or not grad_ok:
                fault("loss" if not loss_ok else "gradient norm")
        optimizer.step()
        global_step += 1

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = (global_step - start_step) / max(time.time() - start_time - eval_seconds, 1e-9)
            chosen_rewards = args.beta * (chosen.detach() - ref_chosen)  # TRL's rewards/*: beta times the log-ratios
            rejected_rewards = args.beta * (rejected.detach() - ref_rejected)
            margin = chosen_rewards - rejected_rewards
            values = torch.stack([loss.detach(), chosen_rewards.mean(), rejected_rewards.mean(), margin.mean(),
                                  (margin > 0).float().mean(), chosen.detach().mean(), rejected.detach().mean(),
                                  grad_norm]).tolist()
            writer.add_scalar("charts/SPS", ups, global_step)  # optimiser steps per second, evaluations left out
            writer.add_scalar("charts/learning_rate", lr, global_step)
            for key, value in zip(("losses/dpo_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                   "rewards/accuracies", "logps/chosen", "logps/rejected", "losses/grad_norm"),
                                  values, strict=True):
                writer.add_scalar(key, value, global_step)
            print(f"update {global_step:>7,}  updates/s {ups:6.1f}  loss {values[0]:.4f}  margin {values[3]:+.3f}  "
                  f"accuracy {values[4]:.3f}  logps chosen {values[5]:.3f} rejected {values[6]:.3f}  lr {lr:.2e}",
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
    if args.save_model:  # a Hugging Face folder, loadable with --model-name-or-path by every file of the family
        model_path = f"{run_dir}/{args.exp_name}"
        model.save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)
        print(f"model and tokenizer saved to {model_path}/")
    print(f"last exact match {last_match:.3f}, best {best_match:.3f} on {len(eval_prompts)} held-out prompts (SFT "
          f"model {sft_match:.3f}); held-out reward accuracy {last_accuracy:.3f}; {global_step - start_step:,} "
          f"optimiser steps in {train_time:.1f}s")
    fixed = broken = 0
    if result["responses"]:  # the last evaluation against the SFT model's greedy answers, prompt by prompt
        now_right = [SCORE[args.task](p, r)[0] for p, r in zip(eval_prompts, result["responses"], strict=True)]
        fixed = sum(b and not a for a, b in zip(sft_right, now_right, strict=True))
        broken = sum(a and not b for a, b in zip(sft_right, now_right, strict=True))
        print(f"against the SFT model, prompt by prompt: {fixed} answers fixed, {broken} broken (exact sign test, "
              f"two-sided p = {sign_test(fixed, broken):.3f})")
    close_logs(writer, args.track)
    return {
        "eval_exact_match": last_match,
        "eval_exact_match_best": best_match if best_match > -math.inf else math.nan,
        "eval_rule_compliance": last_compliance,
        "eval_reward_accuracy": last_accuracy,
        "eval_reward_margin": last_margin,
        "eval_responses": result["responses"],
        "sft_exact_match": sft_match,
        "sft_rule_compliance": sft_compliance,
        "fixed": fixed,
        "broken": broken,
        "sample_right_rate": right_rate,
        "num_train_pairs": len(train_pairs),
        "num_eval_pairs": len(eval_pairs),
        "sps": (global_step - start_step) / max(train_time - eval_seconds, 1e-9),  # optimiser steps per second
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
