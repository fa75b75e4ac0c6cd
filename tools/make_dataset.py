"""Build a Minari dataset for the offline-RL files from this collection's own policies, offline and deterministic.

    # D4RL's levels for one task, from one training run of ppo_continuous_action.py (checkpoints every 50k steps):
    python tools/make_dataset.py --env-id Hopper-v5 --dataset-id onefile/hopper/random-v0 --steps 200000
    python tools/make_dataset.py --env-id Hopper-v5 --dataset-id onefile/hopper/expert-v0 --steps 200000 \
        --policy ppo_continuous_action:runs/<run>/ppo_continuous_action.pt
    python tools/make_dataset.py --env-id Hopper-v5 --dataset-id onefile/hopper/medium-v0 --steps 200000 \
        --policy ppo_continuous_action:runs/<run>/checkpoint_<medium step>.pt
    python tools/make_dataset.py --env-id Hopper-v5 --dataset-id onefile/hopper/medium-replay-v0 --steps 200000 \
        --policy random ppo_continuous_action:runs/<run>/checkpoint_50000.pt ... checkpoint_<medium step>.pt
    python tools/make_dataset.py --dataset-id onefile/hopper/medium-expert-v0 \
        --merge onefile/hopper/medium-v0 onefile/hopper/expert-v0

What each option builds:
- no --policy: a uniformly random policy (D4RL's "random").
- --policy ALGO:PATH ...: each policy in turn plays an equal share of --steps (the last one the remainder), with
  its deterministic `greedy_action` (the checkpoint is read by algorithms/ALGO.py's own `load_model`, with
  `weights_only=True`), plus exploration noise --noise: Gaussian noise of that standard deviation in units of
  half the action range (Box, clipped to the bounds), or that probability of a uniformly random action
  (Discrete). `random` in the list is the random policy. Given the checkpoints of one training run in order,
  this is how "medium-replay" is built here: D4RL's is the replay buffer of the SAC run up to the medium policy;
  an on-policy run (ppo_continuous_action.py) keeps no buffer, so its saved checkpoints up to the medium one
  replay the run, one share each, starting with the random policy its training starts from.
- --merge ID ID ...: the episodes of existing datasets one after the other (D4RL's "medium-expert" is medium's
  episodes then expert's), with the first one's environment and reference scores.

Episodes are reset with seeds --seed, --seed + 1, ... in order; a policy's share ends with an episode cut by the
step budget (stored as truncated, as D4RL's timeouts). Observations and actions are stored raw, in the
environment's units (each episode holds T + 1 observations for T steps, Minari's layout).

The normalised score, 100 * (R - ref_min_score) / (ref_max_score - ref_min_score) (Minari's
`get_normalized_score`), reads on D4RL's (and CORL's) scale: for Hopper, HalfCheetah and Walker2d the dataset
records D4RL's reference returns of a random and an expert policy (REF_SCORES below). For another environment give
--ref-min-score and --ref-max-score, or leave them out and they are measured (--ref-episodes episodes): the random
policy's mean return and the last --policy's mean return without noise.

Datasets are written under $MINARI_DATASETS_PATH (default ~/.minari/datasets), never downloaded. An id must end
in -vN; an id that exists is refused unless --overwrite. Bad input: one line on stderr, exit status 2, nothing
written.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algo_loader import ALGORITHMS, load_algo  # noqa: E402

# D4RL's reference returns (random, expert) for the MuJoCo locomotion tasks (d4rl/infos.py), which CORL's scores use
REF_SCORES = {"Hopper": (-20.272305, 3234.3), "HalfCheetah": (-280.178953, 12135.0), "Walker2d": (1.629008, 4592.3)}


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def d4rl_reference(env_id: str) -> tuple[float, float] | None:
    """D4RL's (random, expert) returns for Hopper-vN, HalfCheetah-vN and Walker2d-vN; None for other tasks."""
    return REF_SCORES.get(env_id.split(":")[-1].split("-v")[0])


