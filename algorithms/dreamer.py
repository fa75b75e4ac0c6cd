"""DreamerV3: a world model of discrete latents, and an actor-critic trained on its imagined trajectories.

Paper: Hafner, Pasukonis, Ba, Lillicrap (2023), "Mastering Diverse Domains through World Models",
https://arxiv.org/abs/2301.04104 (the equations below are its section 2 and appendix). The loop, the replay's
checkpointing and the long-run form are those of sac.py.

Run:
    python algorithms/dreamer.py                                         # CartPole-v1, 20k steps
    python algorithms/dreamer.py --env-id Pendulum-v1 --total-timesteps 10000
    python algorithms/dreamer.py --pixels                                # 64x64 renders instead of the state vector
    python algorithms/dreamer.py --save-model --save-buffer              # the final state, which can resume
    python algorithms/dreamer.py --resume runs/<run>/dreamer.pt --total-timesteps 40000
    python algorithms/dreamer.py --help

Sizes: the paper's smallest model (XS) has a 256-unit GRU state, 32 categoricals of 32 classes and 256-unit MLPs,
replays batches of 16 x 64 steps and trains at a replay ratio of 512 replayed steps per environment step; on two
CPU cores that takes hours for 20k steps. The defaults here are a model of about 0.9 million parameters (the count
is printed at the start): a 256-unit GRU state, 16 categoricals of 16 classes, MLPs of one 128-unit hidden layer,
batches of 16 x 16 steps and a train ratio of 16 (an update every 16 environment steps), so that 20k CartPole steps
take 10 to 20 minutes on one shared core. An update's cost is mostly the imagination (B x T start states, H steps):
it grows with B x T and with the widths. The learning rates are larger than the paper's (1e-4 for the model, 3e-5 for
actor and critic) because far fewer updates are made; the two-hot bins (255 over [-20, 20] in symlog space),
gamma 0.997, lambda 0.95, horizon 15, the entropy scale 3e-4, free bits, KL balancing, unimix and the critic's slow
regulariser are the paper's. Not in this file: the paper's critic loss on the replayed trajectories (only imagined
ones train the critic here), and its learned initial state (a zero state here).
Tested: seed 1 reaches a mean evaluation return >= 300 on CartPole-v1 in 20k steps and >= -250 on Pendulum-v1 in
10k steps (tests/test_dreamer.py, slow).
Results: benchmark_results/dreamer.md

The world model, as the code computes it (x_t observation, a_{t-1} the action that led to it, r_t the reward that came
with it, c_t = 1 - terminated_t; is_first_t resets h, z and a to zero before the step):
    encoder         e_t = enc(symlog(x_t))                      (pixels: a CNN on x_t / 255 - 0.5)
    sequence model  h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])      (a layer-normalised GRU, update gate biased by -1)
    posterior       z_t ~ q(z_t | h_t, e_t)                     (K categoricals of C classes, one-hot samples)
    prior           z^_t ~ p(z^_t | h_t)
    heads           x^_t = dec(h_t, z_t), r^_t, c^_t            (decoder, reward, continuation)
    unimix          probs = 0.99 * softmax(logits) + 0.01 / C   (every categorical: latents, discrete actions)
    straight-through z = onehot(sample) + probs - sg(probs)     (forward: the one-hot; backward: d/d probs)
    loss            L = L_pred + 0.5 * L_dyn + 0.1 * L_rep,  averaged over the batch's B x T steps, with
                    L_pred = ||dec - symlog(x)||^2 (summed over dimensions) - ln P(r_t) - ln P(c_t)
                    L_dyn  = max(1, KL[sg(q) || p])     L_rep = max(1, KL[q || sg(p)])   (free bits: 1 nat,
                    the KL summed over the K categoricals)
    two-hot         a scalar y is predicted as a softmax over 255 bins b_i, evenly spaced over [-20, 20] in symlog
                    space; its target puts the weights (b_{k+1} - s) / (b_{k+1} - b_k) and (s - b_k) / (b_{k+1} - b_k)
                    on the two bins around s = symlog(y) (clipped to the range); the prediction is
                    symexp(sum_i p_i b_i); the loss is the cross-entropy -sum_i target_i ln p_i.
    symlog(x) = sign(x) ln(1 + |x|),   symexp(x) = sign(x) (e^|x| - 1)

The actor-critic, in imagination: from every posterior state of the replayed batch (detached), H = 15 steps of the
prior with a_t ~ pi(a_t | s_t), rewards r_t and continuation probabilities c_t from the heads (c_0 = 1 - terminated
of the replayed step), values v_t from the critic:
    lambda-return   R_H = v_H,  R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1})
    weights         w_t = prod_{k=0..t} c_k    (an imagined trajectory stops counting after a predicted end)
    return scale    S <- 0.99 S + 0.01 (Per(R, 95) - Per(R, 5)), divided by max(1, S)
    actor           discrete (REINFORCE):  -w_t [ sg((R_t - v_t) / max(1, S)) ln pi(a_t|s_t) + eta H[pi(.|s_t)] ]
                    continuous (backpropagation through the model): -w_t [ R_t / max(1, S) + eta H[pi(.|s_t)] ]
                    eta = 3e-4; a continuous action is a bounded Normal: mean tanh(m), std in [0.1, 1], the
                    sample clipped to [-1, 1] (straight-through) and scaled to the environment's bounds
    critic          w_t [ -ln P_v(twohot(R_t)) - ln P_v(twohot(v'_t)) ],  v' the slow critic (EMA, rate 0.02)
The world model's gradients are computed first, then the imagination (whose world-model parameters are frozen,
so the actor's loss leaves them untouched), then every optimizer steps, after one check that all losses and
gradient norms are finite. Adam with gradient clipping at 1000 (model) and 100 (actor, critic), as the paper.

Replay: each environment's steps go, in order, into its own ring of records (x_t, a_{t-1}, r_t, is_first_t,
terminated_t); a batch is B chunks of T consecutive records whose starts are drawn uniformly over every stored start
(one that does not run into the ring's write position). A chunk may run across an episode's end: the next episode's
first record has is_first = 1, which resets the recurrent state. Each chunk starts from a zero state. Time limits:
the vector environment uses Gymnasium's same-step autoreset; when an episode ends, its last observation
(info["final_obs"]) is stored with terminated_t (0 when it was only truncated: its continuation target stays 1 and
the returns bootstrap through it), then the reset observation as the next episode's first record. The train ratio
(replayed steps per environment step) sets how often an update comes: one every B * T / train_ratio environment
steps, after --learning-starts steps of uniformly random actions.

Long runs (the same form in every deep file of the collection):
    python algorithms/dreamer.py --checkpoint-every 5000 --save-buffer   # runs/<run>/checkpoint_<step>.pt
    python algorithms/dreamer.py --resume runs/<run>/checkpoint_<step>.pt
A checkpoint holds the agent (world model and actor, under "model", what `evaluate` needs), the critic and its
slow copy, the three Adam states, the return scale, the step counters, the acting agent's recurrent state, every
random generator's state and the environments' own state; with --save-buffer also the replay. With a
classic-control environment and --save-buffer a resumed run ends with the same parameters as one never interrupted.
Ctrl-C or SIGTERM stops the run after the current step's updates, writes a checkpoint and exits 130 / 143 with the
command that resumes it. A NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3) and
keeps the last finite state in runs/<run>/<exp_name>_last_finite.pt; --no-nan-check skips the checks.
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "dreamer"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it"""
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
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the replay (its size is printed)"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (Discrete or bounded Box actions; flat Box observations unless --pixels)"""
    total_timesteps: int = 20_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments"""
    pixels: bool = False
    """if toggled, observe the environment's rgb_array render resized to 64x64 (a CNN encoder and decoder)"""
    buffer_size: int = 1_000_000
    """the replay's capacity in records (steps), shared evenly by the environments"""
    batch_size: int = 16
    """chunks per batch (B; the paper's 16)"""
    batch_length: int = 16
    """records per chunk (T; the paper: 64)"""
    train_ratio: float = 16.0
    """replayed steps per environment step: an update every batch_size * batch_length / train_ratio steps (paper: 512)"""
    learning_starts: int = 1000
    """environment steps of uniformly random actions before learning starts"""
    deter_size: int = 256
    """width of the GRU's deterministic state h"""
    stoch_size: int = 16
    """number of categorical latents K (paper: 32)"""
    classes: int = 16
    """classes per categorical latent C (paper: 32)"""
    units: int = 128
    """width of the hidden layers (MLPs, GRU input, heads; paper XS: 256)"""
    mlp_layers: int = 1
    """hidden layers of the encoder, decoder, reward, continuation, actor and critic MLPs (paper XS: 2)"""
    cnn_depth: int = 16
    """channels of the first convolution with --pixels (doubled at each of 4 stride-2 layers)"""
    model_lr: float = 6e-4
    """the world model's Adam learning rate (paper: 1e-4)"""
    actor_lr: float = 2e-4
    """the actor's Adam learning rate (paper: 3e-5)"""
    critic_lr: float = 2e-4
    """the critic's Adam learning rate (paper: 3e-5)"""
    model_grad_clip: float = 1000.0
    """the world model's gradient-norm clip (paper: 1000)"""
    ac_grad_clip: float = 100.0
    """the actor's and the critic's gradient-norm clip (paper: 100)"""
    free_nats: float = 1.0
    """free bits: the KL terms are clipped below at this many nats"""
    dyn_scale: float = 0.5
    """weight of the dynamics KL, KL[sg(posterior) || prior]"""
    rep_scale: float = 0.1
    """weight of the representation KL, KL[posterior || sg(prior)]"""
    unimix: float = 0.01
    """the uniform mixture of every categorical (latents and discrete actions)"""
    num_bins: int = 255
    """two-hot bins of the reward and critic heads, evenly spaced over [-20, 20] in symlog space"""
    horizon: int = 15
    """imagination horizon H"""
    gamma: float = 0.997
    """the discount factor (paper: 1 - 1/333)"""
    gae_lambda: float = 0.95
    """lambda of the lambda-returns"""
    ent_coef: float = 3e-4
    """the actor's entropy regulariser eta"""
    return_ema_decay: float = 0.99
    """decay of the EMA of the returns' 5th-95th percentile range S"""
    slow_critic_rate: float = 0.02
    """the slow critic moves this fraction toward the critic after each update"""
    slow_reg: float = 1.0
    """weight of the critic's regulariser toward the slow critic's prediction"""
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
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "batch_length", "eval_episodes",
                 "log_every", "torch_threads", "deter_size", "stoch_size", "classes", "units", "cnn_depth", "horizon"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.mlp_layers >= 0 or not args.learning_starts >= 0:
        fail(f"need --mlp-layers >= 0 and --learning-starts >= 0, got {args.mlp_layers} and {args.learning_starts}")
    if not args.num_bins >= 2:
        fail(f"--num-bins must be at least 2, got {args.num_bins}")
    if not args.classes >= 2:
        fail(f"--classes must be at least 2, got {args.classes}")
    if args.buffer_size // args.num_envs < args.batch_length:
        fail(f"--buffer-size {args.buffer_size} holds fewer than --batch-length {args.batch_length} records per "
             f"environment ({args.num_envs} environments)")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.train_ratio < math.inf:
        fail(f"--train-ratio must be finite and positive, got {args.train_ratio}")
    for name in ("model_lr", "actor_lr", "critic_lr", "model_grad_clip", "ac_grad_clip"):
        if not 0 < getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be finite and positive, got {getattr(args, name)}")
    for name in ("free_nats", "dyn_scale", "rep_scale", "ent_coef", "slow_reg"):
        if not 0 <= getattr(args, name) < math.inf:
            fail(f"--{name.replace('_', '-')} must be finite and >= 0, got {getattr(args, name)}")
    if not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        fail(f"need 0 < --gamma <= 1 and 0 <= --gae-lambda <= 1, got {args.gamma} and {args.gae_lambda}")
    if not 0 <= args.unimix < 1 or not 0 <= args.return_ema_decay < 1 or not 0 < args.slow_critic_rate <= 1:
        fail(f"need 0 <= --unimix < 1, 0 <= --return-ema-decay < 1 and 0 < --slow-critic-rate <= 1, got "
             f"{args.unimix}, {args.return_ema_decay} and {args.slow_critic_rate}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
    check_spaces(args.env_id, args.pixels)
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def check_spaces(env_id: str, pixels: bool) -> None:
    """The environment exists, has Discrete or bounded flat Box actions and (without --pixels) flat Box observations;
    with --pixels it renders rgb_array frames."""
    try:
        env_spec(env_id)
    except gym.error.Error as error:
        fail(f"--env-id {env_id} is not a registered Gymnasium environment ({error}); try CartPole-v1 or Pendulum-v1")
    try:
        probe = gym.make(env_id, render_mode="rgb_array") if pixels else gym.make(env_id)
    except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency (mujoco, box2d), no rgb_array
        fail(f"--env-id {env_id} cannot be created{' with render_mode=rgb_array (--pixels)' if pixels else ''}: "
             f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1 or not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            fail(f"--env-id {env_id} has {action_space} actions; continuous actions must be a bounded flat Box, "
                 "e.g. Pendulum-v1")
    elif not isinstance(action_space, gym.spaces.Discrete):
        fail(f"--env-id {env_id} has {action_space} actions; this algorithm needs Discrete or a bounded flat Box, "
             "e.g. CartPole-v1 or Pendulum-v1")
    if not pixels and (not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1):
        fail(f"--env-id {env_id} has {obs_space} observations; this algorithm needs a flat Box observation "
             "(or --pixels), e.g. CartPole-v1")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str, pixels: bool = False):
    """sac.py's make_env; with `pixels` the observation is the rgb_array render resized to 64x64x3 (uint8)."""

    def thunk():
        if (capture_video and idx == 0) or pixels:
            env = gym.make(env_id, render_mode="rgb_array")
        else:
            env = gym.make(env_id)
        if capture_video and idx == 0:
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        if pixels:
            env = gym.wrappers.AddRenderObservation(env, render_only=True)
            env = gym.wrappers.ResizeObservation(env, (64, 64))
        return env

    return thunk


# ---- networks ----


def mlp_ln(in_dim: int, out_dim: int, units: int, layers: int) -> nn.Sequential:
    """`layers` hidden layers of Linear, LayerNorm, SiLU (the paper's MLP block), then a linear output."""
    modules, width = [], in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, units, bias=False), nn.LayerNorm(units), nn.SiLU()]
        width = units
    return nn.Sequential(*modules, nn.Linear(width, out_dim))


