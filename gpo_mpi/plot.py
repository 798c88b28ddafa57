"""`gpo-mpi plot RUN.h5...`: PNG figures of one run or several overlaid.

- curves:  every member's return and the population best against environment
           steps; several runs overlaid, one colour each; for one GPO run with
           data sharing, a panel below with mean |S_i| and effective sample size
- kl:      the KL matrix KL[pi_i || pi_j] of every round as a heatmap (gpo)
- family:  who bred whom: member slots by round, an edge from each parent to
           its child, nodes coloured by return (gpo)
- states:  the paper's Figure 3b: the two best members of the finished run are
           bred both ways, and the states the parents and the two children visit
           are projected to 2-D with t-SNE (needs scikit-learn)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ConfigError
from .paths import ensure_output_directory
from .tools import breed_couple, load_run, open_run, run_config

FIGURES = ("curves", "kl", "family", "states")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("gpo-mpi plot needs matplotlib: pip install 'gpo-mpi[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(path: str, config) -> str:
    return f"{Path(path).stem} ({config.algo}, m={config.n_policies})"


def _sharing_record(path: str) -> tuple | None:
    """(steps, mean |S_i|, mean effective sample size in batches) of a GPO run with data sharing, else None."""
    with open_run(path) as run_file:
        config = run_config(run_file)
        if not config.has("M") or "iterations/share_set_size" not in run_file:
            return None
        return (run_file["iterations/env_steps"][()], run_file["iterations/share_set_size"][()].mean(axis=1),
                run_file["iterations/effective_sample_size"][()].mean(axis=1) / config.batch_steps)


def learning_curves(paths: list[str]):
    plt = _pyplot()
    sharing = _sharing_record(paths[0]) if len(paths) == 1 else None
    if sharing is None:
        figure, axes = plt.subplots(figsize=(8, 4.5))
    else:
        figure, (axes, sharing_axes) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                                    gridspec_kw=dict(height_ratios=(3, 1.3)))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, path in enumerate(paths):
        colour = colours[index % len(colours)]
        with open_run(path) as run_file:
            config = run_config(run_file)
            steps = run_file["iterations/env_steps"][()]
            returns = run_file["iterations/member_return"][()]
            rounds = run_file["iterations/round"][()]
        if not len(steps):
            raise ConfigError(f"{path} has no finished iteration to plot")
        for member_returns in returns.T:
            axes.plot(steps, member_returns, color=colour, linewidth=0.6, alpha=0.35)
        best = np.where(np.isfinite(returns), returns, -np.inf).max(axis=1)
        best[np.isinf(best)] = np.nan  # no member has finished an episode yet
        axes.plot(steps, best, color=colour, linewidth=2, label=f"{_label(path, config)}: best member")
        if len(paths) == 1:  # round boundaries, where crossover replaced the population
            for boundary in steps[np.flatnonzero(np.diff(rounds)) + 1]:
                axes.axvline(boundary, color="grey", linestyle=":", linewidth=1)
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
    axes.set_title("learning curves: thin lines are members" + (", dotted lines round starts" if len(paths) == 1
                                                                else ""))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def kl_heatmaps(path: str):
    plt = _pyplot()
    with open_run(path) as run_file:
        kl = run_file["rounds/kl_matrix"][()]
    if not len(kl):
        raise ConfigError(f"{path} has no KL matrix: only gpo runs measure one")
    columns = min(len(kl), 4)
    rows = -(-len(kl) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns + 1, 3 * rows), squeeze=False)
    top = max(float(np.nanmax(kl)), 1e-9)
    for round_index, ax in enumerate(axes.flat):
        if round_index >= len(kl):
            ax.axis("off")
            continue
        image = ax.imshow(kl[round_index], vmin=0, vmax=top, cmap="viridis")
        ax.set_title(f"round {round_index + 1}")
        ax.set_xlabel("j")
        ax.set_ylabel("i")
    figure.colorbar(image, ax=axes.ravel().tolist(), label="KL[pi_i || pi_j] (nats)")
    figure.suptitle(f"{Path(path).stem}: KL between members at each round's start")
    return figure


def family_tree(path: str):
    plt = _pyplot()
    with open_run(path) as run_file:
        pairs = run_file["breeding/parent_pairs"][()]
        returns_before = run_file["breeding/member_return_before"][()]
        final_returns = run_file["iterations/member_return"][-1] if len(run_file["iterations/env_steps"]) else None
    if not len(pairs):
        raise ConfigError(f"{path} has no breeding record: only gpo runs with more than one round breed")
    generations = list(returns_before) + ([final_returns] if final_returns is not None else [])
    population = pairs.shape[1]
    figure, axes = plt.subplots(figsize=(2 + 1.6 * len(generations), 1.2 + 0.45 * population))
    for breeding, generation_pairs in enumerate(pairs):
        fitter = np.where(returns_before[breeding][generation_pairs[:, 0]] >= returns_before[breeding][
            generation_pairs[:, 1]], generation_pairs[:, 0], generation_pairs[:, 1])
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
                              cmap="plasma", vmin=lowest, vmax=highest, s=160, edgecolors="black", zorder=2)
    figure.colorbar(points, ax=axes, label="member's return at the end of the round")
    axes.set_xticks(range(len(generations)), [f"round {g + 1}" for g in range(len(generations))])
    axes.set_yticks(range(population))
    axes.set_ylabel("member slot")
    axes.invert_yaxis()
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


def plot(paths: list[str], out_dir: str, figures: list[str], state_steps: int, seed: int) -> list[str]:
    """Write the asked figures; returns one line per file written or figure skipped."""
    for path in paths:
        open_run(path).close()  # every file is a readable run file before anything is drawn
    plt = _pyplot()
    ensure_output_directory(out_dir, "plot -o")
    lines = []

    def save(figure, stem: str, name: str, note: str = "") -> None:
        target = Path(out_dir) / f"{stem}-{name}.png"
        figure.savefig(target, dpi=110)
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