class Policy:
    """A policy that plays in the data: uniformly random, or a checkpoint's greedy action plus exploration noise."""

    def __init__(self, spec: str, env: gym.Env, noise: float, seed: int):
        self.spec, self.space, self.noise = spec, env.action_space, noise
        self.rng = np.random.default_rng(seed)
        self.space.seed(seed)
        self.net = None
        if spec != "random":
            algo, _, path = spec.partition(":")
            self.net, ckpt = load_algo(algo).load_model(path)  # the file's own loader: weights_only, bad input exits 2
            self.net.eval()
            if ckpt["env_id"] != env.spec.id:
                fail(f"--policy {spec} was trained on {ckpt['env_id']}, not --env-id {env.spec.id}")

    def act(self, obs: np.ndarray, noise: bool = True):
        if self.net is None:
            return self.space.sample()
        with torch.no_grad():
            action = self.net.greedy_action(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
        if not noise or self.noise == 0:
            return action
        if isinstance(self.space, gym.spaces.Discrete):
            return self.space.sample() if self.rng.random() < self.noise else action
        scale = (self.space.high - self.space.low) / 2
        return np.clip(action + scale * self.noise * self.rng.standard_normal(action.shape), self.space.low,
                       self.space.high).astype(self.space.dtype)


def collect(env: gym.Env, policy: Policy, steps: int, first_seed: int, noise: bool = True) -> list[dict]:
    """Episodes of `policy`, `steps` steps in all (the last episode cut by the budget is truncated): a dict per
    episode with observations [T + 1], actions, rewards, terminations, truncations [T], and its reset seed."""
    episodes, seed, left = [], first_seed, steps
    while left > 0:
        obs, _ = env.reset(seed=seed)
        ep = {"seed": seed, "observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done and left > 0:
            action = policy.act(obs, noise)
            obs, reward, terminated, truncated, _ = env.step(action)
            left -= 1
            truncated = truncated or (left == 0 and not terminated)
            for key, value in (("observations", obs), ("actions", action), ("rewards", float(reward)),
                               ("terminations", bool(terminated)), ("truncations", bool(truncated))):
                ep[key].append(value)
            done = terminated or truncated
        episodes.append(ep)
        seed += 1
    return episodes


def mean_return(env: gym.Env, policy: Policy, episodes: int, seed: int) -> float:
    """The policy's mean return over whole episodes (no noise): a reference score."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs, noise=False))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def episode_buffers(episodes: list[dict]) -> list:
    """Minari's EpisodeBuffer per episode (numpy arrays), ids in order."""
    from minari.data_collector import EpisodeBuffer

    return [EpisodeBuffer(id=i, seed=ep["seed"], observations=np.asarray(ep["observations"]),
                          actions=np.asarray(ep["actions"]), rewards=np.asarray(ep["rewards"], dtype=np.float64),
                          terminations=np.asarray(ep["terminations"]), truncations=np.asarray(ep["truncations"]))
            for i, ep in enumerate(episodes)]


def dataset_episodes(dataset_id: str) -> tuple[list[dict], object]:
    """The episodes of an existing local dataset as collect() returns them, and the dataset."""
    import minari

    dataset = minari.load_dataset(dataset_id)
    episodes = [{"seed": int(ep.id), "observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
                 "terminations": ep.terminations, "truncations": ep.truncations} for ep in dataset.iterate_episodes()]
    return episodes, dataset


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-id", required=True, help="e.g. onefile/hopper/medium-v0 (must end in -vN)")
    parser.add_argument("--env-id", default=None, help="the Gymnasium environment that plays (not with --merge)")
    parser.add_argument("--policy", nargs="+", default=["random"],
                        help="ALGO:CHECKPOINT (a file of algorithms/ and its --save-model or periodic checkpoint) or "
                             "random; several share --steps equally, in order")
    parser.add_argument("--merge", nargs="+", default=None, help="existing local dataset ids to concatenate instead")
    parser.add_argument("--steps", type=int, default=200_000, help="transitions in all (D4RL's datasets hold 1M)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="exploration noise of a checkpoint policy: Gaussian std in units of half the action "
                             "range (Box), or the probability of a random action (Discrete)")
    parser.add_argument("--seed", type=int, default=1, help="first episode's reset seed; also seeds the noise")
    parser.add_argument("--ref-min-score", type=float, default=None, help="a random policy's return (default: "
                        "D4RL's for Hopper, HalfCheetah, Walker2d; else measured)")
    parser.add_argument("--ref-max-score", type=float, default=None, help="an expert's return (default: D4RL's for "
                        "Hopper, HalfCheetah, Walker2d; else the last --policy's, measured)")
    parser.add_argument("--ref-episodes", type=int, default=100, help="episodes per measured reference score")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset with this id")
    return parser.parse_args(argv)


def check_args(a) -> None:
    """Every bad input, before anything is built or written."""
    import minari

    try:  # Minari's own parser; without -vN it fails on int(None), and Minari would leave an empty folder behind
        minari.dataset.minari_dataset.parse_dataset_id(a.dataset_id)
    except (ValueError, TypeError):
        fail(f"--dataset-id {a.dataset_id!r} must look like namespace/env/name-vN (e.g. onefile/hopper/medium-v0)")
    if not a.steps > 0 or not a.ref_episodes > 0:
        fail(f"--steps and --ref-episodes must be positive, got {a.steps} and {a.ref_episodes}")
    if not 0 <= a.noise < math.inf:
        fail(f"--noise must be finite and >= 0, got {a.noise}")
    for name in ("ref_min_score", "ref_max_score"):
        if getattr(a, name) is not None and not math.isfinite(getattr(a, name)):
            fail(f"--{name.replace('_', '-')} must be finite, got {getattr(a, name)}")
    if a.ref_min_score is not None and a.ref_max_score is not None and not a.ref_max_score > a.ref_min_score:
        fail(f"need --ref-max-score > --ref-min-score, got {a.ref_max_score} and {a.ref_min_score}")
    path = minari.storage.get_dataset_path(a.dataset_id)
    if os.path.exists(path) and not a.overwrite:
        fail(f"dataset {a.dataset_id} exists at {path}; pass --overwrite to replace it")
    if a.merge:
        if a.env_id is not None:
            fail("--merge takes its environment from the first dataset: leave out --env-id")
        for source in a.merge:
            if not os.path.isdir(minari.storage.get_dataset_path(source) / "data"):
                fail(f"--merge: no local dataset {source} under {minari.storage.get_dataset_path()}")
            if source == a.dataset_id:
                fail(f"--merge cannot read {source} while replacing it")
        return
    if a.env_id is None:
        fail("give --env-id (the environment that plays), or --merge existing datasets")
    try:
        gym.spec(a.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {a.env_id} is not a registered Gymnasium environment ({str(error).splitlines()[0]})")
    for spec in a.policy:
        if spec == "random":
            continue
        algo, colon, ckpt = spec.partition(":")
        if not colon or not (ALGORITHMS / f"{algo}.py").is_file():
            fail(f"--policy {spec}: expected ALGO:CHECKPOINT with ALGO a file of algorithms/ (e.g. ppo:runs/x/ppo.pt), "
                 "or random")
        if not os.path.isfile(ckpt):
            fail(f"--policy {spec}: no checkpoint at {ckpt}")
    if len(a.policy) > a.steps:
        fail(f"--steps {a.steps} is fewer than the {len(a.policy)} policies that share it")
    if d4rl_reference(a.env_id) is None and a.ref_max_score is None and a.policy[-1] == "random":
        fail(f"{a.env_id} has no built-in reference scores: give --ref-max-score (an expert's return) or an expert "
             "as the last --policy, whose return is measured")


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    check_args(a)
    import minari

    start = time.time()
    if a.merge:
        episodes, first = [], None
        for source in a.merge:
            eps, dataset = dataset_episodes(source)
            episodes += eps
            first = first or dataset
        env_spec = first.env_spec
        ref_min, ref_max = first.storage.metadata.get("ref_min_score"), first.storage.metadata.get("ref_max_score")
        if a.ref_min_score is not None:
            ref_min = a.ref_min_score
        if a.ref_max_score is not None:
            ref_max = a.ref_max_score
        description = f"the episodes of {', '.join(a.merge)}, in that order"
    else:
        env = gym.make(a.env_id)
        env_spec = env.spec
        policies = [Policy(spec, env, a.noise, a.seed + i) for i, spec in enumerate(a.policy)]
        shares = [a.steps // len(policies)] * len(policies)
        shares[-1] += a.steps - sum(shares)
        episodes, seed = [], a.seed
        for policy, share in zip(policies, shares, strict=True):
            eps = collect(env, policy, share, seed)
            seed += len(eps)
            episodes += eps
            whole = [sum(ep["rewards"]) for ep in eps[:-1] + ([eps[-1]] if eps[-1]["terminations"][-1] else [])]
            print(f"{policy.spec}: {share:,} steps, {len(eps)} episodes, mean return of the whole ones "
                  f"{np.mean(whole) if whole else float('nan'):.1f}", flush=True)
        ref_min, ref_max = d4rl_reference(a.env_id) or (None, None)
        if a.ref_min_score is not None or ref_min is None:
            ref_min = a.ref_min_score if a.ref_min_score is not None else \
                mean_return(env, Policy("random", env, 0.0, a.seed), a.ref_episodes, a.seed + 10**6)
        if a.ref_max_score is not None or ref_max is None:
            ref_max = a.ref_max_score if a.ref_max_score is not None else \
                mean_return(env, policies[-1], a.ref_episodes, a.seed + 10**6)
        env.close()
        description = (f"{a.steps:,} steps of {', '.join(a.policy)} on {a.env_id} (noise {a.noise}, first reset seed "
                       f"{a.seed}), built by tools/make_dataset.py")
    if not ref_max > ref_min:
        fail(f"the reference scores must satisfy max > min, got min {ref_min:.1f} and max {ref_max:.1f}; give "
             "--ref-min-score and --ref-max-score")
    path = minari.storage.get_dataset_path(a.dataset_id)
    if a.overwrite and os.path.exists(path):
        shutil.rmtree(path)
    with warnings.catch_warnings():  # Minari's advice to name an author, an e-mail and a code link
        warnings.simplefilter("ignore", UserWarning)
        dataset = minari.create_dataset_from_buffers(
            a.dataset_id, buffer=episode_buffers(episodes), env=env_spec, eval_env=env_spec, author="onefile-rl",
            algorithm_name="onefile-rl tools/make_dataset.py", ref_min_score=float(ref_min),
            ref_max_score=float(ref_max), description=description, data_format="hdf5")
    seconds = time.time() - start
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    returns = [float(np.sum(ep["rewards"])) for ep in episodes]
    print(f"{a.dataset_id}: {dataset.total_steps:,} steps, {dataset.total_episodes} episodes, episode return mean "
          f"{np.mean(returns):.1f} (min {np.min(returns):.1f}, max {np.max(returns):.1f}), reference scores "
          f"{ref_min:.1f} / {ref_max:.1f}, {size / 1e6:.1f} MB at {path}, built in {seconds:.1f} s", flush=True)
    return {"dataset_id": a.dataset_id, "total_steps": int(dataset.total_steps), "episodes": int(dataset.total_episodes),
            "return_mean": float(np.mean(returns)), "ref_min_score": float(ref_min), "ref_max_score": float(ref_max),
            "bytes": size, "seconds": seconds, "path": str(path)}


if __name__ == "__main__":
    main()
