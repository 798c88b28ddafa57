"""The schedules' hooks in one process: when the KL is measured, evaluations and checkpoints happen, and a
stop ends the run."""
import dataclasses

import pytest

from gpo_mpi import schedules
from gpo_mpi.config import RunConfig


class Recorded:
    """Stands in for engine.Population: records what the hooks ask of it."""

    def __init__(self, iteration=0, stop_agreed=False):
        self.iteration, self.stop_agreed, self.calls = iteration, stop_agreed, []

    def timer(self, phase):
        import contextlib
        self.calls.append(("timer", phase))
        return contextlib.nullcontext()

    def evaluate(self, episodes):
        self.calls.append(("evaluate", episodes))
        return episodes

    def record_evaluation(self, evaluation):
        self.calls.append(("record", evaluation))

    def checkpoint(self, round_index, step_in_round):
        self.calls.append(("checkpoint", round_index, step_in_round))


def test_the_kl_is_measured_at_each_gpo_rounds_start_and_every_share_every_iterations_while_sharing():
    config = RunConfig(algo="gpo", population=4, rounds=3, share_every=5, share_rounds=2, share_epsilon=0.5)
    assert [step for step in range(12) if schedules.measures_kl(config, 0, step)] == [0, 5, 10]
    assert [step for step in range(12) if schedules.measures_kl(config, 2, step)] == [0]  # sharing is over
    assert [step for step in range(12) if schedules.measures_kl(dataclasses.replace(config, share_every=0), 0,
                                                                 step)] == [0]
    assert not any(schedules.measures_kl(RunConfig(algo="single"), 0, step) for step in range(3))


def test_periodic_evaluations_fall_every_eval_every_iterations_but_the_last():
    config = RunConfig(population=2, total_steps=2 * 2048 * 12, algo="single", eval_every=4, eval_episodes=3,
                       periodic_eval_episodes=2)
    assert config.iterations == 12
    hook = schedules.PeriodicEvaluation(config)
    evaluated = []
    for iteration in range(1, 13):
        population = Recorded(iteration)
        assert hook.after_iteration(population, 0, iteration - 1)
        if population.calls:
            assert population.calls == [("timer", "evaluation"), ("evaluate", 2), ("record", 2)]
            evaluated.append(iteration)
    assert evaluated == [4, 8]  # 12 is the final evaluation's
    population = Recorded(4)
    schedules.PeriodicEvaluation(dataclasses.replace(config, eval_every=0)).after_iteration(population, 0, 3)
    assert population.calls == []


@pytest.mark.parametrize("stop_agreed", [False, True])
def test_checkpoints_every_checkpoint_every_iterations_of_a_round_and_at_a_stop(stop_agreed):
    config = RunConfig(population=2, rounds=2, total_steps=2 * 2048 * 25, checkpoint_every=4)
    steps = config.iterations_per_round
    hook = schedules.Checkpoints(config)
    written = []
    for step in range(steps):
        population = Recorded(stop_agreed=stop_agreed)
        go_on = hook.after_iteration(population, 1, step)
        written += [call[1:] for call in population.calls]
        if stop_agreed and step + 1 < steps:
            assert not go_on and population.calls == [("checkpoint", 1, step + 1)]
        else:
            assert go_on
    if not stop_agreed:  # never at the round's last iteration: the checkpoint after its breeding follows
        assert written == [(1, s) for s in range(4, steps, 4)]


def test_the_linear_learning_rate_factor_falls_to_zero_at_the_budget():
    linear = RunConfig(total_steps=10_000, lr_schedule="linear")
    assert [schedules.learning_rate_factor(linear, steps) for steps in (0, 2_500, 10_000, 12_000)] == [1.0, 0.75, 0, 0]
    assert schedules.learning_rate_factor(RunConfig(total_steps=10_000), 9_000) == 1.0  # constant


def test_an_update_at_half_the_rate_is_the_update_with_halved_learning_rates():
    """The factor scales both networks' Adam learning rates for that update: at 0.5 the networks are those
    of an update with policy_lr and critic_lr halved, bit for bit; at 0 nothing moves."""
    import torch
    from gpo_mpi import mutations
    from gpo_mpi.learner import Member
    from gpo_mpi.mutate import pool_batches
    from test_mutate import sampled_batch
    config = RunConfig(population=1, total_steps=10_000, batch_steps=64, policy_epochs=2, critic_epochs=3)
    halved = dataclasses.replace(config, policy_lr=config.policy_lr * 0.5, critic_lr=config.critic_lr * 0.5)
    scaled, by_config, frozen = (Member.create(0, 3, 1, config, seed=1) for _ in range(3))
    data = pool_batches(scaled, [sampled_batch(scaled.policy)], 0, config)
    before = [p.detach().clone() for p in [*frozen.policy.parameters(), *frozen.critic.parameters()]]
    mutations.algorithm(config).update(scaled, data, learning_rate_factor=0.5)
    mutations.algorithm(halved).update(by_config, data)
    mutations.algorithm(config).update(frozen, data, learning_rate_factor=0.0)
    for a, b in zip([*scaled.policy.parameters(), *scaled.critic.parameters()],
                    [*by_config.policy.parameters(), *by_config.critic.parameters()]):
        assert torch.equal(a, b)
    assert not torch.equal(next(scaled.policy.parameters()), before[0])
    for a, b in zip([*frozen.policy.parameters(), *frozen.critic.parameters()], before):
        assert torch.equal(a, b)
