"""Our `.keras` output: loaded by real Keras 3 (`safe_mode=True`, torch backend) as the model it
would itself save, the same logits as our forward pass at any input size, a valid zip, byte-for-byte
reproducible, our metadata kept.

Keras is the independent client here; the package never imports it.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest

from tests.helpers import (
    FCN_KINDS,
    PROVENANCE,
    fcn_metadata,
    fcn_of_kind,
    frameworks_imported,
    tiny_fcn,
    tiny_fcn_with_nan,
    write_output,
)
from vggfcn.errors import FormatError, OutputError
from vggfcn.fcn import FCN, Storage
from vggfcn.formats import fcn_metadata as fcn_metadata_module
from vggfcn.formats import keras_fcn, load
from vggfcn.forward import logits
from vggfcn.tensor import Tensor

#: (H, W) inputs: a 1x1 score map (stock head), 3x3, 8x8 and a non-square one.
SIZES = [(224, 224), (288, 288), (448, 448), (256, 352)]
#: Zip entry fields where our members must look like those Keras writes.
ZIP_FIELDS = [
    "create_system",
    "create_version",
    "extract_version",
    "flag_bits",
    "external_attr",
    "extra",
]
KINDS = FCN_KINDS


def write(path: Path, fcn: FCN, allow_nonfinite: bool = False) -> Path:
    # opened write-only: the writer never reads its output back
    return write_output("keras", path, fcn, allow_nonfinite=allow_nonfinite)


def odd_head(fcn: FCN) -> FCN:
    """A non-stock head: a 4x4 first kernel, no ReLU after any head layer."""
    fc6 = fcn.head[0]
    kernel = Tensor.wrap(np.ascontiguousarray(fc6.kernel.read()[:4, :4]), "<odd>:fc6.kernel")
    head = (replace(fc6, kernel=kernel), *fcn.head[1:])
    return replace(fcn, head=tuple(replace(layer, relu=False) for layer in head))


@contextmanager
def network(kind: str, sources: dict[str, Path]) -> Iterator[FCN]:
    """An FCN of each kind (`helpers.fcn_of_kind`), this file's `odd_head` for "odd-head"."""
    with fcn_of_kind(kind, sources, odd_head) as fcn:
        yield fcn


def keras_twin(fcn: FCN) -> keras.Model:
    """The same network built with the Keras API, for Keras to save its own way."""
    layers = iter(zip(fcn.layers, keras_fcn.layer_names(fcn), strict=True))
    x = inputs = keras.Input(batch_shape=(None, None, None, 3), name="input")
    for block, count in enumerate(fcn.plan, 1):
        for layer, name in islice(layers, count):
            conv = keras.layers.Conv2D(
                layer.out_channels, 3, padding="same", activation="relu", name=name
            )
            x = conv(x)
        x = keras.layers.MaxPooling2D(2, 2, name=f"block{block}_pool")(x)
    for layer, name in layers:
        activation = "relu" if layer.relu else "linear"
        conv = keras.layers.Conv2D(
            layer.out_channels, layer.kernel.shape[:2], activation=activation, name=name
        )
        x = conv(x)
    model = keras.Model(inputs, x, name=f"{fcn.name}_fcn")
    model.set_weights([t.read() for layer in fcn.layers for t in (layer.kernel, layer.bias)])
    return model


# ------------------------------------------------------------ what Keras sees


