"""gpo-mpi info / eval / export on a run file made by a tiny real run."""
import os
import subprocess
import sys

import numpy as np
import pytest

from test_cli import gpo_mpi_command
from test_run import TINY, directory_listing


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "run.h5"
    result = subprocess.run([gpo_mpi_command(), *TINY, "--algo", "single", "--population", "2",
                             "--total-steps", "256", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def gpo_run(tmp_path_factory):
    """Two rounds of GPO on a MuJoCo task: KL matrices, a breeding record, renderable."""
    out = tmp_path_factory.mktemp("tools") / "gpo.h5"
    result = subprocess.run([gpo_mpi_command(), *TINY, "--env", "InvertedPendulum-v5", "--population", "3",
                             "--rounds", "2", "--total-steps", "3072", "--expert-steps", "64", "--dagger-iterations",
                             "1", "--dagger-steps", "64", "--selector-epochs", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def tool(*arguments, env=None):
    return subprocess.run([gpo_mpi_command(), *map(str, arguments)], capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def test_info_reports_config_progress_and_best(finished_run):
    result = tool("info", finished_run)
    assert result.returncode == 0, result.stderr
    assert "single on Pendulum-v1, population 2, 1 rank(s), seed 0" in result.stdout
    assert "progress: 256 of 256 environment steps, 2 of 2 iterations, complete" in result.stdout
    assert "best member at the end: " in result.stdout and "batch_steps=64" in result.stdout


def test_info_loads_neither_torch_nor_mpi(finished_run):
    """A look at a run answers at once: `gpo-mpi info` reads the file with h5py alone."""
    code = ("import sys\n"
            "from gpo_mpi.cli import main\n"
            "assert main(['info', sys.argv[1]]) == 0\n"
            "print(sorted(m for m in ('torch', 'mpi4py.MPI') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code, str(finished_run)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "progress: 256 of 256 environment steps" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


def test_eval_rolls_out_whole_episodes(finished_run):
    result = tool("eval", finished_run, "--episodes", "3", "--member", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("member 1 (read from the end of the run) on Pendulum-v1, 3 episodes, sampled "
                                    "actions: return -")


def test_exported_policy_runs_without_gpo_mpi_on_any_float_dtype(finished_run, tmp_path):
    exported = tmp_path / "new" / "directory" / "policy.pt"  # made, as plot -o makes its directory
    result = tool("export", finished_run, "-o", exported, "--member", "0")
    assert result.returncode == 0, result.stderr
    obs = np.random.default_rng(0).normal(size=(5, 3))  # float64, as gymnasium's Pendulum gives them
    np.save(tmp_path / "obs.npy", obs)
    code = ("import sys, numpy as np, torch\n"
            "policy = torch.jit.load(sys.argv[1])\n"
            "obs = torch.from_numpy(np.load(sys.argv[2]))\n"
            "torch.manual_seed(0)\n"
            "outputs = [policy(obs), policy(obs.float()).double(), policy(obs, False), policy.value(obs)]\n"
            "assert 'gpo_mpi' not in sys.modules and outputs[0].dtype == torch.float64\n"
            "np.save(sys.argv[3], np.stack([o.detach().numpy().reshape(5, -1)[:, 0] for o in outputs]))\n")
    plain = subprocess.run([sys.executable, "-c", code, str(exported), str(tmp_path / "obs.npy"),
                            str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    mean64, mean32, sampled, value = np.load(tmp_path / "out.npy")
    from gpo_mpi.saved import read_member
    run, _ = read_member(str(finished_run), 0)
    normalized = run.normalizer(obs)
    np.testing.assert_allclose(mean64, run.policies[0].numpy_mean()(normalized)[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mean32, mean64)
    import torch
    torch.manual_seed(0)
    noise = torch.randn(5, 1).numpy()[:, 0]
    np.testing.assert_allclose(sampled, mean64 + np.exp(run.policies[0].log_std.item()) * noise, rtol=1e-5)
    with torch.no_grad():
        expected_value = run.critics[0](torch.as_tensor(normalized, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mean64, 0.0) and not np.allclose(value, 0.0)


def test_load_policy_acts_like_the_run_and_reads_stopped_runs(mpirun, finished_run, tmp_path):
    import torch
    import gpo_mpi
    policy = gpo_mpi.load_policy(str(finished_run), member=1)
    obs = np.random.default_rng(1).normal(size=(4, 3))
    from gpo_mpi.saved import read_member
    run, _ = read_member(str(finished_run), 1)
    expected = run.policies[1].numpy_mean()(run.normalizer(obs))
    for dtype in (torch.float64, torch.float32):
        actions = policy(torch.as_tensor(obs, dtype=dtype))
        assert actions.dtype == dtype
        np.testing.assert_allclose(actions.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # a stopped run: its checkpoint's policies, and the tools say so
    stopped = tmp_path / "stopped.h5"
    result = mpirun(2, ["interrupt.py", "1", "2", *TINY, "--algo", "gpo", "--population", "4", "--rounds", "2",
                        "--total-steps", "3072", "--expert-steps", "64", "--dagger-iterations", "1",
                        "--dagger-steps", "64", "--out", str(stopped)], timeout=300)
    assert result.returncode == 3, result.stderr
    for arguments in (["eval", stopped, "--episodes", "1"], ["export", stopped, "-o", tmp_path / "p.pt"]):
        result = tool(*arguments)
        assert result.returncode == 0, result.stderr
        assert "the checkpoint at iteration 3 of 10, the run not finished" in result.stdout
    info = tool("info", stopped).stdout
    assert "3 of 10 iterations, not complete" in info
    plotted = tool("plot", stopped, "-o", tmp_path / "plots", "--figures", "curves")
    assert plotted.returncode == 0, plotted.stderr
    assert "not finished; drawn from its 3 of 10 iterations so far" in plotted.stdout
    assert (tmp_path / "plots" / "stopped-curves.png").exists()
    import h5py
    from gpo_mpi import checkpoint
    with h5py.File(stopped) as run_file:  # member 3 lives on rank 1
        _, rank_states = checkpoint.read_group(str(stopped), run_file)
        [state] = [m for m in rank_states[1]["members"] if m["index"] == 3]
    stopped_policy = gpo_mpi.load_policy(str(stopped), member=3)
    torch.testing.assert_close(stopped_policy.mean_net[0].weight, state["policy"]["mean_net.0.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("arguments, message", [
    (["info", "/nonexistent.h5"], "is not a readable HDF5 file"),
    (["eval", "RUN", "--member", "7"], "member 7 does not exist: the run has 2"),
    (["eval", "RUN", "--episodes", "0"], "--episodes must be positive"),
    (["plot", "RUN", "--figures", "kl"], "has no KL matrix: only gpo runs measure one"),
    (["plot", "RUN", "/nonexistent.h5"], "/nonexistent.h5 is not a readable HDF5 file"),
    (["plot", "RUN", "--state-steps", "0"], "--state-steps must be positive"),
])
def test_tools_refuse_bad_input_in_one_line(finished_run, arguments, message):
    result = tool(*[finished_run if a == "RUN" else a for a in arguments])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr


@pytest.mark.parametrize("arguments, message", [
    (["export", "RUN", "-o", "TMP/somefile/sub/policy.pt"],
     "export -o TMP/somefile/sub: cannot make the directory (TMP/somefile is a file)"),
    (["export", "RUN", "-o", "TMP/somefile/policy.pt"], "TMP/somefile is not a directory"),
    (["export", "RUN", "-o", "TMP/somedir"], "export -o TMP/somedir is a directory"),
    (["export", "RUN", "-o", "/proc/policy.pt"], "export -o /proc/policy.pt: cannot write in /proc"),
    (["plot", "RUN", "-o", "TMP/somefile"], "plot -o TMP/somefile is a file, not a directory"),
    (["plot", "RUN", "-o", "TMP/somefile/plots"], "plot -o TMP/somefile/plots: cannot make the directory"),
    (["eval", "RUN", "--video", "TMP/somefile"], "eval --video TMP/somefile is a file, not a directory"),
    (["plot", "RUN", "-o", "/proc/plots", "--figures", "curves"], "plot -o /proc/plots: cannot write in /proc"),
    (["eval", "RUN", "--episodes", "1", "--video", "/proc/videos"], "eval --video /proc/videos: cannot write in /proc"),
])
def test_bad_output_paths_are_one_line_and_change_nothing(finished_run, tmp_path, arguments, message):
    (tmp_path / "somefile").write_bytes(b"kept as it is")
    (tmp_path / "somedir").mkdir()
    before = directory_listing(tmp_path)
    result = tool(*[finished_run if a == "RUN" else a.replace("TMP", str(tmp_path)) for a in arguments])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    message = message.replace("TMP", str(tmp_path))
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert directory_listing(tmp_path) == before


def test_a_closed_pipe_ends_a_tool_quietly(finished_run):
    result = subprocess.run(f"'{gpo_mpi_command()}' info '{finished_run}' | head -c 10", shell=True,
                            capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert result.stdout == str(finished_run)[:10] and result.stderr == ""
    for arguments in (["info", finished_run], ["eval", finished_run, "--episodes", "1"]):
        # the reader is gone before the tool starts (it takes a second to import torch): its every write fails
        tool_process = subprocess.Popen([gpo_mpi_command(), *map(str, arguments)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        tool_process.stdout.close()
        assert tool_process.wait(timeout=120) == 0
        assert tool_process.stderr.read() == b""
        tool_process.stderr.close()


def png_shape(path):
    import matplotlib.image
    return matplotlib.image.imread(path).shape


def test_plot_draws_every_figure_of_a_gpo_run(gpo_run, tmp_path):
    result = tool("plot", gpo_run, "-o", tmp_path, "--state-steps", "200")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["gpo-curves.png", "gpo-family.png", "gpo-kl.png", "gpo-states.png"], written
    shapes = {name: png_shape(tmp_path / name) for name in written}
    assert all(len(shape) == 3 and shape[0] > 200 and shape[1] > 200 for shape in shapes.values()), shapes
    # the states line names both parents, both children, and the episodes each ended
    states_line = next(line for line in result.stdout.splitlines() if "gpo-states.png" in line)
    for name in ("(fitter)", "state-space child", "parameter-space child"):
        assert name in states_line
    assert states_line.count("episodes ended") + states_line.count("no episode ended") == 4


def test_breeding_a_couple_gives_the_selector_as_many_states_as_a_run(gpo_run, monkeypatch):
    """The selector of `gpo-mpi plot`'s and bench/crossover.py's crossovers trains on selector_states
    states of each parent's best episodes, as in a run (one batch of 64 steps holds at most 60)."""
    import dataclasses

    from gpo_mpi import crossover, saved, tools
    run = saved.load_run(str(gpo_run))
    config = dataclasses.replace(run.config, selector_states=100)
    given = {}
    monkeypatch.setattr(crossover, "make_child",
                        lambda operator, parents, fitter, parent_data, *rest: given.setdefault(operator, parent_data))
    tools.breed_couple(run, 0, 1, seed=3, config=config)
    assert [len(states) for states, _ in given["state"]] == [100, 100]
    for states, returns in given["state"]:
        assert states.shape[1] == run.normalizer.mean.shape[0] and len(returns) == 100


def test_plot_family_tree_and_heatmaps_follow_the_run(gpo_run):
    """Drawn from the run file: one edge per parent of every child, one heatmap per round."""
    import h5py
    from gpo_mpi import plot
    with h5py.File(gpo_run) as run_file:
        pairs = run_file["breeding/parent_pairs"][()]
        fitter = run_file["breeding/fitter_parent"][()]
        kl = run_file["rounds/kl_matrix"][()]
    tree = plot.family_tree(str(gpo_run))
    edges = sorted((x[0], y[0], x[1], y[1]) for x, y in (line.get_data() for line in tree.axes[0].lines))
    expected = sorted((b, parent, b + 1, child) for b, generation in enumerate(pairs)
                      for child, couple in enumerate(generation) for parent in couple)
    assert len(pairs) == 1 and edges == expected
    solid = sorted((*line.get_xdata(), *line.get_ydata()) for line in tree.axes[0].lines
                   if line.get_linestyle() == "-")  # x0, x1, y0, y1: from the fitter parent
    assert solid == sorted((b, b + 1, fitter[b, child], child) for b in range(len(pairs))
                           for child in range(pairs.shape[1]))
    heatmaps = plot.kl_heatmaps(str(gpo_run))
    images = [axes.images[0].get_array() for axes in heatmaps.axes if axes.images]
    assert len(images) == len(kl) == 2
    for image, matrix in zip(images, kl):
        np.testing.assert_array_equal(image, matrix)


def test_the_family_tree_draws_the_recorded_fitter_parent(gpo_run, tmp_path):
    """The solid edge is the parent the run file names, not one the plot works out again."""
    import shutil
    import h5py
    from gpo_mpi import plot
    changed = tmp_path / "changed.h5"
    shutil.copyfile(gpo_run, changed)
    with h5py.File(changed, "a") as run_file:
        pairs = run_file["breeding/parent_pairs"][()]
        other = np.where(run_file["breeding/fitter_parent"][()] == pairs[:, :, 0], pairs[:, :, 1], pairs[:, :, 0])
        run_file["breeding/fitter_parent"][...] = other
    tree = plot.family_tree(str(changed))
    solid = sorted((int(line.get_xdata()[0]), int(line.get_ydata()[0]), int(line.get_ydata()[1]))
                   for line in tree.axes[0].lines if line.get_linestyle() == "-")
    assert solid == sorted((0, int(other[0, child]), child) for child in range(pairs.shape[1]))


def test_plot_overlays_several_runs_and_skips_what_a_run_lacks(finished_run, gpo_run, tmp_path):
    result = tool("plot", finished_run, gpo_run, "-o", tmp_path, "--figures", "curves", "kl")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare-curves.png", "gpo-kl.png"]
    assert f"skipped kl of {finished_run}: {finished_run} has no KL matrix" in result.stdout


def offscreen_rendering_works() -> bool:
    """MuJoCo's own EGL renderer, without gpo-mpi: the machine's capability, not the code under test."""
    code = ("import mujoco\n"
            "model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody></mujoco>')\n"
            "renderer = mujoco.Renderer(model, 64, 64)\n"
            "renderer.update_scene(mujoco.MjData(model))\n"
            "assert renderer.render().shape == (64, 64, 3)\n")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                           env={**os.environ, "MUJOCO_GL": "egl"})
    return probe.returncode == 0


def test_eval_records_a_video_of_the_first_episode(gpo_run, tmp_path):
    if not offscreen_rendering_works():
        pytest.skip("MuJoCo's EGL offscreen rendering does not work on this machine")
    result = tool("eval", gpo_run, "--episodes", "2", "--video", tmp_path / "videos", "--deterministic",
                  env={"MUJOCO_GL": "egl"})
    assert result.returncode == 0, result.stderr
    assert "video of episode 1 (return " in result.stdout
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [next(line.split(": ")[-1] for line in result.stdout.splitlines()
                                             if "video" in line).split("/")[-1]]
    import imageio.v3 as iio
    frames = iio.imread(videos[0])
    episode_return = float(result.stdout.split("video of episode 1 (return ")[1].split(")")[0])
    # InvertedPendulum pays 1 per step: one frame at the reset and one per step
    assert frames.ndim == 4 and len(frames) == round(episode_return) + 1
    assert frames.std() > 0  # not a blank picture


def test_eval_video_where_rendering_cannot_work_is_one_line(gpo_run, tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    environment["MUJOCO_GL"] = "glfw"  # GLFW needs a display, and there is none
    result = subprocess.run([gpo_mpi_command(), "eval", str(gpo_run), "--video", str(tmp_path / "videos")],
                            capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "cannot record video: offscreen rendering does not work on this machine with MUJOCO_GL=glfw" in errors[0]
    assert not (tmp_path / "videos").exists()


def test_learning_curves_of_one_run_show_every_member_the_best_and_the_crossovers(gpo_run):
    import h5py
    from gpo_mpi import plot
    figure = plot.learning_curves([str(gpo_run)])
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    with h5py.File(gpo_run) as run_file:
        steps, returns = run_file["iterations/env_steps"][()], run_file["iterations/member_return"][()]
        rounds = run_file["iterations/round"][()]
    assert sorted(lines) == ["best member", "member 0", "member 1", "member 2"]
    for member in range(3):
        np.testing.assert_array_equal(lines[f"member {member}"].get_xdata(), steps)
        np.testing.assert_array_equal(lines[f"member {member}"].get_ydata(), returns[:, member])
    np.testing.assert_array_equal(lines["best member"].get_ydata(), np.nanmax(returns, axis=1))
    # one shaded span per crossover, from the round's last iteration to the next round's first
    spans = figure.axes[0].patches
    boundaries = np.flatnonzero(np.diff(rounds))
    assert len(spans) == len(boundaries) == 1
    assert np.isclose(spans[0].get_x(), steps[boundaries[0]]) and np.isclose(
        spans[0].get_x() + spans[0].get_width(), steps[boundaries[0] + 1])


def test_evaluations_during_training_are_what_eval_gives_and_resume_exactly(mpirun, tmp_path):
    """Every 2 iterations, of 2 episodes where the final evaluation has 3; stopped after iteration 4, whose
    evaluation and checkpoint hold the same policies."""
    from gpo_mpi import seeds
    from gpo_mpi.evaluate import episode_returns
    from gpo_mpi.rollout import EnvSpec
    from gpo_mpi.saved import read_member
    from test_resume import assert_same_run, run_file_contents
    import h5py
    arguments = [*TINY, "--population", "4", "--rounds", "2", "--total-steps", "3072", "--expert-steps", "64",
                 "--dagger-iterations", "1", "--dagger-steps", "64", "--eval-episodes", "3", "--eval-every", "2",
                 "--periodic-eval-episodes", "2"]
    whole = mpirun(2, [gpo_mpi_command(), *arguments, "--out", str(tmp_path / "whole.h5")])
    assert whole.returncode == 0, whole.stderr
    # iterations 2, 4, 6, 8; the last, 10, is evaluated once, by the final evaluation
    assert whole.stdout.count("evaluation at ") == 4
    # Pendulum's episodes last the whole 20-step horizon: 4 policies x 2 (final: 3) episodes x 20 steps
    assert whole.stdout.count("(2 episodes, mean action; 160 evaluation steps, not counted in the budget)") == 4
    assert whole.stdout.count("(3 episodes, mean action; 240 evaluation steps, not counted in the budget)") == 1
    with h5py.File(tmp_path / "whole.h5") as run_file:
        recorded = run_file["evaluations/returns"][()]
        # iterations 2, 4, then the breeding (512 steps), 6, 8, and the final one
        np.testing.assert_array_equal(run_file["evaluations/env_steps"][()], [512, 1024, 2048, 2560, 3072])
        np.testing.assert_array_equal(recorded[-1], run_file["final/eval_returns"][()])
    assert np.isnan(recorded[:-1, :, 2]).all() and np.isfinite(recorded[:, :, :2]).all()
    # info's table: each evaluation's best member, its mean return and the members' mean
    printed = tool("info", tmp_path / "whole.h5").stdout.splitlines()
    table = printed[printed.index("evaluations (mean action; 5):") + 2:][:5]
    means = np.nanmean(recorded, axis=2)
    for line, steps, row in zip(table, [512, 1024, 2048, 2560, 3072], means, strict=True):
        assert line.split() == [f"{steps:,}", str(int(np.argmax(row))), f"{row.max():.1f}", f"{row.mean():.1f}"]
    # the progress CSV: the same in the rows of the iterations evaluated after, blank in the others
    import csv
    rows = list(csv.DictReader(open(tmp_path / "whole.progress.csv")))
    evaluated = {int(row["env_steps"]): (row["eval_best_return"], row["eval_mean_return"]) for row in rows
                 if row["eval_best_return"]}
    assert evaluated == {steps: (f"{row.max():.6g}", f"{row.mean():.6g}")
                         for steps, row in zip([512, 1024, 2048, 2560, 3072], means)}
    assert sum(1 for row in rows if row["eval_mean_return"] == "") == len(rows) - 5
    stopped = tmp_path / "stopped.h5"
    result = mpirun(2, ["interrupt.py", "1", "3", *arguments, "--out", str(stopped)])
    assert result.returncode == 3, result.stderr
    with h5py.File(stopped) as run_file:
        steps, returns = run_file["evaluations/env_steps"][()], run_file["evaluations/returns"][()]
        np.testing.assert_array_equal(run_file["evaluations/evaluation_steps"][()], [160, 160])
    np.testing.assert_array_equal(steps, [512, 1024])
    for member in range(4):
        run, _ = read_member(str(stopped), member)
        seed = seeds.evaluation(run.config.seed, member)
        again = episode_returns(run.policies[member], run.normalizer, EnvSpec.of(run.config), 2, seed,
                                deterministic=True)
        np.testing.assert_array_equal(again, returns[-1, member, :2])
    # and the command says the same (for one member: it is the same function)
    printed = tool("eval", stopped, "--member", member, "--episodes", 2, "--seed", seed, "--deterministic")
    assert f"return {returns[-1, member, :2].mean():.1f} " in printed.stdout, printed.stdout
    resumed = mpirun(2, [gpo_mpi_command(), *arguments, "--out", str(stopped), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_file_contents(stopped), run_file_contents(tmp_path / "whole.h5"))
    with h5py.File(stopped) as run_file:
        means = np.nanmean(run_file["evaluations/returns"][()], axis=2)
        best = run_file["final/best_evaluated_policy_parameters"]
        row, member = np.unravel_index(np.argmax(means), means.shape)
        assert (best.attrs["member"], best.attrs["env_steps"]) == (member, run_file["evaluations/env_steps"][row])
        assert best.attrs["mean_return"] == means[row, member]
        best_parameters, best_normalizer = best[()], run_file["final/best_evaluated_obs_normalizer"][()]
    # the kept policy is the one evaluated: evaluated again, it gives the recorded return
    from gpo_mpi.networks import GaussianPolicy, load_flat_parameters
    policy = GaussianPolicy(3, 1, run.config.policy_hidden)
    load_flat_parameters(policy, best_parameters)
    run.normalizer.load_state(best_normalizer)
    episodes = 3 if row == len(means) - 1 else 2  # the final evaluation's, or a periodic one's
    again = episode_returns(policy, run.normalizer, EnvSpec.of(run.config), episodes,
                            seeds.evaluation(run.config.seed, int(member)), deterministic=True)
    assert again.mean() == means[row, member]
    from gpo_mpi import plot
    [evaluated] = [line for line in plot.learning_curves([str(stopped)]).axes[0].lines
                   if line.get_label().startswith("best member, evaluated")]
    np.testing.assert_array_equal(evaluated.get_ydata(), means.max(axis=1))


def test_a_progress_csv_beside_the_run_file_holds_its_iterations(gpo_run):
    import csv
    import h5py
    rows = list(csv.DictReader(open(str(gpo_run)[:-3] + ".progress.csv")))
    with h5py.File(gpo_run) as run_file:
        steps, returns = run_file["iterations/env_steps"][()], run_file["iterations/member_return"][()]
        beta = run_file["iterations/beta"][()]
        statistics = {name: run_file[f"iterations/{name}"][()] for name in
                      ("policy_kl", "approx_kl", "entropy", "explained_variance", "episode_length")}
    assert [int(row["env_steps"]) for row in rows] == steps.tolist()
    for name, values in statistics.items():  # each member statistic's mean over members
        for row, value in zip(rows, np.nanmean(values, axis=1)):
            assert (row[f"{name}_mean"] == "") if np.isnan(value) else np.isclose(float(row[f"{name}_mean"]), value,
                                                                                  rtol=1e-5, atol=1e-6)
    for row, member_returns, member_beta in zip(rows, returns, beta):
        for i, value in enumerate(member_returns):
            assert (row[f"return_{i}"] == "") if np.isnan(value) else np.isclose(float(row[f"return_{i}"]), value,
                                                                                  rtol=1e-5)
        assert np.isclose(float(row["beta_mean"]), member_beta.mean(), rtol=1e-5)
        if np.isfinite(member_returns).any():
            assert np.isclose(float(row["best_return"]), np.nanmax(member_returns), rtol=1e-5)


@pytest.fixture(scope="module")
def two_member_runs(tmp_path_factory):
    """Single on Pendulum with seeds 0 and 1, and GPO with a population of 2 (3 rounds)."""
    folder = tmp_path_factory.mktemp("pairs")
    runs = {}
    for name, extra in [("single-0", ["--algo", "single", "--seed", "0", "--total-steps", "1024"]),
                        ("single-1", ["--algo", "single", "--seed", "1", "--total-steps", "1024"]),
                        ("gpo", ["--rounds", "3", "--total-steps", "2048", "--expert-steps", "64",
                                 "--dagger-iterations", "1", "--dagger-steps", "64"])]:
        runs[name] = folder / f"{name}.h5"
        result = subprocess.run([gpo_mpi_command(), *TINY, "--population", "2", *extra, "--out", str(runs[name])],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    return runs


def test_curves_of_several_runs_average_the_seeds_of_each_algorithm_per_environment(two_member_runs, gpo_run):
    import h5py
    from gpo_mpi import plot
    figure = plot.learning_curves([str(two_member_runs["single-0"]), str(two_member_runs["single-1"]),
                                   str(two_member_runs["gpo"]), str(gpo_run)])
    assert [ax.get_title() for ax in figure.axes] == ["InvertedPendulum-v5", "Pendulum-v1"]
    pendulum = figure.axes[1]
    lines = {line.get_label().split(" ")[0]: line for line in pendulum.lines}
    assert sorted(lines) == ["gpo", "single"]
    assert lines["gpo"].get_label().endswith("(1 seed(s))") and lines["single"].get_label().endswith("(2 seed(s))")
    runs = []
    for seed in (0, 1):
        with h5py.File(two_member_runs[f"single-{seed}"]) as run_file:
            runs.append((run_file["iterations/env_steps"][()],
                         plot.best_member_curve(run_file["iterations/member_return"][()])))
    grid, mean, error = plot.seed_band(runs)
    np.testing.assert_allclose(lines["single"].get_ydata(), mean)
    np.testing.assert_allclose(lines["single"].get_xdata(), grid)
    # the band: the two seeds' spread, as the standard error of their mean
    at = len(grid) // 2
    two = [np.interp(grid[at], steps, curve) for steps, curve in runs]
    np.testing.assert_allclose(error[at], abs(two[0] - two[1]) / 2)


def test_kl_heatmaps_are_log_scaled_and_show_the_share_sets(gpo_run, two_member_runs, tmp_path):
    import h5py
    from matplotlib.colors import LogNorm
    from gpo_mpi import plot
    from gpo_mpi.runfile import open_run, stored_config
    for run in (gpo_run, two_member_runs["gpo"]):
        with open_run(str(run)) as run_file:
            config, kl = stored_config(run_file), run_file["rounds/kl_matrix"][()]
            set_sizes = run_file["rounds/share_set_sizes"][()]  # what training used, recorded apart
        figure = plot.kl_heatmaps(str(run))
        panels = [ax for ax in figure.axes if ax.images]
        assert len(panels) == len(kl) and all(isinstance(ax.images[0].norm, LogNorm) for ax in panels)
        for ax, matrix, sizes in zip(panels, kl, set_sizes):
            # the rule by hand: the share_max nearest others (ties to the lower index) under share_epsilon
            expected = []
            for i, row in enumerate(matrix):
                near = sorted((row[j], j) for j in range(len(row)) if j != i and row[j] < config.share_epsilon)
                expected += [(j, i) for _, j in near[:config.share_max or None]]
            dots = sorted(tuple(map(int, point)) for c in ax.collections for point in c.get_offsets())
            assert dots == sorted(expected)
            assert np.bincount([i for _, i in dots], minlength=len(matrix)).tolist() == (sizes - 1).tolist()
            assert list(ax.get_xticks()) == list(range(len(matrix)))  # whole slots only, also at m = 2
    result = tool("plot", two_member_runs["gpo"], "-o", tmp_path, "--figures", "kl", "family", "--format", "svg")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpo-family.svg", "gpo-kl.svg"]
    assert (tmp_path / "gpo-kl.svg").read_text().lstrip().startswith("<?xml")
    with h5py.File(two_member_runs["gpo"]) as run_file:
        assert run_file["breeding/parent_pairs"].shape == (2, 2, 2)


def test_runs_are_grouped_by_what_they_ran_not_by_seed_or_budget():
    from gpo_mpi.config import PRESETS, RunConfig
    from gpo_mpi.plot import _group_label
    assert _group_label(RunConfig(seed=3, total_steps=10)) == "gpo"
    assert _group_label(RunConfig(**PRESETS["paper-literal"], seed=1)) == "gpo paper-literal"
    assert _group_label(RunConfig(components="CS", share_max=2, population=8)) == "gpo CS share_max=2"
    assert _group_label(RunConfig(population=8, share_max=0)) == _group_label(RunConfig(population=8, share_max=7))
    # Single and Joint read no GPO field: runs made under other GPO defaults are the same baseline
    assert _group_label(RunConfig(algo="single", share_epsilon=0.1, share_max=0)) == "single"
    assert _group_label(RunConfig(algo="joint", policy_lr=1e-4)) == "joint policy_lr=0.0001"


def test_plots_of_a_population_of_32_keep_sparse_whole_slot_ticks_and_every_member(tmp_path):
    """Layouts that hold at m = 32 (the other tests draw 2, 3 and 4 members), written as PDF."""
    from gpo_mpi import plot
    out = tmp_path / "m32.h5"
    result = subprocess.run([gpo_mpi_command(), *TINY, "--population", "32", "--rounds", "2", "--total-steps", "8192",
                             "--expert-steps", "32", "--dagger-iterations", "1", "--dagger-steps", "32",
                             "--selector-epochs", "1", "--dagger-epochs", "1", "--policy-epochs", "1",
                             "--critic-epochs", "1", "--eval-episodes", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    slots = list(range(0, 32, 4))  # 8 ticks, not 32 crowded ones
    heatmaps = plot.kl_heatmaps(str(out))
    panels = [ax for ax in heatmaps.axes if ax.images]
    assert len(panels) == 2 and all(list(ax.get_xticks()) == slots == list(ax.get_yticks()) for ax in panels)
    tree = plot.family_tree(str(out))
    nodes = [c.get_offsets() for c in tree.axes[0].collections]
    assert [len(points) for points in nodes] == [32, 32] and list(tree.axes[0].get_yticks()) == slots
    assert len(tree.axes[0].lines) == 2 * 32  # both parents of every child
    written = tool("plot", out, "-o", tmp_path / "figures", "--figures", "curves", "kl", "family", "--format", "pdf")
    assert written.returncode == 0, written.stderr
    for name in ("m32-curves.pdf", "m32-kl.pdf", "m32-family.pdf"):
        assert (tmp_path / "figures" / name).read_bytes().startswith(b"%PDF")


def test_a_loaded_policy_predicts_on_numpy_and_no_output_carries_a_graph(finished_run, tmp_path):
    import torch
    import gpo_mpi
    policy = gpo_mpi.load_policy(str(finished_run), member=1)
    batch = np.random.default_rng(2).normal(size=(5, 3))  # float64, as gymnasium gives Pendulum's
    expected = policy(torch.from_numpy(batch)).numpy()  # no .detach(): nothing asks for gradients
    actions = policy.predict(batch)
    assert isinstance(actions, np.ndarray) and actions.dtype == np.float64 and actions.shape == (5, 1)
    np.testing.assert_array_equal(actions, expected)
    one = policy.predict(batch[2])
    assert one.shape == (1,) and one.dtype == np.float64
    np.testing.assert_allclose(one, expected[2], rtol=1e-6)  # a single row's product differs in the last bits
    as_float32 = policy.predict(batch.astype(np.float32))
    assert as_float32.dtype == np.float32
    np.testing.assert_allclose(as_float32, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(policy.predict(batch.tolist()), expected)  # a list reads as float64 numpy
    torch.manual_seed(0)
    sampled = policy.predict(batch, deterministic=False)
    assert sampled.shape == (5, 1) and not np.allclose(sampled, expected)
    for output in (policy(torch.from_numpy(batch)), policy.value(torch.from_numpy(batch))):
        assert output.grad_fn is None and not output.requires_grad
    with pytest.raises(ValueError, match=r"one observation of shape \(3,\) or a batch of shape \(n, 3\), got "
                                         r"shape \(4,\)"):
        policy.predict(np.zeros(4))
    exported = tmp_path / "policy.pt"
    assert tool("export", finished_run, "--member", "1", "-o", exported).returncode == 0
    scripted = torch.jit.load(str(exported))
    for output in (scripted(torch.from_numpy(batch)), scripted.value(torch.from_numpy(batch))):
        assert output.grad_fn is None and not output.requires_grad
    np.testing.assert_array_equal(scripted(torch.from_numpy(batch)).numpy(), expected)
