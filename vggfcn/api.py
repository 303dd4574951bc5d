"""File-level operations behind the commands, importable for notebooks and pipelines.

Each function reads files, calls the pure pieces (readers, `to_fcn`, `forward`, `verify`) and
returns a plain result; printing and exit codes belong to the CLI.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from . import heatmap, imagenet, images
from .atomic import atomic_write, check_output
from .convert import LAYOUTS, NAME_SCHEMES, metadata, named_tensors, tensor_names, to_fcn
from .errors import MismatchError, VggfcnError
from .formats import load, safetensors_io
from .precision import DTYPES
from .predict import class_probabilities, score_map
from .verify import VerifyReport, verify
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
    verification: VerifyReport | None  # with verify_output: the check made before publishing


def convert_file(
    source: str,
    output: str,
    *,
    layout: str = "hwio",
    names: str = "vggfcn",
    dtype: str = "float32",
    force: bool = False,
    verify_output: bool = False,
    allow_nonfinite: bool = False,
    progress: bool = False,
) -> ConvertResult:
    """Convert a VGG classifier checkpoint into a fully-convolutional safetensors file.

    Example:
        >>> convert_file("vgg16.h5", "vgg16.fcn.safetensors").fc6_shape
        (7, 7, 512, 4096)

    Args:
        layout, names: output kernel layout ("hwio"/"oihw") and name scheme ("vggfcn"/"torch").
        dtype: output precision, "float32", "float16" or "bfloat16".
        force: replace an existing output (atomically).
        verify_output: run `verify` on the finished temp file before it is renamed into place;
            a mismatch publishes nothing.
        allow_nonfinite: convert NaN/Inf weights instead of refusing them.
        progress: show a progress bar on stderr.

    Raises:
        VggfcnError: bad input (FormatError, ArchitectureError), output (OutputError) or a
        failed verification (MismatchError); the output is then neither created nor changed.
    """
    check_output(output, [source], force=force)
    with load(source) as weights, ThreadPoolExecutor(max_workers=1) as pool:
        # Hash the source on the second core while the first streams the conversion; the
        # digest's fixed length lets the header be written first and patched at the end.
        digest = pool.submit(sha256_file, source)
        fcn = to_fcn(weights)
        if layout not in LAYOUTS or names not in NAME_SCHEMES or dtype not in DTYPES:
            raise VggfcnError(
                f"layout must be one of {LAYOUTS}, names one of {NAME_SCHEMES}, "
                f"dtype one of {tuple(DTYPES)}"
            )
        tensors = named_tensors(fcn, layout, names)
        name = os.path.basename(source)
        total = sum(t.size * 4 for t in tensors.values())  # float32 bytes streamed
        checks: list[VerifyReport] = []

        def check(temp: str) -> None:
            with load(temp) as written:
                report = verify(
                    weights, replace(written, source=replace(written.source, path=output))
                )
            checks.append(report)
            if not report.passed:
                raise MismatchError(
                    f"{output}: verification failed (max scaled error "
                    f"{_worst(report):.2e} > tolerance); nothing was written"
                )

        with (
            _progress(total, progress) as update,
            atomic_write(output, check if verify_output else None) as f,
        ):

            def final_metadata() -> dict[str, str]:
                # The hash (SHA-256 runs at ~1.5 GB/s) usually finishes after the data is
                # written: flush the data to disk meanwhile, so the fsync before publishing
                # finds only the patched header left to write.
                f.flush()
                os.fsync(f.fileno())
                return metadata(fcn, name, digest.result(), layout, names, dtype)

            safetensors_io.write(
                f,
                tensors,
                metadata(fcn, name, "0" * 64, layout, names, dtype),
                update,
                final_metadata=final_metadata,
                allow_nonfinite=allow_nonfinite,
                dtype=dtype,
            )
        return ConvertResult(
            output=output,
            arch=fcn.arch.name,
            classes=fcn.arch.classes,
            parameters=fcn.arch.parameter_count(),
            fc6_shape=tensors[tensor_names(fcn, names)[len(fcn.trunk)][0]].shape,
            bytes_written=os.path.getsize(output),
            source_sha256=digest.result(),
            verification=checks[0] if checks else None,
        )


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], object]]:
    """A byte-counting progress bar on stderr, or a no-op; tqdm is imported only when shown
    (it costs a pipeline run 20 ms of start-up for nothing)."""
    if not enabled:
        yield lambda _n: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, desc="convert", leave=False)
    with bar:
        yield bar.update


def _worst(report: VerifyReport) -> float:
    return max([report.max_scaled_error, *(c.agreement.max_scaled_error for c in report.spatial)])


def verify_files(
    original: str,
    converted: str,
    *,
    images: int = 1,
    probes: int = 8,
    sizes: Sequence[int] = (288,),
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> VerifyReport:
    """Run `verify` on two files: the original classifier and the converted network.

    `atol`/`rtol` default to the tolerance of the converted file's precision (`TOLERANCES`).
    """
    with load(original) as ref, load(converted) as fcn:
        return verify(
            ref, fcn, images=images, probes=probes, sizes=sizes, seed=seed, atol=atol, rtol=rtol
        )


@dataclass(frozen=True)
class Prediction:
    """`predict_file`'s answer: the logit map and the preprocessing that was applied."""

    scores: np.ndarray  # (N, H//32 - 6, W//32 - 6, classes) logits
    preprocess: str
    input_shape: tuple[int, ...]


