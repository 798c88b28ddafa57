"""A user's own environment, for `--env user_envs:ReachTarget` (imported from tests/)."""
import gymnasium as gym
import numpy as np


class ReachTarget(gym.Env):
    """Move a point towards a target; `dim` and `target` come from env_kwargs."""

    def __init__(self, dim: int = 2, target: float = 0.5):
        self.dim, self.target = dim, target
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1, 1, self.dim)
        self.steps = 0
        return self.position.copy(), {}

    def step(self, action):
        self.position = self.position + 0.1 * np.clip(action, -1, 1)
        self.steps += 1
        reward = -float(np.sum((self.position - self.target) ** 2))
        return self.position.copy(), reward, False, self.steps >= 25, {}


class FailsOnRank(ReachTarget):
    """ReachTarget, except that it cannot be made on one MPI rank (`env_kwargs` {"rank": r}): a library
    missing on one node, say."""

    def __init__(self, rank: int = 1):
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == rank:
            raise ValueError(f"no simulator library on the node of rank {rank}")
        super().__init__()


class CapturedReachTarget(ReachTarget):
    """ReachTarget with gpo-mpi's snapshot protocol, so checkpoints keep its episodes."""

    def gpo_get_state(self):
        return dict(position=self.position.copy(), steps=self.steps, rng=self.np_random.bit_generator.state)

    def gpo_set_state(self, state):
        self.position, self.steps = state["position"].copy(), state["steps"]
        self.np_random.bit_generator.state = state["rng"]
