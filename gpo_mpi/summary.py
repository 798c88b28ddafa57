"""A finished run in a few kilobytes of JSON: what `gpo-mpi compare` and bench/study.py need.

Run files are megabytes and stay out of git; a study commits one summary per
run instead, and its tables and figures are made from the summaries alone.
A summary holds the configuration, where and with which code the run was
made, its wall time, every evaluation (during training and final, each
member's mean return), the best member's held-out return (its figure of
merit, as Table 1 uses), the training curve of every member and the
per-round diagnostics. It is plain JSON: reading one runs no code.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .config import ConfigError, RunConfig
from .runfile import damage_is_config_error, open_run, stored_config

FORMAT = "gpo-mpi run summary"
FORMAT_VERSION = 1
# The held-out evaluation: seeds far from every seed a run's training and its evaluations use, so that
# picking the best of several members by one evaluation and reporting that same evaluation does not
# flatter populations (the best of 8 noisy numbers). bench/common.py's summaries used the same.
HELD_OUT_SEED = 1_000_000
HELD_OUT_EPISODES = 10
DIAGNOSTICS = ("iterations/round", "iterations/share_set_size", "iterations/effective_sample_size",
               "rounds/kl_matrix", "breeding/child_return", "breeding/parent_returns", "breeding/parent_pairs",
               "breeding/member_return_before")
REQUIRED = ("config", "task", "seed", "held_out_return", "members_mean_return", "evaluation_steps",
            "evaluation_means", "final_evaluation_means", "wall_time")


def _plain(value):
    """JSON-ready numbers: arrays as nested lists rounded to 0.01 (returns and seconds: no more is
    meaningful), NaN as null; everything else as it is."""
    if isinstance(value, np.ndarray):
        if value.ndim > 1:
            return [_plain(row) for row in value]
        if np.issubdtype(value.dtype, np.integer):
            return value.tolist()
        return [None if not math.isfinite(item) else round(item, 2) for item in value.astype(float).tolist()]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def held_out_return(path: str, member: int, episodes: int = HELD_OUT_EPISODES) -> float:
    """`member`'s mean return over `episodes` fresh episodes with its mean action, on seeds no evaluation
    of the run saw."""
    from .evaluate import episode_returns
    from .rollout import EnvSpec
    from .saved import read_member

    run, member = read_member(path, member)
    returns = episode_returns(run.policies[member], run.normalizer, EnvSpec.of(run.config), episodes,
                              HELD_OUT_SEED + run.config.seed, deterministic=True)
    return float(returns.mean())


def task_name(config: RunConfig | dict) -> str:
    """The environment and its keyword arguments, which together make the task."""
    env, kwargs = (config["env"], config["env_kwargs"]) if isinstance(config, dict) else \
        (config.env, config.env_kwargs)
    return env + (f" {json.dumps(kwargs, sort_keys=True)}" if kwargs else "")


def summarize(path: str, held_out_episodes: int = HELD_OUT_EPISODES) -> dict:
    """The summary of a finished run file (raises ConfigError for an unfinished or damaged one)."""
    with damage_is_config_error(path):
        return _summarize(path, held_out_episodes)


def _summarize(path: str, held_out_episodes: int) -> dict:
    with open_run(path) as run_file:
        config = stored_config(run_file)
        if "final" not in run_file:
            done = len(run_file["iterations/env_steps"])
            raise ConfigError(f"{path} is not finished ({done} of {config.iterations} iterations)")
        steps = run_file["iterations/env_steps"][()]
        final = run_file["final"]
        best = int(final.attrs["best_member"])
        if "final/eval_returns" in run_file:
            final_means = run_file["final/eval_returns"][()].mean(axis=1)
        else:  # eval_episodes 0: no evaluation; the best by training returns
            final_means = np.full(config.n_policies, np.nan)
        if "evaluations/env_steps" in run_file:
            evaluation_steps = run_file["evaluations/env_steps"][()]
            evaluation_means = np.nanmean(run_file["evaluations/returns"][()], axis=2)
        else:
            evaluation_steps, evaluation_means = np.zeros(0, np.int64), np.zeros((0, config.n_policies))
        summary = dict(
            format=FORMAT, format_version=FORMAT_VERSION, run_file=os.path.basename(path),
            config=json.loads(run_file.attrs["config"]), task=task_name(config), seed=config.seed,  # as written
            n_ranks=int(run_file.attrs["n_ranks"]), source_commit=str(run_file.attrs.get("source_commit", "?")),
            gpo_mpi_version=str(run_file.attrs.get("gpo_mpi_version", "?")),
            wall_time=float(run_file["iterations/wall_time"][-1]),
            phase_times={phase: float(run_file[f"rounds/time_{phase}"][()].sum())
                         for phase in ("mutate", "select", "crossover", "communication", "evaluation")
                         if f"rounds/time_{phase}" in run_file},
            best_member=best, final_evaluation_means=final_means,
            evaluation_steps=evaluation_steps, evaluation_means=evaluation_means,
            evaluation_env_steps_spent=int(run_file["evaluations/evaluation_steps"][()].sum())
            if "evaluations/evaluation_steps" in run_file else 0,
            iteration_env_steps=steps, iteration_member_returns=run_file["iterations/member_return"][()],
            diagnostics={name: run_file[name][()] for name in DIAGNOSTICS if name in run_file})
    config_as_written = summary.pop("config")
    summary = _plain(summary)
    summary["config"] = config_as_written  # exact: share_epsilon may be Infinity, learning rates below 0.01
    summary["members_mean_return"] = float(np.mean(final_means))
    summary["held_out_episodes"] = held_out_episodes
    summary["held_out_return"] = held_out_return(path, best, held_out_episodes)
    return summary


def write(summary: dict, path: str | Path) -> None:
    """Write a summary atomically (a stop never leaves half a file for a study to trust)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(summary, separators=(",", ":")) + "\n")  # Infinity only in the config
    os.replace(temporary, path)


def read(path: str | Path) -> dict:
    """A summary, checked: one ConfigError line for anything that is not one."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not a readable gpo-mpi run summary ({error})") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a gpo-mpi run summary")
    if summary.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} is a run summary of format {summary.get('format_version')}; this gpo-mpi reads "
                          f"{FORMAT_VERSION}")
    missing = [name for name in REQUIRED if name not in summary]
    if missing:
        raise ConfigError(f"{path} is a damaged run summary (no {', '.join(missing)})")
    try:
        RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in summary["config"].items()})
    except TypeError as error:
        raise ConfigError(f"{path} holds a configuration this gpo-mpi does not know ({error})") from None
    return summary
