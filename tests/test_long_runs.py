"""Long runs, the same form in every deep file: a signal stops a run at an update boundary with a checkpoint
(exit 130 for SIGINT), the checkpoint loads with weights_only=True, acts, and resumes in a new run directory up to
--total-timesteps; a NaN observation or reward stops the run at that step (exit 3) with a loadable
*_last_finite.pt; the same seed gives the same TensorBoard scalars (charts/SPS aside).

The default test command runs these for ppo.py, dqn.py and sac.py; `pytest -m slow` (and `run_all.sh slow`) runs
them for every deep file. A new deep file adds an entry to LONG (a test fails until it does). Offline files (trained
on a dataset, no environment step) have the same cases counted in gradient steps, configured in OFFLINE.

Signals are sent from inside the run, on a chosen call of the vector environment's step(), so that where the
run stops does not depend on the machine's speed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import tyro
from conftest import assert_one_line_exit_2, load_algo, run_main, scalars
from smoke_configs import SMOKE
from toy_envs import register_nan_at


@dataclass
class LongRun:
    args: list[str]
    """the run's options (added to the file's smoke options): a few updates, at most a few seconds"""
    interrupt_at: int
    """SIGINT arrives during this call of the vector environment's step() (mid-training)"""
    nan_base: str
    """the environment the NaN test wraps (the file's own kind of environment)"""
    bitwise: bool = False
    """the resumed run ends with the very tensors of the uninterrupted one (networks, optimisers, generators)"""
    deterministic: bool = True
    """two runs with one seed write the same scalars (a3c's Hogwild workers are not, by design)"""
    default_layer: bool = False
    """also in the default test command (ppo, dqn, sac); the others run in the slow layer"""
    nan_quantity: str = "observation"
    """"reward" where observations are integers (Atari frames), which cannot hold a NaN"""
    nan_step_exact: bool = True
    """the NaN wrapper's step is the run's step; False for Atari, whose wrapper counts emulator frames under the
    file's frame skip and no-op/fire resets (the run then stops at or before at * num_envs)"""
    interrupt_after_s: float = 0.0
    """if set, SIGINT arrives this many seconds (at most half the uninterrupted run's training time) after the run
    starts, instead of on a step() call: a3c's environments step in worker processes, which the patch does not reach"""


LONG: dict[str, LongRun] = {
    "ppo.py": LongRun(args=["--total-timesteps", "1024"], interrupt_at=200, nan_base="CartPole-v1", bitwise=True,
                      default_layer=True),
    "ppo_distributed.py": LongRun(args=["--total-timesteps", "1024"], interrupt_at=200, nan_base="CartPole-v1",
                                  bitwise=True),
    "dqn.py": LongRun(args=["--save-buffer"], interrupt_at=1000, nan_base="CartPole-v1", bitwise=True,
                      default_layer=True),
    "c51.py": LongRun(args=["--save-buffer"], interrupt_at=1000, nan_base="CartPole-v1", bitwise=True),
    "rainbow.py": LongRun(args=["--save-buffer"], interrupt_at=1000, nan_base="CartPole-v1", bitwise=True),
    "dqn_atari.py": LongRun(args=["--save-buffer"], interrupt_at=280, nan_base="ALE/Breakout-v5", nan_quantity="reward",
                            nan_step_exact=False),
    "ddpg.py": LongRun(args=["--save-buffer"], interrupt_at=400, nan_base="Pendulum-v1", bitwise=True),
    "td3.py": LongRun(args=["--save-buffer"], interrupt_at=400, nan_base="Pendulum-v1", bitwise=True),
    "sac.py": LongRun(args=["--save-buffer", "--hidden-sizes", "32", "32", "--total-timesteps", "400"], interrupt_at=300,
                      nan_base="Pendulum-v1", bitwise=True, default_layer=True),
    "ppo_continuous_action.py": LongRun(args=["--total-timesteps", "800"], interrupt_at=150, nan_base="Pendulum-v1",
                                        bitwise=True),
    "ppo_atari.py": LongRun(args=["--total-timesteps", "640"], interrupt_at=100, nan_base="BreakoutNoFrameskip-v4",
                            nan_quantity="reward", nan_step_exact=False),
    "a2c.py": LongRun(args=["--total-timesteps", "800"], interrupt_at=200, nan_base="CartPole-v1", bitwise=True),
    "trpo.py": LongRun(args=["--total-timesteps", "512", "--norm-obs", "--norm-reward"], interrupt_at=100,
                       nan_base="CartPole-v1", bitwise=True),
    "reinforce.py": LongRun(args=["--total-timesteps", "1200"], interrupt_at=400, nan_base="CartPole-v1", bitwise=True),
    "actor_critic.py": LongRun(args=["--total-timesteps", "600"], interrupt_at=300, nan_base="CartPole-v1", bitwise=True),
    "a3c.py": LongRun(args=["--total-timesteps", "3000", "--num-workers", "1"], interrupt_at=600, nan_base="CartPole-v1",
                      deterministic=False, interrupt_after_s=1.0),
    "world_model.py": LongRun(args=["--save-buffer", "--total-timesteps", "400"], interrupt_at=300, nan_base="Pendulum-v1",
                              bitwise=True),
    "mbpo.py": LongRun(args=["--save-buffer", "--total-timesteps", "400", "--rollout-schedule", "100", "300", "1", "3"],
                       interrupt_at=300, nan_base="Pendulum-v1", bitwise=True),
    "dreamer.py": LongRun(args=["--save-buffer", "--total-timesteps", "400"], interrupt_at=300, nan_base="CartPole-v1",
                          bitwise=True),
    "muzero.py": LongRun(args=["--save-buffer", "--total-timesteps", "400"], interrupt_at=60, nan_base="CartPole-v1",
                         bitwise=True),
    "gail.py": LongRun(args=["--total-timesteps", "512", "--airl", "--disc-obs-norm", "policy"], interrupt_at=100, nan_base="CartPole-v1",
                       bitwise=True),
    "preference_reward.py": LongRun(args=["--total-timesteps", "800"], interrupt_at=150, nan_base="Pendulum-v1",
                                    bitwise=True),
}


