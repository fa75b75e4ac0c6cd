"""Independent Q-learning (IQL) with DQNs: every agent learns its own Q-function, the others part of its environment.

Paper: Tan (1993), "Multi-Agent Reinforcement Learning: Independent vs. Cooperative Agents", Proceedings of the
Tenth International Conference on Machine Learning (ICML), 330-337; with deep Q-networks as in Tampuu et al.
(2017), "Multiagent cooperation and competition with deep reinforcement learning", https://arxiv.org/abs/1511.08779.
DQN, double Q and the dueling head: dqn.py. (Not offline Implicit Q-Learning, which is iql.py.)

Run:
    python algorithms/iql_marl.py                               # mpe2's simple_spread_v3 (N=3, 25 steps)
    python algorithms/iql_marl.py --share-parameters            # one network for all agents, with a one-hot agent id
    python algorithms/iql_marl.py --double-q --env-kwargs N=4 max_cycles=50
    python algorithms/iql_marl.py --help                        # every hyperparameter, with its meaning

Tested: simple_spread_v3, 300k environment steps, seed 1: team return > -65, random ~ -82 (tests/test_iql_marl.py).
Results: benchmark_results/iql_marl.md

Each agent a acts from its own observation o_a and learns Q_a(o_a, u_a) as if it were alone: the other agents'
actions are part of its environment's transitions, which therefore change as they learn (the environment is not
stationary from any one agent's point of view; independent learners have no guarantee, and work often). By default
every agent has its own network Q_a and its own Adam moments and gradient clipping (one DQN per agent); with
--share-parameters one network serves them all, told apart by a one-hot agent id appended to the observation:
    x_a = [o_a, onehot(a)],   Q_a(o_a, u) = Q(x_a, u)
The math, as the code computes it, for a sampled batch of every agent's transitions (o_a, u_a, r_a, o'_a, term_a):
    target        y_a = r_a + gamma * (1 - term_a) * Q_a^target(o'_a, u*)
                  u* = argmax_u Q_a^target(o'_a, u)          (DQN)
                  u* = argmax_u Q_a(o'_a, u)                 (--double-q: agent a's online network selects)
    agent loss    L_a = mean over agent a's transitions of (Q_a(o_a, u_a) - y_a)^2   (--loss huber: Huber)
    total loss    L = sum_a L_a                (independent networks: each gets exactly its own DQN gradient)
                  L = mean_a L_a               (--share-parameters: one DQN on every agent's transitions)
    target net    theta' <- tau * theta + (1 - tau) * theta' every target_network_frequency steps (tau=1: copy)
    exploration   epsilon decays linearly from start_e to end_e over exploration_fraction * total_timesteps; each
                  agent of each copy explores on its own coin flip (independent learners explore independently)
The replay buffer stores, per step of each copy, every agent's transition; each agent samples its own batch of its
own transitions (independent indices per agent), as if it had its own buffer.

The environments: mappo.py's. --env-id names a PettingZoo parallel environment module (a bare name is looked up in
mpe2, a dotted one imported as it is), --env-kwargs key=value pairs go to its parallel_env(); every agent needs the
same flat Box observation and the same Discrete action space (continuous actions: refused with one line).
BatchedParallelEnv steps --num-envs copies one after another and resets a copy in the step where its episode ends
(Gymnasium's same-step autoreset mode: the last observations are in info["final_obs"]). One step of the parallel
environment moves every agent once and counts as one environment step; every count here (train_frequency,
target_network_frequency, learning_starts, the epsilon schedule, buffer_size) is in environment steps.
Time limits: at 25 steps simple_spread truncates every agent, a time limit and not a termination: the transition
is stored with the real last observation (info["final_obs"]) and term = 0, so its target bootstraps, as dqn.py's.
An agent that is done before its copy's episode ends (none in simple_spread) stops acting; its later steps are kept
out of the loss by the buffer's `active` mask.

Returns, named because the literature mixes them: an agent's return is the sum of its rewards over the episode;
the team return, charts/episodic_return and the evaluation's figure, is the sum of the agents' returns;
charts/episodic_return_per_agent is the team return / n_agents; each agent's return is charts/agent_return/<agent>.

Long runs: ppo.py's form (--checkpoint-every, SIGINT/SIGTERM, --resume, exit 3 on a NaN or infinite value;
--save-buffer adds the replay buffer to checkpoints). A PettingZoo environment's state cannot be saved, so a
resumed run starts new episodes.

The defaults: 16 copies (as mappo.py), dqn.py's 128-128 ReLU network, a squared TD error (as EPyMARL's IQL), lr 5e-4,
batch 256 per agent, one gradient step per batched step of the 16 copies, the target copied every 1,000 steps,
epsilon 1 -> 0.05 over the first 20% of training; feed-forward networks instead of EPyMARL's recurrent ones.
"""

