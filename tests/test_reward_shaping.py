"""Tests of algorithms/reward_shaping.py: the shaping terms, Ng et al.'s invariance on the grid world's exact model,
the bonus's loop and its collapse of the true value, and learning speed with and without shaping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_algo
from toy_envs import OneStep

rs = load_algo("reward_shaping")
GAMMA = 0.99


class DeterministicGrid(rs.ShapingGridworldEnv):
    """The same grid with no slips, where the bonus's loop can be valued by hand."""

    slip = 0.0


def value_potential(env, gamma=GAMMA, scale=1.0):
    return rs.make_potential("value", scale, gamma, env.progress)


# ---------------------------------------------------------------- the shaping terms, by hand


def test_potential_shaping_by_hand():
    # F = gamma * Phi(s') - Phi(s): 0.9 * (-2) - (-3) = 1.2; at termination Phi(s') counts as 0: 0 - (-3) = 3
    assert rs.potential_shaping(-3.0, -2.0, 0.9, False) == pytest.approx(1.2)
    assert rs.potential_shaping(-3.0, -2.0, 0.9, True) == pytest.approx(3.0)
    # a self-transition with gamma < 1 is charged (1 - gamma) Phi(s): 0.99 * 0.5 - 0.5 = -0.005
    assert rs.potential_shaping(0.5, 0.5, 0.99, False) == pytest.approx(-0.005)
    rng = np.random.default_rng(0)
    phi, phi_next, done = rng.normal(size=9), rng.normal(size=9), rng.random(9) < 0.5
    expected = [0.95 * (0.0 if d else b) - a for a, b, d in zip(phi, phi_next, done, strict=True)]
    np.testing.assert_allclose(rs.potential_shaping(phi, phi_next, 0.95, done), expected)


def test_progress_bonus_by_hand():
    # paid for progress, never charged: closer +b, away 0, no change 0
    np.testing.assert_allclose(rs.progress_bonus([-5.0, -5.0, -5.0], [-4.0, -6.0, -5.0], 0.1), [0.1, 0.0, 0.0])


def test_shaped_returns_telescope():
    """Along any trajectory sum_t gamma^t F_t = gamma^T Phi(s_T) [s_T not terminal] - Phi(s_0)."""
    rng = np.random.default_rng(1)
    phis = rng.normal(size=12)
    for terminated in (True, False):
        f = [rs.potential_shaping(phis[t], phis[t + 1], 0.9, terminated and t == 10) for t in range(11)]
        total = sum(0.9**t * ft for t, ft in enumerate(f))
        assert total == pytest.approx((0.0 if terminated else 0.9**11 * phis[11]) - phis[0])


def test_mountain_car_progress_by_hand():
    # at rest in the valley (sin 3x = -1) the energy is the lowest: -1; at rest at the goal's position: 0
    assert rs.mountain_car_progress(np.array([-math.pi / 6, 0.0])) == pytest.approx(-1.0)
    assert rs.mountain_car_progress(np.array([0.5, 0.0])) == pytest.approx(0.0)
    # speed is energy: v = 0.05 in the valley adds 0.05^2 / 2 over E_goal - E_valley = 0.0025/3 (sin 1.5 + 1)
    expected = -1.0 + 0.05**2 / 2 / (0.0025 / 3 * (math.sin(1.5) + 1.0))
    assert rs.mountain_car_progress(np.array([-math.pi / 6, 0.05])) == pytest.approx(expected)


def test_exact_policy_value_is_the_linear_solve():
    env = rs.ShapingGridworldEnv()
    p, r = rs.transition_arrays(env.P, 100, 4)
    rng = np.random.default_rng(5)
    for gamma in (0.5, 0.99):
        policy = rng.integers(4, size=100)
        expected = np.linalg.solve(np.eye(100) - gamma * p[np.arange(100), policy], r[np.arange(100), policy])
        np.testing.assert_allclose(rs.exact_policy_value(p, r, policy, gamma), expected, rtol=0, atol=1e-12)


