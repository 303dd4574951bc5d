"""The proof: the original classifier and its converted twin agree on the same inputs.

A wrong conversion still has the right shapes (a channels-first fc6 read as channels-last is a
permutation of the same numbers), so only outputs can tell. Both networks run through the same
reference forward pass on the same deterministic images, and their logits are compared with

    |fcn - ref| <= atol * max(1, max|ref|) + rtol * |ref|

the atol term scaled by the logits' magnitude, so a tolerance means the same for a model whose
logits are 0.1 and one whose logits are 300.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import forward
from .arch import MIN_INPUT, POOL5_SIZE
from .errors import ArchitectureError
from .weights import Tensor, VGGWeights

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
class VerifyReport:
    """What verify measured; `passed` is the verdict over every check."""

    arch: str
    classes: int
    images: int
    probes: int  # random pool5 volumes fed to both heads besides the images' own
    seed: int
    size: int
    max_abs_error: float
    scale: float  # max(1, max |reference logit|)
    max_scaled_error: float  # max_abs_error / scale
    top1_agreement: float  # fraction of inputs (images and probes) whose top-1 class matches
    top5_agreement: float  # fraction of inputs whose top-5 set matches
    spatial: tuple[SpatialCheck, ...]
    atol: float
    rtol: float
    softmax: str  # whether the original's last layer had a softmax (compared: logits before it)
    precision: str  # storage dtype of the converted network, which sets the default tolerance
    trunk_shared: bool  # trunk weights bit-identical, so each pool5 was computed once for both
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_images(count: int, seed: int, size: int = MIN_INPUT, channels: int = 3) -> np.ndarray:
    """Deterministic (count, size, size, channels) float32 inputs for a given seed."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-PIXEL_RANGE, PIXEL_RANGE, (count, size, size, channels)).astype(np.float32)


# A non-finite reference is reported as one clear error (`_require_finite`) and a non-finite
# candidate fails the comparison: NumPy's RuntimeWarnings on the way there would be noise.
@np.errstate(over="ignore", invalid="ignore")
def verify(
    original: VGGWeights,
    converted: VGGWeights,
    *,
    images: int = 1,
    probes: int = 8,
    sizes: Sequence[int] = (288,),
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
) -> VerifyReport:
    """Compare the original classifier and the converted network.

    At 224x224 the two must give the same logits. At each larger size in `sizes` (288 gives a
    3x3 map), every cell (i, j) of the converted network's map must equal the original
    classifier applied to the matching 7x7 window of pool5 — exactly, up to float rounding.

    Args:
        images: deterministic 224x224 inputs run through both whole networks.
        probes: extra random pool5 volumes run through both heads.
        sizes: input sides for the spatial check (>= 224; 224 itself adds nothing).
        seed: seed of the images and probes.
        atol, rtol: the tolerance rule in the module docstring; by default the converted
            network's precision picks them (`TOLERANCES`).

    Raises:
        ArchitectureError: the two are not the same architecture, or are the wrong way round.
    """
    _check_pair(original, converted)
    default_atol, default_rtol = TOLERANCES.get(converted.source.precision, (ATOL, RTOL))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    channels = original.arch.in_channels
    # Each tensor is read from disk once. The trunks (a tenth of the model) stay mapped for
    # every input size; each head layer is read, applied to all its inputs and dropped, so the
    # peak holds one fc6, not two.
    original, converted = trunk_in_memory(original), trunk_in_memory(converted)
    # The trunk is the same function of the same weights in both networks: when the converted
    # file holds bit-identical trunk tensors, its pool5 *is* the original's, and running it again
    # would prove nothing and double the cost. Any difference and it runs on its own weights.
    shared = trunks_identical(original, converted)
    if shared:
        converted = replace(converted, trunk=original.trunk)  # one copy in memory, not two

    big_sizes = sorted({s for s in sizes if s > MIN_INPUT})
    inputs = [sample_images(1, seed, s, channels) for s in reversed(big_sizes)]  # largest first
    inputs.append(sample_images(images, seed, MIN_INPUT, channels))
    *big_pool5s, (pool5, fcn_pool5) = _pool5s(original, converted, shared, inputs)
    _require_finite(pool5, original)
    # Probes: random non-negative pool5 volumes on the activations' scale, through both heads.
    # Cheap (no trunk), and they reach the fc6 weights that one image's zero activations hide.
    extra = pool5_probes(probes, seed, pool5)
    volumes = [pool5, extra]  # every 7x7 volume the original's dense head must see
    fcn_inputs = [np.concatenate([fcn_pool5, extra])]
    for big, fcn_big in reversed(big_pool5s):  # back to big_sizes' (ascending) order
        fcn_inputs.append(fcn_big)
        windows = sliding_window_view(big[0], (POOL5_SIZE, POOL5_SIZE), axis=(0, 1))
        volumes.append(
            windows.transpose(0, 1, 3, 4, 2).reshape(-1, POOL5_SIZE, POOL5_SIZE, big.shape[-1])
        )
    candidate, *big_maps = forward.fcn_heads(converted, fcn_inputs)
    maps = [(size, m[0]) for size, m in zip(big_sizes, big_maps, strict=True)]
    # One call of the dense head for all volumes: its 400 MB fc6 is read once.
    reference = forward.classifier_head(original, np.concatenate(volumes))
    _require_finite(reference, original)
    first = images + probes
    main = compare(reference[:first], candidate.reshape(first, -1), atol, rtol)
    spatial, start = [], first
    for size, score_map in maps:
        h, w, k = score_map.shape
        per_window = reference[start : start + h * w]
        start += h * w
        agreement = compare(per_window, score_map.reshape(h * w, k), atol, rtol)
        spatial.append(SpatialCheck(size, (h, w), agreement))

    return VerifyReport(
        arch=original.arch.name,
        classes=original.arch.classes,
        images=images,
        probes=probes,
        seed=seed,
        size=MIN_INPUT,
        max_abs_error=main.max_abs_error,
        scale=main.scale,
        max_scaled_error=main.max_scaled_error,
        top1_agreement=main.top1_agreement,
        top5_agreement=main.top5_agreement,
        spatial=tuple(spatial),
        atol=atol,
        rtol=rtol,
        softmax=original.source.softmax_label,
        precision=converted.source.precision,
        trunk_shared=shared,
        passed=main.passed and all(c.agreement.passed for c in spatial),
    )


