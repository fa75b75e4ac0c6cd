"""rainbow.py: the C51 projection (shared hand-worked cases, per-sample gamma), the sum tree and prioritised
sampling, importance weights, n-step returns against a slow reference loop, the factorised noisy layer, the
per-atom dueling head, bad input, and a learning regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_exit_2, load_algo
from reference_math import categorical_projection_cases

rainbow = load_algo("rainbow")
CASES = categorical_projection_cases()


# --- distributional: the projection -------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_projection_matches_hand_worked_cases(case):
    m = rainbow.project_distribution(case["next_probs"], case["rewards"], case["dones"], case["gamma"], case["support"])
    torch.testing.assert_close(m, case["expected"])


def test_projection_with_a_gamma_per_sample_equals_row_by_row():
    """Truncated n-step sums are shorter, so their bootstrap discount gamma^m differs per sample."""
    torch.manual_seed(0)
    support = torch.linspace(0.0, 10.0, 11)
    next_probs = torch.softmax(torch.randn(4, 11), dim=-1)
    rewards, dones = torch.tensor([1.0, 0.3, 2.5, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    gammas = torch.tensor([0.9, 0.9**2, 0.9**3, 0.5])
    m = rainbow.project_distribution(next_probs, rewards, dones, gammas, support)
    for i in range(4):
        row = rainbow.project_distribution(next_probs[i : i + 1], rewards[i : i + 1], dones[i : i + 1],
                                           float(gammas[i]), support)
        torch.testing.assert_close(m[i : i + 1], row)
    torch.testing.assert_close(m.sum(1), torch.ones(4))


# --- prioritised replay: sum tree, sampling, weights ---------------------------------------------------

def test_sum_tree_finds_prefix_sum_intervals_by_hand():
    tree = rainbow.SumTree(4)
    tree.update(np.arange(4), np.array([1.0, 0.0, 2.0, 3.0]))  # intervals [0,1) -> 0, [1,3) -> 2, [3,6) -> 3
    assert tree.total == 6.0
    found = tree.find(np.array([0.0, 0.999, 1.0, 2.999, 3.0, 5.999]))
    assert found.tolist() == [0, 0, 2, 2, 3, 3]  # leaf 1 has priority 0: never found


def test_sum_tree_total_stays_right_after_random_updates():
    rng = np.random.default_rng(0)
    tree = rainbow.SumTree(100)  # not a power of two: padded to 128 leaves
    for _ in range(200):
        idx = rng.integers(0, 100, size=16)  # repeated indices included
        vals = rng.random(16) * 10
        tree.update(idx, vals)
        last = {i: v for i, v in zip(idx.tolist(), vals.tolist(), strict=True)}  # a repeated index keeps its last value
        assert all(tree.leaves()[i] == v for i, v in last.items())
    assert tree.total == pytest.approx(tree.leaves().sum(), rel=1e-12)
    internal = np.arange(1, tree.size)
    np.testing.assert_allclose(tree.tree[internal], tree.tree[2 * internal] + tree.tree[2 * internal + 1], rtol=1e-12)


def filled_buffer(priorities, alpha: float, seed: int = 0):
    """A prioritised buffer holding len(priorities) transitions whose observation is their index."""
    n = len(priorities)
    rb = rainbow.PrioritizedReplayBuffer(n, obs_dim=1, seed=seed, prioritized=True, alpha=alpha)
    ids = np.arange(n, dtype=np.float32)
    rb.add(ids[:, None], np.zeros(n, dtype=np.int64), ids, ids[:, None], np.zeros(n), np.ones(n))
    rb.update_priorities(np.arange(n), np.asarray(priorities, dtype=np.float64))
    return rb


def test_prioritized_sampling_frequencies_match_p_alpha():
    """10 transitions (a capacity that is not a power of two), alpha 0.5, 64,000 stratified draws: every
    leaf's count lies within 5 binomial standard deviations of N * p_i^alpha / sum_k p_k^alpha (stratification
    only narrows the spread), and a padding leaf is never drawn."""
    priorities = np.array([0.1, 1.0, 4.0, 0.5, 9.0, 2.0, 0.01, 3.0, 1.5, 6.0])
    rb = filled_buffer(priorities, alpha=0.5)
    counts = np.zeros(10)
    draws = 0
    for _ in range(2000):
        (obs, *_), idx = rb.sample(32, beta=0.4)
        np.testing.assert_array_equal(obs[:, 0].numpy(), idx)  # the sampled rows are the indexed ones
        counts += np.bincount(idx, minlength=10)
        draws += 32
    expected_p = priorities**0.5 / (priorities**0.5).sum()
    sd = np.sqrt(draws * expected_p * (1 - expected_p))
    assert np.all(np.abs(counts - draws * expected_p) <= 5 * sd), (counts, draws * expected_p)
    assert counts.sum() == draws


def test_new_transitions_get_the_largest_priority_seen():
    rb = rainbow.PrioritizedReplayBuffer(8, obs_dim=1, seed=0, prioritized=True, alpha=0.5)
    one = (np.zeros((1, 1)), np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros((1, 1)), np.zeros(1), np.ones(1))
    rb.add(*one)
    assert rb.tree.leaves()[0] == 1.0  # before any update: priority 1
    rb.update_priorities(np.array([0]), np.array([9.0]))
    rb.update_priorities(np.array([0]), np.array([0.25]))  # lowering it keeps the maximum seen
    rb.add(*one)
    assert rb.tree.leaves()[1] == pytest.approx(9.0**0.5)
    assert rb.tree.leaves()[0] == pytest.approx(0.25**0.5)
    assert rb.tree.total == pytest.approx(3.0 + 0.5)


def test_importance_weights_by_hand():
    # N = 4, beta = 0.5: (4 * 0.5)^-0.5 = 0.7071, (4 * 0.25)^-0.5 = 1, (4 * 0.125)^-0.5 = 1.4142; / max
    w = rainbow.importance_weights(np.array([0.5, 0.25, 0.125]), 4, 0.5)
    np.testing.assert_allclose(w, [1 / math.sqrt(2) / math.sqrt(2), 1 / math.sqrt(2), 1.0])
    np.testing.assert_allclose(rainbow.importance_weights(np.array([0.5, 0.25]), 4, 0.0), [1.0, 1.0])  # beta 0


def test_sampled_weights_follow_the_stored_priorities():
    # priorities^alpha (alpha 1) = [1, 2, 3, 2], total 8; P = [1/8, 2/8, 3/8, 2/8]; N = 4, beta = 1:
    # w = 1 / (4 P) = [2, 1, 2/3, 1], the largest in the batch is 2 when transition 0 is drawn
    rb = filled_buffer([1.0, 2.0, 3.0, 2.0], alpha=1.0)
    for _ in range(20):
        (*_, weights), idx = rb.sample(8, beta=1.0)
        raw = np.array([2.0, 1.0, 2 / 3, 1.0])[idx]
        np.testing.assert_allclose(weights.numpy(), raw / raw.max(), rtol=1e-6)


def test_uniform_replay_has_unit_weights():
    rb = rainbow.PrioritizedReplayBuffer(4, obs_dim=1, seed=0, prioritized=False)
    rb.add(np.zeros((3, 1)), np.zeros(3, dtype=np.int64), np.zeros(3), np.zeros((3, 1)), np.zeros(3), np.ones(3))
    (*_, weights), idx = rb.sample(16, beta=0.4)
    assert rb.tree is None and idx.max() < 3
    torch.testing.assert_close(weights, torch.ones(16))


# --- n-step returns ----------------------------------------------------------------------------------

def reference_n_step(rewards, terminated, truncated, n, gamma):
    """Slow reference, one environment at a time: for each step t whose window is complete, the
    transition (t, R, index of the bootstrap observation, done, discount). The window ends at the first
    episode end at or after t, or after n steps; steps whose window runs past the data are not emitted."""
    T, N = len(rewards), len(rewards[0])
    out = []
    for e in range(N):
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * rewards[k][e]
                if terminated[k][e] or truncated[k][e] or k - t + 1 == n:
                    break
                k += 1
                if k == T:
                    break
            if k == T:
                continue
            out.append((e, t, total, k, float(terminated[k][e]), gamma ** (k - t + 1)))
    return sorted(out)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_transitions_match_the_reference_loop_with_two_envs(n):
    rng = np.random.default_rng(n)
    T, N, gamma = 60, 2, 0.9
    rewards = rng.normal(size=(T, N)).round(2)
    ends = rng.random((T, N))
    terminated, truncated = ends < 0.1, (ends >= 0.1) & (ends < 0.2)  # never both on one step
    queue = rainbow.NStepQueue(n, gamma, N)
    got = []
    for t in range(T):
        # an observation says (env, step); the next observation of step t says (env, t) with a marker 1
        obs = np.array([[e, t, 0] for e in range(N)], dtype=np.float32)
        real_next = np.array([[e, t, 1] for e in range(N)], dtype=np.float32)
        for o, a, ret, nxt, done, disc in queue.step(obs, np.full(N, 7), rewards[t], real_next, terminated[t],
                                                     truncated[t]):
            assert a == 7 and nxt[0] == o[0] and nxt[2] == 1
            got.append((int(o[0]), int(o[1]), ret, int(nxt[1]), done, disc))
    expected = reference_n_step(rewards.tolist(), terminated.tolist(), truncated.tolist(), n, gamma)
    got = sorted(got)
    assert [g[:2] for g in got] == [x[:2] for x in expected]
    assert [g[3:5] for g in got] == [x[3:5] for x in expected]  # bootstrap observation and done flag
    np.testing.assert_allclose([g[2] for g in got], [x[2] for x in expected], rtol=1e-12)
    np.testing.assert_allclose([g[5] for g in got], [x[5] for x in expected], rtol=1e-12)
    # the data holds the cases that matter: a sum cut short by a truncation (bootstrapped with gamma^m, m < n)
    assert n == 1 or any(x[4] == 0.0 and x[5] > gamma**n and truncated[x[3], x[0]] for x in expected)
    assert any(x[4] == 1.0 for x in expected)


def test_n_step_episode_ends_by_hand():
    """n = 3, gamma = 0.5, rewards 1, 2, 4 then a termination at the third step; then 8 and a truncation."""
    q = rainbow.NStepQueue(3, 0.5, 1)
    o = [np.array([[float(i)]]) for i in range(10)]
    assert q.step(o[0], [0], [1.0], o[1], [False], [False]) == []
    assert q.step(o[1], [0], [2.0], o[2], [False], [False]) == []
    out = q.step(o[2], [0], [4.0], o[3], [True], [False])  # terminated: flush all three, done = 1
    assert [(float(t[0][0]), t[2], float(t[3][0]), t[4], t[5]) for t in out] == [
        (0.0, 1 + 0.5 * 2 + 0.25 * 4, 3.0, 1.0, 0.125), (1.0, 2 + 0.5 * 4, 3.0, 1.0, 0.25), (2.0, 4.0, 3.0, 1.0, 0.5)]
    out = q.step(o[5], [0], [8.0], o[6], [False], [True])  # truncated after one step: bootstrap with gamma^1
    assert [(float(t[0][0]), t[2], float(t[3][0]), t[4], t[5]) for t in out] == [(5.0, 8.0, 6.0, 0.0, 0.5)]



def test_buffer_and_n_step_queues_resume_through_a_weights_only_checkpoint(tmp_path):
    """--save-buffer: the transitions, the sum tree, the largest priority, the ring's position and each environment's
    queued steps come back exactly (torch.load(weights_only=True)); the restored buffer samples as the original."""
    rng = np.random.default_rng(0)
    rb, q = rainbow.PrioritizedReplayBuffer(10, obs_dim=2, seed=3), rainbow.NStepQueue(3, 0.9, 2)
    for t in range(9):
        obs = rng.normal(size=(2, 2)).astype(np.float32)
        out = q.step(obs, np.array([t % 2, 1]), rng.normal(size=2), obs + 1, np.array([t == 4, False]), np.zeros(2, bool))
        if out:
            rb.add(*(np.array(column) for column in zip(*out, strict=True)))
    rb.update_priorities(np.array([0, 1]), np.array([3.0, 0.5]))
    torch.save({"buffer": rb.state_dict(), "n_step": q.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    rb2, q2 = rainbow.PrioritizedReplayBuffer(10, obs_dim=2, seed=99), rainbow.NStepQueue(3, 0.9, 2)
    rb2.load_state_dict(state["buffer"])
    q2.load_state_dict(state["n_step"])
    rb2.rng.bit_generator.state = rb.rng.bit_generator.state
    assert (rb2.pos, rb2.size, rb2.max_priority) == (rb.pos, rb.size, 3.0) and np.array_equal(rb2.tree.tree, rb.tree.tree)
    (a, ia), (b, ib) = rb.sample(8, 0.5), rb2.sample(8, 0.5)
    assert np.array_equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert [len(x) for x in q2.queues] == [len(x) for x in q.queues] and any(q.queues)
    step = (np.ones((2, 2), np.float32), np.array([0, 0]), np.ones(2), np.zeros((2, 2), np.float32), np.ones(2, bool),
            np.zeros(2, bool))
    for x, y in zip(q.step(*step), q2.step(*step), strict=True):  # an episode end flushes both queues alike
        assert np.array_equal(x[0], y[0]) and x[1:3] == y[1:3] and x[4:] == y[4:]

# --- noisy networks ----------------------------------------------------------------------------------

def test_scale_noise_by_hand():
    torch.testing.assert_close(rainbow.scale_noise(torch.tensor([4.0, -9.0, 0.0, 0.25])),
                               torch.tensor([2.0, -3.0, 0.0, 0.5]))


def test_factorised_noise_shapes_and_statistics():
    torch.manual_seed(0)
    layer = rainbow.NoisyLinear(5, 3)
    assert layer.eps_in.shape == (5,) and layer.eps_out.shape == (3,)
    eps_w = layer.weight_epsilon()
    assert eps_w.shape == (3, 5) == layer.weight_mu.shape
    torch.testing.assert_close(eps_w, layer.eps_out[:, None] * layer.eps_in[None, :])
    assert torch.linalg.matrix_rank(eps_w) == 1  # factorised: an outer product, not [out, in] independent draws
    torch.testing.assert_close(layer.weight_sigma, torch.full((3, 5), 0.5 / math.sqrt(5)))  # sigma_0 / sqrt(p)

    # f(x) = sign(x) sqrt(|x|) of x ~ N(0, 1): mean 0, E f^2 = E|x| = sqrt(2/pi) ~ 0.798, E f^4 = E x^2 = 1
    # (20,000 draws: standard errors about 0.006, 0.004 and 0.01)
    big = rainbow.NoisyLinear(20_000, 1)
    e = big.eps_in
    assert abs(e.mean().item()) < 0.03
    assert (e**2).mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.025)
    assert (e**4).mean().item() == pytest.approx(1.0, abs=0.06)  # raw Gaussian noise would give 3


def test_noisy_forward_train_resamples_and_eval_uses_the_mean():
    torch.manual_seed(0)
    layer = rainbow.NoisyLinear(6, 4, sigma_0=0.5)
    x = torch.randn(8, 6)
    y1 = layer(x)
    noisy_w = layer.weight_mu + layer.weight_sigma * torch.outer(layer.eps_out, layer.eps_in)
    torch.testing.assert_close(y1, F.linear(x, noisy_w, layer.bias_mu + layer.bias_sigma * layer.eps_out))
    torch.testing.assert_close(layer(x), y1)  # same noise until resampled
    layer.reset_noise()
    assert not torch.allclose(layer(x), y1)
    layer.eval()
    y_eval = layer(x)
    layer.reset_noise()
    torch.testing.assert_close(layer(x), y_eval)
    torch.testing.assert_close(y_eval, F.linear(x, layer.weight_mu, layer.bias_mu))


def test_greedy_action_uses_the_mean_weights_in_either_mode():
    torch.manual_seed(0)
    net = rainbow.QNetwork(4, 3, (16, 16), n_atoms=11)
    x = torch.randn(32, 4)
    with torch.no_grad():
        mean_q = net.eval().q_values(x)
    net.train()
    assert net.greedy_action(x).tolist() == mean_q.argmax(1).tolist()
    assert net.training  # the mode is restored
    net.reset_noise()
    assert net.greedy_action(x).tolist() == mean_q.argmax(1).tolist()


def test_network_eval_mode_is_deterministic():
    torch.manual_seed(0)
    net = rainbow.QNetwork(4, 2, (16, 16), n_atoms=11)
    assert sum(isinstance(m, rainbow.NoisyLinear) for m in net.modules()) == 3  # hidden 2 and both heads
    x = torch.randn(5, 4)
    q_train = net.q_values(x)
    net.reset_noise()
    assert not torch.allclose(net.q_values(x), q_train)
    net.eval()
    q_eval = net.q_values(x)
    net.reset_noise()
    torch.testing.assert_close(net.q_values(x), q_eval)


# --- dueling, per atom -------------------------------------------------------------------------------

def test_dueling_aggregation_per_atom_by_hand():
    value = torch.tensor([[[1.0, -1.0]]])  # [B=1, 1, atoms=2]
    adv = torch.tensor([[[1.0, 4.0], [3.0, 0.0]]])  # [B=1, actions=2, atoms=2]: means over actions 2 and 2
    out = rainbow.dueling_aggregate(value, adv)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0], [2.0, -3.0]]]))
    torch.testing.assert_close(out.mean(dim=1, keepdim=True), value)


def test_distributional_network_outputs_per_atom_logits_and_expected_q():
    torch.manual_seed(0)
    net = rainbow.QNetwork(4, 3, (16,), n_atoms=7, v_min=-3.0, v_max=3.0).eval()
    x = torch.randn(2, 4)
    logits = net(x)
    assert logits.shape == (2, 3, 7)
    torch.testing.assert_close(net.q_values(x), (logits.softmax(-1) * torch.linspace(-3, 3, 7)).sum(-1))
    plain = rainbow.QNetwork(4, 3, (16,), distributional=False, noisy=False, dueling=False)
    assert plain(x).shape == (2, 3) and not any(isinstance(m, rainbow.NoisyLinear) for m in plain.modules())


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,expected", [
    ({"n_step": 0}, "n-step"), ({"v_min": 5.0, "v_max": 5.0}, "v-min"), ({"alpha": -0.5}, "alpha"),
    ({"beta_start": 1.5}, "beta-start"), ({"n_atoms": 1}, "n-atoms"), ({"sigma_0": -1.0}, "sigma-0"),
    ({"env_id": "Pendulum-v1"}, "Discrete actions"), ({"tau": 0.0}, "tau"), ({"hidden_sizes": ()}, "hidden-sizes"),
])
def test_bad_values_are_one_line_exit_2(changes, expected, capsys):
    assert_one_line_exit_2(lambda: rainbow.check_args(rainbow.Args(**changes)), expected, capsys)


# --- learning regression -----------------------------------------------------------------------------

@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """Defaults (all six parts on), seed 1, 100k steps: the greedy evaluation reaches 475."""
    monkeypatch.chdir(tmp_path)
    out = rainbow.main(rainbow.Args(seed=1, total_timesteps=100_000))
    assert out["eval_return_mean"] >= 475, out["eval_returns"]
