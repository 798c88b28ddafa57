"""`gpo-mpi compare RUNS...`: several configurations over many seeds, with the field's statistics.

Runs are run files or their JSON summaries (gpo_mpi.summary; bench/study.py
writes one per run), or folders of either. They are grouped by task and by
their whole configuration apart from the seed and the bookkeeping fields
(IGNORED); each group is a variant, named by the algorithm and only the
fields in which the variants differ. The figure of merit of a run is its
best member's held-out return (10 fresh episodes with the mean action, on
seeds no evaluation of the run saw), the members' mean final evaluation the
second one. Following Agarwal et al. (NeurIPS 2021), with their `rliable`:

- per task: mean, median and interquartile mean (IQM) over seeds, each with
  a 95% stratified-bootstrap confidence interval;
- across tasks: IQM, median and mean of scores normalized per task by a
  reference variant's mean on that task (`--normalize-by`), and the
  probability of improvement P(X > Y) of every variant over every other;
- figures: interval estimates, probability of improvement, and sample-
  efficiency curves (IQM over seeds of the best member's evaluation return
  against environment steps, from the run's evaluations every `eval_every`
  iterations).

Fewer than 5 seeds in a cell is screening, and the table says so.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from . import summary as run_summary
from .config import PRESETS, ConfigError, RunConfig, applies_to, to_dict
from .runfile import damage_is_config_error, open_run, stored_config

# What does not make a different variant: the task (its own axis), the seed (what is pooled) and fields
# that change neither training nor the figure of merit.
IGNORED = {"env", "env_kwargs", "seed", "out", "tensorboard", "checkpoint_every", "eval_every",
           "periodic_eval_episodes"}
FIGURES = ("intervals", "improvement", "curves")
SCREENING_BELOW = 5  # seeds per cell: fewer is screening
CURVE_POINTS = 15


@dataclass
class Run:
    source: str
    task: str
    seed: int
    config: dict
    held_out: float  # the figure of merit
    members_mean: float
    curve_steps: np.ndarray  # environment steps of each evaluation (training's, not the evaluations')
    curve: np.ndarray  # the best member's mean evaluation return at each
    wall_time: float
    commit: str
    finished: bool = True
    load: float = float("nan")  # the machine's mean load average while the study ran it (summaries only)
    cores: int = 0


def _array(values) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)


def _best_member_curve(means: list) -> np.ndarray:
    rows = [_array(row) for row in means]
    return np.array([row[np.isfinite(row)].max() if np.isfinite(row).any() else np.nan for row in rows])


def from_summary(path: str, stored: dict) -> Run:
    study = stored.get("study", {})
    return Run(path, stored["task"], int(stored["seed"]), stored["config"], float(stored["held_out_return"]),
               float(stored["members_mean_return"]), _array(stored["evaluation_steps"]),
               _best_member_curve(stored["evaluation_means"]), float(stored["wall_time"]),
               str(stored.get("source_commit", "?")), load=float(study.get("load_average_mean", float("nan"))),
               cores=int(study.get("cores", 0)))


def _unfinished_run(path: str, run_file) -> Run:
    """What an unfinished run file offers: its evaluations so far, for the curves only."""
    config = stored_config(run_file)
    steps, means = np.zeros(0), []
    if "evaluations/env_steps" in run_file:
        steps = run_file["evaluations/env_steps"][()].astype(float)
        means = np.nanmean(run_file["evaluations/returns"][()], axis=2).tolist()
    return Run(path, run_summary.task_name(config), config.seed, json.loads(run_file.attrs["config"]), np.nan,
               np.nan, steps, _best_member_curve(means), np.nan, str(run_file.attrs.get("source_commit", "?")),
               finished=False)


def load(paths: list[str]) -> tuple[list[Run], list[str]]:
    """The runs behind PATHS (run files, summaries, or folders of them), and why some were left out."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted([*path.glob("*.json"), *path.glob("*.h5")])
            if not found:
                raise ConfigError(f"{path} holds no run files (*.h5) and no run summaries (*.json)")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    runs, notes = [], []
    for path in map(str, files):
        with damage_is_config_error(path):  # a summary's values, too, are checked only as they are used
            if path.endswith(".json"):
                runs.append(from_summary(path, run_summary.read(path)))
                continue
            with open_run(path) as run_file:
                finished = "final" in run_file
                if not finished:
                    run = _unfinished_run(path, run_file)
                    done = len(run_file["iterations/env_steps"])
                    notes.append(f"{path}: unfinished ({done} of {stored_config(run_file).iterations} iterations): "
                                 f"in the curves up to its last evaluation, not in the scores")
                    runs.append(run)
                    continue
            runs.append(from_summary(path, run_summary.summarize(path)))
    return runs, notes


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return str(value)


