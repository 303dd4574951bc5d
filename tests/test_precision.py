"""Precision (`precision.py`): weights of other float widths and byte orders read as float32,
bfloat16 and float16 exactly; half-precision outputs rounded as torch and ml_dtypes round,
proven at their own tolerance and failing float32's.

Non-float weights and non-finite ones are refused (test_refusals.py).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch

from fixtures.generate import TINY, make_weights, write_checkpoint
from tests.helpers import (
    FC1,
    FC2,
    converts_and_verifies,
    edited_h5,
    read_all,
    replace_dataset,
    tensors,
)
from vggfcn.api import convert_file, inspect_file, verify_files
from vggfcn.precision import from_bfloat16_bits, to_bfloat16_bits

# ------------------------------------------------------------ reading


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


def test_keras3_bfloat16_weights_are_read(tmp_path: Path) -> None:
    """Keras 3 stores bfloat16 as opaque 2-byte values tagged dtype=bfloat16."""
    path = tmp_path / "bf16.weights.h5"
    write_checkpoint(path, "keras3-weights", keras_dtype="bfloat16")
    expected = [
        a.astype(ml_dtypes.bfloat16).astype(np.float32)
        for _, arrays in make_weights(TINY)
        for a in arrays
    ]
    _, tensors = read_all(path)
    got = list(tensors.values())
    assert inspect_file(str(path)).as_dict()["layers"][0]["dtype"] == "bfloat16"
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "fcn.safetensors"
    convert_file(str(path), str(out))
    assert verify_files(str(path), str(out)).passed


def test_float16_input_reads_exactly(keras1: Path, tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "f16.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        k = f["fc2/fc2_W_1:0"][()]
        del f["fc2/fc2_W_1:0"]
        f["fc2"].create_dataset("fc2_W_1:0", data=k.astype(np.float16))
    _, tensors = read_all(path)
    np.testing.assert_array_equal(tensors["fc2.kernel"], k.astype(np.float16).astype(np.float32))
    out = tmp_path / "o.safetensors"
    convert_file(str(path), str(out))
    assert safetensors.numpy.load_file(str(out))["fc7.kernel"].dtype == np.float32


# ------------------------------------------------------------ writing


def test_bfloat16_rounding_matches_ml_dtypes() -> None:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, 1.00390625, 1.005859375, 1.0078125, 3.4e38, -3.4e38,
                        1e-40, np.inf, -np.inf, np.nan, 65504.0], dtype=np.float32)  # fmt: skip
    x = np.concatenate(
        [
            special,
            rng.standard_normal(100_000).astype(np.float32)
            * 10.0 ** rng.integers(-30, 30, 100_000),
        ]
    )
    ours = to_bfloat16_bits(x.astype(np.float32))
    theirs = x.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(from_bfloat16_bits(ours[np.isnan(x)])).all()
    assert np.array_equal(from_bfloat16_bits(ours[np.isinf(x)]), x[np.isinf(x)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_output_passes_its_tolerance_and_fails_float32s(
    keras1: Path, tmp_path: Path, dtype: str
) -> None:
    out = tmp_path / "half.safetensors"
    convert_file(str(keras1), str(out), dtype=dtype)
    stored = safetensors.torch.load_file(str(out))
    assert (
        stored["fc6.kernel"].dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    )
    _, tensors = read_all(keras1)
    fc6 = torch.from_numpy(tensors["fc1.kernel"].reshape(7, 7, 16, 32).copy())
    assert torch.equal(
        stored["fc6.kernel"], fc6.to(stored["fc6.kernel"].dtype)
    )  # torch's own rounding
    own = verify_files(str(keras1), str(out))
    assert own.passed and own.precision == dtype and own.atol > 1e-4
    assert not verify_files(str(keras1), str(out), atol=1e-4, rtol=1e-4).passed
    assert inspect_file(str(out)).as_dict()["layers"][0]["dtype"] == (
        "bfloat16" if dtype == "bfloat16" else "float16"
    )
