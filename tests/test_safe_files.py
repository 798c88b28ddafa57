"""Run files from someone else: reading one runs no code, and a crafted or damaged one gets one line and exit 2."""
import json
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from test_cli import gpo_mpi_command
from test_run import TINY

SINGLE = [*TINY, "--algo", "single", "--population", "2", "--total-steps", "512", "--checkpoint-every", "1"]


class RunsACommand:
    """Unpickling this runs `touch SENTINEL`: what a crafted checkpoint of the old format held."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, ):
    """A run stopped after its first iteration (a checkpoint, no final group), on one rank."""
    from conftest import find_mpiexec
    out = tmp_path_factory.mktemp("safe") / "stopped.h5"
    result = subprocess.run([find_mpiexec(), "-n", "1", sys.executable,
                             os.path.join(os.path.dirname(__file__), "mpi_programs", "interrupt.py"), "0", "1",
                             *SINGLE, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    return out


def crafted_copy(stopped: str, directory, kind: str):
    """A copy of the stopped run with its checkpoint made into one of the files an attacker or a bad disk
    could hand over; returns (path, sentinel)."""
    path, sentinel = directory / f"{kind}.h5", directory / f"{kind}.sentinel"
    path.write_bytes(open(stopped, "rb").read())
    payload = np.void(pickle.dumps(RunsACommand(sentinel)))
    with h5py.File(path, "a") as run_file:
        group = run_file["checkpoint"]
        if kind == "pickled":  # the old format's datasets, each a pickle that runs the command
            for name in list(group):
                del group[name]
                group[name] = payload
        elif kind == "pickle-in-layout":  # the payload where the layout's JSON belongs
            del group["rank0/layout"]
            group["rank0/layout"] = payload
        elif kind == "object-dtype":  # strings where the parameters belong
            del group["rank0/float32"]
            group.create_dataset("rank0/float32", data=np.array(["x"] * 8, dtype=object),
                                 dtype=h5py.string_dtype())
        elif kind == "wrong-shape":  # half the parameters
            data = group["rank0/float32"][()]
            del group["rank0/float32"]
            group["rank0/float32"] = data[:len(data) // 2]
        elif kind == "pickle-in-final":  # a finished run whose policies are a pickle
            run_file.create_group("final").create_dataset("policy_parameters", data=payload)
            run_file["final"].attrs["best_member"] = 0
    return path, sentinel


KINDS = ["pickled", "pickle-in-layout", "object-dtype", "wrong-shape", "pickle-in-final"]


def readers(path, out_dir) -> dict[str, list[str]]:
    """Every way a user reads a run file's policies or checkpoint: the arguments of `gpo-mpi` (or of
    gpo_mpi.load_policy)."""
    return {"eval": ["eval", str(path), "--episodes", "1"],
            "export": ["export", str(path), "-o", str(out_dir / "policy.pt")],
            "plot": ["plot", str(path), "-o", str(out_dir / "plots"), "--figures", "states"],
            "load_policy": ["load_policy", str(path)],
            "--init-from": [*SINGLE, "--init-from", str(path), "--out", str(out_dir / "new.h5")],
            "--resume": [*SINGLE, "--out", str(path), "--resume"]}


def assert_one_line_refusal(reader: str, code: int, stderr: str):
    errors = [line for line in stderr.splitlines() if line.strip()]
    # the command's bad-input code 2; a script's sys.exit(message) gives 1
    assert code == (1 if reader == "load_policy" else 2) and len(errors) == 1, (reader, code, stderr)
    if not reader.startswith("--"):  # a training run may refuse for another reason first (a finished run)
        assert "damaged" in errors[0] or "pickled by an earlier gpo-mpi" in errors[0], (reader, errors[0])


def test_no_tool_runs_code_from_a_crafted_run_file_and_each_says_so_in_one_line(stopped_run, tmp_path):
    """Every reader on every kind of crafted file, all in one process (loading torch 36 times took
    about 6 minutes of the suite); the console commands themselves are the next test's."""
    crafted = {kind: crafted_copy(stopped_run, tmp_path, kind) for kind in KINDS}
    cases = [(kind, reader, arguments) for kind, (path, _) in crafted.items()
             for reader, arguments in [*readers(path, tmp_path / kind).items(), ("info", ["info", str(path)])]]
    listing = tmp_path / "commands.json"
    listing.write_text(json.dumps([arguments for _, _, arguments in cases]))
    ran = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "mpi_programs",
                                                       "commands_in_one_process.py"), str(listing)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout.splitlines()[-1])
    for (kind, reader, _), result in zip(cases, results, strict=True):
        if reader == "info":  # what does not read the checkpoint still works on it
            assert result["code"] in (0, 2), (kind, result)
        else:
            assert_one_line_refusal(reader, result["code"], result["stderr"])
    assert [kind for kind, (_, sentinel) in crafted.items() if sentinel.exists()] == []


