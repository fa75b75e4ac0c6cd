"""Deep Q-Network (DQN) on Atari, with the Nature CNN and a replay memory that stores each frame once.

Paper: Mnih et al. (2015), "Human-level control through deep reinforcement learning", Nature 518,
https://doi.org/10.1038/nature14236 (network, preprocessing and hyperparameters: its Methods and Extended
Data Table 1). The preprocessing is the one ppo_atari.py uses (Machado et al., 2018,
https://arxiv.org/abs/1709.06009, discuss it); dqn.py is the same algorithm on flat observations.

Run:
    python algorithms/dqn_atari.py --env-id BreakoutNoFrameskip-v4
    python algorithms/dqn_atari.py --env-id PongNoFrameskip-v4 --total-timesteps 2000000 --seed 2
    python algorithms/dqn_atari.py --help            # every hyperparameter, with its meaning

The defaults are CleanRL's dqn_atari.py settings: Adam lr 1e-4, replay memory 1M, batch 32, gamma 0.99,
the target network copied every 1000 agent steps, one gradient step every 4 agent steps, epsilon 1 -> 0.01
over the first 10% of the run, learning from step 80k, 10M agent steps in all (40M frames). The paper
itself (Extended Data Table 1) used RMSProp with lr 2.5e-4, a target network update frequency of 10,000,
epsilon 1 -> 0.1 over the first 1M steps and a replay start size of 50,000; the memory size (1M), batch
(32), gamma (0.99), update frequency (4) and no-op maximum (30) are the same here. `--total-timesteps`
counts agent steps summed over the environments; each agent step is 4 emulator frames.

The math, as written in the code below, for a sampled batch of transitions (s, a, r, s', terminated):
    target        y = r + gamma * (1 - terminated) * Q_target(s', a*),   a* = argmax_a Q_target(s', a)
                  (--double-q: a* = argmax_a Q_online(s', a), van Hasselt et al., 2016, as in dqn.py)
    loss          L = mean( huber(Q_online(s, a) - y) )     (the paper's "error clipping": the gradient of
                                                             the squared error clipped to [-1, 1])
    target net    theta' <- tau * theta + (1 - tau) * theta' every target_network_frequency steps (tau=1: copy)
    exploration   epsilon decays linearly from start_e to end_e over exploration_fraction * total_timesteps
    network       Q(s, .) = NatureCNN(s / 255), s = the last 4 preprocessed frames, uint8 (4, 84, 84)

Preprocessing (make_env lists every wrapper and why it sits where it does): a random number (up to 30) of
no-op frames at the start of each game; each action repeated for 4 frames, the rewards summed and the
pixel-wise maximum of the last two frames kept; a lost life is a terminal state for the learner
("episodic life") but only a game over restarts the game; FIRE after each reset in games that need it;
greyscale, 84x84; rewards clipped to their sign for learning; the last 4 frames stacked. The score that is
logged (charts/episodic_return) and evaluated is the raw game score of whole games, across lives.

Time limits: a transition ends an episode as `terminated` (a lost life, a game over) or `truncated` (the
emulator's 108,000-frame cap). Only `terminated` removes the bootstrap term; a truncated transition keeps
its real last observation (info["final_obs"], Gymnasium's same-step autoreset mode), so its target
bootstraps from it.

More than one environment may run in parallel (--num-envs; 1 by default, as in the paper): each has its own
column of the replay memory, and every count (train_frequency, target_network_frequency, learning_starts,
the epsilon schedule) is in agent steps summed over the environments, as in dqn.py.

The replay memory (FrameReplayBuffer) stores frames, not observations. A stacked observation holds 4 frames
and consecutive observations share 3 of them, so storing (s, s') pairs of stacks (the naive layout) keeps
each frame 8 times. Here each environment has its own column of a ring of rows; a row holds one 84x84
uint8 frame (the newest frame of one observation), the action taken from it, the clipped reward, and three
flags: `terminated`, `first` (the row starts an episode) and `valid` (an action was taken from this row, so
it is a transition whose next observation is the following row). Observation i is rebuilt from rows
i-3..i, walking back no further than its episode's first row and repeating that row instead, which is what
FrameStackObservation (padding "reset") does after a reset, so the network trains on exactly the stacks it
acted on. At an episode end the episode's last frame (from info["final_obs"]) is written as a row of its
own that is never sampled as a state, and the next episode's first frame follows it: the next observation
of every transition is simply the following row, also for terminated and truncated transitions.
    memory per transition: 7056 (frame) + 1 (action) + 4 (reward) + 3 (flags) = 7064 bytes, plus one frame
    per episode end (about 1% more with episodic life), against 2 x 4 x 84 x 84 = 56,448 bytes for the naive
    layout: 8x less; the default 1M-row memory takes about 7.1 GB instead of 56 GB. Rows are allocated
    lazily by the operating system (np.zeros), so a short run touches only what it fills.
A row whose 3 predecessors in its column have already been overwritten (the 3 oldest rows of a full ring)
cannot be rebuilt and is not sampled, nor is the newest row (its action is not known yet).

Long runs (the form of ppo.py, the same in every deep file):
    python algorithms/dqn_atari.py --checkpoint-every 500000 --save-buffer    # runs/<run>/checkpoint_<step>.pt
    python algorithms/dqn_atari.py --resume runs/<run>/checkpoint_<step>.pt  # continue up to --total-timesteps
A checkpoint holds the online and target networks, the optimiser, the step counters (next training phase, next
target update), every random generator's state and, with --save-buffer, the replay memory (frames, flags and
each column's position; the default 1M-row memory makes a checkpoint of about 7 GB, its size is printed). An
Atari emulator's state is not saved: a resumed run starts new games (and new episodes in the replay memory), so
it does not end with the very parameters of a run never interrupted. Ctrl-C or SIGTERM stops the run after the
current step's update, writes a checkpoint and exits 130 / 143 with the command that resumes it. The epsilon
schedule reads the progress through --total-timesteps: a larger value on resume stretches what is left of it. A
NaN or infinite reward, loss or gradient norm stops the run (exit 3; the observations are uint8 frames, always
finite), keeping the last finite state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.

--async-envs steps the environments in worker processes (gym.vector.AsyncVectorEnv), with the same results for the
same seed. It pays where an environment step costs more than the network's (a MuJoCo step can cost less than the
round trip between processes); its checkpoints hold no environment state, so a resumed run starts new episodes.

Results: benchmark_results/dqn_atari.md
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

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from stable_baselines3.common import atari_wrappers

gym.register_envs(ale_py)  # ale-py ships the ROMs; this registers ALE/Breakout-v5, BreakoutNoFrameskip-v4, ...

FRAME_STACK = 4  # make_env stacks the last 4 frames; the replay memory rebuilds stacks of as many


@dataclass
class Args:
    exp_name: str = "dqn_atari"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (strongly advised for full Atari runs)"""
    torch_threads: int = 1
    """torch CPU threads (1 by default: on a shared machine more threads compete with the emulator)"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    capture_video: bool = False
    """if toggled, record videos of the first environment (whole games, raw frames) into videos/{run_name}"""
    save_model: bool = False
    """if toggled, save the trained model to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many agent steps (0: never)"""
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

    env_id: str = "BreakoutNoFrameskip-v4"
    """an Atari environment of ale-py: *NoFrameskip-v4 (no sticky actions) or ALE/*-v5 (sticky actions 0.25)"""
    total_timesteps: int = 10_000_000
    """total agent steps (4 frames each), summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments (1 as in the paper)"""
    learning_rate: float = 1e-4
    """the Adam learning rate"""
    buffer_size: int = 1_000_000
    """the replay memory's capacity in stored frames, about one per transition (see the docstring)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate: 1.0 copies the online network, < 1 is Polyak averaging"""
    target_network_frequency: int = 1000
    """agent steps between target network updates"""
    batch_size: int = 32
    """transitions per gradient step"""
    start_e: float = 1.0
    """the starting exploration epsilon"""
    end_e: float = 0.01
    """the final exploration epsilon"""
    exploration_fraction: float = 0.1
    """the fraction of total_timesteps over which epsilon decays from start_e to end_e"""
    learning_starts: int = 80_000
    """agent steps of random-policy data collected before learning starts"""
    train_frequency: int = 4
    """agent steps between training phases"""
    gradient_steps: int = 1
    """gradient steps in each training phase"""
    double_q: bool = False
    """if toggled, use the double DQN target (online network selects, target network evaluates)"""
    max_grad_norm: float = float("inf")
    """the maximum norm of the gradient (global clipping; inf: none, as the paper and CleanRL; SB3 uses 10)"""
    eval_episodes: int = 10
    """whole games (all lives) of the final evaluation"""
    eval_epsilon: float = 0.05
    """exploration epsilon of the final evaluation (0.05 as in the paper; 0 is greedy)"""
    log_every: int = 10_000
    """print a progress line every this many agent steps"""


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
    """Validate everything before any directory is created. No Atari emulator is started for an ale-py id:
    ale-py prints a banner on stderr when one is, which would make the error message more than one line."""
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                 "target_network_frequency", "eval_episodes", "log_every", "torch_threads", "keep_checkpoints"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not args.max_grad_norm > 0 or not args.checkpoint_every >= 0:
        fail(f"need 0 < --learning-rate < inf, --max-grad-norm > 0 and --checkpoint-every >= 0, got "
             f"{args.learning_rate}, {args.max_grad_norm} and {args.checkpoint_every}")
    if args.buffer_size < 8 * args.num_envs:
        fail(f"--buffer-size {args.buffer_size} is too small: each of the {args.num_envs} environments needs 8 rows "
             "(a frame stack of 4, the next observation and an episode end)")
    if not (args.learning_starts >= 0 and 0 < args.tau <= 1 and 0 < args.gamma <= 1):
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not (0 <= args.start_e <= 1 and 0 <= args.end_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need --start-e and --end-e in [0, 1] and 0 < --exploration-fraction <= 1")
    if not 0 <= args.eval_epsilon <= 1:
        fail(f"--eval-epsilon must be in [0, 1], got {args.eval_epsilon}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    try:
        spec = env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try BreakoutNoFrameskip-v4 or ALE/Pong-v5")
    # An id registered with a function (a wrapper around an ale-py game, say) is made once to look inside.
    if spec.entry_point != "ale_py.env:AtariEnv" and not (
            callable(spec.entry_point) and isinstance(gym.make(args.env_id).unwrapped, ale_py.AtariEnv)):
        fail(f"dqn_atari.py needs an Atari environment of ale-py (image observations, discrete actions), {args.env_id} "
             "is not one; use BreakoutNoFrameskip-v4 or ALE/Pong-v5 (flat observations: dqn.py)")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    """The standard Atari preprocessing (Mnih et al., 2015; Machado et al., 2018), innermost first.

    1. The emulator with frameskip=1: frame skipping is done by MaxAndSkipEnv below. Sticky actions are
       left at the environment's own setting: 0 for *NoFrameskip-v4, 0.25 for ALE/*-v5.
    2. NoopResetEnv: start each game with 1-30 no-op frames, so that a deterministic game does not
       always start in the same state.
    3. MaxAndSkipEnv: repeat each action for 4 frames, sum the rewards, and return the pixel-wise maximum
       of the last 2 frames (Atari sprites flicker: some are drawn on odd frames only).
    4. RecordEpisodeStatistics, HERE: outside the frame skip (lengths count agent steps) but inside
       episodic life and reward clipping, so info["episode"] carries the raw game score of a whole game,
       across lives (it also counts the few steps that the resets after a lost life take).
    5. EpisodicLifeEnv: a lost life returns terminated=True to the learner (no bootstrapping past a death),
       but its reset() then only steps the game on: the game restarts for real at game over only. This is
       what keeps the vector environment's autoreset (which calls reset() after every terminated step)
       from restarting the game at every lost life.
    6. FireResetEnv: games that wait for FIRE (Breakout) get FIRE after each reset, including the resets
       after a lost life (it sits outside EpisodicLifeEnv), so no episode stalls waiting for it.
    7. WarpFrame: greyscale and resize to 84x84 (cv2, area interpolation), shape (84, 84, 1).
    8. ClipRewardEnv: the learner's reward is sign(r) in {-1, 0, 1}, one scale for every game.
    9. Drop the channel axis and stack the last 4 frames: uint8 (4, 84, 84), oldest first. After a reset
       the stack is filled with copies of the first frame.
    """

    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, frameskip=1, render_mode="rgb_array")
            # innermost, on raw frames; it starts a new video at real game starts only (see 5.)
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id, frameskip=1)
        env = atari_wrappers.NoopResetEnv(env, noop_max=30)
        env = atari_wrappers.MaxAndSkipEnv(env, skip=4)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = atari_wrappers.EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = atari_wrappers.FireResetEnv(env)
        env = atari_wrappers.WarpFrame(env, width=84, height=84)
        env = atari_wrappers.ClipRewardEnv(env)
        env = gym.wrappers.ReshapeObservation(env, (84, 84))
        env = gym.wrappers.FrameStackObservation(env, stack_size=4)
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


class QNetwork(nn.Module):
    """The Nature CNN (Mnih et al., 2015, Methods): one Q-value per action.

    84x84 -> conv 32 8x8 stride 4 -> 20x20 -> conv 64 4x4 stride 2 -> 9x9 -> conv 64 3x3 stride 1 -> 7x7
    -> flatten 64*7*7 = 3136 -> linear 512 -> linear n_actions, ReLU between. Inputs are uint8 pixels,
    scaled to [0, 1] here. PyTorch's default initialisation, as CleanRL's dqn_atari.py.
    """

    def __init__(self, n_actions: int, frame_stack: int = FRAME_STACK):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(frame_stack, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q [B, n_actions] of uint8 frame stacks x [B, 4, 84, 84]."""
        return self.network(x.float() / 255.0)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_a Q(s, a): x [B, 4, 84, 84] -> actions [B]."""
        return self(x).argmax(dim=1)


class FrameReplayBuffer:
    """A ring of frames per environment (a column each) from which stacked observations are rebuilt.

    The layout and why: see the module docstring. Used as dqn.py's ReplayBuffer is: add(...) after every
    vector step (with the truncations too: an episode end of either kind writes a row of its own), then
    sample(...) for a batch of (obs, actions, rewards, next_obs, terminations).
    """

    def __init__(self, capacity: int, num_envs: int, seed: int):
        self.rows, self.num_envs = capacity // num_envs, num_envs  # rows per environment, columns
        self.frames = np.zeros((self.rows, num_envs, 84, 84), dtype=np.uint8)
        self.actions = np.zeros((self.rows, num_envs), dtype=np.uint8)  # Atari has at most 18 actions
        self.rewards = np.zeros((self.rows, num_envs), dtype=np.float32)
        # flags per row: the episode terminated after it; it starts an episode; it is a transition (an action
        # was taken from it, so its next observation is the following row)
        self.terminated, self.first, self.valid = (np.zeros((self.rows, num_envs), dtype=bool) for _ in range(3))
        # per environment: the next row to write, the rows written so far
        self.pos, self.filled = np.zeros(num_envs, dtype=np.int64), np.zeros(num_envs, dtype=np.int64)
        self.episode_start = np.ones(num_envs, dtype=bool)  # the next observation acted on begins an episode
        self.rng = np.random.default_rng(seed)

    def _write(self, env: int, frame: np.ndarray, first: bool) -> None:
        j = self.pos[env]
        self.frames[j, env], self.first[j, env], self.valid[j, env] = frame, first, False
        self.pos[env] = (j + 1) % self.rows
        self.filled[env] = min(self.filled[env] + 1, self.rows)

    def add(self, obs, actions, rewards, next_obs, terminations, truncations) -> None:
        """One vector step: obs [num_envs, 4, 84, 84] the observations acted on, next_obs the real next ones
        (info["final_obs"] where an episode ended). Only each observation's newest frame is stored."""
        for env in range(self.num_envs):
            if self.episode_start[env]:  # an episode's first observation: its frame starts the episode's rows
                self._write(env, obs[env][-1], first=True)
            j = (self.pos[env] - 1) % self.rows  # the row of the observation the action was taken from
            self.actions[j, env], self.rewards[j, env] = actions[env], rewards[env]
            self.terminated[j, env], self.valid[j, env] = terminations[env], True
            self._write(env, next_obs[env][-1], first=False)  # at an episode end its last frame: never a state
            self.episode_start[env] = terminations[env] or truncations[env]

    def stacks(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """The stacked observations [B, 4, 84, 84] whose newest frames are at (rows, envs): walk back one
        row per frame, but stay on an episode's first row once reached (FrameStackObservation's padding)."""
        frames = []
        for _ in range(FRAME_STACK):
            frames.append(self.frames[rows, envs])
            rows = np.where(self.first[rows, envs], rows, (rows - 1) % self.rows)
        return np.stack(frames[::-1], axis=1)  # oldest first, as FrameStackObservation

    def sampleable(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Rows that are transitions (valid) and whose stack does not reach back past the write position:
        in a full ring the 3 oldest rows' predecessors have been overwritten by the newest frames."""
        age_order = (rows - self.pos[envs]) % self.rows  # 0 = the oldest row of a full ring
        return self.valid[rows, envs] & (age_order >= FRAME_STACK - 1)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(obs, actions, rewards, next_obs, terminations) of batch_size transitions: an environment uniformly,
        then one of its sampleable rows uniformly (rejection sampling: almost every row qualifies)."""
        envs = self.rng.integers(0, self.num_envs, size=batch_size)
        rows = self.rng.integers(0, self.filled[envs])
        while not (ok := self.sampleable(rows, envs)).all():  # redraw the few rows that are not transitions
            rows[~ok] = self.rng.integers(0, self.filled[envs[~ok]])
        return tuple(torch.from_numpy(a).to(device) for a in
                     (self.stacks(rows, envs), self.actions[rows, envs].astype(np.int64), self.rewards[rows, envs],
                      self.stacks((rows + 1) % self.rows, envs), self.terminated[rows, envs].astype(np.float32)))

    def state_dict(self) -> dict:
        """Every stored row (frames, actions, rewards, flags) and each column's position and fill, as tensors
        (checkpoints with --save-buffer)."""
        return {k: torch.from_numpy(getattr(self, k)) for k in
                ("frames", "actions", "rewards", "terminated", "first", "valid", "pos", "filled", "episode_start")}

    def load_state_dict(self, state: dict) -> None:
        if state["frames"].shape != self.frames.shape:
            fail(f"the checkpoint's replay buffer has another shape ({tuple(state['frames'].shape)}, here "
                 f"{self.frames.shape}): resume with its --buffer-size and --num-envs")
        for k in ("frames", "actions", "rewards", "terminated", "first", "valid", "pos", "filled"):
            getattr(self, k)[...] = state[k].numpy()
        # the environments start new games on resume (an emulator's state is not saved): each column's next row
        # starts an episode, whatever state["episode_start"] says
        self.episode_start[...] = True

    def __len__(self) -> int:
        return int(self.valid.sum())


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
    ckpt = load_checkpoint(path, "dqn_atari")
    q_network = QNetwork(**ckpt["model_args"])
    q_network.load_state_dict(ckpt["model"])
    return q_network, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu",
             epsilon: float = 0.05) -> list[float]:
    """Epsilon-greedy evaluation (the paper's epsilon 0.05) on whole games; returns the raw game score of each.

    The environment is built by the same make_env as in training, so the network sees exactly the
    observations it was trained on. A lost life ends an "episode" of EpisodicLifeEnv: reset() then continues
    the same game (pressing FIRE where the game needs it); the game's raw score is read from
    RecordEpisodeStatistics at the real game over. Games are capped by the emulator at 108,000 frames.
    """
    agent = load_model(agent_or_path)[0].to(device) if isinstance(agent_or_path, str) else agent_or_path
    env = make_env(env_id, 0, False, "")()
    rng = np.random.default_rng(seed)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            action = agent.greedy_action(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))
            action = rng.integers(env.action_space.n) if rng.random() < epsilon else action[0].cpu().numpy()
            obs, _, terminated, truncated, info = env.step(action)
            done = "episode" in info
            if (terminated or truncated) and not done:
                obs, _ = env.reset()  # a lost life: the same game goes on
        returns.append(float(info["episode"]["r"]))
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

    # Same-step autoreset: when an episode ends (a lost life or a game over), step() has already called
    # reset() and returns the next episode's first observation; the last one is in info["final_obs"] and the
    # ended episode's info (with RecordEpisodeStatistics' "episode" at a game over) in info["final_info"].
    # --async-envs: each environment steps in a worker process that ignores signals (in_worker); same results.
    thunks = [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)]
    vector_env = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = vector_env([in_worker(t) for t in thunks] if args.async_envs else thunks,
                      autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.action_space.seed(args.seed)
    n_actions = int(envs.single_action_space.n)

    model_args = dict(n_actions=n_actions)
    q_network = QNetwork(**model_args).to(device)
    target_network = QNetwork(**model_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    # fused: one kernel updates every parameter (a loop over the tensors without it; the same arithmetic)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = FrameReplayBuffer(args.buffer_size, args.num_envs, args.seed)
    generators = {"explore": rng, "buffer": rb.rng, "action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back.
    global_step, origin = 0, (0, 0.0)
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "dqn_atari")
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
        # an emulator's state is not saved: new games start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {len(rb):,} transitions)", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        ckpt = {"algo": "dqn_atari", "env_id": args.env_id, "model_args": model_args, "model": q_network.state_dict(),
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
        # rewards are already clipped (ClipRewardEnv); terminations only end the bootstrap, truncations do not
        rb.add(obs, actions, rewards, real_next_obs, terminations, truncations)
        obs = next_obs

        # RecordEpisodeStatistics sits in each environment, under episodic life (see make_env): its "episode" is
        # in the info of the episode that ended, infos["final_info"], and only at a real game over
        infos = infos.get("final_info", {})
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
        if train_now and global_step > args.learning_starts and rb.filled.min() * rb.num_envs >= args.batch_size:
            for _ in range(args.gradient_steps):
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations = rb.sample(args.batch_size, device)
                with torch.no_grad():
                    next_q_online = q_network(b_next_obs) if args.double_q else None
                    target = dqn_target(b_rewards, b_terminations, target_network(b_next_obs), next_q_online, args.gamma)
                q_taken = q_network(b_obs).gather(1, b_actions.unsqueeze(1)).squeeze(1)
                loss = F.smooth_l1_loss(q_taken, target)
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

    eval_returns = evaluate(q_network, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device),
                            epsilon=args.eval_epsilon)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} games "
          f"(epsilon {args.eval_epsilon}, raw score); trained {global_step - start_step:,} steps in {train_time:.1f}s")
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
