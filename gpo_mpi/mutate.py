"""MUTATE: policy-gradient steps on one member, with optional data sharing.

Plain functions on torch modules and numpy batches; no MPI. A member's
update may read the batches of other members (component M): their samples
are importance-weighted by pi_theta(a|s) / pi_j_old(a|s) and their
advantages come from the learner's own critic. That weight is split into
pi_theta / pi_i_old (PPO's own ratio, near 1) and the fixed correction
pi_i_old / pi_j_old, which `share_ratio_cap` truncates as V-trace does, so
that one foreign sample cannot carry a whole update. Joint's data-parallel
update gets a `DataParallel`: each rank holds a slice of the whole batch and
the step is the whole batch's.

PPO maximizes E[ratio * A] - beta * KL[pi_old || pi] (the adaptive-KL
objective of the paper), A2C takes one gradient step on E[ratio * A],
whose gradient at the behaviour policy is E[grad log pi * A].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import kernels
from .config import RunConfig
from .learner import Member, gaussian_kl, minibatch_indices
from .networks import gaussian_log_prob
from .rollout import Batch, NonFiniteError


def importance_ratios(log_probs_learner: torch.Tensor, log_probs_behaviour: torch.Tensor) -> torch.Tensor:
    """pi_learner(a|s) / pi_behaviour(a|s); exactly 1 where the learner is the behaviour policy."""
    return torch.exp(log_probs_learner - log_probs_behaviour)


def ppo_loss(ratios: torch.Tensor, advantages: torch.Tensor, kl_old_new: torch.Tensor, beta: float,
             n_rows: int | None = None, n_own_rows: int | None = None) -> torch.Tensor:
    """Negative adaptive-KL PPO objective: -(mean(ratio * A) - beta * mean(KL[pi_old || pi])).

    The KL is taken over the learner's own states only (a minibatch may
    hold none of them when it learns from others' batches). The means
    divide by `n_rows` and `n_own_rows` (default: the rows given), which
    under data parallelism count the rows of every rank.
    """
    n_rows = len(ratios) if n_rows is None else n_rows
    n_own_rows = len(kl_old_new) if n_own_rows is None else n_own_rows
    penalty = kl_old_new.sum() / max(n_own_rows, 1)
    return -(ratios * advantages).sum() / max(n_rows, 1) + beta * penalty


def a2c_loss(ratios: torch.Tensor, advantages: torch.Tensor, n_rows: int | None = None) -> torch.Tensor:
    """Negative importance-weighted policy-gradient objective -mean(ratio * A)."""
    return -(ratios * advantages).sum() / max(len(ratios) if n_rows is None else n_rows, 1)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: the number of equally
    weighted samples that would carry as much information."""
    weights = np.asarray(weights, dtype=np.float64)
    total_squares = float((weights ** 2).sum())
    return float(weights.sum()) ** 2 / total_squares if total_squares > 0 else 0.0


def adapt_beta(beta: float, kl: float, kl_target: float) -> float:
    """The paper's rule: double beta above 1.5 x target, halve it below target / 1.5."""
    if kl > 1.5 * kl_target:
        return beta * 2.0
    if kl < kl_target / 1.5:
        return beta / 2.0
    return beta


@dataclass
class PooledData:
    """The learner's view of the batches it learns from, as tensors."""
    obs: torch.Tensor
    actions: torch.Tensor
    behaviour_log_probs: torch.Tensor  # log pi_i_old(a|s): the learner's policy before this update
    weights: torch.Tensor  # fixed importance correction: 1 on own rows, min(cap, pi_i_old / pi_j_old) on j's
    advantages: torch.Tensor
    returns: torch.Tensor
    own: torch.Tensor  # bool: rows from the learner's own batch

    @property
    def effective_sample_size(self) -> float:
        """Kish's effective sample size of the rows' importance weights."""
        return effective_sample_size(self.weights.numpy())


@dataclass
class DataParallel:
    """Joint's data parallelism: this rank holds rows [first_row, first_row + n) of
    a batch of `total_rows`, and sums over ranks come from the two callbacks."""
    first_row: int
    total_rows: int
    sum_values: Callable[[np.ndarray], np.ndarray]  # elementwise sum of a float64 vector over ranks
    sum_gradients: Callable[[list], None]  # each parameter's gradient becomes its sum over ranks


def standardize(advantages: np.ndarray, parallel: DataParallel | None = None) -> np.ndarray:
    """Zero mean and unit standard deviation over the whole batch (all ranks' rows under `parallel`)."""
    values = advantages.astype(np.float64)  # float32 sums lose the variance of advantages far from zero
    moments = np.array([len(values), values.sum(), (values ** 2).sum()])
    if parallel is not None:
        moments = parallel.sum_values(moments)
    count, total, total_squares = moments
    if count < 2:
        return advantages
    mean = total / count
    std = np.sqrt(max(total_squares / count - mean ** 2, 0.0))
    return (advantages - mean) / (std + 1e-8)


