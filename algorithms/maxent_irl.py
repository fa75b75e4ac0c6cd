"""Maximum-entropy inverse reinforcement learning, tabular, in its maximum-causal-entropy form.

Papers: Ziebart, Maas, Bagnell & Dey (2008), "Maximum Entropy Inverse Reinforcement Learning", AAAI,
https://cdn.aaai.org/AAAI/2008/AAAI08-227.pdf; Ziebart, Bagnell & Dey (2010), "Modeling Interaction via the
Principle of Maximum Causal Entropy", ICML, https://www.cs.cmu.edu/~bziebart/publications/maximum-causal-entropy.pdf
(and Ziebart's 2010 thesis, chapter 6). A neural reward on the same gradient: Wulfmeier, Ondruska & Posner
(2015), "Maximum Entropy Deep Inverse Reinforcement Learning", https://arxiv.org/abs/1507.04888.

Run:
    python algorithms/maxent_irl.py                                      # gridworld, exact soft-optimal demos
    python algorithms/maxent_irl.py --demos sampled --num-demos 200      # sampled optimal trajectories
    python algorithms/maxent_irl.py --reward-model mlp                   # a neural reward on the features
    python algorithms/maxent_irl.py --env-id FrozenLake-v1 --horizon 40 --features cell-type

The problem. The dynamics p(s'|s, a), the initial state distribution d0 and the horizon T are known; the reward
is not. Demonstrations give, for each time t, how often each state-action pair was visited, D_t(s, a). The
reward is a function of the state's features phi(s): linear, r(s) = theta . phi(s), or a small MLP.

Soft value iteration (the maximum-causal-entropy policy, `soft_value_iteration`), backwards from V_T = 0:

    Q_t(s, a) = r(s) + gamma * sum_s' p(s'|s, a) V_{t+1}(s')
    V_t(s)    = log sum_a exp Q_t(s, a)                     (a "soft" maximum: log-sum-exp)
    pi_t(a|s) = exp(Q_t(s, a) - V_t(s))

Expected visitation frequencies (the forward pass, `visitation_frequencies`), from d_0 = d0:

    D_t(s, a) = d_t(s) pi_t(a|s),   d_{t+1}(s') = sum_{s,a} D_t(s, a) p(s'|s, a)

The feature expectations of a policy are mu = sum_t gamma^t sum_{s,a} D_t(s, a) phi(s). The demonstrations'
log-likelihood under pi_theta (the causal likelihood: each action given the state it was taken in),

    L(theta) = sum_t gamma^t sum_{s,a} D^demo_t(s, a) log pi_t(a|s),

has the gradient (`maxent_irl_gradient`)

    dL/dr(s) = sum_t gamma^t (d^demo_t(s) - d^pi_t(s)),   so for a linear reward  dL/dtheta = mu_demo - mu_pi,

when the demonstrations' state visits follow the dynamics (d^demo_{t+1} = sum D^demo_t p, as exact occupancies
do): log pi_t = r + gamma P V_{t+1} - V_t telescopes along the visits to

    G(r) = sum_t gamma^t d^demo_t . r - d0 . V_0      (`maxent_objective`, the dual of Ziebart's thesis)

and dV_0(s)/dr is the policy's discounted visitation from s. From sampled trajectories the visits do not follow
the dynamics exactly and L differs from G by that sampling noise; the file ascends G, whose gradient is exactly
the feature-expectation difference (Ziebart 2008's update), and prints it. Gradient ascent is therefore feature
matching: at its maximum the soft-optimal policy of the learned reward visits the features as the
demonstrations do (from samples of a deterministic expert that may be impossible, and G then grows without
bound). For an MLP reward the gradient dG/dr(s) is back-propagated through the network. The update is Adam (as `imitation`'s
MCE-IRL), stopped when max |mu_demo - mu_pi| <= --tolerance (the feature-expectation gap; `imitation` stops at
1e-3 on state occupancies) or after --max-iterations.

Finite horizon, not discounting to infinity: every quantity above is exact after T backward or forward steps
(no convergence tolerance), the visitation frequencies sum to T (to (1 - gamma^T) / (1 - gamma) with a
discount), and it is Ziebart's fixed-length-path form and `imitation`'s (a horizon and an initial state
distribution). The policies are time-dependent, pi_t.

The model. p comes from the environment's env.unwrapped.P (Gymnasium's toy-text format); a terminal state is
absorbing (FrozenLake's holes and goal list self-loops; check_args refuses a model whose terminal states lead
elsewhere), so an agent at the goal stays there for the rest of the T steps. The true reward is a state
reward: r(s) = the reward of every transition that enters s (FrozenLake: 1 at the goal), which must be the
same for every transition into s; features are counted at t = 0..T-1, so the true return of a trajectory is
sum_t gamma^t r(s_t) (on FrozenLake: the expected number of the T steps spent at the goal).

Demonstrations (--demos): "exact", the time-indexed occupancies D_t of the soft-optimal policy of the true
reward (a Boltzmann-rational demonstrator, whose reward MaxEnt IRL can represent exactly: `imitation`'s
MCE-IRL test); "sampled", --num-demos trajectories of the (hard) optimal policy of the true reward, drawn from
the model, and D_t is their empirical frequency. The result is judged by exact policy evaluation under the true
reward: the value of the soft-optimal and of the optimal policy of the learned reward against the
demonstrator's.

Tested: exact demos matched to 1e-3 in feature expectations; from sampled optimal trajectories the learned
reward's optimal policy within 1% of the expert's true value (tests/test_maxent_irl.py).
Results: benchmark_results/maxent_irl.md
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro


@dataclass
class Args:
    env_id: str = "SlipperyGridWorld-v0"
    """SlipperyGridWorld-v0 (written in this file), FrozenLake-v1, FrozenLake8x8-v1, or any Gymnasium env with a
    model env.unwrapped.P whose reward depends only on the state entered"""
    horizon: int = 20
    """T: every trajectory lasts T steps (features counted at t = 0..T-1)"""
    gamma: float = 1.0
    """discount inside the horizon, in (0, 1]; 1 is Ziebart's undiscounted finite-horizon form"""
    demos: str = "exact"
    """exact: occupancies of the soft-optimal policy of the true reward; sampled: trajectories of the optimal policy"""
    num_demos: int = 1000
    """--demos sampled: how many trajectories of T steps"""
    features: str = "one-hot"
    """state features phi(s): one-hot (one per state) or cell-type (one per letter of the map env.unwrapped.desc)"""
    reward_model: str = "linear"
    """linear: r(s) = theta . phi(s); mlp: r(s) = MLP(phi(s)) with tanh hidden layers"""
    hidden_sizes: tuple[int, ...] = (32, 32)
    """--reward-model mlp: widths of the hidden layers (imitation's MCE-IRL test uses 32, 32)"""
    learning_rate: float = 0.05
    """Adam's step size for the reward parameters (gradient ascent on the objective G, see the docstring)"""
    max_iterations: int = 3000
    """at most this many gradient steps (each one soft value iteration and one forward pass)"""
    tolerance: float = 1e-3
    """stop when max |mu_demo - mu_pi| (the feature-expectation gap) is at most this (imitation's linf_eps)"""
    log_every: int = 200
    """print the gap and the objective G every this many iterations"""
    seed: int = 1
    """seed of the sampled demonstrations and of the MLP's initial weights"""
    plot: str = "benchmark_results/classic/maxent_irl_gridworld.png"
    """where to save the figure (true and learned reward maps, the gap over iterations), PNG"""


