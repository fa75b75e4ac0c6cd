"""A Bradley-Terry reward model on a causal language model's own samples: the second stage of RLHF.

The reward model of InstructGPT (Ouyang et al. (2022), "Training language models to follow instructions with human
feedback", https://arxiv.org/abs/2203.02155, section 3.5; Stiennon et al. (2020), https://arxiv.org/abs/2009.01325):
the SFT model with its next-token head replaced by a scalar head on the last token, trained so that a preferred
response scores above a rejected one for the same prompt (Bradley and Terry (1952)). rlhf_ppo.py optimises a policy
against the folder --save-model writes.

Run:
    python algorithms/sft.py --total-updates 2000 --save-model         # the policy whose samples form the pairs
    python algorithms/reward_model.py --model-name-or-path runs/<sft run>/sft
    python algorithms/reward_model.py                                  # no folder: a quick SFT in this process first
    python algorithms/reward_model.py --task avoid-digit --model-name-or-path runs/<sft run on avoid-digit>/sft
    python algorithms/reward_model.py --help

Models and data, with no network (sft.py's tokenizer, model, tasks and scorers, copied):
- The starting model: --model-name-or-path, any local Hugging Face causal LM folder (sft.py's --save-model output);
  without one, the small GPT-2 built in code is first fine-tuned here for --sft-updates steps with sft.py's loss
  and schedule (--sft-updates 0 keeps it untrained: then every sample is wrong and the chosen response is always
  the reference; the tests use that).
- Preference pairs from the policy's OWN samples, labelled by the task's scorer, not by people: for each of
  --train-prompts prompts (never a held-out one) the policy samples --samples-per-prompt responses at
  --temperature; a response is right when score_<task> says it is right and keeps the prompt's rule. Each distinct
  wrong response is a rejected one (a near miss: the policy's own mistake, not a random string), paired with a
  right sample of the same prompt (in turn) or, when none was sampled, the reference answer (if it is right: an
  avoid-digit demonstration can break the rule). The held-out pairs come the same way from heldout_pairs' prompts
  (the same prompts for every file of the family), sampled once before training; they are never trained on.
- The pairs are drawn once, before training (the policy is frozen here); each optimiser step draws --batch-size of
  them uniformly with replacement.

The math, as written in the code below, for a pair (x, y_c, y_r) with y_c preferred:
    reward            r(x, y) = w . h_L + b, h_L the last layer's hidden state at the last real token of
                      prompt + response + eos (last_token_index: the largest position whose attention mask is 1,
                      for right or left padding); positions are cumsum(attention_mask) - 1, as in sft.py
    Bradley-Terry     P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r))
    loss              L = - mean over the batch of log sigmoid(r(x, y_c) - r(x, y_r))        (bradley_terry_loss:
                      preference_reward.py's cross-entropy form with every label y = 1, chosen preferred)
    gradient          dL/dr_c = - (1 - sigmoid(r_c - r_r)) / B = - dL/dr_r
    accuracy          the fraction of pairs with r(x, y_c) > r(x, y_r) (ties count as wrong)
    learning rate     sft.py's: linear warm-up over --warmup-ratio, then cosine, linear or constant; AdamW, the
                      gradient's global norm clipped to --max-grad-norm
The reward's offset is not identified by this loss (r + c gives the same loss); rlhf_ppo.py whitens or uses
differences, and the logged eval/reward_right and eval/reward_wrong are compared with each other, not with 0.

A language-model file (sft.py's kind), with a reward model's evaluation:
- Progress is counted in optimiser steps (--total-updates, --eval-every, --log-every, --checkpoint-every). Each
  evaluation scores the held-out pairs and logs eval/pairwise_accuracy (report() gets it) and the mean reward of the
  right and of the wrong held-out responses; the policy's greedy exact match on the held-out prompts is measured
  once before training with evaluate_lm and logged as eval/exact_match at step 0 (it says how often the reference
  stands in for a right sample).
- --save-model writes a Hugging Face folder runs/{run}/{exp_name}/: config.json of the
  AutoModelForSequenceClassification class of the starting model's architecture (GPT2ForSequenceClassification for
  the in-code model) with num_labels 1 and pad_token_id set, model.safetensors (the backbone and the `score` head),
  and the tokenizer files. Load it with AutoModelForSequenceClassification.from_pretrained(path) or this file's
  load_model(path) -> (reward model, tokenizer), and score with reward_scores (this file's pooling: the last token
  by the attention mask, so that an eos equal to the pad token is still scored).
- Long runs, sft.py's form: checkpoints hold the reward model, AdamW's state, the schedule, the training and
  held-out pairs (strings) and every random generator, so --resume continues bit for bit without sampling again;
  Ctrl-C or SIGTERM writes one and exits 130 / 143 with the resume command; a non-finite loss or gradient norm stops
  the run (exit 3) keeping the last finite state.
Tested: from sft.py's 2000-step model of 3-digit addition, seed 1 reaches a held-out pairwise accuracy >= 0.74
(tests/test_reward_model.py, slow); from sft.py's 1000-step model, 0.8 and above (the page).
Results: benchmark_results/reward_model.md
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
    exp_name: str = "reward_model"
    """the name of this experiment (used in the run directory's name and the saved model's folder)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (sampling, the head's initialisation) and the pair sampler"""
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
    """if toggled, save the reward model and its tokenizer as a Hugging Face folder runs/{run_name}/{exp_name}/"""
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
    """the task the prompts and the scorer come from: addition, sort or avoid-digit"""
    num_digits: int = 3
    """digits of each operand (addition), of the string to sort (sort), of the demonstrations (avoid-digit)"""
    sft_updates: int = 2000
    """without --model-name-or-path: SFT optimiser steps (sft.py's defaults otherwise) before the pairs are sampled
    (0: the untrained model)"""
    train_prompts: int = 20000
    """prompts whose sampled responses make the training pairs"""
    samples_per_prompt: int = 4
    """responses sampled from the policy per prompt (training and held-out)"""
    temperature: float = 1.0
    """the sampling temperature of those responses"""
    total_updates: int = 3000
    """optimiser steps of the reward model"""
    batch_size: int = 64
    """pairs per optimiser step (also the batch of SFT, sampling and scoring)"""
    learning_rate: float = 3e-4
    """the peak AdamW learning rate of the reward model (the SFT stage uses sft.py's 2e-3)"""
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
    eval_every: int = 500
    """score the held-out pairs every this many optimiser steps, and after the last"""
    eval_prompts: int = 200
    """held-out prompts whose sampled responses make the held-out pairs, never trained on (at most half of the task's
    distinct prompts)"""
    max_new_tokens: int = 32
    """the longest sampled response, in tokens"""
    log_every: int = 100
    """write the loss, accuracy, learning rate and optimiser steps per second, and print a progress line, every this
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
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
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


# ---- The reward model: a scalar head on the last token, and its pairs ----


def reward_model_from(policy: nn.Module, tokenizer) -> nn.Module:
    """A sequence-classification model of the policy's architecture (AutoModelForSequenceClassification, num_labels
    1) whose backbone is a copy of the policy's transformer and whose scalar head `score` is new (drawn from torch's
    generator)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(policy.base_model.state_dict())
    if not isinstance(getattr(model, "score", None), nn.Linear):
        fail(f"{type(model).__name__} has no linear `score` head; this file knows the heads of GPT-2, Llama and their "
             "kin")
    return model.float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token: the largest index whose mask is 1 (right or left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=-1)


