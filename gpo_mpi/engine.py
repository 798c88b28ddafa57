"""Algorithm 1 over MPI: rounds of mutate, select, crossover.

`run` reads like the paper's Algorithm 1; `Population` does each phase of
a round with its collectives, on what one rank keeps (runbase.RunBase: its
members, samplers and the shared observation normalization, the record,
checkpoints and evaluations). Which collectives run depends only on values
all ranks hold alike (the config, the KL matrix, the pairs rank 0
scattered), so every rank reaches each one on every path.

Single and Joint are one long round of mutation; GPO ends with the last
round's mutation (its children would never be trained or evaluated). Joint's
one policy samples with m sampler slots spread over the ranks like GPO's
members, and every rank takes the step of the whole batch, so a Joint run
does not depend on the number of ranks.
"""
from __future__ import annotations

import time

import numpy as np

from . import crossover, mpi, schedules, select, sharing, slots
from .config import RunConfig
from .learner import MemberRows
from .mutate import DataParallel, pool_batches
from .rollout import Batch, ObsNormalizer
from .runbase import RunBase


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
            population.agree_on_stop()  # a signal during breeding stops at the checkpoint that follows it
        population.record_round(round_index)
        if round_index < config.n_rounds - 1:
            population.checkpoint(round_index + 1, 0)
            if population.stop_agreed:
                return False
    population.finish()
    return True