def variant_key(config: dict) -> str:
    """The configuration apart from the task, the seed, bookkeeping and fields its algorithm does not read."""
    algo = config.get("algo", "gpo")
    return json.dumps({k: v for k, v in config.items() if k not in IGNORED and applies_to(k, algo)}, sort_keys=True)


def variant_labels(configs: list[dict]) -> list[str]:
    """Short, distinct names for variants: the algorithm, then only what tells them apart: GPO's
    components ("gpo Base+S"), a preset whose fields a variant has ("gpo paper-literal"), and any other
    field in which variants that read it differ, where it is off its default ("gpo rounds=3")."""
    defaults = to_dict(RunConfig())
    names = sorted({name for config in configs for name in config} - IGNORED - {"algo"})
    differing = set()
    for name in names:
        readers = [config for config in configs if applies_to(name, config.get("algo", "gpo"))]
        if len({json.dumps(config.get(name), sort_keys=True) for config in readers}) > 1:
            differing.add(name)
    labels = []
    for config in configs:
        algo = config.get("algo", "gpo")
        shown = [name for name in sorted(differing) if applies_to(name, algo)
                 and not _same(config.get(name), defaults.get(name))]
        parts = [algo]
        if "components" in shown:
            parts.append("Base" + "".join(f"+{letter}" for letter in config["components"]))
            shown.remove("components")
        for preset_name, preset in PRESETS.items():
            if set(preset) & set(shown) and all(_same(config.get(k), v) for k, v in preset.items()):
                parts.append(preset_name)
                shown = [name for name in shown if name not in preset]
        labels.append(" ".join(parts + [f"{name}={_shown(config.get(name))}" for name in shown]))
    if len(set(labels)) < len(labels):  # a preset or a default hid a difference: name every field
        labels = [" ".join([config.get("algo", "gpo")] + [f"{name}={_shown(config.get(name))}"
                                                          for name in sorted(differing)]) for config in configs]
    return labels


@dataclass
class Variant:
    label: str
    config: dict
    runs: dict  # task -> [Run], by seed


def group(runs: list[Run], relabel: dict[str, str] | None = None) -> tuple[list[Variant], list[str]]:
    """Variants (each with its runs by task, sorted by seed), and notes on runs given twice."""
    keys, configs = [], []
    for run in runs:
        key = variant_key(run.config)
        if key not in keys:
            keys.append(key)
            configs.append(run.config)
    labels = variant_labels(configs)
    relabel = relabel or {}
    unknown = set(relabel) - set(labels)
    if unknown:
        raise ConfigError(f"--label names no variant: {', '.join(sorted(unknown))} (the variants: "
                          f"{'; '.join(labels)})")
    variants = [Variant(relabel.get(label, label), config, {}) for label, config in zip(labels, configs)]
    seen, notes = {}, []
    for run in runs:
        variant = variants[keys.index(variant_key(run.config))]
        identity = (variant.label, run.task, run.seed)
        if identity in seen:
            notes.append(f"{run.source}: the same configuration and seed as {seen[identity]}: left out")
            continue
        seen[identity] = run.source
        variant.runs.setdefault(run.task, []).append(run)
    for variant in variants:
        for task_runs in variant.runs.values():
            task_runs.sort(key=lambda run: run.seed)
    return variants, notes


