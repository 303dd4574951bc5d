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

from .atomic import atomic_write, check_output, check_target
from .atrous import atrous
from .choices import HEADS
from .convert import to_fcn, with_channel_order
from .digest import source_digest
from .errors import AssumptionWarning, MismatchError, ProvenanceWarning, VggfcnError
from .fcn import FCN
from .formats import Network, check_exists, load
from .formats.fcn_metadata import PendingMetadata, metadata
from .formats.job import Job
from .formats.outputs import check_replaceable, output_for
from .graph import ChannelOrder, SourceGraph
from .inspection import Report, describe
from .layouts import shape_in, sizes_of
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
    output_stride: int  # 32, or 16 and 8 à trous
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
    output_stride: int | None = None,
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
        output_stride: 32, or 16 and 8 à trous (`atrous`): an ONNX or Keras output runs
            dilated, a safetensors file records it; by default 32 for a classifier and what a
            converted network records for one re-written.

    Raises:
        VggfcnError: bad options or input (FormatError, ArchitectureError), output
        (OutputError) or a failed verification (MismatchError); the output is then neither
        created nor changed.
    """
    if head not in HEADS or channel_order not in (None, "rgb", "bgr"):
        raise VggfcnError(f"head must be one of {HEADS}, channel order rgb or bgr")
    if head != "classifier" and output_stride not in (None, 32):
        raise VggfcnError(
            f"--head {head} and --output-stride {output_stride} exclude each other: the SSD/"
            "DeepLab reduced head is its own approximate dilated construction, not à trous"
        )
    check_exists(source)  # a missing SOURCE is reported as such, before anything about OUTPUT
    check_target(output, [source])
    target = output_for(output, to)
    storage = target.storage(output, layout, names, dtype, head.split("-")[0])
    if storage.names == "ssd" and (storage.layout != "OIHW" or head != "reduced"):
        raise VggfcnError(
            "--names ssd writes ssd.pytorch's VGG16 backbone: it needs --head reduced and "
            "--layout oihw (nn.Conv2d kernels)"
        )
    check_output(output, [source], force=force)
    check_replaceable(output, target)
    with source_digest(source) as digest, load(source, input_size=input_size) as network:
        original, fcn = _compiled(network, channel_order, input_size)
        if output_stride is not None:
            fcn = atrous(fcn, output_stride)
        if head != "classifier":
            fcn = reduce_head(fcn, keep_fc8=head == "reduced-fc8")
        storage = target.storage(output, layout, names, dtype, fcn.info.head)
        checks: list[VerifyResult | ReducedResult] = []

        def check(temp: str) -> None:
            with target.read(temp) as written:
                report = prove(original, written)
            checks.append(report)
            if not report.passed:
                raise MismatchError(
                    f"{output}: verification failed ({_failure(report)}); nothing was written"
                )

        # A converted network re-written keeps its original's provenance.
        rewritten = fcn.info.source_sha256 != ""
        source_name = fcn.info.source_file if rewritten else os.path.basename(source)
        draft = metadata(fcn, source_name, "0" * 64, storage)
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
                sha256 = fcn.info.source_sha256 if rewritten else digest.result()
                return {**draft, "source_sha256": sha256}

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
            output_stride=fcn.output_stride,
            classes=fcn.classes,
            parameters=fcn.parameter_count(),
            fc6_shape=shape_in(storage.layout, sizes_of("HWIO", first)),
            bytes_written=os.path.getsize(output),
            source_sha256=fcn.info.source_sha256 if rewritten else digest.result(),
            verification=checks[0] if checks else None,
        )


def _compiled(
    network: Network, channel_order: str | None, input_size: Size | None
) -> tuple[Network, FCN]:
    """(what to prove the output against, the network to write): a classifier compiled, or a
    converted network as it is (re-written in another format, with its channel order flipped
    if asked), proven against itself.

    Raises:
        VggfcnError: --input-size for a converted network, which records its own.
    """
    order: ChannelOrder | None = channel_order  # type: ignore[assignment]
    if isinstance(network, SourceGraph):
        return network, to_fcn(network, channel_order=order)
    if input_size is not None and input_size != network.info.input_size:
        raise VggfcnError(
            f"{network.path}: a converted network records its input size "
            f"({network.info.input_size[0]}x{network.info.input_size[1]}); --input-size is "
            "for classifiers whose file does not"
        )
    return network, network if order is None else with_channel_order(network, order)


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
    if any(c.agreement is None for c in report.strided):
        return f"its map is not the original's at output stride {report.output_stride}"
    agreements = [c.agreement for c in report.spatial] + [
        c.agreement for c in report.strided if c.agreement
    ]
    worst = max([report.max_scaled_error, *(a.max_scaled_error for a in agreements)])
    return f"max scaled error {worst:.2e} > tolerance"


def verify_files(
    original: str, converted: str, *, input_size: Size | None = None, **options: Unpack[Options]
) -> VerifyResult | ReducedResult:
    """`verify.prove` on two files: the original classifier and the converted network.

    `options` are `verify`'s (`verify.Options`): `sizes` defaults to the side that gives a 3x3
    map, `atol`/`rtol` to the tolerance of the converted file's precision.
    """
    with load(original, input_size=input_size) as ref, load(converted) as fcn:
        report = prove(ref, fcn, **options)
        if not report.passed:
            _check_provenance(ref, fcn, original, converted)
    return report


def _check_provenance(ref: Network, fcn: Network, original: str, converted: str) -> None:
    """Warn when CONVERTED records another source than ORIGINAL: a numeric FAIL alone would
    not say that the files were mismatched, not the conversion wrong. Asked only when the
    proof fails: hashing ORIGINAL (0.3 s for VGG16, on the core the BLAS would use) would say
    nothing a pass needs, since CONVERTED then computes what ORIGINAL does, whatever it was
    made from.

    Warns:
        ProvenanceWarning: naming both sources and their digests.
    """
    if not isinstance(fcn, FCN) or not fcn.info.source_sha256:
        return
    recorded, made_from = fcn.info.source_sha256, fcn.info.source_file
    if isinstance(ref, FCN):
        actual = ref.info.source_sha256
    else:
        with source_digest(original) as digest:
            actual = digest.result()
    if actual and actual != recorded:
        # As many hex digits as tell the two apart (12 at least): a file edited after its
        # conversion may record a digest that differs only late.
        pairs = enumerate(zip(actual, recorded, strict=False))
        shown = max(12, next((i for i, (a, b) in pairs if a != b), len(recorded)) + 1)
        warnings.warn(
            ProvenanceWarning(
                f"{converted} was made from {made_from} (sha256 {recorded[:shown]}...), not "
                f"from {os.path.basename(original)} (sha256 {actual[:shown]}...)"
            ),
            stacklevel=2,
        )


def inspect_file(path: str, *, input_size: Size | None = None) -> Report:
    """What a file holds: format, architecture, layers as the file defines them, parameters;
    what was assumed about it is among its notes (not warned: it is what was asked for)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AssumptionWarning)
        with load(path, input_size=input_size) as network:
            report = describe(network)
    assumed = [str(w.message) for w in caught if issubclass(w.category, AssumptionWarning)]
    return replace(report, notes=(*report.notes, *assumed))
