"""n-step TD prediction on the 19-state random walk, and n-step SARSA on the windy gridworld.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), §7.1 (n-step TD prediction,
Example 7.1 / Figure 7.2) and §7.2 (n-step SARSA; the windy gridworld is Example 6.5),
http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/n_step_td.py                           # Figure 7.2 (100 runs) + n-step SARSA
    python algorithms/n_step_td.py --num-runs 10 --sarsa-runs 2 --plot /tmp/nstep.png

Update rules, as in the code:
    n-step return (7.1):  G_{tau:tau+n} = sum_{i=tau+1}^{min(tau+n, T)} gamma^(i-tau-1) R_i
                                          + [tau+n < T] gamma^n V(S_{tau+n})
    n-step TD (7.2):      V(S_tau) <- V(S_tau) + alpha * (G_{tau:tau+n} - V(S_tau)),  tau = t - n + 1
    n-step SARSA (7.4):   Q(S_tau, A_tau) <- Q(S_tau, A_tau) + alpha * (G_{tau:tau+n} - Q(S_tau, A_tau)),
                          with gamma^n Q(S_{tau+n}, A_{tau+n}) as the bootstrap term of G
    Figure 7.2 measure:   RMS error over the 19 states, after each of the first 10 episodes, averaged
                          over those 10 episodes and over the runs.

For prediction the walk does not depend on the values, so each run's episodes are generated once with the
environment and replayed to every n and alpha (common random numbers); the values are a numpy array of shape
(step sizes, runs, states) updated for all of them at once. Replaying a recorded episode for tau = 0..T-1 is
the book's loop exactly: its update for tau happens at time t = tau + n - 1 and reads the values as they are
then, which are the values after the updates for tau' < tau.
n-step SARSA chooses its actions from Q, so it is written as the book's online loop over one environment.

Tested: Figure 7.2's n = 4 beats n = 1 and 512; n-step SARSA learns the gridworld (tests/test_n_step_td.py).
Results: benchmark_results/n_step_td.md
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro
from gymnasium import spaces


@dataclass
class Args:
    seed: int = 1
    """seed of the random walks and of the SARSA runs"""
    num_runs: int = 100
    """independent runs averaged in Figure 7.2 (book: 100)"""
    num_episodes: int = 10
    """episodes per run whose RMS errors are averaged (book: the first 10)"""
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    """values of n drawn in Figure 7.2"""
    alphas: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04) + tuple(round(0.05 * i, 2) for i in range(1, 21))
    """step sizes swept on the x-axis of Figure 7.2 (0.01 .. 0.04, then 0.05 .. 1.0 by 0.05)"""
    sarsa_ns: tuple[int, ...] = (1, 2, 4)
    """values of n for n-step SARSA on the windy gridworld"""
    sarsa_alpha: float = 0.5
    """SARSA step size (Example 6.5: 0.5)"""
    sarsa_epsilon: float = 0.1
    """epsilon of the epsilon-greedy behaviour policy (Example 6.5: 0.1)"""
    sarsa_steps: int = 8000
    """time steps per SARSA run (Example 6.5's figure: 8000)"""
    sarsa_runs: int = 10
    """independent SARSA runs averaged per n"""
    plot: str = "benchmark_results/classic/n_step_td_random_walk.png"
    """where to save the figure (PNG)"""


# ----------------------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------------------
class RandomWalk(gym.Env):
    """The random walk of Examples 6.2 and 7.1: states 1..num_states in a row between two terminals, 0 (left)
    and num_states + 1 (right).

    Every episode starts in the centre state. Action 0 moves left, action 1 moves right; the book's random
    walk is the equiprobable policy over these two actions. Stepping onto a terminal ends the episode with
    `left_reward` or `right_reward`; every other reward is 0. Example 6.2: 5 states (A..E), rewards 0 and +1;
    Example 7.1 (and Chapter 12): 19 states, rewards -1 and +1.
    """

    def __init__(self, num_states: int, left_reward: float, right_reward: float):
        self.num_states = num_states
        self.left_reward, self.right_reward = left_reward, right_reward
        self.observation_space = spaces.Discrete(num_states + 2)
        self.action_space = spaces.Discrete(2)
        self.state = (num_states + 1) // 2

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = (self.num_states + 1) // 2
        return self.state, {}

    def step(self, action):
        self.state += 1 if action == 1 else -1
        terminated = self.state in (0, self.num_states + 1)
        reward = 0.0
        if self.state == 0:
            reward = self.left_reward
        elif self.state == self.num_states + 1:
            reward = self.right_reward
        return self.state, reward, terminated, False, {}


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


def true_values(num_states: int, left_reward: float, right_reward: float) -> np.ndarray:
    """v_pi of the non-terminal states 1..num_states under the equiprobable policy: state i exits on the right
    with probability i / (num_states + 1) (gambler's ruin). Example 6.2: 1/6, 2/6, ..., 5/6; the 19-state
    walk: v(i) = (i - 10) / 10."""
    p_right = np.arange(1, num_states + 1) / (num_states + 1)
    return left_reward + (right_reward - left_reward) * p_right


def generate_episodes(env: RandomWalk, num_runs: int, num_episodes: int, seed: int):
    """Roll out the equiprobable random policy num_runs x num_episodes times.

    Returns a list over episode index k of (states (runs, T_k + 1), rewards (runs, T_k), lengths (runs,)),
    where T_k is the longest of the runs' k-th episodes: a shorter episode is padded with its terminal
    state and reward 0, and `lengths` says where each run's episode really ended.
    """
    env.action_space.seed(seed)
    episodes = []
    for k in range(num_episodes):
        walks = []
        for run in range(num_runs):
            state, _ = env.reset(seed=seed if (k == 0 and run == 0) else None)
            states, rewards, done = [state], [], False
            while not done:
                state, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                states.append(state)
                rewards.append(reward)
                done = terminated or truncated
            walks.append((states, rewards))
        lengths = np.array([len(r) for _, r in walks])
        t_max = lengths.max()
        states = np.array([s + [s[-1]] * (t_max - len(r)) for s, r in walks])
        rewards = np.array([r + [0.0] * (t_max - len(r)) for _, r in walks])
        episodes.append((states, rewards, lengths))
    return episodes


# ----------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------
def n_step_return(rewards, lengths, tau: int, n: int, gamma: float, bootstrap) -> np.ndarray:
    """G_{tau:tau+n} (eq. 7.1), one per run.

    rewards (R, T_max) with rewards[:, i - 1] = R_i and zeros after each run's end T = lengths (R,);
    bootstrap (..., R): the value of S_{tau+n} (V for prediction, Q(S, A) for SARSA), used only where
    tau + n < T. Past T the zero padding makes the sum stop at R_T, the episode-end truncation of (7.1).
    """
    window = np.asarray(rewards, dtype=float)[:, tau:tau + n]  # R_{tau+1} .. R_{tau+n}
    discounted = window @ (gamma ** np.arange(window.shape[1]))
    return discounted + np.where(tau + n < np.asarray(lengths), gamma**n * np.asarray(bootstrap), 0.0)


def n_step_td_episode(V, states, rewards, lengths, n: int, alpha, gamma: float = 1.0) -> np.ndarray:
    """n-step TD prediction (§7.1) over one recorded episode per run.

    V: (A, R, S) values for A step sizes and R runs; states (R, T_max + 1) (padded with the terminal);
    rewards (R, T_max); lengths (R,); alpha (A,). Returns the updated copy of V.
    """
    V = np.array(V, dtype=float)
    runs = np.arange(V.shape[1])
    step = np.asarray(alpha, dtype=float)[:, None]
    t_max = rewards.shape[1]
    for tau in range(t_max):
        s = states[:, tau]
        s_boot = states[:, min(tau + n, t_max)]  # S_{tau+n}; only read where tau + n < T
        G = n_step_return(rewards, lengths, tau, n, gamma, V[:, runs, s_boot])
        V[:, runs, s] += step * (G - V[:, runs, s]) * (tau < lengths)
    return V


def rms_error(V, v_true) -> np.ndarray:
    """Root-mean-square error over the non-terminal states 1..n (V's first and last entries are the
    terminals), one number per value table: the measure of Example 6.2 and Figure 7.2."""
    return np.sqrt(np.mean((np.asarray(V)[..., 1:-1] - v_true) ** 2, axis=-1))


def figure_7_2_errors(episodes, ns, alphas, v_true) -> np.ndarray:
    """Per-run error of Figure 7.2: (len(ns), len(alphas), runs), each the RMS error after each episode
    averaged over the episodes; the values start at 0."""
    num_runs, num_states = episodes[0][0].shape[0], len(v_true)
    errors = np.zeros((len(ns), len(alphas), num_runs))
    for i, n in enumerate(ns):
        V = np.zeros((len(alphas), num_runs, num_states + 2))
        for states, rewards, lengths in episodes:
            V = n_step_td_episode(V, states, rewards, lengths, n, alphas)
            errors[i] += rms_error(V, v_true)
        errors[i] /= len(episodes)
    return errors


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random action, otherwise a greedy one, ties broken at random."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def n_step_sarsa(env: gym.Env, n: int, alpha: float, epsilon: float, num_steps: int, seed: int,
                 gamma: float = 1.0):
    """On-policy n-step SARSA (§7.2, the book's boxed algorithm) for num_steps environment steps.

    Returns Q (states, actions) and, per time step, how many episodes had been completed (the y-axis of
    Example 6.5's figure).
    """
    rng = np.random.default_rng(seed)
    Q = np.zeros((env.observation_space.n, env.action_space.n))
    episodes_done = np.zeros(num_steps, dtype=int)
    completed, step_count, first = 0, 0, True
    while step_count < num_steps:
        state, _ = env.reset(seed=seed if first else None)
        first = False
        S, A, R = [state], [epsilon_greedy_action(Q[state], epsilon, rng)], []
        T, t = np.iinfo(np.int64).max, 0
        while True:
            if t < T:
                state, reward, terminated, truncated, _ = env.step(A[t])
                S.append(state)
                R.append(reward)
                episodes_done[step_count] = completed + int(terminated)
                step_count += 1
                if terminated:
                    T = t + 1
                else:
                    A.append(epsilon_greedy_action(Q[state], epsilon, rng))
            tau = t - n + 1
            if tau >= 0:
                bootstrap = Q[S[tau + n], A[tau + n]] if tau + n < T else 0.0
                # only R_{tau+1}..R_{tau+n} enter G: pass that window (as time 0) rather than the whole episode
                G = n_step_return(np.array([R[tau:tau + n]]), np.array([T - tau]), 0, n, gamma,
                                  np.array([bootstrap]))[0]
                Q[S[tau], A[tau]] += alpha * (G - Q[S[tau], A[tau]])
            if tau == T - 1:
                break
            if step_count >= num_steps and T > t + 1:
                break  # budget spent mid-episode: its last n - 1 updates would need steps never taken
            t += 1
        completed += int(terminated)
    return Q, episodes_done


