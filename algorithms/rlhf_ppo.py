"""RLHF with PPO: a causal language model optimised against a learned reward model, the third stage of alignment.

InstructGPT's reinforcement-learning step (Ouyang et al. (2022), "Training language models to follow instructions
with human feedback", https://arxiv.org/abs/2203.02155, section 3.5; Ziegler et al. (2019), "Fine-Tuning Language
Models from Human Preferences", https://arxiv.org/abs/1909.08593; Stiennon et al. (2020),
https://arxiv.org/abs/2009.01325): the SFT policy samples a completion for each prompt, the reward model of
reward_model.py scores it, a per-token penalty keeps the policy near the frozen SFT model (the reference), and PPO
(Schulman et al. (2017), https://arxiv.org/abs/1707.06347) maximises that reward with a value model and GAE over the
completion's tokens. What a user of TRL's former PPOTrainer or of OpenRLHF expects, in one file.

Run:
    python algorithms/sft.py --total-updates 2000 --save-model                  # the starting policy
    python algorithms/reward_model.py --model-name-or-path runs/<sft run>/sft --save-model
    python algorithms/rlhf_ppo.py --model-name-or-path runs/<sft run>/sft \
        --reward-model runs/<reward model run>/reward_model
    python algorithms/rlhf_ppo.py            # no folders: a quick SFT and a quick reward model in this process first
    python algorithms/rlhf_ppo.py --adaptive-kl --kl-target 0.5 --kl-horizon 200   # Ziegler et al.'s KL controller
    python algorithms/rlhf_ppo.py --help

The models (sft.py's tokenizer, model, tasks and scorers, reward_model.py's reward model, copied):
- policy pi_theta: --model-name-or-path, any local Hugging Face causal LM folder (sft.py's --save-model output);
  without one, the small GPT-2 built in code is first fine-tuned here for --sft-updates steps (sft.py's train_sft).
- reference pi_ref: a frozen copy of the starting policy.
- reward model r(x, y): --reward-model, the folder reward_model.py's --save-model writes, loaded and scored with
  reward_model.py's own code (reward_scores: a scalar head on the last real token of prompt + response + eos).
  Without one, a quick reward model is trained here first, reward_model.py's way (pairs of the starting policy's
  own right and wrong samples at temperature 1, labelled by the task's scorer; the Bradley-Terry loss for
  --rm-updates steps; --rm-updates 0 keeps its head untrained, which the smoke tests use). The score is used as it
  is: not whitened or clipped (the value model absorbs its offset, and the advantages are whitened).
- value model V_phi: a separate model of the reward model's architecture (a scalar head on every position's hidden
  state), initialised from the reward model as InstructGPT does (--value-init reward-model: its head already reads a
  score off a whole response) or from the policy's own transformer with a fresh head (--value-init policy). A
  separate model rather than a head on the policy's trunk: the value loss then cannot pull the policy's features,
  TRL's later PPOTrainer and OpenRLHF do the same, and for the in-code model the second copy costs little. The
  value's parameters share the policy's AdamW (with their own --value-learning-rate) and its gradient clipping
  (loss = policy loss + vf_coef * value loss).
- The task's scorer (score_<task>) is never used in training: the exact match of the samples is logged beside the
  reward model's score (charts/sample_exact_match against charts/reward_score), the ground truth that exposes reward
  hacking (the score rising while the answers get worse).

Each PPO iteration, as written in the code below:
    rollout           --batch-size fresh prompts (never a held-out one), left-padded; K = --samples-per-prompt
                      completions each (1 by default), sampled from pi_theta at temperature 1 (top-k off), cut after
                      the first eos (or at --max-new-tokens); mask m_t = 1 on the completion's tokens, eos included
    log-probs         logp_t = log pi_theta(y_t | x, y_<t), logp_ref_t the same under pi_ref (token_logprobs: the
                      logits at position t score the token at t + 1)
    values            V_t = V_phi(x, y_<t): the value head on the hidden state that predicts y_t
    rewards           r_t = -beta * (logp_t - logp_ref_t) at every completion token, plus the reward model's score
                      r(x, y) at the last one, nothing after it (per_token_rewards; Ziegler et al. eq. 2, the KL
                      penalty as a per-token reward); KL = sum_t m_t (logp_t - logp_ref_t), the non-score reward
                      = -beta * KL. With --group-baseline the score is first replaced by
                      r_i - (1 / (K - 1)) sum_{j != i} r_j over the prompt's K completions (RLOO's leave-one-out
                      baseline, Ahmadian et al. (2024), https://arxiv.org/abs/2402.14740; leave_one_out_scores): the
                      per-prompt contrast the reward model ranks best, beside the value model's baseline
    KL controller     with --adaptive-kl (Ziegler et al. section 2.2): e = clip(KL / KL_target - 1, -0.2, 0.2),
                      beta <- beta * (1 + e * B / horizon), KL the batch mean, B the rollout's completions
    GAE               delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1}, V after the last
                      token = 0 (the completion is the episode: it ends at eos or at the token limit); gamma = 1,
                      lambda = 0.95; returns R_t = A_t + V_t (ppo.py's compute_gae over the tokens: token_advantages)
    whitening         A <- (A - mean_m(A)) / (std_m(A) + 1e-8) over the batch's completion tokens (masked_whiten)
    PPO epochs        --ppo-epochs passes over --num-minibatches minibatches of completions, one AdamW step each:
                      rho_t = exp(logp_new_t - logp_t)
                      L_pi = mean_m max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))      (clipped_policy_loss)
                      V_clip = V_t + clip(V_new_t - V_t, -eps_v, eps_v)
                      L_V  = 0.5 mean_m max((V_new_t - R_t)^2, (V_clip - R_t)^2)            (clipped_value_loss)
                      loss = L_pi + vf_coef * L_V, the gradient's global norm clipped to --max-grad-norm
                      --ptx-coef gamma > 0 (InstructGPT's PPO-ptx, Ouyang et al. eq. 2): loss += gamma * L_ptx, the
                      mean NLL of the answer tokens of as many fresh demonstrations (task prompts and their true
                      answers, sft.py's loss) as the minibatch has completions; InstructGPT mixes in pretraining
                      text, which the in-code model has none of, so the task's demonstrations stand in for it
    logged            clipfrac (|rho - 1| > eps), value_clipfrac, approx_kl = mean_m((rho - 1) - log rho)
mean_m is the mean over the completion tokens of the batch (mask m). Dropout stays off (the models are in eval mode
throughout), so that the ratio compares one function at two parameter values.

A language-model file (sft.py's kind):
- Progress is counted in optimiser steps: one iteration (one rollout) makes --ppo-epochs x --num-minibatches of
  them, and --total-updates, --eval-every, --log-every and --checkpoint-every must be multiples of that (they are read
  at the iteration's end, where a checkpoint needs no rollout). Each evaluation greedily decodes the held-out prompts
  (evaluate_lm: eval/exact_match, and eval/rule_compliance for a task with a rule; report() gets the exact match) and
  logs the reward model's mean score of those greedy responses (eval/reward_score); step 0 is the starting policy.
- --save-model writes the policy as a Hugging Face folder runs/{run}/{exp_name}/ (config.json, model.safetensors,
  tokenizer files); load_model(path) reads that folder or a checkpoint.
- Long runs, sft.py's form: checkpoints hold the policy, the value model, AdamW's state, beta, the schedule and every
  random generator (and the reference and the reward model where they were built in this process), so --resume
  continues bit for bit; Ctrl-C or SIGTERM writes one at the end of the iteration and exits 130 / 143 with the
  resume command; a non-finite loss or gradient norm stops the run (exit 3) keeping the last finite state.
Tested: from sft.py's 2000-step model of 3-digit addition, a deliberately weak reward model is hacked (its score of
the greedy held-out responses rises while their exact match falls); on 10-digit sorting, from a 100-step SFT model and
its reward model, the defaults raise the greedy held-out exact match with the KL to the reference within a stated
bound (tests/test_rlhf_ppo.py, slow).
Results: benchmark_results/rlhf_ppo.md
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
    exp_name: str = "rlhf_ppo"
    """the name of this experiment (used in the run directory's name and the saved model's folder)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (sampling, minibatch order, new heads) and the prompt sampler"""
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
    """a local Hugging Face causal LM folder (sft.py's --save-model output): the starting policy and the reference;
    unset: the GPT-2 built in code, first fine-tuned here for --sft-updates steps"""
    reward_model: str | None = None
    """the reward model: a folder written by reward_model.py --save-model; unset: one trained here first for
    --rm-updates steps on the starting policy's own samples"""
    task: str = "addition"
    """the task the prompts and the scorer come from: addition, sort or avoid-digit"""
    num_digits: int = 3
    """digits of each operand (addition), of the string to sort (sort), of the demonstrations (avoid-digit)"""
    sft_updates: int = 2000
    """without --model-name-or-path: SFT optimiser steps (sft.py's defaults otherwise) before PPO (0: untrained)"""
    rm_updates: int = 1000
    """without --reward-model: Bradley-Terry optimiser steps of the reward model trained here (0: its head untrained)"""
    rm_prompts: int = 5000
    """without --reward-model: prompts whose 4 samples each make the reward model's pairs"""
    total_updates: int = 800
    """optimiser steps of PPO (a multiple of --ppo-epochs x --num-minibatches)"""
    batch_size: int = 64
    """prompts per rollout, --samples-per-prompt completions each (also the batch of the stages before PPO)"""
    samples_per_prompt: int = 1
    """completions sampled per prompt in a rollout (1: InstructGPT's; 2 or more allow --group-baseline)"""
    group_baseline: bool = False
    """if toggled (with --samples-per-prompt 2 or more), each completion's reward-model score less the mean score of
    its prompt's other completions (RLOO's leave-one-out baseline) is the score that enters the rewards"""
    ppo_epochs: int = 4
    """passes over each rollout (TRL's num_ppo_epochs)"""
    num_minibatches: int = 1
    """minibatches per pass, one optimiser step each"""
    learning_rate: float = 1e-4
    """the peak AdamW learning rate of the policy"""
    value_learning_rate: float = 1e-3
    """the peak AdamW learning rate of the value model (higher than the policy's, as OpenRLHF's: the value must learn
    the reward model's dependence on the prompt quickly, or the advantages are mostly noise)"""
    lr_schedule: str = "linear"
    """the decay after warm-up: cosine, linear (TRL's PPO default) or constant"""
    warmup_ratio: float = 0.0
    """the fraction of --total-updates over which the learning rate rises linearly from 0"""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay"""
    max_grad_norm: float = 1.0
    """clip the global norm of the policy's and the value model's gradient to this (inf: no clipping)"""
    kl_coef: float = 0.05
    """beta: the weight of the per-token KL penalty (TRL's default; InstructGPT used 0.02); the controller's start
    with --adaptive-kl"""
    adaptive_kl: bool = False
    """if toggled, adapt beta toward --kl-target (Ziegler et al.'s proportional controller)"""
    kl_target: float = 1.0
    """with --adaptive-kl: the target KL to the reference, summed over a completion's tokens (nats)"""
    kl_horizon: int = 10000
    """with --adaptive-kl: the controller's horizon in completions (Ziegler et al.'s 10000)"""
    gamma: float = 1.0
    """the discount over a completion's tokens (1: InstructGPT's and TRL's)"""
    gae_lambda: float = 0.95
    """the lambda of GAE over the completion's tokens"""
    clip_coef: float = 0.2
    """the policy ratio's clipping epsilon"""
    clip_value: float = 0.2
    """the value update's clipping range around the rollout's values (TRL's cliprange_value)"""
    vf_coef: float = 0.1
    """the value loss's weight in the joint loss (TRL's)"""
    ptx_coef: float = 0.0
    """gamma of InstructGPT's PPO-ptx: each optimiser step adds this times the NLL of a batch of the task's
    demonstrations (fresh prompts and their true answers, sft.py's loss) to the loss (OpenRLHF's ptx_coef); 0: off"""
    value_init: str = "reward-model"
    """the value model's start: reward-model (InstructGPT's: the reward model's weights) or policy (the starting
    policy's transformer, a fresh head)"""
    n_layer: int = 2
    """transformer blocks of the in-code GPT-2"""
    n_embd: int = 128
    """width of the in-code GPT-2"""
    n_head: int = 4
    """attention heads of the in-code GPT-2 (must divide --n-embd)"""
    eval_every: int = 100
    """evaluate every this many optimiser steps (a multiple of --ppo-epochs x --num-minibatches), and after the last"""
    eval_prompts: int = 200
    """held-out prompts for greedy evaluation, never trained on (at most half of the task's distinct prompts)"""
    max_new_tokens: int = 16
    """the longest completion, in tokens"""
    log_every: int = 20
    """write the rollout and loss statistics (their means since the last write) and print a progress line every this
    many optimiser steps (a multiple of --ppo-epochs x --num-minibatches)"""


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


RM_LEARNING_RATE = 3e-4  # reward_model.py's default, for the reward model trained in this process
RM_SAMPLES_PER_PROMPT = 4  # reward_model.py's default
VALUE_INITS = ("reward-model", "policy")


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_prompts", "log_every", "torch_threads",
                 "max_new_tokens", "n_layer", "n_embd", "n_head", "rm_prompts", "ppo_epochs", "num_minibatches",
                 "kl_horizon", "samples_per_prompt"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("sft_updates", "rm_updates"):
        if not getattr(args, name) >= 0:
            fail(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
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
    if args.value_init not in VALUE_INITS:
        fail(f"--value-init {args.value_init} is unknown; choose one of {', '.join(VALUE_INITS)}")
    if args.group_baseline and args.samples_per_prompt < 2:
        fail(f"--group-baseline needs --samples-per-prompt 2 or more (a group), got {args.samples_per_prompt}")
    if args.num_minibatches > args.batch_size:
        fail(f"--num-minibatches {args.num_minibatches} is more than the {args.batch_size} prompts of a rollout")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    per_rollout = args.ppo_epochs * args.num_minibatches
    for name in ("total_updates", "eval_every", "log_every", "checkpoint_every"):
        if getattr(args, name) % per_rollout:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} must be a multiple of --ppo-epochs x "
                 f"--num-minibatches = {per_rollout}, the optimiser steps of one rollout")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    for name in ("learning_rate", "value_learning_rate", "kl_target", "clip_coef", "clip_value"):
        if not 0 < getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be positive and finite, got {getattr(args, name)}")
    for name in ("kl_coef", "vf_coef", "weight_decay", "ptx_coef"):
        if not 0 <= getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be non-negative and finite, got {getattr(args, name)}")
    if not 0 < args.gamma <= 1:
        fail(f"--gamma must be in (0, 1], got {args.gamma}")
    if not 0 <= args.gae_lambda <= 1:
        fail(f"--gae-lambda must be in [0, 1], got {args.gae_lambda}")
    if not 0 <= args.warmup_ratio < 1:
        fail(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if not args.max_grad_norm > 0:  # inf is accepted: no clipping
        fail(f"--max-grad-norm must be positive (inf: no clipping), got {args.max_grad_norm}")
    if args.n_embd % args.n_head:
        fail(f"--n-head {args.n_head} must divide --n-embd {args.n_embd}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    if args.model_name_or_path is not None and not os.path.isfile(os.path.join(args.model_name_or_path, "config.json")):
        fail(f"--model-name-or-path {args.model_name_or_path}: no Hugging Face model folder there (no config.json); "
             "give a local folder written by save_pretrained (nothing is downloaded)")
    if args.reward_model is not None and not os.path.isfile(os.path.join(args.reward_model, "config.json")):
        fail(f"--reward-model {args.reward_model}: no Hugging Face model folder there (no config.json); give the "
             "folder reward_model.py --save-model writes")

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
def score_with_reward_model(model: nn.Module, tokenizer, prompts: list[str], responses: list[str],
                    batch_size: int) -> list[float]:
    """r(x, y) of each (prompt, response) as the reward model sees it (prompt, response, eos), `batch_size` at a time
    (reward_model.py's score_responses, renamed: the test harness reads a file with score_responses as a reward
    model)."""
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



def load_reward_model(path: str):
    """(reward model, tokenizer) from the Hugging Face folder reward_model.py's --save-model writes
    (reward_model.py's load_model, its folder branch); anything that does not load is bad input (one line, exit 2)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        architectures = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False).architectures
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                                   dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - any folder that does not load is the same bad input
        fail(f"--reward-model {path} does not load as a sequence-classification model with its tokenizer: "
             f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
    # a causal LM's folder would load too, with a fresh random head: only a sequence classifier is a reward model
    sequence_classifier = any(name.endswith("ForSequenceClassification") for name in architectures or [])
    if not sequence_classifier or not isinstance(getattr(model, "score", None), nn.Linear) or model.score.out_features != 1:
        fail(f"--reward-model {path} is not a reward model (a `score` head with one output); give the folder "
             "reward_model.py --save-model writes")
    return model, tokenizer


def train_reward_model(policy: nn.Module, tokenizer, task: str, num_digits: int, num_prompts: int, updates: int,
                       batch_size: int, max_new_tokens: int, rng: np.random.Generator, exclude: set[str],
                       device: torch.device) -> nn.Module:
    """reward_model.py's training at its defaults (pairs of the policy's own right and wrong samples at temperature 1,
    4 per prompt; the Bradley-Terry loss, AdamW at 3e-4, 5% warm-up then cosine decay, gradient norm clipped to 1)
    without its logging, evaluation and checkpoints: the reward model when no --reward-model folder is given."""
    model = reward_model_from(policy, tokenizer).to(device)
    if updates == 0:
        return model
    prompts, references = sample_pairs(task, rng, num_digits, num_prompts, exclude)
    samples = sample_responses(policy, tokenizer, prompts, RM_SAMPLES_PER_PROMPT, 1.0, max_new_tokens, batch_size)
    pairs = build_preference_pairs(task, prompts, references, samples)
    if not pairs:
        fail(f"the policy's samples of {num_prompts} prompts gave no (right, wrong) pair for the reward model; raise "
             "--rm-prompts or --sft-updates, or give --reward-model")
    optimizer = torch.optim.AdamW(model.parameters(), lr=RM_LEARNING_RATE, weight_decay=0.0, fused=True)
    model.train()
    for step in range(updates):
        batch = [pairs[i] for i in rng.integers(0, len(pairs), size=batch_size)]
        batch_prompts = [p for p, _, _ in batch]
        input_ids, attention_mask, _ = encode_pairs(tokenizer, batch_prompts + batch_prompts,
                                                    [c for _, c, _ in batch] + [r for _, _, r in batch])
        for group in optimizer.param_groups:
            group["lr"] = RM_LEARNING_RATE * lr_multiplier(step / updates, 0.05, "cosine")
        rewards = reward_scores(model, input_ids.to(device), attention_mask.to(device))
        loss = bradley_terry_loss(rewards[:batch_size], rewards[batch_size:], torch.ones(batch_size, device=device))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        if (step + 1) % 500 == 0 or step + 1 == updates:
            print(f"reward model update {step + 1:>6,}  loss {loss.item():.4f}  ({len(pairs):,} pairs)", flush=True)
    return model.eval()


# ---- RLHF with PPO over tokens: the math the tests check ----


@torch.no_grad()
def sample_completions(model: nn.Module, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       max_new_tokens: int) -> torch.Tensor:
    """One completion per left-padded prompt, sampled from the model at temperature 1 with top-k and top-p off (the
    policy's own distribution, which the PPO ratio assumes), from torch's generator: the new token ids [B, R] (rows
    that end early are filled with the pad token)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return out[:, input_ids.shape[1]:]


def completion_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first eos (all of them where no eos came), 0 after."""
    is_eos = (response_ids == eos_token_id).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


def response_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_width: int) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of each completion token [B, R] (0 where masked): prompt (left-padded, prompt_width
    columns) and completion (right-padded) in one forward pass, through token_logprobs."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt_width] = -100
    _, per_token, _ = token_logprobs(forward_logits(model, input_ids, attention_mask), labels)
    return per_token[:, prompt_width - 1:]


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prompt_width: int) -> torch.Tensor:
    """V(x, y_<t) for each completion token [B, R]: the scalar head on the hidden state at the position whose logits
    predict y_t (the prompt's last token for y_1), positions counted over real tokens only."""
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state
    return model.score(hidden[:, prompt_width - 1:-1]).squeeze(-1).float()


def per_token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -kl_coef * (logp_t - logp_ref_t) on every completion token, plus the reward model's score on the last one,
    0 after it: (rewards [B, R], the KL estimate per completion [B], summed over its tokens)."""
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long() - 1
    rewards[torch.arange(len(rewards), device=rewards.device), last] += scores
    return rewards, kl.sum(dim=1)


def leave_one_out_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO's baseline (Ahmadian et al. (2024), https://arxiv.org/abs/2402.14740): each score
    less the mean of the other scores of its prompt, scores [B * k] holding each prompt's k completions in a row."""
    # r_i - (sum_j r_j - r_i) / (k - 1) = k / (k - 1) * (r_i - the group's mean)
    return (scores - scores.view(-1, k).mean(dim=1).repeat_interleave(k)) * k / (k - 1)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminations: torch.Tensor,
    truncations: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, N] rollout; returns (advantages, returns).

    next_values[t] is the value of the observation that followed step t: V(s_{t+1}) inside an episode,
    V(final observation) where the episode was truncated at t (anything where it terminated: it is
    multiplied by 0). The recursion stops at every episode end, terminated or truncated.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    not_term = 1.0 - terminations.to(rewards.dtype)
    not_done = 1.0 - torch.maximum(terminations, truncations).to(rewards.dtype)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * not_term[t] - values[t]
        last = delta + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


def token_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                     gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each completion's tokens [B, R] with ppo.py's compute_gae (tokens as time, completions as
    environments): each completion is an episode that terminates at its last token; (advantages, returns), 0 where
    masked."""
    mask = mask.to(rewards.dtype)
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    ends = torch.zeros_like(rewards)
    ends[torch.arange(len(ends), device=ends.device), mask.sum(dim=1).long() - 1] = 1.0
    advantages, returns = compute_gae((rewards * mask).T, values.T, next_values.T, ends.T, torch.zeros_like(ends.T),
                                      gamma, gae_lambda)
    return advantages.T * mask, returns.T * mask


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) over the masked entries only (std with Bessel's correction, as torch.std), 0 where
    masked: padding after a short completion neither counts nor changes."""
    mask = mask.to(values.dtype)
    n = mask.sum()
    mean = (values * mask).sum() / n
    var = ((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    return (values - mean) / (var.sqrt() + 1e-8) * mask


def clipped_policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """PPO's clipped surrogate, per token: mean over the completion tokens of max(-A rho, -A clip(rho, 1 -+ eps))."""
    ratio = (new_logprobs - old_logprobs).exp()
    losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef))
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum()


def clipped_value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_value: float) -> torch.Tensor:
    """0.5 * mean over the completion tokens of max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -c,
    c): the value may not gain by moving more than c from the rollout's values in one update."""
    clipped = old_values + torch.clamp(new_values - old_values, -clip_value, clip_value)
    losses = torch.max((new_values - returns) ** 2, (clipped - returns) ** 2)
    mask = mask.to(losses.dtype)
    return 0.5 * (losses * mask).sum() / mask.sum()


@torch.no_grad()
def approx_kl(logratio: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi) by the low-variance estimator E[(rho - 1) - log rho] (Schulman, "Approximating KL")."""
    return (logratio.exp() - 1 - logratio).mean()


def adaptive_kl_coef(kl_coef: float, kl: float, kl_target: float, num_completions: int, horizon: int) -> float:
    """Ziegler et al.'s proportional controller: beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), n the
    completions this KL was measured on."""
    error = min(max(kl / kl_target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * num_completions / horizon)


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



def policy_model_args(args: Args) -> dict:
    """What rebuilds the policy's architecture (a checkpoint's model_args)."""
    if args.model_name_or_path is None:
        return {"model_name_or_path": None, "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head}
    return {"model_name_or_path": os.path.abspath(args.model_name_or_path)}


def load_model(path: str):
    """(policy, tokenizer) from a Hugging Face folder (what --save-model writes) or a checkpoint of this file."""
    if os.path.isdir(path):
        return load_pretrained(path)
    ckpt = load_lm_checkpoint(path, "rlhf_ppo")
    model, tokenizer = make_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model, tokenizer


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (optimiser step, the held-out exact match); returning True ends
    # training (the run then returns as usual).
    check_args(args)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no bars on stderr while a folder loads or saves
    transformers_logging.set_verbosity_error()  # from_config's note that a new `score` head is untrained is the point

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    model_args = policy_model_args(args)
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
    if args.reward_model is not None:
        reward_model, rm_tokenizer = load_reward_model(args.reward_model)
        if args.value_init == "reward-model" and rm_tokenizer.get_vocab() != tokenizer.get_vocab():
            fail(f"--reward-model {args.reward_model} has another tokenizer than the policy, so it cannot start the "
                 "value model, whose values are per policy token; use --value-init policy")
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_lm_checkpoint(args.resume, "rlhf_ppo")
        check_lm_resume(resume_ckpt, args, model_args)
        for name in ("reward_model", "value_init"):
            if resume_ckpt["args"][name] != getattr(args, name):
                fail(f"--resume {args.resume} was trained with --{name.replace('_', '-')} {resume_ckpt['args'][name]}, "
                     f"not {getattr(args, name)}")
    policy.to(device).eval()  # eval mode throughout: no dropout, so that old and new log-probabilities compare

    start_time = time.time()
    if resume_ckpt is None and args.model_name_or_path is None and args.sft_updates > 0:
        train_sft(policy, tokenizer, args.task, args.num_digits, args.sft_updates, args.batch_size, sampler, exclude,
                  device)
        policy.eval()
    if args.reward_model is None:  # trained here (a resumed run reads it back)
        rm_tokenizer = tokenizer
        if resume_ckpt is None:
            reward_model = train_reward_model(policy, tokenizer, args.task, args.num_digits, args.rm_prompts,
                                              args.rm_updates, args.batch_size, args.max_new_tokens, sampler, exclude,
                                              device)
        else:
            reward_model = reward_model_from(policy, tokenizer)
            reward_model.load_state_dict(resume_ckpt["reward_model"])
    reward_model.to(device).eval().requires_grad_(False)
    reference = copy.deepcopy(policy).requires_grad_(False)  # pi_ref: the starting policy, frozen
    if resume_ckpt is not None and resume_ckpt["reference"] is not None:
        reference.load_state_dict(resume_ckpt["reference"])
    critic = copy.deepcopy(reward_model) if args.value_init == "reward-model" else reward_model_from(policy, tokenizer)
    critic.to(device).eval().requires_grad_(True)
    stage_seconds = time.time() - start_time
    n_params = sum(p.numel() for p in policy.parameters())
    # fused=True: AdamW's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    optimizer = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": args.learning_rate},
                                   {"params": list(critic.parameters()), "lr": args.value_learning_rate}],
                                  weight_decay=args.weight_decay, fused=True)
    peak_lrs = (args.learning_rate, args.value_learning_rate)

    # The training state a checkpoint holds; resuming puts it back. global_step counts optimiser steps; the learning
    # rate is a function of (global_step, schedule_origin); kl_coef moves with --adaptive-kl.
    global_step, origin, kl_coef = 0, (0, 0.0), args.kl_coef
    best_match, last_match, last_compliance, last_score = -math.inf, math.nan, math.nan, math.nan
    start_match, history = math.nan, []  # history: the rollout and loss statistics since the last write
    if resume_ckpt is not None:
        ckpt = resume_ckpt
        policy.load_state_dict(ckpt["model"])
        critic.load_state_dict(ckpt["critic"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin, kl_coef = ckpt["global_step"], tuple(ckpt["schedule_origin"]), ckpt["kl_coef"]
        best_match, last_match, last_compliance = ckpt["best_match"], ckpt["last_match"], ckpt["last_compliance"]
        last_score, start_match, history = ckpt["last_score"], ckpt["start_match"], ckpt["history"]
        set_rng_state(ckpt["rng"], generators)
        if ckpt["args"]["total_updates"] != args.total_updates:  # stretch what is left of the schedule
            origin = (global_step, progress(global_step, ckpt["args"]["total_updates"], origin))
            print(f"--total-updates changed from {ckpt['args']['total_updates']:,} to {args.total_updates:,}: the "
                  "learning-rate schedule is stretched over the remaining steps", flush=True)
        print(f"resumed from {args.resume} at optimiser step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "rlhf_ppo", "task": args.task, "model_args": model_args, "model": policy.state_dict(),
                "critic": critic.state_dict(), "args": asdict(args), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "schedule_origin": origin, "kl_coef": kl_coef, "best_match": best_match,
                "last_match": last_match, "last_compliance": last_compliance, "last_score": last_score,
                "start_match": start_match, "history": history, "rng": rng_state(generators),
                # built in this process, so not to be found in a folder again
                "reference": reference.state_dict() if args.model_name_or_path is None else None,
                "reward_model": reward_model.state_dict() if args.reward_model is None else None}

    def fault(quantity: str) -> None:  # the models are still finite: the check runs before the step changes them
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
    print(f"{args.task} with {args.num_digits} digits: policy {args.model_name_or_path or 'GPT-2 built in code'} "
          f"({n_params:,} parameters), reward model {args.reward_model or 'trained here'}, value model from the "
          f"{args.value_init}; {len(eval_prompts)} held-out prompts ({stage_seconds:.1f}s before PPO)", flush=True)

    def run_evaluation() -> dict:
        """Greedy responses to the held-out prompts: exact match, rule compliance and the reward model's mean score
        (its time is left out of the updates per second)."""
        nonlocal best_match, last_match, last_compliance, last_score, eval_seconds
        eval_start = time.time()
        result = evaluate_lm(policy, tokenizer, args.task, eval_prompts, args.max_new_tokens, args.batch_size)
        last_score = float(np.mean(score_with_reward_model(reward_model, rm_tokenizer, eval_prompts, result["responses"],
                                                   args.batch_size)))
        eval_seconds += time.time() - eval_start
        last_match, last_compliance = result["exact_match"], result["rule_compliance"]
        writer.add_scalar("eval/exact_match", last_match, global_step)
        writer.add_scalar("eval/reward_score", last_score, global_step)
        rule = ""
        if args.task in RULE_TASKS:
            writer.add_scalar("eval/rule_compliance", last_compliance, global_step)
            rule = f"  rule kept {last_compliance:.3f}"
        print(f"eval at update {global_step:>7,}: exact match {last_match:.3f}{rule}  reward-model score "
              f"{last_score:+.3f}  e.g. {eval_prompts[0]!r} -> {result['responses'][0]!r}", flush=True)
        return result

    eval_seconds = 0.0
    if resume_ckpt is None:  # the starting policy, at step 0
        run_evaluation()
        start_match = last_match
    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    result: dict = {"responses": []}
    per_rollout = args.ppo_epochs * args.num_minibatches

    while global_step < args.total_updates:
        # Rollout: fresh prompts, --samples-per-prompt sampled completions each, scored by the reward model (and, for
        # the log only, by the task's scorer).
        prompts, _ = sample_pairs(args.task, sampler, args.num_digits, args.batch_size, exclude)
        prompts = [p for p in prompts for _ in range(args.samples_per_prompt)]  # a prompt's completions in a row
        prompt_ids, prompt_mask = (t.to(device) for t in encode_prompts(tokenizer, prompts))
        width = prompt_ids.shape[1]
        with torch.no_grad():
            response_ids = sample_completions(policy, tokenizer, prompt_ids, prompt_mask, args.max_new_tokens)
            mask = completion_mask(response_ids, tokenizer.eos_token_id)
            response_ids = response_ids.masked_fill(~mask, tokenizer.pad_token_id)
            responses = [tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(response_ids, mask, strict=True)]
            input_ids = torch.cat([prompt_ids, response_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
            logprobs = response_logprobs(policy, input_ids, attention_mask, width)
            ref_logprobs = response_logprobs(reference, input_ids, attention_mask, width)
            values = token_values(critic, input_ids, attention_mask, width)
            scores = torch.tensor(score_with_reward_model(reward_model, rm_tokenizer, prompts, responses, args.batch_size),
                                  device=device)
            rewards, kl = per_token_rewards(logprobs, ref_logprobs, leave_one_out_scores(scores, args.samples_per_prompt)
                                            if args.group_baseline else scores, mask, kl_coef)
            advantages, returns = token_advantages(rewards, values, mask, args.gamma, args.gae_lambda)
            advantages = masked_whiten(advantages, mask)
        right = float(np.mean([SCORE[args.task](p, r)[0] for p, r in zip(prompts, responses, strict=True)]))
        stats = {"charts/reward_score": scores.mean().item(), "charts/kl": kl.mean().item(),
                 "charts/non_score_reward": -kl_coef * kl.mean().item(), "charts/kl_coef": kl_coef,
                 "charts/completion_length": mask.sum(dim=1).float().mean().item(), "charts/sample_exact_match": right}
        if args.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, stats["charts/kl"], args.kl_target, len(prompts), args.kl_horizon)

        # PPO epochs over minibatches of completions, one optimiser step each.
        ppo_stats: dict[str, list[float]] = {}
        for _ in range(args.ppo_epochs):
            order = torch.randperm(len(prompts))
            for mb in order.tensor_split(args.num_minibatches):
                mb = mb.to(device)
                multiplier = lr_multiplier(progress(global_step, args.total_updates, origin), args.warmup_ratio,
                                           args.lr_schedule)
                for group, peak in zip(optimizer.param_groups, peak_lrs, strict=True):
                    group["lr"] = peak * multiplier
                lr = args.learning_rate * multiplier
                new_logprobs = response_logprobs(policy, input_ids[mb], attention_mask[mb], width)
                new_values = token_values(critic, input_ids[mb], attention_mask[mb], width)
                pg_loss = clipped_policy_loss(new_logprobs, logprobs[mb], advantages[mb], mask[mb], args.clip_coef)
                v_loss = clipped_value_loss(new_values, values[mb], returns[mb], mask[mb], args.clip_value)
                loss = pg_loss + args.vf_coef * v_loss
                ptx_loss = torch.zeros((), device=device)
                if args.ptx_coef > 0:  # PPO-ptx: the NLL of fresh demonstrations
                    demo_ids, demo_mask, demo_labels = (t.to(device) for t in encode_pairs(
                        tokenizer, *sample_pairs(args.task, sampler, args.num_digits, len(mb), exclude)))
                    ptx_loss = sft_loss(forward_logits(policy, demo_ids, demo_mask), demo_labels)
                    loss = loss + args.ptx_coef * ptx_loss
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_([*policy.parameters(), *critic.parameters()], args.max_grad_norm,
                                                     foreach=True)
                if args.nan_check:  # before the step, in one host sync: the models stay finite
                    loss_ok, grad_ok = torch.isfinite(torch.stack([loss.detach(), grad_norm])).tolist()
                    if not loss_ok or not grad_ok:
                        fault("loss" if not loss_ok else "gradient norm")
                optimizer.step()
                global_step += 1
                with torch.no_grad():
                    logratio = (new_logprobs - logprobs[mb])[mask[mb]]
                    moved = (new_values - values[mb]).abs()[mask[mb]]
                    for key, value in (("losses/policy_loss", pg_loss), ("losses/value_loss", v_loss),
                                       ("losses/ptx_loss", ptx_loss),
                                       ("losses/approx_kl", approx_kl(logratio)),
                                       ("losses/clipfrac", ((logratio.exp() - 1.0).abs() > args.clip_coef).float().mean()),
                                       ("losses/value_clipfrac", (moved > args.clip_value).float().mean()),
                                       ("losses/grad_norm", grad_norm)):
                        ppo_stats.setdefault(key, []).append(value.item())
        history.append({**stats, **{key: float(np.mean(v)) for key, v in ppo_stats.items()}, "charts/learning_rate": lr})

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = (global_step - start_step) / max(time.time() - start_time - eval_seconds, 1e-9)
            means = {key: float(np.mean([h[key] for h in history])) for key in history[0]}
            history = []
            writer.add_scalar("charts/SPS", ups, global_step)  # optimiser steps per second, evaluations left out
            for key, value in means.items():
                writer.add_scalar(key, value, global_step)
            print(f"update {global_step:>7,}  updates/s {ups:5.2f}  score {means['charts/reward_score']:+.3f}  KL "
                  f"{means['charts/kl']:.3f}  samples right {means['charts/sample_exact_match']:.3f}  length "
                  f"{means['charts/completion_length']:.2f}  clipfrac {means['losses/clipfrac']:.3f}  value loss "
                  f"{means['losses/value_loss']:.4f}  beta {kl_coef:.4f}", flush=True)
        if global_step % args.eval_every == 0 or global_step == args.total_updates:
            result = run_evaluation()
            best_match = max(best_match, last_match)
            if report is not None and report(global_step, last_match):
                break  # the caller asked to stop

        # After the iteration: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
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
    if args.save_model:  # a Hugging Face folder: the policy, loadable with --model-name-or-path
        model_path = f"{run_dir}/{args.exp_name}"
        policy.save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)
        print(f"policy and tokenizer saved to {model_path}/")
    print(f"exact match {start_match:.3f} at the start, last {last_match:.3f}, best {best_match:.3f} on "
          f"{len(eval_prompts)} held-out prompts (reward-model score {last_score:+.3f}); "
          f"{global_step - start_step:,} optimiser steps ({(global_step - start_step) // per_rollout:,} rollouts) in "
          f"{train_time:.1f}s")
    close_logs(writer, args.track)
    return {
        "eval_exact_match": last_match,
        "eval_exact_match_best": best_match if best_match > -math.inf else math.nan,
        "eval_rule_compliance": last_compliance,
        "eval_reward_score": last_score,
        "eval_responses": result["responses"],
        "start_exact_match": start_match,
        "kl_coef": kl_coef,
        "sps": (global_step - start_step) / max(train_time - eval_seconds, 1e-9),  # optimiser steps per second
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
