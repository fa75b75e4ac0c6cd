"""actor_critic.py: the one-step TD error for ordinary, terminated and truncated steps by hand, the losses'
gradients against S&B's update rules worked out by hand, the transitions the training loop builds at
episode ends (toy environment), and a learning regression.
(The Gaussian and softmax log-probabilities are checked for this file in test_reinforce.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo
from toy_envs import register_counting

ac = load_algo("actor_critic")


def test_td_error_by_hand_ordinary_terminated_truncated():
    # r = 1, V(s) = 2, gamma = 0.9
    r, v, gamma = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 2.0, 2.0]), 0.9
    # ordinary step: V(s') = 3                   -> 1 + 0.9 * 3 - 2 = 1.7
    # terminated: V(s') = 3 is ignored            -> 1 - 2 = -1
    # truncated: V(final obs) = 3, not terminated -> bootstraps like an ordinary step: 1.7
    #            (V of the reset observation, say 10, must not be used: that would give 1 + 9 - 2 = 8)
    next_v = torch.tensor([3.0, 3.0, 3.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    np.testing.assert_allclose(ac.td_error(r, v, next_v, terminated, gamma).numpy(), [1.7, -1.0, 1.7], rtol=1e-6)
    # gamma = 1, a zero reward and V(s) = V(s'): a consistent value has zero TD error
    assert ac.td_error(torch.zeros(1), torch.ones(1), torch.ones(1), torch.zeros(1), 1.0).item() == 0.0


@pytest.mark.parametrize("terminated", [0.0, 1.0])
def test_loss_gradients_are_the_one_step_actor_critic_updates(terminated):
    """S&B §13.5: w += alpha_w * delta * grad V(s); theta += alpha_theta * delta * grad log pi(a|s).

    Linear critic V(s) = w . s with w = (0.5, -0.25), s = (1, 2), s' = (0, 1): V(s) = 0, V(s') = -0.25.
    r = 1, gamma = 0.9: delta = 1 + 0.9 * (-0.25) = 0.775 if not terminated, else 1 - 0 = 1.
    grad_w of the value loss = -delta * s.
    Softmax policy with free logits theta = (0, log 3): pi = (1/4, 3/4); action 1:
    grad_theta log pi(1) = onehot(1) - pi = (-1/4, 1/4), so grad_theta of the policy loss = -delta * (-1/4, 1/4).
    """
    w = torch.tensor([0.5, -0.25], requires_grad=True)
    s, s_next = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    theta = torch.tensor([0.0, math.log(3.0)], requires_grad=True)
    v, v_next = (w * s).sum().reshape(1), (w * s_next).sum().reshape(1).detach()
    delta = ac.td_error(torch.tensor([1.0]), v, v_next, torch.tensor([terminated]), 0.9)
    expected_delta = 1.0 if terminated else 0.775
    assert delta.item() == pytest.approx(expected_delta)
    logp, entropy = ac.categorical_log_prob_entropy(theta.unsqueeze(0), torch.tensor([1]))
    policy_loss, value_loss = ac.actor_critic_losses(delta, logp, entropy, ent_coef=0.0)
    assert value_loss.item() == pytest.approx(0.5 * expected_delta**2)
    (policy_loss + value_loss).backward()
    np.testing.assert_allclose(w.grad.numpy(), [-expected_delta * 1.0, -expected_delta * 2.0], rtol=1e-6)
    np.testing.assert_allclose(theta.grad.numpy(), [expected_delta * 0.25, -expected_delta * 0.25], rtol=1e-6)
    # the entropy bonus enters as -ent_coef * H
    with_bonus, _ = ac.actor_critic_losses(delta, logp, entropy, ent_coef=0.1)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert with_bonus.item() == pytest.approx(policy_loss.item() - 0.1 * h, rel=1e-6)


COUNTING_ID = register_counting()


@pytest.mark.parametrize("num_envs", [1, 2])
def test_transitions_at_episode_ends(num_envs, tmp_path, monkeypatch):
    """Ten steps per environment: episodes of 3 (cut by the time limit), 2 (terminated), 3 (cut), 2 (terminated).

    Each update's s' must be the real next observation: at a cut, the last one ([3, k]) and not the reset
    [0, k + 1]; its V(s') must be the critic's value (a truncation bootstraps); only real terminations
    are flagged terminated."""
    monkeypatch.chdir(tmp_path)
    critic_calls, td_calls = [], []
    original_forward, original_td = ac.ValueNetwork.forward, ac.td_error

    def recording_forward(self, x):
        out = original_forward(self, x)
        critic_calls.append((x.tolist(), out.detach().clone()))
        return out

    def recording_td(rewards, values, next_values, terminations, gamma):
        td_calls.append((next_values.clone(), terminations.tolist()))
        return original_td(rewards, values, next_values, terminations, gamma)

    monkeypatch.setattr(ac.ValueNetwork, "forward", recording_forward)
    monkeypatch.setattr(ac, "td_error", recording_td)
    out = ac.main(ac.Args(env_id=COUNTING_ID, total_timesteps=10 * num_envs, num_envs=num_envs, eval_episodes=1))
    assert out["global_step"] == 10 * num_envs and len(critic_calls) == len(td_calls) == 10
    s = [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [0, 2], [1, 2], [2, 2], [0, 3], [1, 3]]
    s_next = [[1, 0], [2, 0], [3, 0], [1, 1], [2, 1], [1, 2], [2, 2], [3, 2], [1, 3], [2, 3]]
    terminated = [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    for step, ((x, values), (next_values, terms)) in enumerate(zip(critic_calls, td_calls, strict=True)):
        assert x == [s[step]] * num_envs + [s_next[step]] * num_envs, step
        assert terms == [terminated[step]] * num_envs, step
        torch.testing.assert_close(next_values, values[num_envs:])  # V(s'), also at the cuts (steps 2 and 7)


@pytest.mark.parametrize("kwargs,expected", [({"gamma": 1.5}, "--gamma"), ({"num_envs": 0}, "--num-envs"), ({"hidden_size": 0}, "--hidden-size"),
     ({"learning_rate": -1e-3}, "--learning-rate"), ({"critic_learning_rate": 0.0}, "--critic-learning-rate"),
     ({"ent_coef": -0.1}, "--ent-coef"), ({"env_id": "CarRacing-v3"}, "flat Box observation"),
     ({"env_id": "Blackjack-v1"}, "Tuple")])
def test_bad_arguments_are_one_line_and_exit_2(kwargs, expected, capsys):
    """The cases the smoke harness does not run (it runs the unknown id, Blackjack's Tuple observation and
    non-positive budgets as subprocesses); checked in-process, where they cost milliseconds."""
    assert_one_line_exit_2(lambda: ac.check_args(ac.Args(**kwargs)), expected, capsys)


@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """Defaults (one environment; actor lr 3e-4, critic lr 1e-3, both annealed; gamma 0.99), seed 1, 50k
    steps: the deterministic evaluation (10 episodes) reaches >= 400."""
    monkeypatch.chdir(tmp_path)
    out = ac.main(ac.Args(seed=1, total_timesteps=50_000))
    assert out["eval_return_mean"] >= 400, out["eval_returns"]
