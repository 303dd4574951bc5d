"""The Caffe reader: caffemodels that protobuf itself wrote are read back exactly and run as
Caffe runs them; hostile or broken ones are refused in one line.

protobuf (fixtures/caffe.py) is only the writer and torch only the referee for Caffe's semantics
(ceil-mode pooling, (C, H, W) flatten, (out, in) weights); the reader needs neither.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import safetensors.numpy
import torch
from click.testing import CliRunner
from google.protobuf.message import Message
from torch.nn import functional as F  # noqa: N812

from fixtures.caffe import LAYER_TYPE, CaffeLayer, caffe_net, write_caffemodel
from tests.helpers import assert_reader_refuses, stdout_without
from vggfcn import formats, forward, referee
from vggfcn.arch import PLANS
from vggfcn.cli import main
from vggfcn.errors import ArchitectureError, FormatError
from vggfcn.formats import caffe, detect
from vggfcn.formats.region import FileRegion
from vggfcn.graph import Conv, Dense, MaxPool, SourceGraph

CAFFE = "Caffe .caffemodel"


@contextmanager
def _loaded(path: Path) -> Iterator[SourceGraph]:
    with formats.load(str(path)) as graph:
        assert isinstance(graph, SourceGraph)
        yield graph


def _write(path: Path, net: Message) -> Path:
    path.write_bytes(net.SerializeToString())
    return path


def _torch_logits(layers: list[CaffeLayer], plan: tuple[int, ...], images: np.ndarray) -> Any:
    """What Caffe computes, from the arrays as written: NCHW, 3x3 pad 1 convolutions, ceil-mode
    2x2 max pools, then (out, in) inner products over the (C, H, W) flattened volume."""
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    weights = [(torch.from_numpy(w.kernel), torch.from_numpy(w.bias)) for w in layers]
    convs = iter(weights)
    for count in plan:
        for _ in range(count):
            x = F.relu(F.conv2d(x, *next(convs), padding=1))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = torch.flatten(x, 1)
    for i, (kernel, bias) in enumerate(weights[sum(plan) :]):
        x = F.linear(x, kernel, bias)
        x = F.relu(x) if i < 2 else x
    return x.numpy()


def _referee_logits(graph: SourceGraph, images: np.ndarray) -> np.ndarray:
    return referee.head(graph, referee.pool5(graph, images, forward.Scratch()))


def _images(side: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(-128, 128, (2, side, side, 3)).astype(np.float32)


def _refused(path: Path, *patterns: str) -> None:
    """The reader's contract: one FormatError line that names the file and the problem."""
    assert_reader_refuses(caffe.open, path, *patterns, error=FormatError)


