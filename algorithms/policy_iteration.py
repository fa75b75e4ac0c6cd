"""Policy iteration (Sutton & Barto, 2nd ed., 2018, Section 4.3; Jack's car rental, Example 4.2, Figure 4.2).

Book: Sutton and Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed., Chapter 4,
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/policy_iteration.py                          # Figure 4.2, Jack's car rental
    python algorithms/policy_iteration.py --env-id FrozenLake-v1   # any Gymnasium env with env.unwrapped.P

Policy iteration alternates the two steps of the pseudocode box in Section 4.3, as in `policy_iteration`:

    1. evaluation (in place, Section 4.1), until the largest change of a sweep is below theta:
           V(s) <- sum_{s',r} p(s',r|s,pi(s)) * [r + gamma * V(s') * (1 - terminated)]
    2. improvement (4.9):
           q(s,a) = sum_{s',r} p(s',r|s,a) * [r + gamma * V(s') * (1 - terminated)]
           pi'(s) = argmax_a q(s,a), keeping pi(s) unless another action beats it by more than tie_tol
       policy-stable when pi' = pi; otherwise evaluate pi' starting from V (the book's warm start).

Keeping the old action on ties is the fix of Exercise 4.4: with a plain argmax, two equally good actions
whose computed values differ only by rounding could be swapped forever.

The model is Gymnasium's toy-text format, P[s][a] = [(prob, next_state, reward, terminated), ...]. Jack's
car rental and the 4x4 gridworld below expose the same P, so one routine serves them and FrozenLake,
CliffWalking and Taxi. Jack's P lists 441 next states for each of 441 x 11 state-actions, so it is built
row by row on demand from arrays computed once with numpy (the rewards in it are the expected rentals
given the next state, which leaves every expected update of the book unchanged).

pi_0: "move no cars" for Jack (as in Figure 4.2); for every other environment the equiprobable random
policy, because with gamma = 1 a deterministic first guess may never end an episode (walking into a wall
forever), and then its evaluation diverges. With gamma = 1, check_args refuses an environment from one of
whose states no policy can terminate (Jack's continuing task is such a case: use gamma < 1 there).

Tested: Jack's car rental stable after four improvements, as in Figure 4.2 (tests/test_policy_iteration.py).
Results: benchmark_results/policy_iteration.md
"""

import importlib
import os
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import matplotlib
import numpy as np
import tyro
from gymnasium import spaces

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)


@dataclass
class Args:
    env_id: str = "JacksCarRental-v0"
    """JacksCarRental-v0 (Example 4.2), GridWorld4x4-v0 (Example 4.1) or a Gymnasium env with env.unwrapped.P"""
    gamma: float | None = None
    """discount in (0, 1]; default: 0.9 for Jack (Example 4.2), 1 for the gridworld (Example 4.1), 0.99 otherwise"""
    theta: float = 1e-8
    """stop each policy evaluation when the largest change of a sweep is below theta (Section 4.1)"""
    tie_tol: float = 1e-9
    """an action replaces pi(s) only if its value is larger by more than this (ties keep pi(s), Exercise 4.4)"""
    seed: int = 1
    """seed of the environment's reset and action space (policy iteration itself is deterministic)"""
    plot: str = "benchmark_results/classic/figure_4_2_jacks_car_rental.png"
    """where to save the figure (PNG)"""


# ---------------------------------------------------------------------------------------------------
# Environments: Jack's car rental (Example 4.2) and the 4x4 gridworld (Example 4.1), both with a
# transition model P in Gymnasium's toy-text format.
# ---------------------------------------------------------------------------------------------------
def poisson_pmf(lam: float, n: int) -> np.ndarray:
    """P(X = k) for k = 0..n-1, X ~ Poisson(lam)."""
    k = np.arange(n)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n)))])
    return np.exp(k * np.log(lam) - lam - log_fact)


