"""--async-envs: the environments step in AsyncVectorEnv's worker processes, with the same results as the default
SyncVectorEnv for the same seed (the same TensorBoard scalars, charts/SPS aside, and the same final parameters);
Ctrl-C stops the run as without it (exit 130, a checkpoint) and leaves no worker process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import load_algo, run_main, scalars
from smoke_configs import SMOKE

# the files with --async-envs, and the options that keep each pair of runs to a second or two
ASYNC: dict[str, list[str]] = {
    "ppo.py": ["--total-timesteps", "256"],
    "ppo_distributed.py": ["--total-timesteps", "256"],
    "a2c.py": ["--total-timesteps", "200"],
    "trpo.py": ["--norm-obs", "--norm-reward"],
    "ppo_continuous_action.py": [],  # 2 x 200 steps: Pendulum truncates once per environment
    "ppo_atari.py": ["--total-timesteps", "64", "--num-steps", "32"],
    "dqn.py": ["--num-envs", "2", "--total-timesteps", "800", "--learning-starts", "400"],
    "dqn_atari.py": ["--num-envs", "2"],
    "ddpg.py": ["--num-envs", "2", "--total-timesteps", "440", "--learning-starts", "400"],
    "td3.py": ["--num-envs", "2", "--total-timesteps", "440", "--learning-starts", "400"],
    "sac.py": ["--num-envs", "2", "--total-timesteps", "440", "--learning-starts", "400", "--hidden-sizes", "32", "32"],
}
SLOW = {"ppo_atari.py", "dqn_atari.py"}


def final_parameters(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every network's parameters in a --save-model checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt.items() if k in ("model", "actor", "critic", "q_network", "qf1", "qf2")}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ASYNC])
def test_async_envs_give_the_synchronous_results(name: str, tmp_path: Path):
    module = load_algo(name)
    argv = [*SMOKE[name].args, *ASYNC[name], "--eval-episodes", "1", "--save-model"]
    runs = {mode: run_main(module, argv + extra, tmp_path / mode) for mode, extra in (("sync", []), ("async", ["--async-envs"]))}
    curves = {mode: {k: v for k, v in scalars(tmp_path / mode / run["run_dir"]).items() if k != "charts/SPS"}
              for mode, run in runs.items()}
    assert curves["sync"] == curves["async"]
    assert any(k.startswith("charts/episodic") for k in curves["sync"]) or name == "ppo_atari.py"
    params = {mode: final_parameters(tmp_path / mode / run["model_path"]) for mode, run in runs.items()}
    assert params["sync"].keys() and params["sync"].keys() == params["async"].keys()
    for key, state in params["sync"].items():
        for tensor, value in state.items():
            assert torch.equal(value, params["async"][key][tensor]), f"{key}.{tensor}"
    assert not multiprocessing.active_children()


def test_ctrl_c_stops_an_async_run_and_its_workers(tmp_path: Path, monkeypatch, capsys):
    """SIGINT to the main process and to every worker (Ctrl-C reaches the whole process group) during the 5th step:
    the workers ignore it, the run ends its update, writes a checkpoint, exits 130 and stops the workers."""
    module = load_algo("ppo.py")
    calls, workers = {"n": 0}, []
    real_step = gym.vector.AsyncVectorEnv.step

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == 5:
            workers.extend(self.processes)
            for pid in [os.getpid(), *(p.pid for p in self.processes)]:
                os.kill(pid, signal.SIGINT)
        return real_step(self, actions)

    monkeypatch.setattr(gym.vector.AsyncVectorEnv, "step", step)
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, [*SMOKE["ppo.py"].args, "--async-envs", "--total-timesteps", "2048"], tmp_path)
    assert exit_info.value.code == 130
    assert len(workers) == 2 and calls["n"] == 64, "the workers did not see the whole rollout through"
    assert "resume with:" in capsys.readouterr().err
    assert not any(p.is_alive() for p in workers) and not multiprocessing.active_children()
    (checkpoint,) = (tmp_path / "runs").glob("*/checkpoint_*.pt")
    assert torch.load(checkpoint, weights_only=True)["envs"] == {"resumable": False}
    monkeypatch.undo()
    # it resumes, with new episodes
    out = run_main(module, [*SMOKE["ppo.py"].args, "--async-envs", "--total-timesteps", "256", "--resume",
                            str(checkpoint)], tmp_path)
    assert out["global_step"] == 256 and "new episodes start" in capsys.readouterr().out
    assert not multiprocessing.active_children()


def test_a_synchronous_checkpoint_resumes_with_async_envs(tmp_path: Path, capsys):
    """The environments' saved state cannot be put back into worker processes: the resumed run starts new episodes."""
    module = load_algo("ppo.py")
    first = run_main(module, [*SMOKE["ppo.py"].args, "--total-timesteps", "128", "--save-model"], tmp_path)
    assert torch.load(tmp_path / first["model_path"], weights_only=True)["envs"]["resumable"]
    out = run_main(module, [*SMOKE["ppo.py"].args, "--async-envs", "--total-timesteps", "256", "--resume",
                            first["model_path"]], tmp_path)
    assert out["global_step"] == 256 and "new episodes start" in capsys.readouterr().out
    assert not multiprocessing.active_children()
