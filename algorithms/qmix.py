"""QMIX: monotonic value factorisation for cooperative multi-agent Q-learning (and VDN, its additive special case).

Paper: Rashid, Samvelyan, Schroeder de Witt, Farquhar, Foerster, Whiteson (2018), "QMIX: Monotonic Value Function
Factorisation for Deep Multi-Agent Reinforcement Learning", ICML, https://arxiv.org/abs/1803.11485.
VDN: Sunehag et al. (2018), "Value-Decomposition Networks For Cooperative Multi-Agent Learning", AAMAS,
https://arxiv.org/abs/1706.05296. The layer sizes and defaults follow PyMARL / EPyMARL (Papoudakis et al., 2021).

Run:
    python algorithms/qmix.py                                   # mpe2's simple_spread_v3 (N=3, 25 steps)
    python algorithms/qmix.py --mixer vdn                       # VDN: Q_tot is the sum of the agents' values
    python algorithms/qmix.py --env-kwargs N=4 max_cycles=50
    python algorithms/qmix.py --help                            # every hyperparameter, with its meaning

Tested: the QMIX paper's two-step game (8; VDN 7), and simple_spread_v3 seed 1 above random (tests/test_qmix.py).
Results: benchmark_results/qmix.md

The agents act on their own observation histories; one team reward r_t (the sum of the agents' rewards) trains a
joint value Q_tot that the agents never need at execution: Q_tot is a monotonic function of the agents' values,
dQ_tot/dQ_a >= 0, so each agent's argmax of its own Q_a is the argmax of Q_tot (decentralised greedy action
selection is consistent with the centralised value). The code computes:
    agent network  one network shared by all agents (EPyMARL's), recurrent over the episode from a zero state:
                   x_a,t = [o_a,t, onehot(u_a,t-1), onehot(a)]      (no last action at t = 0: zeros)
                   h_a,t = GRU(relu(W_in x_a,t + b_in), h_a,t-1),   h_a,-1 = 0
                   Q_a(tau_a,t, .) = W_out h_a,t + b_out
    QMIX mixer     hypernetworks on the global state s_t give the mixing network's weights, made non-negative by
                   an absolute value (the monotonicity), and its biases (unconstrained):
                   W_1 = |hyper_w1(s)|  (n_agents x embed),  b_1 = hyper_b1(s)  (embed)
                   hidden = elu(Q_t . W_1 + b_1),  W_2 = |hyper_w2(s)|  (embed),  V(s) = hyper_v(s)
                   Q_tot = hidden . W_2 + V(s)
                   hyper_w1, hyper_w2: Linear(S, 64) - ReLU - Linear(64, .); hyper_v: Linear(S, 32) - ReLU -
                   Linear(32, 1); embed 32 (--mixing-embed-dim, --hypernet-hidden)
    VDN            Q_tot = sum_a Q_a  (--mixer vdn; no state)
    target         y_t = r_t + gamma * (1 - term_t) * Q_tot^-(s_t+1, u*_t+1)
                   u*_a = argmax_u Q_a(tau_a,t+1, u) of the online agents (double Q, --double-q, EPyMARL's
                   default), valued by the target agents Q_a^- and mixed by the target mixer; --no-double-q: the
                   target agents' own argmax
    loss           L = sum_{b,t} m_b,t (Q_tot(b, t) - y_b,t)^2 / sum_{b,t} m_b,t     (m: 1 on real steps, 0 on
                   the padding of shorter episodes), one Adam step on the agents and the mixer together, gradient
                   norm clipped to --max-grad-norm
    target nets    agents and mixer: theta^- <- tau * theta + (1 - tau) * theta^- every target_network_frequency
                   gradient steps (tau = 1, the default: EPyMARL's hard copy every 200 updates)
    exploration    epsilon-greedy, each agent of each copy on its own coin flip; epsilon decays linearly from
                   start_e to end_e over exploration_fraction * total_timesteps environment steps
    rewards        --standardise-rewards (EPyMARL's option, off by default): the loss sees (r_t - mu) / sigma, mu and
                   sigma^2 the running mean and variance of every team reward collected so far (RunningMeanStd);
                   subtracting mu shifts every step's reward alike, which leaves the best policy unchanged only when
                   episodes have a fixed length (simple_spread's 25 steps), not where an agent can end them
The episode replay buffer stores whole episodes (--buffer-size of them) padded to the episode limit; a gradient step
samples --batch-size episodes and unrolls both agent networks over every step of them from a zero hidden state, so
the recurrent state the loss sees is the one the agents had when acting (up to the weights' change since).

The environments: iql_marl.py's. --env-id names a PettingZoo parallel environment module (a bare name is looked up
in mpe2, a dotted one imported as it is), --env-kwargs key=value pairs go to its parallel_env(); every agent needs
the same flat Box observation and the same Discrete action space (continuous actions: refused with one line), and
the QMIX mixer needs the environment's global state(). BatchedParallelEnv steps --num-envs copies one after another
and resets a copy in the step where its episode ends (Gymnasium's same-step autoreset mode: the last observations and
state are in info["final_obs"] / info["final_state"]). One step of the parallel environment moves every agent once
and counts as one environment step; total_timesteps, the epsilon schedule, log_every and checkpoint_every count
environment steps, train_frequency counts completed episodes and target_network_frequency gradient steps.
Time limits: at 25 steps simple_spread truncates every agent, a time limit and not a termination: the episode is
stored with its real last observation and state and term = 0 at its last step, so its target bootstraps; an episode
ends as terminal (term = 1, y = r) only when no agent was truncated. The episode limit (the buffer's rows per
episode) is the environment's max_cycles or --episode-limit; an episode that reaches it is cut there as a time limit
(truncation) and its copy reset. An agent that is done before its copy's episode ends (none in simple_spread) stops
acting: its Q-value is set to 0 before mixing from then on (`alive` mask), so that Q_tot does not depend on it.

Returns, named because the literature mixes them (iql_marl.py's and mappo.py's definitions): an agent's return is
the sum of its rewards over the episode; the team return, charts/episodic_return and the evaluation's figure, is the
sum of the agents' returns (also the return of the team reward QMIX learns); charts/episodic_return_per_agent is the
team return / n_agents; each agent's return is charts/agent_return/<agent>.

Long runs: ppo.py's form (--checkpoint-every, SIGINT/SIGTERM, --resume, exit 3 on a NaN or infinite value;
--save-buffer adds the episode buffer to checkpoints). A PettingZoo environment's state cannot be saved, so a
resumed run starts new episodes (the episodes in progress are dropped).

The defaults are PyMARL's QMIX configuration, which EPyMARL started from (lr 5e-4, batch 32 episodes, buffer 5,000
episodes, GRU width 64, last action and agent id in the input, mixing embed 32, hypernet width 64, double Q, the
target copied every 200 updates, gradient norm 10, epsilon 1 -> 0.05), with 8 copies of the environment instead of
one and one gradient step per completed episode (the episode runner's rate: one update per episode); epsilon decays
over the first 20% of training (60k steps of the 300k default). Adam, as EPyMARL (PyMARL used RMSprop).
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
    exp_name: str = "qmix"
    """the name of this experiment (used in the run directory's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled and a GPU is present, train on it (small networks are faster on the CPU)"""
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
    """if toggled, checkpoints (periodic, on a signal, --save-model) also hold the episode buffer"""

    env_id: str = "simple_spread_v3"
    """a PettingZoo parallel environment module: a bare name is looked up in mpe2, a dotted one imported as given"""
    env_kwargs: tuple[str, ...] = ()
    """key=value arguments of the environment's parallel_env() (e.g. N=3 max_cycles=25; values are Python literals)"""
    mixer: str = "qmix"
    """how the agents' values make Q_tot: qmix (the monotonic mixing network on the state) or vdn (their sum)"""
    total_timesteps: int = 300_000
    """total environment steps (one step of the parallel environment moves every agent), summed over the copies"""
    num_envs: int = 8
    """the number of copies of the environment stepped together"""
    episode_limit: int = 0
    """the longest episode the buffer stores (0: the environment's max_cycles); a longer one is cut there (truncated)"""
    learning_rate: float = 5e-4
    """the Adam learning rate"""
    buffer_size: int = 5000
    """the episode replay buffer's capacity, in episodes"""
    batch_size: int = 32
    """episodes per gradient step"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate: 1.0 copies the online networks (a hard update), < 1 is Polyak averaging"""
    target_network_frequency: int = 200
    """gradient steps between target network updates (agents and mixer)"""
    train_frequency: int = 1
    """completed episodes (over all copies) per gradient step; training starts once the buffer holds a batch"""
    start_e: float = 1.0
    """the starting exploration epsilon"""
    end_e: float = 0.05
    """the final exploration epsilon"""
    exploration_fraction: float = 0.2
    """the fraction of total_timesteps over which epsilon decays from start_e to end_e"""
    double_q: bool = True
    """if toggled, the online agents choose the next actions and the target agents value them (double Q)"""
    hidden_size: int = 64
    """width of the agent network's input layer and GRU state"""
    mixing_embed_dim: int = 32
    """width of the mixing network's hidden layer (QMIX)"""
    hypernet_hidden: int = 64
    """width of the hidden layer of the hypernetworks that output the mixing weights (QMIX)"""
    max_grad_norm: float = 10.0
    """the maximum norm of the gradient of the agents' and the mixer's parameters together"""
    standardise_rewards: bool = False
    """if toggled, the loss sees team rewards standardised by the running mean and std of every team reward so far"""
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
    for name in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "target_network_frequency",
                 "hidden_size", "mixing_embed_dim", "hypernet_hidden", "eval_episodes", "log_every", "torch_threads",
                 "keep_checkpoints"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    # written `not x > 0` rather than `x <= 0`: a NaN fails every comparison, so only this form rejects it
    if not 0 < args.learning_rate < math.inf or not args.max_grad_norm > 0 or not args.checkpoint_every >= 0:
        fail(f"need 0 < --learning-rate < inf, --max-grad-norm > 0 and --checkpoint-every >= 0, got "
             f"{args.learning_rate}, {args.max_grad_norm} and {args.checkpoint_every}")
    if args.batch_size > args.buffer_size:
        fail(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size} (both in episodes)")
    if not (args.episode_limit >= 0 and 0 < args.tau <= 1 and 0 < args.gamma <= 1):
        fail("need --episode-limit >= 0, 0 < --tau <= 1 and 0 < --gamma <= 1")
    if not (0 <= args.start_e <= 1 and 0 <= args.end_e <= 1 and 0 < args.exploration_fraction <= 1):
        fail("need --start-e and --end-e in [0, 1] and 0 < --exploration-fraction <= 1")
    if args.mixer not in ("qmix", "vdn"):
        fail(f"--mixer must be qmix or vdn, got {args.mixer}")
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
    if not all(isinstance(s, gym.spaces.Discrete) for s in action_spaces):
        fail(f"qmix.py needs Discrete actions (each agent takes the argmax of its Q-values), {args.env_id} has "
             f"{action_spaces[0]}; drop continuous_actions=True or use a discrete environment such as simple_spread_v3")
    if not all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in obs_spaces):
        fail(f"qmix.py needs flat Box observations, {args.env_id} has {obs_spaces[0]}; try simple_spread_v3")
    if len({s.shape for s in obs_spaces}) > 1 or len({s.n for s in action_spaces}) > 1:
        fail(f"qmix.py stacks the agents' observations and actions and needs the same spaces for each; "
             f"{args.env_id} has {[s.shape for s in obs_spaces]} and {[s.n for s in action_spaces]}; try simple_spread_v3")
    if args.episode_limit == 0 and not episode_limit_of(probe) > 0:
        fail(f"{args.env_id} states no max_cycles: give the longest episode the buffer stores with --episode-limit")
    if args.mixer == "qmix":
        probe.reset(seed=0)
        try:
            state_dim = np.asarray(probe.state()).size
        except (NotImplementedError, AttributeError):
            state_dim = 0
        if not state_dim > 0:
            fail(f"the QMIX mixer reads the global state, and {args.env_id} has no state(); use --mixer vdn")
    probe.close()
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"no checkpoint at {args.resume}")


