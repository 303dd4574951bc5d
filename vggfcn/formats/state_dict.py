"""Named-tensor checkpoints (PyTorch state dicts, tensorflow-vgg .npy) into canonical weights.

Every layout is normalised here, so nothing downstream knows where a file came from:
- torchvision `vgg16`: `features.N.weight` (OIHW), `classifier.{0,3,6}.weight` (out, in);
  classifier.0's 25 088 columns are in (C, H, W) order, the order torch's flatten reads NCHW.
- timm `vgg16`: `features.N.*`, `pre_logits.fc1.weight` already a (4096, C, 7, 7) conv kernel,
  `pre_logits.fc2.weight` (4096, 4096, 1, 1), `head.fc.weight` (classes, 4096).
- tensorflow-vgg / tensorflow-fcn `vgg16.npy`: `conv1_1` .. `conv5_3` as [HWIO kernel, bias],
  `fc6` .. `fc8` as [(in, out) kernel, bias], fc6 rows in (H, W, C) order (TF's NHWC flatten).
Kernels become HWIO and dense kernels (in, out) with fc6 rows in (H, W, C) order through lazy
permutations (`Tensor.permute`): nothing is read until the tensors are used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..arch import PLANS, POOL5_SIZE
from ..errors import ArchitectureError, FormatError
from ..weights import BatchNorm, RawLayer, SourceInfo, Tensor, VGGWeights, assemble, check_names

OIHW_TO_HWIO = (2, 3, 1, 0)
TORCHVISION_HEAD = ("classifier.0", "classifier.3", "classifier.6")
TIMM_HEAD = ("pre_logits.fc1", "pre_logits.fc2", "head.fc")
TF_HEAD = ("fc6", "fc7", "fc8")
_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias)")
_TF_CONV = re.compile(r"conv(\d+)_(\d+)")
_RUNNING_MEAN = re.compile(r"features\.(\d+)\.running_mean")
#: torch's BatchNorm2d default; state dicts do not store eps.
TORCH_BN_EPS = 1e-5


def from_torch(tensors: Mapping[str, Tensor], path: str, container: str) -> VGGWeights:
    """Canonical weights from a torchvision- or timm-layout state dict, `_bn` variants included.

    In a `_bn` VGG each conv `features.N` is followed by a BatchNorm2d `features.N+1`
    (weight, bias, running_mean, running_var, num_batches_tracked); it is attached to its conv
    (eps 1e-5: torch's default, which a state dict does not record) and folded by `to_fcn`.

    Raises:
        FormatError: not a VGG state dict we know.
        ArchitectureError: missing, unexpected or mis-shaped tensors (all listed at once).
    """
    names = set(tensors)
    if any(n.startswith("pre_logits.") for n in names):
        generation, head_names = "timm", TIMM_HEAD
    elif any(n.startswith("classifier.") for n in names):
        generation, head_names = "torchvision", TORCHVISION_HEAD
    else:
        shown = ", ".join(sorted(names)[:4])
        raise FormatError(
            f"{path}: not a torchvision or timm VGG state dict (found {shown}, ...); expected "
            "features.N.weight plus classifier.0/3/6 or pre_logits.fc1/fc2 and head.fc"
        )
    norms = {int(m.group(1)) for n in names if (m := _RUNNING_MEAN.fullmatch(n))}
    indices = sorted({int(m.group(1)) for n in names if (m := _FEATURE.fullmatch(n))} - norms)
    conv_names = [f"features.{i}" for i in indices]
    expected = {f"{n}.{p}" for n in [*conv_names, *head_names] for p in ("weight", "bias")}
    for i in norms:
        expected |= {f"features.{i}.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
        if f"features.{i}.num_batches_tracked" in names:
            expected.add(f"features.{i}.num_batches_tracked")
    check_names(path, names, expected, _torch_shapes(tensors, conv_names, head_names, generation))
    if norms and norms != {i + 1 for i in indices}:
        raise ArchitectureError(
            f"{path}: batch norms at features {sorted(norms)} do not each follow a convolution "
            f"(convolutions at {indices})"
        )
    trunk = [
        _torch_conv(tensors, n, f"features.{i + 1}" if norms else None)
        for i, n in zip(indices, conv_names, strict=True)
    ]
    if generation == "timm":
        head = [
            _torch_fc6_conv(tensors, TIMM_HEAD[0], path),
            _torch_dense(tensors, TIMM_HEAD[1]),
            _torch_dense(tensors, TIMM_HEAD[2]),
        ]
    else:
        head = [
            _torch_fc6_dense(tensors, TORCHVISION_HEAD[0]),
            _torch_dense(tensors, TORCHVISION_HEAD[1]),
            _torch_dense(tensors, TORCHVISION_HEAD[2]),
        ]
    source = SourceInfo(path, container, generation, False, "CHW", "yes" if norms else "none")
    return assemble(trunk, head, source)


def from_tensorflow_vgg(layers: Mapping[str, list[Tensor]], path: str) -> VGGWeights:
    """Canonical weights from a tensorflow-vgg `vgg16.npy` layer dict (HWIO, rows HWC already).

    Its model applies a softmax after fc8 (`prob`); the weights are the logits layer.
    """
    convs = sorted(
        (int(m.group(1)), int(m.group(2)), name)
        for name in layers
        if (m := _TF_CONV.fullmatch(name))
    )
    # Names say which block a conv is in, so a missing conv shows against the smallest VGG
    # plan that holds every conv found (conv1_2 missing from a VGG16 is still expected).
    deepest = [max([i for b, i, _ in convs if b == block], default=0) for block in range(1, 6)]
    plans = [p for p in PLANS.values() if all(n >= d for n, d in zip(p, deepest, strict=True))]
    plan = min(plans, key=sum) if plans else tuple(deepest)
    names = [f"conv{b}_{i}" for b, n in enumerate(plan, 1) for i in range(1, n + 1)]
    check_names(path, set(layers), set(names) | set(TF_HEAD))
    raws = []
    for name in names + list(TF_HEAD):
        params = layers[name]
        if len(params) != 2:
            raise FormatError(f"{path}: layer {name} has {len(params)} arrays, expected [W, b]")
        raws.append(RawLayer(name, params[0], params[1]))
    source = SourceInfo(path, "npy", "tensorflow-vgg", True, "HWC")
    return assemble(raws[: len(names)], raws[len(names) :], source)


def _torch_shapes(
    tensors: Mapping[str, Tensor], convs: list[str], head: tuple[str, ...], generation: str
) -> dict[str, str]:
    """Expected shapes of every weight and bias, from the widths the other tensors show (a
    layer's width from its bias or weight; its input from the layer before), for messages."""

    def width(layer: str) -> int | None:
        for part, axis in (("bias", 0), ("weight", 0)):
            tensor = tensors.get(f"{layer}.{part}")
            if tensor is not None and tensor.shape:
                return int(tensor.shape[axis])
        return None

    def dims(*values: int | None) -> str:
        return (
            "("
            + ", ".join("?" if v is None else str(v) for v in values)
            + ("," if len(values) == 1 else "")
            + ")"
        )

    shapes: dict[str, str] = {}
    previous: int | None = 3
    for i, layer in enumerate([*convs, *head]):
        out = width(layer)
        if i < len(convs):
            weight = dims(out, previous, 3, 3)
        elif layer == head[0]:
            side = POOL5_SIZE
            weight = (
                dims(out, previous, side, side)
                if generation == "timm"
                else dims(out, None if previous is None else previous * side * side)
            )
        elif layer == head[1] and generation == "timm":
            weight = dims(out, previous, 1, 1)
        else:
            weight = dims(out, previous)
        shapes[f"{layer}.weight"], shapes[f"{layer}.bias"] = weight, dims(out)
        previous = out
    return shapes


def _float(tensors: Mapping[str, Tensor], key: str) -> Tensor:
    """The tensor under `key`, its dtype checked (a float we can read exactly)."""
    tensor = tensors[key]
    return Tensor.wrap(tensor.source, tensor.where) if tensor.order is None else tensor


def _torch_conv(tensors: Mapping[str, Tensor], name: str, norm: str | None) -> RawLayer:
    """A conv layer: OIHW kernel -> HWIO, with the batch norm `norm` that follows it, if any."""
    kernel = _float(tensors, f"{name}.weight")
    if len(kernel.shape) == 4:
        kernel = kernel.permute(kernel.shape, OIHW_TO_HWIO)
    batch_norm = None
    if norm is not None:
        gamma, beta, mean, var = (
            _float(tensors, f"{norm}.{p}")
            for p in ("weight", "bias", "running_mean", "running_var")
        )
        batch_norm = BatchNorm(gamma, beta, mean, var, TORCH_BN_EPS)
    return RawLayer(name, kernel, _float(tensors, f"{name}.bias"), batch_norm)


def _torch_dense(tensors: Mapping[str, Tensor], name: str) -> RawLayer:
    """A dense layer (out, in), or a 1x1 conv (out, in, 1, 1) -> (in, out)."""
    kernel = _float(tensors, f"{name}.weight")
    out, rest = kernel.shape[0], int(kernel.size // max(1, kernel.shape[0]))
    if len(kernel.shape) in (2, 4):
        kernel = kernel.permute((out, rest), (1, 0))
    return RawLayer(name, kernel, _float(tensors, f"{name}.bias"))


def _torch_fc6_dense(tensors: Mapping[str, Tensor], name: str) -> RawLayer:
    """torchvision classifier.0: (F6, C*7*7) columns in (C, H, W) order -> rows in (H, W, C)."""
    kernel = _float(tensors, f"{name}.weight")
    if len(kernel.shape) != 2 or kernel.shape[1] % (POOL5_SIZE * POOL5_SIZE):
        return _torch_dense(tensors, name)  # assemble() reports the shape that is wrong
    f6, c5 = kernel.shape[0], kernel.shape[1] // (POOL5_SIZE * POOL5_SIZE)
    as_conv = kernel.permute((f6, c5, POOL5_SIZE, POOL5_SIZE), OIHW_TO_HWIO)
    rows = POOL5_SIZE * POOL5_SIZE * c5
    return RawLayer(name, as_conv.reshape((rows, f6)), _float(tensors, f"{name}.bias"))


def _torch_fc6_conv(tensors: Mapping[str, Tensor], name: str, path: str) -> RawLayer:
    """timm pre_logits.fc1: a (F6, C, 7, 7) OIHW kernel -> dense rows in (H, W, C) order."""
    kernel = _float(tensors, f"{name}.weight")
    if len(kernel.shape) != 4:
        raise ArchitectureError(
            f"{path}: {name}.weight has shape {kernel.shape}, expected (F6, C, 7, 7)"
        )
    f6 = kernel.shape[0]
    hwio = kernel.permute(kernel.shape, OIHW_TO_HWIO)
    return RawLayer(name, hwio.reshape((kernel.size // f6, f6)), _float(tensors, f"{name}.bias"))
