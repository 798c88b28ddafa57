"""SELECT in one process: fitness, pair choice, ties, the random mode, the schedule."""
import numpy as np

from gpo_mpi import select


def test_performance_fitness_is_the_sum_of_returns():
    fitness = select.performance_fitness(np.array([1.0, 5.0, 3.0]))
    np.testing.assert_array_equal(fitness, [[2, 6, 4], [6, 10, 8], [4, 8, 6]])


def test_fittest_distinct_couples():
    returns = np.array([10.0, 50.0, 30.0, 40.0])
    pairs = select.fittest_pairs(select.performance_fitness(returns), 4)
    # couple sums: (1,3) 90, (1,2) 80, (2,3) 70, (0,1) 60, (0,3) 50, (0,2) 40
    np.testing.assert_array_equal(pairs, [[1, 3], [1, 2], [2, 3], [0, 1]])


def test_ordered_couples_breed_twice():
    pairs = select.fittest_pairs(select.performance_fitness(np.array([10.0, 50.0, 30.0, 40.0])), 4,
                                 distinct_couples=False)
    np.testing.assert_array_equal(pairs, [[1, 3], [3, 1], [1, 2], [2, 1]])


def test_ties_go_to_the_first_couple_in_order():
    pairs = select.fittest_pairs(select.performance_fitness(np.array([1.0, 1.0, 1.0])), 3)
    np.testing.assert_array_equal(pairs, [[0, 1], [0, 2], [1, 2]])


def test_the_fitter_parent_has_the_higher_return_and_a_member_without_episodes_ranks_last():
    returns = np.array([5.0, np.nan, 7.0, 5.0])
    pairs = np.array([[0, 2], [2, 0], [1, 3], [3, 1], [0, 3], [3, 0]])
    # a tie (0 and 3 at 5.0) goes to the first parent of the pair; NaN ranks as the lowest finite return
    np.testing.assert_array_equal(select.fitter_parents(pairs, returns), [2, 2, 1, 3, 0, 3])
    np.testing.assert_array_equal(select.ranked_returns(returns), [5.0, 5.0, 7.0, 5.0])
    np.testing.assert_array_equal(select.fitter_parents(np.array([[0, 1]]), np.array([np.nan, np.nan])), [0])


def test_two_members_give_their_one_couple_twice():
    np.testing.assert_array_equal(select.fittest_pairs(select.performance_fitness(np.array([3.0, 4.0])), 2),
                                  [[0, 1], [0, 1]])


def test_diversity_fitness_prefers_distant_couples():
    returns = np.array([10.0, 9.0, 1.0])
    kl = np.array([[0.0, 0.1, 5.0], [0.1, 0.0, 0.2], [4.0, 0.3, 0.0]])
    performance_only = select.fittest_pairs(select.mixed_fitness(returns, kl, 0.0), 1)
    diversity_only = select.fittest_pairs(select.mixed_fitness(returns, kl, 1.0), 1)
    np.testing.assert_array_equal(performance_only, [[0, 1]])
    np.testing.assert_array_equal(diversity_only, [[0, 2]])
    mixed = select.mixed_fitness(returns, kl, 0.5)
    off_diagonal = ~np.eye(3, dtype=bool)
    assert mixed[off_diagonal].min() >= 0 and mixed[off_diagonal].max() <= 1


def test_diversity_schedule_is_linear():
    assert [select.diversity_weight(r, 5, 1.0, 0.0) for r in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert select.diversity_weight(0, 1, 0.3, 0.9) == 0.3


def test_random_pairs_are_couples_of_two_members_and_seeded():
    pairs = select.random_pairs(5, 1000, np.random.default_rng(0))
    assert pairs.shape == (1000, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    assert set(pairs.ravel()) == set(range(5))
    np.testing.assert_array_equal(pairs, select.random_pairs(5, 1000, np.random.default_rng(0)))
    assert not np.array_equal(pairs, select.random_pairs(5, 1000, np.random.default_rng(1)))


def test_pair_fitness_reads_the_table():
    fitness = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(select.pair_fitness(fitness, np.array([[0, 2], [2, 1]])), [2.0, 7.0])


def test_elites_keep_their_slots_and_the_others_take_the_pairs_in_order():
    returns = np.array([10.0, 50.0, np.nan, 40.0, 50.0])  # a tie at 50 (the lower index first), no episode at 2
    np.testing.assert_array_equal(select.elite_members(returns, 3), [1, 4, 3])
    pairs = np.array([[1, 4], [3, 0]])
    jobs = select.breeding_jobs(pairs, returns, 3)
    np.testing.assert_array_equal(jobs, [[1, 4, 1], [1, 1, 1], [3, 0, 3], [3, 3, 3], [4, 4, 4]])
    no_elites = select.breeding_jobs(np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]]), returns, 0)
    np.testing.assert_array_equal(no_elites[:, 2], [1, 1, 3, 4, 4])  # the member without episodes is never fitter


