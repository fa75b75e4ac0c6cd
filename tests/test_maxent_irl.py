"""Tests of algorithms/maxent_irl.py (Ziebart et al. 2008; the maximum-causal-entropy form, Ziebart et al. 2010).

Everything here is exact arithmetic on small models, so the math tests compare with values worked out by
hand or by a slow reference written in the test (an enumeration of every trajectory, a backward evaluation
loop, central finite differences). The learning tests are the issue's two claims on the gridworld: from exact
soft-optimal occupancies the learned reward's soft-optimal policy matches the demonstrations' feature
expectations within 1e-3 (`imitation`'s MCE-IRL test: linf_eps 1e-3 on state occupancies, a linear and a
32-32 neural reward); from sampled optimal trajectories the learned reward's optimal policy has a true value,
computed by exact policy evaluation, within 1% of the expert's.
"""

import itertools
import math

import numpy as np
import pytest
from conftest import load_algo, run_main

irl = load_algo("maxent_irl")

# Two states, two actions: action 0 stays, action 1 switches to the other state (deterministic).
STAY_SWITCH = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])


def random_mdp(n_states, n_actions, seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_states) * 0.5, size=(n_states, n_actions))
    d0 = rng.dirichlet(np.ones(n_states))
    return p, d0, rng


def random_policy(rng, horizon, n_states, n_actions):
    return rng.dirichlet(np.ones(n_actions), size=(horizon, n_states))


# --- soft value iteration against hand-solved MDPs ------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_soft_value_iteration_on_a_hand_solved_two_state_mdp(gamma):
    # Worked by hand, T = 2, r = (r0, r1). At t = 1 both actions are worth r(s): V_1(s) = r(s) + log 2.
    # At t = 0: Q_0(s, stay) = r(s) + gamma (r(s) + log 2), Q_0(s, switch) = r(s) + gamma (r(s') + log 2),
    # so V_0(s) = r(s) + gamma log 2 + log(exp(gamma r(s)) + exp(gamma r(s'))) and
    # pi_0(stay | s) = exp(gamma r(s)) / (exp(gamma r(s)) + exp(gamma r(s'))) = sigmoid(gamma (r(s) - r(s'))).
    r = np.array([1.0, -0.5])
    v, q, log_pi = irl.soft_value_iteration(STAY_SWITCH, r, 2, gamma)
    ln2 = math.log(2.0)
    np.testing.assert_allclose(v[2], [0.0, 0.0])
    np.testing.assert_allclose(v[1], r + ln2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_pi[1]), 0.5, rtol=0, atol=1e-12)
    for s, other in ((0, 1), (1, 0)):
        assert q[0, s, 0] == pytest.approx(r[s] + gamma * (r[s] + ln2), abs=1e-12)
        assert q[0, s, 1] == pytest.approx(r[s] + gamma * (r[other] + ln2), abs=1e-12)
        assert v[0, s] == pytest.approx(r[s] + gamma * ln2 + math.log(math.exp(gamma * r[s]) + math.exp(gamma * r[other])),
                                        abs=1e-12)
        assert math.exp(log_pi[0, s, 0]) == pytest.approx(1 / (1 + math.exp(-gamma * (r[s] - r[other]))), abs=1e-12)
    # the hard maximum: stay in the better state 0, move to it from state 1; at t = 1 the tie goes to action 0
    v_hard, pi_hard = irl.optimal_policy(STAY_SWITCH, r, 2, gamma)
    assert pi_hard[0].argmax(axis=1).tolist() == [0, 1] and pi_hard[1].argmax(axis=1).tolist() == [0, 0]
    np.testing.assert_allclose(v_hard[0], [r[0] + gamma * r[0], r[1] + gamma * r[0]])


def test_soft_value_iteration_one_state_closed_form():
    # One state, A actions, all staying: V_t = r + log A + gamma V_{t+1}, a geometric sum; the policy is uniform.
    n_actions, r, gamma, horizon = 3, 0.7, 0.8, 6
    p = np.ones((1, n_actions, 1))
    v, _, log_pi = irl.soft_value_iteration(p, np.array([r]), horizon, gamma)
    assert v[0, 0] == pytest.approx((r + math.log(n_actions)) * (1 - gamma**horizon) / (1 - gamma), abs=1e-12)
    np.testing.assert_allclose(np.exp(log_pi), 1 / n_actions, atol=1e-12)


