"""File-level operations behind the commands, importable for notebooks and pipelines.

Each function reads files, calls the pure pieces (readers, `to_fcn`, `forward`, `verify`) and
returns a plain result; printing and exit codes belong to the CLI.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from . import heatmap, imagenet, images
from .atomic import atomic_write, check_output
from .choices import HEADS
from .convert import to_fcn
from .digest import source_digest
from .errors import ArchitectureError, AssumptionWarning, MismatchError, VggfcnError
from .fcn import FCN
from .formats import Network, load
from .formats.fcn_metadata import PendingMetadata, metadata
from .formats.outputs import Job, output_for
from .graph import SourceGraph
from .inspection import Report, describe
from .layouts import shape_in, sizes_of
from .predict import as_fcn, class_probabilities, score_map
from .reduce import reduce_head
from .reduced_check import ReducedResult
from .verify import VerifyResult, prove

if TYPE_CHECKING:
    from typing import Unpack

    from .verify import Options

Size = tuple[int, int]


@dataclass(frozen=True)
class ConvertResult:
    """`convert_file`'s answer: what was written, and the check made before publishing."""

    output: str
    format: str  # "safetensors", "onnx" or "keras"
    layout: str  # the kernels' layout in the file: "HWIO" or "OIHW"
    names: str  # its name scheme: "vggfcn", "torch", "ssd", or "source" (the source's names)
    dtype: str  # its weights' precision
    arch: str
    head: str  # "classifier", or "reduced" (a backbone initialisation)
    classes: int
    parameters: int
    fc6_shape: tuple[int, ...]  # the first head layer's kernel, in `layout`
    bytes_written: int
    source_sha256: str
    verification: VerifyResult | ReducedResult | None  # with verify_output: the check made


def convert_file(
    source: str,
    output: str,
    *,
    layout: str | None = None,
    names: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    verify_output: bool = False,
    allow_nonfinite: bool = False,
    progress: bool = False,
    input_size: Size | None = None,
    head: str = "classifier",
    channel_order: str | None = None,
    to: str | None = None,
) -> ConvertResult:
    """Convert a VGG classifier checkpoint into a fully-convolutional network: safetensors
    weights, or a runnable ONNX or Keras `.keras` model.

    Example:
        >>> convert_file("vgg16.h5", "vgg16.fcn.safetensors").fc6_shape
        (7, 7, 512, 4096)

    Args:
        layout, names, dtype: what the output stores (`formats.outputs`): kernel layout
            ("hwio"/"oihw"), name scheme ("vggfcn"/"torch"/"ssd") and precision ("float32",
            "float16", "bfloat16"); None for the output format's default.
        force: replace an existing output (atomically).
        verify_output: run `verify` on the finished temp file before it is renamed into place;
            a mismatch publishes nothing.
        allow_nonfinite: convert NaN/Inf weights instead of refusing them.
        progress: show a progress bar on stderr.
        input_size: (H, W) the classifier was built for, when its file does not say.
        head: "classifier" (the original's head, convolutional), "reduced" (SSD/DeepLab's
            decimated fc6/fc7, `reduce`) or "reduced-fc8" (the same, with fc8 decimated).
        channel_order: "rgb" or "bgr": the input channel order the output takes (conv1 is
            flipped when the source expects the other).
        to: the output format, "safetensors", "onnx" or "keras"; by default OUTPUT's
            extension says.

    Raises:
        VggfcnError: bad options or input (FormatError, ArchitectureError), output
        (OutputError) or a failed verification (MismatchError); the output is then neither
        created nor changed.
    """
    if head not in HEADS or channel_order not in (None, "rgb", "bgr"):
        raise VggfcnError(f"head must be one of {HEADS}, channel order rgb or bgr")
    target = output_for(output, to)
    storage = target.storage(output, layout, names, dtype, head.split("-")[0])
    if storage.names == "ssd" and (storage.layout != "OIHW" or head != "reduced"):
        raise VggfcnError(
            "--names ssd writes ssd.pytorch's VGG16 backbone: it needs --head reduced and "
            "--layout oihw (nn.Conv2d kernels)"
        )
    check_output(output, [source], force=force)
    with source_digest(source) as digest, load(source, input_size=input_size) as network:
        graph = _classifier(network)
        fcn = to_fcn(graph, channel_order=channel_order)  # type: ignore[arg-type]
        if head != "classifier":
            fcn = reduce_head(fcn, keep_fc8=head == "reduced-fc8")
        checks: list[VerifyResult | ReducedResult] = []

        def check(temp: str) -> None:
            with target.read(temp) as written:
                report = prove(graph, written)
            checks.append(report)
            if not report.passed:
                raise MismatchError(
                    f"{output}: verification failed ({_failure(report)}); nothing was written"
                )

        draft = metadata(fcn, os.path.basename(source), "0" * 64, storage)
        total = fcn.parameter_count() * 4  # float32 bytes streamed
        with (
            _progress(total, progress) as update,
            atomic_write(output, check if verify_output else None) as f,
        ):

            def final() -> dict[str, str]:
                # The hash (SHA-256 runs at ~1.5 GB/s) usually finishes after the data is
                # written: flush the data to disk meanwhile, so the fsync before publishing
                # finds only the metadata left to write.
                f.flush()
                os.fsync(f.fileno())
                return {**draft, "source_sha256": digest.result()}

            pending = PendingMetadata(draft, final)
            target.write(f, Job(fcn, storage, pending, update, allow_nonfinite))
        first = fcn.head[0].kernel.shape
        return ConvertResult(
            output=output,
            format=storage.format,
            layout=storage.layout,
            names=storage.names,
            dtype=storage.dtype,
            arch=fcn.name,
            head=fcn.info.head,
            classes=fcn.classes,
            parameters=fcn.parameter_count(),
            fc6_shape=shape_in(storage.layout, sizes_of("HWIO", first)),
            bytes_written=os.path.getsize(output),
            source_sha256=digest.result(),
            verification=checks[0] if checks else None,
        )


