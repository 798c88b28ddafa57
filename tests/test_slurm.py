"""The SLURM batch scripts in jobs/, run on a single-node SLURM on localhost (tests/slurm/cluster.sh).

The tests that need the cluster are skipped, with the reason, where SLURM and munge are not
installed (apt-get install -y slurm-wlm munge), or where no test cluster runs and this is not
root (the test cluster runs its daemons as root). The cluster is started once for the module,
or reused when it is already running (.ci/run starts it), and stopped at the end if this module
started it. Every wait
polls `scontrol show job` with a timeout, and a job still running at a timeout is cancelled.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from test_resume import OFF_GRID, RESUMABLE, assert_same_run, run_file_contents, run_file_rows

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_DIR = Path(os.environ.get("GPO_SLURM_DIR", "/tmp/gpo-slurm"))


def _installed(tool: str) -> bool:
    return shutil.which(tool) is not None or any(Path(d, tool).exists() for d in ("/usr/sbin", "/sbin"))


MISSING = [tool for tool in ("sbatch", "srun", "scontrol", "scancel", "slurmctld", "slurmd", "munged")
           if not _installed(tool)]
# On every test that needs the cluster (the last two read the scripts only and run anywhere).
needs_slurm = pytest.mark.skipif(bool(MISSING), reason=f"SLURM tests need slurm-wlm and munge (missing: "
                                 f"{', '.join(MISSING)}); install them with: apt-get install -y slurm-wlm munge")

# 3 rounds of 13 iterations at the default checkpoint_every: stops fall between scheduled checkpoints
LONGER = OFF_GRID
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="module")
def slurm_env():
    """The environment for sbatch & co. (SLURM_CONF of the test cluster, this venv first on PATH)."""
    was_up = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, timeout=60).returncode == 0
    if not was_up and os.geteuid() != 0:
        pytest.skip(f"no test cluster is running and only root can start one: sudo bash {CLUSTER} start")
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"could not start the test cluster ({CLUSTER} start):\n{started.stdout}{started.stderr}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "GPO_"))}
    env.update(SLURM_CONF=str(SLURM_DIR / "slurm.conf"), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if "GPO_SLURM_DIR" in os.environ:
        env["GPO_SLURM_DIR"] = os.environ["GPO_SLURM_DIR"]
    yield env
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120)


def sbatch(env, arguments, cwd=ROOT, extra_env=None) -> str:
    result = subprocess.run(["sbatch", "--parsable", *arguments], cwd=cwd, env={**env, **(extra_env or {})},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def jobs(env, job_id) -> list[dict]:
    """`scontrol show job` as one dict per job (per array task), {} fields when SLURM forgot it."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                            timeout=30)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]


def cancel(env, job_id):
    subprocess.run(["scancel", job_id], env=env, capture_output=True, timeout=30)


def describe(env, job_id, logs=()):
    text = [subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True,
                           timeout=30).stdout]
    for log in logs:
        text.append(f"--- {log}:\n" + (Path(log).read_text()[-4000:] if Path(log).exists() else "(no log)"))
    text.append("--- slurmctld.log:\n" + "".join(
        (SLURM_DIR / "log" / "slurmctld.log").read_text().splitlines(keepends=True)[-15:]))
    return "\n".join(text)


def wait_until(env, job_id, condition, timeout, what, logs=()):
    """Poll every second until condition(jobs) is true; on timeout cancel the job and fail, saying what."""
    deadline = time.monotonic() + timeout
    while True:
        records = jobs(env, job_id)
        if records and condition(records):
            return records
        if time.monotonic() > deadline:
            cancel(env, job_id)
            pytest.fail(f"job {job_id}: no {what} within {timeout} s\n{describe(env, job_id, logs)}")
        time.sleep(1)


def wait_done(env, job_id, timeout, n_tasks=1, logs=()):
    def all_done(records):
        return len(records) == n_tasks and all(r.get("JobState") in DONE_STATES for r in records)
    return wait_until(env, job_id, all_done, timeout, "end", logs)


