"""MUTATE: policy-gradient steps on one member, with optional data sharing.

Plain functions on torch modules and numpy batches; no MPI. A member's
update may read the batches of other members (component M): their samples
are importance-weighted by pi_i(a|s) / pi_j_old(a|s) and their advantages
come from the learner's own critic. Joint's data-parallel update passes a
`reduce_gradients` callback that sums gradients over ranks.

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
from .networks import Critic, GaussianPolicy, gaussian_log_prob
from .rollout import Batch, NonFiniteError


def importance_ratios(log_probs_learner: torch.Tensor, log_probs_behaviour: torch.Tensor) -> torch.Tensor:
    """pi_learner(a|s) / pi_behaviour(a|s); exactly 1 where the learner is the behaviour policy."""
    return torch.exp(log_probs_learner - log_probs_behaviour)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> torch.Tensor:
    """KL[p || q] per row for diagonal Gaussians, differentiable (torch twin of kernels.diag_gaussian_kl)."""
    return (log_std_q - log_std_p + (torch.exp(2 * log_std_p) + (mean_p - mean_q) ** 2)
            / (2 * torch.exp(2 * log_std_q)) - 0.5).sum(-1)


def ppo_loss(ratios: torch.Tensor, advantages: torch.Tensor, kl_old_new: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative adaptive-KL PPO objective: -(mean(ratio * A) - beta * mean(KL[pi_old || pi])).

    The KL is taken over the learner's own states only (a minibatch may
    hold none of them when it learns from others' batches).
    """
    penalty = kl_old_new.mean() if kl_old_new.numel() else kl_old_new.sum()
    return -(ratios * advantages).mean() + beta * penalty


