"""sac.py: the squashed-Gaussian log-probability against the change-of-variables formula (autograd
Jacobian) and an exact float64 form near saturation, the soft target on a hand-computed batch, the
temperature loss's direction, the batched twin critic against two plain MLPs, resuming, and a learning
regression."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from conftest import load_algo

sac = load_algo("sac")


def gaussian_log_density(u, mean, std):
    return sum(-0.5 * ((ui - mi) / si) ** 2 - math.log(si) - 0.5 * math.log(2 * math.pi)
               for ui, mi, si in zip(u.tolist(), mean.tolist(), std.tolist(), strict=True))


@pytest.mark.parametrize("u", [[0.3, -1.2], [4.0, -6.5], [8.0, -8.0]])
def test_log_prob_is_the_change_of_variables_through_the_jacobian(u):
    """log pi(a) = log N(u) - log|det d a/d u| with the Jacobian of u -> low + (high-low)(tanh(u)+1)/2."""
    u = torch.tensor(u, dtype=torch.float64)
    mean = torch.tensor([0.5, -2.0], dtype=torch.float64)
    log_std = torch.tensor([0.2, 1.1], dtype=torch.float64)
    low = torch.tensor([-2.0, 0.0], dtype=torch.float64)
    high = torch.tensor([2.0, 5.0], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: low + (high - low) * (torch.tanh(x) + 1) / 2, u)
    _, logabsdet = torch.linalg.slogdet(jac)
    expected = gaussian_log_density(u, mean, log_std.exp()) - logabsdet.item()
    got = sac.squashed_gaussian_log_prob(u, mean, log_std, (high - low) / 2).item()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_log_prob_matches_a_finite_difference_density():
    """1-D: the density of a is P(a in [a0, a0 + h]) / h, from the Gaussian CDF of the preimage interval."""
    mean, std, low, high = 0.4, 0.7, -2.0, 2.0
    for u0 in (-1.5, 0.1, 2.5):
        a0 = low + (high - low) * (math.tanh(u0) + 1) / 2
        h = 1e-7
        u1 = math.atanh(2 * (a0 + h - low) / (high - low) - 1)  # the preimage of a0 + h
        cdf = lambda x: 0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2))))  # noqa: E731
        density = (cdf(u1) - cdf(u0)) / h
        got = sac.squashed_gaussian_log_prob(torch.tensor([u0], dtype=torch.float64), torch.tensor([mean], dtype=torch.float64),
                                             torch.tensor([math.log(std)], dtype=torch.float64),
                                             torch.tensor([(high - low) / 2], dtype=torch.float64))
        assert got.item() == pytest.approx(math.log(density), abs=1e-5)


@pytest.mark.parametrize("u", [9.0, -12.0, 20.0, -45.0])
def test_log_prob_stays_exact_when_tanh_saturates_in_float32(u):
    """In float32 tanh(u) rounds to +-1 for |u| > ~9 and log(1 - tanh^2) is -inf; the stable form is not.

    Reference: log(1 - tanh(u)^2) = log(4) - 2|u| - 2 log(1 + e^{-2|u|}), evaluated in Python floats.
    """
    mean, log_std = 0.0, 0.0
    got = sac.squashed_gaussian_log_prob(torch.tensor([u]), torch.tensor([mean]), torch.tensor([log_std]),
                                         torch.tensor([1.0])).item()
    log_det = math.log(4.0) - 2 * abs(u) - 2 * math.log1p(math.exp(-2 * abs(u)))
    expected = -0.5 * u * u - 0.5 * math.log(2 * math.pi) - log_det
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-5)
    naive = torch.log(1 - torch.tanh(torch.tensor(u)) ** 2).item()  # the failure the stable form avoids
    assert (not math.isfinite(naive)) if abs(u) >= 12 else abs(naive - log_det) > 0.1


def test_actor_sample_log_prob_is_consistent_with_its_actions():
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    actor = sac.Actor(3, 2, (16,), low.numpy(), high.numpy())
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    actions, log_pi = actor.sample(obs)
    torch.manual_seed(1)
    mean, log_std = actor(obs)
    u = mean + log_std.exp() * torch.randn_like(mean)
    assert torch.all(actions >= low) and torch.all(actions <= high)
    torch.testing.assert_close(actions, low + (high - low) * (torch.tanh(u) + 1) / 2)
    torch.testing.assert_close(log_pi, sac.squashed_gaussian_log_prob(u, mean, log_std, (high - low) / 2))
    # evaluation plays the squashed mean, in the environment's units
    torch.testing.assert_close(actor.greedy_action(obs), low + (high - low) * (torch.tanh(mean) + 1) / 2)


def test_act_draws_the_action_that_sample_draws():
    torch.manual_seed(0)
    actor = sac.Actor(3, 2, (16,), np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    obs = torch.randn(64, 3)
    torch.manual_seed(5)
    actions = actor.act(obs)
    torch.manual_seed(5)
    torch.testing.assert_close(actions, actor.sample(obs)[0])


def test_soft_target_by_hand():
    rewards = torch.tensor([1.0, -0.5, 2.0])
    terminated = torch.tensor([0.0, 0.0, 1.0])
    next_q1 = torch.tensor([3.0, -1.0, 10.0])
    next_q2 = torch.tensor([4.0, -2.0, 9.0])
    next_log_pi = torch.tensor([-1.0, 0.5, 3.0])
    y = sac.td_target(rewards, terminated, torch.min(next_q1, next_q2) - 0.2 * next_log_pi, gamma=0.9)  # as main()
    # 1 + 0.9 * (min(3,4) - 0.2*(-1)) = 1 + 0.9*3.2 = 3.88
    # -0.5 + 0.9 * (min(-1,-2) - 0.2*0.5) = -0.5 + 0.9*(-2.1) = -2.39
    # terminated: 2
    torch.testing.assert_close(y, torch.tensor([3.88, -2.39, 2.0]))


@pytest.mark.parametrize("log_pi_value,alpha_goes", [(3.0, "up"), (-4.0, "down")])
def test_temperature_moves_alpha_towards_the_target_entropy(log_pi_value, alpha_goes):
    """Target entropy -1. log pi = 3 everywhere: entropy -3 is below the target, so alpha must grow;
    log pi = -4: entropy 4 is above it, so alpha must shrink."""
    log_alpha = torch.tensor([math.log(0.5)], requires_grad=True)
    log_pi = torch.full((32,), log_pi_value, requires_grad=True)
    loss = sac.temperature_loss(log_alpha, log_pi, target_entropy=-1.0)
    loss.backward()
    assert log_pi.grad is None or torch.all(log_pi.grad == 0)  # log pi is a constant of this loss
    # d loss / d log_alpha = -alpha * mean(log pi + target_entropy)
    assert log_alpha.grad.item() == pytest.approx(-0.5 * (log_pi_value - 1.0))
    opt = torch.optim.Adam([log_alpha], lr=0.1)
    opt.step()
    new_alpha = log_alpha.exp().item()
    assert (new_alpha > 0.5) if alpha_goes == "up" else (new_alpha < 0.5)


def test_twin_critic_equals_two_separate_mlps():
    torch.manual_seed(0)
    q = sac.BatchedTwinQCritic(3, 2, (8, 5))
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    out = q(obs, act)
    assert out.shape == (2, 7)
    for j in range(2):
        h = torch.cat([obs, act], 1)
        for i, (w, b) in enumerate(zip(q.weights, q.biases, strict=True)):
            h = h @ w[j] + b[j, 0]
            if i < len(q.weights) - 1:
                h = torch.relu(h)
        torch.testing.assert_close(out[j], h.squeeze(1))
    # detached weights: the same values, gradients reach the actions only
    act.requires_grad_(True)
    q(obs, act, detach_params=True).sum().backward()
    assert act.grad is not None and all(w.grad is None for w in q.parameters())


def tiny(**kw) -> sac.Args:
    base = dict(hidden_sizes=(32, 32), batch_size=32, learning_starts=200, eval_episodes=1, log_every=200,
                save_model=True)
    return sac.Args(**{**base, **kw})


def test_resume_continues_from_the_saved_step_and_state(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = sac.main(tiny(total_timesteps=400, save_buffer=True, exp_name="a"))
    saved = torch.load(first["model_path"], weights_only=True)
    assert saved["global_step"] == 400 and saved["buffer"]["size"] == 400
    assert sac.evaluate(first["model_path"], "Pendulum-v1", 1, seed=100_001) == first["eval_returns"]

    # resume with learning postponed: no gradient step, so the states written again are the loaded ones
    capsys.readouterr()
    out = sac.main(tiny(total_timesteps=600, learning_starts=100_000, resume=first["model_path"], save_buffer=True,
                        exp_name="b"))
    assert "resumed" in capsys.readouterr().out and out["global_step"] == 600
    loaded = torch.load(out["model_path"], weights_only=True)
    assert loaded["global_step"] == 600 and loaded["buffer"]["size"] == 600
    for key in ("model", "critic", "critic_target"):
        for name, tensor in saved[key].items():
            assert torch.equal(loaded[key][name], tensor), f"{key}.{name} changed"
    assert torch.equal(loaded["log_alpha"], saved["log_alpha"])
    for key in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
        for k, v in saved[key]["state"][0].items():
            assert torch.equal(loaded[key]["state"][0][k], v), f"{key}.{k} changed"
    assert torch.equal(loaded["rng"]["torch"], saved["rng"]["torch"])  # no update drew from it
    for f in sac.ReplayBuffer.FIELDS:  # the first 400 transitions kept
        assert torch.equal(loaded["buffer"][f][:400], saved["buffer"][f])

    # resume with learning, without the buffer: updates wait for a batch (32) of new transitions, then go on
    # from the optimisers' saved step counts; the progress lines start after the resumed step
    torch.save({k: v for k, v in saved.items() if k != "buffer"}, tmp_path / "no_buffer.pt")
    capsys.readouterr()
    out = sac.main(tiny(total_timesteps=600, resume=str(tmp_path / "no_buffer.pt"), exp_name="c"))
    steps = [int(s.replace(",", "")) for s in re.findall(r"step\s+([\d,]+)\s+SPS", capsys.readouterr().out)]
    assert steps == [600]
    resumed = torch.load(out["model_path"], weights_only=True)
    saved_updates = saved["critic_optimizer"]["state"][0]["step"].item()
    assert saved_updates == 200 and resumed["critic_optimizer"]["state"][0]["step"].item() == 200 + (200 - 32 + 1)
    assert not torch.equal(resumed["model"]["net.0.weight"], saved["model"]["net.0.weight"])


def test_a_non_finite_temperature_loss_stops_the_run_before_the_actor_steps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sac, "temperature_loss", lambda log_alpha, log_pi, target_entropy: log_alpha.sum() * float("nan"))
    with pytest.raises(SystemExit) as exit_info:
        sac.main(tiny(total_timesteps=400, save_model=False))
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and "non-finite temperature loss at step 201;" in err, err
    (last,) = tmp_path.glob("runs/*/sac_last_finite.pt")
    ckpt = torch.load(last, weights_only=True)
    assert not ckpt["actor_optimizer"]["state"] and ckpt["critic_optimizer"]["state"][0]["step"].item() == 1
    assert torch.equal(ckpt["log_alpha"], torch.zeros(1))


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """Defaults (learning_starts 1000), seed 1, 20k steps: deterministic evaluation mean >= -200."""
    monkeypatch.chdir(tmp_path)
    out = sac.main(sac.Args(seed=1, total_timesteps=20_000))
    assert out["eval_return_mean"] >= -200, out["eval_returns"]
