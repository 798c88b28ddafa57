"""The typed config: defaults, presets, TOML, flags, and validation."""
import argparse
import re

import pytest

from gpo_mpi import config
from gpo_mpi.config import ConfigError, RunConfig


def parse(argv, n_ranks=1):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_arguments(parser.parse_args(argv), n_ranks)


def test_defaults_follow_the_paper():
    run = parse([], n_ranks=4)
    assert (run.env, run.algo, run.mutation, run.population) == ("Hopper-v5", "gpo", "ppo", 8)
    assert (run.batch_steps, run.gamma, run.rounds, run.total_steps) == (2048, 0.99, 12, 8_000_000)
    assert (run.policy_hidden, run.critic_hidden) == ((64, 64), (32, 32))


def test_every_field_has_a_docstring_and_a_flag():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    flags = {action.dest for action in parser._actions}
    for field in config.fields(RunConfig):
        assert config._FIELD_DOCS.get(field.name), f"{field.name} has no docstring"
        assert field.name in flags


def test_flags_override_toml_which_overrides_preset(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('env = "Walker2d-v5"\nbatch_steps = 1024\nhorizon = 300\npolicy_hidden = [32, 16]\n'
                    'policy_lr = 1\n')
    run = parse(["--preset", "minibatch", "--config", str(toml), "--batch-steps", "512", "--no-normalize-advantages",
                 "--horizon", "0", "--algo", "single"])
    assert run.env == "Walker2d-v5"
    assert run.batch_steps == 512           # flag beats file
    assert run.horizon == 0                 # flag beats file (300)
    assert run.policy_lr == 1.0 and isinstance(run.policy_lr, float)  # file beats preset (3e-4)
    assert (run.minibatch, run.critic_epochs) == (64, 10)               # from the preset
    assert run.policy_hidden == (32, 16)
    assert run.normalize_advantages is False


def test_env_kwargs_from_a_toml_table_or_a_json_flag(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('env = "HopperHilly-v5"\n[env_kwargs]\ndifficulty = 0.5\nterrain_seed = 3\n')
    assert parse(["--config", str(toml)], 2).env_kwargs == {"difficulty": 0.5, "terrain_seed": 3}
    assert parse(["--config", str(toml), "--env-kwargs", '{"difficulty": 2}'], 2).env_kwargs == {"difficulty": 2}
    assert parse([], 2).env_kwargs == {}
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    for bad in ("difficulty=2", "[1, 2]"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--env-kwargs", bad])


@pytest.mark.parametrize("text, message", [
    ("batch_stepz = 5\n", "unknown field(s) batch_stepz"),
    ('batch_steps = "big"\n', "batch_steps must be an integer"),
    ("policy_lr = true\n", "policy_lr must be a number"),
    ('algo = "neat"\n', "algo must be one of 'gpo', 'single', 'joint'"),
    ("policy_hidden = [64, 6.5]\n", "policy_hidden must be a list of integers"),
    ("batch_steps = \n", "is not valid TOML"),
    ('env_kwargs = "difficulty=2"\n', "env_kwargs must be a table of keyword arguments"),
])
def test_bad_toml_is_rejected_with_one_line(tmp_path, text, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as error:
        parse(["--config", str(toml)])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("argv, n_ranks, message", [
    (["--total-steps", "0"], 1, "total_steps must be positive"),
    (["--batch-steps", "-5"], 1, "batch_steps must be positive"),
    (["--population", "3"], 4, "population (3) must be at least the number of ranks (4)"),
    (["--population", "-2"], 1, "population must be positive"),
    (["--gamma", "1.5"], 1, "gamma must lie in [0, 1]"),
    (["--policy-lr", "nan"], 1, "policy_lr must be a positive number"),
    (["--batch-steps", "100", "--n-envs", "3"], 1, "must be a multiple of n_envs"),
    (["--total-steps", "1000", "--algo", "single"], 1, "total_steps (1,000) is too small"),
    (["--population", "1"], 1, "gpo needs a population of at least 2"),
    (["--components", "CX"], 1, "components must be letters out of C, S, M"),
    (["--elites", "8"], 1, "elites (8) must be below the population (8)"),
    (["--elites", "-1"], 1, "elites must be zero or positive"),
    (["--top-fraction", "0"], 1, "top_fraction must lie in (0, 1]"),
    (["--algo", "joint", "--population", "2"], 3, "population (2) must be at least the number of ranks (3)"),
    (["--config", "/nonexistent.toml"], 1, "does not exist"),
])
def test_bad_values_are_rejected(argv, n_ranks, message):
    with pytest.raises(ConfigError) as error:
        parse(argv, n_ranks)
    assert message in str(error.value)


def test_members_are_spread_over_the_ranks_as_evenly_as_possible():
    def layout(population, n_ranks):
        run = parse(["--algo", "single", "--population", str(population)], n_ranks=n_ranks)
        return [list(run.member_slots(rank, n_ranks)) for rank in range(n_ranks)]
    assert layout(8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert layout(5, 5) == [[0], [1], [2], [3], [4]]
    assert layout(7, 2) == [[0, 1, 2, 3], [4, 5, 6]]


def test_the_default_population_is_the_papers_or_one_member_per_rank():
    assert parse([], n_ranks=1).population == 8
    assert parse(["--algo", "joint"], n_ranks=3).population == 8
    assert parse([], n_ranks=16).population == 16


def test_iterations_fit_the_budget():
    run = parse(["--algo", "single", "--population", "2", "--total-steps", "10000"], n_ranks=1)
    assert run.steps_per_iteration == 4096 and run.iterations == 2
    # GPO: 2 rounds of 3 iterations of 4,096 steps, and between them 2 crossovers of 5,000 + 10 x 500 steps
    gpo = parse(["--population", "2", "--rounds", "2", "--total-steps", str(2 * 3 * 4096 + 2 * 10_000)])
    assert gpo.crossover_steps_per_child == 10_000
    assert (gpo.iterations_per_round, gpo.iterations) == (3, 6)
    copy = parse(["--population", "2", "--rounds", "2", "--total-steps", "16384", "--components", "SM"])
    assert copy.crossover_steps_per_child == 0 and copy.iterations_per_round == 2


def test_tensorboard_without_the_package_is_bad_input(monkeypatch):
    import importlib.util
    assert parse(["--tensorboard", "tb"], 2).tensorboard == "tb"  # installed for the tests
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"--tensorboard needs the tensorboard package: pip install"):
        parse(["--tensorboard", "tb"], 2)
    assert parse([], 2).tensorboard == ""


def test_integer_fields_take_whole_numbers_in_any_spelling(tmp_path):
    for spelling in ("2000000", "2_000_000", "2e6", "2E6", "2000000.0"):
        assert parse(["--total-steps", spelling]).total_steps == 2_000_000
    toml = tmp_path / "run.toml"
    toml.write_text("total_steps = 2e6\nbatch_steps = 1_024\n")
    assert (parse(["--config", str(toml)]).total_steps, parse(["--config", str(toml)]).batch_steps) == \
        (2_000_000, 1024)
    toml.write_text("total_steps = 1.5e3\nbatch_steps = 10.5\n")
    with pytest.raises(ConfigError, match="batch_steps must be an integer, got 10.5"):
        parse(["--config", str(toml)])


@pytest.mark.parametrize("argv, message", [
    (["--population", "2", "--total-steps", "20000"],
     "total_steps (20,000) is too small: 12 rounds of at least one iteration (4,096 steps) with a crossover of "
     "20,000 steps between them need 269,152 steps: give --total-steps 269152, or --rounds 1"),
    (["--total-steps", "1e6", "--rounds", "40"], "give --total-steps 3775360, or --rounds 11"),
    (["--algo", "single", "--total-steps", "100"],
     "one iteration of the population takes 16,384 steps (--total-steps 16384)"),
])
def test_a_budget_too_small_says_what_would_fit(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(argv)
    # and what it says fits
    for fix in re.findall(r"(--total-steps|--rounds) (\d+)", message):
        parse([*argv, *fix])


def test_mistyped_names_get_a_suggestion(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text("totl_steps = 5\n")
    with pytest.raises(ConfigError, match=re.escape("unknown field(s) totl_steps (did you mean total_steps?)")):
        parse(["--config", str(toml)])
    from gpo_mpi.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--totl-steps", "5"])
    assert "unrecognized arguments: --totl-steps (did you mean --total-steps?) 5" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a prefix is a typo too, not the flag it begins
        build_parser().parse_args(["--total-step", "5"])
    assert "unrecognized arguments: --total-step (did you mean --total-steps?) 5" in capsys.readouterr().err


def test_the_configuration_reference_in_docs_is_the_generated_one():
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert config.reference_table() in text, (
        "docs/configuration.md is out of date: paste the output of "
        "python -c 'from gpo_mpi.config import reference_table; print(reference_table())' over its table")


def test_kl_states_per_member():
    assert config.RunConfig(population=8).kl_states_per_member == 1024  # kl_states from each member
    assert config.RunConfig(population=8, kl_states_total=8192).kl_states_per_member == 1024
    assert config.RunConfig(population=256, kl_states_total=8192).kl_states_per_member == 32
    assert config.RunConfig(population=16, kl_states_total=8).kl_states_per_member == 1  # at least one


def test_share_sets_need_the_kl_matrix_only_where_it_can_change_them():
    assert not config.RunConfig(population=8).share_sets_need_kl  # the defaults: every member reads every other
    assert not config.RunConfig(population=8, share_max=0).share_sets_need_kl
    assert not config.RunConfig(population=4, share_max=7).share_sets_need_kl
    assert config.RunConfig(population=8, share_max=6).share_sets_need_kl  # the nearest 6 of 7
    assert config.RunConfig(population=8, share_epsilon=1e9).share_sets_need_kl  # a threshold


def test_the_presets_in_docs_are_the_generated_ones_and_gpo_mpi_presets_prints_usable_flags(capsys):
    from pathlib import Path
    from gpo_mpi.cli import build_parser, main
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert config.presets_table() in text, (
        "docs/configuration.md is out of date: paste the output of "
        "python -c 'from gpo_mpi.config import presets_table; print(presets_table())' over its presets table")
    assert main(["presets"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed[::2]] == list(config.PRESETS)
    for name, flags in zip(config.PRESETS, printed[1::2], strict=True):
        # the printed flags give the preset's run exactly
        from_flags = config.from_arguments(build_parser().parse_args(flags.split()), 1)
        from_preset = config.from_arguments(build_parser().parse_args(["--preset", name]), 1)
        assert from_flags == from_preset and from_flags != config.from_arguments(build_parser().parse_args([]), 1)
