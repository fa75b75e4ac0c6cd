"""Tiny hand-made Gymnasium environments shared by several test modules.

Each one is small enough that the correct update can be worked out by hand, which is what makes a test
built on it an independent check of an algorithm file.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class OneStep(gym.Env):
    """State 0 --any action--> state 1 with reward 1; the step either terminates or is truncated.

    With `terminal=True` the one-step target is the reward alone; with `terminal=False` the episode ends by a
    time limit, so a correct TD update must still bootstrap from state 1. Tests of q_learning, sarsa and
    expected_sarsa use it to check that only termination (not truncation) drops the bootstrap term.
    """

    def __init__(self, terminal: bool):
        self.terminal = terminal
        self.observation_space = gym.spaces.Discrete(2)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        return 1, 1.0, self.terminal, not self.terminal, {}


class Counting(gym.Env):
    """Observation [t, k]: step t of episode k. Odd episodes terminate at t = 2; the time limit (3) cuts
    the even ones. Reward 1 per step. The reset observation [0, k] differs from every final one, so a test
    can tell which observation an update bootstrapped from. Registered as COUNTING_ID by register_counting().
    """

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.k, self.t = -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.t = self.k + 1, 0
        return np.array([0, self.k], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, self.k], dtype=np.float32), 1.0, self.k % 2 == 1 and self.t == 2, False, {}


COUNTING_ID = "CountingTest-v0"


def register_counting() -> str:
    """Register Counting (time limit 3) once per process; returns its id."""
    if COUNTING_ID not in gym.registry:
        gym.register(id=COUNTING_ID, entry_point=Counting, max_episode_steps=3)
    return COUNTING_ID


class NanAt(gym.Wrapper):
    """Passes a real environment through, except that its `at`-th step (counted over episodes) returns a NaN
    observation or a NaN reward: what a diverging simulator or a bad reward function does to a long run."""

    def __init__(self, env: gym.Env, at: int, quantity: str):
        super().__init__(env)
        self.at, self.quantity, self.steps = at, quantity, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.quantity == "observation":
                obs = np.full_like(obs, np.nan)
            else:
                reward = float("nan")
        return obs, reward, terminated, truncated, info


def make_nan_at(base: str, at: int, quantity: str, **kwargs) -> gym.Env:
    return NanAt(gym.make(base, **kwargs), at, quantity)


def register_nan_at(base: str, at: int, quantity: str, episode_steps: int | None = None) -> str:
    """Register `base` with a NaN `quantity` ("observation" or "reward") at step `at`; returns the new id.
    With `episode_steps`, a time limit of that many steps ends each episode: with episode_steps == at the NaN
    observation is an episode's last one, which a vector environment passes in info["final_obs"]."""
    limit = f"Limit{episode_steps}" if episode_steps else ""
    env_id = f"NanAt{at}{quantity.title()}{limit}-{base.replace('/', '-').replace('-v', 'v')}-v0"
    if env_id not in gym.registry:
        kwargs = {"base": base, "at": at, "quantity": quantity}
        if episode_steps:
            kwargs["max_episode_steps"] = episode_steps
        gym.register(env_id, entry_point=make_nan_at, kwargs=kwargs)
    return env_id