def a2c_loss(ratios: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Negative importance-weighted policy-gradient objective -mean(ratio * A)."""
    return -(ratios * advantages).mean()


def kl_matrix(means: np.ndarray, log_stds: np.ndarray) -> np.ndarray:
    """KL[pi_i || pi_j] averaged over shared states, for every pair of members.

    `means` is (members, states, act_dim): every member's mean action on the
    same states; `log_stds` is (members, act_dim). Uses the C++ KL kernel.
    """
    n_members = len(means)
    matrix = np.zeros((n_members, n_members))
    for i in range(n_members):
        for j in range(n_members):
            if i != j:
                matrix[i, j] = kernels.diag_gaussian_kl(means[i], log_stds[i], means[j], log_stds[j]).mean()
    return matrix


def share_sets(kl: np.ndarray, epsilon: float) -> list[np.ndarray]:
    """S_i = {j : KL[pi_i, pi_j] < epsilon}, always holding i itself."""
    return [np.flatnonzero((row < epsilon) | (np.arange(len(row)) == i)) for i, row in enumerate(kl)]


def adapt_beta(beta: float, kl: float, kl_target: float) -> float:
    """The paper's rule: double beta above 1.5 x target, halve it below target / 1.5."""
    if kl > 1.5 * kl_target:
        return beta * 2.0
    if kl < kl_target / 1.5:
        return beta / 2.0
    return beta


@dataclass
class Member:
    """One population member: its networks, optimizers and penalty weight."""
    index: int
    policy: GaussianPolicy
    critic: Critic
    policy_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer
    beta: float
    generator: torch.Generator  # minibatch order

    @classmethod
    def create(cls, index: int, obs_dim: int, act_dim: int, config: RunConfig, seed: int) -> "Member":
        torch.manual_seed(seed)  # the initial weights depend on the member's seed alone
        policy = GaussianPolicy(obs_dim, act_dim, config.policy_hidden, config.init_log_std)
        critic = Critic(obs_dim, config.critic_hidden)
        return cls(index=index, policy=policy, critic=critic,
                   policy_optimizer=torch.optim.Adam(policy.parameters(), lr=config.policy_lr, fused=True),
                   critic_optimizer=torch.optim.Adam(critic.parameters(), lr=config.critic_lr, fused=True),
                   beta=config.initial_beta, generator=torch.Generator().manual_seed(seed))


@dataclass
class PooledData:
    """The learner's view of the batches it learns from, as tensors."""
    obs: torch.Tensor
    actions: torch.Tensor
    behaviour_log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    own: torch.Tensor  # bool: rows from the learner's own batch


def pool_batches(critic: Critic, batches: Sequence[Batch], own_index: int, config: RunConfig) -> PooledData:
    """Concatenate batches and compute advantages with the learner's critic (C++ GAE).

    Each batch ends with a cut (its last step is flagged truncated), so one
    GAE call over the concatenation never lets advantage flow between batches.
    """
    def cat(name):
        return np.concatenate([getattr(b, name) for b in batches])

    obs, next_obs = cat("obs"), cat("next_obs")
    with torch.no_grad():
        values = critic(torch.from_numpy(obs)).numpy()
        next_values = critic(torch.from_numpy(next_obs)).numpy()
    advantages = kernels.gae(cat("rewards"), values, next_values, cat("terminated"), cat("truncated"),
                             config.gamma, config.gae_lambda)
    returns = advantages + values
    own = np.concatenate([np.full(b.n_steps, i == own_index) for i, b in enumerate(batches)])
    if config.normalize_advantages and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return PooledData(obs=torch.from_numpy(obs), actions=torch.from_numpy(cat("actions")),
                      behaviour_log_probs=torch.from_numpy(cat("log_probs")),
                      advantages=torch.from_numpy(advantages.astype(np.float32)),
                      returns=torch.from_numpy(returns.astype(np.float32)), own=torch.from_numpy(own))


def minibatch_indices(n_rows: int, size: int, generator: torch.Generator):
    """Index tensors covering a random permutation of the rows in chunks of `size`
    (the last may be smaller); size 0 means all rows at once, in order."""
    if size == 0 or size >= n_rows:
        yield torch.arange(n_rows)
        return
    order = torch.randperm(n_rows, generator=generator)
    for start in range(0, n_rows, size):
        yield order[start:start + size]


def _step(optimizers, parameter_groups, loss: torch.Tensor, max_grad_norm: float,
          reduce_gradients: Callable | None) -> None:
    """One gradient step of every network in `parameter_groups` on `loss`
    (one backward pass), each network's gradient clipped on its own."""
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for parameters in parameter_groups:
        if reduce_gradients is not None:
            reduce_gradients(parameters)
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


def update(member: Member, data: PooledData, config: RunConfig,
           reduce_gradients: Callable | None = None, reduce_mean: Callable | None = None) -> UpdateStats:
    """One policy-gradient iteration (PPO or A2C) and the critic's fit.

    PPO and critic share minibatches and one backward pass per minibatch
    (half the autograd and optimizer overhead of two loops); A2C's single
    full-batch policy step comes first, then the critic's epochs.
    `reduce_gradients(parameters)` (Joint's data parallelism) replaces each
    gradient by its mean over ranks; `reduce_mean(x)` averages a float.
    """
    policy, critic = member.policy, member.critic
    networks = [(member.policy_optimizer, list(policy.parameters())),
                (member.critic_optimizer, list(critic.parameters()))]
    with torch.no_grad():
        old_mean, old_log_std = policy(data.obs)

    only_own_data = bool(data.own.all())

    def policy_loss(rows) -> torch.Tensor:
        mean, log_std = policy(data.obs[rows])
        log_probs = gaussian_log_prob(mean, log_std, data.actions[rows])
        ratios = importance_ratios(log_probs, data.behaviour_log_probs[rows])
        if config.mutation == "a2c":
            return a2c_loss(ratios, data.advantages[rows])
        old_mean_rows = old_mean[rows]
        if not only_own_data:  # the KL penalty looks at the learner's own states only
            own = data.own[rows]
            old_mean_rows, mean = old_mean_rows[own], mean[own]
        kl = gaussian_kl(old_mean_rows, old_log_std, mean, log_std)
        return ppo_loss(ratios, data.advantages[rows], kl, member.beta)

    def critic_loss(rows) -> torch.Tensor:
        return ((critic(data.obs[rows]) - data.returns[rows]) ** 2).mean()

    last_policy_loss = last_critic_loss = torch.zeros(())
    policy_epochs = config.policy_epochs
    if config.mutation == "a2c":
        all_rows = torch.arange(len(data.obs))
        last_policy_loss = policy_loss(all_rows)
        _step([member.policy_optimizer], [networks[0][1]], last_policy_loss, config.max_grad_norm, reduce_gradients)
        policy_epochs = 0
    for epoch in range(max(policy_epochs, config.critic_epochs)):
        trains_policy, trains_critic = epoch < policy_epochs, epoch < config.critic_epochs
        chosen = [network for network, used in zip(networks, (trains_policy, trains_critic)) if used]
        for rows in minibatch_indices(len(data.obs), config.minibatch, member.generator):
            loss = torch.zeros(())
            if trains_policy:
                last_policy_loss = policy_loss(rows)
                loss = loss + last_policy_loss
            if trains_critic:
                last_critic_loss = critic_loss(rows)
                loss = loss + last_critic_loss
            if not torch.isfinite(loss):
                raise NonFiniteError(f"member {member.index} on {config.env}: the policy-gradient loss became "
                                     f"non-finite ({float(loss.detach())})")
            _step([o for o, _ in chosen], [p for _, p in chosen], loss, config.max_grad_norm, reduce_gradients)

    with torch.no_grad():
        new_mean, new_log_std = policy(data.obs[data.own])
        kl = float(gaussian_kl(old_mean[data.own], old_log_std, new_mean, new_log_std).mean())
    if reduce_mean is not None:
        kl = reduce_mean(kl)
    if config.mutation == "ppo":
        member.beta = adapt_beta(member.beta, kl, config.kl_target)
    return UpdateStats(policy_loss=float(last_policy_loss.detach()), critic_loss=float(last_critic_loss.detach()),
                       kl=kl, beta=member.beta)
