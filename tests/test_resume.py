"""Checkpoints and --resume: a stopped and resumed run ends exactly like an uninterrupted one."""
import h5py
import numpy as np
import pytest

from test_cli import gpo_mpi_command
from test_run import TINY

# 3 rounds of 3 iterations of 4 x 64 steps, 2 breedings of 4 children x (64 + 2 x 32) steps
RESUMABLE = TINY + ["--population", "4", "--rounds", "3", "--expert-steps", "64", "--dagger-iterations", "2",
                    "--dagger-steps", "32", "--selector-epochs", "2", "--dagger-epochs", "2", "--total-steps",
                    "3328", "--checkpoint-every", "1"]
CLOCK_DEPENDENT = ("iterations/wall_time", "rounds/time_")


def run_file_contents(path):
    contents = {}
    with h5py.File(path) as run_file:
        def keep(name, item):
            if isinstance(item, h5py.Dataset) and not name.startswith("checkpoint") \
                    and not name.startswith(CLOCK_DEPENDENT):
                contents[name] = item[()]
        run_file.visititems(keep)
    return contents


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import PROGRAMS, find_mpiexec  # noqa: F401 (module-scoped runs cannot use the mpirun fixture)
    import subprocess
    out = tmp_path_factory.mktemp("whole") / "run.h5"
    result = subprocess.run([find_mpiexec(), "-n", "2", gpo_mpi_command(), *RESUMABLE, "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run_file_contents(out)


# signal after iteration k: noticed after k + 1; mid-round stops at once, a round's last
# iteration waits for the checkpoint after breeding
@pytest.mark.parametrize("signalled_rank, after_iteration, stopped_at_steps", [
    (1, 1, 512), (0, 2, 768), (1, 7, 3072)])
def test_stopped_and_resumed_run_equals_uninterrupted(mpirun, tmp_path, uninterrupted, signalled_rank,
                                                      after_iteration, stopped_at_steps):
    out = tmp_path / "run.h5"
    stopped = mpirun(2, ["interrupt.py", str(signalled_rank), str(after_iteration), *RESUMABLE, "--out", str(out)],
                     timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped by a signal; checkpoint written" in stopped.stderr
    with h5py.File(out) as run_file:
        assert "final" not in run_file and "checkpoint" in run_file
        assert run_file["iterations/env_steps"][-1] == stopped_at_steps
    resumed = mpirun(2, [gpo_mpi_command(), *RESUMABLE, "--out", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    contents = run_file_contents(out)
    assert sorted(contents) == sorted(uninterrupted)
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(contents[name], value, err_msg=name)


def test_resume_refuses_files_that_do_not_fit(mpirun, tmp_path, uninterrupted):
    bad = tmp_path / "text.h5"
    bad.write_text("not an HDF5 file")
    cases = [
        (tmp_path / "missing.h5", [], "does not exist"),
        (bad, [], "is not a readable HDF5 file"),
    ]
    for path, extra, message in cases:
        result = mpirun(2, [gpo_mpi_command(), *RESUMABLE, "--out", str(path), "--resume", *extra], timeout=120)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert bad.read_text() == "not an HDF5 file"  # nothing written over it


def test_resume_names_the_fields_that_differ(mpirun, tmp_path):
    out = tmp_path / "run.h5"
    stopped = mpirun(2, ["interrupt.py", "0", "1", *RESUMABLE, "--out", str(out)], timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    before = out.read_bytes()
    result = mpirun(2, [gpo_mpi_command(), *RESUMABLE, "--out", str(out), "--resume", "--seed", "5",
                        "--gamma", "0.9"], timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "different configuration: gamma (0.99 in the file, 0.9 now), seed (0 in the file, 5 now)" in errors[0]
    assert out.read_bytes() == before
