"""Run under mpiexec: every helper of gpo_mpi.mpi, results saved per rank.

    mpiexec -n N python collectives.py OUT_DIR

tests/test_mpi.py computes the same results in one process from
`rank_data` and compares.
"""
import sys

import numpy as np

from gpo_mpi import mpi


def rank_data(rank: int, size: int) -> dict:
    """What each rank contributes: seeded by rank, rank 1 contributes no rows."""
    rng = np.random.default_rng(1000 + rank)
    n_rows = 0 if rank == 1 else rank + 2
    return {
        "parameters": rng.normal(size=1000).astype(np.float32),
        "rows_float": rng.normal(size=(n_rows, 3, 2)).astype(np.float32),
        "rows_int": rng.integers(-5, 5, size=n_rows).astype(np.int64),
        "statistics": rng.normal(size=4),
    }


def main(out_dir: str) -> None:
    comm = mpi.world()
    mpi.abort_on_uncaught_exception(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    data = rank_data(rank, size)

    parameters = mpi.bcast_flat(comm, data["parameters"].copy(), root=size - 1)
    rows_float, counts_float = mpi.allgatherv_rows(comm, data["rows_float"])
    rows_int, counts_int = mpi.allgatherv_rows(comm, data["rows_int"])
    statistics = mpi.allreduce_sum(comm, data["statistics"])
    traffic = mpi.traffic.take()  # of the four calls above

    mpi.check_synced(comm, parameters, "parameters")  # must pass: just broadcast
    try:
        mpi.check_synced(comm, data["parameters"], "parameters")  # differ by rank
        desync_detected = False
    except RuntimeError as error:
        desync_detected = f"differ from rank 0's on {size - 1} rank(s)" in str(error)

    np.savez(f"{out_dir}/rank{rank}.npz", parameters=parameters, rows_float=rows_float,
             counts_float=counts_float, rows_int=rows_int, counts_int=counts_int,
             statistics=statistics, desync_detected=desync_detected, traffic=traffic,
             kinds=np.array(mpi.COLLECTIVE_KINDS))


if __name__ == "__main__":
    main(sys.argv[1])
