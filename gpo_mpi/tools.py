"""`gpo-mpi eval | export RUN.h5`, the Python API's load_policy and breeding a stored couple.

One process each, no MPI. Every tool reads the run file only, through gpo_mpi.saved
(`gpo-mpi info` is gpo_mpi.runfile.info, which needs no torch).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from . import crossover
from .config import ConfigError, RunConfig
from .evaluate import episode_returns
from .networks import Critic, GaussianPolicy
from .paths import check_output_directory, check_output_file, ensure_output_directory
from .rollout import EnvSpec, EpisodeRecorder, ObsNormalizer, Sampler
from .saved import FinishedRun, read_member


def breed_couple(run: FinishedRun, first: int, second: int, seed: int,
                 config: RunConfig | None = None) -> tuple[GaussianPolicy, GaussianPolicy]:
    """The state-space and the parameter-space child of two members, bred as in
    the run's crossover (state-space: from each parent's whole episodes, as many
    as give the selector its `selector_states` states, starting as a copy of the
    first), or with the crossover fields of `config` where given."""
    config = config or run.config
    env = EnvSpec.of(config)
    parent_data = [parent_selector_data(run, parent, env, config, seed + offset)
                   for offset, parent in enumerate((first, second))]
    obs_dim, act_dim = run.normalizer.mean.shape[0], run.policies[first].log_std.shape[0]
    parents = (run.policies[first], run.policies[second])
    children = []
    for operator in ("state", "parameter"):
        child = GaussianPolicy(obs_dim, act_dim, config.policy_hidden)
        crossover.copy_module(parents[0], child)
        crossover.make_child(operator, parents, 0, parent_data, child, env, run.normalizer, config, seed,
                             f"crossover of {first} and {second}")
        children.append(child)
    return tuple(children)


def parent_selector_data(run: FinishedRun, parent: int, env: EnvSpec, config: RunConfig,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A parent's states and returns for the selector (crossover.selector_data), from batches of its
    whole episodes until their best `top_fraction` hold `selector_states` states (0: a round's
    batches): as many states as a run's selector trains on, so that a crossover costs what it does
    in a run. A run draws them from a whole round's episodes, every k-th state of each; here they
    are every state of the fewer episodes needed. At most a round's batches."""
    recorder = EpisodeRecorder(config.n_envs, stride=1)
    sampler = Sampler(env, config.n_envs, seed, f"member {parent}", recorder)
    episodes: list[tuple[np.ndarray, float]] = []
    try:
        for _ in range(max(1, config.iterations_per_round)):
            batch = sampler.sample(run.policies[parent], run.normalizer, config.batch_steps)[0]
            episodes += recorder.take()
            if config.selector_states and episodes:
                best_states, _ = crossover.selector_data(episodes, config.top_fraction, 0, np.random.default_rng(seed))
                if len(best_states) >= config.selector_states:
                    break
    finally:
        sampler.close()
    return crossover.selector_data(episodes or crossover.batch_trajectories(batch), config.top_fraction,
                                   config.selector_states, np.random.default_rng(seed))


