"""dqn.py: the TD target (plain, double, a discount per sample) on a hand-computed batch, the dueling
aggregation, the replay buffer, the schedule, the target network update, and a learning regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_algo

dqn = load_algo("dqn")

# A batch of three transitions, two actions; the third terminates.
REWARDS = torch.tensor([1.0, 0.0, 2.0])
TERMINATED = torch.tensor([0.0, 0.0, 1.0])
NEXT_Q_TARGET = torch.tensor([[3.0, 5.0], [4.0, -1.0], [10.0, 20.0]])
NEXT_Q_ONLINE = torch.tensor([[9.0, 1.0], [0.0, 2.0], [1.0, 0.0]])  # disagrees with the target's argmax


def test_dqn_target_by_hand():
    y = dqn.dqn_target(REWARDS, TERMINATED, NEXT_Q_TARGET, None, gamma=0.5)
    # 1 + 0.5*max(3,5) = 3.5;  0 + 0.5*max(4,-1) = 2;  terminated: 2
    torch.testing.assert_close(y, torch.tensor([3.5, 2.0, 2.0]))


def test_double_dqn_target_by_hand():
    y = dqn.dqn_target(REWARDS, TERMINATED, NEXT_Q_TARGET, NEXT_Q_ONLINE, gamma=0.5)
    # online argmax: 0, 1, 0 -> evaluated by the target: 3, -1, (terminated)
    torch.testing.assert_close(y, torch.tensor([1 + 0.5 * 3.0, 0 + 0.5 * -1.0, 2.0]))


def test_target_with_a_discount_per_sample_by_hand():
    """rainbow.py passes gamma^m per sample (n-step returns cut short by an episode end)."""
    y = dqn.dqn_target(REWARDS, TERMINATED, NEXT_Q_TARGET, None, gamma=torch.tensor([0.5, 0.25, 0.9]))
    torch.testing.assert_close(y, torch.tensor([1 + 0.5 * 5.0, 0 + 0.25 * 4.0, 2.0]))


def test_dueling_aggregation_by_hand():
    value = torch.tensor([[2.0], [-1.0]])
    adv = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    q = dqn.dueling_aggregate(value, adv)
    torch.testing.assert_close(q, torch.tensor([[1.0, 2.0, 3.0], [-3.0, -3.0, 3.0]]))
    # the advantages' mean is removed: Q averaged over actions equals V
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), value)


def test_dueling_network_uses_the_aggregation():
    torch.manual_seed(0)
    net = dqn.QNetwork(4, 3, (16,), dueling=True)
    x = torch.randn(5, 4)
    h = net.trunk(x)
    torch.testing.assert_close(net(x), net.value_head(h) + net.advantage_head(h) - net.advantage_head(h).mean(1, keepdim=True))


def test_replay_buffer_wraps_and_samples_what_was_stored():
    rb = dqn.ReplayBuffer(capacity=4, num_envs=2, obs_dim=2, seed=0)  # 2 rows of 2 environments
    assert rb.rows == 2
    for t in range(3):  # 3 vector steps into 2 rows: the first is overwritten
        obs = np.array([[t, 0.0], [t, 1.0]], dtype=np.float32)
        rb.add(obs, np.array([t, t]), np.array([t, -t], dtype=np.float32), obs + 100, np.array([0.0, 1.0]))
    assert rb.filled == 2 and rb.pos == 1
    assert set(rb.obs[:, :, 0].ravel().tolist()) == {1.0, 2.0}  # the oldest step (t=0) was overwritten
    o, a, r, o2, d = rb.sample(64)
    assert o.shape == (64, 2) and a.dtype == torch.int64
    torch.testing.assert_close(o2, o + 100)
    torch.testing.assert_close(a.float(), o[:, 0])
    torch.testing.assert_close(r, o[:, 0] * (1 - 2 * o[:, 1]))  # env 1's rewards are negated
    torch.testing.assert_close(d, o[:, 1])  # env 1's transitions are the terminated ones
    assert set(o[:, 1].tolist()) == {0.0, 1.0} and set(o[:, 0].tolist()) == {1.0, 2.0}  # both columns, both rows


def test_linear_schedule_decays_and_grows():
    assert dqn.linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert dqn.linear_schedule(1.0, 0.1, 100, 1000) == pytest.approx(0.1)
    assert dqn.linear_schedule(0.4, 1.0, 200, 50) == pytest.approx(0.55)  # rainbow.py's beta grows
    assert dqn.linear_schedule(0.4, 1.0, 200, 500) == pytest.approx(1.0)


def test_soft_update_and_greedy_action():
    torch.manual_seed(0)
    online, target = dqn.QNetwork(4, 3, (8,)), dqn.QNetwork(4, 3, (8,))
    before = [p.clone() for p in target.parameters()]
    dqn.soft_update(target, online, 0.25)
    for b, t, o in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)
    dqn.soft_update(target, online, 1.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True))
    x = torch.randn(6, 4)
    assert online.greedy_action(x).tolist() == online(x).argmax(1).tolist()


@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """Defaults with --double-q, seed 1, 100k steps: the greedy evaluation reaches 475."""
    monkeypatch.chdir(tmp_path)
    out = dqn.main(dqn.Args(seed=1, double_q=True, total_timesteps=100_000))
    assert out["eval_return_mean"] >= 475, out["eval_returns"]
