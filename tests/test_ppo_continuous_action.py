"""ppo_continuous_action.py: the Gaussian log-probability and entropy against closed forms, the running
mean/variance against numpy, the return-based reward scaling and GAE against slow reference loops, the
rollout's normalised successor observations at episode ends, evaluation with the statistics saved in the
checkpoint, actions clipped to the bounds, and a learning regression on Pendulum-v1."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo
from reference_math import pooled_with_prior, reference_gae, reference_scaled_rewards
from toy_envs import Counting

pca = load_algo("ppo_continuous_action")

LOG_2PI = math.log(2 * math.pi)


# --- Gaussian policy ---------------------------------------------------------------------------------


def test_gaussian_log_prob_by_hand():
    # standard normal at a = 1: -1/2 - log(2 pi)/2
    got = pca.gaussian_log_prob(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0])).item()
    assert got == pytest.approx(-0.5 - 0.5 * LOG_2PI)
    # two dimensions, sigma = (0.5, 2), a - mu = (0.5, -4): z = (1, -2), the log sigmas cancel
    got = pca.gaussian_log_prob(torch.tensor([1.5, -5.0]), torch.tensor([1.0, -1.0]),
                                torch.tensor([math.log(0.5), math.log(2.0)])).item()
    assert got == pytest.approx(-0.5 * (1 + 4) - LOG_2PI)


@pytest.mark.parametrize("log_std", [-6.0, -1.0, 0.0, 0.7, 3.0])
def test_gaussian_log_prob_and_entropy_closed_forms(log_std):
    """Against the textbook density, written per dimension in Python floats, and H = 1/2 log(2 pi e sigma^2)."""
    g = torch.Generator().manual_seed(int(10 * log_std) + 100)
    mean = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ls = torch.full((5, 3), log_std, dtype=torch.float64) + 0.1 * torch.arange(3, dtype=torch.float64)
    a = mean + ls.exp() * torch.randn(5, 3, generator=g, dtype=torch.float64) * 2.0
    got = pca.gaussian_log_prob(a, mean, ls)
    for b in range(5):
        expected = 0.0
        for i in range(3):
            s = math.exp(ls[b, i].item())
            x = a[b, i].item() - mean[b, i].item()
            expected += math.log(math.exp(-x * x / (2 * s * s)) / (s * math.sqrt(2 * math.pi))) if abs(x / s) < 30 else \
                -x * x / (2 * s * s) - math.log(s) - 0.5 * LOG_2PI
        assert got[b].item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    ent = pca.gaussian_entropy(ls)
    for b in range(5):
        expected = sum(0.5 * math.log(2 * math.pi * math.e * math.exp(2 * ls[b, i].item())) for i in range(3))
        assert ent[b].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # and torch's own implementation agrees
    normal = torch.distributions.Normal(mean, ls.exp())
    np.testing.assert_allclose(got.numpy(), normal.log_prob(a).sum(-1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(ent.numpy(), normal.entropy().sum(-1).numpy(), rtol=1e-12)


def test_gaussian_density_integrates_to_one_and_entropy_is_minus_expected_log_density():
    """Numerical integration on a fine grid (1-D): integral of p = 1 and -integral of p log p = H."""
    mean, log_std = 0.3, math.log(0.8)
    x = torch.linspace(mean - 12 * 0.8, mean + 12 * 0.8, 200_001, dtype=torch.float64).unsqueeze(-1)
    logp = pca.gaussian_log_prob(x, torch.full_like(x, mean), torch.full_like(x, log_std))
    p = logp.exp()
    assert torch.trapezoid(p, x.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-9)
    h = -torch.trapezoid(p * logp, x.squeeze(-1)).item()
    assert h == pytest.approx(pca.gaussian_entropy(torch.tensor([log_std], dtype=torch.float64)).item(), abs=1e-9)


def test_agent_samples_from_the_distribution_it_scores():
    """Sampled actions have the policy's mean and std, and evaluate_actions uses the state-independent log-std."""
    torch.manual_seed(0)
    agent = pca.Agent(4, [-1.0, -1.0], [1.0, 1.0])
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.tensor([-1.0, 0.5]))
    x = torch.randn(1, 4).expand(20_000, 4)
    a = agent.sample_action(x)
    mean = agent.actor_mean(x[:1])[0].detach()
    np.testing.assert_allclose(a.mean(0).numpy(), mean.numpy(), atol=0.03)
    np.testing.assert_allclose(a.std(0).numpy(), [math.exp(-1.0), math.exp(0.5)], atol=0.03)
    logp, ent, v = agent.evaluate_actions(x[:3], a[:3])
    with torch.no_grad():
        expected_logp = torch.distributions.Normal(mean, agent.actor_logstd.exp()).log_prob(a[:3]).sum(-1)
        np.testing.assert_allclose(logp.numpy(), expected_logp.numpy(), rtol=1e-5)
        np.testing.assert_allclose(ent.numpy(), [-1.0 + 0.5 + 1.0 + LOG_2PI] * 3, rtol=1e-6)
        np.testing.assert_allclose(v.numpy(), agent.critic(x[:3]).squeeze(-1).numpy(), rtol=1e-6)


