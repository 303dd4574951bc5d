"""Files a converter must refuse, whatever their format, as the command line meets them: not
checkpoints, truncated, hostile (pickles that run code, HDF5 that points elsewhere), absurd
extents, malformed safetensors, weights that are not finite floats; and what must still convert
(misleading names, layers listed out of order).

Every refusal is held to the one contract (`helpers.assert_refused`): exit code 2 (1 only for a
verification mismatch), one line on stderr naming the file and the problem, nothing on stdout, no
traceback, no output file created or changed, no `.OUTPUT.*.vggfcn-tmp` left, and never code from
the input run. What one reader or one check refuses is tested with it: test_shapes.py,
test_state_dict.py, test_keras_config.py, test_keras_model.py, test_keras_archive.py,
test_keras_h5.py, test_torch_zip.py, test_npy_file.py, test_caffe.py, test_onnx.py.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import safetensors.numpy
import torch
from click.testing import CliRunner

import vggfcn.convert
import vggfcn.formats
from fixtures.generate import TINY, make_weights
from tests.helpers import (
    FC1,
    FC2,
    TF_NAMES,
    Evil,
    assert_refused,
    converts_and_verifies,
    copy,
    corrupt_global_heap,
    edited_h5,
    mkdir,
    refuse_everywhere,
    replace_dataset,
    run,
    temps,
    tensors,
    tiny_arch,
    write,
)
from vggfcn import api
from vggfcn.cli import main
from vggfcn.errors import ArchitectureError
from vggfcn.synthetic import random_layers
from vggfcn.tensor import Tensor
from vggfcn.verify import verify

# ------------------------------------------------------------ not a checkpoint


def _png() -> bytes:
    from vggfcn.heatmap import encode_png

    data = encode_png(np.zeros((4, 4, 3), np.uint8))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


NOT_CHECKPOINTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty": (lambda d: write(d / "empty.h5", b""), "empty"),
    "text": (lambda d: write(d / "notes.pth", b"hello, I am a text file\n" * 4), "unknown format"),
    "lfs-pointer": (
        lambda d: write(
            d / "vgg16.h5",
            b"version https://git-lfs.github.com/spec/v1\n"
            b"oid sha256:4b825dc642cb6eb9a060e54bf8d69288fbee4904\nsize 553467096\n",
        ),
        "Git LFS pointer",
    ),
    "image": (lambda d: write(d / "cat.safetensors", _png()), "unknown format"),
    "directory": (lambda d: mkdir(d / "model.h5"), "is a directory"),
}


@pytest.mark.parametrize("case", NOT_CHECKPOINTS)
def test_not_a_checkpoint(tmp_path: Path, case: str, keras1: Path) -> None:
    make, expected = NOT_CHECKPOINTS[case]
    source = make(tmp_path)
    refuse_everywhere(source, expected)
    fcn = tmp_path / "real.fcn.safetensors"
    api.convert_file(str(keras1), str(fcn))
    assert_refused(run("verify", source, fcn), source, expected)


# ------------------------------------------------------------ truncated files


KINDS = (
    "keras1",
    "keras3-weights",
    "torchvision.pth",
    "torchvision.safetensors",
    "tensorflow-vgg.npy",
    "fcn.safetensors",
)


def fc6_bytes(kind: str, state: dict[str, torch.Tensor], fcn: Path) -> bytes:
    """The bytes of the largest tensor (fc6's kernel) as the file of `kind` stores them."""
    if kind.startswith("keras") or kind == "tensorflow-vgg.npy":
        return dict(make_weights(TINY))["fc1"][0].tobytes()
    if kind.startswith("torchvision"):
        return state["classifier.0.weight"].numpy().tobytes()
    return safetensors.numpy.load_file(str(fcn))["fc6.kernel"].tobytes()


def header_cut(kind: str, data: bytes) -> int:
    """A length that ends the file inside its header."""
    if kind.endswith(".safetensors"):
        return 8 + int.from_bytes(data[:8], "little") // 2
    return {"keras1": 64, "keras3-weights": 64, "torchvision.pth": 20}.get(kind, 30)


@pytest.mark.parametrize("where", ["header", "tensor"])
@pytest.mark.parametrize("kind", KINDS)
def test_truncated_file_is_refused(
    sources: dict[str, Path],
    state: dict[str, torch.Tensor],
    tmp_path: Path,
    kind: str,
    where: str,
) -> None:
    data = sources[kind].read_bytes()
    if where == "header":
        cut = header_cut(kind, data)
    else:
        fc6 = fc6_bytes(kind, state, sources["fcn.safetensors"])
        start = data.find(fc6)
        assert start > 0, "fc6's bytes are stored contiguously in the file"
        cut = start + len(fc6) // 2
    source = write(tmp_path / f"cut{''.join(sources[kind].suffixes)}", data[:cut])
    original = sources["keras1"] if kind == "fcn.safetensors" else None
    refuse_everywhere(source, original=original)


# ------------------------------------------------------------ what must still convert


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("keras1", "vgg16.pth"),
        ("torchvision.pth", "vgg16.h5"),
        ("tensorflow-vgg.npy", "vgg16.safetensors"),
        ("torchvision.safetensors", "vgg16.npy"),
    ],
)
def test_misleading_extension_still_converts(
    sources: dict[str, Path], tmp_path: Path, kind: str, name: str
) -> None:
    source = copy(sources[kind], tmp_path / name)
    out = converts_and_verifies(source, tmp_path)
    reference = tmp_path / "reference.safetensors"
    api.convert_file(str(sources[kind]), str(reference))
    assert tensors(out).keys() == tensors(reference).keys()
    for key, value in tensors(reference).items():
        np.testing.assert_array_equal(tensors(out)[key], value)


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


