"""Run a study's plan of (task, variant, seed) runs, and keep a summary of each the moment it finishes.

    python bench/study.py bench/plans/table1.toml              # run what is not done, one at a time
    python bench/study.py bench/plans/table1.toml --parallel 8 # 8 runs side by side (a 16-core machine)
    python bench/study.py bench/plans/table1.toml --commit     # and commit each summary as it lands
    python bench/study.py bench/plans/table1.toml --list       # what is done, what is left

A plan is a TOML file:

    name = "table1"                    # summaries go to bench/results/table1/, run files to runs/table1/
    ranks = 2                          # MPI ranks per run
    arguments = "--population 8 --total-steps 4000000 --eval-every 36"   # every run's

    [[runs]]                           # a block of runs: every task x variant x seed
    tasks = ["Hopper-v5", "Walker2d-v5"]
    seeds = [0, 1, 2, 3, 4]
    variants = { gpo = "--algo gpo --rounds 6", single = "--algo single" }

Runs are taken seed by seed (all seed-0 runs of every block first), so a
study stopped anywhere has as many seeds of one cell as of another. A run
whose summary is there is done and skipped; one whose run file survived
without a summary is resumed (`--resume`), or only summarized if it had
finished. Each summary (gpo_mpi.summary) also records the study's own cost:
the seconds this runner spent on the run, whether it was resumed, the
machine's load average while it ran and how many of the study's runs ran
beside it, so that wall times measured on a busy machine are marked as such.
`gpo-mpi compare bench/results/NAME` makes the tables and figures.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from gpo_mpi import summary as run_summary
from gpo_mpi.config import ConfigError

REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass
class PlannedRun:
    name: str  # VARIANT-TASK-sSEED: the run file's and the summary's stem
    arguments: list[str]
    run_file: Path
    summary_file: Path
    log_file: Path


@dataclass
class Running:
    run: PlannedRun
    process: subprocess.Popen | None  # None: the run file had finished already
    started: float
    resumed: bool
    loads: list[float] = field(default_factory=list)
    beside: int = 0  # the most other runs of this study seen running at once


def read_plan(path: str, results_root: Path, runs_root: Path) -> tuple[dict, list[PlannedRun]]:
    """The plan's settings and its runs, seed by seed."""
    try:
        with open(path, "rb") as handle:
            plan = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SystemExit(f"study: cannot read the plan {path} ({error})")
    for key in ("name", "runs"):
        if key not in plan:
            raise SystemExit(f"study: the plan {path} has no '{key}'")
    common = shlex.split(plan.get("arguments", ""))
    cells = []
    for block in plan["runs"]:
        for seed in block["seeds"]:
            for task in block["tasks"]:
                for variant, arguments in block["variants"].items():
                    cells.append((seed, variant, task, shlex.split(arguments)))
    cells.sort(key=lambda cell: cell[0])  # stable: within a seed, the plan's order
    runs, names = [], set()
    for seed, variant, task, arguments in cells:
        name = f"{variant}-{task}-s{seed}"
        if name in names:
            raise SystemExit(f"study: the plan {path} lists {name} twice")
        names.add(name)
        runs.append(PlannedRun(name, [*common, "--env", task, "--seed", str(seed), *arguments],
                               runs_root / plan["name"] / f"{name}.h5", results_root / plan["name"] / f"{name}.json",
                               runs_root / plan["name"] / f"{name}.log"))
    return plan, runs


def run_file_state(run_file: Path) -> str:
    """'finished', 'resumable' (a checkpoint is there) or 'new' (no file, or nothing to go on from)."""
    import h5py

    from gpo_mpi.checkpoint import GROUP
    try:
        with h5py.File(run_file, "r") as handle:
            return "finished" if "final" in handle else "resumable" if GROUP in handle else "new"
    except OSError:
        return "new"


def git(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True)


def commit_summary(path: Path, message: str) -> None:
    """Commit this one file (other changes in the checkout stay as they are); retried while another git
    command holds the index."""
    for attempt in range(10):
        added = git("add", "--", path.name, cwd=path.parent)
        done = added.returncode == 0 and git("commit", "-q", "-m", message, "--", path.name, cwd=path.parent)
        if done and done.returncode == 0:
            return
        time.sleep(3 * (attempt + 1))
    print(f"study: could not commit {path}: {(done or added).stderr.strip()}", file=sys.stderr, flush=True)


