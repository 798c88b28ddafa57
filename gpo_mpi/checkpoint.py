"""Checkpoints inside the run file, and reading them back for --resume.

A checkpoint is the group /checkpoint of the run file: one state per rank
(its members' networks, optimizers, penalty weights and minibatch
generators, and its samplers: environment snapshots, last observations,
unfinished episodes' returns, action noise generators, the selector's
episode record) and one shared state from rank 0 (position in the run,
counters, observation statistics, the return windows, the lengths of every
growing dataset), each stored by gpo_mpi.statefile: typed arrays under
checksums and a JSON layout, so reading a checkpoint runs no code. A
resumed run goes on with the very episodes the stopped one was in.
Environments that cannot be snapshotted (gpo_mpi.snapshot) are restarted
instead, at every checkpoint, from a seed that depends only on the member
and the iteration: then a resumed run goes on identically only from a
scheduled checkpoint.

Rank 0 writes it with the rows gathered since the last one, into a copy
of the run file that then replaces the original (`RunFileWriter.commit`),
so a kill during the write leaves the previous checkpoint whole.
"""
from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np

from . import statefile
from .config import ConfigError, RunConfig, to_dict
from .runfile import open_run, stored_config

GROUP = "checkpoint"


# ------------------------------------------------------------------ contents
@dataclasses.dataclass
class Position:
    """Where a run goes on from, and what every rank holds alike: the shared state's part from the rounds
    (the rest is the record's, record.Recorder.state)."""
    round_index: int
    step_in_round: int
    iteration: int
    env_steps: int
    share_sets: list
    normalizer: np.ndarray  # ObsNormalizer.state()
    elapsed: float  # wall time of the run so far

    @classmethod
    def of(cls, shared: dict) -> "Position":
        return cls(**{field.name: shared[field.name] for field in dataclasses.fields(cls)})


def shared_state(position: Position, record_state: dict) -> dict:
    """The checkpoint's shared state, stored once by rank 0."""
    return {**{field.name: getattr(position, field.name) for field in dataclasses.fields(position)},
            **record_state}


def rank_state(members, samplers, captures_environments: bool) -> dict:
    """One rank's own part: its distinct members' states and its samplers' (environments included when
    they can be snapshotted)."""
    return dict(members=[member.state() for member in members],
                samplers=[sampler.state(captures_environments) for sampler in samplers])


def load_rank_state(state: dict, members, samplers) -> None:
    """Inverse of `rank_state`, into the rank's freshly made members and samplers (raises whatever a damaged
    or foreign state makes loading raise)."""
    if "samplers" not in state:
        raise ConfigError("it is from an older gpo-mpi")
    for member, member_state in zip(members, state["members"], strict=True):
        member.load_state(member_state)
    for sampler, sampler_state in zip(samplers, state["samplers"], strict=True):
        sampler.load_state(sampler_state)


def member_states(path: str, shared: dict, rank_states: list[dict], n_policies: int
                  ) -> tuple[list[dict], np.ndarray, int]:
    """Every member's state in member order, the observation statistics and the iteration of a checkpoint
    (for the tools, which need no samplers); ConfigError (one line) where it is damaged."""
    try:
        states = {member["index"]: member for state in rank_states for member in state["members"]}
        return [states[index] for index in range(n_policies)], shared["normalizer"], int(shared["iteration"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"the checkpoint in {path} is damaged ({type(error).__name__}: {error})") from None


def write_group(run_file: h5py.File, shared_state: dict, rank_states: list[dict]) -> None:
    """Put a checkpoint into an open run file, replacing the previous one."""
    if GROUP in run_file:
        del run_file[GROUP]
    group = run_file.create_group(GROUP)
    statefile.write(group, "shared", shared_state)
    for rank, state in enumerate(rank_states):
        statefile.write(group, f"rank{rank}", state)
    group.attrs["n_ranks"] = len(rank_states)


def read_group(path: str, run_file: h5py.File) -> tuple[dict, list[dict]]:
    """The shared state and every rank's state of the run file's checkpoint; ConfigError (one line) for one
    that is missing, damaged, or pickled by an older gpo-mpi."""
    if GROUP not in run_file or not isinstance(run_file[GROUP], h5py.Group):
        raise ConfigError(f"{path} holds no checkpoint")
    group = run_file[GROUP]
    if isinstance(group.get("shared"), h5py.Dataset):  # statefile writes a group
        raise ConfigError(f"the checkpoint in {path} was pickled by an earlier gpo-mpi; this version does not "
                          f"read it, because reading pickle can run code (docs/checkpoints.md)")
    try:
        n_ranks = int(group.attrs["n_ranks"])
        if not 0 < n_ranks <= 1 << 20:
            raise ValueError(f"n_ranks {n_ranks}")
        shared = statefile.read(group, "shared")
        rank_states = [statefile.read(group, f"rank{rank}") for rank in range(n_ranks)]
        if not isinstance(shared, dict) or not all(isinstance(state, dict) for state in rank_states):
            raise ValueError("a state that is not a dict")
    except (statefile.StateFileError, KeyError, ValueError, TypeError, OSError) as error:
        raise ConfigError(f"the checkpoint in {path} is damaged ({error})") from None
    return shared, rank_states


def read(path: str, config: RunConfig, n_ranks: int) -> tuple[dict, list[dict]]:
    """The checkpoint in a run file, after checking that it belongs to this run.

    Raises ConfigError (one line) for a file that is missing, not HDF5, not
    a gpo-mpi run file, from another configuration or rank count, or
    without a checkpoint.
    """
    if not os.path.exists(path):
        raise ConfigError(f"cannot resume: run file {path} does not exist")
    with open_run(path, "cannot resume: ") as run_file:
        stored = json.loads(run_file.attrs["config"])
        wanted = json.loads(json.dumps(to_dict(config)))
        differing = sorted(name for name in set(stored) | set(wanted)
                           if name != "out" and stored.get(name) != wanted.get(name))
        if differing:
            details = ", ".join(f"{name} ({stored.get(name)!r} in the file, {wanted.get(name)!r} now)"
                                for name in differing)
            raise ConfigError(f"cannot resume: {path} was made with a different configuration: {details}")
        if int(run_file.attrs["n_ranks"]) != n_ranks:
            raise ConfigError(f"cannot resume: {path} was written by {int(run_file.attrs['n_ranks'])} ranks, "
                              f"this job has {n_ranks}")
        if "final" in run_file:
            raise ConfigError(f"cannot resume: the run in {path} is already complete")
        if GROUP not in run_file:
            raise ConfigError(f"cannot resume: {path} holds no checkpoint yet")
        try:
            shared, rank_states = read_group(path, run_file)
        except ConfigError as error:
            raise ConfigError(f"cannot resume: {error}") from None
    if len(rank_states) != n_ranks:
        raise ConfigError(f"cannot resume: the checkpoint in {path} is damaged (it holds {len(rank_states)} "
                          f"ranks' states for a run of {n_ranks})")
    return shared, rank_states


def kept(path: str) -> str:
    """What a run file holds to go on from, in words, for the line that ends a failed job."""
    try:
        with open_run(path) as run_file:
            if GROUP not in run_file:
                return f"{path} holds no checkpoint yet: start the run again"
            shared = statefile.read(run_file[GROUP], "shared")
            total = stored_config(run_file).iterations
            return (f"{path} keeps its checkpoint at iteration {shared['iteration']} of {total}: make room, then "
                    f"continue with --resume")
    except (ConfigError, statefile.StateFileError, KeyError, TypeError):
        return f"{path} could not be read back"
