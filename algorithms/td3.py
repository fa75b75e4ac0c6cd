"""Twin Delayed Deep Deterministic policy gradient (TD3), for continuous (Box) actions.

Paper: Fujimoto, van Hoof, Meger (2018), "Addressing Function Approximation Error in Actor-Critic
Methods", ICML, https://arxiv.org/abs/1802.09477. It is DDPG (ddpg.py; Lillicrap et al., 2016,
https://arxiv.org/abs/1509.02971) with three changes: twin critics whose minimum forms the target,
target policy smoothing, and delayed policy (and target network) updates. This file is ddpg.py with
those three changes and nothing else.

Run:
    python algorithms/td3.py                                   # Pendulum-v1, 20k steps
    python algorithms/td3.py --env-id HalfCheetah-v5 --total-timesteps 1000000 --learning-starts 5000
    python algorithms/td3.py --save-model --save-buffer         # a checkpoint that can resume
    python algorithms/td3.py --resume runs/<run>/td3.pt --total-timesteps 40000
    python algorithms/td3.py --help

Defaults are CleanRL's / Stable-Baselines3's TD3 settings for MuJoCo (256-256 MLPs, Adam lr 3e-4, buffer
1e6, batch 256, gamma 0.99, tau 0.005, exploration noise 0.1, policy noise 0.2, noise clip 0.5, policy
delay 2) except for the budget and learning_starts, set for the default environment Pendulum-v1: 20k
steps with learning_starts 1000 (MuJoCo: --learning-starts 5000 and ~1M steps).
Tested: seed 1 reaches a mean evaluation return >= -200 on Pendulum-v1 in 20k steps (tests/test_td3.py, slow).
Results: benchmark_results/td3.md

Actions are in the environment's units everywhere (the replay buffer, the critics, exploration): the actor
ends in tanh, scaled into the bounds, mu(s) = scale * tanh(f(s)) + bias with scale = (high - low) / 2 and
bias = (high + low) / 2; exploration adds scale * N(0, sigma^2) and clips to [low, high].

The math, as written in the code below, for a sampled batch (s, a, r, s', terminated):
    smoothing      a~ = clip(mu'(s') + scale * clip(eps, -c, c), low, high),   eps ~ N(0, sigma)
                   (sigma = policy_noise and c = noise_clip are in units of half the action range)
    target         y = r + gamma * (1 - terminated) * min(Q1'(s', a~), Q2'(s', a~))      (paper eq. 10)
    critic loss    L_Q = mean( (Q1(s, a) - y)^2 ) + mean( (Q2(s, a) - y)^2 )
    every d = policy_frequency critic updates (delayed policy updates, paper section 5.2):
      actor loss   L_mu = -mean( Q1(s, mu(s)) )                 (deterministic policy gradient through Q1)
      targets      theta' <- tau * theta + (1 - tau) * theta'   for the actor and both critics

Time limits: only `terminated` is stored as the transition's end. An episode cut by a time limit
(`truncated`, as every Pendulum episode is at step 200) is stored with its real last observation
(info["final_obs"], Gymnasium's same-step autoreset mode) and terminated=0, so its target bootstraps.
More than one environment may run in parallel (--num-envs); every count (learning_starts,
train_frequency, log_every, total_timesteps) is in environment steps summed over the environments,
so the number of gradient steps per environment step does not depend on --num-envs.

Checkpoints and resuming: --save-model writes the actor (what `evaluate` needs, under "model") and the
training state: the twin critic, both target networks, both Adam states, the step and update counters and
the random generators (Python's, torch's, the replay sampler's, the action space's). The replay buffer is
included only with --save-buffer (it can be large: 1e6 MuJoCo transitions are about 100 MB). --resume PATH
continues from the checkpoint's step up to --total-timesteps (the total, not the extra steps); without
the buffer, updates wait until the empty buffer holds batch_size transitions. The environments' internal
states (physics, time-limit counters) cannot be saved generically: a resumed run starts fresh episodes,
reset with seed + global_step.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    exp_name: str = "td3"
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
    """if toggled (with --save-model), the checkpoint also holds the replay buffer"""
    resume: str | None = None
    """a checkpoint written by --save-model: continue its training up to --total-timesteps"""

    env_id: str = "Pendulum-v1"
    """the Gymnasium id of the environment (bounded Box actions, flat Box observations)"""
    total_timesteps: int = 20_000
    """total environment steps, summed over the parallel environments (MuJoCo: 1e6)"""
    num_envs: int = 1
    """the number of parallel environments"""
    learning_rate: float = 3e-4
    """the Adam learning rate of the actor and the critics"""
    buffer_size: int = 1_000_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: theta' <- tau * theta + (1 - tau) * theta'"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_starts: int = 1000
    """environment steps of uniformly random actions before learning starts (MuJoCo: 5000)"""
    train_frequency: int = 1
    """environment steps per critic gradient step"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise, in units of half the action range"""
    policy_noise: float = 0.2
    """std sigma of the target policy smoothing noise, in units of half the action range"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-noise_clip, noise_clip] (units of half the action range)"""
    policy_frequency: int = 2
    """critic gradient steps per actor step and target update: the policy delay d"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the actor and of each critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation"""
    log_every: int = 5_000
    """write the losses and SPS, and print a progress line, every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "policy_frequency",
                 "eval_episodes", "log_every", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < 0 or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not args.learning_rate > 0 or not min(args.exploration_noise, args.policy_noise, args.noise_clip) >= 0:
        fail("need --learning-rate > 0 and --exploration-noise, --policy-noise, --noise-clip >= 0")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if args.save_buffer and not args.save_model:
        fail("--save-buffer needs --save-model")
    check_env(args.env_id)
    if args.resume is not None:
        check_resume(load_checkpoint(args.resume, "td3"), args)


def check_env(env_id: str) -> None:
    """The environment exists and has bounded Box actions and flat Box observations."""
    try:
        gym.spec(env_id)
    except gym.error.Error:
        fail(f"--env-id {env_id} is not a registered Gymnasium environment; try Pendulum-v1 or HalfCheetah-v5")
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


def check_resume(ckpt: dict, args: Args) -> None:
    """A checkpoint to resume holds the training state and fits the arguments."""
    if "critic" not in ckpt or "global_step" not in ckpt:
        fail(f"--resume {args.resume} holds no training state; write one with --save-model")
    if ckpt["env_id"] != args.env_id or tuple(ckpt["model_args"]["hidden_sizes"]) != tuple(args.hidden_sizes):
        fail(f"--resume {args.resume} was trained on {ckpt['env_id']} with --hidden-sizes "
             f"{tuple(ckpt['model_args']['hidden_sizes'])}; pass the same --env-id and --hidden-sizes")
    if ckpt["global_step"] >= args.total_timesteps:
        fail(f"--total-timesteps {args.total_timesteps} is the total budget and the checkpoint is already at step "
             f"{ckpt['global_step']}; pass a larger --total-timesteps")
    if ckpt.get("buffer", {}).get("size", 0) > args.buffer_size:
        fail(f"--resume {args.resume} holds {ckpt['buffer']['size']} transitions, more than --buffer-size {args.buffer_size}")


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


class Actor(nn.Module):
    """The deterministic policy mu(s) = action_scale * tanh(f(s)) + action_bias: always inside [low, high]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], action_low, action_high):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden_sizes)
        # buffers, not parameters: saved in the state_dict (evaluation needs them), never trained
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_scale * torch.tanh(self.net(obs)) + self.action_bias

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """mu(s) in the environment's units, without exploration noise (what evaluation plays)."""
        return self(obs)