from __future__ import annotations

import ast
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
    exp_name: str = "iql_marl"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
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
    """if toggled, record videos of the first copy's episodes 0, 1, 8, 27, ... (cubes, then every 1000th) into videos/{run_name}"""
    save_model: bool = False
    """if toggled, save the trained model to runs/{run_name}/{exp_name}.pt"""
    checkpoint_every: int = 0
    """write the training state to runs/{run_name}/checkpoint_{step}.pt every this many environment steps (0: never)"""
    keep_checkpoints: int = 2
    """how many of the newest periodic checkpoints to keep"""
    resume: str | None = None
    """continue training from this checkpoint (periodic, interrupted or --save-model) up to --total-timesteps"""
    nan_check: bool = True
    """if toggled, a NaN or infinite observation, reward, loss or gradient norm stops the run (exit 3)"""
    save_buffer: bool = False
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the replay buffer"""

    env_id: str = "simple_spread_v3"
    """a PettingZoo parallel environment module: a bare name is looked up in mpe2, a dotted one imported as given"""
    env_kwargs: tuple[str, ...] = ()
    """key=value arguments of the environment's parallel_env() (e.g. N=3 max_cycles=25; values are Python literals)"""
    share_parameters: bool = False
    """if toggled, one Q-network for all agents, with a one-hot agent id appended to each observation"""
    total_timesteps: int = 300_000
    """total environment steps (one step of the parallel environment moves every agent), summed over the copies"""
    num_envs: int = 16
    """the number of copies of the environment stepped together"""
    learning_rate: float = 5e-4
    """the Adam learning rate"""
    buffer_size: int = 100_000
    """the replay memory's capacity in environment steps (each holds every agent's transition)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate: 1.0 copies the online network, < 1 is Polyak averaging"""
    target_network_frequency: int = 1000
    """environment steps between target network updates"""
    batch_size: int = 256
    """transitions per agent per gradient step"""
    start_e: float = 1.0
    """the starting exploration epsilon"""
    end_e: float = 0.05
    """the final exploration epsilon"""
    exploration_fraction: float = 0.2
    """the fraction of total_timesteps over which epsilon decays from start_e to end_e"""
    learning_starts: int = 5000
    """environment steps of uniformly random actions collected before learning starts"""
    train_frequency: int = 16
    """environment steps between training phases (16: one per batched step of the 16 copies)"""
    gradient_steps: int = 1
    """gradient steps in each training phase"""
    double_q: bool = False
    """if toggled, use the double DQN target (each agent's online network selects, its target network evaluates)"""
    dueling: bool = False
    """if toggled, use the dueling head Q = V + A - mean(A)"""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """widths of the ReLU hidden layers of each Q-network"""
    loss: str = "mse"
    """the TD loss: mse (the squared error, as EPyMARL's IQL) or huber (smooth L1, as the Nature DQN)"""
    max_grad_norm: float = 10.0
    """the maximum norm of each network's gradient (clipped per agent without --share-parameters)"""
    eval_episodes: int = 10
    """episodes of the final deterministic (greedy) evaluation"""
    log_every: int = 10_000
    """print a progress line every this many environment steps"""


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def env_kwargs_dict(pairs: tuple[str, ...] | list[str]) -> dict:
    """--env-kwargs as a dict: "N=3" -> {"N": 3}; a value that is not a Python literal stays a string. ValueError
    (one line) on a pair without "="."""
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ValueError(f"{pair!r} is not of the form key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def make_parallel_env(env_id: str, env_kwargs: dict, render_mode: str | None = None):
    """A PettingZoo parallel environment from its module (a bare name is one of mpe2's). ImportError or TypeError
    with a one-line reason when the module cannot be imported, has no parallel_env() or refuses the arguments."""
    module_name = env_id if "." in env_id else f"mpe2.{env_id}"
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a module can fail to import in any way
        raise ImportError(f"module {module_name} cannot be imported ({type(error).__name__})") from None
    if not callable(getattr(module, "parallel_env", None)):
        raise ImportError(f"module {module_name} has no parallel_env()")
    kwargs = {**env_kwargs, **({"render_mode": render_mode} if render_mode else {})}
    try:
        return module.parallel_env(**kwargs)
    except TypeError as error:
        raise TypeError(f"{module_name}.parallel_env() refuses {env_kwargs} ({error})") from None


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                 "target_network_frequency", "eval_episodes", "log_every", "torch_threads", "keep_checkpoints"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not args.max_grad_norm > 0 or not args.checkpoint_every >= 0:
        fail(f"need 0 < --learning-rate < inf, --max-grad-norm > 0 and --checkpoint-every >= 0, got "
             f"{args.learning_rate}, {args.max_grad_norm} and {args.checkpoint_every}")
    if args.buffer_size < args.num_envs:
        fail(f"--buffer-size {args.buffer_size} is too small: each of the {args.num_envs} copies needs a row")
    if not all(h > 0 for h in args.hidden_sizes):
        fail(f"--hidden-sizes must be positive widths, got {' '.join(map(str, args.hidden_sizes))}")
    if not (args.learning_starts >= 0 and 0 < args.tau <= 1 and 0 < args.gamma <= 1):
        fail("need --learning-starts >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not (0 <= args.start_e <= 1 and 0 <= args.end_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need --start-e and --end-e in [0, 1] and 0 < --exploration-fraction <= 1")
    if args.loss not in ("huber", "mse"):
        fail(f"--loss must be mse or huber, got {args.loss}")
    try:
        kwargs = env_kwargs_dict(args.env_kwargs)
        probe = make_parallel_env(args.env_id, kwargs)
    except (ValueError, ImportError, TypeError) as error:
        fail(f"--env-id {args.env_id} --env-kwargs {' '.join(args.env_kwargs)}: not a PettingZoo parallel "
             f"environment ({error}); try simple_spread_v3 (mpe2) or a dotted module such as mpe2.simple_spread_v3")
    from pettingzoo.utils.env import ParallelEnv

    if not isinstance(probe, ParallelEnv):
        fail(f"--env-id {args.env_id} is not a PettingZoo parallel environment (got {type(probe).__name__}); "
             "try simple_spread_v3")
    agents = list(probe.possible_agents)
    obs_spaces = [probe.observation_space(a) for a in agents]
    action_spaces = [probe.action_space(a) for a in agents]
    probe.close()
    if not all(isinstance(s, gym.spaces.Discrete) for s in action_spaces):
        fail(f"iql_marl.py needs Discrete actions (Q-learning takes a max over them), {args.env_id} has "
             f"{action_spaces[0]}; drop continuous_actions=True or use a discrete environment such as simple_spread_v3")
    if not all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in obs_spaces):
        fail(f"iql_marl.py needs flat Box observations, {args.env_id} has {obs_spaces[0]}; try simple_spread_v3")
    if len({s.shape for s in obs_spaces}) > 1 or len({s.n for s in action_spaces}) > 1:
        fail(f"iql_marl.py stacks the agents' observations and actions and needs the same spaces for each; "
             f"{args.env_id} has {[s.shape for s in obs_spaces]} and {[s.n for s in action_spaces]}; try simple_spread_v3")
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def capped_cubic_schedule(episode: int) -> bool:
    """Record episodes 0, 1, 8, 27, ... (perfect cubes) up to 1000, then every 1000th (Gymnasium's RecordVideo)."""
    return round(episode ** (1.0 / 3)) ** 3 == episode if episode < 1000 else episode % 1000 == 0


