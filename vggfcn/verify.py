"""The proof: the original classifier and its converted twin agree on the same inputs.

A wrong conversion still has the right shapes (a channels-first fc6 read as channels-last is a
permutation of the same numbers), so only outputs can tell. Both networks run through the same
reference forward pass on the same deterministic images, and their logits are compared with

    |fcn - ref| <= atol * max(1, max|ref|) + rtol * |ref|

the atol term scaled by the logits' magnitude, so a tolerance means the same for a model whose
logits are 0.1 and one whose logits are 300.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import forward
from .arch import MIN_INPUT
from .errors import ArchitectureError
from .weights import VGGWeights

#: float32 sums of up to 25 088 products, in a different order, drift by ~1e-6 of the scale;
#: a wrong flatten order is off by O(1). 1e-4 sits two decades above the first and four
#: below the second.
ATOL = 1e-4
RTOL = 1e-4
#: Inputs span the range of Keras "caffe"-preprocessed pixels (mean-subtracted BGR, about +-128).
PIXEL_RANGE = 128.0


@dataclass(frozen=True)
class VerifyReport:
    """What verify measured; `passed` is the verdict."""

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
    atol: float
    rtol: float
    softmax: str  # whether the original's last layer had a softmax (compared: logits before it)
    passed: bool
    trunk_shared: bool  # trunk weights bit-identical, so pool5 was computed once for both

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_images(count: int, seed: int, size: int = MIN_INPUT, channels: int = 3) -> np.ndarray:
    """Deterministic (count, size, size, channels) float32 inputs for a given seed."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-PIXEL_RANGE, PIXEL_RANGE, (count, size, size, channels)).astype(np.float32)


def verify(
    original: VGGWeights,
    converted: VGGWeights,
    *,
    images: int = 1,
    probes: int = 8,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> VerifyReport:
    """Compare the original classifier and the converted network at 224x224.

    Args:
        images: deterministic 224x224 inputs run through both whole networks.
        probes: extra random pool5 volumes run through both heads.
        seed: seed of the images and probes.
        atol, rtol: the tolerance rule in the module docstring.

    Raises:
        ArchitectureError: the two are not the same architecture, or are the wrong way round.
    """
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
    x = sample_images(images, seed, MIN_INPUT, original.arch.in_channels)
    pool5 = forward.trunk(original, x)
    # The trunk is the same function of the same weights in both networks: when the converted
    # file holds bit-identical trunk tensors, its pool5 *is* this pool5, and running it again
    # would prove nothing and double the cost. Any difference and it runs on its own weights.
    shared = trunks_identical(original, converted)
    fcn_pool5 = pool5 if shared else forward.trunk(converted, x)
    # Probes: random non-negative pool5 volumes on the activations' scale, through both heads.
    # Cheap (no trunk), and they reach the fc6 weights that one image's zero activations hide.
    extra = pool5_probes(probes, seed, pool5)
    reference = forward.classifier_head(original, np.concatenate([pool5, extra]))
    candidate = forward.fcn_head(converted, np.concatenate([fcn_pool5, extra]))
    candidate = candidate.reshape(reference.shape)
    error = np.abs(candidate.astype(np.float64) - reference)
    scale = max(1.0, float(np.abs(reference).max()))
    bound = atol * scale + rtol * np.abs(reference)
    k = min(5, original.arch.classes)
    top_ref, top_fcn = _top(reference, k), _top(candidate, k)
    return VerifyReport(
        arch=original.arch.name,
        classes=original.arch.classes,
        images=images,
        probes=probes,
        seed=seed,
        size=MIN_INPUT,
        max_abs_error=float(error.max()),
        scale=scale,
        max_scaled_error=float(error.max()) / scale,
        top1_agreement=float(np.mean(top_ref[:, 0] == top_fcn[:, 0])),
        top5_agreement=float(
            np.mean([set(a) == set(b) for a, b in zip(top_ref, top_fcn, strict=True)])
        ),
        atol=atol,
        rtol=rtol,
        softmax=original.source.softmax_label,
        passed=bool(np.all(error <= bound)),
        trunk_shared=shared,
    )


def pool5_probes(count: int, seed: int, pool5: np.ndarray) -> np.ndarray:
    """`count` deterministic pool5-shaped volumes, uniform in [0, max of the real pool5]."""
    rng = np.random.default_rng([seed, 1])
    high = float(pool5.max()) if pool5.size else 1.0
    shape = (count, *pool5.shape[1:])
    return rng.uniform(0.0, max(high, 1e-3), shape).astype(np.float32)


def trunks_identical(a: VGGWeights, b: VGGWeights) -> bool:
    """Whether two networks' trunk tensors are equal bit for bit (NaN payloads included)."""
    for x, y in zip(a.trunk, b.trunk, strict=True):
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
