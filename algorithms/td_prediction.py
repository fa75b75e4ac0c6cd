"""TD(0) and constant-alpha Monte Carlo prediction, side by side, on the 5-state random walk.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), §6.1-6.2, Example 6.2,
http://incompleteideas.net/book/the-book-2nd.html. The batch-updating comparison (§6.3, Figure 6.2) is not
included.

Run:
    python algorithms/td_prediction.py                       # Example 6.2, 100 runs x 100 episodes
    python algorithms/td_prediction.py --num-runs 20 --plot /tmp/rw.png

Update rules, as in the code (values V over states 0..6, the terminals 0 and 6 stay 0):
    TD(0), after every step (6.2):          V(S_t) <- V(S_t) + alpha * (R_{t+1} + gamma * V(S_{t+1}) - V(S_t))
    constant-alpha MC, after the episode (6.1): G_t = R_{t+1} + gamma * G_{t+1},  G_T = 0
                                            V(S_t) <- V(S_t) + alpha * (G_t - V(S_t)),  t = 0..T-1
    RMS error (Example 6.2, right):         sqrt(mean over A..E of (V(s) - v_true(s))^2), averaged over runs

The walk does not depend on the values being learned (this is prediction of a fixed policy), so every run's
episodes are generated once with the environment and replayed to every method and step size: all curves see
the same random walks (common random numbers), which makes the TD-vs-MC comparison paired per run.
The runs are vectorised with numpy: the value tables have shape (step sizes, runs, states).

Tested: TD(0) at alpha 0.1 ends below every MC alpha by > 3 paired SE, 100 runs (tests/test_td_prediction.py).
Results: benchmark_results/td_prediction.md
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
    """seed of the random walks (the policy's coin flips)"""
    num_runs: int = 100
    """independent runs averaged in the RMS-error curves (Example 6.2: 100)"""
    num_episodes: int = 100
    """episodes per run (Example 6.2: 100)"""
    td_alphas: tuple[float, ...] = (0.05, 0.1, 0.15)
    """TD(0) step sizes of Example 6.2 (right)"""
    mc_alphas: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04)
    """constant-alpha MC step sizes of Example 6.2 (right)"""
    example_alpha: float = 0.1
    """TD(0) step size of the single run drawn in Example 6.2 (left); must be one of td_alphas"""
    plot: str = "benchmark_results/classic/random_walk_td_vs_mc.png"
    """where to save the figure (PNG)"""


# ----------------------------------------------------------------------------------------------------------
# Environment: Example 6.2's random walk
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
# Pure functions: one episode of each method, for every (step size, run) at once
# ----------------------------------------------------------------------------------------------------------
def td0_episode(V, states, rewards, lengths, alpha, gamma: float = 1.0) -> np.ndarray:
    """Tabular TD(0) (§6.1, eq. 6.2) over one episode per run.

    V: (A, R, S) values for A step sizes and R runs; states (R, T+1); rewards (R, T) with rewards[:, t] =
    R_{t+1}, zero after each run's end; lengths (R,); alpha (A,). Returns the updated copy of V.
    """
    V = np.array(V, dtype=float)
    runs = np.arange(V.shape[1])
    step = np.asarray(alpha, dtype=float)[:, None]
    for t in range(rewards.shape[1]):
        s, s_next = states[:, t], states[:, t + 1]
        live = t < lengths  # runs whose episode has not ended yet
        td_error = rewards[:, t] + gamma * V[:, runs, s_next] - V[:, runs, s]
        V[:, runs, s] += step * td_error * live  # online: the next step already sees this change
    return V


