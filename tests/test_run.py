"""Whole runs of the gpo-mpi command under mpiexec, read back from their run files."""
import json
import os
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_cli import gpo_mpi_command

# Full-batch epochs on a member's own 64 rows (as at the defaults), minibatches on pooled ones; a tenth of
# the default critic epochs, as the critic's updates are most of a tiny run's time.
TINY = ["--env", "Pendulum-v1", "--horizon", "20", "--batch-steps", "64", "--n-envs", "2",
        "--minibatch", "128", "--critic-epochs", "5"]


def run(mpirun, n_ranks, out, *arguments, timeout=240):
    result = mpirun(n_ranks, [gpo_mpi_command(), *TINY, "--out", str(out), *arguments], timeout=timeout)
    return result


def test_single_run_file_layout(mpirun, tmp_path):
    out = tmp_path / "single.h5"
    result = run(mpirun, 2, out, "--algo", "single", "--population", "2", "--total-steps", "384")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("iter")]
    assert len(lines) == 3 and "steps        384" in lines[-1]  # one progress line per iteration, rank 0 only
    with h5py.File(out) as run_file:
        assert run_file.attrs["format"] == "gpo-mpi run file"
        # the tests run from a git checkout: the commit must be there ("unknown" is for installed wheels)
        assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", run_file.attrs["source_commit"])
        config = json.loads(run_file.attrs["config"])
        assert (config["algo"], config["population"], config["batch_steps"]) == ("single", 2, 64)
        assert run_file["config"].attrs["env"] == "Pendulum-v1"
        np.testing.assert_array_equal(run_file["iterations/env_steps"][:], [128, 256, 384])
        returns = run_file["iterations/member_return"][:]
        assert returns.shape == (3, 2) and np.all(np.isfinite(returns)) and np.all(returns < 0)  # Pendulum
        # each of a member's 2 envs steps 32 per iteration; 20-step episodes end at 20 | 40, 60 | 80
        np.testing.assert_array_equal(run_file["iterations/member_episodes"][:], [[2, 2], [4, 4], [2, 2]])
        assert np.all(run_file["iterations/beta"][:] > 0)
        # the diagnostics PPO users read, per member and iteration
        np.testing.assert_array_equal(run_file["iterations/episode_length"][:], 20)
        statistics = {name: run_file[f"iterations/{name}"][:] for name in
                      ("policy_kl", "approx_kl", "value_loss", "entropy", "explained_variance", "policy_loss")}
        assert all(values.shape == (3, 2) and np.all(np.isfinite(values)) for values in statistics.values())
        assert np.all(statistics["policy_kl"] > 0) and np.all(statistics["approx_kl"] >= 0)
        assert np.all(statistics["value_loss"] > 0) and np.all(statistics["explained_variance"] <= 1)
        assert "iterations/clip_fraction" not in run_file  # PPO-clip's alone
        assert run_file["rounds/kl_matrix"].shape == (0, 2, 2)  # no sharing in Single
        assert run_file["final/policy_parameters"].shape == (2, 3 * 64 + 64 + 64 * 64 + 64 + 64 + 1 + 1)
        assert not np.array_equal(*run_file["final/policy_parameters"][:])


