"""The Python API: gpo_mpi.train, and --init-from (gpo_mpi.load_policy is in test_tools.py)."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from test_cli import gpo_mpi_command
from test_resume import assert_same_run, run_file_contents
from test_run import TINY

SCRIPT_RUN = TINY + ["--population", "4", "--rounds", "2", "--total-steps", "1536", "--expert-steps", "64",
                     "--dagger-iterations", "1", "--dagger-steps", "64", "--eval-episodes", "2"]  # train_script.py's


def test_train_from_a_script_is_the_commands_run_on_one_and_two_ranks(mpirun, tmp_path):
    command = mpirun(2, [gpo_mpi_command(), *SCRIPT_RUN, "--out", str(tmp_path / "command.h5")])
    assert command.returncode == 0, command.stderr
    expected = run_file_contents(tmp_path / "command.h5")
    alone = subprocess.run([sys.executable, "tests/mpi_programs/train_script.py", str(tmp_path / "alone.h5")],
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0 and f"trained {tmp_path / 'alone.h5'}" in alone.stdout, alone.stderr
    two = mpirun(2, ["train_script.py", str(tmp_path / "two.h5")])
    assert two.returncode == 0, two.stderr
    for out in ("alone.h5", "two.h5"):  # members spread over 1 or 2 ranks: the same run, bit for bit
        assert_same_run(run_file_contents(tmp_path / out), expected)


def test_train_refuses_bad_input_with_an_exception(tmp_path):
    import gpo_mpi
    from gpo_mpi.config import ConfigError
    with pytest.raises(ConfigError, match=r"unknown field totl_steps \(did you mean total_steps\?\)"):
        gpo_mpi.train(env="Pendulum-v1", totl_steps=100, out=str(tmp_path / "x.h5"))
    (tmp_path / "x.h5").write_text("kept")
    with pytest.raises(ConfigError, match="already exists"):
        gpo_mpi.train(env="Pendulum-v1", algo="single", population=1, total_steps=64, batch_steps=64,
                      out=str(tmp_path / "x.h5"))
    assert (tmp_path / "x.h5").read_text() == "kept"


def test_init_from_starts_every_member_from_the_saved_best_policy(mpirun, tmp_path):
    saved = tmp_path / "saved.h5"
    first = mpirun(2, [gpo_mpi_command(), *TINY, "--algo", "single", "--population", "2", "--total-steps", "512",
                       "--out", str(saved)])
    assert first.returncode == 0, first.stderr
    # A learning rate too small to move the weights: the members end where they started.
    tuned = tmp_path / "tuned.h5"
    second = mpirun(2, [gpo_mpi_command(), *TINY, "--algo", "single", "--population", "4", "--total-steps", "256",
                        "--policy-lr", "1e-30", "--init-from", str(saved), "--out", str(tuned)])
    assert second.returncode == 0, second.stderr
    with h5py.File(saved) as run_file:
        best_member = int(run_file["final"].attrs["best_member"])
        best = run_file["final/policy_parameters"][best_member]
    # one line, from rank 0, says what the run started from
    assert second.stdout.count(f"every member starts from member {best_member} of {saved} (Pendulum-v1, read from "
                               "the end of the run)") == 1, second.stdout
    with h5py.File(saved) as run_file:
        saved_statistics = run_file["final/obs_normalizer"][()]
    with h5py.File(tuned) as run_file:
        np.testing.assert_array_equal(run_file["final/policy_parameters"][()], np.tile(best, (4, 1)))
        tuned_statistics = run_file["final/obs_normalizer"][()]
    # the observation statistics go on from the saved run's: its 512 observations, then these 256
    assert (saved_statistics[0], tuned_statistics[0]) == (512, 512 + 256)
    wrong = mpirun(2, [gpo_mpi_command(), *TINY, "--env", "InvertedPendulum-v5", "--algo", "single",
                       "--population", "2", "--total-steps", "256", "--init-from", str(saved),
                       "--out", str(tmp_path / "wrong.h5")])
    errors = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert wrong.returncode == 2 and len(errors) == 1, wrong.stderr
    assert f"--init-from {saved}: its observations and actions (3, 1) differ from InvertedPendulum-v5's (4, 1)" \
        in errors[0]
