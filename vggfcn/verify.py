"""The proof: the original classifier and its converted twin agree on the same inputs.

A wrong conversion still has the right shapes (a channels-first fc6 read as channels-last is a
permutation of the same numbers), so only outputs can tell. The original runs through the
referee, op by op as its file defines it (`referee`); the converted network runs from the
converted file (`forward`). The two share the convolution GEMM and nothing of the readers' or
compile's axis handling, so a wrong normalisation anywhere shows up here as a mismatch. Their
logits are compared with

    |fcn - ref| <= atol * max(1, max|ref|) + rtol * |ref|

the atol term scaled by the logits' magnitude, so a tolerance means the same for a model whose
logits are 0.1 and one whose logits are 300.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import forward, referee, trunks
from .arch import STRIDE
from .atrous import atrous
from .errors import ArchitectureError, VggfcnError
from .fcn import FCN
from .graph import Conv, Dense, MaxPool, OutputActivation, SourceGraph, pool5_side
from .precision import PRECISIONS
from .reduced_check import ReducedResult, verify_reduced
from .shapes import block_plan, in_out

if TYPE_CHECKING:
    from typing import Unpack

#: Inputs span the range of Keras "caffe"-preprocessed pixels (mean-subtracted BGR, about +-128).
PIXEL_RANGE = 128.0


@dataclass(frozen=True)
class Agreement:
    """How closely candidate logits match reference logits, row by row."""

    max_abs_error: float
    scale: float  # max(1, max |reference logit|)
    max_scaled_error: float  # max_abs_error / scale
    top1_agreement: float  # fraction of rows whose top-1 class matches
    top5_agreement: float | None  # fraction of rows whose top-5 set matches (None: <= 5 classes)
    passed: bool


@dataclass(frozen=True)
class SpatialCheck:
    """At a larger input, every cell of the FCN's map against the classifier on its window."""

    size: int
    map_shape: tuple[int, int]
    agreement: Agreement


@dataclass(frozen=True)
class StrideCheck:
    """A dilated network's map against the original's, stitched from shifted runs (`referee`).

    `expected_shape` is the stitched map's, `map_shape` the converted network's; when they
    differ (a dilation that disagrees with the recorded stride) there is nothing to compare
    cell by cell, and the check fails.
    """

    size: tuple[int, int]
    stride: int
    map_shape: tuple[int, int]
    expected_shape: tuple[int, int]
    agreement: Agreement | None
    passed: bool


@dataclass(frozen=True)
class VerifyResult:
    """What verify measured; `passed` is the verdict over every check."""

    arch: str
    classes: int
    images: int
    probes: int  # random pool5 volumes fed to both heads besides the images' own
    seed: int
    input_size: tuple[int, int]  # the size the original was built for: the whole-network check
    max_abs_error: float
    scale: float  # max(1, max |reference logit|)
    max_scaled_error: float  # max_abs_error / scale
    top1_agreement: float  # fraction of inputs (images and probes) whose top-1 class matches
    top5_agreement: float | None  # fraction of inputs whose top-5 set matches; None when there
    # are 5 classes or fewer, where every top-5 set is every class (trivially the same)
    spatial: tuple[SpatialCheck, ...]
    atol: float
    rtol: float
    output_activation: OutputActivation  # what the original applies after the logits compared
    precision: str  # storage dtype of the converted network, which sets the default tolerance
    trunk_shared: bool  # trunk weights bit-identical, so each pool5 was computed once for both
    output_stride: int  # the stride the converted file records
    strided: tuple[StrideCheck, ...]  # at stride 16 and 8: the maps, shift-and-stitch proven
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_images(
    count: int, seed: int, size: int | tuple[int, int] = 224, channels: int = 3
) -> np.ndarray:
    """Deterministic (count, H, W, channels) float32 inputs for a given seed."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return rng.uniform(-PIXEL_RANGE, PIXEL_RANGE, (count, h, w, channels)).astype(np.float32)


def default_sizes(original: Original) -> tuple[int, ...]:
    """The spatial check's default: the input side whose pool5 gives a 3x3 map of windows."""
    window = max(_window(original))
    return ((window + 2) * STRIDE,)


