"""Why gpo-mpi's PPO-clip moves its policy further per update than SB3's: clip fraction and approximate
KL per iteration, side by side, for the first iterations of bench/ppo_clip_hopper.py's runs.

    python bench/ppo_clip_diagnostics.py [--steps 100000] [--seed 0] [--out runs/ppo-clip-diagnostics]

Three learners with ppo_clip_hopper.py's settings: gpo-mpi's PPO-clip, SB3's PPO, and SB3's PPO with its
gradient-norm clipping off (max_grad_norm 1e9). SB3 clips the norm of the gradient of policy loss plus half
the value loss together, so while the critic's gradient is large the policy's steps shrink; gpo-mpi clips
the policy's gradient alone. If that coupling is the difference, SB3 without clipping moves as far as
gpo-mpi. Prints the means over windows of iterations. Needs stable-baselines3 (the `bench` extra).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from ppo_clip_hopper import BATCH, ENV, GPO_MPI_ARGUMENTS

SB3_PROGRAM = """
import sys
import torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize
env_id, steps, seed, max_grad_norm, out = sys.argv[1], *map(int, sys.argv[2:4]), float(sys.argv[4]), sys.argv[5]
env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), norm_obs=True, norm_reward=False, clip_obs=10.0)
model = PPO("MlpPolicy", env, n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99,
            gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=max_grad_norm, seed=seed,
            device="cpu")
model.set_logger(configure(out, ["csv"]))
model.learn(total_timesteps=steps)
"""
WINDOWS = ((1, 8), (8, 24), (24, 48))  # iterations [start, end) after the first update


def run_gpo_mpi(steps: int, seed: int, out: Path, reuse: bool) -> dict:
    arguments = GPO_MPI_ARGUMENTS.format(env=ENV, steps=steps, seed=seed).split()
    if not reuse:
        subprocess.run([sys.executable, "-m", "gpo_mpi", *arguments, "--out", str(out / "gpo-mpi.h5"), "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with h5py.File(out / "gpo-mpi.h5") as run_file:
        return dict(clip_fraction=run_file["iterations/clip_fraction"][:, 0],
                    approx_kl=run_file["iterations/approx_kl"][:, 0],
                    training_return=run_file["iterations/member_return"][:, 0])


def run_sb3(steps: int, seed: int, out: Path, max_grad_norm: float, reuse: bool) -> dict:
    if not reuse:
        subprocess.run([sys.executable, "-c", SB3_PROGRAM, ENV, str(steps), str(seed), str(max_grad_norm), str(out)],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = list(csv.DictReader(open(out / "progress.csv")))
    column = {name: np.array([float(row[key]) if row.get(key) else np.nan for row in rows])
              for name, key in (("clip_fraction", "train/clip_fraction"), ("approx_kl", "train/approx_kl"),
                                ("training_return", "rollout/ep_rew_mean"))}
    # row i: the return after rollout i (as gpo-mpi's), and the statistics of update i - 1 (SB3 logs before it
    # trains): shifted so that index i is update i in both
    return dict(training_return=column["training_return"], clip_fraction=column["clip_fraction"][1:],
                approx_kl=column["approx_kl"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ppo-clip-diagnostics")
    parser.add_argument("--reuse", action="store_true", help="read the runs already in --out instead of running")
    args = parser.parse_args()
    steps = args.steps // BATCH * BATCH
    learners = {"gpo-mpi ppo-clip": lambda out: run_gpo_mpi(steps, args.seed, out, args.reuse),
                "SB3 PPO": lambda out: run_sb3(steps, args.seed, out, 0.5, args.reuse),
                "SB3 PPO, max_grad_norm off": lambda out: run_sb3(steps, args.seed, out, 1e9, args.reuse)}
    print("| learner | iterations | clip fraction | approximate KL | training return |\n|---|---|---|---|---|")
    for index, (name, run) in enumerate(learners.items()):
        out = Path(args.out) / str(index)
        out.mkdir(parents=True, exist_ok=True)
        columns = run(out)
        for start, end in WINDOWS:
            if end <= len(columns["clip_fraction"]):
                print(f"| {name} | {start + 1} to {end} | " + " | ".join(
                    f"{np.nanmean(columns[key][start:end]):.3g}" for key in
                    ("clip_fraction", "approx_kl", "training_return")) + " |", flush=True)


if __name__ == "__main__":
    main()
