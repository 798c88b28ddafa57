"""CROSSOVER: a child from two parents, by imitation in state space.

State-space crossover (the paper's): train a selector pi_S(parent | s) by
return-weighted maximum likelihood on the parents' best trajectories of
their last mutation round; the expert pi_H picks a parent with pi_S at every
state (the more likely one, or a draw) and acts with that parent's Gaussian;
DAgger then distills pi_H into a child network of the parents' shape,
minimizing KL[pi_child(.|s) || pi_parent(s)(.|s)] in closed form. Two
comparison operators: parameter-space crossover (every layer from a random
parent) and copying the fitter parent (the ablation base).

Plain functions on torch modules and numpy arrays; no MPI. Every rollout
goes through the caller's `Sampler` and is counted by the caller.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import seeds
from .config import RunConfig
from .learner import Adam, Member, gaussian_kl, load_adam_state, minibatch_indices
from .networks import GaussianPolicy, Selector, load_flat_parameters, numpy_forward_stacked
from .rollout import Batch, EnvSpec, ObsNormalizer, Sampler


def recorder_stride(config: RunConfig) -> int:
    """How sparsely a member's sampler keeps the states of its episodes for the selector: about twice the
    selector's states per member and round (every state when it takes all)."""
    if not config.selector_states:
        return 1
    return max(1, config.iterations_per_round * config.batch_steps // (2 * config.selector_states))


def trajectory_bounds(batch: Batch) -> list[tuple[int, int]]:
    """(start, end) rows of each trajectory in a batch: runs ending at an
    episode end or a column cut (a cut-off trajectory counts as one)."""
    ends = np.flatnonzero(batch.terminated | batch.truncated) + 1
    if not len(ends) or ends[-1] != batch.n_steps:  # a batch sampled here always ends flagged
        ends = np.append(ends, batch.n_steps)
    starts = np.concatenate([[0], ends[:-1]])
    return list(zip(starts.tolist(), ends.tolist()))


def batch_trajectories(batch: Batch) -> list[tuple[np.ndarray, float]]:
    """A batch's trajectories as (states, return), cut-off ones included: the
    selector's data when a parent finished no episode in its whole round."""
    return [(batch.obs[start:end], float(batch.rewards[start:end].sum(dtype=np.float64)))
            for start, end in trajectory_bounds(batch)]


def selector_data(trajectories: list[tuple[np.ndarray, float]], fraction: float, max_states: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """States of the best `fraction` of the trajectories by return, with each
    state's trajectory return; at most `max_states` of them (0: all), drawn
    without replacement, in trajectory order."""
    returns = np.array([episode_return for _, episode_return in trajectories], dtype=np.float64)
    keep = np.argsort(-returns, kind="stable")[:max(1, int(np.ceil(fraction * len(trajectories))))]
    states = np.concatenate([trajectories[i][0] for i in keep])
    state_returns = np.concatenate([np.full(len(trajectories[i][0]), returns[i]) for i in keep])
    if 0 < max_states < len(states):
        chosen = np.sort(rng.choice(len(states), max_states, replace=False))
        states, state_returns = states[chosen], state_returns[chosen]
    return states, state_returns


def selector_rows(member_index: int, trajectories: list[tuple[np.ndarray, float]], last_batch: Batch,
                  config: RunConfig, round_index: int) -> np.ndarray:
    """A parent's selector data as rows [member, return, state...], to travel to the ranks that breed its
    children: `selector_data` of its trajectories of the round (of its last batch's fragments, if it finished
    no episode in the round), drawn from its own stream."""
    trajectories = trajectories or batch_trajectories(last_batch)
    rng = seeds.selector_states(config.seed, member_index, round_index)
    states, returns = selector_data(trajectories, config.top_fraction, config.selector_states, rng)
    return np.column_stack([np.full(len(states), member_index), returns, states])


def selector_data_by_member(rows: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Received `selector_rows` of several parents: each parent's (states, returns) by member index."""
    members = rows[:, 0].astype(int)
    return {index: (np.ascontiguousarray(rows[members == index, 2:], dtype=np.float32), rows[members == index, 1])
            for index in np.unique(members)}


def return_weights(state_returns: np.ndarray) -> np.ndarray:
    """Trajectory returns min-max normalized to [0, 1], then scaled to mean 1
    (all equal: all 1), so the selector's loss has the same scale every round."""
    span = state_returns.max() - state_returns.min()
    weights = (state_returns - state_returns.min()) / span if span > 0 else np.ones_like(state_returns)
    return weights / max(weights.mean(), 1e-12)


def train_selector(selector: Selector, states: np.ndarray, parent_labels: np.ndarray, weights: np.ndarray,
                   config: RunConfig, generator: torch.Generator) -> float:
    """Weighted maximum likelihood: minimize -E_s[w_s log pi_S(parent_of_s | s)] for up to
    `selector_epochs` epochs. With `selector_patience`, a `selector_holdout` share of the states
    is held out, training stops once their loss has not improved for that many epochs, and the
    selector keeps its best epoch's weights. Returns the loss of the kept selector on the
    held-out states, or without them the last epoch's mean training loss."""
    optimizer = Adam(selector.parameters(), config.selector_lr)
    states_t = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32))
    labels_t = torch.from_numpy(parent_labels.astype(np.int64))
    weights_t = torch.from_numpy(weights.astype(np.float32))

    def weighted_nll(rows: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(selector(states_t[rows]), dim=-1)
        return -(weights_t[rows] * log_probs.gather(1, labels_t[rows, None]).squeeze(1)).mean()

    order = torch.randperm(len(states_t), generator=generator) if config.selector_patience else None
    n_held_out = int(round(config.selector_holdout * len(states_t))) if config.selector_patience else 0
    if n_held_out == 0 or n_held_out == len(states_t):
        training_rows, held_out_rows = torch.arange(len(states_t)), None
    else:
        training_rows, held_out_rows = order[n_held_out:], order[:n_held_out]
    best_loss, best_weights, stale_epochs = math.inf, None, 0
    for _ in range(config.selector_epochs):
        losses = []
        for rows in minibatch_indices(len(training_rows), config.crossover_minibatch, generator):
            loss = weighted_nll(training_rows[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if held_out_rows is None:
            continue
        with torch.no_grad():
            held_out_loss = weighted_nll(held_out_rows).item()
        if held_out_loss < best_loss:
            best_loss, best_weights, stale_epochs = held_out_loss, copy.deepcopy(selector.state_dict()), 0
        else:
            stale_epochs += 1
            if stale_epochs >= config.selector_patience:
                break
    if best_weights is None:
        return float(np.mean(losses))
    selector.load_state_dict(best_weights)
    return best_loss


class Expert:
    """pi_H: at each state, a parent chosen with pi_S, then that parent's Gaussian.

    `choice` "argmax" takes the more likely parent (ties: the first), so a
    state where pi_S is unsure is labelled by one parent's action rather than,
    over many visits, by the average of both; "sample" draws it from pi_S.
    Selector and parents run as one numpy forward on copies of their weights
    (the networks do not change during a crossover), as the sampler's
    policies do.
    """

    def __init__(self, selector: Selector, parents: tuple[GaussianPolicy, GaussianPolicy], choice: str = "sample"):
        self.choice = choice
        # obs -> [selector logits, first parent's mean, second parent's mean]
        self.forward = numpy_forward_stacked([selector.logit_net, parents[0].mean_net, parents[1].mean_net])
        self.parent_log_stds = [parent.log_std.detach().numpy().copy() for parent in parents]

    def _choose(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.choice == "argmax":
            return (logits[:, 1] > logits[:, 0]).astype(np.int64)
        second = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax's second column
        return (rng.random(len(logits)) < second).astype(np.int64)

    def choose_parents(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """0 for the first parent, 1 for the second, for every row."""
        return self._choose(self.forward(obs)[0], rng)

    def labels(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The chosen parent's mean and log-std at every row: the imitation targets."""
        logits, first_means, second_means = self.forward(obs)
        second = self._choose(logits, rng)[:, None] == 1
        means = np.where(second, second_means, first_means)
        log_stds = np.where(second, self.parent_log_stds[1], self.parent_log_stds[0])
        return means.astype(np.float32), log_stds.astype(np.float32)

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Actions drawn from the Gaussian of the parent chosen at each state."""
        means, log_stds = self.labels(obs, rng)
        return means + np.exp(log_stds) * rng.standard_normal(means.shape)


def imitation_epochs(child: GaussianPolicy, optimizer: torch.optim.Optimizer, states: torch.Tensor,
                     target_means: torch.Tensor, target_log_stds: torch.Tensor, epochs: int, minibatch: int,
                     generator: torch.Generator) -> float:
    """Minimize the closed-form KL[pi_child(.|s) || target(.|s)]; returns the last epoch's mean loss."""
    for _ in range(epochs):
        losses = []
        for rows in minibatch_indices(len(states), minibatch, generator):
            mean, log_std = child(states[rows])
            loss = gaussian_kl(mean, log_std, target_means[rows], target_log_stds[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return float(np.mean(losses))


@dataclass
class CrossoverRecord:
    env_steps: int          # environment steps the crossover took
    selector_loss: float
    imitation_loss: float   # KL to the expert on the aggregated data, last DAgger iteration
    second_parent_share: float  # fraction of expert-labelled states given to the second parent


def state_space_crossover(parent_x: GaussianPolicy, parent_y: GaussianPolicy,
                          data_x: tuple[np.ndarray, np.ndarray], data_y: tuple[np.ndarray, np.ndarray],
                          child: GaussianPolicy, sampler: Sampler, normalizer: ObsNormalizer, config: RunConfig,
                          seed: int) -> CrossoverRecord:
    """Train `child` (already initialized) to imitate the two parents in state space.

    `data_x` and `data_y` are each parent's (states, trajectory returns) from
    `selector_data`."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    (states_x, returns_x), (states_y, returns_y) = data_x, data_y
    obs_dim, act_dim = states_x.shape[1], parent_x.log_std.shape[0]

    # 1-2. The selector, from the parents' best trajectories.
    states = np.concatenate([states_x, states_y])
    labels = np.concatenate([np.zeros(len(states_x)), np.ones(len(states_y))])
    weights = return_weights(np.concatenate([returns_x, returns_y]))
    torch.manual_seed(seed)
    selector = Selector(obs_dim, config.selector_hidden)
    selector_loss = train_selector(selector, states, labels, weights, config, generator)
    expert = Expert(selector, (parent_x, parent_y), config.expert_choice)

    # 3. Expert transitions, labelled by the expert, start the dataset.
    expert_batch, _ = sampler.run(expert.act, normalizer, config.expert_steps, act_dim)
    states = expert_batch.obs
    target_means, target_log_stds = expert.labels(states, rng)

    # 4. DAgger: each iteration the child samples, the expert labels, the child
    # learns on everything gathered so far.
    optimizer = Adam(child.parameters(), config.dagger_lr)
    imitation_loss = float("nan")
    for _ in range(config.dagger_iterations):
        child_batch, _ = sampler.run(child_sampling_actions(child), normalizer, config.dagger_steps, act_dim)
        new_means, new_log_stds = expert.labels(child_batch.obs, rng)
        states = np.concatenate([states, child_batch.obs])
        target_means = np.concatenate([target_means, new_means])
        target_log_stds = np.concatenate([target_log_stds, new_log_stds])
        imitation_loss = imitation_epochs(child, optimizer, torch.from_numpy(states), torch.from_numpy(target_means),
                                          torch.from_numpy(target_log_stds), config.dagger_epochs,
                                          config.crossover_minibatch, generator)
    second_share = float(expert.choose_parents(expert_batch.obs, rng).mean())
    return CrossoverRecord(env_steps=config.crossover_steps_per_child, selector_loss=selector_loss,
                           imitation_loss=imitation_loss, second_parent_share=second_share)


def operator_of(config: RunConfig) -> str:
    """The run's crossover: "copy" without component C (the ablation base: the child is its fitter
    parent), else config.crossover_operator ("state" or "parameter")."""
    return config.crossover_operator if config.has("C") else "copy"


def parent_policies(parents: dict[str, np.ndarray], pair: tuple[int, int], obs_dim: int, act_dim: int,
                    config: RunConfig) -> tuple[GaussianPolicy, GaussianPolicy]:
    """The two parents' policies from their rows (`parents`: learner.MemberRows' columns by member)."""
    policies = []
    for index in pair:
        policy = GaussianPolicy(obs_dim, act_dim, config.policy_hidden)
        load_flat_parameters(policy, parents["policy"][index])
        policies.append(policy)
    return tuple(policies)


def newborn(index: int, obs_dim: int, act_dim: int, parents: dict[str, np.ndarray], fitter: int,
            config: RunConfig, seed: int) -> Member:
    """Member `index`'s child before crossover trains its policy: networks, optimizers and minibatch order
    from the child's seed, then what it inherits from its fitter parent's row (`child_init`: its networks;
    `child_beta`: its beta; `child_optimizer`: its Adam states, present in `parents` only then)."""
    member = Member.create(index, obs_dim, act_dim, config, seed)
    if config.child_init == "fitter":
        load_flat_parameters(member.policy, parents["policy"][fitter])
        load_flat_parameters(member.critic, parents["critic"][fitter])
    member.beta = float(parents["beta"][fitter, 0]) if config.child_beta == "fitter" else config.initial_beta
    if "policy_optimizer" in parents:
        load_adam_state(member.policy_optimizer, parents["policy_optimizer"][fitter])
        load_adam_state(member.critic_optimizer, parents["critic_optimizer"][fitter])
    return member


def make_child(operator: str, parents: tuple[GaussianPolicy, GaussianPolicy], fitter: int,
               parent_data: tuple | None, child: GaussianPolicy, env: EnvSpec, normalizer: ObsNormalizer,
               config: RunConfig, seed: int, name: str) -> tuple[float, float, float]:
    """CROSSOVER of `parents` into `child` (which holds its initial networks) by `operator` (see
    `operator_of`); `fitter` (0 or 1) is the fitter parent, `parent_data` each parent's selector data
    (state-space only). State-space crossover acts in environments of its own, seeded from `seed`.
    Returns the diagnostics: selector loss, imitation loss and the second parent's share (NaN where
    the operator has none)."""
    if operator == "copy":
        copy_module(parents[fitter], child)
        return (np.nan, np.nan, np.nan)
    if operator == "parameter":
        parameter_space_crossover(parents[0], parents[1], child, np.random.default_rng(seed))
        return (np.nan, np.nan, np.nan)
    sampler = Sampler(env, config.n_envs, seeds.crossover_environments(seed), name)
    try:
        record = state_space_crossover(*parents, *parent_data, child, sampler, normalizer, config, seed)
    finally:
        sampler.close()
    return (record.selector_loss, record.imitation_loss, record.second_parent_share)


def breed(index: int, pair: tuple[int, int], fitter: int, parents: dict[str, np.ndarray], parent_data: dict | None,
          obs_dim: int, act_dim: int, env: EnvSpec, normalizer: ObsNormalizer, config: RunConfig,
          round_index: int) -> tuple[Member, tuple[float, float, float]]:
    """Slot `index`'s child of `pair` in this round: its start (`newborn`, from its fitter parent), then the
    run's crossover into its policy. `parents`: the parents' rows by member (learner.MemberRows' columns);
    `parent_data`: each parent's selector data by member (state-space crossover only). Returns the child and
    make_child's diagnostics."""
    seed = seeds.child(config.seed, index, round_index)
    parent_pair = parent_policies(parents, pair, obs_dim, act_dim, config)
    member = newborn(index, obs_dim, act_dim, parents, fitter, config, seed)
    data_pair = (parent_data[pair[0]], parent_data[pair[1]]) if parent_data is not None else None
    diagnostics = make_child(operator_of(config), parent_pair, pair.index(fitter), data_pair, member.policy, env,
                             normalizer, config, seed, f"crossover for member {index}")
    return member, diagnostics


def child_sampling_actions(policy: GaussianPolicy):
    """The policy's own Gaussian as a sampler's action function."""
    mean_of = policy.numpy_mean()
    std = policy.log_std.detach().exp().numpy()
    return lambda obs, rng: mean_of(obs) + std * rng.standard_normal((len(obs), len(std)))


def parameter_space_crossover(parent_x: nn.Module, parent_y: nn.Module, child: nn.Module,
                              rng: np.random.Generator) -> dict[str, int]:
    """Copy every parameter tensor of the child from a random parent, keeping each
    layer's weight and bias together. Returns which parent (0 or 1) gave each layer."""
    layers: dict[str, int] = {}
    for name, _ in child.named_parameters():
        layer = name.rsplit(".", 1)[0] if "." in name else name
        layers.setdefault(layer, int(rng.integers(2)))
    sources = dict(zip((0, 1), (dict(parent_x.named_parameters()), dict(parent_y.named_parameters()))))
    with torch.no_grad():
        for name, parameter in child.named_parameters():
            layer = name.rsplit(".", 1)[0] if "." in name else name
            parameter.copy_(sources[layers[layer]][name])
    return layers


def copy_module(source: nn.Module, target: nn.Module) -> None:
    """target's parameters become a copy of source's (same architecture)."""
    target.load_state_dict(copy.deepcopy(source.state_dict()))
