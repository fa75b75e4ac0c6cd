"""Learning-speed figures from the training curves that tools/compare.py writes ({tag}_curves.csv).

    python tools/curve_stats.py benchmark_results/rainbow_ablation_CartPole-v1_curves.csv --threshold 475

A final evaluation cannot tell runs apart once they all reach the task's ceiling (CartPole's 500); how fast
they got there can. For each run label and seed, from the training episodes alone:
- mean training return over the run: every environment step, from the end of the first episode to the
  last step of the run, counts the return of the latest finished episode (the area under the curve
  divided by its length);
- steps to threshold: the first step at which the mean of the last 20 training episodes reached
  --threshold ("not reached" otherwise).
Prints a markdown table (mean ± std over seeds, then per seed); --out also writes it to a file. The run
length is read from the {tag}.csv next to the curves file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

WINDOW = 20  # episodes in the moving average that must reach the threshold


def mean_return_over_run(steps: np.ndarray, returns: np.ndarray, total_steps: int) -> float:
    """Step-weighted mean of the latest finished episode's return, from the first episode end to total_steps."""
    order = np.argsort(steps, kind="stable")
    steps, returns = steps[order], returns[order]
    ends = np.append(steps[1:], max(total_steps, steps[-1]))
    span = ends[-1] - steps[0]
    if span <= 0:
        return float(returns[-1])
    return float(np.sum(returns * (ends - steps)) / span)


def steps_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float, window: int = WINDOW) -> int | None:
    """First step at which the mean of the last `window` episodes is >= threshold; None if never."""
    order = np.argsort(steps, kind="stable")
    steps, returns = steps[order], returns[order]
    if len(returns) < window:
        return None
    moving = np.convolve(returns, np.ones(window) / window, mode="valid")  # moving[i] ends at episode i + window - 1
    hits = np.flatnonzero(moving >= threshold)
    return int(steps[hits[0] + window - 1]) if len(hits) else None


def table(curves_path: Path, threshold: float) -> str:
    import pandas as pd

    runs_path = curves_path.with_name(curves_path.name.replace("_curves.csv", ".csv"))
    curves, runs = pd.read_csv(curves_path), pd.read_csv(runs_path)
    lines = [f"| run | mean training return over the run | steps until the last {WINDOW} episodes averaged "
             f"≥ {threshold:g} | per seed (mean return; steps) |", "|---|---|---|---|"]
    for label in dict.fromkeys(runs["label"]):  # in the order of the runs table
        means, reach, per_seed = [], [], []
        for seed in sorted(runs.loc[runs["label"] == label, "seed"]):
            c = curves[(curves["label"] == label) & (curves["seed"] == seed)]
            total = int(runs.loc[(runs["label"] == label) & (runs["seed"] == seed), "steps"].iloc[0])
            if c.empty:
                per_seed.append(f"{seed}: no episode")
                continue
            m = mean_return_over_run(c["step"].to_numpy(), c["return"].to_numpy(float), total)
            r = steps_to_threshold(c["step"].to_numpy(), c["return"].to_numpy(float), threshold)
            means.append(m)
            reach.append(r)
            per_seed.append(f"{m:.1f}; {r:,}" if r is not None else f"{m:.1f}; not reached")
        reached = [r for r in reach if r is not None]
        if len(reached) == len(reach) and reached:
            reach_text = f"{np.mean(reached):,.0f} ± {np.std(reached):,.0f}"
        else:
            reach_text = f"{len(reached)} of {len(reach)} seeds reached it" + (
                f" (mean of those {np.mean(reached):,.0f})" if reached else "")
        mean_text = f"{np.mean(means):.1f} ± {np.std(means):.1f}" if means else "n/a"
        lines.append(f"| {label} | {mean_text} | {reach_text} | {' / '.join(per_seed)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", type=Path, help="a {tag}_curves.csv written by tools/compare.py")
    parser.add_argument("--threshold", type=float, required=True, help="training return to reach, e.g. 475")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (with its command) here")
    a = parser.parse_args()
    runs_path = a.curves.with_name(a.curves.name.replace("_curves.csv", ".csv"))
    if not a.curves.name.endswith("_curves.csv") or not a.curves.is_file() or not runs_path.is_file():
        print(f"error: {a.curves} is not a {{tag}}_curves.csv with its {{tag}}.csv beside it", file=sys.stderr)
        sys.exit(2)
    try:
        text = table(a.curves, a.threshold)
    except (KeyError, ValueError) as e:  # pandas' parse errors are ValueErrors; a missing column a KeyError
        print(f"error: {a.curves} does not have the columns tools/compare.py writes ({type(e).__name__}: {e})",
              file=sys.stderr)
        sys.exit(2)
    print(text)
    if a.out is not None:
        command = "python tools/curve_stats.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
        tag = a.curves.name.removesuffix("_curves.csv")
        a.out.write_text(f"### {tag}: learning speed\n\nCommand: `{command}`\n\nFrom the training curves of "
                         f"[{tag}.md]({tag}.md) (training episodes only, not the final evaluation).\n\n{text}\n")


if __name__ == "__main__":
    main()
