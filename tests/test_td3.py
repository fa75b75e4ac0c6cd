"""td3.py: the TD3 target (twin minimum, clipped smoothing noise, action bounds, terminated vs truncated)
on a hand-computed batch, the twin critic, the delayed policy and target updates, resuming, and a learning
regression on Pendulum-v1."""

from __future__ import annotations

import pytest
import torch
from conftest import load_algo

td3 = load_algo("td3")


def linear_twin_critic(obs: torch.Tensor, actions: torch.Tensor):
    """Q1'(s, a) = s + a, Q2'(s, a) = 2a (1-d obs and action): the minimum switches between them."""
    return obs[:, 0] + actions[:, 0], 2.0 * actions[:, 0]


def td3_target(rewards, terminated, next_obs, mu_next, noise, noise_clip, scale, low, high, gamma):
    """The target as main() composes it: smoothed action, twin minimum, bootstrap."""
    smoothed = td3.smoothed_target_action(mu_next, noise, noise_clip, scale, low, high)
    q1, q2 = linear_twin_critic(next_obs, smoothed)
    return td3.td_target(rewards, terminated, torch.min(q1, q2), gamma)


def test_td3_target_by_hand():
    # action bounds [-2, 2] (Pendulum): scale 2; noise_clip c = 0.5, gamma = 0.5
    low, high, scale = torch.tensor([-2.0]), torch.tensor([2.0]), torch.tensor([2.0])
    rewards = torch.tensor([1.0, 0.0, -1.0, 2.0, -3.0])
    terminated = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    next_obs = torch.tensor([[1.0], [-1.0], [0.0], [3.0], [1.0]])
    mu_next = torch.tensor([[0.5], [1.0], [1.8], [-1.5], [0.5]])
    noise = torch.tensor([[0.1], [2.0], [0.4], [-3.0], [0.0]])
    y = td3_target(rewards, terminated, next_obs, mu_next, noise, 0.5, scale, low, high, 0.5)
    # row 0: noise inside the clip: a~ = 0.5 + 2*0.1 = 0.7; Q1' = 1.7, Q2' = 1.4 -> min 1.4; y = 1 + 0.5*1.4 = 1.7
    # row 1: noise 2.0 clipped to 0.5: a~ = 1 + 2*0.5 = 2.0; Q1' = 1.0, Q2' = 4.0 -> min 1.0; y = 0 + 0.5 = 0.5
    # row 2: a~ = 1.8 + 0.8 = 2.6, beyond the bound -> 2.0; Q1' = 2, Q2' = 4 -> 2; y = -1 + 0.5*2 = 0.0
    # row 3: noise -3 -> -0.5: a~ = -1.5 - 1 = -2.5 -> -2; terminated, so y = r = 2 (min(1, -4) = -4 is ignored)
    # row 4: truncated-only (terminated=0) bootstraps: a~ = 0.5; min(1.5, 1.0) = 1.0; y = -3 + 0.5 = -2.5
    torch.testing.assert_close(y, torch.tensor([1.7, 0.5, 0.0, 2.0, -2.5]))


def test_smoothed_action_asymmetric_bounds_two_dims():
    """The noise is in units of half the action range (times each dimension's scale); the sum is clipped per dimension."""
    low, high = torch.tensor([0.0, -1.0]), torch.tensor([4.0, 1.0])
    scale = (high - low) / 2  # [2, 1]
    mu_next = torch.tensor([[3.5, 0.0], [1.0, -0.9]])
    noise = torch.tensor([[0.2, 0.7], [-0.9, -0.3]])
    a = td3.smoothed_target_action(mu_next, noise, 0.5, scale, low, high)
    # row 0: [3.5 + 2*0.2, 0 + 1*0.5] = [3.9, 0.5];  row 1: [1 - 2*0.5, -0.9 - 0.3] = [0.0, -1.2] -> [0.0, -1.0]
    torch.testing.assert_close(a, torch.tensor([[3.9, 0.5], [0.0, -1.0]]))


def test_twin_critic_is_two_independent_critics():
    torch.manual_seed(0)
    twin = td3.TwinQCritic(3, 2, (8,))
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    q1, q2 = twin(obs, act)
    torch.testing.assert_close(q1, twin.q1.net(torch.cat([obs, act], 1)).squeeze(1))
    torch.testing.assert_close(q2, twin.q2.net(torch.cat([obs, act], 1)).squeeze(1))
    assert not torch.equal(q1, q2)  # independently initialised


def test_delayed_updates_and_resume(tmp_path, monkeypatch, capsys):
    """policy_frequency 3: the actor and the targets move on every third critic step; a resumed run restores
    the training state and continues the counters."""
    monkeypatch.chdir(tmp_path)
    small = dict(hidden_sizes=(16,), batch_size=32, learning_starts=100, eval_episodes=1, log_every=200,
                 policy_frequency=3, save_model=True, save_buffer=True)
    first = td3.main(td3.Args(exp_name="a", total_timesteps=300, **small))
    saved = torch.load(first["model_path"], weights_only=True)
    assert first["n_updates"] == saved["n_updates"] == 200
    assert saved["critic_optimizer"]["state"][0]["step"].item() == 200
    assert saved["actor_optimizer"]["state"][0]["step"].item() == 200 // 3  # delayed policy updates
    assert td3.evaluate(first["model_path"], "Pendulum-v1", 1, seed=100_001) == first["eval_returns"]

    # learning postponed: no gradient step, so the networks written again are the loaded ones
    out = td3.main(td3.Args(exp_name="b", total_timesteps=400, resume=first["model_path"],
                            **{**small, "learning_starts": 10_000}))
    assert "resumed" in capsys.readouterr().out
    again = torch.load(out["model_path"], weights_only=True)
    for key in ("model", "critic", "actor_target", "critic_target"):
        for name, tensor in saved[key].items():
            assert torch.equal(again[key][name], tensor), (key, name)
    assert again["buffer"]["size"] == 400

    # learning: 100 more critic steps, counted on from 200 (the actor on updates 201 and 204 ... 300)
    out = td3.main(td3.Args(exp_name="c", total_timesteps=400, resume=first["model_path"], **small))
    resumed = torch.load(out["model_path"], weights_only=True)
    assert out["n_updates"] == 300 and resumed["critic_optimizer"]["state"][0]["step"].item() == 300
    assert resumed["actor_optimizer"]["state"][0]["step"].item() == 300 // 3
    for f in td3.ReplayBuffer.FIELDS:  # the replay buffer was restored, then extended
        assert torch.equal(resumed["buffer"][f][:300], saved["buffer"][f])
    assert not torch.equal(resumed["model"]["net.0.weight"], saved["model"]["net.0.weight"])


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """Defaults, seed 1, 20k steps: deterministic evaluation >= -200."""
    monkeypatch.chdir(tmp_path)
    out = td3.main(td3.Args(seed=1, total_timesteps=20_000))
    assert out["eval_return_mean"] >= -200, out["eval_returns"]
