"""Evaluation rollouts: whole episodes of one policy, outside any training."""
from __future__ import annotations

import numpy as np

from .networks import GaussianPolicy
from .rollout import ObsNormalizer, make_env


def episode_returns(policy: GaussianPolicy, normalizer: ObsNormalizer, env_id: str, episodes: int, seed: int,
                    horizon: int = 0, deterministic: bool = False) -> np.ndarray:
    """Undiscounted returns of `episodes` complete episodes, actions sampled from the
    policy's Gaussian (as in training) or its mean (`deterministic`)."""
    env = make_env(env_id, horizon)
    rng = np.random.default_rng(seed)
    mean_of = policy.numpy_mean()
    std = policy.log_std.detach().exp().numpy()
    returns = np.zeros(episodes)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            action = mean_of(normalizer(obs[None]))[0]
            if not deterministic:
                action = action + std * rng.standard_normal(len(std))
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[episode] += reward
            done = terminated or truncated
    env.close()
    return returns
