"""Tests of algorithms/td_lambda.py: TD(lambda) (accumulating, replacing), offline lambda-return and true
online TD(lambda) on the 19-state random walk (S&B §12.1, 12.2, 12.5; Figures 12.3, 12.6, 12.8)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_one_line_exit_2, load_algo
from gymnasium.utils.env_checker import check_env

m = load_algo("td_lambda")


def batch(states, rewards):
    """One hand episode as the functions' batched arrays: one setting, one run."""
    return np.array([states]), np.array([rewards], dtype=float), np.array([len(rewards)])


def test_environment_and_features():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec" warning: the env is not registered, by design
        check_env(m.RandomWalk(19, -1.0, 1.0))
    env = m.RandomWalk(19, -1.0, 1.0)
    assert env.reset(seed=0) == (10, {})
    X = m.one_hot_features(19)
    assert X.shape == (21, 19) and np.all(X[0] == 0) and np.all(X[20] == 0)
    assert np.array_equal(X[1:20], np.eye(19))
    np.testing.assert_allclose(m.true_values(19, -1.0, 1.0), (np.arange(1, 20) - 10) / 10)
    # weights 0: the error is sqrt(mean(v^2)) = sqrt(sum k^2, k = -9..9 / 100 / 19) = sqrt(0.3)
    assert m.rms_error(np.zeros(19) @ X.T, m.true_values(19, -1.0, 1.0)) == pytest.approx(np.sqrt(0.3))


def td0_reference(V, states, rewards, alpha, gamma=1.0):
    V = V.copy()
    for t in range(len(rewards)):
        V[states[t]] += alpha * (rewards[t] + gamma * V[states[t + 1]] - V[states[t]])
    return V


def test_lambda_zero_is_td0_exactly():
    episodes = m.generate_episodes(m.RandomWalk(19, -1.0, 1.0), num_runs=4, num_episodes=3, seed=2)
    X = m.one_hot_features(19)
    alphas, lams = np.array([0.1, 0.5]), np.zeros(2)
    w = {k: np.zeros((2, 4, 19)) for k in ("accumulating", "replacing", "true_online")}
    V = np.zeros((2, 4, 21))  # the tabular reference, with the two terminals
    for states, rewards, lengths in episodes:
        for trace in ("accumulating", "replacing"):
            w[trace] = m.td_lambda_episode(w[trace], X, states, rewards, lengths, alphas, lams, 0.9, trace)
        w["true_online"] = m.true_online_td_lambda_episode(w["true_online"], X, states, rewards, lengths,
                                                            alphas, lams, 0.9)
        for a in range(2):
            for r in range(4):
                T = lengths[r]
                V[a, r] = td0_reference(V[a, r], states[r, :T + 1], rewards[r, :T], alphas[a], 0.9)
    # accumulating and replacing traces with lambda = 0 are x itself: the same arithmetic as TD(0)
    assert np.array_equal(w["accumulating"], V[..., 1:-1])
    assert np.array_equal(w["replacing"], V[..., 1:-1])
    # true online: the extra terms alpha (v - v_old) z - alpha (v - v_old) x cancel only up to rounding
    np.testing.assert_allclose(w["true_online"], V[..., 1:-1], rtol=0, atol=1e-12)


