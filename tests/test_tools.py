"""gpo-mpi info / eval / export on a run file made by a tiny real run."""
import subprocess
import sys

import numpy as np
import pytest

from test_cli import gpo_mpi_command
from test_run import TINY


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "run.h5"
    result = subprocess.run([gpo_mpi_command(), *TINY, "--algo", "single", "--population", "2",
                             "--total-steps", "256", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def tool(*arguments):
    return subprocess.run([gpo_mpi_command(), *map(str, arguments)], capture_output=True, text=True, timeout=300)


def test_info_reports_config_progress_and_best(finished_run):
    result = tool("info", finished_run)
    assert result.returncode == 0, result.stderr
    assert "single on Pendulum-v1, population 2, 1 rank(s), seed 0" in result.stdout
    assert "progress: 256 of 256 environment steps, 2 of 2 iterations, complete" in result.stdout
    assert "best member at the end: " in result.stdout and "batch_steps=64" in result.stdout


def test_eval_rolls_out_whole_episodes(finished_run):
    result = tool("eval", finished_run, "--episodes", "3", "--member", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("member 1 on Pendulum-v1, 3 episodes, sampled actions: return -")


def test_exported_policy_runs_without_gpo_mpi(finished_run, tmp_path):
    exported = tmp_path / "policy.pt"
    result = tool("export", finished_run, "-o", exported, "--member", "0")
    assert result.returncode == 0, result.stderr
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    code = ("import sys, numpy as np, torch\n"
            "policy = torch.jit.load(sys.argv[1])\n"
            "actions = policy(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy()\n"
            "assert 'gpo_mpi' not in sys.modules\n"
            "np.save(sys.argv[3], actions)\n")
    plain = subprocess.run([sys.executable, "-c", code, str(exported), str(tmp_path / "obs.npy"),
                            str(tmp_path / "actions.npy")], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    from gpo_mpi.tools import load_policy
    _, policy, normalizer, _ = load_policy(str(finished_run), 0)
    np.testing.assert_allclose(np.load(tmp_path / "actions.npy"), policy.numpy_mean()(normalizer(obs)),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.load(tmp_path / "actions.npy"), 0.0)


@pytest.mark.parametrize("arguments, message", [
    (["info", "/nonexistent.h5"], "is not a readable HDF5 file"),
    (["eval", "RUN", "--member", "7"], "member 7 does not exist: the run has 2"),
    (["eval", "RUN", "--episodes", "0"], "--episodes must be positive"),
])
def test_tools_refuse_bad_input_in_one_line(finished_run, arguments, message):
    result = tool(*[finished_run if a == "RUN" else a for a in arguments])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