def location_model(max_cars: int, lam_requests: float, lam_returns: float, rent: float):
    """One location's night: from m cars in the morning (after moving) to n' cars the next morning.

    Returns prob[m, n'] and rental[m, n'] = E[rent earned and n' | m] (the joint sum, not yet divided).
    Requests beyond the m cars are lost (rented = min(requests, m)); returned cars beyond max_cars go back
    to the nationwide company. The Poisson tails are folded into the last possible count, so every row
    sums to 1 exactly.
    """
    size = max_cars + 1
    req, ret = poisson_pmf(lam_requests, size), poisson_pmf(lam_returns, size)
    prob = np.zeros((size, size))
    rental = np.zeros((size, size))
    for m in range(size):
        rented_p = req[: m + 1].copy()
        rented_p[m] = 1.0 - req[:m].sum()  # every request of m or more rents all m cars
        for rented in range(m + 1):
            left = m - rented
            next_p = ret[: size - left].copy()
            next_p[-1] = 1.0 - ret[: size - left - 1].sum()  # returns that would overfill the lot
            prob[m, left:] += rented_p[rented] * next_p
            rental[m, left:] += rented_p[rented] * next_p * rent * rented
    return prob, rental


class JacksCarRentalEnv(gym.Env):
    """Example 4.2. State s = 21 * n1 + n2 with n1, n2 = cars at the first and second location (0..20).

    Action a in 0..10 means moving (a - 5) cars overnight from the first location to the second (negative:
    the other way), at $2 a car; the next day each rented car earns $10. Requests are Poisson with means
    3 and 4, returns Poisson with means 3 and 2; returned cars can be rented the day after. A continuing
    task: no transition terminates.

    The book allows only moves the lot can supply (-n2 <= a - 5 <= n1). Gymnasium needs every action in
    every state, so an order for more cars than the lot holds moves all the cars there but is billed in
    full: it is then strictly worse than the feasible order, so optimal and greedy policies stay feasible.
    """

    metadata = {"render_modes": []}

    def __init__(self, max_cars=20, max_move=5, move_cost=2.0, rent=10.0, requests=(3.0, 4.0), returns=(3.0, 2.0)):
        self.max_cars, self.max_move = max_cars, max_move
        size = max_cars + 1
        self.observation_space = spaces.Discrete(size * size)
        self.action_space = spaces.Discrete(2 * max_move + 1)
        self.move_cost, self.rent, self.requests, self.returns = move_cost, rent, requests, returns
        prob1, rental1 = location_model(max_cars, requests[0], returns[0], rent)
        prob2, rental2 = location_model(max_cars, requests[1], returns[1], rent)
        mean_rent1 = np.divide(rental1, prob1, out=np.zeros_like(prob1), where=prob1 > 0)
        mean_rent2 = np.divide(rental2, prob2, out=np.zeros_like(prob2), where=prob2 > 0)
        # The locations are independent given the morning counts, so the next state's probability is an
        # outer product and the expected rent given (n1', n2') a sum.
        n1, n2 = np.divmod(np.arange(size * size), size)
        ordered = np.arange(-max_move, max_move + 1)
        moved = np.clip(ordered[None, :], -n2[:, None], n1[:, None])  # [s, a]: cars actually moved
        morning1 = np.minimum(n1[:, None] - moved, max_cars)  # cars beyond 20 go back to the company
        morning2 = np.minimum(n2[:, None] + moved, max_cars)
        n_s, n_a = size * size, len(ordered)
        self.prob = (prob1[morning1][:, :, :, None] * prob2[morning2][:, :, None, :]).reshape(n_s, n_a, n_s)
        self.reward = (
            mean_rent1[morning1][:, :, :, None] + mean_rent2[morning2][:, :, None, :]
        ).reshape(n_s, n_a, n_s) - move_cost * np.abs(ordered)[None, :, None]
        self.P = JackTransitions(self.prob, self.reward)
        self.s = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = int(self.np_random.integers(self.observation_space.n))
        return self.s, {}

    def step(self, action):
        n1, n2 = divmod(self.s, self.max_cars + 1)
        ordered = int(action) - self.max_move
        moved = min(max(ordered, -n2), n1)
        n1, n2 = min(n1 - moved, self.max_cars), min(n2 + moved, self.max_cars)
        reward = -self.move_cost * abs(ordered)
        cars = [n1, n2]
        for i in range(2):
            rented = min(int(self.np_random.poisson(self.requests[i])), cars[i])
            reward += self.rent * rented
            cars[i] = min(cars[i] - rented + int(self.np_random.poisson(self.returns[i])), self.max_cars)
        self.s = cars[0] * (self.max_cars + 1) + cars[1]
        return self.s, float(reward), False, False, {}


