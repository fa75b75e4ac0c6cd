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

The defaults are tuned here for CartPole-v1 in 100k steps (measured results below); the paper's Atari
values are alpha 0.5, beta 0.4 -> 1, n 3, 51 atoms, sigma_0 0.5, Adam eps 1.5e-4.
Measured here with `python algorithms/rainbow.py --seed S --total-timesteps 100000` (one torch thread, 2-core
machine shared with other jobs, defaults, CartPole-v1, greedy evaluation over 10 episodes): seeds 1-5 ->
500, 500, 500, 500, 500 (mean 500); about 205 s per run (185-235 s).
LunarLander-v3 with the arguments in the second Run line above (run_all.sh's RAINBOW_LUNAR), 300k steps,
seeds 1-3, two runs at a time on the 2 cores (`./run_all.sh value`): 252.6 / 236.9 / 273.1 (mean 254.2);
1264-1552 s per run.
Those settings were chosen on test runs: seed 1 at 200k steps with a gradient step every 4 env steps gave
180.7 (this fixed the budget; the support was not varied); seed 7 at 300k gave 158.4 with a step every 4 env steps and
254.5 with one every 2. With the default 128-128 network (the second Run line without --hidden-sizes) seeds 1-3
gave 143.1 / 241.5 / 199.1 (mean 194.5; seed 1 learned late); the second Run line with --seed 6, 8 and 9 then gave
261.1 / 238.3 / 264.2 (256-256), against 203.0 on seed 6 without --hidden-sizes (128-128), two runs at a time,
before the 256-256 network was run on seeds 1-3.
Ablation (`./run_all.sh value`, CartPole-v1, 100k steps, seeds 1-3, each component switched off in turn): mean
training return over the run 440.4 with all six; without n-step returns 249.1, distributional 364.0, prioritised
replay 376.0, dueling 392.4, double Q 426.2, noisy nets 436.5 (benchmark_results/rainbow_ablation_CartPole-v1*).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import deque
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
    """torch CPU threads; 1 is fastest for small networks (measured: see README)"""
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
    target_network_frequency: int = 500
    """environment steps between copies of the online network into the target network"""
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


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                 "gradient_steps", "target_network_frequency", "eval_episodes", "n_step", "learning_rate",
                 "adam_eps", "prior_eps", "max_grad_norm", "log_every", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        fail(f"--hidden-sizes needs one or more positive widths, got {args.hidden_sizes}")
    if args.learning_starts < 0 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0 and 0 < --gamma <= 1")
    if args.alpha < 0 or not 0 <= args.beta_start <= 1:
        fail(f"need --alpha >= 0 and 0 <= --beta-start <= 1, got {args.alpha} and {args.beta_start}")
    if args.n_atoms < 2 or not args.v_min < args.v_max:
        fail(f"need --n-atoms >= 2 and --v-min < --v-max, got {args.n_atoms}, {args.v_min}, {args.v_max}")
    if args.sigma_0 < 0:
        fail(f"--sigma-0 must be >= 0, got {args.sigma_0}")
    if not (0 <= args.end_e <= 1 and 0 <= args.start_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need epsilons in [0, 1] and 0 < --exploration-fraction <= 1")
    try:
        gym.spec(args.env_id)
    except gym.error.Error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment; try CartPole-v1 or LunarLander-v3")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"rainbow.py needs a Discrete action space, {args.env_id} has {action_space}; "
             "use a discrete environment such as CartPole-v1 (continuous actions: ddpg.py, td3.py, sac.py)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"rainbow.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as CartPole-v1")


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
    """V + A - mean_a' A over the action dimension (dim 1): value [B, 1, ...], advantages [B, n_actions, ...].

    With a trailing atom dimension the mean is taken per atom, on the logits (Hessel et al., section 3).
    """
    return value + advantages - advantages.mean(dim=1, keepdim=True)


class RainbowNetwork(nn.Module):
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
        return (out.softmax(-1) * self.support).sum(-1) if self.distributional else out

    def reset_noise(self) -> None:
        for m in self.modules():
            if isinstance(m, NoisyLinear):
                m.reset_noise()


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Put all parameters of `module`, and their gradients, into one contiguous buffer; return it.

    Why: with small networks on a CPU the optimiser step and gradient clipping, which loop over many
    small tensors, cost a large share of each update. Each parameter becomes a view into one flat
    tensor (and each .grad a view into one flat gradient), so Adam and clip_grad_norm_ run once on one
    tensor. The arithmetic is unchanged: Adam is elementwise and the clipping norm is global. Autograd
    accumulates into an existing .grad in place, so gradients land in the flat buffer; zero them with
    `flat.grad.zero_()`, never by setting them to None.
    """
    params = list(module.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


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


class ReplayBuffer:
    """n-step transitions (obs, action, return, next_obs, done, discount) in preallocated numpy arrays.

    Prioritised (proportional, a SumTree of p^alpha) or uniform. Prioritised sampling is stratified: the
    total mass is cut into batch_size equal segments and one value is drawn uniformly in each.
    """

    def __init__(self, capacity: int, obs_dim: int, seed: int, prioritized: bool = True, alpha: float = 0.5):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)
        self.prioritized, self.alpha = prioritized, alpha
        self.tree = SumTree(capacity) if prioritized else None
        self.max_priority = 1.0  # the largest priority p seen so far: new transitions get it

    def add(self, obs, actions, returns, next_obs, dones, discounts) -> None:
        """Add a batch of transitions (arrays with a leading dimension)."""
        n = len(actions)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx], self.actions[idx], self.returns[idx] = obs, actions, returns
        self.next_obs[idx], self.dones[idx], self.discounts[idx] = next_obs, dones, discounts
        if self.prioritized:
            self.tree.update(idx, np.full(n, self.max_priority**self.alpha))
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, beta: float) -> tuple:
        """Returns (obs, actions, returns, next_obs, dones, discounts, weights) as tensors, and the indices."""
        if self.prioritized:
            total = self.tree.total
            u = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
            idx = np.minimum(self.tree.find(np.minimum(u, np.nextafter(total, 0))), self.size - 1)
            weights = importance_weights(self.tree.leaves()[idx] / total, self.size, beta)
        else:
            idx = self.rng.integers(0, self.size, size=batch_size)
            weights = np.ones(batch_size)
        batch = tuple(torch.from_numpy(a[idx]) for a in
                      (self.obs, self.actions, self.returns, self.next_obs, self.dones, self.discounts))
        return (*batch, torch.from_numpy(weights.astype(np.float32))), idx

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        """priorities: the per-sample losses plus eps; stored as p^alpha."""
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(idx, priorities**self.alpha)


class NStepQueue:
    """Turns one-step vector transitions into n-step ones, one queue per environment.

    Each call gets one vector step and returns the n-step transitions it completes: the oldest step of a
    full queue (n rewards summed, bootstrapping from the latest next observation with gamma^n), or, at an
    episode end, every step still queued, each summed to the end (m <= n rewards, gamma^m). A terminated end
    sets done = 1; a truncated end leaves done = 0, so the target bootstraps from the real final observation.
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


def project_distribution(next_probs: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                         gamma: float | torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The C51 projection of the target distribution onto the support (Bellemare et al., 2017, eq. 7).

    next_probs [B, n_atoms] (p_j(s', a*)), rewards [B], dones [B] (1.0 for terminated: all mass on r),
    gamma a float or a Tensor[B] (per sample: gamma^m for an n-step sum of m steps), support [n_atoms]
    evenly spaced. Returns [B, n_atoms]:
        Tz_j = clip(r + (1 - done) gamma z_j, v_min, v_max)
        m_i  = sum_j clip(1 - |Tz_j - z_i| / dz, 0, 1) p_j
    computed in O(B n_atoms), not as that [B, n_atoms, n_atoms] sum: with b_j = (Tz_j - v_min) / dz, p_j goes
    (u - b_j) p_j to atom l = floor(b_j) and (b_j - l) p_j to atom u = ceil(b_j), all of it to l when l == u.
    """
    gamma = torch.as_tensor(gamma, dtype=support.dtype, device=support.device)
    if gamma.dim() == 1:
        gamma = gamma.unsqueeze(1)
    v_min, v_max = support[0], support[-1]
    dz = support[1] - support[0]
    tz = (rewards.unsqueeze(1) + (1.0 - dones.unsqueeze(1)) * gamma * support.unsqueeze(0)).clamp(v_min, v_max)
    b = (tz - v_min) / dz  # Tz_j's position on the atoms' index scale, in [0, n_atoms - 1]
    lower, upper = b.floor().long(), b.ceil().long()
    exact = (lower == upper).to(next_probs.dtype)  # Tz_j on an atom: all of p_j goes there (u - b = b - l = 0)
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower, next_probs * (upper - b + exact))
    m.scatter_add_(1, upper, next_probs * (b - lower))
    return m


def linear_schedule(start: float, end: float, duration: float, t: int) -> float:
    """start -> end linearly over `duration` steps, then end (epsilon decays, beta grows)."""
    frac = min(t / duration, 1.0)
    return start + frac * (end - start)


def save_checkpoint(network: RainbowNetwork, path: str, meta: dict) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never leaves a corrupt file."""
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}  # clone: detach from the flat buffer
    tmp = f"{path}.tmp"
    torch.save({"model": state, **meta}, tmp)
    os.replace(tmp, path)


def load_network(path: str) -> tuple[RainbowNetwork, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = RainbowNetwork(ckpt["obs_dim"], ckpt["n_actions"], tuple(ckpt["hidden_sizes"]), ckpt["dueling"],
                         ckpt["noisy"], ckpt["distributional"], ckpt["n_atoms"], ckpt["v_min"], ckpt["v_max"])
    net.load_state_dict(ckpt["model"])
    return net, ckpt


def evaluate(net_or_path: RainbowNetwork | str, env_id: str, eval_episodes: int, seed: int,
             device: str = "cpu") -> list[float]:
    """Greedy evaluation on a fresh environment, noisy layers at their mean weights; one return per episode."""
    network = load_network(net_or_path)[0] if isinstance(net_or_path, str) else net_or_path
    was_training = network.training
    network.eval()
    env = gym.make(env_id)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = network.q_values(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)).argmax(-1)
            obs, reward, terminated, truncated, _ = env.step(int(action.item()))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    network.train(was_training)
    return returns


def main(args: Args) -> dict:
    check_args(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

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

    net_kwargs = dict(hidden_sizes=args.hidden_sizes, dueling=args.dueling, noisy=args.noisy,
                      distributional=args.distributional, n_atoms=args.n_atoms, v_min=args.v_min, v_max=args.v_max,
                      sigma_0=args.sigma_0)
    q_network = RainbowNetwork(obs_dim, n_actions, **net_kwargs).to(device)
    target_network = RainbowNetwork(obs_dim, n_actions, **net_kwargs).to(device)
    target_network.load_state_dict(q_network.state_dict())
    flat_params = flatten_parameters(q_network)
    flat_target = flatten_parameters(target_network)  # so the target copy is one operation too
    optimizer = torch.optim.Adam([flat_params], lr=args.learning_rate, eps=args.adam_eps)
    support = q_network.support
    rb = ReplayBuffer(args.buffer_size, obs_dim, args.seed, args.prioritized, args.alpha)
    n_step_queue = NStepQueue(args.n_step, args.gamma, args.num_envs)
    batch_range = torch.arange(args.batch_size, device=device)

    global_step = 0
    start_time = time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = args.log_every
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    loss = q_values = None
    epsilon = beta = 0.0
    obs, _ = envs.reset(seed=args.seed)

    while global_step < args.total_timesteps:
        beta = linear_schedule(args.beta_start, 1.0, args.total_timesteps, global_step)
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            if args.noisy:
                q_network.reset_noise()  # exploration comes from fresh noise, not from epsilon
            with torch.no_grad():
                actions = q_network.q_values(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(-1).cpu().numpy()
            if not args.noisy:
                epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps,
                                          global_step)
                explore = rng.random(args.num_envs) < epsilon  # epsilon-greedy, decided per environment
                if explore.any():
                    actions = np.where(explore, envs.action_space.sample(), actions)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs

        # the transition's next observation is the real last one at an episode end, not the reset one
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        done_transitions = n_step_queue.step(obs, actions, rewards, real_next_obs, terminations, truncations)
        if done_transitions:
            rb.add(*(np.array(column) for column in zip(*done_transitions, strict=True)))
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
        if train_now and global_step > args.learning_starts and rb.size > 0:
            for _ in range(args.gradient_steps):
                if args.noisy:  # fresh noise for every gradient step, independently in both networks
                    q_network.reset_noise()
                    target_network.reset_noise()
                (b_obs, b_actions, b_returns, b_next_obs, b_dones, b_discounts, b_weights), idx = rb.sample(
                    args.batch_size, beta)
                with torch.no_grad():
                    next_out = target_network(b_next_obs)
                    if args.double:
                        next_actions = q_network.q_values(b_next_obs).argmax(-1)
                    elif args.distributional:
                        next_actions = (next_out.softmax(-1) * support).sum(-1).argmax(-1)
                    else:
                        next_actions = next_out.argmax(-1)
                    if args.distributional:
                        next_probs = next_out[batch_range, next_actions].softmax(-1)
                        target = project_distribution(next_probs, b_returns, b_dones, b_discounts, support)
                    else:
                        target = b_returns + b_discounts * (1.0 - b_dones) * next_out[batch_range, next_actions]
                out = q_network(b_obs)[batch_range, b_actions]
                if args.distributional:
                    log_p = out.log_softmax(-1)
                    per_sample = (torch.special.xlogy(target, target) - target * log_p).sum(-1)  # KL(target || p)
                    priorities = per_sample.detach()
                    q_taken = (log_p.exp() * support).sum(-1).detach()
                else:
                    per_sample = F.smooth_l1_loss(out, target, reduction="none")
                    priorities = (out - target).detach().abs()
                    q_taken = out.detach()
                loss = (b_weights * per_sample).mean()
                flat_params.grad.zero_()
                loss.backward()
                nn.utils.clip_grad_norm_([flat_params], args.max_grad_norm)
                optimizer.step()
                if args.prioritized:
                    rb.update_priorities(idx, priorities.cpu().numpy().astype(np.float64) + args.prior_eps)
            q_values = q_taken.mean()

        if global_step >= next_target:
            next_target += args.target_network_frequency
            with torch.no_grad():
                flat_target.data.copy_(flat_params.data)

        if global_step >= next_log:
            next_log += args.log_every
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            if args.prioritized:
                writer.add_scalar("charts/beta", beta, global_step)
            if not args.noisy:
                writer.add_scalar("charts/epsilon", epsilon, global_step)
            if loss is not None:
                writer.add_scalar("losses/loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  beta {beta:.3f}  return(last 20 episodes) {recent}",
                  flush=True)

    train_time = time.time() - start_time
    envs.close()
    writer.add_scalar("charts/SPS", int(global_step / train_time), global_step)
    if loss is not None:
        writer.add_scalar("losses/loss", loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)

    eval_returns = evaluate(q_network, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(greedy, mean weights); trained {global_step:,} steps in {train_time:.1f}s")

    model_path = None
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_checkpoint(q_network, model_path, {
            "obs_dim": obs_dim, "n_actions": n_actions, "hidden_sizes": list(args.hidden_sizes),
            "dueling": args.dueling, "noisy": args.noisy, "distributional": args.distributional,
            "n_atoms": args.n_atoms, "v_min": args.v_min, "v_max": args.v_max, "env_id": args.env_id})
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
