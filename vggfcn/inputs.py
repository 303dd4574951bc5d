"""The inputs of `predict` and `heatmap`: files, folders and globs, and the file each one's
result is written to.

A shell expands an unquoted glob itself; a quoted one (or one on a shell that does not, as in
a Makefile's `$(wildcard)`-less recipe) reaches us as a pattern and is expanded here, so that
`vggfcn predict m.safetensors 'shots/*.jpg'` means the same everywhere. A folder means its
images and arrays, not its subfolders: a dataset tree is walked by the caller, who knows
which parts of it are wanted.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .atomic import check_output
from .errors import OutputError

#: What a folder's files must end with to be taken as inputs (case-insensitive): the image
#: formats Pillow reads without plugins, and NumPy arrays.
INPUT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
ARRAY_EXTENSION = ".npy"


@dataclass(frozen=True)
class Unmatched:
    """An INPUT argument that names no input: a glob matching nothing, an empty folder."""

    argument: str
    error: str


def expand(arguments: Sequence[str]) -> tuple[list[str], list[Unmatched]]:
    """The input files the arguments name, in order, each once; and the arguments naming none.

    A path that exists as a file is taken as it is, whatever its name (its content decides how
    it is read); a folder gives its inputs sorted by name; a pattern its matching files sorted.
    A path that is none of these is kept, to fail when it is read with the reader's message.
    """
    paths: list[str] = []
    unmatched = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(
                os.path.join(argument, name)
                for name in os.listdir(argument)
                if name.lower().endswith((*INPUT_EXTENSIONS, ARRAY_EXTENSION))
                and os.path.isfile(os.path.join(argument, name))
            )
            problem = "folder holds no images or .npy arrays"
        elif not os.path.lexists(argument) and glob.has_magic(argument):
            found = sorted(p for p in glob.glob(argument) if os.path.isfile(p))
            problem = "no file matches this pattern"
        else:
            found, problem = [argument], ""
        if not found:
            unmatched.append(Unmatched(argument, f"{argument}: {problem}"))
        paths += [p for p in found if p not in paths]
    return paths, unmatched


def targets(
    paths: Sequence[str], out: str | None, extension: str, keep: Sequence[str], *, force: bool
) -> dict[str, str]:
    """Where each input's result goes: `out` itself for one input, or `out/<name><extension>`
    when `out` is a folder (an existing one, one spelled with a trailing slash, or whenever
    there are several inputs); {} without `out`. A missing folder is created.

    Every target is checked before any input is read (`check_output`), so a run that would
    overwrite something stops before it starts.

    Raises:
        OutputError: two inputs that would write the same file, a target that exists (without
            `force`) or is one of the inputs or `keep`, or a folder that cannot be made.
    """
    if out is None:
        return {}
    if len(paths) == 1 and not (os.path.isdir(out) or out.endswith(("/", os.sep))):
        check_output(out, [*paths, *keep], force=force)
        return {paths[0]: out}
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot make the output folder ({e.strerror})") from None
    named: dict[str, str] = {}
    owner: dict[str, str] = {}
    real = {os.path.realpath(path): path for path in paths}
    for path in paths:
        target = os.path.join(out, os.path.splitext(os.path.basename(path))[0] + extension)
        if target in owner:
            raise OutputError(
                f"{path}, {owner[target]}: both would be written to {target}; give inputs with "
                "different names or run them into different folders"
            )
        if os.path.realpath(target) in real:
            raise OutputError(
                f"{target}: output is the input file {real[os.path.realpath(target)]}"
            )
        check_output(target, [path, *keep], force=force)
        owner[target], named[path] = path, target
    return named
