"""Algorithm 1 over MPI: rounds of mutate, select, crossover.

`run` reads like the paper's Algorithm 1; `Population` holds what one rank
keeps (its members, samplers, the shared observation normalization) and
does each phase. Every collective is called through `Population._mpi`,
which times it as communication, and every rank reaches each one on every
path: which ones run depends only on values all ranks hold alike (the
config, the KL matrix, the pairs rank 0 scattered).

Single and Joint are one long round of mutation; GPO ends with the last
round's mutation (its children would never be trained or evaluated).
"""
from __future__ import annotations

import pickle
import signal
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import checkpoint, crossover, mpi, select
from .config import ConfigError, RunConfig
from .mutate import Member, kl_matrix, pool_batches, share_sets, update
from .networks import GaussianPolicy, flat_parameters, load_flat_parameters
from .rollout import Batch, EnvSpec, ObsNormalizer, Sampler
from .runfile import RunFileWriter
from .scalars import TensorBoardScalars

RETURN_WINDOW = 10  # training episodes averaged into a member's reported return


def member_seed(config: RunConfig, index: int) -> int:
    return config.seed + 1000 * index


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


def mean_return_per_member(episode_rows: np.ndarray, n_members: int) -> np.ndarray:
    counts = np.bincount(episode_rows[:, 0].astype(int), minlength=n_members)
    sums = np.bincount(episode_rows[:, 0].astype(int), weights=episode_rows[:, 1], minlength=n_members)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Population:
    """One rank's share of the population and the phases of a round."""

    def __init__(self, config: RunConfig, comm, resume: bool = False):
        self.config, self.comm = config, comm
        self.rank, self.n_ranks = comm.Get_rank(), comm.Get_size()
        self.env = EnvSpec.of(config)
        self.obs_dim, self.act_dim = self.env.space_sizes()
        self.joint = config.algo == "joint"
        if self.joint:  # one policy, same initial weights on every rank; each rank samples its share
            member_indices = [0]
            self.steps_per_sampler = config.population * config.batch_steps // self.n_ranks
            sampler_seeds = [member_seed(config, self.rank) + 1]
        else:
            per_rank = config.local_members(self.n_ranks)
            member_indices = [self.rank * per_rank + k for k in range(per_rank)]
            self.steps_per_sampler = config.batch_steps
            sampler_seeds = [member_seed(config, i) + 1 for i in member_indices]
        self.local = [LocalMember(Member.create(i, self.obs_dim, self.act_dim, config, member_seed(config, i)),
                                  Sampler(self.env, config.n_envs, seed, f"member {i}"), seed)
                      for i, seed in zip(member_indices, sampler_seeds)]
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
        self.awaiting_child_returns = False
        self.latest_best_return = np.nan  # rank 0: best member's return after the latest iteration
        self.stop_requested = self.stop_agreed = False
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signal_number, self._request_stop)
        if resume:
            self.writer = self.restore()
        else:
            self.writer = RunFileWriter(config.out, config, self.n_ranks) if self.rank == 0 else None
        self.scalars = None
        if self.writer and config.tensorboard:
            # A resumed run drops the events logged after its checkpoint, which it logs again.
            self.scalars = TensorBoardScalars(config.tensorboard, self.env_steps + 1 if resume else None)

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
            with self.timer("mutate"):
                sampled = [lm.sampler.sample(lm.member.policy, self.normalizer, self.steps_per_sampler)
                           for lm in self.local]
                self.last_batches = [batch for batch, _ in sampled]
                if step == 0 and config.algo == "gpo":
                    self.measure_sharing(round_index)
                stats = self.update_members()
                # One Allreduce carries the observation sums and whether any rank got a stop signal.
                raw_obs = np.concatenate([raw for _, raw in sampled])
                sums = np.append(ObsNormalizer.sums(raw_obs), float(self.stop_requested))
                totals = self._mpi(mpi.allreduce_sum, sums)
                self.normalizer.update_from_sums(totals[:-1])
                self.stop_agreed = totals[-1] > 0
                self.env_steps += config.steps_per_iteration
                self.iteration += 1
                self.record_iteration(round_index, stats)
            last_of_round = step + 1 == config.iterations_per_round
            if last_of_round:
                continue  # a stop waits for the checkpoint after this round's breeding
            if self.stop_agreed or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
                self.checkpoint(round_index, step + 1)
                if self.stop_agreed:
                    return False
        return True

    # --------------------------------------------------------- checkpoints
    def restart_samplers(self) -> None:
        """New episodes everywhere, seeded by member and iteration (see gpo_mpi.checkpoint)."""
        for lm in self.local:
            lm.sampler.restart(lm.sampler_seed + 7919 * self.iteration)

    def checkpoint(self, round_index: int, step_in_round: int) -> None:
        """Save everything needed to go on from (round, step) into the run file."""
        self.restart_samplers()
        rank_state = pickle.dumps([checkpoint.member_state(lm.member) for lm in self.local])
        rank_states = self._mpi(mpi.gather_objects, rank_state)
        if self.writer:
            shared = dict(round_index=round_index, step_in_round=step_in_round, iteration=self.iteration,
                          env_steps=self.env_steps, share_sets=self.share_sets,
                          normalizer=self.normalizer.state(), windows=[list(w) for w in self.returns.windows],
                          awaiting_child_returns=self.awaiting_child_returns,
                          latest_best_return=self.latest_best_return, lengths=self.writer.lengths(),
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
        rank_state = self._mpi(mpi.scatter_objects, loaded[1] if loaded else None)
        for lm, state in zip(self.local, pickle.loads(rank_state)):
            checkpoint.restore_member(lm.member, state)
        self.round_index, self.step_in_round = shared["round_index"], shared["step_in_round"]
        self.iteration, self.env_steps = shared["iteration"], shared["env_steps"]
        self.share_sets = shared["share_sets"]
        self.normalizer.load_state(shared["normalizer"])
        self.elapsed_before = shared["elapsed"]
        self.restart_samplers()
        if self.rank != 0:
            return None
        for window, values in zip(self.returns.windows, shared["windows"]):
            window.extend(values)
        self.awaiting_child_returns = shared["awaiting_child_returns"]
        self.latest_best_return = shared["latest_best_return"]
        print(f"resuming {self.config.out} at iteration {self.iteration} (round {self.round_index + 1}), "
              f"{self.env_steps:,} steps done", flush=True)
        return RunFileWriter(self.config.out, self.config, self.n_ranks, lengths=shared["lengths"])

    def measure_sharing(self, round_index: int) -> None:
        """Component M: the KL matrix on this round's first batches decides S_i."""
        kl = self.measure_kl_matrix(round_index)
        epsilon = self.config.share_epsilon if self.config.has("M") else -np.inf
        self.share_sets = share_sets(kl, epsilon)
        if self.writer:
            set_sizes = [len(s) for s in self.share_sets]
            self.writer.append(rounds__kl_matrix=kl, rounds__share_set_sizes=set_sizes)
            median_kl = float(np.median(kl[~np.eye(len(kl), dtype=bool)]))
            print(f"round {round_index + 1}/{self.config.n_rounds}: data sharing |S_i| = {set_sizes}, "
                  f"median KL between members {median_kl:.3g}", flush=True)
            if self.scalars:
                self.scalars.sharing(self.env_steps, median_kl, np.mean(set_sizes))

    def update_members(self) -> list:
        config = self.config
        if any(len(s) > 1 for s in self.share_sets):
            all_batches = self.gather_batches()
            stats = []
            for lm in self.local:
                members_read = list(self.share_sets[lm.member.index])
                pooled = pool_batches(lm.member.critic, [all_batches[j] for j in members_read],
                                      members_read.index(lm.member.index), config)
                stats.append(update(lm.member, pooled, config))
            return stats
        reduce_gradients = reduce_mean = None
        if self.joint and self.n_ranks > 1:  # data parallel: every rank takes the step of the whole batch
            def reduce_gradients(parameters):
                self._mpi(mpi.average_gradients, parameters)

            def reduce_mean(value):
                return float(self._mpi(mpi.allreduce_sum, np.array([value]))[0] / self.n_ranks)
        return [update(lm.member, pool_batches(lm.member.critic, [batch], 0, config), config,
                       reduce_gradients, reduce_mean)
                for lm, batch in zip(self.local, self.last_batches)]

    def gather_batches(self) -> list[Batch]:
        """Every member's last batch on every rank, in member order (one Allgatherv)."""
        rows = np.concatenate([b.to_rows() for b in self.last_batches])
        all_rows, _ = self._mpi(mpi.allgatherv_rows, rows)
        return [Batch.from_rows(r, self.obs_dim) for r in np.split(all_rows, self.config.population)]

    def measure_kl_matrix(self, round_index: int) -> np.ndarray:
        """KL[pi_i || pi_j] for all members, on states pooled from every member's last batch."""
        def subsample(member_index: int, batch: Batch) -> np.ndarray:
            # Seeded by member, not rank, so the states do not depend on the rank layout.
            rng = np.random.default_rng((self.config.seed, member_index, round_index))
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
        member_rows = np.array([[lm.member.index, s.beta, s.kl] for lm, s in zip(self.local, stats)])
        member_stats, _ = self._mpi(mpi.allgatherv_rows, member_rows)
        if not self.writer:
            return
        counts = self.returns.add(episodes)
        if self.awaiting_child_returns:  # the children's first batch, before any update changed them
            self.writer.append(breeding__child_return=mean_return_per_member(episodes, config.n_policies))
            self.awaiting_child_returns = False
        returns = self.returns.member_returns()
        beta, policy_kl = np.full((2, config.n_policies), np.nan)
        # Joint's one member appears once per rank with equal values: any copy will do.
        beta[member_stats[:, 0].astype(int)] = member_stats[:, 1]
        policy_kl[member_stats[:, 0].astype(int)] = member_stats[:, 2]
        elapsed = self.elapsed_before + time.monotonic() - self.start_time
        self.writer.append(iterations__env_steps=self.env_steps, iterations__wall_time=elapsed,
                           iterations__round=round_index, iterations__member_return=returns,
                           iterations__member_episodes=counts, iterations__beta=beta, iterations__policy_kl=policy_kl)
        rate = self.env_steps / max(elapsed, 1e-9)
        if self.scalars:
            self.scalars.iteration(self.env_steps, returns, beta, policy_kl, rate)
        eta = (config.total_steps - self.env_steps) / rate
        finite = returns[np.isfinite(returns)]
        self.latest_best_return = finite.max() if len(finite) else np.nan
        mean_text, best_text = (f"{finite.mean():8.1f}", f"{finite.max():8.1f}") if len(finite) else ("n/a",) * 2
        print(f"iter {self.iteration:4d}/{config.iterations} | round {round_index + 1:2d} | "
              f"steps {self.env_steps:>10,} | {rate:7,.0f} steps/s | return mean {mean_text} best {best_text} | "
              f"ETA {format_duration(max(eta, 0))}", flush=True)

    # ------------------------------------------------------------- SELECT
    def select(self, round_index: int) -> np.ndarray:
        """Rank 0 picks a pair of parents for every member slot and scatters them.

        Returns this rank's jobs: rows [first parent, second parent, fitter parent].
        """
        config = self.config
        with self.timer("select"):
            kl = self.measure_kl_matrix(round_index)
            jobs = None
            if self.rank == 0:
                member_returns = self.returns.member_returns()
                # A member with no finished episode yet ranks as the worst one.
                finite = np.isfinite(member_returns)
                ranked_returns = np.where(finite, member_returns, member_returns[finite].min() if finite.any() else 0.0)
                weight = select.diversity_weight(round_index, config.n_rounds - 1, config.diversity_weight_start,
                                                 config.diversity_weight_end)
                fitness = select.mixed_fitness(ranked_returns, kl, weight)
                if config.has("S"):
                    pairs = select.fittest_pairs(fitness, config.population, config.distinct_couples)
                else:
                    pairs = select.random_pairs(config.population, config.population,
                                                np.random.default_rng((config.seed, round_index, 17)))
                fitter = np.where(ranked_returns[pairs[:, 0]] >= ranked_returns[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
                jobs = np.column_stack([pairs, fitter])
                self.writer.append(breeding__member_return_before=member_returns, breeding__selection_kl_matrix=kl,
                                   breeding__parent_pairs=pairs, breeding__pair_fitness=select.pair_fitness(
                                       fitness, pairs), breeding__parent_returns=member_returns[pairs])
            counts = np.full(self.n_ranks, config.local_members(self.n_ranks))
            return self._mpi(mpi.scatter_rows, jobs, counts, (3,), np.int64)

    # ---------------------------------------------------------- CROSSOVER
    def crossover(self, jobs: np.ndarray, round_index: int) -> None:
        """Every rank breeds the children of its member slots from the parents' parameters and batches."""
        config = self.config
        with self.timer("crossover"):
            policies, _ = self._mpi(mpi.allgatherv_rows, np.stack([flat_parameters(lm.member.policy)
                                                                   for lm in self.local]))
            critics, _ = self._mpi(mpi.allgatherv_rows, np.stack([flat_parameters(lm.member.critic)
                                                                  for lm in self.local]))
            betas, _ = self._mpi(mpi.allgatherv_rows, np.array([lm.member.beta for lm in self.local]))
            batches = self.gather_batches() if config.crossover_steps_per_child else None

            diagnostics = []
            for lm, (x, y, fitter) in zip(self.local, jobs):
                diagnostics.append(self.breed(lm, x, y, fitter, policies, critics, betas, batches, round_index))
            self.env_steps += config.population * config.crossover_steps_per_child
            rows, _ = self._mpi(mpi.allgatherv_rows, np.array(diagnostics, dtype=np.float64).reshape(-1, 3))
        if self.writer:
            self.writer.append(breeding__selector_loss=rows[:, 0], breeding__imitation_loss=rows[:, 1],
                               breeding__second_parent_share=rows[:, 2])
            self.returns.clear()
            self.awaiting_child_returns = True

    def breed(self, lm: LocalMember, x: int, y: int, fitter: int, policies: np.ndarray, critics: np.ndarray,
              betas: np.ndarray, batches: list[Batch] | None, round_index: int) -> tuple[float, float, float]:
        """Replace `lm`'s member by the child of x and y. Returns the crossover diagnostics."""
        config = self.config
        seed = member_seed(config, lm.member.index) + 100 * (round_index + 1)
        parents = []
        for index in (x, y):
            parent = GaussianPolicy(self.obs_dim, self.act_dim, config.policy_hidden)
            load_flat_parameters(parent, policies[index])
            parents.append(parent)
        member = Member.create(lm.member.index, self.obs_dim, self.act_dim, config, seed)
        if config.child_init == "fitter":
            load_flat_parameters(member.policy, policies[fitter])
            load_flat_parameters(member.critic, critics[fitter])
        member.beta = float(betas[fitter])
        diagnostics = (np.nan, np.nan, np.nan)
        if not config.has("C"):
            load_flat_parameters(member.policy, policies[fitter])  # the ablation base copies the fitter parent
        elif config.crossover_operator == "parameter":
            crossover.parameter_space_crossover(parents[0], parents[1], member.policy, np.random.default_rng(seed))
        else:
            # Its own environments, seeded by slot and round: the child does not depend on the rank layout.
            sampler = Sampler(self.env, config.n_envs, seed + 7, f"crossover for member "
                              f"{lm.member.index}")
            record = crossover.state_space_crossover(parents[0], parents[1], batches[x], batches[y], member.policy,
                                                     sampler, self.normalizer, config, seed)
            sampler.close()
            diagnostics = (record.selector_loss, record.imitation_loss, record.second_parent_share)
        lm.member = member
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

    def finish(self) -> None:
        policies = np.stack([flat_parameters(lm.member.policy) for lm in self.local])
        critics = np.stack([flat_parameters(lm.member.critic) for lm in self.local])
        if self.joint:  # data parallelism keeps the copies equal; make sure it did
            self._mpi(mpi.check_synced, policies, "the joint policy's parameters")
        all_policies, _ = self._mpi(mpi.allgatherv_rows, policies)
        all_critics, _ = self._mpi(mpi.allgatherv_rows, critics)
        if self.writer:
            member_returns = self.returns.member_returns()
            best = int(np.nanargmax(member_returns)) if np.isfinite(member_returns).any() else 0
            keep = slice(0, 1) if self.joint else slice(None)
            self.writer.commit_final(all_policies[keep], all_critics[keep], best, self.normalizer.state())
            if self.scalars:
                self.scalars.close()