# --- running statistics and normalisation ------------------------------------------------------------


def test_running_mean_std_matches_numpy_over_many_batches():
    rng = np.random.default_rng(0)
    sizes = [0, 1, 1, 7, 0, 64, 3, 250, 1, 40] * 5
    batches = [rng.normal(loc=[1e3, -2.0, 0.0], scale=[5.0, 0.01, 30.0], size=(n, 3)) for n in sizes]
    exact = pca.RunningMeanStd((3,), epsilon=0.0)  # no prior: exactly the sample mean and (biased) variance
    default = pca.RunningMeanStd((3,))
    for i, b in enumerate(batches):
        exact.update(b)
        default.update(b)
        seen = np.concatenate(batches[: i + 1])
        if len(seen):
            np.testing.assert_allclose(exact.mean, seen.mean(0), rtol=1e-12)
            np.testing.assert_allclose(exact.var, seen.var(0), rtol=1e-9)
            assert exact.count == len(seen)
        mean, var = pooled_with_prior(seen, 1e-4)
        np.testing.assert_allclose(default.mean, mean, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(default.var, var, rtol=1e-9)


def test_running_mean_std_starts_at_zero_mean_unit_variance_and_ignores_empty_batches():
    rms = pca.RunningMeanStd((2,))
    rms.update(np.zeros((0, 2)))
    np.testing.assert_array_equal(rms.mean, [0.0, 0.0])
    np.testing.assert_array_equal(rms.var, [1.0, 1.0])
    assert rms.count == 1e-4
    rms.update(np.array([[3.0, -1.0]]))  # one sample: mean moves almost all the way, var almost to 0
    np.testing.assert_allclose(rms.mean, np.array([3.0, -1.0]) / (1 + 1e-4))
    scalar = pca.RunningMeanStd(())
    scalar.update(np.array([1.0, 3.0]))
    assert scalar.mean == pytest.approx(4.0 / (2 + 1e-4))


def test_normalize_obs_by_hand():
    rms = pca.RunningMeanStd((3,))
    rms.mean, rms.var = np.array([1.0, 2.0, 0.0]), np.array([4.0, 0.0, 1.0])
    out = pca.normalize_obs(np.array([[5.0, 2.00001, -30.0], [1.0, 2.01, 0.5]]), rms, clip=10.0)
    assert out.dtype == np.float32
    # a zero variance divides by sqrt(1e-8) = 1e-4: 1e-5 -> 0.1, 0.01 -> 100, clipped to 10; -30 is clipped to -10
    np.testing.assert_allclose(out[0], [4.0 / math.sqrt(4 + 1e-8), 0.1, -10.0], rtol=1e-5)
    np.testing.assert_allclose(out[1], [0.0, 10.0, 0.5 / math.sqrt(1 + 1e-8)], rtol=1e-5)
    np.testing.assert_array_equal(pca.normalize_obs(np.array([[50.0, -7.0]]), None, clip=10.0), [[50.0, -7.0]])


def test_greedy_action_normalises_raw_observations_as_training_does_and_clips_to_the_bounds():
    """greedy_action (what evaluate calls) takes raw observations: with the statistics in the Agent's buffers
    it must give the actor exactly the input normalize_obs gives it in training, and clip the mean action."""
    torch.manual_seed(0)
    rms = pca.RunningMeanStd((3,))
    rms.update(np.random.default_rng(0).normal([5.0, -3.0, 0.0], [2.0, 0.1, 30.0], size=(50, 3)))
    agent = pca.Agent(3, [-1e-3, -2.0], [1e-3, 2.0], norm_obs=True, clip_obs=5.0)
    agent.obs_mean.copy_(torch.as_tensor(rms.mean))
    agent.obs_var.copy_(torch.as_tensor(rms.var))
    raw = np.array([[5.0, -3.0, 0.0], [9.0, -2.0, 200.0], [-50.0, -3.1, 1.0]], dtype=np.float32)
    mean = agent.actor_mean(torch.as_tensor(pca.normalize_obs(raw, rms, 5.0))).detach()
    expected = torch.maximum(torch.minimum(mean, agent.action_high), agent.action_low)
    got = agent.greedy_action(torch.as_tensor(raw))
    assert torch.equal(got, expected)
    assert (got[:, 0].abs() == 1e-3).any(), "the narrow first dimension must actually be clipped"
    plain = pca.Agent(3, [-2.0, -2.0], [2.0, 2.0], norm_obs=False)  # without --norm-obs: the identity
    assert torch.equal(plain.greedy_action(torch.as_tensor(raw)), plain.actor_mean(torch.as_tensor(raw)).detach())


class CountingBox(Counting):
    """tests/toy_envs.py's Counting ([t, k] at step t of episode k; odd episodes terminate at t = 2, the time
    limit 3 cuts the even ones) with a Box action."""

    def __init__(self):
        super().__init__()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_rollout_stores_normalised_successor_observations(tmp_path, monkeypatch):
    """Two environments, ten steps each: the rollout's s' must be the observation that followed each step, at a
    cut the last one ([3, k], not the reset [0, k + 1]), normalised with the statistics of every observation
    seen up to then (the reset ones included), as the observations themselves."""
    monkeypatch.chdir(tmp_path)
    if "CountingBoxTest-v0" not in gym.registry:
        gym.register(id="CountingBoxTest-v0", entry_point=CountingBox, max_episode_steps=3)
    value_calls = []
    original_value = pca.Agent.get_value

    def recording_value(self, x):
        out = original_value(self, x)
        value_calls.append(x.detach().clone())
        return out

    monkeypatch.setattr(pca.Agent, "get_value", recording_value)
    pca.main(pca.Args(env_id="CountingBoxTest-v0", total_timesteps=20, num_envs=2, num_steps=10, num_minibatches=1,
                      update_epochs=1, eval_episodes=1))
    s = [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [0, 2], [1, 2], [2, 2], [0, 3], [1, 3]]
    s_next = [[1, 0], [2, 0], [3, 0], [1, 1], [2, 1], [1, 2], [2, 2], [3, 2], [1, 3], [2, 3]]
    stored = s + [[0, 4]]  # the observations as they arrive, in each environment (the last: a reset)

    def normalised(o, n_seen):  # with the statistics of the first n_seen observations of both environments
        mean, var = pooled_with_prior(np.repeat(np.array(stored[:n_seen], dtype=np.float64), 2, axis=0), 1e-4)
        return np.clip((np.array(o) - mean) / np.sqrt(var + 1e-8), -10, 10)

    expected_obs = [normalised(s[t], t + 1) for t in range(10) for _ in range(2)]
    expected_next = [normalised(s_next[t], t + 2) for t in range(10) for _ in range(2)]
    batched = [x for x in value_calls if x.shape == (20, 2)]  # the pass after the rollout: V(s), then V(s')
    np.testing.assert_allclose(batched[0].numpy(), np.array(expected_obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1].numpy(), np.array(expected_next), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip", [10.0, 0.8])
def test_reward_scaling_matches_a_slow_reference_and_resets_at_episode_ends(clip):
    rng = np.random.default_rng(1)
    T, N, gamma = 40, 3, 0.9
    rewards = rng.normal(loc=-2.0, scale=3.0, size=(T, N))
    dones = np.zeros((T, N), dtype=bool)
    dones[[4, 17, 18, 30], 0] = True  # terminated or truncated: both end the episode
    dones[9, 1] = True
    dones[T - 1, 2] = True
    scaler = pca.RewardScaler(N, gamma, clip)
    got = np.stack([scaler(rewards[t], dones[t]) for t in range(T)])
    expected = reference_scaled_rewards(rewards, dones, gamma, clip)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if clip < 1:
        assert np.any(np.abs(expected) == clip), "the clipping case must actually clip"


def test_reward_scaling_return_by_hand():
    scaler = pca.RewardScaler(1, gamma=0.5, clip=10.0)
    scaler(np.array([1.0]), np.array([True]))  # G = 1, then the episode ends: G <- 0
    assert scaler.returns[0] == 0.0
    scaler(np.array([1.0]), np.array([False]))  # G = 1
    scaler(np.array([1.0]), np.array([False]))  # G = 0.5 * 1 + 1 = 1.5
    assert scaler.returns[0] == pytest.approx(1.5)
    mean, var = pooled_with_prior(np.array([1.0, 1.0, 1.5]), 1e-4)
    assert scaler.rms.mean == pytest.approx(mean) and scaler.rms.var == pytest.approx(var)


# --- GAE and loss ---------------------------------------------------------------------------------------


def test_gae_matches_reference_with_terminated_and_truncated_steps():
    rng = np.random.default_rng(2)
    T, N = 11, 3
    rewards, values = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    next_values = np.vstack([values[1:], rng.normal(size=(1, N))])
    terminated, truncated = np.zeros((T, N)), np.zeros((T, N))
    terminated[3, 0], truncated[7, 0], next_values[7, 0] = 1, 1, 9.0  # V(final obs) of the truncated episode
    truncated[0, 1], next_values[0, 1] = 1, -3.0
    terminated[10, 2] = 1
    next_values[3, 0] = 123.0  # after termination the next value must not matter
    gamma, lam = 0.9, 0.95
    adv, ret = pca.compute_gae(*(torch.tensor(x, dtype=torch.float64) for x in
                                 (rewards, values, next_values, terminated, truncated)), gamma, lam)
    expected = np.array(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(),
                                      terminated.tolist(), truncated.tolist(), gamma, lam))
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), expected + values, atol=1e-12)
    # truncation bootstraps by hand: one step, r = 1, V(s) = 1, V(final) = 10, gamma 0.5
    one = dict(rewards=torch.tensor([[1.0]]), values=torch.tensor([[1.0]]), next_values=torch.tensor([[10.0]]),
               gamma=0.5, gae_lambda=0.95)
    trunc, _ = pca.compute_gae(**one, terminations=torch.tensor([[0.0]]), truncations=torch.tensor([[1.0]]))
    term, _ = pca.compute_gae(**one, terminations=torch.tensor([[1.0]]), truncations=torch.tensor([[0.0]]))
    assert trunc.item() == pytest.approx(5.0) and term.item() == pytest.approx(0.0)


