"""SELECT: parent pairs by fitness (or at random, without component S).

Plain numpy functions; rank 0 calls `plan` with the population's returns and
KL matrix and broadcasts the jobs it returns.

Couples are unordered by default: {x, y} can breed once per round, so a
population of 8 gets 8 different couples. `distinct_couples=False` allows
(x, y) and (y, x) both, the paper's "m^2 couples" read literally, which with
the symmetric performance fitness breeds each chosen couple twice.
"""
from __future__ import annotations

import numpy as np

from . import seeds
from .config import RunConfig


def performance_fitness(member_returns: np.ndarray) -> np.ndarray:
    """f(x, y) = R_x + R_y for every couple."""
    return member_returns[:, None] + member_returns[None, :]


def _min_max(matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = matrix[mask]
    span = values.max() - values.min() if values.size else 0.0
    return (matrix - values.min()) / span if span > 0 else np.zeros_like(matrix)


def mixed_fitness(member_returns: np.ndarray, kl: np.ndarray, diversity_weight: float) -> np.ndarray:
    """(1 - w) * performance + w * diversity, each min-max normalized over the couples x != y.

    Diversity fitness is KL[pi_x, pi_y]; w = 0 is pure performance (the
    paper's runs), w = 1 pure diversity.
    """
    off_diagonal = ~np.eye(len(member_returns), dtype=bool)
    performance = _min_max(performance_fitness(member_returns), off_diagonal)
    if diversity_weight == 0:
        return performance
    diversity = _min_max(kl, off_diagonal)
    return (1.0 - diversity_weight) * performance + diversity_weight * diversity


def diversity_weight(round_index: int, rounds: int, start: float, end: float) -> float:
    """Linear schedule from `start` in the first round to `end` in the last."""
    if rounds <= 1:
        return start
    return start + (end - start) * round_index / (rounds - 1)


def candidate_couples(n_members: int, distinct_couples: bool) -> np.ndarray:
    """All couples (x, y) with x != y: x < y only when couples are unordered."""
    x, y = np.nonzero(~np.eye(n_members, dtype=bool))
    if distinct_couples:
        keep = x < y
        x, y = x[keep], y[keep]
    return np.column_stack([x, y])


def fittest_pairs(fitness: np.ndarray, n_pairs: int, distinct_couples: bool = True) -> np.ndarray:
    """The `n_pairs` couples of highest fitness, best first.

    For an unordered couple the fitness is the mean of f(x, y) and f(y, x).
    Ties go to the couple that comes first in (x, y) order, so the choice is
    the same on every machine. With fewer couples than pairs wanted (a
    population of 2 or 3 with distinct couples), the list starts over.
    """
    couples = candidate_couples(len(fitness), distinct_couples)
    scores = fitness[couples[:, 0], couples[:, 1]]
    if distinct_couples:
        scores = 0.5 * (scores + fitness[couples[:, 1], couples[:, 0]])
    order = np.lexsort((couples[:, 1], couples[:, 0], -scores))  # last key sorts first
    return couples[order[np.arange(n_pairs) % len(order)]]


def random_pairs(n_members: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Couples x != y drawn uniformly (component S off)."""
    first = rng.integers(n_members, size=n_pairs)
    second = (first + rng.integers(1, n_members, size=n_pairs)) % n_members
    return np.column_stack([first, second])


def ranked_returns(member_returns: np.ndarray) -> np.ndarray:
    """Returns to rank members by: a member with no finished episode yet (NaN) ranks as the worst one."""
    finite = np.isfinite(member_returns)
    return np.where(finite, member_returns, member_returns[finite].min() if finite.any() else 0.0)


def fitter_parents(pairs: np.ndarray, member_returns: np.ndarray) -> np.ndarray:
    """The parent of each pair with the higher ranked return (the first on a tie): the one whose
    networks the child starts from."""
    ranked = ranked_returns(member_returns)
    return np.where(ranked[pairs[:, 0]] >= ranked[pairs[:, 1]], pairs[:, 0], pairs[:, 1])


def pair_fitness(fitness: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Fitness of each chosen pair, for the record."""
    return fitness[pairs[:, 0], pairs[:, 1]]


def elite_members(member_returns: np.ndarray, elites: int) -> np.ndarray:
    """The `elites` members of highest ranked return, best first (the lower index first on a tie)."""
    return np.argsort(-ranked_returns(member_returns), kind="stable")[:elites]


def breeding_jobs(pairs: np.ndarray, member_returns: np.ndarray, elites: int) -> np.ndarray:
    """Every slot's job at a breeding, in slot order: rows [first parent, second parent, fitter parent].

    An elite's row names itself three times: it goes on unchanged. The other slots take
    `pairs` (one per slot, population - elites of them) in order.
    """
    jobs = np.empty((len(member_returns), 3), dtype=np.int64)
    kept = elite_members(member_returns, elites)
    jobs[kept] = kept[:, None]
    breeding = np.setdiff1d(np.arange(len(member_returns)), kept)
    jobs[breeding, :2] = pairs
    jobs[breeding, 2] = fitter_parents(pairs, member_returns)
    return jobs


def plan(config: RunConfig, member_returns: np.ndarray, kl: np.ndarray, round_index: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """SELECT's decision after round `round_index`: every slot's job [first parent, second parent, fitter
    parent] (an elite's: itself, twice) and the fitness of each job's pair."""
    weight = diversity_weight(round_index, config.n_rounds - 1, config.diversity_weight_start,
                              config.diversity_weight_end)
    fitness = mixed_fitness(ranked_returns(member_returns), kl, weight)
    if config.has("S"):
        pairs = fittest_pairs(fitness, config.children_per_round, config.distinct_couples)
    else:
        pairs = random_pairs(config.population, config.children_per_round,
                             seeds.random_couples(config.seed, round_index))
    jobs = breeding_jobs(pairs, member_returns, config.elites)
    return jobs, pair_fitness(fitness, jobs[:, :2])
