"""Bytes that data sharing moves per rank and iteration, with the plain and the graph exchange.

    python bench/comm_scaling.py [--ranks 2 4 8 16 32 64] [--out docs/comm-scaling]

One member per rank, as on a cluster. For every rank count m and share-set
size k in 1, 2, 4 and m, every member i reads the batches of i, i+1, ...,
i+k-1 (mod m), each of the size of a Hopper-v5 batch (2,048 steps of 29
float32 values: 237,568 bytes). Each rank hands its batch to
`gpo_mpi.mpi.BatchExchange` (what a GPO run calls every iteration) in both
modes, `allgather` and `graph`, and `gpo_mpi.mpi.traffic` counts the payload
bytes it received. The bytes are exact whatever the machine; the times
are not where the ranks outnumber the cores (the table says so), and are
given only to show the exchange runs. Every member's received blocks are
checked against its share set. A second table, PREFIX-kl, times one
rank's work on the KL matrix at m members. Writes PREFIX.md/.csv and
PREFIX-kl.md/.csv; the network model built on these figures is
docs/SCALING.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BATCH_STEPS, ROW_VALUES = 2048, 29  # Hopper-v5: obs 11 and next obs 11, action 3, log-prob, reward, two flags
REPEATS = 5


def share_sets(m: int, k: int) -> list[np.ndarray]:
    return [np.unique((i + np.arange(k)) % m) for i in range(m)]


def worker() -> None:
    """Under mpiexec: time and count both exchanges for every k; rank 0 prints one JSON line per k."""
    from gpo_mpi import mpi

    comm = mpi.world()
    mpi.abort_on_uncaught_exception(comm)
    rank, m = comm.Get_rank(), comm.Get_size()
    slots = [range(r, r + 1) for r in range(m)]
    batch = np.full((BATCH_STEPS, ROW_VALUES), rank, dtype=np.float32)
    for k in sorted({1, 2, 4, m} & set(range(1, m + 1))):
        sets = share_sets(m, k)
        result = dict(m=m, k=k)
        for mode in ("allgather", "graph"):
            exchange = mpi.BatchExchange(mode, comm, slots, lambda helper, *args: helper(comm, *args),
                                         lambda name: contextlib.nullcontext())
            exchange(sets, batch)  # builds the graph once, as a run does when the share sets change
            mpi.traffic.take()
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(REPEATS):
                blocks = exchange(sets, batch)
            seconds = (time.perf_counter() - start) / REPEATS
            received = mpi.traffic.take()[:, 2].sum() / REPEATS
            assert all(np.all(blocks[j] == j) for j in sets[rank]), "a member got a batch not its share set's"
            per_rank = comm.gather((received, seconds), root=0)
            if rank == 0:
                received_all, seconds_all = np.array(per_rank).T
                result[mode] = dict(received_mean=float(received_all.mean()), received_max=float(received_all.max()),
                                    seconds_max=float(seconds_all.max()))
        if rank == 0:
            print(json.dumps(result), flush=True)


def kl_costs(populations: list[int]) -> list[list]:
    """One rank's KL-matrix work per iteration with one member per rank and kl_states (1,024) from each of
    m members: its policy's forward on all m x 1,024 states, and its own row of the matrix (kl_rows)."""
    import torch

    from gpo_mpi.sharing import kl_rows
    from gpo_mpi.networks import GaussianPolicy

    torch.set_num_threads(1)
    policy = GaussianPolicy(11, 3, (64, 64))  # Hopper-v5's sizes
    rows = []
    for m in populations:
        states = m * 1024
        observations = torch.randn(states, 11)
        means = np.random.default_rng(0).normal(size=(m, states, 3)).astype(np.float32)
        log_stds = np.zeros((m, 3), dtype=np.float32)
        forward, row = [], []
        for _ in range(3):
            start = time.perf_counter()
            with torch.no_grad():
                policy(observations)
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            kl_rows(means, log_stds, [0])
            row.append(time.perf_counter() - start)
        rows.append([m, f"{states:,}", f"{1e3 * min(forward):.1f}", f"{1e3 * min(row):.1f}",
                     f"{1e9 * min(forward) / states:.0f}", f"{1e9 * min(row) / (m * states):.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--out", type=Path, default=Path("docs/comm-scaling"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()

    from common import git_commit, write_table

    cores = os.cpu_count()
    results = []
    for m in args.ranks:
        command = ["mpiexec", "-n", str(m), sys.executable, __file__, "--worker"]
        print("$", " ".join(command), flush=True)
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
        results += [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    def megabytes(n_bytes: float) -> str:
        return f"{n_bytes / 1e6:.3f}"

    header = ["ranks m", "share-set size", "oversubscribed", "allgather: MB received per rank", "graph: MB received per rank",
              "graph / allgather", "allgather: ms", "graph: ms"]
    rows = []
    for r in results:
        plain, graph = r["allgather"], r["graph"]
        rows.append([r["m"], r["k"], "yes" if r["m"] > cores else "no", megabytes(plain["received_mean"]),
                     megabytes(graph["received_mean"]),
                     f"{graph['received_mean'] / plain['received_mean']:.3f}" if plain["received_mean"] else "",
                     f"{1e3 * plain['seconds_max']:.1f}", f"{1e3 * graph['seconds_max']:.1f}"])
    two = {r["m"]: r["graph"]["received_mean"] for r in results if r["k"] == 2}
    flat = ""
    if 8 in two and max(two) >= 16:
        spread = max(abs(value / two[8] - 1) for m, value in two.items() if m >= 8)
        flat = (f"With |S_i| = 2 the graph exchange receives {megabytes(two[8])} MB per rank and iteration at m = 8 "
                f"and within {100 * spread:.1f}% of it up to m = {max(two)}; the plain exchange receives "
                f"(m - 1) batches.")
    notes = [f"One batch = {BATCH_STEPS} x {ROW_VALUES} float32 = {BATCH_STEPS * ROW_VALUES * 4:,} bytes, plus 8 "
             f"bytes of row count per sending rank; bytes are per rank and iteration (mean over ranks; the maximum "
             f"equals it here, the share sets being a ring), times the slowest rank's mean over {REPEATS} "
             f"exchanges. Machine: {cores} cores; commit {git_commit()}; command: `python bench/comm_scaling.py "
             f"--ranks {' '.join(map(str, args.ranks))}`. At share-set size 1 a run exchanges nothing (the "
             f"row shows what each mode would move).", flat]
    print(write_table(args.out, header, rows, [note for note in notes if note]))
    kl_header = ["members m", "KL states (m x 1,024)", "policy forward: ms", "own KL row: ms",
                 "forward: ns per state", "KL row: ns per state and member"]
    kl_notes = [f"One rank's work on the KL matrix per iteration, one member per rank (Hopper-v5 policy, 64-64; "
                f"the C++ KL kernel), best of 3, one thread; machine: {cores} cores, possibly shared with other "
                f"runs; commit {git_commit()}. Both grow with m x 1,024 states; with kl_states_total the states "
                f"are fixed in number."]
    print(write_table(Path(f"{args.out}-kl"), kl_header, kl_costs([8, 16, 32, 64]), kl_notes))


if __name__ == "__main__":
    main()
