"""Our safetensors reader validates the header itself before trusting it; our writer writes
`save_file`'s bytes, in blocks."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from vggfcn.convert import to_fcn
from vggfcn.errors import FormatError
from vggfcn.formats import load
from vggfcn.formats.safetensors_fcn import named_tensors
from vggfcn.formats.safetensors_io import header_bytes, open_tensors, read_header, write
from vggfcn.synthetic import random_classifier
from vggfcn.tensor import Tensor


def _file(tmp_path: Path, header: str | bytes, data: bytes, length: int | None = None) -> Path:
    raw = header.encode() if isinstance(header, str) else header
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(begin: int, end: int, shape: list[int]) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def test_valid_file_round_trips(tmp_path: Path) -> None:
    data = np.arange(6, dtype="<f4").tobytes()
    path = _file(tmp_path, json.dumps({"a": _entry(0, 24, [2, 3])}), data)
    tensors, meta = open_tensors(str(path))
    assert meta == {}
    np.testing.assert_array_equal(tensors["a"].read(), np.arange(6).reshape(2, 3))


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (
            '{"a":' + json.dumps(_entry(0, 4, [1])) + ',"a":' + json.dumps(_entry(4, 8, [1])) + "}",
            8,
            "duplicate name",
        ),
        (json.dumps({"a": _entry(0, 8, [2]), "b": _entry(4, 12, [2])}), 12, "overlaps"),
        (json.dumps({"a": _entry(0, 4, [1]), "b": _entry(8, 12, [1])}), 12, "leaves a gap"),
        (json.dumps({"a": _entry(0, 4, [1])}), 8, "trailing bytes"),
        (json.dumps({"a": _entry(0, 8, [1])}), 8, "needs 4 bytes"),
        (json.dumps({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}), 8, "dtype C64"),
        (json.dumps({"a": _entry(0, 4, [-1])}), 4, "invalid shape"),
        ("[1, 2]", 0, "not a JSON object"),
        ("{not json", 0, "invalid safetensors header"),
        (json.dumps({"__metadata__": {"a": 1}}), 0, "__metadata__ must map strings"),
    ],
)
def test_invalid_headers_are_refused(tmp_path: Path, header: str, data: int, message: str) -> None:
    path = _file(tmp_path, header, b"\0" * data)
    with pytest.raises(FormatError, match=message):
        read_header(str(path))


def test_header_length_beyond_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "{}", b"", length=10**6)
    with pytest.raises(FormatError):
        load(str(path)).__enter__()


def test_header_is_padded_and_sorted() -> None:
    raw = header_bytes({"b": (2,), "a": (1,)}, {"z": "1", "y": "2"})
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and len(raw) == 8 + n
    assert raw[8:].rstrip(b" ").decode() == (
        '{"__metadata__":{"y":"2","z":"1"},'
        '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    )


def test_foreign_safetensors_is_refused_clearly(tmp_path: Path) -> None:
    path = _file(tmp_path, json.dumps({"features.0.weight": _entry(0, 4, [1])}), b"\0" * 4)
    with (
        pytest.raises(FormatError, match="not a torchvision or timm VGG state dict"),
        load(str(path)),
    ):
        pass


def test_vggfcn_file_missing_tensors_lists_them_all(tmp_path: Path) -> None:
    meta = {"format": "vggfcn-fcn", "format_version": "1", "layout": "HWIO"}
    header = {
        "__metadata__": meta,
        "block1_conv1.kernel": _entry(0, 4, [1]),
        "junk": _entry(4, 8, [1]),
    }
    path = _file(tmp_path, json.dumps(header), b"\0" * 8)
    with pytest.raises(
        Exception, match="missing block1_conv1.bias, fc6.bias, fc6.kernel.*unexpected junk"
    ):
        with load(str(path)):
            pass


@pytest.mark.parametrize(
    ("values", "bad"),
    [([np.inf, -np.inf, 1.0], 2), ([np.nan, 2.0, 3.0], 1), ([3e38, 3e38, 3e38], 0)],
)
def test_writer_counts_nonfinite_values_quietly(
    tmp_path: Path, values: list[float], bad: int
) -> None:
    # +Inf and -Inf sum to NaN, and large finite weights can overflow the sum: the writer must
    # count exactly the non-finite ones, and say so as its own error, not a NumPy warning.
    tensor = Tensor.wrap(np.array(values, dtype=np.float32), "<t>")
    with (tmp_path / "out.bin").open("wb") as f, warnings.catch_warnings():
        warnings.simplefilter("error")
        if bad:
            with pytest.raises(FormatError, match=rf"<t>: {bad} NaN/Inf"):
                write(f, {"t": tensor}, {})
        else:
            write(f, {"t": tensor}, {})


def test_writer_bytes_equal_save_file(tmp_path: Path) -> None:
    """Without metadata (whose order save_file does not fix) our bytes are save_file's bytes."""
    tensors = fcn_tensors()
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    with open(ours, "wb") as f:
        write(f, tensors, {})
    safetensors.numpy.save_file({n: t.read() for n, t in tensors.items()}, str(theirs))
    assert ours.read_bytes() == theirs.read_bytes()


def test_large_tensor_streams_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks force many partial writes; the file must still be exact."""
    import vggfcn.formats.blocks

    monkeypatch.setattr(vggfcn.formats.blocks, "BLOCK_BYTES", 100)
    tensors = fcn_tensors()
    path = tmp_path / "small-blocks"
    with open(path, "wb") as f:
        write(f, tensors, {"k": "v"})
    loaded = safetensors.numpy.load_file(str(path))
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(loaded[name], tensor.read())


def fcn_tensors() -> dict[str, Tensor]:
    """Output tensors of the tiny random model, in memory."""
    return named_tensors(to_fcn(random_classifier()))
