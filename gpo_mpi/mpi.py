"""Every MPI call of gpo-mpi: no other module imports mpi4py.

Besides the helpers, the one communication pattern built from them that
needs no model: the exchange of member data to the ranks that read it
(`BatchExchange`: data sharing's batches, crossover's parents), and
the count of bytes every call moves (`traffic`).

Helpers take `comm` explicitly and move numpy buffers with mpi4py's
uppercase (buffer) methods; the lowercase pickling methods are kept for
small metadata. Collectives stay visible at the call site: no helper here is
called from logging or other code that might run on only some ranks.
"""
from __future__ import annotations

import os
import pickle
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

__all__ = [
    "MPI",
    "world",
    "abort_on_uncaught_exception",
    "abort_with_message",
    "bcast_flat",
    "allgatherv_rows",
    "neighbor_graph",
    "neighbor_allgatherv_rows",
    "BatchExchange",
    "rank_reads",
    "allreduce_sum",
    "sum_gradients",
    "check_synced",
    "OutOfSync",
    "gather_objects",
    "scatter_objects",
    "bcast_object",
    "first_error",
    "library_version",
    "COLLECTIVE_KINDS",
    "traffic",
]

# What `traffic` counts, in this order wherever the counts are stored. (Nothing is scattered any more: the
# kind stays, at zero, so that run files keep one layout and older ones resume.)
COLLECTIVE_KINDS = ("allgatherv", "scatterv", "allreduce", "bcast", "objects", "neighbor_allgatherv")


class Traffic:
    """Bytes this rank sent to and received from the others, and collective calls made, per kind.

    Counted as payload: what a call hands to other ranks and gets from them, whatever algorithm the MPI
    library uses inside (an `Allgatherv` sends this rank's rows and receives every other rank's; an
    `Allreduce` of n bytes counts n each way; a broadcast n sent by the root and n received by each
    other rank). Pickled objects count their pickled size. With one rank nothing moves, but calls count.
    """

    def __init__(self):
        self.counts = np.zeros((len(COLLECTIVE_KINDS), 3), dtype=np.int64)  # calls, sent, received

    def add(self, comm, kind: str, sent: int, received: int) -> None:
        """Count one collective of `kind` and its bytes (none on a one-rank communicator, where nothing moves)."""
        alone = comm.Get_size() == 1
        self.counts[COLLECTIVE_KINDS.index(kind)] += (1, 0 if alone else sent, 0 if alone else received)

    def take(self) -> np.ndarray:
        """Counts (kinds x [calls, bytes sent, bytes received]) since the last take."""
        counts, self.counts = self.counts, np.zeros_like(self.counts)
        return counts


traffic = Traffic()


def _pickled_size(value) -> int:
    return len(value) if isinstance(value, bytes) else len(pickle.dumps(value))


def world() -> MPI.Comm:
    """The communicator of the whole job (one rank when run without mpiexec)."""
    return MPI.COMM_WORLD


def library_version() -> str:
    """First line of the MPI library's own version string, e.g. 'MPICH Version: 5.0.2'."""
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def abort_on_uncaught_exception(comm: MPI.Comm) -> None:
    """Make an uncaught exception on any rank end the whole job.

    Without this, the failing rank exits while the others wait forever in
    their next collective, and the job hangs until its time limit. The hook
    prints the traceback with the rank in front, then calls Abort, which
    makes the launcher kill every rank.
    """
    rank = comm.Get_rank()

    def hook(exc_type, exc_value, exc_traceback):
        message = "".join(traceback.format_exception(exc_type, exc_value, exc_traceback))
        abort_with_message(comm, f"[gpo-mpi rank {rank}] uncaught exception, aborting the job:\n{message}")

    sys.excepthook = hook


