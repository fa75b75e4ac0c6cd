"""TD(lambda) with accumulating and replacing traces, the offline lambda-return algorithm and true online
TD(lambda), with linear function approximation in its tabular (one-hot) case, on the 19-state random walk.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), §12.1 (offline lambda-return,
Figure 12.3), §12.2 (TD(lambda), Figure 12.6), §12.5 (true online TD(lambda), Figure 12.8); replacing
traces are the binary-feature variant the book describes in §12.5 (eq. 12.12's footnote) and §12.13.
http://incompleteideas.net/book/the-book-2nd.html
True online TD(lambda): van Seijen, Mahmood, Pilarski, Machado & Sutton (2016), JMLR 17(145),
https://jmlr.org/papers/v17/15-599.html

Run:
    python algorithms/td_lambda.py                            # four panels, 100 runs each
    python algorithms/td_lambda.py --num-runs 10 --plot /tmp/tdl.png

Update rules, as in the code (x = x(S_t), x' = x(S_{t+1}), x(terminal) = 0, v = w.x, v' = w.x'):
    delta = R_{t+1} + gamma * v' - v
    accumulating TD(lambda) (12.5-12.7):  z <- gamma*lambda*z + x;                  w <- w + alpha*delta*z
    replacing TD(lambda) (binary x):      z <- gamma*lambda*z*(1 - x) + x;          w <- w + alpha*delta*z
    true online TD(lambda) (12.11-12.12): z <- gamma*lambda*z + (1 - alpha*gamma*lambda*(z.x)) * x
                                          w <- w + alpha*(delta + v - v_old)*z - alpha*(v - v_old)*x
                                          v_old <- v'
    offline lambda-return (12.4), after the episode, with the episode's starting weights in the returns:
                                          G^lambda_t = R_{t+1} + gamma*((1 - lambda)*v(S_{t+1}) + lambda*G^lambda_{t+1})
                                          w <- w + alpha*(G^lambda_t - w.x(S_t))*x(S_t),  t = 0..T-1
    Figures' measure: RMS error over the 19 states after each of the first 10 episodes, averaged over those
    episodes and the runs; each curve shows, for one lambda, that number against alpha.

The walk does not depend on the values, so each run's episodes are generated once with the environment and
replayed to every method, lambda and alpha (common random numbers). All (lambda, alpha) settings and all runs
are updated at once: weights and traces have shape (settings, runs, features).

Tested: lambda = 0.8 beats lambda = 0 and 1 at their best alphas, 100 runs (tests/test_td_lambda.py).
Results: benchmark_results/td_lambda.md
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
    """seed of the random walks"""
    num_runs: int = 100
    """independent runs averaged (book: 100)"""
    num_episodes: int = 10
    """episodes per run whose RMS errors are averaged (book: the first 10)"""
    lambdas: tuple[float, ...] = (0.0, 0.4, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0)
    """trace-decay values drawn in Figures 12.3, 12.6 and 12.8"""
    alphas: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04) + tuple(round(0.05 * i, 2) for i in range(1, 21))
    """step sizes swept on the x-axis (0.01 .. 0.04, then 0.05 .. 1.0 by 0.05)"""
    methods: tuple[str, ...] = ("offline_lambda_return", "accumulating", "replacing", "true_online")
    """which algorithms to run, one panel each"""
    plot: str = "benchmark_results/classic/td_lambda_random_walk.png"
    """where to save the figure (PNG)"""


# ----------------------------------------------------------------------------------------------------------
# Environment: the 19-state random walk of Example 7.1 (used again in Chapter 12)
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


def rms_error(V, v_true) -> np.ndarray:
    """Root-mean-square error over the non-terminal states 1..n (V's first and last entries are the
    terminals), one number per value table: the measure of Example 6.2 and Figure 7.2."""
    return np.sqrt(np.mean((np.asarray(V)[..., 1:-1] - v_true) ** 2, axis=-1))


def one_hot_features(num_states: int) -> np.ndarray:
    """The tabular case of linear function approximation: x(s) is the s-th unit vector for the non-terminal
    states 1..num_states and the zero vector for the two terminals (so v(terminal) = w.0 = 0)."""
    X = np.zeros((num_states + 2, num_states))
    X[1:-1] = np.eye(num_states)
    return X


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
# Pure functions. Shapes: w (P, R, d) for P (lambda, alpha) settings, R runs, d features; X (states, d);
# states (R, T+1) padded with the terminal; rewards (R, T), rewards[:, t] = R_{t+1}, zero after the end;
# lengths (R,); alpha and lam (P,). Each returns the updated copy of w.
# ----------------------------------------------------------------------------------------------------------
def td_lambda_episode(w, X, states, rewards, lengths, alpha, lam, gamma: float = 1.0,
                      trace: str = "accumulating") -> np.ndarray:
    """Semi-gradient TD(lambda) (§12.2) with accumulating or replacing eligibility traces."""
    w = np.array(w, dtype=float)
    step = np.asarray(alpha, dtype=float)[:, None, None]
    decay = gamma * np.asarray(lam, dtype=float)[:, None, None]
    z = np.zeros_like(w)  # traces start at 0 in every episode
    for t in range(rewards.shape[1]):
        x, x_next = X[states[:, t]], X[states[:, t + 1]]
        live = (t < lengths)[:, None]
        if trace == "accumulating":
            z = decay * z + x  # (12.5): the gradient of a linear v is x
        elif trace == "replacing":
            z = decay * z * (1 - x) + x  # the active feature's trace is reset to 1, others decay
        else:
            raise ValueError(f"unknown trace {trace!r}; use 'accumulating' or 'replacing'")
        delta = rewards[:, t] + gamma * np.sum(w * x_next, -1) - np.sum(w * x, -1)  # (12.6)
        w += step * delta[..., None] * z * live  # (12.7)
    return w


def lambda_returns(w, X, states, rewards, gamma: float, lam) -> np.ndarray:
    """G^lambda_t for t = 0..T_max-1, shape (P, R, T_max), from the recursive form of (12.3):
    G^lambda_t = R_{t+1} + gamma * ((1 - lambda) v(S_{t+1}) + lambda G^lambda_{t+1}), zero from the end on."""
    values = np.einsum("prd,rtd->prt", w, X[states])  # v(S_t, w) for t = 0..T_max
    lam = np.asarray(lam, dtype=float)[:, None]
    G = np.zeros(values[..., :-1].shape)
    g = np.zeros(values.shape[:2])
    for t in reversed(range(rewards.shape[1])):
        g = rewards[:, t] + gamma * ((1 - lam) * values[..., t + 1] + lam * g)
        G[..., t] = g
    return G


def offline_lambda_return_episode(w, X, states, rewards, lengths, alpha, lam, gamma: float = 1.0) -> np.ndarray:
    """The offline lambda-return algorithm (§12.1, eq. 12.4): no change during the episode, then the
    updates towards G^lambda_t for t = 0..T-1, the returns computed with the episode's starting weights."""
    w = np.array(w, dtype=float)
    G = lambda_returns(w, X, states, rewards, gamma, lam)
    step = np.asarray(alpha, dtype=float)[:, None]
    for t in range(rewards.shape[1]):
        x = X[states[:, t]]
        error = (G[..., t] - np.sum(w * x, -1)) * (t < lengths)
        w += (step * error)[..., None] * x
    return w


