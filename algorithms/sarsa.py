"""SARSA: on-policy TD control, tabular, with an epsilon-greedy policy.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), Section 6.4, Example 6.5
(the windy gridworld and its figure of episodes completed against time steps),
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/sarsa.py                                  # windy gridworld, the Example 6.5 figure
    python algorithms/sarsa.py --env-id CliffWalking-v1 --num-episodes 500 --num-runs 50

The update (the book's pseudocode, as in `sarsa_episode` below):
    choose A from S with the epsilon-greedy policy of Q
    loop: take A, observe R, S'; choose A' from S' epsilon-greedily
          target = R + gamma * Q(S', A') * (1 - terminated)
          Q(S, A) <- Q(S, A) + alpha * (target - Q(S, A));  S <- S', A <- A'
A terminal S' has value 0, so there is no bootstrap on termination; an episode cut by a time limit
(truncated, e.g. FrozenLake's 100 steps) still bootstraps from Q(S', A'), because S' is not terminal.

One run's greedy path can loop: with a constant alpha = 0.5 a run's Q keeps fluctuating by about one
step's reward, so nearly tied actions swap places. The mean of the runs' Q tables estimates E[Q] without
that noise; the figure's inset draws its greedy path.

Environments: the windy gridworld (written below as a gymnasium.Env, id "WindyGridworld"),
CliffWalking-v1, FrozenLake-v1 and Taxi-v4 (Gymnasium 1.4 registers Taxi-v4; Taxi-v3 is deprecated
there). Any Gymnasium id with Discrete observation and action spaces is accepted.
Gymnasium's CliffWalking-v1 has the book's semantics: no time limit, and stepping into the cliff gives
-100 and puts the agent back at the start without ending the episode.

Tested: windy gridworld, the run-averaged Q's greedy path is the optimal 15 steps (tests/test_sarsa.py).
Results: benchmark_results/sarsa.md
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro


@dataclass
class Args:
    env_id: str = "WindyGridworld"
    """environment: WindyGridworld, CliffWalking-v1, FrozenLake-v1, Taxi-v4 (any Discrete-space Gymnasium id)"""
    alpha: float = 0.5
    """step size alpha, in (0, 1] (Example 6.5 uses 0.5)"""
    epsilon: float = 0.1
    """exploration rate of the epsilon-greedy policy, in [0, 1] (Example 6.5 uses 0.1)"""
    gamma: float = 1.0
    """discount factor, in [0, 1] (the book's gridworlds are undiscounted)"""
    num_episodes: int = 170
    """episodes per run (Example 6.5's figure shows 170 episodes)"""
    num_runs: int = 10
    """independent runs (the book's figure shows one; the others show how much runs differ)"""
    eval_episodes: int = 100
    """episodes of the final greedy policy used to measure its return (for stochastic environments)"""
    seed: int = 1
    """seed of the random number generators and of the environments"""
    plot: str = "benchmark_results/classic/sarsa_example_6_5_windy_gridworld.png"
    """where the figure (episodes completed against time steps) is saved, as PNG"""


# ----------------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------------

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3  # the same action numbering as Gymnasium's CliffWalking
MOVES = {UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1)}


class WindyGridworldEnv(gym.Env):
    """Example 6.5: a 7x10 grid with an upward wind whose strength depends on the column.

    State = row * 10 + col. The wind of the column the agent leaves pushes it up that many rows
    (clipped at the edges). Reward -1 on every step until the goal, which ends the episode.
    The book has no time limit; an epsilon-greedy agent always reaches the goal eventually.
    """

    metadata = {"render_modes": []}
    shape = (7, 10)
    wind = (0, 0, 0, 1, 1, 1, 2, 2, 1, 0)
    start = (3, 0)
    goal = (3, 7)

    def __init__(self):
        self.observation_space = gym.spaces.Discrete(self.shape[0] * self.shape[1])
        self.action_space = gym.spaces.Discrete(4)
        self.position = self.start

    def _obs(self) -> int:
        return self.position[0] * self.shape[1] + self.position[1]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.start
        return self._obs(), {}

    def step(self, action):
        row, col = self.position
        d_row, d_col = MOVES[int(action)]
        row = min(max(row + d_row - self.wind[col], 0), self.shape[0] - 1)
        col = min(max(col + d_col, 0), self.shape[1] - 1)
        self.position = (row, col)
        terminated = self.position == self.goal
        return self._obs(), -1.0, terminated, False, {}


