"""gpo_mpi.checkpoint in one process: a checkpoint written into a run file comes back whole, and every way a
file can fail to be this run's is one ConfigError line that names it."""
import dataclasses

import h5py
import numpy as np
import pytest
import torch

from gpo_mpi import checkpoint, statefile
from gpo_mpi.config import ConfigError, RunConfig
from gpo_mpi.runfile import RunFileWriter

CONFIG = RunConfig(population=2, total_steps=4096, batch_steps=64, out="first.h5")
SHARED = {"iteration": 5, "counters": [1, 2.5], "windows": np.arange(4.0)}


def rank_state(rank: int) -> dict:
    return {"rank": rank, "parameters": torch.full((3,), float(rank)), "generator": torch.Generator().manual_seed(
        rank).get_state()}


def run_with_checkpoint(tmp_path, n_states=2, n_ranks=2, shared=SHARED, config=CONFIG) -> str:
    path = str(tmp_path / "run.h5")
    writer = RunFileWriter(path, config, n_ranks)
    writer.commit(lambda run_file: checkpoint.write_group(run_file, shared, [rank_state(r) for r in range(n_states)]))
    return path


def edit(path: str, change) -> None:
    with h5py.File(path, "a") as run_file:
        change(run_file)


def test_a_checkpoint_comes_back_as_written_and_a_new_one_replaces_it(tmp_path):
    path = run_with_checkpoint(tmp_path, n_states=3, n_ranks=3)
    edit(path, lambda run_file: checkpoint.write_group(run_file, {**SHARED, "iteration": 6},
                                                       [rank_state(r) for r in (7, 8)]))
    edit(path, lambda run_file: run_file.attrs.modify("n_ranks", 2))
    shared, ranks = checkpoint.read(path, CONFIG, 2)
    assert shared["iteration"] == 6 and shared["counters"] == [1, 2.5]
    np.testing.assert_array_equal(shared["windows"], np.arange(4.0))
    assert [state["rank"] for state in ranks] == [7, 8]  # the third rank's state of the old one is gone
    assert torch.equal(ranks[1]["parameters"], torch.full((3,), 8.0))
    assert torch.equal(ranks[0]["generator"], torch.Generator().manual_seed(7).get_state())
    with h5py.File(path, "r") as run_file:
        assert sorted(run_file["checkpoint"]) == ["rank0", "rank1", "shared"]


def test_the_run_file_may_have_another_name_but_nothing_else_may_differ(tmp_path):
    path = run_with_checkpoint(tmp_path)
    shared, _ = checkpoint.read(path, dataclasses.replace(CONFIG, out="moved.h5"), 2)
    assert shared["iteration"] == 5
    other = dataclasses.replace(CONFIG, seed=3, policy_lr=1e-3)
    with pytest.raises(ConfigError) as error:
        checkpoint.read(path, other, 2)
    assert str(error.value) == (f"cannot resume: {path} was made with a different configuration: "
                                f"policy_lr ({CONFIG.policy_lr!r} in the file, 0.001 now), seed (0 in the file, 3 now)")


def foreign_hdf5(path):
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros(3)


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot resume: run file {path} does not exist"),
    ("text", "cannot resume: {path} is not a readable HDF5 file"),
    ("foreign", "cannot resume: {path} is not a gpo-mpi run file"),
    ("ranks", "cannot resume: {path} was written by 2 ranks, this job has 4"),
    ("complete", "cannot resume: the run in {path} is already complete"),
    ("no checkpoint", "cannot resume: {path} holds no checkpoint yet"),
    ("checkpoint a dataset", "cannot resume: {path} holds no checkpoint"),
    ("pickled", "cannot resume: the checkpoint in {path} was pickled by an earlier gpo-mpi; this version does not "
                "read it, because reading pickle can run code (docs/checkpoints.md)"),
    ("no rank count", "cannot resume: the checkpoint in {path} is damaged ("),
    ("zero ranks", "cannot resume: the checkpoint in {path} is damaged (n_ranks 0)"),
    ("a million ranks", "cannot resume: the checkpoint in {path} is damaged (n_ranks 1048577)"),
    ("a rank missing", "cannot resume: the checkpoint in {path} is damaged ("),
    ("a list for a state", "cannot resume: the checkpoint in {path} is damaged (a state that is not a dict)"),
    ("fewer states than ranks", "cannot resume: the checkpoint in {path} is damaged (it holds 1 ranks' states for "
                                "a run of 2)"),
])
def test_each_file_that_is_not_this_runs_checkpoint_is_named_in_one_line(tmp_path, case, message):
    path = run_with_checkpoint(tmp_path)
    n_ranks = 4 if case == "ranks" else 2
    changes = {
        "complete": lambda f: f.create_group("final"),
        "no checkpoint": lambda f: f.__delitem__("checkpoint"),
        "checkpoint a dataset": lambda f: (f.__delitem__("checkpoint"), f.create_dataset("checkpoint", data=1)),
        "pickled": lambda f: (f["checkpoint"].__delitem__("shared"), f["checkpoint"].create_dataset(
            "shared", data=np.void(b"\x80\x04pickle"))),
        "no rank count": lambda f: f["checkpoint"].attrs.__delitem__("n_ranks"),
        "zero ranks": lambda f: f["checkpoint"].attrs.modify("n_ranks", 0),
        "a million ranks": lambda f: f["checkpoint"].attrs.modify("n_ranks", (1 << 20) + 1),
        "a rank missing": lambda f: f["checkpoint"].__delitem__("rank1"),
        "a list for a state": lambda f: (f["checkpoint"].__delitem__("rank1"),
                                         statefile.write(f["checkpoint"], "rank1", [1, 2])),
        "fewer states than ranks": lambda f: (f["checkpoint"].__delitem__("rank1"),
                                              f["checkpoint"].attrs.modify("n_ranks", 1)),
    }
    if case == "missing":
        path = str(tmp_path / "nothing.h5")
    elif case == "text":
        (tmp_path / "run.h5").write_text("not a run\n")
    elif case == "foreign":
        foreign_hdf5(path)
    elif case in changes:
        edit(path, changes[case])
    with pytest.raises(ConfigError) as error:
        checkpoint.read(path, CONFIG, n_ranks)
    text = str(error.value)
    assert text.startswith(message.format(path=path)) and "\n" not in text, text


def test_the_line_that_ends_a_failed_job_says_what_the_file_keeps(tmp_path):
    path = run_with_checkpoint(tmp_path)
    assert checkpoint.kept(path) == (f"{path} keeps its checkpoint at iteration 5 of {CONFIG.iterations}: make "
                                     f"room, then continue with --resume")
    edit(path, lambda f: f.__delitem__("checkpoint"))
    assert checkpoint.kept(path) == f"{path} holds no checkpoint yet: start the run again"
    damaged = run_with_checkpoint(tmp_path, shared={"counters": [1]})  # no iteration
    assert checkpoint.kept(damaged) == f"{damaged} could not be read back"
    foreign_hdf5(path)
    assert checkpoint.kept(path) == f"{path} could not be read back"
    (tmp_path / "text.h5").write_text("not a run\n")
    assert checkpoint.kept(str(tmp_path / "text.h5")) == f"{tmp_path / 'text.h5'} could not be read back"
