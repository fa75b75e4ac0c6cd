"""REINFORCE: Monte-Carlo policy gradient, with an optional learned state-value baseline.

Paper: Williams (1992), "Simple statistical gradient-following algorithms for connectionist reinforcement
learning", Machine Learning 8, 229-256, https://doi.org/10.1007/BF00992696. The same algorithm, with and
without baseline: Sutton & Barto, "Reinforcement Learning: An Introduction" (2nd ed., 2018), §13.3-13.4.

Run:
    python algorithms/reinforce.py                                   # CartPole-v1, no baseline
    python algorithms/reinforce.py --baseline                        # with a learned V(s) baseline
    python algorithms/reinforce.py --env-id Pendulum-v1 --baseline   # Gaussian policy for Box actions
    python algorithms/reinforce.py --help

One environment plays whole episodes; every --episodes-per-update complete episodes the policy takes one
gradient step on all their steps. The math, as written in the code below, for an episode
s_0, a_0, r_0, ..., s_{T-1}, a_{T-1}, r_{T-1}, ending in the observation s_T:
    return        G_t = r_t + gamma * G_{t+1},  G_T = 0 if the episode terminated,
                  G_T = V(s_T) if it was cut (time limit) and --baseline gives a critic, else G_T = 0
                  (so G_t = sum_{k=t}^{T-1} gamma^(k-t) r_k [+ gamma^(T-t) V(s_T)])
    weight        psi_t = G_t                      (plain REINFORCE, S&B §13.3)
                  psi_t = G_t - V(s_t)             (--baseline, S&B §13.4; V from before this update)
                  psi <- (psi - mean(psi)) / (std(psi) + 1e-8) over the batch   (--normalize-returns)
    policy loss   L_pi = -mean_t( psi_t * log pi(a_t|s_t) ) - ent_coef * mean_t( H[pi(.|s_t)] )
    value loss    L_V  = mean_t( (V(s_t) - G_t)^2 )   (--baseline: regression of the critic onto G_t)
The gradient of L_pi is the REINFORCE estimate of -grad J: Williams' update
Delta theta = alpha * (r - b) * grad log pi, here with the return-to-go for r and b = V(s_t) or 0. The gamma^t factor of S&B's pseudocode (the gradient of the start-state discounted value)
is left out, as in most implementations: every step's weight is its own return-to-go. The sum over an
episode is averaged over the batch's steps, so the step size does not grow with episode length.

Policies: Discrete actions, a softmax over logits (Categorical). Box actions, a Gaussian
N(mu(s), diag(sigma^2)) with a state-independent, learned log sigma (initially 0):
    log pi(a|s) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2 ]
    H[pi(.|s)]  = sum_i [ log sigma_i + log(2 pi e) / 2 ]
The sample a is clipped to the action space's bounds when it is sent to the environment, but the
log-probability is that of the unclipped sample, which is what was drawn from pi (clipping is part of
the environment here). The deterministic evaluation takes argmax (discrete) or clip(mu(s)) (Box).

Time limits. A terminated episode's return ends with 0. An episode cut by a time limit (`truncated`,
e.g. CartPole's 500 steps), and the last episode when --total-timesteps runs out mid-episode, did not
end: the steps after the cut would have added rewards.
  - With --baseline the critic estimates them: G_T = V(s_T) of the real last observation, then the
    recursion above (Pardo et al., 2018, "Time Limits in Reinforcement Learning").
  - Without a critic nothing estimates them and the tail is simply cut: G_t sums the rewards up to the
    cut. That is the unbiased Monte-Carlo estimate of the truncated objective (the expected discounted
    reward up to the time limit), and a low estimate of the return the policy would have earned had
    the episode gone on: the missing tail weighs gamma^(T-t), 0.37 at 100 steps before the cut with
    gamma = 0.99. On CartPole that only matters once the policy already balances for 500 steps.

One environment, not batched: an episode is a plain list of steps, so the file reads like the book's
pseudocode. It runs as a vector environment of one without autoreset (the loop resets it after each
episode), the form the long-run helpers below checkpoint; its statistics come from RecordEpisodeStatistics
(info["episode"]).

Long runs (the same form in every deep file of the collection):
    python algorithms/reinforce.py --checkpoint-every 100000   # runs/<run>/checkpoint_<step>.pt, the newest 2 kept
    python algorithms/reinforce.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the policy, the critic (--baseline), their optimisers, the step count, every random
generator's state and the environment's own state, so a resumed run ends with the same parameters as one never
interrupted (classic-control environments only: their whole state is a few numbers; with any other environment
the resumed run starts a new episode). Ctrl-C or SIGTERM stops the run after the current update (its
--episodes-per-update episodes and the gradient step), writes a checkpoint and exits with status 130 / 143,
printing the command that resumes it; a second signal quits at once. A resumed run writes to a new run directory
whose TensorBoard steps continue the old ones; there are no schedules, so --total-timesteps only says where it
ends. A --save-model file written where the budget cut an episode continues that episode: its remaining steps'
returns-to-go need only the rewards still to come. A NaN or infinite observation, reward, loss or gradient norm
stops the run at once (exit 3) and keeps the last finite state in runs/<run>/<exp_name>_last_finite.pt;
--no-nan-check skips the checks.

Tested: a deterministic evaluation of >= 400 on CartPole-v1 in 100k steps, with and without --baseline
(tests/test_reinforce.py).
Results: benchmark_results/reinforce.md
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro


@dataclass
class Args:
    exp_name: str = "reinforce"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small MLPs are faster on the CPU)"""
    torch_threads: int = 1
    """torch CPU threads; small networks run fastest on one"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    capture_video: bool = False
    """if toggled, record videos of the environment into videos/{run_name}"""
    save_model: bool = False
    """if toggled, save the trained model to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (Discrete or Box actions, flat Box observations)"""
    total_timesteps: int = 100_000
    """total environment steps"""
    learning_rate: float = 1e-3
    """the policy's Adam learning rate"""
    episodes_per_update: int = 4
    """complete episodes collected for each policy gradient step"""
    gamma: float = 0.99
    """the discount factor"""
    baseline: bool = False
    """if toggled, subtract a learned state value V(s_t) from the return (and bootstrap time-limit cuts)"""
    critic_learning_rate: float = 1e-3
    """the critic's Adam learning rate (with --baseline)"""
    value_epochs: int = 1
    """critic regression steps on each batch (with --baseline)"""
    normalize_returns: bool = False
    """if toggled, standardise the weights psi_t (returns, or advantages with --baseline) over each batch"""
    ent_coef: float = 0.0
    """the entropy bonus coefficient"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the policy (and of the critic)"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (argmax, or the clipped mean action)"""
    log_every: int = 10_000
    """print a progress line every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of an --env-id, else gym.error.Error with a one-line reason. In Gymnasium's
    "module:Env-v0" form the module registers Env-v0 when imported: it is imported first, as gym.make does
    (gym.spec alone does not), so that a user's own environment passes the checks."""
    module, colon, name = env_id.rpartition(":")
    if colon:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a user's module can fail to import in any way
            reason = (str(error).splitlines() or [""])[0]
            raise gym.error.Error(f"module {module!r} cannot be imported: {type(error).__name__}: {reason}") from None
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise gym.error.Error(f"module {module!r} does not register {name}: {reason}" if colon else reason) from None


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "episodes_per_update", "value_epochs", "hidden_size", "eval_episodes", "log_every",
                 "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not (0 < args.learning_rate < math.inf and 0 < args.critic_learning_rate < math.inf):
        fail(f"need 0 < --learning-rate < inf and 0 < --critic-learning-rate < inf, got {args.learning_rate} and "
             f"{args.critic_learning_rate}")
    if not 0 < args.gamma <= 1:
        fail(f"need 0 < --gamma <= 1, got {args.gamma}")
    if not 0 <= args.ent_coef < math.inf:
        fail(f"--ent-coef must be a finite number >= 0, got {args.ent_coef}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or Pendulum-v1")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if not discrete and not (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1):
        fail(f"reinforce.py needs a Discrete or a one-dimensional Box action space, {args.env_id} has "
             f"{action_space}; use e.g. CartPole-v1 or Pendulum-v1")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"reinforce.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use e.g. CartPole-v1 or Pendulum-v1")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weights, constant bias: the initialisation of the PPO implementations (and SB3)."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def tanh_mlp(in_dim: int, out_dim: int, hidden_size: int, last_std: float) -> nn.Sequential:
    """Two tanh hidden layers of hidden_size units; orthogonal initialisation, the last layer's scaled by last_std."""
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden_size)), nn.Tanh(),
        layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
        layer_init(nn.Linear(hidden_size, out_dim), std=last_std),
    )


