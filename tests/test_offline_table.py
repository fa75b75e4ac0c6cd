"""tools/offline_table.py (which run_all.sh uses for the offline tables) on real runs' printed output: one row per
label, last and best scores as printed, one CSV line per evaluation, the figures; for a value-based file the Q
estimates against the data's discounted return, as printed.

The tiny datasets (conftest.OFFLINE_DATASETS) live in a temporary MINARI_DATASETS_PATH set for the test process.
"""

from __future__ import annotations

import re

import numpy as np
import offline_table
from conftest import load_algo, run_main

TINY = ["--dataset-id", "tiny/cartpole-random-v0", "--total-updates", "4", "--eval-every", "2", "--eval-episodes", "1",
        "--hidden-sizes", "8"]


def test_table_and_q_estimates_from_the_runs_output(tmp_path, capsys):
    finals = []
    for seed in (1, 2):
        capsys.readouterr()
        finals.append(run_main(load_algo("bc"), [*TINY, "--seed", str(seed)], tmp_path / str(seed)))
        (tmp_path / f"bc_tiny_{seed}.log").write_text(capsys.readouterr().out)
    capsys.readouterr()
    run_main(load_algo("td3_bc"), [*TINY, "--dataset-id", "tiny/pendulum-random-v0", "--log-every", "2"], tmp_path / "td3")
    td3_log = capsys.readouterr().out
    (tmp_path / "td3_bc_tiny_1.log").write_text(td3_log)
    logs = [str(tmp_path / name) for name in ("bc_tiny_1.log", "bc_tiny_2.log", "td3_bc_tiny_1.log")]
    offline_table.main(["--out", str(tmp_path / "table"), "--logs", *logs])

    md = (tmp_path / "table.md").read_text()
    last = np.array([round(o["normalized_score_last"], 1) for o in finals])
    best = np.array([round(o["normalized_score_best"], 1) for o in finals])
    assert f"| bc_tiny | 2 | {last.mean():.1f} ± {last.std():.1f} | {best.mean():.1f} ± {best.std():.1f} |" in md
    assert (tmp_path / "table.csv").read_text().count("\nbc_tiny,") == 4  # 2 evaluations x 2 seeds
    assert (tmp_path / "table.png").stat().st_size > 0

    # Q against G_t: only td3_bc's run prints them; its row holds the printed G_t and the last printed Q
    g = float(re.search(r"G_t \(gamma [\d.]+\): mean (\S+),", td3_log).group(1))
    qs = [float(q) for q in re.findall(r"^update .*\bQ (\S+)", td3_log, re.MULTILINE)]
    assert len(qs) == 2
    assert f"| td3_bc_tiny | 1 | {g:.1f} | {qs[-1]:,.1f} | {max(qs):,.1f} | {qs[-1] / g:.2f} |" in md
    q_part = md.split("data's mean G_t")[1]
    assert "| bc_tiny |" not in q_part and q_part.count("\n| td3_bc_tiny |") == 1
    assert (tmp_path / "table_q.png").stat().st_size > 0
