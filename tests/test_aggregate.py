"""tools/aggregate.py against computations written out here, and the IQM column of tools/benchmark.py and
tools/compare.py tables.

- IQM: sorted by hand, quarters dropped as scipy's trim_mean drops them (int(0.25 n) from each end), averaged.
- Stratified bootstrap intervals: with tiny samples every resample can be listed (each equally likely),
  which gives the bootstrap distribution exactly; the Monte-Carlo percentile endpoints must sit at the nominal
  levels of that exact distribution, within the sampling error of a quantile estimated from `reps` resamples.
- Probability of improvement and performance profiles: direct pairwise and threshold counts.
No training runs: the table tests feed the table functions hand-made rows.
"""

from __future__ import annotations

import itertools
import math
import shlex

import aggregate
import benchmark
import compare
import numpy as np
import pytest
from conftest import assert_one_line_exit_2
from scipy import stats

# a fixed score matrix: 3 tasks x 5 runs
TASKS = [np.array([3.0, 1.0, 4.0, 1.0, 5.0]), np.array([9.0, 2.0, 6.0, 5.0, 3.0]),
         np.array([5.0, 8.0, 9.0, 7.0, 6.0])]


def test_iqm_by_hand():
    # one task of 5: sorted 1 1 3 4 5; 0.25 * 5 = 1.25 is not an integer: trim_mean drops int(1.25) = 1
    # per end
    assert aggregate.iqm(TASKS[0]) == pytest.approx((1 + 3 + 4) / 3)
    # all 15 pooled: sorted 1 1 2 3 3 4 5 5 5 6 6 7 8 9 9; 0.25 * 15 = 3.75, so 3 dropped per end (not 4).
    # (The mean of the per-task IQMs, (8/3 + 14/3 + 21/3) / 3 = 43/9, is another number: the runs are pooled.)
    assert aggregate.iqm(*TASKS) == pytest.approx((3 + 3 + 4 + 5 + 5 + 5 + 6 + 6 + 7) / 9)
    # 8 scores: 0.25 * 8 = 2 exactly, 2 dropped per end: sorted 0 1 2 3 4 100 200 300 -> mean of 2 3 4 100
    assert aggregate.iqm(np.array([300.0, 0, 4, 1, 2, 3, 100, 200])) == pytest.approx((2 + 3 + 4 + 100) / 4)
    assert aggregate.mean(*TASKS) == pytest.approx(sum(map(np.sum, TASKS)) / 15)
    # a batch of resamples along the last axis, as the bootstrap calls it
    batch = aggregate.iqm(np.stack([TASKS[0], TASKS[1]]), np.stack([TASKS[1], TASKS[2]]), axis=-1)
    assert batch == pytest.approx([aggregate.iqm(TASKS[0], TASKS[1]), aggregate.iqm(TASKS[1], TASKS[2])])


def exact_bootstrap(samples: list[np.ndarray], statistic) -> tuple[np.ndarray, np.ndarray]:
    """Every stratified resample (each sample drawn with replacement, all n^n index tuples per sample, equally
    likely): (statistic values sorted, their cumulative probabilities)."""
    per_sample = [np.array(list(itertools.product(range(len(s)), repeat=len(s)))) for s in samples]
    combos = list(itertools.product(*[range(len(idx)) for idx in per_sample]))
    resampled = [np.stack([s[per_sample[k][c[k]]] for c in combos]) for k, s in enumerate(samples)]
    values = np.sort(np.asarray(statistic(*resampled, axis=-1), dtype=float))
    return values, np.arange(1, len(values) + 1) / len(values)


def assert_endpoint_at_level(values: np.ndarray, endpoint: float, level: float, reps: int) -> None:
    """The exact bootstrap distribution puts at most level + tol below the Monte-Carlo endpoint and at least
    level - tol at or below it. tol: 5 standard errors of the fraction of `reps` resamples below a quantile,
    sqrt(level (1 - level) / reps) (the endpoint is that fraction's empirical quantile)."""
    tol = 5 * math.sqrt(level * (1 - level) / reps)
    below = np.mean(values < endpoint - 1e-12)
    at_or_below = np.mean(values <= endpoint + 1e-12)
    assert below <= level + tol and at_or_below >= level - tol, (endpoint, level, below, at_or_below, tol)


def test_stratified_bootstrap_matches_the_enumerated_distribution():
    samples = [np.array([0.0, 1.0, 5.0]), np.array([2.0, 3.0, 4.0, 10.0])]  # 27 x 256 = 6912 resamples
    values, _ = exact_bootstrap(samples, aggregate.iqm)
    reps = 20_000
    point, low, high = aggregate.stratified_bootstrap_ci(samples, aggregate.iqm, reps=reps, seed=1)
    assert point == pytest.approx(stats.trim_mean([0, 1, 5, 2, 3, 4, 10], 0.25))
    assert_endpoint_at_level(values, low, 0.025, reps)
    assert_endpoint_at_level(values, high, 0.975, reps)
    # resampling the 7 runs pooled (not stratified) would give another distribution: its 2.5% point differs
    pooled = np.concatenate(samples)
    unstratified, _ = exact_bootstrap([pooled], aggregate.iqm)
    assert abs(np.quantile(unstratified, 0.025) - np.quantile(values, 0.025)) > 0.1
    # same seed, same interval: a rebuilt table shows the same numbers
    assert aggregate.stratified_bootstrap_ci(samples, aggregate.iqm, reps=reps, seed=1) == (point, low, high)


