"""Twin Delayed Deep Deterministic policy gradient (TD3), for continuous (Box) actions.

Paper: Fujimoto, van Hoof, Meger (2018), "Addressing Function Approximation Error in Actor-Critic
Methods", ICML, https://arxiv.org/abs/1802.09477. It builds on DDPG (Lillicrap et al., 2016,
https://arxiv.org/abs/1509.02971) with three changes: twin critics whose minimum forms the target,
target policy smoothing, and delayed policy (and target network) updates.

Run:
    python algorithms/td3.py                                   # Pendulum-v1, 20k steps
    python algorithms/td3.py --env-id HalfCheetah-v5 --total-timesteps 1000000 --learning-starts 5000
    python algorithms/td3.py --save-model --save-buffer         # a checkpoint that can resume exactly
    python algorithms/td3.py --resume runs/<run>/td3.pt --total-timesteps 40000
    python algorithms/td3.py --help

Defaults are CleanRL's / Stable-Baselines3's TD3 settings for MuJoCo (256-256 MLPs, Adam lr 3e-4, buffer
1e6, batch 256, gamma 0.99, tau 0.005, exploration noise 0.1, policy noise 0.2, noise clip 0.5, policy
delay 2) except for the budget and learning_starts, set for the default environment Pendulum-v1: 20k
steps with learning_starts 1000 (MuJoCo: --learning-starts 5000 and ~1M steps). With these, the
deterministic 10-episode evaluation on Pendulum-v1 after 20k steps was -193.7, -198.0, -186.5, -181.1,
-142.5 on seeds 1-5 (mean -180.4; about 220 s per run on a shared 2-core machine, one torch thread).
The margin over -200 is thin: 20k steps is the edge of what these MuJoCo settings need on Pendulum.

The math, as written in the code below, for a sampled batch (s, a, r, s', terminated); actions are in
the environment's units, the actor's tanh output in [-1, 1] scaled to [low, high]:
    actor          mu(s) = scale * tanh(f(s)) + bias,   scale = (high - low) / 2,  bias = (high + low) / 2
    smoothing      a~ = clip(mu'(s') + scale * clip(eps, -c, c), low, high),   eps ~ N(0, sigma)
                   (sigma = policy_noise and c = noise_clip are in units of the [-1, 1] action)
    target         y = r + gamma * (1 - terminated) * min(Q1'(s', a~), Q2'(s', a~))      (paper eq. 10)
    critic loss    L_Q = mean( (Q1(s, a) - y)^2 ) + mean( (Q2(s, a) - y)^2 )
    every d = policy_frequency critic updates (delayed policy updates, paper section 5.2):
      actor loss   L_mu = -mean( Q1(s, mu(s)) )                 (deterministic policy gradient through Q1)
      targets      theta' <- tau * theta + (1 - tau) * theta'   for the actor and both critics
    exploration    a = clip(mu(s) + scale * N(0, exploration_noise), low, high); uniform before learning_starts

Time limits: only `terminated` is stored as the transition's end. An episode cut by a time limit
(`truncated`, as every Pendulum episode is at step 200) is stored with its real last observation
(info["final_obs"], Gymnasium's same-step autoreset mode) and terminated=0, so its target bootstraps.
More than one environment may run in parallel (--num-envs); every count (learning_starts, the log
interval) is in environment steps summed over the environments, and each environment step brings one
critic update (the paper's ratio), so a vector step of n environments runs n updates.

Checkpoint and resume: --save-model writes the actor (all evaluation needs) and the training state:
the four networks, both Adam optimisers, the step and update counters, and the random generators
(python, numpy, torch, exploration noise, replay sampling, the action space's). The replay buffer is
included only with --save-buffer (it can be large: 1e6 MuJoCo transitions are ~100 MB). --resume PATH
continues to --total-timesteps. What is not restored: the environments. Gymnasium has no general API
to save an environment's internal state (physics, time-limit counter), so a resumed run starts fresh
episodes (reset with seed + global_step), and a run split in two is not bit-identical to one run.
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
    """torch CPU threads; 1 is fastest for small networks (measured: see README)"""
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
    """if toggled (with --save-model), the checkpoint also holds the replay buffer, for an exact resume"""
    resume: str | None = None
    """a checkpoint written by --save-model: continue its training up to --total-timesteps"""

    env_id: str = "Pendulum-v1"
    """the Gymnasium id of the environment (Box actions, flat Box observations)"""
    total_timesteps: int = 20_000
    """total environment steps, summed over the parallel environments (a resumed run counts from 0)"""
    num_envs: int = 1
    """the number of parallel environments"""
    learning_rate: float = 3e-4
    """the Adam learning rate of the actor and the critics"""
    buffer_size: int = 1_000_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target networks' Polyak rate: theta' <- tau * theta + (1 - tau) * theta'"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_starts: int = 1000
    """environment steps of uniform random actions before learning starts (MuJoCo: 5000, as CleanRL/SB3)"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise, in units of the [-1, 1] action"""
    policy_noise: float = 0.2
    """std sigma of the target policy smoothing noise, in units of the [-1, 1] action"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-noise_clip, noise_clip] (units of the [-1, 1] action)"""
    policy_frequency: int = 2
    """critic updates per actor (and target network) update: the policy delay d"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the actor and of each critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation"""
    log_every: int = 5_000
    """print a progress line every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> dict | None:
    """Validate the arguments before anything is written; return the checkpoint to resume from, if any."""
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "policy_frequency", "eval_episodes",
                 "log_every", "learning_rate", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < 0 or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if args.exploration_noise < 0 or args.policy_noise < 0 or args.noise_clip < 0:
        fail("--exploration-noise, --policy-noise and --noise-clip must be >= 0")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    if args.save_buffer and not args.save_model:
        fail("--save-buffer needs --save-model")
    try:
        gym.spec(args.env_id)
    except gym.error.Error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment; try Pendulum-v1 or HalfCheetah-v5")
    try:
        probe = gym.make(args.env_id)
    except Exception as e:  # e.g. a missing optional dependency (mujoco, box2d)
        fail(f"--env-id {args.env_id} cannot be created: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box):
        fail(f"td3.py needs a Box (continuous) action space, {args.env_id} has {action_space}; "
             "use an environment such as Pendulum-v1 (discrete actions: dqn.py, ppo.py)")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        fail(f"td3.py needs bounded actions to scale tanh to, {args.env_id} has {action_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"td3.py needs a flat Box observation, {args.env_id} has {obs_space}; use e.g. Pendulum-v1")
    if args.resume is None:
        return None
    if not os.path.isfile(args.resume):
        fail(f"--resume {args.resume}: no such file")
    try:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"--resume {args.resume} is not a readable checkpoint ({type(e).__name__})")
    if "training" not in ckpt:
        fail(f"--resume {args.resume} holds no training state; write one with td3.py --save-model")
    if ckpt["env_id"] != args.env_id or tuple(ckpt["hidden_sizes"]) != tuple(args.hidden_sizes):
        fail(f"--resume {args.resume} was trained on {ckpt['env_id']} with --hidden-sizes {ckpt['hidden_sizes']}; "
             "pass the same --env-id and --hidden-sizes")
    if ckpt["training"]["global_step"] >= args.total_timesteps:
        fail(f"--total-timesteps {args.total_timesteps} must exceed the checkpoint's step "
             f"{ckpt['training']['global_step']} to resume")
    return ckpt


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class Actor(nn.Module):
    """Deterministic policy mu(s) = scale * tanh(f(s)) + bias: always inside [low, high]."""

    def __init__(self, obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, act_dim)
        # buffers, not parameters: saved with the model, never trained, outside the flat parameter buffer
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_scale * torch.tanh(self.net(obs)) + self.action_bias


class TwinQ(nn.Module):
    """The two critics Q1(s, a), Q2(s, a): independent networks, trained on the same target."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, hidden_sizes, 1)
        self.q2 = mlp(obs_dim + act_dim, hidden_sizes, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, actions], dim=1)
        return self.q1(x).squeeze(1), self.q2(x).squeeze(1)


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Put all parameters of `module`, and their gradients, into one contiguous buffer; return it.

    Why: with small networks on a CPU the optimiser step, which loops over many small tensors, costs a
    large share of each update. Each parameter becomes a view into one flat tensor (and each .grad a
    view into one flat gradient), so Adam runs once on one tensor, and the Polyak update of a target
    network is one operation. The arithmetic is unchanged: Adam is elementwise. Autograd accumulates
    into an existing .grad in place, so gradients land in the flat buffer; zero them with
    `flat.grad.zero_()`, never by setting them to None. `load_state_dict` copies in place, so the views
    survive loading a checkpoint.
    """
    params = list(module.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


class ReplayBuffer:
    """A ring buffer of transitions in preallocated numpy arrays; uniform sampling."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminations")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
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
        idx = self.rng.integers(0, self.size, size=batch_size)
        return tuple(torch.from_numpy(a[idx]) for a in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.terminations))

    def state_dict(self) -> dict:
        """The stored part only (the first `size` rows), as tensors so torch.load(weights_only=True) reads it."""
        state = {f: torch.from_numpy(getattr(self, f)[: self.size].copy()) for f in self.FIELDS}
        return {**state, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] > self.capacity:
            raise ValueError(f"the saved buffer holds {state['size']} transitions, more than --buffer-size {self.capacity}")
        for f in self.FIELDS:
            getattr(self, f)[: state["size"]] = state[f].numpy()
        self.size, self.pos = state["size"], state["pos"] % self.capacity


