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
(32), gamma (0.99), update frequency (4) and no-op maximum (30) are the same here. `--total-timesteps` counts agent steps summed over the
environments; each agent step is 4 emulator frames.

The math, as written in the code below, for a sampled batch of transitions (s, a, r, s', terminated):
    target        y = r + gamma * (1 - terminated) * max_a' Q_target(s', a')
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

Speed, measured on the 2-core test machine with one torch thread: 3,000 agent steps on Breakout with
learning from step 1,000 (`--total-timesteps 3000 --learning-starts 1000`) trained in 37.7 s, about 80 agent
steps/s; Stable-Baselines3's DQN with the same settings took 38.3 s (tools/benchmark.py, seed 1). Most of the
time is the network's gradient step.
Learning, `./run_all.sh value` (tools/compare.py): Breakout, 200k agent steps (800k frames; published results
use 10M agent steps), seed 1, `--buffer-size 100000 --learning-starts 20000 --eval-epsilon 0.01`, one core:
final evaluation 17.8 over 10 games (SB3's DQN with rl-zoo3's settings and the same learning start and memory,
run at the same time on the other core: 30.9); mean training return over the run 11.7 (SB3 10.9,
tools/curve_stats.py); 3193 s of training (SB3 3541 s).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
    WarpFrame,
)

gym.register_envs(ale_py)  # ale-py ships the ROMs; this registers ALE/Breakout-v5, BreakoutNoFrameskip-v4, ...

