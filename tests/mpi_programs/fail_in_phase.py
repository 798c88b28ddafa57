"""Run under mpiexec: gpo-mpi with an exception raised on one rank in one phase.

    mpiexec -n N python fail_in_phase.py RANK PHASE [gpo-mpi arguments...]

PHASE is a method of gpo_mpi.engine.Population: mutate, select, crossover,
checkpoint (the failing rank prints "failing at <time.time()>" before it
raises); "non-finite" to register an environment whose observations turn
NaN after 150 steps (on every rank) and run on it; or "desync" to have
RANK's observation statistics drift from the others' after its second
update.
"""
import sys
import time

import gymnasium as gym
import numpy as np

from gpo_mpi import cli, engine, mpi, rollout

failing_rank, phase = int(sys.argv[1]), sys.argv[2]


class TurnsNaN(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = getattr(self, "steps", 0)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        return np.full(2, np.nan if self.steps > 150 else 0.0, np.float32), 0.0, False, self.steps % 10 == 0, {}


if phase == "non-finite":
    gym.register("TurnsNaN-v0", entry_point=TurnsNaN, disable_env_checker=True)
elif phase == "desync":
    update_from_sums = rollout.ObsNormalizer.update_from_sums

    def drifting_update(self, sums):
        update_from_sums(self, sums)
        if mpi.world().Get_rank() == failing_rank and self.count > 1.5 * sums[0]:
            self.mean = self.mean + 1e-12

    rollout.ObsNormalizer.update_from_sums = drifting_update
else:
    original = getattr(engine.Population, phase)

    def failing(self, *args, **kwargs):
        if self.rank == failing_rank:
            print(f"failing at {time.time():.3f}", file=sys.stderr, flush=True)
            raise RuntimeError(f"deliberate failure in {phase} on rank {failing_rank}")
        return original(self, *args, **kwargs)

    setattr(engine.Population, phase, failing)
sys.exit(cli.main(sys.argv[3:]))
