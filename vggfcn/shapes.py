"""A source graph checked before anyone runs or compiles it, and the input size it was built for.

Every tensor's shape is checked, in the file's own layout, against what flows into its op, and
every problem found is reported in one message, so a user fixes a file once, not five times.
The input size comes from the file when it records one, else from the user, else from the first
dense layer's inputs (a flattened p x p x C pool5 has p*p*C of them), else VGG's 224x224.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .arch import MIN_INPUT, POOL5_SIZE, STRIDE, family_counts, name_of
from .errors import ArchitectureError
from .graph import (
    Affine,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool,
    Op,
    SourceGraph,
    Weighted,
    pool5_side,
)
from .layouts import out_axis, shape_in, sizes_of


def checked(graph: SourceGraph, input_size: tuple[int, int] | None = None) -> SourceGraph:
    """The graph with its input size resolved, once every shape in it agrees.

    Args:
        input_size: (H, W) the model was built for, overriding what the file says (the user's
            `--input-size`).
    Raises:
        ArchitectureError: not a VGG trunk, no head (a "notop" file), or wrong shapes.
    """
    path = graph.path
    trunk, head = graph.split()
    convs = [op for op in trunk if isinstance(op, Conv)]
    if not convs:
        raise ArchitectureError(f"{path}: no convolution layers found; is this a VGG checkpoint?")
    plan = block_plan(trunk)
    name = name_of(plan)
    if name is None:
        counts = family_counts()
        raise ArchitectureError(
            f"{path}: found {len(convs)} convolution layers in blocks {list(plan)}; "
            f"a VGG has {counts}"
        )
    if not any(isinstance(op, Weighted) for op in head):
        raise ArchitectureError(
            f"{path}: no classifier layers (fc1/fc2/predictions) found: this looks like an "
            "include_top=False ('notop') file; there is no head to convert"
        )
    problems: list[str] = []
    channels = _check_trunk(trunk, graph.input.channels, problems)
    size, size_from = _input_size(graph, input_size, channels)
    pools = [op for op in trunk if isinstance(op, MaxPool)]
    window = (pool5_side(size[0], pools), pool5_side(size[1], pools))
    _check_head(head, window, channels, problems)
    if problems and size_from == "option":
        _blame_the_option(graph, size, channels, problems)
    if problems:
        raise ArchitectureError(f"{path}: not a {name} classifier: " + "; ".join(problems))
    return graph.with_input(size=size, size_from=size_from)


def _blame_the_option(
    graph: SourceGraph, size: tuple[int, int], channels: int, problems: list[str]
) -> None:
    """When the shapes agree at the size the file itself implies, the --input-size given is
    what is wrong, not the file: say so, and what the file implies.

    Raises:
        ArchitectureError: the option disagrees with the file.
    """
    trunk, head = graph.split()
    own, own_from = _input_size(graph, None, channels)
    if own_from == "default" or own == size:
        return
    pools = [op for op in trunk if isinstance(op, MaxPool)]
    p, q = pool5_side(own[0], pools), pool5_side(own[1], pools)
    if _head_problems(head, (p, q), channels):
        return
    first = next(op for op in head if isinstance(op, Weighted))
    why = (
        "its model config records it"
        if own_from == "file"
        else f"{first.name} reads a {p}x{q}x{channels} pool5"
    )
    raise ArchitectureError(
        f"{graph.path}: --input-size {size[0]},{size[1]} disagrees with the file, which was "
        f"built for {own[0]}x{own[1]} inputs ({why}); leave --input-size out"
    )


def _head_problems(head: Sequence[Op], window: tuple[int, int], channels: int) -> list[str]:
    problems: list[str] = []
    _check_head(head, window, channels, problems)
    return problems


def block_plan(trunk: Sequence[Op]) -> tuple[int, ...]:
    """Convolutions per block: the convs counted between max-pools."""
    plan, count = [], 0
    for op in trunk:
        if isinstance(op, Conv):
            count += 1
        elif isinstance(op, MaxPool):
            plan.append(count)
            count = 0
    return tuple(plan)


def in_out(op: Weighted) -> tuple[int, int] | None:
    """(inputs, outputs) of a kernel as its layout stores them; None for the wrong rank."""
    if len(op.kernel.shape) != len(op.layout):
        return None
    sizes = sizes_of(op.layout, op.kernel.shape)
    return sizes["I"], sizes["O"]


def kernel_shape(op: Weighted, kh: int, kw: int, cin: int, cout: int) -> tuple[int, ...]:
    """The shape `op`'s kernel must have, in its own layout, for these sizes."""
    return shape_in(op.layout, {"H": kh, "W": kw, "I": cin, "O": cout})


