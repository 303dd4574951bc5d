"""Property-based fuzzing: a corrupted checkpoint of any format fails with our error, or converts
to a file that verifies.

Each supported format starts from a valid, tiny checkpoint (tests/fuzz_worker.py writes them);
hypothesis truncates it, flips and overwrites bytes, writes parser-breaking integers, and splices,
duplicates or cuts byte ranges. The property (fuzz_worker.check): `convert_file` raises a
`VggfcnError` — one line naming the file, no output, no temp file — or succeeds, and then
`verify_files` passes or raises a `VggfcnError`. Our own output format goes through
`inspect_file` and `verify_files(original, mutated)`. Any other exception is a bug.

HDF5 examples run in a child process: the HDF5 C library may crash on a corrupt file, and a
crash must be one failing example (with its bytes saved), not a dead test run.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from tests.fuzz_worker import (
    EXAMPLE_TIMEOUT,
    FCN_ORIGINAL,
    HDF5_FORMATS,
    OUTPUT_FORMATS,
    Op,
    Worker,
    mutate,
    run_example,
    write_seeds,
)

FORMATS = (
    "keras1",
    "keras3-weights",
    "keras-archive",
    "torchvision-pth",
    "torchvision-safetensors",
    "fcn",
    "fcn-onnx",
    "fcn-keras",
    "caffemodel",
    "tensorflow-vgg",
    "onnx-torch",
    "onnx-tf2onnx",
    "keras-hub",
)

_position = st.integers(0, 1 << 20)
_small = st.integers(0, 1 << 10)
_op: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(0, 254), st.just(0)),
    st.tuples(st.just("set"), _position, _small, st.just(0)),
    st.tuples(st.just("int"), _position, _small, st.integers(0, 3)),
    st.tuples(st.just("truncate"), _position, st.just(0), st.just(0)),
    st.tuples(st.just("copy"), _position, st.integers(1, 512), _position),
    st.tuples(st.just("insert"), _position, st.integers(1, 512), _position),
    st.tuples(st.just("delete"), _position, st.integers(1, 512), st.just(0)),
)
MUTATIONS = st.lists(_op, min_size=1, max_size=4)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where examples are written (each in a fresh directory) and failing inputs are kept."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def worker(scratch: Path) -> Iterator[Worker]:
    w = Worker(scratch / "worker-stderr.log")
    yield w
    w.close()


@pytest.mark.parametrize("fmt", FORMATS)
@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No shrinking: a failing example is already at most four edits, its bytes are kept, and
    # shrinking an HDF5 hang would re-run a timeout hundreds of times.
    phases=[Phase.explicit, Phase.generate],
)
@given(ops=MUTATIONS)
def test_mutated_checkpoint_fails_cleanly_or_converts_exactly(
    seeds: dict[str, Path], scratch: Path, worker: Worker, fmt: str, ops: list[Op]
) -> None:
    seed = seeds[fmt]
    data = mutate(seed.read_bytes(), ops)
    folder = Path(tempfile.mkdtemp(dir=scratch))
    source = folder / ("input" + "".join(seed.suffixes))
    source.write_bytes(data)
    outdir = folder / "out"
    outdir.mkdir()
    original = str(seeds[FCN_ORIGINAL]) if fmt in OUTPUT_FORMATS else None
    if fmt in HDF5_FORMATS:
        verdict = worker.run(fmt, str(source), str(outdir), original, EXAMPLE_TIMEOUT + 4)
    else:
        verdict = run_example(fmt, str(source), str(outdir), original)
    if "bug" in verdict:
        kept = scratch / f"failing-{fmt}-{hashlib.sha256(data).hexdigest()[:16]}{seed.suffix}"
        kept.write_bytes(data)
        shutil.rmtree(folder)
        pytest.fail(f"{fmt} mutated by {ops} (bytes kept in {kept}):\n{verdict['bug']}")
    shutil.rmtree(folder)
    event(verdict["outcome"])  # shown by --hypothesis-show-statistics