# ------------------------------------------------------------ pickles


def test_pth_whose_pickle_runs_a_command_is_refused_and_never_runs(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pth"
    torch.save({**state, "features.0.weight": Evil(marker)}, source)
    with zipfile.ZipFile(source) as z:  # a real torch.save file, system() named in its pickle
        assert any(n.endswith("data.pkl") for n in z.namelist())
    fcn = tmp_path / "real.fcn.safetensors"
    api.convert_file(str(copy_state(state, tmp_path / "good.pth")), str(fcn))
    refuse_everywhere(source, "refused to unpickle global", "system")
    assert_refused(run("verify", source, fcn), source, "refused")
    assert not marker.exists()
    torch.load(source, weights_only=False)  # the control: a normal load does run it
    assert marker.exists()


def copy_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.mark.parametrize("where", ["layer", "top"])
def test_npy_with_a_malicious_object_payload_is_refused_and_never_runs(
    tmp_path: Path, where: str
) -> None:
    marker = tmp_path / "pwned"
    layers: dict[str, Any] = {
        TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(tiny_arch(), seed=0)
    }
    if where == "layer":
        layers["conv1_1"] = [Evil(marker), layers["conv1_1"][1]]
        payload = np.array(layers, dtype=object)
    else:
        payload = np.array(Evil(marker), dtype=object)
    source = tmp_path / "evil.npy"
    np.save(source, payload, allow_pickle=True)
    refuse_everywhere(source, "refused to unpickle global", "system")
    assert not marker.exists()
    np.load(source, allow_pickle=True)  # the control: numpy's own loader runs it
    assert marker.exists()


def test_malicious_pth_is_refused_from_the_cli_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"features.0.weight": Evil(marker)}, protocol=2))
        z.writestr("evil/version", "3\n")
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(main, ["convert", str(path), str(out)])
    assert result.exit_code == 2
    assert "refused to unpickle global" in result.stderr and "system" in result.stderr
    assert not marker.exists() and not out.exists()


