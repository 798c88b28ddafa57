"""Run under mpiexec: one sampling iteration of a population of 4 with data
sharing, through the engine's own collectives; saves what each member learns from.

    mpiexec -n N python sharing.py OUT_DIR EPSILON
"""
import sys

import numpy as np

from gpo_mpi import mpi
from gpo_mpi.config import RunConfig
from gpo_mpi.engine import Population
from gpo_mpi.mutate import pool_batches
from gpo_mpi.sharing import share_sets

comm = mpi.world()
mpi.abort_on_uncaught_exception(comm)
out_dir, epsilon = sys.argv[1], float(sys.argv[2])
config = RunConfig(env="Pendulum-v1", population=4, batch_steps=64, total_steps=256, kl_states=32,
                   share_epsilon=epsilon, horizon=20, out=f"{out_dir}/run.h5")
population = Population(config, comm)
population.last_batches = [lm.sampler.sample(lm.member.policy, population.normalizer, config.batch_steps)[0]
                           for lm in population.local]

kl = population.measure_kl_matrix()
sets = share_sets(kl, config.share_epsilon)
population.share_sets = sets
all_batches = population.exchange_batches()  # the batches each rank's members read, by member index
for lm, own_batch in zip(population.local, population.last_batches):
    members_read = list(sets[lm.member.index])
    pooled = pool_batches(lm.member, [all_batches[j] for j in members_read], members_read.index(lm.member.index),
                          config)
    np.savez(f"{out_dir}/member{lm.member.index}.npz", obs=pooled.obs.numpy(), advantages=pooled.advantages.numpy(),
             weights=pooled.weights.numpy(),
             own=pooled.own.numpy(), own_obs=own_batch.obs, kl=kl, members_read=members_read)
