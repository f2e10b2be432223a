# Two commands that work on a fresh machine; each makes the virtual environment when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the main job: make a synthetic slide, tile it on a local Dask cluster, embed the tiles.
demo: $(STAMP)
	$(VENV)/bin/wsi demo --out demo_out

## Run the tests (the fast default set; slow ones with `make test-all`).
test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) tools/bench_tiling.py
	$(PY) tools/bench_embed.py
	$(PY) tools/bench_mil.py

lint: $(STAMP)
	$(VENV)/bin/ruff check wsi pipelines tests tools
	$(VENV)/bin/mypy

clean:
	rm -rf demo_out bench_out