# ---------------------------------------------------------------------------- good files


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_runs_as_caffe_does(tmp_path: Path, layout: str, arch: str) -> None:
    path = tmp_path / f"{arch}.caffemodel"
    layers = write_caffemodel(path, layout, arch)  # type: ignore[arg-type]
    with _loaded(path) as graph:
        assert graph.provenance.label == f"caffemodel/{layout}"
        assert (graph.output_activation, graph.input.channel_order) == ("softmax", "bgr")
        assert graph.input.size == (224, 224) and graph.input.size_from == "fan-in"
        names = [op.name for op in graph.ops if isinstance(op, Conv | Dense)]
        assert names == [w.name for w in layers]
        assert all(op.ceil for op in graph.ops if isinstance(op, MaxPool))
        # 200 is no multiple of 32: the pools round 25 up to 13, so ceil mode is exercised
        for side in (224, 200):
            expected = _torch_logits(layers, PLANS[arch], _images(side))
            scale = max(1.0, float(np.abs(expected).max()))
            got = _referee_logits(graph, _images(side))
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_cli_converts_and_verifies(tmp_path: Path, layout: str) -> None:
    source, out = tmp_path / "vgg16.caffemodel", tmp_path / "vgg16.safetensors"
    write_caffemodel(source, layout)  # type: ignore[arg-type]
    for args in (["convert", source, out], ["verify", source, out]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, (result.output, result.stderr)
    assert "PASS" in result.output


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_packed_floats_are_mapped_bit_for_bit(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "vgg16.caffemodel"
    layers = {w.name: w for w in write_caffemodel(path, layout)}  # type: ignore[arg-type]
    with caffe.open(str(path)) as graph:
        weighted = [op for op in graph.ops if isinstance(op, Conv | Dense)]
        for op in weighted:
            assert op.bias is not None
            for tensor, array in (
                (op.kernel, layers[op.name].kernel),
                (op.bias, layers[op.name].bias),
            ):
                assert isinstance(tensor.source, FileRegion)
                assert tensor.read().tobytes() == array.tobytes()
        assert [op.layout for op in weighted] == ["OIHW"] * 13 + ["OI"] * 3


def test_unpacked_floats_and_dims_are_read(tmp_path: Path) -> None:
    for layout in ("v1", "v2"):
        path = tmp_path / f"{layout}.caffemodel"
        layers = write_caffemodel(path, layout, packed=False)
        with caffe.open(str(path)) as graph:
            weighted = [op for op in graph.ops if isinstance(op, Conv | Dense)]
            for op, w in zip(weighted, layers, strict=True):
                assert isinstance(op.kernel.source, np.ndarray)
                assert op.kernel.read().tobytes() == w.kernel.tobytes()


def test_double_data_is_mapped_as_float64(tmp_path: Path) -> None:
    net, layers = caffe_net("v2")
    blob = net.layer[1].blobs[0]
    blob.ClearField("data")
    blob.double_data.extend(layers[0].kernel.astype(np.float64).ravel().tolist())
    with caffe.open(str(_write(tmp_path / "d.caffemodel", net))) as graph:
        kernel = graph.ops[0].kernel  # type: ignore[union-attr]
        assert isinstance(kernel.source, FileRegion) and kernel.source.dtype == np.float64
        np.testing.assert_array_equal(kernel.read(), layers[0].kernel)


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_input_dims_are_the_input_size(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "vgg16.caffemodel"
    write_caffemodel(path, layout, input_dim=(10, 3, 224, 224))  # type: ignore[arg-type]
    with _loaded(path) as graph:
        assert (graph.input.size, graph.input.size_from) == ((224, 224), "file")
    write_caffemodel(path, layout, input_dim=(10, 3, 224))  # type: ignore[arg-type]
    _refused(path, r"input shape \[10, 3, 224\]; expected \(N, C, H, W\)")


def test_unknown_fields_of_every_wire_type_are_skipped(tmp_path: Path) -> None:
    net, layers = caffe_net("v1")
    unknown = b"".join(
        [b"\xb8\x3e\x07", b"\xb9\x3e" + bytes(8), b"\xba\x3e\x03abc", b"\xbd\x3e" + bytes(4)]
    )  # fields 999 as varint, fixed64, length-delimited, fixed32
    net.layers[0].MergeFromString(unknown)
    net.layers[0].blobs[0].MergeFromString(unknown)
    path = tmp_path / "extra.caffemodel"
    path.write_bytes(net.SerializeToString() + unknown)
    with caffe.open(str(path)) as graph:
        assert graph.ops[0].kernel.read().tobytes() == layers[0].kernel.tobytes()  # type: ignore[union-attr]


def test_transposed_inner_product_is_an_in_out_kernel(tmp_path: Path) -> None:
    net, layers = caffe_net("v1")
    fc7 = next(layer for layer in net.layers if layer.name == "fc7")
    fc7.inner_product_param.transpose = True
    weight = fc7.blobs[0]
    weight.height, weight.width = weight.width, weight.height
    weight.ClearField("data")
    weight.data.extend(layers[-2].kernel.T.ravel().tolist())
    with _loaded(_write(tmp_path / "t.caffemodel", net)) as graph:
        assert [op.layout for op in graph.ops if isinstance(op, Dense)] == ["OI", "IO", "OI"]
        expected = _torch_logits(layers, PLANS["vgg16"], _images(224))
        scale = max(1.0, float(np.abs(expected).max()))
        got = _referee_logits(graph, _images(224))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_floor_rounding_pools_are_kept(tmp_path: Path) -> None:
    net, _ = caffe_net("v2")
    for layer in net.layer:
        if layer.type == "Pooling":
            layer.pooling_param.round_mode = 1  # FLOOR
    with caffe.open(str(_write(tmp_path / "floor.caffemodel", net))) as graph:
        assert not any(op.ceil for op in graph.ops if isinstance(op, MaxPool))


def test_reader_works_where_protobuf_cannot_be_imported(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.caffemodel"
    write_caffemodel(path)
    code = (
        "from vggfcn.formats import caffe\n"
        f"with caffe.open({str(path)!r}) as g: print(len(g.ops), g.ops[0].kernel.read().sum())"
    )
    assert stdout_without(["google", "google.protobuf"], code).split()[0] == "39"


# ---------------------------------------------------------------------------- detection


def test_detection_matches_both_layouts_named_or_not(tmp_path: Path) -> None:
    for layout in ("v1", "v2"):
        net, _ = caffe_net(layout)
        for named in (True, False):
            if not named:
                net.ClearField("name")
            path = _write(tmp_path / f"{layout}{named}.caffemodel", net)
            found = detect.probe(str(path))
            assert [r.name for r in formats.READERS if r.matches(found)] == [CAFFE]


def test_detection_refuses_the_other_formats(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.zeros(3)
    with zipfile.ZipFile(tmp_path / "a.pth", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    np.save(tmp_path / "a.npy", np.zeros(3))
    safetensors.numpy.save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "a.safetensors"))
    (tmp_path / "a.onnx").write_bytes(b"\x08\x08\x12\x06vggfcn" + bytes(64))
    for path in sorted(tmp_path.iterdir()):
        assert not detect.is_caffemodel(detect.probe(str(path))), path.name
    # safetensors: any header length (bytes 0..3 vary, 4..7 are zero below 4 GB), then '{'
    lengths = [*range(1 << 16), *np.random.default_rng(0).integers(1 << 16, 100_000_000, 50_000)]
    for n in lengths:
        head = struct.pack("<Q", int(n)) + b'{"__metadata__":{"format":"pt"}}'
        assert not detect.is_caffemodel(detect.Probe("x", head, int(n) + 8)), n


# ---------------------------------------------------------------------------- hostile files


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def test_truncated_or_overlong_varints_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.caffemodel"
    path.write_bytes(b"\x0a\x03vgg\x12\xff\xff")
    _refused(path, r"varint at byte 6 runs past its end 8")
    path.write_bytes(b"\x0a\x03vgg\x20" + b"\xff" * 10 + b"\x01")
    _refused(path, r"bad varint at byte 6 \(more than 10 bytes\)")


def test_a_length_past_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.caffemodel"
    path.write_bytes(b"\x0a\x03vgg\x12\x7f" + _field(4, b"conv1_1"))
    _refused(path, r"NetParameter: field 2 at byte 5 needs 127 bytes, 9 remain")


def _nested(number: int, depth: int) -> bytes:
    """`depth` messages each holding the next in field `number`, built outside-in in one join."""
    key, sizes = _key(number, 2), [1]
    for _ in range(depth):
        sizes.append(sizes[-1] + len(key) + len(_varint(sizes[-1])))
    return b"".join(key + _varint(size) for size in reversed(sizes[:-1])) + b"x"


def test_deep_nesting_is_never_descended(tmp_path: Path) -> None:
    path = tmp_path / "deep.caffemodel"
    path.write_bytes(caffe_net("v2")[0].SerializeToString() + _nested(999, 20_000))
    with caffe.open(str(path)) as graph:  # an unknown field: stepped over whole
        assert len(graph.ops) == 39
    layer = _field(1, b"conv1_1") + _nested(7, 20_000)  # blobs in blobs in blobs...
    path.write_bytes(b"\x0a\x03vgg" + _field(100, layer))
    _refused(path, r"layer conv1_1 has no type")  # blobs are parsed only for a known type


def test_blob_counts_must_match_their_shapes(tmp_path: Path) -> None:
    net, _ = caffe_net("v1")
    del net.layers[0].blobs[0].data[-1]
    _refused(
        _write(tmp_path / "c.caffemodel", net),
        r"layer conv1_1 blob 0 holds 107 values, its shape \[4, 3, 3, 3\] needs 108",
    )
    net, _ = caffe_net("v2")
    net.layer[-2].blobs[1].shape.dim[0] = 11
    _refused(
        _write(tmp_path / "s.caffemodel", net),
        r"layer fc8 blob 1 holds 10 values, its shape \[11\] needs 11",
    )


def test_float_data_must_be_whole_floats(tmp_path: Path) -> None:
    blob = _field(7, _field(1, _varint(4))) + _field(5, bytes(17))
    layer = b"".join(
        _field(n, v)
        for n, v in ((1, b"conv1_1"), (2, b"Convolution"), (3, b"data"), (4, b"conv1_1"))
    )
    path = tmp_path / "f.caffemodel"
    path.write_bytes(b"\x0a\x03vgg" + _field(100, layer + _field(7, blob) + _field(7, blob)))
    _refused(path, r"layer conv1_1 blob 1 has 17 bytes of float32 data, not a multiple of 4")


def test_both_layer_lists_are_refused(tmp_path: Path) -> None:
    v1, v2 = caffe_net("v1")[0], caffe_net("v2")[0]
    path = tmp_path / "both.caffemodel"
    path.write_bytes(v1.SerializeToString() + v2.SerializeToString())  # protobuf merges these
    _refused(path, r"holds both V1 `layers` \(39\) and current `layer` \(40\) lists")


@pytest.mark.parametrize("wire", [3, 4, 6, 7])
def test_groups_and_invalid_wire_types_are_refused(tmp_path: Path, wire: int) -> None:
    path = tmp_path / "g.caffemodel"
    path.write_bytes(caffe_net("v1")[0].SerializeToString() + _key(33, wire) + bytes(8))
    _refused(
        path, rf"NetParameter: field 33 at byte \d+ has wire type {wire} \(a group or invalid\)"
    )


def _insert(layers: Any, index: int, **fields: Any) -> Message:
    """Insert a layer into a repeated layer field (protobuf has no insert for messages)."""
    rest = [layer.SerializeToString() for layer in layers[index:]]
    del layers[index:]
    added = layers.add(**fields)
    for raw in rest:
        layers.add().ParseFromString(raw)
    return added


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n: _insert(n.layers, 2, name="norm1", type=LAYER_TYPE["LRN"],
                           bottom=["conv1_1"], top=["norm1"]),
         r"layer norm1 has type LRN, which a VGG classifier does not use"),
        (lambda n: n.layers[-2].bottom.__setitem__(0, "pool5"),
         r"layer fc8 reads 'pool5', but the layer before it wrote \['fc7'\]"),
        (lambda n: n.layers[1].relu_param.__setattr__("negative_slope", 0.1),
         r"layer relu1_1 is a leaky ReLU"),
        (lambda n: n.layers[0].convolution_param.pad.__setitem__(0, 0),
         r"layer conv1_1 is a convolution with kernel \[3\], pad \[0\], stride \[1\]"),
        (lambda n: n.layers[4].pooling_param.__setattr__("pool", 1),
         r"layer pool1 is average pooling with kernel \[2\], stride \[2\], pad \[0\]; expected"),
        (lambda n: n.layers.add(name="fc9", type=LAYER_TYPE["INNER_PRODUCT"],
                                bottom=["prob"], top=["fc9"]),
         r"layer fc9 \(InnerProduct\) follows the output softmax"),
        (lambda n: n.layers[0].bottom.append("extra"),
         r"layer conv1_1 \(Convolution\) reads \['data', 'extra'\] and writes \['conv1_1'\]"),
        (lambda n: n.layers[0].MergeFromString(b"\x0a\x00"),
         r"layer conv1_1 is in the V0 format"),
        (lambda n: n.layers[0].blobs.pop(),
         r"layer conv1_1 has 1 blobs, expected 2 \(weights, bias\)"),
    ],
)  # fmt: skip
def test_what_a_vgg_does_not_have_is_refused(tmp_path: Path, edit: Any, message: str) -> None:
    net, _ = caffe_net("v1")
    edit(net)
    _refused(_write(tmp_path / "x.caffemodel", net), message)


def test_unrepresentable_current_layer_type_is_named(tmp_path: Path) -> None:
    net, _ = caffe_net("v2")
    _insert(net.layer, 3, name="bn1", type="BatchNorm", bottom=["conv1_1"], top=["conv1_1"])
    _refused(_write(tmp_path / "bn.caffemodel", net), r"layer bn1 has type BatchNorm")


def test_every_truncation_is_refused_in_one_line_or_a_whole_shorter_net(tmp_path: Path) -> None:
    raw = _write(tmp_path / "full.caffemodel", caffe_net("v1")[0]).read_bytes()
    cut, refused = tmp_path / "cut.caffemodel", 0
    lengths = [*range(1, 64), *range(64, len(raw), 1009)]
    for length in lengths:
        cut.write_bytes(raw[:length])
        try:
            with _loaded(cut):
                pass  # a cut after fc8 or prob: a whole, shorter net that is still a VGG
        except (FormatError, ArchitectureError) as e:
            assert "\n" not in str(e) and str(e).startswith(f"{cut}: "), e
            refused += 1
    assert refused >= len(lengths) - 2


def test_missing_layer_parameters_are_assumed_and_noted(tmp_path: Path) -> None:
    net, _ = caffe_net("v1")
    net.layers[0].ClearField("convolution_param")
    net.layers[4].ClearField("pooling_param")
    with caffe.open(str(_write(tmp_path / "bare.caffemodel", net))) as graph:
        assert graph.provenance.notes == (
            "no parameters for conv1_1, pool1: VGG's 3x3 pad 1 convolutions and 2x2 stride 2 "
            "max pools (rounding up) assumed",
        )
