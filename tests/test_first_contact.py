"""The command line as a new user meets it: errors that blame the right thing (an option, a
line of a file, the wrong original, swapped arguments), converted files re-written and
verified against each other, and help that reads whole."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vggfcn
from tests.helpers import assert_refused, run
from vggfcn.verify import sample_images


def test_an_input_size_the_file_disproves_blames_the_option(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    result = run("convert", "--input-size", "150", keras1, out)
    assert_refused(
        result,
        keras1,
        "--input-size 150,150 disagrees with the file",
        r"built for 224x224 inputs \(fc1 reads a 7x7x16 pool5\)",
        out=out,
    )
    assert "not a vgg16 classifier" not in result.stderr


def test_a_blank_label_line_is_named(keras1: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n\nc\nd\ne\nf\ng\nh\ni\n")
    array = tmp_path / "x.npy"
    np.save(array, sample_images(1, seed=0, size=224)[0])
    result = run("predict", "--labels", labels, keras1, array)
    assert_refused(result, labels, "line 3 is blank")
    labels.write_text("a\nb\nc\n")
    assert_refused(run("predict", "--labels", labels, keras1, array), labels, "3 class names")


def test_verify_says_first_when_the_converted_file_came_from_another_original(
    keras1: Path, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    other = tmp_path / "torch_vgg16.pth"
    torch.save(state, other)
    out = tmp_path / "k1.fcn.safetensors"
    assert run("convert", keras1, out).exit_code == 0
    result = run("verify", other, out)
    note = result.stderr.splitlines()[0]
    assert note.startswith(f"note: {out} was made from {keras1.name} (sha256 ")
    assert note.endswith("...), not from torch_vgg16.pth (sha256 " + note.split("sha256 ")[2])
    assert result.exit_code == 1 and "FAIL" in result.stdout  # and still compared
    report = json.loads(run("verify", "--json", other, out).stdout)
    assert report["provenance"] == note.removeprefix("note: ") and not report["passed"]
    assert run("verify", keras1, out).stderr == ""  # the right original: nothing to say


def test_a_converted_file_is_rewritten_in_another_format_and_verified(
    keras1: Path, tmp_path: Path
) -> None:
    first = tmp_path / "k1.fcn.safetensors"
    assert run("convert", keras1, first).exit_code == 0
    again = tmp_path / "again.onnx"
    result = run("convert", "--verify", first, again)
    assert result.exit_code == 0, result.stderr
    check = run("verify", first, again)
    assert check.exit_code == 0 and check.stdout.splitlines()[-1] == "PASS"
    recorded = json.loads(run("inspect", "--json", again).stdout)
    assert recorded["generation"] == "keras-h5/keras1"  # the original's provenance, kept
    from vggfcn.formats import load

    with load(str(again)) as fcn, load(str(first)) as source:
        assert fcn.info.source_file == keras1.name  # type: ignore[union-attr]
        assert fcn.info.source_sha256 == source.info.source_sha256  # type: ignore[union-attr]
    assert run("verify", keras1, again).stderr == ""  # its original is still keras1


def test_predict_with_its_arguments_swapped_says_so(keras1: Path, tmp_path: Path) -> None:
    array = tmp_path / "x.npy"
    np.save(array, sample_images(1, seed=0, size=224)[0])
    result = run("predict", array, keras1)
    assert_refused(result, array, "an input array first and a checkpoint second", "WEIGHTS INPUT")


def test_rgb_and_bgr_together_are_refused(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    result = run("convert", "--rgb", "--bgr", keras1, out)
    assert result.exit_code == 2 and not out.exists()
    assert (
        result.stderr
        == "vggfcn: error: --rgb and --bgr exclude each other: give the one order OUTPUT takes\n"
    )


def test_a_channels_first_array_is_read_as_such(keras1: Path, tmp_path: Path) -> None:
    images = sample_images(2, seed=0, size=256)
    last, first = tmp_path / "nhwc.npy", tmp_path / "nchw.npy"
    np.save(last, images)
    np.save(first, images.transpose(0, 3, 1, 2))
    out_last, out_first = tmp_path / "a.npy", tmp_path / "b.npy"
    assert run("predict", "-o", out_last, keras1, last).exit_code == 0
    guessed = run("predict", "-o", out_first, keras1, first)  # unambiguous: read, and said
    assert guessed.exit_code == 0 and "read as channels-first" in guessed.stderr
    np.testing.assert_array_equal(np.load(out_first), np.load(out_last))
    told = run("predict", "--channels-first", keras1, first)
    assert told.exit_code == 0 and told.stderr == ""
    assert_refused(run("predict", "--channels-last", keras1, first), first, "channels-last")


def test_top_level_help_gives_every_command_a_whole_line() -> None:
    result = run("--help")
    commands = result.stdout.split("Commands:\n")[1].splitlines()
    assert len(commands) == 5
    for line in commands:
        assert line.rstrip().endswith(".") and "..." not in line, line


def test_convert_help_names_every_source_and_the_ssd_names() -> None:
    text = " ".join(run("convert", "--help").stdout.split())
    for phrase in ("Caffe .caffemodel", "tensorflow-vgg .npy", "safetensors", "--names ssd"):
        assert phrase in text, phrase


def test_inspect_columns_fit_long_names(state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """A Lightning checkpoint's keys are long; inspect shows them whole, in line, and says
    what prefix it read the network under."""
    path = tmp_path / "lightning.pth"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in state.items()}}, path)
    lines = run("inspect", path).stdout.splitlines()
    assert "note: every VGG key is under 'model.backbone.' (a wrapper's prefix)" in lines
    rows = [line for line in lines if line.startswith("  model.backbone.")]
    classifier = [r for r in rows if "classifier" in r]
    assert [r.split()[0] for r in classifier] == [
        f"model.backbone.classifier.{i}" for i in (0, 2, 3, 5, 6)
    ]  # torch's own indices for the Dropouts between the Linear layers
    assert len({row.index(row.split()[1]) for row in rows}) == 1  # the class column lines up


def test_the_package_namespace_holds_the_api_only() -> None:
    names = [n for n in dir(vggfcn) if not n.startswith("__")]
    assert names == sorted(n for n in vggfcn.__all__ if not n.startswith("__"))
    for name in ("Any", "sys", "importlib", "types", "TYPE_CHECKING"):
        assert name not in dir(vggfcn)


def test_pillow_missing_names_the_extra(keras1: Path, tmp_path: Path) -> None:
    """Without Pillow, reading an image says what to install (in a child with PIL hidden)."""
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "from vggfcn.cli import main\n"
        f"sys.argv = ['vggfcn', 'predict', {str(keras1)!r}, {str(image)!r}]\n"
        "main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert "needs Pillow, vggfcn's `images` extra: pip install pillow" in done.stderr


@pytest.mark.parametrize("swapped", [False, True])
def test_verify_refuses_anything_but_a_converted_network_second(
    keras1: Path, tmp_path: Path, swapped: bool
) -> None:
    out = tmp_path / "o.safetensors"
    assert run("convert", keras1, out).exit_code == 0
    copy = shutil.copyfile(keras1, tmp_path / "copy.h5")
    first, second = (out, keras1) if swapped else (copy, keras1)
    assert_refused(run("verify", first, second), keras1, "expected the converted")
