"""GPO against Single and Joint on three tasks, and the ablation study: the paper's Table 1 and Figure 5.

    python bench/reproduce.py                   # run what is missing, then write the tables and plots
    python bench/reproduce.py --report-only     # tables and plots from the run files already there
    python bench/reproduce.py --full            # the paper's full budget on Walker2d-v5 (8M steps, 12 rounds)

The paper's round shape at half its budget: population 8 (`--ranks` MPI
ranks, 2 by default), 4M environment steps, 6 rounds of 36 PPO iterations,
the paper's full crossover (5,000 expert steps and 10 DAgger iterations of
500 per child). Four algorithms: GPO with gpo-mpi's defaults, GPO with the
paper's rules read literally (`--preset paper-literal`), Single and Joint.
Each run ends with a deterministic evaluation (10 episodes with the mean
action) of every policy; a run's figure is its best member's (Joint: its
policy's). The ablation study runs every subset of C, S, M on Walker2d-v5
(the paper's Figure 5 task) with seed 0.

Run files go to runs/reproduce/; a study stopped midway goes on where it
stopped (finished runs are read, interrupted ones resume). Writes
docs/reproduce.md/.csv (Table 1), docs/reproduce-curves.png,
docs/reproduce-diagnostics.md (per round: KL between members, |S_i|,
effective sample size, children against parents), docs/ablation.md/.csv and
docs/ablation.png; with --full, docs/reproduce-full.md/.csv.

On a cluster: `jobs/compare.sbatch` and `jobs/ablation.sbatch` (8 ranks per run).

With many seeds and the field's statistics (IQM, bootstrap intervals, the
probability of improvement), the same table is `bench/plans/table1.toml`:
`python bench/study.py bench/plans/table1.toml`, then
`gpo-mpi compare bench/results/table1`.
"""
from __future__ import annotations

import argparse
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np

from common import (command_line, ensure_run, git_commit, held_out_return, is_complete, mean_and_error, pyplot,
                    summarize, write_table)

RUNS = Path("runs/reproduce")
# Table 1 of the paper (PPO, 8M steps, mean of 8 seeds): GPO, Single, Joint.
PAPER_TABLE_1 = {"Hopper-v5": (903.16, 457.1, 922.5), "Walker2d-v5": (1464.6, 540.93, 809.8),
                 "HalfCheetah-v5": (2100.54, 1523.52, 1766.11)}
# Figure 5 of the paper, averaged over Ant and Walker2d, normalized to GPO.
PAPER_FIGURE_5 = {"single": 0.33, "C": 0.47, "S": 0.47, "CS": 0.5, "M": 0.83, "SM": 0.86, "CM": 0.9, "CSM": 1.0}
ALGOS = {"gpo": "--algo gpo", "gpo-literal": "--algo gpo --preset paper-literal", "single": "--algo single",
         "joint": "--algo joint"}
LABELS = {"gpo": "GPO", "gpo-literal": "GPO paper-literal", "single": "Single", "joint": "Joint"}


def run_arguments(args, env: str, seed: int, algo: str, components: str = "CSM") -> str:
    common = f"--env {env} --population 8 --total-steps {args.total_steps} --seed {seed} {ALGOS[algo]}"
    if not algo.startswith("gpo"):
        return common
    return f"{common} --rounds {args.rounds} --components '{components}'"


def subsets() -> list[str]:
    return ["".join(chosen) for size in range(4) for chosen in combinations("CSM", size)]


def label(components: str) -> str:
    return "GPO" if components == "CSM" else "Base" + "".join(f"+{c}" for c in components)


