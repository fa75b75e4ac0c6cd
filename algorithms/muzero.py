"""MuZero: planning with a learned model (Monte Carlo tree search over a learned representation, dynamics and
prediction), on single-agent Gymnasium environments with Discrete actions and on two-player board games.

Paper: Schrittwieser, Antonoglou, Hubert, Simonyan, Sifre, Schmitt, Guez, Lockhart, Hassabis, Graepel, Lillicrap,
Silver (2020), "Mastering Atari, Go, Chess and Shogi by Planning with a Learned Model", Nature 588,
https://arxiv.org/abs/1911.08265 (its appendix B-G and pseudocode give the search and the training below).
The settings for small vector observations follow muzero-general's CartPole configuration where noted
(https://github.com/werner-duvaud/muzero-general).

Run:
    python algorithms/muzero.py                                      # CartPole-v1
    python algorithms/muzero.py --env-id TicTacToe-v0                # tic-tac-toe in self-play (the game is below)
    python algorithms/muzero.py --env-id TicTacToe-v0 --total-timesteps 150000 --num-unroll-steps 9 --buffer-size 3000 \
        --value-loss-coef 0.25 --dirichlet-alpha 0.1 --temperature-moves 9   # muzero-general's settings
    python algorithms/muzero.py --num-simulations 50 --total-timesteps 100000
    python algorithms/muzero.py --save-model --save-buffer           # the final state, which can resume
    python algorithms/muzero.py --help

Three networks on a hidden state s (a vector min-max scaled to [0, 1] after every network that makes one):
    representation   s^0 = h(o_t)                         (o_t: the observation, from the mover's view in a game)
    dynamics         s^k, r^k = g(s^{k-1}, a_{t+k-1})     (the reward of the move, for the player who made it)
    prediction       p^k, v^k = f(s^k)                    (policy logits; value for the player to move at s^k)
The search (appendix B) runs N simulations from the root s^0 = h(o_t). Each descends by pUCT,
    a = argmax_a  Qn(s, a) + P(s, a) * sqrt(N(s)) / (1 + N(s, a)) * (c1 + log((N(s) + c2 + 1) / c2)),
    c1 = 1.25, c2 = 19652, Qn = (Q - min Q) / (max Q - min Q) over the Q values of this search (0 where unvisited),
expands one new node with one call of g and f, and backs its value up the path:
    G <- r(s, a) + gamma * sign * G,   Q(s, a) <- mean of the G seen,   sign = -1 in a two-player game (the value
    of the next node is the opponent's), +1 otherwise.
At the root, P = (1 - 0.25) P + 0.25 Dir(alpha) over the legal actions in self-play; illegal actions are masked
(their prior logits set to -inf) at the root, where the environment tells them (inside the tree the learned model
plays on, as in the paper). The move played is drawn from the root visit counts N(s_0, a)^(1/T) (single-agent
environments: T = 1, then 0.5, then 0.25 after half and three quarters of training, as muzero-general; two-player
games: T = 1 for the first --temperature-moves (4) moves of a game, then T = 0, the most visited move, as the paper's
board games (T = 1 for their first 30 moves): the value targets, the game's outcome, then measure strong play
rather than random moves near the end; in evaluation T = 0).
Targets for position t and unroll step k = 0..K (K = 5), from the stored game:
    value     z_{t+k} = sum_{i<n} sign^i gamma^i u_{t+k+i} + sign^n gamma^n nu_{t+k+n}    (nu: the root value of the
              search there; past the end of the game the sum stops and the bootstrap is the final value: 0 when the
              game terminated, the value network's v(o_T) when a time limit cut it). In a two-player game gamma = 1
              and n runs to the end of the game: z is the game's outcome for the player to move.
    reward    u_{t+k-1} (k >= 1);  policy  pi_{t+k} = the root visit counts' distribution (no policy loss past the end)
Scalars are learned as categorical distributions on the integers -S..S after the transform (appendix F)
    phi(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x,  eps = 0.001,
    phi^-1(y) = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1),
a target phi(z) being split between its two neighbouring integers (two-hot), a prediction being phi^-1 of the
distribution's mean. A two-player game's values and rewards, in [-1, 1], are learned as they are, on the support
-1, 0, 1 (the paper's board games learn them as scalars): with phi, a win's reward of 1 would be split 0.585 / 0.415
between 0 and 1, mostly onto the target of every other move. The loss (appendix G), for a batch drawn with priorities:
    l = sum_k scale_k * ( c_v CE(v^k, twohot(phi(z_{t+k}))) + CE(r^k, twohot(phi(u_{t+k-1}))) + CE(p^k, pi_{t+k}) )
    scale_0 = 1, scale_k = 1/K for k >= 1 (on the gradient); the gradient into s^{k-1} through g is halved;
    loss = mean over the batch of w_i * l_i, plus weight decay (L2, through Adam's weight_decay).
Prioritised replay (appendix G): position i is drawn with P(i) = p_i^alpha / sum_k p_k^alpha, p_i = |nu_i - z_i| when
stored and |v_i - z_i| (the value the network predicted at its last draw) after; importance weights
w_i = (1 / (M P(i)))^beta, divided by the batch's largest.

The search is written against an abstract model with two calls, so that anything with them can be searched,
the learned networks (MuZeroNet) or the true rules of a game (tests/test_muzero.py searches real tic-tac-toe):
    initial_inference(observations [B, obs_dim]) -> values [B], policy logits [B, A], states (indexable by row)
    recurrent_inference(states, actions [B]) -> values [B], rewards [B], policy logits [B, A], states
A logit of -inf marks an illegal action; a state whose every logit is -inf is terminal (never expanded).
The search is batched: the trees of all the environments played at once (--num-envs) are searched together,
each simulation one call of the model for all of them; the trees themselves are plain Python and numpy.

Two-player games: TicTacToe-v0 is written and registered below. Its observation is the board from the view of the
player to move (18 numbers: that player's marks, then the opponent's), its reward goes to the player who moved
(+1 for a win, -1 for an illegal move, which ends the game), and the agent plays both sides in self-play, so a
training episode's return is 1 for a decided game and 0 for a draw. evaluate() plays it against a uniformly
random opponent, the agent moving first in even episodes and second in odd ones, and returns +1 / 0 / -1 for the
agent's win / draw / loss. Legal moves are read off the observation (empty cells).
Tested (slow): seed 1 reaches >= 400 on CartPole-v1 in 30k steps, and at tic-tac-toe (150k moves with the settings
of the second tic-tac-toe command above) >= 95% non-losses against a random player as either side and >= 80% draws
against perfect play (tests/test_muzero.py, page).
Results: benchmark_results/muzero.md

Defaults are sized for one CPU core (the paper's runs take about 1e6 training steps on TPUs; muzero-general's
CartPole configuration searches with 50 simulations): 25 simulations, 8 environments searched
together, 1 update per 2 environment steps after 1,000 steps, batch 128, unroll K = 5, n = 50 steps, gamma 0.997,
hidden state of 32 numbers, 64-wide one-hidden-layer networks, support S = 20 (values up to about 420),
Adam with learning rate 3e-3 decayed exponentially to a tenth over training, weight decay 1e-4,
value-loss coefficient 1 (muzero-general's CartPole; the paper's Reanalyze uses 0.25), priority exponents
alpha = 0.5 (muzero-general), beta = 1 (the paper).

Time limits: CartPole-v1's episodes end by termination (the pole fell) or by its 500-step limit; a game cut by
the limit bootstraps its last value targets from v(o_T) of its real last observation (info["final_obs"],
Gymnasium's same-step autoreset mode), a terminated one from 0. Past the end the model learns an absorbing state:
value and reward targets 0, random actions, no policy loss (as the paper).

Long runs (the same form in every deep file of the collection):
    python algorithms/muzero.py --checkpoint-every 5000 --save-buffer   # runs/<run>/checkpoint_<step>.pt
    python algorithms/muzero.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the three networks (under "model", what `evaluate` needs, with the search's settings in its
model_args), the Adam state, the counters, every random generator's state (Python's, numpy's, torch's, the
search's, which draws the root noise and the moves, and the replay's), the games in progress and the
classic-control environments' own state; with --save-buffer also the replay of stored games. The search is
deterministic given these, so with --save-buffer a resumed CartPole run ends bit for bit where an uninterrupted
one ends (TicTacToe-v0 and other non-classic environments start new games). Ctrl-C or SIGTERM stops the run after
the current step's updates, writes a checkpoint and exits 130 / 143 with the command that resumes it; a second
signal quits at once. A NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3) and
keeps the last finite state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.
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
    exp_name: str = "muzero"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the search and the environments"""
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
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the replay of games (its size is printed)"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id: Discrete actions and a flat Box observation, or the two-player TicTacToe-v0"""
    total_timesteps: int = 30_000
    """total environment steps (moves in a game), summed over the parallel environments"""
    num_envs: int = 8
    """environments played at once; their searches are batched (one model call per simulation for all)"""
    num_simulations: int = 25
    """simulations of the tree search per move"""
    dirichlet_alpha: float = 0.25
    """the Dirichlet root noise's concentration (muzero-general's CartPole: 0.25; the paper's chess: 0.3)"""
    exploration_fraction: float = 0.25
    """the share of the root prior replaced by Dirichlet noise in self-play"""
    temperature_moves: int = 4
    """two-player games: the first this many moves of a self-play game are drawn with temperature 1, later ones
    play the most visited move (the paper's board games: 30 moves)"""
    pb_c_init: float = 1.25
    """c1 of the pUCT rule"""
    pb_c_base: float = 19652.0
    """c2 of the pUCT rule"""
    discount: float = 0.997
    """gamma, the discount of rewards (two-player games use 1, as the paper's board games)"""
    td_steps: int = 50
    """n of the n-step value targets (muzero-general's CartPole: 50; two-player games use targets to the end of the game)"""
    num_unroll_steps: int = 5
    """K, the steps the model is unrolled in training"""
    buffer_size: int = 500
    """the replay's capacity in games (the oldest games go first)"""
    batch_size: int = 128
    """positions per gradient step"""
    learning_starts: int = 1_000
    """environment steps before the first update"""
    train_frequency: int = 2
    """environment steps between training phases"""
    gradient_steps: int = 1
    """gradient steps in each training phase"""
    learning_rate: float = 3e-3
    """Adam's initial learning rate"""
    lr_decay: float = 0.1
    """the learning rate at the end of training, as a fraction of the first (exponential decay)"""
    weight_decay: float = 1e-4
    """L2 regularisation (Adam's weight_decay)"""
    value_loss_coef: float = 1.0
    """c_v, the value loss's weight (muzero-general's CartPole: 1; the paper's Reanalyze: 0.25)"""
    max_grad_norm: float = 5.0
    """the gradient's global norm is clipped to this (inf: no clipping)"""
    per_alpha: float = 0.5
    """priority exponent alpha (0: uniform sampling)"""
    per_beta: float = 1.0
    """importance-weight exponent beta"""
    support_size: int = 20
    """S: values and rewards are distributions over the integers -S..S of phi(x) (two-player games: -1..1 of x)"""
    hidden_state_size: int = 32
    """the size of the hidden state s"""
    hidden_sizes: tuple[int, ...] = (64,)
    """widths of the ReLU hidden layers of each of the five MLPs (representation, dynamics state and reward,
    policy, value)"""
    eval_episodes: int = 10
    """episodes of the final evaluation (the search plays, without noise, the most visited move)"""
    log_every: int = 1_000
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
    for name in ("total_timesteps", "num_envs", "num_simulations", "td_steps", "num_unroll_steps", "buffer_size",
                 "batch_size", "train_frequency", "gradient_steps", "support_size", "hidden_state_size", "eval_episodes",
                 "log_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not args.temperature_moves >= 0:
        fail(f"--temperature-moves must be >= 0, got {args.temperature_moves}")
    if not args.learning_starts >= 0 or not 0 < args.discount <= 1:
        fail("need --learning-starts >= 0 and 0 < --discount <= 1")
    for name in ("dirichlet_alpha", "pb_c_init", "pb_c_base", "learning_rate", "value_loss_coef"):
        if not 0 < getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be finite and positive, got {getattr(args, name)}")
    for name in ("exploration_fraction", "lr_decay"):
        if not 0 <= getattr(args, name) <= 1:
            fail(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if not args.lr_decay > 0:
        fail(f"--lr-decay must be positive (the final learning rate's fraction), got {args.lr_decay}")
    for name in ("weight_decay", "per_alpha", "per_beta"):
        if not 0 <= getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be finite and >= 0, got {getattr(args, name)}")
    if not args.max_grad_norm > 0:  # inf: no clipping
        fail(f"--max-grad-norm must be positive (inf: no clipping), got {args.max_grad_norm}")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    check_game_env(args.env_id)
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def check_game_env(env_id: str) -> None:
    """The environment exists and has Discrete actions and a flat Box observation."""
    try:
        env_spec(env_id)
    except gym.error.Error as error:
        fail(f"--env-id {env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or TicTacToe-v0")
    try:
        probe = gym.make(env_id)
    except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency (box2d)
        fail(f"--env-id {env_id} cannot be created: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--env-id {env_id} has {action_space} actions; this file searches over Discrete actions, "
             "e.g. CartPole-v1 or TicTacToe-v0")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--env-id {env_id} has {obs_space} observations; this file needs a flat Box observation, e.g. CartPole-v1")


# ---- Tic-tac-toe, a two-player game as a Gymnasium environment (registered as TicTacToe-v0) ----

WIN_LINES = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]])


