"""The HDF5 run file, written by rank 0 only.

Layout (m = number of policies: the population, or 1 for Joint; I iterations and R rounds so far):

    /                      attrs: format, format_version, gpo_mpi_version, source_commit, config (JSON), n_ranks
    /config                attrs: one per config field
    /iterations/env_steps        (I,)      int64    environment steps of the whole run after the iteration
    /iterations/wall_time        (I,)      float64  seconds since the run started
    /iterations/round            (I,)      int64    GPO round of the iteration
    /iterations/member_return    (I, m)    float64  mean return of each member's last 10 training episodes (NaN before its first)
    /iterations/member_episodes  (I, m)    int64    training episodes each member finished in the iteration
    /iterations/<statistic>      (I, m)    float64  per member, the iteration's update (NaN where not measured):
        share_set_size          |S_i|: members whose batches member i learned from (itself included)
        policy_kl               KL[pi_old || pi_new] of the update, exact, on its own states
        effective_sample_size   Kish's effective sample size of the rows under their importance
                                weights (own batch alone: batch_steps)
        policy_loss, value_loss the policy's and critic's loss, mean over the update's gradient steps
        entropy                 the policy's entropy after the update, mean over its own states
        approx_kl               SB3's and CleanRL's estimate of KL[pi_old || pi_new] ((r - 1) - log r)
                                on its own rows after the update
        explained_variance      of the returns by the critic's values before the update (own rows)
        episode_length          mean length of its last 10 training episodes
        and the mutation algorithm's own (gpo_mpi/mutations/): beta (ppo: the KL-penalty weight after
        the iteration), clip_fraction (ppo-clip: the share of rows whose ratio left the clip range)
    /rounds/kl_matrix            (R, m, m) float64  KL[pi_i || pi_j] on shared states at the round's start (gpo)
    /rounds/share_set_sizes      (R, m)    int64    |S_i| at the round's first iteration (gpo; later ones: iterations/)
    /rounds/time_mutate, time_select, time_crossover, time_communication, time_evaluation
                                 (R,)      float64  rank 0's wall time per phase in the round (seconds;
                                                    communication is time inside collectives, not in the others)
    /rounds/collective_calls, bytes_sent, bytes_received
                                 (R, ranks, K) int64 per rank and collective kind (attr collective_kinds:
                                                    allgatherv, scatterv, allreduce, bcast, objects,
                                                    neighbor_allgatherv), the calls and the payload bytes it
                                                    sent to and received from other ranks since the previous
                                                    round's record (round 1: since start-up)
    /breeding/...                (B, ...)           one row per selection and crossover (B = R - 1, gpo):
        member_return_before (B, m)     every member's return at the end of the round's mutation
        selection_kl_matrix  (B, m, m)  KL matrix measured for selection
        parent_pairs         (B, m, 2)  the parents of child i (child i takes member slot i)
        fitter_parent        (B, m)     the parent child i starts from (-1: a run file from before it was recorded)
        pair_fitness         (B, m)     fitness of each chosen pair
        parent_returns       (B, m, 2)  the two parents' returns
        child_return         (B, m)     mean return of each child's first n_envs training episodes (its
                                        environments restart at its birth; NaN if none finished in its round)
        selector_loss, imitation_loss, second_parent_share (B, m): state-space crossover diagnostics
    /final/policy_parameters     (m, P)    float32  each member's flat policy parameters at the end
    /final/critic_parameters     (m, C)    float32  each member's flat critic parameters at the end
    /final/best_policy_parameters (P,)     float32  the best member's policy (attr final.best_member: the best
                                                    by evaluation, or by training returns with eval_episodes 0)
    /final/eval_returns          (m, E)    float64  each policy's returns over eval_episodes whole episodes with
                                                    its mean action (absent with eval_episodes 0)
    /final/obs_normalizer        (1 + 2 d,) float64 observation statistics: count, mean (d), variance (d)
    /evaluations/env_steps, returns (E,), (E, m, episodes): evaluations during training (eval_every) and the
                                                    final one; a row of periodic_eval_episodes < eval_episodes
                                                    episodes is padded with NaN
    /evaluations/evaluation_steps (E,)     int64    environment steps each evaluation took (all policies; not in
                                                    env_steps and not counted in the budget)
    /final/best_evaluated_policy_parameters, best_evaluated_obs_normalizer: the best policy they found

Beside it, RUN.progress.csv holds the per-iteration table (one row per iteration) for tools without h5py.

The file changes only by atomic replacement (copy, write, rename) at every
checkpoint and at the end, so it is always whole: a running or killed run's
file can be read with h5py, and shows the run up to its last checkpoint.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import warnings
from collections import defaultdict
from contextlib import contextmanager

import h5py
import numpy as np

from . import __version__
from .config import ConfigError, RunConfig, to_dict

FORMAT = "gpo-mpi run file"
FORMAT_VERSION = 1


def source_commit() -> str:
    """The git commit of the gpo_mpi source that runs ("+changes" when it differs from the commit), or
    "unknown" outside a git checkout (an installed wheel): which code made a run file."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", package_dir, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        changed = subprocess.run(["git", "-C", package_dir, "status", "--porcelain", "--", "."],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


@contextmanager
def damage_is_config_error(path: str, error_prefix: str = ""):
    """Inside it, what a damaged or crafted file makes h5py, numpy or json raise is one ConfigError line:
    every read of a run file goes through here (open_run), so no tool answers such a file with a traceback."""
    try:
        yield
    except ConfigError:
        raise
    except OSError as error:  # HDF5 could not read a part: a checksum, a cut, a broken structure
        raise ConfigError(f"{error_prefix}{path} is damaged: a part cannot be read, a checksum does not match or "
                          f"the file is cut short ({_first_line(error)})") from None
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RecursionError) as error:
        raise ConfigError(f"{error_prefix}{path} is damaged or not from this gpo-mpi ({type(error).__name__}: "
                          f"{_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def open_run(path: str, error_prefix: str = ""):
    """A gpo-mpi run file, open for reading, as a context manager; ConfigError (one line, after
    `error_prefix`) for a file that is not readable HDF5 or not a run file, and for anything that reading
    a damaged one raises inside the `with`. Every reader of run files opens them here."""
    try:
        run_file = h5py.File(path, "r")
    except OSError as error:
        raise ConfigError(f"{error_prefix}{path} is not a readable HDF5 file ({_first_line(error)})") from None
    try:
        with damage_is_config_error(path, error_prefix):
            if run_file.attrs.get("format") != FORMAT:
                raise ConfigError(f"{error_prefix}{path} is not a gpo-mpi run file")
            yield run_file
    finally:
        run_file.close()


def stored_config(run_file: h5py.File) -> RunConfig:
    """The configuration a run was made with (KeyError, TypeError or ValueError where it is damaged)."""
    fields = json.loads(run_file.attrs["config"])
    if not isinstance(fields, dict):
        raise ValueError("the stored configuration is not a mapping")
    return RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def info(path: str) -> str:
    """Config, progress and best member of a run, as text (`gpo-mpi info`: needs neither torch nor MPI)."""
    with damage_is_config_error(path):  # what is read is also used after the file is closed
        return _info(path)


def _info(path: str) -> str:
    with open_run(path) as run_file:
        config = stored_config(run_file)
        steps = run_file["iterations/env_steps"][()]
        returns = run_file["iterations/member_return"][()]
        complete = "final" in run_file
        best = int(run_file["final"].attrs["best_member"]) if complete else None
        evaluation = run_file["final/eval_returns"][()] if complete and "final/eval_returns" in run_file else None
        evaluated = "evaluations/env_steps" in run_file and len(run_file["evaluations/env_steps"]) > 0
        evaluation_steps = run_file["evaluations/env_steps"][()] if evaluated else None
        evaluation_returns = run_file["evaluations/returns"][()] if evaluated else None
        n_ranks = int(run_file.attrs["n_ranks"])
        version = run_file.attrs.get("gpo_mpi_version", "?")
        commit = run_file.attrs.get("source_commit", "unrecorded")
    lines = [f"{path}: {config.algo} on {config.env}, population {config.population}, {n_ranks} rank(s), "
             f"seed {config.seed}, made by gpo-mpi {version} (source commit {commit})",
             f"progress: {steps[-1] if len(steps) else 0:,} of {config.total_steps:,} environment steps, "
             f"{len(steps)} of {config.iterations} iterations, "
             + ("complete" if complete else "not complete (resume with --resume)")]
    if len(steps):
        last = returns[-1]
        finite = np.isfinite(last)
        if finite.any():
            leader = int(np.nanargmax(last))
            lines.append(f"returns (last 10 training episodes): best member {leader} at {last[leader]:.1f}, "
                         f"mean {np.nanmean(last):.1f}")
    if evaluation is not None:
        lines.append(f"best member at the end: {best}, by the final evaluation ({evaluation.shape[1]} episodes with "
                     f"the mean action): {evaluation[best].mean():.1f}; members' mean {evaluation.mean():.1f}")
    elif complete:
        lines.append(f"best member at the end: {best} (by the last training episodes)")
    if evaluated:
        lines.extend(evaluation_table(evaluation_steps, evaluation_returns))
    lines.append("config: " + ", ".join(f"{k}={v}" for k, v in json.loads(json.dumps(config.__dict__)).items()))
    return "\n".join(lines)


def evaluation_table(steps: np.ndarray, returns: np.ndarray, most: int = 20) -> list[str]:
    """`info`'s lines for the evaluations during training (E,), (E, m, episodes; NaN-padded): at each, the
    member with the best mean return, that return and the members' mean; the last `most` of them."""
    means = np.nanmean(returns, axis=2)
    shown = range(max(0, len(steps) - most), len(steps))
    header = ("env steps", "best member", "its return", "members' mean")
    lines = [f"evaluations (mean action; {'last ' + str(most) + ' of ' if len(steps) > most else ''}"
             f"{len(steps)}):", "  {:>12}  {:>11}  {:>10}  {:>13}".format(*header)]
    for row in shown:
        leader = int(np.argmax(means[row]))
        lines.append(f"  {int(steps[row]):>12,}  {leader:>11}  {means[row, leader]:>10.1f}  {means[row].mean():>13.1f}")
    return lines


class RunFileWriteError(Exception):
    """The run file could not be written; the file on disk is as it was before the write."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class RunFileWriter:
    """Rank 0's writer of the run file, which only ever changes by atomic replacement.

    Rows are kept in memory as they come (`append`); `commit` copies the
    file, adds the pending rows (and a checkpoint, or the final
    parameters) to the copy and renames the copy over the original. A kill
    at any moment therefore leaves a whole file: the last committed one.
    With `lengths` given, an existing file is cut back to a checkpoint's
    dataset lengths instead of a new one being made. `collective_kinds`
    names the kinds of MPI traffic counted per round (gpo_mpi.mpi's),
    `member_statistics` the statistics recorded per member and iteration.
    """

    def __init__(self, path: str, config: RunConfig, n_ranks: int, lengths: dict | None = None,
                 collective_kinds: tuple[str, ...] = (), member_statistics: tuple[str, ...] = ()):
        self.path = path
        self.pending: dict[str, list] = defaultdict(list)
        m = config.n_policies
        self._growing = {
            "iterations/env_steps": ((), np.int64), "iterations/wall_time": ((), np.float64),
            "iterations/round": ((), np.int64), "iterations/member_return": ((m,), np.float64),
            "iterations/member_episodes": ((m,), np.int64),
            **{f"iterations/{name}": ((m,), np.float64) for name in member_statistics},
            "rounds/kl_matrix": ((m, m), np.float64),
            "rounds/share_set_sizes": ((m,), np.int64),
            "rounds/time_mutate": ((), np.float64), "rounds/time_select": ((), np.float64),
            "rounds/time_crossover": ((), np.float64), "rounds/time_communication": ((), np.float64),
            "rounds/time_evaluation": ((), np.float64),
            "breeding/member_return_before": ((m,), np.float64), "breeding/selection_kl_matrix": ((m, m), np.float64),
            "breeding/parent_pairs": ((m, 2), np.int64), "breeding/fitter_parent": ((m,), np.int64),
            "breeding/pair_fitness": ((m,), np.float64),
            "breeding/parent_returns": ((m, 2), np.float64), "breeding/child_return": ((m,), np.float64),
            "breeding/selector_loss": ((m,), np.float64), "breeding/imitation_loss": ((m,), np.float64),
            "breeding/second_parent_share": ((m,), np.float64),
            "evaluations/env_steps": ((), np.int64), "evaluations/evaluation_steps": ((), np.int64),
            "evaluations/returns": ((m, max(1, config.eval_episodes)), np.float64),
        }
        if collective_kinds:  # MPI traffic per round, rank and kind (none without kinds: a writer outside a run)
            self._growing.update({name: ((n_ranks, len(collective_kinds)), np.int64) for name in
                                  ("rounds/collective_calls", "rounds/bytes_sent", "rounds/bytes_received")})
        if lengths is not None:
            with self._replacing() as run_file:
                present = {name: length for name, length in lengths.items() if name in run_file}
                for name, length in present.items():
                    run_file[name].resize(length, axis=0)
                for name, (row_shape, dtype) in self._growing.items():
                    if name not in run_file:  # a run file from an older version: the rows it lacks read -1 or NaN
                        group_length = max((length for other, length in present.items()
                                            if other.split("/")[0] == name.split("/")[0]), default=0)
                        run_file.create_dataset(name, shape=(group_length,) + row_shape,
                                                maxshape=(None,) + row_shape, dtype=dtype, chunks=(64,) + row_shape,
                                                fillvalue=-1 if np.issubdtype(dtype, np.integer) else np.nan)
            return
        with self._or_nothing(), h5py.File(self.path + ".tmp", "w") as run_file:
            run_file.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, gpo_mpi_version=__version__,
                                  source_commit=source_commit(), config=json.dumps(to_dict(config)), n_ranks=n_ranks,
                                  collective_kinds=list(collective_kinds))
            config_group = run_file.create_group("config")
            for name, value in to_dict(config).items():
                if isinstance(value, dict):
                    value = json.dumps(value)
                config_group.attrs[name] = np.array(value) if isinstance(value, tuple) else value
            for name, (row_shape, dtype) in self._growing.items():
                run_file.create_dataset(name, shape=(0,) + row_shape, maxshape=(None,) + row_shape, dtype=dtype,
                                        chunks=(64,) + row_shape)
        with self._or_nothing():
            self._replace()

    @contextmanager
    def _replacing(self):
        """An open copy of the run file; on leaving, it replaces the original. Where the copy cannot be
        written (a full disk, an I/O error, a read-only file system), the original is left as it was and
        RunFileWriteError says why."""
        with self._or_nothing():
            shutil.copyfile(self.path, self.path + ".tmp")
            with h5py.File(self.path + ".tmp", "a") as run_file:
                yield run_file
            self._replace()

    @contextmanager
    def _or_nothing(self):
        """A write of the run file's copy that either replaces the run file or leaves it untouched (and the
        copy removed), raising RunFileWriteError."""
        try:
            yield
        except OSError as error:
            try:
                os.remove(self.path + ".tmp")
            except OSError:
                pass
            raise RunFileWriteError(f"cannot write {self.path} ({error.strerror or _first_line(error)})",
                                    self.path) from None

    def _replace(self) -> None:
        with open(self.path + ".tmp", "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.path + ".tmp", self.path)

    def append(self, **rows) -> None:
        """Queue one row for each named dataset (`iterations/beta=...` spelled `iterations__beta`)."""
        for key, row in rows.items():
            self.pending[key.replace("__", "/")].append(row)

    def lengths(self) -> dict:
        """Rows of every growing dataset once the pending ones are written."""
        with h5py.File(self.path, "r") as run_file:
            return {name: len(run_file[name]) + len(self.pending.get(name, ())) for name in self._growing}

    def commit(self, write_extra=None) -> None:
        """Write the pending rows, and whatever `write_extra(run_file)` adds, by atomic replacement;
        then the progress CSV from the new file."""
        with self._replacing() as run_file:
            for name, rows in self.pending.items():
                dataset = run_file[name]
                dataset.resize(len(dataset) + len(rows), axis=0)
                dataset[len(dataset) - len(rows):] = np.asarray(rows, dtype=dataset.dtype)
            if write_extra is not None:
                write_extra(run_file)
        self.pending.clear()
        with h5py.File(self.path, "r") as run_file:
            write_progress_csv(run_file, progress_csv_path(self.path))

    def commit_final(self, policy_parameters: np.ndarray, critic_parameters: np.ndarray, best_member: int,
                     normalizer_state: np.ndarray, eval_returns: np.ndarray | None = None,
                     best_evaluated: dict | None = None) -> None:
        """Write the `final` group (every member's networks, the best member, the evaluation) in
        one atomic replacement of the file."""
        def write_final(run_file):
            final = run_file.create_group("final")

            def checksummed(name: str, data: np.ndarray) -> h5py.Dataset:  # a flipped bit is reported, not used
                return final.create_dataset(name, data=data, fletcher32=True, chunks=np.shape(data))
            if eval_returns is not None:
                final.create_dataset("eval_returns", data=eval_returns)
            if best_evaluated is not None:  # the best policy of every evaluation, with its observation statistics
                best = checksummed("best_evaluated_policy_parameters", best_evaluated["parameters"])
                checksummed("best_evaluated_obs_normalizer", best_evaluated["normalizer"])
                best.attrs.update(member=best_evaluated["member"], env_steps=best_evaluated["env_steps"],
                                  mean_return=best_evaluated["mean_return"])
            checksummed("obs_normalizer", normalizer_state)
            checksummed("policy_parameters", policy_parameters)
            checksummed("critic_parameters", critic_parameters)
            checksummed("best_policy_parameters", policy_parameters[best_member])
            final.attrs["best_member"] = best_member
        self.commit(write_final)


def evaluation_columns(run_file: h5py.File, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration, the best and mean member's mean evaluation return where an evaluation followed it
    (the last iteration at the evaluation's env_steps), NaN elsewhere."""
    best, mean = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    if "evaluations/env_steps" in run_file and len(run_file["evaluations/env_steps"]):
        member_means = np.nanmean(run_file["evaluations/returns"][()], axis=2)  # NaN: periodic_eval_episodes
        row_at = {int(step): row for row, step in enumerate(steps)}  # env_steps rises every iteration
        for evaluation, step in enumerate(run_file["evaluations/env_steps"][()]):
            if int(step) in row_at:
                best[row_at[int(step)]] = member_means[evaluation].max()
                mean[row_at[int(step)]] = member_means[evaluation].mean()
    return best, mean


def progress_csv_path(run_path: str) -> str:
    """RUN.h5 -> RUN.progress.csv, beside it."""
    stem = run_path[:-3] if run_path.endswith(".h5") else run_path
    return stem + ".progress.csv"


def write_progress_csv(run_file: h5py.File, path: str) -> None:
    """One row per iteration: steps, time, round, the best and mean member return, each member's return,
    the mean over members of every statistic of iterations/ (policy_kl_mean, ...), and the best and mean
    member's evaluation return in the rows of the iterations evaluated after (blank in the others).
    Atomically replaced."""
    iterations = run_file["iterations"]
    returns = iterations["member_return"][()]
    steps = iterations["env_steps"][()]
    m = returns.shape[1]
    statistics = [name for name, dataset in iterations.items() if dataset.ndim == 2
                  and name not in ("member_return", "member_episodes")]
    header = (["env_steps", "wall_time", "round", "best_return", "mean_return"]
              + [f"return_{i}" for i in range(m)] + [f"{name}_mean" for name in statistics]
              + ["eval_best_return", "eval_mean_return"])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows before the first episodes
        columns = [steps, iterations["wall_time"][()], iterations["round"][()],
                   np.nanmax(returns, axis=1), np.nanmean(returns, axis=1), *returns.T,
                   *(np.nanmean(iterations[name][()], axis=1) for name in statistics),
                   *evaluation_columns(run_file, steps)]
    with open(path + ".tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in zip(*columns):
            writer.writerow(["" if np.isnan(v) else f"{v:.6g}" for v in np.asarray(row, dtype=float)])
    os.replace(path + ".tmp", path)
