"""The run configuration: one typed, frozen dataclass.

Every hyperparameter that the paper leaves open is a field here, with a
one-line docstring under it; nothing is a hidden constant. A run's config
comes from, in increasing priority: the defaults below, a preset
(`--preset paper`), a TOML file (`--config FILE`) with the same field names,
and command-line flags (`--batch-steps 4096`). Rank 0 writes the resolved
config into the run file.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import math
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad configuration value; its message is one line for the user."""


MUTATIONS = ("ppo", "ppo-clip", "a2c")  # the modules of gpo_mpi/mutations/


@dataclass(frozen=True)
class RunConfig:
    # ---------------------------------------------------------------- the run
    env: str = "Hopper-v5"
    """Gymnasium id (Hopper-v5, HopperHilly-v5, module:Id-v0) or package.module:EnvClass; actions must be continuous (Box)."""
    env_kwargs: dict = field(default_factory=dict)
    """Keyword arguments of the environment (TOML: an [env_kwargs] table; flag: a JSON object), e.g. {"difficulty": 0.5}."""
    algo: Literal["gpo", "single", "joint"] = "gpo"
    """gpo: the genetic algorithm; single: independent members, best reported; joint: one policy, m times the batch."""
    mutation: str = "ppo"
    """Policy-gradient method of MUTATE: ppo (the adaptive KL penalty, the paper's), ppo-clip (the clipped surrogate), a2c, or package.module:Class for one's own (docs/algorithm.md)."""
    population: int = 0
    """Number of members m (Joint: sampler slots of its one policy), at least the number of ranks, spread over them as evenly as possible; 0: 8 (the paper's), or the number of ranks where there are more."""
    total_steps: int = 8_000_000
    """Environment-step budget of the whole run, every rollout counted (the paper: 1M per member)."""
    rounds: int = 12
    """GPO rounds (mutate, then select and crossover but after the last); mutation steps are split evenly over them."""
    seed: int = 0
    """Seed of everything random: member i uses seed + 1000 * i for its networks, noise and environments."""
    out: str = ""
    """Path of the HDF5 run file written by rank 0 (empty: ENV-ALGO-sSEED.h5 in the working directory). An existing file is never replaced unless asked (--resume, --overwrite)."""

    init_from: str = ""
    """A run file whose best policy (with its critic and observation statistics) every member starts from, e.g. a flat-ground policy to fine-tune on hilly terrain (empty: fresh networks)."""

    tensorboard: str = ""
    """Directory for TensorBoard scalars from rank 0 (empty: none); needs `pip install 'gpo-mpi[tensorboard]'`."""
    checkpoint_every: int = 10
    """Iterations between checkpoints inside a round (0: only at round ends). A stop signal writes one at once; a resume goes on exactly (docs/checkpoints.md)."""

    # ------------------------------------------------------------ environment
    n_envs: int = 4
    """Environments each member steps side by side (a gymnasium SyncVectorEnv); one policy forward per step serves all."""
    horizon: int = 0
    """Episode time limit in steps; 0 keeps the environment's own (1000 for MuJoCo v5). The paper used 512."""
    obs_norm: Literal["shared", "off"] = "shared"
    """Observation normalization: running mean/std pooled over the whole population, or none."""
    obs_clip: float = 10.0
    """Normalized observations are clipped to [-obs_clip, obs_clip]."""

    # ------------------------------------------------------------- networks
    policy_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the Gaussian policy's mean network (tanh units)."""
    critic_hidden: tuple[int, ...] = (32, 32)
    """Hidden layer sizes of the value network (tanh units)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of every action dimension."""

    # -------------------------------------------------------------- mutation
    batch_steps: int = 2048
    """Environment steps per member per policy-gradient iteration (Joint: per member it replaces)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (the paper does not give one)."""
    policy_lr: float = 3e-3
    """Adam learning rate of the policy (the paper gives none; 3e-4 with full-batch steps barely learns, see README)."""
    policy_epochs: int = 10
    """Passes over the batch per PPO iteration (A2C always makes one gradient step)."""
    minibatch: int = 0
    """Minibatch size in steps for PPO's and the critic's gradient steps; 0 means full batch, as in the paper."""
    kl_target: float = 0.01
    """Adaptive KL penalty: beta doubles above 1.5 x target, halves below target / 1.5."""
    clip_range: float = 0.2
    """PPO-clip: the surrogate clips the ratio pi_theta / pi_old to [1 - clip_range, 1 + clip_range]."""
    initial_beta: float = 1.0
    """Starting weight of the KL penalty."""
    critic_lr: float = 3e-3
    """Adam learning rate of the critic."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """Learning rates of policy and critic over the run: constant, or decaying linearly to 0 at total_steps (each update at policy_lr and critic_lr times 1 - the steps before its iteration / total_steps), the common PPO practice; GPO, Single and Joint alike."""
    critic_epochs: int = 50
    """Passes over the batch per iteration for the critic (the paper gives none)."""
    normalize_advantages: bool = True
    """Standardize advantages within each batch."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip for policy and critic updates; 0 disables it."""

    # ---------------------------------------------------------- data sharing
    share_epsilon: float = math.inf
    """Component M: member i learns from j's batch when KL[pi_i, pi_j] < share_epsilon (mean over shared states; the paper: a small epsilon, see the paper-literal preset)."""
    share_max: int = 7
    """At most this many other members in S_i, the nearest by KL (0: no limit, the paper's rule); 7 is every other member of the paper's population of 8."""
    share_every: int = 1
    """Iterations between measurements of the KL matrix that decide S_i (0: once, at the round's start, as the paper)."""
    share_rounds: int = 0
    """Data sharing only in the first share_rounds rounds, none after (0: in every round, as the paper)."""
    share_rows: int = 2048
    """Foreign rows per policy epoch under data sharing: each epoch learns from the member's own batch and a fresh uniform draw of this many rows of the other batches in S_i, so that an update costs about as much at any |S_i| (0: all of them every epoch, the paper's; 2048, one batch at the default batch_steps, learned better than 0 on Walker2d and Hopper and as well on HalfCheetah, in 0.81 to 0.97 x its wall time, docs/RESULTS.md)."""
    share_ratio_cap: float = 1.0
    """Truncation of the fixed factor pi_i_old / pi_j_old of a foreign sample's importance weight, as V-trace's (inf: none, the paper's)."""
    exchange: Literal["auto", "allgather", "graph"] = "auto"
    """How shared batches and crossover's parents reach the ranks: one Allgatherv of every member's to every rank, or a neighbourhood Allgatherv along the graph of who reads whom (a rank receives only from ranks holding members its members read, or its children's parents); auto: the graph on more than 2 ranks where at most half of all rank pairs read each other. The same run either way; only the bytes differ."""
    critic_data: Literal["own", "shared"] = "own"
    """What each critic is fitted on under data sharing: its member's own batch, or the whole pooled data S_i."""
    kl_states: int = 1024
    """States per member pooled into the shared set on which the KL matrix is measured, where kl_states_total is 0."""
    kl_states_total: int = 8192
    """States in all of the KL matrix's shared set: kl_states_total // population from each member (at least one), so its traffic and work per rank grow with the population instead of its square (docs/SCALING.md); at the paper's population of 8, 1,024 from each. 0: kl_states from each member, whatever the population."""

    # -------------------------------------------------------------- evaluation
    eval_episodes: int = 10
    """Whole episodes with the mean action that evaluate every policy at the run's end (not counted in total_steps); the best by this picks the run's best member. 0: none, best by training returns."""
    eval_every: int = 0
    """Iterations between evaluations of every policy during training (eval_episodes each, mean actions, the final evaluation's fixed seeds, not counted in total_steps); the run file keeps every evaluation and the best evaluated policy. None falls on the run's last iteration: the final evaluation follows it. 0: only the final one."""
    periodic_eval_episodes: int = 0
    """Episodes per policy of the evaluations during training (eval_every), when fewer than the final evaluation's should keep their cost down; the run file pads their rows with NaN to eval_episodes columns. 0: eval_episodes."""

    def member_slots(self, rank: int, n_ranks: int) -> range:
        """The member slots a rank holds (Joint: sampler slots of its one policy): consecutive
        slots, spread as evenly as the ranks allow (8 on 3 ranks: 3, 3, 2)."""
        fewer, more = divmod(self.population, n_ranks)
        start = rank * fewer + min(rank, more)
        return range(start, start + fewer + (rank < more))

    def rank_of_member(self, member: int, n_ranks: int) -> int:
        """The rank that holds member slot `member` (the inverse of member_slots)."""
        return next(rank for rank in range(n_ranks) if member in self.member_slots(rank, n_ranks))

    def validate(self, n_ranks: int) -> None:
        """Raise ConfigError with one line naming the first bad value."""
        positive_ints = ["total_steps", "rounds", "n_envs", "batch_steps", "policy_epochs", "critic_epochs",
                         "kl_states"]
        for name in positive_ints:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ["horizon", "minibatch", "seed", "checkpoint_every", "share_max", "share_every", "share_rounds",
                     "share_rows", "eval_episodes", "eval_every", "periodic_eval_episodes", "selector_states",
                     "selector_patience", "kl_states_total", "elites"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if self.mutation not in MUTATIONS and ":" not in self.mutation:
            raise ConfigError(f"mutation must be one of {', '.join(MUTATIONS)} or package.module:Class, "
                              f"got {self.mutation!r}")
        for name in ["policy_lr", "critic_lr", "kl_target", "initial_beta", "obs_clip", "clip_range"]:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        for name in ["gamma", "gae_lambda"]:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        if self.periodic_eval_episodes > self.eval_episodes:
            raise ConfigError(f"periodic_eval_episodes ({self.periodic_eval_episodes}) must be at most eval_episodes "
                              f"({self.eval_episodes}), the width of the run file's evaluation rows")
        if not self.max_grad_norm >= 0:
            raise ConfigError(f"max_grad_norm must be zero or positive, got {self.max_grad_norm}")
        if not self.share_epsilon >= 0:
            raise ConfigError(f"share_epsilon must be zero or positive, got {self.share_epsilon}")
        if not self.share_ratio_cap > 0:
            raise ConfigError(f"share_ratio_cap must be positive (inf: no truncation), got {self.share_ratio_cap}")
        if any(size <= 0 for size in self.policy_hidden + self.critic_hidden):
            raise ConfigError("hidden layer sizes must be positive")
        if self.population <= 0:
            raise ConfigError(f"population must be positive, got {self.population}")
        if self.batch_steps % self.n_envs:
            raise ConfigError(f"batch_steps ({self.batch_steps}) must be a multiple of n_envs ({self.n_envs})")
        if self.population < n_ranks:
            raise ConfigError(f"population ({self.population}) must be at least the number of ranks ({n_ranks}), "
                              "each of which holds one member or more")
        for name in ["selector_epochs", "crossover_minibatch", "expert_steps", "dagger_epochs"]:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ["dagger_iterations", "dagger_steps"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or positive, got {getattr(self, name)}")
        for name in ["selector_lr", "dagger_lr"]:
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not 0 < self.selector_holdout < 1:
            raise ConfigError(f"selector_holdout must lie in (0, 1), got {self.selector_holdout}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must lie in (0, 1], got {self.top_fraction}")
        for name in ["diversity_weight_start", "diversity_weight_end"]:
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if set(self.components) - set("CSM") or len(set(self.components)) != len(self.components):
            raise ConfigError(f"components must be letters out of C, S, M, each at most once; got {self.components!r}")
        for name in ["expert_steps", "dagger_steps"]:
            if getattr(self, name) % self.n_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be a multiple of n_envs ({self.n_envs})")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'gpo-mpi[tensorboard]'")
        if self.algo == "gpo" and self.population < 2:
            raise ConfigError("gpo needs a population of at least 2 to breed")
        if self.algo == "gpo" and self.elites >= self.population:
            raise ConfigError(f"elites ({self.elites}) must be below the population ({self.population}): "
                              "at least one slot breeds a child")
        if self.iterations_per_round < 1:
            raise ConfigError(self._budget_advice())

    def _budget_advice(self) -> str:
        """Why total_steps does not fit, and which --total-steps or --rounds would."""
        breeding = self.children_per_round * self.crossover_steps_per_child  # steps of one crossover phase
        needed = self.n_rounds * self.steps_per_iteration + (self.n_rounds - 1) * breeding
        advice = f"total_steps ({self.total_steps:,}) is too small: "
        if self.algo != "gpo":
            return advice + f"one iteration of the population takes {needed:,} steps (--total-steps {needed})"
        advice += (f"{self.rounds} rounds of at least one iteration ({self.steps_per_iteration:,} steps) with "
                   f"a crossover of {breeding:,} steps between them need {needed:,} steps: give --total-steps "
                   f"{needed}")
        fitting_rounds = (self.total_steps + breeding) // (self.steps_per_iteration + breeding)
        if fitting_rounds >= 1:
            advice += f", or --rounds {fitting_rounds}"
        return advice

    # ------------------------------------------------ selection and crossover
    components: str = "CSM"
    """GPO components on: C state-space crossover (off: copy the fitter parent), S fitness selection (off: random pairs), M data sharing; "" is Base."""
    crossover_operator: Literal["state", "parameter"] = "state"
    """Crossover when C is on: by imitation in state space (the paper's), or each layer from a random parent."""
    diversity_weight_start: float = 0.0
    """Weight of diversity (KL) fitness against performance fitness in the first round (the paper's runs: 0)."""
    diversity_weight_end: float = 0.0
    """The same weight in the last round; linear in between."""
    elites: int = 0
    """The best `elites` members by return go on into the next round unchanged in their own slots (networks, optimizer, penalty weight and environments), and breed as parents too; the other slots get children (0: every slot gets a child, the paper's rule)."""
    distinct_couples: bool = True
    """An unordered couple breeds at most once per round; false allows (x, y) and (y, x) both."""
    child_init: Literal["fitter", "random"] = "fitter"
    """The child's initial policy and critic: copies of the fitter parent's, or fresh random networks."""
    child_beta: Literal["initial", "fitter"] = "initial"
    """The child's KL-penalty weight: initial_beta, or the fitter parent's (which may have grown far from it)."""
    child_optimizer: Literal["fresh", "fitter"] = "fresh"
    """The child's Adam state for mutation: fresh, or a copy of the fitter parent's moments and step count."""
    expert_choice: Literal["argmax", "sample"] = "argmax"
    """How the expert pi_H picks a parent at a state: the more likely under pi_S, or a draw from pi_S (the paper's)."""
    top_fraction: float = 0.6
    """Share of each parent's trajectories (best by return) that train the selector."""
    selector_hidden: tuple[int, ...] = (32, 32)
    """Hidden layer sizes of the selector pi_S (tanh units)."""
    selector_lr: float = 2e-3
    """Adam learning rate of the selector (the paper: 5e-4, whose held-out loss still falls at epoch 100, so that patience never stops it; 2e-3 reaches that loss in about 30 epochs, docs/crossover-selector.md)."""
    selector_epochs: int = 30
    """Passes over the parents' states when training the selector (at most, with selector_patience; the paper: 100)."""
    selector_patience: int = 5
    """Stop the selector once its loss on held-out states has not improved for this many epochs, keeping its best epoch (0: always selector_epochs, the paper's)."""
    selector_holdout: float = 0.1
    """Share of the selector's states held out to decide when it stops (only with selector_patience)."""
    selector_states: int = 4096
    """States per parent that train the selector, drawn evenly from its best trajectories of the whole round (0: all of them)."""
    crossover_minibatch: int = 512
    """Minibatch size of selector and DAgger training (the paper: 64; 512 with selector_patience 5 and 5 DAgger epochs bred children as good as the paper's settings at a seventh of the time, docs/crossover-hopper-settings.md)."""
    expert_steps: int = 5000
    """Expert transitions rolled out to start DAgger's dataset."""
    dagger_iterations: int = 10
    """DAgger iterations; each adds dagger_steps child transitions labelled by the expert."""
    dagger_steps: int = 500
    """Child transitions sampled per DAgger iteration."""
    dagger_epochs: int = 3
    """Passes over the aggregated dataset per DAgger iteration (the paper: 10; 3 breeds children as good as 5 at 13% less time, docs/crossover-selector.md)."""
    dagger_lr: float = 5e-4
    """Adam learning rate of the child during DAgger."""

    @property
    def n_policies(self) -> int:
        """Policies the run trains: Joint trains one, the others one per member."""
        return 1 if self.algo == "joint" else self.population

    def has(self, component: str) -> bool:
        """Whether GPO component C, S or M is on (always False outside --algo gpo)."""
        return self.algo == "gpo" and component in self.components

    @property
    def kl_states_per_member(self) -> int:
        """States each member adds to the KL matrix's pool (kl_states, or a share of kl_states_total)."""
        return max(1, self.kl_states_total // self.population) if self.kl_states_total else self.kl_states

    def shares_in(self, round_index: int) -> bool:
        """Whether component M shares data in this round (0-based), under `share_rounds`."""
        return self.has("M") and (self.share_rounds == 0 or round_index < self.share_rounds)

    @property
    def share_sets_need_kl(self) -> bool:
        """Whether S_i depends on the KL matrix: not when every member reads every other (no threshold
        and no nearest-first limit short of the whole population), so that measuring it again within a
        round would change nothing."""
        reads_every_member = self.share_max == 0 or self.share_max >= self.population - 1
        return not (math.isinf(self.share_epsilon) and reads_every_member)

    @property
    def crossover_steps_per_child(self) -> int:
        """Environment steps one state-space crossover takes (0 for the other operators)."""
        if self.has("C") and self.crossover_operator == "state":
            return self.expert_steps + self.dagger_iterations * self.dagger_steps
        return 0

    @property
    def children_per_round(self) -> int:
        """Slots that get a child at each breeding: all but the elites."""
        return self.population - self.elites

    @property
    def iterations_per_round(self) -> int:
        """Policy-gradient iterations in each round: the budget less the crossovers
        between rounds (there are rounds - 1), split evenly. Single and Joint run
        as one round."""
        if self.algo != "gpo":
            return self.total_steps // self.steps_per_iteration
        crossover_steps = (self.rounds - 1) * self.children_per_round * self.crossover_steps_per_child
        return max(0, self.total_steps - crossover_steps) // (self.rounds * self.steps_per_iteration)

    @property
    def n_rounds(self) -> int:
        """Rounds of the run: `rounds` for GPO, one for the baselines (which never breed)."""
        return self.rounds if self.algo == "gpo" else 1

    @property
    def steps_per_iteration(self) -> int:
        """Environment steps the whole population takes in one policy-gradient iteration."""
        return self.population * self.batch_steps

    @property
    def iterations(self) -> int:
        """Policy-gradient iterations of the whole run."""
        return self.iterations_per_round * self.n_rounds

    @property
    def episodes_per_periodic_evaluation(self) -> int:
        """Episodes per policy of an evaluation during training (eval_every)."""
        return self.periodic_eval_episodes or self.eval_episodes


# Fields that only GPO reads: Single and Joint differ in none of them.
GPO_ONLY_PREFIXES = ("share_", "critic_data", "kl_states", "child_", "expert_", "selector_", "dagger_", "crossover_",
                     "diversity_", "distinct_", "top_fraction", "components", "rounds", "elites")


def applies_to(field_name: str, algo: str) -> bool:
    """Whether runs of `algo` read the field."""
    return algo == "gpo" or not field_name.startswith(GPO_ONLY_PREFIXES)


PRESETS: dict[str, dict] = {
    "paper": dict(horizon=512),
    "paper-literal": dict(share_epsilon=0.1, share_max=0, share_every=0, share_rows=0, share_ratio_cap=math.inf,
                          critic_data="shared", expert_choice="sample", child_beta="fitter",
                          crossover_minibatch=64, selector_lr=5e-4, selector_epochs=100, selector_patience=0,
                          dagger_epochs=10),
    "smoke": dict(batch_steps=256, rounds=3, total_steps=20480, expert_steps=256, dagger_iterations=2,
                  dagger_steps=128, selector_epochs=5, dagger_epochs=5, critic_epochs=10, eval_episodes=2,
                  horizon=200),
    "minibatch": dict(minibatch=64, policy_lr=3e-4, critic_lr=1e-3, critic_epochs=10),
}
PRESET_PURPOSES: dict[str, str] = {
    "paper": "Section 6.3 of the paper: rllab's horizon of 512 steps.",
    "paper-literal": "The paper's rules read literally where gpo-mpi's defaults differ (docs/RESULTS.md measures "
                     "both): S_i fixed at each round's start with epsilon 0.1 and no limit, every foreign row in "
                     "every epoch, untruncated importance weights, critics fitted on the pooled data, the expert "
                     "drawing its parent from pi_S, children keeping the fitter parent's penalty weight, and "
                     "crossover's training at the paper's size (minibatch 64, all 100 selector epochs at learning "
                     "rate 5e-4, 10 DAgger epochs).",
    "smoke": "A whole GPO run (3 rounds, 2 crossovers, the final evaluation) in well under a minute on 2 cores: "
             "to see that everything works, not to learn.",
    "minibatch": "Minibatch PPO as in CleanRL and Stable-Baselines3 (32 minibatches of 64 per batch of 2048).",
}


def presets_table() -> str:
    """The presets as a markdown table: each one's purpose and the fields it sets (docs/configuration.md
    holds it; a test keeps the two equal)."""
    rows = ["| preset | what it is for | fields it sets |", "|---|---|---|"]
    for name, values in PRESETS.items():
        settings = ", ".join(f"`{field_name}={value}`" for field_name, value in values.items())
        rows.append(f"| `{name}` | {PRESET_PURPOSES[name]} | {settings} |")
    return "\n".join(rows) + "\n"


def presets_text() -> str:
    """`gpo-mpi presets`: each preset, its purpose and the fields it sets, as flags."""
    blocks = []
    for name, values in PRESETS.items():
        flags = " ".join(f"--{field_name.replace('_', '-')} {value}" for field_name, value in values.items())
        blocks.append(f"{name}: {PRESET_PURPOSES[name]}\n  {flags}")
    return "\n".join(blocks)


def _field_type(config_field: dataclasses.Field):
    return typing.get_type_hints(RunConfig)[config_field.name]


def _coerce(name: str, value, annotation):
    """Check a TOML value against the field's type; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            choices = ", ".join(repr(c) for c in typing.get_args(annotation))
            raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
        return tuple(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, float) and value.is_integer():  # total_steps = 1e6
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table of keyword arguments, got {value!r}")
        return dict(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unhandled config type {annotation}")  # a bug in this module


def read_toml(path: str) -> dict:
    """Fields from a TOML file, checked for unknown names and types."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    known = {f.name: f for f in fields(RunConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"config file {path}: unknown field(s) "
                          + ", ".join(name + did_you_mean(name, known) for name in unknown))
    return {name: _coerce(f"{path}: {name}", value, _field_type(known[name])) for name, value in raw.items()}


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def whole_number(text: str) -> int:
    """An integer flag's value: 1000000, 1_000_000 or 1e6 (a float that is a whole number)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"difficulty\": 0.5}}', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (`--batch-steps`), defaulting to 'not given'."""
    parser.add_argument("--config", metavar="FILE.toml", help="read fields from a TOML file; flags override it")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="start from a named set of fields (`gpo-mpi presets` lists them)")
    for config_field in fields(RunConfig):
        annotation = _field_type(config_field)
        flag = "--" + config_field.name.replace("_", "-")
        help_text = _FIELD_DOCS.get(config_field.name, "").replace("%", "%%")  # argparse formats help with %
        default = {} if config_field.default is dataclasses.MISSING else config_field.default
        default_text = f" (default: {default})".replace("%", "%%")
        origin = typing.get_origin(annotation)
        if origin is Literal:
            parser.add_argument(flag, choices=typing.get_args(annotation), default=None,
                                help=help_text + default_text)
        elif origin is tuple:
            parser.add_argument(flag, type=whole_number, nargs="+", default=None, metavar="N",
                                help=help_text + default_text)
        elif annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text + default_text)
        elif annotation is dict:
            parser.add_argument(flag, type=_json_object, default=None, metavar="JSON", help=help_text + default_text)
        else:
            parser.add_argument(flag, type=whole_number if annotation is int else annotation, default=None,
                                help=help_text + default_text)


