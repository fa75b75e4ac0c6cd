"""Smoke and bad-input tests for every file of algorithms/, discovered automatically.

A file without an entry in smoke_configs.SMOKE fails `test_every_file_has_a_smoke_config`, so a new
algorithm cannot land untested. The runs happen in this process, through each file's `main`, with the
argument list its command line would take (conftest.run_main parses it with tyro, as the file's
`if __name__ == "__main__"` line does): a torch import and a file import per test, not per run.

- test_smoke: all of a file's smoke runs, one after another. For "deep" files: the base run with
  --save-model, --track (W&B offline) and --capture-video (main's returned keys, the event file's keys, the
  checkpoint, which loads and acts through the file's evaluate as tools/evaluate.py calls it, the offline
  W&B run, the video), then each variant. For "offline" files: the same on a tiny dataset (conftest's
  OFFLINE_DATASETS), without video, with the offline kind's returned keys. For "lm" files: the base run with
  --save-model and --track (the lm kind's returned keys, report after each evaluation, the event file's keys, the
  saved Hugging Face folder, which loads and answers through the file's load_model and evaluate_lm). For
  "multiagent" files (PettingZoo): the deep kind's checks, the returns being team returns. For "classic" files: the
  base run (its files written), then each variant.
- test_bad_input: all of a file's bad-input cases (the standard ones of its kind, then smoke_configs.BAD_INPUT):
  exit status 2 with one line on stderr, and nothing written.
- test_command_line_bad_input: the same rule through a real command line, once per kind (a subprocess),
  since a bad value that tyro itself rejects (not the file) would print its usage instead.
"""

from __future__ import annotations

import glob
import importlib.util
import inspect
import math
import os
import re
import subprocess
import sys
import traceback
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import (
    ALGORITHMS,
    DEEP_MAIN_KEYS,
    ROOT,
    assert_one_line_exit_2,
    load_algo,
    run_algo,
    run_main,
    scalars,
)
from smoke_configs import BAD_INPUT, SMOKE
from test_interface import KINDS

FILES = sorted(p.name for p in ALGORITHMS.glob("*.py"))
DEEP = [f for f in FILES if f in SMOKE and SMOKE[f].kind == "deep"]
CLASSIC = [f for f in FILES if f in SMOKE and SMOKE[f].kind == "classic"]
OFFLINE = [f for f in FILES if f in SMOKE and SMOKE[f].kind == "offline"]
OFFLINE_MAIN_KEYS = (*DEEP_MAIN_KEYS, "normalized_score_last", "normalized_score_best")
LM = [f for f in FILES if f in SMOKE and SMOKE[f].kind == "lm"]
LM_MAIN_KEYS = tuple(KINDS["lm"]["main_keys"])
MULTIAGENT = [f for f in FILES if f in SMOKE and SMOKE[f].kind == "multiagent"]
UNWRITABLE_PLOT = "/proc/onefile-rl-missing/fig.png"  # a figure path that cannot be written


def fill(items: list[str], tmp: Path) -> list[str]:
    return [s.replace("{tmp}", str(tmp)) for s in items]