def _classifier(network: Network) -> SourceGraph:
    if isinstance(network, FCN):
        raise ArchitectureError(f"{network.path}: is already fully convolutional")
    return network


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


def _failure(report: VerifyResult | ReducedResult) -> str:
    if isinstance(report, ReducedResult):
        bad = [f"{c.name} {c.mismatched} value(s)" for c in report.layers if c.mismatched]
        return ", ".join(bad + ([] if report.trunk_identical else ["trunk differs"]))
    worst = max([report.max_scaled_error, *(c.agreement.max_scaled_error for c in report.spatial)])
    return f"max scaled error {worst:.2e} > tolerance"


def verify_files(
    original: str, converted: str, *, input_size: Size | None = None, **options: Unpack[Options]
) -> VerifyResult | ReducedResult:
    """`verify.prove` on two files: the original classifier and the converted network.

    `options` are `verify`'s (`verify.Options`): `sizes` defaults to the side that gives a 3x3
    map, `atol`/`rtol` to the tolerance of the converted file's precision.
    """
    with load(original, input_size=input_size) as ref, load(converted) as fcn:
        return prove(ref, fcn, **options)


@dataclass(frozen=True)
class PredictResult:
    """`predict_file`'s answer: the logit map, how the input was prepared, what a cell sees."""

    scores: np.ndarray  # (N, H//32 - p_h + 1, W//32 - p_w + 1, classes) logits
    preprocess: str
    input_shape: tuple[int, ...]
    window: Size  # the input each cell is the classifier of: the size it was built for
    labels: list[str] | None  # class names from --labels, if given