class BatchedParallelEnv:
    """num_envs copies of a PettingZoo parallel environment, stepped one after another in this process, their outputs
    stacked into arrays indexed [copy, agent]; a copy whose episode ends is reset in the same step (see the module
    docstring). `alive[e, a]`: agent a of copy e acts at the next step."""

    def __init__(self, env_fns: list[Callable], video_dir: str | None = None):
        self.envs = [fn() for fn in env_fns]
        first = self.envs[0]
        self.agents = list(first.possible_agents)
        self.num_envs, self.n_agents = len(self.envs), len(self.agents)
        self.obs_dim = int(first.observation_space(self.agents[0]).shape[0])
        self.n_actions = int(first.action_space(self.agents[0]).n)
        self.alive = np.zeros((self.num_envs, self.n_agents), dtype=bool)
        self.episode_returns = np.zeros((self.num_envs, self.n_agents))
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.video_dir, self.episode_index, self.frames = video_dir, 0, []

    def stack(self, obs: dict) -> np.ndarray:
        """One copy's observation dict as an (n_agents, obs_dim) array; an agent absent from it gets zeros."""
        out = np.zeros((self.n_agents, self.obs_dim), dtype=np.float32)
        for j, agent in enumerate(self.agents):
            if agent in obs:
                out[j] = obs[agent]
        return out

    def reset_copy(self, e: int, seed: int | None) -> np.ndarray:
        obs, _ = self.envs[e].reset(seed=seed)
        self.alive[e] = [agent in self.envs[e].agents for agent in self.agents]
        self.episode_returns[e], self.episode_lengths[e] = 0.0, 0
        if e == 0 and self.video_dir is not None:
            self.frames = [self.envs[0].render()] if capped_cubic_schedule(self.episode_index) else []
        return self.stack(obs)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reset every copy (copy e with seed + e); returns observations (num_envs, n_agents, obs_dim) and states."""
        obs = np.stack([self.reset_copy(e, None if seed is None else seed + e) for e in range(self.num_envs)])
        return obs, self.state()

    def copy_state(self, e: int) -> np.ndarray:
        """Copy e's global state; an empty array for an environment without state() (IPPO needs none)."""
        try:
            return np.asarray(self.envs[e].state(), dtype=np.float32).reshape(-1)
        except (NotImplementedError, AttributeError):
            return np.zeros(0, dtype=np.float32)

    def state(self) -> np.ndarray:
        return np.stack([self.copy_state(e) for e in range(self.num_envs)])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every copy with actions (num_envs, n_agents); returns (obs, state, rewards, terminated, truncated,
        info). info["_final"] marks the copies whose episode ended (and were reset): their last observations and
        states are in info["final_obs"] / info["final_state"], their agents' returns and the length in
        info["episode"]["r"] (num_envs, n_agents) and ["l"]."""
        shape = (self.num_envs, self.n_agents)
        obs = np.zeros((*shape, self.obs_dim), dtype=np.float32)
        rewards, terminated, truncated = np.zeros(shape, np.float32), np.zeros(shape, bool), np.zeros(shape, bool)
        final = np.zeros(self.num_envs, dtype=bool)
        final_obs, final_states = np.zeros_like(obs), {}
        ep_returns, ep_lengths = np.zeros(shape), np.zeros(self.num_envs, dtype=np.int64)
        for e, env in enumerate(self.envs):
            acting = {agent: int(actions[e, j]) for j, agent in enumerate(self.agents) if self.alive[e, j]}
            o, r, term, trunc, _ = env.step(acting)
            for j, agent in enumerate(self.agents):
                rewards[e, j] = r.get(agent, 0.0) if self.alive[e, j] else 0.0
                terminated[e, j], truncated[e, j] = term.get(agent, False), trunc.get(agent, False)
            self.episode_returns[e] += rewards[e]
            self.episode_lengths[e] += 1
            if e == 0 and self.frames:
                self.frames.append(env.render())
            obs[e] = self.stack(o)
            if env.agents:  # the episode goes on; agents that are done now act no more
                self.alive[e] = [agent in env.agents for agent in self.agents]
                continue
            final[e], final_obs[e], final_states[e] = True, obs[e], self.copy_state(e)
            ep_returns[e], ep_lengths[e] = self.episode_returns[e], self.episode_lengths[e]
            if e == 0 and self.frames:
                from gymnasium.utils.save_video import save_video

                save_video(self.frames, self.video_dir, episode_trigger=lambda _: True, fps=10,
                           episode_index=self.episode_index, save_logger=None)
            if e == 0:
                self.episode_index += 1
            obs[e] = self.reset_copy(e, None)
        state = self.state()
        final_state = np.zeros_like(state)
        for e, s in final_states.items():
            final_state[e] = s
        info = {"_final": final, "final_obs": final_obs, "final_state": final_state,
                "episode": {"r": ep_returns, "l": ep_lengths}}
        return obs, state, rewards, terminated, truncated, info

    def close(self) -> None:
        for env in self.envs:
            env.close()


def with_agent_ids(x: torch.Tensor) -> torch.Tensor:
    """Append each agent's one-hot id to its input: x (..., n_agents, d) -> (..., n_agents, d + n_agents)."""
    n_agents = x.shape[-2]
    ids = torch.eye(n_agents, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], n_agents)
    return torch.cat([x, ids], dim=-1)


