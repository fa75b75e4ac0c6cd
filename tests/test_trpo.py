"""trpo.py: conjugate gradient against a direct solve, the Fisher-vector product against an explicit Hessian of
the mean KL (and against the Fisher as an expectation), the trust-region step (KL bound, surrogate improvement,
exact step length, rejection by the line search), the KL divergences against closed forms, GAE against a
slow reference loop (the Gaussian log-probability and entropy, the same code in every file, are checked in
test_a2c.py), the optional observation/reward normalisation (running statistics against numpy, reward
scaling against a slow reference, normalised final observations, statistics saved with the actor and frozen at
evaluation), and learning regressions."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo
from reference_math import pooled_with_prior, reference_gae, reference_scaled_rewards
from torch.func import functional_call

trpo = load_algo("trpo")


# ---------------------------------------------------------------- conjugate gradient


def test_conjugate_gradient_by_hand_2x2():
    # [[4, 1], [1, 3]] x = [1, 2]  ->  x = [1/11, 7/11]; CG is exact in n = 2 iterations
    A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    x = trpo.conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0], dtype=torch.float64), iters=2)
    torch.testing.assert_close(x, torch.tensor([1 / 11, 7 / 11], dtype=torch.float64))
    # one iteration is the steepest-descent step from 0: x = (r.r / r.Ar) r with r = b
    x1 = trpo.conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0], dtype=torch.float64), iters=1)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(x1, (b @ b) / (b @ A @ b) * b)


def test_conjugate_gradient_solves_random_spd_system():
    rng = np.random.default_rng(0)
    n = 12
    M = rng.normal(size=(n, n))
    A = M @ M.T + 0.5 * np.eye(n)  # symmetric positive-definite
    b = rng.normal(size=n)
    At = torch.tensor(A)
    calls = []

    def Avp(v):
        calls.append(1)
        return At @ v

    x = trpo.conjugate_gradient(Avp, torch.tensor(b), iters=50)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A, b), rtol=1e-6, atol=1e-8)
    assert len(calls) <= n + 2  # converged (residual below tolerance) in about n iterations, not 50
    # fewer iterations: an approximation whose residual shrinks with the iteration count
    res = [np.linalg.norm(A @ trpo.conjugate_gradient(Avp, torch.tensor(b), iters=k).numpy() - b) for k in (1, 4, 8)]
    assert res[0] > res[1] > res[2] > 0
    assert torch.equal(trpo.conjugate_gradient(lambda v: 2 * v, torch.zeros(5), iters=10), torch.zeros(5))  # b = 0


# ---------------------------------------------------------------- Fisher-vector product


def make_actor(obs_dim: int, act_dim: int, discrete: bool, hidden_size: int = 64):
    """An Actor; a Gaussian one with the bounds [-2, 2] in every action dimension."""
    bounds = {} if discrete else {"action_low": [-2.0] * act_dim, "action_high": [2.0] * act_dim}
    return trpo.Actor(obs_dim, act_dim, discrete, hidden_size, **bounds)


def tiny_actor(discrete: bool, seed: int = 0):
    torch.manual_seed(seed)
    actor = make_actor(obs_dim=2, act_dim=3 if discrete else 2, discrete=discrete, hidden_size=3).double()
    for p in actor.parameters():  # larger weights than the near-uniform initialisation: a less trivial Fisher
        p.data.normal_(0.0, 0.7)
    return actor


def kl_as_function_of_flat_params(actor, obs):
    """theta (flat) -> mean KL(pi_old || pi_theta), pi_old the actor's current policy, via functional_call."""
    names = [n for n, _ in actor.named_parameters()]
    shapes = [p.shape for _, p in actor.named_parameters()]
    with torch.no_grad():
        old = actor(obs)

    def f(theta):
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = math.prod(shape)
            params[name] = theta[offset : offset + k].view(shape)
            offset += k
        return actor.kl(old, functional_call(actor, params, (obs,))).mean()

    return f


