"""A run's policies read back from its run file: from the end of a finished run, or from the latest
checkpoint of a running or stopped one. The tools, the plots, `gpo_mpi.load_policy` and a run's warm start
(`--init-from`) all read runs here; whatever the file holds, what is read must fit the run's networks, or
ConfigError says in one line what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from .config import ConfigError, RunConfig
from .networks import Critic, GaussianPolicy, load_flat_parameters
from .rollout import EnvSpec, ObsNormalizer
from .runfile import open_run, stored_config


@dataclass
class FinishedRun:
    """A run's policies, as networks, and what they need to act: from the end of a finished
    run, or from the latest checkpoint of a running or stopped one."""
    config: RunConfig
    policies: list[GaussianPolicy]
    critics: list[Critic]
    normalizer: ObsNormalizer
    best_member: int  # by the final evaluation; at a checkpoint, by the latest training returns
    final_returns: np.ndarray  # each member's mean return over its last 10 training episodes
    source: str = "the end of the run"  # or "the checkpoint at iteration N of M, the run not finished"


def _checkpoint_members(path: str, run_file: h5py.File, config: RunConfig) -> tuple[list[dict], np.ndarray, int]:
    """Member states by index, observation statistics and iteration of the latest checkpoint."""
    from . import checkpoint
    if checkpoint.GROUP not in run_file:
        raise ConfigError(f"{path} holds neither a finished run nor a checkpoint yet: nothing to read")
    return checkpoint.member_states(path, *checkpoint.read_group(path, run_file), config.n_policies)


def load_run(path: str) -> FinishedRun:
    """A run file's policies: the final ones, or the latest checkpoint's while the run is not finished."""
    with open_run(path) as run_file:
        config = stored_config(run_file)
        obs_dim, act_dim = EnvSpec.of(config).space_sizes()
        returns = run_file["iterations/member_return"][()]
        final_returns = returns[-1] if len(returns) else np.full(config.n_policies, np.nan)
        if "final" in run_file:
            try:
                policy_vectors = run_file["final/policy_parameters"][()]
                critic_vectors = run_file["final/critic_parameters"][()]
                best = int(run_file["final"].attrs["best_member"])
                normalizer_state = run_file["final/obs_normalizer"][()]
            except OSError as error:
                raise ConfigError(f"the final group of {path} is damaged: its data cannot be read, a checksum "
                                  f"does not match or the file is cut short ({error})") from None
            except (KeyError, TypeError, ValueError) as error:
                raise ConfigError(f"the final group of {path} is damaged ({type(error).__name__}: {error})") from None
            source, member_states = "the end of the run", None
        else:
            member_states, normalizer_state, iteration = _checkpoint_members(path, run_file, config)
            best = int(np.nanargmax(final_returns)) if np.isfinite(final_returns).any() else 0
            source = f"the checkpoint at iteration {iteration} of {config.iterations}, the run not finished"
    try:  # what was read must fit the run's networks, whatever the file holds
        policies, critics = [], []
        for index in range(config.n_policies):
            policy = GaussianPolicy(obs_dim, act_dim, config.policy_hidden)
            critic = Critic(obs_dim, config.critic_hidden)
            if member_states is None:
                load_flat_parameters(policy, _float_row(policy_vectors, index))
                load_flat_parameters(critic, _float_row(critic_vectors, index))
            else:
                policy.load_state_dict(member_states[index]["policy"])
                critic.load_state_dict(member_states[index]["critic"])
            policies.append(policy)
            critics.append(critic)
        normalizer_state = np.asarray(normalizer_state)
        if normalizer_state.shape != (1 + 2 * obs_dim,) or not np.isfinite(normalizer_state.astype(float)).all():
            raise ValueError(f"observation statistics of shape {normalizer_state.shape} or not finite")
        if not 0 <= best < config.n_policies:
            raise ValueError(f"best member {best} of {config.n_policies}")
        normalizer = ObsNormalizer(obs_dim, config.obs_clip, enabled=config.obs_norm == "shared")
        normalizer.load_state(normalizer_state)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
        where = "final group" if member_states is None else "checkpoint"
        raise ConfigError(f"the {where} of {path} is damaged or from another run ({type(error).__name__}: "
                          f"{error})".splitlines()[0]) from None
    return FinishedRun(config, policies, critics, normalizer, best, final_returns, source)


def _float_row(vectors: np.ndarray, index: int) -> np.ndarray:
    """Row `index` of a stored (members, parameters) array, refused unless finite floats."""
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(f"parameters stored as {vectors.dtype} of shape {vectors.shape}")
    row = vectors[index]
    if not np.isfinite(row).all():
        raise ValueError(f"member {index}'s parameters are not finite")
    return row


def read_member(path: str, member: int | None) -> tuple[FinishedRun, int]:
    """A run and the member to use: `member`, or the best one."""
    run = load_run(path)
    chosen = run.best_member if member is None else member
    if not 0 <= chosen < len(run.policies):
        raise ConfigError(f"member {chosen} does not exist: the run has {len(run.policies)}")
    return run, chosen
