"""ONNX classifiers from any producer as sources (`formats/onnx_source.py`).

The files are made for real where the exporter runs here (torch's TorchScript and dynamo
exporters, Keras 3's `export`) and built with `onnx.helper` where it cannot (tf2onnx, the
Model Zoo's MXNet and Caffe2 files: `fixtures/onnx_sources.py` cites the exporters' sources);
every one runs in onnxruntime, which is the judge here: the converted network must compute, at
the size the original was built for and on every window of a larger input, what onnxruntime
computes on the original file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fixtures import onnx_sources as sources
from tests.helpers import assert_refused, run
from vggfcn import convert as compile_
from vggfcn.formats import load
from vggfcn.forward import logits
from vggfcn.predict import softmax
from vggfcn.verify import sample_images

#: name -> how to write it: every producer of FORMATS.md, and their variants.
MAKERS: dict[str, Callable[[Path], sources.OnnxSource]] = {
    "torch-script": lambda p: sources.torch_script(p),
    "torch-script bn": lambda p: sources.torch_script(p, batch_norm=True),
    "torch-script fine-tuned": lambda p: sources.torch_script(p, head=(256, 5)),
    "torch-dynamo": lambda p: sources.torch_dynamo(p, external_data=False),
    "keras export": lambda p: sources.keras_export(p),
    **{
        f"tf2onnx {flatten}": (lambda f: lambda p: sources.tf2onnx_style(p, flatten=f))(flatten)
        for flatten in sources.FLATTENS
    },
    "tf2onnx dense bn": lambda p: sources.tf2onnx_style(p, dense_bn=True),
    "zoo mxnet": lambda p: sources.mxnet_zoo(p),
    "zoo mxnet bn": lambda p: sources.mxnet_zoo(p, batch_norm=True),
    "zoo caffe2": lambda p: sources.caffe2_zoo(p),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sources.OnnxSource]:
    folder = tmp_path_factory.mktemp("onnx-sources")
    return {name: make(folder / f"{name.replace(' ', '_')}.onnx") for name, make in MAKERS.items()}


def onnxruntime_logits(source: sources.OnnxSource, images: np.ndarray) -> np.ndarray:
    """What onnxruntime computes on the original file for channels-last images, one at a time
    (exporters fix the batch), as logits where the file ends in a softmax."""
    session = ort.InferenceSession(str(source.path), providers=["CPUExecutionProvider"])
    out = []
    for image in images:
        x = image[None] if source.layout == "NHWC" else image.transpose(2, 0, 1)[None]
        (y,) = session.run([source.output_name], {source.input_name: np.ascontiguousarray(x)})
        out.append(y[0])
    return np.array(out)


def onnxruntime_windows(source: sources.OnnxSource, image: np.ndarray, folder: Path) -> np.ndarray:
    """What onnxruntime computes, on the original file's own nodes, for every pool5 window of
    a larger image: the file cut at its last MaxPool (`onnx.utils.extract_model`), its trunk
    run on the whole image (input height and width made free) and its head on each 7x7 window
    of pool5 — the function each cell of the converted map must compute."""
    model = onnx.load(str(source.path))
    pool5 = [n for n in model.graph.node if n.op_type == "MaxPool"][-1].output[0]
    if model.ir_version < 4:  # the extractor wants initializers apart from the inputs
        weights = {t.name for t in model.graph.initializer}
        kept = [v for v in model.graph.input if v.name not in weights]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = 4
    whole, trunk, head = folder / "whole.onnx", folder / "trunk.onnx", folder / "head.onnx"
    onnx.save(model, str(whole))
    onnx.utils.extract_model(str(whole), str(trunk), [source.input_name], [pool5])
    onnx.utils.extract_model(str(whole), str(head), [pool5], [source.output_name])
    cut = onnx.load(str(trunk))
    (image_input,) = [v for v in cut.graph.input if v.name == source.input_name]
    free = [1, 2] if source.layout == "NHWC" else [2, 3]
    for axis in free:
        image_input.type.tensor_type.shape.dim[axis].dim_param = f"free{axis}"
    del cut.graph.value_info[:]
    onnx.save(cut, str(trunk))
    providers = ["CPUExecutionProvider"]
    x = image[None] if source.layout == "NHWC" else image.transpose(2, 0, 1)[None]
    (volume,) = ort.InferenceSession(str(trunk), providers=providers).run(
        [pool5], {source.input_name: np.ascontiguousarray(x)}
    )
    session = ort.InferenceSession(str(head), providers=providers)
    rows, columns = volume.shape[2] - 6, volume.shape[3] - 6
    cells = [
        session.run([source.output_name], {pool5: volume[:, :, i : i + 7, j : j + 7].copy()})[0][0]
        for i in range(rows)
        for j in range(columns)
    ]
    return np.array(cells).reshape(rows, columns, -1)


def as_probabilities(source: sources.OnnxSource, scores: np.ndarray) -> np.ndarray:
    """The FCN's logits as the original's output: after its softmax, if it has one."""
    return softmax(scores, axis=-1) if source.activation == "softmax" else scores


@pytest.mark.parametrize("name", list(MAKERS))
def test_each_producer_converts_to_every_output_and_verifies(
    name: str, made: dict[str, sources.OnnxSource], tmp_path: Path
) -> None:
    source = made[name]
    for suffix in (".safetensors", ".onnx", ".keras"):
        out = tmp_path / f"fcn{suffix}"
        converted = run("convert", source.path, out)
        assert converted.exit_code == 0, converted.stderr
        checked = run("verify", source.path, out)
        assert checked.exit_code == 0, (checked.stdout, checked.stderr)
    with load(str(tmp_path / "fcn.safetensors")) as fcn:
        images = sample_images(2, seed=3, size=224)
        ours = as_probabilities(source, logits(fcn, images).reshape(2, -1))  # type: ignore[arg-type]
        theirs = onnxruntime_logits(source, images)
        scale = max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
        # at 288 x 352, each of the 3x5 cells is the original's head on its pool5 window
        big = sample_images(1, seed=4, size=(288, 352))
        cells = as_probabilities(source, logits(fcn, big)[0])  # type: ignore[arg-type]
        expected = onnxruntime_windows(source, big[0], tmp_path)
        assert cells.shape == expected.shape == (3, 5, cells.shape[-1])
        np.testing.assert_allclose(cells, expected, rtol=1e-4, atol=1e-4 * scale)


def test_a_changed_value_in_the_original_fails_verify_of_the_old_output(
    made: dict[str, sources.OnnxSource], tmp_path: Path
) -> None:
    source = made["torch-script"]
    out = tmp_path / "fcn.safetensors"
    assert run("convert", source.path, out).exit_code == 0
    model = onnx.load(str(source.path))
    weight = next(t for t in model.graph.initializer if t.name == "classifier.0.weight")
    values = numpy_helper.to_array(weight).copy()
    values[3, 100] += 1.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    result = run("verify", changed, out)
    assert result.exit_code == 1 and "FAIL" in result.stdout


def test_inspect_shows_producer_ops_and_input_layout(made: dict[str, sources.OnnxSource]) -> None:
    report = json.loads(run("inspect", "--json", made["keras export"].path).stdout)
    assert (report["format"], report["generation"], report["input_layout"]) == (
        "onnx",
        "pytorch",
        "NHWC",
    )
    (ops,) = [n for n in report["notes"] if n.startswith("ONNX by pytorch")]
    assert "Transpose" in ops and "MatMul" in ops and "Softmax" in ops
    assert report["flatten_order"] == "HWC (the array as laid out)"
    zoo = json.loads(run("inspect", "--json", made["zoo caffe2"].path).stdout)
    assert (zoo["arch"], zoo["channel_order"], zoo["input_layout"]) == ("vgg19", "bgr", "NCHW")


def test_predict_and_heatmap_take_the_converted_files(
    made: dict[str, sources.OnnxSource], tmp_path: Path
) -> None:
    out = tmp_path / "fcn.onnx"
    assert run("convert", made["tf2onnx shape"].path, out).exit_code == 0
    array = tmp_path / "x.npy"
    np.save(array, sample_images(1, seed=0, size=256)[0])
    predicted = json.loads(run("predict", "--json", "--cells", out, array).stdout)
    assert predicted["shape"] == [1, 2, 2, 10]
    original = made["tf2onnx shape"].path
    straight = json.loads(run("predict", "--json", "--cells", original, array).stdout)
    assert straight["cells"][3]["top"][0]["index"] == predicted["cells"][3]["top"][0]["index"]


def test_the_dynamo_exporters_external_data_is_refused(tmp_path: Path) -> None:
    """torch.onnx.export's default writes `<name>.onnx.data` beside the model: a path the file
    names, which is never opened."""
    source = sources.torch_dynamo(tmp_path / "vgg.onnx")
    assert source.data_file is not None and source.data_file.exists()
    out = tmp_path / "out.safetensors"
    assert_refused(
        run("convert", source.path, out),
        source.path,
        "keeps its data in another file",
        "external_data=False",
        out=out,
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda src, out: sources.with_op(src, out, "LRN"), r"is a LRN, which is not an op"),
        (lambda src, out: sources.with_cycle(src, out), "which no earlier node makes"),
        (
            lambda src, out: sources.with_extra_input(src, out),
            r"graph inputs \['input', 'extra_input'\]",
        ),
        (lambda src, out: sources.with_dims_mismatch(src, out), r"need \d+ bytes of raw_data"),
        (
            lambda src, out: sources.with_external_data(src, out, location="../outside.bin"),
            "never opens a path",
        ),
    ],
    ids=["op", "cycle", "second input", "dims", "external"],
)
def test_files_a_vgg_reader_must_not_trust_are_refused(
    made: dict[str, sources.OnnxSource], tmp_path: Path, edit: Callable[..., object], expected: str
) -> None:
    bad = tmp_path / "bad.onnx"
    edit(made["torch-script"].path, bad)
    out = tmp_path / "out.safetensors"
    assert_refused(run("convert", bad, out), bad, expected, out=out)
    assert not (tmp_path / "outside.bin").exists()


def _edited(source: Path, target: Path, edit: Callable[[onnx.ModelProto], object]) -> Path:
    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.opset_import[0].__setattr__("version", 21), "opset 21"),
        (lambda m: m.__setattr__("ir_version", 11), "IR version 11"),
        (
            lambda m: m.graph.initializer[0].dims.__setitem__(0, 1 << 40),
            r"has dims \[1099511627776",
        ),
    ],
    ids=["opset", "ir", "huge dim"],
)
def test_versions_and_dims_outside_what_was_tested_are_refused(
    made: dict[str, sources.OnnxSource],
    tmp_path: Path,
    edit: Callable[[onnx.ModelProto], object],
    expected: str,
) -> None:
    bad = _edited(made["torch-script"].path, tmp_path / "bad.onnx", edit)
    assert_refused(run("inspect", bad), bad, expected)


def test_a_reshape_that_is_no_flatten_is_refused(
    made: dict[str, sources.OnnxSource], tmp_path: Path
) -> None:
    def to_four(model: onnx.ModelProto) -> None:
        shape = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT64)
        shape.CopyFrom(numpy_helper.from_array(np.array([1, 4, -1], np.int64), shape.name))

    bad = _edited(made["torch-dynamo"].path, tmp_path / "bad.onnx", to_four)
    assert_refused(run("inspect", bad), bad, r"into \(1, 4, -1\)|into \[1, 4, -1\]|only a flatten")


def test_verify_catches_a_flatten_order_compile_misreads(
    made: dict[str, sources.OnnxSource], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The injected bug: compile reads tf2onnx's flatten of an NHWC array as channels-first.
    The converted file has the right shapes; only the referee, which keeps its own account of
    the layouts, can tell."""
    real = compile_.channels_last

    def misread(graph: object) -> tuple[object, ...]:
        return tuple(
            compile_.replace(op, order="CHW") if isinstance(op, compile_.Flatten) else op
            for op in real(graph)  # type: ignore[arg-type]
        )

    monkeypatch.setattr(compile_, "channels_last", misread)
    source = made["tf2onnx shape"]
    out = tmp_path / "wrong.safetensors"
    assert run("convert", source.path, out).exit_code == 0
    monkeypatch.undo()
    result = run("verify", source.path, out)
    assert result.exit_code == 1 and "FAIL" in result.stdout