class JackTransitions:
    """Read-only P[s][a] = [(prob, next_state, reward, False), ...] built from Jack's arrays on demand.

    Stored as Python tuples, the 441 x 11 x 441 entries would take about 250 MB.
    """

    def __init__(self, prob: np.ndarray, reward: np.ndarray):
        self.prob, self.reward = prob, reward

    def __len__(self):
        return len(self.prob)

    def __getitem__(self, s):
        n = self.prob.shape[2]
        return [
            list(zip(self.prob[s, a].tolist(), range(n), self.reward[s, a].tolist(), [False] * n, strict=True))
            for a in range(self.prob.shape[1])
        ]


class GridWorld4x4Env(gym.Env):
    """Example 4.1. States 0..15 row by row; 0 and 15 (the shaded corners) are terminal.

    Actions 0 up, 1 right, 2 down, 3 left move one cell deterministically; a move off the grid leaves
    the state unchanged. Every transition gives reward -1. An episode starts in a random non-terminal
    state. P[s][a] = [(1.0, next_state, -1, terminated)] as in Gymnasium's toy-text environments, and the
    terminal states are absorbing with reward 0, as FrozenLake's holes are.
    """

    metadata = {"render_modes": []}
    shape = (4, 4)
    terminal_states = (0, 15)
    action_deltas = ((-1, 0), (0, 1), (1, 0), (0, -1))  # (row, column) change of up, right, down, left

    def __init__(self):
        self.observation_space = spaces.Discrete(16)
        self.action_space = spaces.Discrete(4)
        self.P = {s: {a: self._outcomes(s, a) for a in range(4)} for s in range(16)}
        self.s = 1

    def _outcomes(self, s, a):
        if s in self.terminal_states:
            return [(1.0, s, 0, True)]
        row, col = divmod(s, 4)
        d_row, d_col = self.action_deltas[a]
        row, col = min(max(row + d_row, 0), 3), min(max(col + d_col, 0), 3)
        next_s = row * 4 + col
        return [(1.0, next_s, -1, next_s in self.terminal_states)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        nonterminal = [s for s in range(16) if s not in self.terminal_states]
        self.s = int(self.np_random.choice(nonterminal))
        return self.s, {}

    def step(self, action):
        outcomes = self.P[self.s][int(action)]
        i = self.np_random.choice(len(outcomes), p=[o[0] for o in outcomes])
        _, self.s, reward, terminated = outcomes[i]
        return self.s, float(reward), bool(terminated), False, {}


LOCAL_ENVS = {"JacksCarRental-v0": JacksCarRentalEnv, "GridWorld4x4-v0": GridWorld4x4Env}
BOOK_GAMMA = {"JacksCarRental-v0": 0.9, "GridWorld4x4-v0": 1.0}
TOY_TEXT_GAMMA = 0.99
TRY_IDS = (
    "JacksCarRental-v0, GridWorld4x4-v0, FrozenLake-v1, FrozenLake8x8-v1, CliffWalking-v1, "
    "CliffWalkingSlippery-v1, Taxi-v4"
)

# Arrow directions (row, column) of each action, for drawing policies on a grid.
ACTION_DELTAS = {
    "GridWorld4x4Env": GridWorld4x4Env.action_deltas,
    "FrozenLakeEnv": ((0, -1), (1, 0), (0, 1), (-1, 0)),  # left, down, right, up
    "CliffWalkingEnv": ((-1, 0), (0, 1), (1, 0), (0, -1)),  # up, right, down, left
}


def make_env(env_id: str) -> gym.Env:
    """One environment: a book environment written in this file (LOCAL_ENVS), or a registered Gymnasium
    environment (with its time limit)."""
    if env_id in LOCAL_ENVS:
        return LOCAL_ENVS[env_id]()
    return gym.make(env_id)


# ---------------------------------------------------------------------------------------------------
# Pure functions: the math the tests check (numpy in, numpy out).
# ---------------------------------------------------------------------------------------------------
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


def evaluate_policy(
    p: np.ndarray,
    r: np.ndarray,
    policy: np.ndarray,
    gamma: float,
    theta: float,
    in_place: bool = True,
    v0: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Iterative policy evaluation (Section 4.1) of policy[s, a] = pi(a|s). Returns (V, number of sweeps).

    in_place: one array, each new V(s) used at once (the pseudocode box); else two arrays, the synchronous
    v_{k+1} of Figure 4.1. v0: the first V (policy iteration warm-starts from the previous policy's V).
    Stops after the first sweep whose largest change is below theta. The caller makes sure the sweeps
    converge: gamma < 1, or a policy that terminates from every state (`never_terminating`).
    """
    # Averaging over pi once gives the Markov chain the policy induces: P_pi[s, s'] and r_pi[s].
    p_pi = np.einsum("sa,sat->st", policy, p)
    r_pi = np.sum(policy * r, axis=1)
    v = np.zeros(len(r)) if v0 is None else np.array(v0, dtype=float)
    sweeps = 0
    while True:
        sweeps += 1
        if in_place:
            delta = 0.0
            for s in range(len(v)):
                new = r_pi[s] + gamma * (p_pi[s] @ v)  # already uses the states updated this sweep
                delta = max(delta, abs(new - v[s]))
                v[s] = new
        else:
            new_v = r_pi + gamma * (p_pi @ v)  # every state from the old array
            delta = float(np.max(np.abs(new_v - v)))
            v = new_v
        if delta < theta:
            return v, sweeps


def q_from_v(p: np.ndarray, r: np.ndarray, v: np.ndarray, gamma: float) -> np.ndarray:
    """One-step lookahead: q[s, a] = r(s,a) + gamma * sum_s' p(s'|s,a) v(s')   (equation 4.6 with v for v_pi)."""
    return r + gamma * (p @ v)


def improve_policy(q: np.ndarray, old_actions: np.ndarray | None, tie_tol: float) -> np.ndarray:
    """Greedy policy (4.9) as an action per state; keeps old_actions[s] unless beaten by more than tie_tol."""
    best = np.argmax(q, axis=1)  # the first maximising action
    if old_actions is None:
        return best
    rows = np.arange(len(q))
    keep = q[rows, old_actions] >= q[rows, best] - tie_tol
    return np.where(keep, old_actions, best)


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """A deterministic policy as the matrix pi[s, a] = 1 if a = actions[s]."""
    return np.eye(n_actions)[actions]


def policy_iteration(p, r, gamma, theta, initial_policy, tie_tol=1e-9, max_iterations=1000):
    """Policy iteration (Section 4.3) from initial_policy[s, a] (stochastic allowed, e.g. the random policy).

    Returns (V, actions, history) where history[k] = (pi_k as actions or None for a stochastic pi_0,
    v_{pi_k}, evaluation sweeps). The last policy in history is stable: improving it changes nothing.
    """
    policy = initial_policy
    actions = None if not np.all((initial_policy == 0) | (initial_policy == 1)) else np.argmax(initial_policy, axis=1)
    v, history = None, []
    for _ in range(max_iterations):
        v, sweeps = evaluate_policy(p, r, policy, gamma, theta, v0=v)  # warm start from the last V
        history.append((actions, v.copy(), sweeps))
        new_actions = improve_policy(q_from_v(p, r, v, gamma), actions, tie_tol)
        if actions is not None and np.array_equal(new_actions, actions):
            return v, actions, history  # policy-stable
        actions = new_actions
        policy = one_hot(actions, p.shape[1])
    raise RuntimeError(f"policy iteration did not become stable in {max_iterations} iterations; raise tie_tol")


def never_terminating(p: np.ndarray, policy: np.ndarray) -> np.ndarray:
    """mask[s] = True where, following policy[s, a] from s, no terminating transition can ever happen.

    A state can terminate if a terminating transition has positive probability there, or if it can move
    to a state that can; we grow that set until it stops changing (reachability on the support of P_pi).
    In a finite MDP, "can terminate from every state" means "terminates with probability 1", which is
    what gamma = 1 needs for finite values. For the equiprobable random policy the mask is exactly the
    set of states from which NO policy terminates.
    """
    terminate_prob = np.sum(policy * (1.0 - p.sum(axis=2)), axis=1)
    can_terminate = terminate_prob > 1e-12
    moves = np.einsum("sa,sat->st", policy, p) > 0
    while True:
        grown = can_terminate | (moves.astype(float) @ can_terminate.astype(float) > 0)
        if np.array_equal(grown, can_terminate):
            return ~can_terminate
        can_terminate = grown


# ---------------------------------------------------------------------------------------------------
# Figure 4.2 (and a policy/value picture for the other environments)
# ---------------------------------------------------------------------------------------------------
def plot_jack(path, history, max_cars, max_move):
    """pi_0 .. pi_K as heat maps of the number of cars moved, then v_{pi_K} as a surface (Figure 4.2)."""
    size = max_cars + 1
    n = len(history)
    fig = plt.figure(figsize=(4.2 * (n + 1) / 2 + 1, 8))
    cols = (n + 2) // 2
    levels = np.arange(-max_move, max_move + 2) - 0.5
    for k, (actions, _, _) in enumerate(history):
        ax = fig.add_subplot(2, cols, k + 1)
        moved = (actions - max_move).reshape(size, size)  # rows: cars at the first location
        ax.imshow(moved, origin="lower", cmap="RdBu_r", vmin=-max_move, vmax=max_move)
        ax.contour(moved, levels=levels, colors="k", linewidths=0.6)
        for value in np.unique(moved):
            cells = np.argwhere(moved == value)
            row, col = cells[len(cells) // 2]
            ax.text(col, row, str(value), ha="center", va="center", fontsize=9, fontweight="bold")
        ax.set(title=f"pi_{k}", xlabel="# cars at second location", ylabel="# cars at first location")
        ax.set_xticks(range(0, size, 5))
        ax.set_yticks(range(0, size, 5))
    v = history[-1][1].reshape(size, size)
    ax = fig.add_subplot(2, cols, n + 1, projection="3d")
    first, second = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    ax.plot_surface(second, first, v, cmap="viridis")
    ax.set(title=f"v_pi_{n - 1}", xlabel="# cars at second location", ylabel="# cars at first location")
    fig.suptitle("Figure 4.2: Jack's car rental, policy iteration (cars moved from the first to the second location)")
    fig.subplots_adjust(hspace=0.35, wspace=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_final_policy(path, env, env_id, v, actions, n_improvements):
    """V* and pi* on the grid (arrows), or as curves over the state index when there is no grid."""
    fig, (ax_v, ax_pi) = plt.subplots(1, 2, figsize=(12, 4.5))
    u = env.unwrapped
    name = type(u).__name__
    if name in ACTION_DELTAS:
        rows, cols = (u.nrow, u.ncol) if hasattr(u, "nrow") else tuple(u.shape)
        ax_v.imshow(v.reshape(rows, cols), cmap="viridis")
        fig.colorbar(ax_v.images[0], ax=ax_v)
        for s in range(rows * cols):
            d_row, d_col = ACTION_DELTAS[name][actions[s]]
            ax_pi.arrow(s % cols, s // cols, 0.32 * d_col, 0.32 * d_row, head_width=0.12, color="k")
        ax_pi.set(xlim=(-0.5, cols - 0.5), ylim=(rows - 0.5, -0.5), aspect="equal")
    else:
        ax_v.plot(v, lw=1)
        ax_v.set(xlabel="state", ylabel="V(s)")
        ax_pi.plot(actions, ".", ms=3)
        ax_pi.set(xlabel="state", ylabel="action")
    ax_v.set_title(f"{env_id}: v_pi* from policy iteration")
    ax_pi.set_title(f"pi* (stable after {n_improvements} improvements)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    if args.gamma is not None and not 0.0 < args.gamma <= 1.0:
        fail(f"--gamma {args.gamma} is outside (0, 1]; use e.g. 0.9 or 1")
    if not args.theta > 0.0:
        fail(f"--theta {args.theta} must be > 0; use e.g. 1e-8")
    if not args.tie_tol >= 0.0:
        fail(f"--tie-tol {args.tie_tol} must be >= 0; use e.g. 1e-9")
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:  # unknown, or deprecated such as Taxi-v3 (Gymnasium 1.4 has Taxi-v4)
            fail(f"--env-id {args.env_id} is unknown ({str(error).splitlines()[0]}); use one of: {TRY_IDS}")
    try:
        env = make_env(args.env_id)
    except Exception as error:  # a registered id whose optional dependency is missing, for instance
        fail(f"--env-id {args.env_id} could not be created ({type(error).__name__}); use one of: {TRY_IDS}")
    if not hasattr(env.unwrapped, "P"):
        fail(f"--env-id {args.env_id} has no transition model env.unwrapped.P, which dynamic programming needs; "
             f"use one of: {TRY_IDS}")
    if not (isinstance(env.observation_space, spaces.Discrete) and isinstance(env.action_space, spaces.Discrete)):
        fail(f"--env-id {args.env_id} needs Discrete observation and action spaces; use one of: {TRY_IDS}")
    gamma = BOOK_GAMMA.get(args.env_id, TOY_TEXT_GAMMA) if args.gamma is None else args.gamma
    if gamma == 1.0:  # values exist for every policy only if episodes can end from every state
        n_states, n_actions = env.observation_space.n, env.action_space.n
        p, _ = transition_arrays(env.unwrapped.P, n_states, n_actions)
        stuck = never_terminating(p, np.full((n_states, n_actions), 1.0 / n_actions))
        if stuck.any():
            fail(f"--gamma 1 needs episodes that can end, but in {args.env_id} no policy terminates from "
                 f"{int(stuck.sum())} of {n_states} states; use --gamma < 1 (e.g. 0.9)")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {args.plot}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    env = make_env(args.env_id)
    gamma = BOOK_GAMMA.get(args.env_id, TOY_TEXT_GAMMA) if args.gamma is None else args.gamma
    n_states, n_actions = env.observation_space.n, env.action_space.n
    start = time.perf_counter()
    p, r = transition_arrays(env.unwrapped.P, n_states, n_actions)
    model_seconds = time.perf_counter() - start
    env.reset(seed=args.seed)  # nothing below is random; seeded for the house rule
    env.action_space.seed(args.seed)
    jack = isinstance(env, JacksCarRentalEnv)
    if jack:  # Figure 4.2 starts from "never move a car"
        initial = np.zeros((n_states, n_actions))
        initial[:, env.max_move] = 1.0
    else:  # the equiprobable random policy (see the module docstring)
        initial = np.full((n_states, n_actions), 1.0 / n_actions)
    start = time.perf_counter()
    v, actions, history = policy_iteration(p, r, gamma, args.theta, initial, args.tie_tol)
    seconds = time.perf_counter() - start
    n_improvements = len(history) - 1  # pi_1 .. pi_K came from improvements; pi_K improves to itself

    if jack:
        plot_jack(args.plot, history, env.max_cars, env.max_move)
    else:
        plot_final_policy(args.plot, env, args.env_id, v, actions, n_improvements)

    print(f"{args.env_id}: policy iteration, gamma={gamma}, theta={args.theta}")
    print(f"  stable after {n_improvements} improvements; evaluation sweeps per policy: {[h[2] for h in history]}")
    if jack:
        moved = (actions - env.max_move).reshape(env.max_cars + 1, env.max_cars + 1)
        print("  final policy (rows: cars at first location 20..0, columns: second location 0..20):")
        print("\n".join("    " + " ".join(f"{m:2d}" for m in row) for row in moved[::-1]))
        print(f"  v(0,0) = {v[0]:.1f}, v(20,20) = {v[-1]:.1f}")
    else:
        print(f"  V*: min {v.min():.4f}, max {v.max():.4f}; V*(state 0) = {v[0]:.4f}")
    print(f"  model {model_seconds:.1f} s, policy iteration {seconds:.1f} s; figure saved to {args.plot}")
    return {
        "env_id": args.env_id,
        "gamma": gamma,
        "theta": args.theta,
        "v": v,
        "policy": actions,
        "n_improvements": n_improvements,
        "policies": [h[0] for h in history],
        "sweeps": [h[2] for h in history],
        "seconds": seconds,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
