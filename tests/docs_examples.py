"""The console examples of README.md and docs/*.md: parsed, given tiny input files, run, compared.

Used by tests/test_docs.py, whose docstring states the rules. Three parts:

- `examples()` finds every ```console block and splits it into steps: a `$ ` command and the
  lines shown after it;
- `materialise()` writes a tiny stand-in for an input file, of the kind its name implies;
- `output_pattern()` turns the lines a page shows into a regular expression in which numbers,
  shapes, whitespace runs and class names are wildcards, and nothing else is.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path

import click
import numpy as np

from fixtures.generate import GENERATIONS, TINY, Widths, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

#: The only shell line a console block may hold besides `$ vggfcn ...`: text into a file.
PRINTF = re.compile(r"printf '[^']*' > [\w.-]+")
GAP = "..."  # an output line of its own: any number of lines left out

# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Step:
    line: int  # 1-based line of the `$ ` command in its page
    command: str  # the command, without "$ "
    shown: tuple[str, ...]  # the output lines the page shows after it


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # 1-based line of the opening fence
    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(pages: tuple[Path, ...] = PAGES) -> list[Example]:
    """Every ```console block of `pages`, in page order."""
    found = []
    for page in pages:
        lines = page.read_text("utf-8").splitlines()
        opened: int | None = None
        steps: list[Step] = []
        for number, text in enumerate(lines, 1):
            if opened is None:
                if text.strip() == "```console":
                    opened, steps = number, []
            elif text.strip() == "```":
                found.append(Example(page, opened, tuple(steps)))
                opened = None
            elif text.startswith("$ "):
                steps.append(Step(number, text[2:].strip(), ()))
            elif not steps:
                raise ValueError(f"{page.name}:{number}: output before any `$ ` command")
            else:
                last = steps[-1]
                steps[-1] = replace(last, shown=(*last.shown, text.rstrip()))
        if opened is not None:
            raise ValueError(f"{page.name}:{opened}: console block never closed")
    return found


# --------------------------------------------------------------------------- comparing

_DIMS = r"\d+(?:x\d+)+"  # 3x3x512x512, 224x224
_TUPLE = r"\((?:\d+, )*\d+\)"  # (4096, 512, 7, 7), (2, 2): any arity
_NUMBER = r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"  # 138,357,544  0.000e+00  99.9
_TOKEN = re.compile(
    rf"(?P<dims>(?<![\w.]){_DIMS}(?!\w))"
    rf"|(?P<tuple>{_TUPLE})"
    rf"|(?P<number>(?<![\w.]){_NUMBER})"
    r"|(?P<space> +)"
)
_WILD = {"dims": _DIMS, "tuple": _TUPLE, "number": _NUMBER, "space": " +"}
CLASS = "<class>"  # what a class name after its index becomes, in page and output alike


@cache
def imagenet_names() -> tuple[str, ...]:
    text = resources.files("vggfcn").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(name for name in text.splitlines() if name)


def normalise(line: str, names: tuple[str, ...]) -> str:
    """`line` with trailing blanks cut and every "<index> <class name>" that a score follows
    (predict's "508 computer keyboard 100.0%") made "<index> <class>": which class a seeded
    model ranks first is data, not wording."""
    line = line.rstrip()
    if not names:
        return line
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.sub(rf"(?<![\w.])(\d+) (?:{alternatives})(?= \d)", rf"\1 {CLASS}", line)


def line_pattern(line: str) -> str:
    """A regular expression for one shown line: numbers, shapes and runs of spaces wildcarded,
    everything else literal."""
    out, at = [], 0
    for match in _TOKEN.finditer(line):
        out.append(re.escape(line[at : match.start()]))
        out.append(_WILD[match.lastgroup or ""])
        at = match.end()
    out.append(re.escape(line[at:]))
    return "".join(out)


def output_pattern(shown: tuple[str, ...], names: tuple[str, ...] = ()) -> re.Pattern[str]:
    """The whole output a step shows, as one pattern over newline-terminated lines; a `...`
    line stands for any number of lines."""
    parts = []
    for line in shown:
        if line.strip() == GAP:
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(line_pattern(normalise(line, names)) + r"\n")
    return re.compile("".join(parts))


def matches(shown: tuple[str, ...], output: str, names: tuple[str, ...] = ()) -> bool:
    text = "".join(normalise(line, names) + "\n" for line in output.splitlines())
    return output_pattern(shown, names).fullmatch(text) is not None


def expected_exit_code(shown: tuple[str, ...]) -> int:
    """What the shown output implies: 2 for an error line, 1 for a FAIL verdict, else 0."""
    if any(line.startswith("vggfcn: error: ") for line in shown):
        return 2
    if shown and shown[-1].startswith("FAIL"):
        return 1
    return 0


# --------------------------------------------------------------------------- input files


def path_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """The (inputs, outputs) a `vggfcn` command line names, by the command's own click
    parameters: every `click.Path` parameter, an output when it is OUTPUT or `--out`."""
    from vggfcn.cli import main

    command = main.commands[args[0]] if args and args[0] in main.commands else None
    if command is None:  # `vggfcn --help`, a mistyped command: nothing to write
        return [], []
    options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    named: list[tuple[click.Parameter, str]] = []
    tokens = iter(args[1:])
    for token in tokens:
        if token.startswith("-") and token != "-":
            flag, equals, value = token.partition("=")
            option = options.get(flag)
            if option is not None and not option.is_flag:
                named.append((option, value if equals else next(tokens, "")))
        elif arguments:
            named.append((arguments.pop(0), token))
    inputs, outputs = [], []
    for parameter, value in named:
        if isinstance(parameter.type, click.Path) and value:
            (outputs if parameter.name in ("output", "out") else inputs).append(value)
    return inputs, outputs


