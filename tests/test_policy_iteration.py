"""Tests of algorithms/policy_iteration.py (Sutton & Barto Section 4.3, Example 4.2, Figure 4.2).

Dynamic programming is deterministic (no sampled runs), so tolerances come from the stopping rules:
an in-place evaluation that stops at theta leaves a Bellman residual below gamma*theta, policy
improvement ignores gains below tie_tol, so the result's Bellman OPTIMALITY residual is at most
gamma*theta + tie_tol, and a residual eps bounds the error to v* by eps * H with H = 1/(1-gamma), or,
for gamma = 1, the largest expected number of steps to termination under the final policy (linear solve).
The one sampled test (the Jack env's step against its model) uses 4 standard errors of its own samples.
"""

import math

import numpy as np
import pytest
from conftest import load_algo

pi_mod = load_algo("policy_iteration")
vi_mod = load_algo("value_iteration")

THETA, TIE_TOL = 1e-8, 1e-9


@pytest.fixture(scope="module")
def jack(tmp_path_factory):
    """One full run of the default experiment (Figure 4.2), shared by the Jack tests."""
    plot = tmp_path_factory.mktemp("jack") / "fig.png"
    out = pi_mod.main(pi_mod.Args(plot=str(plot)))
    return out, plot


def horizon(p, actions, gamma):
    """max_s expected discounted number of steps before termination when following `actions`."""
    p_pi = p[np.arange(len(p)), actions]
    return np.linalg.solve(np.eye(len(p)) - gamma * p_pi, np.ones(len(p))).max()


# --- math of the pure functions ------------------------------------------------------------------------
def test_poisson_pmf():
    for lam in (2.0, 3.0, 4.0):
        expected = [math.exp(-lam) * lam**k / math.factorial(k) for k in range(21)]
        np.testing.assert_allclose(pi_mod.poisson_pmf(lam, 21), expected, rtol=1e-12)


def test_location_model_against_a_slow_enumeration():
    """Enumerate requests and returns up to 60 (the Poisson tail beyond is < 1e-40) and apply the rules."""
    max_cars, lam_req, lam_ret, rent = 20, 4.0, 2.0, 10.0
    prob, rental = pi_mod.location_model(max_cars, lam_req, lam_ret, rent)
    pmf = lambda lam, k: math.exp(-lam) * lam**k / math.factorial(k)  # noqa: E731
    for m in (0, 1, 7, 20):
        ref_p, ref_rent = np.zeros(max_cars + 1), np.zeros(max_cars + 1)
        for req in range(60):
            for ret in range(60):
                w = pmf(lam_req, req) * pmf(lam_ret, ret)
                rented = min(req, m)
                nxt = min(m - rented + ret, max_cars)
                ref_p[nxt] += w
                ref_rent[nxt] += w * rent * rented
        np.testing.assert_allclose(prob[m], ref_p, atol=1e-12)
        np.testing.assert_allclose(rental[m], ref_rent, atol=1e-10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-12)


def test_jack_model_rows_and_a_hand_checked_entry():
    env = pi_mod.JacksCarRentalEnv()
    np.testing.assert_allclose(env.prob.sum(axis=2), 1.0, atol=1e-12)
    # From (0, 0) doing nothing: no rentals, so the next state is (returns1, returns2) and reward 0.
    pmf = lambda lam, k: math.exp(-lam) * lam**k / math.factorial(k)  # noqa: E731
    s2 = 2 * 21 + 1  # 2 cars returned at the first location, 1 at the second
    assert env.prob[0, 5, s2] == pytest.approx(pmf(3, 2) * pmf(2, 1), rel=1e-12)
    assert env.reward[0, 5, s2] == pytest.approx(0.0, abs=1e-12)
    # P in Gymnasium's format holds the same numbers
    outcomes = env.P[0][5]
    assert len(outcomes) == 441 and outcomes[s2][1] == s2 and outcomes[s2][3] is False
    assert outcomes[s2][0] == pytest.approx(env.prob[0, 5, s2])


