"""Run many `gpo-mpi` command lines in this one process, so that torch and MuJoCo load once: for each, the
exit code the console command would give and what it wrote to stderr, printed as one JSON list.

Argument: a JSON file holding a list of argument lists. ["load_policy", PATH] calls gpo_mpi.load_policy
as a script would (a ConfigError is its one line and exit code 1)."""
import contextlib
import io
import json
import sys

import gpo_mpi
from gpo_mpi.cli import main


def run(arguments: list[str]) -> dict:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            if arguments[0] == "load_policy":
                gpo_mpi.load_policy(arguments[1])
                code = 0
            else:
                code = main(arguments)
        except gpo_mpi.ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            code = 1
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return {"code": code, "stderr": errors.getvalue()}


if __name__ == "__main__":
    with open(sys.argv[1]) as commands:
        print(json.dumps([run(arguments) for arguments in json.load(commands)]))