def categorical_log_prob_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(a|s) and H[pi(.|s)] of a softmax policy; logits [B, n], actions [B] (integers)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; mu, diag(sigma^2)) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2 ].

    Written out instead of torch.distributions.Normal: the same numbers, without its per-call checks.
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian: sum_i [ log sigma_i + (1 + log(2 pi)) / 2 ] (independent of the mean)."""
    return (log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


class Policy(nn.Module):
    """pi(a|s): logits of a Categorical (Discrete actions), or the mean of a Gaussian with a
    state-independent, learned log standard deviation (Box actions; the space's bounds are buffers, so
    they move with .to(device) and travel in the state_dict)."""

    def __init__(self, obs_dim: int, act_dim: int, discrete: bool, hidden_size: int = 64,
                 action_low: list[float] | None = None, action_high: list[float] | None = None):
        super().__init__()
        self.discrete = discrete
        # a small last layer starts the policy near uniform (discrete) or near mean 0 (Box)
        self.net = tanh_mlp(obs_dim, act_dim, hidden_size, last_std=0.01)
        if not discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))

    def log_prob_entropy(self, x: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a|x) and H[pi(.|x)], differentiable, for the update."""
        out = self.net(x)
        if self.discrete:
            return categorical_log_prob_entropy(out, actions)
        return gaussian_log_prob(actions, out, self.log_std), gaussian_entropy(self.log_std).expand(out.shape[0])

    @torch.no_grad()
    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|x); a Gaussian sample is unclipped: its log-probability is the one trained on."""
        out = self.net(x)
        if self.discrete:
            return torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic action: the argmax, or the Gaussian's mean clipped to the action bounds."""
        out = self.net(x)
        return out.argmax(-1) if self.discrete else torch.clamp(out, self.action_low, self.action_high)


