"""c51.py: the categorical projection on hand-worked cases, the cross-entropy loss, Q as the distribution's
mean, the network's shapes, and a learning regression. Bad input (--v-min >= --v-max, --n-atoms < 2, a Box
action space, ...) is run from the command line by test_smoke.py (smoke_configs.BAD_INPUT)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_projection_matches_hand_cases, load_algo

c51 = load_algo("c51")


def test_projection_matches_hand_worked_cases():
    """The cases of reference_math.categorical_projection_cases(): a shift between atoms, clipping at both ends,
    targets exactly on atoms (l == u), terminal transitions."""
    assert_projection_matches_hand_cases(c51.project_distribution)


def test_projection_rows_sum_to_one_and_keep_the_mean_inside_the_support():
    torch.manual_seed(0)
    support = torch.linspace(-10.0, 10.0, 51)
    next_probs = torch.softmax(torch.randn(64, 51), dim=-1)
    rewards = torch.randn(64) * 3
    dones = (torch.rand(64) < 0.3).float()
    m = c51.project_distribution(next_probs, rewards, dones, 0.9, support)
    assert (m >= 0).all()
    torch.testing.assert_close(m.sum(dim=1), torch.ones(64))
    # where no shifted atom leaves [-10, 10] (nothing clipped), the projection keeps the target's mean
    inside = (rewards.abs() + 0.9 * 10 * (1 - dones) <= 10)
    expected_mean = rewards + 0.9 * (1 - dones) * (next_probs * support).sum(1)
    torch.testing.assert_close((m * support).sum(1)[inside], expected_mean[inside])
    assert inside.sum() > 10  # the mean check really ran on many rows


@pytest.mark.parametrize("v_min,v_max,n_atoms", [(-100.0, 100.0, 51), (-7.0, 7.0, 24)])
def test_projection_keeps_every_atom_in_range(v_min, v_max, n_atoms):
    # A target at v_max must not index past the last atom. With 24 atoms on [-7, 7], float32 rounding gives
    # (v_max - v_min) / delta_z = 23.000002, whose ceiling would be atom 24 of 0..23.
    support = torch.linspace(v_min, v_max, n_atoms)
    next_probs = torch.full((2, n_atoms), 1 / n_atoms)
    m = c51.project_distribution(next_probs, torch.tensor([v_max, v_min]), torch.tensor([1.0, 1.0]), 0.99, support)
    torch.testing.assert_close(m[0, -1], torch.tensor(1.0))
    torch.testing.assert_close(m[1, 0], torch.tensor(1.0))


def test_cross_entropy_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]])  # p = [1/4, 3/4] and [1/2, 1/2]
    target = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    # row 0: -log(1/4) = log 4;  row 1: -(0.25 log 1/2 + 0.75 log 1/2) = log 2;  mean = (log 4 + log 2) / 2
    loss = c51.categorical_loss(logits, target)
    torch.testing.assert_close(loss, torch.tensor((math.log(4.0) + math.log(2.0)) / 2))


def test_q_is_the_mean_of_the_distribution():
    support = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    probs = torch.tensor([[[0.1, 0.2, 0.3, 0.15, 0.25], [0.0, 0.0, 0.0, 0.0, 1.0]]])  # [B=1, A=2, 5]
    # action 0: -0.2 - 0.2 + 0 + 0.15 + 0.5 = 0.25;  action 1: 2
    torch.testing.assert_close(c51.q_from_distribution(probs, support), torch.tensor([[0.25, 2.0]]))


def test_network_shapes_and_greedy_q():
    torch.manual_seed(0)
    net = c51.QNetwork(4, 3, n_atoms=7, v_min=-3.0, v_max=3.0, hidden_sizes=(16,))
    x = torch.randn(5, 4)
    logits = net(x)
    assert logits.shape == (5, 3, 7)
    torch.testing.assert_close(net.support, torch.linspace(-3.0, 3.0, 7))
    torch.testing.assert_close(net.q_values(x), (torch.softmax(logits, -1) * net.support).sum(-1))
    assert net.greedy_action(x).tolist() == net.q_values(x).argmax(1).tolist()
    assert "support" not in dict(net.named_parameters())  # the support is fixed, not trained


@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """Defaults, seed 1, 100k steps: the greedy evaluation reaches 475."""
    monkeypatch.chdir(tmp_path)
    out = c51.main(c51.Args(seed=1, total_timesteps=100_000))
    assert out["eval_return_mean"] >= 475, out["eval_returns"]
