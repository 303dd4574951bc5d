"""`vggfcn verify` with no arguments: prove this installation computes correctly.

Three independent checks, each able to fail: the seed example worked by hand, the fast
convolution against a direct loop, and a tiny VGG16 converted and verified — plus proof that the
referee has teeth (a channels-first fc6 read as channels-last must be caught).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import forward
from .convert import to_fcn
from .fcn import FCN
from .precision import F32
from .synthetic import TINY, random_classifier
from .tensor import Tensor
from .verify import verify


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def direct_conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, *, same: bool) -> np.ndarray:
    """Convolution by definition, one output value at a time in float64: slow, plainly right."""
    kh, kw, _, o = kernel.shape
    if same:
        x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, o))
    for i in range(n):
        for y in range(h - kh + 1):
            for xx in range(w - kw + 1):
                window = x[i, y : y + kh, xx : xx + kw, :].astype(np.float64)
                for j in range(o):
                    out[i, y, xx, j] = np.sum(window * kernel[..., j]) + bias[j]
    return out


def fc6_read_as_chw(fcn: FCN) -> FCN:
    """The classic conversion bug: fc6 rows treated as (C, H, W) when they are (H, W, C)."""
    fc6 = fcn.head[0]
    h, w, c, f = fc6.kernel.shape
    wrong = fc6.kernel.read().reshape(c, h, w, f).transpose(1, 2, 0, 3)
    kernel = Tensor.wrap(np.ascontiguousarray(wrong), fc6.kernel.where)
    return replace(fcn, head=(replace(fc6, kernel=kernel), *fcn.head[1:]))


def seed_example() -> Check:
    """W = [[0,1,1],[2,3,5]], b = [8,13], ReLU: on x = (1,2,3) dense and 1x1 conv give (13, 36)."""
    w = np.array([[0, 1, 1], [2, 3, 5]], dtype=F32).T  # (in, out)
    b = np.array([8, 13], dtype=F32)
    x = np.array([[1, 2, 3]], dtype=F32)
    as_dense = np.maximum(x @ w + b, 0)[0]
    image = np.random.default_rng(1).uniform(-3, 3, (1, 5, 4, 3)).astype(F32)
    image[0, 0, 0] = x[0]
    as_conv = forward.conv2d(image, w.reshape(1, 1, 3, 2), b, same=False, relu=True)
    per_pixel = np.maximum(image.reshape(-1, 3) @ w + b, 0).reshape(1, 5, 4, 2)
    ok = (
        as_dense.tolist() == [13.0, 36.0]
        and as_conv[0, 0, 0].tolist() == [13.0, 36.0]
        and as_conv.shape == (1, 5, 4, 2)
        and np.allclose(as_conv, per_pixel, rtol=1e-6, atol=1e-6)
    )
    return Check(
        "seed example: dense == 1x1 conv",
        ok,
        f"dense {as_dense.tolist()}, conv map {as_conv.shape[1:]}",
    )


def conv_against_loop() -> Check:
    """The GEMM convolution equals the definition on small random inputs, same and valid."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 8, 3)).astype(F32)
    worst = 0.0
    for k, same in ((3, True), (3, False), (7, False), (1, False)):
        kernel = rng.standard_normal((k, k, 3, 4)).astype(F32)
        bias = rng.standard_normal(4).astype(F32)
        fast = forward.conv2d(x, kernel, bias, same=same)
        slow = direct_conv2d(x, kernel, bias, same=same)
        if fast.shape != slow.shape:
            return Check("conv2d == direct loop", False, f"shape {fast.shape} vs {slow.shape}")
        worst = max(worst, float(np.abs(fast - slow).max()))
    return Check("conv2d == direct loop", worst < 1e-4, f"max abs error {worst:.2e}")


def tiny_vgg() -> list[Check]:
    """A tiny VGG16 converts exactly; the flatten-order bug is caught."""
    classifier = random_classifier(TINY, seed=0)
    fcn = to_fcn(classifier)
    good = verify(classifier, fcn, images=2, seed=0)
    bad = verify(classifier, fc6_read_as_chw(fcn), images=2, seed=0)
    return [
        Check(
            "tiny VGG16: converted == original",
            good.passed,
            f"max scaled error {good.max_scaled_error:.1e}",
        ),
        Check(
            "tiny VGG16: wrong fc6 order is caught",
            not bad.passed,
            f"max scaled error {bad.max_scaled_error:.1e}",
        ),
    ]


def run() -> list[Check]:
    """All self-checks, in order."""
    return [seed_example(), conv_against_loop(), *tiny_vgg()]
