"""Deep Q-Network (DQN), with optional double Q-learning and a dueling head.

Papers: Mnih et al. (2015), "Human-level control through deep reinforcement learning", Nature 518,
https://doi.org/10.1038/nature14236; van Hasselt, Guez, Silver (2016), "Deep Reinforcement Learning with
Double Q-learning", https://arxiv.org/abs/1509.06461; Wang et al. (2016), "Dueling Network Architectures
for Deep Reinforcement Learning", https://arxiv.org/abs/1511.06581.

Run:
    python algorithms/dqn.py --env-id CartPole-v1
    python algorithms/dqn.py --env-id CartPole-v1 --double-q --dueling --num-envs 4
    python algorithms/dqn.py --help

The defaults are chosen for CartPole-v1 in 100k steps: a 128-128 MLP, lr 1e-3, batch 128, one gradient step
every 4 environment steps, the target network copied every 500 steps, epsilon 1 -> 0.02 over the first 10%
of training.
Tested: with --double-q, seed 1 reaches a greedy return of 475 on CartPole-v1 in 100k steps (tests/test_dqn.py).
Results: benchmark_results/dqn.md

The math, as written in the code below, for a sampled batch of transitions (s, a, r, s', terminated):
    target        y = r + gamma * (1 - terminated) * Q_target(s', a*)
                  a* = argmax_a Q_target(s', a)            (DQN)
                  a* = argmax_a Q_online(s', a)            (double DQN: select online, evaluate target)
    loss          L = mean( huber(Q_online(s, a) - y) )    (the Nature paper's error clipping; --loss mse for MSE)
    dueling head  Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')     (Wang et al., eq. 9)
    target net    theta' <- tau * theta + (1 - tau) * theta' every target_network_frequency steps (tau=1: copy)
    exploration   epsilon decays linearly from start_e to end_e over exploration_fraction * total_timesteps

Time limits: only `terminated` is stored as the transition's end. An episode cut by a time limit
(`truncated`) is stored with its real last observation (info["final_obs"], Gymnasium's same-step
autoreset mode) and terminated=0, so its target bootstraps as the Markov property requires.
More than one environment may run in parallel (--num-envs); every count (train_frequency,
target_network_frequency, learning_starts, the epsilon schedule) is in environment steps summed over
the environments, so --num-envs changes the data's decorrelation, not the schedule.

Long runs (the form of ppo.py, the same in every deep file):
    python algorithms/dqn.py --checkpoint-every 50000 --save-buffer    # runs/<run>/checkpoint_<step>.pt
    python algorithms/dqn.py --resume runs/<run>/checkpoint_<step>.pt  # continue up to --total-timesteps
A checkpoint holds the online and target networks, the optimiser, the step counters (next training phase, next
target update), every random generator's state, the classic-control environments' own state (other
environments start new episodes on resume) and, with --save-buffer, the replay buffer; resumed with all of it, a
run ends with the same parameters as one never interrupted. Ctrl-C or SIGTERM stops the run after the current
step's update, writes a checkpoint and exits 130 / 143 with the command that resumes it. The epsilon schedule
reads the progress through --total-timesteps: a larger value on resume stretches what is left of it. A NaN or
infinite observation, reward, loss or gradient norm stops the run (exit 3), keeping the last finite state in
runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.

--async-envs steps the environments in worker processes (gym.vector.AsyncVectorEnv), with the same results for the
same seed. It pays where an environment step costs more than the network's (a MuJoCo step can cost less than the
round trip between processes); its checkpoints hold no environment state, so a resumed run starts new episodes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections import deque
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
    exp_name: str = "dqn"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small MLPs are faster on the CPU)"""
    torch_threads: int = 1
    """torch CPU threads; small networks run fastest on one"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    capture_video: bool = False
    """if toggled, record videos of the first environment into videos/{run_name}"""
    save_model: bool = False
    """if toggled, save the trained model to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""
    async_envs: bool = False
    """if toggled, step the environments in parallel worker processes (gym.vector.AsyncVectorEnv); the same results as the default SyncVectorEnv for the same seed"""
    save_buffer: bool = False
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the replay buffer (its size is printed)"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (discrete actions, flat observations)"""
    total_timesteps: int = 100_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments"""
    learning_rate: float = 1e-3
    """the Adam learning rate"""
    buffer_size: int = 100_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate: 1.0 copies the online network, < 1 is Polyak averaging"""
    target_network_frequency: int = 500
    """environment steps between target network updates"""
    batch_size: int = 128
    """transitions per gradient step"""
    start_e: float = 1.0
    """the starting exploration epsilon"""
    end_e: float = 0.02
    """the final exploration epsilon"""
    exploration_fraction: float = 0.1
    """the fraction of total_timesteps over which epsilon decays from start_e to end_e"""
    learning_starts: int = 1000
    """environment steps of random-policy data collected before learning starts"""
    train_frequency: int = 4
    """environment steps between training phases"""
    gradient_steps: int = 1
    """gradient steps in each training phase"""
    double_q: bool = False
    """if toggled, use the double DQN target (online network selects, target network evaluates)"""
    dueling: bool = False
    """if toggled, use the dueling head Q = V + A - mean(A)"""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """widths of the ReLU hidden layers"""
    loss: str = "huber"
    """the TD loss: huber (smooth L1, as the Nature DQN and SB3) or mse"""
    max_grad_norm: float = 10.0
    """the maximum norm of the gradient (global clipping, as SB3's DQN)"""
    eval_episodes: int = 10
    """episodes of the final greedy evaluation"""
    log_every: int = 10_000
    """print a progress line every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of an --env-id, else gym.error.Error with a one-line reason. In Gymnasium's
    "module:Env-v0" form the module registers Env-v0 when imported: it is imported first, as gym.make does
    (gym.spec alone does not), so that a user's own environment passes the checks."""
    module, colon, name = env_id.rpartition(":")
    if colon:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a user's module can fail to import in any way
            reason = (str(error).splitlines() or [""])[0]
            raise gym.error.Error(f"module {module!r} cannot be imported: {type(error).__name__}: {reason}") from None
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise gym.error.Error(f"module {module!r} does not register {name}: {reason}" if colon else reason) from None


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                 "target_network_frequency", "eval_episodes", "log_every", "torch_threads", "keep_checkpoints"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not args.max_grad_norm > 0 or not args.checkpoint_every >= 0:
        fail(f"need 0 < --learning-rate < inf, --max-grad-norm > 0 and --checkpoint-every >= 0, got "
             f"{args.learning_rate}, {args.max_grad_norm} and {args.checkpoint_every}")
    if args.buffer_size < args.num_envs:
        fail(f"--buffer-size {args.buffer_size} is too small: each of the {args.num_envs} environments needs a row")
    if not all(h > 0 for h in args.hidden_sizes):
        fail(f"--hidden-sizes must be positive widths, got {' '.join(map(str, args.hidden_sizes))}")
    if not (args.learning_starts >= 0 and 0 < args.tau <= 1 and 0 < args.gamma <= 1):
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not (0 <= args.start_e <= 1 and 0 <= args.end_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need --start-e and --end-e in [0, 1] and 0 < --exploration-fraction <= 1")
    if args.loss not in ("huber", "mse"):
        fail(f"--loss must be huber or mse, got {args.loss}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or LunarLander-v3")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    flat_box = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    if not (isinstance(action_space, gym.spaces.Discrete) and flat_box):
        fail(f"dqn.py needs Discrete actions and flat Box observations, {args.env_id} has {action_space} and "
             f"{obs_space}; use e.g. CartPole-v1 (Box actions: ddpg.py, td3.py, sac.py; images: dqn_atari.py)")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def in_worker(thunk):
    """An environment thunk for AsyncVectorEnv's worker processes: they ignore SIGINT and SIGTERM (Ctrl-C reaches the
    whole process group); the main process stops them."""

    def worker_thunk():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return thunk()

    return worker_thunk


def dueling_aggregate(value: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), the mean over the action dimension (dim 1).

    value [B, 1], advantages [B, n_actions]; with a trailing atom dimension ([B, 1, n_atoms] and
    [B, n_actions, n_atoms]) the mean is taken per atom. Subtracting the mean makes V and A identifiable
    (Wang et al., 2016, eq. 9).
    """
    return value + advantages - advantages.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    """An MLP with one Q-value per action; with dueling, a value head and an advantage head."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...] = (128, 128), dueling: bool = False):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.dueling = dueling
        if dueling:
            self.value_head = nn.Linear(width, 1)
            self.advantage_head = nn.Linear(width, n_actions)
        else:
            self.q_head = nn.Linear(width, n_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q [B, n_actions]."""
        h = self.trunk(x)
        if self.dueling:
            return dueling_aggregate(self.value_head(h), self.advantage_head(h))
        return self.q_head(h)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_a Q(s, a): x [B, obs_dim] -> actions [B]."""
        return self(x).argmax(dim=1)


class ReplayBuffer:
    """A ring of transitions in preallocated numpy arrays, a row per vector step and a column per environment
    (each environment's transitions in its own column); uniform sampling."""

    def __init__(self, capacity: int, num_envs: int, obs_dim: int, seed: int):
        self.rows, self.num_envs = capacity // num_envs, num_envs  # rows per environment, columns
        self.obs = np.zeros((self.rows, num_envs, obs_dim), dtype=np.float32)
        self.actions = np.zeros((self.rows, num_envs), dtype=np.int64)
        self.rewards = np.zeros((self.rows, num_envs), dtype=np.float32)
        self.next_obs = np.zeros((self.rows, num_envs, obs_dim), dtype=np.float32)
        self.terminations = np.zeros((self.rows, num_envs), dtype=np.float32)
        self.pos, self.filled = 0, 0  # the next row to write, the rows written so far
        self.rng = np.random.default_rng(seed)

    def add(self, obs, actions, rewards, next_obs, terminations) -> None:
        """Add one vector step: arrays with a leading num_envs dimension, one transition per environment."""
        j = self.pos
        self.obs[j], self.actions[j], self.rewards[j] = obs, actions, rewards
        self.next_obs[j], self.terminations[j] = next_obs, terminations
        self.pos = (j + 1) % self.rows
        self.filled = min(self.filled + 1, self.rows)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(obs, actions, rewards, next_obs, terminations) of batch_size transitions drawn uniformly."""
        envs = self.rng.integers(0, self.num_envs, size=batch_size)
        rows = self.rng.integers(0, self.filled, size=batch_size)
        return tuple(torch.from_numpy(a[rows, envs]).to(device) for a in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.terminations))

    def state_dict(self) -> dict:
        """The stored transitions and the ring's position, as tensors (checkpoints with --save-buffer)."""
        arrays = {k: torch.from_numpy(getattr(self, k)) for k in ("obs", "actions", "rewards", "next_obs", "terminations")}
        return {**arrays, "pos": self.pos, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if state["obs"].shape != self.obs.shape:
            fail(f"the checkpoint's replay buffer has another shape ({tuple(state['obs'].shape)}, here "
                 f"{self.obs.shape}): resume with its --buffer-size and --num-envs")
        for k in ("obs", "actions", "rewards", "next_obs", "terminations"):
            getattr(self, k)[...] = state[k].numpy()
        self.pos, self.filled = state["pos"], state["filled"]

    def __len__(self) -> int:
        return self.filled * self.num_envs


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """start -> end linearly over `duration` (of training's progress, in [0, 1]), then end (it decays or grows)."""
    return start + min(t / duration, 1.0) * (end - start)


def dqn_target(
    rewards: torch.Tensor,
    terminations: torch.Tensor,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None,
    gamma: float | torch.Tensor,
) -> torch.Tensor:
    """TD target y = r + gamma * (1 - terminated) * Q_target(s', a*).

    a* is the target network's argmax (DQN), or the online network's argmax when next_q_online is
    given (double DQN: the online network selects the action, the target network evaluates it).
    gamma is a float or one discount per sample [B] (gamma^m for an m-step return).
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_value


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
# TensorBoard steps.


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


def env_state(envs, obs: np.ndarray) -> dict:
    """What continues the episodes in progress: each sub-environment's simulator state, random generator and
    time-limit counter, the episode statistics so far and the current observation. Only the classic-control
    environments keep their whole state in plain numbers (`unwrapped.state`); for the others (Box2D, MuJoCo,
    Atari), and for any in AsyncVectorEnv's worker processes, `resumable` is False and a resumed run starts new
    episodes."""
    subs = getattr(envs.unwrapped, "envs", [])  # AsyncVectorEnv's sub-environments live in its worker processes
    if not subs or not all(type(e.unwrapped).__module__.startswith("gymnasium.envs.classic_control") for e in subs):
        return {"resumable": False}
    states = []
    for e in subs:
        limit = e
        while not isinstance(limit, gym.wrappers.TimeLimit) and isinstance(limit, gym.Wrapper):
            limit = limit.env
        states.append({"state": torch.as_tensor(np.asarray(e.unwrapped.state, dtype=np.float64)),
                       "np_random": e.unwrapped.np_random.bit_generator.state,
                       "elapsed_steps": getattr(limit, "_elapsed_steps", None)})
    return {"resumable": True, "subs": states, "obs": torch.as_tensor(obs),
            "episode_returns": torch.as_tensor(envs.episode_returns), "episode_lengths": torch.as_tensor(envs.episode_lengths)}


def set_env_state(envs, state: dict, seed: int) -> np.ndarray:
    """Reset the environments, then put back the saved episodes where `state` holds them; returns the observation."""
    obs, _ = envs.reset(seed=seed)
    subs = getattr(envs.unwrapped, "envs", [])  # none in this process with AsyncVectorEnv
    if not state["resumable"] or len(state["subs"]) != len(subs):
        print("the environments' state was not saved or cannot be put back (only classic control's, in this "
              "process): new episodes start", flush=True)
        return obs
    for e, s in zip(subs, state["subs"], strict=True):
        e.unwrapped.state = s["state"].numpy().copy()
        e.unwrapped.np_random.bit_generator.state = s["np_random"]
        limit = e
        while not isinstance(limit, gym.wrappers.TimeLimit) and isinstance(limit, gym.Wrapper):
            limit = limit.env
        if s["elapsed_steps"] is not None:
            limit._elapsed_steps = s["elapsed_steps"]
    envs.episode_returns[:] = state["episode_returns"].numpy()
    envs.episode_lengths[:] = state["episode_lengths"].numpy()
    return state["obs"].numpy().copy()


def progress(step: int, total: int, origin: tuple[int, float]) -> float:
    """The fraction of training done, which every schedule reads. `origin` is (0, 0.0) for a fresh run; a run resumed
    with a different --total-timesteps sets it to (the resumed step, the progress there), stretching what is left."""
    start, done = origin
    return done + (1.0 - done) * (step - start) / (total - start)


def check_resume(ckpt: dict, args, model_args: dict) -> None:
    """A checkpoint to resume holds a training state for this environment and these network sizes."""
    if "global_step" not in ckpt:
        fail(f"--resume {args.resume} holds no training state")
    if ckpt["env_id"] != args.env_id:
        fail(f"--resume {args.resume} was trained on {ckpt['env_id']}, not --env-id {args.env_id}")
    if ckpt["model_args"] != model_args:
        fail(f"--resume {args.resume} holds networks of other sizes ({ckpt['model_args']}, "
             f"here {model_args}); resume with the options it was trained with")
    if not ckpt["global_step"] < args.total_timesteps:
        fail(f"--resume {args.resume} is at step {ckpt['global_step']:,}: --total-timesteps must be larger "
             f"than that, got {args.total_timesteps:,}")


def finite(x: np.ndarray) -> bool:
    """True when every entry is finite (integer arrays, such as Atari frames, always are)."""
    return x.dtype.kind != "f" or bool(np.isfinite(x).all())


def nonfinite_step(obs: np.ndarray, rewards: np.ndarray, infos: dict) -> str:
    """What is not finite in a vector step: "observation" (the last observation of an episode that ended, in
    info["final_obs"], included), "reward", or "" when all is finite."""
    finals = [infos["final_obs"][i] for i in np.flatnonzero(infos["_final_obs"])] if "final_obs" in infos else []
    if not (finite(obs) and all(finite(np.asarray(f)) for f in finals)):
        return "observation"
    return "" if finite(np.asarray(rewards)) else "reward"


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


def load_model(path: str) -> tuple[QNetwork, dict]:
    ckpt = load_checkpoint(path, "dqn")
    q_network = QNetwork(**ckpt["model_args"])
    q_network.load_state_dict(ckpt["model"])
    return q_network, ckpt


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
    # report: called at every progress line with (step, mean of the last 20 training returns);
    # returning True ends training (the run is then evaluated and returned as usual).
    check_args(args)
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    rng = np.random.default_rng(args.seed)

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first
    # observation and puts the last one in info["final_obs"], which is what the transition needs.
    # --async-envs: each environment steps in a worker process that ignores signals (in_worker); same results.
    thunks = [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)]
    vector_env = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = vector_env([in_worker(t) for t in thunks] if args.async_envs else thunks,
                      autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)

    model_args = dict(obs_dim=obs_dim, n_actions=n_actions, hidden_sizes=list(args.hidden_sizes), dueling=args.dueling)
    q_network = QNetwork(**model_args).to(device)
    target_network = QNetwork(**model_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    # fused: one kernel updates every parameter (a loop over the tensors without it; the same arithmetic)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, args.num_envs, obs_dim, args.seed)
    generators = {"explore": rng, "buffer": rb.rng, "action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back.
    global_step, origin = 0, (0, 0.0)
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "dqn")
        check_resume(ckpt, args, model_args)
        q_network.load_state_dict(ckpt["model"])
        target_network.load_state_dict(ckpt["target_network"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        next_train, next_target = ckpt["next_train"], ckpt["next_target"]
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (global_step, progress(global_step, ckpt["args"]["total_timesteps"], origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {len(rb):,} transitions)", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        ckpt = {"algo": "dqn", "env_id": args.env_id, "model_args": model_args, "model": q_network.state_dict(),
                "args": asdict(args), "target_network": target_network.state_dict(), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "next_train": next_train, "next_target": next_target,
                "schedule_origin": origin, "rng": rng_state(generators),
                "envs": env_state(envs, obs) if with_envs else {"resumable": False}}
        if args.save_buffer:
            ckpt["buffer"] = rb.state_dict()
        return ckpt

    def fault(quantity: str) -> None:  # the networks are still finite: the check runs before they change
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint(with_envs=False))
        envs.close()
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

    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    loss = q_values = None

    while global_step < args.total_timesteps:
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction,
                                  progress(global_step, args.total_timesteps, origin))
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            actions = q_network.greedy_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            explore = rng.random(args.num_envs) < epsilon  # epsilon-greedy, decided per environment
            if explore.any():
                actions = np.where(explore, envs.action_space.sample(), actions)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        # the transition's next observation is the real last one at an episode end, not the reset one
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        rb.add(obs, actions, rewards, real_next_obs, terminations)  # terminations only: truncation bootstraps
        obs = next_obs

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        train_now = global_step >= next_train
        if train_now:
            next_train += args.train_frequency
        # (a run resumed without its buffer waits until the buffer holds a batch)
        if train_now and global_step > args.learning_starts and len(rb) >= args.batch_size:
            for _ in range(args.gradient_steps):
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations = rb.sample(args.batch_size, device)
                with torch.no_grad():
                    next_q_online = q_network(b_next_obs) if args.double_q else None
                    target = dqn_target(b_rewards, b_terminations, target_network(b_next_obs), next_q_online, args.gamma)
                q_taken = q_network(b_obs).gather(1, b_actions.unsqueeze(1)).squeeze(1)
                loss = F.smooth_l1_loss(q_taken, target) if args.loss == "huber" else F.mse_loss(q_taken, target)
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm, foreach=True)
                # one host sync per gradient step; before optimizer.step(), so the network stays finite
                if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
                    fault("loss" if not torch.isfinite(loss) else "gradient norm")
                optimizer.step()
            q_values = q_taken.detach().mean()

        if global_step >= next_target:
            next_target += args.target_network_frequency
            soft_update(target_network, q_network, args.tau)

        if global_step >= next_log:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            if loss is not None:
                writer.add_scalar("losses/td_loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  epsilon {epsilon:.3f}  return(last 20 episodes) {recent}",
                  flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the step's update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
        if stop.signum or (args.checkpoint_every and global_step >= next_checkpoint):
            next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
            path = write_checkpoint(run_dir, checkpoint(), written, args.keep_checkpoints)
            if stop.signum:
                envs.close()
                close_logs(writer, args.track)
                print(f"stopped by {signal.Signals(stop.signum).name} at step {global_step:,}; resume with: "
                      f"{resume_command(args, path)}", file=sys.stderr, flush=True)
                sys.exit(128 + stop.signum)
    stop.restore()

    train_time = time.time() - start_time
    writer.add_scalar("charts/SPS", int((global_step - start_step) / train_time), global_step)
    writer.add_scalar("charts/epsilon", epsilon, global_step)
    if loss is not None:
        writer.add_scalar("losses/td_loss", loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
    envs.close()

    eval_returns = evaluate(q_network, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(greedy); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}" + (" (with the replay buffer)" if args.save_buffer else ""))
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