class LayerNormGRUCell(nn.Module):
    """The GRU of DreamerV3's sequence model: one linear map of [x, h] to the three gates, layer-normalised;
    the update gate is biased by -1 so that h changes slowly at first."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.linear = nn.Linear(in_dim + hidden, 3 * hidden, bias=False)
        self.norm = nn.LayerNorm(3 * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


class WorldModel(nn.Module):
    """Encoder, recurrent state-space model (GRU state h, K categorical latents z of C classes), decoder, reward and
    continuation heads. With `pixels` the encoder and decoder are CNNs on 64x64x3 images."""

    def __init__(self, obs_shape: list[int], act_dim: int, deter: int, stoch: int, classes: int, units: int,
                 layers: int, num_bins: int, pixels: bool, cnn_depth: int, unimix: float):
        super().__init__()
        self.deter, self.stoch, self.classes, self.act_dim = deter, stoch, classes, act_dim
        self.pixels, self.unimix = pixels, unimix
        self.feat_dim = deter + stoch * classes
        if pixels:
            d = cnn_depth
            self.encoder = nn.Sequential(  # 64 -> 32 -> 16 -> 8 -> 4
                nn.Conv2d(3, d, 4, 2, 1), nn.SiLU(), nn.Conv2d(d, 2 * d, 4, 2, 1), nn.SiLU(),
                nn.Conv2d(2 * d, 4 * d, 4, 2, 1), nn.SiLU(), nn.Conv2d(4 * d, 8 * d, 4, 2, 1), nn.SiLU(), nn.Flatten())
            embed = 8 * d * 4 * 4
            self.decoder = nn.Sequential(
                nn.Linear(self.feat_dim, embed), nn.Unflatten(-1, (8 * d, 4, 4)),
                nn.ConvTranspose2d(8 * d, 4 * d, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(4 * d, 2 * d, 4, 2, 1), nn.SiLU(),
                nn.ConvTranspose2d(2 * d, d, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(d, 3, 4, 2, 1))
        else:
            embed = units
            self.encoder = mlp_ln(obs_shape[0], units, units, layers)
            self.decoder = mlp_ln(self.feat_dim, obs_shape[0], units, layers)
        self.img_in = nn.Sequential(nn.Linear(stoch * classes + act_dim, units, bias=False), nn.LayerNorm(units), nn.SiLU())
        self.gru = LayerNormGRUCell(units, deter)
        self.prior_net = mlp_ln(deter, stoch * classes, units, 1)
        self.post_net = mlp_ln(deter + embed, stoch * classes, units, 1)
        self.reward_head = mlp_ln(self.feat_dim, num_bins, units, layers)
        self.cont_head = mlp_ln(self.feat_dim, 1, units, layers)
        # the paper zero-initialises the output layers of the reward and value heads: predictions start at 0
        nn.init.zeros_(self.reward_head[-1].weight)
        nn.init.zeros_(self.reward_head[-1].bias)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Embeddings of observations [..., obs] (uint8 images [..., 64, 64, 3] with pixels)."""
        if self.pixels:
            lead = obs.shape[:-3]
            x = obs.reshape(-1, *obs.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5
            return self.encoder(x).reshape(*lead, -1)
        return self.encoder(symlog(obs))

    def decode_loss(self, feat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Squared error of the reconstruction, summed over the observation's dimensions: symlog space for vectors,
        x / 255 - 0.5 for images."""
        if self.pixels:
            lead = feat.shape[:-1]
            recon = self.decoder(feat.reshape(-1, self.feat_dim)).permute(0, 2, 3, 1).reshape(*lead, 64, 64, 3)
            return (recon - (obs.float() / 255.0 - 0.5)).square().sum((-3, -2, -1))
        return (self.decoder(feat) - symlog(obs)).square().sum(-1)

    def initial(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(n, self.deter, device=device), torch.zeros(n, self.stoch * self.classes, device=device)

    def latent(self, logits: torch.Tensor, sample: bool) -> torch.Tensor:
        """A flat [N, K * C] latent from logits [N, K * C]: straight-through one-hot samples, or the modes."""
        logits = unimix_logits(logits.reshape(*logits.shape[:-1], self.stoch, self.classes), self.unimix)
        if sample:
            z = straight_through_sample(logits.softmax(-1))
        else:
            z = F.one_hot(logits.argmax(-1), self.classes).float()
        return z.flatten(-2)

    def img_step(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]) and the prior's logits of z_t."""
        h = self.gru(self.img_in(torch.cat([z, action], -1)), h)
        return h, self.prior_net(h)

    def obs_step(self, h, z, action, embed, is_first, sample: bool = True):
        """One posterior step: reset where is_first, then h_t, the prior's and posterior's logits and z_t ~ q."""
        keep = (1.0 - is_first).unsqueeze(-1)
        h, prior_logits = self.img_step(h * keep, z * keep, action * keep)
        post_logits = self.post_net(torch.cat([h, embed], -1))
        return h, self.latent(post_logits, sample), prior_logits, post_logits

    def observe(self, obs, actions, is_first):
        """The posterior states of a batch of chunks [B, T, ...] from a zero state: h, z [B, T, .] and the logits."""
        embed = self.encode(obs)
        h, z = self.initial(obs.shape[0], obs.device)
        hs, zs, priors, posts = [], [], [], []
        for t in range(obs.shape[1]):
            h, z, prior_logits, post_logits = self.obs_step(h, z, actions[:, t], embed[:, t], is_first[:, t])
            hs.append(h)
            zs.append(z)
            priors.append(prior_logits)
            posts.append(post_logits)
        return torch.stack(hs, 1), torch.stack(zs, 1), torch.stack(priors, 1), torch.stack(posts, 1)


class Actor(nn.Module):
    """pi(a | s) on the model state s = [h, z]: a categorical with unimix (Discrete) or a bounded Normal with mean
    tanh(m) and standard deviation in [0.1, 1], sampled and clipped to [-1, 1] (Box, scaled to the bounds)."""

    def __init__(self, feat_dim: int, act_dim: int, units: int, layers: int, discrete: bool, unimix: float):
        super().__init__()
        self.discrete, self.act_dim, self.unimix = discrete, act_dim, unimix
        self.net = mlp_ln(feat_dim, act_dim if discrete else 2 * act_dim, units, layers)

    def dist(self, feat: torch.Tensor):
        out = self.net(feat)
        if self.discrete:
            return torch.distributions.Categorical(logits=unimix_logits(out, self.unimix))
        mean, std = out.chunk(2, -1)
        return torch.distributions.Normal(torch.tanh(mean), 0.9 * torch.sigmoid(std + 2.0) + 0.1)

    def sample(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.distributions.Distribution]:
        """An action for the model (one-hot, or in [-1, 1] with a straight-through clip) and the distribution."""
        dist = self.dist(feat)
        if self.discrete:
            return F.one_hot(dist.sample(), self.act_dim).float(), dist
        u = dist.rsample()
        return u + (u.clamp(-1.0, 1.0) - u).detach(), dist

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        dist = self.dist(feat)
        if self.discrete:
            return F.one_hot(dist.probs.argmax(-1), self.act_dim).float()
        return dist.mean


class Agent(nn.Module):
    """What acts and what evaluate needs: the world model (to track the state from observations) and the actor.
    The acting state is (h, z, the previous action), one row per environment."""

    def __init__(self, obs_shape: list[int], act_dim: int, discrete: bool, action_low, action_high, deter: int,
                 stoch: int, classes: int, units: int, layers: int, num_bins: int, pixels: bool, cnn_depth: int,
                 unimix: float):
        super().__init__()
        self.discrete = discrete
        self.world_model = WorldModel(obs_shape, act_dim, deter, stoch, classes, units, layers, num_bins, pixels,
                                      cnn_depth, unimix)
        self.actor = Actor(self.world_model.feat_dim, act_dim, units, layers, discrete, unimix)
        low = torch.as_tensor(action_low if not discrete else [-1.0], dtype=torch.float32)
        high = torch.as_tensor(action_high if not discrete else [1.0], dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def initial_state(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, z = self.world_model.initial(n, device)
        return h, z, torch.zeros(n, self.actor.act_dim, device=device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, is_first: torch.Tensor, state, greedy: bool = False):
        """Update the state with the observation, then pick an action: (environment actions, model actions, state).
        greedy: the posterior's modes and the actor's mode (deterministic); else samples of both."""
        h, z, prev_action = state
        wm = self.world_model
        h, z, _, _ = wm.obs_step(h, z, prev_action, wm.encode(obs), is_first, sample=not greedy)
        feat = torch.cat([h, z], -1)
        action = self.actor.mode(feat) if greedy else self.actor.sample(feat)[0]
        env_action = action.argmax(-1) if self.discrete else self.action_scale * action + self.action_bias
        return env_action, action, (h, z, action)

    def greedy_action(self, obs: torch.Tensor, is_first: torch.Tensor, state):
        """The deterministic action in the environment's units, and the next state (what evaluation plays)."""
        env_action, _, state = self.act(obs, is_first, state, greedy=True)
        return env_action, state


class Critic(nn.Module):
    """v(s): a two-hot distribution over `num_bins` bins in symlog space; the output layer starts at zero."""

    def __init__(self, feat_dim: int, units: int, layers: int, num_bins: int):
        super().__init__()
        self.net = mlp_ln(feat_dim, num_bins, units, layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)


class SequenceReplay:
    """One ring of records per environment, in preallocated numpy arrays; chunks of consecutive records whose starts
    are uniform over every stored start that does not run into a ring's write position."""

    FIELDS = ("obs", "actions", "rewards", "is_first", "terminated")

    def __init__(self, capacity: int, num_envs: int, obs_shape: list[int], obs_dtype, act_dim: int, seed: int):
        self.capacity = capacity // num_envs
        self.obs = np.zeros((num_envs, self.capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros((num_envs, self.capacity, act_dim), dtype=np.float32)  # a_{t-1}, the model's units
        self.rewards = np.zeros((num_envs, self.capacity), dtype=np.float32)
        self.is_first = np.zeros((num_envs, self.capacity), dtype=np.float32)
        self.terminated = np.zeros((num_envs, self.capacity), dtype=np.float32)
        self.pos = np.zeros(num_envs, dtype=np.int64)
        self.size = np.zeros(num_envs, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def add(self, env: int, obs, action, reward: float, is_first: bool, terminated: bool) -> None:
        j = self.pos[env]
        self.obs[env, j], self.actions[env, j] = obs, action
        self.rewards[env, j], self.is_first[env, j], self.terminated[env, j] = reward, is_first, terminated
        self.pos[env] = (j + 1) % self.capacity
        self.size[env] = min(self.size[env] + 1, self.capacity)

    def starts(self, length: int) -> np.ndarray:
        """The number of valid chunk starts in each ring."""
        return np.maximum(self.size - length + 1, 0)

    def sample(self, batch_size: int, length: int) -> tuple[torch.Tensor, ...]:
        """B chunks [B, T, ...] of (obs, actions, rewards, is_first, terminated)."""
        counts = self.starts(length)
        flat = self.rng.integers(0, counts.sum(), size=batch_size)
        env = np.searchsorted(np.cumsum(counts), flat, side="right")
        k = flat - (np.cumsum(counts) - counts)[env]
        oldest = np.where(self.size == self.capacity, self.pos, 0)[env]
        idx = (oldest[:, None] + k[:, None] + np.arange(length)[None]) % self.capacity
        return tuple(torch.from_numpy(getattr(self, f)[env[:, None], idx]) for f in self.FIELDS)

    def state_dict(self) -> dict:
        """The stored part only, as tensors so torch.load(weights_only=True) reads it."""
        n = int(self.size.max())
        return {"pos": torch.from_numpy(self.pos.copy()), "size": torch.from_numpy(self.size.copy()),
                **{f: torch.from_numpy(getattr(self, f)[:, :n].copy()) for f in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        n = state["obs"].shape[1]
        for f in self.FIELDS:
            getattr(self, f)[:, :n] = state[f].numpy()
        self.pos[:], self.size[:] = state["pos"].numpy() % self.capacity, state["size"].numpy()


# ---- the math that the tests check: tensors in, tensors out ----


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) ln(1 + |x|): compresses large magnitudes, near the identity around 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (e^|x| - 1), the inverse of symlog."""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot(y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """The two-hot encoding of y (already in the bins' space) over sorted, evenly spaced `bins`: the weights on the two
    nearest bins, linear in the distance, summing to 1; y outside the bins' range is clipped to the end bin."""
    y = y.clamp(bins[0], bins[-1])
    step = bins[1] - bins[0]
    below = ((y - bins[0]) / step).floor().long().clamp(0, len(bins) - 2)
    w_above = ((y - bins[below]) / step).clamp(0.0, 1.0)
    target = torch.zeros(*y.shape, len(bins), dtype=y.dtype, device=y.device)
    target.scatter_(-1, below.unsqueeze(-1), (1.0 - w_above).unsqueeze(-1))
    target.scatter_add_(-1, (below + 1).unsqueeze(-1), w_above.unsqueeze(-1))
    return target


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """The prediction of a two-hot head: symexp of the expected bin, sum_i softmax(logits)_i b_i."""
    return symexp((logits.softmax(-1) * bins).sum(-1))


def twohot_loss(logits: torch.Tensor, y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a two-hot head against the two-hot target of symlog(y); one value per prediction."""
    return -(twohot(symlog(y), bins) * logits.log_softmax(-1)).sum(-1)


def unimix_logits(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Logits of 0.99 softmax(logits) + 0.01 / C (unimix = 0.01): no class gets a probability near 0, which keeps
    the KL terms and the REINFORCE gradient bounded."""
    probs = logits.softmax(-1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return probs.log()


def straight_through_sample(probs: torch.Tensor) -> torch.Tensor:
    """A one-hot sample of each categorical (last dimension) whose gradient is that of `probs`:
    onehot + probs - sg(probs)."""
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
    onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def latents_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL[p || q] of K categoricals (dimensions [..., K, C]), summed over the K latents."""
    log_p, log_q = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


def kl_loss(post_logits: torch.Tensor, prior_logits: torch.Tensor, free_nats: float, dyn_scale: float,
            rep_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KL balancing with free bits (paper, eq. 5): returns (dyn_scale * L_dyn + rep_scale * L_rep averaged over the
    steps, the mean KL[q || p], the mean L_dyn); L_dyn = max(free, KL[sg(q) || p]) trains the prior,
    L_rep = max(free, KL[q || sg(p)]) the posterior. Below the free nats a term is constant: no gradient."""
    dyn = latents_kl(post_logits.detach(), prior_logits).clamp(min=free_nats)
    rep = latents_kl(post_logits, prior_logits.detach()).clamp(min=free_nats)
    kl = latents_kl(post_logits.detach(), prior_logits.detach())
    return (dyn_scale * dyn + rep_scale * rep).mean(), kl.mean(), dyn.mean()


def imagined_returns(rewards: torch.Tensor, values: torch.Tensor, continues: torch.Tensor, gamma: float,
                   lam: float) -> torch.Tensor:
    """R_t = r_{t+1} + gamma c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}), R_H = v_H, for t = 0..H-1.

    All inputs are [H + 1, N], indexed by imagined state: rewards[t] and continues[t] are those of arriving in
    state t (index 0 unused), values[t] = v(s_t). Returns [H, N]."""
    horizon = rewards.shape[0] - 1
    out, last = [], values[-1]
    for t in reversed(range(horizon)):
        last = rewards[t + 1] + gamma * continues[t + 1] * ((1.0 - lam) * values[t + 1] + lam * last)
        out.append(last)
    return torch.stack(out[::-1])


def percentile_range(returns: torch.Tensor, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """Per(R, 95) - Per(R, 5) of all returns (linear interpolation, numpy's default)."""
    q = torch.quantile(returns.detach().flatten().float(), torch.tensor([low, high], device=returns.device))
    return q[1] - q[0]


def update_return_scale(scale: torch.Tensor, returns: torch.Tensor, decay: float) -> torch.Tensor:
    """S <- decay S + (1 - decay) (Per(R, 95) - Per(R, 5)); the returns are divided by max(1, S)."""
    return decay * scale + (1.0 - decay) * percentile_range(returns)


@contextmanager
def frozen(module: nn.Module):
    """The module's parameters take no gradient inside the block (the actor's loss backpropagates through the world
    model without computing its weight gradients); afterwards they take gradients again."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


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
    ckpt = load_checkpoint(path, "dreamer")
    agent = Agent(**ckpt["model_args"])
    agent.load_state_dict(ckpt["model"])
    return agent, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """Deterministic evaluation on a fresh environment (the posterior's and the actor's modes, the recurrent state
    carried from step to step and reset at each episode's start); returns one return per episode."""
    agent = load_model(agent_or_path)[0].to(device) if isinstance(agent_or_path, str) else agent_or_path
    env = make_env(env_id, 0, False, "", agent.world_model.pixels)()
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        state, is_first = agent.initial_state(1, device), torch.ones(1, device=device)
        done, total = False, 0.0
        while not done:
            action, state = agent.greedy_action(torch.as_tensor(obs, device=device).unsqueeze(0), is_first, state)
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            is_first = torch.zeros(1, device=device)
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

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first observation and
    # puts the last one in info["final_obs"]; both are stored (the last one, then the first one with is_first).
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name, args.pixels) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    action_space, obs_space = envs.single_action_space, envs.single_observation_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    act_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
    obs_shape = list(obs_space.shape)
    model_args = {"obs_shape": obs_shape, "act_dim": act_dim, "discrete": discrete,
                  "action_low": None if discrete else action_space.low.tolist(),
                  "action_high": None if discrete else action_space.high.tolist(),
                  "deter": args.deter_size, "stoch": args.stoch_size, "classes": args.classes, "units": args.units,
                  "layers": args.mlp_layers, "num_bins": args.num_bins, "pixels": args.pixels,
                  "cnn_depth": args.cnn_depth, "unimix": args.unimix}

    agent = Agent(**model_args).to(device)
    wm, actor = agent.world_model, agent.actor
    critic = Critic(wm.feat_dim, args.units, args.mlp_layers, args.num_bins).to(device)
    slow_critic = copy.deepcopy(critic)
    bins = torch.linspace(-20.0, 20.0, args.num_bins, device=device)
    # fused=True: Adam's arithmetic for all parameters in one kernel; the paper's epsilons
    model_optimizer = torch.optim.Adam(wm.parameters(), lr=args.model_lr, eps=1e-8, fused=True)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, eps=1e-5, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, eps=1e-5, fused=True)
    return_scale = torch.zeros((), device=device)  # S, the EMA of the returns' 5th-95th percentile range
    rb = SequenceReplay(args.buffer_size, args.num_envs, obs_shape, obs_space.dtype, act_dim, args.seed)
    generators = {"buffer": rb.rng, "action_space": envs.action_space.np_random}
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                (("world model", wm), ("actor", actor), ("critic", critic))}
    print(f"parameters: {sum(n_params.values()):,} (" + ", ".join(f"{k} {v:,}" for k, v in n_params.items()) + ")",
          flush=True)

    def model_action(env_actions: np.ndarray) -> torch.Tensor:
        """Environment actions in the model's units: one-hot (Discrete) or scaled to [-1, 1] (Box)."""
        a = torch.as_tensor(env_actions, device=device)
        if discrete:
            return F.one_hot(a.long(), act_dim).float()
        return ((a.float() - agent.action_bias) / agent.action_scale).clamp(-1.0, 1.0)

    # The training state a checkpoint holds; resuming puts it back. next_train: the step of the next update (a float:
    # an update every batch_size * batch_length / train_ratio environment steps after learning_starts).
    interval = args.batch_size * args.batch_length / args.train_ratio
    global_step, next_train, updates = 0, float(args.learning_starts), 0
    obs, _ = envs.reset(seed=args.seed)
    state = agent.initial_state(args.num_envs, device)
    is_first = torch.ones(args.num_envs, device=device)
    ckpt = {}
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "dreamer")
        check_resume(ckpt, args, model_args)
        for name, obj in (("model", agent), ("critic", critic), ("slow_critic", slow_critic),
                          ("model_optimizer", model_optimizer), ("actor_optimizer", actor_optimizer),
                          ("critic_optimizer", critic_optimizer)):
            obj.load_state_dict(ckpt[name])
        return_scale.copy_(ckpt["return_scale"])
        global_step, updates = ckpt["global_step"], ckpt["updates"]
        next_train = max(ckpt["next_train"], next_train)  # a larger --learning-starts postpones learning
        set_rng_state(ckpt["rng"], generators)
        obs = set_env_state(envs, ckpt["envs"], seed=args.seed + global_step)
        if ckpt["envs"]["resumable"]:  # the interrupted episodes go on: so does the agent's recurrent state
            state = tuple(ckpt["acting"][k].to(device) for k in ("h", "z", "action"))
            is_first = ckpt["acting"]["is_first"].to(device)
        if "buffer" in ckpt:
            if ckpt["buffer"]["obs"].shape[0] != args.num_envs or ckpt["buffer"]["obs"].shape[1] > rb.capacity:
                fail(f"--resume {args.resume} holds a replay of another shape; resume with its --num-envs and "
                     "--buffer-size")
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay: {int(rb.size.sum()):,} records)", flush=True)

    if "buffer" not in ckpt or not ckpt["envs"]["resumable"]:  # the current observation starts the stored episodes
        for e in range(args.num_envs):
            rb.add(e, obs[e], np.zeros(act_dim, np.float32), 0.0, True, False)

    def checkpoint(with_envs: bool = True) -> dict:
        return {"algo": "dreamer", "env_id": args.env_id, "model_args": model_args, "model": agent.state_dict(),
                "args": asdict(args), "critic": critic.state_dict(), "slow_critic": slow_critic.state_dict(),
                "model_optimizer": model_optimizer.state_dict(), "actor_optimizer": actor_optimizer.state_dict(),
                "critic_optimizer": critic_optimizer.state_dict(), "return_scale": return_scale.clone(),
                "global_step": global_step, "next_train": next_train, "updates": updates, "rng": rng_state(generators),
                "acting": {"h": state[0].clone(), "z": state[1].clone(), "action": state[2].clone(),
                           "is_first": is_first.clone()},
                "envs": env_state(envs, obs) if with_envs else {"resumable": False},
                **({"buffer": rb.state_dict()} if args.save_buffer else {})}

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

    start_step, start_updates, start_time = global_step, updates, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    losses: dict[str, torch.Tensor] = {}  # the latest losses, detached; copied to the host only when logged

    while global_step < args.total_timesteps:
        # the agent's state follows every observation, also while the actions are random
        env_actions, actions, state = agent.act(torch.as_tensor(obs, device=device), is_first, state)
        if global_step < args.learning_starts:
            random_actions = envs.action_space.sample()
            actions = model_action(random_actions)
            state = (state[0], state[1], actions)
            env_actions = random_actions
        else:
            env_actions = env_actions.cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(env_actions)
        global_step += args.num_envs
        if args.nan_check and (bad := nonfinite_step(next_obs, rewards, infos)):
            fault(bad)

        # records: (x_t, a_{t-1}, r_t, is_first_t, terminated_t); an ended episode's last observation, then the next
        # episode's first one (is_first: the state resets there)
        dones = np.logical_or(terminations, truncations)
        stored_actions = actions.cpu().numpy()
        for e in range(args.num_envs):
            if dones[e]:
                rb.add(e, infos["final_obs"][e], stored_actions[e], rewards[e], False, terminations[e])
                rb.add(e, next_obs[e], np.zeros(act_dim, np.float32), 0.0, True, False)
            else:
                rb.add(e, next_obs[e], stored_actions[e], rewards[e], False, False)
        is_first = torch.as_tensor(dones, dtype=torch.float32, device=device)
        obs = next_obs

        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                ep_r, ep_l = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                recent_returns.append(ep_r)
                writer.add_scalar("charts/episodic_return", ep_r, global_step)
                writer.add_scalar("charts/episodic_length", ep_l, global_step)

        while next_train <= global_step:
            next_train += interval
            if rb.starts(args.batch_length).sum() == 0:  # not one chunk stored yet
                continue
            b_obs, b_actions, b_rewards, b_first, b_term = (t.to(device) for t in rb.sample(args.batch_size, args.batch_length))

            # world model: reconstruction, reward, continuation and the balanced KL (paper, eq. 4-5)
            h, z, prior_logits, post_logits = wm.observe(b_obs, b_actions, b_first)
            feat = torch.cat([h, z], -1)
            decoder_loss = wm.decode_loss(feat, b_obs).mean()
            reward_loss = twohot_loss(wm.reward_head(feat), b_rewards, bins).mean()
            cont_loss = F.binary_cross_entropy_with_logits(wm.cont_head(feat).squeeze(-1), 1.0 - b_term)
            shape = (*post_logits.shape[:-1], args.stoch_size, args.classes)
            kl_term, kl_value, dyn_loss = kl_loss(post_logits.reshape(shape), prior_logits.reshape(shape),
                                                  args.free_nats, args.dyn_scale, args.rep_scale)
            model_loss = decoder_loss + reward_loss + cont_loss + kl_term
            model_optimizer.zero_grad()
            model_loss.backward()
            model_norm = nn.utils.clip_grad_norm_(wm.parameters(), args.model_grad_clip, foreach=True)

            # imagination from every posterior state, with the world model and the critic frozen: discrete actions
            # need no gradient through the rollout (REINFORCE), continuous ones backpropagate through it
            with frozen(wm), frozen(critic), torch.set_grad_enabled(not discrete):
                h_i, z_i = h.detach().reshape(-1, wm.deter), z.detach().reshape(-1, wm.stoch * wm.classes)
                feats, imagined_actions, entropies = [torch.cat([h_i, z_i], -1)], [], []
                for _ in range(args.horizon):
                    a, dist = actor.sample(feats[-1])
                    h_i, prior = wm.img_step(h_i, z_i, a)
                    z_i = wm.latent(prior, sample=True)
                    feats.append(torch.cat([h_i, z_i], -1))
                    imagined_actions.append(a)
                    entropies.append(dist.entropy() if discrete else dist.entropy().sum(-1))
                feats_t = torch.stack(feats)  # [H + 1, N, F]
                img_rewards = twohot_mean(wm.reward_head(feats_t), bins)
                conts = torch.sigmoid(wm.cont_head(feats_t).squeeze(-1))
                conts = torch.cat([(1.0 - b_term).reshape(1, -1), conts[1:]])
                values = twohot_mean(critic(feats_t), bins)
                returns = imagined_returns(img_rewards, values, conts, args.gamma, args.gae_lambda)  # [H, N]
                weights = torch.cumprod(conts, 0)[:-1].detach()
                new_scale = update_return_scale(return_scale, returns, args.return_ema_decay)
                norm = new_scale.clamp(min=1.0)
                if discrete:
                    with torch.enable_grad():
                        dist = actor.dist(feats_t[:-1])
                        log_pi = dist.log_prob(torch.stack(imagined_actions).argmax(-1))
                        entropy = dist.entropy()
                        advantage = (returns - values[:-1]) / norm
                        actor_loss = -(weights * (log_pi * advantage + args.ent_coef * entropy)).mean()
                else:
                    entropy = torch.stack(entropies)
                    actor_loss = -(weights * (returns / norm + args.ent_coef * entropy)).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
            actor_norm = nn.utils.clip_grad_norm_(actor.parameters(), args.ac_grad_clip, foreach=True)

            # critic: two-hot regression onto the lambda-returns, regularised toward the slow critic's prediction
            critic_feat, targets = feats_t[:-1].detach(), returns.detach()
            logits = critic(critic_feat)
            with torch.no_grad():
                slow_values = twohot_mean(slow_critic(critic_feat), bins)
            critic_loss = (weights * (twohot_loss(logits, targets, bins)
                                      + args.slow_reg * twohot_loss(logits, slow_values, bins))).mean()
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_norm = nn.utils.clip_grad_norm_(critic.parameters(), args.ac_grad_clip, foreach=True)

            # one host sync: every loss and gradient norm finite, else stop with the networks as they were
            checks = torch.stack([model_loss.detach(), model_norm, actor_loss.detach(), actor_norm,
                                  critic_loss.detach(), critic_norm])
            if args.nan_check and not bool(torch.isfinite(checks).all()):
                names = ["world model loss", "world model gradient norm", "actor loss", "actor gradient norm",
                         "critic loss", "critic gradient norm"]
                fault(names[int((~torch.isfinite(checks)).nonzero()[0])])
            model_optimizer.step()
            actor_optimizer.step()
            critic_optimizer.step()
            soft_update(slow_critic, critic, args.slow_critic_rate)
            return_scale = new_scale.detach()
            updates += 1
            losses.update(model_loss=model_loss.detach(), decoder_loss=decoder_loss.detach(),
                          reward_loss=reward_loss.detach(), cont_loss=cont_loss.detach(), kl=kl_value.detach(),
                          dyn_loss=dyn_loss.detach(), actor_loss=actor_loss.detach(), critic_loss=critic_loss.detach(),
                          entropy=entropy.detach().mean(), return_scale=return_scale,
                          imagined_return=returns.detach().mean())

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            elapsed = time.time() - start_time
            sps = int((global_step - start_step) / elapsed)
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/updates", updates, global_step)
            for key, value in losses.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            ups = (updates - start_updates) / elapsed
            print(f"step {global_step:>9,}  SPS {sps:>5,}  updates/s {ups:5.2f}  return(last 20 episodes) "
                  f"{recent}", flush=True)
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

    eval_returns = evaluate(agent, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps, {updates - start_updates:,} updates in "
          f"{train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB"
              + (", with the replay)" if args.save_buffer else ")"))
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
        "updates": updates - start_updates,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
