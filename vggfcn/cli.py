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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import click

from . import __version__, digest
from .arch import STRIDE
from .choices import (
    DTYPES,
    HEADS,
    LAYOUTS,
    NAME_SCHEMES,
    OUTPUT_STRIDES,
    OUTPUTS,
    PREPROCESS_MODES,
)
from .errors import AssumptionWarning, MismatchError, Note, ProvenanceWarning, VggfcnError

if TYPE_CHECKING:
    pass


class ExitCode(IntEnum):
    """Process exit codes of every `vggfcn` command (the README's table)."""

    OK = 0
    MISMATCH = 1  # verify ran and the two networks disagree beyond tolerance
    BAD_INPUT = 2  # usage error, unreadable or unsupported input, unwritable output
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def exit_code(error: VggfcnError) -> ExitCode:
    """The exit code an error means: a verification that ran and failed, or a bad input."""
    return ExitCode.MISMATCH if isinstance(error, MismatchError) else ExitCode.BAD_INPUT


#: The notes (`errors.Note` warnings) the running command printed, for its --json output.
_NOTES: list[Warning] = []


class _Command(click.Command):
    """A command whose arguments are parsed before NumPy is imported (see the module's doc),
    and whose `AssumptionWarning`s are printed as notes on stderr as they happen."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        except VggfcnError as e:
            if ctx.params.get("as_json"):  # the error as one JSON object too, for scripts
                _emit(ctx.info_name or "vggfcn", error=str(e), exit=int(exit_code(e)))
            raise

    def _invoke(self, ctx: click.Context) -> Any:
        import numpy as np

        _NOTES.clear()
        # Overflow and NaN are checked explicitly (and reported as one line); NumPy's own
        # RuntimeWarnings would only add noise to stderr.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("always", Note)
            shown = warnings.showwarning

            def note(
                message: Warning | str, category: type[Warning], *args: Any, **kw: Any
            ) -> None:
                if not isinstance(message, Note):
                    shown(message, category, *args, **kw)
                    return
                click.echo(f"note: {message}", err=True)  # even with --quiet: not progress
                _NOTES.append(message)

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


def _output_stride(help: str) -> Callable[[Any], Any]:
    """--output-stride, whose help says what it means to the command."""
    return click.option(
        "--output-stride",
        type=click.Choice([str(s) for s in OUTPUT_STRIDES]),
        callback=lambda _ctx, _param, value: None if value is None else int(value),
        help=help,
    )


_input_size = click.option(
    "--input-size",
    callback=_parse_size,
    metavar="H,W",
    help="The input size the classifier was built for, when its file does not record it "
    "(files without a model config; default: from the first dense layer's inputs, else 224).",
)


def _emit(command: str, **fields: Any) -> None:
    """A command's --json output: one object on stdout in the vocabulary of docs/json.md."""
    click.echo(json.dumps({"command": command, **fields}))


def _notes(kind: type[Note]) -> list[str]:
    """The notes of one kind the running command printed, for its --json output."""
    return [str(note) for note in _NOTES if isinstance(note, kind)]


def _hash_early(_ctx: click.Context, _param: click.Parameter, source: str) -> str:
    """SOURCE, its hash started now: before the converter's modules import (`digest`)."""
    digest.start(source)
    return source