class QCritic(nn.Module):
    """Q(s, a): the action enters with the observation (as CleanRL and SB3)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden_sizes)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], dim=1)).squeeze(1)


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


class TwinQCritic(nn.Module):
    """The two critics Q1(s, a), Q2(s, a): independent networks, trained on the same target."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.q1, self.q2 = QCritic(obs_dim, act_dim, hidden_sizes), QCritic(obs_dim, act_dim, hidden_sizes)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs, actions), self.q2(obs, actions)


def smoothed_target_action(next_actions: torch.Tensor, noise: torch.Tensor, noise_clip: float, action_scale: torch.Tensor,
                           action_low: torch.Tensor, action_high: torch.Tensor) -> torch.Tensor:
    """a~ = clip(mu'(s') + scale * clip(eps, -c, c), low, high): target policy smoothing (paper eq. 14).

    next_actions is mu'(s'); noise is eps ~ N(0, sigma) in units of half the action range, drawn by the caller
    (so a test can inject it). Clipping the noise keeps a~ near mu'(s'); clipping the sum keeps it a legal action.
    """
    return (next_actions + action_scale * noise.clamp(-noise_clip, noise_clip)).clamp(action_low, action_high)


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


def rng_state(generators: dict[str, np.random.Generator]) -> dict:
    """Python's, torch's and the named numpy generators' states, in types torch.load(weights_only=True) reads."""
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            **{name: g.bit_generator.state for name, g in generators.items()}}


