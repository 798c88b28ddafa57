"""The README's first-run commands, run as written (so that they cannot go stale)."""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import find_mpiexec
from test_cli import gpo_mpi_command

README = Path(__file__).resolve().parent.parent / "README.md"


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


def as_run_here(command: str) -> list[str]:
    words = shlex.split(command)
    replacements = {"mpiexec": find_mpiexec(), "gpo-mpi": gpo_mpi_command()}
    return [replacements.get(word, word) for word in words]


# The README's first run (8 Hopper members, 20,480 steps) and its tools take about 90 s beside a training run on
# the 2-core machine; the bound leaves room for 4 times that load, as a hang would still be caught.
@pytest.mark.timeout(900)
def test_the_first_run_and_the_tools_after_it_work_as_written(tmp_path):
    from gpo_mpi import seeds
    from gpo_mpi.evaluate import episode_returns
    from gpo_mpi.rollout import EnvSpec
    from gpo_mpi.saved import read_member
    blocks = bash_blocks(README.read_text())
    [first_run] = [block for block in blocks if any("--preset smoke" in line for line in block)]
    tools = blocks[blocks.index(first_run) + 1]
    assert first_run == ["mpiexec -n 2 gpo-mpi --preset smoke"]
    result = subprocess.run(as_run_here(first_run[0]), cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "round 3/3 done" in result.stdout and "evaluation (2 episodes, mean action; " in result.stdout
    run_file = re.search(r"leaves its run file, `([^`]+)`", README.read_text()).group(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_file, run_file[:-3] + ".progress.csv"]
    with h5py.File(tmp_path / run_file) as run:  # what the README says the smoke run is
        config = json.loads(run.attrs["config"])
        assert (config["env"], config["algo"], config["population"]) == ("Hopper-v5", "gpo", 8)
        assert run["iterations/env_steps"][-1] == 20480 and len(run["rounds/time_mutate"]) == 3
        assert run["breeding/parent_pairs"].shape == (2, 8, 2)
        recorded = run["final/eval_returns"][()]
    assert recorded.shape == (8, 2)
    # the file's final policies are the ones its returns were measured with: evaluated again, they give them
    for member in range(8):
        again, _ = read_member(str(tmp_path / run_file), member)
        np.testing.assert_array_equal(
            episode_returns(again.policies[member], again.normalizer, EnvSpec.of(again.config), 2,
                            seeds.evaluation(again.config.seed, member), deterministic=True), recorded[member])
    for command in tools:
        assert run_file in command
        result = subprocess.run(as_run_here(command), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stderr)
    assert sorted(p.suffix for p in (tmp_path / "plots").iterdir()) == [".png"] * 4
