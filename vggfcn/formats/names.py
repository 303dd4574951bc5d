"""Checking a checkpoint's tensor names against the ones its layout needs, all at once."""

from __future__ import annotations

from collections.abc import Mapping

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
