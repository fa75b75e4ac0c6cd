"""mbpo.py: the branched rollout (it stops each branch at a predicted termination, draws each step through an elite,
keeps non-finite predictions out), the rollout-length schedule against hand values, the real/model batch mix, the
elite selection and the members' validation loss, the model's early stopping, the model buffer's resizing, and a
learning regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_algo

mbpo = load_algo("mbpo")


class LineModel(torch.nn.Module):
    """A hand-built ensemble on 2-D states: member e moves s[0] by step[e] (no noise: log-variance -80), the reward is
    s[0] + 10 * a[0], and the classifier says "terminated" once the reached s'[0] >= end: logit +30, else -30 (the
    probabilities 1 and 1e-13: the sampled termination is then certain).
    nan_above: the mean is NaN for states with s[0] > nan_above; inf_reward_below: the reward is +inf for s[0] below it."""

    def __init__(self, steps, end=math.inf, nan_above=math.inf, inf_reward_below=-math.inf):
        super().__init__()
        self.steps, self.end = torch.tensor(steps, dtype=torch.float32), end
        self.nan_above, self.inf_reward_below = nan_above, inf_reward_below

    def forward(self, obs, actions):
        mean = torch.zeros_like(obs)
        mean[..., 0] = self.steps[:, None].expand(obs.shape[:2])
        mean[obs[..., 0] > self.nan_above] = math.nan
        reward = obs[..., 0] + 10 * actions[..., 0]
        reward = torch.where(obs[..., 0] < self.inf_reward_below, math.inf, reward)
        return mean, torch.full_like(obs, -80.0), reward

    def termination_logit(self, next_obs):
        return torch.where(next_obs[..., 0] >= self.end, 30.0, -30.0)


def zero_policy(obs):
    return torch.zeros(obs.shape[0], 1)


def test_rollout_stops_each_branch_at_a_predicted_termination():
    """s[0] moves by +1 per step and the episode ends on reaching s[0] >= 3: a branch from 0 gives 3 transitions
    (0->1, 1->2, 2->3, the last terminated), from 2 one, from -5 all 6 of the length (never terminated)."""
    torch.manual_seed(0)
    start = torch.tensor([[0.0, 7.0], [2.0, 7.0], [-5.0, 7.0]])
    obs, actions, rewards, next_obs, terms = mbpo.branched_rollout(LineModel([1.0, 1.0], end=3.0), zero_policy, start, 6,
                                                                   torch.tensor([0, 1]), ensemble_size=2)
    got = sorted(zip(obs[:, 0].round(decimals=4).tolist(), next_obs[:, 0].round(decimals=4).tolist(), terms.tolist(),
                     strict=True))
    expected = sorted([(0.0, 1.0, 0.0), (1.0, 2.0, 0.0), (2.0, 3.0, 1.0), (2.0, 3.0, 1.0)]
                      + [(-5.0 + t, -4.0 + t, 0.0) for t in range(6)])
    assert got == expected
    # each transition's reward is the model's r(s, a), the other dimension carried along, and no branch continues
    # from a terminated state: no stored obs reaches 3
    torch.testing.assert_close(rewards, obs[:, 0])
    assert torch.all(obs[:, 1] == 7.0) and torch.all(next_obs[:, 1] == 7.0) and torch.all(obs[:, 0] < 3)
    assert actions.shape == (len(expected), 1)


def test_rollout_draws_each_step_through_a_random_elite():
    """Four members move s[0] by 1, 2, 3, 4; elites 1 and 3 (steps 2 and 4): every delta is 2 or 4, each about half
    of the time (independently per sample and step), and member 0 or 2 never acts."""
    torch.manual_seed(0)
    start = torch.zeros(2000, 2)
    obs, _, _, next_obs, terms = mbpo.branched_rollout(LineModel([1.0, 2.0, 3.0, 4.0]), zero_policy, start, 3,
                                                       torch.tensor([1, 3]), ensemble_size=4)
    delta = (next_obs[:, 0] - obs[:, 0]).round()
    assert obs.shape[0] == 6000 and not terms.any()
    assert set(delta.tolist()) == {2.0, 4.0}
    share = (delta == 2.0).float().mean().item()
    assert abs(share - 0.5) < 0.03, share  # 6000 draws: 4 standard deviations of a fair coin's share
    # a branch's successive members are independent: about a quarter of the branches go 2 then 2 (step 0 then 1)
    first, second = delta[:2000], delta[2000:4000]
    assert abs(((first == 2.0) & (second == 2.0)).float().mean().item() - 0.25) < 0.04


def test_rollout_samples_the_termination_probability():
    """A classifier whose logit is log(q / (1 - q)) everywhere ends each branch with probability q at each step: of
    20000 branches about q end at the first step, and the survivors go on to the second."""
    q = 0.3

    class Constant(LineModel):
        def termination_logit(self, next_obs):
            return torch.full(next_obs.shape[:2], math.log(q / (1 - q)))

    torch.manual_seed(0)
    obs, _, _, _, terms = mbpo.branched_rollout(Constant([1.0]), zero_policy, torch.zeros(20000, 2), 2,
                                                torch.tensor([0]), ensemble_size=1)
    first = terms[:20000]
    assert abs(first.mean().item() - q) < 0.015  # 4.6 standard deviations of the share
    assert obs.shape[0] == 20000 + int((first == 0).sum())  # exactly the survivors take a second step
    assert torch.all(obs[20000:, 0].round() == 1.0)


def test_rollout_keeps_non_finite_predictions_out():
    """The model's mean is NaN for s[0] > 1.5 and its reward infinite for s[0] < -10: a transition from such a
    state is dropped and its branch ends; nothing non-finite is returned (what the model buffer receives)."""
    start = torch.tensor([[0.0, 0.0], [5.0, 0.0], [-20.0, 0.0], [1.0, 0.0]])
    out = mbpo.branched_rollout(LineModel([1.0], nan_above=1.5, inf_reward_below=-10.0), zero_policy, start, 4,
                                torch.tensor([0]), ensemble_size=1)
    obs, _, rewards, next_obs, _ = out
    assert all(torch.isfinite(t).all() for t in out)
    # from 0: 0->1, 1->2, then 2 > 1.5 gives NaN (dropped); from 1: 1->2, then dropped; from 5 and -20: nothing
    got = sorted(zip(obs[:, 0].round(decimals=4).tolist(), next_obs[:, 0].round(decimals=4).tolist(), strict=True))
    assert got == [(0.0, 1.0), (1.0, 2.0), (1.0, 2.0)]
    torch.testing.assert_close(rewards, obs[:, 0])
    # the real ensemble's output passes the same filter: nothing non-finite from a model whose weights are NaN
    model = mbpo.EnsembleModel(obs_dim=2, act_dim=1, ensemble_size=2, hidden_sizes=(8,))
    with torch.no_grad():
        model.weights[-1][1].fill_(math.nan)  # member 1 predicts NaN for everything
    torch.manual_seed(0)
    obs, *_ = mbpo.branched_rollout(model, zero_policy, torch.randn(500, 2), 3, torch.tensor([0, 1]), ensemble_size=2)
    assert 0 < obs.shape[0] < 1500 and torch.isfinite(obs).all()


def test_rollout_length_schedule_by_hand():
    """The paper's [a, b, x, y] = [20, 100, 1, 15] (here in steps): x until a, then int(x + (step - a) / (b - a) * 14)."""
    schedule = (20, 100, 1, 15)
    hand = {0: 1, 20: 1, 25: 1, 26: 2, 60: 8, 99: 14, 100: 15, 10_000: 15}  # 25: 1 + 5/80*14 = 1.875 -> 1
    assert {s: mbpo.rollout_length(s, schedule) for s in hand} == hand
    assert {mbpo.rollout_length(s, (0, 5, 1, 1)) for s in range(20)} == {1}


