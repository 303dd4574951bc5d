"""The torch zip reader: real `torch.save` files read back exactly, hostile or broken ones refused.

torch is only the writer here (and the referee for values); the reader itself must never need it.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import Evil, stdout_without
from vggfcn.errors import FormatError
from vggfcn.formats.region import FileRegion
from vggfcn.formats.torch_zip import read_state_dict

# ---------------------------------------------------------------------------- writers


class TinyVGG(nn.Module):
    """VGG's shape in miniature: the same key names torchvision uses, OIHW kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 8), nn.Linear(8, 5)
        )


def _model() -> TinyVGG:
    torch.manual_seed(0)
    return TinyVGG()


def _save(tmp_path: Path, obj: object, name: str = "model.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _read(path: str) -> dict[str, Any]:
    """`read_state_dict`, each tensor the reader left in the file (a `FileRegion`) read."""
    return {
        name: value[()] if isinstance(value, FileRegion) else value
        for name, value in read_state_dict(path).items()
    }


def _assert_same(arrays: dict[str, np.ndarray], tensors: dict[str, torch.Tensor]) -> None:
    assert list(arrays) == list(tensors)
    for name, tensor in tensors.items():
        expected = tensor.detach().numpy()
        assert arrays[name].dtype == expected.dtype, name
        assert arrays[name].shape == expected.shape, name
        np.testing.assert_array_equal(arrays[name], expected, err_msg=name)


def _memmap_base(array: np.ndarray) -> np.memmap | None:
    base: Any = array
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    return base


class Ref(NamedTuple):
    """A storage reference as torch pickles it: `('storage', type, key, location, numel)`."""

    key: str
    numel: int
    type: Any = torch.FloatStorage


class FakeTensor(NamedTuple):
    """Pickles as torch's own `_rebuild_tensor_v2(storage, offset, size, stride, ...)` call."""

    storage: Ref
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _TorchLikePickler(pickle.Pickler):
    """Writes the opcodes torch writes, for tensors described by hand (out of bounds, etc.)."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Ref):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, FakeTensor):
            args = (obj.storage, obj.offset, obj.size, obj.stride, False, OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args)
        return NotImplemented


def _pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _torch_like_zip(
    path: Path,
    pickled: bytes,
    storages: dict[str, bytes] | None = None,
    byteorder: bytes | None = b"little",
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """A zip laid out as torch lays it out (without torch's alignment padding)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data, compress_type=compression)
        z.writestr("archive/version", b"3\n")
    return path


def _central_entries(raw: bytes) -> dict[str, int]:
    """Member name -> offset of its central directory entry."""
    entries, at = {}, raw.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", raw, at + 28)[0]
        entries[raw[at + 46 : at + 46 + name_length].decode()] = at
        at = raw.find(b"PK\x01\x02", at + 46)
    return entries


class EvilExec(Evil):
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class EvilEval(Evil):
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


# ---------------------------------------------------------------------------- real files


def test_module_state_dict_reads_back_exactly(tmp_path: Path) -> None:
    sd = _model().state_dict()
    assert hasattr(sd, "_metadata")  # what torch pickles via BUILD: must not trip the reader
    arrays = _read(str(_save(tmp_path, sd)))
    _assert_same(arrays, sd)
    assert arrays["features.0.weight"].shape == (4, 3, 3, 3)  # OIHW, as stored
    assert arrays["classifier.0.weight"].shape == (8, 24)


def test_tensors_stay_in_the_file_until_read_then_map_it(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.arange(1000, 1256, dtype=torch.float32)})
    region = read_state_dict(str(path))["w"]
    assert isinstance(region, FileRegion) and region.shape == (256,)
    raw = path.read_bytes()
    expected = np.arange(1000, 1256, dtype=np.float32).tobytes()
    assert raw[region.offset : region.offset + region.nbytes] == expected
    array = region[()]
    assert not array.flags.owndata and not array.flags.writeable  # a view of a map, no copy
    np.testing.assert_array_equal(array, np.arange(1000, 1256))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_float_widths_keep_their_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    sd = {"w": torch.randn(3, 5, dtype=dtype), "b": torch.randn(5, dtype=dtype)}
    _assert_same(_read(str(_save(tmp_path, sd))), sd)


def test_non_contiguous_tensors_and_shared_storages(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"base": base, "t": base.t(), "slice": base[1:3, 2:5], "step": base[:, ::2]}
    assert sd["slice"].storage_offset() == 8 and not sd["t"].is_contiguous()
    arrays = _read(str(_save(tmp_path, sd)))
    _assert_same(arrays, sd)
    assert arrays["t"].strides == tuple(4 * s for s in base.t().stride())


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_training_checkpoint_wrappers_yield_the_inner_state_dict(tmp_path: Path, key: str) -> None:
    sd = _model().state_dict()
    wrapped = {key: sd, "epoch": 3, "optimizer": {"lr": 0.1, "momentum": torch.zeros(2)}}
    _assert_same(_read(str(_save(tmp_path, wrapped))), sd)


def test_parameters_saved_directly_are_tensors(tmp_path: Path) -> None:
    params = dict(_model().named_parameters())
    assert isinstance(params["features.0.weight"], nn.Parameter)
    _assert_same(_read(str(_save(tmp_path, params))), params)


def test_integer_buffers_keep_their_dtype_and_plain_values_are_skipped(tmp_path: Path) -> None:
    bn = nn.BatchNorm2d(3).state_dict()
    saved = {**bn, "note": "trained on ImageNet", "steps": 12}
    arrays = _read(str(_save(tmp_path, saved)))
    _assert_same(arrays, bn)
    assert arrays["num_batches_tracked"].dtype == np.int64


def test_bfloat16_reads_exactly_as_float32(tmp_path: Path) -> None:
    """bfloat16 storages come back as float32 values of their bits (big or little endian)."""
    values = torch.tensor([[1.0, -2.5, 3e38], [1e-38, 0.1, -0.0]]).to(torch.bfloat16)
    path = _save(tmp_path, {"ok": torch.ones(2), "fc6.weight": values.t()})  # a strided view
    got = _read(str(path))["fc6.weight"]
    assert got.dtype == np.float32 and got.shape == (3, 2)
    np.testing.assert_array_equal(got[()], values.t().float().numpy())


def test_a_single_tensor_is_not_a_state_dict(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="holds a single tensor, expected a state dict"):
        _read(str(_save(tmp_path, torch.ones(3))))


def test_reader_works_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.arange(4.0)})
    code = (
        "from vggfcn.formats.torch_zip import read_state_dict\n"
        f"print(read_state_dict({str(path)!r})['w'][()].tolist())"
    )
    assert stdout_without(["torch"], code).strip() == "[0.0, 1.0, 2.0, 3.0]"