def predict_file(
    weights: str,
    source: str,
    *,
    preprocess: str | None = None,
    out: str | None = None,
    force: bool = False,
    labels: str | None = None,
    input_size: Size | None = None,
) -> PredictResult:
    """Run the fully-convolutional network on an image or .npy input of any size >= its window.

    Args:
        weights: a converted file, or an original classifier (converted in memory).
        source: an image (JPEG/PNG..., needs the `images` extra) or a .npy array, (H, W, 3) or
            (N, H, W, 3), channels-last, already preprocessed.
        preprocess: "caffe", "torch" or "none"; by default, for images, the preprocessing the
            converted file records (caffe for Keras/Caffe sources, torch for PyTorch ones;
            caffe when unknown), and "none" for arrays.
        out: optional .npy path for the raw logit map, written atomically.
        labels: a text file with one class name per line, for non-ImageNet heads.
    """
    if out is not None:
        check_output(out, [weights, source], force=force)
    with load(weights, input_size=input_size) as network:
        fcn = as_fcn(network)
        mode = preprocess or ("none" if images.is_npy(source) else _preprocessing(fcn))
        names = read_labels(labels, fcn.classes) if labels else None
        x = images.load_input(source, mode, fcn.min_input, fcn.info.channel_order)
        scores = score_map(fcn, x)
    if out is not None:
        with atomic_write(out) as f:
            np.save(f, scores, allow_pickle=False)
    return PredictResult(scores, mode, tuple(x.shape), fcn.info.input_size, names)


@dataclass(frozen=True)
class HeatmapResult:
    """`heatmap_file`'s answer: the PNG written and where the class is most probable."""

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
    preprocess: str | None = None,
    force: bool = False,
    labels: str | None = None,
    input_size: Size | None = None,
) -> HeatmapResult:
    """Write `image` with one class's per-cell probability overlaid as a colour map (PNG).

    `class_name` is an index, an ImageNet name (1000-class heads) or a name from `labels`.
    """
    check_output(out, [weights, image], force=force)
    if images.is_npy(image):
        raise VggfcnError(f"{image}: a heatmap needs an image file to draw on, not a .npy array")
    rgb = images.load_image(image)
    with load(weights, input_size=input_size) as network:
        fcn = as_fcn(network)
        names = read_labels(labels, fcn.classes) if labels else None
        images.check_size(image, rgb.shape[0], rgb.shape[1], fcn.min_input)
        mode = preprocess or _preprocessing(fcn)
        x = images.preprocess_image(rgb, mode, fcn.info.channel_order)[np.newaxis]
        scores = score_map(fcn, x)
    index = imagenet.class_index(class_name, fcn.classes, names)
    probabilities = class_probabilities(scores, index)[0]
    png = heatmap.encode_png(heatmap.overlay(rgb, probabilities, window=fcn.window))
    with atomic_write(out) as f:
        f.write(png)
    hottest = np.unravel_index(int(np.argmax(probabilities)), probabilities.shape)
    return HeatmapResult(
        out,
        index,
        names[index] if names else imagenet.label(index, fcn.classes),
        probabilities.shape,
        (int(hottest[0]), int(hottest[1])),
        float(probabilities.max()),
    )


def _preprocessing(fcn: FCN) -> str:
    """How images are prepared by default: as the source's trainers did, where the file says
    (caffe or torch), else Keras VGG's caffe mode."""
    return fcn.info.preprocessing if fcn.info.preprocessing != "unknown" else "caffe"


def read_labels(path: str, classes: int) -> list[str]:
    """Class names from a text file, one per line (blank lines at the end ignored).

    Raises:
        VggfcnError: unreadable, or not one name per class of the network.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 24)
    except (OSError, UnicodeDecodeError) as e:
        raise VggfcnError(f"{path}: cannot read the labels ({e})") from None
    names = [line.strip() for line in text.rstrip("\n").split("\n")]
    if len(names) != classes or not all(names):
        raise VggfcnError(
            f"{path}: {len(names)} label line(s); the network has {classes} classes "
            "(one non-empty name per line, in class order)"
        )
    return names


def inspect_file(path: str, *, input_size: Size | None = None) -> Report:
    """What a file holds: format, architecture, layers as the file defines them, parameters;
    what was assumed about it is among its notes (not warned: it is what was asked for)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AssumptionWarning)
        with load(path, input_size=input_size) as network:
            report = describe(network)
    assumed = [str(w.message) for w in caught if issubclass(w.category, AssumptionWarning)]
    return replace(report, notes=(*report.notes, *assumed))
