"""Evaluate a saved checkpoint of an algorithm file.

    python tools/evaluate.py ppo runs/CartPole-v1__ppo__1__1700000000/ppo.pt --episodes 10

Reads the checkpoint through the file's own `load_model(path)` (`torch.load(..., weights_only=True)`; a
missing or unreadable checkpoint, or one written by another file, gets one line on stderr and exit status 2),
evaluates through the file's own `evaluate(path, env_id, eval_episodes, seed)` and prints the deterministic
return of each episode, then the mean and standard deviation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algo_loader import ROOT, load_algo  # noqa: E402


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", help="file stem in algorithms/, e.g. ppo")
    parser.add_argument("checkpoint", help="the .pt file written by --save-model")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-id", default=None, help="default: the environment the model was trained on")
    a = parser.parse_args(argv)
    path = ROOT / "algorithms" / f"{a.algo.removesuffix('.py')}.py"
    if not path.is_file():
        fail(f"no file {path}")
    if a.episodes <= 0:
        fail(f"--episodes must be positive, got {a.episodes}")
    module = load_algo(path.stem)
    if not callable(getattr(module, "load_model", None)) or not callable(getattr(module, "evaluate", None)):
        fail(f"{path.name} is not a deep-kind file (no load_model and evaluate): it writes no checkpoint")
    # The file's own load_model reads the checkpoint (weights_only) and answers a missing, unreadable or foreign
    # one with one line and exit status 2; the checkpoint names the environment it was trained on.
    _, ckpt = module.load_model(a.checkpoint)
    env_id = a.env_id or ckpt["env_id"]
    returns = module.evaluate(a.checkpoint, env_id, a.episodes, seed=a.seed)
    for i, r in enumerate(returns):
        print(f"episode {i}: {r:.1f}")
    print(f"{env_id}: {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} episodes")
    return returns


if __name__ == "__main__":
    main()
