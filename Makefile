# Two commands that work on a fresh machine; each makes the virtual environment when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean sysdeps-run sysdeps-test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the main job: make a synthetic slide, tile it on a local Dask cluster, embed the tiles.
demo: $(STAMP) sysdeps-run
	$(VENV)/bin/wsi demo --out demo_out

## System libraries from Debian, installed when missing and this is root with apt (otherwise a
## note, and the parts that need them say so): Pango for WeasyPrint's PDF reports (main job and
## tests), Chromium for the browser tests, poppler-utils (pdftoppm) to check PDF pages in tests,
## libturbojpeg0 for wsidicomizer (it makes the DICOM test slides).
SYSDEPS_RUN  := libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core
SYSDEPS_TEST := $(SYSDEPS_RUN) chromium poppler-utils libturbojpeg0
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { timeout 300 apt-get install -y -q $$missing >/dev/null 2>&1 || \
	    { timeout 300 apt-get update -q >/dev/null 2>&1 && \
	      timeout 300 apt-get install -y -q $$missing >/dev/null 2>&1; }; } ; } || \
	  echo "note: could not install $$missing (needs root and apt): see README"
endef

sysdeps-run:
	$(call apt_install,$(SYSDEPS_RUN))

sysdeps-test:
	$(call apt_install,$(SYSDEPS_TEST))

## Run the tests (the fast default set; slow ones with `make test-all`), after the layer
## contracts of DESIGN.md (import-linter, configured in pyproject.toml).
test: $(STAMP) sysdeps-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-all: $(STAMP) sysdeps-test
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) tools/bench_tiling.py
	$(PY) tools/bench_embed.py
	$(PY) tools/bench_mil.py
	$(PY) tools/bench_run.py

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check wsi pipelines tests tools
	$(VENV)/bin/mypy

clean:
	rm -rf demo_out bench_out
