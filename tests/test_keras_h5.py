"""The Keras HDF5 reader (`formats/keras_h5.py`): every generation yields the same source graph,
or a clear error; every missing dataset named at once.

Shapes that do not chain (a transposed kernel, a "notop" file) are tested in test_shapes.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from fixtures.generate import GENERATIONS, make_weights
from tests.helpers import edited_h5, read_all, refuse_everywhere
from vggfcn.errors import ArchitectureError, FormatError
from vggfcn.formats import load
from vggfcn.graph import Conv, Dense, Flatten, MaxPool, SourceGraph


@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_generation_reads_to_the_generated_weights(
    tiny_files: dict[str, Path], generation: str
) -> None:
    graph, tensors = read_all(tiny_files[generation])
    assert graph.provenance.generation == generation
    assert graph.input.size == (224, 224)
    expected = make_weights()  # Keras names: block1_conv1 ... fc1, fc2, predictions
    weighted = [op for op in graph.ops if isinstance(op, Conv | Dense)]
    assert [op.name for op in weighted] == [name for name, _ in expected]
    assert all(op.layout in ("HWIO", "IO") for op in weighted)  # Keras' own layouts
    assert [type(op) for op in graph.ops].count(MaxPool) == 5
    assert [op.order for op in graph.ops if isinstance(op, Flatten)] == ["HWC"]
    for name, (kernel, bias) in expected:
        np.testing.assert_array_equal(tensors[f"{name}.kernel"], kernel)
        np.testing.assert_array_equal(tensors[f"{name}.bias"], bias)


@pytest.mark.parametrize(
    ("generation", "activation"),
    [
        ("keras1", "unknown"),
        ("keras2", "unknown"),
        ("keras2-model", "softmax"),
        ("keras3-h5", "softmax"),
        ("keras3-weights", "unknown"),
    ],
)
def test_output_activation_is_read_from_the_model_config_when_present(
    tiny_files: dict[str, Path], generation: str, activation: str
) -> None:
    with load(str(tiny_files[generation])) as graph:
        assert isinstance(graph, SourceGraph)
        assert graph.output_activation == activation


@pytest.mark.parametrize("generation", ["keras2", "keras2-model"])
def test_chunked_layer_names(make_file: Callable[..., Path], generation: str) -> None:
    path = make_file(generation, chunk_layer_names=True)
    with h5py.File(path) as f:
        root = f["model_weights"] if "model_weights" in f else f
        assert "layer_names" not in root.attrs and "layer_names1" in root.attrs
    _, tensors = read_all(path)
    _, reference = read_all(make_file(generation, name="plain.h5"))
    assert tensors.keys() == reference.keys()


def test_layer_order_comes_from_attributes_not_listing(keras1: Path, tmp_path: Path) -> None:
    """h5py lists groups alphabetically; only `layer_names` decides the order we use."""
    path = tmp_path / "shuffled.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        names = list(f.attrs["layer_names"])
        convs = [n for n in names if b"conv" in n]
        swapped = [convs[1] if n == convs[0] else convs[0] if n == convs[1] else n for n in names]
        f.attrs["layer_names"] = np.array(swapped)
    # block1_conv1 (3 -> 4) now stands second, where a 4 -> 4 kernel belongs.
    with pytest.raises(
        ArchitectureError,
        match=r"block1_conv1 kernel has shape \(3, 3, 3, 4\), expected \(3, 3, 4, 4\)",
    ):
        read_all(path)


def test_missing_dataset_names_the_path(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "missing.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        del f["fc2/fc2_b_1:0"]
    with pytest.raises(ArchitectureError, match=r"missing /fc2/fc2_b_1:0 \(expected \(32,\)\)"):
        read_all(path)


def test_missing_keras_datasets_are_listed_at_once(keras1: Path, tmp_path: Path) -> None:
    def drop(f: h5py.File) -> None:
        del f["fc2/fc2_b_1:0"]
        del f["predictions/predictions_W_1:0"]
        del f["block2_conv1/block2_conv1_W_1:0"]

    source = edited_h5(keras1, tmp_path / "partial.h5", drop)
    refuse_everywhere(source, "fc2_b_1:0", "predictions_W_1:0", "block2_conv1_W_1:0")


def test_links_to_other_files_are_refused_without_opening_them(
    keras1: Path, tmp_path: Path
) -> None:
    path = tmp_path / "linked.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        del f["fc1"]
        f["fc1"] = h5py.ExternalLink(str(tmp_path / "does-not-exist.h5"), "/fc1")
    with pytest.raises(FormatError, match="fc1 is an external link; refused"):
        read_all(path)


def test_soft_links_are_refused(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "soft.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        f["alias"] = f["fc2"]
        del f["fc2"]
        f["fc2"] = h5py.SoftLink("/alias")
    with pytest.raises(FormatError, match="fc2 is a soft link"):
        read_all(path)


def test_hdf5_without_keras_structure(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FormatError, match="without Keras weights"):
        read_all(path)


def test_integer_weights_are_refused_by_name(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "int.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        del f["fc2/fc2_b_1:0"]
        f["fc2"].create_dataset("fc2_b_1:0", data=np.zeros(32, np.int32))
    with pytest.raises(FormatError, match=r"fc2_b_1:0: dtype int32 is not a float type"):
        read_all(path)


def test_float64_and_big_endian_weights_read_as_float32(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "f64.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        k = f["fc2/fc2_W_1:0"][()]
        del f["fc2/fc2_W_1:0"]
        f["fc2"].create_dataset("fc2_W_1:0", data=k.astype(">f8"))
    _, tensors = read_all(path)
    _, reference = read_all(keras1)
    assert tensors["fc2.kernel"].dtype == np.float32
    np.testing.assert_array_equal(tensors["fc2.kernel"], reference["fc2.kernel"])


def test_truncated_file_is_refused_before_reading(keras1: Path, tmp_path: Path) -> None:
    """Cut inside the fc1 kernel: the declared extent no longer fits, and we say so."""
    with h5py.File(keras1) as f:
        ds = f["fc1/fc1_W_1:0"]
        cut = ds.id.get_offset() + ds.nbytes // 2
    path = tmp_path / "cut.h5"
    path.write_bytes(keras1.read_bytes()[:cut])
    with pytest.raises(FormatError, match=r"truncated"):
        read_all(path)


def test_contiguous_datasets_are_read_raw_and_equal_h5py(keras1: Path) -> None:
    from vggfcn.formats.region import FileRegion

    with load(str(keras1)) as graph, h5py.File(keras1) as f:
        assert isinstance(graph, SourceGraph)
        fc6 = next(op for op in graph.ops if isinstance(op, Dense)).kernel
        assert isinstance(fc6.source, FileRegion)
        np.testing.assert_array_equal(fc6.source[3:9], f["fc1/fc1_W_1:0"][3:9])
        np.testing.assert_array_equal(fc6.read(), f["fc1/fc1_W_1:0"][()])
        with pytest.raises(TypeError):
            fc6.source[::2]


def test_chunked_compressed_datasets_are_read_through_h5py(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "gzip.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        data = f["fc1/fc1_W_1:0"][()]
        del f["fc1/fc1_W_1:0"]
        f["fc1"].create_dataset("fc1_W_1:0", data=data, compression="gzip", chunks=(7, 32))
    graph, tensors = read_all(path)
    fc1 = next(op for op in graph.ops if isinstance(op, Dense))
    assert isinstance(fc1.kernel.source, h5py.Dataset)
    np.testing.assert_array_equal(tensors["fc1.kernel"], data)


def test_chunked_shape_bomb_is_refused_before_reading(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "bomb.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        del f["fc1/fc1_W_1:0"]
        # 40 GB declared, nothing stored: reading would allocate it all.
        f["fc1"].create_dataset(
            "fc1_W_1:0", shape=(100_000, 100_000), dtype="f4", chunks=(1000, 1000)
        )
    with pytest.raises(FormatError, match="declares 40000000000 bytes of data but stores 0"):
        read_all(path)


def test_a_file_that_hangs_the_hdf5_library_is_refused(
    keras1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some corrupt files send the HDF5 C library into an endless loop (found by fuzzing): the
    structure walk runs first in a child with a time limit. Simulated by a walk that sleeps."""
    import time

    import vggfcn.formats.keras_h5 as keras_h5

    monkeypatch.setattr(keras_h5, "PARSE_TIMEOUT", 0.5)
    monkeypatch.setattr(keras_h5, "_touch", lambda obj: time.sleep(60))
    start = time.perf_counter()
    with pytest.raises(
        FormatError, match=r"did not finish reading the file's structure within 0.5 s"
    ):
        keras_h5.open_file(str(keras1))
    assert time.perf_counter() - start < 10


