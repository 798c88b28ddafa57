"""Sampling: environments, shared observation normalization, and batches.

A member steps `n_envs` copies of its environment side by side (gymnasium's
SyncVectorEnv, same-step autoreset so the final observation of an episode
comes back in the step that ends it) with one policy forward per step.
Time limits are truncations. A batch stores *normalized* observations, so
that every member that reads it sees the same states the sampler saw.
"""
from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

from . import snapshot, statefile
from .networks import GaussianPolicy


class UnusableEnvironment(ValueError):
    """The environment cannot be used (unknown id, discrete actions): every rank finds out alike."""


class NonFiniteError(RuntimeError):
    """Observations, rewards or a loss stopped being finite, on one rank: the job has to end."""


@functools.cache
def _quiet_known_mujoco_deprecations() -> None:
    """MuJoCo 4 warns, on stderr and into MUJOCO_LOG.TXT in the working directory, each
    time gymnasium's HalfCheetah model is built (its XML uses a deprecated attribute):
    hundreds of lines in a population's log. Drop that one; print the others as before."""
    try:
        import mujoco
    except ImportError:
        return

    def warn(message: str) -> None:
        if "is deprecated" not in message:
            print(f"MuJoCo warning: {message}", file=sys.stderr, flush=True)

    mujoco.set_mju_user_warning(warn)


@dataclass(frozen=True)
class EnvSpec:
    """What every rank builds its environments from.

    `name` is a registered gymnasium id (`Hopper-v5`, `module:RegisteredId-v0`)
    or `package.module:EnvClass`, which is imported and constructed with
    `kwargs`. `horizon` > 0 replaces the episode time limit.
    """
    name: str
    kwargs: dict = field(default_factory=dict)
    horizon: int = 0

    @classmethod
    def of(cls, config) -> "EnvSpec":
        """The environment a run's config names."""
        return cls(config.env, dict(config.env_kwargs), config.horizon)

    def _entry(self):
        """A gymnasium EnvSpec for `package.module:EnvClass`, or the name itself for registered ids."""
        module_name, _, attribute = self.name.partition(":")
        if not attribute:
            return self.name
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UnusableEnvironment(f"cannot make environment {self.name!r}: cannot import {module_name!r} "
                                      f"({error})") from None
        creator = getattr(module, attribute, None)
        if not callable(creator):  # gymnasium's own "module:RegisteredId" form
            return self.name
        return gym.envs.registration.EnvSpec(id=attribute, entry_point=creator)

    def make(self, **extra_kwargs) -> gym.Env:
        """One environment, checked to have flat Box observations and Box actions."""
        _quiet_known_mujoco_deprecations()
        try:
            env = gym.make(self._entry(), max_episode_steps=self.horizon or None, **self.kwargs, **extra_kwargs)
        except gym.error.Error as error:
            raise UnusableEnvironment(f"cannot make environment {self.name!r}: {error}") from None
        except (TypeError, ValueError) as error:  # a keyword argument the environment does not take, or a bad value
            raise UnusableEnvironment(f"cannot make environment {self.name!r} with env_kwargs {self.kwargs}: "
                                      f"{error}") from None
        if not isinstance(env.action_space, gym.spaces.Box):
            env.close()
            raise UnusableEnvironment(f"environment {self.name!r} has a {type(env.action_space).__name__} action "
                                      "space; gpo-mpi needs a continuous (Box) one")
        if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
            env.close()
            raise UnusableEnvironment(f"environment {self.name!r} must have flat Box observations")
        return env

    def space_sizes(self) -> tuple[int, int]:
        """(obs_dim, act_dim)."""
        env = self.make()
        sizes = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        return sizes


