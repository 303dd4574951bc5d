"""Our ONNX output: valid for the `onnx` checker, the same logits in onnxruntime as our forward
pass, byte-for-byte reproducible, read back exactly, and anything else refused in one line.

`onnx` and `onnxruntime` are the independent clients here; the package never imports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import vggfcn
from tests.helpers import (
    FCN_KINDS,
    PROVENANCE,
    assert_reader_refuses,
    assert_refused,
    fcn_metadata,
    fcn_of_kind,
    frameworks_imported,
    run,
    tiny_fcn,
    tiny_fcn_with_nan,
    write_output,
)
from vggfcn.errors import FormatError, VggfcnError
from vggfcn.fcn import FCN, Storage
from vggfcn.formats import detect, onnx_fcn
from vggfcn.forward import logits
from vggfcn.tensor import Tensor

#: (H, W) inputs: a 1x1 score map, 3x3, and a non-square one.
SIZES = [(224, 224), (288, 288), (256, 352)]
KINDS = FCN_KINDS


def write(path: Path, fcn: FCN, **options: bool) -> Path:
    return write_output("onnx", path, fcn, **options)


def odd_head(fcn: FCN) -> FCN:
    """A non-stock head: a 4x3 first kernel without a ReLU, then the stock 1x1 layers."""
    fc6 = fcn.head[0]
    kernel = Tensor.wrap(np.ascontiguousarray(fc6.kernel.read()[:4, :3]), "<odd>:fc6.kernel")
    return replace(fcn, head=(replace(fc6, kernel=kernel, relu=False), *fcn.head[1:]))


@contextmanager
def network(kind: str, sources: dict[str, Path]) -> Iterator[FCN]:
    """An FCN of each kind (`helpers.fcn_of_kind`), this file's `odd_head` for "odd-head"."""
    with fcn_of_kind(kind, sources, odd_head) as fcn:
        yield fcn


def refused(path: Path, *expected: str) -> str:
    """Reading `path` fails with one line naming it and matching each `expected` regex."""
    return assert_reader_refuses(onnx_fcn.open, path, *expected, error=VggfcnError)


# ------------------------------------------------------------ what onnx and onnxruntime see


def test_the_checker_accepts_the_model_and_sees_our_graph(tmp_path: Path) -> None:
    fcn = tiny_fcn()
    path = write(tmp_path / "m.onnx", fcn)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert model.SerializeToString() == path.read_bytes()  # canonical encoding, field order
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "vggfcn"
    ops = [node.op_type for node in model.graph.node]
    assert set(ops) == {"Conv", "Relu", "MaxPool"}
    assert (ops.count("Conv"), ops.count("Relu"), ops.count("MaxPool")) == (16, 15, 5)
    (image,), (scores,) = model.graph.input, model.graph.output
    assert (image.name, scores.name) == ("input", "logits")
    assert _dims(image) == ["N", 3, "H", "W"] and _dims(scores) == ["N", 10, "h", "w"]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = [(p.key, p.value) for p in model.metadata_props]
    assert props == sorted(fcn_metadata(fcn, "onnx").items())
    assert dict(props)["source_sha256"] == "0" * 64 and dict(props)["layout"] == "OIHW"
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    oihw = fcn.head[0].kernel.read().transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(weights["fc6_weight"], oihw)


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_gives_our_logits(kind: str, sources: dict[str, Path], tmp_path: Path) -> None:
    with network(kind, sources) as fcn:
        path = write(tmp_path / "m.onnx", fcn)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1)
        for h, w in SIZES:
            x = rng.standard_normal((2, h, w, 3), dtype=np.float32)
            expected = logits(fcn, x).transpose(0, 3, 1, 2)
            (got,) = session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
            assert got.shape == (2, fcn.classes, *fcn.output_size(h, w))
            scale = float(np.abs(expected).max())
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_node_names_follow_the_source_and_stay_unique_and_valid(tmp_path: Path) -> None:
    fcn = tiny_fcn()
    sources = ["features.0", "features_0", "0", "pool1", "a_relu", "a", "", *"bcdefghij"]
    layers = [replace(layer, source_name=s) for layer, s in zip(fcn.layers, sources, strict=True)]
    fcn = replace(fcn, trunk=tuple(layers[:13]), head=tuple(layers[13:]))
    names = onnx_fcn.layer_names(fcn)
    assert names[:7] == ["features_0", "features_0_2", "_0", "pool1_2", "a_relu", "a_2", "_"]
    path = write(tmp_path / "m.onnx", fcn)
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    values = [*(o for n in graph.node for o in n.output), *(t.name for t in graph.initializer)]
    assert len(set(values)) == len(values) and len({n.name for n in graph.node}) == len(graph.node)
    assert all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in values)
    with onnx_fcn.open(str(path)) as back:
        assert [layer.source_name for layer in back.layers] == names


