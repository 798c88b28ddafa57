"""Algorithm 1 over MPI: rounds of mutate, select, crossover.

`run` reads like the paper's Algorithm 1; `Population` holds what one rank
keeps (its members, samplers, the shared observation normalization) and
does each phase. Every collective is called through `Population._mpi`,
which times it as communication, and every rank reaches each one on every
path: which ones run depends only on values all ranks hold alike (the
config, the KL matrix, the pairs rank 0 scattered).

Single and Joint are one long round of mutation; GPO ends with the last
round's mutation (its children would never be trained or evaluated). Joint's
one policy samples with m sampler slots spread over the ranks like GPO's
members, and every rank takes the step of the whole batch, so a Joint run
does not depend on the number of ranks.

Every run ends with a deterministic evaluation of every policy (mean
actions, whole episodes); the best by it is the run's best member.
"""
from __future__ import annotations

import dataclasses
import pickle
import signal
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import checkpoint, crossover, mpi, seeds, select
from .config import ConfigError, RunConfig
from .evaluate import returns_and_lengths
from .learner import Member, adam_state, load_adam_state
from .mutate import DataParallel, kl_matrix, pool_batches, share_sets, update
from .networks import GaussianPolicy, flat_parameters, load_flat_parameters
from .rollout import Batch, EnvSpec, EpisodeRecorder, ObsNormalizer, Sampler, UnusableEnvironment
from .runfile import RunFileWriter
from .scalars import TensorBoardScalars

RETURN_WINDOW = 10  # training episodes averaged into a member's reported return


def agree_on_startup(comm, message: str | None) -> None:
    """Raise ConfigError on every rank if start-up failed on any (see mpi.first_error)."""
    failure = mpi.first_error(comm, message)
    if failure is not None:
        rank, first_message = failure
        raise ConfigError(first_message + (f" (on rank {rank})" if comm.Get_size() > 1 else ""))


