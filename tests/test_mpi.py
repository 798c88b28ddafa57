"""gpo_mpi.mpi under mpiexec with 2 and 4 ranks, against one-process results."""
import sys

import numpy as np
import pytest

from conftest import seconds_since_failure

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "mpi_programs"))
from collectives import rank_data  # noqa: E402


@pytest.mark.parametrize("n_ranks", [2, 4])
def test_collectives_match_one_process(mpirun, tmp_path, n_ranks):
    result = mpirun(n_ranks, ["collectives.py", str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr

    contributions = [rank_data(rank, n_ranks) for rank in range(n_ranks)]
    expected = {
        "parameters": contributions[-1]["parameters"],  # broadcast from the last rank
        "rows_float": np.concatenate([c["rows_float"] for c in contributions]),
        "rows_int": np.concatenate([c["rows_int"] for c in contributions]),
        "counts_float": [len(c["rows_float"]) for c in contributions],
        "statistics": np.sum([c["statistics"] for c in contributions], axis=0),
    }
    assert expected["counts_float"][1] == 0  # one rank sends nothing
    for rank in range(n_ranks):
        got = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(got["parameters"], expected["parameters"])
        assert got["rows_float"].dtype == np.float32 and got["rows_float"].shape[1:] == (3, 2)
        np.testing.assert_array_equal(got["rows_float"], expected["rows_float"])
        np.testing.assert_array_equal(got["counts_float"], expected["counts_float"])
        assert got["rows_int"].dtype == np.int64
        np.testing.assert_array_equal(got["rows_int"], expected["rows_int"])
        np.testing.assert_array_equal(got["counts_int"], expected["counts_float"])
        # a sum over ranks: MPI may add in another order than numpy, so equal only to rounding
        np.testing.assert_allclose(got["statistics"], expected["statistics"], rtol=1e-12)
        assert bool(got["desync_detected"])
        # payload bytes this rank sent and received, per kind: [calls, sent, received]
        own, others = contributions[rank], contributions[:rank] + contributions[rank + 1:]
        rows_bytes = lambda c: c["rows_float"].nbytes + c["rows_int"].nbytes + 2 * 8  # and the two row counts
        expected_traffic = {
            "bcast": [1, 4000, 0] if rank == n_ranks - 1 else [1, 0, 4000],
            "allgatherv": [2, rows_bytes(own), sum(rows_bytes(c) for c in others)],
            "allreduce": [1, 32, 32], "scatterv": [0, 0, 0], "objects": [0, 0, 0], "neighbor_allgatherv": [0, 0, 0]}
        assert sorted(got["kinds"]) == sorted(expected_traffic)
        for kind, counts in zip(got["kinds"], got["traffic"]):
            assert counts.tolist() == expected_traffic[kind], kind


@pytest.mark.parametrize("n_ranks, failing_rank", [(2, 1), (4, 0), (4, 3)])
def test_exception_on_one_rank_ends_the_job(mpirun, n_ranks, failing_rank):
    result = mpirun(n_ranks, ["raise_on_rank.py", str(failing_rank)], timeout=60)
    assert result.returncode != 0
    # measured from the raise, not the start-up: the hook's 1 s pause, then Abort has the launcher end every
    # rank; 15 s holds at 4 times the load, and a rank left waiting would instead hang until the timeout
    ended_after = seconds_since_failure(result.stderr)
    assert ended_after < 15, f"the job took {ended_after:.0f} s to end after the exception"
    output = result.stdout + result.stderr
    assert f"[gpo-mpi rank {failing_rank}] uncaught exception" in output
    assert f"ValueError: deliberate failure on rank {failing_rank}" in output
    assert "barrier passed" not in output


def run_sharing(mpirun, n_ranks, epsilon, out_dir):
    out_dir.mkdir()
    result = mpirun(n_ranks, ["sharing.py", str(out_dir), epsilon], timeout=180)
    assert result.returncode == 0, result.stderr
    return [dict(np.load(out_dir / f"member{i}.npz")) for i in range(4)]


@pytest.mark.parametrize("n_ranks", [2, 4])
def test_data_sharing_pools_batches_and_matches_one_process(mpirun, tmp_path, n_ranks):
    one_process = run_sharing(mpirun, 1, "inf", tmp_path / "one")
    every = run_sharing(mpirun, n_ranks, "inf", tmp_path / "every")
    alone = run_sharing(mpirun, n_ranks, "0", tmp_path / "alone")
    all_obs = np.concatenate([m["own_obs"] for m in every])
    for i in range(4):
        # epsilon = inf: every member learns from the same pooled batch of all four
        np.testing.assert_array_equal(every[i]["members_read"], [0, 1, 2, 3])
        np.testing.assert_array_equal(every[i]["obs"], all_obs)
        np.testing.assert_array_equal(every[i]["own"], np.arange(256) // 64 == i)
        # epsilon = 0: only its own batch
        np.testing.assert_array_equal(alone[i]["members_read"], [i])
        np.testing.assert_array_equal(alone[i]["obs"], alone[i]["own_obs"])
        # the same as one process holding all four members
        for key in ("obs", "own", "members_read"):
            np.testing.assert_array_equal(every[i][key], one_process[i][key])
        for key in ("advantages", "weights", "kl"):  # bit for bit: no sum over ranks enters them
            np.testing.assert_array_equal(every[i][key], one_process[i][key], err_msg=key)
        np.testing.assert_array_equal(alone[i]["weights"], 1.0)
    kl = every[0]["kl"]
    np.testing.assert_array_equal(np.diag(kl), 0.0)
    assert np.all(kl[~np.eye(4, dtype=bool)] > 0)


@pytest.mark.parametrize("n_ranks", [2, 4])
def test_averaged_gradients_equal_the_full_batch_gradient(mpirun, tmp_path, n_ranks):
    result = mpirun(n_ranks, ["joint_gradients.py", str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    single = mpirun(1, ["joint_gradients.py", str(one_dir)], timeout=120)
    assert single.returncode == 0, single.stderr
    expected = np.load(one_dir / "rank0.npy")
    for rank in range(n_ranks):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_ranks, population", [(2, 4), (3, 4), (4, 4), (4, 8)])
def test_batch_exchange_gives_each_member_its_share_set(mpirun, tmp_path, n_ranks, population):
    """Data sharing's exchange: every member gets exactly the batches of its share set (as one process
    would hold them), in every mode, for empty, partial, asymmetric and full share sets; the graph
    exchange receives only from the ranks holding those batches."""
    from exchange import member_rows, share_set_cases
    result = mpirun(n_ranks, ["exchange.py", str(population), str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr
    from gpo_mpi.config import RunConfig
    slots = [list(RunConfig(population=population).member_slots(r, n_ranks)) for r in range(n_ranks)]
    row_bytes = member_rows(0).nbytes
    for rank in range(n_ranks):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for case, share_sets in share_set_cases(population).items():
            for mode in ("allgather", "graph", "auto"):
                for member in slots[rank]:
                    for j in share_sets[member]:
                        np.testing.assert_array_equal(got[f"{case}/{mode}/{member}/{j}"], member_rows(j))
            # bytes received in two calls: by Allgatherv every other rank's blocks (and row counts);
            # along the graph only the blocks of ranks holding members this rank's members read
            read_ranks = {r for member in slots[rank] for j in share_sets[member] for r in range(n_ranks)
                          if j in slots[r] and r != rank}
            others = population - len(slots[rank])
            graph_bytes = 2 * sum(len(slots[r]) * row_bytes + 8 for r in read_ranks)
            assert got[f"{case}/allgather/received"][0] == 2 * (others * row_bytes + 8 * (n_ranks - 1))
            assert got[f"{case}/graph/received"][-1] == graph_bytes
            assert got[f"{case}/graph/received"][0] == 0  # no Allgatherv along the graph
            # auto: the graph on more than 2 ranks where at most half of all rank pairs read each other
            pairs_read = sum(len({r for member in slots[reader] for j in share_sets[member] for r in range(n_ranks)
                                  if j in slots[r] and r != reader}) for reader in range(n_ranks))
            uses_graph = n_ranks > 2 and pairs_read <= n_ranks * (n_ranks - 1) // 2
            np.testing.assert_array_equal(got[f"{case}/auto/received"],
                                          got[f"{case}/{'graph' if uses_graph else 'allgather'}/received"])
        # share sets changing at every one of 2,101 calls: the last one's (asymmetric) blocks arrive
        for member in slots[rank]:
            for j in share_set_cases(population)["asymmetric"][member]:
                np.testing.assert_array_equal(got[f"changing/{member}/{j}"], member_rows(j))
