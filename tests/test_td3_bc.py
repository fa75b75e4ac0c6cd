"""td3_bc.py: lambda's normalisation, the actor's loss and alpha = 0 being pure behaviour cloning (not TD3) against
hand values, the data's discounted returns, the normalised score against Minari's own function, the critics'
checkpoint, a resume across actor updates; slow: on this collection's Hopper-v5 medium data, a fixed seed's
score at 5k gradient steps.

The tiny datasets (conftest.OFFLINE_DATASETS) live in a temporary MINARI_DATASETS_PATH set for the test process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BUILT_DATASETS, load_algo, needs_built_dataset, run_main, run_offline_with_statistics

td3_bc = load_algo("td3_bc")


def test_lambda_by_hand_and_without_gradient():
    q = torch.tensor([2.0, -4.0, 6.0], requires_grad=True)
    lmbda = td3_bc.td3_bc_lambda(q, alpha=2.5)
    assert lmbda.item() == pytest.approx(2.5 / 4.0)  # mean |Q| = (2 + 4 + 6) / 3 = 4
    assert not lmbda.requires_grad  # detached: lambda is a scale, not something the actor optimises
    # the point of lambda: the Q term, lambda * mean(Q), does not change when the rewards (so Q) are scaled
    for c in (0.01, 1.0, 300.0):
        scaled = c * q.detach()
        assert (td3_bc.td3_bc_lambda(scaled, 2.5) * scaled.mean()).item() == pytest.approx(2.5 * (4 / 3) / 4)


def test_actor_loss_by_hand():
    q = torch.tensor([2.0, -4.0, 6.0], requires_grad=True)
    pi = torch.tensor([[0.5, -1.0], [0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.5]])
    mse = (0.25 + 1.0 + 1.0 + 0.0 + 0.0 + 0.25) / 6
    loss = td3_bc.td3_bc_actor_loss(q, pi, a, alpha=2.5, bc=True)
    assert loss.item() == pytest.approx(-(2.5 / 4.0) * (4.0 / 3.0) + mse)
    loss.backward()
    # dL/dQ_i = -lambda / N (lambda held constant); dL/dpi = 2 (pi - a) / (N * act_dim)
    torch.testing.assert_close(q.grad, torch.full((3,), -(2.5 / 4.0) / 3))
    torch.testing.assert_close(pi.grad, 2 * (pi.detach() - a) / 6)
    # --no-bc: TD3's own loss, -mean Q, whatever alpha is
    for alpha in (0.0, 2.5):
        assert td3_bc.td3_bc_actor_loss(q, pi, a, alpha=alpha, bc=False).item() == pytest.approx(-4.0 / 3.0)


def test_alpha_zero_is_pure_behaviour_cloning_not_td3():
    """alpha = 0: the actor's gradient is behaviour cloning's exactly (the Q term is gone), whereas --no-bc's is
    the deterministic policy gradient through Q1 and no BC at all."""
    torch.manual_seed(0)
    actor = td3_bc.BCPolicy(obs_dim=3, act_dim=2, hidden_sizes=(8,), discrete=False, action_low=[-1, -2], action_high=[1, 2])
    critic = td3_bc.TwinQCritic(3, 2, (8,))
    obs, a = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1

    def actor_grads(alpha: float, bc: bool) -> list[torch.Tensor]:
        actor.zero_grad()
        pi = actor(obs)
        td3_bc.td3_bc_actor_loss(critic.q1(obs, pi), pi, a, alpha, bc).backward()
        return [p.grad.clone() for p in actor.parameters()]

    actor.zero_grad()
    torch.nn.functional.mse_loss(actor(obs), a).backward()
    bc_grads = [p.grad.clone() for p in actor.parameters()]
    actor.zero_grad()
    (-critic.q1(obs, actor(obs)).mean()).backward()
    td3_grads = [p.grad.clone() for p in actor.parameters()]
    for got, want in zip(actor_grads(0.0, True), bc_grads, strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(actor_grads(2.5, False), td3_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert any(not torch.allclose(g, b) for g, b in zip(actor_grads(2.5, True), bc_grads, strict=True))


def test_discounted_returns_to_go_by_hand():
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    episode = np.array([0, 0, 0, 1, 1])
    g = td3_bc.discounted_returns_to_go(rewards, episode, gamma=0.5)
    # episode 0: G_2 = 3, G_1 = 2 + 0.5 * 3, G_0 = 1 + 0.5 * 3.5; episode 1 starts anew: G_4 = 20, G_3 = 10 + 10
    np.testing.assert_allclose(g, [2.75, 3.5, 3.0, 20.0, 20.0])


def test_normalized_score_is_minaris_times_100(offline_datasets):
    import minari

    dataset = minari.load_dataset("tiny/pendulum-random-v0")  # reference returns -1200 / 0
    returns = [-900.0, -300.0]
    expected = 100 * float(np.mean(minari.get_normalized_score(dataset, np.array(returns))))
    assert expected == pytest.approx(100 * (-600.0 + 1200.0) / 1200.0)
    meta = dataset.storage.metadata
    assert td3_bc.normalized_score(returns, meta["ref_min_score"], meta["ref_max_score"]) == pytest.approx(expected)


def test_checkpoint_carries_the_statistics_and_the_networks(offline_datasets, tmp_path):
    import minari

    out, ckpt = run_offline_with_statistics(td3_bc, "tiny/pendulum-random-v0", tmp_path)
    data = td3_bc.load_transitions(minari.load_dataset("tiny/pendulum-random-v0"))
    assert ckpt["env_id"] == "Pendulum-v1"
    assert out["data_return_to_go"] == pytest.approx(
        td3_bc.discounted_returns_to_go(data["rewards"], data["episode"], 0.99).mean())
    critic = td3_bc.TwinQCritic(3, 1, (8,))  # Pendulum: 3 state features, 1 action
    critic.load_state_dict(ckpt["critic"])
    assert np.isfinite(out["q_values"])


def test_resume_across_actor_updates(offline_datasets, tmp_path):
    """The default policy delay (2): a run resumed from its step-20 checkpoint (10 actor steps in) ends with the
    very tensors of the run never interrupted (actor, critics, targets, both Adam states)."""
    base = ["--dataset-id", "tiny/pendulum-random-v0", "--total-updates", "40", "--eval-every", "40",
            "--eval-episodes", "1", "--hidden-sizes", "16", "--batch-size", "32", "--save-model"]
    full = run_main(td3_bc, [*base, "--checkpoint-every", "20", "--keep-checkpoints", "2"], tmp_path / "full")
    ckpt_20 = next((tmp_path / "full" / full["run_dir"]).glob("checkpoint_20.pt"))
    resumed = run_main(td3_bc, [*base, "--resume", str(ckpt_20)], tmp_path / "cut")
    a = torch.load(tmp_path / "full" / full["model_path"], weights_only=True)
    b = torch.load(tmp_path / "cut" / resumed["model_path"], weights_only=True)
    for key in ("model", "critic", "actor_target", "critic_target"):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=0, atol=0)
    for key in ("actor_optimizer", "critic_optimizer"):
        for i, state in a[key]["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(b[key]["state"][i][name], value, rtol=0, atol=0)
    assert a["global_step"] == b["global_step"] == 40


# seed 1 measured 36.5 at 5k gradient steps (in its 50k run of ./run_all.sh offline, whose evaluation at 5k is this
# run's: same seed, same sampler); 35 is above bc.py's best on the same data at 50k (33.2 +- 0.4, 3 seeds) and the
# data's own 32.2 (benchmark_results/offline.md; the datasets of another machine differ: datasets.md)
THRESHOLD = 35.0


@pytest.mark.slow
@needs_built_dataset("onefile/hopper/medium-v0")
def test_hopper_medium_beats_behaviour_cloning(tmp_path):
    """This collection's Hopper-v5 medium data (1027 mean return, 32.2 normalised; bc.py's last 31.9, best 33.2 at
    50k gradient steps): td3_bc.py seed 1, 5k gradient steps, 10 evaluation episodes, scores >= THRESHOLD."""
    out = run_main(td3_bc, ["--dataset-id", "onefile/hopper/medium-v0", "--total-updates", "5000",
                            "--eval-every", "5000"], tmp_path, env={"MINARI_DATASETS_PATH": BUILT_DATASETS})
    assert out["normalized_score_last"] >= THRESHOLD, out