class ValueNetwork(nn.Module):
    """V(s), the state-value critic."""

    def __init__(self, obs_dim: int, hidden_size: int = 64):
        super().__init__()
        self.net = tanh_mlp(obs_dim, 1, hidden_size, last_std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def discounted_returns(rewards: torch.Tensor, gamma: float, bootstrap: float | torch.Tensor = 0.0) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} for one episode's rewards [T], with G_T = bootstrap."""
    returns = torch.zeros_like(rewards)
    g = torch.as_tensor(bootstrap, dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[0])):
        g = rewards[t] + gamma * g
        returns[t] = g
    return returns


def returns_to_go(rewards: torch.Tensor, gamma: float, terminated: bool, last_value: torch.Tensor | None) -> torch.Tensor:
    """The returns G_t of one episode, with the end handled as the module docstring says.

    terminated: the return after the last step is 0. Otherwise the episode was cut (a time limit, or the
    budget): G_T = last_value = V(s_T) of the real last observation if a critic gave one (--baseline),
    else 0, i.e. the rewards after the cut are left out (the truncated objective's Monte-Carlo return).
    """
    bootstrap = last_value if (last_value is not None and not terminated) else 0.0
    return discounted_returns(rewards, gamma, bootstrap)


def policy_gradient_weights(returns: torch.Tensor, values: torch.Tensor | None, normalize: bool) -> torch.Tensor:
    """psi_t = G_t (values None) or G_t - V(s_t); standardised over the batch if `normalize`.

    A batch of one step has no spread to standardise by; it is only centred (to 0).
    """
    weights = returns if values is None else returns - values
    if normalize:
        weights = weights - weights.mean()
        if weights.numel() > 1:
            weights = weights / (weights.std() + 1e-8)
    return weights


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
# TensorBoard steps.


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


