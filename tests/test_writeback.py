"""Early writeback: the kernel is asked to start writing the output while it is being written,
the asking stops with the block, and a refusal or a missing call changes nothing."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from vggfcn import writeback
from vggfcn.atomic import atomic_write


def _recording(monkeypatch: pytest.MonkeyPatch, result: int = 0) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []

    def call(*args: int) -> int:
        calls.append(args)
        return result

    monkeypatch.setattr(writeback, "_sync_file_range", lambda: call)
    return calls


def test_asks_for_the_whole_file_while_the_block_runs_and_stops_after(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _recording(monkeypatch)
    with open(tmp_path / "out", "wb") as f, writeback.early_writeback(f.fileno()):
        f.write(b"x" * 4096)
        time.sleep(writeback.INTERVAL * 5)
        fd = f.fileno()
    assert calls and set(calls) == {(fd, 0, 0, 2)}  # whole file, SYNC_FILE_RANGE_WRITE
    seen = len(calls)
    time.sleep(writeback.INTERVAL * 3)
    assert len(calls) == seen  # joined: nothing asks about a closed descriptor
    assert not any(t.name == "vggfcn-writeback" for t in threading.enumerate())


def test_a_refusal_stops_the_asking(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _recording(monkeypatch, result=-1)
    with open(tmp_path / "out", "wb") as f, writeback.early_writeback(f.fileno()):
        time.sleep(writeback.INTERVAL * 5)
    assert len(calls) == 1


def test_without_the_call_the_output_is_written_all_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(writeback, "_sync_file_range", lambda: None)
    with atomic_write(str(tmp_path / "out.bin")) as f:
        f.write(b"weights")
    assert (tmp_path / "out.bin").read_bytes() == b"weights"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_real_call_is_found_and_accepts_a_file(tmp_path: Path) -> None:
    call = writeback._sync_file_range()
    assert call is not None
    with open(tmp_path / "out", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        assert call(f.fileno(), 0, 0, 2) == 0