def files_of(kind: str) -> list[str]:
    return sorted(name for name, cfg in SMOKE.items() if cfg.kind == kind)


def deep_files() -> list[str]:
    return files_of("deep")


def layer(names, configs: dict | None = None) -> list:
    """Each file once: in the default layer if its config (LONG, or OFFLINE for offline files) says so, else marked
    slow."""
    configs = LONG if configs is None else configs
    return [pytest.param(n) if n in configs and configs[n].default_layer else pytest.param(n, marks=pytest.mark.slow)
            for n in names]


def test_every_deep_file_has_a_long_run_config():
    missing = [n for n in deep_files() if n not in LONG]
    assert not missing, f"add these to LONG in tests/test_long_runs.py: {missing}"


def resume_as_printed(module, err: str, tmp_path: Path, full: dict, skip: tuple[str, ...] = ()) -> tuple[dict, ...]:
    """After a run in tmp_path/cut was interrupted (its stderr `err`): the checkpoint its last line names loads
    without unpickling code and its policy acts; the printed command resumes it to the uninterrupted run's
    (`full`) last step, in a new run directory whose scalars continue the old steps. Returns the checkpoint, the
    resumed run's result, and the scalars of the old and the new run directory (without the tags in `skip`, which are
    not indexed by step)."""
    line = next(line for line in err.splitlines() if "resume with: " in line)
    command = shlex.split(line.split("resume with: ")[1])
    ckpt_path = Path(command[command.index("--resume") + 1])
    ckpt_path = ckpt_path if ckpt_path.is_absolute() else tmp_path / "cut" / ckpt_path
    assert ckpt_path.is_file() and ckpt_path.name.startswith("checkpoint_"), line
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert len(module.evaluate(str(ckpt_path), ckpt["env_id"], 1, seed=0)) == 1
    resumed = run_main(module, command[2:], tmp_path / "cut")
    assert resumed["global_step"] == full["global_step"]
    cut_dirs = run_dirs(tmp_path / "cut")
    assert len(cut_dirs) == 2 and tmp_path / "cut" / resumed["run_dir"] == cut_dirs[1]
    before, after = scalars(cut_dirs[0]), scalars(cut_dirs[1])
    for tag in skip:
        before.pop(tag, None)
        after.pop(tag, None)
    assert max(s for values in before.values() for s, _ in values) <= ckpt["global_step"]
    assert min(s for values in after.values() for s, _ in values) > ckpt["global_step"]
    return ckpt, resumed, before, after


