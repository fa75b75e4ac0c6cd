"""One-step actor-critic: an online policy gradient with the TD error as the advantage.

Book: Sutton & Barto, "Reinforcement Learning: An Introduction" (2nd ed., 2018), §13.5, "One-step
Actor-Critic (episodic)". The actor-critic idea: Barto, Sutton & Anderson (1983), "Neuronlike adaptive
elements that can solve difficult learning control problems", IEEE SMC 13(5), https://doi.org/10.1109/TSMC.1983.6313077.

Run:
    python algorithms/actor_critic.py                              # CartPole-v1, one environment
    python algorithms/actor_critic.py --env-id Pendulum-v1         # Gaussian policy for Box actions
    python algorithms/actor_critic.py --help

Every environment step is followed by one update of the critic and of the actor, on that step's
transition (s, a, r, s', terminated) alone: no rollout, no replay. The math, as written in the code below:
    TD error      delta = r + gamma * V(s') * (1 - terminated) - V(s)                  (S&B §13.5)
                  s' is the real next observation: at a time-limit cut (`truncated`) the last observation
                  of the episode, so a truncated step bootstraps from V(s'); a terminated one does not
    critic loss   L_V  = 1/2 * delta^2 with V(s') held fixed (semi-gradient TD(0): grad = -delta * grad V(s))
    actor loss    L_pi = -delta * log pi(a|s) - ent_coef * H[pi(.|s)]     (delta held fixed)
    update        one Adam step on both losses, the critic with step size alpha_w (--critic-learning-rate),
                  the actor with alpha_theta (--learning-rate), both decaying linearly to 0 over the run
                  (--anneal-lr, the default). S&B use plain SGD with constant step sizes on the same gradients:
                  w += alpha_w * delta * grad V(s),  theta += alpha_theta * I * delta * grad log pi(a|s)
The critic bootstraps only through non-terminal transitions: after `terminated` the target is r alone.
S&B's factor I = gamma^t (the gradient of the start state's discounted value) is left out, as in most
implementations: every step's actor update has the same scale.

Defaults: the actor's step size (3e-4) is smaller than the critic's (1e-3), and both decay linearly to 0.
Every update moves the policy on one sample, and the TD error is biased while the critic lags behind an
improving policy; a positive bias reinforces whatever the policy already does, and a saturated softmax has
almost no gradient to come back with, so a run can learn and then collapse. A slower actor than critic and
a step size that decays are what held up in the runs on the results page; it is not a guarantee for other
seeds or budgets (that is the weakness A2C's batches and PPO's clipping address).

--num-envs N steps N environments in lock step and averages the N one-step losses in each update: the
same algorithm with a batch of N transitions per update (N = 1, the default, is the book's).

Policies (as reinforce.py): Discrete actions, a softmax over logits. Box actions, a Gaussian N(mu(s),
diag(sigma^2)) with a state-independent, learned log sigma:
    log pi(a|s) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2 ]
    H[pi(.|s)]  = sum_i [ log sigma_i + log(2 pi e) / 2 ]
the sample clipped to the bounds when sent to the environment, the log-probability that of the unclipped
sample. The deterministic evaluation takes argmax (discrete) or clip(mu(s)) (Box).

The vector environment runs in Gymnasium's same-step autoreset mode: when an episode ends, step()
returns the next episode's first observation and puts the real last one in info["final_obs"], which is
the s' of that transition.

Long runs (the same form in every deep file of the collection):
    python algorithms/actor_critic.py --checkpoint-every 10000   # runs/<run>/checkpoint_<step>.pt, the newest 2 kept
    python algorithms/actor_critic.py --resume runs/<run>/checkpoint_<step>.pt  # continue up to --total-timesteps
A checkpoint holds the actor, the critic, the optimiser, the step count, the losses summed since the last log
line, every random generator's state and the environments' own state, so a resumed run ends with the same
parameters as one never interrupted (classic-control environments only: their whole state is a few numbers; with
any other environment the resumed run starts new episodes). Ctrl-C or SIGTERM stops the run after the current
step and its update, writes a checkpoint and exits with status 130 / 143, printing the command that resumes it;
a second signal quits at once. A resumed run writes to a new run directory whose TensorBoard steps continue the
old ones. The learning rates' decay reads the progress through --total-timesteps: resuming with the same value
continues it exactly, a larger one stretches what is left of it. A NaN or infinite observation, reward, loss or
gradient norm stops the run at once (exit 3) and keeps the last finite state in
runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.

Tested: a deterministic evaluation of >= 400 on CartPole-v1 in 50k steps (tests/test_actor_critic.py).
Results: benchmark_results/actor_critic.md
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
    exp_name: str = "actor_critic"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
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
    """if toggled, record videos of the first environment into videos/{run_name}"""
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
    total_timesteps: int = 50_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments (each update averages their one-step losses)"""
    learning_rate: float = 3e-4
    """the actor's Adam learning rate (alpha_theta); smaller than the critic's (see the module docstring)"""
    critic_learning_rate: float = 1e-3
    """the critic's Adam learning rate (alpha_w)"""
    anneal_lr: bool = True
    """if toggled, both learning rates decay linearly to 0 over training"""
    gamma: float = 0.99
    """the discount factor"""
    ent_coef: float = 0.0
    """the entropy bonus coefficient"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (argmax, or the clipped mean action)"""
    log_every: int = 10_000
    """write the losses (averaged since the last write) and SPS, and print a progress line, every this many steps"""


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
    for name in ("total_timesteps", "num_envs", "hidden_size", "eval_episodes", "log_every", "torch_threads"):
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
        fail(f"actor_critic.py needs a Discrete or a one-dimensional Box action space, {args.env_id} has "
             f"{action_space}; use e.g. CartPole-v1 or Pendulum-v1")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"actor_critic.py needs a flat Box observation, {args.env_id} has {obs_space}; "
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


