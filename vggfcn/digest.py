"""A source's SHA-256, computed on the second core while the source is converted.

Every converted file records its source's SHA-256, and hashing VGG16 (553 MB, 0.33 s with the
CPU's SHA instructions) takes as long as the rest of a conversion, so it runs beside it. The
command line starts it as soon as it has parsed SOURCE (`start`), before NumPy and the readers
are imported: those 0.1 s of imports use one core, and the hash takes the other.
`convert_file` picks that hash up (`source_digest`), or starts its own when nobody did.

The file is hashed straight from maps of it, `WINDOW` bytes at a time: nothing is copied into a
buffer, and the GIL changes hands once per window. Imports hold the GIL almost throughout; a
hash reading 1 MiB at a time waited for it after every read and had hashed 64 MB, not 450 MB,
when they were done (measured). As with any map (`formats.region`), truncating the file while
it is hashed kills the process with SIGBUS.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from typing import Any

#: Bytes hashed per map: whole 2 MiB page-cache folios, and little beside the memory targets
#: (a live map's pages count in the process's RSS).
WINDOW = 8 << 20
_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)


def sha256_file(path: str, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of the file at `path`; of a directory (a KerasHub preset), of its files in
    name order, each as its name, a NUL, its size as 8 little-endian bytes, then its bytes (so
    no two different folders hash alike).

    Raises:
        CancelledError: `stop` was set (checked once per window).
        OSError: the file cannot be opened or mapped.
    """
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            member = os.path.join(path, name)
            if os.path.isfile(member):
                digest.update(name.encode() + b"\0" + os.path.getsize(member).to_bytes(8, "little"))
                _update(digest, member, stop)
        return digest.hexdigest()
    _update(digest, path, stop)
    return digest.hexdigest()


def _update(digest: Any, path: str, stop: threading.Event | None) -> None:
    """Feed a file's bytes to `digest`, through maps of `WINDOW` bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for offset in range(0, size, WINDOW):
            if stop is not None and stop.is_set():
                raise CancelledError
            length = min(WINDOW, size - offset)
            with mmap.mmap(
                f.fileno(), length, offset=offset, flags=_FLAGS, prot=mmap.PROT_READ
            ) as window:
                digest.update(window)


class _Hash:
    """One hash on its own thread: the file it is of, its result, and how to stop it.

    The thread is a daemon, so that a command which fails before it needs the digest (a usage
    error, an output that exists) exits at once rather than after the whole file is read.
    """

    def __init__(self, path: str, identity: tuple[int, ...] | None) -> None:
        self.identity = identity
        self.result: Future[str] = Future()
        self.stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(path,), name="vggfcn-hash", daemon=True
        )
        self._thread.start()

    def _run(self, path: str) -> None:
        try:
            self.result.set_result(sha256_file(path, self.stop))
        except BaseException as e:  # handed to whoever asks for the result
            self.result.set_exception(e)

    def end(self) -> None:
        """Stop at the next window (if still running) and wait for the thread."""
        self.stop.set()
        self._thread.join()


_pending: _Hash | None = None
_lock = threading.Lock()


def start(path: str) -> None:
    """Start hashing `path` for a `source_digest(path)` to come; one at a time (a hash
    started before, never picked up, is stopped). Nothing happens if `path` is not a file."""
    global _pending
    identity = _identity(path)
    if identity is None:
        return
    with _lock:
        previous, _pending = _pending, _Hash(path, identity)
    if previous is not None:
        previous.end()


@contextmanager
def source_digest(path: str) -> Iterator[Future[str]]:
    """The SHA-256 of `path`: the hash `start` began if it is of this same file (same device,
    inode, size and modification time), else a new one. If the block ends without it (a
    refused source), the hash stops at its next window instead of holding the error back until
    the whole file is read."""
    global _pending
    identity = _identity(path)
    with _lock:
        started, _pending = _pending, None
    if started is not None and (identity is None or started.identity != identity):
        started.end()
        started = None
    running = started or _Hash(path, identity)
    try:
        yield running.result
    finally:
        running.end()  # at once when the result is in; at the next window when it is not


def _identity(path: str) -> tuple[int, ...] | None:
    """What tells a file from any other and from its own earlier contents; None if `path` is
    not a regular file (a directory is hashed when asked for, never early)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