def table_1(args, summaries: dict, prefix: Path) -> str:
    header = (["task"] + [f"{LABELS[algo]}" for algo in ALGOS] + ["GPO / Single", "GPO / Joint"]
              + [f"{LABELS[algo]}: members' mean" for algo in ALGOS]
              + [f"{LABELS[algo]}: training" for algo in ALGOS] + ["paper: GPO / Single", "paper: GPO / Joint"])
    rows = []
    for env in args.envs:
        evals = {algo: [held_out_return(s["path"]) for s in summaries[env, algo]] for algo in ALGOS}
        member_means = {algo: [s["eval_mean"] for s in summaries[env, algo]] for algo in ALGOS}
        trains = {algo: [float(s["final"]) for s in summaries[env, algo]] for algo in ALGOS}
        by_seed = {algo: {s["config"]["seed"]: value for s, value in zip(summaries[env, algo], evals[algo])}
                   for algo in ALGOS}
        ratio = {}
        for peer in ("single", "joint"):  # over the seeds both have
            seeds = sorted(set(by_seed["gpo"]) & set(by_seed[peer]))
            gpo, other = (np.mean([by_seed[algo][k] for k in seeds]) if seeds else np.nan for algo in ("gpo", peer))
            ratio[peer] = f"{gpo / other:.2f}" if seeds else "pending"
        paper = PAPER_TABLE_1.get(env)
        rows.append([env] + [mean_and_error(evals[algo]) for algo in ALGOS] + [ratio["single"], ratio["joint"]]
                    + [mean_and_error(member_means[algo]) for algo in ALGOS]
                    + [mean_and_error(trains[algo]) for algo in ALGOS]
                    + ([f"{paper[0] / paper[1]:.2f}", f"{paper[0] / paper[2]:.2f}"] if paper else ["", ""]))
    notes = [f"First columns: the run's best member (chosen by its final evaluation, 10 episodes with the mean "
             f"action; Joint: its one policy) evaluated again on 10 held-out episodes with the mean action, so "
             f"that picking the best of 8 does not flatter GPO and Single; the ratios use the seeds both runs have. "
             f"members' mean: the final evaluation "
             f"averaged over all members. training: the best member's mean return over its last 10 training "
             f"episodes. Mean ± standard error over seeds {args.seeds}. Budget {args.total_steps:,} "
             f"environment steps per run, population 8, on {args.ranks} ranks of a 2-core machine; GPO with "
             f"{args.rounds} rounds and the paper's full crossover. Commit {git_commit()}."]
    for algo in ALGOS:
        done = summaries[args.envs[0], algo]
        if done:
            notes.append(f"{LABELS[algo]}: `{command_line(done[0]['config'], done[0]['n_ranks'])}`")
    commits = sorted({s["source_commit"] for runs in summaries.values() for s in runs})
    notes.append(f"Source commits recorded in the run files: {', '.join(commits) or 'none yet'} ('unrecorded': "
                 f"made before run files recorded it; see docs/RESULTS.md).")
    notes.append("Paper ratios from its Table 1 (rllab tasks, 8M steps, 8 seeds): compare orderings and ratios, "
                 "not raw returns (gymnasium v5 rewards and horizons differ).")
    return write_table(prefix, header, rows, notes)


def round_diagnostics(summary: dict) -> list[list]:
    """Per round of one GPO run: median KL between members at its start, mean |S_i| and effective sample
    size over its iterations, and its children (bred at its end) against their fitter parents."""
    diagnostics, batch = summary["diagnostics"], summary["config"]["batch_steps"]
    rows = []
    for round_index, kl in enumerate(diagnostics["rounds/kl_matrix"]):
        in_round = diagnostics["iterations/round"] == round_index
        row = [round_index + 1, f"{np.median(kl[~np.eye(len(kl), dtype=bool)]):.3g}",
               f"{diagnostics['iterations/share_set_size'][in_round].mean():.2f}",
               f"{diagnostics['iterations/effective_sample_size'][in_round].mean() / batch:.2f}"]
        if round_index < len(diagnostics["breeding/child_return"]):
            children = diagnostics["breeding/child_return"][round_index]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fitter = np.nanmax(diagnostics["breeding/parent_returns"][round_index], axis=1)
            compared = np.isfinite(children) & np.isfinite(fitter)
            row += [f"{int((children[compared] >= fitter[compared]).sum())} of {int(compared.sum())}",
                    f"{children[compared].mean():.0f} / {fitter[compared].mean():.0f}" if compared.any() else "n/a"]
        else:
            row += ["", ""]
        rows.append(row)
    return rows


def diagnostics_table(args, summaries: dict) -> str:
    header = ["run", "round", "median KL at start", "mean |S_i|", "ESS / batch", "children >= fitter parent",
              "children / fitter parents (mean return)"]
    rows = []
    for env in args.envs:
        for algo in ("gpo", "gpo-literal"):
            for summary in summaries[env, algo]:
                name = summary["path"].stem
                rows += [[name] + row for row in round_diagnostics(summary)]
    notes = ["Per round of each GPO run: the median KL[pi_i || pi_j] between members at the round's start, the "
             "mean over the round's iterations and members of |S_i| (itself included) and of the effective sample "
             "size of the data each member learned from (in batches of 2,048), and the children bred at the "
             "round's end: their mean return over their first 4 training episodes against the fitter parent's "
             "last 10 training episodes. Commit " + git_commit() + "."]
    return write_table(Path("docs/reproduce-diagnostics"), header, rows, notes)


