"""td3.py: the TD3 target (twin minimum, clipped smoothing noise, action bounds, terminated vs truncated)
on a hand-computed batch, the delayed policy/target updates, Polyak exactness, the actor's action
scaling, checkpoint/resume, and a learning regression on Pendulum-v1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_algo

td3 = load_algo("td3")


def linear_twin_critic(obs: torch.Tensor, actions: torch.Tensor):
    """Q1'(s, a) = s + a, Q2'(s, a) = 2a (1-d obs and action): the minimum switches between them."""
    return obs[:, 0] + actions[:, 0], 2.0 * actions[:, 0]


def test_td3_target_by_hand():
    # action bounds [-2, 2] (Pendulum): scale 2; noise_clip c = 0.5, gamma = 0.5
    low, high, scale = torch.tensor([-2.0]), torch.tensor([2.0]), torch.tensor([2.0])
    rewards = torch.tensor([1.0, 0.0, -1.0, 2.0])
    terminated = torch.tensor([0.0, 0.0, 0.0, 1.0])
    next_obs = torch.tensor([[1.0], [-1.0], [0.0], [3.0]])
    mu_next = torch.tensor([[0.5], [1.0], [1.8], [-1.5]])
    noise = torch.tensor([[0.1], [2.0], [0.4], [-3.0]])
    y = td3.td3_target(rewards, terminated, next_obs, mu_next, noise, linear_twin_critic, 0.5, 0.5, scale, low, high)
    # row 0: noise inside the clip: a~ = 0.5 + 2*0.1 = 0.7; Q1' = 1.7, Q2' = 1.4 -> min 1.4; y = 1 + 0.5*1.4 = 1.7
    # row 1: noise 2.0 clipped to 0.5: a~ = 1 + 2*0.5 = 2.0; Q1' = 1.0, Q2' = 4.0 -> min 1.0; y = 0 + 0.5 = 0.5
    # row 2: a~ = 1.8 + 0.8 = 2.6, beyond the bound -> 2.0; Q1' = 2, Q2' = 4 -> 2; y = -1 + 0.5*2 = 0.0
    # row 3: noise -3 -> -0.5: a~ = -1.5 - 1 = -2.5 -> -2; terminated, so y = r = 2 (min(1, -4) = -4 is ignored)
    torch.testing.assert_close(y, torch.tensor([1.7, 0.5, 0.0, 2.0]))


def test_td3_target_terminated_vs_truncated_only():
    """Same transition: stored truncated-only (terminated=0) it bootstraps, terminated it does not."""
    low, high, scale = torch.tensor([-2.0]), torch.tensor([2.0]), torch.tensor([2.0])
    args = (torch.tensor([[1.0], [1.0]]), torch.tensor([[0.5], [0.5]]), torch.zeros(2, 1), linear_twin_critic,
            0.9, 0.5, scale, low, high)
    y = td3.td3_target(torch.tensor([-3.0, -3.0]), torch.tensor([0.0, 1.0]), *args)
    # a~ = 0.5; min(1.5, 1.0) = 1.0: truncated y = -3 + 0.9 = -2.1; terminated y = -3
    torch.testing.assert_close(y, torch.tensor([-2.1, -3.0]))


def test_smoothed_action_asymmetric_bounds_two_dims():
    """The noise is in units of the [-1, 1] action (times each dimension's scale) and the sum is clipped per dimension."""
    seen = {}

    def recording_critic(obs, actions):
        seen["a"] = actions.clone()
        return actions.sum(1), actions.sum(1) + 1.0  # Q1' < Q2': the minimum is Q1'

    low, high = torch.tensor([0.0, -1.0]), torch.tensor([4.0, 1.0])
    scale = (high - low) / 2  # [2, 1]
    mu_next = torch.tensor([[3.5, 0.0], [1.0, -0.9]])
    noise = torch.tensor([[0.2, 0.7], [-0.9, -0.3]])
    y = td3.td3_target(torch.zeros(2), torch.zeros(2), torch.zeros(2, 1), mu_next, noise, recording_critic,
                       1.0, 0.5, scale, low, high)
    # row 0: [3.5 + 2*0.2, 0 + 1*0.5] = [3.9, 0.5];  row 1: [1 - 2*0.5, -0.9 - 0.3] = [0.0, -1.2] -> [0.0, -1.0]
    expected = torch.tensor([[3.9, 0.5], [0.0, -1.0]])
    torch.testing.assert_close(seen["a"], expected)
    torch.testing.assert_close(y, expected.sum(1))


def test_actor_outputs_scaled_into_the_bounds():
    torch.manual_seed(0)
    low, high = np.array([0.0, -1.0], np.float32), np.array([4.0, 1.0], np.float32)
    actor = td3.Actor(3, 2, low, high, (8,))
    a = actor(torch.randn(100, 3) * 1e4)  # saturated tanh reaches the bounds, never beyond
    assert (a >= torch.from_numpy(low)).all() and (a <= torch.from_numpy(high)).all()
    x = torch.randn(5, 3)
    torch.testing.assert_close(actor(x), torch.tanh(actor.net(x)) * torch.tensor([2.0, 1.0]) + torch.tensor([2.0, 0.0]))


def test_polyak_update_is_exact():
    torch.manual_seed(0)
    online, target = td3.mlp(3, (4,), 2), td3.mlp(3, (4,), 2)
    before_online = [p.detach().clone() for p in online.parameters()]
    before_target = [p.detach().clone() for p in target.parameters()]
    flat_online, flat_target = td3.flatten_parameters(online), td3.flatten_parameters(target)
    tau = 0.005
    td3.polyak_update(flat_target, flat_online, tau)
    for p_t, p0, t0 in zip(target.parameters(), before_online, before_target, strict=True):
        assert torch.equal(p_t, tau * p0 + (1 - tau) * t0)  # bit for bit, tensor by tensor
    for p, p0 in zip(online.parameters(), before_online, strict=True):
        assert torch.equal(p, p0)  # the online network is untouched


def small_learner(seed: int = 0):
    torch.manual_seed(seed)
    low, high = np.array([-2.0], np.float32), np.array([2.0], np.float32)
    return td3.TD3Learner(3, 1, low, high, (16,), 1e-2, torch.device("cpu"))


def random_batch(n: int = 32):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, generator=g), torch.rand(n, 1, generator=g) * 4 - 2, torch.randn(n, generator=g),
            torch.randn(n, 3, generator=g), (torch.rand(n, generator=g) < 0.2).float())