def td3_target(
    rewards: torch.Tensor,
    terminations: torch.Tensor,
    next_obs: torch.Tensor,
    next_actions: torch.Tensor,
    noise: torch.Tensor,
    target_critic,
    gamma: float,
    noise_clip: float,
    action_scale: torch.Tensor,
    action_low: torch.Tensor,
    action_high: torch.Tensor,
) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * min(Q1'(s', a~), Q2'(s', a~)),
    a~ = clip(mu'(s') + scale * clip(eps, -c, c), low, high).

    next_actions is mu'(s') in the environment's units; noise is eps ~ N(0, sigma), drawn by the caller
    (so a test can inject it), in units of the [-1, 1] action; target_critic(s', a) returns (Q1', Q2').
    Clipping the noise keeps the smoothed action near mu'(s') (paper eq. 14); clipping the sum keeps it a
    legal action.
    """
    smoothed = (next_actions + action_scale * noise.clamp(-noise_clip, noise_clip)).clamp(action_low, action_high)
    q1_next, q2_next = target_critic(next_obs, smoothed)
    return rewards + gamma * (1.0 - terminations) * torch.min(q1_next, q2_next)


def polyak_update(target: torch.Tensor, online: torch.Tensor, tau: float) -> None:
    """theta' <- tau * theta + (1 - tau) * theta', in place (on flat parameter buffers: one operation)."""
    with torch.no_grad():
        target.mul_(1.0 - tau).add_(tau * online)


class TD3Learner:
    """The four networks, their flat parameter buffers and the two optimisers, with one TD3 update."""

    def __init__(self, obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray,
                 hidden_sizes: tuple[int, ...], learning_rate: float, device: torch.device):
        self.actor = Actor(obs_dim, act_dim, low, high, hidden_sizes).to(device)
        self.critic = TwinQ(obs_dim, act_dim, hidden_sizes).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_flat = flatten_parameters(self.actor)
        self.critic_flat = flatten_parameters(self.critic)  # both critics: one Adam over one buffer
        self.actor_target_flat = flatten_parameters(self.actor_target)
        self.critic_target_flat = flatten_parameters(self.critic_target)
        self.actor_optimizer = torch.optim.Adam([self.actor_flat], lr=learning_rate)
        self.critic_optimizer = torch.optim.Adam([self.critic_flat], lr=learning_rate)
        self.low = torch.as_tensor(low, dtype=torch.float32, device=device)
        self.high = torch.as_tensor(high, dtype=torch.float32, device=device)

    def update(self, batch: tuple[torch.Tensor, ...], n_update: int, gamma: float, tau: float, policy_noise: float,
               noise_clip: float, policy_frequency: int) -> dict:
        """Critic update number `n_update` (counted from 1); the actor and all targets move when
        n_update is a multiple of policy_frequency. Returns the losses as tensors (no .item() here)."""
        obs, actions, rewards, next_obs, terminations = batch
        with torch.no_grad():
            next_actions = self.actor_target(next_obs)
            noise = torch.randn_like(next_actions) * policy_noise  # eps ~ N(0, sigma)
            y = td3_target(rewards, terminations, next_obs, next_actions, noise, self.critic_target, gamma,
                           noise_clip, self.actor_target.action_scale, self.low, self.high)
        q1, q2 = self.critic(obs, actions)
        qf1_loss, qf2_loss = F.mse_loss(q1, y), F.mse_loss(q2, y)
        critic_loss = qf1_loss + qf2_loss
        self.critic_flat.grad.zero_()
        critic_loss.backward()
        self.critic_optimizer.step()
        stats = {"qf1_loss": qf1_loss.detach(), "qf2_loss": qf2_loss.detach(),
                 "qf_loss": critic_loss.detach() / 2.0,  # the mean of the two critics' losses
                 "q_values": q1.detach().mean()}

        if n_update % policy_frequency == 0:  # delayed policy updates (paper section 5.2)
            actor_loss = -self.critic(obs, self.actor(obs))[0].mean()
            self.actor_flat.grad.zero_()
            actor_loss.backward()  # also fills the critic's gradients; they are zeroed before the next critic step
            self.actor_optimizer.step()
            polyak_update(self.actor_target_flat, self.actor_flat, tau)
            polyak_update(self.critic_target_flat, self.critic_flat, tau)
            stats["actor_loss"] = actor_loss.detach()
        return stats

    def state_dict(self) -> dict:
        clone = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731 -- detach from the flat buffers
        return {"actor": clone(self.actor.state_dict()), "critic": clone(self.critic.state_dict()),
                "actor_target": clone(self.actor_target.state_dict()), "critic_target": clone(self.critic_target.state_dict()),
                "actor_optimizer": self.actor_optimizer.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_optimizer", "critic_optimizer"):
            getattr(self, name).load_state_dict(state[name])


def rng_state(rngs: dict[str, np.random.Generator]) -> dict:
    """All random generators' states, in types torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            **{k: g.bit_generator.state for k, g in rngs.items()}}


