"""Tests of algorithms/value_iteration.py (Sutton & Barto Section 4.4, Example 4.3, Figure 4.3).

Dynamic programming is deterministic (no sampled runs), so tolerances come from the stopping rule: the
last in-place sweep moved every V(s) by less than theta, so the Bellman optimality residual is below
gamma*theta, and the error to v* is at most residual * H with H = 1/(1-gamma), or, for gamma = 1, the
largest expected number of steps to termination under the greedy policy (computed by a linear solve).
(Agreement with policy iteration on every environment is tested in test_policy_iteration.py.)
"""

import numpy as np
import pytest
from conftest import load_algo

vi = load_algo("value_iteration")


def model(env_id, p_head=0.4):
    env = vi.make_world(vi.Args(env_id=env_id, p_head=p_head))
    n_s, n_a = env.observation_space.n, env.action_space.n
    p, r = vi.transition_arrays(env.unwrapped.P, n_s, n_a)
    return env, p, r


def reference_residual(P, n_s, n_a, v, gamma):
    """Bellman optimality residual computed by a slow loop straight over Gymnasium's P lists."""
    worst = 0.0
    for s in range(n_s):
        best = max(
            sum(pr * (rw + (0.0 if done else gamma * v[int(s2)])) for pr, s2, rw, done in P[s][a]) for a in range(n_a)
        )
        worst = max(worst, abs(best - v[s]))
    return worst


def policy_value(p, r, actions, gamma):
    rows = np.arange(len(p))
    return np.linalg.solve(np.eye(len(p)) - gamma * p[rows, actions], r[rows, actions])


# --- math of the pure functions ------------------------------------------------------------------------
def test_value_iteration_on_a_hand_solved_mdp():
    # one state, gamma 0.9: action 0 ends with reward 1; action 1 stays with reward 0.5 (worth 0.5/0.1 = 5)
    p = np.array([[[0.0], [1.0]]])
    r = np.array([[1.0, 0.5]])
    v, sweeps, history = vi.value_iteration(p, r, 0.9, 1e-12, record_sweeps=(1, 2))
    assert v[0] == pytest.approx(5.0, abs=1e-10)
    assert history[1][0] == pytest.approx(1.0)  # sweep 1: max(1, 0.5 + 0.9 * 0)
    assert history[2][0] == pytest.approx(1.4)  # sweep 2: max(1, 0.5 + 0.9 * 1)
    assert vi.greedy_policy(vi.q_from_v(p, r, v, 0.9), 1e-9).tolist() == [1]


def test_greedy_policy_takes_the_first_of_tied_actions():
    q = np.array([[0.0, 1.0, 1.0], [3.0, 3.0 - 1e-12, 2.0], [0.0, 1.0 - 1e-6, 1.0]])
    assert vi.greedy_policy(q, 1e-9).tolist() == [1, 0, 2]
    assert vi.greedy_policy(q, 1e-5).tolist() == [1, 0, 1]


def test_gambler_model():
    env, p, r = model("GamblersProblem-v0")
    assert env.P[10][4] == [(0.4, 15, 0.0, False), (0.6, 5, 0.0, False)]  # stake 5 from 10
    assert env.P[90][29] == env.P[90][9]  # stake 30 from 90 is capped at the 10 still needed
    assert env.P[90][9][0] == (0.4, 100, 1.0, True)
    np.testing.assert_allclose(r[60, 39], 0.4)  # stake 40 from 60 wins the game with probability 0.4
    env.reset(seed=0)
    env.s = 50
    obs, reward, terminated, truncated, _ = env.step(49)
    assert (obs, reward, terminated, truncated) in [(100, 1.0, True, False), (0, 0.0, True, False)]