@pytest.mark.parametrize("ratio,n_real", [(0.05, 13), (0.5, 128), (0.0, 0), (1.0, 256), (0.3, 77)])
def test_batch_mixes_real_and_model_data_in_the_stated_proportion(ratio, n_real):
    """Real rows carry +1, model rows -1: round(256 * ratio) rows are real (0.05 * 256 = 12.8 -> 13)."""
    real, model = mbpo.ReplayBuffer(100, 2, 1, seed=0), mbpo.ReplayBuffer(100, 2, 1, seed=1)
    real.add(np.ones((50, 2)), np.ones((50, 2)), np.ones((50, 1)), np.ones(50), np.zeros(50))
    model.add(-np.ones((60, 2)), -np.ones((60, 2)), -np.ones((60, 1)), -np.ones(60), np.ones(60))
    batch = mbpo.mixed_batch(real, model, 256, ratio)
    assert all(t.shape[0] == 256 for t in batch)
    for column in batch[:4]:
        assert int((column.reshape(256, -1)[:, 0] > 0).sum()) == n_real
    assert int(batch[4].sum()) == 256 - n_real  # the terminations column travels with its rows
    empty = mbpo.ReplayBuffer(100, 2, 1, seed=1)  # before the first rollouts: all real
    assert bool((mbpo.mixed_batch(real, empty, 64, ratio)[0] > 0).all())


