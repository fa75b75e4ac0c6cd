"""preference_reward.py: the Bradley-Terry probabilities and loss against closed forms, the ensemble's
disagreement and the queries it chooses by hand, the synthetic labeller's answers, noise rate and Boltzmann
rate, the label schedule, the segments cut from a rollout, the learned reward's normalisation, the held-out
agreement, a reward model that recovers a known reward from its own labels, the policy's rewards (learned, never
true), and (slow) a learning regression on HalfCheetah-v5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_algo, run_main

pr = load_algo("preference_reward")


# --- Bradley-Terry -----------------------------------------------------------------------------------


def test_preference_probability_closed_form():
    # R1 = 2, R2 = 1: e^2 / (e^2 + e^1) = 1 / (1 + e^-1)
    p = pr.preference_probability(torch.tensor([2.0, 0.0, -3.0]), torch.tensor([1.0, 0.0, 4.0]))
    expected = [math.exp(2) / (math.exp(2) + math.exp(1)), 0.5, math.exp(-3) / (math.exp(-3) + math.exp(4))]
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)
    # shifting every reward of both segments by the same constant changes nothing (only differences count)
    r1, r2 = torch.tensor([0.3, 1.2]), torch.tensor([-0.7, 0.4])
    np.testing.assert_allclose(pr.preference_probability(r1 + 5.0, r2 + 5.0).numpy(),
                               pr.preference_probability(r1, r2).numpy(), rtol=1e-6)


def test_bradley_terry_loss_closed_form():
    r1 = torch.tensor([2.0, 0.5, -1.0, 3.0], dtype=torch.float64)
    r2 = torch.tensor([1.0, 0.5, 1.0, -2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.5, 0.0, 0.5], dtype=torch.float64)
    expected = []
    for a, b, label in zip(r1.tolist(), r2.tolist(), y.tolist(), strict=True):
        p = math.exp(a) / (math.exp(a) + math.exp(b))
        expected.append(-(label * math.log(p) + (1 - label) * math.log(1 - p)))
    assert pr.bradley_terry_loss(r1, r2, y).item() == pytest.approx(sum(expected) / 4, rel=1e-12)
    # a single pair by hand: R1 - R2 = 1, y = 1: log(1 + e^-1)
    assert pr.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])).item() == \
        pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # far apart and labelled the wrong way: the loss is the difference (no overflow, no inf)
    assert pr.bradley_terry_loss(torch.tensor([200.0]), torch.tensor([0.0]), torch.tensor([0.0])).item() == \
        pytest.approx(200.0, rel=1e-6)


def test_bradley_terry_gradient_is_p_minus_y():
    """d L / d R1 = P - y for one pair: the gradient the reward models follow."""
    r1 = torch.tensor([0.8], requires_grad=True)
    r2 = torch.tensor([-0.4])
    pr.bradley_terry_loss(r1, r2, torch.tensor([1.0])).backward()
    p = 1 / (1 + math.exp(-(0.8 + 0.4)))
    assert r1.grad.item() == pytest.approx(p - 1.0, rel=1e-6)


# --- disagreement and queries -----------------------------------------------------------------------------


def test_disagreement_by_hand():
    probs = torch.tensor([[0.2, 0.5, 0.9], [0.4, 0.5, 0.1], [0.6, 0.5, 0.5]])
    # pair 0: mean 0.4, deviations -0.2, 0, 0.2: (0.04 + 0 + 0.04) / 3; pair 1: all agree; pair 2: (0.16 + 0.16 + 0) / 3
    np.testing.assert_allclose(pr.disagreement(probs).numpy(), [0.08 / 3, 0.0, 0.32 / 3], rtol=1e-6, atol=1e-8)


class IndexModel:
    """A stand-in ensemble: the segment at pool index i has return k * i under member k, so members disagree
    more on pairs whose indices are further apart."""

    def segment_returns(self, obs, actions):
        index = obs[..., 0, 0]
        return torch.stack([k * index for k in range(3)])


def test_disagreement_queries_are_the_most_disputed_candidates():
    count, n, factor = 12, 4, 5
    obs = torch.arange(count, dtype=torch.float32).view(count, 1, 1).expand(count, 2, 1).contiguous()
    actions = torch.zeros(count, 2, 1)
    rng = np.random.default_rng(3)
    chosen = pr.choose_queries(IndexModel(), obs, actions, count, n, factor, "disagreement", rng)
    # the same candidates, drawn again from the same generator state
    rng = np.random.default_rng(3)
    candidates = pr.choose_queries(IndexModel(), obs, actions, count, n * factor, 1, "uniform", rng)
    assert chosen.shape == (n, 2) and (chosen[:, 0] != chosen[:, 1]).all() and (candidates[:, 0] != candidates[:, 1]).all()
    with torch.no_grad():
        r = IndexModel().segment_returns(obs[candidates], actions[candidates])
        score = pr.disagreement(torch.sigmoid(r[..., 0] - r[..., 1])).numpy()
    by_hand = np.sort(score)[::-1][:n]
    with torch.no_grad():
        r = IndexModel().segment_returns(obs[chosen], actions[chosen])
        got = pr.disagreement(torch.sigmoid(r[..., 0] - r[..., 1])).numpy()
    np.testing.assert_allclose(np.sort(got)[::-1], by_hand, rtol=1e-6)
    # uniform: the first candidates drawn
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(pr.choose_queries(IndexModel(), obs, actions, count, n, factor, "uniform", rng),
                                  candidates[:n])


# --- the synthetic labeller ---------------------------------------------------------------------------------


def test_labeller_prefers_the_larger_true_return():
    y = pr.synthetic_labels(np.array([3.0, 1.0, 2.0, -5.0]), np.array([1.0, 3.0, 2.0, -6.0]), 0.0, 0.0,
                            np.random.default_rng(0))
    np.testing.assert_array_equal(y, [1.0, 0.0, 0.5, 1.0])


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_label_noise_rate(noise):
    """The fraction of flipped answers is eps within 4 standard errors (n = 40,000), and ties stay 1/2."""
    n = 40_000
    rng = np.random.default_rng(7)
    g1, g2 = rng.normal(size=n), rng.normal(size=n)
    g2[:100] = g1[:100]
    y = pr.synthetic_labels(g1, g2, noise, 0.0, np.random.default_rng(11))
    assert (y[:100] == 0.5).all()
    flipped = (y[100:] != (g1[100:] > g2[100:])).mean()
    assert abs(flipped - noise) <= 4 * math.sqrt(noise * (1 - noise) / (n - 100)) + 1e-12


def test_boltzmann_labeller_rate():
    """With G1 - G2 = T log 3, the labeller prefers segment 1 with probability 3/4 (and with noise eps,
    3/4 (1 - eps) + 1/4 eps)."""
    n, temperature = 40_000, 2.5
    g2 = np.zeros(n)
    g1 = np.full(n, temperature * math.log(3))
    for noise, p in ((0.0, 0.75), (0.2, 0.75 * 0.8 + 0.25 * 0.2)):
        y = pr.synthetic_labels(g1, g2, noise, temperature, np.random.default_rng(5))
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert abs(y.mean() - p) <= 4 * math.sqrt(p * (1 - p) / n)


# --- schedule, segments, normalisation ------------------------------------------------------------------------


def test_label_schedule():
    total, f0, until = 1000, 0.25, 0.5
    assert pr.label_schedule(0.0, total, f0, until) == 250
    assert pr.label_schedule(0.25, total, f0, until) == round(1000 * (0.25 + 0.75 * 0.75))  # p / until = 1/2
    assert pr.label_schedule(0.5, total, f0, until) == 1000
    assert pr.label_schedule(0.9, total, f0, until) == 1000
    due = [pr.label_schedule(p, total, f0, until) for p in np.linspace(0, 1, 101)]
    assert all(b >= a for a, b in zip(due, due[1:], strict=False))  # never fewer
    gains = np.diff(due[:51])
    assert gains[:10].sum() > gains[-10:].sum()  # most labels early: the rate falls
    assert pr.label_schedule(0.0, 7, 0.0, 1.0) == 0 and pr.label_schedule(1.0, 7, 0.0, 1.0) == 7


def test_cut_segments_by_hand():
    dones = np.zeros((10, 2), dtype=bool)
    dones[4, 0] = True  # env 0: an episode ends at step 4
    dones[2, 1] = True  # env 1: at step 2
    # length 3: windows [0, 3), [3, 6), [6, 9); env 0's [3, 6) holds an end at 4 (not its last step): out.
    # env 1's [0, 3) ends an episode on its last step (2): kept
    assert pr.cut_segments(dones, 3) == [(0, 0), (6, 0), (0, 1), (3, 1), (6, 1)]
    assert pr.cut_segments(dones, 10) == []
    assert pr.cut_segments(np.zeros((4, 1), dtype=bool), 5) == []


def test_normalize_reward_and_policy_reward():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    out = pr.normalize_reward(r, r.mean(), r.std(unbiased=False))
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6) and out.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(out.numpy(), ((r - 3.0) / math.sqrt(3.5)).numpy(), rtol=1e-6)
    # the ensemble: the members' mean, normalised with its buffers
    torch.manual_seed(0)
    model = pr.RewardEnsemble(obs_dim=3, action_dim=2, hidden_size=8, ensemble_size=3)
    obs, act = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 2)
    raw = model(obs, act).mean(0)
    model.reward_mean.fill_(raw.mean())
    model.reward_std.fill_(raw.std(unbiased=False))
    got = model.policy_reward(obs, act)
    assert got.mean().item() == pytest.approx(0.0, abs=1e-5) and got.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    # segment returns are the sums of the per-step rewards, member by member
    seg_obs, seg_act = obs.view(5, 10, 3), act.view(5, 10, 2)
    np.testing.assert_allclose(model.segment_returns(seg_obs, seg_act).detach().numpy(),
                               model(seg_obs, seg_act).sum(-1).detach().numpy(), rtol=1e-5)
    for k in range(3):
        np.testing.assert_allclose(model.member_segment_returns(k, seg_obs, seg_act).detach().numpy(),
                                   model.segment_returns(seg_obs, seg_act)[k].detach().numpy(), rtol=1e-6)


def test_agreement_by_hand():
    """A model whose return is the segment's first observation: it agrees with true returns G on the pairs where
    the two orders agree; ties in G are left out."""
    obs = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1)
    actions = torch.zeros(4, 1, 1)
    true = torch.tensor([0.0, 5.0, 1.0, 1.0], dtype=torch.float64)  # orders 0 < 2 = 3 < 1 (the model: 0 < 1 < 2 < 3)

    class FirstObs:
        def segment_returns(self, o, a):
            return o[..., 0, 0].unsqueeze(0)

    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [2, 1]])
    # [0,1]: both say 1 better: agree; [1,2]: model 2, true 1: disagree; [2,3]: tie in G: out; [3,0]: agree; [2,1]: disagree
    assert pr.agreement(FirstObs(), obs, actions, true, pairs) == pytest.approx(2 / 4)
    assert math.isnan(pr.agreement(FirstObs(), obs, actions, true, np.array([[2, 3]])))


def test_reward_model_recovers_a_known_reward_from_its_labels():
    """The ensemble trained by the Bradley-Terry loss on 300 labelled pairs of random segments of a linear reward
    r(s, a) = w . s orders held-out pairs as the true reward does (agreement >= 0.9; chance is 0.5)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    obs_dim, length, n = 4, 10, 300
    w = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    seg_obs = torch.randn(2 * n + 200, length, obs_dim, dtype=torch.float64)
    seg_act = torch.zeros(2 * n + 200, length, 1)
    true = (seg_obs @ w).sum(-1)
    first, second = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
    labels = torch.as_tensor(pr.synthetic_labels(true[first].numpy(), true[second].numpy(), 0.0, 0.0, rng))
    model = pr.RewardEnsemble(obs_dim, 1, hidden_size=16, ensemble_size=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    test = np.arange(2 * n, 2 * n + 200)
    before = pr.agreement(model, seg_obs, seg_act, true, np.stack([test[:100], test[100:]], 1))
    for _ in range(150):
        idx = torch.randint(n, (32,))
        loss = sum(pr.bradley_terry_loss(model.member_segment_returns(k, seg_obs[first][idx], seg_act[first][idx]),
                                         model.member_segment_returns(k, seg_obs[second][idx], seg_act[second][idx]),
                                         labels[idx]) for k in range(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = pr.agreement(model, seg_obs, seg_act, true, np.stack([test[:100], test[100:]], 1))
    assert after >= 0.9 and after > before, (before, after)


# --- the policy's reward ---------------------------------------------------------------------------------------


def test_policy_trains_on_the_learned_reward_only(tmp_path, monkeypatch):
    """compute_gae receives the learned reward, never the true one; with --true-reward the true one (no reward
    scaling here, so the values are the rewards themselves: Pendulum's true reward is never positive, the learned
    one, normalised on the pool, takes both signs)."""
    seen = []
    real = pr.compute_gae

    def spy(rewards, *rest):
        seen.append(rewards.clone())
        return real(rewards, *rest)

    monkeypatch.setattr(pr, "compute_gae", spy)
    argv = ["--env-id", "Pendulum-v1", "--total-timesteps", "200", "--num-steps", "100", "--num-minibatches", "2",
            "--update-epochs", "1", "--segment-length", "10", "--total-labels", "10", "--reward-updates", "3",
            "--no-norm-reward", "--eval-episodes", "1"]
    run_main(pr, argv, tmp_path / "learned")
    learned = torch.cat(seen)
    seen.clear()
    run_main(pr, [*argv, "--true-reward"], tmp_path / "true")
    true = torch.cat(seen)
    assert (true <= 0).all() and true.min() < -0.1  # Pendulum's reward: -(theta^2 + 0.1 theta'^2 + 0.001 u^2)
    # the learned reward is normalised on the pool: it takes both signs, and it is not the true reward
    assert (learned > 0).any() and (learned < 0).any()
    assert not torch.allclose(learned, true)


# --- learning regression (slow) ---------------------------------------------------------------------------------


# The slow test's bar, measured once at this budget (seed 1: -113.7, held-out agreement 0.929; the page): well
# above a random policy's -279.4 (30 episodes, per-episode std 67.9). The ratio to the true-reward learner is the
# benchmark's (3 seeds, 300k steps): at 100k steps that learner's deterministic evaluation (seed 1: -254.0) is still
# too close to random for a ratio to mean anything.
THRESHOLD = -200.0


@pytest.mark.slow
def test_learned_reward_learns_halfcheetah(tmp_path):
    """HalfCheetah-v5, seed 1, 100k steps, 300 labels: the policy trained on the learned reward only reaches a final
    deterministic evaluation (true reward) of at least THRESHOLD, its held-out agreement is at least 0.85, and it
    used exactly the 300 labels."""
    argv = ["--env-id", "HalfCheetah-v5", "--total-timesteps", "100000", "--seed", "1", "--eval-episodes", "5",
            "--total-labels", "300"]
    learned = run_main(pr, argv, tmp_path)
    print(f"learned {learned['eval_return_mean']:.1f} (agreement {learned['reward_agreement']:.3f}, "
          f"{learned['train_time']:.0f} s)")
    assert learned["labels"] == 300 and learned["reward_agreement"] >= 0.85, learned
    assert learned["eval_return_mean"] >= THRESHOLD, learned["eval_return_mean"]