class ActingPolicy(nn.Module):
    """A member as one module on raw observations of any float dtype, normalization included:
    `forward(obs)` gives mean actions (or, with `deterministic=False`, actions drawn from the
    Gaussian policy), `value(obs)` the critic's value. Scriptable (what `gpo-mpi export` saves)."""

    def __init__(self, policy: GaussianPolicy, critic: Critic, normalizer: ObsNormalizer):
        super().__init__()
        self.mean_net, self.value_net = policy.mean_net, critic.value_net
        obs_dim = policy.mean_net[0].in_features
        enabled = normalizer.enabled
        self.register_buffer("log_std", policy.log_std.detach().clone())
        self.register_buffer("obs_mean", torch.tensor(normalizer.mean if enabled else np.zeros(obs_dim),
                                                      dtype=torch.float32))
        self.register_buffer("obs_scale", torch.tensor(np.sqrt(normalizer.var + 1e-8) if enabled else
                                                       np.ones(obs_dim), dtype=torch.float32))
        self.clip = float(normalizer.clip) if enabled else float("inf")

    def _normalized(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.clamp((obs.to(torch.float32) - self.obs_mean) / self.obs_scale, -self.clip, self.clip)

    def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Mean actions for raw observations, or sampled ones when not `deterministic`, in the observations' dtype."""
        mean = self.mean_net(self._normalized(obs))
        if not deterministic:
            mean = mean + torch.exp(self.log_std) * torch.randn_like(mean)
        return mean.to(obs.dtype)

    @torch.jit.export
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's values for raw observations, in their dtype."""
        return self.value_net(self._normalized(obs)).squeeze(-1).to(obs.dtype)

    @torch.jit.unused
    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Actions as a numpy array for numpy observations, as SB3's `predict` gives them: one
        observation (obs_dim,) gives one action (act_dim,), a batch (n, obs_dim) gives (n, act_dim),
        in the observations' float dtype (float32 for other dtypes)."""
        obs = np.asarray(obs)
        obs_dim = self.obs_mean.shape[0]
        if obs.shape[-1:] != (obs_dim,) or obs.ndim > 2:
            raise ValueError(f"predict takes one observation of shape ({obs_dim},) or a batch of shape "
                             f"(n, {obs_dim}), got shape {obs.shape}")
        if obs.dtype not in (np.float32, np.float64):
            obs = obs.astype(np.float32)
        with torch.no_grad():
            return self(torch.from_numpy(obs), deterministic).numpy()


def acting_policy(path: str, member: int | None = None) -> ActingPolicy:
    """The public `gpo_mpi.load_policy`: a run's member (default: the best) as an ActingPolicy, from the
    end of a finished run or the latest checkpoint of an unfinished one."""
    run, chosen = read_member(path, member)
    return acting_module(run, chosen)


def acting_module(run: FinishedRun, member: int) -> ActingPolicy:
    """A run's member as an ActingPolicy for inference: evaluation mode and no parameter that asks for
    gradients, so that its outputs carry no autograd graph."""
    return ActingPolicy(run.policies[member], run.critics[member], run.normalizer).eval().requires_grad_(False)


def export(path: str, out: str, member: int | None) -> str:
    """Save a member's policy as TorchScript at `out`; returns the message to print."""
    directory = os.path.dirname(out) or "."
    if os.path.exists(directory):
        check_output_file(out, "export -o")
    else:
        check_output_directory(directory, "export -o")  # made, as plot's, once there is a policy to write
    run, chosen = read_member(path, member)
    ensure_output_directory(directory, "export -o")
    scripted = torch.jit.script(acting_module(run, chosen))
    scripted.save(out)
    return (f"wrote member {chosen}'s policy, read from {run.source}, to {out} (TorchScript: torch.jit.load; "
            f"forward(obs) gives mean actions for observations of any float dtype, forward(obs, False) sampled "
            f"ones, value(obs) the critic's values)")


def check_offscreen_rendering(env: EnvSpec) -> None:
    """Render one frame, or say in one line why this machine cannot."""
    try:
        import moviepy  # noqa: F401  (gymnasium's RecordVideo writes MP4s with it)
    except ImportError:
        raise ConfigError("--video needs moviepy: pip install 'gpo-mpi[video]'") from None
    try:
        with warnings.catch_warnings():  # the failing backend's own warnings would bury the one line below
            warnings.simplefilter("ignore")
            probe = env.make(render_mode="rgb_array")
            probe.reset(seed=0)
            frame = probe.render()
            probe.close()
    except Exception as error:  # the GL backends fail in many ways (missing library, no display, no device)
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"cannot record video: offscreen rendering does not work on this machine with "
                          f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset)')} ({reason}); try MUJOCO_GL=egl "
                          f"(a GPU driver) or MUJOCO_GL=osmesa (libOSMesa)") from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ConfigError(f"cannot record video: {env.name} renders no RGB frames")


def evaluate(path: str, episodes: int, member: int | None, seed: int, deterministic: bool,
             video_dir: str | None = None) -> str:
    """Run a member for `episodes` episodes (optionally with a video of the first); returns the message to print."""
    run, chosen = read_member(path, member)
    config, policy, normalizer = run.config, run.policies[chosen], run.normalizer
    env = EnvSpec.of(config)
    if video_dir:
        check_output_directory(video_dir, "eval --video")
        check_offscreen_rendering(env)
        ensure_output_directory(video_dir, "eval --video")  # made only once a video can be recorded
    returns = episode_returns(policy, normalizer, env, episodes, seed, deterministic, video_dir,
                              video_name=f"member{chosen}")
    kind = "mean actions" if deterministic else "sampled actions"
    text = (f"member {chosen} (read from {run.source}) on {config.env}, {episodes} episodes, {kind}: "
            f"return {returns.mean():.1f} "
            f"+- {returns.std():.1f} (min {returns.min():.1f}, max {returns.max():.1f})")
    if video_dir:
        video = os.path.join(video_dir, f"member{chosen}-episode-0.mp4")
        text += f"\nvideo of episode 1 (return {returns[0]:.1f}): {video}"
    return text
