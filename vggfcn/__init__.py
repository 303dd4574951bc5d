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

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ConvertResult": "api",
    "HeatmapResult": "api",
    "PredictResult": "api",
    "convert_file": "api",
    "heatmap_file": "api",
    "inspect_file": "api",
    "predict_file": "api",
    "verify_files": "api",
    "to_fcn": "convert",
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
    "convert_file",
    "describe",
    "heatmap_file",
    "inspect_file",
    "load",
    "logits",
    "predict_file",
    "to_fcn",
    "verify",
    "verify_files",
]

if TYPE_CHECKING:
    from .api import (
        ConvertResult,
        HeatmapResult,
        PredictResult,
        convert_file,
        heatmap_file,
        inspect_file,
        predict_file,
        verify_files,
    )
    from .convert import to_fcn
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
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package, keeping `vggfcn.verify` the function, as `from .verify import verify` in
    an eager `__init__` left it: the import system binds every submodule on its package once
    the submodule has loaded, which would make it the `vggfcn.verify` module instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in _EXPORTS and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