def test_detection_knows_onnx_files_and_nothing_else(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """Ours and any other producer's (a source, `onnx_source`) are ONNX; no other format is."""
    ours = write(tmp_path / "m.onnx", tiny_fcn())
    other = tmp_path / "other.onnx"
    onnx.save(_foreign_model(), str(other))
    assert detect.is_onnx(detect.probe(str(ours))) and detect.is_onnx(detect.probe(str(other)))
    for path in sources.values():
        assert not detect.is_onnx(detect.probe(str(path))), path


def test_the_package_does_not_import_onnx() -> None:
    imported = frameworks_imported("vggfcn.formats.onnx_fcn", {"onnx", "onnxruntime", "google"})
    assert imported == []


# ------------------------------------------------------------ our own reader and writer


@pytest.mark.parametrize(
    ("kind", "fc6"),
    [("tiny", "fc6"), ("keras1", "fc1"), ("torchvision.pth", "classifier_0"), ("odd-head", "fc6")],
)
def test_writes_are_reproducible_and_read_back_exactly(
    kind: str, fc6: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    with network(kind, sources) as fcn:
        first, second = write(tmp_path / "a.onnx", fcn), write(tmp_path / "b.onnx", fcn)
        assert first.read_bytes() == second.read_bytes()
        with onnx_fcn.open(str(first)) as back:
            assert back.head[0].source_name == fc6  # the Conv node's name: the source's layer
            assert (back.plan, back.head_activations) == (fcn.plan, fcn.head_activations)
            assert [x.name for x in back.layers] == [x.name for x in fcn.layers]
            assert [x.relu for x in back.layers] == [x.relu for x in fcn.layers]
            for ours, theirs in zip(back.layers, fcn.layers, strict=True):
                np.testing.assert_array_equal(ours.kernel.read(), theirs.kernel.read())
                np.testing.assert_array_equal(ours.bias.read(), theirs.bias.read())
            storage = Storage("onnx", "OIHW", "source", "float32")
            assert back.info == replace(fcn.info, path=str(first), storage=storage, **PROVENANCE)


def test_metadata_is_asked_for_after_the_weights(tmp_path: Path) -> None:
    fcn, done = tiny_fcn(), []

    def late() -> dict[str, str]:
        done.append(sum(written))
        return fcn_metadata(fcn, "onnx")

    written: list[int] = []
    write_output("onnx", tmp_path / "m.onnx", fcn, final=late, progress=written.append)
    assert done == [fcn.parameter_count() * 4]


def test_nan_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    fcn = tiny_fcn_with_nan()
    with pytest.raises(FormatError, match=r"^<nan>:fc7\.kernel: 1 NaN/Inf"):
        write(tmp_path / "m.onnx", fcn)
    path = write(tmp_path / "m.onnx", fcn, allow_nonfinite=True)
    with onnx_fcn.open(str(path)) as back:
        assert np.isnan(back.head[1].kernel.read()[0, 0, 3, 5])


# ------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("onnx") / "good.onnx", tiny_fcn())


@pytest.mark.parametrize("cut", [1, 5, 12, 40, 1000, "half", -30, -1])
def test_truncated_files_are_refused(good: Path, tmp_path: Path, cut: int | str) -> None:
    data = good.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2 if cut == "half" else int(cut)])
    refused(path, r"\(truncated or corrupt\)$")


