"""ppo.py: GAE against a slow reference loop, the clipped loss against hand values, the rollout's transitions
at episode ends (which observation a truncation bootstraps from), the checkpoint, and a learning regression.

ppo_atari.py and ppo_continuous_action.py share compute_gae, ppo_loss and approx_kl with this file, line for
line (tests/test_drift.py), and the same rollout loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo
from reference_math import reference_gae
from toy_envs import register_counting

ppo = load_algo("ppo")
COUNTING_ID = register_counting()


def test_gae_matches_reference_with_terminated_and_truncated_steps():
    rng = np.random.default_rng(0)
    T, N = 9, 3
    rewards = rng.normal(size=(T, N)).round(2)
    values = rng.normal(size=(T, N)).round(2)
    next_values = np.vstack([values[1:], rng.normal(size=(1, N)).round(2)])
    terminated = np.zeros((T, N))
    truncated = np.zeros((T, N))
    terminated[2, 0] = 1  # env 0: an episode terminates mid-rollout
    truncated[5, 0] = 1  # ... and the next one is cut by a time limit
    next_values[5, 0] = 7.5  # V(final observation) of the truncated episode, not V(reset observation)
    truncated[3, 1] = 1
    next_values[3, 1] = -4.0
    terminated[8, 2] = 1  # env 2: terminates on the last step
    gamma, lam = 0.97, 0.9
    adv, ret = ppo.compute_gae(*(torch.tensor(x, dtype=torch.float64) for x in
                                 (rewards, values, next_values, terminated, truncated)), gamma, lam)
    expected = np.array(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(),
                                      terminated.tolist(), truncated.tolist(), gamma, lam))
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), expected + values, atol=1e-10)


def test_gae_hand_computed_truncation_bootstraps_and_termination_does_not():
    # one env, two steps; step 0 ends the episode. gamma=0.5, lambda=1, V(s0)=1, reward 1.
    args = dict(rewards=torch.tensor([[1.0], [0.0]]), values=torch.tensor([[1.0], [0.0]]),
                next_values=torch.tensor([[10.0], [0.0]]))
    trunc, _ = ppo.compute_gae(**args, terminations=torch.tensor([[0.0], [0.0]]),
                               truncations=torch.tensor([[1.0], [0.0]]), gamma=0.5, gae_lambda=1.0)
    term, _ = ppo.compute_gae(**args, terminations=torch.tensor([[1.0], [0.0]]),
                              truncations=torch.tensor([[0.0], [0.0]]), gamma=0.5, gae_lambda=1.0)
    assert trunc[0, 0].item() == pytest.approx(1 + 0.5 * 10 - 1)  # bootstraps from V(final obs) = 10
    assert term[0, 0].item() == pytest.approx(1 - 1)  # no bootstrap after termination


def test_gae_lambda_one_is_discounted_return_minus_value():
    T = 6
    r = torch.arange(1.0, T + 1).unsqueeze(1)
    v = torch.zeros(T, 1)
    adv, _ = ppo.compute_gae(r, v, torch.zeros(T, 1), torch.zeros(T, 1), torch.zeros(T, 1), 0.9, 1.0)
    mc = [sum(0.9 ** (k - t) * (k + 1) for k in range(t, T)) for t in range(T)]
    np.testing.assert_allclose(adv.squeeze(1).numpy(), mc, rtol=1e-6)


def test_ppo_loss_clipping_by_hand():
    # ratio 1.5 with positive advantage is clipped to 1.2; ratio 0.5 with negative advantage is clipped to 0.8
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))
    adv = torch.tensor([2.0, -1.0])
    v = torch.tensor([0.0, 0.0])
    pg, vl, logratio = ppo.ppo_loss(new, old, adv, v, v, torch.tensor([1.0, 3.0]), 0.2, clip_vloss=False)
    assert pg.item() == pytest.approx(-(2.0 * 1.2 + -1.0 * 0.8) / 2)
    assert vl.item() == pytest.approx((1 + 9) / 2)
    # clipped value loss: old value 0, new 2, target 3, eps 0.2 -> max((2-3)^2, (0.2-3)^2) = 7.84
    _, vl_clip, _ = ppo.ppo_loss(old, old, torch.zeros(1), torch.tensor([2.0]), torch.tensor([0.0]),
                                 torch.tensor([3.0]), 0.2, clip_vloss=True)
    assert vl_clip.item() == pytest.approx(7.84)
    kl = ppo.approx_kl(logratio).item()
    assert kl == pytest.approx(((1.5 - 1 - math.log(1.5)) + (0.5 - 1 - math.log(0.5))) / 2)


def test_evaluate_actions_matches_torch_categorical():
    torch.manual_seed(0)
    agent = ppo.Agent(5, 4)
    x = torch.randn(7, 5)
    a = torch.randint(0, 4, (7,))
    logp, ent, value = agent.evaluate_actions(x, a)
    dist = torch.distributions.Categorical(logits=agent.actor(x))
    torch.testing.assert_close(logp, dist.log_prob(a))
    torch.testing.assert_close(ent, dist.entropy())
    torch.testing.assert_close(value, agent.critic(x).squeeze(-1))
    assert agent.greedy_action(x).tolist() == dist.probs.argmax(-1).tolist()


@pytest.mark.parametrize("num_envs", [1, 2])
def test_rollout_transitions_at_episode_ends(num_envs, tmp_path, monkeypatch):
    """Counting (tests/toy_envs.py), ten steps per environment: episodes of 3 steps (cut by the time limit),
    2 (terminated), 3 (cut), 2 (terminated). The rollout must store each observation s and the one that
    followed it, s': at a cut the last observation [3, k], not the reset one [0, k + 1]; GAE must get
    V(s') from the same network, only the cuts flagged truncated, only the real ends flagged terminated.
    Also saves a checkpoint, which loads and evaluates like the trained agent."""
    monkeypatch.chdir(tmp_path)
    value_calls, gae_calls = [], []
    original_value, original_gae = ppo.Agent.get_value, ppo.compute_gae

    def recording_value(self, x):
        out = original_value(self, x)
        value_calls.append((x.tolist(), out.detach().clone()))
        return out

    def recording_gae(rewards, values, next_values, terminations, truncations, gamma, gae_lambda):
        gae_calls.append((rewards.clone(), next_values.clone(), terminations.tolist(), truncations.tolist()))
        return original_gae(rewards, values, next_values, terminations, truncations, gamma, gae_lambda)

    monkeypatch.setattr(ppo.Agent, "get_value", recording_value)
    monkeypatch.setattr(ppo, "compute_gae", recording_gae)
    out = ppo.main(ppo.Args(env_id=COUNTING_ID, total_timesteps=10 * num_envs, num_envs=num_envs, num_steps=10,
                            num_minibatches=1, update_epochs=1, eval_episodes=1, save_model=True))
    assert out["global_step"] == 10 * num_envs and len(gae_calls) == 1
    s = [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [0, 2], [1, 2], [2, 2], [0, 3], [1, 3]]
    s_next = [[1, 0], [2, 0], [3, 0], [1, 1], [2, 1], [1, 2], [2, 2], [3, 2], [1, 3], [2, 3]]
    per_env = lambda rows: [row for row in rows for _ in range(num_envs)]  # noqa: E731 - [step, env] order
    rewards, next_values, terminations, truncations = gae_calls[0]
    assert terminations == [[float(t in (4, 9))] * num_envs for t in range(10)]
    assert truncations == [[float(t in (2, 7))] * num_envs for t in range(10)]
    torch.testing.assert_close(rewards, torch.ones(10, num_envs))
    inputs = [x for x, _ in value_calls]
    assert per_env(s) in inputs  # V(s), in the batched pass after the rollout
    x, v_next = value_calls[inputs.index(per_env(s_next))]  # V(s'), in the same pass
    torch.testing.assert_close(next_values, v_next.view(10, num_envs))

    agent, ckpt = ppo.load_model(out["model_path"])
    assert ckpt["algo"] == "ppo" and ckpt["env_id"] == COUNTING_ID
    assert ppo.evaluate(out["model_path"], COUNTING_ID, 1, seed=100_001) == out["eval_returns"]


def test_checkpoint_of_another_file_or_version_is_one_line(tmp_path, capsys):
    torch.save({"env_id": "CartPole-v1", "model": {}, "obs_dim": 4}, tmp_path / "old.pt")  # before "algo"
    assert_one_line_exit_2(lambda: ppo.load_model(str(tmp_path / "old.pt")), "retrain with --save-model", capsys)
    torch.save({"algo": "dqn", "env_id": "CartPole-v1", "model_args": {}, "model": {}}, tmp_path / "dqn.pt")
    assert_one_line_exit_2(lambda: ppo.evaluate(str(tmp_path / "dqn.pt"), "CartPole-v1", 1, 0), "dqn", capsys)
    assert_one_line_exit_2(lambda: ppo.load_model(str(tmp_path / "missing.pt")), "no checkpoint", capsys)


@pytest.mark.parametrize("overrides,expected", [
    (dict(max_grad_norm=float("nan")), "max-grad-norm"),
    (dict(clip_coef=-0.1), "clip-coef"),
    (dict(learning_rate=float("nan")), "learning-rate"),
    (dict(log_every=0), "log-every"),
])
def test_check_args_rejects_with_one_line(overrides, expected, capsys):
    """In-process; the smoke harness runs the command-line cases (tests/smoke_configs.py)."""
    assert_one_line_exit_2(lambda: ppo.check_args(ppo.Args(**overrides)), expected, capsys)


@pytest.mark.ci_learning
def test_learns_cartpole(tmp_path, monkeypatch):
    """The default configuration (rl-zoo3's CartPole settings), seed 1: the deterministic evaluation
    reaches 475 or more (the maximum is 500) within 100k steps."""
    monkeypatch.chdir(tmp_path)
    out = ppo.main(ppo.Args(seed=1, total_timesteps=100_000))
    assert out["eval_return_mean"] >= 475, out["eval_returns"]
