"""Evaluation rollouts: whole episodes of one policy, outside any training."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from .networks import GaussianPolicy
from .rollout import EnvSpec, ObsNormalizer


def episode_returns(policy: GaussianPolicy, normalizer: ObsNormalizer, env: EnvSpec, episodes: int, seed: int,
                    deterministic: bool = False, video_dir: str | None = None, video_name: str = "eval") -> np.ndarray:
    """Undiscounted returns of `episodes` complete episodes, actions sampled from the
    policy's Gaussian (as in training) or its mean (`deterministic`). With
    `video_dir`, the first episode is recorded to VIDEO_DIR/VIDEO_NAME-episode-0.mp4."""
    return returns_and_lengths(policy, normalizer, env, episodes, seed, deterministic, video_dir, video_name)[0]


def returns_and_lengths(policy: GaussianPolicy, normalizer: ObsNormalizer, env: EnvSpec, episodes: int, seed: int,
                        deterministic: bool = False, video_dir: str | None = None,
                        video_name: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """`episode_returns`, and each episode's length in environment steps."""
    if video_dir:
        env = gym.wrappers.RecordVideo(env.make(render_mode="rgb_array"), video_dir, name_prefix=video_name,
                                       episode_trigger=lambda episode: episode == 0, disable_logger=True)
    else:
        env = env.make()
    rng = np.random.default_rng(seed)
    mean_of = policy.numpy_mean()
    std = policy.log_std.detach().exp().numpy()
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            action = mean_of(normalizer(obs[None]))[0]
            if not deterministic:
                action = action + std * rng.standard_normal(len(std))
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[episode] += reward
            lengths[episode] += 1
            done = terminated or truncated
    env.close()
    return returns, lengths


def member_rows(members, normalizer: ObsNormalizer, env: EnvSpec, episodes: int, run_seed: int) -> np.ndarray:
    """One row per member for a run's evaluation: its index, then the returns and the lengths of `episodes`
    episodes of its mean action, from the member's evaluation seed (the same whichever rank runs them)."""
    from .seeds import evaluation
    rows = [[member.index, *np.concatenate(returns_and_lengths(member.policy, normalizer, env, episodes,
                                                               evaluation(run_seed, member.index),
                                                               deterministic=True))] for member in members]
    return np.array(rows, dtype=np.float64).reshape(-1, 1 + 2 * episodes)


def by_member(rows: np.ndarray, episodes: int) -> tuple[np.ndarray, int]:
    """Every rank's `member_rows` put together: the returns in member order (members x episodes) and the
    environment steps the evaluation took in all."""
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    return rows[:, 1:1 + episodes], int(rows[:, 1 + episodes:].sum())
