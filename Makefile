# `make test` and `make demo` build the virtual environment from nothing on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv web orthanc node-readers test demo docs bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,demo,bench,docs]"
	touch $@

venv: $(VENV)/.installed

# The web app and its browser tests: trame-slicer, Playwright, and Debian's chromium where this user may install
# it. slicer-layer-dm 2.0.0 pins slicer-core 5.11; it is installed without that pin so that the web app runs on the
# slicer-core the rest of the tests use. Whatever cannot be installed here makes the browser tests skip, saying why.
$(VENV)/.web: $(VENV)/.installed
	-$(PY) -m pip install --quiet "trame-slicer==2.0.0" aiohttp playwright
	-$(PY) -m pip install --quiet --no-deps "slicer-layer-dm==2.0.0"
	-command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(PY) -c "import trame_slicer, slicer_layer_dm, aiohttp, playwright" 2>/dev/null && touch $@ || true  # else: retried next time

web: $(VENV)/.web

# Debian's Orthanc and its DICOMweb plugin, which Testing/test_dicomweb.py starts on 127.0.0.1, where this user may
# install them (else those tests skip, saying why).
orthanc:
	-[ -x /usr/sbin/Orthanc ] && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb; }

# OHIF's DICOM readers (dcmjs, @cornerstonejs/adapters) under Node for Testing/test_dicom_readers.py, at the
# versions Testing/node/package-lock.json pins, into Testing/node/node_modules; where npm is absent the test skips.
NODE_READERS := Testing/node/node_modules/.installed
$(NODE_READERS): Testing/node/package.json Testing/node/package-lock.json
	-command -v npm >/dev/null && npm ci --prefix Testing/node --ignore-scripts --no-audit --no-fund --loglevel=error \
		&& touch $@

node-readers: $(NODE_READERS)

# Two workers, one file each at a time (module fixtures are built once), one thread each, the longest files
# first (Testing/conftest.py).
test: venv web orthanc node-readers
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 Testing

demo: venv
	$(VENV)/bin/mosmos demo --out demo-out

# The documentation site, into site/. Strict: a broken link, anchor or API reference fails the build.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# The GPU path in one go on one NVIDIA GPU, in minutes: correctness, the out-of-memory path and speed against
# MONAI and open_clip, one JSON object on stdout (benchmarks/gpu_check.py; --cpu-smoke is the suite's tiny run).
gpu-check: venv
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) demo-out study-out site