FRAME_STACK = 4


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
    """torch CPU threads; 1 by default: the machines this is tested on are shared (see README)"""
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
    """agent steps between gradient steps"""
    max_grad_norm: float = 0.0
    """if > 0, clip the gradient's global norm to it (0: no clipping, as the paper and CleanRL; SB3 uses 10)"""
    eval_episodes: int = 10
    """whole games (all lives) of the final evaluation"""
    eval_epsilon: float = 0.05
    """exploration epsilon of the final evaluation (0.05 as in the paper; 0 is greedy)"""
    log_every: int = 10_000
    """print a progress line (and log the losses) every this many agent steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    """Validate everything before any directory is created. No Atari emulator is started here: ale-py
    prints a banner on stderr when one is, which would make the error message more than one line."""
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                 "target_network_frequency", "eval_episodes", "log_every", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.buffer_size < 8 * args.num_envs:
        fail(f"--buffer-size {args.buffer_size} is too small: each of the {args.num_envs} environments needs "
             "at least 8 rows (a frame stack of 4, the next observation and an episode end)")
    if args.learning_starts < 0 or args.learning_rate <= 0 or args.max_grad_norm < 0:
        fail("need --learning-starts >= 0, --learning-rate > 0 and --max-grad-norm >= 0")
    if not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not all(0 <= e <= 1 for e in (args.start_e, args.end_e, args.eval_epsilon)) or not 0 < args.exploration_fraction <= 1:
        fail("need --start-e, --end-e and --eval-epsilon in [0, 1] and 0 < --exploration-fraction <= 1")
    try:
        spec = gym.spec(args.env_id)
    except gym.error.Error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment; "
             "try BreakoutNoFrameskip-v4, PongNoFrameskip-v4 or ALE/Breakout-v5")
    if spec.entry_point != "ale_py.env:AtariEnv":
        try:
            probe = gym.make(args.env_id)
            spaces = f" (observations {probe.observation_space}, actions {probe.action_space})"
            probe.close()
        except Exception:  # only to describe the environment; it is rejected either way
            spaces = ""
        fail(f"dqn_atari.py needs an Atari environment of ale-py (image observations, discrete actions); "
             f"{args.env_id} is not one{spaces}: use BreakoutNoFrameskip-v4 or ALE/Pong-v5 here, "
             "dqn.py for flat observations, ddpg.py, td3.py or sac.py for Box actions")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    """The standard Atari preprocessing (Mnih et al., 2015; Machado et al., 2018), innermost first; the same
    as ppo_atari.py's.

    1. The emulator with frameskip=1: frame skipping is done by MaxAndSkipEnv below. Sticky actions are
       left at the environment's own setting: 0 for *NoFrameskip-v4, 0.25 for ALE/*-v5.
    2. NoopResetEnv: start each game with 1-30 no-op frames, so that a deterministic game does not
       always start in the same state.
    3. MaxAndSkipEnv: repeat each action for 4 frames, sum the rewards, and return the pixel-wise maximum
       of the last 2 frames (Atari sprites flicker: some are drawn on odd frames only).
    4. RecordEpisodeStatistics, HERE: outside the frame skip (lengths count agent steps) but inside
       episodic life and reward clipping, so info["episode"] carries the raw game score of a whole game.
    5. EpisodicLifeEnv: a lost life returns terminated=True to the learner (no bootstrapping past a death),
       but its reset() then only steps the game on: the game restarts for real at game over only. So the
       vector environment's autoreset does not restart the game at every lost life.
    6. FireResetEnv: games that wait for FIRE (Breakout) get FIRE after each reset, including the resets
       after a lost life (it sits outside EpisodicLifeEnv), so no episode stalls waiting for it.
    7. WarpFrame: greyscale and resize to 84x84 (cv2, area interpolation), shape (84, 84, 1).
    8. ClipRewardEnv: the learner's reward is sign(r) in {-1, 0, 1}, one scale for every game.
    9. Drop the channel axis and stack the last 4 frames: uint8 (4, 84, 84), oldest first. After every
       reset (a new game or a lost life) the stack is filled with copies of the first frame; the replay
       memory rebuilds stacks the same way.
    """

    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, frameskip=1, render_mode="rgb_array")
            # innermost, on raw frames; it starts a new video at real game starts only (see 5.)
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id, frameskip=1)
        env = NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = WarpFrame(env, width=84, height=84)
        env = ClipRewardEnv(env)
        env = gym.wrappers.ReshapeObservation(env, (84, 84))
        env = gym.wrappers.FrameStackObservation(env, stack_size=FRAME_STACK)
        return env

    return thunk


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
        return self.network(x.float() / 255.0)


class FrameReplayBuffer:
    """A ring of frames per environment (a column each) from which stacked observations are rebuilt.

    The layout and why: see the module docstring. Protocol, as main() calls it: `start(obs)` after the
    vector environment's reset, then `add(...)` after every step with what the step returned.
    """

    def __init__(self, capacity: int, num_envs: int, seed: int, frame_shape: tuple[int, int] = (84, 84),
                 frame_stack: int = FRAME_STACK):
        self.rows = capacity // num_envs  # rows per environment
        self.num_envs, self.frame_stack = num_envs, frame_stack
        self.frames = np.zeros((self.rows, num_envs, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros((self.rows, num_envs), dtype=np.uint8)  # Atari has at most 18 actions
        self.rewards = np.zeros((self.rows, num_envs), dtype=np.float32)
        self.terminated = np.zeros((self.rows, num_envs), dtype=bool)
        self.first = np.zeros((self.rows, num_envs), dtype=bool)
        self.valid = np.zeros((self.rows, num_envs), dtype=bool)
        self.pos = np.zeros(num_envs, dtype=np.int64)  # the next row to write, per environment
        self.filled = np.zeros(num_envs, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def _write(self, env: int, frame: np.ndarray, first: bool) -> None:
        j = self.pos[env]
        self.frames[j, env], self.first[j, env], self.valid[j, env] = frame, first, False
        self.pos[env] = (j + 1) % self.rows
        self.filled[env] = min(self.filled[env] + 1, self.rows)

    def start(self, obs: np.ndarray) -> None:
        """obs [num_envs, 4, 84, 84] from reset(): each environment's first frame starts an episode."""
        for env in range(self.num_envs):
            self._write(env, obs[env, -1], first=True)

    def add(self, actions, rewards, terminations, truncations, next_obs, final_obs) -> None:
        """One vector step. `final_obs[i]` is the real last observation where environment i's episode
        ended (terminated or truncated); `next_obs[i]` is then the next episode's first observation."""
        for env in range(self.num_envs):
            j = (self.pos[env] - 1) % self.rows  # the row of the observation the action was taken from
            self.actions[j, env], self.rewards[j, env] = actions[env], rewards[env]
            self.terminated[j, env], self.valid[j, env] = terminations[env], True
            if terminations[env] or truncations[env]:
                self._write(env, final_obs[env][-1], first=False)  # the next observation of row j; never a state
                self._write(env, next_obs[env][-1], first=True)
            else:
                self._write(env, next_obs[env][-1], first=False)

    def stacks(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """The stacked observations [B, 4, 84, 84] whose newest frames are at (rows, envs): walk back one
        row per frame, but stay on an episode's first row once reached (FrameStackObservation's padding)."""
        out = np.empty((len(rows), self.frame_stack, *self.frames.shape[2:]), dtype=np.uint8)
        cur = rows.copy()
        out[:, -1] = self.frames[cur, envs]
        for k in range(2, self.frame_stack + 1):
            cur = np.where(self.first[cur, envs], cur, (cur - 1) % self.rows)
            out[:, -k] = self.frames[cur, envs]
        return out

    def sampleable(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Rows that are transitions (valid) and whose stack does not reach back past the write position:
        in a full ring the 3 oldest rows' predecessors have been overwritten by the newest frames."""
        age_order = (rows - self.pos[envs]) % self.rows  # 0 = the oldest row of a full ring
        return self.valid[rows, envs] & (age_order >= self.frame_stack - 1)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Uniform over sampleable transitions (rejection sampling: almost every row qualifies)."""
        rows, envs = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        while len(rows) < batch_size:
            e = self.rng.integers(0, self.num_envs, size=2 * batch_size)
            r = self.rng.integers(0, self.filled[e])
            keep = self.sampleable(r, e)
            rows, envs = np.concatenate([rows, r[keep]]), np.concatenate([envs, e[keep]])
        rows, envs = rows[:batch_size], envs[:batch_size]
        return (
            torch.from_numpy(self.stacks(rows, envs)),
            torch.from_numpy(self.actions[rows, envs].astype(np.int64)),
            torch.from_numpy(self.rewards[rows, envs]),
            torch.from_numpy(self.stacks((rows + 1) % self.rows, envs)),
            torch.from_numpy(self.terminated[rows, envs].astype(np.float32)),
        )


def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def dqn_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q_target: torch.Tensor, gamma: float) -> torch.Tensor:
    """TD target y = r + gamma * (1 - terminated) * max_a' Q_target(s', a'). A truncated transition has
    terminated = 0 and s' = its real last observation, so it bootstraps."""
    return rewards + gamma * (1.0 - terminations) * next_q_target.max(dim=1).values


def dqn_update(q_network: QNetwork, target_network: QNetwork, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, ...], gamma: float, max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step on the Huber TD loss; returns (loss, mean Q(s, a)), detached."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        target = dqn_target(rewards, terminations, target_network(next_obs), gamma)
    q_taken = q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q_taken, target)
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm > 0:
        nn.utils.clip_grad_norm_(q_network.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), q_taken.detach().mean()


def save_checkpoint(q_network: QNetwork, path: str, meta: dict) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never leaves a corrupt file."""
    state = {k: v.detach().cpu().clone() for k, v in q_network.state_dict().items()}
    tmp = f"{path}.tmp"
    torch.save({"model": state, **meta}, tmp)
    os.replace(tmp, path)


def load_q_network(path: str) -> tuple[QNetwork, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    q = QNetwork(ckpt["n_actions"])
    q.load_state_dict(ckpt["model"])
    return q, ckpt


def evaluate(q_or_path: QNetwork | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu",
             epsilon: float = 0.05) -> list[float]:
    """Epsilon-greedy evaluation (the paper's epsilon 0.05) on whole games; returns the raw game score of each.

    The environment is built by the same make_env as in training, so the network sees exactly the
    observations it was trained on. A lost life ends an "episode" of EpisodicLifeEnv: reset() then continues
    the same game (pressing FIRE where the game needs it); the score is read from RecordEpisodeStatistics at
    the real game over. Games are capped by the emulator at 108,000 frames.
    """
    q_network = load_q_network(q_or_path)[0].to(device) if isinstance(q_or_path, str) else q_or_path
    env = make_env(env_id, 0, False, "")()
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    # Seeded once: a seeded reset reloads the ROM (about 0.2 s); later games continue the seeded generator.
    obs, _ = env.reset(seed=seed)
    while len(returns) < eval_episodes:
        if rng.random() < epsilon:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = int(q_network(torch.as_tensor(obs, device=device).unsqueeze(0)).argmax(-1).item())
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            if "episode" in info:  # game over; the next reset starts a new game with its own no-op start
                returns.append(float(info["episode"]["r"]))
            obs, _ = env.reset()  # after a lost life, EpisodicLifeEnv continues the same game
    env.close()
    return returns


def main(args: Args) -> dict:
    check_args(args)
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

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
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs.action_space.seed(args.seed)
    n_actions = int(envs.single_action_space.n)

    q_network = QNetwork(n_actions).to(device)
    target_network = QNetwork(n_actions).to(device)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    rb = FrameReplayBuffer(args.buffer_size, args.num_envs, args.seed)

    global_step = 0
    start_time = time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = args.log_every
    next_train = args.train_frequency  # gradient steps at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    td_loss = q_values = None
    obs, _ = envs.reset(seed=args.seed)
    rb.start(obs)

    while global_step < args.total_timesteps:
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = q_network(torch.as_tensor(obs, device=device)).argmax(-1).cpu().numpy()
            explore = rng.random(args.num_envs) < epsilon  # epsilon-greedy, decided per environment
            if explore.any():
                actions = np.where(explore, envs.action_space.sample(), actions)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs

        # rewards are already clipped (ClipRewardEnv); terminations only end the bootstrap, truncations do not
        rb.add(actions, rewards, terminations, truncations, next_obs, infos.get("final_obs"))
        obs = next_obs

        final_info = infos.get("final_info", {})
        if "episode" in final_info:  # only at a real game over, with the raw score (see make_env)
            for i in np.flatnonzero(final_info["_episode"]):
                ep_r, ep_l = float(final_info["episode"]["r"][i]), int(final_info["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        train_now = global_step >= next_train
        if train_now:
            next_train += args.train_frequency
        if train_now and global_step > args.learning_starts:
            td_loss, q_values = dqn_update(q_network, target_network, optimizer,
                                           tuple(x.to(device) for x in rb.sample(args.batch_size)),
                                           args.gamma, args.max_grad_norm)

        if global_step >= next_target:
            next_target += args.target_network_frequency
            with torch.no_grad():  # theta' <- tau * theta + (1 - tau) * theta'
                for p_target, p in zip(target_network.parameters(), q_network.parameters(), strict=True):
                    p_target.lerp_(p, args.tau)

        if global_step >= next_log:
            next_log += args.log_every
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            if td_loss is not None:
                writer.add_scalar("losses/td_loss", td_loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>10,}  SPS {sps:>5,}  epsilon {epsilon:.3f}  game score (last 20 games) {recent}",
                  flush=True)

    train_time = time.time() - start_time
    envs.close()
    writer.add_scalar("charts/SPS", int(global_step / train_time), global_step)
    if td_loss is not None:
        writer.add_scalar("losses/td_loss", td_loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)

    eval_returns = evaluate(q_network, args.env_id, args.eval_episodes, seed=args.seed + 100_000,
                            device=str(device), epsilon=args.eval_epsilon)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} games "
          f"(epsilon {args.eval_epsilon}, raw score); trained {global_step:,} steps in {train_time:.1f}s")

    model_path = None
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_checkpoint(q_network, model_path, {"n_actions": n_actions, "env_id": args.env_id})
        print(f"model saved to {model_path}")
    writer.close()
    if args.track:
        import wandb

        wandb.finish()
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int(global_step / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": f"runs/{run_name}",
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
