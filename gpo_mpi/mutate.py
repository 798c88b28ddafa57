"""MUTATE: policy-gradient steps on one member, with optional data sharing.

Plain functions and classes on torch modules and numpy batches; no MPI. A
member's update may read the batches of other members (component M): their
samples are importance-weighted by pi_theta(a|s) / pi_j_old(a|s) and their
advantages come from the learner's own critic. That weight is split into
pi_theta / pi_i_old (the algorithm's own ratio, near 1) and the fixed
correction pi_i_old / pi_j_old, which `share_ratio_cap` truncates as
V-trace does, so that one foreign sample cannot carry a whole update.
Joint's data-parallel update gets a `DataParallel`: each rank holds a slice
of the whole batch and the step is the whole batch's.

`Mutation` is what every algorithm shares: the critic's fit, the gradient
steps over the rows `TrainingRows` hands out, and the statistics every
update reports. An algorithm (gpo_mpi/mutations/) gives the policy's loss on
a `PolicyStep` and may adapt its state after the update, as
Stable-Baselines3's `train()` does inside its on-policy loop.
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


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: the number of equally
    weighted samples that would carry as much information."""
    weights = np.asarray(weights, dtype=np.float64)
    total_squares = float((weights ** 2).sum())
    return float(weights.sum()) ** 2 / total_squares if total_squares > 0 else 0.0


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
    values: torch.Tensor  # the learner's critic's, before the update

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
                      returns=torch.from_numpy(returns.astype(np.float32)), own=torch.from_numpy(own),
                      values=torch.from_numpy(values.astype(np.float32)))


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
class Minibatch:
    """The rows of one gradient step (None: every row in order, computed on the tensors themselves rather than
    on copies) and the minibatch's size over all ranks, by which its losses divide their sums."""
    rows: torch.Tensor | None
    n_rows: int
    whole_epoch: bool  # the epoch is one step on all its rows (so all the learner's own rows are in it)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.rows is None else tensor[self.rows]