class Options(TypedDict, total=False):
    """What a proof may be asked to do differently; every key is optional (defaults in
    `verify`'s docstring). One definition for `verify`, `prove` and `api.verify_files`."""

    images: int
    probes: int
    sizes: Sequence[int] | None
    seed: int
    atol: float | None
    rtol: float | None


#: What a converted network can be proven against: its original classifier (run by the
#: referee, as its file defines it), or another converted network (run by `forward`: a file
#: re-written in another output format, proven the same function).
Original = SourceGraph | FCN


def prove(
    original: SourceGraph | FCN, converted: SourceGraph | FCN, **options: Unpack[Options]
) -> VerifyResult | ReducedResult:
    """The proof a converted file needs: `verify` for a converted classifier (or any network
    against a converted one), `verify_reduced` for a reduced head compiled from an original
    (a backbone initialisation, checked value by value).

    Raises:
        ArchitectureError: CONVERTED is not a converted network.
    """
    if not isinstance(converted, FCN):
        kind = "an original classifier" if isinstance(converted, SourceGraph) else "no network"
        raise ArchitectureError(
            f"{converted.path}: is {kind}, expected the converted (fully-convolutional) network "
            "second; give the original first (vggfcn verify ORIGINAL CONVERTED)"
        )
    if isinstance(original, SourceGraph) and converted.info.head == "reduced":
        return verify_reduced(original, converted)
    return verify(original, converted, **options)


# A non-finite reference is reported as one clear error (`_require_finite`) and a non-finite
# candidate fails the comparison: NumPy's RuntimeWarnings on the way there would be noise.
@np.errstate(over="ignore", invalid="ignore")
def verify(original: Original, converted: FCN, **options: Unpack[Options]) -> VerifyResult:
    """Compare the original classifier and the converted network.

    At the input size the original was built for, the two must give the same logits. At each
    larger size in `sizes` (default: the size that gives a 3x3 map), every cell (i, j) of the
    converted network's map must equal the original classifier applied to the matching window
    of pool5 — exactly, up to float rounding. Those checks run on the converted network's
    weights at output stride 32; a network recorded at stride 16 or 8, or whose ops are
    dilated, is then run as it is, at the native size and each of `sizes`, and its map must
    equal the original's stitched from shifted runs (`referee.stitched`): a dilation that
    disagrees with the recorded stride fails here.

    Args:
        original: the classifier's source graph, checked (`formats.load` gives one), run by
            the referee; or another converted network, run by `forward` cell by cell.
        converted: the fully-convolutional network, as read from the converted file.
        options: `images` (1): deterministic inputs run through both whole networks;
            `probes` (8): extra random pool5 volumes run through both heads; `sizes` (the side
            that gives a 3x3 map): square input sides for the spatial check (those above the
            native size count); `seed` (0): seed of the images and probes; `atol`, `rtol`: the
            tolerance rule in the module docstring, by default the converted network's
            precision's (`precision.PRECISIONS`).

    Raises:
        ArchitectureError: the two are not the same architecture, or the original's
            activations are not finite.
    """
    native = _check_architectures(original, converted)
    dilated, converted = converted, atrous(converted, 32)  # the weights, proven at stride 32
    if isinstance(original, FCN):
        original = atrous(original, 32)
    images, probes, seed = (
        options.get("images", 1),
        options.get("probes", 8),
        options.get("seed", 0),
    )
    default_atol, default_rtol = PRECISIONS[_precision(converted)].tolerance
    atol = options.get("atol")
    rtol = options.get("rtol")
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    window = _window(original)
    big_sizes = _spatial_sizes(original, native, options.get("sizes"))
    channels = _channels(original)
    inputs = [sample_images(1, seed, s, channels) for s in reversed(big_sizes)]  # largest first
    inputs.append(sample_images(images, seed, native, channels))
    shared, (*big_pool5s, (pool5, fcn_pool5)) = trunks.pool5s(original, converted, inputs)
    _require_finite(pool5, original)
    # Probes: random non-negative pool5 volumes on the activations' scale, through both heads.
    # Cheap (no trunk), and they reach the fc6 weights that one image's zero activations hide.
    extra = pool5_probes(probes, seed, pool5)
    volumes = [pool5, extra]  # every pool5 window the original's head must see
    fcn_inputs = [np.concatenate([fcn_pool5, extra])]
    for big, fcn_big in reversed(big_pool5s):  # back to big_sizes' (ascending) order
        fcn_inputs.append(fcn_big)
        windows = sliding_window_view(big[0], window, axis=(0, 1))
        volumes.append(windows.transpose(0, 1, 3, 4, 2).reshape(-1, *window, big.shape[-1]))
    candidate, *big_maps = forward.heads(converted, fcn_inputs)
    # One pass of the original's head for all volumes: its largest kernel is read once.
    reference = _reference_head(original, np.concatenate(volumes))
    _require_finite(reference, original)
    first = images + probes
    main = compare(reference[:first], candidate.reshape(first, -1), atol, rtol)
    strided: tuple[StrideCheck, ...] = ()
    if not dilated.plain:
        sizes = [native, *((s, s) for s in big_sizes)]
        strided = _strided(original, dilated, sizes, images, seed, atol, rtol)
    spatial, start = [], first
    for size, score_map in zip(big_sizes, big_maps, strict=True):
        _, h, w, k = score_map.shape
        per_window = reference[start : start + h * w]
        start += h * w
        agreement = compare(per_window, score_map.reshape(h * w, k), atol, rtol)
        spatial.append(SpatialCheck(size, (h, w), agreement))

    return VerifyResult(
        arch=converted.name,
        classes=converted.classes,
        images=images,
        probes=probes,
        seed=seed,
        input_size=native,
        max_abs_error=main.max_abs_error,
        scale=main.scale,
        max_scaled_error=main.max_scaled_error,
        top1_agreement=main.top1_agreement,
        top5_agreement=main.top5_agreement,
        spatial=tuple(spatial),
        atol=atol,
        rtol=rtol,
        output_activation=(
            original.output_activation
            if isinstance(original, SourceGraph)
            else original.info.output_activation
        ),
        precision=converted.info.precision,
        trunk_shared=shared,
        output_stride=dilated.info.output_stride,
        strided=strided,
        passed=main.passed
        and all(c.agreement.passed for c in spatial)
        and all(c.passed for c in strided),
    )


