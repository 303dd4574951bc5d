"""One forward-pass timing, run in its own process (OpenBLAS threads spin after a call, and
torch's thread pool would compete with them if both lived in one process).

Usage: python -m bench.forward numpy|numpy-first|referee|torch SIZE REPEATS [STRIDE]
-> one JSON line. SIZE 224 runs the classifier (torch: its dense head; referee: the source graph
as a file defines it); every size runs the fully-convolutional network in NumPy (at 224 its map
is one cell). STRIDE (default 32) runs the network à trous: 16 or 8, torch with the same
dilated convolutions and pools.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

from vggfcn import forward, referee
from vggfcn.atrous import atrous
from vggfcn.convert import to_fcn
from vggfcn.fcn import FCN
from vggfcn.graph import SourceGraph
from vggfcn.synthetic import FULL, random_classifier
from vggfcn.verify import sample_images


def flops(fcn: FCN, size: int) -> float:
    """Multiply-adds x 2 of one forward pass at size x size, op by op as `fcn` runs it."""
    total, side = 0, size
    start = 0
    for count, pool in zip(fcn.plan, fcn.block_pools, strict=True):
        for layer in fcn.trunk[start : start + count]:
            kh, kw, cin, cout = layer.kernel.shape
            total += side * side * kh * kw * cin * cout
        start += count
        side = (side - pool.dilation - 1) // pool.stride + 1
    for layer in fcn.head:
        kh, kw, cin, cout = layer.kernel.shape
        side -= layer.span[0] - 1
        total += side * side * kh * kw * cin * cout
    return 2.0 * total


def numpy_pass(graph: SourceGraph, fcn: FCN, x: np.ndarray) -> Callable[[], object]:
    """The FCN as `logits` runs it in a loop: each thread's `Scratch` kept between calls."""
    return lambda: forward.logits(fcn, x)


def numpy_first_pass(graph: SourceGraph, fcn: FCN, x: np.ndarray) -> Callable[[], object]:
    """Each pass with a fresh `Scratch`: what the first pass of a process (one CLI run) pays."""
    return lambda: forward.heads(fcn, [forward.trunk(fcn, x, forward.Scratch())])


def referee_pass(graph: SourceGraph, fcn: FCN, x: np.ndarray) -> Callable[[], object]:
    """The original classifier as verify runs it: op by op, with a fresh `Scratch`."""
    return lambda: referee.head(graph, referee.pool5(graph, x, forward.Scratch()))


def torch_pass(graph: SourceGraph, fcn: FCN, x: np.ndarray) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_grad_enabled(False)

    def oihw(kernel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()

    trunk = [
        (oihw(t.kernel.read()), torch.from_numpy(t.bias.read()), t.dilation) for t in fcn.trunk
    ]
    pools = dict(zip(np.cumsum(fcn.plan) - 1, fcn.block_pools, strict=True))
    dense = x.shape[1] == 224 and fcn.plain
    head = [
        (
            torch.from_numpy(h.kernel.read().reshape(-1, h.out_channels))
            if dense
            else oihw(h.kernel.read()),
            torch.from_numpy(h.bias.read()),
            h.dilation,
        )
        for h in fcn.head
    ]
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    def run() -> object:
        y = images
        for i, (k, b, d) in enumerate(trunk):
            y = F.relu(F.conv2d(y, k, b, padding=d, dilation=d))
            if i in pools:
                y = F.max_pool2d(y, 2, stride=pools[i].stride, dilation=pools[i].dilation)
        if dense:
            y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)
        for j, (k, b, d) in enumerate(head):
            y = y @ k + b if dense else F.conv2d(y, k, b, dilation=d)
            if j < 2:
                y = F.relu(y)
        return y

    return run


def main() -> None:
    backend, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stride = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    graph = random_classifier(FULL, seed=0)
    fcn = atrous(to_fcn(graph), stride)
    x = sample_images(1, seed=0, size=size)
    passes = {
        "numpy": numpy_pass,
        "numpy-first": numpy_first_pass,
        "referee": referee_pass,
        "torch": torch_pass,
    }
    run = passes[backend](graph, fcn, x)
    run()  # warm-up: first-touch page faults, BLAS/oneDNN initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "flops": flops(fcn, size)}))


if __name__ == "__main__":
    main()
