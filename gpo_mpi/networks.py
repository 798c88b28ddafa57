"""The networks of SPEC.md: Gaussian MLP policy, critic and crossover's selector, all tanh.

Parameters travel between ranks as one flat float32 vector
(`flat_parameters` / `load_flat_parameters`), never as pickled state dicts.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn


def mlp(in_size: int, hidden: Sequence[int], out_size: int, out_gain: float) -> nn.Sequential:
    """tanh MLP with orthogonal weights and zero biases; `out_gain` scales the
    last layer (small for the policy mean, so early actions stay near 0)."""
    sizes = [in_size, *hidden, out_size]
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        is_last = index == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=out_gain if is_last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not is_last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Diagonal-Gaussian log-density summed over the last axis: the same number as
    torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1),
    without building a distribution object (a third of the cost of a PPO
    minibatch's forward pass on these small networks)."""
    return (-0.5 * ((actions - mean) * torch.exp(-log_std)) ** 2 - log_std - _HALF_LOG_TWO_PI).sum(-1)


_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class GaussianPolicy(nn.Module):
    """pi(a|s) = N(mean(s), diag(exp(log_std))^2) with a state-independent log-std."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), init_log_std: float = 0.0):
        super().__init__()
        self.mean_net = mlp(obs_dim, hidden, act_dim, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (batch, act_dim) and log-std (act_dim,)."""
        return self.mean_net(obs), self.log_std

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) summed over action dimensions, one value per row."""
        mean, log_std = self(obs)
        return gaussian_log_prob(mean, log_std, actions)

    def numpy_mean(self):
        """A function obs -> mean action computed with numpy copies of the
        current weights: per environment step it costs a quarter of a torch
        forward, which matters when the policy is queried ~1M times a run.
        Take a new one after every update."""
        return numpy_forward(self.mean_net)


def numpy_forward(net: nn.Sequential):
    """A function obs -> output of an `mlp`, on numpy copies of its current weights."""
    linears = [(layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy())
               for layer in net if isinstance(layer, nn.Linear)]

    def forward(obs: np.ndarray) -> np.ndarray:
        hidden = obs
        for weight, bias in linears[:-1]:
            hidden = np.tanh(hidden @ weight + bias)
        weight, bias = linears[-1]
        return hidden @ weight + bias

    return forward


def numpy_forward_stacked(nets: Sequence[nn.Sequential]):
    """A function obs -> [output of each `mlp`], computed as one forward of a single wider network: the
    first layers side by side and every later layer block-diagonal, so that one matrix product per layer
    serves all of them (crossover's expert asks the selector and both parents at every step). Networks
    of different depths are computed one after the other."""
    layers = [[(layer.weight.detach().numpy().T, layer.bias.detach().numpy()) for layer in net
               if isinstance(layer, nn.Linear)] for net in nets]
    if len({len(net_layers) for net_layers in layers}) > 1:
        forwards = [numpy_forward(net) for net in nets]
        return lambda obs: [forward(obs) for forward in forwards]
    stacked = []
    for depth, same_depth in enumerate(zip(*layers)):
        weights, biases = zip(*same_depth)
        if depth == 0:  # every network reads the same observation
            weight = np.concatenate(weights, axis=1)
        else:  # each network reads its own hidden units only
            weight = np.zeros((sum(w.shape[0] for w in weights), sum(w.shape[1] for w in weights)), np.float32)
            rows = np.cumsum([0] + [w.shape[0] for w in weights])
            columns = np.cumsum([0] + [w.shape[1] for w in weights])
            for index, w in enumerate(weights):
                weight[rows[index]:rows[index + 1], columns[index]:columns[index + 1]] = w
        stacked.append((np.ascontiguousarray(weight), np.concatenate(biases)))
    output_ends = np.cumsum([w.shape[1] for w, _ in (net_layers[-1] for net_layers in layers)])[:-1]

    def forward(obs: np.ndarray) -> list[np.ndarray]:
        hidden = obs
        for weight, bias in stacked[:-1]:
            hidden = np.tanh(hidden @ weight + bias)
        weight, bias = stacked[-1]
        return np.split(hidden @ weight + bias, output_ends, axis=1)

    return forward


class Selector(nn.Module):
    """pi_S(parent | s) of crossover: logits over the two parents (softmax gives the probabilities)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (32, 32)):
        super().__init__()
        self.logit_net = mlp(obs_dim, hidden, 2, out_gain=0.01)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits over the two parents, one row per state."""
        return self.logit_net(obs)


class Critic(nn.Module):
    """V(s) as a tanh MLP."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (32, 32)):
        super().__init__()
        self.value_net = mlp(obs_dim, hidden, 1, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) per row."""
        return self.value_net(obs).squeeze(-1)


def flat_parameters(module: nn.Module) -> np.ndarray:
    """All parameters as one float32 vector (a copy), in registration order."""
    return nn.utils.parameters_to_vector(module.parameters()).detach().numpy().astype(np.float32, copy=True)


def load_flat_parameters(module: nn.Module, vector: np.ndarray) -> None:
    """Inverse of flat_parameters."""
    expected = sum(p.numel() for p in module.parameters())
    if vector.shape != (expected,):
        raise ValueError(f"flat parameter vector has shape {vector.shape}, the module needs ({expected},)")
    # vector_to_parameters makes the parameters views of the tensor it gets: give it a
    # copy, or the module and the caller's array would share (and overwrite) memory.
    nn.utils.vector_to_parameters(torch.tensor(vector, dtype=torch.float32), module.parameters())