# --- must show: the gambler's problem ---------------------------------------------------------------------
def test_gambler_values_match_the_book(tmp_path):
    out = vi.main(vi.Args(plot=str(tmp_path / "fig.png")))
    v = np.asarray(out["v"])
    # The book's values, to its two decimals
    assert (round(v[25], 2), round(v[50], 2), round(v[75], 2)) == (0.16, 0.40, 0.64)
    # Worked out by hand with bold play (optimal for p < 1/2): v(50) = p, v(25) = p * v(50) = p^2,
    # v(75) = p + (1 - p) v(50) = p + (1 - p) p. The residual bound below makes 1e-6 generous.
    p_h = 0.4
    np.testing.assert_allclose([v[25], v[50], v[75]], [p_h**2, p_h, p_h + (1 - p_h) * p_h], atol=1e-6)
    # Independent check: the Bellman optimality residual, computed over the P lists, is <= theta
    env = vi.GamblersProblemEnv(0.4)
    assert reference_residual(env.P, 101, 50, v, 1.0) <= out["theta"]
    assert (tmp_path / "fig.png").stat().st_size > 20_000


def test_gambler_extracted_policy_is_optimal():
    env, p, r = model("GamblersProblem-v0")
    v, _, _ = vi.value_iteration(p, r, 1.0, 1e-10)
    policy = vi.greedy_policy(vi.q_from_v(p, r, v, 1.0), 1e-9)
    v_policy = policy_value(p, r, policy, 1.0)
    np.testing.assert_allclose(v_policy, v, atol=1e-8)
    assert policy[50] + 1 == 50  # the only optimal stake at 50: all in (any other is worth less than 0.4)
    assert policy[25] + 1 == 25 and policy[75] + 1 == 25  # bold play at the quarter marks


@pytest.mark.parametrize("p_head", [0.25, 0.55])
def test_gambler_other_coins(p_head):
    env, p, r = model("GamblersProblem-v0", p_head)
    v, _, _ = vi.value_iteration(p, r, 1.0, 1e-10)
    assert v[50] >= p_head - 1e-9  # betting everything once wins with p_head
    if p_head > 0.5:
        # favourable coin: timid play (stake 1) is optimal; gambler's-ruin formula for v(50)
        ratio = (1 - p_head) / p_head
        assert v[50] == pytest.approx((1 - ratio**50) / (1 - ratio**100), abs=1e-6)


# --- must show: FrozenLake, and V* reproduced by evaluating the extracted policy -----------------------
def test_frozenlake_v_star_at_start(tmp_path):
    out = vi.main(vi.Args(env_id="FrozenLake-v1", gamma=0.99, plot=str(tmp_path / "f.png")))
    assert out["v"][0] == pytest.approx(0.5420, abs=1e-3)
    assert out["residual"] <= 0.99 * out["theta"]


@pytest.mark.parametrize(
    "env_id, gamma", [("GridWorld4x4-v0", 1.0), ("FrozenLake8x8-v1", 0.99), ("CliffWalking-v1", 0.99), ("Taxi-v4", 0.99)]
)
def test_evaluating_the_greedy_policy_reproduces_v_star(env_id, gamma):
    env, p, r = model(env_id)
    theta = 1e-10
    v, _, _ = vi.value_iteration(p, r, gamma, theta)
    policy = vi.greedy_policy(vi.q_from_v(p, r, v, gamma), 1e-9)
    n_s, n_a = r.shape
    residual = reference_residual(env.unwrapped.P, n_s, n_a, v, gamma)
    assert residual <= gamma * theta
    v_policy = policy_value(p, r, policy, gamma)
    if gamma < 1:
        h = 1 / (1 - gamma)
    else:
        rows = np.arange(n_s)
        h = np.linalg.solve(np.eye(n_s) - p[rows, policy], np.ones(n_s)).max()
    np.testing.assert_allclose(v_policy, v, atol=2 * (residual + 1e-9) * h + 1e-12)


def test_gridworld_v_star_is_minus_the_distance_to_a_corner():
    _, p, r = model("GridWorld4x4-v0")
    v, sweeps, _ = vi.value_iteration(p, r, 1.0, 1e-10)
    rows, cols = np.divmod(np.arange(16), 4)
    np.testing.assert_allclose(v, -np.minimum(rows + cols, 6 - rows - cols))
    assert sweeps == 4  # in-place, row by row: 3 sweeps to settle, a 4th to see nothing change
