"""Iterative policy evaluation (Sutton & Barto, 2nd ed., 2018, Section 4.1; Example 4.1, Figure 4.1).

Book: Sutton and Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed., Chapter 4,
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/policy_evaluation.py                          # Figure 4.1, the 4x4 gridworld
    python algorithms/policy_evaluation.py --env-id FrozenLake-v1   # any Gymnasium env with env.unwrapped.P

The policy is the equiprobable random policy pi(a|s) = 1/|A|. One sweep applies the Bellman expectation
equation (4.5) to every state, as `evaluate_policy` writes it:

    V(s) <- sum_a pi(a|s) * sum_{s',r} p(s',r|s,a) * [r + gamma * V(s') * (1 - terminated)]

and the loop stops when the largest change of a sweep, Delta = max_s |v_new(s) - v_old(s)|, is below
theta. "Two-array" computes every v_new(s) from the old array (the synchronous v_{k+1} of Figure 4.1);
"in-place" overwrites V(s) at once, so later states in the same sweep already use new values (the
pseudocode box of Section 4.1), which usually needs fewer sweeps.

The model is Gymnasium's toy-text format, P[s][a] = [(prob, next_state, reward, terminated), ...]; the
book's gridworld below exposes the same P, so one routine serves FrozenLake, CliffWalking, Taxi and it.
A transition flagged `terminated` bootstraps nothing (the value of a terminal state is 0).

gamma = 1 is only meaningful when the policy ends every episode: if from some state the random policy
can never reach a terminating transition, check_args refuses gamma = 1 (exit 2) and asks for gamma < 1.
The time limits Gymnasium wraps around FrozenLake and Taxi are not part of P and are ignored here.

Tested: v_pi of the 4x4 gridworld equals Figure 4.1's numbers (tests/test_policy_evaluation.py).
Results: benchmark_results/policy_evaluation.md
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
    env_id: str = "GridWorld4x4-v0"
    """GridWorld4x4-v0 (Example 4.1) or a Gymnasium env with a transition model, e.g. FrozenLake-v1"""
    gamma: float | None = None
    """discount factor in (0, 1]; default: 1 for the book's gridworld (Example 4.1), 0.99 otherwise"""
    theta: float = 1e-8
    """stop a policy evaluation when the largest change of a sweep is below theta (Section 4.1)"""
    seed: int = 1
    """seed of the environment's reset and action space (the evaluation itself is deterministic)"""
    plot: str = "benchmark_results/classic/figure_4_1_policy_evaluation.png"
    """where to save the figure (PNG)"""


# ---------------------------------------------------------------------------------------------------
# Environment: the book's 4x4 gridworld (Example 4.1), with Gymnasium's toy-text transition model P.
# ---------------------------------------------------------------------------------------------------
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


LOCAL_ENVS = {"GridWorld4x4-v0": GridWorld4x4Env}
BOOK_GAMMA = {"GridWorld4x4-v0": 1.0}  # Example 4.1 is undiscounted
TOY_TEXT_GAMMA = 0.99
TRY_IDS = "GridWorld4x4-v0, FrozenLake-v1, FrozenLake8x8-v1, CliffWalking-v1, CliffWalkingSlippery-v1, Taxi-v4"

# Arrow directions (row, column) of each action, for drawing greedy policies on a grid.
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


def random_policy(n_states: int, n_actions: int) -> np.ndarray:
    """The equiprobable random policy as a matrix pi[s, a] = 1 / |A|."""
    return np.full((n_states, n_actions), 1.0 / n_actions)


def expected_update(p: np.ndarray, r: np.ndarray, policy: np.ndarray, gamma: float, v: np.ndarray) -> np.ndarray:
    """One synchronous sweep of (4.5): v_{k+1}(s) = sum_a pi(a|s) [r(s,a) + gamma sum_s' p(s'|s,a) v_k(s')]."""
    return np.sum(policy * (r + gamma * (p @ v)), axis=1)


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


def greedy_mask(q: np.ndarray, tol: float) -> np.ndarray:
    """mask[s, a] = True for every action within tol of the best q(s, .): all arrows of Figure 4.1."""
    return q >= q.max(axis=1, keepdims=True) - tol


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
# Figure 4.1
# ---------------------------------------------------------------------------------------------------
def grid_shape(env):
    """(rows, columns) of a grid world, or None when states are not cells of a grid (Taxi)."""
    u = env.unwrapped
    if type(u).__name__ not in ACTION_DELTAS:
        return None
    if hasattr(u, "nrow"):
        return (u.nrow, u.ncol)
    return tuple(u.shape)


