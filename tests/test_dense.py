"""`predict` and `heatmap` over many inputs (`dense.py`, `inputs.py`): folders and globs, one
model load, one output per input named after it, per-input errors that let the others go on,
the per-input summary in text and JSON lines, and `--output-stride`.

One input's map, preprocessing and windows are tested in test_predict.py; the heatmap's
pixels and legend in test_heatmap.py and test_heatmap_legend.py; the dilated network itself in
test_atrous.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run, temps, write_image
from vggfcn import dense
from vggfcn.predict import softmax


def _arrays(folder: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for name, (h, w) in sizes.items():
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], rng.uniform(-100, 100, (h, w, 3)).astype(np.float32))
    return paths


def cli(*args: object) -> tuple[int, str, str]:
    result = run(*args)
    return result.exit_code, result.stdout, result.stderr


def _json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_folder_a_glob_and_a_file_each_get_their_map(fcn_file: Path, tmp_path: Path) -> None:
    shots = _arrays(tmp_path / "shots", {"a": (224, 224), "b": (256, 320)})
    more = _arrays(tmp_path / "more", {"c": (288, 256), "d": (224, 288)})
    single = _arrays(tmp_path, {"e": (320, 224)})["e"]
    out = tmp_path / "maps"
    code, stdout, stderr = cli(
        "predict", fcn_file, tmp_path / "shots", str(tmp_path / "more" / "*.npy"), single,
        "--out", out, "--json",
    )  # fmt: skip
    assert code == 0, stderr
    lines = _json_lines(stdout)
    assert [Path(str(line["input"])).stem for line in lines] == ["a", "b", "c", "d", "e"]
    for line, path in zip(lines, [*shots.values(), *more.values(), single], strict=True):
        written = out / f"{path.stem}.npy"
        assert line["output"] == str(written)
        alone = dense.predict_file(str(fcn_file), str(path)).scores
        np.testing.assert_array_equal(np.load(written), alone)
        h, w = np.load(path).shape[:2]
        assert line["shape"] == [1, h // 32 - 6, w // 32 - 6, 10]


def test_the_model_is_loaded_once(
    fcn_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _arrays(tmp_path, {"a": (224, 224), "b": (256, 256), "c": (224, 256)})
    loads = []
    real = dense.load

    def counting(path: str, **options: object):  # type: ignore[no-untyped-def]
        loads.append(path)
        return real(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(dense, "load", counting)
    results = list(dense.predict_files(str(fcn_file), [str(p) for p in paths.values()]))
    assert len(results) == 3 and loads == [str(fcn_file)]


def test_summary_is_each_class_peak_over_the_map(fcn_file: Path, tmp_path: Path) -> None:
    path = _arrays(tmp_path, {"a": (320, 288)})["a"]
    result = dense.predict_file(str(fcn_file), str(path), top=4)
    probabilities = softmax(result.scores[0], axis=-1)  # (h, w, classes)
    best = probabilities.reshape(-1, 10).max(axis=0)
    assert [p.index for p in result.top[0]] == list(np.argsort(-best, kind="stable")[:4])
    for peak in result.top[0]:
        row, col = peak.cell
        assert probabilities[row, col, peak.index] == pytest.approx(peak.probability)
        assert peak.probability == pytest.approx(best[peak.index])
        assert (peak.window.top, peak.window.left) == (32 * row, 32 * col)
        assert peak.window.bottom - peak.window.top == 224


def test_text_summary_names_the_peak_cell(fcn_file: Path, tmp_path: Path) -> None:
    path = _arrays(tmp_path, {"a": (256, 288)})["a"]
    code, stdout, _ = cli("predict", fcn_file, path, "-k", "2")
    assert code == 0
    first, *peaks = stdout.splitlines()
    assert first.endswith("-> 2x3 map of 10 classes at stride 32")
    assert len(peaks) == 2 and all(" at cell (" in line and " window y " in line for line in peaks)
    code, stdout, _ = cli("predict", fcn_file, path, "-k", "2", "--cells")
    assert sum("] cell (" in line for line in stdout.splitlines()) == 6  # 2x3 cells listed


def test_bad_inputs_are_reported_and_the_others_go_on(fcn_file: Path, tmp_path: Path) -> None:
    good = _arrays(tmp_path / "in", {"a": (224, 224), "z": (256, 256)})
    (tmp_path / "in" / "broken.npy").write_bytes(b"not an array")
    np.save(tmp_path / "in" / "small.npy", np.zeros((100, 300, 3), np.float32))
    np.save(tmp_path / "in" / "ints.npy", np.zeros((224, 224, 3), np.int32))
    out = tmp_path / "maps"
    code, stdout, stderr = cli(
        "predict", fcn_file, tmp_path / "in", tmp_path / "missing.npy", "--out", out
    )
    assert code == 2
    errors = stderr.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("vggfcn: error: ") for e in errors)
    for name in ("broken.npy", "small.npy", "ints.npy", "missing.npy"):
        assert sum(name in e for e in errors) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "z.npy"]  # no partial, no temp
    assert temps(out) == []
    assert stdout.count(" map of 10 classes") == len(good)


def test_json_failures_are_objects_with_the_exit_code(fcn_file: Path, tmp_path: Path) -> None:
    good = _arrays(tmp_path, {"a": (224, 224)})["a"]
    code, stdout, _ = cli(
        "predict", fcn_file, tmp_path / "nope.npy", good, str(tmp_path / "none*.png"), "--json"
    )
    assert code == 2
    lines = _json_lines(stdout)
    failures = [line for line in lines if "error" in line]
    assert len(lines) == 3 and len(failures) == 2
    assert all(f["exit"] == 2 and f["command"] == "predict" for f in failures)
    assert {str(f["input"]) for f in failures} == {
        str(tmp_path / "nope.npy"),
        str(tmp_path / "none*.png"),
    }


def test_outputs_that_would_collide_or_overwrite_stop_the_run_first(
    fcn_file: Path, tmp_path: Path
) -> None:
    first = _arrays(tmp_path / "one", {"x": (224, 224)})["x"]
    second = _arrays(tmp_path / "two", {"x": (224, 224)})["x"]
    out = tmp_path / "maps"
    code, _, stderr = cli("predict", fcn_file, first, second, "--out", out)
    assert code == 2 and "both would be written to" in stderr
    assert list(out.iterdir()) == []
    out.joinpath("x.npy").write_bytes(b"keep")
    code, _, stderr = cli("predict", fcn_file, first, "--out", f"{out}/")
    assert code == 2 and "already exists" in stderr
    assert out.joinpath("x.npy").read_bytes() == b"keep"
    code, _, stderr = cli("predict", fcn_file, first, "--out", tmp_path / "one")
    assert code == 2 and "is the input file" in stderr


def test_output_stride_on_predict(fcn_file: Path, keras1: Path, tmp_path: Path) -> None:
    path = _arrays(tmp_path, {"a": (448, 320)})["a"]
    for stride, rows, columns in [(32, 8, 4), (16, 15, 7), (8, 29, 13)]:
        code, stdout, _ = cli("predict", fcn_file, path, "--output-stride", stride, "--json")
        assert code == 0
        (line,) = _json_lines(stdout)
        assert line["shape"] == [1, rows, columns, 10] and line["output_stride"] == stride
    strided = tmp_path / "s8.fcn.safetensors"
    assert cli("convert", "-q", keras1, strided, "--output-stride", "8")[0] == 0
    code, stdout, _ = cli("predict", strided, path, "--json")  # the file's stride by default
    assert _json_lines(stdout)[0]["shape"] == [1, 29, 13, 10]
    code, stdout, _ = cli("predict", strided, path, "--json", "--output-stride", "32")
    assert _json_lines(stdout)[0]["shape"] == [1, 8, 4, 10]
    eight = dense.predict_file(str(strided), str(path)).scores
    from_original = dense.predict_file(str(keras1), str(path), output_stride=8).scores
    np.testing.assert_allclose(eight, from_original, rtol=1e-5, atol=1e-4)
    windows = [p.window for p in dense.predict_file(str(strided), str(path)).top[0]]
    assert all(w.top % 8 == 0 and w.left % 8 == 0 for w in windows)


def test_convert_refuses_a_reduced_head_at_another_stride(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.fcn.safetensors"
    code, _, stderr = cli("convert", keras1, out, "--head", "reduced", "--output-stride", "16")
    assert code == 2 and "exclude each other" in stderr and not out.exists()
    code, _, stderr = cli("predict", keras1, keras1, "--output-stride", "4")
    assert code == 2 and "4" in stderr


def test_heatmaps_for_many_images(fcn_file: Path, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    shapes = {"a": (224, 256), "b": (320, 288)}
    for name, (h, w) in shapes.items():
        write_image(images / f"{name}.png", h, w, seed=len(name))
    np.save(images / "c.npy", np.zeros((224, 224, 3), np.float32))  # not an image to draw on
    out = tmp_path / "heat"
    code, stdout, stderr = cli(
        "heatmap", fcn_file, images, "--class", "3", "--out", out, "--output-stride", "16",
        "--json",
    )  # fmt: skip
    assert code == 2 and "c.npy" in stderr and "image file" in stderr
    lines = [line for line in _json_lines(stdout) if "error" not in line]
    assert [Path(str(line["output"])).name for line in lines] == ["a.png", "b.png"]
    for line in lines:
        name = Path(str(line["output"])).stem
        h, w = shapes[name]
        assert line["output_stride"] == 16
        assert line["map_shape"] == [h // 16 - 13, w // 16 - 13]
        with Image.open(out / f"{name}.png") as png:
            assert png.size[0] == w and png.size[1] > h  # the legend below the image


def test_heatmap_alpha_zero_leaves_the_image(fcn_file: Path, tmp_path: Path) -> None:
    image = write_image(tmp_path / "in.png", 256, 256)
    out = tmp_path / "h.png"
    code, _, stderr = cli("heatmap", fcn_file, image, "--class", "1", "--out", out, "--alpha", "0")
    assert code == 0, stderr
    original = np.asarray(Image.open(image).convert("RGB"))
    drawn = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(drawn[:256], original)
    code, _, stderr = cli("heatmap", fcn_file, image, "--class", "1", "-o", out, "--alpha", "2")
    assert code == 2 and "--alpha" in stderr


def test_progress_bar_on_stderr_only(
    fcn_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal (`_show_progress`), several inputs show a bar on stderr; stdout stays
    the results alone."""
    from vggfcn import cli as command_line

    paths = _arrays(tmp_path, {"a": (224, 224), "b": (224, 256), "c": (256, 224)})
    monkeypatch.setattr(command_line, "_show_progress", lambda quiet: not quiet)
    code, stdout, stderr = cli("predict", fcn_file, *paths.values(), "--json")
    assert code == 0
    assert "0/3" in stderr and "input/s" in stderr  # the bar, drawn as it starts
    assert len(_json_lines(stdout)) == 3
