"""The source hash: exact from its maps, started early by the command line, picked up once,
stopped when asked or when the conversion fails."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import vggfcn
import vggfcn.digest
from vggfcn import choices, precision
from vggfcn.api import convert_file
from vggfcn.digest import WINDOW, sha256_file, source_digest, start
from vggfcn.errors import FormatError


@pytest.fixture(autouse=True)
def _no_pending_hash() -> Iterator[None]:
    """Each test starts, and leaves, with no hash waiting to be picked up."""
    with source_digest(os.devnull):
        pass
    yield
    with source_digest(os.devnull):
        pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW + 12_345])
def test_the_hash_from_maps_is_sha256_of_the_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    assert sha256_file(str(path)) == _sha(path)


class Counting:
    """`sha256_file` as it is, noting each call and keeping the stop events it was given."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.stops: list[threading.Event] = []

    def __call__(self, path: str, stop: threading.Event | None = None) -> str:
        assert stop is not None
        self.paths.append(path)
        self.stops.append(stop)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    fake = Counting()
    monkeypatch.setattr(vggfcn.digest, "sha256_file", fake)
    return fake


def test_a_started_hash_is_the_one_picked_up(tmp_path: Path, counting: Counting) -> None:
    path = tmp_path / "src.h5"
    path.write_bytes(b"weights" * 1000)
    start(str(path))
    with source_digest(str(tmp_path / ".." / tmp_path.name / "src.h5")) as digest:
        assert digest.result() == _sha(path)
    assert len(counting.paths) == 1  # the same file by another name: not hashed twice


def test_a_file_changed_since_the_start_is_hashed_again(tmp_path: Path, counting: Counting) -> None:
    path = tmp_path / "src.h5"
    path.write_bytes(b"old" * 1000)
    start(str(path))
    path.write_bytes(b"new contents, another size")
    with source_digest(str(path)) as digest:
        assert digest.result() == _sha(path)
    assert len(counting.paths) == 2
    assert counting.stops[0].is_set()  # the stale hash was told to stop


def test_a_hash_of_another_file_is_stopped_not_used(tmp_path: Path, counting: Counting) -> None:
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    first.write_bytes(b"a" * 100)
    second.write_bytes(b"b" * 100)
    start(str(first))
    start(str(second))  # one at a time: the first is stopped
    assert counting.stops[0].is_set()
    with source_digest(str(first)) as digest:
        assert digest.result() == _sha(first)
    assert counting.paths == [str(first), str(second), str(first)]
    assert counting.stops[1].is_set()


def test_only_regular_files_are_hashed_early(tmp_path: Path, counting: Counting) -> None:
    start(str(tmp_path))  # a directory: the converter will say so, nothing to hash
    start(str(tmp_path / "missing.h5"))
    assert counting.paths == []


def test_the_hash_runs_on_a_daemon_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that fails before it needs the digest (an output that exists) must not wait
    for the whole source to be read before it exits."""
    seen: list[bool] = []
    release = threading.Event()

    def slow(path: str, stop: threading.Event | None = None) -> str:
        seen.append(threading.current_thread().daemon)
        release.wait(timeout=30)
        return "0" * 64

    monkeypatch.setattr(vggfcn.digest, "sha256_file", slow)
    path = tmp_path / "src.h5"
    path.write_bytes(b"x")
    with source_digest(str(path)) as digest:
        release.set()
        digest.result()
    assert seen == [True]


def test_convert_starts_the_hash_before_numpy_is_imported(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    script = (
        "import sys, vggfcn.digest as d\n"
        "real = d.start\n"
        "def start(path):\n"
        "    print('numpy' in sys.modules, 'vggfcn.api' in sys.modules, flush=True)\n"
        "    real(path)\n"
        "d.start = start\n"
        "from vggfcn.cli import main\n"
        f"main(['convert', '-q', {str(keras1)!r}, {str(out)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False False"]
    assert out.exists()


def test_the_package_imports_without_numpy_and_keeps_its_names() -> None:
    code = (
        "import sys, vggfcn\n"
        "assert 'numpy' not in sys.modules\n"
        "import vggfcn.api\n"  # loads the verify module, which must not shadow the function
        "assert callable(vggfcn.verify) and vggfcn.verify.__module__ == 'vggfcn.verify'\n"
        "assert all(hasattr(vggfcn, name) for name in vggfcn.__all__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vggfcn.nothing  # noqa: B018


def test_the_option_values_are_the_ones_the_modules_act_on() -> None:
    assert tuple(precision.PRECISIONS) == choices.DTYPES


def test_the_source_hash_stops_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\1" * (3 << 20))
    assert sha256_file(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    stop = threading.Event()
    stop.set()
    with pytest.raises(CancelledError):
        sha256_file(str(path), stop)


def test_a_failed_conversion_stops_the_source_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash starts before the source is opened; a source that is refused must not wait
    for it to read the whole file."""
    stopped: list[bool] = []

    def hashing(path: str, stop: threading.Event) -> str:
        stopped.append(stop.wait(timeout=30))
        raise CancelledError

    monkeypatch.setattr(vggfcn.digest, "sha256_file", hashing)
    source = tmp_path / "notes.txt"
    source.write_text("not a checkpoint\n")
    with pytest.raises(FormatError):
        convert_file(str(source), str(tmp_path / "out.safetensors"))
    assert stopped == [True]
