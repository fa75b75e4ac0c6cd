"""TD3+BC: offline TD3 with a behaviour-cloning term in the actor's loss, from a Minari dataset, for Box actions.

Paper: Fujimoto, Gu (2021), "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS,
https://arxiv.org/abs/2106.06860. It is TD3 (td3.py; Fujimoto, van Hoof, Meger (2018),
https://arxiv.org/abs/1802.09477: twin critics, target policy smoothing, delayed actor updates) trained on a fixed
dataset with two changes: the actor's loss adds the squared distance of pi(s) to the dataset's action, with the
Q term scaled by lambda = alpha / mean|Q| so that alpha, not the reward's scale, sets the balance; and the states
are standardised with the dataset's statistics. With --no-bc the BC term goes, leaving plain TD3 on the data:
its actor climbs Q at actions the data never shows, where nothing corrects the critic's errors, and Q diverges
(Fujimoto, Meger, Precup (2019), "Off-Policy Deep Reinforcement Learning without Exploration",
https://arxiv.org/abs/1812.02900: extrapolation error).

Run:
    python algorithms/td3_bc.py --dataset-id onefile/hopper/medium-v0                 # 50k gradient steps
    python algorithms/td3_bc.py --dataset-id onefile/hopper/medium-replay-v0 --seed 2
    python algorithms/td3_bc.py --dataset-id onefile/hopper/medium-v0 --no-bc         # plain TD3 offline: fails
    python algorithms/td3_bc.py --dataset-id mujoco/hopper/medium-v0    # a Minari dataset downloaded elsewhere
    python algorithms/td3_bc.py --help

Defaults are CORL's TD3+BC (Tarasov et al. (2022), "CORL: Research-oriented Deep Offline Reinforcement Learning
Library", https://arxiv.org/abs/2210.07105), which are the paper's: 256-256 ReLU MLPs, Adam lr 3e-4 for the actor
and the critics, batch 256, gamma 0.99, tau 0.005, policy noise 0.2 clipped at 0.5, policy delay 2, alpha 2.5,
states standardised, an evaluation of 10 episodes every 5000 gradient steps; the budget is 50k gradient steps
where CORL runs 1M on a GPU (benchmark_results/td3_bc.md measures what fits here).
Tested: on this collection's Hopper-v5 medium data, seed 1 reaches a normalised score >= 35 in 5k gradient steps,
above bc.py's best at 50k (tests/test_td3_bc.py, slow; it needs that dataset).
Results: benchmark_results/td3_bc.md

The math, as written in the code below, for a batch of the dataset's (s, a, r, s', terminated):
    normalised state   s~ = (s - mean) / (std + 1e-3)          (the dataset's statistics; actor and critics see s~)
    smoothing          a~ = clip(pi'(s') + scale * clip(eps, -c, c), low, high),   eps ~ N(0, sigma)
    target             y = r + gamma * (1 - terminated) * min(Q1'(s'~, a~), Q2'(s'~, a~))
    critic loss        L_Q = mean( (Q1(s~, a) - y)^2 ) + mean( (Q2(s~, a) - y)^2 )
    every d = policy_frequency critic updates:
      lambda           lambda = alpha / mean_batch |Q1(s~, pi(s))|          (no gradient flows through lambda)
      actor loss       L_pi = -lambda * mean( Q1(s~, pi(s)) ) + mean( (pi(s) - a)^2 )
                       --no-bc: L_pi = -mean( Q1(s~, pi(s)) ), TD3's own loss (alpha = 0 is pure BC instead)
      targets          theta' <- tau * theta + (1 - tau) * theta'   for the actor and both critics
    data's Q scale     G_t = sum_k gamma^k r_(t+k) to the end of t's episode (logged once: what Q(s, a) of the
                       behaviour policy should be near; the episodes cut by a time limit lose their tail)
    evaluation         score = 100 * (R - R_random) / (R_expert - R_random)     (Minari's get_normalized_score x 100)

Actions are in the environment's units everywhere: pi(s) = scale * tanh(f(s~)) + bias, scale = (high - low) / 2,
bias = (high + low) / 2. Time limits: only `terminated` ends a transition's bootstrap.

An offline file (bc.py's skeleton, repeated here):
- --dataset-id names any Minari dataset present locally (tools/make_dataset.py builds this collection's; a
  dataset downloaded with `minari download` works too); nothing is downloaded. The evaluation environment is the
  dataset's own (`recover_environment(eval_env=True)`), and the score is normalised with the dataset's reference
  returns (none recorded: the raw return only). A dataset of Discrete actions is bad input (bc.py clones those).
- Every count is in gradient steps (--total-updates, --eval-every, --log-every, --checkpoint-every); a gradient
  step is one critic update (the actor's come every --policy-frequency of them). Each evaluation logs
  eval/episodic_return and eval/normalized_score; the run reports the last and the best normalised score, as CORL
  does; losses/q_values is the mean Q1(s~, a) over the batch, against the data's discounted returns G_t.
  The state statistics are buffers of the policy, so every checkpoint carries them and `evaluate` (and
  tools/evaluate.py) feeds the policy raw observations.
- Long runs, the same form as the deep files': checkpoints every --checkpoint-every gradient steps (the actor, the
  twin critic, both target networks, both Adam states, the step, every random generator), Ctrl-C or SIGTERM writes
  one after the current update and exits 130 / 143 with the command that resumes it, --resume continues bit for bit,
  a non-finite loss stops the run (exit 3) keeping the last finite state, the same seed gives the same scalars.
"""

