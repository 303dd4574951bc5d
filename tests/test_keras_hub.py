"""KerasHub's `VGGImageClassifier` as a source (`formats/keras_hub.py`): `.keras` archives and
preset directories saved by real keras-hub (`fixtures/keras_hub.py`), judged against the Keras
model that saved them."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import keras_hub as hub
from tests.helpers import assert_refused, run
from vggfcn.formats import load
from vggfcn.forward import logits
from vggfcn.predict import softmax

#: (pooling, layout): every head in both of KerasHub's containers.
CASES = [(pooling, layout) for pooling in hub.POOLINGS for layout in ("keras", "preset")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, Any]]:
    folder = tmp_path_factory.mktemp("keras-hub")
    out = {}
    for pooling, layout in CASES:
        path = folder / (f"{pooling}.keras" if layout == "keras" else f"{pooling}_preset")
        out[pooling, layout] = (path, hub.save(hub.HubSpec(pooling=pooling), path, layout))
    free = folder / "free.keras"
    spec = hub.HubSpec(pooling="avg", image_size=None, activation="softmax")
    out["free", "keras"] = (free, hub.save(spec, free, "keras"))
    return out


@pytest.mark.parametrize(("pooling", "layout"), CASES)
def test_each_head_in_each_container_converts_and_equals_keras(
    pooling: str, layout: str, saved: dict[tuple[str, str], tuple[Path, Any]], tmp_path: Path
) -> None:
    source, model = saved[pooling, layout]
    for suffix in (".safetensors", ".onnx", ".keras"):
        out = tmp_path / f"fcn{suffix}"
        converted = run("convert", source, out)
        assert converted.exit_code == 0, converted.stderr
        checked = run("verify", source, out)
        assert checked.exit_code == 0, (checked.stdout, checked.stderr)
    images = hub.sample_images(2, 224, seed=5)
    with load(str(tmp_path / "fcn.safetensors")) as fcn:
        ours = logits(fcn, images).reshape(2, -1)  # type: ignore[arg-type]
    theirs = hub.reference_output(model, images)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_a_free_size_model_maps_every_window_as_keras_does(
    saved: dict[tuple[str, str], tuple[Path, Any]], tmp_path: Path
) -> None:
    """`image_shape` (None, None, 3): the input size is fc1's 7x7 (224); at 288x320 each cell
    is the classifier on its window, as KerasHub's own layers compute it, and KerasHub's avg
    output (a softmax here) is the softmax of the cells' mean."""
    source, model = saved["free", "keras"]
    out = tmp_path / "fcn.safetensors"
    assert run("convert", source, out).exit_code == 0
    images = hub.sample_images(1, 288, seed=6)
    images = np.concatenate([images, images[:, :, :32]], axis=2)  # 288 x 320
    with load(str(out)) as fcn:
        cells = logits(fcn, images)  # type: ignore[arg-type]
    expected = hub.reference_score_map(model, images)
    assert cells.shape == expected.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(cells, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    output = hub.reference_output(model, images)
    np.testing.assert_allclose(softmax(cells.mean(axis=(1, 2))), output, atol=1e-5)


def test_inspect_reads_the_arguments_as_data(
    saved: dict[tuple[str, str], tuple[Path, Any]],
) -> None:
    report = json.loads(run("inspect", "--json", saved["max", "preset"][0]).stdout)
    assert (report["format"], report["generation"], report["arch"]) == (
        "keras-hub-preset",
        "keras-hub",
        "vgg16",
    )
    names = [row["name"] for row in report["layers"]]
    assert names[-7:] == [
        *("fc1", "fc1.relu", "output_dropout", "fc2", "fc2.relu", "pooler", "predictions")
    ]
    assert [row["class"] for row in report["layers"]][-2] == "GlobalMaxPool"
    assert report["channel_order"] == "rgb"


def test_a_backbone_preset_has_no_head(tmp_path: Path) -> None:
    preset = tmp_path / "backbone"
    hub.save(hub.HubSpec(), preset, "backbone-preset")
    out = tmp_path / "out.safetensors"
    assert_refused(
        run("convert", preset, out), preset, "backbone preset", "no classifier head", out=out
    )


def test_another_directory_is_still_refused(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert_refused(run("inspect", folder), folder, "is a directory")


def _edited_task(source: Path, target: Path, edit: Any) -> Path:
    """A copy of a preset with its task.json edited."""
    shutil.copytree(source, target)
    task = json.loads((target / "task.json").read_text())
    edit(task)
    (target / "task.json").write_text(json.dumps(task))
    return target


def test_another_keras_hub_class_is_refused_by_name(
    saved: dict[tuple[str, str], tuple[Path, Any]], tmp_path: Path
) -> None:
    def resnet(task: dict[str, Any]) -> None:
        task["registered_name"] = "keras_hub>ResNetImageClassifier"

    bad = _edited_task(saved["avg", "preset"][0], tmp_path / "resnet", resnet)
    assert_refused(run("inspect", bad), bad, "'keras_hub>ResNetImageClassifier'", "never")
    archive = tmp_path / "resnet.keras"
    with zipfile.ZipFile(saved["avg", "keras"][0]) as z, zipfile.ZipFile(archive, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                resnet(config)
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)
    assert_refused(run("inspect", archive), archive, "ResNetImageClassifier")


def test_a_task_whose_config_disagrees_with_its_weights_is_refused(
    saved: dict[tuple[str, str], tuple[Path, Any]], tmp_path: Path
) -> None:
    def wider(task: dict[str, Any]) -> None:
        task["config"]["backbone"]["config"]["stackwise_num_filters"][0] = 8
        task["config"]["num_classes"] = 7

    bad = _edited_task(saved["flatten", "preset"][0], tmp_path / "wider", wider)
    assert_refused(
        run("inspect", bad), bad, "block1_conv1 holds 4", "block1_conv2 holds 4", "predictions"
    )