# ------------------------------------------------------------------ statistics
# rliable's own metrics go through scipy's per-call argument handling (about a millisecond each), which
# thousands of bootstrap resamples of dozens of cells turn into minutes; these give the same numbers
# (tests/test_compare.py checks them against rliable's) with numpy alone.
def iqm_per_column(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean of each column (rows: runs), NaN entries (not reached) left out: the mean of
    what remains after int(n / 4) values are cut from each end, as scipy's trim_mean(0.25) cuts."""
    scores = np.asarray(scores, dtype=float)
    ordered = np.sort(scores, axis=0)  # NaN last
    count = np.isfinite(scores).sum(axis=0)
    cut = (0.25 * count).astype(int)
    rank = np.arange(len(scores))[:, None]
    kept = (rank >= cut) & (rank < count - cut)
    with np.errstate(invalid="ignore"):
        return np.where(kept, ordered, 0.0).sum(axis=0) / kept.sum(axis=0)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores (runs x tasks pooled), as rliable's aggregate_iqm."""
    return float(iqm_per_column(np.asarray(scores, dtype=float).reshape(-1, 1))[0])


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y) averaged over tasks (columns), a tie counting one half: rliable's probability_of_improvement
    (the Mann-Whitney U statistic over the number of pairs)."""
    x, y = np.asarray(scores_x, dtype=float), np.asarray(scores_y, dtype=float)
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(greater + 0.5 * ties))


def _rliable():
    try:
        from rliable import library
    except ImportError as error:
        raise ConfigError(f"gpo-mpi compare needs rliable: pip install 'gpo-mpi[compare]' ({error})") from None
    return library


def point_and_interval(scores: dict[str, object], func, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's stratified-bootstrap 95% percentile intervals; reproducible for a seed (rliable draws its
    resamples from numpy's global generator, so it is seeded here before every call)."""
    library = _rliable()
    np.random.seed(seed)
    return library.get_interval_estimates(scores, func, reps=reps)


def mean_median_iqm(scores: np.ndarray) -> np.ndarray:
    """The three point estimates of a (runs x tasks) array, pooled over both."""
    return np.array([np.mean(scores), np.median(scores), iqm(scores)])


def _iqm_per_point(scores: np.ndarray) -> np.ndarray:
    """IQM over runs and tasks at each point of a (runs x tasks x points) array, NaN (not reached) left out."""
    return iqm_per_column(scores.reshape(-1, scores.shape[-1]))


@dataclass
class Comparison:
    variants: list[Variant]
    tasks: list[str]
    reference: str
    per_task: dict  # (label, task) -> dict of figures
    aggregate: dict  # label -> dict
    improvement: dict  # (x, y) -> (p, low, high)
    curves: dict  # (label, task or "normalized") -> (grid, iqm, low, high)
    aggregate_runs: int  # runs per task in the aggregate
    notes: list[str]
    aggregate_tasks: list[str]  # the tasks where the reference variant has finished runs


def _finished(runs: list[Run]) -> list[Run]:
    return [run for run in runs if run.finished]


