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


def nested(kind: str, levels: int, leaf):
    for _ in range(levels):
        leaf = {"k": leaf} if kind == "dict" else [leaf] if kind == "list" else (leaf,)
    return leaf


@pytest.mark.parametrize("kind", ["dict", "list", "tuple"])
def test_nesting_up_to_the_limit_is_stored_and_one_level_more_refused(tmp_path, kind):
    """MAX_DEPTH containers around a number come back; one more is refused when written and when read (a
    crafted layout). A numpy scalar's value counts as one level more."""
    deepest = nested(kind, statefile.MAX_DEPTH, 1.5)
    assert round_trip(deepest, tmp_path) == deepest
    with h5py.File(tmp_path / "w.h5", "w") as handle, pytest.raises(TypeError, match="^the state is nested too "
                                                                                     "deeply$"):
        statefile.write(handle, "s", nested(kind, statefile.MAX_DEPTH + 1, 1.5))
    assert round_trip(nested(kind, statefile.MAX_DEPTH - 1, np.float32(2.5)), tmp_path) == \
        nested(kind, statefile.MAX_DEPTH - 1, np.float32(2.5))
    assert not statefile.storable(nested(kind, statefile.MAX_DEPTH, np.float32(2.5)))
    for levels, leaf in ((statefile.MAX_DEPTH + 1, 1.5), (statefile.MAX_DEPTH, {"scalar": "float32", "value": 2.5})):
        node = leaf  # a crafted layout one level too deep
        for _ in range(levels):
            node = {"dict": [["k", node]]} if kind == "dict" else {kind: [node]}
        with h5py.File(tmp_path / "s.h5", "w") as handle:
            statefile.write(handle, "s", {})
            del handle["s/layout"]
            handle["s/layout"] = json.dumps(node)
        with h5py.File(tmp_path / "s.h5", "r") as handle, pytest.raises(statefile.StateFileError) as error:
            statefile.read(handle, "s")
        assert str(error.value) == "s: the layout is nested too deeply"


def test_arrays_inside_lists_tuples_and_scalars_come_back(tmp_path):
    tree = [np.arange(3.0), (torch.ones(2), np.int16(4)), {"a": [np.zeros(2, np.uint8)]}]
    back = round_trip(tree, tmp_path)
    np.testing.assert_array_equal(back[0], np.arange(3.0))
    assert torch.equal(back[1][0], torch.ones(2)) and back[1][1] == np.int16(4) and type(back[1][1]) is np.int16
    assert back[2]["a"][0].dtype == np.uint8


def test_the_layout_is_standard_json_without_infinity_or_nan(tmp_path):
    def refuse(constant):
        raise ValueError(constant)
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        statefile.write(handle, "s", {"values": [float("inf"), float("-inf"), float("nan"), 1.0]})
        json.loads(handle["s/layout"][()], parse_constant=refuse)


def test_values_that_cannot_be_stored_are_named():
    class Position:
        pass
    for tree, message in (({"position": Position()}, "a value of type Position"),
                          ({1.5: 2}, "a dict key that is neither a string nor an integer"),
                          ({True: 2}, "a dict key that is neither a string nor an integer"),
                          ({"z": np.zeros(2, np.complex128)}, "an array of dtype complex128")):
        with h5py.File("unused.h5", "w", driver="core", backing_store=False) as handle, \
                pytest.raises(TypeError) as error:
            statefile.write(handle, "s", tree)
        assert str(error.value) == message


