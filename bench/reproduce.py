"""GPO against Single and Joint on three tasks, and the ablation study: the paper's Table 1 and Figure 5, small.

    python bench/reproduce.py                   # run what is missing, then write the tables and plots
    python bench/reproduce.py --report-only     # tables and plots from the run files already there

Every run has population 8 (`--ranks` MPI ranks, 2 by default) and the same
budget (`--total-steps`, 1M by default: an eighth of the paper's 8M, which
is what this 2-core machine affords). GPO runs `--rounds` rounds (4) with
crossover shrunk so that it takes the same share of the budget as in the
paper (11%): 2,500 expert steps and 5 DAgger iterations of 400 steps per
child, instead of 5,000 and 10 x 500 with 12 rounds. Single and Joint get
the same budget. The ablation study runs every subset of C, S, M on one
task (Walker2d-v5, as the paper's Figure 5) with seed 0.

Run files go to runs/reproduce/; a study stopped midway goes on where it
stopped (finished runs are read, interrupted ones resume). Writes
docs/reproduce.md/.csv (Table 1), docs/reproduce-curves.png,
docs/ablation.md/.csv and docs/ablation.png.

The paper's full budget on a cluster: `jobs/compare.sbatch` and
`jobs/ablation.sbatch` with the defaults (population 8, 8M steps, 12 rounds).
"""
from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np

from common import (command_line, ensure_run, git_commit, is_complete, mean_and_error, pyplot, summarize,
                    write_table)

RUNS = Path("runs/reproduce")
# Table 1 of the paper (PPO, 8M steps, mean of 8 seeds): GPO, Single, Joint.
PAPER_TABLE_1 = {"Hopper-v5": (903.16, 457.1, 922.5), "Walker2d-v5": (1464.6, 540.93, 809.8),
                 "HalfCheetah-v5": (2100.54, 1523.52, 1766.11)}
# Figure 5 of the paper, averaged over Ant and Walker2d, normalized to GPO.
PAPER_FIGURE_5 = {"single": 0.33, "C": 0.47, "S": 0.47, "CS": 0.5, "M": 0.83, "SM": 0.86, "CM": 0.9, "CSM": 1.0}
ALGOS = ("gpo", "single", "joint")


def run_arguments(args, env: str, seed: int, algo: str, components: str = "CSM") -> str:
    common = f"--env {env} --population 8 --total-steps {args.total_steps} --seed {seed} --algo {algo}"
    if algo != "gpo":
        return common
    return (f"{common} --rounds {args.rounds} --expert-steps 2500 --dagger-iterations 5 --dagger-steps 400 "
            f"--components '{components}'")


def subsets() -> list[str]:
    return ["".join(chosen) for size in range(4) for chosen in combinations("CSM", size)]


def label(components: str) -> str:
    return "GPO" if components == "CSM" else "Base" + "".join(f"+{c}" for c in components)


def table_1(args, finals: dict) -> str:
    header = ["task", "GPO", "Single", "Joint", "GPO / Single", "GPO / Joint", "paper: GPO / Single",
              "paper: GPO / Joint"]
    rows = []
    for env in args.envs:
        means = {algo: np.mean(finals[env, algo]) if finals[env, algo] else np.nan for algo in ALGOS}
        paper = PAPER_TABLE_1.get(env)
        rows.append([env] + [mean_and_error(finals[env, algo]) for algo in ALGOS]
                    + [f"{means['gpo'] / means[peer]:.2f}" for peer in ("single", "joint")]
                    + ([f"{paper[0] / paper[1]:.2f}", f"{paper[0] / paper[2]:.2f}"] if paper else ["", ""]))
    notes = [f"Final performance: the best member's mean return over its last 10 training episodes at the end of "
             f"the run (Joint: its one policy), mean ± standard error over seeds {args.seeds}. Budget "
             f"{args.total_steps:,} environment steps per run, population 8, on {args.ranks} ranks of a 2-core "
             f"machine; GPO with {args.rounds} rounds and crossover scaled to 11% of the budget (see "
             f"bench/reproduce.py). Commit {git_commit()}; command `python bench/reproduce.py`."]
    for algo in ALGOS:
        if finals[args.envs[0], algo]:
            example = summarize(RUNS / f"{algo}-{args.envs[0]}-s{args.seeds[0]}.h5")
            notes.append(f"{algo}: `{command_line(example['config'], example['n_ranks'])}`")
    notes.append("Paper ratios from its Table 1 (rllab tasks, 8M steps, 8 seeds): compare orderings and ratios, "
                 "not raw returns (gymnasium v5 rewards and horizons differ).")
    return write_table(Path("docs/reproduce"), header, rows, notes)


