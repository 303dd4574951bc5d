"""Faults while writing: a full disk, Ctrl-C, an exception before publishing.

Whatever happens, the target is untouched (absent, or an existing file byte for byte as it was)
and no `.OUTPUT.*.vggfcn-tmp` file is left behind. Most faults are injected in-process; Ctrl-C
is also sent for real to a `python -m vggfcn` converting a full-size VGG16.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import vggfcn.formats.safetensors_io as safetensors_io
from tests.helpers import assert_one_line, corrupt_global_heap, run, temps
from vggfcn import api
from vggfcn.api import convert_file
from vggfcn.errors import OutputError, VggfcnError
from vggfcn.tensor import Tensor

OLD = b"the previous, good output"


@pytest.fixture(params=["new", "replaced"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """The output path, absent or holding OLD (then converted with --force); checked after."""
    out = tmp_path / "out" / "fcn.safetensors"
    out.parent.mkdir()
    if request.param == "replaced":
        out.write_bytes(OLD)
    yield out
    assert temps(out.parent) == [], "a temp file was left behind"
    if request.param == "replaced":
        assert out.read_bytes() == OLD, "the existing output was changed"
    else:
        assert not out.exists(), "a partial output was published"


def convert_args(source: Path, out: Path, *options: str) -> list[object]:
    return ["convert", "--force", *options, source, out]


# ------------------------------------------------------------ disk full


class DiskFull:
    """A file that takes `room` bytes (writing what fits of the last call) and then raises
    ENOSPC, as a full disk does, or (`rewrite_fails`) fails only when the header is rewritten
    at offset 0 once the data is in; every other attribute is the real file's. Positioned
    writes to it (`os.pwritev`, as writers put tensors' pieces in place) run out at `room` too.
    """

    def __init__(self, f: BinaryIO, room: int, rewrite_fails: bool = False) -> None:
        self._f, self._room, self._rewrite_fails = f, room, rewrite_fails

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._rewrite_fails and self._f.tell() == 0 and self._f.seek(0, os.SEEK_END) > 0:
            self._f.seek(0)  # all data written; the header is being rewritten in place
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fits = max(0, min(len(view), self._room - self._f.tell()))
        self._f.write(view[:fits])
        if fits < len(view):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fits

    def pwritev(self, fd: int, buffers: list[Any], position: int) -> int:
        view = memoryview(b"".join(buffers))
        if fd != self._f.fileno():
            return _REAL_PWRITEV(fd, [view], position)
        fits = max(0, min(len(view), self._room - position))
        _REAL_PWRITEV(fd, [view[:fits]], position)
        if fits < len(view):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


_REAL_PWRITEV = os.pwritev


def _fill_disk(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the output file run out of space at `where`."""
    real = safetensors_io.write

    def write(f: BinaryIO, tensors: Any, *args: Any, **kwargs: Any) -> None:
        data = sum(t.size * 4 for t in tensors.values())
        room = {"nothing": 0, "length prefix": 5, "midway": data // 2}.get(where, 1 << 62)
        full = DiskFull(f, room, where == "header rewrite")
        monkeypatch.setattr(os, "pwritev", full.pwritev)
        real(full, tensors, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safetensors_io, "write", write)


@pytest.mark.parametrize("where", ["nothing", "length prefix", "midway", "header rewrite"])
def test_disk_full_while_writing(
    keras1: Path, target: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    _fill_disk(monkeypatch, where)
    with pytest.raises(OutputError, match="No space left on device"):
        api.convert_file(str(keras1), str(target), force=True)
    assert_one_line(run(*convert_args(keras1, target)), 2, str(target), "No space left")


def test_failure_while_writing_leaves_nothing(
    keras1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vggfcn.formats.safetensors_io as io

    calls = {"n": 0}
    real = io.write

    def failing_write(f, tensors, metadata, progress=lambda n: None, **kw):  # type: ignore[no-untyped-def]
        def count(n: int) -> None:
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(28, "No space left on device")

        real(f, tensors, metadata, count, **kw)

    monkeypatch.setattr(io, "write", failing_write)
    with pytest.raises(OutputError, match="No space left on device"):
        convert_file(str(keras1), str(tmp_path / "o.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_at_fsync(keras1: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    assert_one_line(run(*convert_args(keras1, target)), 2, str(target), "No space left")


# ------------------------------------------------------------ Ctrl-C in-process


def _interrupt_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt from the progress callback, after the second block."""
    real = safetensors_io.write
    calls = [0]

    def progress(_n: int) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt

    def write(f: BinaryIO, tensors: Any, metadata: Any, _progress: Any = None, **kw: Any) -> None:
        real(f, tensors, metadata, progress, **kw)

    monkeypatch.setattr(safetensors_io, "write", write)


def _interrupt_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt while a source tensor is being read, on the fifth tensor."""
    real = Tensor.blocks
    calls = [0]

    def blocks(self: Tensor, max_bytes: int) -> Iterator[Any]:
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        yield from real(self, max_bytes)

    monkeypatch.setattr(Tensor, "blocks", blocks)


@pytest.mark.parametrize("inject", [_interrupt_progress, _interrupt_reading])
def test_ctrl_c_while_writing(
    keras1: Path,
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[pytest.MonkeyPatch], None],
) -> None:
    inject(monkeypatch)
    result = run(*convert_args(keras1, target))
    assert result.exit_code == 130, (result.stderr, result.exception)
    assert result.stdout == ""
    assert result.stderr == "vggfcn: interrupted\n"


# ------------------------------------------------------------ verify before publish


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), MemoryError(), VggfcnError("verify could not run"), KeyboardInterrupt()],
    ids=["RuntimeError", "MemoryError", "VggfcnError", "KeyboardInterrupt"],
)
def test_exception_while_verifying_before_publishing(
    keras1: Path, target: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def verify(*_args: Any, **_kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(api, "prove", verify)
    with pytest.raises(type(error)):
        api.convert_file(str(keras1), str(target), force=True, verify_output=True)
    if isinstance(error, VggfcnError):
        assert_one_line(run(*convert_args(keras1, target, "--verify")), 2, "verify could not run")
    elif isinstance(error, KeyboardInterrupt):
        result = run(*convert_args(keras1, target, "--verify"))
        assert result.exit_code == 130 and result.stderr == "vggfcn: interrupted\n"


# ------------------------------------------------------------ real signals


def _spawn(*args: object) -> subprocess.Popen[str]:
    # A shell starts background jobs with SIGINT ignored, children inherit that, and Python then
    # leaves it ignored: give the command the default disposition a terminal would, so the test
    # means the same however pytest itself was started.
    return subprocess.Popen(
        [sys.executable, "-m", "vggfcn", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _interrupt(proc: subprocess.Popen[str], grace: float = 30) -> tuple[int, str, str]:
    """SIGINT, as Ctrl-C sends it; the process must be gone within `grace` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {grace:g} s after Ctrl-C (killed)")
    return proc.returncode, stdout, stderr


def _temp_bytes(directory: Path) -> int:
    try:
        return sum((directory / name).stat().st_size for name in temps(directory))
    except FileNotFoundError:  # removed between listing and stat
        return 0


@pytest.mark.slow
def test_real_ctrl_c_during_a_full_size_conversion(full_keras1: Path, target: Path) -> None:
    """SIGINT once the temp file holds 50 MB of the 553: in the middle of writing."""
    proc = _spawn(*convert_args(full_keras1, target))
    deadline = time.monotonic() + 120
    while _temp_bytes(target.parent) < 50_000_000:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, stderr = proc.communicate()
            pytest.fail(f"no 50 MB temp file appeared before the process ended: {stderr}")
        time.sleep(0.005)
    code, stdout, stderr = _interrupt(proc)
    assert code == 130, stderr
    assert stdout == "" and stderr == "vggfcn: interrupted\n"


def test_ctrl_c_works_while_hdf5_is_stuck(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    """A corrupt global heap (a Keras 3 `name` attribute's size lies) can make HDF5 loop; Ctrl-C
    must still end the command (130), or it must have refused the file already (2)."""
    source = corrupt_global_heap(tiny_files["keras3-weights"], tmp_path / "heap.weights.h5", 0x2000)
    out = tmp_path / "out.safetensors"
    proc = _spawn("convert", source, out)
    time.sleep(5)
    code, _, stderr = _interrupt(proc, grace=10)
    assert code in (2, 130), stderr
    assert not out.exists() and temps(tmp_path) == []