def direct_improvement(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """Mean over tasks of (number of pairs x > y + half the pairs x == y) / (n m), by a double loop."""
    per_task = []
    for x, y in zip(xs, ys, strict=True):
        wins = sum((1.0 if a > b else 0.5 if a == b else 0.0) for a in x for b in y)
        per_task.append(wins / (len(x) * len(y)))
    return float(np.mean(per_task))


def test_probability_of_improvement():
    # by hand: x = 1 2 3 against y = 2 2: 1 loses twice, 2 ties twice (2 x 0.5), 3 wins twice: 3 / 6
    p = aggregate.probability_of_improvement([np.array([1.0, 2, 3])], [np.array([2.0, 2])])
    assert p == pytest.approx(0.5)
    ys = [TASKS[1], TASKS[2], TASKS[0] + 1.0]
    p = aggregate.probability_of_improvement(TASKS, ys)
    assert p == pytest.approx(direct_improvement(TASKS, ys))
    assert p + aggregate.probability_of_improvement(ys, TASKS) == pytest.approx(1.0)
    # its interval against the enumerated bootstrap: x and y resampled on their own (27 x 27 resamples)
    x, y = np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0, 4.0])
    values, _ = exact_bootstrap([x, y], aggregate._improvement)
    reps = 20_000
    point, low, high = aggregate.probability_of_improvement_ci([x], [y], reps=reps, seed=2)
    assert point == pytest.approx(direct_improvement([x], [y]))
    assert_endpoint_at_level(values, low, 0.025, reps)
    assert_endpoint_at_level(values, high, 0.975, reps)


def test_performance_profile_and_normalise():
    taus = np.array([0.0, 1.0, 4.5, 5.0, 8.9, 9.0])
    pooled = np.concatenate(TASKS)
    direct = [sum(1 for s in pooled if s > tau) / len(pooled) for tau in taus]
    assert aggregate.performance_profile(TASKS, taus) == pytest.approx(direct)
    profile, low, high = aggregate.performance_profile_bands(TASKS, taus, reps=500, seed=0)
    assert profile == pytest.approx(direct)
    assert np.all(low <= profile) and np.all(profile <= high)
    # every run > 0 and none > 9, in every resample
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0
    assert aggregate.normalise(np.array([0.0, 250.0, 500.0]), 0.0, 500.0) == pytest.approx([0.0, 0.5, 1.0])
    assert aggregate.normalise(np.array([-500.0, -100.0]), -500.0, 0.0) == pytest.approx([0.0, 0.8])


def write_csv(path, column: str, groups: dict[str, list[float]]) -> None:
    lines = [f"{column},seed,steps,train_time,sps,eval_mean,eval_std"]
    for group, values in groups.items():
        lines += [f"{group},{seed},1000,1.0,1000.0,{v},0.0" for seed, v in enumerate(values, 1)]
    path.write_text("\n".join(lines) + "\n")


def test_cli(tmp_path, capsys):
    write_csv(tmp_path / "algo_Env-v1.csv", "side",
              {"ours": [10, 20, 30, 40, 50], "sb3": [5, 15, 25, 35, 45]})
    lines = aggregate.main([str(tmp_path / "algo_Env-v1.csv"), "--reps", "500",
                            "--out", str(tmp_path / "page.md")])
    out = capsys.readouterr().out
    assert "| ours | 1 | 5 | 30.0 ± 14.1 | 30.0 [" in out and "| sb3 | 1 | 5 | 25.0 ± 14.1 | 25.0 [" in out
    # P(ours > sb3): each of ours beats the sb3 runs below it: 1 + 2 + 3 + 4 + 5 = 15 wins of 25 pairs
    assert "| X = ours, Y = sb3 | 0.60 [" in out
    assert "not meaningful" not in out
    page = (tmp_path / "page.md").read_text()  # the table, below the title, the command and the date
    assert page.startswith(lines[0] + "\n\nCommand: `python tools/aggregate.py ") and page.endswith("\n".join(lines[2:]))
    # a compare.py CSV with 3 runs per label: the table prints, with the warning
    write_csv(tmp_path / "ablation.csv", "label", {"a": [1, 2, 3], "b": [1, 1, 1]})
    aggregate.main([str(tmp_path / "ablation.csv"), "--reps", "200"])
    assert "intervals from n < 5 are not meaningful" in capsys.readouterr().out
    # two tasks: normalisation is required, then they pool
    write_csv(tmp_path / "algo_Other-v1.csv", "side", {"ours": [0, -100, -50, -10, -20], "sb3": [-500] * 5})
    two = [str(tmp_path / "algo_Env-v1.csv"), str(tmp_path / "algo_Other-v1.csv"), "--reps", "200"]
    assert_one_line_exit_2(lambda: aggregate.main(two), "--normalise", capsys)
    assert_one_line_exit_2(lambda: aggregate.main([*two, "--normalise", "algo_Env-v1=0:50"]), "algo_Other-v1",
                           capsys)
    aggregate.main([*two, "--normalise", "algo_Env-v1=0:50", "--normalise", "algo_Other-v1=-500:0",
                    "--profile", str(tmp_path / "profile.png")])
    out = capsys.readouterr().out
    assert "| ours | 2 | 5 |" in out and (tmp_path / "profile.png").stat().st_size > 0
    # on normalised scores: sb3 scores 0 on the second task, ours > 0 there: P = (0.6 + 1) / 2
    assert "| X = ours, Y = sb3 | 0.80 [" in out


