"""Keras 3 `.keras` archives: read in place, their config as data only; what is refused, by name.

The contract for a refusal, as everywhere: exit 2, one stderr line naming the file and what was
found and expected, no output file, nothing from the input imported or run.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import vggfcn.formats.keras_archive as keras_archive
import vggfcn.formats.keras_config as keras_config
from fixtures.finetuned import keras_base, keras_finetuned
from tests.helpers import converts_and_verifies, refuse_everywhere, run_measured, tensors
from vggfcn.formats import load
from vggfcn.formats.detect import HDF5_MAGIC
from vggfcn.formats.region import FileRegion
from vggfcn.graph import Dense, SourceGraph

logging.getLogger("absl").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "finetuned.keras"
    keras_finetuned("flatten", 150).save(str(path))
    return path


def rezip(
    source: Path,
    target: Path,
    replace: dict[str, bytes] | None = None,
    deflate: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> Path:
    """A copy of an archive with members replaced, deflated or dropped."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, src.read(info))
            kind = zipfile.ZIP_DEFLATED if info.filename in deflate else zipfile.ZIP_STORED
            dst.writestr(info.filename, data, compress_type=kind)
    return target


def edit_config(source: Path, target: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    with zipfile.ZipFile(source) as z:
        config = json.loads(z.read("config.json"))
    edit(config)
    return rezip(source, target, {"config.json": json.dumps(config).encode()})


def head_layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = config["config"]["layers"]
    return layers


def test_weights_are_mapped_from_the_archive_in_place(archive: Path) -> None:
    with load(str(archive)) as graph:
        assert isinstance(graph, SourceGraph)
        dense = next(op for op in graph.ops if isinstance(op, Dense))
        assert isinstance(dense.kernel.source, FileRegion)
        assert dense.kernel.source.path == str(archive)  # no extraction, no copy
        assert graph.provenance.label == "keras-archive/keras3"


def test_a_deflated_weights_member_is_inflated_under_its_cap(archive: Path, tmp_path: Path) -> None:
    deflated = rezip(archive, tmp_path / "deflated.keras", deflate=("model.weights.h5",))
    out = tensors(converts_and_verifies(deflated, tmp_path))
    reference = tensors(converts_and_verifies(archive, tmp_path))
    assert out.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(out[name], value)


def test_a_deflated_member_over_the_cap_is_refused(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deflated = rezip(archive, tmp_path / "deflated.keras", deflate=("model.weights.h5",))
    monkeypatch.setattr(keras_archive, "INFLATE_MAX_BYTES", 1 << 16)
    refuse_everywhere(deflated, "model.weights.h5", "more than the 65536")


def test_a_deflated_bomb_is_refused_in_bounded_memory(archive: Path, tmp_path: Path) -> None:
    """A 4 MiB archive whose weights member inflates to 1 GiB (HDF5's signature, then zeros):
    refused from what it declares, before anything is inflated, by a process whose peak RSS
    stays far below what inflating it in memory took (2 GiB)."""
    bomb, out = tmp_path / "bomb.keras", tmp_path / "out.safetensors"
    with (
        zipfile.ZipFile(archive) as src,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        dst.writestr("config.json", src.read("config.json"))
        with dst.open("model.weights.h5", "w") as member:
            member.write(HDF5_MAGIC)
            for _ in range(1024):
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 8 << 20
    code, stderr, peak = run_measured("convert", bomb, out)
    assert code == 2, stderr
    assert re.fullmatch(
        rf"vggfcn: error: {re.escape(str(bomb))}: member model\.weights\.h5 declares "
        r"1073741832 bytes from \d+ compressed, more than weights ever compress \(a zip bomb\); "
        r"refused before inflating\n",
        stderr,
    )
    assert peak < 256 << 20
    assert not out.exists()


def test_a_deflated_member_that_is_not_hdf5_is_refused_before_inflating(
    archive: Path, tmp_path: Path
) -> None:
    fake = rezip(
        archive,
        tmp_path / "fake.keras",
        {"model.weights.h5": b"PK\x03\x04 not a weights file " * 1000},
        deflate=("model.weights.h5",),
    )
    refuse_everywhere(fake, r"model\.weights\.h5 starts with b'PK\\x03\\x04 not'", "expected")


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_missing_member_is_named(archive: Path, tmp_path: Path, member: str) -> None:
    refuse_everywhere(rezip(archive, tmp_path / "m.keras", drop=(member,)), f"without {member}")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (b"{not json", "model config is not JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"class_name": "Sequential", "config": {"layers": 7}}', "no list of layers"),
        (b'["a list"]', "not a JSON object"),
    ],
)
def test_a_broken_config_is_refused(
    archive: Path, tmp_path: Path, config: bytes, expected: str
) -> None:
    refuse_everywhere(rezip(archive, tmp_path / "m.keras", {"config.json": config}), expected)


def test_an_oversized_config_is_refused_before_parsing(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keras_config, "CONFIG_MAX_BYTES", 1000)
    refuse_everywhere(archive, "config.json", "exceeds 1000|more than the 1000")


def test_models_nested_too_deep_are_refused(archive: Path, tmp_path: Path) -> None:
    def nest(config: dict[str, Any]) -> None:
        inner = config
        for _ in range(keras_config.MAX_NESTING + 2):
            inner["config"]["layers"] = [
                {
                    "class_name": "Sequential",
                    "module": "keras",
                    "config": {"name": "m", "layers": []},
                    "name": "m",
                }
            ]
            inner = inner["config"]["layers"][0]

    refuse_everywhere(
        edit_config(archive, tmp_path / "deep.keras", nest), "nested more than 8 deep"
    )


def test_a_config_that_disagrees_with_the_weights(archive: Path, tmp_path: Path) -> None:
    def shrink(config: dict[str, Any]) -> None:
        dense = next(layer for layer in head_layers(config) if layer["class_name"] == "Dense")
        dense["config"]["units"] = 23

    source = edit_config(archive, tmp_path / "lies.keras", shrink)
    refuse_everywhere(source, "dense", r"\(256, 24\)", "23 units")


def test_a_config_placing_a_layer_in_another_layers_group(archive: Path, tmp_path: Path) -> None:
    def rename(config: dict[str, Any]) -> None:
        denses = [layer for layer in head_layers(config) if layer["class_name"] == "Dense"]
        denses[0]["config"]["name"] = "renamed"

    refuse_everywhere(edit_config(archive, tmp_path / "r.keras", rename), "disagree")


def test_a_lambda_layer_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    inputs = keras.Input((32, 32, 3))
    x = keras_base(32)(inputs)
    x = keras.layers.Lambda(lambda t: t * 2, name="double")(x)  # its code is in the config
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    source = tmp_path / "lambda.keras"
    model.save(str(source))
    refuse_everywhere(source, "'double' is a Lambda layer", "nothing was run")
    assert not marker.exists()


def test_a_custom_class_is_refused_by_name_and_never_imported(tmp_path: Path) -> None:
    @keras.saving.register_keras_serializable(package="mylab")
    class Scale(keras.layers.Layer):  # type: ignore[misc]
        def call(self, x: Any) -> Any:
            return x * 3

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(Scale(name="scale")(keras_base(32)(inputs)))
    source = tmp_path / "custom.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(str(source))
    refuse_everywhere(source, "'scale'", "mylab>Scale", "never imported")


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            lambda: keras.layers.GlobalMaxPooling2D(name="gmp"),
            "'gmp' is of class 'GlobalMaxPooling2D'",
        ),
        (
            lambda: keras.layers.LayerNormalization(name="ln"),
            "'ln' is of class 'LayerNormalization'",
        ),
    ],
)
def test_heads_we_do_not_convert_are_refused_naming_layer_and_class(
    tmp_path: Path, build: Callable[[], Any], expected: str
) -> None:
    inputs = keras.Input((32, 32, 3))
    x = build()(keras_base(32)(inputs))
    x = keras.layers.Flatten()(x) if len(x.shape) == 4 else x
    source = tmp_path / "head.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(str(source))
    refuse_everywhere(source, expected)


def test_an_activation_we_do_not_convert_is_refused(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(keras_base(32)(inputs))
    x = keras.layers.Dense(8, activation="tanh", name="hidden")(x)
    source = tmp_path / "tanh.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(str(source))
    refuse_everywhere(source, "hidden.activation is 'tanh'", "relu and linear")


def test_a_branching_model_is_refused(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    pool5 = keras_base(32)(inputs)
    a = keras.layers.Flatten(name="a")(pool5)
    b = keras.layers.Flatten(name="b")(pool5)
    x = keras.layers.Concatenate(name="both")([a, b])
    source = tmp_path / "branch.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(str(source))
    refuse_everywhere(source, "layer 'b' takes 'vgg16' as input", "only plain chains convert")
