# The two set-up commands of this project: `make run` and `make test`.
# Both work on a fresh Debian machine as root: they install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests need (binary -> package).
DEB_TEST := chromium:chromium iproute2:ip nftables:nft firefox-esr:firefox-esr nodejs:node npm:npm
APT_ENV := DEBIAN_FRONTEND=noninteractive

.PHONY: run test lint typecheck pytest deps-deb venv bench clean compat-driver compat-browsers janus loadtest-compare

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { apt-get update -q && $(APT_ENV) apt-get install -yq python3 python3-venv; }
	@test -x $(PY) || python3 -m venv $(VENV) || { apt-get update -q && $(APT_ENV) apt-get install -yq python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Install the Debian packages the tests use, only where missing.
deps-deb:
	@missing=""; for pair in $(DEB_TEST); do pkg=$${pair%%:*}; bin=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	  apt-get update -q && $(APT_ENV) apt-get install -yq --no-install-recommends $$missing; fi

run: $(STAMP)
	$(PY) -m signaling run --dev

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# puppeteer-core for `compat` (compat/driver); it drives Debian's browsers, never downloads one.
DRIVER := compat/driver
$(DRIVER)/node_modules/.installed: $(DRIVER)/package-lock.json | deps-deb
	cd $(DRIVER) && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	@touch $@

compat-driver: $(DRIVER)/node_modules/.installed

# The older browser versions of compat/versions.json (apt-get download + dpkg -x into a cache
# folder, never installed); `compat run` fetches them itself too, and fails only their cells.
compat-browsers: $(STAMP)
	-$(PY) -m compat browsers --fetch firefox140

pytest: $(STAMP) deps-deb compat-driver compat-browsers
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m benchmarks.forwarding

# Load test against Janus (Debian's package; not needed by `make test`).
janus:
	@command -v janus >/dev/null || { apt-get update -q && $(APT_ENV) apt-get install -yq --no-install-recommends janus; }

loadtest-compare: $(STAMP) deps-deb janus
	$(VENV)/bin/loadtest compare --docs

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache $(DRIVER)/node_modules
