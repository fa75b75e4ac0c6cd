"""Shared test helpers: import an algorithm file as a module, or run it as a script.

Every test module uses these two, so that how a file is loaded or launched is written once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from algo_loader import ALGORITHMS, ROOT, load_algo  # noqa: E402  (one loader for tests/ and tools/)


def run_algo(name: str, *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run algorithms/<name>.py in a fresh interpreter; returns the CompletedProcess (text mode)."""
    path = ALGORITHMS / f"{name.removesuffix('.py')}.py"
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def algo():
    """`algo("ppo")` returns the imported module."""
    return load_algo
