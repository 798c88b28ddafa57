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
import json
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np


def summarize(path: Path) -> dict:
    with h5py.File(path) as run_file:
        config = json.loads(run_file.attrs["config"])
        steps = run_file["iterations/env_steps"][:]
        returns = run_file["iterations/member_return"][:]
        wall = run_file["iterations/wall_time"][-1]
    best_member_curve = np.nanmax(returns, axis=1)
    return dict(path=path, config=config, steps=steps, returns=returns, best_curve=best_member_curve,
                best=np.nanmax(best_member_curve), final=best_member_curve[-1], wall=wall)


def command_line(config: dict, n_ranks: int) -> str:
    """The gpo-mpi command that makes this config: the fields that differ from the defaults."""
    from gpo_mpi.config import RunConfig, to_dict

    defaults = to_dict(RunConfig())
    flags = []
    for name, value in config.items():
        value = tuple(value) if isinstance(value, list) else value
        if name == "out" or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, tuple) else value}")
    return f"mpiexec -n {n_ranks} gpo-mpi " + " ".join(flags)


def plot(summaries: list[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, summary in zip(colors, summaries):
        label = f"{summary['path'].stem} ({summary['config']['algo']}, m={summary['config']['population']})"
        for member_curve in summary["returns"].T:
            axes.plot(summary["steps"], member_curve, color=color, alpha=0.25, linewidth=0.8)
        axes.plot(summary["steps"], summary["best_curve"], color=color, linewidth=1.8, label=label)
    axes.set_xlabel("environment steps (whole run)")
    axes.set_ylabel("mean return of the last 10 training episodes")
    axes.set_title(f"{summaries[0]['config']['env']}: best member (bold) and every member (faint)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out_png, dpi=110)


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
        Path("runs").mkdir(exist_ok=True)
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
        for name, n_ranks, arguments in planned:
            out = Path("runs") / f"{name}.h5"
            command = ["mpiexec", "-n", str(n_ranks), "gpo-mpi", *shlex.split(arguments), "--out", str(out)]
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            runs.append(out)
    if not runs:
        sys.exit("nothing to summarize: give run files or --run")

    summaries = [summarize(path) for path in runs]
    lines = ["| run | command | env steps | best return | final return | wall time |", "|---|---|---|---|---|---|"]
    for s in summaries:
        with h5py.File(s["path"]) as run_file:
            n_ranks = int(run_file.attrs["n_ranks"])
        lines.append(f"| {s['path'].stem} | `{command_line(s['config'], n_ranks)}` | {s['steps'][-1]:,} | "
                     f"{s['best']:.0f} | {s['final']:.0f} | {s['wall'] / 60:.1f} min |")
    lines += ["", "Returns: mean undiscounted return of a member's last 10 training episodes; "
              "best and final of the best member."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(summaries, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
