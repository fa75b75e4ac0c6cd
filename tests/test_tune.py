"""tools/tune.py: the lockstep pairing of the seeds' reports, a search with two workers on one storage, pruning of a
harmful setting, a sweep's page, and bad input.

The runs are ppo.py on CartPole-v1 with budgets of a few hundred steps: they check the machinery, not the tuning.
Each seed is a child process (a torch import each), so these tests cost about as much as a few smoke runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_exit_2

spec = importlib.util.spec_from_file_location("tools_tune", ROOT / "tools" / "tune.py")
tune = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tune  # the Param dataclass needs its module registered
spec.loader.exec_module(tune)

# Two seeds, a tiny PPO: 4 environments x 64 steps per rollout, reports every 256 steps.
BASE = ["--algo", "ppo", "--env-id", "CartPole-v1", "--seeds", "1", "2", "--report-every", "256",
        "--algo-args", "--num-envs 4 --update-epochs 4 --eval-episodes 2"]


class FakeSeed:
    """A child that sends the given messages in order and records the answers it gets."""

    def __init__(self, messages: list[dict | None]):
        self.messages, self.answers = list(messages), []

    def receive(self):
        return self.messages.pop(0)

    def send(self, word: str):
        self.answers.append(word)


def test_lockstep_pairs_the_kth_reports():
    # seed a reports twice and ends; seed b reports three times: the third round holds b alone
    a = FakeSeed([{"step": 512, "value": 10.0}, {"step": 1030, "value": 20.0}, {"result": {"r": "a"}}])
    b = FakeSeed([{"step": 520, "value": 30.0}, {"step": 1024, "value": 40.0}, {"step": 1536, "value": 50.0},
                  {"result": {"r": "b"}}])
    asked = []
    results, values, rounds, stopped = tune.lockstep([a, b], lambda s, v: asked.append((s, v)) or False, every=256)
    assert rounds == [(512, 20.0), (1024, 30.0), (1536, 50.0)]  # max step rounded down to 256s, mean value
    assert asked == rounds and stopped is None
    assert values == [[10.0, 20.0], [30.0, 40.0, 50.0]]
    assert results == [{"r": "a"}, {"r": "b"}]
    assert a.answers == ["go", "go"] and b.answers == ["go", "go", "go"]


def test_lockstep_stop_and_failure():
    a = FakeSeed([{"step": 256, "value": 1.0}, {"step": 512, "value": 1.0}, {"result": {}}])
    b = FakeSeed([{"step": 256, "value": 3.0}, {"step": 512, "value": 5.0}, {"result": {}}])
    asked = []
    _, _, rounds, stopped = tune.lockstep([a, b], lambda s, v: asked.append(s) or v > 2.5)
    assert stopped == 512 and asked == [256, 512] and rounds[-1] == (512, 3.0)
    assert a.answers == b.answers == ["go", "stop"]
    # a round whose step does not advance (a final progress line in the same bucket) is not decided
    c = FakeSeed([{"step": 300, "value": 1.0}, {"step": 310, "value": 1.0}, {"result": {}}])
    asked.clear()
    tune.lockstep([c], lambda s, v: asked.append(s) or False, every=256)
    assert asked == [256]
    with pytest.raises(tune.ChildFailed):  # a seed that ends without its result
        tune.lockstep([FakeSeed([{"step": 256, "value": 1.0}]), FakeSeed([None])], lambda s, v: False)


def test_search_with_two_workers_writes_its_page(tmp_path: Path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    page = tune.main([*BASE, "--seeds", "1", "--total-timesteps", "768", "--trials", "3", "--workers", "2", "--storage", storage,
                      "--out", str(tmp_path), "--no-default-space",
                      "--param", "learning_rate=loguniform:1e-3:3e-3", "--param", "gae_lambda=choice:0.8,0.95"])
    trials = optuna.load_study(study_name="ppo_CartPole-v1", storage=storage).trials
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), trials
    for t in trials:
        assert [s["seed"] for s in t.user_attrs["seeds"]] == [1]
        assert t.user_attrs["mean_train_return"] > 0 and set(t.params) == {"learning_rate", "gae_lambda"}
    assert len({(t.params["learning_rate"], t.params["gae_lambda"]) for t in trials}) == 3  # the workers differ
    text = page.read_text()
    assert page == tmp_path / "tune_ppo_CartPole-v1.md" and "Best: trial" in text and "--total-timesteps 768" in text
    assert sum(line.startswith(("| 0 |", "| 1 |", "| 2 |")) for line in text.splitlines()) == 3
    assert (tmp_path / "tune_ppo_CartPole-v1_history.png").is_file() or "No optimisation history" in text


def test_pruning_stops_a_harmful_trial(tmp_path: Path):
    """A learning rate of 0.3 wrecks PPO's policy within a few updates (its training return falls to about 10
    while 3e-3 climbs past 25): queued after a good trial, it is pruned at an early report."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    study.enqueue_trial({"learning_rate": 3e-3})
    study.enqueue_trial({"learning_rate": 0.3})
    tune.main([*BASE, "--total-timesteps", "1536", "--trials", "2", "--storage", storage, "--study-name", "prune",
               "--out", str(tmp_path), "--no-default-space", "--param", "learning_rate=choice:3e-3,0.3",
               "--pruner-startup-trials", "1", "--pruner-warmup-steps", "0"])
    good, bad = optuna.load_study(study_name="prune", storage=storage).trials
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED", (good, bad)
    assert bad.params["learning_rate"] == 0.3 and bad.user_attrs["pruned_at"] < 1536
    assert all(s["global_step"] < 1536 for s in bad.user_attrs["seeds"])  # both seeds stopped, then evaluated
    assert "PRUNED at" in (tmp_path / "tune_ppo_CartPole-v1.md").read_text()


