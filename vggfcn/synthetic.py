"""Deterministic random VGG weights: stand-ins for real checkpoints, which cannot be downloaded.

He-initialised (std sqrt(2/fan_in)) so activations keep their scale through 16 ReLU layers and
the logits are O(1..100) — the regime where a wrong conversion is glaring and a right one is
exact to float rounding. The same seed gives the same numbers on every machine (PCG64).
"""

from __future__ import annotations

import numpy as np

from .arch import HEAD_NAMES, Arch
from .weights import RawLayer, SourceInfo, Tensor, VGGWeights, assemble

#: A VGG16-topology network small enough to run in milliseconds; used by the self-check.
TINY = Arch.from_blocks("vgg16", (4, 8, 8, 16, 16), (32, 32), 10)
FULL = Arch.from_blocks("vgg16", (64, 128, 256, 512, 512), (4096, 4096), 1000)


def random_layers(arch: Arch, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, kernel, bias) in model order; kernels HWIO and (in, out), fc6 rows in HWC order."""
    rng = np.random.default_rng(seed)
    shapes = [*arch.conv_shapes(), *arch.dense_shapes()]
    layers = []
    for name, shape in zip([*arch.conv_names, *HEAD_NAMES], shapes, strict=True):
        fan_in = int(np.prod(shape[:-1]))
        kernel = rng.standard_normal(shape, dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / fan_in))
        bias = rng.random(shape[-1], dtype=np.float32)  # small, non-zero: dropped biases show
        bias *= np.float32(0.1)
        bias -= np.float32(0.05)
        layers.append((name, kernel, bias))
    return layers


def random_classifier(arch: Arch = TINY, seed: int = 0) -> VGGWeights:
    """An in-memory classifier (dense head) with `random_layers` weights."""
    raws = [
        RawLayer(
            name, Tensor.wrap(k, f"<random>:{name}.kernel"), Tensor.wrap(b, f"<random>:{name}.bias")
        )
        for name, k, b in random_layers(arch, seed)
    ]
    n = len(arch.conv_widths)
    return assemble(raws[:n], raws[n:], SourceInfo("<random>", "memory", "synthetic", None, "HWC"))
