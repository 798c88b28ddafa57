"""What the benchmark and study scripts share: making runs, reading them, writing tables.

Studies are incremental: a run whose file is complete is read, not run
again; an interrupted one resumes from its checkpoint. A study stopped
midway (a session's end, a time limit) therefore goes on where it stopped
when started again.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np

RUNS = Path("runs")


# Committed summaries of finished runs, one JSON file each: run files are large and stay out of git, so a
# study's tables and plots are remade from these where the run file is gone (another machine, a new session).
RESULTS = Path(__file__).parent / "results"
ARRAYS = ("steps", "returns", "best_curve")


def summary_file(path: Path) -> Path:
    return RESULTS / path.parent.name / f"{path.stem}.json"


def is_complete(path: Path) -> bool:
    """The run finished: its run file says so, or its summary was committed."""
    try:
        with h5py.File(path, "r") as run_file:
            return "final" in run_file
    except OSError:
        return summary_file(path).exists()


def ensure_run(name: str, n_ranks: int, arguments: str, runs_dir: Path = RUNS) -> Path:
    """runs/NAME.h5 made by `mpiexec -n N gpo-mpi ARGUMENTS`, unless already complete."""
    out = runs_dir / f"{name}.h5"
    if is_complete(out):
        return out
    runs_dir.mkdir(parents=True, exist_ok=True)
    command = ["mpiexec", "-n", str(n_ranks), "gpo-mpi", *shlex.split(arguments), "--out", str(out)]
    resume = ["--resume"] if out.exists() else []
    print("$", shlex.join(command + resume), flush=True)
    result = subprocess.run(command + resume, stdout=subprocess.DEVNULL)
    if result.returncode == 2 and resume:  # nothing to resume from (killed before its first checkpoint)
        out.unlink()
        result = subprocess.run(command, stdout=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{name}: gpo-mpi exited with {result.returncode}")
    return out


def summarize(path: Path) -> dict:
    """Config, curves and headline numbers of a finished run, from its run file (saving its summary)
    or, where the run file is gone, from its committed summary."""
    try:
        summary = _summarize_run_file(path)
    except OSError:
        stored = json.loads(summary_file(path).read_text())
        stored["path"] = path
        for name in ARRAYS:
            stored[name] = np.array(stored[name], dtype=float)
        stored["diagnostics"] = {k: np.array(v, dtype=float) for k, v in stored["diagnostics"].items()}
        return stored
    _save_summary(path, summary)
    return summary


def _save_summary(path: Path, summary: dict) -> None:
    def plain(value):
        if isinstance(value, np.ndarray):
            return np.round(value.astype(float), 2).tolist()
        if isinstance(value, (np.floating, np.integer)):
            return float(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    target = summary_file(path)
    kept = json.loads(target.read_text()) if target.exists() else {}
    record = {k: plain(v) for k, v in summary.items() if k != "path"}
    if "held_out" in kept and kept.get("source_commit") == record["source_commit"]:
        record["held_out"] = kept["held_out"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, separators=(",", ":")) + "\n")


def _summarize_run_file(path: Path) -> dict:
    with h5py.File(path, "r") as run_file:
        if "final" not in run_file:
            raise OSError(f"{path} is not a finished run")
        config = json.loads(run_file.attrs["config"])
        n_ranks = int(run_file.attrs["n_ranks"])
        source = run_file.attrs.get("source_commit", "unrecorded")
        steps = run_file["iterations/env_steps"][:]
        returns = run_file["iterations/member_return"][:]
        wall = run_file["iterations/wall_time"][-1]
        phases = {phase: float(run_file[f"rounds/time_{phase}"][:].sum())  # files older than the timers lack them
                  for phase in ("mutate", "select", "crossover", "communication") if f"rounds/time_{phase}" in run_file}
        evaluation = run_file["final/eval_returns"][()] if "final/eval_returns" in run_file else None
        diagnostics = {name: run_file[name][()] for name in
                       ("iterations/round", "iterations/share_set_size", "iterations/effective_sample_size",
                        "rounds/kl_matrix", "breeding/child_return", "breeding/parent_returns",
                        "breeding/parent_pairs", "breeding/member_return_before") if name in run_file}
    with warnings.catch_warnings():  # iterations before any member finished an episode are all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        best_member_curve = np.nanmax(returns, axis=1)
    eval_means = evaluation.mean(axis=1) if evaluation is not None else None
    return dict(path=path, config=config, n_ranks=n_ranks, source_commit=source, steps=steps, returns=returns,
                best_curve=best_member_curve, best=np.nanmax(best_member_curve), final=best_member_curve[-1],
                final_mean=np.nanmean(returns[-1]), wall=wall, phases=phases, diagnostics=diagnostics,
                eval_best=float(eval_means.max()) if eval_means is not None else np.nan,
                eval_mean=float(eval_means.mean()) if eval_means is not None else np.nan)


def held_out_return(path: Path, episodes: int = 10) -> float:
    """The run's best member's mean return over `episodes` fresh episodes with the mean
    action, on seeds its final evaluation did not see (gpo_mpi.summary.held_out_return,
    which `gpo-mpi compare` uses too). Kept in the run's summary."""
    summarize(path)  # writes the summary where it is missing
    target = summary_file(path)
    stored = json.loads(target.read_text())
    if stored.get("held_out", {}).get("episodes") == episodes:
        return stored["held_out"]["return"]
    from gpo_mpi.summary import held_out_return as evaluate_held_out
    from gpo_mpi.saved import read_member

    _, best = read_member(str(path), None)
    value = evaluate_held_out(str(path), best, episodes)
    stored["held_out"] = {"episodes": episodes, "return": value}
    target.write_text(json.dumps(stored, separators=(",", ":")) + "\n")
    return value


def command_line(config: dict, n_ranks: int) -> str:
    """The gpo-mpi command that makes this config: the fields that differ from the defaults."""
    from gpo_mpi.config import RunConfig, to_dict

    defaults = to_dict(RunConfig())
    flags = []
    for name, value in config.items():
        value = tuple(value) if isinstance(value, list) else value
        if name == "out" or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict):
            flags.append(f"{flag} '{json.dumps(value)}'")
        else:
            flags.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, tuple) else value}")
    return f"mpiexec -n {n_ranks} gpo-mpi " + " ".join(flags)


def git_commit() -> str:
    # The checkout the study runs in (the working directory), which may be a worktree at another commit.
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def mean_and_error(values: list[float]) -> str:
    """'mean ± standard error (n=N)' of one number per seed; 'pending' before any."""
    if not values:
        return "pending"
    if len(values) == 1:
        return f"{values[0]:.0f} (n=1)"
    error = np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{np.mean(values):.0f} ± {error:.0f} (n={len(values)})"


def write_table(prefix: Path, header: list[str], rows: list[list], notes: list[str]) -> str:
    """PREFIX.md (a markdown table and notes) and PREFIX.csv; returns the markdown."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n\n" + "\n\n".join(notes)
    prefix.with_suffix(".md").write_text(text + "\n")
    csv_lines = [",".join(header)] + [",".join(f'"{cell}"' if "," in str(cell) else str(cell) for cell in row)
                                      for row in rows]
    prefix.with_suffix(".csv").write_text("\n".join(csv_lines) + "\n")
    return text


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