# The default and the sharing graph on 1, 2 and 4 ranks; each other variant on 1 and on 2 ranks (two members a
# rank) or 4 (one each), alternately, to keep the suite's time.
@pytest.mark.parametrize("rank_counts, sharing", [
    ((1, 2, 4), ["--share-epsilon", "0.03"]),  # the default: S_i chosen anew every iteration
    ((1, 2), ["--share-epsilon", "0.03", "--share-every", "0"]),  # the paper's: S_i fixed at the round's start
    ((1, 4), ["--share-epsilon", "0.03", "--kl-states-total", "40"]),  # the KL matrix on 10 states of each member
    ((1, 2), ["--share-epsilon", "inf", "--share-max", "1", "--share-ratio-cap", "0.5"]),  # the nearest other
    ((1, 4), ["--share-epsilon", "inf", "--share-max", "1", "--share-rows", "16"]),  # 16 of its 64 rows each epoch
    ((1, 2), ["--share-epsilon", "inf", "--share-max", "1", "--lr-schedule", "linear"]),  # rates decaying to 0
    # the same along the sharing graph: each rank receives only the batches its members read
    ((1, 2, 4), ["--share-epsilon", "inf", "--share-max", "1", "--share-ratio-cap", "0.5", "--exchange", "graph"]),
])
def test_gpo_sharing_run_matches_one_process(mpirun, tmp_path, rank_counts, sharing):
    """Population 4 sharing data: on 1 and more ranks, the same run."""
    results = {}
    for n_ranks in rank_counts:
        out = tmp_path / f"gpo{n_ranks}.h5"
        result = run(mpirun, n_ranks, out, "--algo", "gpo", "--population", "4", "--total-steps", "1024",
                     "--rounds", "1", "--eval-episodes", "2", *sharing)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as run_file:
            results[n_ranks] = {name: run_file[name][:] for name in
                                ("final/policy_parameters", "rounds/share_set_sizes", "rounds/kl_matrix",
                                 "iterations/member_return", "iterations/share_set_size",
                                 "iterations/effective_sample_size", "final/eval_returns")}
    one = results[1]
    sizes = one["iterations/share_set_size"]
    np.testing.assert_array_equal(one["rounds/share_set_sizes"], sizes[:1])
    if "0.03" in sharing:
        # the members start within 0.03 nats of each other and drift apart as they learn
        np.testing.assert_array_equal(sizes[0], 4)
        if "--share-every" in sharing:
            np.testing.assert_array_equal(sizes, 4)
        else:
            assert sizes[1:].sum() < 3 * 16
    else:
        np.testing.assert_array_equal(sizes, 2)
    ess = one["iterations/effective_sample_size"]
    np.testing.assert_array_equal(ess[sizes == 1], 64)  # own batch alone
    shared = sizes > 1
    # the own batch plus foreign rows: more than one batch, less than all the rows pooled
    assert np.all(ess[shared] > 64) and np.all(ess[shared] < 64 * sizes[shared])
    if "0.5" in sharing:
        # 64 own rows of weight 1 and 64 foreign ones of at most 0.5: ESS <= 64 (1 + 0.5)^2 / (1 + 0.5^2),
        # reached where every foreign ratio is above the cap
        np.testing.assert_allclose(ess.max(), 64 * 1.5 ** 2 / 1.25)
    for n_ranks in rank_counts[1:]:  # bit for bit: no sum depends on the layout of the members over the ranks
        for name, value in results[n_ranks].items():
            np.testing.assert_array_equal(value, one[name], err_msg=name)
    if "--kl-states-total" in sharing:  # 10 states of each member's 64, not all 64: another KL matrix
        out = tmp_path / "all-states.h5"
        arguments = [a for a in sharing if a not in ("--kl-states-total", "40")]
        assert run(mpirun, 1, out, "--algo", "gpo", "--population", "4", "--total-steps", "1024", "--rounds", "1",
                   "--eval-episodes", "2", *arguments).returncode == 0
        with h5py.File(out) as run_file:
            all_states = run_file["rounds/kl_matrix"][0]
        off_diagonal = ~np.eye(4, dtype=bool)
        assert np.all(all_states[off_diagonal] > 0) and np.all(one["rounds/kl_matrix"][0][off_diagonal] > 0)
        assert not np.any(all_states[off_diagonal] == one["rounds/kl_matrix"][0][off_diagonal])


def test_share_sets_that_cannot_change_are_not_measured_again(mpirun, tmp_path):
    """With every member reading every other (the defaults), the KL matrix is measured at each round's
    start only: the run of a threshold that every pair passes, with the matrix's three Allgatherv fewer in every
    later iteration."""
    runs = {}
    for name, epsilon in (("every member", "inf"), ("threshold", "1e9")):
        out = tmp_path / f"{name}.h5"
        result = run(mpirun, 2, out, "--algo", "gpo", "--population", "4", "--total-steps", "1024", "--rounds", "2",
                     "--expert-steps", "64", "--dagger-iterations", "1", "--dagger-steps", "32",
                     "--eval-episodes", "1", "--share-epsilon", epsilon)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as run_file:
            runs[name] = {name: run_file[name][:] for name in ("final/policy_parameters", "rounds/kl_matrix",
                                                                "iterations/share_set_size", "rounds/collective_calls",
                                                                "iterations/effective_sample_size")}
    every, threshold = runs["every member"], runs["threshold"]
    np.testing.assert_array_equal(every["iterations/share_set_size"], 4)
    for name in ("final/policy_parameters", "rounds/kl_matrix", "iterations/effective_sample_size"):
        np.testing.assert_array_equal(every[name], threshold[name], err_msg=name)
    iterations_per_round = len(every["iterations/share_set_size"]) // 2
    # the KL matrix's Allgatherv of states, of mean actions and of its rows, in every iteration after the first
    saved = threshold["rounds/collective_calls"][:, :, 0] - every["rounds/collective_calls"][:, :, 0]
    np.testing.assert_array_equal(saved, 3 * (iterations_per_round - 1))


@pytest.mark.parametrize("algo", ["joint", "single"])
def test_baselines_match_one_process(mpirun, tmp_path, algo):
    """Joint's data parallelism and Single's independent members give, on 2 and 4 ranks, the run of one
    process: the same sampling, advantages standardized over the whole batch, the same minibatches."""
    results = {}
    for n_ranks in (1, 2, 4):
        out = tmp_path / f"{algo}{n_ranks}.h5"
        result = run(mpirun, n_ranks, out, "--algo", algo, "--population", "4", "--total-steps", "1024",
                     "--eval-episodes", "2")
        assert result.returncode == 0, result.stderr
        results[n_ranks] = read_run(out)
    one = results[1]
    assert one["final/policy_parameters"].shape[0] == (1 if algo == "joint" else 4)
    assert one["final/eval_returns"].shape == one["final/policy_parameters"][:, :2].shape
    for n_ranks in (2, 4):
        for name in ("final/policy_parameters", "final/critic_parameters", "iterations/member_return",
                     "iterations/beta", "iterations/policy_kl", "final/eval_returns"):
            if algo == "single":  # bit for bit
                np.testing.assert_array_equal(results[n_ranks][name], one[name], err_msg=name)
            else:
                # The one exception: Joint's gradient and advantage sums over ranks add in another order
                # than one process's. Float32 rounding, which Adam's division by small second moments
                # magnifies to about 1e-5 in a few weights after 200 steps.
                np.testing.assert_allclose(results[n_ranks][name], one[name], rtol=1e-5, atol=3e-5, err_msg=name)
        np.testing.assert_array_equal(results[n_ranks]["iterations/member_episodes"], one["iterations/member_episodes"])