def ablation_table(args, ablation_finals: dict) -> str:
    gpo = np.mean(ablation_finals["CSM"]) if ablation_finals.get("CSM") else np.nan
    header = ["variant", "best member, held-out evaluation", "normalized to GPO", "paper (Ant and Walker2d)"]
    rows = []
    for key in ["single"] + sorted(subsets(), key=lambda c: (len(c), c)):
        values = ablation_finals.get(key, [])
        rows.append(["Single" if key == "single" else label(key), mean_and_error(values),
                     f"{np.mean(values) / gpo:.2f}" if values else "pending",
                     PAPER_FIGURE_5.get(key, "")])
    notes = [f"{args.ablation_env}, seed 0, the budget and settings of the GPO runs above (gpo-mpi's defaults "
             "otherwise); C: state-space crossover (off: copy the fitter parent), S: fitness selection (off: random "
             "couples), M: data sharing. The paper gives no Base value. Commit " + git_commit() + "."]
    return write_table(Path("docs/ablation"), header, rows, notes)


def plot_curves(args, summaries: dict, path: str) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(args.envs), figsize=(5 * len(args.envs), 4), squeeze=False)
    for ax, env in zip(axes[0], args.envs):
        for algo in ALGOS:
            curves = summaries.get((env, algo), [])
            if not curves:
                continue
            grid = np.linspace(0, args.total_steps, 100)
            # Iterations right after a breeding, before any child finished an episode, have no return: skip them.
            interpolated = np.array([np.interp(grid, s["steps"][np.isfinite(s["best_curve"])],
                                               s["best_curve"][np.isfinite(s["best_curve"])]) for s in curves])
            ax.plot(grid, interpolated.mean(0), label=f"{LABELS[algo]} (n={len(curves)})")
            if len(curves) > 1:
                error = interpolated.std(0, ddof=1) / np.sqrt(len(curves))
                ax.fill_between(grid, interpolated.mean(0) - error, interpolated.mean(0) + error, alpha=0.2)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("best member's return (last 10 training episodes)")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


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


def collect(args, prefix: str) -> dict:
    summaries = {}
    for env in args.envs:
        for algo in ALGOS:
            paths = [RUNS / f"{prefix}{algo}-{env}-s{seed}.h5" for seed in args.seeds]
            summaries[env, algo] = [summarize(path) for path in paths if is_complete(path)]
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(PAPER_TABLE_1))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--total-steps", type=int, default=4_000_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--ablation-env", default="Walker2d-v5")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--full", action="store_true",
                        help="the paper's full budget instead: 8M steps, 12 rounds, Walker2d-v5, no ablation")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the run files there")
    args = parser.parse_args()
    prefix = ""
    if args.full:
        args.total_steps, args.rounds, args.envs, args.skip_ablation, prefix = 8_000_000, 12, ["Walker2d-v5"], True, \
            "full-"

    planned = [(f"{prefix}{algo}-{env}-s{seed}", run_arguments(args, env, seed, algo))
               for seed in args.seeds for env in args.envs for algo in ALGOS
               if not (args.full and algo == "gpo-literal")]
    if not args.skip_ablation:
        planned += [(f"ablation-{components or 'base'}-{args.ablation_env}-s0",
                     run_arguments(args, args.ablation_env, 0, "gpo", components))
                    for components in subsets() if components != "CSM"]
    for name, arguments in planned:
        if not args.report_only:
            ensure_run(name, args.ranks, arguments, RUNS)

    summaries = collect(args, prefix)
    print(table_1(args, summaries, Path("docs/reproduce-full" if args.full else "docs/reproduce")))
    plot_curves(args, summaries, "docs/reproduce-full-curves.png" if args.full else "docs/reproduce-curves.png")
    if args.full:
        return
    print(diagnostics_table(args, summaries))

    ablation_finals = {}
    for components in subsets():
        path = (RUNS / f"gpo-{args.ablation_env}-s0.h5" if components == "CSM"
                else RUNS / f"ablation-{components or 'base'}-{args.ablation_env}-s0.h5")
        if is_complete(path):
            ablation_finals[components] = [held_out_return(path)]
    single = RUNS / f"single-{args.ablation_env}-s0.h5"
    if is_complete(single):
        ablation_finals["single"] = [held_out_return(single)]
    print(ablation_table(args, ablation_finals))
    plot_ablation(ablation_finals)


if __name__ == "__main__":
    main()
