"""gpo-mpi's PPO-clip mutation against Stable-Baselines3's PPO on Hopper-v5, at the same budget and settings.

    python bench/ppo_clip_hopper.py [--seeds 0 1] [--iterations 488] [--parallel 2]

One policy learns for 488 iterations of 2,048 steps (999,424 steps) in each learner: gpo-mpi as users run
it (`--algo single --population 1 --mutation ppo-clip`, one process) and SB3's `PPO("MlpPolicy")`, both
with one environment, 10 epochs of minibatches of 64, learning rate 3e-4 for policy and critic, clip range
0.2, gamma 0.99, GAE lambda 0.95, gradient norms clipped at 0.5, tanh networks of 64 x 64 for the policy
and the critic, no entropy bonus, and observations normalized by running statistics clipped at 10 (SB3:
VecNormalize without reward normalization). What differs is each library's own: gpo-mpi standardizes
advantages over the batch and gives policy and critic an Adam each, SB3 standardizes them per minibatch and
steps one Adam on the policy loss plus half the value loss.

The figure of merit is each run's final policy evaluated with its mean action on 10 episodes (seeds no
training episode used), with the mean return of its last 10 training episodes beside it. Each run's
summary goes to bench/results/ppo-clip-hopper/ as it finishes (runs already summarized are skipped); the
table of all summaries is printed at the end. Needs stable-baselines3 (the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from common import git_commit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "ppo-clip-hopper"
ENV, BATCH, EVAL_EPISODES, EVAL_SEED = "Hopper-v5", 2048, 10, 1_000_000

GPO_MPI_ARGUMENTS = ("--env {env} --algo single --population 1 --mutation ppo-clip --clip-range 0.2 --n-envs 1 "
                     "--batch-steps 2048 --minibatch 64 --policy-epochs 10 --critic-epochs 10 --policy-lr 3e-4 "
                     "--critic-lr 3e-4 --policy-hidden 64 64 --critic-hidden 64 64 --gamma 0.99 --gae-lambda 0.95 "
                     "--max-grad-norm 0.5 --obs-clip 10 --eval-episodes 10 --total-steps {steps} --seed {seed}")

SB3_PROGRAM = """
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize
env_id, (steps, seed, episodes, eval_seed) = sys.argv[1], map(int, sys.argv[2:6])
start = time.perf_counter()
env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), norm_obs=True, norm_reward=False, clip_obs=10.0)
model = PPO("MlpPolicy", env, n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99,
            gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu",
            verbose=0)
model.learn(total_timesteps=steps)
training = [info["r"] for info in list(model.ep_info_buffer)[-10:]]
evaluation_env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=eval_seed), training=False, norm_obs=True,
                              norm_reward=False, clip_obs=10.0)
evaluation_env.obs_rms = env.obs_rms
returns, _ = evaluate_policy(model, evaluation_env, n_eval_episodes=episodes, deterministic=True,
                             return_episode_rewards=True)
print(json.dumps(dict(evaluation_returns=[float(r) for r in returns], training_return=float(np.mean(training)),
                      steps=int(model.num_timesteps), wall_time=time.perf_counter() - start)))
"""


def run_gpo_mpi(seed: int, steps: int, scratch: Path) -> dict:
    out = scratch / f"gpo-mpi-s{seed}.h5"
    arguments = GPO_MPI_ARGUMENTS.format(env=ENV, steps=steps, seed=seed).split()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gpo_mpi", *arguments, "--out", str(out), "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall_time = time.perf_counter() - start
    with h5py.File(out) as run_file:
        return dict(evaluation_returns=run_file["final/eval_returns"][0].tolist(),
                    training_return=float(run_file["iterations/member_return"][-1, 0]),
                    steps=int(run_file["iterations/env_steps"][-1]), wall_time=wall_time,
                    clip_fraction=float(np.mean(run_file["iterations/clip_fraction"][-10:])))


def run_sb3(seed: int, steps: int, scratch: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", SB3_PROGRAM, ENV, str(steps), str(seed), str(EVAL_EPISODES),
                             str(EVAL_SEED)], check=True, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


LEARNERS = {"gpo-mpi": run_gpo_mpi, "sb3": run_sb3}


def run_one(learner: str, seed: int, steps: int, scratch: Path) -> Path:
    summary_path = RESULTS / f"{learner}-s{seed}.json"
    loads = [os.getloadavg()[0]]
    result = LEARNERS[learner](seed, steps, scratch)
    loads.append(os.getloadavg()[0])
    summary = dict(learner=learner, seed=seed, env=ENV, commit=git_commit(), load_average=float(np.mean(loads)),
                   evaluation_mean=float(np.mean(result["evaluation_returns"])), **result)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{learner} seed {seed}: evaluation {summary['evaluation_mean']:.0f}, "
          f"training {result['training_return']:.0f}, {result['wall_time'] / 60:.0f} min", flush=True)
    return summary_path


def table() -> str:
    summaries = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    lines = ["| learner | seeds | evaluation, mean (each seed) | last 10 training episodes, mean | wall time, min |",
             "|---|---|---|---|---|"]
    for learner in LEARNERS:
        runs = [s for s in summaries if s["learner"] == learner]
        if not runs:
            continue
        each = ", ".join(f"{s['evaluation_mean']:,.0f}" for s in runs)
        lines.append(f"| {learner} | {len(runs)} | {np.mean([s['evaluation_mean'] for s in runs]):,.0f} ({each}) | "
                     f"{np.mean([s['training_return'] for s in runs]):,.0f} | "
                     f"{np.mean([s['wall_time'] for s in runs]) / 60:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--iterations", type=int, default=488, help="of 2,048 steps (default 488: 999,424 steps)")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (default 2)")
    parser.add_argument("--scratch", default="runs/ppo-clip-hopper", help="where gpo-mpi's run files go")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    todo = [(learner, seed) for seed in args.seeds for learner in LEARNERS
            if not (RESULTS / f"{learner}-s{seed}.json").exists()]
    with ThreadPoolExecutor(args.parallel) as pool:
        for done in [pool.submit(run_one, learner, seed, args.iterations * BATCH, scratch) for learner, seed in todo]:
            done.result()
    print(table())


if __name__ == "__main__":
    main()
