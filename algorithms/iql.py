"""Implicit Q-Learning (IQL) from a Minari dataset: offline RL without ever querying an action outside the data.

Kostrikov, Nair, Levine (2021), "Offline Reinforcement Learning with Implicit Q-Learning",
https://arxiv.org/abs/2110.06169. (Not multi-agent "independent Q-learning", a different algorithm of the same
initials.) IQL never evaluates Q at an action the dataset does not hold: V(s) is fitted by expectile regression to
Q(s, a) over the dataset's actions, an upper expectile approximating the maximum over the actions the data supports;
Q is fitted by a one-step TD target through V(s'); the policy is extracted afterwards, by regression onto the
dataset's actions weighted by exp(beta * advantage) (advantage-weighted regression).

Run:
    python algorithms/iql.py --dataset-id onefile/hopper/medium-v0               # 50k gradient steps
    python algorithms/iql.py --dataset-id onefile/hopper/medium-replay-v0
    python algorithms/iql.py --dataset-id mujoco/hopper/medium-v0    # a Minari dataset downloaded elsewhere
    python algorithms/iql.py --help

Defaults are CORL's IQL for the Gym-MuJoCo tasks (Tarasov et al. (2022), https://arxiv.org/abs/2210.07105, and the
paper's appendix): expectile tau = 0.7, inverse temperature beta = 3.0, weights clipped at 100, gamma = 0.99,
target Q networks averaged with 0.005, 256-256 ReLU MLPs, Adam lr 3e-4 for all three networks with a cosine decay
of the policy's to 0 over --total-updates, batch 256, states standardised with the dataset's statistics, rewards
scaled by 1000 / (max - min episode return) as CORL does for these tasks. The policy is CORL's Gaussian one: mean
scale * tanh(f(s)) + bias, a state-independent log std; evaluation plays the mean. Box actions only. The budget is
50k gradient steps where CORL runs 1M on a GPU.
Tested: on this collection's Hopper-v5 medium data, seed 1 at 50k gradient steps ends above a normalised score of
33, above bc.py's best on the same data (tests/test_iql.py, slow). Results: benchmark_results/iql.md

The math, as written in the code below, for a batch of the dataset's (s, a, r, s', d) (d: terminated, not truncated):
    expectile loss     L2_tau(u) = |tau - 1(u < 0)| * u^2                           (tau = 0.5: half the squared error)
    value              L_V = mean( L2_tau( min(Q1'(s, a), Q2'(s, a)) - V(s) ) )     (Q1', Q2': target networks)
    critics            y = r + gamma * (1 - d) * V(s'),   L_Q = ( mean((Q1(s, a) - y)^2) + mean((Q2(s, a) - y)^2) ) / 2
    policy             w = min( exp(beta * (min(Q1', Q2')(s, a) - V(s))), 100 ),    L_pi = -mean( w * log pi(a | s) )
                       (w, y and the value target are constants: no gradient flows through them)
    targets            Q' <- 0.005 * Q + (1 - 0.005) * Q'
    policy lr          lr_t = lr * (1 + cos(pi * t / T)) / 2                        (t: gradient step, T: --total-updates)
    rewards            r <- r * 1000 / (max episode return - min episode return)
    score              100 * (R - R_random) / (R_expert - R_random)     (Minari's get_normalized_score x 100)
All three losses use the networks as they were at the start of the step (as CORL's order does: V(s') is computed
before V is updated, the advantage with V before its update), so one Adam with three parameter groups (the policy's
on its own schedule) takes the step: per parameter it is the same arithmetic as three optimisers.

An offline file (the skeleton of bc.py): --dataset-id names any Minari dataset present locally (nothing is
downloaded), the evaluation environment is the dataset's own, the score is normalised with the dataset's reference
returns; every count is in gradient steps (--total-updates, --eval-every, --log-every, --checkpoint-every); the
state statistics are buffers of the policy, so a checkpoint evaluates on raw observations. Long runs as the deep
files: checkpoints, SIGINT/SIGTERM writes one and exits 130 / 143 with the command that resumes it, --resume
continues bit for bit, a non-finite loss stops the run (exit 3) keeping the last finite state.
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
import tyro


@dataclass
class Args:
    exp_name: str = "iql"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the batch sampler and the evaluation episodes"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small MLPs are faster on the CPU)"""
    torch_threads: int = 1
    """torch CPU threads; 1 suits small networks on a shared machine"""
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
    """a Minari dataset with Box actions present under $MINARI_DATASETS_PATH (tools/make_dataset.py builds this collection's)"""
    total_updates: int = 50_000
    """gradient steps (CORL: 1M); the policy's cosine learning-rate decay spans them"""
    expectile: float = 0.7
    """tau of the expectile regression of V (0.5: the mean, towards 1: the maximum over the data's actions)"""
    beta: float = 3.0
    """inverse temperature of the advantage weights exp(beta * (Q - V))"""
    max_weight: float = 100.0
    """the advantage weights are clipped at this value"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target Q networks: Q' <- tau * Q + (1 - tau) * Q'"""
    normalize_obs: bool = True
    """if toggled, standardise observations with the dataset's mean and std (saved with the model)"""
    normalize_reward: bool = True
    """if toggled, scale rewards by 1000 / (max - min episode return), as CORL for the MuJoCo tasks"""
    learning_rate: float = 3e-4
    """the Adam learning rate of the value function, the critics and (at its start) the policy"""
    cosine_lr: bool = True
    """if toggled, the policy's learning rate decays to 0 along a cosine over --total-updates (CORL)"""
    batch_size: int = 256
    """transitions per gradient step, drawn uniformly with replacement"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the policy, the value function and each critic"""
    eval_every: int = 5_000
    """evaluate the policy every this many gradient steps (and after the last)"""
    eval_episodes: int = 10
    """deterministic episodes per evaluation (the policy's mean action)"""
    log_every: int = 1_000
    """write the losses and the gradient steps per second, and print a progress line, every this many gradient steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_episodes", "log_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf:
        fail(f"--learning-rate must be positive and finite, got {args.learning_rate}")
    if not 0 < args.expectile < 1:
        fail(f"--expectile must lie in (0, 1), got {args.expectile}")
    if not 0 <= args.beta < math.inf:
        fail(f"--beta must be >= 0 and finite, got {args.beta}")
    if not 0 < args.max_weight < math.inf:
        fail(f"--max-weight must be positive and finite, got {args.max_weight}")
    if not 0 <= args.gamma <= 1:
        fail(f"--gamma must lie in [0, 1], got {args.gamma}")
    if not 0 < args.tau <= 1:
        fail(f"--tau must lie in (0, 1], got {args.tau}")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    check_box_actions(check_dataset(args.dataset_id), args.dataset_id)


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


def check_box_actions(dataset, dataset_id: str) -> None:
    """IQL here learns a Gaussian policy over Box actions: a dataset of Discrete actions is bad input."""
    if not isinstance(dataset.action_space, gym.spaces.Box):
        fail(f"--dataset-id {dataset_id} has {dataset.action_space} actions; iql.py needs Box actions "
             "(bc.py clones Discrete ones)")


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


def reward_scale(episode_returns: np.ndarray) -> float:
    """CORL's reward normalisation for the MuJoCo tasks: 1000 / (max - min episode return) (1 if they are equal), so
    that beta and the value scale mean the same on datasets of different return ranges."""
    spread = float(np.max(episode_returns) - np.min(episode_returns))
    return 1000.0 / spread if spread > 0 else 1.0


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


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean( |tau - 1(u < 0)| * u^2 ) over u = diff = target - V: an asymmetric squared error whose minimiser over a
    constant V is the tau-expectile of the targets (tau = 0.5: the mean; tau > 0.5 weighs targets above V more)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(advantages: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """w = min(exp(beta * A), max_weight): the weights of advantage-weighted regression, clipped (the exponential
    of a large advantage would let a few transitions dominate the batch, or overflow)."""
    return torch.exp(beta * advantages).clamp(max=max_weight)


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """( mean((Q1 - y)^2) + mean((Q2 - y)^2) ) / 2: both critics regress on the same target y."""
    return ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()) / 2


def weighted_log_likelihood_loss(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-mean( w * log pi(a | s) ): the policy's advantage-weighted regression onto the dataset's actions."""
    return -(weights * log_probs).mean()


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    """lr * (1 + cos(pi * step / total)) / 2: from lr at step 0 to 0 at step total (CORL's CosineAnnealingLR)."""
    return base_lr * (1.0 + math.cos(math.pi * min(step, total) / total)) / 2.0


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class QCritic(nn.Module):
    """Q(s, a): the action enters with the observation (as CleanRL and SB3)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden_sizes)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], dim=1)).squeeze(1)


class TwinQCritic(nn.Module):
    """The two critics Q1(s, a), Q2(s, a): independent networks, trained on the same target."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.q1, self.q2 = QCritic(obs_dim, act_dim, hidden_sizes), QCritic(obs_dim, act_dim, hidden_sizes)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs, actions), self.q2(obs, actions)


