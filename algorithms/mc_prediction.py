"""Monte Carlo prediction: first-visit and every-visit (Sutton & Barto, 2nd ed., 2018, §5.1).

Book: Sutton and Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed., Chapter 5,
http://incompleteideas.net/book/the-book-2nd.html

Estimates v_pi by averaging the returns that follow visits to each state.

Run:
    python algorithms/mc_prediction.py                        # Figure 5.1 (Blackjack, stick on 20 or 21)
    python algorithms/mc_prediction.py --env-id RandomWalk-v0 # 5-state random walk of Example 6.2

Update rule, as in the code (the book's pseudocode of §5.1, returns kept as running sums):

    G <- 0
    for t = T-1, T-2, ..., 0:
        G <- gamma * G + R[t+1]
        if every-visit, or S[t] does not appear in S[0..t-1]:   # the first-visit check
            returns_sum[S[t]] += G;  returns_count[S[t]] += 1
    V[s] = returns_sum[s] / returns_count[s]

Environments
- Blackjack-v1 from Gymnasium, made with `sab=True` (the book's rules: a natural wins unless the dealer
  also has one, which draws). The policy evaluated is Example 5.1's "stick only on 20 or 21, else hit".
  Blackjack states never repeat within an episode, so first-visit and every-visit coincide there.
  Values are estimated for every observation; the figure shows the book's 200 states (sum 12-21).
- RandomWalk-v0, written below (Example 6.2): states A..E, start in C, step left or right with
  probability 1/2 each; leaving on the right gives +1, every other reward is 0. True values are
  1/6, 2/6, ..., 5/6. Here the two directions are the actions and the evaluated policy is equiprobable
  random, which is the same process. With gamma = 1 and a single non-zero reward, every return in an
  episode equals its final outcome, so first-visit and every-visit differ only in how many times a
  repeated state's (equal) return is counted: both converge to the true values.

The default `--plot` depends on the environment (so one run does not overwrite the other's figure).

Tested: Blackjack values within a statistical tolerance of the exact ones (tests/test_mc_prediction.py).
Results: benchmark_results/mc_prediction.md
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import matplotlib
import numpy as np
import tyro
from gymnasium import spaces

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    seed: int = 1
    """seed of the agent's generator and of the environment's first reset"""
    env_id: str = "Blackjack-v1"
    """Blackjack-v1 (Figure 5.1) or RandomWalk-v0 (Example 6.2's 5-state random walk)"""
    num_episodes: int | None = None
    """episodes per run; default 500,000 on Blackjack (Figure 5.1), 1,000 on the random walk"""
    snapshot_episodes: int = 10_000
    """Blackjack: also plot the estimate after this many episodes (Figure 5.1's left column)"""
    num_runs: int = 100
    """RandomWalk-v0: independent runs the error curve is averaged over (Blackjack uses one run)"""
    first_visit: bool = True
    """Blackjack: first-visit MC (identical to every-visit there); the random walk always runs both"""
    gamma: float = 1.0
    """discount factor (undiscounted episodic tasks in the book)"""
    plot: str | None = None
    """where to save the figure; default benchmark_results/classic/figure_5_1_blackjack_values.png or
    benchmark_results/classic/mc_prediction_random_walk.png"""


# ----------------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------------
class RandomWalkEnv(gym.Env):
    """Example 6.2: states 0 and 6 are terminal, 1..5 are A..E, the walk starts in C (3).

    Action 0 moves left, 1 moves right. Reaching state 6 gives reward +1, everything else 0.
    """

    metadata = {"render_modes": []}

    def __init__(self, num_states: int = 5):
        self.num_states = num_states
        self.observation_space = spaces.Discrete(num_states + 2)
        self.action_space = spaces.Discrete(2)
        self.position = (num_states + 1) // 2

    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = (self.num_states + 1) // 2
        return self.position, {}

    def step(self, action):
        self.position += 1 if action == 1 else -1
        right_end = self.num_states + 1
        terminated = self.position in (0, right_end)
        reward = 1.0 if self.position == right_end else 0.0
        return self.position, reward, terminated, False, {}


LOCAL_ENVS = {"RandomWalk-v0": RandomWalkEnv}


def make_env(env_id: str) -> gym.Env:
    """One environment: a book environment written in this file (LOCAL_ENVS), or a registered Gymnasium
    environment (with its time limit)."""
    if env_id in LOCAL_ENVS:
        return LOCAL_ENVS[env_id]()
    return gym.make(env_id)


RANDOM_WALK_TRUE_VALUES = np.arange(1, 6) / 6.0  # v_pi(A..E) = 1/6 .. 5/6 (Example 6.2)
STICK, HIT = 0, 1


# ----------------------------------------------------------------------------------------------------
# Pure functions (what the tests check)
# ----------------------------------------------------------------------------------------------------
def episode_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t for t = 0..T-1 from rewards R_1..R_T, by the backward recursion G <- gamma*G + R_{t+1}."""
    returns = np.zeros(len(rewards))
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = gamma * g + rewards[t]
        returns[t] = g
    return returns


def first_visit_mask(states: list) -> np.ndarray:
    """True at the time steps where the state occurs for the first time in the episode."""
    seen = set()
    mask = np.zeros(len(states), dtype=bool)
    for t, s in enumerate(states):
        if s not in seen:
            mask[t] = True
            seen.add(s)
    return mask


def accumulate_episode(returns_sum: np.ndarray, returns_count: np.ndarray, states: list,
                       rewards: np.ndarray, gamma: float, first_visit: bool) -> None:
    """Add one episode's returns to the running sums (in place): the inner loop of §5.1's pseudocode.

    `states[t]` is S_t (an index into the arrays, an int or a tuple), `rewards[t]` is R_{t+1}.
    """
    returns = episode_returns(rewards, gamma)
    use = first_visit_mask(states) if first_visit else np.ones(len(states), dtype=bool)
    for t in range(len(states)):
        if use[t]:
            returns_sum[states[t]] += returns[t]
            returns_count[states[t]] += 1


def mc_values(returns_sum: np.ndarray, returns_count: np.ndarray, initial: float = 0.0) -> np.ndarray:
    """V(s) = average return; states never visited keep `initial`."""
    values = np.full(returns_sum.shape, initial, dtype=float)
    visited = returns_count > 0
    values[visited] = returns_sum[visited] / returns_count[visited]
    return values


def stick_on_20_action(obs) -> int:
    """The policy of Examples 5.1 and 5.4: stick if the player's sum is 20 or 21, otherwise hit."""
    return STICK if obs[0] >= 20 else HIT


# ----------------------------------------------------------------------------------------------------
# Experiments
# ----------------------------------------------------------------------------------------------------
def run_blackjack(num_episodes: int, seed: int, first_visit: bool = True, gamma: float = 1.0,
                  snapshot_episodes: int | None = None):
    """Evaluate the stick-on-20 policy; returns (V, counts, V at snapshot or None).

    Arrays are indexed by the observation (player sum 0..31, dealer card 0..10, usable ace 0/1).
    """
    env = gym.make("Blackjack-v1", sab=True)
    shape = tuple(space.n for space in env.observation_space)
    returns_sum, returns_count = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    snapshot = None
    obs, _ = env.reset(seed=seed)
    for episode in range(num_episodes):
        if episode > 0:
            obs, _ = env.reset()
        states, rewards, done = [], [], False
        while not done:
            obs_next, reward, terminated, truncated, _ = env.step(stick_on_20_action(obs))
            states.append(obs)
            rewards.append(reward)
            obs, done = obs_next, terminated or truncated
        accumulate_episode(returns_sum, returns_count, states, np.array(rewards), gamma, first_visit)
        if snapshot_episodes is not None and episode + 1 == snapshot_episodes:
            snapshot = mc_values(returns_sum, returns_count)
    env.close()
    return mc_values(returns_sum, returns_count), returns_count, snapshot


def run_random_walk(num_runs: int, num_episodes: int, seed: int, gamma: float = 1.0):
    """First- and every-visit MC on the random walk, both fed the same episodes.

    Returns {"first": V, "every": V} with V of shape (num_runs, num_episodes, 5): the estimates of A..E
    after each episode (unvisited states stay at 0.5, Example 6.2's initial value).
    """
    rng = np.random.default_rng(seed)
    env = make_env("RandomWalk-v0")
    env.action_space.seed(seed)
    n = env.observation_space.n
    history = {kind: np.zeros((num_runs, num_episodes, n - 2)) for kind in ("first", "every")}
    env.reset(seed=seed)
    for run in range(num_runs):
        sums = {kind: np.zeros(n) for kind in history}
        counts = {kind: np.zeros(n, dtype=np.int64) for kind in history}
        for episode in range(num_episodes):
            obs, _ = env.reset()
            states, rewards, done = [], [], False
            while not done:
                obs_next, reward, terminated, truncated, _ = env.step(int(rng.integers(2)))
                states.append(obs)
                rewards.append(reward)
                obs, done = obs_next, terminated or truncated
            for kind in history:
                accumulate_episode(sums[kind], counts[kind], states, np.array(rewards), gamma,
                                   first_visit=kind == "first")
                history[kind][run, episode] = mc_values(sums[kind], counts[kind], initial=0.5)[1:-1]
    env.close()
    return history


def plot_blackjack(v_snapshot, v_final, snapshot_episodes, num_episodes, path):
    sums, dealer = np.arange(12, 22), np.arange(1, 11)
    d_grid, s_grid = np.meshgrid(dealer, sums)
    fig = plt.figure(figsize=(10, 8))
    panels = [(v_snapshot, 1, snapshot_episodes), (v_final, 1, num_episodes),
              (v_snapshot, 0, snapshot_episodes), (v_final, 0, num_episodes)]
    for i, (values, ace, episodes) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1, projection="3d")
        if values is not None:
            ax.plot_surface(d_grid, s_grid, values[12:22, 1:11, ace], cmap="viridis", vmin=-1, vmax=1)
        ax.set_zlim(-1, 1)
        ax.set_xlabel("dealer showing")
        ax.set_ylabel("player sum")
        ax.set_title(f"{'usable ace' if ace else 'no usable ace'}, after {episodes:,} episodes")
    fig.suptitle("Figure 5.1: state-value function of the stick-on-20-or-21 policy (first-visit MC)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_random_walk(history, path):
    fig, (ax_err, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    episodes = np.arange(1, history["first"].shape[1] + 1)
    for kind, color in (("first", "tab:blue"), ("every", "tab:red")):
        rms = np.sqrt(((history[kind] - RANDOM_WALK_TRUE_VALUES) ** 2).mean(axis=2)).mean(axis=0)
        ax_err.plot(episodes, rms, color=color, label=f"{kind}-visit MC")
        ax_val.plot(range(5), history[kind][:, -1].mean(axis=0), "o-", color=color,
                    label=f"{kind}-visit, after {episodes[-1]} episodes")
    ax_val.plot(range(5), RANDOM_WALK_TRUE_VALUES, "k--", label="true values 1/6..5/6")
    ax_err.set_xscale("log")
    ax_err.set_xlabel("episodes")
    ax_err.set_ylabel("RMS error, averaged over states and runs")
    ax_err.set_title(f"random walk (Example 6.2), {history['first'].shape[0]} runs")
    ax_val.set_xticks(range(5), list("ABCDE"))
    ax_val.set_ylabel("estimated value (mean over runs)")
    ax_err.legend()
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def plot_path(args: Args) -> str:
    """--plot, or the default figure of the chosen environment."""
    if args.plot:
        return args.plot
    name = "figure_5_1_blackjack_values.png" if args.env_id == "Blackjack-v1" else "mc_prediction_random_walk.png"
    return f"benchmark_results/classic/{name}"


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
    supported = ("Blackjack-v1", "RandomWalk-v0")
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:
            fail(f"--env-id {args.env_id} is unknown ({error}); use one of: {', '.join(supported)}")
    if args.env_id not in supported:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                space = gym.make(args.env_id).observation_space
        except Exception:  # an environment whose dependencies are missing is just as unusable here
            space = None
        if isinstance(space, spaces.Box):
            fail(f"--env-id {args.env_id} has a continuous observation space ({space}); this tabular "
                 f"file needs a discrete one: use one of: {', '.join(supported)}")
        fail(f"--env-id {args.env_id} is not supported (the evaluated policy is defined for "
             f"Blackjack and the random walk only); use one of: {', '.join(supported)}")
    for name in ("num_episodes", "snapshot_episodes", "num_runs"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not 0.0 <= args.gamma <= 1.0:
        fail(f"--gamma must lie in [0, 1], got {args.gamma}")
    # A --plot path that cannot be written is bad input: say so now, not after the experiment (checked last,
    # so that no other bad input leaves a directory behind).
    try:
        os.makedirs(os.path.dirname(os.path.abspath(plot_path(args))), exist_ok=True)
    except OSError as exc:
        fail(f"cannot write --plot {plot_path(args)}: {exc.strerror}; give a path in a writable directory")


def main(args: Args) -> dict:
    check_args(args)
    start = time.time()
    blackjack = args.env_id == "Blackjack-v1"
    plot = Path(plot_path(args))
    num_episodes = args.num_episodes or (500_000 if blackjack else 1_000)

    if blackjack:
        values, counts, snapshot = run_blackjack(num_episodes, args.seed, args.first_visit, args.gamma,
                                                 args.snapshot_episodes)
        plot_blackjack(snapshot, values, args.snapshot_episodes, num_episodes, plot)
        result = {
            "v_usable_20_21": float(values[20:22, 1:11, 1].mean()),
            "v_no_usable_20_21": float(values[20:22, 1:11, 0].mean()),
            "v_no_usable_13_to_19": float(values[13:20, 1:11, 0].mean()),
            "min_v_20_21": float(values[20:22, 1:11, :].min()),
        }
        print(f"Blackjack, stick on 20/21, {num_episodes:,} episodes ({time.time() - start:.1f} s):")
        print(f"  mean V over player sum 20-21: usable ace {result['v_usable_20_21']:+.3f}, "
              f"no usable ace {result['v_no_usable_20_21']:+.3f}; smallest {result['min_v_20_21']:+.3f}")
        print(f"  mean V over player sum 13-19, no usable ace: {result['v_no_usable_13_to_19']:+.3f}")
    else:
        history = run_random_walk(args.num_runs, num_episodes, args.seed, args.gamma)
        plot_random_walk(history, plot)
        result = {}
        for kind in history:
            final = history[kind][:, -1]
            result[f"{kind}_visit_values"] = final.mean(axis=0).tolist()
            result[f"{kind}_visit_rms"] = float(np.sqrt(((final - RANDOM_WALK_TRUE_VALUES) ** 2).mean()))
        print(f"random walk, {args.num_runs} runs x {num_episodes} episodes ({time.time() - start:.1f} s):")
        for kind in history:
            values = " ".join(f"{v:.3f}" for v in result[f"{kind}_visit_values"])
            print(f"  {kind}-visit: V(A..E) = {values}  (true 0.167 0.333 0.500 0.667 0.833), "
                  f"RMS error {result[f'{kind}_visit_rms']:.4f}")
    result["seconds"] = time.time() - start
    print(f"  figure: {plot}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
