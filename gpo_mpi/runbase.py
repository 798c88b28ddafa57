"""What every run does around Algorithm 1, on every rank: start-up, the record, stop signals, checkpoints
and resume, evaluations and the run's end (engine.Population adds the rounds' phases).

Every collective is called through `RunBase._mpi`, which times it as
communication, and every rank reaches each one on every path: which ones
run depends only on values all ranks hold alike. What rank 0 writes and
prints goes through its `record.Recorder`, which is handed the gathered
arrays.

Every run ends with a deterministic evaluation of every policy (mean
actions, whole episodes); the best by it is the run's best member.
"""
from __future__ import annotations

import signal
import time

import numpy as np

from . import checkpoint, evaluate, mpi, mutations, slots
from .config import ConfigError, RunConfig
from .learner import Member
from .networks import flat_parameters
from .record import PhaseTimer, Recorder
from .rollout import EnvSpec, ObsNormalizer, UnusableEnvironment
from .runfile import RunFileWriter


def agree_on_startup(comm, message: str | None) -> None:
    """Raise ConfigError on every rank if start-up failed on any (see mpi.first_error)."""
    failure = mpi.first_error(comm, message)
    if failure is not None:
        rank, first_message = failure
        raise ConfigError(first_message + (f" (on rank {rank})" if comm.Get_size() > 1 else ""))


