r"""Generative adversarial imitation learning (GAIL) and adversarial inverse RL (AIRL), on PPO.

Papers: Ho & Ermon (2016), "Generative Adversarial Imitation Learning", https://arxiv.org/abs/1606.03476;
Fu, Luo & Levine (2018), "Learning Robust Rewards with Adversarial Inverse Reinforcement Learning",
https://arxiv.org/abs/1710.11248 (--airl); absorbing states from Kostrikov, Agrawal, Dwibedi, Levine & Tompson
(2019), "Discriminator-Actor-Critic: Addressing Sample Inefficiency and Reward Bias in Adversarial Imitation
Learning", https://arxiv.org/abs/1809.02925, section 4.2. The learner is PPO as in ppo.py (Discrete actions) and
ppo_continuous_action.py (Box actions), with their helpers copied verbatim; only the reward it is given differs.

Run (the expert demonstrations are Minari datasets of this collection's own policies, tools/make_dataset.py):
    python algorithms/gail.py                                      # CartPole-v1, 200k steps, onefile/cartpole/expert-v0
    python algorithms/gail.py --airl                               # AIRL on the same demonstrations
    python algorithms/gail.py --env-id Acrobot-v1 --expert-dataset-id onefile/acrobot/expert-v0 --gamma 0.99 \
        --gae-lambda 0.94                                          # Acrobot, ppo.py's Acrobot settings
    python algorithms/gail.py --env-id Acrobot-v1 --expert-dataset-id onefile/acrobot/expert-v0 --gamma 0.99 \
        --gae-lambda 0.94 --no-absorbing                           # the survival bonus, shown
    python algorithms/gail.py --env-id Hopper-v5 --expert-dataset-id onefile/hopper/expert-clean-v0 \
        --total-timesteps 1000000 --num-envs 1 --num-steps 2048 --num-minibatches 32 --learning-rate 3e-4 \
        --gamma 0.99 --gae-lambda 0.95 --no-anneal-clip \
        --disc-obs-norm policy --disc-activation tanh --disc-hidden-size 100 --grad-penalty 10 --no-gp-indicator
                                      # ppo_continuous_action.py's MuJoCo settings; the discriminator for MuJoCo
    python algorithms/gail.py --help                               # every hyperparameter, with its meaning

Tested: CartPole-v1 >= 475 and Acrobot-v1 >= 0.9 normalised in 200k steps from 10 expert episodes (tests/test_gail.py, slow).
Results: benchmark_results/gail.md

The math, as written in the code below. D(s, a) is the probability that a pair is the expert's (label 1; the
policy's pairs are labelled 0); the discriminator outputs its logit l, D = sigmoid(l). (Ho & Ermon's D is the
other way round, the policy's probability, with the cost log D; the two conventions give the same reward.)
    discriminator loss  L_D = -mean_E log D - mean_pi log(1 - D) = mean_E softplus(-l) + mean_pi softplus(l)
                        (binary cross-entropy; every minibatch holds as many expert pairs as policy pairs)
    gradient penalty    + c * mean( (||grad_x score(x_mix)|| - 1)^2 ),  x_mix = u x_E + (1 - u) x_pi, u ~ U(0, 1)
                        (--grad-penalty c, Gulrajani et al. 2017 as DAC uses it; 0 by default; with
                        --no-gp-indicator the absorbing indicator's coordinate is left out of the norm)
    GAIL                l(s, a) = MLP([s~, a~]);   policy reward r = -log(1 - D) = softplus(l) > 0
    AIRL                f(s, a, s') = g(s~) + gamma * h(s~') - h(s~)   (state-only g: the paper's disentangled reward)
                        D = exp(f) / (exp(f) + pi(a|s)),  so l = f - log pi(a|s)
                        policy reward r = log D - log(1 - D) = l = f - log pi(a|s)
                        (log pi is the current policy's, computed for the expert's pairs too)
    absorbing states    on termination (not truncation) the transition goes to an absorbing state s_a, and one
                        more transition (s_a, 0, s_a) follows it; the policy's rollouts and the expert's data get
                        the same, so D learns r_a = r(s_a, 0) like any other reward. The absorbing state loops
                        forever with reward r_a, so its value is exactly V(s_a) = r_a / (1 - gamma): a terminated
                        step bootstraps from gamma * V(s_a) instead of 0 (the GAE recursion still stops there).
                        At s_a the policy has no choice: log pi = 0 in AIRL's l.
    features            s~ = [(s - mean_E) / (std_E + 1e-3), 0], s_a = [0, ..., 0, 1]  (mean_E, std_E: the expert's
                        observations, fixed); with --disc-obs-norm policy s~ = [clip((s - mean_pi) / std_pi, +-clip_obs), 0]
                        (mean_pi, std_pi: running statistics of the policy's states, updated with every rollout);
                        a~ = one-hot (Discrete) or the clipped action scaled to [-1, 1] (Box)
    score               R_norm = (R - R_random) / (R_expert - R_random), R_expert the mean return of the
                        demonstrations used, R_random a uniformly random policy's mean over --random-episodes
The PPO update itself is ppo.py's (see its docstring): clipped surrogate, GAE, value loss, on these rewards.

Why absorbing states: without them a terminated episode's value is 0, and GAIL's reward -log(1 - D) is always
positive, so every step alive pays: the reward alone teaches an agent to survive (CartPole-v1 is solved by that
bias whatever D says) and never to finish a task that ends on success (Acrobot-v1). AIRL's reward can be
negative, but it still gives the end of an episode a fixed value of 0 rather than a learned one. With absorbing
states the value of ending is learned from whether the expert ends its episodes; --no-absorbing turns them off
(terminated steps bootstrap from 0), to measure the bias. Truncated episodes are not ended: they bootstrap from
the critic's value of the last observation, as in ppo.py.

Notes:
- Observations: the policy and critic see the observations normalised with running statistics, as
  ppo_continuous_action.py does (--norm-obs; the statistics are buffers of the Agent, saved with it); the
  discriminator sees them standardised with the expert demonstrations' fixed mean and std (buffers of the
  Discriminator), so its input does not drift as the policy's statistics move. On Hopper-v5 that discriminator
  (with these defaults) tells the two apart almost perfectly all along and its reward carries little signal
  (benchmark_results/gail.md); what worked there is pytorch-a2c-ppo-acktr-gail's discriminator:
  --disc-obs-norm policy standardises both the expert's and the policy's states with the running mean and std of
  the policy's own states, clipped, with tanh units of 100 and the gradient penalty. The penalty also bounds how far
  the absorbing state [0, ..., 0, 1] may score below the states near it; where the expert never ends its episodes
  (Hopper-v5's) ending then pays about as much as living, so --no-gp-indicator leaves the indicator out of the
  penalty.
- Rewards: the learned rewards are computed for the whole rollout after it is collected and after the
  discriminator's update on it; then (--norm-reward) scaled by the running std of their discounted return, as
  ppo_continuous_action.py scales the true reward. The absorbing value uses the same scale. charts/episodic_return
  and the final evaluation are always the TRUE return (the environment's), which the learner never sees.
- The discriminator is trained --disc-epochs passes over each rollout's transitions (absorbing ones included) in
  minibatches of --disc-batch-size, each with as many expert transitions drawn uniformly (with replacement).
- The vector environment runs in Gymnasium's same-step autoreset mode, as ppo.py's does (the last observation of
  an episode is in info["final_obs"]).

Long runs (the same form as ppo.py's and every deep file's):
    python algorithms/gail.py --checkpoint-every 100000              # runs/<run>/checkpoint_<step>.pt
    python algorithms/gail.py --resume runs/<run>/checkpoint_<step>.pt   # continue up to --total-timesteps
A checkpoint holds the PPO training state of ppo_continuous_action.py (networks, optimiser, normalisation, random
generators, the classic-control environments' state) and the discriminator with its optimiser and the expert
sampler's generator; the demonstrations are read again from the dataset. A resumed run ends bit for bit where an
uninterrupted one ends (classic-control environments; with MuJoCo it starts new episodes). Ctrl-C or SIGTERM
stops after the current update with a checkpoint (exit 130 / 143) and prints the command that resumes it. A NaN
or infinite observation, reward, loss or gradient norm (the policy's or the discriminator's) stops the run at once
(exit 3) and keeps the last finite state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.
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
    exp_name: str = "gail"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the expert sampler and the environments"""
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
    """if toggled, save the training state (policy, discriminator) to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (Discrete or Box actions, flat observations): the demonstrations' own"""
    total_timesteps: int = 200_000
    """total environment steps, summed over the parallel environments"""
    expert_dataset_id: str = "onefile/cartpole/expert-v0"
    """the Minari dataset of expert demonstrations (raw observations) recorded on --env-id (tools/make_dataset.py)"""
    num_expert_episodes: int = 10
    """the demonstrations are the dataset's first this many episodes (0: all of them)"""
    airl: bool = False
    """if toggled, AIRL: D = exp(f) / (exp(f) + pi), f = g(s) + gamma h(s') - h(s), reward f - log pi"""
    absorbing: bool = True
    """if toggled, terminations lead to a learned absorbing state (DAC); off: terminated steps bootstrap from 0"""
    disc_learning_rate: float = 1e-3
    """the discriminator's Adam learning rate"""
    disc_hidden_size: int = 64
    """width of the discriminator's two hidden layers (AIRL: of g's and of h's)"""
    disc_activation: str = "relu"
    """the discriminator's hidden activation (pytorch-a2c-ppo-acktr-gail's GAIL: tanh)"""
    disc_obs_norm: str = "expert"
    """the discriminator standardises states with the expert demonstrations' fixed mean and std, or with the running
    mean and std of the policy's own states, clipped to +-clip_obs (pytorch-a2c-ppo-acktr-gail's GAIL)"""
    disc_epochs: int = 4
    """passes of the discriminator over each rollout's transitions"""
    disc_batch_size: int = 256
    """policy transitions per discriminator minibatch (with as many expert transitions)"""
    disc_max_grad_norm: float = 10.0
    """the maximum norm of the discriminator's gradient (global clipping)"""
    grad_penalty: float = 0.0
    """coefficient of the gradient penalty on expert-policy interpolates (0: none; DAC uses 10)"""
    gp_indicator: bool = True
    """if toggled, the gradient penalty's norm includes the absorbing indicator's coordinate; off, only the states'
    and actions' (the penalty then does not bound how low the absorbing state's score can go)"""
    random_episodes: int = 50
    """episodes of a uniformly random policy measured for R_random, the normalised score's zero"""
    learning_rate: float = 1e-3
    """the policy's Adam learning rate"""
    anneal_lr: bool = True
    """if toggled, the policy's learning rate decays linearly to 0 over training"""
    num_envs: int = 8
    """the number of parallel environments"""
    num_steps: int = 64
    """steps per environment in each rollout (rollout size = num_envs * num_steps)"""
    gamma: float = 0.98
    """the discount factor (also AIRL's gamma in f, the absorbing state's, and the reward scaler's)"""
    gae_lambda: float = 0.8
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 2
    """the number of minibatches each rollout is split into for the policy update"""
    update_epochs: int = 10
    """the number of passes of the policy update over each rollout"""
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
    """the maximum norm of the policy's gradient (global clipping)"""
    target_kl: float | None = None
    """if set, stop a rollout's epochs once a minibatch's approximate KL exceeds 1.5 x target_kl"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    norm_obs: bool = True
    """if toggled, the policy sees observations normalised by their running mean and variance (saved with it)"""
    norm_reward: bool = True
    """if toggled, divide the learned rewards by the running standard deviation of their discounted return"""
    clip_obs: float = 10.0
    """normalised observations are clipped to [-clip_obs, clip_obs]"""
    clip_reward: float = 10.0
    """normalised rewards are clipped to [-clip_reward, clip_reward]"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (argmax, or the mean action clipped to the bounds)"""
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
                 "hidden_size", "torch_threads", "log_every", "disc_hidden_size", "disc_epochs", "disc_batch_size",
                 "random_episodes"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name, choices in (("disc_activation", ("relu", "tanh")), ("disc_obs_norm", ("expert", "policy"))):
        if getattr(args, name) not in choices:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} is unknown; choose one of {', '.join(choices)}")
    if not args.num_expert_episodes >= 0:
        fail(f"--num-expert-episodes must be >= 0 (0: all of the dataset's), got {args.num_expert_episodes}")
    if (args.num_envs * args.num_steps) % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} must divide the rollout size num_envs * num_steps "
             f"= {args.num_envs * args.num_steps}")
    if not 0 < args.learning_rate < math.inf or not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        fail("need 0 < --learning-rate < inf, 0 < --gamma <= 1 and 0 <= --gae-lambda <= 1")
    if args.absorbing and not args.gamma < 1:
        fail(f"absorbing states need --gamma < 1 (their value is r / (1 - gamma)), got {args.gamma}; or --no-absorbing")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    for name, value, low in (("clip-coef", args.clip_coef, 0), ("ent-coef", args.ent_coef, 0), ("vf-coef", args.vf_coef, 0),
                             ("grad-penalty", args.grad_penalty, 0)):
        if not low <= value < math.inf:
            fail(f"--{name} must be a finite number >= {low}, got {value}")
    for name, value in (("disc-learning-rate", args.disc_learning_rate), ("disc-max-grad-norm", args.disc_max_grad_norm)):
        if not 0 < value < math.inf:
            fail(f"--{name} must be a positive finite number, got {value}")
    if not args.max_grad_norm > 0 or (args.target_kl is not None and not 0 < args.target_kl < math.inf):
        fail(f"need --max-grad-norm > 0 and --target-kl > 0 (finite), got {args.max_grad_norm} and {args.target_kl}")
    if not 0 < args.clip_obs < math.inf or not 0 < args.clip_reward < math.inf:
        fail(f"--clip-obs and --clip-reward must be positive and finite, got {args.clip_obs} and {args.clip_reward}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    try:
        env_spec(args.env_id)
    except gym.error.Error as error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or Acrobot-v1")
    probe = gym.make(args.env_id)
    action_space, obs_space, env_class = probe.action_space, probe.observation_space, type(probe.unwrapped)
    probe.close()
    if not (isinstance(action_space, gym.spaces.Discrete)
            or (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1)):
        fail(f"gail.py needs Discrete or one-dimensional Box actions, {args.env_id} has {action_space}; "
             "use an environment such as CartPole-v1 or Hopper-v5")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"gail.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as CartPole-v1 or Hopper-v5")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")
    check_expert_dataset(args.expert_dataset_id, args.env_id, env_class, action_space, obs_space, args.num_expert_episodes)