# ---------------------------------------------------------------------------- other layouts


def test_unaligned_big_endian_archive_without_padding(tmp_path: Path) -> None:
    values = np.arange(6, dtype=">f4")
    pickled = _pickle({"w": FakeTensor(Ref("0", 6), 0, (2, 3), (3, 1))})
    path = _torch_like_zip(tmp_path / "be.pth", pickled, {"0": values.tobytes()}, b"big")
    array = _read(str(path))["w"]
    assert array.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(array, np.arange(6).reshape(2, 3))


def test_missing_byteorder_means_little_endian(tmp_path: Path) -> None:
    pickled = _pickle({"w": FakeTensor(Ref("0", 2), 0, (2,), (1,))})
    data = np.array([1.5, -2.0], "<f4").tobytes()
    path = _torch_like_zip(tmp_path / "m.pth", pickled, {"0": data}, byteorder=None)
    np.testing.assert_array_equal(_read(str(path))["w"], [1.5, -2.0])


# ---------------------------------------------------------------------------- hostile pickles


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [
        (Evil, f"{os.system.__module__}.system"),
        (EvilExec, "builtins.exec"),
        (EvilEval, "builtins.eval"),
    ],
)
def test_code_in_the_pickle_is_refused_and_never_run(
    tmp_path: Path, payload: type[Evil], global_name: str
) -> None:
    marker = tmp_path / "pwned"
    pickled = pickle.dumps({"w": payload(marker)}, protocol=2, fix_imports=False)
    path = _torch_like_zip(tmp_path / "evil.pth", pickled)
    pattern = rf"evil\.pth: refused to unpickle global {re.escape(global_name)} .*nothing was"
    with pytest.raises(FormatError, match=pattern):
        _read(str(path))
    assert not marker.exists()
    pickle.loads(pickled)  # the payload is live: a normal unpickler runs it
    assert marker.exists()


