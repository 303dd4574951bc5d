"""The .npy layer-dict reader: tensorflow-vgg files read back exactly, hostile pickles refused.

`np.load(..., allow_pickle=True)` is the referee for what a file holds; the reader must agree
with it on good files and never run what it would run on bad ones.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import Evil, stdout_without
from vggfcn.errors import FormatError
from vggfcn.formats.npy_file import read_layer_dict

HEADER = {"descr": "|O", "fortran_order": False, "shape": ()}


def _tf_vgg_layers(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """tensorflow-vgg's layout in miniature: conv W HWIO, fc W (in, out), biases 1-D, float32."""
    rng = np.random.default_rng(seed)

    def pair(*shape: int) -> list[np.ndarray]:
        return [rng.standard_normal(shape, np.float32), rng.standard_normal(shape[-1:], np.float32)]

    return {"conv1_1": pair(3, 3, 3, 4), "conv1_2": pair(3, 3, 4, 4), "fc6": pair(16, 8)}


def _save(path: Path, obj: object) -> Path:
    np.save(path, obj, allow_pickle=True)  # type: ignore[arg-type]
    return path


def _with_header(path: Path, payload: bytes, header: dict[str, Any] | None = None) -> Path:
    """A .npy with a real header and any payload after it."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, HEADER if header is None else header)
        f.write(payload)
    return path


def _reference(path: Path) -> dict[str, list[np.ndarray]]:
    """What numpy's own (executing) loader makes of a trusted file."""
    return np.load(path, allow_pickle=True, encoding="latin1").item()  # type: ignore[no-any-return]


def _assert_same(got: dict[str, list[np.ndarray]], expected: dict[str, list[np.ndarray]]) -> None:
    assert list(got) == list(expected)
    for name, arrays in expected.items():
        assert len(got[name]) == len(arrays), name
        for a, b in zip(got[name], arrays, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)


# ---------------------------------------------------------------- Python 2 era file, by hand