def wait_for_progress(env, job_id, log, iteration, timeout=90):
    """Until gpo-mpi's progress line of `iteration` is in the job's log: it runs, its handlers are in place."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and f"iter {iteration:4d}/" in log.read_text()):
        if time.monotonic() > deadline:
            cancel(env, job_id)
            pytest.fail(f"job {job_id} made no progress in {timeout} s\n{describe(env, job_id, [log])}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def completed_job(slurm_env, tmp_path_factory):
    """jobs/gpo.sbatch, 2 tasks under srun (the default launcher), run to its end without a signal."""
    work = tmp_path_factory.mktemp("gpo-sbatch")
    out = work / "run.h5"
    # Submitted from the repository root: the job finds jobs/run_gpo.sh through SLURM_SUBMIT_DIR.
    job_id = sbatch(slurm_env, ["--ntasks=2", f"--chdir={work}", "jobs/gpo.sbatch", *LONGER, "--out", str(out)])
    log = work / f"gpo-{job_id}.out"
    [record] = wait_done(slurm_env, job_id, timeout=150, logs=[log])
    return job_id, record, out, log


@needs_slurm
def test_gpo_sbatch_runs_to_the_end_with_srun_as_one_mpi_world(completed_job):
    job_id, record, out, log = completed_job
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "0"), record
    assert (record["JobName"], record["Requeue"], record["NumTasks"]) == ("gpo", "1", "2")
    assert record["StdOut"] == str(log)  # %x-%j.out in the job's working directory
    text = log.read_text()
    assert "srun --mpi=pmi2 --cpus-per-task=1 gpo-mpi" in text
    assert "iter   39/39 | round  3 | steps     11,008 |" in text  # gpo-mpi's progress lines
    assert "round 3/3 done" in text and "gpo-mpi exited with code 0" in text
    with h5py.File(out) as run_file:
        assert "final" in run_file and "checkpoint" in run_file
        assert run_file.attrs["n_ranks"] == 2  # both srun tasks in one MPI world (PMI2)
        assert run_file["iterations/env_steps"][-1] == 11008


@needs_slurm
def test_a_signalled_job_checkpoints_requeues_itself_and_resumes_exactly(slurm_env, completed_job, tmp_path):
    out = tmp_path / "run.h5"
    # Submitted from elsewhere: GPO_JOBS_DIR says where jobs/run_gpo.sh is.
    job_id = sbatch(slurm_env, ["--ntasks=2", str(ROOT / "jobs" / "gpo.sbatch"), *LONGER, "--out", str(out)],
                    cwd=tmp_path, extra_env={"GPO_JOBS_DIR": str(ROOT / "jobs")})
    log = tmp_path / f"gpo-{job_id}.out"
    wait_for_progress(slurm_env, job_id, log, 3)  # the stop then falls between scheduled checkpoints
    # What --signal=B:USR1@... does before the time limit: SIGUSR1 to the batch shell only.
    signalled = subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=slurm_env, capture_output=True,
                               text=True, timeout=30)
    assert signalled.returncode == 0, signalled.stderr
    signalled_at = time.monotonic()
    wait_until(slurm_env, job_id, lambda r: r[0].get("Restarts") == "1", 60, "requeue", [log])
    requeued_at = time.monotonic()
    wait_until(slurm_env, job_id, lambda r: r[0].get("JobState") in DONE_STATES | {"RUNNING"}, 60, "restart", [log])
    restarted_at = time.monotonic()
    [record] = wait_done(slurm_env, job_id, timeout=150, logs=[log])
    print(f"signal -> requeued {requeued_at - signalled_at:.1f} s, requeued -> running again "
          f"{restarted_at - requeued_at:.1f} s, then {time.monotonic() - restarted_at:.1f} s to the end")
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), record
    text = log.read_text()  # --open-mode=append: both starts in one log
    for expected in ("got SIGUSR1, passing it on to the ranks", "gpo-mpi: stopped by a signal; checkpoint written",
                     "gpo-mpi exited with code 3", f"requeueing job {job_id}", f"job {job_id}, restart 1,",
                     "resuming ", "gpo-mpi exited with code 0"):
        assert expected in text, f"{expected!r} not in the log:\n{text}"
    assert text.count(f"job {job_id}, restart ") == 2
    _, _, whole, _ = completed_job
    assert_same_run(run_file_contents(out), run_file_contents(whole))


@needs_slurm
def test_a_job_submitted_again_resumes_its_run_and_a_complete_run_is_left_alone(slurm_env, completed_job,
                                                                                 tmp_path):
    """No requeue (GPO_REQUEUE=0), so the stopped job ends; the user submits the same command again."""
    out = tmp_path / "run.h5"
    command = ["--ntasks=2", f"--chdir={tmp_path}", str(ROOT / "jobs" / "gpo.sbatch"), *LONGER, "--out", str(out)]
    extra_env = {"GPO_JOBS_DIR": str(ROOT / "jobs"), "GPO_REQUEUE": "0"}
    first = sbatch(slurm_env, command, extra_env=extra_env)
    wait_for_progress(slurm_env, first, tmp_path / f"gpo-{first}.out", 3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", first], env=slurm_env, capture_output=True, timeout=30)
    [record] = wait_done(slurm_env, first, timeout=90, logs=[tmp_path / f"gpo-{first}.out"])
    assert (record["ExitCode"], record["Restarts"]) == ("3:0", "0"), record
    second = sbatch(slurm_env, command, extra_env=extra_env)
    log = tmp_path / f"gpo-{second}.out"
    [record] = wait_done(slurm_env, second, timeout=150, logs=[log])
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record
    assert "--resume-if-exists" in log.read_text() and "resuming " in log.read_text()
    _, _, whole, _ = completed_job
    assert_same_run(run_file_contents(out), run_file_contents(whole))
    before = out.read_bytes()
    third = sbatch(slurm_env, command, extra_env=extra_env)
    [record] = wait_done(slurm_env, third, timeout=90, logs=[tmp_path / f"gpo-{third}.out"])
    assert record["ExitCode"] == "2:0", record
    assert "cannot resume: the run in" in (tmp_path / f"gpo-{third}.out").read_text()
    assert out.read_bytes() == before


@needs_slurm
def test_array_jobs_name_their_run_files_and_logs_after_the_task(slurm_env, tmp_path):
    tiny = [*RESUMABLE[RESUMABLE.index("--horizon"):]]  # every setting but the environment
    # The ablation array, tasks 0 (Base) and 7 (CSM), with mpiexec as the launcher
    ablation = sbatch(slurm_env, ["--array=0,7", "--ntasks=2", f"--chdir={tmp_path}", "jobs/ablation.sbatch", *tiny],
                      extra_env={"GPO_ENV": "Pendulum-v1", "GPO_LAUNCHER": "mpiexec -n $SLURM_NTASKS"})
    # The comparison array, task 4 = (single, first env, second seed), srun
    compare = sbatch(slurm_env, ["--array=4", "--ntasks=2", f"--chdir={tmp_path}", "jobs/compare.sbatch", *tiny],
                     extra_env={"GPO_ENVS": "Pendulum-v1 MountainCarContinuous-v0", "GPO_SEEDS": "0 1"})
    expected = {  # (array job, task): (run file, config fields)
        (ablation, "0"): ("ablation/Pendulum-v1-base-seed0.h5", {"components": "", "algo": "gpo", "seed": 0}),
        (ablation, "7"): ("ablation/Pendulum-v1-CSM-seed0.h5", {"components": "CSM", "algo": "gpo", "seed": 0}),
        (compare, "4"): ("compare/single-Pendulum-v1-seed1.h5", {"algo": "single", "env": "Pendulum-v1",
                                                                  "seed": 1}),
    }
    logs = {key: tmp_path / f"gpo-{'ablation' if key[0] == ablation else 'compare'}-{key[0]}_{key[1]}.out"
            for key in expected}
    records = wait_done(slurm_env, ablation, timeout=150, n_tasks=2, logs=list(logs.values()))
    records += wait_done(slurm_env, compare, timeout=150, logs=list(logs.values()))
    for record in records:
        key = (record["ArrayJobId"], record["ArrayTaskId"])
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record
        assert record["StdOut"] == str(logs[key])  # %x-%A_%a.out
        path, fields = expected[key]
        assert "gpo-mpi exited with code 0" in logs[key].read_text()
        with h5py.File(tmp_path / path) as run_file:
            assert "final" in run_file and run_file.attrs["n_ranks"] == 2
            config = json.loads(run_file.attrs["config"])
        assert {name: config[name] for name in fields} == fields
    assert "mpiexec -n 2 gpo-mpi" in logs[(ablation, "7")].read_text()
    assert "srun --mpi=pmi2" in logs[(compare, "4")].read_text()
    assert sorted(p.name for p in tmp_path.glob("*/*.h5")) == sorted(Path(p).name for p, _ in expected.values())


@needs_slurm
def test_the_time_limit_warning_requeues_the_job_and_scancel_ends_it_for_good(slurm_env, tmp_path):
    """The real thing: --time=2 --signal=B:USR1@60; then a user's scancel, which must not requeue."""
    out = tmp_path / "run.h5"
    # 3 rounds of 3,000 iterations: over 8 minutes at the fastest speed seen (4,400 steps/s), never done in 2
    endless = [a if a != "11008" else "2305024" for a in LONGER]
    job_id = sbatch(slurm_env, ["--ntasks=2", "--time=2", "--signal=B:USR1@60", f"--chdir={tmp_path}",
                                "jobs/gpo.sbatch", *endless, "--out", str(out)])
    log = tmp_path / f"gpo-{job_id}.out"
    started_at = time.monotonic()
    # slurmctld looks at the time limits every 30 s and sends the warning at the first look that
    # finds less than 60 + 30 s left: 30 to 60 s after the start, time enough for gpo-mpi to start
    # and save some progress even on a busy machine
    wait_until(slurm_env, job_id, lambda r: r[0].get("Restarts") == "1", 120, "requeue after the warning", [log])
    requeued_after = time.monotonic() - started_at

    def resumed(records):
        return records[0].get("JobState") == "RUNNING" and log.exists() and "resuming " in log.read_text()
    wait_until(slurm_env, job_id, resumed, 60, "resumed run", [log])
    resumed_after = time.monotonic() - started_at
    rows_at_resume = run_file_rows(out)
    assert rows_at_resume >= 1  # progress was saved before the requeue
    cancel(slurm_env, job_id)
    [record] = wait_done(slurm_env, job_id, timeout=60, logs=[log])
    time.sleep(3)  # a requeue would show by now (cred_expire=5 holds it PENDING, Restarts=2)
    [record] = jobs(slurm_env, job_id)
    print(f"requeued {requeued_after:.0f} s after the start, resumed at {resumed_after:.0f} s")
    assert (record["JobState"], record["Restarts"]) == ("CANCELLED", "1"), record
    text = log.read_text()
    first, second = text.split(f"job {job_id}, restart 1,")
    assert "got SIGUSR1, passing it on" in first and f"requeueing job {job_id}" in first
    # (SLURM kills the batch shell KillWait seconds after scancel's SIGTERM: its last lines may be cut)
    assert "got SIGTERM, passing it on" in second and "requeueing" not in second
    assert f"job {job_id}, restart 2," not in text
    with h5py.File(out) as run_file:  # to go on: the same command with --resume
        assert "checkpoint" in run_file and "final" not in run_file
        assert len(run_file["iterations/env_steps"]) >= rows_at_resume


