"""Tests of algorithms/policy_evaluation.py (Sutton & Barto Section 4.1, Example 4.1, Figure 4.1).

Dynamic programming here is deterministic (no sampled runs), so every tolerance comes from the stopping
rule: a sweep whose largest change is below theta leaves a Bellman residual below theta, and the error
of V is at most (residual) x (expected number of discounted steps before termination),
max_s [(I - gamma P_pi)^-1 1](s), which the tests compute with a linear solve (<= 1 / (1 - gamma)).
"""

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_one_line_exit_2, load_algo

pe = load_algo("policy_evaluation")

BOOK_V_PI = np.array([[0, -14, -20, -22], [-14, -18, -20, -20], [-20, -20, -18, -14], [-22, -20, -14, 0]], float)


def model(env_id):
    env = pe.make_env(env_id)
    n_s, n_a = env.observation_space.n, env.action_space.n
    p, r = pe.transition_arrays(env.unwrapped.P, n_s, n_a)
    return env, p, r


def exact_v_pi(p, r, policy, gamma):
    """Independent reference: solve the linear Bellman equation v = r_pi + gamma P_pi v directly."""
    p_pi = np.einsum("sa,sat->st", policy, p)
    r_pi = (policy * r).sum(axis=1)
    eye = np.eye(len(r))
    v = np.linalg.solve(eye - gamma * p_pi, r_pi)
    horizon = np.linalg.solve(eye - gamma * p_pi, np.ones(len(r))).max()  # discounted steps to the end
    return v, horizon


def reference_value_iteration(P, n_s, n_a, gamma, theta):
    """A slow loop straight over Gymnasium's P lists, independent of transition_arrays."""
    v = np.zeros(n_s)
    while True:
        q = np.array(
            [[sum(pr * (rw + (0.0 if done else gamma * v[int(s2)])) for pr, s2, rw, done in P[s][a]) for a in range(n_a)] for s in range(n_s)]
        )
        new_v = q.max(axis=1)
        if np.max(np.abs(new_v - v)) < theta:
            return new_v, q.argmax(axis=1)
        v = new_v


# --- math of the pure functions ------------------------------------------------------------------------
def test_transition_arrays_by_hand():
    # state 0: action 0 lists s'=1 twice (0.25 + 0.25) and terminates with 0.5 (reward 10);
    # action 1 stays. State 1 is absorbing-terminal.
    P = {
        0: {0: [(0.25, 1, 2.0, False), (0.25, 1, 4.0, False), (0.5, 1, 10.0, True)], 1: [(1.0, 0, -1.0, False)]},
        1: {0: [(1.0, 1, 0.0, True)], 1: [(1.0, 1, 0.0, True)]},
    }
    p, r = pe.transition_arrays(P, 2, 2)
    np.testing.assert_allclose(p[0, 0], [0.0, 0.5])  # the terminating 0.5 bootstraps nothing
    np.testing.assert_allclose(p[0, 1], [1.0, 0.0])
    np.testing.assert_allclose(p[1], 0.0)
    np.testing.assert_allclose(r, [[0.25 * 2 + 0.25 * 4 + 0.5 * 10, -1.0], [0.0, 0.0]])


def test_first_sweeps_match_figure_4_1_by_hand():
    _, p, r = model("GridWorld4x4-v0")
    policy = pe.random_policy(16, 4)
    v1 = pe.expected_update(p, r, policy, 1.0, np.zeros(16))
    np.testing.assert_allclose(v1, np.where(np.isin(np.arange(16), [0, 15]), 0.0, -1.0))
    v2 = pe.expected_update(p, r, policy, 1.0, v1)
    # state 1: 1/4 (left into the terminal corner: -1 + 0) + 3/4 (-1 + -1) = -1.75 (the book prints -1.7)
    assert v2[1] == pytest.approx(-1.75)
    assert v2[5] == pytest.approx(-2.0)
    v3 = pe.expected_update(p, r, policy, 1.0, v2)
    # state 1 at k=3: left -1; up (stays) -1-1.75; right -1-2; down -1-2 -> mean -2.4375 (book: -2.4)
    assert v3[1] == pytest.approx(-2.4375)
    # state 2 at k=3: left -1-1.75; up (stays) -1-2; right -1-2; down -1-2 -> -2.9375 (book: -2.9)
    assert v3[2] == pytest.approx(-2.9375)


@pytest.mark.parametrize("in_place", [True, False])
def test_gridworld_v_pi_is_the_books(in_place):
    _, p, r = model("GridWorld4x4-v0")
    policy = pe.random_policy(16, 4)
    theta = 1e-8
    v, _ = pe.evaluate_policy(p, r, policy, 1.0, theta, in_place=in_place)
    v_exact, horizon = exact_v_pi(p, r, policy, 1.0)
    np.testing.assert_allclose(v.reshape(4, 4), BOOK_V_PI, atol=1e-4)  # the book's numbers (Figure 4.1)
    np.testing.assert_allclose(v, v_exact, atol=theta * horizon)  # the stopping-rule bound


def test_in_place_and_two_array_agree_and_in_place_needs_fewer_sweeps():
    _, p, r = model("GridWorld4x4-v0")
    policy = pe.random_policy(16, 4)
    theta = 1e-8
    v_in, sweeps_in = pe.evaluate_policy(p, r, policy, 1.0, theta, in_place=True)
    v_two, sweeps_two = pe.evaluate_policy(p, r, policy, 1.0, theta, in_place=False)
    _, horizon = exact_v_pi(p, r, policy, 1.0)
    np.testing.assert_allclose(v_in, v_two, atol=2 * theta * horizon)
    assert sweeps_in < sweeps_two


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CliffWalking-v1", pytest.param("Taxi-v4", marks=pytest.mark.slow)])
def test_random_policy_values_match_the_linear_solve(env_id):
    _, p, r = model(env_id)
    policy = pe.random_policy(*r.shape)
    gamma, theta = 0.99, 1e-8
    v_exact, horizon = exact_v_pi(p, r, policy, gamma)
    for in_place in (True, False):
        v, _ = pe.evaluate_policy(p, r, policy, gamma, theta, in_place=in_place)
        np.testing.assert_allclose(v, v_exact, atol=theta * horizon)