def benchmark_rows(seeds: int) -> list[dict]:
    rows = []
    for seed in range(1, seeds + 1):
        rows.append({"side": "ours", "seed": seed, "steps": 1000, "train_time": 2.0, "sps": 500.0,
                     "eval_mean": 100.0 + seed, "eval_std": 0.0})
        rows.append({"side": "sb3", "seed": seed, "steps": 1000, "train_time": 4.0, "sps": 250.0,
                     "eval_mean": 90.0 + seed, "eval_std": 0.0})
    return rows


@pytest.mark.parametrize("seeds", [3, 5])
def test_benchmark_table_iqm_column(seeds: int):
    a = benchmark.build_parser().parse_args(["--algo", "ppo", "--env-id", "CartPole-v1", "--compare-sb3",
                                             "--total-timesteps", "1000",
                                             "--seeds", *map(str, range(1, seeds + 1))])
    text = "\n".join(benchmark.table_lines(a, benchmark_rows(seeds), "python tools/benchmark.py x",
                                           "Machine: m."))
    assert ("IQM [95% CI]" in text) == (seeds >= 5)
    assert ("P(ours > SB3) = " in text) == (seeds >= 5)
    assert f"| onefile-rl ppo.py | {seeds} | 1,000 | {100 + (seeds + 1) / 2:.1f} ± " in text
    if seeds >= 5:  # IQM of 101..105: mean of 102 103 104; each run of ours beats each of SB3's (91..95)
        assert "| 103.0 [" in text and "P(ours > SB3) = 1.00 [1.00, 1.00]" in text


@pytest.mark.parametrize("seeds", [3, 5])
def test_compare_table_iqm_column(seeds: int):
    parser = compare.build_parser()
    a = parser.parse_args(["--env-id", "CartPole-v1", "--total-timesteps", "1000", "--tag", "t",
                           "--run", "mine|dqn|", "--run", "SB3|sb3:dqn|zoo",
                           "--seeds", *map(str, range(1, seeds + 1))])
    rows = [{**r, "label": "mine" if r.pop("side") == "ours" else "SB3"} for r in benchmark_rows(seeds)]
    text = "\n".join(compare.table_lines(a, compare.parse_runs(parser, a), rows, "python tools/compare.py x",
                                         "Machine: m."))
    assert ("IQM [95% CI]" in text) == (seeds >= 5)
    assert ("P(mine > SB3) = 1.00" in text) == (seeds >= 5)


def test_table_only_reads_the_recorded_command(tmp_path, capsys):
    parser = benchmark.build_parser()
    argv = ["--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "1000", "--compare-sb3",
            "--algo-args=--num-envs 2", "--seeds", "1", "2", "3", "4", "5", "--tag", "t"]
    a = parser.parse_args(argv)
    command = "python tools/benchmark.py " + shlex.join(argv)  # as the tool records it
    rows = benchmark_rows(5)
    page = benchmark.table_lines(a, rows, command, "Machine: 2 cores. Date: d.")
    (tmp_path / "t.md").write_text("\n".join(page))
    write_csv(tmp_path / "t.csv", "side", {"ours": [101, 102, 103, 104, 105], "sb3": [91, 92, 93, 94, 95]})
    (tmp_path / "t_curves.csv").write_text("side,seed,step,seconds,return\nours,1,10,0.1,5.0\n")
    again, rows_read, curves, command_read, machine = benchmark.table_only_request(
        ["--table-only", "t", "--out", str(tmp_path)], parser, "python tools/benchmark.py")
    assert command_read == command
    assert machine.startswith("Machine: 2 cores. Date: d.\nTable rebuilt from t.csv")
    assert again.algo_args == "--num-envs 2" and again.seeds == [1, 2, 3, 4, 5] and again.out == str(tmp_path)
    assert [r["eval_mean"] for r in rows_read if r["side"] == "ours"] == [101, 102, 103, 104, 105]
    assert curves == [("ours", 1, 10, 0.1, 5.0)]
    # no recorded command and no arguments given: refused before anything is written
    (tmp_path / "t.md").unlink()
    with pytest.raises(SystemExit) as exit_info:
        benchmark.table_only_request(["--table-only", "t", "--out", str(tmp_path)], parser,
                                     "python tools/benchmark.py")
    assert exit_info.value.code == 2 and "command recorded in" in capsys.readouterr().err
