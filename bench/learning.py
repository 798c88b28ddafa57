"""Learning curves: run the mutation engine's reference runs, then summarize and plot.

    python bench/learning.py --run [--total-steps 1000000] [--seed 0]
    python bench/learning.py RUN.h5 [RUN.h5 ...]      # summarize existing run files only

With --run it starts, one after the other, the mutation engine's two runs:
    mpiexec -n 2 gpo-mpi --algo single --population 2 --env Hopper-v5 --total-steps N
    mpiexec -n 1 gpo-mpi --algo joint --population 1 --env Hopper-v5 --total-steps N
or with --compare M the GPO, Single and Joint runs with population M on M
ranks (plus any `--extra NAME RANKS 'ARGS'` runs), writing run files to runs/. Then,
for every run file, it prints a markdown table (best and final mean
training-episode return of the best member, wall time) and draws the
curves of every member against environment steps into one PNG.
Needs matplotlib (the `bench` extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import command_line, ensure_run, pyplot, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run files to summarize")
    parser.add_argument("--run", action="store_true", help="first make the reference runs")
    parser.add_argument("--total-steps", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--compare", type=int, metavar="M",
                        help="instead of the two mutation-engine runs: GPO, Single and Joint with population M "
                             "on M ranks, the same budget and seed")
    parser.add_argument("--rounds", type=int, default=12, help="GPO rounds for --compare")
    parser.add_argument("--extra", nargs=3, action="append", default=[], metavar=("NAME", "RANKS", "ARGS"),
                        help="one more run: its name, rank count and gpo-mpi arguments")
    parser.add_argument("--out", type=Path, default=Path("docs/learning-hopper"),
                        help="output prefix: writes PREFIX.md and PREFIX.png")
    args = parser.parse_args()

    runs = list(args.runs)
    if args.run:
        common = f"--env {args.env} --total-steps {args.total_steps} --seed {args.seed}"
        if args.compare:
            m = args.compare
            planned = [(f"gpo-m{m}", m, f"--algo gpo --population {m} --rounds {args.rounds} {common}"),
                       (f"single-m{m}", m, f"--algo single --population {m} {common}"),
                       (f"joint-m{m}", m, f"--algo joint --population {m} {common}")]
        else:
            planned = [("single", 2, f"--algo single --population 2 {common}"),
                       ("joint", 1, f"--algo joint --population 1 {common}")]
        planned += [(name, int(ranks), f"{extra} {common}") for name, ranks, extra in args.extra]
        runs += [ensure_run(name, n_ranks, arguments) for name, n_ranks, arguments in planned]
    if not runs:
        sys.exit("nothing to summarize: give run files or --run")

    summaries = [summarize(path) for path in runs]
    lines = ["| run | command | env steps | best return | final return | wall time |", "|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['path'].stem} | `{command_line(s['config'], s['n_ranks'])}` | {s['steps'][-1]:,} | "
                     f"{s['best']:.0f} | {s['final']:.0f} | {s['wall'] / 60:.1f} min |")
    lines += ["", "Returns: mean undiscounted return of a member's last 10 training episodes; "
              "best and final of the best member."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    from gpo_mpi.plot import learning_curves

    figure = learning_curves([str(path) for path in runs])
    figure.savefig(args.out.with_suffix(".png"), dpi=110)
    pyplot().close(figure)


if __name__ == "__main__":
    main()
