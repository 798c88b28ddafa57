"""Run under mpiexec: one sampling iteration of a population of 4 with data
sharing, through the engine's own collectives; saves what each member learns from.

    mpiexec -n N python sharing.py OUT_DIR EPSILON
"""
import sys

import numpy as np

from gpo_mpi import mpi
from gpo_mpi.config import RunConfig
from gpo_mpi.engine import LocalMember, gather_batches, measure_kl_matrix, member_seed
from gpo_mpi.mutate import Member, pool_batches, share_sets
from gpo_mpi.rollout import ObsNormalizer, Sampler

comm = mpi.world()
mpi.abort_on_uncaught_exception(comm)
out_dir, epsilon = sys.argv[1], float(sys.argv[2])
rank, n_ranks = comm.Get_rank(), comm.Get_size()
config = RunConfig(env="Pendulum-v1", population=4, batch_steps=64, total_steps=256, kl_states=32,
                   share_epsilon=epsilon, horizon=20)
per_rank = config.local_members(n_ranks)
local = [LocalMember(Member.create(i, 3, 1, config, member_seed(config, i)),
                     Sampler(config.env, 1, config.horizon, member_seed(config, i) + 1, f"member {i}"))
         for i in range(rank * per_rank, (rank + 1) * per_rank)]
normalizer = ObsNormalizer(3, config.obs_clip)
batches = [lm.sampler.sample(lm.member.policy, normalizer, config.batch_steps)[0] for lm in local]

kl = measure_kl_matrix(comm, local, batches, config, round_index=0)
sets = share_sets(kl, config.share_epsilon)
all_batches = gather_batches(comm, batches, config, obs_dim=3)
for lm in local:
    members_read = list(sets[lm.member.index])
    pooled = pool_batches(lm.member.critic, [all_batches[j] for j in members_read],
                          members_read.index(lm.member.index), config)
    np.savez(f"{out_dir}/member{lm.member.index}.npz", obs=pooled.obs.numpy(), advantages=pooled.advantages.numpy(),
             own=pooled.own.numpy(), own_obs=batches[local.index(lm)].obs, kl=kl, members_read=members_read)