class Batch(NamedTuple):
    """One member's rollout of `n_envs` columns of equal length, concatenated
    column after column. Every array has one row per environment step."""
    obs: np.ndarray          # (T, obs_dim) float32, normalized as sampled
    actions: np.ndarray      # (T, act_dim) float32, as sent to the environment (unclipped)
    log_probs: np.ndarray    # (T,) float32, log pi_behaviour(a|s)
    rewards: np.ndarray      # (T,) float32
    next_obs: np.ndarray     # (T, obs_dim) float32, normalized; the final observation where an episode ended
    terminated: np.ndarray   # (T,) bool
    truncated: np.ndarray    # (T,) bool, time limits and the end of each column (the batch cut)

    @property
    def n_steps(self) -> int:
        """Environment steps (rows) in the batch."""
        return len(self.rewards)

    def to_rows(self) -> np.ndarray:
        """Every field side by side in one float32 matrix, to move with one collective."""
        return np.concatenate([self.obs, self.next_obs, self.actions, self.log_probs[:, None], self.rewards[:, None],
                               self.terminated[:, None], self.truncated[:, None]], axis=1, dtype=np.float32)

    @classmethod
    def from_rows(cls, rows: np.ndarray, obs_dim: int) -> "Batch":
        """Inverse of to_rows."""
        act_end = rows.shape[1] - 4
        return cls(obs=rows[:, :obs_dim], next_obs=rows[:, obs_dim:2 * obs_dim],
                   actions=rows[:, 2 * obs_dim:act_end], log_probs=rows[:, act_end], rewards=rows[:, act_end + 1],
                   terminated=rows[:, act_end + 2] > 0.5, truncated=rows[:, act_end + 3] > 0.5)


class ObsNormalizer:
    """Running mean and variance of observations, the same on every rank.

    Statistics change only through `update_from_sums`, fed with sums that
    the caller has added up over every member of the population, so all
    members normalize alike.
    """

    def __init__(self, obs_dim: int, clip: float, enabled: bool = True):
        self.mean = np.zeros(obs_dim)
        self.var = np.ones(obs_dim)
        self.count = 0.0
        self.clip = clip
        self.enabled = enabled

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return obs.astype(np.float32)
        normalized = (obs - self.mean) / np.sqrt(self.var + 1e-8)
        return np.clip(normalized, -self.clip, self.clip).astype(np.float32)

    @staticmethod
    def sums(raw_obs: np.ndarray) -> np.ndarray:
        """[count, sum, sum of squares] of a block of raw observations, to add over ranks."""
        raw_obs = raw_obs.astype(np.float64)
        return np.concatenate([[len(raw_obs)], raw_obs.sum(0), (raw_obs ** 2).sum(0)])

    def update_from_sums(self, sums: np.ndarray) -> None:
        """Merge a population-wide block of observations (Chan et al.'s parallel update)."""
        if not self.enabled:
            return
        obs_dim = len(self.mean)
        count, total, total_sq = sums[0], sums[1:1 + obs_dim], sums[1 + obs_dim:]
        if count == 0:
            return
        batch_mean = total / count
        batch_var = np.maximum(total_sq / count - batch_mean ** 2, 0.0)
        new_count = self.count + count
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * count / new_count
        self.var = (self.var * self.count + batch_var * count + delta ** 2 * self.count * count / new_count) / new_count
        self.count = new_count

    def state(self) -> np.ndarray:
        """Count, mean and variance as one vector (for checkpoints and collectives)."""
        return np.concatenate([[self.count], self.mean, self.var])

    def load_state(self, state: np.ndarray) -> None:
        """Inverse of `state`."""
        obs_dim = len(self.mean)
        self.count, self.mean, self.var = float(state[0]), state[1:1 + obs_dim].copy(), state[1 + obs_dim:].copy()