def test_whole_pickled_module_is_refused(torch_model: torch.nn.Module, tmp_path: Path) -> None:
    torch.save(torch_model, tmp_path / "module.pth")
    result = CliRunner().invoke(main, ["inspect", "--json", str(tmp_path / "module.pth")])
    assert result.exit_code == 2 and "refused to unpickle global" in result.stderr


# ------------------------------------------------------------ HDF5 pointing elsewhere


def _elsewhere(tmp_path: Path) -> Path:
    """The other file: it does not exist, so any attempt to open it would fail differently."""
    return tmp_path / "elsewhere" / "weights.h5"


def test_hdf5_external_link_to_a_dataset(keras1: Path, tmp_path: Path) -> None:
    def link(f: h5py.File) -> None:
        del f[FC1]
        f["fc1"]["fc1_W_1:0"] = h5py.ExternalLink(str(_elsewhere(tmp_path)), "/fc1/fc1_W_1:0")

    source = edited_h5(keras1, tmp_path / "extlink.h5", link)
    refuse_everywhere(source, re.escape("/fc1/fc1_W_1:0 is an external link"), "refused")


def test_hdf5_external_link_to_a_group(keras1: Path, tmp_path: Path) -> None:
    def link(f: h5py.File) -> None:
        del f["fc2"]
        f["fc2"] = h5py.ExternalLink(str(_elsewhere(tmp_path)), "/fc2")

    source = edited_h5(keras1, tmp_path / "extgroup.h5", link)
    refuse_everywhere(source, "/fc2 is an external link", "refused")


def test_hdf5_soft_link(keras1: Path, tmp_path: Path) -> None:
    def link(f: h5py.File) -> None:
        f.move(FC1, "stash")
        f["fc1"]["fc1_W_1:0"] = h5py.SoftLink("/stash")

    source = edited_h5(keras1, tmp_path / "soft.h5", link)
    refuse_everywhere(source, re.escape("/fc1/fc1_W_1:0 is a soft link"))


def test_hdf5_external_raw_storage(keras1: Path, tmp_path: Path) -> None:
    shape = (7 * 7 * 16, 32)
    other = _elsewhere(tmp_path)
    source = edited_h5(
        keras1,
        tmp_path / "external.h5",
        lambda f: replace_dataset(
            f, FC1, shape=shape, dtype="<f4", external=[(str(other), 0, 4 * shape[0] * shape[1])]
        ),
    )
    with h5py.File(source) as f:
        assert f[FC1].external
    refuse_everywhere(source, re.escape(FC1), "outside this file")


def test_hdf5_virtual_dataset(keras1: Path, tmp_path: Path) -> None:
    shape = (7 * 7 * 16, 32)

    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape, "<f4")
        layout[...] = h5py.VirtualSource(str(_elsewhere(tmp_path)), "/data", shape)
        del f[FC1]
        f["fc1"].create_virtual_dataset("fc1_W_1:0", layout, fillvalue=0)

    source = edited_h5(keras1, tmp_path / "virtual.h5", virtual)
    with h5py.File(source) as f:
        assert f[FC1].is_virtual
    refuse_everywhere(source, re.escape(FC1), "outside this file")


# ------------------------------------------------------------ absurd extents


