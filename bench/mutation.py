"""Mutation testing of the operator modules with mutmut: how many small bugs the fast tests catch.

    python bench/mutation.py [--modules select mutate ...] [--budget MINUTES] [--children N] [-o DIR]

For each module, a scratch copy of the committed tree (git archive HEAD, with the built C++ extension)
gets a [tool.mutmut] section that mutates that module only and runs the fast, in-process tests that
cover it (TESTS below; whole runs under mpiexec are too slow to run once per mutant, and mutmut cannot
see what subprocesses call). mutmut runs each mutant against the tests that reach the mutated function.
Prints killed / survived / timed out / not reached per module and the kill rate (killed and timed out
over those tested); writes every survivor's diff to DIR/MODULE-survivors.txt. Your checkout is never
touched. Needs `pip install mutmut` (not in CI: a run takes minutes to hours, a benchmark, not a test).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the fast tests that cover it
TESTS = {
    "select": ["tests/test_select.py", "tests/test_properties.py"],
    "mutate": ["tests/test_mutate.py"],
    "sharing": ["tests/test_sharing.py", "tests/test_properties.py", "tests/test_mutate.py"],
    "crossover": ["tests/test_crossover.py"],
    "learner": ["tests/test_mutate.py", "tests/test_crossover.py"],
    "seeds": ["tests/test_seeds.py"],
    "checkpoint": ["tests/test_checkpoint.py", "tests/test_statefile.py"],
    "statefile": ["tests/test_statefile.py"],
    "snapshot": ["tests/test_snapshot.py"],
}


def scratch_copy(module: str, directory: Path) -> tuple[Path, str]:
    """The committed tree (and its commit) with the built extension and a mutmut section for `module`."""
    tree = directory / module
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for built in (ROOT / "gpo_mpi").glob("_kernels*.so"):
        shutil.copy2(built, tree / "gpo_mpi")
    section = {"source_paths": ["gpo_mpi"], "only_mutate": [f"gpo_mpi/{module}.py"],
               "pytest_add_cli_args_test_selection": TESTS[module],
               "pytest_add_cli_args": ["-q", "-p", "no:cacheprovider"], "also_copy": ["tests"]}
    with open(tree / "pyproject.toml", "a") as pyproject:
        pyproject.write("\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                                      for key, value in section.items()))
    return tree, commit


def results(tree: Path, module: str) -> dict[str, str]:
    """mutant name -> mutmut's status ("killed", "survived", "timeout", "no tests", "not checked", ...)."""
    from mutmut.stats import status_by_exit_code
    meta = json.loads((tree / "mutants" / "gpo_mpi" / f"{module}.py.meta").read_text())
    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", choices=sorted(TESTS), default=sorted(TESTS))
    parser.add_argument("--budget", type=float, default=30.0, help="minutes per module (default 30)")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("-o", "--out", default=str(ROOT / "bench" / "results" / "mutation"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpo-mpi-mutation-") as scratch:
        for module in args.modules:
            tree, commit = scratch_copy(module, Path(scratch))  # each module at the commit it was copied from
            started = time.monotonic()
            try:
                subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.children)],
                               cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=args.budget * 60, env={**os.environ, "OMP_NUM_THREADS": "1"})
            except subprocess.TimeoutExpired:
                pass  # what was tested by then counts; the rest is "not checked"
            minutes = (time.monotonic() - started) / 60
            status = results(tree, module)
            counts = Counter(status.values())
            survivors = sorted(name for name, s in status.items() if s == "survived")
            shows = [subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=tree, capture_output=True,
                                    text=True).stdout for name in survivors]
            (out / f"{module}-survivors.txt").write_text("\n".join(shows))
            tested = counts["killed"] + counts["timeout"] + counts["survived"]
            rate = (counts["killed"] + counts["timeout"]) / tested if tested else float("nan")
            rows.append(dict(module=f"{module}.py", mutants=len(status), killed=counts["killed"],
                             timeout=counts["timeout"], survived=counts["survived"],
                             not_reached=counts["no tests"], not_checked=counts["not checked"],
                             kill_rate=round(rate, 3), minutes=round(minutes, 1), commit=commit))
            print(json.dumps(rows[-1]), flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| module | mutants | killed | timed out | survived | not reached | not checked | kill rate | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['module']} | {row['mutants']} | {row['killed']} | {row['timeout']} | {row['survived']} | "
              f"{row['not_reached']} | {row['not_checked']} | {row['kill_rate']:.0%} | {row['minutes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
