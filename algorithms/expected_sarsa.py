"""Expected SARSA: TD control whose target averages over the next action, tabular, epsilon-greedy.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), Section 6.6, Figure 6.3
(interim and asymptotic performance of TD control methods on cliff walking as a function of alpha),
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/expected_sarsa.py                         # cliff walking: alpha sweep + learning curve
    python algorithms/expected_sarsa.py --env-id FrozenLake-v1 --alpha 0.1 --gamma 0.99 --num-episodes 5000

The update (Eq. 6.9, as in `expected_sarsa_episode` below):
    loop: choose A from S with the epsilon-greedy policy pi of Q; take A, observe R, S'
          target = R + gamma * sum_a pi(a|S') * Q(S', a) * (1 - terminated)
          Q(S, A) <- Q(S, A) + alpha * (target - Q(S, A));  S <- S'
    where pi(a|S') = epsilon / |A| + (1 - epsilon) / (number of greedy actions) if a is greedy in S'.
Averaging over A' removes the variance SARSA's sampled A' adds, so large step sizes (up to alpha = 1 on
the deterministic cliff) do not hurt. A terminal S' has value 0 (no bootstrap on termination); an episode
cut by a time limit (truncated) still bootstraps, because S' is not terminal.
The alpha sweep also runs SARSA (Section 6.4) and Q-learning (Section 6.5), the figure's comparisons.

This is the lighter version of Figure 6.3: the book's interim curve averages the first 100 episodes over
50,000 runs and its asymptotic curve 100,000 episodes over 10 runs; here the interim curve uses
--sweep-runs runs (default 20) and the asymptotic curve is replaced by a learning curve of Expected
SARSA at --alpha over --num-episodes episodes (its mean after --report-from).

Environments: CliffWalking-v1, the windy gridworld (written below as a gymnasium.Env, id
"WindyGridworld"), FrozenLake-v1 and Taxi-v4 (Gymnasium 1.4 registers Taxi-v4; Taxi-v3 is deprecated
there). Any Gymnasium id with Discrete observation and action spaces is accepted.
Gymnasium's CliffWalking-v1 has the book's semantics: no time limit, and stepping into the cliff gives
-100 and puts the agent back at the start without ending the episode.

Tested: cliff walking, online return at the book's -21; beats SARSA at alpha 1 (tests/test_expected_sarsa.py).
Results: benchmark_results/expected_sarsa.md
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
    env_id: str = "CliffWalking-v1"
    """environment: CliffWalking-v1, WindyGridworld, FrozenLake-v1, Taxi-v4 (any Discrete-space Gymnasium id)"""
    alpha: float = 0.5
    """step size alpha of the learning curve, in (0, 1] (Example 6.6's value)"""
    epsilon: float = 0.1
    """exploration rate of the epsilon-greedy policy, in [0, 1] (Figure 6.3 uses 0.1)"""
    gamma: float = 1.0
    """discount factor, in [0, 1] (cliff walking is undiscounted)"""
    num_episodes: int = 500
    """episodes per run of the learning curve at --alpha"""
    num_runs: int = 50
    """independent runs of the learning curve"""
    report_from: int = 100
    """first episode (0-based) of the window whose mean return is reported for the learning curve"""
    sweep_alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    """step sizes of the Figure 6.3 sweep"""
    sweep_episodes: int = 100
    """episodes per run in the sweep; their mean return is the 'interim performance' (the book: 100)"""
    sweep_runs: int = 20
    """runs per method and step size in the sweep (the book: 50,000)"""
    eval_episodes: int = 100
    """episodes of each run's final greedy policy used to measure its return (for stochastic environments)"""
    seed: int = 1
    """seed of the random number generators and of the environments"""
    plot: str = "benchmark_results/classic/expected_sarsa_figure_6_3_cliff_walking.png"
    """where the figure (interim performance against alpha, and the learning curve) is saved, as PNG"""


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


def expected_sarsa_target(
    reward: np.ndarray, q_next: np.ndarray, gamma: float, epsilon: float, terminated: np.ndarray
) -> np.ndarray:
    """R + gamma * sum_a pi(a|S') Q(S', a) (Eq. 6.9), pi epsilon-greedy in Q, with Q(terminal, .) = 0.

    q_next holds Q(S', .) with shape (..., A). Only `terminated` stops the bootstrap: truncation by a
    time limit is deliberately not an argument.
    """
    q_next = np.asarray(q_next, dtype=float)
    expected = (epsilon_greedy_probs(q_next, epsilon) * q_next).sum(axis=-1)
    return np.asarray(reward, dtype=float) + gamma * (1.0 - np.asarray(terminated, dtype=float)) * expected


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


def q_learning_target(
    reward: np.ndarray, q_next: np.ndarray, gamma: float, terminated: np.ndarray
) -> np.ndarray:
    """R + gamma * max_a Q(S', a) (Eq. 6.8), with Q(terminal, .) = 0.

    q_next holds Q(S', .) with shape (..., A). Only `terminated` stops the bootstrap: truncation by a
    time limit is deliberately not an argument.
    """
    q_max = np.asarray(q_next, dtype=float).max(axis=-1)
    return np.asarray(reward, dtype=float) + gamma * (1.0 - np.asarray(terminated, dtype=float)) * q_max


# ----------------------------------------------------------------------------------------------------
# The learners
# ----------------------------------------------------------------------------------------------------


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random action, otherwise a greedy one, ties broken at random."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def expected_sarsa_episode(
    env: gym.Env, q: np.ndarray, alpha: float, epsilon: float, gamma: float, rng: np.random.Generator
) -> tuple[float, int]:
    """One episode of Expected SARSA (Section 6.6), updating q in place; returns (return, length)."""
    state, _ = env.reset()
    episode_return, length = 0.0, 0
    while True:
        action = epsilon_greedy_action(q[state], epsilon, rng)
        next_state, reward, terminated, truncated, _ = env.step(action)
        target = expected_sarsa_target(reward, q[next_state], gamma, epsilon, terminated)
        q[state, action] += alpha * (target - q[state, action])
        state = next_state
        episode_return += reward
        length += 1
        if terminated or truncated:
            return episode_return, length


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


