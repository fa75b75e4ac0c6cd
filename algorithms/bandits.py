"""Multi-armed bandits on the 10-armed testbed: Sutton & Barto, Reinforcement Learning (2nd ed., 2018), Chapter 2.

Book: Sutton and Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed., Chapter 2,
http://incompleteideas.net/book/the-book-2nd.html

Methods (all written below, all vectorised over the independent runs):
- epsilon-greedy with sample averages (S&B §2.2-2.4) and with a constant step size alpha (§2.5);
- optimistic initial values (§2.6): greedy with Q1 = 5, alpha = 0.1;
- upper-confidence-bound action selection, UCB (§2.7);
- gradient bandit with softmax preferences, with and without the average-reward baseline (§2.8);
- Thompson sampling with a Gaussian posterior over each arm's mean (known unit reward variance).
  Thompson sampling is NOT in the book's figures (S&B mention it only in passing in §2.10); the
  extra figure `--figure thompson` is ours, not a reproduction.

Run:
    python algorithms/bandits.py                    # Figure 2.2 (epsilon = 0, 0.01, 0.1), 2000 runs x 1000 steps
    python algorithms/bandits.py --figure 2.4       # also 2.3, 2.5, 2.6 (parameter study) and thompson
    python algorithms/bandits.py --help

The testbed (§2.3): k = 10 arms, true values q*(a) ~ N(0, 1) drawn once per run (N(4, 1) for Figure 2.5),
reward R ~ N(q*(A), 1). `TenArmedTestbed` is that problem as a gymnasium.Env; each run's q* is drawn by
the Env's own `reset`. For speed the experiment then keeps the 2000 runs' q* as one (runs, k) array and
draws all runs' rewards in one numpy call with the same rule as `TenArmedTestbed.step`; the tests check
that an agent stepped through the Env's API earns the same average reward as the vectorised experiment.

Update rules, as they appear in the code (Q, N, H, mean, precision are (runs, k) arrays; row = one run):
    incremental update (eq. 2.3/2.5):   Q[A] <- Q[A] + step_size * (R - Q[A]);  step_size = 1/N[A] or alpha
    epsilon-greedy (§2.2):              A = uniform random arm with prob. epsilon, else argmax_a Q[a]
                                        (ties broken uniformly at random)
    UCB (eq. 2.10):                     A = an untried arm (N[a] = 0) if any, else argmax_a Q[a] + c*sqrt(ln t / N[a])
    gradient bandit (eq. 2.11-2.12):    pi = softmax(H);  A ~ pi
                                        H <- H + alpha * (R - baseline) * (onehot(A) - pi)
                                        baseline = mean of R_1..R_{t-1} (with baseline_1 = R_1), or 0 without
    Thompson sampling (Gaussian, reward variance 1, prior N(prior_mean, prior_var)):
                                        theta[a] ~ N(mean[a], 1/precision[a]);  A = argmax_a theta[a]
                                        precision[A] <- precision[A] + 1
                                        mean[A] <- (old_precision * mean[A] + R) / precision[A]

Tested: reproduces Figures 2.2 and 2.4's average reward over the last 100 steps (tests/test_bandits.py).
Results: benchmark_results/bandits.md
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import matplotlib
import numpy as np
import tyro
from gymnasium import spaces

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

FIGURES = ("2.2", "2.3", "2.4", "2.5", "2.6", "thompson")


@dataclass
class Args:
    figure: str = "2.2"
    """which figure to reproduce: 2.2, 2.3, 2.4, 2.5, 2.6 (parameter study) or thompson (not in the book)"""
    num_runs: int = 2000
    """independent runs (testbeds) averaged over (the book: 2000)"""
    num_steps: int = 1000
    """time steps per run (the book: 1000)"""
    num_arms: int = 10
    """arms k of the testbed (the book: 10)"""
    summary_window: int = 100
    """the printed/returned summary averages the last this-many steps of each run (capped at --num-steps)"""
    seed: int = 1
    """seed of the random number generator (testbeds, agents and rewards)"""
    plot: str = "benchmark_results/classic/bandits_figure_{figure}.png"
    """where to save the figure; {figure} is replaced by the figure name with '.' as '_' (e.g. 2_2)"""


# ----------------------------------------------------------------------------------------------------
# Environment: the 10-armed testbed (S&B §2.3)
# ----------------------------------------------------------------------------------------------------
class TenArmedTestbed(gym.Env):
    """One k-armed bandit problem: q*(a) ~ N(mean, 1) drawn at reset, reward ~ N(q*(a), 1).

    A bandit has a single state, so the observation is always 0 and an episode never terminates:
    the experiment decides how many steps to take. `reset(options={"q_star": ...})` fixes the true
    values instead of drawing them (used by the tests).
    """

    metadata = {"render_modes": []}

    def __init__(self, num_arms: int = 10, mean: float = 0.0):
        self.num_arms = num_arms
        self.mean = mean
        self.action_space = spaces.Discrete(num_arms)
        self.observation_space = spaces.Discrete(1)
        self.q_star = np.zeros(num_arms)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and "q_star" in options:
            self.q_star = np.asarray(options["q_star"], dtype=float).copy()
        else:
            self.q_star = self.np_random.normal(self.mean, 1.0, size=self.num_arms)
        return 0, {"q_star": self.q_star.copy(), "optimal_action": int(np.argmax(self.q_star))}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        reward = float(self.np_random.normal(self.q_star[action], 1.0))
        info = {"optimal": bool(self.q_star[action] == self.q_star.max())}
        return 0, reward, False, False, info


def make_testbeds(num_runs: int, num_arms: int, mean: float, rng: np.random.Generator) -> np.ndarray:
    """Draw every run's q* with the Env's own reset (one seed per run); returns a (runs, k) array."""
    env = TenArmedTestbed(num_arms, mean)
    seeds = rng.integers(0, 2**31 - 1, size=num_runs)
    return np.stack([env.reset(seed=int(s))[1]["q_star"] for s in seeds])


# ----------------------------------------------------------------------------------------------------
# Pure functions: the math of the chapter (arrays in, arrays out; row = one run, column = one arm)
# ----------------------------------------------------------------------------------------------------
def incremental_update(estimate: np.ndarray, target: np.ndarray, step_size) -> np.ndarray:
    """NewEstimate = OldEstimate + StepSize * (Target - OldEstimate)   (eq. 2.3 with 1/n, eq. 2.5 with alpha)."""
    return estimate + step_size * (target - estimate)


def argmax_random_ties(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row-wise argmax, ties broken uniformly at random.

    The book's greedy agent needs this: at the start all Q are 0, and np.argmax would always pick arm 0.
    A uniform random number on each maximal entry (zero elsewhere) makes every tied arm equally likely.
    """
    is_max = values == values.max(axis=1, keepdims=True)
    return np.argmax(rng.random(values.shape) * is_max, axis=1)


