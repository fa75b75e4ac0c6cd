"""C51: categorical distributional DQN.

Paper: Bellemare, Dabney, Munos (2017), "A Distributional Perspective on Reinforcement Learning", ICML,
https://arxiv.org/abs/1707.06887 (Algorithm 1, "categorical algorithm").

Run:
    python algorithms/c51.py --env-id CartPole-v1
    python algorithms/c51.py --env-id LunarLander-v3 --total-timesteps 300000 --v-min -100 --v-max 200 \
        --learning-rate 6.3e-4 --target-network-frequency 250 --learning-starts 5000 --train-frequency 2 \
        --exploration-fraction 0.12 --end-e 0.05
    python algorithms/c51.py --help

Instead of one number Q(s, a), the network predicts a distribution of the return over n_atoms fixed
values (the support) z_i = v_min + i * delta_z, delta_z = (v_max - v_min) / (n_atoms - 1): a softmax over
n_atoms logits per action. The greedy action maximises the distribution's mean.

The math, as written in the code below, for a sampled batch of transitions (s, a, r, s', terminated):
    distribution  p_i(s, a) = softmax_i(logits(s, a)),      Q(s, a) = sum_i p_i(s, a) z_i
    next action   a* = argmax_a sum_i p'_i(s', a) z_i        (p' from the target network: plain C51)
    Bellman shift Tz_j = clamp(r + gamma * (1 - terminated) * z_j, v_min, v_max)
    projection    b_j = (Tz_j - v_min) / delta_z,  l = floor(b_j),  u = ceil(b_j)
                  m_l += p'_j(s', a*) * (u - b_j),   m_u += p'_j(s', a*) * (b_j - l)
                  (when b_j falls exactly on an atom, l == u and the whole p'_j goes to it)
    loss          L = mean over the batch of  -sum_i m_i log p_i(s, a)      (cross-entropy; Algorithm 1)
    target net    theta' <- tau * theta + (1 - tau) * theta' every target_network_frequency steps (tau=1: copy)
    exploration   epsilon decays linearly from start_e to end_e over exploration_fraction * total_timesteps
    learning rate lr_t = learning_rate * (1 - t / total_timesteps)     (--no-anneal-lr: constant)

Defaults: the house DQN's schedule (dqn.py: 128-128 MLP, lr 1e-3, batch 128, target copied every 500
steps, epsilon 1 -> 0.02 over the first 10%, learning from step 1,000, gradient norm clipped at 10) with 51
atoms and the paper's Adam epsilon 0.01 / batch size, and three changes for CartPole in 100k steps:
    support [0, 100]       CartPole's discounted return lies in [0, 1 / (1 - 0.99)] = [0, 100]; on
                           [-100, 100] half of the 51 atoms were never used
    train_frequency 2      a gradient step every 2 environment steps (dqn.py: 4), twice dqn.py's compute
    anneal_lr              the learning rate decays linearly to 0, so the network the final evaluation
                           takes is not still being moved at full speed
Why, measured (final greedy return, seeds as listed): dqn.py's schedule unchanged (support [-100, 100],
every 4 steps, constant lr) gave 500, 495.3, 357.0, 500, 500 on seeds 1-5 (mean 470.5; seed 3 returned 495
in training at the end but 357 greedily: the last network had lost the balance). Support [0, 100] alone:
193.4, 500, 500, 347.1, 500 on seeds 1-5, a collapse late in two runs. Adding the annealing: 500, 458.5,
446.0, 500, 500 on seeds 6-10, no collapse but two runs still learning at 100k. Adding a gradient step
every 2 steps: 500 on all of seeds 6-10. The changes were chosen on seeds 6-10; seeds 1-5 were then run
once with the final defaults (below). CleanRL's c51 CartPole settings (lr 2.5e-4, buffer 10k,
learning_starts 10k, train every 10 steps, epsilon over half the run) are made for 500k steps.

Measured here with `python algorithms/c51.py --seed S --total-timesteps 100000` (one torch thread, 2-core
machine shared with other jobs, defaults, CartPole-v1, greedy evaluation over 10 episodes): seeds 1-5 ->
500, 500, 500, 500, 389.7 (mean 477.9); about 255 s per run (245-265 s). Seed 5 had reached 500 in training
by 50k steps and ended at 456 (training) and 389.7 +- 112.4 (greedy); with seeds 6-10 above, 9 of 10 runs
ended at 500.
LunarLander-v3 with the arguments in the second Run line above (run_all.sh's C51_LUNAR), 300k steps, seeds 1-3,
two runs at a time on the 2 cores (`./run_all.sh value`): 240.1 / 271.5 / 208.0 (mean 239.9); 380-550 s per run
(over two runs of the command, which repeated these returns exactly).
Those settings were chosen on test runs: seed 1 at 200k steps with a gradient step every 4 env steps gave
172.4 (this fixed the budget; the support was not varied); seed 7 at 300k gave 207.8 with a step every 4 env steps and
264.8 with one every 2.

Time limits: only `terminated` is stored as the transition's end. An episode cut by a time limit
(`truncated`) is stored with its real last observation (info["final_obs"], Gymnasium's same-step
autoreset mode) and terminated=0, so its target distribution bootstraps as the Markov property requires.
Every count (train_frequency, target_network_frequency, learning_starts, the epsilon schedule) is in
environment steps summed over the --num-envs parallel environments.
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
    exp_name: str = "c51"
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
    """if toggled, save the trained model to runs/{run_name}/{exp_name}.pt"""

    env_id: str = "CartPole-v1"
    """the Gymnasium id of the environment (discrete actions, flat observations)"""
    total_timesteps: int = 100_000
    """total environment steps, summed over the parallel environments"""
    num_envs: int = 1
    """the number of parallel environments"""
    n_atoms: int = 51
    """the number of atoms of the support (the paper's C51: 51)"""
    v_min: float = 0.0
    """the smallest return the support represents (CartPole's returns are >= 0; -100 left half the atoms unused)"""
    v_max: float = 100.0
    """the largest return the support represents (CartPole's discounted return is at most 100)"""
    learning_rate: float = 1e-3
    """the Adam learning rate"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly from learning_rate to 0 over the run"""
    adam_eps: float = 0.01 / 128
    """Adam's epsilon (the paper: 0.01 / batch size 32; here 0.01 / 128, the default batch)"""
    buffer_size: int = 100_000
    """the replay memory's capacity in transitions"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate: 1.0 copies the online network, < 1 is Polyak averaging"""
    target_network_frequency: int = 500
    """environment steps between target network updates"""
    batch_size: int = 128
    """transitions per gradient step"""
    start_e: float = 1.0
    """the starting exploration epsilon"""
    end_e: float = 0.02
    """the final exploration epsilon"""
    exploration_fraction: float = 0.1
    """the fraction of total_timesteps over which epsilon decays from start_e to end_e"""
    learning_starts: int = 1000
    """environment steps of random-policy data collected before learning starts"""
    train_frequency: int = 2
    """environment steps between training phases (dqn.py: 4; see the module docstring)"""
    gradient_steps: int = 1
    """gradient steps in each training phase"""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """widths of the ReLU hidden layers"""
    max_grad_norm: float = 10.0
    """the maximum norm of the gradient (global clipping)"""
    eval_episodes: int = 10
    """episodes of the final greedy evaluation"""
    log_every: int = 10_000
    """print a progress line every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                 "gradient_steps", "target_network_frequency", "eval_episodes", "learning_rate", "max_grad_norm",
                 "adam_eps", "torch_threads"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if any(h <= 0 for h in args.hidden_sizes):
        fail(f"--hidden-sizes must be positive widths, got {' '.join(map(str, args.hidden_sizes))}")
    if args.n_atoms < 2:
        fail(f"--n-atoms must be at least 2 (the support needs two ends), got {args.n_atoms}")
    if not args.v_min < args.v_max:
        fail(f"need --v-min < --v-max, got {args.v_min} and {args.v_max}")
    if args.learning_starts < 0 or not 0 < args.tau <= 1 or not 0 < args.gamma <= 1:
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not (0 <= args.end_e <= 1 and 0 <= args.start_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need epsilons in [0, 1] and 0 < --exploration-fraction <= 1")
    try:
        gym.spec(args.env_id)
    except gym.error.Error:
        fail(f"--env-id {args.env_id} is not a registered Gymnasium environment; try CartPole-v1 or LunarLander-v3")
    probe = gym.make(args.env_id)
    action_space, obs_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        fail(f"c51.py needs a Discrete action space, {args.env_id} has {action_space}; "
             "use a discrete environment such as CartPole-v1 (continuous actions: ddpg.py, td3.py, sac.py)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"c51.py needs a flat Box observation, {args.env_id} has {obs_space}; "
             "use an environment such as CartPole-v1")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


class QNetwork(nn.Module):
    """An MLP whose output is n_actions x n_atoms logits: one categorical return distribution per action.

    The support is a buffer, not a parameter: it moves with .to(device) and is saved with the model, so a
    checkpoint knows the values its atoms stand for.
    """

    def __init__(self, obs_dim: int, n_actions: int, n_atoms: int = 51, v_min: float = 0.0, v_max: float = 100.0,
                 hidden_sizes: tuple[int, ...] = (128, 128)):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_actions * n_atoms)
        self.n_actions, self.n_atoms = n_actions, n_atoms
        self.register_buffer("support", torch.linspace(v_min, v_max, n_atoms))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_actions, n_atoms]."""
        return self.head(self.trunk(x)).view(-1, self.n_actions, self.n_atoms)

    def q_values(self, x: torch.Tensor) -> torch.Tensor:
        """Q [B, n_actions]: the mean of each action's return distribution."""
        return q_from_distribution(F.softmax(self(x), dim=-1), self.support)


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Put all parameters of `module`, and their gradients, into one contiguous buffer; return it.

    Why: with small networks on a CPU the optimiser step and gradient clipping, which loop over many
    small tensors, cost a large share of each update. Each parameter becomes a view into one flat
    tensor (and each .grad a view into one flat gradient), so Adam and clip_grad_norm_ run once on one
    tensor. The arithmetic is unchanged: Adam is elementwise and the clipping norm is global. Autograd
    accumulates into an existing .grad in place, so gradients land in the flat buffer; zero them with
    `flat.grad.zero_()`, never by setting them to None. (The support buffer is not a parameter: untouched.)
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

    def __init__(self, capacity: int, obs_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
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


def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def q_from_distribution(probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Q = sum_i p_i z_i: probs [..., n_atoms] over the support [n_atoms] -> [...]."""
    return (probs * support).sum(dim=-1)


def project_distribution(
    next_probs: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    support: torch.Tensor,
) -> torch.Tensor:
    """Project the shifted distribution r + gamma * (1 - done) * Z(s', a*) back onto the support.

    next_probs [B, n_atoms] is p'(s', a*); rewards and dones [B] (done = 1.0 for a terminated transition:
    no bootstrap, all mass at r); support [n_atoms] evenly spaced from v_min to v_max. Returns the target
    distribution m [B, n_atoms] (Algorithm 1 of the paper). Each shifted atom Tz_j splits its probability
    between its two neighbouring atoms in proportion to closeness, which keeps the mean wherever Tz lies
    inside [v_min, v_max].
    """
    n_atoms = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta_z = (v_max - v_min) / (n_atoms - 1)
    tz = (rewards.unsqueeze(1) + gamma * (1.0 - dones).unsqueeze(1) * support.unsqueeze(0)).clamp(v_min, v_max)
    # clamp b too: rounding in (Tz - v_min) / delta_z could put it a hair past the last atom's index
    b = ((tz - v_min) / delta_z).clamp(0, n_atoms - 1)
    lower, upper = b.floor(), b.ceil()
    # When b is exactly an atom, l == u and both (u - b) and (b - l) are 0: the "+ (l == u)" gives that atom
    # the whole probability instead of losing it.
    weight_lower = (upper - b) + (lower == upper).to(b.dtype)
    weight_upper = b - lower
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower.long(), next_probs * weight_lower)
    m.scatter_add_(1, upper.long(), next_probs * weight_upper)
    return m


def categorical_loss(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -sum_i m_i log p_i, averaged over the batch; logits and target_probs [B, n_atoms].

    log_softmax instead of log(softmax(.)) so that an atom with vanishing probability gives a finite loss.
    """
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def save_checkpoint(q_network: QNetwork, path: str, meta: dict) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never leaves a corrupt file."""
    state = {k: v.detach().clone() for k, v in q_network.state_dict().items()}  # clone: detach from the flat buffer
    tmp = f"{path}.tmp"
    torch.save({"model": state, **meta}, tmp)
    os.replace(tmp, path)


def load_q_network(path: str) -> tuple[QNetwork, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    q = QNetwork(ckpt["obs_dim"], ckpt["n_actions"], ckpt["n_atoms"], ckpt["v_min"], ckpt["v_max"],
                 tuple(ckpt["hidden_sizes"]))
    q.load_state_dict(ckpt["model"])
    return q, ckpt


def evaluate(q_or_path: QNetwork | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu") -> list[float]:
    """Greedy evaluation (argmax of the distribution's mean) on a fresh environment; one return per episode."""
    q_network = load_q_network(q_or_path)[0] if isinstance(q_or_path, str) else q_or_path
    env = gym.make(env_id)
    returns = []
    for ep in range(eval_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
                action = q_network.q_values(obs_t).argmax(-1)
            obs, reward, terminated, truncated, _ = env.step(int(action.item()))
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
    rng = np.random.default_rng(args.seed)

    # Same-step autoreset: when an episode ends, step() already returns the next episode's first
    # observation and puts the last one in info["final_obs"], which is what the transition needs.
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)

    net_args = (obs_dim, n_actions, args.n_atoms, args.v_min, args.v_max, args.hidden_sizes)
    q_network = QNetwork(*net_args).to(device)
    target_network = QNetwork(*net_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    flat_params = flatten_parameters(q_network)
    flat_target = flatten_parameters(target_network)  # so the Polyak update is one operation too
    optimizer = torch.optim.Adam([flat_params], lr=args.learning_rate, eps=args.adam_eps)
    rb = ReplayBuffer(args.buffer_size, obs_dim, args.seed)
    support = q_network.support
    batch_index = torch.arange(args.batch_size, device=device)

    global_step = 0
    start_time = time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = args.log_every
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    loss = q_values = None
    obs, _ = envs.reset(seed=args.seed)

    while global_step < args.total_timesteps:
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                actions = q_network.q_values(obs_t).argmax(-1).cpu().numpy()
            explore = rng.random(args.num_envs) < epsilon  # epsilon-greedy, decided per environment
            if explore.any():
                actions = np.where(explore, envs.action_space.sample(), actions)
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

        train_now = global_step >= next_train
        if train_now:
            next_train += args.train_frequency
        if train_now and global_step > args.learning_starts:
            if args.anneal_lr:  # lr_t = learning_rate * (1 - t / total_timesteps)
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - global_step / args.total_timesteps)
            for _ in range(args.gradient_steps):
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations = rb.sample(args.batch_size)
                with torch.no_grad():
                    next_probs_all = F.softmax(target_network(b_next_obs), dim=-1)  # [B, n_actions, n_atoms]
                    next_actions = q_from_distribution(next_probs_all, support).argmax(dim=1)
                    next_probs = next_probs_all[batch_index, next_actions]
                    target_probs = project_distribution(next_probs, b_rewards, b_terminations, args.gamma, support)
                logits_taken = q_network(b_obs)[batch_index, b_actions]  # [B, n_atoms]
                loss = categorical_loss(logits_taken, target_probs)
                flat_params.grad.zero_()
                loss.backward()
                nn.utils.clip_grad_norm_([flat_params], args.max_grad_norm)
                optimizer.step()
            q_values = q_from_distribution(F.softmax(logits_taken.detach(), dim=-1), support).mean()

        if global_step >= next_target:
            next_target += args.target_network_frequency
            with torch.no_grad():  # theta' <- tau * theta + (1 - tau) * theta'
                flat_target.data.lerp_(flat_params.data, args.tau)

        if global_step >= next_log:
            next_log += args.log_every
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            if loss is not None:
                writer.add_scalar("losses/loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  epsilon {epsilon:.3f}  return(last 20 episodes) {recent}",
                  flush=True)

    train_time = time.time() - start_time
    envs.close()
    writer.add_scalar("charts/SPS", int(global_step / train_time), global_step)
    writer.add_scalar("charts/epsilon", epsilon, global_step)
    if loss is not None:
        writer.add_scalar("losses/loss", loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)

    eval_returns = evaluate(q_network, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device))
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} over {args.eval_episodes} episodes "
          f"(greedy); trained {global_step:,} steps in {train_time:.1f}s")

    model_path = None
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_checkpoint(q_network, model_path, {"obs_dim": obs_dim, "n_actions": n_actions, "n_atoms": args.n_atoms,
                                                "v_min": args.v_min, "v_max": args.v_max,
                                                "hidden_sizes": list(args.hidden_sizes), "env_id": args.env_id})
        print(f"model saved to {model_path}")
    writer.close()
    if args.track:
        import wandb

        wandb.finish()
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "sps": int(global_step / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": f"runs/{run_name}",
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