LOCAL_ENVS = {"WindyGridworld": WindyGridworldEnv}
BOOK_ENV_IDS = ("WindyGridworld", "CliffWalking-v1", "FrozenLake-v1", "Taxi-v4")


def make_env(env_id: str) -> gym.Env:
    """One environment: a book environment written in this file (LOCAL_ENVS), or a registered Gymnasium
    environment (with its time limit)."""
    if env_id in LOCAL_ENVS:
        return LOCAL_ENVS[env_id]()
    return gym.make(env_id)


# ----------------------------------------------------------------------------------------------------
# Pure functions (the math the tests check)
# ----------------------------------------------------------------------------------------------------


def epsilon_greedy_probs(q: np.ndarray, epsilon: float) -> np.ndarray:
    """pi(a|s) of the epsilon-greedy policy for action values q of shape (..., A) (Section 5.4).

    Every action gets epsilon / A; the remaining 1 - epsilon is shared equally by the greedy actions,
    so tied maxima split it (this matches breaking ties at random in `epsilon_greedy_action`).
    """
    q = np.asarray(q, dtype=float)
    greedy = q == q.max(axis=-1, keepdims=True)
    return epsilon / q.shape[-1] + (1.0 - epsilon) * greedy / greedy.sum(axis=-1, keepdims=True)


def sarsa_target(
    reward: np.ndarray, q_next: np.ndarray, next_action: np.ndarray, gamma: float, terminated: np.ndarray
) -> np.ndarray:
    """R + gamma * Q(S', A') (Eq. 6.7), with Q(terminal, .) = 0.

    q_next holds Q(S', .) with shape (..., A); next_action is A', the action the policy chose in S'.
    Only `terminated` stops the bootstrap: truncation by a time limit is deliberately not an argument.
    """
    q_next = np.asarray(q_next, dtype=float)
    next_action = np.asarray(next_action, dtype=int)
    q_next_action = np.take_along_axis(q_next, next_action[..., None], axis=-1)[..., 0]
    return (
        np.asarray(reward, dtype=float) + gamma * (1.0 - np.asarray(terminated, dtype=float)) * q_next_action
    )


# ----------------------------------------------------------------------------------------------------
# The learner
# ----------------------------------------------------------------------------------------------------


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random action, otherwise a greedy one, ties broken at random."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def sarsa_episode(
    env: gym.Env, q: np.ndarray, alpha: float, epsilon: float, gamma: float, rng: np.random.Generator
) -> tuple[float, int]:
    """One episode of SARSA (Section 6.4 pseudocode), updating q in place; returns (return, length)."""
    state, _ = env.reset()
    action = epsilon_greedy_action(q[state], epsilon, rng)
    episode_return, length = 0.0, 0
    while True:
        next_state, reward, terminated, truncated, _ = env.step(action)
        next_action = epsilon_greedy_action(q[next_state], epsilon, rng)
        target = sarsa_target(reward, q[next_state], next_action, gamma, terminated)
        q[state, action] += alpha * (target - q[state, action])
        state, action = next_state, next_action
        episode_return += reward
        length += 1
        if terminated or truncated:
            return episode_return, length


