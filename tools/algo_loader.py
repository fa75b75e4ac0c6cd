"""Import a file of algorithms/ as a module. The files are scripts, not a package; tools/ and tests/ share this."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ROOT / "algorithms"


def load_algo(name: str):
    """Import algorithms/<name>.py (name with or without .py) and return the module."""
    path = ALGORITHMS / f"{name.removesuffix('.py')}.py"
    spec = importlib.util.spec_from_file_location(f"algo_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module
