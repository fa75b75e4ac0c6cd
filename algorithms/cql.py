"""Conservative Q-Learning (CQL(H)) from a Minari dataset: SAC whose critics are pushed down on actions outside the data.

Paper: Kumar, Zhou, Tucker, Levine (2020), "Conservative Q-Learning for Offline Reinforcement Learning", NeurIPS,
https://arxiv.org/abs/2006.04779. Offline, an actor-critic's actor climbs Q towards actions the data never shows,
where nothing corrects the critic's errors, and Q diverges (td3_bc.py --no-bc shows it). CQL adds to each critic's
TD loss a penalty, alpha' * (log sum_a exp Q(s, a) - Q(s, a_data)): it lowers a soft maximum of Q over all actions
and raises Q on the data's actions, so that the learned Q lower-bounds the policy's value where the data is thin
(the paper's CQL(H), section 3.2). For Box actions it runs on SAC (sac.py: twin critics, a tanh-Gaussian actor, the
automatic entropy temperature); for Discrete actions on Q-learning (dqn.py's target), where the log-sum-exp over
actions is exact.

Run:
    python algorithms/cql.py --dataset-id onefile/hopper/medium-v0                   # 50k gradient steps
    python algorithms/cql.py --dataset-id onefile/hopper/medium-replay-v0 --seed 2
    python algorithms/cql.py --dataset-id onefile/hopper/medium-v0 --lagrange --target-action-gap 5
    python algorithms/cql.py --dataset-id onefile/cartpole/expert-v0 --cql-alpha 1     # Discrete: CQL on Q-learning
    python algorithms/cql.py --dataset-id mujoco/hopper/medium-v0     # a Minari dataset downloaded elsewhere
    python algorithms/cql.py --help

Defaults are CORL's cql.py (Tarasov et al. (2022), "CORL: Research-oriented Deep Offline Reinforcement Learning
Library", https://arxiv.org/abs/2210.07105; its TrainConfig): alpha' = cql_alpha = 10 without the Lagrange form,
N = 10 sampled actions of each kind, temperature 1, importance sampling, Adam lr 3e-4 for the critics and 3e-5 for
the actor and the entropy temperature, batch 256, gamma 0.99, tau 0.005, the soft target without the entropy
term (CORL's backup_entropy False), no BC warm-up (bc_steps 0), states standardised, rewards as they are. Two
differences, for speed on 2 CPU cores: 256-256 ReLU MLPs (CORL: three hidden layers) with PyTorch's default
initialisation (CORL: orthogonal), and 50k gradient steps where CORL runs 1M (benchmark_results/cql.md measures
what fits here).
Tested: on this collection's Hopper-v5 medium data, seed 1 reaches a normalised score >= 30 in 5k gradient steps,
above bc.py's last at 50k (tests/test_cql.py, slow; it needs that dataset).
Results: benchmark_results/cql.md

The math, as written in the code below, for a batch of the dataset's (s, a, r, s', terminated); s~ is s standardised
with the dataset's statistics, Q_1, Q_2 the twin critics, Q'_j their Polyak-averaged targets, alpha = exp(log_alpha):
    actor         u = mu(s~) + sigma(s~) * eps, a = scale * tanh(u) + bias           (sac.py's squashed Gaussian)
    target        y = r + gamma * (1 - terminated) * ( min_j Q'_j(s'~, a') [- alpha * log pi(a'|s')] ),  a' ~ pi(.|s')
                  (the bracket with --backup-entropy; --max-target-backup: the max over N sampled a' of it)
    soft maximum  the importance-sampled estimate of log integral exp(Q_j(s, a)/T) da (the paper's appendix F), from
                  M = 3N actions: N uniform in the bounds (density p = 1 / prod(high - low), (1/2)^d for [-1, 1]^d),
                  N from pi(.|s) and N from pi(.|s'), each with its own density p_i = pi(a_i|.), all at the state s:
                  LSE_j(s) = T * ( logsumexp_i( Q_j(s, a_i) / T - log p_i ) - log M )
    gap           gap_j = mean_batch( LSE_j(s) - Q_j(s, a) )     (a: the dataset's action. Over a finite set of actions
                  the gap is >= 0; over a box it can be negative: the log-integral falls below max_a Q where Q peaks
                  on a region narrower than a unit volume, which is what the penalty drives the critics to)
    critic loss   L_Q = sum_j [ mean( (Q_j(s, a) - y)^2 ) + w * (gap_j - g) ]
                  w = cql_alpha, g = 0;   --lagrange: w = cql_alpha * alpha', g = --target-action-gap
    alpha'        alpha' = clamp(exp(log_alpha'), 0, 1e6);  L_alpha' = -mean_j( alpha' * cql_alpha * (gap_j - g) )
                  (dual gradient descent: alpha' grows while the gap exceeds g, shrinks below it; the paper's appendix F)
    actor loss    L_pi = mean( alpha * log pi(a~|s) - min_j Q_j(s~, a~) ),  a~ ~ pi(.|s)
                  (the first --bc-steps gradient steps: mean( alpha * log pi(a~|s) - log pi(a|s) ), BC on the data)
    temperature   J_alpha = -mean( alpha * (log pi(a~|s) + target_entropy) ),  target_entropy = -|A|   (sac.py)
    targets       Q'_j <- tau * Q_j + (1 - tau) * Q'_j after every gradient step
Discrete actions (CQL on Q-learning):
    y = r + gamma * (1 - terminated) * max_b Q'(s'~, b),   LSE(s) = T * logsumexp_b( Q(s~, b) / T )   (exact: all actions)
    L_Q = mean( (Q(s~, a) - y)^2 ) + w * (mean_batch( LSE(s) - Q(s~, a) ) - g)
    data's Q scale     G_t = sum_k gamma^k r_(t+k) to the end of t's episode (printed once: what the behaviour's Q
                       should be near; CQL's Q on the data's actions should sit at or below it)
    evaluation         score = 100 * (R - R_random) / (R_expert - R_random)    (Minari's get_normalized_score x 100)

Notes on the code:
- The 3N + 1 actions of each state (the data's, N uniform, N from pi(.|s), N from pi(.|s')) go through both critics in
  one batched forward: the state is repeated, the actions stacked, [2, (3N + 1) * B] values from one call of sac.py's
  BatchedTwinQCritic (both critics' weights stacked). Sampled actions and their log-densities carry no gradient
  (CORL's detach): the penalty trains the critics only.
- The estimate keeps the paper's 1/M inside the log (log M = log 30 for N = 10); CORL's code drops it. It is a
  constant: the critics' gradients are the same, but with --lagrange our gap is CORL's minus log(3N), which shifts
  the meaning of --target-action-gap by that much. With --lagrange, alpha' starts at e (log_alpha' = 1, CORL's).
- All losses are computed from the networks as they are at the start of the step (CORL's order: the actor's loss
  reads the critics before their update), and the critics' weights are detached in the actor's loss, the temperature
  and the gap in the others' losses: each loss reaches its own parameters only. So one Adam with a parameter group
  per part (the actor and the temperature at --policy-lr, the critics and alpha' at --q-lr) takes the step of CORL's
  four optimisers: Adam is per parameter.
- The actions of a Box dataset are in the environment's units everywhere (the uniform ones in [low, high]); the data's
  actions' log-probabilities (the BC warm-up) invert the squashing with atanh, clamped just inside (-1, 1).

An offline file (bc.py's skeleton, repeated here):
- --dataset-id names any Minari dataset present locally (tools/make_dataset.py builds this collection's; a
  dataset downloaded with `minari download` works too); nothing is downloaded. The evaluation environment is the
  dataset's own (`recover_environment(eval_env=True)`), and the score is normalised with the dataset's reference
  returns (none recorded: the raw return only).
- Every count is in gradient steps (--total-updates, --eval-every, --log-every, --checkpoint-every). Each evaluation
  logs eval/episodic_return and eval/normalized_score; the run reports the last and the best normalised score, as CORL
  does. losses/q_values is the mean Q_1(s~, a) over the batch of the data's (s, a), against the data's discounted
  returns G_t; losses/cql_gap the mean gap_j, losses/cql_penalty the term w * (gap_j - g) summed over the critics,
  losses/alpha_prime the weight w. The state statistics are buffers of the evaluated network (the actor, or the
  Q-network for Discrete actions), so every checkpoint carries them and `evaluate` (and tools/evaluate.py) feeds it
  raw observations.
- Long runs, the same form as the deep files': checkpoints every --checkpoint-every gradient steps (the networks, the
  target critics, log_alpha, log_alpha', the Adam state, the step, every random generator), Ctrl-C or SIGTERM writes
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
    exp_name: str = "cql"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch (the sampled actions), the batch sampler and the evaluation episodes"""
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
    """a Minari dataset (Box or Discrete actions) present under $MINARI_DATASETS_PATH (tools/make_dataset.py builds this collection's)"""
    total_updates: int = 50_000
    """gradient steps (CORL: 1M)"""
    cql_alpha: float = 10.0
    """the weight of the conservative gap in the critics' loss (with --lagrange: multiplied by the learned alpha')"""
    lagrange: bool = False
    """if toggled, learn the gap's weight alpha' by dual gradient descent towards --target-action-gap"""
    target_action_gap: float = 5.0
    """with --lagrange: the gap (soft maximum minus Q on the data) that alpha' holds the critics to (CORL's and the authors' code drop the estimate's 1/M: their threshold t reads t - log(3N) here)"""
    n_actions: int = 10
    """Box actions: N, the uniform actions and the actions from pi(.|s) and from pi(.|s') per state in the soft maximum"""
    temperature: float = 1.0
    """T of the soft maximum T * log sum exp(Q / T)"""
    max_target_backup: bool = False
    """Box actions: if toggled, the target takes the max over N actions from pi(.|s') of min_j Q'_j"""
    backup_entropy: bool = False
    """Box actions: if toggled, the target subtracts alpha * log pi(a'|s') (SAC's soft target; CORL: off)"""
    bc_steps: int = 0
    """Box actions: the first this many gradient steps train the actor by behaviour cloning (log pi of the data's action)"""
    autotune: bool = True
    """Box actions: if toggled, learn the entropy temperature alpha towards the target entropy -|A|"""
    alpha: float = 1.0
    """Box actions: the entropy temperature when --no-autotune"""
    normalize_obs: bool = True
    """if toggled, standardise observations with the dataset's mean and std (saved with the model)"""
    policy_lr: float = 3e-5
    """the Adam learning rate of the actor and of the entropy temperature (CORL's 3e-5)"""
    q_lr: float = 3e-4
    """the Adam learning rate of the critics (the Q-network for Discrete actions) and of alpha'"""
    batch_size: int = 256
    """transitions per gradient step, drawn uniformly with replacement"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: theta' <- tau * theta + (1 - tau) * theta'"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the actor and of each critic (CORL: 256, 256, 256)"""
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
    for name in ("total_updates", "batch_size", "n_actions", "eval_every", "eval_episodes", "log_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.policy_lr < math.inf or not 0 < args.q_lr < math.inf:
        fail(f"need 0 < --policy-lr, --q-lr < inf, got {args.policy_lr} and {args.q_lr}")
    if not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail(f"need 0 < --tau <= 1 and 0 < --gamma <= 1, got {args.tau} and {args.gamma}")
    if not 0 <= args.cql_alpha < math.inf or not 0 <= args.alpha < math.inf:
        fail(f"need 0 <= --cql-alpha, --alpha < inf, got {args.cql_alpha} and {args.alpha}")
    if not 0 < args.temperature < math.inf:
        fail(f"--temperature must be positive and finite, got {args.temperature}")
    if not -math.inf < args.target_action_gap < math.inf:
        fail(f"--target-action-gap must be finite, got {args.target_action_gap}")
    if not args.bc_steps >= 0:
        fail(f"--bc-steps must be >= 0, got {args.bc_steps}")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
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


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's and the authors' clipping of the policy's log standard deviation


class TanhGaussianActor(nn.Module):
    """sac.py's squashed Gaussian policy on raw observations, standardised inside with the dataset's statistics (buffers:
    saved with the weights): u ~ N(mean(s~), sigma(s~)^2), a = action_scale * tanh(u) + action_bias."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], action_low, action_high):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden_sizes)  # the mean and the log standard deviation of u
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)
        # everything in log pi(a|s) that does not depend on s (see sample), derived from the bounds, so not saved
        log_prob_const = torch.log(self.action_scale).sum() + act_dim * (0.5 * math.log(2 * math.pi) + 2.0 * math.log(2.0))
        self.register_buffer("log_prob_const", log_prob_const, persistent=False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net((obs - self.obs_mean) / self.obs_std).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparameterised actions per state, [n, B, act_dim] in [low, high], and their log-probabilities [n, B].

        sac.py's Actor.sample with n draws at once (the network runs once per state): u - mean = sigma * eps, so
        log N(u; mean, sigma) = -eps^2 / 2 - log sigma - log(2 pi) / 2, and -log(1 - tanh(u)^2) = 2 * (u + softplus(-2u))
        - 2 log 2; the terms without s are in log_prob_const (the tests check it against squashed_gaussian_log_prob).
        """
        mean, log_std = self(obs)
        eps = torch.randn((n, *mean.shape), dtype=mean.dtype, device=mean.device)
        u = mean + log_std.exp() * eps
        log_pi = (2.0 * (u + F.softplus(-2.0 * u)) - 0.5 * eps.square() - log_std).sum(-1) - self.log_prob_const
        return torch.addcmul(self.action_bias, self.action_scale, torch.tanh(u)), log_pi

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of given actions (the data's, for the BC warm-up): u = atanh((a - bias) / scale), clamped just
        inside (-1, 1) so that an action on a bound has a finite log-probability."""
        mean, log_std = self(obs)
        y = ((actions - self.action_bias) / self.action_scale).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        return squashed_gaussian_log_prob(torch.atanh(y), mean, log_std, self.action_scale)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The squashed mean, scale * tanh(mean(s~)) + bias, in the environment's units (what evaluation plays)."""
        return self.action_scale * torch.tanh(self(obs)[0]) + self.action_bias


class BatchedTwinQCritic(nn.Module):
    """Two critics Q_j(s, a), j = 1, 2, stored as one stack of weights [2, in, out] per layer.

    One batched matrix product per layer evaluates both critics: the arithmetic of two separate MLPs (td3.py's
    TwinQCritic), in half the operator calls. Initialised like nn.Linear (uniform in +-1/sqrt(fan_in)).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden_sizes, 1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(2, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(2, 1, n_out).uniform_(-bound, bound)))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """Returns [2, B]: row j is Q_j(s, a). detach_params: gradients flow to the actions only."""
        h = torch.cat([obs, actions], dim=1).expand(2, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_params:
                w, b = w.detach(), b.detach()
            if i < last:
                h = F.relu(torch.baddbmm(b, h, w))
            else:
                # The output layer has one unit: a dot product. Written as multiply-and-sum because a matrix
                # product with an inner dimension of 1, which its backward pass would need, takes the CPU
                # BLAS's slow path.
                h = (h * w.transpose(1, 2)).sum(-1) + b.squeeze(-1)
        return h


class DiscreteQNetwork(nn.Module):
    """Q(s, .) for Discrete actions, one value per action, on raw observations standardised inside with the dataset's
    statistics (buffers: saved with the weights)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim, n_actions, hidden_sizes)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net((obs - self.obs_mean) / self.obs_std)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """argmax_b Q(s, b): the action evaluation plays."""
        return self(obs).argmax(dim=-1)


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                               action_scale: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) for a = action_scale * tanh(u) + action_bias, u ~ N(mean, exp(log_std)^2); sums over the last
    (action) dimension.

    Change of variables (2018a, appendix C, eq. 21) through tanh and then the affine map into the bounds:
    log pi(a) = log N(u) - sum log(1 - tanh(u)^2) - sum log(action_scale).
    log(1 - tanh(u)^2) = log(4 / (e^u + e^-u)^2) = 2 * (log 2 - u - softplus(-2u)), exact for every u, where
    the naive form reaches log(0) = -inf once tanh(u) rounds to 1 (|u| > ~9 in float32).
    """
    log_normal = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det_tanh = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (log_normal - log_det_tanh - torch.log(action_scale)).sum(-1)


def importance_sampled_logsumexp(q: torch.Tensor, log_density: torch.Tensor, temperature: float) -> torch.Tensor:
    """T * log( 1/M * sum_i exp(Q_i / T) / p_i ): the importance-sampled estimate of T * log integral exp(Q(s, a) / T) da
    from M actions a_i drawn from densities p_i (the paper's appendix F). q: [..., M, B] (the samples along dim -2),
    log_density: log p_i, [M, B]; returns [..., B]. Unbiased inside the log: E[exp(Q/T) / p] is the integral."""
    m = q.shape[-2]
    return temperature * (torch.logsumexp(q / temperature - log_density, dim=-2) - math.log(m))


def exact_logsumexp(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """T * log sum_b exp(Q(s, b) / T) over Discrete actions (the last dimension): exact, no sampling."""
    return temperature * torch.logsumexp(q / temperature, dim=-1)


def conservative_gap(logsumexp_q: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """mean over the batch (the last dimension) of the soft maximum minus Q on the data's action: what CQL(H) lowers."""
    return (logsumexp_q - q_data).mean(-1)


def cql_critic_loss(q_data: torch.Tensor, y: torch.Tensor, gap: torch.Tensor, weight: torch.Tensor | float,
                    target_gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The critics' TD loss sum_j mean((Q_j(s, a) - y)^2) and the conservative penalty sum_j w * (gap_j - g); q_data
    [..., B] (one row per critic), gap [...]. The weight w carries no gradient (alpha' learns by its own loss)."""
    return ((q_data - y) ** 2).mean(-1).sum(), (weight * (gap - target_gap)).sum()


def lagrange_loss(log_alpha_prime: torch.Tensor, gap: torch.Tensor, cql_alpha: float, target_gap: float) -> torch.Tensor:
    """L = -mean_j( alpha' * cql_alpha * (gap_j - g) ), alpha' = clamp(exp(log_alpha'), 0, 1e6), the gap held constant:
    its gradient in log_alpha' is negative while the gap exceeds g, so gradient descent raises alpha' (and the
    penalty's weight) until the critics close the gap to g; below g, alpha' falls."""
    alpha_prime = log_alpha_prime.exp().clamp(0.0, 1e6)
    return -(alpha_prime * cql_alpha * (gap.detach() - target_gap)).mean()


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


def temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """J(alpha) = -mean(alpha * (log pi + target_entropy)), alpha = exp(log_alpha), optimised in log_alpha.

    Its gradient in log_alpha is -alpha * (target_entropy - entropy estimate): alpha grows when the
    policy's entropy (-log pi) is below the target and shrinks when it is above.
    """
    return -(log_alpha.exp() * (log_pi + target_entropy).detach()).mean()


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


def load_model(path: str) -> tuple[TanhGaussianActor | DiscreteQNetwork, dict]:
    """The evaluated network of a checkpoint written by this file (the actor for Box actions, the Q-network for
    Discrete ones; on raw observations), and the checkpoint."""
    ckpt = load_checkpoint(path, "cql")
    network = (DiscreteQNetwork if "n_actions" in ckpt["model_args"] else TanhGaussianActor)(**ckpt["model_args"])
    network.load_state_dict(ckpt["model"])
    return network, ckpt


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
    discrete = isinstance(dataset.action_space, gym.spaces.Discrete)
    obs, next_obs, rewards, terminations = (torch.as_tensor(data[k], dtype=torch.float32, device=device)
                                            for k in ("observations", "next_observations", "rewards", "terminations"))
    actions = torch.as_tensor(data["actions"], dtype=torch.int64 if discrete else torch.float32, device=device)
    n, obs_dim = len(obs), obs.shape[1]
    if discrete:
        model_args = {"obs_dim": obs_dim, "n_actions": int(dataset.action_space.n), "hidden_sizes": list(args.hidden_sizes)}
        model = DiscreteQNetwork(**model_args).to(device)  # the Q-network is the evaluated network
    else:
        act_dim = actions.shape[1]
        model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes),
                      "action_low": dataset.action_space.low.tolist(), "action_high": dataset.action_space.high.tolist()}
        model = TanhGaussianActor(**model_args).to(device)
    if args.normalize_obs:
        mean, std = obs_statistics(data["observations"])
        model.obs_mean.copy_(torch.as_tensor(mean))
        model.obs_std.copy_(torch.as_tensor(std))
    critic = model if discrete else BatchedTwinQCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    critic_target = copy.deepcopy(critic)
    # SB3 and CleanRL start the entropy temperature at 1 (log_alpha = 0); CORL starts alpha' at e (log_alpha' = 1)
    log_alpha = torch.tensor([0.0 if args.autotune else math.log(max(args.alpha, 1e-12))], device=device,
                             requires_grad=args.autotune and not discrete)
    log_alpha_prime = torch.tensor([1.0], device=device, requires_grad=args.lagrange)
    # One Adam, a parameter group per part (see the docstring: each loss reaches its own parameters only).
    # fused=True: Adam's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    groups = [{"params": list(critic.parameters()), "lr": args.q_lr}]
    if not discrete:
        groups.append({"params": list(model.parameters()), "lr": args.policy_lr})
        if args.autotune:
            groups.append({"params": [log_alpha], "lr": args.policy_lr})
    if args.lagrange:
        groups.append({"params": [log_alpha_prime], "lr": args.q_lr})
    optimizer = torch.optim.Adam(groups, fused=True)
    target_entropy = -float(act_dim) if not discrete else 0.0
    if not discrete:
        low, high = model.action_bias - model.action_scale, model.action_bias + model.action_scale
        log_uniform_density = -torch.log(high - low).sum()  # log(1 / volume of the action box)
    sampler = np.random.default_rng(args.seed)
    # the sampled and uniform actions are drawn from torch's generator, which rng_state saves with the sampler's
    generators = {"sampler": sampler}
    returns_to_go = discounted_returns_to_go(data["rewards"], data["episode"], args.gamma)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        """s~ for the critics (the actor standardises inside, with the same buffers)."""
        return (x - model.obs_mean) / model.obs_std

    # The training state a checkpoint holds; resuming puts it back.
    global_step, best_score, last_score = 0, -math.inf, math.nan
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "cql")
        check_offline_resume(ckpt, args, model_args)
        if len(ckpt["optimizer"]["param_groups"]) != len(optimizer.param_groups):
            fail(f"--resume {args.resume} was trained with other --lagrange / --autotune settings; resume with the "
                 "options it was trained with")
        for name, obj in (("model", model), ("critic", critic), ("critic_target", critic_target),
                          ("optimizer", optimizer)):
            obj.load_state_dict(ckpt[name])
        with torch.no_grad():
            log_alpha.copy_(ckpt["log_alpha"])
            log_alpha_prime.copy_(ckpt["log_alpha_prime"])
        global_step, best_score, last_score = ckpt["global_step"], ckpt["best_score"], ckpt["last_score"]
        set_rng_state(ckpt["rng"], generators)
        print(f"resumed from {args.resume} at gradient step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "cql", "env_id": env_spec.id, "dataset_id": args.dataset_id, "model_args": model_args,
                "model": model.state_dict(), "args": asdict(args), "critic": critic.state_dict(),
                "critic_target": critic_target.state_dict(), "optimizer": optimizer.state_dict(),
                "log_alpha": log_alpha.detach().clone(), "log_alpha_prime": log_alpha_prime.detach().clone(),
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
        returns = evaluate(model, env_spec, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
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
    k = args.n_actions

    while global_step < args.total_updates:
        idx = torch.from_numpy(sampler.integers(0, n, size=args.batch_size)).to(device)
        b_obs, b_actions, b_rewards, b_next_obs, b_terminations = (
            obs[idx], actions[idx], rewards[idx], next_obs[idx], terminations[idx])
        alpha_prime = log_alpha_prime.detach().exp().clamp(0.0, 1e6)
        weight = args.cql_alpha * alpha_prime[0] if args.lagrange else args.cql_alpha
        target_gap = args.target_action_gap if args.lagrange else 0.0
        if discrete:
            # CQL on Q-learning: the log-sum-exp over actions is exact
            with torch.no_grad():
                y = td_target(b_rewards, b_terminations, critic_target(b_next_obs).max(dim=1).values, args.gamma)
            q_all = critic(b_obs)
            q_data = q_all.gather(1, b_actions[:, None]).squeeze(1)
            gap = conservative_gap(exact_logsumexp(q_all, args.temperature), q_data)
            qf_loss, penalty = cql_critic_loss(q_data, y, gap, weight, target_gap)
            loss = qf_loss + penalty
        else:
            b = args.batch_size
            s, s_next = normalise(b_obs), normalise(b_next_obs)
            alpha = log_alpha.detach().exp()
            with torch.no_grad():
                # the soft target (2018a, eq. 5-6), from the target critics
                next_actions, next_log_pi = model.sample(b_next_obs, k if args.max_target_backup else 1)
                m = len(next_actions)
                next_q = critic_target(s_next.repeat(m, 1), next_actions.reshape(m * b, -1)).view(2, m, b)
                next_v = torch.min(next_q[0], next_q[1])  # [m, B]
                if args.backup_entropy:
                    next_v = next_v - alpha * next_log_pi
                y = td_target(b_rewards, b_terminations, next_v.max(dim=0).values, args.gamma)
                # the soft maximum's samples: N uniform, N from pi(.|s), N from pi(.|s'), all evaluated at s
                uniform = torch.rand((k, b, act_dim), device=device) * (high - low) + low
                pi_actions, pi_log_density = model.sample(torch.cat([b_obs, b_next_obs]), k)  # [k, 2B, .]
                log_density = torch.cat([log_uniform_density.expand(k, b), pi_log_density[:, :b], pi_log_density[:, b:]])  # [3k, B]
            stacked = torch.cat([b_actions[None], uniform, pi_actions[:, :b], pi_actions[:, b:]], dim=0)  # [3k + 1, B, .]
            q = critic(s.repeat(3 * k + 1, 1), stacked.reshape(-1, act_dim)).view(2, 3 * k + 1, b)
            q_data = q[:, 0]  # [2, B]: Q_j on the data's actions
            gap = conservative_gap(importance_sampled_logsumexp(q[:, 1:], log_density, args.temperature), q_data)
            qf_loss, penalty = cql_critic_loss(q_data, y, gap, weight, target_gap)

            # the actor and the temperature, from the critics as they are before this step (weights detached)
            new_actions, log_pi = model.sample(b_obs)
            new_actions, log_pi = new_actions[0], log_pi[0]
            if global_step < args.bc_steps:
                actor_loss = (alpha * log_pi - model.log_prob(b_obs, b_actions)).mean()
            else:
                q_pi = critic(s, new_actions, detach_params=True)
                actor_loss = (alpha * log_pi - torch.min(q_pi[0], q_pi[1])).mean()
            loss = qf_loss + penalty + actor_loss
            if args.autotune:
                alpha_loss = temperature_loss(log_alpha, log_pi, target_entropy)
                loss = loss + alpha_loss
                losses.update(alpha_loss=alpha_loss.detach())
            losses.update(actor_loss=actor_loss.detach(), alpha=alpha[0], entropy=-log_pi.detach().mean())
        if args.lagrange:
            alpha_prime_loss = lagrange_loss(log_alpha_prime, gap, args.cql_alpha, args.target_action_gap)
            loss = loss + alpha_prime_loss
            losses.update(alpha_prime_loss=alpha_prime_loss.detach())
        optimizer.zero_grad()
        loss.backward()
        if args.nan_check and not math.isfinite(loss.detach()):  # before the step: the networks stay finite
            fault("loss")
        optimizer.step()
        soft_update(critic_target, critic, args.tau)
        global_step += 1
        losses.update(qf_loss=qf_loss.detach(), cql_penalty=penalty.detach(), cql_gap=gap.detach().mean(),
                      alpha_prime=torch.as_tensor(weight), q_values=q_data.detach().mean() if discrete else q_data.detach()[0].mean())

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = int((global_step - start_step) / (time.time() - start_time - eval_seconds))
            writer.add_scalar("charts/SPS", ups, global_step)  # gradient steps per second, evaluations left out
            values = {key: value.item() for key, value in losses.items()}
            for key, value in values.items():
                writer.add_scalar(f"losses/{key}", value, global_step)
            actor_text = f"  actor loss {values['actor_loss']:.4f}  alpha {values['alpha']:.4f}" if "actor_loss" in values else ""
            print(f"update {global_step:>9,}  updates/s {ups:>6,}  critic loss {values['qf_loss']:.4f}  "
                  f"Q {values['q_values']:.1f}  cql gap {values['cql_gap']:.3f}  alpha' {values['alpha_prime']:.4g}"
                  f"{actor_text}", flush=True)
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
