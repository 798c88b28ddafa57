"""PPO with the clipped surrogate, as Stable-Baselines3 and CleanRL run it: maximize
E[min(ratio * A, clip(ratio, 1 - clip_range, 1 + clip_range) * A)].

Under data sharing the ratio clipped is pi_theta / pi_i_old, the learner's own (near 1 at the update's
start for every row), and a foreign row's truncated correction min(cap, pi_i_old / pi_j_old) multiplies
the clipped term as a fixed weight.
"""
from __future__ import annotations

import torch

from ..learner import Member
from ..mutate import Mutation, PolicyStep


def clipped_loss(ratios: torch.Tensor, advantages: torch.Tensor, clip_range: float, n_rows: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """-sum(w * min(ratio * A, clip(ratio) * A)) / n_rows (w: 1 where `weights` is None)."""
    clipped = torch.clamp(ratios, 1.0 - clip_range, 1.0 + clip_range)
    surrogate = torch.min(ratios * advantages, clipped * advantages)
    if weights is not None:
        surrogate = surrogate * weights
    return -surrogate.sum() / max(n_rows, 1)


class ClippedPPO(Mutation):
    statistics = ("clip_fraction",)

    def policy_loss(self, member: Member, step: PolicyStep) -> torch.Tensor:
        clip_range = self.config.clip_range
        with torch.no_grad():  # the share of rows whose ratio left the clip range, as SB3's clip_fraction
            step.report("clip_fraction", ((step.ratios - 1).abs() > clip_range).sum() / max(step.n_rows, 1))
        return clipped_loss(step.ratios, step.advantages, clip_range, step.n_rows, step.weights)


ALGORITHM = ClippedPPO