def test_file_cut_before_its_metadata_is_refused(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    path = tmp_path / "cut.onnx"
    first = data.rindex(b"\n\x0dchannel_order") - 2  # the first entry's key and length
    path.write_bytes(data[:first])
    refused(path, "metadata says format None version None", "cut short")


@pytest.mark.parametrize(
    ("field", "value"), [("producer_name", 0x7F), ("graph", 0xFF), ("graph", 0x7F)]
)
def test_a_corrupt_length_is_refused(good: Path, tmp_path: Path, field: str, value: int) -> None:
    data = bytearray(good.read_bytes())
    key = {"producer_name": 2, "graph": 12 + len(vggfcn.__version__)}[field]
    assert data[key] == {"producer_name": 0x12, "graph": 0x3A}[field]  # field 2 or 7, length
    data[key + 1] = value  # the length's first byte
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(data))
    refused(path, "corrupt")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty file"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "bad varint"),
        (b"\x08\x08\x12\x06vggfcn\x3a", "truncated"),
        (b"\x08\x08\x12\x06vggfcn\x3f", "wire type 7"),
        (b"\x08\x08\x12\x06vggfcn", "ModelProto has 0 GraphProtos in field 7, expected 1"),
    ],
)
def test_malformed_protobuf_is_refused(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    refused(path, expected)


def _foreign_model() -> onnx.ModelProto:
    """A valid opset-17 ONNX model another tool made: one Relu."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(
        graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def test_another_producers_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.onnx"
    onnx.save(_foreign_model(), str(path))
    refused(path, "by 'pytorch'", "expected ir_version 8 by 'vggfcn'")


def test_an_onnx_graph_with_an_op_we_never_write_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "input"], ["logits"])], "g", [x], [y]
    )
    model = helper.make_model(
        graph, producer_name="vggfcn", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    helper.set_model_props(model, {"format": "vggfcn-fcn", "format_version": "1"})
    path = tmp_path / "add.onnx"
    onnx.save(model, str(path))
    assert_refused(run("inspect", path), path, "Add")


def _extra_add(model: onnx.ModelProto) -> None:
    model.graph.node[-1].output[0] = "scores"
    model.graph.node.append(helper.make_node("Add", ["scores", "scores"], ["logits"], "extra"))


def _dilated(model: onnx.ModelProto) -> None:
    model.graph.node[0].attribute.append(helper.make_attribute("dilations", [2, 2]))


def _kernel_shape(model: onnx.ModelProto) -> None:
    fc6 = next(n for n in model.graph.node if n.name == "fc6")
    fc6.attribute[0].ints[:] = [3, 3]


def _bias_shape(model: onnx.ModelProto) -> None:
    bias = next(t for t in model.graph.initializer if t.name == "fc7_bias")
    bias.CopyFrom(numpy_helper.from_array(np.zeros(33, np.float32), "fc7_bias"))


def _float_data(model: onnx.ModelProto) -> None:
    bias = next(t for t in model.graph.initializer if t.name == "fc8_bias")
    bias.float_data[:] = numpy_helper.to_array(bias).tolist()
    bias.ClearField("raw_data")


def _no_metadata(model: onnx.ModelProto) -> None:
    del model.metadata_props[:]


def _wrong_classes(model: onnx.ModelProto) -> None:
    next(p for p in model.metadata_props if p.key == "classes").value = "11"


def _second_input(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]))


def _unused_initializer(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "spare"))


def _pool_in_head(model: onnx.ModelProto) -> None:
    model.graph.node[-1].output[0] = "scores"
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    model.graph.node.append(helper.make_node("MaxPool", ["scores"], ["logits"], "pool6"))
    model.graph.node[-1].attribute.extend(pool.attribute)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_extra_add, r"'extra': Add .* only Conv, its Relu and MaxPool"),
        (_dilated, r"node 'block1_conv1' is Conv with .*dilations.*; vggfcn writes Conv with"),
        (_kernel_shape, r"node 'fc6' is Conv with .*\[3, 3\].*vggfcn writes Conv with .*\[7, 7\]"),
        (_bias_shape, r"weight \(32, 32, 1, 1\) and bias \(33,\)"),
        (_float_data, r"initializer 'fc8_bias' has .*float_data"),
        (_no_metadata, r"metadata says format None version None; this version reads vggfcn-fcn"),
        (_wrong_classes, r"metadata_props say classes=11, the graph has 10"),
        (_second_input, r"graph inputs \['input', 'y'\]"),
        (_unused_initializer, r"initializers \['spare'\] are read by no node"),
        (_pool_in_head, r"blocks of \[2, 2, 3, 3, 3, 3\] convs and 0 head convs"),
    ],
)
def test_graphs_we_never_write_are_refused(
    good: Path, tmp_path: Path, edit: Callable[[onnx.ModelProto], None], expected: str
) -> None:
    model = onnx.load(str(good))
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    refused(path, expected)
