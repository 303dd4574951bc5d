"""The command line as users and pipelines see it: stdout, stderr, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import write, write_output
from vggfcn.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_convert_verify_inspect_round_trip(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "fcn.safetensors"
    code, stdout, stderr = run("convert", str(keras1), str(out))
    assert code == 0 and stderr == ""
    assert stdout.startswith(f"wrote {out}: vgg16 fully convolutional, 10 classes")
    code, stdout, _ = run("verify", str(keras1), str(out))
    assert code == 0
    assert stdout.splitlines()[-1] == "PASS"
    code, stdout, _ = run("inspect", str(out))
    assert code == 0
    assert "safetensors (keras-h5/keras1)" in stdout and "convolutional head" in stdout
    assert "HWIO kernels, vggfcn names, float32" in stdout
    assert re.search(r"fc6\s+conv7x7\s+7x7x16x32 ", stdout)


def test_json_modes_print_one_object(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "fcn.safetensors"
    code, stdout, _ = run("convert", "--json", str(keras1), str(out))
    assert code == 0 and json.loads(stdout)["fc6_shape"] == [7, 7, 16, 32]
    code, stdout, _ = run("verify", "--json", "--images", "1", str(keras1), str(out))
    report = json.loads(stdout)
    assert code == 0 and report["passed"] is True and report["images"] == 1
    assert report["atol"] == 1e-4 and report["max_scaled_error"] < 1e-5
    code, stdout, _ = run("inspect", "--json", str(keras1))
    info = json.loads(stdout)
    assert info["generation"] == "keras1" and info["flatten_order"] == "HWC"
    dense = [row["name"] for row in info["layers"] if row["class"] == "Dense"]
    assert dense == ["fc1", "fc2", "predictions"]  # the layers as the file names them
    assert info["parameters"] == sum(row["parameters"] for row in info["layers"])


def test_quiet_prints_nothing(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "fcn.safetensors"
    assert run("convert", "-q", str(keras1), str(out)) == (0, "", "")
    assert run("verify", "-q", str(keras1), str(out)) == (0, "", "")


def test_verify_mismatch_exits_1(keras1: Path, tmp_path: Path, make_file) -> None:  # type: ignore[no-untyped-def]
    other = make_file("keras1", name="other.h5", seed=1)  # same shapes, other weights
    out = tmp_path / "fcn.safetensors"
    run("convert", str(other), str(out))
    code, stdout, _ = run("verify", str(keras1), str(out))
    assert code == 1
    assert stdout.splitlines()[-1].startswith("FAIL")


def test_selfcheck(tmp_path: Path) -> None:
    code, stdout, _ = run("verify")
    assert code == 0 and stdout.splitlines()[-1] == "PASS"
    code, stdout, _ = run("verify", "--json")
    assert json.loads(stdout)["passed"] is True


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.h5", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: write(d / "empty.h5", b""), "empty file"),
        (lambda d: write(d / "notes.h5", b"hello, I am text\n"), "unknown format"),
        (
            lambda d: write(
                d / "lfs.h5", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"
            ),
            "Git LFS pointer",
        ),
        (
            lambda d: write(d / "cut.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100),
            "not a readable HDF5 file",
        ),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(tmp_path: Path, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    source = make(tmp_path)
    out = tmp_path / "out.safetensors"
    for args in (["convert", str(source), str(out)], ["inspect", str(source)]):
        code, stdout, stderr = run(*args)
        assert code == 2, stderr
        assert stdout == ""
        assert len(stderr.strip().splitlines()) == 1 and expected in stderr
        assert str(source) in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if "vggfcn-tmp" in p.name] == []


def test_notop_file_exit_2_names_the_problem(make_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = make_file("keras1", top=False)
    code, _, stderr = run("convert", str(source), str(tmp_path / "o.safetensors"))
    assert code == 2 and "include_top=False" in stderr


def test_usage_errors_exit_2() -> None:
    assert run("convert")[0] == 2
    assert run("verify", "only-one.h5")[0] == 2
    assert run("verify", "--images", "0")[0] == 2


def test_help_has_examples() -> None:
    for command in ("convert", "verify", "inspect"):
        code, stdout, _ = run(command, "--help")
        assert code == 0 and "Example" in stdout


class TestInstalledCommand:
    """The console script and `python -m vggfcn`, as a shell or Makefile runs them."""

    def _exe(self) -> str:
        exe = shutil.which("vggfcn", path=os.path.dirname(sys.executable)) or shutil.which("vggfcn")
        assert exe, "vggfcn is not installed on PATH"
        return exe

    def test_console_script_converts_and_verifies(self, keras1: Path, tmp_path: Path) -> None:
        out = tmp_path / "fcn.safetensors"
        done = subprocess.run(
            [self._exe(), "convert", str(keras1), str(out)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # not a terminal: no progress bar
        done = subprocess.run(
            [self._exe(), "verify", "-q", str(keras1), str(out)], capture_output=True
        )
        assert done.returncode == 0 and done.stdout == b""

    def test_python_m_reports_errors_without_traceback(self, tmp_path: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "vggfcn", "inspect", str(tmp_path / "nope.h5")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2
        assert done.stderr == f"vggfcn: error: {tmp_path / 'nope.h5'}: no such file\n"


def test_channels_first_fc6_file_fails_verify_with_exit_1(keras1: Path, tmp_path: Path) -> None:
    """The classic bug, as a file: fc6 rows read as (C, H, W). Right shapes, wrong function."""
    from vggfcn.convert import to_fcn
    from vggfcn.formats import load
    from vggfcn.selfcheck import fc6_read_as_chw

    wrong = tmp_path / "wrong.safetensors"
    with load(str(keras1)) as classifier:
        fcn = fc6_read_as_chw(to_fcn(classifier))  # type: ignore[arg-type]
        write_output("safetensors", wrong, fcn)
    code, stdout, stderr = run("verify", str(keras1), str(wrong))
    assert code == 1, stderr
    assert "FAIL" in stdout


def test_verify_sizes_option(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "fcn.safetensors"
    run("convert", str(keras1), str(out))
    code, stdout, _ = run("verify", "--json", "--sizes", "224,320,288", str(keras1), str(out))
    report = json.loads(stdout)
    assert code == 0
    spatial = [(c["size"], c["map_shape"]) for c in report["spatial"]]
    assert spatial == [(288, [3, 3]), (320, [4, 4])]
    code, stdout, _ = run("verify", "--sizes", "224,288", str(keras1), str(out))
    assert "288x288 map 3x3" in stdout
    for bad in ("200", "224,abc", ""):
        code, _, stderr = run("verify", "--sizes", bad, str(keras1), str(out))
        assert code == 2 and "--sizes" in stderr
