# Two commands: `make run` and `make test`. Each does all set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
WEIGHTS := weights/lite_medsam.pth
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: run test setup weights serve lint clean

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/medseg serve --host $(HOST) --port $(PORT)

test: setup $(VENV)/.dicom3tools $(VENV)/.chromium $(VENV)/.orthanc
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -n 2 --dist loadfile -m "not gpu" tests

# dciodvfy (Debian dicom3tools) validates the DICOM-SEG files the tests write.
$(VENV)/.dicom3tools: | $(STAMP)
	command -v dciodvfy || (apt-get update -qq && apt-get install -y -qq dicom3tools)
	touch $@

# A real PACS for the DICOMweb and label-server tests (tests/orthanc.py starts it on a loopback port).
$(VENV)/.orthanc: | $(STAMP)
	test -x /usr/sbin/Orthanc -a -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb)
	touch $@

# Debian's chromium drives the Playwright end-to-end UI tests (tests/e2e).
$(VENV)/.chromium: | $(STAMP)
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	touch $@

setup: $(STAMP) $(WEIGHTS)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e ".[test]"
	# MONAI Label's own client for the label-server tests; only its client is used (it needs requests)
	$(PIP) install --quiet --no-deps monailabel==0.8.5
	touch $(STAMP)

weights: $(WEIGHTS)

$(WEIGHTS): scripts/fetch_weights.py | $(STAMP)
	$(PY) scripts/fetch_weights.py $(WEIGHTS)

clean:
	rm -rf $(VENV) .pytest_cache