class TrainingRows:
    """Which rows each gradient step of an update trains on: minibatches of the rows of the whole batch
    (under `parallel`, Joint's, every rank draws the same order and keeps the rows it holds), and under
    data sharing with `share_rows`, each epoch the learner's own rows and a fresh draw of that many foreign
    ones."""

    def __init__(self, data: PooledData, config: RunConfig, generator: torch.Generator,
                 parallel: DataParallel | None):
        self.n_local = len(data.obs)
        self.first_row, self.total_rows = (parallel.first_row, parallel.total_rows) if parallel else (0, self.n_local)
        self.parallel, self.generator = parallel, generator
        self.minibatch, self.share_rows = config.minibatch, config.share_rows
        self.full_batch = config.minibatch == 0 or config.minibatch >= self.total_rows  # see minibatch_indices
        self.own_rows = torch.nonzero(data.own).squeeze(1)
        self.foreign_rows = torch.nonzero(~data.own).squeeze(1)
        self.draws_foreign_rows = 0 < config.share_rows < len(self.foreign_rows)

    def local(self, global_rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows among rows of the whole batch, as its own row numbers."""
        if self.parallel is None:
            return global_rows
        inside = (global_rows >= self.first_row) & (global_rows < self.first_row + self.n_local)
        return global_rows[inside] - self.first_row

    def whole_batch(self) -> Minibatch:
        """Every row at once (A2C's one step)."""
        rows = None if self.parallel is None else self.local(torch.arange(self.total_rows))
        return Minibatch(rows, self.total_rows, True)

    def epoch(self):
        """One epoch's minibatches."""
        if self.draws_foreign_rows:
            order = torch.randperm(len(self.foreign_rows), generator=self.generator)
            drawn = self.foreign_rows[order[:self.share_rows]]
            epoch_rows = torch.sort(torch.cat([self.own_rows, drawn])).values
            for rows in minibatch_indices(len(epoch_rows), self.minibatch, self.generator):
                yield Minibatch(epoch_rows[rows], len(rows), self.full_batch)
            return
        for global_rows in minibatch_indices(self.total_rows, self.minibatch, self.generator):
            yield Minibatch(None if self.full_batch else self.local(global_rows), len(global_rows), self.full_batch)


@dataclass
class PolicyStep:
    """One minibatch as a policy loss sees it: the policy's output on its rows and their ratios
    pi_theta / pi_i_old (both differentiable), the fixed importance correction of foreign rows (None when
    every row of the update is the learner's own), the advantages, and its size over all ranks. An
    algorithm may `report` a measurement of the step: a sum over its rows divided by `n_rows` (so that it
    adds up over ranks); the update reports its mean over the policy's steps under that name."""
    mean: torch.Tensor
    log_std: torch.Tensor
    ratios: torch.Tensor
    weights: torch.Tensor | None
    advantages: torch.Tensor
    n_rows: int
    minibatch: Minibatch
    update: "Update"
    reports: dict

    def weighted_ratios(self) -> torch.Tensor:
        """pi_theta / pi_j_old with the truncated correction: the ratio of the importance-weighted objective."""
        return self.ratios if self.weights is None else self.ratios * self.weights

    def own_kl(self) -> tuple[torch.Tensor, int]:
        """KL[pi_old || pi_theta] on the step's rows of the learner's own batch (a minibatch may hold none of
        them when it learns from others'), and how many own rows the whole minibatch has over all ranks."""
        update, rows = self.update, self.minibatch.rows
        old_mean, mean, n_own_rows = self.minibatch.take(update.old_mean), self.mean, self.n_rows
        if not update.only_own_data:
            if rows is None:
                old_mean, mean, n_own_rows = update.own_old_mean, mean[update.rows.own_rows], len(update.rows.own_rows)
            else:
                own = update.data.own[rows]
                old_mean, mean, n_own_rows = old_mean[own], mean[own], int(own.sum())
        return gaussian_kl(old_mean, update.old_log_std, mean, self.log_std), n_own_rows

    def report(self, name: str, value: torch.Tensor | float) -> None:
        self.reports[name] = float(value)


@dataclass
class Update:
    """What one update works on: the data, its rows, and the policy before the update."""
    data: PooledData
    rows: TrainingRows
    old_mean: torch.Tensor
    old_log_std: torch.Tensor
    own_old_mean: torch.Tensor
    only_own_data: bool


# Every update's statistics, recorded by name per member and iteration (run file: iterations/<name>).
COMMON_STATISTICS = ("policy_kl", "effective_sample_size", "policy_loss", "value_loss", "entropy", "approx_kl",
                     "explained_variance")


class Mutation:
    """A mutation algorithm: the policy's loss on each minibatch (`policy_loss`), how many epochs the policy
    trains, optional steps before them (`before_epochs`) and what it adapts after the update
    (`after_update`). The critic's fit and the gradient steps are the same for all: policy and critic share
    minibatches and one backward pass per minibatch (half the autograd and optimizer overhead of two
    loops), and the critic goes on alone for its remaining epochs.

    `statistics` names what `after_update` and `PolicyStep.report` add to COMMON_STATISTICS.
    """
    statistics: tuple[str, ...] = ()

    def __init__(self, config: RunConfig):
        self.config = config

    @property
    def statistic_names(self) -> tuple[str, ...]:
        return COMMON_STATISTICS + self.statistics

    def policy_epochs(self) -> int:
        """Epochs of minibatch steps of the policy (beside the critic's)."""
        return self.config.policy_epochs

    def policy_loss(self, member: Member, step: PolicyStep) -> torch.Tensor:
        """The loss whose gradient step improves the policy on `step`'s rows."""
        raise NotImplementedError

    def before_epochs(self, rows: TrainingRows, policy_loss: Callable[[Minibatch], torch.Tensor],
                      take_policy_step: Callable[[torch.Tensor], None]) -> None:
        """Gradient steps of the policy alone before the epochs (none by default)."""

    def after_update(self, member: Member, policy_kl: float) -> dict[str, float]:
        """Adapt what the algorithm keeps after the update; returns its statistics besides the reports."""
        return {}

    def update(self, member: Member, data: PooledData, parallel: DataParallel | None = None,
               learning_rate_factor: float = 1.0) -> dict[str, float]:
        """One policy-gradient iteration and the critic's fit, at `learning_rate_factor` times the configured
        learning rates (schedules.learning_rate_factor); returns the statistics by name.

        Under `parallel` (Joint), every rank computes the loss of the rows it holds divided by the
        minibatch's size and the gradients are summed over ranks, so the step is that of one process
        holding the whole batch.
        """
        config = self.config
        policy, critic = member.policy, member.critic
        for optimizer, learning_rate in ((member.policy_optimizer, config.policy_lr),
                                         (member.critic_optimizer, config.critic_lr)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * learning_rate_factor
        networks = [(member.policy_optimizer, list(policy.parameters())),
                    (member.critic_optimizer, list(critic.parameters()))]
        with torch.no_grad():
            old_mean, old_log_std = policy(data.obs)
            old_log_std = old_log_std.clone()  # the parameter itself, which the steps below change in place
        only_own_data = bool(data.own.all())
        if parallel is not None and not only_own_data:
            raise ValueError("data parallelism (Joint) never pools other members' batches")
        rows = TrainingRows(data, config, member.generator, parallel)
        update = Update(data, rows, old_mean, old_log_std, old_mean[rows.own_rows], only_own_data)
        sum_gradients = parallel.sum_gradients if parallel else None
        critic_own_only = config.critic_data == "own" and not only_own_data
        own_obs, own_returns = data.obs[rows.own_rows], data.returns[rows.own_rows]
        # every declared statistic has a place in the sum over ranks; those the steps reported are kept
        report_sums: dict[str, float] = dict.fromkeys(self.statistics, 0.0)
        reported: set[str] = set()
        losses = np.zeros(4)  # the policy's and critic's loss summed over steps, and the number of steps of each

        def policy_step(minibatch: Minibatch) -> PolicyStep:
            mean, log_std = policy(minibatch.take(data.obs))
            log_probs = gaussian_log_prob(mean, log_std, minibatch.take(data.actions))
            ratios = importance_ratios(log_probs, minibatch.take(data.behaviour_log_probs))
            weights = None if only_own_data else minibatch.take(data.weights)
            return PolicyStep(mean, log_std, ratios, weights, minibatch.take(data.advantages), minibatch.n_rows,
                              minibatch, update, {})

        def policy_loss(minibatch: Minibatch) -> torch.Tensor:
            step = policy_step(minibatch)
            loss = self.policy_loss(member, step)
            for name, value in step.reports.items():
                report_sums[name] += value
                reported.add(name)
            losses[0] += float(loss.detach())
            losses[2] += 1
            return loss

        def critic_loss(minibatch: Minibatch) -> torch.Tensor:
            if critic_own_only and minibatch.whole_epoch:  # every epoch holds all the learner's own rows
                obs, returns, n_rows = own_obs, own_returns, len(rows.own_rows)
            elif critic_own_only:
                own_rows = minibatch.rows[data.own[minibatch.rows]]
                obs, returns, n_rows = data.obs[own_rows], data.returns[own_rows], len(own_rows)
            else:
                obs, returns, n_rows = minibatch.take(data.obs), minibatch.take(data.returns), minibatch.n_rows
            loss = ((critic(obs) - returns) ** 2).sum() / max(n_rows, 1)
            losses[1] += float(loss.detach())
            losses[3] += 1
            return loss

        def take_policy_step(loss: torch.Tensor) -> None:
            _step([member.policy_optimizer], [networks[0][1]], loss, config.max_grad_norm, sum_gradients)

        self.before_epochs(rows, policy_loss, take_policy_step)
        policy_epochs = self.policy_epochs()
        for epoch in range(max(policy_epochs, config.critic_epochs)):
            trains_policy, trains_critic = epoch < policy_epochs, epoch < config.critic_epochs
            chosen = [network for network, used in zip(networks, (trains_policy, trains_critic)) if used]
            for minibatch in rows.epoch():
                loss = torch.zeros(())
                if trains_policy:
                    loss = loss + policy_loss(minibatch)
                if trains_critic:
                    loss = loss + critic_loss(minibatch)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"member {member.index} on {config.env}: the policy-gradient loss became "
                                         f"non-finite ({float(loss.detach())})")
                _step([o for o, _ in chosen], [p for _, p in chosen], loss, config.max_grad_norm, sum_gradients)
        return self._statistics(member, update, losses, report_sums, reported, parallel)

    def _statistics(self, member: Member, update: Update, losses: np.ndarray, report_sums: dict, reported: set,
                    parallel: DataParallel | None) -> dict[str, float]:
        """The update's statistics, from sums over every rank's rows (one sum over ranks under `parallel`)."""
        data, own_rows = update.data, update.rows.own_rows
        with torch.no_grad():
            new_mean, new_log_std = member.policy(data.obs[own_rows])
            kl_sum = float(gaussian_kl(update.own_old_mean, update.old_log_std, new_mean, new_log_std).sum())
            own_actions = data.actions[own_rows]
            log_ratios = (gaussian_log_prob(new_mean, new_log_std, own_actions)
                          - gaussian_log_prob(update.own_old_mean, update.old_log_std, own_actions))
            approx_kl_sum = float((torch.expm1(log_ratios) - log_ratios).sum())  # k3, as SB3 and CleanRL
            entropy_sum = float(torch.distributions.Normal(new_mean, new_log_std.exp()).entropy().sum())
        own_returns = data.returns[own_rows].double()
        errors = own_returns - data.values[own_rows].double()
        value_moments = [len(own_returns), own_returns.sum(), (own_returns ** 2).sum(), errors.sum(),
                         (errors ** 2).sum()]
        sums = np.array([kl_sum, float(data.own.sum()), approx_kl_sum, entropy_sum, *losses[:2],
                         *map(float, value_moments), *report_sums.values()])
        if parallel is not None:
            sums = parallel.sum_values(sums)
        kl_sum, n_own, approx_kl_sum, entropy_sum, policy_losses, critic_losses = sums[:6]
        n_returns, return_sum, return_squares, error_sum, error_squares = sums[6:11]
        n_policy_steps, n_critic_steps = losses[2:]
        kl = float(kl_sum / max(n_own, 1.0))
        return_variance = return_squares / max(n_returns, 1) - (return_sum / max(n_returns, 1)) ** 2
        error_variance = error_squares / max(n_returns, 1) - (error_sum / max(n_returns, 1)) ** 2
        statistics = dict(
            policy_kl=kl, effective_sample_size=data.effective_sample_size,
            policy_loss=float(policy_losses / n_policy_steps) if n_policy_steps else np.nan,
            value_loss=float(critic_losses / n_critic_steps) if n_critic_steps else np.nan,
            entropy=float(entropy_sum / max(n_own, 1.0)), approx_kl=float(approx_kl_sum / max(n_own, 1.0)),
            explained_variance=float(1 - error_variance / return_variance) if return_variance > 0 else np.nan)
        statistics.update({name: float(total / max(n_policy_steps, 1)) for name, total in
                           zip(report_sums, sums[11:]) if name in reported})
        statistics.update(self.after_update(member, kl))
        return statistics