@pytest.mark.parametrize("discrete", [True, False])
def test_fisher_vector_product_equals_explicit_hessian_of_mean_kl(discrete):
    actor = tiny_actor(discrete)
    obs = torch.randn(7, 2, dtype=torch.float64)
    params = list(actor.parameters())
    theta0 = trpo.get_flat_params(params)
    H = torch.autograd.functional.hessian(kl_as_function_of_flat_params(actor, obs), theta0)
    assert H.shape == (theta0.numel(), theta0.numel()) and H.abs().max() > 1e-3

    with torch.no_grad():
        old = actor(obs)
    mean_kl = actor.kl(old, actor(obs)).mean()
    damping = 0.1
    fvp = trpo.make_fisher_vector_product(mean_kl, params, damping)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # the graph is retained: several products from one KL
        v = torch.randn(theta0.numel(), generator=gen, dtype=torch.float64)
        torch.testing.assert_close(fvp(v), H @ v + damping * v, rtol=1e-8, atol=1e-10)


def test_hessian_of_kl_is_the_fisher_information():
    """For a Categorical the Fisher is an exact finite sum: F = mean_s sum_a pi(a|s) grad log pi grad log pi^T."""
    actor = tiny_actor(discrete=True)
    obs = torch.randn(5, 2, dtype=torch.float64)
    params = list(actor.parameters())
    n = trpo.get_flat_params(params).numel()
    F = torch.zeros(n, n, dtype=torch.float64)
    for s in range(obs.shape[0]):
        logp = actor(obs[s : s + 1])[0][0]
        for a in range(3):
            g = trpo.flat_grad(logp[a], params, retain_graph=True)
            F += logp[a].exp().detach() * torch.outer(g, g)
    F /= obs.shape[0]
    with torch.no_grad():
        old = actor(obs)
    fvp = trpo.make_fisher_vector_product(actor.kl(old, actor(obs)).mean(), params, damping=0.0)
    v = torch.randn(n, dtype=torch.float64)
    torch.testing.assert_close(fvp(v), F @ v, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- the trust-region step


def measured_kl_and_surrogate(old_logits_or_params, actor, obs, actions, adv, discrete):
    """Independent of trpo.py's formulas: torch.distributions."""
    with torch.no_grad():
        new = actor(obs)
        if discrete:
            d_old = torch.distributions.Categorical(logits=old_logits_or_params[0])
            d_new = torch.distributions.Categorical(logits=new[0])
        else:
            d_old = torch.distributions.Normal(old_logits_or_params[0], old_logits_or_params[1].exp())
            d_new = torch.distributions.Normal(new[0], new[1].exp())
        kl = torch.distributions.kl_divergence(d_old, d_new)
        lp_new, lp_old = d_new.log_prob(actions), d_old.log_prob(actions)
        if not discrete:
            kl, lp_new, lp_old = kl.sum(-1), lp_new.sum(-1), lp_old.sum(-1)
        return kl.mean().item(), (torch.exp(lp_new - lp_old) * adv).mean().item()


@pytest.mark.parametrize("discrete", [True, False])
def test_trpo_step_keeps_kl_within_delta_and_improves_the_surrogate(discrete):
    torch.manual_seed(3)
    actor = make_actor(obs_dim=3, act_dim=2, discrete=discrete, hidden_size=16)
    obs = torch.randn(512, 3)
    with torch.no_grad():
        old = tuple(t.clone() for t in actor(obs))  # clone: log_std is a view of the parameter
        actions = actor.sample(obs)
    # advantages that prefer one action (discrete) / large first action component (continuous): a real signal
    signal = (actions == 0).float() if discrete else actions[:, 0]
    adv = signal + 0.3 * torch.randn(512)
    adv = (adv - adv.mean()) / adv.std()
    before = trpo.get_flat_params(list(actor.parameters()))
    delta = 0.01
    kl0, surr0 = measured_kl_and_surrogate(old, actor, obs, actions, adv, discrete)
    assert kl0 == 0 and surr0 == pytest.approx(adv.mean().item(), abs=1e-6)

    stats = trpo.trpo_step(actor, obs, actions, adv, max_kl=delta, cg_iters=10, cg_damping=0.1,
                           line_search_factor=0.8, line_search_max_iter=10)
    kl, surr = measured_kl_and_surrogate(old, actor, obs, actions, adv, discrete)
    assert stats["accepted"]
    assert 0 < kl <= delta
    assert kl > 0.1 * delta  # a real step towards the boundary, not a vanishing one
    assert surr > surr0
    assert stats["kl"] == pytest.approx(kl, rel=1e-4)
    assert stats["surrogate_new"] == pytest.approx(surr, rel=1e-4, abs=1e-6)
    assert not torch.equal(trpo.get_flat_params(list(actor.parameters())), before)


def bias_only_gaussian(frozen_log_std: bool = True):
    """A 1-D Gaussian policy on an all-zero observation whose only free parameter is the last bias: its mean
    is exactly mean_0 + bias, and KL(old || new) = (bias step)^2 / (2 sigma^2) exactly (sigma = 1)."""
    torch.manual_seed(0)
    actor = make_actor(obs_dim=1, act_dim=1, discrete=False, hidden_size=4).double()
    for p in actor.parameters():
        p.requires_grad_(False)
    actor.net[4].bias.requires_grad_(True)
    return actor


def test_trpo_step_length_is_the_trust_region_radius():
    """Here the KL is exactly quadratic and the Fisher is 1: the full step moves the mean by sqrt(2 delta /
    (1 + damping)) in the direction of the surrogate's gradient and its KL is delta / (1 + damping)."""
    actor = bias_only_gaussian()
    obs = torch.zeros(4, 1, dtype=torch.float64)
    actions = torch.tensor([[-1.0], [0.5], [1.0], [2.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 0.2, 0.5, 1.0], dtype=torch.float64)  # gradient in the mean: mean(A * (a - mu)) > 0
    mu0 = actor(obs)[0][0, 0].item()
    delta, damping = 0.02, 0.25
    stats = trpo.trpo_step(actor, obs, actions, adv, max_kl=delta, cg_iters=10, cg_damping=damping,
                           line_search_factor=0.5, line_search_max_iter=10)
    step = actor(obs)[0][0, 0].item() - mu0
    assert stats["accepted"] and stats["step_fraction"] == 1.0
    assert step == pytest.approx(math.sqrt(2 * delta / (1 + damping)), rel=1e-9)
    assert stats["kl"] == pytest.approx(delta / (1 + damping), rel=1e-9)


def test_line_search_rejects_and_keeps_the_old_parameters():
    """The surrogate's gradient is positive but it curves down so fast that every tried step loses:
    L(d) - L(0) = (1000 (exp(-d^2/2) - 1) + (exp(d - d^2/2) - 1)) / 2 < 0 for d > ~0.002, while the
    shortest step tried is 0.8^9 * 0.135 = 0.018. All ten tries fail; the parameters stay bit for bit."""
    actor = bias_only_gaussian()
    obs = torch.zeros(2, 1, dtype=torch.float64)
    actions = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    adv = torch.tensor([1000.0, 1.0], dtype=torch.float64)
    before = [p.detach().clone() for p in actor.parameters()]
    kw = dict(max_kl=0.01, cg_iters=10, cg_damping=0.1, line_search_factor=0.8)
    stats = trpo.trpo_step(actor, obs, actions, adv, line_search_max_iter=10, **kw)
    assert not stats["accepted"] and stats["line_search_iters"] == 10
    assert stats["step_fraction"] == 0.0 and stats["kl"] == 0.0
    for p, q in zip(actor.parameters(), before, strict=True):
        assert torch.equal(p, q)
    # the direction itself was an ascent direction: a long enough search finds a (tiny) improving step
    stats = trpo.trpo_step(actor, obs, actions, adv, line_search_max_iter=40, **kw)
    assert stats["accepted"] and stats["surrogate_new"] > stats["surrogate_old"]
    assert stats["line_search_iters"] > 10 and stats["step_fraction"] == pytest.approx(0.8 ** (stats["line_search_iters"] - 1))


def test_zero_advantages_leave_the_policy_unchanged():
    torch.manual_seed(0)
    actor = make_actor(obs_dim=3, act_dim=2, discrete=True, hidden_size=8)
    obs = torch.randn(32, 3)
    before = trpo.get_flat_params(list(actor.parameters()))
    stats = trpo.trpo_step(actor, obs, actor.sample(obs), torch.zeros(32), 0.01, 10, 0.1, 0.8, 10)
    assert not stats["accepted"]
    assert torch.equal(trpo.get_flat_params(list(actor.parameters())), before)


@pytest.mark.parametrize("nan_check", [True, False])
def test_non_finite_advantages_are_named_and_never_reach_the_policy(nan_check):
    """The actor has no optimiser: trpo_step itself checks the surrogate, KL and step before the parameters move
    (main stops the run on stats["nonfinite"]). Without the check a NaN step is rejected by the line search."""
    torch.manual_seed(0)
    actor = make_actor(obs_dim=3, act_dim=2, discrete=True, hidden_size=8)
    obs = torch.randn(32, 3)
    adv = torch.randn(32)
    adv[5] = math.nan
    before = trpo.get_flat_params(list(actor.parameters()))
    stats = trpo.trpo_step(actor, obs, actor.sample(obs), adv, 0.01, 10, 0.1, 0.8, 10, nan_check=nan_check)
    assert stats["nonfinite"] == ("surrogate loss" if nan_check else None)
    assert not stats["accepted"]
    assert torch.equal(trpo.get_flat_params(list(actor.parameters())), before)


# ---------------------------------------------------------------- distributions


def test_kl_divergences_against_torch_and_by_hand():
    g = torch.Generator().manual_seed(1)
    m0, s0, m1, s1 = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m0, s0.exp()),
                                                 torch.distributions.Normal(m1, s1.exp())).sum(-1)
    torch.testing.assert_close(trpo.gaussian_kl(m0, s0, m1, s1), expected)
    # by hand: N(0, 1) || N(1, 2^2) = log 2 + (1 + 1) / 8 - 1/2
    one = torch.ones(1, 1, dtype=torch.float64)
    assert trpo.gaussian_kl(0 * one, 0 * one, one, math.log(2) * one).item() == pytest.approx(math.log(2) - 0.25)
    assert trpo.gaussian_kl(m0, s0, m0, s0).abs().max() == 0

    logits0, logits1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    lp0, lp1 = torch.log_softmax(logits0, -1), torch.log_softmax(logits1, -1)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits0),
                                                 torch.distributions.Categorical(logits=logits1))
    torch.testing.assert_close(trpo.categorical_kl(lp0, lp1), expected)
    # by hand: (1/2, 1/2) || (1/4, 3/4) = 1/2 log 2 + 1/2 log(2/3)
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    assert trpo.categorical_kl(p, q).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    a = torch.randint(0, 4, (5,), generator=g)
    cat = torch.distributions.Categorical(logits=logits0)
    torch.testing.assert_close(trpo.categorical_log_prob(lp0, a), cat.log_prob(a))
    torch.testing.assert_close(trpo.categorical_entropy(lp0), cat.entropy())


