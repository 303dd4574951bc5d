"""The 1000 ImageNet class names, so users can ask for "tabby" instead of remembering 281.

`data/imagenet_classes.txt` holds one name per line in index order, as torchvision's
`_IMAGENET_CATEGORIES` lists them (the order every ImageNet-1k VGG checkpoint, Keras or torch,
was trained with). Two names differ only in case ("Cardigan" the corgi, 264, and "cardigan"
the sweater, 474), so an exact match wins over a case-insensitive one.
"""

from __future__ import annotations

import difflib
import re
from functools import cache

from .errors import VggfcnError

#: Classes of ImageNet-1k; names are known only for networks with exactly this many outputs.
IMAGENET_CLASSES = 1000

_INTEGER = re.compile(r"[+-]?[0-9]+")


def class_names() -> list[str]:
    """The ImageNet class names, index -> name (a fresh list; the file is read once).

    >>> class_names()[281]
    'tabby'
    """
    return list(_names())


def class_index(name_or_index: str, classes: int, labels: list[str] | None = None) -> int:
    """The class a user named, by index ("281"), by ImageNet name ("tabby", "Tabby") or by a
    name from the network's own `labels` (`--labels FILE`).

    Args:
        name_or_index: a decimal index, or a class name (case-insensitive).
        classes: the network's class count; ImageNet names need the 1000 ImageNet classes.
        labels: the network's class names, when it has its own.
    Raises:
        VggfcnError: index out of range, a name for a non-ImageNet network, an unknown name
            (with close matches suggested) or a name that matches two classes but for case.

    >>> class_index("Tabby", 1000)
    281
    """
    text = name_or_index.strip()
    if _INTEGER.fullmatch(text):
        return _checked_index(int(text), classes)
    if labels is not None:
        return _index_of_name(text, tuple(labels))
    if classes != IMAGENET_CLASSES:
        raise VggfcnError(
            f"class {text!r}: names are known only for the {IMAGENET_CLASSES} ImageNet classes; "
            f"this network has {classes}, give an index 0..{classes - 1} (or --labels FILE)"
        )
    return _index_of_name(text, _names())


def label(index: int, classes: int) -> str:
    """A human name for a class: the ImageNet name for 1000-class networks, else "class 7"."""
    if not 0 <= index < classes:
        raise ValueError(f"class index {index} out of range 0..{classes - 1}")
    if classes == IMAGENET_CLASSES:
        return _names()[index]
    return f"class {index}"


@cache
def _names() -> tuple[str, ...]:
    from importlib import resources  # 5 ms of start-up that only naming a class needs

    text = resources.files("vggfcn").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    names = tuple(text.splitlines())
    if len(names) != IMAGENET_CLASSES:
        raise RuntimeError(f"vggfcn is broken: imagenet_classes.txt has {len(names)} names")
    return names


def _checked_index(index: int, classes: int) -> int:
    if not 0 <= index < classes:
        raise VggfcnError(
            f"class index {index} is out of range: the network has {classes} classes "
            f"(0..{classes - 1})"
        )
    return index


def _index_of_name(name: str, names: tuple[str, ...]) -> int:
    if name in names:
        return names.index(name)
    folded = name.casefold()
    hits = [i for i, n in enumerate(names) if n.casefold() == folded]
    if len(hits) == 1:
        return hits[0]
    if hits:
        options = ", ".join(f"{names[i]!r} ({i})" for i in hits)
        raise VggfcnError(f"class {name!r} is ambiguous: {options}; give the exact case or index")
    kind = "ImageNet class" if names is _names() else "class"
    raise VggfcnError(f"unknown {kind} {name!r}{_suggestion(folded, names)}")


def _suggestion(folded: str, names: tuple[str, ...]) -> str:
    """ "; did you mean ..." with the closest names and their indices, or a hint to use one."""
    by_folded: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_folded.setdefault(n.casefold(), []).append(i)
    close = difflib.get_close_matches(folded, list(by_folded), n=3, cutoff=0.6)
    if not close:
        return f"; give a name from the class list or an index 0..{len(names) - 1}"
    hits = [i for c in close for i in by_folded[c]]
    return "; did you mean " + ", ".join(f"{names[i]!r} ({i})" for i in hits) + "?"
