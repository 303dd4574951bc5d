"""File-level operations behind the commands, importable for notebooks and pipelines.

Each function reads files, calls the pure pieces (readers, `to_fcn`, `forward`, `verify`) and
returns a plain result; printing and exit codes belong to the CLI.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from .atomic import atomic_write, check_output
from .convert import metadata, named_tensors, to_fcn
from .formats import load, safetensors_io
from .verify import ATOL, RTOL, VerifyReport, verify
from .weights import VGGWeights


@dataclass(frozen=True)
class ConvertResult:
    output: str
    arch: str
    classes: int
    parameters: int
    fc6_shape: tuple[int, ...]
    bytes_written: int
    source_sha256: str


def convert_file(
    source: str, output: str, *, force: bool = False, progress: bool = False
) -> ConvertResult:
    """Convert a VGG classifier checkpoint into a fully-convolutional safetensors file.

    Example:
        >>> convert_file("vgg16.h5", "vgg16.fcn.safetensors").fc6_shape
        (7, 7, 512, 4096)

    Raises:
        VggfcnError: bad input (FormatError, ArchitectureError) or output (OutputError); the
        output is then neither created nor changed.
    """
    check_output(output, [source], force=force)
    with load(source) as weights, ThreadPoolExecutor(max_workers=1) as pool:
        # Hash the source on the second core while the first streams the conversion; the
        # digest's fixed length lets the header be written first and patched at the end.
        digest = pool.submit(sha256_file, source)
        fcn = to_fcn(weights)
        tensors = named_tensors(fcn)
        name = os.path.basename(source)
        total = sum(t.size * 4 for t in tensors.values())
        with (
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                file=sys.stderr,
                disable=not progress,
                desc="convert",
                leave=False,
            ) as bar,
            atomic_write(output) as f,
        ):
            safetensors_io.write(
                f,
                tensors,
                metadata(fcn, name, "0" * 64),
                bar.update,
                final_metadata=lambda: metadata(fcn, name, digest.result()),
            )
        return ConvertResult(
            output=output,
            arch=fcn.arch.name,
            classes=fcn.arch.classes,
            parameters=fcn.arch.parameter_count(),
            fc6_shape=fcn.head[0].kernel.shape,
            bytes_written=os.path.getsize(output),
            source_sha256=digest.result(),
        )


def verify_files(
    original: str,
    converted: str,
    *,
    images: int = 1,
    probes: int = 8,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> VerifyReport:
    """Run `verify` on two files: the original classifier and the converted network."""
    with load(original) as ref, load(converted) as fcn:
        return verify(ref, fcn, images=images, probes=probes, seed=seed, atol=atol, rtol=rtol)


def inspect_file(path: str) -> dict[str, object]:
    """What a checkpoint holds: format, architecture, layers, shapes, dtypes, parameters."""
    with load(path) as w:
        return describe(w)


def describe(w: VGGWeights) -> dict[str, object]:
    """A JSON-ready description of canonical weights (the `inspect` report)."""
    layers = []
    for layer in w.layers:
        conv = len(layer.kernel.shape) == 4
        layers.append(
            {
                "name": layer.name,
                "file_name": layer.file_name,
                "kind": f"conv{layer.kernel.shape[0]}x{layer.kernel.shape[1]}" if conv else "dense",
                "kernel_shape": list(layer.kernel.shape),
                "bias_shape": list(layer.bias.shape),
                "dtype": str(layer.kernel.source.dtype),
                "parameters": layer.kernel.size + layer.bias.size,
            }
        )
    return {
        "file": w.source.path,
        "format": w.source.format,
        "generation": w.source.generation,
        "arch": w.arch.name,
        "head": "convolutional" if w.convolutional_head else "dense",
        "layout": "HWIO",
        "flatten_order": w.source.flatten_order,
        "classes": w.arch.classes,
        "softmax": w.source.softmax_label,
        "parameters": sum(int(row["parameters"]) for row in layers),  # type: ignore[call-overload]
        "layers": layers,
    }


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read into one reused 1 MiB buffer (no per-block allocation)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