def reward_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """r(x, y) per row [B]: the scalar head on the last layer's hidden state at the last real token, positions
    counted over real tokens only."""
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
    return model.score(last).squeeze(-1).float()


def bradley_terry_loss(return1: torch.Tensor, return2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-mean[ y log P + (1 - y) log(1 - P) ], P = sigmoid(R1 - R2): the cross-entropy of the labels, computed from
    the logit R1 - R2 (stable for large differences, where log P would underflow)."""
    return F.binary_cross_entropy_with_logits(return1 - return2, labels)


@torch.no_grad()
def score_responses(model: nn.Module, tokenizer, prompts: list[str], responses: list[str],
                    batch_size: int) -> list[float]:
    """r(x, y) of each (prompt, response) as the reward model sees it (prompt, response, eos), `batch_size` at a time."""
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    scores: list[float] = []
    for i in range(0, len(prompts), batch_size):
        input_ids, attention_mask, _ = encode_pairs(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size])
        scores += reward_scores(model, input_ids.to(device), attention_mask.to(device)).tolist()
    model.train(was_training)
    return scores


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


def reward_model_args(args: Args) -> dict:
    """What rebuilds the reward model's architecture (a checkpoint's model_args)."""
    if args.model_name_or_path is None:
        return {"model_name_or_path": None, "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head}
    return {"model_name_or_path": os.path.abspath(args.model_name_or_path)}


def load_model(path: str):
    """(reward model, tokenizer) from a Hugging Face folder (what --save-model writes) or a checkpoint of this file."""
    if os.path.isdir(path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                                   dtype=torch.float32)
        return model, tokenizer
    ckpt = load_lm_checkpoint(path, "reward_model")
    policy, tokenizer = make_model(ckpt["model_args"])
    model = reward_model_from(policy, tokenizer)
    model.load_state_dict(ckpt["model"])
    return model, tokenizer


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (optimiser step, the held-out pairwise accuracy); returning True ends
    # training (the run then returns as usual).
    check_args(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no bars on stderr while a folder loads or saves
    transformers_logging.set_verbosity_error()  # from_config's note that the new `score` head is untrained is the point

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    model_args = reward_model_args(args)
    policy, tokenizer = make_model(model_args)
    heldout = heldout_pairs(args.task, args.num_digits, args.eval_prompts)
    eval_prompts, exclude = [p for p, _ in heldout], {p for p, _ in heldout}
    n = args.num_digits  # the longest prompt and completion of the task, then eos
    longest_prompt = {"addition": f"{'9' * n}+{'9' * n}=", "sort": f"sort {'9' * n}=", "avoid-digit": f"sum {9 * n} no 9="}
    longest = len(format_prompts(tokenizer, [longest_prompt[args.task]])[0])
    limit = getattr(policy.config, "n_positions", None) or getattr(policy.config, "max_position_embeddings", None)
    if limit is not None and longest + max(args.max_new_tokens, n + 2) > limit:
        fail(f"a prompt ({longest} tokens) and --max-new-tokens {args.max_new_tokens} do not fit the model's {limit} "
             "positions; use fewer --num-digits or --max-new-tokens")
    policy.to(device)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_lm_checkpoint(args.resume, "reward_model")
        check_lm_resume(resume_ckpt, args, model_args)

    start_time = time.time()
    if resume_ckpt is None:
        # The policy, then its own samples, scored: the pairs of the whole run (a resumed run reads them back).
        if args.model_name_or_path is None and args.sft_updates > 0:
            train_sft(policy, tokenizer, args.task, args.num_digits, args.sft_updates, args.batch_size, sampler,
                      exclude, device)
        policy_eval = evaluate_lm(policy, tokenizer, args.task, eval_prompts, args.max_new_tokens, args.batch_size)
        policy_match, policy_compliance = policy_eval["exact_match"], policy_eval["rule_compliance"]
        prompts, references = sample_pairs(args.task, sampler, args.num_digits, args.train_prompts, exclude)
        samples = sample_responses(policy, tokenizer, prompts, args.samples_per_prompt, args.temperature,
                                   args.max_new_tokens, args.batch_size)
        train_pairs = build_preference_pairs(args.task, prompts, references, samples)
        heldout_samples = sample_responses(policy, tokenizer, eval_prompts, args.samples_per_prompt, args.temperature,
                                           args.max_new_tokens, args.batch_size)
        eval_pairs = build_preference_pairs(args.task, eval_prompts, [c for _, c in heldout], heldout_samples)
        right_rate = float(np.mean([all(SCORE[args.task](p, r)) for p, rs in zip(prompts, samples, strict=True)
                                    for r in rs]))
    else:
        train_pairs = [tuple(p) for p in resume_ckpt["train_pairs"]]
        eval_pairs = [tuple(p) for p in resume_ckpt["eval_pairs"]]
        policy_match, policy_compliance, right_rate = (resume_ckpt["policy_match"], resume_ckpt["policy_compliance"],
                                                       resume_ckpt["sample_right_rate"])
    if not train_pairs or not eval_pairs:
        fail(f"the policy's samples gave {len(train_pairs)} training and {len(eval_pairs)} held-out (right, wrong) "
             "pairs; raise --temperature, --samples-per-prompt or --train-prompts")
    pair_seconds = time.time() - start_time

    model = reward_model_from(policy, tokenizer).to(device).train()
    del policy
    n_params = sum(p.numel() for p in model.parameters())
    # fused=True: AdamW's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=True)

    # The training state a checkpoint holds; resuming puts it back. global_step counts optimiser steps; the learning
    # rate is a function of (global_step, schedule_origin), so these two are the schedule's whole state.
    global_step, origin = 0, (0, 0.0)
    best_accuracy, last_accuracy, last_right, last_wrong = -math.inf, math.nan, math.nan, math.nan
    if resume_ckpt is not None:
        ckpt = resume_ckpt
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        best_accuracy, last_accuracy = ckpt["best_accuracy"], ckpt["last_accuracy"]
        set_rng_state(ckpt["rng"], generators)
        if ckpt["args"]["total_updates"] != args.total_updates:  # stretch what is left of the schedule
            origin = (global_step, progress(global_step, ckpt["args"]["total_updates"], origin))
            print(f"--total-updates changed from {ckpt['args']['total_updates']:,} to {args.total_updates:,}: the "
                  "learning-rate schedule is stretched over the remaining steps", flush=True)
        print(f"resumed from {args.resume} at optimiser step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "reward_model", "task": args.task, "model_args": model_args, "model": model.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "schedule_origin": origin, "best_accuracy": best_accuracy, "last_accuracy": last_accuracy,
                "train_pairs": train_pairs, "eval_pairs": eval_pairs, "policy_match": policy_match,
                "policy_compliance": policy_compliance, "sample_right_rate": right_rate, "rng": rng_state(generators)}

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
    if resume_ckpt is None:  # the policy's own held-out scores, once: this file does not change the policy
        writer.add_scalar("eval/exact_match", policy_match, 0)
        if args.task in RULE_TASKS:
            writer.add_scalar("eval/rule_compliance", policy_compliance, 0)
    print(f"{args.task} with {args.num_digits} digits: reward model on {args.model_name_or_path or 'GPT-2 built in code'}"
          f" ({n_params:,} parameters); policy: greedy exact match {policy_match:.3f} on the held-out prompts, "
          f"{right_rate:.3f} of its samples right; {len(train_pairs):,} training and {len(eval_pairs):,} held-out "
          f"pairs ({pair_seconds:.1f}s), e.g. {eval_pairs[0]}", flush=True)

    def run_evaluation() -> None:
        """Score the held-out pairs: pairwise accuracy, and the mean reward of the distinct right and wrong responses
        (its time is left out of the updates per second)."""
        nonlocal best_accuracy, last_accuracy, last_right, last_wrong, eval_seconds
        eval_start = time.time()
        right = list(dict.fromkeys((p, c) for p, c, _ in eval_pairs))
        wrong = list(dict.fromkeys((p, r) for p, _, r in eval_pairs))
        both = right + wrong
        values = score_responses(model, tokenizer, [p for p, _ in both], [y for _, y in both], args.batch_size)
        reward = dict(zip(both, values, strict=True))
        last_accuracy = float(np.mean([reward[(p, c)] > reward[(p, r)] for p, c, r in eval_pairs]))
        last_right, last_wrong = float(np.mean(values[:len(right)])), float(np.mean(values[len(right):]))
        best_accuracy = max(best_accuracy, last_accuracy)
        eval_seconds += time.time() - eval_start
        writer.add_scalar("eval/pairwise_accuracy", last_accuracy, global_step)
        writer.add_scalar("eval/reward_right", last_right, global_step)
        writer.add_scalar("eval/reward_wrong", last_wrong, global_step)
        print(f"eval at update {global_step:>7,}: pairwise accuracy {last_accuracy:.3f} (best {best_accuracy:.3f})  "
              f"reward right {last_right:+.3f} wrong {last_wrong:+.3f}", flush=True)

    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()

    while global_step < args.total_updates:
        batch = [train_pairs[i] for i in sampler.integers(0, len(train_pairs), size=args.batch_size)]
        prompts = [p for p, _, _ in batch]
        input_ids, attention_mask, _ = encode_pairs(tokenizer, prompts + prompts,
                                                    [c for _, c, _ in batch] + [r for _, _, r in batch])
        lr = args.learning_rate * lr_multiplier(progress(global_step, args.total_updates, origin), args.warmup_ratio,
                                                args.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rewards = reward_scores(model, input_ids.to(device), attention_mask.to(device))
        chosen, rejected = rewards[:args.batch_size], rewards[args.batch_size:]
        loss = bradley_terry_loss(chosen, rejected, torch.ones_like(chosen))  # y = 1: chosen preferred
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
            accuracy = (chosen > rejected).float().mean().item()
            writer.add_scalar("charts/SPS", ups, global_step)  # optimiser steps per second, evaluations left out
            writer.add_scalar("charts/learning_rate", lr, global_step)
            writer.add_scalar("losses/reward_loss", loss.item(), global_step)
            writer.add_scalar("losses/reward_accuracy", accuracy, global_step)
            writer.add_scalar("losses/grad_norm", grad_norm.item(), global_step)
            print(f"update {global_step:>7,}  updates/s {ups:6.1f}  loss {loss.item():.4f}  batch accuracy "
                  f"{accuracy:.3f}  lr {lr:.2e}", flush=True)
        if global_step % args.eval_every == 0 or global_step == args.total_updates:
            run_evaluation()
            if report is not None and report(global_step, last_accuracy):
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
    if args.save_model:  # a Hugging Face folder: rlhf_ppo.py loads it (AutoModelForSequenceClassification)
        model_path = f"{run_dir}/{args.exp_name}"
        model.save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)
        print(f"reward model and tokenizer saved to {model_path}/")
    print(f"last pairwise accuracy {last_accuracy:.3f}, best {best_accuracy:.3f} on {len(eval_pairs)} held-out pairs "
          f"(reward right {last_right:+.3f}, wrong {last_wrong:+.3f}); {global_step - start_step:,} optimiser steps in "
          f"{train_time:.1f}s")
    close_logs(writer, args.track)
    return {
        "eval_pairwise_accuracy": last_accuracy,
        "eval_pairwise_accuracy_best": best_accuracy if best_accuracy > -math.inf else math.nan,
        "eval_reward_right": last_right,
        "eval_reward_wrong": last_wrong,
        # the policy's greedy held-out scores (the lm kind's keys): this file trains a reward model, not the policy
        "eval_exact_match": policy_match,
        "eval_exact_match_best": policy_match,
        "eval_rule_compliance": policy_compliance,
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
