"""Environment steps per second on one core, as whole processes: gpo-mpi's engine against SB3's PPO.

    python bench/throughput.py [--iterations 20] [--repeats 3] [--env Hopper-v5] [--out docs/bench-throughput.md]

Each learner runs as a process of its own, pinned to one core, with one
torch thread, and is timed from its start to its exit (imports, set-up,
sampling, updates, writing its results), over the same number of PPO
iterations of 2,048 steps with 10 policy epochs. `--repeats` processes of
each, taken in turns, so that a change in the machine's speed hits every
learner alike; the table gives the median and the range. The learners:
- gpo-mpi, the command users run, `--algo single --population 1` (one
  member, no MPI traffic) with its defaults (full-batch PPO as in the
  paper, 4 environments side by side), and with `--preset minibatch` (10
  epochs of minibatch 64 like SB3's); `--eval-episodes 0`, because SB3's
  `learn` has no final evaluation either;
- Stable-Baselines3 PPO with n_steps=2048, batch_size=64, n_epochs=10;
- the environment alone, one copy stepped with a torch MLP forward per
  step, timed inside its process: the ceiling of a plain one-environment
  sampler.
Needs `pip install stable-baselines3` (the `bench` extra).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from common import git_commit

SB3_PROGRAM = """
import sys
import torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
PPO("MlpPolicy", sys.argv[1], n_steps=2048, batch_size=64, n_epochs=10, device="cpu", seed=0,
    verbose=0).learn(total_timesteps=int(sys.argv[2]))
"""

CEILING_PROGRAM = """
import sys, time
import gymnasium as gym
import torch
torch.set_num_threads(1)
env = gym.make(sys.argv[1])
obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
net = torch.nn.Sequential(torch.nn.Linear(obs_dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                          torch.nn.Tanh(), torch.nn.Linear(64, act_dim))
steps = int(sys.argv[2])
obs, _ = env.reset(seed=0)
start = time.perf_counter()
with torch.no_grad():
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(net(torch.as_tensor(obs, dtype=torch.float32)).numpy())
        if terminated or truncated:
            obs, _ = env.reset()
print(steps / (time.perf_counter() - start))
"""


def one_core() -> int:
    """The last core this process may run on: the learners' processes are pinned to it."""
    return max(os.sched_getaffinity(0))


def timed_process(command: list[str]) -> tuple[float, str]:
    """(seconds from start to exit, stdout) of a command pinned to one core with one thread."""
    core = one_core()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def gpo_mpi_command(env_id: str, steps: int, out: str, preset: str | None) -> list[str]:
    command = [os.path.join(os.path.dirname(sys.executable), "gpo-mpi"), "--env", env_id, "--algo", "single",
               "--population", "1", "--total-steps", str(steps), "--eval-episodes", "0", "--out", out,
               "--overwrite"]
    return command + (["--preset", preset] if preset else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--iterations", type=int, default=20, help="PPO iterations of 2,048 steps for each learner")
    parser.add_argument("--repeats", type=int, default=3, help="processes of each learner")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    import gymnasium as gym
    import torch

    steps = 2048 * args.iterations
    rates: dict[str, list[float]] = {name: [] for name in ("defaults", "minibatch", "sb3", "ceiling")}
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "bench.h5")
        for _ in range(args.repeats):
            for name, preset in (("defaults", None), ("minibatch", "minibatch")):
                seconds, _ = timed_process(gpo_mpi_command(args.env, steps, out, preset))
                rates[name].append(steps / seconds)
            seconds, _ = timed_process([sys.executable, "-c", SB3_PROGRAM, args.env, str(steps)])
            rates["sb3"].append(steps / seconds)
            _, printed = timed_process([sys.executable, "-c", CEILING_PROGRAM, args.env, str(steps)])
            rates["ceiling"].append(float(printed))
    median = {name: statistics.median(values) for name, values in rates.items()}

    def cells(name: str) -> str:
        low, high = min(rates[name]), max(rates[name])
        return (f"{median[name]:,.0f} ({low:,.0f} to {high:,.0f}) | {median[name] / median['sb3']:.2f}x | "
                f"{median[name] / median['ceiling']:.0%}")

    ratio, ratio_minibatch = median["defaults"] / median["sb3"], median["minibatch"] / median["sb3"]
    lines = [
        f"{args.env}, {args.iterations} iterations of 2,048 steps; each learner a whole process (start to exit) "
        f"on one core with one torch thread, {args.repeats} processes each, median (range); "
        f"{platform.machine()}, torch {torch.__version__}, gymnasium {gym.__version__}",
        "",
        "| learner | env steps/s | vs SB3 PPO | vs env-only ceiling |",
        "|---|---|---|---|",
        f"| gpo-mpi defaults (full-batch PPO, 4 envs) | {cells('defaults')} |",
        f"| gpo-mpi --preset minibatch (10 epochs x minibatch 64, 4 envs) | {cells('minibatch')} |",
        f"| Stable-Baselines3 PPO (10 epochs x minibatch 64) | {cells('sb3')} |",
        f"| environment alone + torch MLP forward per step (the stepping loop only) | {cells('ceiling')} |",
        "",
        f"Target: at least 3x SB3 (aim 5x): {'met' if ratio >= 3 else 'MISSED'} with the defaults "
        f"({ratio:.2f}x); like for like, minibatch against minibatch: {ratio_minibatch:.2f}x.",
        "",
        f"Measured at commit {git_commit()} (`python bench/throughput.py --out docs/bench-throughput.md`).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
