"""Nested state in an HDF5 group without pickle: reading it runs no code.

A checkpoint's state is a tree of dicts, lists and tuples whose leaves are
numbers, strings, booleans, None, numpy arrays and scalars, and torch
tensors (network parameters, Adam's moments, random-generator states,
MuJoCo's arrays). `write` stores a tree as a group holding

- `layout`: the tree's shape as JSON, each array replaced by its dtype,
  shape and place in the data (JSON is data: reading it builds dicts, lists,
  numbers and strings, nothing else);
- one 1-D dataset per dtype (`float64`, `float32`, `int64`, `uint8`, ...)
  with every array of that dtype end to end, under HDF5's fletcher32
  checksum, so a bit flipped on disk is reported instead of trusted.

This is the layout of safetensors (a JSON header, then typed bytes) inside
HDF5. `read` checks everything it is given (the layout's form, known dtypes,
shapes that fit the data, the checksums) and raises StateFileError, one
line, for anything else.
"""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import torch

LAYOUT = "layout"
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64")
MAX_DEPTH = 64  # nesting of the trees gpo-mpi writes: under 10


class StateFileError(ValueError):
    """A state group that is missing, damaged or not one `write` made."""


def _encode(value, arrays: dict[str, list], depth: int = 0):
    """The layout node of `value`, its arrays appended to `arrays` by dtype."""
    if depth > MAX_DEPTH:
        raise TypeError("the state is nested too deeply")
    if isinstance(value, np.generic):  # before float: numpy's float64 is a float too
        return {"scalar": _dtype_name(value.dtype), "value": _encode(value.item(), arrays, depth + 1)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}  # JSON has no inf or nan
    if isinstance(value, torch.Tensor):
        return {**_encode_array(value.detach().cpu().numpy(), arrays), "tensor": True}
    if isinstance(value, np.ndarray):
        return _encode_array(value, arrays)
    if isinstance(value, dict):
        if not all(isinstance(key, (str, int)) and not isinstance(key, bool) for key in value):
            raise TypeError("a dict key that is neither a string nor an integer")
        return {"dict": [[key, _encode(item, arrays, depth + 1)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(item, arrays, depth + 1) for item in value]}
    raise TypeError(f"a value of type {type(value).__name__}")


def _dtype_name(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"an array of dtype {name}")
    return name


def _encode_array(array: np.ndarray, arrays: dict[str, list]) -> dict:
    dtype = _dtype_name(array.dtype)
    chunks = arrays.setdefault(dtype, [])
    start = sum(chunk.size for chunk in chunks)
    chunks.append(np.ascontiguousarray(array).reshape(-1))
    return {"array": dtype, "shape": list(array.shape), "at": start}


def storable(tree) -> bool:
    """Whether `write` can store the tree."""
    try:
        _encode(tree, {})
    except TypeError:
        return False
    return True


def write(parent: h5py.Group, name: str, tree) -> None:
    """Store `tree` as the group parent/name (replacing one there). Raises TypeError, naming the value, for
    a tree that holds anything but dicts, lists, tuples, numbers, strings, None, arrays and tensors."""
    arrays: dict[str, list] = {}
    layout = _encode(tree, arrays)
    if name in parent:
        del parent[name]
    group = parent.create_group(name)
    group.create_dataset(LAYOUT, data=json.dumps(layout, separators=(",", ":")))
    for dtype, chunks in arrays.items():  # every dtype named holds at least one array
        data = np.concatenate(chunks)
        group.create_dataset(dtype, data=data, fletcher32=len(data) > 0, chunks=(min(len(data), 1 << 18),)
                             if len(data) else None)


def read(parent: h5py.Group, name: str):
    """The tree `write` stored as parent/name."""
    try:
        group = parent[name]
        if not isinstance(group, h5py.Group) or LAYOUT not in group:
            raise StateFileError("not a stored state")
        text = group[LAYOUT][()]
        layout = json.loads(text.decode() if isinstance(text, bytes) else str(text))
        data = {}
        for dtype in DTYPES:
            if dtype in group:
                values = group[dtype]
                if not isinstance(values, h5py.Dataset) or values.dtype != np.dtype(dtype) or values.ndim != 1:
                    raise StateFileError(f"{dtype} is not a 1-D {dtype} dataset")
                data[dtype] = values[()]
        return _decode(layout, data, 0)
    except StateFileError as error:
        raise StateFileError(f"{name}: {error}") from None
    except RecursionError:
        raise StateFileError(f"{name}: the layout is nested too deeply") from None
    except OSError as error:
        raise StateFileError(f"{name}: its data cannot be read, a checksum does not match or the file is cut "
                             f"short ({error})") from None
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as error:  # a layout of the wrong form
        raise StateFileError(f"{name}: {type(error).__name__}: {error}") from None


def _decode(node, data: dict[str, np.ndarray], depth: int):
    if depth > MAX_DEPTH:
        raise StateFileError("the layout is nested too deeply")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list) or not isinstance(node, dict) or len(node) == 0:
        raise StateFileError("the layout holds a node of no known kind")
    if "dict" in node:
        items = node["dict"]
        if not isinstance(items, list) or not all(isinstance(item, list) and len(item) == 2 and
                                                  isinstance(item[0], (str, int)) for item in items):
            raise StateFileError("the layout holds a malformed dict")
        return {key: _decode(item, data, depth + 1) for key, item in items}
    for kind, container in (("list", list), ("tuple", tuple)):
        if kind in node:
            if not isinstance(node[kind], list):
                raise StateFileError(f"the layout holds a malformed {kind}")
            return container(_decode(item, data, depth + 1) for item in node[kind])
    if "float" in node:
        if node["float"] not in ("inf", "-inf", "nan"):
            raise StateFileError("the layout holds a malformed float")
        return float(node["float"])
    if "scalar" in node:
        if node["scalar"] not in DTYPES or not isinstance(node.get("value"), (bool, int, float, dict)):
            raise StateFileError("the layout holds a malformed scalar")
        return np.dtype(node["scalar"]).type(_decode(node["value"], data, depth + 1))
    if "array" in node:
        return _decode_array(node, data)
    raise StateFileError("the layout holds a node of no known kind")


def _decode_array(node: dict, data: dict[str, np.ndarray]):
    dtype, shape, start = node.get("array"), node.get("shape"), node.get("at")
    if dtype not in DTYPES or dtype not in data:
        raise StateFileError(f"the layout names an array of dtype {dtype!r} that the state does not hold")
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            and isinstance(start, int) and not isinstance(start, bool) and start >= 0):
        raise StateFileError("the layout holds a malformed array")
    size = math.prod(shape)
    if start + size > len(data[dtype]):
        raise StateFileError(f"the layout places an array beyond the end of the {dtype} data")
    array = data[dtype][start:start + size].reshape(shape).copy()
    return torch.from_numpy(array) if node.get("tensor") is True else array