def abort_with_message(comm: MPI.Comm, message: str, code: int = 1) -> None:
    """Print `message` and end every rank of the job.

    The pause lets the launcher forward this rank's output before Abort has
    it kill everything (without it, the message is sometimes lost).
    """
    sys.stderr.write(message if message.endswith("\n") else message + "\n")
    sys.stderr.flush()
    time.sleep(1.0)
    comm.Abort(code)
    os._exit(code)  # where Abort returns before the launcher has ended this process, go no further


def _check_buffer(array: np.ndarray, name: str) -> None:
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise ValueError(f"{name}: needs a C-contiguous numpy array")


def bcast_flat(comm: MPI.Comm, vector: np.ndarray, root: int = 0) -> np.ndarray:
    """Broadcast a flat vector (e.g. policy parameters) from `root`, in place.

    Every rank passes an array of the same length and dtype; on return all
    hold root's values. Returns the array for convenience.
    """
    _check_buffer(vector, "bcast_flat")
    comm.Bcast(vector, root=root)
    is_root = comm.Get_rank() == root
    traffic.add(comm, "bcast", vector.nbytes if is_root else 0, 0 if is_root else vector.nbytes)
    return vector


def allgatherv_rows(comm: MPI.Comm, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every rank's rows along axis 0, in rank order, on every rank.

    Ranks may contribute different numbers of rows (0 included) but must
    agree on the dtype and the shape of one row. Returns the gathered array
    and the number of rows that came from each rank.
    """
    rows = np.ascontiguousarray(rows)
    row_shape = rows.shape[1:]
    row_size = int(np.prod(row_shape, dtype=np.int64))
    local_count = np.array([len(rows)], dtype=np.int64)
    row_counts = np.empty(comm.Get_size(), dtype=np.int64)
    comm.Allgather(local_count, row_counts)

    element_counts = row_counts * row_size
    displacements = np.concatenate(([0], np.cumsum(element_counts)[:-1]))
    gathered = np.empty((int(row_counts.sum()),) + row_shape, dtype=rows.dtype)
    comm.Allgatherv(rows, [gathered, (element_counts, displacements)])
    count_bytes = local_count.nbytes
    traffic.add(comm, "allgatherv", rows.nbytes + count_bytes,
                gathered.nbytes - rows.nbytes + count_bytes * (comm.Get_size() - 1))
    return gathered, row_counts


def neighbor_graph(comm: MPI.Comm, sources: list[int], destinations: list[int]) -> MPI.Distgraphcomm:
    """A distributed-graph communicator over `comm`'s ranks in which this rank receives from `sources`
    and sends to `destinations` (every rank passes its own lists; an edge r -> s must appear in r's
    destinations and in s's sources). Collective over `comm`; not reordered, so ranks keep their numbers."""
    return comm.Create_dist_graph_adjacent(sources, destinations, reorder=False)


def neighbor_allgatherv_rows(graph: MPI.Distgraphcomm, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows to each of its destinations; returns the rows of each of its sources, concatenated
    in the order of `sources` given to neighbor_graph, and the number of rows from each.

    The MPI-3 neighbourhood version of allgatherv_rows: a rank receives only from its sources, so the
    bytes it receives grow with its number of sources, not with the number of ranks."""
    rows = np.ascontiguousarray(rows)
    row_shape = rows.shape[1:]
    row_size = int(np.prod(row_shape, dtype=np.int64))
    n_sources, n_destinations, _ = graph.Get_dist_neighbors_count()
    local_count = np.array([len(rows)], dtype=np.int64)
    row_counts = np.empty(n_sources, dtype=np.int64)
    graph.Neighbor_allgather(local_count, row_counts)

    element_counts = row_counts * row_size
    displacements = np.cumsum(element_counts) - element_counts  # as many as sources, none for none
    gathered = np.empty((int(row_counts.sum()),) + row_shape, dtype=rows.dtype)
    graph.Neighbor_allgatherv(rows, [gathered, (element_counts, displacements)])
    traffic.add(graph, "neighbor_allgatherv", (rows.nbytes + local_count.nbytes) * n_destinations,
                gathered.nbytes + local_count.nbytes * n_sources)
    return gathered, row_counts


def rank_reads(share_sets: list[np.ndarray], slots_of_rank: list[range]) -> np.ndarray:
    """reads[r, s]: whether a member held by rank r reads the batch of a member held by rank s != r."""
    rank_of = np.empty(sum(len(slots) for slots in slots_of_rank), dtype=int)
    for rank, slots in enumerate(slots_of_rank):
        rank_of[list(slots)] = rank
    reads = np.zeros((len(slots_of_rank), len(slots_of_rank)), dtype=bool)
    for member, members_read in enumerate(share_sets):
        reads[rank_of[member], rank_of[members_read]] = True
    np.fill_diagonal(reads, False)
    return reads


class BatchExchange:
    """Member data to the ranks whose members read it: data sharing's batches along the share sets, and
    crossover's parents to the ranks breeding their children.

    `mode` graph: a neighbourhood Allgatherv along the reading graph, so a rank receives only from the
    ranks that hold members its members read (the graph is rebuilt only when that changes); allgather:
    every member's rows to every rank with one Allgatherv; auto: the graph on more than 2 ranks where at
    most half of all rank pairs read each other. Every rank passes the same reading sets, so all take the
    same branch, and every mode gives each member the same rows; only the bytes moved differ.
    """

    def __init__(self, mode: str, comm, slots_of_rank: list[range], call, timer):
        """`call(helper, *args)`: how a gpo_mpi.mpi helper is called on `comm` (timed); `timer`: the
        phase timer that times the graph's own collectives as communication."""
        self.mode, self.comm, self.slots_of_rank, self.call, self.timer = mode, comm, slots_of_rank, call, timer
        self.graph = None  # (the rank_reads it was built for, its communicator, this rank's sources)

    def __call__(self, share_sets: list[np.ndarray], local_rows: np.ndarray) -> dict[int, np.ndarray]:
        """`share_sets[i]`: the members member i reads; `local_rows`: this rank's members' rows, one equal
        block per member in member order. Returns the blocks this rank's members read (their own
        included), by member index."""
        rows, slots = self.received_rows(share_sets, local_rows)
        return dict(zip(slots, np.split(rows, len(slots))))

    def received_rows(self, share_sets: list[np.ndarray], local_rows: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The rows of the ranks this rank's members read from (under Allgatherv, of every rank) and its
        own, concatenated, with the member slots they came from, in order. Blocks may differ in length
        here (then the rows must say whose they are)."""
        reads = rank_reads(share_sets, self.slots_of_rank)
        n_ranks = len(self.slots_of_rank)
        sparse = n_ranks > 2 and reads.sum() <= n_ranks * (n_ranks - 1) // 2  # (on 2 ranks both move the same)
        if self.mode == "allgather" or (self.mode == "auto" and not sparse):
            all_rows, _ = self.call(allgatherv_rows, local_rows)
            return all_rows, [slot for slots in self.slots_of_rank for slot in slots]
        rank = self.comm.Get_rank()
        if self.graph is None or not np.array_equal(self.graph[0], reads):
            if self.graph is not None:  # collective on the old graph, which every rank drops together
                self.graph[1].Free()  # (MPI has a limited number of communicators: share sets may change often)
            sources, destinations = np.flatnonzero(reads[rank]), np.flatnonzero(reads[:, rank])
            self.graph = (reads, self.call(neighbor_graph, sources.tolist(), destinations.tolist()), sources)
        _, graph, sources = self.graph
        with self.timer("communication"):  # on the graph's communicator, so not through `call`
            received, _ = neighbor_allgatherv_rows(graph, local_rows)
        source_slots = [slot for source in sources for slot in self.slots_of_rank[source]]
        return np.concatenate([received, local_rows]), source_slots + list(self.slots_of_rank[rank])


def allreduce_sum(comm: MPI.Comm, values: np.ndarray) -> np.ndarray:
    """Elementwise sum over ranks of a float vector (float32 stays float32,
    anything else becomes float64). Pack several statistics into one buffer
    to pay one collective's latency for all of them."""
    dtype = np.float32 if np.asarray(values).dtype == np.float32 else np.float64
    send = np.ascontiguousarray(values, dtype=dtype)
    total = np.empty_like(send)
    comm.Allreduce(send, total, op=MPI.SUM)
    traffic.add(comm, "allreduce", send.nbytes, send.nbytes)
    return total


def sum_gradients(comm: MPI.Comm, parameters) -> None:
    """Replace each torch parameter's gradient by its sum over ranks, in one
    Allreduce. Data-parallel training divides each rank's loss by the rows
    of the whole minibatch, so the sum is the whole minibatch's gradient and
    every rank takes the same step."""
    flat = np.concatenate([p.grad.numpy().reshape(-1) for p in parameters])
    total = allreduce_sum(comm, flat)
    offset = 0
    for p in parameters:
        size = p.grad.numel()
        p.grad.numpy().reshape(-1)[:] = total[offset:offset + size]
        offset += size


def gather_objects(comm: MPI.Comm, value, root: int = 0) -> list | None:
    """Every rank's picklable value on `root` (None elsewhere). For checkpoints
    only: pickling is slow, and they are rare."""
    gathered = comm.gather(value, root=root)
    received = sum(map(_pickled_size, gathered)) - _pickled_size(value) if gathered is not None else 0
    traffic.add(comm, "objects", 0 if gathered is not None else _pickled_size(value), received)
    return gathered


def scatter_objects(comm: MPI.Comm, values: list | None, root: int = 0):
    """Rank r receives root's values[r] (pickled; checkpoints only)."""
    value = comm.scatter(values, root=root)
    is_root = comm.Get_rank() == root
    sent = sum(map(_pickled_size, values)) - _pickled_size(value) if is_root else 0
    traffic.add(comm, "objects", sent, 0 if is_root else _pickled_size(value))
    return value


def bcast_object(comm: MPI.Comm, value, root: int = 0):
    """Root's picklable value on every rank (small metadata, checkpoints)."""
    value = comm.bcast(value, root=root)
    size, is_root = _pickled_size(value), comm.Get_rank() == root
    traffic.add(comm, "objects", size if is_root else 0, 0 if is_root else size)
    return value


def first_error(comm: MPI.Comm, message: str | None) -> tuple[int, str] | None:
    """Every rank says whether its start-up failed (a one-line message, or None);
    all get the lowest failing rank and its message, or None. Called where each rank
    may fail alone (an environment, a file on a node-local disk), so that no rank
    returns while the others wait for it in a collective."""
    messages = comm.allgather(message)
    traffic.add(comm, "objects", _pickled_size(message), sum(map(_pickled_size, messages)) - _pickled_size(message))
    for rank, rank_message in enumerate(messages):
        if rank_message is not None:
            return rank, rank_message
    return None


class OutOfSync(RuntimeError):
    """Values every rank should hold alike differ between ranks (a bug); raised on every rank at once."""


def check_synced(comm: MPI.Comm, vector: np.ndarray, name: str = "vector") -> None:
    """Raise OutOfSync on every rank if `vector` differs between ranks (a desync bug)."""
    vector = np.ascontiguousarray(vector)
    reference = vector.copy()
    comm.Bcast(reference, root=0)
    # Bitwise: parameters that should be synced are copies, not recomputations.
    differs = np.array([0 if reference.tobytes() == vector.tobytes() else 1], dtype=np.int64)
    ranks_differing = np.empty(1, dtype=np.int64)
    comm.Allreduce(differs, ranks_differing, op=MPI.SUM)
    is_root = comm.Get_rank() == 0
    traffic.add(comm, "bcast", reference.nbytes if is_root else 0, 0 if is_root else reference.nbytes)
    traffic.add(comm, "allreduce", differs.nbytes, differs.nbytes)
    if ranks_differing[0]:
        raise OutOfSync(f"{name} differ from rank 0's on {ranks_differing[0]} rank(s)")
