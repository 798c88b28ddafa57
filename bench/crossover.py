"""State-space against parameter-space crossover on a real task (the paper's Figure 3a),
and what state-space crossover's training settings cost against what they give.

    python bench/crossover.py [--train-steps 800000] [--episodes 20] [--out docs/crossover-hopper]
    python bench/crossover.py --parents runs/crossover-parents.h5     # reuse trained parents

Trains a population of 8 briefly and independently (`gpo-mpi --algo single`
on 2 ranks), takes the 8 fittest distinct couples by final return, and
breeds one child per couple both ways: by imitation in state space (with
the parents' run's crossover settings) and by copying every layer from a random parent. Each
parent and child is then rolled out for `--episodes` whole episodes; a
child's return is reported normalized to its first parent (the fitter one).
Writes PREFIX.md (table) and PREFIX.png (bar plot).

Then every couple is bred again in state space under each of SETTINGS (the
paper's minibatch of 64 and 100 selector epochs among them), each child
timed (the crossover alone: selector, rollouts, DAgger; one thread) and
evaluated like the others: PREFIX-settings.md/.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from common import git_commit, write_table
from gpo_mpi import crossover, saved, select, tools
from gpo_mpi.evaluate import episode_returns
from gpo_mpi.networks import GaussianPolicy
from gpo_mpi.rollout import EnvSpec

torch.set_num_threads(1)

# State-space crossover's training settings, as config fields over the parents' run's own; each names
# every training field it was measured with (minibatch, selector learning rate, epochs and patience,
# DAgger epochs), so that a setting means the same whatever the parents' run used.
PAPER_SELECTOR = dict(selector_lr=5e-4, selector_epochs=100)
MINIBATCH_512 = dict(crossover_minibatch=512, selector_patience=5)
SETTINGS = {
    "paper: minibatch 64, 100 selector epochs": dict(PAPER_SELECTOR, crossover_minibatch=64, selector_patience=0,
                                                     dagger_epochs=10),
    "minibatch 256": dict(PAPER_SELECTOR, crossover_minibatch=256, selector_patience=0, dagger_epochs=10),
    "minibatch 256, selector patience 5": dict(PAPER_SELECTOR, crossover_minibatch=256, selector_patience=5,
                                               dagger_epochs=10),
    "minibatch 256, selector patience 5, 5 DAgger epochs": dict(PAPER_SELECTOR, crossover_minibatch=256,
                                                                selector_patience=5, dagger_epochs=5),
    "minibatch 512, selector patience 5": dict(PAPER_SELECTOR, crossover_minibatch=512, selector_patience=5,
                                               dagger_epochs=10),
    "minibatch 512, selector patience 5, 5 DAgger epochs": dict(PAPER_SELECTOR, crossover_minibatch=512,
                                                                selector_patience=5, dagger_epochs=5),
    "minibatch 512, selector patience 5, 5 DAgger epochs, learning rates x2": dict(
        PAPER_SELECTOR, crossover_minibatch=512, selector_patience=5, dagger_epochs=5, selector_lr=1e-3,
        dagger_lr=1e-3),
    "minibatch 1024, selector patience 5, 3 DAgger epochs, learning rates x2": dict(
        PAPER_SELECTOR, crossover_minibatch=1024, selector_patience=5, dagger_epochs=3, selector_lr=1e-3,
        dagger_lr=1e-3),
    # The selector's learning rate and epochs, and DAgger's epochs (docs/crossover-selector.md): at
    # 5e-4 the selector's held-out loss still falls at epoch 100, so patience never stops it.
    "selector 5e-4 up to 100 epochs, 5 DAgger epochs": dict(MINIBATCH_512, selector_lr=5e-4, selector_epochs=100,
                                                            dagger_epochs=5),
    "selector 2e-3 up to 30 epochs, 5 DAgger epochs": dict(MINIBATCH_512, selector_lr=2e-3, selector_epochs=30,
                                                           dagger_epochs=5),
    "selector 2e-3 up to 20 epochs, 5 DAgger epochs": dict(MINIBATCH_512, selector_lr=2e-3, selector_epochs=20,
                                                           dagger_epochs=5),
    "selector 2e-3 up to 30 epochs, 3 DAgger epochs": dict(MINIBATCH_512, selector_lr=2e-3, selector_epochs=30,
                                                           dagger_epochs=3),
}


def timed_crossovers() -> list[float]:
    """Wrap crossover.state_space_crossover so that each call's wall time is appended to the list returned."""
    seconds, operator = [], crossover.state_space_crossover

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return operator(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    crossover.state_space_crossover = timed
    return seconds


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
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
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

    run = saved.load_run(str(parents_file))
    config, policies, final_returns = run.config, run.policies, run.final_returns
    pairs = select.fittest_pairs(select.performance_fitness(final_returns), 8)
    pairs = np.where((final_returns[pairs[:, 0]] >= final_returns[pairs[:, 1]])[:, None], pairs, pairs[:, ::-1])

    def evaluate(policy: GaussianPolicy) -> float:
        return float(episode_returns(policy, run.normalizer, EnvSpec.of(config), args.episodes,
                                     seed=args.seed + 10_000).mean())

    parent_returns = {member: evaluate(policies[member]) for member in np.unique(pairs)}
    crossover_seconds = timed_crossovers()
    rows = []
    for index, (first, second) in enumerate(pairs):
        state_child, parameter_child = tools.breed_couple(run, first, second, seed=args.seed + 100 * index)
        rows.append(dict(pair=(int(first), int(second)), first=parent_returns[first],
                         second=parent_returns[second], state_child=evaluate(state_child),
                         parameter_child=evaluate(parameter_child)))
        print(rows[-1], flush=True)
    default_seconds = float(np.mean(crossover_seconds))

    setting_rows = []
    for name in args.settings:
        config_of_setting = dataclasses.replace(config, **SETTINGS[name])
        crossover_seconds.clear()
        ratios = []
        for index, (first, second) in enumerate(pairs):
            state_child, _ = tools.breed_couple(run, first, second, seed=args.seed + 100 * index,
                                                config=config_of_setting)
            ratios.append(evaluate(state_child) / parent_returns[first])
        setting_rows.append([name, f"{np.mean(crossover_seconds):.2f}", f"{np.mean(ratios):.2f}",
                             f"{np.std(ratios, ddof=1) / np.sqrt(len(ratios)):.2f}",
                             f"{sum(r >= 0.9 for r in ratios)} of {len(ratios)}"])
        print(setting_rows[-1], flush=True)

    lines = [f"{config.env}: parents trained by `gpo-mpi --algo {config.algo} --population {config.population} "
             f"--total-steps {config.total_steps}` (seed {config.seed}); every policy evaluated over {args.episodes} "
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
              f"State-space children within 10% of their first parent or better: {kept} of {len(rows)}. "
              f"A state-space crossover took {default_seconds:.1f} s. Commit {git_commit()}."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(rows, args.out.with_suffix(".png"), config.env)

    header = ["setting", "s per child", "child / first parent", "standard error", "children >= 0.9 x first parent"]
    notes = [f"{config.env}, the {len(pairs)} couples above, each child bred once per setting with the same seed "
             f"and evaluated over {args.episodes} episodes with sampled actions. s per child: the state-space "
             "crossover alone (selector, 5,000 expert and 5,000 DAgger steps, DAgger's training), one thread, "
             f"mean over the couples. Settings (config fields over the parents' run's): "
             + "; ".join(f"{name}: `{SETTINGS[name]}`" for name in args.settings) + f". Commit {git_commit()}."]
    print(write_table(args.out.with_name(args.out.name + "-settings"), header, setting_rows, notes))


if __name__ == "__main__":
    main()
