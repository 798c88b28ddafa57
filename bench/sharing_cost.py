"""What data sharing costs a member's update: one PPO iteration's time against |S_i|.

    python bench/sharing_cost.py [--env Walker2d-v5] [--repeats 7] [--share-rows 2048] [--out docs/sharing-cost]

One process, one torch thread, the defaults' update (full-batch PPO, 10
policy and 50 critic epochs, the critic fitted on the member's own batch):
pooling |S_i| batches of 2,048 steps (the critic's values, GAE, the foreign
rows' importance weights) and the update on them, for |S_i| = 1 (no
sharing), 2, 4 and 8; then the same with `share_rows` (each policy epoch
on the own batch and a fresh draw of that many foreign rows; default
2,048, one batch's worth). The batches are random observations and actions of
the task's shapes, which is all the cost depends on. Prints the median
seconds of `repeats` iterations, split into pooling and update, and the
ratio to |S_i| = 1; writes PREFIX.md/.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from common import git_commit, write_table
from gpo_mpi import mutate, mutations
from gpo_mpi.config import RunConfig
from gpo_mpi.learner import Member
from gpo_mpi.rollout import Batch

torch.set_num_threads(1)


def random_batch(policy, obs_dim: int, n_steps: int, rng: np.random.Generator) -> Batch:
    """A batch of the right shapes: random states, the policy's actions and their log-probabilities."""
    obs = rng.standard_normal((n_steps, obs_dim)).astype(np.float32)
    with torch.no_grad():
        mean, log_std = policy(torch.from_numpy(obs))
        actions = (mean + log_std.exp() * torch.randn(mean.shape)).numpy()
        log_probs = policy.log_prob(torch.from_numpy(obs), torch.from_numpy(actions)).numpy()
    ends = np.zeros(n_steps, bool)
    ends[999::1000] = True
    truncated = np.zeros(n_steps, bool)
    truncated[-1] = True
    return Batch(obs=obs, actions=actions, log_probs=log_probs, rewards=rng.random(n_steps).astype(np.float32),
                 next_obs=obs, terminated=ends, truncated=truncated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Walker2d-v5")
    parser.add_argument("--share-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--share-rows", type=int, nargs="*", default=[2048],
                        help="share_rows settings timed beside the paper's (all foreign rows)")
    parser.add_argument("--out", type=Path, default=Path("docs/sharing-cost"))
    args = parser.parse_args()

    env = gym.make(args.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    defaults = RunConfig(env=args.env)
    rng = np.random.default_rng(0)
    others = [Member.create(j, obs_dim, act_dim, defaults, seed=j) for j in range(1, max(args.share_sizes))]
    rows, baseline = [], None
    settings = [(0, share_size) for share_size in args.share_sizes]
    settings += [(share_rows, share_size) for share_rows in args.share_rows for share_size in args.share_sizes
                 if (share_size - 1) * defaults.batch_steps > share_rows]  # where the draw takes fewer rows
    for share_rows, share_size in settings:
        config = dataclasses.replace(defaults, share_rows=share_rows)
        member = Member.create(0, obs_dim, act_dim, config, seed=0)
        pooling, updating = [], []
        for _ in range(args.repeats + 1):  # the first iteration warms up and is not counted
            batches = [random_batch(m.policy, obs_dim, config.batch_steps, rng)
                       for m in [member] + others[:share_size - 1]]
            start = time.perf_counter()
            data = mutate.pool_batches(member, batches, 0, config)
            pooled = time.perf_counter()
            mutations.algorithm(config).update(member, data)
            pooling.append(pooled - start)
            updating.append(time.perf_counter() - pooled)
        pool_s, update_s = statistics.median(pooling[1:]), statistics.median(updating[1:])
        total = pool_s + update_s
        baseline = baseline or total
        rows.append([share_rows or "all", share_size, f"{pool_s * 1e3:.0f}", f"{update_s * 1e3:.0f}", f"{total * 1e3:.0f}",
                     f"{total / baseline:.2f}"])
        print(rows[-1], flush=True)
    header = ["share_rows", "|S_i|", "pooling (ms)", "update (ms)", "iteration's learning (ms)", "ratio to |S_i| = 1"]
    notes = [f"{args.env} shapes ({obs_dim} observations, {act_dim} actions), batches of {defaults.batch_steps} "
             f"steps, the defaults' update ({defaults.policy_epochs} policy and {defaults.critic_epochs} critic "
             f"epochs, minibatch {defaults.minibatch or 'full batch'}, critic on its own batch); share_rows all: every "
             "foreign row in every policy epoch (the paper's), a number: a fresh draw of that many each epoch; "
             f"median of {args.repeats} iterations, one thread. Command `python bench/sharing_cost.py`; "
             f"commit {git_commit()}."]
    print(write_table(args.out, header, rows, notes))


if __name__ == "__main__":
    main()