def set_rng_state(state: dict, rngs: dict[str, np.random.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    for k, g in rngs.items():
        g.bit_generator.state = state[k]


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never leaves a corrupt file."""
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_actor(path: str) -> tuple[Actor, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    actor = Actor(ckpt["obs_dim"], ckpt["act_dim"], np.asarray(ckpt["action_low"]), np.asarray(ckpt["action_high"]),
                  tuple(ckpt["hidden_sizes"]))
    actor.load_state_dict(ckpt["actor"])
    return actor, ckpt


def evaluate(actor_or_path: Actor | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """Deterministic evaluation (mu(s), no noise) on a fresh environment; returns one return per episode."""
    actor = load_actor(actor_or_path)[0].to(device) if isinstance(actor_or_path, str) else actor_or_path
    env = gym.make(env_id)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))[0]
            obs, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main(args: Args) -> dict:
    resume = check_args(args)
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
    noise_rng = np.random.default_rng(args.seed)  # exploration noise

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
    low = envs.single_action_space.low.astype(np.float32)
    high = envs.single_action_space.high.astype(np.float32)
    action_scale = (high - low) / 2.0

    learner = TD3Learner(obs_dim, act_dim, low, high, args.hidden_sizes, args.learning_rate, device)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, args.seed)
    rngs = {"noise": noise_rng, "buffer": rb.rng, "action_space": envs.action_space.np_random}

    global_step, n_updates, next_log = 0, 0, args.log_every
    if resume is not None:
        training = resume["training"]
        learner.load_state_dict(training["learner"])
        set_rng_state(training["rng"], rngs)
        global_step, n_updates, next_log = training["global_step"], training["n_updates"], training["next_log"]
        if "buffer" in training:
            rb.load_state_dict(training["buffer"])
        print(f"resumed from {args.resume} at step {global_step:,} ({n_updates:,} updates, "
              f"{'with' if 'buffer' in training else 'without'} its replay buffer)", flush=True)
    start_step = global_step

    start_time = time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    stats: dict = {}
    # a resumed run starts new episodes, from seeds its first part did not use
    obs, _ = envs.reset(seed=args.seed + global_step)

    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = learner.actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            noise = noise_rng.normal(0.0, args.exploration_noise, size=actions.shape) * action_scale
            actions = np.clip(actions + noise, low, high).astype(np.float32)
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

        # one critic update per environment step; a resumed run without its buffer waits for a batch
        if global_step > args.learning_starts and rb.size >= args.batch_size:
            for _ in range(args.num_envs):
                n_updates += 1
                # update() keys overwrite; actor_loss keeps its value from the last delayed update
                batch = tuple(t.to(device) for t in rb.sample(args.batch_size))
                stats.update(learner.update(batch, n_updates, args.gamma, args.tau, args.policy_noise,
                                            args.noise_clip, args.policy_frequency))

        if global_step >= next_log or global_step >= args.total_timesteps:
            next_log += args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            for key, val in stats.items():
                writer.add_scalar(f"losses/{key}", val.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  updates {n_updates:>9,}  return(last 20 episodes) {recent}",
                  flush=True)

    train_time = time.time() - start_time
    envs.close()

    model_path = None
    if args.save_model:  # the training state is taken here, before evaluation
        training = {"learner": learner.state_dict(), "rng": rng_state(rngs), "global_step": global_step,
                    "n_updates": n_updates, "next_log": next_log}
        if args.save_buffer:
            training["buffer"] = rb.state_dict()
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_checkpoint(model_path, {"actor": training["learner"]["actor"], "obs_dim": obs_dim, "act_dim": act_dim,
                                     "action_low": low.tolist(), "action_high": high.tolist(),
                                     "hidden_sizes": list(args.hidden_sizes), "env_id": args.env_id,
                                     "training": training})

    eval_returns = evaluate(learner.actor, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}")
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
