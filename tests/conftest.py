import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# As in gpo-mpi itself: one thread per process (CI machines have 2 cores, and
# MPI tests start several processes).
torch.set_num_threads(1)

PROGRAMS = Path(__file__).parent / "mpi_programs"


def seconds_since_failure(stderr: str) -> float:
    """Seconds since a test program's failing rank printed "failing at <time.time()>" (and raised):
    how long the job took to end, without its start-up, whose length depends on the machine's load."""
    return time.time() - float(re.search(r"failing at ([\d.]+)", stderr).group(1))


def find_mpiexec() -> str:
    """The mpiexec installed beside this Python (the mpich wheel's), else PATH's."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "mpiexec"
        if candidate.exists():
            return str(candidate)
    pytest.fail("no mpiexec found: install the mpich wheel (pip install mpich)")


@pytest.fixture
def mpirun():
    """mpirun(n_ranks, [args...], timeout=...) runs a command under mpiexec.

    A bare .py file name in the first argument is taken from
    tests/mpi_programs and run with this Python. Every call has a timeout,
    so a hang fails the test instead of eating the CI run.
    """
    def run(n_ranks: int, command: list[str], timeout: float = 120, env: dict | None = None):
        if command[0].endswith(".py"):
            command = [sys.executable, str(PROGRAMS / command[0])] + command[1:]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run([find_mpiexec(), "-n", str(n_ranks)] + command, capture_output=True,
                              text=True, timeout=timeout, env=full_env)
    return run


def stored_and_read(tree, directory):
    """`tree` written into an HDF5 file as a checkpoint stores it (gpo_mpi.statefile) and read back."""
    import h5py
    from gpo_mpi import statefile
    path = directory / "state.h5"
    with h5py.File(path, "w") as handle:
        statefile.write(handle, "state", tree)
    with h5py.File(path, "r") as handle:
        return statefile.read(handle, "state")
