"""Batch norms folded (`fold.py`): a folded layer is the convolution then the batch norm, and a
file that forgot to fold is caught by verify.

Folding through every VGG with and without `_bn` is tested in test_family.py; Keras heads with
a batch norm before or after the activation in test_keras_model.py, torch heads in
test_state_dict.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fixtures.torch_vgg import classifier
from tests.helpers import CLASSES, FC, WIDTHS
from vggfcn import forward
from vggfcn.convert import to_fcn
from vggfcn.formats import load
from vggfcn.graph import SourceGraph
from vggfcn.tensor import Tensor
from vggfcn.verify import verify


def test_fold_equals_conv_then_batch_norm(tmp_path: Path) -> None:
    model = classifier(WIDTHS, FC, CLASSES, seed=3, batch_norm=True)
    conv, bn = model.features[0], model.features[1]
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = torch.relu(bn(conv(x))).permute(0, 2, 3, 1).numpy()
    torch.save(model.state_dict(), tmp_path / "bn.pth")
    with load(str(tmp_path / "bn.pth")) as graph:
        assert isinstance(graph, SourceGraph)
        first = to_fcn(graph).trunk[0]
        kernel, bias = first.kernel.read(), first.bias.read()
    got = forward.conv2d(x.permute(0, 2, 3, 1).numpy(), kernel, bias, same=True, relu=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_file_that_forgot_to_fold_is_caught(tmp_path: Path) -> None:
    """Unfolded conv weights with the batch norms dropped: right shapes, wrong function."""
    model = classifier(WIDTHS, FC, CLASSES, seed=4, batch_norm=True)
    torch.save(model.state_dict(), tmp_path / "bn.pth")
    plain = {k: v for k, v in model.state_dict().items() if "running" not in k}
    with load(str(tmp_path / "bn.pth")) as original:
        assert isinstance(original, SourceGraph)
        fcn = to_fcn(original)
        unfolded = [  # each conv's own kernel, OIHW -> HWIO, and bias: no batch norm in it
            (
                plain[f"{layer.source_name}.weight"].permute(2, 3, 1, 0),
                plain[f"{layer.source_name}.bias"],
            )
            for layer in fcn.trunk
        ]
        forgot = replace(
            fcn,
            trunk=tuple(
                replace(layer, kernel=_wrap(k), bias=_wrap(b))
                for layer, (k, b) in zip(fcn.trunk, unfolded, strict=True)
            ),
        )
        assert verify(original, fcn).passed
        assert not verify(original, forgot).passed


def _wrap(t: torch.Tensor) -> Tensor:
    return Tensor.wrap(t.detach().contiguous().numpy(), "<test>")
