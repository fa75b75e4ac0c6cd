"""SARSA(lambda) with tile coding and linear function approximation on Mountain Car.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018):
  §12.7 "Sarsa(lambda)" (the boxed algorithm, Figures 12.10/12.11), tile coding §9.5.4,
  Mountain Car §10.1 (Example 10.1, Figure 10.1 cost-to-go surface).
  http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/sarsa_lambda.py                       # 10 runs x 500 episodes, replacing traces
    python algorithms/sarsa_lambda.py --num-runs 1 --num-episodes 100

Value function: q(s, a, w) = sum of w[i] over the active features F(s, a), one tile per tiling
(binary features, so the gradient is 1 on F(s, a) and 0 elsewhere).

Tile coder (§9.5.4): `num_tilings` tilings of `tiles_per_dim` x `tiles_per_dim` tiles, each one
tile larger than the state space in every dimension so that the offset tilings still cover it.
Tiling i is displaced by i * (1, 3) / num_tilings of a tile width: the book's asymmetric offsets
(displacement vector of the first odd integers), which avoid the diagonal artefacts of uniform
offsets. No hashing: 8 tilings x 9 x 9 tiles x 3 actions = 1944 weights.

The update, as in the book's box and in `sarsa_lambda_update` below, for one step S, A, R, S', A':
    z[F(S,A)] += 1                (accumulating traces)   or   z[F(S,A)] = 1   (replacing traces)
    delta = R - q(S, A)
    delta += gamma * q(S', A')    only if S' is not terminal (a TimeLimit truncation is NOT terminal)
    w += (alpha / num_tilings) * delta * z
    z *= gamma * lambda
Accumulating traces need a smaller alpha than replacing ones (Figure 12.10): at these defaults
(alpha = 0.5/8, lambda = 0.9) they can stay at the 200-step limit.
The policy is greedy (epsilon = 0) with ties broken at random: the initial weights w = 0 are
optimistic because every reward is -1, which drives exploration (§10.1).

Time limits: Gymnasium's MountainCar-v0 stops an episode after 200 steps (truncated=True). The car
is then not at the goal, so the last step still bootstraps from q(S', A'); only reaching the goal
(terminated=True) drops the bootstrap term. A truncated episode is counted as 200 steps.

Tested: Mountain Car, the last 50 of 500 episodes of one run take at most 160 steps (tests/test_sarsa_lambda.py).
Results: benchmark_results/sarsa_lambda.md
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import tyro


@dataclass
class Args:
    env_id: str = "MountainCar-v0"
    """Gymnasium environment with a bounded Box observation and Discrete actions (the book's Mountain Car)"""
    seed: int = 1
    """random seed (run k uses seed + k for its environment)"""
    num_runs: int = 10
    """independent runs averaged in the figure (the book uses 100)"""
    num_episodes: int = 500
    """episodes per run"""
    alpha: float = 0.5
    """step size summed over tilings: each active tile moves by alpha / num_tilings (the book's 0.5/8)"""
    lam: float = 0.9
    """trace-decay parameter lambda in [0, 1]"""
    gamma: float = 1.0
    """discount factor (Mountain Car is undiscounted)"""
    epsilon: float = 0.0
    """exploration rate of the epsilon-greedy policy (0: optimistic initial values explore)"""
    trace: Literal["replacing", "accumulating"] = "replacing"
    """eligibility-trace variant of the book's Sarsa(lambda) box"""
    num_tilings: int = 8
    """number of tilings (the book's 8)"""
    tiles_per_dim: int = 8
    """tiles per dimension in each tiling (the book's 8 x 8)"""
    plot: str = "benchmark_results/classic/sarsa_lambda_mountain_car.png"
    """where to save the figure (steps per episode, and the Figure 10.1 cost-to-go surface)"""


# ----------------------------------------------------------------------------------------------
# Pure functions: tile coder, action values, the Sarsa(lambda) step.
# ----------------------------------------------------------------------------------------------
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


def sarsa_lambda_update(
    w: np.ndarray,
    z: np.ndarray,
    tiles: np.ndarray,
    action: int,
    reward: float,
    next_tiles: np.ndarray,
    next_action: int,
    terminated: bool,
    alpha: float,
    gamma: float,
    lam: float,
    trace: str,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the book's Sarsa(lambda) box (§12.7) with binary features; returns new (w, z).

    `alpha` is the per-feature step size (alpha / num_tilings in the book's notation). `terminated`
    is True only when S' is a terminal state; a time-limit truncation passes False so that the
    target still bootstraps from q(S', A').
    """
    w, z = w.copy(), z.copy()
    if trace == "accumulating":
        z[action, tiles] += 1.0
    elif trace == "replacing":
        z[action, tiles] = 1.0
    else:
        raise ValueError(f"unknown trace {trace!r}")
    delta = reward - w[action, tiles].sum()
    if not terminated:
        delta += gamma * w[next_action, next_tiles].sum()
    w += alpha * delta * z
    z *= gamma * lam
    return w, z


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random action, otherwise a greedy one, ties broken at random."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


# ----------------------------------------------------------------------------------------------
# Experiment
# ----------------------------------------------------------------------------------------------
def run_one(args: Args, run: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One run of `num_episodes` episodes; returns (steps per episode, final weights)."""
    env = gym.make(args.env_id)  # MountainCar-v0 brings its own 200-step TimeLimit
    env.action_space.seed(args.seed + run)
    low, high = env.observation_space.low, env.observation_space.high
    num_actions = int(env.action_space.n)
    num_features = args.num_tilings * tiles_per_tiling(low.shape[0], args.tiles_per_dim)
    w = np.zeros((num_actions, num_features))
    step_size = args.alpha / args.num_tilings

    def features(obs):
        return active_tiles(obs, low, high, args.num_tilings, args.tiles_per_dim)

    steps = np.zeros(args.num_episodes, dtype=np.int64)
    obs, _ = env.reset(seed=args.seed + run)  # later resets continue the seeded environment RNG
    for episode in range(args.num_episodes):
        if episode > 0:
            obs, _ = env.reset()
        z = np.zeros_like(w)  # traces start at zero in every episode
        tiles = features(obs)
        action = epsilon_greedy_action(tile_action_values(w, tiles), args.epsilon, rng)
        while True:
            obs, reward, terminated, truncated, _ = env.step(action)
            steps[episode] += 1
            next_tiles = features(obs)
            next_action = epsilon_greedy_action(tile_action_values(w, next_tiles), args.epsilon, rng)
            # Bootstrap through a TimeLimit truncation (the state is not terminal); drop the
            # bootstrap term only on termination (the goal).
            w, z = sarsa_lambda_update(
                w, z, tiles, action, float(reward), next_tiles, next_action, terminated,
                step_size, args.gamma, args.lam, args.trace,
            )  # fmt: skip
            if terminated or truncated:
                break
            tiles, action = next_tiles, next_action
    env.close()
    return steps, w


def cost_to_go(w: np.ndarray, low: np.ndarray, high: np.ndarray, args: Args, grid: int = 40):
    """-max_a q(s, a) on a grid over position x velocity (Figure 10.1)."""
    xs = np.linspace(low[0], high[0], grid)
    vs = np.linspace(low[1], high[1], grid)
    cost = np.array(
        [[-tile_action_values(w, active_tiles(np.array([x, v]), low, high, args.num_tilings, args.tiles_per_dim)).max()
          for x in xs] for v in vs]
    )  # fmt: skip
    return xs, vs, cost


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
    for name in ("num_runs", "num_episodes", "num_tilings", "tiles_per_dim"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not 0.0 <= args.lam <= 1.0:
        fail(f"--lam must be in [0, 1], got {args.lam}")
    if not 0.0 <= args.gamma <= 1.0:
        fail(f"--gamma must be in [0, 1], got {args.gamma}")
    if not 0.0 <= args.epsilon <= 1.0:
        fail(f"--epsilon must be in [0, 1], got {args.epsilon}")
    if not args.alpha > 0:
        fail(f"--alpha must be positive, got {args.alpha}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is unknown ({error}); use MountainCar-v0 "
             "(or another bounded-Box, Discrete-action env)")
    try:
        env = gym.make(args.env_id)
    except Exception as error:  # a registered id whose dependencies are missing, for instance
        fail(f"--env-id {args.env_id} could not be made ({type(error).__name__}); use MountainCar-v0")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Box):
        fail(f"--env-id {args.env_id} has a {type(obs_space).__name__} observation space; tile coding needs "
             "a Box (continuous) one, e.g. MountainCar-v0; use a tabular file for discrete states")  # fmt: skip
    if not (np.all(np.isfinite(obs_space.low)) and np.all(np.isfinite(obs_space.high))):
        fail(f"--env-id {args.env_id} has an unbounded Box observation space; tile coding needs finite bounds, "
             "e.g. MountainCar-v0")  # fmt: skip
    if not isinstance(act_space, gym.spaces.Discrete):
        fail(f"--env-id {args.env_id} has a {type(act_space).__name__} action space; Sarsa(lambda) needs "
             "Discrete actions, e.g. MountainCar-v0")  # fmt: skip
    num_weights = act_space.n * args.num_tilings * tiles_per_tiling(obs_space.shape[0], args.tiles_per_dim)
    if num_weights > 10_000_000:
        fail(f"--env-id {args.env_id} would need {num_weights} weights without hashing; use fewer "
             "--tiles-per-dim or a 2-D environment such as MountainCar-v0")  # fmt: skip
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
    rng = np.random.default_rng(args.seed)
    all_steps, weights = [], []
    for run in range(args.num_runs):
        steps, w = run_one(args, run, rng)
        all_steps.append(steps)
        weights.append(w)
        print(f"run {run + 1}/{args.num_runs}: mean steps over the last {min(50, args.num_episodes)} "
              f"episodes = {steps[-50:].mean():.1f}")  # fmt: skip
    steps = np.array(all_steps, dtype=np.float64)  # (runs, episodes)
    per_run_last = steps[:, -50:].mean(axis=1)
    mean_curve = steps.mean(axis=0)
    se_curve = steps.std(axis=0, ddof=1) / np.sqrt(args.num_runs) if args.num_runs > 1 else 0 * mean_curve

    env = gym.make(args.env_id)
    low, high = env.observation_space.low, env.observation_space.high
    env.close()
    fig = plt.figure(figsize=(12, 4.8))
    ax = fig.add_subplot(1, 2, 1)
    episodes = np.arange(1, args.num_episodes + 1)
    ax.plot(episodes, mean_curve, label=f"Sarsa($\\lambda$={args.lam}), {args.trace} traces")
    ax.fill_between(episodes, mean_curve - se_curve, mean_curve + se_curve, alpha=0.3, label="$\\pm$1 SE")
    ax.set_xlabel("Episode")
    ax.set_ylabel(f"Steps per episode (mean of {args.num_runs} runs; 200 = time limit)")
    ax.set_title(f"{args.env_id}: {args.num_tilings} tilings of {args.tiles_per_dim}x{args.tiles_per_dim}, "
                 f"$\\alpha$={args.alpha}/{args.num_tilings}")  # fmt: skip
    ax.legend()
    if low.shape[0] == 2:  # Figure 10.1: cost-to-go surface of the first run's final weights
        xs, vs, cost = cost_to_go(weights[0], low, high, args)
        ax3 = fig.add_subplot(1, 2, 2, projection="3d")
        gx, gv = np.meshgrid(xs, vs)
        ax3.plot_surface(gx, gv, cost, cmap="viridis")
        ax3.set_xlabel("Position")
        ax3.set_ylabel("Velocity")
        ax3.set_zlabel("$-\\max_a \\hat q(s,a,w)$")
        ax3.set_title(f"Cost-to-go after {args.num_episodes} episodes (run 1)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)

    result = {
        "last50_mean": float(per_run_last.mean()),
        "last50_se": float(per_run_last.std(ddof=1) / np.sqrt(args.num_runs)) if args.num_runs > 1 else 0.0,
        "last50_per_run": per_run_last.tolist(),
        "steps": steps,
        "wall_time": time.time() - start,
    }
    print(f"{args.env_id}, {args.trace} traces, lambda={args.lam}, alpha={args.alpha}/{args.num_tilings}: "
          f"mean steps over the last {min(50, args.num_episodes)} episodes = {result['last50_mean']:.1f} "
          f"+- {result['last50_se']:.1f} (SE over {args.num_runs} runs), {result['wall_time']:.1f} s; "
          f"figure: {args.plot}")  # fmt: skip
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