# ----------------------------------------------------------------------------------------------------
# Environment: a slippery gridworld with a known state reward, and Gymnasium's toy-text model format
# ----------------------------------------------------------------------------------------------------

LEFT, DOWN, RIGHT, UP = 0, 1, 2, 3  # FrozenLake's action numbering
GRID_MOVES = {LEFT: (0, -1), DOWN: (1, 0), RIGHT: (0, 1), UP: (-1, 0)}


class SlipperyGridWorldEnv(gym.Env):
    """A 5x5 gridworld in the style of Ng & Russell (2000): the intended move happens with probability
    1 - slip, and with probability slip the agent moves in a uniformly random direction (possibly the
    intended one); a move off the grid leaves it in place.

    The map (row 0 at the top): G the goal, reward +1; P puddles, reward -1; '.' reward 0. The reward is
    paid on entering a cell (as FrozenLake's), so it is a state reward r(s'). No state is terminal: the
    agent is meant to reach G and stay there (bumping into the corner's walls); episodes are cut after
    max_steps. An episode starts in a uniformly random cell (initial_state_distrib), so that demonstrations
    pass through the whole grid.
    """

    metadata = {"render_modes": []}
    desc = np.asarray([list(row) for row in ("....G", ".PP..", "...P.", ".P...", ".....")], dtype="c")
    cell_reward = {b"G": 1.0, b"P": -1.0, b".": 0.0}

    def __init__(self, slip: float = 0.3, max_steps: int = 20):
        self.nrow, self.ncol = self.desc.shape
        n_states = self.nrow * self.ncol
        self.slip, self.max_steps = slip, max_steps
        self.observation_space = gym.spaces.Discrete(n_states)
        self.action_space = gym.spaces.Discrete(4)
        self.initial_state_distrib = np.full(n_states, 1.0 / n_states)
        self.P = {s: {a: self._outcomes(s, a) for a in range(4)} for s in range(n_states)}
        self.s, self.t = 0, 0

    def _move(self, s: int, a: int) -> int:
        row, col = divmod(s, self.ncol)
        d_row, d_col = GRID_MOVES[a]
        row, col = min(max(row + d_row, 0), self.nrow - 1), min(max(col + d_col, 0), self.ncol - 1)
        return row * self.ncol + col

    def _outcomes(self, s: int, a: int) -> list[tuple[float, int, float, bool]]:
        outcomes = []
        for b in range(4):  # a next state may appear twice (two moves into a wall): the model adds them up
            prob = self.slip / 4 + (1.0 - self.slip) * (a == b)
            next_s = self._move(s, b)
            outcomes.append((prob, next_s, self.cell_reward[self.desc.flat[next_s]], False))
        return outcomes

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.s, self.t = int(self.np_random.choice(len(self.initial_state_distrib), p=self.initial_state_distrib)), 0
        return self.s, {}

    def step(self, action):
        outcomes = self.P[self.s][int(action)]
        i = self.np_random.choice(len(outcomes), p=[o[0] for o in outcomes])
        _, self.s, reward, terminated = outcomes[i]
        self.t += 1
        return self.s, float(reward), terminated, self.t >= self.max_steps, {}


