"""The seed streams (gpo_mpi.seeds): the offsets its docstring promises, and streams that never meet."""
from hypothesis import given
from hypothesis import strategies as st

from gpo_mpi import seeds


def test_each_stream_is_offset_as_documented():
    # changing any of these changes every published run file of a seed: the module docstring states them
    assert seeds.member(5, 3) == 5 + 3 * 1000
    assert seeds.training_environments(5, 3) == 5 + 3 * 1000 + 1
    assert seeds.restart(4001, 2) == 4001 + 2 * 7919
    assert seeds.child(5, 3, 0) == 5 + 3 * 1000 + 100 and seeds.child(5, 3, 4) == 5 + 3 * 1000 + 500
    assert seeds.crossover_environments(3105) == 3105 + 7
    assert seeds.evaluation(5, 3) == 5 + 3 * 1000 + 500_000


@given(st.integers(0, 10_000), st.integers(1, 64), st.integers(1, 10))
def test_the_streams_of_a_run_never_share_a_seed(run_seed, population, rounds):
    """Initial networks, training environments, children (rounds - 1 breedings), their crossover environments and
    evaluations: no two streams of one run start from one seed, for populations up to 64 and up to 10 rounds."""
    streams = []
    for slot in range(population):
        streams += [seeds.member(run_seed, slot), seeds.training_environments(run_seed, slot),
                    seeds.evaluation(run_seed, slot)]
        for round_index in range(rounds - 1):
            child = seeds.child(run_seed, slot, round_index)
            streams += [child, seeds.crossover_environments(child)]
    assert len(set(streams)) == len(streams)


def test_the_generator_streams_depend_on_each_of_their_arguments():
    import numpy as np
    for stream in (seeds.kl_states, seeds.selector_states):
        draws = stream(5, 3, 2).integers(1 << 30, size=4)
        np.testing.assert_array_equal(stream(5, 3, 2).integers(1 << 30, size=4), draws)  # the same on every rank
        for other in ((6, 3, 2), (5, 4, 2), (5, 3, 1)):
            assert not np.array_equal(stream(*other).integers(1 << 30, size=4), draws)
    draws = seeds.random_couples(5, 2).integers(1 << 30, size=4)
    for other in ((5, 2), (6, 2), (5, 3)):
        same = np.array_equal(seeds.random_couples(*other).integers(1 << 30, size=4), draws)
        assert same == (other == (5, 2))