def test_ppo_loss_clipping_by_hand():
    new = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    old = torch.zeros(3)
    adv = torch.tensor([2.0, -1.0, 1.0])
    pg, _, logratio = pca.ppo_loss(new, old, adv, torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.2, False)
    assert pg.item() == pytest.approx(-(2.0 * 1.2 - 1.0 * 0.8 + 1.0 * 1.1) / 3)
    assert pca.approx_kl(logratio).item() == pytest.approx(
        sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3)


# --- checkpoints carry the normalisation -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training run on Pendulum-v1 with --save-model (2 x 200 steps, one full episode per env)."""
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("run"))
    try:
        args = pca.Args(env_id="Pendulum-v1", total_timesteps=400, num_envs=2, num_steps=100, num_minibatches=2,
                        update_epochs=2, eval_episodes=2, save_model=True, seed=3)
        out = pca.main(args)
        out["model_path"] = os.path.abspath(out["model_path"])
    finally:
        os.chdir(cwd)
    return args, out


def test_evaluation_from_the_checkpoint_uses_the_saved_statistics(trained, tmp_path):
    args, out = trained
    seed = args.seed + 100_000
    agent, ckpt = pca.load_model(out["model_path"])
    assert ckpt["algo"] == "ppo_continuous_action" and ckpt["model_args"]["norm_obs"]
    assert not torch.equal(agent.obs_var, torch.ones(3, dtype=torch.float64)), "the statistics were not saved"
    # the checkpoint reproduces the in-process evaluation exactly: it carries the statistics used there
    assert pca.evaluate(out["model_path"], "Pendulum-v1", args.eval_episodes, seed) == out["eval_returns"]

    shifted = dict(ckpt, model={**ckpt["model"], "obs_mean": ckpt["model"]["obs_mean"] + 0.5,
                                "obs_var": ckpt["model"]["obs_var"] * 3.0})
    torch.save(shifted, tmp_path / "shifted.pt")
    shifted_returns = pca.evaluate(str(tmp_path / "shifted.pt"), "Pendulum-v1", args.eval_episodes, seed)
    assert np.max(np.abs(np.subtract(shifted_returns, out["eval_returns"]))) > 1.0, "statistics must matter"
    # dropping the statistics (what an evaluation that forgets them does) also changes the behaviour
    unnormalised = dict(ckpt, model_args={**ckpt["model_args"], "norm_obs": False})
    torch.save(unnormalised, tmp_path / "no_stats.pt")
    raw_returns = pca.evaluate(str(tmp_path / "no_stats.pt"), "Pendulum-v1", args.eval_episodes, seed)
    assert np.max(np.abs(np.subtract(raw_returns, out["eval_returns"]))) > 1.0


