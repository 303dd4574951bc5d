"""convert (`convert.py`): the FC -> conv reshape (a flattened head and a global-average-pooled
one), the output file's tensors and metadata.

The output file as a file (atomic, --force, mode, reproducible) is tested in test_outputs.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from fixtures.finetuned import keras_finetuned
from fixtures.generate import GENERATIONS, TINY
from tests.helpers import verified_conversion
from vggfcn.api import convert_file
from vggfcn.convert import to_fcn
from vggfcn.graph import Conv, Dense
from vggfcn.synthetic import TINY as TINY_ARCH
from vggfcn.synthetic import random_classifier, random_layers


def test_head_becomes_7x7_and_1x1_kernels_with_the_same_elements(
    keras1: Path, tmp_path: Path
) -> None:
    classifier = random_classifier()
    fcn = to_fcn(classifier)
    c5, (f6, f7, k) = TINY_ARCH.pool5_channels, TINY_ARCH.head_widths
    assert [layer.kernel.shape for layer in fcn.head] == [
        (7, 7, c5, f6),
        (1, 1, f6, f7),
        (1, 1, f7, k),
    ]
    assert [layer.relu for layer in fcn.head] == [True, True, False]
    fc6_dense = next(op for op in classifier.ops if isinstance(op, Dense)).kernel.read()
    fc6_conv = fcn.head[0].kernel.read()
    # Row (h*7 + w)*C + c of the dense kernel is filter tap (h, w, c): Keras' HWC flatten order.
    for h, w, c in [(0, 0, 0), (6, 6, c5 - 1), (2, 5, 3), (4, 1, 9)]:
        np.testing.assert_array_equal(fc6_conv[h, w, c], fc6_dense[(h * 7 + w) * c5 + c])
    convs = [op for op in classifier.ops if isinstance(op, Conv)]
    assert [layer.kernel for layer in fcn.trunk] == [op.kernel for op in convs]  # not even read
    convert_file(str(keras1), str(tmp_path / "fcn.safetensors"))
    again = convert_file(str(tmp_path / "fcn.safetensors"), str(tmp_path / "again.safetensors"))
    assert again.fc6_shape == (7, 7, c5, f6)  # a converted file is re-written, head as it is


def test_gap_head_taps_are_the_dense_kernel_over_the_window(tmp_path: Path) -> None:
    """GlobalAveragePooling2D -> Dense(W): a 7x7 convolution with every tap W / 49."""
    model = keras_finetuned("gap", 224)
    source = tmp_path / "gap.keras"
    model.save(str(source))
    out = verified_conversion(source)
    kernel = safetensors.numpy.load_file(str(out))["fc6.kernel"]
    dense = np.asarray(model.layers[-1].kernel)
    assert kernel.shape == (7, 7, *dense.shape)
    np.testing.assert_allclose(kernel, np.broadcast_to(dense / 49, kernel.shape), rtol=1e-6)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_output_holds_every_tensor_with_metadata(
    tiny_files: dict[str, Path], tmp_path: Path, generation: str
) -> None:
    source = tiny_files[generation]
    out = tmp_path / "out.safetensors"
    result = convert_file(str(source), str(out))
    loaded = safetensors.numpy.load_file(str(out))  # the reference library reads our file
    expected = {name: (k, b) for name, k, b in random_layers(TINY_ARCH)}
    assert len(loaded) == 2 * len(expected)
    for name, (kernel, bias) in expected.items():
        if name == "fc6":
            kernel = kernel.reshape(7, 7, TINY.convs[-1], TINY.fc[0])
        elif name in ("fc7", "fc8"):
            kernel = kernel.reshape(1, 1, *kernel.shape)
        np.testing.assert_array_equal(loaded[f"{name}.kernel"], kernel)
        np.testing.assert_array_equal(loaded[f"{name}.bias"], bias)
        assert loaded[f"{name}.kernel"].dtype == np.float32
    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
    configured = generation in ("keras2-model", "keras3-h5")  # files with a model config
    assert meta == {
        "format": "vggfcn-fcn",
        "format_version": "1",
        "arch": "vgg16",
        "layout": "HWIO",
        "names": "vggfcn",
        "dtype": "float32",
        "classes": str(TINY.classes),
        "head": "classifier",
        "head_activations": "relu,relu,linear",
        "input_size": "224,224",
        "channel_order": "bgr",
        "preprocessing": "caffe",
        "source_format": f"keras-h5/{generation}",
        "source_file": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "source_softmax": "yes" if configured else "unknown",
        "source_output_activation": "softmax" if configured else "unknown",
        "source_batch_norm": "none",
    }
    assert result.fc6_shape == (7, 7, TINY.convs[-1], TINY.fc[0])
