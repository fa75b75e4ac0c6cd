"""Asynchronous Advantage Actor-Critic (A3C), for discrete and continuous actions.

Paper: Mnih, Badia, Mirza, Graves, Lillicrap, Harley, Silver, Kavukcuoglu (2016), "Asynchronous Methods for
Deep Reinforcement Learning", https://arxiv.org/abs/1602.01783 (Algorithm S3; shared RMSProp, Section 4).
Lock-free updates: Recht, Re, Wright, Niu (2011), "Hogwild!", https://arxiv.org/abs/1106.5730.

Run:
    python algorithms/a3c.py --env-id CartPole-v1 --num-workers 2
    python algorithms/a3c.py --help            # every hyperparameter, with its meaning

How it runs: the global model's parameters live in shared memory (agent.share_memory()), and so do the
optimiser's statistics and a global step counter. --num-workers real processes (torch.multiprocessing,
"fork" start method) each own an environment and a local copy of the model, and repeat Algorithm S3:
    1. copy the shared parameters into the local model                       theta' <- theta
    2. act for up to num_steps steps, or until the episode ends              (t_max in the paper)
    3. compute the loss below on that rollout and its gradient on the local model
    4. apply the gradient to the SHARED parameters with the shared optimiser, without any lock (Hogwild):
       two workers may update the same parameters at the same time; the paper (and Hogwild!) show this
       works because each update is small and sparse in time.
The main process does not train: it starts the workers, writes what they send through a queue to
TensorBoard, prints progress, writes the checkpoints, and evaluates and saves the shared model when the step
budget is spent. The workers count their environment steps one at a time in the shared counter, so a run
ends at exactly --total-timesteps. A3C is not reproducible run to run even with a fixed seed: the interleaving
of the workers' updates depends on the operating system's scheduling. Each worker seeds its environment and
sampling with seed + rank (+ the resumed step in a resumed run).

The math, as written in the code below, for one worker's rollout t = 0..T-1 (T <= num_steps):
    n-step return  R_t = r_t + gamma * (1 - terminated_t) * B_t,   B_{T-1} = V(s_T) (the final observation
                   if the episode was truncated, not used if it terminated), B_t = R_{t+1} for t < T-1
    advantage      A_t = R_t - V(s_t)                                   (V(s_t) treated as a constant)
    loss           L = sum_t [ -A_t log pi(a_t|s_t) - ent_coef * entropy_t + vf_coef * (R_t - V(s_t))^2 ]
                   (a sum over the rollout: Algorithm S3 accumulates the gradient of every step)
    gradient       g = clip_by_global_norm(dL/dtheta', max_grad_norm)
    shared RMSprop v <- alpha * v + (1 - alpha) * g^2;   theta <- theta - lr * g / (sqrt(v) + eps)
                   (v is shared by all workers: the paper's "shared RMSProp", which it found more robust
                   than per-worker statistics; torch's form of RMSprop, eps outside the square root)
    or shared Adam m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  k <- k + 1 (shared step count);
                   theta <- theta - lr * (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)
Continuous actions: a Gaussian with a state-independent learned log sigma, as in a2c.py:
    log pi(a|s) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2 ],
    entropy     = sum_i [ log sigma_i + (1 + log(2 pi)) / 2 ];   the action is clipped to the bounds.

Time limits: a worker steps a single (non-vector) environment; at an episode's end it bootstraps a
truncation from V(last observation) and a termination from 0, then resets the environment itself.

Defaults: the paper's choices (shared RMSprop with alpha 0.99, t_max 5, gamma 0.99, entropy coefficient 0.01,
learning rate annealed linearly to 0, the loss summed over the rollout) with lr 2e-4, eps 1e-5, value
coefficient 0.5, 64-64 tanh MLPs, 2 workers for a 2-core machine, and a loose gradient clipping (norm 40,
as common A3C implementations). Why the sum and the loose clipping: a rollout cut short by a termination is
one or two steps whose value error then dominates the gradient's norm; with a per-step mean and a2c.py's
clipping at 0.5 the clipping shrinks the policy gradient exactly on the updates that carry CartPole's
learning signal, and the policy hardly learns. Bookkeeping for the tests: each worker counts its updates and
sums the update vectors it wrote into the shared parameters (main() returns both).

Long runs (the same form in every deep file of the collection):
    python algorithms/a3c.py --checkpoint-every 100000      # runs/<run>/checkpoint_<step>.pt, the newest 2 kept
    python algorithms/a3c.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the shared model, the shared optimiser's statistics, the global step count and the main
process's random generators; not the workers' environments: a resumed run starts new episodes, and it is not
the run that was never interrupted (nor is any A3C run the same twice). The main process writes the periodic
checkpoints while the workers go on, a snapshot as each worker takes one (an update in flight may be in it in
part). The workers ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process group); on either the main
process tells them to stop after their current update, waits for them, writes a checkpoint and exits with status
130 / 143, printing the command that resumes it; a second signal quits at once. A resumed run writes to a new
run directory whose TensorBoard steps continue the old ones. The learning-rate schedule reads the progress
through --total-timesteps: resuming with the same value continues it, a larger one stretches what is left of
it. A NaN or infinite observation, reward, loss or gradient norm in a worker stops the run (exit 3): that
worker reports it without applying its update, the main process stops the others and keeps the last finite
state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.

Tested: on CartPole-v1 in 200k steps, the training return averaged over 20 episodes passes 150 and the
deterministic evaluation beats a random policy (> 60) (tests/test_a3c.py).
Results: benchmark_results/a3c.md
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import queue
import random
import shlex
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import tyro


@dataclass
class Args:
    exp_name: str = "a3c"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch; worker i seeds its environment and sampling with seed + i"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """accepted for uniformity with the other files and ignored: the workers train on the CPU"""
    torch_threads: int = 1
    """torch CPU threads in each process (the workers are the parallelism)"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights & Biases"""
    wandb_project_name: str = "onefile-rl"
    """the Weights & Biases project"""
    wandb_entity: str | None = None
    """the Weights & Biases entity (team)"""
    capture_video: bool = False
    """if toggled, record videos of worker 0's environment into videos/{run_name}"""
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
    total_timesteps: int = 200_000
    """total environment steps, summed over the workers (the shared counter T of Algorithm S3)"""
    num_workers: int = 2
    """the number of worker processes, each with its own environment"""
    num_steps: int = 5
    """the longest rollout between updates (the paper's t_max): the n of the n-step return"""
    learning_rate: float = 2e-4
    """the shared optimiser's learning rate"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0 with the global step count (as in the paper)"""
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """shared RMSprop as in the paper, or shared Adam"""
    rmsprop_alpha: float = 0.99
    """RMSprop's decay of the running mean of squared gradients"""
    optimizer_eps: float = 1e-5
    """the epsilon of RMSprop / Adam"""
    gamma: float = 0.99
    """the discount factor"""
    ent_coef: float = 0.01
    """the entropy bonus coefficient (the paper's 0.01)"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 40.0
    """the maximum norm of each worker's gradient (global clipping; a safety net, rarely active)"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (argmax action, or the Gaussian's mean)"""
    log_every: int = 10_000
    """print a progress line every this many environment steps"""
    losses_every: int = 100
    """each worker sends its losses to TensorBoard every this many of its updates"""


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
    for name in ("total_timesteps", "num_workers", "num_steps", "eval_episodes", "hidden_size", "log_every",
                 "losses_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not (0 < args.learning_rate < math.inf and args.max_grad_norm > 0 and 0 < args.optimizer_eps < math.inf):
        fail("need 0 < --learning-rate < inf, --max-grad-norm > 0 and 0 < --optimizer-eps < inf")
    if not 0 < args.gamma <= 1:
        fail(f"--gamma must be in (0, 1], got {args.gamma}")
    if not 0 <= args.rmsprop_alpha < 1:
        fail(f"--rmsprop-alpha must be in [0, 1), got {args.rmsprop_alpha}")
    if not (0 <= args.ent_coef < math.inf and 0 <= args.vf_coef < math.inf):
        fail("need --ent-coef and --vf-coef finite and >= 0")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if "fork" not in mp.get_all_start_methods():
        fail("a3c.py starts its workers with the 'fork' method, which this platform lacks (use Linux or macOS)")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or Pendulum-v1")
    try:
        probe = gym.make(args.env_id)
    except Exception as e:  # e.g. a missing optional dependency (MuJoCo, Box2D)
        fail(f"--env-id {args.env_id} cannot be created: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"a3c.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as CartPole-v1 or Pendulum-v1")
    if not (isinstance(action_space, gym.spaces.Discrete)
            or (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1)):
        fail(f"a3c.py needs a Discrete or one-dimensional Box action space, {args.env_id} has {action_space}")
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


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; mu, diag(sigma^2)) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2 ].

    Written out instead of torch.distributions.Normal: the same numbers, without its per-call checks.
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian: sum_i [ log sigma_i + (1 + log(2 pi)) / 2 ] (independent of the mean)."""
    return (log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


class Agent(nn.Module):
    """Separate actor and critic MLPs (SB3's default for A2C). The actor outputs logits of a categorical
    distribution (Discrete actions) or the mean of a Gaussian whose log sigma is one learned vector that does
    not depend on the state (Box actions; initialised at 0, i.e. sigma = 1, as SB3). The Box space's bounds
    are buffers, so they move with .to(device) and travel in the state_dict."""

    def __init__(self, obs_dim: int, act_dim: int, continuous: bool, hidden_size: int = 64,
                 action_low: list[float] | None = None, action_high: list[float] | None = None):
        super().__init__()
        self.continuous = continuous
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            # a small last layer starts the policy near uniform (discrete) or near a zero mean (continuous)
            layer_init(nn.Linear(hidden_size, act_dim), std=0.01),
        )
        if continuous:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    @torch.no_grad()
    def sample_action(self, x: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|x), unclipped; only the actor runs (the values come from one batched pass after the rollout)."""
        out = self.actor(x)
        if self.continuous:
            return out + self.log_std.exp() * torch.randn_like(out)
        return torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(-1)

    def evaluate_actions(self, x: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (log pi(action|x), entropy of pi(.|x), V(x)), differentiable, for the loss."""
        out = self.actor(x)
        if self.continuous:
            log_std = self.log_std.expand_as(out)
            return gaussian_log_prob(action, out, log_std), gaussian_entropy(log_std), self.get_value(x)
        # the categorical distribution written out with log_softmax (torch.distributions gives the same numbers)
        logp_all = torch.log_softmax(out, dim=-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy, self.get_value(x)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic action: the argmax, or the Gaussian's mean clipped to the action bounds."""
        out = self.actor(x)
        return torch.clamp(out, self.action_low, self.action_high) if self.continuous else out.argmax(-1)


class SharedRMSprop:
    """RMSprop on the shared model's parameters, its squared-gradient averages in shared memory.

    step() is called by every worker with the gradients of its local copy and no lock (Hogwild). It returns
    the updates it added to the parameters. The arithmetic is torch.optim.RMSprop's (no momentum, not
    centred). torch.optim.RMSprop itself keeps its state per process, which is why this class exists.
    """

    def __init__(self, params: list[torch.Tensor], alpha: float, eps: float):
        self.params, self.alpha, self.eps = params, alpha, eps
        self.square_avg = [torch.zeros_like(p).share_memory_() for p in params]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        updates = []
        for p, g, v in zip(self.params, grads, self.square_avg, strict=True):
            v.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
            update = g.div(v.sqrt().add_(self.eps)).mul_(-lr)
            p.add_(update)
            updates.append(update)
        return updates

    def state_dict(self) -> dict:
        return {"square_avg": [v.clone() for v in self.square_avg]}

    def load_state_dict(self, state: dict) -> None:
        for v, saved in zip(self.square_avg, state["square_avg"], strict=True):
            v.copy_(saved)  # in place: the tensors stay in shared memory


class SharedAdam:
    """Adam on the shared model's parameters; both moments and the step count in shared memory.

    Same contract as SharedRMSprop; the arithmetic is torch.optim.Adam's (no weight decay, not AMSGrad).
    The step count is shared, so the bias correction follows the total number of updates of all workers.
    """

    def __init__(self, params: list[torch.Tensor], eps: float, betas: tuple[float, float] = (0.9, 0.999)):
        self.params, self.eps, self.betas = params, eps, betas
        self.exp_avg = [torch.zeros_like(p).share_memory_() for p in params]
        self.exp_avg_sq = [torch.zeros_like(p).share_memory_() for p in params]
        self.step_count = torch.zeros(1, dtype=torch.int64).share_memory_()

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        b1, b2 = self.betas
        k = int(self.step_count.add_(1).item())
        updates = []
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**k)).sqrt_().add_(self.eps)
            update = (m / (1 - b1**k)).div_(denom).mul_(-lr)
            p.add_(update)
            updates.append(update)
        return updates

    def state_dict(self) -> dict:
        return {"exp_avg": [m.clone() for m in self.exp_avg], "exp_avg_sq": [v.clone() for v in self.exp_avg_sq],
                "step_count": self.step_count.clone()}

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip([*self.exp_avg, *self.exp_avg_sq, self.step_count],
                               [*state["exp_avg"], *state["exp_avg_sq"], state["step_count"]], strict=True):
            mine.copy_(saved)  # in place: the tensors stay in shared memory


