# Two commands that work on a fresh machine; each makes the virtual environment when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the main job: make a synthetic slide, tile it on a local Dask cluster, embed the tiles.
demo: $(STAMP)
	$(VENV)/bin/wsi demo --out demo_out

## Headless Chromium for the viewer's browser test: installed from Debian when missing and
## this is root with apt; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { timeout 300 apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { timeout 300 apt-get update -q >/dev/null 2>&1 && \
	        timeout 300 apt-get install -y -q chromium >/dev/null 2>&1; }; } ; } || \
	  echo "note: chromium not installed; the viewer's browser test will skip"

## Run the tests (the fast default set; slow ones with `make test-all`).
test: $(STAMP) browser
	$(PY) -m pytest -q

test-all: $(STAMP) browser
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