def test_the_console_commands_refuse_a_crafted_run_file_in_one_line(stopped_run, tmp_path, mpirun):
    path, sentinel = crafted_copy(stopped_run, tmp_path, "pickled")
    commands = readers(path, tmp_path)
    for reader in ("eval", "export", "plot"):
        result = subprocess.run([gpo_mpi_command(), *commands[reader]], capture_output=True, text=True, timeout=300)
        assert_one_line_refusal(reader, result.returncode, result.stderr)
    started = mpirun(1, [gpo_mpi_command(), *commands["--init-from"]])  # --resume: the next test
    assert_one_line_refusal("--init-from", started.returncode, started.stderr)
    assert not sentinel.exists()


def test_the_old_pickled_checkpoint_is_named_as_such(stopped_run, tmp_path, mpirun):
    path, sentinel = crafted_copy(stopped_run, tmp_path, "pickled")
    result = mpirun(1, [gpo_mpi_command(), *SINGLE, "--out", str(path), "--resume"])
    assert result.returncode == 2
    assert result.stderr.strip() == (f"gpo-mpi: error: cannot resume: the checkpoint in {path} was pickled by an "
                                      f"earlier gpo-mpi; this version does not read it, because reading pickle can "
                                      f"run code (docs/checkpoints.md)")
    assert not sentinel.exists()


def test_a_flipped_bit_in_a_final_policy_is_reported_not_used(tmp_path):
    from test_resume import flip_stored_byte
    out = tmp_path / "run.h5"
    made = subprocess.run([gpo_mpi_command(), *SINGLE, "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr
    assert subprocess.run([gpo_mpi_command(), "eval", str(out), "--episodes", "1"], capture_output=True,
                          timeout=300).returncode == 0
    flip_stored_byte(out, "final/policy_parameters")
    result = subprocess.run([gpo_mpi_command(), "eval", str(out), "--episodes", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "a checksum does not match" in result.stderr


def test_reading_a_run_file_never_unpickles():
    """No module of the package reads pickle from a file: pickle.loads appears nowhere."""
    from pathlib import Path
    import gpo_mpi
    sources = {path.name: path.read_text() for path in Path(gpo_mpi.__file__).parent.glob("*.py")}
    assert [name for name, text in sources.items() if "pickle.load" in text] == []


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs, where this machine lets the tests mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.strip() or 'mount failed'})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_ends_the_job_in_one_line_and_the_kept_checkpoint_resumes_exactly(small_disk, tmp_path, mpirun):
    from test_resume import RESUMABLE, assert_same_run, run_file_contents
    whole = tmp_path / "whole.h5"
    assert mpirun(2, [gpo_mpi_command(), *RESUMABLE, "--out", str(whole)], timeout=300).returncode == 0
    out = small_disk / "run.h5"
    full = mpirun(2, ["fill_disk.py", "4", *RESUMABLE, "--out", str(out)], timeout=300)  # iteration 4's fails
    # MPICH adds a line of its own for MPI_Abort ("Abort(6) on node 0 ..."); gpo-mpi's is the one before it
    errors = [line for line in full.stderr.splitlines() if line.strip() and not line.startswith("Abort(6)")]
    assert full.returncode == 6 and len(errors) == 1, full.stderr
    assert errors[0] == (f"gpo-mpi: error: cannot write {out} (No space left on device); {out} keeps its "
                         f"checkpoint at iteration 3 of 9: make room, then continue with --resume"), errors[0]
    assert not (small_disk / "run.h5.tmp").exists()
    (small_disk / "run.h5.filler").unlink()
    resumed = mpirun(2, [gpo_mpi_command(), *RESUMABLE, "--out", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(out), run_file_contents(whole))