def spatial(op: Conv) -> tuple[int, int] | None:
    """(kh, kw) of a convolution's kernel in its own layout; None for the wrong rank."""
    if len(op.kernel.shape) != len(op.layout):
        return None
    sizes = sizes_of(op.layout, op.kernel.shape)
    return sizes["H"], sizes["W"]


def _width(op: Weighted, following: Weighted | None) -> int:
    """Output width of `op`, chosen so that a message names the tensor that is wrong.

    Kernel and bias usually agree. When they do not, the next layer's input width decides which
    one to believe: a transposed fc6 kernel then reads "expected (25088, 4096)" instead of
    turning every later layer into an error.
    """
    dims = in_out(op)
    candidates = ([] if dims is None else [dims[1]]) + (
        [op.bias.shape[0]] if op.bias is not None and len(op.bias.shape) == 1 else []
    )
    if not candidates:
        return 0
    if len(set(candidates)) > 1 and following is not None:
        next_dims = in_out(following)
        if next_dims is not None and next_dims[0] in candidates:
            return next_dims[0]
    return candidates[-1]


def _check_weighted(op: Weighted, want: tuple[int, ...], problems: list[str]) -> None:
    if op.kernel.shape != want:
        problems.append(f"{op.name} kernel has shape {op.kernel.shape}, expected {want}")
    width = want[out_axis(op.layout)]
    if op.bias is not None and op.bias.shape != (width,):
        problems.append(f"{op.name} bias has shape {op.bias.shape}, expected ({width},)")


def _check_norm(op: BatchNorm | Affine, features: int, problems: list[str]) -> None:
    """A batch norm's vectors, or an `Affine`'s, one value per channel (or feature)."""
    parts = (
        (("scale", op.scale), ("shift", op.shift))
        if isinstance(op, Affine)
        else (("gamma", op.gamma), ("beta", op.beta), ("mean", op.mean), ("var", op.var))
    )
    what = "affine" if isinstance(op, Affine) else "batch-norm"
    for part, tensor in parts:
        if tensor is not None and tensor.shape != (features,):
            problems.append(
                f"{op.name} {what} {part} has shape {tensor.shape}, expected ({features},)"
            )


def _check_trunk(trunk: Sequence[Op], channels: int, problems: list[str]) -> int:
    """Check the trunk's convolutions chain from `channels`; returns pool5's channels."""
    convs = [op for op in trunk if isinstance(op, Conv)]
    index = 0
    for op in trunk:
        if isinstance(op, Conv):
            index += 1
            out = _width(op, convs[index] if index < len(convs) else None)
            _check_weighted(op, kernel_shape(op, 3, 3, channels, out), problems)
            if op.padding != "same":
                problems.append(f"{op.name} pads '{op.padding}', expected 'same' (3x3, pad 1)")
            channels = out
        elif isinstance(op, BatchNorm | Affine):
            _check_norm(op, channels, problems)
    return channels


