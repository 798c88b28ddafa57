"""gpo_mpi.statefile: nested state in HDF5 without pickle, read back exactly, anything else refused."""
import json

import h5py
import numpy as np
import pytest
import torch

from gpo_mpi import statefile


def round_trip(tree, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        statefile.write(handle, "s", tree)
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        return statefile.read(handle, "s")


def test_every_kind_of_value_comes_back_as_it_was(tmp_path):
    tree = {"numbers": [1, 2.5, float("inf"), float("-inf"), None, "text", True, 2 ** 100],
            3: (np.float32(1.5), np.int64(-7), np.bool_(True)),
            "tensor": torch.arange(6, dtype=torch.float32).reshape(2, 3), "scalar tensor": torch.tensor(3.0),
            "uint8 tensor": torch.tensor([1, 255], dtype=torch.uint8),
            "generator": np.random.default_rng(5).bit_generator.state, "empty": np.zeros((0, 3)),
            "bools": np.array([True, False]), "float64": np.linspace(0, 1, 5)}
    back = round_trip(tree, tmp_path)
    assert back.keys() == tree.keys() and back["numbers"] == tree["numbers"] and back["generator"] == tree["generator"]
    assert [type(v) for v in back[3]] == [np.float32, np.int64, np.bool_] and back[3] == tree[3]
    for name in ("tensor", "scalar tensor", "uint8 tensor"):
        assert isinstance(back[name], torch.Tensor) and torch.equal(back[name], tree[name])
    for name in ("empty", "bools", "float64"):
        assert back[name].dtype == tree[name].dtype and np.array_equal(back[name], tree[name])
    assert np.isnan(round_trip({"x": float("nan")}, tmp_path)["x"])


def test_what_a_checkpoint_cannot_hold_is_refused_when_written():
    class Position:
        pass
    assert statefile.storable({"position": np.zeros(3), "steps": 4})
    assert not statefile.storable({"position": Position()})
    assert not statefile.storable({"raw": b"bytes"})
    assert not statefile.storable({(1, 2): 3})
    assert not statefile.storable(np.array([Position()], dtype=object))


@pytest.mark.parametrize("layout, message", [
    ("not json", "Expecting value"),
    (json.dumps({"array": "object", "shape": [1], "at": 0}), "dtype 'object'"),
    (json.dumps({"array": "float64", "shape": [10 ** 9], "at": 0}), "beyond the end"),
    (json.dumps({"array": "float64", "shape": [-1], "at": 0}), "malformed array"),
    (json.dumps({"scalar": "float64", "value": "os.system"}), "malformed scalar"),
    (json.dumps({"callable": "os.system"}), "no known kind"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_a_crafted_layout_is_one_state_file_error(tmp_path, layout, message):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        statefile.write(handle, "s", {"x": np.zeros(4)})
        del handle["s/layout"]
        handle["s/layout"] = layout
    with h5py.File(tmp_path / "s.h5", "r") as handle, pytest.raises(statefile.StateFileError, match=message):
        statefile.read(handle, "s")
