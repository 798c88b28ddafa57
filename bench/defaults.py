"""How gpo-mpi's GPO defaults were chosen: candidate settings against Single and Joint, one task.

    python bench/defaults.py                  # run what is missing, then write the table
    python bench/defaults.py --report-only

Each candidate is a full GPO run at the shape of bench/reproduce.py (population
8 on 2 ranks, 4M steps, 6 rounds, the paper's full crossover) on Walker2d-v5,
with every field that the choice is about spelled out, so a later change of
the defaults does not change what a candidate means. Single and Joint are
bench/reproduce.py's own runs (the same files). Writes docs/defaults.md/.csv.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import ensure_run, git_commit, held_out_return, is_complete, mean_and_error, summarize, write_table
from reproduce import RUNS, round_diagnostics, run_arguments

# The fields the choice is about, all spelled out in every candidate.
FIXED = "--share-every 1 --share-ratio-cap 1 --critic-data own --child-beta initial"
ALL_MEMBERS = "--share-epsilon inf --share-max 0 --share-every 1 --critic-data own"
CANDIDATES = {
    "2 nearest": f"--share-epsilon inf --share-max 2 {FIXED} --expert-choice argmax",
    "all members": f"{ALL_MEMBERS} --share-ratio-cap 1 --child-beta initial --expert-choice argmax",
    "no sharing (C+S)": f"--components CS {FIXED} --expert-choice argmax",
    "epsilon 0.5": f"--share-epsilon 0.5 --share-max 0 {FIXED} --expert-choice argmax",
    "literal sharing rule, new crossover": ("--share-epsilon 0.1 --share-max 0 --share-every 0 --share-ratio-cap inf "
                                            "--critic-data shared --expert-choice argmax --child-beta initial"),
    # one change each from the chosen defaults ("all members"); the runs above left child_optimizer at "fresh"
    "all members, untruncated ratios": f"{ALL_MEMBERS} --share-ratio-cap inf --child-beta initial "
                                       "--expert-choice argmax",
    "all members, expert draws": f"{ALL_MEMBERS} --share-ratio-cap 1 --child-beta initial --expert-choice sample",
    "all members, fitter parent's Adam state": f"{ALL_MEMBERS} --share-ratio-cap 1 --child-beta initial "
                                               "--expert-choice argmax --child-optimizer fitter",
    "all members, fitter parent's beta": f"{ALL_MEMBERS} --share-ratio-cap 1 --child-beta fitter "
                                         "--expert-choice argmax",
    # the ablation's reading: sharing speeds rounds 1 to 3, and the run without it climbs past it later
    "all members in rounds 1-2 only": f"{ALL_MEMBERS} --share-ratio-cap 1 --child-beta initial "
                                      "--expert-choice argmax --share-rounds 2",
    # Single's best member is ahead of GPO's on this task, and most breedings dip below the fitter parent:
    # the best member passes on unchanged
    "all members, 1 elite": f"{ALL_MEMBERS} --share-ratio-cap 1 --child-beta initial --expert-choice argmax "
                            "--elites 1",
}
# bench/reproduce.py's runs, read (or made) under its own file names.
REFERENCES = {"paper-literal": "gpo-literal", "single": "single", "joint": "joint"}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Walker2d-v5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    shape = f"--env {args.env} --population 8 --total-steps 4000000 --rounds 6"

    def file_name(name: str, seed: int) -> str:
        return (f"{REFERENCES[name]}-{args.env}-s{seed}" if name in REFERENCES
                else f"defaults-{slug(name)}-{args.env}-s{seed}")

    if not args.report_only:
        reference_shape = argparse.Namespace(total_steps=4_000_000, rounds=6)
        for seed in args.seeds:
            for name in REFERENCES:
                ensure_run(file_name(name, seed), args.ranks,
                           run_arguments(reference_shape, args.env, seed, REFERENCES[name]), RUNS)
            for name in args.candidates:
                ensure_run(file_name(name, seed), args.ranks, f"{shape} --seed {seed} --algo gpo {CANDIDATES[name]}",
                           RUNS)

    header = ["setting", "best member, held out", "best member, selection eval", "members' mean eval",
              "training: best member", "mean |S_i|", "ESS / batch", "children >= fitter parent", "wall (min)"]
    rows = []
    for name in list(CANDIDATES) + list(REFERENCES):
        done = [summarize(RUNS / f"{file_name(name, seed)}.h5") for seed in args.seeds
                if is_complete(RUNS / f"{file_name(name, seed)}.h5")]
        if not done:
            continue
        sharing = ["", "", ""]
        if name not in ("single", "joint"):
            diagnostics = [round_diagnostics(summary) for summary in done]
            children = [row[4] for rounds in diagnostics for row in rounds if row[4]]
            above = sum(int(text.split(" of ")[0]) for text in children)
            total = sum(int(text.split(" of ")[1]) for text in children)
            sharing = [f"{np.mean([float(row[2]) for rounds in diagnostics for row in rounds]):.2f}",
                       f"{np.mean([float(row[3]) for rounds in diagnostics for row in rounds]):.2f}",
                       f"{above} of {total}"]
        rows.append([name, mean_and_error([held_out_return(s["path"]) for s in done]),
                     mean_and_error([s["eval_best"] for s in done]),
                     mean_and_error([s["eval_mean"] for s in done]), mean_and_error([float(s["final"]) for s in done]),
                     *sharing, f"{np.mean([s['wall'] for s in done]) / 60:.1f}"])
    notes = [f"{args.env}, seeds {args.seeds}, population 8 on {args.ranks} ranks, 4M steps, 6 rounds, the paper's "
             "full crossover. Held out: the best member (by the final evaluation) on 10 fresh episodes with the mean "
             "action (Joint: its policy); selection eval: the final evaluation that picked it (10 episodes, mean "
             "action; biased up by picking the best of 8); members' mean: that evaluation over all members; "
             "training: the best member's last 10 training episodes. Wall times include other work on the 2 cores. "
             "Candidates: " + "; ".join(f"{name}: `{flags}`" for name, flags in CANDIDATES.items())
             + "; paper-literal, Single and Joint are bench/reproduce.py's runs"
             + f". Commit {git_commit()}; command `python bench/defaults.py`."]
    print(write_table(Path("docs/defaults"), header, rows, notes))


if __name__ == "__main__":
    main()