def true_online_td_lambda_episode(w, X, states, rewards, lengths, alpha, lam, gamma: float = 1.0) -> np.ndarray:
    """True online TD(lambda) (§12.5, the book's boxed algorithm): the dutch trace (12.11) and the update
    (12.12) reproduce, at every step, the weights of the online lambda-return algorithm (linear case)."""
    w = np.array(w, dtype=float)
    step = np.asarray(alpha, dtype=float)[:, None]
    decay = gamma * np.asarray(lam, dtype=float)[:, None]
    z = np.zeros_like(w)
    v_old = np.zeros(w.shape[:2])
    for t in range(rewards.shape[1]):
        x, x_next = X[states[:, t]], X[states[:, t + 1]]
        live = (t < lengths)[:, None]
        v, v_next = np.sum(w * x, -1), np.sum(w * x_next, -1)
        delta = rewards[:, t] + gamma * v_next - v
        z = decay[..., None] * z + (1 - step * decay * np.sum(z * x, -1))[..., None] * x
        w += live * ((step * (delta + v - v_old))[..., None] * z - (step * (v - v_old))[..., None] * x)
        v_old = v_next
    return w


METHODS = {
    "offline_lambda_return": offline_lambda_return_episode,
    "accumulating": lambda *a, **k: td_lambda_episode(*a, **k, trace="accumulating"),
    "replacing": lambda *a, **k: td_lambda_episode(*a, **k, trace="replacing"),
    "true_online": true_online_td_lambda_episode,
}
TITLES = {
    "offline_lambda_return": "Offline lambda-return (Figure 12.3)",
    "accumulating": "TD(lambda), accumulating traces (Figure 12.6)",
    "replacing": "TD(lambda), replacing traces",
    "true_online": "True online TD(lambda) (Figure 12.8)",
}