def test_sweep_page(tmp_path: Path):
    page = tune.main([*BASE, "--sweep", "--total-timesteps", "512", "--seeds", "1", "--out", str(tmp_path),
                      "--param", "norm_adv=true,false"])
    text = page.read_text()
    assert page.name == "sweep_ppo_CartPole-v1.md" and "| True |" in text and "| False |" in text
    assert (tmp_path / "sweep_ppo_CartPole-v1_norm_adv.png").is_file()


@pytest.mark.parametrize("extra, expected", [
    (["--param", "no_such=choice:1,2"], "no field"),
    (["--param", "learning_rate=loguniform:0:1"], "LO > 0"),
    (["--param", "learning_rate=uniform:a:b"], "finite numbers"),
    (["--param", "num_steps=int:1.5:3"], "whole bounds"),
    (["--param", "learning_rate=normal:1:2"], "unknown kind"),
    (["--param", "norm_adv=yes,no"], "boolean"),
    (["--param", "learning_rate"], "NAME=SPEC"),
    (["--sweep", "--param", "learning_rate=loguniform:1e-4:1e-3"], "list of values"),
    (["--algo-args", "--no-such-flag 3"], "not accepted"),
    (["--algo-args", "--seed 3"], "--seeds"),
])
def test_bad_input(tmp_path: Path, capsys, extra: list[str], expected: str):
    argv = ["--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "512", "--out", str(tmp_path), *extra]
    assert_one_line_exit_2(lambda: tune.main(argv), expected, capsys)
    assert not list(tmp_path.iterdir()), "bad input wrote files"


def test_bad_input_without_a_space_or_a_study(tmp_path: Path, capsys):
    argv = ["--env-id", "CartPole-v1", "--total-timesteps", "512", "--out", str(tmp_path)]
    assert_one_line_exit_2(lambda: tune.main(["--algo", "a2c", *argv]), "no search space", capsys)
    assert_one_line_exit_2(lambda: tune.main(["--algo", "ppo", *argv, "--worker-only"]), "no study", capsys)


def test_page_with_one_complete_trial(tmp_path: Path):
    """--page-only from a storage holding one complete and one pruned trial: a line instead of each figure."""
    import optuna
    from optuna.distributions import FloatDistribution

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="one", storage=storage, direction="maximize")
    dist = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    seeds = [{"seed": 1, "eval_return_mean": 50.0, "global_step": 512, "train_time": 1.0, "mean_train_return": 20.0}]
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3}, distributions=dist, value=50.0,
                                              user_attrs={"seeds": seeds, "eval_return_mean": 50.0}))
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-2}, distributions=dist,
                                              state=optuna.trial.TrialState.PRUNED, intermediate_values={256: 9.0},
                                              user_attrs={"pruned_at": 256}))
    page = tune.main(["--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "512", "--storage", storage,
                      "--study-name", "one", "--out", str(tmp_path), "--page-only"])
    text = page.read_text()
    assert "Best: trial 0, 50.0" in text and "| 1 | PRUNED at 256 |" in text
    assert "No parameter importances" in text and "No optimisation history" in text
    assert not list(tmp_path.glob("*.png"))
