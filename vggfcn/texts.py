"""What the commands print: each result as text lines (and `predict`'s as JSON fields).

Pure functions of the results `api` and `dense` return, apart from `cli` so that the command
line holds the commands, their options and exit codes, and the wording of every report lives
in one place (the docs' console examples are run against it, `tests/test_docs.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from .api import ConvertResult
from .arch import STRIDE
from .dense import PredictResult
from .inspection import Report
from .predict import top_cells
from .reduced_check import ReducedResult
from .verify import StrideCheck, VerifyResult

#: How to get the other common kernel layout, said after a safetensors file's storage: the
#: default suits Keras, TensorFlow and JAX; PyTorch's `nn.Conv2d` wants OIHW.
OTHER_LAYOUT = {
    ("safetensors", "HWIO", "vggfcn"): " (for PyTorch nn.Conv2d: --layout oihw --names torch)",
    ("safetensors", "OIHW", "torch"): " (for Keras, TensorFlow, JAX: the default, HWIO)",
}


def convert_lines(result: ConvertResult) -> list[str]:
    """What `convert` wrote: the network, how the file stores it, and the check made."""
    what = "fully convolutional" if result.head == "classifier" else "reduced backbone"
    if result.output_stride != STRIDE:
        what += f" at output stride {result.output_stride}"
    first = "fc6" if result.head == "classifier" else "conv6"
    outputs = "classes" if result.head == "classifier" else "output channels"
    lines = [
        f"wrote {result.output}: {result.arch} {what}, {result.classes} {outputs}, "
        f"{result.parameters:,} parameters, {first} as {result.fc6_shape} {result.layout}",
        f"  {result.format}: {result.layout} kernels, {result.names} names, {result.dtype}"
        + OTHER_LAYOUT.get((result.format, result.layout, result.names), ""),
    ]
    check = result.verification
    if isinstance(check, VerifyResult):
        lines.append(
            f"verified before publishing: max scaled error {check.max_scaled_error:.1e}, "
            f"{len(check.spatial)} spatial check(s) passed"
        )
    elif check is not None:
        lines.append("verified before publishing: trunk bit-identical, every kept value equal")
    return lines


def inspect_lines(report: Report) -> list[str]:
    """What a file holds: a summary, what was assumed of it, and one line per layer."""
    size = report.input_size
    shown = "x".join(map(str, size)) if size else "unknown"
    origin = f" ({report.input_size_from})" if report.input_size_from else ""
    stored = (
        f"{report.layout} kernels, {report.names} names, {report.dtype}"
        if report.layout
        else "shapes as stored in the file (layout per layer)"
    )
    return [
        f"{report.file}: {report.format} ({report.generation}), {report.arch}, "
        f"{report.head} head, {report.classes} classes, {report.parameters:,} parameters",
        f"input {shown}{origin} {report.input_layout}, {report.channel_order} "
        f"{report.preprocessing}; flatten order "
        f"{report.flatten_order}; output activation {report.output_activation}; batch norm: "
        f"{report.batch_norm}; {stored}",
        *(f"note: {note}" for note in report.notes),
        *("  " + line for line in layer_lines(report.layers)),
    ]


def verify_text(r: VerifyResult) -> str:
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
            *(
                [f"  top-5 agreement   {round(r.top5_agreement * n)}/{n}"]
                if r.top5_agreement is not None
                else []
            ),
            *[
                f"  {c.size}x{c.size} map {c.map_shape[0]}x{c.map_shape[1]}    every cell vs the "
                f"classifier on its window: max scaled error "
                f"{c.agreement.max_scaled_error:.3e}, top-1 {c.agreement.top1_agreement:.0%}"
                f"{'' if c.agreement.passed else '  FAIL'}"
                for c in r.spatial
            ],
            *[stride_line(c) for c in r.strided],
            f"  tolerance         |fcn - ref| <= {r.atol:g}*scale + {r.rtol:g}*|ref| "
            f"({r.precision} weights)",
            f"  compared          logits (the original's output activation: {r.output_activation})",
            "PASS" if r.passed else "FAIL: outputs differ beyond tolerance",
        ]
    )


def stride_line(c: StrideCheck) -> str:
    """A dilated map against the original's stitched from shifted runs."""
    (h, w), (mh, mw) = c.size, c.map_shape
    head = f"  {h}x{w} stride {c.stride} map {mh}x{mw}"
    if c.agreement is None:
        eh, ew = c.expected_shape
        return f"{head}: the original stitched at stride {c.stride} is {eh}x{ew}  FAIL"
    return (
        f"{head} vs the original shifted and stitched: max scaled error "
        f"{c.agreement.max_scaled_error:.3e}, top-1 {c.agreement.top1_agreement:.0%}"
        + ("" if c.passed else "  FAIL")
    )