def dueling_aggregate(value: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), the mean over the action dimension (dim 1).

    value [B, 1], advantages [B, n_actions]; with a trailing atom dimension ([B, 1, n_atoms] and
    [B, n_actions, n_atoms]) the mean is taken per atom. Subtracting the mean makes V and A identifiable
    (Wang et al., 2016, eq. 9).
    """
    return value + advantages - advantages.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    """An MLP with one Q-value per action; with dueling, a value head and an advantage head."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...] = (128, 128), dueling: bool = False):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.dueling = dueling
        if dueling:
            self.value_head = nn.Linear(width, 1)
            self.advantage_head = nn.Linear(width, n_actions)
        else:
            self.q_head = nn.Linear(width, n_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q [B, n_actions]."""
        h = self.trunk(x)
        if self.dueling:
            return dueling_aggregate(self.value_head(h), self.advantage_head(h))
        return self.q_head(h)

    @torch.no_grad()
    def greedy_action(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_a Q(s, a): x [B, obs_dim] -> actions [B]."""
        return self(x).argmax(dim=1)


class MultiAgentQNetwork(nn.Module):
    """Every agent's Q-values from its own observation: one QNetwork per agent (independent learners), or with
    share_parameters one QNetwork for all whose input is the observation and a one-hot agent id."""

    def __init__(self, obs_dim: int, n_agents: int, n_actions: int, hidden_sizes: tuple[int, ...] = (128, 128),
                 dueling: bool = False, share_parameters: bool = False):
        super().__init__()
        self.share_parameters = share_parameters
        in_dim = obs_dim + n_agents if share_parameters else obs_dim
        self.nets = nn.ModuleList(QNetwork(in_dim, n_actions, tuple(hidden_sizes), dueling)
                                  for _ in range(1 if share_parameters else n_agents))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., n_agents, obs_dim) -> Q (..., n_agents, n_actions); agent a's values from o_a only."""
        if self.share_parameters:
            x = with_agent_ids(obs)
            return self.nets[0](x.reshape(-1, x.shape[-1])).view(*obs.shape[:-1], -1)
        lead = obs.shape[:-2]
        return torch.stack([net(obs[..., a, :].reshape(-1, obs.shape[-1])).view(*lead, -1)
                            for a, net in enumerate(self.nets)], dim=-2)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """argmax_u Q_a(o_a, u) for every agent, for acting and the deterministic evaluation: (..., n_agents)."""
        return self(obs).argmax(-1)


