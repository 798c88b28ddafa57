"""gpo-mpi compare, run summaries and the study runner (bench/study.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from gpo_mpi import compare, summary
from gpo_mpi.config import ConfigError, RunConfig, to_dict
from test_cli import gpo_mpi_command
from test_run import TINY

BENCH = Path(__file__).resolve().parent.parent / "bench"
# A whole GPO run of 2 rounds with an evaluation every 2 iterations (2 episodes; 3 at the end).
TINY_STUDY = [*TINY, "--population", "4", "--eval-every", "2", "--eval-episodes", "3", "--periodic-eval-episodes",
              "2"]
GPO_ARGUMENTS = "--algo gpo --rounds 2 --total-steps 3072 --expert-steps 64 --dagger-iterations 1 --dagger-steps 64"


# ------------------------------------------------------------------ statistics
def test_iqm_is_the_mean_of_the_middle_half_as_rliable_computes_it():
    from rliable import metrics
    assert compare.iqm(np.array([[1.0], [2], [3], [4], [5], [6], [7], [100]])) == 4.5  # 2 cut from each end
    assert compare.iqm(np.array([[3.0], [1], [2], [50], [-40]])) == 2.0  # 1 cut from each end: mean(1, 2, 3)
    generator = np.random.default_rng(0)
    for runs in range(1, 14):
        scores = generator.normal(size=(runs, 3))
        assert compare.iqm(scores) == pytest.approx(metrics.aggregate_iqm(scores), abs=1e-12)
    # per column with NaN (a run that did not get there) left out
    columns = np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 5.0], [4.0, 7.0], [100.0, 9.0]])
    np.testing.assert_allclose(compare.iqm_per_column(columns), [3.0, 6.0])  # (2 + 3 + 4) / 3, (5 + 7) / 2


def test_probability_of_improvement_counts_ties_as_half_as_rliable_does():
    from rliable import metrics
    # task 1: pairs (1>0) (1<2) (2>0) (2=2): 2.5 of 4; task 2: X always above: 1
    x, y = np.array([[1.0, 5.0], [2.0, 6.0]]), np.array([[0.0, 1.0], [2.0, 2.0]])
    assert compare.probability_of_improvement(x, y) == pytest.approx((0.625 + 1.0) / 2)
    generator = np.random.default_rng(1)
    for runs in range(1, 9):
        x = generator.integers(0, 4, size=(runs, 3)).astype(float)
        y = generator.integers(0, 4, size=(runs + 2, 3)).astype(float)
        assert compare.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))


def test_the_bootstrap_interval_is_a_stratified_percentile_interval_reproducible_by_seed():
    scores = np.array([[1.0, 10.0], [2.0, 30.0], [4.0, 20.0], [8.0, 50.0], [16.0, 40.0]])
    points, intervals = compare.point_and_interval({"a": scores}, compare.mean_median_iqm, 300, seed=3)
    # by hand: resample the runs of each task (column) apart, 300 times, from numpy's generator seeded 3
    np.random.seed(3)
    resampled = [scores[np.random.choice(5, (5, 2), replace=True), np.arange(2)[None]] for _ in range(300)]
    by_hand = np.array([[np.mean(r), np.median(r), compare.iqm(r)] for r in resampled])
    np.testing.assert_allclose(points["a"], [np.mean(scores), np.median(scores), (4 + 8 + 10 + 16 + 20 + 30) / 6])
    np.testing.assert_allclose(intervals["a"], np.percentile(by_hand, [2.5, 97.5], axis=0))
    _, again = compare.point_and_interval({"a": scores}, compare.mean_median_iqm, 300, seed=3)
    np.testing.assert_array_equal(again["a"], intervals["a"])
    _, other = compare.point_and_interval({"a": scores}, compare.mean_median_iqm, 300, seed=4)
    assert not np.array_equal(other["a"], intervals["a"])


# ------------------------------------------------------------------ grouping and labels
def config(**fields) -> dict:
    return {**to_dict(RunConfig()), **fields}


def test_variants_that_differ_only_in_rounds_get_two_short_labels():
    assert compare.variant_labels([config(rounds=6), config(rounds=3)]) == ["gpo rounds=6", "gpo rounds=3"]
    # a field at its default is not named: only what differs, where it differs from the defaults
    assert compare.variant_labels([config(rounds=12), config(rounds=3)]) == ["gpo", "gpo rounds=3"]


def test_labels_name_the_algorithm_components_and_presets_but_not_fields_the_algorithm_does_not_read():
    from gpo_mpi.config import PRESETS
    configs = [config(rounds=6), config(algo="single"), config(algo="joint"),
               config(rounds=6, **PRESETS["paper-literal"]), config(rounds=6, components="S"),
               config(rounds=6, components="")]
    assert compare.variant_labels(configs) == ["gpo", "single", "joint", "gpo paper-literal", "gpo Base+S",
                                               "gpo Base"]
    assert compare.variant_labels([config(algo="single"), config(algo="single", policy_lr=1e-3)]) == \
        ["single", "single policy_lr=0.001"]
    # fields Single does not read (rounds, share_rows) make no other variant of it
    singles = [make_run(config(algo="single", rounds=6), "A", 0, 1.0), make_run(config(algo="single"), "A", 1, 2.0),
               make_run(config(algo="single", share_rows=0), "A", 2, 3.0)]
    variants, notes = compare.group(singles)
    assert [v.label for v in variants] == ["single"] and len(variants[0].runs["A"]) == 3 and not notes


def make_run(label_config: dict, task: str, seed: int, held_out: float, source: str = "") -> compare.Run:
    return compare.Run(source or f"{task}-{seed}", task, seed, {**label_config, "seed": seed}, held_out,
                       held_out - 10, np.array([100.0, 200.0]), np.array([held_out / 2, held_out]), 60.0, "abc")


def test_grouping_pools_seeds_flags_a_configuration_and_seed_given_twice_and_takes_labels():
    gpo, single = config(rounds=6), config(algo="single")
    runs = [make_run(gpo, "A", seed, 10.0 + seed) for seed in (2, 0, 1)] + \
        [make_run(single, "A", 0, 5.0), make_run(single, "A", 0, 6.0, source="copy.json")]
    variants, notes = compare.group(runs, {"single": "PPO"})
    assert [v.label for v in variants] == ["gpo", "PPO"]
    assert [run.seed for run in variants[0].runs["A"]] == [0, 1, 2]
    assert len(variants[1].runs["A"]) == 1 and variants[1].runs["A"][0].held_out == 5.0
    assert notes == ["copy.json: the same configuration and seed as A-0: left out"]
    with pytest.raises(ConfigError, match="--label names no variant: joint"):
        compare.group(runs, {"joint": "x"})


def test_the_comparison_normalizes_by_the_reference_and_trims_cells_to_the_smallest():
    gpo, joint = config(rounds=6), config(algo="joint")
    runs = [make_run(gpo, task, seed, value) for task, values in (("A", [2, 4, 6]), ("B", [10, 30]))
            for seed, value in enumerate(values)]
    runs += [make_run(joint, task, seed, value) for task, values in (("A", [4, 4]), ("B", [20, 20]))
             for seed, value in enumerate(values)]
    variants, _ = compare.group(runs)
    result = compare.compare(variants, reps=200, seed=0)
    assert result.reference == "joint" and result.aggregate_runs == 2
    # gpo normalized: task A seeds 0, 1 -> 0.5, 1.0; task B -> 0.5, 1.5 (seed 2 of task A left out)
    np.testing.assert_allclose(result.aggregate["gpo"]["point"], [0.875, 0.75, compare.iqm([0.5, 1.0, 0.5, 1.5])])
    np.testing.assert_allclose(result.per_task["gpo", "A"]["held_out"], [4, 4, 4])
    assert result.per_task["gpo", "A"]["n"] == 3
    assert any("2 lowest seeds" in note for note in result.notes)
    # P(gpo > joint): task A 0.5 (2 < 4, 4 = 4 twice: 0 + 0.5 + 0 + 0.5 over 4 pairs ...) computed by hand
    p_a = np.mean([[float(x > y) + 0.5 * (x == y) for y in (4, 4)] for x in (2, 4)])
    p_b = np.mean([[float(x > y) + 0.5 * (x == y) for y in (20, 20)] for x in (10, 30)])
    assert result.improvement["gpo", "joint"][0] == pytest.approx((p_a + p_b) / 2)


# ------------------------------------------------------------------ summaries, compare on real runs
@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """Two seeds of GPO and of Single, run by the study runner from a plan."""
    root = tmp_path_factory.mktemp("study")
    plan = root / "tiny.toml"
    plan.write_text(f'name = "tiny"\nranks = 2\narguments = "{" ".join(TINY_STUDY)}"\n[[runs]]\n'
                    f'tasks = ["Pendulum-v1"]\nseeds = [0, 1]\n'
                    f'variants = {{ gpo = "{GPO_ARGUMENTS}", single = "--algo single --total-steps 2048" }}\n')
    result = study(plan, root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, plan, result


def study(plan: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "study.py"), str(plan), "--results", str(root / "results"),
                           "--runs", str(root / "runs"), *extra], capture_output=True, text=True, timeout=600,
                          cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_summary_holds_what_the_run_file_says(study_runs):
    from gpo_mpi.evaluate import episode_returns
    from gpo_mpi.rollout import EnvSpec
    from gpo_mpi.saved import load_run
    root, _, _ = study_runs
    path = root / "runs" / "tiny" / "gpo-Pendulum-v1-s1.h5"
    stored = summary.read(root / "results" / "tiny" / "gpo-Pendulum-v1-s1.json")
    with h5py.File(path) as run_file:
        assert stored["config"] == json.loads(run_file.attrs["config"])
        np.testing.assert_allclose(stored["evaluation_means"],
                                   np.nanmean(run_file["evaluations/returns"][()], axis=2), atol=0.005)
        assert stored["evaluation_steps"] == run_file["evaluations/env_steps"][()].tolist()
        final = run_file["final/eval_returns"][()].mean(axis=1)
        assert stored["best_member"] == int(np.argmax(final)) == run_file["final"].attrs["best_member"]
        assert stored["members_mean_return"] == pytest.approx(final.mean())
        assert stored["wall_time"] == run_file["iterations/wall_time"][-1]
    run = load_run(str(path))
    again = episode_returns(run.policies[stored["best_member"]], run.normalizer, EnvSpec.of(run.config), 10,
                            summary.HELD_OUT_SEED + 1, deterministic=True)
    assert stored["held_out_return"] == again.mean()
    assert stored["study"]["name"] == "tiny" and stored["study"]["seconds"] > 0 and stored["seed"] == 1


def test_reading_a_summary_refuses_what_is_not_one(tmp_path):
    cases = {"not json": "{", "foreign": json.dumps({"format": "something else"}),
             "damaged": json.dumps({"format": summary.FORMAT, "format_version": summary.FORMAT_VERSION}),
             "newer": json.dumps({"format": summary.FORMAT, "format_version": 99})}
    expected = {"not json": "is not a readable gpo-mpi run summary", "foreign": "is not a gpo-mpi run summary",
                "damaged": "is a damaged run summary (no config, task", "newer": "of format 99"}
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected[name].replace("(", r"\(")):
            summary.read(path)


def test_the_study_skips_what_is_done_and_resumes_what_was_stopped(study_runs, mpirun, tmp_path):
    root, plan, first = study_runs
    assert first.stdout.count("study: start ") == 4
    done = sorted((root / "results" / "tiny").glob("*.json"))
    modified = [path.stat().st_mtime_ns for path in done]
    again = study(plan, root)
    assert again.returncode == 0, again.stderr
    assert "4 of 4 runs done" in again.stdout and "study: start" not in again.stdout
    assert [path.stat().st_mtime_ns for path in done] == modified

    # a run stopped by a signal after iteration 3, then taken up by the study: resumed, and the same run
    sys.path.insert(0, str(BENCH))
    import study as study_module
    _, planned = study_module.read_plan(str(plan), tmp_path / "results", tmp_path / "runs")
    gpo_s1 = next(run for run in planned if run.name == "gpo-Pendulum-v1-s1")
    gpo_s1.run_file.parent.mkdir(parents=True)
    stopped = mpirun(2, ["interrupt.py", "1", "3", *gpo_s1.arguments, "--out", str(gpo_s1.run_file)])
    assert stopped.returncode == 3, stopped.stderr
    resumed = study(plan, tmp_path, "--only", "gpo-Pendulum-v1-s1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "study: resume gpo-Pendulum-v1-s1" in resumed.stdout
    assert "--resume" in gpo_s1.log_file.read_text()
    whole = summary.read(root / "results" / "tiny" / "gpo-Pendulum-v1-s1.json")
    taken_up = summary.read(gpo_s1.summary_file)
    assert taken_up["study"]["resumed"] is True
    for name in ("evaluation_means", "final_evaluation_means", "held_out_return", "iteration_member_returns"):
        assert taken_up[name] == whole[name], name


def test_compare_on_the_study_prints_the_table_and_draws_the_figures(study_runs, tmp_path):
    root, _, _ = study_runs
    unfinished = tmp_path / "unfinished.h5"
    with h5py.File(root / "runs" / "tiny" / "single-Pendulum-v1-s0.h5") as source, h5py.File(unfinished, "w") as copy:
        for name, value in source.attrs.items():
            copy.attrs[name] = value
        for name in source:
            if name != "final":
                source.copy(source[name], copy, name)
        config = json.loads(source.attrs["config"])
        copy.attrs["config"] = json.dumps({**config, "seed": 7})
    result = subprocess.run([gpo_mpi_command(), "compare", str(root / "results" / "tiny"), str(unfinished),
                             "--label", "single total_steps=2048=single", "--reps", "200", "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summaries = [summary.read(path) for path in sorted((root / "results" / "tiny").glob("gpo-*.json"))]
    held_out = [s["held_out_return"] for s in summaries]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| Pendulum-v1 | gpo total_steps"))
    assert f"| 2 (0,1) | {np.mean(held_out):.0f} [" in row and row.endswith("| screening |")
    assert "| Pendulum-v1 | single | 2 (0,1) |" in result.stdout
    assert f"{unfinished}: unfinished" in result.stdout and "not in the scores" in result.stdout
    for name in ("compare.md", "compare.csv", "intervals.png", "improvement.png", "curves.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    # the run files give the same table as their summaries (a second copy of each is flagged, not counted)
    from_files = subprocess.run([gpo_mpi_command(), "compare", *sorted(map(str, (root / "runs" / "tiny").glob("*.h5"))),
                                 "--reps", "200"], capture_output=True, text=True, timeout=300)
    assert from_files.returncode == 0, from_files.stderr
    def gpo_rows(text):  # without the load column, which only the study's summaries know
        return ["|".join(cells[:-3] + cells[-2:]) for cells in
                (line.split("|") for line in text.splitlines() if line.startswith("| Pendulum-v1 | gpo"))]
    assert gpo_rows(result.stdout) == gpo_rows(from_files.stdout) and len(gpo_rows(result.stdout)) == 1
    assert next(line for line in result.stdout.splitlines() if "| single |" in line).split("|")[-3].strip() \
        .endswith(f" on {os.cpu_count()}")  # the machine's load while the study ran them


def test_compare_refuses_bad_input_with_one_line(study_runs, tmp_path):
    root, _, _ = study_runs
    (tmp_path / "foreign.json").write_text("[1, 2]")
    crafted = summary.read(next((root / "results" / "tiny").glob("gpo-*.json")))
    (tmp_path / "crafted.json").write_text(json.dumps({**crafted, "held_out_return": {"not": "a number"}}))
    for arguments, message in [([str(tmp_path / "missing")], "does not exist"),
                               ([str(tmp_path / "foreign.json")], "is not a gpo-mpi run summary"),
                               ([str(tmp_path / "crafted.json")], "crafted.json is damaged or not from this gpo-mpi"),
                               ([str(root / "results" / "tiny"), "--label", "nothing"], "--label takes OLD=NEW"),
                               ([str(root / "results" / "tiny"), "--normalize-by", "ppo"], "--normalize-by names no"),
                               ([str(root / "results" / "tiny"), "--reps", "10"], "--reps must be at least 100")]:
        result = subprocess.run([gpo_mpi_command(), "compare", *arguments], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, arguments
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