def q_learning_episode(
    env: gym.Env, q: np.ndarray, alpha: float, epsilon: float, gamma: float, rng: np.random.Generator
) -> tuple[float, int]:
    """One episode of Q-learning (Section 6.5 pseudocode), updating q in place; returns (return, length)."""
    state, _ = env.reset()
    episode_return, length = 0.0, 0
    while True:
        action = epsilon_greedy_action(q[state], epsilon, rng)
        next_state, reward, terminated, truncated, _ = env.step(action)
        target = q_learning_target(reward, q[next_state], gamma, terminated)
        q[state, action] += alpha * (target - q[state, action])
        state = next_state
        episode_return += reward
        length += 1
        if terminated or truncated:
            return episode_return, length


LEARNERS = {
    "Expected SARSA": expected_sarsa_episode,
    "SARSA": sarsa_episode,
    "Q-learning": q_learning_episode,
}


def run_learner(
    method: str,
    env_id: str,
    alpha: float,
    epsilon: float,
    gamma: float,
    num_episodes: int,
    num_runs: int,
    seed: int,
) -> dict:
    """Independent runs of LEARNERS[method] from Q = 0: per run and episode the return and length, and each
    run's final Q. Run r of every method sees the same seeds, so the methods differ only by their update."""
    episode_fn = LEARNERS[method]
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
            returns[run, episode], lengths[run, episode] = episode_fn(env, q, alpha, epsilon, gamma, rng)
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
             f"{type(observation_space).__name__}{observation_space.shape}; tabular Expected SARSA needs Discrete "
             f"observations: use one of: {known}")
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--env-id {args.env_id} has a non-Discrete action space "
             f"{type(action_space).__name__}{action_space.shape}; use one of: {known}")
    if not 0.0 < args.alpha <= 1.0:
        fail(f"--alpha {args.alpha} is out of range; use a step size in (0, 1], e.g. 0.5")
    if not args.sweep_alphas or not all(0.0 < alpha <= 1.0 for alpha in args.sweep_alphas):
        fail(f"--sweep-alphas {list(args.sweep_alphas)} must be step sizes in (0, 1], e.g. 0.1 0.5 1.0")
    if not 0.0 <= args.epsilon <= 1.0:
        fail(f"--epsilon {args.epsilon} is not a probability; use a value in [0, 1], e.g. 0.1")
    if not 0.0 <= args.gamma <= 1.0:
        fail(f"--gamma {args.gamma} is out of range; use a discount in [0, 1]")
    for name in ("num_episodes", "num_runs", "eval_episodes", "sweep_episodes", "sweep_runs"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} must be a positive integer")
    if args.report_from < 0:
        fail(f"--report-from {args.report_from} must be a non-negative episode index")
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
    # 1. Expected SARSA at --alpha: the online return after the first --report-from episodes.
    window_start = args.report_from if args.report_from < args.num_episodes else 0
    result = run_learner(
        "Expected SARSA",
        args.env_id,
        args.alpha,
        args.epsilon,
        args.gamma,
        args.num_episodes,
        args.num_runs,
        args.seed,
    )
    per_run = result["returns"][:, window_start:].mean(axis=1)
    env = make_env(args.env_id)
    paths = [greedy_path_length(env, q) for q in result["q"]]
    greedy = [evaluate_greedy(env, q, args.eval_episodes, args.seed + 1)[0] for q in result["q"]]
    env.close()

    # 2. Figure 6.3's interim performance: the mean return of the first --sweep-episodes episodes, per alpha.
    interim = {method: [] for method in LEARNERS}
    for method in LEARNERS:
        for alpha in args.sweep_alphas:
            sweep = run_learner(
                method,
                args.env_id,
                alpha,
                args.epsilon,
                args.gamma,
                args.sweep_episodes,
                args.sweep_runs,
                args.seed,
            )
            interim[method].append(float(sweep["returns"].mean()))

    fig, (ax_sweep, ax_curve) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"Expected SARSA": ("tab:red", "o"), "SARSA": ("tab:blue", "v"), "Q-learning": ("k", "s")}
    for method, values in interim.items():
        color, marker = styles[method]
        ax_sweep.plot(args.sweep_alphas, values, color=color, marker=marker, label=f"Interim {method}")
    ax_sweep.set_xlabel("alpha")
    ax_sweep.set_ylabel(f"Sum of rewards per episode\n(mean of the first {args.sweep_episodes} episodes)")
    ax_sweep.set_title(
        f"S&B Figure 6.3 (interim), {args.env_id}\n{args.sweep_runs} runs per point, epsilon={args.epsilon}"
    )
    ax_sweep.legend(loc="lower right")
    curve = result["returns"].mean(axis=0)
    window = min(10, len(curve))
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
    ax_curve.plot(np.arange(len(smooth)) + window, smooth, color="tab:red")
    ax_curve.axhline(
        per_run.mean(),
        color="gray",
        ls="--",
        lw=0.8,
        label=f"mean after episode {window_start}: {per_run.mean():.1f}",
    )
    if args.env_id == "CliffWalking-v1":
        ax_curve.set_ylim(-100, -15)  # the axis of Example 6.6's figure
    ax_curve.set_xlabel("Episodes")
    ax_curve.set_ylabel("Sum of rewards during episode")
    ax_curve.set_title(
        f"Expected SARSA, alpha={args.alpha}: mean of {args.num_runs} runs\nmoving average of {window} episodes"
    )
    ax_curve.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    plt.close(fig)

    summary = {
        "return_mean": float(per_run.mean()),
        "return_sd_over_runs": float(per_run.std(ddof=1)) if args.num_runs > 1 else 0.0,
        "window": (window_start, args.num_episodes),
        "greedy_path_lengths": paths,
        "greedy_return_mean": float(np.mean(greedy)),
        "sweep_alphas": list(args.sweep_alphas),
        "interim": interim,
        "wall_time_s": time.time() - start,
    }
    print(
        f"Expected SARSA on {args.env_id}, alpha={args.alpha}: {args.num_runs} runs x {args.num_episodes} episodes\n"
        f"  online return, episodes {window_start}-{args.num_episodes}: {summary['return_mean']:.2f} "
        f"(sd over runs {summary['return_sd_over_runs']:.2f}); greedy path lengths "
        f"{dict(sorted(Counter(paths).items()))} (200 = loops); greedy return {summary['greedy_return_mean']:.2f}\n"
        f"  interim performance (mean of {args.sweep_episodes} episodes, {args.sweep_runs} runs) per alpha "
        f"{list(args.sweep_alphas)}:"
    )
    for method, values in interim.items():
        print(f"    {method:15s}" + " ".join(f"{v:7.1f}" for v in values))
    print(f"  figure: {args.plot}  ({summary['wall_time_s']:.1f} s)")
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