def test_array_scripts_list_their_tasks_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPO_"))}
    listed = subprocess.run(["bash", "jobs/compare.sbatch"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30)
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0 and lines[0] == "submit with: sbatch --array=0-26 jobs/compare.sbatch [gpo-mpi options]"
    assert lines[1:4] == [f"task {i}: --algo {algo} --env Hopper-v5 --seed 0 --out compare/{algo}-Hopper-v5-seed0.h5"
                          for i, algo in enumerate(("gpo", "single", "joint"))]
    assert lines[-1] == "task 26: --algo joint --env HalfCheetah-v5 --seed 2 --out compare/joint-HalfCheetah-v5-seed2.h5"
    listed = subprocess.run(["bash", "jobs/ablation.sbatch"], cwd=ROOT, env={**env, "GPO_SEEDS": "0 1"},
                            capture_output=True, text=True, timeout=30)
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0 and lines[0].startswith("submit with: sbatch --array=0-15 ")
    assert [re.search(r"--components=(\S*)", line).group(1) for line in lines[1:9]] == \
        ["", "C", "S", "CS", "M", "CM", "SM", "CSM"]
    assert lines[16].endswith("--out ablation/Hopper-v5-CSM-seed1.h5")


def test_scaling_submits_one_job_per_population_size_and_study():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPO_"))}
    dry = subprocess.run(["bash", "jobs/scaling.sh", "--env", "Walker2d-v5"], cwd=ROOT, timeout=30,
                         env={**env, "GPO_DRY_RUN": "1", "GPO_TOTAL_STEPS": "4000000"}, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert len(lines) == 10
    for line, (study, m) in zip(lines, [(s, m) for s in ("batch", "total") for m in (2, 4, 8, 16, 32)]):
        steps, batch = (m * 1_000_000, 2048) if study == "batch" else (4_000_000, 16384 // m)
        assert line == (f"sbatch --parsable --ntasks={m} --job-name=gpo-scale-{study}-m{m} {ROOT}/jobs/gpo.sbatch "
                        f"--population {m} --batch-steps {batch} --total-steps {steps} --out scaling/{study}-m{m}.h5 --env Walker2d-v5")
