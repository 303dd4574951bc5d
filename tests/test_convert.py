"""convert: the FC -> conv reshape, the output file's bytes and metadata, atomic publishing."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import vggfcn.api
import vggfcn.digest
from fixtures.generate import GENERATIONS, TINY
from vggfcn.api import convert_file
from vggfcn.convert import to_fcn
from vggfcn.digest import sha256_file
from vggfcn.errors import ArchitectureError, FormatError, OutputError
from vggfcn.formats.safetensors_fcn import named_tensors
from vggfcn.formats.safetensors_io import write
from vggfcn.graph import Conv, Dense
from vggfcn.synthetic import TINY as TINY_ARCH
from vggfcn.synthetic import random_classifier, random_layers
from vggfcn.tensor import Tensor


def test_head_becomes_7x7_and_1x1_kernels_with_the_same_elements(
    keras1: Path, tmp_path: Path
) -> None:
    classifier = random_classifier()
    fcn = to_fcn(classifier)
    c5, (f6, f7, k) = TINY_ARCH.pool5_channels, TINY_ARCH.head_widths
    assert [layer.kernel.shape for layer in fcn.head] == [
        (7, 7, c5, f6),
        (1, 1, f6, f7),
        (1, 1, f7, k),
    ]
    assert [layer.relu for layer in fcn.head] == [True, True, False]
    fc6_dense = next(op for op in classifier.ops if isinstance(op, Dense)).kernel.read()
    fc6_conv = fcn.head[0].kernel.read()
    # Row (h*7 + w)*C + c of the dense kernel is filter tap (h, w, c): Keras' HWC flatten order.
    for h, w, c in [(0, 0, 0), (6, 6, c5 - 1), (2, 5, 3), (4, 1, 9)]:
        np.testing.assert_array_equal(fc6_conv[h, w, c], fc6_dense[(h * 7 + w) * c5 + c])
    convs = [op for op in classifier.ops if isinstance(op, Conv)]
    assert [layer.kernel for layer in fcn.trunk] == [op.kernel for op in convs]  # not even read
    convert_file(str(keras1), str(tmp_path / "fcn.safetensors"))
    with pytest.raises(ArchitectureError, match="already fully convolutional"):
        convert_file(str(tmp_path / "fcn.safetensors"), str(tmp_path / "again.safetensors"))


@pytest.mark.parametrize("generation", GENERATIONS)
def test_output_holds_every_tensor_with_metadata(
    tiny_files: dict[str, Path], tmp_path: Path, generation: str
) -> None:
    source = tiny_files[generation]
    out = tmp_path / "out.safetensors"
    result = convert_file(str(source), str(out))
    loaded = safetensors.numpy.load_file(str(out))  # the reference library reads our file
    expected = {name: (k, b) for name, k, b in random_layers(TINY_ARCH)}
    assert len(loaded) == 2 * len(expected)
    for name, (kernel, bias) in expected.items():
        if name == "fc6":
            kernel = kernel.reshape(7, 7, TINY.convs[-1], TINY.fc[0])
        elif name in ("fc7", "fc8"):
            kernel = kernel.reshape(1, 1, *kernel.shape)
        np.testing.assert_array_equal(loaded[f"{name}.kernel"], kernel)
        np.testing.assert_array_equal(loaded[f"{name}.bias"], bias)
        assert loaded[f"{name}.kernel"].dtype == np.float32
    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
    configured = generation in ("keras2-model", "keras3-h5")  # files with a model config
    assert meta == {
        "format": "vggfcn-fcn",
        "format_version": "1",
        "arch": "vgg16",
        "layout": "HWIO",
        "names": "vggfcn",
        "dtype": "float32",
        "classes": str(TINY.classes),
        "head": "classifier",
        "head_activations": "relu,relu,linear",
        "input_size": "224,224",
        "channel_order": "bgr",
        "preprocessing": "caffe",
        "source_format": f"keras-h5/{generation}",
        "source_file": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "source_softmax": "yes" if configured else "unknown",
        "source_output_activation": "softmax" if configured else "unknown",
        "source_batch_norm": "none",
    }
    assert result.fc6_shape == (7, 7, TINY.convs[-1], TINY.fc[0])


def test_same_input_gives_byte_identical_output(keras1: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "x.safetensors", tmp_path / "b" / "x.safetensors"
    a.parent.mkdir()
    b.parent.mkdir()
    convert_file(str(keras1), str(a))
    convert_file(str(keras1), str(b))
    assert a.read_bytes() == b.read_bytes()


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


def test_output_mode_follows_umask(keras1: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        convert_file(str(keras1), str(tmp_path / "o.safetensors"))
    finally:
        os.umask(old)
    assert (tmp_path / "o.safetensors").stat().st_mode & 0o777 == 0o644


def test_existing_output_needs_force_and_is_replaced_whole(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        convert_file(str(keras1), str(out))
    assert out.read_bytes() == b"old"
    convert_file(str(keras1), str(out), force=True)
    assert safetensors.numpy.load_file(str(out))
    assert os.listdir(tmp_path) == ["o.safetensors"]


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


def test_missing_output_directory_fails_before_reading(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        convert_file(str(tmp_path / "no-such-input.h5"), str(tmp_path / "nope" / "o.safetensors"))


def test_failure_while_writing_leaves_nothing(
    keras1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vggfcn.formats.safetensors_io as io

    calls = {"n": 0}
    real = io.write

    def failing_write(f, tensors, metadata, progress=lambda n: None, **kw):  # type: ignore[no-untyped-def]
        def count(n: int) -> None:
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(28, "No space left on device")

        real(f, tensors, metadata, count, **kw)

    monkeypatch.setattr(io, "write", failing_write)
    with pytest.raises(OutputError, match="No space left on device"):
        convert_file(str(keras1), str(tmp_path / "o.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_the_source_hash_stops_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\1" * (3 << 20))
    assert sha256_file(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    stop = threading.Event()
    stop.set()
    with pytest.raises(CancelledError):
        sha256_file(str(path), stop)


def test_a_failed_conversion_stops_the_source_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash starts before the source is opened; a source that is refused must not wait
    for it to read the whole file."""
    stopped: list[bool] = []

    def hashing(path: str, stop: threading.Event) -> str:
        stopped.append(stop.wait(timeout=30))
        raise CancelledError

    monkeypatch.setattr(vggfcn.digest, "sha256_file", hashing)
    source = tmp_path / "notes.txt"
    source.write_text("not a checkpoint\n")
    with pytest.raises(FormatError):
        convert_file(str(source), str(tmp_path / "out.safetensors"))
    assert stopped == [True]
