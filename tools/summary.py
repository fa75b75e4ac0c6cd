"""Collect the per-benchmark markdown tables of benchmark_results/ into one page (printed to stdout).

    python tools/summary.py benchmark_results > benchmark_results/README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = """# Benchmark results

Produced by `./run_all.sh` (groups deep, policy, value, offpolicy; each table names its exact command).
Every table compares onefile-rl with Stable-Baselines3 (or several of our files) run side by side in the
same session, seeds alternating, one torch thread each.
"Train wall time" is training alone: imports, set-up and the final evaluation excluded, on both sides.
The final evaluation is 10 deterministic episodes on a fresh environment after the last training step.
The Sutton & Barto figures are in [classic/](classic/).
"""


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmark_results")
    parts = [HEADER]
    for md in sorted(folder.glob("*.md")):
        if md.name == "README.md":
            continue
        text = md.read_text().strip()
        png = md.with_suffix(".png")
        if png.exists():
            text += f"\n\n![{md.stem}]({png.name})"
        parts.append(text)
    print("\n\n".join(parts))


if __name__ == "__main__":
    main()
