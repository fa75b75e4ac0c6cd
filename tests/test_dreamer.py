"""dreamer.py: symlog / symexp, the two-hot encoding, KL balancing with free bits against a hand computation, the
lambda-returns against the n-step definition, the percentile return scale against numpy, the straight-through
sample, the sequence replay's chunks, the is_first reset of the recurrent state, a non-finite loss stopping the
run before any optimizer step, and two learning regressions (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_algo

dreamer = load_algo("dreamer")

BINS = torch.linspace(-20.0, 20.0, 255, dtype=torch.float64)


def test_symlog_and_symexp_are_inverse():
    x = torch.tensor([-1e6, -12345.678, -3.5, -1.0, -1e-3, 0.0, 1e-7, 0.5, 1.0, 20.0, 1e4, 1e6], dtype=torch.float64)
    assert torch.allclose(dreamer.symexp(dreamer.symlog(x)), x, rtol=1e-6, atol=1e-9)
    y = torch.linspace(-15.0, 15.0, 61, dtype=torch.float64)
    assert torch.allclose(dreamer.symlog(dreamer.symexp(y)), y, rtol=0, atol=1e-6)
    # by hand: symlog(e - 1) = 1, symlog(-(e^3 - 1)) = -3, symlog(0) = 0
    assert dreamer.symlog(torch.tensor([math.e - 1, -(math.e**3 - 1), 0.0], dtype=torch.float64)).tolist() == \
        pytest.approx([1.0, -3.0, 0.0], abs=1e-12)


def test_twohot_by_hand():
    bins = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    got = dreamer.twohot(torch.tensor([1.25, 2.0, -5.0, 7.0, 0.0, 3.0], dtype=torch.float64), bins)
    expected = [[0, 0.75, 0.25, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_twohot_encode_then_decode_returns_the_value():
    step = (BINS[1] - BINS[0]).item()
    between = torch.tensor([-19.99, -7.3, -0.01, 0.0, 0.02, 3.3333, 12.5, 19.9], dtype=torch.float64)
    at = BINS[[0, 1, 100, 127, 128, 200, 253, 254]]
    half = BINS[:-1] + step / 2
    for y in (between, at, half):
        target = dreamer.twohot(y, BINS)
        assert torch.allclose(target.sum(-1), torch.ones_like(y), atol=1e-12)
        assert ((target > 0).sum(-1) <= 2).all() and (target >= 0).all()
        nonzero = [row.nonzero().flatten().tolist() for row in target]
        assert all(len(ix) == 1 or ix[1] - ix[0] == 1 for ix in nonzero)  # the two weights sit on neighbours
        assert torch.allclose((target * BINS).sum(-1), y, rtol=0, atol=1e-6)
    outside = torch.tensor([-100.0, -20.5, 20.5, 1e6], dtype=torch.float64)
    decoded = (dreamer.twohot(outside, BINS) * BINS).sum(-1)
    assert decoded.tolist() == [-20.0, -20.0, 20.0, 20.0]
    # in real units, through symlog: the head whose logits are log(target) predicts the value again
    x = torch.tensor([-250.0, -1.0, 0.0, 0.3, 1.0, 37.0, 500.0, 1e5], dtype=torch.float64)
    logits = dreamer.twohot(dreamer.symlog(x), BINS).clamp(min=1e-300).log()
    assert torch.allclose(dreamer.twohot_mean(logits, BINS), x, rtol=1e-6, atol=1e-6)


def hand_kl(p: list[list[float]], q: list[list[float]]) -> float:
    """KL[p || q] of independent categoricals, summed over them, in plain Python."""
    return sum(pi * math.log(pi / qi) for pk, qk in zip(p, q, strict=True) for pi, qi in zip(pk, qk, strict=True))


POST = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]
PRIOR = [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]


@pytest.mark.parametrize("free_nats", [0.05, 5.0])
def test_kl_balancing_and_free_bits_by_hand(free_nats):
    """Two steps, each of two categoricals over three classes: the KL, each term's value and where it sends its
    gradient (dynamics: to the prior only; representation: to the posterior only; none below the free nats)."""
    kl = hand_kl(POST, PRIOR)  # 0.4247... nats
    assert 0.05 < kl < 5.0
    post_logits = torch.tensor([POST, POST], dtype=torch.float64).log().requires_grad_(True)
    prior_logits = torch.tensor([PRIOR, PRIOR], dtype=torch.float64).log().requires_grad_(True)
    total, kl_value, dyn = dreamer.kl_loss(post_logits, prior_logits, free_nats, 0.5, 0.1)
    clipped = max(free_nats, kl)
    assert kl_value.item() == pytest.approx(kl, abs=1e-12)
    assert dyn.item() == pytest.approx(clipped, abs=1e-12)
    assert total.item() == pytest.approx(0.5 * clipped + 0.1 * clipped, abs=1e-12)

    for dyn_scale, rep_scale in ((1.0, 0.0), (0.0, 1.0)):
        post_logits.grad = prior_logits.grad = None
        dreamer.kl_loss(post_logits, prior_logits, free_nats, dyn_scale, rep_scale)[0].backward()
        # the gradient of KL[q || p] itself, by hand: d/d prior_logit_j = q_j - p_j (softmax); d/d post_logit_j =
        # q_j (log q_j - log p_j - KL_k), per categorical k; averaged over the 2 steps
        q, p = torch.tensor(POST, dtype=torch.float64), torch.tensor(PRIOR, dtype=torch.float64)
        kl_k = (q * (q / p).log()).sum(-1, keepdim=True)
        d_prior = (p - q) / 2
        d_post = q * ((q / p).log() - kl_k) / 2
        below = free_nats > kl
        want_prior = torch.zeros_like(p) if below or dyn_scale == 0 else d_prior
        want_post = torch.zeros_like(q) if below or rep_scale == 0 else d_post
        assert torch.allclose(prior_logits.grad[0], want_prior, atol=1e-12), (dyn_scale, rep_scale)
        assert torch.allclose(post_logits.grad[0], want_post, atol=1e-12), (dyn_scale, rep_scale)


def n_step_lambda_return(r, v, c, gamma, lam, t):
    """The forward view, by its definition: (1 - lam) sum_n lam^(n-1) G^(n) for n < H - t, plus lam^(H-t-1) G^(H-t),
    with G^(n) = sum_k (prod_{j<k} gamma c_{t+j}) r_{t+k} + (prod_{j<=n} gamma c_{t+j}) v_{t+n}."""
    horizon = len(r) - 1

    def g(n):
        total, disc = 0.0, 1.0
        for k in range(1, n + 1):
            total += disc * r[t + k]
            disc *= gamma * c[t + k]
        return total + disc * v[t + n]

    m = horizon - t
    return sum((1 - lam) * lam ** (n - 1) * g(n) for n in range(1, m)) + lam ** (m - 1) * g(m)


def test_lambda_returns_against_the_n_step_definition():
    rng = np.random.default_rng(0)
    horizon, n = 6, 3
    r = rng.normal(size=(horizon + 1, n))
    v = rng.normal(size=(horizon + 1, n))
    c = np.ones((horizon + 1, n))
    c[3, 0] = 0.0  # trajectory 0 ends at step 3; trajectory 1 has a soft continuation
    c[2:, 1] = 0.7
    got = dreamer.imagined_returns(*(torch.tensor(a) for a in (r, v, c)), 0.9, 0.8).numpy()
    assert got.shape == (horizon, n)
    for j in range(n):
        for t in range(horizon):
            assert got[t, j] == pytest.approx(n_step_lambda_return(r[:, j], v[:, j], c[:, j], 0.9, 0.8, t), abs=1e-10)
    # lam = 0: one-step targets; an ended trajectory's return after the end is only the reward
    one = dreamer.imagined_returns(*(torch.tensor(a) for a in (r, v, c)), 0.9, 0.0).numpy()
    assert np.allclose(one, r[1:] + 0.9 * c[1:] * v[1:])
    assert got[2, 0] == pytest.approx(r[3, 0])


def test_percentile_return_scale_against_numpy():
    rng = np.random.default_rng(1)
    returns = rng.standard_t(3, size=(15, 40)) * 30.0
    expected = np.percentile(returns, 95) - np.percentile(returns, 5)
    assert dreamer.percentile_range(torch.tensor(returns, dtype=torch.float32)).item() == pytest.approx(expected, rel=1e-5)
    scale = dreamer.update_return_scale(torch.tensor(4.0), torch.tensor(returns, dtype=torch.float32), 0.99)
    assert scale.item() == pytest.approx(0.99 * 4.0 + 0.01 * expected, rel=1e-5)


def test_straight_through_sample_is_one_hot_with_the_probabilities_gradient():
    torch.manual_seed(0)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], requires_grad=True)
    sample = dreamer.straight_through_sample(probs)
    onehot = sample.detach().round()
    assert torch.allclose(sample.detach(), onehot, atol=1e-6)  # onehot + p - sg(p): the one-hot up to rounding
    assert set(onehot.flatten().tolist()) <= {0.0, 1.0} and onehot.sum(-1).tolist() == [1.0, 1.0]
    w = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    (sample * w).sum().backward()
    assert torch.equal(probs.grad, w)  # d sample / d probs is the identity
    many = dreamer.straight_through_sample(probs.detach().expand(20_000, 2, 3)).mean(0)
    assert torch.allclose(many, probs.detach(), atol=0.015)


def test_unimix_puts_a_floor_under_every_class():
    logits = torch.tensor([[30.0, 0.0, -30.0, -30.0]])
    probs = dreamer.unimix_logits(logits, 0.01).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert probs[0, 2].item() == pytest.approx(0.01 / 4, rel=1e-4) and probs[0, 0].item() == pytest.approx(0.99 + 0.0025, abs=1e-5)


def test_replay_chunks_are_consecutive_and_stop_at_the_write_position():
    rb = dreamer.SequenceReplay(20, 2, [1], np.float32, 1, seed=0)  # 10 records per environment
    for i in range(13):  # environment 0 wraps around: it holds records 3..12
        rb.add(0, [float(i)], [0.0], 0.0, i == 0, False)
    for i in range(4):  # environment 1 holds 100..103
        rb.add(1, [100.0 + i], [0.0], 0.0, i == 0, False)
    assert rb.starts(4).tolist() == [7, 1]
    obs = rb.sample(4000, 4)[0][..., 0].numpy()
    assert (np.diff(obs, axis=1) == 1).all()  # consecutive records, never across the ring's seam
    firsts = obs[:, 0]
    assert set(firsts.tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 100.0}
    counts = np.array([(firsts == s).sum() for s in (3, 4, 5, 6, 7, 8, 9, 100)])
    assert np.all(np.abs(counts / 4000 - 1 / 8) < 0.03)  # uniform over the 8 stored starts


def test_is_first_resets_the_recurrent_state():
    torch.manual_seed(0)
    wm = dreamer.WorldModel([3], 2, 8, 2, 3, 8, 1, 11, False, 4, 0.01)
    obs = torch.randn(1, 6, 3)
    actions = torch.randn(1, 6, 2)
    is_first = torch.tensor([[1.0, 0, 0, 1.0, 0, 0]])
    torch.manual_seed(1)
    h_all = wm.observe(obs, actions, is_first)[0]
    torch.manual_seed(1)
    wm.observe(obs[:, :3], actions[:, :3], is_first[:, :3])  # the same random draws for the first three steps
    h_tail = wm.observe(obs[:, 3:], actions[:, 3:], is_first[:, 3:])[0]
    assert torch.allclose(h_all[:, 3:], h_tail, atol=1e-6)
    assert not torch.allclose(h_all[:, 4], wm.observe(obs[:, 4:], actions[:, 4:], torch.ones(1, 2))[0][:, 0])


def tiny(**kw) -> dreamer.Args:
    base = {"total_timesteps": 120, "learning_starts": 60, "batch_size": 4, "batch_length": 8, "train_ratio": 4.0,
            "deter_size": 16, "stoch_size": 4, "classes": 4, "units": 16, "horizon": 3, "num_bins": 21,
            "log_every": 40, "eval_episodes": 1, "save_model": True}
    return dreamer.Args(**{**base, **kw})


def test_a_non_finite_loss_stops_the_run_before_any_optimizer_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real = dreamer.twohot_loss
    calls = {"n": 0}

    def critic_nan_on_second_update(logits, y, bins):  # per update: reward, then the critic's two terms
        calls["n"] += 1
        return real(logits, y, bins) * (float("nan") if calls["n"] == 5 else 1.0)

    monkeypatch.setattr(dreamer, "twohot_loss", critic_nan_on_second_update)
    with pytest.raises(SystemExit) as exit_info:
        dreamer.main(tiny(save_model=False))
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and "non-finite critic loss at step 68;" in err, err
    (last,) = tmp_path.glob("runs/*/dreamer_last_finite.pt")
    ckpt = torch.load(last, weights_only=True)
    for key in ("model_optimizer", "actor_optimizer", "critic_optimizer"):  # one update made, the second not
        assert ckpt[key]["state"][0]["step"].item() == 1, key


@pytest.mark.slow
def test_beats_ppo_on_cartpole(tmp_path, monkeypatch):
    """Defaults, seed 1, 20k steps: deterministic evaluation mean >= 300 (see benchmark_results/dreamer.md)."""
    monkeypatch.chdir(tmp_path)
    out = dreamer.main(dreamer.Args(seed=1, total_timesteps=20_000))
    assert out["eval_return_mean"] >= 300, out["eval_returns"]


@pytest.mark.slow
def test_learns_pendulum(tmp_path, monkeypatch):
    """Seed 1, 10k steps on Pendulum-v1: deterministic evaluation mean >= -250."""
    monkeypatch.chdir(tmp_path)
    out = dreamer.main(dreamer.Args(seed=1, env_id="Pendulum-v1", total_timesteps=10_000))
    assert out["eval_return_mean"] >= -250, out["eval_returns"]
