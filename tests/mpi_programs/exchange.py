"""Run under mpiexec: data sharing's batch exchange for several share-set cases, in every mode.

    mpiexec -n N python exchange.py POPULATION OUT_DIR

Each rank saves, per case and mode, the blocks its members received (by member index) and the bytes
the exchange moved; tests/test_mpi.py compares them with what each member's share set says.
"""
import sys

import numpy as np

from gpo_mpi import mpi
from gpo_mpi.config import RunConfig
from gpo_mpi.mpi import BatchExchange
from gpo_mpi.record import PhaseTimer


REBUILDS = 2101  # calls with changing share sets; the last (call 2,100) has the asymmetric ones


def member_rows(member: int) -> np.ndarray:
    """Member i's batch: 5 rows of 3 values that name it."""
    return np.arange(15, dtype=np.float32).reshape(5, 3) + 100 * member


def share_set_cases(population: int) -> dict[str, list[np.ndarray]]:
    """S_i (each includes i) for: no sharing, a partial ring, an asymmetric set, everyone."""
    members = np.arange(population)
    return {
        "empty": [np.array([i]) for i in members],
        "ring": [np.unique([i, (i + 1) % population]) for i in members],
        "asymmetric": [members if i == 0 else np.array([0, i]) if i % 2 else np.array([i]) for i in members],
        "full": [members for _ in members],
    }


def main(population: int, out_dir: str) -> None:
    comm = mpi.world()
    mpi.abort_on_uncaught_exception(comm)
    rank, n_ranks = comm.Get_rank(), comm.Get_size()
    config = RunConfig(population=population)
    slots_of_rank = [config.member_slots(r, n_ranks) for r in range(n_ranks)]
    local_rows = np.concatenate([member_rows(i) for i in slots_of_rank[rank]])
    saved = {}
    for case, share_sets in share_set_cases(population).items():
        for mode in ("allgather", "graph", "auto"):
            exchange = BatchExchange(mode, comm, slots_of_rank, lambda helper, *a: helper(comm, *a), PhaseTimer())
            mpi.traffic.take()
            for repeat in range(2):  # the second call reuses the graph
                blocks = exchange(share_sets, local_rows)
            traffic = mpi.traffic.take()
            for member in slots_of_rank[rank]:
                for j in share_sets[member]:
                    saved[f"{case}/{mode}/{member}/{j}"] = blocks[j]
            saved[f"{case}/{mode}/received"] = traffic[:, 2]
    # Share sets that change at every call: the graph is rebuilt each time, more often than MPICH has
    # communicators (2,048) if the old graphs were not freed.
    exchange = BatchExchange("graph", comm, slots_of_rank, lambda helper, *a: helper(comm, *a), PhaseTimer())
    cases = share_set_cases(population)
    changing = [cases["asymmetric"], cases["ring"]]  # both need a graph, a different one on 3 and 4 ranks
    for call in range(REBUILDS):
        share_sets = changing[call % 2]
        blocks = exchange(share_sets, local_rows)
    for member in slots_of_rank[rank]:
        for j in share_sets[member]:
            saved[f"changing/{member}/{j}"] = blocks[j]
    np.savez(f"{out_dir}/rank{rank}.npz", **saved)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
