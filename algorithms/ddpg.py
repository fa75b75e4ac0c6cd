"""Deep Deterministic Policy Gradient (DDPG) for continuous actions.

Paper: Lillicrap, Hunt, Pritzel, Heess, Erez, Tassa, Silver, Wierstra (2016), "Continuous control with
deep reinforcement learning", https://arxiv.org/abs/1509.02971. The deterministic policy gradient:
Silver et al. (2014), "Deterministic Policy Gradient Algorithms".

Run:
    python algorithms/ddpg.py                                   # Pendulum-v1, 20k steps
    python algorithms/ddpg.py --env-id HalfCheetah-v5 --total-timesteps 1000000 --learning-starts 5000
    python algorithms/ddpg.py --save-model --save-buffer        # the final state, which can resume
    python algorithms/ddpg.py --resume runs/<run>/ddpg.pt --total-timesteps 40000
    python algorithms/ddpg.py --help

Defaults are CleanRL's / Stable-Baselines3's MuJoCo settings (256-256 MLPs, Adam lr 3e-4, buffer 1e6,
batch 256, gamma 0.99, tau 0.005, Gaussian exploration noise of std 0.1 in units of half the action
range, the actor and the targets updated every second critic step as in CleanRL's ddpg_continuous_action)
except two chosen for the default environment, Pendulum-v1: learning_starts 1000 (MuJoCo: 5000) and
total_timesteps 20000 (MuJoCo: 1e6). The paper itself used Ornstein-Uhlenbeck noise, 400-300 networks,
lr 1e-4 / 1e-3, batch 64 and an L2 penalty on the critic; Fujimoto et al. (2018) found uncorrelated
Gaussian noise works as well, and the later reimplementations dropped the rest.
Tested: seed 1 reaches a mean evaluation return >= -200 on Pendulum-v1 in 20k steps (tests/test_ddpg.py, slow).
Results: benchmark_results/ddpg.md

Actions are in the environment's units everywhere (the replay buffer, the critic, exploration): the actor
ends in tanh, scaled into the bounds, mu(s) = scale * tanh(f(s)) + bias with scale = (high - low) / 2 and
bias = (high + low) / 2; exploration adds scale * N(0, sigma^2) and clips to [low, high].

The math, as written in the code below, for a sampled batch of transitions (s, a, r, s', terminated):
    critic target   y = r + gamma * (1 - terminated) * Q'(s', mu'(s'))            (paper eq. 5, Alg. 1)
    critic loss     L_Q = mean( (Q(s, a) - y)^2 )
    actor loss      L_mu = -mean( Q(s, mu(s)) )      (its gradient is the deterministic policy gradient)
    targets         theta' <- tau * theta + (1 - tau) * theta'   for the actor and the critic (Polyak)
The actor step and the target update run every policy_frequency critic steps (1 = the paper).

Time limits: only `terminated` is stored as the transition's end. An episode cut by a time limit
(`truncated`, Pendulum's 200 steps) is stored with its real last observation (info["final_obs"],
Gymnasium's same-step autoreset mode) and terminated=0, so its target bootstraps from Q'(s', mu'(s')).
More than one environment may run in parallel (--num-envs); every count (learning_starts,
train_frequency, log_every, total_timesteps) is in environment steps summed over the environments,
so the number of gradient steps per environment step does not depend on --num-envs.

Long runs (the same form in every deep file of the collection):
    python algorithms/ddpg.py --checkpoint-every 5000 --save-buffer   # runs/<run>/checkpoint_<step>.pt, newest 2 kept
    python algorithms/ddpg.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the actor (under "model", what `evaluate` needs), the critic, both target networks, both Adam
states, the step and update counters (next_train, n_updates: the policy_frequency clock), every random generator's
state (Python's, numpy's, torch's, which draws the exploration noise, the replay sampler's, the action space's) and
the environments' own state; with --save-buffer also the replay buffer (it can be large: 1e6 MuJoCo transitions are
about 100 MB; its size is printed). So, with --save-buffer, a resumed run ends with the same parameters as one never
interrupted (classic-control environments such as Pendulum-v1 only: their whole state is a few numbers; with any
other environment, MuJoCo's included, the resumed run starts new episodes). Without the buffer, updates wait until
the empty buffer holds batch_size transitions. Ctrl-C or SIGTERM stops the run after the current step's update,
writes a checkpoint and exits with status 130 / 143, printing the command that resumes it; a second signal quits at
once. A resumed run writes to a new run directory whose TensorBoard steps continue the old ones; --save-model's
file is the same training state and resumes with a larger --total-timesteps. A NaN or infinite observation, reward,
critic loss or actor loss stops the run at once (exit 3) and keeps the last finite state in
runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.

--async-envs steps the environments in worker processes (gym.vector.AsyncVectorEnv), with the same results for the
same seed. It pays where an environment step costs more than the network's (a MuJoCo step can cost less than the
round trip between processes); its checkpoints hold no environment state, so a resumed run starts new episodes.
"""