class RunBase:
    """One rank's run: its member slots, the shared observation normalization, the record and the
    checkpoints."""

    def __init__(self, config: RunConfig, comm, resume: bool = False):
        self.config, self.comm = config, comm
        self.rank, self.n_ranks = comm.Get_rank(), comm.Get_size()
        self.env = EnvSpec.of(config)
        self.joint = config.algo == "joint"
        message = None
        try:  # environments (and a user's mutation class) may fail on some ranks only
            self.mutation = mutations.algorithm(config)
            self.obs_dim, self.act_dim = self.env.space_sizes()
            self.local = slots.make(config, self.env, self.rank, self.n_ranks, self.obs_dim, self.act_dim)
            self.first_slot = config.member_slots(self.rank, self.n_ranks).start
        except (UnusableEnvironment, ConfigError) as error:
            message = str(error)
        agree_on_startup(comm, message)
        # Checkpoints save the environments when every rank can; otherwise they restart them.
        uncapturable = sum(not lm.sampler.capturable for lm in self.local)
        self.captures_environments = mpi.allreduce_sum(comm, np.array([float(uncapturable)]))[0] == 0
        if self.rank == 0 and not self.captures_environments:
            print(f"gpo-mpi: environment {config.env} cannot be snapshotted, so checkpoints restart its episodes; "
                  "a resumed run equals the uninterrupted one only if it stopped at a scheduled checkpoint "
                  "(docs/checkpoints.md)", flush=True)
        self.normalizer = ObsNormalizer(self.obs_dim, config.obs_clip, enabled=config.obs_norm == "shared")
        self.timer = PhaseTimer()
        self.share_sets = [np.array([i]) for i in range(config.n_policies)]
        self.env_steps = 0
        self.evaluation_steps = 0  # of the latest evaluation (not training steps)
        self.iteration = 0
        self.round_index, self.step_in_round = 0, 0  # where the run goes on
        self.elapsed_before = 0.0  # wall time of the run before a resume
        self.start_time = time.monotonic()
        self.stop_requested = self.stop_agreed = False
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signal_number, self._request_stop)
        self.recorder: Recorder | None = None  # rank 0's run file, progress lines and TensorBoard
        recorded = self.restore() if resume else None
        if config.init_from and not resume:
            self.start_from(config.init_from)
        if self.rank == 0:
            statistics = ("share_set_size",) + self.mutation.statistic_names  # as record_iteration gathers them
            writer = RunFileWriter(config.out, config, self.n_ranks, lengths=recorded and recorded["lengths"],
                                   collective_kinds=mpi.COLLECTIVE_KINDS,
                                   member_statistics=statistics + ("episode_length",))
            # After a resume, TensorBoard drops the events logged after the checkpoint, which the run logs again.
            self.recorder = Recorder(config, writer, statistics, resume_step=self.env_steps + 1 if resume else None)
            if resume:
                self.recorder.load_state(recorded)

    def start_from(self, path: str) -> None:
        """Every member (and the observation statistics) from the best policy of another run."""
        message = started_from = None
        try:
            started_from = slots.warm_start(self.members, self.normalizer, path, self.obs_dim, self.act_dim,
                                            self.config.env)
        except ConfigError as error:
            message = f"--init-from {path}: {error}"
        agree_on_startup(self.comm, message)
        if self.rank == 0:
            print(f"every member starts from {started_from}", flush=True)

    @property
    def members(self) -> list[Member]:
        """This rank's distinct policies: one per slot, or Joint's one."""
        return [self.local[0].member] if self.joint else [lm.member for lm in self.local]

    def _request_stop(self, signal_number, frame) -> None:
        # Only a flag: the ranks agree on it at the next safe point (see mutate).
        self.stop_requested = True

    def _mpi(self, collective, *args, **kwargs):
        """Call a gpo_mpi.mpi collective with this run's communicator, timed as communication."""
        with self.timer("communication"):
            return collective(self.comm, *args, **kwargs)

    # --------------------------------------------------------- checkpoints
    def agree_on_stop(self) -> None:
        """Whether any rank got a stop signal, agreed by all (in mutate it rides on the statistics' Allreduce)."""
        self.stop_agreed = self._mpi(mpi.allreduce_sum, np.array([float(self.stop_requested)]))[0] > 0

    def restart_samplers(self, local: list[slots.LocalMember] | None = None) -> None:
        """New episodes in these slots' environments (default: all): for a newborn child, and at
        checkpoints where the environments cannot be snapshotted."""
        slots.restart(self.local if local is None else local, self.iteration)

    def checkpoint(self, round_index: int, step_in_round: int) -> None:
        """Save everything needed to go on from (round, step) into the run file, after checking that every
        rank holds the same observation statistics (rank 0 saves its copy for all)."""
        self._mpi(mpi.check_synced, self.normalizer.state(), "the observation statistics")
        if not self.captures_environments:
            self.restart_samplers()
        rank_state = checkpoint.rank_state(self.members, [lm.sampler for lm in self.local],
                                           self.captures_environments)
        rank_states = self._mpi(mpi.gather_objects, rank_state)  # rank 0 stores them (gpo_mpi.statefile)
        if self.recorder:
            self.recorder.checkpoint(checkpoint.Position(round_index, step_in_round, self.iteration, self.env_steps,
                                                         self.share_sets, self.normalizer.state(), self.elapsed()),
                                     rank_states)

    def elapsed(self) -> float:
        """Wall time of the run so far, including the time before a resume."""
        return self.elapsed_before + time.monotonic() - self.start_time

    def restore(self) -> dict | None:
        """Load the run file's checkpoint into this rank; returns, on rank 0, the checkpoint's shared state
        (what the record needs)."""
        loaded, error = None, None
        if self.rank == 0:
            try:
                loaded = checkpoint.read(self.config.out, self.config, self.n_ranks)
            except ConfigError as exception:
                error = str(exception)
        error = self._mpi(mpi.bcast_object, error)
        if error:
            raise ConfigError(error)
        shared = self._mpi(mpi.bcast_object, loaded[0] if loaded else None)
        rank_state = self._mpi(mpi.scatter_objects, loaded[1] if loaded else None)
        message = None
        try:
            checkpoint.load_rank_state(rank_state, self.members, [lm.sampler for lm in self.local])
        except Exception as error:  # values of the wrong shape or kind can fail in any way while loaded
            message = (f"cannot resume: the checkpoint in {self.config.out} is damaged or foreign "
                       f"(this rank's part: {error})")
        agree_on_startup(self.comm, message)
        position = checkpoint.Position.of(shared)
        self.round_index, self.step_in_round = position.round_index, position.step_in_round
        self.iteration, self.env_steps = position.iteration, position.env_steps
        self.share_sets, self.elapsed_before = position.share_sets, position.elapsed
        self.normalizer.load_state(position.normalizer)
        if not self.captures_environments:
            self.restart_samplers()
        if self.rank != 0:
            return None
        print(f"resuming {self.config.out} at iteration {self.iteration} (round {self.round_index + 1}), "
              f"{self.env_steps:,} steps done", flush=True)
        return shared

    # ------------------------------------------------------------- record
    def record_round(self, round_index: int) -> None:
        """The round's wall time per phase (rank 0's; every rank starts its timer again) and every rank's
        MPI traffic."""
        times = self.timer.take()
        # Every rank's MPI traffic of the round; this gather's own is counted in the next round's.
        traffic, _ = self._mpi(mpi.allgatherv_rows, mpi.traffic.take()[None])
        if self.recorder:
            self.recorder.round(round_index, self.env_steps, times, traffic)

    def evaluate(self, episodes: int) -> np.ndarray:
        """Every policy's returns over `episodes` whole episodes with its mean action, in policy order (on
        every rank). Joint's one policy is evaluated by rank 0. The environment steps it took (all policies)
        go to `self.evaluation_steps`; they are not training steps."""
        members = self.members if not self.joint or self.rank == 0 else []
        rows = evaluate.member_rows(members, self.normalizer, self.env, episodes, self.config.seed)
        all_rows, _ = self._mpi(mpi.allgatherv_rows, rows)
        returns, self.evaluation_steps = evaluate.by_member(all_rows, episodes)
        return returns

    def record_evaluation(self, evaluation: np.ndarray, announce: bool = True) -> None:
        """Keep an evaluation (policies x episodes) in the run file, and the best policy evaluated so far
        (sent by the rank that holds it)."""
        means = evaluation.mean(axis=1)
        best = int(np.argmax(means))
        improved = self.recorder is None or self.recorder.improves(means[best])
        improved = bool(self._mpi(mpi.bcast_object, improved))  # rank 0 alone keeps the record
        if improved:
            holder = 0 if self.joint else self.config.rank_of_member(best, self.n_ranks)
            mine = [m for m in self.members if m.index == (0 if self.joint else best)]
            vector = flat_parameters(mine[0].policy) if mine and self.rank == holder else \
                np.empty_like(flat_parameters(self.members[0].policy))
            vector = self._mpi(mpi.bcast_flat, vector, holder)
            if self.recorder:
                self.recorder.keep_best(vector, self.normalizer.state(), best, self.env_steps, means[best])
        if self.recorder:
            self.recorder.evaluation(self.env_steps, evaluation, self.evaluation_steps, announce)

    def finish(self) -> None:
        """The run's end: gather every member's networks, evaluate them, and have rank 0 write the final results."""
        policies = np.stack([flat_parameters(member.policy) for member in self.members])
        critics = np.stack([flat_parameters(member.critic) for member in self.members])
        if self.joint:  # data parallelism keeps the copies equal; make sure it did
            self._mpi(mpi.check_synced, policies, "the joint policy's parameters")
            policies, critics = policies[:0 if self.rank else 1], critics[:0 if self.rank else 1]
        all_policies, _ = self._mpi(mpi.allgatherv_rows, policies)
        all_critics, _ = self._mpi(mpi.allgatherv_rows, critics)
        with self.timer("evaluation"):
            evaluation = self.evaluate(self.config.eval_episodes) if self.config.eval_episodes else None
        if evaluation is not None and self.config.eval_every:
            self.record_evaluation(evaluation, announce=False)  # announced by the final record
        if self.recorder:
            self.recorder.finish(all_policies, all_critics, self.normalizer.state(), evaluation,
                                 self.evaluation_steps)
