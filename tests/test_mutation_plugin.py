"""A mutation algorithm of one's own, defined in this file alone (`--mutation test_mutation_plugin:Class`),
in a whole GPO run under mpiexec."""
from pathlib import Path

import h5py
import numpy as np
import torch

from gpo_mpi.mutate import Mutation, PolicyStep
from test_cli import gpo_mpi_command
from test_run import TINY, TINY_GPO


class VanillaPolicyGradient(Mutation):
    """One epoch of minibatch steps on -mean(w * ratio * A); reports the mean ratio of its steps."""
    statistics = ("mean_ratio",)

    def policy_epochs(self) -> int:
        return 1

    def policy_loss(self, member, step: PolicyStep) -> torch.Tensor:
        step.report("mean_ratio", step.ratios.detach().sum() / step.n_rows)
        return -(step.weighted_ratios() * step.advantages).sum() / step.n_rows


def run_with(mpirun, n_ranks, out, mutation):
    return mpirun(n_ranks, [gpo_mpi_command(), *TINY, *TINY_GPO, "--share-epsilon", "inf", "--mutation", mutation,
                            "--out", str(out)], timeout=240, env={"PYTHONPATH": str(Path(__file__).parent)})


def runs_on_one_and_two_ranks(mpirun, tmp_path, mutation, names, absent):
    """The datasets `names` of the run with `mutation` on 1 and 2 ranks, by rank count; none of `absent`
    may be in either run file."""
    runs = {}
    for n_ranks in (1, 2):
        out = tmp_path / f"run{n_ranks}.h5"
        result = run_with(mpirun, n_ranks, out, mutation)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as run_file:
            assert not any(name in run_file for name in absent)
            runs[n_ranks] = {name: run_file[name][()] for name in names}
    return runs


def test_a_mutation_class_of_ones_own_runs_gpo_and_records_its_statistic(mpirun, tmp_path):
    runs = runs_on_one_and_two_ranks(mpirun, tmp_path, "test_mutation_plugin:VanillaPolicyGradient",
                                     ("iterations/mean_ratio", "iterations/policy_kl", "final/policy_parameters"),
                                     absent=("iterations/beta", "iterations/clip_fraction"))
    ratios = runs[1]["iterations/mean_ratio"]
    assert ratios.shape == (3, 4) and np.all(np.abs(ratios - 1) < 0.5) and np.any(ratios != 1)
    for name, values in runs[1].items():  # 2 ranks run what one process runs
        np.testing.assert_array_equal(runs[2][name], values, err_msg=name)


def test_a_mutation_that_cannot_be_loaded_is_one_line_from_one_rank(mpirun, tmp_path):
    out = tmp_path / "missing.h5"
    result = run_with(mpirun, 2, out, "test_mutation_plugin:NoSuchClass")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("gpo-mpi: error: mutation test_mutation_plugin:NoSuchClass: "
                                                     "cannot load it"), result.stderr
    assert not out.exists()


def test_ppo_clip_in_gpo_on_two_ranks_is_the_one_process_run(mpirun, tmp_path):
    """PPO-clip with data sharing (the clipped ratio pi_theta / pi_i_old, foreign rows under their fixed
    weights) and minibatches, in a whole GPO run: 2 ranks give the one process's run file bit for bit."""
    runs = runs_on_one_and_two_ranks(mpirun, tmp_path, "ppo-clip",
                                     ("iterations/clip_fraction", "iterations/share_set_size",
                                      "iterations/policy_kl", "final/policy_parameters", "breeding/parent_pairs"),
                                     absent=("iterations/beta",))
    clip_fraction = runs[1]["iterations/clip_fraction"]
    assert np.all((clip_fraction > 0) & (clip_fraction < 0.5))  # some ratios left the range in every update
    assert np.any(runs[1]["iterations/share_set_size"] > 1)  # it learned from other members' batches
    for name, values in runs[1].items():
        np.testing.assert_array_equal(runs[2][name], values, err_msg=name)
