"""Tests of algorithms/off_policy_mc.py: importance-sampling math, Example 5.4 / Figure 5.3, §5.7 control."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_algo

mc = load_algo("off_policy_mc")
BOOK_VALUE = -0.27726  # Example 5.4 (an exact recursion over the infinite deck gives -0.27720)


# ---------------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------------
def test_importance_ratio():
    assert mc.importance_ratio([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]) == 8.0
    assert mc.importance_ratio([1.0, 0.0], [0.5, 0.5]) == 0.0
    assert mc.importance_ratio([0.9, 0.1], [0.5, 0.25]) == pytest.approx(1.8 * 0.4)
    assert mc.importance_ratio([], []) == 1.0  # an empty product


def test_ordinary_and_weighted_estimates_by_hand():
    rhos = np.array([[0.0, 2.0, 4.0, 0.0]])
    returns = np.array([[1.0, -1.0, 1.0, 0.0]])
    # ordinary: cumsum(rho G) = 0, -2, 2, 2 divided by n = 1..4
    np.testing.assert_allclose(mc.ordinary_is_estimates(rhos, returns), [[0, -1, 2 / 3, 0.5]])
    # weighted: cumsum(rho G) / cumsum(rho) = 0/0 -> 0, -2/2, 2/6, 2/6
    np.testing.assert_allclose(mc.weighted_is_estimates(rhos, returns), [[0, -1, 1 / 3, 1 / 3]])
    # rows are independent runs
    both = mc.weighted_is_estimates(np.vstack([rhos, [[1.0, 1.0, 1.0, 1.0]]]), np.vstack([returns, returns]))
    np.testing.assert_allclose(both[1], [1, 0, 1 / 3, 1 / 4])


def test_off_policy_control_update_by_hand():
    # two states (1-tuples), b = 0.5 everywhere; episode S = x, y; A = 1, 0; R = 0, 1; gamma = 1
    q, c = np.zeros((2, 2)), np.zeros((2, 2))
    q[1, 1] = 5.0  # in y the greedy action is 1, so A_1 = 0 disagrees after y's update: stop there
    policy = np.array([1, 1])
    mc.off_policy_control_update(q, c, policy, [(0,), (1,)], [1, 0], [0.0, 1.0], [0.5, 0.5], 1.0)
    assert c[1, 0] == 1.0 and q[1, 0] == pytest.approx(1.0) and policy[1] == 1
    assert c[0, 1] == 0.0 and q[0, 1] == 0.0  # never reached: the loop broke at t = 1
    # now y's greedy action is taken: W = 1 at t=1, then W = 1/b = 2 at t=0
    q[1, 1] = 0.0
    policy[:] = 0
    mc.off_policy_control_update(q, c, policy, [(0,), (1,)], [0, 0], [0.0, 1.0], [0.5, 0.5], 1.0)
    assert c[1, 0] == 2.0 and q[1, 0] == pytest.approx(1.0)
    assert c[0, 0] == 2.0 and q[0, 0] == pytest.approx(2.0 / 2.0 * 1.0)


def test_start_state_is_example_5_4():
    env = mc.make_blackjack(0)
    for _ in range(20):
        env.reset()
        obs = mc.set_start_state(env, *mc.START_STATE)
        assert obs == mc.START_STATE == env.unwrapped._get_obs()
        assert env.unwrapped.player == [1, 2] and env.unwrapped.dealer[0] == 2  # ace + 2, dealer shows 2


# ---------------------------------------------------------------------------------------------------
# Must show: Example 5.4 / Figure 5.3
# ---------------------------------------------------------------------------------------------------
def _check_weighted_converges(runs, episodes):
    rhos, returns = mc.off_policy_prediction(runs, episodes, seed=7)
    weighted = mc.weighted_is_estimates(rhos, returns)
    ordinary = mc.ordinary_is_estimates(rhos, returns)
    final = weighted[:, -1]
    # the mean of `runs` independent final estimates: tol = 3 sd / sqrt(runs), sd measured over runs.
    # Weighted IS has an O(1/n) bias; at n >= 1,000 it is far below this tolerance.
    tol = 3 * final.std(ddof=1) / np.sqrt(runs)
    assert abs(final.mean() - BOOK_VALUE) < tol, (final.mean(), tol)
    # the ordinary estimate is unbiased: its final mean is also within 3 SE of the value
    final_o = ordinary[:, -1]
    assert abs(final_o.mean() - BOOK_VALUE) < 3 * final_o.std(ddof=1) / np.sqrt(runs)
    return final


def test_weighted_is_converges_small():
    _check_weighted_converges(runs=20, episodes=1_000)


@pytest.mark.slow
def test_weighted_is_converges_full_figure_5_3():
    # Figure 5.3's 100 runs x 10,000 episodes
    final = _check_weighted_converges(runs=100, episodes=10_000)
    # at 10,000 episodes the book's weighted-IS curve is near 0: a run-to-run sd of a few hundredths
    assert final.std(ddof=1) < 0.05


def test_weighted_is_has_lower_error_early():
    # Figure 5.3 at 10 episodes. Only the first 10 episodes matter, so use many short runs: 1,000 runs
    # x 10 episodes. Per run, the squared-error difference ordinary - weighted (paired: same episodes);
    # require its mean (= MSE_ordinary - MSE_weighted) to exceed 3 standard errors (sd / sqrt(runs)).
    runs = 1_000
    rhos, returns = mc.off_policy_prediction(runs, 10, seed=11)
    err_o = (mc.ordinary_is_estimates(rhos, returns) - BOOK_VALUE) ** 2
    err_w = (mc.weighted_is_estimates(rhos, returns) - BOOK_VALUE) ** 2
    diff = err_o[:, 9] - err_w[:, 9]
    assert diff.mean() > 3 * diff.std(ddof=1) / np.sqrt(runs), (err_o[:, 9].mean(), err_w[:, 9].mean())
    # Ordinary IS's errors are heavy-tailed (ratios up to 2^6), so also a sign test on the error summed
    # over episodes 1..10: under "no difference" the number of runs where weighted wins is
    # Binomial(m, 1/2) (m = runs without a tie); require more than m/2 + 3 sqrt(m)/2 wins.
    total = (err_o - err_w).sum(axis=1)
    m = int(np.sum(total != 0))
    assert np.sum(total > 0) > m / 2 + 3 * np.sqrt(m) / 2, (np.sum(total > 0), m)


def test_off_policy_control_beats_stick_on_20():
    _, policy = mc.off_policy_control(10_000, seed=8)
    env = mc.make_blackjack(9)
    learned = mc.play_games(env, lambda o: int(policy[o]), 5_000)
    baseline = mc.play_games(env, mc.stick_on_20_action, 5_000)
    se = np.sqrt(learned.var(ddof=1) / len(learned) + baseline.var(ddof=1) / len(baseline))
    assert learned.mean() - baseline.mean() > 3 * se, (learned.mean(), baseline.mean(), se)
    assert np.all(policy[21, 1:11, :] == 0)  # sticks on 21


# ---------------------------------------------------------------------------------------------------
# Running the file
# ---------------------------------------------------------------------------------------------------
def test_main_runs(tmp_path):
    fig, ctl = tmp_path / "f53.png", tmp_path / "ctl.png"
    result = mc.main(mc.Args(num_runs=2, num_episodes=50, control_episodes=500, eval_episodes=100,
                             plot=str(fig), control_plot=str(ctl)))
    assert fig.exists() and ctl.exists()
    assert -1 <= result["weighted_final_mean"] <= 1 and -1 <= result["control_return"] <= 1
