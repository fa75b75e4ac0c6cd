"""MADDPG: multi-agent DDPG, decentralised actors trained by centralised critics that see every agent.

Paper: Lowe, Wu, Tamar, Harb, Abbeel, Mordatch (2017), "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive
Environments", NeurIPS, https://arxiv.org/abs/1706.02275. DDPG: ddpg.py. The Gumbel-softmax: Jang, Gu, Poole (2017),
https://arxiv.org/abs/1611.01144, and Maddison, Mnih, Teh (2017), https://arxiv.org/abs/1611.00712.

Run:
    python algorithms/maddpg.py                                        # mpe2's simple_spread_v3 (N=3, 25 steps)
    python algorithms/maddpg.py --env-id simple_speaker_listener_v4    # communication: agents of different sizes
    python algorithms/maddpg.py --env-id simple_speaker_listener_v4 --independent   # independent DDPG learners
    python algorithms/maddpg.py --env-id simple_adversary_v3 --independent-agents adversary  # MADDPG team vs DDPG
    python algorithms/maddpg.py --help                                 # every hyperparameter, with its meaning

Tested: simple_speaker_listener_v4, 100k steps, seed 1: team return > -55, random ~ -87 (tests/test_maddpg.py).
Results: benchmark_results/maddpg.md

Agent i has an actor pi_i(o_i) that reads its own observation only (decentralised: what it plays with), and a critic
Q_i(x, a_1, ..., a_n) that reads x = (o_1, ..., o_n), every agent's observation, and every agent's action (the
paper's centralised critic, section 4.1: all observations rather than a global state, as the paper writes it, so the
file needs nothing from the environment beyond what the agents observe). Each agent has its own networks and its
own reward r_i, so cooperative, competitive and mixed games are the same code. Agents may differ in observation size
and number of actions (simple_speaker_listener: a speaker with 3 inputs and 3 words, a listener with 11 inputs and
5 moves): the observations are stacked into one array padded with zeros to the largest size, and each network
reads its agent's own first obs_dims[i] entries (the padding never enters a network).

Discrete actions through the Gumbel-softmax (the paper's appendix; its released code feeds the critics the soft
sample, EPyMARL's maddpg the straight-through one used here, which keeps the critics' inputs one-hot like the
buffer's actions): with g_k independent Gumbel(0, 1) noise,
    soft sample   y = softmax((logits + g) / temperature)
    hard sample   onehot(argmax_k y_k), distributed as a categorical sample of softmax(logits) (the Gumbel-max trick)
    straight-through  a = hard - stop_gradient(y) + y: the one-hot forward, the soft sample's gradient backward
Exploration samples a_i from the actor's Gumbel-softmax (the paper's exploration; no epsilon, no added noise); the
environment gets argmax(a_i). The deterministic evaluation plays argmax(logits).

The math, as the code computes it, for a sampled batch of joint transitions (x, a_1..a_n, r_i, x', term_i):
    target actions  a'_j = straight-through Gumbel-softmax sample of pi'_j(o'_j) for every agent j (target actors)
    critic target   y_i = r_i + gamma * (1 - term_i) * Q'_i(x', a'_1, ..., a'_n)         (paper, section 4.1)
    critic loss     L(theta_i) = mean (Q_i(x, a_1, ..., a_n) - y_i)^2
    actor loss      J_i = -mean Q_i(x, a_1, ..., a_i = ST sample of pi_i(o_i), ..., a_n)
                          + actor_reg * mean(logits_i^2)      (the other agents' actions from the buffer, as
                                                                the paper; actor_reg: its code's logit penalty)
    targets         theta'_i <- tau * theta_i + (1 - tau) * theta'_i for every actor and critic, after each update
With --independent every critic reads only its own agent's observation and action, Q_i(o_i, a_i): independent DDPG,
the paper's baseline. --independent-agents NAME ... does that for some agents only (an agent's name, or the name
without its number: "adversary" names every adversary_k), e.g. the paper's MADDPG team against a DDPG team on
simple_adversary (physical deception).

Time limits: at 25 steps an MPE task truncates every agent, a time limit and not a termination: the transition is
stored with the real last observation (info["final_obs"], Gymnasium's same-step autoreset mode) and term = 0, so its
target bootstraps. The environments: iql_marl.py's. --env-id names a PettingZoo parallel environment module (a bare
name is looked up in mpe2), --env-kwargs key=value pairs go to its parallel_env(); every agent needs Discrete actions
and a flat Box observation (continuous actions are not implemented: refused with one line). BatchedParallelEnv steps
--num-envs copies one after another; PaddedParallelEnv is it with observations of different sizes. One step of the
parallel environment moves every agent once and counts as one environment step; every count here (learning_starts,
train_frequency, buffer_size) is in environment steps. An agent that is done before its copy's episode ends (none in
MPE) stops acting; its later transitions are kept out of the losses by the buffer's `active` mask.

Returns, named because the literature mixes them: an agent's return is the sum of its rewards over the episode;
the team return, charts/episodic_return and the evaluation's figure, is the sum of the agents' returns (what the
harness compares; it means little in a competitive game); charts/episodic_return_per_agent is the team return /
n_agents; each agent's return is charts/agent_return/<agent>, and each side's, the sum over the agents of one name
(adversary_0 and adversary_1 form "adversary"), charts/group_return/<name> and eval/group_return/<name>.

Long runs: ppo.py's form (--checkpoint-every, SIGINT/SIGTERM, --resume, exit 3 on a NaN or infinite value;
--save-buffer adds the replay buffer to checkpoints). A PettingZoo environment's state cannot be saved, so a
resumed run starts new episodes.

The defaults are the paper's (lr 1e-2 for actors and critics, gamma 0.95, tau 0.01, batch 1024, two hidden layers of
64 ReLU units, gradient norm clipped at 0.5, updates after 1024 episodes of 25 steps are stored, temperature 1,
a logit penalty of 1e-3 from its code) except the update frequency and the buffer: the paper's code updates once per 100
environment steps for 60,000 episodes (1.5M steps), here 16 copies and one update per 16 steps (a budget of 300k steps gets
about as many updates) and a buffer of the whole default run (the paper: 1e6).
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
    exp_name: str = "maddpg"
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
    independent: bool = False
    """if toggled, every agent's critic reads only its own observation and action (independent DDPG)"""
    independent_agents: tuple[str, ...] = ()
    """these agents (a name such as agent_0, or a name without its number such as adversary) get independent critics"""
    total_timesteps: int = 300_000
    """total environment steps (one step of the parallel environment moves every agent), summed over the copies"""
    num_envs: int = 16
    """the number of copies of the environment stepped together"""
    learning_rate: float = 1e-2
    """the Adam learning rate of the actors and the critics (the paper's)"""
    buffer_size: int = 300_000
    """the replay memory's capacity in environment steps (each holds every agent's transition)"""
    gamma: float = 0.95
    """the discount factor (the paper's)"""
    tau: float = 0.01
    """the target networks' Polyak rate, after each update (the paper's)"""
    batch_size: int = 1024
    """joint transitions per gradient step (the paper's)"""
    learning_starts: int = 25_600
    """environment steps stored before the first update (the paper's: 1024 episodes of 25 steps)"""
    train_frequency: int = 16
    """environment steps between training phases (16: one per batched step of the 16 copies)"""
    gradient_steps: int = 1
    """gradient steps (each: every critic, then every actor) in each training phase"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """widths of the ReLU hidden layers of every actor and critic (the paper's)"""
    gumbel_temperature: float = 1.0
    """the Gumbel-softmax temperature: lower makes the soft sample closer to one-hot, its gradient noisier"""
    actor_reg: float = 1e-3
    """the weight of the penalty on the actors' squared logits (the paper's code)"""
    max_grad_norm: float = 0.5
    """the maximum norm of each actor's and each critic's gradient (the paper's code; inf: no clipping)"""
    eval_episodes: int = 10
    """episodes of the final deterministic evaluation (each actor's argmax action)"""
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


def agent_groups(agents: list[str]) -> dict[str, list[int]]:
    """The agents' indices by name without the trailing number: adversary_0, adversary_1 -> "adversary" (a side)."""
    groups: dict[str, list[int]] = {}
    for j, agent in enumerate(agents):
        groups.setdefault(agent.rsplit("_", 1)[0], []).append(j)
    return groups


def centralised_critics(agents: list[str], independent: bool, independent_agents: tuple[str, ...]) -> list[bool]:
    """For each agent, whether its critic reads every agent (MADDPG) or its own observation and action (DDPG)."""
    groups = agent_groups(agents)
    alone = {j for name in independent_agents for j in ([agents.index(name)] if name in agents else groups[name])}
    return [not independent and j not in alone for j in range(len(agents))]


def check_args(args: Args) -> None:
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                 "eval_episodes", "log_every", "torch_threads", "keep_checkpoints"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf:
        fail(f"--learning-rate must be positive and finite, got {args.learning_rate}")
    if not args.max_grad_norm > 0:
        fail(f"--max-grad-norm must be positive (inf: no clipping), got {args.max_grad_norm}")
    if not 0 < args.gumbel_temperature < math.inf:
        fail(f"--gumbel-temperature must be positive and finite, got {args.gumbel_temperature}")
    if not 0 <= args.actor_reg < math.inf:
        fail(f"--actor-reg must be >= 0 and finite, got {args.actor_reg}")
    if not 0 < args.tau <= 1:
        fail(f"--tau must be in (0, 1], got {args.tau}")
    if not 0 < args.gamma <= 1:
        fail(f"--gamma must be in (0, 1], got {args.gamma}")
    if not (args.learning_starts >= 0 and args.checkpoint_every >= 0):
        fail(f"need --learning-starts >= 0 and --checkpoint-every >= 0, got {args.learning_starts} and "
             f"{args.checkpoint_every}")
    if args.buffer_size < args.num_envs:
        fail(f"--buffer-size {args.buffer_size} is too small: each of the {args.num_envs} copies needs a row")
    if not all(h > 0 for h in args.hidden_sizes):
        fail(f"--hidden-sizes must be positive widths, got {' '.join(map(str, args.hidden_sizes))}")
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
        fail(f"maddpg.py implements Discrete actions (through the Gumbel-softmax), {args.env_id} has "
             f"{action_spaces[0]}; drop continuous_actions=True or use a discrete environment such as simple_spread_v3")
    if not all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in obs_spaces):
        fail(f"maddpg.py needs flat Box observations, {args.env_id} has {obs_spaces[0]}; try simple_spread_v3")
    unknown = [n for n in args.independent_agents if n not in agents and n not in agent_groups(agents)]
    if unknown:
        fail(f"--independent-agents {' '.join(unknown)}: no such agent in {args.env_id}; its agents are "
             f"{' '.join(agents)} (or by name without the number: {' '.join(agent_groups(agents))})")
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