from __future__ import annotations

import copy
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
    exp_name: str = "td3_bc"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (the smoothing noise), the batch sampler and the evaluation episodes"""
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
    """a Minari dataset of Box actions present under $MINARI_DATASETS_PATH (tools/make_dataset.py builds this collection's)"""
    total_updates: int = 50_000
    """gradient steps: critic updates (CORL: 1M)"""
    alpha: float = 2.5
    """the weight of the Q term against the BC term: lambda = alpha / mean|Q| (0: pure behaviour cloning)"""
    bc: bool = True
    """if toggled, the actor's loss has the behaviour-cloning term; --no-bc leaves plain TD3 on the data (it fails)"""
    normalize_obs: bool = True
    """if toggled, standardise observations with the dataset's mean and std (saved with the model)"""
    learning_rate: float = 3e-4
    """the Adam learning rate of the actor and the critics"""
    batch_size: int = 256
    """transitions per gradient step, drawn uniformly with replacement"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: theta' <- tau * theta + (1 - tau) * theta'"""
    policy_noise: float = 0.2
    """std sigma of the target policy smoothing noise, in units of half the action range"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-noise_clip, noise_clip] (units of half the action range)"""
    policy_frequency: int = 2
    """critic gradient steps per actor step and target update: the policy delay d"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the actor and of each critic"""
    eval_every: int = 5_000
    """evaluate the policy every this many gradient steps (and after the last)"""
    eval_episodes: int = 10
    """deterministic episodes per evaluation"""
    log_every: int = 1_000
    """write the losses, the Q estimate and the gradient steps per second, and print a progress line, every this many gradient steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "policy_frequency", "eval_every", "eval_episodes", "log_every",
                 "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail(f"need 0 < --learning-rate < inf, 0 < --tau <= 1 and 0 < --gamma <= 1, got {args.learning_rate}, "
             f"{args.tau} and {args.gamma}")
    if not all(0 <= x < math.inf for x in (args.alpha, args.policy_noise, args.noise_clip)):
        fail(f"need 0 <= --alpha, --policy-noise, --noise-clip < inf, got {args.alpha}, {args.policy_noise} and "
             f"{args.noise_clip}")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    dataset = check_dataset(args.dataset_id)
    if not isinstance(dataset.action_space, gym.spaces.Box):
        fail(f"--dataset-id {args.dataset_id} has {dataset.action_space} actions; td3_bc.py needs Box (continuous) "
             "actions (Discrete data: bc.py)")


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


def td3_bc_lambda(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """lambda = alpha / mean |Q(s, pi(s))| over the batch, detached: the Q term's scale no longer depends on the
    reward's (paper section 5); no gradient flows through it."""
    return alpha / q.abs().mean().detach()


def td3_bc_actor_loss(q: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor, alpha: float, bc: bool) -> torch.Tensor:
    """TD3+BC's actor loss, -lambda * mean(Q(s, pi(s))) + mean((pi(s) - a)^2), from q = Q1(s, pi(s)), the actions
    pi = pi(s) and the dataset's actions; bc=False: TD3's -mean(Q(s, pi(s))) alone."""
    if not bc:
        return -q.mean()
    return -td3_bc_lambda(q, alpha) * q.mean() + F.mse_loss(pi, actions)


def twin_critic_loss(q1: torch.Tensor, q2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean((Q1 - y)^2) + mean((Q2 - y)^2): both critics regress on the same target y."""
    return F.mse_loss(q1, y) + F.mse_loss(q2, y)


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class BCPolicy(nn.Module):
    """pi(s) on raw observations: standardised with the dataset's statistics (buffers: saved with the weights),
    then an MLP; Box: scale * tanh(f) + bias inside the bounds; Discrete: the logits."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], discrete: bool,
                 action_low=None, action_high=None):
        super().__init__()
        self.discrete = discrete
        self.net = mlp(obs_dim, act_dim, hidden_sizes)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        if not discrete:
            low = torch.as_tensor(action_low, dtype=torch.float32)
            high = torch.as_tensor(action_high, dtype=torch.float32)
            self.register_buffer("action_scale", (high - low) / 2.0)
            self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net((obs - self.obs_mean) / self.obs_std)
        return out if self.discrete else self.action_scale * torch.tanh(out) + self.action_bias

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action evaluation plays: pi(s) in the environment's units (Box), or the most probable one (Discrete)."""
        out = self(obs)
        return out.argmax(dim=-1) if self.discrete else out


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


def smoothed_target_action(next_actions: torch.Tensor, noise: torch.Tensor, noise_clip: float, action_scale: torch.Tensor,
                           action_low: torch.Tensor, action_high: torch.Tensor) -> torch.Tensor:
    """a~ = clip(mu'(s') + scale * clip(eps, -c, c), low, high): target policy smoothing (paper eq. 14).

    next_actions is mu'(s'); noise is eps ~ N(0, sigma) in units of half the action range, drawn by the caller
    (so a test can inject it). Clipping the noise keeps a~ near mu'(s'); clipping the sum keeps it a legal action.
    """
    return (next_actions + action_scale * noise.clamp(-noise_clip, noise_clip)).clamp(action_low, action_high)


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


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


def load_model(path: str) -> tuple[BCPolicy, dict]:
    """The trained actor (a BCPolicy: pi(s) on raw observations) of a checkpoint written by this file, and the
    checkpoint."""
    ckpt = load_checkpoint(path, "td3_bc")
    policy = BCPolicy(**ckpt["model_args"])
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
    obs, next_obs, actions, rewards, terminations = (
        torch.as_tensor(data[k], dtype=torch.float32, device=device)
        for k in ("observations", "next_observations", "actions", "rewards", "terminations"))
    n, obs_dim, act_dim = len(obs), obs.shape[1], actions.shape[1]
    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes), "discrete": False,
                  "action_low": dataset.action_space.low.tolist(), "action_high": dataset.action_space.high.tolist()}
    actor = BCPolicy(**model_args).to(device)
    if args.normalize_obs:
        mean, std = obs_statistics(data["observations"])
        actor.obs_mean.copy_(torch.as_tensor(mean))
        actor.obs_std.copy_(torch.as_tensor(std))
    critic = TwinQCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    # fused=True: Adam's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, fused=True)
    action_low, action_high = actor.action_bias - actor.action_scale, actor.action_bias + actor.action_scale
    sampler = np.random.default_rng(args.seed)
    # the smoothing noise is drawn from torch's generator, which rng_state saves with the sampler's
    generators = {"sampler": sampler}
    returns_to_go = discounted_returns_to_go(data["rewards"], data["episode"], args.gamma)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        """s~ for the critics (the actor standardises inside, with the same buffers)."""
        return (x - actor.obs_mean) / actor.obs_std

    # The training state a checkpoint holds; resuming puts it back. global_step counts critic gradient steps, the
    # policy delay's clock too.
    global_step, best_score, last_score = 0, -math.inf, math.nan
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "td3_bc")
        check_offline_resume(ckpt, args, model_args)
        for name, obj in (("model", actor), ("critic", critic), ("actor_target", actor_target),
                          ("critic_target", critic_target), ("actor_optimizer", actor_optimizer),
                          ("critic_optimizer", critic_optimizer)):
            obj.load_state_dict(ckpt[name])
        global_step, best_score, last_score = ckpt["global_step"], ckpt["best_score"], ckpt["last_score"]
        set_rng_state(ckpt["rng"], generators)
        print(f"resumed from {args.resume} at gradient step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "td3_bc", "env_id": env_spec.id, "dataset_id": args.dataset_id, "model_args": model_args,
                "model": actor.state_dict(), "args": asdict(args), "critic": critic.state_dict(),
                "actor_target": actor_target.state_dict(), "critic_target": critic_target.state_dict(),
                "actor_optimizer": actor_optimizer.state_dict(), "critic_optimizer": critic_optimizer.state_dict(),
                "global_step": global_step, "best_score": best_score, "last_score": last_score,
                "rng": rng_state(generators)}

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
    print(f"{args.dataset_id}: {n:,} transitions in {len(data['episode_returns'])} episodes; evaluated on "
          f"{env_spec.id}; the data's discounted return G_t (gamma {args.gamma}): mean {returns_to_go.mean():.1f}, "
          f"max {returns_to_go.max():.1f}", flush=True)

    def run_evaluation() -> list[float]:
        """Evaluate, log, keep the best; returns the returns (its time is left out of the updates per second)."""
        nonlocal best_score, last_score, eval_seconds
        eval_start = time.time()
        returns = evaluate(actor, env_spec, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
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
    losses: dict[str, torch.Tensor] = {}  # the latest losses, detached; copied to the host only when logged

    while global_step < args.total_updates:
        idx = torch.from_numpy(sampler.integers(0, n, size=args.batch_size)).to(device)
        b_obs, b_actions, b_rewards, b_next_obs, b_terminations = (
            obs[idx], actions[idx], rewards[idx], next_obs[idx], terminations[idx])
        with torch.no_grad():
            noise = torch.randn_like(b_actions) * args.policy_noise
            next_actions = smoothed_target_action(actor_target(b_next_obs), noise, args.noise_clip, actor.action_scale,
                                                  action_low, action_high)
            next_q1, next_q2 = critic_target(normalise(b_next_obs), next_actions)
            y = td_target(b_rewards, b_terminations, torch.min(next_q1, next_q2), args.gamma)
        q1, q2 = critic(normalise(b_obs), b_actions)
        qf_loss = twin_critic_loss(q1, q2, y)
        critic_optimizer.zero_grad()
        qf_loss.backward()
        if args.nan_check and not math.isfinite(qf_loss.detach()):  # before the step: the networks stay finite
            fault("critic loss")
        critic_optimizer.step()
        global_step += 1
        losses.update(qf_loss=qf_loss.detach(), q_values=q1.detach().mean())

        if global_step % args.policy_frequency == 0:  # delayed policy updates, through Q1
            pi = actor(b_obs)
            q_pi = critic.q1(normalise(b_obs), pi)
            actor_loss = td3_bc_actor_loss(q_pi, pi, b_actions, args.alpha, args.bc)
            actor_optimizer.zero_grad()
            actor_loss.backward()  # also fills the critic's gradients; critic_optimizer.zero_grad() clears them
            if args.nan_check and not math.isfinite(actor_loss.detach()):
                fault("actor loss")
            actor_optimizer.step()
            soft_update(actor_target, actor, args.tau)
            soft_update(critic_target, critic, args.tau)
            losses.update(actor_loss=actor_loss.detach(), bc_loss=F.mse_loss(pi.detach(), b_actions),
                          lmbda=td3_bc_lambda(q_pi, args.alpha))

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = int((global_step - start_step) / (time.time() - start_time - eval_seconds))
            writer.add_scalar("charts/SPS", ups, global_step)  # gradient steps per second, evaluations left out
            values = {key: value.item() for key, value in losses.items()}
            for key, value in values.items():
                writer.add_scalar(f"losses/{key}", value, global_step)
            actor_text = f"  actor loss {values['actor_loss']:.4f}  bc {values['bc_loss']:.4f}" if "actor_loss" in values else ""
            print(f"update {global_step:>9,}  updates/s {ups:>6,}  critic loss {values['qf_loss']:.4f}  "
                  f"Q {values['q_values']:.1f}{actor_text}", flush=True)
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
        "q_values": float(losses["q_values"]),
        "data_return_to_go": float(returns_to_go.mean()),
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
