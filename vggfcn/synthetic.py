"""Deterministic random VGG weights: stand-ins for real checkpoints, which cannot be downloaded.

He-initialised (std sqrt(2/fan_in)) so activations keep their scale through 16 ReLU layers and
the logits are O(1..100) — the regime where a wrong conversion is glaring and a right one is
exact to float rounding. The same seed gives the same numbers on every machine (PCG64).
"""

from __future__ import annotations

import numpy as np

from .arch import Arch
from .fcn import head_name
from .graph import (
    Activation,
    Conv,
    Dense,
    Flatten,
    InputSpec,
    Op,
    Provenance,
    SourceGraph,
    vgg_trunk,
)
from .tensor import Tensor

#: A VGG16-topology network small enough to run in milliseconds; used by the self-check.
TINY = Arch.from_blocks("vgg16", (4, 8, 8, 16, 16), (32, 32), 10)
FULL = Arch.from_blocks("vgg16", (64, 128, 256, 512, 512), (4096, 4096), 1000)


def random_layers(arch: Arch, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, kernel, bias) in model order; kernels HWIO and (in, out), fc6 rows in HWC order."""
    rng = np.random.default_rng(seed)
    shapes = [*arch.conv_shapes(), *arch.dense_shapes()]
    names = [*arch.conv_names, *(head_name(i) for i in range(3))]
    layers = []
    for name, shape in zip(names, shapes, strict=True):
        fan_in = int(np.prod(shape[:-1]))
        kernel = rng.standard_normal(shape, dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / fan_in))
        bias = rng.random(shape[-1], dtype=np.float32)  # small, non-zero: dropped biases show
        bias *= np.float32(0.1)
        bias -= np.float32(0.05)
        layers.append((name, kernel, bias))
    return layers


def random_classifier(arch: Arch = TINY, seed: int = 0) -> SourceGraph:
    """An in-memory Keras-style classifier (HWIO convs, HWC flatten, (in, out) dense kernels)
    with `random_layers` weights, its input size known (224x224)."""
    layers = [
        (name, Tensor.wrap(k, f"<random>:{name}.kernel"), Tensor.wrap(b, f"<random>:{name}.bias"))
        for name, k, b in random_layers(arch, seed)
    ]
    n = len(arch.conv_widths)
    convs = [Conv(name, k, b, "HWIO") for name, k, b in layers[:n]]
    ops: list[Op] = [*vgg_trunk(convs, arch.plan), Flatten("flatten", "HWC")]
    for i, (name, k, b) in enumerate(layers[n:]):
        ops.append(Dense(name, k, b, "IO"))
        if i < 2:
            ops.append(Activation(f"{name}.relu", "relu", fused=True))
    return SourceGraph(
        ops=tuple(ops),
        input=InputSpec(size=(224, 224), size_from="file"),
        output_activation="unknown",
        provenance=Provenance(path="<random>", format="memory", generation="synthetic"),
    )