def predict_file(
    weights: str,
    source: str,
    *,
    preprocess: str | None = None,
    out: str | None = None,
    force: bool = False,
) -> Prediction:
    """Run the fully-convolutional network on an image or .npy input of any size >= 224.

    Args:
        weights: a converted file, or an original classifier (converted in memory).
        source: an image (JPEG/PNG..., needs the `images` extra) or a .npy array, (H, W, 3) or
            (N, H, W, 3), channels-last, already preprocessed.
        preprocess: "caffe", "torch" or "none"; default "caffe" for images (Keras VGG16's
            mode) and "none" for arrays.
        out: optional .npy path for the raw logit map, written atomically.
    """
    if out is not None:
        check_output(out, [weights, source], force=force)
    mode = preprocess or ("none" if images.is_npy(source) else "caffe")
    x = images.load_input(source, mode)
    with load(weights) as w:
        scores = score_map(w, x)
    if out is not None:
        with atomic_write(out) as f:
            np.save(f, scores, allow_pickle=False)
    return Prediction(scores, mode, tuple(x.shape))


@dataclass(frozen=True)
class HeatmapResult:
    output: str
    class_index: int
    class_name: str
    cells: tuple[int, int]
    hottest_cell: tuple[int, int]
    hottest_probability: float


def heatmap_file(
    weights: str,
    image: str,
    class_name: str,
    out: str,
    *,
    preprocess: str = "caffe",
    force: bool = False,
) -> HeatmapResult:
    """Write `image` with one class's per-cell probability overlaid as a colour map (PNG)."""
    check_output(out, [weights, image], force=force)
    if images.is_npy(image):
        raise VggfcnError(f"{image}: a heatmap needs an image file to draw on, not a .npy array")
    rgb = images.load_image(image)
    images.check_size(image, rgb.shape[0], rgb.shape[1])
    x = images.preprocess_image(rgb, preprocess)[np.newaxis]
    with load(weights) as w:
        scores = score_map(w, x)
    classes = scores.shape[-1]
    index = imagenet.class_index(class_name, classes)
    probabilities = class_probabilities(scores, index)[0]
    png = heatmap.encode_png(heatmap.overlay(rgb, probabilities))
    with atomic_write(out) as f:
        f.write(png)
    hottest = np.unravel_index(int(np.argmax(probabilities)), probabilities.shape)
    return HeatmapResult(
        out,
        index,
        imagenet.label(index, classes),
        probabilities.shape,
        (int(hottest[0]), int(hottest[1])),
        float(probabilities.max()),
    )


def inspect_file(path: str) -> dict[str, object]:
    """What a checkpoint holds: format, architecture, layers, shapes, dtypes, parameters."""
    with load(path) as w:
        return describe(w)


def describe(w: VGGWeights) -> dict[str, object]:
    """A JSON-ready description of canonical weights (the `inspect` report)."""
    layers: list[dict[str, object]] = []
    total = 0
    for layer in w.layers:
        conv = len(layer.kernel.shape) == 4
        kind = f"conv{layer.kernel.shape[0]}x{layer.kernel.shape[1]}" if conv else "dense"
        count = layer.kernel.size + layer.bias.size
        if layer.norm is not None:
            kind += "+bn"
            count += layer.norm.gamma.size + layer.norm.beta.size  # running stats are buffers
        total += count
        layers.append(
            {
                "name": layer.name,
                "file_name": layer.file_name,
                "kind": kind,
                "kernel_shape": list(layer.kernel.shape),
                "bias_shape": list(layer.bias.shape),
                "dtype": getattr(layer.kernel.source, "storage", str(layer.kernel.source.dtype)),
                "parameters": count,
            }
        )
    return {
        "file": w.source.path,
        "format": w.source.format,
        "generation": w.source.generation,
        "arch": w.arch.name,
        "head": "convolutional" if w.convolutional_head else "dense",
        "shapes": "HWIO (canonical; dense kernels (in, out))",
        "flatten_order": w.source.flatten_order,
        "classes": w.arch.classes,
        "softmax": w.source.softmax_label,
        "batch_norm": w.source.batch_norm,
        "parameters": total,
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