def assert_resumed_as_uninterrupted(tmp_path, full: dict, resumed: dict, before: dict, after: dict, skip: set) -> None:
    """The resumed run (tmp_path/cut) ends with the very tensors of the uninterrupted one (tmp_path/full), and its
    training curve, the old run directory's scalars (`before`) then the new one's (`after`), is the uninterrupted
    one's, tag by tag (charts/SPS, a wall-clock figure, and the tags in `skip` aside)."""
    a = torch.load(tmp_path / "full" / full["model_path"], map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "cut" / resumed["model_path"], map_location="cpu", weights_only=True)
    differ = tensors_equal({k: v for k, v in a.items() if k != "args"}, {k: v for k, v in b.items() if k != "args"})
    assert not differ, f"the resumed run ends elsewhere than the uninterrupted one: {differ[:10]}"
    whole, parts = scalars(tmp_path / "full" / full["run_dir"]), {}
    for part in (before, after):
        for tag, values in part.items():
            parts.setdefault(tag, []).extend(values)
    for tag in set(whole) - {"charts/SPS"} - skip:
        assert parts.get(tag) == whole[tag], f"{tag} differs after resuming"


def argv(name: str, *extra: str) -> list[str]:
    return [*SMOKE[name].args, *LONG[name].args, "--eval-episodes", "1", *extra]


def interrupt_on_step(monkeypatch, at: int) -> None:
    """Send this process SIGINT during the at-th call of any vector environment's step()."""
    calls = {"n": 0}
    real_step = gym.vector.SyncVectorEnv.step

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, actions)

    monkeypatch.setattr(gym.vector.SyncVectorEnv, "step", step)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "runs").iterdir(), key=lambda p: p.stat().st_mtime_ns)


