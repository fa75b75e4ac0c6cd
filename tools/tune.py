"""Hyperparameter search (Optuna) and one-parameter sensitivity sweeps for a deep file of algorithms/.

Search: sample parameters, train every seed, keep the mean final evaluation, prune trials that lag:
    python tools/tune.py --algo ppo --env-id CartPole-v1 --total-timesteps 100000 --seeds 1 2 3 --trials 30 \\
        --workers 2 --param learning_rate=loguniform:1e-4:3e-3 --param num_minibatches=choice:2,4,8
Join the same study from another machine (any shared Optuna storage: postgresql://..., mysql://...):
    python tools/tune.py --algo ppo --env-id CartPole-v1 --total-timesteps 100000 --seeds 1 2 3 --trials 30 \\
        --storage postgresql://user@host/db --worker-only
Rewrite the page from the storage:   python tools/tune.py ... --page-only
Sensitivity sweep (one parameter at a time, everything else at the file's defaults plus --algo-args):
    python tools/tune.py --sweep --algo ppo --env-id CartPole-v1 --total-timesteps 200000 --seeds 1 2 3 4 5 \\
        --param learning_rate=2.5e-4,5e-4,1e-3,2.5e-3 --param ent_coef=0,0.01,0.05 --param norm_adv=true,false

--param NAME=SPEC, NAME an Args field of the file (learning_rate or learning-rate), SPEC one of
    loguniform:LO:HI   uniform:LO:HI   int:LO:HI   choice:A,B,C   A,B,C (a list is a choice)
A --param replaces that parameter's entry in the file's search space (SEARCH_SPACES below) or adds one
(--no-default-space: only the --param entries are searched). A fixed
value goes through --algo-args ("--num-envs 8"). Booleans are true/false, an optional value may be none.

How a trial runs. Its seeds run side by side, each a child process (this file with --child: one JSON config in,
JSON lines out) that loads the file, builds its Args with tyro as its command line would (plus --torch-threads 1
and --log-every, from --report-every) and calls main(args, report=...). At every progress line the file calls
report(step, mean of its last 20 training returns); the child writes {"step", "value"} and waits for "go" or
"stop". The parent waits for the k-th report of every seed still training, reports their mean to Optuna
(trial.report) and asks the pruner; "stop" ends every seed's training there, each is evaluated as usual, and the
trial is recorded as PRUNED at that step. The objective is the mean over seeds of main's eval_return_mean; each
trial also keeps its per-seed results and "mean training return over the run" (the mean of the reported values),
a learning-speed figure that keeps ranking runs after the final return reaches a ceiling (CartPole's 500).
A worker keeps its seeds' processes from trial to trial (one import of torch each, not one per trial). They
run in a scratch directory: their runs/ and logs are dropped (a failed child's last lines are kept in
the trial's "error" attribute). A child that fails (bad combination of values, a numerical fault) fails its
trial, and the study goes on.

Storage and workers. --storage takes any Optuna storage URL, or journal:PATH (a JournalFileBackend file, for
shared file systems); the default is <out>/tune/<tag>.db (sqlite). The launching process creates the study once,
then --workers N starts N processes of this file with --worker-only on the same storage (each trial runs
len(--seeds) training processes at once: N x seeds processes in all). --trials is the total over all workers:
each stops when the study holds that many trials (a worker that joins concurrently can add one or two more).
A sweep keeps one study per parameter (<study-name>-<param>) with a grid sampler over its values, no pruning;
each value is queued once when the study is created, and the workers take the queued trials.

Pages: <out>/tune_<tag>.md (best parameters, every trial with its state, pruning step and values, parameter
importances and optimisation history) or <out>/sweep_<tag>.md (per parameter: final evaluation return and mean
training return over the run against the value, mean over seeds and each seed), with their PNGs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from types import UnionType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Default search spaces: Args field -> SPEC (the --param grammar). Ranges bracket each file's defaults and the
# values rl-zoo3 lists for these algorithms; a --param with the same name replaces an entry.
SEARCH_SPACES: dict[str, dict[str, str]] = {
    "ppo": {"learning_rate": "loguniform:1e-4:3e-3", "num_steps": "choice:32,64,128,256",
            "num_minibatches": "choice:1,2,4,8", "update_epochs": "int:3:20", "gamma": "choice:0.95,0.98,0.99,0.995",
            "gae_lambda": "uniform:0.8:1.0", "clip_coef": "choice:0.1,0.2,0.3", "ent_coef": "loguniform:1e-8:0.05"},
    "ppo_continuous_action": {"learning_rate": "loguniform:3e-5:3e-3", "num_steps": "choice:256,512,1024,2048",
                              "num_minibatches": "choice:4,8,16,32", "update_epochs": "int:3:20",
                              "gamma": "choice:0.9,0.95,0.98,0.99,0.995", "gae_lambda": "uniform:0.8:1.0",
                              "clip_coef": "choice:0.1,0.2,0.3", "ent_coef": "loguniform:1e-8:0.01",
                              "norm_reward": "choice:true,false"},
    "dqn": {"learning_rate": "loguniform:1e-4:3e-3", "batch_size": "choice:32,64,128,256",
            "target_network_frequency": "choice:250,500,1000,2000", "exploration_fraction": "uniform:0.05:0.5",
            "end_e": "uniform:0.01:0.1", "train_frequency": "choice:1,4,8", "gamma": "choice:0.98,0.99,0.995",
            "double_q": "choice:true,false"},
    "sac": {"policy_lr": "loguniform:1e-4:3e-3", "q_lr": "loguniform:1e-4:3e-3", "batch_size": "choice:64,128,256",
            "tau": "loguniform:1e-3:0.05", "gamma": "choice:0.95,0.98,0.99,0.995", "learning_starts": "choice:100,1000,5000"},
}


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one line of the bad-input rule instead of usage + message."""

    def error(self, message: str) -> typing.NoReturn:
        fail(message)