@main.command(short_help="Convert a VGG classifier into a fully-convolutional network.")
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
    help="Tensor names of a .safetensors: vggfcn (block1_conv1.kernel, fc6.bias) [default], "
    "torch (features.N.weight, fc6.weight: loads into a torchvision-style VGG with conv heads) "
    "or ssd (with --head reduced --layout oihw: ssd.pytorch's vgg ModuleList keys, 0..33).",
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
    is_flag=True,
    help="Take RGB images: flip conv1's input channels if the source expects BGR (Caffe, "
    "Keras VGG).",
)
@click.option("--bgr", is_flag=True, help="Take BGR images (the reverse).")
@_output_stride(
    "Input pixels between score-map cells: 32, or 16 and 8 à trous (pools lose their stride, "
    "later filters are dilated; .onnx and .keras run dilated, .safetensors records it) "
    "[default: 32; a converted SOURCE keeps its own]."
)
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
    rgb: bool,
    bgr: bool,
    output_stride: int | None,
    input_size: tuple[int, int] | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Convert a VGG classifier checkpoint SOURCE into a fully-convolutional OUTPUT.

    OUTPUT's extension picks the format: .safetensors (weights), .onnx (a runnable ONNX model:
    onnxruntime, TensorRT, OpenVINO) or .keras (a Keras 3 model: keras.saving.load_model);
    --to chooses it for any other name. An existing checkpoint of another kind is never
    replaced, even with --force.

    SOURCE is chosen by content: a Keras model (.keras, or HDF5 of any generation, fine-tuned
    heads included), a torchvision or timm state dict (.pth or safetensors, wrapped or not;
    pickles are read without running them), a tensorflow-vgg .npy, a Caffe .caffemodel, or a
    file vggfcn converted (re-written in another format). The first dense layer becomes a
    p x p convolution over pool5 (7x7 for a 224x224 VGG), the later ones 1x1.

    --head reduced writes SSD's and DeepLab's VGG16 backbone (fc6/fc7 decimated to 1024 3x3
    and 1x1 filters; a backbone to train, not a classifier); with --names ssd --layout oihw
    its keys load straight into ssd.pytorch's `vgg` ModuleList.

    \b
    Examples:
      vggfcn convert vgg16_weights_tf_dim_ordering_tf_kernels.h5 vgg16.fcn.safetensors
      vggfcn convert vgg16-397923af.pth vgg16.fcn.safetensors --layout oihw --names torch
      vggfcn convert finetuned.keras finetuned.fcn.onnx
    """
    from . import api, texts

    if rgb and bgr:
        raise VggfcnError("--rgb and --bgr exclude each other: give the one order OUTPUT takes")
    channel_order = "rgb" if rgb else "bgr" if bgr else None
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
        output_stride=output_stride,
    )
    if as_json:
        _emit("convert", source=source, **asdict(result), assumptions=_notes(AssumptionWarning))
    elif not quiet:
        click.echo("\n".join(texts.convert_lines(result)))


@main.command(short_help="Prove a converted network computes what its original does.")
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
    from . import api, texts
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
        _emit(
            "verify",
            original=original,
            converted=converted,
            **report.as_dict(),
            assumptions=_notes(AssumptionWarning),
            provenance=next(iter(_notes(ProvenanceWarning)), None),
        )
    elif not quiet:
        click.echo(
            texts.verify_text(report)
            if isinstance(report, VerifyResult)
            else texts.reduced_text(report)
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


_inputs = click.argument("sources", metavar="INPUT...", nargs=-1, required=True, type=click.Path())
_stride_to_run = _output_stride(
    "Input pixels between score-map cells: 32, or 16 and 8 à trous (finer maps, the same "
    "classifier at every shift) [default: what WEIGHTS records, 32 for an original]."
)


@main.command(short_help="Dense prediction: maps of class scores over inputs.")
@click.argument("weights", type=click.Path())
@_inputs
@click.option(
    "-o",
    "--out",
    type=click.Path(),
    help="Write each logit map (N, h, w, classes) as .npy: this file for one INPUT, or "
    "<name>.npy in this folder for several (a folder, or a path ending in /).",
)
@click.option(
    "-k", "--top", default=3, show_default=True, type=click.IntRange(1), help="Classes shown."
)
@click.option("--cells", is_flag=True, help="List every cell's top classes, not only the map's.")
@click.option(
    "--channels-first/--channels-last",
    default=None,
    help="A .npy INPUT is (N, 3, H, W), as torch pipelines save it, or (N, H, W, 3) [default: "
    "channels-last, or channels-first when only that reading fits].",
)
@_stride_to_run
@_preprocess
@_labels
@_input_size
@_force
@_quiet
@_json
def predict(
    weights: str,
    sources: tuple[str, ...],
    out: str | None,
    top: int,
    cells: bool,
    channels_first: bool | None,
    output_stride: int | None,
    preprocess: str | None,
    labels: str | None,
    input_size: tuple[int, int] | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Dense prediction: a map of class scores for each INPUT of any size >= the window.

    WEIGHTS is a converted file (or an original classifier, converted in memory), loaded once.
    Each INPUT is an image (needs Pillow, the `images` extra), a preprocessed .npy array
    (H, W, 3) or (N, H, W, 3), a folder of them, or a quoted glob. Cell (i, j) of a map is
    the classifier on the window at (s*i, s*j), s the output stride (a 224x224 VGG at stride
    32 gives a (H//32 - 6) x (W//32 - 6) map). For each input: the classes the map holds most
    strongly, each with its highest probability and the cell where it peaks. A bad input is
    reported and the others go on; the exit code is then 2.

    \b
    Examples:
      vggfcn predict vgg16.fcn.safetensors cat.jpg --top 3
      vggfcn predict vgg16.fcn.safetensors shots/ --output-stride 8 --out maps/ --json
    """
    from . import dense, texts

    paths, failed = _expand(sources, as_json, "predict")
    results = dense.predict_files(
        weights,
        paths,
        preprocess=preprocess,
        out=out,
        force=force,
        labels=labels,
        input_size=input_size,
        channels_first=channels_first,
        output_stride=output_stride,
        top=top,
    )
    cells_k = top if cells else 0
    _report(
        results,
        len(paths),
        failed,
        command="predict",
        weights=weights,
        quiet=quiet,
        as_json=as_json,
        fields=lambda result: texts.predict_fields(result, cells_k),
        lines=lambda result: texts.predict_lines(result, cells_k),
    )


