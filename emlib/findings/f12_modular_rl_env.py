"""Finding 12's task: a stochastic MiniGrid room whose observation is the goal's X and Y offset, moved along X or Y.

`XYNavEnv` is a `minigrid.MiniGridEnv`: a walled room (`grid_size` cells a side, walls included), a green goal and
the agent at random cells, and `n_obstacles` wall cells at random (never cutting the goal off). The agent moves in
absolute directions — action 0 = left (−X), 1 = right (+X), 2 = up (−Y), 3 = down (+Y) — and with probability `slip`
the move it makes is drawn at random among the four (the stochasticity). The observation is two one-hot codes:
the goal's X offset from the agent (−(n−1)…n−1, n the room's inner width) then its Y offset. MiniGrid's reward
(1 − 0.9 · steps / max_steps on reaching the goal) and time limit are kept.

>>> env = XYNavEnv(grid_size=5, seed=0)
>>> obs, _ = env.reset(seed=0)
>>> obs.shape, float(obs.sum())
((10,), 2.0)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Goal, Wall
from minigrid.minigrid_env import MiniGridEnv

__all__ = ["ACTIONS", "ACTION_AXIS", "MOVES", "XYNavEnv", "obs_size", "input_axes", "encode", "make_vector_env"]

ACTIONS = ("left", "right", "up", "down")
ACTION_AXIS = ("X", "X", "Y", "Y")
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (dx, dy) of each action in grid coordinates (y grows downwards)
_DIR = (2, 0, 3, 1)  # MiniGrid's agent_dir facing each move: 0 = +X, 1 = +Y, 2 = −X, 3 = −Y


def obs_size(grid_size: int) -> int:
    """Length of the observation: one one-hot per axis over the 2n − 1 possible offsets (n = grid_size − 2)."""
    return 2 * (2 * (grid_size - 2) - 1)


def input_axes(grid_size: int) -> list[str]:
    """The axis ('X' or 'Y') each observation unit codes."""
    half = obs_size(grid_size) // 2
    return ["X"] * half + ["Y"] * half


def encode(dx: np.ndarray | int, dy: np.ndarray | int, grid_size: int) -> np.ndarray:
    """Observations for goal offsets (dx, dy) (arrays of equal shape, or ints): one-hot dx, then one-hot dy."""
    dx, dy = np.atleast_1d(dx), np.atleast_1d(dy)
    span = 2 * (grid_size - 2) - 1
    shift = grid_size - 3
    out = np.zeros((dx.size, 2 * span), dtype=np.float32)
    rows = np.arange(dx.size)
    out[rows, dx.ravel() + shift] = 1.0
    out[rows, span + dy.ravel() + shift] = 1.0
    return out


class XYNavEnv(MiniGridEnv):
    """Navigate to the goal in a walled room with absolute X/Y moves that slip with probability `slip`."""

    def __init__(self, grid_size: int = 8, n_obstacles: int = 0, slip: float = 0.1, max_steps: int = 40,
                 seed: int | None = None, **kwargs: Any):
        self.n_obstacles, self.slip = n_obstacles, slip
        super().__init__(mission_space=MissionSpace(mission_func=lambda: "get to the green goal square"),
                         grid_size=grid_size, max_steps=max_steps, see_through_walls=True, **kwargs)
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Box(0.0, 1.0, (obs_size(grid_size),), dtype=np.float32)
        if seed is not None:
            self.reset(seed=seed)

    def _gen_grid(self, width: int, height: int) -> None:
        if getattr(self, "_walls", None) is None:  # the outer walls, built once (walls never change)
            self._walls = Grid(width, height)
            self._walls.wall_rect(0, 0, width, height)
        while True:
            self.grid = Grid(width, height)
            self.grid.grid = list(self._walls.grid)
            self.goal_pos = self.place_obj(Goal())
            for _ in range(self.n_obstacles):
                self.place_obj(Wall())
            self.place_agent(rand_dir=False)
            if self.n_obstacles == 0 or self._reachable():
                break
        self.agent_dir = 0
        self.mission = "get to the green goal square"

    def _reachable(self) -> bool:
        """Whether the goal can be reached from the agent's cell (breadth-first search over free cells)."""
        start, goal = tuple(self.agent_pos), tuple(self.goal_pos)
        seen, todo = {start}, deque([start])
        while todo:
            x, y = todo.popleft()
            if (x, y) == goal:
                return True
            for mx, my in MOVES:
                nxt = (x + mx, y + my)
                cell = self.grid.get(*nxt)
                if nxt not in seen and (cell is None or cell.can_overlap()):
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    def offsets(self) -> tuple[int, int]:
        """The goal's offset from the agent, (dx, dy)."""
        return int(self.goal_pos[0] - self.agent_pos[0]), int(self.goal_pos[1] - self.agent_pos[1])

    def gen_obs(self) -> np.ndarray:  # MiniGrid calls this after reset and every step
        if getattr(self, "_table", None) is None:  # every possible observation, indexed by (dx, dy) + shift
            r = np.arange(-(self.width - 3), self.width - 2)
            dx, dy = np.meshgrid(r, r, indexing="ij")
            self._table = encode(dx, dy, self.width).reshape(r.size, r.size, -1)
        shift = self.width - 3
        return self._table[self.goal_pos[0] - self.agent_pos[0] + shift, self.goal_pos[1] - self.agent_pos[1] + shift].copy()

    def step(self, action: int):
        move = int(action)
        if self.slip > 0 and self.np_random.random() < self.slip:
            move = int(self.np_random.integers(4))
        self.agent_dir = _DIR[move]
        obs, reward, terminated, truncated, info = super().step(self.actions.forward)
        return obs, reward, terminated, truncated, info  # success = terminated (the goal is the only end)


def make_vector_env(n_envs: int, seed: int, **env_kwargs: Any) -> gym.vector.SyncVectorEnv:
    """`n_envs` copies of XYNavEnv stepped together; a finished episode resets in the same step (its last info kept)."""
    env = gym.vector.SyncVectorEnv([lambda: XYNavEnv(**env_kwargs) for _ in range(n_envs)],
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    env.reset(seed=seed)
    return env
