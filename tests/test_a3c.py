"""a3c.py: the shared optimisers against torch.optim, the n-step returns and the loss against
independent calculations, a run that proves several worker processes wrote into the shared model, and a
learning regression."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo

a3c = load_algo("a3c")


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_shared_optimisers_match_torch_optim(kind):
    torch.manual_seed(0)
    init = [torch.randn(5, 4), torch.randn(3)]
    mine = [t.clone().share_memory_() for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    if kind == "rmsprop":
        opt = a3c.SharedRMSprop(mine, alpha=0.99, eps=1e-5)
        ref_opt = torch.optim.RMSprop(ref, lr=1e-2, alpha=0.99, eps=1e-5)
    else:
        opt = a3c.SharedAdam(mine, eps=1e-5)
        ref_opt = torch.optim.Adam(ref, lr=1e-2, eps=1e-5)
    for _ in range(5):
        grads = [torch.randn_like(t) for t in init]
        before = [t.clone() for t in mine]
        updates = opt.step(grads, lr=1e-2)
        for m, b, u in zip(mine, before, updates, strict=True):
            torch.testing.assert_close(m - b, u)  # step() returns exactly what it added
        for r, g in zip(ref, grads, strict=True):
            r.grad = g.clone()
        ref_opt.step()
    for m, r in zip(mine, ref, strict=True):
        torch.testing.assert_close(m, r.detach(), rtol=1e-5, atol=1e-6)
    state = opt.square_avg if kind == "rmsprop" else [*opt.exp_avg, *opt.exp_avg_sq, opt.step_count]
    assert all(t.is_shared() for t in state), "the optimiser's state must be in shared memory"


def test_nstep_returns_cut_at_the_episode_end_of_a_worker_rollout():
    # a worker's rollout of 3 steps, gamma 0.9, rewards 1, 1, 1, V(last observation) = 5
    r = torch.ones(3, 1)
    nv = torch.full((3, 1), 5.0)
    zero, last = torch.zeros(3, 1), torch.tensor([[0.0], [0.0], [1.0]])
    cut_by_t_max = a3c.compute_nstep_returns(r, nv, zero, zero, 0.9).squeeze(1).tolist()
    truncated = a3c.compute_nstep_returns(r, nv, zero, last, 0.9).squeeze(1).tolist()
    terminated = a3c.compute_nstep_returns(r, nv, last, zero, 0.9).squeeze(1).tolist()
    boot = [1 + 0.9 + 0.81 + 0.729 * 5, 1 + 0.9 + 0.81 * 5, 1 + 0.9 * 5]
    assert cut_by_t_max == pytest.approx(boot)
    assert truncated == pytest.approx(boot)  # a time limit still bootstraps from V(final observation)
    assert terminated == pytest.approx([1 + 0.9 + 0.81, 1 + 0.9, 1.0])


def test_a3c_loss_is_a_sum_over_the_rollout_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    returns = torch.tensor([3.0, 1.0])  # advantages 2 and -1
    loss, pg, vl, ent = a3c.a3c_loss(logp, torch.tensor([0.6, 0.4]), value, returns, ent_coef=0.1, vf_coef=0.5)
    assert loss.item() == pytest.approx(-(2 * math.log(0.5) - math.log(0.25)) - 0.1 * 1.0 + 0.5 * (4 + 1))
    assert (pg.item(), vl.item(), ent.item()) == pytest.approx((-(2 * math.log(0.5) - math.log(0.25)) / 2, 2.5, 0.5))
    loss.backward()
    assert value.grad.tolist() == pytest.approx([0.5 * 2 * (1 - 3), 0.5 * 2 * (2 - 1)])  # advantage is a constant
    assert logp.grad.tolist() == pytest.approx([-2.0, 1.0])

def test_several_worker_processes_update_the_shared_model(tmp_path, monkeypatch):
    """Fails if the workers are not separate processes, if any worker did no update, or if an update did
    not reach the shared parameters: their total change must be the sum of what each worker applied, and
    no single worker's updates explain it."""
    monkeypatch.chdir(tmp_path)
    out = a3c.main(a3c.Args(num_workers=2, total_timesteps=1500, eval_episodes=1, seed=1))
    pids = out["worker_pids"]
    assert len(set(pids)) == 2 and os.getpid() not in pids and all(p > 0 for p in pids), pids
    assert all(n > 0 for n in out["worker_updates"]), out["worker_updates"]
    assert out["global_step"] >= 1500
    change = out["final_params"] - out["initial_params"]
    applied = out["applied_updates"]
    assert change.norm() > 0
    for w in range(2):
        assert applied[w].norm() > 0.05 * change.norm(), f"worker {w} hardly updated the model"
        assert (change - applied[w]).norm() > 0.05 * change.norm(), f"worker {w}'s updates alone explain the change"
    # Hogwild loses part of an update when two workers' read-modify-write of the same elements overlap; how
    # much depends on the load (a small fraction of the change). A worker whose
    # updates never reached the shared parameters would leave a gap of its whole share, so the bound is set
    # against the smaller share, not against an observed loss rate.
    gap = (change - applied.sum(0)).norm()
    assert gap <= 0.2 * min(applied[w].norm() for w in range(2)), (gap, [applied[w].norm() for w in range(2)])



@pytest.mark.parametrize("kw,expected", [
    ({"num_workers": 0}, "--num-workers"),
    ({"num_steps": -1}, "--num-steps"),
    ({"gamma": 1.5}, "--gamma"),
    ({"env_id": "CarRacing-v3"}, "flat Box observation"),
])
def test_bad_arguments_one_line_and_nothing_written(kw, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(lambda: a3c.main(a3c.Args(**kw)), expected, capsys)
    assert not list(tmp_path.iterdir())

@pytest.mark.slow
def test_learns_cartpole(tmp_path, monkeypatch):
    """The defaults (2 workers, 200k steps), seed 1. A3C is not reproducible run to run (the workers'
    interleaving), and its final policy varies a lot from run to run. So the test asks what every run did:
    the training return, averaged over 20 consecutive episodes, passed 150 at some point (a random policy
    scores about 22), and the final evaluation beats a random policy by far (> 60)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    out = a3c.main(a3c.Args(seed=1, total_timesteps=200_000))
    acc = EventAccumulator(out["run_dir"], size_guidance={"scalars": 0})
    acc.Reload()
    returns = [e.value for e in sorted(acc.Scalars("charts/episodic_return"), key=lambda e: e.step)]
    best = max(sum(returns[i : i + 20]) / 20 for i in range(len(returns) - 19))
    assert best >= 150, best
    assert out["eval_return_mean"] > 60, out["eval_returns"]