def test_accumulating_and_replacing_traces_differ_on_a_revisit():
    """5-state walk C, B, C, D, E, right exit; rewards 0, 0, 0, 0, 1; w = 0; alpha = 0.5; lambda = 0.5.

    By hand: every TD error is 0 except the last, delta_4 = 1. Over t = 0..4 the trace of C is, accumulating,
    1 -> 0.5 -> 0.25 + 1 = 1.25 -> 0.625 -> 0.3125, and replacing, 1 -> 0.5 -> 1 -> 0.5 -> 0.25; both have
    z_B = 0.125, z_D = 0.5, z_E = 1 at t = 4. So w = alpha * delta_4 * z = 0.5 * z:
    accumulating (A..E) = (0, 0.0625, 0.15625, 0.25, 0.5), replacing = (0, 0.0625, 0.125, 0.25, 0.5).
    """
    X = m.one_hot_features(5)
    states, rewards, lengths = batch([3, 2, 3, 4, 5, 6], [0, 0, 0, 0, 1])
    w0 = np.zeros((1, 1, 5))
    acc = m.td_lambda_episode(w0, X, states, rewards, lengths, [0.5], [0.5], 1.0, "accumulating")[0, 0]
    rep = m.td_lambda_episode(w0, X, states, rewards, lengths, [0.5], [0.5], 1.0, "replacing")[0, 0]
    np.testing.assert_allclose(acc, [0, 0.0625, 0.15625, 0.25, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(rep, [0, 0.0625, 0.125, 0.25, 0.5], rtol=0, atol=1e-15)
    # without a revisit the two traces are the same
    states, rewards, lengths = batch([3, 4, 5, 6], [0, 0, 1])
    a = m.td_lambda_episode(w0 + 0.3, X, states, rewards, lengths, [0.5], [0.5], 1.0, "accumulating")
    b = m.td_lambda_episode(w0 + 0.3, X, states, rewards, lengths, [0.5], [0.5], 1.0, "replacing")
    np.testing.assert_array_equal(a, b)


def lambda_return_reference(v, rewards, lam, gamma):
    """G^lambda_t by the definition (12.3) with the episode-end truncation: (1 - lambda) sum_n lambda^(n-1)
    G_{t:t+n} for n < T - t, plus lambda^(T-t-1) G_t. v[k] = v(S_k), v[T] = 0."""
    T = len(rewards)
    out = []
    for t in range(T):
        def n_step(n, t=t):
            return sum(gamma ** (i - t - 1) * rewards[i - 1] for i in range(t + 1, t + n + 1)) + gamma**n * v[t + n]
        out.append((1 - lam) * sum(lam ** (n - 1) * n_step(n) for n in range(1, T - t)) + lam ** (T - t - 1) * n_step(T - t))
    return np.array(out)


@pytest.mark.parametrize("lam, gamma", [(0.0, 1.0), (0.7, 0.9), (1.0, 0.8)])
def test_lambda_returns_match_the_definition(lam, gamma):
    X = m.one_hot_features(3)
    w = np.array([[[0.2, -0.4, 0.7]]])
    states, rewards, _ = batch([2, 1, 2, 3, 4], [0.5, 0, -1, 2])
    G = m.lambda_returns(w, X, states, rewards, gamma, [lam])[0, 0]
    v = w[0, 0] @ X[states[0]].T
    np.testing.assert_allclose(G, lambda_return_reference(v, rewards[0], lam, gamma), atol=1e-12)


def mc_reference(w, X, states, rewards, alpha, gamma=1.0):
    """Constant-alpha MC with linear v: w <- w + alpha (G_t - w.x_t) x_t for t = 0..T-1."""
    w = w.copy()
    for t in range(len(rewards)):
        G = sum(gamma ** (i - t) * rewards[i] for i in range(t, len(rewards)))
        x = X[states[t]]
        w = w + alpha * (G - w @ x) * x
    return w


def test_lambda_one_is_the_monte_carlo_update_by_hand():
    """3-state walk 2, 1, 2, 3, right exit (4 steps, state 2 twice), rewards 0, 0, 0, 1, w = 0, alpha = 0.5.
    By hand every return is 1, and MC updates in order: w_2 = 0.5, w_1 = 0.5, w_2 = 0.5 + 0.5 * 0.5 = 0.75,
    w_3 = 0.5. The offline lambda-return and true online TD(lambda) with lambda = 1 must give the same."""
    X = m.one_hot_features(3)
    states, rewards, lengths = batch([2, 1, 2, 3, 4], [0, 0, 0, 1])
    w0 = np.zeros((1, 1, 3))
    expected = [0.5, 0.75, 0.5]
    off = m.offline_lambda_return_episode(w0, X, states, rewards, lengths, [0.5], [1.0])[0, 0]
    tol = m.true_online_td_lambda_episode(w0, X, states, rewards, lengths, [0.5], [1.0])[0, 0]
    np.testing.assert_allclose(off, expected, atol=1e-12)
    np.testing.assert_allclose(tol, expected, atol=1e-12)
    # the same from non-zero weights and gamma < 1, against the MC loop
    w1 = np.array([[[0.3, -0.2, 0.9]]])
    ref = mc_reference(w1[0, 0], X, states[0], rewards[0], 0.4, gamma=0.9)
    off = m.offline_lambda_return_episode(w1, X, states, rewards, lengths, [0.4], [1.0], 0.9)[0, 0]
    tol = m.true_online_td_lambda_episode(w1, X, states, rewards, lengths, [0.4], [1.0], 0.9)[0, 0]
    np.testing.assert_allclose(off, ref, atol=1e-12)
    np.testing.assert_allclose(tol, ref, atol=1e-12)


def online_lambda_return_reference(w0, X, states, rewards, alpha, lam, gamma):
    """The online lambda-return algorithm (§12.4), slowly: for every horizon h = 1..T redo the updates
    t = 0..h-1 from the episode's first weights towards the truncated lambda-return G^lambda_{t:h} (12.9),
    whose n-step returns bootstrap with w_{t+n-1}, the final weights of horizon t + n - 1."""
    T = len(rewards)
    final = [w0.copy()]  # final[h] = w^h_h
    for h in range(1, T + 1):
        w = w0.copy()
        for t in range(h):
            def n_step(n, t=t):
                G = sum(gamma ** (i - t - 1) * rewards[i - 1] for i in range(t + 1, t + n + 1))
                return G + gamma**n * final[t + n - 1] @ X[states[t + n]]
            G_lam = (1 - lam) * sum(lam ** (n - 1) * n_step(n) for n in range(1, h - t)) \
                + lam ** (h - t - 1) * n_step(h - t)
            x = X[states[t]]
            w = w + alpha * (G_lam - w @ x) * x
        final.append(w)
    return final[T]


@pytest.mark.parametrize("lam, gamma, alpha", [(0.5, 1.0, 0.3), (0.9, 0.9, 0.6), (1.0, 1.0, 0.25), (0.3, 0.7, 1.0)])
@pytest.mark.parametrize("walk", [([2, 1, 2, 3, 4], [0, 0, 0, 1]), ([2, 3, 2, 1, 0], [0.5, 0, 0, -1]),
                                  ([2, 3, 4], [0, 1])])
def test_true_online_equals_the_online_lambda_return(lam, gamma, alpha, walk):
    X = m.one_hot_features(3)
    states, rewards, lengths = batch(*walk)
    w0 = np.array([[[0.1, -0.3, 0.6]]])
    ref = online_lambda_return_reference(w0[0, 0], X, states[0], rewards[0], alpha, lam, gamma)
    out = m.true_online_td_lambda_episode(w0, X, states, rewards, lengths, [alpha], [lam], gamma)[0, 0]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_padded_batch_equals_single_runs():
    """Settings and runs are independent: a padded batch gives each run's own single-episode result."""
    episodes = m.generate_episodes(m.RandomWalk(19, -1.0, 1.0), num_runs=3, num_episodes=1, seed=5)
    states, rewards, lengths = episodes[0]
    X = m.one_hot_features(19)
    alphas, lams = np.array([0.2, 0.4]), np.array([0.8, 0.95])
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(2, 3, 19)) * 0.1
    for method in m.METHODS.values():
        out = method(w0, X, states, rewards, lengths, alphas, lams)
        for p in range(2):
            for r in range(3):
                T = lengths[r]
                one = method(w0[p:p + 1, r:r + 1], X, states[r:r + 1, :T + 1], rewards[r:r + 1, :T],
                             lengths[r:r + 1], alphas[p:p + 1], lams[p:p + 1])
                np.testing.assert_allclose(out[p, r], one[0, 0], rtol=0, atol=1e-12)


# The default suite sweeps a coarse grid holding each curve's minimum region (lambda = 1 near 0.02, 0.8 near
# 0.3-0.4, 0 near 0.8); the slow test sweeps the figures' full grid of 24 step sizes.
COARSE_ALPHAS = (0.01, 0.02, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0)


def check_intermediate_lambda_is_best(method, alphas):
    """Must show (Figures 12.3, 12.6, 12.8): 100 runs, the first 10 episodes. lambda = 0.8's best-alpha error
    is below lambda = 0's and lambda = 1's. All settings replay the same walks, so the test is paired per run:
    d_r = err_r(lambda, its best alpha) - err_r(0.8, its best alpha), and mean(d) > 3 sd(d) / sqrt(100) is
    required (the minimum-picking bias, a fraction of an SE, is the same for each curve and far below the
    gaps of 0.08 to 0.24 on the full grid)."""
    episodes = m.generate_episodes(m.RandomWalk(19, -1.0, 1.0), 100, 10, seed=1)
    errors = m.sweep(method, episodes, (0.0, 0.8, 1.0), np.array(alphas), m.true_values(19, -1.0, 1.0))
    best = errors.mean(axis=2).argmin(axis=1)
    best_runs = errors[np.arange(3), best]
    assert np.all(np.isfinite(best_runs))
    for other in (0, 2):
        d = best_runs[other] - best_runs[1]
        assert d.mean() > 3 * d.std(ddof=1) / np.sqrt(100), (method, other)


@pytest.mark.parametrize("method", ["offline_lambda_return", "accumulating", "true_online"])
def test_intermediate_lambda_is_best(method):
    check_intermediate_lambda_is_best(method, COARSE_ALPHAS)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["offline_lambda_return", "accumulating", "true_online"])