def test_a_flipped_bit_in_any_array_is_a_checksum_error_and_empty_arrays_store(tmp_path):
    from test_resume import flip_stored_byte
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as handle:
        statefile.write(handle, "s", {"one": np.array([7], np.int32), "none": np.zeros(0, np.int16),
                                      "many": np.arange(1000.0)})
    back = round_trip_file(path)
    assert back["none"].dtype == np.int16 and back["none"].shape == (0,) and back["one"].tolist() == [7]
    for dataset in ("s/int32", "s/float64"):
        with h5py.File(path, "w") as handle:
            statefile.write(handle, "s", {"one": np.array([7], np.int32), "many": np.arange(1000.0)})
        flip_stored_byte(path, dataset, at=2)
        with h5py.File(path, "r") as handle, pytest.raises(statefile.StateFileError) as error:
            statefile.read(handle, "s")
        assert str(error.value).startswith("s: its data cannot be read, a checksum does not match or the file is "
                                           "cut short (")


def round_trip_file(path):
    with h5py.File(path, "r") as handle:
        return statefile.read(handle, "s")


LAYOUT_ERRORS = [
    ([1, 2], "the layout holds a node of no known kind"),
    ({}, "the layout holds a node of no known kind"),
    ({"callable": "os.system"}, "the layout holds a node of no known kind"),
    ({"dict": "ab"}, "the layout holds a malformed dict"),
    ({"dict": [[1, 2, 3]]}, "the layout holds a malformed dict"),
    ({"dict": [["k"]]}, "the layout holds a malformed dict"),
    ({"dict": [[1.5, 2]]}, "the layout holds a malformed dict"),
    ({"list": "ab"}, "the layout holds a malformed list"),
    ({"tuple": 3}, "the layout holds a malformed tuple"),
    ({"float": "1e400"}, "the layout holds a malformed float"),
    ({"scalar": "object", "value": 1}, "the layout holds a malformed scalar"),
    ({"scalar": "float64", "value": "1"}, "the layout holds a malformed scalar"),
    ({"array": "float64", "shape": [2], "at": -1}, "the layout holds a malformed array"),
    ({"array": "float64", "shape": [True], "at": 0}, "the layout holds a malformed array"),
    ({"array": "int8", "shape": [1], "at": 0}, "the layout names an array of dtype 'int8' that the state does not "
                                               "hold"),
    ({"array": "float64", "shape": [5], "at": 0}, "the layout places an array beyond the end of the float64 data"),
]


@pytest.mark.parametrize("layout, message", LAYOUT_ERRORS)
def test_each_malformed_layout_is_named_exactly(tmp_path, layout, message):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        statefile.write(handle, "s", {"x": np.zeros(4)})
        del handle["s/layout"]
        handle["s/layout"] = json.dumps(layout)
    with h5py.File(tmp_path / "s.h5", "r") as handle, pytest.raises(statefile.StateFileError) as error:
        statefile.read(handle, "s")
    assert str(error.value) == f"s: {message}"


@pytest.mark.parametrize("damage, message", [
    (lambda g: g.__delitem__("layout"), "s: not a stored state"),
    (lambda g: (g.__delitem__("float64"), g.create_group("float64")), "s: float64 is not a 1-D float64 dataset"),
    (lambda g: (g.__delitem__("float64"), g.create_dataset("float64", data=np.zeros(4, np.int32))),
     "s: float64 is not a 1-D float64 dataset"),
    (lambda g: (g.__delitem__("float64"), g.create_dataset("float64", data=np.zeros((2, 2)))),
     "s: float64 is not a 1-D float64 dataset"),
    (lambda g: (g.__delitem__("layout"), g.create_dataset("layout", data="{")),
     "s: JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
])
def test_a_group_that_is_not_a_stored_state_is_named_exactly(tmp_path, damage, message):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        statefile.write(handle, "s", {"x": np.zeros(4)})
        damage(handle["s"])
    with h5py.File(tmp_path / "s.h5", "r") as handle, pytest.raises(statefile.StateFileError) as error:
        statefile.read(handle, "s")
    assert str(error.value) == message
    with h5py.File(tmp_path / "t.h5", "w") as handle, pytest.raises(statefile.StateFileError) as error:
        handle.create_dataset("s", data=1)
        statefile.read(handle, "s")
    assert str(error.value) == "s: not a stored state"
