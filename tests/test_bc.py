"""bc.py: the filtered-BC episode choice, the state statistics, the losses and the normalised score against hand
values and Minari's own function, the dataset's transitions against its episodes, the policy's normalisation and
bounds; slow: cloning a CartPole-v1 expert (ppo.py) reaches the expert's return.

The tiny datasets (conftest.OFFLINE_DATASETS) live in a temporary MINARI_DATASETS_PATH set for the test process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_algo, run_main

bc = load_algo("bc")


def test_top_episodes_by_hand():
    returns = np.array([5.0, 1.0, 5.0, 3.0, 9.0])
    # 2 of 5: 9 (episode 4), then the first of the tied 5s (episode 0); returned in dataset order
    assert bc.top_episodes(returns, 0.4).tolist() == [0, 4]
    assert bc.top_episodes(returns, 0.5).tolist() == [0, 4]  # floor(2.5) = 2
    assert bc.top_episodes(returns, 0.6).tolist() == [0, 2, 4]  # 0.6 * 5 = 3.0000000000000004 -> 3
    assert bc.top_episodes(returns, 0.01).tolist() == [4]  # at least one episode
    assert bc.top_episodes(returns, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert bc.top_episodes(np.array([1.0] * 10), 0.3).tolist() == [0, 1, 2]  # 0.3 * 10 is 2.9999999999999996


def test_obs_statistics_by_hand():
    obs = np.array([[1.0, 2.0], [3.0, 2.0]], dtype=np.float32)
    mean, std = bc.obs_statistics(obs)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(std, [1.0 + 1e-3, 1e-3])  # population std; a constant feature gets CORL's eps


def test_losses_by_hand():
    pred, target = torch.tensor([[0.5, -1.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert bc.bc_loss(pred, target, discrete=False).item() == pytest.approx((0.25 + 1.0 + 1.0 + 0.0) / 4)
    logits, actions = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]]), torch.tensor([1, 0])
    # softmax rows (1/4, 3/4) and (1/2, 1/2): -(log 3/4 + log 1/2) / 2
    assert bc.bc_loss(logits, actions, discrete=True).item() == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2)


def test_normalized_score_is_minaris_times_100(offline_datasets):
    import minari

    dataset = minari.load_dataset("tiny/cartpole-random-v0")  # reference returns 20 / 500
    returns = [100.0, 260.0]
    expected = 100 * float(np.mean(minari.get_normalized_score(dataset, np.array(returns))))
    assert expected == pytest.approx(100 * (180.0 - 20.0) / 480.0)
    meta = dataset.storage.metadata
    assert bc.normalized_score(returns, meta["ref_min_score"], meta["ref_max_score"]) == pytest.approx(expected)


def test_load_transitions_matches_the_episodes(offline_datasets):
    import minari

    dataset = minari.load_dataset("tiny/pendulum-random-v0")
    data = bc.load_transitions(dataset)
    episodes = list(dataset.iterate_episodes())
    assert len(data["observations"]) == dataset.total_steps == sum(len(ep.rewards) for ep in episodes) == 400
    row = 0
    for i, ep in enumerate(episodes):
        t = len(ep.rewards)
        np.testing.assert_array_equal(data["observations"][row:row + t], ep.observations[:-1].astype(np.float32))
        np.testing.assert_array_equal(data["next_observations"][row:row + t], ep.observations[1:].astype(np.float32))
        np.testing.assert_array_equal(data["actions"][row:row + t], ep.actions)
        np.testing.assert_array_equal(data["truncations"][row:row + t], ep.truncations)
        assert (data["episode"][row:row + t] == i).all()
        assert data["episode_returns"][i] == pytest.approx(float(np.sum(ep.rewards)))
        row += t
    # Pendulum never terminates; 400 steps = two whole 200-step episodes, each truncated by the time limit
    assert len(episodes) == 2 and data["terminations"].sum() == 0 and data["truncations"].sum() == 2


def test_policy_normalises_raw_observations_and_stays_in_bounds():
    torch.manual_seed(0)
    policy = bc.BCPolicy(obs_dim=2, act_dim=1, hidden_sizes=(8,), discrete=False, action_low=[-2.0], action_high=[1.0])
    policy.obs_mean.copy_(torch.tensor([10.0, -5.0]))
    policy.obs_std.copy_(torch.tensor([2.0, 0.5]))
    x = torch.tensor([[12.0, -4.0], [1e6, -1e6]])
    expected = 1.5 * torch.tanh(policy.net(torch.tensor([[1.0, 2.0], [(1e6 - 10) / 2, (-1e6 + 5) / 0.5]]))) - 0.5
    torch.testing.assert_close(policy.greedy_action(x), expected)
    assert (policy.greedy_action(x) >= -2).all() and (policy.greedy_action(x) <= 1).all()
    discrete = bc.BCPolicy(obs_dim=2, act_dim=3, hidden_sizes=(8,), discrete=True)
    assert discrete.greedy_action(x).tolist() == discrete(x).argmax(dim=1).tolist()


def test_filtered_bc_trains_on_the_best_episodes_only(offline_datasets, tmp_path, capsys):
    """--top-fraction 0.3 on the CartPole data: the statistics saved with the model are those of the kept episodes'
    states (the best 30% by return), not of the whole dataset's."""
    import minari

    data = bc.load_transitions(minari.load_dataset("tiny/cartpole-random-v0"))
    kept = bc.top_episodes(data["episode_returns"], 0.3)
    rows = np.isin(data["episode"], kept)
    assert 0 < rows.sum() < len(rows)
    out = run_main(bc, ["--dataset-id", "tiny/cartpole-random-v0", "--top-fraction", "0.3", "--total-updates", "2",
                        "--eval-episodes", "1", "--save-model", "--hidden-sizes", "8"], tmp_path)
    assert f"cloning {rows.sum():,} transitions of {len(kept)} episodes" in capsys.readouterr().out
    policy, ckpt = bc.load_model(str(tmp_path / out["model_path"]))
    mean, std = bc.obs_statistics(data["observations"][rows])
    torch.testing.assert_close(policy.obs_mean, torch.as_tensor(mean))
    torch.testing.assert_close(policy.obs_std, torch.as_tensor(std))
    assert ckpt["dataset_id"] == "tiny/cartpole-random-v0" and ckpt["env_id"] == "CartPole-v1"


@pytest.mark.slow
def test_clones_a_cartpole_expert(offline_datasets, tmp_path):
    """ppo.py's CartPole-v1 expert (100k steps, seed 1: deterministic return 500), 20k transitions of it with 10%
    random actions; bc.py's 5k gradient steps reach a deterministic evaluation >= 475 (the expert's 500 minus 5%)."""
    from test_make_dataset import make_dataset

    ppo = load_algo("ppo")
    expert = run_main(ppo, ["--total-timesteps", "100000", "--save-model", "--eval-episodes", "5"], tmp_path / "ppo")
    assert expert["eval_return_mean"] >= 475, expert["eval_returns"]
    make_dataset(["--env-id", "CartPole-v1", "--dataset-id", "test/cartpole/expert-v0", "--steps", "20000",
                  "--policy", f"ppo:{tmp_path / 'ppo' / expert['model_path']}", "--noise", "0.1"])
    out = run_main(bc, ["--dataset-id", "test/cartpole/expert-v0", "--total-updates", "5000", "--eval-every", "1000"],
                   tmp_path / "bc")
    assert out["eval_return_mean"] >= 475, out["eval_returns"]
    assert out["normalized_score_last"] >= 95, out
