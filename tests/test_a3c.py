"""a3c.py: the shared optimisers against torch.optim, the n-step returns and the loss against
independent calculations, a run that proves several worker processes wrote into the shared model, the long-run
form with several workers (a signal stops them all, a worker's NaN stops the run), and a learning regression."""

from __future__ import annotations

import math
import multiprocessing
import os
import shlex
import signal

import gymnasium as gym
import pytest
import torch
from conftest import assert_one_line_exit_2, load_algo, run_main, scalars
from toy_envs import register_nan_at

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
    # a checkpoint's copy of the statistics goes back in place: still shared, the same numbers
    saved = opt.state_dict()
    other = a3c.SharedRMSprop(mine, 0.99, 1e-5) if kind == "rmsprop" else a3c.SharedAdam(mine, 1e-5)
    other.load_state_dict(saved)
    restored = other.square_avg if kind == "rmsprop" else [*other.exp_avg, *other.exp_avg_sq, other.step_count]
    assert all(t.is_shared() and torch.equal(t, u) for t, u in zip(restored, state, strict=True))


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


class SignalParentAt(gym.Wrapper):
    """In a worker process, the `at`-th step sends SIGINT to the main process (its parent), once over all
    workers and runs (`flag`, a file, is created by the one that sends it): a signal at a point of the training
    that does not depend on the machine's speed."""

    def __init__(self, env: gym.Env, at: int, flag: str, test_pid: int):
        super().__init__(env)
        self.at, self.flag, self.test_pid, self.steps = at, flag, test_pid, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at and os.getppid() == self.test_pid:  # a worker of a run in the test process
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(self.test_pid, signal.SIGINT)
        return self.env.step(action)


def test_a_signal_stops_every_worker_and_the_run_resumes(tmp_path, capsys):
    """Two workers; SIGINT reaches the main process mid-run: it stops both workers, writes one checkpoint of the
    shared state, exits 130 with the resume command; that command finishes the run at exactly --total-timesteps
    in a new run directory whose steps continue the old ones."""
    env_id = "SignalParentAt200-CartPole-v0"
    gym.register(env_id, entry_point=lambda **kw: SignalParentAt(gym.make("CartPole-v1"), **kw), max_episode_steps=500,
                 kwargs={"at": 200, "flag": str(tmp_path / "signalled"), "test_pid": os.getpid()})
    try:
        argv = ["--env-id", env_id, "--num-workers", "2", "--total-timesteps", "1500", "--eval-episodes", "1",
                "--optimizer", "adam"]
        with pytest.raises(SystemExit) as exit_info:
            run_main(a3c, argv, tmp_path)
        assert exit_info.value.code == 130
        assert not multiprocessing.active_children(), "the workers outlived the run"
        ckpts = list((tmp_path / "runs").glob("*/checkpoint_*.pt"))
        assert len(ckpts) == 1
        ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=True)
        assert 200 < ckpt["global_step"] < 1500 and not ckpt["envs"]["resumable"]
        assert int(ckpt["optimizer"]["step_count"]) > 0
        line = next(line for line in capsys.readouterr().err.splitlines() if "resume with: " in line)
        command = shlex.split(line.split("resume with: ")[1])
        assert (tmp_path / command[command.index("--resume") + 1]).resolve() == ckpts[0].resolve()
        resumed = run_main(a3c, command[2:], tmp_path)
        assert resumed["global_step"] == 1500 and all(n > 0 for n in resumed["worker_updates"])
        after = scalars(tmp_path / resumed["run_dir"])
        after.pop("eval/episodic_return")
        assert min(s for values in after.values() for s, _ in values) > ckpt["global_step"]
    finally:
        del gym.registry[env_id]


def test_a_workers_nan_stops_the_run(tmp_path, capsys):
    """Two workers; one meets a NaN reward: it does not apply that update, the main process stops the other and
    keeps the (finite) shared state; one line, exit 3."""
    env_id = register_nan_at("CartPole-v1", 300, "reward")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(a3c, ["--env-id", env_id, "--num-workers", "2", "--total-timesteps", "3000", "--eval-episodes", "1"],
                 tmp_path)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 3 and len(lines) == 1 and lines[0].startswith("error: non-finite reward at step "), err
    step = int(lines[0].split("at step ")[1].split(";")[0].replace(",", ""))
    assert 300 < step < 3000, step  # each worker meets its NaN at its own 300th step
    assert not multiprocessing.active_children(), "the workers outlived the run"
    (last,) = list((tmp_path / "runs").glob("*/a3c_last_finite.pt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert a3c.load_model(str(last))[0] is not None