# --------------------------------------------------------------------------------------------------
# Parameters: NAME=SPEC parsed against the file's Args
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Param:
    """One searched parameter: kind loguniform / uniform / int (low, high) or choice (values, already typed)."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple = ()

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")


def field_types(args_cls) -> dict[str, tuple]:
    """Args field -> the plain types a value may take (bool, int, float, str, NoneType) or Literal values."""
    hints = typing.get_type_hints(args_cls)
    out = {}
    for f in dataclasses.fields(args_cls):
        hint = hints[f.name]
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
        flat: list = []
        for m in members:
            flat += [("literal", v) for v in typing.get_args(m)] if typing.get_origin(m) is typing.Literal else [m]
        out[f.name] = tuple(flat)
    return out


def cast(text: str, types: tuple, name: str):
    """One value of a choice, typed as the field declares (bool before int: bool is a subclass of int)."""
    low = text.strip().lower()
    if type(None) in types and low == "none":
        return None
    literals = [v for t, v in (x for x in types if isinstance(x, tuple))]
    if literals:
        if text.strip() in literals:
            return text.strip()
        fail(f"--param {name}: {text!r} is not one of {literals}")
    if bool in types:
        if low in ("true", "false"):
            return low == "true"
        fail(f"--param {name}: {text!r} is not a boolean (true or false)")
    for t in (int, float):
        if t in types:
            try:
                value = t(text)
            except ValueError:
                if t is int and float in types:
                    continue
                fail(f"--param {name}: {text!r} is not {'an integer' if t is int else 'a number'}")
            if isinstance(value, float) and not math.isfinite(value):
                fail(f"--param {name}: {text!r} is not a finite number")
            return value
    if str in types:
        return text.strip()
    fail(f"--param {name}: its type ({types}) cannot be searched; set it with --algo-args")


def parse_param(item: str, types: dict[str, tuple], algo: str) -> Param:
    """NAME=SPEC -> Param; any mistake is one line and exit 2."""
    if "=" not in item:
        fail(f"--param {item!r}: expected NAME=SPEC, e.g. learning_rate=loguniform:1e-4:3e-3")
    name, spec = (s.strip() for s in item.split("=", 1))
    name = name.replace("-", "_")
    if name not in types:
        fail(f"--param {name}: {algo}.py's Args has no field {name!r}")
    kind, _, rest = spec.partition(":")
    if kind in ("loguniform", "uniform", "int"):
        bounds = rest.split(":")
        try:
            low, high = (float(b) for b in bounds) if len(bounds) == 2 else (math.nan, math.nan)
        except ValueError:
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            fail(f"--param {name}={spec}: expected {kind}:LO:HI with finite numbers LO < HI")
        if kind == "loguniform" and not low > 0:
            fail(f"--param {name}={spec}: loguniform needs LO > 0")
        if kind == "int" and not (low.is_integer() and high.is_integer() and int in types[name]):
            fail(f"--param {name}={spec}: int:LO:HI needs whole bounds and an integer field")
        if kind != "int" and float not in types[name]:
            fail(f"--param {name}={spec}: {kind} needs a float field; use int:LO:HI or choice:A,B")
        return Param(name, kind, low, high)
    if kind == "choice":
        spec = rest
    elif ":" in spec:
        fail(f"--param {name}={spec}: unknown kind {kind!r} (loguniform, uniform, int, choice)")
    texts = [s for s in spec.split(",") if s.strip()]
    if not texts:
        fail(f"--param {name}: no values")
    values = tuple(cast(t, types[name], name) for t in texts)
    if len(set(values)) != len(values):
        fail(f"--param {name}={spec}: a value is repeated")
    return Param(name, "choice", values=values)


def cli_args(params: dict) -> list[str]:
    """Sampled values as the file's command line: --learning-rate 0.001, --norm-reward / --no-norm-reward."""
    out = []
    for name, value in params.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            out += [f"--{flag}", "None" if value is None else repr(value) if isinstance(value, float) else str(value)]
    return out