from __future__ import annotations

import copy
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
    exp_name: str = "ddpg"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
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
    capture_video: bool = False
    """if toggled, record videos of the first environment into videos/{run_name}"""
    save_model: bool = False
    """if toggled, save the model and training state to runs/{run_name}/{exp_name}.pt"""
    save_buffer: bool = False
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the replay buffer (it can be large: its size is printed)"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward or loss stops the run (exit 3)"""
    async_envs: bool = False
    """if toggled, step the environments in parallel worker processes (gym.vector.AsyncVectorEnv); the same results as the default SyncVectorEnv for the same seed"""

    env_id: str = "Pendulum-v1"
    """the Gymnasium id of the environment (bounded Box actions, flat Box observations)"""
    total_timesteps: int = 20_000
    """total environment steps, summed over the parallel environments (MuJoCo: 1e6)"""
    num_envs: int = 1
    """the number of parallel environments"""
    learning_rate: float = 3e-4
    """the Adam learning rate of the actor and the critic"""
    buffer_size: int = 1_000_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: theta' <- tau * theta + (1 - tau) * theta'"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_starts: int = 1000
    """environment steps of uniformly random actions before learning starts (MuJoCo: 5000)"""
    train_frequency: int = 1
    """environment steps per critic gradient step"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise, in units of half the action range"""
    policy_frequency: int = 2
    """critic gradient steps per actor step and target update (CleanRL: 2; the paper: 1)"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the actor and of the critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation"""
    log_every: int = 5_000
    """write the losses and SPS, and print a progress line, every this many environment steps"""


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
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "policy_frequency",
                 "eval_episodes", "log_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not args.learning_starts >= 0 or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not 0 < args.learning_rate < math.inf or not 0 <= args.exploration_noise < math.inf:
        fail("need 0 < --learning-rate < inf and 0 <= --exploration-noise < inf")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    check_env(args.env_id)
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def check_env(env_id: str) -> None:
    """The environment exists and has bounded Box actions and flat Box observations."""
    try:
        env_spec(env_id)
    except gym.error.Error as error:
        fail(f"--env-id {env_id} is not a registered Gymnasium environment ({error}); try Pendulum-v1 or HalfCheetah-v5")
    try:
        probe = gym.make(env_id)
    except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency (mujoco, box2d)
        fail(f"--env-id {env_id} cannot be created: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        fail(f"--env-id {env_id} has {action_space} actions; this algorithm needs a flat Box (continuous) action "
             "space, e.g. Pendulum-v1 (discrete actions: dqn.py, ppo.py)")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        fail(f"--env-id {env_id} has unbounded actions {action_space}; tanh needs finite bounds to scale to")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--env-id {env_id} has {obs_space} observations; this algorithm needs a flat Box observation, "
             "e.g. Pendulum-v1")


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


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class Actor(nn.Module):
    """The deterministic policy mu(s) = action_scale * tanh(f(s)) + action_bias: always inside [low, high]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], action_low, action_high):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden_sizes)
        # buffers, not parameters: saved in the state_dict (evaluation needs them), never trained
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_scale * torch.tanh(self.net(obs)) + self.action_bias

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """mu(s) in the environment's units, without exploration noise (what evaluation plays)."""
        return self(obs)