def td_error(
    rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminations: torch.Tensor, gamma: float
) -> torch.Tensor:
    """delta = r + gamma * V(s') * (1 - terminated) - V(s), elementwise.

    next_values must be V of the real next observation: at a truncation, V(final observation) (not of
    the reset observation, and not 0); at a termination it is ignored.
    """
    return rewards + gamma * next_values * (1.0 - terminations) - values


def actor_critic_losses(
    delta: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor, ent_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy loss, value loss) whose gradients are S&B's one-step actor-critic updates (§13.5):
    -grad(policy loss) = mean(delta * grad log pi + ent_coef * grad H), -grad(value loss) = mean(delta * grad V(s)),
    given delta = td_error(...) with V(s') detached."""
    policy_loss = -(delta.detach() * logp).mean() - ent_coef * entropy.mean()
    value_loss = 0.5 * (delta**2).mean()
    return policy_loss, value_loss


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
    ckpt = load_checkpoint(path, "actor_critic")
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

    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
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
    critic = ValueNetwork(obs_dim, args.hidden_size).to(device)
    # one Adam, two parameter groups: each network keeps its own step size, and the per-step update is one call
    optimizer = torch.optim.Adam([{"params": policy.parameters(), "lr": args.learning_rate},
                                  {"params": critic.parameters(), "lr": args.critic_learning_rate}], fused=True)
    params = [*policy.parameters(), *critic.parameters()]
    generators = {"action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back (the learning-rate decay runs in steps here).
    global_step, origin = 0, (0, 0.0)
    # running sums of (policy loss, value loss, entropy, updates) since the last write, kept as a tensor
    # so that the step loop never waits for a host copy
    loss_sums = torch.zeros(4, device=device)
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "actor_critic")
        check_resume(ckpt, args, model_args)
        policy.load_state_dict(ckpt["model"])
        critic.load_state_dict(ckpt["critic"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        loss_sums = ckpt["loss_sums"].to(device)
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (global_step, progress(global_step, ckpt["args"]["total_timesteps"], origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        print(f"resumed from {args.resume} at step {global_step:,}", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "actor_critic", "env_id": args.env_id, "model_args": model_args, "model": policy.state_dict(),
                "args": asdict(args), "critic": critic.state_dict(), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "schedule_origin": origin, "loss_sums": loss_sums.cpu(),
                "rng": rng_state(generators), "envs": env_state(envs, obs) if with_envs else {"resumable": False}}

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
        if args.anneal_lr:
            frac = 1.0 - progress(global_step, args.total_timesteps, origin)
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate
            optimizer.param_groups[1]["lr"] = frac * args.critic_learning_rate
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = policy.sample(obs_t)
        logp, entropy = policy.log_prob_entropy(obs_t, action)
        action = action.cpu().numpy()
        env_action = action if discrete else np.clip(action, low, high)
        next_obs, rewards, terminations, truncations, infos = envs.step(env_action)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        # s' of each transition: the real last observation where an episode ended (same-step autoreset)
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]

        # V(s) and V(s') in one pass; V(s') is the fixed target of the semi-gradient update
        values = critic(torch.cat([obs_t, torch.as_tensor(real_next_obs, dtype=torch.float32, device=device)]))
        v, v_next = values[: args.num_envs], values[args.num_envs :].detach()
        delta = td_error(torch.as_tensor(rewards, dtype=torch.float32, device=device), v, v_next,
                         torch.as_tensor(terminations, dtype=torch.float32, device=device), args.gamma)
        policy_loss, value_loss = actor_critic_losses(delta, logp, entropy, args.ent_coef)

        # the two networks share no parameters, so one backward pass gives each its own gradient
        loss = policy_loss + value_loss
        optimizer.zero_grad()
        loss.backward()
        # nothing is clipped here: the norm is computed for the check alone, one host sync per step with the loss;
        # before optimizer.step(), so the networks stay finite
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
            fault("loss" if not torch.isfinite(loss) else "gradient norm")
        optimizer.step()
        loss_sums += torch.stack([policy_loss.detach(), value_loss.detach(), entropy.detach().mean(), loss_sums.new_ones(())])
        obs = next_obs

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            means = (loss_sums[:3] / loss_sums[3]).tolist()
            loss_sums.zero_()
            for key, val in zip(("losses/policy_loss", "losses/value_loss", "losses/entropy"), means, strict=True):
                writer.add_scalar(key, val, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the step's update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
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