# --------------------------------------------------------------------------------------------------
# Child process: one seed's training, reporting in lockstep with its siblings
# --------------------------------------------------------------------------------------------------


def child_main() -> None:
    """A seed's training process: it reads one JSON config line from stdin, trains, and waits for the next (the
    torch import is paid once per worker, not per trial). Protocol on the original stdout: {"step", "value"} per
    report (then one line "go" or "stop" is read from stdin), {"result": ...} at the end of each run. Everything
    else printed goes to stderr. A run that fails (bad input, a numerical fault) ends the process."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the file's own progress lines (and any library's) go to stderr, not into the protocol
    import shutil

    import tyro
    from algo_loader import load_algo

    def report(step: int, value: float) -> bool:
        protocol.write(json.dumps({"step": int(step), "value": float(value)}) + "\n")
        answer = sys.stdin.readline()
        if not answer:  # the parent is gone
            raise SystemExit(1)
        return answer.strip() == "stop"

    while line := sys.stdin.readline():
        config = json.loads(line)
        module = load_algo(config["algo"])  # a fresh module per run: nothing carries over from the last one
        out = module.main(tyro.cli(module.Args, args=config["argv"]), report=report)
        shutil.rmtree(out["run_dir"], ignore_errors=True)  # the event files of a trial are not kept
        keep = ("eval_return_mean", "eval_returns", "global_step", "train_time", "sps")
        protocol.write(json.dumps({"result": {k: out[k] for k in keep}}) + "\n")


class Child:
    """A seed's training process (this file with --child), kept for the worker's next trials, its stderr in a log."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "child.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child"], cwd=workdir,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         bufsize=1)

    def receive(self) -> dict | None:
        line = self.proc.stdout.readline()
        return json.loads(line) if line.strip() else None

    def send(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


class Pool:
    """One training process per seed of a trial, reused from trial to trial; a failure replaces them all."""

    def __init__(self):
        self.scratch = Path(tempfile.mkdtemp(prefix="tune_"))  # the children's runs/ and logs
        self.children: list[Child] = []
        self.started = 0

    def get(self, n: int) -> list[Child]:
        while len(self.children) < n:
            self.started += 1
            self.children.append(Child(self.scratch / f"child_{self.started}"))
        return self.children[:n]

    def discard(self) -> None:
        for c in self.children:
            c.proc.kill()
            c.proc.wait()
        self.children = []

    def close(self) -> None:
        import shutil

        for c in self.children:
            c.proc.stdin.close()  # the child's loop ends at end of input
            c.proc.wait()
        self.children = []
        shutil.rmtree(self.scratch, ignore_errors=True)


class ChildFailed(RuntimeError):
    pass


def lockstep(children: list, decide: Callable[[int, float], bool], every: int = 1) -> tuple[list, list, list, int | None]:
    """Pair the seeds' reports and answer them together. Round k: read the next message of every seed still
    training; a {"result"} message means that seed is done (it reports no more), a report joins the round. The
    round's step is the largest of its steps rounded down to a multiple of `every` (the files print a little past
    each multiple of --log-every, by a rollout that depends on the parameters: rounded, trials of different rollout
    sizes report at the same steps, which the pruner compares), its value the mean of its values; decide(step, value) -> True stops
    every seed (decide is not asked again, and is not asked when the step does not exceed the last one decided).
    Returns (the per-seed results, each seed's reported values, [(step, mean value)] of every round, the step at
    which it stopped or None).
    A seed that ends without a result raises ChildFailed with its index."""
    results: list = [None] * len(children)
    values: list[list[float]] = [[] for _ in children]
    rounds: list[tuple[int, float]] = []
    stopped_at, last_decided = None, -math.inf
    active = list(range(len(children)))
    while active:
        reporting = []
        for i in active:
            msg = children[i].receive()
            if msg is None:
                raise ChildFailed(i)
            if "result" in msg:
                results[i] = msg["result"]
            else:
                reporting.append((i, msg))
                values[i].append(msg["value"])
        if not reporting:
            break
        step = max(m["step"] for _, m in reporting) // every * every
        value = sum(m["value"] for _, m in reporting) / len(reporting)
        rounds.append((step, value))
        if stopped_at is None and step > last_decided:
            last_decided = step
            if decide(step, value):
                stopped_at = step
        for i, _ in reporting:
            children[i].send("stop" if stopped_at is not None else "go")
        active = [i for i, _ in reporting]
    return results, values, rounds, stopped_at


def run_trial(trial, cfg: dict, params: dict, pool: Pool) -> float:
    """Train every seed with these parameters in lockstep (the pool's processes); record the trial; return the
    objective (the mean over seeds of the final evaluation)."""
    import optuna

    argv_params = cli_args(params)
    trial.set_user_attr("algo_args", shlex.join(argv_params))

    def decide(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    children = pool.get(len(cfg["seeds"]))
    for child, seed in zip(children, cfg["seeds"], strict=True):
        argv = ["--env-id", cfg["env_id"], "--seed", str(seed), "--total-timesteps", str(cfg["total_timesteps"]),
                "--torch-threads", "1", "--log-every", str(cfg["report_every"]), *cfg["algo_args"], *argv_params]
        child.send(json.dumps({"algo": cfg["algo"], "argv": argv}))
    try:
        results, values, rounds, stopped_at = lockstep(children, decide, cfg["report_every"])
    except ChildFailed as e:
        tail = children[e.args[0]].log_tail()
        pool.discard()
        trial.set_user_attr("error", tail)
        raise RuntimeError(f"trial {trial.number}: seed {cfg['seeds'][e.args[0]]} failed:\n{tail}") from None
    seeds = [{"seed": s, **{k: r[k] for k in ("eval_return_mean", "global_step", "train_time")},
              "mean_train_return": sum(v) / len(v) if v else None}
             for s, r, v in zip(cfg["seeds"], results, values, strict=True)]
    trial.set_user_attr("seeds", seeds)
    trial.set_user_attr("mean_train_return", sum(v for _, v in rounds) / len(rounds) if rounds else None)
    objective = sum(s["eval_return_mean"] for s in seeds) / len(seeds)
    trial.set_user_attr("eval_return_mean", objective)
    if stopped_at is not None:
        trial.set_user_attr("pruned_at", stopped_at)
        raise optuna.TrialPruned(f"pruned at step {stopped_at}")
    return objective


# --------------------------------------------------------------------------------------------------
# Studies, storage and workers
# --------------------------------------------------------------------------------------------------


def make_storage(url: str):
    """An Optuna storage from a URL; journal:PATH is a journal file (for shared file systems without a database)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(url) if "://" in url else url


def studies(cfg: dict) -> list[tuple[str, list[Param], int]]:
    """(study name, its searched parameters, its number of trials): one study for a search, one per parameter
    (named <study-name>-<param>, as many trials as values) for a sweep."""
    if cfg["sweep"]:
        return [(f"{cfg['study_name']}-{n}", [p], len(p.values)) for n, p in cfg["params"].items()]
    return [(cfg["study_name"], list(cfg["params"].values()), cfg["trials"])]


def sampler_for(cfg: dict, params: list[Param], worker: int | None):
    """A grid over the one parameter (sweep) or TPE; seeded --sampler-seed + worker index, random without one
    (a worker joining with --worker-only must not propose what worker 0 proposes)."""
    import optuna

    seed = None if worker is None else cfg["sampler_seed"] + worker
    if cfg["sweep"]:
        return optuna.samplers.GridSampler({params[0].name: list(params[0].values)}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner_for(cfg: dict):
    import optuna

    if cfg["sweep"] or cfg["pruner"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=cfg["pruner_startup_trials"],
                                       n_warmup_steps=cfg["pruner_warmup_steps"])


def create_studies(cfg: dict) -> None:
    """Create (or load) every study once, before any worker starts: two processes creating the same fresh sqlite
    storage race. The command and the date are kept with the study, for the page."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(cfg["storage"])
    for name, params, _ in studies(cfg):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
        if "command" not in study.user_attrs:
            study.set_user_attr("command", cfg["command"])
            study.set_user_attr("date", time.strftime("%Y-%m-%d %H:%M"))
            study.set_user_attr("setup", setup(cfg, params))
            if cfg["sweep"]:  # each value queued once: workers take queued trials atomically, never the same one
                for value in params[0].values:
                    study.enqueue_trial({params[0].name: value})
        check_setup(study, cfg, params)


def setup(cfg: dict, params: list[Param]) -> dict:
    """What makes two trials comparable: a study refuses to mix runs of different settings."""
    return {"algo": cfg["algo"], "env_id": cfg["env_id"], "total_timesteps": cfg["total_timesteps"],
            "seeds": cfg["seeds"], "algo_args": cfg["algo_args"], "report_every": cfg["report_every"],
            "params": {p.name: [p.kind, p.low, p.high, list(p.values)] for p in params}}


def check_setup(study, cfg: dict, params: list[Param]) -> None:
    stored = study.user_attrs.get("setup")
    if stored is not None and json.loads(json.dumps(setup(cfg, params))) != stored:
        diff = sorted(k for k, v in json.loads(json.dumps(setup(cfg, params))).items() if stored.get(k) != v)
        fail(f"study {study.study_name!r} in this storage was run with other {', '.join(diff)}: use another "
             "--tag or --study-name (or --storage), or the same settings")


def load(name: str, storage, **kwargs):
    """An existing study, or one line and exit 2 (a worker or a page with no study to join)."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        fail(f"no study {name!r} in {storage if isinstance(storage, str) else 'the storage'}: start it once without "
             "--worker-only / --page-only, with the same --storage")


def work(cfg: dict, worker: int | None = 0) -> None:
    """One worker: run trials until each study holds its number of trials (--trials, or a sweep's grid)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(cfg["storage"])
    pool = Pool()
    try:
        work_on(cfg, worker, storage, pool)
    finally:
        pool.close()


def work_on(cfg: dict, worker: int | None, storage, pool: Pool) -> None:
    import optuna
    from optuna.trial import TrialState

    for name, params, total in studies(cfg):
        study = load(name, storage, sampler=sampler_for(cfg, params, worker), pruner=pruner_for(cfg))
        check_setup(study, cfg, params)
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)  # not queued ones

        def objective(trial, params=params):
            return run_trial(trial, cfg, {p.name: p.suggest(trial) for p in params}, pool)

        def progress(trial, name=name):
            value = trial.user_attrs.get("eval_return_mean")
            where = f" at step {trial.user_attrs['pruned_at']:,}" if trial.state == TrialState.PRUNED else ""
            print(f"{name} trial {trial.number}: {trial.state.name}{where}  eval "
                  f"{'n/a' if value is None else f'{value:.1f}'}  {trial.user_attrs.get('algo_args', '')}", flush=True)

        while True:
            with trial_claim(cfg, name):  # count and create in one step (see trial_claim)
                if cfg["sweep"]:
                    done = not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                else:
                    done = len(study.get_trials(deepcopy=False, states=counted)) >= total
                if done:
                    break
                trial = study.ask()  # a sweep's next queued point, or the sampler's proposal
            try:
                study.tell(trial, objective(trial))
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except RuntimeError as error:  # a seed failed: the trial is recorded as failed and the search goes on
                print(f"{name} trial {trial.number}: FAIL  {error}", file=sys.stderr, flush=True)
                study.tell(trial, state=TrialState.FAIL)
            progress(next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))


@contextlib.contextmanager
def trial_claim(cfg: dict, name: str):
    """The workers of one study on this machine count its trials and create the next one under one file lock, so
    that two workers finishing at the same moment cannot both start a trial past --trials (a count taken after a
    trial and a creation taken later are a race). Workers on other machines sharing a database are not covered:
    there the study may end with a trial or two more than asked."""
    import fcntl
    import hashlib

    key = hashlib.sha1(f"{cfg['storage']}|{name}".encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"onefile-rl-tune-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_workers(cfg: dict, argv: list[str]) -> None:
    """--workers N: N processes of this file with --worker-only on the same storage (worker i samples with seed
    --sampler-seed + i, so that they do not propose the same parameters); one worker runs in this process."""
    if cfg["workers"] == 1:
        work(cfg)
        return
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--worker-only",
                               "--worker-index", str(i)]) for i in range(cfg["workers"])]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"warning: worker exit statuses {codes}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------------


