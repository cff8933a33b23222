# The README's two commands: `make demo` and `make test`. Both install what they
# need (Debian packages, then a .venv with the project in editable mode), so they
# work on a machine that has never seen the project. They need root (FUSE mounts,
# namespaces, cgroups).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Debian packages: FUSE (runtime, headers and pkg-config to build pyfuse3), a C
# compiler, bindfs and bubblewrap (benchmark peers), iproute2 (veth pairs).
DEBS   := fuse3 libfuse3-dev pkg-config gcc bindfs bubblewrap iproute2 procps strace

.PHONY: all deps venv demo test unit e2e bench clean

all: test

deps: $(VENV)/.installed

# Install missing Debian packages only (apt-get update once, only when needed).
.debs-installed:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@if ! $(PYTHON) -c 'import ensurepip, sysconfig, os; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then \
	  echo "installing python3-venv and python3-dev"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev; \
	fi
	@touch $@

$(VENV)/.installed: .debs-installed pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: deps

demo: deps
	$(PY) -m pods.demo

test: deps
	$(PY) -m pytest -q tests

unit: deps
	$(PY) -m pytest -q tests/rules

# The example pods end to end (part of `make test`): their setup scripts
# install Postfix, procmail, Apache and MariaDB when missing.
e2e: deps
	$(PY) -m pytest -q tests/e2e

bench: deps
	@echo "usage: $(PY) -m bench NAME   (see bench/README.md)"

clean:
	rm -rf $(VENV) .debs-installed build *.egg-info .pytest_cache
