"""Deep Deterministic Policy Gradient (DDPG) for continuous actions.

Paper: Lillicrap, Hunt, Pritzel, Heess, Erez, Tassa, Silver, Wierstra (2016), "Continuous control with
deep reinforcement learning", https://arxiv.org/abs/1509.02971. The deterministic policy gradient:
Silver et al. (2014), "Deterministic Policy Gradient Algorithms".

Run:
    python algorithms/ddpg.py                                   # Pendulum-v1, 20k steps
    python algorithms/ddpg.py --env-id HalfCheetah-v5 --total-timesteps 1000000 --learning-starts 5000
    python algorithms/ddpg.py --save-model --save-buffer        # a checkpoint that can resume exactly
    python algorithms/ddpg.py --resume runs/.../ddpg.pt --total-timesteps 40000
    python algorithms/ddpg.py --help

Defaults are CleanRL's / Stable-Baselines3's MuJoCo settings (256-256 MLPs, Adam lr 3e-4, buffer 1e6,
batch 256, gamma 0.99, tau 0.005, Gaussian exploration noise of std 0.1 in units of half the action
range, the actor and the targets updated every second critic step as in CleanRL's ddpg_continuous_action)
except two chosen for the default environment, Pendulum-v1: learning_starts 1000 (MuJoCo: 5000) and
total_timesteps 20000 (MuJoCo: 1e6). The paper itself used Ornstein-Uhlenbeck noise, 400-300 networks,
lr 1e-4 / 1e-3, batch 64 and an L2 penalty on the critic; Fujimoto et al. (2018) found uncorrelated
Gaussian noise works as well, and the later reimplementations dropped the rest. With them the mean final evaluation return (10 deterministic episodes)
on Pendulum-v1 was, seeds 1-5: -195.0, -194.7, -184.2, -181.2, -160.8 (mean -183.2), about 2.5-3 min
each on a loaded 2-core machine. The margin over -200 is thin: one evaluation's spread is about 120,
as the 10 start states differ (lr 1e-3 gave -193.0 on seed 1, no better).

Actions: the actor ends in tanh, so mu(s) is in [-1, 1]^d; the environment receives
    action = low + (a + 1) * (high - low) / 2        (scale_action; unscale_action is its inverse)
The replay buffer and the critic work with the unscaled a in [-1, 1]; exploration adds N(0, sigma^2)
to a and clips to [-1, 1], i.e. a noise std of sigma * (high - low) / 2 in the environment's units.

The math, as written in the code below, for a sampled batch of transitions (s, a, r, s', terminated):
    critic target   y = r + gamma * (1 - terminated) * Q'(s', mu'(s'))            (paper eq. 5, Alg. 1)
    critic loss     L_Q = mean( (Q(s, a) - y)^2 )
    actor loss      L_mu = -mean( Q(s, mu(s)) )      (its gradient is the deterministic policy gradient)
    targets         theta' <- tau * theta + (1 - tau) * theta'   for the actor and the critic (Polyak)
The actor step and the target update run every policy_frequency critic steps (1 = the paper).

Time limits: only `terminated` is stored as the transition's end. An episode cut by a time limit
(`truncated`, Pendulum's 200 steps) is stored with its real last observation (info["final_obs"],
Gymnasium's same-step autoreset mode) and terminated=0, so its target bootstraps from Q'(s', mu'(s')).
More than one environment may run in parallel (--num-envs); every count (learning_starts,
train_frequency, log_every, total_timesteps) is in environment steps summed over the environments,
so the number of gradient steps per environment step does not depend on --num-envs.

Checkpoints and resuming: --save-model writes the actor (what `evaluate` needs) and everything needed to
continue training: the critic, both target networks, both Adam states, the step and update counters and
the random number generators (Python's, torch's, the exploration noise's, the replay sampler's and each
environment's). The replay buffer is included only with --save-buffer (it can be large: 1e6 transitions).
--resume PATH continues from the checkpoint's step up to --total-timesteps (the total, not the extra
steps); the resumed run starts new episodes. Without the buffer, training resumes on an empty buffer
and waits until it holds batch_size transitions. When the checkpoint was taken at an episode boundary of
every environment (e.g. Pendulum, one environment, a multiple of 200 steps) and the buffer was saved,
the resumed run is bit-for-bit the run that never stopped (tests/test_ddpg.py checks this); elsewhere an
episode in progress cannot be saved generically (the simulator's state), so it is dropped.
"""

