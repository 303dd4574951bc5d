"""Our safetensors output, both directions: tensor names and layouts written, and read back as
the network they describe. One home for the format, so the two cannot drift apart.

Names: `--names vggfcn` (default) gives `block{b}_conv{i}.kernel|bias` and `fc6.kernel|bias`,
`fc7...` for the head; `--names torch` gives `features.N.weight|bias` (torchvision's indices, so
the trunk loads into a torchvision `features` Sequential) and `fc6.weight|bias`, `fc7...`. A
reduced head (`reduce`) is `conv6`, `conv7` (and `fc8`); `--names ssd` gives the keys of
ssd.pytorch's `vgg` ModuleList: the trunk's convs at their indices `0` ... `28`, conv6 `31`,
conv7 `33` (pool5 is 30, the ReLUs between).
Layouts: `hwio` (Keras, TensorFlow, JAX) or `oihw` (`nn.Conv2d`); dtypes float32, float16,
bfloat16. `__metadata__` says which, plus where the network came from and how to feed it
(`fcn_metadata`).
Output stride: the weights are the same numbers at 32, 16 and 8 (`atrous`), so the file holds
them once and `__metadata__` records the stride; the reader rebuilds the ops' attributes (pools,
dilations) from it, and the network it gives runs at that stride.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import BinaryIO

from ..arch import conv_names, feature_indices, name_of, plan_with
from ..atrous import atrous
from ..choices import LAYOUTS, NAME_SCHEMES
from ..errors import ArchitectureError, FormatError, OutputError, VggfcnError
from ..fcn import FCN, ConvLayer, Pool, Storage, check_shapes, head_name
from ..layouts import permutation
from ..tensor import Tensor
from . import fcn_metadata, safetensors_io
from .job import Job
from .names import check_names

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


def tensor_names(fcn: FCN, scheme: str) -> list[tuple[str, str]]:
    """(kernel name, bias name) of every layer, in model order, under a name scheme.

    Raises:
        VggfcnError: `ssd` names for anything but a reduced head of conv6 and conv7.
    """
    kernel, bias = _PARTS[scheme]
    indices = feature_indices(fcn.plan)[0]
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


def named_tensors(fcn: FCN, layout: str = "HWIO", scheme: str = "vggfcn") -> dict[str, Tensor]:
    """Every output tensor under its output name, kernels in the output layout (lazy)."""
    out: dict[str, Tensor] = {}
    for layer, (kernel_name, bias_name) in zip(fcn.layers, tensor_names(fcn, scheme), strict=True):
        kernel = layer.kernel
        if layout.upper() != "HWIO":
            kernel = kernel.permute(kernel.shape, permutation("HWIO", layout.upper()))
        out[kernel_name] = kernel
        out[bias_name] = layer.bias
    return out


def write(f: BinaryIO, job: Job) -> None:
    """`job.Writer.write`: the network's tensors under the storage's names and layout, in
    its dtype; the header is written with the draft metadata and rewritten, in place, with the
    final one once the data is out.

    Raises:
        OutputError: the network's pools and dilations are not `atrous`'s at the stride it
            records, which is all the file can say of them.
    """
    _check_attributes(job.fcn)
    storage = job.storage
    safetensors_io.write(
        f,
        named_tensors(job.fcn, storage.layout, storage.names),
        job.metadata.draft,
        job.progress,
        final_metadata=job.metadata.final,
        allow_nonfinite=job.allow_nonfinite,
        dtype=storage.dtype,
    )


@contextlib.contextmanager
def open(path: str) -> Iterator[FCN]:  # noqa: A001 (the reader contract's name)
    """A converted safetensors file, read back (tensors lazy while the file is open)."""
    tensors, meta = safetensors_io.open_tensors(path)
    yield read(path, tensors, meta)


def _check_attributes(fcn: FCN) -> None:
    """Refuse a network whose ops `read` would not rebuild: one read faithfully from an edited
    ONNX or Keras file may carry pools and dilations of no output stride."""
    stride = fcn.info.output_stride
    if _attributes(fcn) != _attributes(atrous(fcn, stride)):
        raise OutputError(
            f"{fcn.path}: its pools and dilations are not those of output stride {stride}, and "
            "a safetensors file records only the stride; write it as .onnx or .keras"
        )


def _attributes(fcn: FCN) -> tuple[tuple[Pool, ...], tuple[int, ...]]:
    return fcn.block_pools, tuple(layer.dilation for layer in fcn.layers)


def read(path: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> FCN:
    """The network in a file written by `vggfcn convert`, any layout and name scheme, at the
    output stride it records (`atrous`: the same weights, dilated).

    A file without `head_activations`, `input_size` or `source_output_activation` (written
    before they existed) has the stock head: ReLU after every head layer but the last, 224x224.

    Raises:
        FormatError: a format version, layout or name scheme this version cannot read, or
            metadata that does not parse.
        ArchitectureError: missing, unexpected or mis-shaped tensors (all of them listed).
    """
    fcn_metadata.check_version(path, meta)
    layout, scheme = meta.get("layout", "").lower(), meta.get("names", "vggfcn")
    if layout not in LAYOUTS or scheme not in NAME_SCHEMES:
        raise FormatError(
            f"{path}: layout {meta.get('layout')} names {scheme}; this version reads layouts "
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
            kernel = kernel.permute(kernel.shape, permutation("OIHW", "HWIO"))
        return ConvLayer(own, kernel, bias, relu, name)

    names = conv_names(plan)
    trunk_layers = tuple(layer(n, names[i], True) for i, (_, n) in enumerate(trunk))
    head_layers = tuple(
        layer(stored, own, a == "relu")
        for own, stored, a in zip(head, file_names, activations, strict=True)
    )
    storage = Storage("safetensors", layout.upper(), scheme, _dtype(tensors))
    fcn = FCN(plan, trunk_layers, head_layers, fcn_metadata.info(path, meta, storage))
    check_shapes(fcn)
    return atrous(fcn, fcn.info.output_stride)


def _float(tensor: Tensor) -> Tensor:
    return Tensor.wrap(tensor.source, tensor.where)


def _plan(keys: list[tuple[int, ...]], scheme: str, path: str) -> tuple[int, ...]:
    """Convolutions per block, from the trunk's names: exactly as `tensor_names` writes them."""
    if scheme == "vggfcn":
        blocks = [block for block, _ in keys]
        plan = tuple(blocks.count(b) for b in sorted(set(blocks)))
        if keys == [(b, i) for b, n in enumerate(plan, 1) for i in range(1, n + 1)]:
            if name_of(plan):
                return plan
    else:
        indices = [index for (index,) in keys]
        found = plan_with(len(indices))
        if found and feature_indices(found)[0] == indices:
            return found
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


def _dtype(tensors: dict[str, Tensor]) -> str:
    """The precision the file's tensors are stored in: one for all, as we write them; "mixed"
    for a file edited since (each tensor is still read exactly)."""
    found = {getattr(t.source, "storage", None) or t.source.dtype.name for t in tensors.values()}
    return found.pop() if len(found) == 1 else "mixed"