def tensors_equal(a, b, where: str = "") -> list[str]:
    """Paths at which two nested checkpoints differ (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [where]
        return [d for k in a for d in tensors_equal(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in tensors_equal(x, y, f"{where}[{i}]")]
    return [] if a == b or (a != a and b != b) else [where]


@pytest.mark.parametrize("name", layer(deep_files()))
def test_interrupt_and_resume(name: str, tmp_path: Path, monkeypatch, capsys):
    module, cfg = load_algo(name), LONG[name]
    full = run_main(module, argv(name, "--save-model"), tmp_path / "full")

    timer = threading.Timer(min(cfg.interrupt_after_s, full["train_time"] / 2), os.kill, (os.getpid(), signal.SIGINT))
    if cfg.interrupt_after_s:
        timer.start()
    else:
        interrupt_on_step(monkeypatch, cfg.interrupt_at)
    with pytest.raises(SystemExit) as exit_info:
        try:
            run_main(module, argv(name, "--save-model"), tmp_path / "cut")
        finally:
            timer.cancel()
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert exit_info.value.code == 130, err[-2000:]
    # eval/episodic_return is indexed by episode here, not step
    ckpt, resumed, before, after = resume_as_printed(module, err, tmp_path, full, skip=("eval/episodic_return",))
    assert 0 < ckpt["global_step"] < full["global_step"], (ckpt["global_step"], full["global_step"])
    if cfg.bitwise:
        assert_resumed_as_uninterrupted(tmp_path, full, resumed, before, after, skip={"eval/episodic_return"})


@pytest.mark.parametrize("name", layer(deep_files()))
@pytest.mark.parametrize("quantity", ["observation", "reward", "last observation"])
def test_nan_stops_the_run(name: str, quantity: str, tmp_path: Path, capsys):
    """A NaN at step `at`; "last observation": the last one of an episode (its time limit is `at` steps), which
    comes in info["final_obs"] while the observation returned is the next episode's first."""
    module, cfg = load_algo(name), LONG[name]
    if quantity != "reward" and cfg.nan_quantity == "reward":
        pytest.skip(f"{name}'s observations are integers (images): a NaN cannot occur")
    if quantity == "last observation":
        at, quantity = 5, "observation"
        env_id = register_nan_at(cfg.nan_base, at, quantity, episode_steps=at)
    else:
        at = cfg.interrupt_at
        env_id = register_nan_at(cfg.nan_base, at, quantity)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, argv(name, "--env-id", env_id), tmp_path)
    err = capsys.readouterr().err
    assert exit_info.value.code == 3, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite " + quantity), err[-2000:]
    # every sub-environment meets its NaN on its own at-th step: the run stops at that vector step
    steps_per_call = int(SMOKE[name].args[SMOKE[name].args.index("--num-envs") + 1]) if "--num-envs" in SMOKE[name].args \
        else getattr(module.Args(), "num_envs", 1)
    if cfg.nan_step_exact:
        assert f"at step {at * steps_per_call:,};" in lines[0], lines[0]
    else:
        step = int(lines[0].split(" at step ")[1].split(";")[0].replace(",", ""))
        assert 0 < step <= at * steps_per_call and step % steps_per_call == 0, lines[0]
    (last,) = list((tmp_path / "runs").glob("*/*_last_finite.pt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    net, _ = module.load_model(str(last))
    for value in ckpt["model"].values():
        assert torch.isfinite(value.float()).all()
    assert net is not None


# ---- offline files: no environment step in training; the same cases counted in gradient steps ----


@dataclass
class OfflineRun:
    args: list[str]
    """the run's options (added to the file's smoke options): a few gradient steps, at most a few seconds"""
    interrupt_at: int
    """SIGINT arrives during this gradient step (the at-th call of torch.optim.Adam.step, the file's optimisers')"""
    nan_loss: str
    """the file's module-level loss function that the NaN test makes return NaN (its at-th call)"""
    default_layer: bool = False
    """also in the default test command; the others run in the slow layer"""


OFFLINE: dict[str, OfflineRun] = {
    "bc.py": OfflineRun(args=["--total-updates", "60", "--eval-every", "20"], interrupt_at=30, nan_loss="bc_loss",
                        default_layer=True),
    # interrupt_at counts Adam steps, the critic's and the actor's: with the policy delay at 25 the first 24 updates
    # step the critic alone, so the SIGINT of the 20th lands in gradient step 20 (tests/test_td3_bc.py resumes
    # across actor updates at the default delay)
    "td3_bc.py": OfflineRun(args=["--total-updates", "60", "--eval-every", "20", "--policy-frequency", "25"],
                            interrupt_at=20, nan_loss="twin_critic_loss", default_layer=True),
    "iql.py": OfflineRun(args=["--total-updates", "60", "--eval-every", "20"], interrupt_at=30,
                         nan_loss="expectile_loss"),
    "cql.py": OfflineRun(args=["--total-updates", "60", "--eval-every", "20"], interrupt_at=30,
                         nan_loss="importance_sampled_logsumexp"),
    "decision_transformer.py": OfflineRun(args=["--total-updates", "60", "--eval-every", "20"], interrupt_at=30,
                                          nan_loss="dt_loss"),
}


def offline_files() -> list[str]:
    return files_of("offline")


def offline_layer(names: list[str]) -> list:
    return layer(names, OFFLINE)


def offline_argv(name: str, *extra: str) -> list[str]:
    return [*SMOKE[name].args, *OFFLINE[name].args, "--eval-episodes", "1", *extra]


def test_every_offline_file_has_a_long_run_config():
    missing = [n for n in offline_files() if n not in OFFLINE]
    assert not missing, f"add these to OFFLINE in tests/test_long_runs.py: {missing}"


def interrupt_on_update(monkeypatch, at: int) -> None:
    """Send this process SIGINT during the at-th call of torch.optim.Adam.step (any optimiser of the run)."""
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize("name", offline_layer(offline_files()))
def test_offline_interrupt_and_resume(name: str, tmp_path: Path, monkeypatch, capsys):
    """SIGINT mid-training: exit 130 after a checkpoint that loads and acts; the printed command resumes it in a new
    run directory, and the resumed run ends with the very tensors and scalars of the uninterrupted one."""
    module, cfg = load_algo(name), OFFLINE[name]
    full = run_main(module, offline_argv(name, "--save-model"), tmp_path / "full")
    interrupt_on_update(monkeypatch, cfg.interrupt_at)
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, offline_argv(name, "--save-model"), tmp_path / "cut")
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert exit_info.value.code == 130, err[-2000:]
    ckpt, resumed, before, after = resume_as_printed(module, err, tmp_path, full)
    assert ckpt["global_step"] == cfg.interrupt_at < full["global_step"], (ckpt["global_step"], full["global_step"])

    assert "eval/episodic_return" in scalars(tmp_path / "full" / full["run_dir"])  # indexed by gradient step here
    assert_resumed_as_uninterrupted(tmp_path, full, resumed, before, after, skip=set())


INF_MEANINGFUL: dict[str, str] = {
    # option: what +infinity means where it is accepted (NaN is refused everywhere)
    "max_grad_norm": "no gradient clipping",
}


def float_options(module) -> list[str]:
    return [f.name for f in dataclasses.fields(module.Args) if "float" in str(f.type)]


def test_resume_refuses_what_does_not_fit(tmp_path: Path, capsys):
    """Another file's checkpoint, another environment, other network sizes, a finished step count: one line, exit 2."""
    ppo, dqn = load_algo("ppo"), load_algo("dqn")
    small = [*SMOKE["ppo.py"].args, "--eval-episodes", "1", "--save-model"]
    mine = tmp_path / run_main(ppo, small, tmp_path)["model_path"]
    other = tmp_path / "dqn" / run_main(dqn, [*SMOKE["dqn.py"].args, "--save-model"], tmp_path / "dqn")["model_path"]
    for extra, expected in ((["--resume", str(other)], "does not fit ppo.py"),
                            (["--resume", str(mine), "--env-id", "Acrobot-v1"], "trained on CartPole-v1"),
                            (["--resume", str(mine), "--hidden-size", "32", "--total-timesteps", "4096"], "other sizes"),
                            (["--resume", str(mine)], "--total-timesteps must be larger"),
                            (["--resume", str(tmp_path / "missing.pt")], "no checkpoint")):
        assert_one_line_exit_2(lambda extra=extra: run_main(ppo, [*small, *extra], tmp_path / "bad"), expected, capsys)
    assert not (tmp_path / "bad" / "runs").exists() or not any((tmp_path / "bad" / "runs").iterdir())


def test_second_signal_quits_at_once_leaving_the_last_checkpoint(tmp_path: Path, monkeypatch, capsys):
    """Two signals before the update boundary: exit at once (130), no new checkpoint, the periodic one intact."""
    ppo = load_algo("ppo")
    calls = {"n": 0}
    real_step = gym.vector.SyncVectorEnv.step

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == 200:  # mid-rollout, after the checkpoint at step 256 (2 envs x 128 calls)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, actions)

    monkeypatch.setattr(gym.vector.SyncVectorEnv, "step", step)
    with pytest.raises(SystemExit) as exit_info:
        run_main(ppo, argv("ppo.py", "--checkpoint-every", "256"), tmp_path)
    assert exit_info.value.code == 130
    files = sorted(p.name for p in (tmp_path / "runs").glob("*/checkpoint_*"))
    assert files == ["checkpoint_256.pt"], files
    assert ppo.load_model(str(next((tmp_path / "runs").glob("*/checkpoint_256.pt"))))[0] is not None


def test_sigterm_on_the_command_line(tmp_path: Path):
    """A real process: SIGTERM (a scheduler's preemption) gives exit 143, the checkpoint path and the resume command."""
    import subprocess
    import sys
    import time

    from conftest import ALGORITHMS

    proc = subprocess.Popen([sys.executable, str(ALGORITHMS / "ppo.py"), "--total-timesteps", "100000000",
                             "--log-every", "2048", "--checkpoint-every", "4096", "--keep-checkpoints", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/checkpoint_*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGTERM at step ") and "--resume runs/" in line, line
    assert "--total-timesteps 100000000" in line and "--checkpoint-every 4096" in line, line
    assert len(list(tmp_path.glob("runs/*/checkpoint_*.pt"))) == 1  # --keep-checkpoints 1
    assert not list(tmp_path.glob("runs/*/*.tmp"))


# ---- language-model files: optimiser steps, a model built in code (or loaded from a folder), no environment ----


# the offline files' fields, counted in optimiser steps (interrupt_at: the at-th call of Adam.step or AdamW.step)
LM: dict[str, OfflineRun] = {
    # 6 SL-CAI steps then 4 RL-CAI steps: the SIGINT of step 5 resumes across the change of stage (the RL pairs are made
    # by the resumed run); the NaN poisons SL-CAI's loss (the RL stage's: tests/test_constitutional_ai.py)
    "constitutional_ai.py": OfflineRun(args=["--total-updates", "10", "--sl-updates", "6", "--eval-every", "4",
                                             "--checkpoint-every", "3"], interrupt_at=5, nan_loss="sft_loss",
                                       default_layer=True),
    "dpo.py": OfflineRun(args=["--total-updates", "8", "--eval-every", "4", "--checkpoint-every", "3"], interrupt_at=5,
                         nan_loss="dpo_loss", default_layer=True),
    # two steps per generation batch: the SIGINT of step 5 lands mid-batch, which the checkpoint carries; the rule
    # reward gives an untrained model's groups some spread
    "grpo.py": OfflineRun(args=["--total-updates", "8", "--eval-every", "4", "--checkpoint-every", "3",
                                "--num-iterations", "2", "--task", "avoid-digit", "--reward-funcs", "rule"],
                          interrupt_at=5, nan_loss="grpo_loss", default_layer=True),
    # one optimiser step per rollout (--ppo-epochs 1), so that the SIGINT of the 5th AdamW step ends the 5th rollout
    "rlhf_ppo.py": OfflineRun(args=["--total-updates", "8", "--eval-every", "4", "--checkpoint-every", "3",
                                    "--ppo-epochs", "1", "--log-every", "1"], interrupt_at=5,
                              nan_loss="clipped_policy_loss", default_layer=True),
    "reward_model.py": OfflineRun(args=["--total-updates", "8", "--eval-every", "4", "--checkpoint-every", "3"],
                                  interrupt_at=5, nan_loss="bradley_terry_loss", default_layer=True),
    "sft.py": OfflineRun(args=["--total-updates", "8", "--eval-every", "4", "--checkpoint-every", "3"], interrupt_at=5,
                    nan_loss="sft_loss", default_layer=True),
}


def lm_files() -> list[str]:
    return files_of("lm")


def lm_argv(name: str, *extra: str) -> list[str]:
    return [*SMOKE[name].args, *LM[name].args, *extra]


@pytest.mark.parametrize("name", lm_files())
def test_lm_refuses_another_files_checkpoint(name: str, tmp_path: Path, capsys):
    """--resume with a checkpoint another file of the family wrote: one line, exit 2, nothing trained."""
    other = "reward_model" if name == "sft.py" else "sft"
    ckpt = tmp_path / "other.pt"
    torch.save({"algo": other, "task": "addition", "model_args": {}}, ckpt)
    assert_one_line_exit_2(lambda: run_main(load_algo(name), lm_argv(name, "--resume", str(ckpt)), tmp_path / "bad"),
                           f"does not fit {name}", capsys)


def test_every_lm_file_has_a_long_run_config():
    missing = [n for n in lm_files() if n not in LM]
    assert not missing, f"add these to LM in tests/test_long_runs.py: {missing}"


@pytest.mark.parametrize("name", layer(lm_files(), LM))
def test_lm_interrupt_and_resume(name: str, tmp_path: Path, monkeypatch, capsys):
    """SIGINT mid-training: exit 130 after a checkpoint that loads (weights_only) and answers; the printed command
    resumes it in a new run directory whose scalars continue the old steps, and the resumed run ends with the very
    weights (the saved Hugging Face folder) and scalars of the uninterrupted one."""
    from safetensors.torch import load_file

    module, cfg = load_algo(name), LM[name]
    full = run_main(module, lm_argv(name, "--save-model"), tmp_path / "full")
    interrupt_on_update(monkeypatch, cfg.interrupt_at)
    # torch wraps AdamW.step in a hook on the class itself when an AdamW is made: send it through the patched Adam.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *args, **kwargs: torch.optim.Adam.step(self, *args, **kwargs))
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, lm_argv(name, "--save-model"), tmp_path / "cut")
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert exit_info.value.code == 130, err[-2000:]
    line = next(line for line in err.splitlines() if "resume with: " in line)
    command = shlex.split(line.split("resume with: ")[1])
    ckpt_path = tmp_path / "cut" / command[command.index("--resume") + 1]
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == cfg.interrupt_at < full["global_step"], (ckpt["global_step"], full["global_step"])
    model, tokenizer = module.load_model(str(ckpt_path))
    prompts = [p for p, _ in module.heldout_pairs(ckpt["task"], ckpt["args"]["num_digits"], 2)]
    if hasattr(module, "score_responses"):  # a reward model scores responses rather than generating them
        assert len(module.score_responses(model, tokenizer, prompts, ["1", "2"], 2)) == 2
    else:
        assert len(module.evaluate_lm(model, tokenizer, ckpt["task"], prompts, 4, 2)["responses"]) == 2
    resumed = run_main(module, command[2:], tmp_path / "cut")
    assert resumed["global_step"] == full["global_step"]
    cut_dirs = run_dirs(tmp_path / "cut")
    assert len(cut_dirs) == 2 and tmp_path / "cut" / resumed["run_dir"] == cut_dirs[1]
    before, after = scalars(cut_dirs[0]), scalars(cut_dirs[1])
    assert max(s for values in before.values() for s, _ in values) <= ckpt["global_step"]
    assert min(s for values in after.values() for s, _ in values) > ckpt["global_step"]
    a = load_file(tmp_path / "full" / full["model_path"] / "model.safetensors")
    b = load_file(tmp_path / "cut" / resumed["model_path"] / "model.safetensors")
    differ = tensors_equal(a, b)
    assert not differ, f"the resumed run ends elsewhere than the uninterrupted one: {differ[:10]}"
    whole, parts = scalars(tmp_path / "full" / full["run_dir"]), {}
    for part in (before, after):
        for tag, values in part.items():
            parts.setdefault(tag, []).extend(values)
    for tag in set(whole) - {"charts/SPS"}:
        assert parts.get(tag) == whole[tag], f"{tag} differs after resuming"


# ---- multi-agent files: PettingZoo environments stepped by the file's own BatchedParallelEnv, environment steps ----


@dataclass
class MultiAgentRun:
    args: list[str]
    """the run's options (added to the file's smoke options): a few updates, at most a few seconds"""
    interrupt_at: int
    """SIGINT arrives during this call of the file's BatchedParallelEnv.step() (mid-training)"""
    default_layer: bool = False
    """also in the default test command; the others run in the slow layer"""


# a PettingZoo environment's state cannot be saved: a resumed run starts new episodes (no bitwise check)
MULTIAGENT: dict[str, MultiAgentRun] = {
    "maddpg.py": MultiAgentRun(args=["--total-timesteps", "300"], interrupt_at=60),
    "qmix.py": MultiAgentRun(args=["--total-timesteps", "300"], interrupt_at=60),
    "iql_marl.py": MultiAgentRun(args=["--total-timesteps", "300"], interrupt_at=60),
    "mappo.py": MultiAgentRun(args=["--total-timesteps", "300"], interrupt_at=60),
}


def multiagent_files() -> list[str]:
    return files_of("multiagent")


def multiagent_argv(name: str, *extra: str) -> list[str]:
    return [*SMOKE[name].args, *MULTIAGENT[name].args, "--eval-episodes", "1", *extra]


def poison_batched_step(monkeypatch, module, at: int, what: str) -> None:
    """The at-th call of the file's BatchedParallelEnv.step() (counting calls that end an episode when `what` is
    "last observation") returns a NaN: in the observations, the rewards, or the last observations of the episodes
    that ended (info["final_obs"], while the observations returned are the next episodes' first)."""
    calls = {"n": 0}
    real_step = module.BatchedParallelEnv.step

    def step(self, actions):
        obs, state, rewards, terminated, truncated, info = real_step(self, actions)
        if what != "last observation" or info["_final"].any():
            calls["n"] += 1
        if calls["n"] == at:
            if what == "observation":
                obs[0, 0, 0] = math.nan
            elif what == "reward":
                rewards[0, 0] = math.nan
            else:
                info["final_obs"][info["_final"].argmax(), 0, 0] = math.nan
        return obs, state, rewards, terminated, truncated, info

    monkeypatch.setattr(module.BatchedParallelEnv, "step", step)


def test_every_multiagent_file_has_a_long_run_config():
    missing = [n for n in multiagent_files() if n not in MULTIAGENT]
    assert not missing, f"add these to MULTIAGENT in tests/test_long_runs.py: {missing}"


@pytest.mark.parametrize("name", layer(multiagent_files(), MULTIAGENT))
def test_multiagent_interrupt_and_resume(name: str, tmp_path: Path, monkeypatch, capsys):
    """SIGINT during the at-th batched step: exit 130 after a checkpoint that loads (weights_only) and acts; the
    printed command resumes it to the uninterrupted run's last step in a new run directory whose scalars continue the
    old steps."""
    module, cfg = load_algo(name), MULTIAGENT[name]
    full = run_main(module, multiagent_argv(name, "--save-model"), tmp_path / "full")
    calls, real_step = {"n": 0}, module.BatchedParallelEnv.step

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == cfg.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, actions)

    monkeypatch.setattr(module.BatchedParallelEnv, "step", step)
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, multiagent_argv(name, "--save-model"), tmp_path / "cut")
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert exit_info.value.code == 130, err[-2000:]
    ckpt, resumed, _, _ = resume_as_printed(module, err, tmp_path, full, skip=("eval/episodic_return",))
    assert 0 < ckpt["global_step"] < full["global_step"], (ckpt["global_step"], full["global_step"])
    a = torch.load(tmp_path / "full" / full["model_path"], map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "cut" / resumed["model_path"], map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] and a["model"].keys() == b["model"].keys()


