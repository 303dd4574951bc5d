"""Every case of shared/BAD_INPUTS.md, through the command line as a user meets it.

The contract for a user-caused failure: exit code 2 (1 only for a verification mismatch), one
line on stderr naming the file and the problem, nothing on stdout, no traceback, no output
file created or changed, no `.OUTPUT.*.vggfcn-tmp` left, and never code from the input run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from click.testing import CliRunner, Result

import vggfcn.convert
import vggfcn.formats
from fixtures.generate import TINY, make_weights, write_checkpoint
from fixtures.torch_vgg import classifier
from vggfcn import api
from vggfcn.cli import main
from vggfcn.errors import ArchitectureError, MismatchError
from vggfcn.selfcheck import fc6_read_as_chw
from vggfcn.synthetic import random_layers
from vggfcn.verify import verify
from vggfcn.weights import Tensor

TF_NAMES = {f"block{b}_conv{i}": f"conv{b}_{i}" for b in range(1, 6) for i in range(1, 4)}
FC1 = "fc1/fc1_W_1:0"  # the Keras 1 fc6 kernel, (7*7*16, 32) in TINY
FC2 = "fc2/fc2_W_1:0"

# ------------------------------------------------------------ helpers


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".vggfcn-tmp")]


def assert_refused(
    result: Result, source: Path | str, *expected: str, out: Path | None = None, code: int = 2
) -> None:
    """The contract: exit `code`, one stderr line naming `source` and each `expected` regex."""
    stderr = result.stderr
    assert result.exit_code == code, (result.exit_code, stderr, result.exception)
    assert result.stdout == ""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vggfcn: error: "), stderr
    assert str(source) in stderr, stderr
    for pattern in expected:
        assert re.search(pattern, stderr), (pattern, stderr)
    if out is not None:
        assert not out.exists()
        assert temps(out.parent) == []


def refuse_everywhere(source: Path, *expected: str, original: Path | None = None) -> None:
    """`convert` and `inspect` (and `verify` against `original`) all refuse `source`."""
    out = source.parent / "out.safetensors"
    assert_refused(run("convert", source, out), source, *expected, out=out)
    assert_refused(run("inspect", source), source, *expected)
    if original is not None:
        assert_refused(run("verify", original, source), source, *expected)


def copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def edited_h5(source: Path, target: Path, edit: Callable[[h5py.File], object]) -> Path:
    copy(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def replace_dataset(f: h5py.File, name: str, data: Any = None, **options: Any) -> None:
    group, _, leaf = name.rpartition("/")
    del f[name]
    f[group].create_dataset(leaf, data=data, **options)


def converts_and_verifies(source: Path, tmp_path: Path, *options: str) -> Path:
    out = tmp_path / f"{source.name}.fcn.safetensors"
    result = run("convert", *options, source, out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    result = run("verify", "--quiet", source, out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return out


def tensors(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


class Evil:
    """Runs a shell command when a normal unpickler loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------ sources


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """A TINY torchvision VGG16 state dict (same widths as the Keras fixtures)."""
    model = classifier(TINY.convs, TINY.fc[0], TINY.classes, seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sources(
    tiny_files: dict[str, Path], state: dict[str, torch.Tensor], tmp_path_factory: Any
) -> dict[str, Path]:
    """One valid TINY checkpoint per supported format, plus our own converted output."""
    folder = tmp_path_factory.mktemp("sources")
    files = {
        "keras1": tiny_files["keras1"],
        "keras3-weights": tiny_files["keras3-weights"],
        "torchvision.pth": folder / "vgg16.pth",
        "torchvision.safetensors": folder / "vgg16.safetensors",
        "tensorflow-vgg.npy": folder / "vgg16.npy",
        "fcn.safetensors": folder / "vgg16.fcn.safetensors",
    }
    torch.save(state, files["torchvision.pth"])
    safetensors.torch.save_file(state, str(files["torchvision.safetensors"]))
    layers = {TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(_arch(), seed=0)}
    np.save(files["tensorflow-vgg.npy"], np.array(layers, dtype=object), allow_pickle=True)
    api.convert_file(str(files["keras1"]), str(files["fcn.safetensors"]))
    return files


def _arch() -> Any:
    from vggfcn.arch import Arch

    return Arch.from_blocks("vgg16", TINY.convs, TINY.fc, TINY.classes)


def _fc6_bytes(kind: str, state: dict[str, torch.Tensor], fcn: Path) -> bytes:
    """The bytes of the largest tensor (fc6's kernel) as the file of `kind` stores them."""
    if kind.startswith("keras") or kind == "tensorflow-vgg.npy":
        return dict(make_weights(TINY))["fc1"][0].tobytes()
    if kind.startswith("torchvision"):
        return state["classifier.0.weight"].numpy().tobytes()
    return tensors(fcn)["fc6.kernel"].tobytes()


def _header_cut(kind: str, data: bytes) -> int:
    """A length that ends the file inside its header."""
    if kind.endswith(".safetensors"):
        return 8 + int.from_bytes(data[:8], "little") // 2
    return {"keras1": 64, "keras3-weights": 64, "torchvision.pth": 20}.get(kind, 30)


# ------------------------------------------------------------ not a checkpoint


def _png() -> bytes:
    from vggfcn.heatmap import encode_png

    data = encode_png(np.zeros((4, 4, 3), np.uint8))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


NOT_CHECKPOINTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty": (lambda d: _write(d / "empty.h5", b""), "empty"),
    "text": (lambda d: _write(d / "notes.pth", b"hello, I am a text file\n" * 4), "unknown format"),
    "lfs-pointer": (
        lambda d: _write(
            d / "vgg16.h5",
            b"version https://git-lfs.github.com/spec/v1\n"
            b"oid sha256:4b825dc642cb6eb9a060e54bf8d69288fbee4904\nsize 553467096\n",
        ),
        "Git LFS pointer",
    ),
    "image": (lambda d: _write(d / "cat.safetensors", _png()), "unknown format"),
    "directory": (lambda d: _mkdir(d / "model.h5"), "is a directory"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


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
        cut = _header_cut(kind, data)
    else:
        fc6 = _fc6_bytes(kind, state, sources["fcn.safetensors"])
        start = data.find(fc6)
        assert start > 0, "fc6's bytes are stored contiguously in the file"
        cut = start + len(fc6) // 2
    source = _write(tmp_path / f"cut{''.join(sources[kind].suffixes)}", data[:cut])
    original = sources["keras1"] if kind == "fcn.safetensors" else None
    refuse_everywhere(source, original=original)


# ------------------------------------------------------------ detection by content


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
    layers = {TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(_arch(), seed=0)}
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


def test_fc6_input_that_is_not_7x7xC5(keras1: Path, tmp_path: Path) -> None:
    """A 6x6 pool5 flattening (576 rows) where 7*7*16 = 784 belong."""
    source = edited_h5(
        keras1,
        tmp_path / "fc6.h5",
        lambda f: replace_dataset(f, FC1, np.ones((6 * 6 * 16, 32), np.float32)),
    )
    refuse_everywhere(source, r"\(576, 32\)", "7x7x16", "784")


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


def test_bfloat16_torch_tensor_is_refused_by_name(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    bad = dict(state)
    bad["classifier.3.weight"] = state["classifier.3.weight"].to(torch.bfloat16)
    source = tmp_path / "bf16.pth"
    torch.save(bad, source)
    refuse_everywhere(source, r"classifier\.3\.weight", "bfloat16")


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
        kernel = original.trunk[0].kernel.read().copy()
        kernel[0, 0, 0, :] = 3e38
        huge = Tensor.wrap(kernel, "<huge>")
        first = replace(original.trunk[0], kernel=huge)
        inflated = replace(original, trunk=(first, *original.trunk[1:]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ArchitectureError, match="not finite"):
                verify(inflated, vggfcn.convert.to_fcn(inflated))


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
        TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(_arch(), seed=0)
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
    source = _write(tmp_path / "past-end.h5", bytes(data))
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


def _corrupt_global_heap(source: Path, target: Path, size: int) -> Path:
    """Keras 3 stores each layer's `name` attribute in the global heap; lie about its size."""
    data = bytearray(source.read_bytes())
    at = data.find(b"GCOL")
    assert at > 0
    struct.pack_into("<Q", data, at + 8, size)
    return _write(target, bytes(data))


@pytest.mark.parametrize("size", [0x2000, 2**32], ids=["inside-file", "beyond-file"])
def test_corrupt_hdf5_global_heap_is_refused_promptly(
    tiny_files: dict[str, Path], tmp_path: Path, size: int
) -> None:
    """In a real process: HDF5 can spin forever on this file, and only a clock can tell."""
    source = _corrupt_global_heap(tiny_files["keras3-weights"], tmp_path / "heap.weights.h5", size)
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
    return _write(path, struct.pack("<Q", len(raw) if length is None else length) + raw + body)


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


# ------------------------------------------------------------ outputs


@pytest.mark.parametrize("via", ["same path", "symlink", "hard link"])
@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_is_refused(
    keras1: Path, tmp_path: Path, via: str, force: bool
) -> None:
    source = copy(keras1, tmp_path / "in.h5")
    out = source
    if via == "symlink":
        out = tmp_path / "sym.safetensors"
        out.symlink_to(source)
    elif via == "hard link":
        out = tmp_path / "hard.safetensors"
        os.link(source, out)
    before = source.read_bytes()
    result = run("convert", *(["--force"] if force else []), source, out)
    assert_refused(result, out, "output is the input")
    assert source.read_bytes() == before and temps(tmp_path) == []


def test_existing_output_needs_force(keras1: Path, tmp_path: Path) -> None:
    out = _write(tmp_path / "out.safetensors", b"old contents")
    assert_refused(run("convert", keras1, out), out, "already exists", "--force")
    assert out.read_bytes() == b"old contents" and temps(tmp_path) == []
    result = run("convert", "--force", keras1, out)
    assert result.exit_code == 0, result.stderr
    assert tensors(out)["fc6.kernel"].shape == (7, 7, 16, 32)
    assert temps(tmp_path) == []


def test_failed_forced_replacement_leaves_the_old_output(keras1: Path, tmp_path: Path) -> None:
    def poison(f: h5py.File) -> None:
        data = f[FC2][()]
        data[0, 0] = np.nan
        f[FC2][...] = data

    source = edited_h5(keras1, tmp_path / "nan.h5", poison)
    out = _write(tmp_path / "out.safetensors", b"old contents")
    assert_refused(run("convert", "--force", source, out), source, "NaN")
    assert out.read_bytes() == b"old contents" and temps(tmp_path) == []


@pytest.fixture
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every checkpoint `convert` opens: a doomed output must fail before any."""
    opened: list[str] = []
    real = vggfcn.formats.load

    def spy(path: str) -> Any:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(api, "load", spy)
    yield opened


@pytest.mark.parametrize(
    ("make_out", "expected"),
    [
        (lambda d: d / "no-such-dir" / "out.safetensors", "does not exist"),
        (lambda d: _write(d / "a-file", b"x") / "out.safetensors", "a-file"),
        (lambda d: Path("/proc") / "out.safetensors", "/proc"),
        (lambda d: _mkdir(d / "a-dir"), "is a directory"),
    ],
    ids=["missing directory", "under a file", "/proc", "output is a directory"],
)
def test_unwritable_output_fails_before_heavy_work(
    keras1: Path,
    tmp_path: Path,
    no_heavy_work: list[str],
    make_out: Callable[[Path], Path],
    expected: str,
) -> None:
    out = make_out(tmp_path)
    result = run("convert", keras1, out)
    assert_refused(result, out, expected)
    assert no_heavy_work == [], "the checkpoint was opened before the output was checked"
    assert temps(tmp_path) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_mode_follows_umask(keras1: Path, tmp_path: Path, umask: int, mode: int) -> None:
    out = tmp_path / "out.safetensors"
    old = os.umask(umask)
    try:
        result = run("convert", keras1, out)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert out.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize(
    "kind", ["keras1", "keras3-weights", "torchvision.pth", "tensorflow-vgg.npy"]
)
@pytest.mark.parametrize("options", [[], ["--layout", "oihw", "--names", "torch"]])
def test_same_input_and_options_give_identical_bytes(
    sources: dict[str, Path], tmp_path: Path, kind: str, options: list[str]
) -> None:
    """Also from another directory and to another output name: no paths, no timestamps."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = copy(sources[kind], elsewhere / sources[kind].name)
    outputs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors", elsewhere / "c.st"]
    for source, out in zip([sources[kind], sources[kind], moved], outputs, strict=True):
        result = run("convert", *options, source, out)
        assert result.exit_code == 0, result.stderr
    first = outputs[0].read_bytes()
    assert all(out.read_bytes() == first for out in outputs[1:])


# ------------------------------------------------------------ convert --verify


@pytest.fixture
def broken_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """`to_fcn` with the classic flatten-order bug: right shapes, wrong function."""
    real = vggfcn.convert.to_fcn
    monkeypatch.setattr(api, "to_fcn", lambda weights: fc6_read_as_chw(real(weights)))


def test_convert_verify_refuses_to_publish_a_wrong_conversion(
    keras1: Path, tmp_path: Path, broken_conversion: None
) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(MismatchError, match="verification failed"):
        api.convert_file(str(keras1), str(out), verify_output=True)
    assert not out.exists() and temps(tmp_path) == []
    assert_refused(run("convert", "--verify", keras1, out), out, "verification failed", code=1)
    assert not out.exists() and temps(tmp_path) == []
    _write(out, b"previous good file")
    assert_refused(
        run("convert", "--verify", "--force", keras1, out), out, "verification failed", code=1
    )
    assert out.read_bytes() == b"previous good file" and temps(tmp_path) == []
    # Without --verify the same bug is published: the check is what stops it.
    result = run("convert", "--force", keras1, out)
    assert result.exit_code == 0
    assert run("verify", "--quiet", keras1, out).exit_code == 1
