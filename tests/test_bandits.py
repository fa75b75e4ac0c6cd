"""Tests of algorithms/bandits.py (Sutton & Barto, Chapter 2).

Math tests compare the pure functions with values worked out by hand or by a direct formula written
here; the must-show numbers run the book's full 2000 runs x 1000 steps (a few seconds, vectorised).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_algo

bandits = load_algo("bandits")

# Reading precision of a curve's level off the book's figures (y gridlines 0.5 apart, a noisy curve of
# visible thickness): we cannot read them better than about +-0.03 in average reward.
READING_PRECISION = 0.03


# ----------------------------------------------------------------------------------------------------
# The environment
# ----------------------------------------------------------------------------------------------------
def test_env_spaces_reset_and_seeding():
    env = bandits.TenArmedTestbed()
    assert env.action_space.n == 10 and env.observation_space.n == 1
    obs, info = env.reset(seed=3)
    assert obs == 0 and env.observation_space.contains(obs)
    assert info["q_star"].shape == (10,) and info["optimal_action"] == int(np.argmax(info["q_star"]))
    again = bandits.TenArmedTestbed().reset(seed=3)[1]["q_star"]
    other = bandits.TenArmedTestbed().reset(seed=4)[1]["q_star"]
    assert np.array_equal(info["q_star"], again) and not np.array_equal(info["q_star"], other)
    obs, reward, terminated, truncated, step_info = env.step(info["optimal_action"])
    assert obs == 0 and isinstance(reward, float) and not terminated and not truncated
    assert step_info["optimal"] is True
    with pytest.raises(ValueError):
        env.step(10)


def test_env_draws_q_star_from_normal_with_given_mean():
    # Over 400 seeded resets the 4000 q* values must have the stated mean and unit sd.
    env = bandits.TenArmedTestbed(mean=4.0)
    q = np.concatenate([env.reset(seed=s)[1]["q_star"] for s in range(400)])
    se = 1.0 / math.sqrt(q.size)
    assert abs(q.mean() - 4.0) < 4 * se
    assert abs(q.std() - 1.0) < 4 * math.sqrt(1 / (2 * q.size))  # sd of a sample sd ~ sigma/sqrt(2n)


def test_env_rewards_are_normal_around_q_star():
    env = bandits.TenArmedTestbed(num_arms=3)
    env.reset(seed=0, options={"q_star": [0.5, -1.0, 2.0]})
    n = 5000
    for arm, q in enumerate([0.5, -1.0, 2.0]):
        r = np.array([env.step(arm)[1] for _ in range(n)])
        assert abs(r.mean() - q) < 4 / math.sqrt(n)
        assert abs(r.std() - 1.0) < 4 * math.sqrt(1 / (2 * n))


def test_make_testbeds_uses_the_env_reset():
    rng = np.random.default_rng(7)
    q_star = bandits.make_testbeds(5, 10, 0.0, rng)
    seeds = np.random.default_rng(7).integers(0, 2**31 - 1, size=5)
    env = bandits.TenArmedTestbed()
    expected = np.stack([env.reset(seed=int(s))[1]["q_star"] for s in seeds])
    assert np.array_equal(q_star, expected)


def test_vectorised_experiment_matches_stepping_the_env():
    """An ε-greedy agent stepped through the Env's API earns what the vectorised experiment reports.

    Same 100 testbeds in both; per testbed, d = (Env run's mean reward) - (vectorised run's mean reward)
    has mean 0 if both draw rewards the same way; tolerance 4 standard errors of mean(d).
    """
    runs, steps = 100, 200
    q_star = bandits.make_testbeds(runs, 10, 0.0, np.random.default_rng(11))
    vec_rewards, _ = bandits.run_agent(
        bandits.EpsilonGreedy(runs, 10, 0.1), q_star, steps, np.random.default_rng(12)
    )

    env, rng = bandits.TenArmedTestbed(), np.random.default_rng(13)
    env_means = np.empty(runs)
    for i in range(runs):
        env.reset(seed=100 + i, options={"q_star": q_star[i]})
        agent, total = bandits.EpsilonGreedy(1, 10, 0.1), 0.0
        for t in range(1, steps + 1):
            action = int(agent.act(t, rng)[0])
            _, reward, _, _, _ = env.step(action)
            agent.update(np.array([action]), np.array([reward]))
            total += reward
        env_means[i] = total / steps
    d = env_means - vec_rewards.mean(axis=1)
    assert abs(d.mean()) < 4 * d.std(ddof=1) / math.sqrt(runs)


# ----------------------------------------------------------------------------------------------------
# Action-value estimates (§2.4-2.5)
# ----------------------------------------------------------------------------------------------------
def test_sample_average_incremental_update_equals_plain_mean():
    rewards = np.array([1.5, -0.3, 2.2, 0.0, 4.1, -2.0, 0.7])
    q = np.array([123.0])  # Q1 is forgotten at once: step size 1/1 on the first reward
    for n, r in enumerate(rewards, start=1):
        q = bandits.incremental_update(q, r, 1.0 / n)
        assert q[0] == pytest.approx(rewards[:n].mean(), abs=1e-12)


def test_constant_step_size_equals_exponential_recency_weighted_average():
    # eq. 2.6: Q_{n+1} = (1 - a)^n Q_1 + sum_i a (1 - a)^(n - i) R_i, computed directly.
    alpha, q1 = 0.1, 5.0
    rewards = np.random.default_rng(0).normal(1.0, 1.0, size=50)
    q = np.array([q1])
    for r in rewards:
        q = bandits.incremental_update(q, r, alpha)
    n = len(rewards)
    direct = (1 - alpha) ** n * q1 + sum(
        alpha * (1 - alpha) ** (n - i) * rewards[i - 1] for i in range(1, n + 1)
    )
    assert q[0] == pytest.approx(direct, abs=1e-12)
    # edge case alpha = 1: the estimate is the last reward
    assert bandits.incremental_update(np.array([3.0]), 7.0, 1.0)[0] == 7.0


def test_epsilon_greedy_agent_updates_only_the_chosen_arm():
    agent = bandits.EpsilonGreedy(2, 3, 0.0)
    agent.update(np.array([1, 2]), np.array([2.0, -1.0]))
    agent.update(np.array([1, 0]), np.array([4.0, 5.0]))
    assert np.allclose(agent.q, [[0.0, 3.0, 0.0], [5.0, 0.0, -1.0]])
    assert np.array_equal(agent.n, [[0, 2, 0], [1, 0, 1]])
    const = bandits.EpsilonGreedy(1, 2, 0.0, step_size=0.5, initial=5.0)
    const.update(np.array([0]), np.array([1.0]))
    assert np.allclose(const.q, [[3.0, 5.0]])


# ----------------------------------------------------------------------------------------------------
# Action selection
# ----------------------------------------------------------------------------------------------------
def test_argmax_breaks_ties_uniformly_and_never_picks_a_non_max():
    rng = np.random.default_rng(0)
    n = 30000
    values = np.tile([1.0, 3.0, 0.0, 3.0, 3.0], (n, 1))
    a = bandits.argmax_random_ties(values, rng)
    assert set(np.unique(a)) == {1, 3, 4}
    share = np.bincount(a, minlength=5)[[1, 3, 4]] / n
    assert np.all(np.abs(share - 1 / 3) < 4 * math.sqrt((1 / 3) * (2 / 3) / n))


def test_epsilon_greedy_exploration_rates():
    rng = np.random.default_rng(1)
    n, k = 40000, 10
    q = np.tile(np.arange(k, dtype=float), (n, 1))  # arm 9 is greedy
    assert np.all(bandits.epsilon_greedy_actions(q, 0.0, rng) == k - 1)
    # epsilon = 0.1: a random arm is the greedy one 1 time in k, so non-greedy with prob 0.1 * (k - 1) / k
    p = 0.1 * (k - 1) / k
    frac = np.mean(bandits.epsilon_greedy_actions(q, 0.1, rng) != k - 1)
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)
    counts = np.bincount(bandits.epsilon_greedy_actions(q, 1.0, rng), minlength=k) / n  # uniform
    assert np.all(np.abs(counts - 1 / k) < 4 * math.sqrt(0.1 * 0.9 / n))


def test_ucb_takes_untried_arms_first():
    rng = np.random.default_rng(0)
    q = np.array([[1.0, 0.5, 0.2, -3.0]])
    n = np.array([[3.0, 1.0, 0.0, 0.0]])
    picks = {int(bandits.ucb_actions(q, n, 5, 2.0, rng)[0]) for _ in range(200)}
    assert picks == {2, 3}  # both untried arms, never a tried one, even the best
    # at t = 1 nothing is tried; ln 1 = 0 must not produce nan
    first = bandits.ucb_actions(np.zeros((1, 4)), np.zeros((1, 4)), 1, 2.0, rng)
    assert 0 <= first[0] < 4


def test_ucb_choice_by_hand():
    rng = np.random.default_rng(0)
    q = np.array([[1.0, 0.5, 0.2]])
    n = np.array([[10.0, 1.0, 5.0]])
    # t = 16, c = 2: ln 16 = 2.7726
    #   arm 0: 1.0 + 2 sqrt(2.7726/10) = 1.0 + 2 * 0.5266 = 2.053
    #   arm 1: 0.5 + 2 sqrt(2.7726/1)  = 0.5 + 2 * 1.6651 = 3.830   <- the rarely tried arm wins
    #   arm 2: 0.2 + 2 sqrt(2.7726/5)  = 0.2 + 2 * 0.7447 = 1.689
    assert bandits.ucb_actions(q, n, 16, 2.0, rng)[0] == 1
    # c = 0.1: arm 0: 1.0527, arm 1: 0.6665, arm 2: 0.2745 -> the greedy arm wins
    assert bandits.ucb_actions(q, n, 16, 0.1, rng)[0] == 0
    # equal counts: equal bonuses, so UCB is greedy
    assert bandits.ucb_actions(np.array([[0.0, 2.0, 1.0]]), np.full((1, 3), 7.0), 30, 1.0, rng)[0] == 1


# ----------------------------------------------------------------------------------------------------
# Gradient bandit (§2.8)
# ----------------------------------------------------------------------------------------------------
def test_softmax_values_and_stability():
    pi = bandits.softmax(np.array([[0.0, math.log(2.0), 0.0], [1000.0, 1000.0, -1000.0]]))
    assert np.allclose(pi, [[0.25, 0.5, 0.25], [0.5, 0.5, 0.0]])


def test_gradient_bandit_preference_update_by_hand():
    # Uniform preferences, pi = 1/3 each; A = 1, R = 2, baseline 0.5, alpha = 0.1:
    #   H(1) = 0 + 0.1 * 1.5 * (1 - 1/3) = 0.1;   H(others) = 0 - 0.1 * 1.5 / 3 = -0.05
    h = bandits.gradient_bandit_update(np.zeros((1, 3)), np.array([1]), np.array([2.0]), np.array([0.5]), 0.1)
    assert np.allclose(h, [[-0.05, 0.1, -0.05]])
    # pi = [0.25, 0.5, 0.25]; A = 0, R = 0, baseline 1, alpha = 0.4: alpha (R - baseline) = -0.4
    #   H(0) = 0 - 0.4 * 0.75 = -0.3;  H(1) = ln 2 + 0.4 * 0.5 = ln 2 + 0.2;  H(2) = 0 + 0.4 * 0.25 = 0.1
    h0 = np.array([[0.0, math.log(2.0), 0.0]])
    h = bandits.gradient_bandit_update(h0, np.array([0]), np.array([0.0]), np.array([1.0]), 0.4)
    assert np.allclose(h, [[-0.3, math.log(2.0) + 0.2, 0.1]])
    # reward equal to the baseline: no change
    same = bandits.gradient_bandit_update(h0, np.array([2]), np.array([1.0]), np.array([1.0]), 0.4)
    assert np.array_equal(same, h0)


def test_gradient_bandit_agent_baseline():
    # With the baseline, R̄_1 = R_1, so the first step changes nothing; after it the baseline is the mean
    # of the earlier rewards. Without it, the baseline is 0.
    agent = bandits.GradientBandit(1, 3, 0.1, baseline=True)
    agent.update(np.array([0]), np.array([5.0]))
    assert np.array_equal(agent.h, np.zeros((1, 3)))
    agent.update(np.array([1]), np.array([2.0]))  # baseline 5: alpha (R - 5) = -0.3, pi uniform
    assert np.allclose(agent.h, [[0.1, -0.2, 0.1]])
    assert agent.average_reward[0] == pytest.approx(3.5)
    plain = bandits.GradientBandit(1, 3, 0.1, baseline=False)
    plain.update(np.array([0]), np.array([3.0]))  # alpha R = 0.3
    assert np.allclose(plain.h, [[0.2, -0.1, -0.1]])


def test_gradient_bandit_samples_from_softmax():
    agent = bandits.GradientBandit(40000, 3, 0.1)
    agent.h[:] = [0.0, math.log(2.0), 0.0]
    a = agent.act(1, np.random.default_rng(0))
    share = np.bincount(a, minlength=3) / len(a)
    p = np.array([0.25, 0.5, 0.25])
    assert np.all(np.abs(share - p) < 4 * np.sqrt(p * (1 - p) / len(a)))


# ----------------------------------------------------------------------------------------------------
# Thompson sampling (Gaussian posterior, known unit variance)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prior_mean", "prior_var"), [(0.0, 1.0), (0.5, 4.0)])
def test_gaussian_posterior_matches_closed_form(prior_mean, prior_var):
    rng = np.random.default_rng(3)
    k = 4
    actions = rng.integers(0, k, size=60)
    actions[:3] = 0  # arm 3 may stay untried: then the posterior must still be the prior
    actions[actions == 3] = 1
    rewards = rng.normal(1.0, 1.0, size=60)
    agent = bandits.ThompsonSampling(1, k, prior_mean, prior_var)
    for a, r in zip(actions, rewards, strict=True):
        agent.update(np.array([a]), np.array([r]))
    for arm in range(k):
        r = rewards[actions == arm]
        # conjugate normal-normal: precision 1/s0^2 + n, mean (m0/s0^2 + sum r) / precision
        precision = 1 / prior_var + len(r)
        mean = (prior_mean / prior_var + r.sum()) / precision
        assert agent.precision[0, arm] == pytest.approx(precision)
        assert agent.mean[0, arm] == pytest.approx(mean, abs=1e-12)


def test_thompson_choice_probabilities():
    rng = np.random.default_rng(5)
    n = 40000
    mean = np.tile([0.0, 1.0], (n, 1))
    precision = np.ones((n, 2))
    # P(theta_1 > theta_0) with theta_0 ~ N(0,1), theta_1 ~ N(1,1) is Phi(1/sqrt 2) = 0.7602
    p = 0.5 * (1 + math.erf(0.5))
    frac = np.mean(bandits.thompson_actions(mean, precision, rng) == 1)
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)
    # a very confident posterior is greedy
    assert np.all(bandits.thompson_actions(mean, np.full((n, 2), 1e8), rng) == 1)


# ----------------------------------------------------------------------------------------------------
# Must show: the book's numbers, 2000 runs x 1000 steps (about 4 s in total here)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bandits")
    fig22 = bandits.main(bandits.Args(figure="2.2", plot=str(tmp / "f22.png")))["results"]
    fig24 = bandits.main(bandits.Args(figure="2.4", plot=str(tmp / "f24.png")))["results"]
    return {"greedy": fig22["ε = 0.0 (greedy)"], "eps0.1": fig22["ε = 0.1"], "ucb": fig24["UCB c = 2"]}


@pytest.mark.parametrize(("method", "book"), [("eps0.1", 1.39), ("ucb", 1.50), ("greedy", 1.03)])
def test_average_reward_last_100_steps_matches_book(full_size, method, book):
    """Average reward over steps 901-1000, 2000 runs, against the level read off Figures 2.2 / 2.4.

    se = sd(per-run average over the last 100 steps) / sqrt(2000), measured here (about 0.013).
    The book's curve is itself an average of 2000 runs with the same standard error, so the
    difference has standard error sqrt(2) * se; tolerance = 3 * sqrt(2) * se + READING_PRECISION
    (about 0.085 in total).
    """
    s = full_size[method]
    tol = 3 * math.sqrt(2) * s["reward_last_se"] + READING_PRECISION
    assert abs(s["reward_last"] - book) < tol, (method, s["reward_last"], book, tol)


def test_ordering_ucb_over_epsilon_over_greedy(full_size):
    # The book's conclusion from Figures 2.2 and 2.4; each gap must exceed 3 standard errors of a difference.
    g, e, u = full_size["greedy"], full_size["eps0.1"], full_size["ucb"]
    assert e["reward_last"] - g["reward_last"] > 3 * math.hypot(e["reward_last_se"], g["reward_last_se"])
    assert u["reward_last"] - e["reward_last"] > 3 * math.hypot(u["reward_last_se"], e["reward_last_se"])


@pytest.mark.slow
def test_figures_2_3_and_2_5_claims(tmp_path):
    """% optimal action over the last 100 steps, 2000 runs: the book's statements about Figures 2.3 and 2.5.

    Figure 2.3: optimistic greedy (Q1 = 5) ends above realistic ε-greedy. Figure 2.5: at each α, the
    baseline version ends above the one without. Each gap must exceed 3 standard errors of a difference.
    """

    def above(a, b):
        return a["optimal_last"] - b["optimal_last"] > 3 * math.hypot(
            a["optimal_last_se"], b["optimal_last_se"]
        )

    f23 = bandits.main(bandits.Args(figure="2.3", plot=str(tmp_path / "f23.png")))["results"]
    optimistic, realistic = f23.values()
    assert above(optimistic, realistic)
    f25 = bandits.main(bandits.Args(figure="2.5", plot=str(tmp_path / "f25.png")))["results"]
    for alpha in (0.1, 0.4):
        assert above(f25[f"α = {alpha}, with baseline"], f25[f"α = {alpha}, without baseline"])


# ----------------------------------------------------------------------------------------------------
# main: every figure runs, same seed gives the same numbers, bad input is refused
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("figure", ["2.3", "2.4", "2.5", "thompson"])  # 2.2 and 2.6: the smoke runs
def test_every_figure_runs_small(tmp_path, figure):
    out = bandits.main(
        bandits.Args(
            figure=figure,
            num_runs=20,
            num_steps=60,
            summary_window=10,
            plot=str(tmp_path / "fig_{figure}.png"),
        )
    )
    assert (tmp_path / f"fig_{figure.replace('.', '_')}.png").stat().st_size > 0
    assert out["results"] and all(math.isfinite(s["reward_last"]) for s in out["results"].values())


def test_same_seed_same_result(tmp_path):
    def run(seed):
        args = bandits.Args(
            figure="thompson", num_runs=30, num_steps=80, seed=seed, plot=str(tmp_path / "f.png")
        )
        return bandits.main(args)["results"]

    assert run(3) == run(3)
    assert run(3) != run(4)
