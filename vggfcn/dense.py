"""Dense prediction from files: one network loaded once, run on many inputs, one result each.

`predict` and `heatmap` behind the command line. A run is a network (a converted file, or an
original classifier converted in memory) at an output stride, and a list of inputs; each input
gives a result or a `Failure`, and one bad input does not stop the others — a pipeline that
feeds a folder wants every good map and a list of the bad inputs, not the first error. Every
output is written atomically: a failed input leaves no file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from . import heatmap, imagenet, images
from .atomic import atomic_write
from .atrous import atrous
from .errors import VggfcnError
from .fcn import FCN
from .formats import load, reader_of
from .inputs import targets
from .predict import Peak, as_fcn, class_probabilities, peaks, score_map

if TYPE_CHECKING:
    from typing import Unpack

Size = tuple[int, int]


class RunOptions(TypedDict, total=False):
    """What `predict_files` and `heatmap_files` share; every key optional.

    `preprocess`: "caffe", "torch" or "none"; by default, for images, the preprocessing the
    converted file records (caffe when unknown), "none" for arrays. `force`: replace existing
    outputs. `labels`: a text file of class names, one per line. `input_size`: the size an
    original classifier was built for, when its file does not say. `output_stride`: 32, 16 or
    8; by default the one WEIGHTS records (32 for an original classifier).
    """

    preprocess: str | None
    force: bool
    labels: str | None
    input_size: Size | None
    output_stride: int | None


class PredictOptions(RunOptions, total=False):
    """`predict_files`' own keys besides `RunOptions`': `out` (a .npy path for one input, or a
    folder), `channels_first` (a .npy input is (N, 3, H, W); None: when only that reading
    fits), `top` (classes per summary, default 3)."""

    out: str | None
    channels_first: bool | None
    top: int


@dataclass(frozen=True)
class Failure:
    """An input that gave no result, and the one-line reason."""

    input: str
    error: str


@dataclass(frozen=True)
class PredictResult:
    """One input's answer: its logit map, how it was prepared, what a cell sees, and the
    classes the map holds most strongly (per image of the input: an array may hold several)."""

    input: str
    output: str | None  # the .npy the map was written to
    scores: np.ndarray  # (N, h, w, classes) logits, (h, w) = FCN.output_size(H, W)
    preprocess: str
    input_shape: tuple[int, ...]
    window: Size  # the input each cell is the classifier of: the size it was built for
    output_stride: int  # input pixels between neighbouring cells
    labels: list[str] | None  # class names from --labels, if given
    top: tuple[tuple[Peak, ...], ...]


@dataclass(frozen=True)
class HeatmapResult:
    """One image's heatmap: the PNG written and where the class is most probable."""

    input: str
    output: str
    class_index: int
    class_name: str
    map_shape: tuple[int, int]  # [rows, columns] of cells
    output_stride: int
    hottest_cell: tuple[int, int]
    hottest_probability: float


def predict_files(
    weights: str, sources: Sequence[str], **options: Unpack[PredictOptions]
) -> Iterator[PredictResult | Failure]:
    """The score map of each input, in order; an input that cannot be read or run gives a
    `Failure` and the next one goes on.

    Args:
        weights: a converted file, or an original classifier (converted in memory).
        sources: images (JPEG/PNG..., need the `images` extra) or .npy arrays, (H, W, 3) or
            (N, H, W, 3), channels-last, already preprocessed; of any sizes >= the window.
        options: see `PredictOptions`.

    Raises (before the first input is read):
        VggfcnError: WEIGHTS unreadable or not a classifier, a bad labels file, outputs that
            would collide or overwrite (see `inputs.targets`), WEIGHTS and INPUT swapped.
    """
    if sources:
        _check_order(weights, sources[0])
    out = options.get("out")
    written = targets(sources, out, ".npy", [weights], force=options.get("force", False))
    with _network(weights, options) as (fcn, names):
        for source in sources:
            try:
                yield _predict(fcn, source, written.get(source), names, options)
            except VggfcnError as e:
                yield _failure(source, e)


def predict_file(weights: str, source: str, **options: Unpack[PredictOptions]) -> PredictResult:
    """`predict_files` for one input, its failure raised as a `VggfcnError`."""
    (result,) = predict_files(weights, [source], **options)
    if isinstance(result, Failure):
        raise VggfcnError(result.error)
    return result


@contextmanager
def _network(weights: str, options: RunOptions) -> Iterator[tuple[FCN, list[str] | None]]:
    """The network to run, at the output stride asked for (by default its file's), and the
    class names from the labels file."""
    with load(weights, input_size=options.get("input_size")) as loaded:
        fcn = as_fcn(loaded)
        stride = options.get("output_stride")
        labels = options.get("labels")
        yield (
            fcn if stride is None else atrous(fcn, stride),
            read_labels(labels, fcn.classes) if labels else None,
        )