def test_jack_infeasible_orders_are_strictly_worse():
    env = pi_mod.JacksCarRentalEnv()
    s = 3 * 21 + 0  # 3 cars at the first location, none at the second
    # ordering 5 moves the same 3 cars as ordering 3, but costs 2 * $2 more
    np.testing.assert_allclose(env.prob[s, 10], env.prob[s, 8])
    r = (env.prob * env.reward).sum(axis=2)
    assert r[s, 10] == pytest.approx(r[s, 8] - 4.0)


def test_jack_step_agrees_with_the_model():
    env = pi_mod.JacksCarRentalEnv()
    env.reset(seed=0)
    s, a, n = 10 * 21 + 5, 7, 20_000  # (10, 5), move 2 cars to the second location
    rewards, next_states = np.empty(n), np.empty(n, int)
    for i in range(n):
        env.s = s
        next_states[i], rewards[i], terminated, truncated, _ = env.step(a)
        assert not terminated and not truncated
    expected_r = env.prob[s, a] @ env.reward[s, a]
    assert abs(rewards.mean() - expected_r) < 4 * rewards.std() / math.sqrt(n)
    # the first location's next count: compare its sample frequency with the model's, 4 standard errors
    model_p = env.prob[s, a].reshape(21, 21).sum(axis=1)
    freq = np.bincount(next_states // 21, minlength=21) / n
    assert np.all(np.abs(freq - model_p) < 4 * np.sqrt(model_p * (1 - model_p) / n) + 1e-12)


def test_improve_policy_keeps_the_old_action_on_ties():
    q = np.array([[1.0, 2.0, 2.0], [5.0, 5.0 + 1e-12, 0.0], [0.0, 0.0, 1.0]])
    assert pi_mod.improve_policy(q, None, 1e-9).tolist() == [1, 1, 2]  # no old policy: first argmax
    assert pi_mod.improve_policy(q, np.array([2, 0, 0]), 1e-9).tolist() == [2, 0, 2]


def test_policy_iteration_on_a_hand_solved_mdp():
    # one state, gamma 0.9: action 0 ends the episode with reward 1; action 1 stays with reward 0.5,
    # worth 0.5 / (1 - 0.9) = 5 forever. The loop is better: v* = 5, pi* = 1.
    p = np.array([[[0.0], [1.0]]])
    r = np.array([[1.0, 0.5]])
    v, actions, history = pi_mod.policy_iteration(p, r, 0.9, 1e-10, np.array([[1.0, 0.0]]))
    assert actions.tolist() == [1] and v[0] == pytest.approx(5.0, abs=1e-8)
    assert len(history) == 2  # pi_0 = "end it", pi_1 = "stay", then stable


def test_never_terminating():
    env = pi_mod.JacksCarRentalEnv()
    assert pi_mod.never_terminating(env.prob, np.full((441, 11), 1 / 11)).all()  # a continuing task
    g = pi_mod.GridWorld4x4Env()
    p, r = pi_mod.transition_arrays(g.P, 16, 4)
    assert not pi_mod.never_terminating(p, np.full((16, 4), 0.25)).any()
    always_up = np.eye(4)[np.zeros(16, int)]
    # "always up" ends only from the first column (up into the corner) and from the terminal corners
    expected = [not (s % 4 == 0 or s == 15) for s in range(16)]
    assert pi_mod.never_terminating(p, always_up).tolist() == expected


# --- must show: Jack's car rental -------------------------------------------------------------------------
def test_jack_is_stable_after_four_improvements(jack):
    out, plot = jack
    assert out["n_improvements"] == 4  # pi_0 .. pi_4 evaluated, improving pi_4 gives pi_4
    policies = out["policies"]
    for k in range(1, 5):
        assert not np.array_equal(policies[k], policies[k - 1])
    np.testing.assert_array_equal(policies[4], out["policy"])
    assert plot.stat().st_size > 20_000


def test_jack_final_policy_has_the_shape_of_figure_4_2(jack):
    out, _ = jack
    moved = (np.asarray(out["policy"]) - 5).reshape(21, 21)  # moved[n1, n2], n1 = cars at the first location
    n1, n2 = np.divmod(np.arange(441), 21)
    assert np.abs(moved).max() <= 5
    assert np.all(moved.ravel() <= n1) and np.all(-moved.ravel() <= n2)  # only cars that are there
    assert np.all(np.asarray(out["policies"][0]) == 5)  # pi_0: move no cars
    # Cells read off the pi_4 panel of Figure 4.2 (rows: first location, columns: second location):
    assert moved[0, 0] == 0  # nothing to move
    assert moved[20, 0] == 5  # top-left corner: the "5" region
    assert moved[20, 1] == 5 and moved[18, 0] == 5
    assert moved[10, 10] == 0 and moved[20, 20] == 0  # the diagonal band of "0"
    assert moved[0, 20] == -4  # bottom-right corner: the "-4" region
    assert moved[0, 10] < 0 and moved[5, 15] == 0  # "-1".. along the bottom, 0 above it
    assert moved[12, 3] > 0  # first location well stocked, second nearly empty: move to the second
    # monotone like the figure's bands: along each row, fewer cars go to the second location as it fills
    assert np.all(np.diff(moved, axis=1) <= 0)


def test_jack_result_satisfies_the_bellman_optimality_equation(jack):
    out, _ = jack
    env = pi_mod.JacksCarRentalEnv()
    v = np.asarray(out["v"])
    # independent of transition_arrays: straight from the env's arrays of p(s'|s,a) and E[r|s,a,s']
    q = np.einsum("sat,sat->sa", env.prob, env.reward + 0.9 * v[None, None, :])
    assert np.max(np.abs(q.max(axis=1) - v)) <= 0.9 * THETA + TIE_TOL


# --- must show: FrozenLake -----------------------------------------------------------------------------------
def test_frozenlake_v_star_at_start(tmp_path):
    out = pi_mod.main(pi_mod.Args(env_id="FrozenLake-v1", gamma=0.99, plot=str(tmp_path / "f.png")))
    assert out["v"][0] == pytest.approx(0.5420, abs=1e-3)


# --- policy iteration and value iteration agree on every environment ---------------------------------------------
AGREE_ENVS = [
    ("GridWorld4x4-v0", 1.0),
    ("FrozenLake-v1", 0.99),
    ("FrozenLake8x8-v1", 0.99),
    ("CliffWalking-v1", 0.99),
    ("CliffWalkingSlippery-v1", 0.99),
    pytest.param("Taxi-v4", 0.99, marks=pytest.mark.slow),  # the two largest models: a few seconds each
    pytest.param("JacksCarRental-v0", 0.9, marks=pytest.mark.slow),  # (Jack's optimality: the jack tests)
    ("GamblersProblem-v0", 1.0),  # value_iteration.py's world, solved by policy_iteration.py's routine
]


@pytest.mark.parametrize("env_id, gamma", AGREE_ENVS)
def test_policy_iteration_and_value_iteration_agree(env_id, gamma):
    env = vi_mod.make_env(env_id) if env_id == "GamblersProblem-v0" else pi_mod.make_env(env_id)
    n_s, n_a = env.observation_space.n, env.action_space.n
    p, r = pi_mod.transition_arrays(env.unwrapped.P, n_s, n_a)
    start = np.full((n_s, n_a), 1.0 / n_a)
    v_pi, actions, _ = pi_mod.policy_iteration(p, r, gamma, THETA, start, TIE_TOL)
    v_vi, _, _ = vi_mod.value_iteration(p, r, gamma, THETA)
    res_pi = np.max(np.abs(pi_mod.q_from_v(p, r, v_pi, gamma).max(axis=1) - v_pi))
    res_vi = np.max(np.abs(vi_mod.q_from_v(p, r, v_vi, gamma).max(axis=1) - v_vi))
    assert res_pi <= gamma * THETA + TIE_TOL and res_vi <= gamma * THETA
    h = 1 / (1 - gamma) if gamma < 1 else horizon(p, actions, 1.0)
    np.testing.assert_allclose(v_pi, v_vi, atol=(res_pi + res_vi) * h + 1e-12)
