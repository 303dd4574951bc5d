"""The proof is independent of the code it judges: a bug injected into any of compile's
normalisations (the axis moves between a file's layout and the FCN's, the folds) produces a
wrong file that `vggfcn verify` rejects with exit 1.

Before the source graph, readers normalised and verify ran the original from the normalised
weights, so every one of these bugs converted wrong and verified right.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vggfcn.convert as compile_
from fixtures.finetuned import keras_finetuned
from fixtures.generate import TINY
from fixtures.torch_vgg import classifier, timm_state_dict
from vggfcn.cli import main
from vggfcn.graph import BatchNorm, Conv, Dense, FlattenOrder, Op
from vggfcn.tensor import Tensor

Patch = Callable[[pytest.MonkeyPatch], None]


def _trunk_kernels_h_w_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """OIHW -> HWIO that swaps the kernel's H and W: (O, I, H, W) -> (W, H, I, O)."""
    monkeypatch.setattr(compile_, "OIHW_TO_HWIO", (3, 2, 1, 0))


def _fc6_columns_h_w_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's (C, H, W) fc6 columns moved to (W, H, C) taps."""
    monkeypatch.setattr(compile_, "CHW_COLUMNS_TO_HWIO", (3, 2, 1, 0))


def _timm_conv_fc6_h_w_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the head's convolutions (timm's pre_logits.fc1 7x7) get their H and W swapped."""
    right = compile_.hwio

    def hwio(op: Conv) -> Tensor:
        kernel = right(op)
        return kernel.permute(kernel.shape, (1, 0, 2, 3)) if op.padding == "valid" else kernel

    monkeypatch.setattr(compile_, "hwio", hwio)


def _square_dense_kernel_transposed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x1 layer whose (in, out) kernel is used as (out, in): fc7, the square one."""
    right = compile_._dense_as_conv

    def dense_as_conv(
        op: Dense, h: int, w: int, flattened: FlattenOrder | None, averaged: bool
    ) -> Tensor:
        kernel = right(op, h, w, flattened, averaged)
        square = kernel.shape[:2] == (1, 1) and kernel.shape[2] == kernel.shape[3]
        return kernel.permute(kernel.shape, (0, 1, 3, 2)) if square else kernel

    monkeypatch.setattr(compile_, "_dense_as_conv", dense_as_conv)


def _hwc_rows_read_as_chw(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic: Keras' channels-last fc6 rows read as if channels-first."""
    right = compile_._dense_as_conv

    def dense_as_conv(
        op: Dense, h: int, w: int, flattened: FlattenOrder | None, averaged: bool
    ) -> Tensor:
        return right(op, h, w, "CHW" if flattened == "HWC" else flattened, averaged)

    monkeypatch.setattr(compile_, "_dense_as_conv", dense_as_conv)


def _batch_norms_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold that forgets the batch norms: the layers keep their unfolded kernels."""

    def skip(ops: tuple[Op, ...], path: str) -> tuple[tuple[Op, ...], tuple[float, ...]]:
        return tuple(op for op in ops if not isinstance(op, BatchNorm)), ()

    monkeypatch.setattr(compile_, "fold_batch_norms", skip)


def _global_average_not_divided(monkeypatch: pytest.MonkeyPatch) -> None:
    """GlobalAveragePooling2D -> Dense(W) as taps W (a sum), not W / (p_h * p_w)."""

    class Summed(compile_._Averaged):
        def __getitem__(self, key: object) -> np.ndarray:
            return super().__getitem__(key) * np.float32(self.h * self.w)

    monkeypatch.setattr(compile_, "_Averaged", Summed)


BUGS: dict[str, tuple[str, Patch]] = {
    "trunk OIHW->HWIO swaps H and W": ("torchvision.pth", _trunk_kernels_h_w_swapped),
    "fc6 (C, H, W) columns with H and W swapped": ("torchvision.pth", _fc6_columns_h_w_swapped),
    "timm's conv fc6 with H and W swapped": ("timm.pth", _timm_conv_fc6_h_w_swapped),
    "a square dense kernel transposed": ("torchvision.pth", _square_dense_kernel_transposed),
    "Keras (H, W, C) rows read as (C, H, W)": ("keras1", _hwc_rows_read_as_chw),
    "batch norms after a dense layer skipped": ("keras-bn.keras", _batch_norms_skipped),
    "batch norms in the trunk skipped": ("vgg16_bn.pth", _batch_norms_skipped),
    "global average pooling not divided": ("keras-gap.keras", _global_average_not_divided),
}


@pytest.fixture(scope="module")
def originals(
    sources: dict[str, Path],
    state: dict[str, torch.Tensor],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Files written by real torch (torchvision, timm, `_bn`), real Keras 3 (fine-tuned heads
    with a batch norm, with global average pooling) and a Keras 1 file."""
    folder = tmp_path_factory.mktemp("originals")
    torch.save(timm_state_dict(state), folder / "timm.pth")
    bn = classifier(TINY.convs, TINY.fc[0], TINY.classes, batch_norm=True)
    torch.save(bn.state_dict(), folder / "vgg16_bn.pth")
    keras_finetuned("bn-after-relu").save(str(folder / "keras-bn.keras"))
    keras_finetuned("gap").save(str(folder / "keras-gap.keras"))
    made = ("timm.pth", "vgg16_bn.pth", "keras-bn.keras", "keras-gap.keras")
    return {
        **{name: folder / name for name in made},
        "torchvision.pth": sources["torchvision.pth"],
        "keras1": sources["keras1"],
    }


@pytest.mark.parametrize("bug", list(BUGS))
def test_injected_bug_makes_a_wrong_file_that_verify_rejects(
    bug: str, originals: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, inject = BUGS[bug]
    source, out = originals[kind], tmp_path / "wrong.fcn.safetensors"
    args = ["--layout", "oihw", "--names", "torch"] if kind.endswith(".pth") else []
    with monkeypatch.context() as patch:
        inject(patch)
        converted = CliRunner().invoke(main, ["convert", *args, str(source), str(out)])
    assert converted.exit_code == 0, converted.stderr  # the bug writes a file of the right shapes
    verified = CliRunner().invoke(main, ["verify", str(source), str(out)])
    assert verified.exit_code == 1, (bug, verified.stdout, verified.stderr)
    assert verified.stdout.splitlines()[-1].startswith("FAIL")


@pytest.mark.parametrize("kind", sorted({kind for kind, _ in BUGS.values()}))
def test_without_the_bug_the_same_files_verify(
    kind: str, originals: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "right.fcn.safetensors"
    args = ["--layout", "oihw", "--names", "torch"] if kind != "keras1" else []
    assert (
        CliRunner().invoke(main, ["convert", *args, str(originals[kind]), str(out)]).exit_code == 0
    )
    assert CliRunner().invoke(main, ["verify", "-q", str(originals[kind]), str(out)]).exit_code == 0
