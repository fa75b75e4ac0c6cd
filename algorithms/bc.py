"""Behaviour cloning (BC) from a Minari dataset: supervised learning of the dataset's actions, offline.

Behaviour cloning is the baseline of offline RL (Levine, Kumar, Tucker, Fu (2020), "Offline Reinforcement
Learning: Tutorial, Review, and Perspectives", https://arxiv.org/abs/2005.01643, section 2; Pomerleau (1991),
"Efficient Training of Artificial Neural Networks for Autonomous Navigation"): fit a policy to the dataset's
(state, action) pairs and play it; no reward, no value function, no environment step during training.
Filtered BC ("%BC", Chen et al. (2021), "Decision Transformer", https://arxiv.org/abs/2106.01345, section 5.2,
and CORL's any_percent_bc.py) clones only the episodes with the highest returns: --top-fraction 0.1 is "10%BC".

Run:
    python tools/make_dataset.py --env-id Hopper-v5 --dataset-id onefile/hopper/medium-v0 --policy ...   # once
    python algorithms/bc.py --dataset-id onefile/hopper/medium-v0                  # 50k gradient steps
    python algorithms/bc.py --dataset-id onefile/hopper/medium-replay-v0 --top-fraction 0.1     # 10%BC
    python algorithms/bc.py --dataset-id mujoco/hopper/medium-v0    # a Minari dataset downloaded elsewhere
    python algorithms/bc.py --help

Defaults are CORL's BC (Tarasov et al. (2022), "CORL: Research-oriented Deep Offline Reinforcement Learning
Library", https://arxiv.org/abs/2210.07105): a deterministic 256-256 ReLU MLP ending in tanh scaled into the
action bounds, mean squared error, Adam lr 3e-4, batch 256, observations standardised with the dataset's
statistics, an evaluation of 10 episodes every 5000 gradient steps; the budget is 50k gradient steps where CORL
runs 1M on a GPU (benchmark_results/bc.md measures what fits here).
Tested: cloning ppo.py's CartPole-v1 expert reaches a deterministic return >= 475 in 5k gradient steps
(tests/test_bc.py, slow).
Results: benchmark_results/bc.md

The math, as written in the code below, for a batch of the dataset's (s, a):
    normalised state   s~ = (s - mean) / (std + 1e-3)          (mean, std over the states trained on; CORL's eps)
    Box actions        pi(s) = scale * tanh(f(s~)) + bias,   L = mean( (pi(s) - a)^2 )      (scale, bias: the bounds)
    Discrete actions   logits f(s~),   L = mean( -log softmax(f(s~))[a] )                  (cross-entropy)
    evaluation         score = 100 * (R - R_random) / (R_expert - R_random)     (Minari's get_normalized_score x 100)
    filtered BC        keep the max(1, floor(fraction * N)) episodes of highest return R (undiscounted), ties
                       broken by their order in the dataset; train on their transitions only

An offline file (this kind of file: bc.py, and the offline-RL files that copy its skeleton):
- --dataset-id names any Minari dataset present locally (tools/make_dataset.py builds this collection's; a
  dataset downloaded with `minari download` works too); nothing is downloaded. The evaluation environment is the
  dataset's own (`recover_environment(eval_env=True)`), and the score is normalised with the dataset's reference
  returns (none recorded: the raw return only).
- Every count is in gradient steps (--total-updates, --eval-every, --log-every, --checkpoint-every); the step of the
  TensorBoard scalars and the checkpoints' "global_step" is the gradient step. Each evaluation logs
  eval/episodic_return (the mean over --eval-episodes deterministic episodes) and eval/normalized_score; the run
  reports the last and the best normalised score, as CORL does. The state statistics are buffers of the policy, so
  every checkpoint carries them and `evaluate` (and tools/evaluate.py) feeds the policy raw observations.
- Long runs, the same form as the deep files': checkpoints every --checkpoint-every gradient steps, Ctrl-C or
  SIGTERM writes one after the current update and exits 130 / 143 with the command that resumes it, --resume
  continues bit for bit (the sampler's generator is in the checkpoint), a non-finite loss stops the run (exit 3)
  keeping the last finite state, the same seed gives the same scalars.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "bc"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the batch sampler and the evaluation episodes"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small MLPs are faster on the CPU)"""
    torch_threads: int = 1
    """torch CPU threads; 1 suits small networks on a shared machine"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    save_model: bool = False
    """if toggled, save the model and training state to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many gradient steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-updates"""
    nan_check: bool = True
    """if toggled, a NaN or infinite loss stops the run (exit 3)"""

    dataset_id: str = "onefile/hopper/medium-v0"
    """a Minari dataset present under $MINARI_DATASETS_PATH (tools/make_dataset.py builds this collection's)"""
    total_updates: int = 50_000
    """gradient steps (CORL: 1M)"""
    top_fraction: float = 1.0
    """clone only this fraction of the episodes, those of highest return (filtered BC; 0.1 is CORL's 10%BC)"""
    normalize_obs: bool = True
    """if toggled, standardise observations with the dataset's mean and std (saved with the model)"""
    learning_rate: float = 3e-4
    """the Adam learning rate"""
    batch_size: int = 256
    """transitions per gradient step, drawn uniformly with replacement"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the policy"""
    eval_every: int = 5_000
    """evaluate the policy every this many gradient steps (and after the last)"""
    eval_episodes: int = 10
    """deterministic episodes per evaluation"""
    log_every: int = 1_000
    """write the loss and the gradient steps per second, and print a progress line, every this many gradient steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    for name in ("total_updates", "batch_size", "eval_every", "eval_episodes", "log_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not 0 < args.top_fraction <= 1:
        fail(f"need 0 < --learning-rate < inf and 0 < --top-fraction <= 1, got {args.learning_rate} and {args.top_fraction}")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    check_dataset(args.dataset_id)


def check_dataset(dataset_id: str):
    """The dataset is present locally and holds flat Box observations and Box (bounded) or Discrete actions; returns
    it. Nothing is downloaded."""
    import minari

    path = minari.storage.get_dataset_path(dataset_id)
    if not dataset_id or not os.path.isdir(os.path.join(path, "data")):
        fail(f"--dataset-id {dataset_id}: no such Minari dataset under {minari.storage.get_dataset_path()} "
             "(set MINARI_DATASETS_PATH, build one with tools/make_dataset.py, or `minari download` it)")
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:  # noqa: BLE001 - any unreadable dataset is the same bad input
        fail(f"--dataset-id {dataset_id} cannot be read: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
    obs_space, action_space = dataset.observation_space, dataset.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--dataset-id {dataset_id} has {obs_space} observations; this file needs flat Box observations")
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1 or not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            fail(f"--dataset-id {dataset_id} has {action_space} actions; tanh needs a flat Box with finite bounds")
    elif not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--dataset-id {dataset_id} has {action_space} actions; this file clones Box or Discrete actions")
    if dataset.total_steps == 0:
        fail(f"--dataset-id {dataset_id} holds no transitions")
    try:
        dataset.recover_environment(eval_env=True).close()
    except Exception as error:  # noqa: BLE001 - an environment that is not installed, or not registered here
        fail(f"--dataset-id {dataset_id}: its environment cannot be created here: {type(error).__name__}: "
             f"{(str(error).splitlines() or [''])[0]}")
    return dataset


def load_transitions(dataset) -> dict[str, np.ndarray]:
    """Every transition of a Minari dataset, in its order, as flat arrays: observations, actions, rewards,
    next_observations, terminations, truncations (a row per step; an episode of T steps stores T + 1 observations),
    episode (the index of each transition's episode) and episode_returns (each episode's undiscounted return)."""
    parts: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                              "terminations", "truncations", "episode")}
    episode_returns = []
    for i, ep in enumerate(dataset.iterate_episodes()):
        steps = len(ep.rewards)
        parts["observations"].append(np.asarray(ep.observations[:-1], dtype=np.float32))
        parts["next_observations"].append(np.asarray(ep.observations[1:], dtype=np.float32))
        parts["actions"].append(np.asarray(ep.actions))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float32))
        parts["terminations"].append(np.asarray(ep.terminations, dtype=np.float32))
        parts["truncations"].append(np.asarray(ep.truncations, dtype=np.float32))
        parts["episode"].append(np.full(steps, i, dtype=np.int64))
        episode_returns.append(float(np.sum(ep.rewards)))
    return {**{k: np.concatenate(v) for k, v in parts.items()}, "episode_returns": np.asarray(episode_returns)}


def top_episodes(episode_returns: np.ndarray, fraction: float) -> np.ndarray:
    """Filtered BC: the indices of the max(1, floor(fraction * N)) episodes of highest return, in dataset order
    (ties broken by that order)."""
    keep = max(1, math.floor(fraction * len(episode_returns) + 1e-9))  # + 1e-9: 0.3 * 10 is 2.9999999999999996
    order = np.argsort(-episode_returns, kind="stable")
    return np.sort(order[:keep])


def obs_statistics(obs: np.ndarray, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The mean and std + eps of the states trained on (CORL's eps keeps a constant feature finite)."""
    return obs.mean(axis=0), obs.std(axis=0) + eps


def normalized_score(returns, ref_min: float, ref_max: float) -> float:
    """100 * (mean return - R_random) / (R_expert - R_random): Minari's get_normalized_score x 100, D4RL's scale."""
    return 100.0 * (float(np.mean(returns)) - ref_min) / (ref_max - ref_min)


def bc_loss(output: torch.Tensor, actions: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Box: the mean squared error of pi(s) against the dataset's actions; Discrete: the cross-entropy of the
    logits against them."""
    return F.cross_entropy(output, actions) if discrete else F.mse_loss(output, actions)


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class BCPolicy(nn.Module):
    """pi(s) on raw observations: standardised with the dataset's statistics (buffers: saved with the weights),
    then an MLP; Box: scale * tanh(f) + bias inside the bounds; Discrete: the logits."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], discrete: bool,
                 action_low=None, action_high=None):
        super().__init__()
        self.discrete = discrete
        self.net = mlp(obs_dim, act_dim, hidden_sizes)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        if not discrete:
            low = torch.as_tensor(action_low, dtype=torch.float32)
            high = torch.as_tensor(action_high, dtype=torch.float32)
            self.register_buffer("action_scale", (high - low) / 2.0)
            self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net((obs - self.obs_mean) / self.obs_std)
        return out if self.discrete else self.action_scale * torch.tanh(out) + self.action_bias

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action evaluation plays: pi(s) in the environment's units (Box), or the most probable one (Discrete)."""
        out = self(obs)
        return out.argmax(dim=-1) if self.discrete else out


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write atomically (temporary file, then rename): an interrupted save never leaves a corrupt file."""
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, algo: str) -> dict:
    """Read a checkpoint written by `algo`.py (weights_only: tensors and plain values); bad input exits 2."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        fail(f"no checkpoint at {path}")
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same bad input
        fail(f"{path} is not a readable checkpoint ({type(error).__name__})")
    if not isinstance(ckpt, dict) or "env_id" not in ckpt:
        fail(f"{path} is not a checkpoint written by --save-model (no env_id in it)")
    if ckpt.get("algo") != algo or "model_args" not in ckpt:
        fail(f"{path} does not fit {algo}.py (written by {ckpt.get('algo') or 'an older version or another program'}); "
             "retrain with --save-model")
    return ckpt


# ---- Long runs: the same code in every deep file (checkpoints, interruption, resume, numerical faults) ----
#
# A checkpoint is one dict of tensors and plain values (torch.load(..., weights_only=True) reads it): the networks,
# the optimisers, the step counters, every random generator's state and, where it can be read, the environments'
# own state. Periodic ones (--checkpoint-every), the one written on SIGINT/SIGTERM and the final --save-model file
# are the same dict, so any of them resumes (--resume PATH) in a new run directory that continues the old one's
# TensorBoard steps. (An offline file counts gradient steps, has no environment state, and checks only the losses.)


def make_run_dir(run_name: str) -> str:
    """Create a new runs/{run_name} (with a suffix if that exists) and check that it takes files; exit 2 if not."""
    run_dir, n = f"runs/{run_name}", 1
    while os.path.exists(run_dir):  # two runs started in the same second (a quick resume) get two directories
        n += 1
        run_dir = f"runs/{run_name}_{n}"
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = f"{run_dir}/.write_test"
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        fail(f"cannot write the run directory {run_dir} ({error.strerror}); run from a writable directory")
    return run_dir


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) set `signum`; the training loop looks at it after each
    update, writes a checkpoint and exits with status 128 + signum. A second signal exits at once; checkpoints are
    written atomically, so the previous one stays intact."""

    def __init__(self):
        self.signum = 0
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # only the main thread may handle signals
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)

    def handle(self, signum, frame) -> None:
        if self.signum:
            sys.exit(128 + signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this update to write a checkpoint "
              "(signal again to quit at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def resume_command(args, path: str) -> str:
    """The command line that continues this run from `path`: this file, every option not at its default, --resume."""
    parts = ["python", os.path.relpath(__file__)]
    for field in dataclasses.fields(args):
        value, flag = getattr(args, field.name), "--" + field.name.replace("_", "-")
        if field.name == "resume" or value == field.default:
            continue
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join([*parts, "--resume", path])


def write_checkpoint(run_dir: str, checkpoint: dict, written: list[str], keep: int) -> str:
    """Save the training state as run_dir/checkpoint_{step}.pt; keep the newest `keep` of this run's checkpoints."""
    path = f"{run_dir}/checkpoint_{checkpoint['global_step']}.pt"
    save_checkpoint(path, checkpoint)
    if path not in written:
        written.append(path)
    while len(written) > keep:
        os.remove(written.pop(0))
    print(f"checkpoint {path} ({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    return path


def rng_state(generators: dict[str, np.random.Generator]) -> dict:
    """Python's, numpy's global, torch's (and CUDA's) and the named numpy generators' states, as tensors, integers
    and strings."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **{name: g.bit_generator.state for name, g in generators.items()}}


def set_rng_state(state: dict, generators: dict[str, np.random.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.bit_generator.state = state[name]


def check_offline_resume(ckpt: dict, args, model_args: dict) -> None:
    """A checkpoint to resume holds a training state for this dataset and these network sizes."""
    if "global_step" not in ckpt or "dataset_id" not in ckpt:
        fail(f"--resume {args.resume} holds no offline training state")
    if ckpt["dataset_id"] != args.dataset_id:
        fail(f"--resume {args.resume} was trained on {ckpt['dataset_id']}, not --dataset-id {args.dataset_id}")
    if ckpt["model_args"] != model_args:
        fail(f"--resume {args.resume} holds networks of other sizes ({ckpt['model_args']}, "
             f"here {model_args}); resume with the options it was trained with")
    if not ckpt["global_step"] < args.total_updates:
        fail(f"--resume {args.resume} is at gradient step {ckpt['global_step']:,}: --total-updates must be larger "
             f"than that, got {args.total_updates:,}")


def numerical_fault(quantity: str, step: int, path: str) -> None:
    """A NaN or infinity reached training: one line, exit status 3; `path` holds the last finite state."""
    print(f"error: non-finite {quantity} at step {step:,}; the last finite state is in {path} "
          "(lower the learning rate, or look at the environment)", file=sys.stderr, flush=True)
    sys.exit(3)


def close_logs(writer, track: bool) -> None:
    writer.close()
    if track:
        import wandb

        wandb.finish()


def load_model(path: str) -> tuple[BCPolicy, dict]:
    """The trained Policy of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "bc")
    policy = BCPolicy(**ckpt["model_args"])
    policy.load_state_dict(ckpt["model"])
    return policy, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """Deterministic evaluation on a fresh environment; returns one return per episode."""
    agent = load_model(agent_or_path)[0].to(device) if isinstance(agent_or_path, str) else agent_or_path
    env = gym.make(env_id)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            action = agent.greedy_action(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called after each evaluation with (gradient step, the evaluation's mean return); returning True ends
    # training (the run is then evaluated and returned as usual).
    check_args(args)
    dataset = check_dataset(args.dataset_id)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # the evaluation environment is the dataset's own (its eval_env where it names one), made anew per evaluation
    probe = dataset.recover_environment(eval_env=True)
    env_spec = probe.spec
    probe.close()
    run_name = f"{env_spec.id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    ref_min, ref_max = dataset.storage.metadata.get("ref_min_score"), dataset.storage.metadata.get("ref_max_score")

    data = load_transitions(dataset)
    kept = top_episodes(data["episode_returns"], args.top_fraction)
    rows = np.isin(data["episode"], kept)
    discrete = isinstance(dataset.action_space, gym.spaces.Discrete)
    obs = torch.as_tensor(data["observations"][rows], device=device)
    actions = torch.as_tensor(data["actions"][rows], dtype=torch.int64 if discrete else torch.float32, device=device)
    n = len(obs)
    obs_dim = obs.shape[1]
    if discrete:
        model_args = {"obs_dim": obs_dim, "act_dim": int(dataset.action_space.n), "hidden_sizes": list(args.hidden_sizes),
                      "discrete": True}
    else:
        model_args = {"obs_dim": obs_dim, "act_dim": int(dataset.action_space.shape[0]),
                      "hidden_sizes": list(args.hidden_sizes), "discrete": False,
                      "action_low": dataset.action_space.low.tolist(), "action_high": dataset.action_space.high.tolist()}
    policy = BCPolicy(**model_args).to(device)
    if args.normalize_obs:
        mean, std = obs_statistics(data["observations"][rows])
        policy.obs_mean.copy_(torch.as_tensor(mean))
        policy.obs_std.copy_(torch.as_tensor(std))
    # fused=True: Adam's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate, fused=True)
    sampler = np.random.default_rng(args.seed)
    generators = {"sampler": sampler}

    # The training state a checkpoint holds; resuming puts it back. global_step counts gradient steps.
    global_step, best_score, last_score = 0, -math.inf, math.nan
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "bc")
        check_offline_resume(ckpt, args, model_args)
        policy.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, best_score, last_score = ckpt["global_step"], ckpt["best_score"], ckpt["last_score"]
        set_rng_state(ckpt["rng"], generators)
        print(f"resumed from {args.resume} at gradient step {global_step:,}", flush=True)

    def checkpoint() -> dict:
        return {"algo": "bc", "env_id": env_spec.id, "dataset_id": args.dataset_id, "model_args": model_args,
                "model": policy.state_dict(), "args": asdict(args), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "best_score": best_score, "last_score": last_score,
                "rng": rng_state(generators)}

    def fault(quantity: str) -> None:  # the network is still finite: the check runs before it changes
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint())
        close_logs(writer, args.track)
        numerical_fault(quantity, global_step, path)

    run_dir = make_run_dir(run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run_dir)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    print(f"{args.dataset_id}: {len(data['rewards']):,} transitions in {len(data['episode_returns'])} episodes; "
          f"cloning {n:,} transitions of {len(kept)} episodes (return >= {data['episode_returns'][kept].min():.1f}); "
          f"evaluated on {env_spec.id}", flush=True)

    def run_evaluation() -> list[float]:
        """Evaluate, log, keep the best; returns the returns (its time is left out of the updates per second)."""
        nonlocal best_score, last_score, eval_seconds
        eval_start = time.time()
        returns = evaluate(policy, env_spec, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
        eval_seconds += time.time() - eval_start
        writer.add_scalar("eval/episodic_return", float(np.mean(returns)), global_step)
        score = ""
        if ref_min is not None and ref_max is not None:
            last_score = normalized_score(returns, ref_min, ref_max)
            best_score = max(best_score, last_score)
            writer.add_scalar("eval/normalized_score", last_score, global_step)
            score = f"  normalised score {last_score:6.1f} (best {best_score:6.1f})"
        print(f"eval at update {global_step:>9,}: return {np.mean(returns):8.1f} +- {np.std(returns):6.1f}{score}",
              flush=True)
        return returns

    start_step, start_time, eval_seconds = global_step, time.time(), 0.0
    eval_returns: list[float] = []
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    loss = torch.zeros(())

    while global_step < args.total_updates:
        idx = torch.from_numpy(sampler.integers(0, n, size=args.batch_size)).to(device)
        loss = bc_loss(policy(obs[idx]), actions[idx], discrete)
        optimizer.zero_grad()
        loss.backward()
        if args.nan_check and not math.isfinite(loss.detach()):  # before the step: the network stays finite
            fault("loss")
        optimizer.step()
        global_step += 1

        if global_step % args.log_every == 0 or global_step == args.total_updates:
            ups = int((global_step - start_step) / (time.time() - start_time - eval_seconds))
            writer.add_scalar("charts/SPS", ups, global_step)  # gradient steps per second, evaluations left out
            writer.add_scalar("losses/bc_loss", loss.item(), global_step)
            print(f"update {global_step:>9,}  updates/s {ups:>6,}  loss {loss.item():.4f}", flush=True)
        if global_step % args.eval_every == 0 or global_step == args.total_updates:
            eval_returns = run_evaluation()
            if report is not None and report(global_step, float(np.mean(eval_returns))):
                break  # the caller asked to stop: evaluated as usual

        # After the update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
        if stop.signum or (args.checkpoint_every and global_step % args.checkpoint_every == 0):
            path = write_checkpoint(run_dir, checkpoint(), written, args.keep_checkpoints)
            if stop.signum:
                close_logs(writer, args.track)
                print(f"stopped by {signal.Signals(stop.signum).name} at gradient step {global_step:,}; resume with: "
                      f"{resume_command(args, path)}", file=sys.stderr, flush=True)
                sys.exit(128 + stop.signum)
    stop.restore()

    train_time = time.time() - start_time  # evaluations included
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-updates
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB)")
    print(f"last normalised score {last_score:.1f}, best {best_score:.1f} (x100; the dataset's reference "
          f"returns {ref_min} / {ref_max}); {global_step - start_step:,} gradient steps in {train_time:.1f}s")
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "normalized_score_last": last_score,
        "normalized_score_best": best_score if best_score > -math.inf else math.nan,  # nan: no reference returns
        "sps": int((global_step - start_step) / (train_time - eval_seconds)),  # gradient steps per second
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
