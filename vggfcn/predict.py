"""Dense prediction: the fully-convolutional network on inputs of any size >= 224.

Cell (i, j) of the score map is the classifier applied to the 224x224 input window whose
top-left corner is (32i, 32j) — `verify` proves that, cell by cell. This module runs the network
on user inputs and shapes the answer: logits, per-cell top-k, one class's probability map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import forward, imagenet
from .arch import MIN_INPUT, STRIDE
from .convert import to_fcn
from .heatmap import softmax
from .weights import VGGWeights


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


def score_map(weights: VGGWeights, images: np.ndarray) -> np.ndarray:
    """Logit map (N, H//32 - 6, W//32 - 6, classes) of (N, H, W, C) preprocessed images.

    An original classifier is converted on the fly (in memory, nothing written).
    """
    fcn = weights if weights.convolutional_head else to_fcn(weights)
    return forward.logits(fcn, images)


def top_cells(scores: np.ndarray, k: int) -> list[Cell]:
    """The top-k classes of every cell, with ImageNet names for 1000-class networks."""
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
                        imagenet.label(int(c), classes),
                        float(scores[i, y, x, c]),
                        float(probabilities[i, y, x, c]),
                    )
                    for c in order[i, y, x]
                )
                window = (y * STRIDE, x * STRIDE, y * STRIDE + MIN_INPUT, x * STRIDE + MIN_INPUT)
                cells.append(Cell(i, y, x, window, top))
    return cells


def class_probabilities(scores: np.ndarray, index: int) -> np.ndarray:
    """(N, h, w) probability of one class in each cell (softmax over classes per cell)."""
    return softmax(scores, axis=-1)[..., index]