def tictactoe_winner(board: np.ndarray) -> int:
    """+1 or -1 if that player has three in a row on the 9 cells (+1, -1 or 0), else 0."""
    sums = board[WIN_LINES].sum(axis=1)
    return 1 if (sums == 3).any() else -1 if (sums == -3).any() else 0


class TicTacToe(gym.Env):
    """Tic-tac-toe on cells 0..8 (row by row). Player +1 moves first. The observation is from the view of the
    player to move: its marks (9 numbers), then the opponent's (9). The reward goes to the player who moved: +1
    for completing a line, 0 otherwise, -1 for playing an occupied cell (which ends the game)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}
    two_player = True

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (18,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(9)
        self.render_mode = render_mode
        self.board, self.to_play = np.zeros(9, dtype=np.int8), 1

    def observe(self) -> np.ndarray:
        return np.concatenate([self.board == self.to_play, self.board == -self.to_play]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.board, self.to_play = np.zeros(9, dtype=np.int8), 1
        return self.observe(), {}

    def step(self, action):
        action = int(action)
        if self.board[action] != 0:
            return self.observe(), -1.0, True, False, {}
        self.board[action] = self.to_play
        won = tictactoe_winner(self.board) == self.to_play
        self.to_play = -self.to_play
        return self.observe(), 1.0 if won else 0.0, bool(won or (self.board != 0).all()), False, {}

    def render(self):
        """A 96 x 96 image: the first player's marks red, the second's blue."""
        image = np.full((96, 96, 3), 255, dtype=np.uint8)
        for cell, mark in enumerate(self.board):
            if mark:
                r, c = divmod(cell, 3)
                image[r * 32 + 4:r * 32 + 28, c * 32 + 4:c * 32 + 28] = (220, 40, 40) if mark == 1 else (40, 40, 220)
        return image


if "TicTacToe-v0" not in gym.registry:
    gym.register("TicTacToe-v0", entry_point=TicTacToe, max_episode_steps=9)


def legal_actions(obs: np.ndarray, two_player: bool, num_actions: int) -> np.ndarray:
    """[B, A] booleans: a board game's empty cells (neither player's mark in the observation); otherwise every action."""
    if two_player:
        return (obs[:, :num_actions] + obs[:, num_actions:2 * num_actions]) == 0
    return np.ones((len(obs), num_actions), dtype=bool)


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


# ---- The math the tests check: value transform, two-hot support, targets, pUCT, min-max normalisation ----

TRANSFORM_EPS = 0.001


def value_transform(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x (the paper's appendix F, after Pohlen et al. 2018)."""
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + TRANSFORM_EPS * x


