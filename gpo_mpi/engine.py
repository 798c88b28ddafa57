"""The run loop over MPI: every rank samples and updates its own members.

One iteration: sample a batch per member, (gpo) exchange batches with the
members that share data, update every member, fold the population's
observations into the shared normalization, record. GPO's rounds start by
measuring the KL matrix that decides data sharing. Every collective below is
reached by every rank on every path; which ones run depends only on values
all ranks hold alike (config, KL matrix).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from . import mpi
from .config import RunConfig
from .mutate import Member, kl_matrix, pool_batches, share_sets, update
from .networks import flat_parameters
from .rollout import Batch, ObsNormalizer, Sampler, space_sizes
from .runfile import RunFileWriter

RETURN_WINDOW = 10  # training episodes averaged into a member's reported return


def member_seed(config: RunConfig, index: int) -> int:
    return config.seed + 1000 * index


@dataclass
class LocalMember:
    member: Member
    sampler: Sampler


class ProgressLog:
    """Rank 0's record of returns: a window of recent episodes per member."""

    def __init__(self, population: int):
        self.windows = [deque(maxlen=RETURN_WINDOW) for _ in range(population)]

    def add(self, episode_rows: np.ndarray) -> np.ndarray:
        """Fold in rows [member, return, length]; returns episodes per member."""
        counts = np.zeros(len(self.windows), dtype=np.int64)
        for member_index, episode_return, _ in episode_rows:
            self.windows[int(member_index)].append(episode_return)
            counts[int(member_index)] += 1
        return counts

    def member_returns(self) -> np.ndarray:
        return np.array([np.mean(w) if w else np.nan for w in self.windows])


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run(config: RunConfig, comm) -> None:
    rank, n_ranks = comm.Get_rank(), comm.Get_size()
    obs_dim, act_dim = space_sizes(config.env, config.horizon)
    joint = config.algo == "joint"

    if joint:  # one policy, same initial weights on every rank; each rank samples its share
        member_indices = [0]
        steps_per_sampler = config.population * config.batch_steps // n_ranks
        sampler_seeds = [member_seed(config, rank) + 1]
    else:
        per_rank = config.local_members(n_ranks)
        member_indices = [rank * per_rank + k for k in range(per_rank)]
        steps_per_sampler = config.batch_steps
        sampler_seeds = [member_seed(config, i) + 1 for i in member_indices]
    local = [LocalMember(Member.create(i, obs_dim, act_dim, config, member_seed(config, i)),
                         Sampler(config.env, config.n_envs, config.horizon, seed, f"member {i}"))
             for i, seed in zip(member_indices, sampler_seeds)]
    normalizer = ObsNormalizer(obs_dim, config.obs_clip, enabled=config.obs_norm == "shared")

    reduce_gradients = reduce_mean = None
    if joint and n_ranks > 1:  # data parallel: every rank takes the step of the whole batch
        def reduce_gradients(parameters):
            mpi.average_gradients(comm, parameters)

        def reduce_mean(value):
            return float(mpi.allreduce_sum(comm, np.array([value]))[0] / n_ranks)

    writer = RunFileWriter(config.out, config, n_ranks) if rank == 0 else None
    progress = ProgressLog(config.n_policies)
    iterations_per_round = max(1, config.iterations // config.rounds)
    sets = [np.array([i]) for i in range(config.n_policies)]
    start_time = time.monotonic()
    env_steps = 0

    for iteration in range(config.iterations):
        round_index = min(iteration // iterations_per_round, config.rounds - 1)  # the last takes the remainder
        starts_round = iteration == round_index * iterations_per_round
        sampled = [lm.sampler.sample(lm.member.policy, normalizer, steps_per_sampler) for lm in local]
        batches = [batch for batch, _ in sampled]

        if config.algo == "gpo" and starts_round:
            kl = measure_kl_matrix(comm, local, batches, config, round_index)
            sets = share_sets(kl, config.share_epsilon)
            if writer:
                writer.append(rounds__kl_matrix=kl, rounds__share_set_sizes=[len(s) for s in sets])

        if any(len(s) > 1 for s in sets):
            all_batches = gather_batches(comm, batches, config, obs_dim)
            stats = []
            for lm in local:
                members_read = list(sets[lm.member.index])
                pooled = pool_batches(lm.member.critic, [all_batches[j] for j in members_read],
                                      members_read.index(lm.member.index), config)
                stats.append(update(lm.member, pooled, config))
        else:
            stats = [update(lm.member, pool_batches(lm.member.critic, [batch], 0, config), config,
                            reduce_gradients, reduce_mean)
                     for lm, batch in zip(local, batches)]

        raw_obs = np.concatenate([raw for _, raw in sampled])
        normalizer.update_from_sums(mpi.allreduce_sum(comm, ObsNormalizer.sums(raw_obs)))
        env_steps += config.steps_per_iteration

        # Record: episodes and per-member statistics gathered to every rank (rank 0 writes).
        episode_rows = [np.column_stack([np.full(len(r), lm.member.index), r, n]) for lm in local
                        for r, n in [lm.sampler.episodes.take()]]
        episodes, _ = mpi.allgatherv_rows(comm, np.concatenate(episode_rows).reshape(-1, 3))
        member_rows = np.array([[lm.member.index, s.beta, s.kl] for lm, s in zip(local, stats)])
        members_stats, _ = mpi.allgatherv_rows(comm, member_rows)
        counts = progress.add(episodes)
        if writer:
            returns = progress.member_returns()
            beta, policy_kl = np.full((2, config.n_policies), np.nan)
            # Joint's one member appears once per rank with equal values: any copy will do.
            beta[members_stats[:, 0].astype(int)] = members_stats[:, 1]
            policy_kl[members_stats[:, 0].astype(int)] = members_stats[:, 2]
            elapsed = time.monotonic() - start_time
            writer.append(iterations__env_steps=env_steps, iterations__wall_time=elapsed,
                          iterations__round=round_index, iterations__member_return=returns,
                          iterations__member_episodes=counts, iterations__beta=beta,
                          iterations__policy_kl=policy_kl)
            writer.flush()
            rate = env_steps / elapsed
            eta = (config.iterations * config.steps_per_iteration - env_steps) / rate
            finite = returns[np.isfinite(returns)]
            mean_text = f"{finite.mean():8.1f}" if len(finite) else "     n/a"
            best_text = f"{finite.max():8.1f}" if len(finite) else "     n/a"
            print(f"iter {iteration + 1:4d}/{config.iterations} | round {round_index + 1:2d} | "
                  f"steps {env_steps:>10,} | {rate:7,.0f} steps/s | return mean {mean_text} best {best_text} | "
                  f"ETA {format_duration(eta)}", flush=True)

    parameters = np.stack([flat_parameters(lm.member.policy) for lm in local])
    if joint:  # data parallelism keeps the copies equal; make sure it did
        mpi.check_synced(comm, parameters, "the joint policy's parameters")
    all_parameters, _ = mpi.allgatherv_rows(comm, parameters)
    if writer:
        writer.write_final(all_parameters[:1] if joint else all_parameters)
        writer.close()


def gather_batches(comm, batches: list[Batch], config: RunConfig, obs_dim: int) -> list[Batch]:
    """Every member's batch on every rank, in member order (one Allgatherv)."""
    rows = np.concatenate([b.to_rows() for b in batches])
    all_rows, _ = mpi.allgatherv_rows(comm, rows)
    per_member = np.split(all_rows, config.population)
    return [Batch.from_rows(r, obs_dim) for r in per_member]


def measure_kl_matrix(comm, local: list[LocalMember], batches: list[Batch], config: RunConfig,
                      round_index: int) -> np.ndarray:
    """KL[pi_i || pi_j] for all members, on states pooled from every member's batch."""
    def subsample(member_index: int, batch: Batch) -> np.ndarray:
        # Seeded by member, not rank, so the states do not depend on the rank layout.
        rng = np.random.default_rng((config.seed, member_index, round_index))
        return batch.obs[rng.choice(batch.n_steps, min(config.kl_states, batch.n_steps), replace=False)]

    own_states = np.concatenate([subsample(lm.member.index, b) for lm, b in zip(local, batches)])
    states, _ = mpi.allgatherv_rows(comm, own_states)
    with torch.no_grad():
        local_means = np.stack([lm.member.policy(torch.from_numpy(states))[0].numpy() for lm in local])
    local_log_stds = np.stack([lm.member.policy.log_std.detach().numpy() for lm in local])
    means, _ = mpi.allgatherv_rows(comm, local_means)
    log_stds, _ = mpi.allgatherv_rows(comm, local_log_stds)
    return kl_matrix(means, log_stds)