@main.command(short_help="Draw one class's probability over images (PNG).")
@click.argument("weights", type=click.Path())
@_inputs
@click.option("-c", "--class", "class_", required=True, help="Class index or ImageNet name.")
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(),
    help="The PNG for one INPUT, or a folder that gets <name>.png for each (a folder, or a "
    "path ending in /).",
)
@click.option(
    "--alpha",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="The colour map's weight over the image.",
)
@_stride_to_run
@_preprocess
@_labels
@_input_size
@_force
@_quiet
@_json
def heatmap(
    weights: str,
    sources: tuple[str, ...],
    class_: str,
    out: str,
    alpha: float,
    output_stride: int | None,
    preprocess: str | None,
    labels: str | None,
    input_size: tuple[int, int] | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Draw one class's per-cell probability over each image INPUT as a colour map (PNG),
    with a legend: the colour scale, the class, the map's maximum and the output stride.

    Probabilities are a softmax over the classes of each cell; each pixel shows the mean over
    the cells whose windows cover it. --class takes an index, an ImageNet name, or a name from
    --labels. INPUT may be images, folders of them and quoted globs; a bad one is reported and
    the others go on (exit 2 at the end).

    \b
    Examples:
      vggfcn heatmap vgg16.fcn.safetensors cat.jpg --class tabby --out tabby.png
      vggfcn heatmap vgg16.fcn.safetensors shots/ --class 281 --output-stride 8 --out heat/
    """
    from . import dense

    paths, failed = _expand(sources, as_json, "heatmap")
    results = dense.heatmap_files(
        weights,
        paths,
        class_,
        out,
        alpha=alpha,
        preprocess=preprocess,
        force=force,
        labels=labels,
        input_size=input_size,
        output_stride=output_stride,
    )
    _report(
        results,
        len(paths),
        failed,
        command="heatmap",
        weights=weights,
        quiet=quiet,
        as_json=as_json,
        fields=asdict,
        lines=lambda result: [
            f"wrote {result.output}: {result.input}, class {result.class_index} "
            f"({result.class_name}), {result.map_shape[0]}x{result.map_shape[1]} cells "
            f"at stride {result.output_stride}, hottest cell {result.hottest_cell} "
            f"p={result.hottest_probability:.3f}"
        ],
    )


def _expand(sources: Sequence[str], as_json: bool, command: str) -> tuple[list[str], bool]:
    """The input files INPUT... names, and whether an argument named none (reported now)."""
    from .inputs import expand

    paths, unmatched = expand(sources)
    for u in unmatched:
        _report_failure(u.argument, u.error, as_json, command)
    if not paths and not unmatched:
        raise VggfcnError("no INPUT given")
    return paths, bool(unmatched)


def _each(results: Iterable[Any], total: int, quiet: bool) -> Iterator[tuple[Any, list[str]]]:
    """Each result with the assumptions noted while it was made (a .npy read channels-first),
    with a progress bar on a terminal's stderr when there are several inputs."""
    bar = None
    if total > 1 and _show_progress(quiet):
        from tqdm import tqdm

        bar = tqdm(total=total, file=sys.stderr, unit="input", leave=False)
    seen = 0
    try:
        for result in results:
            assumed = [str(n) for n in _NOTES[seen:] if isinstance(n, AssumptionWarning)]
            seen = len(_NOTES)
            if bar is not None:
                bar.update()
            yield result, assumed
    finally:
        if bar is not None:
            bar.close()


def _report(
    results: Iterable[Any],
    total: int,
    failed: bool,
    *,
    command: str,
    weights: str,
    quiet: bool,
    as_json: bool,
    fields: Callable[[Any], dict[str, Any]],
    lines: Callable[[Any], list[str]],
) -> None:
    """Each input's result as it comes (its JSON object, or its text lines), each failure as
    its error; exit 2 at the end if any input failed (`failed`: one already has)."""
    from .dense import Failure

    for result, assumed in _each(results, total, quiet):
        if isinstance(result, Failure):
            _report_failure(result.input, result.error, as_json, command)
            failed = True
        elif as_json:
            _emit(command, weights=weights, **fields(result), assumptions=assumed)
        elif not quiet:
            click.echo("\n".join(lines(result)))
    if failed:
        click.get_current_context().exit(ExitCode.BAD_INPUT)


def _report_failure(source: str, error: str, as_json: bool, command: str) -> None:
    """One input's error: its line on stderr, and with --json its object on stdout."""
    click.echo(f"vggfcn: error: {error}", err=True)
    if as_json:
        _emit(command, input=source, error=error, exit=int(ExitCode.BAD_INPUT))


@main.command(short_help="Show what a checkpoint or converted file holds.")
@click.argument("file", type=click.Path())
@_input_size
@_json
def inspect(file: str, input_size: tuple[int, int] | None, as_json: bool) -> None:
    """Show what FILE holds: format, architecture, and its layers as the file defines them.

    \b
    Example:
      vggfcn inspect vgg16.h5
    """
    from . import api, texts

    report = api.inspect_file(file, input_size=input_size)
    if as_json:
        _emit("inspect", **report.as_dict())
        return
    click.echo("\n".join(texts.inspect_lines(report)))


def _selfcheck(quiet: bool, as_json: bool) -> None:
    from . import selfcheck

    checks = selfcheck.run()
    passed = all(c.passed for c in checks)
    if as_json:
        _emit("verify", passed=passed, checks=[asdict(c) for c in checks])
    elif not quiet:
        for c in checks:
            click.echo(f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
        click.echo("PASS" if passed else "FAIL")
    if not passed:
        click.get_current_context().exit(ExitCode.MISMATCH)


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
