"""Strong and weak scaling of the mutate phase over MPI ranks.

    python bench/mpi_scaling.py [--ranks 1 2 4 8] [--env Hopper-v5] [--out docs/scaling-mutate]

Strong scaling: a fixed population of 8 (`--algo single`, so every
iteration is pure mutation: sampling, PPO updates and the per-iteration
collectives) on 1, 2, 4, ... ranks; speedup T(1)/T(n) and efficiency
T(1)/(n T(n)). Weak scaling: one member per rank, so the work per rank is
fixed; efficiency T(1)/T(n). T is the median wall time of an iteration,
the first (warm-up) left out. Ranks beyond the machine's cores share them,
so their efficiency measures oversubscription, not MPI; the table says
which rows those are. Writes PREFIX.md, PREFIX.csv and PREFIX.png.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import h5py
import numpy as np

from common import git_commit, pyplot, write_table


def iteration_seconds(n_ranks: int, population: int, env: str, iterations: int, batch_steps: int) -> tuple[float, float]:
    """(median seconds per iteration, share of the run's time inside collectives)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run.h5"
        command = ["mpiexec", "-n", str(n_ranks), "gpo-mpi", "--algo", "single", "--env", env,
                   "--population", str(population), "--batch-steps", str(batch_steps),
                   "--total-steps", str(population * batch_steps * iterations), "--checkpoint-every", "0",
                   "--out", str(out)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with h5py.File(out) as run_file:
            wall = run_file["iterations/wall_time"][:]
            communication = run_file["rounds/time_communication"][:].sum()
            total = sum(run_file[f"rounds/time_{phase}"][:].sum() for phase in ("mutate", "communication"))
    return float(np.median(np.diff(wall))), float(communication / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--population", type=int, default=8, help="fixed population of the strong-scaling runs")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--batch-steps", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("docs/scaling-mutate"))
    args = parser.parse_args()
    cores = os.cpu_count()

    strong = {n: iteration_seconds(n, args.population, args.env, args.iterations, args.batch_steps)
              for n in args.ranks}
    weak = {n: iteration_seconds(n, n, args.env, args.iterations, args.batch_steps) for n in args.ranks}
    base = min(args.ranks)
    rows = []
    for n in args.ranks:
        strong_speedup = strong[base][0] / strong[n][0]
        rows.append([n, "yes" if n > cores else "no", f"{strong[n][0]:.2f}", f"{strong_speedup:.2f}",
                     f"{strong_speedup * base / n:.2f}", f"{100 * strong[n][1]:.1f}%", f"{weak[n][0]:.2f}",
                     f"{weak[base][0] / weak[n][0]:.2f}", f"{100 * weak[n][1]:.1f}%"])
    header = ["ranks", "oversubscribed", f"strong: s/iteration (m={args.population})", "strong: speedup",
              "strong: efficiency", "strong: in collectives", "weak: s/iteration (m=ranks)", "weak: efficiency",
              "weak: in collectives"]
    notes = [f"{args.env}, PPO mutation only (`--algo single`), batch {args.batch_steps} steps per member, median "
             f"of {args.iterations - 1} iterations after the first; machine: {cores} cores, one torch thread per "
             f"rank; commit {git_commit()}; command: `python bench/mpi_scaling.py --ranks "
             f"{' '.join(map(str, args.ranks))}`."]
    print(write_table(args.out, header, rows, notes))

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4))
    axes.plot(args.ranks, [strong[base][0] / strong[n][0] * base / n for n in args.ranks], "o-",
              label=f"strong (population {args.population})")
    axes.plot(args.ranks, [weak[base][0] / weak[n][0] for n in args.ranks], "s-", label="weak (one member per rank)")
    axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    axes.axvline(cores, color="grey", linestyle=":", label=f"{cores} cores")
    axes.set_xscale("log", base=2)
    axes.set_xticks(args.ranks, [str(n) for n in args.ranks])
    axes.set_ylim(0, 1.2)
    axes.set_xlabel("MPI ranks")
    axes.set_ylabel("parallel efficiency of mutate")
    axes.set_title(f"{args.env}: mutate phase over ranks")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
