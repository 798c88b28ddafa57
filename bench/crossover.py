"""State-space against parameter-space crossover on a real task (the paper's Figure 3a).

    python bench/crossover.py [--train-steps 800000] [--episodes 20] [--out docs/crossover-hopper]
    python bench/crossover.py --parents runs/crossover-parents.h5     # reuse trained parents

Trains a population of 8 briefly and independently (`gpo-mpi --algo single`
on 2 ranks), takes the 8 fittest distinct couples by final return, and
breeds one child per couple both ways: by imitation in state space (the
paper's operator, with its defaults) and by copying every layer from a
random parent. Each parent and child is then rolled out for `--episodes`
whole episodes; a child's return is reported normalized to its first parent
(the fitter one). Writes PREFIX.md (table) and PREFIX.png (bar plot).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch

from gpo_mpi import select, tools
from gpo_mpi.evaluate import episode_returns
from gpo_mpi.networks import GaussianPolicy
from gpo_mpi.rollout import EnvSpec

torch.set_num_threads(1)


def plot(rows: list[dict], out_png: Path, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.bar(positions - 0.2, [r["state_child"] / r["first"] for r in rows], width=0.4, label="state-space child")
    axes.bar(positions + 0.2, [r["parameter_child"] / r["first"] for r in rows], width=0.4,
             label="parameter-space child")
    axes.axhline(1.0, color="black", linewidth=1, linestyle="--", label="first (fitter) parent")
    axes.set_xticks(positions, [f"{r['pair'][0]}x{r['pair'][1]}" for r in rows])
    axes.set_xlabel("couple (first parent x second parent)")
    axes.set_ylabel("child's mean return / first parent's")
    axes.set_title(f"{env_id}: crossover of {len(rows)} couples")
    axes.legend(loc="lower right")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", type=Path, help="run file of trained parents (else train them)")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--train-steps", type=int, default=800_000, help="steps of the whole population of 8")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/crossover-hopper"))
    args = parser.parse_args()

    parents_file = args.parents
    if parents_file is None:
        parents_file = Path("runs/crossover-parents.h5")
        parents_file.parent.mkdir(exist_ok=True)
        command = ["mpiexec", "-n", "2", "gpo-mpi", "--algo", "single", "--population", "8", "--env", args.env,
                   "--total-steps", str(args.train_steps), "--seed", str(args.seed), "--out", str(parents_file),
                   "--overwrite"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    run = tools.load_run(str(parents_file))
    config, policies, final_returns = run.config, run.policies, run.final_returns
    pairs = select.fittest_pairs(select.performance_fitness(final_returns), 8)
    pairs = np.where((final_returns[pairs[:, 0]] >= final_returns[pairs[:, 1]])[:, None], pairs, pairs[:, ::-1])

    def evaluate(policy: GaussianPolicy) -> float:
        return float(episode_returns(policy, run.normalizer, EnvSpec.of(config), args.episodes,
                                     seed=args.seed + 10_000).mean())

    parent_returns = {member: evaluate(policies[member]) for member in np.unique(pairs)}
    rows = []
    for index, (first, second) in enumerate(pairs):
        state_child, parameter_child = tools.breed_couple(run, first, second, seed=args.seed + 100 * index)
        rows.append(dict(pair=(int(first), int(second)), first=parent_returns[first],
                         second=parent_returns[second], state_child=evaluate(state_child),
                         parameter_child=evaluate(parameter_child)))
        print(rows[-1], flush=True)

    lines = [f"{config.env}: parents trained by `gpo-mpi --algo single --population 8 --total-steps "
             f"{config.total_steps}` (seed {config.seed}); every policy evaluated over {args.episodes} "
             "episodes with sampled actions.", "",
             "| couple | first parent | second parent | state-space child | parameter-space child | "
             "state / first | parameter / first |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair'][0]} x {r['pair'][1]} | {r['first']:.0f} | {r['second']:.0f} | "
                     f"{r['state_child']:.0f} | {r['parameter_child']:.0f} | {r['state_child'] / r['first']:.2f} | "
                     f"{r['parameter_child'] / r['first']:.2f} |")
    state_ratio = np.mean([r["state_child"] / r["first"] for r in rows])
    parameter_ratio = np.mean([r["parameter_child"] / r["first"] for r in rows])
    kept = sum(r["state_child"] >= 0.9 * r["first"] for r in rows)
    lines += ["", f"Mean child / first parent: state-space {state_ratio:.2f}, parameter-space {parameter_ratio:.2f}. "
              f"State-space children within 10% of their first parent or better: {kept} of {len(rows)}."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(rows, args.out.with_suffix(".png"), config.env)


if __name__ == "__main__":
    main()
