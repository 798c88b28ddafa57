"""Scaling GPO over population size: the paper's Figure 7 (equal per-member batch) and Figure 10 (equal total steps).

    python bench/population.py --study per-member [--populations 2 4 8 16 32] [--per-member-steps 150000]
    python bench/population.py --study total [--populations 2 4 8 16 32] [--total-steps 1200000]
    python bench/population.py --study per-member --seeds 0      # one seed only
    python bench/population.py --study per-member --report-only

per-member (Figure 7): every population uses batch 2048 per member and the
same number of gradient steps, so the total budget is m x per-member steps
and grows with m. total (Figure 10): every population gets the same total
budget, and the batch of each gradient step shrinks in proportion to m
(2048 x 8 / m: 8,192 for m = 2, 512 for m = 32).

All runs: Walker2d-v5 (the paper's task for both figures), `--seeds` (0 and 1), `--rounds`
rounds (3), crossover scaled down to 2,000 expert steps and 5 DAgger
iterations of 400 steps per child (the paper's 5,000 and 10 x 500 would
take most of these small budgets), on `--ranks` MPI ranks (2: this
machine's cores; every population here is a multiple of it). Run files go
to runs/population/ and a stopped study goes on where it stopped. Writes
docs/population-STUDY.md/.csv/.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import command_line, ensure_run, git_commit, is_complete, mean_and_error, pyplot, summarize, write_table

RUNS = Path("runs/population")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["per-member", "total"], required=True)
    parser.add_argument("--populations", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--per-member-steps", type=int, default=150_000)
    parser.add_argument("--total-steps", type=int, default=1_200_000)
    parser.add_argument("--env", default="Walker2d-v5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    runs: dict[int, list[dict]] = {}  # population -> one summary per finished seed
    for m in args.populations:
        if args.study == "per-member":
            budget, batch = m * args.per_member_steps, 2048
        else:
            budget, batch = args.total_steps, 2048 * 8 // m
        for seed in args.seeds:
            arguments = (f"--env {args.env} --population {m} --batch-steps {batch} --total-steps {budget} "
                         f"--rounds {args.rounds} --expert-steps 2000 --dagger-iterations 5 --dagger-steps 400 "
                         f"--seed {seed}")
            name = f"{args.study}-m{m}-{args.env}-s{seed}"
            if not args.report_only:
                ensure_run(name, args.ranks, arguments, RUNS)
            if is_complete(RUNS / f"{name}.h5"):
                runs.setdefault(m, []).append(summarize(RUNS / f"{name}.h5"))

    header = ["population", "batch per member", "total steps", "best return", "final: best member",
              "final: mean member", "wall time"]
    rows = [[m, seeds[0]["config"]["batch_steps"], f"{seeds[0]['steps'][-1]:,}",
             mean_and_error([s["best"] for s in seeds]), mean_and_error([s["final"] for s in seeds]),
             mean_and_error([s["final_mean"] for s in seeds]),
             f"{np.mean([s['wall'] for s in seeds]) / 60:.1f} min"] for m, seeds in sorted(runs.items())]
    pending = [m for m in args.populations if len(runs.get(m, [])) < len(args.seeds)]
    notes = [f"{args.env}, seeds {args.seeds}, one run per population and seed on {args.ranks} ranks of a 2-core "
             f"machine; returns as mean ± standard error over seeds; best return: the best member's highest "
             f"mean of 10 training episodes during the run; final: the same at the end, for the best member "
             f"and averaged over members; wall time: mean over seeds. Commit {git_commit()}; command "
             f"`python bench/population.py --study {args.study} --seeds {' '.join(map(str, args.seeds))}`."]
    if runs:
        first = runs[min(runs)][0]
        notes.append(f"Command of the smallest population: `{command_line(first['config'], first['n_ranks'])}`.")
    if pending:
        notes.append(f"Not all seeds run yet: populations {pending}.")
    print(write_table(Path(f"docs/population-{args.study}"), header, rows, notes))

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for m, seeds in sorted(runs.items()):
        steps = seeds[0]["steps"] / m if args.study == "per-member" else seeds[0]["steps"]
        curves = np.array([np.nan_to_num(s["best_curve"]) for s in seeds])  # same config: same iteration steps
        axes.plot(steps, curves.mean(0), label=f"population {m} (n={len(seeds)})")
        if len(seeds) > 1:
            error = curves.std(0, ddof=1) / np.sqrt(len(seeds))
            axes.fill_between(steps, curves.mean(0) - error, curves.mean(0) + error, alpha=0.2)
    axes.set_xlabel("environment steps per member" if args.study == "per-member" else "environment steps (total)")
    axes.set_ylabel("best member's return (last 10 episodes)")
    axes.set_title(f"{args.env}: " + ("equal batch per member (Figure 7)" if args.study == "per-member"
                                      else "equal total steps (Figure 10)") + ", mean over seeds")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(f"docs/population-{args.study}.png", dpi=110)


if __name__ == "__main__":
    main()
