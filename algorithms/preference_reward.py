r"""Deep reinforcement learning from human preferences: a reward learned from pairwise comparisons of segments.

Paper: Christiano, Leike, Brown, Martic, Legg, Amodei (2017), "Deep Reinforcement Learning from Human
Preferences", https://arxiv.org/abs/1706.03741 (its section 2.2: a reward model fitted to comparisons of
trajectory segments by the Bradley-Terry model, an ensemble whose disagreement chooses the queries, and a policy
trained by an ordinary RL algorithm on the learned reward while the comparisons arrive). The "human" here is a
synthetic labeller that compares the segments' true returns, as in the paper's MuJoCo experiments.
The learner is ppo_continuous_action.py's PPO, line for line (its helpers are copied verbatim); only the reward
it is given differs.

Run:
    python algorithms/preference_reward.py                         # HalfCheetah-v5, 300k steps, 1,000 labels
    python algorithms/preference_reward.py --true-reward           # the same learner on the true reward
    python algorithms/preference_reward.py --query uniform         # the ablation: queries chosen at random
    python algorithms/preference_reward.py --label-noise 0.1       # the labeller errs on 10% of the comparisons
    python algorithms/preference_reward.py --help                  # every hyperparameter, with its meaning

Tested: -200 or better on HalfCheetah-v5 (random policy: -279) in 100k steps with 300 labels, on the learned
reward only (tests/test_preference_reward.py, slow).
Results: benchmark_results/preference_reward.md

The math, as written in the code below (a segment sigma = ((s_1, a_1), ..., (s_L, a_L)), L = --segment-length):
    reward model    K members r_k(s, a), each an MLP; the policy's reward is their mean r(s, a) = mean_k r_k(s, a)
    Bradley-Terry   P_k[sigma1 > sigma2] = exp(sum_t r_k(s1_t, a1_t)) / (exp(sum_t r_k(s1_t, a1_t)) + exp(sum_t r_k(s2_t, a2_t)))
                                         = sigmoid(R_k(sigma1) - R_k(sigma2)),   R_k(sigma) = sum_t r_k(s_t, a_t)
    loss            L_k = -mean over labelled pairs of [ y log P_k + (1 - y) log(1 - P_k) ],
                    y = 1 if sigma1 is preferred, 0 if sigma2, 1/2 for a tie; member k sees its own bootstrap
                    resample of the labelled pairs (sampled with replacement, anew each training round)
    disagreement    d(sigma1, sigma2) = Var_k P_k[sigma1 > sigma2]   (population variance over the K members);
                    each query round draws --candidate-factor times as many random pairs as it needs labels and
                    asks about the ones with the largest d (--query uniform: the first ones drawn)
    labeller        y = [G(sigma1) > G(sigma2)] (1/2 on a tie), G the segment's true return; with
                    --labeller-temperature T > 0, y ~ Bernoulli(sigmoid((G1 - G2) / T)) (a Boltzmann-rational
                    labeller); then, with probability --label-noise eps, y <- 1 - y
    schedule        labels due after a fraction p of training:
                    N(p) = round(N_total * (f0 + (1 - f0) * (1 - (1 - min(p / p_end, 1))^2)))
                    f0 = --initial-label-fraction (asked about the first rollout, before the first update),
                    p_end = --label-until; the rate falls linearly to 0 at p_end: most labels come early
    policy reward   r~(s, a) = (r(s, a) - mu_r) / sigma_r, mu_r and sigma_r the mean and standard deviation of r
                    over the segment pool, fixed after each training round (the paper: zero mean, constant
                    standard deviation); then PPO's own return-based scaling, as for any reward
    agreement       on pairs of the newest rollout's segments, before they are labelled or trained on: the
                    fraction of pairs (ties left out) where P[sigma1 > sigma2] > 1/2 exactly when G1 > G2

Notes:
- The policy never sees the true reward: the rollout's rewards are replaced by r~ after it is collected, and
  PPO's reward scaling, GAE and update run on those. charts/episodic_return is always the TRUE return (the
  environment's, from RecordEpisodeStatistics), and so is the final evaluation. --true-reward gives the
  baseline: the same file and learner, the rollout's true rewards, no labels.
- Segments are consecutive, non-overlapping windows of L steps of each environment's rollout that no episode
  end interrupts (an episode may end on a segment's last step). They enter a pool of the newest --pool-size
  segments, from which the queries are drawn; a labelled pair is copied out of the pool with its label, so the
  labels outlive the pool. The reward model's input is the raw observation, normalised with the policy's
  observation statistics as they were at the last training round (frozen in the model's buffers, so a
  comparison means the same thing between rounds), and the action the environment received (clipped).
- A round of labelling and reward-model training happens after a rollout whenever new labels are due:
  --reward-updates gradient steps of Adam on minibatches of --reward-batch-size pairs of each member's bootstrap.
- The vector environment runs in Gymnasium's same-step autoreset mode, as ppo_continuous_action.py's does, and
  time-limit truncation bootstraps as there (see that file's docstring for the rollout, the normalisation and
  the truncation bootstrap). ppo_continuous_action.py's --async-envs is left out: a MuJoCo step costs less than
  the round trip to a worker process. The reward model and its data stay on the CPU whatever --cuda says.

Long runs (the same form as ppo.py's and every deep file's):
    python algorithms/preference_reward.py --checkpoint-every 100000   # runs/<run>/checkpoint_<step>.pt
    python algorithms/preference_reward.py --resume runs/<run>/checkpoint_<step>.pt   # up to --total-timesteps
A checkpoint holds ppo_continuous_action.py's training state and also the reward-model ensemble, its optimiser,
its normalisation, the segment pool, the labelled pairs and the labeller's random generator, so a resumed run
continues exactly (bit for bit with classic-control environments such as Pendulum-v1, whose state is saved; with
MuJoCo the resumed run starts new episodes). Ctrl-C or SIGTERM stops the run after the current update with a
checkpoint (exit 130 / 143) and prints the command that resumes it. A NaN or infinite raw observation or reward,
loss or gradient norm (the policy's or the reward model's) stops the run at once (exit 3) and keeps the last finite
state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.
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
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "preference_reward"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the labeller and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small MLPs are faster on the CPU)"""
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
    """if toggled, save the training state (policy, reward model, labels) to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""

    env_id: str = "HalfCheetah-v5"
    """the Gymnasium id of the environment (Box actions, flat Box observations)"""
    total_timesteps: int = 300_000
    """total environment steps, summed over the parallel environments (the paper: millions; 300k fits 2 CPU cores)"""
    # --- preferences (the paper's section 2.2) ---
    true_reward: bool = False
    """if toggled, train on the environment's true reward (the baseline: no labels, no reward model)"""
    total_labels: int = 1000
    """the number of comparisons the synthetic labeller answers over the whole run (the paper: 700-1,400 in MuJoCo)"""
    initial_label_fraction: float = 0.25
    """the fraction of --total-labels asked about the first rollout, before the first policy update"""
    label_until: float = 0.5
    """the fraction of training by which every label has arrived (the rate falls linearly to 0 there)"""
    segment_length: int = 50
    """steps per segment (HalfCheetah-v5: 2.5 seconds of simulated time)"""
    pool_size: int = 400
    """the newest this many segments are the candidates of the queries"""
    query: str = "disagreement"
    """how queries are chosen among random candidate pairs: disagreement (ensemble variance) or uniform"""
    candidate_factor: int = 10
    """each query round draws this many random candidate pairs per label it needs"""
    label_noise: float = 0.0
    """the probability that the labeller's answer is flipped"""
    labeller_temperature: float = 0.0
    """0: the labeller prefers the larger true return; T > 0: it prefers segment 1 with probability sigmoid((G1 - G2) / T)"""
    ensemble_size: int = 3
    """the number K of reward models, each trained on its own bootstrap of the labels"""
    reward_hidden_size: int = 64
    """width of the two ReLU hidden layers of each reward model"""
    reward_learning_rate: float = 3e-4
    """the Adam learning rate of the reward models"""
    reward_weight_decay: float = 1e-4
    """the L2 penalty (Adam weight decay) of the reward models (the paper regularises with L2 too)"""
    reward_updates: int = 200
    """gradient steps of the reward models in each round in which new labels arrived"""
    reward_batch_size: int = 64
    """labelled pairs per minibatch of the reward models"""
    heldout_pairs: int = 200
    """pairs of the newest rollout's segments on which the model's agreement with the true returns is measured"""
    # --- the learner: ppo_continuous_action.py's PPO and its MuJoCo defaults ---
    learning_rate: float = 3e-4
    """the Adam learning rate"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0 over training"""
    num_envs: int = 1
    """the number of parallel environments"""
    num_steps: int = 2048
    """steps per environment in each rollout (rollout size = num_envs * num_steps)"""
    gamma: float = 0.99
    """the discount factor (also the discount of the return whose std scales the rewards)"""
    gae_lambda: float = 0.95
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 32
    """the number of minibatches each rollout is split into"""
    update_epochs: int = 10
    """the number of passes over each rollout"""
    norm_adv: bool = True
    """if toggled, normalise advantages within each minibatch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient epsilon"""
    anneal_clip: bool = False
    """if toggled, the clipping coefficient decays linearly to 0 like the learning rate"""
    clip_vloss: bool = False
    """if toggled, clip the value update around the old value, with the same epsilon (CleanRL: on; SB3: off)"""
    ent_coef: float = 0.0
    """the entropy bonus coefficient"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 0.5
    """the maximum norm of the policy's gradient (global clipping)"""
    target_kl: float | None = None
    """if set, stop a rollout's epochs once a minibatch's approximate KL exceeds 1.5 x target_kl"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    norm_obs: bool = True
    """if toggled, normalise observations by their running mean and variance (saved with the model)"""
    norm_reward: bool = True
    """if toggled, divide rewards by the running standard deviation of the discounted return"""
    clip_obs: float = 10.0
    """normalised observations are clipped to [-clip_obs, clip_obs]"""
    clip_reward: float = 10.0
    """normalised rewards are clipped to [-clip_reward, clip_reward]"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (the mean action, clipped to the bounds), on the true reward"""
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
                 "hidden_size", "torch_threads", "log_every", "total_labels", "segment_length", "pool_size",
                 "candidate_factor", "ensemble_size", "reward_hidden_size", "reward_updates", "reward_batch_size",
                 "heldout_pairs"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if (args.num_envs * args.num_steps) % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide the rollout size num_envs * num_steps "
             f"= {args.num_envs * args.num_steps}")
    if not 0 < args.learning_rate < math.inf or not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        fail("need 0 < --learning-rate < inf, 0 < --gamma <= 1 and 0 <= --gae-lambda <= 1")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    for name, value, low in (("clip-coef", args.clip_coef, 0), ("ent-coef", args.ent_coef, 0), ("vf-coef", args.vf_coef, 0),
                             ("reward-weight-decay", args.reward_weight_decay, 0),
                             ("labeller-temperature", args.labeller_temperature, 0)):
        if not low <= value < math.inf:
            fail(f"--{name} must be a finite number >= {low}, got {value}")
    if not args.max_grad_norm > 0 or (args.target_kl is not None and not 0 < args.target_kl < math.inf):
        fail(f"need --max-grad-norm > 0 and --target-kl > 0 (finite), got {args.max_grad_norm} and {args.target_kl}")
    if not 0 < args.clip_obs < math.inf or not 0 < args.clip_reward < math.inf:
        fail(f"--clip-obs and --clip-reward must be positive and finite, got {args.clip_obs} and {args.clip_reward}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    if args.query not in ("disagreement", "uniform"):
        fail(f"--query must be disagreement or uniform, got {args.query!r}")
    if not 0 <= args.label_noise <= 0.5:
        fail(f"--label-noise must be in [0, 0.5] (above 0.5 the labeller prefers the worse segment), got {args.label_noise}")
    if not 0 <= args.initial_label_fraction <= 1 or not 0 < args.label_until <= 1:
        fail(f"need 0 <= --initial-label-fraction <= 1 and 0 < --label-until <= 1, got "
             f"{args.initial_label_fraction} and {args.label_until}")
    if not 0 < args.reward_learning_rate < math.inf:
        fail(f"--reward-learning-rate must be positive and finite, got {args.reward_learning_rate}")
    if not args.true_reward and args.segment_length > args.num_steps:
        fail(f"--segment-length {args.segment_length} must fit in a rollout of --num-steps {args.num_steps} steps")
    if args.resume is not None and not os.path.isfile(args.resume):  # before the probe: MuJoCo writes a log file
        fail(f"no checkpoint at {args.resume}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try Pendulum-v1 or HalfCheetah-v5")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        fail(f"preference_reward.py needs a one-dimensional Box action space, {args.env_id} has {action_space}; "
             "use a continuous environment such as HalfCheetah-v5 or Hopper-v5")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"preference_reward.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as HalfCheetah-v5 or Hopper-v5")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


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
    """Separate actor and critic MLPs; the actor gives the Gaussian's mean, log_std is a free parameter.

    The networks, sample_action and evaluate_actions take normalised observations, as the rollout stores
    them. greedy_action takes raw ones: it normalises them with obs_mean / obs_var, the statistics the policy
    was trained with, and clips the mean to the action bounds. Statistics and bounds are buffers: they move
    with .to(device) and are saved in the state_dict, with the weights.
    """

    def __init__(self, obs_dim: int, action_low: list[float], action_high: list[float], hidden_size: int = 64,
                 norm_obs: bool = False, clip_obs: float = 10.0):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            # a small last layer starts every mean near 0, whatever the observation
            layer_init(nn.Linear(hidden_size, len(action_low)), std=0.01),
        )
        # state-independent log standard deviation, starting at sigma = 1 (CleanRL, SB3)
        self.actor_logstd = nn.Parameter(torch.zeros(len(action_low)))
        self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))
        self.norm_obs, self.clip_obs = norm_obs, clip_obs
        self.register_buffer("obs_mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(obs_dim, dtype=torch.float64))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    @torch.no_grad()
    def sample_action(self, x: torch.Tensor) -> torch.Tensor:
        """Sample a ~ N(mu(x), sigma^2), unclipped: all the rollout needs per step (see the module docstring)."""
        mean = self.actor_mean(x)
        return mean + self.actor_logstd.exp() * torch.randn_like(mean)

    def evaluate_actions(self, x: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (log pi(action|x), entropy of pi(.|x), V(x)) for the update."""
        mean = self.actor_mean(x)
        log_std = self.actor_logstd.expand_as(mean)
        return gaussian_log_prob(action, mean, log_std), gaussian_entropy(log_std), self.get_value(x)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """The mean action for raw observations x (normalised as normalize_obs does), clipped to the bounds."""
        if self.norm_obs:
            x = ((x - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-self.clip_obs, self.clip_obs).float()
        return torch.clamp(self.actor_mean(x), self.action_low, self.action_high)


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


# ---- Preferences: segments, the synthetic labeller, the Bradley-Terry reward ensemble, queries ----


def cut_segments(dones: np.ndarray, length: int) -> list[tuple[int, int]]:
    """The (start step, environment) of each segment of a [T, N] rollout: consecutive windows of `length` steps from
    step 0 on, kept where no episode ends before the window's last step (an end on the last step is fine)."""
    segments = []
    for env in range(dones.shape[1]):
        for start in range(0, dones.shape[0] - length + 1, length):
            if not dones[start : start + length - 1, env].any():
                segments.append((start, env))
    return segments


def label_schedule(fraction: float, total_labels: int, initial_fraction: float, until: float) -> int:
    """The number of labels due once a fraction of training is done: f0 at the start, then a rate that falls
    linearly to 0 at `until`, N(p) = round(N * (f0 + (1 - f0) * (1 - (1 - min(p / until, 1))^2)))."""
    p = min(max(fraction, 0.0) / until, 1.0)
    return round(total_labels * (initial_fraction + (1.0 - initial_fraction) * (1.0 - (1.0 - p) ** 2)))


def synthetic_labels(return1: np.ndarray, return2: np.ndarray, noise: float, temperature: float,
                     rng: np.random.Generator) -> np.ndarray:
    """The labeller's answers y = P[segment 1 preferred] from the segments' true returns: 1, 0, or 1/2 for a tie
    (temperature 0), or a Bernoulli(sigmoid((G1 - G2) / temperature)) draw; then each flipped with probability
    `noise` (a tie stays 1/2)."""
    return1, return2 = np.asarray(return1, dtype=np.float64), np.asarray(return2, dtype=np.float64)
    if temperature > 0:
        p = 0.5 * (1.0 + np.tanh((return1 - return2) / (2.0 * temperature)))  # sigmoid, without overflow
        y = (rng.random(len(p)) < p).astype(np.float64)
    else:
        y = np.where(return1 > return2, 1.0, np.where(return1 < return2, 0.0, 0.5))
    flip = rng.random(len(y)) < noise
    return np.where(flip, 1.0 - y, y).astype(np.float32)


def preference_probability(return1: torch.Tensor, return2: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: P[sigma1 > sigma2] = exp(R1) / (exp(R1) + exp(R2)) = sigmoid(R1 - R2), R the summed rewards."""
    return torch.sigmoid(return1 - return2)


def bradley_terry_loss(return1: torch.Tensor, return2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-mean[ y log P + (1 - y) log(1 - P) ], P = sigmoid(R1 - R2): the cross-entropy of the labels, computed from
    the logit R1 - R2 (stable for large differences, where log P would underflow)."""
    return F.binary_cross_entropy_with_logits(return1 - return2, labels)


def disagreement(probabilities: torch.Tensor) -> torch.Tensor:
    """The ensemble's disagreement on each pair: the variance over the K members ([K, M] -> [M], population form)."""
    return probabilities.var(dim=0, unbiased=False)


def normalize_reward(rewards: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """r~ = (r - mu_r) / sigma_r: zero mean and unit standard deviation over the data mu_r, sigma_r come from."""
    return (rewards - mean) / (std + 1e-8)


class RewardEnsemble(nn.Module):
    """K reward models r_k(s, a), MLPs on the normalised observation and the action.

    The observation statistics (in_mean, in_var) and the learned reward's normalisation (reward_mean, reward_std)
    are buffers: set at each training round, frozen in between, saved in the state_dict with the weights.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int = 64, ensemble_size: int = 3,
                 clip_obs: float = 10.0):
        super().__init__()
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(obs_dim + action_dim, hidden_size), nn.ReLU(),
                          nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1))
            for _ in range(ensemble_size)
        )
        self.clip_obs = clip_obs
        self.register_buffer("in_mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("in_var", torch.ones(obs_dim, dtype=torch.float64))
        self.register_buffer("reward_mean", torch.zeros((), dtype=torch.float32))
        self.register_buffer("reward_std", torch.ones((), dtype=torch.float32))

    def inputs(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[normalised observation, action]: the observation as normalize_obs does it, with the frozen statistics."""
        x = ((obs - self.in_mean) / torch.sqrt(self.in_var + 1e-8)).clamp(-self.clip_obs, self.clip_obs).float()
        return torch.cat([x, actions], dim=-1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Each member's reward for raw observations [..., obs_dim] and actions [..., action_dim]: [K, ...]."""
        x = self.inputs(obs, actions)
        return torch.stack([member(x).squeeze(-1) for member in self.members])

    def member_segment_returns(self, k: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """R_k(sigma) of member k alone, for segments [..., L, obs_dim] (training: each member on its own pairs)."""
        return self.members[k](self.inputs(obs, actions)).squeeze(-1).sum(-1)

    def segment_returns(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """R_k(sigma) = sum_t r_k(s_t, a_t) of segments [..., L, obs_dim]: [K, ...]."""
        return self(obs, actions).sum(-1)

    @torch.no_grad()
    def policy_reward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The reward the policy is trained on: the members' mean, normalised (zero mean, unit std on the pool)."""
        return normalize_reward(self(obs, actions).mean(0), self.reward_mean, self.reward_std)


def choose_queries(model: RewardEnsemble, pool_obs: torch.Tensor, pool_actions: torch.Tensor, count: int,
                   num_labels: int, candidate_factor: int, query: str, rng: np.random.Generator) -> np.ndarray:
    """`num_labels` pairs [n, 2] of pool indices to ask about: `candidate_factor * num_labels` random pairs of two
    different segments, then those the ensemble disagrees on most (--query disagreement) or the first ones."""
    first = rng.integers(count, size=candidate_factor * num_labels)
    second = (first + rng.integers(1, count, size=len(first))) % count  # never the same segment twice
    candidates = np.stack([first, second], axis=1)
    if query == "uniform":
        return candidates[:num_labels]
    with torch.no_grad():
        returns = model.segment_returns(pool_obs[candidates], pool_actions[candidates])  # [K, C, 2]
        score = disagreement(preference_probability(returns[..., 0], returns[..., 1]))
    order = np.argsort(-score.cpu().numpy(), kind="stable")
    return candidates[order[:num_labels]]


def agreement(model: RewardEnsemble, obs: torch.Tensor, actions: torch.Tensor, true_returns: torch.Tensor,
              pairs: np.ndarray) -> float:
    """The fraction of pairs (ties in the true return left out) on which the ensemble's mean preference
    probability is above 1/2 exactly when the first segment's true return is the larger; NaN without pairs."""
    first, second = pairs[:, 0], pairs[:, 1]
    keep = (true_returns[first] != true_returns[second]).cpu().numpy()
    if not keep.any():
        return float("nan")
    first, second = first[keep], second[keep]
    with torch.no_grad():
        returns = model.segment_returns(obs[np.stack([first, second], 1)], actions[np.stack([first, second], 1)])
        p = preference_probability(returns[..., 0], returns[..., 1]).mean(0)
    return float(((p > 0.5) == (true_returns[first] > true_returns[second])).float().mean())


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
    """The trained Agent (the policy) of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "preference_reward")
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
    # report: called at every progress line with (step, mean of the last 20 training episodes' true returns);
    # returning True ends training (the run is then evaluated and returned as usual).
    check_args(args)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
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
    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # raw returns: it sees the true, unscaled rewards
    envs.action_space.seed(args.seed)
    obs_shape = envs.single_observation_space.shape
    low, high = envs.single_action_space.low, envs.single_action_space.high
    obs_rms = RunningMeanStd(obs_shape) if args.norm_obs else None
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward) if args.norm_reward else None

    model_args = {"obs_dim": obs_shape[0], "action_low": low.tolist(), "action_high": high.tolist(),
                  "hidden_size": args.hidden_size, "norm_obs": args.norm_obs, "clip_obs": args.clip_obs}
    agent = Agent(**model_args).to(device)
    # fused=True: one kernel updates all parameters at once; the default loops over a dozen small tensors,
    # which for networks this small costs more than the forward and backward passes
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    # The reward model, its optimiser, the segment pool (a ring of the newest segments) and the labelled pairs.
    reward_model_args = {"obs_dim": obs_shape[0], "action_dim": len(low), "hidden_size": args.reward_hidden_size,
                         "ensemble_size": args.ensemble_size, "clip_obs": args.clip_obs}
    reward_model = RewardEnsemble(**reward_model_args)  # on the CPU, with its data, whatever --cuda says
    reward_optimizer = torch.optim.Adam(reward_model.parameters(), lr=args.reward_learning_rate,
                                        weight_decay=args.reward_weight_decay, fused=True)
    seg_len = args.segment_length
    pool = {"obs": torch.zeros(args.pool_size, seg_len, *obs_shape), "actions": torch.zeros(args.pool_size, seg_len, len(low)),
            "returns": torch.zeros(args.pool_size, dtype=torch.float64), "count": 0, "next": 0}
    pairs = {"obs": torch.zeros(0, 2, seg_len, *obs_shape), "actions": torch.zeros(0, 2, seg_len, len(low)),
             "returns": torch.zeros(0, 2, dtype=torch.float64), "labels": torch.zeros(0)}
    label_rng = np.random.default_rng(args.seed)  # the queries' candidates and the labeller's answers
    generators = {"action_space": envs.action_space.np_random, "labels": label_rng}
    normalisers = {name: rms for name, rms in (("obs", obs_rms), ("reward", reward_scaler and reward_scaler.rms)) if rms}

    # The training state a checkpoint holds; resuming puts it back (schedules run in iterations here).
    global_step, iteration, origin = 0, 0, (0, 0.0)
    raw_obs, _ = envs.reset(seed=args.seed)
    if obs_rms is not None:
        obs_rms.update(raw_obs)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "preference_reward")
        check_resume(ckpt, args, model_args)
        for name in ("true_reward", "segment_length", "pool_size"):
            if ckpt["args"][name] != getattr(args, name):
                fail(f"--resume {args.resume} was trained with --{name.replace('_', '-')} {ckpt['args'][name]}, "
                     f"not {getattr(args, name)}; resume with the options it was trained with")
        if ckpt["reward_model_args"] != reward_model_args:
            fail(f"--resume {args.resume} holds reward models of other sizes ({ckpt['reward_model_args']}, "
                 f"here {reward_model_args}); resume with the options it was trained with")
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        reward_model.load_state_dict(ckpt["reward_model"])
        reward_optimizer.load_state_dict(ckpt["reward_optimizer"])
        pool, pairs = dict(ckpt["pool"]), dict(ckpt["pairs"])
        global_step, iteration, origin = ckpt["global_step"], ckpt["iteration"], tuple(ckpt["schedule_origin"])
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (iteration, progress(iteration, -(-ckpt["args"]["total_timesteps"] // batch_size), origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        for name, rms in normalisers.items():  # the running statistics, float64 as they were
            vars(rms).update({k: v.numpy().copy() for k, v in ckpt["normalisation"].get(name, {}).items()})
        # the interrupted episodes go on where they can; elsewhere new ones start, seeded apart from the first ones
        raw_obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        returns = ckpt["reward_returns"]  # the discounted returns of the episodes in progress, where they go on
        if reward_scaler and returns is not None and ckpt["envs"]["resumable"] and len(returns) == args.num_envs:
            reward_scaler.returns = returns.numpy().copy()
        print(f"resumed from {args.resume} at step {global_step:,}", flush=True)
    next_obs = normalize_obs(raw_obs, obs_rms, args.clip_obs)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "preference_reward", "env_id": args.env_id, "model_args": model_args,
                "model": agent.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "iteration": iteration, "schedule_origin": origin, "rng": rng_state(generators),
                "envs": env_state(envs, raw_obs) if with_envs else {"resumable": False},
                "normalisation": {name: {k: torch.as_tensor(np.asarray(v)) for k, v in vars(rms).items()}
                                  for name, rms in normalisers.items()},
                "reward_returns": torch.as_tensor(reward_scaler.returns) if reward_scaler else None,
                "reward_model_args": reward_model_args, "reward_model": reward_model.state_dict(),
                "reward_optimizer": reward_optimizer.state_dict(), "pool": pool, "pairs": pairs}

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

    # Rollout storage, [num_steps, num_envs, ...], in numpy, as ppo_continuous_action.py's. Besides the normalised
    # observations the policy saw, the raw ones and the clipped actions the environment received (the reward
    # model's inputs) and the true rewards (the labeller's, never the policy's unless --true-reward).
    obs = np.zeros((args.num_steps, args.num_envs, *obs_shape), dtype=np.float32)
    succ_obs = np.zeros_like(obs)  # the observation that followed each step (the final one at episode ends)
    raw_obs_buf = np.zeros_like(obs)
    actions = np.zeros((args.num_steps, args.num_envs, len(low)), dtype=np.float32)
    env_actions = np.zeros_like(actions)
    true_rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    terminations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    truncations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    recent_agreement: deque[float] = deque(maxlen=20)
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

        # Collect the rollout: only the actor runs per step (see ppo_continuous_action.py).
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            raw_obs_buf[step] = raw_obs
            action = agent.sample_action(torch.as_tensor(next_obs, dtype=torch.float32, device=device)).cpu().numpy()
            actions[step] = action  # unclipped: its log-probability is the one the ratio needs
            env_actions[step] = np.clip(action, low, high)
            raw_obs, true_rewards[step], terminations[step], truncations[step], infos = envs.step(env_actions[step])
            if args.nan_check and (bad := nonfinite_step(raw_obs, true_rewards[step], infos)):  # before the statistics absorb them
                fault(bad)
            if obs_rms is not None:
                obs_rms.update(raw_obs)
            next_obs = normalize_obs(raw_obs, obs_rms, args.clip_obs)
            succ_obs[step] = next_obs
            if "final_obs" in infos:
                for i in np.flatnonzero(infos["_final_obs"]):
                    succ_obs[step, i] = normalize_obs(infos["final_obs"][i], obs_rms, args.clip_obs)  # not the reset one
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                    recent_returns.append(ep_r)
                    writer.add_scalar("charts/episodic_return", ep_r, global_step)  # the true return, always
                    writer.add_scalar("charts/episodic_length", ep_l, global_step)
        dones = np.logical_or(terminations, truncations)

        if args.true_reward:
            step_rewards = true_rewards
        else:
            # The rollout's segments: first the held-out agreement on them (never labelled or trained on yet),
            # then into the pool.
            starts = cut_segments(dones, seg_len)
            if starts:
                window = np.arange(seg_len)
                seg_obs = torch.as_tensor(np.stack([raw_obs_buf[t + window, e] for t, e in starts]))
                seg_act = torch.as_tensor(np.stack([env_actions[t + window, e] for t, e in starts]))
                seg_ret = torch.as_tensor(np.stack([true_rewards[t + window, e] for t, e in starts]).astype(np.float64).sum(1))
                if len(starts) >= 2:
                    first = label_rng.integers(len(starts), size=args.heldout_pairs)
                    test_pairs = np.stack([first, (first + label_rng.integers(1, len(starts), size=len(first))) % len(starts)], 1)
                    recent_agreement.append(agreement(reward_model, seg_obs, seg_act, seg_ret, test_pairs))
                    writer.add_scalar("charts/reward_agreement", recent_agreement[-1], global_step)
                for j in range(len(starts)):
                    k = pool["next"]
                    pool["obs"][k], pool["actions"][k], pool["returns"][k] = seg_obs[j], seg_act[j], seg_ret[j]
                    pool["next"], pool["count"] = (k + 1) % args.pool_size, min(pool["count"] + 1, args.pool_size)
            # New labels, as the schedule asks, then a training round of the ensemble.
            num_new = label_schedule(progress(iteration - 1, num_iterations, origin), args.total_labels,
                                     args.initial_label_fraction, args.label_until) - len(pairs["labels"])
            if num_new > 0 and pool["count"] >= 2:
                count = pool["count"]
                chosen = choose_queries(reward_model, pool["obs"][:count], pool["actions"][:count], count, num_new,
                                        args.candidate_factor, args.query, label_rng)
                labels = synthetic_labels(pool["returns"][chosen[:, 0]].numpy(), pool["returns"][chosen[:, 1]].numpy(),
                                          args.label_noise, args.labeller_temperature, label_rng)
                for key, new in (("obs", pool["obs"][chosen]), ("actions", pool["actions"][chosen]),
                                 ("returns", pool["returns"][chosen]), ("labels", torch.as_tensor(labels))):
                    pairs[key] = torch.cat([pairs[key], new])
                # the observation statistics the model reads, frozen until the next round
                if obs_rms is not None:
                    reward_model.in_mean.copy_(torch.as_tensor(obs_rms.mean))
                    reward_model.in_var.copy_(torch.as_tensor(obs_rms.var))
                n = len(pairs["labels"])
                boot = torch.randint(n, (args.ensemble_size, n))  # each member's bootstrap of the labelled pairs
                for _ in range(args.reward_updates):
                    idx = boot.gather(1, torch.randint(n, (args.ensemble_size, min(args.reward_batch_size, n))))
                    reward_loss = sum(
                        bradley_terry_loss(*reward_model.member_segment_returns(k, pairs["obs"][idx[k]], pairs["actions"][idx[k]])
                                           .unbind(-1), pairs["labels"][idx[k]])
                        for k in range(args.ensemble_size))
                    reward_optimizer.zero_grad()
                    reward_loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(reward_model.parameters(), math.inf, foreach=True)
                    if args.nan_check and not math.isfinite(reward_loss.detach() + grad_norm):
                        fault("reward model loss" if not torch.isfinite(reward_loss) else "reward model gradient norm")
                    reward_optimizer.step()
                with torch.no_grad():  # the learned reward's scale on the pool: zero mean, unit std for the policy
                    pool_rewards = reward_model(pool["obs"][:count], pool["actions"][:count]).mean(0)
                    reward_model.reward_mean.copy_(pool_rewards.mean())
                    reward_model.reward_std.copy_(pool_rewards.std(unbiased=False))
                    fitted = reward_model.segment_returns(pairs["obs"], pairs["actions"])
                    p = preference_probability(fitted[..., 0], fitted[..., 1]).mean(0)
                    decided = pairs["labels"] != 0.5
                    accuracy = ((p > 0.5) == (pairs["labels"] > 0.5))[decided].float().mean() if decided.any() \
                        else p.new_tensor(math.nan)  # on the labelled pairs (ties left out)
                writer.add_scalar("losses/reward_loss", reward_loss.item() / args.ensemble_size, global_step)
                writer.add_scalar("losses/reward_accuracy", accuracy.item(), global_step)
            writer.add_scalar("charts/labels", len(pairs["labels"]), global_step)
            step_rewards = reward_model.policy_reward(torch.as_tensor(raw_obs_buf), torch.as_tensor(env_actions)).numpy()
        # PPO's own return-based scaling, step by step in rollout order, as ppo_continuous_action.py does it
        for step in range(args.num_steps):
            rewards[step] = step_rewards[step] if reward_scaler is None else reward_scaler(step_rewards[step], dones[step])

        # One batched pass: log pi_old(a|s), V(s) and V(s') of the whole rollout.
        b_obs = torch.as_tensor(obs.reshape(-1, *obs_shape), device=device)
        b_actions = torch.as_tensor(actions.reshape(-1, len(low)), device=device)
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
                if args.norm_adv and len(mb) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss, v_loss, logratio = ppo_loss(
                    new_logprob, b_logprobs[mb], mb_adv, new_value, b_values[mb], b_returns[mb], clip_now, args.clip_vloss
                )
                if args.target_kl is not None and approx_kl(logratio) > 1.5 * args.target_kl:
                    stop_epochs = True  # as SB3: skip this update and end the rollout's epochs
                    break
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
                # one host sync per minibatch; before optimizer.step(), so the networks stay finite
                if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
                    fault("loss" if not torch.isfinite(loss) else "gradient norm")
                optimizer.step()
            if stop_epochs:
                break
        if obs_rms is not None:  # the statistics become part of the policy (see Agent), in every checkpoint
            agent.obs_mean.copy_(torch.as_tensor(obs_rms.mean))
            agent.obs_var.copy_(torch.as_tensor(obs_rms.var))

        # Logging once per rollout, from the last minibatch: the only host syncs of the iteration.
        var_y = b_returns.var()
        explained_var = float("nan") if var_y == 0 else float(1 - (b_returns - b_values).var() / var_y)
        sps = int((global_step - start_step) / (time.time() - start_time))
        stats = {
            "charts/learning_rate": lr_now,
            "losses/value_loss": v_loss.item(),
            "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy.mean().item(),
            "losses/approx_kl": approx_kl(logratio).item(),
            "losses/clipfrac": ((logratio.exp() - 1.0).abs() > clip_now).float().mean().item(),
            "losses/explained_variance": explained_var,
            "charts/action_std": agent.actor_logstd.exp().mean().item(),
            "charts/SPS": sps,
        }
        for key, val in stats.items():
            writer.add_scalar(key, val, global_step)
        if global_step >= next_log or iteration == num_iterations:
            next_log = (global_step // args.log_every + 1) * args.log_every
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            labelled = "" if args.true_reward else (
                f"  labels {len(pairs['labels']):>5,}  agreement {np.nanmean(recent_agreement) if recent_agreement else math.nan:.3f}")
            print(f"step {global_step:>9,}  SPS {sps:>6,}  true return(last 20 episodes) {recent}{labelled}", flush=True)
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

    eval_returns = evaluate(agent, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic, true reward); trained {global_step - start_step:,} steps in {train_time:.1f}s")
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
        "labels": len(pairs["labels"]),
        "reward_agreement": float(np.nanmean(recent_agreement)) if recent_agreement else math.nan,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
