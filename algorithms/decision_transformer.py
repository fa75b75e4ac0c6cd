"""Decision Transformer (DT) from a Minari dataset: offline RL as return-conditioned sequence modelling.

Chen, Lu, Rajeswaran, Lee, Grover, Laskin, Abbeel, Srinivas, Mordatch (2021), "Decision Transformer: Reinforcement
Learning via Sequence Modeling", https://arxiv.org/abs/2106.01345. A causal transformer reads the trajectory as
tokens (return-to-go, state, action) per timestep and is trained, by supervised learning alone, to predict each
action from the tokens before it; at evaluation it is asked for a return (the target) and plays the actions it
predicts, the return-to-go decreasing by each reward received. No value function, no bootstrapping.

Run:
    python algorithms/decision_transformer.py --dataset-id onefile/hopper/medium-v0           # 50k gradient steps
    python algorithms/decision_transformer.py --dataset-id onefile/hopper/medium-replay-v0
    python algorithms/decision_transformer.py --dataset-id onefile/cartpole/expert-v0 --target-returns 500
    python algorithms/decision_transformer.py --help

Defaults are the paper's for Hopper (its appendix A and released gym code), which CORL's dt.py keeps as its own
defaults (Tarasov et al. (2022), "CORL: Research-oriented Deep Offline Reinforcement Learning Library",
https://arxiv.org/abs/2210.07105): context K = 20 timesteps (60 tokens), embedding 128, 3 layers, 1 head, dropout
0.1, AdamW lr 1e-4 with weight decay 1e-4 and a linear warm-up over 10k steps, gradient norm clipped at 0.25,
batch 64, returns-to-go scaled by 0.001, target returns 3600 and 1800. CORL's published Hopper runs use batch 4096
and lr 8e-4 for 100k steps on a GPU. A gradient step here costs about 0.3 s on one CPU core, so the default budget
of 50k steps is hours (benchmark_results/decision_transformer.md measures what fits); evaluation plays 10 episodes
per target every 10k steps, all episodes batched in one forward per step.
The transformer is PyTorch's nn.TransformerEncoder with a causal mask, pre-LayerNorm blocks (GPT-2's order: a
LayerNorm before attention and before the GELU MLP of width 4 x embedding, a final LayerNorm), not a GPT written here.
Tested: on ppo.py's CartPole-v1 expert data it reaches a deterministic return >= 475 at target 500 (tests, slow).
Results: benchmark_results/decision_transformer.md

The math, as written in the code below, for an episode of rewards r_0 .. r_{T-1}:
    return-to-go        R_t = r_t + r_{t+1} + ... + r_{T-1}      (undiscounted; the model reads reward_scale * R_t)
    tokens, step t      e(R_t) + w(t),  e(s~_t) + w(t),  e(a_t) + w(t)     (w: a learned embedding of the timestep t
                        in its episode; s~ = (s - mean) / (std + 1e-3), the dataset's statistics)
    sequence            R_t, s_t, a_t, R_{t+1}, s_{t+1}, a_{t+1}, ... : K timesteps, 3K tokens, a causal mask
                        (token i attends to tokens j <= i only)
    prediction          a^_t = head(h(s_t)): the output at the state token, which has seen R_<=t, s_<=t, a_<t
    Box actions         a^ = scale * tanh(head) + bias (the bounds),   L = mean over real steps of |a^ - a|^2 / dim
    Discrete actions    logits = head,   L = mean over real steps of -log softmax(logits)[a]
    sampling            episode e with probability T_e / sum T (the paper's and CORL's), start t0 uniform in
                        [0, T_e - 1], steps t0 .. t0 + K - 1; steps past the episode's end are padding (right-padded: the causal mask already hides them from every real token,
                        and the loss leaves them out)
    learning rate       lr_i = lr * min(1, (i + 1) / warmup)   at gradient step i = 0, 1, ...  (CORL's LambdaLR)
    evaluation          R_0 = target, then R_{t+1} = R_t - r_t; the context is the last K steps played, the action
                        token of the current step a zero (it comes after the state token, so it is never read)
    score               100 * (R - R_random) / (R_expert - R_random)        (Minari's get_normalized_score x 100)

Each target of --target-returns is logged as its own return and normalised score (eval/episodic_return_target_<R>,
eval/normalized_score_target_<R>); eval/episodic_return, eval/normalized_score and the score reported as last and
best are the first target's. The offline skeleton is bc.py's: --dataset-id (any local Minari dataset, nothing is
downloaded), the evaluation environment recovered from the dataset, --total-updates gradient steps as the unit of
logging, evaluations and checkpoints, the state statistics saved with the model, the long-run block (checkpoints,
Ctrl-C / SIGTERM, bit-for-bit --resume, NaN stop).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "decision_transformer"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (dropout), the segment sampler and the evaluation episodes"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it"""
    torch_threads: int = 1
    """torch CPU threads; 1 suits a shared machine (benchmark_results/decision_transformer.md measures 2)"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    save_model: bool = False
    """if toggled, save the model and training state to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many gradient steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-updates"""
    nan_check: bool = True
    """if toggled, a NaN or infinite loss stops the run (exit 3)"""

    dataset_id: str = "onefile/hopper/medium-v0"
    """a Minari dataset present under $MINARI_DATASETS_PATH (tools/make_dataset.py builds this collection's)"""
    total_updates: int = 50_000
    """gradient steps (the paper and CORL: 100k)"""
    normalize_obs: bool = True
    """if toggled, standardise observations with the dataset's mean and std (saved with the model)"""
    context_len: int = 20
    """K: timesteps in the context (3K tokens)"""
    embed_dim: int = 128
    """width of the token embeddings and of the transformer"""
    num_layers: int = 3
    """transformer blocks"""
    num_heads: int = 1
    """attention heads (must divide --embed-dim)"""
    dropout: float = 0.1
    """dropout of the embeddings, the attention weights and the residual branches"""
    learning_rate: float = 1e-4
    """the AdamW learning rate after the warm-up"""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay, on every parameter (as CORL)"""
    warmup_steps: int = 10_000
    """the learning rate rises linearly from lr / warmup to lr over this many gradient steps (0: none)"""
    max_grad_norm: float = 0.25
    """clip the gradient's global norm to this (inf: no clipping)"""
    batch_size: int = 64
    """segments of K timesteps per gradient step"""
    reward_scale: float = 0.001
    """the model reads returns-to-go times this (CORL: 0.001 for MuJoCo)"""
    target_returns: tuple[float, ...] = (3600.0, 1800.0)
    """the returns asked for at evaluation (raw, unscaled); the first is the reported score's (CORL Hopper: 3600 1800)"""
    eval_every: int = 10_000
    """evaluate every this many gradient steps (and after the last)"""
    eval_episodes: int = 10
    """deterministic episodes per target and evaluation"""
    log_every: int = 1_000
    """write the loss and the gradient steps per second, and print a progress line, every this many gradient steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_episodes", "log_every", "torch_threads",
                 "context_len", "embed_dim", "num_layers", "num_heads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.embed_dim % args.num_heads:
        fail(f"--num-heads must divide --embed-dim, got {args.num_heads} and {args.embed_dim}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not 0 <= args.weight_decay < math.inf:
        fail(f"need 0 < --learning-rate < inf and 0 <= --weight-decay < inf, got {args.learning_rate} and "
             f"{args.weight_decay}")
    if not 0 <= args.dropout < 1:
        fail(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.max_grad_norm > 0:
        fail(f"--max-grad-norm must be positive (inf: no clipping), got {args.max_grad_norm}")
    if not 0 < args.reward_scale < math.inf:
        fail(f"--reward-scale must be positive and finite, got {args.reward_scale}")
    targets = np.atleast_1d(np.asarray(args.target_returns, dtype=np.float64))
    if targets.size == 0 or not np.isfinite(targets).all():
        fail(f"--target-returns must be one or more finite returns, got {args.target_returns}")
    if not args.warmup_steps >= 0:
        fail(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    check_dataset(args.dataset_id)


def check_dataset(dataset_id: str):
    """The dataset is present locally and holds flat Box observations and Box (bounded) or Discrete actions; returns
    it. Nothing is downloaded."""
    import minari

    path = minari.storage.get_dataset_path(dataset_id)
    if not dataset_id or not os.path.isdir(os.path.join(path, "data")):
        fail(f"--dataset-id {dataset_id}: no such Minari dataset under {minari.storage.get_dataset_path()} "
             "(set MINARI_DATASETS_PATH, build one with tools/make_dataset.py, or `minari download` it)")
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:  # noqa: BLE001 - any unreadable dataset is the same bad input
        fail(f"--dataset-id {dataset_id} cannot be read: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
    obs_space, action_space = dataset.observation_space, dataset.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--dataset-id {dataset_id} has {obs_space} observations; this file needs flat Box observations")
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1 or not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            fail(f"--dataset-id {dataset_id} has {action_space} actions; tanh needs a flat Box with finite bounds")
    elif not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--dataset-id {dataset_id} has {action_space} actions; this file clones Box or Discrete actions")
    if dataset.total_steps == 0:
        fail(f"--dataset-id {dataset_id} holds no transitions")
    try:
        dataset.recover_environment(eval_env=True).close()
    except Exception as error:  # noqa: BLE001 - an environment that is not installed, or not registered here
        fail(f"--dataset-id {dataset_id}: its environment cannot be created here: {type(error).__name__}: "
             f"{(str(error).splitlines() or [''])[0]}")
    return dataset


def load_transitions(dataset) -> dict[str, np.ndarray]:
    """Every transition of a Minari dataset, in its order, as flat arrays: observations, actions, rewards,
    next_observations, terminations, truncations (a row per step; an episode of T steps stores T + 1 observations),
    episode (the index of each transition's episode) and episode_returns (each episode's undiscounted return)."""
    parts: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                              "terminations", "truncations", "episode")}
    episode_returns = []
    for i, ep in enumerate(dataset.iterate_episodes()):
        steps = len(ep.rewards)
        parts["observations"].append(np.asarray(ep.observations[:-1], dtype=np.float32))
        parts["next_observations"].append(np.asarray(ep.observations[1:], dtype=np.float32))
        parts["actions"].append(np.asarray(ep.actions))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float32))
        parts["terminations"].append(np.asarray(ep.terminations, dtype=np.float32))
        parts["truncations"].append(np.asarray(ep.truncations, dtype=np.float32))
        parts["episode"].append(np.full(steps, i, dtype=np.int64))
        episode_returns.append(float(np.sum(ep.rewards)))
    return {**{k: np.concatenate(v) for k, v in parts.items()}, "episode_returns": np.asarray(episode_returns)}



def obs_statistics(obs: np.ndarray, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The mean and std + eps of the states trained on (CORL's eps keeps a constant feature finite)."""
    return obs.mean(axis=0), obs.std(axis=0) + eps


def normalized_score(returns, ref_min: float, ref_max: float) -> float:
    """100 * (mean return - R_random) / (R_expert - R_random): Minari's get_normalized_score x 100, D4RL's scale."""
    return 100.0 * (float(np.mean(returns)) - ref_min) / (ref_max - ref_min)



def discounted_returns_to_go(rewards: np.ndarray, episode: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_(t+1) within each episode, 0 after its last step: the discounted return that followed
    each transition in the data (what the behaviour policy's Q(s, a) estimates; an episode cut by a time limit loses
    its tail). Rows are in dataset order, episodes contiguous."""
    returns = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        if t == len(rewards) - 1 or episode[t + 1] != episode[t]:
            running = 0.0
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns


def sample_segments(rng: np.random.Generator, starts: np.ndarray, lengths: np.ndarray, context_len: int,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of segments: episode e with probability T_e / sum T, a start uniform in [0, T_e - 1], K steps from it.
    Returns the flat row of each step (batch, K) and the mask of real steps; a step past the episode's end repeats
    its last row (padding: masked out of the loss, and after every real token, so the causal mask hides it)."""
    episodes = rng.choice(len(lengths), size=batch_size, p=lengths / lengths.sum())
    offsets = rng.integers(0, lengths[episodes])
    steps = offsets[:, None] + np.arange(context_len)
    last = lengths[episodes][:, None] - 1
    return starts[episodes][:, None] + np.minimum(steps, last), steps <= last


def dt_loss(output: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The action loss over the real steps only (`mask`): Box, the squared error averaged over the action's
    dimensions and the steps; Discrete, the cross-entropy of the logits averaged over the steps."""
    if discrete:
        return F.cross_entropy(output[mask], actions[mask])
    return F.mse_loss(output[mask], actions[mask])


def warmup_lr(base_lr: float, step: int, warmup: int) -> float:
    """The learning rate of gradient step `step` (from 0): rising linearly to base_lr over `warmup` steps."""
    return base_lr * min(1.0, (step + 1) / warmup) if warmup > 0 else base_lr


def causal_mask(n: int, device=None) -> torch.Tensor:
    """Boolean (n, n), True where attention is forbidden: token i may attend to tokens j <= i only."""
    return torch.triu(torch.ones(n, n, dtype=torch.bool, device=device), diagonal=1)


class DecisionTransformer(nn.Module):
    """The causal transformer over (return-to-go, state, action) tokens, on raw observations and raw returns-to-go:
    the states are standardised with the dataset's statistics and the returns-to-go scaled by reward_scale inside
    (buffers and arguments saved with the weights). Outputs the action predicted at each state token: Box, inside the
    bounds; Discrete, the logits. `target_return` (a buffer) is the return `evaluate` asks for by default."""

    def __init__(self, obs_dim: int, act_dim: int, discrete: bool, context_len: int, embed_dim: int, num_layers: int,
                 num_heads: int, dropout: float, max_timestep: int, reward_scale: float, action_low=None,
                 action_high=None):
        super().__init__()
        self.discrete, self.context_len, self.max_timestep, self.reward_scale = discrete, context_len, max_timestep, reward_scale
        self.embed_return = nn.Linear(1, embed_dim)
        self.embed_state = nn.Linear(obs_dim, embed_dim)
        self.embed_action = nn.Embedding(act_dim, embed_dim) if discrete else nn.Linear(act_dim, embed_dim)
        self.embed_timestep = nn.Embedding(max_timestep, embed_dim)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.embed_dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=4 * embed_dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, num_layers, norm=nn.LayerNorm(embed_dim),
                                                 enable_nested_tensor=False)
        self.head = nn.Linear(embed_dim, act_dim)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("target_return", torch.zeros(()))
        if not discrete:
            low = torch.as_tensor(action_low, dtype=torch.float32)
            high = torch.as_tensor(action_high, dtype=torch.float32)
            self.register_buffer("action_scale", (high - low) / 2.0)
            self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, returns_to_go: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """returns_to_go (B, T), states (B, T, obs_dim), actions (B, T, act_dim) or (B, T) indices, timesteps (B, T)
        -> the prediction at each state token (B, T, act_dim), T <= any length the timestep embedding covers."""
        batch, steps = states.shape[:2]
        time_embedding = self.embed_timestep(timesteps)
        tokens = torch.stack([self.embed_return(self.reward_scale * returns_to_go.unsqueeze(-1)) + time_embedding,
                              self.embed_state((states - self.obs_mean) / self.obs_std) + time_embedding,
                              self.embed_action(actions) + time_embedding], dim=2)  # (B, T, 3, embed): R, s, a
        x = self.embed_dropout(self.embed_norm(tokens.reshape(batch, 3 * steps, -1)))
        x = self.transformer(x, mask=causal_mask(3 * steps, x.device), is_causal=True)
        out = self.head(x[:, 1::3])  # the state tokens
        return out if self.discrete else self.action_scale * torch.tanh(out) + self.action_bias


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write atomically (temporary file, then rename): an interrupted save never leaves a corrupt file."""
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, algo: str) -> dict:
    """Read a checkpoint written by `algo`.py (weights_only: tensors and plain values); bad input exits 2."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        fail(f"no checkpoint at {path}")
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same bad input
        fail(f"{path} is not a readable checkpoint ({type(error).__name__})")
    if not isinstance(ckpt, dict) or "env_id" not in ckpt:
        fail(f"{path} is not a checkpoint written by --save-model (no env_id in it)")
    if ckpt.get("algo") != algo or "model_args" not in ckpt:
        fail(f"{path} does not fit {algo}.py (written by {ckpt.get('algo') or 'an older version or another program'}); "
             "retrain with --save-model")
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


def check_offline_resume(ckpt: dict, args, model_args: dict) -> None:
    """A checkpoint to resume holds a training state for this dataset and these network sizes."""
    if "global_step" not in ckpt or "dataset_id" not in ckpt:
        fail(f"--resume {args.resume} holds no offline training state")
    if ckpt["dataset_id"] != args.dataset_id:
        fail(f"--resume {args.resume} was trained on {ckpt['dataset_id']}, not --dataset-id {args.dataset_id}")
    if ckpt["model_args"] != model_args:
        fail(f"--resume {args.resume} holds networks of other sizes ({ckpt['model_args']}, "
             f"here {model_args}); resume with the options it was trained with")
    if not ckpt["global_step"] < args.total_updates:
        fail(f"--resume {args.resume} is at gradient step {ckpt['global_step']:,}: --total-updates must be larger "
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


def load_model(path: str) -> tuple[DecisionTransformer, dict]:
    """The trained DecisionTransformer of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "decision_transformer")
    model = DecisionTransformer(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model, ckpt


@torch.no_grad()
def play_targets(model: DecisionTransformer, env_id, eval_episodes: int, seed: int, target_returns,
                 device: str = "cpu") -> list[list[float]]:
    """Return-conditioned evaluation: eval_episodes episodes (seeds seed, seed + 1, ...) per target, all of them in
    one batch (one forward per step for every episode still running). Each episode starts with R_0 = its target,
    then R_{t+1} = R_t - r_t; the model sees the last K steps played. Returns one list of returns per target."""
    was_training = model.training
    model.eval()
    n, k = len(target_returns) * eval_episodes, model.context_len
    envs = [gym.make(env_id) for _ in range(n)]
    obs = np.stack([env.reset(seed=seed + i % eval_episodes)[0] for i, env in enumerate(envs)]).astype(np.float32)
    rtg = np.repeat(np.asarray(target_returns, dtype=np.float64), eval_episodes)
    totals, running = np.zeros(n), np.ones(n, dtype=bool)
    action_shape, action_dtype = ((), torch.int64) if model.discrete else ((model.head.out_features,), torch.float32)
    states, rtgs, actions = [], [], []  # one (n, ...) tensor per step played
    t = 0
    while running.any():
        states.append(torch.as_tensor(obs.copy()))
        rtgs.append(torch.as_tensor(rtg, dtype=torch.float32))
        actions.append(torch.zeros(n, *action_shape, dtype=action_dtype))  # the current step's: never read
        rows, first = torch.from_numpy(np.flatnonzero(running)), max(0, t + 1 - k)
        timesteps = torch.arange(first, t + 1).clamp(max=model.max_timestep - 1).expand(len(rows), -1)
        out = model(torch.stack(rtgs[first:], 1)[rows].to(device), torch.stack(states[first:], 1)[rows].to(device),
                    torch.stack(actions[first:], 1)[rows].to(device), timesteps.to(device))[:, -1]
        played = (out.argmax(dim=-1) if model.discrete else out).cpu()
        actions[-1][rows] = played
        for j, i in enumerate(rows.tolist()):
            obs[i], reward, terminated, truncated, _ = envs[i].step(played[j].item() if model.discrete
                                                                     else played[j].numpy())
            totals[i] += float(reward)
            rtg[i] -= float(reward)
            running[i] = not (terminated or truncated)
        t += 1
    for env in envs:
        env.close()
    model.train(was_training)
    return [totals[i * eval_episodes:(i + 1) * eval_episodes].tolist() for i in range(len(target_returns))]


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu",
             target_return: float | None = None) -> list[float]:
    """Deterministic return-conditioned evaluation on fresh environments at target_return (default: the model's
    own, the first of the --target-returns it was trained with); returns one return per episode."""
    agent = load_model(agent_or_path)[0].to(device) if isinstance(agent_or_path, str) else agent_or_path
    target = float(agent.target_return) if target_return is None else target_return
    return play_targets(agent, env_id, eval_episodes, seed, [target], device)[0]


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (gradient step, the evaluation's mean return at the first target);
    # returning True ends training (the run is then evaluated and returned as usual).
    check_args(args)
    dataset = check_dataset(args.dataset_id)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # the evaluation environment is the dataset's own (its eval_env where it names one), made anew per evaluation
    probe = dataset.recover_environment(eval_env=True)
    env_spec = probe.spec
    probe.close()
    run_name = f"{env_spec.id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    ref_min, ref_max = dataset.storage.metadata.get("ref_min_score"), dataset.storage.metadata.get("ref_max_score")
    targets = [float(x) for x in np.atleast_1d(args.target_returns)]

    data = load_transitions(dataset)
    discrete = isinstance(dataset.action_space, gym.spaces.Discrete)
    lengths = np.bincount(data["episode"])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    timestep_np = np.arange(len(data["episode"])) - starts[data["episode"]]  # each transition's step in its episode
    obs = torch.as_tensor(data["observations"], device=device)
    actions = torch.as_tensor(data["actions"], dtype=torch.int64 if discrete else torch.float32, device=device)
    # gamma = 1: the undiscounted return-to-go R_t
    rtg = torch.as_tensor(discounted_returns_to_go(data["rewards"], data["episode"], 1.0), dtype=torch.float32,
                          device=device)
    timesteps = torch.as_tensor(timestep_np, dtype=torch.int64, device=device)
    obs_dim = obs.shape[1]
    model_args = {"obs_dim": obs_dim, "discrete": discrete, "context_len": args.context_len,
                  "embed_dim": args.embed_dim, "num_layers": args.num_layers, "num_heads": args.num_heads,
                  "dropout": args.dropout, "reward_scale": args.reward_scale,
                  # the timestep embedding covers the longest episode, of the data or of the environment's time limit
                  "max_timestep": max(int(lengths.max()), env_spec.max_episode_steps or 0)}
    if discrete:
        model_args["act_dim"] = int(dataset.action_space.n)
    else:
        model_args.update(act_dim=int(dataset.action_space.shape[0]), action_low=dataset.action_space.low.tolist(),
                          action_high=dataset.action_space.high.tolist())
    model = DecisionTransformer(**model_args).to(device)
    if args.normalize_obs:
        mean, std = obs_statistics(data["observations"])
        model.obs_mean.copy_(torch.as_tensor(mean))
        model.obs_std.copy_(torch.as_tensor(std))
    # AdamW (decoupled weight decay), written as Adam(decoupled_weight_decay=True): the same arithmetic as
    # torch.optim.AdamW. fused=True: the arithmetic for all parameters in one kernel. The learning rate is set at
    # every step (the warm-up).
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                 decoupled_weight_decay=True, fused=True)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}

    # The training state a checkpoint holds; resuming puts it back. global_step counts gradient steps.
    global_step, best_score, last_score = 0, -math.inf, math.nan
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "decision_transformer")
        check_offline_resume(ckpt, args, model_args)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, best_score, last_score = ckpt["global_step"], ckpt["best_score"], ckpt["last_score"]
        set_rng_state(ckpt["rng"], generators)
        print(f"resumed from {args.resume} at gradient step {global_step:,}", flush=True)
    model.target_return.fill_(targets[0])  # what `evaluate` asks for by default: this run's first target

    def checkpoint() -> dict:
        return {"algo": "decision_transformer", "env_id": env_spec.id, "dataset_id": args.dataset_id,
                "model_args": model_args, "model": model.state_dict(), "args": asdict(args),
                "optimizer": optimizer.state_dict(), "global_step": global_step, "best_score": best_score,
                "last_score": last_score, "rng": rng_state(generators)}

    def fault(quantity: str) -> None:  # the network is still finite: the check runs before it changes
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint())
        close_logs(writer, args.track)
        numerical_fault(quantity, global_step, path)

    run_dir = make_run_dir(run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run_dir)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    print(f"{args.dataset_id}: {len(data['rewards']):,} transitions in {len(lengths)} episodes (lengths "
          f"{lengths.min()}-{lengths.max()}); segments of {args.context_len} steps; {sum(p.numel() for p in model.parameters()):,} "
          f"parameters; target returns {', '.join(f'{x:g}' for x in targets)}; evaluated on {env_spec.id}", flush=True)

    def run_evaluation() -> list[float]:
        """Evaluate at every target, log, keep the best of the first target's score; returns the first target's
        returns (the evaluation's time is left out of the updates per second)."""
        nonlocal best_score, last_score, eval_seconds
        eval_start = time.time()
        per_target = play_targets(model, env_spec, args.eval_episodes, args.seed + 100_000, targets, str(device))
        eval_seconds += time.time() - eval_start
        others = ""
        for i, (target, returns) in enumerate(zip(targets, per_target, strict=True)):
            writer.add_scalar(f"eval/episodic_return_target_{target:g}", float(np.mean(returns)), global_step)
            score = math.nan
            if ref_min is not None and ref_max is not None:
                score = normalized_score(returns, ref_min, ref_max)
                writer.add_scalar(f"eval/normalized_score_target_{target:g}", score, global_step)
            if i > 0:
                others += f"  [target {target:g}: return {np.mean(returns):.1f} score {score:.1f}]"
        returns = per_target[0]
        writer.add_scalar("eval/episodic_return", float(np.mean(returns)), global_step)
        score = ""
        if ref_min is not None and ref_max is not None:
            last_score = normalized_score(returns, ref_min, ref_max)
            best_score = max(best_score, last_score)
            writer.add_scalar("eval/normalized_score", last_score, global_step)
            score = f"  normalised score {last_score:6.1f} (best {best_score:6.1f})"
        print(f"eval at update {global_step:>9,}: return {np.mean(returns):8.1f} +- {np.std(returns):6.1f}{score}  "
              f"(target {targets[0]:g}; {time.time() - eval_start:.1f}s){others}", flush=True)
        return returns

    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    eval_returns: list[float] = []
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    loss = torch.zeros(())
    model.train()

    while global_step < args.total_updates:
        rows, mask = sample_segments(sampler, starts, lengths, args.context_len, args.batch_size)
        rows, mask = torch.from_numpy(rows).to(device), torch.from_numpy(mask).to(device)
        output = model(rtg[rows], obs[rows], actions[rows], timesteps[rows])
        loss = dt_loss(output, actions[rows], mask, discrete)
        lr = warmup_lr(args.learning_rate, global_step, args.warmup_steps)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        loss.backward()
        if args.nan_check and not math.isfinite(loss.detach()):  # before the step: the network stays finite
            fault("loss")
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        global_step += 1

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = (global_step - start_step) / (time.time() - start_time - eval_seconds)
            writer.add_scalar("charts/SPS", ups, global_step)  # gradient steps per second, evaluations left out
            writer.add_scalar("charts/learning_rate", lr, global_step)
            writer.add_scalar("losses/action_loss", loss.item(), global_step)
            print(f"update {global_step:>9,}  updates/s {ups:>6,.0f}  lr {lr:.2e}  loss {loss.item():.4f}", flush=True)
        if global_step % args.eval_every == 0 or global_step == args.total_updates:
            eval_returns = run_evaluation()
            if report is not None and report(global_step, float(np.mean(eval_returns))):
                break  # the caller asked to stop: evaluated as usual

        # After the update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
        if stop.signum or (args.checkpoint_every and global_step % args.checkpoint_every == 0):
            path = write_checkpoint(run_dir, checkpoint(), written, args.keep_checkpoints)
            if stop.signum:
                close_logs(writer, args.track)
                print(f"stopped by {signal.Signals(stop.signum).name} at gradient step {global_step:,}; resume with: "
                      f"{resume_command(args, path)}", file=sys.stderr, flush=True)
                sys.exit(128 + stop.signum)
    stop.restore()

    train_time = time.time() - start_time  # evaluations included
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-updates
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB)")
    print(f"last normalised score {last_score:.1f}, best {best_score:.1f} (x100, at target {targets[0]:g}; the "
          f"dataset's reference returns {ref_min} / {ref_max}); {global_step - start_step:,} gradient steps in "
          f"{train_time:.1f}s ({eval_seconds:.1f}s of it evaluating)")
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "normalized_score_last": last_score,
        "normalized_score_best": best_score if best_score > -math.inf else math.nan,  # nan: no reference returns
        "sps": int((global_step - start_step) / (train_time - eval_seconds)),  # gradient steps per second
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
