"""Evaluate a saved checkpoint of an algorithm file.

    python tools/evaluate.py ppo runs/CartPole-v1__ppo__1__1700000000/ppo.pt --episodes 10

Reads the checkpoint through the file's own `load_model(path)` (`torch.load(..., weights_only=True)`; a
missing or unreadable checkpoint, or one written by another file, gets one line on stderr and exit status 2),
evaluates through the file's own `evaluate(path, env_id, eval_episodes, seed)` and prints the deterministic
return of each episode, then the mean and standard deviation.

    python tools/evaluate.py ppo_continuous_action $(ls -v RUN/checkpoint_*.pt) RUN/expert.pt --first-reaching 0.3

With several checkpoints and `--first-reaching F`, the last one is the reference (the run's final policy): the
others are evaluated in the order given until one's mean return reaches F times the reference's (a reference
whose mean is not positive is bad input), and the last line printed is that checkpoint's path. tools/make_dataset.py's "medium" policy is chosen this way (`./run_all.sh offline`).
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
    parser.add_argument("checkpoint", nargs="+", help="the .pt file written by --save-model (several: see above)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-id", default=None, help="default: the environment the model was trained on")
    parser.add_argument("--first-reaching", type=float, default=None, metavar="F",
                        help="print the first checkpoint whose mean return reaches F times the last one's")
    a = parser.parse_args(argv)
    path = ROOT / "algorithms" / f"{a.algo.removesuffix('.py')}.py"
    if not path.is_file():
        fail(f"no file {path}")
    if a.episodes <= 0:
        fail(f"--episodes must be positive, got {a.episodes}")
    if a.first_reaching is None and len(a.checkpoint) > 1:
        fail("several checkpoints need --first-reaching F")
    if a.first_reaching is not None and (len(a.checkpoint) < 2 or not 0 < a.first_reaching <= 1):
        fail("--first-reaching F needs 0 < F <= 1 and at least two checkpoints, the last one the reference")
    module = load_algo(path.stem)
    if not callable(getattr(module, "load_model", None)) or not callable(getattr(module, "evaluate", None)):
        fail(f"{path.name} is not a deep-kind file (no load_model and evaluate): it writes no checkpoint")
    if a.first_reaching is None:
        returns, env_id = evaluate_one(module, a.checkpoint[0], a)
        for i, r in enumerate(returns):
            print(f"episode {i}: {r:.1f}")
        print(f"{env_id}: {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} episodes")
        return returns
    reference = np.mean(evaluate_one(module, a.checkpoint[-1], a)[0])
    print(f"{a.checkpoint[-1]}: {reference:.1f} (reference)")
    if reference <= 0:
        fail(f"the reference's mean return is {reference:.1f}: a fraction of it is not a level to reach")
    for path in a.checkpoint[:-1]:
        mean = np.mean(evaluate_one(module, path, a)[0])
        print(f"{path}: {mean:.1f} ({mean / reference:.0%} of the reference)")
        if mean >= a.first_reaching * reference:
            print(path)
            return [mean]
    print(a.checkpoint[-1])
    return [reference]


def evaluate_one(module, checkpoint: str, a: argparse.Namespace) -> tuple[list[float], str]:
    """Deterministic returns of one checkpoint, through the file's own load_model and evaluate, and its env id."""
    # The file's own load_model reads the checkpoint (weights_only) and answers a missing, unreadable or foreign
    # one with one line and exit status 2; the checkpoint names the environment it was trained on.
    _, ckpt = module.load_model(checkpoint)
    env_id = a.env_id or ckpt["env_id"]
    return module.evaluate(checkpoint, env_id, a.episodes, seed=a.seed), env_id


if __name__ == "__main__":
    main()
