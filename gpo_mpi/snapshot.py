"""Environment snapshots: a checkpoint saves each environment's state, so that
a resumed run continues the very episodes the stopped one was in.

`capture(env)` returns a snapshot (numbers, arrays, lists and dicts: what
gpo_mpi.statefile stores without pickle) and `restore(env, snapshot)`
puts it into another environment made from the same spec. What is saved:

- the wrappers' counters (gymnasium's TimeLimit step count, OrderEnforcing's
  reset flag, the passive checker's flags);
- the environment's random generator (reset noise);
- MuJoCo environments (gymnasium's and gpo-mpi's hilly ones): MuJoCo's
  integration state (`mj_getState`: time, positions, velocities, actuator
  state, controls, solver warm start), which decides every later `mj_step`
  exactly, plus every fixed-size array of `mjData`, because some tasks read
  positions left by the last step before they step again (Ant's torso
  position before the step);
- gymnasium's classic-control environments: their plain-data attributes;
- any other environment: whatever it returns from `gpo_get_state()`, which
  `gpo_set_state(state)` must put back (the protocol a user environment
  implements to be captured; see docs/checkpoints.md).

An environment none of this covers (or wrapped in an unknown wrapper) is
not capturable: `capturable(env)` says so, and gpo-mpi then restarts the
environments at every checkpoint instead, as a seed-determined fresh start.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

PROTOCOL = ("gpo_get_state", "gpo_set_state")
# The per-episode state of the wrappers gym.make adds; other wrappers need the protocol.
WRAPPER_FIELDS = {
    gym.wrappers.TimeLimit: ("_elapsed_steps",),
    gym.wrappers.OrderEnforcing: ("_has_reset",),
    gym.wrappers.PassiveEnvChecker: ("checked_reset", "checked_step", "checked_render"),
}
PLAIN_TYPES = (np.ndarray, np.generic, bool, int, float, type(None))


def _chain(env: gym.Env) -> list[gym.Env]:
    """The environment and its wrappers, outermost first."""
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def _kind(env: gym.Env) -> str | None:
    """How the innermost environment is captured, or None if it cannot be."""
    if all(hasattr(env, name) for name in PROTOCOL):
        return "protocol"
    module = type(env).__module__
    if module.startswith(("gymnasium.envs.mujoco", "gpo_mpi.terrain")) and hasattr(env, "data"):
        return "mujoco"
    if module.startswith("gymnasium.envs.classic_control"):
        return "plain"
    return None


def capturable(env: gym.Env) -> bool:
    """Whether `capture` can hold this environment: every wrapper known or following the
    protocol, and an inner environment of a kind it knows."""
    *wrappers, inner = _chain(env)
    known = all(type(w) in WRAPPER_FIELDS or all(hasattr(w, name) for name in PROTOCOL) for w in wrappers)
    return known and _kind(inner) is not None


def _mujoco_arrays(data) -> dict[str, np.ndarray]:
    arrays = {}
    for name in dir(data):
        if not name.startswith("_"):
            value = getattr(data, name)
            if isinstance(value, np.ndarray):
                arrays[name] = value
    return arrays


def _capture_one(env: gym.Env, kind: str | None) -> dict:
    if type(env) in WRAPPER_FIELDS:
        return {name: getattr(env, name) for name in WRAPPER_FIELDS[type(env)]}
    if kind == "protocol" or kind is None:  # a wrapper that implements the protocol
        return {"protocol": env.gpo_get_state()}
    state = {"rng": env.np_random.bit_generator.state}
    if kind == "mujoco":
        import mujoco
        integration = np.empty(mujoco.mj_stateSize(env.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(env.model, env.data, integration, mujoco.mjtState.mjSTATE_INTEGRATION)
        state["integration"] = integration
        state["arrays"] = {name: value.copy() for name, value in _mujoco_arrays(env.data).items()}
    else:
        state["attributes"] = {name: (value.copy() if isinstance(value, np.ndarray) else value)
                               for name, value in vars(env).items()
                               if isinstance(value, PLAIN_TYPES) and not name.startswith("_np_random")}
    return state


def capture(env: gym.Env) -> list[dict]:
    """A snapshot of a capturable environment (one entry per wrapper, the environment last)."""
    chain = _chain(env)
    kind = _kind(chain[-1])
    return [_capture_one(layer, kind if layer is chain[-1] else None) for layer in chain]


def restore(env: gym.Env, snapshot: list[dict]) -> None:
    """Put `capture`'s snapshot into an environment made from the same spec."""
    chain = _chain(env)
    if len(chain) != len(snapshot):
        raise ValueError(f"the snapshot has {len(snapshot)} layers, the environment {len(chain)}")
    for layer, state in zip(chain, snapshot):
        if "protocol" in state:
            layer.gpo_set_state(state["protocol"])
        elif "rng" not in state:
            for name, value in state.items():
                setattr(layer, name, value)
        else:
            layer.np_random.bit_generator.state = state["rng"]
            if "integration" in state:
                import mujoco
                for name, target in _mujoco_arrays(layer.data).items():
                    saved = state["arrays"].get(name)
                    if saved is not None and saved.shape == target.shape:  # sizes that vary are recomputed by mj_step
                        target[...] = saved
                mujoco.mj_setState(layer.model, layer.data, state["integration"],
                                   mujoco.mjtState.mjSTATE_INTEGRATION)
            else:
                for name, value in state["attributes"].items():
                    setattr(layer, name, value.copy() if isinstance(value, np.ndarray) else value)
