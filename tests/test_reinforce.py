"""reinforce.py: the returns and baseline advantages of hand-computed episodes (terminated, truncated with
and without a critic), the Gaussian and softmax log-probabilities and entropies against closed forms,
the end-of-episode handling of the training loop on a toy environment, and learning regressions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, run_main
from toy_envs import register_counting

reinforce = load_algo("reinforce")

# One episode written out: rewards r_0..r_3 = 1, 0, 2, 1 with gamma = 0.5.
REWARDS = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
# terminated:  G_3 = 1;  G_2 = 2 + 0.5 * 1 = 2.5;  G_1 = 0 + 0.5 * 2.5 = 1.25;  G_0 = 1 + 0.5 * 1.25 = 1.625
G_TERMINATED = [1.625, 1.25, 2.5, 1.0]
# cut by a time limit, V(s_4) = 4:  G_3 = 1 + 0.5 * 4 = 3;  G_2 = 2 + 1.5 = 3.5;  G_1 = 1.75;  G_0 = 1 + 0.875 = 1.875
G_TRUNCATED_BOOTSTRAPPED = [1.875, 1.75, 3.5, 3.0]


def test_discounted_returns_of_a_terminated_episode_by_hand():
    got = reinforce.returns_to_go(REWARDS, 0.5, terminated=True, last_value=torch.tensor(4.0, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), G_TERMINATED)  # V(s_T) is ignored after a termination


def test_truncated_episode_bootstraps_from_the_critic_and_is_cut_without_one():
    with_critic = reinforce.returns_to_go(REWARDS, 0.5, terminated=False, last_value=torch.tensor(4.0, dtype=torch.float64))
    np.testing.assert_allclose(with_critic.numpy(), G_TRUNCATED_BOOTSTRAPPED)
    without_critic = reinforce.returns_to_go(REWARDS, 0.5, terminated=False, last_value=None)
    np.testing.assert_allclose(without_critic.numpy(), G_TERMINATED)  # the tail after the cut is left out


def test_discounted_returns_against_the_sum_definition():
    """G_t = sum_{k>=t} gamma^(k-t) r_k + gamma^(T-t) b, written as a double loop."""
    rng = np.random.default_rng(3)
    for length in (1, 2, 7, 50):
        r = rng.normal(size=length)
        gamma, b = 0.93, 2.5
        expected = [sum(gamma ** (k - t) * r[k] for k in range(t, length)) + gamma ** (length - t) * b for t in range(length)]
        got = reinforce.discounted_returns(torch.tensor(r), gamma, b)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert reinforce.discounted_returns(torch.zeros(0), 0.9).shape == (0,)  # an empty episode has no returns
    np.testing.assert_allclose(reinforce.discounted_returns(torch.ones(3), 1.0).numpy(), [3, 2, 1])  # gamma = 1


def test_baseline_advantages_by_hand():
    values = torch.tensor([1.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    returns = torch.tensor(G_TERMINATED, dtype=torch.float64)
    # psi = G - V = 1.625 - 1, 1.25 - 1, 2.5 - 2, 1 - 0.5
    advantages = reinforce.policy_gradient_weights(returns, values, normalize=False)
    np.testing.assert_allclose(advantages.numpy(), [0.625, 0.25, 0.5, 0.5])
    # no baseline: the weights are the returns themselves
    np.testing.assert_allclose(reinforce.policy_gradient_weights(returns, None, normalize=False).numpy(), G_TERMINATED)
    # standardised: mean 0.46875, deviations 0.15625, -0.21875, 0.03125, 0.03125; sample std sqrt(0.07421875 / 3)
    std = math.sqrt((0.15625**2 + 0.21875**2 + 2 * 0.03125**2) / 3)
    normalized = reinforce.policy_gradient_weights(returns, values, normalize=True)
    np.testing.assert_allclose(normalized.numpy(), np.array([0.15625, -0.21875, 0.03125, 0.03125]) / (std + 1e-8))
    # one step: nothing to scale by, only centred
    assert reinforce.policy_gradient_weights(torch.tensor([5.0]), torch.tensor([2.0]), normalize=True).item() == 0.0


@pytest.mark.parametrize("module_name", ["reinforce", "actor_critic"])
def test_gaussian_log_prob_and_entropy_against_closed_forms(module_name):
    m = load_algo(module_name)
    a = torch.tensor([[0.5, -1.0], [3.0, 0.25]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.5], [-1.0, 0.25]], dtype=torch.float64)
    log_std = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    c = 0.5 * math.log(2 * math.pi)
    # row 0: dim 0 z = 0.5 (sigma 1), dim 1 z = -1.5 / 2 = -0.75 (sigma 2)
    row0 = (-0.5 * 0.25 - c) + (-0.5 * 0.75**2 - math.log(2.0) - c)
    # row 1: dim 0 z = 4 (sigma 1), dim 1 z = 0 (sigma 2)
    row1 = (-0.5 * 16 - c) + (-math.log(2.0) - c)
    np.testing.assert_allclose(m.gaussian_log_prob(a, mu, log_std).numpy(), [row0, row1], rtol=1e-12)
    # entropy of N(mu, sigma^2) per dimension: 0.5 * log(2 pi e sigma^2)
    expected_h = 0.5 * math.log(2 * math.pi * math.e) + 0.5 * math.log(2 * math.pi * math.e * 4.0)
    assert m.gaussian_entropy(log_std).item() == pytest.approx(expected_h, rel=1e-12)
    # and an independent implementation agrees
    normal = torch.distributions.Normal(mu, log_std.exp())
    np.testing.assert_allclose(m.gaussian_log_prob(a, mu, log_std).numpy(), normal.log_prob(a).sum(-1).numpy(), rtol=1e-12)
    assert m.gaussian_entropy(log_std).item() == pytest.approx(normal.entropy()[0].sum().item(), rel=1e-12)


@pytest.mark.parametrize("module_name", ["reinforce", "actor_critic"])
def test_categorical_log_prob_and_entropy_by_hand(module_name):
    m = load_algo(module_name)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0]], dtype=torch.float64)  # p = (1/4, 3/4), (2/3, 1/3)
    logp, ent = m.categorical_log_prob_entropy(logits, torch.tensor([1, 1]))
    np.testing.assert_allclose(logp.numpy(), [math.log(0.75), math.log(1 / 3)], rtol=1e-12)
    h = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))]
    np.testing.assert_allclose(ent.numpy(), h, rtol=1e-12)


def test_gaussian_policy_samples_are_unclipped_and_scored_as_drawn():
    """The sample sent to the environment is clipped, but pi is trained on the drawn (unclipped) one."""
    torch.manual_seed(0)
    policy = reinforce.Policy(3, 1, discrete=False, action_low=[-2.0], action_high=[2.0])
    with torch.no_grad():
        policy.net[-1].bias.fill_(5.0)  # mean about 5, far outside Pendulum's [-2, 2]
    x = torch.randn(200, 3)
    a = policy.sample(x)
    assert (a > 2.0).float().mean() > 0.9  # not clipped
    assert (policy.greedy_action(x) == 2.0).all()  # the deterministic action is the mean clipped to the bounds
    logp, ent = policy.log_prob_entropy(x, a)
    expected = torch.distributions.Normal(policy.net(x), policy.log_std.exp()).log_prob(a).sum(-1)
    torch.testing.assert_close(logp, expected)
    torch.testing.assert_close(ent, torch.full((200,), 0.5 * math.log(2 * math.pi * math.e)))


def test_policy_gradient_step_moves_probability_towards_positive_weights():
    """On a single state, psi > 0 for action 0 and < 0 for action 1: one REINFORCE step on
    -mean(psi * log pi) must raise pi(0) (d/dlogits of log pi(a) = onehot(a) - pi)."""
    torch.manual_seed(0)
    policy = reinforce.Policy(2, 2, discrete=True)
    x = torch.ones(4, 2)
    actions = torch.tensor([0, 0, 1, 1])
    weights = torch.tensor([1.0, 1.0, -1.0, -1.0])
    p0_before = torch.softmax(policy.net(x[:1]), -1)[0, 0].item()
    logp, _ = policy.log_prob_entropy(x, actions)
    (-(weights * logp).mean()).backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.1 * p.grad
    assert torch.softmax(policy.net(x[:1]), -1)[0, 0].item() > p0_before


COUNTING_ID = register_counting()


@pytest.mark.parametrize("baseline", [True, False])
def test_training_loop_ends_episodes_correctly(baseline, tmp_path, monkeypatch):
    """Episodes: 3 steps cut by the time limit, 2 steps terminated, 3 cut, 2 terminated, then the budget
    (11 steps) cuts the fifth after 1 step. With a critic, every cut episode bootstraps from V of its real
    last observation ([3, k] or, for the budget cut, [1, 4]), never of a reset observation; a terminated
    one does not; without a critic nothing bootstraps."""
    monkeypatch.chdir(tmp_path)
    calls, critic_inputs = [], []
    original_returns, original_forward = reinforce.returns_to_go, reinforce.ValueNetwork.forward

    def recording_returns(rewards, gamma, terminated, last_value):
        calls.append((rewards.tolist(), terminated, None if last_value is None else float(last_value)))
        return original_returns(rewards, gamma, terminated, last_value)

    def recording_forward(self, x):
        out = original_forward(self, x)
        if x.shape[0] == 1:  # the bootstrap calls (the two batches have 8 and 3 rows)
            critic_inputs.append((x[0].tolist(), float(out[0])))
        return out

    monkeypatch.setattr(reinforce, "returns_to_go", recording_returns)
    monkeypatch.setattr(reinforce.ValueNetwork, "forward", recording_forward)
    out = reinforce.main(reinforce.Args(env_id=COUNTING_ID, total_timesteps=11, episodes_per_update=3,
                                        baseline=baseline, eval_episodes=1))
    assert out["global_step"] == 11
    assert [(len(r), term) for r, term, _ in calls] == [(3, False), (2, True), (3, False), (2, True), (1, False)]
    if baseline:
        assert [inp for inp, _ in critic_inputs] == [[3.0, 0.0], [3.0, 2.0], [1.0, 4.0]]
        assert [v for _, _, v in calls if v is not None] == pytest.approx([v for _, v in critic_inputs])
        assert [v is None for _, term, v in calls] == [False, True, False, True, False]
    else:
        assert all(v is None for _, _, v in calls) and not critic_inputs


@pytest.mark.parametrize("kwargs,expected", [({"gamma": 1.5}, "--gamma"), ({"gamma": 0.0}, "--gamma"), ({"episodes_per_update": 0}, "--episodes-per-update"),
     ({"value_epochs": -1}, "--value-epochs"), ({"critic_learning_rate": 0.0}, "--critic-learning-rate"),
     ({"ent_coef": -0.1}, "--ent-coef"), ({"env_id": "CarRacing-v3"}, "flat Box observation"),
     ({"env_id": "Blackjack-v1"}, "Tuple")])
def test_bad_arguments_are_one_line_and_exit_2(kwargs, expected, capsys):
    """The cases the smoke harness does not run (it runs the unknown id, Blackjack's Tuple observation and
    non-positive budgets as subprocesses); checked in-process, where they cost milliseconds."""
    assert_one_line_exit_2(lambda: reinforce.check_args(reinforce.Args(**kwargs)), expected, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", [False, True])
def test_learns_cartpole(baseline, tmp_path, monkeypatch):
    """Defaults (4 episodes per update, Adam 1e-3, gamma 0.99), seed 1, 100k steps: the deterministic
    evaluation (10 episodes) reaches >= 400."""
    monkeypatch.chdir(tmp_path)
    out = reinforce.main(reinforce.Args(seed=1, total_timesteps=100_000, baseline=baseline))
    assert out["eval_return_mean"] >= 400, out["eval_returns"]


def test_resume_refuses_a_checkpoint_of_the_other_baseline_setting(tmp_path, capsys):
    """model_args do not say whether a critic was trained: resuming across --baseline is one line, exit 2."""
    small = ["--total-timesteps", "200", "--episodes-per-update", "2", "--eval-episodes", "1", "--save-model"]
    path = tmp_path / run_main(reinforce, small, tmp_path)["model_path"]
    assert_one_line_exit_2(lambda: run_main(reinforce, [*small, "--baseline", "--total-timesteps", "400",
                                                        "--resume", str(path)], tmp_path), "without --baseline", capsys)
