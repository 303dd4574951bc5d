"""vggfcn: VGG classifiers as fully-convolutional networks, proven exact.

Example:
    >>> import vggfcn
    >>> vggfcn.convert_file("vgg16.h5", "vgg16.fcn.safetensors")
    >>> result = vggfcn.verify_files("vgg16.h5", "vgg16.fcn.safetensors")
    >>> result.passed
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

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
