"""Dense prediction: the fully-convolutional network on inputs of any size >= its window.

Cell (i, j) of the score map is the classifier applied to the input window (the size the
classifier was built for, 224x224 for stock VGGs) whose top-left corner is (s*i, s*j), s the
output stride (32, or 16 and 8 à trous) — `verify` proves that, cell by cell. This module runs
the network on user inputs and shapes the answer: logits, per-cell top-k, the classes a map
holds most strongly, one class's probability map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import forward, imagenet
from .convert import to_fcn
from .errors import VggfcnError
from .fcn import FCN
from .graph import SourceGraph


@dataclass(frozen=True)
class Guess:
    """One of a cell's top classes."""

    index: int
    name: str
    logit: float
    probability: float  # softmax over the classes of this cell


@dataclass(frozen=True)
class Window:
    """A rectangle of input pixels: rows top..bottom - 1, columns left..right - 1."""

    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class Cell:
    """A score-map cell: which input window it saw, and its top classes."""

    image: int
    row: int
    col: int
    window: Window
    top: tuple[Guess, ...]


def as_fcn(network: SourceGraph | FCN) -> FCN:
    """A converted network as it is; an original classifier converted on the fly (in memory,
    nothing written).

    Raises:
        VggfcnError: a reduced head, which is a backbone to train, not a classifier to run.
    """
    fcn = network if isinstance(network, FCN) else to_fcn(network)
    if fcn.info.head == "reduced":
        raise VggfcnError(
            f"{fcn.path}: holds a reduced head (SSD/DeepLab backbone initialisation): its conv6 "
            "needs dilation and training; it predicts nothing as it stands"
        )
    return fcn


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities from logits along `axis`: float64 inside, float32 out.

    The max is subtracted first, so logits like 1000 do not overflow exp().

    >>> softmax(np.array([1000.0, 1000.0])).tolist()
    [0.5, 0.5]
    """
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    probs: np.ndarray = (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return probs


@dataclass(frozen=True)
class Peak:
    """One of the classes a map holds most strongly: its highest probability over the cells,
    the cell where it peaks and the window that cell saw."""

    index: int
    name: str
    probability: float
    cell: tuple[int, int]
    window: Window


def score_map(fcn: FCN, images: np.ndarray) -> np.ndarray:
    """Logit map (N, h, w, classes) of (N, H, W, C) preprocessed images: (h, w) is
    `fcn.output_size(H, W)`, H//32 - p_h + 1 by W//32 - p_w + 1 at output stride 32 with
    p_h x p_w the network's window (`FCN.window`: 7x7 for stock VGGs)."""
    return forward.logits(fcn, images)


def peaks(
    scores: np.ndarray,
    k: int,
    window: tuple[int, int],
    stride: int,
    labels: list[str] | None = None,
) -> list[tuple[Peak, ...]]:
    """For each image of a (N, h, w, classes) logit map, the k classes with the highest
    probability in any cell (softmax over the classes of each cell), highest first."""
    n, h, w, classes = scores.shape
    probabilities = softmax(scores, axis=-1).reshape(n, h * w, classes)
    best, where = probabilities.max(axis=1), probabilities.argmax(axis=1)
    order = np.argsort(-best, axis=-1, kind="stable")[:, : min(k, classes)]
    summaries = []
    for i in range(n):
        found = []
        for c in map(int, order[i]):
            row, col = divmod(int(where[i, c]), w)
            found.append(
                Peak(
                    c,
                    labels[c] if labels else imagenet.label(c, classes),
                    float(best[i, c]),
                    (row, col),
                    _window(row, col, window, stride),
                )
            )
        summaries.append(tuple(found))
    return summaries


def _window(row: int, col: int, window: tuple[int, int], stride: int) -> Window:
    """The input window cell (row, col) of a map at `stride` is the classifier of."""
    top, left = row * stride, col * stride
    return Window(top, left, top + window[0], left + window[1])


def top_cells(
    scores: np.ndarray,
    k: int,
    window: tuple[int, int],
    labels: list[str] | None = None,
    stride: int = 32,
) -> list[Cell]:
    """The top-k classes of every cell: names from `labels`, else ImageNet names for
    1000-class networks. `window` is the input each cell is the classifier of (the size the
    classifier was built for, `FCNInfo.input_size`); cells are `stride` pixels apart."""
    n, h, w, classes = scores.shape
    k = min(k, classes)
    probabilities = softmax(scores, axis=-1)
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    cells = []
    for i in range(n):
        for y in range(h):
            for x in range(w):
                top = tuple(
                    Guess(
                        int(c),
                        labels[int(c)] if labels else imagenet.label(int(c), classes),
                        float(scores[i, y, x, c]),
                        float(probabilities[i, y, x, c]),
                    )
                    for c in order[i, y, x]
                )
                cells.append(Cell(i, y, x, _window(y, x, window, stride), top))
    return cells


def class_probabilities(scores: np.ndarray, index: int) -> np.ndarray:
    """(N, h, w) probability of one class in each cell (softmax over classes per cell)."""
    return softmax(scores, axis=-1)[..., index]
