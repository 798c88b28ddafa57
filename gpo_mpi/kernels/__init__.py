"""GAE and the diagonal-Gaussian KL: checked entry points over two backends.

The C++ extension `gpo_mpi._kernels` is used when it is built; otherwise the
numpy versions in `reference.py` run, after one RuntimeWarning. `BACKEND`
says which is live. The environment variable GPO_MPI_KERNELS picks one
explicitly: `cpp` (fail if it is not built), `numpy`, or `auto` (default).

Both functions accept float32 or float64 arrays of any length, contiguous or
not, and return float32 only when every float input is float32.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from . import reference

__all__ = ["BACKEND", "gae", "diag_gaussian_kl"]


def _load_backend():
    choice = os.environ.get("GPO_MPI_KERNELS", "auto").strip().lower()
    if choice not in ("auto", "cpp", "numpy"):
        raise ValueError(f"GPO_MPI_KERNELS must be auto, cpp or numpy, not {choice!r}")
    if choice == "numpy":
        return "numpy", None
    try:
        from .. import _kernels
    except ImportError as error:
        if choice == "cpp":
            raise ImportError(f"GPO_MPI_KERNELS=cpp but the C++ kernels are not built: {error}") from error
        warnings.warn(
            f"gpo_mpi: C++ kernels not built ({error}); using the slower numpy versions. "
            "Reinstall with `pip install -e .` to build them.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numpy", None
    return "cpp", _kernels


BACKEND, _cpp = _load_backend()


_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def _float_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 when every input is float32, float64 otherwise."""
    return _FLOAT32 if all(a.dtype == _FLOAT32 for a in arrays) else _FLOAT64


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + (",)" if len(shape) == 1 else ")")


def _checked_arrays(function: str, arguments: dict, allowed_shapes) -> list[np.ndarray]:
    """The arguments as arrays, or ValueError naming the first that is wrong.

    `allowed_shapes(name, arrays)` gives the shapes `name` may have, given
    the arrays before it. The texts match the C++ extension's.
    """
    arrays = []
    for name, value in arguments.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fiub":
            raise ValueError(f"{function}: {name} must hold real numbers, not {array.dtype}")
        arrays.append(array)
    for name, array in zip(arguments, arrays):
        shapes = allowed_shapes(name, arrays)
        if array.shape not in shapes:
            expected = " or ".join(_shape_text(shape) for shape in shapes)
            raise ValueError(f"{function}: {name} has shape {_shape_text(array.shape)}, expected {expected}")
    return arrays


def _check_rate(name: str, rate) -> float:
    rate = float(rate)
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ValueError(f"gae: {name} must lie in [0, 1], got {rate:g}")
    return rate


def gae(rewards, values, next_values, terminated, truncated, gamma: float, lam: float) -> np.ndarray:
    """Generalized advantage estimates for one batch of concatenated episodes.

    Arguments are 1-D and of one length T. `next_values[t]` is V of the
    observation after step t (for a truncated step, the last observation
    before the reset), so a time limit bootstraps and a termination does
    not. The recursion stops at every episode end (terminated or truncated)
    and at the batch end. Critic targets are `advantages + values`.
    """
    if _cpp is not None:
        return _cpp.gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    def allowed_shapes(name, arrays):
        if name == "rewards":
            return [arrays[0].shape] if arrays[0].ndim == 1 else [("T",)]
        return [arrays[0].shape]

    arguments = dict(rewards=rewards, values=values, next_values=next_values,
                     terminated=terminated, truncated=truncated)
    arrays = _checked_arrays("gae", arguments, allowed_shapes)
    gamma, lam = _check_rate("gamma", gamma), _check_rate("lam", lam)
    dtype = _float_dtype(*arrays[:3])
    flags = [a.astype(bool) for a in arrays[3:]]
    return reference.gae_numpy(*arrays[:3], *flags, gamma, lam).astype(dtype)


def diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> np.ndarray:
    """KL[p || q] for each row, p and q diagonal Gaussians, in closed form.

    Means are (rows, dims). Each log-std is either (rows, dims) or one
    (dims,) vector shared by every row (a state-independent log-std).
    """
    if _cpp is not None:
        return _cpp.diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)

    def allowed_shapes(name, arrays):
        means_shape = arrays[0].shape
        if name == "mean_p":
            return [means_shape] if len(means_shape) == 2 else [("rows", "dims")]
        if name == "mean_q":
            return [means_shape]
        return [means_shape, means_shape[1:]]

    arguments = dict(mean_p=mean_p, log_std_p=log_std_p, mean_q=mean_q, log_std_q=log_std_q)
    arrays = _checked_arrays("diag_gaussian_kl", arguments, allowed_shapes)
    return reference.diag_gaussian_kl(*arrays).astype(_float_dtype(*arrays))