def run_sarsa(
    env_id: str, alpha: float, epsilon: float, gamma: float, num_episodes: int, num_runs: int, seed: int
) -> dict:
    """Independent SARSA runs from Q = 0; per run and episode the return and length, and each run's final Q."""
    returns = np.zeros((num_runs, num_episodes))
    lengths = np.zeros((num_runs, num_episodes), dtype=int)
    q_tables = []
    for run in range(num_runs):
        rng = np.random.default_rng([seed, run])
        env = make_env(env_id)
        env.reset(seed=seed * 10_000 + run)  # later resets continue this environment's seeded generator
        env.action_space.seed(seed * 10_000 + run)
        q = np.zeros((env.observation_space.n, env.action_space.n))
        for episode in range(num_episodes):
            returns[run, episode], lengths[run, episode] = sarsa_episode(env, q, alpha, epsilon, gamma, rng)
        q_tables.append(q)
        env.close()
    return {"returns": returns, "lengths": lengths, "q": np.stack(q_tables)}


def greedy_path_states(env: gym.Env, q: np.ndarray, max_steps: int = 200) -> list[int]:
    """The states visited by the greedy policy of q (ties to the lowest action) from reset, start included.

    Meant for deterministic worlds (windy gridworld, cliff walking); stops after max_steps when the
    greedy policy does not reach a terminal state (it loops).
    """
    state, _ = env.reset()
    states = [int(state)]
    for _ in range(max_steps):
        state, _, terminated, truncated, _ = env.step(int(np.argmax(q[state])))
        states.append(int(state))
        if terminated or truncated:
            break
    return states


def greedy_path_length(env: gym.Env, q: np.ndarray, max_steps: int = 200) -> int:
    """Steps of the greedy path of q; max_steps means the greedy policy never finishes (it loops)."""
    return len(greedy_path_states(env, q, max_steps)) - 1


