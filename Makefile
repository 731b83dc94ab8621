# Two commands do all the set-up: `make demo` and `make test` (each creates .venv and installs on first use);
# `make docs` builds the API reference site into docs/_build/html.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the releases this project is tested with; override for other machines,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ZENNIT10 := .zennit10
PYTEST_ARGS ?=
PY39 ?= python3.9
# warnings are errors (-W, all of them reported: --keep-going), unresolved references too (-n); -E re-reads every
# page, so that every build reports every warning
SPHINXOPTS ?= -W --keep-going -n -E

.PHONY: install test lint pytest test-zennit10 demo demo-vit bench tutorials readme docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check crp tests benchmarks tutorials docs
	$(BIN)/mypy crp
	@# the package supports Python >= 3.9: byte-compile it with 3.9 where that interpreter runs
	@if $(PY39) -c "" >/dev/null 2>&1; then $(PY39) -m compileall -q crp && echo "python3.9 compiles crp"; fi

pytest: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint pytest

# zennit 1.0 declares Python >= 3.11.11 but runs on older 3.11; it is installed beside the venv and put first
# on the path, so the same suite runs against zennit 1.0's hook signatures.
$(ZENNIT10)/.installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python --target $(ZENNIT10) zennit==1.0.0 click
	touch $@

test-zennit10: $(ZENNIT10)/.installed
	PYTHONPATH=$(ZENNIT10) $(BIN)/python -c "import zennit, sys; sys.exit(zennit.__file__.find('$(ZENNIT10)') < 0)"
	PYTHONPATH=$(ZENNIT10) $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m crp demo

demo-vit: install
	$(BIN)/python -m crp demo --model vit

bench: install
	$(BIN)/python benchmarks/bench_generate.py

$(VENV)/.docs-installed: setup.py $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

# the API reference site: the README, the tutorials with their committed outputs, one page per public module
docs: $(VENV)/.docs-installed
	$(BIN)/python -m sphinx -b html $(SPHINXOPTS) docs docs/_build/html
	@echo "open docs/_build/html/index.html"

# runs the demo once and writes the README's demo section and the figures in images/ from it (about a minute)
readme: install
	$(BIN)/python benchmarks/make_readme_images.py

# re-executes the tutorials in place (a few minutes): they are committed with their outputs, which the docs render
tutorials: install
	$(BIN)/python tutorials/execute.py

clean:
	rm -rf $(VENV) $(ZENNIT10) build *.egg-info .pytest_cache .ruff_cache .mypy_cache docs/_build docs/api docs/tutorials