def test_grid_model_and_step_agree():
    env = rs.ShapingGridworldEnv()
    # from the start, RIGHT: 0.8 + 0.05 to the right, 0.05 down, and 0.05 + 0.05 (up, left) bump and stay
    outcomes = {}
    for prob, next_s, reward, terminated in env.P[0][rs.RIGHT]:
        outcomes[next_s] = outcomes.get(next_s, 0.0) + prob
        assert reward == 0.0 and not terminated
    assert outcomes == pytest.approx({1: 0.85, 10: 0.05, 0: 0.10})
    env.reset(seed=3)
    counts = np.zeros(100)
    for _ in range(4000):
        env.state = 0
        counts[env.step(rs.RIGHT)[0]] += 1
    assert counts[1] / 4000 == pytest.approx(0.85, abs=0.025) and counts[0] / 4000 == pytest.approx(0.10, abs=0.02)
    # entering the goal pays +1 and terminates; the time limit truncates
    into_goal = [o for o in env.P[89][rs.DOWN] if o[1] == env.goal_state]
    assert len(into_goal) == 1 and into_goal[0][0] == pytest.approx(0.85) and into_goal[0][2:] == (1.0, True)
    assert env.P[env.goal_state][rs.UP] == [(1.0, env.goal_state, 0.0, True)]  # absorbing, worth 0
    env.reset()
    for _ in range(env.max_steps - 1):
        env.state = 0
        assert env.step(rs.UP)[3] is False
    assert env.step(rs.UP)[3] is True


@pytest.mark.parametrize("terminal", [True, False])
def test_episode_update_by_hand(terminal):
    """One step 0 -> 1 with R = 1 and Phi = (2, 5): F = 0.9 * 5 * [not terminal] - 2. The learner's target uses
    R + F, bootstraps only after truncation, and the returned return is the TRUE one."""
    w = np.array([[0.0, 3.0], [-1.0, 1.0]])  # w[a, s]: q(0, .) = (0, -1), greedy action 0; q(1, .) = (3, 1)
    potential = np.array([2.0, 5.0]).__getitem__
    shaping = rs.shaping_function("potential", None, potential, 0.9, 0.0)
    true_return, length = rs.shaped_q_learning_episode(
        OneStep(terminal), w, lambda s: np.array([s]), 0.5, 0.0, 0.9, np.random.default_rng(0), shaping)
    # terminated: F = -2, target 1 - 2 = -1;  truncated: F = 4.5 - 2 = 2.5, target 1 + 2.5 + 0.9 * 3 = 6.2
    assert w[0, 0] == pytest.approx(0.5 * (-1.0 if terminal else 6.2))
    assert (true_return, length) == (1.0, 1)


# ---------------------------------------------------------------- exact: Ng et al.'s theorem on the grid world


@pytest.fixture(scope="module")
def exact():
    env = rs.ShapingGridworldEnv()
    return env, rs.exact_analysis(env, GAMMA, value_potential(env), 0.1)


def test_potential_shaping_keeps_q_star_minus_phi(exact):
    env, result = exact
    assert result["identity_error"] < 1e-8
    assert result["same_greedy"]
    assert result["true_values"]["potential"] == pytest.approx(result["true_values"]["none"], abs=1e-8)
    # the theorem holds for ANY potential: a random one, including a large value at the goal (zeroed at termination)
    phi = np.random.default_rng(2).normal(scale=3.0, size=100)
    phi[env.goal_state] = 50.0
    q, q_shaped = (rs.optimal_q(*rs.transition_arrays(rs.shaped_model(env.P, rs.shaping_function(
        m, env.progress, phi.__getitem__, GAMMA, 0.0)), 100, 4), GAMMA, 1e-10) for m in ("none", "potential"))
    # the goal's own row is left out: it is never a state the agent acts in (it is entered by a terminating step)
    assert np.max(np.abs(np.delete(q_shaped - (q - phi[:, None]), env.goal_state, axis=0))) < 1e-8
    assert np.array_equal(rs.greedy_action_sets(q_shaped, 1e-8), rs.greedy_action_sets(q, 1e-8))


