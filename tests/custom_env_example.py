"""A user's own environment, as `--env-id custom_env_example:CustomCorridor-v0` names it: Gymnasium's
"module:Env-v0" form imports this module, which registers the ids below (tests/test_custom_env.py).

One corridor of LENGTH cells in three variants that fit the different kinds of file:
- CustomCorridor-v0: Box position observation, Discrete(2) actions (left, right);
- CustomCorridorBox-v0: the same observation, a Box(-1, 1, (1,)) action (its sign picks the direction);
- CustomCorridorTabular-v0: Discrete(LENGTH) observations (the cell), Discrete(2) actions.
Reward -0.1 per step and +1 on reaching the right end, which terminates; a TimeLimit of 20 steps truncates.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

LENGTH = 5


class Corridor(gym.Env):
    def __init__(self, box_action: bool = False, tabular: bool = False):
        self.box_action, self.tabular = box_action, tabular
        self.observation_space = (gym.spaces.Discrete(LENGTH) if tabular
                                  else gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32) if box_action else gym.spaces.Discrete(2)

    def observe(self):
        return self.cell if self.tabular else np.array([self.cell / (LENGTH - 1)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell = 0
        return self.observe(), {}

    def step(self, action):
        right = float(np.asarray(action).reshape(-1)[0]) > 0 if self.box_action else int(action) == 1
        self.cell = min(self.cell + 1, LENGTH - 1) if right else max(self.cell - 1, 0)
        done = self.cell == LENGTH - 1
        return self.observe(), 1.0 if done else -0.1, done, False, {}


for _id, _kwargs in (("CustomCorridor-v0", {}), ("CustomCorridorBox-v0", {"box_action": True}),
                     ("CustomCorridorTabular-v0", {"tabular": True})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=Corridor, kwargs=_kwargs, max_episode_steps=20)
