"""Shared test helpers: import an algorithm file as a module, run it in-process or as a script, and check
bad input.

Every test module uses these, so that how a file is loaded or launched, and what "bad input" means, is
written once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from algo_loader import ALGORITHMS, DEEP_MAIN_KEYS, ROOT, load_algo  # noqa: E402,F401  (one loader for tests/ and tools/)


def run_algo(name: str, *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run algorithms/<name>.py in a fresh interpreter; returns the CompletedProcess (text mode)."""
    path = ALGORITHMS / f"{name.removesuffix('.py')}.py"
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One torch thread per test process, the algorithm files' default: with `-n 2` on two cores, more would
    oversubscribe them, and an OpenMP thread waiting for a busy core spins, burning CPU for nothing."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def algo():
    """`algo("ppo")` returns the imported module."""
    return load_algo


def run_main(module, argv: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run an algorithm in this process as its command line would: `module.main(tyro.cli(module.Args, args=argv))`,
    with `cwd` (created if needed) as the working directory and `env` added to the environment variables.
    Afterwards the working directory, the environment variables, sys.argv, torch's thread count and the
    SIGINT/SIGTERM handlers are what they were before, and matplotlib's figures are closed, so that one run
    leaves nothing behind for the next test in the process."""
    import torch
    import tyro

    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    saved_cwd, saved_env, saved_argv, threads = os.getcwd(), dict(os.environ), list(sys.argv), torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.chdir(cwd)
    os.environ.update(env or {})
    try:
        return module.main(tyro.cli(module.Args, args=list(argv)))
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        torch.set_num_threads(threads)
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for s, handler in handlers.items():
                signal.signal(s, handler)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar a run wrote: {tag: [(step, value), ...]} in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_one_line_exit_2(call, expected: str, capture=None) -> None:
    """Bad input: exit status 2 after exactly one stderr line that starts with 'error: ' and contains `expected`
    (case-insensitive), and no traceback. The one check of the rule, in both forms:
    - in-process: `call` is a callable (an algorithm's check_args or main, a tool's main) that must raise
      SystemExit(2); `capture` is pytest's capsys or capfd fixture (what was captured before the call is dropped);
    - command line: `call` is the subprocess.CompletedProcess of a finished run (text mode); `capture` unused.
    Lines of Python warnings that a subprocess prints to stderr are not counted."""
    if isinstance(call, subprocess.CompletedProcess):
        code, err = call.returncode, call.stderr
    else:
        capture.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            call()
        code, err = exit_info.value.code, capture.readouterr().err
    assert code == 2, f"exit status {code!r}, stderr:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip() and "Warn" not in line and "warn(" not in line]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err[-2000:]}"
    assert lines[0].startswith("error: "), f"the line does not start with 'error: ': {lines[0]!r}"
    assert expected.lower() in lines[0].lower(), f"{expected!r} not in {lines[0]!r}"


def assert_projection_matches_hand_cases(project_distribution) -> None:
    """A categorical (C51) projection, project_distribution(next_probs, rewards, dones, gamma, support) -> [B, n_atoms],
    must reproduce every hand-worked case of reference_math.categorical_projection_cases(), rows summing to 1.
    Shared by the files that implement the projection (c51.py, rainbow.py)."""
    import torch
    from reference_math import categorical_projection_cases

    for i, case in enumerate(categorical_projection_cases()):
        m = project_distribution(case["next_probs"], case["rewards"], case["dones"], case["gamma"], case["support"])
        torch.testing.assert_close(m, case["expected"], msg=lambda text, i=i: f"case {i}: {text}")
        torch.testing.assert_close(m.sum(dim=1), torch.ones(m.shape[0]))


def algorithm_of(nodeid: str) -> str:
    """The algorithm file a test belongs to: tests/test_<stem>.py, or a parameter naming <stem>.py (the smoke
    tests); "" for the shared tests."""
    module, _, rest = nodeid.partition("::")
    stem = Path(module).stem.removeprefix("test_")
    if (ALGORITHMS / f"{stem}.py").is_file():
        return f"{stem}.py"
    param = rest.partition("[")[2].rstrip("]")
    return next((p for p in param.split("-") if p.endswith(".py") and (ALGORITHMS / p).is_file()), "")


def pytest_terminal_summary(terminalreporter):
    """The test budget, visible in every run: test time (setup, call and teardown, summed over the test
    processes) per algorithm file. With `-n 2` the wall time is about half of it: the budget of about 10 s of
    wall time per file on average (CONTRIBUTING.md) is about 20 s of test time."""
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                key = algorithm_of(report.nodeid)
                per_file[key] = per_file.get(key, 0.0) + report.duration
    shared = per_file.pop("", 0.0)
    if not per_file:
        return
    total = sum(per_file.values()) + shared
    top = sorted(per_file.items(), key=lambda kv: -kv[1])[:5]
    terminalreporter.write_line(
        f"test time per algorithm file: {(total / len(per_file)):.1f} s on average over {len(per_file)} files "
        f"(shared tests included), budget about 20 s (10 s of wall time with -n 2); the most: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in top))


# Tiny Minari datasets for the offline files' tests (smoke, bad input, long runs), built by tools/make_dataset.py
# from random policies: what the files read, not what they learn from. A Box-action, a Discrete-action and a
# wrong-kind (Discrete observations) one.
OFFLINE_DATASETS = {
    "tiny/pendulum-random-v0": ["--env-id", "Pendulum-v1", "--steps", "400", "--ref-min-score", "-1200",
                                "--ref-max-score", "0"],
    "tiny/cartpole-random-v0": ["--env-id", "CartPole-v1", "--steps", "400", "--ref-min-score", "20",
                                "--ref-max-score", "500"],
    "tiny/frozenlake-random-v0": ["--env-id", "FrozenLake-v1", "--steps", "100", "--ref-min-score", "0",
                                  "--ref-max-score", "1"],
}


def needs_offline_datasets(nodeids) -> bool:
    """Does any of these tests run a file that reads a dataset (an offline-kind file, or one learning from
    demonstrations: --expert-dataset-id), tools/make_dataset.py or tools/offline_table.py?"""
    from smoke_configs import SMOKE

    def reads_datasets(name: str) -> bool:
        cfg = SMOKE.get(name)
        return cfg is not None and (cfg.kind == "offline" or "--expert-dataset-id" in cfg.args)

    return any("test_make_dataset" in nodeid or "test_offline_table" in nodeid or reads_datasets(algorithm_of(nodeid))
               for nodeid in nodeids)


@pytest.fixture(autouse=True, scope="session")
def offline_datasets(request, tmp_path_factory):
    """MINARI_DATASETS_PATH points, for the whole test process, at a temporary directory holding OFFLINE_DATASETS
    (built once per process, and only when a collected test needs them), so that in-process runs of the offline
    files find them by id. Yields the directory (None when nothing needs it)."""
    if not needs_offline_datasets(item.nodeid for item in request.session.items):
        yield None
        return
    import importlib.util

    root = tmp_path_factory.mktemp("minari_datasets")
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    spec = importlib.util.spec_from_file_location("tools_make_dataset", ROOT / "tools" / "make_dataset.py")
    make_dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_dataset)
    for dataset_id, args in OFFLINE_DATASETS.items():
        make_dataset.main(["--dataset-id", dataset_id, "--seed", "1", *args])
    yield root
    if saved is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = saved


def run_offline_with_statistics(module, dataset_id: str, tmp_path) -> tuple[dict, dict]:
    """An offline file's tiny run with --save-model on `dataset_id`: the saved policy carries the dataset's observation
    statistics (those of every transition, as the file's own obs_statistics computes them). Returns the run's result
    and the checkpoint, for the file's own further checks."""
    import minari
    import torch

    data = module.load_transitions(minari.load_dataset(dataset_id))
    out = run_main(module, ["--dataset-id", dataset_id, "--total-updates", "2", "--eval-episodes", "1", "--save-model",
                            "--hidden-sizes", "8"], tmp_path)
    policy, ckpt = module.load_model(str(tmp_path / out["model_path"]))
    mean, std = module.obs_statistics(data["observations"])
    torch.testing.assert_close(policy.obs_mean, torch.as_tensor(mean))
    torch.testing.assert_close(policy.obs_std, torch.as_tensor(std))
    assert ckpt["dataset_id"] == dataset_id
    return out, ckpt


# Where this collection's real datasets are (tools/make_dataset.py; `./run_all.sh offline` builds them): read when
# conftest is imported, before the session fixture points MINARI_DATASETS_PATH at the tiny test datasets.
# ONEFILE_MINARI_DATASETS overrides it (e.g. a folder other than the user's MINARI_DATASETS_PATH).
BUILT_DATASETS = (os.environ.get("ONEFILE_MINARI_DATASETS") or os.environ.get("MINARI_DATASETS_PATH")
                  or os.path.expanduser("~/.minari/datasets"))


def needs_built_dataset(dataset_id: str):
    """Skip a slow learning test unless `dataset_id` was built under BUILT_DATASETS (run it with
    run_main(..., env={"MINARI_DATASETS_PATH": BUILT_DATASETS}))."""
    return pytest.mark.skipif(not os.path.isdir(os.path.join(BUILT_DATASETS, dataset_id)),
                              reason=f"needs {dataset_id} under $ONEFILE_MINARI_DATASETS or $MINARI_DATASETS_PATH "
                                     "(tools/make_dataset.py; ./run_all.sh offline builds it)")


# ---- multi-agent files ----

def spread(max_cycles: int = 25):
    """mpe2's simple_spread_v3 as the multi-agent files make it by default (N=3, discrete actions)."""
    from mpe2 import simple_spread_v3

    return simple_spread_v3.parallel_env(N=3, local_ratio=0.5, max_cycles=max_cycles, continuous_actions=False)


def assert_greedy_team_returns(module, model_path: str, eval_returns: list[float], max_cycles: int) -> None:
    """A multi-agent file's saved model, replayed by hand on simple_spread_v3 with the reset seeds of its evaluation
    (100_001 + episode), each agent taking the model's greedy_action: every episode's team return (the sum over
    agents of their summed rewards) is what evaluate() gave, from the checkpoint as from the live network."""
    import numpy as np
    import pytest
    import torch

    model, ckpt = module.load_model(model_path)
    assert ckpt["env_kwargs"] == {"max_cycles": max_cycles}
    assert module.evaluate(model_path, "simple_spread_v3", len(eval_returns), seed=100_001) == eval_returns
    env = spread(max_cycles)
    for ep, expected in enumerate(eval_returns):
        obs, _ = env.reset(seed=100_001 + ep)
        total = 0.0
        while env.agents:
            x = torch.as_tensor(np.stack([obs[a] for a in env.possible_agents]))
            actions = model.greedy_action(x).tolist()
            obs, rew, _, _, _ = env.step({a: actions[j] for j, a in enumerate(env.possible_agents)})
            total += sum(rew.values())
        assert total == pytest.approx(expected, rel=1e-5)


def loop_token_logprobs(model, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0) -> list[float]:
    """log softmax(logits / T)[y_j] of each completion token, one unpadded forward pass per token in float64 (the
    slow reference for the language-model files' batched, padded log-probabilities)."""
    import torch

    values, ids = [], list(prompt_ids)
    with torch.no_grad():
        for token in completion_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double() / temperature
            values.append(torch.log_softmax(logits, dim=-1)[token].item())
            ids.append(token)
    return values


def assert_truncations_stored(module, buffer_class: str, monkeypatch, args) -> None:
    """A real multi-agent run (two copies, 5-step simple_spread episodes, 20 steps): at each episode end the stored
    transition's next observation is the last one (info["final_obs"], not the reset one) and its termination flag is
    0 for every agent, so the target bootstraps. The buffer's add takes (obs, actions, rewards, next_obs,
    terminations, active)."""
    import numpy as np

    added, finals = [], []
    buffer = getattr(module, buffer_class)
    real_add, real_step = buffer.add, module.BatchedParallelEnv.step

    def recording_add(self, obs, actions, rewards, next_obs, terminations, active):
        added.append((next_obs.copy(), np.asarray(terminations).copy()))
        return real_add(self, obs, actions, rewards, next_obs, terminations, active)

    def recording_step(self, actions):
        out = real_step(self, actions)
        finals.append((out[-1]["_final"].copy(), out[-1]["final_obs"].copy(), out[0].copy()))
        return out

    monkeypatch.setattr(buffer, "add", recording_add)
    monkeypatch.setattr(module.BatchedParallelEnv, "step", recording_step)
    module.main(args)
    assert len(added) == 10
    ends = 0
    for (next_obs, terms), (final, final_obs, reset_obs) in zip(added, finals[: len(added)], strict=True):
        assert not terms.any()  # simple_spread never terminates: every end is a truncation
        for e in np.flatnonzero(final):
            ends += 1
            np.testing.assert_array_equal(next_obs[e], final_obs[e])
            assert not np.array_equal(next_obs[e], reset_obs[e])
    assert ends == 4  # two 5-step episodes in each of the two copies