def _predict(
    fcn: FCN, source: str, out: str | None, names: list[str] | None, options: PredictOptions
) -> PredictResult:
    mode = options.get("preprocess") or ("none" if images.is_npy(source) else _preprocessing(fcn))
    x = images.load_input(
        source, mode, fcn.min_input, fcn.info.channel_order, options.get("channels_first")
    )
    scores = score_map(fcn, x)
    if out is not None:
        with atomic_write(out) as f:
            np.save(f, scores, allow_pickle=False)
    window, stride = fcn.info.input_size, fcn.output_stride
    return PredictResult(
        input=source,
        output=out,
        scores=scores,
        preprocess=mode,
        input_shape=tuple(x.shape),
        window=window,
        output_stride=stride,
        labels=names,
        top=tuple(peaks(scores, options.get("top", 3), window, stride, names)),
    )


def heatmap_files(
    weights: str,
    sources: Sequence[str],
    class_name: str,
    out: str,
    *,
    alpha: float = 0.5,
    **options: Unpack[RunOptions],
) -> Iterator[HeatmapResult | Failure]:
    """Each image with one class's per-cell probability overlaid as a colour map, and a legend
    (PNG): `out` itself for one image, or `<input name>.png` in the folder `out`.

    `class_name` is an index, an ImageNet name (1000-class heads) or a name from the labels;
    `alpha` the colour map's weight over the image.

    Raises (before the first image is read):
        VggfcnError: as `predict_files`, and a class the network does not have.
    """
    if not 0.0 <= alpha <= 1.0:
        raise VggfcnError(f"--alpha {alpha:g}: expected a weight in [0, 1]")
    written = targets(sources, out, ".png", [weights], force=options.get("force", False))
    with _network(weights, options) as (fcn, names):
        index = imagenet.class_index(class_name, fcn.classes, names)
        shown = names[index] if names else imagenet.label(index, fcn.classes)
        for source in sources:
            try:
                yield _heatmap(
                    fcn, source, written[source], index, shown, alpha, options.get("preprocess")
                )
            except VggfcnError as e:
                yield _failure(source, e)


def heatmap_file(
    weights: str,
    image: str,
    class_name: str,
    out: str,
    *,
    alpha: float = 0.5,
    **options: Unpack[RunOptions],
) -> HeatmapResult:
    """`heatmap_files` for one image, its failure raised as a `VggfcnError`."""
    (result,) = heatmap_files(weights, [image], class_name, out, alpha=alpha, **options)
    if isinstance(result, Failure):
        raise VggfcnError(result.error)
    return result


def _heatmap(
    fcn: FCN,
    source: str,
    out: str,
    index: int,
    class_name: str,
    alpha: float,
    preprocess: str | None,
) -> HeatmapResult:
    if images.is_npy(source):
        raise VggfcnError(f"{source}: a heatmap needs an image file to draw on, not a .npy array")
    rgb = images.load_image(source)
    images.check_size(source, rgb.shape[0], rgb.shape[1], fcn.min_input)
    x = images.preprocess_image(rgb, preprocess or _preprocessing(fcn), fcn.info.channel_order)
    probabilities = class_probabilities(score_map(fcn, x[np.newaxis]), index)[0]
    stride = fcn.output_stride
    picture = heatmap.render(
        rgb, probabilities, class_name=class_name, stride=stride, window=fcn.window, alpha=alpha
    )
    png = heatmap.encode_png(picture)
    with atomic_write(out) as f:
        f.write(png)
    hottest = np.unravel_index(int(np.argmax(probabilities)), probabilities.shape)
    return HeatmapResult(
        input=source,
        output=out,
        class_index=index,
        class_name=class_name,
        map_shape=probabilities.shape,
        output_stride=stride,
        hottest_cell=(int(hottest[0]), int(hottest[1])),
        hottest_probability=float(probabilities.max()),
    )


def _failure(source: str, error: VggfcnError) -> Failure:
    """The error as one line that names the input."""
    message = str(error)
    return Failure(source, message if message.startswith(source) else f"{source}: {message}")


def _preprocessing(fcn: FCN) -> str:
    """How images are prepared by default: as the source's trainers did, where the file says
    (caffe or torch), else Keras VGG's caffe mode."""
    return fcn.info.preprocessing if fcn.info.preprocessing != "unknown" else "caffe"


def _check_order(weights: str, source: str) -> None:
    """Refuse WEIGHTS and INPUT given the other way round: an array (an input) first and a
    checkpoint second, which would otherwise be explained as a malformed tensorflow-vgg file.

    Raises:
        VggfcnError: naming both and the order expected.
    """
    if images.is_npy(weights) and not images.is_npy(source) and reader_of(source) is not None:
        raise VggfcnError(
            f"{weights}, {source}: an input array first and a checkpoint second; expected the "
            "network first (vggfcn predict WEIGHTS INPUT)"
        )


def read_labels(path: str, classes: int) -> list[str]:
    """Class names from a text file, one per line (blank lines at the end ignored).

    Raises:
        VggfcnError: unreadable, or not one name per class of the network.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 24)
    except (OSError, UnicodeDecodeError) as e:
        raise VggfcnError(f"{path}: cannot read the labels ({e})") from None
    names = [line.strip() for line in text.rstrip("\n").split("\n")]
    blank = [i for i, name in enumerate(names, 1) if not name]
    if blank:
        lines = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        raise VggfcnError(
            f"{path}: line {lines} is blank; expected one class name per line, in class order"
        )
    if len(names) != classes:
        raise VggfcnError(
            f"{path}: {len(names)} class names, one per line; the network has {classes} classes"
        )
    return names
