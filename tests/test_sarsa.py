"""Tests of algorithms/sarsa.py: the SARSA target, the windy gridworld, Example 6.5 and cliff walking."""

from __future__ import annotations

from collections import Counter, deque
from math import sqrt

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_one_line_exit_2, load_algo
from toy_envs import OneStep

sarsa = load_algo("sarsa")


# ---------------------------------------------------------------- math


def test_sarsa_target_by_hand():
    # R + gamma * Q(S', A'): -1 + 0.9 * Q(S', 2) = -1 + 0.9 * 3 = 1.7
    q_next = np.array([1.0, 2.0, 3.0, 4.0])
    assert sarsa.sarsa_target(-1.0, q_next, 2, 0.9, False) == pytest.approx(1.7)
    # terminal S': no bootstrap, the target is the reward alone
    assert sarsa.sarsa_target(-1.0, q_next, 2, 0.9, True) == pytest.approx(-1.0)
    # gamma = 0: the reward alone as well
    assert sarsa.sarsa_target(5.0, q_next, 3, 0.0, False) == pytest.approx(5.0)


def test_sarsa_target_batched():
    rewards = np.array([0.0, 1.0, -1.0])
    q_next = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    actions = np.array([1, 0, 1])
    terminated = np.array([False, False, True])
    # 0 + 0.5 * 2 = 1;  1 + 0.5 * 3 = 2.5;  terminal: -1
    np.testing.assert_allclose(
        sarsa.sarsa_target(rewards, q_next, actions, 0.5, terminated), [1.0, 2.5, -1.0]
    )


