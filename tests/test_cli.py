"""The gpo-mpi command: --version and --help, in one process and under mpiexec."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def gpo_mpi_command() -> str:
    beside = Path(sys.executable).parent / "gpo-mpi"
    command = str(beside) if beside.exists() else shutil.which("gpo-mpi")
    if command is None:
        pytest.fail("the gpo-mpi console script is not installed (pip install -e .)")
    return command


def test_version_reports_backends_and_one_torch_thread():
    result = subprocess.run([gpo_mpi_command(), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import gpo_mpi
    from gpo_mpi import kernels
    lines = result.stdout.splitlines()
    assert lines[0] == f"gpo-mpi {gpo_mpi.__version__}"
    assert f"kernels: {kernels.BACKEND}" in lines
    assert any(line.startswith("MPI: MPICH") and line.endswith("1 rank(s)") for line in lines)
    assert any(line.startswith("torch: ") and line.endswith("1 thread(s) per rank") for line in lines)


def test_help():
    result = subprocess.run([gpo_mpi_command(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: mpiexec -n N gpo-mpi [run] [options]   |   gpo-mpi {info,eval,export,plot,compare}")
    assert "--total-steps" in result.stdout and "--share-epsilon" in result.stdout


def test_version_under_mpiexec_sees_every_rank(mpirun):
    result = mpirun(2, [gpo_mpi_command(), "--version"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("2 rank(s)") == 2
    assert result.stdout.count("1 thread(s) per rank") == 2


def test_one_blas_thread_per_rank_even_when_numpy_was_loaded_first():
    # A script that imports numpy before calling train() loads OpenBLAS with its default
    # thread count (every core); oversubscribed ranks then also round differently.
    script = ("import numpy, threadpoolctl\n"
              "from gpo_mpi.cli import one_thread_per_rank\n"
              "one_thread_per_rank()\n"
              "print(sorted({pool['num_threads'] for pool in threadpoolctl.threadpool_info()}))\n")
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    environment["OPENBLAS_NUM_THREADS"] = "2"  # more than one: without the limit the test fails
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1]"