def test_a_file_that_crashes_the_hdf5_library_is_refused(
    keras1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    import vggfcn.formats.keras_h5 as keras_h5

    monkeypatch.setattr(keras_h5, "_touch", lambda obj: os.kill(os.getpid(), signal.SIGSEGV))
    with pytest.raises(FormatError, match=r"crashed \(signal 11\)"):
        keras_h5.open_file(str(keras1))


def test_the_preflight_child_finalises_none_of_the_parents_objects(
    keras1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forked preflight must not run the parent's finalizers: an onnxruntime session left
    for collection once hung a child in its destructor. A cycle only a collection frees, kept
    from the parent's collector, and a collection forced in the child: nothing of the
    parent's may be finalised there."""
    import gc
    import os

    import vggfcn.formats.keras_h5 as keras_h5

    marker, parent = tmp_path / "finalised in the child", os.getpid()

    class Cycle:
        def __del__(self) -> None:
            if os.getpid() != parent:
                marker.write_text("yes")

    walk = keras_h5._walk

    def collecting_walk(*args: object) -> None:
        gc.collect()  # what an allocation in the child may trigger at any time
        walk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(keras_h5, "_walk", collecting_walk)
    gc.collect()
    gc.disable()
    try:
        garbage = Cycle()
        garbage.self = garbage  # type: ignore[attr-defined]
        del garbage
        with load(str(keras1)):
            pass
    finally:
        gc.enable()
        gc.collect()
    assert not marker.exists()