def evaluate_greedy(
    env: gym.Env, q: np.ndarray, episodes: int, seed: int, max_steps: int = 500
) -> tuple[float, float]:
    """Mean return of the greedy policy of q, and the fraction of its episodes with a positive return.

    The fraction is FrozenLake's success rate (reward 1 only at the goal). An episode is cut after
    max_steps because a greedy policy can loop forever in a world without a time limit.
    """
    episode_returns = []
    for episode in range(episodes):
        state, _ = env.reset(seed=seed if episode == 0 else None)
        total = 0.0
        for _ in range(max_steps):
            state, reward, terminated, truncated, _ = env.step(int(np.argmax(q[state])))
            total += reward
            if terminated or truncated:
                break
        episode_returns.append(total)
    episode_returns = np.array(episode_returns)
    return float(episode_returns.mean()), float((episode_returns > 0).mean())


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
    known = ", ".join(BOOK_ENV_IDS)
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:  # unknown, or deprecated such as Taxi-v3 (Gymnasium 1.4 has Taxi-v4)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            fail(f"--env-id {args.env_id} is unknown ({reason}); use one of: {known}")
    try:
        env = make_env(args.env_id)
    except Exception as error:  # a registered id whose dependencies are missing, for instance
        fail(f"--env-id {args.env_id} could not be made ({type(error).__name__}); use one of: {known}")
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(observation_space, gym.spaces.Discrete):
        fail(f"--env-id {args.env_id} has a continuous (non-Discrete) observation space "
             f"{type(observation_space).__name__}{observation_space.shape}; tabular SARSA needs Discrete "
             f"observations: use one of: {known}")
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--env-id {args.env_id} has a non-Discrete action space "
             f"{type(action_space).__name__}{action_space.shape}; use one of: {known}")
    if not 0.0 < args.alpha <= 1.0:
        fail(f"--alpha {args.alpha} is out of range; use a step size in (0, 1], e.g. 0.5")
    if not 0.0 <= args.epsilon <= 1.0:
        fail(f"--epsilon {args.epsilon} is not a probability; use a value in [0, 1], e.g. 0.1")
    if not 0.0 <= args.gamma <= 1.0:
        fail(f"--gamma {args.gamma} is out of range; use a discount in [0, 1]")
    for name in ("num_episodes", "num_runs", "eval_episodes"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} must be a positive integer")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {args.plot}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.time()
    result = run_sarsa(
        args.env_id, args.alpha, args.epsilon, args.gamma, args.num_episodes, args.num_runs, args.seed
    )
    env = make_env(args.env_id)
    path_lengths = [greedy_path_length(env, q) for q in result["q"]]
    # With a constant alpha = 0.5 one run's Q still fluctuates, so its greedy policy can loop between two
    # states whose values are nearly equal; the mean of the runs' Q tables estimates E[Q] without that noise.
    mean_q_path = greedy_path_states(env, result["q"].mean(axis=0))
    greedy_returns = [evaluate_greedy(env, q, args.eval_episodes, args.seed + 1)[0] for q in result["q"]]
    env.close()
    most_common_path, runs_with_it = Counter(path_lengths).most_common(1)[0]
    cumulative_steps = np.cumsum(result["lengths"], axis=1)

    # Example 6.5's figure: episodes completed (y) against time steps (x); its slope is 1 / episode length.
    fig, ax = plt.subplots(figsize=(6, 4.5))
    episodes = np.arange(1, args.num_episodes + 1)
    for run in range(1, args.num_runs):
        ax.plot(cumulative_steps[run], episodes, color="tab:red", alpha=0.2, lw=0.8)
    ax.plot(cumulative_steps[0], episodes, color="tab:red", lw=1.8, label=f"SARSA, run 1 of {args.num_runs}")
    ax.set_xlabel("Time steps")
    ax.set_ylabel("Episodes")
    ax.set_title(
        f"SARSA on {args.env_id} (S&B Example 6.5)\n"
        f"alpha={args.alpha}, epsilon={args.epsilon}, gamma={args.gamma}; faint lines: other runs"
    )
    ax.legend(loc="lower right")
    if args.env_id == "WindyGridworld":  # the book's inset: the greedy trajectory on the grid
        inset = ax.inset_axes([0.06, 0.42, 0.46, 0.38])
        rows, cols = WindyGridworldEnv.shape
        path = [divmod(int(s), cols) for s in mean_q_path]
        inset.plot([c for _, c in path], [r for r, _ in path], "-o", color="tab:red", ms=2.5, lw=1.2)
        inset.plot(*WindyGridworldEnv.start[::-1], "ks", ms=5)
        inset.plot(*WindyGridworldEnv.goal[::-1], "k*", ms=8)
        inset.set_xticks(range(cols), [str(w) for w in WindyGridworldEnv.wind], fontsize=6)
        inset.set_yticks([])
        inset.set_xlim(-0.5, cols - 0.5)
        inset.set_ylim(rows - 0.5, -0.5)
        inset.grid(True, lw=0.3)
        inset.set_title(f"greedy path of mean Q: {len(path) - 1} steps (wind below)", fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    plt.close(fig)

    last = max(1, args.num_episodes // 10)
    summary = {
        "time_steps_mean": float(cumulative_steps[:, -1].mean()),
        "episode_length_last_mean": float(result["lengths"][:, -last:].mean()),
        "return_last_mean": float(result["returns"][:, -last:].mean()),
        "greedy_path_lengths": path_lengths,
        "greedy_path_length_mean_q": len(mean_q_path) - 1,
        "greedy_path_length_most_common": int(most_common_path),
        "greedy_path_length_most_common_runs": int(runs_with_it),
        "greedy_return_mean": float(np.mean(greedy_returns)),
        "wall_time_s": time.time() - start,
    }
    print(
        f"SARSA on {args.env_id}: {args.num_runs} runs x {args.num_episodes} episodes, "
        f"{summary['time_steps_mean']:.0f} time steps per run on average\n"
        f"  last {last} episodes: length {summary['episode_length_last_mean']:.1f}, "
        f"return {summary['return_last_mean']:.2f}\n"
        f"  greedy path length of each run's Q, length: runs (200 = loops): {dict(sorted(Counter(path_lengths).items()))}; "
        f"of the run-averaged Q: {len(mean_q_path) - 1}\n  greedy return over {args.eval_episodes} episodes "
        f"{summary['greedy_return_mean']:.2f}\n"
        f"  figure: {args.plot}  ({summary['wall_time_s']:.1f} s)"
    )
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
