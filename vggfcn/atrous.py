"""Finer score maps without retraining: output stride 16 and 8, à trous (with holes).

The FCN's map has one cell per 32 input pixels. Long et al. ("Fully Convolutional Networks",
sec. 3.2) show that shift-and-stitch — running the network on the input shifted by every offset
below the stride and interleaving the maps — equals "filter rarefaction": remove a pool's
stride and dilate every later filter by it. DeepLab does it to VGG16. Here:

- stride 16: pool5 becomes 2x2 with stride 1; the head's first p x p convolution gets
  dilation 2 (its later 1x1 layers are unchanged: a 1x1 filter has no holes);
- stride 8: pool4 becomes 2x2 stride 1; every block5 convolution gets dilation 2 (pads 2);
  pool5 becomes 2x2, stride 1, dilation 2; the head's first convolution dilation 4.

The weights are the same numbers: only the ops' attributes change (`fcn.Pool`,
`ConvLayer.dilation`). With F the block5 output and G the conv4_3 output of the original and
head32 = pool5 2x2/2 then the converted head, the result is exactly, borders included:

    M16[2i + a, 2j + b] = head32(F[a:, b:])[i, j]                            a, b in {0, 1}
    M8[4i + 2q + p, ...] = head32(block5(pool4(G[p:, ...]))[q:, ...])[i, ...]  p, q in {0, 1}

which is how `verify` proves it (`referee.stitched`), sharing nothing of this module.
"""

from __future__ import annotations

from dataclasses import replace

from .choices import OUTPUT_STRIDES
from .errors import VggfcnError
from .fcn import FCN, PLAIN, Pool

#: Blocks, counted from the last, whose pool loses its stride at each output stride.
_STRIDELESS = {32: 0, 16: 1, 8: 2}


def atrous(fcn: FCN, stride: int) -> FCN:
    """`fcn` at output stride `stride` (32: every pool 2x2/2, nothing dilated).

    Raises:
        VggfcnError: a stride other than 32, 16 or 8, or a reduced head (SSD's and DeepLab's
            backbones are an approximate construction of their own, not this one).
    """
    if stride not in OUTPUT_STRIDES:
        raise VggfcnError(
            f"output stride {stride}: expected one of {', '.join(map(str, OUTPUT_STRIDES))}"
        )
    if fcn.info.head == "reduced" and stride != 32:
        raise VggfcnError(
            f"{fcn.path}: a reduced head (SSD/DeepLab) is its own dilated construction; "
            "--output-stride applies to classifiers"
        )
    plan = fcn.plan
    first = len(plan) - _STRIDELESS[stride]  # the first block whose pool loses its stride
    factor = 1  # the dilation every filter from here on gets
    trunk, pools, start = [], [], 0
    for block, count in enumerate(plan):
        trunk += [replace(layer, dilation=factor) for layer in fcn.trunk[start : start + count]]
        start += count
        if block >= first:
            pools.append(Pool(stride=1, dilation=factor))
            factor *= 2
        else:
            pools.append(PLAIN)
    head = [
        replace(layer, dilation=factor if max(layer.kernel.shape[:2]) > 1 else 1)
        for layer in fcn.head
    ]
    return replace(
        fcn,
        trunk=tuple(trunk),
        head=tuple(head),
        pools=tuple(pools) if stride != 32 else (),
        info=replace(fcn.info, output_stride=stride),
    )
