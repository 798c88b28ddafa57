"""`gpo-mpi info | eval | export RUN.h5`: looking at a finished run without h5py code.

One process each, no MPI traffic. Every tool reads the run file only.
"""
from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import torch
from torch import nn

from .config import ConfigError, RunConfig
from .evaluate import episode_returns
from .networks import GaussianPolicy, load_flat_parameters
from .rollout import ObsNormalizer, space_sizes
from .runfile import FORMAT


def open_run(path: str) -> h5py.File:
    try:
        run_file = h5py.File(path, "r")
    except OSError as error:
        raise ConfigError(f"{path} is not a readable HDF5 file ({error})") from None
    if run_file.attrs.get("format") != FORMAT:
        run_file.close()
        raise ConfigError(f"{path} is not a gpo-mpi run file")
    return run_file


def run_config(run_file: h5py.File) -> RunConfig:
    fields = json.loads(run_file.attrs["config"])
    return RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def info(path: str) -> str:
    """Config, progress and best member of a run, as text."""
    with open_run(path) as run_file:
        config = run_config(run_file)
        steps = run_file["iterations/env_steps"][()]
        returns = run_file["iterations/member_return"][()]
        complete = "final" in run_file
        best = int(run_file["final"].attrs["best_member"]) if complete else None
        n_ranks = int(run_file.attrs["n_ranks"])
    lines = [f"{path}: {config.algo} on {config.env}, population {config.population}, {n_ranks} rank(s), "
             f"seed {config.seed}",
             f"progress: {steps[-1] if len(steps) else 0:,} of {config.total_steps:,} environment steps, "
             f"{len(steps)} of {config.iterations} iterations, "
             + ("complete" if complete else "not complete (resume with --resume)")]
    if len(steps):
        last = returns[-1]
        finite = np.isfinite(last)
        if finite.any():
            leader = int(np.nanargmax(last))
            lines.append(f"returns (last 10 training episodes): best member {leader} at {last[leader]:.1f}, "
                         f"mean {np.nanmean(last):.1f}")
    if complete:
        lines.append(f"best member at the end: {best}")
    lines.append("config: " + ", ".join(f"{k}={v}" for k, v in json.loads(json.dumps(config.__dict__)).items()))
    return "\n".join(lines)


def load_policy(path: str, member: int | None) -> tuple[RunConfig, GaussianPolicy, ObsNormalizer, int]:
    """A finished run's policy (the best member's unless `member` is given) and its normalization."""
    with open_run(path) as run_file:
        if "final" not in run_file:
            raise ConfigError(f"{path} holds no finished run yet: nothing to evaluate or export")
        config = run_config(run_file)
        parameters = run_file["final/policy_parameters"][()]
        chosen = int(run_file["final"].attrs["best_member"]) if member is None else member
        if not 0 <= chosen < len(parameters):
            raise ConfigError(f"member {chosen} does not exist: the run has {len(parameters)}")
        normalizer_state = run_file["final/obs_normalizer"][()]
    obs_dim, act_dim = space_sizes(config.env, config.horizon)
    policy = GaussianPolicy(obs_dim, act_dim, config.policy_hidden)
    load_flat_parameters(policy, parameters[chosen])
    normalizer = ObsNormalizer(obs_dim, config.obs_clip, enabled=config.obs_norm == "shared")
    normalizer.load_state(normalizer_state)
    return config, policy, normalizer, chosen


class ExportedPolicy(nn.Module):
    """Raw observations -> deterministic (mean) actions, normalization included."""

    def __init__(self, policy: GaussianPolicy, normalizer: ObsNormalizer):
        super().__init__()
        self.mean_net = policy.mean_net
        enabled = normalizer.enabled
        obs_dim = policy.mean_net[0].in_features
        self.register_buffer("obs_mean", torch.tensor(normalizer.mean if enabled else np.zeros(obs_dim),
                                                      dtype=torch.float32))
        self.register_buffer("obs_scale", torch.tensor(np.sqrt(normalizer.var + 1e-8) if enabled else
                                                       np.ones(obs_dim), dtype=torch.float32))
        self.clip = float(normalizer.clip) if enabled else float("inf")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        normalized = torch.clamp((obs - self.obs_mean) / self.obs_scale, -self.clip, self.clip)
        return self.mean_net(normalized)


def export(path: str, out: str, member: int | None) -> str:
    _, policy, normalizer, chosen = load_policy(path, member)
    scripted = torch.jit.script(ExportedPolicy(policy, normalizer))
    scripted.save(out)
    return f"wrote member {chosen}'s policy to {out} (TorchScript: torch.jit.load, forward(obs [B, obs_dim]))"


def evaluate(path: str, episodes: int, member: int | None, seed: int, deterministic: bool) -> str:
    config, policy, normalizer, chosen = load_policy(path, member)
    returns = episode_returns(policy, normalizer, config.env, episodes, seed, config.horizon, deterministic)
    kind = "mean actions" if deterministic else "sampled actions"
    return (f"member {chosen} on {config.env}, {episodes} episodes, {kind}: return {returns.mean():.1f} "
            f"+- {returns.std():.1f} (min {returns.min():.1f}, max {returns.max():.1f})")


def main(tool: str, arguments: list[str]) -> str:
    """Run one tool; returns what it prints. Raises ConfigError for bad input."""
    parser = argparse.ArgumentParser(prog=f"gpo-mpi {tool}")
    parser.add_argument("run", metavar="RUN.h5")
    if tool in ("eval", "export"):
        parser.add_argument("--member", type=int, help="member index (default: the best at the end)")
    if tool == "eval":
        parser.add_argument("--episodes", type=int, default=10)
        parser.add_argument("--seed", type=int, default=12345)
        parser.add_argument("--deterministic", action="store_true", help="act with the mean instead of sampling")
    if tool == "export":
        parser.add_argument("-o", "--output", required=True, metavar="policy.pt")
    parsed = parser.parse_args(arguments)
    if tool == "info":
        return info(parsed.run)
    if tool == "export":
        return export(parsed.run, parsed.output, parsed.member)
    if parsed.episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {parsed.episodes}")
    return evaluate(parsed.run, parsed.episodes, parsed.member, parsed.seed, parsed.deterministic)