def test_mixed_fitness_is_each_part_min_max_normalized_over_the_couples_by_hand():
    returns = np.array([0.0, 1.0, 3.0])  # couples' sums 1, 3, 4: (sum - 1) / 3
    kl = np.array([[0.0, 0.02, 0.05], [0.03, 0.0, 0.01], [0.04, 0.06, 0.0]])  # a span under 1: (kl - 0.01) / 0.05
    performance = np.array([[np.nan, 0.0, 2 / 3], [0.0, np.nan, 1.0], [2 / 3, 1.0, np.nan]])
    diversity = np.array([[np.nan, 0.2, 0.8], [0.4, np.nan, 0.0], [0.6, 1.0, np.nan]])
    off_diagonal = ~np.eye(3, dtype=bool)
    for weight in (0.0, 0.3, 1.0):
        mixed = select.mixed_fitness(returns, kl, weight)
        assert mixed.shape == (3, 3)
        np.testing.assert_allclose(mixed[off_diagonal], ((1 - weight) * performance + weight * diversity)[off_diagonal])


def test_equal_returns_and_equal_divergences_give_a_fitness_of_zeros():
    """Nothing to tell the couples apart: every couple's fitness is 0 (not 0 / 0), and the first couples breed."""
    fitness = select.mixed_fitness(np.full(4, 7.0), np.where(np.eye(4, dtype=bool), 0.0, 0.5), 0.5)
    np.testing.assert_array_equal(fitness, np.zeros((4, 4)))
    np.testing.assert_array_equal(select.fittest_pairs(fitness, 2), [[0, 1], [0, 2]])


def test_the_diversity_schedule_reaches_its_end_at_the_last_of_two_breedings():
    assert [select.diversity_weight(r, 2, 1.0, 0.25) for r in range(2)] == [1.0, 0.25]


def test_elite_ties_go_to_the_lower_index_in_a_large_population():
    """64 members in 4 tied groups (numpy's default sort is not stable beyond 16 elements)."""
    returns = np.repeat([3.0, 1.0, 4.0, 2.0], 16)[np.random.default_rng(0).permutation(64)]
    best = np.flatnonzero(returns == 4.0)
    np.testing.assert_array_equal(select.elite_members(returns, 10), best[:10])
    np.testing.assert_array_equal(select.elite_members(returns, 20), [*best, *np.flatnonzero(returns == 3.0)[:4]])


def test_random_pairs_draw_every_ordered_couple():
    """Each pair's second member is drawn afresh: all 12 ordered couples of 4 members turn up, and of 2 members both."""
    pairs = select.random_pairs(4, 2000, np.random.default_rng(3))
    counts = np.zeros((4, 4), dtype=int)
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
    assert np.all(counts[~np.eye(4, dtype=bool)] > 100) and not np.diagonal(counts).any()
    assert {tuple(p) for p in select.random_pairs(2, 50, np.random.default_rng(3))} == {(0, 1), (1, 0)}


def test_the_plan_pairs_the_fittest_or_random_couples_and_keeps_the_elites():
    import dataclasses
    from gpo_mpi import seeds
    from gpo_mpi.config import RunConfig
    returns = np.array([5.0, 1.0, 4.0, 3.0])
    kl = np.ones((4, 4)) - np.eye(4)
    config = RunConfig(population=4, rounds=3, elites=1, diversity_weight_start=0.0, diversity_weight_end=0.0)
    jobs, fitness = select.plan(config, returns, kl, 0)
    assert jobs[0].tolist() == [0, 0, 0]  # the elite keeps its slot
    children = jobs[1:]
    assert {tuple(sorted(job[:2])) for job in children} == {(0, 2), (0, 3), (2, 3)}  # the three fittest couples
    assert all(job[2] == job[:2][np.argmax(returns[job[:2]])] for job in children)  # the fitter parent
    np.testing.assert_allclose(fitness[1:], select.pair_fitness(
        select.mixed_fitness(select.ranked_returns(returns), kl, 0.0), children[:, :2]))
    random_jobs, _ = select.plan(dataclasses.replace(config, components="CM"), returns, kl, 1)
    expected = select.random_pairs(4, config.children_per_round, seeds.random_couples(config.seed, 1))
    np.testing.assert_array_equal(random_jobs, select.breeding_jobs(expected, returns, 1))


def test_the_plan_follows_the_diversity_schedule_and_the_couples_rule():
    """The second of 4 breedings (5 rounds), the weight going from 0.8 at the first to 0.0 at the last: the
    pairs' fitness mixes KL by 0.8 x 2/3; with couples not distinct, a couple may breed both ways."""
    import dataclasses
    from gpo_mpi.config import RunConfig
    returns = np.array([5.0, 1.0, 4.0, 3.0])
    kl = np.random.default_rng(0).random((4, 4))
    np.fill_diagonal(kl, 0.0)
    config = RunConfig(population=4, rounds=5, diversity_weight_start=0.8, diversity_weight_end=0.0)
    jobs, fitness = select.plan(config, returns, kl, 1)
    mixed = select.mixed_fitness(select.ranked_returns(returns), kl, 0.8 * 2 / 3)
    np.testing.assert_allclose(fitness, select.pair_fitness(mixed, jobs[:, :2]))
    assert not np.allclose(mixed, select.mixed_fitness(select.ranked_returns(returns), kl, 0.8))
    ordered = dataclasses.replace(config, distinct_couples=False, diversity_weight_start=0.0)
    jobs, _ = select.plan(ordered, returns, kl, 0)
    expected = select.fittest_pairs(select.mixed_fitness(select.ranked_returns(returns), kl, 0.0), 4, False)
    np.testing.assert_array_equal(jobs, select.breeding_jobs(expected, returns, 0))
    assert len({tuple(sorted(job[:2])) for job in jobs}) < 4  # some couple breeds twice
