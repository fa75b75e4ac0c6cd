"""Data-parallel Proximal Policy Optimization (PPO) for discrete actions, with torch.distributed.

Paper: Schulman, Wolski, Dhariwal, Radford, Klimov (2017), "Proximal Policy Optimization Algorithms",
https://arxiv.org/abs/1707.06347. Advantages by GAE: Schulman et al. (2016), https://arxiv.org/abs/1506.02438.
This is ppo.py plus what data parallelism needs, in the manner of CleanRL's multi-GPU PPO, on any
torch.distributed backend.

Run:
    torchrun --standalone --nproc_per_node=2 algorithms/ppo_distributed.py --env-id CartPole-v1     # one node
    torchrun --nnodes=2 --node-rank=K --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \
        --rdzv-id=JOB algorithms/ppo_distributed.py --env-id CartPole-v1    # several nodes: K = 0, 1 on each node
    python algorithms/ppo_distributed.py --env-id CartPole-v1     # one process, no process group: ppo.py's run
    python algorithms/ppo_distributed.py --help                    # every hyperparameter, with its meaning

Tested: two ranks average to the gradient of their concatenated batch, and resume bit for bit (tests/test_ppo_distributed.py).
Results: benchmark_results/ppo_distributed.md

The math, as written in the code below (t indexes the rollout, per environment):
    next value    v'_t = V(s'_t), s'_t the observation that followed step t (the final one if the episode ended)
    TD error      delta_t = r_t + gamma * v'_t * (1 - terminated_t) - V(s_t)
    GAE           A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},   done = terminated or truncated
    return        R_t = A_t + V(s_t)                                  (the value target)
    ratio         rho = exp(log pi(a|s) - log pi_old(a|s))
    policy loss   L_pi = mean( max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)) )      (paper eq. 7)
    value loss    L_v  = mean( (V(s) - R)^2 )  [optionally clipped around the old value]  (paper eq. 9)
    total loss    L = L_pi - ent_coef * entropy + vf_coef * L_v

The rollout (the same as ppo.py's, on each rank). The vector environment runs in
Gymnasium's same-step autoreset mode: when an episode ends, step() returns the next episode's first
observation and puts the last one in info["final_obs"], so no step is wasted on a reset. Next to each
observation s_t the rollout stores the one that followed it, s'_t: that last one where the episode ended.
Time-limit truncation is not termination: a truncated episode bootstraps from V(s'_t), the value of the
observation where it was cut (Pardo et al., 2018, "Time Limits in Reinforcement Learning"); a terminated
one does not. Per step only the actor runs, to sample; log pi_old(a|s), V(s) and V(s') come from one
batched pass after the rollout, with the same parameters and so the same numbers, at a fraction of the
per-step cost.

What data parallelism does here. Each rank (a process torchrun starts; RANK, LOCAL_RANK and WORLD_SIZE come from
the environment it sets) steps its own --num-envs environments (--num-envs is per rank), seeded
seed + rank * num_envs so that no two environments of the job share a seed (a vector env seeds its environments
seed, seed + 1, ...), collects its own rollout and computes its own advantages. The global batch is
num_envs * num_steps * world_size; --total-timesteps and global_step count the steps of all ranks, so the
schedules (learning rate, clip range) follow the global progress and are the same on every rank. The parameters
start equal (broadcast from rank 0 after initialisation or resume), and every rank takes the same optimiser step:
the gradients of each minibatch are averaged over the ranks before clipping, so the update is that of one
minibatch made of every rank's minibatch.

The collectives (all no-ops without a process group, which is how a plain `python` run goes, as world size 1):
    average_gradients     one all_reduce (sum, then / world size) of all gradients flattened into one bucket per
                          minibatch (one call, not one per parameter), the loss riding in the same bucket
    normalize_advantages  the minibatch's mean and unbiased std (as torch.std) over all ranks' minibatches
                          concatenated: one all_reduce of (count, sum, sum of squares)
    global_mean           the approximate KL averaged over the ranks, so --target-kl stops the epochs on every
                          rank at once (a rank-local KL lets ranks leave the loop at different minibatches, and
                          the next all_reduce waits forever)
    rank_max              all_reduce MAX of a flag: a signal, a non-finite observation or reward on any rank (one
                          flag per rollout), the tuner's stop request
    all_ranks             all_gather_object: every rank's random generators and environment state for a checkpoint
Gradients travel in float32 and the mean is taken as sum / world size; gloo is the CPU backend, nccl the GPU one
(--cuda, one GPU per local rank).

Logging: rank 0 alone writes (the run directory, TensorBoard, W&B, progress lines, checkpoints); its logged episode
returns are rank 0's own episodes, the losses are rank 0's last minibatch's (approx_kl is the all-rank mean), SPS
counts the steps of all ranks. Rank 0 evaluates at the end, and every rank returns rank 0's result.

Long runs, as in ppo.py, over all ranks: a checkpoint (written by rank 0) holds the networks, the optimiser, the
counters, the schedule origin, the world size and every rank's random generators and environment state; with
--resume every rank reads the same file (several nodes need a path all of them see) and takes its own rank's part;
another world size is refused. SIGINT/SIGTERM: torchrun forwards the signal to its workers (each in a session of
its own, so a Ctrl-C reaches them once, through torchrun); the ranks agree at the update boundary (rank_max),
rank 0 writes the checkpoint and prints a torchrun command that resumes it, and every rank exits 128 + signal.
torchrun itself then exits 1 after printing its own SignalException traceback (that is torchrun's behaviour, not
the file's); it waits --shutdown-timeout seconds (30 by default) for its workers before killing them, so a rollout
plus update must fit in that time. A non-finite observation, reward, loss or gradient norm on any rank stops every
rank (exit 3), rank 0 keeping the last finite state in runs/<run>/<exp_name>_last_finite.pt.
"""

