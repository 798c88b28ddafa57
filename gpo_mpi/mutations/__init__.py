"""The mutation algorithms, one module each: `ppo` (the adaptive KL penalty, the paper's), `ppo_clip` (the
clipped surrogate) and `a2c`. The config's `mutation` names the module (ppo-clip: ppo_clip), or a class of
one's own as `package.module:Class` (a subclass of gpo_mpi.mutate.Mutation; docs/algorithm.md).
"""
from __future__ import annotations

import importlib

from ..config import ConfigError, RunConfig
from ..mutate import Mutation


def algorithm(config: RunConfig) -> Mutation:
    """The run's mutation algorithm (ConfigError if a class of one's own cannot be loaded)."""
    if ":" not in config.mutation:
        return importlib.import_module(f"{__name__}.{config.mutation.replace('-', '_')}").ALGORITHM(config)
    module_name, class_name = config.mutation.split(":", 1)
    try:
        chosen = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"mutation {config.mutation}: cannot load it ({error})") from None
    if not (isinstance(chosen, type) and issubclass(chosen, Mutation)):
        raise ConfigError(f"mutation {config.mutation} is not a subclass of gpo_mpi.mutate.Mutation")
    return chosen(config)