def stand_in_widths(name: str) -> Widths:
    """TINY widths (fixtures.generate) with ImageNet's 1000 classes, so class names such as
    `cleaver` exist, in the VGG depth the name mentions (vgg11/13/16/19, `_19_layers`)."""
    found = re.search(r"vgg(11|13|16|19)|_(16|19)_layers", name)
    depth = next((g for g in found.groups() if g), "16") if found else "16"
    return replace(TINY, classes=1000, arch=f"vgg{depth}")


def materialise(path: Path, original: Path | None = None) -> None:
    """Write a tiny stand-in for the input file `path`, of the kind its name implies:

    - `*.fcn.*` (a converted file): `original` (or a tiny Keras 1 VGG16) converted to it;
    - `.caffemodel`: a V1 Caffe net (V2 when the name says `v2`), fixtures/caffe.py;
    - `.keras`: the fine-tuned flower classifier trained at 150x150, fixtures/finetuned.py;
    - `.h5`: a Keras checkpoint, fixtures/generate.py: `.weights.h5` keras3-weights, a name
      holding a generation (`keras2-model`) that one, else keras1; `notop` without the head;
    - `.pth` / `.safetensors`: a torchvision state dict (`_bn` with batch norms, `timm` renamed),
      fixtures/torch_vgg.py;
    - `.npy`: a tensorflow-vgg layer dict;
    - `.png`, `.jpg`, `.jpeg`: a 448x448 noise image (Pillow).
    """
    import torch

    name = path.name.lower()
    widths = stand_in_widths(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ".fcn." in name:
        from vggfcn import api

        if original is None:
            original = path.parent / ".stand-in.h5"
            if not original.exists():
                write_checkpoint(original, "keras1", widths, seed=0)
        api.convert_file(str(original), str(path))
    elif name.endswith(".caffemodel"):
        from fixtures.caffe import write_caffemodel

        write_caffemodel(path, "v2" if "v2" in name else "v1", widths.arch, widths, seed=0)
    elif name.endswith(".keras"):
        from fixtures.finetuned import keras_finetuned

        keras_finetuned("flatten", 150).save(str(path))
    elif name.endswith(".h5"):
        generation = "keras3-weights" if name.endswith(".weights.h5") else "keras1"
        generation = next((g for g in sorted(GENERATIONS, key=len)[::-1] if g in name), generation)
        write_checkpoint(path, generation, widths, seed=0, top="notop" not in name)
    elif name.endswith((".pth", ".safetensors")):
        import safetensors.torch

        from fixtures.torch_vgg import classifier, timm_state_dict

        model = classifier(
            widths.convs, widths.fc[0], widths.classes, 0, widths.plan, batch_norm="_bn" in name
        )
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state = timm_state_dict(state) if "timm" in name else state
        if name.endswith(".pth"):
            torch.save(state, path)
        else:
            safetensors.torch.save_file(state, str(path))
    elif name.endswith(".npy"):
        from vggfcn.arch import Arch
        from vggfcn.synthetic import random_layers

        arch = Arch.from_blocks(widths.arch, widths.convs, widths.fc, widths.classes)
        layers = {
            re.sub(r"block(\d)_conv(\d)", r"conv\1_\2", n): [k, b]
            for n, k, b in random_layers(arch, seed=0)
        }
        np.save(path, np.array(layers, dtype=object), allow_pickle=True)
    elif name.endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 256, (448, 448, 3), np.uint8)
        Image.fromarray(pixels).save(path)
    else:
        raise AssertionError(
            f"{path.name}: no stand-in for this kind of file (tests/docs_examples.py)"
        )


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Ran:
    code: int
    output: str  # stdout and stderr, interleaved as a terminal shows them


def run_step(step: Step, directory: Path) -> Ran:
    """Run one step in `directory`: materialise its missing inputs, then the real command line
    (`python -m vggfcn`) as a subprocess; or a `printf '...' > FILE` line through bash."""
    if PRINTF.fullmatch(step.command):
        done = subprocess.run(["bash", "-c", step.command], cwd=directory, capture_output=True)
        return Ran(done.returncode, done.stdout.decode() + done.stderr.decode())
    words = shlex.split(step.command)
    if words[0] != "vggfcn":
        raise AssertionError(
            f"line {step.line}: `$ {step.command}`: a console block runs only `$ vggfcn ...` "
            "and `$ printf '...' > FILE`; show other shell lines in a ```sh block"
        )
    inputs, outputs = path_arguments(words[1:])
    originals = [directory / p for p in inputs if is_original(p)]
    for value in inputs:
        path = directory / value
        if not path.exists():
            materialise(path, next((o for o in originals if o.exists()), None))
    for value in outputs:
        (directory / value).parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "vggfcn", *words[1:]],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return Ran(done.returncode, done.stdout)


def is_original(value: str) -> bool:
    """Whether a named input is a classifier checkpoint (what a converted stand-in comes from)."""
    name = Path(value).name.lower()
    return ".fcn." not in name and name.endswith(CHECKPOINTS)


CHECKPOINTS = (".h5", ".keras", ".pth", ".safetensors", ".caffemodel", ".npy")


def labels_in(directory: Path) -> tuple[str, ...]:
    """Class names a block wrote into text files (`--labels`), for `normalise`."""
    return tuple(
        name for path in directory.glob("*.txt") for name in path.read_text().splitlines() if name
    )
