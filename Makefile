# The two set-up commands of this project: `make run` and `make test`.
# Both work on a fresh Debian machine as root: they install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# What is installed in the venv: the node alone (`make run`), then the dev extras (`make test`).
NODE_STAMP := $(VENV)/.installed-node
DEV_STAMP := $(VENV)/.installed-dev
# Debian packages: PACKAGE, or PACKAGE:PROGRAM where a program on the PATH (one installed
# another way, Node from another source) will do. A package is there when dpkg-query says so:
# a library such as libatomic1 ships no program to look for.
# The node: Python and its venv module.
DEB_NODE := python3:python3 python3-venv
# The tests: browsers, network namespaces and shaping, Node for the compat driver and the
# client's unit test, libatomic1 for Playwright's driver (a Node binary linked against it),
# PulseAudio to feed Firefox a capture device from a file (the stethoscope fidelity test),
# redis-server for the fleet tests and coturn's turnserver for the TURN test (tests/test_turn.py
# runs its own on loopback); a node alone never needs either.
DEB_TEST := chromium:chromium iproute2:ip nftables:nft firefox-esr:firefox-esr nodejs:node \
  npm:npm libatomic1 pulseaudio:pulseaudio pulseaudio-utils:pacat coturn:turnserver \
  redis-server:redis-server
# Services a package of DEB_TEST starts under systemd that the tests do not want: Debian's
# coturn.service relays for anyone (its stock /etc/turnserver.conf asks for no credentials);
# redis-server.service would hold port 6379 with no password (the tests start their own).
# Stopped and disabled only where `make` has just installed the package.
DEB_TEST_NO_SERVICE := coturn redis-server
APT_ENV := DEBIAN_FRONTEND=noninteractive

# $(call apt-missing,ENTRIES[,SERVICES]): apt-get install the packages of ENTRIES that are
# missing; then, under systemd, stop and disable the SERVICES whose package was just installed.
define apt-missing
@missing=""; for entry in $(1); do pkg=$${entry%%:*}; prog=$${entry#*:}; \
  [ "$$(dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null)" = "install ok installed" ] && continue; \
  [ "$$prog" != "$$entry" ] && command -v $$prog >/dev/null 2>&1 && continue; \
  missing="$$missing $$pkg"; done; \
if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
  apt-get update -q && $(APT_ENV) apt-get install -yq --no-install-recommends $$missing || exit 1; \
  for svc in $(2); do case "$$missing " in *" $$svc "*) if [ -d /run/systemd/system ]; then \
    echo "systemctl disable --now $$svc"; systemctl disable --now $$svc || true; fi;; esac; \
  done; fi
endef

.PHONY: run test lint typecheck pytest deps-node deps-deb venv bench clean compat-driver compat-browsers pages-tests janus loadtest-compare image

deps-node:
	$(call apt-missing,$(DEB_NODE))

# Install the Debian packages the tests use, only where missing.
deps-deb:
	$(call apt-missing,$(DEB_TEST),$(DEB_TEST_NO_SERVICE))

$(NODE_STAMP): pyproject.toml | deps-node
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $@

$(DEV_STAMP): $(NODE_STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(DEV_STAMP)

run: $(NODE_STAMP)
	$(PY) -m signaling run --dev

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

# puppeteer-core for `compat` (compat/driver); it drives Debian's browsers, never downloads one.
DRIVER := compat/driver
$(DRIVER)/node_modules/.installed: $(DRIVER)/package-lock.json | deps-deb
	cd $(DRIVER) && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	@touch $@

compat-driver: $(DRIVER)/node_modules/.installed

# axe-core and tsc for the consultation pages' tests (tests/test_pages.py).
PAGES_TESTS := tests/pages
$(PAGES_TESTS)/node_modules/.installed: $(PAGES_TESTS)/package-lock.json | deps-deb
	cd $(PAGES_TESTS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

pages-tests: $(PAGES_TESTS)/node_modules/.installed

# The older browser versions of compat/versions.json (apt-get download + dpkg -x into a cache
# folder, never installed); `compat run` fetches them itself too, and fails only their cells.
compat-browsers: $(DEV_STAMP)
	-$(PY) -m compat browsers --fetch firefox140

pytest: $(DEV_STAMP) deps-deb compat-driver compat-browsers pages-tests
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

bench: $(DEV_STAMP)
	$(PY) -m benchmarks.forwarding

# Load test against Janus (Debian's package; not needed by `make test`).
janus:
	@command -v janus >/dev/null || { apt-get update -q && $(APT_ENV) apt-get install -yq --no-install-recommends janus; }

loadtest-compare: $(DEV_STAMP) deps-deb janus
	$(VENV)/bin/loadtest compare --docs

# The node's container image (docs/containers.md; not part of `make test`): podman where it is
# installed, else docker. HEALTHCHECK and SHELL need podman's docker format. Offline, import
# the base first (deploy/offline-base.sh); IMAGE_BUILD_FLAGS passes engine flags, e.g.
# `--isolation chroot --network host` where the engine cannot run its own build containers.
IMAGE ?= consult-node
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
image:
	@command -v $(ENGINE) >/dev/null 2>&1 || { echo "make image: no podman nor docker (apt-get install podman)" >&2; exit 1; }
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) $(IMAGE_BUILD_FLAGS) -t $(IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache $(DRIVER)/node_modules $(PAGES_TESTS)/node_modules
