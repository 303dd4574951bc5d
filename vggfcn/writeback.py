"""Early writeback: the disk writes an output while the rest of it is still being converted.

`atomic_write` fsyncs before it publishes. Left alone, Linux starts writing a new file's dirty
pages only when they are 30 s old or a tenth of RAM is dirty, so a 553 MB output waits in the
page cache until that fsync, and the fsync then waits for all of it: 0.16 s here, with the CPU
idle. Asking the kernel every `INTERVAL` (20 ms) to start writing whatever is dirty
(`sync_file_range(SYNC_FILE_RANGE_WRITE)` queues the I/O and returns) keeps the disk busy beside
the conversion, so the fsync finds little left. The asking runs on its own thread: the call
can block while the device's queue is full, and a writer must not.

Linux only (the call is Linux's; CPython does not wrap it). Elsewhere, or when the call fails
(a filesystem that refuses it), nothing changes: the fsync still writes everything.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds between requests: a few MB written each time at this machine's speeds, so the
#: disk never waits long for work.
INTERVAL = 0.02
_SYNC_FILE_RANGE_WRITE = 2


@contextmanager
def early_writeback(fd: int) -> Iterator[None]:
    """While the block runs, have the kernel start writing `fd`'s dirty pages to disk.

    Durability is unchanged: this only starts writes early, the caller's fsync still waits for
    all of them. The thread is joined before the block's exit, so `fd` may be closed after.
    """
    start = _sync_file_range()
    if start is None:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(INTERVAL):
            if start(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
                return  # refused here (the errno says why): the fsync will do it all

    thread = threading.Thread(target=run, name="vggfcn-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # a libc without it
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call
