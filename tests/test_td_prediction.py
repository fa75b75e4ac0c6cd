"""Tests of algorithms/td_prediction.py: TD(0) vs constant-alpha MC on the random walk (S&B Example 6.2)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_one_line_exit_2, load_algo
from gymnasium.utils.env_checker import check_env

m = load_algo("td_prediction")


def test_environment_follows_the_gymnasium_api_and_example_6_2():
    env = m.RandomWalk(5, 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec" warning: the env is not registered, by design
        check_env(env)
    assert env.reset(seed=0) == (3, {})  # start in C
    assert env.step(1) == (4, 0.0, False, False, {})
    assert env.step(1) == (5, 0.0, False, False, {})
    assert env.step(1) == (6, 1.0, True, False, {})  # +1 only on the right exit
    env.reset()
    for _ in range(2):
        env.step(0)
    assert env.step(0) == (0, 0.0, True, False, {})


def test_true_values_and_initial_rms_error():
    v = m.true_values(5, 0.0, 1.0)
    np.testing.assert_allclose(v, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    V = np.array([0, 0.5, 0.5, 0.5, 0.5, 0.5, 0])
    # by hand: the errors are 1/3, 1/6, 0, 1/6, 1/3, so the mean square is (10/36) / 5 = 1/18
    assert m.rms_error(V, v) == pytest.approx(np.sqrt(1 / 18), abs=1e-12)
    assert abs(m.rms_error(V, v) - 0.2357) < 1e-4


def test_td0_and_mc_on_a_hand_episode():
    # C -> D -> E -> right exit, rewards 0, 0, 1; values 0.5; alpha = 0.1; gamma = 1
    states, rewards, lengths = np.array([[3, 4, 5, 6]]), np.array([[0.0, 0.0, 1.0]]), np.array([3])
    V = np.full((1, 1, 7), 0.5)
    V[..., [0, 6]] = 0
    td = m.td0_episode(V, states, rewards, lengths, [0.1])[0, 0]
    # TD(0): C and D move towards 0 + 0.5 (no change); E moves towards 1 + 0: 0.5 + 0.1 * 0.5
    np.testing.assert_allclose(td, [0, 0.5, 0.5, 0.5, 0.5, 0.55, 0])
    mc = m.constant_alpha_mc_episode(V, states, rewards, lengths, [0.1])[0, 0]
    # MC: every visited state moves towards G = 1
    np.testing.assert_allclose(mc, [0, 0.5, 0.5, 0.55, 0.55, 0.55, 0])


def test_mc_with_a_revisited_state_updates_in_order():
    # C, B, C, D, E, right: C is visited twice and updated twice, the second time from the first's result
    states, rewards, lengths = np.array([[3, 2, 3, 4, 5, 6]]), np.array([[0.0, 0, 0, 0, 1]]), np.array([5])
    V = np.zeros((1, 1, 7))
    mc = m.constant_alpha_mc_episode(V, states, rewards, lengths, [0.5])[0, 0]
    # V(C): 0 -> 0.5 -> 0.75; B, D, E: 0.5
    np.testing.assert_allclose(mc, [0, 0, 0.5, 0.75, 0.5, 0.5, 0])
    np.testing.assert_allclose(m.episode_returns(rewards[0], 0.5), [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1])


def reference(method, V, states, rewards, alpha):
    """Slow per-step reference of both methods for one run's unpadded episode (book pseudocode)."""
    V = V.copy()
    T = len(rewards)
    if method == "td":
        for t in range(T):
            V[states[t]] += alpha * (rewards[t] + V[states[t + 1]] - V[states[t]])
    else:
        for t in range(T):
            G = sum(rewards[t:])
            V[states[t]] += alpha * (G - V[states[t]])
    return V


def test_vectorised_padded_batch_equals_per_run_reference():
    episodes = m.generate_episodes(m.RandomWalk(5, 0.0, 1.0), num_runs=6, num_episodes=4, seed=3)
    alphas = [0.1, 0.3]
    for method, ref in ((m.td0_episode, "td"), (m.constant_alpha_mc_episode, "mc")):
        V = np.full((2, 6, 7), 0.5)
        V[..., [0, 6]] = 0
        slow = V.copy()
        for states, rewards, lengths in episodes:
            assert lengths.max() == rewards.shape[1] and lengths.min() >= 3
            V = method(V, states, rewards, lengths, alphas)
            for a, alpha in enumerate(alphas):
                for r in range(6):
                    T = lengths[r]
                    slow[a, r] = reference(ref, slow[a, r], states[r, :T + 1], rewards[r, :T], alpha)
        np.testing.assert_allclose(V, slow, atol=1e-12)
        assert np.all(V[..., [0, 6]] == 0)  # terminals never move


