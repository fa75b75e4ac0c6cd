"""Rainbow: DQN with six extensions combined, each switchable off for the paper's ablations.

Paper: Hessel et al. (2018), "Rainbow: Combining Improvements in Deep Reinforcement Learning", AAAI,
https://arxiv.org/abs/1710.02298. Its parts: double Q-learning (van Hasselt et al., 2016), prioritised
replay (Schaul et al., 2016, https://arxiv.org/abs/1511.05952), dueling networks (Wang et al., 2016),
multi-step returns (Sutton, 1988), distributional C51 (Bellemare et al., 2017,
https://arxiv.org/abs/1707.06887) and noisy networks (Fortunato et al., 2018, https://arxiv.org/abs/1706.10295).

Run:
    python algorithms/rainbow.py --env-id CartPole-v1
    python algorithms/rainbow.py --env-id LunarLander-v3 --total-timesteps 300000 --v-min -100 --v-max 200 \
        --learning-rate 6.3e-4 --target-network-frequency 250 --learning-starts 5000 --train-frequency 2 \
        --hidden-sizes 256 256
    python algorithms/rainbow.py --no-noisy --no-prioritized --n-step 1      # ablations, any combination
    python algorithms/rainbow.py --help

Ablation flags (all six parts are on by default):
    --no-double  --no-dueling  --no-prioritized  --n-step 1  --no-distributional  --no-noisy
With --no-noisy the agent explores epsilon-greedily as dqn.py (start_e -> end_e); with --no-distributional
the head outputs one Q value per action and the loss is the Huber loss on the expected value.

The math, as written in the code below. A stored transition is an n-step one (s_t, a_t, R, s', d, g):
    n-step return R = sum_{k=0}^{m-1} gamma^k r_{t+k}, m = n, or fewer steps if the episode ends first;
                  s' = the observation after those m steps (the real final one at an episode end),
                  d = 1 if the episode terminated within them, g = gamma^m (the discount of the bootstrap)
    next action   a* = argmax_a Q_online(s', a)   (double; --no-double: argmax_a Q_target(s', a))
                  where Q(s, a) = sum_i z_i p_i(s, a) when distributional
    C51 target    Tz_j = clip(R + (1 - d) g z_j, v_min, v_max) over the support z_1..z_N (Bellemare eq. 7)
                  (Phi T Z)_i = sum_j clip(1 - |Tz_j - z_i| / dz, 0, 1) p_j(s', a*)   with p from the target net
                  (computed as the split of each p_j between the atoms floor(b_j), ceil(b_j), b_j = (Tz_j - v_min) / dz)
    C51 loss      l_i = KL(Phi T Z || p(s_t, a_t)) per sample;   L = mean_i(w_i l_i)
    expected loss y = R + (1 - d) g Q_target(s', a*);  l_i = huber(Q(s_t, a_t) - y);  L = mean_i(w_i l_i)
    prioritised   P(i) = p_i^alpha / sum_k p_k^alpha (a sum tree), p_i = l_i + eps after each update
                  (the KL for C51, as the paper; |delta| for the expected loss, as Schaul et al.),
                  new transitions get max_i p_i;  w_i = (N P(i))^-beta / max_j w_j, beta: beta_start -> 1
    dueling       Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')   (per atom on the logits when distributional)
    target net    theta' <- tau * theta + (1 - tau) * theta' every target_network_frequency steps (tau=1: copy)
    noisy layer   y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b,
                  eps_w = f(eps_out) f(eps_in)^T, eps_b = f(eps_out), f(x) = sign(x) sqrt(|x|)   (factorised)
                  noise is resampled before every gradient step and every action; eval() uses mu only.

Time limits and episode ends: Gymnasium's same-step autoreset mode; the last observation of an episode is
info["final_obs"]. A terminated step ends the n-step sum with d = 1 (no bootstrap); a truncated step ends it
with d = 0, bootstrapping from the real final observation with gamma^m for the m steps actually summed.
Every environment (--num-envs) has its own n-step queue. Every count (train_frequency,
target_network_frequency, learning_starts, the beta and epsilon schedules) is in environment steps summed
over the environments, as in dqn.py.

Network for flat observations (the Atari torso of the paper is convolutional and not noisy): the first
hidden layer is an ordinary Linear layer (the "torso"); the further hidden layers and the heads are noisy.

The defaults are chosen for CartPole-v1 in 100k steps; the paper's Atari values are alpha 0.5, beta 0.4 -> 1,
n 3, 51 atoms, sigma_0 0.5, Adam eps 1.5e-4.
Tested: all six parts on, seed 1 reaches a greedy return of 475 on CartPole-v1 in 100k steps (tests/test_rainbow.py).
Results: benchmark_results/rainbow.md

Long runs (the form of ppo.py, the same in every deep file):
    python algorithms/rainbow.py --checkpoint-every 50000 --save-buffer    # runs/<run>/checkpoint_<step>.pt
    python algorithms/rainbow.py --resume runs/<run>/checkpoint_<step>.pt  # continue up to --total-timesteps
A checkpoint holds the online and target networks (with the noisy layers' current noise), the optimiser, the step
counters (next training phase, next target update), every random generator's state (the noise is drawn from
torch's), the classic-control environments' own state with each environment's n-step queue of steps not yet
stored (other environments start new episodes on resume, and the queues start empty) and, with --save-buffer, the
replay buffer with its sum tree of priorities and the largest priority seen; resumed with all of it, a run ends
with the same parameters as one never interrupted. Ctrl-C or SIGTERM stops the run after the current step's
update, writes a checkpoint and exits 130 / 143 with the command that resumes it. The beta and epsilon schedules
read the progress through --total-timesteps: a larger value on resume stretches what is left of them. A NaN or
infinite observation, reward, loss or gradient norm stops the run (exit 3), keeping the last finite state in
runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.
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
    exp_name: str = "rainbow"
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
    adam_eps: float = 1.5e-4
    """Adam's epsilon (the paper's value)"""
    buffer_size: int = 100_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate: 1.0 copies the online network (as the paper), < 1 is Polyak averaging"""
    target_network_frequency: int = 500
    """environment steps between target network updates"""
    batch_size: int = 128
    """transitions per gradient step"""
    learning_starts: int = 1000
    """environment steps of random-policy data collected before learning starts"""
    train_frequency: int = 4
    """environment steps between training phases"""
    gradient_steps: int = 1
    """gradient steps in each training phase"""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """widths of the ReLU hidden layers (the first is an ordinary Linear layer, the rest noisy)"""
    max_grad_norm: float = 10.0
    """the maximum norm of the gradient (global clipping)"""

    double: bool = True
    """double Q-learning: the online network selects the next action, the target network evaluates it"""
    dueling: bool = True
    """dueling head: Q = V + A - mean(A)"""
    prioritized: bool = True
    """proportional prioritised replay (sum tree); off: uniform replay"""
    alpha: float = 0.5
    """prioritisation exponent: P(i) = p_i^alpha / sum_k p_k^alpha (0 is uniform)"""
    beta_start: float = 0.4
    """importance-sampling exponent at the start, annealed linearly to 1 over the run"""
    prior_eps: float = 1e-6
    """added to every priority so that no transition has probability 0"""
    n_step: int = 3
    """steps of the multi-step return (1 turns multi-step returns off)"""
    distributional: bool = True
    """C51 distributional loss; off: expected Q with the Huber loss"""
    n_atoms: int = 51
    """atoms of the return distribution's support"""
    v_min: float = 0.0
    """the lowest atom (CartPole's returns are >= 0)"""
    v_max: float = 100.0
    """the highest atom (CartPole's values are <= 1 / (1 - gamma) = 100)"""
    noisy: bool = True
    """noisy networks for exploration (no epsilon-greedy); off: epsilon-greedy"""
    sigma_0: float = 0.5
    """initial noise scale of the factorised noisy layers: sigma = sigma_0 / sqrt(fan_in)"""
    start_e: float = 1.0
    """with --no-noisy: the starting exploration epsilon"""
    end_e: float = 0.02
    """with --no-noisy: the final exploration epsilon"""
    exploration_fraction: float = 0.1
    """with --no-noisy: the fraction of total_timesteps over which epsilon decays from start_e to end_e"""
    eval_episodes: int = 10
    """episodes of the final greedy evaluation (noisy layers use their mean weights)"""
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
                 "target_network_frequency", "eval_episodes", "log_every", "torch_threads", "keep_checkpoints",
                 "n_step"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not args.max_grad_norm > 0 or not args.checkpoint_every >= 0:
        fail(f"need 0 < --learning-rate < inf, --max-grad-norm > 0 and --checkpoint-every >= 0, got "
             f"{args.learning_rate}, {args.max_grad_norm} and {args.checkpoint_every}")
    if not 0 < args.adam_eps < math.inf or not 0 < args.prior_eps < math.inf:
        fail(f"need 0 < --adam-eps < inf and 0 < --prior-eps < inf, got {args.adam_eps} and {args.prior_eps}")
    if not (args.hidden_sizes and all(h > 0 for h in args.hidden_sizes)):
        fail(f"--hidden-sizes needs one or more positive widths, got {' '.join(map(str, args.hidden_sizes))}")
    if not (args.learning_starts >= 0 and 0 < args.tau <= 1 and 0 < args.gamma <= 1):
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not (0 <= args.start_e <= 1 and 0 <= args.end_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need --start-e and --end-e in [0, 1] and 0 < --exploration-fraction <= 1")
    if args.n_atoms < 2:
        fail(f"--n-atoms must be at least 2 (the support needs two ends), got {args.n_atoms}")
    if not -math.inf < args.v_min < args.v_max < math.inf:
        fail(f"need finite --v-min < --v-max, got {args.v_min} and {args.v_max}")
    if not (0 <= args.alpha < math.inf and 0 <= args.beta_start <= 1):
        fail(f"need 0 <= --alpha < inf and 0 <= --beta-start <= 1, got {args.alpha} and {args.beta_start}")
    if not 0 <= args.sigma_0 < math.inf:
        fail(f"--sigma-0 must be >= 0 and finite, got {args.sigma_0}")
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
        fail(f"rainbow.py needs Discrete actions and flat Box observations, {args.env_id} has {action_space} and "
             f"{obs_space}; use e.g. CartPole-v1 (Box actions: ddpg.py, td3.py, sac.py)")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def scale_noise(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sign(x) sqrt(|x|), the factorised noise's transform (Fortunato et al., 2018, section 3)."""
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """A linear layer with factorised Gaussian noise on its weights and biases (Fortunato et al., 2018).

    Training mode: y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b, with eps_w = f(eps_out) f(eps_in)^T
    (an [out, in] outer product of out + in Gaussian draws) and eps_b = f(eps_out). eval(): y = mu_w x + mu_b.
    """

    def __init__(self, in_features: int, out_features: int, sigma_0: float = 0.5):
        super().__init__()
        bound = 1 / np.sqrt(in_features)  # mu ~ U(-1/sqrt(p), 1/sqrt(p)), sigma = sigma_0 / sqrt(p)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma_0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma_0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features))  # f-transformed noise
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_noise()

    def reset_noise(self) -> None:
        self.eps_in.copy_(scale_noise(torch.randn_like(self.eps_in)))
        self.eps_out.copy_(scale_noise(torch.randn_like(self.eps_out)))

    def weight_epsilon(self) -> torch.Tensor:
        return torch.outer(self.eps_out, self.eps_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * self.weight_epsilon()
        return F.linear(x, weight, self.bias_mu + self.bias_sigma * self.eps_out)


def dueling_aggregate(value: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), the mean over the action dimension (dim 1).

    value [B, 1], advantages [B, n_actions]; with a trailing atom dimension ([B, 1, n_atoms] and
    [B, n_actions, n_atoms]) the mean is taken per atom. Subtracting the mean makes V and A identifiable
    (Wang et al., 2016, eq. 9).
    """
    return value + advantages - advantages.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    """MLP whose output is logits [B, n_actions, n_atoms] (distributional) or Q values [B, n_actions]."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...] = (128, 128), dueling: bool = True,
                 noisy: bool = True, distributional: bool = True, n_atoms: int = 51, v_min: float = 0.0,
                 v_max: float = 100.0, sigma_0: float = 0.5):
        super().__init__()

        def linear(i: int, o: int) -> nn.Module:
            return NoisyLinear(i, o, sigma_0) if noisy else nn.Linear(i, o)

        layers, width = [nn.Linear(obs_dim, hidden_sizes[0]), nn.ReLU()], hidden_sizes[0]
        for h in hidden_sizes[1:]:
            layers += [linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.n_actions, self.dueling, self.distributional = n_actions, dueling, distributional
        self.n_out = n_atoms if distributional else 1
        if dueling:
            self.value_head = linear(width, self.n_out)
            self.advantage_head = linear(width, n_actions * self.n_out)
        else:
            self.q_head = linear(width, n_actions * self.n_out)
        self.register_buffer("support", torch.linspace(v_min, v_max, n_atoms))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        if self.dueling:
            out = dueling_aggregate(self.value_head(h).view(-1, 1, self.n_out),
                                    self.advantage_head(h).view(-1, self.n_actions, self.n_out))
        else:
            out = self.q_head(h).view(-1, self.n_actions, self.n_out)
        return out if self.distributional else out.squeeze(-1)

    def q_values(self, x: torch.Tensor) -> torch.Tensor:
        """Q(s, a) [B, n_actions]: the expectation sum_i z_i p_i(s, a) when distributional."""
        out = self(x)
        return q_from_distribution(out.softmax(-1), self.support) if self.distributional else out

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_a Q(s, a) with the noisy layers at their mean weights (as in eval()): x [B, obs_dim] -> [B]."""
        training = self.training
        self.eval()
        actions = self.q_values(x).argmax(dim=1)
        self.train(training)
        return actions

    def reset_noise(self) -> None:
        for m in self.modules():
            if isinstance(m, NoisyLinear):
                m.reset_noise()


class SumTree:
    """A binary tree in one numpy array whose every node holds the sum of its two children.

    Leaves (the transitions' priorities p^alpha) sit at tree[size : size + capacity], with size = capacity
    rounded up to a power of two; node k has children 2k and 2k + 1, and the root tree[1] is the total.
    Updating a leaf recomputes its log2(size) ancestors from their children (so sums never drift); sampling
    walks from the root to the leaf whose prefix-sum interval holds a value u. Both run for a whole batch
    at once: one numpy operation per tree level.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 1 << max(0, (capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaves(self) -> np.ndarray:
        return self.tree[self.size : self.size + self.capacity]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves `indices` to `values` (a repeated index keeps its last value), then fix the ancestors."""
        nodes = np.asarray(indices, dtype=np.int64) + self.size
        self.tree[nodes] = values
        for _ in range(self.depth):  # a node listed twice gets the same sum twice: no need to deduplicate
            nodes //= 2
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]

    def find(self, values: np.ndarray) -> np.ndarray:
        """For each u in [0, total), the leaf i with sum(leaves[:i]) <= u < sum(leaves[:i + 1])."""
        u = np.asarray(values, dtype=np.float64).copy()
        nodes = np.ones(len(u), dtype=np.int64)
        for _ in range(self.depth):
            left = self.tree[2 * nodes]
            # go right when u is past the left subtree's mass; never into an empty subtree (rounding)
            right = (u >= left) & (self.tree[2 * nodes + 1] > 0)
            u = np.where(right, u - left, u)
            nodes = 2 * nodes + right
        return nodes - self.size


def importance_weights(probs: np.ndarray, n: int, beta: float) -> np.ndarray:
    """w_i = (N * P(i))^-beta / max_j w_j over the batch (Schaul et al., 2016, section 3.4)."""
    w = (n * probs) ** (-beta)
    return w / w.max()


class PrioritizedReplayBuffer:
    """n-step transitions (obs, action, R, next_obs, terminated, discount) in preallocated numpy arrays.

    Prioritised (proportional, a SumTree of p^alpha) or, with prioritized=False, uniform (weights 1).
    Prioritised sampling is stratified: the total mass is cut into batch_size equal segments and one value
    is drawn uniformly in each.
    """

    def __init__(self, capacity: int, obs_dim: int, seed: int, prioritized: bool = True, alpha: float = 0.5):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)  # the n-step return R
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)  # gamma^m, m <= n the steps summed in R
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)
        self.prioritized, self.alpha = prioritized, alpha
        self.tree = SumTree(capacity) if prioritized else None
        self.max_priority = 1.0  # the largest priority p seen so far: new transitions get it

    def add(self, obs, actions, rewards, next_obs, terminations, discounts) -> None:
        """Add a batch of transitions (arrays with a leading dimension)."""
        n = len(actions)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminations[idx], self.discounts[idx] = next_obs, terminations, discounts
        if self.prioritized:
            self.tree.update(idx, np.full(n, self.max_priority**self.alpha))
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, beta: float, device: torch.device | str = "cpu") -> tuple:
        """((obs, actions, rewards, next_obs, terminations, discounts, weights) as tensors, the indices)."""
        if self.prioritized:
            total = self.tree.total
            u = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
            idx = np.minimum(self.tree.find(np.minimum(u, np.nextafter(total, 0))), self.size - 1)
            weights = importance_weights(self.tree.leaves()[idx] / total, self.size, beta)
        else:
            idx = self.rng.integers(0, self.size, size=batch_size)
            weights = np.ones(batch_size)
        batch = (self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminations[idx],
                 self.discounts[idx], weights.astype(np.float32))
        return tuple(torch.from_numpy(a).to(device) for a in batch), idx

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        """priorities: the per-sample losses plus eps; stored as p^alpha."""
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(idx, priorities**self.alpha)

    def state_dict(self) -> dict:
        """The stored transitions, the sum tree of priorities, the largest priority and the ring's position, as
        tensors (checkpoints with --save-buffer)."""
        keys = ("obs", "actions", "rewards", "next_obs", "terminations", "discounts")
        arrays = {k: torch.from_numpy(getattr(self, k)) for k in keys}
        tree = torch.from_numpy(self.tree.tree) if self.prioritized else None
        return {**arrays, "tree": tree, "max_priority": self.max_priority, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["obs"].shape != self.obs.shape:
            fail(f"the checkpoint's replay buffer has another shape ({tuple(state['obs'].shape)}, here "
                 f"{self.obs.shape}): resume with its --buffer-size")
        for k in ("obs", "actions", "rewards", "next_obs", "terminations", "discounts"):
            getattr(self, k)[...] = state[k].numpy()
        self.max_priority, self.pos, self.size = state["max_priority"], state["pos"], state["size"]
        if self.prioritized and state["tree"] is not None:
            self.tree.tree[...] = state["tree"].numpy()
        elif self.prioritized:  # saved with --no-prioritized: every stored transition gets the largest priority
            self.tree.update(np.arange(self.size), np.full(self.size, self.max_priority**self.alpha))

    def __len__(self) -> int:
        return self.size


class NStepQueue:
    """Turns one-step vector transitions into n-step ones, one queue per environment.

    Each call gets one vector step and returns the n-step transitions it completes: the oldest step of a
    full queue (n rewards summed, bootstrapping from the latest next observation with gamma^n), or, at an
    episode end, every step still queued, each summed to the end (m <= n rewards, gamma^m). A terminated end
    sets terminated = 1; a truncated end leaves it 0, so the target bootstraps from the real final observation.
    """

    def __init__(self, n_step: int, gamma: float, num_envs: int):
        self.n_step, self.gamma = n_step, gamma
        self.queues = [deque() for _ in range(num_envs)]

    def _emit(self, q: deque, next_obs, done: bool, out: list) -> None:
        obs, action, _ = q[0]
        ret = sum(self.gamma**k * r for k, (_, _, r) in enumerate(q))
        out.append((obs, action, ret, next_obs, float(done), self.gamma ** len(q)))
        q.popleft()

    def step(self, obs, actions, rewards, real_next_obs, terminations, truncations) -> list[tuple]:
        out: list[tuple] = []
        for i, q in enumerate(self.queues):
            q.append((obs[i], actions[i], float(rewards[i])))
            if terminations[i] or truncations[i]:
                while q:
                    self._emit(q, real_next_obs[i], bool(terminations[i]), out)
            elif len(q) == self.n_step:
                self._emit(q, real_next_obs[i], False, out)
        return out

    def state_dict(self) -> dict:
        """Each environment's queued steps (not yet a whole n-step transition), as tensors (checkpoints)."""
        return {"queues": [{"obs": torch.from_numpy(np.array([o for o, _, _ in q])),
                            "actions": torch.tensor([int(a) for _, a, _ in q], dtype=torch.int64),
                            "rewards": torch.tensor([r for _, _, r in q], dtype=torch.float64)} for q in self.queues]}

    def load_state_dict(self, state: dict) -> None:
        self.queues = [deque(zip(list(q["obs"].numpy()), q["actions"].numpy(), q["rewards"].tolist(), strict=True))
                       for q in state["queues"]]


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """start -> end linearly over `duration` (of training's progress, in [0, 1]), then end (it decays or grows)."""
    return start + min(t / duration, 1.0) * (end - start)


def q_from_distribution(probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Q = sum_i p_i z_i: probs [..., n_atoms] over the support [n_atoms] -> [...]."""
    return (probs * support).sum(dim=-1)


def project_distribution(
    next_probs: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    gamma: float | torch.Tensor,
    support: torch.Tensor,
) -> torch.Tensor:
    """Project the shifted distribution r + gamma * (1 - done) * Z(s', a*) back onto the support.

    next_probs [B, n_atoms] is p'(s', a*); rewards and dones [B] (done = 1.0 for a terminated transition:
    no bootstrap, all mass at r); gamma a float or one discount per sample [B] (gamma^m for an m-step
    return); support [n_atoms] evenly spaced from v_min to v_max. Returns the target distribution m
    [B, n_atoms] (Algorithm 1 of the paper):
        Tz_j = clamp(r + gamma * (1 - done) * z_j, v_min, v_max),   b_j = (Tz_j - v_min) / delta_z
        m_l += p'_j * (u - b_j),   m_u += p'_j * (b_j - l),   l = floor(b_j),  u = ceil(b_j)
    Each shifted atom splits its probability between its two neighbouring atoms in proportion to closeness,
    which keeps the mean wherever Tz lies inside [v_min, v_max].
    """
    n_atoms = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta_z = (v_max - v_min) / (n_atoms - 1)
    gamma = torch.as_tensor(gamma, dtype=support.dtype, device=support.device).reshape(-1, 1)
    tz = (rewards.unsqueeze(1) + gamma * (1.0 - dones).unsqueeze(1) * support.unsqueeze(0)).clamp(v_min, v_max)
    # clamp b too: rounding in (Tz - v_min) / delta_z could put it a hair past the last atom's index
    b = ((tz - v_min) / delta_z).clamp(0, n_atoms - 1)
    lower, upper = b.floor(), b.ceil()
    # When b is exactly an atom, l == u and both (u - b) and (b - l) are 0: the "+ (l == u)" gives that atom
    # the whole probability instead of losing it.
    weight_lower = (upper - b) + (lower == upper).to(b.dtype)
    weight_upper = b - lower
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower.long(), next_probs * weight_lower)
    m.scatter_add_(1, upper.long(), next_probs * weight_upper)
    return m


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
    ckpt = load_checkpoint(path, "rainbow")
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
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)

    model_args = dict(obs_dim=obs_dim, n_actions=n_actions, hidden_sizes=list(args.hidden_sizes), dueling=args.dueling,
                      noisy=args.noisy, distributional=args.distributional, n_atoms=args.n_atoms, v_min=args.v_min,
                      v_max=args.v_max, sigma_0=args.sigma_0)
    q_network = QNetwork(**model_args).to(device)
    target_network = QNetwork(**model_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    # fused: one kernel updates every parameter (a loop over the tensors without it; the same arithmetic)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, eps=args.adam_eps, fused=True)
    rb = PrioritizedReplayBuffer(args.buffer_size, obs_dim, args.seed, args.prioritized, args.alpha)
    n_step_queue = NStepQueue(args.n_step, args.gamma, args.num_envs)
    support = q_network.support
    batch_index = torch.arange(args.batch_size, device=device)
    generators = {"explore": rng, "buffer": rb.rng, "action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back.
    global_step, origin = 0, (0, 0.0)
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "rainbow")
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
        if ckpt["envs"]["resumable"] and len(ckpt["n_step"]["queues"]) == args.num_envs:
            n_step_queue.load_state_dict(ckpt["n_step"])  # the steps the interrupted episodes have queued
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {len(rb):,} transitions)", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        ckpt = {"algo": "rainbow", "env_id": args.env_id, "model_args": model_args, "model": q_network.state_dict(),
                "args": asdict(args), "target_network": target_network.state_dict(), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "next_train": next_train, "next_target": next_target,
                "schedule_origin": origin, "rng": rng_state(generators),
                "envs": env_state(envs, obs) if with_envs else {"resumable": False}, "n_step": n_step_queue.state_dict()}
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
        # with noisy layers, exploration comes from fresh noise for every action, not from epsilon
        epsilon = 0.0 if args.noisy else linear_schedule(args.start_e, args.end_e, args.exploration_fraction,
                                                         progress(global_step, args.total_timesteps, origin))
        beta = linear_schedule(args.beta_start, 1.0, 1.0, progress(global_step, args.total_timesteps, origin))
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            if args.noisy:
                q_network.reset_noise()
            with torch.no_grad():  # not greedy_action: that one acts with the noisy layers' mean weights
                actions = q_network.q_values(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(dim=1)
            actions = actions.cpu().numpy()
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
        transitions = n_step_queue.step(obs, actions, rewards, real_next_obs, terminations, truncations)
        if transitions:
            rb.add(*(np.array(column) for column in zip(*transitions, strict=True)))
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
                if args.noisy:  # fresh noise for every gradient step, independently in both networks
                    q_network.reset_noise()
                    target_network.reset_noise()
                batch, idx = rb.sample(args.batch_size, beta, device)
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations, b_discounts, b_weights = batch
                with torch.no_grad():
                    next_out = target_network(b_next_obs)  # logits [B, n_actions, n_atoms], or Q [B, n_actions]
                    next_q_online = q_network.q_values(b_next_obs) if args.double else None
                    if args.distributional:  # a*: argmax of the online network's Q (double), else of the target's
                        next_q = next_q_online if args.double else q_from_distribution(next_out.softmax(-1), support)
                        next_probs = next_out[batch_index, next_q.argmax(dim=1)].softmax(-1)
                        target = project_distribution(next_probs, b_rewards, b_terminations, b_discounts, support)
                    else:
                        target = dqn_target(b_rewards, b_terminations, next_out, next_q_online, b_discounts)
                out = q_network(b_obs)[batch_index, b_actions]  # logits [B, n_atoms], or Q [B]
                if args.distributional:
                    log_p = out.log_softmax(-1)
                    per_sample = (torch.special.xlogy(target, target) - target * log_p).sum(-1)  # KL(target || p)
                    priorities = per_sample.detach()
                    q_taken = q_from_distribution(log_p.detach().exp(), support)
                else:
                    per_sample = F.smooth_l1_loss(out, target, reduction="none")
                    priorities = (out - target).detach().abs()
                    q_taken = out.detach()
                loss = (b_weights * per_sample).mean()  # importance weights correct the prioritised sampling
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm, foreach=True)
                # one host sync per gradient step; before optimizer.step(), so the network stays finite
                if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
                    fault("loss" if not torch.isfinite(loss) else "gradient norm")
                optimizer.step()
                if args.prioritized:
                    rb.update_priorities(idx, priorities.cpu().numpy().astype(np.float64) + args.prior_eps)
            q_values = q_taken.mean()

        if global_step >= next_target:
            next_target += args.target_network_frequency
            soft_update(target_network, q_network, args.tau)

        if global_step >= next_log:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            writer.add_scalar("charts/beta", beta, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            if loss is not None:
                writer.add_scalar("losses/loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  beta {beta:.3f}  return(last 20 episodes) {recent}",
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
        writer.add_scalar("losses/loss", loss.item(), global_step)
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
          f"(greedy, mean weights); trained {global_step - start_step:,} steps in {train_time:.1f}s")
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
