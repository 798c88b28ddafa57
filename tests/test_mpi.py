"""gpo_mpi.mpi under mpiexec with 2 and 4 ranks, against one-process results."""
import sys
import time

import numpy as np
import pytest

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
        np.testing.assert_allclose(got["statistics"], expected["statistics"], rtol=1e-12)
        assert bool(got["desync_detected"])


@pytest.mark.parametrize("n_ranks, failing_rank", [(2, 1), (4, 0), (4, 3)])
def test_exception_on_one_rank_ends_the_job(mpirun, n_ranks, failing_rank):
    start = time.monotonic()
    result = mpirun(n_ranks, ["raise_on_rank.py", str(failing_rank)], timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.0f} s to end"
    output = result.stdout + result.stderr
    assert f"[gpo-mpi rank {failing_rank}] uncaught exception" in output
    assert f"ValueError: deliberate failure on rank {failing_rank}" in output
    assert "barrier passed" not in output
