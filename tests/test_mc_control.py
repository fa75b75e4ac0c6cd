"""Tests of algorithms/mc_control.py: the update math, Monte Carlo ES (Figure 5.2), epsilon-soft control."""

from __future__ import annotations

import numpy as np
import pytest
from blackjack_exact import exact_q
from conftest import load_algo

mc = load_algo("mc_control")
STICK, HIT = 0, 1

# Figure 5.2, usable ace: stick on 19-21 everywhere and on 18 against a dealer 2..8, hit otherwise.
# (The exact recursion over the infinite deck in blackjack_exact.py gives the same 100 cells.)
BOOK_USABLE = np.full((22, 11), HIT)
BOOK_USABLE[19:22, 1:11] = STICK
BOOK_USABLE[18, 2:9] = STICK


def test_exact_reference_reproduces_figure_5_2_usable_ace():
    for s in range(12, 22):
        for d in range(1, 11):
            stick, hit = exact_q(s, 1, d)
            assert (STICK if stick >= hit else HIT) == BOOK_USABLE[s, d], (s, d)


# ---------------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------------
def test_first_visit_update_by_hand():
    # states are 1-tuples so q is indexed [state, action]; S = x, y, x; A = 1, 0, 1; R = 0, 1, -1
    # gamma = 0.5: G2 = -1, G1 = 1 + 0.5*(-1) = 0.5, G0 = 0 + 0.5*0.5 = 0.25
    # (x, 1) occurs at t=0 and t=2: only the first visit (G0 = 0.25) is averaged
    q, n = np.zeros((2, 2)), np.zeros((2, 2), dtype=int)
    q[1, 1] = 0.7  # y's other action already looks better, so greedy(y) becomes 1 after y's update
    policy = np.zeros(2, dtype=int)
    mc.first_visit_update(q, n, policy, [(0,), (1,), (0,)], [1, 0, 1], [0.0, 1.0, -1.0], 0.5)
    assert q[0, 1] == pytest.approx(0.25) and n[0, 1] == 1
    assert q[1, 0] == pytest.approx(0.5) and n[1, 0] == 1
    assert policy[0] == 1 and policy[1] == 1
    # a second identical episode: the incremental mean stays the sample mean
    mc.first_visit_update(q, n, None, [(0,), (1,), (0,)], [1, 0, 1], [0.0, 1.0, 1.0], 1.0)
    assert q[0, 1] == pytest.approx((0.25 + 2.0) / 2) and n[0, 1] == 2


def test_epsilon_soft_probs():
    probs = mc.epsilon_soft_probs(np.array([[0.1, 0.5], [0.3, 0.3], [2.0, -1.0]]), 0.2)
    np.testing.assert_allclose(probs, [[0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])  # tie -> lowest index
    np.testing.assert_allclose(mc.epsilon_soft_probs(np.zeros((3, 4)), 1.0), np.full((3, 4), 0.25))


def test_start_state_is_set_through_unwrapped():
    env = mc.make_blackjack(0)
    for s in range(12, 22):
        for u in (0, 1):
            env.reset()
            obs = mc.set_start_state(env, s, 7, u)
            game = env.unwrapped
            assert obs == (s, 7, u) == game._get_obs()
            assert game.dealer[0] == 7 and len(game.dealer) == 2
    # sticking with 21 against a dealer 7 (whose final sum is at most 21) never loses
    env.reset()
    mc.set_start_state(env, 21, 7, 0)
    assert env.step(STICK)[1] >= 0


# ---------------------------------------------------------------------------------------------------
# Must show
# ---------------------------------------------------------------------------------------------------
def _resolvable(q_counts, z=4.0):
    """Usable-ace cells whose exact action gap exceeds z standard errors of the estimated gap.

    Returns lie in [-1, 1], so each sample mean has SE <= 1/sqrt(visits); the gap's SE is then at most
    sqrt(1/n_stick + 1/n_hit). A cell with a smaller gap can legitimately come out either way.
    """
    cells = []
    for s in range(12, 22):
        for d in range(1, 11):
            n_stick, n_hit = q_counts[s, d, 1, STICK], q_counts[s, d, 1, HIT]
            if min(n_stick, n_hit) == 0:
                continue
            stick, hit = exact_q(s, 1, d)
            if abs(stick - hit) > z * np.sqrt(1 / n_stick + 1 / n_hit):
                cells.append((s, d))
    return cells


def test_monte_carlo_es_robust_cells_small():
    # 40k episodes: about 100 exploring starts per state-action pair. The cells that are resolvable at this
    # budget (|gap| > 4 SE) must already agree with Figure 5.2; they include the whole 21 row (stick, gaps
    # >= 0.5). Low usable-ace sums are visited only from starts below them, and the 18 row (gaps 0.04-0.09)
    # is the noisy one at any modest budget; the full figure is the slow test below.
    q, policy, n = mc.monte_carlo_es(40_000, seed=2)
    cells = _resolvable(n)
    assert {(21, d) for d in range(1, 11)} <= set(cells)
    assert len(cells) >= 15
    wrong = [(s, d) for s, d in cells if policy[s, d, 1] != BOOK_USABLE[s, d]]
    assert not wrong


@pytest.mark.slow
def test_monte_carlo_es_figure_5_2_usable_ace():
    # Figure 5.2's usable-ace policy in full, after 2 million episodes (~4 CPU-minutes here). The noisy
    # cells are 18 against A, 9, 10 (exact gaps -0.04, -0.08, -0.04) and 18 against 2-5 (+0.05..+0.06):
    # at this budget each of their pairs has >= 5,000 visits, so a gap's SE is <= 0.02 and these cells sit
    # 2-4 SE from a tie; another seed can flip one of them (the 18-vs-A cell first). Measured with seed 1.
    q, policy, n = mc.monte_carlo_es(2_000_000, seed=1)
    np.testing.assert_array_equal(policy[12:22, 1:11, 1], BOOK_USABLE[12:22, 1:11])
    # and v* = max_a Q agrees with the exact values within 4 SE (+0.02: the averages still hold returns
    # that followed earlier, worse policies) on the usable-ace side. Row 21 is left out: an exploring
    # start there is a natural (+1 unless the dealer has one), which the reference does not model.
    for s in range(12, 21):
        for d in range(1, 11):
            a = policy[s, d, 1]
            assert abs(q[s, d, 1, a] - max(exact_q(s, 1, d))) < 4 / np.sqrt(n[s, d, 1, a]) + 0.02, (s, d)


def test_epsilon_soft_greedy_beats_stick_on_20():
    _, greedy, _ = mc.on_policy_epsilon_soft(10_000, 0.1, seed=4)
    env = mc.make_blackjack(11)
    stick20 = mc.initial_policy()
    learned = mc.play_games(env, lambda o: int(greedy[o]), 5_000)
    baseline = mc.play_games(env, lambda o: int(stick20[o]), 5_000)
    # independent games: SE of the difference = sqrt(se1^2 + se2^2); require 3 of them
    se = np.sqrt(learned.var(ddof=1) / len(learned) + baseline.var(ddof=1) / len(baseline))
    assert learned.mean() - baseline.mean() > 3 * se, (learned.mean(), baseline.mean(), se)
    # greedy policies never stick below 12 (they are not asked) and stick on 21
    assert np.all(greedy[21, 1:11, :] == STICK)
