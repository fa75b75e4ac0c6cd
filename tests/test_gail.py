"""gail.py: the discriminator loss and the GAIL and AIRL rewards against hand values, AIRL's D = exp(f) / (exp(f) + pi)
and its f at terminations (with and without absorbing states), the absorbing transitions (one per terminated
episode, none per truncated one), the absorbing state's value, the discriminator's input encoding, the normalised
score, and learning regressions on CartPole-v1 and Acrobot-v1 from this collection's expert datasets (slow)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BUILT_DATASETS, load_algo, needs_built_dataset, run_main

gail = load_algo("gail")

LN2, LN3, LN43 = math.log(2), math.log(3), math.log(4 / 3)


# --- the discriminator's loss and the policy's rewards --------------------------------------------------------


def test_discriminator_loss_by_hand():
    # expert logits 0 and ln 3: D = 1/2 and 3/4, -log D = ln 2 and ln 4/3;
    # policy logits 0 and -ln 3: 1 - D = 1/2 and 3/4, -log(1 - D) = ln 2 and ln 4/3
    loss = gail.discriminator_loss(torch.tensor([0.0, LN3]), torch.tensor([0.0, -LN3]))
    assert loss.item() == pytest.approx(LN2 + LN43, rel=1e-6)
    # a perfect discriminator costs nothing, a wrong one a lot
    assert gail.discriminator_loss(torch.tensor([30.0]), torch.tensor([-30.0])).item() == pytest.approx(0.0, abs=1e-12)
    assert gail.discriminator_loss(torch.tensor([-5.0]), torch.tensor([5.0])).item() == pytest.approx(
        2 * (5 + math.log1p(math.exp(-5))), rel=1e-6)


def test_gail_reward_by_hand_and_always_positive():
    # D = 3/4: -log(1/4) = ln 4; D = 1/2: ln 2; D = 1/4: -log(3/4) = ln 4/3
    got = gail.gail_reward(torch.tensor([LN3, 0.0, -LN3]))
    torch.testing.assert_close(got, torch.tensor([2 * LN2, LN2, LN43]))
    # the survival bonus: however sure D is that a pair is the policy's, the reward stays > 0
    assert (gail.gail_reward(torch.tensor([-20.0, -5.0, 0.0, 5.0])) > 0).all()


def test_airl_f_by_hand():
    g, h, h_next = torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2]), torch.tensor([0.4, 0.4])
    f = gail.airl_f(g, h, h_next, 0.9, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(f, torch.tensor([0.5 + 0.9 * 0.4 - 0.2, 0.5 - 0.2]))


def airl_discriminator(seed: int = 0, gamma: float = 0.9):
    torch.manual_seed(seed)
    return gail.Discriminator(obs_dim=3, act_dim=2, continuous=False, hidden_size=8, airl=True, gamma=gamma)


def test_airl_discriminator_and_reward_against_their_definitions():
    """D = exp(f) / (exp(f) + pi(a|s)) and the reward log D - log(1 - D) = f - log pi, from D's own g and h."""
    disc = airl_discriminator()
    torch.manual_seed(1)
    s, s_next = torch.randn(5, 4), torch.randn(5, 4)
    a = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1]), 2).float()
    not_done = torch.ones(5)
    pi = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.99])
    with torch.no_grad():
        f = disc.g(s).squeeze(-1) + 0.9 * disc.h(s_next).squeeze(-1) - disc.h(s).squeeze(-1)
        logits = disc.logits(s, a, s_next, not_done, pi.log())
        reward = disc.reward(logits)
    d = torch.sigmoid(logits)
    torch.testing.assert_close(d, f.exp() / (f.exp() + pi))
    torch.testing.assert_close(reward, d.log() - (1 - d).log(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reward, f - pi.log())
    # by hand: f = 1, pi = 1/2: D = e / (e + 1/2), the reward 1 + ln 2
    assert gail.airl_reward(torch.tensor(1.0) - math.log(0.5)).item() == pytest.approx(1 + LN2)


def test_gail_discriminator_ignores_log_pi():
    torch.manual_seed(0)
    disc = gail.Discriminator(obs_dim=3, act_dim=2, continuous=False, hidden_size=8, airl=False, gamma=0.9)
    s, a = torch.randn(4, 4), torch.eye(2)[[0, 1, 1, 0]]
    with torch.no_grad():
        one = disc.logits(s, a, s, torch.ones(4), torch.zeros(4))
        two = disc.logits(s, a, s, torch.ones(4), torch.full((4,), -3.0))
        torch.testing.assert_close(one, two)
        torch.testing.assert_close(one, disc.net(torch.cat([s, a], -1)).squeeze(-1))


# --- absorbing states --------------------------------------------------------------------------------------------


def two_episodes():
    """Episode A: 3 steps ending in a termination; episode B: 2 steps cut by a time limit (truncated). Encoded states
    (the last column is the absorbing indicator, 0)."""
    states = torch.tensor([[1.0, 0], [2, 0], [3, 0], [10, 0], [11, 0]])
    next_states = torch.tensor([[2.0, 0], [3, 0], [4, 0], [11, 0], [12, 0]])
    actions = torch.eye(2)[[0, 1, 0, 1, 1]]
    terminations = torch.tensor([0.0, 0, 1, 0, 0])  # B's last step is truncated: not a termination
    return states, actions, next_states, terminations


def test_a_terminated_episode_gets_one_absorbing_transition_a_truncated_one_none():
    states, actions, next_states, terminations = two_episodes()
    s, a, n, not_done, is_abs = gail.with_absorbing(states, actions, next_states, terminations, absorbing=True)
    s_a = torch.tensor([0.0, 1.0])
    assert len(s) == 6 and is_abs.tolist() == [False] * 5 + [True]
    torch.testing.assert_close(n[2], s_a)  # A's terminal step now leads to the absorbing state
    torch.testing.assert_close(n[:2], next_states[:2])
    torch.testing.assert_close(n[3:5], next_states[3:5])  # B's truncated step keeps its last observation
    torch.testing.assert_close(s[5], s_a)  # the one appended transition: (s_a, 0, s_a)
    torch.testing.assert_close(n[5], s_a)
    torch.testing.assert_close(a[5], torch.zeros(2))
    torch.testing.assert_close(s[:5], states)
    torch.testing.assert_close(a[:5], actions)
    torch.testing.assert_close(not_done, torch.ones(6))  # nothing ends: the absorbing state loops
    # two terminations, two absorbing transitions; none at all without terminations
    assert len(gail.with_absorbing(states, actions, next_states, torch.tensor([1.0, 0, 1, 0, 0]), True)[0]) == 7
    assert len(gail.with_absorbing(states, actions, next_states, torch.zeros(5), True)[0]) == 5


def test_without_absorbing_states_a_termination_just_ends():
    states, actions, next_states, terminations = two_episodes()
    s, a, n, not_done, is_abs = gail.with_absorbing(states, actions, next_states, terminations, absorbing=False)
    assert len(s) == 5 and not is_abs.any()
    torch.testing.assert_close(n, next_states)
    torch.testing.assert_close(not_done, torch.tensor([1.0, 1, 0, 1, 1]))


def test_airl_f_at_terminations():
    """f(s, a, s') = g(s) + gamma h(s') - h(s): after a termination h(s_a), learned, with absorbing states, and 0
    without; a truncated step keeps gamma h(s') either way; the absorbing transition's f is g(s_a) + (gamma - 1) h(s_a)."""
    gamma = 0.9
    disc = airl_discriminator(gamma=gamma)
    states, actions, next_states, terminations = two_episodes()
    states, next_states = torch.cat([states, torch.zeros(5, 2)], 1), torch.cat([next_states, torch.zeros(5, 2)], 1)
    states, next_states = states[:, [0, 2, 3, 1]], next_states[:, [0, 2, 3, 1]]  # 3 features, then the indicator

    def g(x):
        return disc.g(x.unsqueeze(0)).item()

    def h(x):
        return disc.h(x.unsqueeze(0)).item()

    s_a = torch.tensor([0.0, 0, 0, 1])
    with torch.no_grad():
        f = disc.score(*gail.with_absorbing(states, actions, next_states, terminations, True)[:4])
        assert f[2].item() == pytest.approx(g(states[2]) + gamma * h(s_a) - h(states[2]), abs=1e-6)
        assert f[4].item() == pytest.approx(g(states[4]) + gamma * h(next_states[4]) - h(states[4]), abs=1e-6)
        assert f[5].item() == pytest.approx(g(s_a) + (gamma - 1) * h(s_a), abs=1e-6)
        f = disc.score(*gail.with_absorbing(states, actions, next_states, terminations, False)[:4])
        assert f[2].item() == pytest.approx(g(states[2]) - h(states[2]), abs=1e-6)
        assert f[4].item() == pytest.approx(g(states[4]) + gamma * h(next_states[4]) - h(states[4]), abs=1e-6)


def test_absorbing_value_is_the_discounted_sum_of_its_loop():
    for r, gamma in ((0.7, 0.99), (-2.0, 0.9), (0.0, 0.5)):
        assert gail.absorbing_value(r, gamma) == pytest.approx(sum(r * gamma**k for k in range(5000)), abs=1e-9)


# --- inputs and scores -------------------------------------------------------------------------------------------


def test_discriminator_inputs():
    disc = gail.Discriminator(obs_dim=2, act_dim=2, continuous=True, hidden_size=4, airl=False, gamma=0.9,
                              action_low=[-2.0, 0.0], action_high=[2.0, 1.0])
    disc.obs_mean.copy_(torch.tensor([1.0, -1.0]))
    disc.obs_std.copy_(torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(disc.encode_states(torch.tensor([[3.0, -1.5]])), torch.tensor([[1.0, -1.0, 0.0]]))
    # clipped to the bounds, then scaled to [-1, 1]
    torch.testing.assert_close(disc.encode_actions(torch.tensor([[3.0, 0.5], [-1.0, 0.0]])),
                               torch.tensor([[1.0, 0.0], [-0.5, -1.0]]))
    discrete = gail.Discriminator(obs_dim=2, act_dim=3, continuous=False, hidden_size=4, airl=False, gamma=0.9)
    torch.testing.assert_close(discrete.encode_actions(torch.tensor([2, 0])), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))


def test_discriminator_inputs_clipped_and_tanh():
    """--disc-obs-norm policy: the standardised states are clipped to [-clip, clip] (clip 0: not clipped); the
    absorbing indicator stays 0. --disc-activation tanh: the same layers with tanh in place of every ReLU."""
    disc = gail.Discriminator(obs_dim=2, act_dim=1, continuous=False, hidden_size=4, airl=False, gamma=0.9, clip=2.0)
    disc.obs_mean.copy_(torch.tensor([1.0, -1.0]))
    disc.obs_std.copy_(torch.tensor([0.5, 0.5]))
    # (4 - 1) / 0.5 = 6 -> 2; (-1.5 + 1) / 0.5 = -1 stays; (-3 + 1) / 0.5 = -4 -> -2
    torch.testing.assert_close(disc.encode_states(torch.tensor([[4.0, -1.5], [1.0, -3.0]])),
                               torch.tensor([[2.0, -1.0, 0.0], [0.0, -2.0, 0.0]]))
    torch.manual_seed(0)
    relu = gail.Discriminator(obs_dim=2, act_dim=1, continuous=False, hidden_size=4, airl=True, gamma=0.9)
    torch.manual_seed(0)
    tanh = gail.Discriminator(obs_dim=2, act_dim=1, continuous=False, hidden_size=4, airl=True, gamma=0.9,
                              activation="tanh")
    kinds = [type(m) for m in tanh.g] + [type(m) for m in tanh.h]
    assert kinds.count(torch.nn.Tanh) == 4 and torch.nn.ReLU not in kinds
    assert [torch.nn.ReLU if k is torch.nn.Tanh else k for k in kinds] == [type(m) for m in [*relu.g, *relu.h]]
    x = torch.tensor([[0.3, -0.2, 0.0]])
    with torch.no_grad():  # same weights; g(x) = W3 tanh(W2 tanh(W1 x + b1) + b2) + b3, written out
        lin = [m for m in relu.g if isinstance(m, torch.nn.Linear)]
        by_hand = lin[2](torch.tanh(lin[1](torch.tanh(lin[0](x)))))
        torch.testing.assert_close(tanh.g(x), by_hand)


class LinearScore:
    """A stand-in discriminator with score = 0.6 s_0 + 5 s_indicator + 0.8 a_0 + 0 s'_0 - 2 s'_indicator."""

    def score(self, s, a, s_next, not_done):
        return 0.6 * s[:, 0] + 5.0 * s[:, -1] + 0.8 * a[:, 0] - 2.0 * s_next[:, -1]


def test_gradient_penalty_with_and_without_the_absorbing_indicator():
    # the gradient is constant: over (s~, a~, s~') it is (0.6, 5 | 0.8 | 0, -2), norm sqrt(0.36 + 25 + 0.64 + 4);
    # without the indicators' coordinates (0.6 | 0.8 | 0), norm 1: no penalty
    torch.manual_seed(0)
    expert = (torch.randn(6, 2), torch.randn(6, 1), torch.randn(6, 2), torch.ones(6))
    policy = (torch.randn(6, 2), torch.randn(6, 1), torch.randn(6, 2), torch.ones(6))
    full = gail.gradient_penalty(LinearScore(), expert, policy)
    assert full.item() == pytest.approx((math.sqrt(30.0) - 1.0) ** 2, rel=1e-6)
    assert gail.gradient_penalty(LinearScore(), expert, policy, indicator=False).item() == pytest.approx(0.0, abs=1e-10)


def test_normalized_return_by_hand():
    assert gail.normalized_return(-100.0, -500.0, -80.0) == pytest.approx(400 / 420)
    assert gail.normalized_return(22.0, 22.0, 500.0) == 0.0
    assert gail.normalized_return(500.0, 22.0, 500.0) == 1.0


# --- the rollout: learned rewards and the absorbing bootstrap (a spy on compute_gae) ------------------------------


TINY = ["--expert-dataset-id", "tiny/cartpole-random-v0", "--num-expert-episodes", "3", "--total-timesteps", "256",
        "--num-envs", "2", "--num-steps", "64", "--update-epochs", "1", "--random-episodes", "1", "--eval-episodes", "1",
        "--no-norm-reward"]


def spy_on_gae(monkeypatch) -> list[tuple]:
    calls = []
    real = gail.compute_gae

    def spy(rewards, values, next_values, terminations, truncations, gamma, gae_lambda):
        calls.append((rewards.clone(), next_values.clone(), terminations.clone(), truncations.clone()))
        return real(rewards, values, next_values, terminations, truncations, gamma, gae_lambda)

    monkeypatch.setattr(gail, "compute_gae", spy)
    return calls


def test_the_policy_learns_from_the_discriminator_and_terminations_bootstrap_from_the_absorbing_state(
        offline_datasets, monkeypatch, tmp_path):
    """CartPole-v1 pays 1 per step: GAIL's rewards are softplus(l), positive and never all 1. With absorbing states
    no step is passed as terminated: every episode end (a random policy's end is a termination here) is cut from GAE
    and bootstraps from the one absorbing value of its rollout; without them the terminations are passed as such."""
    assert offline_datasets is not None, "tests/conftest.py builds the tiny datasets when gail.py's tests run"
    calls = spy_on_gae(monkeypatch)
    run_main(gail, TINY, tmp_path / "absorbing")
    assert len(calls) == 2
    for rewards, next_values, terminations, ends in calls:
        assert (rewards > 0).all() and not torch.isclose(rewards, torch.ones_like(rewards)).all()
        assert not terminations.any() and ends.sum() >= 2
        assert len(set(next_values[ends > 0].tolist())) == 1  # V(s_a) = r_a / (1 - gamma), the same for every end
    calls.clear()
    run_main(gail, [*TINY, "--no-absorbing"], tmp_path / "plain")
    assert all(terminations.sum() >= 2 for _, _, terminations, _ in calls)


def test_policy_standardisation_uses_the_statistics_of_the_policys_states(offline_datasets, tmp_path):
    """--disc-obs-norm policy: after training, the discriminator's buffers hold the running mean and std of every
    state of the rollouts (256 here), the same statistics the checkpoint saves, and its inputs are clipped at
    --clip-obs."""
    assert offline_datasets is not None, "tests/conftest.py builds the tiny datasets when gail.py's tests run"
    out = run_main(gail, [*TINY, "--disc-obs-norm", "policy", "--clip-obs", "4", "--save-model"], tmp_path)
    ckpt = torch.load(tmp_path / out["model_path"], weights_only=True)
    stats = ckpt["normalisation"]["disc_obs"]
    assert stats["count"].item() == pytest.approx(256 + 1e-4)
    torch.testing.assert_close(ckpt["discriminator"]["obs_mean"], stats["mean"].float())
    torch.testing.assert_close(ckpt["discriminator"]["obs_std"], (stats["var"] + 1e-8).sqrt().float())
    assert ckpt["disc_args"]["clip"] == 4.0 and ckpt["disc_args"]["activation"] == "relu"


# --- learning regressions (slow): this collection's expert datasets, tools/make_dataset.py --------------------------


@pytest.mark.slow
@needs_built_dataset("onefile/cartpole/expert-v0")
def test_gail_imitates_the_cartpole_expert(tmp_path):
    """10 expert episodes, 200k steps, seed 1 (benchmark_results/gail.md: 500 for every seed measured)."""
    out = run_main(gail, ["--seed", "1"], tmp_path, env={"MINARI_DATASETS_PATH": BUILT_DATASETS})
    assert out["eval_return_mean"] >= 475, out["eval_returns"]


@pytest.mark.slow
@needs_built_dataset("onefile/acrobot/expert-v0")
def test_gail_imitates_the_acrobot_expert(tmp_path):
    """Acrobot-v1's episodes end on success: with absorbing states GAIL finishes the task like the expert."""
    out = run_main(gail, ["--env-id", "Acrobot-v1", "--expert-dataset-id", "onefile/acrobot/expert-v0", "--gamma",
                          "0.99", "--gae-lambda", "0.94", "--seed", "1"], tmp_path,
                   env={"MINARI_DATASETS_PATH": BUILT_DATASETS})
    assert out["normalized_return"] >= 0.9, (out["eval_returns"], out["expert_return"], out["random_return"])
