"""Optional TensorBoard scalars (`--tensorboard DIR`), written by rank 0 only.

The x axis is environment steps of the whole run, as in the run file, so a
resumed run continues its curves: events past the checkpoint it resumes
from are purged.
"""
from __future__ import annotations

import numpy as np


class TensorBoardScalars:
    def __init__(self, log_dir: str, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # the config checked that tensorboard is installed

        self.writer = SummaryWriter(log_dir, purge_step=resume_step)

    def iteration(self, env_steps: int, member_returns: np.ndarray, beta: np.ndarray, policy_kl: np.ndarray,
                  steps_per_second: float, share_set_sizes: np.ndarray | None = None,
                  effective_sample_sizes: np.ndarray | None = None) -> None:
        """One iteration's scalars: returns, penalty weights, KL, speed and, with sharing, |S_i| and ESS."""
        add = self.writer.add_scalar
        finite = member_returns[np.isfinite(member_returns)]
        if len(finite):
            add("return/best_member", finite.max(), env_steps)
            add("return/mean_member", finite.mean(), env_steps)
        for member, value in enumerate(member_returns):
            if np.isfinite(value):
                add(f"member_return/{member}", value, env_steps)
        add("ppo/beta_mean", np.nanmean(beta), env_steps)
        add("ppo/policy_kl_mean", np.nanmean(policy_kl), env_steps)
        add("speed/steps_per_second", steps_per_second, env_steps)
        if share_set_sizes is not None:
            add("sharing/mean_share_set_size", np.nanmean(share_set_sizes), env_steps)
            add("sharing/mean_effective_sample_size", np.nanmean(effective_sample_sizes), env_steps)

    def round(self, env_steps: int, phase_seconds: dict) -> None:
        """Seconds per phase of a round."""
        for phase, seconds in phase_seconds.items():
            self.writer.add_scalar(f"time/{phase}", seconds, env_steps)

    def sharing(self, env_steps: int, median_kl_between_members: float, mean_share_set_size: float) -> None:
        """The KL between members and the mean share-set size at a round's start."""
        self.writer.add_scalar("gpo/median_kl_between_members", median_kl_between_members, env_steps)
        self.writer.add_scalar("gpo/mean_share_set_size", mean_share_set_size, env_steps)

    def evaluation(self, env_steps: int, member_means: np.ndarray) -> None:
        """The best and mean member's evaluation return."""
        self.writer.add_scalar("eval/best_member", member_means.max(), env_steps)
        self.writer.add_scalar("eval/mean_member", member_means.mean(), env_steps)

    def flush(self) -> None:
        """Write what is buffered to the event file."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