def test_delayed_updates_every_policy_frequency_and_targets_move_with_the_actor():
    learner, batch, d = small_learner(), random_batch(), 3
    flats = {n: getattr(learner, n) for n in ("actor_flat", "critic_flat", "actor_target_flat", "critic_target_flat")}
    changed = {n: [] for n in flats}
    for n_update in range(1, 10):
        before = {n: f.detach().clone() for n, f in flats.items()}
        stats = learner.update(batch, n_update, gamma=0.99, tau=0.05, policy_noise=0.2, noise_clip=0.5, policy_frequency=d)
        for n, f in flats.items():
            changed[n].append(not torch.equal(f, before[n]))
        assert ("actor_loss" in stats) == (n_update % d == 0)
        if n_update % d == 0:  # targets: tau * (online after this update) + (1 - tau) * target before
            assert torch.equal(learner.actor_target_flat, 0.05 * learner.actor_flat + 0.95 * before["actor_target_flat"])
            assert torch.equal(learner.critic_target_flat, 0.05 * learner.critic_flat + 0.95 * before["critic_target_flat"])
    delayed = [n % d == 0 for n in range(1, 10)]  # updates 3, 6, 9
    assert changed["critic_flat"] == [True] * 9
    assert changed["actor_flat"] == delayed
    assert changed["actor_target_flat"] == delayed
    assert changed["critic_target_flat"] == delayed
    assert learner.critic_optimizer.state_dict()["state"][0]["step"] == 9
    assert learner.actor_optimizer.state_dict()["state"][0]["step"] == 3


def test_critic_loss_is_the_sum_of_both_critics_mse_to_the_same_target():
    learner, batch = small_learner(), random_batch()
    obs, actions, rewards, next_obs, terminated = batch
    torch.manual_seed(5)  # the smoothing noise comes from torch's generator: draw it the same way here
    with torch.no_grad():
        mu = learner.actor_target(next_obs)
        noise = torch.randn_like(mu) * 0.2
        y = td3.td3_target(rewards, terminated, next_obs, mu, noise, learner.critic_target, 0.99, 0.5,
                           learner.actor_target.action_scale, learner.low, learner.high)
        q1, q2 = learner.critic(obs, actions)
    torch.manual_seed(5)
    stats = learner.update(batch, 1, 0.99, 0.005, 0.2, 0.5, 2)
    torch.testing.assert_close(stats["qf1_loss"], ((q1 - y) ** 2).mean())
    torch.testing.assert_close(stats["qf2_loss"], ((q2 - y) ** 2).mean())


