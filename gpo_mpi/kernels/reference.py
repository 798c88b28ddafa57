"""numpy versions of the kernels: the specification the C++ is held to.

`gae_loop` is the advantage recursion written out step by step, the
definition every other version must equal. `gae_numpy` computes the same
thing with whole-array operations (the fallback when the C++ extension is
not built); `diag_gaussian_kl` is the closed form. They take arguments
already checked by `gpo_mpi.kernels` (1-D / 2-D arrays of agreeing
lengths) and compute in float64.
"""
from __future__ import annotations

import math

import numpy as np

# The vectorized GAE scales step k of a block by (gamma*lam)**k and divides
# it out again; blocks stay short enough that (gamma*lam)**-block stays
# below exp(_MAX_LOG_SCALE), far from float64 overflow or precision loss.
_MAX_LOG_SCALE = 60.0
_MAX_BLOCK = 1024


def td_residuals(rewards, values, next_values, terminated, gamma):
    """delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)."""
    bootstrap = np.where(terminated, 0.0, gamma * np.asarray(next_values, dtype=np.float64))
    return np.asarray(rewards, dtype=np.float64) + bootstrap - values


def gae_loop(rewards, values, next_values, terminated, truncated, gamma, lam):
    """GAE by the backward recursion A_t = delta_t + gamma*lam*(1 - done_t)*A_{t+1}."""
    deltas = td_residuals(rewards, values, next_values, terminated, gamma)
    episode_ends = np.logical_or(terminated, truncated)
    advantages = np.zeros(len(deltas), dtype=np.float64)
    next_advantage = 0.0  # the batch end is a cut: nothing flows in from beyond it
    for t in range(len(deltas) - 1, -1, -1):
        if episode_ends[t]:
            next_advantage = 0.0
        next_advantage = deltas[t] + gamma * lam * next_advantage
        advantages[t] = next_advantage
    return advantages


def gae_numpy(rewards, values, next_values, terminated, truncated, gamma, lam):
    """GAE with whole-array operations: blocks in closed form, a loop over blocks.

    Inside a block, A_p = decay**-p * sum of decay**k * delta_k over the steps
    k >= p of p's episode (decay = gamma*lam); a reverse cumulative sum gives
    all of them at once. What flows in from the next block is added after,
    one block at a time.
    """
    deltas = td_residuals(rewards, values, next_values, terminated, gamma)
    n = len(deltas)
    decay = gamma * lam
    if n == 0 or decay == 0.0:
        return deltas
    block = _MAX_BLOCK if decay == 1.0 else int(min(_MAX_BLOCK, max(1, _MAX_LOG_SCALE / -math.log(decay))))
    n_blocks = -(-n // block)
    padding = n_blocks * block - n

    # A step "ends" where nothing flows back into it from the step after:
    # episode ends, the batch end, and the padding.
    ends = np.ones(n_blocks * block, dtype=bool)
    ends[:n] = np.logical_or(terminated, truncated)
    ends = ends.reshape(n_blocks, block)
    delta_blocks = np.pad(deltas, (0, padding)).reshape(n_blocks, block)

    position = np.arange(block)
    scale = decay ** position.astype(np.float64)
    suffix_sums = np.zeros((n_blocks, block + 1))
    suffix_sums[:, :block] = np.cumsum((delta_blocks * scale)[:, ::-1], axis=1)[:, ::-1]
    # First episode end at or after each step inside its block (block if none).
    first_end = np.where(ends, position, block)
    first_end = np.minimum.accumulate(first_end[:, ::-1], axis=1)[:, ::-1]
    past_episode = np.minimum(first_end + 1, block)
    in_episode = suffix_sums[:, :block] - np.take_along_axis(suffix_sums, past_episode, axis=1)
    advantages = in_episode / scale

    # Steps whose episode runs past the block end receive decay**(block - p)
    # times the advantage at the start of the next block.
    inflow_weight = np.where(first_end == block, decay ** (block - position).astype(np.float64), 0.0)
    next_block_start = 0.0
    for b in range(n_blocks - 1, -1, -1):
        advantages[b] += inflow_weight[b] * next_block_start
        next_block_start = advantages[b, 0]
    return advantages.reshape(-1)[:n]


def diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q):
    """KL[p || q] per row: sum_i log(s_q/s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2."""
    mean_p, log_std_p, mean_q, log_std_q = (
        np.asarray(a, dtype=np.float64) for a in (mean_p, log_std_p, mean_q, log_std_q)
    )
    var_p = np.exp(2.0 * log_std_p)
    var_q = np.exp(2.0 * log_std_q)
    per_dim = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5
    return np.broadcast_to(per_dim, mean_p.shape).sum(axis=1)