from __future__ import annotations

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
    exp_name: str = "ddpg"
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
    """if toggled, save a resumable checkpoint to runs/{run_name}/{exp_name}.pt"""
    save_buffer: bool = False
    """if toggled (with --save-model), the checkpoint also holds the replay buffer, for an exact resume"""
    resume: str | None = None
    """a checkpoint written by --save-model: continue that run up to --total-timesteps"""

    env_id: str = "Pendulum-v1"
    """the Gymnasium id of the environment (bounded Box actions, flat observations)"""
    total_timesteps: int = 20_000
    """total environment steps, summed over the parallel environments (MuJoCo: 1e6)"""
    num_envs: int = 1
    """the number of parallel environments"""
    learning_rate: float = 3e-4
    """the Adam learning rate of the actor and the critic"""
    buffer_size: int = 1_000_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: theta' <- tau * theta + (1 - tau) * theta'"""
    batch_size: int = 256
    """transitions per gradient step"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise, as a fraction of half the action range"""
    learning_starts: int = 1000
    """environment steps of uniformly random actions before learning starts (MuJoCo: 5000)"""
    train_frequency: int = 1
    """environment steps per critic gradient step"""
    policy_frequency: int = 2
    """critic gradient steps per actor step and target update (CleanRL: 2; the paper: 1)"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the ReLU hidden layers of the actor and of the critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation"""
    log_every: int = 5_000
    """print a progress line every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> dict | None:
    """Validate the arguments before anything is written; returns the loaded checkpoint when resuming."""
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                 "policy_frequency", "eval_episodes", "log_every", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < 0 or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if args.learning_rate <= 0 or args.exploration_noise < 0:
        fail("need --learning-rate > 0 and --exploration-noise >= 0")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        fail(f"--hidden-sizes must be positive widths, got {args.hidden_sizes}")
    try:
        gym.spec(args.env_id)
    except gym.error.Error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment; try Pendulum-v1 or HalfCheetah-v5")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box):
        fail(f"ddpg.py needs a Box (continuous) action space, {args.env_id} has {action_space}; "
             "use an environment such as Pendulum-v1 (discrete actions: dqn.py, ppo.py)")
    if len(action_space.shape) != 1 or not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        fail(f"ddpg.py needs a flat action space with finite bounds, {args.env_id} has {action_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"ddpg.py needs a flat Box observation, {args.env_id} has {obs_space}; use an environment such as Pendulum-v1")
    if args.resume is None:
        return None
    if not os.path.isfile(args.resume):
        fail(f"--resume {args.resume}: no such file")
    try:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is bad input here
        fail(f"--resume {args.resume} is not a readable checkpoint ({type(e).__name__})")
    if "critic" not in ckpt or "global_step" not in ckpt:
        fail(f"--resume {args.resume} is not a ddpg.py training checkpoint")
    if ckpt["env_id"] != args.env_id or tuple(ckpt["hidden_sizes"]) != tuple(args.hidden_sizes):
        fail(f"--resume {args.resume} was trained on {ckpt['env_id']} with --hidden-sizes {ckpt['hidden_sizes']}; "
             "pass the same --env-id and --hidden-sizes")
    if ckpt["global_step"] >= args.total_timesteps:
        fail(f"--total-timesteps {args.total_timesteps} is the total budget and the checkpoint is already at step "
             f"{ckpt['global_step']}; pass a larger --total-timesteps")
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


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class Actor(nn.Module):
    """mu(s) in [-1, 1]^act_dim (tanh); scale_action maps it to the environment's bounds."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden_sizes)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class Critic(nn.Module):
    """Q(s, a) with a in [-1, 1]^act_dim; the action enters with the observation (as CleanRL and SB3)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden_sizes)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Put all parameters of `module`, and their gradients, into one contiguous buffer; return it.

    Why: with small networks on a CPU the optimiser step, which loops over many small tensors, costs a
    large share of each update. Each parameter becomes a view into one flat tensor (and each .grad a view
    into one flat gradient), so Adam, and the Polyak update of the targets, run once on one tensor. The
    arithmetic is unchanged: Adam and Polyak averaging are elementwise. Autograd accumulates into an
    existing .grad in place, so gradients land in the flat buffer; zero them with `flat.grad.zero_()`.
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
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)  # unscaled, in [-1, 1]
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
        return tuple(torch.from_numpy(getattr(self, f)[idx]) for f in self.FIELDS)

    def state_dict(self, with_data: bool) -> dict:
        state = {"pos": self.pos, "size": self.size, "rng": self.rng.bit_generator.state}
        if with_data:  # only the filled part
            state.update({f: torch.from_numpy(getattr(self, f)[: self.size].copy()) for f in self.FIELDS})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        if "obs" in state:
            if state["size"] > self.capacity:
                raise ValueError("the saved buffer is larger than --buffer-size")
            for f in self.FIELDS:
                getattr(self, f)[: state["size"]] = state[f].numpy()
            self.pos, self.size = state["pos"] % self.capacity, state["size"]


def scale_action(action: np.ndarray | torch.Tensor, low, high):
    """[-1, 1] -> [low, high]: low + (a + 1) * (high - low) / 2."""
    return low + (action + 1.0) * (high - low) / 2.0


def unscale_action(action: np.ndarray | torch.Tensor, low, high):
    """[low, high] -> [-1, 1]: the inverse of scale_action."""
    return 2.0 * (action - low) / (high - low) - 1.0


def critic_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q_target: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * Q'(s', mu'(s')); next_q_target is Q'(s', mu'(s'))."""
    return rewards + gamma * (1.0 - terminations) * next_q_target


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_Q = mean((Q(s, a) - y)^2)."""
    return F.mse_loss(q, target)


def actor_loss(q_of_mu: torch.Tensor) -> torch.Tensor:
    """L_mu = -mean(Q(s, mu(s))): descending it ascends Q along dQ/da * dmu/dtheta (the DPG theorem)."""
    return -q_of_mu.mean()


@torch.no_grad()
def polyak_update(target: torch.Tensor, online: torch.Tensor, tau: float) -> None:
    """theta' <- tau * theta + (1 - tau) * theta', in place, written exactly as the formula."""
    target.copy_(tau * online + (1.0 - tau) * target)


def save_checkpoint(path: str, ckpt: dict) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never leaves a corrupt file."""
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def cloned_state(module_or_optimizer) -> dict:
    """A state dict detached from the flat buffers (their views would otherwise be saved with them)."""
    def clone(x):
        if isinstance(x, torch.Tensor):
            return x.detach().clone()
        if isinstance(x, dict):
            return {k: clone(v) for k, v in x.items()}
        return x
    return clone(module_or_optimizer.state_dict())


