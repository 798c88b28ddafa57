"""Property-based tests (hypothesis): the kernels against their references, the pure rules' invariants,
on inputs drawn at random instead of picked by hand."""
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpo_mpi import kernels
from gpo_mpi.kernels import reference
from gpo_mpi.sharing import share_sets
from gpo_mpi.select import breeding_jobs, candidate_couples, fittest_pairs, ranked_returns

# no per-example deadline: a loaded CI machine is slow, and only the result is under test
settings.register_profile("gpo-mpi", deadline=None, max_examples=150)
settings.load_profile("gpo-mpi")

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
rates = st.floats(0.0, 1.0)


@st.composite
def batches(draw):
    """A batch of concatenated episodes: any length, episode ends (terminated, truncated or both) anywhere."""
    n = draw(st.integers(0, 400))
    vector = arrays(np.float64, n, elements=finite)
    flags = arrays(np.bool_, n)
    return dict(rewards=draw(vector), values=draw(vector), next_values=draw(vector), terminated=draw(flags),
                truncated=draw(flags))


@given(batches(), rates, rates)
def test_gae_kernel_equals_the_step_by_step_recursion(batch, gamma, lam):
    expected = reference.gae_loop(**batch, gamma=gamma, lam=lam)
    for computed in (kernels.gae(**batch, gamma=gamma, lam=lam), reference.gae_numpy(**batch, gamma=gamma, lam=lam)):
        assert computed.shape == expected.shape and computed.dtype == np.float64
        np.testing.assert_allclose(computed, expected, rtol=1e-9, atol=1e-6)


@given(batches(), rates, rates)
def test_gae_restarts_at_every_episode_end(batch, gamma, lam):
    """An episode's advantages depend on its own steps only: cut the batch after an episode end and each part's
    advantages are the whole batch's."""
    ends = np.flatnonzero(batch["terminated"] | batch["truncated"])
    whole = kernels.gae(**batch, gamma=gamma, lam=lam)
    cut = ends[len(ends) // 2] + 1 if len(ends) else len(whole)
    parts = [kernels.gae(**{k: v[rows] for k, v in batch.items()}, gamma=gamma, lam=lam)
             for rows in (slice(0, cut), slice(cut, None))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, atol=1e-9)


@st.composite
def gaussian_pairs(draw):
    rows, dims = draw(st.integers(1, 40)), draw(st.integers(1, 8))
    means = arrays(np.float64, (rows, dims), elements=st.floats(-5, 5))
    shared = draw(st.booleans())  # a state-independent log-std: one (dims,) vector for every row
    log_stds = arrays(np.float64, (dims,) if shared else (rows, dims), elements=st.floats(-3, 2))
    return draw(means), draw(log_stds), draw(means), draw(log_stds)


@given(gaussian_pairs())
def test_kl_kernel_equals_torch_distributions(pair):
    mean_p, log_std_p, mean_q, log_std_q = pair
    p, q = (torch.distributions.Independent(torch.distributions.Normal(torch.tensor(mean),
                                                                      torch.tensor(log_std).exp().expand(len(mean), -1)), 1)
            for mean, log_std in ((mean_p, log_std_p), (mean_q, log_std_q)))
    expected = torch.distributions.kl_divergence(p, q).numpy()
    computed = kernels.diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)
    assert computed.shape == (len(mean_p),)
    np.testing.assert_allclose(computed, expected, rtol=1e-9, atol=1e-9)
    assert np.all(computed >= -1e-9)


@st.composite
def kl_matrices(draw):
    m = draw(st.integers(1, 10))
    kl = draw(arrays(np.float64, (m, m), elements=st.floats(0.0, 10.0)))
    np.fill_diagonal(kl, 0.0)
    return kl


@given(kl_matrices(), st.one_of(st.floats(0.0, 12.0), st.just(math.inf)), st.integers(0, 10))
def test_share_sets_hold_their_member_and_its_nearest_under_epsilon(kl, epsilon, max_others):
    for i, chosen in enumerate(share_sets(kl, epsilon, max_others)):
        others = [j for j in chosen if j != i]
        assert i in chosen and list(chosen) == sorted(set(chosen))
        under = [j for j in range(len(kl)) if j != i and kl[i, j] < epsilon]
        assert set(others) <= set(under)
        if max_others > 0:
            assert len(others) == min(max_others, len(under))
            if others:  # the nearest: none left out is nearer than one taken
                assert all(kl[i, j] >= max(kl[i, others]) for j in set(under) - set(others))
        else:
            assert others == under


@given(st.integers(2, 10).flatmap(lambda m: st.tuples(
    arrays(np.float64, (m, m), elements=st.floats(-100, 100)), st.integers(1, 2 * m), st.booleans())))
def test_fittest_pairs_are_distinct_couples_best_first(drawn):
    fitness, n_pairs, distinct = drawn
    pairs = fittest_pairs(fitness, n_pairs, distinct)
    couples = candidate_couples(len(fitness), distinct)
    assert pairs.shape == (n_pairs, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    score = (lambda x, y: 0.5 * (fitness[x, y] + fitness[y, x])) if distinct else (lambda x, y: fitness[x, y])
    first = pairs[:len(couples)]  # beyond every couple, the list starts over
    if distinct:
        assert np.all(first[:, 0] < first[:, 1])
    assert len({tuple(p) for p in first}) == len(first)
    scores = [score(x, y) for x, y in first]
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    left_out = {tuple(c) for c in couples} - {tuple(p) for p in first}
    assert all(score(x, y) <= scores[-1] for x, y in left_out)
    np.testing.assert_array_equal(pairs[len(couples):], pairs[:max(0, n_pairs - len(couples))])


@given(st.integers(2, 10).flatmap(lambda m: st.tuples(
    arrays(np.float64, m, elements=st.one_of(st.floats(-100, 100), st.just(math.nan))), st.integers(0, m - 1))))
def test_breeding_jobs_keep_the_elites_in_their_slots_and_give_every_other_slot_a_couple(drawn):
    member_returns, elites = drawn
    m = len(member_returns)
    pairs = fittest_pairs(np.add.outer(ranked_returns(member_returns), ranked_returns(member_returns)), m - elites)
    jobs = breeding_jobs(pairs, member_returns, elites)
    ranked = ranked_returns(member_returns)
    kept = [slot for slot in range(m) if jobs[slot].tolist() == [slot] * 3]
    assert len(kept) == elites
    if elites:  # the elites are the best: no other member ranks above one of them
        assert min(ranked[kept]) >= max(np.delete(ranked, kept), default=-math.inf)
    breeding = [slot for slot in range(m) if slot not in kept]
    np.testing.assert_array_equal(jobs[breeding, :2], pairs)  # in slot order
    for x, y, fitter in jobs[breeding]:
        assert fitter in (x, y) and ranked[fitter] >= ranked[x + y - fitter]
