"""Model-based RL with a probabilistic ensemble and trajectory sampling (PETS): a learned world model, and
model-predictive control by the cross-entropy method (CEM) through it.

Paper: Chua, Calandra, McAllister, Levine (2018), "Deep Reinforcement Learning in a Handful of Trials using
Probabilistic Dynamics Models", https://arxiv.org/abs/1805.12114. The log-variance bounds and the CEM update
follow the paper's code and its reimplementation in mbrl-lib (Pineda et al. 2021, https://arxiv.org/abs/2104.10159).
The learned value past the horizon follows value-augmented planners: POLO (Lowrey et al. 2019,
https://arxiv.org/abs/1811.01848) and LOOP (Sikchi, Zhou, Held 2021, https://arxiv.org/abs/2008.10066).
The dynamics are trained by beta-NLL: Seitzer, Tavakoli, Antic, Martius (2022), "On the Pitfalls of Heteroscedastic
Uncertainty Estimation with Probabilistic Neural Networks", https://arxiv.org/abs/2203.09168.
The replay, the loop and the checkpoints are those of sac.py.

Run:
    python algorithms/world_model.py                                   # InvertedPendulum-v5, 5k steps
    python algorithms/world_model.py --env-id Pendulum-v1 --total-timesteps 3000 --no-terminal-value   # see below
    python algorithms/world_model.py --population 480 --horizon 30 --iterations 5   # nearer the paper (slow)
    python algorithms/world_model.py --no-terminal-value               # the paper's PETS: no value past the horizon
    python algorithms/world_model.py --save-model --save-buffer         # the final state, which can resume
    python algorithms/world_model.py --help

There is no policy network: every action is planned. The world model is an ensemble of E members, each a network
f_e(s, a) -> (mu_e, logvar_e, r_e) and a termination classifier c_e(s') of the state reached; inputs are
normalised by the running mean and standard deviation of every (s, a) seen. The math, as written in the code below:
    dynamics      s' - s ~ N(mu_e(s, a), diag(exp(logvar_e(s, a))))   (the paper's probabilistic ensemble, PE)
    bounds        logvar = max_lv - softplus(max_lv - raw);  logvar = min_lv + softplus(logvar - min_lv)
                  with max_lv, min_lv learned vectors (the paper's appendix A.1; mbrl-lib's gaussian_mlp)
    model loss    NLL = mean over members and batch of
                        sum_i sg(exp(logvar_i))^beta * 1/2 [ log 2 pi + logvar_i + (d_i - mu_i)^2 / exp(logvar_i) ],
                  d = s' - s;  + mean (r_e - r)^2 + BCE(c_e(s'), terminated) + 0.01 * (sum max_lv - sum min_lv)
                  sg: stop-gradient; beta = 0 is the paper's NLL, beta = 0.5 (--beta-nll, the default) is beta-NLL
                  each member on its own uniformly drawn batch (independent samples stand in for bootstraps)
    rollout       particle p of candidate k follows member e = p mod E all the way (TS-infinity):
                  s_{t+1} = s_t + mu_e + exp(logvar_e / 2) * eps,  eps ~ N(0, I)
    return        G(a_0..a_{H-1}) = mean over particles of
                        sum_{t<H} gamma^t * alive_t * r_e(s_t, a_t)  +  gamma^H * alive_H * V(s_H),
                  alive_0 = 1,  alive_{t+1} = alive_t * (1 - sigmoid(c_e(s_{t+1})))  (the chance of no termination)
    value         V(s) = v(s) / (1 - gamma), v an MLP, regressed on the replay's Monte Carlo returns (the default):
                  y = G_t = r_t + gamma * G_{t+1}, the discounted return of the replay's finished episodes
                  (G_T = 0 when terminated, V(s_T) when cut by a time limit),  loss = mean ((1 - gamma) * (V(s) - y))^2;
                  or, with --no-value-returns, by TD(0) on the replay's transitions: y = r + gamma * (1 - terminated)
                  * V'(s'), V' its Polyak-averaged copy: V' <- tau * V + (1 - tau) * V' after every gradient step
    CEM           sequences a ~ N(m, diag(sd^2)) clipped to the bounds; the top `elites` by G give m*, sd*;
                  m <- momentum * m + (1 - momentum) * m*,  sd <- momentum * sd + (1 - momentum) * sd*;
                  after `iterations` rounds the first action of m is played (model-predictive control), and m,
                  shifted by one step, starts the next action's search (warm start)
The planner is batched: each of the horizon's steps is one forward pass of the ensemble over every candidate
sequence and particle at once ([E, population * particles / E, obs + act] through batched matrix products).

Defaults are sized for a CPU, not the paper's: the paper plans with population 500, 5 CEM iterations, horizon 30
(mbrl-lib: population 350-500, horizon 15-30, 20 particles) and an ensemble of five 200-400-wide 3-4-layer
networks, which costs seconds per action on one core here. This file plans with population 100, 10 elites,
4 iterations, horizon 15 and 5 particles (one per member) through five 64-64-64 networks (and a one-layer
termination classifier per member): tens of milliseconds per action (benchmark_results/world_model.md measures
it). The model takes five gradient steps per environment step (sac.py's loop, with more updates per step: the
planner is only as good as the model) instead of the paper's epochs after each episode; --gradient-steps and
--train-frequency change that. A learned reward and termination, rather than the paper's known cost function,
keep the file environment-agnostic.

beta-NLL rather than the paper's NLL (--beta-nll 0 restores it): the NLL's gradient on a mean is divided by that
output's variance, so a network can settle on a poor mean and a wide variance where the data are hard to fit. On
InvertedPendulum-v5, whose dynamics are deterministic, the plain NLL left the mean of the velocities' change several
times less accurate than beta-NLL, learned a spread of noise that the particles then sampled at every step, and did
not learn the end of the rail (the cart stops there and the pole falls outwards); weighting each term by its own
variance to the power beta (without a gradient through that weight) gives the mean the gradient of a squared error
scaled by sd^(2 beta - 2) and keeps the variance's own fit (the results page measures both).

The learned terminal value V is this file's addition to PETS (--no-terminal-value removes it): a planned return
that stops at the horizon is myopic. On InvertedPendulum-v5 the reward is 1 while the pole is up, so every
candidate that survives the horizon (0.6 s at dt = 0.04 s) scores the same, CEM's elites are a random draw among
them, and the cart random-walks to the end of its rail, where the pole falls. V, the value of the replay's
behaviour, is lower near the rail and when moving towards it, which the horizon alone cannot see. Its targets are
the replay's discounted returns with gamma = 0.99 (an effective horizon of 100 steps, 4 s): a drift towards the rail
lowers the return long before the rail is near, and returns, unlike TD(0) targets, do not chain the value's own
errors over that horizon. It has no weight decay (see the optimiser's comment); its output is scaled by
1 / (1 - gamma) so that the network predicts numbers of the reward's size. The results page has the runs behind
each default. On Pendulum-v1, whose episodes all end at the time limit (every return then ends with the value's own
guess of the rest), this value hurts at 3k steps; there --no-terminal-value plans as the paper does.
Tested (slow): tests/test_world_model.py asks seed 1 for an evaluation return of 1000 (3 episodes) on
InvertedPendulum-v5 in 5k steps.
Results: benchmark_results/world_model.md

Time limits: only `terminated` trains the termination model; an episode cut by a time limit is stored with its real
last observation (info["final_obs"], Gymnasium's same-step autoreset mode), so its last transition still teaches
the dynamics. The planner's warm start is reset to the centre of the action bounds when an episode ends in training;
evaluate() (the same function in every deep file) cannot tell it an episode ended, so there the next episode's first
search starts from the previous episode's last plan, which the CEM iterations soon forget.

Long runs (the same form in every deep file of the collection):
    python algorithms/world_model.py --checkpoint-every 1000 --save-buffer   # runs/<run>/checkpoint_<step>.pt
    python algorithms/world_model.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the planner (under "model": the ensemble, its input statistics, the value network and the action
bounds; its sizes, CEM settings and gamma under "model_args": what `evaluate` needs), the value's target copy
("value_target"), the Adam state, the step counters (next_train), the
warm start of the plan in progress, every random generator's state (Python's, numpy's, torch's, which samples the
plans and the model's noise, the replay sampler's, the action space's) and the environments' own state; with
--save-buffer also the replay buffer. So, with --save-buffer, a resumed run ends with the same tensors as one never
interrupted (classic-control environments such as Pendulum-v1 only; with any other the resumed run starts new
episodes). Ctrl-C or SIGTERM stops the run after the current step's update, writes a checkpoint and exits with
status 130 / 143, printing the command that resumes it; a second signal quits at once. A NaN or infinite
observation, reward or model loss stops the run at once (exit 3) and keeps the last finite state in
runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.
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
    exp_name: str = "world_model"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train and plan on it (small ensembles are faster on the CPU)"""
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
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the replay buffer (it can be large: its size is printed)"""
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
    total_timesteps: int = 5_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments (the planner plans for all of them in one batch)"""
    buffer_size: int = 1_000_000
    """the replay memory's capacity in transitions"""
    batch_size: int = 256
    """transitions per ensemble member per gradient step"""
    learning_starts: int = 250
    """environment steps of uniformly random actions before the model trains and the planner acts"""
    learning_rate: float = 1e-3
    """the ensemble's Adam learning rate"""
    weight_decay: float = 5e-5
    """Adam's L2 weight decay on the ensemble (mbrl-lib's PETS setting)"""
    train_frequency: int = 1
    """environment steps between training phases"""
    gradient_steps: int = 5
    """gradient steps on the model in each training phase"""
    beta_nll: float = 0.5
    """weight each dynamics NLL term by its (stop-gradient) variance to this power (beta-NLL; 0: the paper's NLL)"""
    ensemble_size: int = 5
    """networks in the ensemble (the paper's E = 5)"""
    hidden_sizes: tuple[int, ...] = (64, 64, 64)
    """widths of each member's SiLU hidden layers (the paper: 200-400 wide; smaller here so that planning is cheap)"""
    horizon: int = 15
    """planning horizon in environment steps (the paper: 30)"""
    population: int = 100
    """candidate action sequences per CEM iteration (the paper: 500)"""
    elites: int = 10
    """the best candidates that the next CEM distribution is fitted to (the paper: 50)"""
    iterations: int = 4
    """CEM iterations per action (the paper: 5)"""
    num_particles: int = 5
    """model rollouts per candidate, spread evenly over the members; a multiple of --ensemble-size (the paper: 20)"""
    momentum: float = 0.1
    """CEM smoothing: the weight of the previous mean and standard deviation in each update (mbrl-lib's alpha)"""
    terminal_value: bool = True
    """if toggled, each planned return ends with gamma^H times a learned value of the state reached (off: the paper's PETS)"""
    gamma: float = 0.99
    """the discount of the planned return and of the value's targets (an effective horizon of 100 steps past the plan's)"""
    value_returns: bool = True
    """if toggled, the value regresses on the discounted returns of the replay's finished episodes (Monte Carlo; an
    episode cut by a time limit ends with the value of its last state); off: TD(0) on the replay's transitions"""
    tau: float = 0.005
    """the value's target smoothing coefficient (TD(0), --no-value-returns): theta' <- tau * theta + (1 - tau) * theta'"""
    eval_episodes: int = 3
    """episodes of the final evaluation, in which the planner acts (each action costs a CEM search)"""
    log_every: int = 500
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
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                 "eval_episodes", "log_every", "torch_threads", "ensemble_size", "horizon", "population", "elites",
                 "iterations", "num_particles"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not 0 < x < inf` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not args.learning_starts >= 0:
        fail(f"--learning-starts must be >= 0, got {args.learning_starts}")
    if not 0 < args.learning_rate < math.inf:
        fail(f"--learning-rate must be finite and positive, got {args.learning_rate}")
    if not 0 <= args.weight_decay < math.inf:
        fail(f"--weight-decay must be finite and >= 0, got {args.weight_decay}")
    if not 0 <= args.beta_nll <= 1:
        fail(f"--beta-nll must be in [0, 1], got {args.beta_nll}")
    if not 0 <= args.momentum < 1:
        fail(f"--momentum must be in [0, 1), got {args.momentum}")
    if not 0 < args.gamma < 1 or not 0 < args.tau <= 1:
        fail(f"need 0 < --gamma < 1 and 0 < --tau <= 1, got {args.gamma} and {args.tau}")
    if not args.elites <= args.population:
        fail(f"--elites ({args.elites}) cannot exceed --population ({args.population})")
    if args.num_particles % args.ensemble_size:
        fail(f"--num-particles ({args.num_particles}) must be a multiple of --ensemble-size ({args.ensemble_size})")
    if not args.hidden_sizes or not min(args.hidden_sizes) > 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    check_control_env(args.env_id)
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def check_control_env(env_id: str) -> None:
    """The environment exists and has bounded Box actions (CEM samples within them) and flat Box observations."""
    try:
        env_spec(env_id)
    except gym.error.Error as error:
        fail(f"--env-id {env_id} is not a registered Gymnasium environment ({error}); try InvertedPendulum-v5 or Pendulum-v1")
    try:
        probe = gym.make(env_id)
    except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency (mujoco, box2d)
        fail(f"--env-id {env_id} cannot be created: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        fail(f"--env-id {env_id} has {action_space} actions; this algorithm needs a flat Box (continuous) action "
             "space, e.g. InvertedPendulum-v5 or Pendulum-v1 (discrete actions: dqn.py, ppo.py)")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        fail(f"--env-id {env_id} has unbounded actions {action_space}; the planner samples within finite bounds")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"--env-id {env_id} has {obs_space} observations; this algorithm needs a flat Box observation, "
             "e.g. InvertedPendulum-v5")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


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


class Planner(nn.Module):
    """The world model and model-predictive control through it: what evaluation plays and checkpoints hold.

    greedy_action(obs) runs a CEM search over action sequences, scored by trajectory_returns, and returns the first
    action of the final mean, in the environment's units. It keeps the search's mean, shifted by one step, as the
    next call's starting point (`warm`, a plain attribute: not saved with the weights).
    """

    def __init__(self, obs_dim: int, act_dim: int, ensemble_size: int, hidden_sizes: tuple[int, ...], action_low,
                 action_high, horizon: int, population: int, elites: int, iterations: int, num_particles: int,
                 momentum: float, gamma: float, terminal_value: bool):
        super().__init__()
        self.model = EnsembleModel(obs_dim, act_dim, ensemble_size, tuple(hidden_sizes))
        self.value = value_network(obs_dim, tuple(hidden_sizes))
        self.gamma, self.terminal_value = gamma, terminal_value
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))
        self.ensemble_size, self.horizon, self.population, self.elites = ensemble_size, horizon, population, elites
        self.iterations, self.num_particles, self.momentum = iterations, num_particles, momentum
        self.warm: torch.Tensor | None = None

    def state_value(self, obs: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """V(s) [...] of states obs [..., obs_dim] through `net` (the value network, or its target copy), whose output
        is (1 - gamma) V: the value in units of one step's reward, near the scale a freshly initialised layer
        outputs. Inputs are normalised by the model's running statistics of the observations."""
        obs_mean, obs_std = self.model.in_mean[: self.model.obs_dim], self.model.in_std[: self.model.obs_dim]
        return (net or self.value)((obs - obs_mean) / obs_std).squeeze(-1) / (1.0 - self.gamma)

    def centre(self, n: int) -> torch.Tensor:
        """The first search's mean: the middle of the action bounds at every step, [n, horizon, act_dim]."""
        return ((self.action_low + self.action_high) / 2).expand(n, self.horizon, -1).clone()

    @torch.no_grad()
    def trajectory_returns(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The model's return of each candidate sequence: obs [N, obs_dim], actions [N, P, H, act_dim] -> [N, P].

        Every candidate gets num_particles rollouts, num_particles / E through each member (TS-infinity: a particle
        keeps its member); each of the H steps is one forward pass of the ensemble over all N * P * particles. The
        return is discounted, and with terminal_value ends with gamma^H * alive_H * V(s_H).
        """
        n, p, h, a = actions.shape
        e, per = self.ensemble_size, self.num_particles // self.ensemble_size
        m = n * p * per
        s = obs[None, :, None, None, :].expand(e, n, p, per, -1).reshape(e, m, -1)
        steps = actions[None, :, :, None].expand(e, n, p, per, h, a).reshape(e, m, h, a)
        total = torch.zeros(e, m, device=obs.device)
        alive = torch.ones(e, m, device=obs.device)
        for t in range(h):
            mean, logvar, reward = self.model(s, steps[:, :, t])
            total += self.gamma**t * alive * reward
            s = s + mean + (0.5 * logvar).exp() * torch.randn_like(mean)
            # 1 - sigmoid(c(s')): the chance that this step does not end the episode
            alive = alive * torch.sigmoid(-self.model.termination_logit(s))
        if self.terminal_value:
            total += self.gamma**h * alive * self.state_value(s)
        return total.reshape(e, n, p, per).mean(dim=(0, 3))

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """CEM from `mean` [N, H, act_dim] (and a standard deviation of a quarter of the bounds' width, as
        mbrl-lib); returns the final mean."""
        std = ((self.action_high - self.action_low) / 4).expand_as(mean).clone()
        for _ in range(self.iterations):
            noise = torch.randn(mean.shape[0], self.population, *mean.shape[1:], device=mean.device)
            samples = torch.clamp(mean[:, None] + std[:, None] * noise, self.action_low, self.action_high)
            values = self.trajectory_returns(obs, samples)
            mean, std = cem_update(samples, values, self.elites, mean, std, self.momentum)
        return mean

    @torch.no_grad()
    def act(self, obs: torch.Tensor, warm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Plan from the warm start; returns the actions to play [N, act_dim] and the next warm start (the plan
        shifted by one step, its last step the centre of the bounds)."""
        mean = self.plan(obs, warm)
        return mean[:, 0], torch.cat([mean[:, 1:], self.centre(mean.shape[0])[:, :1]], dim=1)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The planned action, in the environment's units (what evaluation plays)."""
        if self.warm is None or self.warm.shape[0] != obs.shape[0]:
            self.warm = self.centre(obs.shape[0])
        action, self.warm = self.act(obs, self.warm)
        return action


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


def value_network(obs_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """An MLP from a normalised observation to (1 - gamma) V(s): the state's value, the planner's look-ahead past
    its horizon. SiLU hidden layers, as the ensemble's."""
    layers, n_in = [], obs_dim
    for n_out in hidden_sizes:
        layers += [nn.Linear(n_in, n_out), nn.SiLU()]
        n_in = n_out
    return nn.Sequential(*layers, nn.Linear(n_in, 1))


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


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


def bootstrapped_returns(rewards: np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} with G_T = bootstrap: every step's discounted return-to-go in one episode."""
    out, g = np.empty(len(rewards), dtype=np.float32), bootstrap
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out


def value_loss(values: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """mean ((1 - gamma) (V(s) - y))^2: the squared TD error in the value network's own units (one step's reward),
    so that its size does not grow with the effective horizon 1 / (1 - gamma)."""
    return ((1.0 - gamma) * (values - targets)).square().mean()


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


def cem_update(samples: torch.Tensor, values: torch.Tensor, num_elites: int, mean: torch.Tensor, std: torch.Tensor,
               momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-entropy-method step: fit a diagonal Gaussian to the `num_elites` highest-valued samples and move
    (mean, std) towards it. samples [N, P, ...], values [N, P], mean and std [N, ...]."""
    idx = values.topk(num_elites, dim=1).indices
    elite = samples.gather(1, idx.view(*idx.shape, *[1] * (samples.dim() - 2)).expand(-1, -1, *samples.shape[2:]))
    elite_mean, elite_std = elite.mean(1), elite.std(1, correction=0)
    return momentum * mean + (1 - momentum) * elite_mean, momentum * std + (1 - momentum) * elite_std


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


def load_model(path: str) -> tuple[Planner, dict]:
    ckpt = load_checkpoint(path, "world_model")
    planner = Planner(**ckpt["model_args"])
    planner.load_state_dict(ckpt["model"])
    return planner, ckpt


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
    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "ensemble_size": args.ensemble_size,
                  "hidden_sizes": list(args.hidden_sizes), "action_low": low.tolist(), "action_high": high.tolist(),
                  "horizon": args.horizon, "population": args.population, "elites": args.elites,
                  "iterations": args.iterations, "num_particles": args.num_particles, "momentum": args.momentum,
                  "gamma": args.gamma, "terminal_value": args.terminal_value}

    planner = Planner(**model_args).to(device)
    model = planner.model
    value_target = copy.deepcopy(planner.value)
    # One Adam for the ensemble and the value network, without weight decay on the latter: its TD gradients are small,
    # and Adam, which divides each gradient by its own scale, would let the decay term shrink the weights to zero.
    optimizer = torch.optim.Adam([{"params": model.parameters()}, {"params": planner.value.parameters(), "weight_decay": 0.0}],
                                 lr=args.learning_rate, weight_decay=args.weight_decay, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, args.seed)
    # the plans and the model's noise are drawn from torch's generator, which rng_state saves with these
    generators = {"buffer": rb.rng, "action_space": envs.action_space.np_random}
    # --value-returns: each row's discounted return (NaN until its episode ends) and each environment's open episode
    returns = np.full(args.buffer_size if args.value_returns else 0, np.nan, dtype=np.float32)
    episode_rows: list[list[int]] = [[] for _ in range(args.num_envs)]

    # The training state a checkpoint holds; resuming puts it back. next_train: the step of the next training phase
    # (gradient_steps updates), one per train_frequency environment steps after learning_starts. warm: the plan in
    # progress for each environment, shifted by one step, where the next action's search starts.
    global_step, next_train = 0, args.learning_starts + args.train_frequency
    warm = planner.centre(args.num_envs)
    obs, _ = envs.reset(seed=args.seed)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "world_model")
        check_resume(ckpt, args, model_args)
        if ckpt.get("buffer", {}).get("size", 0) > args.buffer_size:
            fail(f"--resume {args.resume} holds {ckpt['buffer']['size']} transitions, more than --buffer-size {args.buffer_size}")
        planner.load_state_dict(ckpt["model"])
        value_target.load_state_dict(ckpt["value_target"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step = ckpt["global_step"]
        next_train = max(ckpt["next_train"], next_train)  # a larger --learning-starts postpones learning
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if ckpt["envs"]["resumable"]:
            warm = ckpt["warm"].to(device)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        if args.value_returns and "returns" in ckpt:
            returns[: rb.size] = ckpt["returns"]["returns"].numpy()
            if ckpt["envs"]["resumable"]:
                episode_rows = ckpt["returns"]["open"]
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {rb.size:,} transitions)", flush=True)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "world_model", "env_id": args.env_id, "model_args": model_args, "model": planner.state_dict(),
                "args": asdict(args), "value_target": value_target.state_dict(), "optimizer": optimizer.state_dict(),
                "global_step": global_step,
                "next_train": next_train, "warm": warm.cpu().clone(), "rng": rng_state(generators),
                "envs": env_state(envs, obs) if with_envs else {"resumable": False},
                **({"buffer": rb.state_dict()} if args.save_buffer else {}),
                **({"returns": {"returns": torch.from_numpy(returns[: rb.size].copy()), "open": episode_rows}}
                   if args.save_buffer and args.value_returns else {})}

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
    # wall-clock costs, printed and returned, not written to TensorBoard (whose scalars two equal runs reproduce)
    plan_time, plans, update_time, updates = 0.0, 0, 0.0, 0
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    losses: dict[str, torch.Tensor] = {}  # the latest losses, detached; copied to the host only when logged

    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            tic = time.perf_counter()
            planned, warm = planner.act(torch.as_tensor(obs, dtype=torch.float32, device=device), warm)
            actions = planned.cpu().numpy()
            plan_time, plans = plan_time + time.perf_counter() - tic, plans + 1
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        # the transition's next observation is the real last one at an episode end, not the reset one
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        rows = (rb.pos + np.arange(args.num_envs)) % args.buffer_size
        rb.add(obs, real_next_obs, actions, rewards, terminations)
        if args.value_returns:
            returns[rows] = np.nan
            for i, j in enumerate(rows):
                episode_rows[i].append(int(j))
                if terminations[i] or truncations[i]:
                    with torch.no_grad():  # a time limit's cut: the rest of the episode is the value's guess
                        tail = 0.0 if terminations[i] else planner.state_value(
                            torch.as_tensor(real_next_obs[i], dtype=torch.float32, device=device)).item()
                    returns[episode_rows[i]] = bootstrapped_returns(rb.rewards[episode_rows[i]], args.gamma, tail)
                    episode_rows[i] = []
        model.update_normalizer(torch.as_tensor(np.concatenate([obs, actions], axis=1), device=device))
        obs = next_obs
        done = np.logical_or(terminations, truncations)
        if done.any():  # a new episode's search starts from the centre of the bounds
            warm[torch.as_tensor(done, device=device)] = planner.centre(int(done.sum()))

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        while next_train <= global_step:
            next_train += args.train_frequency
            if rb.size < args.batch_size:  # only after resuming without the buffer
                continue
            tic = time.perf_counter()
            for _ in range(args.gradient_steps):
                # each member its own batch: [E * B] rows drawn at once, then split by member
                batch = (t.to(device).view(args.ensemble_size, args.batch_size, *t.shape[1:])
                         for t in rb.sample(args.ensemble_size * args.batch_size))
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations = batch
                out = model_losses(model, b_obs, b_actions, b_rewards, b_next_obs, b_terminations, args.beta_nll)
                loss = out["loss"]
                known = np.flatnonzero(~np.isnan(returns[: rb.size])) if args.value_returns else None
                if args.terminal_value and known is not None and len(known):  # Monte Carlo: finished episodes' rows
                    idx = rb.rng.choice(known, size=args.ensemble_size * args.batch_size)
                    y = torch.from_numpy(returns[idx]).to(device)
                    out["value_loss"] = value_loss(planner.state_value(torch.from_numpy(rb.obs[idx]).to(device)), y,
                                                   args.gamma)
                elif args.terminal_value and known is None:  # TD(0) on the same rows: the value of the data's behaviour
                    with torch.no_grad():
                        y = td_target(b_rewards, b_terminations, planner.state_value(b_next_obs, value_target), args.gamma)
                    out["value_loss"] = value_loss(planner.state_value(b_obs), y, args.gamma)
                if "value_loss" in out:
                    loss = loss + out["value_loss"]
                optimizer.zero_grad()
                loss.backward()
                if args.nan_check and not math.isfinite(loss.detach()):
                    fault("model loss")
                optimizer.step()
                if args.terminal_value:
                    soft_update(value_target, planner.value, args.tau)
                losses.update({k: v.detach() for k, v in out.items() if k != "loss"})
            update_time, updates = update_time + time.perf_counter() - tic, updates + args.gradient_steps

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            for key, value in losses.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            mse = f"{losses['model_mse'].item():9.2e}" if "model_mse" in losses else "      n/a"
            print(f"step {global_step:>9,}  SPS {sps:>5,}  planning {1000 * plan_time / max(plans, 1):6.1f} ms/action  "
                  f"updates/s {updates / max(update_time, 1e-9):7.1f}  model mse {mse}  "
                  f"return(last 20 episodes) {recent}", flush=True)
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

    planner.warm = None
    eval_returns = evaluate(planner, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    plan_ms, updates_per_second = 1000 * plan_time / max(plans, 1), updates / max(update_time, 1e-9)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(planned actions); trained {global_step - start_step:,} steps in {train_time:.1f}s; planning "
          f"{plan_ms:.1f} ms per action, {updates_per_second:.0f} model updates per second")
    if model_path:
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB"
              + (", with the replay buffer)" if args.save_buffer else ")"))
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
        "plan_ms": plan_ms,
        "updates_per_second": updates_per_second,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
