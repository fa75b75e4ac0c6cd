"""Smoke and bad-input tests for every file of algorithms/, discovered automatically.

A file without an entry in smoke_configs.SMOKE fails `test_every_file_has_a_smoke_config`, so a new
algorithm cannot land untested. For "deep" files the standard bad-input cases (unknown environment, an
action space the file cannot handle, a non-positive budget), --track under WANDB_MODE=offline and
--capture-video are added automatically.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALGORITHMS, ROOT, load_algo, run_algo
from smoke_configs import BAD_INPUT, SMOKE

FILES = sorted(p.name for p in ALGORITHMS.glob("*.py"))
DEEP = [f for f in FILES if f in SMOKE and SMOKE[f].kind == "deep"]


def fill(items: list[str], tmp: Path) -> list[str]:
    return [s.replace("{tmp}", str(tmp)) for s in items]


def scalar_tags(run_dir: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def check_one_line_error(proc, expected: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr[-2000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warn" not in line and "warn(" not in line]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error: "), f"the line does not start with 'error: ': {lines[0]!r}"
    assert expected.lower() in lines[0].lower(), f"{expected!r} not in {lines[0]!r}"


def test_every_file_has_a_smoke_config():
    missing = [f for f in FILES if f not in SMOKE]
    assert not missing, f"algorithms without a smoke configuration in tests/smoke_configs.py: {missing}"
    assert FILES, "no algorithm files found"


@pytest.mark.parametrize("name", FILES)
def test_smoke(name: str, tmp_path: Path):
    if name not in SMOKE:
        pytest.fail(f"{name} has no smoke configuration")
    cfg = SMOKE[name]
    if cfg.kind == "classic":
        proc = run_algo(name, *fill(cfg.args, tmp_path), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for f in fill(cfg.files, tmp_path):
            assert Path(f).is_file() and Path(f).stat().st_size > 0, f"{name} did not write {f}"
        return

    proc = run_algo(name, *cfg.args, "--save-model", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = glob.glob(str(tmp_path / "runs" / "*"))
    assert len(run_dirs) == 1, run_dirs
    missing = set(cfg.keys) - scalar_tags(run_dirs[0])
    assert not missing, f"event file lacks {sorted(missing)}"
    models = glob.glob(os.path.join(run_dirs[0], "*.pt"))
    assert len(models) == 1, models
    assert not glob.glob(os.path.join(run_dirs[0], "*.tmp")), "a temporary checkpoint was left behind"
    module = load_algo(name)
    env_id = next((cfg.args[i + 1] for i, a in enumerate(cfg.args) if a == "--env-id"), module.Args().env_id)
    returns = module.evaluate(models[0], env_id, eval_episodes=2, seed=0)  # loads with weights_only=True
    assert len(returns) == 2 and all(r == r for r in returns)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), name, models[0], "--episodes", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "over 1 episodes" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "name,variant",
    [(f, i) for f in FILES if f in SMOKE for i in range(len(SMOKE[f].variants))],
)
def test_smoke_variants(name: str, variant: int, tmp_path: Path):
    cfg = SMOKE[name]
    proc = run_algo(name, *fill(cfg.args + cfg.variants[variant], tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def bad_cases():
    cases = []
    for f in FILES:
        cfg = SMOKE.get(f)
        if cfg is not None and cfg.kind == "deep":
            cases.append((f, ["--env-id", "NoSuchEnv-v0"], "NoSuchEnv-v0"))
            cases.append((f, ["--total-timesteps", "0"], "total-timesteps"))
            cases.append((f, ["--total-timesteps", "-100"], "total-timesteps"))
            cases.append((f, ["--torch-threads", "0"], "torch-threads"))
            if cfg.wrong_space_env:
                cases.append((f, ["--env-id", cfg.wrong_space_env], cfg.wrong_space_env))
        if cfg is not None and cfg.kind == "classic":  # a figure path that cannot be written, before any work
            cases.append((f, ["--plot", "/proc/onefile-rl-missing/fig.png"], "cannot write"))
        for args, expected in BAD_INPUT.get(f, []):
            cases.append((f, args, expected))
    return cases


@pytest.mark.parametrize("name,args,expected", bad_cases(), ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_input(name: str, args: list[str], expected: str, tmp_path: Path):
    cfg = SMOKE[name]
    base = fill(cfg.args, tmp_path) if cfg.kind == "classic" else []
    proc = run_algo(name, *base, *fill(args, tmp_path), cwd=tmp_path)
    check_one_line_error(proc, expected)
    assert not (tmp_path / "runs").exists(), "a run directory was left behind"
    leftovers = [p for p in tmp_path.iterdir()]
    assert not leftovers, f"bad input left files behind: {leftovers}"


@pytest.mark.parametrize("name", DEEP)
def test_track_offline(name: str, tmp_path: Path):
    cfg = SMOKE[name]
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    proc = run_algo(name, *cfg.args, "--track", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert runs, f"no offline W&B run under {tmp_path / 'wandb'}"
    assert glob.glob(os.path.join(runs[0], "*.wandb")), "the offline run has no data file"


@pytest.mark.parametrize("name", DEEP)
def test_capture_video(name: str, tmp_path: Path):
    cfg = SMOKE[name]
    proc = run_algo(name, *cfg.args, "--capture-video", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = glob.glob(str(tmp_path / "videos" / "*" / "*.mp4"))
    assert videos and os.path.getsize(videos[0]) > 0, "no video written"


@pytest.mark.parametrize("name", ["ppo", "dqn", "c51", "trpo", "sac"])
def test_evaluate_tool_bad_checkpoints(name: str, tmp_path: Path):
    """tools/evaluate.py: a missing path, a file that is not a checkpoint, a dictionary without env_id, and a
    checkpoint in another file's format each get one line and exit 2, not a traceback."""
    import torch

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    no_env = tmp_path / "no_env.pt"
    torch.save({"model": {}}, no_env)
    foreign = tmp_path / "foreign.pt"  # keys no algorithm file writes
    torch.save({"env_id": "Pendulum-v1" if name == "sac" else "CartPole-v1", "something_else": torch.zeros(3)}, foreign)
    for path, expected in [(tmp_path / "missing.pt", "no checkpoint"), (junk, "not a readable checkpoint"),
                           (no_env, "no env_id"), (foreign, "does not fit")]:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), name, str(path), "--episodes", "1"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        check_one_line_error(proc, expected)