def _strided(
    original: Original,
    converted: FCN,
    sizes: Sequence[tuple[int, int]],
    images: int,
    seed: int,
    atol: float,
    rtol: float,
) -> tuple[StrideCheck, ...]:
    """The converted network run with its own (dilated) ops against the original's map at the
    recorded stride, stitched from shifted runs: by the referee for an original classifier,
    by `forward` at stride 32 for an original that is itself converted."""
    stride, window = converted.info.output_stride, _window(original)
    channels = _channels(original)
    checks = []
    for size in sizes:
        x = sample_images(images if size == sizes[0] else 1, seed, size, channels)
        flip = x[..., ::-1] if trunks.flipped(original, converted) else x
        if isinstance(original, SourceGraph):
            expected = referee.stitched(original, np.ascontiguousarray(flip), stride, window)
        else:
            expected = forward.logits(atrous(original, stride), np.ascontiguousarray(flip))
        got = forward.logits(converted, x)
        agreement = None
        if got.shape == expected.shape:
            k = got.shape[-1]
            agreement = compare(expected.reshape(-1, k), got.reshape(-1, k), atol, rtol)
        checks.append(
            StrideCheck(
                size=size,
                stride=stride,
                map_shape=got.shape[1:3],
                expected_shape=expected.shape[1:3],
                agreement=agreement,
                passed=agreement is not None and agreement.passed,
            )
        )
    return tuple(checks)