def episode_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t for t = 0..T-1 from rewards R_1..R_T, by the backward recursion G <- gamma*G + R_{t+1}."""
    returns = np.zeros(len(rewards))
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = gamma * g + rewards[t]
        returns[t] = g
    return returns


def constant_alpha_mc_episode(V, states, rewards, lengths, alpha, gamma: float = 1.0) -> np.ndarray:
    """Every-visit constant-alpha MC (§6.1, eq. 6.1): wait for the episode's end, then move each visited
    V(S_t) towards the actual return G_t, in the order t = 0..T-1. Shapes as in td0_episode."""
    V = np.array(V, dtype=float)
    runs = np.arange(V.shape[1])
    step = np.asarray(alpha, dtype=float)[:, None]
    G = np.stack([episode_returns(r, gamma) for r in rewards])  # (R, T); the zero padding gives G_t = 0 after T
    for t in range(rewards.shape[1]):
        s = states[:, t]
        V[:, runs, s] += step * (G[:, t] - V[:, runs, s]) * (t < lengths)
    return V


def rms_error(V, v_true) -> np.ndarray:
    """Root-mean-square error over the non-terminal states 1..n (V's first and last entries are the
    terminals), one number per value table: the measure of Example 6.2 and Figure 7.2."""
    return np.sqrt(np.mean((np.asarray(V)[..., 1:-1] - v_true) ** 2, axis=-1))


def run_method(method, episodes, alphas, num_states: int, v_true, init: float = 0.5):
    """Run `method` (td0_episode or constant_alpha_mc_episode) for every step size and run.

    Returns the RMS error (A, R, episodes + 1), column k measured after k episodes, and the value tables
    (A, R, episodes + 1, S) after each episode.
    """
    num_runs = episodes[0][0].shape[0]
    V = np.full((len(alphas), num_runs, num_states + 2), init)
    V[..., 0] = V[..., -1] = 0.0  # terminal values are 0 by definition
    history = [V]
    for states, rewards, lengths in episodes:
        V = method(V, states, rewards, lengths, np.asarray(alphas))
        history.append(V)
    history = np.stack(history, axis=2)
    return rms_error(history, v_true), history


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    """Reject bad input with one line on stderr and exit status 2, before any work."""
    if args.num_runs < 1:
        fail(f"--num-runs must be a positive integer, got {args.num_runs}")
    if args.num_episodes < 1:
        fail(f"--num-episodes must be a positive integer, got {args.num_episodes}")
    for name, alphas in (("--td-alphas", args.td_alphas), ("--mc-alphas", args.mc_alphas)):
        if len(alphas) == 0 or any(not 0 < a <= 1 for a in alphas):
            fail(f"{name} must be step sizes in (0, 1], got {list(alphas)}")
    if args.example_alpha not in args.td_alphas:
        fail(f"--example-alpha must be one of --td-alphas {list(args.td_alphas)}, got {args.example_alpha}")
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

    num_states = 5  # Example 6.2: states A..E, reward +1 only on the right exit
    env = RandomWalk(num_states, left_reward=0.0, right_reward=1.0)
    v_true = true_values(num_states, left_reward=0.0, right_reward=1.0)
    episodes = generate_episodes(env, args.num_runs, args.num_episodes, args.seed)

    td_err, td_values = run_method(td0_episode, episodes, args.td_alphas, num_states, v_true)
    mc_err, _ = run_method(constant_alpha_mc_episode, episodes, args.mc_alphas, num_states, v_true)

    # The comparison asked for: TD(0) at alpha = 0.1 against the best MC step size after the last episode,
    # paired per run (both saw the same walks), standard error = sd of the per-run differences / sqrt(R).
    td_index = list(args.td_alphas).index(args.example_alpha)
    td_final = td_err[td_index, :, -1]
    mc_final_means = mc_err[:, :, -1].mean(axis=1)
    best_mc = int(np.argmin(mc_final_means))
    diff = mc_err[best_mc, :, -1] - td_final
    diff_se = float(diff.std(ddof=1) / np.sqrt(args.num_runs)) if args.num_runs > 1 else float("nan")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list("ABCDE")
    for k in (0, 1, 10, 100):
        if k <= args.num_episodes:
            left.plot(names, td_values[td_index, 0, k, 1:-1], marker="o", label=f"{k}")
    left.plot(names, v_true, "k--", marker="o", label="true values")
    left.set(title=f"TD(0) estimates, one run, alpha={args.example_alpha}", xlabel="State",
             ylabel="Estimated value")
    left.legend(title="episodes", fontsize=8)
    episodes_axis = np.arange(args.num_episodes + 1)
    for i, a in enumerate(args.td_alphas):
        right.plot(episodes_axis, td_err[i].mean(axis=0), label=f"TD alpha={a}")
    for i, a in enumerate(args.mc_alphas):
        right.plot(episodes_axis, mc_err[i].mean(axis=0), "--", label=f"MC alpha={a}")
    right.set(title=f"Empirical RMS error, averaged over states and {args.num_runs} runs",
              xlabel="Walks / Episodes", ylabel="RMS error")
    right.legend(fontsize=8)
    fig.suptitle("Random walk (Sutton & Barto, Example 6.2)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)

    result = {
        "initial_rms": float(td_err[0, 0, 0]),
        "td_final_rms": {a: float(td_err[i, :, -1].mean()) for i, a in enumerate(args.td_alphas)},
        "mc_final_rms": {a: float(mc_final_means[i]) for i, a in enumerate(args.mc_alphas)},
        "best_mc_alpha": float(args.mc_alphas[best_mc]),
        "mc_minus_td_final": float(diff.mean()),
        "mc_minus_td_final_se": diff_se,
    }
    print(f"Random walk, {args.num_runs} runs x {args.num_episodes} episodes; initial RMS error "
          f"{result['initial_rms']:.4f}")
    for a, e in result["td_final_rms"].items():
        print(f"  TD(0) alpha={a:<5} RMS error after the last episode {e:.4f}")
    for a, e in result["mc_final_rms"].items():
        print(f"  MC    alpha={a:<5} RMS error after the last episode {e:.4f}")
    print(f"  best MC (alpha={result['best_mc_alpha']}) minus TD(alpha={args.example_alpha}): "
          f"{result['mc_minus_td_final']:.4f} +- {diff_se:.4f} (paired SE)")
    print(f"  figure: {args.plot}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