def epsilon_greedy_actions(q: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """With probability epsilon a uniformly random arm (possibly the greedy one), else greedy (§2.2)."""
    runs, k = q.shape
    explore = rng.random(runs) < epsilon
    return np.where(explore, rng.integers(0, k, size=runs), argmax_random_ties(q, rng))


def ucb_actions(q: np.ndarray, n: np.ndarray, t: int, c: float, rng: np.random.Generator) -> np.ndarray:
    """A_t = argmax_a [Q_t(a) + c * sqrt(ln t / N_t(a))]   (eq. 2.10), t = 1, 2, ...

    An arm with N_t(a) = 0 counts as maximizing (§2.7), so untried arms are taken first.
    """
    tried = n > 0
    bonus = c * np.sqrt(np.log(t) / np.where(tried, n, 1))
    return argmax_random_ties(np.where(tried, q + bonus, np.inf), rng)


def softmax(h: np.ndarray) -> np.ndarray:
    """pi(a) = exp(H(a)) / sum_b exp(H(b))   (eq. 2.11); the row maximum is subtracted to avoid overflow."""
    z = np.exp(h - h.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def gradient_bandit_update(
    h: np.ndarray, actions: np.ndarray, rewards: np.ndarray, baseline: np.ndarray, alpha: float
) -> np.ndarray:
    """H_{t+1}(a) = H_t(a) + alpha * (R_t - baseline) * (1{a = A_t} - pi_t(a))   (eq. 2.12).

    pi_t is the softmax of the preferences *before* the update, the policy that chose A_t.
    """
    one_hot = np.eye(h.shape[1])[actions]
    return h + alpha * (rewards - baseline)[:, None] * (one_hot - softmax(h))


def gaussian_posterior_update(
    mean: np.ndarray, precision: np.ndarray, actions: np.ndarray, rewards: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate update of the chosen arm's Gaussian posterior, reward noise variance known to be 1.

    With posterior N(m, 1/p) and a reward r ~ N(q, 1): new p = p + 1, new m = (p * m + r) / (p + 1).
    Precisions add and the mean is the precision-weighted average of the old mean and the reward.
    """
    rows = np.arange(len(actions))
    mean, precision = mean.copy(), precision.copy()
    old_p = precision[rows, actions]
    precision[rows, actions] = old_p + 1.0
    mean[rows, actions] = (old_p * mean[rows, actions] + rewards) / (old_p + 1.0)
    return mean, precision


def thompson_actions(mean: np.ndarray, precision: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one sample of each arm's mean from its posterior and act greedily on the samples."""
    theta = mean + rng.standard_normal(mean.shape) / np.sqrt(precision)
    return np.argmax(theta, axis=1)


# ----------------------------------------------------------------------------------------------------
# Agents: each keeps its estimates for all runs at once; act(t, rng) -> (runs,) arms; update(A, R)
# ----------------------------------------------------------------------------------------------------
class EpsilonGreedy:
    """Simple bandit algorithm (§2.4 box); step_size=None means sample averages (1/N), else constant alpha."""

    def __init__(
        self, runs: int, k: int, epsilon: float, step_size: float | None = None, initial: float = 0.0
    ):
        self.epsilon, self.step_size = epsilon, step_size
        self.q = np.full((runs, k), float(initial))  # Q1 = initial: 5 is the optimistic value of §2.6
        self.n = np.zeros((runs, k))

    def act(self, t: int, rng: np.random.Generator) -> np.ndarray:
        return epsilon_greedy_actions(self.q, self.epsilon, rng)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        rows = np.arange(len(actions))
        self.n[rows, actions] += 1
        step = 1.0 / self.n[rows, actions] if self.step_size is None else self.step_size
        self.q[rows, actions] = incremental_update(self.q[rows, actions], rewards, step)


class UCB:
    """UCB action selection (§2.7) with sample-average estimates."""

    def __init__(self, runs: int, k: int, c: float):
        self.c = c
        self.q = np.zeros((runs, k))
        self.n = np.zeros((runs, k))

    def act(self, t: int, rng: np.random.Generator) -> np.ndarray:
        return ucb_actions(self.q, self.n, t, self.c, rng)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        rows = np.arange(len(actions))
        self.n[rows, actions] += 1
        self.q[rows, actions] = incremental_update(
            self.q[rows, actions], rewards, 1.0 / self.n[rows, actions]
        )


class GradientBandit:
    """Gradient bandit (§2.8): preferences H (initially 0), softmax policy, optional average-reward baseline."""

    def __init__(self, runs: int, k: int, alpha: float, baseline: bool = True):
        self.alpha, self.use_baseline = alpha, baseline
        self.h = np.zeros((runs, k))
        self.average_reward = np.zeros(runs)  # mean of the rewards seen so far (incremental, eq. 2.3)
        self.t = 0

    def act(self, t: int, rng: np.random.Generator) -> np.ndarray:
        # Inverse-CDF sampling from each row's softmax; min() covers a last cumulative sum that rounds below 1.
        cdf = np.cumsum(softmax(self.h), axis=1)
        return np.minimum((rng.random((len(cdf), 1)) > cdf).sum(axis=1), self.h.shape[1] - 1)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.t += 1
        if not self.use_baseline:
            baseline = np.zeros_like(rewards)
        elif self.t == 1:
            baseline = rewards  # the book's R̄_1 = R_1: the first step leaves H unchanged
        else:
            baseline = self.average_reward  # rewards up to but not including R_t (§2.8)
        self.h = gradient_bandit_update(self.h, actions, rewards, baseline, self.alpha)
        self.average_reward = incremental_update(self.average_reward, rewards, 1.0 / self.t)


class ThompsonSampling:
    """Gaussian Thompson sampling (not in the book's figures). The prior N(0, 1) is the testbed's own q* law."""

    def __init__(self, runs: int, k: int, prior_mean: float = 0.0, prior_var: float = 1.0):
        self.mean = np.full((runs, k), float(prior_mean))
        self.precision = np.full((runs, k), 1.0 / prior_var)

    def act(self, t: int, rng: np.random.Generator) -> np.ndarray:
        return thompson_actions(self.mean, self.precision, rng)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.mean, self.precision = gaussian_posterior_update(self.mean, self.precision, actions, rewards)


def run_agent(
    agent, q_star: np.ndarray, num_steps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Run one agent on all runs' testbeds; returns rewards and optimal-action flags, both (runs, steps).

    The reward rule is TenArmedTestbed.step's, R ~ N(q*(A), 1), drawn for every run in one call.
    """
    runs = q_star.shape[0]
    rows = np.arange(runs)
    optimal_value = q_star.max(axis=1)
    rewards = np.empty((runs, num_steps))
    optimal = np.empty((runs, num_steps), dtype=bool)
    for t in range(1, num_steps + 1):
        actions = agent.act(t, rng)
        r = rng.normal(q_star[rows, actions], 1.0)
        agent.update(actions, r)
        rewards[:, t - 1] = r
        optimal[:, t - 1] = q_star[rows, actions] == optimal_value
    return rewards, optimal


# ----------------------------------------------------------------------------------------------------
# The experiments: which methods each figure compares
# ----------------------------------------------------------------------------------------------------
def figure_methods(figure: str) -> tuple[float, dict]:
    """Testbed mean and {label: agent factory(runs, k)} for one of the book's figures (not 2.6)."""
    if figure == "2.2":
        return 0.0, {
            f"ε = {e} (greedy)" if e == 0 else f"ε = {e}": (lambda r, k, e=e: EpsilonGreedy(r, k, e))
            for e in (0.0, 0.01, 0.1)
        }
    if figure == "2.3":
        return 0.0, {
            "optimistic, greedy: Q1 = 5, ε = 0, α = 0.1": lambda r, k: EpsilonGreedy(
                r, k, 0.0, 0.1, initial=5.0
            ),
            "realistic, ε-greedy: Q1 = 0, ε = 0.1, α = 0.1": lambda r, k: EpsilonGreedy(r, k, 0.1, 0.1),
        }
    if figure == "2.4":
        return 0.0, {
            "UCB c = 2": lambda r, k: UCB(r, k, 2.0),
            "ε-greedy ε = 0.1": lambda r, k: EpsilonGreedy(r, k, 0.1),
        }
    if figure == "2.5":  # q*(a) ~ N(+4, 1): the baseline matters because all rewards are far from 0
        return 4.0, {
            f"α = {a}, {'with' if b else 'without'} baseline": (
                lambda r, k, a=a, b=b: GradientBandit(r, k, a, b)
            )
            for b in (True, False)
            for a in (0.1, 0.4)
        }
    if figure == "thompson":
        return 0.0, {
            "ε-greedy ε = 0.1": lambda r, k: EpsilonGreedy(r, k, 0.1),
            "UCB c = 2": lambda r, k: UCB(r, k, 2.0),
            "Thompson sampling, prior N(0, 1)": lambda r, k: ThompsonSampling(r, k),
        }
    raise ValueError(figure)


# Figure 2.6: each method's parameter swept over powers of 2 (the book's x-axis runs from 1/128 to 4).
PARAMETER_STUDY = {
    "ε-greedy (ε)": ([2.0**p for p in range(-7, -1)], lambda r, k, x: EpsilonGreedy(r, k, x)),
    "gradient bandit (α)": ([2.0**p for p in range(-5, 2)], lambda r, k, x: GradientBandit(r, k, x)),
    "UCB (c)": ([2.0**p for p in range(-4, 3)], lambda r, k, x: UCB(r, k, x)),
    "greedy with optimistic init., α = 0.1 (Q1)": (
        [2.0**p for p in range(-2, 3)],
        lambda r, k, x: EpsilonGreedy(r, k, 0.0, 0.1, initial=x),
    ),
}


def summarize(rewards: np.ndarray, optimal: np.ndarray, window: int) -> dict:
    """Per-run average over the last `window` steps, then its mean and standard error over the runs."""
    last = rewards[:, -window:].mean(axis=1)
    return {
        "reward_last": float(last.mean()),
        "reward_last_se": float(last.std(ddof=1) / np.sqrt(len(last))) if len(last) > 1 else float("nan"),
        "optimal_last": float(optimal[:, -window:].mean()),
        "optimal_last_se": (
            float(optimal[:, -window:].mean(axis=1).std(ddof=1) / np.sqrt(len(last)))
            if len(last) > 1
            else float("nan")
        ),
        "reward_all": float(rewards.mean()),
        "reward_all_se": (
            float(rewards.mean(axis=1).std(ddof=1) / np.sqrt(len(last))) if len(last) > 1 else float("nan")
        ),
    }


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def figure_path(args: Args) -> str:
    """--plot with {figure} replaced by the figure's name ('.' as '_')."""
    return args.plot.replace("{figure}", args.figure.replace(".", "_"))


def check_args(args: Args) -> None:
    """Reject bad input with one line on stderr and exit status 2, before any work."""
    if args.figure not in FIGURES:
        fail(f"--figure {args.figure} is unknown; use one of: {', '.join(FIGURES)}")
    for name in ("num_runs", "num_steps"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.num_arms < 2:
        fail(f"--num-arms must be at least 2 (a bandit needs a choice), got {args.num_arms}")
    if args.summary_window <= 0:
        fail(f"--summary-window must be a positive integer, got {args.summary_window}")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(figure_path(args))), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {args.plot}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    start = time.time()
    rng = np.random.default_rng(args.seed)
    plot_path = Path(figure_path(args))
    steps = np.arange(1, args.num_steps + 1)
    window = min(args.summary_window, args.num_steps)
    results: dict[str, dict] = {}

    if args.figure == "2.6":
        # Parameter study: every method on the same testbeds, scored by the average reward over all steps.
        q_star = make_testbeds(args.num_runs, args.num_arms, 0.0, rng)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, (values, factory) in PARAMETER_STUDY.items():
            scores = []
            for x in values:
                rewards, optimal = run_agent(
                    factory(args.num_runs, args.num_arms, x), q_star, args.num_steps, rng
                )
                results[f"{label} = {x:g}"] = summarize(rewards, optimal, window)
                scores.append(results[f"{label} = {x:g}"]["reward_all"])
            ax.plot(values, scores, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([2.0**p for p in range(-7, 3)])
        ax.set_xticklabels(["1/128", "1/64", "1/32", "1/16", "1/8", "1/4", "1/2", "1", "2", "4"])
        ax.set_xlabel("ε   α   c   Q1")
        ax.set_ylabel(f"Average reward over first {args.num_steps} steps")
        ax.set_title(f"Figure 2.6: parameter study ({args.num_runs} runs)")
        ax.legend(fontsize=8, loc="lower left")
    else:
        mean, methods = figure_methods(args.figure)
        q_star = make_testbeds(args.num_runs, args.num_arms, mean, rng)
        curves = {}
        for label, factory in methods.items():
            rewards, optimal = run_agent(factory(args.num_runs, args.num_arms), q_star, args.num_steps, rng)
            results[label] = summarize(rewards, optimal, window)
            curves[label] = (rewards.mean(axis=0), 100 * optimal.mean(axis=0))
        # The book shows average reward for 2.4, % optimal action for 2.3 and 2.5, both for 2.2.
        panels = {"2.3": ["optimal"], "2.4": ["reward"], "2.5": ["optimal"]}.get(
            args.figure, ["reward", "optimal"]
        )
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.5 * len(panels)), squeeze=False)
        for ax, panel in zip(axes[:, 0], panels, strict=True):
            for label, (reward_curve, optimal_curve) in curves.items():
                ax.plot(
                    steps, reward_curve if panel == "reward" else optimal_curve, label=label, linewidth=0.9
                )
            ax.set_ylabel("Average reward" if panel == "reward" else "% Optimal action")
            ax.set_xlabel("Steps")
            ax.legend(fontsize=8, loc="lower right")
        title = (
            "Thompson sampling vs ε-greedy and UCB (not in the book)"
            if args.figure == "thompson"
            else (f"Figure {args.figure}")
        )
        testbed = f"{args.num_arms}-armed testbed, q* ~ N({mean:g}, 1)"
        axes[0, 0].set_title(f"{title}: {testbed}, {args.num_runs} runs")
    fig.tight_layout()
    fig.savefig(plot_path, dpi=110)
    plt.close(fig)

    seconds = time.time() - start
    print(
        f"Figure {args.figure}: {args.num_runs} runs x {args.num_steps} steps, {args.num_arms} arms, seed {args.seed}"
    )
    w = window
    print(f"{'method':<50} {f'reward, last {w}':>18} {f'% optimal, last {w}':>20} {'reward, all steps':>18}")
    for label, s in results.items():
        print(
            f"{label:<50} {s['reward_last']:>9.3f} ± {s['reward_last_se']:.3f}"
            f" {100 * s['optimal_last']:>19.1f}% {s['reward_all']:>18.3f}"
        )
    print(f"saved {plot_path} ({seconds:.1f} s)")
    return {"figure": args.figure, "results": results, "plot": str(plot_path), "seconds": seconds}


if __name__ == "__main__":
    main(tyro.cli(Args))