class MultiAgentReplayBuffer:
    """A ring of batched steps in preallocated numpy arrays, [row, copy, agent, ...]; each agent samples its own
    transitions uniformly (its own row and copy indices), as if it had a buffer of its own. `active` marks the agents
    that acted at the step (death masking)."""

    def __init__(self, capacity: int, num_envs: int, n_agents: int, obs_dim: int, seed: int):
        self.rows, self.num_envs, self.n_agents = capacity // num_envs, num_envs, n_agents
        self.obs = np.zeros((self.rows, num_envs, n_agents, obs_dim), dtype=np.float32)
        self.actions = np.zeros((self.rows, num_envs, n_agents), dtype=np.int64)
        self.rewards = np.zeros((self.rows, num_envs, n_agents), dtype=np.float32)
        self.next_obs = np.zeros((self.rows, num_envs, n_agents, obs_dim), dtype=np.float32)
        self.terminations = np.zeros((self.rows, num_envs, n_agents), dtype=np.float32)
        self.active = np.zeros((self.rows, num_envs, n_agents), dtype=np.float32)
        self.pos, self.filled = 0, 0  # the next row to write, the rows written so far
        self.rng = np.random.default_rng(seed)

    def add(self, obs, actions, rewards, next_obs, terminations, active) -> None:
        """Add one batched step: arrays with leading (num_envs, n_agents) dimensions."""
        j = self.pos
        self.obs[j], self.actions[j], self.rewards[j] = obs, actions, rewards
        self.next_obs[j], self.terminations[j], self.active[j] = next_obs, terminations, active
        self.pos = (j + 1) % self.rows
        self.filled = min(self.filled + 1, self.rows)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(obs, actions, rewards, next_obs, terminations, active), each [batch_size, n_agents, ...]: column a holds
        batch_size transitions of agent a, drawn uniformly and independently of the other agents' draws."""
        envs = self.rng.integers(0, self.num_envs, size=(batch_size, self.n_agents))
        rows = self.rng.integers(0, self.filled, size=(batch_size, self.n_agents))
        agents = np.arange(self.n_agents)
        return tuple(torch.from_numpy(a[rows, envs, agents]).to(device) for a in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.terminations, self.active))

    def state_dict(self) -> dict:
        """The stored transitions and the ring's position, as tensors (checkpoints with --save-buffer)."""
        keys = ("obs", "actions", "rewards", "next_obs", "terminations", "active")
        return {**{k: torch.from_numpy(getattr(self, k)) for k in keys}, "pos": self.pos, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if state["obs"].shape != self.obs.shape:
            fail(f"the checkpoint's replay buffer has another shape ({tuple(state['obs'].shape)}, here "
                 f"{self.obs.shape}): resume with its --buffer-size and --num-envs")
        for k in ("obs", "actions", "rewards", "next_obs", "terminations", "active"):
            getattr(self, k)[...] = state[k].numpy()
        self.pos, self.filled = state["pos"], state["filled"]

    def __len__(self) -> int:
        return self.filled * self.num_envs


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """start -> end linearly over `duration` (of training's progress, in [0, 1]), then end (it decays or grows)."""
    return start + min(t / duration, 1.0) * (end - start)


def dqn_target(
    rewards: torch.Tensor,
    terminations: torch.Tensor,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None,
    gamma: float | torch.Tensor,
) -> torch.Tensor:
    """TD target y = r + gamma * (1 - terminated) * Q_target(s', a*).

    a* is the target network's argmax (DQN), or the online network's argmax when next_q_online is
    given (double DQN: the online network selects the action, the target network evaluates it).
    gamma is a float or one discount per sample [B] (gamma^m for an m-step return).
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_value


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging, target <- tau * online + (1 - tau) * target (tau = 1: a copy)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


def agent_td_targets(
    rewards: torch.Tensor,
    terminations: torch.Tensor,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None,
    gamma: float,
) -> torch.Tensor:
    """Each agent's DQN target y_a = r_a + gamma * (1 - term_a) * Q_a^target(o'_a, u*): dqn_target on the batch
    and agent dimensions flattened. rewards, terminations [B, n_agents]; next Q-values [B, n_agents, n_actions]."""
    B, A, n_actions = next_q_target.shape
    online = None if next_q_online is None else next_q_online.reshape(B * A, n_actions)
    return dqn_target(rewards.reshape(B * A), terminations.reshape(B * A), next_q_target.reshape(B * A, n_actions),
                      online, gamma).view(B, A)


def agent_td_losses(q_taken: torch.Tensor, targets: torch.Tensor, active: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """L_a for every agent: the mean over agent a's active transitions of the squared (or Huber) TD error.
    q_taken, targets, active [B, n_agents] -> [n_agents]; an agent with no active transition gets 0."""
    if loss == "huber":
        errors = F.smooth_l1_loss(q_taken, targets, reduction="none")
    else:
        errors = (q_taken - targets) ** 2
    return (errors * active).sum(0) / active.sum(0).clamp(min=1.0)


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
# the optimisers, the step counters and every random generator's state. A PettingZoo environment's state cannot be
# read, so ppo.py's env_state / set_env_state are left out: a resumed run starts new episodes. Periodic checkpoints
# (--checkpoint-every), the one written on SIGINT/SIGTERM and the final --save-model file are the same dict, so any
# of them resumes (--resume PATH) in a new run directory that continues the old one's TensorBoard steps.


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


def nonfinite_multiagent_step(obs: np.ndarray, state: np.ndarray, rewards: np.ndarray, info: dict) -> str:
    """What is not finite in a BatchedParallelEnv step: "observation" (the last ones of episodes that ended
    included), "state", "reward", or "" when all is finite."""
    final = info["_final"]
    if not (finite(obs) and finite(info["final_obs"][final])):
        return "observation"
    if not (finite(state) and finite(info["final_state"][final])):
        return "state"
    return "" if finite(rewards) else "reward"


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


def load_model(path: str) -> tuple[MultiAgentQNetwork, dict]:
    """The trained Q-networks of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "iql_marl")
    q_network = MultiAgentQNetwork(**ckpt["model_args"])
    q_network.load_state_dict(ckpt["model"])
    return q_network, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu",
             env_kwargs: dict | None = None) -> list[float]:
    """Deterministic evaluation (each agent's argmax action) on a fresh environment; returns one team return (the
    sum over agents of their summed rewards) per episode. A checkpoint brings its own env_kwargs."""
    if isinstance(agent_or_path, str):
        agent, ckpt = load_model(agent_or_path)
        agent, env_kwargs = agent.to(device), ckpt["env_kwargs"]
    else:
        agent = agent_or_path
    envs = BatchedParallelEnv([lambda: make_parallel_env(env_id, env_kwargs or {})])
    returns = []
    for ep in range(eval_episodes):
        obs, _ = envs.reset(seed=seed + ep)
        while True:
            action = agent.greedy_action(torch.as_tensor(obs, device=device)).cpu().numpy()
            obs, _, _, _, _, info = envs.step(action)
            if info["_final"][0]:
                returns.append(float(info["episode"]["r"][0].sum()))
                break
    envs.close()
    return returns


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called at every progress line with (step, mean of the last 20 training team returns);
    # returning True ends training (the run is then evaluated and returned as usual).
    check_args(args)
    env_kwargs = env_kwargs_dict(args.env_kwargs)
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    rng = np.random.default_rng(args.seed)

    # num_envs copies, reset in the step where their episode ends (same-step autoreset: the last observations in
    # info["final_obs"], which a truncated transition needs)
    envs = BatchedParallelEnv(
        [lambda i=i: make_parallel_env(args.env_id, env_kwargs, "rgb_array" if args.capture_video and i == 0 else None)
         for i in range(args.num_envs)], video_dir=f"videos/{run_name}" if args.capture_video else None)
    E, A, obs_dim, n_actions = args.num_envs, envs.n_agents, envs.obs_dim, envs.n_actions
    obs, _ = envs.reset(seed=args.seed)

    model_args = {"obs_dim": obs_dim, "n_agents": A, "n_actions": n_actions, "hidden_sizes": list(args.hidden_sizes),
                  "dueling": args.dueling, "share_parameters": args.share_parameters}
    q_network = MultiAgentQNetwork(**model_args).to(device)
    target_network = MultiAgentQNetwork(**model_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    # one Adam over every agent's parameters: its update is elementwise, so each agent's moments are its own
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = MultiAgentReplayBuffer(args.buffer_size, E, A, obs_dim, args.seed)
    generators = {"explore": rng, "buffer": rb.rng}

    # The training state a checkpoint holds; resuming puts it back.
    global_step, origin = 0, (0, 0.0)
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    next_target = args.target_network_frequency
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "iql_marl")
        check_resume(ckpt, args, model_args)
        if ckpt["env_kwargs"] != env_kwargs:
            fail(f"--resume {args.resume} was trained with --env-kwargs {ckpt['env_kwargs']}, not {env_kwargs}")
        q_network.load_state_dict(ckpt["model"])
        target_network.load_state_dict(ckpt["target_network"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        next_train, next_target = ckpt["next_train"], ckpt["next_target"]
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (global_step, progress(global_step, ckpt["args"]["total_timesteps"], origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        # a PettingZoo environment's state cannot be put back: new episodes, seeded apart from the first ones
        obs, _ = envs.reset(seed=args.seed + global_step)
        print(f"resumed from {args.resume} at step {global_step:,} (new episodes start; replay buffer: "
              f"{len(rb):,} steps)", flush=True)

    def checkpoint() -> dict:
        ckpt = {"algo": "iql_marl", "env_id": args.env_id, "env_kwargs": env_kwargs, "model_args": model_args,
                "model": q_network.state_dict(), "args": asdict(args), "target_network": target_network.state_dict(),
                "optimizer": optimizer.state_dict(), "global_step": global_step, "next_train": next_train,
                "next_target": next_target, "schedule_origin": origin, "rng": rng_state(generators)}
        if args.save_buffer:
            ckpt["buffer"] = rb.state_dict()
        return ckpt

    def fault(quantity: str) -> None:  # the networks are still finite: the check runs before they change
        path = f"{run_dir}/{args.exp_name}_last_finite.pt"
        save_checkpoint(path, checkpoint())
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
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    loss = q_values = None

    while global_step < args.total_timesteps:
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction,
                                  progress(global_step, args.total_timesteps, origin))
        # epsilon-greedy, decided for each agent of each copy on its own
        if global_step < args.learning_starts:
            actions = rng.integers(0, n_actions, size=(E, A))
        else:
            actions = q_network.greedy_action(torch.as_tensor(obs, device=device)).cpu().numpy()
            explore = rng.random((E, A)) < epsilon
            if explore.any():
                actions = np.where(explore, rng.integers(0, n_actions, size=(E, A)), actions)
        active = envs.alive.copy()  # the agents that act at this step
        next_obs, next_state, rewards, terminations, truncations, info = envs.step(actions)
        global_step += E
        if args.nan_check and (bad := nonfinite_multiagent_step(next_obs, next_state, rewards, info)):
            fault(bad)

        # the transition's next observation is the real last one at an episode end, not the reset one; only
        # `terminations` is stored: a truncated transition bootstraps
        real_next_obs = next_obs.copy()
        real_next_obs[info["_final"]] = info["final_obs"][info["_final"]]
        rb.add(obs, actions, rewards, real_next_obs, terminations, active)
        obs = next_obs

        for e in np.flatnonzero(info["_final"]):
            team = float(info["episode"]["r"][e].sum())
            recent_returns.append(team)
            writer.add_scalar("charts/episodic_return", team, global_step)
            writer.add_scalar("charts/episodic_return_per_agent", team / A, global_step)
            writer.add_scalar("charts/episodic_length", int(info["episode"]["l"][e]), global_step)
            for j, name in enumerate(envs.agents):
                writer.add_scalar(f"charts/agent_return/{name}", float(info["episode"]["r"][e, j]), global_step)

        train_now = global_step >= next_train
        if train_now:
            next_train += args.train_frequency
        # (a run resumed without its buffer waits until the buffer holds a batch)
        if train_now and global_step > args.learning_starts and len(rb) >= args.batch_size:
            for _ in range(args.gradient_steps):
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations, b_active = rb.sample(args.batch_size, device)
                with torch.no_grad():
                    next_q_online = q_network(b_next_obs) if args.double_q else None
                    targets = agent_td_targets(b_rewards, b_terminations, target_network(b_next_obs), next_q_online,
                                               args.gamma)
                q_taken = q_network(b_obs).gather(-1, b_actions.unsqueeze(-1)).squeeze(-1)
                losses = agent_td_losses(q_taken, targets, b_active, args.loss)
                # independent networks: the sum, so that each gets its own DQN's gradient; shared: the mean
                loss = losses.mean() if args.share_parameters else losses.sum()
                optimizer.zero_grad()
                loss.backward()
                # each network clipped on its own (one network with --share-parameters)
                grad_norm = sum(nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm, foreach=True)
                                for net in q_network.nets)
                # one host sync per gradient step; before optimizer.step(), so the networks stay finite
                if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
                    fault("loss" if not torch.isfinite(loss) else "gradient norm")
                optimizer.step()
            q_values = q_taken.detach().mean()

        if global_step >= next_target:
            next_target += args.target_network_frequency
            soft_update(target_network, q_network, args.tau)

        if global_step >= next_log:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            if loss is not None:
                writer.add_scalar("losses/td_loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  epsilon {epsilon:.3f}  return(last 20 episodes) {recent}",
                  flush=True)
            if report is not None and recent_returns and report(global_step, float(np.mean(recent_returns))):
                break  # the caller asked to stop (tools/tune.py prunes a trial): evaluated as usual

        # After the step's update: a periodic checkpoint, or the one a signal asked for (then exit 128 + signal).
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
    writer.add_scalar("charts/SPS", int((global_step - start_step) / train_time), global_step)
    writer.add_scalar("charts/epsilon", epsilon, global_step)
    if loss is not None:
        writer.add_scalar("losses/td_loss", loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
    envs.close()

    eval_returns = evaluate(q_network, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device),
                            env_kwargs=env_kwargs)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: team return {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} "
          f"({np.mean(eval_returns) / A:.1f} per agent) over {args.eval_episodes} episodes (greedy); "
          f"trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}" + (" (with the replay buffer)" if args.save_buffer else ""))
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
