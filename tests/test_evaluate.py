"""A run's evaluation in one process: each member's rows from its own seed, put together in member order."""
import numpy as np

from gpo_mpi import evaluate, seeds
from gpo_mpi.config import RunConfig
from gpo_mpi.learner import Member
from gpo_mpi.rollout import EnvSpec, ObsNormalizer


def test_evaluation_rows_from_any_ranks_come_together_in_member_order():
    config = RunConfig(env="Pendulum-v1", population=3, seed=4)
    env, normalizer = EnvSpec("Pendulum-v1", horizon=15), ObsNormalizer(3, 10.0)
    members = [Member.create(i, 3, 1, config, seed=i) for i in range(3)]
    rank_rows = [evaluate.member_rows(members[2:], normalizer, env, 2, config.seed),
                 evaluate.member_rows(members[:2], normalizer, env, 2, config.seed),
                 evaluate.member_rows([], normalizer, env, 2, config.seed)]  # a rank without members (Joint)
    assert rank_rows[2].shape == (0, 5)
    returns, steps = evaluate.by_member(np.concatenate(rank_rows), 2)
    for member in members:  # each from the member's own evaluation seed, whichever rank ran it
        expected, lengths = evaluate.returns_and_lengths(member.policy, normalizer, env, 2,
                                                         seeds.evaluation(config.seed, member.index),
                                                         deterministic=True)
        np.testing.assert_array_equal(returns[member.index], expected)
        assert lengths.tolist() == [15, 15]
    assert steps == 3 * 2 * 15