def test_a_potential_not_zeroed_at_termination_changes_the_policy(exact):
    """Why Phi(terminal) = 0: keeping gamma * Phi(goal) on the terminating step adds gamma^T Phi(goal), which
    depends on when the episode ends. With Phi(goal) = -50 the shaped optimum avoids the goal."""
    env, result = exact
    phi = np.zeros(100)
    phi[env.goal_state] = -50.0

    def not_zeroed(s, next_s, terminated):
        return GAMMA * phi[next_s] - phi[s]

    p_shaped, r_shaped = rs.transition_arrays(rs.shaped_model(env.P, not_zeroed), 100, 4)
    policy = np.argmax(rs.optimal_q(p_shaped, r_shaped, GAMMA, 1e-10), axis=1)
    p, r = rs.transition_arrays(env.P, 100, 4)
    assert rs.exact_policy_value(p, r, policy, GAMMA)[env.start_state] < 0.5 * result["true_values"]["none"]


def test_the_bonus_changes_the_optimal_policy_and_its_true_value_collapses(exact):
    env, result = exact
    assert not np.array_equal(rs.greedy_action_sets(result["q"]["bonus"], 1e-8),
                              rs.greedy_action_sets(result["q"]["none"], 1e-8))
    v_star, v_bonus = result["true_values"]["none"], result["true_values"]["bonus"]
    assert v_star == pytest.approx(0.81, abs=0.01)  # about 0.99^20: the 18-step path and its slips
    assert v_bonus < 0.01 * v_star  # the bonus's optimum almost never finishes
    path = result["paths"]["bonus"]
    assert env.goal_state not in path and len(set(path[-10:])) == 2, path  # it ends in a two-cell loop


def test_the_bonus_loop_is_worth_its_hand_value():
    """No slips: next to the goal, entering pays 1 + b once; stepping away (0) and back (b) forever pays
    V1 = gamma * V2, V2 = b + gamma * V1, so V1 = gamma b / (1 - gamma^2) = 4.975 > 1.1 for b = 0.1."""
    env = DeterministicGrid()
    result = rs.exact_analysis(env, GAMMA, value_potential(env), 0.1)
    v_bonus = result["q"]["bonus"].max(axis=1)
    v1 = GAMMA * 0.1 / (1 - GAMMA**2)
    assert v_bonus[89] == pytest.approx(v1, abs=1e-8) and v_bonus[98] == pytest.approx(v1, abs=1e-8)
    # from the start: 17 steps toward the goal, each paid b, then the loop
    assert v_bonus[0] == pytest.approx(0.1 * (1 - GAMMA**17) / (1 - GAMMA) + GAMMA**17 * v1, abs=1e-8)
    assert result["true_values"]["bonus"] == 0.0 and result["true_values"]["none"] == pytest.approx(GAMMA**17)
    assert result["identity_error"] < 1e-8 and result["same_greedy"]
    # a bonus below the loop's break-even leaves the optimum alone: gamma b / (1 - gamma^2) < 1 + b for b = 0.01
    small = rs.exact_analysis(env, GAMMA, value_potential(env), 0.01)
    assert small["true_values"]["bonus"] == pytest.approx(GAMMA**17)


# ---------------------------------------------------------------- learning


def grid_settings(**changes) -> dict:
    return {"env_id": "ShapingGridworld", **rs.DEFAULTS["ShapingGridworld"], **changes}