def inverse_value_transform(y: torch.Tensor) -> torch.Tensor:
    """phi^-1(y) = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1), solving the quadratic in
    sqrt(|x| + 1) that phi(x) = y is."""
    e = TRANSFORM_EPS
    return torch.sign(y) * (((torch.sqrt(1 + 4 * e * (y.abs() + 1 + e)) - 1) / (2 * e)) ** 2 - 1)


def scalar_to_support(x: torch.Tensor, support_size: int, transform: bool = True) -> torch.Tensor:
    """Two-hot: [..., 2S + 1] probabilities on the integers -S..S whose mean is phi(x) (x itself when not
    `transform`), clipped to [-S, S]; the mass is split between the two integers around it in proportion to its
    nearness to each."""
    y = (value_transform(x) if transform else x).clamp(-support_size, support_size)
    low = y.floor()
    upper_weight = y - low
    probs = torch.zeros(*x.shape, 2 * support_size + 1, dtype=x.dtype, device=x.device)
    low_index = (low + support_size).long()
    probs.scatter_(-1, low_index.unsqueeze(-1), (1 - upper_weight).unsqueeze(-1))
    # at y = S the upper neighbour is off the support, and its weight is 0: write it onto the last slot, added
    probs.scatter_add_(-1, (low_index + 1).clamp(max=2 * support_size).unsqueeze(-1), upper_weight.unsqueeze(-1))
    return probs


