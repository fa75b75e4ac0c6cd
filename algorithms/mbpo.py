"""Model-Based Policy Optimization (MBPO): SAC trained mostly on short branched rollouts of a learned ensemble.

Paper: Janner, Fu, Zhang, Levine (2019), "When to Trust Your Model: Model-Based Policy Optimization",
https://arxiv.org/abs/1906.08253. Settings follow the paper's appendix C and mbrl-lib's MBPO (Pineda et al. 2021,
https://arxiv.org/abs/2104.10159). The agent, the replay, the loop and the checkpoints are those of sac.py; the
probabilistic ensemble (its layers, log-variance bounds and losses) is world_model.py's.

Run:
    python algorithms/mbpo.py                                   # InvertedPendulum-v5, 10k steps
    python algorithms/mbpo.py --env-id Hopper-v5 --total-timesteps 30000 --rollout-schedule 20000 100000 1 15
    python algorithms/mbpo.py --real-ratio 1.0                  # no model data: sac.py with --updates-per-step updates
    python algorithms/mbpo.py --save-model --save-buffer        # the final state, which can resume
    python algorithms/mbpo.py --help

The loop, after --learning-starts steps of uniformly random actions, at every environment step:
    1. act in the environment with the current SAC policy; store (s, a, r, s', terminated) in the real buffer D_env;
    2. every --model-train-frequency steps: train the ensemble on D_env (a held-out validation split, early
       stopping), pick the elites (the members with the lowest validation loss), then branch rollouts: from
       --rollout-batch-size states drawn from D_env, k steps under the current policy through the model, each
       step through an elite drawn at random per sample; push them into the model buffer D_model;
    3. --updates-per-step SAC updates on batches of which a fraction --real-ratio comes from D_env, the rest
       from D_model.
The math, as written in the code below (E members f_e, the inputs normalised by the running statistics of every
(s, a) seen):
    dynamics      s' - s ~ N(mu_e(s, a), diag(exp(logvar_e(s, a)))),  r ~ r_e(s, a),  P(end | s') = sigmoid(c_e(s'))
    model loss    NLL = mean over members and batch of sum_i 1/2 [ log 2 pi + logvar_i + (d_i - mu_i)^2 / exp(logvar_i) ]
                  with d = s' - s;  + mean (r_e - r)^2 + BCE(c_e(s'), terminated) + 0.01 * (sum max_lv - sum min_lv)
                  (world_model.py's model_losses with beta = 0: the paper's NLL, where world_model.py defaults to
                  beta-NLL); each member sees the training split in its own random order
    validation    L_e = mean over the held-out split of mean_i (mu_e - d)_i^2 and (r_e - r)^2 (the mean's squared error,
                  as mbrl-lib scores members); training stops after --model-patience epochs in which no member's
                  L_e fell by more than 1% (or after --model-max-epochs); elites = the --num-elites lowest L_e
    rollout       s_0 ~ D_env;  a_t ~ pi(.|s_t);  e ~ Uniform(elites) per sample and step;
                  s_{t+1} = s_t + mu_e + exp(logvar_e / 2) * eps,  eps ~ N(0, I);  r_t = r_e(s_t, a_t);
                  terminated_t ~ Bernoulli(sigmoid(c_e(s_{t+1}))): an end is stored and ends its branch; a transition
                  whose s_{t+1} or r_t is not finite is dropped and ends its branch
    length        k(step) = int( x + clip((step - a) / (b - a), 0, 1) * (y - x) )  for --rollout-schedule a b x y
                  (the paper's [a, b, x, y], here in environment steps rather than epochs)
    model buffer  capacity = --model-retain-epochs * --rollout-batch-size * k: about that many rollout generations
                  (resized, the newest kept, when k changes)
    SAC batch     round(batch_size * real_ratio) rows from D_env, the rest from D_model (all from D_env while D_model
                  is empty)
    SAC           (Haarnoja et al. 2018; Q_1, Q_2 twin critics, Q' their Polyak targets, alpha = exp(log_alpha))
                  a = scale * tanh(u) + bias,  u = mu(s) + sigma(s) * eps,  eps ~ N(0, I)
                  log pi(a|s) = sum_i [ log N(u_i; mu_i, sigma_i) - log(1 - tanh(u_i)^2) - log(scale_i) ]
                  y = r + gamma * (1 - terminated) * ( min(Q'_1, Q'_2)(s', a') - alpha * log pi(a'|s') ),  a' ~ pi(.|s')
                  J_Q = 1/2 * sum_j mean( (Q_j(s, a) - y)^2 );  J_pi = mean( alpha * log pi(a~|s) - min(Q_1, Q_2)(s, a~) )
                  J_alpha = -mean( alpha * (log pi(a~|s) + target_entropy) ),  target_entropy = -|A|;
                  theta' <- tau * theta + (1 - tau) * theta' after every update

Defaults are the paper's code's InvertedPendulum settings and mbrl-lib's (ensemble of 7 with 5 elites,
validation ratio 0.2, patience 5, model lr 1e-3 and weight decay 5e-5, model batch 256, a model trained every
250 steps, rollouts of length 1 (the schedule [1, 15, 1, 1] in epochs of 250 steps), 10 SAC updates per
environment step, the real ratio 0.05), except 500 random warm-up steps (the paper: 5000) and, where 2 CPU
cores need smaller ones, rollouts from 10,000 states every 250 steps (the paper: 100,000), at most 20 model
epochs per training, members of 64-64-64 (world_model.py's; the paper: four layers of 200), and SAC's networks
64-64 (sac.py and the paper: 256-256, whose update costs several times a 64-64 one on a CPU, and this file
makes ten per step). SAC is otherwise sac.py's (learned temperature with target entropy -|A|, target networks,
batch 256). The termination is a learned classifier (world_model.py's), where the paper's code and mbrl-lib
are given the environment's termination function: the file needs nothing but the environment. A rollout
samples the classifier's termination (P(end) = sigmoid(c)) as it samples the next state, rather than
thresholding it at 1/2 (benchmark_results/mbpo.md compares the two). The members are not restored to their
best validation epoch after early stopping (the paper's code does): the elites are picked by the validation
loss of the final weights.
Tested: seed 1 evaluates at 1000 on InvertedPendulum-v5 after 10k steps (tests/test_mbpo.py, slow).
Results: benchmark_results/mbpo.md

Time limits: only `terminated` is stored as a transition's end and trains the termination classifier; an episode cut
by a time limit is stored with its real last observation (info["final_obs"], Gymnasium's same-step autoreset mode) and
terminated=0, so its target bootstraps. Every count (learning_starts, model_train_frequency, log_every,
total_timesteps, the rollout schedule) is in environment steps summed over the --num-envs environments, and each
environment step brings --updates-per-step SAC updates.

Long runs (the same form in every deep file of the collection):
    python algorithms/mbpo.py --checkpoint-every 2000 --save-buffer   # runs/<run>/checkpoint_<step>.pt, newest 2 kept
    python algorithms/mbpo.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the actor (under "model", what `evaluate` needs), the twin critic, its target, log_alpha, the
ensemble with its input statistics, the elites, the four Adam states, the step counters (next_train,
next_model_train), the last model losses, every random generator's state (Python's, numpy's, torch's, which samples
the actions, the model's noise, the elites drawn and the model's data order, the two buffers' samplers, the action
space's) and the environments' own state; with --save-buffer also the real and the model buffer. So, with
--save-buffer, a resumed run ends with the same parameters as one never interrupted (classic-control environments
such as Pendulum-v1 only; with any other the resumed run starts new episodes). Without the buffers, the model trains
again once the real buffer holds --batch-size transitions, and SAC learns from real data until the next rollouts.
Ctrl-C or SIGTERM stops the run after the current step's updates, writes a checkpoint and exits with status 130 / 143,
printing the command that resumes it; a second signal quits at once. A NaN or infinite observation, reward, model
loss, critic loss, actor loss or temperature loss stops the run at once (exit 3) and keeps the last finite state in
runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks (non-finite model predictions are always kept
out of the model buffer).
"""

