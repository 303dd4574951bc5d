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
from dataclasses import asdict, dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import forward, referee
from .arch import STRIDE
from .errors import ArchitectureError, VggfcnError
from .fcn import FCN
from .graph import Conv, Dense, MaxPool, OutputActivation, SourceGraph, pool5_side
from .precision import from_bfloat16_bits, to_bfloat16_bits
from .shapes import block_plan, in_out
from .tensor import Tensor

#: float32 sums of up to 25 088 products, in a different order, drift by ~1e-6 of the scale;
#: a wrong flatten order is off by O(1). 1e-4 sits two decades above the first and four
#: below the second.
ATOL = 1e-4
RTOL = 1e-4
#: (atol, rtol) by the converted file's precision. Rounding every weight to float16 (relative
#: error <= 2^-11) or bfloat16 (<= 2^-8) moves the logits by about that much of the scale, so
#: each tolerance sits a few times above what a correct half-precision conversion measures
#: (README: Precision) while a wrong flatten order stays far outside all of them.
TOLERANCES = {"float32": (ATOL, RTOL), "float16": (3e-3, 3e-3), "bfloat16": (2.5e-2, 2.5e-2)}
#: Inputs span the range of Keras "caffe"-preprocessed pixels (mean-subtracted BGR, about +-128).
PIXEL_RANGE = 128.0


@dataclass(frozen=True)
class Agreement:
    """How closely candidate logits match reference logits, row by row."""

    max_abs_error: float
    scale: float  # max(1, max |reference logit|)
    max_scaled_error: float  # max_abs_error / scale
    top1_agreement: float  # fraction of rows whose top-1 class matches
    top5_agreement: float  # fraction of rows whose top-5 set matches
    passed: bool


@dataclass(frozen=True)
class SpatialCheck:
    """At a larger input, every cell of the FCN's map against the classifier on its window."""

    size: int
    map_shape: tuple[int, int]
    agreement: Agreement


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
    top5_agreement: float  # fraction of inputs whose top-5 set matches
    spatial: tuple[SpatialCheck, ...]
    atol: float
    rtol: float
    output_activation: OutputActivation  # what the original applies after the logits compared
    precision: str  # storage dtype of the converted network, which sets the default tolerance
    trunk_shared: bool  # trunk weights bit-identical, so each pool5 was computed once for both
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


def default_sizes(original: SourceGraph) -> tuple[int, ...]:
    """The spatial check's default: the input side whose pool5 gives a 3x3 map of windows."""
    window = max(_window(original))
    return ((window + 2) * STRIDE,)


# A non-finite reference is reported as one clear error (`_require_finite`) and a non-finite
# candidate fails the comparison: NumPy's RuntimeWarnings on the way there would be noise.
@np.errstate(over="ignore", invalid="ignore")
def verify(
    original: SourceGraph,
    converted: FCN,
    *,
    images: int = 1,
    probes: int = 8,
    sizes: Sequence[int] | None = None,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> VerifyResult:
    """Compare the original classifier and the converted network.

    At the input size the original was built for, the two must give the same logits. At each
    larger size in `sizes` (default: the size that gives a 3x3 map), every cell (i, j) of the
    converted network's map must equal the original classifier applied to the matching window
    of pool5 — exactly, up to float rounding.

    Args:
        original: the classifier's source graph, checked (`formats.load` gives one).
        converted: the fully-convolutional network, as read from the converted file.
        images: deterministic inputs run through both whole networks.
        probes: extra random pool5 volumes run through both heads.
        sizes: square input sides for the spatial check (those above the native size count).
        seed: seed of the images and probes.
        atol, rtol: the tolerance rule in the module docstring; by default the converted
            network's precision picks them (`TOLERANCES`).

    Raises:
        ArchitectureError: the two are not the same architecture, or the original's
            activations are not finite.
    """
    native = _check_pair(original, converted)
    default_atol, default_rtol = TOLERANCES.get(converted.info.precision, (ATOL, RTOL))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    window = _window(original)
    big_sizes = _spatial_sizes(original, native, sizes)
    channels = original.input.channels
    inputs = [sample_images(1, seed, s, channels) for s in reversed(big_sizes)]  # largest first
    inputs.append(sample_images(images, seed, native, channels))
    flip = _flipped(original, converted)
    shared, (*big_pool5s, (pool5, fcn_pool5)) = _pool5s(original, converted, inputs, flip)
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
    reference = referee.head(original, np.concatenate(volumes))
    _require_finite(reference, original)
    first = images + probes
    main = compare(reference[:first], candidate.reshape(first, -1), atol, rtol)
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
        output_activation=original.output_activation,
        precision=converted.info.precision,
        trunk_shared=shared,
        passed=main.passed and all(c.agreement.passed for c in spatial),
    )


