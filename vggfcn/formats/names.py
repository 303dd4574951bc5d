"""Tensor and layer names: checking a checkpoint's against the ones its layout needs (all at once),
and making an output's unique."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ..errors import ArchitectureError


def check_names(
    path: str, found: set[str], expected: set[str], shapes: Mapping[str, str] | None = None
) -> None:
    """Refuse a checkpoint whose tensor names differ from the expected set, listing every
    missing name (with its expected shape where `shapes` knows it) and every unexpected one.

    Raises:
        ArchitectureError: some names are missing or unexpected.
    """
    missing, extra = sorted(expected - found), sorted(found - expected)
    shapes = shapes or {}
    if missing or extra:
        named = [f"{n} {shapes[n]}" if n in shapes else n for n in missing]
        parts = ([f"missing {', '.join(named)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise ArchitectureError(f"{path}: " + "; ".join(parts))


def unique_names(
    bases: Sequence[str], taken: Iterable[str], derived: Callable[[str], set[str]] = lambda n: {n}
) -> list[str]:
    """Each base name made unique: numbered `_2`, `_3`... where it, or a name derived from it
    (an ONNX layer's `{name}_relu`, `{name}_weight`...), would repeat one already in use.

    Graph outputs name their layers after the source's (`features.0` -> `features_0`); two
    source names can clean up to the same name, and a layer may not take the name of the
    input or a pool.
    """
    used = set(taken)
    names = []
    for base in bases:
        name, n = base, 1
        while used & derived(name):
            n += 1
            name = f"{base}_{n}"
        used |= derived(name)
        names.append(name)
    return names
