"""What `convert` may write over: never a checkpoint of another kind, never by a format its
name does not say, and a missing SOURCE is reported as missing before anything about OUTPUT.

The victims are real files of each kind: a Keras `.h5` and a torch `.pth`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_refused, run


@pytest.fixture
def victims(keras1: Path, state: dict[str, torch.Tensor], tmp_path: Path) -> dict[str, Path]:
    """A Keras checkpoint and a torch checkpoint, each someone's model."""
    h5 = shutil.copyfile(keras1, tmp_path / "victim.h5")
    pth = tmp_path / "victim.pth"
    torch.save(state, pth)
    return {"h5": Path(h5), "pth": pth}


@pytest.mark.parametrize("kind", ["h5", "pth"])
def test_swapped_arguments_with_force_destroy_nothing(
    kind: str, victims: dict[str, Path], keras1: Path, tmp_path: Path
) -> None:
    victim = victims[kind]
    before = victim.read_bytes()
    source = victims["pth" if kind == "h5" else "h5"]  # the other checkpoint, as SOURCE
    result = run("convert", source, victim, "--force")
    assert_refused(result, victim, r"writes \.safetensors, \.onnx, \.keras files", "--to")
    for to in ("safetensors", "onnx", "keras"):
        result = run("convert", source, victim, "--force", "--to", to)
        assert_refused(
            result, victim, "checkpoint; vggfcn does not replace it", "even with --force"
        )
    assert victim.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.h5", "victim.pth"]


def test_a_missing_source_is_reported_as_missing(keras1: Path, tmp_path: Path) -> None:
    """`convert new.fcn.safetensors mine.h5`, the arguments swapped and SOURCE not made yet:
    the answer is that SOURCE is missing, not that OUTPUT exists."""
    missing = tmp_path / "new.fcn.safetensors"
    result = run("convert", missing, keras1)
    assert_refused(result, missing, "no such file")
    result = run("convert", missing, keras1, "--force")
    assert_refused(result, missing, "no such file")


@pytest.mark.parametrize("name", ["x.onx", "model.pth", "weights.h5", "fcn"])
def test_an_extension_we_do_not_write_is_refused(keras1: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = run("convert", keras1, out)
    assert_refused(result, out, r"\.safetensors, \.onnx, \.keras", "--to", out=out)


def test_to_names_the_format_of_any_name(keras1: Path, tmp_path: Path) -> None:
    """With --to, a name we do not know is fine; an existing file of the same kind, or one
    that is no checkpoint, may be replaced with --force."""
    out = tmp_path / "model.bin"
    assert run("convert", keras1, out, "--to", "safetensors").exit_code == 0
    again = run("convert", keras1, out, "--to", "safetensors", "--force")
    assert again.exit_code == 0, again.stderr  # a safetensors file, replaced by one
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    assert run("convert", keras1, notes, "--to", "onnx", "--force").exit_code == 0


@pytest.mark.parametrize(
    ("name", "options", "stored"),
    [
        ("o.safetensors", [], "safetensors: HWIO kernels, vggfcn names, float32"),
        (
            "o.safetensors",
            ["--layout", "oihw", "--names", "torch", "--dtype", "float16"],
            "safetensors: OIHW kernels, torch names, float16",
        ),
        ("o.onnx", [], "onnx: OIHW kernels, source names, float32"),
        ("o.keras", [], "keras: HWIO kernels, source names, float32"),
    ],
)
def test_the_success_line_names_what_was_written(
    keras1: Path, tmp_path: Path, name: str, options: list[str], stored: str
) -> None:
    result = run("convert", keras1, tmp_path / name, *options)
    assert result.exit_code == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith(f"wrote {tmp_path / name}: vgg16 fully convolutional")
    assert second.startswith(f"  {stored}")
    if not options and name.endswith(".safetensors"):  # the default, and how to get the other
        assert second.endswith("(for PyTorch nn.Conv2d: --layout oihw --names torch)")
