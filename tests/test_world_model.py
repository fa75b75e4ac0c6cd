"""world_model.py: the Gaussian NLL against torch.distributions' closed form and beta-NLL by hand, the soft log-variance bounds against
their formula and their limits, the model's losses, CEM's update and its convergence on a known quadratic, the
planner's batching (one ensemble forward pass per planning step), the discounted planned return with and without
the terminal value, the value's TD target and loss by hand and its fixed point, the Monte Carlo returns by hand
and their resume (--value-returns), and a learning regression."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import load_algo

wm = load_algo("world_model")


def test_gaussian_nll_is_the_negative_log_density():
    torch.manual_seed(0)
    mean, logvar, target = torch.randn(3, 7, 4, dtype=torch.float64), torch.randn(3, 7, 4, dtype=torch.float64), \
        torch.randn(3, 7, 4, dtype=torch.float64)
    expected = -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(target).sum(-1).mean()
    assert wm.gaussian_nll(mean, logvar, target).item() == pytest.approx(expected.item(), rel=1e-12)
    # one dimension by hand: log-variance 0 (variance 1), error 2 -> 1/2 (log 2 pi + 0 + 4)
    one = wm.gaussian_nll(torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), 2.0)).item()
    assert one == pytest.approx(0.5 * (math.log(2 * math.pi) + 4.0), rel=1e-6)


def test_nll_is_minimised_by_the_error_variance():
    """For a fixed error e, d NLL / d logvar = (1 - e^2 exp(-logvar)) / 2: zero at logvar = log(e^2), so the model
    learns to predict its own squared error; negative below, positive above."""
    for lv, sign in ((math.log(0.09), 0), (math.log(0.09) - 1, -1), (math.log(0.09) + 1, 1)):
        logvar = torch.tensor([[lv]], dtype=torch.float64, requires_grad=True)
        wm.gaussian_nll(torch.zeros(1, 1, dtype=torch.float64), logvar, torch.full((1, 1), 0.3, dtype=torch.float64)).backward()
        assert logvar.grad.item() == pytest.approx(0.5 * (1 - 0.09 * math.exp(-lv)), abs=1e-12)
        assert (logvar.grad.item() > 1e-12) - (logvar.grad.item() < -1e-12) == sign


def test_beta_nll_weights_each_term_by_its_variance_without_a_gradient_through_the_weight():
    """beta-NLL (Seitzer et al. 2022): each term times sg(var)^beta. By hand, one dimension with error e, log-variance
    lv: value w * 1/2 (log 2 pi + lv + e^2 / var), w = var^beta; d/d mean = -w e / var = -e var^(beta - 1);
    d/d lv = w * 1/2 (1 - e^2 / var) (the weight is a constant); beta = 0 is the plain NLL."""
    e, lv = 0.3, math.log(0.04)
    var = math.exp(lv)
    for beta in (0.0, 0.5, 1.0):
        mean = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
        logvar = torch.tensor([[lv]], dtype=torch.float64, requires_grad=True)
        loss = wm.gaussian_nll(mean, logvar, torch.full((1, 1), e, dtype=torch.float64), beta)
        loss.backward()
        w = var**beta
        assert loss.item() == pytest.approx(w * 0.5 * (math.log(2 * math.pi) + lv + e * e / var), rel=1e-12)
        assert mean.grad.item() == pytest.approx(-e * var ** (beta - 1), rel=1e-12)
        assert logvar.grad.item() == pytest.approx(w * 0.5 * (1 - e * e / var), rel=1e-12)
    # batched: the mean over rows of the per-row weighted sums, each row with its own weights
    torch.manual_seed(1)
    mean, logvar, target = (torch.randn(2, 5, 3, dtype=torch.float64) for _ in range(3))
    per = -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(target) * logvar.exp().sqrt()
    assert wm.gaussian_nll(mean, logvar, target, 0.5).item() == pytest.approx(per.sum(-1).mean().item(), rel=1e-12)


def test_soft_logvar_bounds():
    max_lv, min_lv = torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([-10.0, -3.0], dtype=torch.float64)
    raw = torch.tensor([[-50.0, -50.0], [-4.0, -1.0], [0.0, 0.0], [40.0, 40.0]], dtype=torch.float64)
    got = wm.soft_bound_logvar(raw, max_lv, min_lv)
    # the formula, element by element in Python floats
    sp = lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0.0)  # noqa: E731 - a stable softplus
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            hi = max_lv[j].item() - sp(max_lv[j].item() - raw[i, j].item())
            assert got[i, j].item() == pytest.approx(min_lv[j].item() + sp(hi - min_lv[j].item()), rel=1e-12, abs=1e-12)
    # the range: above min_lv and below min_lv + softplus(max_lv - min_lv), which exceeds max_lv by
    # log(1 + exp(-(max_lv - min_lv))) (the second clamp is applied to the first's output); far below -> min_lv,
    # far above -> that upper limit, in the middle nearly the identity
    upper = min_lv + F.softplus(max_lv - min_lv)
    assert (got >= min_lv).all() and (got <= upper).all() and (got[1:3] > min_lv).all() and (got[1:3] < upper).all()
    assert got[0] == pytest.approx(min_lv, abs=1e-9)
    assert got[3] == pytest.approx(upper, abs=1e-9)
    assert (upper - max_lv)[0].item() == pytest.approx(math.log1p(math.exp(-10.5)), rel=1e-9)
    mid = wm.soft_bound_logvar(torch.tensor([-4.0]), torch.tensor([5.0]), torch.tensor([-15.0]))
    assert mid.item() == pytest.approx(-4.0, abs=1e-3)
    # the bounds are learned: the gradient reaches them
    max_p, min_p = max_lv.clone().requires_grad_(), min_lv.clone().requires_grad_()
    wm.soft_bound_logvar(raw, max_p, min_p).sum().backward()
    assert (max_p.grad > 0).all() and (min_p.grad > 0).all()


def test_model_losses_by_hand():
    """A one-member model whose output layers are zero: mean 0, raw logvar 0, reward 0, termination logit 0."""
    model = wm.EnsembleModel(obs_dim=2, act_dim=1, ensemble_size=1, hidden_sizes=(8,))
    with torch.no_grad():
        for p in (model.weights[-1], model.biases[-1], model.term_weights[-1], model.term_biases[-1]):
            p.zero_()
    obs, actions = torch.randn(1, 5, 2), torch.randn(1, 5, 1)
    next_obs, rewards, terms = obs + 0.5, torch.full((1, 5), 2.0), torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    out = wm.model_losses(model, obs, actions, rewards, next_obs, terms)
    lv = wm.soft_bound_logvar(torch.zeros(2), model.max_logvar, model.min_logvar).detach()
    nll = sum(0.5 * (math.log(2 * math.pi) + v + 0.25 * math.exp(-v)) for v in lv.tolist())
    assert out["model_nll"].item() == pytest.approx(nll, rel=1e-5)
    assert out["reward_loss"].item() == pytest.approx(4.0)
    assert out["termination_loss"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert out["loss"].item() == pytest.approx(nll + 4.0 + math.log(2.0) + 0.01 * (2 * 0.5 + 2 * 10.0), rel=1e-5)
    assert out["model_mse"].item() == pytest.approx(0.25, rel=1e-6)  # every change is 0.5, the mean 0
    # beta-NLL: each dimension's term times its variance to the power beta
    beta_out = wm.model_losses(model, obs, actions, rewards, next_obs, terms, beta=0.5)
    weighted = sum(math.exp(0.5 * v) * 0.5 * (math.log(2 * math.pi) + v + 0.25 * math.exp(-v)) for v in lv.tolist())
    assert beta_out["model_nll"].item() == pytest.approx(weighted, rel=1e-5)


def test_cem_update_fits_the_elites():
    samples = torch.tensor([[[1.0], [5.0], [3.0], [-2.0]]])  # N=1, P=4, one dimension
    values = torch.tensor([[0.0, 9.0, 7.0, -1.0]])  # elites: 5 and 3
    mean, std = wm.cem_update(samples, values, 2, torch.tensor([[0.0]]), torch.tensor([[2.0]]), momentum=0.25)
    assert mean.item() == pytest.approx(0.25 * 0.0 + 0.75 * 4.0)
    assert std.item() == pytest.approx(0.25 * 2.0 + 0.75 * 1.0)


def test_cem_shrinks_onto_the_optimum_of_a_quadratic():
    """Maximise -(x - x*)^T D (x - x*) over [N=2, 3 steps, 2 dims] from a wide start: the mean reaches x* and the
    standard deviation collapses."""
    torch.manual_seed(0)
    target = torch.tensor([[[0.7, -1.2], [0.1, 0.4], [-0.5, 0.9]], [[1.5, 1.5], [-1.5, 0.0], [0.3, -0.3]]])
    weights = torch.tensor([1.0, 3.0])
    mean, std = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(30):
        samples = mean[:, None] + std[:, None] * torch.randn(2, 200, 3, 2)
        values = -(weights * (samples - target[:, None]) ** 2).sum((-1, -2))
        mean, std = wm.cem_update(samples, values, 20, mean, std, momentum=0.1)
    assert torch.allclose(mean, target, atol=0.02), mean - target
    assert std.max() < 0.01


def make_planner(**kw):
    args = dict(obs_dim=3, act_dim=2, ensemble_size=4, hidden_sizes=(16, 16), action_low=[-1.0, -2.0],
                action_high=[1.0, 2.0], horizon=6, population=30, elites=5, iterations=3, num_particles=8, momentum=0.1,
                gamma=0.9, terminal_value=True)
    return wm.Planner(**{**args, **kw})


def test_planner_runs_one_forward_pass_per_planning_step():
    """Every planning step is one ensemble call over the whole population and every particle: iterations x horizon
    calls per action, each with E rows of N * population * particles / E inputs."""
    planner, calls = make_planner(), []
    real = planner.model.forward
    planner.model.forward = lambda obs, actions: calls.append((tuple(obs.shape), tuple(actions.shape))) or real(obs, actions)
    action = planner.greedy_action(torch.randn(2, 3))  # two environments at once
    assert len(calls) == 3 * 6
    assert all(c == ((4, 2 * 30 * 2, 3), (4, 2 * 30 * 2, 2)) for c in calls), calls[0]
    assert action.shape == (2, 2)
    assert (action >= planner.action_low).all() and (action <= planner.action_high).all()
    assert planner.warm.shape == (2, 6, 2)


@pytest.mark.parametrize("terminal_value", [False, True])
def test_trajectory_returns_follow_reward_termination_and_value(terminal_value):
    """A model that predicts reward 1 and a termination probability q every step, and a value network that
    predicts V = c everywhere: with k = gamma (1 - q), the return of a horizon H is the geometric sum
    sum_{t<H} k^t = (1 - k^H) / (1 - k), plus k^H c with the terminal value; the same for every candidate."""
    planner, q, c, gamma = make_planner(terminal_value=terminal_value), 0.2, 7.0, 0.9
    with torch.no_grad():
        for p in (*planner.model.weights, *planner.model.biases, *planner.model.term_weights, *planner.model.term_biases,
                  *planner.value.parameters()):
            p.zero_()
        planner.model.biases[-1][..., 6] = 1.0  # reward
        planner.model.term_biases[-1][...] = math.log(q / (1 - q))  # termination logit
        planner.value[-1].bias.fill_((1 - gamma) * c)  # the network's output is (1 - gamma) V
    actions = torch.rand(2, 30, 6, 2)
    got = planner.trajectory_returns(torch.randn(2, 3), actions)
    k = gamma * (1 - q)
    expected = (1 - k**6) / (1 - k) + (k**6 * c if terminal_value else 0.0)
    assert torch.allclose(got, torch.full((2, 30), expected))
    assert planner.state_value(torch.randn(4, 3)).tolist() == pytest.approx([c] * 4)


def test_value_target_and_loss_by_hand():
    """y = r + gamma (1 - terminated) V(s'): a terminal step is its reward alone, a truncated or ordinary one
    bootstraps; the loss is the squared TD error in units of (1 - gamma) V."""
    rewards, terms, next_v = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([50.0, 0.0, 80.0])
    y = wm.td_target(rewards, terms, next_v, 0.99)
    assert y.tolist() == pytest.approx([1.0 + 0.99 * 50.0, 1.0, 0.0])
    loss = wm.value_loss(torch.tensor([40.0, 1.0, 10.0]), y, 0.99)
    assert loss.item() == pytest.approx(((0.01 * (40.0 - 50.5)) ** 2 + 0.0 + (0.01 * 10.0) ** 2) / 3, rel=1e-5)


def test_bootstrapped_returns_by_hand():
    """G_t = r_t + gamma G_{t+1}: a terminated episode ends with G_T = 0, a cut one with the value of its last state."""
    rewards = [1.0, 0.0, 2.0]
    assert wm.bootstrapped_returns(rewards, 0.5).tolist() == pytest.approx([1.5, 1.0, 2.0])
    assert wm.bootstrapped_returns(rewards, 0.5, bootstrap=8.0).tolist() == pytest.approx([2.5, 3.0, 6.0])


def test_value_returns_learn_and_resume_exactly(tmp_path, monkeypatch):
    """--value-returns on Pendulum-v1 (200-step episodes, cut by the time limit: the bootstrapped tail): a run
    interrupted by a checkpoint and resumed ends with the same value network as one never interrupted."""
    monkeypatch.chdir(tmp_path)
    small = dict(env_id="Pendulum-v1", learning_starts=195, gradient_steps=1, population=8, elites=2, iterations=1, horizon=2,
                 hidden_sizes=(8,), batch_size=16, eval_episodes=1, value_returns=True, save_buffer=True,
                 save_model=True)
    whole = wm.main(wm.Args(exp_name="whole", total_timesteps=230, **small))
    first = wm.main(wm.Args(exp_name="part", total_timesteps=215, checkpoint_every=215, **small))
    resumed = wm.main(wm.Args(exp_name="part", total_timesteps=230, resume=first["model_path"], **small))
    a, b = (torch.load(out["model_path"], weights_only=True) for out in (whole, resumed))
    assert a["returns"]["returns"].shape[0] == 230 and a["returns"]["open"] == [list(range(200, 230))]
    assert not a["returns"]["returns"][:200].isnan().any() and a["returns"]["returns"][200:].isnan().all()
    assert b["returns"]["open"] == a["returns"]["open"]
    torch.testing.assert_close(b["returns"]["returns"], a["returns"]["returns"], rtol=0, atol=0, equal_nan=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_value_learning_reaches_the_discounted_survival():
    """TD(0) with the target network, on a chain that always survives with reward 1: V tends to 1 / (1 - gamma)."""
    torch.manual_seed(0)
    planner, gamma = make_planner(gamma=0.5), 0.5
    target = wm.copy.deepcopy(planner.value)
    optimizer = torch.optim.Adam(planner.value.parameters(), lr=2e-2)
    for _ in range(60):
        obs, next_obs = torch.randn(64, 3), torch.randn(64, 3)
        with torch.no_grad():
            y = wm.td_target(torch.ones(64), torch.zeros(64), planner.state_value(next_obs, target), gamma)
        loss = wm.value_loss(planner.state_value(obs), y, gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        wm.soft_update(target, planner.value, 0.5)
    assert planner.state_value(torch.randn(100, 3)).mean().item() == pytest.approx(2.0, rel=0.02)


def test_planner_finds_the_best_action_of_a_known_model():
    """A linear model whose reward is minus the squared distance of the action to a (2 actions): the plan's first
    action is near a, clipped into the bounds."""
    planner = make_planner(hidden_sizes=(8,), horizon=3, iterations=10, population=400, elites=40, terminal_value=False)
    target = torch.tensor([0.4, 5.0])  # the second component lies outside the bounds [-2, 2]: expect 2

    class Known(torch.nn.Module):
        def forward(self, obs, actions):
            zero = torch.zeros_like(obs)
            return zero, torch.full_like(obs, -20.0), -((actions - target) ** 2).sum(-1)

        def termination_logit(self, next_obs):
            return torch.full(next_obs.shape[:2], -30.0)

    planner.model = Known()
    torch.manual_seed(1)
    action = planner.greedy_action(torch.zeros(1, 3))
    assert action[0, 0].item() == pytest.approx(0.4, abs=0.05)
    assert action[0, 1].item() == pytest.approx(2.0, abs=0.05)


def test_normalizer_is_the_running_mean_and_std():
    model = wm.EnsembleModel(obs_dim=2, act_dim=1, ensemble_size=2, hidden_sizes=(4,))
    x = torch.randn(50, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -3.0, 0.0])
    model.update_normalizer(x[:20])
    model.update_normalizer(x[20:])
    assert torch.allclose(model.in_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(model.in_std, x.std(0, correction=0), rtol=1e-4)
    assert F.softplus(torch.tensor(0.0)).item() == pytest.approx(math.log(2.0))


@pytest.mark.slow
def test_balances_inverted_pendulum(tmp_path, monkeypatch):
    """Defaults, seed 1, 5k steps on InvertedPendulum-v5: the planner's evaluation over 3 episodes is 1000."""
    monkeypatch.chdir(tmp_path)
    out = wm.main(wm.Args(seed=1, total_timesteps=5_000, eval_episodes=3))
    assert out["eval_return_mean"] >= 1000, out["eval_returns"]