def _input_size(
    graph: SourceGraph, override: tuple[int, int] | None, channels: int
) -> tuple[tuple[int, int], str]:
    """The input size and how it is known (see `InputSpec.size_from`)."""
    if override is not None:
        return override, "option"
    if graph.input.size is not None:
        return graph.input.size, "file"
    _, head = graph.split()
    flattened = False
    for op in head:
        if isinstance(op, Flatten):
            flattened = True
        elif isinstance(op, GlobalAvgPool | GlobalMaxPool):
            break
        elif isinstance(op, Conv):
            kh, kw = spatial(op) or (POOL5_SIZE, POOL5_SIZE)
            return (kh * STRIDE, kw * STRIDE), "fan-in"
        elif isinstance(op, Dense):
            dims = in_out(op)
            if flattened and dims is not None and channels and dims[0] % channels == 0:
                side = math.isqrt(dims[0] // channels)
                if side > 0 and side * side * channels == dims[0]:
                    return (side * STRIDE, side * STRIDE), "fan-in"
            break
    return (MIN_INPUT, MIN_INPUT), "default"


def _check_head(
    head: Sequence[Op], window: tuple[int, int], channels: int, problems: list[str]
) -> None:
    """Walk the head from the pool5 window: a map (h, w, c), flattened, or a vector."""
    h, w = window
    c = channels
    mode = "map"  # "map" | "flat" | "vector"
    weighted = [op for op in head if isinstance(op, Weighted)]
    following = iter([*weighted[1:], None])  # each weighted op's successor, in turn
    first_dense = True
    for op in head:
        if isinstance(op, Conv):
            kh, kw = spatial(op) or (h, w)
            if op.padding != "valid" and (kh, kw) != (1, 1):  # 1x1 "same" pads nothing
                problems.append(f"{op.name} pads '{op.padding}'; head convolutions are 'valid'")
            out = _width(op, next(following))
            if mode != "map":
                problems.append(f"{op.name} is a convolution after the volume was flattened")
            elif kh > h or kw > w:
                problems.append(f"{op.name} has a {kh}x{kw} kernel over a {h}x{w} map")
            _check_weighted(op, kernel_shape(op, kh, kw, c, out), problems)
            h, w, c = max(1, h - kh + 1), max(1, w - kw + 1), out
        elif isinstance(op, Flatten):
            mode = "flat"
        elif isinstance(op, GlobalAvgPool | GlobalMaxPool):
            mode, h, w = "vector", 1, 1
        elif isinstance(op, Dense):
            inputs = h * w * c if mode == "flat" else c
            if mode == "map" and (h, w) != (1, 1):
                problems.append(
                    f"{op.name} is a dense layer on a {h}x{w} map; expected a Flatten or a "
                    "GlobalAveragePooling2D before it"
                )
            out = _width(op, next(following))
            want = kernel_shape(op, 1, 1, inputs, out)
            _check_weighted(op, want, problems)
            dims = in_out(op)
            if first_dense and mode == "flat" and (dims is None or dims[0] != inputs):
                problems.append(
                    f"{op.name} must read the {h}x{w}x{c} pool5 volume ({inputs} inputs)"
                )
            first_dense = False
            mode, h, w, c = "vector", 1, 1, out
        elif isinstance(op, BatchNorm | Affine):
            _check_norm(op, h * w * c if mode == "flat" else c, problems)
    if mode == "flat":
        problems.append("the head ends in a flatten, without a dense layer after it")
    elif (h, w) != (1, 1):
        problems.append(f"the head ends in a {h}x{w} map, not one vector of logits")


def assumptions(graph: SourceGraph) -> tuple[str, ...]:
    """What was assumed about a checked graph that its file does not record, as one line for
    the user; nothing when the file records its structure or holds the stock head.

    Files of weights alone (Keras weight files, state dicts) are converted as the VGG family
    and their names imply, which is right for the stock classifier and for the fine-tuned
    models people save that way — but for a head of another size or depth, the input size and
    the activations between layers are guesses, and a guess must not be silent:

        vgg.weights.h5 has no model config; assuming a 192x192 input (fc1 reads 6x6x512),
        ReLU between dense layers and logits from the last (256 outputs); --input-size overrides
    """
    provenance, size = graph.provenance, graph.input.size
    trunk, head = graph.split()
    weighted = [op for op in head if isinstance(op, Weighted)]
    if provenance.recorded or size is None or not weighted:
        return ()
    averaged_first = next((isinstance(op, GlobalAvgPool) for op in head if not _inert(op)), False)
    stock = size == (MIN_INPUT, MIN_INPUT) and len(weighted) == 3 and not averaged_first
    if stock:
        return ()
    pools = [op for op in trunk if isinstance(op, MaxPool)]
    p, q = pool5_side(size[0], pools), pool5_side(size[1], pools)
    channels = _check_trunk(trunk, graph.input.channels, [])
    parts = []
    if graph.input.size_from == "fan-in":
        reads = f"{weighted[0].name} reads {p}x{q}x{channels}"
        parts.append(f"a {size[0]}x{size[1]} input ({reads})")
    elif graph.input.size_from == "default":
        parts.append(f"a {size[0]}x{size[1]} input (the default: a global pool reads any size)")
    parts += provenance.assumed
    last = in_out(weighted[-1])
    parts.append(f"logits from the last ({last[1] if last else '?'} outputs)")
    said = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    overrides = "; --input-size overrides" if graph.input.size_from in ("fan-in", "default") else ""
    name = os.path.basename(provenance.path)
    return (f"{name} has no model config; assuming {said}{overrides}",)


def _inert(op: Op) -> bool:
    """Ops between pool5 and the head's first real op that change nothing."""
    return isinstance(op, Dropout)