def support_to_scalar(logits: torch.Tensor, support_size: int, transform: bool = True) -> torch.Tensor:
    """phi^-1 of the mean of softmax(logits) over the integers -S..S (the mean itself when not `transform`): a
    predicted value or reward."""
    support = torch.arange(-support_size, support_size + 1, dtype=logits.dtype, device=logits.device)
    mean = (torch.softmax(logits, dim=-1) * support).sum(-1)
    return inverse_value_transform(mean) if transform else mean


def n_step_value_targets(rewards: np.ndarray, root_values: np.ndarray, final_value: float, discount: float,
                         td_steps: int, two_player: bool) -> np.ndarray:
    """z_t for every position t = 0..T-1 of one game (T moves):
    z_t = sum_{i < min(n, T-t)} sign^i gamma^i u_{t+i} + (sign^n gamma^n nu_{t+n} if t + n < T
                                                           else sign^(T-t) gamma^(T-t) final_value),
    sign = -1 in a two-player game (u_{t+i} went to the player who moved then, the opponent of the player to move
    at t when i is odd; nu_{t+n} is the value for the player to move at t+n), +1 otherwise. final_value is the
    value of the state after the last move: 0 when the game terminated, v(o_T) when a time limit cut it."""
    T, sign = len(rewards), -1.0 if two_player else 1.0
    targets = np.zeros(T, dtype=np.float64)
    for t in range(T):
        m = min(td_steps, T - t)
        z = sum((sign * discount) ** i * float(rewards[t + i]) for i in range(m))
        if t + td_steps < T:
            z += (sign * discount) ** td_steps * float(root_values[t + td_steps])
        else:
            z += (sign * discount) ** (T - t) * final_value
        targets[t] = z
    return targets


class MinMaxStats:
    """The smallest and largest Q value seen in one search (appendix B): Q is normalised into [0, 1] with them,
    so that the pUCT rule's exploration term has the same scale whatever the environment's rewards. Known bounds
    (a board game's [-1, 1]) start them."""

    def __init__(self, known_bounds: tuple[float, float] | None = None):
        self.minimum, self.maximum = known_bounds if known_bounds else (math.inf, -math.inf)

    def update(self, value: float) -> None:
        self.minimum, self.maximum = min(self.minimum, value), max(self.maximum, value)

    def normalize(self, value: np.ndarray) -> np.ndarray:
        if self.maximum > self.minimum:
            return (value - self.minimum) / (self.maximum - self.minimum)
        return value


