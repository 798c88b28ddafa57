"""Checkpoints and --resume: a stopped and resumed run ends exactly like an uninterrupted one."""
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import seconds_since_failure
from test_cli import gpo_mpi_command
from test_run import TINY

# 3 rounds of 3 iterations of 4 x 64 steps, 2 breedings of 4 children x (64 + 2 x 32) steps
RESUMABLE = TINY + ["--population", "4", "--rounds", "3", "--expert-steps", "64", "--dagger-iterations", "2",
                    "--dagger-steps", "32", "--selector-epochs", "2", "--dagger-epochs", "2", "--total-steps",
                    "3328", "--checkpoint-every", "1"]
CLOCK_DEPENDENT = ("iterations/wall_time", "rounds/time_")
# MPI traffic counts what the run did, so a resumed run has more (reading the checkpoint back, the extra
# checkpoint a stop writes), and it is per rank: only the number of rounds and of kinds must agree.
TRAFFIC = ("rounds/collective_calls", "rounds/bytes_")


def run_file_contents(path):
    contents = {}
    with h5py.File(path) as run_file:
        def keep(name, item):
            if isinstance(item, h5py.Dataset) and not name.startswith("checkpoint") \
                    and not name.startswith(CLOCK_DEPENDENT):
                contents[name] = (item.shape[0], item.shape[-1]) if name.startswith(TRAFFIC) else item[()]
        run_file.visititems(keep)
    return contents


# The default checkpoint_every (10) with 13 iterations per round: scheduled checkpoints after
# iterations 10, 23 and 36 and at the two round ends (13, 26), so most stops fall between them.
# 3 rounds of 13 iterations of 4 x 64 steps, 2 breedings of 4 children x (64 + 2 x 32) steps.
# Each policy epoch draws one batch's worth (64) of the 192 foreign rows, as the default share_rows
# (2048) does at the default batch_steps, so that the draws' random state must resume too.
OFF_GRID = TINY + ["--population", "4", "--rounds", "3", "--expert-steps", "64", "--dagger-iterations", "2",
                   "--dagger-steps", "32", "--selector-epochs", "2", "--dagger-epochs", "2", "--policy-epochs", "3",
                   "--critic-epochs", "5", "--total-steps", "11008", "--share-rows", "64"]