def machine_note() -> str:
    return (f"Machine: {os.cpu_count()} cores ({platform.machine()}, {platform.system()}); each seed one process with "
            f"--torch-threads 1. Date of this page: {time.strftime('%Y-%m-%d %H:%M')}.")


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_search_page(cfg: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    study = load(cfg["study_name"], make_storage(cfg["storage"]))
    check_setup(study, cfg, list(cfg["params"].values()))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out, tag = Path(cfg["out"]), cfg["tag"]
    lines = [f"# Hyperparameter search: {cfg['algo']}.py on {cfg['env_id']}", "",
             f"Command: `{study.user_attrs.get('command', cfg['command'])}`", "",
             f"Study `{study.study_name}` started {study.user_attrs.get('date', '?')}. {machine_note()}", "",
             f"Objective: the final deterministic evaluation return (main's eval_return_mean), mean over seeds "
             f"{cfg['seeds']}, after {cfg['total_timesteps']:,} steps; pruning on the mean over seeds of the last 20 "
             "training returns at each progress line. \"Train\" is that mean averaged over the run (learning speed).", ""]
    if complete:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, {best.value:.1f}, with `{best.user_attrs.get('algo_args', '')}` "
                  f"(mean training return over the run {fmt(best.user_attrs.get('mean_train_return'))}).", "",
                  "```", f"python algorithms/{cfg['algo']}.py --env-id {cfg['env_id']} --total-timesteps "
                  f"{cfg['total_timesteps']} {shlex.join(cfg['algo_args'])} {best.user_attrs.get('algo_args', '')}".strip(),
                  "```", ""]
    else:
        lines += ["No trial completed yet.", ""]
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    lines += [", ".join(f"{n} {k}" for k, n in counts.items() if n) + ".", ""]
    names = sorted({k for t in trials for k in t.params})
    lines += ["| trial | state | " + " | ".join(names) + " | eval (mean over seeds) | train | per-seed eval |",
              "|---" * (len(names) + 5) + "|"]
    for t in trials:
        state = t.state.name + (f" at {t.user_attrs['pruned_at']:,}" if "pruned_at" in t.user_attrs else "")
        ev = t.user_attrs.get("eval_return_mean")
        per_seed = ", ".join(f"{s['eval_return_mean']:.1f}" for s in t.user_attrs.get("seeds", []))
        lines.append(f"| {t.number} | {state} | " + " | ".join(fmt(t.params.get(n, "")) for n in names)
                     + f" | {'' if ev is None else f'{ev:.1f}'} | {fmt(t.user_attrs.get('mean_train_return', ''))} | "
                     f"{per_seed} |")
    lines.append("")
    figures = [("importance", "parameter importances (fANOVA over the complete trials)",
                optuna.visualization.matplotlib.plot_param_importances),
               ("history", "optimisation history", optuna.visualization.matplotlib.plot_optimization_history)]
    for key, title, plot in figures:
        png = out / f"tune_{tag}_{key}.png"
        if len(complete) < 2:
            lines += [f"No {title} figure: it needs at least 2 complete trials.", ""]
            continue
        try:
            ax = plot(study)
            ax.figure.set_size_inches(7, 4.5)
            ax.figure.tight_layout()
            ax.figure.savefig(png, dpi=100)
            plt.close("all")
            lines += [f"![{title}]({png.name})", ""]
        except Exception as e:  # e.g. importances when every complete trial has the same parameters
            plt.close("all")
            lines += [f"No {title} figure: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", ""]
    page = out / f"tune_{tag}.md"
    page.write_text("\n".join(lines))
    return page