def load_tool(name: str):
    """Import tools/<name>.py under a name of its own (tools/evaluate.py must not shadow another `evaluate`)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scalar_tags(run_dir: Path) -> set[str]:
    return set(scalars(run_dir))


@contextmanager
def collect(problems: list[str], label: str, capsys):
    """Run one step of a test; on failure note it (traceback and the run's last stderr) and go on to the next."""
    try:
        yield
    except (Exception, SystemExit, pytest.fail.Exception):
        err = capsys.readouterr().err
        problems.append(f"--- {label}\n{traceback.format_exc()[-3000:]}" + (f"stderr:\n{err[-1500:]}" if err else ""))


def test_every_file_has_a_smoke_config():
    missing = [f for f in FILES if f not in SMOKE]
    assert not missing, f"algorithms without a smoke configuration in tests/smoke_configs.py: {missing}"
    assert FILES, "no algorithm files found"
    assert not [f for f in SMOKE if f not in FILES], "smoke configurations of files that do not exist"


PROGRESS = re.compile(r"^step\s+([\d,]+)\s.*return\(last 20 episodes\)\s+(\S+)", re.M)


def check_reports(reports: list[tuple], stdout: str) -> None:
    """main(args, report) calls report(step, mean of the last 20 training returns) at every progress line that
    has a return (an episode ended before it), with exactly the printed step and value; none otherwise."""
    printed = [(int(s.replace(",", "")), v) for s, v in PROGRESS.findall(stdout) if v != "n/a"]
    assert printed, f"no progress line with a return in the smoke run's output:\n{stdout[-1500:]}"
    assert all(isinstance(s, int) and isinstance(v, float) and math.isfinite(v) for s, v in reports), reports
    assert [(s, f"{v:.1f}") for s, v in reports] == printed, (reports, printed)
    assert all(a[0] < b[0] for a, b in zip(reports, reports[1:], strict=False)), f"steps do not increase: {reports}"


def tracked_run(module, argv: list[str], cwd: Path) -> tuple[dict, list[tuple]]:
    """Run a file with W&B offline (its --track), recording every report(step, value) that main makes. Returns main's
    dict and the reports. The W&B service is torn down after the run (see check_deep_base)."""
    import wandb

    reports: list[tuple] = []
    recording = SimpleNamespace(Args=module.Args, main=partial(module.main, report=lambda *a: reports.append(a)))
    wandb.tensorboard.patch(root_logdir=str(cwd / "runs"))
    try:
        out = run_main(recording, argv, cwd, env={"WANDB_MODE": "offline", "WANDB_DIR": str(cwd), "WANDB_SILENT": "true"})
    finally:
        if wandb.run is not None:  # main failed between wandb.init and wandb.finish
            wandb.finish(exit_code=1)
        wandb.tensorboard.unpatch()
        wandb.teardown()
    return out, reports


def check_deep_base(name: str, module, cfg, cwd: Path, capsys) -> None:
    """The base run, with --save-model, --track (W&B offline) and --capture-video: main's returned keys, the
    event file's keys, the checkpoint (it loads and acts through tools/evaluate.py), the offline W&B run with
    the TensorBoard data, the video.

    wandb-core, given no TensorBoard root directory, waits 10 s for a second log directory before it infers
    one; wandb.tensorboard.patch(root_logdir=...) before the run (as wandb's own message advises) gives it,
    and the file's wandb.init(sync_tensorboard=True) then finds TensorBoard already patched. The W&B service
    resolves relative log directories in its own working directory, so it is torn down after the run: the
    next run, in another directory, starts its own.
    """
    import tyro

    args = tyro.cli(module.Args, args=fill(cfg.args, cwd))
    log_every = ["--log-every", str(max(1, args.total_timesteps // 4))]  # a few progress lines, so a few reports
    capsys.readouterr()
    out, reports = tracked_run(module, [*fill(cfg.args, cwd), *log_every, "--save-model", "--track", "--capture-video"],
                               cwd)
    missing = [key for key in DEEP_MAIN_KEYS if key not in out]
    assert not missing, f"main's returned dict lacks {missing} (the deep kind's interface, tools/algo_loader.py)"
    check_reports(reports, capsys.readouterr().out)
    assert len(out["eval_returns"]) == args.eval_episodes and all(r == r for r in out["eval_returns"])
    assert out["eval_return_mean"] == pytest.approx(sum(out["eval_returns"]) / len(out["eval_returns"]))
    assert out["global_step"] >= args.total_timesteps, (out["global_step"], args.total_timesteps)
    assert out["sps"] > 0 and out["train_time"] > 0
    run_dirs = list((cwd / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    assert (cwd / out["run_dir"]).resolve() == run_dirs[0].resolve(), out["run_dir"]
    missing = set(cfg.keys) - scalar_tags(run_dirs[0])
    assert not missing, f"event file lacks {sorted(missing)}"
    models = glob.glob(str(run_dirs[0] / "*.pt"))
    assert len(models) == 1, models
    assert out["model_path"] and (cwd / out["model_path"]).resolve() == Path(models[0]).resolve(), out["model_path"]
    assert not glob.glob(str(run_dirs[0] / "*.tmp")), "a temporary checkpoint was left behind"
    # the checkpoint loads (weights_only=True) and acts through the file's evaluate, called as tools/evaluate.py calls it
    assert list(inspect.signature(module.evaluate).parameters)[:4] == ["agent_or_path", "env_id", "eval_episodes", "seed"]
    capsys.readouterr()
    returns = load_tool("evaluate").main([name, models[0], "--episodes", "1"])
    assert len(returns) == 1 and returns[0] == returns[0] and "over 1 episodes" in capsys.readouterr().out
    wandb_runs = glob.glob(str(cwd / "wandb" / "offline-run-*"))
    assert len(wandb_runs) == 1, f"expected one offline W&B run under {cwd / 'wandb'}, got {wandb_runs}"
    assert glob.glob(os.path.join(wandb_runs[0], "*.wandb")), "the offline run has no data file"
    assert glob.glob(os.path.join(wandb_runs[0], "files", "**", "events.out.tfevents.*"), recursive=True), \
        "the offline run did not pick up the TensorBoard event file (sync_tensorboard)"
    videos = glob.glob(str(cwd / "videos" / "*" / "*.mp4"))
    assert videos and os.path.getsize(videos[0]) > 0, "no video written"


def evaluation_steps(every: int, total: int) -> list[int]:
    """The steps at which a file that counts updates evaluates: every `every`, and at the end."""
    return list(range(every, total + 1, every)) + ([total] if total % every else [])


def check_offline_base(name: str, module, cfg, cwd: Path, capsys) -> None:
    """An offline file's base run, on a tiny dataset of conftest.OFFLINE_DATASETS, with --save-model and --track
    (W&B offline): main's returned keys, report(gradient step, mean evaluation return) after each evaluation, the
    event file's keys, the checkpoint (it loads and acts through tools/evaluate.py), the offline W&B run."""
    import tyro

    args = tyro.cli(module.Args, args=fill(cfg.args, cwd))
    out, reports = tracked_run(module, [*fill(cfg.args, cwd), "--save-model", "--track"], cwd)
    missing = [key for key in OFFLINE_MAIN_KEYS if key not in out]
    assert not missing, f"main's returned dict lacks {missing} (the offline kind's interface)"
    evals = evaluation_steps(args.eval_every, args.total_updates)
    assert [s for s, _ in reports] == evals and all(isinstance(v, float) and math.isfinite(v) for _, v in reports), reports
    assert out["global_step"] == args.total_updates and out["sps"] > 0 and out["train_time"] > 0
    assert len(out["eval_returns"]) == args.eval_episodes and out["eval_return_mean"] == pytest.approx(reports[-1][1])
    run_dirs = list((cwd / "runs").iterdir())
    assert len(run_dirs) == 1 and (cwd / out["run_dir"]).resolve() == run_dirs[0].resolve(), run_dirs
    missing = set(cfg.keys) - scalar_tags(run_dirs[0])
    assert not missing, f"event file lacks {sorted(missing)}"
    models = glob.glob(str(run_dirs[0] / "*.pt"))
    assert len(models) == 1 and (cwd / out["model_path"]).resolve() == Path(models[0]).resolve(), models
    capsys.readouterr()
    returns = load_tool("evaluate").main([name, models[0], "--episodes", "1"])
    assert len(returns) == 1 and returns[0] == returns[0] and "over 1 episodes" in capsys.readouterr().out
    wandb_runs = glob.glob(str(cwd / "wandb" / "offline-run-*"))
    assert len(wandb_runs) == 1, f"expected one offline W&B run under {cwd / 'wandb'}, got {wandb_runs}"


def check_lm_base(name: str, module, cfg, cwd: Path, capsys) -> None:
    """A language-model file's base run with --save-model and --track (W&B offline): main's returned keys,
    report(optimiser step, held-out exact match) after each evaluation, the event file's keys, the Hugging Face folder
    (config, safetensors weights, tokenizer), which loads through load_model and answers through evaluate_lm."""
    import tyro

    args = tyro.cli(module.Args, args=fill(cfg.args, cwd))
    out, reports = tracked_run(module, [*fill(cfg.args, cwd), "--save-model", "--track"], cwd)
    missing = [key for key in LM_MAIN_KEYS if key not in out]
    assert not missing, f"main's returned dict lacks {missing} (the lm kind's interface)"
    evals = evaluation_steps(args.eval_every, args.total_updates)
    assert [s for s, _ in reports] == evals and all(isinstance(v, float) and 0 <= v <= 1 for _, v in reports), reports
    assert out["global_step"] == args.total_updates and out["sps"] > 0 and out["train_time"] > 0
    # a reward model (reward_model.py) reports its held-out pairwise accuracy, and its folder is a sequence-
    # classification model that scores responses (score_responses) rather than generating them
    reward = hasattr(module, "score_responses")
    reported = out["eval_pairwise_accuracy" if reward else "eval_exact_match"]
    assert reported == reports[-1][1] and 0 <= out["eval_rule_compliance"] <= 1
    run_dirs = list((cwd / "runs").iterdir())
    assert len(run_dirs) == 1 and (cwd / out["run_dir"]).resolve() == run_dirs[0].resolve(), run_dirs
    missing = set(cfg.keys) - scalar_tags(run_dirs[0])
    assert not missing, f"event file lacks {sorted(missing)}"
    folder = cwd / out["model_path"]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}, folder
    model, tokenizer = module.load_model(str(folder))
    prompts = [prompt for prompt, _ in module.heldout_pairs(args.task, args.num_digits, 2)]
    if reward:
        scores = module.score_responses(model, tokenizer, prompts, ["1", "2"], 2)
        assert len(scores) == 2 and all(math.isfinite(s) for s in scores), scores
    else:
        result = module.evaluate_lm(model, tokenizer, args.task, prompts, 4, 2)
        assert len(result["responses"]) == 2 and 0 <= result["exact_match"] <= 1
    wandb_runs = glob.glob(str(cwd / "wandb" / "offline-run-*"))
    assert len(wandb_runs) == 1, f"expected one offline W&B run under {cwd / 'wandb'}, got {wandb_runs}"


@pytest.mark.parametrize("name", FILES)
def test_smoke(name: str, tmp_path: Path, capsys):
    if name not in SMOKE:
        pytest.fail(f"{name} has no smoke configuration")
    cfg = SMOKE[name]
    module = load_algo(name)
    problems: list[str] = []
    if cfg.kind == "classic":
        with collect(problems, "base run", capsys):
            cwd = tmp_path / "base"
            run_main(module, fill(cfg.args, cwd), cwd)
            for f in fill(cfg.files, cwd):
                assert Path(f).is_file() and Path(f).stat().st_size > 0, f"{name} did not write {f}"
    elif cfg.kind == "offline":
        with collect(problems, "base run with --save-model --track", capsys):
            check_offline_base(name, module, cfg, tmp_path / "base", capsys)
    elif cfg.kind == "lm":
        with collect(problems, "base run with --save-model --track", capsys):
            check_lm_base(name, module, cfg, tmp_path / "base", capsys)
    else:
        with collect(problems, "base run with --save-model --track --capture-video", capsys):
            check_deep_base(name, module, cfg, tmp_path / "base", capsys)
    for i, variant in enumerate(cfg.variants):
        with collect(problems, f"variant {i}: {' '.join(variant)}", capsys):
            cwd = tmp_path / f"variant{i}"
            out = run_main(module, fill(cfg.args + variant, cwd), cwd)
            if cfg.kind in ("deep", "offline", "lm", "multiagent"):
                keys = {"deep": DEEP_MAIN_KEYS, "offline": OFFLINE_MAIN_KEYS, "lm": LM_MAIN_KEYS,
                        "multiagent": DEEP_MAIN_KEYS}[cfg.kind]
                missing = [key for key in keys if key not in out]
                assert not missing, f"main's returned dict lacks {missing}"
    assert not problems, f"{name}:\n" + "\n".join(problems)


def bad_cases(name: str) -> list[tuple[list[str], str]]:
    """The bad-input cases of one file: the standard ones of its kind, then its own from BAD_INPUT."""
    cfg = SMOKE[name]
    cases = []
    if cfg.kind == "deep":
        cases += [(["--env-id", "NoSuchEnv-v0"], "NoSuchEnv-v0"), (["--total-timesteps", "0"], "total-timesteps"),
                  (["--total-timesteps", "-100"], "total-timesteps"), (["--torch-threads", "0"], "torch-threads")]
        if cfg.wrong_space_env:
            cases.append((["--env-id", cfg.wrong_space_env], cfg.wrong_space_env))
    elif cfg.kind == "offline":  # a dataset that is not there (nothing is downloaded), a non-positive budget
        cases += [(["--dataset-id", "tiny/no-such-dataset-v0"], "no-such-dataset-v0"),
                  (["--total-updates", "0"], "total-updates"), (["--total-updates", "-100"], "total-updates"),
                  (["--torch-threads", "0"], "torch-threads")]
    elif cfg.kind == "lm":  # a model folder that is not there (nothing is downloaded), an unknown task, a bad budget
        cases += [(["--model-name-or-path", "no-such-model-folder"], "no-such-model-folder"),
                  (["--task", "no-such-task"], "no-such-task"), (["--total-updates", "0"], "total-updates"),
                  (["--total-updates", "-100"], "total-updates"), (["--torch-threads", "0"], "torch-threads")]
    elif cfg.kind == "multiagent":  # a Gymnasium id is no PettingZoo environment; a non-positive budget
        cases += [(["--env-id", "CartPole-v1"], "CartPole-v1"), (["--total-timesteps", "0"], "total-timesteps"),
                  (["--total-timesteps", "-100"], "total-timesteps"), (["--torch-threads", "0"], "torch-threads")]
    else:  # a figure path that cannot be written, found before any work
        cases.append((["--plot", UNWRITABLE_PLOT], "cannot write"))
    return cases + BAD_INPUT.get(name, [])


def bad_argv(name: str, args: list[str], cwd: Path) -> list[str]:
    """A bad case's command line: classic files get their smoke arguments first (the case's come last and win)."""
    cfg = SMOKE[name]
    return [*(fill(cfg.args, cwd) if cfg.kind == "classic" else []), *fill(args, cwd)]


@pytest.mark.parametrize("name", FILES)
def test_bad_input(name: str, tmp_path: Path, capsys):
    if name not in SMOKE:
        pytest.fail(f"{name} has no smoke configuration")
    module = load_algo(name)
    problems = []
    for i, (args, expected) in enumerate(bad_cases(name)):
        cwd = tmp_path / f"case{i}"
        cwd.mkdir()
        try:
            assert_one_line_exit_2(lambda cwd=cwd, args=args: run_main(module, bad_argv(name, args, cwd), cwd),
                                   expected, capsys)
            leftovers = list(cwd.iterdir())
            assert not leftovers, f"bad input left files behind: {leftovers}"
        except (Exception, pytest.fail.Exception) as e:
            problems.append(f"{' '.join(args)}: {type(e).__name__}: {e}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", [files[0] for files in (DEEP, CLASSIC, OFFLINE, LM, MULTIAGENT) if files])
def test_command_line_bad_input(name: str, tmp_path: Path):
    """Bad input through a real command line (`python algorithms/X.py ...`), once per kind: its first case."""
    args, expected = bad_cases(name)[0]
    proc = run_algo(name, *bad_argv(name, args, tmp_path), cwd=tmp_path)
    assert_one_line_exit_2(proc, expected)
    assert not list(tmp_path.iterdir()), "bad input left files behind"


def test_evaluate_tool_bad_checkpoints(tmp_path: Path, capsys):
    """tools/evaluate.py, for every deep file: a missing path, a file that is not a checkpoint, a dictionary
    without env_id, and a checkpoint of another file (or an older format) each get one line and exit 2, not a
    traceback (in-process; one case also through the command line). A file of another kind has no checkpoint."""
    import torch

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    no_env = tmp_path / "no_env.pt"
    torch.save({"model": {}}, no_env)
    foreign = tmp_path / "foreign.pt"  # keys no algorithm file writes
    torch.save({"env_id": "CartPole-v1", "something_else": torch.zeros(3)}, foreign)
    tool = load_tool("evaluate")
    for name in DEEP + MULTIAGENT:
        for path, expected in [(tmp_path / "missing.pt", "no checkpoint"), (junk, "not a readable checkpoint"),
                               (no_env, "no env_id"), (foreign, "does not fit")]:
            assert_one_line_exit_2(lambda name=name, path=path: tool.main([name, str(path), "--episodes", "1"]),
                                   expected, capsys)
    if CLASSIC:
        assert_one_line_exit_2(lambda: tool.main([CLASSIC[0], str(junk)]), "not a deep-kind file", capsys)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), DEEP[0], str(tmp_path / "missing.pt"),
                           "--episodes", "1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_one_line_exit_2(proc, "no checkpoint")


def test_evaluate_tool_first_reaching(monkeypatch, capsys):
    """tools/evaluate.py --first-reaching F: the last checkpoint is the reference; the others are evaluated in order
    until one reaches F of its mean, whose path is the last line (none reaching: the reference's). Bad input: F
    outside (0, 1], one checkpoint, several without F, a reference whose mean is not positive."""
    tool = load_tool("evaluate")
    means = {"c1": 10.0, "c2": 40.0, "c3": 90.0, "ref": 100.0, "neg": -5.0}
    seen = []

    class Fake:
        @staticmethod
        def load_model(path):
            return None, {"env_id": "CartPole-v1"}

        @staticmethod
        def evaluate(path, env_id, episodes, seed):
            seen.append(path)
            return [means[path] - 1.0, means[path] + 1.0]

    monkeypatch.setattr(tool, "load_algo", lambda stem: Fake)
    assert tool.main([DEEP[0], "c1", "c2", "c3", "ref", "--first-reaching", "0.3"]) == [40.0]
    assert seen == ["ref", "c1", "c2"], "evaluation goes on past the first checkpoint that reaches F"
    assert capsys.readouterr().out.splitlines()[-1] == "c2"
    assert tool.main([DEEP[0], "c1", "c2", "ref", "--first-reaching", "0.95"]) == [100.0]
    assert capsys.readouterr().out.splitlines()[-1] == "ref"
    for argv, expected in [(["c1", "ref", "--first-reaching", "0"], "--first-reaching"),
                           (["c1", "ref", "--first-reaching", "1.5"], "--first-reaching"),
                           (["ref", "--first-reaching", "0.3"], "at least two checkpoints"),
                           (["c1", "ref"], "several checkpoints need --first-reaching"),
                           (["c1", "neg", "--first-reaching", "0.3"], "not a level to reach")]:
        assert_one_line_exit_2(lambda argv=argv: tool.main([DEEP[0], *argv]), expected, capsys)


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
    # a malformed run stops before any run starts: an unclosed quote in ARGS, SB3 arguments that are not a JSON object
    for run in ["q|dqn|--seed '1", "s|sb3:dqn|zoo|[1, 2]"]:
        bad = subprocess.run([*cmd[:cmd.index("--run")], "--run", run, "--tag", "bad", "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert bad.returncode == 2 and "ARGS" in bad.stderr.splitlines()[-1], bad.stderr
    assert not (tmp_path / "bad.log").exists()


def test_benchmark_child_config():
    """tools/benchmark.py hands a child run one JSON object; what the parent builds is what the child reads."""
    import json

    benchmark = load_tool("benchmark")
    ours = benchmark.child_config("ours", "ppo", "CartPole-v1", 3, 1000, 2, algo_args="--num-envs 2 --exp-name 'a b'")
    assert json.loads(json.dumps(ours)) == {"side": "ours", "algo": "ppo", "env_id": "CartPole-v1", "seed": 3,
                                            "total_timesteps": 1000, "eval_episodes": 2,
                                            "algo_args": ["--num-envs", "2", "--exp-name", "a b"]}
    sb3 = benchmark.child_config("sb3", "dqn", "CartPole-v1", 1, 500, 1, sb3_config="default",
                                 sb3_args='{"batch_size": 32}', sb3_threads=1)
    assert sb3["sb3_args"] == {"batch_size": 32} and sb3["sb3_config"] == "default" and sb3["sb3_threads"] == 1
    for config, child in ((ours, benchmark.run_ours_child), (sb3, benchmark.run_sb3_child)):  # the keys fit the child
        assert set(config) - {"side"} == set(inspect.signature(child).parameters)


def test_curve_stats_by_hand(tmp_path: Path):
    """tools/curve_stats.py: the step-weighted mean return and the first step of a 20-episode mean >= threshold."""
    import numpy as np

    curve_stats = load_tool("curve_stats")

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
        assert_one_line_exit_2(bad, "error:")