def test_payload_inside_a_real_torch_save_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save(tmp_path, {"features.0.weight": torch.ones(2), "x": Evil(marker)})
    with pytest.raises(FormatError, match=rf"global {os.system.__module__}\.system"):
        _read(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("torch.storage", "_load_from_bytes"),
        ("torch._utils", "_rebuild_tensor"),
        ("posix", "system"),
    ],
)
def test_globals_outside_the_allowlist_are_refused_by_name(
    tmp_path: Path, module: str, name: str
) -> None:
    pickled = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"C\x00\x85R."
    with pytest.raises(FormatError, match=rf"refused to unpickle global {module}\.{name} "):
        _read(str(_torch_like_zip(tmp_path / "g.pth", pickled)))


def test_harmless_but_unexpected_global_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.ones(2), "counts": Counter("ab")})
    with pytest.raises(FormatError, match=r"refused to unpickle global collections\.Counter"):
        _read(str(path))


def test_a_whole_pickled_module_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(FormatError, match=r"global torch\.nn\.modules\.container\.Sequential"):
        _read(str(path))


# ---------------------------------------------------------------------------- broken archives


def test_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    pickled = _pickle({"w": FakeTensor(Ref("0", 4), 2, (2, 2), (2, 1))})
    path = _torch_like_zip(tmp_path / "oob.pth", pickled, {"0": bytes(16)})
    with pytest.raises(FormatError, match=r"reaches element 5 of member archive/data/0"):
        _read(str(path))


def test_storage_member_smaller_than_declared_is_refused(tmp_path: Path) -> None:
    pickled = _pickle({"w": FakeTensor(Ref("0", 4), 0, (4,), (1,))})
    path = _torch_like_zip(tmp_path / "short.pth", pickled, {"0": bytes(12)})
    with pytest.raises(FormatError, match=r"member archive/data/0 holds 12 bytes.* need 16"):
        _read(str(path))


def test_missing_storage_member_is_refused(tmp_path: Path) -> None:
    pickled = _pickle({"w": FakeTensor(Ref("7", 1), 0, (1,), (1,))})
    path = _torch_like_zip(tmp_path / "gone.pth", pickled, {"0": bytes(4)})
    with pytest.raises(FormatError, match=r"storage member 'archive/data/7' is missing"):
        _read(str(path))


def test_compressed_storage_is_refused(tmp_path: Path) -> None:
    pickled = _pickle({"w": FakeTensor(Ref("0", 64), 0, (64,), (1,))})
    path = _torch_like_zip(tmp_path / "z.pth", pickled, {"0": bytes(256)}, compression=8)
    with pytest.raises(FormatError, match=r"member archive/data/0 is compressed"):
        _read(str(path))


def test_truncated_pickle_is_refused(tmp_path: Path) -> None:
    pickled = _pickle({"w": FakeTensor(Ref("0", 1), 0, (1,), (1,))})
    path = _torch_like_zip(tmp_path / "cut.pth", pickled[:-6], {"0": bytes(4)})
    with pytest.raises(FormatError, match=r"data\.pkl is truncated"):
        _read(str(path))


