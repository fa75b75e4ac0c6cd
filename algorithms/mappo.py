"""Multi-Agent PPO (MAPPO) with a centralised critic, and IPPO with --independent-critic, for discrete actions.

Paper: Yu, Velu, Vinitsky, Gao, Wang, Bayen, Wu (2022), "The Surprising Effectiveness of PPO in Cooperative
Multi-Agent Games", https://arxiv.org/abs/2103.01955. IPPO: de Witt et al. (2020), "Is Independent Learning All You
Need in the StarCraft Multi-Agent Challenge?", https://arxiv.org/abs/2011.09533. PPO and GAE: ppo.py.

Run:
    python algorithms/mappo.py                                  # mpe2's simple_spread_v3 (N=3, 25 steps)
    python algorithms/mappo.py --independent-critic             # IPPO: each agent's critic sees its own observation
    python algorithms/mappo.py --env-id simple_spread_v3 --env-kwargs N=4 max_cycles=50
    python algorithms/mappo.py --help                           # every hyperparameter, with its meaning

Tested: simple_spread_v3, 300k environment steps, seed 1: team return > -65, random ~ -82 (tests/test_mappo.py).
Results: benchmark_results/mappo.md

Every agent acts from its own observation o_a (decentralised execution); during training a critic sees the global
state s (centralised training). One actor and one critic serve all agents (parameter sharing), told apart by a
one-hot agent id appended to their inputs:
    actor input   x_a = [o_a, onehot(a)]          policy pi(u_a | x_a)
    critic input  c_a = [s, onehot(a)]            (IPPO, --independent-critic: c_a = [o_a, onehot(a)])
The value is per agent because the rewards are (simple_spread's local collision penalties differ between agents).
Each agent's trajectory is one PPO trajectory: the math is ppo.py's, with t the step and (e, a) the copy and agent:
    TD error      delta_t = r_t + gamma * V(c'_t) * (1 - terminated_t) - V(c_t),  c'_t the critic input after step t
    GAE           A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},   done = terminated or truncated
    return        R_t = A_t + V(c_t)                                  (the value target)
    ratio         rho = exp(log pi(u|x) - log pi_old(u|x))
    policy loss   L_pi = mean( max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)) )      over every agent's steps
    value loss    L_v  = mean( (v(c) - (R - mu) / sigma)^2 )           v: the critic's output, normalised
    total loss    L = L_pi - ent_coef * entropy + vf_coef * L_v
Value normalisation (the paper's "ValueNorm", a PopArt without the output-layer rescaling): the critic predicts
(V - mu) / sigma, where mu and sigma^2 are the running mean and variance of every value target so far (updated once
per rollout, before its epochs; the paper uses an exponential average with beta = 0.99999, which over a run of a few
hundred rollouts is nearly the same); V = sigma * v + mu wherever a value enters GAE. The paper's Huber value loss
with delta 10 is quadratic for errors below 10, which normalised targets of size ~1 rarely reach: the squared loss
is used here.

The environments. --env-id names a PettingZoo parallel environment module: a bare name is looked up in mpe2 (the
particle environments, simple_spread_v3 by default), a dotted one is imported as it is (mpe2.simple_spread_v3, or
another package's PettingZoo module); --env-kwargs key=value pairs go
to its parallel_env(). mpe2's defaults for simple_spread_v3 are the benchmark's: N=3, local_ratio=0.5,
max_cycles=25, continuous_actions=False. This file needs every agent to have the same flat Box observation and the
same Discrete action space (parameter sharing; continuous actions: refused with one line), and for the centralised
critic a state() (simple_spread's is every agent's observation side by side, 54 numbers).
BatchedParallelEnv steps --num-envs copies in this process, one after another (a step costs far more than the
network's forward pass, and the copies share no state), and stacks what they return into arrays: observations
(num_envs, n_agents, obs_dim), states (num_envs, state_dim), rewards and done flags (num_envs, n_agents). It resets
a copy in the same step where its episode ends (Gymnasium's same-step autoreset mode): the step returns the new
episode's first observation and puts the last observation and state in info["final_obs"] / info["final_state"]. An
agent that is done before its copy's episode ends (none in simple_spread) gets zero observations and its steps are
left out of the loss until the copy resets (death masking). One step of the parallel environment moves every agent
once and counts as one environment step. At 25 steps simple_spread truncates every agent: a time limit, not a
termination, so GAE bootstraps from the value of the last state, as ppo.py does.

Returns, named because the literature mixes them: an agent's return is the sum of its rewards over the episode
(25 steps); the team return, charts/episodic_return and the evaluation's figure, is the sum of the agents' returns
(what EPyMARL logs; its paper's MPE tables divide it by the number of agents); charts/episodic_return_per_agent is
the team return / n_agents. Each
agent's return is logged as charts/agent_return/<agent>.

Long runs: ppo.py's form (--checkpoint-every, SIGINT/SIGTERM, --resume, exit 3 on a NaN or infinite value). A
PettingZoo environment's state cannot be saved, so a resumed run starts new episodes.

The defaults are the paper's MPE settings (lr 7e-4, gamma 0.99, lambda 0.95, 10 epochs over one minibatch, clip
0.2, entropy 0.01, gradient norm 10, value loss coefficient 1, hidden 64) with 16 copies instead of 128 (2 CPU cores)
and, for a single file, feed-forward networks with tanh instead of the paper's recurrent ReLU ones.
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
import tyro


@dataclass
class Args:
    exp_name: str = "mappo"
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
    """if toggled, a NaN or infinite observation, state, reward, loss or gradient norm stops the run (exit 3)"""

    env_id: str = "simple_spread_v3"
    """a PettingZoo parallel environment module: a bare name is looked up in mpe2, a dotted one imported as given"""
    env_kwargs: tuple[str, ...] = ()
    """key=value arguments of the environment's parallel_env() (e.g. N=3 max_cycles=25; values are Python literals)"""
    independent_critic: bool = False
    """if toggled, IPPO: each agent's critic sees its own observation instead of the global state"""
    random_policy: bool = False
    """if toggled, nothing is trained: the agents act uniformly at random, in training and evaluation (the baseline)"""
    total_timesteps: int = 500_000
    """total environment steps (one step of the parallel environment moves every agent), summed over the copies"""
    learning_rate: float = 7e-4
    """the Adam learning rate (actor and critic)"""
    anneal_lr: bool = False
    """if toggled, the learning rate decays linearly to 0 over training"""
    num_envs: int = 16
    """the number of copies of the environment stepped together"""
    num_steps: int = 25
    """steps per copy in each rollout (a rollout holds num_envs * num_steps * n_agents agent steps)"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 1
    """the number of minibatches each rollout is split into"""
    update_epochs: int = 10
    """the number of passes over each rollout"""
    norm_adv: bool = True
    """if toggled, normalise advantages within each minibatch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient epsilon"""
    clip_vloss: bool = False
    """if toggled, clip the (normalised) value update around the old value, with the same epsilon"""
    value_norm: bool = True
    """if toggled, the critic learns value targets normalised by their running mean and standard deviation"""
    ent_coef: float = 0.01
    """the entropy bonus coefficient"""
    vf_coef: float = 1.0
    """the value loss coefficient"""
    max_grad_norm: float = 10.0
    """the maximum norm of the gradient (global clipping)"""
    target_kl: float | None = None
    """if set, stop a rollout's epochs once a minibatch's approximate KL exceeds 1.5 x target_kl"""
    hidden_size: int = 64
    """width of the two tanh hidden layers of the actor and of the critic"""
    eval_episodes: int = 10
    """episodes of the final deterministic (argmax) evaluation"""
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
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes",
                 "hidden_size", "torch_threads", "log_every"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.num_envs * args.num_steps < args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} is more than the rollout's num_envs * num_steps "
             f"= {args.num_envs * args.num_steps} steps")
    if not 0 < args.learning_rate < math.inf or not 0 < args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        fail("need 0 < --learning-rate < inf, 0 < --gamma <= 1 and 0 <= --gae-lambda <= 1")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    for name, value, low in (("clip-coef", args.clip_coef, 0), ("ent-coef", args.ent_coef, 0), ("vf-coef", args.vf_coef, 0)):
        if not low <= value < math.inf:
            fail(f"--{name} must be a finite number >= {low}, got {value}")
    if not args.max_grad_norm > 0 or (args.target_kl is not None and not 0 < args.target_kl < math.inf):
        fail(f"need --max-grad-norm > 0 and --target-kl > 0 (finite), got {args.max_grad_norm} and {args.target_kl}")
    if not args.checkpoint_every >= 0 or not args.keep_checkpoints > 0:
        fail(f"need --checkpoint-every >= 0 and --keep-checkpoints > 0, got {args.checkpoint_every} and {args.keep_checkpoints}")
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
    has_state = True
    if not args.independent_critic:
        try:
            probe.reset(seed=0)
            has_state = np.asarray(probe.state()).ndim == 1
        except (NotImplementedError, AttributeError):
            has_state = False
    probe.close()
    if not all(isinstance(s, gym.spaces.Discrete) for s in action_spaces):
        fail(f"mappo.py needs Discrete actions, {args.env_id} has {action_spaces[0]} (continuous actions are not "
             "supported here); drop continuous_actions=True or use a discrete environment such as simple_spread_v3")
    if not all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in obs_spaces):
        fail(f"mappo.py needs flat Box observations, {args.env_id} has {obs_spaces[0]}; try simple_spread_v3")
    if len({s.shape for s in obs_spaces}) > 1 or len({s.n for s in action_spaces}) > 1:
        fail(f"mappo.py shares one network between agents and needs the same observation and action spaces for each; "
             f"{args.env_id} has {[s.shape for s in obs_spaces]} and {[s.n for s in action_spaces]}; try simple_spread_v3")
    if not has_state:
        fail(f"{args.env_id} has no flat global state() for the centralised critic; use --independent-critic (IPPO)")
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


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    """Orthogonal weights, constant bias: the initialisation of the PPO implementations (and SB3)."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def with_agent_ids(x: torch.Tensor) -> torch.Tensor:
    """Append each agent's one-hot id to its input: x (..., n_agents, d) -> (..., n_agents, d + n_agents)."""
    n_agents = x.shape[-2]
    ids = torch.eye(n_agents, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], n_agents)
    return torch.cat([x, ids], dim=-1)


