"""Run alone or under mpiexec: gpo-mpi's Python API on a tiny GPO run, into the file given.

    [mpiexec -n N] python train_script.py OUT.h5
"""
import sys

import gpo_mpi

# test_api.SCRIPT_RUN as keyword arguments (TINY of test_run.py included): keep the two in step
path = gpo_mpi.train(env="Pendulum-v1", horizon=20, batch_steps=64, n_envs=2, minibatch=128, critic_epochs=5,
                     population=4, rounds=2, total_steps=1536, expert_steps=64, dagger_iterations=1, dagger_steps=64,
                     eval_episodes=2, out=sys.argv[1])
print("trained", path)