def test_gaussian_actor_log_std_is_state_independent_and_actions_are_unclipped():
    torch.manual_seed(0)
    actor = make_actor(obs_dim=3, act_dim=2, discrete=False)
    actor.log_std.data = torch.tensor([0.3, -0.2])
    mean, log_std = actor(torch.randn(10, 3))
    assert torch.equal(log_std, actor.log_std.expand(10, 2))
    torch.manual_seed(1)
    samples = actor.sample(torch.zeros(20_000, 3))
    np.testing.assert_allclose(samples.std(0).numpy(), np.exp([0.3, -0.2]), rtol=0.03)
    with torch.no_grad():
        actor.net[4].bias.copy_(torch.tensor([50.0, -0.5]))  # a mean far outside [-2, 2] in the first dimension
    greedy = actor.greedy_action(torch.zeros(4, 3))
    torch.testing.assert_close(greedy, actor(torch.zeros(4, 3))[0].clamp(-2.0, 2.0))
    assert (greedy[:, 0] == 2.0).all()


# ---------------------------------------------------------------- GAE


def test_gae_matches_reference_with_terminated_and_truncated_steps():
    rng = np.random.default_rng(2)
    T, N = 10, 3
    rewards, values = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    next_values = np.vstack([values[1:], rng.normal(size=(1, N))])
    terminated, truncated = np.zeros((T, N)), np.zeros((T, N))
    terminated[3, 0] = 1
    truncated[7, 0] = 1
    next_values[7, 0] = 5.0  # V(final observation), not the next episode's first one
    truncated[0, 1] = 1
    next_values[0, 1] = -3.0
    terminated[9, 2] = 1
    gamma, lam = 0.99, 0.95
    adv, ret = trpo.compute_gae(*(torch.tensor(x) for x in (rewards, values, next_values, terminated, truncated)),
                                gamma, lam)
    expected = np.array(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(), terminated.tolist(),
                                      truncated.tolist(), gamma, lam))
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), expected + values, atol=1e-12)


