"""Dyna-Q and Dyna-Q+: tabular Q-learning plus planning from a learned model.

Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018):
  §8.2 "Dyna: Integrated Planning, Acting, and Learning" (Tabular Dyna-Q box, Example 8.1, Figure 8.2),
  §8.3 "When the Model Is Wrong" (Dyna-Q+, Examples 8.2/8.3, Figures 8.4/8.5).
  http://incompleteideas.net/book/the-book-2nd.html

Run:
    python algorithms/dyna_q.py                                    # Figure 8.2: n = 0, 5, 50, 30 runs
    python algorithms/dyna_q.py --env-id BlockingMaze --algorithm both --planning-steps 10   # Figure 8.4
    python algorithms/dyna_q.py --env-id ShortcutMaze --algorithm both --planning-steps 10   # Figure 8.5
    python algorithms/dyna_q.py --env-id FrozenLake-v1 --num-episodes 500

The book's box, as in `main`'s loop (all runs are stepped together, numpy over a leading run axis):
    (a) S <- current state; (b) A <- epsilon-greedy(S, Q); (c) take A, observe R, S'
    (d) Q(S,A) <- Q(S,A) + alpha * [R + gamma * max_a Q(S',a) - Q(S,A)]     (no max term if S' is terminal)
    (e) Model(S,A) <- R, S'                                                  (deterministic: last outcome)
    (f) repeat n times:  S, A <- a random previously observed pair;  R, S' <- Model(S,A)
                         Q(S,A) <- Q(S,A) + alpha * [R + gamma * max_a Q(S',a) - Q(S,A)]
Dyna-Q+ (§8.3) plans with the reward R + kappa * sqrt(tau), tau = real time steps since (S,A) was last
tried, and (the book's footnote) also plans with actions never tried from a visited state, modelled as
leading back to the same state with reward 0.

Environments: the Dyna maze of Figure 8.2 (6 x 9, start (2,0), goal (0,8), +1 on reaching the goal,
0 otherwise) and the blocking / shortcut mazes of Figures 8.4 / 8.5, written below as gymnasium.Env;
and Gymnasium's FrozenLake-v1 (slippery: the last-outcome model is then only a sample of the dynamics).
A time-limit truncation (FrozenLake's 100 steps) is not terminal, so its target keeps the max term.

Episode indexing: episodes are counted from 1. The book's Figure 8.2 starts its x axis at episode 2
because the first episode is off the scale for every n (all Q = 0 make it a random walk); "episode 3"
here is the book's x = 3, i.e. the third episode of the run.

Tested: Figure 8.2, episode 3 with n = 50 planning steps near the book's 18 steps (tests/test_dyna_q.py).
Results: benchmark_results/dyna_q.md
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal, NamedTuple

import gymnasium as gym
import numpy as np
import tyro


@dataclass
class Args:
    env_id: str = "DynaMaze"
    """DynaMaze (Figure 8.2), BlockingMaze (8.4), ShortcutMaze (8.5), or a Gymnasium env with Discrete states"""
    algorithm: Literal["dyna-q", "dyna-q+", "both"] = "dyna-q"
    """Dyna-Q (§8.2), Dyna-Q+ (§8.3), or both side by side"""
    planning_steps: tuple[int, ...] = (0, 5, 50)
    """planning steps n per real step, one curve each (n = 0 is one-step Q-learning)"""
    num_runs: int = 30
    """independent runs averaged (the book's 30)"""
    num_episodes: int = 50
    """episodes per run (the book's 50; ignored by the changing mazes, which count steps)"""
    num_steps: int | None = None
    """real steps per run for BlockingMaze / ShortcutMaze (default 3000 / 6000, as in the book)"""
    alpha: float = 0.1
    """step size alpha"""
    gamma: float = 0.95
    """discount factor gamma"""
    epsilon: float = 0.1
    """exploration rate of the epsilon-greedy behaviour policy"""
    kappa: float = 1e-3
    """Dyna-Q+ bonus scale: planning reward R + kappa * sqrt(tau)"""
    seed: int = 1
    """random seed (run k's environment uses seed + k)"""
    plot: str = "benchmark_results/classic/dyna_q_figure_8_2.png"
    """where to save the figure"""


# ----------------------------------------------------------------------------------------------
# Environments: the book's mazes as gymnasium.Env
# ----------------------------------------------------------------------------------------------
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


class GridMaze(gym.Env):
    """A grid maze: state = row * width + col, 4 actions, walls and edges block moves, +1 at the goal.

    `change_at` / `changed_walls` replace the walls after that many steps of this environment (counted
    across episodes, never reset), which is how the blocking and shortcut mazes of §8.3 change.
    """

    def __init__(self, height, width, walls, start, goal, change_at=None, changed_walls=None):
        self.height, self.width = height, width
        self.walls, self.start, self.goal = set(walls), tuple(start), tuple(goal)
        self.change_at, self.changed_walls = change_at, changed_walls
        self.observation_space = gym.spaces.Discrete(height * width)
        self.action_space = gym.spaces.Discrete(4)
        self.total_steps = 0
        self.position = self.start

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.start
        return self.position[0] * self.width + self.position[1], {}

    def step(self, action):
        self.total_steps += 1
        if self.change_at is not None and self.total_steps == self.change_at + 1:
            self.walls = set(self.changed_walls)
        row, col = self.position[0] + MOVES[action][0], self.position[1] + MOVES[action][1]
        if 0 <= row < self.height and 0 <= col < self.width and (row, col) not in self.walls:
            self.position = (int(row), int(col))
        terminated = self.position == self.goal
        obs = self.position[0] * self.width + self.position[1]
        return obs, float(terminated), terminated, False, {}


def dyna_maze() -> GridMaze:
    """Figure 8.2: 6 x 9, walls in column 2 (rows 1-3), column 5 (row 4), column 7 (rows 0-2)."""
    walls = [(1, 2), (2, 2), (3, 2), (4, 5), (0, 7), (1, 7), (2, 7)]
    return GridMaze(6, 9, walls, start=(2, 0), goal=(0, 8))


def blocking_maze() -> GridMaze:
    """Figure 8.4: a wall across row 3 with a gap on the right; after 1000 steps the gap moves left."""
    before = [(3, c) for c in range(0, 8)]
    after = [(3, c) for c in range(1, 9)]
    return GridMaze(6, 9, before, start=(5, 3), goal=(0, 8), change_at=1000, changed_walls=after)


def shortcut_maze() -> GridMaze:
    """Figure 8.5: a gap on the left; after 3000 steps a shorter gap opens on the right as well."""
    before = [(3, c) for c in range(1, 9)]
    after = [(3, c) for c in range(1, 8)]
    return GridMaze(6, 9, before, start=(5, 3), goal=(0, 8), change_at=3000, changed_walls=after)


LOCAL_ENVS = {"DynaMaze": dyna_maze, "BlockingMaze": blocking_maze, "ShortcutMaze": shortcut_maze}
CHANGING_MAZE_STEPS = {"BlockingMaze": 3000, "ShortcutMaze": 6000}


def make_env(env_id: str) -> gym.Env:
    """One environment: a book environment written in this file (LOCAL_ENVS), or a registered Gymnasium
    environment (with its time limit)."""
    if env_id in LOCAL_ENVS:
        return LOCAL_ENVS[env_id]()
    return gym.make(env_id)


# ----------------------------------------------------------------------------------------------
# Data structure: the learned deterministic model, one table per run (leading axis = run)
# ----------------------------------------------------------------------------------------------
class Model(NamedTuple):
    next_state: np.ndarray  # (runs, S, A) int: last observed S'
    reward: np.ndarray  # (runs, S, A) float: last observed R
    terminal: np.ndarray  # (runs, S, A) bool: S' was terminal (not merely truncated)
    last_tried: np.ndarray  # (runs, S, A) int: real time step at which (S, A) was last taken
    state_seen: np.ndarray  # (runs, S) bool
    pair_seen: np.ndarray  # (runs, S, A) bool
    pairs: np.ndarray  # (runs, S*A) int: observed pairs s*A + a in order of discovery
    num_pairs: np.ndarray  # (runs,) int: how many entries of `pairs` are filled


def empty_model(num_runs: int, num_states: int, num_actions: int) -> Model:
    shape = (num_runs, num_states, num_actions)
    return Model(
        next_state=np.zeros(shape, dtype=np.int64),
        reward=np.zeros(shape),
        terminal=np.zeros(shape, dtype=bool),
        last_tried=np.zeros(shape, dtype=np.int64),
        state_seen=np.zeros((num_runs, num_states), dtype=bool),
        pair_seen=np.zeros(shape, dtype=bool),
        pairs=np.zeros((num_runs, num_states * num_actions), dtype=np.int64),
        num_pairs=np.zeros(num_runs, dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------------
# Pure functions (arrays in, new arrays out; `runs` selects which runs' tables take part)
# ----------------------------------------------------------------------------------------------
def q_update(Q, runs, s, a, r, s_next, terminal, alpha, gamma):
    """Step (d) and each planning update of (f): one-step tabular Q-learning, eq. (6.8)."""
    Q = Q.copy()
    target = r + gamma * Q[runs, s_next].max(axis=1) * ~terminal
    Q[runs, s, a] += alpha * (target - Q[runs, s, a])
    return Q


def model_update(model: Model, runs, s, a, r, s_next, terminal, t, plus: bool) -> Model:
    """Step (e): Model(S,A) <- R, S' (and, for Dyna-Q+, the time t at which (S,A) was tried).

    Dyna-Q+ (footnote in §8.3): the first visit of a state makes all its actions plannable, each
    modelled as a self-loop with reward 0 that was last tried at time 0.
    """
    m = Model(*(x.copy() for x in model))
    num_actions = m.reward.shape[2]
    if plus:
        new_state = ~m.state_seen[runs, s]
        nr, ns = runs[new_state], s[new_state]
        m.state_seen[nr, ns] = True
        all_actions = np.arange(num_actions)
        slots = m.num_pairs[nr, None] + all_actions  # (new runs, A)
        m.pairs[nr[:, None], slots] = ns[:, None] * num_actions + all_actions
        m.num_pairs[nr] += num_actions
        m.pair_seen[nr, ns] = True
        m.next_state[nr, ns] = ns[:, None]
        m.reward[nr, ns] = 0.0
        m.terminal[nr, ns] = False
        m.last_tried[nr, ns] = 0
    new_pair = ~m.pair_seen[runs, s, a]
    nr = runs[new_pair]
    m.pairs[nr, m.num_pairs[nr]] = s[new_pair] * num_actions + a[new_pair]
    m.num_pairs[nr] += 1
    m.pair_seen[runs, s, a] = True
    m.state_seen[runs, s] = True
    m.next_state[runs, s, a] = s_next
    m.reward[runs, s, a] = r
    m.terminal[runs, s, a] = terminal
    m.last_tried[runs, s, a] = t
    return m


def exploration_bonus(kappa: float, tau):
    """Dyna-Q+ (§8.3): the planning reward becomes r + kappa * sqrt(tau)."""
    return kappa * np.sqrt(tau)


def planning(Q, model: Model, runs, n: int, t, kappa: float, alpha, gamma, rng: np.random.Generator):
    """Step (f): n updates from pairs drawn uniformly among each run's observed pairs.

    kappa = 0 gives Dyna-Q; kappa > 0 adds the Dyna-Q+ bonus with tau = t - last_tried.
    """
    num_actions = Q.shape[2]
    for _ in range(n):
        k = (rng.random(len(runs)) * model.num_pairs[runs]).astype(np.int64)
        pair = model.pairs[runs, k]
        s, a = pair // num_actions, pair % num_actions
        r = model.reward[runs, s, a] + exploration_bonus(kappa, t - model.last_tried[runs, s, a])
        Q = q_update(Q, runs, s, a, r, model.next_state[runs, s, a], model.terminal[runs, s, a], alpha, gamma)
    return Q


def epsilon_greedy_batch(q: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """One action per row of q (runs, A): greedy with random tie-breaking, random with prob. epsilon."""
    ties = q == q.max(axis=1, keepdims=True)
    greedy = (rng.random(q.shape) * ties).argmax(axis=1)  # uniform among the tied maxima
    explore = rng.random(q.shape[0]) < epsilon
    return np.where(explore, rng.integers(q.shape[1], size=q.shape[0]), greedy)


# ----------------------------------------------------------------------------------------------
# Experiment
# ----------------------------------------------------------------------------------------------
def run_dyna(args: Args, n: int, plus: bool, rng: np.random.Generator) -> dict:
    """All runs at once. Episode mode: until every run has `num_episodes` episodes; step mode (changing
    mazes): `num_steps` real steps per run. Returns steps and returns per episode, cumulative reward."""
    step_mode = args.env_id in CHANGING_MAZE_STEPS
    num_steps = (args.num_steps or CHANGING_MAZE_STEPS.get(args.env_id, 0)) if step_mode else 0
    R, E = args.num_runs, args.num_episodes
    envs = [make_env(args.env_id) for _ in range(R)]
    S, A = envs[0].observation_space.n, envs[0].action_space.n
    Q = np.zeros((R, S, A))
    model = empty_model(R, S, A)
    kappa = args.kappa if plus else 0.0
    state = np.array([env.reset(seed=args.seed + k)[0] for k, env in enumerate(envs)], dtype=np.int64)
    for k, env in enumerate(envs):
        env.action_space.seed(args.seed + k)
    t = np.zeros(R, dtype=np.int64)  # real time steps so far (the Dyna-Q+ clock)
    episode = np.zeros(R, dtype=np.int64)
    ep_steps, ep_return = np.zeros(R, dtype=np.int64), np.zeros(R)
    steps, returns = np.zeros((R, E), dtype=np.int64), np.zeros((R, E))
    cumulative = np.zeros((R, num_steps))
    total_reward = np.zeros(R)
    while True:
        runs = np.flatnonzero(t < num_steps if step_mode else episode < E)
        if len(runs) == 0:
            break
        s = state[runs]
        a = epsilon_greedy_batch(Q[runs, s], args.epsilon, rng)
        out = [envs[k].step(int(act)) for k, act in zip(runs, a, strict=True)]
        s_next = np.array([o[0] for o in out], dtype=np.int64)
        r = np.array([o[1] for o in out], dtype=np.float64)
        terminated = np.array([o[2] for o in out], dtype=bool)
        truncated = np.array([o[3] for o in out], dtype=bool)
        t[runs] += 1
        # (d) direct RL; a truncation keeps the bootstrap term, only `terminated` removes it.
        Q = q_update(Q, runs, s, a, r, s_next, terminated, args.alpha, args.gamma)
        model = model_update(model, runs, s, a, r, s_next, terminated, t[runs], plus)  # (e)
        Q = planning(Q, model, runs, n, t[runs], kappa, args.alpha, args.gamma, rng)  # (f)
        ep_steps[runs] += 1
        ep_return[runs] += r
        total_reward[runs] += r
        if step_mode:
            cumulative[runs, t[runs] - 1] = total_reward[runs]
        state[runs] = s_next
        for k in runs[terminated | truncated]:
            if episode[k] < E:
                steps[k, episode[k]], returns[k, episode[k]] = ep_steps[k], ep_return[k]
            episode[k] += 1
            ep_steps[k], ep_return[k] = 0, 0.0
            state[k] = envs[k].reset()[0]
    return {"steps": steps, "returns": returns, "cumulative": cumulative, "Q": Q, "episodes": episode}


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
    if args.num_runs <= 0:
        fail(f"--num-runs must be a positive integer, got {args.num_runs}")
    if args.num_episodes <= 0:
        fail(f"--num-episodes must be a positive integer, got {args.num_episodes}")
    if args.num_steps is not None and args.num_steps <= 0:
        fail(f"--num-steps must be a positive integer, got {args.num_steps}")
    if not args.planning_steps or any(n < 0 for n in args.planning_steps):
        fail(f"--planning-steps must be non-negative integers, got {args.planning_steps}")
    for name in ("alpha", "gamma", "epsilon"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0 or (name == "alpha" and value == 0.0):
            fail(f"--{name} must be in {'(0' if name == 'alpha' else '[0'}, 1], got {value}")
    if not args.kappa >= 0:
        fail(f"--kappa must be non-negative, got {args.kappa}")
    if args.env_id not in LOCAL_ENVS:
        try:
            env_spec(args.env_id)
        except gym.error.Error as error:
            fail(f"--env-id {args.env_id} is unknown ({error}); use one of: {', '.join(LOCAL_ENVS)}, FrozenLake-v1 "
                 "(or another Gymnasium env with Discrete observations and actions)")  # fmt: skip
    try:
        env = make_env(args.env_id)
    except Exception as error:  # a registered id whose dependencies are missing, for instance
        fail(f"--env-id {args.env_id} could not be made ({type(error).__name__}); use one of: "
             f"{', '.join(LOCAL_ENVS)}, FrozenLake-v1")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    for kind, space in (("observation", obs_space), ("action", act_space)):
        if not isinstance(space, gym.spaces.Discrete):
            fail(f"--env-id {args.env_id} has a {type(space).__name__} {kind} space; tabular Dyna-Q needs "
                 f"Discrete states and actions, e.g. DynaMaze or FrozenLake-v1")  # fmt: skip
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
    variants = {"dyna-q": [False], "dyna-q+": [True], "both": [False, True]}[args.algorithm]
    step_mode = args.env_id in CHANGING_MAZE_STEPS
    results = {}
    for plus in variants:
        for n in args.planning_steps:
            label = f"{'Dyna-Q+' if plus else 'Dyna-Q'} n={n}"
            res = run_dyna(args, n, plus, rng)
            results[label] = res
            if step_mode:
                final = res["cumulative"][:, -1]
                print(f"{label}: cumulative reward after {res['cumulative'].shape[1]} steps = "
                      f"{final.mean():.1f} +- {final.std(ddof=1) / np.sqrt(len(final)) if len(final) > 1 else 0:.1f}")  # fmt: skip
            else:
                mean = res["steps"].mean(axis=0)
                shown = ", ".join(f"ep{e}={mean[e - 1]:.1f}" for e in (1, 2, 3, 10, args.num_episodes)
                                  if e <= args.num_episodes)  # fmt: skip
                print(f"{label}: mean steps per episode {shown}; mean return over the last 10% of episodes = "
                      f"{res['returns'][:, -max(1, args.num_episodes // 10):].mean():.3f}")  # fmt: skip

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, res in results.items():
        if step_mode:
            ax.plot(np.arange(1, res["cumulative"].shape[1] + 1), res["cumulative"].mean(axis=0), label=label)
        elif args.env_id in LOCAL_ENVS:  # Figure 8.2 starts at episode 2: episode 1 is off its scale for all n
            episodes = np.arange(2, args.num_episodes + 1)
            ax.plot(episodes, res["steps"].mean(axis=0)[1:], label=f"{label} planning steps")
        else:  # a stochastic Gymnasium task: success rate (return) per episode, smoothed over 5% of the run
            width = max(1, args.num_episodes // 20)
            smooth = np.convolve(res["returns"].mean(axis=0), np.ones(width) / width, mode="valid")
            ax.plot(np.arange(width, args.num_episodes + 1), smooth, label=label)
    if step_mode:
        change = make_env(args.env_id).change_at
        ax.axvline(change, color="gray", linestyle=":", label="maze changes")
        ax.set_xlabel("Time steps")
        ax.set_ylabel(f"Cumulative reward (mean of {args.num_runs} runs)")
    elif args.env_id in LOCAL_ENVS:
        ax.set_xlabel("Episodes")
        ax.set_ylabel(f"Steps per episode (mean of {args.num_runs} runs)")
        ax.set_ylim(0, 800)
    else:
        ax.set_xlabel("Episodes")
        ax.set_ylabel(f"Return per episode (mean of {args.num_runs} runs, moving average)")
    ax.set_title(f"{args.env_id}: $\\alpha$={args.alpha}, $\\gamma$={args.gamma}, $\\epsilon$={args.epsilon}"
                 + (f", $\\kappa$={args.kappa}" if True in variants else ""))  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)
    wall = time.time() - start
    print(f"{args.env_id}: {args.num_runs} runs, {wall:.1f} s; figure: {args.plot}")
    return {"results": results, "wall_time": wall}


if __name__ == "__main__":
    main(tyro.cli(Args))
