"""Helpers shared by the test files (fixtures are in conftest.py): running the CLI as a user
does, asserting the one-line refusal contract, reading and editing checkpoints, writing outputs.

The contract for a user-caused failure, which `assert_refused` checks: exit code 2 (1 only for a
verification mismatch), one line on stderr naming the file and the problem, nothing on stdout, no
traceback, no output file created or changed, no `.OUTPUT.*.vggfcn-tmp` left, and never code from
the input run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from click.testing import CliRunner, Result

from fixtures.generate import TINY as TINY_WIDTHS
from vggfcn.arch import Arch
from vggfcn.cli import main
from vggfcn.convert import to_fcn
from vggfcn.fcn import FCN
from vggfcn.formats import fcn_metadata as fcn_metadata_module
from vggfcn.formats import load
from vggfcn.formats.job import Job
from vggfcn.formats.outputs import BY_NAME
from vggfcn.graph import Conv, Dense, SourceGraph
from vggfcn.synthetic import TINY, random_classifier
from vggfcn.tensor import Tensor

# ------------------------------------------------------------ the command line


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".vggfcn-tmp")]


def assert_refused(
    result: Result, source: Path | str, *expected: str, out: Path | None = None, code: int = 2
) -> None:
    """The contract: exit `code`, one stderr line naming `source` and each `expected` regex."""
    stderr = result.stderr
    assert result.exit_code == code, (result.exit_code, stderr, result.exception)
    assert result.stdout == ""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vggfcn: error: "), stderr
    assert str(source) in stderr, stderr
    for pattern in expected:
        assert re.search(pattern, stderr), (pattern, stderr)
    if out is not None:
        assert not out.exists()
        assert temps(out.parent) == []


def assert_one_line(result: Result, code: int, *expected: str) -> None:
    """`code`, nothing on stdout, one stderr line holding each `expected` text, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def refuse_everywhere(source: Path, *expected: str, original: Path | None = None) -> None:
    """`convert` and `inspect` (and `verify` against `original`) all refuse `source`."""
    out = source.parent / "out.safetensors"
    assert_refused(run("convert", source, out), source, *expected, out=out)
    assert_refused(run("inspect", source), source, *expected)
    if original is not None:
        assert_refused(run("verify", original, source), source, *expected)


