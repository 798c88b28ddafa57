"""`gpo-mpi plot RUN.h5...`: figures (PNG, PDF or SVG) of one run or of several.

- curves:  one run: every member's return in its own colour, the best member,
           crossover phases shaded, and for GPO with data sharing a panel with
           mean |S_i| and effective sample size; several runs: one panel per
           environment, the best member's return averaged over the seeds of each
           algorithm with a standard-error band
- kl:      the KL matrix KL[pi_i || pi_j] of every round as a log-scale heatmap,
           share_epsilon marked, the share sets drawn (gpo)
- family:  who bred whom: member slots by round, an edge from each parent to
           its child, nodes coloured by return (gpo)
- states:  the paper's Figure 3b: the two best members of the finished run are
           bred both ways, and the states the parents and the two children visit
           are projected to 2-D with t-SNE (needs scikit-learn)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import select
from .config import ConfigError
from .paths import ensure_output_directory
from .runfile import open_run, stored_config
from .saved import load_run
from .tools import breed_couple

FIGURES = ("curves", "kl", "family", "states")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("gpo-mpi plot needs matplotlib: pip install 'gpo-mpi[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# What tells runs of one study apart, and what does not make them different algorithms.
_NOT_THE_ALGORITHM = {"env", "env_kwargs", "seed", "out", "tensorboard", "checkpoint_every", "eval_every",
                      "eval_episodes", "periodic_eval_episodes", "init_from", "algo", "components", "population",
                      "total_steps", "rounds"}


def _group_label(config) -> str:
    """What a run is, for grouping its seeds: the algorithm, GPO's components where some are off, a
    preset whose fields it has, and any other field off its default ("gpo paper-literal")."""
    from dataclasses import fields

    from .config import PRESETS, RunConfig, applies_to

    def normal(name, value):  # a share_max of all the others or more is no limit, as 0 is
        return 0 if name == "share_max" and value >= config.population - 1 else value
    label = config.algo + (f" {config.components or 'base'}" if config.algo == "gpo" and
                           config.components != "CSM" else "")
    defaults = RunConfig()
    changed = {f.name for f in fields(config) if f.name not in _NOT_THE_ALGORITHM
               and normal(f.name, getattr(config, f.name)) != normal(f.name, getattr(defaults, f.name))
               and applies_to(f.name, config.algo)}
    for name, preset in PRESETS.items():
        if changed & set(preset) and all(normal(k, getattr(config, k)) == normal(k, v) for k, v in preset.items()):
            label += f" {name}"
            changed -= set(preset)
    return label + "".join(f" {name}={getattr(config, name)}" for name in sorted(changed))


def _sharing_record(path: str) -> tuple | None:
    """(steps, mean |S_i|, mean effective sample size in batches) of a GPO run with data sharing, else None."""
    with open_run(path) as run_file:
        config = stored_config(run_file)
        if not config.has("M") or "iterations/share_set_size" not in run_file:
            return None
        return (run_file["iterations/env_steps"][()], run_file["iterations/share_set_size"][()].mean(axis=1),
                run_file["iterations/effective_sample_size"][()].mean(axis=1) / config.batch_steps)


def _curves(path: str) -> tuple:
    """(config, steps, member returns, rounds) of a run, refusing one without a finished iteration."""
    with open_run(path) as run_file:
        config = stored_config(run_file)
        steps, returns = run_file["iterations/env_steps"][()], run_file["iterations/member_return"][()]
        rounds = run_file["iterations/round"][()]
    if not len(steps):
        raise ConfigError(f"{path} has no finished iteration to plot")
    return config, steps, returns, rounds


def best_member_curve(returns: np.ndarray) -> np.ndarray:
    """The best member's return at each iteration (NaN before any member finished an episode)."""
    best = np.where(np.isfinite(returns), returns, -np.inf).max(axis=1)
    best[np.isinf(best)] = np.nan
    return best


def seed_band(runs: list[tuple[np.ndarray, np.ndarray]], points: int = 200) -> tuple:
    """Mean and standard error over runs of (steps, curve), on a common grid of steps that every run reached."""
    end = min(steps[-1] for steps, _ in runs)
    start = max(steps[np.isfinite(curve)][0] if np.isfinite(curve).any() else end for steps, curve in runs)
    grid = np.linspace(start, end, points)
    curves = np.array([np.interp(grid, steps[np.isfinite(curve)], curve[np.isfinite(curve)]) for steps, curve in runs])
    error = curves.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros(points)
    return grid, curves.mean(axis=0), error


