"""Where a GPO run's wall time goes (Mutate, Select, Crossover, communication), and what GPO costs
against Single on the same budget, next to the paper's Table 3.

    python bench/breakdown.py                   # run what is missing, then write the table
    python bench/breakdown.py --report-only     # the table from the runs (or summaries) already there

One GPO and one Single run per task at the paper's round shape with half
its budget (population 8 on `--ranks` 2 ranks, 4M steps, 6 rounds, seed 0),
made at the current commit into runs/breakdown/. For each: rank 0's wall
time in each phase summed over the rounds (communication is the time inside
MPI collectives, which the other phases leave out), as minutes and shares
of GPO's total, and the ratio of GPO's total wall time to Single's. The
same figures for the runs of bench/reproduce.py (runs/reproduce/, the
baseline: their commits are named) sit in the same table. Targets: crossover
at most 12% of GPO's wall time, GPO at most 1.3 x Single. The paper's Table
3 (12-core Xeon, 8M steps, Python multiprocessing): Mutate 65%, Crossover
16%, Select 19% of about 80 minutes on Walker2d. Writes
docs/breakdown.md/.csv/.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import ensure_run, git_commit, is_complete, pyplot, summarize, write_table

PHASES = ("mutate", "select", "crossover", "communication")
# Table 3: minutes of Mutate, Crossover and Select for GPO, and Joint's total (Walker2d row).
PAPER_WALKER2D = dict(mutate=51.60, crossover=12.93, select=15.0, joint=47.17)
TARGETS = dict(crossover_share=0.12, gpo_over_single=1.3)
BASELINE = Path("runs/reproduce")


def arguments(env: str, algo: str, total_steps: int, rounds: int) -> str:
    shape = f"--env {env} --population 8 --total-steps {total_steps} --seed 0 --algo {algo}"
    return f"{shape} --rounds {rounds}" if algo == "gpo" else shape


def row(label: str, gpo: dict, single: dict | None) -> tuple[list, list[float]]:
    phases = gpo["phases"]
    total = sum(phases.values())
    shares = [phases[p] / total for p in PHASES]
    ratio = f"{total / sum(single['phases'].values()):.2f}" if single else ""
    single_minutes = f"{sum(single['phases'].values()) / 60:.1f}" if single else ""
    return ([label, gpo["source_commit"], f"{total / 60:.1f}"]
            + [f"{phases[p] / 60:.1f} ({100 * share:.0f}%)" for p, share in zip(PHASES, shares)]
            + [single_minutes, ratio]), shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "Walker2d-v5"])
    parser.add_argument("--total-steps", type=int, default=4_000_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("runs/breakdown"))
    parser.add_argument("--out", type=Path, default=Path("docs/breakdown"))
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the runs there")
    args = parser.parse_args()

    if not args.report_only:
        for env in args.envs:
            for algo in ("single", "gpo"):  # each task's pair back to back, so both see the same machine
                ensure_run(f"{algo}-{env}-s0", args.ranks, arguments(env, algo, args.total_steps, args.rounds),
                           args.runs)

    rows, shares = [], {}
    for env in args.envs:
        for label, runs in ((f"{env}, now", args.runs), (f"{env}, baseline", BASELINE)):
            gpo, single = runs / f"gpo-{env}-s0.h5", runs / f"single-{env}-s0.h5"
            if not is_complete(gpo):
                continue
            table_row, shares[label] = row(label, summarize(gpo), summarize(single) if is_complete(single) else None)
            rows.append(table_row)
    if not rows:
        raise SystemExit("no finished GPO runs: run bench/breakdown.py without --report-only")
    paper_total = sum(PAPER_WALKER2D[p] for p in ("mutate", "select", "crossover"))
    rows.append(["paper, Walker2d (Table 3)", "", f"{paper_total:.1f}"]
                + [f"{PAPER_WALKER2D[p]:.1f} ({100 * PAPER_WALKER2D[p] / paper_total:.0f}%)"
                   for p in ("mutate", "select", "crossover")] + ["(not reported)", "", ""])
    header = ["run", "commit", "GPO total (min)", "mutate", "select", "crossover", "communication",
              "Single total (min)", "GPO / Single"]
    notes = [f"Rank 0's wall time per phase, summed over rounds, in minutes (share of GPO's total). gpo-mpi: "
             f"population 8, {args.total_steps:,} steps, {args.rounds} rounds, seed 0, on {args.ranks} ranks of a "
             f"2-core machine, GPO and Single of a task run back to back; the baseline is bench/reproduce.py's runs "
             f"of seed 0 at their commits. Targets: crossover at most {TARGETS['crossover_share']:.0%} of GPO's "
             f"wall time, GPO at most {TARGETS['gpo_over_single']} x Single. The paper: 8M steps, 12 rounds, "
             f"12 cores; its Joint took {PAPER_WALKER2D['joint']} minutes. Table written at commit {git_commit()}."]
    print(write_table(args.out, header, rows, notes))

    plt = pyplot()
    labels = list(shares) + ["paper (Walker2d)"]
    values = np.array(list(shares.values()) + [[PAPER_WALKER2D["mutate"] / paper_total, PAPER_WALKER2D["select"] /
                                                paper_total, PAPER_WALKER2D["crossover"] / paper_total, 0.0]])
    figure, axes = plt.subplots(figsize=(8, 0.6 * len(labels) + 1.5))
    left = np.zeros(len(labels))
    for index, phase in enumerate(PHASES):
        axes.barh(labels, values[:, index], left=left, label=phase)
        left += values[:, index]
    axes.set_xlabel("share of GPO's wall time")
    axes.legend(ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