def test_elites_are_the_lowest_validation_losses():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2, 0.3])
    assert mbpo.select_elites(losses, 3).tolist() == [1, 4, 3]
    assert mbpo.select_elites(losses, 6).tolist() == [1, 4, 3, 5, 0, 2]


def test_validation_loss_by_hand():
    """Members with zeroed output layers predict s' - s = 0 and r = 0, except member 1 whose reward bias is 2: the loss
    is the mean over rows and the obs_dim + 1 targets of the squared targets."""
    model = mbpo.EnsembleModel(obs_dim=2, act_dim=1, ensemble_size=2, hidden_sizes=(8,))
    with torch.no_grad():
        model.weights[-1].zero_()
        model.biases[-1].zero_()
        model.biases[-1][1, 0, 4] = 2.0  # member 1's reward output
    obs, actions = torch.zeros(2, 2), torch.zeros(2, 1)
    next_obs, rewards = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([3.0, 1.0])
    got = mbpo.validation_losses(model, 2, obs, actions, rewards, next_obs)
    # member 0: (1 + 4 + 9 + 0 + 1 + 1) / 6 = 16/6; member 1: rewards off by 1 and -1: (1 + 4 + 1 + 0 + 1 + 1) / 6 = 8/6
    torch.testing.assert_close(got, torch.tensor([16 / 6, 8 / 6]))


def linear_data(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    obs, actions = torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)
    next_obs = obs + 0.5 * actions - 0.2 * obs.flip(1)
    return obs, actions, obs[:, 0] - actions[:, 0], next_obs, (obs[:, 1] > 1.5).float()


def test_model_training_learns_and_stops_early():
    """On a linear system the members' validation loss falls well below its start; with a learning rate too small to
    change anything, no member improves by 1% and training stops after `patience` epochs."""
    torch.manual_seed(0)
    data = linear_data(600)
    model = mbpo.EnsembleModel(obs_dim=2, act_dim=1, ensemble_size=3, hidden_sizes=(32, 32))
    model.update_normalizer(torch.cat([data[0], data[1]], 1))
    before = mbpo.validation_losses(model, 3, data[0], data[1], data[2], data[3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    checked = []
    scores, losses, epochs, updates = mbpo.train_ensemble(model, opt, data, 3, 64, 0.2, 15, 5, checked.append)
    assert epochs == 15 and updates == 15 * (480 // 64) == len(checked)  # 120 validation rows, 480 for training
    assert (scores < 0.1 * before).all(), (before, scores)
    assert set(losses) == {"loss", "model_nll", "reward_loss", "termination_loss", "model_mse"}
    frozen = torch.optim.Adam(model.parameters(), lr=1e-12)
    _, _, epochs, _ = mbpo.train_ensemble(model, frozen, data, 3, 64, 0.2, 50, 3)
    assert epochs == 3


def test_resized_model_buffer_keeps_the_newest_in_order():
    rb = mbpo.ReplayBuffer(5, 1, 1, seed=3)
    for i in range(8):  # 8 transitions into 5 slots: 3..7 remain, the ring's position at 3
        rb.add(np.full((1, 1), i), np.full((1, 1), i), np.zeros((1, 1)), np.full(1, i), np.zeros(1))
    small, large = mbpo.resize_buffer(rb, 3), mbpo.resize_buffer(rb, 9)
    assert small.obs[:, 0].tolist() == [5, 6, 7] and small.size == 3 and small.pos == 0
    assert large.obs[:5, 0].tolist() == [3, 4, 5, 6, 7] and large.size == 5 and large.pos == 5
    assert large.rng is rb.rng  # the sampler's stream goes on (a checkpoint saves one generator)


@pytest.mark.slow
def test_balances_inverted_pendulum(tmp_path, monkeypatch):
    """Defaults, seed 1, 10k steps on InvertedPendulum-v5: the deterministic evaluation over 10 episodes is 1000."""
    monkeypatch.chdir(tmp_path)
    out = mbpo.main(mbpo.Args(seed=1, total_timesteps=10_000))
    assert out["eval_return_mean"] >= 1000, out["eval_returns"]
