"""Data sharing's measurements (component M): the KL between members' policies on shared states, and the
share sets S_i it decides.

Plain numpy and torch functions; the engine moves their inputs and outputs between ranks. Each rank
computes the rows of the KL matrix of its own members (the work grows as members x states, not members^2 x
states), from every member's mean actions on the same states.
"""
from __future__ import annotations

import numpy as np
import torch

from . import kernels, seeds
from .config import RunConfig
from .networks import GaussianPolicy
from .rollout import Batch


def kl_states(config: RunConfig, member_index: int, iteration: int, batch: Batch) -> np.ndarray:
    """The states a member adds to the pool the KL matrix is measured on: `kl_states_per_member` of its last
    batch, drawn without replacement from a stream of its own for the iteration."""
    rng = seeds.kl_states(config.seed, member_index, iteration)
    count = min(config.kl_states_per_member, batch.n_steps)
    return batch.obs[rng.choice(batch.n_steps, count, replace=False)]


def policy_rows(policies: list[GaussianPolicy], states: np.ndarray) -> np.ndarray:
    """One row per policy: its mean actions on every state, then its log-std (what the KL needs of it)."""
    with torch.no_grad():
        return np.stack([np.concatenate([policy(torch.from_numpy(states))[0].numpy().ravel(),
                                         policy.log_std.detach().numpy()]) for policy in policies])


def kl_rows_of(rows: np.ndarray, n_states: int, act_dim: int, members) -> np.ndarray:
    """The KL matrix's rows of `members`, from every member's `policy_rows` row (in member order)."""
    means, log_stds = rows[:, :-act_dim], rows[:, -act_dim:]
    return kl_rows(means.reshape(len(rows), n_states, act_dim), log_stds, members)


def kl_matrix(means: np.ndarray, log_stds: np.ndarray) -> np.ndarray:
    """KL[pi_i || pi_j] averaged over shared states, for every pair of members.

    `means` is (members, states, act_dim): every member's mean action on the
    same states; `log_stds` is (members, act_dim). Uses the C++ KL kernel.
    """
    return kl_rows(means, log_stds, range(len(means)))


def kl_rows(means: np.ndarray, log_stds: np.ndarray, rows) -> np.ndarray:
    """The rows `rows` of kl_matrix (KL[pi_i || pi_j] for i in rows, every j), each computed as
    kl_matrix computes it: a rank computes the rows of its own members only."""
    matrix = np.zeros((len(rows), len(means)))
    for row, i in enumerate(rows):
        for j in range(len(means)):
            if i != j:
                matrix[row, j] = kernels.diag_gaussian_kl(means[i], log_stds[i], means[j], log_stds[j]).mean()
    return matrix


def share_sets(kl: np.ndarray, epsilon: float, max_others: int = 0) -> list[np.ndarray]:
    """S_i = {i} and the members j with KL[pi_i, pi_j] < epsilon, in index order.

    With `max_others` > 0, only the nearest `max_others` of those (smallest
    KL, ties to the lower index) join i.
    """
    sets = []
    for i, row in enumerate(kl):
        others = np.flatnonzero((row < epsilon) & (np.arange(len(row)) != i))
        if max_others > 0:
            others = others[np.argsort(row[others], kind="stable")[:max_others]]
        sets.append(np.sort(np.append(others, i)))
    return sets
