"""The VGG family: VGG11, 13, 16 and 19 in every Keras generation, and in torchvision and timm
layouts with and without batch norm, convert, verify, and agree with real torch.

How a batch norm is folded is tested in test_fold.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from fixtures.generate import GENERATIONS, TINY, write_checkpoint
from fixtures.torch_vgg import VGGFCN, classifier, timm_state_dict
from tests.helpers import CLASSES, FC, WIDTHS, nchw
from vggfcn import forward, referee
from vggfcn.api import convert_file, inspect_file, verify_files
from vggfcn.arch import PLANS
from vggfcn.convert import to_fcn
from vggfcn.formats import load
from vggfcn.graph import SourceGraph
from vggfcn.verify import sample_images


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg19"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_architecture_in_every_keras_generation(
    tmp_path: Path, arch: str, generation: str
) -> None:
    source = tmp_path / ("m.weights.h5" if generation == "keras3-weights" else "m.h5")
    write_checkpoint(source, generation, replace(TINY, arch=arch))
    out = tmp_path / "fcn.safetensors"
    result = convert_file(str(source), str(out))
    assert result.arch == arch
    assert verify_files(str(source), str(out)).passed
    assert inspect_file(str(out)).as_dict()["arch"] == arch


@pytest.mark.parametrize("arch", sorted(PLANS))
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_torch_family_with_and_without_batch_norm(
    tmp_path: Path, arch: str, batch_norm: bool, layout: str
) -> None:
    model = classifier(WIDTHS, FC, CLASSES, seed=1, plan=PLANS[arch], batch_norm=batch_norm)
    sd = model.state_dict()
    source = tmp_path / "m.pth"
    torch.save(timm_state_dict(sd) if layout == "timm" else sd, source)
    x = sample_images(1, seed=2)
    with load(str(source)) as graph, torch.no_grad():
        assert isinstance(graph, SourceGraph)
        fcn = to_fcn(graph)
        assert fcn.name == arch
        ours = referee.head(graph, referee.pool5(graph, x, forward.Scratch()))
        folded = forward.logits(fcn, x)[:, 0, 0]
        theirs = model(nchw(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    np.testing.assert_allclose(folded, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    out = tmp_path / "fcn.safetensors"
    convert_file(str(source), str(out), layout="oihw", names="torch")
    report = verify_files(str(source), str(out))
    assert report.passed and report.trunk_shared is not batch_norm
    fcn = VGGFCN(WIDTHS, FC, CLASSES, plan=PLANS[arch]).eval()  # no BatchNorm: folded
    fcn.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fcn(nchw(x))[:, :, 0, 0], model(nchw(x)), rtol=1e-4, atol=1e-4)
    meta = inspect_file(str(out)).as_dict()
    assert meta["head"] == "convolutional"
