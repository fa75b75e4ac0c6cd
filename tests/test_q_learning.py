"""Tests of algorithms/q_learning.py: the Q-learning target, cliff walking (Example 6.6) and Taxi."""

from __future__ import annotations

from collections import Counter
from math import sqrt

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_one_line_exit_2, load_algo
from toy_envs import OneStep

ql = load_algo("q_learning")


# ---------------------------------------------------------------- math


def test_q_learning_target_by_hand():
    # R + gamma * max_a Q(S', a): -1 + 0.9 * 4 = 2.6, whatever action the behaviour policy takes next
    q_next = np.array([1.0, 2.0, 3.0, 4.0])
    assert ql.q_learning_target(-1.0, q_next, 0.9, False) == pytest.approx(2.6)
    assert ql.q_learning_target(-1.0, q_next, 0.9, True) == pytest.approx(-1.0)  # terminal: no bootstrap
    # ties and negative values: the max of [-3, -2, -2] is -2 -> 0 + 1.0 * -2
    assert ql.q_learning_target(0.0, np.array([-3.0, -2.0, -2.0]), 1.0, False) == pytest.approx(-2.0)


def test_q_learning_target_batched_against_a_loop():
    rng = np.random.default_rng(3)
    rewards, q_next = rng.normal(size=7), rng.normal(size=(7, 4))
    terminated = rng.random(7) < 0.4
    expected = [
        r + 0.95 * (0.0 if t else max(row)) for r, row, t in zip(rewards, q_next, terminated, strict=True)
    ]
    np.testing.assert_allclose(ql.q_learning_target(rewards, q_next, 0.95, terminated), expected)


def test_sarsa_comparison_target_by_hand():
    assert ql.sarsa_target(-1.0, np.array([1.0, 2.0, 3.0, 4.0]), 0, 0.9, False) == pytest.approx(-0.1)


@pytest.mark.parametrize("terminal", [True, False])
def test_episode_bootstraps_only_when_truncated(terminal):
    q = np.array([[0.0, -1.0], [3.0, 5.0]])
    ql.q_learning_episode(OneStep(terminal), q, 0.5, 0.0, 0.9, np.random.default_rng(0))
    # terminated: 0.5 * (1 - 0) = 0.5;  truncated by a time limit: 0.5 * (1 + 0.9 * max(3, 5)) = 2.75
    assert q[0, 0] == pytest.approx(0.5 if terminal else 2.75)


# ---------------------------------------------------------------- cliff walking (Example 6.6)


def test_gymnasium_cliff_walking_has_the_books_semantics():
    """CliffWalking-v1 in Gymnasium 1.4: no time limit; the cliff gives -100 and sends the agent back to the
    start WITHOUT ending the episode (the book's Example 6.6)."""
    env = gym.make("CliffWalking-v1")
    assert env.spec.max_episode_steps is None
    obs, _ = env.reset(seed=0)
    assert obs == 36
    assert env.step(1)[:4] == (36, -100, False, False)  # right from the start: into the cliff, back to start
    assert env.step(0)[:4] == (24, -1, False, False)  # up: an ordinary step
    for _ in range(11):
        obs, reward, terminated, truncated, _ = env.step(1)
    assert (obs, terminated) == (35, False)
    assert env.step(2)[:4] == (47, -1, True, False)  # down into the goal ends the episode


BOOK = {"Q-learning": -51.0, "SARSA": -28.0}  # Example 6.6's figure, episodes 100-500
READING_PRECISION = 3.0  # the figure's y axis has ticks every 25; the curves can be read to about +-3


