"""Keras model configs read as data (`formats/keras_config.py`): size- and depth-bounded JSON,
plain Keras classes only, a plain chain. A Lambda layer, a custom (registered) class or a branch
is refused by name, and nothing from the file is imported or run.

What the layers of an accepted config compute is tested in test_keras_model.py.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import pytest

import vggfcn.formats.keras_config as keras_config
from fixtures.finetuned import keras_base
from tests.helpers import assert_refused, edit_config, refuse_everywhere, rezip, run

logging.getLogger("absl").setLevel(logging.ERROR)


# ------------------------------------------------------------ the JSON


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


# ------------------------------------------------------------ the layers


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


def test_a_keras_output_whose_config_names_a_custom_class_is_refused(
    tmp_path: Path, keras1: Path
) -> None:

    out = tmp_path / "fcn.keras"
    assert run("convert", keras1, out).exit_code == 0
    with zipfile.ZipFile(out) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["registered_name"] = "evil>Conv2D"
    members["config.json"] = json.dumps(config).encode()
    bad = tmp_path / "custom.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert_refused(run("inspect", bad), bad, "evil>Conv2D", "never imported")


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


def test_a_branching_model_is_refused(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    pool5 = keras_base(32)(inputs)
    a = keras.layers.Flatten(name="a")(pool5)
    b = keras.layers.Flatten(name="b")(pool5)
    x = keras.layers.Concatenate(name="both")([a, b])
    source = tmp_path / "branch.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(str(source))
    refuse_everywhere(source, "layer 'b' takes 'vgg16' as input", "only plain chains convert")