def _s(text: bytes) -> bytes:
    """A Python 2 `str` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    if len(text) < 256:
        return b"U" + bytes([len(text)]) + text
    return b"T" + struct.pack("<i", len(text)) + text


def _dtype(spec: bytes, order: bytes, flags: int) -> bytes:
    state = (
        b"(K\x03" + _s(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"t"
    )
    return b"cnumpy\ndtype\n" + _s(spec) + b"\x89\x88\x87R" + state + b"b"


_RECONSTRUCT = (
    b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _s(b"b") + b"\x87R"
)


def _array(shape: tuple[int, ...], spec: bytes, data: bytes) -> bytes:
    dims = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in shape) + b"t"
    return _RECONSTRUCT + b"(K\x01" + dims + _dtype(spec, b"<", 0) + b"\x89" + _s(data) + b"tb"


def _py2_payload(layers: dict[str, list[bytes]]) -> bytes:
    """The protocol-2 pickle Python 2 + numpy 1 wrote for `np.save(path, {name: [W, b]})`."""
    body = b"}"
    for name, arrays in layers.items():
        body += _s(name.encode()) + b"]" + b"".join(a + b"a" for a in arrays) + b"s"
    holder = b"(K\x01)" + _dtype(b"O8", b"|", 63) + b"\x89]" + body + b"atb"
    return b"\x80\x02" + _RECONSTRUCT + holder + b"."


def _py2_file(path: Path, layers: dict[str, list[np.ndarray]]) -> Path:
    encoded = {
        name: [_array(a.shape, a.dtype.str[1:].encode(), a.tobytes()) for a in arrays]
        for name, arrays in layers.items()
    }
    return _with_header(path, _py2_payload(encoded))


# ---------------------------------------------------------------- good files


def test_tensorflow_vgg_dict_reads_back_exactly(tmp_path: Path) -> None:
    layers = _tf_vgg_layers()
    got = read_layer_dict(str(_save(tmp_path / "vgg16.npy", layers)))
    _assert_same(got, layers)
    assert got["conv1_1"][0].shape == (3, 3, 3, 4)  # HWIO, as stored


def test_fortran_order_big_endian_and_other_dtypes_are_kept(tmp_path: Path) -> None:
    layers = {
        "fortran": [np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.arange(3, dtype=">f4")],
        "widths": [np.linspace(0, 1, 5, dtype=np.float16), np.array([7, -9], np.int64)],
    }
    got = read_layer_dict(str(_save(tmp_path / "x.npy", layers)))
    _assert_same(got, layers)
    assert got["fortran"][0].flags.f_contiguous and not got["fortran"][0].flags.c_contiguous
    assert got["fortran"][1].dtype == np.dtype(">f4")


def test_python2_era_file_matches_numpys_latin1_load(tmp_path: Path) -> None:
    layers = _tf_vgg_layers(seed=1)
    layers["fc6"][0] = np.arange(200, dtype=np.float32).reshape(25, 8)  # > 255 bytes: BINSTRING
    path = _py2_file(tmp_path / "vgg16.npy", layers)
    _assert_same(_reference(path), layers)  # the hand-made file is what numpy reads
    _assert_same(read_layer_dict(str(path)), layers)


def test_python3_protocol2_pickle_with_codecs_bytes(tmp_path: Path) -> None:
    holder = np.empty((), dtype=object)
    holder[()] = _tf_vgg_layers(seed=2)
    path = _with_header(tmp_path / "p2.npy", pickle.dumps(holder, protocol=2))
    assert b"_codecs" in path.read_bytes()
    _assert_same(read_layer_dict(str(path)), _reference(path))


def test_caffe_tensorflow_weights_biases_dicts_become_pairs(tmp_path: Path) -> None:
    w, b = np.ones((2, 3), np.float32), np.zeros(3, np.float32)
    got = read_layer_dict(str(_save(tmp_path / "c.npy", {"fc8": {"weights": w, "biases": b}})))
    _assert_same(got, {"fc8": [w, b]})


def test_reader_works_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    path = _save(tmp_path / "v.npy", {"conv1_1": [np.arange(3.0)]})
    code = (
        "from vggfcn.formats.npy_file import read_layer_dict\n"
        f"print(read_layer_dict({str(path)!r})['conv1_1'][0].tolist())"
    )
    assert stdout_without(["torch"], code).strip() == "[0.0, 1.0, 2.0]"


# ---------------------------------------------------------------- hostile payloads


def test_code_in_the_payload_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save(tmp_path / "evil.npy", {"conv1_1": [np.ones(2), Evil(marker)]})
    system = f"{os.system.__module__}.system"
    with pytest.raises(FormatError, match=rf"evil\.npy: refused to unpickle global {system} "):
        read_layer_dict(str(path))
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # the payload is live: numpy's loader runs it
    assert marker.exists()


@pytest.mark.parametrize("name", ["eval", "exec"])
def test_builtins_payload_is_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    payload = b"\x80\x04\x8c\x08builtins\x8c" + bytes([len(name)]) + name.encode() + b"\x93"
    payload += pickle.dumps(f"open({str(marker)!r}, 'w').close()", 4)[2:-1] + b"\x85R."
    path = _with_header(tmp_path / "b.npy", payload)
    with pytest.raises(FormatError, match=rf"refused to unpickle global builtins\.{name} "):
        read_layer_dict(str(path))
    assert not marker.exists()
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize(
    ("obj", "global_name"),
    [
        ({"conv1_1": [np.ones(2), np.float32(1.0)]}, "numpy._core.multiarray.scalar"),
        (OrderedDict(conv1_1=[np.ones(2)]), "collections.OrderedDict"),
    ],
)
def test_unexpected_harmless_globals_are_refused(
    tmp_path: Path, obj: object, global_name: str
) -> None:
    with pytest.raises(FormatError, match=rf"refused to unpickle global {global_name} "):
        read_layer_dict(str(_save(tmp_path / "h.npy", obj)))


def test_dtype_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.npy", {"conv1_1": [np.ones(2, np.complex128)]})
    with pytest.raises(FormatError, match=r"refused dtype 'c16'"):
        read_layer_dict(str(path))


def test_array_state_larger_than_its_data_is_refused(tmp_path: Path) -> None:
    lying = _array((1000, 1000), b"f4", b"\0" * 16)
    path = _with_header(tmp_path / "l.npy", _py2_payload({"fc6": [lying]}))
    with pytest.raises(FormatError, match=r"shape \(1000, 1000\).* needs 4000000 bytes.* holds 16"):
        read_layer_dict(str(path))


def test_memo_bomb_is_refused_before_unpickling(tmp_path: Path) -> None:
    path = _with_header(tmp_path / "m.npy", b"\x80\x02Nr\xff\xff\xff\x7f.")
    with pytest.raises(FormatError, match="memo entry 2147483647 out of sequence"):
        read_layer_dict(str(path))


# ---------------------------------------------------------------- not a layer dict


def test_plain_array_is_not_a_layer_dict(tmp_path: Path) -> None:
    path = tmp_path / "plain.npy"
    np.save(path, np.ones((2, 3), np.float32))
    with pytest.raises(FormatError, match=r"holds a plain '<f4' array of shape \(2, 3\)"):
        read_layer_dict(str(path))


def test_object_array_of_several_items_is_refused(tmp_path: Path) -> None:
    objects = np.empty(2, dtype=object)
    path = _save(tmp_path / "o.npy", objects)
    with pytest.raises(FormatError, match=r"object array of shape \(2,\)"):
        read_layer_dict(str(path))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"conv1_1": "weights"}, "layer conv1_1 holds a str, expected"),
        ({"conv1_1": [np.ones(2), [np.ones(2)]]}, "layer conv1_1 item 1 is not a numeric array"),
        ({3: [np.ones(2)]}, "layer key a int is not a string"),
        ({}, "layer dict is empty"),
        ({1, 2}, "pickled object is not a dict"),
    ],
)
def test_payloads_of_the_wrong_shape_are_refused(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        read_layer_dict(str(_save(tmp_path / "w.npy", obj)))


def _v1(header: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a .npy file"),
        (b"PK\x03\x04 a zip", "not a .npy file"),
        (b"\x93NUMPY\x04\x00\x10\x00\x00\x00", r"\.npy format version 4\.0 is not supported"),
        (
            b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30),
            r"\.npy header of 1073741824 bytes exceeds",
        ),
        (_v1(b"{'descr': __import__('os').system('x')}"), "invalid .npy header"),
        (_v1(b"{'descr': '|O'}   \n"), "invalid .npy header"),
        (
            _v1(b"{'descr': '|O', 'fortran_order': False, 'shape': ()}")[:20],
            "truncated .npy header",
        ),
    ],
)
def test_broken_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=rf"x\.npy: {message}"):
        read_layer_dict(str(path))


def test_every_truncation_gives_a_format_error(tmp_path: Path) -> None:
    raw = _save(tmp_path / "v.npy", _tf_vgg_layers()).read_bytes()
    cut = tmp_path / "cut.npy"
    for length in range(0, len(raw), 11):
        cut.write_bytes(raw[:length])
        with pytest.raises(FormatError, match=r"cut\.npy: "):
            read_layer_dict(str(cut))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read_layer_dict(str(tmp_path))
