"""Run under mpiexec: data-parallel gradients equal the full-batch gradient.

    mpiexec -n N python joint_gradients.py OUT_DIR

Every rank builds the same policy and the same 48-row dataset, computes the
gradient of its own slice's share of the loss (its rows' sum over all 48
rows), and sums gradients over ranks.
"""
import sys

import numpy as np
import torch

from gpo_mpi import mpi
from gpo_mpi.networks import GaussianPolicy, flat_parameters

comm = mpi.world()
mpi.abort_on_uncaught_exception(comm)
out_dir = sys.argv[1]
rank, n_ranks = comm.Get_rank(), comm.Get_size()
torch.manual_seed(0)
policy = GaussianPolicy(5, 2)
rng = np.random.default_rng(0)
obs = torch.from_numpy(rng.normal(size=(48, 5)).astype(np.float32))
actions = torch.from_numpy(rng.normal(size=(48, 2)).astype(np.float32))
weights = torch.from_numpy(rng.normal(size=48).astype(np.float32))

rows = slice(rank * 48 // n_ranks, (rank + 1) * 48 // n_ranks)
loss = -(policy.log_prob(obs[rows], actions[rows]) * weights[rows]).sum() / 48
loss.backward()
parameters = list(policy.parameters())
mpi.sum_gradients(comm, parameters)
gradient = np.concatenate([p.grad.numpy().reshape(-1) for p in parameters])
mpi.check_synced(comm, flat_parameters(policy), "policy parameters")
np.save(f"{out_dir}/rank{rank}.npy", gradient)
