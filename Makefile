# vggfcn developer entry points. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
CACHE  := .cache
# The demo converts this checkpoint; by default a seeded full-size VGG16 in the Keras 1 release
# layout (real ImageNet weights cannot be downloaded here). Override: make demo VGG16=path.h5
VGG16  ?= $(CACHE)/vgg16_seeded_tf_dim_ordering_tf_kernels.h5

export KERAS_BACKEND := torch

.PHONY: help venv demo test test-fast lint bench pictures clean

help:
	@echo "make demo   - set up, convert and verify a full-size VGG16 (VGG16=path.h5 for your own)"
	@echo "make test   - set up, lint, and run the whole test suite (slow full-size tests included)"
	@echo "make test-fast / lint / bench / clean"
	@echo "make pictures - redraw the docs' heatmaps (stride 32/16/8) with the tool itself"

# keras-hub declares tensorflow-text, which its VGG models never import: installed without its
# dependencies (pyproject.toml's dev extra lists the ones it does import).
KERAS_HUB := keras-hub==0.32.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(KERAS_HUB)
	touch $(STAMP)

venv: $(STAMP)

$(CACHE)/vgg16_seeded_tf_dim_ordering_tf_kernels.h5: | $(STAMP)
	mkdir -p $(CACHE)
	$(BIN)/python -m fixtures.generate --generation keras1 --size full --seed 0 $@

demo: $(STAMP) $(VGG16)
	$(BIN)/vggfcn inspect $(VGG16)
	$(BIN)/vggfcn convert --force $(VGG16) $(CACHE)/demo.fcn.safetensors
	$(BIN)/vggfcn verify $(VGG16) $(CACHE)/demo.fcn.safetensors

lint: $(STAMP)
	$(BIN)/ruff check vggfcn tests fixtures bench
	$(BIN)/ruff format --check vggfcn tests fixtures bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

pictures: $(STAMP) $(CACHE)/vgg16_seeded_tf_dim_ordering_tf_kernels.h5
	$(BIN)/python -m fixtures.pictures

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache .mypy_cache .ruff_cache
