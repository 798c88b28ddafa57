"""Where a GPO run's wall time goes: Mutate, Select, Crossover and communication, next to the paper's Table 3.

    python bench/breakdown.py [RUN.h5 ...]     # default: the GPO and Joint runs of bench/reproduce.py

For every GPO run file: rank 0's wall time in each phase, summed over the
rounds (communication is the time inside MPI collectives, which the
other phases leave out), as minutes and as shares of the total; and the
wall time of the Joint run of the same task and seed where there is one.
The paper's Table 3 (12-core Xeon, 8M steps, Python multiprocessing):
Mutate 65%, Crossover 16%, Select 19% of about 80 minutes; Joint about 47
minutes on Walker2d. Writes docs/breakdown.md/.csv/.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import git_commit, is_complete, pyplot, summarize, write_table

PHASES = ("mutate", "select", "crossover", "communication")
# Table 3: minutes of Mutate, Crossover and Select for GPO, and Joint's total (Walker2d row).
PAPER_WALKER2D = dict(mutate=51.60, crossover=12.93, select=15.0, joint=47.17)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/breakdown"))
    args = parser.parse_args()
    paths = args.runs or sorted(Path("runs/reproduce").glob("gpo-*.h5"))
    paths = [p for p in paths if is_complete(p)]
    if not paths:
        raise SystemExit("no finished GPO run files: run bench/reproduce.py first or name some")

    rows, shares = [], {}
    for path in paths:
        summary = summarize(path)
        phases = summary["phases"]
        total = sum(phases.values())
        joint_path = path.with_name(path.name.replace("gpo-", "joint-", 1))
        joint = f"{summarize(joint_path)['wall'] / 60:.1f}" if is_complete(joint_path) else ""
        shares[path.stem] = [phases[p] / total for p in PHASES]
        rows.append([path.stem, f"{total / 60:.1f}"]
                    + [f"{phases[p] / 60:.1f} ({100 * phases[p] / total:.0f}%)" for p in PHASES] + [joint])
    paper_total = sum(PAPER_WALKER2D[p] for p in ("mutate", "select", "crossover"))
    rows.append(["paper, Walker2d (Table 3)", f"{paper_total:.1f}"]
                + [f"{PAPER_WALKER2D[p]:.1f} ({100 * PAPER_WALKER2D[p] / paper_total:.0f}%)"
                   for p in ("mutate", "select", "crossover")] + ["(not reported)", f"{PAPER_WALKER2D['joint']:.1f}"])
    header = ["run", "GPO total (min)", "mutate", "select", "crossover", "communication", "Joint total (min)"]
    config = summarize(paths[0])["config"]
    notes = [f"Rank 0's wall time per phase, summed over rounds, in minutes (share of the total). gpo-mpi: "
             f"population {config['population']}, {config['total_steps']:,} steps, {config['rounds']} rounds, on "
             f"{summarize(paths[0])['n_ranks']} ranks of a 2-core machine; the paper: 8M steps, 12 rounds, 12 cores. "
             f"Commit {git_commit()}."]
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
