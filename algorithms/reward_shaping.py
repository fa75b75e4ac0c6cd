"""Potential-based reward shaping, and the reward hacking of a shaping bonus that is not potential-based.

Ng, Harada & Russell, "Policy invariance under reward transformations: theory and application to reward
shaping", ICML 1999, https://people.eecs.berkeley.edu/~russell/papers/icml99-shaping.pdf
Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), Section 17.4 "Designing Reward Signals",
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/reward_shaping.py                              # the grid world: exact check, 30 runs, figure
    python algorithms/reward_shaping.py --env-id MountainCar-v0 --num-runs 10

Three learners see the same task and differ only in the reward they are trained on (`--methods`):
    none       R                                               the true reward
    potential  R + F,  F(s, a, s') = gamma * Phi(s') - Phi(s),  Phi(terminal) = 0       (Ng et al., Theorem 1)
    bonus      R + b * [progress(s') > progress(s)]            a plausible "reward every step toward the goal"
`progress(s)` is the task's measure of closeness to the goal (minus the grid distance d(s); the car's mechanical
energy). The potential encodes the same advice as a guess of the value, Phi ~ V* (Ng et al.'s recipe): on the grid
Phi(s) = scale * gamma^(d(s) - 1), what the goal's +1 is worth after d(s) unslipped steps (`--potential value`), or
Phi(s) = -scale * d(s) (`--potential distance`); on Mountain Car scale * the normalised energy. Unlike the bonus,
the potential also charges for the step back. Every learner is judged by the TRUE reward. (With gamma < 1 a
negative Phi pays (1 - gamma) |Phi(s)| for staying put, e.g. bumping into a wall; the positive `value` potential
charges for it instead.)

Why the potential is safe: along any trajectory the F terms telescope, sum_t gamma^t F_t = gamma^T Phi(s_T) - Phi(s_0),
and gamma^T Phi(s_T) = 0 at termination (hence Phi(terminal) = 0), so every policy's shaped return from s is its
true return minus Phi(s): Q'*(s, a) = Q*(s, a) - Phi(s) for every s and a, and the greedy policies are the same.
Any F that is not of this form can change the optimal policy (the theorem's converse). The bonus pays b for a step
toward the goal and charges nothing for a step away, so a two-step loop (away, back) pays b every other step
forever, worth about b / (2 (1 - gamma)): with b = 0.1 and gamma = 0.99 about 5, more than the goal's +1. The
optimal policy of the bonus reward farms that loop and never finishes: Randlov & Alstrom's (1998) bicycle,
rewarded for progress toward its goal, rode in circles for the same reason.

The grid world (id "ShapingGridworld", below) has a known model P in Gymnasium's toy-text format, so the claims
are checked exactly: value iteration on the true, the potential-shaped and the bonus-shaped model, and exact policy
evaluation (a linear solve) of each optimal policy under the TRUE reward. Learning is Q-learning (Section 6.5):
    q(s, a) = sum_{i in F(s)} w[a, i]   (F(s) = {s} for the grid: a table; one tile per tiling for Mountain Car)
    target  = R' + gamma * max_a q(S', a) * (1 - terminated)    (a time-limit truncation still bootstraps)
    w[A, F(S)] += alpha / |F(S)| * (target - q(S, A))
with an epsilon-greedy behaviour policy and w = 0 at the start, which is the same as starting the unshaped learner
from q = Phi (Wiewiora, 2003): a good potential is a good first guess of the values. Mountain Car uses
sarsa_lambda.py's tile coder. The learning criterion: on the grid, the first episode after which the greedy policy
of q has an exact true value from the start of at least `target` times V*(start); on Mountain Car, the first
episode after which the last 10 episodes' mean true return is at least `target`.

Tested: Q'* = Q* - Phi to 1e-8, the same greedy actions, and the bonus policy's true value collapsing
(tests/test_reward_shaping.py).
Results: benchmark_results/reward_shaping.md
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro


@dataclass
class Args:
    env_id: str = "ShapingGridworld"
    """ShapingGridworld (the 10x10 grid world written in this file, exact model) or MountainCar-v0 (tile coding)"""
    methods: tuple[str, ...] = ("none", "potential", "bonus")
    """rewards to learn from: none (the true reward), potential (R + gamma Phi(s') - Phi(s)), bonus (R + b per step
    toward the goal)"""
    potential: str | None = None
    """Phi: on the grid "value" (scale * gamma^(d(s) - 1), the value of the shortest path if no move slipped; the
    default) or "distance" (-scale * d(s), d = cells to the goal); on Mountain Car "energy" (scale * the car's
    normalised mechanical energy, -1 at rest in the valley, 0 at rest at the goal's height)"""
    potential_scale: float | None = None
    """the scale of Phi; default 1 on the grid, 100 on Mountain Car"""
    bonus: float | None = None
    """b, paid for every step that increases progress(s); default 0.1 on the grid, 0.5 on Mountain Car"""
    gamma: float | None = None
    """discount factor; default 0.99 on the grid (it must be < 1 there), 1 on Mountain Car"""
    alpha: float | None = None
    """step size (summed over the tilings on Mountain Car); default 0.5 on the grid, 0.5 on Mountain Car (0.5/8)"""
    epsilon: float | None = None
    """exploration rate of the epsilon-greedy behaviour policy; default 0.1 on the grid, 0 on Mountain Car"""
    num_episodes: int | None = None
    """episodes per run; default 300 on the grid, 300 on Mountain Car"""
    num_runs: int = 30
    """independent runs per method (mean +- std over runs)"""
    target: float | None = None
    """learning criterion: grid, fraction of V*(start) the greedy policy's exact true value must reach (0.95);
    Mountain Car, the mean true return of the last 10 episodes to reach (-160)"""
    num_tilings: int = 8
    """Mountain Car: number of tilings (sarsa_lambda.py's 8)"""
    tiles_per_dim: int = 8
    """Mountain Car: tiles per dimension in each tiling (8 x 8)"""
    smoothing: int = 10
    """the figure's online-return curves are moving averages over this many episodes"""
    seed: int = 1
    """seed of the random number generators and of the environments (run r of every method sees the same seeds)"""
    plot: str | None = None
    """where the figure is saved (PNG); default benchmark_results/classic/reward_shaping_<task>.png"""


# ----------------------------------------------------------------------------------------------------
# Environment: Ng et al.'s 10x10 grid world, with a sparse goal reward
# ----------------------------------------------------------------------------------------------------

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
MOVES = {UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1)}


class ShapingGridworldEnv(gym.Env):
    """A 10x10 grid: start in the top-left corner, goal in the bottom-right one, 18 steps apart.

    State = row * 10 + col. Actions up, right, down, left; with probability `slip` the move goes in a uniformly
    random direction instead (any of the four), as in Ng et al.'s grid world; a move off the grid stays put.
    Reward +1 on entering the goal, which ends the episode, 0 on every other step: the sparse reward that makes
    unshaped learning slow. An episode is cut (truncated) after `max_steps` steps, because a policy may loop.
    P[s][a] = [(prob, next_state, reward, terminated), ...] is the exact model; the goal is absorbing with 0.
    """

    metadata = {"render_modes": []}
    size = 10
    start = (0, 0)
    goal = (9, 9)
    slip = 0.2
    max_steps = 200

    def __init__(self):
        n = self.size * self.size
        self.observation_space = gym.spaces.Discrete(n)
        self.action_space = gym.spaces.Discrete(4)
        self.goal_state = self.goal[0] * self.size + self.goal[1]
        self.start_state = self.start[0] * self.size + self.start[1]
        self.P = {s: {a: self._outcomes(s, a) for a in range(4)} for s in range(n)}
        self.state, self.steps = self.start_state, 0

    def move(self, state: int, direction: int) -> int:
        """The cell one step from `state` in `direction`, or `state` itself at the edge."""
        row, col = divmod(state, self.size)
        d_row, d_col = MOVES[direction]
        row, col = min(max(row + d_row, 0), self.size - 1), min(max(col + d_col, 0), self.size - 1)
        return row * self.size + col

    def progress(self, state: int) -> float:
        """Minus the Manhattan distance to the goal, in cells: 0 at the goal, -18 at the start."""
        row, col = divmod(int(state), self.size)
        return -float(abs(self.goal[0] - row) + abs(self.goal[1] - col))

    def _outcomes(self, s: int, a: int) -> list[tuple[float, int, float, bool]]:
        if s == self.goal_state:
            return [(1.0, s, 0.0, True)]
        outcomes = []
        for direction in range(4):
            prob = self.slip / 4 + (1.0 - self.slip) * (direction == a)
            next_s = self.move(s, direction)
            outcomes.append((prob, next_s, float(next_s == self.goal_state), next_s == self.goal_state))
        return outcomes

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state, self.steps = self.start_state, 0
        return self.state, {}

    def step(self, action):
        # the same distribution as P[s][a], drawn without building the list
        direction = int(action) if self.np_random.random() >= self.slip else int(self.np_random.integers(4))
        self.state = self.move(self.state, direction)
        self.steps += 1
        terminated = self.state == self.goal_state
        return self.state, float(terminated), terminated, self.steps >= self.max_steps and not terminated, {}


LOCAL_ENVS = {"ShapingGridworld": ShapingGridworldEnv}
TASKS = ("ShapingGridworld", "MountainCar-v0")
METHODS = ("none", "potential", "bonus")
POTENTIALS = {"ShapingGridworld": ("value", "distance"), "MountainCar-v0": ("energy",)}
# Per-task defaults of the options left at None (the grid's sparse reward needs gamma < 1; Mountain Car is the
# book's undiscounted task with optimistic zero weights, epsilon = 0, as in sarsa_lambda.py).
DEFAULTS = {
    "ShapingGridworld": {"potential": "value", "potential_scale": 1.0, "bonus": 0.1, "gamma": 0.99, "alpha": 0.5, "epsilon": 0.1,
                         "num_episodes": 300, "target": 0.95},
    "MountainCar-v0": {"potential": "energy", "potential_scale": 100.0, "bonus": 0.5, "gamma": 1.0, "alpha": 0.5, "epsilon": 0.0,
                       "num_episodes": 300, "target": -160.0},
}


def make_env(env_id: str) -> gym.Env:
    """One environment: a book environment written in this file (LOCAL_ENVS), or a registered Gymnasium
    environment (with its time limit)."""
    if env_id in LOCAL_ENVS:
        return LOCAL_ENVS[env_id]()
    return gym.make(env_id)


# Mountain Car's dynamics (Gymnasium's MountainCarEnv): v += (action - 1) * force - gravity * cos(3 x), so the
# car's mechanical energy per unit mass is E = gravity / 3 * sin(3 x) + v^2 / 2 (friction-free between walls).
CAR_GRAVITY, CAR_GOAL_POSITION = 0.0025, 0.5


def mountain_car_progress(obs: np.ndarray) -> float:
    """(E(s) - E_goal) / (E_goal - E_valley): -1 at rest in the valley, 0 at rest at the goal's height."""
    position, velocity = float(obs[0]), float(obs[1])
    energy = CAR_GRAVITY / 3 * math.sin(3 * position) + velocity**2 / 2
    e_goal, e_valley = CAR_GRAVITY / 3 * math.sin(3 * CAR_GOAL_POSITION), -CAR_GRAVITY / 3
    return (energy - e_goal) / (e_goal - e_valley)


# ----------------------------------------------------------------------------------------------------
# Pure functions (the math the tests check)
# ----------------------------------------------------------------------------------------------------


def potential_shaping(phi: np.ndarray, phi_next: np.ndarray, gamma: float, terminated: np.ndarray) -> np.ndarray:
    """F = gamma * Phi(s') - Phi(s) (Ng et al., 1999, Theorem 1), with Phi(terminal) = 0.

    Only `terminated` zeroes Phi(s'): after a time-limit truncation s' is an ordinary state, and the learner
    bootstraps from it, so its potential stays.
    """
    phi_next = np.asarray(phi_next, dtype=float) * (1.0 - np.asarray(terminated, dtype=float))
    return gamma * phi_next - np.asarray(phi, dtype=float)


def progress_bonus(progress: np.ndarray, progress_next: np.ndarray, bonus: float) -> np.ndarray:
    """b * [progress(s') > progress(s)]: paid for a step toward the goal, nothing charged for a step away."""
    return bonus * (np.asarray(progress_next, dtype=float) > np.asarray(progress, dtype=float))


def shaping_function(method: str, progress: Callable, potential: Callable, gamma: float, bonus: float) -> Callable:
    """F(obs, next_obs, terminated) of a method: 0, the potential's F, or the progress bonus."""
    if method == "none":
        return lambda obs, next_obs, terminated: 0.0
    if method == "potential":
        return lambda obs, next_obs, terminated: float(
            potential_shaping(potential(obs), potential(next_obs), gamma, terminated))
    if method == "bonus":
        return lambda obs, next_obs, terminated: float(progress_bonus(progress(obs), progress(next_obs), bonus))
    raise ValueError(f"unknown method {method!r}")


def make_potential(kind: str, scale: float, gamma: float, progress: Callable) -> Callable:
    """Phi(obs) of a --potential kind; progress(obs) is minus the grid distance, or the car's normalised energy."""
    if kind == "value":  # gamma^(d - 1): the true value of walking straight to the goal's +1 in d steps
        return lambda obs: scale * gamma ** (-progress(obs) - 1.0)
    if kind in ("distance", "energy"):
        return lambda obs: scale * progress(obs)
    raise ValueError(f"unknown potential {kind!r}")


def shaped_model(P: dict, shaping: Callable) -> dict:
    """The toy-text model P with each outcome's reward r replaced by r + F(s, s', terminated)."""
    return {s: {a: [(prob, next_s, reward + shaping(s, next_s, terminated), terminated)
                    for prob, next_s, reward, terminated in outcomes] for a, outcomes in actions.items()}
            for s, actions in P.items()}  # fmt: skip


def transition_arrays(P, n_states: int, n_actions: int):
    """Gymnasium's P[s][a] list -> arrays p[s, a, s'] and r[s, a].

    p[s, a, s'] is the probability of moving to s' AND continuing; the probability mass of terminating
    transitions is left out, which is how "the value of a terminal state is 0" enters the backup
    sum_{s'} p[s, a, s'] V(s'). r[s, a] = sum_{s',r} p(s',r|s,a) r is the expected reward (the backups only
    need expectations, so transitions listed twice, or listed with conditional mean rewards, give the same r).
    """
    p = np.zeros((n_states, n_actions, n_states))
    r = np.zeros((n_states, n_actions))
    for s in range(n_states):
        outcomes_of = P[s]  # fetched once per state: a model may build P[s] on demand (Jack's does)
        for a in range(n_actions):
            # one row per listed outcome, columns: prob, next_state, reward, terminated
            prob, next_s, reward, terminated = np.array(outcomes_of[a], dtype=float).T
            r[s, a] = prob @ reward
            going_on = terminated == 0
            np.add.at(p[s, a], next_s[going_on].astype(int), prob[going_on])  # a state may be listed twice
    return p, r


def q_from_v(p: np.ndarray, r: np.ndarray, v: np.ndarray, gamma: float) -> np.ndarray:
    """One-step lookahead: q[s, a] = r(s,a) + gamma * sum_s' p(s'|s,a) v(s')   (equation 4.6 with v for v_pi)."""
    return r + gamma * (p @ v)


def optimal_q(p: np.ndarray, r: np.ndarray, gamma: float, tol: float) -> np.ndarray:
    """Q* by synchronous value iteration, v <- max_a [r + gamma p v], to within `tol` of the fixed point.

    Stops when a sweep changes v by less than tol * (1 - gamma) / gamma in every state: then
    max_s |v - v*| <= gamma / (1 - gamma) * change < tol (the contraction bound); needs gamma < 1.
    """
    v = np.zeros(len(r))
    while True:
        new = (r + gamma * (p @ v)).max(axis=1)
        change = np.max(np.abs(new - v))
        v = new
        if change < tol * (1.0 - gamma) / gamma:
            return q_from_v(p, r, v, gamma)


def exact_policy_value(p: np.ndarray, r: np.ndarray, policy: np.ndarray, gamma: float) -> np.ndarray:
    """v_pi of a deterministic policy[s] exactly: the linear system (I - gamma P_pi) v = r_pi (Eq. 4.4).

    Solved by Gaussian elimination written out, which gives np.linalg.solve's answer (the tests check it): the
    learner evaluates its greedy policy after every episode, and LAPACK's threads made a 100 x 100 solve take from
    0.1 ms to over 100 ms on a busy 2-core machine. For gamma < 1 the matrix is strictly diagonally dominant, so
    no pivoting is needed, and a step only moves between nearby states, so elimination stays inside the band.
    """
    n, states = len(r), np.arange(len(r))
    a = np.eye(n) - gamma * p[states, policy]
    b = r[states, policy].copy()
    rows, cols = np.nonzero(a)
    band = int(np.max(np.abs(rows - cols)))
    for k in range(n - 1):
        end = min(n, k + band + 1)
        factors = a[k + 1:end, k] / a[k, k]
        a[k + 1:end, k:end] -= np.outer(factors, a[k, k:end])
        b[k + 1:end] -= factors * b[k]
    v = np.zeros(n)
    for k in range(n - 1, -1, -1):
        end = min(n, k + band + 1)
        v[k] = (b[k] - a[k, k + 1:end] @ v[k + 1:end]) / a[k, k]
    return v


def greedy_action_sets(q: np.ndarray, tol: float) -> np.ndarray:
    """mask[s, a] = True where q(s, a) is within tol of max_a q(s, .): every greedy action, ties included."""
    return q >= q.max(axis=1, keepdims=True) - tol


# ----------------------------------------------------------------------------------------------------
# The learner: Q-learning on binary features (a table, or tile coding)
# ----------------------------------------------------------------------------------------------------


def q_learning_target(
    reward: np.ndarray, q_next: np.ndarray, gamma: float, terminated: np.ndarray
) -> np.ndarray:
    """R + gamma * max_a Q(S', a) (Eq. 6.8), with Q(terminal, .) = 0.

    q_next holds Q(S', .) with shape (..., A). Only `terminated` stops the bootstrap: truncation by a
    time limit is deliberately not an argument.
    """
    q_max = np.asarray(q_next, dtype=float).max(axis=-1)
    return np.asarray(reward, dtype=float) + gamma * (1.0 - np.asarray(terminated, dtype=float)) * q_max


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random action, otherwise a greedy one, ties broken at random."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def tiles_per_tiling(num_dims: int, tiles_per_dim: int) -> int:
    """Each tiling has one extra tile per dimension so that its offset copy still covers the space."""
    return (tiles_per_dim + 1) ** num_dims


def active_tiles(
    state: np.ndarray, low: np.ndarray, high: np.ndarray, num_tilings: int, tiles_per_dim: int
) -> np.ndarray:
    """Indices of the one active tile in each tiling (§9.5.4), in [0, num_tilings * tiles_per_tiling).

    The state is scaled so that a tile is one unit wide; tiling i is shifted by i * d / num_tilings
    units with d = (1, 3, 5, ...) (the book's asymmetric displacement), taken modulo one tile.
    """
    state, low, high = (np.asarray(x, dtype=np.float64) for x in (state, low, high))
    num_dims = state.shape[0]
    scaled = np.clip((state - low) / (high - low), 0.0, 1.0) * tiles_per_dim  # in [0, tiles_per_dim]
    displacement = 2 * np.arange(num_dims) + 1  # (1, 3, 5, ...)
    tilings = np.arange(num_tilings)[:, None]
    offsets = (tilings * displacement[None, :] % num_tilings) / num_tilings  # in [0, 1) of a tile
    coords = np.floor(scaled[None, :] + offsets).astype(np.int64)  # in [0, tiles_per_dim]
    strides = (tiles_per_dim + 1) ** np.arange(num_dims - 1, -1, -1)
    within = coords @ strides
    return tilings[:, 0] * tiles_per_tiling(num_dims, tiles_per_dim) + within


def tile_action_values(w: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """q(s, a) for every action: w has shape (num_actions, num_features)."""
    return w[:, tiles].sum(axis=1)


def shaped_q_learning_episode(
    env: gym.Env,
    w: np.ndarray,
    features: Callable,
    alpha: float,
    epsilon: float,
    gamma: float,
    rng: np.random.Generator,
    shaping: Callable,
) -> tuple[float, int]:
    """One episode of Q-learning on the reward R + shaping(obs, next_obs, terminated), updating w in place.

    Returns the TRUE discounted return sum_t gamma^t R_t (what the task asks for, whatever the learner is
    trained on) and the episode's length.
    """
    obs, _ = env.reset()
    tiles = features(obs)
    step_size = alpha / len(tiles)
    true_return, discount, length = 0.0, 1.0, 0
    while True:
        action = epsilon_greedy_action(tile_action_values(w, tiles), epsilon, rng)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        next_tiles = features(next_obs)
        trained_reward = reward + shaping(obs, next_obs, terminated)
        target = q_learning_target(trained_reward, tile_action_values(w, next_tiles), gamma, terminated)
        w[action, tiles] += step_size * (target - w[action, tiles].sum())
        true_return += discount * reward
        discount *= gamma
        length += 1
        if terminated or truncated:
            return true_return, length
        obs, tiles = next_obs, next_tiles


def episodes_to_criterion(scores: np.ndarray, target: float) -> int | None:
    """1-based index of the first episode whose score reaches target, None if none does."""
    reached = np.flatnonzero(np.asarray(scores) >= target)
    return int(reached[0]) + 1 if len(reached) else None


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of each window of `window` consecutive values (the figure's smoothing); len(x) - window + 1 values."""
    window = min(window, len(x))
    return np.convolve(x, np.ones(window) / window, mode="valid")


def run_shaped_learner(settings: dict, method: str, num_runs: int, seed: int, tiling: tuple[int, int]) -> dict:
    """Independent runs of Q-learning trained on one method's reward, each from w = 0.

    settings: the task's resolved options (env_id, gamma, alpha, epsilon, potential, potential_scale, bonus,
    num_episodes).
    Returns per run and episode the true return, the length and (grid) the exact true value of the greedy
    policy from the start, plus each run's final weights. Run r of every method sees the same seeds.
    """
    env_id, episodes = settings["env_id"], settings["num_episodes"]
    true_returns = np.zeros((num_runs, episodes))
    lengths = np.zeros((num_runs, episodes), dtype=int)
    greedy_values = np.full((num_runs, episodes), np.nan)
    weights = []
    for run in range(num_runs):
        rng = np.random.default_rng([seed, run])
        env = make_env(env_id)
        env.reset(seed=seed * 10_000 + run)  # later resets continue this environment's seeded generator
        env.action_space.seed(seed * 10_000 + run)
        if env_id == "ShapingGridworld":
            progress = env.unwrapped.progress
            p, r = transition_arrays(env.unwrapped.P, env.observation_space.n, env.action_space.n)
            w = np.zeros((env.action_space.n, env.observation_space.n))

            def features(obs):
                return np.array([obs])
        else:
            progress = mountain_car_progress
            low, high = env.observation_space.low, env.observation_space.high
            num_tilings, tiles_per_dim = tiling
            w = np.zeros((env.action_space.n, num_tilings * tiles_per_tiling(low.shape[0], tiles_per_dim)))

            def features(obs, low=low, high=high, num_tilings=num_tilings, tiles_per_dim=tiles_per_dim):
                return active_tiles(obs, low, high, num_tilings, tiles_per_dim)
        potential = make_potential(settings["potential"], settings["potential_scale"], settings["gamma"], progress)
        shaping = shaping_function(method, progress, potential, settings["gamma"], settings["bonus"])
        for episode in range(episodes):
            true_returns[run, episode], lengths[run, episode] = shaped_q_learning_episode(
                env, w, features, settings["alpha"], settings["epsilon"], settings["gamma"], rng, shaping)
            if env_id == "ShapingGridworld":  # the greedy policy's exact value under the TRUE reward
                policy = np.argmax(w, axis=0)  # ties to the lowest action
                greedy_values[run, episode] = exact_policy_value(p, r, policy, settings["gamma"])[env.unwrapped.start_state]
        weights.append(w)
        env.close()
    return {"true_returns": true_returns, "lengths": lengths, "greedy_values": greedy_values, "w": np.stack(weights)}


# ----------------------------------------------------------------------------------------------------
# The exact analysis of the grid world
# ----------------------------------------------------------------------------------------------------


def greedy_trajectory(env: ShapingGridworldEnv, policy: np.ndarray, steps: int) -> list[int]:
    """The cells a deterministic policy visits from the start when no move slips (the path it intends)."""
    state, path = env.start_state, [env.start_state]
    for _ in range(steps):
        state = env.move(state, int(policy[state]))
        path.append(state)
        if state == env.goal_state:
            break
    return path


def exact_analysis(env: ShapingGridworldEnv, gamma: float, potential: Callable, bonus: float, tol: float = 1e-10) -> dict:
    """Q* of the true, the potential-shaped and the bonus-shaped model, and the true value of each optimal policy.

    Returns the largest |Q'* - (Q* - Phi)|, whether the greedy action sets are equal in every state, the true
    value from the start of the bonus-optimal policy and of the true optimum, and their intended paths.
    """
    n_s, n_a = env.observation_space.n, env.action_space.n
    p, r = transition_arrays(env.P, n_s, n_a)
    phi = np.array([potential(s) for s in range(n_s)])
    models = {method: shaped_model(env.P, shaping_function(method, env.progress, potential, gamma, bonus))
              for method in METHODS}  # fmt: skip
    q = {method: optimal_q(*transition_arrays(model, n_s, n_a), gamma, tol) for method, model in models.items()}
    policies = {method: np.argmax(qm, axis=1) for method, qm in q.items()}
    true_values = {method: exact_policy_value(p, r, pi, gamma) for method, pi in policies.items()}
    start = env.start_state
    return {
        "q": q,
        "phi": phi,
        "identity_error": float(np.max(np.abs(q["potential"] - (q["none"] - phi[:, None])))),
        "same_greedy": bool(np.array_equal(greedy_action_sets(q["potential"], 1e-8), greedy_action_sets(q["none"], 1e-8))),
        "true_values": {method: float(v[start]) for method, v in true_values.items()},
        "policies": policies,
        "paths": {method: greedy_trajectory(env, pi, 60) for method, pi in policies.items()},
    }


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


def resolve(args: Args) -> dict:
    """The run's settings: each option left at None takes its task's default (DEFAULTS)."""
    settings = {"env_id": args.env_id}
    for name, default in DEFAULTS[args.env_id].items():
        value = getattr(args, name)
        settings[name] = default if value is None else value
    task = "gridworld" if args.env_id == "ShapingGridworld" else "mountain_car"
    settings["plot"] = args.plot or f"benchmark_results/classic/reward_shaping_{task}.png"
    return settings


def check_args(args: Args) -> None:
    """Reject bad input with one line on stderr and exit status 2, before any work."""
    known = ", ".join(TASKS)
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            fail(f"--env-id {args.env_id} is unknown ({reason}); use one of: {known}")
    if args.env_id not in TASKS:
        fail(f"--env-id {args.env_id}: shaping needs a task's measure of progress toward its goal, which this file "
             f"defines for {known} only; use one of them")
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        fail(f"--methods {' '.join(args.methods)}: unknown or empty; choose among {', '.join(METHODS)}")
    s = resolve(args)
    if s["potential"] not in POTENTIALS[args.env_id]:
        fail(f"--potential {s['potential']} is not defined for {args.env_id}; use one of: "
             f"{', '.join(POTENTIALS[args.env_id])}")
    grid = args.env_id == "ShapingGridworld"
    if not (0.0 < s["gamma"] < 1.0 if grid else 0.0 < s["gamma"] <= 1.0):
        fail(f"--gamma {s['gamma']} is out of range; use " + ("a discount in (0, 1), e.g. 0.99: with the grid's "
             "sparse reward every finishing policy is worth 1 at gamma = 1, and the bonus's loops are worth infinity"
             if grid else "a discount in (0, 1], e.g. 1"))  # fmt: skip
    if not 0.0 < s["alpha"] <= 1.0:
        fail(f"--alpha {s['alpha']} is out of range; use a step size in (0, 1], e.g. 0.5")
    if not 0.0 <= s["epsilon"] <= 1.0:
        fail(f"--epsilon {s['epsilon']} is not a probability; use a value in [0, 1], e.g. 0.1")
    for name in ("potential_scale", "bonus"):
        if not math.isfinite(s[name]):
            fail(f"--{name.replace('_', '-')} {s[name]} must be a finite number")
    if not math.isfinite(s["target"]) or (grid and not 0.0 < s["target"] <= 1.0):
        fail(f"--target {s['target']} must be " + ("a fraction of V*(start) in (0, 1], e.g. 0.99" if grid
             else "a finite mean return, e.g. -160"))  # fmt: skip
    for name in ("num_episodes", "num_runs", "num_tilings", "tiles_per_dim", "smoothing"):
        value = s[name] if name in s else getattr(args, name)
        if value <= 0:
            fail(f"--{name.replace('_', '-')} {value} must be a positive integer")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(s["plot"])), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {s['plot']}: {exc.strerror}; give a path in a writable directory")


COLORS = {"none": "tab:blue", "potential": "tab:green", "bonus": "tab:red"}
LABELS = {"none": "true reward R", "potential": r"R + $\gamma\Phi(s')-\Phi(s)$", "bonus": "R + b per step toward the goal"}


def draw_grid_paths(ax, env: ShapingGridworldEnv, paths: dict, values: dict) -> None:
    """The grid with each method's intended path (no slips): the true optimum's and the bonus's loop."""
    n = env.size
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="0.85")
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    for method, offset in (("none", -0.12), ("bonus", 0.12)):
        if method not in paths:
            continue
        rows, cols = np.divmod(np.array(paths[method]), n)
        ax.plot(cols + offset, rows + offset, "-o", ms=3, color=COLORS[method],
                label=f"{method}: true value {values[method]:.3f}")  # fmt: skip
    ax.plot(*env.start[::-1], "ks", ms=10)
    ax.plot(*env.goal[::-1], "y*", ms=18, markeredgecolor="k")
    ax.set_title("optimal policies' intended paths (exact)\nthe bonus policy stops short and loops")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8)