LOCAL_ENVS = {"SlipperyGridWorld-v0": SlipperyGridWorldEnv}
TRY_IDS = "SlipperyGridWorld-v0, FrozenLake-v1, FrozenLake8x8-v1"
DEMOS = ("exact", "sampled")
FEATURES = ("one-hot", "cell-type")
REWARD_MODELS = ("linear", "mlp")


def make_env(env_id: str) -> gym.Env:
    """One environment: a book environment written in this file (LOCAL_ENVS), or a registered Gymnasium
    environment (with its time limit)."""
    if env_id in LOCAL_ENVS:
        return LOCAL_ENVS[env_id]()
    return gym.make(env_id)


def absorbing_model(P, n_states: int, n_actions: int) -> np.ndarray:
    """Gymnasium's P[s][a] list -> p[s, a, s'], every listed transition kept, terminating ones included.

    Unlike dynamic programming's arrays (where the mass of a terminating transition leaves the model), the
    terminal states stay in: toy-text environments list them as self-loops, so they are absorbing and every
    row of p sums to 1, which keeps T steps of visitation summing to T.
    """
    p = np.zeros((n_states, n_actions, n_states))
    for s in range(n_states):
        outcomes_of = P[s]
        for a in range(n_actions):
            prob, next_s, _, _ = np.array(outcomes_of[a], dtype=float).T
            np.add.at(p[s, a], next_s.astype(int), prob)  # a state may be listed twice
    return p


