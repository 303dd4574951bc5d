"""Named-tensor checkpoints (PyTorch state dicts, tensorflow-vgg .npy) as source graphs.

A state dict holds tensors, not modules: the structure comes from the names, read against the
layouts people actually save, and every tensor stays as stored (OIHW convs, (out, in) dense):

- torchvision `vgg*`: `features.N.weight|bias` (3x3 convs, `_bn` variants with a BatchNorm2d at
  N+1), then `classifier.{i}` Linear layers — the stock three (0, 3, 6) or a fine-tuned
  Sequential of any length — after a channels-first flatten of pool5 (its (C, H, W) order);
- timm `vgg*`: `features.N.*`, `pre_logits.fc1` a 7x7 conv over pool5, `pre_logits.fc2` a 1x1
  conv, a global average pool, `head.fc`;
- all of it under any common prefix (`module.` from DataParallel, `model.` from Lightning, ...),
  with integer bookkeeping (`num_batches_tracked`) ignored;
- tensorflow-vgg / tensorflow-fcn `vgg16.npy`: `conv1_1` .. as [HWIO kernel, bias], `fc6` ..
  `fc8` as [(in, out) kernel, bias] after a channels-last flatten, softmax after fc8.

Modules without weights (ReLU, Dropout, MaxPool) leave no trace in a state dict; where they sit
is what torchvision and timm build: a ReLU after each conv (after its batch norm), a pool after
each block, ReLU and Dropout between classifier layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ..arch import POOL5_SIZE, family_counts, feature_indices, plan_holding, plan_of_features
from ..errors import ArchitectureError, FormatError
from ..graph import (
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    InputSpec,
    Op,
    Provenance,
    SourceGraph,
    vgg_trunk,
)
from ..tensor import Tensor
from .names import check_names

_FEATURE = re.compile(r"(.*?)features\.(\d+)\.weight")
_LAYER = re.compile(r"features\.(\d+)\.(weight|bias|running_mean|running_var)")
_CLASSIFIER = re.compile(r"classifier\.(?:(\d+)\.)?(weight|bias|running_mean|running_var)")
_TF_CONV = re.compile(r"conv(\d+)_(\d+)")
TF_HEAD = ("fc6", "fc7", "fc8")
TIMM_HEAD = ("pre_logits.fc1", "pre_logits.fc2", "head.fc")
#: torch's BatchNorm default; state dicts do not store eps.
TORCH_BN_EPS = 1e-5
#: What a module between two weighted ones is assumed to be: no state dict records it.
_ASSUMED = "ReLU and Dropout between Linear layers (torchvision's)"


def from_torch(tensors: Mapping[str, Tensor], path: str, container: str) -> SourceGraph:
    """The source graph of a torchvision- or timm-layout state dict, `_bn` variants included.

    Raises:
        FormatError: not a VGG state dict we know, or two VGG trunks under different prefixes.
        ArchitectureError: missing, unexpected or mis-shaped tensors (all listed at once).
    """
    tensors, prefix, others = _unprefixed(_without_bookkeeping(tensors), path)
    names = set(tensors)
    if any(n.startswith("pre_logits.") for n in names):
        generation = "timm"
    elif any(n.startswith("classifier.") for n in names):
        generation = "torchvision"
    else:
        shown = ", ".join(sorted(names)[:4])
        raise FormatError(
            f"{path}: not a torchvision or timm VGG state dict (found {shown}, ...); expected "
            "features.N.weight plus classifier.N.weight or pre_logits.fc1/fc2 and head.fc"
        )
    norms = {
        int(m.group(1))
        for n in names
        if (m := _LAYER.fullmatch(n)) and m.group(2) == "running_mean"
    }
    indices = sorted({int(m.group(1)) for n in names if (m := _LAYER.fullmatch(n))} - norms)
    convs = [f"features.{i}" for i in indices]
    linears, norms1d = (list(TIMM_HEAD), []) if generation == "timm" else _classifier(names, path)
    expected = {f"{n}.{p}" for n in convs for p in ("weight", "bias")}
    expected |= {f"{n}.weight" for n in linears}
    if any(f"{n}.bias" in names for n in linears):  # bias-less Linear layers: all, or none
        expected |= {f"{n}.bias" for n in linears}
    for n in [*(f"features.{i}" for i in norms), *norms1d]:
        expected |= {f"{n}.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    check_names(path, names, expected, _torch_shapes(tensors, convs, linears, generation))
    if norms and norms != {i + 1 for i in indices}:
        raise ArchitectureError(
            f"{path}: batch norms at features {sorted(norms)} do not each follow a convolution "
            f"(convolutions at {indices})"
        )
    plan = _plan(indices, norms, path)
    trunk = vgg_trunk(
        [
            Conv(n, _float(tensors, f"{n}.weight"), _float(tensors, f"{n}.bias"), "OIHW")
            for n in convs
        ],
        plan,
        [_torch_norm(tensors, f"features.{i + 1}") if norms else None for i in indices],
        _pool_names(indices, plan, bool(norms)),
    )
    head = _timm_head(tensors) if generation == "timm" else _torchvision_head(tensors, linears)
    assumed = (_ASSUMED,) if generation == "torchvision" and len(linears) > 1 else ()
    notes: tuple[str, ...] = ()
    if prefix:  # the file's own names are shown: with the prefix the network was read under
        ignored = f"; {others} other tensor(s) beside it ignored" if others else ""
        notes = (f"every VGG key is under {prefix!r} (a wrapper's prefix){ignored}",)
    return SourceGraph(
        ops=tuple(_named(op, prefix) for op in trunk + head),
        input=InputSpec(channel_order="rgb", preprocessing="torch"),
        output_activation="linear",
        provenance=Provenance(
            path=path,
            format=container,
            generation=generation,
            notes=notes,
            recorded=False,
            assumed=assumed,
        ),
    )


def from_tensorflow_vgg(layers: Mapping[str, list[Tensor]], path: str) -> SourceGraph:
    """The source graph of a tensorflow-vgg `vgg16.npy` layer dict (HWIO, rows HWC already).

    Its model takes BGR images minus the ImageNet means and applies a softmax after fc8 (`prob`).
    """
    convs = sorted(
        (int(m.group(1)), int(m.group(2)), name)
        for name in layers
        if (m := _TF_CONV.fullmatch(name))
    )
    # Names say which block a conv is in, so a missing conv shows against the smallest VGG
    # plan that holds every conv found (conv1_2 missing from a VGG16 is still expected).
    deepest = [max([i for b, i, _ in convs if b == block], default=0) for block in range(1, 6)]
    plan = plan_holding(deepest) or tuple(deepest)
    names = [f"conv{b}_{i}" for b, n in enumerate(plan, 1) for i in range(1, n + 1)]
    check_names(path, set(layers), set(names) | set(TF_HEAD))
    pairs = {}
    for name in names + list(TF_HEAD):
        params = layers[name]
        if len(params) != 2:
            raise FormatError(f"{path}: layer {name} has {len(params)} arrays, expected [W, b]")
        pairs[name] = (params[0], params[1])
    ops: list[Op] = vgg_trunk([Conv(n, *pairs[n], "HWIO") for n in names], plan)
    ops.append(Flatten("flatten", "HWC"))
    for i, name in enumerate(TF_HEAD):
        ops.append(Dense(name, *pairs[name], "IO"))
        if i < len(TF_HEAD) - 1:
            ops.append(Activation(f"{name}.relu", "relu", fused=True))
    return SourceGraph(
        ops=tuple(ops),
        input=InputSpec(channel_order="bgr", preprocessing="caffe"),
        output_activation="softmax",
        provenance=Provenance(path=path, format="npy", generation="tensorflow-vgg", recorded=False),
    )


def _named(op: Op, prefix: str) -> Op:
    """`op` under its name in the file: the wrapper's prefix before the module's own name
    (torch's `torch.flatten` and modules assumed between layers are no keys of the file)."""
    own = not isinstance(op, Flatten) and "(assumed)" not in op.name
    return replace(op, name=prefix + op.name) if prefix and own else op


def _without_bookkeeping(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop integer bookkeeping (BatchNorm's `num_batches_tracked`): counters, not weights."""
    return {
        name: t
        for name, t in tensors.items()
        if not (name.endswith("num_batches_tracked") and np.dtype(t.source.dtype).kind in "iub")
    }


def _unprefixed(tensors: dict[str, Tensor], path: str) -> tuple[dict[str, Tensor], str, int]:
    """The VGG's tensors with their common prefix (`module.`, `model.`, ...) removed, the
    prefix, and how many tensors lie outside it.

    Tensors outside that prefix belong to something else the checkpoint saved (a loss's class
    weights, an EMA copy under another name...) and are left out.

    Raises:
        FormatError: VGG trunks under two different prefixes (which one is meant?).
    """
    prefixes = {m.group(1) for n in tensors if (m := _FEATURE.fullmatch(n))}
    if len(prefixes) > 1:
        shown = ", ".join(repr(p or "(none)") for p in sorted(prefixes))
        raise FormatError(
            f"{path}: holds VGG trunks under several prefixes ({shown}); expected one network"
        )
    prefix = prefixes.pop() if prefixes else ""
    inside = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
    return inside, prefix, len(tensors) - len(inside)


def _classifier(names: set[str], path: str) -> tuple[list[str], list[str]]:
    """(Linear layers, BatchNorm1d layers) of a torchvision `classifier`, in index order.

    A `classifier` that is one Linear (`classifier.weight`) counts as `classifier`. A batch
    norm must follow a Linear directly (`Linear, BatchNorm1d, ReLU`): elsewhere, a state dict
    cannot say on which side of the activation it sits.
    """
    found = {
        "classifier" if m.group(1) is None else f"classifier.{m.group(1)}"
        for n in names
        if (m := _CLASSIFIER.fullmatch(n))
    }
    layers = sorted(found, key=_index)
    norms = [n for n in layers if f"{n}.running_mean" in names]
    linears = [n for n in layers if n not in norms]
    for n in norms:
        if f"classifier.{_index(n) - 1}" not in linears:
            raise ArchitectureError(
                f"{path}: {n} is a batch norm that does not directly follow a Linear layer; "
                "a state dict cannot say where it sits against the activations"
            )
    return linears, norms


def _torchvision_head(tensors: Mapping[str, Tensor], layers: list[str]) -> list[Op]:
    """Flatten (C, H, W), then each Linear; a BatchNorm1d right after one is its own op, and
    ReLU + Dropout sit between Linear layers, as torchvision builds them.

    The ReLU and Dropout have no weights, so no names in the file: where the indices leave
    exactly their room (classifier.0, [BatchNorm1d .1,] ReLU, Dropout, classifier.3 or .4) they
    get the indices torch gives them; elsewhere their names say they were assumed.
    """
    ops: list[Op] = [Flatten("flatten", "CHW")]
    for i, name in enumerate(layers):
        ops.append(Dense(name, _float(tensors, f"{name}.weight"), _optional(tensors, name), "OI"))
        after = _index(name) + 1
        if f"classifier.{after}.running_mean" in tensors:
            ops.append(_torch_norm(tensors, f"classifier.{after}"))
            after += 1
        if i + 1 < len(layers):
            if _index(layers[i + 1]) == after + 2:
                relu, dropout = f"classifier.{after}", f"classifier.{after + 1}"
            else:
                relu, dropout = f"{name} relu (assumed)", f"{name} dropout (assumed)"
            ops += [Activation(relu, "relu", fused=True), Dropout(dropout)]
    return ops


def _timm_head(tensors: Mapping[str, Tensor]) -> list[Op]:
    """timm's ConvMlp (7x7 conv, ReLU, Dropout, 1x1 conv, ReLU), global average pool, fc."""
    fc1, fc2, fc = TIMM_HEAD
    second = _float(tensors, f"{fc2}.weight")
    middle: Op = (
        Conv(fc2, second, _optional(tensors, fc2), "OIHW", "valid")
        if len(second.shape) == 4
        else Dense(fc2, second, _optional(tensors, fc2), "OI")
    )
    return [
        Conv(fc1, _float(tensors, f"{fc1}.weight"), _optional(tensors, fc1), "OIHW", "valid"),
        Activation(f"{fc1}.relu", "relu", fused=True),
        Dropout("pre_logits.drop"),
        middle,
        Activation(f"{fc2}.relu", "relu", fused=True),
        GlobalAvgPool("head.global_pool"),
        Dense(fc, _float(tensors, f"{fc}.weight"), _optional(tensors, fc), "OI"),
    ]


def _index(name: str) -> int:
    return int(name.rsplit(".", 1)[1]) if name.count(".") else 0


def _plan(indices: list[int], norms: set[int], path: str) -> tuple[int, ...]:
    """Convolutions per block, from where `features` holds them."""
    plan = plan_of_features(indices, bool(norms))
    if plan is None:
        raise ArchitectureError(
            f"{path}: found {len(indices)} convolution layers; a VGG has {family_counts()}"
        )
    return plan


def _pool_names(indices: list[int], plan: tuple[int, ...], norms: bool) -> list[str]:
    """Each block's pool, named by its place in `features`: after the block's last conv and
    its ReLU (and batch norm), wherever this state dict numbers the convs."""
    ends = [indices[sum(plan[: b + 1]) - 1] for b in range(len(plan))]
    step = feature_indices((1,), norms)[1][0]  # a pool's distance from its block's last conv
    return [f"features.{end + step}" for end in ends]


def _torch_norm(tensors: Mapping[str, Tensor], name: str) -> BatchNorm:
    gamma, beta, mean, var = (
        _float(tensors, f"{name}.{p}") for p in ("weight", "bias", "running_mean", "running_var")
    )
    return BatchNorm(name, gamma, beta, mean, var, TORCH_BN_EPS)


def _optional(tensors: Mapping[str, Tensor], name: str) -> Tensor | None:
    return _float(tensors, f"{name}.bias") if f"{name}.bias" in tensors else None


def _float(tensors: Mapping[str, Tensor], key: str) -> Tensor:
    """The tensor under `key`, its dtype checked (a float we can read exactly)."""
    tensor = tensors[key]
    return Tensor.wrap(tensor.source, tensor.where)


def _torch_shapes(
    tensors: Mapping[str, Tensor], convs: list[str], head: list[str], generation: str
) -> dict[str, str]:
    """Expected shapes of every weight and bias, from the widths the other tensors show (a
    layer's width from its bias or weight; its input from the layer before), for messages."""

    def width(layer: str) -> int | None:
        for part in ("bias", "weight"):
            tensor = tensors.get(f"{layer}.{part}")
            if tensor is not None and tensor.shape:
                return int(tensor.shape[0])
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
        elif head and layer == head[0]:
            side = POOL5_SIZE
            weight = (
                dims(out, previous, side, side)
                if generation == "timm"
                else dims(out, None if previous is None else previous * side * side)
            )
        elif generation == "timm" and layer == TIMM_HEAD[1]:
            weight = dims(out, previous, 1, 1)
        else:
            weight = dims(out, previous)
        shapes[f"{layer}.weight"], shapes[f"{layer}.bias"] = weight, dims(out)
        previous = out
    return shapes
