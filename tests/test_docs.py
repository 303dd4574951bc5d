"""Every command the documentation shows runs, and prints what the documentation says it prints.

The mechanism (helpers in tests/docs_examples.py):

1. **Extract.** Every ```console block of README.md and docs/*.md is one example, run in a fresh
   temporary directory. A line starting with `$ ` is a command; the lines after it, up to the next
   `$ ` or the end of the block, are its shown output. Commands are `$ vggfcn ...` and, to set up
   a file, `$ printf '...' > FILE` (run by bash); any other shell line fails the test (show it in
   a ```sh block instead).
2. **Materialise.** Before each `vggfcn` command, every input file it names (found through the
   command's own click parameters: each `click.Path` but OUTPUT and `--out`) that the block has
   not yet produced is written as a TINY stand-in of the kind its name implies — a `.h5` a Keras 1
   VGG16 (fixtures/generate.py), a `.pth` a torchvision state dict (fixtures/torch_vgg.py), a
   `.caffemodel` a V1 Caffe net (fixtures/caffe.py), a `.keras` the fine-tuned flower model
   (fixtures/finetuned.py), an image 448x448 noise, a `*.fcn.*` file a conversion of the command's
   original; the full rules are `docs_examples.materialise`. Stand-ins have ImageNet's 1000
   classes, so ImageNet class names work.
3. **Run** the real command line, `python -m vggfcn ...`, as a subprocess in that directory, with
   stdout and stderr interleaved as a terminal shows them.
4. **Compare.** The exit code is what the shown output implies: 2 when it shows a
   `vggfcn: error:` line, 1 when it ends in `FAIL`, else 0. The output must match the shown lines
   one for one, where numbers, `AxBxC` shapes, tuples of any length and runs of spaces are
   wildcards (full-size figures in the docs, tiny fixtures here) and a `...` line stands for any
   number of lines; every other character — the wording — must be the same. Class names after
   their index in a score list ("508 computer keyboard 100.0%") are wildcards too, being data.
   An example shows no output only when the command prints none.

The whole file runs in about 20 seconds. Besides the examples: the README stays a front door
(at most 250 lines, a link to every docs page) and every relative link resolves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs_examples import (
    PAGES,
    ROOT,
    Example,
    expected_exit_code,
    imagenet_names,
    labels_in,
    matches,
    run_step,
)
from tests.docs_examples import examples as find_examples

EXAMPLES = find_examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_console_example_runs_as_shown(example: Example, tmp_path: Path) -> None:
    for step in example.steps:
        ran = run_step(step, tmp_path)
        where = f"{example.page.relative_to(ROOT)}:{step.line}: $ {step.command}"
        expected = expected_exit_code(step.shown)
        assert ran.code == expected, f"{where}\nexit {ran.code}, expected {expected}\n{ran.output}"
        names = imagenet_names() + labels_in(tmp_path)
        shown = "\n".join(step.shown)
        assert matches(step.shown, ran.output, names), (
            f"{where}\n--- the page shows:\n{shown}\n--- the command printed:\n{ran.output}"
        )


def test_every_page_has_its_examples_found() -> None:
    pages = {e.page.name for e in EXAMPLES}
    assert {"README.md", "formats.md", "fine-tuned.md", "backbones.md", "proof.md"} <= pages
    assert all(e.steps for e in EXAMPLES), [e.name for e in EXAMPLES if not e.steps]


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert len(readme.splitlines()) <= 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text("utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text("utf-8"), re.MULTILINE)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no anchor {target}"


@pytest.mark.parametrize(
    ("shown", "printed", "same"),
    [
        # full-size numbers and shapes against tiny ones: the same
        (
            "wrote a.onnx: vgg16 fully convolutional, 1000 classes, 138,357,544 parameters, "
            "fc6 as (4096, 512, 7, 7) OIHW",
            "wrote a.onnx: vgg16 fully convolutional, 10 classes, 74,836 parameters, "
            "fc6 as (32, 16, 7, 7) OIHW",
            True,
        ),
        (
            "  block1_conv1     Conv          3x3x3x64 HWIO        float32         1,792 +relu",
            "  block1_conv1     Conv          3x3x3x4 HWIO         float32           112 +relu",
            True,
        ),
        (
            "  max scaled error  0.000e+00  (scale max(1, max|logit|) = 3226)",
            "  max scaled error  7.069e-07  (scale max(1, max|logit|) = 5353)",
            True,
        ),
        # a changed word, layout, name or verdict: not the same
        (
            "wrote a.onnx: fc6 as (4096, 512, 7, 7) OIHW",
            "wrote a.onnx: fc6 as (7, 7, 16, 32) HWIO",
            False,
        ),
        ("  trunk weights     bit-identical, computed once", "  trunk weights     differ", False),
        ("PASS", "FAIL", False),
        ("vgg16, 1000 classes", "vgg19, 1000 classes", False),
        ("  block1_conv1  Conv", "  block1_conv2  Conv", False),
    ],
)
def test_numbers_are_wildcards_and_words_are_not(shown: str, printed: str, same: bool) -> None:
    assert matches((shown,), printed + "\n") is same


def test_gaps_and_class_names() -> None:
    shown = (
        "scene.png: 1 input(s) 448x448 (preprocess caffe) -> 8x8 map of 1000 classes",
        "  [0] cell (0,0) window y 0-224 x 0-224: 508 computer keyboard 100.0%  499 cleaver 0.0%",
        "  ...",
    )
    printed = (
        "scene.png: 1 input(s) 448x448 (preprocess caffe) -> 8x8 map of 1000 classes\n"
        "  [0] cell (0,0) window y 0-224 x 0-224: 262 Brabancon griffon 99.9%  499 cleaver 0.1%\n"
        "  [0] cell (0,1) window y 0-224 x 32-256: 499 cleaver 99.9%  1 goldfish 0.1%\n"
    )
    assert matches(shown, printed, imagenet_names())
    assert not matches(shown, printed)  # without the class list, a name is wording
    assert not matches(shown[:2], printed, imagenet_names())  # an unshown line, no gap
    assert not matches((), "something\n")  # no output shown: none printed
