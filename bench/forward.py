"""One forward-pass timing, run in its own process (OpenBLAS threads spin after a call, and
torch's thread pool would compete with them if both lived in one process).

Usage: python -m bench.forward numpy|numpy-first|torch SIZE REPEATS  ->  one JSON line on stdout
SIZE 224 runs the original classifier (batch 1); larger sizes run the fully-convolutional net.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

from vggfcn import forward
from vggfcn.arch import Arch
from vggfcn.convert import to_fcn
from vggfcn.synthetic import FULL, random_classifier
from vggfcn.verify import sample_images
from vggfcn.weights import VGGWeights


def flops(arch: Arch, size: int) -> float:
    """Multiply-adds x 2 of one forward pass at size x size (convolutional head above 224)."""
    total, side, cin = 0, size, arch.in_channels
    pools = arch.pools_after()
    for i, cout in enumerate(arch.conv_widths):
        total += side * side * 9 * cin * cout
        cin = cout
        if i in pools:
            side //= 2
    out = side - 6
    f6, f7, k = arch.head_widths
    total += out * out * (49 * cin * f6 + f6 * f7 + f7 * k)
    return 2.0 * total


def numpy_pass(weights: VGGWeights, x: np.ndarray) -> Callable[[], object]:
    return lambda: forward.logits(weights, x)


def numpy_first_pass(weights: VGGWeights, x: np.ndarray) -> Callable[[], object]:
    """Each pass with a fresh `Scratch`: what the first pass of a process (one CLI run) pays."""

    def run() -> object:
        pool5 = forward.trunk(weights, x, forward.Scratch())
        head = forward.fcn_head if weights.convolutional_head else forward.classifier_head
        return head(weights, pool5)

    return run


def torch_pass(weights: VGGWeights, x: np.ndarray) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_grad_enabled(False)

    def oihw(kernel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()

    trunk = [(oihw(t.kernel.read()), torch.from_numpy(t.bias.read())) for t in weights.trunk]
    pools = weights.arch.pools_after()
    dense = not weights.convolutional_head
    head = [
        (
            torch.from_numpy(h.kernel.read()) if dense else oihw(h.kernel.read()),
            torch.from_numpy(h.bias.read()),
        )
        for h in weights.head
    ]
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    def run() -> object:
        y = images
        for i, (k, b) in enumerate(trunk):
            y = F.relu(F.conv2d(y, k, b, padding=1))
            if i in pools:
                y = F.max_pool2d(y, 2)
        if dense:
            y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)
        for j, (k, b) in enumerate(head):
            y = y @ k + b if dense else F.conv2d(y, k, b)
            if j < 2:
                y = F.relu(y)
        return y

    return run


def main() -> None:
    backend, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    weights = random_classifier(FULL, seed=0)
    if size != 224:
        weights = to_fcn(weights)
    x = sample_images(1, seed=0, size=size)
    passes = {"numpy": numpy_pass, "numpy-first": numpy_first_pass, "torch": torch_pass}
    run = passes[backend](weights, x)
    run()  # warm-up: first-touch page faults, BLAS/oneDNN initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "flops": flops(weights.arch, size)}))


if __name__ == "__main__":
    main()