def plot_figure_4_1(path, env, env_id, snapshots, q_final, absorbing, tol):
    """Left column v_k, right column the greedy policy w.r.t. v_k (all maximising actions), as Figure 4.1."""
    shape = grid_shape(env)
    if shape is None:  # no grid: draw each v_k as a curve over the state index instead
        fig, (ax_v, ax_pi) = plt.subplots(1, 2, figsize=(13, 4.5))
        for label, (v, _) in snapshots.items():
            ax_v.plot(v, lw=1, label=f"k = {label}")
        ax_v.set(xlabel="state", ylabel="v_k(s)", title=f"{env_id}: v_k for the random policy")
        ax_v.legend()
        ax_pi.plot(np.argmax(q_final, axis=1), ".", ms=3)
        ax_pi.set(xlabel="state", ylabel="action", title="greedy action w.r.t. v_pi (k = inf)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    rows, cols = shape
    deltas = ACTION_DELTAS[type(env.unwrapped).__name__]
    fig, axes = plt.subplots(len(snapshots), 2, figsize=(2 * (0.9 * cols + 0.6), len(snapshots) * (0.9 * rows + 0.5)))
    for (label, (v, q)), (ax_v, ax_pi) in zip(snapshots.items(), axes, strict=True):
        ax_v.imshow(v.reshape(rows, cols), cmap="viridis", alpha=0.5)
        for s in range(rows * cols):
            ax_v.text(s % cols, s // cols, f"{v[s]:.1f}", ha="center", va="center", fontsize=8)
        ax_v.set_ylabel(f"k = {label}", fontsize=11)
        ax_pi.imshow(absorbing.reshape(rows, cols), cmap="Greys", vmin=0, vmax=2.5)
        mask = greedy_mask(q, tol)
        for s in range(rows * cols):
            if absorbing[s]:
                continue
            for a in np.flatnonzero(mask[s]):
                d_row, d_col = deltas[a]
                ax_pi.arrow(s % cols, s // cols, 0.32 * d_col, 0.32 * d_row, head_width=0.12, color="k")
        for ax in (ax_v, ax_pi):
            ax.set_xticks(np.arange(cols) - 0.5, minor=True)
            ax.set_yticks(np.arange(rows) - 0.5, minor=True)
            ax.grid(which="minor", color="w" if ax is ax_v else "0.6", lw=1)
            ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
    axes[0, 0].set_title("v_k for the random policy")
    axes[0, 1].set_title("greedy policy w.r.t. v_k")
    fig.suptitle(f"Figure 4.1 ({env_id})", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    if gamma == 1.0:  # (4.5) has a finite solution only if the random policy ends every episode
        n_states, n_actions = env.observation_space.n, env.action_space.n
        p, _ = transition_arrays(env.unwrapped.P, n_states, n_actions)
        stuck = never_terminating(p, random_policy(n_states, n_actions))
        if stuck.any():
            fail(f"--gamma 1 needs a policy that ends every episode, but in {args.env_id} the random policy can "
                 f"never terminate from {int(stuck.sum())} of {n_states} states; use --gamma < 1 (e.g. 0.99)")
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
    p, r = transition_arrays(env.unwrapped.P, n_states, n_actions)
    policy = random_policy(n_states, n_actions)
    env.reset(seed=args.seed)  # nothing here is random; seeded for the house rule
    env.action_space.seed(args.seed)

    start = time.perf_counter()
    v_in_place, sweeps_in_place = evaluate_policy(p, r, policy, gamma, args.theta, in_place=True)
    v_two_array, sweeps_two_array = evaluate_policy(p, r, policy, gamma, args.theta, in_place=False)
    seconds = time.perf_counter() - start

    # Figure 4.1: the synchronous iterates v_k (k = 0, 1, 2, 3, 10) and the converged v_pi (k = inf).
    snapshots, v = {}, np.zeros(n_states)
    for k in range(11):
        if k in (0, 1, 2, 3, 10):
            snapshots[str(k)] = (v, q_from_v(p, r, v, gamma))
        v = expected_update(p, r, policy, gamma, v)
    snapshots["inf"] = (v_two_array, q_from_v(p, r, v_two_array, gamma))
    absorbing = p.sum(axis=(1, 2)) == 0  # terminal cells: every action terminates at once
    # Actions whose values agree to within 1e-6 (well above the ~theta error of v_pi) count as ties.
    plot_figure_4_1(args.plot, env, args.env_id, snapshots, snapshots["inf"][1], absorbing, tol=1e-6)

    max_diff = float(np.max(np.abs(v_in_place - v_two_array)))
    print(f"{args.env_id}: random policy, gamma={gamma}, theta={args.theta}")
    print(f"  in-place:  {sweeps_in_place} sweeps;  two-array: {sweeps_two_array} sweeps;  max |difference| {max_diff:.2e}")
    shape = grid_shape(env)
    if shape is not None and shape[0] * shape[1] <= 64:
        print("  v_pi:\n" + np.array2string(v_in_place.reshape(shape), precision=2, suppress_small=True, max_line_width=150))
    else:
        print(f"  v_pi: min {v_in_place.min():.3f}, mean {v_in_place.mean():.3f}, max {v_in_place.max():.3f}")
    print(f"  both evaluations took {seconds:.2f} s; figure saved to {args.plot}")
    return {
        "env_id": args.env_id,
        "gamma": gamma,
        "theta": args.theta,
        "v": v_in_place,
        "v_two_array": v_two_array,
        "sweeps_in_place": sweeps_in_place,
        "sweeps_two_array": sweeps_two_array,
        "max_abs_difference": max_diff,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
