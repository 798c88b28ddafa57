"""Environment steps per second on one core: gpo-mpi's engine against SB3's PPO.

    python bench/throughput.py [--iterations 5] [--env Hopper-v5] [--out docs/bench-throughput.md]

Measured in one run, one process, one torch thread, each over the same
number of PPO iterations of 2,048 steps with 10 policy epochs (sampling
plus updates, everything counted), from a fresh start:
- gpo-mpi, `--algo single --population 1` (one member, no MPI traffic):
  its defaults (full-batch PPO as in the paper, 4 environments side by
  side), and `--preset minibatch` (10 epochs of minibatch 64 like SB3's);
- Stable-Baselines3 PPO with n_steps=2048, batch_size=64, n_epochs=10;
- the environment alone, one copy stepped with a torch MLP forward per
  step: the ceiling of a plain one-environment sampler.
Needs `pip install stable-baselines3` (the `bench` extra).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import gymnasium as gym
import torch

torch.set_num_threads(1)


def gpo_mpi_steps_per_second(env_id: str, iterations: int, **fields) -> float:
    from gpo_mpi import mpi
    from gpo_mpi.config import RunConfig
    from gpo_mpi.engine import run

    with tempfile.TemporaryDirectory() as directory:
        config = RunConfig(env=env_id, algo="single", population=1, total_steps=2048 * iterations,
                           out=os.path.join(directory, "bench.h5"), **fields)
        start = time.perf_counter()
        run(config, mpi.world())
        return config.total_steps / (time.perf_counter() - start)


def sb3_steps_per_second(env_id: str, iterations: int) -> float:
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", env_id, n_steps=2048, batch_size=64, n_epochs=10, device="cpu", seed=0, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=2048 * iterations)
    return 2048 * iterations / (time.perf_counter() - start)


def environment_only_steps_per_second(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(obs_dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, act_dim))
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            action = net(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--iterations", type=int, default=10, help="PPO iterations of 2,048 steps for each learner")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    from gpo_mpi.config import PRESETS

    ceiling = environment_only_steps_per_second(args.env, 2048 * args.iterations)
    ours = gpo_mpi_steps_per_second(args.env, args.iterations)
    ours_minibatch = gpo_mpi_steps_per_second(args.env, args.iterations, **PRESETS["minibatch"])
    sb3 = sb3_steps_per_second(args.env, args.iterations)
    lines = [
        f"{args.env}, {args.iterations} iterations of 2,048 steps from a fresh start, one core, one torch thread; "
        f"{platform.machine()}, torch {torch.__version__}, gymnasium {gym.__version__}",
        "",
        "| learner | env steps/s | vs SB3 PPO | vs env-only ceiling |",
        "|---|---|---|---|",
        f"| gpo-mpi defaults (full-batch PPO, 4 envs) | {ours:,.0f} | {ours / sb3:.2f}x | {ours / ceiling:.0%} |",
        f"| gpo-mpi --preset minibatch (10 epochs x minibatch 64, 4 envs) | {ours_minibatch:,.0f} | "
        f"{ours_minibatch / sb3:.2f}x | {ours_minibatch / ceiling:.0%} |",
        f"| Stable-Baselines3 PPO (10 epochs x minibatch 64) | {sb3:,.0f} | 1.00x | {sb3 / ceiling:.0%} |",
        f"| environment alone + torch MLP forward per step | {ceiling:,.0f} | {ceiling / sb3:.2f}x | 100% |",
        "",
        f"Target: at least 3x SB3 (aim 5x): {'met' if ours >= 3 * sb3 else 'MISSED'} with the defaults "
        f"({ours / sb3:.2f}x); like for like, minibatch against minibatch: {ours_minibatch / sb3:.2f}x.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
