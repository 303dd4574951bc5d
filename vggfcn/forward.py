"""The fast NumPy kernels, and the fully-convolutional network run on them.

Channels-last (N, H, W, C), float32. Every convolution is a GEMM, so the BLAS does the work: no
Python loops over pixels or channels, and no im2col buffer nine times the size of a large layer
(those run one GEMM per kernel row instead). Dilated convolutions and strided or dilated pools
(output stride 16 and 8, `atrous`) run on the same kernels: a dilation only changes which
rows a GEMM reads. `conv2d` is the one piece the referee shares, undilated; it is tested
against a direct loop, dilated too (`selfcheck`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .arch import STRIDE
from .errors import VggfcnError
from .fcn import FCN, PLAIN, ConvLayer, Pool
from .precision import F32

#: Patch matrices up to this size are built whole (im2col, one GEMM): the first layer (27
#: columns), the last blocks, and the 7x7 head, whose huge kernel must be read once, not per tap.
IM2COL_BYTES = 16 << 20
#: Output rows per block in the row-GEMM path: at most this many, and an accumulator block of
#: at most ACC_BYTES (measured on VGG16 layers: larger blocks keep the BLAS busier for longer).
MAX_BLOCK_ROWS = 8192
ACC_BYTES = 4 << 20
#: A block whose widest full-resolution map is larger runs in strips of about this size.
STRIP_BYTES = 16 << 20
#: The row-GEMM path computes (KW - 1) * dilation wrapped-around columns per output row; when
#: that is more than this fraction of the row (a dilated head: fc6 at dilation 4 spans 25
#: pool5 columns), whole output rows are built im2col instead, in blocks of HEAD_BLOCK_BYTES.
MAX_WRAPPED = 0.25
HEAD_BLOCK_BYTES = 32 << 20

_THREAD = threading.local()  # each thread's default Scratch (see `trunk`)


class Scratch:
    """Buffers that forward passes reuse from layer to layer and from call to call.

    Fresh memory is slow the first time it is touched (a page fault per page, and on a VM the
    host's fault too): a VGG16 pass at 224 would fault in ~150 MB of temporaries, one layer
    after another, and pay for it in every call. Each named buffer grows to the largest layer
    that asks for it and is handed out again as a view. Results alternate between two buffers:
    a layer's output stays intact while the next layer reads it, and is overwritten by the one
    after that. Not for two threads at once.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._turn = 0

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised float32 array of `shape` in the buffer called `name`."""
        size = int(np.prod(shape, dtype=np.int64))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype=F32)
        return buffer[:size].reshape(shape)

    def result(self, shape: tuple[int, ...]) -> np.ndarray:
        """A layer's output buffer, valid until the next-but-one call."""
        self._turn ^= 1
        return self.take(f"result{self._turn}", shape)

    def holds(self, x: np.ndarray) -> bool:
        """Whether `x` may be a view of one of these buffers (to be copied before returning)."""
        return any(np.may_share_memory(x, buffer) for buffer in self._buffers.values())


def conv2d(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray,
    *,
    same: bool,
    relu: bool = False,
    dilation: int = 1,
    scratch: Scratch | None = None,
) -> np.ndarray:
    """2-D cross-correlation (what every framework calls convolution), stride 1.

    Args:
        x: (N, H, W, C) input.
        kernel: (KH, KW, C, O) HWIO kernel.
        bias: (O,).
        same: zero-pad so the output keeps H x W (odd kernels), else "valid".
        relu: apply ReLU to the output.
        dilation: taps this many pixels apart (à trous); "same" then pads dilation * (K // 2).
        scratch: reuse this pass's buffers; the result then lives in `scratch` (see there).
    Returns:
        (N, H', W', O) float32.

    Three exact strategies, chosen by size. Small patch matrices: im2col, every output pixel's
    KH x KW x C window laid out in HWIO order, times the kernel as one (KH*KW*C, O) matrix.
    Large ones: one GEMM per kernel row (`_row_gemms`), no buffer that grows as KH*KW times
    the layer — unless that path would compute mostly wrapped-around columns, when im2col runs
    in blocks of output rows (`_im2col_rows`).
    """
    kh, kw, c, o = kernel.shape
    pad = (dilation * (kh // 2), dilation * (kw // 2)) if same else (0, 0)
    n, h, w, _ = x.shape
    ho = h + 2 * pad[0] - (kh - 1) * dilation
    wo = w + 2 * pad[1] - (kw - 1) * dilation
    scratch = scratch or Scratch()
    small = n * ho * wo * kh * kw * c * 4 <= IM2COL_BYTES
    if small or (kw - 1) * dilation > MAX_WRAPPED * (w + 2 * pad[1]):
        if same:  # "valid" windows read x itself; the patch matrix is the one copy
            padded = scratch.take("padded", (n, h + 2 * pad[0], w + 2 * pad[1], c))
            for i in range(n):
                _pad_into(padded[i], x[i], pad)
            x = padded
        out = (
            _im2col(x, kernel, dilation, scratch)
            if small
            else _im2col_rows(x, kernel, dilation, scratch)
        )
        _finish(out, bias, relu)
        return out
    return _row_gemms(x, kernel, bias, relu, pad, dilation, scratch)


def _finish(out: np.ndarray, bias: np.ndarray, relu: bool) -> None:
    """Add the bias and apply the ReLU, in place."""
    out += bias
    if relu:
        np.maximum(out, 0, out=out)


def _pad_into(buffer: np.ndarray, image: np.ndarray, pad: tuple[int, int]) -> None:
    """Copy (H, W, C) `image` into the middle of `buffer`, zeroing only the border around it."""
    (p, q), (h, w) = pad, image.shape[:2]
    buffer[:p] = 0
    buffer[p + h :] = 0
    buffer[p : p + h, :q] = 0
    buffer[p : p + h, q + w :] = 0
    buffer[p : p + h, q : q + w] = image


def _im2col(x: np.ndarray, kernel: np.ndarray, dilation: int, scratch: Scratch) -> np.ndarray:
    kh, kw, c, o = kernel.shape
    windows = _windows(x, kh, kw, dilation)
    n, ho, wo = windows.shape[:3]
    patches = scratch.take("patches", (n * ho * wo, kh * kw * c))
    np.copyto(patches.reshape(windows.shape), windows)
    out = scratch.result((n * ho * wo, o))
    np.matmul(patches, kernel.reshape(-1, o), out=out)
    return out.reshape(n, ho, wo, o)


def _im2col_rows(x: np.ndarray, kernel: np.ndarray, dilation: int, scratch: Scratch) -> np.ndarray:
    """im2col a band of output rows at a time: patch memory bounded by HEAD_BLOCK_BYTES, and
    a large kernel streamed once per band, not once per kernel row."""
    kh, kw, c, o = kernel.shape
    windows = _windows(x, kh, kw, dilation)
    n, ho, wo = windows.shape[:3]
    band = max(1, min(ho, HEAD_BLOCK_BYTES // (wo * kh * kw * c * 4)))
    patches = scratch.take("patches", (band * wo, kh * kw * c))
    out = scratch.result((n, ho, wo, o))
    flat = kernel.reshape(-1, o)
    for i in range(n):
        for r0 in range(0, ho, band):
            r1 = min(r0 + band, ho)
            rows = patches[: (r1 - r0) * wo]
            np.copyto(rows.reshape(r1 - r0, wo, kh, kw, c), windows[i, r0:r1])
            np.matmul(rows, flat, out=out[i, r0:r1].reshape(-1, o))
    return out


def _windows(x: np.ndarray, kh: int, kw: int, dilation: int = 1) -> np.ndarray:
    """(N, H', W', KH, KW, C) view: each output pixel's window in HWIO order, its taps
    `dilation` apart."""
    span = ((kh - 1) * dilation + 1, (kw - 1) * dilation + 1)
    view = sliding_window_view(x, span, axis=(1, 2))[..., ::dilation, ::dilation]
    return view.transpose(0, 1, 2, 4, 5, 3)


def _row_gemms(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray,
    relu: bool,
    pad: tuple[int, int],
    dilation: int,
    scratch: Scratch,
) -> np.ndarray:
    """Convolution as KH GEMMs, one per kernel row, over the flattened padded image.

    With the padded image flattened to rows of C values, output pixel (y, x) reads input rows
    p + (dy*W + dx) * dilation for p = y*W + x: the KW taps of kernel row dy are KW rows
    `dilation` apart, so laying each band of rows beside its KW-1 shifted copies (one copy,
    KW*C columns) turns that kernel row into one GEMM with KW*C-deep products. Three deep GEMMs
    and two accumulations beat nine shallow GEMMs and eight accumulations (NumPy's element-wise
    adds run on one core, the BLAS on all of them). The last (KW-1)*dilation columns of each
    output row wrap around the image: the result is a view that leaves them out, not a copy
    without them (the next layer copies its input into its own padded buffer anyway). Bias and
    ReLU are applied block by block, while the block is still in cache.
    """
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    hp, wp = h + 2 * pad[0], w + 2 * pad[1]
    reach = (kw - 1) * dilation  # columns past a row's last output that its taps read
    ho, wo = hp - (kh - 1) * dilation, wp - reach
    rows = ho * wp
    down = dilation * wp  # flat rows between kernel rows
    per_row = kernel.reshape(kh, kw * c, o)
    block = min(rows, MAX_BLOCK_ROWS, max(256, ACC_BYTES // (o * 4)))
    flat = scratch.take("flat", (hp * wp + reach, c))
    flat[hp * wp :] = 0  # read only by the wrapped-around columns that are cut off
    side_by_side = scratch.take("side_by_side", (block + (kh - 1) * down, kw, c))
    tmp = scratch.take("tmp", (block, o))
    acc = scratch.result((n, rows, o))
    for i in range(n):
        _pad_into(flat[: hp * wp].reshape(hp, wp, c), x[i], pad)
        for r0 in range(0, rows, block):
            r1 = min(r0 + block, rows)
            span = r1 - r0 + (kh - 1) * down
            band = side_by_side[:span]
            for dx in range(kw):
                band[:, dx] = flat[r0 + dx * dilation : r0 + dx * dilation + span]
            wide = band.reshape(span, kw * c)
            a = acc[i, r0:r1]
            np.matmul(wide[: r1 - r0], per_row[0], out=a)
            for dy in range(1, kh):
                t = tmp[: r1 - r0]
                np.matmul(wide[dy * down : dy * down + r1 - r0], per_row[dy], out=t)
                a += t
            _finish(a, bias, relu)
    return acc.reshape(n, ho, wp, o)[:, :, :wo]


def valid_convs(
    xs: Sequence[np.ndarray],
    kernel: np.ndarray,
    bias: np.ndarray,
    *,
    relu: bool,
    dilation: int = 1,
) -> list[np.ndarray]:
    """`conv2d(x, kernel, bias, same=False)` for each x, reading a large kernel once.

    The head's fc6 kernel is 400 MB and each GEMM with few rows streams all of it from memory:
    when the maps' patch matrices fit, they are stacked into one GEMM instead of one each.
    """
    kh, kw, c, o = kernel.shape
    span_h, span_w = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    shapes = [(x.shape[0], x.shape[1] - span_h + 1, x.shape[2] - span_w + 1) for x in xs]
    rows = [n * h * w for n, h, w in shapes]
    if len(xs) < 2 or sum(rows) * kh * kw * c * 4 > IM2COL_BYTES:
        return [conv2d(x, kernel, bias, same=False, relu=relu, dilation=dilation) for x in xs]
    patches = [_windows(x, kh, kw, dilation).reshape(-1, kh * kw * c) for x in xs]  # copies
    out: np.ndarray = np.concatenate(patches) @ kernel.reshape(-1, o)
    _finish(out, bias, relu)
    ends = np.cumsum(rows)[:-1]
    return [y.reshape(*shape, o) for y, shape in zip(np.split(out, ends), shapes, strict=True)]


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool, stride 2, dropping an odd last row/column (Keras/torch "valid" pooling)."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    pairs = x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2 * c)  # (row pair, column pair)
    rows = np.maximum(pairs[:, :, 0], pairs[:, :, 1])  # two element-wise passes beat a
    pooled: np.ndarray = np.maximum(rows[..., :c], rows[..., c:])  # reduction over 2 axes
    return pooled


def pool2d(x: np.ndarray, pool: Pool) -> np.ndarray:
    """A 2x2 "valid" max-pool, windows `pool.stride` apart with taps `pool.dilation` apart:
    out[i, j] = max of x at rows s*i + {0, d} and columns s*j + {0, d}.

    The plain 2x2/2 pool takes `max_pool2`'s reshape; any other is two element-wise maxima of
    strided views (rows, then columns), exact and as fast as NumPy reads memory.
    """
    if pool == PLAIN:
        return max_pool2(x)
    s, d = pool.stride, pool.dilation
    h, w = x.shape[1:3]
    ho, wo = (h - d - 1) // s + 1, (w - d - 1) // s + 1
    rows = np.maximum(x[:, : (ho - 1) * s + 1 : s], x[:, d : d + (ho - 1) * s + 1 : s])
    pooled: np.ndarray = np.maximum(
        rows[:, :, : (wo - 1) * s + 1 : s], rows[:, :, d : d + (wo - 1) * s + 1 : s]
    )
    return pooled


def trunk(fcn: FCN, images: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
    """The 3x3 convolution trunk up to pool5: (N, H, W, 3) -> (N, H', W', C5), H/32 x W/32 at
    output stride 32 (each block's pool says: `FCN.block_pools`).

    Its temporaries live in `scratch`, by default one kept by each thread between calls, as
    oneDNN keeps its scratchpad: a loop over images then touches no fresh memory after the
    first call. That costs about 80 MB per thread whatever the input size (large blocks run
    in strips); pass a `Scratch` of your own to free them when it goes. Nothing returned is a
    view into the scratch.
    """
    _check_images(fcn, images)
    x = np.asarray(images, dtype=F32)
    scratch = scratch or _thread_scratch()
    start = 0
    for count, pool in zip(fcn.plan, fcn.block_pools, strict=True):
        x = _block(x, fcn.trunk[start : start + count], pool, scratch)
        start += count
    return x


def _thread_scratch() -> Scratch:
    scratch: Scratch | None = getattr(_THREAD, "scratch", None)
    if scratch is None:
        scratch = _THREAD.scratch = Scratch()
    return scratch


def _block(x: np.ndarray, layers: Sequence[ConvLayer], pool: Pool, scratch: Scratch) -> np.ndarray:
    """One VGG block: its convolutions (each with its ReLU), then the pool.

    A block whose maps would be large runs in horizontal strips of output rows, so its
    full-resolution maps never exist whole: each strip's maps fit in buffers that every strip
    reuses (fresh memory is slow to touch, and at 1024x1024 block 1 alone would make ~800 MB of
    it). Each "same" convolution's zero padding spoils `dilation` more rows at a cut edge, so a
    strip reads that many extra input rows beyond each cut and drops the spoiled rows before
    pooling; at the image's own edges the padding is the real one. The result is the same as
    unstripped.
    """
    n, h, w, _ = x.shape
    s, d = pool.stride, pool.dilation
    halo = sum(layer.dilation * (layer.kernel.shape[0] // 2) for layer in layers)
    row_bytes = w * max(layer.out_channels for layer in layers) * F32.itemsize
    out_rows = (h - d - 1) // s + 1
    pooled_rows = max(1, STRIP_BYTES // (s * row_bytes))  # pooled rows per strip
    if n * h * row_bytes <= STRIP_BYTES or out_rows <= pooled_rows:
        return pool2d(_convs(x, layers, scratch), pool)
    out = np.empty((n, out_rows, (w - d - 1) // s + 1, layers[-1].out_channels), dtype=F32)
    for i in range(n):
        for p0 in range(0, out_rows, pooled_rows):
            p1 = min(p0 + pooled_rows, out_rows)
            first, end = p0 * s, (p1 - 1) * s + d + 1  # the conv rows these pooled rows read
            lo, hi = max(0, first - halo), min(h, end + halo)
            y = _convs(x[i : i + 1, lo:hi], layers, scratch)
            out[i, p0:p1] = pool2d(y[:, first - lo : end - lo], pool)[0]
    return out


def _convs(x: np.ndarray, layers: Sequence[ConvLayer], scratch: Scratch) -> np.ndarray:
    for layer in layers:
        kernel, bias = layer.kernel.read(), layer.bias.read()
        x = conv2d(
            x, kernel, bias, same=True, relu=layer.relu, dilation=layer.dilation, scratch=scratch
        )
    return x


def heads(fcn: FCN, pool5s: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The convolutional head on several pool5 maps of any sizes, reading each layer once:
    (N, h, w, C5) -> score maps (N, h - span_h + 1, w - span_w + 1, classes), no output
    activation (span: the window p_h x p_w, its taps as far apart as the head is dilated)."""
    xs = list(pool5s)
    for layer in fcn.head:
        kernel, bias = layer.kernel.read(), layer.bias.read()
        xs = valid_convs(xs, kernel, bias, relu=layer.relu, dilation=layer.dilation)
    return xs


def logits(fcn: FCN, images: np.ndarray) -> np.ndarray:
    """The score map (N, *fcn.output_size(H, W), classes) of (N, H, W, C) images:
    (H/32 - p_h + 1) x (W/32 - p_w + 1) cells at output stride 32."""
    return heads(fcn, [trunk(fcn, images)])[0]


def _check_images(fcn: FCN, images: np.ndarray) -> None:
    channels = fcn.trunk[0].kernel.shape[2]
    if images.ndim != 4 or images.shape[3] != channels:
        raise VggfcnError(f"images must be (N, H, W, {channels}) channels-last, got {images.shape}")
    h, w = images.shape[1:3]
    min_h, min_w = fcn.min_input
    if h < min_h or w < min_w:
        p_h, p_w = fcn.window
        raise VggfcnError(
            f"images must be at least {min_h}x{min_w} (the network's {p_h}x{p_w} window at "
            f"stride {STRIDE}), got {h}x{w}"
        )