def test_joint_spreads_one_policy_over_the_ranks(mpirun, tmp_path):
    out = tmp_path / "joint.h5"
    result = run(mpirun, 2, out, "--algo", "joint", "--population", "2", "--total-steps", "256")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as run_file:
        np.testing.assert_array_equal(run_file["iterations/env_steps"][:], [128, 256])
        assert run_file["final/policy_parameters"].shape[0] == 1
        # both ranks' episodes land in the one policy's record: 2 slots x 2 envs x (1 | 2)
        np.testing.assert_array_equal(run_file["iterations/member_episodes"][:], [[4], [8]])
        np.testing.assert_array_equal(run_file["iterations/effective_sample_size"][:], [[128], [128]])


@pytest.mark.parametrize("arguments, message", [
    (["--env", "NoSuchEnv-v1"], "cannot make environment 'NoSuchEnv-v1'"),
    (["--env", "CartPole-v1"], "has a Discrete action space"),
    (["--population", "1"], "population (1) must be at least the number of ranks (2)"),
    (["--total-steps", "-1"], "total_steps must be positive"),
    (["--env", "HopperHilly-v5", "--env-kwargs", '{"difficulty": -1}'], "with env_kwargs {'difficulty': -1}: "),
    (["--env", "Hopper-v5", "--env-kwargs", '{"difficulty": 1}'], "unexpected keyword argument 'difficulty'"),
    (["--env-kwargs", "difficulty=1"], "argument --env-kwargs: not JSON"),
])
def test_bad_input_is_one_line_from_one_rank(mpirun, tmp_path, arguments, message):
    out = tmp_path / "bad.h5"
    result = mpirun(2, [gpo_mpi_command(), "--out", str(out), *arguments], timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("usage: ")]
    assert len(errors) == 1 and errors[0].startswith("gpo-mpi: error: ") and message in errors[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("out, message", [
    ("TMP/nodir/run.h5", "--out TMP/nodir/run.h5: the directory TMP/nodir does not exist"),
    ("TMP/somefile/run.h5", "--out TMP/somefile/run.h5: TMP/somefile is not a directory"),
    ("TMP/somedir/", "--out TMP/somedir/ is a directory; give a file name such as TMP/somedir/run.h5"),
    ("TMP/somedir", "--out TMP/somedir is a directory"),
    ("/proc/run.h5", "--out /proc/run.h5: cannot write in /proc"),
])
def test_a_bad_run_file_path_is_one_line_and_writes_nothing(mpirun, tmp_path, out, message):
    (tmp_path / "somefile").write_bytes(b"kept as it is")
    (tmp_path / "somedir").mkdir()
    before = directory_listing(tmp_path)
    result = mpirun(2, [gpo_mpi_command(), *SMALL_RUN, "--out", out.replace("TMP", str(tmp_path))], timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith("gpo-mpi: error: ") and message.replace("TMP", str(tmp_path)) in errors[0], errors
    assert directory_listing(tmp_path) == before


def directory_listing(directory: Path) -> list:
    """Every path under `directory` with its bytes (True for directories)."""
    return sorted((str(p), p.is_dir() or p.read_bytes()) for p in directory.rglob("*"))


SMALL_RUN = [*TINY, "--algo", "single", "--population", "2", "--total-steps", "256"]


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_an_existing_run_file_is_replaced_only_with_overwrite(mpirun, tmp_path, n_ranks):
    out = tmp_path / "run.h5"
    first = mpirun(n_ranks, [gpo_mpi_command(), *SMALL_RUN, "--out", str(out)])
    assert first.returncode == 0, first.stderr
    (tmp_path / "notes.txt").write_text("not a run file")
    before = directory_listing(tmp_path)
    for existing in (out, tmp_path / "notes.txt"):  # a complete run, and any other file
        again = mpirun(n_ranks, [gpo_mpi_command(), *SMALL_RUN, "--seed", "1", "--out", str(existing)])
        errors = [line for line in again.stderr.splitlines() if line.strip()]
        assert again.returncode == 2 and len(errors) == 1, again.stderr
        assert errors[0].startswith(f"gpo-mpi: error: --out {existing} already exists: continue its run with "
                                    "--resume, or start a new one over it with --overwrite (or choose another --out)")
        assert directory_listing(tmp_path) == before  # byte for byte, and no stray file
    replaced = mpirun(n_ranks, [gpo_mpi_command(), *SMALL_RUN, "--seed", "1", "--out", str(out), "--overwrite"])
    assert replaced.returncode == 0, replaced.stderr
    with h5py.File(out) as run_file:
        assert json.loads(run_file.attrs["config"])["seed"] == 1 and "final" in run_file


def test_resume_if_exists_starts_a_missing_run_and_the_default_run_file_names_the_run(mpirun, tmp_path):
    from conftest import find_mpiexec
    command = [find_mpiexec(), "-n", "2", gpo_mpi_command(), *SMALL_RUN, "--env", "Pendulum-v1", "--seed", "3",
               "--resume-if-exists"]
    started = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pendulum-v1-single-s3.h5",
                                                           "Pendulum-v1-single-s3.progress.csv"]
    before = directory_listing(tmp_path)
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "cannot resume: the run in Pendulum-v1-single-s3.h5 is already complete" \
        in again.stderr
    assert directory_listing(tmp_path) == before


@pytest.mark.parametrize("n_ranks, failing_rank", [(2, 1), (4, 3), (4, 0)])
def test_an_environment_failing_on_one_rank_ends_the_job_in_one_line(mpirun, tmp_path, n_ranks, failing_rank):
    """Whichever rank cannot make its environment, every rank stops at once with exit 2 and rank 0
    prints that rank's one line; nothing is written."""
    # A rank left waiting would hold the job forever: the timeout catches that, and no wall-time bound is
    # asserted, since the start-up of 4 ranks alone can take a minute on a loaded 2-core machine
    result = mpirun(n_ranks, [gpo_mpi_command(), *TINY, "--algo", "single", "--env", "user_envs:FailsOnRank",
                              "--env-kwargs", json.dumps({"rank": failing_rank}), "--total-steps", "4096",
                              "--out", str(tmp_path / "run.h5")],
                    timeout=180, env={"PYTHONPATH": str(Path(__file__).parent)})
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith("gpo-mpi: error: cannot make environment 'user_envs:FailsOnRank'")
    assert errors[0].endswith(f"no simulator library on the node of rank {failing_rank} (on rank {failing_rank})")
    assert list(tmp_path.iterdir()) == []


def test_a2c_mutation_runs_without_a_penalty(mpirun, tmp_path):
    out = tmp_path / "a2c.h5"
    result = run(mpirun, 1, out, "--algo", "single", "--mutation", "a2c", "--population", "1",
                 "--total-steps", "128")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as run_file:
        assert "iterations/beta" not in run_file  # no penalty to adapt
        assert np.all(run_file["iterations/policy_kl"][:] > 0)  # but the policy moved


TINY_GPO = ["--population", "4", "--rounds", "3", "--expert-steps", "64", "--dagger-iterations", "2",
            "--dagger-steps", "32", "--selector-epochs", "2", "--dagger-epochs", "2", "--total-steps", "1792"]
# 3 rounds of one iteration (4 x 64 steps), 2 breedings of 4 children x (64 + 2 x 32) steps: 768 + 1024


def read_run(path):
    with h5py.File(path) as run_file:
        data = {}
        run_file.visititems(lambda name, item: data.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                            else None)
        data["best_member"] = run_file["final"].attrs["best_member"]
        return data


def test_gpo_rounds_match_one_process(mpirun, tmp_path):
    """Population 4 on 1, 2, 3 (2 + 1 + 1 members) and 4 ranks: the same run, bit for bit."""
    from gpo_mpi import select
    runs = {}
    for n_ranks in (1, 2, 3, 4):
        out = tmp_path / f"gpo{n_ranks}.h5"
        result = run(mpirun, n_ranks, out, *TINY_GPO)
        assert result.returncode == 0, result.stderr
        summaries = [line for line in result.stdout.splitlines() if " done: best return " in line]
        assert len(summaries) == 3 and not any("n/a" in line for line in summaries)  # one per round
        runs[n_ranks] = read_run(out)
    one = runs[1]
    np.testing.assert_array_equal(one["iterations/env_steps"], [256, 256 + 512 + 256, 1792])
    np.testing.assert_array_equal(one["iterations/round"], [0, 1, 2])
    pairs = one["breeding/parent_pairs"]
    assert pairs.shape == (2, 4, 2) and np.all(pairs[:, :, 0] != pairs[:, :, 1])
    for before, chosen, parent_returns in zip(one["breeding/member_return_before"], pairs,
                                              one["breeding/parent_returns"]):  # the fittest distinct couples
        np.testing.assert_array_equal(chosen, select.fittest_pairs(select.performance_fitness(before), 4))
        np.testing.assert_array_equal(parent_returns, before[chosen])
    fitter = one["breeding/fitter_parent"]  # recorded as the engine chose it: the higher return of each couple
    np.testing.assert_array_equal(fitter, np.where(one["breeding/parent_returns"][:, :, 0]
                                                   >= one["breeding/parent_returns"][:, :, 1], pairs[:, :, 0],
                                                   pairs[:, :, 1]))
    child_returns = one["breeding/child_return"]
    assert child_returns.shape == (2, 4) and np.all(np.isfinite(child_returns)) and np.all(child_returns < 0)
    # Each child's environments restart at its birth, so its round's only iteration (32 steps a column,
    # 20-step episodes) finishes exactly its first 2 episodes, which are then its whole return window.
    np.testing.assert_array_equal(one["iterations/member_episodes"][1:], 2)
    np.testing.assert_array_equal(child_returns, one["iterations/member_return"][1:])
    assert np.all(np.isfinite(one["breeding/imitation_loss"]))
    for phase in ("mutate", "select", "crossover", "communication"):
        assert one[f"rounds/time_{phase}"].shape == (3,) and np.all(one[f"rounds/time_{phase}"] >= 0)
    assert np.all(one["rounds/time_crossover"][:2] > 0) and one["rounds/time_crossover"][2] == 0
    np.testing.assert_array_equal(one["final/best_policy_parameters"],
                                  one["final/policy_parameters"][one["best_member"]])
    # the best member is the best by the deterministic evaluation at the end, which the tools can repeat
    evaluation = one["final/eval_returns"]
    assert evaluation.shape == (4, 10) and one["best_member"] == np.argmax(evaluation.mean(axis=1))
    assert_evaluation_repeats(tmp_path / "gpo1.h5", evaluation)
    # MPI traffic per round, rank and kind (allgatherv, scatterv, allreduce, bcast, objects, neighbor_allgatherv):
    # the same calls on every rank at every rank count; one process moves no bytes
    assert one["rounds/collective_calls"].shape == (3, 1, 6) and not one["rounds/bytes_received"].any()
    for n_ranks in (2, 3, 4):
        calls, sent, received = (runs[n_ranks][f"rounds/{name}"] for name in
                                 ("collective_calls", "bytes_sent", "bytes_received"))
        assert calls.shape == (3, n_ranks, 6)
        # (crossover's parents move by Allgatherv or, where auto finds it sparser, along a graph)
        def exchanges_merged(counts):
            return np.concatenate([counts[..., :1] + counts[..., 5:], counts[..., 1:5]], axis=-1)

        np.testing.assert_array_equal(exchanges_merged(calls),
                                      np.repeat(exchanges_merged(one["rounds/collective_calls"]), n_ranks, axis=1))
        # every rank receives what each other rank puts into an Allgatherv or broadcast; a Scatterv's
        # blocks go from the root to one rank each, a neighbourhood Allgatherv's rows to each destination
        # (counted as sent to each); an Allreduce's buffer counts both ways
        for kind, copies in ((0, n_ranks - 1), (3, n_ranks - 1), (1, 1), (5, 1)):
            np.testing.assert_array_equal(received[:, :, kind].sum(axis=1), copies * sent[:, :, kind].sum(axis=1))
        np.testing.assert_array_equal(received[:, :, 2], sent[:, :, 2])
        assert np.all(received[:, :, 0] > 0) and not calls[:, :, 1].any()  # nothing scattered
        assert np.all(received[:2, 1:, 3] >= 4 * 3 * 8)  # rounds 1-2: rank 0 broadcasts the 4 jobs
    for n_ranks in (2, 3, 4):
        np.testing.assert_array_equal(runs[n_ranks]["breeding/parent_pairs"], pairs)
        for name in ("final/policy_parameters", "final/critic_parameters", "iterations/member_return",
                     "breeding/child_return", "breeding/fitter_parent", "rounds/kl_matrix", "final/eval_returns"):
            np.testing.assert_array_equal(runs[n_ranks][name], one[name], err_msg=name)


def test_crossover_parents_reach_only_the_ranks_that_breed_from_them(mpirun, tmp_path):
    """Population 4 on 4 ranks without data sharing: with --exchange graph each rank receives only its
    child's two parents (and their selector data), fewer bytes than every member by Allgatherv on every
    rank, and the run is the one process's."""
    runs = {}
    for name, n_ranks, exchange in (("one", 1, "allgather"), ("allgather", 4, "allgather"), ("graph", 4, "graph")):
        result = run(mpirun, n_ranks, tmp_path / f"{name}.h5", *TINY_GPO, "--components", "CS",
                     "--exchange", exchange, "--eval-episodes", "1")
        assert result.returncode == 0, result.stderr
        runs[name] = read_run(tmp_path / f"{name}.h5")
    from test_resume import assert_same_run, run_file_contents  # (test_resume imports this module)
    for other in ("allgather", "graph"):  # bit for bit but for the clocks and the traffic's counts
        assert_same_run(run_file_contents(tmp_path / f"{other}.h5"), run_file_contents(tmp_path / "one.h5"))
    from gpo_mpi.mpi import COLLECTIVE_KINDS as kinds
    received = {name: runs[name]["rounds/bytes_received"][:2].sum(axis=2) for name in ("allgather", "graph")}
    assert np.all(received["graph"] < received["allgather"])  # both breeding rounds, every rank
    graph_calls = runs["graph"]["rounds/collective_calls"][:2, :, kinds.index("neighbor_allgatherv")]
    np.testing.assert_array_equal(graph_calls, 2)  # the parents' networks, then their selector data
    np.testing.assert_array_equal(runs["allgather"]["rounds/collective_calls"][:2, :, kinds.index(
        "neighbor_allgatherv")], 0)


def test_elites_go_on_unchanged_and_the_other_slots_breed(mpirun, tmp_path):
    """--elites 1, with learning rates too small to move a weight in mutation: the best member of round 1
    keeps its initial policy to the end (a Single run's), every other slot gets a child of the fittest
    couples that DAgger moved; the breeding takes 3 children's steps, not 4. The same run on 1 and 2 ranks."""
    from gpo_mpi import select
    frozen = ["--policy-lr", "1e-30", "--critic-lr", "1e-30", "--population", "4", "--eval-episodes", "1"]
    shape = ["--rounds", "2", "--expert-steps", "64", "--dagger-iterations", "2", "--dagger-steps", "32",
             "--selector-epochs", "2", "--dagger-epochs", "2", "--total-steps", str(2 * 256 + 3 * 128)]
    initial = run(mpirun, 1, tmp_path / "single.h5", "--algo", "single", "--total-steps", "256", *frozen)
    assert initial.returncode == 0, initial.stderr
    initial_policies = read_run(tmp_path / "single.h5")["final/policy_parameters"]
    runs = {}
    for n_ranks in (1, 2):
        result = run(mpirun, n_ranks, tmp_path / f"elite{n_ranks}.h5", *shape, *frozen, "--elites", "1")
        assert result.returncode == 0, result.stderr
        runs[n_ranks] = read_run(tmp_path / f"elite{n_ranks}.h5")
    one = runs[1]
    np.testing.assert_array_equal(one["iterations/env_steps"], [256, 256 + 3 * 128 + 256])
    before = one["breeding/member_return_before"][0]
    elite = int(np.argmax(before))
    jobs = np.column_stack([one["breeding/parent_pairs"][0], one["breeding/fitter_parent"][0]])
    np.testing.assert_array_equal(jobs[elite], [elite, elite, elite])
    others = np.arange(4) != elite
    np.testing.assert_array_equal(jobs[others, :2], select.fittest_pairs(select.performance_fitness(before), 3))
    final_policies = one["final/policy_parameters"]
    # a step of 1e-30 leaves every weight as it was, but for the biases initialized at zero
    np.testing.assert_allclose(final_policies[elite], initial_policies[elite], rtol=0, atol=1e-20)
    assert all(np.abs(final_policies[slot] - initial_policies[slot]).max() > 1e-4 for slot in np.flatnonzero(others))
    assert np.isnan(one["breeding/imitation_loss"][0, elite]) and np.all(np.isfinite(
        one["breeding/imitation_loss"][0, others]))
    from test_resume import assert_same_run, run_file_contents  # (test_resume imports this module)
    assert_same_run(run_file_contents(tmp_path / "elite2.h5"), run_file_contents(tmp_path / "elite1.h5"))


def test_share_rounds_stops_sharing_after_the_first_rounds(mpirun, tmp_path):
    """--share-rounds 1: every member reads all 4 batches in round 1 and only its own in round 2; round 1
    is the run of the default (sharing in every round) up to its breeding."""
    shape = ["--population", "4", "--rounds", "2", "--expert-steps", "64", "--dagger-iterations", "1",
             "--dagger-steps", "64", "--selector-epochs", "2", "--dagger-epochs", "2", "--total-steps", "1536"]
    runs = {}
    for name, extra in (("every-round", []), ("first-round", ["--share-rounds", "1"])):
        result = run(mpirun, 2, tmp_path / f"{name}.h5", *shape, "--eval-episodes", "1", *extra)
        assert result.returncode == 0, result.stderr
        runs[name] = read_run(tmp_path / f"{name}.h5")
    first = runs["first-round"]
    np.testing.assert_array_equal(first["iterations/round"], [0, 0, 1, 1])
    np.testing.assert_array_equal(first["iterations/share_set_size"], [[4] * 4, [4] * 4, [1] * 4, [1] * 4])
    np.testing.assert_array_equal(first["rounds/share_set_sizes"], [[4] * 4, [1] * 4])
    np.testing.assert_array_equal(first["iterations/effective_sample_size"][2:], 64)  # the own batch alone
    np.testing.assert_array_equal(runs["every-round"]["iterations/share_set_size"], 4)
    for name in ("iterations/member_return", "iterations/policy_kl"):  # round 1's two iterations
        np.testing.assert_array_equal(first[name][:2], runs["every-round"][name][:2], err_msg=name)
    np.testing.assert_array_equal(first["breeding/parent_pairs"], runs["every-round"]["breeding/parent_pairs"])


def assert_evaluation_repeats(path, evaluation):
    """Each member's stored evaluation is its mean-action return on the evaluation seeds."""
    from gpo_mpi import seeds
    from gpo_mpi.evaluate import episode_returns
    from gpo_mpi.rollout import EnvSpec
    from gpo_mpi.saved import load_run
    finished = load_run(str(path))
    for index, policy in enumerate(finished.policies):
        returns = episode_returns(policy, finished.normalizer, EnvSpec.of(finished.config), evaluation.shape[1],
                                  seeds.evaluation(finished.config.seed, index), deterministic=True)
        np.testing.assert_allclose(returns, evaluation[index], rtol=1e-9)


@pytest.mark.parametrize("components, options", [
    ("", []), ("SM", []),
    # the other crossover choices: children keep the fitter parent's Adam state and beta, the expert draws
    ("C", ["--child-optimizer", "fitter", "--child-beta", "fitter", "--expert-choice", "sample"]),
])
def test_ablations_and_eight_members_on_four_ranks(mpirun, tmp_path, components, options):
    arguments = [a if a != "4" or i != 1 else "8" for i, a in enumerate(TINY_GPO)]  # population 8
    arguments[-1] = str(3 * 8 * 64 + (2 * 8 * 128 if "C" in components else 0))
    for n_ranks in (1, 4):
        result = run(mpirun, n_ranks, tmp_path / f"ablation{n_ranks}.h5", *arguments, "--components", components,
                     "--share-epsilon", "inf", "--share-max", "2", *options)
        assert result.returncode == 0, result.stderr
    data, one = read_run(tmp_path / "ablation4.h5"), read_run(tmp_path / "ablation1.h5")
    assert data["final/policy_parameters"].shape[0] == 8
    for name in ("final/policy_parameters", "iterations/member_return", "final/eval_returns"):
        np.testing.assert_array_equal(data[name], one[name], err_msg=name)
    np.testing.assert_array_equal(data["breeding/parent_pairs"], one["breeding/parent_pairs"])
    sizes = data["iterations/share_set_size"]
    np.testing.assert_array_equal(sizes, 3 if "M" in components else 1)
    pairs = data["breeding/parent_pairs"]
    before = data["breeding/member_return_before"]
    fittest = np.stack([select_fittest(b) for b in before])
    if "S" in components:
        np.testing.assert_array_equal(pairs, fittest)
    else:  # random couples: not the fittest ones (with overwhelming probability)
        assert not np.array_equal(pairs, fittest)
    if "C" not in components:  # copies of the fitter parent, no crossover rollouts
        assert np.all(np.isnan(data["breeding/imitation_loss"]))
        assert data["iterations/env_steps"][-1] == 3 * 8 * 64


def select_fittest(member_returns):
    from gpo_mpi import select
    return select.fittest_pairs(select.performance_fitness(member_returns), len(member_returns))


def test_a_user_environment_class_trains(mpirun, tmp_path):
    """`--env package.module:EnvClass` with keyword arguments, on 2 ranks, then evaluated."""
    out = tmp_path / "user.h5"
    user_path = {"PYTHONPATH": str(Path(__file__).parent)}
    result = mpirun(2, [gpo_mpi_command(), *TINY, "--env", "user_envs:ReachTarget", "--env-kwargs",
                        '{"dim": 3, "target": 0.25}', "--population", "2", "--rounds", "2", "--total-steps", "2048",
                        "--expert-steps", "64", "--dagger-iterations", "1", "--dagger-steps", "64",
                        "--selector-epochs", "2", "--out", str(out)], timeout=240, env=user_path)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as run_file:
        assert json.loads(run_file.attrs["config"])["env_kwargs"] == {"dim": 3, "target": 0.25}
        assert json.loads(run_file["config"].attrs["env_kwargs"]) == {"dim": 3, "target": 0.25}
        # dim 3 reached the class: 3 inputs and 3 outputs around two hidden layers of 64
        assert run_file["final/policy_parameters"].shape == (2, 3 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3 + 3)
        assert np.all(np.isfinite(run_file["iterations/member_return"][-1]))
        assert len(run_file["breeding/parent_pairs"]) == 1
    evaluation = subprocess.run([gpo_mpi_command(), "eval", str(out), "--episodes", "2"], capture_output=True,
                                text=True, timeout=120, env={**os.environ, **user_path})
    assert evaluation.returncode == 0, evaluation.stderr
    assert "on user_envs:ReachTarget, 2 episodes" in evaluation.stdout



@pytest.mark.parametrize("n_ranks, components", [(1, "CSM"), (2, "CSM"), (2, "SM")])
def test_each_child_starts_from_the_parent_the_record_names_fitter(mpirun, tmp_path, n_ranks, components):
    """The fitter parent's policy is what each child holds when crossover starts (child_init fitter), for the
    parent the run file records as fitter, and what a copy (no C) leaves it with: a child started from the
    other parent fails this."""
    import json
    out = tmp_path / "gpo.h5"
    result = mpirun(n_ranks, ["record_children.py", str(tmp_path), *TINY, *TINY_GPO, "--components", components,
                              "--out", str(out)], timeout=240)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for path in sorted(tmp_path.glob("children-*.jsonl"))
               for line in path.read_text().splitlines()]
    run = read_run(out)
    pairs, fitter = run["breeding/parent_pairs"], run["breeding/fitter_parent"]
    assert len(records) == pairs.shape[0] * pairs.shape[1] == 8  # 2 breedings of 4 children
    seen = {}
    for record in records:
        member = record["member"]
        round_index = seen[member] = seen.get(member, -1) + 1  # a member's records come round by round
        pair = list(pairs[round_index, member])
        assert record["fitter"] == pair.index(fitter[round_index, member])
        parents = [np.array(parameters) for parameters in record["parents"]]
        assert not np.array_equal(parents[0], parents[1])
        np.testing.assert_array_equal(np.array(record["child"]), parents[record["fitter"]])
        assert record["operator"] == ("state" if "C" in components else "copy")
        if record["operator"] == "copy":
            np.testing.assert_array_equal(np.array(record["child_after"]), parents[record["fitter"]])
        else:  # DAgger moved it
            assert not np.array_equal(np.array(record["child_after"]), parents[record["fitter"]])