from __future__ import annotations

import dataclasses
import gc
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
import torch.distributed as dist
import torch.nn as nn
import tyro


@dataclass
class Args:
    exp_name: str = "ppo_distributed"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small MLPs are faster on the CPU); each rank on GPU LOCAL_RANK"""
    backend: str | None = None
    """the torch.distributed backend: gloo (CPU) or nccl (GPU, with --cuda); by default nccl with --cuda, else gloo"""
    torch_threads: int = 1
    """torch CPU threads (1 suits small networks)"""
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
    async_envs: bool = False
    """if toggled, step the environments in parallel worker processes (gym.vector.AsyncVectorEnv); the same results as the default SyncVectorEnv for the same seed"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (discrete actions, flat observations)"""
    total_timesteps: int = 100_000
    """total environment steps, summed over the parallel environments of all ranks"""
    learning_rate: float = 1e-3
    """the Adam learning rate"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0 over training"""
    num_envs: int = 8
    """the number of parallel environments of each rank"""
    num_steps: int = 64
    """steps per environment in each rollout (a rank's rollout size = num_envs * num_steps)"""
    gamma: float = 0.98
    """the discount factor"""
    gae_lambda: float = 0.8
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 2
    """the number of minibatches each rollout is split into"""
    update_epochs: int = 10
    """the number of passes over each rollout"""
    norm_adv: bool = True
    """if toggled, normalise advantages within each minibatch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient epsilon"""
    anneal_clip: bool = True
    """if toggled, the clipping coefficient decays linearly to 0 like the learning rate (rl-zoo3 lin_0.2)"""
    clip_vloss: bool = False
    """if toggled, clip the value update around the old value, with the same epsilon"""
    ent_coef: float = 0.0
    """the entropy bonus coefficient"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 0.5
    """the maximum norm of the gradient (global clipping)"""
    target_kl: float | None = None
    """if set, stop a rollout's epochs once a minibatch's approximate KL exceeds 1.5 x target_kl"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic (argmax) evaluation"""
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
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes",
                 "hidden_size", "torch_threads", "log_every"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if (args.num_envs * args.num_steps) % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide the rollout size num_envs * num_steps "
             f"= {args.num_envs * args.num_steps}")
    if not 0 < args.learning_rate < math.inf or not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        fail("need 0 < --learning-rate < inf, 0 < --gamma <= 1 and 0 <= --gae-lambda <= 1")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    for name, value, low in (("clip-coef", args.clip_coef, 0), ("ent-coef", args.ent_coef, 0), ("vf-coef", args.vf_coef, 0)):
        if not low <= value < math.inf:
            fail(f"--{name} must be a finite number >= {low}, got {value}")
    if not args.max_grad_norm > 0 or (args.target_kl is not None and not 0 < args.target_kl < math.inf):
        fail(f"need --max-grad-norm > 0 and --target-kl > 0 (finite), got {args.max_grad_norm} and {args.target_kl}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or Acrobot-v1")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"ppo_distributed.py needs a Discrete action space, {args.env_id} has {action_space}; "
             "use a discrete environment such as CartPole-v1 (continuous actions: ppo_continuous_action.py)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"ppo_distributed.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as CartPole-v1 (images: ppo_atari.py)")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    if args.backend not in (None, "gloo", "nccl"):
        fail(f"--backend must be gloo (CPU) or nccl (GPU), got {args.backend}")
    if args.backend == "nccl" and not (args.cuda and torch.cuda.is_available()):
        fail("--backend nccl runs on GPUs: it needs --cuda and a CUDA device; on the CPU use --backend gloo")
    if args.cuda and torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", 0)) >= torch.cuda.device_count():
        fail(f"--cuda puts each rank on the GPU numbered LOCAL_RANK, and this node has {torch.cuda.device_count()}: "
             "start at most that many processes per node (--nproc-per-node)")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def in_worker(thunk):
    """An environment thunk for AsyncVectorEnv's worker processes: they ignore SIGINT and SIGTERM (Ctrl-C reaches the
    whole process group); the main process stops them."""

    def worker_thunk():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return thunk()

    return worker_thunk


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weights, constant bias: the initialisation of the PPO implementations (and SB3)."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs (no shared trunk), as in the paper's continuous-control setup."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_size: int = 64):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            # a small last layer starts the policy near uniform
            layer_init(nn.Linear(hidden_size, n_actions), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    @torch.no_grad()
    def sample_action(self, x: torch.Tensor) -> torch.Tensor:
        """Sample a ~ pi(.|x): all the rollout needs per step (see the module docstring)."""
        return torch.multinomial(torch.softmax(self.actor(x), dim=-1), 1).squeeze(-1)

    def evaluate_actions(self, x: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (log pi(action|x), entropy of pi(.|x), V(x)) for the update.

        The categorical distribution is written out with log_softmax instead of
        torch.distributions.Categorical: the same numbers, without its per-call argument checks.
        """
        logp_all = torch.log_softmax(self.actor(x), dim=-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy, self.get_value(x)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable action, for the deterministic evaluation."""
        return self.actor(x).argmax(-1)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminations: torch.Tensor,
    truncations: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, N] rollout; returns (advantages, returns).

    next_values[t] is the value of the observation that followed step t: V(s_{t+1}) inside an episode,
    V(final observation) where the episode was truncated at t (anything where it terminated: it is
    multiplied by 0). The recursion stops at every episode end, terminated or truncated.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    not_term = 1.0 - terminations.to(rewards.dtype)
    not_done = 1.0 - torch.maximum(terminations, truncations).to(rewards.dtype)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * not_term[t] - values[t]
        last = delta + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    new_logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    new_value: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float,
    clip_vloss: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate (paper eq. 7) and value loss; returns (policy_loss, value_loss, log ratio)."""
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
    if clip_vloss:
        v_clipped = old_value + torch.clamp(new_value - old_value, -clip_coef, clip_coef)
        v_loss = torch.max((new_value - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = ((new_value - returns) ** 2).mean()
    return pg_loss, v_loss, logratio


@torch.no_grad()
def approx_kl(logratio: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi) by the low-variance estimator E[(rho - 1) - log rho] (Schulman, "Approximating KL")."""
    return (logratio.exp() - 1 - logratio).mean()


# ---- Data parallelism: the collectives (see the module docstring); without a process group each is a no-op ----


def broadcast(tensor: torch.Tensor) -> None:
    """Overwrite `tensor` with rank 0's."""
    if dist.is_initialized():
        dist.broadcast(tensor, src=0)


def average_gradients(params: list[nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Replace each gradient by its mean over the ranks; returns the loss averaged likewise. One flattened bucket,
    one all_reduce: one call per parameter would cost a round trip each. The loss rides in the bucket so that a
    non-finite loss on one rank is non-finite on all, and every rank takes the same exit."""
    if not dist.is_initialized():
        return loss.detach()
    grads = [p.grad for p in params]
    bucket = torch.cat([*(g.reshape(-1) for g in grads), loss.detach().reshape(1)])
    dist.all_reduce(bucket)
    bucket /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(bucket[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return bucket[-1]


def normalize_advantages(adv: torch.Tensor) -> torch.Tensor:
    """(A - mean) / (std + 1e-8), the mean and the unbiased std (as torch.std) being those of the concatenation of
    every rank's minibatch: each rank adds its count, sum and sum of squares (in float64, against cancellation)."""
    if not dist.is_initialized():
        return (adv - adv.mean()) / (adv.std() + 1e-8)
    stats = torch.stack([adv.new_tensor(adv.numel()), adv.sum(), adv.square().sum()]).double()
    dist.all_reduce(stats)
    count, total, squares = stats
    mean = total / count
    std = ((squares - count * mean * mean) / (count - 1)).clamp_min(0).sqrt()
    return ((adv - mean) / (std + 1e-8)).to(adv.dtype)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks (every rank's minibatch has one size: the mean over all samples)."""
    if not dist.is_initialized():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def rank_max(value: int, device: torch.device) -> int:
    """The largest of the ranks' values: a flag that any rank raises reaches every rank."""
    if not dist.is_initialized():
        return value
    flag = torch.tensor(value, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag)


def all_ranks(obj) -> list:
    """Every rank's `obj` (anything picklable), in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def close_group() -> None:
    """Leave the process group once every rank is here. gc.collect() then frees the group while the interpreter is
    alive: left to the interpreter's exit, gloo's threads were seen to abort the process now and then (SIGABRT,
    "terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def leave(code: int, last_words: Callable[[], None] | None = None) -> None:
    """Exit every rank together: wait until all are here (rank 0 has written its file: torchrun stops the other
    workers as soon as one exits), leave the process group, run `last_words` (rank 0's message), exit `code`."""
    close_group()
    if last_words is not None:
        last_words()
    sys.exit(code)


def launch_command(command: str) -> str:
    """A `python algorithms/...` command line as this run was launched: unchanged without torchrun, else the
    torchrun line with this job's shape (several nodes: $NODE_RANK, $RDZV_ENDPOINT and $RDZV_ID are each node's)."""
    if "LOCAL_WORLD_SIZE" not in os.environ:
        return command
    local, nodes = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"])
    launcher = (f"torchrun --standalone --nproc-per-node={local}" if nodes == 1 else
                f"torchrun --nnodes={nodes} --node-rank=$NODE_RANK --nproc-per-node={local} --rdzv-backend=c10d "
                "--rdzv-endpoint=$RDZV_ENDPOINT --rdzv-id=$RDZV_ID")
    return f"{launcher} {command.removeprefix('python ')}"


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


def load_model(path: str) -> tuple[Agent, dict]:
    """The trained Agent of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "ppo_distributed")
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
    # report: called on rank 0 at every progress line with (step, mean of rank 0's last 20 training returns);
    # returning True ends training on every rank (the run is then evaluated and returned as usual).
    check_args(args)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    batch_size = args.num_envs * args.num_steps  # this rank's rollout; the global one is world_size times larger
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = -(-args.total_timesteps // (batch_size * world_size))  # ceil: at least total_timesteps steps
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    seed = args.seed + rank * args.num_envs  # the vector env seeds its environments seed, seed + 1, ...
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() and args.cuda else "cpu")

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first
    # observation and puts the last one in info["final_obs"] (needed to bootstrap truncations).
    # --async-envs: each environment steps in a worker process that ignores signals (in_worker); same results.
    thunks = [make_env(args.env_id, i, args.capture_video and rank == 0, run_name) for i in range(args.num_envs)]
    vector_env = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = vector_env([in_worker(t) for t in thunks] if args.async_envs else thunks,
                      autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    obs_shape = envs.single_observation_space.shape
    n_actions = int(envs.single_action_space.n)

    model_args = {"obs_dim": obs_shape[0], "n_actions": n_actions, "hidden_size": args.hidden_size}
    agent = Agent(**model_args).to(device)
    # fused=True: one kernel updates all parameters at once; the default loops over a dozen small tensors,
    # which for networks this small costs more than the forward and backward passes
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    generators = {"action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back (schedules run in iterations here).
    global_step, iteration, origin = 0, 0, (0, 0.0)
    next_obs, _ = envs.reset(seed=seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "ppo_distributed")
        check_resume(ckpt, args, model_args)
        if ckpt["world_size"] != world_size:
            fail(f"--resume {args.resume} was written by {ckpt['world_size']} ranks, here {world_size}; "
                 f"resume with --nproc-per-node x --nnodes = {ckpt['world_size']}") if rank == 0 else sys.exit(2)
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, iteration, origin = ckpt["global_step"], ckpt["iteration"], tuple(ckpt["schedule_origin"])
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (iteration, progress(iteration, -(-ckpt["args"]["total_timesteps"] // (batch_size * world_size)), origin))
            if rank == 0:
                print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                      f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"][rank], generators)  # each rank takes its own generators and environments
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        next_obs = set_env_state(envs, ckpt["envs"][rank], seed=seed + global_step)
        if rank == 0:
            print(f"resumed from {args.resume} at step {global_step:,}", flush=True)
    if "WORLD_SIZE" in os.environ:  # torchrun: join the other ranks (after env workers fork; python: no group)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(args.backend or ("nccl" if device.type == "cuda" else "gloo"))
    for tensor in agent.state_dict().values():  # every rank starts from rank 0's parameters
        broadcast(tensor)

    def checkpoint(with_envs: bool = True) -> dict:  # every rank calls it: it gathers their generators and envs
        return {"algo": "ppo_distributed", "env_id": args.env_id, "model_args": model_args,
                "model": agent.state_dict(), "args": asdict(args), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "iteration": iteration, "schedule_origin": origin,
                "world_size": world_size, "rng": all_ranks(rng_state(generators)),
                "envs": all_ranks(env_state(envs, next_obs) if with_envs else {"resumable": False})}

    def fault(quantity: str, step: int) -> None:  # the networks are still finite: the check runs before they change
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        state = checkpoint(with_envs=False)
        envs.close()
        if rank == 0:
            save_checkpoint(path, state)
            close_logs(writer, args.track)
        leave(3, (lambda: numerical_fault(quantity, step, path)) if rank == 0 else None)

    run_dir = None
    if rank == 0:
        try:
            run_dir = make_run_dir(run_name)
        except SystemExit:
            rank_max(1, device)  # tell the others: every rank exits 2
            close_group()
            raise
    if rank_max(0, device):
        leave(2)
    writer = None
    if rank == 0 and args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir)
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

    # Rollout storage, [num_steps, num_envs, ...], in numpy: the environments speak numpy, and the
    # whole rollout is moved to torch once per iteration instead of once per step.
    obs = np.zeros((args.num_steps, args.num_envs, *obs_shape), dtype=np.float32)
    succ_obs = np.zeros_like(obs)  # the observation that followed each step (the final one at episode ends)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int64)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    terminations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    truncations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()

    while iteration < num_iterations:
        iteration += 1
        frac = 1.0 - progress(iteration - 1, num_iterations, origin)
        lr_now = frac * args.learning_rate if args.anneal_lr else args.learning_rate
        optimizer.param_groups[0]["lr"] = lr_now
        clip_now = frac * args.clip_coef if args.anneal_clip else args.clip_coef

        # Collect the rollout: only the actor runs per step (see the module docstring).
        bad = ""
        for step in range(args.num_steps):
            global_step += args.num_envs * world_size
            obs[step] = next_obs
            action = agent.sample_action(torch.as_tensor(next_obs, dtype=torch.float32, device=device)).cpu().numpy()
            actions[step] = action
            next_obs, rewards[step], terminations[step], truncations[step], infos = envs.step(action)
            if args.nan_check and (bad := nonfinite_step(next_obs, rewards[step], infos)):
                break  # all ranks hear of it after the rollout
            succ_obs[step] = next_obs
            if "final_obs" in infos:
                for i in np.flatnonzero(infos["_final_obs"]):
                    succ_obs[step, i] = infos["final_obs"][i]  # the last observation, not the reset one
            if "episode" in infos and rank == 0:  # rank 0's episodes are the ones logged
                for i in np.flatnonzero(infos["_episode"]):
                    ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                    recent_returns.append(ep_r)
                    writer.add_scalar("charts/episodic_return", ep_r, global_step)
                    writer.add_scalar("charts/episodic_length", ep_l, global_step)
        if args.nan_check and rank_max(int(bool(bad)), device):  # one flag per rollout: a fault on any rank stops all
            global_step, bad = min((s, q) for q, s in all_ranks((bad, global_step)) if q)
            fault(bad, global_step)

        # One batched pass: log pi_old(a|s), V(s) and V(s') of the whole rollout.
        b_obs = torch.as_tensor(obs.reshape(-1, *obs_shape), device=device)
        b_actions = torch.as_tensor(actions.reshape(-1), device=device)
        with torch.no_grad():
            b_logprobs, _, b_values = agent.evaluate_actions(b_obs, b_actions)
            b_next_values = agent.get_value(torch.as_tensor(succ_obs.reshape(-1, *obs_shape), device=device))
        advantages, returns = compute_gae(
            torch.as_tensor(rewards, device=device), b_values.view(args.num_steps, args.num_envs),
            b_next_values.view(args.num_steps, args.num_envs), torch.as_tensor(terminations, device=device),
            torch.as_tensor(truncations, device=device), args.gamma, args.gae_lambda,
        )
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)

        stop_epochs = False
        for _epoch in range(args.update_epochs):
            perm = torch.randperm(batch_size, device=device)
            for start in range(0, batch_size, minibatch_size):
                mb = perm[start : start + minibatch_size]
                new_logprob, entropy, new_value = agent.evaluate_actions(b_obs[mb], b_actions[mb])
                mb_adv = b_advantages[mb]
                if args.norm_adv and len(mb) * world_size > 1:
                    mb_adv = normalize_advantages(mb_adv)
                pg_loss, v_loss, logratio = ppo_loss(
                    new_logprob, b_logprobs[mb], mb_adv, new_value, b_values[mb], b_returns[mb], clip_now, args.clip_vloss
                )
                if args.target_kl is not None and global_mean(approx_kl(logratio)) > 1.5 * args.target_kl:
                    stop_epochs = True  # as SB3: skip this update and end the rollout's epochs, on every rank
                    break
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                mean_loss = average_gradients(list(agent.parameters()), loss)  # before clipping: every rank steps alike
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
                # one host sync per minibatch; before optimizer.step(), so the networks stay finite
                if args.nan_check and not math.isfinite(mean_loss + grad_norm):
                    fault("loss" if not torch.isfinite(mean_loss) else "gradient norm", global_step)
                optimizer.step()
            if stop_epochs:
                break

        # Logging once per rollout, from rank 0's last minibatch: the only host syncs of the iteration.
        var_y = b_returns.var()
        explained_var = float("nan") if var_y == 0 else float(1 - (b_returns - b_values).var() / var_y)
        sps = int((global_step - start_step) / (time.time() - start_time))  # all ranks' steps
        stats = {
            "charts/learning_rate": lr_now,
            "losses/value_loss": v_loss.item(),
            "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy.mean().item(),
            "losses/approx_kl": global_mean(approx_kl(logratio)).item(),
            "losses/clipfrac": ((logratio.exp() - 1.0).abs() > clip_now).float().mean().item(),
            "losses/explained_variance": explained_var,
            "charts/SPS": sps,
        }
        if rank == 0:
            for key, val in stats.items():
                writer.add_scalar(key, val, global_step)
        if global_step >= next_log or iteration == num_iterations:
            next_log = (global_step // args.log_every + 1) * args.log_every
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            if rank == 0:
                print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
            asked = rank == 0 and report is not None and recent_returns and report(global_step, float(np.mean(recent_returns)))
            if rank_max(int(bool(asked)), device):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
        signum = rank_max(stop.signum, device)  # a signal to any rank stops all of them at this same iteration
        if signum or (args.checkpoint_every and global_step >= next_checkpoint):
            next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
            state = checkpoint()
            path = write_checkpoint(run_dir, state, written, args.keep_checkpoints) if rank == 0 else ""
            if signum:
                envs.close()
                if rank == 0:
                    close_logs(writer, args.track)
                    print(f"stopped by {signal.Signals(signum).name} at step {global_step:,}; resume with: "
                          f"{launch_command(resume_command(args, path))}", file=sys.stderr, flush=True)
                leave(128 + signum)
    stop.restore()

    train_time = time.time() - start_time
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        state = checkpoint()
        if rank == 0:
            save_checkpoint(model_path, state)
    envs.close()

    if rank != 0:  # rank 0 evaluates; every rank returns its result
        result = all_ranks(None)[0]
        close_group()
        return result

    eval_returns = evaluate(agent, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}")
    close_logs(writer, args.track)
    result = {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }
    all_ranks(result)
    close_group()
    return result

if __name__ == "__main__":
    main(tyro.cli(Args))
