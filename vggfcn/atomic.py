"""Atomic output files: written beside the target under a temporary name, renamed when complete.

A reader (or `make`) sees either the old file or the whole new one, never a partial one; any
failure, Ctrl-C included, removes the temporary file and leaves the target untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .errors import OutputError
from .writeback import early_writeback

TEMP_SUFFIX = ".vggfcn-tmp"


def check_target(path: str, inputs: list[str]) -> None:
    """Refuse a path that cannot be an output whatever its name says: one of the inputs (also
    through a link), or a directory. Checked before anything about the output's format, which
    is the wrong complaint for `convert model.h5 model.h5`.

    Raises:
        OutputError: naming the path and what it is.
    """
    for source in inputs:
        same = os.path.realpath(path) == os.path.realpath(source) or (
            os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)
        )
        if same:
            raise OutputError(f"{path}: output is the input file {source}; choose another path")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory, expected an output file path")


def check_output(path: str, inputs: list[str], *, force: bool) -> None:
    """Fail before any heavy work if `path` cannot or must not be written.

    Raises:
        OutputError: what `check_target` refuses; an output that exists without `force`, or
        whose directory is missing or not writable.
    """
    check_target(path, inputs)
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path}: already exists (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"{path}: directory {parent} does not exist")
    try:  # a real probe: permission bits say nothing to root, and /proc-like places lie
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputError(f"{path}: directory {parent} is not writable ({e.strerror})") from None


@contextmanager
def atomic_write(
    path: str, before_publish: Callable[[str], object] | None = None
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block completes.

    The data and the directory entry are fsynced before returning, so "success" survives a
    power cut; the file mode follows the umask like any file the user creates.
    `before_publish(temp_path)` runs on the complete, closed temp file just before the rename:
    if it raises (a verification that fails), nothing is published.
    """
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as e:
        raise OutputError(f"{path}: cannot create a file in {directory} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            with early_writeback(f.fileno()):  # the disk writes while we convert
                yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        if before_publish is not None:
            before_publish(temp)
        os.replace(temp, path)
    except OSError as e:
        _remove(temp)
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        _remove(temp)
        raise
    _fsync_directory(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
