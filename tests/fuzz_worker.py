"""Shared pieces of the fuzz tests: seed checkpoints, byte mutations, the property, a crash guard.

The property every mutated checkpoint must satisfy (the README's Safety section): `convert_file`
either raises our own `VggfcnError` (one line naming the file; no output, no temp file) or
succeeds, and then `verify_files` on the pair passes (or raises a `VggfcnError`). Any other
exception is a bug. For our own converted format the file is fed to `inspect_file` and
`verify_files(original, mutated)` instead, which may fail to pass but may only raise our error.

The HDF5 C library can crash or hang on a corrupt file, which would take pytest down with it, so
HDF5 examples run in a child process (`Worker`): `python -m tests.fuzz_worker` reads one JSON
request per line on stdin and answers on its own descriptor. A child that dies or stalls is
reported as a failure of that example and restarted for the next one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: Output written for each example; everything else appearing in its directory is a leftover.
OUTPUT = "out.safetensors"
#: Seconds one example may take before it counts as a hang.
EXAMPLE_TIMEOUT = 8.0
#: The verification run on successful conversions: one image, two probes, a 256x256 map (2x2
#: cells) — every check verify has, at a fraction of the default cost.
VERIFY_OPTIONS: dict[str, Any] = {"images": 1, "probes": 2, "sizes": (256,)}
#: Formats whose readers go through the HDF5 C library.
HDF5_FORMATS = ("keras1", "keras3-weights", "keras-archive", "keras-hub", "fcn-keras")
#: Our own outputs: read back (inspect, verify against their original), never converted.
OUTPUT_FORMATS = ("fcn", "fcn-onnx", "fcn-keras")
#: The seed our own format is converted from, and verified against: not HDF5, whose reader
#: is the slowest to open, since every fcn example opens it again.
FCN_ORIGINAL = "torchvision-safetensors"

# ------------------------------------------------------------ seed checkpoints


def write_seeds(folder: Path) -> dict[str, Path]:
    """The smallest valid checkpoint of every supported format (plus our own output) in `folder`.

    Widths 2/2/2/2/2, fc 4/4, 3 classes: a few kilobytes each, so a mutation often lands in the
    structure (headers, pickles, B-trees) rather than in weights.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import safetensors.torch
    import torch

    from fixtures import keras_hub as hub
    from fixtures.caffe import write_caffemodel
    from fixtures.finetuned import keras_finetuned
    from fixtures.generate import Widths, write_checkpoint
    from fixtures.onnx_sources import tf2onnx_style, torch_script
    from fixtures.torch_vgg import classifier
    from vggfcn.api import convert_file
    from vggfcn.arch import Arch
    from vggfcn.synthetic import random_layers

    widths = Widths((2, 2, 2, 2, 2), (4, 4), 3)
    seeds = {
        "keras1": folder / "seed_keras1.h5",
        "keras3-weights": folder / "seed_keras3.weights.h5",
        "keras-archive": folder / "seed_finetuned.keras",
        "torchvision-pth": folder / "seed_torchvision.pth",
        "torchvision-safetensors": folder / "seed_torchvision.safetensors",
        "tensorflow-vgg": folder / "seed_vgg16.npy",
        "fcn": folder / "seed_fcn.safetensors",
        "fcn-onnx": folder / "seed_fcn.onnx",
        "fcn-keras": folder / "seed_fcn.keras",
        "caffemodel": folder / "seed_vgg16.caffemodel",
        "onnx-torch": folder / "seed_torch.onnx",
        "onnx-tf2onnx": folder / "seed_tf2onnx.onnx",
        "keras-hub": folder / "seed_hub.keras",
    }
    write_checkpoint(seeds["keras1"], "keras1", widths)
    write_checkpoint(seeds["keras3-weights"], "keras3-weights", widths)
    keras_finetuned("flatten", 64, widths=widths).save(str(seeds["keras-archive"]))
    state = {k: v.detach().clone() for k, v in classifier(widths.convs, 4, 3).state_dict().items()}
    torch.save(state, seeds["torchvision-pth"])
    safetensors.torch.save_file(state, str(seeds["torchvision-safetensors"]))
    arch = Arch.from_blocks("vgg16", widths.convs, widths.fc, widths.classes)
    tf_names = {f"block{b}_conv{i}": f"conv{b}_{i}" for b in range(1, 6) for i in range(1, 4)}
    layers = {tf_names.get(n, n): [k, b] for n, k, b in random_layers(arch, seed=0)}
    np.save(seeds["tensorflow-vgg"], np.array(layers, dtype=object), allow_pickle=True)
    for output in OUTPUT_FORMATS:
        convert_file(str(seeds[FCN_ORIGINAL]), str(seeds[output]))
    write_caffemodel(seeds["caffemodel"], "v1", widths=widths)
    torch_script(seeds["onnx-torch"], widths=widths)
    tf2onnx_style(seeds["onnx-tf2onnx"], widths=widths, dense_bn=True)
    spec = hub.HubSpec(pooling="flatten", filters=widths.convs, hidden=4, classes=3)
    hub.save(spec, seeds["keras-hub"], "keras")
    return seeds


# ------------------------------------------------------------ mutations

#: Byte values and integers that tend to break parsers: sign bits, all-ones, powers of two.
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x22, 0x2C, 0x5B, 0x7B, 0x7D)
INTERESTING_INTS = (0, 1, 7, 8, 63, 64, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1,
                    2**40, 2**63 - 1, 2**64 - 1)  # fmt: skip

#: One edit: (kind, a, b, c); positions are reduced modulo the current length.
Op = tuple[str, int, int, int]


