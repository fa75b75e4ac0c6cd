"""Table, per-evaluation CSV and curves of offline-RL runs, read from their printed output.

An offline file (bc.py, ...) prints `eval at update N: return R +- S  normalised score X` at every evaluation
and, at the end, `last normalised score ..., best ...; N gradient steps in Ts`. Each log is one run, named
`<label>_<seed>.log`: runs with the same label are one row of the table (mean ± std over their seeds).

    python tools/offline_table.py --out benchmark_results/bc_hopper --logs runs/offline_logs/bc_*.log \
        --title "bc.py on this collection's Hopper-v5 datasets"

writes <out>.md (the table and the command), <out>.csv (every evaluation of every run) and <out>.png (the mean
normalised score against gradient steps, min-max over seeds shaded).

Value-based files (td3_bc.py, cql.py, iql.py) also print, once, `the data's discounted return G_t (gamma g...): mean
m` (on the scale of their Q: iql.py's rewards are scaled) and, at every progress line, `Q q`, the mean Q(s, a) of
their critic on the batch of the data's (s, a). For those runs the table gets a second part, Q against G_t, and
<out>_q.png draws Q / mean G_t against gradient steps: the behaviour's own Q would sit near 1; a critic that
extrapolates to actions the data never took climbs far above it (td3_bc.py --no-bc), a conservative one may sit
below it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import numpy as np

EVAL = re.compile(r"eval at update\s+([\d,]+): return\s+(\S+) \+-\s+(\S+)\s+normalised score\s+(\S+)")
END = re.compile(r"last normalised score .*?([\d,]+) gradient steps in ([\d.]+)s")
SPEED = re.compile(r"updates/s\s+([\d,]+)")
RETURN_TO_GO = re.compile(r"discounted return G_t \(gamma [\d.]+[^)]*\): mean ([-\d.]+)")
Q_VALUE = re.compile(r"^update\s+([\d,]+)\s+updates/s.*?\bQ (\S+)", re.MULTILINE)


def read_run(path: Path) -> dict | None:
    """One finished run's evaluations [(update, return, score)], train time and last logged updates/s; None if the
    log has no evaluation or the run did not finish."""
    text = path.read_text()
    evals = [(int(u.replace(",", "")), float(r), float(s)) for u, r, _, s in EVAL.findall(text)]
    end = END.search(text)
    if not evals or end is None:
        return None
    speeds = SPEED.findall(text)
    label, _, seed = path.stem.rpartition("_")
    g = RETURN_TO_GO.search(text)
    q = [(int(u.replace(",", "")), float(v)) for u, v in Q_VALUE.findall(text)]
    return {"label": label or path.stem, "seed": seed, "evals": evals, "train_s": float(end.group(2)),
            "ups": int(speeds[-1].replace(",", "")) if speeds else float("nan"),
            "g": float(g.group(1)) if g and q else None, "q": q}


def table(runs: list[dict]) -> list[str]:
    lines = ["| run | seeds | last score (mean ± std) | best score (mean ± std) | per seed (last) | gradient steps/s "
             "| train time per run |", "|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        last = np.array([r["evals"][-1][2] for r in rs])
        best = np.array([max(e[2] for e in r["evals"]) for r in rs])
        lines.append(f"| {label} | {len(rs)} | {last.mean():.1f} ± {last.std():.1f} | {best.mean():.1f} ± {best.std():.1f} "
                     f"| {', '.join(f'{x:.1f}' for x in last)} | {np.mean([r['ups'] for r in rs]):.0f} "
                     f"| {np.mean([r['train_s'] for r in rs]):.0f} s |")
    return lines


def q_table(runs: list[dict]) -> list[str]:
    """Q on the data's (s, a) against the data's mean discounted return G_t, for the runs that print both."""
    lines = ["| run | seeds | data's mean G_t | mean Q, last logged | mean Q, highest logged | last Q / G_t |",
             "|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["label"] for r in runs if r["g"] is not None):
        rs = [r for r in runs if r["label"] == label and r["g"] is not None]
        g = np.mean([r["g"] for r in rs])
        last = np.array([r["q"][-1][1] for r in rs])
        high = np.array([max(v for _, v in r["q"]) for r in rs])
        lines.append(f"| {label} | {len(rs)} | {g:.1f} | {last.mean():,.1f} | {high.mean():,.1f} "
                     f"| {np.mean([r['q'][-1][1] / r['g'] for r in rs]):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", nargs="+", required=True, help="the runs' logs, <label>_<seed>.log")
    parser.add_argument("--out", required=True, help="output prefix: writes <out>.md, <out>.csv and <out>.png")
    parser.add_argument("--title", default="offline runs", help="the figure's title")
    args = parser.parse_args(argv)
    runs = [r for r in (read_run(Path(p)) for p in args.logs) if r is not None]
    if not runs:
        print("error: no finished run with an evaluation among --logs", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    with open(out.with_suffix(".csv"), "w") as f:
        f.write("run,seed,update,return,normalized_score\n")
        for r in runs:
            f.writelines(f"{r['label']},{r['seed']},{u},{ret},{s}\n" for u, ret, s in r["evals"])
    command = "python tools/offline_table.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    md = table(runs) + ["", "Scores: the dataset's normalised score x100 (Minari's get_normalized_score), evaluated "
                            "every --eval-every gradient steps; last = the final evaluation, best = the highest."]
    valued = [r for r in runs if r["g"] is not None]
    if valued:
        md += ["", *q_table(valued), "", "Q: the critic's mean Q(s, a) on its batch of the data's (s, a), at its progress "
               "lines; G_t: the data's discounted return to the end of each episode, on the same reward scale "
               f"(figure: {out.name}_q.png)."]
    md += ["", f"Command: `{command}`"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:-2]))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(r["label"] for r in runs):
        curves = [r["evals"] for r in runs if r["label"] == label]
        n = min(len(c) for c in curves)
        x = np.array([e[0] for e in curves[0][:n]])
        y = np.array([[e[2] for e in c[:n]] for c in curves])
        (line,) = ax.plot(x, y.mean(0), label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            ax.fill_between(x, y.min(0), y.max(0), alpha=0.2, color=line.get_color())
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalised score (x100)")
    ax.set_title(args.title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    if valued:
        plot_q(valued, out.with_name(out.name + "_q.png"), args.title, plt)


def plot_q(runs: list[dict], path: Path, title: str, plt) -> None:
    """Q / mean G_t against gradient steps, one line per label (the mean over its seeds), on a symlog scale."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lowest = 0.0
    for label in dict.fromkeys(r["label"] for r in runs):
        curves = [r for r in runs if r["label"] == label]
        n = min(len(r["q"]) for r in curves)
        x = np.array([u for u, _ in curves[0]["q"][:n]])
        y = np.array([[v / r["g"] for _, v in r["q"][:n]] for r in curves])
        ax.plot(x, y.mean(0), label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        lowest = min(lowest, float(y.mean(0).min()))
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_yscale("symlog", linthresh=2)  # linear around 1 (Q near the data's return), logarithmic far from it
    ax.set_ylim(bottom=lowest * 1.1)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("mean Q(s, a) on the data / the data's mean G_t")
    ax.set_title(f"{title}: Q estimates against the data's returns", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
