"""Readable files whose contents are not a convertible VGG classifier: missing, transposed or
mis-shaped tensors, wrong dtypes, non-finite weights; and what must still convert.

The contract for a user-caused failure: exit code 2 (1 only for a verification mismatch), one
line on stderr naming the file and the problem, nothing on stdout, no traceback, no output
file created or changed, no `.OUTPUT.*.vggfcn-tmp` left, and never code from the input run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import vggfcn.convert
import vggfcn.formats
from fixtures.generate import TINY, write_checkpoint
from tests.conftest import TF_NAMES, tiny_arch
from tests.helpers import (
    FC1,
    FC2,
    assert_refused,
    converts_and_verifies,
    edited_h5,
    refuse_everywhere,
    replace_dataset,
    run,
    temps,
    tensors,
)
from vggfcn import api
from vggfcn.errors import ArchitectureError
from vggfcn.synthetic import random_layers
from vggfcn.tensor import Tensor
from vggfcn.verify import verify

# ------------------------------------------------------------ wrong content


@pytest.mark.parametrize("generation", ["keras1", "keras3-weights"])
def test_notop_file_says_the_classifier_is_missing(tmp_path: Path, generation: str) -> None:
    source = tmp_path / ("notop.weights.h5" if generation == "keras3-weights" else "notop.h5")
    write_checkpoint(source, generation, TINY, top=False)
    refuse_everywhere(source, "include_top=False", "classifier")


def test_missing_torch_tensors_are_listed_at_once_with_expected_shapes(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    missing = {"features.0.bias": "(4,)", "classifier.3.weight": "(32, 32)"}
    missing["classifier.6.bias"] = "(10,)"
    source = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k not in missing}, source)
    refuse_everywhere(source, *(re.escape(n) for n in missing), *map(re.escape, missing.values()))


def test_missing_keras_datasets_are_listed_at_once(keras1: Path, tmp_path: Path) -> None:
    def drop(f: h5py.File) -> None:
        del f["fc2/fc2_b_1:0"]
        del f["predictions/predictions_W_1:0"]
        del f["block2_conv1/block2_conv1_W_1:0"]

    source = edited_h5(keras1, tmp_path / "partial.h5", drop)
    refuse_everywhere(source, "fc2_b_1:0", "predictions_W_1:0", "block2_conv1_W_1:0")


def test_missing_tensorflow_vgg_layers_are_listed_at_once(tmp_path: Path) -> None:
    layers = {TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(tiny_arch(), seed=0)}
    del layers["conv1_2"], layers["fc7"]
    source = tmp_path / "partial.npy"
    np.save(source, np.array(layers, dtype=object), allow_pickle=True)
    refuse_everywhere(source, "conv1_2", "fc7")


def test_transposed_fc_kernel(keras1: Path, tmp_path: Path) -> None:
    def transpose(f: h5py.File) -> None:
        replace_dataset(f, FC2, f[FC2][()].T.copy())
        replace_dataset(f, FC1, f[FC1][()].T.copy())

    source = edited_h5(keras1, tmp_path / "transposed.h5", transpose)
    refuse_everywhere(source, r"fc1 kernel has shape \(32, 784\), expected \(784, 32\)")


def test_transposed_torch_classifier_weight(state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    bad = dict(state)
    bad["classifier.0.weight"] = state["classifier.0.weight"].T.contiguous()
    source = tmp_path / "transposed.pth"
    torch.save(bad, source)
    refuse_everywhere(source, "classifier.0", "784")


def test_fc6_input_that_is_no_square_pool5(keras1: Path, tmp_path: Path) -> None:
    """480 rows = 30 * 16: no square pool5 of 16 channels gives them, and the file holds no
    config to say which size the model was built for; against 224x224 (7x7x16 = 784) it is
    refused, saying what fc6 must read."""
    source = edited_h5(
        keras1,
        tmp_path / "fc6.h5",
        lambda f: replace_dataset(f, FC1, np.ones((5 * 6 * 16, 32), np.float32)),
    )
    refuse_everywhere(source, r"\(480, 32\)", "7x7x16", "784")


def test_fc6_of_a_smaller_square_pool5_converts(keras1: Path, tmp_path: Path) -> None:
    """576 rows = 6 * 6 * 16: a model built for a 6x6 pool5 (192x192 inputs). Without a config
    the fan-in says so, and the first dense layer becomes a 6x6 convolution."""
    source = edited_h5(
        keras1,
        tmp_path / "fc6.h5",
        lambda f: replace_dataset(f, FC1, np.ones((6 * 6 * 16, 32), np.float32)),
    )
    out = converts_and_verifies(source, tmp_path, notes=1)  # the 192x192 input is a guess
    assert tensors(out)["fc6.kernel"].shape == (6, 6, 16, 32)


def test_mismatched_channel_chain(keras1: Path, tmp_path: Path) -> None:
    """block3_conv2 reads 6 channels where block3_conv1 writes 8."""
    name = "block3_conv2/block3_conv2_W_1:0"
    source = edited_h5(
        keras1,
        tmp_path / "chain.h5",
        lambda f: replace_dataset(f, name, np.ones((3, 3, 6, 8), np.float32)),
    )
    refuse_everywhere(source, "block3_conv2", r"\(3, 3, 6, 8\)", r"expected \(3, 3, 8, 8\)")


def test_layers_out_of_order_in_the_file_listing(
    keras1: Path, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Groups listed in reverse (creation order tracked), state dict keys reversed: both work,
    and give the same tensors as the ordered files."""
    reordered = tmp_path / "reversed.h5"
    with h5py.File(keras1) as src, h5py.File(reordered, "w", track_order=True) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in reversed(list(src)):
            src.copy(src[name], dst, name)
    with h5py.File(reordered) as f:
        assert list(f)[0] == "predictions"
    reversed_pth = tmp_path / "reversed.pth"
    torch.save(dict(reversed(list(state.items()))), reversed_pth)
    ordered_pth = tmp_path / "ordered.pth"
    torch.save(state, ordered_pth)
    for source, reference in ((reordered, keras1), (reversed_pth, ordered_pth)):
        out = converts_and_verifies(source, tmp_path)
        expected = tmp_path / f"{source.name}.reference.safetensors"
        api.convert_file(str(reference), str(expected))
        for key, value in tensors(expected).items():
            np.testing.assert_array_equal(tensors(out)[key], value)