def mutate(data: bytes, ops: Sequence[Op]) -> bytes:
    """Apply edits in order: flip/set bytes, write an integer, truncate, copy, duplicate, cut."""
    buf = bytearray(data)
    for kind, a, b, c in ops:
        n = len(buf)
        if n == 0:
            break
        at = a % n
        if kind == "flip":
            buf[at] ^= b % 255 + 1
        elif kind == "set":
            buf[at] = INTERESTING_BYTES[b % len(INTERESTING_BYTES)]
        elif kind == "int":
            width = (1, 2, 4, 8)[c % 4]
            value = INTERESTING_INTS[b % len(INTERESTING_INTS)] % (1 << (8 * width))
            buf[at : at + width] = value.to_bytes(width, "little")[: n - at]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "copy":  # overwrite [c, c+len) with [at, at+len): splice inside the file
            chunk = bytes(buf[at : at + b])
            dst = c % n
            buf[dst : dst + len(chunk)] = chunk[: n - dst]
        elif kind == "insert":  # duplicate a range at another place: the file grows
            chunk = bytes(buf[at : at + b])
            dst = c % (n + 1)
            buf[dst:dst] = chunk
        elif kind == "delete":
            del buf[at : at + b]
        else:
            raise ValueError(f"unknown mutation {kind!r}")
    return bytes(buf)


# ------------------------------------------------------------ the property


class Hang(BaseException):
    """An example ran past its time limit (BaseException: no `except Exception` swallows it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` in the main thread if the block runs longer than `seconds`."""

    def expire(_signum: int, _frame: object) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _leftovers(outdir: str, allowed: Sequence[str] = ()) -> list[str]:
    return sorted(set(os.listdir(outdir)) - set(allowed))


def _check_message(error: BaseException, *paths: str) -> None:
    message = str(error)
    assert "\n" not in message, f"{type(error).__name__} message spans lines: {message!r}"
    assert any(p in message for p in paths), f"message names no file: {message!r}"


def check(kind: str, source: str, outdir: str, original: str | None = None) -> str:
    """Run the property on one mutated file; AssertionError or any escaping exception = a bug.

    Returns:
        what happened, for statistics: "refused", "converted", "verify-refused", "inspected".
    """
    from vggfcn.api import convert_file, inspect_file, verify_files
    from vggfcn.errors import VggfcnError

    if kind in OUTPUT_FORMATS:
        assert original is not None
        outcome = "inspected"
        try:
            inspect_file(source)
        except VggfcnError as e:
            _check_message(e, source)
            outcome = "refused"
        try:
            verify_files(original, source, **VERIFY_OPTIONS)
        except VggfcnError as e:
            _check_message(e, source, original)
        return outcome
    out = os.path.join(outdir, OUTPUT)
    try:
        convert_file(source, out)
    except VggfcnError as e:
        _check_message(e, source, out)
        left = _leftovers(outdir)
        assert not left, f"after {type(e).__name__}({e}) the output directory holds {left}"
        return "refused"
    left = _leftovers(outdir, [OUTPUT])
    assert os.path.exists(out) and not left, f"converted, but the directory holds {left}"
    try:
        report = verify_files(source, out, **VERIFY_OPTIONS)
    except VggfcnError as e:
        _check_message(e, source, out)
        return "verify-refused"
    assert report.passed, (
        f"converted, but verify fails: max scaled error {report.max_scaled_error}, "
        f"spatial {[c.agreement.max_scaled_error for c in report.spatial]}"
    )
    return "converted"


def run_example(kind: str, source: str, outdir: str, original: str | None) -> dict[str, str]:
    """`check` as a JSON-ready verdict: {"outcome": ...} or {"bug": traceback}."""
    try:
        with time_limit(EXAMPLE_TIMEOUT):
            return {"outcome": check(kind, source, outdir, original)}
    except (Exception, Hang):
        return {"bug": traceback.format_exc()}


# ------------------------------------------------------------ the child process


class Worker:
    """A long-lived child running `run_example`; survives its own crashes by restarting.

    `log` receives the child's stderr (HDF5 diagnostics, a crash's last words).
    """

    def __init__(self, log: Path) -> None:
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._answers: Any = None

    def _start(self) -> subprocess.Popen[bytes]:
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": root, "KERAS_BACKEND": "torch"}
        read_fd, write_fd = os.pipe()
        with open(self._log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzz_worker", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=root,
                env=env,
                pass_fds=(write_fd,),
            )
        os.close(write_fd)
        self._answers = os.fdopen(read_fd, "rb")
        return proc

    def run(
        self, kind: str, source: str, outdir: str, original: str | None, timeout: float
    ) -> dict[str, str]:
        """Send one example; a crash or a stall becomes {"bug": ...} and the child is replaced."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        proc, answers = self._proc, self._answers
        assert proc.stdin is not None
        request = {"kind": kind, "source": source, "outdir": outdir, "original": original}
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([answers], [], [], timeout)
        line = answers.readline() if ready else b""
        if line:
            return dict(json.loads(line))
        if not ready:
            proc.kill()
        code = proc.wait()
        self.close()
        what = "hung (killed)" if not ready else f"died with exit status {code}"
        if code < 0:
            what += f" ({signal.Signals(-code).name})"
        return {"bug": f"the worker {what} on this file; its stderr is in {self._log}"}

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            self._proc = None
        if self._answers is not None:
            self._answers.close()
            self._answers = None


def serve(answer_fd: int, handle: Callable[..., dict[str, str]] = run_example) -> None:
    """Child side: answer each request line on stdin with one JSON line on `answer_fd`."""
    with os.fdopen(answer_fd, "w") as answers:
        for line in sys.stdin:
            request = json.loads(line)
            answers.write(json.dumps(handle(**request)) + "\n")
            answers.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