def test_intermediate_lambda_is_best_full_grid(method):
    check_intermediate_lambda_is_best(method, m.Args().alphas)


def test_accumulating_traces_diverge_at_large_alpha_lambda():
    """Figure 12.6's curves leave the plot at large alpha for lambda near 1: the sweep reports inf, not nan."""
    episodes = m.generate_episodes(m.RandomWalk(19, -1.0, 1.0), 5, 3, seed=1)
    errors = m.sweep("accumulating", episodes, (0.99,), np.array([1.0]), m.true_values(19, -1.0, 1.0))
    assert np.all(np.isinf(errors) | (errors > 1.0))


def test_main_writes_the_figure(tmp_path):
    out = tmp_path / "sub" / "fig.png"
    result = m.main(m.Args(num_runs=3, lambdas=(0.0, 0.8), alphas=(0.2, 0.4), plot=str(out)))
    assert out.exists()
    assert set(result) == set(m.METHODS) and set(result["true_online"]) == {0.0, 0.8}


@pytest.mark.parametrize("change, expected", [
    ({"num_runs": 0}, "--num-runs"), ({"lambdas": (0.5, 1.5)}, "--lambdas"), ({"lambdas": (float("nan"),)}, "--lambdas"),
    ({"alphas": (-0.3,)}, "--alphas"), ({"methods": ("dutch",)}, "--methods"),
    ({"plot": "/proc/onefile-rl-missing/fig.png"}, "cannot write --plot"),
])
def test_bad_input_is_one_line_exit_2(change, expected, capsys, tmp_path):
    args = m.Args(**{"plot": str(tmp_path / "fig.png"), **change})
    assert_one_line_exit_2(lambda: m.main(args), expected, capsys)
    assert not any(tmp_path.iterdir())  # nothing written
