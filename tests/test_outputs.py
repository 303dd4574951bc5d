"""Output files: never the input, never half-written, replaced only with --force and atomically,
writable before heavy work, mode from the umask, byte-identical reruns, options that do not apply
refused, --verify before publishing — through the command line and the API.

Faults while writing (a full disk, Ctrl-C) are tested in test_faults.py; what each output format
holds in test_convert.py (safetensors), test_onnx.py and test_keras_fcn.py.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import safetensors.numpy

import vggfcn.convert
import vggfcn.formats
from tests.helpers import (
    FC2,
    assert_refused,
    copy,
    edited_h5,
    mkdir,
    run,
    temps,
    tensors,
    write,
)
from vggfcn import api
from vggfcn.api import convert_file
from vggfcn.errors import MismatchError, OutputError
from vggfcn.selfcheck import fc6_read_as_chw

# ------------------------------------------------------------ never the input


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


def test_output_equal_to_input_is_refused_even_through_links(keras1: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.h5"
    source.write_bytes(keras1.read_bytes())
    (tmp_path / "sym.h5").symlink_to(source)
    os.link(source, tmp_path / "hard.h5")
    before = source.read_bytes()
    for out in (source, tmp_path / "sym.h5", tmp_path / "hard.h5"):
        with pytest.raises(OutputError, match="output is the input"):
            convert_file(str(source), str(out), force=True)
    assert source.read_bytes() == before


# ------------------------------------------------------------ replaced only with --force, whole


def test_existing_output_needs_force(keras1: Path, tmp_path: Path) -> None:
    out = write(tmp_path / "out.safetensors", b"old contents")
    assert_refused(run("convert", keras1, out), out, "already exists", "--force")
    assert out.read_bytes() == b"old contents" and temps(tmp_path) == []
    result = run("convert", "--force", keras1, out)
    assert result.exit_code == 0, result.stderr
    assert tensors(out)["fc6.kernel"].shape == (7, 7, 16, 32)
    assert temps(tmp_path) == []


def test_existing_output_needs_force_and_is_replaced_whole(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        convert_file(str(keras1), str(out))
    assert out.read_bytes() == b"old"
    convert_file(str(keras1), str(out), force=True)
    assert safetensors.numpy.load_file(str(out))
    assert os.listdir(tmp_path) == ["o.safetensors"]


def test_failed_forced_replacement_leaves_the_old_output(keras1: Path, tmp_path: Path) -> None:
    def poison(f: h5py.File) -> None:
        data = f[FC2][()]
        data[0, 0] = np.nan
        f[FC2][...] = data

    source = edited_h5(keras1, tmp_path / "nan.h5", poison)
    out = write(tmp_path / "out.safetensors", b"old contents")
    assert_refused(run("convert", "--force", source, out), source, "NaN")
    assert out.read_bytes() == b"old contents" and temps(tmp_path) == []


# ------------------------------------------------------------ writable before heavy work


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
        (lambda d: write(d / "a-file", b"x") / "out.safetensors", "a-file"),
        (lambda d: Path("/proc") / "out.safetensors", "/proc"),
        (lambda d: mkdir(d / "a-dir"), "is a directory"),
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


def test_missing_output_directory_fails_before_reading(tmp_path: Path) -> None:
    source = write(tmp_path / "never-read.h5", b"not a checkpoint: never opened")
    with pytest.raises(OutputError, match="does not exist"):
        convert_file(str(source), str(tmp_path / "nope" / "o.safetensors"))


# ------------------------------------------------------------ mode and bytes


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


def test_output_mode_follows_umask_in_the_api(keras1: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        convert_file(str(keras1), str(tmp_path / "o.safetensors"))
    finally:
        os.umask(old)
    assert (tmp_path / "o.safetensors").stat().st_mode & 0o777 == 0o644


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
    outputs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors", elsewhere / "c.safetensors"]
    for source, out in zip([sources[kind], sources[kind], moved], outputs, strict=True):
        result = run("convert", *options, source, out)
        assert result.exit_code == 0, result.stderr
    first = outputs[0].read_bytes()
    assert all(out.read_bytes() == first for out in outputs[1:])


def test_same_input_gives_byte_identical_output(keras1: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "x.safetensors", tmp_path / "b" / "x.safetensors"
    a.parent.mkdir()
    b.parent.mkdir()
    convert_file(str(keras1), str(a))
    convert_file(str(keras1), str(b))
    assert a.read_bytes() == b.read_bytes()


def test_outputs_are_byte_identical_across_runs(tmp_path: Path, keras1: Path) -> None:
    for output in ("onnx", "keras"):
        a, b = tmp_path / f"a.{output}", tmp_path / f"b.{output}"
        assert run("convert", keras1, a).exit_code == 0
        assert run("convert", keras1, b).exit_code == 0
        assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------ options


def test_output_options_that_do_not_apply_are_refused(tmp_path: Path, keras1: Path) -> None:
    for options in (["--dtype", "float16"], ["--layout", "hwio"], ["--head", "reduced"]):
        out = tmp_path / "x.onnx"
        expected = f"cannot take {' '.join(options)}; it holds OIHW kernels"
        assert_refused(run("convert", *options, keras1, out), out, expected, out=out)
    out = tmp_path / "x.onnx"  # what an ONNX model holds anyway may be asked for
    assert run("convert", "--layout", "oihw", keras1, out).exit_code == 0
    out = tmp_path / "weights.bin"
    result = run("convert", "--to", "keras", keras1, out)
    assert result.exit_code == 0 and zipfile.is_zipfile(out)


# ------------------------------------------------------------ convert --verify


@pytest.fixture
def broken_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """`to_fcn` with the classic flatten-order bug: right shapes, wrong function."""
    real = vggfcn.convert.to_fcn
    monkeypatch.setattr(api, "to_fcn", lambda graph, **kw: fc6_read_as_chw(real(graph, **kw)))


def test_convert_verify_refuses_to_publish_a_wrong_conversion(
    keras1: Path, tmp_path: Path, broken_conversion: None
) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(MismatchError, match="verification failed"):
        api.convert_file(str(keras1), str(out), verify_output=True)
    assert not out.exists() and temps(tmp_path) == []
    assert_refused(run("convert", "--verify", keras1, out), out, "verification failed", code=1)
    assert not out.exists() and temps(tmp_path) == []
    write(out, b"previous good file")
    assert_refused(
        run("convert", "--verify", "--force", keras1, out), out, "verification failed", code=1
    )
    assert out.read_bytes() == b"previous good file" and temps(tmp_path) == []
    # Without --verify the same bug is published: the check is what stops it.
    result = run("convert", "--force", keras1, out)
    assert result.exit_code == 0
    assert run("verify", "--quiet", keras1, out).exit_code == 1
