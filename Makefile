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

.PHONY: all deps venv demo test unit e2e bench clean man completion install uninstall criu

all: test

# The library that lets PeaFS ask the kernel to cache symlinks and listings (see
# peafs/fuse_caches.c), built into the venv: peafs/fusecaps.py
# loads it from <sys.prefix>/lib/peapod. --no-as-needed: it calls libfuse
# only through dlvsym, yet must bring libfuse3 into the global scope.
SHIM := $(VENV)/lib/peapod/fuse_caches.so

# The seccomp supervisor's receiving thread (pods/notif_relay.c: a noted
# process's repeated alarm() answered outside the GIL), loaded by
# pods/notifrelay.py from the same directory.
RELAY := $(VENV)/lib/peapod/notif_relay.so

# The `pod` command (pods/pod_front.c): `pod exec` without a Python
# start-up, every other command handed to pods.cli run by this venv's
# interpreter, whose absolute path is built in.
FRONT := $(VENV)/bin/pod

deps: $(VENV)/.installed $(SHIM) $(RELAY) $(FRONT)

$(FRONT): pods/pod_front.c $(VENV)/.installed
	gcc -O2 -Wall -Wextra -Werror -DPOD_PYTHON='"$(abspath $(PY))"' -o $@ pods/pod_front.c

$(SHIM): peafs/fuse_caches.c peafs/fuse_fsync.c peafs/fuse_fsync.h \
	  peafs/fuse_caches.map $(VENV)/.installed
	@mkdir -p $(@D)
	gcc -shared -fPIC -O2 -pthread -Wall -Wextra -Werror $$(pkg-config --cflags fuse3) \
	  -Wl,--version-script=peafs/fuse_caches.map -o $@ peafs/fuse_caches.c peafs/fuse_fsync.c \
	  -Wl,--no-as-needed $$(pkg-config --libs fuse3) -ldl

$(RELAY): pods/notif_relay.c $(VENV)/.installed
	@mkdir -p $(@D)
	gcc -shared -fPIC -O2 -pthread -Wall -Wextra -Werror -o $@ pods/notif_relay.c

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

# editable_mode=compat: a .pth line that puts the checkout on sys.path. The
# default (an import hook that maps each package) cost 12-30 ms of every
# Python start-up here (python -X importtime: site), which every `pod`
# command and every process the daemon starts in Python pays.
$(VENV)/.installed: .debs-installed pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
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

# CRIU >= 4.1 for checkpoint/restore (docs/MIGRATION.md), built from Debian
# trixie's source package with contrib/criu/patches/ into
# /usr/local/lib/peapod/criu (a system criu lacks the patches). Idempotent;
# ~0.1 s when done, ~20 s to rebuild from the kept source.
criu:
	contrib/criu/install-criu

bench: deps
	@echo "usage: $(PY) -m bench NAME   (see bench/README.md)"

clean:
	rm -rf $(VENV) .debs-installed build *.egg-info .pytest_cache

# ---------------------------------------------------------------- install
# `make install` puts the commands, their man pages and bash completions, and
# the systemd unit template peapod@.service under $(DESTDIR)$(PREFIX);
# `make uninstall` removes exactly those files. The commands are wrappers
# that run this checkout's .venv (`make deps` first): the checkout stays
# where it is. Neither target depends on `deps`, so installing never
# rebuilds the venv or runs apt-get.
#
# The unit goes to $(PREFIX)/lib/systemd/system whatever the prefix: systemd
# reads /usr/local/lib/systemd/system as well as /usr/lib/systemd/system,
# and /etc/systemd/system is the administrator's (overrides, `systemctl
# edit`), not an installer's. After installing: `systemctl daemon-reload`.

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
UNITDIR     ?= $(PREFIX)/lib/systemd/system
BUILD       ?= build
# The commands: pod (the front above) and peafs (pyproject.toml's [project.scripts]).
SCRIPTS     := pod peafs
UNIT        := peapod@.service

MANPAGES    := $(SCRIPTS:%=$(BUILD)/man/%.1)
COMPLETIONS := $(SCRIPTS:%=$(BUILD)/completion/%)
# Generated from the parsers, so they are rebuilt when any module changes.
PARSER_SRC  := $(wildcard pods/*.py peafs/*.py)
# The venv's Python when there is one (the parsers' imports are those of the
# running program); the parsers need only the standard library, so the man
# pages can also be built before `make deps`.
GENPY       := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

man: $(MANPAGES)

completion: $(COMPLETIONS)

$(BUILD)/man/%.1: $(PARSER_SRC)
	@mkdir -p $(@D)
	$(GENPY) -m pods.docgen man $* -o $@

$(BUILD)/completion/%: $(PARSER_SRC)
	@mkdir -p $(@D)
	$(GENPY) -m pods.docgen completion $* -o $@

install: man completion
	@test -x $(VENV)/bin/pod || { echo "make install: $(VENV)/bin/pod is missing: run 'make deps' first" >&2; exit 2; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(UNITDIR)
	@for s in $(SCRIPTS); do \
	  echo "install $(DESTDIR)$(BINDIR)/$$s -> $(abspath $(VENV))/bin/$$s"; \
	  printf '#!/bin/sh\n# Installed by make install: runs %s of the checkout %s\nexec \047%s\047 "$$@"\n' \
	    "$$s" '$(CURDIR)' '$(abspath $(VENV))/bin/'"$$s" > $(DESTDIR)$(BINDIR)/$$s && \
	  chmod 755 $(DESTDIR)$(BINDIR)/$$s || exit 1; \
	done
	install -m 644 $(MANPAGES) $(DESTDIR)$(MANDIR)/man1/
	@for s in $(SCRIPTS); do \
	  echo "install -m 644 $(BUILD)/completion/$$s $(DESTDIR)$(BASHCOMPDIR)/$$s"; \
	  install -m 644 $(BUILD)/completion/$$s $(DESTDIR)$(BASHCOMPDIR)/$$s || exit 1; \
	done
	sed 's|@BINDIR@|$(BINDIR)|g' contrib/systemd/$(UNIT).in > $(DESTDIR)$(UNITDIR)/$(UNIT)
	chmod 644 $(DESTDIR)$(UNITDIR)/$(UNIT)

uninstall:
	rm -f $(SCRIPTS:%=$(DESTDIR)$(BINDIR)/%) $(SCRIPTS:%=$(DESTDIR)$(MANDIR)/man1/%.1) \
	  $(SCRIPTS:%=$(DESTDIR)$(BASHCOMPDIR)/%) $(DESTDIR)$(UNITDIR)/$(UNIT)