@dataclass
class EpisodeLog:
    """Returns and lengths of the episodes a sampler finished."""
    returns: list
    lengths: list

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The episodes finished since the last call."""
        returns, lengths = np.array(self.returns), np.array(self.lengths, dtype=np.int64)
        self.returns.clear()
        self.lengths.clear()
        return returns, lengths


class EpisodeRecorder:
    """The states of a sampler's finished episodes, split at real episode ends
    (not at batch cuts), with each episode's return: crossover's selector
    learns from them. Keeps every `stride`-th state of an episode, so that a
    round's worth stays small enough to checkpoint and to send.
    """

    def __init__(self, n_envs: int, stride: int):
        self.stride = stride
        self.finished: list[tuple[np.ndarray, float]] = []
        self.restart(n_envs)

    def restart(self, n_envs: int) -> None:
        """Forget the unfinished episodes (their environments start anew)."""
        self.pending: list[list[np.ndarray]] = [[] for _ in range(n_envs)]
        self.pending_length = np.zeros(n_envs, dtype=np.int64)
        self.pending_return = np.zeros(n_envs)

    def add(self, obs: np.ndarray, rewards: np.ndarray, ended: np.ndarray) -> None:
        """Fold in steps laid out (time, column, ...): normalized observations, rewards and real episode ends."""
        for column in range(obs.shape[1]):
            start = 0
            for end in list(np.flatnonzero(ended[:, column]) + 1) + [len(obs)]:
                if end <= start:
                    continue
                offset = int((-self.pending_length[column]) % self.stride)  # keep states at multiples of stride
                self.pending[column].append(obs[start + offset:end:self.stride, column])
                self.pending_length[column] += end - start
                self.pending_return[column] += float(rewards[start:end, column].sum(dtype=np.float64))
                if ended[end - 1, column]:
                    self.finished.append((np.concatenate(self.pending[column]), self.pending_return[column]))
                    self.pending[column] = []
                    self.pending_length[column], self.pending_return[column] = 0, 0.0
                start = end

    def take(self) -> list[tuple[np.ndarray, float]]:
        """The finished episodes since the last call, as (states, return)."""
        finished, self.finished = self.finished, []
        return finished

    def state(self) -> dict:
        """What a checkpoint keeps of the recorder: the finished episodes and the unfinished ones so far."""
        return dict(finished=self.finished, pending=self.pending, pending_length=self.pending_length.copy(),
                    pending_return=self.pending_return.copy())

    def load_state(self, state: dict) -> None:
        """Inverse of `state`."""
        self.finished, self.pending = state["finished"], state["pending"]
        self.pending_length, self.pending_return = state["pending_length"].copy(), state["pending_return"].copy()


class Sampler:
    """Steps one member's environments with its policy."""

    def __init__(self, env: EnvSpec, n_envs: int, seed: int, member_name: str, recorder: EpisodeRecorder | None = None):
        self.envs = gym.vector.SyncVectorEnv([env.make for _ in range(n_envs)],
                                             autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.env_name = env.name
        self.member_name = member_name
        self.n_envs = n_envs
        self.raw_obs, _ = self.envs.reset(seed=seed)
        self.action_rng = np.random.default_rng(seed)
        self.running_return = np.zeros(n_envs)
        self.running_length = np.zeros(n_envs, dtype=np.int64)
        self.episodes = EpisodeLog([], [])
        self.recorder = recorder

    def _check_finite(self, what: str, values: np.ndarray) -> None:
        if not np.all(np.isfinite(values)):
            raise NonFiniteError(f"{self.member_name}: environment {self.env_name} returned non-finite {what}")

    def close(self) -> None:
        """Close the environments."""
        self.envs.close()

    @property
    def capturable(self) -> bool:
        """Whether `state` can hold the environments (see gpo_mpi.snapshot): each of a kind the snapshot
        knows, and a user's own state what a checkpoint stores without pickle (numbers, strings, arrays,
        lists, dicts; checked once the environments have been reset)."""
        return all(snapshot.capturable(env) and statefile.storable(snapshot.capture(env)) for env in self.envs.envs)

    def state(self, with_environments: bool) -> dict:
        """What a checkpoint keeps: the episode record and, `with_environments`, everything
        needed to go on with the same episodes and action noise in another process."""
        state = dict(recorder=self.recorder.state() if self.recorder else None)
        if with_environments:
            state.update(environments=[snapshot.capture(env) for env in self.envs.envs],
                         raw_obs=self.raw_obs.copy(), action_rng=self.action_rng.bit_generator.state,
                         running_return=self.running_return.copy(), running_length=self.running_length.copy())
        return state

    def load_state(self, state: dict) -> None:
        """Inverse of `state`: environments are restored only where the state holds them."""
        if self.recorder is not None:
            self.recorder.load_state(state["recorder"])
        if "environments" in state:
            for env, env_state in zip(self.envs.envs, state["environments"], strict=True):
                snapshot.restore(env, env_state)
            self.raw_obs = state["raw_obs"].copy()
            self.action_rng.bit_generator.state = state["action_rng"]
            self.running_return[:], self.running_length[:] = state["running_return"], state["running_length"]

    def restart(self, seed: int) -> None:
        """Start new episodes in every environment, and the action noise, from `seed`.

        Unfinished episodes are dropped from the episode record. Afterwards the
        sampler's state is a function of the seed alone: checkpoints of
        environments that cannot be captured restart them.
        """
        self.raw_obs, _ = self.envs.reset(seed=seed)
        self.action_rng = np.random.default_rng(seed)
        self.running_return[:] = 0.0
        self.running_length[:] = 0
        if self.recorder is not None:
            self.recorder.restart(self.n_envs)

    def run(self, choose_actions, normalizer: ObsNormalizer, n_steps: int, act_dim: int) -> tuple[Batch, np.ndarray]:
        """`n_steps` steps (a multiple of n_envs), actions from `choose_actions(obs, rng)`
        on normalized observations (columns, obs_dim).

        Returns the batch (log_probs left as zeros) and the raw observations
        it saw, for the population-wide normalization statistics.
        """
        columns = self.n_envs
        length = n_steps // columns
        obs_dim = self.raw_obs.shape[1]
        raw_obs = np.empty((length, columns, obs_dim))
        obs = np.empty((length, columns, obs_dim), dtype=np.float32)
        raw_next_obs = np.empty((length, columns, obs_dim))
        actions = np.empty((length, columns, act_dim), dtype=np.float32)
        rewards = np.empty((length, columns), dtype=np.float32)
        terminated = np.empty((length, columns), dtype=bool)
        truncated = np.empty((length, columns), dtype=bool)
        ended_steps = np.empty((length, columns), dtype=bool)

        for t in range(length):
            obs[t] = normalizer(self.raw_obs)
            raw_obs[t] = self.raw_obs
            actions[t] = choose_actions(obs[t], self.action_rng)
            next_obs, reward, is_terminal, is_truncated, info = self.envs.step(actions[t])
            rewards[t], terminated[t], truncated[t] = reward, is_terminal, is_truncated
            raw_next_obs[t] = next_obs
            self.running_return += reward
            self.running_length += 1
            ended = ended_steps[t] = is_terminal | is_truncated
            if ended.any():  # same-step autoreset: next_obs already holds the reset observation
                raw_next_obs[t, ended] = np.stack(info["final_obs"][ended])
                self.episodes.returns.extend(self.running_return[ended].tolist())
                self.episodes.lengths.extend(self.running_length[ended].tolist())
                self.running_return[ended] = 0.0
                self.running_length[ended] = 0
            self.raw_obs = next_obs
        truncated[-1] = True  # each column ends at the batch cut

        self._check_finite("observations", raw_next_obs)
        self._check_finite("rewards", rewards)
        if self.recorder is not None:
            self.recorder.add(obs, rewards, ended_steps)

        def column_major(array):  # (length, columns, ...) -> (columns * length, ...)
            return np.ascontiguousarray(array.swapaxes(0, 1).reshape((columns * length,) + array.shape[2:]))

        batch = Batch(obs=column_major(obs), actions=column_major(actions), log_probs=np.zeros(n_steps, np.float32),
                      rewards=column_major(rewards), next_obs=normalizer(column_major(raw_next_obs)),
                      terminated=column_major(terminated), truncated=column_major(truncated))
        return batch, raw_obs.reshape(-1, obs_dim)

    def sample(self, policy: GaussianPolicy, normalizer: ObsNormalizer, n_steps: int) -> tuple[Batch, np.ndarray]:
        """`n_steps` steps with the policy's current weights, behaviour log-probs included."""
        act_dim = policy.log_std.shape[0]
        policy_mean = policy.numpy_mean()
        std = policy.log_std.detach().exp().numpy()

        def gaussian_actions(obs, rng):
            return policy_mean(obs) + std * rng.standard_normal((len(obs), act_dim))

        batch, raw_obs = self.run(gaussian_actions, normalizer, n_steps, act_dim)
        with torch.no_grad():
            log_probs = policy.log_prob(torch.from_numpy(batch.obs), torch.from_numpy(batch.actions)).numpy()
        return batch._replace(log_probs=log_probs), raw_obs
