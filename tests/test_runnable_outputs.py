"""The FCN as a runnable model: every kind of source converts to `.onnx` and `.keras`, and
onnxruntime and real Keras, running our files, give the source framework's own logits at the
native size and its own head on every pool5 window of a larger input — within verify's tolerance.
The files are proven like the safetensors one: `verify` reads them back, `--verify` checks them
before publishing, and a wrong one fails; `predict` and `inspect` read them.

What each file holds is tested in test_onnx.py and test_keras_fcn.py; what every output file
promises (atomic, --force, reproducible, options) in test_outputs.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fixtures.finetuned import keras_finetuned, keras_logits, torch_finetuned
from fixtures.generate import TINY, write_checkpoint
from fixtures.torch_vgg import classifier, timm_state_dict
from tests.helpers import assert_refused, nchw, run
from vggfcn.arch import PLANS
from vggfcn.verify import sample_images

logging.getLogger("absl").setLevel(logging.ERROR)

Logits = Callable[[np.ndarray], np.ndarray]  # NHWC images -> (N, classes)
Heads = Callable[[np.ndarray], np.ndarray]  # NHWC images -> (h, w, classes) per-window logits


# ------------------------------------------------------------ the frameworks' own answers


def torch_reference(model: nn.Module, window: int = 7) -> tuple[Logits, Heads]:
    """torch's logits, and its classifier on every pool5 window of a larger image."""

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(nchw(x)).numpy()

    def heads(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            pool5 = model.features(nchw(x))
            h, w = pool5.shape[2] - window + 1, pool5.shape[3] - window + 1
            rows = [
                [
                    model.classifier(torch.flatten(pool5[:, :, i : i + window, j : j + window], 1))[
                        0
                    ]
                    for j in range(w)
                ]
                for i in range(h)
            ]
            return torch.stack([torch.stack(r) for r in rows]).numpy()

    return logits, heads


def keras_reference(model: Any) -> tuple[Logits, Heads]:
    """Keras' logits, and its head (the layers after pool5) on every pool5 window."""
    layers = _flat_layers(model)
    last_pool = max(
        i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.MaxPooling2D)
    )
    trunk, head = layers[: last_pool + 1], layers[last_pool + 1 :]

    def heads(x: np.ndarray) -> np.ndarray:
        y: Any = keras.ops.convert_to_tensor(x)
        for layer in trunk:
            y = layer(y)
        pool5 = keras.ops.convert_to_numpy(y)
        size = model.input_shape[1] // 32
        h, w = pool5.shape[1] - size + 1, pool5.shape[2] - size + 1
        windows = np.stack(
            [pool5[0, i : i + size, j : j + size] for i in range(h) for j in range(w)]
        )
        z: Any = keras.ops.convert_to_tensor(windows)
        for layer in head:
            z = (
                layer(z, training=False)
                if layer is not head[-1]
                else keras.ops.matmul(z, layer.kernel) + layer.bias
            )
        return keras.ops.convert_to_numpy(z).reshape(h, w, -1)

    return lambda x: keras_logits(model, x), heads


def _flat_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _flat_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


# ------------------------------------------------------------ the sources


def _torch(model: nn.Module, path: Path, state: dict[str, Any] | None = None) -> Path:
    torch.save(state if state is not None else model.state_dict(), path)
    return path


SOURCES: dict[str, Callable[[Path], tuple[Path, Logits, Heads, int]]] = {
    "stock Keras 3 .h5": lambda d: _keras_stock(d),
    "torchvision VGG16": lambda d: (
        _torch(m := classifier(TINY.convs, 32, 10, seed=1), d / "tv.pth"),
        *torch_reference(m),
        224,
    ),
    "timm VGG16": lambda d: (
        _torch(
            m := classifier(TINY.convs, 32, 10, seed=2),
            d / "timm.pth",
            timm_state_dict(m.state_dict()),
        ),
        *torch_reference(m),
        224,
    ),
    "torchvision VGG11": lambda d: (
        _torch(m := classifier(TINY.convs, 32, 10, seed=3, plan=PLANS["vgg11"]), d / "v11.pth"),
        *torch_reference(m),
        224,
    ),
    "torchvision VGG19_bn (folded)": lambda d: (
        _torch(
            m := classifier(TINY.convs, 32, 10, seed=4, plan=PLANS["vgg19"], batch_norm=True),
            d / "v19bn.pth",
        ),
        *torch_reference(m),
        224,
    ),
    "torch fine-tuned classifier": lambda d: (
        _torch(m := torch_finetuned((16,), 5, batch_norm=True), d / "ft.pth"),
        *torch_reference(m),
        224,
    ),
    "Keras fine-tuned, 150x150": lambda d: _keras(
        keras_finetuned("flatten", 150), d / "ft.keras", 150
    ),
    "Keras GAP head": lambda d: _keras(keras_finetuned("gap", 224), d / "gap.keras", 224),
    "Keras BN head": lambda d: _keras(keras_finetuned("bn-before-relu", 224), d / "bn.keras", 224),
}