from __future__ import annotations

import copy
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
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "mbpo"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
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
    capture_video: bool = False
    """if toggled, record videos of the first environment into videos/{run_name}"""
    save_model: bool = False
    """if toggled, save the model and training state to runs/{run_name}/{exp_name}.pt"""
    save_buffer: bool = False
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the real and the model buffer (they can be large: the size is printed)"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward or loss stops the run (exit 3)"""

    env_id: str = "InvertedPendulum-v5"
    """the Gymnasium id of the environment (bounded Box actions, flat Box observations)"""
    total_timesteps: int = 10_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments"""
    buffer_size: int = 1_000_000
    """the real replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: theta' <- tau * theta + (1 - tau) * theta'"""
    batch_size: int = 256
    """transitions per SAC gradient step (real and model ones together)"""
    learning_starts: int = 500
    """environment steps of uniformly random actions before the model and SAC learn (the paper: 5000)"""
    policy_lr: float = 3e-4
    """the actor's Adam learning rate"""
    q_lr: float = 3e-4
    """the critics' Adam learning rate"""
    alpha_lr: float = 3e-4
    """the temperature's Adam learning rate"""
    updates_per_step: int = 10
    """SAC gradient steps per environment step (the paper: 20 on the locomotion tasks, 10 on InvertedPendulum)"""
    alpha: float = 0.2
    """the entropy temperature when --no-autotune (with --autotune: its initial value is 1, as SB3)"""
    autotune: bool = True
    """if toggled, learn the temperature so that the policy's entropy tracks -|A|"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """widths of the ReLU hidden layers of the actor and of each critic (sac.py and the paper: 256-256)"""
    real_ratio: float = 0.05
    """the fraction of each SAC batch drawn from the real buffer, the rest from the model buffer (the paper: 0.05)"""

    model_train_frequency: int = 250
    """environment steps between trainings of the ensemble, each followed by a rollout phase (the paper: 250)"""
    ensemble_size: int = 7
    """networks in the ensemble (the paper: 7)"""
    num_elites: int = 5
    """the members with the lowest validation loss, through which the rollouts go (the paper: 5)"""
    model_hidden_sizes: tuple[int, ...] = (64, 64, 64)
    """widths of each member's SiLU hidden layers (the paper: four of 200; world_model.py: 64-64-64)"""
    model_lr: float = 1e-3
    """the ensemble's Adam learning rate"""
    model_weight_decay: float = 5e-5
    """Adam's L2 weight decay on the ensemble (mbrl-lib's InvertedPendulum setting)"""
    model_batch_size: int = 256
    """transitions per ensemble member per model gradient step"""
    validation_ratio: float = 0.2
    """the fraction of the real buffer held out to score the members (early stopping, elites)"""
    model_max_epochs: int = 20
    """at most this many passes over the training split per model training"""
    model_patience: int = 5
    """stop training the model after this many epochs in which no member's validation loss fell by more than 1%"""
    rollout_batch_size: int = 10_000
    """branched rollouts started in each rollout phase, from states of the real buffer (mbrl-lib: 100,000)"""
    rollout_schedule: tuple[int, int, int, int] = (250, 3750, 1, 1)
    """MIN_STEP MAX_STEP MIN_LEN MAX_LEN: the rollout length grows linearly from MIN_LEN at MIN_STEP to MAX_LEN at MAX_STEP (environment steps)"""
    model_retain_epochs: int = 5
    """the model buffer holds about this many rollout phases' transitions"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation"""
    log_every: int = 1_000
    """write the losses and SPS, and print a progress line, every this many environment steps"""


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
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "updates_per_step", "eval_episodes",
                 "log_every", "torch_threads", "model_train_frequency", "ensemble_size", "num_elites",
                 "model_batch_size", "model_max_epochs", "model_patience", "rollout_batch_size", "model_retain_epochs"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not args.learning_starts >= 0 or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not all(0 < x < math.inf for x in (args.policy_lr, args.q_lr, args.alpha_lr)) or not 0 <= args.alpha < math.inf:
        fail("need finite positive --policy-lr, --q-lr, --alpha-lr and 0 <= --alpha < inf")
    if not 0 < args.model_lr < math.inf or not 0 <= args.model_weight_decay < math.inf:
        fail(f"need a finite positive --model-lr and a finite --model-weight-decay >= 0, got {args.model_lr} and "
             f"{args.model_weight_decay}")
    if not 0 <= args.real_ratio <= 1:
        fail(f"--real-ratio is the fraction of each batch from the real buffer: it must be in [0, 1], got {args.real_ratio}")
    if not 0 < args.validation_ratio < 1:
        fail(f"--validation-ratio must be in (0, 1), got {args.validation_ratio}")
    if args.num_elites > args.ensemble_size:
        fail(f"--num-elites ({args.num_elites}) cannot exceed --ensemble-size ({args.ensemble_size})")
    min_step, max_step, min_len, max_len = args.rollout_schedule
    if not 0 <= min_step < max_step or not 1 <= min_len <= max_len:
        fail(f"--rollout-schedule MIN_STEP MAX_STEP MIN_LEN MAX_LEN needs 0 <= MIN_STEP < MAX_STEP and "
             f"1 <= MIN_LEN <= MAX_LEN, got {' '.join(map(str, args.rollout_schedule))}")
    for name in ("hidden_sizes", "model_hidden_sizes"):
        if not getattr(args, name) or not min(getattr(args, name)) > 0:
            fail(f"--{name.replace('_', '-')} must be positive widths, got {getattr(args, name)}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    check_env(args.env_id)
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def check_env(env_id: str) -> None:
    """The environment exists and has bounded Box actions and flat Box observations."""
    try:
        env_spec(env_id)
    except gym.error.Error as error:
        fail(f"--env-id {env_id} is not a registered Gymnasium environment ({error}); try Pendulum-v1 or HalfCheetah-v5")
    try:
        probe = gym.make(env_id)
    except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency (mujoco, box2d)
        fail(f"--env-id {env_id} cannot be created: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        fail(f"--env-id {env_id} has {action_space} actions; this algorithm needs a flat Box (continuous) action "
             "space, e.g. Pendulum-v1 (discrete actions: dqn.py, ppo.py)")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        fail(f"--env-id {env_id} has unbounded actions {action_space}; tanh needs finite bounds to scale to")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--env-id {env_id} has {obs_space} observations; this algorithm needs a flat Box observation, "
             "e.g. Pendulum-v1")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's and the authors' clipping of the policy's log standard deviation