def test_epsilon_greedy_probs_with_ties():
    q = np.array([1.0, 3.0, 3.0, 0.0])
    # epsilon / 4 = 0.05 everywhere, and the two tied greedy actions share 0.8: 0.4 each
    np.testing.assert_allclose(sarsa.epsilon_greedy_probs(q, 0.2), [0.05, 0.45, 0.45, 0.05])
    np.testing.assert_allclose(sarsa.epsilon_greedy_probs(q, 0.0), [0.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(sarsa.epsilon_greedy_probs(q, 1.0), [0.25] * 4)
    np.testing.assert_allclose(sarsa.epsilon_greedy_probs(np.zeros(4), 0.1), [0.25] * 4)


def test_epsilon_greedy_action_matches_its_probabilities():
    q = np.array([1.0, 3.0, 3.0, 0.0])
    rng = np.random.default_rng(0)
    n = 40_000
    counts = np.bincount([sarsa.epsilon_greedy_action(q, 0.2, rng) for _ in range(n)], minlength=4)
    p = sarsa.epsilon_greedy_probs(q, 0.2)
    # each frequency is a binomial proportion: 4 standard errors sqrt(p (1 - p) / n)
    np.testing.assert_array_less(np.abs(counts / n - p), 4 * np.sqrt(p * (1 - p) / n) + 1e-12)


@pytest.mark.parametrize("terminal", [True, False])
def test_episode_bootstraps_only_when_truncated(terminal):
    q = np.array([[0.0, -1.0], [5.0, 3.0]])  # greedy: action 0 in state 0, A' = 0 in state 1 (Q = 5)
    episode_return, length = sarsa.sarsa_episode(
        OneStep(terminal), q, 0.5, 0.0, 0.9, np.random.default_rng(0)
    )
    assert (episode_return, length) == (1.0, 1)
    # terminated: 0 + 0.5 * (1 - 0) = 0.5;  truncated by a time limit: 0 + 0.5 * (1 + 0.9 * 5) = 2.75
    assert q[0, 0] == pytest.approx(0.5 if terminal else 2.75)
    np.testing.assert_array_equal(q[1], [5.0, 3.0])


# ---------------------------------------------------------------- the windy gridworld


def test_windy_gridworld_dynamics():
    env = sarsa.WindyGridworldEnv()
    obs, _ = env.reset(seed=0)
    assert obs == 30 and env.observation_space.n == 70 and env.action_space.n == 4
    assert env.step(sarsa.RIGHT)[:4] == (31, -1.0, False, False)  # column 0 has no wind
    env.position = (3, 3)
    assert env.step(sarsa.RIGHT)[0] == 2 * 10 + 4  # the wind of column 3 (1) lifts the move by one row
    env.position = (3, 6)
    assert env.step(sarsa.UP)[0] == 0 * 10 + 6  # up 1 plus wind 2 from row 3
    env.position = (0, 7)
    assert env.step(sarsa.UP)[0] == 0 * 10 + 7  # clipped at the top edge
    env.position = (5, 7)
    assert env.step(sarsa.DOWN)[0] == 4 * 10 + 7  # down 1, wind 2 up: one row up
    env.position = (3, 8)
    assert env.step(sarsa.LEFT)[:4] == (
        27,
        -1.0,
        False,
        False,
    )  # column 8's wind lifts the move past the goal
    env.position = (4, 8)
    assert env.step(sarsa.LEFT)[:4] == (37, -1.0, True, False)  # ... and from one row lower onto it


def test_windy_gridworld_shortest_path_is_15():
    """Breadth-first search over the environment's own step: the book's minimum of 15 steps."""
    env = sarsa.WindyGridworldEnv()
    start, _ = env.reset()
    distance, queue = {start: 0}, deque([start])
    while queue:
        state = queue.popleft()
        for action in range(4):
            env.position = divmod(state, 10)
            next_state, _, terminated, _, _ = env.step(action)
            if terminated:
                assert distance[state] + 1 == 15
                return
            if next_state not in distance:
                distance[next_state] = distance[state] + 1
                queue.append(next_state)
    pytest.fail("the goal is unreachable")


def test_example_6_5_windy_gridworld():
    """SARSA, alpha 0.5, epsilon 0.1, 170 episodes (Example 6.5), 20 runs.

    The greedy path asserted is that of the run-averaged Q table. One run's greedy path is 15 steps in only a
    minority of runs (measured: 5-9 of 30 after 170 episodes, and about 1 in 3 even after 1000): with a
    constant alpha = 0.5 its Q keeps fluctuating by about a step's reward, so the greedy choice between
    nearly equal actions is noisy and sometimes loops between two states. The mean of the runs' Q tables
    estimates E[Q] and its greedy path is the optimal 15 steps (the book's inset).
    """
    runs = 20
    result = sarsa.run_sarsa("WindyGridworld", 0.5, 0.1, 1.0, 170, runs, seed=1)
    env = sarsa.WindyGridworldEnv()
    assert sarsa.greedy_path_length(env, result["q"].mean(axis=0)) == 15
    # The figure: 170 episodes take about 8000 time steps (read off the book's x axis, to +-200 steps).
    # The book's curve is ONE run, itself a draw with the per-run sd measured here, so the tolerance is
    # 3 sd * sqrt(1 + 1 / runs) (the difference of one run and a mean of `runs`) plus the reading precision.
    total_steps = result["lengths"].sum(axis=1)
    sd = total_steps.std(ddof=1)
    tol = 3 * sd * sqrt(1 + 1 / runs) + 200
    assert abs(total_steps.mean() - 8000) <= tol, (total_steps.mean(), tol)
    # learning happened: the last 20 episodes are far shorter than the first (thousands of steps at first)
    assert result["lengths"][:, -20:].mean() < result["lengths"][:, 0].mean() / 10


# ---------------------------------------------------------------- cliff walking (Example 6.6)

BOOK_SARSA_RETURN = -28.0  # Example 6.6's figure, SARSA's curve over episodes 100-500
READING_PRECISION = 3.0  # the figure's y axis has ticks every 25; the curve can be read to about +-3


def check_cliff_sarsa(runs: int):
    result = sarsa.run_sarsa("CliffWalking-v1", 0.5, 0.1, 1.0, 500, runs, seed=1)
    per_run = result["returns"][:, 100:500].mean(axis=1)  # each run's online return over episodes 100-500
    # tolerance: 3 standard errors of the mean over runs (sd measured from the runs) + the reading precision
    tol = 3 * per_run.std(ddof=1) / sqrt(runs) + READING_PRECISION
    assert abs(per_run.mean() - BOOK_SARSA_RETURN) <= tol, (per_run.mean(), tol)
    # Greedy path: asserted on the MAJORITY of runs (the safe path along the top row, 17 steps); a minority
    # of runs end with a 15/19-step path or a looping greedy policy (alpha = 0.5 keeps Q noisy). The
    # run-averaged Q must give the safe path too.
    env = gym.make("CliffWalking-v1")
    paths = Counter(sarsa.greedy_path_length(env, q) for q in result["q"])
    assert paths[17] > runs / 2, paths
    assert sarsa.greedy_path_length(env, result["q"].mean(axis=0)) == 17


def test_cliff_walking_sarsa_small():
    check_cliff_sarsa(runs=10)


@pytest.mark.slow
def test_cliff_walking_sarsa_full():
    check_cliff_sarsa(runs=100)


# ---------------------------------------------------------------- main


def test_main_writes_the_figure(tmp_path):
    plot = tmp_path / "sub" / "fig.png"
    summary = sarsa.main(sarsa.Args(num_runs=3, num_episodes=30, eval_episodes=2, plot=str(plot)))
    assert plot.stat().st_size > 0
    assert len(summary["greedy_path_lengths"]) == 3 and summary["time_steps_mean"] > 30


@pytest.mark.parametrize("change, expected", [
    ({"env_id": "Foo-v0"}, "Foo-v0 is unknown"), ({"env_id": "CartPole-v1"}, "observation space"),
    ({"env_id": "Taxi-v3"}, "Taxi-v4"), ({"epsilon": 1.5}, "--epsilon"), ({"alpha": float("nan")}, "--alpha"),
    ({"num_runs": -1}, "--num-runs"), ({"plot": "/proc/onefile-rl-missing/fig.png"}, "cannot write --plot"),
])
def test_bad_input_is_one_line_exit_2(change, expected, capsys, tmp_path):
    args = sarsa.Args(**{"plot": str(tmp_path / "fig.png"), **change})
    assert_one_line_exit_2(lambda: sarsa.main(args), expected, capsys)
    assert not any(tmp_path.iterdir())  # nothing written