def env_state(envs, obs: np.ndarray) -> dict:
    """What continues the episodes in progress: each sub-environment's simulator state, random generator and
    time-limit counter, the episode statistics so far and the current observation. Only the classic-control
    environments keep their whole state in plain numbers (`unwrapped.state`); for the others (Box2D, MuJoCo,
    Atari), and for any in AsyncVectorEnv's worker processes, `resumable` is False and a resumed run starts new
    episodes."""
    subs = getattr(envs.unwrapped, "envs", [])  # AsyncVectorEnv's sub-environments live in its worker processes
    if not subs or not all(type(e.unwrapped).__module__.startswith("gymnasium.envs.classic_control") for e in subs):
        return {"resumable": False}
    states = []
    for e in subs:
        limit = e
        while not isinstance(limit, gym.wrappers.TimeLimit) and isinstance(limit, gym.Wrapper):
            limit = limit.env
        states.append({"state": torch.as_tensor(np.asarray(e.unwrapped.state, dtype=np.float64)),
                       "np_random": e.unwrapped.np_random.bit_generator.state,
                       "elapsed_steps": getattr(limit, "_elapsed_steps", None)})
    return {"resumable": True, "subs": states, "obs": torch.as_tensor(obs),
            "episode_returns": torch.as_tensor(envs.episode_returns), "episode_lengths": torch.as_tensor(envs.episode_lengths)}


def set_env_state(envs, state: dict, seed: int) -> np.ndarray:
    """Reset the environments, then put back the saved episodes where `state` holds them; returns the observation."""
    obs, _ = envs.reset(seed=seed)
    subs = getattr(envs.unwrapped, "envs", [])  # none in this process with AsyncVectorEnv
    if not state["resumable"] or len(state["subs"]) != len(subs):
        print("the environments' state was not saved or cannot be put back (only classic control's, in this "
              "process): new episodes start", flush=True)
        return obs
    for e, s in zip(subs, state["subs"], strict=True):
        e.unwrapped.state = s["state"].numpy().copy()
        e.unwrapped.np_random.bit_generator.state = s["np_random"]
        limit = e
        while not isinstance(limit, gym.wrappers.TimeLimit) and isinstance(limit, gym.Wrapper):
            limit = limit.env
        if s["elapsed_steps"] is not None:
            limit._elapsed_steps = s["elapsed_steps"]
    envs.episode_returns[:] = state["episode_returns"].numpy()
    envs.episode_lengths[:] = state["episode_lengths"].numpy()
    return state["obs"].numpy().copy()


def progress(step: int, total: int, origin: tuple[int, float]) -> float:
    """The fraction of training done, which every schedule reads. `origin` is (0, 0.0) for a fresh run; a run resumed
    with a different --total-timesteps sets it to (the resumed step, the progress there), stretching what is left."""
    start, done = origin
    return done + (1.0 - done) * (step - start) / (total - start)


