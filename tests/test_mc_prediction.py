"""Tests of algorithms/mc_prediction.py: the return/first-visit math, the random walk, Blackjack (Figure 5.1)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from blackjack_exact import exact_stick20_value
from conftest import load_algo

mc = load_algo("mc_prediction")


# ---------------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------------
def test_episode_returns_by_hand():
    # rewards R1..R4 = 1, 0, 2, 3; gamma = 0.5: G3 = 3, G2 = 2 + 1.5 = 3.5, G1 = 0 + 1.75, G0 = 1 + 0.875
    np.testing.assert_allclose(mc.episode_returns(np.array([1.0, 0.0, 2.0, 3.0]), 0.5),
                               [1.875, 1.75, 3.5, 3.0])
    np.testing.assert_allclose(mc.episode_returns(np.array([1.0, 0.0, 2.0, 3.0]), 1.0), [6, 5, 5, 3])
    assert mc.episode_returns(np.array([]), 1.0).shape == (0,)


def test_first_visit_vs_every_visit_on_hand_made_episode():
    # S = A, B, A, C, A (indices 0, 1, 0, 2, 0), R = 1, 0, 2, 0, 3, gamma = 1
    # returns G0..G4 = 6, 5, 5, 3, 3
    # first-visit: V(A) = G0 = 6, V(B) = G1 = 5, V(C) = G3 = 3
    # every-visit: V(A) = (G0 + G2 + G4) / 3 = (6 + 5 + 3) / 3 = 14/3
    states, rewards = [0, 1, 0, 2, 0], np.array([1.0, 0.0, 2.0, 0.0, 3.0])
    np.testing.assert_array_equal(mc.first_visit_mask(states), [True, True, False, True, False])
    values = {}
    for first in (True, False):
        sums, counts = np.zeros(4), np.zeros(4, dtype=int)
        mc.accumulate_episode(sums, counts, states, rewards, 1.0, first_visit=first)
        values[first] = mc.mc_values(sums, counts, initial=-9.0)
    np.testing.assert_allclose(values[True], [6, 5, 3, -9])  # state 3 never visited keeps `initial`
    np.testing.assert_allclose(values[False], [14 / 3, 5, 3, -9])
    # gamma = 0.5: G = 1.6875, 1.375, 2.75, 1.5, 3 -> every-visit V(A) = (1.6875 + 2.75 + 3) / 3
    sums, counts = np.zeros(4), np.zeros(4, dtype=int)
    mc.accumulate_episode(sums, counts, states, rewards, 0.5, first_visit=False)
    assert mc.mc_values(sums, counts)[0] == pytest.approx((1.6875 + 2.75 + 3) / 3)


def test_tuple_states_and_empty_episode():
    sums, counts = np.zeros((3, 2)), np.zeros((3, 2), dtype=int)
    mc.accumulate_episode(sums, counts, [], np.array([]), 1.0, first_visit=True)
    assert counts.sum() == 0
    mc.accumulate_episode(sums, counts, [(2, 1), (0, 0)], np.array([0.0, -1.0]), 1.0, first_visit=True)
    assert sums[2, 1] == -1 and counts[2, 1] == 1 and counts[0, 0] == 1


def test_random_walk_env_api():
    env = mc.RandomWalkEnv()
    obs, info = env.reset(seed=0)
    assert obs == 3 and info == {} and env.observation_space.n == 7 and env.action_space.n == 2
    for _ in range(2):
        obs, reward, terminated, truncated, _ = env.step(1)
    assert (obs, reward, terminated, truncated) == (5, 0.0, False, False)
    assert env.step(1)[1:3] == (1.0, True)
    env.reset()
    for _ in range(3):
        obs, reward, terminated, _, _ = env.step(0)
    assert (obs, reward, terminated) == (0, 0.0, True)


# ---------------------------------------------------------------------------------------------------
# Must show
# ---------------------------------------------------------------------------------------------------
def test_random_walk_first_and_every_visit_converge_to_true_values():
    runs, episodes = 40, 400
    history = mc.run_random_walk(runs, episodes, seed=3)
    # 10 checks (2 methods x 5 states): Bonferroni z for a family-wise false-alarm rate of 1%.
    z = NormalDist().inv_cdf(1 - 0.01 / (2 * 10))
    for kind in ("first", "every"):
        final = history[kind][:, -1]
        # tolerance = z * (run-to-run sd) / sqrt(runs); every-visit's O(1/n) bias is ~1e-3 at n = 400
        tol = z * final.std(axis=0, ddof=1) / np.sqrt(runs)
        assert np.all(np.abs(final.mean(axis=0) - mc.RANDOM_WALK_TRUE_VALUES) < tol), (kind, final.mean(0), tol)
        # and the error shrinks as episodes accumulate
        rms = np.sqrt(((history[kind] - mc.RANDOM_WALK_TRUE_VALUES) ** 2).mean(axis=(0, 2)))
        assert rms[-1] < rms[episodes // 10] < rms[0]


def _check_blackjack(num_episodes):
    values, counts, _ = mc.run_blackjack(num_episodes, seed=5)
    checked = 0
    cells = [(s, d, u) for s in range(12, 22) for d in range(1, 11) for u in (0, 1)
             # (21, d, usable) mixes naturals (+1 unless the dealer has one) with 21s reached by hitting,
             # so its value depends on how often each occurs; the reference leaves it out.
             if not (s == 21 and u == 1)]
    # Returns lie in [-1, 1], so their sd is at most 1 and a state's SE is at most 1/sqrt(visits).
    # Bonferroni over the 190 states for a 1% family-wise false-alarm rate.
    z = NormalDist().inv_cdf(1 - 0.01 / (2 * len(cells)))
    for s, d, u in cells:
        if counts[s, d, u] == 0:
            continue
        tol = z / np.sqrt(counts[s, d, u])
        assert abs(values[s, d, u] - exact_stick20_value(s, u, d)) < tol, (s, d, u, values[s, d, u])
        checked += 1
    assert checked >= 180
    return values, counts


def test_blackjack_values_match_exact_small():
    values, counts = _check_blackjack(20_000)
    # the sticking states 21 (no usable ace) are worth more than 0.6 exactly (0.64 .. 0.94)
    assert np.all(values[21, 2:11, 0] > 0.6)


@pytest.mark.slow
def test_blackjack_values_match_exact_500k():
    # Figure 5.1's 500,000 episodes: all 190 states within the Bonferroni tolerance of the exact values.
    # Exact values (blackjack_exact.py): V(20, d) = 0.64..0.79 for a dealer 2..9 and V(21, d) = 0.64..0.94
    # for every dealer card; 20 against an ace (0.15) or a ten (0.44) is lower.
    values, counts = _check_blackjack(500_000)
    # "Sum 20/21 is worth more than 0.6": asserted where it is resolvable, i.e. where the exact value is
    # more than 3 SE (<= 3/sqrt(visits)) above 0.6. Usable-ace 20 has only ~900 visits per dealer card
    # (SE ~0.034), so 20-with-ace against a 2-4 (exact 0.64-0.66) is not; no-usable-ace 20 (~7,500
    # visits) and 21 are.
    cells = [(s, d, u) for s in (20, 21) for d in range(1, 11) for u in (0, 1) if not (s == 21 and u == 1)
             and (exact_stick20_value(s, u, d) - 0.6) * np.sqrt(counts[s, d, u]) > 3]
    assert len(cells) >= 20
    assert all(values[c] > 0.6 for c in cells), [(c, values[c]) for c in cells if values[c] <= 0.6]
    assert np.all(values[21, 1:11, 1] > 0.6)  # usable-ace 21 (mostly naturals): thousands of visits


# ---------------------------------------------------------------------------------------------------
# Running the file
# ---------------------------------------------------------------------------------------------------
def test_main_runs_random_walk(tmp_path, capsys):
    out = tmp_path / "rw.png"
    result = mc.main(mc.Args(env_id="RandomWalk-v0", num_runs=5, num_episodes=50, plot=str(out)))
    assert out.exists() and "first-visit" in capsys.readouterr().out
    assert len(result["first_visit_values"]) == 5 and 0 <= result["every_visit_rms"] < 0.5