def late_episode_length(episodes_done: np.ndarray, window: int) -> float:
    """Average length of the episodes finished in the last `window` time steps (the inverse slope of
    Example 6.5's figure)."""
    finished = episodes_done[-1] - episodes_done[-window - 1]
    return window / finished if finished > 0 else float("inf")


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    """Reject bad input with one line on stderr and exit status 2, before any work."""
    for name, value in (("--num-runs", args.num_runs), ("--num-episodes", args.num_episodes),
                        ("--sarsa-steps", args.sarsa_steps), ("--sarsa-runs", args.sarsa_runs)):
        if value < 1:
            fail(f"{name} must be a positive integer, got {value}")
    for name, ns in (("--ns", args.ns), ("--sarsa-ns", args.sarsa_ns)):
        if len(ns) == 0 or any(n < 1 for n in ns):
            fail(f"{name} must be integers n >= 1, got {list(ns)}")
    if len(args.alphas) == 0 or any(not 0 < a <= 1 for a in args.alphas):
        fail(f"--alphas must be step sizes in (0, 1], got {list(args.alphas)}")
    if not 0 < args.sarsa_alpha <= 1:
        fail(f"--sarsa-alpha must be in (0, 1], got {args.sarsa_alpha}")
    if not 0 <= args.sarsa_epsilon <= 1:
        fail(f"--sarsa-epsilon must be a probability in [0, 1], got {args.sarsa_epsilon}")
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

    # Figure 7.2
    num_states = 19
    v_true = true_values(num_states, left_reward=-1.0, right_reward=1.0)
    walk = RandomWalk(num_states, left_reward=-1.0, right_reward=1.0)  # Example 7.1
    episodes = generate_episodes(walk, args.num_runs, args.num_episodes, args.seed)
    alphas = np.asarray(args.alphas, dtype=float)
    errors = figure_7_2_errors(episodes, args.ns, alphas, v_true)
    mean = errors.mean(axis=2)
    best = mean.argmin(axis=1)

    # n-step SARSA on the windy gridworld
    env = WindyGridworldEnv()
    window = max(1, args.sarsa_steps // 4)  # episode lengths are measured over the last quarter of the steps
    sarsa = {}
    for n in args.sarsa_ns:
        curves, late = [], []
        for run in range(args.sarsa_runs):
            _, done = n_step_sarsa(env, n, args.sarsa_alpha, args.sarsa_epsilon, args.sarsa_steps,
                                   seed=args.seed + 1000 * run)
            curves.append(done)
            late.append(late_episode_length(done, window))
        sarsa[n] = (np.mean(curves, axis=0), late)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, n in enumerate(args.ns):
        left.plot(alphas, mean[i], label=f"n={n}")
    left.set(title=f"n-step TD, 19-state random walk ({args.num_runs} runs)", xlabel="alpha",
             ylabel=f"Average RMS error over 19 states and first {args.num_episodes} episodes",
             ylim=(0.25, 0.55))
    left.legend(fontsize=8, ncol=2)
    for n, (curve, _) in sarsa.items():
        right.plot(np.arange(1, args.sarsa_steps + 1), curve, label=f"n={n}")
    right.set(title=f"n-step SARSA, windy gridworld (alpha={args.sarsa_alpha}, eps={args.sarsa_epsilon}, "
                    f"{args.sarsa_runs} runs)", xlabel="Time steps", ylabel="Episodes")
    right.legend(fontsize=8)
    fig.suptitle("Sutton & Barto Figure 7.2 (left) and n-step SARSA on Example 6.5 (right)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)

    result = {
        "best_alpha": {n: float(alphas[best[i]]) for i, n in enumerate(args.ns)},
        "best_error": {n: float(mean[i, best[i]]) for i, n in enumerate(args.ns)},
        "best_error_se": {n: float(errors[i, best[i]].std(ddof=1) / np.sqrt(args.num_runs))
                          if args.num_runs > 1 else float("nan") for i, n in enumerate(args.ns)},
        "sarsa_episodes": {n: float(curve[-1]) for n, (curve, _) in sarsa.items()},
        "sarsa_late_episode_length": {n: float(np.mean(g)) for n, (_, g) in sarsa.items()},
    }
    print(f"n-step TD on the 19-state random walk, {args.num_runs} runs x first {args.num_episodes} episodes")
    for n in args.ns:
        print(f"  n={n:<4} best alpha {result['best_alpha'][n]:.2f}  RMS error {result['best_error'][n]:.4f}"
              f" +- {result['best_error_se'][n]:.4f}")
    print(f"n-step SARSA on the windy gridworld, {args.sarsa_runs} runs x {args.sarsa_steps} steps")
    for n in args.sarsa_ns:
        print(f"  n={n:<2} episodes completed {result['sarsa_episodes'][n]:.1f}, "
              f"epsilon-greedy episode length over the last {window} steps "
              f"{result['sarsa_late_episode_length'][n]:.1f} (shortest path: 15)")
    print(f"  figure: {args.plot}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
