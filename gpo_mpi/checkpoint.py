"""Checkpoints inside the run file, and reading them back for --resume.

A checkpoint is the group /checkpoint of the run file: one pickled state per
rank (its members' networks, optimizers, penalty weights and minibatch
generators, and its samplers: environment snapshots, last observations,
unfinished episodes' returns, action noise generators, the selector's
episode record) and one shared state from rank 0 (position in the run,
counters, observation statistics, the return windows, the lengths of every
growing dataset). A resumed run therefore goes on with the very episodes
the stopped one was in. Environments that cannot be snapshotted
(gpo_mpi.snapshot) are restarted instead, at every checkpoint, from a seed
that depends only on the member and the iteration: then a resumed run goes
on identically only from a scheduled checkpoint.

Rank 0 writes it with the rows gathered since the last one, into a copy
of the run file that then replaces the original (`RunFileWriter.commit`),
so a kill during the write leaves the previous checkpoint whole.
"""
from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np

from .config import ConfigError, RunConfig, to_dict
from .runfile import open_run

GROUP = "checkpoint"


def write_group(run_file: h5py.File, shared_state: dict, rank_states: list[bytes]) -> None:
    """Put a checkpoint into an open run file, replacing the previous one."""
    if GROUP in run_file:
        del run_file[GROUP]
    group = run_file.create_group(GROUP)
    group.create_dataset("shared", data=np.void(pickle.dumps(shared_state)))
    for rank, blob in enumerate(rank_states):
        group.create_dataset(f"rank{rank}", data=np.void(blob))
    group.attrs["n_ranks"] = len(rank_states)


def read(path: str, config: RunConfig, n_ranks: int) -> tuple[dict, list[bytes]]:
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
            group = run_file[GROUP]
            shared = pickle.loads(group["shared"][()].tobytes())
            rank_states = [group[f"rank{rank}"][()].tobytes() for rank in range(n_ranks)]
        except Exception as error:  # damaged bytes can fail in any way while unpickled
            raise ConfigError(f"cannot resume: the checkpoint in {path} is damaged ({error})") from None
    return shared, rank_states

