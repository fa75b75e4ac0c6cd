"""ppo_distributed.py: what data parallelism must keep of ppo.py.

- Two ranks (gloo, two spawned processes), each through the file's own collectives on its half of a fixed batch,
  end with the gradient that one process computes on the whole batch (advantage normalisation over all ranks on
  and off), while a rank-local normalisation would not; the all-rank approximate KL is one number on both ranks.
- A real `torchrun --standalone --nproc_per_node=2` run writes one run directory (rank 0's) and periodic
  checkpoints holding both ranks' generators and environments; a world size other than the checkpoint's is
  refused (one line, exit 2).
- Slow: resumed from its middle checkpoint over two ranks, a run ends with the very tensors (networks, optimiser,
  every rank's generators and environments) of the uninterrupted run.
- Slow: SIGTERM to torchrun mid-run: the ranks exit 143 together after rank 0 wrote the checkpoint and printed
  the torchrun command that resumes it; torchrun itself exits 1 (its own SignalException).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ALGORITHMS, assert_one_line_exit_2, load_algo, run_main
from test_long_runs import tensors_equal

FILE = ALGORITHMS / "ppo_distributed.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = ["--num-envs", "2", "--num-steps", "64", "--update-epochs", "2", "--num-minibatches", "2", "--eval-episodes", "1"]


def fixed_batch(n: int = 16) -> dict:
    """A batch whose two halves differ in the mean and scale of their advantages (so a rank-local
    normalisation cannot pass for the global one), with old log-probs and values away from the new ones."""
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(n, generator=g)
    adv[n // 2 :] = 3.0 * adv[n // 2 :] + 2.0
    return {"obs": torch.randn(n, 4, generator=g), "actions": torch.randint(0, 2, (n,), generator=g),
            "old_logprob_noise": 0.3 * torch.randn(n, generator=g), "old_values": torch.randn(n, generator=g),
            "returns": torch.randn(n, generator=g), "advantages": adv}


def loss_and_grads(module, agent, batch: dict, rows: slice, norm: str, average: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """main's minibatch step on batch[rows], through the file's functions: the advantage normalisation ("all"
    ranks, this rank's "local" part, or "off"), ppo_loss, backward, average_gradients. Returns the gradients
    and the approximate KL of these rows."""
    new_logprob, entropy, new_value = agent.evaluate_actions(batch["obs"][rows], batch["actions"][rows])
    old_logprob = new_logprob.detach() + batch["old_logprob_noise"][rows]
    adv = batch["advantages"][rows]
    if norm == "all":
        adv = module.normalize_advantages(adv)
    elif norm == "local":
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss, v_loss, logratio = module.ppo_loss(new_logprob, old_logprob, adv, new_value, batch["old_values"][rows],
                                                batch["returns"][rows], 0.2, True)
    loss = pg_loss - 0.01 * entropy.mean() + 0.5 * v_loss
    agent.zero_grad()
    loss.backward()
    if average:
        module.average_gradients(list(agent.parameters()), loss)
    return [p.grad.clone() for p in agent.parameters()], module.approx_kl(logratio)


def rank_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        module = load_algo("ppo_distributed")
        torch.manual_seed(0)
        agent = module.Agent(4, 2, 16)
        batch = fixed_batch()
        rows = slice(8 * rank, 8 * rank + 8)
        result = {}
        for norm in ("all", "off", "local"):
            result[norm], local_kl = loss_and_grads(module, agent, batch, rows, norm, average=True)
        result["local_kl"], result["global_kl"] = local_kl, module.global_mean(local_kl)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_average_to_the_whole_batch_gradient(tmp_path: Path):
    mp.start_processes(rank_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    module = load_algo("ppo_distributed")  # one process, no process group: the collectives are no-ops
    assert not dist.is_initialized()
    torch.manual_seed(0)
    agent = module.Agent(4, 2, 16)
    batch = fixed_batch()
    for norm in ("all", "off"):
        whole, _ = loss_and_grads(module, agent, batch, slice(0, 16), norm, average=True)
        for r in (0, 1):
            for g_rank, g_whole in zip(ranks[r][norm], whole, strict=True):
                torch.testing.assert_close(g_rank, g_whole, rtol=0, atol=1e-6)
        for g0, g1 in zip(ranks[0][norm], ranks[1][norm], strict=True):
            assert torch.equal(g0, g1), "the ranks would step differently"
    # the check can fail: normalising each rank's half on its own gives another gradient
    whole, whole_kl = loss_and_grads(module, agent, batch, slice(0, 16), "all", average=True)
    assert max((a - b).abs().max().item() for a, b in zip(ranks[0]["local"], whole, strict=True)) > 1e-3
    # KL: each rank's own estimate differs, the all-reduced one is the whole batch's, the same on both ranks
    assert abs(ranks[0]["local_kl"].item() - ranks[1]["local_kl"].item()) > 1e-4
    assert torch.equal(ranks[0]["global_kl"], ranks[1]["global_kl"])
    torch.testing.assert_close(ranks[0]["global_kl"], whole_kl, rtol=0, atol=1e-7)


def torchrun(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*TORCHRUN, str(FILE), *TINY, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def two_rank_run(cwd: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """1024 steps over 2 ranks (4 updates of 2 x 2 x 64 steps), a checkpoint every 512, the model saved."""
    cwd.mkdir()
    run = torchrun(cwd, "--total-timesteps", "1024", "--checkpoint-every", "512", "--save-model")
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (cwd / "runs").iterdir()  # rank 0 alone writes a run directory
    return run, run_dir


def test_torchrun_two_ranks(tmp_path: Path, capsys):
    run, run_dir = two_rank_run(tmp_path / "full")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in run_dir.glob("checkpoint_*.pt")) == ["checkpoint_1024.pt", "checkpoint_512.pt"]
    assert run.stdout.count("eval: ") == 1, run.stdout  # one logger: rank 0's
    middle = run_dir / "checkpoint_512.pt"
    ckpt = torch.load(middle, map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and len(ckpt["envs"]) == 2
    assert tensors_equal(ckpt["rng"][0], ckpt["rng"][1]), "each rank has generators of its own"
    assert all(e["resumable"] for e in ckpt["envs"])

    # one process cannot take over two ranks' state
    module = load_algo("ppo_distributed")
    assert_one_line_exit_2(lambda: run_main(module, [*TINY, "--total-timesteps", "1024", "--resume", str(middle)],
                                            tmp_path / "one"), "written by 2 ranks", capsys)


@pytest.mark.slow
def test_resume_over_two_ranks_bit_for_bit(tmp_path: Path):
    _, run_dir = two_rank_run(tmp_path / "full")
    (tmp_path / "cut").mkdir()
    shutil.copy(run_dir / "checkpoint_512.pt", tmp_path / "cut" / "middle.pt")
    resumed = torchrun(tmp_path / "cut", "--total-timesteps", "1024", "--save-model", "--resume", "middle.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from middle.pt at step 512" in resumed.stdout
    (resumed_dir,) = (tmp_path / "cut" / "runs").iterdir()
    a = torch.load(run_dir / "ppo_distributed.pt", map_location="cpu", weights_only=True)
    b = torch.load(resumed_dir / "ppo_distributed.pt", map_location="cpu", weights_only=True)
    differ = tensors_equal({k: v for k, v in a.items() if k != "args"}, {k: v for k, v in b.items() if k != "args"})
    assert not differ, f"the resumed run ends elsewhere than the uninterrupted one: {differ[:10]}"


@pytest.mark.slow
def test_sigterm_to_torchrun(tmp_path: Path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*TORCHRUN, str(FILE), *TINY, "--total-timesteps", "100000000", "--checkpoint-every", "2048",
                             "--keep-checkpoints", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/checkpoint_*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    # torchrun forwards SIGTERM to each worker, waits for them, then raises its own SignalException: status 1
    assert proc.returncode == 1 and "SignalException" in err, err[-3000:]
    assert "forcefully exiting" not in err, "torchrun had to kill a worker"
    line = next(line for line in err.splitlines() if line.startswith("stopped by SIGTERM at step "))
    command = shlex.split(line.split("resume with: ")[1])
    assert command[:3] == ["torchrun", "--standalone", "--nproc-per-node=2"], line
    ckpt_path = tmp_path / command[command.index("--resume") + 1]
    assert ckpt_path.is_file() and "--total-timesteps 100000000" in line and "--keep-checkpoints 1" in line, line
    step = torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"]
    assert step % (2 * 64 * 2) == 0 and f"at step {step:,};" in line  # an update boundary of the 2-rank job
    assert len(list(tmp_path.glob("runs/*/checkpoint_*.pt"))) == 1 and not list(tmp_path.glob("runs/*/*.tmp"))


NAN_ON_RANK_1 = '''
import os

import gymnasium as gym
import numpy as np


class NanOnRank1(gym.Wrapper):
    """CartPole whose 20th step returns a NaN observation on rank 1 only."""

    def __init__(self):
        super().__init__(gym.make("CartPole-v1"))
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == 20 and os.environ.get("RANK") == "1":
            obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


gym.register("NanOnRank1-v0", entry_point=NanOnRank1)
'''


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(tmp_path: Path):
    """Rank 1 alone meets a NaN observation (at its 20th vector step: global step 20 x 2 envs x 2 ranks = 80);
    every rank exits 3, rank 0 names it in one line and keeps the last finite state."""
    (tmp_path / "nan_on_rank_1.py").write_text(NAN_ON_RANK_1)
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([*TORCHRUN, str(FILE), *TINY, "--total-timesteps", "1024", "--env-id",
                          "nan_on_rank_1:NanOnRank1-v0"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode != 0, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: non-finite observation at step 80;"), run.stderr[-3000:]
    assert "exitcode  : 3" in run.stderr and "forcefully exiting" not in run.stderr, run.stderr[-3000:]
    (last,) = list(tmp_path.glob("runs/*/*_last_finite.pt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 80 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