def check_resume(ckpt: dict, args, model_args: dict) -> None:
    """A checkpoint to resume holds a training state for this environment and these network sizes."""
    if "global_step" not in ckpt:
        fail(f"--resume {args.resume} holds no training state")
    if ckpt["env_id"] != args.env_id:
        fail(f"--resume {args.resume} was trained on {ckpt['env_id']}, not --env-id {args.env_id}")
    if ckpt["model_args"] != model_args:
        fail(f"--resume {args.resume} holds networks of other sizes ({ckpt['model_args']}, "
             f"here {model_args}); resume with the options it was trained with")
    if not ckpt["global_step"] < args.total_timesteps:
        fail(f"--resume {args.resume} is at step {ckpt['global_step']:,}: --total-timesteps must be larger "
             f"than that, got {args.total_timesteps:,}")


def finite(x: np.ndarray) -> bool:
    """True when every entry is finite (integer arrays, such as Atari frames, always are)."""
    return x.dtype.kind != "f" or bool(np.isfinite(x).all())


def nonfinite_step(obs: np.ndarray, rewards: np.ndarray, infos: dict) -> str:
    """What is not finite in a vector step: "observation" (the last observation of an episode that ended, in
    info["final_obs"], included), "reward", or "" when all is finite."""
    finals = [infos["final_obs"][i] for i in np.flatnonzero(infos["_final_obs"])] if "final_obs" in infos else []
    if not (finite(obs) and all(finite(np.asarray(f)) for f in finals)):
        return "observation"
    return "" if finite(np.asarray(rewards)) else "reward"


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


