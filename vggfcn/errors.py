"""One exception hierarchy, each kind carrying the exit code the CLI returns for it.

The exit-code table lives here and nowhere else; the CLI maps exceptions to codes, and the README
documents the same table.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every `vggfcn` command."""

    OK = 0
    MISMATCH = 1  # verify ran and the two networks disagree beyond tolerance
    BAD_INPUT = 2  # usage error, unreadable or unsupported input, unwritable output
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class VggfcnError(Exception):
    """Base of every error a user can cause; the message is the one line the user sees."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class FormatError(VggfcnError):
    """The file is not a checkpoint we can read (wrong magic, corrupt, unsupported layout)."""


class ArchitectureError(VggfcnError):
    """The tensors do not form a VGG we can convert (missing, extra or mis-shaped layers)."""


class OutputError(VggfcnError):
    """The output cannot be written where asked (exists, same as input, directory missing...)."""


class MismatchError(VggfcnError):
    """A verification ran and found the networks differ (`convert --verify`)."""

    exit_code = ExitCode.MISMATCH