def start(run: PlannedRun, ranks: int) -> Running:
    run.run_file.parent.mkdir(parents=True, exist_ok=True)
    state = run_file_state(run.run_file)
    if state == "finished":
        return Running(run, None, time.monotonic(), resumed=True)
    resumed = state == "resumable"
    if not resumed:  # stopped before its first checkpoint: start again
        run.run_file.unlink(missing_ok=True)
    command = ["mpiexec", "-n", str(ranks), "gpo-mpi", *run.arguments, "--out", str(run.run_file)]
    if resumed:
        command.append("--resume")
    with open(run.log_file, "a") as log:
        log.write("$ " + shlex.join(command) + "\n")
    print(f"study: {'resume' if resumed else 'start'} {run.name}", flush=True)
    with open(run.log_file, "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return Running(run, process, time.monotonic(), resumed)


def finish(running: Running, study: str, ranks: int, commit: bool) -> bool:
    """Summarize a run that ended well; report one that did not."""
    run = running.run
    code = running.process.returncode if running.process else 0
    if code != 0:
        print(f"study: {run.name} exited with {code} (log: {run.log_file})", file=sys.stderr, flush=True)
        return False
    try:
        summary = run_summary.summarize(str(run.run_file))
    except ConfigError as error:
        print(f"study: {run.name}: {error}", file=sys.stderr, flush=True)
        return False
    loads = running.loads or [os.getloadavg()[0]]
    summary["study"] = dict(
        name=study, runner_commit=git("rev-parse", "--short", "HEAD", cwd=REPOSITORY).stdout.strip(),
        seconds=round(time.monotonic() - running.started, 1), resumed=running.resumed, ranks=ranks,
        cores=os.cpu_count(), load_average_mean=round(sum(loads) / len(loads), 2),
        load_average_max=round(max(loads), 2), study_runs_beside=running.beside,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    run_summary.write(summary, run.summary_file)
    print(f"study: {run.name} done: held-out {summary['held_out_return']:.1f}, members' mean "
          f"{summary['members_mean_return']:.1f}, {summary['wall_time']:.0f} s", flush=True)
    if commit:
        commit_summary(run.summary_file, f"{study}: {run.name} at {summary['source_commit']}, held-out "
                                         f"{summary['held_out_return']:.0f}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="the study's plan (TOML)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "bench" / "results",
                        help="where the summaries go, in a folder named after the study (default bench/results)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the run files go (default runs)")
    parser.add_argument("--commit", action="store_true", help="git-commit each summary the moment it is written")
    parser.add_argument("--list", action="store_true", help="say what is done and what is left; run nothing")
    parser.add_argument("--only", nargs="+", default=[], help="only runs whose name contains one of these")
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    plan, runs = read_plan(args.plan, args.results, args.runs)
    if args.only:
        runs = [run for run in runs if any(part in run.name for part in args.only)]
    ranks = int(plan.get("ranks", 2))
    left = [run for run in runs if not run.summary_file.exists()]
    print(f"study {plan['name']}: {len(runs) - len(left)} of {len(runs)} runs done", flush=True)
    if args.list:
        for run in left:
            print(f"  left: {run.name}" + (" (run file there: resumes)" if run.run_file.exists() else ""))
        return

    failures, running = 0, []
    while left or running:
        while left and len(running) < args.parallel:
            running.append(start(left.pop(0), ranks))
        time.sleep(5 if any(item.process for item in running) else 0)
        for item in running:
            item.beside = max(item.beside, len(running) - 1)
            if len(item.loads) * 30 <= time.monotonic() - item.started:  # one sample per 30 s of the run
                item.loads.append(os.getloadavg()[0])
        for item in [item for item in running if item.process is None or item.process.poll() is not None]:
            running.remove(item)
            failures += not finish(item, plan["name"], ranks, args.commit)
    if failures:
        raise SystemExit(f"study {plan['name']}: {failures} run(s) failed; rerun the plan to retry them")
    print(f"study {plan['name']}: all {len(runs)} runs done; `gpo-mpi compare {args.results / plan['name']}`")


if __name__ == "__main__":
    main()