def test_checkpoint_holds_the_normalisation_statistics(trained):
    """The --save-model file is the training state: the running statistics as float64 tensors (what resuming
    puts back), the same observation statistics in the Agent's buffers, and each environment's discounted return."""
    args, out = trained
    ckpt = torch.load(out["model_path"], map_location="cpu", weights_only=True)
    obs, reward = ckpt["normalisation"]["obs"], ckpt["normalisation"]["reward"]
    assert obs["mean"].dtype == obs["var"].dtype == torch.float64 and obs["mean"].shape == (3,)
    assert torch.equal(obs["mean"], ckpt["model"]["obs_mean"]) and torch.equal(obs["var"], ckpt["model"]["obs_var"])
    assert float(obs["count"]) == pytest.approx(args.total_timesteps + args.num_envs + 1e-4)  # the resets too
    assert float(reward["count"]) == pytest.approx(args.total_timesteps + 1e-4) and reward["var"].shape == ()
    assert ckpt["reward_returns"].dtype == torch.float64 and ckpt["reward_returns"].shape == (args.num_envs,)
    assert ckpt["global_step"] == args.total_timesteps and ckpt["envs"]["resumable"]


class ActionProbe(gym.Env):
    """Records every action it receives; bounds [-0.1, 0.3], far narrower than the initial policy's sigma = 1."""

    received: list[np.ndarray] = []

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-0.1, 0.3, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        ActionProbe.received.append(np.array(action, dtype=np.float64))
        self.t += 1
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), float(action[0]), self.t >= 5, False, {}