def check_expert_dataset(dataset_id: str, env_id: str, env_class: type, action_space: gym.Space, obs_space: gym.Space,
                         num_episodes: int):
    """The demonstrations are a local Minari dataset recorded on this environment, with at least `num_episodes`
    episodes; returns it. Nothing is downloaded. "This environment": the same simulator (the class of the unwrapped
    environment, so that wrappers of it pass: Hopper-v4's data is refused on Hopper-v5) and the same spaces."""
    import minari

    path = minari.storage.get_dataset_path(dataset_id)
    if not dataset_id or not os.path.isdir(os.path.join(path, "data")):
        fail(f"--expert-dataset-id {dataset_id}: no such Minari dataset under {minari.storage.get_dataset_path()} "
             f"(demonstrations on --env-id {env_id} are needed: build them with tools/make_dataset.py, or set "
             "MINARI_DATASETS_PATH)")
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as error:  # noqa: BLE001 - any unreadable dataset is the same bad input
        fail(f"--expert-dataset-id {dataset_id} cannot be read: {type(error).__name__}: "
             f"{(str(error).splitlines() or [''])[0]}")
    if type(dataset.action_space) is not type(action_space) or dataset.action_space.shape != action_space.shape:
        fail(f"--expert-dataset-id {dataset_id} has {dataset.action_space} actions, --env-id {env_id} has "
             f"{action_space}: the demonstrations must come from the same environment")
    recorded = dataset.env_spec.id if dataset.env_spec is not None else "an unknown environment"
    try:
        probe = dataset.recover_environment()
        recorded_class = type(probe.unwrapped)
        probe.close()
    except Exception as error:  # noqa: BLE001 - an environment that is not installed, or not registered here
        fail(f"--expert-dataset-id {dataset_id}: its environment {recorded} cannot be created here: "
             f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
    if recorded_class is not env_class or dataset.observation_space != obs_space or dataset.action_space != action_space:
        fail(f"--expert-dataset-id {dataset_id} was recorded on {recorded}, not on --env-id {env_id}; "
             "give the environment of the demonstrations")
    if not 0 < dataset.total_episodes >= num_episodes:
        fail(f"--num-expert-episodes {num_episodes}: --expert-dataset-id {dataset_id} holds {dataset.total_episodes} "
             "episodes")
    return dataset


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
    """Separate actor and critic MLPs. The actor gives the logits of a categorical policy (Discrete actions, as
    ppo.py) or the mean of a Gaussian whose log_std is a free parameter (Box actions, as ppo_continuous_action.py).

    The networks, sample_action and evaluate_actions take normalised observations, as the rollout stores them.
    greedy_action takes raw ones: it normalises them with obs_mean / obs_var, the statistics the policy was trained
    with, then takes the argmax or the mean clipped to the action bounds. Statistics and bounds are buffers: they
    move with .to(device) and are saved in the state_dict, with the weights.
    """

    def __init__(self, obs_dim: int, act_dim: int, continuous: bool, hidden_size: int = 64,
                 action_low: list[float] | None = None, action_high: list[float] | None = None,
                 norm_obs: bool = False, clip_obs: float = 10.0):
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
            # a small last layer starts the policy near uniform (Discrete) or near a zero mean (Box)
            layer_init(nn.Linear(hidden_size, act_dim), std=0.01),
        )
        if continuous:  # state-independent log standard deviation, starting at sigma = 1 (CleanRL, SB3)
            self.actor_logstd = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))
        self.norm_obs, self.clip_obs = norm_obs, clip_obs
        self.register_buffer("obs_mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(obs_dim, dtype=torch.float64))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    @torch.no_grad()
    def sample_action(self, x: torch.Tensor) -> torch.Tensor:
        """Sample a ~ pi(.|x) (Box: unclipped): all the rollout needs per step."""
        out = self.actor(x)
        if self.continuous:
            return out + self.actor_logstd.exp() * torch.randn_like(out)
        return torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(-1)

    def evaluate_actions(self, x: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (log pi(action|x), entropy of pi(.|x), V(x)) for the update (and AIRL's log pi)."""
        out = self.actor(x)
        if self.continuous:
            log_std = self.actor_logstd.expand_as(out)
            return gaussian_log_prob(action, out, log_std), gaussian_entropy(log_std), self.get_value(x)
        logp_all = torch.log_softmax(out, dim=-1)  # the categorical distribution, written out
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy, self.get_value(x)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic action for raw observations x (normalised as normalize_obs does): the argmax, or the
        mean clipped to the bounds."""
        if self.norm_obs:
            x = ((x - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-self.clip_obs, self.clip_obs).float()
        out = self.actor(x)
        return torch.clamp(out, self.action_low, self.action_high) if self.continuous else out.argmax(-1)


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


def obs_statistics(obs: np.ndarray, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The mean and std + eps of the states trained on (CORL's eps keeps a constant feature finite)."""
    return obs.mean(axis=0), obs.std(axis=0) + eps


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def discriminator_loss(expert_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, expert pairs labelled 1 and the policy's 0, D = sigmoid(logit):
    -mean log D(expert) - mean log(1 - D(policy)) = mean softplus(-l_E) + mean softplus(l_pi)."""
    return F.softplus(-expert_logits).mean() + F.softplus(policy_logits).mean()


def gail_reward(logits: torch.Tensor) -> torch.Tensor:
    """GAIL's policy reward -log(1 - D) = softplus(l): always positive (the survival bonus of the docstring)."""
    return F.softplus(logits)


def airl_reward(logits: torch.Tensor) -> torch.Tensor:
    """AIRL's policy reward log D - log(1 - D), which is the logit itself: l = f - log pi(a|s)."""
    return logits


def airl_f(g: torch.Tensor, h: torch.Tensor, h_next: torch.Tensor, gamma: float, not_done: torch.Tensor) -> torch.Tensor:
    """AIRL's f(s, a, s') = g(s) + gamma * h(s') - h(s); not_done = 0 drops h(s') after a termination that does not go
    to an absorbing state (--no-absorbing), where the episode's future is worth 0."""
    return g + gamma * not_done * h_next - h


def with_absorbing(states: torch.Tensor, actions: torch.Tensor, next_states: torch.Tensor, terminations: torch.Tensor,
                   absorbing: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The discriminator's transitions (s~, a~, s~', not_done, is_absorbing) from encoded ones [B, ...].

    The encoded states end in the absorbing indicator (0 here). With absorbing states (DAC, section 4.2) a
    terminated transition's next state becomes s_a = [0, ..., 0, 1], and one transition (s_a, 0, s_a) per
    termination is appended after the B given ones; not_done is then 1 everywhere (nothing ends: the absorbing
    state loops). Truncated transitions are left alone (a time limit is not an end). Without absorbing states
    nothing is appended and not_done = 1 - terminated.
    """
    term = terminations > 0
    if not absorbing:
        return states, actions, next_states, 1.0 - term.float(), term.new_zeros(len(states))
    s_a = states.new_zeros(states.shape[1])
    s_a[-1] = 1.0
    k = int(term.sum())
    next_states = torch.where(term.unsqueeze(-1), s_a, next_states)
    states = torch.cat([states, s_a.expand(k, -1)])
    actions = torch.cat([actions, actions.new_zeros(k, actions.shape[1])])
    next_states = torch.cat([next_states, s_a.expand(k, -1)])
    is_absorbing = torch.cat([term.new_zeros(len(term)), term.new_ones(k)])
    return states, actions, next_states, states.new_ones(len(states)), is_absorbing


def absorbing_value(reward: float, gamma: float) -> float:
    """The value of the absorbing state, which loops forever with the same reward: sum_k gamma^k r = r / (1 - gamma)."""
    return reward / (1.0 - gamma)


def normalized_return(mean_return: float, random_return: float, expert_return: float) -> float:
    """(R - R_random) / (R_expert - R_random): 0 for the random policy, 1 for the demonstrations."""
    return (mean_return - random_return) / (expert_return - random_return)


class Discriminator(nn.Module):
    """GAIL's D(s, a) or AIRL's f(s, a, s'), on encoded inputs (see `encode_states`, `encode_actions`).

    The observation mean and std (the expert's, fixed after the demonstrations are read; or with --disc-obs-norm
    policy the policy's running ones, copied in before each update) and the action bounds (Box) are buffers, saved
    in the state_dict with the weights. `clip` > 0 clips the standardised states; `activation` is mlp's ReLU or tanh.
    """

    def __init__(self, obs_dim: int, act_dim: int, continuous: bool, hidden_size: int, airl: bool, gamma: float,
                 action_low: list[float] | None = None, action_high: list[float] | None = None,
                 activation: str = "relu", clip: float = 0.0):
        super().__init__()
        self.act_dim, self.continuous, self.airl, self.gamma, self.clip = act_dim, continuous, airl, gamma, clip

        def net(in_dim: int) -> nn.Sequential:  # mlp's ReLUs, or tanh in their place
            layers = mlp(in_dim, 1, (hidden_size, hidden_size))
            return nn.Sequential(*(nn.Tanh() if activation == "tanh" and isinstance(m, nn.ReLU) else m for m in layers))

        if airl:  # a state-only reward g and a shaping potential h
            self.g = net(obs_dim + 1)
            self.h = net(obs_dim + 1)
        else:
            self.net = net(obs_dim + 1 + act_dim)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        if continuous:
            self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))

    def encode_states(self, obs: torch.Tensor) -> torch.Tensor:
        """s~ = [(s - mean) / std, 0]: standardised with the buffers' statistics (the expert's, or the policy's running
        ones, then clipped to [-clip, clip]; clip 0: not clipped), absorbing indicator 0."""
        x = (obs - self.obs_mean) / self.obs_std
        if self.clip > 0:
            x = x.clamp(-self.clip, self.clip)
        return torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1)

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """a~: one-hot (Discrete); the action clipped to the bounds and scaled to [-1, 1] (Box)."""
        if not self.continuous:
            return F.one_hot(actions.long(), self.act_dim).float()
        half = (self.action_high - self.action_low) / 2
        return (torch.clamp(actions, self.action_low, self.action_high) - self.action_low) / half - 1.0

    def score(self, states: torch.Tensor, actions: torch.Tensor, next_states: torch.Tensor,
              not_done: torch.Tensor) -> torch.Tensor:
        """The learned part: GAIL's logit l(s, a), or AIRL's f(s, a, s') (which ignores the action)."""
        if self.airl:
            return airl_f(self.g(states).squeeze(-1), self.h(states).squeeze(-1), self.h(next_states).squeeze(-1),
                          self.gamma, not_done)
        return self.net(torch.cat([states, actions], dim=-1)).squeeze(-1)

    def logits(self, states: torch.Tensor, actions: torch.Tensor, next_states: torch.Tensor, not_done: torch.Tensor,
               log_pi: torch.Tensor) -> torch.Tensor:
        """The logit of D: GAIL's l(s, a); AIRL's f - log pi(a|s), since exp(f) / (exp(f) + pi) = sigmoid(f - log pi)."""
        score = self.score(states, actions, next_states, not_done)
        return score - log_pi if self.airl else score

    def reward(self, logits: torch.Tensor) -> torch.Tensor:
        """The policy's reward from D's logit: GAIL -log(1 - D), AIRL log D - log(1 - D)."""
        return airl_reward(logits) if self.airl else gail_reward(logits)


def gradient_penalty(disc: Discriminator, expert: tuple, policy: tuple, indicator: bool = True) -> torch.Tensor:
    """mean( (||grad score(x_mix)|| - 1)^2 ) at x_mix = u x_E + (1 - u) x_pi, u ~ U(0, 1) per pair, the gradient
    taken over the inputs (s~, a~, s~') that the score uses; not_done is the policy pair's. indicator=False leaves
    the absorbing indicator (the last coordinate of s~ and s~') out of the gradient's norm, so that the penalty
    does not bound how far the absorbing state's score may fall below the other states'."""
    u = torch.rand(len(policy[0]), 1, device=policy[0].device)
    mixed = [(u * e + (1 - u) * p).requires_grad_(True) for e, p in zip(expert[:3], policy[:3], strict=True)]
    score = disc.score(*mixed, policy[3])
    grads = torch.autograd.grad(score.sum(), mixed, create_graph=True, allow_unused=True)  # AIRL's f ignores a~
    if not indicator:
        grads = [g if g is None or k == 1 else g[..., :-1] for k, g in enumerate(grads)]  # k = 1: the action's
    norm = torch.cat([g for g in grads if g is not None], dim=-1).norm(dim=-1)
    return ((norm - 1.0) ** 2).mean()


def random_returns(env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of a uniformly random policy (R_random of the normalised score), one per episode."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


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
    ckpt = load_checkpoint(path, "gail")
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
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # the TRUE returns: the learner never sees them
    envs.action_space.seed(args.seed)
    obs_shape = envs.single_observation_space.shape
    space = envs.single_action_space
    continuous = isinstance(space, gym.spaces.Box)
    act_dim = space.shape[0] if continuous else int(space.n)
    low, high = (space.low, space.high) if continuous else (None, None)
    obs_rms = RunningMeanStd(obs_shape) if args.norm_obs else None
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward) if args.norm_reward else None

    # The demonstrations: the dataset's first --num-expert-episodes episodes, raw observations.
    dataset = check_expert_dataset(args.expert_dataset_id, args.env_id, type(envs.unwrapped.envs[0].unwrapped), space,
                                   envs.single_observation_space, args.num_expert_episodes)
    data = load_transitions(dataset)
    n_episodes = args.num_expert_episodes or len(data["episode_returns"])
    keep = data["episode"] < n_episodes
    expert_return = float(np.mean(data["episode_returns"][:n_episodes]))
    print(f"{args.expert_dataset_id}: {int(keep.sum()):,} expert transitions in {n_episodes} episodes, mean return "
          f"{expert_return:.1f}", flush=True)

    model_args = {"obs_dim": obs_shape[0], "act_dim": act_dim, "continuous": continuous, "hidden_size": args.hidden_size,
                  "action_low": None if low is None else low.tolist(), "action_high": None if high is None else high.tolist(),
                  "norm_obs": args.norm_obs, "clip_obs": args.clip_obs}
    agent = Agent(**model_args).to(device)
    disc_args = {"obs_dim": obs_shape[0], "act_dim": act_dim, "continuous": continuous,
                 "hidden_size": args.disc_hidden_size, "airl": args.airl, "gamma": args.gamma,
                 "action_low": model_args["action_low"], "action_high": model_args["action_high"],
                 "activation": args.disc_activation, "clip": args.clip_obs if args.disc_obs_norm == "policy" else 0.0}
    disc = Discriminator(**disc_args).to(device)
    mean_e, std_e = obs_statistics(data["observations"][keep])
    disc.obs_mean.copy_(torch.as_tensor(mean_e))
    disc.obs_std.copy_(torch.as_tensor(std_e))
    # --disc-obs-norm policy: the running statistics of the policy's states (the rollouts'), copied into disc's
    # buffers before each discriminator update; the expert's states are then encoded again with them
    disc_rms = RunningMeanStd(obs_shape) if args.disc_obs_norm == "policy" else None
    # fused=True: one kernel updates all parameters at once; the default loops over a dozen small tensors,
    # which for networks this small costs more than the forward and backward passes
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    disc_optimizer = torch.optim.Adam(disc.parameters(), lr=args.disc_learning_rate, fused=True)
    expert_rng = np.random.default_rng(args.seed)  # draws the expert half of each discriminator minibatch
    generators = {"action_space": envs.action_space.np_random, "expert_sampler": expert_rng}
    normalisers = {name: rms for name, rms in (("obs", obs_rms), ("reward", reward_scaler and reward_scaler.rms),
                                               ("disc_obs", disc_rms)) if rms}

    # The expert's transitions as the discriminator sees them (absorbing ones appended), and their raw
    # observations and actions, for AIRL's log pi under the current policy (zeros on absorbing rows: log pi = 0).
    def as_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, device=device)

    e_obs, e_act = as_tensor(data["observations"][keep]), as_tensor(data["actions"][keep].astype(np.float32))
    e_next, e_term = as_tensor(data["next_observations"][keep]), as_tensor(data["terminations"][keep])

    @torch.no_grad()
    def encode_expert() -> tuple[torch.Tensor, ...]:
        return with_absorbing(disc.encode_states(e_obs), disc.encode_actions(e_act), disc.encode_states(e_next), e_term,
                              args.absorbing)

    expert = encode_expert()
    n_abs = int(expert[4].sum())
    e_raw_obs = torch.cat([e_obs, e_obs.new_zeros(n_abs, obs_shape[0])])
    e_raw_act = torch.cat([e_act, e_act.new_zeros(n_abs, *e_act.shape[1:])])

    def log_pi(raw_obs: torch.Tensor, raw_actions: torch.Tensor, is_absorbing: torch.Tensor) -> torch.Tensor:
        """AIRL's log pi(a|s) of the current policy for raw observations (0 on absorbing rows); GAIL: zeros."""
        if not args.airl:
            return torch.zeros(len(raw_obs), device=device)
        x = raw_obs
        if obs_rms is not None:
            x = ((x - as_tensor(obs_rms.mean)) / torch.sqrt(as_tensor(obs_rms.var) + 1e-8)).clamp(-args.clip_obs, args.clip_obs)
        with torch.no_grad():
            logp = agent.evaluate_actions(x.float(), raw_actions if continuous else raw_actions.long())[0]
        return torch.where(is_absorbing, 0.0, logp)

    # The training state a checkpoint holds; resuming puts it back (schedules run in iterations here).
    global_step, iteration, origin = 0, 0, (0, 0.0)
    raw_obs, _ = envs.reset(seed=args.seed)
    if obs_rms is not None:
        obs_rms.update(raw_obs)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "gail")
        check_resume(ckpt, args, model_args)
        if ckpt["disc_args"] != disc_args or ckpt["expert"] != [args.expert_dataset_id, n_episodes, args.absorbing]:
            fail(f"--resume {args.resume} was trained with another discriminator or other demonstrations "
                 f"({ckpt['disc_args']}, {ckpt['expert']}); resume with the options it was trained with")
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        disc.load_state_dict(ckpt["discriminator"])
        disc_optimizer.load_state_dict(ckpt["discriminator_optimizer"])
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
        return {"algo": "gail", "env_id": args.env_id, "model_args": model_args, "model": agent.state_dict(),
                "args": asdict(args), "optimizer": optimizer.state_dict(), "global_step": global_step,
                "iteration": iteration, "schedule_origin": origin, "rng": rng_state(generators),
                "envs": env_state(envs, raw_obs) if with_envs else {"resumable": False},
                "normalisation": {name: {k: torch.as_tensor(np.asarray(v)) for k, v in vars(rms).items()}
                                  for name, rms in normalisers.items()},
                "reward_returns": torch.as_tensor(reward_scaler.returns) if reward_scaler else None,
                "disc_args": disc_args, "discriminator": disc.state_dict(),
                "discriminator_optimizer": disc_optimizer.state_dict(),
                "expert": [args.expert_dataset_id, n_episodes, args.absorbing]}

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

    # Rollout storage, [num_steps, num_envs, ...], in numpy. The policy's observations are stored normalised,
    # as it saw them; the discriminator's raw (it standardises them with the expert's statistics).
    obs = np.zeros((args.num_steps, args.num_envs, *obs_shape), dtype=np.float32)
    succ_obs = np.zeros_like(obs)  # the observation that followed each step (the final one at episode ends)
    raw_b = np.zeros_like(obs)
    raw_succ = np.zeros_like(obs)
    actions = np.zeros((args.num_steps, args.num_envs, *space.shape), dtype=np.float32 if continuous else np.int64)
    terminations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    truncations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

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

        # Collect the rollout: only the actor runs per step. The environment's reward is not stored.
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step], raw_b[step] = next_obs, raw_obs
            action = agent.sample_action(torch.as_tensor(next_obs, dtype=torch.float32, device=device)).cpu().numpy()
            actions[step] = action  # Box: unclipped, its log-probability is the one the ratio needs
            raw_obs, true_reward, terminations[step], truncations[step], infos = envs.step(
                np.clip(action, low, high) if continuous else action)
            if args.nan_check and (bad := nonfinite_step(raw_obs, true_reward, infos)):  # before the statistics absorb them
                fault(bad)
            if obs_rms is not None:
                obs_rms.update(raw_obs)
            next_obs = normalize_obs(raw_obs, obs_rms, args.clip_obs)
            succ_obs[step], raw_succ[step] = next_obs, raw_obs
            if "final_obs" in infos:
                for i in np.flatnonzero(infos["_final_obs"]):  # the last observation, not the reset one
                    succ_obs[step, i] = normalize_obs(infos["final_obs"][i], obs_rms, args.clip_obs)
                    raw_succ[step, i] = infos["final_obs"][i]
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                    recent_returns.append(ep_r)
                    writer.add_scalar("charts/episodic_return", ep_r, global_step)
                    writer.add_scalar("charts/episodic_length", ep_l, global_step)

        if disc_rms is not None:  # --disc-obs-norm policy: the statistics of the policy's states so far
            disc_rms.update(raw_b.reshape(-1, *obs_shape))
            disc.obs_mean.copy_(torch.as_tensor(disc_rms.mean))
            disc.obs_std.copy_(torch.as_tensor(np.sqrt(disc_rms.var + 1e-8)))
            expert = encode_expert()

        # One batched pass: log pi_old(a|s), V(s) and V(s') of the whole rollout.
        b_obs = torch.as_tensor(obs.reshape(-1, *obs_shape), device=device)
        b_actions = torch.as_tensor(actions.reshape(-1, *space.shape), device=device)
        with torch.no_grad():
            b_logprobs, _, b_values = agent.evaluate_actions(b_obs, b_actions)
            b_next_values = agent.get_value(torch.as_tensor(succ_obs.reshape(-1, *obs_shape), device=device))
            b_raw = as_tensor(raw_b.reshape(-1, *obs_shape))
            policy = with_absorbing(disc.encode_states(b_raw), disc.encode_actions(b_actions),
                                    disc.encode_states(as_tensor(raw_succ.reshape(-1, *obs_shape))),
                                    as_tensor(terminations.reshape(-1)), args.absorbing)
        # the rollout's own policy is the current one until the PPO update: its log pi is b_logprobs
        p_logpi = torch.cat([b_logprobs, b_logprobs.new_zeros(len(policy[0]) - batch_size)]) if args.airl else \
            torch.zeros(len(policy[0]), device=device)

        # The discriminator: expert pairs labelled 1, the rollout's 0, as many of each per minibatch.
        disc_stats = []
        for _epoch in range(args.disc_epochs):
            perm = torch.randperm(len(policy[0]), device=device)
            for start in range(0, len(perm), args.disc_batch_size):
                mb = perm[start : start + args.disc_batch_size]
                e_mb = as_tensor(expert_rng.integers(0, len(expert[0]), len(mb)))
                p_in = tuple(x[mb] for x in policy[:4])
                e_in = tuple(x[e_mb] for x in expert[:4])
                policy_logits = disc.logits(*p_in, p_logpi[mb])
                expert_logits = disc.logits(*e_in, log_pi(e_raw_obs[e_mb], e_raw_act[e_mb], expert[4][e_mb]))
                disc_loss = discriminator_loss(expert_logits, policy_logits)
                if args.grad_penalty > 0:
                    disc_loss = disc_loss + args.grad_penalty * gradient_penalty(disc, e_in, p_in, args.gp_indicator)
                disc_optimizer.zero_grad()
                disc_loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(disc.parameters(), args.disc_max_grad_norm, foreach=True)
                if args.nan_check and not math.isfinite(disc_loss.detach() + grad_norm):
                    fault("discriminator loss" if not torch.isfinite(disc_loss) else "discriminator gradient norm")
                disc_optimizer.step()
                disc_stats.append(torch.stack([disc_loss.detach(), (expert_logits > 0).float().mean(),
                                               (policy_logits < 0).float().mean()]))

        # The learned rewards of the rollout (and of the absorbing state), from the updated discriminator.
        with torch.no_grad():
            learned = disc.reward(disc.logits(*(x[:batch_size] for x in policy[:4]), p_logpi[:batch_size]))
            s_a = torch.zeros(1, obs_shape[0] + 1, device=device)  # the absorbing state [0, ..., 0, 1]
            s_a[:, -1] = 1.0
            absorbing_reward = float(disc.reward(disc.score(s_a, torch.zeros(1, act_dim, device=device), s_a,
                                                            torch.ones(1, device=device))))
        learned_np = learned.view(args.num_steps, args.num_envs).cpu().numpy()
        if args.nan_check and not finite(learned_np):
            fault("learned reward")
        dones = np.logical_or(terminations, truncations)
        scale = 1.0
        for step in range(args.num_steps):  # in time order, as ppo_continuous_action.py scales its rewards per step
            rewards[step] = learned_np[step] if reward_scaler is None else reward_scaler(learned_np[step], dones[step])
        if reward_scaler is not None:
            scale = float(np.sqrt(reward_scaler.rms.var + 1e-8))
        b_term = torch.as_tensor(terminations, device=device)
        b_next_values = b_next_values.view(args.num_steps, args.num_envs)
        if args.absorbing:  # a terminated step bootstraps from V(s_a) = r_a / (1 - gamma), and still ends GAE there
            v_abs = absorbing_value(float(np.clip(absorbing_reward / scale, -args.clip_reward, args.clip_reward)), args.gamma)
            b_next_values = torch.where(b_term > 0, v_abs, b_next_values)
            b_term = torch.zeros_like(b_term)
        advantages, returns = compute_gae(
            torch.as_tensor(rewards, device=device), b_values.view(args.num_steps, args.num_envs), b_next_values,
            b_term, torch.as_tensor(dones.astype(np.float32), device=device), args.gamma, args.gae_lambda,
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
        d_loss, acc_expert, acc_policy = torch.stack(disc_stats).mean(0).tolist()
        stats = {
            "charts/learning_rate": lr_now,
            "losses/value_loss": v_loss.item(),
            "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy.mean().item(),
            "losses/approx_kl": approx_kl(logratio).item(),
            "losses/clipfrac": ((logratio.exp() - 1.0).abs() > clip_now).float().mean().item(),
            "losses/explained_variance": explained_var,
            "losses/disc_loss": d_loss,
            "losses/disc_acc_expert": acc_expert,
            "losses/disc_acc_policy": acc_policy,
            "charts/learned_reward": float(learned_np.mean()),
            "charts/absorbing_reward": absorbing_reward,
            "charts/SPS": sps,
        }
        if continuous:
            stats["charts/action_std"] = agent.actor_logstd.exp().mean().item()
        for key, val in stats.items():
            writer.add_scalar(key, val, global_step)
        if global_step >= next_log or iteration == num_iterations:
            next_log = (global_step // args.log_every + 1) * args.log_every
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}  disc loss {d_loss:.3f} "
                  f"acc expert/policy {acc_expert:.2f}/{acc_policy:.2f}  learned reward {learned_np.mean():.3f} "
                  f"(absorbing {absorbing_reward:.3f})",
                  flush=True)
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
    random_return = float(np.mean(random_returns(args.env_id, args.random_episodes, seed=args.seed + 200_000)))
    score = normalized_return(float(np.mean(eval_returns)), random_return, expert_return)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    writer.add_scalar("eval/normalized_return", score, global_step)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); normalised {score:.3f} (expert {expert_return:.1f}, random {random_return:.1f} over "
          f"{args.random_episodes} episodes); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}")
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "normalized_return": score,
        "expert_return": expert_return,
        "random_return": random_return,
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
