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
TensorBoard, prints progress, and evaluates and saves the shared model when the step budget is spent.
A3C is not reproducible run to run even with a fixed seed: the interleaving of the workers' updates depends
on the operating system's scheduling. Each worker seeds its environment and sampling with seed + rank.

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

Tested: on CartPole-v1 in 200k steps, the training return averaged over 20 episodes passes 150 and the
deterministic evaluation beats a random policy (> 60) (tests/test_a3c.py).
Results: benchmark_results/a3c.md
"""

from __future__ import annotations

import math
import os
import queue
import random
import sys
import time
from collections import deque
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


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_workers", "num_steps", "eval_episodes", "hidden_size", "log_every",
                 "losses_every", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (args.learning_rate > 0 and args.max_grad_norm > 0 and args.optimizer_eps > 0):
        fail("need --learning-rate > 0, --max-grad-norm > 0 and --optimizer-eps > 0")
    if not 0 < args.gamma <= 1:
        fail(f"--gamma must be in (0, 1], got {args.gamma}")
    if not 0 <= args.rmsprop_alpha < 1:
        fail(f"--rmsprop-alpha must be in [0, 1), got {args.rmsprop_alpha}")
    if not (args.ent_coef >= 0 and args.vf_coef >= 0):
        fail("need --ent-coef >= 0 and --vf-coef >= 0")
    if "fork" not in mp.get_all_start_methods():
        fail("a3c.py starts its workers with the 'fork' method, which this platform lacks (use Linux or macOS)")
    try:
        gym.spec(args.env_id)
    except gym.error.Error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment; try CartPole-v1 or Pendulum-v1")
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
           global_step, worker_updates, worker_pids, applied: torch.Tensor, messages) -> None:
    """One A3C learner (Algorithm S3), running in its own process until the shared step count is spent."""
    worker_pids[rank] = os.getpid()
    torch.set_num_threads(args.torch_threads)
    seed = args.seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    env = gym.wrappers.RecordEpisodeStatistics(make_env(args.env_id, rank, args.capture_video, run_name)())
    env.action_space.seed(seed)
    continuous = model_args["continuous"]
    local = Agent(**model_args)
    next_obs, _ = env.reset(seed=seed)
    stats, n_updates = None, 0

    parent = os.getppid()
    while global_step.value < args.total_timesteps and os.getppid() == parent:  # stop if the main process died
        lr_now = args.learning_rate * (1.0 - global_step.value / args.total_timesteps) if args.anneal_lr else args.learning_rate
        local.load_state_dict(agent.state_dict())  # theta' <- theta: a snapshot, other workers keep writing

        obs, actions, rewards = [], [], []
        terminated = truncated = False
        for _ in range(args.num_steps):
            obs.append(next_obs)
            action = local.sample_action(torch.as_tensor(next_obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
            actions.append(action)
            env_action = np.clip(action, env.action_space.low, env.action_space.high) if continuous else int(action)
            next_obs, reward, terminated, truncated, info = env.step(env_action)
            rewards.append(float(reward))
            if terminated or truncated:
                break
        T = len(rewards)
        with global_step.get_lock():
            global_step.value += T
            step_now = global_step.value
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
        nn.utils.clip_grad_norm_(local.parameters(), args.max_grad_norm, foreach=True)
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


def main(args: Args) -> dict:
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
    initial_params = nn.utils.parameters_to_vector(agent.parameters()).detach().clone()
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
    applied = torch.zeros(args.num_workers, initial_params.numel()).share_memory_()
    messages = ctx.Queue()

    # Start the workers before TensorBoard and W&B start their threads: forking a process with threads
    # running is unsafe, and the children need neither.
    start_time = time.time()
    workers = [ctx.Process(target=worker, args=(rank, args, run_name, agent, model_args, optimizer, global_step,
                                                worker_updates, worker_pids, applied, messages), daemon=True)
               for rank in range(args.num_workers)]
    for p in workers:
        p.start()

    try:
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=asdict(args), name=run_name, save_code=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(f"runs/{run_name}")
        writer.add_text("hyperparameters",
                        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

        recent_returns: deque[float] = deque(maxlen=20)
        next_log = args.log_every

        def handle(msg) -> None:
            if msg[0] == "episode":
                _, step, ep_r, ep_l = msg
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, step)
                writer.add_scalar("charts/episodic_length", ep_l, step)
            else:
                _, step, stats = msg
                for key, val in stats.items():
                    writer.add_scalar(key, val, step)
                writer.add_scalar("charts/SPS", int(step / (time.time() - start_time)), step)

        # The main process only listens until every worker has finished (the queue must be drained
        # before the workers can exit: a process does not end while its queued messages are unread).
        while any(p.is_alive() for p in workers):
            try:
                handle(messages.get(timeout=0.2))
            except queue.Empty:
                pass
            if global_step.value >= next_log:
                next_log += args.log_every
                sps = int(global_step.value / (time.time() - start_time))
                recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
                print(f"step {global_step.value:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
        while True:
            try:
                handle(messages.get(timeout=0.2))
            except queue.Empty:
                break
        for p in workers:
            p.join()
    finally:
        for p in workers:  # on an error or Ctrl-C in the main process, do not leave workers behind
            if p.is_alive():
                p.terminate()
    train_time = time.time() - start_time
    failed = [rank for rank, p in enumerate(workers) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"a3c worker(s) {failed} failed (exit codes {[workers[r].exitcode for r in failed]})")
    steps = global_step.value

    eval_returns = evaluate(agent, args.env_id, args.eval_episodes, seed=args.seed + 100_000)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {steps:,} steps in {train_time:.1f}s by {args.num_workers} workers "
          f"(updates per worker: {list(worker_updates)})")

    model_path = None
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_checkpoint(model_path, {"algo": "a3c", "env_id": args.env_id, "model_args": model_args,
                                     "model": agent.state_dict()})
        print(f"model saved to {model_path}")
    writer.close()
    if args.track:
        import wandb

        wandb.finish()
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int(steps / train_time),
        "train_time": train_time,
        "global_step": steps,
        "run_dir": f"runs/{run_name}",
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