# ------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "uint8"])
def test_non_float_weights_are_refused_naming_tensor_and_dtype(
    keras1: Path, tmp_path: Path, dtype: str
) -> None:
    source = edited_h5(
        keras1,
        tmp_path / f"{dtype}.h5",
        lambda f: replace_dataset(f, FC2, f[FC2][()].astype(dtype)),
    )
    refuse_everywhere(source, re.escape(FC2.split("/")[1]), dtype)


@pytest.mark.parametrize("dtype", ["<f8", "<f2", ">f4", ">f8"])
def test_other_float_widths_and_byte_orders_are_read_as_float32(
    keras1: Path, tmp_path: Path, dtype: str
) -> None:
    def widen(f: h5py.File) -> None:
        replace_dataset(f, FC2, f[FC2][()].astype(dtype))
        replace_dataset(f, FC1, f[FC1][()].astype(dtype))

    source = edited_h5(keras1, tmp_path / f"f{dtype[1:]}.h5", widen)
    out = converts_and_verifies(source, tmp_path)
    with h5py.File(source) as f:
        expected = f[FC2][()].astype(np.float32)
    got = tensors(out)["fc7.kernel"]
    assert got.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(got[0, 0], expected)


def test_bfloat16_torch_tensors_are_read_exactly(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """A bfloat16 .pth (as a bfloat16 safetensors): every value is a float32, read exactly."""
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}
    source = tmp_path / "bf16.pth"
    torch.save(half, source)
    out = converts_and_verifies(source, tmp_path, "--layout", "oihw", "--names", "torch")
    got = torch.from_numpy(tensors(out)["fc7.weight"])
    expected = half["classifier.3.weight"].float()[:, :, None, None]
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "name", ["fc2/fc2_W_1:0", "block2_conv1/block2_conv1_b_1:0"], ids=["fc7", "conv"]
)
def test_nonfinite_weights_refused_by_default_allowed_by_flag(
    keras1: Path, tmp_path: Path, name: str
) -> None:
    def poison(f: h5py.File) -> None:
        data = f[name][()]
        flat = data.reshape(-1)
        flat[[0, 3]] = np.nan
        flat[1] = np.inf
        flat[-1] = -np.inf
        flat[2] = np.nan
        f[name][...] = data

    source = edited_h5(keras1, tmp_path / "nan.h5", poison)
    out = tmp_path / "out.safetensors"
    assert_refused(
        run("convert", source, out),
        source,
        re.escape(name.split("/")[1]),
        r"\b5 NaN/Inf",
        "--allow-nonfinite",
        out=out,
    )
    result = run("convert", "--allow-nonfinite", source, out)
    assert result.exit_code == 0, result.stderr
    with h5py.File(source) as f:
        expected = f[name][()].reshape(-1)
    layer = {"fc2": "fc7.kernel", "block2_conv1": "block2_conv1.bias"}[name.split("/")[0]]
    got = tensors(out)[layer].reshape(-1)
    np.testing.assert_array_equal(got, expected)  # NaNs compare equal in assert_array_equal


def test_finite_weights_that_overflow_the_forward_pass_give_no_traceback(
    keras1: Path, tmp_path: Path
) -> None:
    """A weight of 3e38 is finite, so it converts; its activations overflow float32. `verify` and
    `convert --verify` must still answer by the contract: pass, or exit 2 with one stderr line
    (no traceback, no NumPy RuntimeWarnings: a real process, where warnings reach stderr)."""

    def inflate(f: h5py.File) -> None:
        name = "block1_conv1/block1_conv1_W_1:0"
        data = f[name][()]
        data[0, 0, 0, :] = 3e38
        f[name][...] = data

    source = edited_h5(keras1, tmp_path / "huge.h5", inflate)
    out = tmp_path / "huge.safetensors"
    checked = tmp_path / "checked.safetensors"
    for args in (
        ["convert", source, out],
        ["verify", source, out],
        ["convert", "--verify", source, checked],
    ):
        if args[0] == "verify" and not out.exists():
            continue  # convert refused it: nothing to verify
        done = subprocess.run(
            [sys.executable, "-m", "vggfcn", *map(str, args)], capture_output=True, text=True
        )
        assert done.returncode in (0, 2), (args, done.returncode, done.stderr)
        if done.returncode == 0:
            assert done.stderr == "", (args, done.stderr)
        else:
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and str(source) in lines[0], (args, done.stderr)
    assert temps(tmp_path) == []


def test_verify_api_on_overflowing_weights_refuses_without_numpy_warnings(
    keras1: Path, tmp_path: Path
) -> None:
    """The same through the Python API, where no CLI silences anything: one clear error, and no
    RuntimeWarning on the way (they are errors here)."""
    with vggfcn.formats.load(str(keras1)) as original:
        first = original.ops[0]
        kernel = first.kernel.read().copy()
        kernel[0, 0, 0, :] = 3e38
        huge = Tensor.wrap(kernel, "<huge>")
        inflated = replace(original, ops=(replace(first, kernel=huge), *original.ops[1:]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ArchitectureError, match="not finite"):
                verify(inflated, vggfcn.convert.to_fcn(inflated))