def load_model(path: str) -> tuple[nn.Module, dict]:
    ckpt = load_checkpoint(path, "reinforce")
    policy = Policy(**ckpt["model_args"])
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
    # report: called at every progress line with (step, mean of the last 20 training returns);
    # returning True ends training (the run is then evaluated and returned as usual).
    check_args(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # One environment, in a vector of one without autoreset: the loop resets it after each episode, as the book
    # does; the vector form is what the long-run helpers checkpoint (env_state / set_env_state).
    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, 0, args.capture_video, run_name)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    discrete = isinstance(envs.single_action_space, gym.spaces.Discrete)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(envs.single_action_space.n) if discrete else int(envs.single_action_space.shape[0])
    if not discrete:
        low, high = envs.single_action_space.low, envs.single_action_space.high
    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "discrete": discrete, "hidden_size": args.hidden_size,
                  "action_low": None if discrete else low.tolist(), "action_high": None if discrete else high.tolist()}

    policy = Policy(**model_args).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate, fused=True)
    critic = critic_optimizer = None
    if args.baseline:
        critic = ValueNetwork(obs_dim, args.hidden_size).to(device)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate, fused=True)
    generators = {"action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back (no schedules here: only the step count).
    global_step = 0
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "reinforce")
        check_resume(ckpt, args, model_args)
        if ("critic" in ckpt) != args.baseline:
            fail(f"--resume {args.resume} was trained {'with' if 'critic' in ckpt else 'without'} --baseline; "
                 "resume with the options it was trained with")
        policy.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if critic is not None:
            critic.load_state_dict(ckpt["critic"])
            critic_optimizer.load_state_dict(ckpt["critic_optimizer"])
        global_step = ckpt["global_step"]
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episode goes on where it can; elsewhere a new one starts, seeded apart from the first one
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        print(f"resumed from {args.resume} at step {global_step:,}", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        ckpt = {"algo": "reinforce", "env_id": args.env_id, "model_args": model_args, "model": policy.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "rng": rng_state(generators), "envs": env_state(envs, obs) if with_envs else {"resumable": False}}
        if critic is not None:
            ckpt["critic"], ckpt["critic_optimizer"] = critic.state_dict(), critic_optimizer.state_dict()
        return ckpt

    def fault(quantity: str) -> None:  # the networks are still finite: the check runs before they change
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint(with_envs=False))
        envs.close()
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

    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()

    while global_step < args.total_timesteps:
        # 1. Play episodes_per_update complete episodes with the current policy (the last one may be cut
        #    by the budget). Each is (observations, actions, rewards, last observation, terminated).
        episodes = []
        for _ in range(args.episodes_per_update):
            ep_obs, ep_actions, ep_rewards = [], [], []
            while True:
                action = policy.sample(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
                env_action = action if discrete else np.clip(action, low, high)
                next_obs, reward, terminated, truncated, info = envs.step(env_action)
                global_step += 1
                if args.nan_check and (bad := nonfinite_step(next_obs, reward, info)):
                    fault(bad)
                terminated, truncated = bool(terminated[0]), bool(truncated[0])
                ep_obs.append(obs[0])
                ep_actions.append(action[0])
                ep_rewards.append(float(reward[0]))
                obs = next_obs
                if terminated or truncated or global_step >= args.total_timesteps:
                    break
            episodes.append((ep_obs, ep_actions, ep_rewards, obs[0], terminated))
            if terminated or truncated:
                ep_r, ep_l = float(info["episode"]["r"][0]), int(info["episode"]["l"][0])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)
                obs, _ = envs.reset()
            if global_step >= args.total_timesteps:
                break

        # 2. Returns G_t of each episode, bootstrapped from V(s_T) where the episode was cut and a critic exists.
        b_obs = torch.as_tensor(np.array([o for ep in episodes for o in ep[0]]), dtype=torch.float32, device=device)
        b_actions = torch.as_tensor(np.array([a for ep in episodes for a in ep[1]]), device=device)
        returns = []
        for _ep_obs, _ep_actions, ep_rewards, last_obs, ep_terminated in episodes:
            last_value = None
            if critic is not None and not ep_terminated:
                with torch.no_grad():
                    last_value = critic(torch.as_tensor(last_obs, dtype=torch.float32, device=device).unsqueeze(0))[0]
            returns.append(returns_to_go(torch.tensor(ep_rewards, device=device), args.gamma, ep_terminated, last_value))
        b_returns = torch.cat(returns)

        # 3. One policy gradient step (the baseline is V before this batch's critic update).
        values = None
        if critic is not None:
            with torch.no_grad():
                values = critic(b_obs)
        weights = policy_gradient_weights(b_returns, values, args.normalize_returns)
        logp, entropy = policy.log_prob_entropy(b_obs, b_actions)
        policy_loss = -(weights * logp).mean()
        loss = policy_loss - args.ent_coef * entropy.mean()
        optimizer.zero_grad()
        loss.backward()
        # nothing is clipped here: the norm is computed for the check alone (one host sync per update, which
        # follows whole episodes); before optimizer.step(), so the networks stay finite
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in policy.parameters() if p.grad is not None], foreach=True)
        if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
            fault("loss" if not torch.isfinite(loss) else "gradient norm")
        optimizer.step()

        # 4. The critic: regression of V(s_t) onto G_t.
        if critic is not None:
            for _ in range(args.value_epochs):
                value_loss = ((critic(b_obs) - b_returns) ** 2).mean()
                critic_optimizer.zero_grad()
                value_loss.backward()
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in critic.parameters() if p.grad is not None],
                                                          foreach=True)
                if args.nan_check and not math.isfinite(value_loss.detach() + grad_norm):
                    fault("value loss" if not torch.isfinite(value_loss) else "value gradient norm")
                critic_optimizer.step()
            writer.add_scalar("losses/value_loss", value_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", policy_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy.mean().item(), global_step)
        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
        if stop.signum or (args.checkpoint_every and global_step >= next_checkpoint):
            next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
            path = write_checkpoint(run_dir, checkpoint(), written, args.keep_checkpoints)
            if stop.signum:
                envs.close()
                close_logs(writer, args.track)
                print(f"stopped by {signal.Signals(stop.signum).name} at step {global_step:,}; resume with: "
                      f"{resume_command(args, path)}", file=sys.stderr, flush=True)
                sys.exit(128 + stop.signum)
    stop.restore()

    train_time = time.time() - start_time
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
    envs.close()

    eval_returns = evaluate(policy, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}")
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