def episode_limit_of(env) -> int:
    """The environment's own episode limit (an MPE environment's max_cycles), 0 when it states none."""
    limit = getattr(env, "max_cycles", None) or getattr(getattr(env, "unwrapped", None), "max_cycles", None)
    return int(limit) if isinstance(limit, int) else 0


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


class RecurrentAgents(nn.Module):
    """Every agent's Q-values from its own observation history: one GRU network shared by all agents (EPyMARL's),
    its input the observation, the agent's last action (one-hot, zeros before the first) and its one-hot id.

    nn.GRU runs a whole sequence in one call: the episodes of a batch in training, one step at a time in acting."""

    def __init__(self, obs_dim: int, n_agents: int, n_actions: int, hidden_size: int = 64):
        super().__init__()
        self.n_agents, self.n_actions, self.hidden_size = n_agents, n_actions, hidden_size
        self.fc_in = nn.Linear(obs_dim + n_actions + n_agents, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.fc_out = nn.Linear(hidden_size, n_actions)

    def initial_state(self, *lead: int) -> torch.Tensor:
        """The zero hidden state every episode starts from: (*lead, n_agents, hidden_size)."""
        return torch.zeros(*lead, self.n_agents, self.hidden_size, device=self.fc_in.weight.device)

    def forward(self, obs: torch.Tensor, last_actions: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L steps of B episodes: obs [B, L, n_agents, obs_dim], last_actions [B, L, n_agents] (-1: none yet), h [B,
        n_agents, hidden] before the first -> (Q [B, L, n_agents, n_actions], h after the last)."""
        B, L, A = last_actions.shape
        last = F.one_hot(last_actions.clamp(min=0), self.n_actions).to(obs.dtype) * (last_actions >= 0).unsqueeze(-1)
        x = F.relu(self.fc_in(with_agent_ids(torch.cat([obs, last], dim=-1))))  # [B, L, A, hidden]
        # one sequence per (episode, agent): [B * A, L, hidden]
        out, h_last = self.gru(x.transpose(1, 2).reshape(B * A, L, -1), h.reshape(1, B * A, -1).contiguous())
        q = self.fc_out(out).view(B, A, L, self.n_actions).transpose(1, 2)
        return q, h_last.view(B, A, -1)

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor, last_actions: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of acting: obs [B, n_agents, obs_dim], last_actions [B, n_agents], h [B, n_agents, hidden] ->
        (argmax_u Q_a(tau_a, u) [B, n_agents], the next h). For the training episodes and the evaluation."""
        q, h = self(obs.unsqueeze(1), last_actions.unsqueeze(1), h)
        return q[:, 0].argmax(-1), h


class QMixer(nn.Module):
    """The monotonic mixing network: Q_tot = elu(Q . |W_1(s)| + b_1(s)) . |W_2(s)| + V(s), its weights and biases
    given by hypernetworks of the global state s (the module docstring has the layer sizes)."""

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_hidden: int = 64):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = nn.Sequential(nn.Linear(state_dim, hypernet_hidden), nn.ReLU(),
                                      nn.Linear(hypernet_hidden, n_agents * embed_dim))
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = nn.Sequential(nn.Linear(state_dim, hypernet_hidden), nn.ReLU(), nn.Linear(hypernet_hidden, embed_dim))
        self.hyper_v = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """agent_qs (..., n_agents), states (..., state_dim) -> Q_tot (...)."""
        lead = agent_qs.shape[:-1]
        s = states.reshape(-1, states.shape[-1])
        qs = agent_qs.reshape(-1, 1, self.n_agents)
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)  # |.|: dQ_tot/dQ_a >= 0
        hidden = F.elu(torch.bmm(qs, w1) + self.hyper_b1(s).unsqueeze(1))
        w2 = self.hyper_w2(s).abs().view(-1, self.embed_dim, 1)
        return (torch.bmm(hidden, w2).view(-1) + self.hyper_v(s).view(-1)).view(lead)