def sweep(method: str, episodes, lambdas, alphas, v_true) -> np.ndarray:
    """Per-run error of the figures: (len(lambdas), len(alphas), runs), the RMS error after each episode
    averaged over the episodes, weights starting at 0. A diverged setting gives inf."""
    X = one_hot_features(len(v_true))
    lam = np.repeat(np.asarray(lambdas, dtype=float), len(alphas))  # settings P = lambdas x alphas, flat
    alpha = np.tile(np.asarray(alphas, dtype=float), len(lambdas))
    num_runs = episodes[0][0].shape[0]
    w = np.zeros((len(lam), num_runs, X.shape[1]))
    total = np.zeros((len(lam), num_runs))
    with np.errstate(over="ignore", invalid="ignore"):  # accumulating traces diverge at large alpha * lambda
        for states, rewards, lengths in episodes:
            w = METHODS[method](w, X, states, rewards, lengths, alpha, lam)
            total += rms_error(w @ X.T, v_true)  # v(s) = x(s).w for every state, terminals 0
    errors = total / len(episodes)
    errors[~np.isfinite(errors)] = np.inf
    return errors.reshape(len(lambdas), len(alphas), num_runs)


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
    if len(args.lambdas) == 0 or any(not 0 <= lam <= 1 for lam in args.lambdas):
        fail(f"--lambdas must be trace-decay rates in [0, 1], got {list(args.lambdas)}")
    if len(args.alphas) == 0 or any(not 0 < a <= 1 for a in args.alphas):
        fail(f"--alphas must be step sizes in (0, 1], got {list(args.alphas)}")
    unknown = [m for m in args.methods if m not in METHODS]
    if len(args.methods) == 0 or unknown:
        fail(f"--methods {' '.join(unknown)} is unknown; use some of: {' '.join(METHODS)}")
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

    num_states = 19
    v_true = true_values(num_states, left_reward=-1.0, right_reward=1.0)
    walk = RandomWalk(num_states, left_reward=-1.0, right_reward=1.0)  # Example 7.1, used again in Chapter 12
    episodes = generate_episodes(walk, args.num_runs, args.num_episodes, args.seed)
    alphas = np.asarray(args.alphas, dtype=float)

    fig, axes = plt.subplots(1, len(args.methods), figsize=(4.6 * len(args.methods), 4.4), squeeze=False)
    result = {}
    print(f"19-state random walk, {args.num_runs} runs x first {args.num_episodes} episodes")
    for ax, method in zip(axes[0], args.methods, strict=True):
        errors = sweep(method, episodes, args.lambdas, alphas, v_true)
        mean = errors.mean(axis=2)
        best = mean.argmin(axis=1)
        result[method] = {
            lam: {"best_alpha": float(alphas[best[i]]), "best_error": float(mean[i, best[i]]),
                  "best_error_se": float(errors[i, best[i]].std(ddof=1) / np.sqrt(args.num_runs))
                  if args.num_runs > 1 else float("nan")}
            for i, lam in enumerate(args.lambdas)
        }
        print(f"  {TITLES[method]}")
        for lam, r in result[method].items():
            print(f"    lambda={lam:<6} best alpha {r['best_alpha']:.2f}  RMS error {r['best_error']:.4f}"
                  f" +- {r['best_error_se']:.4f}")
        for i, lam in enumerate(args.lambdas):
            ax.plot(alphas, np.where(mean[i] < 1.0, mean[i], np.nan), label=f"lambda={lam}")
        ax.set(title=TITLES[method], xlabel="alpha", ylim=(0.25, 0.55),
               ylabel=f"RMS error, first {args.num_episodes} episodes")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"19-state random walk, {args.num_runs} runs (Sutton & Barto, Chapter 12)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)
    print(f"  figure: {args.plot}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
