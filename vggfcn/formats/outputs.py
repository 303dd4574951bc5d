"""The files `convert` writes: one registry of outputs, mirroring the readers' (`READERS`).

Each output is a module of `formats` with one contract (`job.Writer`), registered once in `OUTPUTS`
with its extension and what it can carry — kernel layouts, name schemes, dtypes, heads — so
that `api` and the command line ask the registry and restate nothing: which format a path
means, whether an option suits it, what a file written in it holds (`Storage`), and how to
read one back (`Output.read`). A writer's module is imported only when it writes: a
safetensors user does not pay for h5py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from ..choices import DTYPES, LAYOUTS, NAME_SCHEMES
from ..errors import FormatError, OutputError, VggfcnError
from ..fcn import FCN, Storage
from .job import Job, Writer


@dataclass(frozen=True)
class Output:
    """An output format: how it is named, what it can carry, and the module that writes it.

    Attributes:
        name: as `--to` and metadata spell it ("onnx").
        extension: what a path ending in it means (".onnx").
        module: the module of `formats` that writes it (`job.Writer`).
        what: the kind of file, for messages ("a runnable ONNX model").
        layouts, names, dtypes: what it can store (`Storage`), its default first.
        heads: the heads it can hold: "classifier", and "reduced" (SSD/DeepLab, `reduce`).
    """

    name: str
    extension: str
    module: str
    what: str
    layouts: tuple[str, ...]
    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    heads: tuple[str, ...]

    def storage(
        self,
        path: str,
        layout: str | None = None,
        names: str | None = None,
        dtype: str | None = None,
        head: str = "classifier",
    ) -> Storage:
        """What a file of this format at `path` will hold: the options given, defaults for the
        others.

        Raises:
            VggfcnError: an option this format cannot carry, naming it and what it can.
        """
        wanted = {
            "--layout": (layout and layout.upper(), self.layouts),
            "--names": (names, self.names),
            "--dtype": (dtype, self.dtypes),
            "--head": (head, self.heads),
        }
        wrong = [
            f"{option} {value.lower() if option == '--layout' else value}"
            for option, (value, allowed) in wanted.items()
            if value is not None and value not in allowed
        ]
        if wrong:
            raise VggfcnError(
                f"{path}: {self.what} ({self.extension}) cannot take {', '.join(wrong)}; it holds "
                f"{'/'.join(self.layouts)} kernels, {'/'.join(self.names)} names, "
                f"{'/'.join(self.dtypes)}, {'/'.join(self.heads)} heads"
            )
        return Storage(
            self.name,
            (layout or self.layouts[0]).upper(),
            names or self.names[0],
            dtype or self.dtypes[0],
        )

    def write(self, f: BinaryIO, job: Job) -> None:
        """`Writer.write` of this format's module."""
        module = importlib.import_module(f".{self.module}", __package__)
        cast(Writer, module).write(f, job)

    @contextlib.contextmanager
    def read(self, path: str) -> Iterator[FCN]:
        """A file of this format that vggfcn wrote, read back as its network (through the
        readers, as any user's file is read: what a writer wrote, its reader must accept).

        Raises:
            FormatError: the file is not a converted network in this format.
        """
        from . import load

        with load(path) as network:
            if not isinstance(network, FCN) or network.info.storage.format != self.name:
                raise FormatError(f"{path}: not {self.what} written by vggfcn")
            yield network


OUTPUTS = (
    Output(
        "safetensors",
        ".safetensors",
        "safetensors_fcn",
        "a safetensors file of weights",
        tuple(layout.upper() for layout in LAYOUTS),
        NAME_SCHEMES,
        DTYPES,
        ("classifier", "reduced"),
    ),
    Output(
        "onnx",
        ".onnx",
        "onnx_fcn",
        "a runnable ONNX model",
        ("OIHW",),
        ("source",),
        ("float32",),
        ("classifier",),
    ),
    Output(
        "keras",
        ".keras",
        "keras_fcn",
        "a runnable Keras model",
        ("HWIO",),
        ("source",),
        ("float32",),
        ("classifier",),
    ),
)
BY_NAME = {output.name: output for output in OUTPUTS}


def output_for(path: str, to: str | None = None) -> Output:
    """The output a path means: `to` (a format's name) when given, else its extension.

    Raises:
        VggfcnError: an unknown format, or an extension we do not write (naming the ones we
            do, and `--to`), so that a mistyped or swapped path is never written as something
            else.
    """
    if to is not None:
        if to not in BY_NAME:
            raise VggfcnError(f"--to {to}: expected one of {', '.join(BY_NAME)}")
        return BY_NAME[to]
    found = next((o for o in OUTPUTS if path.lower().endswith(o.extension)), None)
    if found is None:
        extensions = ", ".join(o.extension for o in OUTPUTS)
        raise VggfcnError(
            f"{path}: vggfcn writes {extensions} files; name OUTPUT with one of these "
            "extensions, or choose the format with --to"
        )
    return found


def check_replaceable(path: str, output: Output) -> None:
    """Refuse to replace, even with --force, a checkpoint of another kind than `output` whose
    name does not say `output` either: SOURCE and OUTPUT swapped (`convert mine.pth
    victim.h5 --to safetensors`) must not destroy a model.

    Raises:
        OutputError: naming the file, what it holds and what would have replaced it.
    """
    from . import archive, reader_of  # the readers' registry and the zip archives' kinds

    found = reader_of(path) if os.path.isfile(path) else None
    if found is None or path.lower().endswith(output.extension):
        return
    same = found.output == output.name and (output.name != "keras" or archive.is_keras(path))
    if same:
        return
    raise OutputError(
        f"{path}: is a {found.name} checkpoint; vggfcn does not replace it with "
        f"{output.what}, even with --force (SOURCE and OUTPUT swapped?); choose another OUTPUT"
    )