def _pool5s(
    original: VGGWeights, converted: VGGWeights, shared: bool, inputs: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Both networks' pool5 for each input (computed once when the trunks are shared).

    The passes share one set of buffers, largest input first so later passes fit in them; the
    buffers are gone when this returns, before the heads map their 400 MB fc6.
    """
    scratch = forward.Scratch()
    out = []
    for x in inputs:
        pool5 = forward.trunk(original, x, scratch)
        out.append((pool5, pool5 if shared else forward.trunk(converted, x, scratch)))
    return out


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


def _require_finite(values: np.ndarray, network: VGGWeights) -> None:
    """A reference that overflows float32 proves nothing either way: say so instead."""
    if not np.isfinite(values).all():
        raise ArchitectureError(
            f"{network.source.path}: the original network's activations are not finite (NaN/Inf) "
            "on the verification inputs: its weights overflow float32, nothing can be verified"
        )


def _check_pair(original: VGGWeights, converted: VGGWeights) -> None:
    if original.convolutional_head or not converted.convolutional_head:
        raise ArchitectureError(
            f"{original.source.path}, {converted.source.path}: expected the original classifier "
            "first and the converted (fully-convolutional) network second"
        )
    if original.arch != converted.arch:
        raise ArchitectureError(
            f"{converted.source.path}: converted network is {_describe(converted)}, but the "
            f"original is {_describe(original)}"
        )


def pool5_probes(count: int, seed: int, pool5: np.ndarray) -> np.ndarray:
    """`count` deterministic pool5-shaped volumes, uniform in [0, max of the real pool5]."""
    rng = np.random.default_rng([seed, 1])
    high = float(pool5.max()) if pool5.size else 1.0
    shape = (count, *pool5.shape[1:])
    return rng.uniform(0.0, max(high, 1e-3), shape).astype(np.float32)


def trunk_in_memory(weights: VGGWeights) -> VGGWeights:
    """The same network with its trunk read into memory, so each trunk tensor is read once."""
    trunk = tuple(
        replace(
            layer,
            kernel=Tensor.wrap(layer.kernel.read(), layer.kernel.where),
            bias=Tensor.wrap(layer.bias.read(), layer.bias.where),
        )
        for layer in weights.trunk
    )
    return replace(weights, trunk=trunk)


def trunks_identical(a: VGGWeights, b: VGGWeights) -> bool:
    """Whether two networks' trunks are the same function: equal tensors bit for bit (NaN payloads
    included) and no batch norm on either side (a trunk with batch norms is never shared: a file
    that forgot to fold them must not borrow the original's pool5)."""
    for x, y in zip(a.trunk, b.trunk, strict=True):
        if x.norm is not None or y.norm is not None:
            return False
        for s, t in ((x.kernel, y.kernel), (x.bias, y.bias)):
            if s.shape != t.shape or not np.array_equal(
                s.read().view(np.uint32), t.read().view(np.uint32)
            ):
                return False
    return True


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _describe(w: VGGWeights) -> str:
    a = w.arch
    return f"{a.name} convs {list(a.conv_widths)} head {list(a.head_widths)}"