def test_soft_policy_ignores_a_constant_added_to_the_reward_and_survives_large_rewards():
    p, d0, rng = random_mdp(4, 3, 0)
    r = rng.normal(size=4)
    _, _, log_pi = irl.soft_value_iteration(p, r, 7, 1.0)
    _, _, shifted = irl.soft_value_iteration(p, r + 123.0, 7, 1.0)
    np.testing.assert_allclose(shifted, log_pi, atol=1e-9)
    _, _, big = irl.soft_value_iteration(p, 1e4 * r, 7, 1.0)  # log-sum-exp after the maximum: no overflow
    assert np.all(np.isfinite(big)) and np.allclose(np.exp(big).sum(axis=2), 1.0)


# --- visitation frequencies and policy evaluation ----------------------------------------------------------------
def test_visitation_frequencies_against_an_enumeration_of_every_trajectory():
    p, d0, rng = random_mdp(2, 2, 1)
    horizon = 3
    pi = random_policy(rng, horizon, 2, 2)
    reference = np.zeros((horizon, 2, 2))
    for path in itertools.product(range(2), repeat=2 * horizon + 1):  # s0 a0 s1 a1 s2 a2 s3
        states, actions = path[0::2], path[1::2]
        prob = d0[states[0]]
        for t in range(horizon):
            prob *= pi[t, states[t], actions[t]] * p[states[t], actions[t], states[t + 1]]
        for t in range(horizon):
            reference[t, states[t], actions[t]] += prob
    np.testing.assert_allclose(irl.visitation_frequencies(p, pi, d0), reference, atol=1e-14)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_visitation_sums_to_the_horizon(gamma):
    p, d0, rng = random_mdp(6, 3, 2)
    horizon = 9
    d_sa = irl.visitation_frequencies(p, random_policy(rng, horizon, 6, 3), d0)
    np.testing.assert_allclose(d_sa.sum(axis=(1, 2)), 1.0, atol=1e-12)
    np.testing.assert_allclose(d_sa[0].sum(axis=1), d0, atol=1e-15)
    expected = horizon if gamma == 1.0 else (1 - gamma**horizon) / (1 - gamma)
    assert irl.state_visitation(d_sa, gamma).sum() == pytest.approx(expected, abs=1e-12)


def test_policy_value_against_backward_evaluation():
    p, d0, rng = random_mdp(5, 3, 3)
    horizon, gamma = 8, 0.95
    pi, r = random_policy(rng, horizon, 5, 3), rng.normal(size=5)
    v = np.zeros(5)
    for t in reversed(range(horizon)):  # v_t(s) = r(s) + gamma sum_a pi_t(a|s) sum_s' p(s'|s,a) v_{t+1}(s')
        v = r + gamma * np.einsum("sa,sat,t->s", pi[t], p, v)
    assert irl.policy_value(p, pi, r, d0, gamma) == pytest.approx(d0 @ v, abs=1e-12)
    # the optimal policy's value is V*_0 under d0, and no random policy does better
    v_star, pi_star = irl.optimal_policy(p, r, horizon, gamma)
    assert irl.policy_value(p, pi_star, r, d0, gamma) == pytest.approx(d0 @ v_star[0], abs=1e-12)
    assert irl.policy_value(p, pi, r, d0, gamma) <= d0 @ v_star[0] + 1e-12