# The defaults' path: full-batch epochs (minibatch 0) on each member's pooled rows, with share_rows (32 here) drawn
# afresh at every epoch out of the 192 foreign rows (share_epsilon inf: everyone shares), across breedings.
FULL_BATCH = [a for a in TINY if a not in ("--minibatch", "128")]
DEFAULTS_PATH = [*FULL_BATCH, "--population", "4", "--share-rows", "32", "--expert-steps", "64",
                 "--dagger-iterations", "2", "--dagger-steps", "32", "--selector-epochs", "2", "--dagger-epochs", "2"]


def test_gpo_at_full_batch_with_share_rows_draws_matches_one_process(mpirun, tmp_path):
    """2 rounds of 2 iterations at full batch, foreign rows drawn at every epoch, a breeding between: the same
    run, bit for bit, on 1, 2 and 4 ranks."""
    from test_resume import assert_same_run, run_file_contents  # (test_resume imports this module)
    arguments = [*DEFAULTS_PATH, "--rounds", "2", "--total-steps", str(4 * 256 + 4 * 128)]
    assert "--minibatch" not in arguments
    runs = {}
    for n_ranks in (1, 2, 4):
        result = mpirun(n_ranks, [gpo_mpi_command(), *arguments, "--out", str(tmp_path / f"{n_ranks}.h5")],
                        timeout=300)
        assert result.returncode == 0, result.stderr
        runs[n_ranks] = run_file_contents(tmp_path / f"{n_ranks}.h5")
    one = runs[1]
    np.testing.assert_array_equal(one["iterations/env_steps"], [256, 512, 512 + 512 + 256, 1536])
    np.testing.assert_array_equal(one["iterations/share_set_size"], 4)  # 3 x 64 foreign rows, 32 drawn
    assert one["breeding/child_return"].shape == (1, 4)
    for n_ranks in (2, 4):
        assert_same_run(runs[n_ranks], one)