def test_actions_are_clipped_to_the_bounds_on_the_way_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gym.register("ActionProbe-v0", entry_point=ActionProbe)
    ActionProbe.received = []
    pca.main(pca.Args(env_id="ActionProbe-v0", total_timesteps=128, num_envs=2, num_steps=32, num_minibatches=2,
                      update_epochs=1, eval_episodes=1))
    received = np.concatenate(ActionProbe.received)
    assert len(received) >= 128
    assert received.min() >= -0.1 - 1e-7 and received.max() <= 0.3 + 1e-7
    # clipped, not squashed: with sigma = 1 most samples fall outside and arrive exactly at a bound
    at_low, at_high = np.isclose(received, -0.1).mean(), np.isclose(received, 0.3).mean()
    assert at_low > 0.2 and at_high > 0.2, (at_low, at_high)


# --- bad input specific to this file (the harness adds the standard cases) ------------------------------


@pytest.mark.parametrize("overrides,expected", [(dict(clip_obs=0.0), "clip-obs"),
                                                (dict(clip_reward=float("nan")), "clip-reward"),
                                                (dict(env_id="CarRacing-v3", num_envs=1), "flat Box observation")])
def test_check_args_rejects_with_one_line(overrides, expected, capsys):
    """In-process; the smoke harness runs the command-line cases (tests/smoke_configs.py)."""
    assert_one_line_exit_2(lambda: pca.check_args(pca.Args(**overrides)), expected, capsys)


# --- learning ---------------------------------------------------------------------------------------------

PENDULUM = dict(env_id="Pendulum-v1", total_timesteps=100_000, num_envs=4, num_steps=1024, num_minibatches=16,
                gamma=0.95, learning_rate=1e-3)


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """Pendulum-v1 with the Pendulum settings of the docstring, seed 1, 100k steps: the deterministic
    evaluation reaches -400 or better (a random policy scores about -1200)."""
    monkeypatch.chdir(tmp_path)
    out = pca.main(pca.Args(seed=1, **PENDULUM))
    assert out["eval_return_mean"] >= -400, out["eval_returns"]
