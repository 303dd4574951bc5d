"""One exception hierarchy for everything a user can cause.

The message of each error is the one line the user sees. Which exit code a kind of error means is
the command line's business (`cli.ExitCode`); the library only says what went wrong.
"""

from __future__ import annotations


class VggfcnError(Exception):
    """Base of every error a user can cause; the message is the one line the user sees."""


class FormatError(VggfcnError):
    """The file is not a checkpoint we can read (wrong magic, corrupt, unsupported layout)."""


class ArchitectureError(VggfcnError):
    """The tensors do not form a VGG we can convert (missing, extra or mis-shaped layers)."""


class OutputError(VggfcnError):
    """The output cannot be written where asked (exists, same as input, directory missing...)."""


class MismatchError(VggfcnError):
    """A verification ran and found the networks differ (`convert --verify`)."""


class Note(UserWarning):
    """Something the user should know that is not an error: one line, which the command line
    prints as a note on stderr (even with --quiet) and lists in its --json output."""


class AssumptionWarning(Note):
    """What was assumed about a file because it does not record it (a config-less file's
    input size and activations)."""


class ProvenanceWarning(Note):
    """A converted file records another source than the original it is verified against."""


def first_line(error: BaseException) -> str:
    """The first line of a third-party error's text (h5py's run to many), or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