DEFAULT_POPULATION = 8  # the paper's


def from_arguments(arguments: argparse.Namespace, n_ranks: int) -> RunConfig:
    """Defaults, then preset, then TOML file, then flags (see `from_values`)."""
    values: dict = {}
    if arguments.preset:
        values.update(PRESETS[arguments.preset])
    if arguments.config:
        values.update(read_toml(arguments.config))
    for config_field in fields(RunConfig):
        given = getattr(arguments, config_field.name, None)
        if given is not None:
            values[config_field.name] = given
    return from_values(values, n_ranks)


def from_values(values: dict, n_ranks: int) -> RunConfig:
    """The checked config of a run on `n_ranks` ranks from field values (the rest default):
    population 0 becomes 8 or the rank count, an empty `out` the run's own file name."""
    known = {f.name: f for f in fields(RunConfig)}
    for name in values:
        if name not in known:
            raise ConfigError(f"unknown field {name}{did_you_mean(name, known)}")
    values = {name: _coerce(name, value, _field_type(known[name])) for name, value in values.items()}
    if values.get("population", 0) == 0:
        values["population"] = max(DEFAULT_POPULATION, n_ranks)
    config = RunConfig(**values)
    config.validate(n_ranks)
    if not config.out:
        config = dataclasses.replace(config, out=default_run_file(config))
    return config