def main(args: Args) -> dict:
    check_args(args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.time()
    s = resolve(args)
    grid = args.env_id == "ShapingGridworld"
    summary: dict = {"settings": s}
    lines = [f"{args.env_id}: Q-learning, {args.num_runs} runs x {s['num_episodes']} episodes, gamma={s['gamma']}, "
             f"alpha={s['alpha']}, epsilon={s['epsilon']}, Phi = {s['potential']} x {s['potential_scale']}, b = {s['bonus']}"]
    if grid:
        env = make_env(args.env_id)
        potential = make_potential(s["potential"], s["potential_scale"], s["gamma"], env.progress)
        exact = exact_analysis(env, s["gamma"], potential, s["bonus"])
        v_star = exact["true_values"]["none"]
        summary.update(identity_error=exact["identity_error"], same_greedy=exact["same_greedy"],
                       exact_true_values=exact["true_values"], bonus_path=exact["paths"]["bonus"])  # fmt: skip
        lines.append(f"  exact: max |Q'* - (Q* - Phi)| = {exact['identity_error']:.1e}; same greedy actions in every "
                     f"state: {exact['same_greedy']}")  # fmt: skip
        lines.append("  exact true value from the start of each reward's optimal policy: " + ", ".join(
            f"{m} {v:.4f}" for m, v in exact["true_values"].items()) + f" (bonus path: {exact['paths']['bonus'][-6:]})")
        criterion = s["target"] * v_star
    results = {}
    for method in args.methods:
        result = run_shaped_learner(s, method, args.num_runs, args.seed, (args.num_tilings, args.tiles_per_dim))
        results[method] = result
        if grid:
            scores = result["greedy_values"]
        else:  # the mean true return of the last 10 episodes (fewer at the start)
            returns = result["true_returns"]
            scores = np.array([[returns[run, max(0, e - 9): e + 1].mean() for e in range(returns.shape[1])]
                               for run in range(args.num_runs)])  # fmt: skip
            criterion = s["target"]
        reached = [episodes_to_criterion(run_scores, criterion) for run_scores in scores]
        hit = np.array([e for e in reached if e is not None], dtype=float)
        summary[method] = {
            "episodes_to_criterion": reached,
            "reached": len(hit),
            "episodes_mean": float(hit.mean()) if len(hit) else math.nan,
            "episodes_std": float(hit.std(ddof=1)) if len(hit) > 1 else 0.0,
            "final_true_return_mean": float(result["true_returns"][:, -10:].mean()),
        }
        if grid:
            summary[method]["final_greedy_value_mean"] = float(result["greedy_values"][:, -1].mean())
        m = summary[method]
        lines.append(f"  {method:9s}: criterion reached in {m['reached']}/{args.num_runs} runs, episodes "
                     f"{m['episodes_mean']:.1f} +- {m['episodes_std']:.1f} (mean +- std of those runs); true return, "
                     f"last 10 episodes {m['final_true_return_mean']:.3f}"
                     + (f"; greedy policy's exact true value {m['final_greedy_value_mean']:.4f} (V* {v_star:.4f})"
                        if grid else ""))  # fmt: skip

    ncols = 3 if grid else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.8))
    episodes = np.arange(1, s["num_episodes"] + 1)
    ax = axes[0]
    for method, result in results.items():
        curve = result["greedy_values"] if grid else result["lengths"]
        mean, std = curve.mean(axis=0), curve.std(axis=0)
        ax.plot(episodes, mean, color=COLORS[method], label=LABELS[method])
        ax.fill_between(episodes, mean - std, mean + std, color=COLORS[method], alpha=0.15)
    if grid:
        ax.axhline(v_star, color="k", ls="--", lw=1, label="V*(start)")
        ax.set_ylabel("exact true value of the greedy policy from the start")
    else:
        ax.set_ylabel("steps per episode (200 = time limit)")
    ax.set_xlabel("episode")
    ax.set_title(f"{args.env_id}: mean $\\pm$ std over {args.num_runs} runs")
    ax.legend(fontsize=8)
    ax = axes[1]
    for method, result in results.items():
        smooth = moving_average(result["true_returns"].mean(axis=0), args.smoothing)
        ax.plot(np.arange(len(smooth)) + min(args.smoothing, s["num_episodes"]), smooth, color=COLORS[method],
                label=LABELS[method])  # fmt: skip
    ax.set_xlabel("episode")
    ax.set_ylabel("true (discounted) return of the episode" if grid else "true return of the episode")
    ax.set_title(f"online episodes (epsilon = {s['epsilon']}), moving average of {args.smoothing}")
    ax.legend(fontsize=8)
    if grid:
        draw_grid_paths(axes[2], env, exact["paths"], exact["true_values"])
    fig.tight_layout()
    fig.savefig(s["plot"], dpi=110)
    plt.close(fig)

    summary["wall_time_s"] = time.time() - start
    lines.append(f"  figure: {s['plot']}  ({summary['wall_time_s']:.1f} s)")
    print("\n".join(lines))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