def ablation_table(args, ablation_finals: dict) -> str:
    gpo = np.mean(ablation_finals["CSM"]) if ablation_finals.get("CSM") else np.nan
    header = ["variant", "final return", "normalized to GPO", "paper (Ant and Walker2d)"]
    rows = []
    for key in ["single"] + sorted(subsets(), key=lambda c: (len(c), c)):
        values = ablation_finals.get(key, [])
        rows.append(["Single" if key == "single" else label(key), mean_and_error(values),
                     f"{np.mean(values) / gpo:.2f}" if values else "pending",
                     PAPER_FIGURE_5.get(key, "")])
    notes = [f"{args.ablation_env}, seed 0, the budget and settings of the GPO runs above; C: state-space "
             "crossover (off: copy the fitter parent), S: fitness selection (off: random couples), M: data "
             "sharing. The paper gives no Base value. Commit " + git_commit() + "."]
    return write_table(Path("docs/ablation"), header, rows, notes)


def plot_curves(args, summaries: dict) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(args.envs), figsize=(5 * len(args.envs), 4), squeeze=False)
    for ax, env in zip(axes[0], args.envs):
        for algo in ALGOS:
            curves = [s for s in summaries.get((env, algo), [])]
            if not curves:
                continue
            grid = np.linspace(0, args.total_steps, 100)
            interpolated = np.array([np.interp(grid, s["steps"], np.nan_to_num(s["best_curve"]))
                                     for s in curves])
            ax.plot(grid, interpolated.mean(0), label=f"{algo} (n={len(curves)})")
            if len(curves) > 1:
                error = interpolated.std(0, ddof=1) / np.sqrt(len(curves))
                ax.fill_between(grid, interpolated.mean(0) - error, interpolated.mean(0) + error, alpha=0.2)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("best member's return (last 10 episodes)")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig("docs/reproduce-curves.png", dpi=110)


def plot_ablation(ablation_finals: dict) -> None:
    gpo = np.mean(ablation_finals["CSM"]) if ablation_finals.get("CSM") else None
    if not gpo:
        return
    keys = [k for k in ["single"] + sorted(subsets(), key=lambda c: (len(c), c)) if ablation_finals.get(k)]
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    positions = np.arange(len(keys))
    axes.bar(positions - 0.2, [np.mean(ablation_finals[k]) / gpo for k in keys], width=0.4, label="gpo-mpi")
    axes.bar(positions + 0.2, [PAPER_FIGURE_5.get(k, np.nan) for k in keys], width=0.4, label="paper")
    axes.set_xticks(positions, ["Single" if k == "single" else label(k) for k in keys], rotation=20)
    axes.set_ylabel("final return / GPO's")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig("docs/ablation.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(PAPER_TABLE_1))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--total-steps", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--ablation-env", default="Walker2d-v5")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the run files there")
    args = parser.parse_args()

    planned = [(f"{algo}-{env}-s{seed}", run_arguments(args, env, seed, algo))
               for seed in args.seeds for env in args.envs for algo in ALGOS]
    if not args.skip_ablation:
        planned += [(f"ablation-{components or 'base'}-{args.ablation_env}-s0",
                     run_arguments(args, args.ablation_env, 0, "gpo", components))
                    for components in subsets() if components != "CSM"]
    for name, arguments in planned:
        if not args.report_only:
            ensure_run(name, args.ranks, arguments, RUNS)

    summaries, finals = {}, {}
    for env in args.envs:
        for algo in ALGOS:
            done = [summarize(RUNS / f"{algo}-{env}-s{seed}.h5") for seed in args.seeds
                    if is_complete(RUNS / f"{algo}-{env}-s{seed}.h5")]
            summaries[env, algo] = done
            finals[env, algo] = [float(s["final"]) for s in done]
    print(table_1(args, finals))
    plot_curves(args, summaries)

    ablation_finals = {}
    for components in subsets():
        path = (RUNS / f"gpo-{args.ablation_env}-s0.h5" if components == "CSM"
                else RUNS / f"ablation-{components or 'base'}-{args.ablation_env}-s0.h5")
        if is_complete(path):
            ablation_finals[components] = [float(summarize(path)["final"])]
    single = RUNS / f"single-{args.ablation_env}-s0.h5"
    if is_complete(single):
        ablation_finals["single"] = [float(summarize(single)["final"])]
    print(ablation_table(args, ablation_finals))
    plot_ablation(ablation_finals)


if __name__ == "__main__":
    main()