def test_contiguous_dataset_reaching_past_the_end_of_the_file(keras1: Path, tmp_path: Path) -> None:
    """fc1's layout message moved to point half its size before the end of the file: the file is
    whole and opens, but the declared extent runs past its end."""
    with h5py.File(keras1) as f:
        start, nbytes = f[FC1].id.get_offset(), f[FC1].nbytes
    data = bytearray(keras1.read_bytes())
    layout = struct.pack("<QQ", start, nbytes)  # a contiguous layout message: address, size
    assert data.count(layout) == 1
    at = data.find(layout)
    struct.pack_into("<Q", data, at, len(data) - nbytes // 2)
    source = write(tmp_path / "past-end.h5", bytes(data))
    refuse_everywhere(source, "truncated|corrupt|past|beyond|exceeds")


def test_dataset_declared_but_never_stored(keras1: Path, tmp_path: Path) -> None:
    """fc1's kernel declares 784x32 floats and stores none (never written): HDF5 would hand out
    fill values — zeros that were never weights."""
    source = edited_h5(
        keras1,
        tmp_path / "unallocated.h5",
        lambda f: replace_dataset(f, FC1, shape=(7 * 7 * 16, 32), dtype="<f4"),
    )
    with h5py.File(source) as f:
        assert f[FC1].id.get_offset() is None
    refuse_everywhere(source, re.escape(FC1))


@pytest.mark.parametrize("size", [0x2000, 2**32], ids=["inside-file", "beyond-file"])
def test_corrupt_hdf5_global_heap_is_refused_promptly(
    tiny_files: dict[str, Path], tmp_path: Path, size: int
) -> None:
    """In a real process: HDF5 can spin forever on this file, and only a clock can tell."""
    source = corrupt_global_heap(tiny_files["keras3-weights"], tmp_path / "heap.weights.h5", size)
    out = tmp_path / "out.safetensors"
    for args in (["convert", source, out], ["inspect", source]):
        with subprocess.Popen(
            [sys.executable, "-m", "vggfcn", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"vggfcn {args[0]} still running after 20 s on {source}")
        assert proc.returncode == 2, stderr
        assert stdout == "" and len(stderr.splitlines()) == 1 and str(source) in stderr, stderr
    assert not out.exists() and temps(tmp_path) == []


# ------------------------------------------------------------ safetensors structure


def _safetensors_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _safetensors(path: Path, header: str, body: bytes, length: int | None = None) -> Path:
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return write(path, struct.pack("<Q", len(raw) if length is None else length) + raw + body)


def _duplicate_names(header: dict[str, Any], body: bytes) -> tuple[str, bytes]:
    items = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in header.items()]
    items.append(items[-1])  # the last entry once more, under the same name
    return "{" + ",".join(items) + "}", body


def _overlapping(header: dict[str, Any], body: bytes) -> tuple[str, bytes]:
    # Two tensors of the same size (the first two 4-channel biases): point the second at the
    # first's bytes. Sizes stay consistent; the other range becomes a gap.
    same = [k for k in sorted(header) if k != "__metadata__" and header[k]["shape"] == [4]]
    header[same[1]]["data_offsets"] = header[same[0]]["data_offsets"]
    return json.dumps(header), body


def _trailing(header: dict[str, Any], body: bytes) -> tuple[str, bytes]:
    return json.dumps(header), body + b"\0" * 16


SAFETENSORS_CASES: dict[str, tuple[Callable[..., tuple[str, bytes]], str]] = {
    "duplicate-names": (_duplicate_names, "duplicate"),
    "overlapping-offsets": (_overlapping, "overlap"),
    "trailing-bytes": (_trailing, "trailing"),
}


@pytest.mark.parametrize("kind", ["torchvision.safetensors", "fcn.safetensors"])
@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_malformed_safetensors(
    sources: dict[str, Path], tmp_path: Path, kind: str, case: str
) -> None:
    build, expected = SAFETENSORS_CASES[case]
    header, body = _safetensors_parts(sources[kind])
    source = _safetensors(tmp_path / "bad.safetensors", *build(header, body))
    original = sources["keras1"] if kind == "fcn.safetensors" else None
    refuse_everywhere(source, expected, original=original)


@pytest.mark.parametrize("length", [100_000_001, 2**40, 2**64 - 1])
def test_oversized_safetensors_header(
    sources: dict[str, Path], tmp_path: Path, length: int
) -> None:
    header, body = _safetensors_parts(sources["torchvision.safetensors"])
    source = _safetensors(tmp_path / "huge-header.safetensors", json.dumps(header), body, length)
    refuse_everywhere(source)


# ------------------------------------------------------------ weights not finite floats


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