@pytest.mark.parametrize("name", layer(multiagent_files(), MULTIAGENT))
@pytest.mark.parametrize("quantity", ["observation", "reward", "last observation"])
def test_multiagent_nan_stops_the_run(name: str, quantity: str, tmp_path: Path, monkeypatch, capsys):
    """A NaN in the at-th batched step (for "last observation": in the last observation of the first episodes to
    end): one line naming the quantity and the step, exit 3, a finite and loadable *_last_finite.pt."""
    module, cfg = load_algo(name), MULTIAGENT[name]
    at = 1 if quantity == "last observation" else cfg.interrupt_at // 2
    poison_batched_step(monkeypatch, module, at, quantity)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, multiagent_argv(name), tmp_path)
    err = capsys.readouterr().err
    assert exit_info.value.code == 3, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite " + quantity.split()[-1]), err[-2000:]
    args = tyro.cli(module.Args, args=multiagent_argv(name))
    if quantity != "last observation":
        assert f"at step {at * args.num_envs:,};" in lines[0], lines[0]
    (last,) = list((tmp_path / "runs").glob("*/*_last_finite.pt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(value.float()).all() for value in ckpt["model"].values())
    assert module.load_model(str(last))[0] is not None


# ---- every kind that trains: bad values and paths before any work (in the default layer: they fail in
# milliseconds), and the same seed gives the same curves ----

def kind_argv(name: str) -> list[str]:
    """The file's short long-run arguments, for its kind."""
    return {"deep": argv, "offline": offline_argv, "lm": lm_argv, "multiagent": multiagent_argv}[SMOKE[name].kind](name)


TRAINING_FILES = deep_files() + offline_files() + lm_files() + multiagent_files()


@pytest.mark.parametrize("name", TRAINING_FILES)
def test_float_options_reject_nan_and_infinity(name: str, capsys):
    """`x <= 0` lets NaN through (every comparison with NaN is false); the checks are written `not x > 0`."""
    module = load_algo(name)
    base = tyro.cli(module.Args, args=list(SMOKE[name].args))
    options = float_options(module)
    assert options, f"{name} has no float option?"
    for option in options:
        for bad in (math.nan, math.inf, -math.inf):
            if bad == math.inf and option in INF_MEANINGFUL:
                continue
            flag = option.replace("_", "-")
            try:
                assert_one_line_exit_2(lambda o=option, b=bad: module.check_args(dataclasses.replace(base, **{o: b})), flag, capsys)
            except BaseException as error:
                raise AssertionError(f"--{flag} {bad}: {error}") from None


@pytest.mark.parametrize("name", TRAINING_FILES)
def test_unwritable_run_directory_is_bad_input(name: str, tmp_path: Path, capsys):
    (tmp_path / "runs").write_text("a file where the runs directory should be")
    module = load_algo(name)
    assert_one_line_exit_2(lambda: run_main(module, kind_argv(name), tmp_path), "cannot write the run directory", capsys)
    assert (tmp_path / "runs").is_file()


# the fewest logged keys a short run writes, by kind
FEWEST_KEYS = {"deep": 4, "offline": 2, "lm": 3, "multiagent": 4}


@pytest.mark.parametrize("name", layer(n for n in deep_files() if n not in LONG or LONG[n].deterministic)
                         + offline_layer(offline_files()) + layer(lm_files(), LM) + layer(multiagent_files(), MULTIAGENT))
def test_same_seed_same_curves(name: str, tmp_path: Path):
    module = load_algo(name)
    a = run_main(module, kind_argv(name), tmp_path / "a")
    b = run_main(module, kind_argv(name), tmp_path / "b")
    sa, sb = scalars(tmp_path / "a" / a["run_dir"]), scalars(tmp_path / "b" / b["run_dir"])
    sa.pop("charts/SPS", None)
    sb.pop("charts/SPS", None)
    assert sa.keys() == sb.keys() and len(sa) >= FEWEST_KEYS[SMOKE[name].kind]
    for tag in sa:
        assert sa[tag] == sb[tag], f"{tag} differs between two runs with one seed"


@pytest.mark.parametrize("name", offline_layer(offline_files()) + layer(lm_files(), LM))
def test_loss_nan_stops_the_run(name: str, tmp_path: Path, monkeypatch, capsys):
    """Offline and language-model files: the loss of gradient (optimiser) step `at` is NaN: one line, exit 3, after
    at - 1 finite steps, whose state *_last_finite.pt holds (finite, loadable)."""
    module, cfg = load_algo(name), (OFFLINE if SMOKE[name].kind == "offline" else LM)[name]
    at, calls, real_loss = cfg.interrupt_at, {"n": 0}, getattr(module, cfg.nan_loss)

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * math.nan if calls["n"] == at else loss

    monkeypatch.setattr(module, cfg.nan_loss, poisoned)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(module, kind_argv(name), tmp_path)
    err = capsys.readouterr().err
    assert exit_info.value.code == 3, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite ") and f"at step {at - 1:,};" in lines[0], err
    (last,) = list((tmp_path / "runs").glob("*/*_last_finite.pt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == at - 1
    assert all(torch.isfinite(value.float()).all() for value in ckpt["model"].values())
    assert module.load_model(str(last))[0] is not None