def _interval_text(point: float, low: float, high: float, digits: int, runs: int = 2) -> str:
    """'point [low, high]'; from one run a bootstrap has nothing to resample, so no interval."""
    if runs < 2:
        return f"{point:.{digits}f} (1 seed: no interval)"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def compare(variants: list[Variant], reference: str | None = None, reps: int = 2000, seed: int = 0) -> Comparison:
    """Every statistic of the table and figures."""
    tasks = sorted({task for variant in variants for task in variant.runs})
    labels = [variant.label for variant in variants]
    if reference is None:
        reference = next((label for label in labels if label.split()[0] == "joint"), labels[0])
    if reference not in labels:
        raise ConfigError(f"--normalize-by names no variant: {reference} (the variants: {'; '.join(labels)})")
    notes = []
    per_task = {}
    for variant in variants:
        for task in tasks:
            runs = _finished(variant.runs.get(task, []))
            if not runs:
                continue
            held_out = np.array([run.held_out for run in runs])
            members = np.array([run.members_mean for run in runs])
            points, intervals = point_and_interval({"held_out": held_out[:, None], "members": members[:, None]},
                                                   mean_median_iqm, reps, seed)
            per_task[variant.label, task] = dict(
                n=len(runs), seeds=[run.seed for run in runs], held_out=points["held_out"],
                held_out_ci=intervals["held_out"], members=points["members"], members_ci=intervals["members"],
                wall_minutes=float(np.nanmean([run.wall_time for run in runs])) / 60,
                load=max((run.load for run in runs if math.isfinite(run.load)), default=float("nan")),
                cores=max(run.cores for run in runs),
                commits=sorted({run.commit for run in runs}))

    # Across tasks: as many runs per task for every variant (the lowest seeds where a variant has more).
    reference_variant = variants[labels.index(reference)]
    reference_mean = {task: float(np.mean([run.held_out for run in _finished(reference_variant.runs.get(task, []))]))
                      for task in tasks if _finished(reference_variant.runs.get(task, []))}
    complete = [variant for variant in variants
                if all(_finished(variant.runs.get(task, [])) for task in reference_mean)]
    for variant in variants:
        if variant not in complete:
            notes.append(f"{variant.label}: not in the aggregate (no finished run on some task of the reference)")
    counts = [len(_finished(variant.runs[task])) for variant in complete for task in reference_mean]
    aggregate_runs = min(counts) if counts else 0
    if counts and max(counts) > aggregate_runs:
        notes.append(f"the aggregate takes the {aggregate_runs} lowest seeds of every cell, as many as the "
                     f"smallest cell has, for the stratified bootstrap")
    normalized = {variant.label: np.array([[run.held_out / reference_mean[task]
                                            for run in _finished(variant.runs[task])[:aggregate_runs]]
                                           for task in reference_mean]).T for variant in complete}
    aggregate, improvement = {}, {}
    if aggregate_runs:
        points, intervals = point_and_interval(normalized, mean_median_iqm, reps, seed)
        aggregate = {label: dict(point=points[label], ci=intervals[label]) for label in normalized}
        pairs = {f"{x}|{y}": [normalized[x], normalized[y]] for x, y in combinations(list(normalized), 2)}
        if pairs:
            points, intervals = point_and_interval(pairs, probability_of_improvement, reps, seed)
            for pair in pairs:
                x, y = pair.split("|")
                improvement[x, y] = (float(points[pair]), *np.asarray(intervals[pair], dtype=float).ravel())
    curves = _curves(variants, tasks, reference_mean, complete, aggregate_runs, reps, seed)
    return Comparison(variants, tasks, reference, per_task, aggregate, improvement, curves, aggregate_runs, notes,
                      list(reference_mean))


def _curves(variants, tasks, reference_mean, complete, aggregate_runs, reps, seed) -> dict:
    """IQM over seeds of the best member's evaluation return on a grid of environment steps that every
    finished run spans (an unfinished run counts where it got to)."""
    runs = [run for variant in variants for task_runs in variant.runs.values() for run in task_runs
            if len(run.curve_steps)]
    finished = [run for run in runs if run.finished]
    if not finished:
        return {}
    start = max(run.curve_steps[0] for run in runs)
    end = min(run.curve_steps[-1] for run in finished)
    if end <= start:
        return {}
    grid = np.linspace(start, end, CURVE_POINTS)

    def on_grid(run: Run) -> np.ndarray:
        finite = np.isfinite(run.curve)
        values = np.interp(grid, run.curve_steps[finite], run.curve[finite]) if finite.any() else np.nan + grid
        return np.where(grid <= run.curve_steps[-1], values, np.nan)

    scores = {}
    for variant in variants:
        for task in tasks:
            task_runs = [run for run in variant.runs.get(task, []) if len(run.curve_steps)]
            if task_runs:
                scores[f"{variant.label}|{task}"] = np.array([on_grid(run) for run in task_runs])[:, None, :]
        if variant in complete and aggregate_runs:
            scores[f"{variant.label}|normalized"] = np.stack(
                [np.array([on_grid(run) for run in _finished(variant.runs[task])[:aggregate_runs]])
                 / reference_mean[task] for task in reference_mean], axis=1)
    points, intervals = point_and_interval(scores, _iqm_per_point, reps, seed)
    return {tuple(key.split("|")): (grid, points[key], intervals[key][0], intervals[key][1]) for key in scores}