def terminal_states_absorb(P, n_states: int, n_actions: int) -> bool:
    """True when every state that a terminating transition enters only loops back to itself, as toy-text lists
    its terminal states; absorbing_model's "the agent stays there" is then the environment's own model."""
    entered = {int(next_s) for s in range(n_states) for a in range(n_actions)
               for prob, next_s, _, terminated in P[s][a] if terminated and prob > 0}
    return all(int(next_s) == s for s in entered for a in range(n_actions) for prob, next_s, _, _ in P[s][a] if prob > 0)


def state_reward_from_model(P, n_states: int, n_actions: int) -> np.ndarray | None:
    """The true state reward r(s'): the reward of the transitions that enter s' (0 for a state never entered).

    Self-loops of terminal states (every outcome terminated, back to the same state) pay nothing in toy-text
    and are left out. Returns None when two transitions into the same state pay differently: then the reward
    is not a state reward and state-feature IRL cannot represent it.
    """
    reward = np.full(n_states, np.nan)
    for s in range(n_states):
        for a in range(n_actions):
            outcomes = P[s][a]
            if all(next_s == s and terminated for _, next_s, _, terminated in outcomes):
                continue
            for prob, next_s, r, _ in outcomes:
                if prob <= 0:
                    continue
                if np.isnan(reward[next_s]):
                    reward[next_s] = r
                elif abs(reward[next_s] - r) > 1e-12:
                    return None
    return np.nan_to_num(reward, nan=0.0)


def state_features(env: gym.Env, kind: str) -> np.ndarray:
    """phi[s, k]: one-hot (the identity; any reward is linear in it) or cell-type (one-hot of the map letter of
    s, e.g. FrozenLake's S, F, H, G: a reward that depends only on the letter is linear in it)."""
    n_states = env.observation_space.n
    if kind == "one-hot":
        return np.eye(n_states)
    letters = np.asarray(env.unwrapped.desc).reshape(-1)
    kinds = sorted(set(letters.tolist()))
    return (letters[:, None] == np.array(kinds)[None, :]).astype(float)


# ----------------------------------------------------------------------------------------------------
# Reward models: r(s) from the features, and the gradient of any dL/dr(s) with respect to their parameters
# ----------------------------------------------------------------------------------------------------


class LinearReward:
    """r(s) = theta . phi(s), theta starting at 0 (the uniformly random policy)."""

    def __init__(self, n_features: int):
        self.params = [np.zeros(n_features)]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return features @ self.params[0]

    def gradients(self, features: np.ndarray, grad_r: np.ndarray) -> list[np.ndarray]:
        """dL/dtheta = sum_s dL/dr(s) phi(s)."""
        return [features.T @ grad_r]