def reduced_text(r: ReducedResult) -> str:
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


def predict_fields(result: PredictResult, cells: int) -> dict[str, Any]:
    """One input's --json object (docs/json.md): the map's summary, and its cells if asked."""
    fields: dict[str, Any] = {
        "input": result.input,
        "output": result.output,
        "shape": list(result.scores.shape),
        "input_shape": list(result.input_shape),
        "preprocess": result.preprocess,
        "output_stride": result.output_stride,
        "top": [[asdict(peak) for peak in image] for image in result.top],
    }
    if cells:
        found = top_cells(result.scores, cells, result.window, result.labels, result.output_stride)
        fields["cells"] = [asdict(c) for c in found]
    return fields


def predict_lines(result: PredictResult, cells: int) -> list[str]:
    """One input's text summary: a line for the map, one per top class (per image of a
    batch), and with --cells one per cell."""
    n, h, w, k = result.scores.shape
    shape = result.input_shape
    lines = [
        f"{result.input}: {n} input(s) {shape[1]}x{shape[2]} (preprocess {result.preprocess}) "
        f"-> {h}x{w} map of {k} classes at stride {result.output_stride}"
        + (f", logits written to {result.output}" if result.output else "")
    ]
    for image, peaks in enumerate(result.top):
        prefix = f"  [{image}]" if n > 1 else " "
        lines += [
            f"{prefix} {p.index} {p.name} {p.probability:.1%} at cell ({p.cell[0]},{p.cell[1]})"
            f" window y {p.window.top}-{p.window.bottom} x {p.window.left}-{p.window.right}"
            for p in peaks
        ]
    if cells:
        for c in top_cells(
            result.scores, cells, result.window, result.labels, result.output_stride
        ):
            y0, x0, y1, x1 = c.window.top, c.window.left, c.window.bottom, c.window.right
            guesses = "  ".join(f"{g.index} {g.name} {g.probability:.1%}" for g in c.top)
            lines.append(
                f"  [{c.image}] cell ({c.row},{c.col}) window y {y0}-{y1} x {x0}-{x1}: {guesses}"
            )
    return lines


def layer_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per layer: name, class, shape (and layout), dtype, parameters; an activation
    that is part of the layer before it is shown on that layer's line. Columns are as wide as
    their longest entry (a wrapped checkpoint's names are long), and never narrower than a
    stock VGG's."""
    shown = [r for r in rows if not (r["class"] == "Activation" and r.get("fused"))]
    width = max([16, *(len(str(r["name"])) for r in shown)])
    kinds = max([13, *(len(str(r["class"])) for r in shown)])
    lines: list[str] = []
    for row in rows:
        if row["class"] == "Activation" and row.get("fused") and lines:
            lines[-1] += f" +{row['kind']}"
            continue
        name, kind = f"{row['name']:<{width}}", f"{row['class']:<{kinds}}"
        if "kernel_shape" in row:
            shape = "x".join(map(str, row["kernel_shape"])) + f" {row.get('layout', '')}".rstrip()
            activation = f" +{row['activation']}" if row.get("activation") == "relu" else ""
            dilated = f" dilation {row['dilation']}" if row.get("dilation", 1) > 1 else ""
            line = f"{name} {kind} {shape:<20} {row['dtype']:<8} {row['parameters']:>12,}"
            lines.append(line + activation + dilated)
            continue
        skip = ("name", "class", "parameters", "fused")
        details = ", ".join(f"{k} {v}" for k, v in row.items() if k not in skip)
        lines.append(f"{name} {kind} {details}".rstrip())
    return lines
