"""Compare several runs on one environment over seeds: files, their options (ablations), and SB3.

    python tools/compare.py --env-id CartPole-v1 --seeds 1 2 3 --total-timesteps 100000 \
        --run "all on|rainbow|" --run "no noisy|rainbow|--no-noisy" --tag rainbow_ablation_CartPole-v1

    python tools/compare.py --env-id CartPole-v1 --seeds 1 2 3 4 5 --total-timesteps 100000 \
        --run "dqn.py|dqn|--double-q" --run "c51.py|c51|" --run "SB3 DQN (zoo)|sb3:dqn|zoo" \
        --tag dqn_family_CartPole-v1

Each --run is one string LABEL|ALGO|ARGS: ALGO is a file stem in algorithms/ and ARGS that file's extra arguments
(one shell-quoted string), or ALGO is sb3:FILE, the Stable-Baselines3 counterpart that tools/benchmark.py
records for FILE, and ARGS is "zoo" or "default", optionally followed by |JSON of extra keyword arguments.
Every run is a subprocess started by tools/benchmark.py's machinery (same timing, same deterministic
evaluation on a fresh environment seeded seed+100000+episode, one torch thread for SB3); within a seed the
runs follow one another in the order given, so a disturbance of the machine hits all of them alike.
With --cores C1 C2 ..., as many runs go at once, each pinned to one of those CPUs and taking the next
(seed, run) pair in that same order when its core frees up: every run then shares the machine with the
others, and the table says so.

Writes into --out (benchmark_results/ by default), named by --tag: {tag}.csv (one row per run), {tag}_curves.csv,
{tag}.png (return against steps and against wall-clock seconds; mean and min-max band over seeds) and {tag}.md
(one row per label: final evaluation mean ± std over seeds, each seed's value, train time, SPS; the command;
with >= 5 seeds for every label also the IQM [95% CI] of the final evaluation and the probability that the
first label improves on each other one, from tools/aggregate.py).
`python tools/compare.py --table-only TAG [--out DIR]` rebuilds {tag}.md and {tag}.png from the CSVs without
running anything, as tools/benchmark.py's --table-only does (the command is read back from {tag}.md).
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import (  # noqa: E402
    ROOT,
    SB3_CLASS,
    SB3_ZOO,
    TABLE_ONLY_HELP,
    child_config,
    launch,
    plot_curves,
    summarise,
    table_only_request,
    zoo_key,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used to read back the command recorded in a {tag}.md, see --table-only)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, required=True)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL|ALGO|ARGS")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--tag", required=True, help="output file prefix")
    parser.add_argument("--title", default=None, help="first line of the markdown (default: the tag)")
    parser.add_argument("--out", default=str(ROOT / "benchmark_results"))
    parser.add_argument("--cores", type=int, nargs="+", default=None,
                        help="run in parallel, one run pinned to each of these CPUs (default: one run at a time, unpinned)")
    parser.add_argument("--table-only", metavar="TAG", default=None, help=TABLE_ONLY_HELP)
    return parser


def parse_runs(parser: argparse.ArgumentParser, a: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """The --run strings as (label, side, file, extra) jobs; a malformed one stops here, before any run."""
    runs = [r.split("|", 2) for r in a.run]
    if any(len(r) != 3 for r in runs):
        parser.error("every --run is LABEL|ALGO|ARGS (ARGS may be empty: 'label|algo|')")
    labels = [label for label, _, _ in runs]
    if len(set(labels)) != len(labels):
        parser.error("every --run needs its own LABEL")
    jobs = []
    for label, algo, extra in runs:
        if algo.startswith("sb3:"):
            file = algo[4:]
            config = extra.partition("|")[0]
            if file not in SB3_CLASS or config not in ("zoo", "default"):
                parser.error(f"--run {label!r}: need sb3:FILE with FILE in {sorted(SB3_CLASS)} and ARGS zoo|default[|JSON]")
            if config == "zoo" and zoo_key(file, a.env_id) not in SB3_ZOO:
                parser.error(f"--run {label!r}: no rl-zoo3 configuration recorded for {file} on {a.env_id}")
            side = "sb3"
        else:
            if not (ROOT / "algorithms" / f"{algo}.py").is_file():
                parser.error(f"--run {label!r}: no file algorithms/{algo}.py")
            file, side = algo, "ours"
        try:  # a malformed ARGS stops here, before any run
            child_config(side, file, a.env_id, 0, a.total_timesteps, a.eval_episodes, **(
                {"algo_args": extra} if side == "ours" else {"sb3_args": extra.partition("|")[2]}))
        except ValueError as e:  # shlex's "No closing quotation" and json's decoding errors are ValueErrors
            parser.error(f"--run {label!r}: ARGS must be shell-quoted arguments, or zoo|default[|JSON object] ({e})")
        jobs.append((label, side, file, extra))
    return jobs


def machine_line(a: argparse.Namespace) -> str:
    return (f"Machine: {os.cpu_count()} cores, one torch thread per run"
            + (f", {len(a.cores)} runs at a time, each pinned to one of CPUs {a.cores}" if a.cores else ", one run at a time")
            + f". Date: {time.strftime('%Y-%m-%d %H:%M')}.")


def table_lines(a: argparse.Namespace, jobs: list[tuple], rows: list[dict], command: str,
                machine: str) -> list[str]:
    """The markdown page: one row per label, mean ± std over seeds, and with >= 5 seeds for every label the
    IQM [95% CI] column and the probability that the first label improves on each other one
    (tools/aggregate.py)."""
    from aggregate import seed_statistics

    labels = [label for label, _, _, _ in jobs]
    extra = seed_statistics({label: np.array([r["eval_mean"] for r in rows if r["label"] == label])
                             for label in labels})
    iqm_head, iqm_rule = (" final eval return IQM [95% CI] |", "---|") if extra else ("", "")
    lines = [f"### {a.title or a.tag}", "", f"Command: `{command}`", "", machine, "",
             "| run | algorithm, arguments | seeds | steps | final eval return (mean ± std over seeds) |"
             + iqm_head + " per seed | train wall time (s) | SPS |",
             "|---|---|---|---|---|" + iqm_rule + "---|---|---|"]
    for label, side, algo, extra_args in jobs:
        mine = [r for r in rows if r["label"] == label]
        s = summarise(mine)
        if side == "sb3":
            config, _, overrides = extra_args.partition("|")
            what = f"SB3 {SB3_CLASS[algo]} ({config} settings" + (f", plus {overrides})" if overrides else ")")
        else:
            what = f"{algo}.py {extra_args}".strip()
        per_seed = " / ".join(f"{r['eval_mean']:.1f}" for r in mine)
        lines.append(f"| {label} | `{what}` | {s['n']} | {s['steps']:,} | {s['eval_mean']:.1f} ± {s['eval_std']:.1f} | "
                     + (f"{extra['iqm'][label]} | " if extra else "")
                     + f"{per_seed} | {s['time_mean']:.1f} ± {s['time_std']:.1f} | {s['sps_mean']:.0f} |")
    if extra:
        lines += ["", "Probability of improvement of the final eval return [95% CI]: "
                  + "; ".join(f"P({labels[0]} > {label}) = {text}"
                              for label, text in extra["improvement"].items())
                  + ". " + extra["note"]]
    lines += ["", f"Per-run numbers: [{a.tag}.csv]({a.tag}.csv); curves: [{a.tag}.png]({a.tag}.png).", ""]
    return lines


def write_report(a: argparse.Namespace, jobs: list[tuple], rows: list[dict], curves: list[tuple],
                 command: str, machine: str) -> None:
    """{tag}.png and {tag}.md into --out, and the table on stdout."""
    out, labels = Path(a.out), [label for label, _, _, _ in jobs]
    plot_curves(out / f"{a.tag}.png", curves, labels, {x: x for x in labels}, a.seeds, a.total_timesteps,
                f"{a.env_id}: mean and min-max over seeds {a.seeds}")
    lines = table_lines(a, jobs, rows, command, machine)
    (out / f"{a.tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = build_parser()
    if "--table-only" in sys.argv[1:] or any(x.startswith("--table-only=") for x in sys.argv[1:]):
        a, rows, curves, command, machine = table_only_request(sys.argv[1:], parser, "python tools/compare.py")
        write_report(a, parse_runs(parser, a), rows, curves, command, machine)
        return
    a = parser.parse_args()
    if a.cores is not None:
        available = os.sched_getaffinity(0)
        if len(set(a.cores)) != len(a.cores) or not set(a.cores) <= available:
            parser.error(f"--cores: distinct CPUs from {sorted(available)}, got {a.cores}")
    jobs = parse_runs(parser, a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python tools/compare.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    # (seed, run) pairs in the order described above; with --cores, each free core takes the next pair
    order = [(seed, job) for seed in a.seeds for job in jobs]
    free_cores: queue.Queue = queue.Queue()
    for core in a.cores or [None]:
        free_cores.put(core)
    log_lock = threading.Lock()

    def run_one(seed: int, job: tuple) -> dict:
        label, side, algo, extra = job
        core = free_cores.get()
        try:
            buffer = io.StringIO()
            if side == "ours":
                config = child_config(side, algo, a.env_id, seed, a.total_timesteps, a.eval_episodes, algo_args=extra)
            else:
                sb3_config, _, sb3_args = extra.partition("|")
                config = child_config(side, algo, a.env_id, seed, a.total_timesteps, a.eval_episodes,
                                      sb3_config=sb3_config, sb3_args=sb3_args, sb3_threads=1)
            res = launch(config, buffer, core)
        finally:
            free_cores.put(core)
        row = {"label": label, "seed": seed, "steps": res["steps"], "train_time": res["train_time"],
               "sps": res["steps"] / res["train_time"], "eval_mean": float(np.mean(res["eval_returns"])),
               "eval_std": float(np.std(res["eval_returns"]))}
        with log_lock:
            log.write(buffer.getvalue())
            log.flush()
            print(f"{a.tag} {label} seed {seed}: eval {row['eval_mean']:7.1f}  train {row['train_time']:6.1f}s", flush=True)
        return {"row": row, "curve": [(label, seed, *p) for p in res["curve"]]}

    with open(out / f"{a.tag}.log", "w") as log, ThreadPoolExecutor(max_workers=len(a.cores or [None])) as pool:
        results = list(pool.map(lambda pair: run_one(*pair), order))  # map keeps the order of `order`
    rows = [r["row"] for r in results]
    curves = [point for r in results for point in r["curve"]]

    import pandas as pd

    pd.DataFrame(rows).to_csv(out / f"{a.tag}.csv", index=False)
    pd.DataFrame(curves, columns=["label", "seed", "step", "seconds", "return"]).to_csv(out / f"{a.tag}_curves.csv", index=False)
    write_report(a, jobs, rows, curves, command, machine_line(a))


if __name__ == "__main__":
    main()
