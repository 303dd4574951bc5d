"""The values options take, by every entry point: importable without NumPy.

The command line declares its options before anything heavy is imported, so that `convert`
can start hashing its source while NumPy and the readers load (see `digest`). The modules that
act on these values import them from here.
"""

from __future__ import annotations

#: Output kernel layouts: HWIO (Keras, TensorFlow, JAX; the FCN's own) or OIHW (`nn.Conv2d`).
LAYOUTS = ("hwio", "oihw")
#: Output name schemes: ours (`block1_conv1.kernel`, `fc6.bias`), torch's (loadable with
#: `load_state_dict(strict=True)` into `features`, torchvision's Sequential, plus fc6, fc7...)
#: or ssd.pytorch's `vgg` ModuleList (`0.weight` ... `33.bias`).
NAME_SCHEMES = ("vggfcn", "torch", "ssd")
#: Output precisions (the names `precision.DTYPES` maps to storage).
DTYPES = ("float32", "float16", "bfloat16")
#: What `convert --head` makes of the classifier's head.
HEADS = ("classifier", "reduced", "reduced-fc8")
#: Output strides: 32, the classifier's, or finer, à trous (`atrous`).
OUTPUT_STRIDES = (32, 16, 8)
#: Output formats.
OUTPUTS = ("safetensors", "onnx", "keras")
#: Accepted image `preprocess` modes, in the order error messages list them.
PREPROCESS_MODES = ("caffe", "torch", "none")