def _spatial_sizes(
    original: SourceGraph, native: tuple[int, int], sizes: Sequence[int] | None
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


def _flipped(original: SourceGraph, converted: FCN) -> bool:
    """Whether the converted network takes its input channels in the other order (`--rgb` /
    `--bgr`): the original is then fed the same images with their channels flipped, which is
    what proves the flip."""
    theirs, ours = original.input.channel_order, converted.info.channel_order
    return "unknown" not in (theirs, ours) and theirs != ours


def _pool5s(
    original: SourceGraph, converted: FCN, inputs: Sequence[np.ndarray], flip: bool
) -> tuple[bool, list[tuple[np.ndarray, np.ndarray]]]:
    """Whether the trunks are shared, and both networks' pool5 for each input.

    Each trunk tensor is read from disk once: the trunks (a tenth of the model) are held in
    memory for every input size, and dropped when this returns, before the heads map their
    largest kernels; so are the buffers the passes share (largest input first, so later passes
    fit in them). The trunk is the same function of the same weights in both networks when the
    converted file holds, bit for bit, the trunk the referee reads from the original: then its
    pool5 *is* the original's, computed once — running it again would prove nothing and double
    the cost.
    """
    original, converted = _trunk_in_memory(original), _fcn_trunk_in_memory(converted)
    shared = not flip and trunks_identical(original, converted)
    scratch = forward.Scratch()
    out = []
    for x in inputs:
        pool5 = referee.pool5(original, x[..., ::-1] if flip else x, scratch)
        out.append((pool5, pool5 if shared else forward.trunk(converted, x, scratch)))
    return shared, out


def compare(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> Agreement:
    """Apply the tolerance rule to (rows, classes) logits and measure top-k agreement."""
    error = np.abs(candidate.astype(np.float64) - reference)
    scale = max(1.0, float(np.abs(reference).max()))
    bound = atol * scale + rtol * np.abs(reference)
    k = min(5, reference.shape[1])
    top_ref, top_cand = _top(reference, k), _top(candidate, k)
    return Agreement(
        max_abs_error=float(error.max()),
        scale=scale,
        max_scaled_error=float(error.max()) / scale,
        top1_agreement=float(np.mean(top_ref[:, 0] == top_cand[:, 0])),
        top5_agreement=float(
            np.mean([set(a) == set(b) for a, b in zip(top_ref, top_cand, strict=True)])
        ),
        passed=bool(np.all(error <= bound)),
    )


def _require_finite(values: np.ndarray, network: SourceGraph) -> None:
    """A reference that overflows float32 proves nothing either way: say so instead."""
    if not np.isfinite(values).all():
        raise ArchitectureError(
            f"{network.path}: the original network's activations are not finite (NaN/Inf) "
            "on the verification inputs: its weights overflow float32, nothing can be verified"
        )


def _window(original: SourceGraph) -> tuple[int, int]:
    """The pool5 window the original's head reads, at the size it was built for."""
    if original.input.size is None:
        raise ArchitectureError(f"{original.path}: input size unknown; check the graph first")
    trunk, _ = original.split()
    pools = [op for op in trunk if isinstance(op, MaxPool)]
    return pool5_side(original.input.size[0], pools), pool5_side(original.input.size[1], pools)


def _check_pair(original: SourceGraph, converted: FCN) -> tuple[int, int]:
    """The native input size, once the two are known to be the same architecture."""
    if not isinstance(original, SourceGraph) or not isinstance(converted, FCN):
        raise ArchitectureError(
            f"{original.path}, {converted.path}: expected the original classifier first and "
            "the converted (fully-convolutional) network second"
        )
    trunk, head = original.split()
    weighted = [op for op in original.ops if isinstance(op, Conv | Dense)]
    widths = [dims[1] for op in trunk if isinstance(op, Conv) and (dims := in_out(op))]
    last = in_out(weighted[-1])
    ours = (block_plan(trunk), widths, _window(original), last[1] if last else None)
    theirs = (
        converted.plan,
        [layer.out_channels for layer in converted.trunk],
        converted.window,
        converted.classes,
    )
    if ours != theirs:
        described = f"convs {widths} reading a {ours[2][0]}x{ours[2][1]} pool5, {ours[3]} classes"
        raise ArchitectureError(
            f"{converted.path}: converted network is {converted.describe()}, but the original "
            f"is {described}"
        )
    size = original.input.size
    assert size is not None  # _window checked it
    return size


def pool5_probes(count: int, seed: int, pool5: np.ndarray) -> np.ndarray:
    """`count` deterministic pool5-shaped volumes, uniform in [0, max of the real pool5]."""
    rng = np.random.default_rng([seed, 1])
    high = float(pool5.max()) if pool5.size else 1.0
    shape = (count, *pool5.shape[1:])
    return rng.uniform(0.0, max(high, 1e-3), shape).astype(np.float32)


def trunks_identical(original: SourceGraph, converted: FCN) -> bool:
    """Whether the converted trunk is the original's, as the referee reads it: the same pools
    and ReLUs, and equal tensors bit for bit (NaN payloads included). A trunk with batch norms
    is never shared: a file that forgot to fold them must not borrow the original's pool5; nor
    one whose pools round up (Caffe's), which the FCN's do not."""
    kernels = referee.trunk_kernels(original)
    trunk, _ = original.split()
    if (
        kernels is None
        or any(isinstance(op, MaxPool) and op.ceil for op in trunk)
        or block_plan(trunk) != converted.plan
        or len(kernels) != len(converted.trunk)
        or not all(layer.relu for layer in converted.trunk)
    ):
        return False
    for (kernel, bias), layer in zip(kernels, converted.trunk, strict=True):
        for ours, theirs in ((kernel, layer.kernel.read()), (bias, layer.bias.read())):
            if ours.shape != theirs.shape or not np.array_equal(
                ours.view(np.uint32), theirs.view(np.uint32)
            ):
                return False
    return True


def _trunk_in_memory(graph: SourceGraph) -> SourceGraph:
    trunk, head = graph.split()
    ops = tuple(
        replace(op, kernel=_in_memory(op.kernel), bias=op.bias and _in_memory(op.bias))
        if isinstance(op, Conv)
        else op
        for op in trunk
    )
    return replace(graph, ops=ops + head)


def _fcn_trunk_in_memory(fcn: FCN) -> FCN:
    trunk = tuple(
        replace(layer, kernel=_in_memory(layer.kernel), bias=_in_memory(layer.bias))
        for layer in fcn.trunk
    )
    return replace(fcn, trunk=trunk)


def _in_memory(tensor: Tensor) -> Tensor:
    """The tensor's values read once (in its own shape; the file's layout is kept)."""
    return Tensor.wrap(tensor.read(), tensor.where)


@dataclass(frozen=True)
class LayerCheck:
    """One layer of a reduced head against the original's values at the kept indices."""

    name: str
    compared: int  # values compared, kernel and bias
    mismatched: int  # of those, how many differ in any bit


@dataclass(frozen=True)
class ReducedResult:
    """`verify` of a reduced head: a backbone initialisation, proven value by value."""

    arch: str
    trunk_identical: bool
    layers: tuple[LayerCheck, ...]
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def verify_reduced(original: SourceGraph, converted: FCN) -> ReducedResult:
    """A reduced head (`reduce`) is not the classifier, so no logits are compared: the trunk
    must be bit-identical (conv1 flipped if the channel order was) and every kept value equal
    the original's at its index — conv6 = W6[0::4, :, 0::3, 0::3], conv7 = W7[0::4, 0::4],
    fc8 = W8[:, 0::4], biases b[0::4] — with fc6/fc7/fc8 as the referee reads them from the
    original's own file.

    Raises:
        ArchitectureError: not a reduced head, or an original it cannot be compared with.
    """
    if converted.info.head != "reduced":
        raise ArchitectureError(f"{converted.path}: not a reduced head")
    kernels = referee.trunk_kernels(original)
    trunk = kernels is not None and len(kernels) == len(converted.trunk)
    if trunk and kernels is not None:
        if _flipped(original, converted):
            kernels[0] = (kernels[0][0][:, :, ::-1, :], kernels[0][1])
        trunk = all(
            _same_bits(k, layer.kernel.read()) and _same_bits(b, layer.bias.read())
            for (k, b), layer in zip(kernels, converted.trunk, strict=True)
        )
    head = referee.head_kernels(original)
    if len(head) != 3 or len(converted.head) > 3:
        raise ArchitectureError(
            f"{original.path}: has {len(head)} head layers; a reduced head comes from VGG16's 3"
        )
    rows, taps = slice(None, None, 4), slice(None, None, 3)
    wanted = [
        (head[0][0][rows, :, taps, taps], head[0][1][rows]),
        (head[1][0][rows][:, rows], head[1][1][rows]),
        (head[2][0][:, rows], head[2][1]),
    ]
    layers = []
    precision = converted.info.precision
    for layer, (kernel, bias) in zip(converted.head, wanted, strict=False):
        ours = layer.kernel.read().transpose(3, 2, 0, 1)  # HWIO -> (out, in, kh, kw)
        theirs = layer.bias.read()
        bad = _mismatches(rounded(kernel, precision), ours)
        bad += _mismatches(rounded(bias, precision), theirs)
        layers.append(LayerCheck(layer.name, kernel.size + bias.size, bad))
    passed = trunk and all(check.mismatched == 0 for check in layers)
    return ReducedResult(converted.name, trunk, tuple(layers), passed)


def rounded(values: np.ndarray, precision: str) -> np.ndarray:
    """float32 values as a file of `precision` stores them (read back as float32)."""
    if precision == "float16":
        return np.asarray(values).astype(np.float16).astype(np.float32)
    if precision == "bfloat16":
        return from_bfloat16_bits(to_bfloat16_bits(np.asarray(values, np.float32)))
    return np.asarray(values, np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def _mismatches(expected: np.ndarray, got: np.ndarray) -> int:
    """Values that differ in any bit (all of them when the shapes differ)."""
    if expected.shape != got.shape:
        return int(max(expected.size, got.size))
    e = np.ascontiguousarray(expected).view(np.uint32)
    g = np.ascontiguousarray(got).view(np.uint32)
    return int(np.count_nonzero(e != g))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]