class VDNMixer(nn.Module):
    """VDN: Q_tot = sum_a Q_a (no parameters; the state is not read)."""

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return agent_qs.sum(-1)


def make_mixer(mixer: str, n_agents: int, state_dim: int, embed_dim: int, hypernet_hidden: int) -> nn.Module:
    return QMixer(n_agents, state_dim, embed_dim, hypernet_hidden) if mixer == "qmix" else VDNMixer()


class EpisodeBuffer:
    """A ring of whole episodes in preallocated numpy arrays, each padded to `max_len` steps: observations, states and
    the alive mask at steps 0..max_len (the row after an episode's last step holds its last observation and state),
    actions, team rewards, terminal flags and the `filled` mask (1 on the episode's steps) at steps 0..max_len-1."""

    KEYS = ("obs", "state", "alive", "actions", "rewards", "terminated", "filled")

    def __init__(self, capacity: int, max_len: int, n_agents: int, obs_dim: int, state_dim: int, seed: int):
        self.capacity, self.max_len = capacity, max_len
        self.obs = np.zeros((capacity, max_len + 1, n_agents, obs_dim), dtype=np.float32)
        self.state = np.zeros((capacity, max_len + 1, state_dim), dtype=np.float32)
        self.alive = np.zeros((capacity, max_len + 1, n_agents), dtype=np.float32)
        self.actions = np.zeros((capacity, max_len, n_agents), dtype=np.int64)
        self.rewards = np.zeros((capacity, max_len), dtype=np.float32)
        self.terminated = np.zeros((capacity, max_len), dtype=np.float32)
        self.filled = np.zeros((capacity, max_len), dtype=np.float32)
        self.pos, self.size = 0, 0  # the next slot to write, the episodes stored
        self.rng = np.random.default_rng(seed)

    def add(self, episode: dict[str, np.ndarray]) -> None:
        """Store one episode: a dict of the KEYS' arrays, each shaped as one slot (padding rows zero)."""
        for k in self.KEYS:
            getattr(self, k)[self.pos] = episode[k]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """batch_size episodes drawn uniformly (with replacement), each array [batch_size, ...]."""
        idx = self.rng.integers(0, self.size, size=batch_size)
        return {k: torch.from_numpy(getattr(self, k)[idx]).to(device) for k in self.KEYS}

    def state_dict(self) -> dict:
        """The stored episodes and the ring's position, as tensors (checkpoints with --save-buffer)."""
        return {**{k: torch.from_numpy(getattr(self, k)) for k in self.KEYS}, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["obs"].shape != self.obs.shape:
            fail(f"the checkpoint's episode buffer has another shape ({tuple(state['obs'].shape)}, here "
                 f"{self.obs.shape}): resume with its --buffer-size and --episode-limit")
        for k in self.KEYS:
            getattr(self, k)[...] = state[k].numpy()
        self.pos, self.size = state["pos"], state["size"]

    def __len__(self) -> int:
        return self.size


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


def unroll_agents(agents: RecurrentAgents, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q-values along whole episodes from a zero hidden state: obs [B, T+1, n_agents, obs_dim] and the actions taken
    [B, T, n_agents] (the last-action input of step t is the action of step t-1) -> Q [B, T+1, n_agents, n_actions]."""
    last = torch.cat([torch.full_like(actions[:, :1], -1), actions], dim=1)  # [B, T+1, A]: none before step 0
    return agents(obs, last, agents.initial_state(obs.shape[0]))[0]


def td_targets(rewards: torch.Tensor, terminated: torch.Tensor, next_q_tot: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_t = r_t + gamma * (1 - term_t) * Q_tot^-(s_t+1, u*_t+1): a truncated last step (term 0) bootstraps from its
    real last observation and state; a terminal one does not. All [B, T]."""
    return rewards + gamma * (1.0 - terminated) * next_q_tot


def masked_td_loss(q_tot: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean squared TD error over the real steps (mask 1), the padding of shorter episodes left out: [B, T] -> ()."""
    return ((q_tot - targets) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def qmix_loss(agents: RecurrentAgents, mixer: nn.Module, target_agents: RecurrentAgents, target_mixer: nn.Module,
              batch: dict[str, torch.Tensor], gamma: float, double_q: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The TD loss of a batch of episodes (EpisodeBuffer.sample) and the mean Q_tot of its real steps. An agent that is
    no longer alive enters the mixer with Q = 0."""
    alive = batch["alive"]
    q = unroll_agents(agents, batch["obs"], batch["actions"])  # [B, T+1, A, n_actions]
    q_taken = q[:, :-1].gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1) * alive[:, :-1]
    q_tot = mixer(q_taken, batch["state"][:, :-1])  # [B, T]
    with torch.no_grad():
        next_q_target = unroll_agents(target_agents, batch["obs"], batch["actions"])[:, 1:]
        chooser = q[:, 1:] if double_q else next_q_target  # double Q: the online agents choose u*
        next_q = next_q_target.gather(-1, chooser.argmax(-1, keepdim=True)).squeeze(-1) * alive[:, 1:]
        targets = td_targets(batch["rewards"], batch["terminated"], target_mixer(next_q, batch["state"][:, 1:]), gamma)
    mask = batch["filled"]
    return masked_td_loss(q_tot, targets, mask), (q_tot.detach() * mask).sum() / mask.sum().clamp(min=1.0)


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """start -> end linearly over `duration` (of training's progress, in [0, 1]), then end (it decays or grows)."""
    return start + min(t / duration, 1.0) * (end - start)


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


def load_model(path: str) -> tuple[RecurrentAgents, dict]:
    """The trained agent network of a checkpoint written by this file (what acts; the mixer is for training only),
    and the checkpoint."""
    ckpt = load_checkpoint(path, "qmix")
    agents = RecurrentAgents(**ckpt["model_args"])
    agents.load_state_dict(ckpt["model"])
    return agents, ckpt


def evaluate(agent_or_path: nn.Module | str, env_id: str, eval_episodes: int, seed: int, device: str = "cpu",
             env_kwargs: dict | None = None) -> list[float]:
    """Deterministic evaluation (each agent's argmax action, its hidden state and last action carried through the
    episode from zeros) on a fresh environment; returns one team return (the sum over agents of their summed rewards)
    per episode. A checkpoint brings its own env_kwargs."""
    if isinstance(agent_or_path, str):
        agent, ckpt = load_model(agent_or_path)
        agent, env_kwargs = agent.to(device), ckpt["env_kwargs"]
    else:
        agent = agent_or_path
    envs = BatchedParallelEnv([lambda: make_parallel_env(env_id, env_kwargs or {})])
    returns = []
    for ep in range(eval_episodes):
        obs, _ = envs.reset(seed=seed + ep)
        h = agent.initial_state(1)
        actions = torch.full((1, envs.n_agents), -1, dtype=torch.long, device=device)
        while True:
            actions, h = agent.greedy_action(torch.as_tensor(obs, device=device), actions, h)
            obs, _, _, _, _, info = envs.step(actions.cpu().numpy())
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

    # num_envs copies, reset in the step where their episode ends (same-step autoreset: the last observations and
    # states in info["final_obs"] / info["final_state"], which a truncated episode's last target needs)
    envs = BatchedParallelEnv(
        [lambda i=i: make_parallel_env(args.env_id, env_kwargs, "rgb_array" if args.capture_video and i == 0 else None)
         for i in range(args.num_envs)], video_dir=f"videos/{run_name}" if args.capture_video else None)
    E, A, obs_dim, n_actions = args.num_envs, envs.n_agents, envs.obs_dim, envs.n_actions
    obs, state = envs.reset(seed=args.seed)
    state_dim, T = state.shape[-1], args.episode_limit or episode_limit_of(envs.envs[0])

    model_args = {"obs_dim": obs_dim, "n_agents": A, "n_actions": n_actions, "hidden_size": args.hidden_size}
    mixer_args = {"mixer": args.mixer, "n_agents": A, "state_dim": state_dim, "embed_dim": args.mixing_embed_dim,
                  "hypernet_hidden": args.hypernet_hidden}
    agents = RecurrentAgents(**model_args).to(device)
    target_agents = RecurrentAgents(**model_args).to(device)
    target_agents.load_state_dict(agents.state_dict())
    mixer = make_mixer(**mixer_args).to(device)
    target_mixer = make_mixer(**mixer_args).to(device)
    target_mixer.load_state_dict(mixer.state_dict())
    params = [*agents.parameters(), *mixer.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, fused=True)
    rb = EpisodeBuffer(args.buffer_size, T, A, obs_dim, state_dim, args.seed)
    reward_rms = RunningMeanStd()  # of the team rewards, for --standardise-rewards
    generators = {"explore": rng, "buffer": rb.rng}

    # The training state a checkpoint holds; resuming puts it back.
    global_step, origin, episodes, updates = 0, (0, 0.0), 0, 0
    next_train = args.train_frequency  # a gradient step each time this many more episodes have been completed
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, "qmix")
        check_resume(ckpt, args, model_args)
        if ckpt["env_kwargs"] != env_kwargs or ckpt["mixer_args"] != mixer_args or ckpt["episode_limit"] != T:
            fail(f"--resume {args.resume} was trained with --env-kwargs {ckpt['env_kwargs']}, mixer "
                 f"{ckpt['mixer_args']} and episode limit {ckpt['episode_limit']}: resume with the same options")
        agents.load_state_dict(ckpt["model"])
        target_agents.load_state_dict(ckpt["target_network"])
        mixer.load_state_dict(ckpt["mixer"])
        target_mixer.load_state_dict(ckpt["target_mixer"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, origin = ckpt["global_step"], tuple(ckpt["schedule_origin"])
        episodes, updates, next_train = ckpt["episodes"], ckpt["updates"], ckpt["next_train"]
        mean, var, reward_rms.count = ckpt["reward_rms"]  # Python floats (a weights-only load refuses numpy's)
        reward_rms.mean, reward_rms.var = np.float64(mean), np.float64(var)
        if args.total_timesteps != ckpt["args"]["total_timesteps"]:
            origin = (global_step, progress(global_step, ckpt["args"]["total_timesteps"], origin))
            print(f"--total-timesteps {args.total_timesteps:,} differs from the checkpoint's "
                  f"{ckpt['args']['total_timesteps']:,}: the schedules stretch from step {global_step:,} on", flush=True)
        set_rng_state(ckpt["rng"], generators)
        if "buffer" in ckpt:
            rb.load_state_dict(ckpt["buffer"])
        # a PettingZoo environment's state cannot be put back: new episodes, seeded apart from the first ones
        obs, state = envs.reset(seed=args.seed + global_step)
        print(f"resumed from {args.resume} at step {global_step:,} (new episodes start; episode buffer: "
              f"{len(rb):,} episodes)", flush=True)

    def checkpoint() -> dict:
        ckpt = {"algo": "qmix", "env_id": args.env_id, "env_kwargs": env_kwargs, "model_args": model_args,
                "model": agents.state_dict(), "args": asdict(args), "target_network": target_agents.state_dict(),
                "mixer_args": mixer_args, "mixer": mixer.state_dict(), "target_mixer": target_mixer.state_dict(),
                "optimizer": optimizer.state_dict(), "episode_limit": T, "global_step": global_step,
                "episodes": episodes, "updates": updates, "next_train": next_train, "schedule_origin": origin,
                "reward_rms": tuple(float(x) for x in (reward_rms.mean, reward_rms.var, reward_rms.count)), "rng": rng_state(generators)}
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
    # the episodes in progress, one buffer slot per copy, written at row t[e] of copy e; the agents' hidden states
    # and last actions (-1: none yet), from zeros at each episode's start
    current = {k: np.zeros((E, *getattr(rb, k).shape[1:]), dtype=getattr(rb, k).dtype) for k in rb.KEYS}
    t, copies = np.zeros(E, dtype=np.int64), np.arange(E)
    h = agents.initial_state(E)
    last_actions = torch.full((E, A), -1, dtype=torch.long, device=device)

    while global_step < args.total_timesteps:
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction,
                                  progress(global_step, args.total_timesteps, origin))
        # epsilon-greedy, decided for each agent of each copy on its own; the greedy step also moves the GRU state
        greedy, h = agents.greedy_action(torch.as_tensor(obs, device=device), last_actions, h)
        actions = greedy.cpu().numpy()
        explore = rng.random((E, A)) < epsilon
        if explore.any():
            actions = np.where(explore, rng.integers(0, n_actions, size=(E, A)), actions)
        active = envs.alive.copy()  # the agents that act at this step
        current["obs"][copies, t], current["state"][copies, t], current["alive"][copies, t] = obs, state, active
        current["actions"][copies, t] = actions
        next_obs, next_state, rewards, terminations, truncations, info = envs.step(actions)
        global_step += E
        if args.nan_check and (bad := nonfinite_multiagent_step(next_obs, next_state, rewards, info)):
            fault(bad)
        current["rewards"][copies, t] = rewards.sum(1)  # the team reward
        reward_rms.update(rewards.sum(1))
        current["filled"][copies, t] = 1.0
        t += 1
        ended = info["_final"]
        cut = ~ended & (t == T)  # the episode limit, reached without an end: a time limit imposed here
        # row t: the next observation, state and alive agents; at an episode's end its real last ones (not the reset
        # copy's), the agents that were truncated counting as alive (their values bootstrap)
        current["obs"][copies, t] = np.where(ended[:, None, None], info["final_obs"], next_obs)
        current["state"][copies, t] = np.where(ended[:, None], info["final_state"], next_state)
        current["alive"][copies, t] = np.where(ended[:, None], active & ~terminations, envs.alive)

        done = ended | cut
        for e in np.flatnonzero(done):
            # terminal only when the episode ended and no agent was truncated; a cut or truncated end bootstraps
            current["terminated"][e, t[e] - 1] = float(ended[e] and not (truncations[e] & active[e]).any())
            rb.add({k: v[e] for k, v in current.items()})
            for v in current.values():
                v[e] = 0
            if ended[e]:
                agent_returns, length = info["episode"]["r"][e], int(info["episode"]["l"][e])
            else:
                agent_returns, length = envs.episode_returns[e].copy(), int(envs.episode_lengths[e])
                next_obs[e], next_state[e] = envs.reset_copy(e, None), envs.copy_state(e)
            t[e], episodes = 0, episodes + 1
            team = float(agent_returns.sum())
            recent_returns.append(team)
            writer.add_scalar("charts/episodic_return", team, global_step)
            writer.add_scalar("charts/episodic_return_per_agent", team / A, global_step)
            writer.add_scalar("charts/episodic_length", length, global_step)
            for j, name in enumerate(envs.agents):
                writer.add_scalar(f"charts/agent_return/{name}", float(agent_returns[j]), global_step)
        last_actions = torch.as_tensor(actions, device=device)
        if done.any():  # new episodes start from a zero hidden state and no last action
            reset = torch.as_tensor(done, device=device)
            h[reset], last_actions[reset] = 0.0, -1
        obs, state = next_obs, next_state

        # a gradient step per train_frequency completed episodes, once the buffer holds a batch
        n_updates = 0
        while episodes >= next_train:
            next_train += args.train_frequency
            n_updates += len(rb) >= args.batch_size
        for _ in range(n_updates):
            batch = rb.sample(args.batch_size, device)
            if args.standardise_rewards:
                batch["rewards"] = (batch["rewards"] - float(reward_rms.mean)) / math.sqrt(float(reward_rms.var) + 1e-8)
            loss, q_values = qmix_loss(agents, mixer, target_agents, target_mixer, batch, args.gamma, args.double_q)
            optimizer.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
            # one host sync per gradient step; before optimizer.step(), so the networks stay finite
            if args.nan_check and not math.isfinite(loss.detach() + grad_norm):
                fault("loss" if not torch.isfinite(loss) else "gradient norm")
            optimizer.step()
            updates += 1
            if updates % args.target_network_frequency == 0:
                soft_update(target_agents, agents, args.tau)
                soft_update(target_mixer, mixer, args.tau)

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
            print(f"step {global_step:>9,}  SPS {sps:>6,}  epsilon {epsilon:.3f}  updates {updates:>6,}  "
                  f"return(last 20 episodes) {recent}", flush=True)
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

    eval_returns = evaluate(agents, args.env_id, args.eval_episodes, seed=args.seed + 100_000, device=str(device),
                            env_kwargs=env_kwargs)
    for i, r in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", r, i)
    print(f"eval: team return {np.mean(eval_returns):.1f} +- {np.std(eval_returns):.1f} "
          f"({np.mean(eval_returns) / A:.1f} per agent) over {args.eval_episodes} episodes (greedy); "
          f"trained {global_step - start_step:,} steps ({updates:,} gradient steps) in {train_time:.1f}s")
    if model_path:
        print(f"model saved to {model_path}" + (" (with the episode buffer)" if args.save_buffer else ""))
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