class Actor(nn.Module):
    """The squashed Gaussian policy: u ~ N(mean(s), sigma(s)^2), a = action_scale * tanh(u) + action_bias."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], action_low, action_high):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden_sizes)  # the mean and the log standard deviation of u
        # buffers, not parameters: saved in the state_dict (evaluation needs them), never trained
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)
        # everything in log pi(a|s) that does not depend on s (see sample), derived from the bounds, so not saved
        log_prob_const = torch.log(self.action_scale).sum() + act_dim * (0.5 * math.log(2 * math.pi) + 2.0 * math.log(2.0))
        self.register_buffer("log_prob_const", log_prob_const, persistent=False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in [low, high] and its log-probability.

        The log-probability is squashed_gaussian_log_prob(u, mean, log_std, action_scale) (the tests check they
        agree), regrouped to take fewer operations in this hot path: u - mean = sigma * eps, so
        log N(u; mean, sigma) = -eps^2 / 2 - log sigma - log(2 pi) / 2, and
        -log(1 - tanh(u)^2) = 2 * (u + softplus(-2u)) - 2 log 2; the terms without s are in log_prob_const.
        """
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        log_pi = (2.0 * (u + F.softplus(-2.0 * u)) - 0.5 * eps.square() - log_std).sum(-1) - self.log_prob_const
        return torch.addcmul(self.action_bias, self.action_scale, torch.tanh(u)), log_pi

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """A sampled action, as sample() draws it, without its log-probability (for acting in the environment)."""
        mean, log_std = self(obs)
        return torch.addcmul(self.action_bias, self.action_scale, torch.tanh(mean + log_std.exp() * torch.randn_like(mean)))

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The squashed mean, scale * tanh(mean(s)) + bias, in the environment's units (what evaluation plays)."""
        return self.action_scale * torch.tanh(self(obs)[0]) + self.action_bias