class MLPReward:
    """r(s) = MLP(phi(s)): tanh hidden layers, a linear output, weights N(0, 1/fan_in), biases 0 (numpy: the
    network is tiny and its gradient is a few lines of back-propagation)."""

    def __init__(self, n_features: int, hidden_sizes: tuple[int, ...], rng: np.random.Generator):
        sizes = [n_features, *hidden_sizes, 1]
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            self.params += [rng.normal(0.0, 1.0 / math.sqrt(fan_in), (fan_in, fan_out)), np.zeros(fan_out)]

    def forward(self, features: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The rewards and each layer's input (kept for the backward pass)."""
        h, inputs = features, []
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            inputs.append(h)
            h = h @ self.params[2 * i] + self.params[2 * i + 1]
            if i < n_layers - 1:
                h = np.tanh(h)
        return h[:, 0], inputs

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.forward(features)[0]

    def gradients(self, features: np.ndarray, grad_r: np.ndarray) -> list[np.ndarray]:
        """Back-propagate dL/dr(s) through the layers (tanh' = 1 - tanh^2)."""
        _, inputs = self.forward(features)
        grads = [np.zeros(0)] * len(self.params)
        delta = grad_r[:, None]
        for i in reversed(range(len(self.params) // 2)):
            grads[2 * i], grads[2 * i + 1] = inputs[i].T @ delta, delta.sum(axis=0)
            if i > 0:
                delta = (delta @ self.params[2 * i].T) * (1.0 - inputs[i] ** 2)  # inputs[i] = tanh(...)
        return grads


class Adam:
    """Adam (Kingma & Ba, 2015) for gradient ASCENT on a list of numpy arrays, updated in place."""

    def __init__(self, params: list[np.ndarray], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [np.zeros_like(x) for x in params]
        self.v = [np.zeros_like(x) for x in params]
        self.t = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for x, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g**2
            x += self.lr * (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + self.eps)


# ----------------------------------------------------------------------------------------------------
# Pure functions: the math the tests check (numpy in, numpy out)
# ----------------------------------------------------------------------------------------------------


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log sum exp x along axis, computed after subtracting the maximum (no overflow)."""
    top = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def soft_value_iteration(p: np.ndarray, r: np.ndarray, horizon: int, gamma: float):
    """The maximum-causal-entropy policy of the state reward r over T = horizon steps.

    Returns (v[t, s] for t = 0..T with v[T] = 0, q[t, s, a] and log_pi[t, s, a] for t = 0..T-1):
    Q_t = r + gamma * p V_{t+1}, V_t = logsumexp_a Q_t, log pi_t = Q_t - V_t.
    """
    n_states, n_actions, _ = p.shape
    v = np.zeros((horizon + 1, n_states))
    q = np.zeros((horizon, n_states, n_actions))
    for t in reversed(range(horizon)):
        q[t] = r[:, None] + gamma * (p @ v[t + 1])
        v[t] = logsumexp(q[t], axis=1)
    return v, q, q - v[:-1, :, None]


def optimal_policy(p: np.ndarray, r: np.ndarray, horizon: int, gamma: float, tie_tol: float = 1e-9):
    """Finite-horizon value iteration (the hard maximum): (v[t, s] with v[T] = 0, pi[t, s, a] one-hot on the
    first action within tie_tol of the best)."""
    n_states, n_actions, _ = p.shape
    v = np.zeros((horizon + 1, n_states))
    pi = np.zeros((horizon, n_states, n_actions))
    for t in reversed(range(horizon)):
        q = r[:, None] + gamma * (p @ v[t + 1])
        v[t] = q.max(axis=1)
        pi[t, np.arange(n_states), np.argmax(q >= v[t][:, None] - tie_tol, axis=1)] = 1.0
    return v, pi


def visitation_frequencies(p: np.ndarray, pi: np.ndarray, d0: np.ndarray) -> np.ndarray:
    """The forward pass: D[t, s, a] = P(s_t = s, a_t = a) for t = 0..T-1 under the policy pi[t, s, a] from d0."""
    horizon, n_states, n_actions = pi.shape
    d_sa = np.zeros((horizon, n_states, n_actions))
    d = np.asarray(d0, dtype=float)
    for t in range(horizon):
        d_sa[t] = d[:, None] * pi[t]
        d = np.einsum("sa,sat->t", d_sa[t], p)
    return d_sa


def state_visitation(d_sa: np.ndarray, gamma: float) -> np.ndarray:
    """sum_t gamma^t P(s_t = s): the discounted expected number of visits of each state."""
    return np.einsum("t,ts->s", gamma ** np.arange(len(d_sa)), d_sa.sum(axis=2))


def policy_value(p: np.ndarray, pi: np.ndarray, r: np.ndarray, d0: np.ndarray, gamma: float) -> float:
    """Exact policy evaluation: E[sum_t gamma^t r(s_t)] under pi[t, s, a] from d0 (the visitation dotted with r)."""
    return float(state_visitation(visitation_frequencies(p, pi, d0), gamma) @ r)


def demo_log_likelihood(demo_d_sa: np.ndarray, log_pi: np.ndarray, gamma: float) -> float:
    """L = sum_t gamma^t sum_{s,a} D^demo_t(s, a) log pi_t(a|s); pairs never demonstrated add nothing."""
    weights = gamma ** np.arange(len(demo_d_sa))[:, None, None] * demo_d_sa
    return float(np.sum(np.where(demo_d_sa > 0, weights * log_pi, 0.0)))


def maxent_objective(r: np.ndarray, demo_visits: np.ndarray, d0: np.ndarray, v0: np.ndarray) -> float:
    """G(r) = demo_visits . r - d0 . V_0: the demonstrations' log-likelihood when their visits follow the
    dynamics, and in every case the objective whose gradient is demo_visits - the policy's visits."""
    return float(demo_visits @ r - d0 @ v0)


def maxent_irl_gradient(p: np.ndarray, r: np.ndarray, d0: np.ndarray, demo_visits: np.ndarray, horizon: int,
                        gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """dG/dr(s) = demo_visits(s) - the soft-optimal policy's visits, where demo_visits = state_visitation of
    the demonstrations. Returns (that gradient, the policy's visits, log_pi, V_0)."""
    v, _, log_pi = soft_value_iteration(p, r, horizon, gamma)
    policy_visits = state_visitation(visitation_frequencies(p, np.exp(log_pi), d0), gamma)
    return demo_visits - policy_visits, policy_visits, log_pi, v[0]


def sample_trajectories(p: np.ndarray, pi: np.ndarray, d0: np.ndarray, n: int, rng: np.random.Generator):
    """n trajectories of T = len(pi) steps drawn from the model: (states[n, T], actions[n, T])."""
    horizon, n_states, _ = pi.shape
    states = np.zeros((n, horizon), dtype=int)
    actions = np.zeros((n, horizon), dtype=int)
    s = draw(np.broadcast_to(d0, (n, n_states)), rng)
    for t in range(horizon):
        states[:, t] = s
        actions[:, t] = draw(pi[t, s], rng)
        s = draw(p[s, actions[:, t]], rng)
    return states, actions


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of probs[n, k], drawn with those probabilities (inverse of the cumulative sums)."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def empirical_visitation(states: np.ndarray, actions: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    """D^demo[t, s, a]: the fraction of the trajectories in (s, a) at time t."""
    n, horizon = states.shape
    d_sa = np.zeros((horizon, n_states, n_actions))
    np.add.at(d_sa, (np.broadcast_to(np.arange(horizon), (n, horizon)), states, actions), 1.0 / n)
    return d_sa


# ----------------------------------------------------------------------------------------------------
# The figure
# ----------------------------------------------------------------------------------------------------


def plot_result(path: str, env: gym.Env, args: Args, true_r: np.ndarray, learned_r: np.ndarray,
                gaps: list[float], policy_t0: np.ndarray, title: str) -> None:
    """True and learned reward maps, each on its own colour scale (a constant added to a state reward changes no
    policy over a fixed horizon, and from samples the learned reward's scale is arbitrary too), the optimal
    policy of the learned reward at t = 0 (arrows), and the feature-expectation gap over the iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = env.unwrapped
    shape = np.asarray(u.desc).shape if hasattr(u, "desc") else (1, len(true_r))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, values, name in ((axes[0], true_r, "true reward"), (axes[1], learned_r, "learned reward")):
        image = ax.imshow(values.reshape(shape), cmap="RdYlGn")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046)
    axes[2].imshow(learned_r.reshape(shape), cmap="RdYlGn", alpha=0.5)
    if hasattr(u, "desc"):
        for s, a in enumerate(np.argmax(policy_t0, axis=1)):
            row, col = divmod(s, shape[1])
            d_row, d_col = GRID_MOVES[int(a)]
            axes[2].arrow(col, row, 0.3 * d_col, 0.3 * d_row, head_width=0.12, color="k")
            if u.desc.flat[s] not in (b".", b"F"):  # label the special cells: start, goal, holes, puddles
                axes[2].text(col - 0.4, row - 0.25, u.desc.flat[s].decode(), fontsize=9)
    axes[2].set_title("optimal policy of the learned reward, t = 0")
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[3].semilogy(np.arange(1, len(gaps) + 1), gaps)
    axes[3].axhline(args.tolerance, color="gray", ls="--", lw=1, label=f"tolerance {args.tolerance:g}")
    axes[3].set(xlabel="iteration", ylabel="max |mu_demo - mu_pi|", title="feature-expectation gap")
    axes[3].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


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
    """Reject bad input with one line on stderr and exit status 2, before any work."""
    if args.horizon <= 0:
        fail(f"--horizon {args.horizon} must be a positive number of steps, e.g. 20")
    if not 0.0 < args.gamma <= 1.0:
        fail(f"--gamma {args.gamma} is outside (0, 1]; use e.g. 1 or 0.99")
    if args.demos not in DEMOS:
        fail(f"--demos {args.demos} is unknown; use one of: {', '.join(DEMOS)}")
    if args.features not in FEATURES:
        fail(f"--features {args.features} is unknown; use one of: {', '.join(FEATURES)}")
    if args.reward_model not in REWARD_MODELS:
        fail(f"--reward-model {args.reward_model} is unknown; use one of: {', '.join(REWARD_MODELS)}")
    for name in ("num_demos", "max_iterations", "log_every"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} must be a positive integer")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        fail(f"--hidden-sizes {' '.join(map(str, args.hidden_sizes))} must be one or more positive widths, e.g. 32 32")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        fail(f"--learning-rate {args.learning_rate} must be a positive finite step size, e.g. 0.05")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        fail(f"--tolerance {args.tolerance} must be a positive finite number, e.g. 1e-3")
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:
            fail(f"--env-id {args.env_id} is unknown ({str(error).splitlines()[0]}); use one of: {TRY_IDS}")
    try:
        env = make_env(args.env_id)
    except Exception as error:  # a registered id whose optional dependency is missing, for instance
        fail(f"--env-id {args.env_id} could not be created ({type(error).__name__}); use one of: {TRY_IDS}")
    u = env.unwrapped
    if not hasattr(u, "P"):
        fail(f"--env-id {args.env_id} has no transition model env.unwrapped.P, which MaxEnt IRL's soft value "
             f"iteration needs; use one of: {TRY_IDS}")
    if not (isinstance(env.observation_space, gym.spaces.Discrete) and isinstance(env.action_space, gym.spaces.Discrete)):
        fail(f"--env-id {args.env_id} needs Discrete observation and action spaces; use one of: {TRY_IDS}")
    if not hasattr(u, "initial_state_distrib"):
        fail(f"--env-id {args.env_id} has no env.unwrapped.initial_state_distrib (the start distribution d0 of "
             f"the forward pass); use one of: {TRY_IDS}")
    if state_reward_from_model(u.P, env.observation_space.n, env.action_space.n) is None:
        fail(f"--env-id {args.env_id}: its reward is not a state reward (transitions into the same state pay "
             f"differently), which state-feature IRL cannot represent; use one of: {TRY_IDS}")
    if not terminal_states_absorb(u.P, env.observation_space.n, env.action_space.n):
        fail(f"--env-id {args.env_id}: a terminal state of env.unwrapped.P is not absorbing (it has transitions "
             f"to other states), so a fixed-horizon model cannot keep the agent there; use one of: {TRY_IDS}")
    if args.features == "cell-type" and not hasattr(u, "desc"):
        fail(f"--features cell-type needs a map env.unwrapped.desc, which --env-id {args.env_id} lacks; "
             "use --features one-hot")
    env.close()
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {args.plot}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    env = make_env(args.env_id)
    env.reset(seed=args.seed)  # the model, not the environment, is sampled below; seeded for the house rule
    env.action_space.seed(args.seed)
    u = env.unwrapped
    n_states, n_actions = env.observation_space.n, env.action_space.n
    p = absorbing_model(u.P, n_states, n_actions)
    d0 = np.asarray(u.initial_state_distrib, dtype=float)
    true_r = state_reward_from_model(u.P, n_states, n_actions)
    features = state_features(env, args.features)
    horizon, gamma = args.horizon, args.gamma

    # The demonstrator and its time-indexed state-action frequencies D^demo_t(s, a)
    optimal_v, optimal_pi = optimal_policy(p, true_r, horizon, gamma)
    if args.demos == "exact":
        expert_pi = np.exp(soft_value_iteration(p, true_r, horizon, gamma)[2])
        demo_d_sa = visitation_frequencies(p, expert_pi, d0)
    else:
        expert_pi = optimal_pi
        states, actions = sample_trajectories(p, optimal_pi, d0, args.num_demos, rng)
        demo_d_sa = empirical_visitation(states, actions, n_states, n_actions)
    demo_visits = state_visitation(demo_d_sa, gamma)
    demo_mu = demo_visits @ features

    model = (LinearReward(features.shape[1]) if args.reward_model == "linear"
             else MLPReward(features.shape[1], args.hidden_sizes, rng))
    optimizer = Adam(model.params, args.learning_rate)
    gaps, objectives = [], []
    print(f"{args.env_id}: MaxEnt IRL, {args.demos} demos, {args.features} features, {args.reward_model} reward, "
          f"T={horizon}, gamma={gamma}")
    for iteration in range(1, args.max_iterations + 1):
        r = model(features)
        grad_r, policy_visits, _, v0 = maxent_irl_gradient(p, r, d0, demo_visits, horizon, gamma)
        gaps.append(float(np.max(np.abs(demo_mu - policy_visits @ features))))
        objectives.append(maxent_objective(r, demo_visits, d0, v0))
        if iteration % args.log_every == 0 or gaps[-1] <= args.tolerance:
            print(f"  iteration {iteration:5d}: gap {gaps[-1]:.2e}, objective G {objectives[-1]:.4f}")
        if gaps[-1] <= args.tolerance:
            break
        optimizer.step(model.gradients(features, grad_r))
    learned_r = model(features)

    # Exact policy evaluation under the TRUE reward
    learned_log_pi = soft_value_iteration(p, learned_r, horizon, gamma)[2]
    learned_soft_pi = np.exp(learned_log_pi)
    _, learned_opt_pi = optimal_policy(p, learned_r, horizon, gamma)
    expert_value = policy_value(p, expert_pi, true_r, d0, gamma)
    optimal_value = float(d0 @ optimal_v[0])
    learned_soft_value = policy_value(p, learned_soft_pi, true_r, d0, gamma)
    learned_optimal_value = policy_value(p, learned_opt_pi, true_r, d0, gamma)
    centred_true, centred_learned = true_r - true_r.mean(), learned_r - learned_r.mean()
    norms = np.linalg.norm(centred_true) * np.linalg.norm(centred_learned)
    correlation = float(centred_true @ centred_learned / norms) if norms > 0 else float("nan")
    seconds = time.perf_counter() - start

    plot_result(args.plot, env, args, true_r, learned_r, gaps, learned_opt_pi[0],
                f"{args.env_id}: MaxEnt IRL ({args.demos} demos, {args.features}, {args.reward_model}), "
                f"T={horizon}, gamma={gamma}")
    env.close()
    print(f"  feature-expectation gap {gaps[-1]:.2e} after {len(gaps)} iterations "
          f"({'converged' if gaps[-1] <= args.tolerance else 'not converged'}, tolerance {args.tolerance:g})")
    print(f"  true value (exact): demonstrator {expert_value:.4f}, optimal {optimal_value:.4f}; "
          f"learned reward's soft-optimal policy {learned_soft_value:.4f}, its optimal policy "
          f"{learned_optimal_value:.4f}")
    print(f"  correlation of learned and true reward over states {correlation:.3f}; {seconds:.2f} s; "
          f"figure saved to {args.plot}")
    return {
        "env_id": args.env_id,
        "true_reward": true_r,
        "learned_reward": learned_r,
        "gaps": gaps,
        "objectives": objectives,
        "demo_log_likelihood": demo_log_likelihood(demo_d_sa, learned_log_pi, gamma),
        "gap": gaps[-1],
        "iterations": len(gaps),
        "converged": gaps[-1] <= args.tolerance,
        "expert_value": expert_value,
        "optimal_value": optimal_value,
        "learned_soft_value": learned_soft_value,
        "learned_optimal_value": learned_optimal_value,
        "reward_correlation": correlation,
        "demo_feature_expectations": demo_mu,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