def test_potential_shaping_learns_faster_small():
    """8 runs x 60 episodes, seed 1. Criterion: the greedy policy's exact true value from the start reaches 0.95 V*.
    Shaped: every run reaches it; unshaped, the runs that reach it take more episodes than the shaped runs' mean."""
    s = grid_settings(num_episodes=60)
    v_star = rs.exact_analysis(rs.ShapingGridworldEnv(), GAMMA, value_potential(rs.ShapingGridworldEnv()), 0.1)[
        "true_values"]["none"]
    reached = {}
    for method in ("none", "potential"):
        result = rs.run_shaped_learner(s, method, 8, 1, (8, 8))
        reached[method] = [rs.episodes_to_criterion(g, 0.95 * v_star) for g in result["greedy_values"]]
    assert None not in reached["potential"], reached
    shaped_mean = np.mean(reached["potential"])
    unshaped = [60 if e is None else e for e in reached["none"]]  # not reached counts as the whole budget
    assert np.mean(unshaped) > 1.5 * shaped_mean, reached


@pytest.mark.slow
def test_grid_learning_30_runs():
    """The page's numbers: 30 runs x 300 episodes each. Potential shaping reaches the criterion in fewer episodes
    than the true reward (Welch's t > 3 on episodes-to-criterion, every run reaching it); the bonus learner's
    greedy policy ends with a true value below 0.1 V* in every run."""
    s = grid_settings()
    env = rs.ShapingGridworldEnv()
    v_star = rs.exact_analysis(env, GAMMA, value_potential(env), 0.1)["true_values"]["none"]
    episodes = {}
    for method in ("none", "potential"):
        result = rs.run_shaped_learner(s, method, 30, 1, (8, 8))
        reached = [rs.episodes_to_criterion(g, 0.95 * v_star) for g in result["greedy_values"]]
        assert None not in reached, (method, reached)
        episodes[method] = np.array(reached, dtype=float)
    a, b = episodes["none"], episodes["potential"]
    t = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / 30 + b.var(ddof=1) / 30)
    assert t > 3, (a.mean(), a.std(), b.mean(), b.std(), t)
    bonus = rs.run_shaped_learner(s, "bonus", 30, 1, (8, 8))
    assert np.all(bonus["greedy_values"][:, -1] < 0.1 * v_star), bonus["greedy_values"][:, -1]


@pytest.mark.slow
def test_mountain_car_learning_10_runs():
    """10 runs x 300 episodes: with the energy potential the mean true return of the last 10 episodes reaches
    -160 in fewer episodes than with the true reward alone (mean over runs)."""
    s = {"env_id": "MountainCar-v0", **rs.DEFAULTS["MountainCar-v0"]}
    means = {}
    for method in ("none", "potential"):
        returns = rs.run_shaped_learner(s, method, 10, 1, (8, 8))["true_returns"]
        windows = [[returns[r, max(0, e - 9): e + 1].mean() for e in range(returns.shape[1])] for r in range(10)]
        reached = [rs.episodes_to_criterion(w, -160.0) for w in windows]
        assert None not in reached, (method, reached)
        means[method] = np.mean(reached)
    assert means["potential"] < means["none"], means


def test_same_seed_same_curves():
    """Determinism: the same seed gives the same runs, bit for bit, on both tasks; another seed does not."""
    for s in (grid_settings(num_episodes=5), {"env_id": "MountainCar-v0", **rs.DEFAULTS["MountainCar-v0"],
                                             "num_episodes": 2, "epsilon": 0.1}):
        a, b, c = (rs.run_shaped_learner(s, "potential", 2, seed, (4, 4)) for seed in (3, 3, 4))
        for key in ("true_returns", "lengths", "w"):
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["w"], c["w"])


# ---------------------------------------------------------------- main


def test_main_writes_the_figure_and_reports(tmp_path):
    plot = tmp_path / "sub" / "fig.png"
    summary = rs.main(rs.Args(num_runs=2, num_episodes=8, plot=str(plot)))
    assert plot.stat().st_size > 0
    assert summary["identity_error"] < 1e-8 and summary["same_greedy"]
    assert summary["exact_true_values"]["bonus"] < 0.01 * summary["exact_true_values"]["none"]
    assert len(summary["potential"]["episodes_to_criterion"]) == 2
