"""What every genetic operator shares about a learner, below them all: a member's
networks, optimizers and penalty weight (with its own save and load, so a
checkpoint need not know its fields), the Adam every optimizer is, moving
Adam's state between ranks, the differentiable diagonal-Gaussian KL and the
minibatch order.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from .config import ConfigError, RunConfig
from .networks import Critic, GaussianPolicy, flat_parameters


class Adam(torch.optim.Adam):
    """torch's Adam, fused, with the same arithmetic and state.

    torch.optim wraps `step`, `zero_grad`, `add_param_group`, `state_dict` and
    `load_state_dict` so that their first call imports torch's compiler
    (torch._dynamo, about 1.2 s, more than a tiny run's whole training) only to
    keep torch.compile out of them. gpo-mpi never compiles, so this class calls
    the methods underneath those wrappers; `step` keeps the one thing its
    wrapper does besides, running without autograd.
    """
    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
    load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)
    _adam_step = inspect.unwrap(torch.optim.Adam.step)

    def __init__(self, parameters, lr: float):
        super().__init__(parameters, lr=lr, fused=True)

    def step(self, closure=None):
        """One Adam step on the parameters' gradients, outside autograd."""
        with torch.no_grad():
            return self._adam_step(closure)


@dataclass
class Member:
    """One population member: its networks, optimizers and penalty weight."""
    index: int
    policy: GaussianPolicy
    critic: Critic
    policy_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer
    beta: float
    generator: torch.Generator  # minibatch order

    @classmethod
    def create(cls, index: int, obs_dim: int, act_dim: int, config: RunConfig, seed: int) -> "Member":
        """A fresh member for slot `index`: its initial weights, optimizers and minibatch order from `seed` alone."""
        torch.manual_seed(seed)  # the initial weights depend on the member's seed alone
        policy = GaussianPolicy(obs_dim, act_dim, config.policy_hidden, config.init_log_std)
        critic = Critic(obs_dim, config.critic_hidden)
        return cls(index=index, policy=policy, critic=critic,
                   policy_optimizer=Adam(policy.parameters(), config.policy_lr),
                   critic_optimizer=Adam(critic.parameters(), config.critic_lr),
                   beta=config.initial_beta, generator=torch.Generator().manual_seed(seed))

    def state(self) -> dict:
        """Everything to go on exactly from here, for pickling (its tensors are the member's own until then)."""
        return dict(index=self.index, policy=self.policy.state_dict(), critic=self.critic.state_dict(),
                    policy_optimizer=self.policy_optimizer.state_dict(),
                    critic_optimizer=self.critic_optimizer.state_dict(), beta=self.beta,
                    generator=self.generator.get_state())

    def load_state(self, state: dict) -> None:
        """Inverse of `state`, into a member created for the same slot."""
        if state["index"] != self.index:
            raise ConfigError(f"checkpoint holds member {state['index']} where member {self.index} was expected")
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.beta = state["beta"]
        self.generator.set_state(state["generator"])


class MemberRows:
    """Members as float32 rows, to move between ranks by one collective: what a child may inherit from a
    parent (policy, critic, beta, and with `optimizers` both Adam states). beta's float64 travels as its
    two 32-bit halves, bit for bit."""

    def __init__(self, template: Member, optimizers: bool):
        self.parts = {"policy": lambda m: flat_parameters(m.policy), "critic": lambda m: flat_parameters(m.critic),
                      "beta": lambda m: np.array([m.beta], dtype=np.float64).view(np.float32)}
        if optimizers:
            self.parts["policy_optimizer"] = lambda m: adam_state(m.policy_optimizer)
            self.parts["critic_optimizer"] = lambda m: adam_state(m.critic_optimizer)
        self.widths = [len(part(template)) for part in self.parts.values()]

    def row(self, member: Member) -> np.ndarray:
        return np.concatenate([part(member) for part in self.parts.values()])

    def columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The parts of (members x row) rows by name, beta back as float64 (members, 1)."""
        columns = dict(zip(self.parts, np.split(rows, np.cumsum(self.widths)[:-1], axis=1)))
        columns["beta"] = np.ascontiguousarray(columns["beta"]).view(np.float64)
        return columns


def adam_state(optimizer: torch.optim.Adam) -> np.ndarray:
    """An Adam optimizer's state as one flat float32 vector: its step count, then
    every parameter's first moments, then every parameter's second moments
    (zeros before its first step), to move between ranks like parameters."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    states = [optimizer.state.get(p, {}) for p in parameters]
    step = float(states[0]["step"]) if "step" in states[0] else 0.0
    moments = [state[name].reshape(-1) if name in state else torch.zeros(p.numel())
               for name in ("exp_avg", "exp_avg_sq") for p, state in zip(parameters, states)]
    return torch.cat([torch.tensor([step]), *moments]).numpy().astype(np.float32)


def load_adam_state(optimizer: torch.optim.Adam, vector: np.ndarray) -> None:
    """Inverse of adam_state (a step count of 0 leaves the optimizer fresh)."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if not vector[0]:
        return
    sizes = [p.numel() for p in parameters]
    first, second = np.split(vector[1:], 2)
    for p, exp_avg, exp_avg_sq in zip(parameters, np.split(first, np.cumsum(sizes)[:-1]),
                                      np.split(second, np.cumsum(sizes)[:-1])):
        optimizer.state[p] = dict(step=torch.tensor(float(vector[0])),
                                  exp_avg=torch.tensor(exp_avg.reshape(p.shape)),
                                  exp_avg_sq=torch.tensor(exp_avg_sq.reshape(p.shape)))


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> torch.Tensor:
    """KL[p || q] per row for diagonal Gaussians, differentiable (torch twin of kernels.diag_gaussian_kl)."""
    return (log_std_q - log_std_p + (torch.exp(2 * log_std_p) + (mean_p - mean_q) ** 2)
            / (2 * torch.exp(2 * log_std_q)) - 0.5).sum(-1)


def minibatch_indices(n_rows: int, size: int, generator: torch.Generator):
    """Index tensors covering a random permutation of the rows in chunks of `size`
    (the last may be smaller); size 0 means all rows at once, in order."""
    if size == 0 or size >= n_rows:
        yield torch.arange(n_rows)
        return
    order = torch.randperm(n_rows, generator=generator)
    for start in range(0, n_rows, size):
        yield order[start:start + size]
