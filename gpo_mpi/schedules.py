"""What a run does on a schedule besides Algorithm 1's phases: measuring the KL matrix for data sharing, the
learning rates' decay, evaluating every policy, writing checkpoints. Evaluations and checkpoints are small
hooks, as Stable-Baselines3's callbacks are: the round loop asks each after every iteration whether its time
has come, and a hook that returns False ends the run there (a stop, with its checkpoint written).

Each decides from the configuration and the run's position alone, which every rank holds alike, so every
rank calls the same collectives.
"""
from __future__ import annotations

from .config import RunConfig


def measures_kl(config: RunConfig, round_index: int, step: int) -> bool:
    """Whether data sharing measures the KL matrix at this iteration of the round: always at a GPO round's
    start (recorded there), then every `share_every` iterations while sharing is on and S_i needs the KL."""
    if config.algo != "gpo":
        return False
    return step == 0 or bool(config.shares_in(round_index) and config.share_every and step % config.share_every == 0
                             and config.share_sets_need_kl)


def learning_rate_factor(config: RunConfig, env_steps: int) -> float:
    """What policy_lr and critic_lr are multiplied by in the update of the iteration that starts after
    `env_steps` steps: 1, or under lr_schedule "linear" the share of the budget still to come (as
    Stable-Baselines3's linear schedule of the progress remaining, taken before the iteration's rollout, so
    that the first update is at the full rate and none at 0)."""
    if config.lr_schedule == "constant":
        return 1.0
    return max(0.0, 1.0 - env_steps / config.total_steps)


class Hook:
    """Called after every iteration of mutation with the population (engine.Population)."""

    def after_iteration(self, population, round_index: int, step: int) -> bool:
        """Do this hook's work if it is time; False ends the run here."""
        return True


class PeriodicEvaluation(Hook):
    """Every `eval_every` iterations, every policy's deterministic evaluation, recorded. The run's last
    iteration is left to the final evaluation, which follows it."""

    def __init__(self, config: RunConfig):
        self.config = config

    def after_iteration(self, population, round_index: int, step: int) -> bool:
        config = self.config
        if (config.eval_every and config.eval_episodes and population.iteration % config.eval_every == 0
                and population.iteration < config.iterations):
            with population.timer("evaluation"):
                population.record_evaluation(population.evaluate(config.episodes_per_periodic_evaluation))
        return True


class Checkpoints(Hook):
    """A checkpoint every `checkpoint_every` iterations of a round, and at once when the ranks have agreed
    on a stop (which then ends the run). Never after a round's last iteration: a stop there waits for the
    checkpoint written after the round's breeding."""

    def __init__(self, config: RunConfig):
        self.config = config

    def after_iteration(self, population, round_index: int, step: int) -> bool:
        config = self.config
        if step + 1 == config.iterations_per_round:
            return True
        if population.stop_agreed or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
            population.checkpoint(round_index, step + 1)
            return not population.stop_agreed
        return True