class BatchedTwinQCritic(nn.Module):
    """Two critics Q_j(s, a), j = 1, 2, stored as one stack of weights [2, in, out] per layer.

    One batched matrix product per layer evaluates both critics: the arithmetic of two separate MLPs (td3.py's
    TwinQCritic), in half the operator calls. Initialised like nn.Linear (uniform in +-1/sqrt(fan_in)).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden_sizes, 1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(2, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(2, 1, n_out).uniform_(-bound, bound)))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """Returns [2, B]: row j is Q_j(s, a). detach_params: gradients flow to the actions only."""
        h = torch.cat([obs, actions], dim=1).expand(2, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_params:
                w, b = w.detach(), b.detach()
            if i < last:
                h = F.relu(torch.baddbmm(b, h, w))
            else:
                # The output layer has one unit: a dot product. Written as multiply-and-sum because a matrix
                # product with an inner dimension of 1, which its backward pass would need, takes the CPU
                # BLAS's slow path.
                h = (h * w.transpose(1, 2)).sum(-1) + b.squeeze(-1)
        return h


class ReplayBuffer:
    """A ring buffer of transitions in preallocated numpy arrays; uniform sampling."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminations")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)  # in the environment's units
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, next_obs, actions, rewards, terminations) -> None:
        """Add one vector step: a transition per environment."""
        for i in range(len(actions)):
            j = self.pos
            self.obs[j], self.next_obs[j], self.actions[j] = obs[i], next_obs[i], actions[i]
            self.rewards[j], self.terminations[j] = rewards[i], terminations[i]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """A batch (obs, actions, rewards, next_obs, terminations), drawn uniformly with replacement."""
        idx = self.rng.integers(0, self.size, size=batch_size)
        return tuple(torch.from_numpy(getattr(self, f)[idx]) for f in self.FIELDS)

    def state_dict(self) -> dict:
        """The stored part only (the first `size` rows), as tensors so torch.load(weights_only=True) reads it."""
        return {"pos": self.pos, "size": self.size,
                **{f: torch.from_numpy(getattr(self, f)[: self.size].copy()) for f in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        for f in self.FIELDS:
            getattr(self, f)[: state["size"]] = state[f].numpy()
        self.size, self.pos = state["size"], state["pos"] % self.capacity


class EnsembleModel(nn.Module):
    """E networks f_e(s, a) -> (mu_e, logvar_e, r_e) and E termination classifiers c_e(s'), each kind stored as one
    stack of weights [E, in, out] per layer.

    One batched matrix product per layer evaluates every member (as sac.py's BatchedTwinQCritic); initialised like
    nn.Linear (uniform in +-1/sqrt(fan_in)). The inputs are normalised by the running mean and standard deviation
    of every (s, a) the run has seen, kept in buffers (saved with the weights, never trained).
    """

    def __init__(self, obs_dim: int, act_dim: int, ensemble_size: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.obs_dim = obs_dim
        sizes = [obs_dim + act_dim, *hidden_sizes, 2 * obs_dim + 1]  # delta mean, raw logvar, reward
        term_sizes = [obs_dim, hidden_sizes[0], 1]  # the termination classifier of a reached state s': one hidden layer
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        self.term_weights, self.term_biases = nn.ParameterList(), nn.ParameterList()
        for ws, bs, dims in ((self.weights, self.biases, sizes), (self.term_weights, self.term_biases, term_sizes)):
            for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
                bound = 1.0 / math.sqrt(n_in)
                ws.append(nn.Parameter(torch.empty(ensemble_size, n_in, n_out).uniform_(-bound, bound)))
                bs.append(nn.Parameter(torch.empty(ensemble_size, 1, n_out).uniform_(-bound, bound)))
        # the learned bounds of the log-variance, shared by the members (mbrl-lib's initial values)
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))
        in_dim = obs_dim + act_dim
        self.register_buffer("in_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("in_sum", torch.zeros(in_dim, dtype=torch.float64))
        self.register_buffer("in_sumsq", torch.zeros(in_dim, dtype=torch.float64))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))

    @torch.no_grad()
    def update_normalizer(self, x: torch.Tensor) -> None:
        """Add rows of (s, a) to the running statistics the inputs are normalised with."""
        x = x.to(self.in_sum.dtype)
        self.in_count += x.shape[0]
        self.in_sum += x.sum(0)
        self.in_sumsq += x.square().sum(0)
        mean = self.in_sum / self.in_count
        var = (self.in_sumsq / self.in_count - mean.square()).clamp_min(0.0)
        self.in_mean.copy_(mean)
        self.in_std.copy_(var.sqrt().clamp_min(1e-4))  # a constant input (e.g. an unused action) is not blown up

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """obs [E, B, obs_dim], actions [E, B, act_dim] (row e goes through member e). Returns the mean of s' - s and
        its bounded log-variance [E, B, obs_dim] and the reward [E, B]."""
        h = stacked_mlp((torch.cat([obs, actions], dim=-1) - self.in_mean) / self.in_std, self.weights, self.biases)
        mean, raw_logvar, reward = h.split([self.obs_dim, self.obs_dim, 1], dim=-1)
        logvar = soft_bound_logvar(raw_logvar, self.max_logvar, self.min_logvar)
        return mean, logvar, reward.squeeze(-1)

    def termination_logit(self, next_obs: torch.Tensor) -> torch.Tensor:
        """The logit of "the episode ends in s'", next_obs [E, B, obs_dim] -> [E, B]. A function of the state reached
        (a boundary in s', such as InvertedPendulum's |angle| > 0.2), not of (s, a), which would have to learn the
        dynamics a second time."""
        obs_mean, obs_std = self.in_mean[: self.obs_dim], self.in_std[: self.obs_dim]
        return stacked_mlp((next_obs - obs_mean) / obs_std, self.term_weights, self.term_biases).squeeze(-1)


def stacked_mlp(h: torch.Tensor, weights: nn.ParameterList, biases: nn.ParameterList) -> torch.Tensor:
    """E networks at once: h [E, B, in] through layers of weights [E, in, out] (batched matrix products), SiLU (the
    paper's swish) between them."""
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.baddbmm(b, h, w)
        if i < len(weights) - 1:
            h = F.silu(h)
    return h