def compute_nstep_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    terminations: torch.Tensor,
    truncations: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """The paper's bootstrapped n-step returns over a [T, N] rollout (Algorithm S3, generalised to episode
    ends inside the rollout).

    next_values[t] is the value of the observation that followed step t: V(s_{t+1}) inside an episode,
    V(final observation) where the episode was truncated at t (anything where it terminated: it is
    multiplied by 0). Each return sums rewards up to the end of its episode or of the rollout, whichever
    comes first, and bootstraps from the value there, or from 0 after a termination.
    """
    T = rewards.shape[0]
    returns = torch.zeros_like(rewards)
    not_term = 1.0 - terminations.to(rewards.dtype)
    done = torch.maximum(terminations, truncations) > 0
    following = next_values[T - 1]  # B_t: what step t bootstraps from
    for t in reversed(range(T)):
        following = torch.where(done[t], next_values[t], following)
        returns[t] = rewards[t] + gamma * not_term[t] * following
        following = returns[t]
    return returns


def a3c_loss(
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    value: torch.Tensor,
    returns: torch.Tensor,
    ent_coef: float,
    vf_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (total loss, policy loss, value loss, entropy); the advantage R - V is a constant.

    The total loss is a SUM over the rollout's steps, as Algorithm S3 accumulates one gradient per step.
    (A mean, as in a2c.py, would give the few steps of a rollout cut short by an episode's end the
    weight of a full rollout: see the module docstring.) The three parts are returned as per-step means,
    for logging with the same meaning as in a2c.py.
    """
    advantages = (returns - value).detach()
    pg = -(advantages * logprob)
    v = (returns.detach() - value).pow(2)
    total = (pg - ent_coef * entropy + vf_coef * v).sum()
    return total, pg.mean(), v.mean(), entropy.mean()


def worker(rank: int, args: Args, run_name: str, agent: Agent, model_args: dict, optimizer: SharedRMSprop | SharedAdam,
           global_step, worker_updates, worker_pids, applied: torch.Tensor, messages, stop_workers,
           origin: tuple[int, float], start_step: int) -> None:
    """One A3C learner (Algorithm S3), running in its own process until the shared step count is spent or the
    main process sets `stop_workers` (checked after each update). Signals are the main process's business."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_pids[rank] = os.getpid()
    torch.set_num_threads(args.torch_threads)
    seed = args.seed + rank + start_step  # a resumed run's workers draw apart from the first run's
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    env = gym.wrappers.RecordEpisodeStatistics(make_env(args.env_id, rank, args.capture_video, run_name)())
    env.action_space.seed(seed)
    continuous = model_args["continuous"]
    local = Agent(**model_args)
    next_obs, _ = env.reset(seed=seed)
    stats, n_updates = None, 0

    def fault(quantity: str, step: int) -> None:  # report to the main process; this update is not applied
        messages.put(("fault", quantity, step))
        env.close()

    parent = os.getppid()
    while not stop_workers.is_set() and os.getppid() == parent:  # stop if the main process died
        frac = 1.0 - progress(global_step.value, args.total_timesteps, origin)
        lr_now = args.learning_rate * frac if args.anneal_lr else args.learning_rate
        local.load_state_dict(agent.state_dict())  # theta' <- theta: a snapshot, other workers keep writing

        obs, actions, rewards = [], [], []
        terminated = truncated = False
        for _ in range(args.num_steps):
            with global_step.get_lock():  # the shared counter T, one step at a time: the run ends at the budget
                if global_step.value >= args.total_timesteps:
                    break
                global_step.value += 1
                step_now = global_step.value
            obs.append(next_obs)
            action = local.sample_action(torch.as_tensor(next_obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
            actions.append(action)
            env_action = np.clip(action, env.action_space.low, env.action_space.high) if continuous else int(action)
            next_obs, reward, terminated, truncated, info = env.step(env_action)
            rewards.append(float(reward))
            if args.nan_check and not (finite(next_obs) and math.isfinite(rewards[-1])):
                return fault("observation" if not finite(next_obs) else "reward", step_now)
            if terminated or truncated:
                break
        T = len(rewards)
        if T == 0:  # the budget was spent by the other workers
            break
        if terminated or truncated:
            messages.put(("episode", step_now, float(info["episode"]["r"]), int(info["episode"]["l"])))
            final_obs = next_obs  # in a single environment the last observation is returned before reset
            next_obs, _ = env.reset()
        else:
            final_obs = next_obs

        b_obs = torch.as_tensor(np.array(obs), dtype=torch.float32)
        b_actions = torch.as_tensor(np.array(actions))
        logprob, entropy, value = local.evaluate_actions(b_obs, b_actions)
        with torch.no_grad():
            last_value = local.get_value(torch.as_tensor(final_obs, dtype=torch.float32).unsqueeze(0))
            # only next_values[T-1] is read (the rollout stops at an episode's end); the rest is a placeholder
            next_values = last_value.expand(T).unsqueeze(1)
            term = torch.zeros(T, 1)
            term[-1] = float(terminated)
            trunc = torch.zeros(T, 1)
            trunc[-1] = float(truncated)
            returns = compute_nstep_returns(torch.tensor(rewards).unsqueeze(1), next_values, term, trunc,
                                            args.gamma).squeeze(1)
        loss, pg_loss, v_loss, entropy_mean = a3c_loss(logprob, entropy, value, returns, args.ent_coef, args.vf_coef)
        local.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(local.parameters(), args.max_grad_norm, foreach=True)
        # one host sync per update; before the shared parameters change, so they stay finite
        if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
            return fault("loss" if not torch.isfinite(loss) else "gradient norm", step_now)
        # the local gradients update the SHARED parameters, no lock
        updates = optimizer.step([p.grad for p in local.parameters()], lr_now)

        # bookkeeping (each worker writes only its own row / slot, so these need no lock either)
        applied[rank].add_(nn.utils.parameters_to_vector(updates))
        n_updates += 1
        worker_updates[rank] = n_updates
        stats = (step_now, {"charts/learning_rate": lr_now, "losses/value_loss": v_loss.item(),
                            "losses/policy_loss": pg_loss.item(), "losses/entropy": entropy_mean.item()})
        if n_updates % args.losses_every == 0:
            messages.put(("losses", *stats))
            stats = None
    if stats is not None:  # the last update's losses, so that even a short run logs every key
        messages.put(("losses", *stats))
    env.close()


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
    ckpt = load_checkpoint(path, "a3c")
    agent = Agent(**ckpt["model_args"])
    agent.load_state_dict(ckpt["model"])
    return agent, ckpt


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

    probe = gym.make(args.env_id)
    obs_dim = int(np.prod(probe.observation_space.shape))
    continuous = isinstance(probe.action_space, gym.spaces.Box)
    act_dim = int(probe.action_space.shape[0]) if continuous else int(probe.action_space.n)
    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "continuous": continuous, "hidden_size": args.hidden_size,
                  "action_low": probe.action_space.low.tolist() if continuous else None,
                  "action_high": probe.action_space.high.tolist() if continuous else None}
    probe.close()

    # The global model and everything the workers share, in shared memory before the workers are forked.
    agent = Agent(**model_args).share_memory()
    if args.optimizer == "rmsprop":
        optimizer = SharedRMSprop(list(agent.parameters()), args.rmsprop_alpha, args.optimizer_eps)
    else:
        optimizer = SharedAdam(list(agent.parameters()), args.optimizer_eps)
    # "fork": the children inherit the shared tensors and this module without re-importing it (which
    # "spawn" would need, and which fails when the file is imported by path, as the tests do).
    ctx = mp.get_context("fork")
    global_step = ctx.Value("q", 0)
    worker_updates = ctx.Array("q", args.num_workers)
    worker_pids = ctx.Array("q", args.num_workers)
    stop_workers = ctx.Event()  # set by the main process: each worker ends after its current update
    messages = ctx.Queue()
    generators: dict[str, np.random.Generator] = {}  # the main process draws from no numpy generator of its own

    # The training state a checkpoint holds; resuming puts it back (the schedule runs in environment steps).
    origin = (0, 0.0)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "a3c")
        check_resume(ckpt, args, model_args)
        if ckpt["args"]["optimizer"] != args.optimizer:
            fail(f"--resume {args.resume} was trained with --optimizer {ckpt['args']['optimizer']}, "
                 f"not {args.optimizer}")
        agent.load_state_dict(ckpt["model"])  # in place: the parameters stay in shared memory
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step.value, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (global_step.value, progress(global_step.value, ckpt["args"]["total_timesteps"], origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step.value:,} on",
                  flush=True)
        set_rng_state(ckpt["rng"], generators)
        print(f"resumed from {args.resume} at step {global_step.value:,} (the workers start new episodes)",
              flush=True)
    start_step = global_step.value
    initial_params = nn.utils.parameters_to_vector(agent.parameters()).detach().clone()
    applied = torch.zeros(args.num_workers, initial_params.numel()).share_memory_()

    def checkpoint() -> dict:
        """The shared state. Written while the workers run (periodic checkpoints), it is a snapshot like the one
        each worker takes of theta: an update in flight may be in it in part."""
        return {"algo": "a3c", "env_id": args.env_id, "model_args": model_args,
                "model": {k: v.clone() for k, v in agent.state_dict().items()}, "args": asdict(args),
                "optimizer": optimizer.state_dict(), "global_step": global_step.value, "schedule_origin": origin,
                "rng": rng_state(generators), "envs": {"resumable": False}}

    run_dir = make_run_dir(run_name)
    stop = StopSignal()  # before the workers start: they ignore SIGINT/SIGTERM from their first line on

    # Start the workers before TensorBoard and W&B start their threads: forking a process with threads
    # running is unsafe, and the children need neither.
    start_time = time.time()
    workers = [ctx.Process(target=worker, args=(rank, args, run_name, agent, model_args, optimizer, global_step,
                                                worker_updates, worker_pids, applied, messages, stop_workers,
                                                origin, start_step), daemon=True)
               for rank in range(args.num_workers)]
    for p in workers:
        p.start()

    faults: list[tuple[str, int]] = []  # (quantity, step) that workers reported, the first one stops the run
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    next_checkpoint = (start_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    try:
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=asdict(args), name=run_name, save_code=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir)
        writer.add_text("hyperparameters",
                        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

        recent_returns: deque[float] = deque(maxlen=20)
        next_log = (start_step // args.log_every + 1) * args.log_every

        def handle(msg) -> None:
            if msg[0] == "episode":
                _, step, ep_r, ep_l = msg
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, step)
                writer.add_scalar("charts/episodic_length", ep_l, step)
            elif msg[0] == "fault":
                faults.append(msg[1:])
            else:
                _, step, stats = msg
                for key, val in stats.items():
                    writer.add_scalar(key, val, step)
                writer.add_scalar("charts/SPS", int((step - start_step) / (time.time() - start_time)), step)

        # The main process only listens until every worker has finished (the queue must be drained
        # before the workers can exit: a process does not end while its queued messages are unread).
        while any(p.is_alive() for p in workers):
            try:
                handle(messages.get(timeout=0.2))
            except queue.Empty:
                pass
            if (stop.signum or faults) and not stop_workers.is_set():
                stop_workers.set()  # a signal or a numerical fault: the workers end after their current update
            if global_step.value >= next_log:
                next_log = (global_step.value // args.log_every + 1) * args.log_every
                sps = int((global_step.value - start_step) / (time.time() - start_time))
                recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
                print(f"step {global_step.value:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
                if (report is not None and recent_returns and not stop_workers.is_set()
                        and report(global_step.value, float(np.mean(recent_returns)))):
                    stop_workers.set()  # the caller asked to stop (tools/tune.py): the workers end, as on a signal
            # periodic checkpoints: written here, by the main process, while the workers go on
            if args.checkpoint_every and not stop_workers.is_set() and global_step.value >= next_checkpoint:
                state = checkpoint()
                next_checkpoint = (state["global_step"] // args.checkpoint_every + 1) * args.checkpoint_every
                write_checkpoint(run_dir, state, written, args.keep_checkpoints)
        while True:
            try:
                handle(messages.get(timeout=0.2))
            except queue.Empty:
                break
        for p in workers:
            p.join()
    finally:
        for p in workers:  # on an error or a second signal in the main process, do not leave workers behind
            if p.is_alive():
                p.terminate()
    train_time = time.time() - start_time
    failed = [rank for rank, p in enumerate(workers) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"a3c worker(s) {failed} failed (exit codes {[workers[r].exitcode for r in failed]})")
    steps = global_step.value
    if faults:  # the faulty update was not applied: the shared state is still finite
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint())
        close_logs(writer, args.track)
        numerical_fault(*faults[0], path)
    # After the workers' last update: the checkpoint a signal asked for (then exit 128 + signal), or a periodic one
    # whose boundary the last steps crossed.
    if stop.signum or (args.checkpoint_every and steps >= next_checkpoint):
        path = write_checkpoint(run_dir, checkpoint(), written, args.keep_checkpoints)
        if stop.signum:
            close_logs(writer, args.track)
            print(f"stopped by {signal.Signals(stop.signum).name} at step {steps:,}; resume with: "
                  f"{resume_command(args, path)}", file=sys.stderr, flush=True)
            sys.exit(128 + stop.signum)
    stop.restore()

    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())

    eval_returns = evaluate(agent, args.env_id, args.eval_episodes, seed=args.seed + 100_000)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {steps - start_step:,} steps in {train_time:.1f}s by {args.num_workers} workers "
          f"(updates per worker: {list(worker_updates)})")
    if model_path:
        print(f"model saved to {model_path}")
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int((steps - start_step) / train_time),
        "train_time": train_time,
        "global_step": steps,
        "run_dir": run_dir,
        "model_path": model_path,
        # what the tests check: real processes, each of which wrote its updates into the shared parameters
        "worker_pids": list(worker_pids),
        "worker_updates": list(worker_updates),
        "initial_params": initial_params,
        "final_params": nn.utils.parameters_to_vector(agent.parameters()).detach().clone(),
        "applied_updates": applied.clone(),
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
