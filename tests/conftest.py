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


def assert_one_line_exit_2(call, expected: str, capture) -> None:
    """Bad input, checked in-process: `call()` (an algorithm's check_args or main) must exit with status 2
    after writing exactly one stderr line, starting 'error: ' and containing `expected`. `capture` is
    pytest's capsys or capfd fixture. The command-line form of the same rule is test_smoke.test_bad_input."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    lines = capture.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def assert_flat_buffer_update_matches(make_agent, flatten_parameters, optimizer_class, **optimizer_kwargs) -> None:
    """The flat-buffer speed trick of the deep-RL files must not change the arithmetic: two copies of an agent
    (make_agent() -> a module with evaluate_actions(obs [B, 4], actions [B] in {0, 1}) -> (logp, entropy,
    value)), one optimised per tensor and one through flatten_parameters(agent), with the same optimiser and
    gradient clipping, hold the same parameters after three steps."""
    import torch

    torch.manual_seed(0)
    a, b = make_agent(), make_agent()
    b.load_state_dict(a.state_dict())
    flat = flatten_parameters(b)
    opt_a = optimizer_class(a.parameters(), **optimizer_kwargs)
    opt_b = optimizer_class([flat], **optimizer_kwargs)
    for step in range(3):
        x, act = torch.randn(32, 4), torch.randint(0, 2, (32,))
        for agent, opt, params in ((a, opt_a, list(a.parameters())), (b, opt_b, [flat])):
            logp, ent, v = agent.evaluate_actions(x, act)
            loss = -(logp * (step + 1)).mean() + (v**2).mean() - 0.01 * ent.mean()
            if agent is a:
                opt.zero_grad()
            else:
                flat.grad.zero_()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
    assert flat.grad.abs().sum() > 0  # gradients really landed in the flat buffer


def assert_projection_matches_hand_cases(project_distribution) -> None:
    """A categorical (C51) projection, project_distribution(next_probs, rewards, dones, gamma, support) -> [B, n_atoms],
    must reproduce every hand-worked case of reference_math.categorical_projection_cases(), rows summing to 1.
    Shared by the files that implement the projection (c51.py, rainbow.py)."""
    import torch
    from reference_math import categorical_projection_cases

    for i, case in enumerate(categorical_projection_cases()):
        m = project_distribution(case["next_probs"], case["rewards"], case["dones"], case["gamma"], case["support"])
        torch.testing.assert_close(m, case["expected"], msg=lambda text, i=i: f"case {i}: {text}")
        torch.testing.assert_close(m.sum(dim=1), torch.ones(m.shape[0]))
