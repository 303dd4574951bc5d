"""The NumPy reference forward pass: the referee that `verify` trusts.

Channels-last (N, H, W, C), float32. Every convolution and dense layer is a GEMM, so the BLAS
does the work: no Python loops over pixels or channels, and no im2col buffer nine times the
size of a large layer (those run one GEMM per kernel row instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .arch import MIN_INPUT, POOL5_SIZE, STRIDE
from .errors import VggfcnError
from .weights import F32, BatchNorm, VGGWeights

#: Patch matrices up to this size are built whole (im2col, one GEMM): the first layer (27
#: columns), the last blocks, and the 7x7 head, whose huge kernel must be read once, not per tap.
IM2COL_BYTES = 16 << 20
#: Output rows per block in the row-GEMM path: at most this many, and an accumulator block of
#: at most ACC_BYTES (measured on VGG16 layers: larger blocks keep the BLAS busier for longer).
MAX_BLOCK_ROWS = 8192
ACC_BYTES = 4 << 20


def conv2d(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, *, same: bool, relu: bool = False
) -> np.ndarray:
    """2-D cross-correlation (what every framework calls convolution), stride 1.

    Args:
        x: (N, H, W, C) input.
        kernel: (KH, KW, C, O) HWIO kernel.
        bias: (O,).
        same: zero-pad so the output keeps H x W (odd kernels), else "valid".
        relu: apply ReLU to the output.
    Returns:
        (N, H', W', O) float32.

    Two exact strategies, chosen by size. Small patch matrices: im2col, every output pixel's
    KH x KW x C window laid out in HWIO order, times the kernel as one (KH*KW*C, O) matrix.
    Large ones: one GEMM per kernel row (`_row_gemms`), no buffer that grows as KH*KW times
    the layer.
    """
    kh, kw, c, o = kernel.shape
    pad = (kh // 2, kw // 2) if same else (0, 0)
    n, h, w, _ = x.shape
    ho, wo = h + 2 * pad[0] - kh + 1, w + 2 * pad[1] - kw + 1
    if n * ho * wo * kh * kw * c * 4 <= IM2COL_BYTES:
        if same:
            x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
        out = _im2col(x, kernel)
    else:
        out = _row_gemms(x, kernel, pad)
    out += bias
    if relu:
        np.maximum(out, 0, out=out)
    return out


def _im2col(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    out: np.ndarray = _patches(x, kh, kw) @ kernel.reshape(-1, o)
    return out.reshape(n, h - kh + 1, w - kw + 1, o)


def _patches(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """(N*H'*W', KH*KW*C): each output pixel's window in HWIO order, one row per pixel."""
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, H', W', C, KH, KW) view
    patches = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3), dtype=F32)
    return patches.reshape(-1, kh * kw * x.shape[3])


def valid_convs(
    xs: Sequence[np.ndarray], kernel: np.ndarray, bias: np.ndarray, *, relu: bool
) -> list[np.ndarray]:
    """`conv2d(x, kernel, bias, same=False)` for each x, reading a large kernel once.

    The head's fc6 kernel is 400 MB and each GEMM with few rows streams all of it from memory:
    when the maps' patch matrices fit, they are stacked into one GEMM instead of one each.
    """
    kh, kw, c, o = kernel.shape
    shapes = [(x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1) for x in xs]
    rows = [n * h * w for n, h, w in shapes]
    if len(xs) < 2 or sum(rows) * kh * kw * c * 4 > IM2COL_BYTES:
        return [conv2d(x, kernel, bias, same=False, relu=relu) for x in xs]
    out: np.ndarray = np.concatenate([_patches(x, kh, kw) for x in xs]) @ kernel.reshape(-1, o)
    out += bias
    if relu:
        np.maximum(out, 0, out=out)
    ends = np.cumsum(rows)[:-1]
    return [y.reshape(*shape, o) for y, shape in zip(np.split(out, ends), shapes, strict=True)]