def test_replay_buffer_state_round_trip():
    rb = td3.ReplayBuffer(capacity=5, obs_dim=2, act_dim=1, seed=0)
    for t in range(3):
        o = np.full((2, 2), t, np.float32)
        rb.add(o, o + 1, np.full((2, 1), t, np.float32), np.array([t, -t], np.float32), np.array([0.0, 1.0]))
    state = rb.state_dict()
    assert state["size"] == 5 and state["pos"] == 1 and state["obs"].shape == (5, 2)
    other = td3.ReplayBuffer(capacity=5, obs_dim=2, act_dim=1, seed=0)
    other.load_state_dict(state)
    for f in td3.ReplayBuffer.FIELDS:
        np.testing.assert_array_equal(getattr(other, f), getattr(rb, f))
    assert (other.pos, other.size) == (rb.pos, rb.size)


def test_rng_state_round_trip():
    g = {"noise": np.random.default_rng(3)}
    state = td3.rng_state(g)
    draws = (np.random.rand(), torch.rand(1), g["noise"].normal(), __import__("random").random())
    td3.set_rng_state(state, g)
    again = (np.random.rand(), torch.rand(1), g["noise"].normal(), __import__("random").random())
    assert draws[0] == again[0] and torch.equal(draws[1], again[1]) and draws[2] == again[2] and draws[3] == again[3]


def tensors_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_resume_continues_from_the_saved_step_and_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = {"learning_starts": 200, "batch_size": 32, "hidden_sizes": (16, 16), "eval_episodes": 1, "log_every": 200,
             "save_model": True, "save_buffer": True}
    first = td3.main(td3.Args(total_timesteps=600, **small))
    assert first["global_step"] == 600 and first["n_updates"] == 400  # one update per step after learning_starts
    ckpt = torch.load(first["model_path"], weights_only=True)
    training = ckpt["training"]
    assert training["global_step"] == 600 and training["n_updates"] == 400 and training["buffer"]["size"] == 600

    # what a resumed run loads equals what was saved: networks, both optimisers (Adam's step counts too)
    learner = td3.TD3Learner(3, 1, np.array([-2.0], np.float32), np.array([2.0], np.float32), (16, 16), 3e-4,
                             torch.device("cpu"))
    learner.load_state_dict(training["learner"])
    assert tensors_equal(learner.state_dict(), training["learner"])
    assert learner.critic_optimizer.state_dict()["state"][0]["step"] == 400
    assert learner.actor_optimizer.state_dict()["state"][0]["step"] == 200  # policy delay 2
    # the flat buffers still back the modules after loading (load_state_dict copies in place)
    assert torch.equal(learner.actor_flat, torch.cat([p.reshape(-1) for p in learner.actor.parameters()]))
    assert learner.actor.net[0].weight.data_ptr() == learner.actor_flat.data_ptr()

    second = td3.main(td3.Args(total_timesteps=900, resume=first["model_path"], **small))
    assert second["global_step"] == 900 and second["n_updates"] == 700  # counters continue from 600 / 400
    t2 = torch.load(second["model_path"], weights_only=True)["training"]
    assert t2["learner"]["critic_optimizer"]["state"][0]["step"] == 700
    assert t2["learner"]["actor_optimizer"]["state"][0]["step"] == 350
    # the replay buffer was restored, then extended: the first 600 transitions are the saved ones
    assert t2["buffer"]["size"] == 900
    for f in td3.ReplayBuffer.FIELDS:
        assert torch.equal(t2["buffer"][f][:600], training["buffer"][f])
    # and training moved on from the loaded networks
    assert not torch.equal(t2["learner"]["actor"]["net.0.weight"], training["learner"]["actor"]["net.0.weight"])


def test_resume_without_buffer_waits_for_a_batch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = {"learning_starts": 100, "batch_size": 64, "hidden_sizes": (8,), "eval_episodes": 1, "save_model": True}
    first = td3.main(td3.Args(total_timesteps=300, **small))
    assert "buffer" not in torch.load(first["model_path"], weights_only=True)["training"]
    second = td3.main(td3.Args(total_timesteps=400, resume=first["model_path"], **small))
    # the empty buffer reaches a batch of 64 at step 364: updates at steps 364..400, i.e. 37 more
    assert second["global_step"] == 400 and second["n_updates"] == 200 + 37


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """Defaults, seed 1, 20k steps: deterministic evaluation >= -200. Measured on seeds 1-5: -193.7, -198.0,
    -186.5, -181.1, -142.5 (10 episodes each, about 220 s per run); the margin on seed 1 is thin."""
    monkeypatch.chdir(tmp_path)
    out = td3.main(td3.Args(seed=1, total_timesteps=20_000))
    assert out["eval_return_mean"] >= -200, out["eval_returns"]