# ------------------------------------------------------------------ output
def per_task_rows(result: Comparison) -> tuple[list[str], list[list]]:
    header = ["task", "variant", "seeds", "held-out IQM [95% CI]", "held-out mean [95% CI]",
              "held-out median [95% CI]", "members' mean, IQM [95% CI]", "wall time (min)", "load", "evidence"]
    rows = []
    for task in result.tasks:
        for variant in result.variants:
            cell = result.per_task.get((variant.label, task))
            if cell is None:
                continue
            held, ci, members, members_ci = cell["held_out"], cell["held_out_ci"], cell["members"], cell["members_ci"]
            n = cell["n"]
            rows.append([task, variant.label, f"{n} ({','.join(map(str, cell['seeds']))})",
                         _interval_text(held[2], ci[0][2], ci[1][2], 0, n),
                         _interval_text(held[0], ci[0][0], ci[1][0], 0, n),
                         _interval_text(held[1], ci[0][1], ci[1][1], 0, n),
                         _interval_text(members[2], members_ci[0][2], members_ci[1][2], 0, n),
                         f"{cell['wall_minutes']:.1f}",
                         f"{cell['load']:.1f} on {cell['cores']}" if math.isfinite(cell["load"]) else "",
                         "screening" if cell["n"] < SCREENING_BELOW else "claim"])
    return header, rows


def markdown(result: Comparison, skipped: list[str]) -> str:
    def table(header, rows):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])

    text = ["## Per task: the best member's held-out return", "", table(*per_task_rows(result)), ""]
    if result.aggregate:
        text += [f"## Across tasks: held-out return / {result.reference}'s mean on the task "
                 f"({', '.join(result.aggregate_tasks)}; {result.aggregate_runs} seed(s) per task)", "",
                 table(["variant", "IQM [95% CI]", "median [95% CI]", "mean [95% CI]"],
                       [[label, *(_interval_text(cell["point"][i], cell["ci"][0][i], cell["ci"][1][i], 2,
                                                 result.aggregate_runs)
                                  for i in (2, 1, 0))] for label, cell in result.aggregate.items()]), ""]
    if result.improvement:
        text += ["## Probability of improvement P(X > Y), averaged over tasks", "",
                 table(["X", "Y", "P(X > Y) [95% CI]"],
                       [[x, y, _interval_text(p, low, high, 2, result.aggregate_runs)] for (x, y), (p, low, high)
                        in result.improvement.items()]), ""]
    commits = sorted({commit for cell in result.per_task.values() for commit in cell["commits"]})
    text += [f"Held-out return: the best member (by the final evaluation; Joint: its policy) on "
             f"{run_summary.HELD_OUT_EPISODES} fresh episodes with the mean action. IQM: mean of the middle half "
             f"of the seeds. 95% stratified-bootstrap intervals (rliable). Fewer than {SCREENING_BELOW} seeds: "
             f"screening, not evidence. Wall time: the mean over seeds; load: the highest of the runs' mean load "
             f"averages while the study ran them, on that many cores (above the cores' count, other work shared "
             f"the machine and the wall times are slower than alone). Source commits: {', '.join(commits)}."]
    for variant in result.variants:
        text.append(f"- {variant.label}: {_describe(variant.config)}")
    text += [f"- {note}" for note in result.notes + skipped]
    return "\n".join(text) + "\n"


def _describe(config: dict) -> str:
    """The fields off their defaults, as flags (apart from the task, seed and output)."""
    defaults = to_dict(RunConfig())
    return " ".join(f"--{name.replace('_', '-')} {_shown(value)}" for name, value in sorted(config.items())
                    if name not in IGNORED - {"eval_every", "periodic_eval_episodes"} and name in defaults
                    and not _same(value, defaults[name])) or "the defaults"


def write_csv(result: Comparison, path: Path) -> None:
    import csv
    header, _ = per_task_rows(result)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "variant", "seeds", "held_out_iqm", "iqm_low", "iqm_high", "held_out_mean",
                         "mean_low", "mean_high", "held_out_median", "median_low", "median_high",
                         "members_iqm", "members_iqm_low", "members_iqm_high", "wall_minutes"])
        for (label, task), cell in result.per_task.items():
            held, ci, members, members_ci = cell["held_out"], cell["held_out_ci"], cell["members"], cell["members_ci"]
            writer.writerow([task, label, " ".join(map(str, cell["seeds"])),
                             *(f"{value:.1f}" for i in (2, 0, 1) for value in (held[i], ci[0][i], ci[1][i])),
                             *(f"{value:.1f}" for value in (members[2], members_ci[0][2], members_ci[1][2])),
                             f"{cell['wall_minutes']:.2f}"])


