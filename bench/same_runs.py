"""Whether a change leaves the run files as they were: small runs of every path at a base commit and in
this checkout, compared bit for bit.

    python bench/same_runs.py [--base REV] [--now REV] [--cases NAME ...] [--ranks 1 2]

A refactoring must not change what a run computes. This makes the base commit (default HEAD) in a scratch
worktree, with the C++ extension copied from this checkout where the kernel sources agree (else built
there), then runs each case on each rank count from both trees (`python -m gpo_mpi` under this checkout's
mpiexec, PYTHONPATH naming the tree) and compares every dataset both run files hold: the iterations,
rounds, breedings, evaluations and final networks (datasets only one holds are named, not compared). Wall
times and the counts of MPI traffic are left out (the clock's, and a move may regroup collectives without
changing a number). Prints one line per run and exits
1 if any differs, naming the first dataset that does. With `--now REV`, the second tree is that commit's
too (you may go on editing while it runs).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LEFT_OUT = ("iterations/wall_time", "rounds/time_", "rounds/collective_calls", "rounds/bytes_", "checkpoint")

# Pendulum, tiny batches, 4 members in 2 rounds: a breeding with every crossover step, full-batch epochs on
# own rows and share_rows draws from the foreign ones (the defaults' path), minibatches for Joint.
TINY = ("--env Pendulum-v1 --horizon 20 --batch-steps 64 --n-envs 2 --critic-epochs 5 --policy-epochs 3 "
        "--population 4 --expert-steps 64 --dagger-iterations 2 --dagger-steps 32 --selector-epochs 2 "
        "--dagger-epochs 2 --share-rows 64 --eval-episodes 2")
CASES = {
    "state": "--algo gpo --rounds 2 --total-steps 4608",
    "parameter": "--algo gpo --rounds 2 --total-steps 4608 --crossover-operator parameter",
    "copy": "--algo gpo --rounds 2 --total-steps 4608 --components SM",
    "elites": "--algo gpo --rounds 2 --total-steps 4608 --elites 1",
    "a2c": "--algo gpo --rounds 2 --total-steps 4608 --mutation a2c",
    "evaluations": "--algo gpo --rounds 2 --total-steps 4608 --eval-every 5 --periodic-eval-episodes 1",
    "joint": "--algo joint --total-steps 2048 --minibatch 128",
    "single": "--algo single --total-steps 2048",
}


def commit_tree(base: str, directory: Path) -> Path:
    """A commit's tree, ready to import."""
    tree = directory / base
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), base], cwd=ROOT, check=True)
    kernel_sources = ["src", "CMakeLists.txt", "setup.py"]
    same_kernels = subprocess.run(["git", "diff", "--quiet", base, "--", *kernel_sources], cwd=ROOT).returncode == 0
    built = list((ROOT / "gpo_mpi").glob("_kernels*.so"))
    if same_kernels and built:
        shutil.copy(built[0], tree / "gpo_mpi")
    else:
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True,
                       stdout=subprocess.DEVNULL)
    return tree


def run(tree: Path, ranks: int, arguments: str, out: Path) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks), sys.executable, "-m", "gpo_mpi",
               *TINY.split(), *arguments.split(), "--out", str(out)]
    result = subprocess.run(command, cwd=out.parent, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tree)})
    if result.returncode != 0:
        raise SystemExit(f"{out.name}: exited with {result.returncode}\n{result.stderr}")


def datasets(path: Path) -> dict[str, np.ndarray]:
    contents = {}
    with h5py.File(path, "r") as run_file:
        def keep(name, item):
            if isinstance(item, h5py.Dataset) and not name.startswith(LEFT_OUT):
                contents[name] = item[()]
        run_file.visititems(keep)
    return contents


def first_difference(a: dict, b: dict) -> str | None:
    """The first dataset both files hold that differs (None: all the same)."""
    for name in sorted(set(a) & set(b)):
        if a[name].shape != b[name].shape or not np.array_equal(a[name], b[name], equal_nan=True):
            return name
    return None


def added_and_removed(a: dict, b: dict) -> str:
    """Datasets only one of the two files holds, as a note (empty when they hold the same)."""
    added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    return "".join(f"; {word}: {', '.join(names)}" for word, names in (("new", added), ("gone", removed)) if names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare against (default HEAD)")
    parser.add_argument("--now", help="a commit to compare with it (default: this checkout as it is)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    def short(rev: str) -> str:
        return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    base = short(args.base)
    changed = subprocess.run(["git", "status", "--porcelain", "gpo_mpi"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    now = short(args.now) if args.now else ("this checkout, with uncommitted changes to gpo_mpi/" if changed else
                                            "this checkout, as committed")
    print(f"base {base}; now {now}")
    differing = 0
    with tempfile.TemporaryDirectory(prefix="gpo-mpi-same-runs-") as scratch:
        directory = Path(scratch)
        trees = []
        try:
            trees.append(commit_tree(base, directory))
            trees.append(commit_tree(now, directory) if args.now else ROOT)
            for case in args.cases:
                for ranks in args.ranks:
                    outs = []
                    for side, tree in enumerate(trees):
                        outs.append(directory / f"{case}-{ranks}-{side}.h5")
                        run(tree, ranks, CASES[case], outs[-1])
                    runs = datasets(outs[0]), datasets(outs[1])
                    difference = first_difference(*runs)
                    differing += difference is not None
                    print(f"{case:10s} {ranks} rank(s)  " + ("same" if difference is None else
                                                             f"DIFFERS, first in {difference}")
                          + added_and_removed(*runs), flush=True)
        finally:
            for tree in trees:
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
