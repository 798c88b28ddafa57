"""The `gpo-mpi` command.

Every rank runs the same command line; `mpiexec -n N gpo-mpi ...` starts N
ranks, plain `gpo-mpi ...` runs as one.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from . import __version__, config


def one_thread_per_rank() -> None:
    """Pin torch (and the BLAS under numpy, where not yet loaded) to one thread.

    Ranks are the parallelism: with several threads each, eight ranks on a
    workstation would oversubscribe its cores many times over.
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    # numpy's BLAS read the variables above when it loaded, which was before
    # this call in a script that imported numpy first: limit it where it runs.
    # Its thread count also changes results in the last bits.
    threadpool_limits(1)


def describe_build() -> str:
    """Versions and backends, for `--version` and bug reports."""
    import mpi4py
    import torch

    from . import kernels, mpi

    return "\n".join(
        [
            f"gpo-mpi {__version__}",
            f"kernels: {kernels.BACKEND}",
            f"MPI: {mpi.library_version()} (mpi4py {mpi4py.__version__}), {mpi.world().Get_size()} rank(s)",
            f"torch: {torch.__version__}, {torch.get_num_threads()} thread(s) per rank",
        ]
    )


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(describe_build())  # on every rank: each reports what it loaded
        parser.exit()


class _RankZeroParser(argparse.ArgumentParser):
    """Every rank parses the same line and exits alike on a bad flag; only rank 0 prints."""

    def __init__(self, *args, quiet: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # --total-step is a typo, not --total-steps
        self.quiet = quiet

    def _print_message(self, message, file=None):
        if not self.quiet:
            super()._print_message(message, file)

    def error(self, message):
        """argparse's error, with the closest flag suggested for each unknown one."""
        if message.startswith("unrecognized arguments: "):
            flags = [option for action in self._actions for option in action.option_strings]
            unknown = message.removeprefix("unrecognized arguments: ").split()
            message = "unrecognized arguments: " + " ".join(
                word + (config.did_you_mean(word.split("=")[0], flags) if word.startswith("--") else "")
                for word in unknown)
        super().error(message)


def build_parser(quiet: bool = False) -> argparse.ArgumentParser:
    """The `gpo-mpi [run]` parser: a flag per RunConfig field and the choice of what to do with an
    existing run file; a `quiet` parser prints nothing (ranks other than 0)."""
    parser = _RankZeroParser(
        quiet=quiet,
        prog="gpo-mpi",
        usage="mpiexec -n N gpo-mpi [run] [options]   |   gpo-mpi {info,eval,export,plot,compare} RUN.h5 [options]"
              "   |   gpo-mpi presets",
        description="Genetic Policy Optimization (ICLR 2018) as an MPI batch application. "
        "Run it under `mpiexec -n N` for N ranks; members are spread evenly over the ranks.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version, kernel backend, MPI library and torch threads"
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its last checkpoint (automatic when SLURM restarts "
                               "a job whose run file exists)")
    existing.add_argument("--resume-if-exists", action="store_true",
                          help="--resume if --out exists, else start the run (what the SLURM scripts in jobs/ pass)")
    existing.add_argument("--overwrite", action="store_true",
                          help="start a new run even if --out exists, replacing that file (without it, an existing "
                               "--out stops gpo-mpi before anything is written)")
    config.add_arguments(parser)
    return parser


TOOLS = ("info", "eval", "export", "plot", "compare", "presets")  # `gpo-mpi TOOL ...`; anything else is a run
EXIT_BAD_INPUT = 2  # bad configuration, environment or run file: nothing was run
EXIT_STOPPED = 3  # a signal stopped the run after a checkpoint: resume with --resume (or requeue)
EXIT_NON_FINITE = 4  # non-finite observations, rewards or losses (what mpiexec returns may differ)
EXIT_OUT_OF_SYNC = 5  # ranks found holding different copies of what they share (a bug): nothing more written
EXIT_WRITE_FAILED = 6  # the run file could not be written (a full disk, say): it keeps its last checkpoint


def should_resume(parsed: argparse.Namespace, run_file: str) -> bool:
    """--resume; or a run file in place with --resume-if-exists, or in a job that SLURM restarted (requeued).

    Raises ConfigError where a new run would replace an existing file without --overwrite."""
    restarted = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    exists = os.path.lexists(run_file)
    if parsed.resume or (exists and (restarted or parsed.resume_if_exists)):
        return True
    if exists and not parsed.overwrite:
        raise config.ConfigError(f"--out {run_file} already exists: continue its run with --resume, or start "
                                 "a new one over it with --overwrite (or choose another --out)")
    return False


class _EarlySignals:
    """Stop signals that arrive while a rank starts up (imports, environments), before
    the run's own handlers exist: remembered, so the run stops after its first iteration
    instead of the rank dying at once (SLURM may send its warning that early)."""

    def __init__(self):
        self.received = False
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signal_number, self._remember)

    def _remember(self, signal_number, frame) -> None:
        self.received = True


def tool_main(tool: str, arguments: list[str]) -> int:
    """`gpo-mpi TOOL ...`: one process, no MPI; torch only for the tools that run policies, so that
    `gpo-mpi info` answers at once."""
    if tool not in ("info", "presets"):
        one_thread_per_rank()  # as in training: evaluations give the numbers the run recorded
    if "--video" in arguments:  # before MuJoCo loads: its default (GLFW) needs a display
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        print(run_tool(tool, arguments), flush=True)
    except config.ConfigError as error:
        print(f"gpo-mpi {tool}: error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `gpo-mpi info run.h5 | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    return 0


def run_tool(tool: str, arguments: list[str]) -> str:
    """Run one tool (`gpo-mpi TOOL ...`); returns what it prints. Raises ConfigError for bad input."""
    parser = argparse.ArgumentParser(prog=f"gpo-mpi {tool}", allow_abbrev=False)
    if tool == "presets":
        parser.description = "Each preset (--preset NAME), what it is for and the fields it sets."
        parser.parse_args(arguments)
        return config.presets_text()
    if tool == "plot":
        from . import plot

        parser.add_argument("runs", metavar="RUN.h5", nargs="+", help="one run, or several to overlay")
        parser.add_argument("-o", "--out-dir", default=".", help="where the figures go (default: here)")
        parser.add_argument("--figures", nargs="+", choices=plot.FIGURES, default=list(plot.FIGURES))
        parser.add_argument("--state-steps", type=int, default=1000,
                            help="states sampled per policy for the states figure")
        parser.add_argument("--seed", type=int, default=0, help="seed of the states figure's crossover and t-SNE")
        parser.add_argument("--format", choices=("png", "pdf", "svg"), default="png", help="file format (default png)")
        parsed = parser.parse_args(arguments)
        if parsed.state_steps <= 0:
            raise config.ConfigError(f"--state-steps must be positive, got {parsed.state_steps}")
        from .runfile import damage_is_config_error
        with damage_is_config_error(", ".join(parsed.runs)):  # what is read is also used after it is read
            return "\n".join(plot.plot(parsed.runs, parsed.out_dir, parsed.figures, parsed.state_steps, parsed.seed,
                                        parsed.format))
    if tool == "compare":
        from . import compare

        parser.description = ("Variants over many seeds, with IQM, 95% stratified-bootstrap intervals and the "
                              "probability of improvement (docs/run-file.md, 'Comparing runs').")
        parser.add_argument("runs", metavar="RUN", nargs="+",
                            help="run files (.h5), their summaries (.json, bench/study.py), or folders of them")
        parser.add_argument("--label", action="append", default=[], metavar="OLD=NEW",
                            help="call the variant named OLD (as the table names it) NEW; may be repeated")
        parser.add_argument("--normalize-by", metavar="VARIANT",
                            help="the variant whose mean on each task divides the scores across tasks "
                                 "(default: Joint's where there is one, else the first variant)")
        parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
        parser.add_argument("-o", "--out-dir", help="also write compare.md, compare.csv and the figures here")
        parser.add_argument("--figures", nargs="+", choices=compare.FIGURES, default=list(compare.FIGURES))
        parser.add_argument("--format", choices=("png", "pdf", "svg"), default="png", help="file format (default png)")
        parsed = parser.parse_args(arguments)
        return compare.run(parsed.runs, parsed.label, parsed.normalize_by, parsed.reps, parsed.seed, parsed.out_dir,
                           parsed.figures, parsed.format)
    parser.add_argument("run", metavar="RUN.h5")
    if tool in ("eval", "export"):
        parser.add_argument("--member", type=int, help="member index (default: the best at the end)")
    if tool == "eval":
        parser.add_argument("--episodes", type=int, default=10)
        parser.add_argument("--seed", type=int, default=12345)
        parser.add_argument("--deterministic", action="store_true", help="act with the mean instead of sampling")
        parser.add_argument("--video", metavar="DIR", help="record the first episode as an MP4 in DIR (MuJoCo's "
                                                          "offscreen renderer; MUJOCO_GL=egl unless set)")
    if tool == "export":
        parser.add_argument("-o", "--output", required=True, metavar="policy.pt")
    parsed = parser.parse_args(arguments)
    if tool == "info":
        from .runfile import info

        return info(parsed.run)
    from . import tools

    if tool == "export":
        return tools.export(parsed.run, parsed.output, parsed.member)
    if parsed.episodes <= 0:
        raise config.ConfigError(f"--episodes must be positive, got {parsed.episodes}")
    return tools.evaluate(parsed.run, parsed.episodes, parsed.member, parsed.seed, parsed.deterministic, parsed.video)


def main(argv: list[str] | None = None) -> int:
    """The console command: a tool (`info`, `eval`, `export`, `plot`, `compare`) or a training run on every
    rank; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] and arguments[0] in TOOLS:
        return tool_main(arguments[0], arguments[1:])
    early_signals = _EarlySignals()
    one_thread_per_rank()
    from . import mpi

    comm = mpi.world()
    mpi.abort_on_uncaught_exception(comm)
    if arguments[:1] == ["run"]:
        arguments = arguments[1:]
    parsed = build_parser(quiet=comm.Get_rank() != 0).parse_args(arguments)

    from .rollout import NonFiniteError, UnusableEnvironment
    from .runfile import RunFileWriteError

    run_config = None
    try:
        run_config, completed = _start(comm, lambda: config.from_arguments(parsed, comm.Get_size()), parsed,
                                       signalled_before_start=lambda: early_signals.received)
    except (config.ConfigError, UnusableEnvironment) as error:
        if comm.Get_rank() == 0:
            print(f"gpo-mpi: error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except NonFiniteError as error:  # one rank's numbers went bad mid-run: end every rank from here
        mpi.abort_with_message(comm, f"gpo-mpi: error on rank {comm.Get_rank()}: {error}; the last checkpoint "
                                     f"in {parsed.out or 'the run file'} is intact", EXIT_NON_FINITE)
    except RunFileWriteError as error:  # rank 0 alone writes: end every rank from here
        from .checkpoint import kept
        mpi.abort_with_message(comm, f"gpo-mpi: error: {error}; {kept(error.path)}", EXIT_WRITE_FAILED)
    except mpi.OutOfSync as error:  # found by a collective check, so every rank is here together
        if comm.Get_rank() == 0:
            print(f"gpo-mpi: error: {error} (a bug in gpo-mpi; please report it); nothing more was written, "
                  f"the last checkpoint in {parsed.out or 'the run file'} is intact", file=sys.stderr, flush=True)
        return EXIT_OUT_OF_SYNC
    if not completed:
        if comm.Get_rank() == 0:
            print(f"gpo-mpi: stopped by a signal; checkpoint written to {run_config.out}, "
                  f"continue with --resume", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    if comm.Get_rank() == 0:
        out = shlex.quote(run_config.out)
        print(f"run file: {run_config.out}; look at it with: gpo-mpi info {out}, gpo-mpi eval {out} "
              f"--deterministic, gpo-mpi plot {out} -o plots/", flush=True)
    return 0


def _start(comm, make_config, choice: argparse.Namespace, signalled_before_start=lambda: False):
    """Make the config, check --out and whether to resume, with every rank agreeing on any error
    (rank 0 alone reports it), then run. Returns (config, whether the run finished)."""
    from .engine import run
    from .paths import check_output_file
    from .runbase import agree_on_startup

    message = run_config = resume = None
    try:
        run_config = make_config()
        check_output_file(run_config.out, "--out")
        resume = should_resume(choice, run_config.out)
    except config.ConfigError as error:
        message = str(error)
    agree_on_startup(comm, message)
    return run_config, run(run_config, comm, resume=resume, signalled_before_start=signalled_before_start)


def train(run_config: config.RunConfig | dict | None = None, *, preset: str | None = None, resume: bool = False,
          resume_if_exists: bool = False, overwrite: bool = False, **fields) -> str:
    """Train from Python: the same run as the `gpo-mpi` command, on this process alone or on every
    rank of `mpiexec -n N python script.py`. Fields come from `preset`, then `run_config` (a
    RunConfig or a dict), then keyword arguments: `train(env="Walker2d-v5", total_steps=1e6)`.
    Returns the run file's path. Bad input raises ConfigError on every rank; a stop signal
    raises KeyboardInterrupt after the checkpoint is written."""
    one_thread_per_rank()
    from . import mpi

    comm = mpi.world()
    if comm.Get_size() > 1:  # an exception on one rank must end the job, not leave the others waiting
        mpi.abort_on_uncaught_exception(comm)
    values = dict(config.PRESETS[preset]) if preset else {}
    if isinstance(run_config, config.RunConfig):
        values.update(config.to_dict(run_config))
    elif run_config:
        values.update(run_config)
    values.update(fields)
    choice = argparse.Namespace(resume=resume, resume_if_exists=resume_if_exists, overwrite=overwrite)
    finished_config, completed = _start(comm, lambda: config.from_values(values, comm.Get_size()), choice)
    if not completed:
        raise KeyboardInterrupt(f"stopped by a signal; checkpoint written to {finished_config.out}")
    return finished_config.out