def draw(result: Comparison, out_dir: Path, figures: list[str], file_format: str) -> list[str]:
    """The rliable-style figures; returns the files written."""
    from rliable import plot_utils

    from .plot import _pyplot
    plt = _pyplot()
    written = []
    labels = [variant.label for variant in result.variants]
    colors = dict(zip(labels, plt.get_cmap("tab10").colors))
    if "intervals" in figures and result.aggregate:
        names = list(result.aggregate)
        figure, _ = plot_utils.plot_interval_estimates(
            {label: result.aggregate[label]["point"][[1, 2, 0]] for label in names},
            {label: result.aggregate[label]["ci"][:, [1, 2, 0]] for label in names},
            metric_names=["Median", "IQM", "Mean"], algorithms=names, colors=colors,
            xlabel=f"held-out return / {result.reference}'s mean", subfigure_width=3.6,
            row_height=0.5, xlabel_y_coordinate=-0.8 / len(names))
        written.append(_save(figure, out_dir / f"intervals.{file_format}"))
    if "improvement" in figures and result.improvement:
        pairs = {f"{x}|{y}": value[0] for (x, y), value in result.improvement.items()}
        bounds = {f"{x}|{y}": np.array(value[1:]) for (x, y), value in result.improvement.items()}
        axes = plot_utils.plot_probability_of_improvement(pairs, bounds, pair_separator="|",
                                                          figsize=(5, 0.5 + 0.45 * len(pairs)))
        written.append(_save(axes.figure, out_dir / f"improvement.{file_format}"))
    if "curves" in figures and result.curves:
        panels = [task for task in result.tasks] + (["normalized"] if result.aggregate else [])
        figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
        for axis, panel in zip(axes[0], panels):
            for label in labels:
                if (label, panel) not in result.curves:
                    continue
                grid, point, low, high = result.curves[label, panel]
                n = (result.aggregate_runs if panel == "normalized" else
                     len(result.variants[labels.index(label)].runs.get(panel, [])))
                axis.plot(grid / 1e6, point, color=colors[label], label=f"{label} (n={n})")
                axis.fill_between(grid / 1e6, low, high, color=colors[label], alpha=0.2)
            axis.set_title(panel if panel != "normalized" else f"all tasks, / {result.reference}'s final mean")
            axis.set_xlabel("environment steps (millions)")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel("best member's evaluation return, IQM")
        axes[0][0].legend(fontsize="small")
        figure.tight_layout()
        written.append(_save(figure, out_dir / f"curves.{file_format}"))
    return written


def _save(figure, path: Path) -> str:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(figure)
    return str(path)


def run(paths: list[str], labels: list[str], reference: str | None, reps: int, seed: int, out_dir: str | None,
        figures: list[str], file_format: str) -> str:
    """The whole command; returns what it prints."""
    relabel = {}
    for item in labels:
        old, separator, new = item.rpartition("=")
        if not separator or not old or not new or "|" in new:
            raise ConfigError(f"--label takes OLD=NEW (a variant's name, then yours, without '|'), got {item!r}")
        relabel[old] = new
    if reps < 100:
        raise ConfigError(f"--reps must be at least 100 for a 95% interval, got {reps}")
    runs, skipped = load(paths)
    if not any(run.finished for run in runs):
        raise ConfigError("no finished run to compare: " + "; ".join(skipped))
    variants, duplicates = group(runs, relabel)
    result = compare(variants, reference, reps, seed)
    text = markdown(result, skipped + duplicates)
    if out_dir:
        from .paths import ensure_output_directory
        ensure_output_directory(out_dir, "the output folder")
        out = Path(out_dir)
        (out / "compare.md").write_text(text)
        write_csv(result, out / "compare.csv")
        written = draw(result, out, figures, file_format)
        text += "\nwrote " + ", ".join([str(out / "compare.md"), str(out / "compare.csv"), *written]) + "\n"
    return text
