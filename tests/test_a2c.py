"""a2c.py: n-step returns against a slow reference loop (terminated vs truncated steps), GAE, the Gaussian
log-probability and entropy against closed forms, the loss by hand, the checkpoint round trip, and a
learning regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo

a2c = load_algo("a2c")


def reference_nstep_returns(rewards, next_values, terminated, truncated, gamma):
    """Written from the definition, one environment and one start step at a time, with Python floats.

    R_t = sum_{k=t}^{e} gamma^(k-t) r_k  +  gamma^(e-t+1) * bootstrap, where e is the first step >= t that
    ends the episode (terminated or truncated) or the rollout's last step; the bootstrap is 0 after a
    termination and the value of the observation that followed step e otherwise.
    """
    T, N = len(rewards), len(rewards[0])
    out = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * rewards[k][n]
                if terminated[k][n]:
                    break
                if truncated[k][n] or k == T - 1:
                    total += gamma ** (k - t + 1) * next_values[k][n]
                    break
                k += 1
            out[t][n] = total
    return out


def rollout(seed=0, T=9, N=4):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(T, N)).round(2)
    next_values = rng.normal(size=(T, N)).round(2)
    terminated = np.zeros((T, N))
    truncated = np.zeros((T, N))
    terminated[2, 0] = 1  # env 0: an episode terminates mid-rollout ...
    truncated[5, 0] = 1  # ... and the next one is cut by a time limit
    next_values[5, 0] = 7.5  # V(final observation) of the truncated episode, not V(reset observation)
    truncated[3, 1] = 1
    next_values[3, 1] = -4.0
    terminated[8, 2] = 1  # env 2: terminates on the rollout's last step (no bootstrap at all)
    next_values[2, 0] = next_values[8, 2] = 1e6  # must be ignored: it follows a termination
    truncated[8, 3] = 1  # env 3: truncated on the last step, bootstraps from its final observation
    terminated[0, 3] = truncated[0, 3] = 0
    return rewards, next_values, terminated, truncated


def test_nstep_returns_match_reference_with_terminated_and_truncated_steps():
    rewards, next_values, terminated, truncated = rollout()
    gamma = 0.97
    got = a2c.compute_nstep_returns(*(torch.tensor(x, dtype=torch.float64) for x in
                                      (rewards, next_values, terminated, truncated)), gamma)
    expected = reference_nstep_returns(rewards.tolist(), next_values.tolist(), terminated.tolist(),
                                       truncated.tolist(), gamma)
    np.testing.assert_allclose(got.numpy(), np.array(expected), atol=1e-9)


def test_nstep_returns_by_hand():
    # one env, 3 steps, gamma 0.5, rewards 1, 2, 4; V(obs after step 0) = 10, V(obs after step 2) = 8
    r = torch.tensor([[1.0], [2.0], [4.0]])
    nv = torch.tensor([[10.0], [3.0], [8.0]])
    zero = torch.zeros(3, 1)
    plain = a2c.compute_nstep_returns(r, nv, zero, zero, 0.5).squeeze(1).tolist()
    assert plain == pytest.approx([1 + 0.5 * 2 + 0.25 * 4 + 0.125 * 8, 2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8])
    cut = torch.tensor([[1.0], [0.0], [0.0]])
    trunc = a2c.compute_nstep_returns(r, nv, zero, cut, 0.5).squeeze(1).tolist()
    assert trunc == pytest.approx([1 + 0.5 * 10, 2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8])  # bootstraps V(final obs)
    term = a2c.compute_nstep_returns(r, nv, cut, zero, 0.5).squeeze(1).tolist()
    assert term == pytest.approx([1.0, 2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8])  # no bootstrap after termination


def test_nstep_returns_equal_gae_with_lambda_one_and_gae_zero_is_td_target():
    rewards, next_values, terminated, truncated = rollout(seed=1)
    values = np.random.default_rng(2).normal(size=rewards.shape)
    # a consistent rollout: inside an episode the next observation's value is the next step's value
    inside = (terminated[:-1] + truncated[:-1]) == 0
    next_values[:-1][inside] = values[1:][inside]
    t = [torch.tensor(x, dtype=torch.float64) for x in (rewards, values, next_values, terminated, truncated)]
    nstep = a2c.compute_nstep_returns(t[0], t[2], t[3], t[4], 0.9)
    _, gae1 = a2c.compute_gae(*t, 0.9, 1.0)
    torch.testing.assert_close(gae1, nstep)
    adv0, _ = a2c.compute_gae(*t, 0.9, 0.0)
    torch.testing.assert_close(adv0, t[0] + 0.9 * t[2] * (1 - t[3]) - t[1])


def test_gaussian_log_prob_and_entropy_closed_forms():
    # by hand: N(1; 0, 1) = exp(-1/2) / sqrt(2 pi); N(3; 1, 2^2) in log: -(2/2)^2/2 - log 2 - log(2 pi)/2
    lp = a2c.gaussian_log_prob(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, math.log(2.0)]]))
    expected = (-0.5 - 0.5 * math.log(2 * math.pi)) + (-0.5 - math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert lp.shape == (1,) and lp.item() == pytest.approx(expected)
    # entropy of N(mu, sigma^2) = log(sigma * sqrt(2 pi e)), summed over independent dimensions
    sig = [0.3, 1.0, 5.0]
    ent = a2c.gaussian_entropy(torch.log(torch.tensor(sig)))
    assert ent.item() == pytest.approx(sum(math.log(s * math.sqrt(2 * math.pi * math.e)) for s in sig))
    # against torch.distributions on random batches, including very small and large sigmas
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=g, dtype=torch.float64)
    log_std = torch.empty(64, 3, dtype=torch.float64).uniform_(-8, 4, generator=g)
    act = mean + torch.randn(64, 3, generator=g, dtype=torch.float64) * log_std.exp()
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(a2c.gaussian_log_prob(act, mean, log_std), normal.log_prob(act).sum(-1))
    torch.testing.assert_close(a2c.gaussian_entropy(log_std), normal.entropy().sum(-1))


def test_evaluate_actions_match_torch_distributions():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    disc = a2c.Agent(5, 4, continuous=False)
    a = torch.randint(0, 4, (7,))
    logp, ent, value = disc.evaluate_actions(x, a)
    dist = torch.distributions.Categorical(logits=disc.actor(x))
    torch.testing.assert_close(logp, dist.log_prob(a))
    torch.testing.assert_close(ent, dist.entropy())
    torch.testing.assert_close(value, disc.critic(x).squeeze(-1))
    cont = a2c.Agent(5, 2, continuous=True, action_low=[-1.0, -3.0], action_high=[1.0, 3.0])
    with torch.no_grad():
        cont.log_std.copy_(torch.tensor([-0.5, 0.7]))
    a = torch.randn(7, 2)
    logp, ent, _ = cont.evaluate_actions(x, a)
    normal = torch.distributions.Normal(cont.actor(x), cont.log_std.exp())
    torch.testing.assert_close(logp, normal.log_prob(a).sum(-1))
    torch.testing.assert_close(ent, normal.entropy().sum(-1))
    # the sampled actions really follow N(mu, sigma): check the spread of many samples
    samples = cont.sample_action(x[:1].expand(20_000, -1))
    np.testing.assert_allclose(samples.std(0).numpy(), cont.log_std.exp().detach().numpy(), rtol=0.03)
    # the deterministic action: the argmax, or the mean clipped to the bounds (per dimension)
    torch.testing.assert_close(disc.greedy_action(x), disc.actor(x).argmax(-1))
    with torch.no_grad():
        cont.actor[-1].bias.copy_(torch.tensor([5.0, -2.0]))
    torch.testing.assert_close(cont.greedy_action(x), torch.maximum(torch.minimum(cont.actor(x), cont.action_high),
                                                                    cont.action_low))
    assert (cont.greedy_action(x)[:, 0] == 1.0).all()


def test_a2c_loss_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    returns = torch.tensor([3.0, 1.0])
    adv = returns - value.detach()  # 2, -1
    loss, pg, vl, ent = a2c.a2c_loss(logp, torch.tensor([0.6, 0.4]), value, returns, adv, ent_coef=0.1, vf_coef=0.5)
    assert pg.item() == pytest.approx(-(2 * math.log(0.5) - 1 * math.log(0.25)) / 2)
    assert vl.item() == pytest.approx((4 + 1) / 2)
    assert ent.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(pg.item() - 0.1 * 0.5 + 0.5 * 2.5)
    loss.backward()
    # the advantage is a constant: the value gets gradient only from the value loss, vf * 2 (V - R) / n
    np.testing.assert_allclose(value.grad.numpy(), [0.5 * (1 - 3), 0.5 * (2 - 1)], rtol=1e-6)
    np.testing.assert_allclose(logp.grad.numpy(), [-2 / 2, 1 / 2], rtol=1e-6)


def test_continuous_checkpoint_round_trip(tmp_path, monkeypatch):
    """A tiny Pendulum run: the saved Gaussian policy loads (weights_only) and evaluates like the live one."""
    monkeypatch.chdir(tmp_path)
    out = a2c.main(a2c.Args(env_id="Pendulum-v1", total_timesteps=80, num_envs=2, eval_episodes=1,
                            save_model=True, seed=3))
    agent, ckpt = a2c.load_model(out["model_path"])
    assert ckpt["algo"] == "a2c" and ckpt["model_args"]["continuous"] is True and ckpt["env_id"] == "Pendulum-v1"
    assert agent.log_std.shape == (1,) and agent.action_low.tolist() == [-2.0] and agent.action_high.tolist() == [2.0]
    assert a2c.evaluate(out["model_path"], "Pendulum-v1", 1, seed=100_003) == pytest.approx(out["eval_returns"])


@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """The defaults, seed 1: the deterministic evaluation reaches 475 within 200k steps."""
    monkeypatch.chdir(tmp_path)
    out = a2c.main(a2c.Args(seed=1, total_timesteps=200_000))
    assert out["eval_return_mean"] >= 475, out["eval_returns"]


@pytest.mark.parametrize("kw,expected", [
    ({"gae_lambda": 1.5}, "--gae-lambda"),
    ({"num_steps": 0}, "--num-steps"),
    ({"gamma": 0.0}, "--gamma"),
    ({"rmsprop_alpha": 1.0}, "--rmsprop-alpha"),
    ({"env_id": "CarRacing-v3"}, "flat Box observation"),
])
def test_bad_arguments_one_line_and_nothing_written(kw, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(lambda: a2c.main(a2c.Args(**kw)), expected, capsys)
    assert not list(tmp_path.iterdir())
