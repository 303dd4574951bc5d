"""Our safetensors output, both directions: tensor names, layouts and metadata written, and read
back as the network they describe. One home for the format, so the two cannot drift apart.

Names: `--names vggfcn` (default) gives `block{b}_conv{i}.kernel|bias` and `fc6.kernel|bias`,
`fc7...` for the head; `--names torch` gives `features.N.weight|bias` (torchvision's indices, so
the trunk loads into a torchvision `features` Sequential) and `fc6.weight|bias`, `fc7...`. A
reduced head (`reduce`) is `conv6`, `conv7` (and `fc8`); `--names ssd` gives the keys of
ssd.pytorch's `vgg` ModuleList: the trunk's convs at their indices `0` ... `28`, conv6 `31`,
conv7 `33` (pool5 is 30, the ReLUs between).
Layouts: `hwio` (Keras, TensorFlow, JAX) or `oihw` (`nn.Conv2d`). `__metadata__` says which,
plus where the network came from and how to feed it (`metadata`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .. import reduce
from ..arch import MIN_INPUT, PLANS, conv_names
from ..choices import LAYOUTS, NAME_SCHEMES
from ..errors import ArchitectureError, FormatError, VggfcnError
from ..fcn import FCN, ConvLayer, FCNInfo, head_name
from ..graph import ChannelOrder, OutputActivation, Preprocessing
from ..tensor import Tensor
from .names import check_names

FORMAT = "vggfcn-fcn"
FORMAT_VERSION = "1"
HWIO_TO_OIHW = (3, 2, 0, 1)
OIHW_TO_HWIO = (2, 3, 1, 0)
_PARTS = {"vggfcn": ("kernel", "bias"), "torch": ("weight", "bias"), "ssd": ("weight", "bias")}
_TRUNK = {
    "vggfcn": re.compile(r"(block(\d+)_conv(\d+))\.(?:kernel|bias)"),
    "torch": re.compile(r"(features\.(\d+))\.(?:weight|bias)"),
    "ssd": re.compile(r"((\d+))\.(?:weight|bias)"),
}
_HEAD = {
    "classifier": re.compile(r"(fc(\d+))\.(?:kernel|weight|bias)"),
    "reduced": re.compile(r"((?:conv|fc)(\d+))\.(?:kernel|weight|bias)"),
}
#: ssd.pytorch's `vgg()` ModuleList: conv6 and conv7 after pool5 (30) and between ReLUs.
SSD_HEAD = ("31", "33")
_SOFTMAX = {"softmax": "yes", "linear": "no", "sigmoid": "no", "unknown": "unknown"}
_OUTPUTS: dict[str, OutputActivation] = {
    "softmax": "softmax",
    "sigmoid": "sigmoid",
    "linear": "linear",
    "unknown": "unknown",
}


def torch_feature_indices(plan: tuple[int, ...]) -> list[int]:
    """Indices of the convs in torchvision's `features` Sequential (each conv is followed by a
    ReLU, each block by a MaxPool): 0, 2, 5, 7, 10, ... for VGG16."""
    indices, i = [], 0
    for convs in plan:
        for _ in range(convs):
            indices.append(i)
            i += 2
        i += 1
    return indices


def tensor_names(fcn: FCN, scheme: str) -> list[tuple[str, str]]:
    """(kernel name, bias name) of every layer, in model order, under a name scheme.

    Raises:
        VggfcnError: `ssd` names for anything but a reduced head of conv6 and conv7.
    """
    kernel, bias = _PARTS[scheme]
    indices = torch_feature_indices(fcn.plan)
    trunk = {
        "vggfcn": [layer.name for layer in fcn.trunk],
        "torch": [f"features.{i}" for i in indices],
        "ssd": [str(i) for i in indices],
    }[scheme]
    head = [layer.name for layer in fcn.head]
    if scheme == "ssd":
        if fcn.info.head != "reduced" or head != ["conv6", "conv7"] or fcn.name != "vgg16":
            raise VggfcnError(
                "--names ssd writes ssd.pytorch's VGG16 backbone: conv6 and conv7 of a reduced "
                "head (--head reduced), nothing else"
            )
        head = list(SSD_HEAD)
    return [(f"{n}.{kernel}", f"{n}.{bias}") for n in [*trunk, *head]]


def named_tensors(fcn: FCN, layout: str = "hwio", scheme: str = "vggfcn") -> dict[str, Tensor]:
    """Every output tensor under its output name, kernels in the output layout (lazy)."""
    out: dict[str, Tensor] = {}
    for layer, (kernel_name, bias_name) in zip(fcn.layers, tensor_names(fcn, scheme), strict=True):
        kernel = layer.kernel
        if layout == "oihw":
            kernel = kernel.permute(kernel.shape, HWIO_TO_OIHW)
        out[kernel_name] = kernel
        out[bias_name] = layer.bias
    return out


def metadata(
    fcn: FCN,
    source_name: str,
    source_sha256: str,
    layout: str = "hwio",
    scheme: str = "vggfcn",
    dtype: str = "float32",
) -> dict[str, str]:
    """`__metadata__` of a converted file: everything needed to trust and reuse it later.

    Only the source's base name is stored, never an absolute path, so the same input and options
    give the same bytes on any machine.
    """
    info = fcn.info
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": fcn.name,
        "layout": layout.upper(),
        "names": scheme,
        "dtype": dtype,
        "classes": str(fcn.classes),
        "head": info.head,
        "head_activations": ",".join(fcn.head_activations),
        "input_size": f"{info.input_size[0]},{info.input_size[1]}",
        "channel_order": info.channel_order,
        "preprocessing": info.preprocessing,
        "source_format": info.source_format,
        "source_file": source_name,
        "source_sha256": source_sha256,
        "source_softmax": _SOFTMAX[info.output_activation],
        "source_output_activation": info.output_activation,
        "source_batch_norm": info.batch_norm,
        **(
            {"use_ssd": reduce.SSD, "use_deeplab_largefov": reduce.DEEPLAB_LARGEFOV}
            if info.head == "reduced"
            else {}
        ),
    }


def read(path: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> FCN:
    """The network in a file written by `vggfcn convert`, any layout and name scheme.

    A file without `head_activations`, `input_size` or `source_output_activation` (written
    before they existed) has the stock head: ReLU after every head layer but the last, 224x224.

    Raises:
        FormatError: a format version, layout or name scheme this version cannot read, or
            metadata that does not parse.
        ArchitectureError: missing, unexpected or mis-shaped tensors (all of them listed).
    """
    layout, scheme = meta.get("layout", "").lower(), meta.get("names", "vggfcn")
    if (
        meta.get("format_version") != FORMAT_VERSION
        or layout not in LAYOUTS
        or scheme not in NAME_SCHEMES
    ):
        raise FormatError(
            f"{path}: vggfcn format {meta.get('format_version')} layout {meta.get('layout')} "
            f"names {scheme}; this version reads format {FORMAT_VERSION}, layouts "
            f"{'/'.join(LAYOUTS)}, names {'/'.join(NAME_SCHEMES)}"
        )
    kernel_part, bias_part = _PARTS[scheme]
    kind = meta.get("head", "classifier")
    if kind not in _HEAD:
        raise FormatError(f"{path}: head {kind!r}; this version reads classifier or reduced")
    keys = {
        (tuple(int(g) for g in m.groups()[1:]), m.group(1))
        for n in tensors
        if (m := _TRUNK[scheme].fullmatch(n))
    }
    head: list[str]  # the head's layers: our names, and as the file names them
    if scheme == "ssd":  # one numbering: the head is conv6 and conv7, at 31 and 33
        trunk = [key for key in sorted(keys) if key[1] not in SSD_HEAD]
        file_names = [name for name in SSD_HEAD if any(key[1] == name for key in keys)]
        head = [f"conv{6 + i}" for i in range(len(file_names))]
    else:
        trunk = sorted(keys)
        pattern = _HEAD[kind]
        found = {(int(m.group(2)), m.group(1)) for n in tensors if (m := pattern.fullmatch(n))}
        head = file_names = [name for _, name in sorted(found)]
    if not head:  # a head has at least one layer: name the first as missing
        head = ["fc6" if kind == "classifier" else "conv6"]
        file_names = [SSD_HEAD[0] if scheme == "ssd" else head[0]]
    layer_names = [name for _, name in trunk] + file_names
    check_names(path, set(tensors), {f"{n}.{p}" for n in layer_names for p in _PARTS[scheme]})
    plan = _plan([key for key, _ in trunk], scheme, path)
    expected = (
        [head_name(i) for i in range(len(head))]
        if kind == "classifier"
        else ["conv6", "conv7", "fc8"][: len(head)]
    )
    if head != expected:
        raise ArchitectureError(f"{path}: head layers {head}; expected {', '.join(expected)}")
    activations = _activations(meta, len(head), path)

    def layer(name: str, own: str, relu: bool) -> ConvLayer:
        kernel, bias = (_float(tensors[f"{name}.{p}"]) for p in (kernel_part, bias_part))
        if layout == "oihw" and len(kernel.shape) == 4:
            kernel = kernel.permute(kernel.shape, OIHW_TO_HWIO)
        return ConvLayer(own, kernel, bias, relu, name)

    names = conv_names(plan)
    trunk_layers = tuple(layer(n, names[i], True) for i, (_, n) in enumerate(trunk))
    head_layers = tuple(
        layer(stored, own, a == "relu")
        for own, stored, a in zip(head, file_names, activations, strict=True)
    )
    precision = meta.get("dtype", "float32")
    stored_as = f"vggfcn-safetensors v{FORMAT_VERSION} {layout} {scheme} {precision}"
    fcn = FCN(plan, trunk_layers, head_layers, info_from_metadata(path, meta, stored_as))
    check_shapes(fcn)
    return fcn


def _float(tensor: Tensor) -> Tensor:
    return Tensor.wrap(tensor.source, tensor.where)


def info_from_metadata(path: str, meta: Mapping[str, str], stored_as: str) -> FCNInfo:
    """What a converted file's metadata (`metadata`) says about its network, whatever format
    stores it (safetensors `__metadata__`, ONNX `metadata_props`, our `.keras` metadata).

    Raises:
        FormatError: an `input_size` that is not H,W.
    """
    return FCNInfo(
        path=path,
        source_format=meta.get("source_format", "unknown"),
        input_size=_size(meta, path),
        output_activation=_output(meta),
        channel_order=_choice(meta, "channel_order", ("rgb", "bgr")),  # type: ignore[arg-type]
        preprocessing=_choice(meta, "preprocessing", ("caffe", "torch")),  # type: ignore[arg-type]
        batch_norm=meta.get("source_batch_norm", "none"),
        precision=meta.get("dtype", "float32"),
        stored_as=stored_as,
        head="reduced" if meta.get("head") == "reduced" else "classifier",
    )


def check_shapes(fcn: FCN) -> None:
    """Every kernel and bias of an FCN against the chain of widths, all problems at once.

    Raises:
        ArchitectureError: a kernel or bias of the wrong shape.
    """
    problems = []
    channels = (
        fcn.trunk[0].kernel.shape[2] if fcn.trunk and len(fcn.trunk[0].kernel.shape) == 4 else 3
    )
    for i, layer in enumerate(fcn.layers):
        shape = layer.kernel.shape
        out = layer.bias.shape[0] if len(layer.bias.shape) == 1 else -1
        if i < len(fcn.trunk):
            want: tuple[int, ...] = (3, 3, channels, out)
        elif len(shape) == 4:
            want = (shape[0], shape[1], channels, out)
        else:
            want = (1, 1, channels, out)
        if shape != want:
            problems.append(f"{layer.source_name} kernel has shape {shape}, expected {want}")
        channels = out
    if problems:
        raise ArchitectureError(f"{fcn.path}: not a {fcn.name} FCN: " + "; ".join(problems))


def _plan(keys: list[tuple[int, ...]], scheme: str, path: str) -> tuple[int, ...]:
    """Convolutions per block, from the trunk's names."""
    if scheme == "vggfcn":
        blocks = [block for block, _ in keys]
        plan = tuple(blocks.count(b) for b in sorted(set(blocks)))
        if [k for k in keys] == [(b, i) for b, n in enumerate(plan, 1) for i in range(1, n + 1)]:
            if plan in PLANS.values():
                return plan
    else:
        indices = [index for (index,) in keys]
        for plan in PLANS.values():
            if torch_feature_indices(plan) == indices:
                return plan
    raise ArchitectureError(f"{path}: trunk layers {len(keys)} do not form a VGG plan")


