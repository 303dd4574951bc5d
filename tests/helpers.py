"""Helpers shared by the tests of refusals, faults and outputs: running the CLI as a user does,
asserting the one-line refusal contract, editing files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import safetensors.numpy
import safetensors.torch
from click.testing import CliRunner, Result

from vggfcn.cli import main
from vggfcn.convert import to_fcn
from vggfcn.fcn import FCN
from vggfcn.formats import fcn_metadata as fcn_metadata_module
from vggfcn.formats.outputs import BY_NAME, Job
from vggfcn.synthetic import TINY, random_classifier
from vggfcn.tensor import Tensor


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


def refuse_everywhere(source: Path, *expected: str, original: Path | None = None) -> None:
    """`convert` and `inspect` (and `verify` against `original`) all refuse `source`."""
    out = source.parent / "out.safetensors"
    assert_refused(run("convert", source, out), source, *expected, out=out)
    assert_refused(run("inspect", source), source, *expected)
    if original is not None:
        assert_refused(run("verify", original, source), source, *expected)


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


def tensors(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


class Evil:
    """Runs a shell command when a normal unpickler loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def assert_one_line(result: Result, code: int, *expected: str) -> None:
    """`code`, nothing on stdout, one stderr line holding each `expected` text, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


#: The Keras 1 fc6 and fc7 kernels of the TINY fixtures: (7*7*16, 32) and (32, 32).
FC1 = "fc1/fc1_W_1:0"
FC2 = "fc2/fc2_W_1:0"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


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


def fcn_metadata(fcn: FCN, kind: str = "safetensors") -> dict[str, str]:
    """The metadata `convert` would store for `fcn` as a `kind` output (its default storage),
    with a placeholder source digest."""
    storage = BY_NAME[kind].storage("out")
    return fcn_metadata_module.metadata(fcn, "src.h5", "0" * 64, storage)


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


def frameworks_imported(module: str, frameworks: set[str]) -> list[str]:
    """Which of `frameworks` (top-level packages) a fresh interpreter has loaded after importing
    `module`: what a run-time dependency leaking in would show."""
    code = (
        f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return sorted(set(done.stdout.split()) & frameworks)


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
