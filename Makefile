# Two commands: `make run` and `make test`. Each does all set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
WEIGHTS := weights/lite_medsam.pth
DEVDATA := weights/devdata/click_model/sources.json
DEVDL := weights/devdata/download
HOST ?= 127.0.0.1
PORT ?= 7860

VIEWER_STAMP := app/viewer/static/.built
VIEWER_SRC := $(wildcard viewer/src/*) viewer/package.json viewer/package-lock.json viewer/vite.config.js

.PHONY: run test setup weights viewer serve lint clean gpu-test gpu-bundle mutants

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/medseg serve --host $(HOST) --port $(PORT) --open-sample

test: setup $(VENV)/.dicom3tools $(VENV)/.chromium $(VENV)/.orthanc $(DEVDATA)
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -n 3 --dist loadfile -m "not gpu" tests

# dciodvfy (Debian dicom3tools) validates the DICOM-SEG files the tests write.
$(VENV)/.dicom3tools: | $(STAMP)
	command -v dciodvfy || (apt-get update -qq && apt-get install -y -qq dicom3tools)
	touch $@

# A real PACS for the DICOMweb and label-server tests (tests/orthanc.py starts it on a loopback port).
$(VENV)/.orthanc: | $(STAMP)
	test -x /usr/sbin/Orthanc -a -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb)
	touch $@

# The click model's held-out sets (MNI152 from PyPI's nilearn, Colin27 and INIA19 from Debian's mricron-data),
# for the tests that score on them: each source file must have the sha256 that weights/click_model/adapter.json
# records, or nothing is written (scripts/prepare_click_data.py --verify; docs/clicks.md, "Data").
$(DEVDATA): scripts/prepare_click_data.py weights/click_model/adapter.json | $(STAMP)
	rm -rf $(DEVDL) && mkdir -p $(DEVDL)
	cd $(DEVDL) && (apt-get download mricron-data=1.2.20211006+dfsg-4 || \
		(apt-get update -qq && apt-get download mricron-data=1.2.20211006+dfsg-4))
	dpkg-deb -x $(DEVDL)/mricron-data_*.deb $(DEVDL)/mricron
	$(PIP) download --quiet --no-deps --only-binary :all: nilearn==0.14.1 -d $(DEVDL)
	$(PY) scripts/prepare_click_data.py --mricron $(DEVDL)/mricron --nilearn-wheel $(DEVDL)/nilearn-0.14.1-py3-none-any.whl \
		--shared $(SHARED)/data --verify weights/click_model/adapter.json
	rm -rf $(DEVDL)

# Debian's chromium drives the Playwright end-to-end UI tests (tests/e2e).
$(VENV)/.chromium: | $(STAMP)
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	touch $@

setup: $(STAMP) $(WEIGHTS) $(VIEWER_STAMP)

# The browser viewer (NiiVue, WebGL): npm ci from the committed lock file, vite build into the folder
# the app serves (app/viewer/static). Node 20 and npm come from Debian when missing.
viewer: $(VIEWER_STAMP)

$(VIEWER_STAMP): $(VIEWER_SRC)
	command -v npm || (apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm)
	cd viewer && npm ci --no-audit --no-fund --loglevel=error
	cd viewer && npm run build
	touch $@

# GPU tests (pytest -m gpu: CUDA-graph replays, Triton kernels in bf16, the compiled fast path's Dice) on the
# GPU machine from the checkout alone, with its own python3 (torch, Triton, pytest); docs/testing.md.
gpu-test:
	bash scripts/gpu_test.sh

# Here, before a GPU run: what that machine lacks, in git-ignored folders that a device call carries
# (.devwheels/a: the study readers; .gpu: the weights, shared/data and the LiteMedSAM golden, ~50 MB).
SHARED ?= $(firstword $(wildcard ../shared /work/shared))
gpu-bundle: setup
	test -d .devwheels/s || $(PY) benchmarks/prepare_device_env.py
	rm -rf .gpu && mkdir -p .gpu/lmA .gpu/lmB .gpu/shared/parity
	xz -T0 -c $(WEIGHTS) > .gpu/lm.pth.xz
	split -n 2 -d .gpu/lm.pth.xz .gpu/lmpart && mv .gpu/lmpart00 .gpu/lmA/ && mv .gpu/lmpart01 .gpu/lmB/
	rm .gpu/lm.pth.xz
	cp -r $(SHARED)/data .gpu/shared/data
	cp -r $(SHARED)/parity/litemedsam_real .gpu/shared/parity/
	du -sh .gpu/* .devwheels/*

# Mutation testing (mutmut) per module with that module's fast tests; slow, not in CI. MODULES=... picks.
mutants: setup
	$(PY) -c "import mutmut" 2>/dev/null || $(PIP) install --quiet -e ".[mutation]"
	$(PY) scripts/mutants.py $(MODULES)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e ".[test]"
	# MONAI Label's own client for the label-server tests; only its client is used (it needs requests)
	$(PIP) install --quiet --no-deps monailabel==0.8.5
	# SAM 2's official network (models/sam2_hiera.py): no CUDA extension, no dependency resolution (torch stays pinned),
	# no build isolation (its setup.py imports torch, which an isolated build would download again)
	SAM2_BUILD_CUDA=0 $(PIP) install --quiet --no-deps --no-build-isolation sam2==1.1.0
	touch $(STAMP)

weights: $(WEIGHTS)

$(WEIGHTS): scripts/fetch_weights.py | $(STAMP)
	$(PY) scripts/fetch_weights.py $(WEIGHTS)

clean:
	rm -rf $(VENV) .pytest_cache viewer/node_modules app/viewer/static