class QCritic(nn.Module):
    """Q(s, a): the action enters with the observation (as CleanRL and SB3)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden_sizes)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], dim=1)).squeeze(1)


class ReplayBuffer:
    """A ring buffer of transitions in preallocated numpy arrays; uniform sampling."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminations")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)  # in the environment's units
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, next_obs, actions, rewards, terminations) -> None:
        """Add one vector step: a transition per environment."""
        for i in range(len(actions)):
            j = self.pos
            self.obs[j], self.next_obs[j], self.actions[j] = obs[i], next_obs[i], actions[i]
            self.rewards[j], self.terminations[j] = rewards[i], terminations[i]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """A batch (obs, actions, rewards, next_obs, terminations), drawn uniformly with replacement."""
        idx = self.rng.integers(0, self.size, size=batch_size)
        return tuple(torch.from_numpy(getattr(self, f)[idx]) for f in self.FIELDS)

    def state_dict(self) -> dict:
        """The stored part only (the first `size` rows), as tensors so torch.load(weights_only=True) reads it."""
        return {"pos": self.pos, "size": self.size,
                **{f: torch.from_numpy(getattr(self, f)[: self.size].copy()) for f in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        for f in self.FIELDS:
            getattr(self, f)[: state["size"]] = state[f].numpy()
        self.size, self.pos = state["size"], state["pos"] % self.capacity


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


def load_model(path: str) -> tuple[Actor, dict]:
    ckpt = load_checkpoint(path, "ddpg")
    actor = Actor(**ckpt["model_args"])
    actor.load_state_dict(ckpt["model"])
    return actor, ckpt


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
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

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
    act_dim = int(np.prod(envs.single_action_space.shape))
    low, high = envs.single_action_space.low, envs.single_action_space.high
    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes),
                  "action_low": low.tolist(), "action_high": high.tolist()}

    actor = Actor(**model_args).to(device)
    critic = QCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    # fused=True: Adam's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, args.seed)
    # the exploration noise is drawn from torch's generator, which rng_state saves with these
    generators = {"buffer": rb.rng, "action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back. n_updates: critic gradient steps so far (the
    # policy_frequency clock); next_train: the step of the next critic step, one per train_frequency environment
    # steps after learning_starts.
    global_step, n_updates, next_train = 0, 0, args.learning_starts + args.train_frequency
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "ddpg")
        check_resume(ckpt, args, model_args)
        if ckpt.get("buffer", {}).get("size", 0) > args.buffer_size:
            fail(f"--resume {args.resume} holds {ckpt['buffer']['size']} transitions, more than --buffer-size {args.buffer_size}")
        for name, obj in (("model", actor), ("critic", critic), ("actor_target", actor_target),
                          ("critic_target", critic_target), ("actor_optimizer", actor_optimizer),
                          ("critic_optimizer", critic_optimizer)):
            obj.load_state_dict(ckpt[name])
        global_step, n_updates = ckpt["global_step"], ckpt["n_updates"]
        next_train = max(ckpt["next_train"], next_train)  # a larger --learning-starts postpones learning
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {rb.size:,} transitions)", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "ddpg", "env_id": args.env_id, "model_args": model_args, "model": actor.state_dict(),
                "args": asdict(args), "critic": critic.state_dict(), "actor_target": actor_target.state_dict(),
                "critic_target": critic_target.state_dict(), "actor_optimizer": actor_optimizer.state_dict(),
                "critic_optimizer": critic_optimizer.state_dict(), "global_step": global_step,
                "n_updates": n_updates, "next_train": next_train, "rng": rng_state(generators),
                "envs": env_state(envs, obs) if with_envs else {"resumable": False},
                **({"buffer": rb.state_dict()} if args.save_buffer else {})}

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
    losses: dict[str, torch.Tensor] = {}  # the latest losses, detached; copied to the host only when logged

    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
                actions += actor.action_scale * args.exploration_noise * torch.randn_like(actions)
            actions = np.clip(actions.cpu().numpy(), low, high)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        # the transition's next observation is the real last one at an episode end, not the reset one
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        rb.add(obs, real_next_obs, actions, rewards, terminations)  # terminations only: truncation bootstraps
        obs = next_obs

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        # NaN checks of the updates: each loss before its optimizer.step() (one host sync each), so the networks stay
        # finite; no gradient norm (these files do not clip, and computing one would cost every update)
        while next_train <= global_step:
            next_train += args.train_frequency
            if rb.size < args.batch_size:  # only after resuming without the buffer
                continue
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = (t.to(device) for t in rb.sample(args.batch_size))
            with torch.no_grad():
                next_q = critic_target(b_next_obs, actor_target(b_next_obs))
                y = td_target(b_rewards, b_terminations, next_q, args.gamma)
            q = critic(b_obs, b_actions)
            qf_loss = F.mse_loss(q, y)
            critic_optimizer.zero_grad()
            qf_loss.backward()
            if args.nan_check and not math.isfinite(qf_loss.detach()):
                fault("critic loss")
            critic_optimizer.step()
            n_updates += 1
            losses.update(qf_loss=qf_loss.detach(), q_values=q.detach().mean())

            if n_updates % args.policy_frequency == 0:  # the deterministic policy gradient through Q
                actor_loss = -critic(b_obs, actor(b_obs)).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()  # also fills the critic's gradients; critic_optimizer.zero_grad() clears them
                if args.nan_check and not math.isfinite(actor_loss.detach()):
                    fault("actor loss")
                actor_optimizer.step()
                soft_update(actor_target, actor, args.tau)
                soft_update(critic_target, critic, args.tau)
                losses.update(actor_loss=actor_loss.detach())

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            for key, value in losses.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  updates {n_updates:>9,}  return(last 20 episodes) {recent}",
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
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
    envs.close()

    eval_returns = evaluate(actor, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB"
              + (", with the replay buffer)" if args.save_buffer else ")"))
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "n_updates": n_updates,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