def _activations(meta: dict[str, str], count: int, path: str) -> list[str]:
    text = meta.get("head_activations")
    if text is None:
        return ["relu"] * (count - 1) + ["linear"]
    values = text.split(",")
    if len(values) != count or not set(values) <= {"relu", "linear"}:
        raise FormatError(
            f"{path}: head_activations {text!r} does not name relu/linear for each of the "
            f"{count} head layers"
        )
    return values


def _size(meta: Mapping[str, str], path: str) -> tuple[int, int]:
    text = meta.get("input_size")
    if text is None:
        return (MIN_INPUT, MIN_INPUT)
    parts = text.split(",")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) < 1 << 20 for p in parts):
        raise FormatError(f"{path}: input_size {text!r} is not H,W")
    return int(parts[0]), int(parts[1])


def _output(meta: Mapping[str, str]) -> OutputActivation:
    if "source_output_activation" in meta:
        return _OUTPUTS.get(meta["source_output_activation"], "unknown")
    return {"yes": "softmax", "no": "linear"}.get(meta.get("source_softmax", ""), "unknown")  # type: ignore[return-value]


def _choice(
    meta: dict[str, str], key: str, values: tuple[str, ...]
) -> ChannelOrder | Preprocessing:
    value = meta.get(key, "unknown")
    return value if value in values else "unknown"  # type: ignore[return-value]