def soft_bound_logvar(raw: torch.Tensor, max_logvar: torch.Tensor, min_logvar: torch.Tensor) -> torch.Tensor:
    """Softly clamp a log-variance into (min_logvar, max_logvar) (the paper's appendix A.1; mbrl-lib's gaussian_mlp):
    logvar = max_lv - softplus(max_lv - raw), then logvar = min_lv + softplus(logvar - min_lv). Near the middle it is
    the identity; it never reaches a bound, and the gradient reaches the bounds, which the loss then tightens."""
    logvar = max_logvar - F.softplus(max_logvar - raw)
    return min_logvar + F.softplus(logvar - min_logvar)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """-log N(target; mean, diag(exp(logvar))), summed over the last dimension and averaged over all the others:
    1/2 * sum_i [ log 2 pi + logvar_i + (target_i - mean_i)^2 * exp(-logvar_i) ]. With beta > 0 each term is
    weighted by the stop-gradient variance to the power beta (beta-NLL, Seitzer et al. 2022)."""
    nll = 0.5 * (math.log(2 * math.pi) + logvar + (target - mean).square() * torch.exp(-logvar))
    if beta > 0:
        nll = nll * torch.exp(beta * logvar.detach())
    return nll.sum(-1).mean()


def model_losses(model: EnsembleModel, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                 next_obs: torch.Tensor, terminations: torch.Tensor, beta: float = 0.0) -> dict[str, torch.Tensor]:
    """The ensemble's losses on a batch [E, B, ...] (each member its own rows): the dynamics' NLL of s' - s (beta-NLL
    with beta > 0), the reward's squared error, the termination's cross-entropy, the bounds' regulariser, and their
    sum as "loss"; and, not trained on, "model_mse": the mean's squared error of s' - s, averaged over its dimensions."""
    mean, logvar, reward = model(obs, actions)
    nll = gaussian_nll(mean, logvar, next_obs - obs, beta)
    reward_loss = F.mse_loss(reward, rewards)
    termination_loss = F.binary_cross_entropy_with_logits(model.termination_logit(next_obs), terminations)
    bound_loss = 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
    return {"loss": nll + reward_loss + termination_loss + bound_loss, "model_nll": nll, "reward_loss": reward_loss,
            "termination_loss": termination_loss, "model_mse": (mean - (next_obs - obs)).detach().square().mean()}


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                               action_scale: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) for a = action_scale * tanh(u) + action_bias, u ~ N(mean, exp(log_std)^2); sums over the last
    (action) dimension.

    Change of variables (2018a, appendix C, eq. 21) through tanh and then the affine map into the bounds:
    log pi(a) = log N(u) - sum log(1 - tanh(u)^2) - sum log(action_scale).
    log(1 - tanh(u)^2) = log(4 / (e^u + e^-u)^2) = 2 * (log 2 - u - softplus(-2u)), exact for every u, where
    the naive form reaches log(0) = -inf once tanh(u) rounds to 1 (|u| > ~9 in float32).
    """
    log_normal = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det_tanh = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (log_normal - log_det_tanh - torch.log(action_scale)).sum(-1)


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


def temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """J(alpha) = -mean(alpha * (log pi + target_entropy)), alpha = exp(log_alpha), optimised in log_alpha.

    Its gradient in log_alpha is -alpha * (target_entropy - entropy estimate): alpha grows when the
    policy's entropy (-log pi) is below the target and shrinks when it is above.
    """
    return -(log_alpha.exp() * (log_pi + target_entropy).detach()).mean()


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


def rollout_length(step: int, schedule: tuple[int, int, int, int]) -> int:
    """k(step) = int(x + clip((step - a) / (b - a), 0, 1) * (y - x)) for schedule (a, b, x, y): x until step a,
    then linear up to y at step b, y after (the paper's truncated linear schedule, in environment steps)."""
    min_step, max_step, min_len, max_len = schedule
    frac = min(max((step - min_step) / (max_step - min_step), 0.0), 1.0)
    return int(min_len + frac * (max_len - min_len))


def resize_buffer(rb: ReplayBuffer, capacity: int) -> ReplayBuffer:
    """A buffer of another capacity holding rb's newest min(size, capacity) transitions, oldest first, and drawing
    from rb's generator: the model buffer when the rollout length, and with it its capacity, changes."""
    new = ReplayBuffer(capacity, rb.obs.shape[1], rb.actions.shape[1], seed=0)
    new.rng = rb.rng
    keep = min(rb.size, capacity)
    idx = (rb.pos - keep + np.arange(keep)) % rb.capacity
    for f in ReplayBuffer.FIELDS:
        getattr(new, f)[:keep] = getattr(rb, f)[idx]
    new.size, new.pos = keep, keep % capacity
    return new


def mixed_batch(real: ReplayBuffer, model_rb: ReplayBuffer, batch_size: int, real_ratio: float) -> tuple[torch.Tensor, ...]:
    """A SAC batch (obs, actions, rewards, next_obs, terminations): round(batch_size * real_ratio) rows from the real
    buffer, then the rest from the model buffer; all real while the model buffer is empty."""
    n_real = batch_size if model_rb.size == 0 else round(batch_size * real_ratio)
    parts = [rb.sample(n) for rb, n in ((real, n_real), (model_rb, batch_size - n_real)) if n > 0]
    return tuple(torch.cat(columns) for columns in zip(*parts, strict=True))


@torch.no_grad()
def validation_losses(model: EnsembleModel, ensemble_size: int, obs: torch.Tensor, actions: torch.Tensor,
                      rewards: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Each member's squared error of its mean on held-out transitions [B, ...] -> [E]: the mean over rows and over
    the obs_dim + 1 targets (s' - s and r), how mbrl-lib scores members for early stopping and elites."""
    mean, _, reward = model(obs.expand(ensemble_size, -1, -1), actions.expand(ensemble_size, -1, -1))
    errors = torch.cat([mean - (next_obs - obs), (reward - rewards).unsqueeze(-1)], dim=-1)
    return errors.square().mean(dim=(1, 2))


def select_elites(val_losses: torch.Tensor, num_elites: int) -> torch.Tensor:
    """The indices of the num_elites members with the lowest validation loss, best first."""
    return torch.argsort(val_losses, stable=True)[:num_elites]


def train_ensemble(model: EnsembleModel, optimizer: torch.optim.Optimizer, data: tuple[torch.Tensor, ...],
                   ensemble_size: int, batch_size: int, validation_ratio: float, max_epochs: int, patience: int,
                   check: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, dict, int, int]:
    """Train the ensemble on the real data (obs, actions, rewards, next_obs, terminations), at least 2 rows.

    A random validation split (validation_ratio of the rows, at least one) is held out; in each epoch every member
    passes over the rest in its own random order, model_batch_size rows per step (model_losses on [E, B] batches).
    After each epoch the members are scored on the split; training stops once `patience` epochs in a row improved
    no member's best score by more than 1%, or after max_epochs. `check(loss)` runs before each optimizer step (the
    NaN check). Returns the final validation losses [E], the last step's losses, the epochs and the gradient steps.
    """
    obs, actions, rewards, next_obs, terminations = data
    n = obs.shape[0]
    n_val = min(max(1, int(n * validation_ratio)), n - 1)
    perm = torch.randperm(n, device=obs.device)
    val, train = perm[:n_val], perm[n_val:]
    best = validation_losses(model, ensemble_size, obs[val], actions[val], rewards[val], next_obs[val])
    rows = min(batch_size, train.numel())
    losses, stale, epochs, updates = {}, 0, 0, 0
    while epochs < max_epochs:
        epochs += 1
        order = train[torch.argsort(torch.rand(ensemble_size, train.numel(), device=obs.device), dim=1)]
        for i in range(train.numel() // rows):
            idx = order[:, i * rows:(i + 1) * rows]  # [E, B]: each member its own rows
            out = model_losses(model, obs[idx], actions[idx], rewards[idx], next_obs[idx], terminations[idx])
            optimizer.zero_grad()
            out["loss"].backward()
            if check is not None:
                check(out["loss"].detach())
            optimizer.step()
            updates += 1
            losses = {k: v.detach() for k, v in out.items()}
        scores = validation_losses(model, ensemble_size, obs[val], actions[val], rewards[val], next_obs[val])
        improved = (best - scores) / best.abs().clamp_min(1e-12) > 0.01
        best = torch.where(improved, scores, best)
        stale = 0 if improved.any() else stale + 1
        if stale >= patience:
            break
    return scores, losses, epochs, updates


@torch.no_grad()
def branched_rollout(model: nn.Module, policy: Callable[[torch.Tensor], torch.Tensor], start_obs: torch.Tensor,
                     length: int, elites: torch.Tensor, ensemble_size: int) -> tuple[torch.Tensor, ...]:
    """Branch `length` model steps from start_obs [B, obs_dim] under `policy` (obs -> sampled actions); returns the
    transitions (obs, actions, rewards, next_obs, terminations), every step's concatenated.

    Each sample's next state comes from an elite drawn at random for that sample and step, sampling its Gaussian.
    A transition is terminated with the classifier's probability sigmoid(logit) (drawn, as the next state is); it is
    kept with terminations = 1 and its branch ends;
    a transition whose next state, reward or termination logit is not finite is dropped and its branch ends.
    `model` is an EnsembleModel or anything with its forward(obs [E, B, .], actions) -> (mean, logvar, reward)
    and termination_logit(next_obs [E, B, .]) -> [E, B]; every member is evaluated, the drawn one's output kept.
    """
    obs, parts = start_obs, []
    for _ in range(length):
        actions = policy(obs)
        n = obs.shape[0]
        members = elites[torch.randint(len(elites), (n,), device=obs.device)]
        rows = torch.arange(n, device=obs.device)
        mean, logvar, reward = model(obs.expand(ensemble_size, -1, -1), actions.expand(ensemble_size, -1, -1))
        mean, logvar, reward = mean[members, rows], logvar[members, rows], reward[members, rows]
        next_obs = obs + mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        logit = model.termination_logit(next_obs.expand(ensemble_size, -1, -1))[members, rows]
        keep = torch.isfinite(next_obs).all(-1) & torch.isfinite(reward) & torch.isfinite(logit)
        ended = torch.rand_like(logit) < torch.sigmoid(logit)  # sampled, as the next state is: P(end) = sigmoid(c)
        parts.append((obs[keep], actions[keep], reward[keep], next_obs[keep], ended[keep].float()))
        obs = next_obs[keep & ~ended]
        if obs.shape[0] == 0:
            break
    return tuple(torch.cat(columns) for columns in zip(*parts, strict=True))


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


def load_model(path: str) -> tuple[Actor, dict]:
    ckpt = load_checkpoint(path, "mbpo")
    actor = Actor(**ckpt["model_args"])
    actor.load_state_dict(ckpt["model"])
    return actor, ckpt


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

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first
    # observation and puts the last one in info["final_obs"], which is what the transition needs.
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    low, high = envs.single_action_space.low, envs.single_action_space.high
    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes),
                  "action_low": low.tolist(), "action_high": high.tolist()}
    ensemble_args = {"obs_dim": obs_dim, "act_dim": act_dim, "ensemble_size": args.ensemble_size,
                     "hidden_sizes": list(args.model_hidden_sizes)}

    actor = Actor(**model_args).to(device)
    critic = BatchedTwinQCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    critic_target = copy.deepcopy(critic)
    ensemble = EnsembleModel(**ensemble_args).to(device)
    target_entropy = -float(act_dim)
    # SB3 and CleanRL start the learned temperature at 1 (log_alpha = 0)
    log_alpha = torch.tensor([0.0 if args.autotune else math.log(max(args.alpha, 1e-12))], device=device,
                             requires_grad=args.autotune)
    # fused=True: Adam's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.q_lr, fused=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr, fused=True)
    model_optimizer = torch.optim.Adam(ensemble.parameters(), lr=args.model_lr, weight_decay=args.model_weight_decay,
                                       fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, args.seed)
    # the model buffer keeps about model_retain_epochs rollout phases: its capacity follows the rollout length
    length = rollout_length(0, args.rollout_schedule)
    model_rb = ReplayBuffer(args.model_retain_epochs * args.rollout_batch_size * length, obs_dim, act_dim, args.seed + 1)
    elites = torch.arange(args.num_elites, device=device)  # until the first training ranks the members
    # the actions, the model's noise, the elites drawn and the model's data order come from torch's generator, which
    # rng_state saves with these
    generators = {"buffer": rb.rng, "model_buffer": model_rb.rng, "action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back. next_train: the step of the next SAC updates
    # (updates_per_step of them per environment step after learning_starts); next_model_train: the step of the next
    # model training and rollout phase (every model_train_frequency steps from learning_starts on).
    global_step, next_train, next_model_train = 0, args.learning_starts + 1, max(args.learning_starts, 1)
    model_losses_last: dict[str, torch.Tensor] = {}  # the last model training's losses, logged until the next one
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "mbpo")
        check_resume(ckpt, args, model_args)
        if ckpt["ensemble_args"] != ensemble_args:
            fail(f"--resume {args.resume} holds an ensemble of other sizes ({ckpt['ensemble_args']}, here "
                 f"{ensemble_args}); resume with the options it was trained with")
        if ckpt.get("buffer", {}).get("size", 0) > args.buffer_size:
            fail(f"--resume {args.resume} holds {ckpt['buffer']['size']} transitions, more than --buffer-size {args.buffer_size}")
        for name, obj in (("model", actor), ("critic", critic), ("critic_target", critic_target),
                          ("ensemble", ensemble), ("actor_optimizer", actor_optimizer),
                          ("critic_optimizer", critic_optimizer), ("alpha_optimizer", alpha_optimizer),
                          ("model_optimizer", model_optimizer)):
            obj.load_state_dict(ckpt[name])
        with torch.no_grad():
            log_alpha.copy_(ckpt["log_alpha"])
        global_step = ckpt["global_step"]
        next_train = max(ckpt["next_train"], next_train)  # a larger --learning-starts postpones learning
        next_model_train = max(ckpt["next_model_train"], next_model_train)
        elites = ckpt["elites"].to(device)[: args.num_elites]
        model_losses_last = dict(ckpt["model_losses"])
        if "model_buffer" in ckpt:
            model_rb = ReplayBuffer(ckpt["model_buffer_capacity"], obs_dim, act_dim, args.seed + 1)
            model_rb.load_state_dict(ckpt["model_buffer"])
            generators["model_buffer"] = model_rb.rng
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (real buffer: {rb.size:,} transitions, model "
              f"buffer: {model_rb.size:,})", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "mbpo", "env_id": args.env_id, "model_args": model_args, "model": actor.state_dict(),
                "args": asdict(args), "critic": critic.state_dict(), "critic_target": critic_target.state_dict(),
                "log_alpha": log_alpha.detach().clone(), "ensemble_args": ensemble_args,
                "ensemble": ensemble.state_dict(), "elites": elites.cpu().clone(),
                "actor_optimizer": actor_optimizer.state_dict(), "critic_optimizer": critic_optimizer.state_dict(),
                "alpha_optimizer": alpha_optimizer.state_dict(), "model_optimizer": model_optimizer.state_dict(),
                "global_step": global_step, "next_train": next_train, "next_model_train": next_model_train,
                "model_losses": {k: v.cpu().clone() for k, v in model_losses_last.items()}, "rng": rng_state(generators),
                "envs": env_state(envs, obs) if with_envs else {"resumable": False},
                **({"buffer": rb.state_dict(), "model_buffer": model_rb.state_dict(),
                    "model_buffer_capacity": model_rb.capacity} if args.save_buffer else {})}

    def fault(quantity: str) -> None:  # the networks are still finite: the check runs before they change
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint(with_envs=False))
        envs.close()
        close_logs(writer, args.track)
        numerical_fault(quantity, global_step, path)

    def check_model_loss(loss: torch.Tensor) -> None:
        if args.nan_check and not math.isfinite(loss):
            fault("model loss")

    run_dir = make_run_dir(run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run_dir)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

    start_step, start_time = global_step, time.time()
    # wall-clock costs, printed and returned, not written to TensorBoard (whose scalars two equal runs reproduce)
    model_time, model_updates, rollout_time, sac_time, sac_updates = 0.0, 0, 0.0, 0.0, 0
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    losses: dict[str, torch.Tensor] = {}  # the latest SAC losses, detached; copied to the host only when logged

    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            actions = actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        # the transition's next observation is the real last one at an episode end, not the reset one
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        rb.add(obs, real_next_obs, actions, rewards, terminations)  # terminations only: truncation bootstraps
        ensemble.update_normalizer(torch.as_tensor(np.concatenate([obs, actions], axis=1), device=device))
        obs = next_obs

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        # Model phase: train the ensemble on the real buffer, rank the members, then branch rollouts from real states.
        if global_step >= next_model_train:
            next_model_train = (global_step // args.model_train_frequency + 1) * args.model_train_frequency
            if rb.size >= args.batch_size:  # fewer only after resuming without the buffer
                tic = time.perf_counter()
                data = tuple(torch.from_numpy(getattr(rb, f)[: rb.size]).to(device) for f in ReplayBuffer.FIELDS)
                val_losses, out, epochs, steps = train_ensemble(
                    ensemble, model_optimizer, data, args.ensemble_size, args.model_batch_size, args.validation_ratio,
                    args.model_max_epochs, args.model_patience, check_model_loss)
                elites = select_elites(val_losses, args.num_elites)
                model_updates += steps
                model_losses_last = {"model_nll": out["model_nll"], "model_reward_loss": out["reward_loss"],
                                     "model_termination_loss": out["termination_loss"],
                                     "model_val_loss": val_losses[elites].mean(), "model_epochs": torch.tensor(float(epochs))}
                toc = time.perf_counter()
                model_time += toc - tic

                length = rollout_length(global_step, args.rollout_schedule)
                capacity = args.model_retain_epochs * args.rollout_batch_size * length
                if capacity != model_rb.capacity:
                    model_rb = resize_buffer(model_rb, capacity)
                start = torch.from_numpy(rb.obs[rb.rng.integers(0, rb.size, size=args.rollout_batch_size)]).to(device)
                branch = branched_rollout(ensemble, actor.act, start, length, elites, args.ensemble_size)
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations = (t.cpu().numpy() for t in branch)
                model_rb.add(b_obs, b_next_obs, b_actions, b_rewards, b_terminations)
                rollout_time += time.perf_counter() - toc

        # SAC (sac.py's updates) on batches mixing real and model transitions. NaN checks of the updates, before the
        # optimizer steps so the networks stay finite: the critic loss, then the actor and temperature losses.
        while next_train <= global_step:
            next_train += 1
            if rb.size < args.batch_size:  # only after resuming without the buffer
                continue
            tic = time.perf_counter()
            for _ in range(args.updates_per_step):
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations = (
                    t.to(device) for t in mixed_batch(rb, model_rb, args.batch_size, args.real_ratio))
                alpha = log_alpha.detach().exp()

                # critics: regress both onto the soft target of the target networks (2018a, eq. 5-6)
                with torch.no_grad():
                    next_actions, next_log_pi = actor.sample(b_next_obs)
                    next_q = critic_target(b_next_obs, next_actions)
                    y = td_target(b_rewards, b_terminations, torch.min(next_q[0], next_q[1]) - alpha * next_log_pi, args.gamma)
                q = critic(b_obs, b_actions)
                qf_losses = 0.5 * ((q - y) ** 2).mean(dim=1)  # [2]: one loss per critic
                qf_loss = qf_losses.sum()
                critic_optimizer.zero_grad()
                qf_loss.backward()
                if args.nan_check and not math.isfinite(qf_loss.detach()):
                    fault("critic loss")
                critic_optimizer.step()

                # actor: the critics' weights are detached, so only the actor's gradient is computed
                pi_actions, log_pi = actor.sample(b_obs)
                q_pi = critic(b_obs, pi_actions, detach_params=True)
                actor_loss = (alpha * log_pi - torch.min(q_pi[0], q_pi[1])).mean()
                alpha_loss = temperature_loss(log_alpha, log_pi, target_entropy) if args.autotune else None
                if args.nan_check and not math.isfinite(actor_loss.detach() + (alpha_loss.detach() if args.autotune else 0)):
                    fault("actor loss" if not torch.isfinite(actor_loss.detach()) else "temperature loss")
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()

                if args.autotune:
                    alpha_optimizer.zero_grad()
                    alpha_loss.backward()
                    alpha_optimizer.step()
                    losses.update(alpha_loss=alpha_loss.detach())

                soft_update(critic_target, critic, args.tau)
                losses.update(qf1_loss=qf_losses[0].detach(), qf2_loss=qf_losses[1].detach(), qf_loss=qf_loss.detach(),
                              q_values=q[0].detach().mean(), actor_loss=actor_loss.detach(), alpha=alpha[0],
                              entropy=-log_pi.detach().mean())
            sac_time, sac_updates = sac_time + time.perf_counter() - tic, sac_updates + args.updates_per_step

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/rollout_length", rollout_length(global_step, args.rollout_schedule), global_step)
            writer.add_scalar("charts/model_buffer_size", model_rb.size, global_step)
            for key, value in {**losses, **model_losses_last}.items():
                writer.add_scalar(f"{'charts' if key == 'model_epochs' else 'losses'}/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            val = f"{model_losses_last['model_val_loss'].item():.4f}" if model_losses_last else "n/a"
            print(f"step {global_step:>9,}  SPS {sps:>5,}  model val {val}  model buffer {model_rb.size:>7,}  "
                  f"alpha {log_alpha.exp().item():.3f}  return(last 20 episodes) {recent}", flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the step's updates: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
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

    eval_returns = evaluate(actor, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    model_ups, sac_ups = model_updates / max(model_time, 1e-9), sac_updates / max(sac_time, 1e-9)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s: model training "
          f"{model_time:.1f}s ({model_ups:.0f} updates/s), rollouts {rollout_time:.1f}s, SAC {sac_time:.1f}s "
          f"({sac_ups:.0f} updates/s)")
    if model_path:
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB"
              + (", with the real and model buffers)" if args.save_buffer else ")"))
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
        "model_train_time": model_time,
        "rollout_time": rollout_time,
        "sac_time": sac_time,
        "model_updates_per_second": model_ups,
        "sac_updates_per_second": sac_ups,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