def test_compare_tool_parallel(tmp_path: Path):
    """tools/compare.py --cores: runs go in parallel, pinned, and the table keeps the (seed, run) order."""
    import pandas as pd

    cores = sorted(os.sched_getaffinity(0))[:2]
    cmd = [sys.executable, str(ROOT / "tools" / "compare.py"), "--env-id", "CartPole-v1", "--seeds", "1", "2",
           "--total-timesteps", "600", "--eval-episodes", "1", "--run", "dqn|dqn|--learning-starts 100",
           "--run", "reinforce|reinforce|", "--tag", "t", "--out", str(tmp_path), "--cores", *map(str, cores)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "t.csv")
    assert list(zip(rows["seed"], rows["label"], strict=True)) == [(1, "dqn"), (1, "reinforce"), (2, "dqn"), (2, "reinforce")]
    assert (rows["steps"] >= 600).all()
    assert f"each pinned to one of CPUs {cores}" in (tmp_path / "t.md").read_text()
    bad = subprocess.run(cmd[:-len(cores)] + ["99999"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "--cores" in bad.stderr.splitlines()[-1], bad.stderr  # argparse: usage, then the error


def test_curve_stats_by_hand(tmp_path: Path):
    """tools/curve_stats.py: the step-weighted mean return and the first step of a 20-episode mean >= threshold."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    import curve_stats

    # episodes end at steps 10, 30, 60 with returns 1, 2, 3 (given unsorted); run length 100:
    # (1 * 20 + 2 * 30 + 3 * 40) / 90
    assert curve_stats.mean_return_over_run(np.array([30, 10, 60]), np.array([2.0, 1.0, 3.0]), 100) == 200 / 90
    steps = list(range(1, 41))  # 40 episodes, one step each: returns 0 for the first 25, then 10
    rets = [0.0] * 25 + [10.0] * 15
    # the window of 20 episodes ending at episode k (1-based) averages 10 * (k - 25) / 20: >= 5 first at k = 35
    assert curve_stats.steps_to_threshold(np.array(steps), np.array(rets), 5.0) == 35
    assert curve_stats.steps_to_threshold(np.array(steps), np.array(rets), 9.0) is None
    (tmp_path / "x.csv").write_text("label,seed,steps,train_time,sps,eval_mean,eval_std\na,1,40,1,1,0,0\n")
    (tmp_path / "x_curves.csv").write_text("label,seed,step,seconds,return\n" +
                                           "".join(f"a,1,{s},0,{r}\n" for s, r in zip(steps, rets, strict=True)))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "curve_stats.py"), str(tmp_path / "x_curves.csv"),
                           "--threshold", "5", "--out", str(tmp_path / "x_speed.md")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| a | " in proc.stdout and "| 35 ± 0 |" in proc.stdout
    assert (tmp_path / "x_speed.md").read_text().startswith("### x: learning speed")
    (tmp_path / "y.csv").write_text("a,b\n1,2\n")  # a file pair without compare.py's columns
    (tmp_path / "y_curves.csv").write_text("a,b\n1,2\n")
    for path in (tmp_path / "y_curves.csv", tmp_path / "missing_curves.csv"):
        bad = subprocess.run([sys.executable, str(ROOT / "tools" / "curve_stats.py"), str(path), "--threshold", "5"],
                             capture_output=True, text=True)
        check_one_line_error(bad, "error:")
