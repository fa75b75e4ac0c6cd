r"""Trust Region Policy Optimization (TRPO) for discrete and continuous actions.

Paper: Schulman, Levine, Moritz, Jordan, Abbeel (2015), "Trust Region Policy Optimization",
https://arxiv.org/abs/1502.05477. Advantages by GAE: Schulman et al. (2016), https://arxiv.org/abs/1506.02438.

Run:
    python algorithms/trpo.py --env-id CartPole-v1
    python algorithms/trpo.py --env-id Pendulum-v1 --num-envs 2 --num-steps 1024 --gamma 0.9 \
        --n-critic-updates 20 --total-timesteps 100000
    python algorithms/trpo.py --env-id HalfCheetah-v5 --num-envs 2 --num-steps 1024 --batch-size 128 \
        --cg-iters 25 --cg-damping 0.1 --n-critic-updates 20 --target-kl 0.04 --norm-obs --norm-reward \
        --total-timesteps 100000                # rl-zoo3's MuJoCo setting for sb3-contrib (normalize: True)
    python algorithms/trpo.py --help            # every hyperparameter, with its meaning

Defaults: sb3-contrib's TRPO (critic Adam lr 1e-3, minibatches of 128, gamma 0.99, GAE lambda 0.95, target
KL 0.01, CG damping 0.1, line search factor 0.8 with up to 10 tries, 64-64 tanh actor and critic, advantages
normalised over the rollout) except: conjugate gradient runs 10 iterations (the paper's and Spinning Up's
number; sb3-contrib runs 15: --cg-iters 15), and the rollout is 4 environments x 512 steps instead of 1 x
2048 (the same 2048 samples per update in a quarter of the per-step policy calls) with 20 critic epochs
instead of 10 (rl-zoo3's CartPole and Pendulum value), chosen for CartPole-v1.

The math, as written in the code below (t indexes the rollout, per environment; theta are the actor's
parameters, theta_old their value when the rollout was collected; with --norm-obs every s below is the
normalised observation o~, with --norm-reward every r is the scaled reward r~):
    observation   o~ = clip((o - mean_o) / sqrt(var_o + 1e-8), -clip_obs, clip_obs)     running mean/var of o
    reward        G_t = gamma * G_{t-1} + r_t   (G reset to 0 after every episode end)
                  r~_t = clip(r_t / sqrt(var_G + 1e-8), -clip_reward, clip_reward)       running var of G
    GAE           A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},
                  delta_t = r_t + gamma * v'_t * (1 - terminated_t) - V(s_t),
                  v'_t = V(s_{t+1}), or V(final observation) when the episode was truncated at step t (the
                  final observation normalised with the same statistics as every other input)
    surrogate     L(theta) = mean( pi_theta(a|s) / pi_old(a|s) * A )       (paper eq. 14, with A for Q)
    constraint    KL(theta) = mean_s KL( pi_old(.|s) || pi_theta(.|s) ) <= delta            (paper eq. 14)
    gradient      g = dL/dtheta at theta_old
    Fisher        F v = d/dtheta( (dKL/dtheta) . v ) + damping * v     (Hessian of the mean KL at theta_old,
                  by double backpropagation, never formed as a matrix; paper appendix C.1)
    direction     s ~= F^-1 g, by cg_iters iterations of conjugate gradient
    full step     beta * s with beta = sqrt(2 delta / (s^T F s)), F damped as above (as sb3-contrib): the KL's
                  quadratic model 1/2 (beta s)^T F (beta s) is then exactly delta
    line search   theta = theta_old + factor^i * beta * s for i = 0, 1, ..., line_search_max_iter - 1; accept the
                  first i with KL(theta) <= delta and L(theta) > L(theta_old); if none, theta stays theta_old
    critic        minimise mean( (V(s) - R)^2 ), R_t = A_t + V_old(s_t), Adam over n_critic_updates epochs of
                  shuffled minibatches (after the policy step; the critic and the actor share no parameters)

Policies: a Categorical over a Discrete space (logits from a tanh MLP), or a diagonal Gaussian over a Box
space whose mean is a tanh MLP and whose log standard deviation is one free parameter per action dimension
(state-independent, as in the paper and sb3-contrib). Gaussian actions are clipped to the space's bounds
when they are sent to the environment; the unclipped sample is what the log-probabilities use. Evaluation is
deterministic: the most probable action, or the (clipped) mean.

Observation and reward normalisation (--norm-obs, --norm-reward; off by default, as the CartPole and
Pendulum settings above do not use them) are Stable-Baselines3's VecNormalize, which rl-zoo3's MuJoCo
settings for sb3-contrib's TRPO switch on (normalize: True): clip 10 for both, the return discounted with --gamma, 1e-8 inside the square
roots. The running mean/var are merged batch by batch (Chan, Golub & LeVeque's parallel algorithm), starting
from mean 0, var 1 with a weight of 1e-4, as VecNormalize does; they absorb every observation the policy acts
on (reset observations included, final observations not). The reward is divided by the standard deviation of
the discounted return, not centred, and only the learning sees it: charts/episodic_return stays the raw
return. The observation statistics are part of the policy: those in force at each checkpoint and at the end of
training are copied into the actor's buffers (obs_mean, obs_var), so they are saved with its weights, and
greedy_action, which takes raw observations, normalises with them, frozen, in process or from a checkpoint.

Time-limit truncation is not termination: a truncated episode bootstraps from the value of the observation
where it was cut, a terminated one does not. The vector environment runs in Gymnasium's same-step autoreset
mode: when an episode ends, step() returns the next episode's first observation and puts the last one in
info["final_obs"], so no step is spent on a reset and none has to be masked out.

Long runs (the same form in every deep file of the collection):
    python algorithms/trpo.py --checkpoint-every 100000      # runs/<run>/checkpoint_<step>.pt, the newest 2 kept
    python algorithms/trpo.py --resume runs/<run>/checkpoint_<step>.pt    # continue up to --total-timesteps
A checkpoint holds the actor, the critic and its optimiser, the step counters, every random generator's state,
the observation and reward normalisation statistics and the environments' own state, so a resumed run ends with
the same parameters as one never interrupted (classic-control environments only: their whole state is a few
numbers; with any other environment the resumed run starts new episodes). Ctrl-C or SIGTERM stops the run after
the current iteration (the policy step and the critic's epochs), writes a checkpoint and exits with status
130 / 143, printing the command that resumes it; a second signal quits at once. A resumed run writes to a new run
directory whose TensorBoard steps continue the old ones (nothing here is scheduled, so a larger --total-timesteps
simply runs longer). A NaN or infinite observation, reward, surrogate loss, KL, policy step, critic loss or
critic gradient norm stops the run at once (exit 3), before it reaches the networks, and keeps the last finite
state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.

--async-envs steps the environments in worker processes (gym.vector.AsyncVectorEnv), with the same results for the
same seed. It pays where an environment step costs more than the network's (a MuJoCo step can cost less than the
round trip between processes); its checkpoints hold no environment state, so a resumed run starts new episodes.

Tested: a deterministic evaluation of >= 475 on CartPole-v1 in 200k steps, and of >= -400 on Pendulum-v1 with
the command above in 100k steps (tests/test_trpo.py).
Results: benchmark_results/trpo.md
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
    exp_name: str = "trpo"
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
    """if toggled, a NaN or infinite observation, reward, loss, step or gradient norm stops the run (exit 3)"""
    async_envs: bool = False
    """if toggled, step the environments in parallel worker processes (gym.vector.AsyncVectorEnv); the same results as the default SyncVectorEnv for the same seed"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (Discrete or Box actions, flat Box observations)"""
    total_timesteps: int = 200_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 4
    """the number of parallel environments"""
    num_steps: int = 512
    """steps per environment in each rollout (rollout size = num_envs * num_steps; sb3-contrib: 1 x 2048)"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """the lambda of generalised advantage estimation"""
    norm_adv: bool = True
    """if toggled, normalise the advantages over the rollout (zero mean, unit standard deviation)"""
    target_kl: float = 0.01
    """delta, the trust region: the bound on the mean KL(pi_old || pi) of one policy step"""
    cg_iters: int = 10
    """conjugate gradient iterations for the search direction (sb3-contrib: 15)"""
    cg_damping: float = 0.1
    """damping added to the Fisher-vector product (F + damping * I), which keeps CG well-conditioned"""
    line_search_factor: float = 0.8
    """the backtracking line search shrinks the step by this factor after each rejected try"""
    line_search_max_iter: int = 10
    """tries of the line search before the step is abandoned (the policy then stays unchanged)"""
    learning_rate: float = 1e-3
    """the critic's Adam learning rate"""
    n_critic_updates: int = 20
    """passes of critic regression over each rollout (sb3-contrib: 10; rl-zoo3 CartPole/Pendulum: 20)"""
    batch_size: int = 128
    """minibatch size of the critic's regression"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    norm_obs: bool = False
    """if toggled, normalise observations by their running mean and variance (saved with the model; rl-zoo3 MuJoCo: on)"""
    norm_reward: bool = False
    """if toggled, divide rewards by the running standard deviation of the discounted return (rl-zoo3 MuJoCo: on)"""
    clip_obs: float = 10.0
    """normalised observations are clipped to [-clip_obs, clip_obs]"""
    clip_reward: float = 10.0
    """normalised rewards are clipped to [-clip_reward, clip_reward]"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (argmax, or the Gaussian's mean)"""
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
    for name in ("total_timesteps", "num_envs", "num_steps", "cg_iters", "line_search_max_iter", "n_critic_updates",
                 "batch_size", "hidden_size", "eval_episodes", "log_every", "torch_threads"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.norm_adv and args.num_envs * args.num_steps < 2:
        fail("--norm-adv needs a rollout of at least 2 samples (num_envs * num_steps >= 2); or pass --no-norm-adv")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.target_kl < math.inf:
        fail(f"--target-kl must be a finite number > 0, got {args.target_kl}")
    if not 0 <= args.cg_damping < math.inf:
        fail(f"--cg-damping must be a finite number >= 0, got {args.cg_damping}")
    if not 0 < args.line_search_factor < 1:
        fail(f"--line-search-factor must be in (0, 1), got {args.line_search_factor}")
    if not (0 < args.learning_rate < math.inf and 0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        fail("need 0 < --learning-rate < inf, 0 < --gamma <= 1 and 0 <= --gae-lambda <= 1")
    if not (0 < args.clip_obs < math.inf and 0 < args.clip_reward < math.inf):
        fail(f"--clip-obs and --clip-reward must be finite and positive, got {args.clip_obs} and {args.clip_reward}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or Pendulum-v1")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            fail(f"trpo.py needs a one-dimensional Box action space, {args.env_id} has {action_space}")
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            fail(f"trpo.py clips Gaussian actions to the space's bounds and needs finite ones; {args.env_id} has {action_space}")
    elif not isinstance(action_space, gym.spaces.Discrete):
        fail(f"trpo.py needs a Discrete or a one-dimensional Box action space, {args.env_id} has {action_space}; "
             "use e.g. CartPole-v1 or Pendulum-v1")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"trpo.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as CartPole-v1 or Pendulum-v1")
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


def in_worker(thunk):
    """An environment thunk for AsyncVectorEnv's worker processes: they ignore SIGINT and SIGTERM (Ctrl-C reaches the
    whole process group); the main process stops them."""

    def worker_thunk():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return thunk()

    return worker_thunk


class RunningMeanStd:
    """Running mean and variance of a stream of batches, merged one batch at a time.

    Merging the moments of the data so far (mean m_a, var v_a, count n_a) with a batch's (m_b, v_b, n_b),
    with d = m_b - m_a and n = n_a + n_b (Chan, Golub & LeVeque, 1979):
        mean = m_a + d * n_b / n,     var = (v_a * n_a + v_b * n_b + d^2 * n_a * n_b / n) / n
    It starts at mean 0, var 1 with a pseudo-count `epsilon` (as SB3 and Gymnasium), so the first
    normalisations divide by about 1 instead of by zero.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch [B, *shape]; an empty batch changes nothing."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.shape[0] == 0:
            return
        b_mean, b_var, b_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        self.var = (self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total) / total
        self.count = total


def normalize_obs(obs: np.ndarray, rms: RunningMeanStd | None, clip: float) -> np.ndarray:
    """o~ = clip((o - mean) / sqrt(var + 1e-8), -clip, clip) as float32; the identity when rms is None."""
    if rms is None:
        return np.asarray(obs, dtype=np.float32)
    return np.clip((obs - rms.mean) / np.sqrt(rms.var + 1e-8), -clip, clip).astype(np.float32)


class RewardScaler:
    """Scale rewards by the running standard deviation of the discounted return (SB3 VecNormalize).

    Per environment G <- gamma * G + r; the statistics absorb the new G of every environment; the reward
    is divided by sqrt(var_G + 1e-8) and clipped; G is reset to 0 where an episode ended (terminated or
    truncated), so the next episode's return starts afresh. Dividing by the scale of the return, not of
    the reward, keeps the value targets near unit scale whatever gamma and the reward's units are.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float):
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma, self.clip = gamma, clip

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        scaled = np.clip(rewards / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip)
        self.returns[np.asarray(dones, dtype=bool)] = 0.0
        return scaled.astype(np.float32)


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


# ---- the two policy distributions, written out (tensors in, tensors out; tested against closed forms) ----
# A Categorical is represented by its log-probabilities logp [..., n]; a diagonal Gaussian by (mean, log_std)
# [..., d] each. Log-probabilities, entropies and KLs sum over the action dimensions.


def categorical_log_prob(logp: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return logp.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def categorical_kl(logp_old: torch.Tensor, logp_new: torch.Tensor) -> torch.Tensor:
    """KL(old || new) = sum_a p_old(a) * (log p_old(a) - log p_new(a))."""
    return (logp_old.exp() * (logp_old - logp_new)).sum(-1)


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; mu, diag(sigma^2)) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2 ].

    Written out instead of torch.distributions.Normal: the same numbers, without its per-call checks.
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian: sum_i [ log sigma_i + (1 + log(2 pi)) / 2 ] (independent of the mean)."""
    return (log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


def gaussian_kl(mean_old: torch.Tensor, log_std_old: torch.Tensor, mean_new: torch.Tensor,
                log_std_new: torch.Tensor) -> torch.Tensor:
    """KL(old || new) = sum_i [ log(s_new / s_old) + (s_old^2 + (m_old - m_new)^2) / (2 s_new^2) - 1/2 ]."""
    var_old, var_new = (2 * log_std_old).exp(), (2 * log_std_new).exp()
    return (log_std_new - log_std_old + (var_old + (mean_old - mean_new) ** 2) / (2 * var_new) - 0.5).sum(-1)


class Actor(nn.Module):
    """pi_theta(a|s). forward() returns the distribution's parameters as a tuple: (logp,) for a Categorical,
    (mean, log_std) for the Gaussian, whose log_std is a free parameter, the same in every state.

    forward, sample and the losses take normalised observations, as the rollout stores them; greedy_action
    takes raw ones and normalises them with obs_mean / obs_var. The statistics and the Box space's bounds
    are buffers: they move with .to(device) and are saved in the state_dict, with the weights.
    """

    def __init__(self, obs_dim: int, act_dim: int, discrete: bool, hidden_size: int = 64,
                 action_low: list[float] | None = None, action_high: list[float] | None = None,
                 norm_obs: bool = False, clip_obs: float = 10.0):
        super().__init__()
        self.discrete = discrete
        # a small last layer starts the policy near uniform (Categorical) or near mean 0 (Gaussian)
        self.net = tanh_mlp(obs_dim, act_dim, hidden_size, last_std=0.01)
        if not discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))  # sigma = 1 at the start, as sb3-contrib
            self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))
        # the observation statistics the policy was trained with (--norm-obs), for greedy_action
        self.norm_obs, self.clip_obs = norm_obs, clip_obs
        self.register_buffer("obs_mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(obs_dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        if self.discrete:
            return (torch.log_softmax(out, dim=-1),)
        return out, self.log_std.expand_as(out)

    def log_prob(self, dist: tuple[torch.Tensor, ...], action: torch.Tensor) -> torch.Tensor:
        return categorical_log_prob(dist[0], action) if self.discrete else gaussian_log_prob(action, *dist)

    def entropy(self, dist: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return categorical_entropy(dist[0]) if self.discrete else gaussian_entropy(dist[1])

    def kl(self, old: tuple[torch.Tensor, ...], new: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return categorical_kl(old[0], new[0]) if self.discrete else gaussian_kl(*old, *new)

    @torch.no_grad()
    def sample(self, x: torch.Tensor) -> torch.Tensor:
        dist = self(x)
        if self.discrete:
            return torch.multinomial(dist[0].exp(), 1).squeeze(-1)
        mean, log_std = dist
        return mean + log_std.exp() * torch.randn_like(mean)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """For raw observations x (normalised as normalize_obs does): the most probable action, or the
        Gaussian's mean clipped to the action bounds."""
        if self.norm_obs:
            x = ((x - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-self.clip_obs, self.clip_obs).float()
        dist = self(x)
        return dist[0].argmax(-1) if self.discrete else torch.clamp(dist[0], self.action_low, self.action_high)


class ValueNetwork(nn.Module):
    """V(s), the state-value critic."""

    def __init__(self, obs_dim: int, hidden_size: int = 64):
        super().__init__()
        self.net = tanh_mlp(obs_dim, 1, hidden_size, last_std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


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


def flat_grad(y: torch.Tensor, params: list[torch.Tensor], create_graph: bool = False,
              retain_graph: bool | None = None) -> torch.Tensor:
    """dy/dparams as one flat vector."""
    grads = torch.autograd.grad(y, params, create_graph=create_graph, retain_graph=retain_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def get_flat_params(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def set_flat_params(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def make_fisher_vector_product(mean_kl: torch.Tensor, params: list[torch.Tensor],
                               damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (H + damping * I) v, H the Hessian of `mean_kl` in `params`, by double backpropagation.

    mean_kl must be KL(pi_old || pi_theta) averaged over the batch, with pi_old detached and theta = theta_old:
    its gradient is then zero and its Hessian is the Fisher information matrix of the policy (paper appendix
    C.1). dKL/dtheta is computed once with its graph kept; each product differentiates (dKL/dtheta) . v again,
    which costs about two backward passes and never forms the matrix.
    """
    grad_kl = flat_grad(mean_kl, params, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    return fvp


def conjugate_gradient(Avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for a symmetric positive-definite A known only through v -> A v.

    Starts from x = 0; stops after `iters` iterations or once the squared residual |b - A x|^2 < residual_tol.
    In exact arithmetic it solves an n x n system in n iterations (Nocedal & Wright, Algorithm 5.2).
    """
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x
    p = b.clone()  # search direction
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trpo_step(
    actor: Actor,
    obs: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    max_kl: float,
    cg_iters: int,
    cg_damping: float,
    line_search_factor: float,
    line_search_max_iter: int,
    nan_check: bool = True,
) -> dict:
    """One natural-gradient step of the actor on a batch, under the trust region mean KL <= max_kl.

    The actor's current parameters are theta_old: the batch was collected with them. Only parameters with
    requires_grad are updated. Returns the statistics of the step: whether the line search accepted a step,
    the fraction factor^i of the full step it took (0 if none), the surrogate before and after, the measured
    mean KL from the old policy (0 if rejected) and the entropy of the policy after the step. With nan_check, a
    non-finite surrogate, KL or step direction leaves the actor unchanged and is named in stats["nonfinite"]
    (None otherwise), for the caller to stop on.
    """
    params = [p for p in actor.parameters() if p.requires_grad]
    with torch.no_grad():
        # a snapshot: the Gaussian's log_std is a view of the parameter, which the line search overwrites
        old_dist = tuple(t.clone() for t in actor(obs))
        old_logprob = actor.log_prob(old_dist, actions)

    def surrogate_and_kl(dist):
        ratio = (actor.log_prob(dist, actions) - old_logprob).exp()
        return (ratio * advantages).mean(), actor.kl(old_dist, dist).mean()

    dist = actor(obs)
    surrogate, kl = surrogate_and_kl(dist)  # at theta_old: L = mean(A), KL = 0 (but not its Hessian)
    g = flat_grad(surrogate, params, retain_graph=True)
    fvp = make_fisher_vector_product(kl, params, cg_damping)
    step_dir = conjugate_gradient(fvp, g, cg_iters)
    shs = step_dir @ fvp(step_dir)
    stats = {"accepted": False, "step_fraction": 0.0, "surrogate_old": surrogate.item(),
             "surrogate_new": surrogate.item(), "kl": 0.0, "entropy": actor.entropy(dist).mean().item(),
             "line_search_iters": 0, "nonfinite": None}
    # one host sync, before the parameters move (the actor has no optimiser whose step the check could precede)
    if nan_check and not bool(torch.isfinite(torch.stack([surrogate.detach(), kl.detach(), shs.detach()])).all()
                              & torch.isfinite(step_dir).all()):
        stats["nonfinite"] = ("surrogate loss" if not torch.isfinite(surrogate) else "KL" if not torch.isfinite(kl)
                              else "policy step")
        return stats
    if not (torch.isfinite(shs) and shs > 0):  # g = 0 (e.g. all advantages 0): there is no direction to step in
        return stats
    full_step = torch.sqrt(2 * max_kl / shs) * step_dir

    theta_old = get_flat_params(params)
    fraction = 1.0
    with torch.no_grad():
        for i in range(line_search_max_iter):
            set_flat_params(params, theta_old + fraction * full_step)
            new_dist = actor(obs)
            new_surrogate, new_kl = surrogate_and_kl(new_dist)
            stats["line_search_iters"] = i + 1
            if new_kl <= max_kl and new_surrogate > surrogate:
                stats.update(accepted=True, step_fraction=fraction, surrogate_new=new_surrogate.item(),
                             kl=new_kl.item(), entropy=actor.entropy(new_dist).mean().item())
                return stats
            fraction *= line_search_factor
        set_flat_params(params, theta_old)  # no step passed both tests: keep the old policy
    return stats


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
    ckpt = load_checkpoint(path, "trpo")
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
    batch_size = args.num_envs * args.num_steps
    num_iterations = -(-args.total_timesteps // batch_size)  # ceil: at least total_timesteps steps
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first
    # observation and puts the last one in info["final_obs"] (needed to bootstrap truncations).
    # --async-envs: each environment steps in a worker process that ignores signals (in_worker); same results.
    thunks = [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)]
    vector_env = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = vector_env([in_worker(t) for t in thunks] if args.async_envs else thunks,
                      autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    space = envs.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    act_dim = int(space.n) if discrete else int(space.shape[0])

    # The normalisation is done here rather than by wrappers: one set of statistics shared by all
    # environments, the final observations normalised with them too, and all of it saved with the model.
    obs_rms = RunningMeanStd((obs_dim,)) if args.norm_obs else None
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward) if args.norm_reward else None

    model_args = {"obs_dim": obs_dim, "act_dim": act_dim, "discrete": discrete, "hidden_size": args.hidden_size,
                  "action_low": None if discrete else space.low.tolist(),
                  "action_high": None if discrete else space.high.tolist(),
                  "norm_obs": args.norm_obs, "clip_obs": args.clip_obs}
    actor = Actor(**model_args).to(device)
    critic = ValueNetwork(obs_dim, args.hidden_size).to(device)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # eps as SB3
    generators = {"action_space": envs.action_space.np_random}

    # The training state a checkpoint holds; resuming puts it back. Nothing is scheduled here (the critic's learning
    # rate is constant), so a different --total-timesteps only changes where the run ends.
    global_step, iteration = 0, 0
    raw_obs, _ = envs.reset(seed=args.seed)
    if obs_rms is not None:
        obs_rms.update(raw_obs)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "trpo")
        check_resume(ckpt, args, model_args)
        actor.load_state_dict(ckpt["model"])
        critic.load_state_dict(ckpt["critic"])
        critic_optimizer.load_state_dict(ckpt["critic_optimizer"])
        global_step, iteration = ckpt["global_step"], ckpt["iteration"]
        set_rng_state(ckpt["rng"], generators)
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        raw_obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        episodes_go_on = ckpt["envs"]["resumable"] and len(ckpt["envs"]["subs"]) == args.num_envs
        if obs_rms is not None:
            obs_rms.mean, obs_rms.var = ckpt["obs_rms"]["mean"].numpy().copy(), ckpt["obs_rms"]["var"].numpy().copy()
            obs_rms.count = ckpt["obs_rms"]["count"]
            if not episodes_go_on:  # the new episodes' first observations, as at the start of a run
                obs_rms.update(raw_obs)
        if reward_scaler is not None and ckpt.get("reward_rms") is not None:
            saved = ckpt["reward_rms"]
            reward_scaler.rms.mean, reward_scaler.rms.var = saved["mean"].numpy().copy(), saved["var"].numpy().copy()
            reward_scaler.rms.count = saved["count"]
            if episodes_go_on:  # the discounted returns of the episodes in progress
                reward_scaler.returns = saved["returns"].numpy().copy()
        print(f"resumed from {args.resume} at step {global_step:,}", flush=True)
    next_obs = normalize_obs(raw_obs, obs_rms, args.clip_obs)

    def checkpoint(with_envs: bool = True) -> dict:
        if obs_rms is not None:  # the statistics in force become part of the policy (see Actor)
            actor.obs_mean.copy_(torch.as_tensor(obs_rms.mean))
            actor.obs_var.copy_(torch.as_tensor(obs_rms.var))
        return {"algo": "trpo", "env_id": args.env_id, "model_args": model_args, "model": actor.state_dict(),
                "args": asdict(args), "critic": critic.state_dict(), "critic_optimizer": critic_optimizer.state_dict(),
                "global_step": global_step, "iteration": iteration, "rng": rng_state(generators),
                # the raw observation: normalised again on resuming, with the same statistics, to the same numbers
                "envs": env_state(envs, raw_obs) if with_envs else {"resumable": False},
                "obs_rms": None if obs_rms is None else
                {"mean": torch.tensor(obs_rms.mean), "var": torch.tensor(obs_rms.var), "count": obs_rms.count},
                "reward_rms": None if reward_scaler is None else
                {"mean": torch.tensor(reward_scaler.rms.mean), "var": torch.tensor(reward_scaler.rms.var),
                 "count": reward_scaler.rms.count, "returns": torch.tensor(reward_scaler.returns)}}

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

    # Rollout storage, [num_steps, num_envs, ...], in numpy: the environments speak numpy, and the
    # whole rollout is moved to torch once per iteration instead of once per step. Observations are stored
    # normalised (with --norm-obs), exactly as the policy saw them when it acted.
    obs = np.zeros((args.num_steps, args.num_envs, obs_dim), dtype=np.float32)
    succ_obs = np.zeros_like(obs)  # the observation that followed each step (the final one at episode ends)
    if discrete:
        actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int64)
    else:
        actions = np.zeros((args.num_steps, args.num_envs, act_dim), dtype=np.float32)
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
        # Collect the rollout with the actor alone; V(s) and V(s') come from one batched pass afterwards.
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            action = actor.sample(torch.as_tensor(next_obs, device=device)).cpu().numpy()
            actions[step] = action
            env_action = action if discrete else np.clip(action, space.low, space.high)  # store the unclipped sample
            raw_obs, raw_reward, terminations[step], truncations[step], infos = envs.step(env_action)
            # before the statistics absorb them: the last finite state keeps finite statistics
            if args.nan_check and (bad := nonfinite_step(raw_obs, raw_reward, infos)):
                fault(bad)
            # As SB3's VecNormalize: the statistics absorb the observations the policy will act on next
            # (reset observations included), and a final observation is normalised with the same, updated
            # statistics, so V sees it on the same scale as every other input.
            if obs_rms is not None:
                obs_rms.update(raw_obs)
            next_obs = normalize_obs(raw_obs, obs_rms, args.clip_obs)
            succ_obs[step] = next_obs
            if "final_obs" in infos:
                for i in np.flatnonzero(infos["_final_obs"]):
                    succ_obs[step, i] = normalize_obs(infos["final_obs"][i], obs_rms, args.clip_obs)  # not the reset one
            dones = np.logical_or(terminations[step], truncations[step])
            rewards[step] = raw_reward if reward_scaler is None else reward_scaler(raw_reward, dones)
            if "episode" in infos:  # raw returns: RecordEpisodeStatistics sees the unscaled rewards
                for i in np.flatnonzero(infos["_episode"]):
                    ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                    recent_returns.append(ep_r)
                    writer.add_scalar("charts/episodic_return", ep_r, global_step)
                    writer.add_scalar("charts/episodic_length", ep_l, global_step)

        b_obs = torch.as_tensor(obs.reshape(-1, obs_dim), device=device)
        b_actions = torch.as_tensor(actions.reshape(batch_size, *actions.shape[2:]), device=device)
        with torch.no_grad():
            b_values = critic(b_obs)
            next_values = critic(torch.as_tensor(succ_obs, device=device))
        advantages, returns = compute_gae(
            torch.as_tensor(rewards, device=device), b_values.view(args.num_steps, args.num_envs), next_values,
            torch.as_tensor(terminations, device=device), torch.as_tensor(truncations, device=device),
            args.gamma, args.gae_lambda,
        )
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
        if args.norm_adv:
            b_advantages = (b_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)

        # The policy: one natural-gradient step on the whole rollout (the Fisher uses every sample); with
        # --nan-check a non-finite surrogate, KL or step leaves the actor as it was and stops the run here.
        step_stats = trpo_step(actor, b_obs, b_actions, b_advantages, args.target_kl, args.cg_iters,
                               args.cg_damping, args.line_search_factor, args.line_search_max_iter, args.nan_check)
        if step_stats["nonfinite"]:
            fault(step_stats["nonfinite"])

        # The critic: regression on the GAE returns, computed with the values before this update.
        for _epoch in range(args.n_critic_updates):
            perm = torch.randperm(batch_size, device=device)
            for start in range(0, batch_size, args.batch_size):
                mb = perm[start : start + args.batch_size]
                v_loss = ((critic(b_obs[mb]) - b_returns[mb]) ** 2).mean()
                critic_optimizer.zero_grad()
                v_loss.backward()
                if args.nan_check:  # the critic is not clipped: its gradient norm is computed for this check alone
                    grad_norm = nn.utils.get_total_norm([p.grad for p in critic.parameters() if p.grad is not None],
                                                        foreach=True)
                    # one host sync per minibatch; before critic_optimizer.step(), so the critic stays finite
                    if not torch.isfinite(v_loss.detach() + grad_norm):
                        fault("critic loss" if not torch.isfinite(v_loss) else "critic gradient norm")
                critic_optimizer.step()

        var_y = b_returns.var()
        explained_var = float("nan") if var_y == 0 else float(1 - (b_returns - b_values).var() / var_y)
        sps = int((global_step - start_step) / (time.time() - start_time))
        stats = {
            "charts/learning_rate": args.learning_rate,
            "losses/value_loss": v_loss.item(),
            # minus the surrogate after the step; 0 before it when advantages are normalised
            "losses/policy_loss": -step_stats["surrogate_new"],
            "losses/surrogate_improvement": step_stats["surrogate_new"] - step_stats["surrogate_old"],
            "losses/entropy": step_stats["entropy"],
            "losses/approx_kl": step_stats["kl"],  # the measured mean KL(pi_old || pi) of the step taken
            "losses/line_search_accepted": float(step_stats["accepted"]),
            "losses/step_fraction": step_stats["step_fraction"],
            "losses/explained_variance": explained_var,
            "charts/SPS": sps,
        }
        if not discrete:
            stats["losses/std"] = actor.log_std.exp().mean().item()
        for key, val in stats.items():
            writer.add_scalar(key, val, global_step)
        if global_step >= next_log or iteration == num_iterations:
            next_log = (global_step // args.log_every + 1) * args.log_every
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the iteration: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
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
    if obs_rms is not None:  # the statistics become part of the policy (see Actor)
        actor.obs_mean.copy_(torch.as_tensor(obs_rms.mean))
        actor.obs_var.copy_(torch.as_tensor(obs_rms.var))
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
    envs.close()

    eval_returns = evaluate(actor, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
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