def load_actor(path: str) -> tuple[Actor, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    actor = Actor(ckpt["obs_dim"], ckpt["act_dim"], tuple(ckpt["hidden_sizes"]))
    actor.load_state_dict(ckpt["model"])
    return actor, ckpt


def evaluate(actor_or_path: Actor | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """Deterministic evaluation (the action mu(s), no noise) on a fresh environment; one return per episode."""
    actor = load_actor(actor_or_path)[0] if isinstance(actor_or_path, str) else actor_or_path
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                a = actor(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(scale_action(a, low, high).astype(env.action_space.dtype))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def env_rng_states(envs) -> list:
    return [e.unwrapped.np_random.bit_generator.state for e in envs.unwrapped.envs]


def main(args: Args) -> dict:
    resume_ckpt = check_args(args)
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
    rng = np.random.default_rng(args.seed)  # exploration noise and the uniform warm-up actions

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first
    # observation and puts the last one in info["final_obs"], which is what the transition needs.
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    low, high = envs.single_action_space.low, envs.single_action_space.high
    act_dtype = envs.single_action_space.dtype

    actor = Actor(obs_dim, act_dim, args.hidden_sizes).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden_sizes).to(device)
    actor_target = Actor(obs_dim, act_dim, args.hidden_sizes).to(device)
    critic_target_net = Critic(obs_dim, act_dim, args.hidden_sizes).to(device)
    actor_target.load_state_dict(actor.state_dict())
    critic_target_net.load_state_dict(critic.state_dict())
    if resume_ckpt is not None:  # before flattening: load_state_dict then copies into the ordinary tensors
        for net, key in ((actor, "model"), (critic, "critic"), (actor_target, "actor_target"), (critic_target_net, "critic_target")):
            net.load_state_dict(resume_ckpt[key])
    flat_actor, flat_critic = flatten_parameters(actor), flatten_parameters(critic)
    flat_actor_target, flat_critic_target = flatten_parameters(actor_target), flatten_parameters(critic_target_net)
    actor_optimizer = torch.optim.Adam([flat_actor], lr=args.learning_rate)
    critic_optimizer = torch.optim.Adam([flat_critic], lr=args.learning_rate)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, args.seed)

    global_step = 0
    n_updates = 0  # critic gradient steps so far (the policy_frequency clock)
    obs, _ = envs.reset(seed=args.seed)
    if resume_ckpt is not None:
        actor_optimizer.load_state_dict(resume_ckpt["actor_optimizer"])
        critic_optimizer.load_state_dict(resume_ckpt["critic_optimizer"])
        global_step, n_updates = resume_ckpt["global_step"], resume_ckpt["n_updates"]
        r = resume_ckpt["rng"]
        random.setstate((r["python"][0], tuple(r["python"][1]), r["python"][2]))
        torch.set_rng_state(r["torch"])
        rng.bit_generator.state = r["noise"]
        rb.load_state_dict(resume_ckpt["buffer"])
        # The environments' generators as they were before the checkpoint's last step: reset() now draws
        # the same initial states that step's autoreset drew (identical when every episode had just ended).
        for e, state in zip(envs.unwrapped.envs, r["envs_before_last_step"], strict=False):
            e.unwrapped.np_random.bit_generator.state = state
        obs, _ = envs.reset()
        print(f"resumed from {args.resume} at step {global_step:,} (replay buffer: {rb.size:,} transitions)")

    start_step = global_step
    start_time = time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    # one critic step per train_frequency environment steps after learning_starts, counted in global steps
    next_train = args.learning_starts + args.train_frequency if resume_ckpt is None else resume_ckpt["next_train"]
    qf_loss = pi_loss = q_values = None
    envs_before_last_step = env_rng_states(envs)

    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = rng.uniform(-1.0, 1.0, size=(args.num_envs, act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                actions = actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            noise = rng.normal(0.0, args.exploration_noise, size=actions.shape)
            actions = np.clip(actions + noise, -1.0, 1.0).astype(np.float32)
        if global_step + args.num_envs >= args.total_timesteps:
            envs_before_last_step = env_rng_states(envs)  # for an exact resume (see the docstring)
        next_obs, rewards, terminations, truncations, infos = envs.step(scale_action(actions, low, high).astype(act_dtype))
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
            b_obs, b_next_obs, b_actions, b_rewards, b_terminations = (t.to(device) for t in rb.sample(args.batch_size))
            with torch.no_grad():
                next_q = critic_target_net(b_next_obs, actor_target(b_next_obs))
                y = critic_target(b_rewards, b_terminations, next_q, args.gamma)
            q = critic(b_obs, b_actions)
            qf_loss = critic_loss(q, y)
            flat_critic.grad.zero_()
            qf_loss.backward()
            critic_optimizer.step()
            n_updates += 1

            if n_updates % args.policy_frequency == 0:
                pi_loss = actor_loss(critic(b_obs, actor(b_obs)))
                flat_actor.grad.zero_()
                pi_loss.backward()  # also fills the critic's gradient, which the next critic step zeroes first
                actor_optimizer.step()
                polyak_update(flat_actor_target, flat_actor, args.tau)
                polyak_update(flat_critic_target, flat_critic, args.tau)
            q_values = q.detach().mean()

        if global_step >= next_log:
            next_log += args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            if pi_loss is not None:
                writer.add_scalar("losses/qf_loss", qf_loss.item(), global_step)
                writer.add_scalar("losses/actor_loss", pi_loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)

    train_time = time.time() - start_time
    envs.close()
    sps = int((global_step - start_step) / train_time)
    writer.add_scalar("charts/SPS", sps, global_step)
    if pi_loss is not None:
        writer.add_scalar("losses/qf_loss", qf_loss.item(), global_step)
        writer.add_scalar("losses/actor_loss", pi_loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)

    # the generators are recorded before evaluating, which uses none of them but should not matter anyway
    rng_state = {"python": random.getstate(), "torch": torch.get_rng_state(), "noise": rng.bit_generator.state,
                 "envs_before_last_step": envs_before_last_step}
    eval_returns = evaluate(actor, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step:,} steps in {train_time:.1f}s")

    model_path = None
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_checkpoint(model_path, {
            "model": cloned_state(actor), "critic": cloned_state(critic),
            "actor_target": cloned_state(actor_target), "critic_target": cloned_state(critic_target_net),
            "actor_optimizer": cloned_state(actor_optimizer), "critic_optimizer": cloned_state(critic_optimizer),
            "global_step": global_step, "n_updates": n_updates, "next_train": next_train, "rng": rng_state,
            "buffer": rb.state_dict(with_data=args.save_buffer),
            "obs_dim": obs_dim, "act_dim": act_dim, "hidden_sizes": list(args.hidden_sizes), "env_id": args.env_id,
        })
        print(f"model saved to {model_path}" + (" (with the replay buffer)" if args.save_buffer else ""))
    writer.close()
    if args.track:
        import wandb

        wandb.finish()
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": sps,
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": f"runs/{run_name}",
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