class Population(RunBase):
    """One rank's share of the population and the phases of a round (start-up, checkpoints, evaluations and
    the run's end: runbase.RunBase)."""

    def __init__(self, config: RunConfig, comm, resume: bool = False):
        super().__init__(config, comm, resume)
        # after each iteration, in this order: an evaluation may fall on the iteration a stop checkpoints
        self.hooks: list[schedules.Hook] = [schedules.PeriodicEvaluation(config), schedules.Checkpoints(config)]
        slots_of_rank = [config.member_slots(rank, self.n_ranks) for rank in range(self.n_ranks)]
        self.exchange = mpi.BatchExchange(config.exchange, comm, slots_of_rank, self._mpi, self.timer)
        # crossover's parents travel to the ranks that breed their children (a graph of its own, cached apart)
        self.parent_exchange = mpi.BatchExchange(config.exchange, comm, slots_of_rank, self._mpi, self.timer)
        self.last_batches: list[Batch] = []

    # ------------------------------------------------------------- MUTATE
    def mutate(self, round_index: int) -> bool:
        """The round's policy-gradient iterations, each followed by the hooks (schedules.py). Returns False if
        the run was stopped by a signal (after writing a checkpoint)."""
        config = self.config
        first_step, self.step_in_round = self.step_in_round, 0
        for step in range(first_step, config.iterations_per_round):
            iteration_start = time.monotonic()
            with self.timer("mutate"):
                sampled = [lm.sampler.sample(lm.member.policy, self.normalizer, config.batch_steps)
                           for lm in self.local]
                self.last_batches = [batch for batch, _ in sampled]
                if schedules.measures_kl(config, round_index, step):
                    self.measure_sharing(round_index, step)
                stats = self.update_members()
                self.share_statistics_and_stop([raw_obs for _, raw_obs in sampled])
                self.env_steps += config.steps_per_iteration
                self.iteration += 1
                if self.recorder:
                    self.recorder.iteration_took(time.monotonic() - iteration_start)
                self.record_iteration(round_index, stats)
            if not all(hook.after_iteration(self, round_index, step) for hook in self.hooks):
                return False
        return True

    def share_statistics_and_stop(self, raw_observations: list) -> None:
        """One Allreduce carries the observation sums and whether any rank got a stop signal. Each slot's
        sums have a row of their own, to which the Allreduce adds only zeros: the statistics come out bit
        for bit the same however the slots are spread over the ranks."""
        table = np.zeros((self.config.population + 1, 2 * self.obs_dim + 1))
        for slot, raw_obs in enumerate(raw_observations, start=self.first_slot):
            table[slot] = ObsNormalizer.sums(raw_obs)
        table[-1, 0] = float(self.stop_requested)
        totals = self._mpi(mpi.allreduce_sum, table.ravel()).reshape(table.shape)
        self.normalizer.update_from_sums(totals[:-1].sum(axis=0))
        self.stop_agreed = totals[-1, 0] > 0

    def measure_sharing(self, round_index: int, step: int) -> None:
        """Component M: the KL matrix on the current batches decides S_i (every
        `share_every` iterations; at the round's start it is also recorded)."""
        config = self.config
        kl = self.measure_kl_matrix()
        epsilon = config.share_epsilon if config.shares_in(round_index) else -np.inf
        self.share_sets = sharing.share_sets(kl, epsilon, config.share_max)
        if self.recorder and step == 0:
            self.recorder.sharing(round_index, self.env_steps + config.steps_per_iteration, kl,
                                  [len(s) for s in self.share_sets])

    def update_members(self) -> list:
        """One policy-gradient iteration of every local policy; returns their statistics (self.members order)."""
        config = self.config
        learning_rate_factor = schedules.learning_rate_factor(config, self.env_steps)
        if self.joint:
            return [self.update_joint(learning_rate_factor)]
        shared_batches = self.exchange_batches() if any(len(s) > 1 for s in self.share_sets) else {}
        stats = []
        for lm, own_batch in zip(self.local, self.last_batches):
            members_read = list(self.share_sets[lm.member.index])
            batches = [shared_batches[j] for j in members_read] if shared_batches else [own_batch]
            pooled = pool_batches(lm.member, batches, members_read.index(lm.member.index), config)
            stats.append(self.mutation.update(lm.member, pooled, learning_rate_factor=learning_rate_factor))
        return stats

    def update_joint(self, learning_rate_factor: float):
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
        stats = self.mutation.update(member, pool_batches(member, self.last_batches, None, config, parallel), parallel,
                                     learning_rate_factor)
        return dict(stats, effective_sample_size=float(total_rows))

    def exchange_batches(self) -> dict[int, Batch]:
        """The last batches this rank's members read under data sharing, by member index (its own
        members' included); see mpi.BatchExchange."""
        rows = np.concatenate([b.to_rows() for b in self.last_batches])
        return {member: Batch.from_rows(member_rows, self.obs_dim)
                for member, member_rows in self.exchange(self.share_sets, rows).items()}

    def measure_kl_matrix(self) -> np.ndarray:
        """KL[pi_i || pi_j] for all members, on states pooled from every member's last batch."""
        own_states = np.concatenate([sharing.kl_states(self.config, lm.member.index, self.iteration, batch)
                                     for lm, batch in zip(self.local, self.last_batches)])
        states, _ = self._mpi(mpi.allgatherv_rows, own_states)
        rows, _ = self._mpi(mpi.allgatherv_rows, sharing.policy_rows([lm.member.policy for lm in self.local], states))
        local_kl = sharing.kl_rows_of(rows, len(states), self.act_dim, [lm.member.index for lm in self.local])
        kl, _ = self._mpi(mpi.allgatherv_rows, local_kl)
        return kl

    def record_iteration(self, round_index: int, stats: list) -> None:
        """Gather episodes and member statistics; rank 0 records them."""
        episode_rows = [np.column_stack([np.full(len(r), lm.member.index), r, n]) for lm in self.local
                        for r, n in [lm.sampler.episodes.take()]]
        episodes, _ = self._mpi(mpi.allgatherv_rows, np.concatenate(episode_rows).reshape(-1, 3))
        member_rows = np.array([[member.index, len(self.share_sets[member.index])]
                                + [s.get(name, np.nan) for name in self.mutation.statistic_names]
                                for member, s in zip(self.members, stats)])
        member_stats, _ = self._mpi(mpi.allgatherv_rows, member_rows)
        if self.recorder:
            self.recorder.iteration(round_index, self.iteration, self.env_steps, self.elapsed(), episodes,
                                    member_stats)

    # ------------------------------------------------------------- SELECT
    def select(self, round_index: int) -> np.ndarray:
        """Rank 0 picks a pair of parents for every member slot and broadcasts them (every rank needs
        all jobs to know where each parent goes).

        Returns every slot's job: rows [first parent, second parent, fitter parent] (an elite's: itself).
        """
        config = self.config
        with self.timer("select"):
            kl = self.measure_kl_matrix()
            jobs = np.zeros((config.population, 3), dtype=np.int64)
            if self.rank == 0:
                member_returns = self.recorder.returns.member_returns()
                jobs[:], pair_fitness = select.plan(config, member_returns, kl, round_index)
                self.recorder.selection(member_returns, kl, jobs[:, :2], jobs[:, 2], pair_fitness)
            return self._mpi(mpi.bcast_flat, jobs)

    # ---------------------------------------------------------- CROSSOVER
    def crossover(self, jobs: np.ndarray, round_index: int) -> None:
        """Every rank breeds the children of its member slots (`jobs`: every slot's) from the parents'
        parameters and trajectories."""
        start = time.monotonic()
        diagnostics = self.breed_all(jobs, round_index)
        if self.recorder:
            self.recorder.breeding(diagnostics, time.monotonic() - start)

    def breed_all(self, jobs: np.ndarray, round_index: int) -> np.ndarray:
        """Breed this rank's children; returns every child's crossover diagnostics, in member order."""
        config = self.config
        with self.timer("crossover"):
            parent_sets = [np.unique(job[:2]) for job in jobs]  # whom each slot's child is bred from
            parents = self.gather_parents(parent_sets)
            parent_data = self.gather_selector_data(parent_sets, round_index) \
                if config.crossover_steps_per_child else None

            diagnostics = []
            for lm, (x, y, fitter) in zip(self.local, jobs[self.first_slot:self.first_slot + len(self.local)]):
                diagnostics.append(self.breed(lm, x, y, fitter, parents, parent_data, round_index))
            self.env_steps += config.children_per_round * config.crossover_steps_per_child
            rows, _ = self._mpi(mpi.allgatherv_rows, np.array(diagnostics, dtype=np.float64).reshape(-1, 3))
        return rows

    def gather_parents(self, parent_sets: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The rows (learner.MemberRows) of the parents this rank's children are bred from (`parent_sets`,
        by slot), as columns by name with one row per member in member order (NaN for members this rank
        does not need). Moved by the parent exchange: along a graph, a rank receives only its parents."""
        member_rows = MemberRows(self.members[0], optimizers=self.config.child_optimizer == "fitter")
        local_rows = np.stack([member_rows.row(member) for member in self.members])
        rows = np.full((self.config.population, local_rows.shape[1]), np.nan, dtype=np.float32)
        for member, member_row in self.parent_exchange(parent_sets, local_rows).items():
            rows[member] = member_row[0]
        return member_rows.columns(rows)

    def gather_selector_data(self, parent_sets: list[np.ndarray], round_index: int
                             ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The selector data (states of its best trajectories of the round and their returns) of each
        parent this rank's children are bred from, by member index (by the parent exchange)."""
        rows = [crossover.selector_rows(lm.member.index, lm.sampler.recorder.take(), last_batch, self.config,
                                        round_index) for lm, last_batch in zip(self.local, self.last_batches)]
        received, _ = self.parent_exchange.received_rows(parent_sets, np.concatenate(rows))
        return crossover.selector_data_by_member(received)

    def breed(self, lm: slots.LocalMember, x: int, y: int, fitter: int, parents: dict[str, np.ndarray],
              parent_data: dict | None, round_index: int) -> tuple[float, float, float]:
        """Replace `lm`'s member by the child of x and y (`parents`: gather_parents' rows; an elite, x == y ==
        its own slot, stays as it is). Returns the crossover diagnostics."""
        if x == y == lm.member.index:  # an elite goes on as it is
            return (np.nan, np.nan, np.nan)
        lm.member, diagnostics = crossover.breed(lm.member.index, (x, y), fitter, parents, parent_data, self.obs_dim,
                                                 self.act_dim, self.env, self.normalizer, self.config, round_index)
        self.restart_samplers([lm])  # its first episodes are its own (the child return recorded)
        return diagnostics