def default_run_file(config: RunConfig) -> str:
    """ENV-ALGO-sSEED.h5, e.g. Hopper-v5-gpo-s0.h5 (characters other than letters, digits, '.', '_' and
    '-' in the environment's name become '_'), so that runs in one directory do not share a file."""
    env = re.sub(r"[^A-Za-z0-9._-]", "_", config.env)
    return f"{env}-{config.algo}-s{config.seed}.h5"


def to_dict(config: RunConfig) -> dict:
    """The config as plain values, for the run file."""
    return dataclasses.asdict(config)


def reference_table() -> str:
    """The configuration reference as a markdown table, from the fields and their docstrings
    (docs/configuration.md holds it; a test keeps the two equal)."""
    rows = ["| field | flag | default | what |", "|---|---|---|---|"]
    for config_field in fields(RunConfig):
        default = config_field.default if config_field.default is not dataclasses.MISSING else \
            config_field.default_factory()
        shown = ("`\"\"`" if default == "" else f"`{default}`") if isinstance(default, str) else f"`{default}`"
        if isinstance(default, int) and not isinstance(default, bool) and abs(default) >= 10_000:
            shown = f"`{default:_}`"
        doc = _FIELD_DOCS[config_field.name].replace("|", "\\|")
        rows.append(f"| `{config_field.name}` | `--{config_field.name.replace('_', '-')}` | {shown} | {doc} |")
    return "\n".join(rows) + "\n"


def _field_docs() -> dict[str, str]:
    """The docstring under each field, read from this module's source."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(RunConfig))
    docs = {}
    body = tree.body[0].body
    for statement, following in zip(body, body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[statement.target.id] = following.value.value
    return docs


_FIELD_DOCS = _field_docs()