def check_cliff(method: str, runs: int, path: int):
    result = ql.run_learner(method, "CliffWalking-v1", 0.5, 0.1, 1.0, 500, runs, seed=1)
    per_run = result["returns"][:, 100:500].mean(axis=1)  # each run's online return over episodes 100-500
    # tolerance: 3 standard errors of the mean over runs (sd measured from the runs) + the reading precision
    tol = 3 * per_run.std(ddof=1) / sqrt(runs) + READING_PRECISION
    assert abs(per_run.mean() - BOOK[method]) <= tol, (method, per_run.mean(), tol)
    # Greedy path of each run's final Q: asserted on the majority of runs (Q-learning: every run measured so
    # far walks the 13-step optimal path next to the cliff; SARSA: the 17-step safe path in most runs).
    env = gym.make("CliffWalking-v1")
    paths = Counter(ql.greedy_path_length(env, q) for q in result["q"])
    assert paths[path] > runs / 2, (method, paths)
    return per_run


def test_cliff_walking_q_learning_small():
    check_cliff("Q-learning", runs=10, path=13)


@pytest.mark.slow
def test_cliff_walking_full():
    q_runs = check_cliff("Q-learning", runs=100, path=13)
    s_runs = check_cliff("SARSA", runs=100, path=17)
    # the point of Example 6.6: SARSA's online return beats Q-learning's, by far more than 3 standard errors
    assert s_runs.mean() - q_runs.mean() > 3 * sqrt(s_runs.var(ddof=1) / 100 + q_runs.var(ddof=1) / 100)


# ---------------------------------------------------------------- Taxi


def test_taxi_learns():
    """Q-learning on Taxi-v4 (Taxi-v3 is deprecated in Gymnasium 1.4; v4 only fixes the optional rainy and
    fickle variants): alpha 0.5, epsilon 0.1, gamma 1, 2000 episodes, seed 1, one run. The greedy policy's
    mean return over 100 evaluation episodes (random start states, seed 2) must be >= 7; the optimum is
    about 8.5 (Gymnasium's reward threshold is 8). Measured: 7.98."""
    result = ql.run_learner("Q-learning", "Taxi-v4", 0.5, 0.1, 1.0, 2000, 1, seed=1)
    mean_return, _ = ql.evaluate_greedy(gym.make("Taxi-v4"), result["q"][0], 100, seed=2)
    assert mean_return >= 7.0, mean_return


# ---------------------------------------------------------------- main


def test_main_writes_the_figure(tmp_path):
    plot = tmp_path / "sub" / "fig.png"
    summary = ql.main(ql.Args(num_runs=2, num_episodes=30, report_from=10, eval_episodes=2, plot=str(plot)))
    assert plot.stat().st_size > 0
    assert summary["window"] == (10, 30) and len(summary["q_learning_greedy_path_lengths"]) == 2


def test_moving_average():
    np.testing.assert_allclose(ql.moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.5, 2.5, 3.5])


def test_same_seed_same_result():
    """FrozenLake is stochastic: the environments' seeds and the agent's generator must fix the run."""
    first = ql.run_learner("Q-learning", "FrozenLake-v1", 0.1, 0.1, 0.99, 50, 2, seed=3)
    second = ql.run_learner("Q-learning", "FrozenLake-v1", 0.1, 0.1, 0.99, 50, 2, seed=3)
    other = ql.run_learner("Q-learning", "FrozenLake-v1", 0.1, 0.1, 0.99, 50, 2, seed=4)
    np.testing.assert_array_equal(first["q"], second["q"])
    np.testing.assert_array_equal(first["lengths"], second["lengths"])
    assert not np.array_equal(first["lengths"], other["lengths"])


@pytest.mark.parametrize("change, expected", [
    ({"env_id": "Foo-v0"}, "Foo-v0 is unknown"), ({"epsilon": float("nan")}, "--epsilon"),
    ({"alpha": -0.5}, "--alpha"), ({"smoothing": 0}, "--smoothing"), ({"report_from": -1}, "--report-from"),
    ({"plot": "/proc/onefile-rl-missing/fig.png"}, "cannot write --plot"),
])
def test_bad_input_is_one_line_exit_2(change, expected, capsys, tmp_path):
    args = ql.Args(**{"plot": str(tmp_path / "fig.png"), **change})
    assert_one_line_exit_2(lambda: ql.main(args), expected, capsys)
    assert not any(tmp_path.iterdir())  # nothing written
