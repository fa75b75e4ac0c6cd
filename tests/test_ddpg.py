"""ddpg.py: the critic target on a hand-computed batch (terminated vs truncated), the actor loss's gradient
direction, the actor's action bounds, Polyak averaging, the stored transitions at a time limit, resuming,
and a learning regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo

ddpg = load_algo("ddpg")


def test_td_target_by_hand_terminated_vs_truncated():
    # three transitions: an ordinary step, a terminated one, and one cut by a time limit (stored with
    # terminated=0 and its real last observation, so Q'(s', mu'(s')) is the value of that observation)
    rewards = torch.tensor([1.0, -2.0, 0.5])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q = torch.tensor([10.0, 7.0, -4.0])
    y = ddpg.td_target(rewards, terminated, next_q, gamma=0.9)
    # 1 + 0.9*10 = 10;  terminated: -2 (no bootstrap);  truncated: 0.5 + 0.9*(-4) = -3.1 (bootstraps)
    torch.testing.assert_close(y, torch.tensor([10.0, -2.0, -3.1]))


def test_actor_step_increases_q_on_a_fixed_critic():
    torch.manual_seed(3)
    actor, critic = ddpg.Actor(3, 2, (16,), [-1.0, -1.0], [1.0, 1.0]), ddpg.QCritic(3, 2, (16,))
    for p in critic.parameters():
        p.requires_grad_(False)
    s = torch.randn(64, 3)
    q_before = critic(s, actor(s)).mean().item()
    # the gradient of -mean Q(s, mu(s)) is the deterministic policy gradient: -mean_i dQ/da(s_i, mu(s_i)) * dmu/dtheta
    a = actor(s)
    a_leaf = a.detach().requires_grad_()
    (dq_da,) = torch.autograd.grad(critic(s, a_leaf).sum(), [a_leaf])
    dpg = torch.autograd.grad(a, list(actor.parameters()), grad_outputs=-dq_da / len(s))
    auto = torch.autograd.grad(-critic(s, actor(s)).mean(), list(actor.parameters()))
    for g1, g2 in zip(dpg, auto, strict=True):
        torch.testing.assert_close(g1, g2)
    opt = torch.optim.SGD(actor.parameters(), lr=1e-2)
    opt.zero_grad()
    (-critic(s, actor(s)).mean()).backward()
    opt.step()
    assert critic(s, actor(s)).mean().item() > q_before


def test_actor_scales_tanh_into_the_bounds():
    torch.manual_seed(0)
    low, high = np.array([0.0, -1.0], np.float32), np.array([4.0, 1.0], np.float32)
    actor = ddpg.Actor(3, 2, (8,), low, high)
    a = actor.greedy_action(torch.randn(100, 3) * 1e4)  # saturated tanh reaches the bounds, never beyond
    assert (a >= torch.from_numpy(low)).all() and (a <= torch.from_numpy(high)).all() and not a.requires_grad
    x = torch.randn(5, 3)
    torch.testing.assert_close(actor(x), torch.tanh(actor.net(x)) * torch.tensor([2.0, 1.0]) + torch.tensor([2.0, 0.0]))
    assert {"action_scale", "action_bias"} <= set(actor.state_dict())  # the bounds travel with the weights


def test_soft_update_is_exact_per_tensor():
    torch.manual_seed(0)
    online, target = ddpg.QCritic(3, 1, (4, 4)), ddpg.QCritic(3, 1, (4, 4))
    theta = {k: v.clone() for k, v in online.state_dict().items()}
    theta_t = {k: v.clone() for k, v in target.state_dict().items()}
    ddpg.soft_update(target, online, 0.3)
    for k, v in target.state_dict().items():
        ref = 0.3 * theta[k].double() + 0.7 * theta_t[k].double()  # against float64
        torch.testing.assert_close(v.double(), ref, rtol=0, atol=1e-7)
        assert torch.equal(online.state_dict()[k], theta[k])  # the online network is untouched
    ddpg.soft_update(target, online, 1.0)  # tau = 1 copies
    for k, v in target.state_dict().items():
        assert torch.equal(v, theta[k])


def test_time_limit_transitions_keep_the_final_observation_and_bootstrap(tmp_path, monkeypatch):
    """Pendulum is cut at 200 steps: the stored transition has terminated=0 and the real last observation."""
    monkeypatch.chdir(tmp_path)
    buffers = []

    class Recording(ddpg.ReplayBuffer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            buffers.append(self)

    monkeypatch.setattr(ddpg, "ReplayBuffer", Recording)
    ddpg.main(ddpg.Args(total_timesteps=400, learning_starts=300, hidden_sizes=(16,), batch_size=16,
                        eval_episodes=1, buffer_size=1000))
    rb = buffers[0]
    assert rb.size == 400 and not rb.terminations[:400].any()
    # inside an episode the next observation is the following one; at the cut it is not the reset one
    np.testing.assert_array_equal(rb.next_obs[:199], rb.obs[1:200])
    assert not np.allclose(rb.next_obs[199], rb.obs[200])
    # Pendulum's observation is (cos th, sin th, thdot): the final one is a real state on the unit circle
    assert np.hypot(rb.next_obs[199, 0], rb.next_obs[199, 1]) == pytest.approx(1.0, abs=1e-5)
    # the buffer holds actions in the environment's units ([-2, 2]), exploration noise included
    assert np.abs(rb.actions[:400]).max() <= 2.0 and np.abs(rb.actions[:400]).max() > 1.0


SMALL = dict(hidden_sizes=(16, 16), batch_size=32, learning_starts=100, eval_episodes=1, log_every=200,
             save_model=True)


def test_resume_restores_the_training_state_and_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = ddpg.main(ddpg.Args(exp_name="a", total_timesteps=300, save_buffer=True, **SMALL))
    saved = torch.load(first["model_path"], weights_only=True)
    assert saved["global_step"] == 300 and saved["n_updates"] == 200 and saved["buffer"]["size"] == 300
    model, _ = ddpg.load_model(first["model_path"])
    assert ddpg.evaluate(first["model_path"], "Pendulum-v1", 1, seed=100_001) == first["eval_returns"]
    assert model.action_scale.item() == 2.0

    # learning postponed: no gradient step, so what is written again is what was loaded
    out = ddpg.main(ddpg.Args(exp_name="b", total_timesteps=400, resume=first["model_path"], save_buffer=True,
                              **{**SMALL, "learning_starts": 10_000}))
    assert "resumed" in capsys.readouterr().out and out["global_step"] == 400
    again = torch.load(out["model_path"], weights_only=True)
    for key in ("model", "critic", "actor_target", "critic_target"):
        for name, tensor in saved[key].items():
            assert torch.equal(again[key][name], tensor), (key, name)
    for key in ("actor_optimizer", "critic_optimizer"):
        for i, state in saved[key]["state"].items():
            for name, tensor in state.items():
                assert torch.equal(again[key]["state"][i][name], tensor), (key, name)
    assert again["n_updates"] == 200 and again["buffer"]["size"] == 400
    for f in ddpg.ReplayBuffer.FIELDS:  # the first 300 transitions are the saved ones
        assert torch.equal(again["buffer"][f][:300], saved["buffer"][f])

    # without the buffer: updates wait until the empty buffer holds batch_size (32) transitions
    torch.save({k: v for k, v in saved.items() if k != "buffer"}, tmp_path / "no_buffer.pt")
    out = ddpg.main(ddpg.Args(exp_name="c", total_timesteps=400, resume=str(tmp_path / "no_buffer.pt"), **SMALL))
    resumed = torch.load(out["model_path"], weights_only=True)
    assert "buffer" not in resumed and resumed["n_updates"] == 200 + (100 - 32 + 1)
    assert resumed["critic_optimizer"]["state"][0]["step"].item() == 200 + 69
    assert not torch.equal(resumed["model"]["net.0.weight"], saved["model"]["net.0.weight"])

    # bad resumes: one line, exit 2, before any work
    assert_one_line_exit_2(lambda: ddpg.main(ddpg.Args(total_timesteps=300, resume=first["model_path"], hidden_sizes=(16, 16))),
                           "--total-timesteps must be larger", capsys)
    assert_one_line_exit_2(lambda: ddpg.main(ddpg.Args(total_timesteps=900, resume=first["model_path"])),
                           "other sizes", capsys)
    torch.save({**saved, "algo": "td3"}, tmp_path / "other.pt")
    assert_one_line_exit_2(lambda: ddpg.main(ddpg.Args(total_timesteps=900, resume=str(tmp_path / "other.pt"))),
                           "does not fit ddpg.py", capsys)


def test_a_non_finite_loss_stops_the_run_before_the_networks_change(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddpg, "td_target", lambda rewards, terminations, next_q, gamma: torch.full_like(next_q, float("nan")))
    with pytest.raises(SystemExit) as exit_info:
        ddpg.main(ddpg.Args(total_timesteps=300, **{**SMALL, "save_model": False}))
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and "non-finite critic loss at step 101;" in err, err
    (last,) = tmp_path.glob("runs/*/ddpg_last_finite.pt")
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["n_updates"] == 0 and all(torch.isfinite(v).all() for v in ckpt["critic"].values())
    # --no-nan-check: the run goes on, and ends with NaN networks
    out = ddpg.main(ddpg.Args(total_timesteps=150, nan_check=False, **SMALL))
    assert torch.isnan(torch.load(out["model_path"], weights_only=True)["critic"]["net.0.weight"]).all()


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """Defaults (Pendulum-v1, 20k steps), seed 1: the deterministic evaluation reaches -200."""
    monkeypatch.chdir(tmp_path)
    out = ddpg.main(ddpg.Args(seed=1))
    assert out["eval_return_mean"] >= -200, out["eval_returns"]