def set_rng_state(state: dict, generators: dict[str, np.random.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    for name, g in generators.items():
        g.bit_generator.state = state[name]


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


def load_model(path: str) -> tuple[Actor, dict]:
    ckpt = load_checkpoint(path, "td3")
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


def main(args: Args) -> dict:
    check_args(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=asdict(args), name=run_name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

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

    actor = Actor(**model_args).to(device)
    critic = TwinQCritic(obs_dim, act_dim, args.hidden_sizes).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    # fused=True: Adam's arithmetic for all parameters in one kernel, instead of a dozen elementwise passes each
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, args.seed)
    action_low, action_high = torch.as_tensor(low, device=device), torch.as_tensor(high, device=device)
    generators = {"buffer": rb.rng, "action_space": envs.action_space.np_random}

    global_step, n_updates = 0, 0  # n_updates: critic gradient steps so far (the policy_frequency clock)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "td3")
        for name, obj in (("model", actor), ("critic", critic), ("actor_target", actor_target),
                          ("critic_target", critic_target), ("actor_optimizer", actor_optimizer),
                          ("critic_optimizer", critic_optimizer)):
            obj.load_state_dict(ckpt[name])
        set_rng_state(ckpt["rng"], generators)
        global_step, n_updates = ckpt["global_step"], ckpt["n_updates"]
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {rb.size:,} transitions)", flush=True)

    # one critic step per train_frequency environment steps after learning_starts (or the resumed step)
    next_train = max(args.learning_starts, global_step) + args.train_frequency
    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    losses: dict[str, torch.Tensor] = {}  # the latest losses, detached; copied to the host only when logged
    # the first run resets with the seed; a resumed one starts fresh episodes with seed + global_step
    obs, _ = envs.reset(seed=args.seed + global_step)

    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
                actions += actor.action_scale * args.exploration_noise * torch.randn_like(actions)
            actions = np.clip(actions.cpu().numpy(), low, high)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += args.num_envs

        # the transition's next observation is the real last one at an episode end, not the reset one
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        rb.add(obs, real_next_obs, actions, rewards, terminations)  # terminations only: truncation bootstraps
        obs = next_obs

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
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = (t.to(device) for t in rb.sample(args.batch_size))
            with torch.no_grad():
                noise = torch.randn_like(b_actions) * args.policy_noise
                next_actions = smoothed_target_action(actor_target(b_next_obs), noise, args.noise_clip, actor.action_scale,
                                                      action_low, action_high)
                next_q1, next_q2 = critic_target(b_next_obs, next_actions)
                y = td_target(b_rewards, b_terminations, torch.min(next_q1, next_q2), args.gamma)
            q1, q2 = critic(b_obs, b_actions)
            qf1_loss, qf2_loss = F.mse_loss(q1, y), F.mse_loss(q2, y)
            qf_loss = qf1_loss + qf2_loss
            critic_optimizer.zero_grad()
            qf_loss.backward()
            critic_optimizer.step()
            n_updates += 1
            losses.update(qf1_loss=qf1_loss.detach(), qf2_loss=qf2_loss.detach(), qf_loss=qf_loss.detach(),
                          q_values=q1.detach().mean())

            if n_updates % args.policy_frequency == 0:  # delayed policy updates (paper section 5.2), through Q1
                actor_loss = -critic.q1(b_obs, actor(b_obs)).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()  # also fills the critic's gradients; critic_optimizer.zero_grad() clears them
                actor_optimizer.step()
                soft_update(actor_target, actor, args.tau)
                soft_update(critic_target, critic, args.tau)
                losses.update(actor_loss=actor_loss.detach())

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            for key, value in losses.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  updates {n_updates:>9,}  return(last 20 episodes) {recent}",
                  flush=True)

    train_time = time.time() - start_time
    envs.close()

    model_path = None
    if args.save_model:  # the training state is taken here, before evaluation
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        checkpoint = {"algo": "td3", "env_id": args.env_id, "model_args": model_args, "model": actor.state_dict(),
                      "critic": critic.state_dict(), "actor_target": actor_target.state_dict(),
                      "critic_target": critic_target.state_dict(), "actor_optimizer": actor_optimizer.state_dict(),
                      "critic_optimizer": critic_optimizer.state_dict(), "global_step": global_step,
                      "n_updates": n_updates, "rng": rng_state(generators)}
        if args.save_buffer:
            checkpoint["buffer"] = rb.state_dict()
        save_checkpoint(model_path, checkpoint)

    eval_returns = evaluate(actor, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}" + (" (with the replay buffer)" if args.save_buffer else ""))
    writer.close()
    if args.track:
        import wandb

        wandb.finish()
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "n_updates": n_updates,
        "run_dir": f"runs/{run_name}",
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