def ucb_scores(prior: np.ndarray, visits: np.ndarray, q_values: np.ndarray, parent_visits: int, stats: MinMaxStats,
               c1: float, c2: float) -> np.ndarray:
    """The pUCT score of every action of a node (appendix B, eq. 2):
    Qn(s, a) + P(s, a) * sqrt(N(s)) / (1 + N(s, a)) * (c1 + log((N(s) + c2 + 1) / c2)), Qn = 0 for unvisited a."""
    exploration = prior * math.sqrt(parent_visits) / (1 + visits) * (c1 + math.log((parent_visits + c2 + 1) / c2))
    return np.where(visits > 0, stats.normalize(q_values), 0.0) + exploration


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; its gradient times `scale` in the backward pass (the paper's scale_gradient)."""
    return x * scale + x.detach() * (1 - scale)


def visit_temperature(fraction_done: float) -> float:
    """The temperature of the move choice in self-play: 1, then 0.5 after half and 0.25 after three quarters of
    training (muzero-general's schedule, read from the progress through --total-timesteps)."""
    return 1.0 if fraction_done < 0.5 else 0.5 if fraction_done < 0.75 else 0.25


def select_actions(visits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One action per root: drawn with probability N(a)^(1/T) / sum_b N(b)^(1/T), or the most visited when T = 0."""
    if temperature == 0:
        return visits.argmax(axis=1)
    weights = visits ** (1.0 / temperature)
    probs = weights / weights.sum(axis=1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])


# ---- The search: batched Monte Carlo tree search over an abstract model ----


class Node:
    """A state of the search tree, with the statistics of its actions as arrays: prior P, visit count N, sum of
    backed-up values W (Q = W / N, for the player to move here), reward R of each action, and the children."""

    __slots__ = ("state", "value", "prior", "legal", "terminal", "visits", "N", "W", "R", "children")

    def __init__(self, state, value: float, logits: np.ndarray, visits: int):
        self.state, self.value, self.visits = state, value, visits
        self.legal = np.isfinite(logits)
        self.terminal = not self.legal.any()
        z = np.where(self.legal, logits - (logits[self.legal].max() if not self.terminal else 0.0), -np.inf)
        p = np.exp(z)
        self.prior = p / p.sum() if not self.terminal else p
        n = len(logits)
        self.N, self.W, self.R = np.zeros(n), np.zeros(n), np.zeros(n)
        self.children: list[Node | None] = [None] * n

    def select(self, stats: MinMaxStats, c1: float, c2: float) -> int:
        q = np.divide(self.W, self.N, out=np.zeros_like(self.W), where=self.N > 0)
        scores = ucb_scores(self.prior, self.N, q, self.visits, stats, c1, c2)
        return int(np.where(self.legal, scores, -np.inf).argmax())


def stack_states(rows: list):
    """The hidden states of several nodes as one batch (torch rows of the networks, or a model's numpy arrays)."""
    return torch.stack(rows) if isinstance(rows[0], torch.Tensor) else np.stack(rows)


def run_mcts(model, observations: np.ndarray, legal: np.ndarray, num_simulations: int, discount: float,
             two_player: bool, c1: float = 1.25, c2: float = 19652.0, rng: np.random.Generator | None = None,
             dirichlet_alpha: float = 0.25, exploration_fraction: float = 0.25,
             known_bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search from each of the B observations at once; returns the root visit counts [B, A] and the root values [B]
    (the mean of the values backed up through the root, for the player to move). rng: Dirichlet noise at the roots
    (self-play); None: no noise (evaluation, tests)."""
    sign = -1.0 if two_player else 1.0
    values, logits, states = model.initial_inference(observations)
    roots, stats = [], []
    for b in range(len(observations)):
        # visits=1: the root's own evaluation counts as its first visit, as every expanded node's does (so that the
        # first simulation already follows the prior; with N(s) = 0 every score would tie at 0)
        root = Node(states[b], float(values[b]), np.where(legal[b], logits[b], -np.inf), visits=1)
        if rng is not None and not root.terminal:
            noise = rng.dirichlet([dirichlet_alpha] * int(root.legal.sum()))
            root.prior[root.legal] = (1 - exploration_fraction) * root.prior[root.legal] + exploration_fraction * noise
        roots.append(root)
        stats.append(MinMaxStats(known_bounds))
    for _ in range(num_simulations):
        paths, expand = [], []  # expand: (tree index, parent node, action) of the leaves the model must evaluate
        for b, root in enumerate(roots):
            if root.terminal:
                paths.append(None)
                continue
            node, path = root, []
            while True:
                a = node.select(stats[b], c1, c2)
                path.append((node, a))
                child = node.children[a]
                if child is None:
                    expand.append((b, node, a))
                    break
                if child.terminal:  # the true rules' end of a game: its value is known, nothing to expand
                    break
                node = child
            paths.append(path)
        leaf_values = {}
        if expand:
            v, r, lg, s = model.recurrent_inference(stack_states([node.state for _, node, _ in expand]),
                                                    np.array([a for _, _, a in expand]))
            for i, (b, node, a) in enumerate(expand):
                node.children[a] = Node(s[i], float(v[i]), lg[i], visits=1)
                node.R[a] = float(r[i])
                leaf_values[b] = float(v[i])
        for b, path in enumerate(paths):
            if path is None:
                continue
            last, a = path[-1]
            g = leaf_values[b] if b in leaf_values else last.children[a].value
            for node, a in reversed(path):
                g = node.R[a] + discount * sign * g
                node.W[a] += g
                node.N[a] += 1
                node.visits += 1
                stats[b].update(node.W[a] / node.N[a])
    visit_counts = np.stack([root.N for root in roots])
    root_values = np.array([root.W.sum() / max(root.N.sum(), 1) if not root.terminal else root.value for root in roots])
    return visit_counts, root_values



# ---- The networks and the replay of games ----


def scale_hidden_state(s: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of each hidden state to [0, 1] (appendix G: the same range as the action input)."""
    low, high = s.min(dim=-1, keepdim=True).values, s.max(dim=-1, keepdim=True).values
    return (s - low) / (high - low).clamp(min=1e-5)


class MuZeroNet(nn.Module):
    """h (representation), g (dynamics: next hidden state and reward) and f (prediction: policy and value) as MLPs;
    values and rewards as logits over the support -S..S (of phi(x); of x itself in a two-player game, whose
    values and rewards lie in [-1, 1]). It is also the model the search plans with
    (initial_inference, recurrent_inference) and carries the search's settings, so that greedy_action searches
    as the run did."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_state_size: int, hidden_sizes: tuple[int, ...],
                 support_size: int, two_player: bool, discount: float, num_simulations: int, pb_c_init: float,
                 pb_c_base: float):
        super().__init__()
        self.num_actions, self.support_size, self.two_player = num_actions, support_size, two_player
        self.transform = not two_player  # board games: a reward of 1 is one-hot on the support, not split by phi
        self.discount, self.num_simulations, self.pb_c_init, self.pb_c_base = discount, num_simulations, pb_c_init, pb_c_base
        n_support = 2 * support_size + 1
        self.representation_net = mlp(obs_dim, hidden_state_size, hidden_sizes)
        self.dynamics_state_net = mlp(hidden_state_size + num_actions, hidden_state_size, hidden_sizes)
        self.dynamics_reward_net = mlp(hidden_state_size, n_support, hidden_sizes)
        self.policy_net = mlp(hidden_state_size, num_actions, hidden_sizes)
        self.value_net = mlp(hidden_state_size, n_support, hidden_sizes)
        # value and reward start as uniform distributions, whose mean is phi^-1(0) = 0 (as muzero-general)
        for head in (self.value_net[-1], self.dynamics_reward_net[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def representation(self, obs: torch.Tensor) -> torch.Tensor:
        return scale_hidden_state(self.representation_net(obs))

    def dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next hidden state and the reward logits of taking `actions` (integers) in `state`."""
        x = torch.cat([state, F.one_hot(actions, self.num_actions).to(state.dtype)], dim=-1)
        next_state = scale_hidden_state(self.dynamics_state_net(x))
        return next_state, self.dynamics_reward_net(next_state)

    def prediction(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits and value logits."""
        return self.policy_net(state), self.value_net(state)

    @torch.no_grad()
    def initial_inference(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        device = next(self.parameters()).device
        state = self.representation(torch.as_tensor(observations, dtype=torch.float32, device=device))
        policy_logits, value_logits = self.prediction(state)
        values = support_to_scalar(value_logits, self.support_size, self.transform)
        return values.cpu().numpy(), policy_logits.double().cpu().numpy(), state

    @torch.no_grad()
    def recurrent_inference(self, states: torch.Tensor, actions: np.ndarray):
        next_state, reward_logits = self.dynamics(states, torch.as_tensor(actions, device=states.device))
        policy_logits, value_logits = self.prediction(next_state)
        values = support_to_scalar(value_logits, self.support_size, self.transform).cpu().numpy()
        rewards = support_to_scalar(reward_logits, self.support_size, self.transform).cpu().numpy()
        return values, rewards, policy_logits.double().cpu().numpy(), next_state

    def search(self, obs: np.ndarray, rng: np.random.Generator | None = None, dirichlet_alpha: float = 0.25,
               exploration_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """The tree search from each observation with this network as the model: root visit counts and values."""
        return run_mcts(self, obs, legal_actions(obs, self.two_player, self.num_actions), self.num_simulations,
                        1.0 if self.two_player else self.discount, self.two_player, self.pb_c_init, self.pb_c_base,
                        rng, dirichlet_alpha, exploration_fraction, known_bounds=(-1.0, 1.0) if self.two_player else None)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The most visited root action of a search without noise (what evaluation plays)."""
        visits, _ = self.search(obs.cpu().numpy())
        return torch.as_tensor(visits.argmax(axis=1))


class GameReplay:
    """The replay of finished games (the newest `capacity`), each a dict of arrays over its T moves: observation,
    action, reward, root value nu, root visit distribution pi, value target z and priority |nu - z| (then
    |v - z| after the position's last draw). Positions are drawn with probability p^alpha / sum p^alpha."""

    FIELDS = ("obs", "actions", "rewards", "root_values", "policies", "targets", "priorities")

    def __init__(self, capacity: int, seed: int):
        self.capacity, self.games = capacity, []
        self.rng = np.random.default_rng(seed)

    @property
    def num_positions(self) -> int:
        return sum(len(g["actions"]) for g in self.games)

    def add(self, game: dict) -> None:
        self.games.append(game)
        if len(self.games) > self.capacity:
            self.games.pop(0)

    def sample(self, batch_size: int, unroll: int, alpha: float, beta: float) -> tuple[dict, list]:
        """A batch of positions with K = unroll steps of actions and targets, their importance weights, and the
        (game, position) of each for update_priorities."""
        lengths = np.array([len(g["actions"]) for g in self.games])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        priorities = np.concatenate([g["priorities"] for g in self.games]) + 1e-6
        probs = priorities ** alpha
        probs /= probs.sum()
        flat = self.rng.choice(len(probs), size=batch_size, p=probs)
        weights = (1.0 / (len(probs) * probs[flat])) ** beta
        game_index = np.searchsorted(starts, flat, side="right") - 1
        num_actions = self.games[0]["policies"].shape[1]
        actions = np.zeros((batch_size, unroll), dtype=np.int64)
        values, rewards = np.zeros((batch_size, unroll + 1), np.float32), np.zeros((batch_size, unroll + 1), np.float32)
        policies = np.full((batch_size, unroll + 1, num_actions), 1.0 / num_actions, np.float32)
        mask = np.zeros((batch_size, unroll + 1), np.float32)
        obs, index = [], []
        for i, (g, t) in enumerate(zip(game_index, flat - starts[game_index], strict=True)):
            game, T = self.games[g], lengths[g]
            obs.append(game["obs"][t])
            index.append((g, t))
            end = min(t + unroll + 1, T)  # positions t..end-1 are in the game; the rest are absorbing states
            values[i, :end - t] = game["targets"][t:end]
            policies[i, :end - t] = game["policies"][t:end]
            mask[i, :end - t] = 1.0
            rewards[i, 1:min(t + unroll, T) - t + 1] = game["rewards"][t:min(t + unroll, T)]
            n_real = min(unroll, T - t)
            actions[i, :n_real] = game["actions"][t:t + n_real]
            actions[i, n_real:] = self.rng.integers(0, num_actions, size=unroll - n_real)  # random past the end
        batch = {"obs": torch.as_tensor(np.stack(obs)), "actions": torch.as_tensor(actions),
                 "target_values": torch.as_tensor(values), "target_rewards": torch.as_tensor(rewards),
                 "target_policies": torch.as_tensor(policies), "policy_mask": torch.as_tensor(mask),
                 "weights": torch.as_tensor((weights / weights.max()).astype(np.float32))}
        return batch, index

    def update_priorities(self, index: list, priorities: np.ndarray) -> None:
        for (g, t), p in zip(index, priorities, strict=True):
            self.games[g]["priorities"][t] = p

    def state_dict(self) -> dict:
        """The games as tensors, so torch.load(weights_only=True) reads them."""
        return {"games": [{f: torch.from_numpy(g[f].copy()) for f in self.FIELDS} for g in self.games]}

    def load_state_dict(self, state: dict) -> None:
        self.games = [{f: g[f].numpy().copy() for f in self.FIELDS} for g in state["games"]][-self.capacity:]


def finish_game(history: dict, final_value: float, discount: float, td_steps: int, two_player: bool) -> dict:
    """A finished game's arrays, with its value targets and initial priorities |nu - z|."""
    game = {"obs": np.stack(history["obs"]).astype(np.float32), "actions": np.array(history["actions"], dtype=np.int64),
            "rewards": np.array(history["rewards"], dtype=np.float32),
            "root_values": np.array(history["root_values"], dtype=np.float32),
            "policies": np.stack(history["policies"]).astype(np.float32)}
    targets = n_step_value_targets(game["rewards"], game["root_values"], final_value, discount, td_steps, two_player)
    game["targets"] = targets.astype(np.float32)
    game["priorities"] = np.abs(game["root_values"] - game["targets"]).astype(np.float64)
    return game


def new_history() -> dict:
    return {"obs": [], "actions": [], "rewards": [], "root_values": [], "policies": []}


def history_state(history: dict, obs_dim: int, num_actions: int) -> dict:
    """A game in progress as tensors (for a checkpoint)."""
    n = len(history["actions"])
    return {"obs": torch.as_tensor(np.asarray(history["obs"], dtype=np.float32).reshape(n, obs_dim)),
            "actions": torch.as_tensor(np.asarray(history["actions"], dtype=np.int64).reshape(n)),
            "rewards": torch.as_tensor(np.asarray(history["rewards"], dtype=np.float32).reshape(n)),
            "root_values": torch.as_tensor(np.asarray(history["root_values"], dtype=np.float32).reshape(n)),
            "policies": torch.as_tensor(np.asarray(history["policies"], dtype=np.float32).reshape(n, num_actions))}


def set_history_state(state: dict) -> dict:
    return {"obs": list(state["obs"].numpy()), "actions": [int(a) for a in state["actions"]],
            "rewards": [np.float32(r) for r in state["rewards"].numpy()],
            "root_values": [np.float32(v) for v in state["root_values"].numpy()],
            "policies": list(state["policies"].numpy())}


def muzero_losses(net: MuZeroNet, batch: dict, value_loss_coef: float) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The loss of one batch (appendix G): the model unrolled K steps from h(o_t) along the stored actions, the
    losses of step k >= 1 scaled by 1/K and the gradient into each hidden state halved; weighted by the importance
    weights. Returns the loss, its parts (detached) and the predicted values v^0 (for the new priorities)."""
    S = net.support_size
    K = batch["actions"].shape[1]
    target_values = scalar_to_support(batch["target_values"], S, net.transform)
    target_rewards = scalar_to_support(batch["target_rewards"], S, net.transform)
    state = net.representation(batch["obs"])
    value_loss = reward_loss = policy_loss = torch.zeros(len(state), device=state.device)
    root_values = None
    for k in range(K + 1):
        if k > 0:
            state, reward_logits = net.dynamics(state, batch["actions"][:, k - 1])
            state = scale_gradient(state, 0.5)
        policy_logits, value_logits = net.prediction(state)
        if k == 0:
            root_values = support_to_scalar(value_logits.detach(), S, net.transform)
        v = -(target_values[:, k] * F.log_softmax(value_logits, dim=-1)).sum(-1)
        p = -(batch["target_policies"][:, k] * F.log_softmax(policy_logits, dim=-1)).sum(-1) * batch["policy_mask"][:, k]
        scale = 1.0 if k == 0 else 1.0 / K
        value_loss = value_loss + scale_gradient(v, scale)
        policy_loss = policy_loss + scale_gradient(p, scale)
        if k > 0:
            r = -(target_rewards[:, k] * F.log_softmax(reward_logits, dim=-1)).sum(-1)
            reward_loss = reward_loss + scale_gradient(r, scale)
    loss = (batch["weights"] * (value_loss_coef * value_loss + reward_loss + policy_loss)).mean()
    parts = {"value_loss": value_loss.detach().mean(), "reward_loss": reward_loss.detach().mean(),
             "policy_loss": policy_loss.detach().mean(), "loss": loss.detach()}
    return loss, parts, root_values


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



def load_model(path: str) -> tuple[MuZeroNet, dict]:
    ckpt = load_checkpoint(path, "muzero")
    net = MuZeroNet(**ckpt["model_args"])
    net.load_state_dict(ckpt["model"])
    return net, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """The search plays (no noise, the most visited move) on fresh environments, every episode at once (one batched
    search per move); one return per episode. In a two-player game the agent meets a uniformly random opponent,
    moving first in even episodes and second in odd ones; the return is +1 / 0 / -1 for its win / draw / loss."""
    net = load_model(agent_or_path)[0].to(device) if isinstance(agent_or_path, str) else agent_or_path
    envs = [gym.make(env_id) for _ in range(eval_episodes)]
    two_player = bool(getattr(envs[0].unwrapped, "two_player", False))
    opponent = np.random.default_rng(seed)
    obs = np.stack([env.reset(seed=seed + ep)[0] for ep, env in enumerate(envs)])
    returns, done, moves = [0.0] * eval_episodes, [False] * eval_episodes, [0] * eval_episodes

    def step(ep: int, action: int, agent: bool) -> None:
        o, reward, terminated, truncated, _ = envs[ep].step(action)
        obs[ep], moves[ep] = o, moves[ep] + 1
        returns[ep] += float(reward) if agent else -float(reward)  # a two-player reward goes to the mover
        done[ep] = terminated or truncated

    while not all(done):
        if two_player:  # the opponent moves where it is its turn (agent first in even episodes)
            for ep in range(eval_episodes):
                if not done[ep] and moves[ep] % 2 != ep % 2:
                    step(ep, int(opponent.choice(np.flatnonzero(legal_actions(obs[ep:ep + 1], True, len(obs[ep]) // 2)[0]))),
                         agent=False)
        active = [ep for ep in range(eval_episodes) if not done[ep]]
        if active:
            actions = net.greedy_action(torch.as_tensor(obs[active], dtype=torch.float32, device=device)).cpu().numpy()
            for ep, a in zip(active, actions, strict=True):
                step(ep, int(a), agent=True)
    for env in envs:
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
    # observation and puts the last one in info["final_obs"] (the bootstrap of a game cut by a time limit).
    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs_dim, num_actions = int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)
    two_player = bool(getattr(envs.unwrapped.envs[0].unwrapped, "two_player", False))
    # the paper's board games: no discount, value targets that run to the end of the game (its outcome), and values
    # and rewards in [-1, 1] learned as they are (scalars in the paper; here on the support -1, 0, 1, without phi)
    discount, td_steps, support_size = (1.0, 10**9, 1) if two_player else (args.discount, args.td_steps, args.support_size)
    if two_player:
        print(f"{args.env_id} is a two-player game: discount 1, value targets to the end of the game, values and "
              "rewards on the support -1, 0, 1 without the transform (--discount, --td-steps and --support-size "
              "apply to single-agent environments)", flush=True)
    model_args = {"obs_dim": obs_dim, "num_actions": num_actions, "hidden_state_size": args.hidden_state_size,
                  "hidden_sizes": list(args.hidden_sizes), "support_size": support_size, "two_player": two_player,
                  "discount": discount, "num_simulations": args.num_simulations, "pb_c_init": args.pb_c_init,
                  "pb_c_base": args.pb_c_base}

    net = MuZeroNet(**model_args).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay, fused=True)
    replay = GameReplay(args.buffer_size, args.seed)
    search_rng = np.random.default_rng(args.seed + 1)  # the root noise and the moves drawn from the visit counts
    generators = {"search": search_rng, "replay": replay.rng}

    # The training state a checkpoint holds; resuming puts it back. next_train: the step of the next training phase.
    global_step, origin, updates = 0, (0, 0.0), 0
    next_train = args.learning_starts + args.train_frequency
    histories = [new_history() for _ in range(args.num_envs)]  # the games in progress
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "muzero")
        check_resume(ckpt, args, model_args)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        next_train, updates = max(ckpt["next_train"], next_train), ckpt["updates"]
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (global_step, progress(global_step, ckpt["args"]["total_timesteps"], origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if ckpt["envs"]["resumable"] and len(ckpt["envs"]["subs"]) == args.num_envs:
            histories = [set_history_state(h) for h in ckpt["histories"]]
        if "buffer" in ckpt:
            replay.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay: {len(replay.games):,} games)", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "muzero", "env_id": args.env_id, "model_args": model_args, "model": net.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "next_train": next_train, "updates": updates, "schedule_origin": origin, "rng": rng_state(generators),
                "envs": env_state(envs, obs) if with_envs else {"resumable": False},
                "histories": [history_state(h, obs_dim, num_actions) for h in histories],
                **({"buffer": replay.state_dict()} if args.save_buffer else {})}

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

    start_step, start_time, start_updates = global_step, time.time(), updates
    search_time = train_time_only = 0.0
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    losses: dict[str, torch.Tensor] = {}  # the latest losses, detached; copied to the host only when logged

    while global_step < args.total_timesteps:
        fraction = progress(global_step, args.total_timesteps, origin)
        temperature = 1.0 if two_player else visit_temperature(fraction)
        t0 = time.perf_counter()
        net.eval()
        visits, root_values = net.search(obs, search_rng, args.dirichlet_alpha, args.exploration_fraction)
        actions = select_actions(visits, temperature, search_rng)
        if two_player:  # the paper's board games: temperature 1 for the first moves, then the most visited move
            late = np.array([len(h["actions"]) >= args.temperature_moves for h in histories])
            actions = np.where(late, visits.argmax(axis=1), actions)
        search_time += time.perf_counter() - t0
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        for i in range(args.num_envs):
            h = histories[i]
            h["obs"].append(obs[i].astype(np.float32))
            h["actions"].append(int(actions[i]))
            h["rewards"].append(np.float32(rewards[i]))
            h["root_values"].append(np.float32(root_values[i]))
            h["policies"].append((visits[i] / visits[i].sum()).astype(np.float32))
            if terminations[i] or truncations[i]:
                # a time limit cut the game: its last targets bootstrap from the value of the real last observation
                final_value = 0.0
                if truncations[i] and not terminations[i]:
                    final_value = float(net.initial_inference(infos["final_obs"][i][None])[0][0])
                replay.add(finish_game(h, final_value, discount, td_steps, two_player))
                histories[i] = new_history()
        obs = next_obs

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        t0 = time.perf_counter()
        net.train()
        while next_train <= global_step:
            next_train += args.train_frequency
            if replay.num_positions < args.batch_size:  # too few positions yet (or after resuming without the replay)
                continue
            lr = args.learning_rate * args.lr_decay ** progress(global_step, args.total_timesteps, origin)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for _ in range(args.gradient_steps):
                batch, index = replay.sample(args.batch_size, args.num_unroll_steps, args.per_alpha, args.per_beta)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, parts, predicted = muzero_losses(net, batch, args.value_loss_coef)
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm, foreach=True)
                if args.nan_check and not math.isfinite(loss.detach() + grad_norm):  # one host sync for both
                    fault("loss" if not torch.isfinite(loss.detach()) else "gradient norm")
                optimizer.step()
                replay.update_priorities(index, (predicted - batch["target_values"][:, 0]).abs().cpu().numpy())
                updates += 1
                losses.update(parts, learning_rate=torch.tensor(lr))
        train_time_only += time.perf_counter() - t0

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            elapsed = time.time() - start_time
            sps = int((global_step - start_step) / elapsed)
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/temperature", temperature, global_step)
            for key, value in losses.items():
                writer.add_scalar(f"charts/{key}" if key == "learning_rate" else f"losses/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            sims = (global_step - start_step) * args.num_simulations / max(search_time, 1e-9)
            print(f"step {global_step:>9,}  SPS {sps:>5,}  simulations/s {sims:>7,.0f}  updates {updates:>6,} "
                  f"({(updates - start_updates) / elapsed:.1f}/s)  return(last 20 episodes) {recent}", flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the step's updates: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
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

    net.eval()
    eval_start = time.time()
    eval_returns = evaluate(net, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    sims_per_second = (global_step - start_step) * args.num_simulations / max(search_time, 1e-9)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(the search plays, no noise; {time.time() - eval_start:.1f}s); trained {global_step - start_step:,} steps, "
          f"{updates - start_updates:,} updates in {train_time:.1f}s (search {search_time:.1f}s, "
          f"{sims_per_second:,.0f} simulations/s; updates {train_time_only:.1f}s)")
    if model_path:
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB"
              + (", with the replay)" if args.save_buffer else ")"))
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
        "updates": updates,
        "updates_per_second": (updates - start_updates) / train_time,
        "simulations_per_second": sims_per_second,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