OFF_GRID_STEPS = lambda iterations: 256 * iterations + 512 * ((iterations - 1) // 13)  # noqa: E731


def run_whole_with(arguments, out, n_ranks=2):
    """The run file contents of an uninterrupted run."""
    import subprocess
    from conftest import find_mpiexec  # module-scoped runs cannot use the mpirun fixture
    result = subprocess.run([find_mpiexec(), "-n", str(n_ranks), gpo_mpi_command(), *arguments, "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run_file_contents(out)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return {n_ranks: run_whole_with(OFF_GRID, tmp_path_factory.mktemp(f"whole{n_ranks}") / "run.h5", n_ranks)
            for n_ranks in (2, 4)}


def assert_same_run(contents, expected):
    assert sorted(contents) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(contents[name], value, err_msg=name)  # bit for bit


def stop(mpirun, n_ranks, out, signalled_rank, signal_at, resume=False):
    """Run (or resume) until a SIGUSR1 to one rank (see mpi_programs/interrupt.py) stops it; returns its last
    recorded iteration."""
    stopped = mpirun(n_ranks, ["interrupt.py", str(signalled_rank), str(signal_at), *OFF_GRID, "--out", str(out),
                               *(["--resume"] if resume else [])], timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped by a signal; checkpoint written" in stopped.stderr
    with h5py.File(out) as run_file:
        assert "final" not in run_file and "checkpoint" in run_file
        return len(run_file["iterations/env_steps"])


# A signal after iteration k is noticed after iteration k + 1; one in a round's last iteration or
# during breeding stops at the checkpoint after breeding (13 iterations a round).
@pytest.mark.parametrize("n_ranks, signalled_rank, signal_at, stopped_after", [
    (2, 1, 0, 1),  # during start-up
    (2, 0, 10, 11),  # just after the scheduled checkpoint of iteration 10
    (2, 1, 12, 13),  # a round's last iteration: stops after breeding
    (2, 0, "c", 13),  # during breeding
    (4, 3, 4, 5),  # mid-round (on 2 ranks: the next test's random stops)
    (4, 1, "c", 13),
    (4, 2, 30, 31),  # the last round
])
def test_stopped_and_resumed_run_equals_uninterrupted(mpirun, tmp_path, uninterrupted, n_ranks, signalled_rank,
                                                      signal_at, stopped_after):
    out = tmp_path / "run.h5"
    assert stop(mpirun, n_ranks, out, signalled_rank, signal_at) == stopped_after
    with h5py.File(out) as run_file:
        assert run_file["iterations/env_steps"][-1] == OFF_GRID_STEPS(stopped_after)
    resumed = mpirun(n_ranks, [gpo_mpi_command(), *OFF_GRID, "--out", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_same_run(run_file_contents(out), uninterrupted[n_ranks])


def test_a_run_file_from_before_the_fitter_parent_record_resumes_with_it_marked_unknown(mpirun, tmp_path,
                                                                                          uninterrupted):
    """A run file without breeding/fitter_parent (written by an older gpo-mpi) resumes: the breedings before the
    stop read -1, the later ones are recorded, and everything else equals the uninterrupted run."""
    out = tmp_path / "run.h5"
    assert stop(mpirun, 2, out, 1, 12) == 13  # a round's last iteration: stops after breeding 1
    with h5py.File(out, "a") as run_file:
        del run_file["breeding/fitter_parent"]
    resumed = mpirun(2, [gpo_mpi_command(), *OFF_GRID, "--out", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    contents, expected = run_file_contents(out), uninterrupted[2]
    fitter, expected_fitter = contents.pop("breeding/fitter_parent"), expected["breeding/fitter_parent"]
    np.testing.assert_array_equal(fitter[0], -1)
    np.testing.assert_array_equal(fitter[1:], expected_fitter[1:])
    assert_same_run(contents, {k: v for k, v in expected.items() if k != "breeding/fitter_parent"})


def test_a_run_stopped_and_resumed_five_times_equals_uninterrupted(mpirun, tmp_path, uninterrupted):
    out = tmp_path / "run.h5"
    rng = np.random.default_rng(2026)
    stops = np.sort(rng.choice(np.arange(1, 38), size=5, replace=False))
    done = 0
    for count, signal_at in enumerate(stops):
        signal_at = max(int(signal_at), done + 1)  # a stop after breeding may have passed it already
        if signal_at >= 38:
            break
        done = stop(mpirun, 2, out, int(rng.integers(2)), signal_at, resume=count > 0)
    resumed = mpirun(2, [gpo_mpi_command(), *OFF_GRID, "--out", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(out), uninterrupted[2])


def test_resume_refuses_files_that_do_not_fit(mpirun, tmp_path):
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


def flip_stored_byte(path, dataset_name: str, at: int = 9) -> None:
    """Corrupt one byte of a dataset on disk, as a failing disk would: the bytes, not through HDF5."""
    with h5py.File(path, "r") as run_file:
        offset = run_file[dataset_name].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset + at)
        byte = handle.read(1)
        handle.seek(offset + at)
        handle.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("part", ["rank1/float32", "shared/float64", "rank0/layout"])
def test_a_damaged_checkpoint_is_refused_in_one_line(mpirun, tmp_path, part):
    """A bit flipped on disk inside a member's parameters or the shared state (caught by the checksum), or a
    layout that places an array beyond its data: exit 2, one line, the file unchanged."""
    out = tmp_path / "run.h5"
    stopped = mpirun(2, ["interrupt.py", "0", "1", *RESUMABLE, "--out", str(out)], timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    if part.endswith("layout"):
        with h5py.File(out, "a") as run_file:
            del run_file[f"checkpoint/{part}"]
            beyond_the_data = {"array": "float32", "shape": [10 ** 12], "at": 0}
            run_file[f"checkpoint/{part}"] = json.dumps({"dict": [["members", {"list": [beyond_the_data]}]]})
    else:
        flip_stored_byte(out, f"checkpoint/{part}")
    before = out.read_bytes()
    result = mpirun(2, [gpo_mpi_command(), *RESUMABLE, "--out", str(out), "--resume"], timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"gpo-mpi: error: cannot resume: the checkpoint in {out} is damaged")
    assert ("a checksum does not match" in errors[0]) == (not part.endswith("layout")), errors[0]
    assert out.read_bytes() == before


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


@pytest.mark.parametrize("phase, failing_rank", [("mutate", 1), ("select", 0), ("crossover", 1),
                                                 ("checkpoint", 0), ("checkpoint", 1)])
def test_an_exception_in_any_phase_ends_the_job(mpirun, tmp_path, phase, failing_rank):
    result = mpirun(2, ["fail_in_phase.py", str(failing_rank), phase, *RESUMABLE, "--out", str(tmp_path / "r.h5")],
                    timeout=120)
    # measured from the raise: the hook's 1 s pause, then Abort; 15 s holds at 4 times the load (a hang
    # would last until the timeout)
    ended_after = seconds_since_failure(result.stderr)
    assert result.returncode != 0 and ended_after < 15, (result.returncode, ended_after)
    assert f"[gpo-mpi rank {failing_rank}] uncaught exception" in result.stderr
    assert f"deliberate failure in {phase} on rank {failing_rank}" in result.stderr


def test_non_finite_observations_end_the_job_and_keep_the_checkpoint(mpirun, tmp_path):
    out = tmp_path / "r.h5"
    arguments = ["--env", "TurnsNaN-v0", "--algo", "single", "--population", "2", "--batch-steps", "32",
                 "--n-envs", "1", "--total-steps", "640", "--checkpoint-every", "1", "--out", str(out)]
    result = mpirun(2, ["fail_in_phase.py", "0", "non-finite", *arguments], timeout=120)
    assert result.returncode == 4  # gpo-mpi's code for non-finite data, passed on by MPICH's mpiexec
    assert "gpo-mpi: error on rank" in result.stderr
    assert "environment TurnsNaN-v0 returned non-finite observations" in result.stderr
    # The run file is whole, with the last checkpoint that was complete when the job ended: after
    # iteration 4, or 3 if the abort overtook rank 0 writing the next one.
    from gpo_mpi import checkpoint
    from gpo_mpi.config import RunConfig
    with h5py.File(out) as run_file:
        steps = run_file["iterations/env_steps"][()]
        config = RunConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in json.loads(run_file.attrs["config"]).items()})
    shared, _ = checkpoint.read(str(out), config, 2)
    assert steps[-1] in (3 * 64, 4 * 64) and shared["iteration"] == len(steps) and shared["env_steps"] == steps[-1]


def test_observation_statistics_out_of_sync_end_the_job_at_the_next_checkpoint(mpirun, tmp_path):
    """Rank 1's statistics drift from its second update on: the checkpoint after iteration 2 finds it, rank 0
    says so in one line, every rank exits with code 5, and the checkpoint after iteration 1 is kept."""
    out = tmp_path / "r.h5"
    result = mpirun(2, ["fail_in_phase.py", "1", "desync", *RESUMABLE, "--out", str(out)], timeout=120)
    assert result.returncode == 5, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"gpo-mpi: error: the observation statistics differ from rank 0's on 1 rank(s) (a bug in "
                      f"gpo-mpi; please report it); nothing more was written, the last checkpoint in {out} is intact"]
    with h5py.File(out) as run_file:
        assert run_file["iterations/env_steps"][()].tolist() == [256]


def test_a_rank_killed_outright_ends_the_job_and_the_run_resumes(tmp_path):
    """Rank 1 (not the writer) killed: the job ends within seconds, and the run resumes to its end."""
    import signal
    import subprocess
    from conftest import find_mpiexec
    out = tmp_path / "killed.h5"
    arguments = [a if a != "3328" else "9472" for a in RESUMABLE]  # 3 rounds of 11 iterations
    job = subprocess.Popen([find_mpiexec(), "-n", "2", gpo_mpi_command(), *arguments, "--out", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while run_file_rows(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        ranks = rank_pids(out)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        # measured from the kill: the launcher sees the rank's end at once and kills the rest; a hang would
        # be endless, and 60 s holds on a machine at 4 times its load
        job.wait(timeout=60)
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            job.kill()
    resumed = subprocess.run([find_mpiexec(), "-n", "2", gpo_mpi_command(), *arguments, "--out", str(out),
                              "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out) as run_file:
        assert run_file["iterations/env_steps"][-1] == 9472 and "final" in run_file


def run_file_rows(path) -> int:
    """Iterations in a run file that a job may be replacing right now (0 while there is none)."""
    try:
        with h5py.File(path, "r", locking=False) as run_file:
            return len(run_file["iterations/env_steps"])
    except (OSError, KeyError):
        return 0


def rank_pids(out) -> dict[int, int]:
    """{rank: pid} of the gpo-mpi processes writing `out` (MPICH's launcher gives each its PMI_RANK)."""
    ranks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            environment = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        rank = [v for v in environment if v.startswith(b"PMI_RANK=")]
        if str(out).encode() in command and b"python" in command[0] and rank:
            ranks[int(rank[0].split(b"=")[1])] = int(pid)
    return ranks


@pytest.mark.parametrize("checkpoint_every", [10, 1])
def test_the_writing_rank_killed_at_random_moments_leaves_a_run_that_resumes_exactly(tmp_path, uninterrupted,
                                                                                       checkpoint_every):
    """Rank 0 writes the run file at every checkpoint (copy, write, rename); SIGKILL at random moments,
    3 times: each time the file is readable with its checkpoint, and the resumed run ends exactly as
    the uninterrupted one. At the default checkpoint_every (10) the kills fall between checkpoints (after
    iterations 11-12, 14-22 and 27-35 of the 39; checkpoints after 10, 13, 23, 26, 36), so the iterations
    since the last one are run again; at 1, a kill often falls in the middle of a write."""
    import re
    import signal
    import subprocess
    from conftest import find_mpiexec
    from gpo_mpi import checkpoint
    from gpo_mpi.config import RunConfig
    arguments = [*OFF_GRID, "--checkpoint-every", str(checkpoint_every)]
    whole = uninterrupted[2] if checkpoint_every == 10 else run_whole_with(arguments, tmp_path / "whole.h5")
    out = tmp_path / "killed.h5"
    rng = np.random.default_rng(7)
    rows_before = 0
    between_checkpoints = [range(11, 13), range(14, 23), range(27, 36)]
    for kill in range(3):
        # every 1: 1 to 8 iterations on; every 10: an iteration between two checkpoints; then a random moment
        # of the next iteration, which spends much of its time writing at every 1
        kill_after = (rows_before + int(rng.integers(1, 9)) if checkpoint_every == 1
                      else int(rng.choice(between_checkpoints[kill])))
        job = subprocess.Popen([find_mpiexec(), "-n", "2", gpo_mpi_command(), *arguments, "--out", str(out),
                                *(["--resume"] if kill else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            for line in job.stdout:  # rank 0 prints (and flushes) a line at the end of each iteration
                done = re.match(r"iter +(\d+)/", line)
                if done and int(done.group(1)) >= kill_after:
                    break
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(rank_pids(out)[0], signal.SIGKILL)
            job.wait(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode != 0
        with h5py.File(out) as run_file:
            config = RunConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in json.loads(run_file.attrs["config"]).items()})
            rows = len(run_file["iterations/env_steps"])
            assert "final" not in run_file
        shared, _ = checkpoint.read(str(out), config, 2)  # whole, with its checkpoint
        assert shared["iteration"] == rows > rows_before
        rows_before = rows
    resumed = subprocess.run([find_mpiexec(), "-n", "2", gpo_mpi_command(), *arguments, "--out", str(out),
                              "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(out), whole)


def test_a_checkpoint_write_cut_short_leaves_the_previous_one(tmp_path, monkeypatch):
    from gpo_mpi import checkpoint, runfile
    from gpo_mpi.config import RunConfig
    config = RunConfig(env="Pendulum-v1", population=2, out=str(tmp_path / "r.h5"))
    writer = runfile.RunFileWriter(config.out, config, n_ranks=1)
    writer.append(iterations__env_steps=100)
    writer.commit(lambda run_file: checkpoint.write_group(run_file, {"iteration": 1}, [{"rank": "first"}]))
    before = (tmp_path / "r.h5").read_bytes()

    def killed_before_rename(source, target):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(runfile.os, "replace", killed_before_rename)
    writer.append(iterations__env_steps=200)
    with pytest.raises(KeyboardInterrupt):
        writer.commit(lambda run_file: checkpoint.write_group(run_file, {"iteration": 2}, [{"rank": "second"}]))
    assert (tmp_path / "r.h5").read_bytes() == before
    shared, ranks = checkpoint.read(config.out, config, n_ranks=1)
    assert shared == {"iteration": 1} and ranks == [{"rank": "first"}]
    with h5py.File(config.out) as run_file:
        np.testing.assert_array_equal(run_file["iterations/env_steps"][()], [100])


def test_resume_refuses_foreign_and_damaged_run_files(tmp_path):
    from gpo_mpi import checkpoint
    from gpo_mpi.config import ConfigError, RunConfig
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["data"] = [1, 2, 3]
    config = RunConfig(env="Pendulum-v1", population=2, out=str(foreign))
    with pytest.raises(ConfigError, match="is not a gpo-mpi run file"):
        checkpoint.read(str(foreign), config, 1)
    from gpo_mpi.runfile import RunFileWriter
    good = tmp_path / "good.h5"
    config = RunConfig(env="Pendulum-v1", population=2, out=str(good))
    writer = RunFileWriter(str(good), config, n_ranks=1)
    with pytest.raises(ConfigError, match="holds no checkpoint yet"):
        checkpoint.read(str(good), config, 1)
    with pytest.raises(ConfigError, match="written by 1 ranks, this job has 2"):
        checkpoint.read(str(good), config, 2)
    writer.commit(lambda run_file: checkpoint.write_group(run_file, {"iteration": 1}, [{"members": []}]))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ConfigError, match="is not a readable HDF5 file|damaged"):
        checkpoint.read(str(truncated), config, 1)


def test_four_ranks_stopped_and_requeued_by_slurm_resume_exactly(mpirun, tmp_path, uninterrupted):
    """Population 4 on 4 ranks, stopped mid-round; the second start only says SLURM restarted the job."""
    out = tmp_path / "stopped.h5"
    assert stop(mpirun, 4, out, 3, 17) == 18
    requeued = mpirun(4, [gpo_mpi_command(), *OFF_GRID, "--out", str(out)], timeout=300,
                      env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr
    assert "resuming" in requeued.stdout
    assert_same_run(run_file_contents(out), uninterrupted[4])


def tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_follow_the_run_file_through_a_resume(mpirun, tmp_path):
    """Killed outright 4 iterations after the round-end checkpoint of iteration 13, with the events of
    iterations 14 to 17 on disk: the resumed run logs them again, and purges the first copies."""
    out, log_dir = tmp_path / "run.h5", tmp_path / "tb"
    arguments = [*OFF_GRID, "--out", str(out), "--tensorboard", str(log_dir)]
    killed = mpirun(2, ["killed_after.py", "17", *arguments], timeout=300)
    assert killed.returncode != 0
    before_resume = tensorboard_scalars(log_dir)["return/best_member"][0]
    assert before_resume[-1] == OFF_GRID_STEPS(17)  # events past the checkpoint were written
    with h5py.File(out) as run_file:
        assert run_file["iterations/env_steps"][-1] == OFF_GRID_STEPS(13)
    resumed = mpirun(2, [gpo_mpi_command(), *arguments, "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    scalars = tensorboard_scalars(log_dir)
    with h5py.File(out) as run_file:
        steps = run_file["iterations/env_steps"][()]
        returns = run_file["iterations/member_return"][()]
        n_rounds = len(run_file["rounds/time_mutate"])
    best_steps, best = scalars["return/best_member"]
    has_return = np.isfinite(returns).any(1)
    assert best_steps == steps[has_return].tolist()  # each step once: the purge dropped the replayed ones
    np.testing.assert_allclose(best, np.nanmax(returns[has_return], axis=1), rtol=1e-6)
    member_steps, member_values = scalars["member_return/3"]
    np.testing.assert_allclose(member_values, returns[np.isfinite(returns[:, 3]), 3], rtol=1e-6)
    assert len(scalars["time/crossover"][0]) == n_rounds == 3
    assert len(scalars["gpo/median_kl_between_members"][0]) == 3
    with h5py.File(out) as run_file:
        set_sizes = run_file["iterations/share_set_size"][()].mean(axis=1)
        diagnostics = {name: run_file[f"iterations/{name}"][()] for name in
                       ("beta", "policy_kl", "approx_kl", "entropy", "explained_variance", "value_loss")}
    sharing_steps, mean_set_sizes = scalars["sharing/mean_share_set_size"]
    assert sharing_steps == steps.tolist()
    np.testing.assert_allclose(mean_set_sizes, set_sizes, rtol=1e-6)
    for name, values in diagnostics.items():  # the update's statistics, means over members, as SB3 names them
        logged_steps, means = scalars[f"train/{name}"]
        assert logged_steps == steps.tolist()
        np.testing.assert_allclose(means, values.mean(axis=1), rtol=1e-5)


USER_ENV_RUN = TINY + ["--algo", "single", "--population", "2", "--total-steps", "1664"]  # 13 iterations


@pytest.mark.parametrize("env, checkpoint_every, captured", [("user_envs:CapturedReachTarget", 10, True),
                                                             ("user_envs:ReachTarget", 5, False)])
def test_user_environments_resume_exactly_when_captured_and_from_scheduled_checkpoints_otherwise(
        mpirun, tmp_path, env, checkpoint_every, captured):
    """Stopped after iteration 5: off the grid of 10 for the environment with the snapshot protocol,
    on the grid of 5 for the one without, which restarts its episodes at every checkpoint."""
    arguments = [*USER_ENV_RUN, "--env", env, "--checkpoint-every", str(checkpoint_every)]
    user_envs = {"PYTHONPATH": str(Path(__file__).parent)}
    whole = mpirun(2, [gpo_mpi_command(), *arguments, "--out", str(tmp_path / "whole.h5")], env=user_envs)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.count("cannot be snapshotted") == (0 if captured else 1)
    out = tmp_path / "stopped.h5"
    stopped = mpirun(2, ["interrupt.py", "1", "4", *arguments, "--out", str(out)], env=user_envs)
    assert stopped.returncode == 3, stopped.stderr
    resumed = mpirun(2, [gpo_mpi_command(), *arguments, "--out", str(out), "--resume"], env=user_envs)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(out), run_file_contents(tmp_path / "whole.h5"))


def test_a_mujoco_run_stopped_off_the_grid_resumes_exactly(mpirun, tmp_path):
    """Hopper-v5 (MuJoCo physics in the snapshots): 2 rounds of 12 iterations, stopped after iteration 5."""
    arguments = ["--env", "Hopper-v5", "--batch-steps", "256", "--population", "2", "--rounds", "2",
                 "--total-steps", "13312", "--expert-steps", "256", "--dagger-iterations", "1", "--dagger-steps",
                 "256", "--critic-epochs", "5", "--eval-episodes", "1"]
    whole = run_whole_with(arguments, tmp_path / "whole.h5")
    out = tmp_path / "stopped.h5"
    stopped = mpirun(2, ["interrupt.py", "1", "4", *arguments, "--out", str(out)], timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    with h5py.File(out) as run_file:
        assert len(run_file["iterations/env_steps"]) == 5
    resumed = mpirun(2, [gpo_mpi_command(), *arguments, "--out", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(out), whole)
