"""cql.py: the exact log-sum-exp penalty of the Discrete form against a brute-force loop, the importance-sampled estimate
of the Box form against a hand computation and, with many samples, against the true log-integral of a known 1-D Q,
the actor's sampled log-densities (the importance weights) against sac.py's formula, the Lagrange update's sign, the
SAC target with terminations and truncations, the statistics and networks saved with the model (Box and Discrete);
slow: a fixed seed on this collection's Hopper-v5 medium data.

The tiny datasets (conftest.OFFLINE_DATASETS) live in a temporary MINARI_DATASETS_PATH set for the test process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BUILT_DATASETS, load_algo, needs_built_dataset, run_main, run_offline_with_statistics

cql = load_algo("cql")


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_discrete_penalty_against_brute_force(temperature: float):
    """gap = mean_s( T * log sum_b exp(Q(s, b) / T) - Q(s, a_s) ), by a loop over states and actions in float64."""
    q = torch.tensor([[1.0, 2.0, -0.5, 0.0], [10.0, 10.0, 9.0, -3.0], [-2.0, 0.5, 0.25, 3.0]])
    actions = torch.tensor([1, 3, 0])
    q_data = q.gather(1, actions[:, None]).squeeze(1)
    got = cql.conservative_gap(cql.exact_logsumexp(q, temperature), q_data)
    terms = []
    for s in range(3):
        soft_max = temperature * math.log(sum(math.exp(float(q[s, b]) / temperature) for b in range(4)))
        terms.append(soft_max - float(q[s, actions[s]]))
    assert got.item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    assert all(t > 0 for t in terms)  # the soft maximum lies above every Q, the data's included
    # the critic's loss: TD part and the weighted penalty, w * (gap - g)
    y = torch.tensor([0.5, 9.0, 1.0])
    td, penalty = cql.cql_critic_loss(q_data, y, got, weight=10.0, target_gap=0.0)
    assert td.item() == pytest.approx(((2.0 - 0.5) ** 2 + (-3.0 - 9.0) ** 2 + (-2.0 - 1.0) ** 2) / 3)
    assert penalty.item() == pytest.approx(10.0 * sum(terms) / 3, rel=1e-6)


def test_discrete_penalty_gradient_lowers_unseen_and_raises_data_actions():
    """d gap / d Q(s, b) = softmax_b / B - 1(b = a_s) / B: every action is pushed down by its softmax weight, the data's
    action up by 1 - its weight."""
    q = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    gap = cql.conservative_gap(cql.exact_logsumexp(q, 1.0), q[:, 0])
    gap.backward()
    soft = torch.softmax(q.detach(), dim=1)[0]
    torch.testing.assert_close(q.grad[0], soft - torch.tensor([1.0, 0.0, 0.0]))


def test_importance_weights_by_hand():
    """Three samples with densities p_i: T * ( log( (1/3) sum_i exp(Q_i / T) / p_i ) ), written out."""
    q = torch.tensor([[1.0], [2.0], [-1.0]])  # [M, B = 1]
    p = torch.tensor([[0.5], [0.25], [2.0]])
    for temperature in (1.0, 2.0):
        want = temperature * math.log(sum(math.exp(float(q[i, 0]) / temperature) / float(p[i, 0]) for i in range(3)) / 3)
        got = cql.importance_sampled_logsumexp(q, torch.log(p), temperature)
        assert got.shape == (1,)
        assert got.item() == pytest.approx(want, rel=1e-6)
    # a batch of twin critics [2, M, B] reduces over M for each critic and state
    q2 = torch.stack([q.expand(3, 2), 2 * q.expand(3, 2)])
    got = cql.importance_sampled_logsumexp(q2, torch.log(p).expand(3, 2), 1.0)
    assert got.shape == (2, 2)
    assert got[1, 0].item() == pytest.approx(math.log(sum(math.exp(2 * float(q[i, 0])) / float(p[i, 0]) for i in range(3)) / 3))


def test_uniform_density_of_the_action_box():
    """The uniform actions' log-density is -sum log(high - low): (1/2)^d on [-1, 1]^d (Hopper: d = 3), as CORL's."""
    actor = cql.TanhGaussianActor(obs_dim=2, act_dim=3, hidden_sizes=(8,), action_low=[-1, -1, -1], action_high=[1, 1, 1])
    low, high = actor.action_bias - actor.action_scale, actor.action_bias + actor.action_scale
    assert (-torch.log(high - low).sum()).item() == pytest.approx(math.log(0.5 ** 3))


def test_importance_sampled_estimate_approaches_the_log_integral():
    """A 1-D action in [-2, 2] and a known Q(a) = 3 - 4 (a - 0.7)^2: half the samples uniform (density 1/4), half from a
    tanh-Gaussian (density from squashed_gaussian_log_prob), each weighted by its own density as cql.py does. With
    many samples the estimate approaches log integral exp(Q(a)) da (trapezoid rule, 200k points), and the error falls
    as the samples grow."""
    grid = torch.linspace(-2.0, 2.0, 200_001, dtype=torch.float64)

    def q_of(a: torch.Tensor) -> torch.Tensor:
        return 3.0 - 4.0 * (a - 0.7) ** 2

    true = math.log(torch.trapezoid(torch.exp(q_of(grid)), grid).item())
    gen = torch.Generator().manual_seed(0)
    scale, mean, log_std = torch.tensor([2.0]), torch.tensor([0.2]), torch.tensor([-0.5])

    def estimate(n: int) -> float:
        uniform = torch.rand((n, 1), generator=gen) * 4.0 - 2.0
        u = mean + log_std.exp() * torch.randn((n, 1), generator=gen)
        squashed = scale * torch.tanh(u)
        log_p_pi = cql.squashed_gaussian_log_prob(u, mean.expand(n, 1), log_std.expand(n, 1), scale)  # [n]
        a = torch.cat([uniform, squashed])[:, 0].double()
        log_density = torch.cat([torch.full((n,), math.log(1 / 4)), log_p_pi]).double()
        return cql.importance_sampled_logsumexp(q_of(a)[:, None], log_density[:, None], 1.0).item()

    errors = [abs(estimate(n) - true) for n in (10, 100_000)]
    assert errors[1] < 0.01, (errors, true)
    assert errors[1] < errors[0]


def test_actor_log_densities_match_the_formula():
    """TanhGaussianActor.sample's log pi (the importance weights' densities, n samples at once) equals
    squashed_gaussian_log_prob on the same noise, and log_prob of the sampled actions gives it back."""
    torch.manual_seed(3)
    actor = cql.TanhGaussianActor(obs_dim=4, act_dim=2, hidden_sizes=(16,), action_low=[-1, -2], action_high=[1, 0])
    obs = torch.randn(5, 4)
    torch.manual_seed(7)
    actions, log_pi = actor.sample(obs, n=3)
    assert actions.shape == (3, 5, 2) and log_pi.shape == (3, 5)
    torch.manual_seed(7)
    mean, log_std = actor(obs)
    u = mean + log_std.exp() * torch.randn((3, *mean.shape))
    torch.testing.assert_close(log_pi, cql.squashed_gaussian_log_prob(u, mean, log_std, actor.action_scale))
    assert bool(((actions >= torch.tensor([-1.0, -2.0])) & (actions <= torch.tensor([1.0, 0.0]))).all())
    torch.testing.assert_close(actor.log_prob(obs, actions), log_pi, rtol=1e-4, atol=1e-3)
    assert torch.isfinite(actor.log_prob(obs[:1], torch.tensor([[1.0, -2.0]]))).all()  # an action on the bounds


def test_lagrange_update_sign():
    """alpha' = clamp(exp(log_alpha'), 0, 1e6) grows when the gap exceeds the target and shrinks below it; the gap gets
    no gradient from alpha''s loss."""
    for gap_value, target, grows in ((3.0, 1.0, True), (0.5, 1.0, False)):
        log_alpha_prime = torch.tensor([0.3], requires_grad=True)
        gap = torch.tensor([gap_value, gap_value + 0.2], requires_grad=True)
        loss = cql.lagrange_loss(log_alpha_prime, gap, cql_alpha=2.0, target_gap=target)
        alpha_prime = math.exp(0.3)
        assert loss.item() == pytest.approx(-alpha_prime * 2.0 * ((gap_value - target) + (gap_value + 0.2 - target)) / 2)
        loss.backward()
        assert gap.grad is None
        assert (log_alpha_prime.grad.item() < 0) == grows
        optimizer = torch.optim.Adam([log_alpha_prime], lr=0.1)
        optimizer.step()
        assert (log_alpha_prime.item() > 0.3) == grows


def test_sac_target_with_terminations():
    """y = r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')): a terminated transition is its
    reward alone; a truncated one (terminated = 0, the time limit's) bootstraps like any other."""
    rewards = torch.tensor([1.0, 2.0, -1.0])
    terminations = torch.tensor([0.0, 1.0, 0.0])  # the third is a truncation: stored with terminated = 0
    next_q = torch.tensor([[5.0, 4.0, 10.0], [6.0, 3.0, 8.0]])
    next_log_pi = torch.tensor([-1.0, 0.5, 2.0])
    soft = torch.min(next_q[0], next_q[1]) - 0.2 * next_log_pi
    y = cql.td_target(rewards, terminations, soft, gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * (5.0 + 0.2), 2.0, -1.0 + 0.9 * (8.0 - 0.4)]))