@pytest.mark.parametrize(
    ("pickled", "message"),
    [
        (b"\x80\x02Nr\xff\xff\xff\x7f.", "memo entry 2147483647 out of sequence"),
        (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b".", "BINBYTES8 at byte 2 runs"),
        (
            b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little") + b".",
            "unsupported pickle opcode 0x96",
        ),
        (b"\x80\x02\x82\x01.", "unsupported pickle opcode 0x82"),  # EXT1: copyreg registry
        (b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"N.", "FRAME at byte 2 runs"),
        (b"\x80\x02}", "no STOP opcode"),
        (b"\x80\x02a.", r"data\.pkl is corrupt \(UnpicklingError"),  # APPEND with no list
    ],
)
def test_pickles_that_would_exhaust_memory_or_break_are_refused_first(
    tmp_path: Path, pickled: bytes, message: str
) -> None:
    path = _torch_like_zip(tmp_path / "bomb.pth", pickled)
    with pytest.raises(FormatError, match=message):
        _read(str(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_any_pickle_protocol_torch_can_write(tmp_path: Path, protocol: int) -> None:
    sd = _model().state_dict()
    path = tmp_path / "p.pth"
    torch.save(sd, path, pickle_protocol=protocol)
    _assert_same(_read(str(path)), sd)


def test_file_cut_inside_a_storage_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.arange(4096, dtype=torch.float32)})
    raw = path.read_bytes()
    middle = raw.find(np.arange(4096, dtype="<f4").tobytes()) + 8192
    path.write_bytes(raw[:middle])
    with pytest.raises(FormatError, match="corrupt zip archive"):
        _read(str(path))


def test_every_truncation_gives_a_format_error(tmp_path: Path) -> None:
    raw = _save(tmp_path, {"w": torch.ones(3, 2), "b": torch.zeros(2)}).read_bytes()
    cut = tmp_path / "cut.pth"
    for length in range(0, len(raw), 7):
        cut.write_bytes(raw[:length])
        with pytest.raises(FormatError, match=r"cut\.pth: "):
            _read(str(cut))


def test_flipped_central_directory_signature_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.ones(3)})
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    raw[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="corrupt zip archive"):
        _read(str(path))


def test_any_flipped_directory_byte_is_refused_or_harmless(tmp_path: Path) -> None:
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    raw = _save(tmp_path, sd).read_bytes()
    flipped = tmp_path / "flip.pth"
    refused = 0
    for at in range(raw.find(b"PK\x01\x02"), len(raw)):
        corrupt = bytearray(raw)
        corrupt[at] ^= 0xFF
        flipped.write_bytes(bytes(corrupt))
        try:
            arrays = _read(str(flipped))
        except FormatError as e:
            assert str(e).startswith(f"{flipped}: ") and "\n" not in str(e)
            refused += 1
        else:
            _assert_same(arrays, sd)  # e.g. a timestamp: the weights must still be right
    assert refused > 0


def test_member_declaring_more_than_the_archive_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.ones(3)})
    raw = bytearray(path.read_bytes())
    entry = next(at for name, at in _central_entries(bytes(raw)).items() if "/data/0" in name)
    struct.pack_into("<II", raw, entry + 20, 0x7FFFFFFF, 0x7FFFFFFF)  # sizes
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"member \w+/data/0 declares 2147483647 bytes.*beyond"):
        _read(str(path))


# ---------------------------------------------------------------------------- not torch at all


def test_zip_without_data_pkl_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(FormatError, match=r"not a PyTorch checkpoint: no <archive>/data\.pkl"):
        _read(str(path))


def test_legacy_format_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match=r"legacy PyTorch format.*re-save with torch >= 1\.6"):
        _read(str(path))


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x89HDF\r\n\x1a\n" + bytes(40)])
def test_non_zip_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=r"x\.pth: not a zip archive"):
        _read(str(path))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        _read(str(tmp_path))