def sweep_rows(study, name: str) -> list[tuple]:
    """(value, per-seed eval returns, per-seed... ) for each value, from its first complete trial."""
    from optuna.trial import TrialState

    seen, rows = set(), []
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE or name not in t.params or t.params[name] in seen:
            continue
        seen.add(t.params[name])
        rows.append((t.params[name], [s["eval_return_mean"] for s in t.user_attrs["seeds"]],
                     t.user_attrs.get("mean_train_return"), t))
    return rows


def write_sweep_page(cfg: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    storage = make_storage(cfg["storage"])
    out, tag = Path(cfg["out"]), cfg["tag"]
    first = load(studies(cfg)[0][0], storage)
    lines = [f"# Sensitivity sweep: {cfg['algo']}.py on {cfg['env_id']}", "",
             f"Command: `{first.user_attrs.get('command', cfg['command'])}`", "",
             f"Started {first.user_attrs.get('date', '?')}. {machine_note()}", "",
             "One parameter at a time, everything else at the file's defaults"
             + (f" plus `{shlex.join(cfg['algo_args'])}`" if cfg["algo_args"] else "")
             + f"; {cfg['total_timesteps']:,} steps, seeds {cfg['seeds']}. Eval: the final deterministic evaluation "
             "return. Train: the mean over the run of the last-20-episode training return, each seed's, "
             "a learning-speed figure. Figures: mean over seeds (line) and each seed (points).", ""]
    for name, p in cfg["params"].items():
        study = load(f"{cfg['study_name']}-{name}", storage)
        check_setup(study, cfg, [p])
        rows = sweep_rows(study, name)
        order = {v: i for i, v in enumerate(p.values)}
        rows.sort(key=lambda r: order.get(r[0], len(order)))
        lines += [f"## {name}", ""]
        if not rows:
            lines += ["No complete trial yet.", ""]
            continue
        lines += ["| value | eval (mean ± std over seeds) | train (mean ± std over seeds) | per-seed eval |",
                  "|---|---|---|---|"]
        for value, evals, _, t in rows:
            trains = [s.get("mean_train_return") for s in t.user_attrs["seeds"]]
            tr = [x for x in trains if x is not None]
            lines.append(f"| {fmt(value)} | {np.mean(evals):.1f} ± {np.std(evals):.1f} | "
                         + (f"{np.mean(tr):.1f} ± {np.std(tr):.1f}" if tr else "n/a")
                         + f" | {', '.join(f'{e:.1f}' for e in evals)} |")
        numeric = all(isinstance(r[0], (int, float)) and not isinstance(r[0], bool) for r in rows)
        xs = [r[0] for r in rows] if numeric else list(range(len(rows)))
        log_x = numeric and min(xs) > 0 and ("learning_rate" in name or name.endswith("_lr") or max(xs) / min(xs) >= 100)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "eval_return_mean", "final evaluation return"),
                               (axes[1], "mean_train_return", "mean training return over the run")):
            per_seed = [[s.get(key) for s in r[3].user_attrs["seeds"]] for r in rows]
            means = [np.mean([v for v in ps if v is not None]) if any(v is not None for v in ps) else np.nan
                     for ps in per_seed]
            ax.plot(xs, means, "o-", color="C0", label="mean over seeds")
            for x, ps in zip(xs, per_seed, strict=True):
                vals = [v for v in ps if v is not None]
                ax.scatter([x] * len(vals), vals, color="C1", s=12, alpha=0.7)
            ax.set_ylabel(label)
            ax.set_xlabel(name)
            if not np.isfinite(means).any():
                ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center")
            elif log_x:  # ticks at the swept values: the minor ticks' labels would overlap
                ax.set_xscale("log")
                ax.set_xticks(xs, [fmt(r[0]) for r in rows])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if not numeric:
                ax.set_xticks(xs, [fmt(r[0]) for r in rows])
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"{cfg['algo']}.py on {cfg['env_id']}: {name} ({cfg['total_timesteps']:,} steps)")
        fig.tight_layout()
        png = out / f"sweep_{tag}_{name}.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        lines += ["", f"![{name}]({png.name})", ""]
    page = out / f"sweep_{tag}.md"
    page.write_text("\n".join(lines))
    return page


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> dict:
    """The command line -> a plain config dict; every check of bad input is here (one line, exit 2)."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, help="file stem in algorithms/, e.g. ppo")
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--total-timesteps", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=30, help="total trials of the study, over all workers")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                        help="a searched parameter (see above); in a sweep, a list of values")
    parser.add_argument("--no-default-space", action="store_true",
                        help="search only the --param entries, not the file's entries in SEARCH_SPACES")
    parser.add_argument("--algo-args", default="", help="fixed arguments for the file, one shell-quoted string")
    parser.add_argument("--sweep", action="store_true", help="one-parameter-at-a-time sweep over each --param's values")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--worker-only", action="store_true", help="join the existing study on --storage and work")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--page-only", action="store_true", help="(re)write the page from --storage")
    parser.add_argument("--storage", default=None, help="Optuna storage URL or journal:PATH (default <out>/tune/<tag>.db)")
    parser.add_argument("--study-name", default=None, help="default: the tag (a sweep adds -<param>)")
    parser.add_argument("--pruner", choices=["median", "none"], default="median")
    parser.add_argument("--pruner-startup-trials", type=int, default=5, help="trials completed before any pruning")
    parser.add_argument("--pruner-warmup-steps", type=int, default=None,
                        help="no pruning before this step (default: a fifth of --total-timesteps)")
    parser.add_argument("--report-every", type=int, default=None,
                        help="steps between reports: the file's --log-every (default: --total-timesteps / 20)")
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="name of the page and storage (default: {algo}_{env_id})")
    parser.add_argument("--out", default=str(ROOT / "benchmark_results"))
    a = parser.parse_args(argv)

    if not (ROOT / "algorithms" / f"{a.algo}.py").is_file():
        fail(f"no file algorithms/{a.algo}.py")
    for name in ("total_timesteps", "trials", "workers"):
        if not getattr(a, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive")
    if len(set(a.seeds)) != len(a.seeds):
        fail("--seeds repeats a seed")
    if a.report_every is not None and not a.report_every > 0:
        fail("--report-every must be positive")
    if a.pruner_startup_trials < 0 or (a.pruner_warmup_steps or 0) < 0:
        fail("--pruner-startup-trials and --pruner-warmup-steps must be >= 0")
    if a.worker_only and a.page_only:
        fail("--worker-only and --page-only exclude each other")
    try:
        algo_args = shlex.split(a.algo_args)
    except ValueError as e:
        fail(f"--algo-args must be a shell-quoted string ({e})")
    owned = {"--env-id": "--env-id", "--seed": "--seeds", "--total-timesteps": "--total-timesteps",
             "--torch-threads": "(1, one per seed process)", "--log-every": "--report-every"}
    for arg in algo_args:
        if arg.split("=")[0] in owned:
            fail(f"--algo-args: {arg.split('=')[0]} is set by the tool; use {owned[arg.split('=')[0]]}")

    from algo_loader import load_algo

    module = load_algo(a.algo)
    if "report" not in inspect.signature(module.main).parameters:
        fail(f"{a.algo}.py's main takes no report callback: only the deep files can be tuned")
    types = field_types(module.Args)
    params: dict[str, Param] = {}
    if not a.sweep and not a.param and (a.no_default_space or a.algo not in SEARCH_SPACES):
        fail(f"no search space for {a.algo} in tools/tune.py: give --param NAME=SPEC (spaces: {sorted(SEARCH_SPACES)})")
    if not a.sweep and not a.no_default_space:
        for name, spec in SEARCH_SPACES.get(a.algo, {}).items():
            params[name] = parse_param(f"{name}={spec}", types, a.algo)
    for item in a.param:
        p = parse_param(item, types, a.algo)
        if a.sweep and p.kind != "choice":
            fail(f"--param {item}: a sweep takes a list of values (NAME=v1,v2,...)")
        params[p.name] = p
    if a.sweep and not params:
        fail("--sweep needs at least one --param NAME=v1,v2,...")
    fixed = {"env_id", "seed", "total_timesteps", "torch_threads"}
    clash = sorted(fixed & set(params))
    if clash:
        fail(f"--param {clash[0]}: set by the tool itself; use --env-id, --seeds or --total-timesteps")
    report_every = a.report_every or max(1, a.total_timesteps // 20)
    base = ["--env-id", a.env_id, "--seed", str(a.seeds[0]), "--total-timesteps", str(a.total_timesteps),
            "--torch-threads", "1", "--log-every", str(report_every), *algo_args]
    err = io.StringIO()
    try:
        import tyro

        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = tyro.cli(module.Args, args=base)
    except SystemExit:
        said = [ln.strip(" │╭╰─") for ln in err.getvalue().splitlines()]
        said = [ln for ln in said if ln and not ln.startswith(("usage", "For full helptext"))]
        fail(f"--algo-args {a.algo_args!r} is not accepted by {a.algo}.py: {' '.join(said)[:300]}")
    module.check_args(args)  # the fixed arguments alone must be good input for the file (its own one-line errors)

    tag = (a.tag or f"{a.algo}_{a.env_id}").replace("/", "_").replace(":", "_")
    out = Path(a.out)
    storage = a.storage or f"sqlite:///{(out / 'tune' / f'{tag}.db').resolve()}"
    if a.storage is None or storage.startswith("journal:") or storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("journal:").removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"cannot create {path.parent} or {out}: {e.strerror}")
    return {"algo": a.algo, "env_id": a.env_id, "total_timesteps": a.total_timesteps, "seeds": a.seeds,
            "trials": a.trials, "params": params, "algo_args": algo_args, "sweep": a.sweep, "workers": a.workers,
            "worker_only": a.worker_only, "worker_index": a.worker_index, "page_only": a.page_only,
            "storage": storage, "study_name": a.study_name or tag, "pruner": a.pruner,
            "pruner_startup_trials": a.pruner_startup_trials,
            "pruner_warmup_steps": a.total_timesteps // 5 if a.pruner_warmup_steps is None else a.pruner_warmup_steps,
            "report_every": report_every, "sampler_seed": a.sampler_seed, "tag": tag, "out": str(out),
            "command": "python tools/tune.py " + shlex.join(argv)}


def main(argv: list[str] | None = None) -> Path | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a seed's training process, started by Child
        child_main()
        return None
    cfg = parse(argv)
    if cfg["worker_only"]:
        work(cfg, cfg["worker_index"])
        return None
    if not cfg["page_only"]:
        create_studies(cfg)
        run_workers(cfg, argv)
    page = write_sweep_page(cfg) if cfg["sweep"] else write_search_page(cfg)
    print(f"page: {page}")
    return page


if __name__ == "__main__":
    main()