class ValueNorm(nn.Module):
    """The running mean and variance of the value targets (Chan et al.'s parallel update, exact over every target
    seen); the critic learns targets normalised by them. Buffers, so they travel in the model's state_dict."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))  # mean 0, var 1: the identity until updated
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().reshape(-1)
        n, batch_mean, batch_var = x.numel(), x.mean(), x.var(unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean.copy_(self.mean + delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.var.sqrt().clamp(min=self.eps)).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.var.sqrt().clamp(min=self.eps) + self.mean).to(x.dtype)


class Agent(nn.Module):
    """One actor and one critic shared by all agents (parameter sharing with one-hot ids). The actor sees an agent's
    own observation; the critic the global state (MAPPO) or the agent's own observation (IPPO). The critic's output
    is the normalised value v; V = value_norm.denormalize(v)."""

    def __init__(self, obs_dim: int, state_dim: int, n_agents: int, n_actions: int, hidden_size: int = 64,
                 independent_critic: bool = False):
        super().__init__()
        self.independent_critic = independent_critic
        critic_dim = (obs_dim if independent_critic else state_dim) + n_agents
        self.critic = nn.Sequential(
            layer_init(nn.Linear(critic_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim + n_agents, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            # a small last layer starts the policy near uniform
            layer_init(nn.Linear(hidden_size, n_actions), std=0.01),
        )
        self.value_norm = ValueNorm()

    def critic_inputs(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """c_a for every agent: (..., n_agents, obs_dim), (..., state_dim) -> (..., n_agents, critic input)."""
        x = obs if self.independent_critic else state.unsqueeze(-2).expand(*obs.shape[:-1], state.shape[-1])
        return with_agent_ids(x)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., n_agents, obs_dim) -> (..., n_agents, n_actions): each agent's logits from its own observation."""
        return self.actor(with_agent_ids(obs))

    def get_value(self, critic_in: torch.Tensor) -> torch.Tensor:
        """The normalised value v of critic inputs (built by critic_inputs)."""
        return self.critic(critic_in).squeeze(-1)

    @torch.no_grad()
    def value(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """V for every agent, in the environment's reward units: (..., n_agents)."""
        return self.value_norm.denormalize(self.get_value(self.critic_inputs(obs, state)))

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        """u_a ~ pi(.|o_a, a) for every agent: (..., n_agents)."""
        probs = torch.softmax(self.logits(obs), dim=-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(probs.shape[:-1])

    def evaluate_actions(self, actor_in: torch.Tensor, critic_in: torch.Tensor,
                         action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (log pi(action|x), entropy of pi(.|x), normalised value v(c)) for flat batches of agent steps."""
        logp_all = torch.log_softmax(self.actor(actor_in), dim=-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy, self.get_value(critic_in)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Each agent's most probable action, for the deterministic evaluation: (..., n_agents)."""
        return self.logits(obs).argmax(-1)


class UniformPolicy(nn.Module):
    """The random baseline (--random-policy): every agent's action uniformly at random, in training and evaluation."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.n_actions = n_actions

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.randint(self.n_actions, obs.shape[:-1], device=obs.device)

    sample_action = greedy_action


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


def load_model(path: str) -> tuple[Agent, dict]:
    """The trained Agent of a checkpoint written by this file, and the checkpoint."""
    ckpt = load_checkpoint(path, "mappo")
    agent = Agent(**ckpt["model_args"])
    agent.load_state_dict(ckpt["model"])
    return agent, ckpt


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
    steps_per_rollout = args.num_envs * args.num_steps
    num_iterations = -(-args.total_timesteps // steps_per_rollout)  # ceil: at least total_timesteps steps
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # num_envs copies, reset in the step where their episode ends (same-step autoreset: the last observation and
    # state in info["final_obs"] / info["final_state"], needed to bootstrap truncations)
    envs = BatchedParallelEnv(
        [lambda i=i: make_parallel_env(args.env_id, env_kwargs, "rgb_array" if args.capture_video and i == 0 else None)
         for i in range(args.num_envs)], video_dir=f"videos/{run_name}" if args.capture_video else None)
    n_agents, obs_dim, n_actions = envs.n_agents, envs.obs_dim, envs.n_actions
    next_obs, next_state = envs.reset(seed=args.seed)
    state_dim = next_state.shape[-1]

    model_args = {"obs_dim": obs_dim, "state_dim": state_dim, "n_agents": n_agents, "n_actions": n_actions,
                  "hidden_size": args.hidden_size, "independent_critic": args.independent_critic}
    agent = Agent(**model_args).to(device)
    policy = UniformPolicy(n_actions) if args.random_policy else agent
    # fused=True: one kernel updates all parameters at once (see ppo.py)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    generators: dict[str, np.random.Generator] = {}

    # The training state a checkpoint holds; resuming puts it back (schedules run in iterations here).
    global_step, iteration, origin = 0, 0, (0, 0.0)
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "mappo")
        check_resume(ckpt, args, model_args)
        if ckpt["env_kwargs"] != env_kwargs:
            fail(f"--resume {args.resume} was trained with --env-kwargs {ckpt['env_kwargs']}, not {env_kwargs}")
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, iteration, origin = ckpt["global_step"], ckpt["iteration"], tuple(ckpt["schedule_origin"])
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (iteration, progress(iteration, -(-ckpt["args"]["total_timesteps"] // steps_per_rollout), origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        # a PettingZoo environment's state cannot be put back: new episodes, seeded apart from the first ones
        next_obs, next_state = envs.reset(seed=args.seed + global_step)
        print(f"resumed from {args.resume} at step {global_step:,} (new episodes start)", flush=True)

    def checkpoint() -> dict:
        return {"algo": "mappo", "env_id": args.env_id, "env_kwargs": env_kwargs, "model_args": model_args,
                "model": agent.state_dict(), "args": asdict(args), "optimizer": optimizer.state_dict(),
                "global_step": global_step, "iteration": iteration, "schedule_origin": origin,
                "rng": rng_state(generators)}

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

    # Rollout storage, [num_steps, num_envs, n_agents, ...], in numpy (moved to torch once per rollout). Next to
    # each observation and state, the ones that followed the step (the last ones where the episode ended).
    T, E, A = args.num_steps, args.num_envs, n_agents
    obs = np.zeros((T, E, A, obs_dim), dtype=np.float32)
    succ_obs = np.zeros_like(obs)
    states = np.zeros((T, E, state_dim), dtype=np.float32)
    succ_states = np.zeros_like(states)
    actions = np.zeros((T, E, A), dtype=np.int64)
    rewards = np.zeros((T, E, A), dtype=np.float32)
    terminations = np.zeros((T, E, A), dtype=np.float32)
    truncations = np.zeros((T, E, A), dtype=np.float32)
    active = np.zeros((T, E, A), dtype=bool)  # the agent acted at this step (death masking)

    start_step, start_time = global_step, time.time()
    recent_returns: deque[float] = deque(maxlen=20)
    next_log = (global_step // args.log_every + 1) * args.log_every
    next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every if args.checkpoint_every else 0
    written: list[str] = []  # this run's periodic checkpoints, oldest first
    stop = StopSignal()
    stats: dict[str, float] = {}

    while iteration < num_iterations:
        iteration += 1
        frac = 1.0 - progress(iteration - 1, num_iterations, origin)
        lr_now = frac * args.learning_rate if args.anneal_lr else args.learning_rate
        optimizer.param_groups[0]["lr"] = lr_now

        # Collect the rollout: only the actor runs per step (one pass for every copy and agent).
        for step in range(T):
            global_step += E
            obs[step], states[step], active[step] = next_obs, next_state, envs.alive
            action = policy.sample_action(torch.as_tensor(next_obs, device=device)).cpu().numpy()
            actions[step] = action
            next_obs, next_state, rewards[step], terminations[step], truncations[step], info = envs.step(action)
            if args.nan_check and (bad := nonfinite_multiagent_step(next_obs, next_state, rewards[step], info)):
                fault(bad)
            succ_obs[step], succ_states[step] = next_obs, next_state
            for e in np.flatnonzero(info["_final"]):
                succ_obs[step, e], succ_states[step, e] = info["final_obs"][e], info["final_state"][e]
                team = float(info["episode"]["r"][e].sum())
                recent_returns.append(team)
                writer.add_scalar("charts/episodic_return", team, global_step)
                writer.add_scalar("charts/episodic_return_per_agent", team / A, global_step)
                writer.add_scalar("charts/episodic_length", int(info["episode"]["l"][e]), global_step)
                for j, name in enumerate(envs.agents):
                    writer.add_scalar(f"charts/agent_return/{name}", float(info["episode"]["r"][e, j]), global_step)

        if not args.random_policy:
            # One batched pass: log pi_old(u|x), V(c) and V(c') of every agent step of the rollout.
            t_obs, t_states = torch.as_tensor(obs, device=device), torch.as_tensor(states, device=device)
            actor_in = with_agent_ids(t_obs).reshape(T * E * A, -1)
            critic_in = agent.critic_inputs(t_obs, t_states).reshape(T * E * A, -1)
            b_actions = torch.as_tensor(actions.reshape(-1), device=device)
            with torch.no_grad():
                b_logprobs, _, b_v = agent.evaluate_actions(actor_in, critic_in, b_actions)
                values = agent.value_norm.denormalize(b_v)  # --no-value-norm: never updated, the identity
                next_values = agent.value(torch.as_tensor(succ_obs, device=device),
                                          torch.as_tensor(succ_states, device=device))
            # GAE per agent: each (copy, agent) pair is one column of ppo.py's [T, N] rollout
            advantages, returns = compute_gae(
                torch.as_tensor(rewards.reshape(T, E * A), device=device), values.view(T, E * A),
                next_values.reshape(T, E * A), torch.as_tensor(terminations.reshape(T, E * A), device=device),
                torch.as_tensor(truncations.reshape(T, E * A), device=device), args.gamma, args.gae_lambda,
            )
            b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
            if args.value_norm:
                agent.value_norm.update(b_returns[torch.as_tensor(active.reshape(-1), device=device)])
            b_targets, b_old_v = agent.value_norm.normalize(b_returns), agent.value_norm.normalize(values)
            # only the steps where an agent acted enter the loss (an agent done before its copy's episode end)
            idx = torch.as_tensor(np.flatnonzero(active.reshape(-1)), device=device)
            batch_size = len(idx)
            minibatch_size = -(-batch_size // args.num_minibatches)

            stop_epochs = False
            for _epoch in range(args.update_epochs):
                perm = idx[torch.randperm(batch_size, device=device)]
                for start in range(0, batch_size, minibatch_size):
                    mb = perm[start : start + minibatch_size]
                    new_logprob, entropy, new_value = agent.evaluate_actions(actor_in[mb], critic_in[mb], b_actions[mb])
                    mb_adv = b_advantages[mb]
                    if args.norm_adv and len(mb) > 1:
                        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    pg_loss, v_loss, logratio = ppo_loss(
                        new_logprob, b_logprobs[mb], mb_adv, new_value, b_old_v[mb], b_targets[mb], args.clip_coef,
                        args.clip_vloss,
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

            # Logging once per rollout, from the last minibatch: the only host syncs of the iteration.
            var_y = b_returns[idx].var()
            explained_var = float("nan") if var_y == 0 else float(1 - (b_returns[idx] - values[idx]).var() / var_y)
            stats = {
                "charts/learning_rate": lr_now,
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy.mean().item(),
                "losses/approx_kl": approx_kl(logratio).item(),
                "losses/clipfrac": ((logratio.exp() - 1.0).abs() > args.clip_coef).float().mean().item(),
                "losses/explained_variance": explained_var,
                "losses/value_norm_mean": float(agent.value_norm.mean),
                "losses/value_norm_std": float(agent.value_norm.var.sqrt()),
            }
        sps = int((global_step - start_step) / (time.time() - start_time))
        for key, val in {**stats, "charts/SPS": sps}.items():
            writer.add_scalar(key, val, global_step)
        if global_step >= next_log or iteration == num_iterations:
            next_log = (global_step // args.log_every + 1) * args.log_every
            recent = f"{np.mean(recent_returns):8.1f}" if recent_returns else "     n/a"
            print(f"step {global_step:>9,}  SPS {sps:>6,}  return(last 20 episodes) {recent}", flush=True)
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

    eval_returns = evaluate(policy, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device),
                            env_kwargs=env_kwargs)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: team return {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} "
          f"({np.mean(eval_returns) / n_agents:.1f} per agent) over {args.eval_episodes} episodes "
          f"({'uniformly random' if args.random_policy else 'deterministic'}); "
          f"trained {global_step - start_step:,} steps in {train_time:.1f}s")
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
