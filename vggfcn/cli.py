"""The `vggfcn` command line: the only module that prints or chooses an exit code.

stdout carries the result and nothing else (a summary, a report, or one JSON object); progress
and errors go to stderr. Every error a user can cause is one line and exit code 2.

Only click and a few light modules load with the command line: each command imports what it
runs (`api`, and NumPy with it) once its arguments are parsed, and `convert` starts hashing
its source before that (`digest`), so the hash has the second core while the imports run.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import click

from . import __version__, digest
from .arch import STRIDE
from .choices import DTYPES, HEADS, LAYOUTS, NAME_SCHEMES, OUTPUTS, PREPROCESS_MODES
from .errors import AssumptionWarning, MismatchError, VggfcnError

if TYPE_CHECKING:
    from .reduced_check import ReducedResult
    from .verify import VerifyResult


class ExitCode(IntEnum):
    """Process exit codes of every `vggfcn` command (the README's table)."""

    OK = 0
    MISMATCH = 1  # verify ran and the two networks disagree beyond tolerance
    BAD_INPUT = 2  # usage error, unreadable or unsupported input, unwritable output
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def exit_code(error: VggfcnError) -> ExitCode:
    """The exit code an error means: a verification that ran and failed, or a bad input."""
    return ExitCode.MISMATCH if isinstance(error, MismatchError) else ExitCode.BAD_INPUT


#: The notes (`AssumptionWarning`s) the running command printed, for its --json output.
_NOTES: list[str] = []


class _Command(click.Command):
    """A command whose arguments are parsed before NumPy is imported (see the module's doc),
    and whose `AssumptionWarning`s are printed as notes on stderr as they happen."""

    def invoke(self, ctx: click.Context) -> Any:
        import numpy as np

        _NOTES.clear()
        # Overflow and NaN are checked explicitly (and reported as one line); NumPy's own
        # RuntimeWarnings would only add noise to stderr.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("always", AssumptionWarning)
            shown = warnings.showwarning

            def note(
                message: Warning | str, category: type[Warning], *args: Any, **kw: Any
            ) -> None:
                if not issubclass(category, AssumptionWarning):
                    shown(message, category, *args, **kw)
                    return
                click.echo(f"note: {message}", err=True)  # even with --quiet: not progress
                _NOTES.append(str(message))

            warnings.showwarning = note
            return super().invoke(ctx)


class _Group(click.Group):
    """Maps our exceptions to one stderr line and their exit code, for every command."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VggfcnError as e:
            click.echo(f"vggfcn: error: {e}", err=True)
            ctx.exit(exit_code(e))
        except KeyboardInterrupt:
            click.echo("vggfcn: interrupted", err=True)
            ctx.exit(ExitCode.INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vggfcn")
def main() -> None:
    """Turn VGG classifiers into fully-convolutional networks, and prove them exact.

    \b
    Exit codes: 0 success, 1 verification mismatch, 2 bad input or usage, 130 interrupted.
    """


_quiet = click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
_json = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


def _parse_size(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected H,W (or one side for a square)") from None
    if min(h, w) < 32 or max(h, w) > 1 << 16:
        raise click.BadParameter(f"{value!r}: each side must be 32..65536 pixels")
    return h, w


_input_size = click.option(
    "--input-size",
    callback=_parse_size,
    metavar="H,W",
    help="The input size the classifier was built for, when its file does not record it "
    "(files without a model config; default: from the first dense layer's inputs, else 224).",
)


def _hash_early(_ctx: click.Context, _param: click.Parameter, source: str) -> str:
    """SOURCE, its hash started now: before the converter's modules import (`digest`)."""
    digest.start(source)
    return source


@main.command()
@click.argument("source", type=click.Path(dir_okay=True), callback=_hash_early)
@click.argument("output", type=click.Path())
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    help="Kernel layout: hwio (Keras/TF/JAX) or oihw (PyTorch nn.Conv2d) [default: hwio for "
    ".safetensors; .onnx holds oihw, .keras hwio].",
)
@click.option(
    "--names",
    type=click.Choice(NAME_SCHEMES),
    help="Tensor names of a .safetensors: vggfcn (block1_conv1.kernel, fc6.bias) [default] or "
    "torch (features.N.weight, fc6.weight: loads into a torchvision-style VGG with conv heads).",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Precision of a .safetensors: float32 [default], float16 or bfloat16 (round to nearest "
    "even, stored as safetensors BF16).",
)
@click.option("-f", "--force", is_flag=True, help="Replace OUTPUT if it exists (atomically).")
@click.option(
    "--verify",
    "verify_output",
    is_flag=True,
    help="Verify the written file before publishing it; on a mismatch nothing is written (exit 1).",
)
@click.option(
    "--allow-nonfinite", is_flag=True, help="Convert NaN/Inf weights instead of refusing."
)
@click.option(
    "--to",
    type=click.Choice(OUTPUTS),
    help="Output format [default: from OUTPUT's extension: .safetensors, .onnx, .keras].",
)
@click.option(
    "--head",
    type=click.Choice(HEADS),
    default="classifier",
    show_default=True,
    help="classifier: the original's head, convolutional. reduced: SSD/DeepLab's decimated "
    "fc6/fc7 (1024 3x3 and 1x1 filters; a backbone initialisation), reduced-fc8: with fc8.",
)
@click.option(
    "--rgb",
    "channel_order",
    flag_value="rgb",
    help="Take RGB images: flip conv1's input channels if the source expects BGR (Caffe, "
    "Keras VGG).",
)
@click.option("--bgr", "channel_order", flag_value="bgr", help="Take BGR images (the reverse).")
@_input_size
@_quiet
@_json
def convert(
    source: str,
    output: str,
    layout: str | None,
    names: str | None,
    dtype: str | None,
    force: bool,
    verify_output: bool,
    allow_nonfinite: bool,
    to: str | None,
    head: str,
    channel_order: str | None,
    input_size: tuple[int, int] | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Convert a VGG classifier checkpoint SOURCE into a fully-convolutional OUTPUT.

    OUTPUT's extension picks the format: .safetensors (weights), .onnx (a runnable ONNX model:
    onnxruntime, TensorRT, OpenVINO) or .keras (a Keras 3 model: keras.saving.load_model).

    SOURCE is a Keras model (.keras, or HDF5 of any generation, fine-tuned heads included), a
    torchvision or timm state dict (.pth or safetensors, wrapped or not; pickles are read
    without running them) or a tensorflow-vgg .npy, chosen by content. The first dense layer
    becomes a p x p convolution over pool5 (7x7 for a 224x224 VGG), the later ones 1x1.

    \b
    Examples:
      vggfcn convert vgg16_weights_tf_dim_ordering_tf_kernels.h5 vgg16.fcn.safetensors
      vggfcn convert vgg16-397923af.pth vgg16.fcn.safetensors --layout oihw --names torch
      vggfcn convert finetuned.keras finetuned.fcn.onnx
    """
    from . import api
    from .verify import VerifyResult

    result = api.convert_file(
        source,
        output,
        layout=layout,
        names=names,
        dtype=dtype,
        force=force,
        verify_output=verify_output,
        allow_nonfinite=allow_nonfinite,
        progress=_show_progress(quiet),
        input_size=input_size,
        head=head,
        channel_order=channel_order,
        to=to,
    )
    if as_json:
        click.echo(json.dumps({**asdict(result), "assumptions": _NOTES}))
    elif not quiet:
        what = "fully convolutional" if result.head == "classifier" else "reduced backbone"
        first = "fc6" if result.head == "classifier" else "conv6"
        outputs = "classes" if result.head == "classifier" else "output channels"
        click.echo(
            f"wrote {result.output}: {result.arch} {what}, {result.classes} {outputs}, "
            f"{result.parameters:,} parameters, {first} as {result.fc6_shape} {result.layout}"
        )
        check = result.verification
        if isinstance(check, VerifyResult):
            click.echo(
                f"verified before publishing: max scaled error {check.max_scaled_error:.1e}, "
                f"{len(check.spatial)} spatial check(s) passed"
            )
        elif check is not None:
            click.echo("verified before publishing: trunk bit-identical, every kept value equal")


@main.command()
@click.argument("original", required=False, type=click.Path())
@click.argument("converted", required=False, type=click.Path())
@click.option(
    "--images",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Deterministic inputs, at the size the original was built for, run through both "
    "whole networks.",
)
@click.option(
    "--probes",
    default=8,
    show_default=True,
    type=click.IntRange(0, 1024),
    help="Random pool5 volumes run through both heads besides the images' own.",
)
@click.option(
    "--sizes",
    callback=lambda _ctx, _param, value: _sizes(value),
    help="Input sides for the spatial check: every score-map cell against the classifier on "
    "its window [default: the side that gives a 3x3 map, 288 for a 224x224 VGG].",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Input seed.")
@click.option(
    "--atol",
    type=click.FloatRange(0),
    help="Tolerance relative to the logit scale max(1, max|logit|) "
    "[default: by the converted file's dtype: 1e-4 float32, 3e-3 float16, 2.5e-2 bfloat16].",
)
@click.option(
    "--rtol",
    type=click.FloatRange(0),
    help="Tolerance relative to each logit [default: as --atol].",
)
@_input_size
@_quiet
@_json
def verify(
    original: str | None,
    converted: str | None,
    images: int,
    probes: int,
    sizes: tuple[int, ...] | None,
    seed: int,
    atol: float | None,
    rtol: float | None,
    input_size: tuple[int, int] | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Prove CONVERTED computes what ORIGINAL computes, with a NumPy forward pass of both.

    Exit 0 when every logit agrees within tolerance, 1 when not. With no arguments, run a
    self-check of this installation (seed example, convolution, a tiny VGG16).

    \b
    Examples:
      vggfcn verify vgg16.h5 vgg16.fcn.safetensors
      vggfcn verify
    """
    if original is None:
        _selfcheck(quiet, as_json)
        return
    if converted is None:
        raise click.UsageError("give both ORIGINAL and CONVERTED, or neither for the self-check")
    from . import api
    from .verify import VerifyResult

    report = api.verify_files(
        original,
        converted,
        images=images,
        probes=probes,
        sizes=sizes,
        seed=seed,
        atol=atol,
        rtol=rtol,
        input_size=input_size,
    )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    elif not quiet:
        click.echo(
            _format_report(report) if isinstance(report, VerifyResult) else _format_reduced(report)
        )
    if not report.passed:
        click.get_current_context().exit(ExitCode.MISMATCH)


_preprocess = click.option(
    "--preprocess",
    type=click.Choice(PREPROCESS_MODES),
    help="caffe: Keras VGG16 (RGB->BGR, minus ImageNet means); torch: torchvision (/255, "
    "mean/std); none: as is. Default: what the converted file records for images (caffe when "
    "unknown), none for .npy arrays.",
)
_force = click.option("-f", "--force", is_flag=True, help="Replace the output if it exists.")
_labels = click.option(
    "--labels",
    type=click.Path(),
    help="Class names, one per line in class order (for heads other than ImageNet's 1000).",
)


@main.command()
@click.argument("weights", type=click.Path())
@click.argument("source", metavar="INPUT", type=click.Path())
@click.option("-o", "--out", type=click.Path(), help="Write the logit map (N, h, w, classes) .npy.")
@click.option(
    "-k", "--top", default=3, show_default=True, type=click.IntRange(1), help="Classes per cell."
)
@_preprocess
@_labels
@_input_size
@_force
@_quiet
@_json
def predict(
    weights: str,
    source: str,
    out: str | None,
    top: int,
    preprocess: str | None,
    labels: str | None,
    input_size: tuple[int, int] | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Dense prediction: a map of class scores for an INPUT of any size >= the window.

    WEIGHTS is a converted file (or an original classifier, converted in memory). INPUT is an
    image (needs `pip install 'vggfcn[images]'`) or a preprocessed .npy array (H, W, 3) or
    (N, H, W, 3). Cell (i, j) of the map sees the window at (32i, 32j) of the size the
    classifier was built for (224x224 for a stock VGG: a (H//32 - 6) x (W//32 - 6) map).

    \b
    Example:
      vggfcn predict vgg16.fcn.safetensors cat.jpg --top 3 --out scores.npy
    """
    from . import api
    from .predict import top_cells

    result = api.predict_file(
        weights,
        source,
        preprocess=preprocess,
        out=out,
        force=force,
        labels=labels,
        input_size=input_size,
    )
    cells = top_cells(result.scores, top, result.window, result.labels)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "shape": list(result.scores.shape),
                    "input_shape": list(result.input_shape),
                    "preprocess": result.preprocess,
                    "out": out,
                    "cells": [asdict(c) for c in cells],
                }
            )
        )
        return
    if quiet:
        return
    n, h, w, k = result.scores.shape
    click.echo(
        f"{source}: {n} input(s) {result.input_shape[1]}x{result.input_shape[2]} "
        f"(preprocess {result.preprocess}) -> {h}x{w} map of {k} classes"
        + (f", logits written to {out}" if out else "")
    )
    for c in cells:
        y0, x0, y1, x1 = c.window
        guesses = "  ".join(f"{g.index} {g.name} {g.probability:.1%}" for g in c.top)
        click.echo(
            f"  [{c.image}] cell ({c.row},{c.col}) window y {y0}-{y1} x {x0}-{x1}: {guesses}"
        )


@main.command()
@click.argument("weights", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("-c", "--class", "class_", required=True, help="Class index or ImageNet name.")
@click.option("-o", "--out", required=True, type=click.Path(), help="PNG file to write.")
@_preprocess
@_labels
@_input_size
@_force
@_quiet
@_json
def heatmap(
    weights: str,
    image: str,
    class_: str,
    out: str,
    preprocess: str | None,
    labels: str | None,
    input_size: tuple[int, int] | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Draw one class's per-cell probability over IMAGE as a colour map (PNG).

    Probabilities are a softmax over the classes of each cell; each pixel shows the mean over
    the cells whose windows cover it (stride 32). --class takes an index, an ImageNet name, or
    a name from --labels.

    \b
    Example:
      vggfcn heatmap vgg16.fcn.safetensors cat.jpg --class tabby --out tabby.png
    """
    from . import api

    result = api.heatmap_file(
        weights,
        image,
        class_,
        out,
        preprocess=preprocess,
        force=force,
        labels=labels,
        input_size=input_size,
    )
    if as_json:
        click.echo(json.dumps(asdict(result)))
    elif not quiet:
        click.echo(
            f"wrote {result.output}: class {result.class_index} ({result.class_name}), "
            f"{result.cells[0]}x{result.cells[1]} cells, hottest cell {result.hottest_cell} "
            f"p={result.hottest_probability:.3f}"
        )


@main.command()
@click.argument("file", type=click.Path())
@_input_size
@_json
def inspect(file: str, input_size: tuple[int, int] | None, as_json: bool) -> None:
    """Show what FILE holds: format, architecture, and its layers as the file defines them.

    \b
    Example:
      vggfcn inspect vgg16.h5
    """
    from . import api

    report = api.inspect_file(file, input_size=input_size)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    size = report.input_size
    shown = "x".join(map(str, size)) if size else "unknown"
    origin = f" ({report.input_size_from})" if report.input_size_from else ""
    stored = (
        f"{report.layout} kernels, {report.names} names, {report.dtype}"
        if report.layout
        else "shapes as stored in the file (layout per layer)"
    )
    click.echo(
        f"{report.file}: {report.format} ({report.generation}), {report.arch}, "
        f"{report.head} head, {report.classes} classes, {report.parameters:,} parameters\n"
        f"input {shown}{origin}, {report.channel_order} {report.preprocessing}; flatten order "
        f"{report.flatten_order}; output activation {report.output_activation}; batch norm: "
        f"{report.batch_norm}; {stored}"
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    for line in _layer_lines(report.layers):
        click.echo("  " + line)


def _layer_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per layer: name, class, shape (and layout), dtype, parameters; an activation
    that is part of the layer before it is shown on that layer's line."""
    lines: list[str] = []
    for row in rows:
        if row["class"] == "Activation" and row.get("fused") and lines:
            lines[-1] += f" +{row['kind']}"
            continue
        name, kind = f"{row['name']:<16}", f"{row['class']:<13}"
        if "kernel_shape" in row:
            shape = "x".join(map(str, row["kernel_shape"])) + f" {row.get('layout', '')}".rstrip()
            source = f"  ({row['source_name']})" if row.get("source_name") else ""
            activation = f" +{row['activation']}" if row.get("activation") == "relu" else ""
            line = f"{name} {kind} {shape:<20} {row['dtype']:<8} {row['parameters']:>12,}"
            lines.append(line + activation + source)
            continue
        skip = ("name", "class", "parameters", "fused")
        details = ", ".join(f"{k} {v}" for k, v in row.items() if k not in skip)
        lines.append(f"{name} {kind} {details}".rstrip())
    return lines


def _selfcheck(quiet: bool, as_json: bool) -> None:
    from . import selfcheck

    checks = selfcheck.run()
    passed = all(c.passed for c in checks)
    if as_json:
        click.echo(json.dumps({"passed": passed, "checks": [asdict(c) for c in checks]}))
    elif not quiet:
        for c in checks:
            click.echo(f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
        click.echo("PASS" if passed else "FAIL")
    if not passed:
        click.get_current_context().exit(ExitCode.MISMATCH)


def _format_report(r: VerifyResult) -> str:
    n = r.images + r.probes
    trunk = "bit-identical, computed once" if r.trunk_shared else "differ: each network its own"
    h, w = r.input_size
    return "\n".join(
        [
            f"{r.arch}, {r.classes} classes: {r.images} image(s) {h}x{w} + "
            f"{r.probes} pool5 probe(s), seed {r.seed}",
            f"  trunk weights     {trunk}",
            f"  max abs error     {r.max_abs_error:.3e}",
            f"  max scaled error  {r.max_scaled_error:.3e}  "
            f"(scale max(1, max|logit|) = {r.scale:.4g})",
            f"  top-1 agreement   {round(r.top1_agreement * n)}/{n}",
            f"  top-5 agreement   {round(r.top5_agreement * n)}/{n}",
            *[
                f"  {c.size}x{c.size} map {c.map_shape[0]}x{c.map_shape[1]}    every cell vs the "
                f"classifier on its window: max scaled error "
                f"{c.agreement.max_scaled_error:.3e}, top-1 {c.agreement.top1_agreement:.0%}"
                f"{'' if c.agreement.passed else '  FAIL'}"
                for c in r.spatial
            ],
            f"  tolerance         |fcn - ref| <= {r.atol:g}*scale + {r.rtol:g}*|ref| "
            f"({r.precision} weights)",
            f"  compared          logits (the original's output activation: {r.output_activation})",
            "PASS" if r.passed else "FAIL: outputs differ beyond tolerance",
        ]
    )


def _format_reduced(r: ReducedResult) -> str:
    """A reduced head is a backbone initialisation: its values are checked, not its logits."""
    layers = [
        f"  {c.name:<17} {c.compared:,} kept values vs the original at their index: "
        + ("all equal" if not c.mismatched else f"{c.mismatched:,} differ  FAIL")
        for c in r.layers
    ]
    trunk = "bit-identical" if r.trunk_identical else "differs  FAIL"
    return "\n".join(
        [
            f"{r.arch} reduced head (a backbone initialisation: no logits are compared)",
            f"  trunk             {trunk}",
            *layers,
            "PASS" if r.passed else "FAIL: the reduced head is not the original's decimation",
        ]
    )


def _sizes(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < STRIDE:
        raise click.BadParameter(f"{value!r}: every size must be at least {STRIDE}")
    return sizes


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
