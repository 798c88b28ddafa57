"""Optional TensorBoard scalars (`--tensorboard DIR`), written by rank 0 only.

The x axis is environment steps of the whole run, as in the run file, so a
resumed run continues its curves: events past the checkpoint it resumes
from are purged.
"""
from __future__ import annotations

import numpy as np

SHARING_STATISTICS = ("share_set_size", "effective_sample_size")


class TensorBoardScalars:
    def __init__(self, log_dir: str, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # the config checked that tensorboard is installed

        self.writer = SummaryWriter(log_dir, purge_step=resume_step)

    def iteration(self, env_steps: int, member_returns: np.ndarray, statistics: dict[str, np.ndarray],
                  steps_per_second: float, sharing: bool) -> None:
        """One iteration's scalars: returns, the means over members of the update's statistics (train/, as
        Stable-Baselines3 names them), speed and, with sharing, |S_i| and ESS."""
        add = self.writer.add_scalar
        finite = member_returns[np.isfinite(member_returns)]
        if len(finite):
            add("return/best_member", finite.max(), env_steps)
            add("return/mean_member", finite.mean(), env_steps)
        for member, value in enumerate(member_returns):
            if np.isfinite(value):
                add(f"member_return/{member}", value, env_steps)
        for name, values in statistics.items():
            if name in SHARING_STATISTICS:
                if sharing:
                    add(f"sharing/mean_{name}", np.nanmean(values), env_steps)
            elif np.isfinite(values).any():
                add(f"train/{name}", np.nanmean(values), env_steps)
        add("speed/steps_per_second", steps_per_second, env_steps)

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
