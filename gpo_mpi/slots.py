"""A rank's member slots: each slot's member (under Joint, the one policy every slot shares) and its
sampler, made from the run's seeds alone; a warm start from another run; new episodes for a slot.

Which slots a rank holds is `RunConfig.member_slots`; nothing here depends on the rank otherwise, so a run
does not depend on how its slots are spread over the ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import crossover, seeds
from .config import ConfigError, RunConfig
from .learner import Member
from .rollout import EnvSpec, EpisodeRecorder, ObsNormalizer, Sampler


@dataclass
class LocalMember:
    """One member slot of this rank (Joint: one sampler slot, all sharing the one policy)."""
    member: Member
    sampler: Sampler
    sampler_seed: int  # restarts derive their seeds from it


def make(config: RunConfig, env: EnvSpec, rank: int, n_ranks: int, obs_dim: int, act_dim: int
         ) -> list[LocalMember]:
    """This rank's member slots: networks and samplers (Joint: sampler slots of its one policy)."""
    joint = config.algo == "joint"
    slots = config.member_slots(rank, n_ranks)
    if joint:  # one policy, the same initial weights on every rank
        joint_member = Member.create(0, obs_dim, act_dim, config, seeds.member(config.seed, 0))
        members = [joint_member] * len(slots)
    else:
        members = [Member.create(i, obs_dim, act_dim, config, seeds.member(config.seed, i)) for i in slots]
    # Crossover's selector learns from each parent's whole round of episodes.
    records_episodes = config.has("C") and config.crossover_operator == "state"
    local = []
    for slot, member in zip(slots, members):
        recorder = EpisodeRecorder(config.n_envs, crossover.recorder_stride(config)) if records_episodes else None
        name = f"joint sampler {slot}" if joint else f"member {slot}"
        seed = seeds.training_environments(config.seed, slot)
        local.append(LocalMember(member, Sampler(env, config.n_envs, seed, name, recorder), seed))
    return local


def restart(local: list[LocalMember], iteration: int) -> None:
    """New episodes in these slots' environments, seeded by slot and iteration."""
    for lm in local:
        lm.sampler.restart(seeds.restart(lm.sampler_seed, iteration))


def warm_start(members: list[Member], normalizer: ObsNormalizer, path: str, obs_dim: int, act_dim: int,
               env_name: str) -> str:
    """Every member's networks (and the observation statistics) from the best policy of the run in `path`;
    ConfigError where that run's sizes differ. Returns what it started from, in words."""
    from .saved import read_member
    run, best = read_member(path, None)
    if run.normalizer.mean.shape != (obs_dim,) or run.policies[best].log_std.shape != (act_dim,):
        raise ConfigError(f"its observations and actions ({run.normalizer.mean.shape[0]}, "
                          f"{run.policies[best].log_std.shape[0]}) differ from {env_name}'s ({obs_dim}, {act_dim})")
    try:
        for member in members:
            member.policy.load_state_dict(run.policies[best].state_dict())
            member.critic.load_state_dict(run.critics[best].state_dict())
    except RuntimeError as error:  # other hidden layer sizes
        raise ConfigError(str(error)) from None
    normalizer.load_state(run.normalizer.state())
    return f"member {best} of {path} ({run.config.env}, read from {run.source})"