def pool_batches(member: Member, batches: Sequence[Batch], own_index: int | None, config: RunConfig,
                 parallel: DataParallel | None = None) -> PooledData:
    """Concatenate batches and compute advantages with the learner's critic (C++ GAE).

    Each batch ends with a cut (its last step is flagged truncated), so one
    GAE call over the concatenation never lets advantage flow between batches.
    Rows of other members' batches get the truncated importance correction
    min(share_ratio_cap, pi_i_old / pi_j_old); `own_index` None means every
    batch is the learner's own (Joint's sampler slots).
    """
    def cat(name):
        return np.concatenate([getattr(b, name) for b in batches])

    obs, next_obs, actions = cat("obs"), cat("next_obs"), cat("actions")
    with torch.no_grad():
        values = member.critic(torch.from_numpy(obs)).numpy()
        next_values = member.critic(torch.from_numpy(next_obs)).numpy()
    advantages = kernels.gae(cat("rewards"), values, next_values, cat("terminated"), cat("truncated"),
                             config.gamma, config.gae_lambda)
    returns = advantages + values
    own = np.concatenate([np.full(b.n_steps, own_index is None or i == own_index) for i, b in enumerate(batches)])
    behaviour_log_probs = cat("log_probs")
    weights = np.ones(len(obs), dtype=np.float32)
    if not own.all():
        with torch.no_grad():
            learner_log_probs = member.policy.log_prob(torch.from_numpy(obs[~own]),
                                                       torch.from_numpy(actions[~own])).numpy()
        weights[~own] = np.minimum(config.share_ratio_cap, np.exp(learner_log_probs - behaviour_log_probs[~own]))
        behaviour_log_probs = behaviour_log_probs.copy()
        behaviour_log_probs[~own] = learner_log_probs
    if config.normalize_advantages:
        advantages = standardize(advantages, parallel)
    return PooledData(obs=torch.from_numpy(obs), actions=torch.from_numpy(actions),
                      behaviour_log_probs=torch.from_numpy(behaviour_log_probs),
                      weights=torch.from_numpy(weights),
                      advantages=torch.from_numpy(advantages.astype(np.float32)),
                      returns=torch.from_numpy(returns.astype(np.float32)), own=torch.from_numpy(own))


def _step(optimizers, parameter_groups, loss: torch.Tensor, max_grad_norm: float,
          sum_gradients: Callable | None) -> None:
    """One gradient step of every network in `parameter_groups` on `loss`
    (one backward pass), each network's gradient clipped on its own."""
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for parameters in parameter_groups:
        if sum_gradients is not None:
            sum_gradients(parameters)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    for optimizer in optimizers:
        optimizer.step()


@dataclass
class UpdateStats:
    policy_loss: float
    critic_loss: float
    kl: float          # mean KL[pi_old || pi_new] on the learner's own states
    beta: float        # after adaptation
    effective_sample_size: float  # of the rows it learned from, in samples (its own batch alone: its size)


