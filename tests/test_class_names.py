"""Class names (`imagenet.py`, `--class`, `--labels`): ImageNet's 1000 names in torchvision's
order, a class given by index or name (exactly, case-sensitively when two differ only in case,
with a suggestion when misspelled), and a labels file for a fine-tuned head in `predict` and
`heatmap`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures.finetuned import keras_finetuned
from tests.helpers import verified_conversion
from vggfcn.cli import main
from vggfcn.errors import VggfcnError
from vggfcn.imagenet import class_index, class_names, label


def test_imagenet_has_1000_names_in_torchvision_order() -> None:
    names = class_names()
    assert len(names) == 1000
    assert names[0] == "tench"
    assert names[1] == "goldfish"
    assert names[281] == "tabby"
    assert names[999] == "toilet tissue"
    names.clear()  # the caller's copy; the table itself is untouched
    assert class_names()[281] == "tabby"


@pytest.mark.parametrize(("text", "index"), [("281", 281), ("tabby", 281), ("Tabby", 281)])
def test_class_index_by_number_or_name(text: str, index: int) -> None:
    assert class_index(text, 1000) == index


def test_names_differing_only_in_case_resolve_exactly_or_not_at_all() -> None:
    assert class_index("Cardigan", 1000) == 264  # the corgi
    assert class_index("cardigan", 1000) == 474  # the sweater
    with pytest.raises(VggfcnError, match="ambiguous"):
        class_index("CARDIGAN", 1000)


def test_misspelled_name_suggests_the_real_one() -> None:
    with pytest.raises(
        VggfcnError, match=r"unknown ImageNet class 'tabbby'.*did you mean.*'tabby' \(281\)"
    ):
        class_index("tabbby", 1000)


def test_names_need_an_imagenet_network() -> None:
    with pytest.raises(VggfcnError, match=r"this network has 10, give an index 0\.\.9"):
        class_index("tabby", 10)


@pytest.mark.parametrize("text", ["10", "-1"])
def test_index_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(VggfcnError, match=r"out of range.*0\.\.9"):
        class_index(text, 10)


def test_label_names_imagenet_classes_only() -> None:
    assert label(281, 1000) == "tabby"
    assert label(3, 10) == "class 3"


# ------------------------------------------------------------ --labels


def test_predict_and_heatmap_with_labels_on_a_finetuned_model(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    model = keras_finetuned("flatten", 150)
    source = tmp_path / "m.keras"
    model.save(str(source))
    out = verified_conversion(source)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\nhorse\n")
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 224, 3), np.uint8)).save(image)
    result = CliRunner().invoke(
        main, ["predict", str(out), str(image), "--labels", str(labels), "--top", "5", "--cells"]
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "-> 5x4 map of 5 classes" in lines[0]  # (256//32 - 3) x (224//32 - 3)
    summary = lines[1:6]  # the five classes' peaks over the map, by name
    assert sorted(line.split()[1] for line in summary) == ["bird", "cat", "dog", "fish", "horse"]
    assert lines[6].startswith("  [0] cell (0,0) window y 0-150 x 0-150: ")
    assert all(name in lines[6] for name in ("cat", "dog", "bird", "fish", "horse"))
    png = tmp_path / "dog.png"
    result = CliRunner().invoke(
        main,
        [
            "heatmap",
            str(out),
            str(image),
            "--class",
            "dog",
            "--labels",
            str(labels),
            "-o",
            str(png),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["class_index"], report["class_name"], report["map_shape"]) == (1, "dog", [5, 4])
    width, height = Image.open(png).size
    assert width == 224 and height > 256  # the image, and the legend below it
    bad = CliRunner().invoke(
        main, ["predict", str(out), str(image), "--labels", str(tmp_path / "m.keras")]
    )
    assert bad.exit_code == 2 and "label" in bad.stderr