class ValueCritic(nn.Module):
    """V(s): an MLP of the (standardised) state."""

    def __init__(self, obs_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden_sizes)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(1)


class GaussianPolicy(nn.Module):
    """pi(a | s) = Normal(scale * tanh(f(s~)) + bias, exp(log_std)) on raw observations (standardised inside with
    the dataset's statistics, buffers saved with the weights); log_std is one parameter per action dimension,
    clamped to [-20, 2] (CORL's GaussianPolicy). Evaluation plays the mean, which lies inside the bounds."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], action_low, action_high):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden_sizes)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action."""
        return self.action_scale * torch.tanh(self.net((obs - self.obs_mean) / self.obs_std)) + self.action_bias

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a | s), summed over the action's dimensions."""
        std = self.log_std.clamp(-20.0, 2.0).exp()
        return torch.distributions.Normal(self(obs), std).log_prob(actions).sum(dim=1)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action evaluation plays: the mean, in the environment's units."""
        return self(obs)


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


def load_model(path: str) -> tuple[GaussianPolicy, dict]:
    """The trained GaussianPolicy of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "iql")
    policy = GaussianPolicy(**ckpt["model_args"])
    policy.load_state_dict(ckpt["model"])
    return policy, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """Deterministic evaluation on a fresh environment; returns one return per episode."""
    agent = load_model(agent_or_path)[0].to(device) if isinstance(agent_or_path, str) else agent_or_path
    env = gym.make(env_id)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            action = agent.greedy_action(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (gradient step, the evaluation's mean return); returning True ends
    # training (the run is then evaluated and returned as usual).
    check_args(args)
    dataset = check_dataset(args.dataset_id)
    check_box_actions(dataset, args.dataset_id)

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

    data = load_transitions(dataset)
    n, obs_dim = data["observations"].shape
    act_dim = int(dataset.action_space.shape[0])
    mean, std = obs_statistics(data["observations"]) if args.normalize_obs else (np.zeros(obs_dim), np.ones(obs_dim))
    scale = reward_scale(data["episode_returns"]) if args.normalize_reward else 1.0

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    # the critics and V see standardised states (computed once); the policy standardises raw ones itself
    obs, actions = tensor(data["observations"]), tensor(data["actions"])
    obs_n, next_obs_n = tensor((data["observations"] - mean) / std), tensor((data["next_observations"] - mean) / std)
    rewards, terminations = tensor(data["rewards"] * scale), tensor(data["terminations"])

    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes),
                  "action_low": dataset.action_space.low.tolist(), "action_high": dataset.action_space.high.tolist()}
    policy = GaussianPolicy(**model_args).to(device)
    policy.obs_mean.copy_(tensor(mean))
    policy.obs_std.copy_(tensor(std))
    value = ValueCritic(obs_dim, args.hidden_sizes).to(device)
    critics = TwinQCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    critics_target = TwinQCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    critics_target.load_state_dict(critics.state_dict())
    # one Adam, three parameter groups: per parameter the same update as three optimisers; group 0 (the policy's)
    # follows the cosine schedule. fused=True: Adam's arithmetic for all parameters in one kernel.
    optimizer = torch.optim.Adam([{"params": policy.parameters()}, {"params": value.parameters()},
                                  {"params": critics.parameters()}], lr=args.learning_rate, fused=True)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}

    # The training state a checkpoint holds; resuming puts it back. global_step counts gradient steps.
    global_step, best_score, last_score = 0, -math.inf, math.nan
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "iql")
        check_offline_resume(ckpt, args, model_args)
        policy.load_state_dict(ckpt["model"])
        value.load_state_dict(ckpt["value"])
        critics.load_state_dict(ckpt["critics"])
        critics_target.load_state_dict(ckpt["critics_target"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, best_score, last_score = ckpt["global_step"], ckpt["best_score"], ckpt["last_score"]
        set_rng_state(ckpt["rng"], generators)
        print(f"resumed from {args.resume} at gradient step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "iql", "env_id": env_spec.id, "dataset_id": args.dataset_id, "model_args": model_args,
                "model": policy.state_dict(), "value": value.state_dict(), "critics": critics.state_dict(),
                "critics_target": critics_target.state_dict(), "args": asdict(args),
                "optimizer": optimizer.state_dict(), "global_step": global_step, "best_score": best_score,
                "last_score": last_score, "reward_scale": scale, "rng": rng_state(generators)}

    def fault(quantity: str) -> None:  # the networks are still finite: the check runs before they change
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
    returns_to_go = discounted_returns_to_go(data["rewards"] * scale, data["episode"], args.gamma)  # Q's scale
    print(f"{args.dataset_id}: {n:,} transitions in {len(data['episode_returns'])} episodes (returns "
          f"{data['episode_returns'].min():.1f} to {data['episode_returns'].max():.1f}; rewards scaled by {scale:.4g}); "
          f"evaluated on {env_spec.id}; the data's discounted return G_t (gamma {args.gamma}, scaled rewards): "
          f"mean {returns_to_go.mean():.1f}, max {returns_to_go.max():.1f}", flush=True)

    def run_evaluation() -> list[float]:
        """Evaluate, log, keep the best; returns the returns (its time is left out of the updates per second)."""
        nonlocal best_score, last_score, eval_seconds
        eval_start = time.time()
        returns = evaluate(policy, env_spec, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
        eval_seconds += time.time() - eval_start
        writer.add_scalar("eval/episodic_return", float(np.mean(returns)), global_step)
        score = ""
        if ref_min is not None and ref_max is not None:
            last_score = normalized_score(returns, ref_min, ref_max)
            best_score = max(best_score, last_score)
            writer.add_scalar("eval/normalized_score", last_score, global_step)
            score = f"  normalised score {last_score:6.1f} (best {best_score:6.1f})"
        print(f"eval at update {global_step:>9,}: return {np.mean(returns):8.1f} +- {np.std(returns):6.1f}{score}",
              flush=True)
        return returns

    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    eval_returns: list[float] = []
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()

    while global_step < args.total_updates:
        idx = torch.from_numpy(sampler.integers(0, n, size=args.batch_size)).to(device)
        s, a = obs_n[idx], actions[idx]
        # every loss from the networks as they are now (see the module docstring), then one step for all three
        with torch.no_grad():
            target_q = torch.min(*critics_target(s, a))
            next_v = value(next_obs_n[idx])
            q_target = td_target(rewards[idx], terminations[idx], next_v, args.gamma)
        v = value(s)
        value_loss = expectile_loss(target_q - v, args.expectile)
        q1, q2 = critics(s, a)
        q_loss = critic_loss(q1, q2, q_target)
        advantage = target_q - v.detach()
        weights = advantage_weights(advantage, args.beta, args.max_weight)
        policy_loss = weighted_log_likelihood_loss(policy.log_prob(obs[idx], a), weights)
        loss = value_loss + q_loss + policy_loss
        optimizer.zero_grad()
        loss.backward()
        if args.nan_check and not math.isfinite(loss.detach()):  # before the step: the networks stay finite
            fault("loss")
        if args.cosine_lr:
            optimizer.param_groups[0]["lr"] = cosine_lr(args.learning_rate, global_step, args.total_updates)
        optimizer.step()
        soft_update(critics_target, critics, args.tau)
        global_step += 1

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = int((global_step - start_step) / (time.time() - start_time - eval_seconds))
            writer.add_scalar("charts/SPS", ups, global_step)  # gradient steps per second, evaluations left out
            writer.add_scalar("charts/policy_learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", value_loss.item(), global_step)
            writer.add_scalar("losses/q_loss", q_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", policy_loss.item(), global_step)
            writer.add_scalar("losses/q_values", q1.mean().item(), global_step)
            writer.add_scalar("losses/v_values", v.mean().item(), global_step)
            writer.add_scalar("losses/advantage_weights", weights.mean().item(), global_step)
            print(f"update {global_step:>9,}  updates/s {ups:>6,}  value loss {value_loss.item():.4f}  q loss "
                  f"{q_loss.item():.4f}  policy loss {policy_loss.item():.4f}  Q {q1.mean().item():.1f}  "
                  f"V {v.mean().item():.1f}", flush=True)
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
    print(f"last normalised score {last_score:.1f}, best {best_score:.1f} (x100; the dataset's reference "
          f"returns {ref_min} / {ref_max}); {global_step - start_step:,} gradient steps in {train_time:.1f}s")
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