def _row_gemms(x: np.ndarray, kernel: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """Convolution as KH GEMMs, one per kernel row, over the flattened padded image.

    With the padded image flattened to rows of C values, output pixel (y, x) reads input rows
    p + dy*W + dx for p = y*W + x: the KW taps of kernel row dy are KW consecutive rows, so
    laying each band of rows beside its next KW-1 neighbours (one copy, KW*C columns) turns
    that kernel row into one GEMM with KW*C-deep products. Three deep GEMMs and two
    accumulations beat nine shallow GEMMs and eight accumulations (NumPy's element-wise adds
    run on one core, the BLAS on all of them); the last KW-1 columns of each output row wrap
    around the image and are cut off at the end.
    """
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    hp, wp = h + 2 * pad[0], w + 2 * pad[1]
    ho, wo = hp - kh + 1, wp - kw + 1
    rows = ho * wp
    per_row = kernel.reshape(kh, kw * c, o)
    block = min(rows, MAX_BLOCK_ROWS, max(256, ACC_BYTES // (o * 4)))
    flat = np.zeros((hp * wp + kw - 1, c), dtype=F32)  # zero borders: the padding, written once
    image = flat[: hp * wp].reshape(hp, wp, c)[pad[0] : pad[0] + h, pad[1] : pad[1] + w]
    side_by_side = np.empty((block + (kh - 1) * wp, kw, c), dtype=F32)
    acc = np.empty((rows, o), dtype=F32)
    tmp = np.empty((block, o), dtype=F32)
    out = np.empty((n, ho, wo, o), dtype=F32)
    for i in range(n):
        image[...] = x[i]
        for r0 in range(0, rows, block):
            r1 = min(r0 + block, rows)
            span = r1 - r0 + (kh - 1) * wp
            band = side_by_side[:span]
            for dx in range(kw):
                band[:, dx] = flat[r0 + dx : r0 + dx + span]
            wide = band.reshape(span, kw * c)
            a = acc[r0:r1]
            np.matmul(wide[: r1 - r0], per_row[0], out=a)
            for dy in range(1, kh):
                t = tmp[: r1 - r0]
                np.matmul(wide[dy * wp : dy * wp + r1 - r0], per_row[dy], out=t)
                a += t
        out[i] = acc.reshape(ho, wp, o)[:, :wo]
    return out


def relu(x: np.ndarray) -> np.ndarray:
    """In-place ReLU (the activations are ours to overwrite)."""
    np.maximum(x, 0, out=x)
    return x


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool, stride 2, dropping an odd last row/column (Keras/torch "valid" pooling)."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    pooled: np.ndarray = x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))
    return pooled


def batch_norm(x: np.ndarray, norm: BatchNorm) -> np.ndarray:
    """Inference batch norm, written as its definition: (x - mean) / sqrt(var + eps) * g + b."""
    gamma, beta, mean, var = (t.read() for t in norm.tensors())
    x -= mean
    x /= np.sqrt(var + np.float32(norm.eps))
    x *= gamma
    x += beta
    return x


def dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x @ W + b with W as (in, out)."""
    out: np.ndarray = x @ kernel
    out += bias
    return out


def trunk(weights: VGGWeights, images: np.ndarray) -> np.ndarray:
    """The 3x3 convolution trunk up to pool5: (N, H, W, 3) -> (N, H/32, W/32, C5)."""
    _check_images(weights, images)
    x = np.asarray(images, dtype=F32)
    pools = weights.arch.pools_after()
    for i, layer in enumerate(weights.trunk):
        if layer.norm is None:
            x = conv2d(x, layer.kernel.read(), layer.bias.read(), same=True, relu=True)
        else:
            x = conv2d(x, layer.kernel.read(), layer.bias.read(), same=True)
            x = relu(batch_norm(x, layer.norm))
        if i in pools:
            x = max_pool2(x)
    return x


def classifier_head(weights: VGGWeights, pool5: np.ndarray) -> np.ndarray:
    """The original dense head on (N, 7, 7, C5) pool5 volumes: logits (N, classes), no softmax."""
    if weights.convolutional_head:
        raise VggfcnError(f"{weights.source.path}: has a convolutional head, not a dense one")
    x = pool5.reshape(pool5.shape[0], -1)  # (H, W, C) flatten order, as canonical fc6 rows
    fc6, fc7, fc8 = weights.head
    x = relu(dense(x, fc6.kernel.read(), fc6.bias.read()))
    x = relu(dense(x, fc7.kernel.read(), fc7.bias.read()))
    return dense(x, fc8.kernel.read(), fc8.bias.read())


def fcn_head(weights: VGGWeights, pool5: np.ndarray) -> np.ndarray:
    """The convolutional head: (N, h, w, C5) -> score map (N, h-6, w-6, classes), no softmax."""
    return fcn_heads(weights, [pool5])[0]


def fcn_heads(weights: VGGWeights, pool5s: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The convolutional head on several pool5 maps of any sizes, reading each layer once."""
    if not weights.convolutional_head:
        raise VggfcnError(f"{weights.source.path}: has a dense head, not a convolutional one")
    xs = list(pool5s)
    for i, layer in enumerate(weights.head):
        xs = valid_convs(xs, layer.kernel.read(), layer.bias.read(), relu=i < 2)
    return xs


def logits(weights: VGGWeights, images: np.ndarray) -> np.ndarray:
    """Run either network: (N, classes) for a classifier at 224x224, a score map for an FCN."""
    pool5 = trunk(weights, images)
    if weights.convolutional_head:
        return fcn_head(weights, pool5)
    if pool5.shape[1:3] != (POOL5_SIZE, POOL5_SIZE):
        raise VggfcnError(
            f"{weights.source.path}: a dense classifier takes {MIN_INPUT}x{MIN_INPUT} inputs only "
            f"(got {images.shape[1]}x{images.shape[2]}); convert it to run at other sizes"
        )
    return classifier_head(weights, pool5)


def _check_images(weights: VGGWeights, images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[3] != weights.arch.in_channels:
        raise VggfcnError(
            f"images must be (N, H, W, {weights.arch.in_channels}) channels-last, "
            f"got {images.shape}"
        )
    h, w = images.shape[1:3]
    if h < MIN_INPUT or w < MIN_INPUT:
        raise VggfcnError(
            f"images must be at least {MIN_INPUT}x{MIN_INPUT} (the network's {POOL5_SIZE}x"
            f"{POOL5_SIZE} window at stride {STRIDE}), got {h}x{w}"
        )