@pytest.mark.parametrize("kind", KINDS)
def test_keras_loads_it_safely_and_gives_our_logits_at_any_size(
    kind: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    with network(kind, sources) as fcn:
        model = keras.saving.load_model(write(tmp_path / "m.keras", fcn), safe_mode=True)
        rng = np.random.default_rng(1)
        for h, w in SIZES:
            x = rng.standard_normal((2, h, w, 3), dtype=np.float32)
            expected = logits(fcn, x)
            got = model.predict(x, verbose=0)
            assert got.shape == (2, *fcn.output_size(h, w), fcn.classes)
            scale = float(np.abs(expected).max())
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_the_model_is_the_one_keras_builds_and_saves_itself(tmp_path: Path) -> None:
    """Same layers and config as the Keras API gives; the same weights file as Keras writes."""
    fcn = odd_head(tiny_fcn())
    ours = write(tmp_path / "m.keras", fcn)
    model, twin = keras.saving.load_model(ours, safe_mode=True), keras_twin(fcn)
    as_json = [json.loads(json.dumps(m.get_config())) for m in (model, twin)]  # tuples: lists
    assert as_json[0] == as_json[1]
    assert [(x.name, type(x).__name__) for x in model.layers][:5] == [
        ("input", "InputLayer"),
        ("block1_conv1", "Conv2D"),
        ("block1_conv2", "Conv2D"),
        ("block1_pool", "MaxPooling2D"),
        ("block2_conv1", "Conv2D"),
    ]
    head = [(x.name, x.kernel_size, x.padding, x.activation.__name__) for x in model.layers[-3:]]
    assert head == [
        ("fc6", (4, 4), "valid", "linear"),
        ("fc7", (1, 1), "valid", "linear"),
        ("fc8", (1, 1), "valid", "linear"),
    ]
    twin.save(tmp_path / "twin.keras")
    assert _weights(ours) == _weights(tmp_path / "twin.keras")


def _weights(path: Path) -> dict[str, Any]:
    """model.weights.h5 of an archive: every object's path, attributes, and data."""
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        tree: dict[str, Any] = {"/": dict(f.attrs)}

        def visit(name: str, obj: Any) -> None:
            data = obj[()].tobytes() if isinstance(obj, h5py.Dataset) else None
            tree[name] = (dict(obj.attrs), data, getattr(obj, "dtype", None))

        f.visititems(visit)
        return tree


def test_zip_members_are_stored_dated_1980_and_otherwise_as_keras_writes_them(
    tmp_path: Path,
) -> None:
    fcn = tiny_fcn()
    path = write(tmp_path / "m.keras", fcn)
    keras_twin(fcn).save(tmp_path / "twin.keras")
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(tmp_path / "twin.keras") as twin:
        assert z.testzip() is None
        infos = z.infolist()
        theirs = {i.filename: i for i in twin.infolist()}
    assert [i.filename for i in infos] == ["config.json", "model.weights.h5", "metadata.json"]
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED and info.date_time == (1980, 1, 1, 0, 0, 0)
        for field in ZIP_FIELDS:
            assert getattr(info, field) == getattr(theirs[info.filename], field), field


def test_our_metadata_rides_in_metadata_json_after_the_weights(tmp_path: Path) -> None:
    fcn, asked = tiny_fcn(), []
    written: list[int] = []

    def late() -> dict[str, str]:
        asked.append(sum(written))
        return fcn_metadata(fcn, "keras")

    path = write_output("keras", tmp_path / "m.keras", fcn, final=late, progress=written.append)
    assert asked == [fcn.parameter_count() * 4]  # once, with every weight written
    with zipfile.ZipFile(path) as z:
        stored = json.loads(z.read("metadata.json"))
    assert stored == {
        "keras_version": keras_fcn.KERAS_VERSION,
        "date_saved": keras_fcn.DATE_SAVED,
        keras_fcn.VGGFCN_KEY: fcn_metadata(fcn, "keras"),
    }
    storage = Storage("keras", "HWIO", "source", "float32")
    info = fcn_metadata_module.info("m.keras", stored[keras_fcn.VGGFCN_KEY], storage)
    assert info == replace(fcn.info, path="m.keras", storage=storage, **PROVENANCE)
    keras.saving.load_model(path, safe_mode=True)  # Keras ignores the extra key


def test_the_package_does_not_import_keras() -> None:
    imported = frameworks_imported("vggfcn.formats.keras_fcn", {"keras", "tensorflow", "torch"})
    assert imported == []


# ------------------------------------------------------------ names, reproducibility, refusals


def test_layer_names_follow_the_source_and_stay_unique_and_valid(tmp_path: Path) -> None:
    fcn = tiny_fcn()
    sources = ["features.0", "features_0", "0", "block1_pool", "", "_x", "a/b", "a:b", "ü"]
    sources += ["input", "j", "k", "l", "classifier.0", "classifier.3", "classifier.6"]
    layers = [replace(layer, source_name=s) for layer, s in zip(fcn.layers, sources, strict=True)]
    fcn = replace(fcn, trunk=tuple(layers[:13]), head=tuple(layers[13:]))
    names = keras_fcn.layer_names(fcn)
    assert names[:10] == [
        *("features_0", "features_0_2", "0", "block1_pool_2", "block3_conv1", "x", "a_b"),
        *("a_b_2", "block4_conv2", "input_2"),
    ]
    assert names[-3:] == ["classifier_0", "classifier_3", "classifier_6"]
    model = keras.saving.load_model(write(tmp_path / "m.keras", fcn), safe_mode=True)
    assert [x.name for x in model.layers if isinstance(x, keras.layers.Conv2D)] == names


def test_rewrites_are_byte_identical_and_our_reader_reads_them(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    with network("torchvision.pth", sources) as fcn:
        first = write(tmp_path / "a.keras", fcn)
        time.sleep(1.1)  # HDF5 and zip timestamps have one-second resolution
        assert write(tmp_path / "b.keras", fcn).read_bytes() == first.read_bytes()
        with load(str(first)) as back:  # vggfcn's Keras reader: keras_archive
            assert isinstance(back, FCN)  # our own .keras reads back as the network it holds
            assert back.info == replace(
                fcn.info, path=str(first), storage=back.info.storage, **PROVENANCE
            )
            x = np.random.default_rng(2).standard_normal((1, 256, 352, 3), dtype=np.float32)
            np.testing.assert_array_equal(logits(back, x), logits(fcn, x))
            assert [layer.source_name for layer in back.layers] == keras_fcn.layer_names(fcn)


def test_nan_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    fcn = tiny_fcn_with_nan()
    with pytest.raises(FormatError, match=r"^<nan>:fc7\.kernel: 1 NaN/Inf"):
        write(tmp_path / "m.keras", fcn)
    model = keras.saving.load_model(write(tmp_path / "m.keras", fcn, allow_nonfinite=True))
    assert np.isnan(model.get_layer("fc7").get_weights()[0][0, 0, 3, 5])


def test_weights_beyond_a_zip32_archive_are_refused_before_any_is_written(
    tmp_path: Path,
) -> None:
    fcn = tiny_fcn()
    huge = np.broadcast_to(np.float32(0), (7, 7, 16, 1 << 21))  # 6.6 GB, never read
    fc6 = replace(fcn.head[0], kernel=Tensor.wrap(huge, "<huge>:fc6.kernel"))
    written: list[int] = []
    with pytest.raises(OutputError, match="do not fit a .keras archive without zip64"):
        huge_fcn = replace(fcn, head=(fc6, *fcn.head[1:]))
        write_output("keras", tmp_path / "m.keras", huge_fcn, progress=written.append)
    assert written == []