class PaddedParallelEnv(BatchedParallelEnv):
    """BatchedParallelEnv for agents of different observation sizes and action counts: each agent's observation is
    padded with zeros to the largest size (`obs_dims[j]` says how much of row j is real); no global state (the
    critics read the agents' observations)."""

    def __init__(self, env_fns: list[Callable], video_dir: str | None = None):
        super().__init__(env_fns, video_dir)
        first = self.envs[0]
        self.obs_dims = [int(first.observation_space(a).shape[0]) for a in self.agents]
        self.action_counts = [int(first.action_space(a).n) for a in self.agents]
        self.obs_dim = max(self.obs_dims)

    def stack(self, obs: dict) -> np.ndarray:
        """One copy's observation dict as an (n_agents, max obs_dim) array, zero-padded; an absent agent: zeros."""
        out = np.zeros((self.n_agents, self.obs_dim), dtype=np.float32)
        for j, agent in enumerate(self.agents):
            if agent in obs:
                out[j, : self.obs_dims[j]] = obs[agent]
        return out

    def copy_state(self, e: int) -> np.ndarray:
        """No global state: MADDPG's critics read every agent's observation, so the step need not compute one."""
        return np.zeros(0, dtype=np.float32)


def split_agents(obs: torch.Tensor, obs_dims: list[int]) -> list[torch.Tensor]:
    """The padded (..., n_agents, max_obs_dim) observations as one (..., obs_dims[j]) tensor per agent."""
    return [obs[..., j, :d] for j, d in enumerate(obs_dims)]


def mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU hidden layers of the given widths, then a linear output layer (PyTorch's default initialisation)."""
    layers, width = [], in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def gumbel_softmax(logits: torch.Tensor, temperature: float, gumbels: torch.Tensor | None = None) -> torch.Tensor:
    """The straight-through Gumbel-softmax sample: one-hot forward, the soft sample's gradient backward.

    y = softmax((logits + g) / temperature) with g ~ Gumbel(0, 1) (drawn from torch's generator unless given);
    returns onehot(argmax y) - y.detach() + y, whose value is the one-hot and whose gradient is y's."""
    if gumbels is None:
        gumbels = -torch.empty_like(logits).exponential_().log()
    soft = F.softmax((logits + gumbels) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class Actors(nn.Module):
    """One policy network per agent, pi_j(o_j) -> logits over agent j's actions: decentralised, each reads its own
    observation only (the first obs_dims[j] entries of its padded row)."""

    def __init__(self, obs_dims: list[int], action_counts: list[int], hidden_sizes: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.obs_dims, self.action_counts = list(obs_dims), list(action_counts)
        self.nets = nn.ModuleList(mlp(d, n, tuple(hidden_sizes)) for d, n in zip(obs_dims, action_counts, strict=True))

    def forward(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """(..., n_agents, max_obs_dim) -> each agent's logits, (..., action_counts[j])."""
        return [net(o) for net, o in zip(self.nets, split_agents(obs, self.obs_dims), strict=True)]

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor, temperature: float) -> torch.Tensor:
        """Exploration: each agent's action sampled from its Gumbel-softmax, (..., n_agents) integers."""
        return torch.stack([gumbel_softmax(x, temperature).argmax(-1) for x in self(obs)], dim=-1)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """argmax of each agent's logits, for the deterministic evaluation: (..., n_agents) integers."""
        return torch.stack([x.argmax(-1) for x in self(obs)], dim=-1)


def critic_input(obs: list[torch.Tensor], actions: list[torch.Tensor], agent: int, centralised: bool) -> torch.Tensor:
    """Agent `agent`'s critic input: every agent's observation and (one-hot) action, [o_1..o_n, a_1..a_n] (MADDPG),
    or only its own, [o_i, a_i] (independent DDPG)."""
    if centralised:
        return torch.cat([*obs, *actions], dim=-1)
    return torch.cat([obs[agent], actions[agent]], dim=-1)


class Critics(nn.Module):
    """One Q-network per agent: Q_i(o_1..o_n, a_1..a_n) where centralised[i], else Q_i(o_i, a_i)."""

    def __init__(self, obs_dims: list[int], action_counts: list[int], centralised: list[bool],
                 hidden_sizes: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.obs_dims, self.centralised = list(obs_dims), list(centralised)
        joint = sum(obs_dims) + sum(action_counts)
        self.nets = nn.ModuleList(mlp(joint if c else d + n, 1, tuple(hidden_sizes))
                                  for d, n, c in zip(obs_dims, action_counts, centralised, strict=True))

    def q(self, agent: int, obs: list[torch.Tensor], actions: list[torch.Tensor]) -> torch.Tensor:
        """Q_agent [B] from the agents' observations and one-hot (or relaxed) actions, one tensor per agent."""
        return self.nets[agent](critic_input(obs, actions, agent, self.centralised[agent])).squeeze(-1)

    def forward(self, obs: torch.Tensor, actions: list[torch.Tensor]) -> torch.Tensor:
        """Every agent's Q-value, [B, n_agents], from the padded observations [B, n_agents, max_obs_dim]."""
        parts = split_agents(obs, self.obs_dims)
        return torch.stack([self.q(i, parts, actions) for i in range(len(self.nets))], dim=-1)


class JointReplayBuffer:
    """A ring of batched steps in preallocated numpy arrays, [row, copy, agent, ...]; a sample is a batch of joint
    transitions (every agent's part of one step of one copy), which the centralised critics need. `active` marks the
    agents that acted at the step."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminations", "active")

    def __init__(self, capacity: int, num_envs: int, n_agents: int, obs_dim: int, seed: int):
        self.rows, self.num_envs = capacity // num_envs, num_envs
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
        """(obs, actions, rewards, next_obs, terminations, active), each [batch_size, n_agents, ...]: row b holds
        every agent's part of one stored step of one copy, drawn uniformly."""
        rows = self.rng.integers(0, self.filled, size=batch_size)
        envs = self.rng.integers(0, self.num_envs, size=batch_size)
        return tuple(torch.from_numpy(getattr(self, f)[rows, envs]).to(device) for f in self.FIELDS)

    def state_dict(self) -> dict:
        """The stored transitions and the ring's position, as tensors (checkpoints with --save-buffer)."""
        return {**{f: torch.from_numpy(getattr(self, f)) for f in self.FIELDS}, "pos": self.pos, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if state["obs"].shape != self.obs.shape:
            fail(f"the checkpoint's replay buffer has another shape ({tuple(state['obs'].shape)}, here "
                 f"{self.obs.shape}): resume with its --buffer-size and --num-envs")
        for f in self.FIELDS:
            getattr(self, f)[...] = state[f].numpy()
        self.pos, self.filled = state["pos"], state["filled"]

    def __len__(self) -> int:
        return self.filled * self.num_envs


def one_hots(actions: torch.Tensor, action_counts: list[int]) -> list[torch.Tensor]:
    """Integer actions [B, n_agents] as one float one-hot [B, action_counts[j]] per agent."""
    return [F.one_hot(actions[:, j], n).float() for j, n in enumerate(action_counts)]


def td_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * next_q, where next_q is the target networks' value of s'."""
    return rewards + gamma * (1.0 - terminations) * next_q


def actor_losses(actors: Actors, critics: Critics, obs: torch.Tensor, actions: list[torch.Tensor],
                 active: torch.Tensor, temperature: float, actor_reg: float) -> torch.Tensor:
    """Every agent's actor loss J_i, [n_agents]: -Q_i with agent i's action the straight-through Gumbel-softmax sample
    of pi_i(o_i) and the other agents' actions from the batch (one-hot), plus actor_reg * mean(logits_i^2)."""
    logits, parts = actors(obs), split_agents(obs, actors.obs_dims)
    losses = []
    for i in range(len(logits)):
        joint = [gumbel_softmax(logits[i], temperature) if j == i else actions[j] for j in range(len(logits))]
        q_i = critics.q(i, parts, joint)
        losses.append(-(q_i * active[:, i]).sum() / active[:, i].sum().clamp(min=1.0)
                      + actor_reg * logits[i].pow(2).mean())
    return torch.stack(losses)


def masked_mean(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """The mean of x [B, n_agents] over each agent's active transitions -> [n_agents] (0 for an agent with none)."""
    return (x * active).sum(0) / active.sum(0).clamp(min=1.0)


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


def load_model(path: str) -> tuple[Actors, dict]:
    """The trained actors of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "maddpg")
    actors = Actors(**ckpt["model_args"])
    actors.load_state_dict(ckpt["model"])
    return actors, ckpt


def evaluate_agent_returns(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int,
                           device: str = "cpu", env_kwargs: dict | None = None) -> np.ndarray:
    """Deterministic evaluation (each actor's argmax action) on a fresh environment: each agent's return (its summed
    rewards) in each episode, [eval_episodes, n_agents]. A checkpoint brings its own env_kwargs."""
    if isinstance(agent_or_path, str):
        agent, ckpt = load_model(agent_or_path)
        agent, env_kwargs = agent.to(device), ckpt["env_kwargs"]
    else:
        agent = agent_or_path
    envs = PaddedParallelEnv([lambda: make_parallel_env(env_id, env_kwargs or {})])
    returns = []
    for ep in range(eval_episodes):
        obs, _ = envs.reset(seed=seed + ep)
        while True:
            action = agent.greedy_action(torch.as_tensor(obs, device=device)).cpu().numpy()
            obs, _, _, _, _, info = envs.step(action)
            if info["_final"][0]:
                returns.append(info["episode"]["r"][0].copy())
                break
    envs.close()
    return np.array(returns).reshape(eval_episodes, envs.n_agents)


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu",
             env_kwargs: dict | None = None) -> list[float]:
    """Deterministic evaluation: one team return (the sum over agents of their summed rewards) per episode."""
    returns = evaluate_agent_returns(agent_or_path, env_id, eval_episodes, seed, device, env_kwargs)
    return [float(r) for r in returns.sum(1)]


def main(args: Args, report: Callable[[int, float], bool] | None = None) -> dict:
    # report: called at every progress line with (step, mean of the last 20 training team returns);
    # returning True ends training (the run is then evaluated and returned as usual).
    check_args(args)
    env_kwargs = env_kwargs_dict(args.env_kwargs)
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # torch's generator draws the Gumbel noise
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # num_envs copies, reset in the step where their episode ends (same-step autoreset: the last observations in
    # info["final_obs"], which a truncated transition needs)
    envs = PaddedParallelEnv(
        [lambda i=i: make_parallel_env(args.env_id, env_kwargs, "rgb_array" if args.capture_video and i == 0 else None)
         for i in range(args.num_envs)], video_dir=f"videos/{run_name}" if args.capture_video else None)
    E, A, obs_dims, action_counts = args.num_envs, envs.n_agents, envs.obs_dims, envs.action_counts
    groups = agent_groups(envs.agents)
    centralised = centralised_critics(envs.agents, args.independent, args.independent_agents)
    obs, _ = envs.reset(seed=args.seed)

    model_args = {"obs_dims": obs_dims, "action_counts": action_counts, "hidden_sizes": list(args.hidden_sizes)}
    critic_args = {**model_args, "centralised": centralised}
    actors, actor_target = Actors(**model_args).to(device), Actors(**model_args).to(device)
    critics, critic_target = Critics(**critic_args).to(device), Critics(**critic_args).to(device)
    actor_target.load_state_dict(actors.state_dict())
    critic_target.load_state_dict(critics.state_dict())
    # one Adam for the actors and one for the critics: its update is elementwise, so each agent's moments are its own
    actor_optimizer = torch.optim.Adam(actors.parameters(), lr=args.learning_rate, fused=True)
    critic_optimizer = torch.optim.Adam(critics.parameters(), lr=args.learning_rate, fused=True)
    rb = JointReplayBuffer(args.buffer_size, E, A, envs.obs_dim, args.seed)
    generators = {"buffer": rb.rng}

    # The training state a checkpoint holds; resuming puts it back.
    global_step = 0
    next_train = args.train_frequency  # training phases at multiples of train_frequency, after learning_starts
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "maddpg")
        check_resume(ckpt, args, model_args)
        if ckpt["env_kwargs"] != env_kwargs:
            fail(f"--resume {args.resume} was trained with --env-kwargs {ckpt['env_kwargs']}, not {env_kwargs}")
        if ckpt["critic_args"] != critic_args:
            fail(f"--resume {args.resume} has other critics ({ckpt['critic_args']}, here {critic_args}); resume "
                 "with the --independent / --independent-agents it was trained with")
        actors.load_state_dict(ckpt["model"])
        actor_target.load_state_dict(ckpt["actor_target"])
        critics.load_state_dict(ckpt["critic"])
        critic_target.load_state_dict(ckpt["critic_target"])
        actor_optimizer.load_state_dict(ckpt["actor_optimizer"])
        critic_optimizer.load_state_dict(ckpt["critic_optimizer"])
        global_step, next_train = ckpt["global_step"], ckpt["next_train"]
        set_rng_state(ckpt["rng"], generators)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        # a PettingZoo environment's state cannot be put back: new episodes, seeded apart from the first ones
        obs, _ = envs.reset(seed=args.seed + global_step)
        print(f"resumed from {args.resume} at step {global_step:,} (new episodes start; replay buffer: "
              f"{len(rb):,} steps)", flush=True)

    def checkpoint() -> dict:
        ckpt = {"algo": "maddpg", "env_id": args.env_id, "env_kwargs": env_kwargs, "model_args": model_args,
                "model": actors.state_dict(), "args": asdict(args), "actor_target": actor_target.state_dict(),
                "critic_args": critic_args, "critic": critics.state_dict(), "critic_target": critic_target.state_dict(),
                "actor_optimizer": actor_optimizer.state_dict(), "critic_optimizer": critic_optimizer.state_dict(),
                "global_step": global_step, "next_train": next_train, "rng": rng_state(generators)}
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
    print(f"agents {' '.join(envs.agents)}; critics: " + ", ".join(
        f"{a} {'centralised' if c else 'independent'}" for a, c in zip(envs.agents, centralised, strict=True)), flush=True)

    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    losses: dict[str, torch.Tensor] = {}

    while global_step < args.total_timesteps:
        # exploration: each agent's action sampled from its actor's Gumbel-softmax (the paper's)
        actions = actors.sample_action(torch.as_tensor(obs, device=device), args.gumbel_temperature).cpu().numpy()
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
            for group, members in groups.items():
                writer.add_scalar(f"charts/group_return/{group}", float(info["episode"]["r"][e, members].sum()),
                                  global_step)

        train_now = global_step >= next_train
        if train_now:
            next_train += args.train_frequency
        # (a run resumed without its buffer waits until the buffer holds a batch)
        if train_now and global_step > args.learning_starts and len(rb) >= args.batch_size:
            for _ in range(args.gradient_steps):
                b_obs, b_actions, b_rewards, b_next_obs, b_terminations, b_active = rb.sample(args.batch_size, device)
                b_one_hots = one_hots(b_actions, action_counts)
                # every critic: y_i = r_i + gamma (1 - term_i) Q'_i(x', a'_1..a'_n), a'_j sampled from pi'_j(o'_j)
                with torch.no_grad():
                    next_actions = [gumbel_softmax(x, args.gumbel_temperature) for x in actor_target(b_next_obs)]
                    targets = td_target(b_rewards, b_terminations, critic_target(b_next_obs, next_actions), args.gamma)
                q = critics(b_obs, b_one_hots)
                qf_loss = masked_mean((q - targets) ** 2, b_active).sum()  # each critic gets its own gradient
                critic_optimizer.zero_grad()
                qf_loss.backward()
                grad_norm = sum(nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm, foreach=True)
                                for net in critics.nets)
                # one host sync per optimiser step; before optimizer.step(), so the networks stay finite
                if args.nan_check and not math.isfinite(qf_loss.detach() + grad_norm):
                    fault("critic loss" if not torch.isfinite(qf_loss) else "critic gradient norm")
                critic_optimizer.step()

                # every actor: its own action relaxed (straight-through), the other agents' actions from the buffer
                actor_loss = actor_losses(actors, critics, b_obs, b_one_hots, b_active, args.gumbel_temperature,
                                          args.actor_reg).sum()  # agent i's parameters get J_i's gradient only
                actor_optimizer.zero_grad()
                actor_loss.backward()
                grad_norm = sum(nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm, foreach=True)
                                for net in actors.nets)
                if args.nan_check and not math.isfinite(actor_loss.detach() + grad_norm):
                    fault("actor loss" if not torch.isfinite(actor_loss) else "actor gradient norm")
                actor_optimizer.step()
                soft_update(actor_target, actors, args.tau)
                soft_update(critic_target, critics, args.tau)
            losses = {"qf_loss": qf_loss.detach(), "actor_loss": actor_loss.detach(), "q_values": q.detach().mean()}

        if global_step >= next_log:
            next_log = (global_step // args.log_every + 1) * args.log_every
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/learning_rate", actor_optimizer.param_groups[0]["lr"], global_step)
            for key, value in losses.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
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
    for key, value in losses.items():
        writer.add_scalar(f"losses/{key}", value.item(), global_step)
    model_path = None
    if args.save_model:  # the training state at the end: it evaluates, and resumes with a larger --total-timesteps
        model_path = f"{run_dir}/{args.exp_name}.pt"
        save_checkpoint(model_path, checkpoint())
    envs.close()

    agent_returns = evaluate_agent_returns(actors, args.env_id, args.eval_episodes, seed=args.seed + 100_000,
                                           device=str(device), env_kwargs=env_kwargs)
    eval_returns = [float(r) for r in agent_returns.sum(1)]
    group_returns = {group: agent_returns[:, members].sum(1) for group, members in groups.items()}
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    for group, values in group_returns.items():  # each side's mean over the evaluation's episodes
        writer.add_scalar(f"eval/group_return/{group}", float(np.mean(values)), global_step)
    sides = "; ".join(f"{group} {np.mean(v):.1f}" for group, v in group_returns.items())
    print(f"eval: team return {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} "
          f"({np.mean(eval_returns) / A:.1f} per agent; by side: {sides}) over {args.eval_episodes} episodes "
          f"(deterministic); trained {global_step - start_step:,} steps in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}" + (" (with the replay buffer)" if args.save_buffer else ""))
    close_logs(writer, args.track)
    return {
        "eval_return_mean": float(np.mean(eval_returns)),
        "eval_return_std": float(np.std(eval_returns)),
        "eval_returns": eval_returns,
        "eval_group_returns": {group: float(np.mean(v)) for group, v in group_returns.items()},
        "sps": int((global_step - start_step) / train_time),
        "train_time": train_time,
        "global_step": global_step,
        "run_dir": run_dir,
        "model_path": model_path,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