# ---------------------------------------------------------------- observation and reward normalisation


def test_running_mean_std_against_numpy_over_a_stream_of_batches():
    """After each batch: exactly numpy's mean and (biased) variance of everything seen when the prior weight is
    0; with the default prior (mean 0, var 1, weight 1e-4) the same data pooled with that pseudo-sample."""
    rng = np.random.default_rng(7)
    dims = 4
    batches = [rng.standard_t(df=3, size=(n, dims)) * [0.5, 20.0, 1e-3, 1.0] + [-7.0, 300.0, 0.0, 1.0]
               for n in (2, 0, 1, 33, 5, 0, 128, 1, 1, 9, 60, 2)]
    without_prior, with_prior = trpo.RunningMeanStd((dims,), epsilon=0.0), trpo.RunningMeanStd((dims,))
    seen = np.zeros((0, dims))
    for batch in batches:
        without_prior.update(batch)
        with_prior.update(batch)
        seen = np.vstack([seen, batch])
        if len(seen):
            np.testing.assert_allclose(without_prior.mean, np.mean(seen, axis=0), rtol=1e-11, atol=1e-14)
            np.testing.assert_allclose(without_prior.var, np.var(seen, axis=0), rtol=1e-9)
        mean, var = pooled_with_prior(seen, 1e-4)
        np.testing.assert_allclose(with_prior.mean, mean, rtol=1e-11, atol=1e-300)
        np.testing.assert_allclose(with_prior.var, var, rtol=1e-9)
        assert with_prior.count == pytest.approx(len(seen) + 1e-4)
    # normalisation by hand: (o - mean) / sqrt(var + 1e-8), clipped
    rms = trpo.RunningMeanStd((2,))
    rms.mean, rms.var = np.array([100.0, -3.0]), np.array([25.0, 1e-12])
    got = trpo.normalize_obs(np.array([[110.0, -3.0], [40.0, -2.999]]), rms, clip=5.0)  # 1e-3 / ~1e-4 -> 5
    np.testing.assert_allclose(got, [[10.0 / math.sqrt(25 + 1e-8), 0.0], [-5.0, 5.0]], rtol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("clip", [10.0, 0.5])
def test_reward_scaling_against_a_slow_reference(clip):
    """Terminations and truncations both reset the discounted return (SB3 VecNormalize), as main() passes them."""
    rng = np.random.default_rng(11)
    T, N, gamma = 30, 2, 0.99
    rewards = rng.uniform(-1.0, 5.0, size=(T, N))
    terminated, truncated = np.zeros((T, N)), np.zeros((T, N))
    terminated[[6, 20], 0] = 1
    truncated[12, 0] = 1
    truncated[[9, 10], 1] = 1
    scaler = trpo.RewardScaler(N, gamma, clip)
    got = np.array([scaler(rewards[t], np.logical_or(terminated[t], truncated[t])) for t in range(T)])
    expected = reference_scaled_rewards(rewards, np.logical_or(terminated, truncated), gamma, clip)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.dtype == np.float32
    if clip < 1:
        assert np.isclose(np.abs(expected), clip).any(), "the clipped case must clip something"


class ObsProbe(gym.Env):
    """Large, off-centre observations (so that normalising them matters), two actions, reward 3 or 7, and every
    episode truncated after 5 steps. Each instance records what it emits, in order: (observation, ends episode)."""

    instances: list[ObsProbe] = []

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.emitted: list[tuple[np.ndarray, bool]] = []
        self.rewards: list[list[float]] = []
        self.t = 0
        ObsProbe.instances.append(self)

    def _obs(self) -> np.ndarray:
        u = self.np_random.uniform(-1.0, 1.0, 2)
        return np.array([100.0 + 5.0 * u[0], -40.0 + 0.5 * u[1]], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.rewards.append([])
        obs = self._obs()
        self.emitted.append((obs, False))
        return obs, {}

    def step(self, action):
        self.t += 1
        obs, reward, truncated = self._obs(), 3.0 + 4.0 * int(action), self.t >= 5
        self.emitted.append((obs, truncated))
        self.rewards[-1].append(reward)
        return obs, reward, False, truncated, {}


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """One training iteration (2 envs x 16 steps: three truncations per env) on ObsProbe with both
    normalisations, recording the critic's [T, N, obs] input (the successor observations of the bootstrap),
    the reward scaler, and the actor's evaluation inputs."""
    import os

    gym.register("TrpoObsProbe-v0", entry_point=ObsProbe)
    critic_inputs, greedy_inputs, scalers = [], [], []

    class RecordingCritic(trpo.ValueNetwork):
        def forward(self, x):
            if x.dim() == 3:
                critic_inputs.append(x.detach().clone())
            return super().forward(x)

    class RecordingScaler(trpo.RewardScaler):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            scalers.append(self)

    original_greedy = trpo.Actor.greedy_action
    mp = pytest.MonkeyPatch()
    mp.setattr(trpo, "ValueNetwork", RecordingCritic)
    mp.setattr(trpo, "RewardScaler", RecordingScaler)
    mp.setattr(trpo.Actor, "greedy_action", lambda self, x: greedy_inputs.append(x.clone()) or original_greedy(self, x))
    mp.chdir(tmp_path_factory.mktemp("probe"))
    ObsProbe.instances = []
    try:
        args = trpo.Args(env_id="TrpoObsProbe-v0", total_timesteps=32, num_envs=2, num_steps=16, batch_size=16,
                         n_critic_updates=1, eval_episodes=2, norm_obs=True, norm_reward=True, save_model=True)
        out = trpo.main(args)
        out["model_path"] = os.path.abspath(out["model_path"])
        train_envs = [e for e in ObsProbe.instances if e.emitted][:2]
        eval_env = [e for e in ObsProbe.instances if e.emitted][2]
        yield dict(args=args, out=out, train_envs=train_envs, eval_env=eval_env, critic_inputs=critic_inputs,
                   greedy_inputs=greedy_inputs, scaler=scalers[0])
    finally:
        mp.undo()


def returned_observations(env: ObsProbe) -> np.ndarray:
    """What the vector environment hands the policy in same-step autoreset: every emitted observation except the
    final ones, which it replaces by the next episode's first observation (and puts in info["final_obs"])."""
    return np.array([o for o, ends in env.emitted if not ends], dtype=np.float64)


def test_truncation_bootstrap_uses_final_observations_normalised_with_the_current_statistics(probe_run):
    """Worked out from the observations the environments emitted: at step t the statistics pool every
    observation returned so far (reset ones included, final ones excluded); V(s') is fed the normalised
    next observation, or at a truncation the normalised final observation, with those statistics."""
    envs, T = probe_run["train_envs"], probe_run["args"].num_steps
    (succ,) = probe_run["critic_inputs"]
    assert succ.shape == (T, 2, 2)
    returned = [returned_observations(e) for e in envs]  # [T + 1, 2] each: the first reset, then one per step
    finals = [[o for o, ends in e.emitted if ends] for e in envs]
    expected, n_truncated = np.zeros((T, 2, 2)), 0
    for t in range(T):
        mean, var = pooled_with_prior(np.vstack([r[: t + 2] for r in returned]), 1e-4)
        for n in range(len(envs)):
            truncated_here = (t + 1) % 5 == 0  # episodes of 5 steps, all started together
            o = finals[n][(t + 1) // 5 - 1] if truncated_here else returned[n][t + 1]
            n_truncated += truncated_here
            expected[t, n] = np.clip((o - mean) / np.sqrt(var + 1e-8), -10.0, 10.0)
    assert n_truncated == 6
    np.testing.assert_allclose(succ.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() < 10.0, "nothing clipped: the test compares the normalisation itself"
    # the data tell the cases apart: bootstrapping from the reset observation that replaced the final one would
    # give other inputs at the truncation steps
    mean, var = pooled_with_prior(np.vstack([r[:6] for r in returned]), 1e-4)
    for n in range(2):
        assert not np.allclose(succ[4, n].numpy(), (returned[n][5] - mean) / np.sqrt(var + 1e-8), atol=0.05)


def test_checkpoint_holds_the_statistics_and_logged_returns_stay_raw(probe_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, envs = probe_run["out"], probe_run["train_envs"]
    ckpt = torch.load(out["model_path"], weights_only=True)
    assert ckpt["algo"] == "trpo" and ckpt["model_args"]["norm_obs"] and ckpt["model_args"]["clip_obs"] == 10.0
    mean, var = pooled_with_prior(np.vstack([returned_observations(e) for e in envs]), 1e-4)
    np.testing.assert_allclose(ckpt["model"]["obs_mean"].numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(ckpt["model"]["obs_var"].numpy(), var, rtol=1e-8)
    # the return statistics pool the discounted return of every step, restarted at each (truncated) episode
    gamma, discounted = probe_run["args"].gamma, []
    for e in envs:
        for ep in e.rewards:
            discounted += [sum(gamma ** (t - k) * ep[k] for k in range(t + 1)) for t in range(len(ep))]
    assert len(discounted) == 32
    g_mean, g_var = pooled_with_prior(np.array(discounted), 1e-4)
    rms = probe_run["scaler"].rms
    assert rms.count == pytest.approx(32 + 1e-4)
    assert float(rms.mean) == pytest.approx(g_mean, rel=1e-10) and float(rms.var) == pytest.approx(g_var, rel=1e-8)
    # charts/episodic_return: the undiscounted sums of the raw rewards (3 or 7 a step), not the scaled ones
    acc = EventAccumulator(out["run_dir"])
    acc.Reload()
    logged = sorted(e.value for e in acc.Scalars("charts/episodic_return"))
    raw = sorted(sum(ep) for e in envs for ep in e.rewards if len(ep) == 5)
    assert len(logged) == 6 and logged == pytest.approx(raw)
    assert min(logged) >= 15.0


def test_evaluation_normalises_with_the_saved_statistics_frozen(probe_run):
    """In process (end of main) and from the checkpoint, the actor is given the evaluation environment's raw
    observations, and greedy_action normalises them with the saved statistics exactly as normalize_obs does."""
    out = probe_run["out"]

    def raw_inputs(env):
        return np.array([o for o, ends in env.emitted if not ends], dtype=np.float32)  # the last one acts on nothing

    in_process = torch.cat(probe_run["greedy_inputs"]).numpy()
    assert in_process.shape == (2 * 5, 2)  # two episodes of five steps
    np.testing.assert_array_equal(in_process, raw_inputs(probe_run["eval_env"]))

    probe_run["greedy_inputs"].clear()
    ObsProbe.instances = []
    returns = trpo.evaluate(out["model_path"], "TrpoObsProbe-v0", 2, seed=probe_run["args"].seed + 100_000)
    assert returns == out["eval_returns"]
    from_checkpoint = torch.cat(probe_run["greedy_inputs"])
    np.testing.assert_array_equal(from_checkpoint.numpy(), raw_inputs(ObsProbe.instances[-1]))

    actor, _ = trpo.load_model(out["model_path"])
    rms = trpo.RunningMeanStd((2,))
    rms.mean, rms.var = actor.obs_mean.numpy(), actor.obs_var.numpy()
    normalised = torch.as_tensor(trpo.normalize_obs(from_checkpoint.numpy(), rms, clip=10.0))
    assert normalised.abs().max() > 0.5, "the statistics really move the inputs"
    torch.testing.assert_close(actor.greedy_action(from_checkpoint), actor(normalised)[0].argmax(-1))
    buffers = [b.clone() for b in actor.buffers()]
    actor.greedy_action(from_checkpoint * 3)
    assert all(torch.equal(b, c) for b, c in zip(buffers, actor.buffers(), strict=True)), "frozen at evaluation"


# ---------------------------------------------------------------- checkpoints and bad input


def test_gaussian_checkpoint_round_trip_and_clipped_evaluation(tmp_path):
    """The harness loads a CartPole checkpoint; this covers the Gaussian actor on Pendulum-v1."""
    torch.manual_seed(0)
    model_args = {"obs_dim": 3, "act_dim": 1, "discrete": False, "hidden_size": 8, "action_low": [-2.0],
                  "action_high": [2.0]}
    actor = trpo.Actor(**model_args)
    actor.log_std.data.fill_(-0.7)
    with torch.no_grad():
        actor.net[4].bias.fill_(50.0)  # a mean far outside [-2, 2]: greedy_action must clip it
    path = str(tmp_path / "trpo.pt")
    trpo.save_checkpoint(path, {"algo": "trpo", "env_id": "Pendulum-v1", "model_args": model_args,
                                "model": actor.state_dict()})
    assert not (tmp_path / "trpo.pt.tmp").exists()
    loaded, ckpt = trpo.load_model(path)  # weights_only=True inside
    assert not loaded.discrete and ckpt["env_id"] == "Pendulum-v1"
    for (name, a), b in zip(actor.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    returns = trpo.evaluate(path, "Pendulum-v1", eval_episodes=1, seed=0)
    # the same episode with the action set to the bound by hand
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        _, r, term, trunc, _ = env.step(np.array([2.0], dtype=np.float32))
        total, done = total + float(r), term or trunc
    assert returns == [pytest.approx(total, rel=1e-6)]


def test_resume_where_the_episodes_cannot_go_on_keeps_the_statistics(tmp_path, monkeypatch, capsys):
    """ObsProbe is not classic control: its state is not saved, so the resumed run starts new episodes. The
    normalisation statistics continue from the checkpoint (and absorb the new first observations, as at the start
    of a run); the discounted returns of the reward scaler restart at 0 with the new episodes."""
    import dataclasses

    if "TrpoObsProbe-v0" not in gym.registry:
        gym.register("TrpoObsProbe-v0", entry_point=ObsProbe)
    monkeypatch.chdir(tmp_path)
    args = trpo.Args(env_id="TrpoObsProbe-v0", total_timesteps=32, num_envs=2, num_steps=16, batch_size=16,
                     n_critic_updates=1, eval_episodes=1, norm_obs=True, norm_reward=True, save_model=True)
    first = trpo.main(args)
    ckpt = torch.load(first["model_path"], weights_only=True)
    assert ckpt["envs"] == {"resumable": False} and ckpt["iteration"] == 1
    assert ckpt["obs_rms"]["count"] == pytest.approx(2 + 32 + 1e-4)  # the two first observations, then 16 steps x 2
    assert ckpt["reward_rms"]["count"] == pytest.approx(32 + 1e-4)
    torch.testing.assert_close(ckpt["model"]["obs_mean"], ckpt["obs_rms"]["mean"])  # the policy carries them
    capsys.readouterr()
    second = trpo.main(dataclasses.replace(args, total_timesteps=64, resume=first["model_path"]))
    assert "new episodes start" in capsys.readouterr().out
    assert second["global_step"] == 64 and second["run_dir"] != first["run_dir"]
    ckpt = torch.load(second["model_path"], weights_only=True)
    assert ckpt["iteration"] == 2
    assert ckpt["obs_rms"]["count"] == pytest.approx(2 * (2 + 32) + 1e-4)
    assert ckpt["reward_rms"]["count"] == pytest.approx(64 + 1e-4)


@pytest.mark.parametrize("overrides,expected", [
    (dict(line_search_factor=1.5), "--line-search-factor"),
    (dict(target_kl=0.0), "--target-kl"),
    (dict(env_id="CarRacing-v3"), "flat Box observation"),
    (dict(num_envs=1, num_steps=1), "--norm-adv"),
    (dict(clip_obs=0.0), "--clip-obs"),
    (dict(clip_reward=-1.0), "--clip-reward"),
])
def test_more_bad_input(overrides, expected, capsys):
    """Beyond the harness's automatic cases, in-process (check_args is main's first call, before anything is
    written; the harness checks that for its cases in a subprocess): one 'error: ' line, exit status 2."""
    assert_one_line_exit_2(lambda: trpo.check_args(trpo.Args(**overrides)), expected, capsys)


# ---------------------------------------------------------------- learning


@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """Defaults (CartPole-v1, 200k steps), seed 1: the deterministic evaluation reaches >= 475."""
    monkeypatch.chdir(tmp_path)
    out = trpo.main(trpo.Args(seed=1))
    assert out["eval_return_mean"] >= 475, out["eval_returns"]


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """rl-zoo3's TRPO Pendulum settings without gSDE (2 envs x 1024 steps, gamma 0.9, 20 critic epochs), 100k steps,
    seed 1: the deterministic evaluation's mean is >= -400 (random policy about -1200)."""
    monkeypatch.chdir(tmp_path)
    out = trpo.main(trpo.Args(seed=1, env_id="Pendulum-v1", num_envs=2, num_steps=1024, gamma=0.9,
                              n_critic_updates=20, total_timesteps=100_000))
    assert out["eval_return_mean"] >= -400, out["eval_returns"]
