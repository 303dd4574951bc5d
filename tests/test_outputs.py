"""Outputs: never the input, never half-written, replaced only with --force and atomically,
writable before heavy work, mode from the umask, byte-identical reruns, --verify first."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

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
from vggfcn.errors import MismatchError
from vggfcn.selfcheck import fc6_read_as_chw

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
    out = write(tmp_path / "out.safetensors", b"old contents")
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
    out = write(tmp_path / "out.safetensors", b"old contents")
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
