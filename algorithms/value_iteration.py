"""Value iteration (Sutton & Barto, 2nd ed., 2018, Section 4.4; the gambler's problem, Example 4.3, Figure 4.3).

Book: Sutton and Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed., Chapter 4,
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/value_iteration.py                          # Figure 4.3, the gambler's problem
    python algorithms/value_iteration.py --env-id FrozenLake-v1   # any Gymnasium env with env.unwrapped.P

Value iteration sweeps the Bellman optimality equation (4.10) over the states, in place (the pseudocode
box of Section 4.4), as in `value_iteration`:

    V(s) <- max_a sum_{s',r} p(s',r|s,a) * [r + gamma * V(s') * (1 - terminated)]

until the largest change of a sweep is below theta, then outputs the deterministic policy

    pi(s) = argmax_a sum_{s',r} p(s',r|s,a) * [r + gamma * V(s') * (1 - terminated)]

taking, among actions within tie_tol of the best, the first one (for the gambler: the smallest stake).
Several policies are optimal in the gambler's problem; the ties make the spiky Figure 4.3, and which of
them is drawn depends on that tie rule, while V* does not.

Why the result can be trusted: after the last in-place sweep every V(s) moved by less than theta, so the
Bellman optimality residual max_s |(T V)(s) - V(s)| is below gamma * theta, and for gamma < 1
max_s |V(s) - v*(s)| <= gamma * theta / (1 - gamma).

The model is Gymnasium's toy-text format, P[s][a] = [(prob, next_state, reward, terminated), ...]; the
gambler and the 4x4 gridworld below expose the same P, so one routine serves them and FrozenLake,
CliffWalking and Taxi. With gamma = 1, check_args refuses an environment from one of whose states no
policy can terminate (then values need not exist; use gamma < 1).

Tested: the gambler's v*(25), v*(50), v*(75) are the book's 0.16, 0.40, 0.64 (tests/test_value_iteration.py).
Results: benchmark_results/value_iteration.md
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
    env_id: str = "GamblersProblem-v0"
    """GamblersProblem-v0 (Example 4.3), GridWorld4x4-v0 (Example 4.1) or a Gymnasium env with env.unwrapped.P"""
    gamma: float | None = None
    """discount in (0, 1]; default: 1 for the gambler and the gridworld (the book's), 0.99 otherwise"""
    theta: float = 1e-10
    """stop when the largest change of a sweep is below theta (Section 4.4)"""
    p_head: float = 0.4
    """gambler's problem: probability that the coin comes up heads (Figure 4.3 uses 0.4)"""
    tie_tol: float = 1e-9
    """policy extraction: actions within this of the best value count as ties; the first one is taken"""
    seed: int = 1
    """seed of the environment's reset and action space (value iteration itself is deterministic)"""
    plot: str = "benchmark_results/classic/figure_4_3_gamblers_problem.png"
    """where to save the figure (PNG)"""


# ---------------------------------------------------------------------------------------------------
# Environments: the gambler's problem (Example 4.3) and the 4x4 gridworld (Example 4.1), both with a
# transition model P in Gymnasium's toy-text format.
# ---------------------------------------------------------------------------------------------------
class GamblersProblemEnv(gym.Env):
    """Example 4.3. State = the gambler's capital 0..100; 0 (ruin) and 100 (goal) are terminal.

    Action a in 0..49 stakes a + 1 dollars on a coin flip that comes up heads with probability p_head:
    heads wins the stake, tails loses it. Reward +1 on reaching 100, else 0, gamma = 1, so v(s) is the
    probability of winning. The book allows stakes 1..min(s, 100 - s) only; Gymnasium needs every action
    in every state, so a larger stake is capped at min(s, 100 - s) (then it duplicates an allowed one).
    The book's stake 0 is left out: it changes nothing, and with gamma = 1 it ties with the best action
    everywhere. An episode starts from a uniformly random capital 1..99.
    """

    metadata = {"render_modes": []}
    goal = 100

    def __init__(self, p_head: float = 0.4):
        self.p_head = p_head
        self.observation_space = spaces.Discrete(self.goal + 1)
        self.action_space = spaces.Discrete(self.goal // 2)
        self.P = {s: {a: self._outcomes(s, a) for a in range(self.goal // 2)} for s in range(self.goal + 1)}
        self.s = 1

    def _outcomes(self, s, a):
        if s in (0, self.goal):
            return [(1.0, s, 0, True)]
        stake = min(a + 1, s, self.goal - s)
        win, lose = s + stake, s - stake
        return [
            (self.p_head, win, float(win == self.goal), win == self.goal),
            (1.0 - self.p_head, lose, 0.0, lose == 0),
        ]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = int(self.np_random.integers(1, self.goal))
        return self.s, {}

    def step(self, action):
        outcomes = self.P[self.s][int(action)]
        i = self.np_random.choice(len(outcomes), p=[o[0] for o in outcomes])
        _, self.s, reward, terminated = outcomes[i]
        return self.s, float(reward), bool(terminated), False, {}


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


LOCAL_ENVS = {"GamblersProblem-v0": GamblersProblemEnv, "GridWorld4x4-v0": GridWorld4x4Env}
BOOK_GAMMA = {"GamblersProblem-v0": 1.0, "GridWorld4x4-v0": 1.0}
TOY_TEXT_GAMMA = 0.99
TRY_IDS = (
    "GamblersProblem-v0, GridWorld4x4-v0, FrozenLake-v1, FrozenLake8x8-v1, CliffWalking-v1, "
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


def make_world(args: Args) -> gym.Env:
    """make_env, with the gambler's coin set by --p-head."""
    return GamblersProblemEnv(args.p_head) if args.env_id == "GamblersProblem-v0" else make_env(args.env_id)


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


def q_from_v(p: np.ndarray, r: np.ndarray, v: np.ndarray, gamma: float) -> np.ndarray:
    """One-step lookahead: q[s, a] = r(s,a) + gamma * sum_s' p(s'|s,a) v(s')   (equation 4.6 with v for v_pi)."""
    return r + gamma * (p @ v)


def value_iteration(p, r, gamma, theta, record_sweeps=()):
    """In-place value iteration (Section 4.4). Returns (V, sweeps, {sweep: V after it} for record_sweeps)."""
    v = np.zeros(len(r))
    history = {}
    sweeps = 0
    while True:
        sweeps += 1
        delta = 0.0
        for s in range(len(v)):
            new = np.max(r[s] + gamma * (p[s] @ v))  # already uses the states updated this sweep
            delta = max(delta, abs(new - v[s]))
            v[s] = new
        if sweeps in record_sweeps:
            history[sweeps] = v.copy()
        if delta < theta:
            return v, sweeps, history


def greedy_policy(q: np.ndarray, tie_tol: float) -> np.ndarray:
    """pi(s) = the first action whose value is within tie_tol of max_a q(s, a)."""
    return np.argmax(q >= q.max(axis=1, keepdims=True) - tie_tol, axis=1)


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
# Figure 4.3 (and a value/policy picture for the other environments)
# ---------------------------------------------------------------------------------------------------
def plot_gambler(path, history, v, n_sweeps, policy, p_head):
    """Top: value estimates after sweeps 1, 2, 3 and the last one (Figure 4.3); bottom: the final policy."""
    capital = np.arange(1, 100)
    fig, (ax_v, ax_pi) = plt.subplots(2, 1, figsize=(7, 8))
    for sweep, values in history.items():
        ax_v.plot(capital, values[1:100], lw=1, label=f"sweep {sweep}")
    ax_v.plot(capital, v[1:100], "k", lw=1.5, label=f"sweep {n_sweeps}: final value function")
    ax_v.set(xlabel="Capital", ylabel="Value estimates", title=f"Figure 4.3: gambler's problem, p_h = {p_head}")
    ax_v.legend()
    ax_pi.step(capital, policy[1:100] + 1, where="mid")  # action a stakes a + 1
    ax_pi.set(xlabel="Capital", ylabel="Final policy (stake)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_value_sweeps(path, env, env_id, history, v, n_sweeps, policy):
    """Value estimates over sweeps (as curves over the state index) and the extracted policy."""
    fig, (ax_v, ax_pi) = plt.subplots(1, 2, figsize=(12, 4.5))
    for sweep, values in history.items():
        ax_v.plot(values, lw=1, label=f"sweep {sweep}")
    ax_v.plot(v, "k", lw=1.5, label=f"sweep {n_sweeps}: final value function")
    ax_v.set(xlabel="state", ylabel="value estimates", title=f"{env_id}: value iteration")
    ax_v.legend()
    u = env.unwrapped
    name = type(u).__name__
    if name in ACTION_DELTAS:
        rows, cols = (u.nrow, u.ncol) if hasattr(u, "nrow") else tuple(u.shape)
        ax_pi.imshow(v.reshape(rows, cols), cmap="viridis", alpha=0.6)
        for s in range(rows * cols):
            d_row, d_col = ACTION_DELTAS[name][policy[s]]
            ax_pi.arrow(s % cols, s // cols, 0.32 * d_col, 0.32 * d_row, head_width=0.12, color="k")
        ax_pi.set_title("greedy policy w.r.t. V (arrows) over V (colour)")
    else:
        ax_pi.plot(policy, ".", ms=3)
        ax_pi.set(xlabel="state", ylabel="action", title="greedy policy w.r.t. V")
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
        fail(f"--theta {args.theta} must be > 0; use e.g. 1e-10")
    if not 0.0 < args.p_head < 1.0:
        fail(f"--p-head {args.p_head} is not a probability in (0, 1); use e.g. 0.4")
    if not args.tie_tol >= 0.0:
        fail(f"--tie-tol {args.tie_tol} must be >= 0; use e.g. 1e-9")
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:  # unknown, or deprecated such as Taxi-v3 (Gymnasium 1.4 has Taxi-v4)
            fail(f"--env-id {args.env_id} is unknown ({str(error).splitlines()[0]}); use one of: {TRY_IDS}")
    try:
        env = make_world(args)
    except Exception as error:  # a registered id whose optional dependency is missing, for instance
        fail(f"--env-id {args.env_id} could not be created ({type(error).__name__}); use one of: {TRY_IDS}")
    if not hasattr(env.unwrapped, "P"):
        fail(f"--env-id {args.env_id} has no transition model env.unwrapped.P, which dynamic programming needs; "
             f"use one of: {TRY_IDS}")
    if not (isinstance(env.observation_space, spaces.Discrete) and isinstance(env.action_space, spaces.Discrete)):
        fail(f"--env-id {args.env_id} needs Discrete observation and action spaces; use one of: {TRY_IDS}")
    gamma = BOOK_GAMMA.get(args.env_id, TOY_TEXT_GAMMA) if args.gamma is None else args.gamma
    if gamma == 1.0:  # values exist only if episodes can end from every state
        n_states, n_actions = env.observation_space.n, env.action_space.n
        p, _ = transition_arrays(env.unwrapped.P, n_states, n_actions)
        stuck = never_terminating(p, np.full((n_states, n_actions), 1.0 / n_actions))
        if stuck.any():
            fail(f"--gamma 1 needs episodes that can end, but in {args.env_id} no policy terminates from "
                 f"{int(stuck.sum())} of {n_states} states; use --gamma < 1 (e.g. 0.99)")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {args.plot}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    env = make_world(args)
    gamma = BOOK_GAMMA.get(args.env_id, TOY_TEXT_GAMMA) if args.gamma is None else args.gamma
    n_states, n_actions = env.observation_space.n, env.action_space.n
    p, r = transition_arrays(env.unwrapped.P, n_states, n_actions)
    env.reset(seed=args.seed)  # nothing below is random; seeded for the house rule
    env.action_space.seed(args.seed)
    start = time.perf_counter()
    v, sweeps, history = value_iteration(p, r, gamma, args.theta, record_sweeps=(1, 2, 3))
    q = q_from_v(p, r, v, gamma)
    policy = greedy_policy(q, args.tie_tol)
    seconds = time.perf_counter() - start
    residual = float(np.max(np.abs(q.max(axis=1) - v)))  # Bellman optimality residual, <= gamma * theta

    if isinstance(env, GamblersProblemEnv):
        plot_gambler(args.plot, history, v, sweeps, policy, args.p_head)
    else:
        plot_value_sweeps(args.plot, env, args.env_id, history, v, sweeps, policy)

    print(f"{args.env_id}: value iteration, gamma={gamma}, theta={args.theta}")
    print(f"  {sweeps} sweeps in {seconds:.2f} s; Bellman optimality residual {residual:.1e}")
    if isinstance(env, GamblersProblemEnv):
        print(f"  v*(25) = {v[25]:.4f}, v*(50) = {v[50]:.4f}, v*(75) = {v[75]:.4f}")
        print("  stakes (capital 1..99): " + " ".join(str(a + 1) for a in policy[1:100]))
    else:
        print(f"  V*: min {v.min():.4f}, max {v.max():.4f}; V*(state 0) = {v[0]:.4f}")
    print(f"  figure saved to {args.plot}")
    return {
        "env_id": args.env_id,
        "gamma": gamma,
        "theta": args.theta,
        "v": v,
        "policy": policy,
        "sweeps": sweeps,
        "residual": residual,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
