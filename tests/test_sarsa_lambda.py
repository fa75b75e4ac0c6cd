"""Tests for algorithms/sarsa_lambda.py: tile coder, the Sarsa(lambda) step, truncation, Mountain Car."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_one_line_exit_2, load_algo

sl = load_algo("sarsa_lambda")

LOW, HIGH = np.array([-1.2, -0.07]), np.array([0.6, 0.07])


def point(tile_x: float, tile_v: float) -> np.ndarray:
    """A Mountain Car state given in tile units of an 8 x 8 tiling (0..8 on each axis)."""
    return LOW + (HIGH - LOW) * np.array([tile_x, tile_v]) / 8


# ---------------------------------------------------------------------------------------------- tile coder
def test_one_active_tile_per_tiling_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = rng.uniform(LOW, HIGH)
        tiles = sl.active_tiles(s, LOW, HIGH, 8, 8)
        assert tiles.shape == (8,)
        # tiling i owns indices [81 i, 81 (i + 1)): one tile in each tiling, all within range
        assert np.all(tiles // 81 == np.arange(8))
        assert tiles.min() >= 0 and tiles.max() < 8 * 81


def test_tile_indices_by_hand():
    # Corners: offsets are in [0, 1) of a tile, so the low corner is tile (0, 0) and the high corner
    # tile (8, 8) = 8 * 9 + 8 = 80 in every tiling.
    assert sl.active_tiles(LOW, LOW, HIGH, 8, 8).tolist() == [81 * i for i in range(8)]
    assert sl.active_tiles(HIGH, LOW, HIGH, 8, 8).tolist() == [81 * i + 80 for i in range(8)]
    # (3.3, 5.6) tile units. Tiling 1 offset (1/8, 3/8): floor(3.425), floor(5.975) = (3, 5) -> 81 + 32.
    # Tiling 2 offset (2/8, 6/8): (3.55, 6.35) -> (3, 6) -> 162 + 33. Tiling 3 offset (3/8, 9/8 mod 1
    # = 1/8): (3.675, 5.725) -> (3, 5) -> 243 + 32. Tiling 0: (3, 5) -> 32.
    tiles = sl.active_tiles(point(3.3, 5.6), LOW, HIGH, 8, 8)
    assert tiles[:4].tolist() == [32, 81 + 32, 162 + 33, 243 + 32]
    # states outside the box are clipped onto its edge
    assert np.array_equal(
        sl.active_tiles(HIGH + 1.0, LOW, HIGH, 8, 8), sl.active_tiles(HIGH, LOW, HIGH, 8, 8)
    )


def test_nearby_points_share_most_tiles_distant_ones_none():
    base = sl.active_tiles(point(3.3, 5.6), LOW, HIGH, 8, 8)
    # A shift of 1/8 tile in position: the position offsets k/8 (k = 0..7) are all distinct, so exactly
    # one tiling has a boundary between 3.3 and 3.425 (the one with offset 5/8: 3.925 -> 4.05).
    shifted = sl.active_tiles(point(3.3 + 1 / 8, 5.6), LOW, HIGH, 8, 8)
    assert len(set(base) & set(shifted)) == 7
    tiny = sl.active_tiles(point(3.3 + 1e-3, 5.6 - 1e-3), LOW, HIGH, 8, 8)
    assert len(set(base) & set(tiny)) == 8
    # more than one tile apart in a dimension: no tiling can put both in the same tile
    far = sl.active_tiles(point(3.3 + 1.01, 5.6), LOW, HIGH, 8, 8)
    assert len(set(base) & set(far)) == 0
    assert len(set(sl.active_tiles(LOW, LOW, HIGH, 8, 8)) & set(sl.active_tiles(HIGH, LOW, HIGH, 8, 8))) == 0


# ---------------------------------------------------------------------------------------------- Sarsa(lambda)
def hand_example():
    w = np.zeros((2, 4))
    w[1, 0], w[1, 2] = 0.5, 0.25  # q(S, A=1) over tiles {0, 2} = 0.75
    w[0, 1], w[0, 2] = 1.0, 2.0  # q(S', A'=0) over tiles {1, 2} = 3.0
    z = np.zeros((2, 4))
    z[1, 0], z[0, 3] = 0.5, 0.4  # traces left from earlier steps
    return w, z, np.array([0, 2]), 1, -1.0, np.array([1, 2]), 0


@pytest.mark.parametrize("trace", ["accumulating", "replacing"])
def test_sarsa_lambda_step_by_hand(trace):
    w, z, tiles, a, r, next_tiles, next_a = hand_example()
    alpha, gamma, lam = 0.1, 0.9, 0.8
    new_w, new_z = sl.sarsa_lambda_update(
        w, z, tiles, a, r, next_tiles, next_a, False, alpha, gamma, lam, trace
    )
    # z before the weight update: accumulating z[1,0] = 0.5 + 1 = 1.5, replacing z[1,0] = 1; z[1,2] = 1.
    z_mid = np.zeros((2, 4))
    z_mid[0, 3] = 0.4
    z_mid[1, 0] = 1.5 if trace == "accumulating" else 1.0
    z_mid[1, 2] = 1.0
    delta = -1.0 - 0.75 + 0.9 * 3.0  # = 0.95
    assert np.allclose(new_w, w + 0.1 * 0.95 * z_mid)
    assert new_w[1, 0] == pytest.approx(0.5 + 0.095 * (1.5 if trace == "accumulating" else 1.0))
    assert new_w[0, 3] == pytest.approx(0.1 * delta * 0.4)
    assert np.allclose(new_z, 0.9 * 0.8 * z_mid)  # decay after the update, as in the book's box
    assert np.array_equal(w, hand_example()[0])  # inputs untouched


def test_terminal_drops_bootstrap_truncation_keeps_it():
    w, z, tiles, a, r, next_tiles, next_a = hand_example()
    args = (0.1, 0.9, 0.8, "replacing")
    w_term, _ = sl.sarsa_lambda_update(w, z, tiles, a, r, next_tiles, next_a, True, *args)
    w_trunc, _ = sl.sarsa_lambda_update(w, z, tiles, a, r, next_tiles, next_a, False, *args)
    # terminal: delta = -1 - 0.75 = -1.75; truncated (not terminal): delta = -1.75 + 0.9 * 3 = 0.95
    assert w_term[1, 0] == pytest.approx(0.5 + 0.1 * -1.75)
    assert w_trunc[1, 0] == pytest.approx(0.5 + 0.1 * 0.95)


def test_run_bootstraps_through_the_200_step_time_limit(monkeypatch):
    """The first episode of an untrained agent hits MountainCar's TimeLimit; the update must get
    terminated=False there (bootstrap), and the episode counts as 200 steps."""
    calls = []
    real = sl.sarsa_lambda_update

    def spy(*a):
        calls.append(a[7])  # the `terminated` argument
        return real(*a)

    monkeypatch.setattr(sl, "sarsa_lambda_update", spy)
    steps, _ = sl.run_one(sl.Args(num_runs=1, num_episodes=1), 0, np.random.default_rng(1))
    assert steps.tolist() == [200]
    assert len(calls) == 200 and not any(calls)


# ---------------------------------------------------------------------------------------------- learning
# Measured (seed 1, 10 runs x 500 episodes, replacing traces, alpha = 0.5/8, lambda = 0.9): mean over
# episodes 51-100 per run = 122.3, run-to-run sd 11.7; mean over the last 50 episodes = 106.2, sd 4.8.
def test_mountain_car_learns_early():
    """Default suite: one run (the first of main's, same seeds), 100 episodes, no figure. Bound = measured
    mean + 3 sd of a single run = 122.3 + 35 = 157, well below the 200 of an agent that never reaches the goal."""
    steps, _ = sl.run_one(sl.Args(num_runs=1, num_episodes=100), 0, np.random.default_rng(1))
    assert steps[49:100].mean() <= 122.3 + 3 * 11.7


@pytest.mark.slow
def test_mountain_car_last_50_of_500_single_run(tmp_path):
    """Must-show: one fixed-seed run, last 50 of 500 episodes <= 160 steps. The measured single-run value is
    106 +- 5 (sd), so 160 is 11 sd away: the test fails only if learning breaks."""
    res = sl.main(sl.Args(num_runs=1, num_episodes=500, plot=str(tmp_path / "f.png")))
    assert res["last50_mean"] <= 160
    assert (tmp_path / "f.png").exists()


@pytest.mark.slow
def test_mountain_car_last_50_of_500_ten_runs(tmp_path):
    """Full size: 10 runs (about 50 s); the mean plus 3 SE over runs must stay <= 160."""
    res = sl.main(sl.Args(num_runs=10, num_episodes=500, plot=str(tmp_path / "f.png")))
    assert res["last50_mean"] + 3 * res["last50_se"] <= 160


@pytest.mark.parametrize("change, expected", [
    ({"env_id": "NoSuchEnv-v0"}, "unknown"), ({"env_id": "FrozenLake-v1"}, "Box"), ({"env_id": "CartPole-v1"}, "unbounded"),
    ({"lam": 1.5}, "--lam"), ({"alpha": float("nan")}, "--alpha"), ({"num_episodes": 0}, "--num-episodes"),
    ({"plot": "/proc/onefile-rl-missing/fig.png"}, "cannot write --plot"),
])
def test_bad_input_is_one_line_exit_2(change, expected, capsys, tmp_path):
    args = sl.Args(**{"plot": str(tmp_path / "fig.png"), **change})
    assert_one_line_exit_2(lambda: sl.main(args), expected, capsys)
    assert not any(tmp_path.iterdir())  # nothing written