def converts_and_verifies(source: Path, tmp_path: Path, *options: str, notes: int = 0) -> Path:
    """`source` converts and verifies, saying nothing on stderr but `notes` notes (what a
    config-less file's conversion assumed)."""
    out = tmp_path / f"{source.name}.fcn.safetensors"
    result = run("convert", *options, source, out)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == notes and all(line.startswith("note: ") for line in lines), lines
    result = run("verify", "--quiet", source, out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return out


def verified_conversion(source: Path, *options: str) -> Path:
    """The user's two commands; both must succeed, quietly. `verify` must end in PASS (unlike
    `converts_and_verifies`, which asks for `--quiet` and counts notes). The output, beside
    `source`."""
    out = source.parent / f"{source.name}.fcn.safetensors"
    converted = CliRunner().invoke(main, ["convert", *options, str(source), str(out)])
    assert converted.exit_code == 0, converted.stderr
    verified = CliRunner().invoke(main, ["verify", str(source), str(out)])
    assert verified.exit_code == 0, (verified.stdout, verified.stderr)
    assert verified.stdout.splitlines()[-1] == "PASS"
    return out


# ------------------------------------------------------------ files: writing and editing


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def edited_h5(source: Path, target: Path, edit: Callable[[h5py.File], object]) -> Path:
    copy(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def replace_dataset(f: h5py.File, name: str, data: Any = None, **options: Any) -> None:
    group, _, leaf = name.rpartition("/")
    del f[name]
    f[group].create_dataset(leaf, data=data, **options)


#: The Keras 1 fc6 and fc7 kernels of the TINY fixtures: (7*7*16, 32) and (32, 32).
FC1 = "fc1/fc1_W_1:0"
FC2 = "fc2/fc2_W_1:0"


def corrupt_global_heap(source: Path, target: Path, size: int) -> Path:
    """Keras 3 stores each layer's `name` attribute in the global heap; lie about its size."""
    data = bytearray(source.read_bytes())
    at = data.find(b"GCOL")
    assert at > 0
    struct.pack_into("<Q", data, at + 8, size)
    return write(target, bytes(data))


def rezip(
    source: Path,
    target: Path,
    replace: dict[str, bytes] | None = None,
    deflate: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> Path:
    """A copy of an archive with members replaced, deflated or dropped."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, src.read(info))
            kind = zipfile.ZIP_DEFLATED if info.filename in deflate else zipfile.ZIP_STORED
            dst.writestr(info.filename, data, compress_type=kind)
    return target


def edit_config(source: Path, target: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """A copy of a `.keras` archive with its `config.json` edited in place by `edit`."""
    with zipfile.ZipFile(source) as z:
        config = json.loads(z.read("config.json"))
    edit(config)
    return rezip(source, target, {"config.json": json.dumps(config).encode()})


def head_layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = config["config"]["layers"]
    return layers


def write_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A random RGB image file (its format from the suffix), written by Pillow."""
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


class Evil:
    """Runs a shell command when a normal unpickler loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------ checkpoints and their tensors


#: The TINY fixtures' widths as `fixtures.torch_vgg.classifier` takes them: trunk, fc6/fc7, classes.
WIDTHS, FC, CLASSES = TINY_WIDTHS.convs, TINY_WIDTHS.fc[0], TINY_WIDTHS.classes


#: Keras layer names -> tensorflow-vgg's (`block1_conv1` -> `conv1_1`); others unchanged.
TF_NAMES = {f"block{b}_conv{i}": f"conv{b}_{i}" for b in range(1, 6) for i in range(1, 4)}


def tiny_arch() -> Arch:
    """The TINY fixtures' widths as an `Arch` (for `random_layers`)."""
    return Arch.from_blocks("vgg16", TINY_WIDTHS.convs, TINY_WIDTHS.fc, TINY_WIDTHS.classes)


def read_all(path: Path) -> tuple[SourceGraph, dict[str, np.ndarray]]:
    """Load a classifier and read every tensor of its layers as stored, under
    "<layer as the file names it>.kernel|bias" (while the file is open)."""
    with load(str(path)) as graph:
        assert isinstance(graph, SourceGraph)
        return graph, {
            f"{op.name}.{part}": tensor.read()
            for op in graph.ops
            if isinstance(op, Conv | Dense)
            for part, tensor in (("kernel", op.kernel), ("bias", op.bias))
            if tensor is not None
        }


def tensors(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta: dict[str, str] = json.loads(f.read(n))["__metadata__"]
    return meta


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC images as the NCHW tensor torch takes."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def assert_logits_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Logits equal to a framework's own, to 1e-4 relative and 1e-4 of max(1, max|theirs|)."""
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(theirs).max()))


# ------------------------------------------------------------ output writers


def tiny_fcn() -> FCN:
    """A tiny random VGG16 classifier compiled to an FCN: what the output writers' tests write."""
    return to_fcn(random_classifier(TINY))


def tiny_fcn_with_nan() -> FCN:
    """`tiny_fcn()` with one NaN in fc7's kernel (HWIO [0, 0, 3, 5]), named `<nan>:fc7.kernel`."""
    fcn = tiny_fcn()
    kernel = fcn.head[1].kernel.read().copy()
    kernel[0, 0, 3, 5] = np.nan
    fc7 = replace(fcn.head[1], kernel=Tensor.wrap(kernel, "<nan>:fc7.kernel"))
    return replace(fcn, head=(fcn.head[0], fc7, fcn.head[2]))


#: The networks the output writers' tests write: ours in memory, read from a Keras 1 file and a
#: torchvision .pth, VGG11 and VGG19, and a non-stock head (see `fcn_of_kind`).
FCN_KINDS = ["tiny", "keras1", "torchvision.pth", "vgg11", "vgg19", "odd-head"]


@contextmanager
def fcn_of_kind(
    kind: str, sources: dict[str, Path], odd_head: Callable[[FCN], FCN]
) -> Iterator[FCN]:
    """An FCN of each kind, its file (if any) open while it is used; "odd-head" is
    `odd_head(tiny_fcn())`, each writer's own non-stock head."""
    if kind in ("keras1", "torchvision.pth"):  # tensors stream from the file
        with load(str(sources[kind])) as graph:
            yield to_fcn(graph)  # type: ignore[arg-type]
    elif kind in ("vgg11", "vgg19"):
        yield to_fcn(random_classifier(Arch.from_blocks(kind, (4, 8, 8, 16, 16), (32, 32), 10)))
    else:
        yield odd_head(tiny_fcn()) if kind == "odd-head" else tiny_fcn()


#: The provenance `fcn_metadata` records: what a file written with it reads back as.
PROVENANCE = {"source_file": "src.h5", "source_sha256": "0" * 64}


def fcn_metadata(fcn: FCN, kind: str = "safetensors") -> dict[str, str]:
    """The metadata `convert` would store for `fcn` as a `kind` output (its default storage),
    with a placeholder source digest."""
    storage = BY_NAME[kind].storage("out")
    source, sha256 = PROVENANCE["source_file"], PROVENANCE["source_sha256"]
    return fcn_metadata_module.metadata(fcn, source, sha256, storage)


def write_output(
    kind: str,
    path: Path,
    fcn: FCN,
    *,
    final: Callable[[], dict[str, str]] | None = None,
    progress: Callable[[int], object] = lambda _n: None,
    allow_nonfinite: bool = False,
) -> Path:
    """`fcn` written by the `kind` output's writer at `path` (default storage), its metadata
    `fcn_metadata`'s or what `final` gives when asked."""
    output = BY_NAME[kind]
    meta = fcn_metadata(fcn, kind)
    pending = fcn_metadata_module.PendingMetadata(meta, final or (lambda: meta))
    with open(path, "wb") as f:
        output.write(f, Job(fcn, output.storage(str(path)), pending, progress, allow_nonfinite))
    return path


def assert_reader_refuses(
    opener: Callable[[str], AbstractContextManager[Any]],
    path: Path,
    *patterns: str,
    error: type[Exception] = Exception,
) -> str:
    """A reader's contract: opening `path` raises `error` as one line that names the file and
    matches each of `patterns`; the line, for further checks."""
    try:
        with opener(str(path)):
            pass
    except error as e:
        text = str(e)
    else:
        raise AssertionError(f"{path}: opened, expected {error.__name__}")
    assert "\n" not in text and text.startswith(f"{path}: "), text
    for pattern in patterns:
        assert re.search(pattern, text), (pattern, text)
    return text


# ------------------------------------------------------------ processes


def frameworks_imported(module: str, frameworks: set[str]) -> list[str]:
    """Which of `frameworks` (top-level packages) a fresh interpreter has loaded after importing
    `module`: what a run-time dependency leaking in would show."""
    code = (
        f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return sorted(set(done.stdout.split()) & frameworks)


def stdout_without(modules: Sequence[str], code: str) -> str:
    """What `code` prints in a fresh interpreter where importing any of `modules` fails (it must
    succeed): a reader shown to need none of them."""
    blocked = "".join(f"sys.modules[{module!r}] = None\n" for module in modules)
    command = [sys.executable, "-c", "import sys\n" + blocked + code]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


#: Runs the command line, then, at exit, writes the process's own peak RSS (VmHWM, in KiB) to
#: the file named by its first argument. Not wait4's ru_maxrss: Linux carries a parent's peak
#: over fork and exec into it, and pytest's is hundreds of MB.
_PEAK_RSS = """
import atexit, re, sys
report = sys.argv.pop(1)
def peak():
    status = open("/proc/self/status").read()
    open(report, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(peak)
from vggfcn.cli import main
sys.argv[0] = "vggfcn"
main()
"""


def run_measured(*args: object) -> tuple[int, str, int]:
    """`vggfcn *args` in a process of its own: (exit code, stderr, peak RSS in bytes)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "peak"
        command = [sys.executable, "-c", _PEAK_RSS, str(report), *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return done.returncode, done.stderr, int(report.read_text()) * 1024
