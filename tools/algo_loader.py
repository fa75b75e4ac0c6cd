"""Import a file of algorithms/ as a module, and what each kind of file offers the tools.

The files are scripts, not a package; tools/ and tests/ share this loader and these declarations.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ROOT / "algorithms"

# The deep (Gymnasium training) kind: the module has Args, check_args(args), main(args, report=None) -> dict with
# at least these keys (report(step, mean of the last 20 training returns) is called at every progress line; True
# ends training, which is then evaluated as usual), and
# evaluate(agent_or_path, env_id, eval_episodes, seed, device="cpu") -> list of returns.
# The tools read nothing else from a run; tests/test_smoke.py checks every deep file against it.
DEEP_MAIN_KEYS = ("eval_return_mean", "eval_returns", "sps", "train_time", "global_step", "run_dir", "model_path")


def load_algo(name: str):
    """Import algorithms/<name>.py (name with or without .py) and return the module."""
    path = ALGORITHMS / f"{name.removesuffix('.py')}.py"
    spec = importlib.util.spec_from_file_location(f"algo_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module
