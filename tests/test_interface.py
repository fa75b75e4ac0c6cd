"""The interface each kind of file declares, and the only parts of a file that tests/ and tools/ may rely on.

Kinds today: "deep" (a Gymnasium training run), "offline" (learns from a Minari dataset, counting gradient steps),
"classic" (a tabular method reproducing a book figure) and "lm" (a causal language model on tasks generated in code,
counting optimiser steps) and "multiagent" (several agents in a PettingZoo parallel environment, team returns). A
file's kind is
its entry's `kind` in tests/smoke_configs.py.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from conftest import ALGORITHMS, DEEP_MAIN_KEYS, load_algo
from smoke_configs import SMOKE

# What every file of a kind defines, and what tools may read.
KINDS = {
    "deep": {
        "fields": ["exp_name", "seed", "torch_deterministic", "cuda", "track", "wandb_project_name", "wandb_entity",
                   "capture_video", "save_model", "env_id", "total_timesteps", "eval_episodes"],
        # name -> the leading parameters, in order
        # main(args, report=None): report(step, mean of the last 20 training returns) at every progress line;
        # returning True ends training (tools/tune.py prunes with it)
        "functions": {"check_args": ["args"], "main": ["args", "report"], "load_model": ["path"],
                      "evaluate": ["agent_or_path", "env_id", "eval_episodes", "seed"]},
        # keys of the dict main(args) returns: declared once, in tools/algo_loader.py, where the tools read them;
        # test_smoke checks them on every smoke run
        "main_keys": list(DEEP_MAIN_KEYS),
    },
    "offline": {
        # learns from a Minari dataset, no environment step in training: every count is in gradient steps
        "fields": ["exp_name", "seed", "torch_deterministic", "cuda", "track", "wandb_project_name", "wandb_entity",
                   "save_model", "checkpoint_every", "resume", "dataset_id", "total_updates", "eval_every",
                   "eval_episodes"],
        # main(args, report=None): report(gradient step, the evaluation's mean return) after each evaluation;
        # evaluate and load_model as the deep kind's (tools/evaluate.py replays a checkpoint)
        "functions": {"check_args": ["args"], "main": ["args", "report"], "load_model": ["path"],
                      "evaluate": ["agent_or_path", "env_id", "eval_episodes", "seed"]},
        # the deep kind's keys (global_step: gradient steps) and the normalised score x100, last and best (CORL's)
        "main_keys": [*DEEP_MAIN_KEYS, "normalized_score_last", "normalized_score_best"],
    },
    "classic": {
        "fields": ["seed", "plot"],
        "functions": {"check_args": ["args"], "main": ["args"]},
        "main_keys": [],
    },
    "lm": {
        # a causal language model (built in code, or any local Hugging Face folder) on prompt/completion tasks
        # generated in code: every count is in optimiser steps, evaluation decodes held-out prompts greedily
        "fields": ["exp_name", "seed", "torch_deterministic", "cuda", "track", "wandb_project_name", "wandb_entity",
                   "save_model", "checkpoint_every", "resume", "model_name_or_path", "task", "total_updates",
                   "eval_every", "eval_prompts"],
        # main(args, report=None): report(optimiser step, held-out exact match) after each evaluation; load_model(path)
        # -> (model, tokenizer) from a Hugging Face folder (what --save-model writes) or a checkpoint; heldout_pairs:
        # the evaluation's (prompt, completion) pairs, the same for every file of the family
        "functions": {"check_args": ["args"], "main": ["args", "report"], "load_model": ["path"],
                      "evaluate_lm": ["model", "tokenizer", "task", "prompts"],
                      "heldout_pairs": ["task", "num_digits", "count"]},
        # the held-out exact match (last and best) and rule compliance; global_step: optimiser steps; model_path:
        # the Hugging Face folder (None without --save-model)
        "main_keys": ["eval_exact_match", "eval_exact_match_best", "eval_rule_compliance", "sps", "train_time",
                      "global_step", "run_dir", "model_path"],
    },
    "multiagent": {
        # several agents in a PettingZoo parallel environment: --env-id names its module, --env-kwargs its arguments;
        # --num-envs copies stepped by the file's own batched loop; a step of the parallel environment (every agent
        # moves once) is one environment step; returns are team returns (each agent's summed rewards, summed over
        # the agents), per-agent returns are logged beside them
        "fields": ["exp_name", "seed", "torch_deterministic", "cuda", "track", "wandb_project_name", "wandb_entity",
                   "capture_video", "save_model", "checkpoint_every", "resume", "env_id", "env_kwargs",
                   "total_timesteps", "num_envs", "eval_episodes"],
        # as the deep kind's; evaluate returns one team return per episode, and reads the environment's arguments
        # from a checkpoint (tools/evaluate.py replays one as it replays a deep file's)
        "functions": {"check_args": ["args"], "main": ["args", "report"], "load_model": ["path"],
                      "evaluate": ["agent_or_path", "env_id", "eval_episodes", "seed"]},
        "main_keys": list(DEEP_MAIN_KEYS),
    },
}

FILES = sorted(p.name for p in ALGORITHMS.glob("*.py"))


def interface_problems(module, kind: str) -> list[str]:
    spec = KINDS[kind]
    problems = []
    args_cls = getattr(module, "Args", None)
    if args_cls is None or not dataclasses.is_dataclass(args_cls):
        return ["no Args dataclass"]
    names = {f.name for f in dataclasses.fields(args_cls)}
    problems += [f"Args lacks the field {f}" for f in spec["fields"] if f not in names]
    for fn, params in spec["functions"].items():
        obj = getattr(module, fn, None)
        if not callable(obj):
            problems.append(f"no function {fn}")
            continue
        got = list(inspect.signature(obj).parameters)[: len(params)]
        if got != params:
            problems.append(f"{fn}({', '.join(got)}) should take ({', '.join(params)}, ...)")
    source = inspect.getsource(module)
    if 'if __name__ == "__main__":\n    main(tyro.cli(Args))' not in source:
        problems.append('no `if __name__ == "__main__": main(tyro.cli(Args))` guard')
    return problems


@pytest.mark.parametrize("name", FILES)
def test_interface(name: str):
    assert name in SMOKE, f"{name} has no entry (and so no kind) in tests/smoke_configs.py"
    kind = SMOKE[name].kind
    assert kind in KINDS, f"{name}: unknown kind {kind!r}; add it to KINDS"
    problems = interface_problems(load_algo(name), kind)
    assert not problems, f"{name} ({kind}): " + "; ".join(problems)


def test_interface_check_fails_on_a_broken_file():
    class Broken:
        @dataclasses.dataclass
        class Args:
            seed: int = 1

        @staticmethod
        def main(config):
            return {}

    problems = interface_problems(Broken, "classic")
    assert "Args lacks the field plot" in problems and "no function check_args" in problems
    assert "main(config) should take (args, ...)" in problems


def test_report_true_stops_training_early(tmp_path):
    """A report that returns True at its first call ends a ppo.py run there: the run is evaluated and returns as
    usual, with global_step well below the budget; the values passed are an int step and a finite float."""
    import math

    from conftest import run_main

    calls = []

    def report(step, value):
        calls.append((step, value))
        return True

    module = load_algo("ppo")
    stopping = type("Stopping", (), {"Args": module.Args, "main": staticmethod(lambda a: module.main(a, report=report))})
    out = run_main(stopping, ["--total-timesteps", "20000", "--log-every", "1000", "--num-envs", "4",
                              "--num-steps", "64", "--update-epochs", "1", "--eval-episodes", "1"], tmp_path)
    assert len(calls) == 1, calls
    step, value = calls[0]
    assert isinstance(step, int) and isinstance(value, float) and math.isfinite(value), calls
    assert out["global_step"] == step < 5000, (out["global_step"], step)
    assert len(out["eval_returns"]) == 1
