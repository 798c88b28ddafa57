"""Rank 0's record of a run: the run file's rows, the progress lines and TensorBoard.

`Recorder` takes the arrays the round code has gathered and never a
communicator, so every collective stays in sight in `engine.py`; only rank 0
holds one. Besides writing, it keeps what the record needs across
iterations (each member's window of training returns, the children's first
episodes, the best policy evaluated so far) and hands that to the
checkpoint. `PhaseTimer` is every rank's wall time per phase.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from contextlib import contextmanager

import numpy as np

from . import checkpoint
from .config import RunConfig
from .runfile import RunFileWriter
from .scalars import TensorBoardScalars

RETURN_WINDOW = 10  # training episodes averaged into a member's reported return
PHASES = ("mutate", "select", "crossover", "communication", "evaluation")


class PhaseTimer:
    """Wall time per named phase; time in a nested phase is not counted in the enclosing one."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.totals[name] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def take(self) -> dict[str, float]:
        """The totals so far, which start again from zero."""
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals


class ReturnLog:
    """A window of recent training episodes' returns and lengths per member."""

    def __init__(self, n_members: int):
        self.windows = [deque(maxlen=RETURN_WINDOW) for _ in range(n_members)]
        self.length_windows = [deque(maxlen=RETURN_WINDOW) for _ in range(n_members)]

    def add(self, episode_rows: np.ndarray) -> np.ndarray:
        """Fold in rows [member, return, length]; returns the number of episodes per member."""
        for member_index, episode_return, length in episode_rows:
            self.windows[int(member_index)].append(episode_return)
            self.length_windows[int(member_index)].append(length)
        return np.bincount(episode_rows[:, 0].astype(int), minlength=len(self.windows))

    def member_returns(self) -> np.ndarray:
        """Each member's mean return over its window (NaN before its first episode)."""
        return np.array([np.mean(w) if w else np.nan for w in self.windows])

    def member_lengths(self) -> np.ndarray:
        """Each member's mean episode length over its window (NaN before its first episode)."""
        return np.array([np.mean(w) if w else np.nan for w in self.length_windows])

    def clear(self) -> None:
        """Forget every member's recent episodes."""
        for window in self.windows + self.length_windows:
            window.clear()


def format_duration(seconds: float) -> str:
    """Seconds as '4m05s', or '1h07m' from an hour on."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_bytes(n_bytes: float) -> str:
    """A byte count with a decimal unit (B, kB, MB, GB)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000