def test_checkpoint_carries_the_statistics_and_the_networks(offline_datasets, tmp_path):
    import minari

    out, ckpt = run_offline_with_statistics(cql, "tiny/pendulum-random-v0", tmp_path / "box")
    data = cql.load_transitions(minari.load_dataset("tiny/pendulum-random-v0"))
    assert ckpt["env_id"] == "Pendulum-v1"
    assert out["data_return_to_go"] == pytest.approx(cql.discounted_returns_to_go(data["rewards"], data["episode"], 0.99).mean())
    critic = cql.BatchedTwinQCritic(3, 1, (8,))  # Pendulum: 3 state features, 1 action
    critic.load_state_dict(ckpt["critic"])
    assert np.isfinite(out["q_values"])
    # resuming it with alpha' learned adds a parameter group the checkpoint's Adam lacks: one line, exit 2
    with pytest.raises(SystemExit) as exit_info:
        run_main(cql, ["--dataset-id", "tiny/pendulum-random-v0", "--total-updates", "4", "--hidden-sizes", "8",
                       "--lagrange", "--resume", str(tmp_path / "box" / out["model_path"])], tmp_path / "box")
    assert exit_info.value.code == 2
    # Discrete actions: the Q-network is the evaluated network, and it acts greedily
    out, ckpt = run_offline_with_statistics(cql, "tiny/cartpole-random-v0", tmp_path / "discrete")
    network, _ = cql.load_model(str(tmp_path / "discrete" / out["model_path"]))
    assert isinstance(network, cql.DiscreteQNetwork)
    assert int(network.greedy_action(torch.zeros(1, 4))[0]) in (0, 1)


# seed 1's benchmark run (benchmark_results/offline.md: 5k gradient steps, evaluated every 1000) scored 32.7 at 5k;
# this test runs the same seed and sampler to 5k (the evaluations draw no random numbers), so it repeats that
# evaluation. At 5k steps cql.py plays at the data's level (32.2; bc.py's last at 50k 31.9), not above it; a policy
# that fails scores about 1 (its medium-replay runs end there). 30 leaves a margin below the measured 32.7.
THRESHOLD = 30.0


@pytest.mark.slow
@needs_built_dataset("onefile/hopper/medium-v0")
def test_hopper_medium_at_5k_updates(tmp_path):
    """This collection's Hopper-v5 medium data (32.2 normalised; bc.py's last 31.9 at 50k gradient steps): cql.py seed 1,
    the defaults, 5k gradient steps, 10 evaluation episodes, scores >= THRESHOLD."""
    out = run_main(cql, ["--dataset-id", "onefile/hopper/medium-v0", "--total-updates", "5000", "--eval-every", "5000"],
                   tmp_path, env={"MINARI_DATASETS_PATH": BUILT_DATASETS})
    assert out["normalized_score_last"] >= THRESHOLD, out
