"""vggfcn: VGG classifiers as fully-convolutional networks, proven exact.

Example:
    >>> import vggfcn
    >>> vggfcn.convert_file("vgg16.h5", "vgg16.fcn.safetensors")
    >>> report = vggfcn.verify_files("vgg16.h5", "vgg16.fcn.safetensors")
    >>> report.passed
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import (
    ConvertResult,
    Prediction,
    convert_file,
    describe,
    heatmap_file,
    inspect_file,
    predict_file,
    verify_files,
)
from .arch import Arch
from .convert import to_fcn
from .errors import ArchitectureError, ExitCode, FormatError, OutputError, VggfcnError
from .formats import load
from .forward import logits
from .verify import VerifyReport, verify
from .weights import VGGWeights

__all__ = [
    "Arch",
    "ArchitectureError",
    "ConvertResult",
    "ExitCode",
    "Prediction",
    "FormatError",
    "OutputError",
    "VGGWeights",
    "VerifyReport",
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