def test_elites_at_normal_learning_rates_keep_their_whole_state_through_breeding_and_resume_exactly(mpirun,
                                                                                                   tmp_path):
    """--elites 1 at the default learning rates: across each breeding the elite's policy, critic, both Adam
    states, penalty weight and generator are what they were, the children are new; and the run stopped during
    the first breeding and again mid-round ends bit for bit as the uninterrupted one (2 ranks)."""
    import json
    from test_resume import assert_same_run, run_file_contents
    arguments = [*DEFAULTS_PATH, "--rounds", "3", "--elites", "1", "--total-steps", str(9 * 256 + 2 * 3 * 128)]
    whole = tmp_path / "whole.h5"
    result = mpirun(2, ["record_breeding.py", str(tmp_path), *arguments, "--out", str(whole)], timeout=300)
    assert result.returncode == 0, result.stderr
    records = {}
    for path in tmp_path.glob("breeding-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record.pop("round"), record.pop("member"), record.pop("moment")] = record
    assert len(records) == 2 * 4 * 2  # 2 breedings, 4 slots, before and after
    run = read_run(whole)
    pairs, fitter = run["breeding/parent_pairs"], run["breeding/fitter_parent"]
    for round_index in (0, 1):
        [elite] = [slot for slot in range(4) if pairs[round_index, slot].tolist() == [slot, slot]]
        assert elite == np.argmax(run["breeding/member_return_before"][round_index])
        assert fitter[round_index, elite] == elite
        for slot in range(4):
            before, after = records[round_index, slot, "before"], records[round_index, slot, "after"]
            if slot == elite:
                assert before == after, [k for k in before if before[k] != after[k]]
            else:  # a child: new networks, a fresh optimizer and generator
                assert before["policy"] != after["policy"] and before["generator"] != after["generator"]
        assert records[round_index, elite, "before"]["policy_adam"][0] >= 3 * 10  # Adam's steps: 10 an iteration
    stopped = tmp_path / "stopped.h5"
    for signal_at, resume, stopped_after in (("c", [], 3), ("4", ["--resume"], 5)):
        result = mpirun(2, ["interrupt.py", "1", signal_at, *arguments, "--out", str(stopped), *resume], timeout=300)
        assert result.returncode == 3, result.stderr
        with h5py.File(stopped) as run_file:
            assert len(run_file["iterations/env_steps"]) == stopped_after
    resumed = mpirun(2, [gpo_mpi_command(), *arguments, "--out", str(stopped), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(stopped), run_file_contents(whole))