def _spatial_sizes(
    original: Original, native: tuple[int, int], sizes: Sequence[int] | None
) -> list[int]:
    """The sides to check cell by cell: above the native size (which the main check covers).

    Raises:
        VggfcnError: a size too small for even one window.
    """
    if sizes is None:
        return list(default_sizes(original))
    window = _window(original)
    small = [s for s in sizes if s // STRIDE < max(window)]
    if small:
        raise VggfcnError(
            f"--sizes {small[0]}: smaller than the {window[0] * STRIDE}x{window[1] * STRIDE} "
            f"window of {original.path}; spatial checks need larger inputs"
        )
    return sorted({s for s in sizes if s > max(native)})


def compare(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> Agreement:
    """Apply the tolerance rule to (rows, classes) logits and measure top-k agreement."""
    error = np.abs(candidate.astype(np.float64) - reference)
    scale = max(1.0, float(np.abs(reference).max()))
    bound = atol * scale + rtol * np.abs(reference)
    top_ref, top_cand = _top(reference, 5), _top(candidate, 5)
    same_sets = [set(a) == set(b) for a, b in zip(top_ref, top_cand, strict=True)]
    return Agreement(
        max_abs_error=float(error.max()),
        scale=scale,
        max_scaled_error=float(error.max()) / scale,
        top1_agreement=float(np.mean(top_ref[:, 0] == top_cand[:, 0])),
        top5_agreement=float(np.mean(same_sets)) if reference.shape[1] > 5 else None,
        passed=bool(np.all(error <= bound)),
    )


def _require_finite(values: np.ndarray, network: Original) -> None:
    """A reference that overflows float32 proves nothing either way: say so instead."""
    if not np.isfinite(values).all():
        raise ArchitectureError(
            f"{network.path}: the original network's activations are not finite (NaN/Inf) "
            "on the verification inputs: its weights overflow float32, nothing can be verified"
        )


def _precision(converted: FCN) -> str:
    return converted.info.precision if converted.info.precision in PRECISIONS else "float32"


def _native(original: Original) -> tuple[int, int]:
    """The input size the original was built for (a checked graph always knows it)."""
    if isinstance(original, FCN):
        return original.info.input_size
    if original.input.size is None:
        raise ArchitectureError(f"{original.path}: input size unknown; check the graph first")
    return original.input.size


def _window(original: Original) -> tuple[int, int]:
    """The pool5 window the original's head reads, at the size it was built for."""
    if isinstance(original, FCN):
        return original.window
    h, w = _native(original)
    trunk, _ = original.split()
    pools = [op for op in trunk if isinstance(op, MaxPool)]
    return pool5_side(h, pools), pool5_side(w, pools)


def _channels(original: Original) -> int:
    """The input channels the original takes."""
    if isinstance(original, FCN):
        return original.trunk[0].kernel.shape[2]
    return original.input.channels


def _reference_head(original: Original, volumes: np.ndarray) -> np.ndarray:
    """The original's head on (N, p, q, C5) pool5 windows: (N, logits)."""
    if isinstance(original, SourceGraph):
        return referee.head(original, volumes)
    (scores,) = forward.heads(original, [volumes])
    return scores.reshape(len(volumes), -1)


def _check_architectures(original: Original, converted: FCN) -> tuple[int, int]:
    """The native input size, once the two are known to be the same architecture."""
    ours: tuple[tuple[int, ...], list[int], tuple[int, int], int | None]
    if isinstance(original, FCN):
        ours = (
            original.plan,
            [layer.out_channels for layer in original.trunk],
            original.window,
            original.classes,
        )
        described = original.describe()
    else:
        trunk, head = original.split()
        weighted = [op for op in original.ops if isinstance(op, Conv | Dense)]
        widths = [dims[1] for op in trunk if isinstance(op, Conv) and (dims := in_out(op))]
        last = in_out(weighted[-1])
        ours = (block_plan(trunk), widths, _window(original), last[1] if last else None)
        described = f"convs {widths} reading a {ours[2][0]}x{ours[2][1]} pool5, {ours[3]} classes"
    theirs = (
        converted.plan,
        [layer.out_channels for layer in converted.trunk],
        converted.window,
        converted.classes,
    )
    if ours != theirs:
        raise ArchitectureError(
            f"{converted.path}: converted network is {converted.describe()}, but the original "
            f"is {described}"
        )
    return _native(original)


def pool5_probes(count: int, seed: int, pool5: np.ndarray) -> np.ndarray:
    """`count` deterministic pool5-shaped volumes, uniform in [0, max of the real pool5]."""
    rng = np.random.default_rng([seed, 1])
    high = float(pool5.max()) if pool5.size else 1.0
    shape = (count, *pool5.shape[1:])
    return rng.uniform(0.0, max(high, 1e-3), shape).astype(np.float32)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]