def update(member: Member, data: PooledData, config: RunConfig, parallel: DataParallel | None = None) -> UpdateStats:
    """One policy-gradient iteration (PPO or A2C) and the critic's fit.

    PPO and critic share minibatches and one backward pass per minibatch
    (half the autograd and optimizer overhead of two loops); A2C's single
    full-batch policy step comes first, then the critic's epochs. Minibatches
    are drawn from the rows of the whole batch: under `parallel` (Joint),
    every rank draws the same row order, computes the loss of the rows it
    holds divided by the minibatch's size, and the gradients are summed over
    ranks, so the step is that of one process holding the whole batch.
    """
    policy, critic = member.policy, member.critic
    networks = [(member.policy_optimizer, list(policy.parameters())),
                (member.critic_optimizer, list(critic.parameters()))]
    with torch.no_grad():
        old_mean, old_log_std = policy(data.obs)

    n_local = len(data.obs)
    first_row, total_rows = (parallel.first_row, parallel.total_rows) if parallel else (0, n_local)
    sum_gradients = parallel.sum_gradients if parallel else None
    only_own_data = bool(data.own.all())
    if parallel is not None and not only_own_data:
        raise ValueError("data parallelism (Joint) never pools other members' batches")
    critic_own_only = config.critic_data == "own" and not only_own_data

    def local_rows(global_rows: torch.Tensor) -> torch.Tensor:
        if parallel is None:
            return global_rows
        inside = (global_rows >= first_row) & (global_rows < first_row + n_local)
        return global_rows[inside] - first_row

    # rows None: every row in order (a full-batch epoch, the defaults' minibatch 0), computed on the
    # tensors themselves rather than on copies gathered row by row, with what depends only on the rows
    # worked out once.
    full_batch = config.minibatch == 0 or config.minibatch >= total_rows  # see minibatch_indices
    own_rows = torch.nonzero(data.own).squeeze(1)
    own_old_mean = old_mean[own_rows]
    # share_rows: each epoch the learner's own rows and a fresh draw of that many foreign ones
    foreign_rows = torch.nonzero(~data.own).squeeze(1)
    draws_foreign_rows = 0 < config.share_rows < len(foreign_rows)

    def take(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return tensor if rows is None else tensor[rows]

    def policy_loss(rows, n_rows: int) -> torch.Tensor:
        mean, log_std = policy(take(data.obs, rows))
        log_probs = gaussian_log_prob(mean, log_std, take(data.actions, rows))
        ratios = importance_ratios(log_probs, take(data.behaviour_log_probs, rows))
        if not only_own_data:
            ratios = ratios * take(data.weights, rows)
        if config.mutation == "a2c":
            return a2c_loss(ratios, take(data.advantages, rows), n_rows)
        old_mean_rows, n_own_rows = take(old_mean, rows), n_rows
        if not only_own_data:  # the KL penalty looks at the learner's own states only
            if rows is None:
                old_mean_rows, mean, n_own_rows = own_old_mean, mean[own_rows], len(own_rows)
            else:
                own = data.own[rows]
                old_mean_rows, mean, n_own_rows = old_mean_rows[own], mean[own], int(own.sum())
        kl = gaussian_kl(old_mean_rows, old_log_std, mean, log_std)
        return ppo_loss(ratios, take(data.advantages, rows), kl, member.beta, n_rows, n_own_rows)

    own_obs, own_returns = data.obs[own_rows], data.returns[own_rows]

    def critic_loss(rows, n_rows: int, whole_epoch: bool) -> torch.Tensor:
        if critic_own_only and whole_epoch:  # every epoch holds all the learner's own rows
            obs, returns, n_rows = own_obs, own_returns, len(own_rows)
        elif critic_own_only:
            rows = rows[data.own[rows]]
            obs, returns, n_rows = data.obs[rows], data.returns[rows], len(rows)
        else:
            obs, returns = take(data.obs, rows), take(data.returns, rows)
        return ((critic(obs) - returns) ** 2).sum() / max(n_rows, 1)

    last_policy_loss = last_critic_loss = torch.zeros(())
    policy_epochs = config.policy_epochs
    if config.mutation == "a2c":
        last_policy_loss = policy_loss(None if parallel is None else local_rows(torch.arange(total_rows)),
                                       total_rows)
        _step([member.policy_optimizer], [networks[0][1]], last_policy_loss, config.max_grad_norm, sum_gradients)
        policy_epochs = 0
    for epoch in range(max(policy_epochs, config.critic_epochs)):
        trains_policy, trains_critic = epoch < policy_epochs, epoch < config.critic_epochs
        chosen = [network for network, used in zip(networks, (trains_policy, trains_critic)) if used]
        if draws_foreign_rows:
            drawn = foreign_rows[torch.randperm(len(foreign_rows), generator=member.generator)[:config.share_rows]]
            epoch_rows = torch.sort(torch.cat([own_rows, drawn])).values
        for global_rows in minibatch_indices(len(epoch_rows) if draws_foreign_rows else total_rows,
                                             config.minibatch, member.generator):
            if draws_foreign_rows:
                rows, n_rows = epoch_rows[global_rows], len(global_rows)
            else:
                rows, n_rows = (None if full_batch else local_rows(global_rows)), len(global_rows)
            loss = torch.zeros(())
            if trains_policy:
                last_policy_loss = policy_loss(rows, n_rows)
                loss = loss + last_policy_loss
            if trains_critic:
                last_critic_loss = critic_loss(rows, n_rows, full_batch)
                loss = loss + last_critic_loss
            if not torch.isfinite(loss):
                raise NonFiniteError(f"member {member.index} on {config.env}: the policy-gradient loss became "
                                     f"non-finite ({float(loss.detach())})")
            _step([o for o, _ in chosen], [p for _, p in chosen], loss, config.max_grad_norm, sum_gradients)

    with torch.no_grad():
        new_mean, new_log_std = policy(data.obs[own_rows])
        kl_sum = float(gaussian_kl(own_old_mean, old_log_std, new_mean, new_log_std).sum())
    kl_sum_and_rows = np.array([kl_sum, float(data.own.sum())])
    if parallel is not None:
        kl_sum_and_rows = parallel.sum_values(kl_sum_and_rows)
    kl = float(kl_sum_and_rows[0] / max(kl_sum_and_rows[1], 1.0))
    if config.mutation == "ppo":
        member.beta = adapt_beta(member.beta, kl, config.kl_target)
    return UpdateStats(policy_loss=float(last_policy_loss.detach()), critic_loss=float(last_critic_loss.detach()),
                       kl=kl, beta=member.beta, effective_sample_size=data.effective_sample_size)
