"""Keras 3 `.keras` archives (`formats/keras_archive.py`): weights mapped in place, a deflated
member inflated only under its cap (a zip bomb refused before inflating), missing members
named, weights placed where the config says.

The contract for a refusal, as everywhere: exit 2, one stderr line naming the file and what was
found and expected, no output file, nothing from the input imported or run. The config itself
is tested in test_keras_config.py, the model it describes in test_keras_model.py.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vggfcn.formats.keras_archive as keras_archive
from tests.helpers import (
    converts_and_verifies,
    edit_config,
    head_layers,
    refuse_everywhere,
    rezip,
    run_measured,
    tensors,
)
from vggfcn.formats import load
from vggfcn.formats.detect import HDF5_MAGIC
from vggfcn.formats.region import FileRegion
from vggfcn.graph import Dense, SourceGraph

logging.getLogger("absl").setLevel(logging.ERROR)


def test_weights_are_mapped_from_the_archive_in_place(archive: Path) -> None:
    with load(str(archive)) as graph:
        assert isinstance(graph, SourceGraph)
        dense = next(op for op in graph.ops if isinstance(op, Dense))
        assert isinstance(dense.kernel.source, FileRegion)
        assert dense.kernel.source.path == str(archive)  # no extraction, no copy
        assert graph.provenance.label == "keras-archive/keras3"


def test_a_deflated_weights_member_is_inflated_under_its_cap(archive: Path, tmp_path: Path) -> None:
    deflated = rezip(archive, tmp_path / "deflated.keras", deflate=("model.weights.h5",))
    out = tensors(converts_and_verifies(deflated, tmp_path))
    reference = tensors(converts_and_verifies(archive, tmp_path))
    assert out.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(out[name], value)


def test_a_deflated_member_over_the_cap_is_refused(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deflated = rezip(archive, tmp_path / "deflated.keras", deflate=("model.weights.h5",))
    monkeypatch.setattr(keras_archive, "INFLATE_MAX_BYTES", 1 << 16)
    refuse_everywhere(deflated, "model.weights.h5", "more than the 65536")


def test_a_deflated_bomb_is_refused_in_bounded_memory(archive: Path, tmp_path: Path) -> None:
    """A 4 MiB archive whose weights member inflates to 1 GiB (HDF5's signature, then zeros):
    refused from what it declares, before anything is inflated, by a process whose peak RSS
    stays far below what inflating it in memory took (2 GiB)."""
    bomb, out = tmp_path / "bomb.keras", tmp_path / "out.safetensors"
    with (
        zipfile.ZipFile(archive) as src,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        dst.writestr("config.json", src.read("config.json"))
        with dst.open("model.weights.h5", "w") as member:
            member.write(HDF5_MAGIC)
            for _ in range(1024):
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 8 << 20
    code, stderr, peak = run_measured("convert", bomb, out)
    assert code == 2, stderr
    assert re.fullmatch(
        rf"vggfcn: error: {re.escape(str(bomb))}: member model\.weights\.h5 declares "
        r"1073741832 bytes from \d+ compressed, more than weights ever compress \(a zip bomb\); "
        r"refused before inflating\n",
        stderr,
    )
    assert peak < 256 << 20
    assert not out.exists()


def test_a_deflated_member_that_is_not_hdf5_is_refused_before_inflating(
    archive: Path, tmp_path: Path
) -> None:
    fake = rezip(
        archive,
        tmp_path / "fake.keras",
        {"model.weights.h5": b"PK\x03\x04 not a weights file " * 1000},
        deflate=("model.weights.h5",),
    )
    refuse_everywhere(fake, r"model\.weights\.h5 starts with b'PK\\x03\\x04 not'", "expected")


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_missing_member_is_named(archive: Path, tmp_path: Path, member: str) -> None:
    refuse_everywhere(rezip(archive, tmp_path / "m.keras", drop=(member,)), f"without {member}")


def test_a_config_placing_a_layer_in_another_layers_group(archive: Path, tmp_path: Path) -> None:
    def rename(config: dict[str, Any]) -> None:
        denses = [layer for layer in head_layers(config) if layer["class_name"] == "Dense"]
        denses[0]["config"]["name"] = "renamed"

    refuse_everywhere(edit_config(archive, tmp_path / "r.keras", rename), "disagree")