def test_evaluating_the_optimal_policy_reproduces_v_star():
    env, p, r = model("FrozenLake-v1")
    gamma, theta = 0.99, 1e-10
    v_star, best = reference_value_iteration(env.unwrapped.P, 16, 4, gamma, theta)
    v, _ = pe.evaluate_policy(p, r, np.eye(4)[best], gamma, 1e-8)
    # the reference V is within gamma theta/(1-gamma) of v*, the evaluation within 1e-8/(1-gamma)
    np.testing.assert_allclose(v, v_star, atol=(gamma * theta + 1e-8) / (1 - gamma))
    assert v[0] == pytest.approx(0.5420, abs=1e-3)


def test_greedy_policy_wrt_v_pi_is_optimal_on_the_gridworld():
    _, p, r = model("GridWorld4x4-v0")
    v, _ = pe.evaluate_policy(p, r, pe.random_policy(16, 4), 1.0, 1e-8)
    mask = pe.greedy_mask(pe.q_from_v(p, r, v, 1.0), tol=1e-6)
    greedy = mask / mask.sum(axis=1, keepdims=True)  # all maximising actions, as the arrows of Figure 4.1
    v_greedy, _ = exact_v_pi(p, r, greedy, 1.0)
    rows, cols = np.divmod(np.arange(16), 4)
    steps_to_corner = np.minimum(rows + cols, 6 - rows - cols)  # Manhattan distance to (0,0) or (3,3)
    np.testing.assert_allclose(v_greedy, -steps_to_corner, atol=1e-9)
    assert mask[1].tolist() == [False, False, False, True]  # next to the corner: only "left" (Figure 4.1)
    assert mask[5].tolist() == [True, False, False, True]  # up or left


def test_never_terminating():
    # a 2-state loop with no terminating transition, and a third state that terminates
    p = np.zeros((3, 1, 3))
    p[0, 0, 1] = p[1, 0, 0] = 1.0
    policy = np.ones((3, 1))
    assert pe.never_terminating(p, policy).tolist() == [True, True, False]
    p[1, 0] = [0.0, 0.5, 0.0]  # state 1 now terminates with probability 0.5, so state 0 can too
    assert pe.never_terminating(p, policy).tolist() == [False, False, False]
    for env_id in ("GridWorld4x4-v0", "FrozenLake-v1", "CliffWalking-v1", "Taxi-v4"):
        _, p, r = model(env_id)
        assert not pe.never_terminating(p, pe.random_policy(*r.shape)).any()


def test_gridworld_env_api_matches_its_model():
    env = pe.GridWorld4x4Env()
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and obs not in (0, 15)
    env.s = 4
    assert env.step(0) == (0, -1.0, True, False, {})  # up from state 4 ends in the corner
    env.s = 3
    assert env.step(0)[:3] == (3, -1.0, False)  # off the grid: stays


# --- the program ---------------------------------------------------------------------------------------
def test_main_writes_the_figure_and_returns_the_books_values(tmp_path):
    out = pe.main(pe.Args(plot=str(tmp_path / "fig.png")))
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    np.testing.assert_allclose(np.asarray(out["v"]).reshape(4, 4), BOOK_V_PI, atol=1e-4)
    assert out["sweeps_in_place"] < out["sweeps_two_array"]


def test_main_runs_on_frozenlake(tmp_path):
    out = pe.main(pe.Args(env_id="FrozenLake-v1", plot=str(tmp_path / "f.png")))
    assert (tmp_path / "f.png").exists() and out["gamma"] == 0.99  # the toy-text default
    p, r = model("FrozenLake-v1")[1:]
    v_exact, horizon = exact_v_pi(p, r, pe.random_policy(16, 4), 0.99)
    np.testing.assert_allclose(out["v"], v_exact, atol=out["theta"] * horizon)


class _Loop(gym.Env):
    """Two states that swap forever: no episode can end."""

    def __init__(self):
        self.observation_space, self.action_space = gym.spaces.Discrete(2), gym.spaces.Discrete(1)
        self.P = {0: {0: [(1.0, 1, -1.0, False)]}, 1: {0: [(1.0, 0, -1.0, False)]}}
        self.s = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = 0
        return self.s, {}

    def step(self, action):
        self.s = 1 - self.s
        return self.s, -1.0, False, False, {}


if "TestLoop-v0" not in gym.registry:
    gym.register("TestLoop-v0", entry_point=_Loop)


def test_never_terminating_env_with_gamma_one_is_refused(tmp_path, capsys):
    """Refused with exit 2, not looped forever. TestLoop-v0 is registered by this module only; the other
    bad-input cases are in smoke_configs.BAD_INPUT (run by test_smoke.py)."""
    args = pe.Args(env_id="TestLoop-v0", gamma=1.0, plot=str(tmp_path / "out" / "f.png"))
    assert_one_line_exit_2(lambda: pe.main(args), "never terminate", capsys)
    assert not (tmp_path / "out").exists()


def test_loop_env_is_fine_with_gamma_below_one(tmp_path):
    out = pe.main(pe.Args(env_id="TestLoop-v0", gamma=0.5, plot=str(tmp_path / "f.png")))
    np.testing.assert_allclose(out["v"], -1 / (1 - 0.5), atol=1e-7)  # -1 - 0.5 - 0.25 - ... = -2
