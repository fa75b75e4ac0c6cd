"""Aggregate statistics over seeds and tasks for the benchmark tables (Agarwal et al., 2021).

    python tools/aggregate.py benchmark_results/dqn_CartPole-v1.csv
    python tools/aggregate.py benchmark_results/ppo_CartPole-v1.csv benchmark_results/ppo_Acrobot-v1.csv \
        --normalise ppo_CartPole-v1=0:500 --normalise ppo_Acrobot-v1=-500:0 --profile /tmp/profile.png

Agarwal, Schwarzer, Castro, Courville, Bellemare, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", NeurIPS 2021, https://arxiv.org/abs/2108.13264. A mean ± std over five seeds hides how uncertain
it is; the paper recommends, and this module computes:

- IQM, the interquartile mean: `scipy.stats.trim_mean(scores, 0.25)` over all runs of all tasks pooled
  (rliable's `aggregate_iqm`). trim_mean cuts int(0.25 n) scores from each end (fewer when 0.25 n is not an
  integer: 15 scores lose 3 at each end), then averages the rest. It is robust to one outlying seed, unlike
  the mean, and uses half the runs, unlike the median.
- Stratified bootstrap confidence intervals: `scipy.stats.bootstrap` with one sample per task. scipy resamples
  each sample independently, so runs are resampled with replacement within each task and every resample keeps
  each task's run count (stratified over tasks, rliable's default, which does not resample tasks).
  method="percentile" (rliable's default interval), 95%, 2000 resamples, a fixed seed
  (`np.random.default_rng(seed)`), so a table rebuilt from the same CSV shows the same interval.
- Probability of improvement P(X > Y): for each task, P(x > y) + 0.5 P(x = y) over all pairs of a run x of X
  and a run y of Y, which is the Mann-Whitney U of x against y divided by n m
  (`scipy.stats.mannwhitneyu(x, y).statistic`), averaged over tasks; its interval is the stratified
  bootstrap with samples x_task and y_task for every task (each resampled on its own).
- Performance profiles: for each threshold tau of a grid, the fraction of all runs (of all tasks pooled)
  whose normalised score is > tau, with pointwise stratified bootstrap bands.

With several tasks the scores are first normalised per task, (score - low) / (high - low) (`normalise`),
so that tasks on different scales can be pooled; a table of one task keeps the raw returns.
Intervals from fewer than 5 runs per task are not meaningful: the CLI says so, and tools/benchmark.py and
tools/compare.py add their IQM column and probability-of-improvement line only when every group has >= 5
seeds.

Why not rliable itself: rliable 1.2's `rliable.library` (its bootstrap) does not import with pandas 3.x (its
dependency `arch` breaks), and installing it pulls arch, statsmodels and seaborn. The definitions above are
rliable's, computed with scipy (pinned in requirements-dev.txt); tests/test_aggregate.py checks them against
hand computations and an exact enumeration of the bootstrap distribution.

The CLI reads CSVs written by tools/benchmark.py (runs grouped by `side`) or tools/compare.py (by `label`),
one CSV per task (the task's tag is the file name without .csv), and prints a markdown table: each group's
tasks, runs per task, mean ± std over all runs, IQM [95% CI], and with two or more groups the probability that
the first group improves on each other one [95% CI].
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

MIN_RUNS = 5  # fewer runs per task than this: intervals are not meaningful
REPS = 2000
CONFIDENCE = 0.95


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean of all the samples pooled along `axis` (one sample per task): 25% trimmed mean."""
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def mean(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of all the samples pooled along `axis` (one sample per task)."""
    return np.mean(np.concatenate(samples, axis=axis), axis=axis)


def normalise(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """(scores - low) / (high - low): `low` maps to 0 (e.g. a random policy), `high` to 1 (a top score)."""
    if not high != low:
        raise ValueError(f"normalisation needs low != high, got {low} and {high}")
    return (np.asarray(scores, dtype=float) - low) / (high - low)


def stratified_bootstrap_ci(scores_per_task: Sequence[np.ndarray], statistic: Callable = iqm,
                            reps: int = REPS, confidence: float = CONFIDENCE, seed: int = 0) -> tuple:
    """(point estimate, low, high): `statistic(*scores_per_task, axis=-1)` and its percentile bootstrap
    interval, resampling runs with replacement within each task (each task's array is one sample to scipy,
    which resamples samples independently). A vector-valued statistic gives arrays of the same shape."""
    samples = [np.asarray(s, dtype=float) for s in scores_per_task]
    point = statistic(*samples, axis=-1)
    result = stats.bootstrap(samples, statistic, n_resamples=reps, confidence_level=confidence,
                             method="percentile", vectorized=True, paired=False,
                             rng=np.random.default_rng(seed))
    return point, result.confidence_interval.low, result.confidence_interval.high


def _improvement(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) from samples ordered x_1, y_1, x_2, y_2, ...: the mean over tasks of U / (n m)."""
    per_task = [stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
                / (x.shape[axis] * y.shape[axis]) for x, y in zip(samples[0::2], samples[1::2], strict=True)]
    return np.mean(per_task, axis=0)


def probability_of_improvement(x_per_task: Sequence[np.ndarray], y_per_task: Sequence[np.ndarray]) -> float:
    """P(X > Y): for each task the probability that a run of X scores more than a run of Y (ties count half),
    averaged over tasks."""
    return float(_improvement(*_interleave(x_per_task, y_per_task)))


def probability_of_improvement_ci(x_per_task: Sequence[np.ndarray], y_per_task: Sequence[np.ndarray],
                                  reps: int = REPS, confidence: float = CONFIDENCE, seed: int = 0) -> tuple:
    """(P(X > Y), low, high), the interval by the stratified bootstrap over x_task and y_task of each task."""
    samples = _interleave(x_per_task, y_per_task)
    point, low, high = stratified_bootstrap_ci(samples, _improvement, reps, confidence, seed)
    return float(point), float(low), float(high)


def _interleave(x_per_task: Sequence[np.ndarray], y_per_task: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(x_per_task) != len(y_per_task):
        raise ValueError(f"X has {len(x_per_task)} tasks and Y {len(y_per_task)}")
    return [np.asarray(s, dtype=float) for pair in zip(x_per_task, y_per_task, strict=True) for s in pair]


def performance_profile(scores_per_task: Sequence[np.ndarray], taus: np.ndarray) -> np.ndarray:
    """For each tau, the fraction of all runs (every task's runs pooled) whose score is > tau."""
    pooled = np.concatenate([np.asarray(s, dtype=float) for s in scores_per_task])
    return np.mean(pooled[:, None] > np.asarray(taus, dtype=float)[None, :], axis=0)


def performance_profile_bands(scores_per_task: Sequence[np.ndarray], taus: np.ndarray, reps: int = REPS,
                              confidence: float = CONFIDENCE, seed: int = 0) -> tuple:
    """(profile, low, high) over `taus`: the profile and its pointwise stratified bootstrap band."""
    taus = np.asarray(taus, dtype=float)

    def profile(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        pooled = np.moveaxis(np.concatenate(samples, axis=axis), axis, -1)  # (..., runs)
        return np.moveaxis(np.mean(pooled[..., None] > taus, axis=-2), -1, 0)  # (taus, ...)

    return stratified_bootstrap_ci(scores_per_task, profile, reps, confidence, seed)


def seed_statistics(scores: dict[str, np.ndarray], reps: int = REPS, seed: int = 0,
                    digits: int = 1) -> dict | None:
    """For a table of one task with one row per group (its final returns over seeds): each group's
    "IQM [95% CI]" cell, and each other group's "P(first > other) [95% CI]" text, the first group being the
    first key. None unless every group has >= MIN_RUNS seeds. Used by tools/benchmark.py and
    tools/compare.py."""
    if not scores or min(len(v) for v in scores.values()) < MIN_RUNS:
        return None
    cells = {}
    for group, values in scores.items():
        point, low, high = stratified_bootstrap_ci([values], iqm, reps, seed=seed)
        cells[group] = f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    first, *others = scores
    improvement = {}
    for other in others:
        p, low, high = probability_of_improvement_ci([scores[first]], [scores[other]], reps, seed=seed)
        improvement[other] = f"{p:.2f} [{low:.2f}, {high:.2f}]"
    return {"iqm": cells, "improvement": improvement, "note": method_note(reps, seed)}


def method_note(reps: int, seed: int) -> str:
    """One sentence that says how the IQM and the intervals were computed."""
    return (f"IQM: interquartile mean (25% trimmed mean); [95% CI]: percentile stratified bootstrap over "
            f"seeds, {reps} resamples, seed {seed}; P(X > Y): probability that a run of X beats a run of Y, "
            f"ties half (Agarwal et al., 2021; tools/aggregate.py).")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def read_tasks(paths: list[str], metric: str) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """(groups in order of first appearance, {task tag: {group: scores}}) from the tools' per-run CSVs."""
    import pandas as pd

    groups: list[str] = []
    tasks: dict[str, dict[str, np.ndarray]] = {}
    for path in map(Path, paths):
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as e:
            fail(f"cannot read {path} as a CSV ({type(e).__name__})")
        column = "side" if "side" in frame else "label" if "label" in frame else None
        if column is None or metric not in frame:
            fail(f"{path} has no side/label column or no {metric!r} column "
                 f"(columns: {', '.join(frame.columns)})")
        if path.stem in tasks:
            fail(f"two CSVs for the task {path.stem!r}")
        tasks[path.stem] = {}
        for group in dict.fromkeys(frame[column].astype(str)):
            values = frame.loc[frame[column].astype(str) == group, metric].to_numpy(dtype=float)
            if not np.all(np.isfinite(values)):
                fail(f"{path}: non-finite {metric} for {group!r}")
            tasks[path.stem][group] = values
            if group not in groups:
                groups.append(group)
    for tag, by_group in tasks.items():
        missing = [g for g in groups if g not in by_group]
        if missing:
            fail(f"task {tag!r} has no runs of {', '.join(map(repr, missing))}; every CSV needs every group")
    return groups, tasks


def parse_normalisation(items: list[str], tags: list[str]) -> dict[str, tuple[float, float]]:
    """{task tag: (low, high)} from TASKTAG=LOW:HIGH strings."""
    bounds = {}
    for item in items:
        tag, _, rest = item.partition("=")
        low, _, high = rest.partition(":")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            fail(f"--normalise {item!r}: expected TASKTAG=LOW:HIGH with numbers, e.g. ppo_CartPole-v1=0:500")
        if tag not in tags:
            fail(f"--normalise {item!r}: no task {tag!r} (tasks: {', '.join(tags)})")
        if not (np.isfinite(lo) and np.isfinite(hi) and hi != lo):
            fail(f"--normalise {item!r}: LOW and HIGH must be finite and different")
        bounds[tag] = (lo, hi)
    return bounds


def aggregate_table(groups: list[str], tasks: dict[str, dict[str, np.ndarray]], normalised: bool, reps: int,
                    seed: int) -> list[str]:
    """The markdown lines of the CLI's table (see the module docstring)."""
    digits = 3 if normalised else 1
    runs = {g: [len(by_group[g]) for by_group in tasks.values()] for g in groups}
    what = "normalised score" if normalised else "score"
    lines = [f"| group | tasks | runs per task | {what}: mean ± std over all runs | IQM [95% CI] |",
             "|---|---|---|---|---|"]
    for g in groups:
        per_task = [by_group[g] for by_group in tasks.values()]
        pooled = np.concatenate(per_task)
        point, low, high = stratified_bootstrap_ci(per_task, iqm, reps, seed=seed)
        counts = "/".join(map(str, runs[g])) if len(set(runs[g])) > 1 else str(runs[g][0])
        spread = f"{pooled.mean():.{digits}f} ± {pooled.std():.{digits}f}"
        interval = f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
        lines.append(f"| {g} | {len(per_task)} | {counts} | {spread} | {interval} |")
    if len(groups) > 1:
        first = groups[0]
        lines += ["", "| probability of improvement | P(X > Y) [95% CI] |", "|---|---|"]
        for other in groups[1:]:
            p, low, high = probability_of_improvement_ci([t[first] for t in tasks.values()],
                                                         [t[other] for t in tasks.values()], reps, seed=seed)
            lines.append(f"| X = {first}, Y = {other} | {p:.2f} [{low:.2f}, {high:.2f}] |")
    lines += ["", method_note(reps, seed)]
    if min(min(r) for r in runs.values()) < MIN_RUNS:
        lines += ["", f"Note: fewer than {MIN_RUNS} runs per task; intervals from n < {MIN_RUNS} are not "
                      f"meaningful (the benchmark tables show IQM columns only at >= {MIN_RUNS} seeds)."]
    return lines


def plot_profile(path: Path, groups: list[str], tasks: dict[str, dict[str, np.ndarray]], normalised: bool,
                 reps: int, seed: int) -> None:
    """Performance profiles of every group with their bootstrap bands, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = np.concatenate([s for by_group in tasks.values() for s in by_group.values()])
    taus = np.linspace(min(0.0, pooled.min()) if normalised else pooled.min(),
                       max(1.0, pooled.max()) if normalised else pooled.max(), 101)
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in groups:
        profile, low, high = performance_profile_bands([t[g] for t in tasks.values()], taus, reps, seed=seed)
        line = ax.plot(taus, profile, label=g)[0]
        ax.fill_between(taus, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("normalised score τ" if normalised else "score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"performance profiles, {len(tasks)} task(s), 95% stratified bootstrap bands")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+",
                        help="per-run CSVs of tools/benchmark.py or tools/compare.py, one per task")
    parser.add_argument("--metric", default="eval_mean", help="the column to aggregate")
    parser.add_argument("--normalise", action="append", default=[], metavar="TASKTAG=LOW:HIGH",
                        help="per-task normalisation (the tag is the CSV's file name without .csv); "
                             "needed for every task when there are several")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's random generator")
    parser.add_argument("--out", default=None, metavar="PAGE.md", help="also write the table to this file")
    parser.add_argument("--profile", default=None, metavar="PNG", help="draw the performance profiles here")
    a = parser.parse_args(argv)
    if a.reps < 100:
        fail(f"--reps {a.reps}: use at least 100 resamples (2000 by default)")
    groups, tasks = read_tasks(a.csv, a.metric)
    bounds = parse_normalisation(a.normalise, list(tasks))
    if len(tasks) > 1 and set(bounds) != set(tasks):
        missing = [t for t in tasks if t not in bounds]
        fail(f"{len(tasks)} tasks are pooled only on normalised scores: add --normalise TAG=LOW:HIGH for "
             f"{', '.join(missing)}")
    tasks = {tag: {g: normalise(s, *bounds[tag]) if tag in bounds else s for g, s in by_group.items()}
             for tag, by_group in tasks.items()}
    normalised = bool(bounds)
    title = (f"### {a.metric}: {', '.join(tasks)}" + (" (normalised: " + ", ".join(
        f"{t} {lo:g}..{hi:g}" for t, (lo, hi) in bounds.items()) + ")" if normalised else ""))
    lines = [title, "", *aggregate_table(groups, tasks, normalised, a.reps, a.seed), ""]
    if a.profile:
        plot_profile(Path(a.profile), groups, tasks, normalised, a.reps, a.seed)
        lines += [f"Performance profiles: [{Path(a.profile).name}]({Path(a.profile).name}).", ""]
    text = "\n".join(lines)
    if a.out:  # the page records the command that wrote it
        command = shlex.join(["python", "tools/aggregate.py", *(sys.argv[1:] if argv is None else argv)])
        Path(a.out).write_text("\n".join([title, "", f"Command: `{command}`", "",
                                          f"Date: {time.strftime('%Y-%m-%d %H:%M')}.", "", *lines[2:]]))
    print(text)
    return lines


if __name__ == "__main__":
    main()