def learning_curves(paths: list[str]):
    """One run: every member in its own colour, the best member, crossover phases shaded. Several
    runs: one panel per environment, the best member's return averaged over the seeds of each
    algorithm (band: standard error)."""
    plt = _pyplot()
    loaded = {path: _curves(path) for path in paths}
    if len(paths) == 1:
        return _one_run_curves(plt, paths[0], *loaded[paths[0]])
    environments = sorted({config.env for config, *_ in loaded.values()})
    figure, axes = plt.subplots(1, len(environments), figsize=(6 * len(environments), 4.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = sorted({_group_label(config) for config, *_ in loaded.values()})
    for env, ax in zip(environments, axes[0]):
        for index, group in enumerate(groups):
            runs = [(steps, best_member_curve(returns)) for config, steps, returns, _ in loaded.values()
                    if config.env == env and _group_label(config) == group]
            if not runs:
                continue
            grid, mean, error = seed_band(runs)
            colour = colours[index % len(colours)]
            ax.plot(grid, mean, color=colour, linewidth=2, label=f"{group} ({len(runs)} seed(s))")
            ax.fill_between(grid, mean - error, mean + error, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(env)
        ax.set_xlabel("environment steps (crossover included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("best member: mean of its last 10 training returns")
    figure.suptitle("best member's return, mean over seeds ± standard error", fontsize=10)
    figure.tight_layout()
    return figure


def _one_run_curves(plt, path, config, steps, returns, rounds):
    sharing = _sharing_record(path)
    if sharing is None:
        figure, axes = plt.subplots(figsize=(8, 4.5))
    else:
        figure, (axes, sharing_axes) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                                    gridspec_kw=dict(height_ratios=(3, 1.3)))
    member_colours = plt.get_cmap("tab10" if returns.shape[1] <= 10 else "viridis")
    for member, member_returns in enumerate(returns.T):
        colour = member_colours(member if returns.shape[1] <= 10 else member / (returns.shape[1] - 1))
        axes.plot(steps, member_returns, color=colour, linewidth=0.8, alpha=0.6,
                  label=f"member {member}" if returns.shape[1] <= 10 else None)
    axes.plot(steps, best_member_curve(returns), color="black", linewidth=2, label="best member")
    with open_run(path) as run_file:  # evaluations during training (eval_every), when the run made any
        if "evaluations/env_steps" in run_file and len(run_file["evaluations/env_steps"]):
            evaluation_means = np.nanmean(run_file["evaluations/returns"][()], axis=2)  # NaN: periodic_eval_episodes
            axes.plot(run_file["evaluations/env_steps"][()], evaluation_means.max(axis=1), color="black",
                      marker="o", linestyle="--", linewidth=1, label="best member, evaluated (mean action)")
    # Between a round's last iteration and the next one's first: selection and crossover.
    for boundary in np.flatnonzero(np.diff(rounds)):
        axes.axvspan(steps[boundary], steps[boundary + 1], color="grey", alpha=0.2, linewidth=0,
                     label="crossover" if boundary == np.flatnonzero(np.diff(rounds))[0] else None)
    axes.set_xlabel("environment steps (whole population, crossover included)")
    if sharing is not None:
        steps, set_sizes, sample_sizes = sharing
        sharing_axes.plot(steps, set_sizes, color="black", linewidth=1.2, label="mean |S_i| (itself included)")
        sharing_axes.plot(steps, sample_sizes, color="tab:orange", linewidth=1.2,
                          label="effective sample size (batches)")
        sharing_axes.set_ylim(bottom=0)
        sharing_axes.set_xlabel(axes.get_xlabel())
        axes.set_xlabel("")
        sharing_axes.set_ylabel("data sharing")
        sharing_axes.grid(alpha=0.3)
        sharing_axes.legend(fontsize=8, loc="best")
    axes.set_ylabel("mean return of the last 10 training episodes")
    axes.set_title(f"{Path(path).stem} ({config.algo} on {config.env}, m={config.n_policies})", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best", ncol=2)
    figure.tight_layout()
    return figure


def _slot_ticks(ax, m: int) -> None:
    """Integer ticks for member slots, sparse enough for 32."""
    ticks = np.arange(0, m, max(1, m // 8))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)


def kl_heatmaps(path: str):
    """KL[pi_i || pi_j] of every round's start on a log scale, share_epsilon marked on the colour bar and
    the share sets chosen from it (dots: j in S_i)."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    from .sharing import share_sets
    with open_run(path) as run_file:
        config = stored_config(run_file)
        kl = run_file["rounds/kl_matrix"][()]
    if not len(kl):
        raise ConfigError(f"{path} has no KL matrix: only gpo runs measure one")
    m = kl.shape[1]
    off_diagonal = kl[:, ~np.eye(m, dtype=bool)]
    positive = off_diagonal[off_diagonal > 0]
    low = max(float(positive.min()), 1e-8) if len(positive) else 1e-8
    high = max(float(np.nanmax(kl)), low * 10)
    columns = min(len(kl), 4)
    rows = -(-len(kl) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns + 1.2, 3.1 * rows + 0.4), squeeze=False)
    epsilon = config.share_epsilon if config.has("M") else -np.inf
    for round_index, ax in enumerate(axes.flat):
        if round_index >= len(kl):
            ax.axis("off")
            continue
        shown = np.where(np.eye(m, dtype=bool), np.nan, np.clip(kl[round_index], low, None))
        image = ax.imshow(shown, norm=LogNorm(vmin=low, vmax=high), cmap="viridis")
        sets = share_sets(kl[round_index], epsilon, config.share_max)
        sharing = [(j, i) for i, chosen in enumerate(sets) for j in chosen if j != i]
        if sharing:
            ax.scatter(*zip(*sharing), s=max(4, 200 // m), color="white", edgecolors="black", linewidths=0.5)
        ax.set_title(f"round {round_index + 1}", fontsize=9)
        ax.set_xlabel("j")
        ax.set_ylabel("i")
        _slot_ticks(ax, m)
    bar = figure.colorbar(image, ax=axes.ravel().tolist(), label="KL[pi_i || pi_j] (nats, log scale)")
    if np.isfinite(epsilon) and low < epsilon < high:
        bar.ax.axhline(epsilon, color="red", linewidth=2)
        bar.ax.text(1.6, epsilon, "share_epsilon", color="red", fontsize=7, va="center",
                    transform=bar.ax.get_yaxis_transform())
    figure.suptitle(f"{Path(path).stem}: KL between members at each round's start (dots: j in S_i)", fontsize=10)
    return figure


def family_tree(path: str):
    """The `family` figure: member slots by generation coloured by return, an edge from each
    parent to its child (solid from the fitter one); returns the figure."""
    plt = _pyplot()
    with open_run(path) as run_file:
        pairs = run_file["breeding/parent_pairs"][()]
        returns_before = run_file["breeding/member_return_before"][()]
        fitter_parents = (run_file["breeding/fitter_parent"][()] if "breeding/fitter_parent" in run_file
                          else np.full(pairs.shape[:2], -1))
        final_returns = run_file["iterations/member_return"][-1] if len(run_file["iterations/env_steps"]) else None
    if not len(pairs):
        raise ConfigError(f"{path} has no breeding record: only gpo runs with more than one round breed")
    generations = list(returns_before) + ([final_returns] if final_returns is not None else [])
    population = pairs.shape[1]
    figure, axes = plt.subplots(figsize=(3 + 1.6 * len(generations), 2 + 0.35 * population))
    for breeding, generation_pairs in enumerate(pairs):
        fitter = fitter_parents[breeding]
        if (fitter < 0).any():  # not recorded (an older run file): the engine's rule
            fitter = select.fitter_parents(generation_pairs, returns_before[breeding])
        for child, (x, y) in enumerate(generation_pairs):
            for parent in (x, y):
                axes.plot([breeding, breeding + 1], [parent, child], color="black",
                          linewidth=1.4 if parent == fitter[child] else 0.6,
                          linestyle="-" if parent == fitter[child] else "--", alpha=0.7, zorder=1)
    values = np.array(generations, dtype=float)
    finite = values[np.isfinite(values)]
    lowest, highest = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    for generation, generation_returns in enumerate(values):
        points = axes.scatter(np.full(population, generation), np.arange(population), c=generation_returns,
                              cmap="plasma", vmin=lowest, vmax=highest, s=min(160, 1600 // population),
                              edgecolors="black", zorder=2)
    figure.colorbar(points, ax=axes, label="member's return at the end of the round")
    axes.set_xticks(range(len(generations)), [f"round {g + 1}" for g in range(len(generations))])
    axes.set_yticks(np.arange(0, population, max(1, population // 8)))
    axes.set_ylim(population - 0.5, -0.5)
    axes.set_ylabel("member slot")
    axes.set_title(f"{Path(path).stem}: who bred whom (solid: fitter parent, whose networks the child starts from)",
                   fontsize=9)
    figure.tight_layout()
    return figure


def state_visitation(path: str, steps: int, seed: int):
    """Figure 3b; returns it with a line on each policy's episodes."""
    plt = _pyplot()
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("the states figure needs scikit-learn: pip install 'gpo-mpi[plot]'") from None
    from .rollout import EnvSpec, Sampler

    run = load_run(path)
    if len(run.policies) < 2:
        raise ConfigError(f"{path} has one policy: the states figure needs two parents")
    ranked = np.argsort(-np.nan_to_num(run.final_returns, nan=-np.inf), kind="stable")
    first, second = int(ranked[0]), int(ranked[1])
    print(f"states: breeding members {first} and {second} both ways", file=sys.stderr, flush=True)
    state_child, parameter_child = breed_couple(run, first, second, seed)
    policies = {f"parent {first} (fitter)": run.policies[first], f"parent {second}": run.policies[second],
                "state-space child": state_child, "parameter-space child": parameter_child}
    n_envs = run.config.n_envs
    steps = max(n_envs, steps // n_envs * n_envs)
    states, legends = [], {}
    for offset, (name, policy) in enumerate(policies.items()):
        sampler = Sampler(EnvSpec.of(run.config), n_envs, seed + 1000 + offset, name)
        batch = sampler.sample(policy, run.normalizer, steps)[0]
        sampler.close()
        states.append(batch.obs)
        lengths = sampler.episodes.take()[1]  # a policy that falls over ends many short episodes
        legends[name] = (f"{name}: {len(lengths)} episodes ended, mean length "
                         f"{lengths.mean():.0f}" if len(lengths) else f"{name}: no episode ended")
    print(f"states: t-SNE of {len(policies) * steps} states (this takes a while)", file=sys.stderr, flush=True)
    embedded = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(
        np.concatenate(states).astype(np.float64))
    figure, axes = plt.subplots(figsize=(6.5, 7))
    for index, name in enumerate(policies):
        block = embedded[index * steps:(index + 1) * steps]
        axes.scatter(block[:, 0], block[:, 1], s=4, alpha=0.5, label=legends[name])
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(fontsize=8, markerscale=3, loc="upper center", bbox_to_anchor=(0.5, -0.01))
    axes.set_title(f"{Path(path).stem}: states visited in {steps} steps each (t-SNE of normalized observations)",
                   fontsize=9)
    figure.tight_layout()
    return figure, "; ".join(legends.values())


def plot(paths: list[str], out_dir: str, figures: list[str], state_steps: int, seed: int,
         file_format: str = "png") -> list[str]:
    """Write the asked figures; returns one line per file written or figure skipped."""
    lines = []
    for path in paths:  # every file is a readable run file before anything is drawn
        with open_run(path) as run_file:
            if "final" not in run_file:
                done = len(run_file["iterations/env_steps"])
                lines.append(f"{path}: not finished; drawn from its {done} of {stored_config(run_file).iterations} "
                             "iterations so far and its latest checkpoint")
    plt = _pyplot()
    ensure_output_directory(out_dir, "plot -o")

    def save(figure, stem: str, name: str, note: str = "") -> None:
        target = Path(out_dir) / f"{stem}-{name}.{file_format}"
        figure.savefig(target, dpi=110, bbox_inches="tight")
        plt.close(figure)
        lines.append(f"wrote {target}" + (f" ({note})" if note else ""))

    if "curves" in figures:
        save(learning_curves(paths), Path(paths[0]).stem if len(paths) == 1 else "compare", "curves")
    for path in paths:
        for name in figures:
            try:
                if name == "kl":
                    save(kl_heatmaps(path), Path(path).stem, name)
                elif name == "family":
                    save(family_tree(path), Path(path).stem, name)
                elif name == "states":
                    figure, note = state_visitation(path, state_steps, seed)
                    save(figure, Path(path).stem, name, note)
            except ConfigError as reason:
                if len(figures) == 1:  # the one figure asked for cannot be drawn: that is an error
                    raise
                lines.append(f"skipped {name} of {path}: {reason}")
    return lines
