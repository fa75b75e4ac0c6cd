"""Tiny hand-made Gymnasium environments shared by several test modules.

Each one is small enough that the correct update can be worked out by hand, which is what makes a test
built on it an independent check of an algorithm file.
"""

from __future__ import annotations

import gymnasium as gym


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
