"""Dense prediction: the fully-convolutional network on inputs of any size >= its window.

Cell (i, j) of the score map is the classifier applied to the input window (the size the
classifier was built for, 224x224 for stock VGGs) whose top-left corner is (32i, 32j) — `verify`
proves that, cell by cell, at the level of pool5. This module runs the network on user inputs
and shapes the answer: logits, per-cell top-k, one class's probability map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import forward, imagenet
from .arch import STRIDE
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
class Cell:
    """A score-map cell: which input window it saw, and its top classes."""

    image: int
    row: int
    col: int
    window: tuple[int, int, int, int]  # y0, x0, y1, x1 in input pixels
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


def score_map(fcn: FCN, images: np.ndarray) -> np.ndarray:
    """Logit map (N, H//32 - p_h + 1, W//32 - p_w + 1, classes) of (N, H, W, C) preprocessed
    images, p_h x p_w being the network's window (`FCN.window`: 7x7 for stock VGGs)."""
    return forward.logits(fcn, images)


def top_cells(
    scores: np.ndarray, k: int, window: tuple[int, int], labels: list[str] | None = None
) -> list[Cell]:
    """The top-k classes of every cell: names from `labels`, else ImageNet names for
    1000-class networks. `window` is the input each cell is the classifier of, at stride 32
    (the size the classifier was built for, `FCNInfo.input_size`)."""
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
                corner = (y * STRIDE, x * STRIDE)
                box = (*corner, corner[0] + window[0], corner[1] + window[1])
                cells.append(Cell(i, y, x, box, top))
    return cells


def class_probabilities(scores: np.ndarray, index: int) -> np.ndarray:
    """(N, h, w) probability of one class in each cell (softmax over classes per cell)."""
    return softmax(scores, axis=-1)[..., index]
