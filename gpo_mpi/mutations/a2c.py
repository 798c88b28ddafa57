"""A2C: one full-batch gradient step on E[ratio * A], whose gradient at the behaviour policy is
E[grad log pi * A]; the critic's epochs follow."""
from __future__ import annotations

import torch

from ..learner import Member
from ..mutate import Mutation, PolicyStep


def a2c_loss(ratios: torch.Tensor, advantages: torch.Tensor, n_rows: int | None = None) -> torch.Tensor:
    """Negative importance-weighted policy-gradient objective -mean(ratio * A)."""
    return -(ratios * advantages).sum() / max(len(ratios) if n_rows is None else n_rows, 1)


class A2C(Mutation):
    def policy_epochs(self) -> int:
        return 0  # its one step comes before the critic's epochs

    def before_epochs(self, rows, policy_loss, take_policy_step) -> None:
        take_policy_step(policy_loss(rows.whole_batch()))

    def policy_loss(self, member: Member, step: PolicyStep) -> torch.Tensor:
        return a2c_loss(step.weighted_ratios(), step.advantages, step.n_rows)


ALGORITHM = A2C
