"""Damaged run files, made at random (seeded): every reader answers with ConfigError (one line) or works.

Each case copies a finished or a stopped run file and damages it: cut short at a random offset, random
bytes flipped, a random group, dataset or attribute deleted, or a dataset replaced by one of another
dtype or shape. Then what the tools read is read: `info`, the policies (`eval`, `export`, `load_policy`,
`--init-from`), the checkpoint (`--resume`) and the summary (`compare`). For more cases:
GPO_MPI_FUZZ_SEED=1 GPO_MPI_FUZZ_CASES=500 pytest tests/test_fuzz_run_files.py -s
"""
import os
import subprocess

import h5py
import numpy as np
import pytest

from test_cli import gpo_mpi_command
from test_run import TINY

ARGUMENTS = [*TINY, "--algo", "gpo", "--population", "2", "--rounds", "2", "--total-steps", "1024",
             "--expert-steps", "64", "--dagger-iterations", "1", "--dagger-steps", "64", "--eval-every", "1",
             "--eval-episodes", "2", "--checkpoint-every", "1"]
# a fixed number of seeded cases, so that every run of the suite reads the same ones (about 1 s each)
CASES = int(os.environ.get("GPO_MPI_FUZZ_CASES", "50"))


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A finished GPO run, and a copy of it as it stood at a checkpoint (its final group removed)."""
    directory = tmp_path_factory.mktemp("fuzz")
    finished = directory / "finished.h5"
    made = subprocess.run([gpo_mpi_command(), *ARGUMENTS, "--out", str(finished)], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr
    stopped = directory / "stopped.h5"
    stopped.write_bytes(finished.read_bytes())
    with h5py.File(stopped, "a") as run_file:
        del run_file["final"]
    return finished, stopped


def names_in(path) -> list[str]:
    found = []
    with h5py.File(path, "r") as run_file:
        run_file.visit(found.append)
    return found


def damage(source, target, generator: np.random.Generator) -> str:
    """Write a damaged copy of `source` to `target`; returns what was done."""
    data = bytearray(open(source, "rb").read())
    kind = generator.choice(["truncate", "flip", "delete", "attribute", "retype"])
    if kind == "truncate":
        at = int(generator.integers(0, len(data)))
        open(target, "wb").write(data[:at])
        return f"cut at byte {at}"
    if kind == "flip":
        places = generator.integers(0, len(data), size=int(generator.integers(1, 9)))
        for place in places:
            data[place] ^= 1 << int(generator.integers(0, 8))
        open(target, "wb").write(data)
        return f"bytes flipped at {sorted(places.tolist())}"
    open(target, "wb").write(data)
    names = names_in(target)
    name = names[int(generator.integers(0, len(names)))]
    with h5py.File(target, "a") as run_file:
        if kind == "delete":
            del run_file[name]
            return f"deleted {name}"
        if kind == "attribute":
            holders = [run_file] + [run_file[n] for n in names if len(run_file[n].attrs)]
            holder = holders[int(generator.integers(0, len(holders)))]
            attribute = list(holder.attrs)[int(generator.integers(0, len(holder.attrs)))]
            del holder.attrs[attribute]
            return f"deleted attribute {attribute} of {holder.name}"
        item = run_file[name]
        if not isinstance(item, h5py.Dataset):
            del run_file[name]
            return f"deleted {name}"
        del run_file[name]
        replacement = generator.choice(["int8", "string", "shape"])
        if replacement == "string":
            run_file.create_dataset(name, data=np.array(["x"] * 3, dtype=object), dtype=h5py.string_dtype())
        elif replacement == "shape":
            run_file.create_dataset(name, data=np.zeros((2, 3, 1)))
        else:
            run_file.create_dataset(name, data=np.zeros(item.shape, dtype=np.int8))
        return f"{name} replaced by {replacement}"


def readers(path, config_arguments) -> dict:
    """What each tool reads, in this process."""
    from gpo_mpi import checkpoint, compare, runfile, saved
    from gpo_mpi.cli import build_parser
    from gpo_mpi.config import from_arguments

    def resume():
        config = from_arguments(build_parser().parse_args([*config_arguments, "--out", str(path)]), 1)
        return checkpoint.read(str(path), config, 1)
    return {"info": lambda: runfile.info(str(path)), "policies": lambda: saved.load_run(str(path)),
            "resume": resume, "compare": lambda: compare.load([str(path)])}


def test_every_reader_answers_a_damaged_run_file_with_one_line_or_works(run_files, tmp_path, capsys):
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tools run (several threads contend on a busy machine); restored below
    try:
        outcomes, failures, cases = fuzz(run_files, tmp_path)
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print(f"\nfuzz: {cases} damaged run files, {sum(outcomes.values())} reads: {outcomes}, "
              f"{len(failures)} failures")
    assert cases == CASES and outcomes["ConfigError"] > 0 and outcomes["works"] > 0
    assert failures == [], "\n".join(failures[:20])


def fuzz(run_files, tmp_path) -> tuple[dict, list, int]:
    """CASES damaged copies of the run files, each read by every reader: the outcomes, the failures
    (anything but ConfigError, or an error of several lines) and the number of cases."""
    from gpo_mpi.config import ConfigError
    finished, stopped = run_files
    generator = np.random.default_rng(int(os.environ.get("GPO_MPI_FUZZ_SEED", "0")))
    outcomes, failures, cases = {"works": 0, "ConfigError": 0}, [], 0
    while cases < CASES:
        source = finished if generator.random() < 0.5 else stopped
        target = tmp_path / f"case{cases}.h5"
        what = damage(source, target, generator)
        for reader, read in readers(target, ARGUMENTS).items():
            try:
                read()
                outcomes["works"] += 1
            except ConfigError as error:
                outcomes["ConfigError"] += 1
                if "\n" in str(error):
                    failures.append(f"case {cases} ({source.name}, {what}), {reader}: two lines: {error!r}")
            except Exception as error:  # what the test is looking for
                failures.append(f"case {cases} ({source.name}, {what}), {reader}: {type(error).__name__}: {error}")
        target.unlink()
        cases += 1
    return outcomes, failures, cases


def test_info_on_returns_stored_as_strings_is_one_line(run_files, tmp_path):
    """Found by the fuzzer (seed 2): the returns were used after the file was closed, unchecked."""
    from gpo_mpi.config import ConfigError
    from gpo_mpi.runfile import info
    _, stopped = run_files
    path = tmp_path / "strings.h5"
    path.write_bytes(stopped.read_bytes())
    with h5py.File(path, "a") as run_file:
        del run_file["iterations/member_return"]
        run_file.create_dataset("iterations/member_return", data=np.array(["x"] * 3, dtype=object),
                                dtype=h5py.string_dtype())
    with pytest.raises(ConfigError, match=f"{path} is damaged or not from this gpo-mpi"):
        info(str(path))
