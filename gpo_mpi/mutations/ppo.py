"""PPO with the adaptive KL penalty, the paper's mutation: maximize E[ratio * A] - beta * KL[pi_old || pi]
and adapt beta to the KL the update reached (each member keeps its own, Member.beta)."""
from __future__ import annotations

import torch

from ..learner import Member
from ..mutate import Mutation, PolicyStep


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


def adapt_beta(beta: float, kl: float, kl_target: float) -> float:
    """The paper's rule: double beta above 1.5 x target, halve it below target / 1.5."""
    if kl > 1.5 * kl_target:
        return beta * 2.0
    if kl < kl_target / 1.5:
        return beta / 2.0
    return beta


class AdaptiveKLPPO(Mutation):
    statistics = ("beta",)

    def policy_loss(self, member: Member, step: PolicyStep) -> torch.Tensor:
        kl, n_own_rows = step.own_kl()
        return ppo_loss(step.weighted_ratios(), step.advantages, kl, member.beta, step.n_rows, n_own_rows)

    def after_update(self, member: Member, policy_kl: float) -> dict[str, float]:
        member.beta = adapt_beta(member.beta, policy_kl, self.config.kl_target)
        return {"beta": member.beta}


ALGORITHM = AdaptiveKLPPO