def recorder_stride(config: RunConfig) -> int:
    """Keep about twice the selector's states per member and round (every state when it takes all)."""
    if not config.selector_states:
        return 1
    return max(1, config.iterations_per_round * config.batch_steps // (2 * config.selector_states))


def run(config: RunConfig, comm, resume: bool = False, signalled_before_start=lambda: False) -> bool:
    """One run: `config.n_rounds` rounds of MUTATE, SELECT, CROSSOVER.

    With `resume`, continues from the run file's checkpoint. Returns False
    when a signal stopped the run at a checkpoint before its end;
    `signalled_before_start()` says whether one came before the run's own
    handlers were set.
    """
    population = Population(config, comm, resume)
    population.stop_requested |= signalled_before_start()
    for round_index in range(population.round_index, config.n_rounds):
        if not population.mutate(round_index):
            return False
        if round_index < config.n_rounds - 1:
            jobs = population.select(round_index)
            population.crossover(jobs, round_index)
        population.record_round(round_index)
        if round_index < config.n_rounds - 1:
            population.checkpoint(round_index + 1, 0)
            if population.stop_agreed:
                return False
    population.finish()
    return True


@dataclass
class LocalMember:
    """One member slot of this rank (Joint: one sampler slot, all sharing the one policy)."""
    member: Member
    sampler: Sampler
    sampler_seed: int  # restarts derive their seeds from it


class PhaseTimer:
    """Wall time per named phase; time in a nested phase is not counted in the enclosing one."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.totals[name] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def take(self) -> dict[str, float]:
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals


class ReturnLog:
    """Rank 0's record of returns: a window of recent training episodes per member."""

    def __init__(self, n_members: int):
        self.windows = [deque(maxlen=RETURN_WINDOW) for _ in range(n_members)]

    def add(self, episode_rows: np.ndarray) -> np.ndarray:
        """Fold in rows [member, return, length]; returns the number of episodes per member."""
        for member_index, episode_return, _ in episode_rows:
            self.windows[int(member_index)].append(episode_return)
        return np.bincount(episode_rows[:, 0].astype(int), minlength=len(self.windows))

    def member_returns(self) -> np.ndarray:
        return np.array([np.mean(w) if w else np.nan for w in self.windows])

    def clear(self) -> None:
        for window in self.windows:
            window.clear()


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Population:
    """One rank's share of the population and the phases of a round."""

    def __init__(self, config: RunConfig, comm, resume: bool = False):
        self.config, self.comm = config, comm
        self.rank, self.n_ranks = comm.Get_rank(), comm.Get_size()
        self.env = EnvSpec.of(config)
        self.joint = config.algo == "joint"
        message = None
        try:  # environments may fail on some ranks only (a user class, a node without a library)
            self.obs_dim, self.act_dim = self.env.space_sizes()
            self.local = self.make_slots()
        except UnusableEnvironment as error:
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
        self.returns = ReturnLog(config.n_policies)
        self.share_sets = [np.array([i]) for i in range(config.n_policies)]
        self.last_batches: list[Batch] = []
        self.env_steps = 0
        self.iteration = 0
        self.round_index, self.step_in_round = 0, 0  # where the run goes on
        self.elapsed_before = 0.0  # wall time of the run before a resume
        self.start_time = time.monotonic()
        self.child_returns: list[list[float]] | None = None  # rank 0: each new child's first episodes
        self.fitter_parent_returns = np.full(config.n_policies, np.nan)  # rank 0: of the latest children
        self.latest_best_return = np.nan  # rank 0: best member's return after the latest iteration
        self.best_evaluated: dict | None = None  # rank 0: the best policy of the evaluations so far
        self.stop_requested = self.stop_agreed = False
        self.seconds = defaultdict(float)  # wall time of this process's iterations and breedings, for the ETA
        self.counts = defaultdict(int)
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signal_number, self._request_stop)
        if resume:
            self.writer = self.restore()
        else:
            if config.init_from:
                self.start_from(config.init_from)
            self.writer = RunFileWriter(config.out, config, self.n_ranks) if self.rank == 0 else None
        self.scalars = None
        if self.writer and config.tensorboard:
            # A resumed run drops the events logged after its checkpoint, which it logs again.
            self.scalars = TensorBoardScalars(config.tensorboard, self.env_steps + 1 if resume else None)

    def start_from(self, path: str) -> None:
        """Every member (and the observation statistics) from the best policy of another run."""
        from .tools import read_member
        message = None
        try:
            run, best = read_member(path, None)
            if run.normalizer.mean.shape != (self.obs_dim,) or run.policies[best].log_std.shape != (self.act_dim,):
                raise ConfigError(f"its observations and actions ({run.normalizer.mean.shape[0]}, "
                                  f"{run.policies[best].log_std.shape[0]}) differ from {self.config.env}'s "
                                  f"({self.obs_dim}, {self.act_dim})")
            for member in self.members:
                member.policy.load_state_dict(run.policies[best].state_dict())
                member.critic.load_state_dict(run.critics[best].state_dict())
            self.normalizer.load_state(run.normalizer.state())
        except (ConfigError, RuntimeError) as error:  # RuntimeError: other hidden layer sizes
            message = f"--init-from {path}: {error}"
        agree_on_startup(self.comm, message)

    def make_slots(self) -> list[LocalMember]:
        """This rank's member slots: networks and samplers (Joint: sampler slots of its one policy)."""
        config = self.config
        slots = config.member_slots(self.rank, self.n_ranks)
        self.first_slot = slots.start
        if self.joint:  # one policy, the same initial weights on every rank
            joint_member = Member.create(0, self.obs_dim, self.act_dim, config, seeds.member(config.seed, 0))
            members = [joint_member] * len(slots)
        else:
            members = [Member.create(i, self.obs_dim, self.act_dim, config, seeds.member(config.seed, i))
                       for i in slots]
        # Crossover's selector learns from each parent's whole round of episodes.
        records_episodes = config.has("C") and config.crossover_operator == "state"
        local = []
        for slot, member in zip(slots, members):
            recorder = EpisodeRecorder(config.n_envs, recorder_stride(config)) if records_episodes else None
            name = f"joint sampler {slot}" if self.joint else f"member {slot}"
            seed = seeds.training_environments(config.seed, slot)
            local.append(LocalMember(member, Sampler(self.env, config.n_envs, seed, name, recorder), seed))
        return local

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

    # ------------------------------------------------------------- MUTATE
    def mutate(self, round_index: int) -> bool:
        """The round's policy-gradient iterations. Returns False if the run was stopped
        by a signal (after writing a checkpoint)."""
        config = self.config
        first_step, self.step_in_round = self.step_in_round, 0
        for step in range(first_step, config.iterations_per_round):
            iteration_start = time.monotonic()
            with self.timer("mutate"):
                sampled = [lm.sampler.sample(lm.member.policy, self.normalizer, config.batch_steps)
                           for lm in self.local]
                self.last_batches = [batch for batch, _ in sampled]
                remeasure = config.shares_in(round_index) and config.share_every and step % config.share_every == 0
                if config.algo == "gpo" and (step == 0 or remeasure):
                    self.measure_sharing(round_index, step)
                stats = self.update_members()
                # One Allreduce carries the observation sums and whether any rank got a stop signal.
                # Each slot's sums have a row of their own, to which the Allreduce adds only zeros: the
                # statistics come out bit for bit the same however the slots are spread over the ranks.
                table = np.zeros((config.population + 1, 2 * self.obs_dim + 1))
                for slot, (_, raw_obs) in enumerate(sampled, start=self.first_slot):
                    table[slot] = ObsNormalizer.sums(raw_obs)
                table[-1, 0] = float(self.stop_requested)
                totals = self._mpi(mpi.allreduce_sum, table.ravel()).reshape(table.shape)
                self.normalizer.update_from_sums(totals[:-1].sum(axis=0))
                self.stop_agreed = totals[-1, 0] > 0
                self.env_steps += config.steps_per_iteration
                self.iteration += 1
                self.seconds["iteration"] += time.monotonic() - iteration_start
                self.counts["iteration"] += 1
                self.record_iteration(round_index, stats)
            if config.eval_every and config.eval_episodes and self.iteration % config.eval_every == 0:
                with self.timer("evaluation"):
                    self.record_evaluation(self.evaluate())
            last_of_round = step + 1 == config.iterations_per_round
            if last_of_round:
                continue  # a stop waits for the checkpoint after this round's breeding
            if self.stop_agreed or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
                self.checkpoint(round_index, step + 1)
                if self.stop_agreed:
                    return False
        return True

    # --------------------------------------------------------- checkpoints
    def restart_samplers(self, slots: list[LocalMember] | None = None) -> None:
        """New episodes in these slots' environments (default: all), seeded by slot and iteration: for
        a newborn child, and at checkpoints where the environments cannot be snapshotted."""
        for lm in self.local if slots is None else slots:
            lm.sampler.restart(seeds.restart(lm.sampler_seed, self.iteration))

    def checkpoint(self, round_index: int, step_in_round: int) -> None:
        """Save everything needed to go on from (round, step) into the run file."""
        if not self.captures_environments:
            self.restart_samplers()
        rank_state = pickle.dumps(dict(members=[member.state() for member in self.members],
                                       samplers=[lm.sampler.state(self.captures_environments)
                                                 for lm in self.local]))
        rank_states = self._mpi(mpi.gather_objects, rank_state)
        if self.writer:
            shared = dict(round_index=round_index, step_in_round=step_in_round, iteration=self.iteration,
                          env_steps=self.env_steps, share_sets=self.share_sets,
                          normalizer=self.normalizer.state(), windows=[list(w) for w in self.returns.windows],
                          child_returns=self.child_returns, fitter_parent_returns=self.fitter_parent_returns,
                          latest_best_return=self.latest_best_return, best_evaluated=self.best_evaluated,
                          lengths=self.writer.lengths(),
                          elapsed=self.elapsed_before + time.monotonic() - self.start_time)
            self.writer.commit(lambda run_file: checkpoint.write_group(run_file, shared, rank_states))
            if self.scalars:
                self.scalars.flush()

    def restore(self) -> RunFileWriter | None:
        """Load the run file's checkpoint into this rank (and return rank 0's writer)."""
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
        rank_blob = self._mpi(mpi.scatter_objects, loaded[1] if loaded else None)
        message = None
        try:
            rank_state = pickle.loads(rank_blob)
            if "samplers" not in rank_state:
                raise ConfigError("it is from an older gpo-mpi")
            for member, state in zip(self.members, rank_state["members"], strict=True):
                member.load_state(state)
            for lm, sampler_state in zip(self.local, rank_state["samplers"], strict=True):
                lm.sampler.load_state(sampler_state)
        except Exception as error:  # damaged bytes can fail in any way while unpickled or loaded
            message = (f"cannot resume: the checkpoint in {self.config.out} is damaged or foreign "
                       f"(this rank's part: {error})")
        agree_on_startup(self.comm, message)
        self.round_index, self.step_in_round = shared["round_index"], shared["step_in_round"]
        self.iteration, self.env_steps = shared["iteration"], shared["env_steps"]
        self.share_sets = shared["share_sets"]
        self.normalizer.load_state(shared["normalizer"])
        self.elapsed_before = shared["elapsed"]
        if not self.captures_environments:
            self.restart_samplers()
        if self.rank != 0:
            return None
        for window, values in zip(self.returns.windows, shared["windows"]):
            window.extend(values)
        self.child_returns = shared["child_returns"]
        self.fitter_parent_returns = shared["fitter_parent_returns"]
        self.latest_best_return = shared["latest_best_return"]
        self.best_evaluated = shared["best_evaluated"]
        print(f"resuming {self.config.out} at iteration {self.iteration} (round {self.round_index + 1}), "
              f"{self.env_steps:,} steps done", flush=True)
        return RunFileWriter(self.config.out, self.config, self.n_ranks, lengths=shared["lengths"])

    def measure_sharing(self, round_index: int, step: int) -> None:
        """Component M: the KL matrix on the current batches decides S_i (every
        `share_every` iterations; at the round's start it is also recorded)."""
        config = self.config
        kl = self.measure_kl_matrix()
        epsilon = config.share_epsilon if config.shares_in(round_index) else -np.inf
        self.share_sets = share_sets(kl, epsilon, config.share_max)
        if self.writer and step == 0:
            set_sizes = [len(s) for s in self.share_sets]
            self.writer.append(rounds__kl_matrix=kl, rounds__share_set_sizes=set_sizes)
            median_kl = float(np.median(kl[~np.eye(len(kl), dtype=bool)]))
            print(f"round {round_index + 1}/{config.n_rounds}: data sharing |S_i| = {set_sizes}, "
                  f"median KL between members {median_kl:.3g}", flush=True)
            if self.scalars:  # at the step of this iteration's other scalars, which is past any checkpoint
                self.scalars.sharing(self.env_steps + config.steps_per_iteration, median_kl, np.mean(set_sizes))

    def update_members(self) -> list:
        """One policy-gradient iteration of every local policy; returns their statistics (self.members order)."""
        config = self.config
        if self.joint:
            return [self.update_joint()]
        all_batches = self.gather_batches() if any(len(s) > 1 for s in self.share_sets) else None
        stats = []
        for lm, own_batch in zip(self.local, self.last_batches):
            members_read = list(self.share_sets[lm.member.index])
            batches = [all_batches[j] for j in members_read] if all_batches else [own_batch]
            pooled = pool_batches(lm.member, batches, members_read.index(lm.member.index), config)
            stats.append(update(lm.member, pooled, config))
        return stats

    def update_joint(self):
        """Joint's one policy learns from the batches of every sampler slot: this
        rank's rows are the slots it holds, and the step is the whole batch's."""
        config = self.config
        total_rows = config.population * config.batch_steps
        parallel = None
        if self.n_ranks > 1:
            parallel = DataParallel(first_row=self.first_slot * config.batch_steps, total_rows=total_rows,
                                    sum_values=lambda values: self._mpi(mpi.allreduce_sum, values),
                                    sum_gradients=lambda parameters: self._mpi(mpi.sum_gradients, parameters))
        member = self.local[0].member
        stats = update(member, pool_batches(member, self.last_batches, None, config, parallel), config, parallel)
        return dataclasses.replace(stats, effective_sample_size=float(total_rows))

    def gather_batches(self) -> list[Batch]:
        """Every member's last batch on every rank, in member order (one Allgatherv)."""
        rows = np.concatenate([b.to_rows() for b in self.last_batches])
        all_rows, _ = self._mpi(mpi.allgatherv_rows, rows)
        return [Batch.from_rows(r, self.obs_dim) for r in np.split(all_rows, self.config.population)]

    def measure_kl_matrix(self) -> np.ndarray:
        """KL[pi_i || pi_j] for all members, on states pooled from every member's last batch."""
        def subsample(member_index: int, batch: Batch) -> np.ndarray:
            rng = seeds.kl_states(self.config.seed, member_index, self.iteration)
            return batch.obs[rng.choice(batch.n_steps, min(self.config.kl_states, batch.n_steps), replace=False)]

        own_states = np.concatenate([subsample(lm.member.index, b) for lm, b in zip(self.local, self.last_batches)])
        states, _ = self._mpi(mpi.allgatherv_rows, own_states)
        with torch.no_grad():
            local_means = np.stack([lm.member.policy(torch.from_numpy(states))[0].numpy() for lm in self.local])
        local_log_stds = np.stack([lm.member.policy.log_std.detach().numpy() for lm in self.local])
        means, _ = self._mpi(mpi.allgatherv_rows, local_means)
        log_stds, _ = self._mpi(mpi.allgatherv_rows, local_log_stds)
        return kl_matrix(means, log_stds)

    def record_iteration(self, round_index: int, stats: list) -> None:
        """Gather episodes and member statistics; rank 0 writes and prints."""
        config = self.config
        episode_rows = [np.column_stack([np.full(len(r), lm.member.index), r, n]) for lm in self.local
                        for r, n in [lm.sampler.episodes.take()]]
        episodes, _ = self._mpi(mpi.allgatherv_rows, np.concatenate(episode_rows).reshape(-1, 3))
        member_rows = np.array([[member.index, s.beta, s.kl, len(self.share_sets[member.index]),
                                 s.effective_sample_size] for member, s in zip(self.members, stats)])
        member_stats, _ = self._mpi(mpi.allgatherv_rows, member_rows)
        if not self.writer:
            return
        counts = self.returns.add(episodes)
        if self.child_returns is not None:
            self.collect_child_returns(episodes)
        returns = self.returns.member_returns()
        beta, policy_kl, set_sizes, sample_sizes = np.full((4, config.n_policies), np.nan)
        # Joint's one member appears once per rank with equal values: any copy will do.
        for column, values in enumerate((beta, policy_kl, set_sizes, sample_sizes), start=1):
            values[member_stats[:, 0].astype(int)] = member_stats[:, column]
        elapsed = self.elapsed_before + time.monotonic() - self.start_time
        self.writer.append(iterations__env_steps=self.env_steps, iterations__wall_time=elapsed,
                           iterations__round=round_index, iterations__member_return=returns,
                           iterations__member_episodes=counts, iterations__beta=beta, iterations__policy_kl=policy_kl,
                           iterations__share_set_size=set_sizes, iterations__effective_sample_size=sample_sizes)
        rate = self.env_steps / max(elapsed, 1e-9)
        if self.scalars:
            sharing = (set_sizes, sample_sizes) if config.has("M") else (None, None)
            self.scalars.iteration(self.env_steps, returns, beta, policy_kl, rate, *sharing)
        eta_text = self.time_left(round_index)
        finite = returns[np.isfinite(returns)]
        self.latest_best_return = finite.max() if len(finite) else np.nan
        mean_text, best_text = (f"{finite.mean():8.1f}", f"{finite.max():8.1f}") if len(finite) else ("n/a",) * 2
        sharing_text = (f"|S_i| {set_sizes.mean():3.1f} ESS {sample_sizes.mean() / config.batch_steps:4.2f} | "
                        if config.has("M") else "")
        print(f"iter {self.iteration:4d}/{config.iterations} | round {round_index + 1:2d} | "
              f"steps {self.env_steps:>10,} | {rate:7,.0f} steps/s | return mean {mean_text} best {best_text} | "
              f"{sharing_text}ETA {eta_text}", flush=True)

    def time_left(self, round_index: int) -> str:
        """The iterations and breedings still to come, at the mean wall time of those done so far."""
        iterations_left = self.config.iterations - self.iteration
        breedings_left = max(0, self.config.n_rounds - 1 - round_index)
        seconds = iterations_left * self.seconds["iteration"] / max(1, self.counts["iteration"])
        if breedings_left and not self.counts["breeding"]:
            return f"{format_duration(seconds)} + {breedings_left} crossover(s)"
        seconds += breedings_left * self.seconds["breeding"] / max(1, self.counts["breeding"])
        return format_duration(seconds)

    def collect_child_returns(self, episodes: np.ndarray) -> None:
        """Rank 0: the returns of each child's first n_envs episodes (its environments restart at its birth)."""
        for member_index, episode_return, _ in episodes:
            first_episodes = self.child_returns[int(member_index)]
            if len(first_episodes) < self.config.n_envs:
                first_episodes.append(float(episode_return))
        if all(len(first) >= self.config.n_envs for first in self.child_returns):
            self.write_child_returns()

    def write_child_returns(self) -> None:
        """Rank 0: one row of children's first returns (NaN for a child with none), and how they compare
        with their fitter parents'."""
        child_returns = np.array([np.mean(first) if first else np.nan for first in self.child_returns])
        self.writer.append(breeding__child_return=child_returns)
        self.child_returns = None
        fitter_returns = self.fitter_parent_returns
        compared = np.isfinite(child_returns) & np.isfinite(fitter_returns)
        if compared.any():
            at_least = int(np.sum(child_returns[compared] >= fitter_returns[compared]))
            print(f"children's first {self.config.n_envs} episodes: {at_least} of {int(compared.sum())} at or above "
                  f"their fitter parent's return (mean {child_returns[compared].mean():.1f} against "
                  f"{fitter_returns[compared].mean():.1f})", flush=True)

    # ------------------------------------------------------------- SELECT
    def select(self, round_index: int) -> np.ndarray:
        """Rank 0 picks a pair of parents for every member slot and scatters them.

        Returns this rank's jobs: rows [first parent, second parent, fitter parent].
        """
        config = self.config
        with self.timer("select"):
            kl = self.measure_kl_matrix()
            jobs = None
            if self.rank == 0:
                member_returns = self.returns.member_returns()
                ranked_returns = select.ranked_returns(member_returns)
                weight = select.diversity_weight(round_index, config.n_rounds - 1, config.diversity_weight_start,
                                                 config.diversity_weight_end)
                fitness = select.mixed_fitness(ranked_returns, kl, weight)
                if config.has("S"):
                    pairs = select.fittest_pairs(fitness, config.population, config.distinct_couples)
                else:
                    pairs = select.random_pairs(config.population, config.population,
                                                seeds.random_couples(config.seed, round_index))
                fitter = select.fitter_parents(pairs, member_returns)
                jobs = np.column_stack([pairs, fitter])
                self.fitter_parent_returns = member_returns[fitter]
                self.writer.append(breeding__member_return_before=member_returns, breeding__selection_kl_matrix=kl,
                                   breeding__parent_pairs=pairs, breeding__fitter_parent=fitter,
                                   breeding__pair_fitness=select.pair_fitness(fitness, pairs),
                                   breeding__parent_returns=member_returns[pairs])
            counts = np.array([len(config.member_slots(rank, self.n_ranks)) for rank in range(self.n_ranks)])
            return self._mpi(mpi.scatter_rows, jobs, counts, (3,), np.int64)

    # ---------------------------------------------------------- CROSSOVER
    def crossover(self, jobs: np.ndarray, round_index: int) -> None:
        """Every rank breeds the children of its member slots from the parents' parameters and trajectories."""
        start = time.monotonic()
        self.breed_all(jobs, round_index)
        self.seconds["breeding"] += time.monotonic() - start
        self.counts["breeding"] += 1

    def breed_all(self, jobs: np.ndarray, round_index: int) -> None:
        config = self.config
        with self.timer("crossover"):
            policies, _ = self._mpi(mpi.allgatherv_rows, np.stack([flat_parameters(m.policy) for m in self.members]))
            critics, _ = self._mpi(mpi.allgatherv_rows, np.stack([flat_parameters(m.critic) for m in self.members]))
            betas, _ = self._mpi(mpi.allgatherv_rows, np.array([m.beta for m in self.members]))
            optimizers = None
            if config.child_optimizer == "fitter":
                optimizers = [self._mpi(mpi.allgatherv_rows, np.stack([adam_state(getattr(m, name))
                                                                       for m in self.members]))[0]
                              for name in ("policy_optimizer", "critic_optimizer")]
            parent_data = self.gather_selector_data(round_index) if config.crossover_steps_per_child else None

            diagnostics = []
            for lm, (x, y, fitter) in zip(self.local, jobs):
                diagnostics.append(self.breed(lm, x, y, fitter, policies, critics, betas, optimizers, parent_data,
                                              round_index))
            self.env_steps += config.population * config.crossover_steps_per_child
            rows, _ = self._mpi(mpi.allgatherv_rows, np.array(diagnostics, dtype=np.float64).reshape(-1, 3))
        if self.writer:
            self.writer.append(breeding__selector_loss=rows[:, 0], breeding__imitation_loss=rows[:, 1],
                               breeding__second_parent_share=rows[:, 2])
            self.returns.clear()
            if self.child_returns is not None:  # the previous children finished too few episodes to fill the row
                self.write_child_returns()
            self.child_returns = [[] for _ in range(config.n_policies)]

    def gather_selector_data(self, round_index: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Every member's selector data (states of its best trajectories of the round
        and their returns) on every rank, by member index (one Allgatherv)."""
        config = self.config
        rows = []
        for lm, last_batch in zip(self.local, self.last_batches):
            # A member that finished no episode in the round falls back on its last batch's fragments.
            trajectories = lm.sampler.recorder.take() or crossover.batch_trajectories(last_batch)
            rng = seeds.selector_states(config.seed, lm.member.index, round_index)
            states, returns = crossover.selector_data(trajectories, config.top_fraction, config.selector_states, rng)
            rows.append(np.column_stack([np.full(len(states), lm.member.index), returns, states]))
        all_rows, _ = self._mpi(mpi.allgatherv_rows, np.concatenate(rows))
        members = all_rows[:, 0].astype(int)
        return {index: (np.ascontiguousarray(all_rows[members == index, 2:], dtype=np.float32),
                        all_rows[members == index, 1]) for index in range(config.population)}

    def breed(self, lm: LocalMember, x: int, y: int, fitter: int, policies: np.ndarray, critics: np.ndarray,
              betas: np.ndarray, optimizers: list | None, parent_data: dict | None,
              round_index: int) -> tuple[float, float, float]:
        """Replace `lm`'s member by the child of x and y. Returns the crossover diagnostics."""
        config = self.config
        seed = seeds.child(config.seed, lm.member.index, round_index)
        parents = []
        for index in (x, y):
            parent = GaussianPolicy(self.obs_dim, self.act_dim, config.policy_hidden)
            load_flat_parameters(parent, policies[index])
            parents.append(parent)
        member = Member.create(lm.member.index, self.obs_dim, self.act_dim, config, seed)
        if config.child_init == "fitter":
            load_flat_parameters(member.policy, policies[fitter])
            load_flat_parameters(member.critic, critics[fitter])
        member.beta = float(betas[fitter]) if config.child_beta == "fitter" else config.initial_beta
        if optimizers is not None:
            load_adam_state(member.policy_optimizer, optimizers[0][fitter])
            load_adam_state(member.critic_optimizer, optimizers[1][fitter])
        parent_pair = (parent_data[x], parent_data[y]) if parent_data is not None else None
        diagnostics = crossover.make_child(crossover.operator_of(config), tuple(parents), (x, y).index(fitter),
                                           parent_pair, member.policy, self.env, self.normalizer, config, seed,
                                           f"crossover for member {lm.member.index}")
        lm.member = member
        self.restart_samplers([lm])  # its first episodes are its own (the child return recorded)
        return diagnostics

    # ------------------------------------------------------------- record
    def record_round(self, round_index: int) -> None:
        times = self.timer.take()
        if self.writer:
            phases = ("mutate", "select", "crossover", "communication")
            self.writer.append(**{f"rounds__time_{phase}": times.get(phase, 0.0) for phase in phases})
            if self.scalars:
                self.scalars.round(self.env_steps, {phase: times.get(phase, 0.0) for phase in phases})
            best = f"{self.latest_best_return:.1f}" if np.isfinite(self.latest_best_return) else "n/a"
            print(f"round {round_index + 1}/{self.config.n_rounds} done: best return {best} | "
                  + ", ".join(f"{phase} {times.get(phase, 0.0):.1f} s" for phase in phases), flush=True)

    def evaluate(self) -> np.ndarray:
        """Every policy's returns over eval_episodes whole episodes with its mean
        action, in policy order (on every rank). Joint's one policy is evaluated
        by rank 0. The environment steps it took (all policies) go to
        `self.evaluation_steps`; they are not training steps."""
        config = self.config
        members = self.members if not self.joint or self.rank == 0 else []
        rows = [[member.index, *np.concatenate(returns_and_lengths(
                    member.policy, self.normalizer, self.env, config.eval_episodes,
                    seeds.evaluation(config.seed, member.index), deterministic=True))] for member in members]
        rows = np.array(rows, dtype=np.float64).reshape(-1, 1 + 2 * config.eval_episodes)
        all_rows, _ = self._mpi(mpi.allgatherv_rows, rows)
        all_rows = all_rows[np.argsort(all_rows[:, 0], kind="stable")]
        self.evaluation_steps = int(all_rows[:, 1 + config.eval_episodes:].sum())
        return all_rows[:, 1:1 + config.eval_episodes]

    def record_evaluation(self, evaluation: np.ndarray, announce: bool = True) -> None:
        """Keep an evaluation (policies x episodes) in the run file, and the best policy evaluated so far
        (sent by the rank that holds it)."""
        means = evaluation.mean(axis=1)
        best = int(np.argmax(means))
        improved = self.best_evaluated is None or means[best] > self.best_evaluated["mean_return"]
        improved = bool(self._mpi(mpi.bcast_object, improved))  # rank 0 alone keeps the record
        if improved:
            holder = 0 if self.joint else next(rank for rank in range(self.n_ranks)
                                               if best in self.config.member_slots(rank, self.n_ranks))
            mine = [m for m in self.members if m.index == (0 if self.joint else best)]
            vector = flat_parameters(mine[0].policy) if mine and self.rank == holder else \
                np.empty_like(flat_parameters(self.members[0].policy))
            vector = self._mpi(mpi.bcast_flat, vector, holder)
            if self.writer:
                self.best_evaluated = dict(parameters=vector, normalizer=self.normalizer.state(), member=best,
                                           env_steps=self.env_steps, mean_return=float(means[best]))
        if self.writer:
            self.writer.append(evaluations__env_steps=self.env_steps, evaluations__returns=evaluation,
                               evaluations__evaluation_steps=self.evaluation_steps)
            if self.scalars:
                self.scalars.evaluation(self.env_steps, means)
            if announce:
                print(f"evaluation at {self.env_steps:,} steps ({self.evaluation_summary()}): best member {best} at "
                      f"{means[best]:.1f}, mean over members {means.mean():.1f}", flush=True)

    def evaluation_summary(self) -> str:
        return (f"{self.config.eval_episodes} episodes, mean action; {self.evaluation_steps:,} evaluation steps, "
                "not counted in the budget")

    def finish(self) -> None:
        policies = np.stack([flat_parameters(member.policy) for member in self.members])
        critics = np.stack([flat_parameters(member.critic) for member in self.members])
        if self.joint:  # data parallelism keeps the copies equal; make sure it did
            self._mpi(mpi.check_synced, policies, "the joint policy's parameters")
            policies, critics = policies[:0 if self.rank else 1], critics[:0 if self.rank else 1]
        all_policies, _ = self._mpi(mpi.allgatherv_rows, policies)
        all_critics, _ = self._mpi(mpi.allgatherv_rows, critics)
        with self.timer("evaluation"):
            evaluation = self.evaluate() if self.config.eval_episodes else None
        if evaluation is not None and self.config.eval_every:
            self.record_evaluation(evaluation, announce=False)  # announced below
        if self.writer:
            if self.child_returns is not None:  # the last children finished too few episodes to fill the row
                self.write_child_returns()
            if evaluation is not None:
                best = int(np.argmax(evaluation.mean(axis=1)))
                print(f"evaluation ({self.evaluation_summary()}): best member {best} at "
                      f"{evaluation[best].mean():.1f}, mean over members {evaluation.mean():.1f}", flush=True)
            else:
                member_returns = self.returns.member_returns()
                best = int(np.nanargmax(member_returns)) if np.isfinite(member_returns).any() else 0
            self.writer.commit_final(all_policies, all_critics, best, self.normalizer.state(), evaluation,
                                     self.best_evaluated)
            if self.scalars:
                self.scalars.close()