def test_episodes_are_valid_walks_and_reproducible():
    episodes = m.generate_episodes(m.RandomWalk(5, 0.0, 1.0), num_runs=5, num_episodes=3, seed=7)
    again = m.generate_episodes(m.RandomWalk(5, 0.0, 1.0), num_runs=5, num_episodes=3, seed=7)
    for (states, rewards, lengths), (s2, r2, l2) in zip(episodes, again, strict=True):
        assert np.array_equal(states, s2) and np.array_equal(rewards, r2) and np.array_equal(lengths, l2)
        for r in range(5):
            T = lengths[r]
            walk = states[r, :T + 1]
            assert walk[0] == 3 and walk[-1] in (0, 6) and np.all(np.abs(np.diff(walk)) == 1)
            assert np.all((walk[1:-1] >= 1) & (walk[1:-1] <= 5))
            assert rewards[r].sum() == (walk[-1] == 6)


def test_td_beats_mc_after_100_episodes():
    """Must show: the initial RMS error is 0.2357; after 100 episodes, averaged over 100 runs, TD(0) with
    alpha = 0.1 has a lower RMS error than constant-alpha MC with the best of alpha = 0.01..0.04.

    Paired comparison: every method replays the same 100 runs' walks (same seed), so the per-run difference
    d_r = err_MC,r - err_TD,r is taken and its standard error is sd(d) / sqrt(100). We require mean(d) > 3 SE,
    for the best MC step size and also for each of the four (so the selection of "best" does not matter).
    """
    episodes = m.generate_episodes(m.RandomWalk(5, 0.0, 1.0), 100, 100, seed=1)
    v = m.true_values(5, 0.0, 1.0)
    td, _ = m.run_method(m.td0_episode, episodes, [0.1], 5, v)
    mc, _ = m.run_method(m.constant_alpha_mc_episode, episodes, [0.01, 0.02, 0.03, 0.04], 5, v)
    assert abs(td[0, 0, 0] - 0.2357) < 1e-4
    for i in range(4):
        d = mc[i, :, -1] - td[0, :, -1]
        assert d.mean() > 3 * d.std(ddof=1) / np.sqrt(100), f"MC alpha index {i}"


def test_main_reports_what_the_functions_compute(tmp_path):
    """main at a small size: the figure is written (its missing directory created) and the reported
    MC-minus-TD difference is the one the pure functions give on the same walks."""
    result = m.main(m.Args(num_runs=5, num_episodes=10, plot=str(tmp_path / "sub" / "fig.png")))
    assert (tmp_path / "sub" / "fig.png").exists()
    assert abs(result["initial_rms"] - 0.2357) < 1e-4
    episodes = m.generate_episodes(m.RandomWalk(5, 0.0, 1.0), 5, 10, seed=1)
    v = m.true_values(5, 0.0, 1.0)
    td, _ = m.run_method(m.td0_episode, episodes, [0.1], 5, v)
    mc, _ = m.run_method(m.constant_alpha_mc_episode, episodes, [0.01, 0.02, 0.03, 0.04], 5, v)
    best = mc[:, :, -1].mean(axis=1).min()
    assert best - td[0, :, -1].mean() == pytest.approx(result["mc_minus_td_final"], abs=1e-12)


@pytest.mark.parametrize("change, expected", [
    ({"num_runs": 0}, "--num-runs"), ({"num_episodes": -3}, "--num-episodes"), ({"td_alphas": (0.0,)}, "--td-alphas"),
    ({"mc_alphas": (0.01, float("nan"))}, "--mc-alphas"), ({"example_alpha": 0.2}, "--example-alpha"),
    ({"plot": "/proc/onefile-rl-missing/fig.png"}, "cannot write --plot"),
])
def test_bad_input_is_one_line_exit_2(change, expected, capsys, tmp_path):
    args = m.Args(**{"plot": str(tmp_path / "fig.png"), **change})
    assert_one_line_exit_2(lambda: m.main(args), expected, capsys)
    assert not any(tmp_path.iterdir())  # nothing written