class Recorder:
    """Rank 0's run file, progress lines and TensorBoard scalars, fed with gathered arrays."""

    def __init__(self, config: RunConfig, writer: RunFileWriter, member_statistics: tuple[str, ...],
                 resume_step: int | None = None):
        """`member_statistics`: the names of the member statistics' columns after the member's index (as
        engine gathers them); `resume_step`: the first environment step logged again after a resume
        (TensorBoard drops the events from it on, which the resumed run logs anew)."""
        self.config, self.writer, self.member_statistics = config, writer, member_statistics
        self.scalars = TensorBoardScalars(config.tensorboard, resume_step) if config.tensorboard else None
        self.returns = ReturnLog(config.n_policies)
        self.child_returns: list[list[float]] | None = None  # each new child's first episodes
        self.fitter_parent_returns = np.full(config.n_policies, np.nan)  # of the latest children
        self.latest_best_return = np.nan  # the best member's return after the latest iteration
        self.best_evaluated: dict | None = None  # the best policy of the evaluations so far
        self.seconds = defaultdict(float)  # wall time of this run's iterations and breedings, for the ETA
        self.counts = defaultdict(int)

    # ------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """What a resumed run needs of the record, for the checkpoint."""
        return dict(windows=[list(w) for w in self.returns.windows],
                    length_windows=[list(w) for w in self.returns.length_windows], child_returns=self.child_returns,
                    fitter_parent_returns=self.fitter_parent_returns, latest_best_return=self.latest_best_return,
                    best_evaluated=self.best_evaluated, lengths=self.writer.lengths())

    def load_state(self, state: dict) -> None:
        """The record as `state()` gave it (the writer was opened at the checkpoint's lengths)."""
        for window, values in zip(self.returns.windows, state["windows"]):
            window.extend(values)
        for window, values in zip(self.returns.length_windows, state.get("length_windows", [])):
            window.extend(values)  # a checkpoint before episode lengths were recorded has none
        self.child_returns = state["child_returns"]
        self.fitter_parent_returns = state["fitter_parent_returns"]
        self.latest_best_return = state["latest_best_return"]
        self.best_evaluated = state["best_evaluated"]

    def checkpoint(self, position: checkpoint.Position, rank_states: list[dict]) -> None:
        """Commit a checkpoint: the rounds' `position` and this record's state, and every rank's own part."""
        shared = checkpoint.shared_state(position, self.state())
        self.writer.commit(lambda run_file: checkpoint.write_group(run_file, shared, rank_states))
        if self.scalars:
            self.scalars.flush()

    # ------------------------------------------------------------ mutate
    def sharing(self, round_index: int, env_steps_after: int, kl: np.ndarray, set_sizes: list[int]) -> None:
        """The KL matrix and |S_i| at a round's start (`env_steps_after`: the step count of this
        iteration's other scalars, which is past any checkpoint)."""
        self.writer.append(rounds__kl_matrix=kl, rounds__share_set_sizes=set_sizes)
        median_kl = float(np.median(kl[~np.eye(len(kl), dtype=bool)]))
        print(f"round {round_index + 1}/{self.config.n_rounds}: data sharing |S_i| = {set_sizes}, "
              f"median KL between members {median_kl:.3g}", flush=True)
        if self.scalars:
            self.scalars.sharing(env_steps_after, median_kl, np.mean(set_sizes))

    def iteration_took(self, seconds: float) -> None:
        """Add one iteration's wall time to the phase timer."""
        self.seconds["iteration"] += seconds
        self.counts["iteration"] += 1

    def iteration(self, round_index: int, iteration: int, env_steps: int, elapsed: float, episodes: np.ndarray,
                  member_stats: np.ndarray) -> None:
        """One iteration's row and progress line, from every rank's finished episodes (rows [member, return,
        length]) and member statistics (rows [member, *member_statistics])."""
        config = self.config
        counts = self.returns.add(episodes)
        if self.child_returns is not None:
            self.collect_child_returns(episodes)
        returns = self.returns.member_returns()
        statistics = {name: np.full(config.n_policies, np.nan) for name in self.member_statistics}
        # Joint's one member appears once per rank with equal values: any copy will do.
        for column, values in enumerate(statistics.values(), start=1):
            values[member_stats[:, 0].astype(int)] = member_stats[:, column]
        statistics["episode_length"] = self.returns.member_lengths()
        self.writer.append(iterations__env_steps=env_steps, iterations__wall_time=elapsed,
                           iterations__round=round_index, iterations__member_return=returns,
                           iterations__member_episodes=counts,
                           **{f"iterations__{name}": values for name, values in statistics.items()})
        rate = env_steps / max(elapsed, 1e-9)
        if self.scalars:
            self.scalars.iteration(env_steps, returns, statistics, rate, sharing=config.has("M"))
        set_sizes, sample_sizes = statistics["share_set_size"], statistics["effective_sample_size"]
        eta_text = self.time_left(round_index, iteration)
        finite = returns[np.isfinite(returns)]
        self.latest_best_return = finite.max() if len(finite) else np.nan
        mean_text, best_text = (f"{finite.mean():8.1f}", f"{finite.max():8.1f}") if len(finite) else ("n/a",) * 2
        sharing_text = (f"|S_i| {set_sizes.mean():3.1f} ESS {sample_sizes.mean() / config.batch_steps:4.2f} | "
                        if config.has("M") else "")
        print(f"iter {iteration:4d}/{config.iterations} | round {round_index + 1:2d} | "
              f"steps {env_steps:>10,} | {rate:7,.0f} steps/s | return mean {mean_text} best {best_text} | "
              f"{sharing_text}ETA {eta_text}", flush=True)

    def time_left(self, round_index: int, iteration: int) -> str:
        """The iterations and breedings still to come, at the mean wall time of those done so far."""
        iterations_left = self.config.iterations - iteration
        breedings_left = max(0, self.config.n_rounds - 1 - round_index)
        seconds = iterations_left * self.seconds["iteration"] / max(1, self.counts["iteration"])
        if breedings_left and not self.counts["breeding"]:
            return f"{format_duration(seconds)} + {breedings_left} crossover(s)"
        seconds += breedings_left * self.seconds["breeding"] / max(1, self.counts["breeding"])
        return format_duration(seconds)

    def collect_child_returns(self, episodes: np.ndarray) -> None:
        """The returns of each child's first n_envs episodes (its environments restart at its birth)."""
        for member_index, episode_return, _ in episodes:
            first_episodes = self.child_returns[int(member_index)]
            if len(first_episodes) < self.config.n_envs:
                first_episodes.append(float(episode_return))
        if all(len(first) >= self.config.n_envs for first in self.child_returns):
            self.write_child_returns()

    def write_child_returns(self) -> None:
        """One row of children's first returns (NaN for a child with none), and how they compare with
        their fitter parents'."""
        child_returns = np.array([np.mean(first) if first else np.nan for first in self.child_returns])
        self.writer.append(breeding__child_return=child_returns)
        self.child_returns = None
        fitter_returns = self.fitter_parent_returns
        compared = np.isfinite(child_returns) & np.isfinite(fitter_returns)
        if compared.any():
            at_least = int(np.sum(child_returns[compared] >= fitter_returns[compared]))
            print(f"children's first {self.config.n_envs} episodes: {at_least} of {int(compared.sum())} at or above "
                  f"their fitter parent's return (mean {child_returns[compared].mean():.1f} against "
                  f"{fitter_returns[compared].mean():.1f})", flush=True)

    # ---------------------------------------------------- select, crossover
    def selection(self, member_returns: np.ndarray, kl: np.ndarray, pairs: np.ndarray, fitter: np.ndarray,
                  pair_fitness: np.ndarray) -> None:
        """The breeding row of a selection: who bred with whom, and from what."""
        self.fitter_parent_returns = member_returns[fitter]
        self.writer.append(breeding__member_return_before=member_returns, breeding__selection_kl_matrix=kl,
                           breeding__parent_pairs=pairs, breeding__fitter_parent=fitter,
                           breeding__pair_fitness=pair_fitness, breeding__parent_returns=member_returns[pairs])

    def breeding(self, diagnostics: np.ndarray, seconds: float) -> None:
        """Every child's crossover diagnostics (rows [selector loss, imitation loss, second parent's share]);
        from here on the return windows are the children's."""
        self.writer.append(breeding__selector_loss=diagnostics[:, 0], breeding__imitation_loss=diagnostics[:, 1],
                           breeding__second_parent_share=diagnostics[:, 2])
        self.returns.clear()
        if self.child_returns is not None:  # the previous children finished too few episodes to fill the row
            self.write_child_returns()
        self.child_returns = [[] for _ in range(self.config.n_policies)]
        self.seconds["breeding"] += seconds
        self.counts["breeding"] += 1

    def round(self, round_index: int, env_steps: int, times: dict[str, float], traffic: np.ndarray) -> None:
        """A round's wall time per phase, and every rank's MPI traffic (ranks x kinds x [calls, bytes sent,
        bytes received])."""
        self.writer.append(**{f"rounds__time_{phase}": times.get(phase, 0.0) for phase in PHASES})
        self.writer.append(rounds__collective_calls=traffic[:, :, 0], rounds__bytes_sent=traffic[:, :, 1],
                           rounds__bytes_received=traffic[:, :, 2])
        if self.scalars:
            self.scalars.round(env_steps, {phase: times.get(phase, 0.0) for phase in PHASES})
        best = f"{self.latest_best_return:.1f}" if np.isfinite(self.latest_best_return) else "n/a"
        received_per_rank = traffic[:, :, 2].sum(axis=1).mean()
        print(f"round {round_index + 1}/{self.config.n_rounds} done: best return {best} | "
              + ", ".join(f"{phase} {times.get(phase, 0.0):.1f} s" for phase in PHASES)
              + f" | received {format_bytes(received_per_rank)} per rank", flush=True)

    # -------------------------------------------------------- evaluation
    def improves(self, mean_return: float) -> bool:
        """Whether a policy evaluated at `mean_return` beats the best evaluated so far."""
        return self.best_evaluated is None or mean_return > self.best_evaluated["mean_return"]

    def keep_best(self, parameters: np.ndarray, normalizer_state, member: int, env_steps: int,
                  mean_return: float) -> None:
        """Remember the best policy evaluated so far, for the run file's final group."""
        self.best_evaluated = dict(parameters=parameters, normalizer=normalizer_state, member=member,
                                   env_steps=env_steps, mean_return=float(mean_return))

    @staticmethod
    def evaluation_summary(episodes: int, evaluation_steps: int) -> str:
        """How an evaluation was made, for the progress line."""
        return (f"{episodes} episodes, mean action; {evaluation_steps:,} evaluation steps, "
                "not counted in the budget")

    def evaluation(self, env_steps: int, evaluation: np.ndarray, evaluation_steps: int, announce: bool) -> None:
        """An evaluation during training (policies x episodes); a row of fewer episodes than the final
        evaluation's (periodic_eval_episodes) is padded with NaN."""
        means = evaluation.mean(axis=1)
        best = int(np.argmax(means))
        padded = np.full((len(evaluation), max(1, self.config.eval_episodes)), np.nan)
        padded[:, :evaluation.shape[1]] = evaluation
        self.writer.append(evaluations__env_steps=env_steps, evaluations__returns=padded,
                           evaluations__evaluation_steps=evaluation_steps)
        if self.scalars:
            self.scalars.evaluation(env_steps, means)
        if announce:
            how = self.evaluation_summary(evaluation.shape[1], evaluation_steps)
            print(f"evaluation at {env_steps:,} steps ({how}): best member {best} at {means[best]:.1f}, "
                  f"mean over members {means.mean():.1f}", flush=True)

    # ------------------------------------------------------------ the end
    def finish(self, policies: np.ndarray, critics: np.ndarray, normalizer_state, evaluation: np.ndarray | None,
               evaluation_steps: int) -> None:
        """The run's final record: every policy and critic, and the best member by the final evaluation
        (by the training returns without one)."""
        if self.child_returns is not None:  # the last children finished too few episodes to fill the row
            self.write_child_returns()
        if evaluation is not None:
            best = int(np.argmax(evaluation.mean(axis=1)))
            how = self.evaluation_summary(evaluation.shape[1], evaluation_steps)
            print(f"evaluation ({how}): best member {best} at "
                  f"{evaluation[best].mean():.1f}, mean over members {evaluation.mean():.1f}", flush=True)
        else:
            member_returns = self.returns.member_returns()
            best = int(np.nanargmax(member_returns)) if np.isfinite(member_returns).any() else 0
        self.writer.commit_final(policies, critics, best, normalizer_state, evaluation, self.best_evaluated)
        if self.scalars:
            self.scalars.close()