def _keras(model: Any, path: Path, size: int) -> tuple[Path, Logits, Heads, int]:
    model.save(str(path))
    return (path, *keras_reference(model), size)


def _keras_stock(folder: Path) -> tuple[Path, Logits, Heads, int]:
    path = folder / "stock.h5"
    write_checkpoint(path, "keras3-h5", TINY)
    model = keras.saving.load_model(str(path), compile=False)
    return (path, *keras_reference(model), 224)


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    """verify's rule: |ours - theirs| <= 1e-4 * max(1, max|theirs|) + 1e-4 * |theirs|."""
    scale = max(1.0, float(np.abs(theirs).max()))
    assert np.all(np.abs(ours - theirs) <= 1e-4 * scale + 1e-4 * np.abs(theirs)), (
        float(np.abs(ours - theirs).max()),
        scale,
    )


def run_onnx(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(
        ["logits"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    )[0].transpose(0, 2, 3, 1)


def run_keras(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    model = keras.saving.load_model(str(path), safe_mode=True)
    return lambda x: np.asarray(model.predict(x, verbose=0))


@pytest.mark.parametrize("output", ["onnx", "keras"])
@pytest.mark.parametrize("source", list(SOURCES))
def test_every_source_runs_in_its_output_framework_as_in_its_own(
    tmp_path: Path, source: str, output: str
) -> None:
    path, logits, heads, size = SOURCES[source](tmp_path)
    out = tmp_path / f"fcn.{output}"
    converted = run("convert", "--verify", path, out)
    assert converted.exit_code == 0, converted.stderr
    verified = run("verify", "-q", path, out)
    assert verified.exit_code == 0, verified.stderr
    fcn = (run_onnx if output == "onnx" else run_keras)(out)
    x = sample_images(2, seed=5, size=size)
    native = fcn(x)
    assert native.shape[1:3] == (1, 1)
    assert_close(native[:, 0, 0], logits(x))
    big = sample_images(1, seed=6, size=size + 64)  # two more pool5 blocks: a 3x3 map
    cells = fcn(big)[0]
    assert cells.shape[:2] == (3, 3)
    assert_close(cells, heads(big))


@pytest.mark.parametrize("output", ["onnx", "keras"])
def test_one_model_takes_any_input_size(tmp_path: Path, keras1: Path, output: str) -> None:
    out = tmp_path / f"fcn.{output}"
    assert run("convert", keras1, out).exit_code == 0
    fcn = (run_onnx if output == "onnx" else run_keras)(out)
    for shape, cells in [((224, 224), (1, 1)), ((288, 288), (3, 3)), ((256, 352), (2, 5))]:
        x = sample_images(1, seed=7, size=shape)
        assert fcn(x).shape == (1, *cells, TINY.classes)


# ------------------------------------------------------------ wrong and bad files


@pytest.mark.parametrize("output", ["onnx", "keras"])
def test_a_wrong_fc6_order_in_either_output_fails_verify(
    tmp_path: Path, keras1: Path, output: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vggfcn.api as api
    import vggfcn.convert
    from vggfcn.selfcheck import fc6_read_as_chw

    real = vggfcn.convert.to_fcn
    monkeypatch.setattr(api, "to_fcn", lambda graph, **kw: fc6_read_as_chw(real(graph, **kw)))
    out = tmp_path / f"wrong.{output}"
    assert run("convert", keras1, out).exit_code == 0
    monkeypatch.undo()
    verified = run("verify", keras1, out)
    assert verified.exit_code == 1 and "FAIL" in verified.stdout
    published = tmp_path / f"never.{output}"  # --verify: a wrong file is never published
    monkeypatch.setattr(api, "to_fcn", lambda graph, **kw: fc6_read_as_chw(real(graph, **kw)))
    assert_refused(
        run("convert", "--verify", keras1, published),
        published,
        "verification failed",
        out=published,
        code=1,
    )


@pytest.mark.parametrize("output", ["onnx", "keras"])
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_truncated_outputs_are_refused(
    tmp_path: Path, keras1: Path, output: str, cut: float
) -> None:
    out = tmp_path / f"fcn.{output}"
    assert run("convert", keras1, out).exit_code == 0
    data = out.read_bytes()
    short = tmp_path / f"short.{output}"
    short.write_bytes(data[: int(len(data) * cut)])
    assert_refused(run("inspect", short), short)
    assert_refused(run("verify", keras1, short), short)


def test_predict_and_inspect_read_both_outputs(tmp_path: Path, keras1: Path) -> None:
    maps = []
    x = tmp_path / "x.npy"
    np.save(x, sample_images(1, seed=8, size=288)[0])
    for output in ("safetensors", "onnx", "keras"):
        out = tmp_path / f"fcn.{output}"
        assert run("convert", keras1, out).exit_code == 0
        assert run("inspect", out).exit_code == 0
        scores = tmp_path / f"{output}.npy"
        assert run("predict", out, x, "--out", scores).exit_code == 0
        maps.append(np.load(scores))
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])
