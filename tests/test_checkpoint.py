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


def test_a_field_that_only_one_side_has_is_a_different_configuration(tmp_path):
    """A run file from a version without some field (or with one this version lacks) is not resumed."""
    import json
    path = run_with_checkpoint(tmp_path)
    edit(path, lambda f: f.attrs.modify("config", json.dumps({**{k: v for k, v in json.loads(f.attrs["config"]).items()
                                                                 if k != "share_rows"}, "retired": 1})))
    with pytest.raises(ConfigError) as error:
        checkpoint.read(path, CONFIG, 2)
    assert str(error.value).endswith(f"a different configuration: retired (1 in the file, None now), share_rows "
                                     f"(None in the file, {CONFIG.share_rows} now)")


def test_a_ranks_members_and_samplers_come_back_from_their_state(tmp_path):
    """rank_state / load_rank_state through the run file: networks, optimizers, beta, generator and the
    sampler's environments, last observations and episode returns; a member in the wrong slot is refused."""
    from gpo_mpi.learner import Member
    from gpo_mpi.rollout import EnvSpec, ObsNormalizer, Sampler
    config = RunConfig(env="Pendulum-v1", population=2, batch_steps=32)
    env = EnvSpec("Pendulum-v1", horizon=20)

    def rank_parts():
        members = [Member.create(i, 3, 1, config, seed=i) for i in range(2)]
        samplers = [Sampler(env, 2, 10 + i, f"member {i}") for i in range(2)]
        return members, samplers
    members, samplers = rank_parts()
    normalizer = ObsNormalizer(3, 10.0)
    for member, sampler in zip(members, samplers):
        sampler.sample(member.policy, normalizer, 30)  # mid-episode: horizon 20, 15 steps per environment
        member.beta = 0.25 + member.index
    path = str(tmp_path / "run.h5")
    RunFileWriter(path, CONFIG, 1).commit(lambda run_file: checkpoint.write_group(
        run_file, checkpoint.shared_state(checkpoint.Position(1, 3, 9, 999, [np.array([0, 1])], normalizer.state(),
                                                              12.5), {"windows": []}),
        [checkpoint.rank_state(members, samplers, captures_environments=True)]))
    shared, (state,) = checkpoint.read(path, CONFIG, 1)
    position = checkpoint.Position.of(shared)
    assert (position.round_index, position.step_in_round, position.iteration, position.env_steps,
            position.elapsed) == (1, 3, 9, 999, 12.5) and shared["windows"] == []
    np.testing.assert_array_equal(position.normalizer, normalizer.state())
    loaded_members, loaded_samplers = rank_parts()
    checkpoint.load_rank_state(state, loaded_members, loaded_samplers)
    for a, b in zip(members, loaded_members):
        assert a.beta == b.beta and torch.equal(a.generator.get_state(), b.generator.get_state())
        for p, q in zip(a.policy.parameters(), b.policy.parameters()):
            assert torch.equal(p, q)
    for a, b in zip(samplers, loaded_samplers):  # the same next batch, bit for bit
        batch_a, _ = a.sample(members[0].policy, ObsNormalizer(3, 10.0), 10)
        batch_b, _ = b.sample(members[0].policy, ObsNormalizer(3, 10.0), 10)
        np.testing.assert_array_equal(batch_a.obs, batch_b.obs)
    swapped, _ = rank_parts()
    with pytest.raises(ConfigError, match="checkpoint holds member 0 where member 1 was expected"):
        checkpoint.load_rank_state(state, swapped[::-1], samplers)
    with pytest.raises(ConfigError, match="^it is from an older gpo-mpi$"):
        checkpoint.load_rank_state({"members": state["members"]}, loaded_members, loaded_samplers)
    for short in ({**state, "members": state["members"][:1]}, {**state, "samplers": state["samplers"][:1]}):
        with pytest.raises(ValueError, match="shorter"):  # a state for fewer slots than the rank holds
            checkpoint.load_rank_state(short, *rank_parts())
    # the tools' view: every member's state in member order, across ranks
    halves = [{"members": [state["members"][1]]}, {"members": [state["members"][0]]}]
    ordered, statistics, iteration = checkpoint.member_states(path, shared, halves, 2)
    assert [m["index"] for m in ordered] == [0, 1] and iteration == 9
    np.testing.assert_array_equal(statistics, normalizer.state())
    with pytest.raises(ConfigError, match=rf"^the checkpoint in {path} is damaged \(KeyError: 1\)$"):
        checkpoint.member_states(path, shared, halves[1:], 2)
