"""Every seed a run derives from `config.seed`, in one place.

Each random stream is seeded by what it belongs to (member slot, iteration,
round), never by rank, so a run is the same on any number of ranks. The
offsets keep the streams apart: member slots are 1,000 apart, a slot's
training environments start at +1, a child's seed at +100 per round, its
crossover environments at +7 from there, evaluation episodes at +500,000
(beyond any slot of a population under 500). From round 10 on, a child's
seed can equal that of an earlier child of the next slot; the two streams
then serve other parents in other rounds, which keeps them apart in effect.
Changing any of these changes every run file of a given seed.
"""
from __future__ import annotations

import numpy as np

MEMBER_STRIDE = 1000
EVALUATION_OFFSET = 500_000
RESTART_STRIDE = 7919  # a prime, so restarts of different slots and iterations rarely meet


def member(run_seed: int, slot: int) -> int:
    """The initial networks (and their minibatch generator) of the member in `slot`."""
    return run_seed + MEMBER_STRIDE * slot


def training_environments(run_seed: int, slot: int) -> int:
    """The slot's training sampler; its restarts derive from it (`restart`)."""
    return member(run_seed, slot) + 1


def restart(sampler_seed: int, iteration: int) -> int:
    """New episodes in a sampler's environments after `iteration` (children's environments at birth)."""
    return sampler_seed + RESTART_STRIDE * iteration


def child(run_seed: int, slot: int, round_index: int) -> int:
    """The networks, crossover training and random draws of the child born into `slot` after `round_index`."""
    return member(run_seed, slot) + 100 * (round_index + 1)


def crossover_environments(child_seed: int) -> int:
    """The environments the expert and the child act in during state-space crossover."""
    return child_seed + 7


def evaluation(run_seed: int, slot: int) -> int:
    """The slot's evaluation episodes (during training and at the end): never a training environment's seed."""
    return member(run_seed, slot) + EVALUATION_OFFSET


def kl_states(run_seed: int, slot: int, iteration: int) -> np.random.Generator:
    """Which of the slot's batch states go into the KL matrix at `iteration`."""
    return np.random.default_rng((run_seed, slot, iteration))


def selector_states(run_seed: int, slot: int, round_index: int) -> np.random.Generator:
    """Which of the slot's trajectories of the round its children's selector learns from."""
    return np.random.default_rng((run_seed, slot, round_index))


def random_couples(run_seed: int, round_index: int) -> np.random.Generator:
    """The parent pairs drawn at random when selection (component S) is off."""
    return np.random.default_rng((run_seed, round_index, 17))
