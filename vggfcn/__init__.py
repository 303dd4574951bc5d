"""vggfcn: VGG classifiers as fully-convolutional networks, proven exact.

Example:
    >>> import vggfcn
    >>> vggfcn.convert_file("vgg16.h5", "vgg16.fcn.safetensors")
    >>> result = vggfcn.verify_files("vgg16.h5", "vgg16.fcn.safetensors")
    >>> result.passed
    True

The names below are imported on first use (PEP 562), not with the package: `import vggfcn`
and the command line's start-up stay free of NumPy until something needs it (see `digest`).
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ConvertResult": "api",
    "HeatmapResult": "dense",
    "PredictResult": "dense",
    "convert_file": "api",
    "heatmap_file": "dense",
    "inspect_file": "api",
    "predict_file": "dense",
    "verify_files": "api",
    "to_fcn": "convert",
    "atrous": "atrous",
    "heatmap_files": "dense",
    "predict_files": "dense",
    "ArchitectureError": "errors",
    "FormatError": "errors",
    "MismatchError": "errors",
    "OutputError": "errors",
    "VggfcnError": "errors",
    "FCN": "fcn",
    "load": "formats",
    "logits": "forward",
    "SourceGraph": "graph",
    "describe": "inspection",
    "VerifyResult": "verify",
    "verify": "verify",
}

__all__ = [
    "FCN",
    "ArchitectureError",
    "ConvertResult",
    "FormatError",
    "HeatmapResult",
    "MismatchError",
    "OutputError",
    "PredictResult",
    "SourceGraph",
    "VerifyResult",
    "VggfcnError",
    "__version__",
    "atrous",
    "convert_file",
    "describe",
    "heatmap_file",
    "heatmap_files",
    "inspect_file",
    "load",
    "logits",
    "predict_file",
    "predict_files",
    "to_fcn",
    "verify",
    "verify_files",
]

if TYPE_CHECKING:
    from typing import Any

    from .api import ConvertResult, convert_file, inspect_file, verify_files
    from .atrous import atrous
    from .convert import to_fcn
    from .dense import (
        HeatmapResult,
        PredictResult,
        heatmap_file,
        heatmap_files,
        predict_file,
        predict_files,
    )
    from .errors import ArchitectureError, FormatError, MismatchError, OutputError, VggfcnError
    from .fcn import FCN
    from .formats import load
    from .forward import logits
    from .graph import SourceGraph
    from .inspection import describe
    from .verify import VerifyResult, verify


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    """The API, and the module's own dunders: nothing it imports for its own use."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


class _Package(_types.ModuleType):
    """The package, keeping `vggfcn.verify` the function, as `from .verify import verify` in
    an eager `__init__` left it: the import system binds every submodule on its package once
    the submodule has loaded, which would make it the `vggfcn.verify` module instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in _EXPORTS and isinstance(value, _types.ModuleType)):
            super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
