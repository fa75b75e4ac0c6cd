"""Evaluate a saved checkpoint of an algorithm file.

    python tools/evaluate.py ppo runs/CartPole-v1__ppo__1__1700000000/ppo.pt --episodes 10

Loads the checkpoint with `torch.load(..., weights_only=True)` through the file's own `evaluate`
function and prints the deterministic return of each episode, then the mean and standard deviation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from algo_loader import ROOT, load_algo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", help="file stem in algorithms/, e.g. ppo")
    parser.add_argument("checkpoint", help="the .pt file written by --save-model")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-id", default=None, help="default: the environment the model was trained on")
    a = parser.parse_args()
    path = ROOT / "algorithms" / f"{a.algo.removesuffix('.py')}.py"
    if not path.is_file():
        parser.exit(2, f"error: no file {path}\n")
    if not Path(a.checkpoint).is_file():
        parser.exit(2, f"error: no checkpoint at {a.checkpoint}\n")
    if a.episodes <= 0:
        parser.exit(2, f"error: --episodes must be positive, got {a.episodes}\n")
    module = load_algo(path.stem)

    import torch

    try:
        ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same bad input
        parser.exit(2, f"error: {a.checkpoint} is not a readable checkpoint ({type(e).__name__})\n")
    if not isinstance(ckpt, dict) or "env_id" not in ckpt:
        parser.exit(2, f"error: {a.checkpoint} is not a checkpoint written by --save-model (no env_id in it)\n")
    env_id = a.env_id or ckpt["env_id"]
    try:
        returns = module.evaluate(a.checkpoint, env_id, a.episodes, seed=a.seed)
    except (KeyError, RuntimeError, TypeError) as e:  # a checkpoint of another file: missing keys, wrong shapes
        first_line = (str(e).splitlines() or [""])[0][:80]
        parser.exit(2, f"error: {a.checkpoint} does not fit {path.name} ({type(e).__name__}: {first_line}); "
                       "was it written by another file?\n")
    for i, r in enumerate(returns):
        print(f"episode {i}: {r:.1f}")
    print(f"{env_id}: {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} episodes")


if __name__ == "__main__":
    main()
