"""Where gpo-mpi writes: checked before anything is written, so that a bad
path is one line of error (exit 2) and never a traceback or a stray file."""
from __future__ import annotations

import os
import tempfile

from .config import ConfigError


def _check_writable_directory(directory: str, what: str) -> None:
    try:
        # Only a real file proves that files can be made there (/proc, read-only mounts, permissions).
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gpo-mpi-probe-"):
            pass
    except OSError as error:
        raise ConfigError(f"{what}: cannot write in {directory} ({error.strerror or error})") from None


def check_output_file(path: str, what: str) -> None:
    """`path` can be written as a file: its directory exists and takes new files, and it is not itself
    a directory. Raises ConfigError naming `what` (e.g. "--out")."""
    if path.endswith(os.sep) or os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a directory; give a file name such as {os.path.join(path, 'run.h5')}")
    directory = os.path.dirname(path) or "."
    if not os.path.exists(directory):
        raise ConfigError(f"{what} {path}: the directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise ConfigError(f"{what} {path}: {directory} is not a directory")
    _check_writable_directory(directory, f"{what} {path}")


def check_output_directory(path: str, what: str) -> None:
    """`path` is, or can be made as, a directory that takes new files; nothing is made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a file, not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{what} {path}: cannot make the directory ({existing} is a file)")
    _check_writable_directory(existing, f"{what} {path}")


def ensure_output_directory(path: str, what: str) -> None:
    """`path` is a directory that takes new files, made (with its parents) if missing."""
    check_output_directory(path, what)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot make the directory ({error.strerror or error})") from None