# --- the MaxEnt IRL gradient -------------------------------------------------------------------------------------
def finite_difference(f, params, eps=1e-6):
    grads = []
    for x in params:
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + eps
            up = f()
            x[i] = old - eps
            down = f()
            x[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("reward_model", ["linear", "mlp"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gradient_is_the_feature_difference_and_matches_finite_differences_of_the_log_likelihood(reward_model, gamma):
    n_states, n_actions, horizon = 5, 3, 6
    p, d0, rng = random_mdp(n_states, n_actions, 4)
    # Demonstrations: the exact occupancies of an arbitrary (not soft-optimal) time-dependent policy
    demo_d_sa = irl.visitation_frequencies(p, random_policy(rng, horizon, n_states, n_actions), d0)
    demo_visits = irl.state_visitation(demo_d_sa, gamma)
    features = rng.normal(size=(n_states, 3))
    model = irl.LinearReward(3) if reward_model == "linear" else irl.MLPReward(3, (4, 4), rng)
    if reward_model == "linear":
        model.params[0][:] = rng.normal(size=3)

    def log_likelihood():
        return irl.demo_log_likelihood(demo_d_sa, irl.soft_value_iteration(p, model(features), horizon, gamma)[2], gamma)

    grad_r, policy_visits, log_pi, v0 = irl.maxent_irl_gradient(p, model(features), d0, demo_visits, horizon, gamma)
    analytic = model.gradients(features, grad_r)
    numeric = finite_difference(log_likelihood, model.params)
    for a, n in zip(analytic, numeric, strict=True):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-7)
    if reward_model == "linear":  # dL/dtheta = mu_demo - mu_pi
        np.testing.assert_allclose(analytic[0], demo_visits @ features - policy_visits @ features, atol=1e-12)
    # with visits that follow the dynamics the log-likelihood is the dual objective G
    assert irl.maxent_objective(model(features), demo_visits, d0, v0) == pytest.approx(log_likelihood(), abs=1e-10)


def test_gradient_of_the_objective_from_sampled_demonstrations():
    # Sampled visits do not follow the dynamics: L and G differ, and the file's gradient is G's.
    n_states, n_actions, horizon, gamma = 4, 2, 5, 1.0
    p, d0, rng = random_mdp(n_states, n_actions, 5)
    states, actions = irl.sample_trajectories(p, random_policy(rng, horizon, n_states, n_actions), d0, 7, rng)
    demo_d_sa = irl.empirical_visitation(states, actions, n_states, n_actions)
    np.testing.assert_allclose(demo_d_sa.sum(axis=(1, 2)), 1.0)
    demo_visits = irl.state_visitation(demo_d_sa, gamma)
    r = rng.normal(size=n_states)

    def objective():
        v = irl.soft_value_iteration(p, r, horizon, gamma)[0]
        return irl.maxent_objective(r, demo_visits, d0, v[0])

    grad_r = irl.maxent_irl_gradient(p, r, d0, demo_visits, horizon, gamma)[0]
    np.testing.assert_allclose(grad_r, finite_difference(objective, [r])[0], rtol=1e-6, atol=1e-7)
    log_pi = irl.soft_value_iteration(p, r, horizon, gamma)[2]
    assert abs(irl.demo_log_likelihood(demo_d_sa, log_pi, gamma) - objective()) > 1e-3


def test_sampled_trajectories_follow_the_model():
    p, d0, rng = random_mdp(3, 2, 6)
    pi = random_policy(rng, 2, 3, 2)
    states, actions = irl.sample_trajectories(p, pi, d0, 40_000, np.random.default_rng(0))
    empirical = irl.empirical_visitation(states, actions, 3, 2)
    np.testing.assert_allclose(empirical, irl.visitation_frequencies(p, pi, d0), atol=0.01)  # 4 sd of 40k draws


# --- the model read from Gymnasium's P ---------------------------------------------------------------------------
def test_models_of_the_gridworld_and_frozenlake():
    import gymnasium as gym

    grid = irl.SlipperyGridWorldEnv()
    p = irl.absorbing_model(grid.P, 25, 4)
    np.testing.assert_allclose(p.sum(axis=2), 1.0)
    # from the top-left corner, LEFT stays unless the slip goes DOWN or RIGHT (0.3 / 4 each)
    assert p[0, irl.LEFT, 0] == pytest.approx(0.7 + 0.075 + 0.075) and p[0, irl.LEFT, 5] == pytest.approx(0.075)
    reward = irl.state_reward_from_model(grid.P, 25, 4)
    assert reward[4] == 1.0 and reward[6] == -1.0 and reward[0] == 0.0 and sorted(set(reward)) == [-1.0, 0.0, 1.0]
    lake = gym.make("FrozenLake-v1").unwrapped
    p = irl.absorbing_model(lake.P, 16, 4)
    np.testing.assert_allclose(p.sum(axis=2), 1.0)
    assert p[15, 0, 15] == 1.0 and p[5, 2, 5] == 1.0  # the goal and a hole are absorbing
    np.testing.assert_array_equal(irl.state_reward_from_model(lake.P, 16, 4), np.eye(16)[15])
    assert irl.terminal_states_absorb(lake.P, 16, 4) and irl.terminal_states_absorb(grid.P, 25, 4)
    leaky = {0: {0: [(1.0, 1, 1.0, True)]}, 1: {0: [(1.0, 0, 0.0, False)]}}  # the terminal state 1 leads back to 0
    assert not irl.terminal_states_absorb(leaky, 2, 1)
    cliff = gym.make("CliffWalking-v1").unwrapped  # the cliff pays -100 on the way back to the start
    assert irl.state_reward_from_model(cliff.P, 48, 4) is None
    phi = irl.state_features(gym.make("FrozenLake-v1"), "cell-type")  # columns F, G, H, S
    assert phi.shape == (16, 4) and phi[15].tolist() == [0, 1, 0, 0] and phi[0].tolist() == [0, 0, 0, 1]


def test_gridworld_env_steps_as_its_model():
    env = irl.SlipperyGridWorldEnv(slip=0.0, max_steps=3)
    env.reset(seed=0)
    env.s = 3  # left of the goal (top row, column 3)
    assert env.step(irl.RIGHT)[:4] == (4, 1.0, False, False)  # entering G pays +1
    assert env.step(irl.UP)[:4] == (4, 1.0, False, False)  # bumping into the wall stays in G, paid again
    assert env.step(irl.DOWN)[:4] == (9, 0.0, False, True)  # the third step is cut by max_steps
    starts = {irl.SlipperyGridWorldEnv().reset(seed=seed)[0] for seed in range(200)}
    assert len(starts) > 20  # starts are spread over the grid (uniform initial_state_distrib)


def test_same_seed_same_result(tmp_path):
    argv = ["--demos", "sampled", "--num-demos", "50", "--reward-model", "mlp", "--max-iterations", "40",
            "--plot", str(tmp_path / "fig.png")]
    first, again = (run_main(irl, argv, tmp_path) for _ in range(2))
    other = run_main(irl, [*argv, "--seed", "2"], tmp_path)
    np.testing.assert_array_equal(first["learned_reward"], again["learned_reward"])
    assert first["gaps"] == again["gaps"]
    assert not np.allclose(first["learned_reward"], other["learned_reward"])


# --- learning: the claims ------------------------------------------------------------------------------
@pytest.mark.parametrize("reward_model", ["linear", "mlp"])
def test_exact_soft_optimal_occupancies_are_matched_within_1e_3(tmp_path, reward_model):
    out = run_main(irl, ["--reward-model", reward_model, "--plot", str(tmp_path / "fig.png")], tmp_path)
    assert out["converged"] and out["gap"] <= 1e-3
    # checked again from scratch: the soft-optimal policy of the learned reward, its feature expectations
    grid = irl.SlipperyGridWorldEnv()
    p, d0 = irl.absorbing_model(grid.P, 25, 4), grid.initial_state_distrib
    pi = np.exp(irl.soft_value_iteration(p, out["learned_reward"], 20, 1.0)[2])
    mu = irl.state_visitation(irl.visitation_frequencies(p, pi, d0), 1.0)  # one-hot features: the occupancies
    assert np.abs(mu - out["demo_feature_expectations"]).max() <= 1e-3
    # and the reward is the true one up to a constant (the only freedom of a state reward over a fixed horizon)
    learned, true = out["learned_reward"], out["true_reward"]
    assert np.abs((learned - learned.mean()) - (true - true.mean())).max() < 0.05
    assert out["learned_optimal_value"] == pytest.approx(out["optimal_value"], abs=1e-9)


def test_sampled_optimal_trajectories_give_an_optimal_policy_within_1_percent(tmp_path):
    out = run_main(irl, ["--demos", "sampled", "--num-demos", "1000", "--plot", str(tmp_path / "fig.png")], tmp_path)
    assert out["expert_value"] == pytest.approx(out["optimal_value"])  # the expert is the optimal policy
    assert out["learned_optimal_value"] >= 0.99 * out["expert_value"]
    # not by chance: a reward that knows nothing (all zeros: the first action everywhere) is far worse
    grid = irl.SlipperyGridWorldEnv()
    p, d0 = irl.absorbing_model(grid.P, 25, 4), grid.initial_state_distrib
    _, pi_zero = irl.optimal_policy(p, np.zeros(25), 20, 1.0)
    assert irl.policy_value(p, pi_zero, out["true_reward"], d0, 1.0) < 0.5 * out["expert_value"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_sampled_optimal_trajectories_other_seeds(tmp_path, seed):
    out = run_main(irl, ["--demos", "sampled", "--num-demos", "1000", "--seed", str(seed),
                         "--plot", str(tmp_path / "fig.png")], tmp_path)
    assert out["learned_optimal_value"] >= 0.99 * out["expert_value"]


@pytest.mark.slow
def test_frozenlake_exact_occupancies_are_matched(tmp_path):
    out = run_main(irl, ["--env-id", "FrozenLake-v1", "--horizon", "40", "--plot", str(tmp_path / "fig.png")], tmp_path)
    assert out["converged"] and out["gap"] <= 1e-3
    assert out["learned_optimal_value"] >= 0.99 * out["optimal_value"]
