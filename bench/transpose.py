"""Streaming a permuted fc6 against copying it: what `Tensor.blocks` costs when axes move.

Full-size VGG16's fc6 kernel is (7, 7, 512, 4096) HWIO, stored as a (25088, 4096) row-major
dataset (411 MB of float32). An output that wants it as OIHW (4096, 512, 7, 7) gathers every
output row from a column of the whole source, so streaming it in bounded memory takes several
passes over the file. Three child processes write the same 411 MB to the same output file
(write + fsync), interleaved and repeated so page-cache state and noise hit them alike:

- copy: the raw file read in 16 MiB blocks into one buffer and written, the floor;
- plain: `Tensor.blocks` of the file as stored (no axes moved);
- permuted: `Tensor.blocks` of it as OIHW.

Each child reports the seconds its stream took (after imports); the parent adds the process's
wall time and peak RSS (wait4). Targets: permuted stream <= ~1.3x copy, peak RSS <= 150 MiB.
All of it runs twice, once for each way the source can sit in the page cache (see CACHINGS).
The input is generated once into .cache/bench (outside tracked files) and reused.

Usage: python -m bench.transpose [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from vggfcn.formats.region import FileRegion
from vggfcn.layouts import permutation
from vggfcn.tensor import Tensor

from .__main__ import CACHE, PY, fmt

ROWS, COLUMNS = 25088, 4096  # fc6 as stored: (7 * 7 * 512 inputs, 4096 outputs)
HWIO = (7, 7, 512, COLUMNS)
HWIO_TO_OIHW = permutation("HWIO", "OIHW")
BLOCK = 16 << 20  # what writers pass to `Tensor.blocks`
SOURCE = CACHE / f"fc6_{ROWS}x{COLUMNS}.f32"
OUTPUT = CACHE / "transpose.out"
CASES = ("copy", "plain", "permuted")
#: How the source came into the page cache sets what mapping it costs (measured here, Linux
#: 6.18, ext4): read() (as the source hash reads it) caches it in large folios that map in
#: ~3 ms per 400 MB, and write() (a download) in ~1 ms; page faults of a map (or `cp`) cache it
#: 4 KiB at a time, ~25 ms per 400 MB. The permuted stream maps the source once per pass, so
#: it feels this; the others barely do.
CACHINGS = {"read": "cached by read()", "map": "cached by page faults of a map"}
#: Children that only prepare or check: the parent stays small because a child spawned by
#: vfork starts with its parent's peak RSS as its own (Linux carries it across exec).
CHORES = ("generate", "check", *(f"cache-{how}" for how in CACHINGS))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transpose")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=CASES + CHORES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "generate":
        generate()
    elif args.child == "check":
        check_output()
    elif args.child and args.child.startswith("cache-"):
        recache(args.child.removeprefix("cache-"))
    elif args.child:
        print(json.dumps(child(args.child)))
    else:
        compare(args.repeats)


def compare(repeats: int) -> None:
    """Print the three cases side by side, for each way the source can be cached."""
    if not SOURCE.exists() or SOURCE.stat().st_size != ROWS * COLUMNS * 4:
        print(f"generating {SOURCE} (once) ...", flush=True)
        run("generate")
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(
        f"fc6 {ROWS}x{COLUMNS} float32 ({SOURCE.stat().st_size / 1e6:.0f} MB) -> output file "
        f"(write + fsync), {BLOCK >> 20} MiB blocks; median of {repeats} (min-max), interleaved"
    )
    print("(targets: permuted stream <= ~1.3x copy, peak RSS <= 150 MiB)")
    for how, caching in CACHINGS.items():
        run(f"cache-{how}")
        streams: dict[str, list[float]] = {case: [] for case in CASES}
        walls: dict[str, list[float]] = {case: [] for case in CASES}
        peaks: dict[str, list[float]] = {case: [] for case in CASES}
        for round_ in range(repeats + 1):  # the first round is a warm-up: dropped
            for case in CASES:
                OUTPUT.unlink(missing_ok=True)
                stream, wall, peak = run(case)
                if case == "permuted" and round_ == 0:
                    run("check")
                if round_:
                    streams[case].append(stream)
                    walls[case].append(wall)
                    peaks[case].append(peak)
        OUTPUT.unlink(missing_ok=True)
        print(f"\nsource {caching}")
        print(
            f"   {'case':<9} {'stream s':<22} {'process wall s':<22} {'peak RSS MiB':>12}"
            "  stream vs copy (medians, minima)"
        )
        for case in CASES:
            # writing and fsyncing 411 MB is bimodal on these disks: the minima show the
            # cost without that noise
            median = statistics.median(streams[case]) / statistics.median(streams["copy"])
            least = min(streams[case]) / min(streams["copy"])
            print(
                f"   {case:<9} {fmt(streams[case]):<22} {fmt(walls[case]):<22} "
                f"{max(peaks[case]):>12.0f}  {median:.2f}x, {least:.2f}x"
            )


def recache(how: str) -> None:
    """Drop the source from the page cache, then read it back in `how` (see CACHINGS)."""
    with open(SOURCE, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        if how == "read":
            buffer = bytearray(BLOCK)
            while f.readinto(buffer):
                pass
            return
    region = FileRegion(str(SOURCE), 0, (ROWS, COLUMNS), np.dtype("<f4"))
    rows = BLOCK // (COLUMNS * 4)
    for start in range(0, ROWS, rows):
        region[start : start + rows]  # mapped and populated, then unmapped


def generate() -> None:
    """Write the 411 MB source: seeded standard normals, raw little-endian float32."""
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    partial = SOURCE.with_suffix(".partial")
    with open(partial, "wb") as f:
        for start in range(0, ROWS, 1024):
            rows = min(1024, ROWS - start)
            f.write(rng.standard_normal((rows, COLUMNS), dtype=np.float32).astype("<f4").data)
    partial.replace(SOURCE)


def run(case: str) -> tuple[float, float, float]:
    """A child's stream seconds (0 for chores), its process wall seconds and peak RSS (MiB)."""
    start = time.perf_counter()
    cmd = [PY, "-m", "bench.transpose", "--child", case]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()  # one line, then EOF at exit; the child is reaped by wait4
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {proc.stderr.read().decode()}")
    return float(json.loads(out or b"0")), wall, usage.ru_maxrss / 1024


