"""Reduced heads for SSD and DeepLab: fc6 and fc7 decimated into a backbone initialisation.

SSD (Liu et al.) and DeepLab-LargeFOV start from VGG16 with fc6 and fc7 made small: fc6, viewed
as (4096, 512, 7, 7), keeps every 4th filter and every 3rd tap, `W6[0::4, :, 0::3, 0::3]` —
1024 filters of 3x3; fc7 keeps `W7[0::4, 0::4]` (1024x1024x1x1); the biases `b[0::4]`; Caffe
SSD's script also keeps `W8[:, 0::4]`. (weiliu89/caffe `model_libs.py` `VGGNetBody(reduced=True,
dilated=True)`; sgrvinod's SSD tutorial `decimate()`.) The result is *not* the classifier: its
conv6 must run dilated to see what fc6 saw — SSD puts a 3x3 stride-1 pad-1 pool5 before it and
dilates by 6 (3 for the tap spacing, 2 for pool5's lost stride); DeepLab-LargeFOV dilates by 12.
So it is proven differently (`verify` checks the trunk is bit-identical and each kept value
equals the original at its index) and it cannot `predict`.

In the FCN's HWIO terms: fc6 (7, 7, 512, 4096)[0::3, 0::3, :, 0::4], fc7 (1, 1, 4096,
4096)[:, :, 0::4, 0::4], fc8 (1, 1, 4096, K)[:, :, 0::4, :].
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import ArchitectureError
from .fcn import FCN, ConvLayer
from .tensor import Tensor

#: What each user of a reduced head must build around it (recorded in the file's metadata).
SSD = "pool5 max 3x3 stride 1 pad 1; conv6 3x3 dilation 6 pad 6; conv7 1x1 (ssd.pytorch vgg())"
DEEPLAB_LARGEFOV = "conv6 3x3 dilation 12 pad 12; conv7 1x1 (DeepLab-LargeFOV)"
TAP_STEP, FILTER_STEP = 3, 4


def reduce_head(fcn: FCN, keep_fc8: bool = False) -> FCN:
    """The backbone: the trunk as it is, fc6 and fc7 (and fc8 if asked) decimated.

    Raises:
        ArchitectureError: not a VGG16 with the stock three-layer head of 7x7 fc6, or widths
            that every 4th filter does not divide.
    """
    kernels = [layer.kernel.shape for layer in fcn.head]
    if fcn.name != "vgg16" or len(kernels) != 3 or kernels[0][:2] != (7, 7):
        raise ArchitectureError(
            f"{fcn.path}: a reduced head is made from VGG16's stock head (fc6 7x7, fc7, fc8); "
            f"this is {fcn.describe()}"
        )
    f6, f7 = kernels[0][3], kernels[1][3]
    if f6 % FILTER_STEP or f7 % FILTER_STEP:
        raise ArchitectureError(f"{fcn.path}: fc6/fc7 widths {f6}/{f7} are not multiples of 4")
    fc6, fc7, fc8 = fcn.head
    taps, filters = slice(None, None, TAP_STEP), slice(None, None, FILTER_STEP)
    head = [
        _decimated(fc6, "conv6", (taps, taps, slice(None), filters), filters),
        _decimated(fc7, "conv7", (slice(None), slice(None), filters, filters), filters),
    ]
    if keep_fc8:
        head.append(_decimated(fc8, "fc8", (slice(None), slice(None), filters), slice(None)))
    return replace(fcn, head=tuple(head), info=replace(fcn.info, head="reduced"))


def _decimated(
    layer: ConvLayer, name: str, kernel_index: tuple[slice, ...], bias_index: slice
) -> ConvLayer:
    """The layer with the kept taps and filters only (read once: a few MB of a 400 MB fc6)."""
    kernel = np.ascontiguousarray(layer.kernel.read()[kernel_index])
    bias = np.ascontiguousarray(layer.bias.read()[bias_index])
    return ConvLayer(
        name,
        Tensor.wrap(kernel, f"{layer.kernel.where} decimated"),
        Tensor.wrap(bias, f"{layer.bias.where} decimated"),
        layer.relu,
        layer.source_name,
    )