def child(case: str) -> float:
    """Write the case's bytes to OUTPUT (write + fsync); return the seconds that took."""
    start = time.perf_counter()
    with open(OUTPUT, "wb") as out:
        for block in blocks(case):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - start


def blocks(case: str) -> Iterator[memoryview]:
    """The bytes a case writes, block by block."""
    if case == "copy":
        buffer = memoryview(bytearray(BLOCK))  # reused: the floor allocates nothing per block
        with open(SOURCE, "rb", buffering=0) as f:
            while count := f.readinto(buffer):
                yield buffer[:count]
        return
    tensor = Tensor.wrap(FileRegion(str(SOURCE), 0, (ROWS, COLUMNS), np.dtype("<f4")), "fc6")
    if case == "permuted":
        tensor = tensor.reshape(HWIO).permute(HWIO, HWIO_TO_OIHW)
    for block in tensor.blocks(BLOCK):
        yield block.data  # as the safetensors writer writes them


def check_output() -> None:
    """Spot-check the permuted output: a few OIHW rows against the source's columns."""
    source = np.memmap(SOURCE, np.dtype("<f4"), "r", shape=HWIO)
    written = np.memmap(OUTPUT, np.dtype("<f4"), "r", shape=(COLUMNS, 512, 7, 7))
    for o in (0, 1, 1234, COLUMNS - 1):
        if not np.array_equal(written[o], source[..., o].transpose(2, 0, 1)):
            raise SystemExit(f"bench: permuted output row {o} differs from the source")


if __name__ == "__main__":
    main()
