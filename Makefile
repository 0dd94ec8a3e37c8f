# virtrbd — the two commands the README names are `make demo` and `make test`.
# Both start with `make setup`, which is idempotent: on a machine that has
# everything it checks and returns in about a second.

PYTHON      := /usr/bin/python3
VENV        := .venv
VPY         := $(VENV)/bin/python
PYTEST_ARGS ?=

# python3-cryptography, age, qemu-utils and python3-crc32c are the tests' independent judges, not virtrbd's
DEB_PACKAGES := ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd python3-xxhash xxhash \
                libvirt-daemon-system libvirt-daemon-driver-storage-rbd libvirt-clients python3-libvirt \
                qemu-system-x86 qemu-block-extra qemu-utils \
                python3-venv python3-lxml python3-setuptools \
                e2fsprogs cpio python3-cryptography age libisal2 python3-crc32c

DEB_BUILD_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
                      fakeroot dpkg-dev lintian
VERSION     := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' virtrbd/__init__.py)

.PHONY: setup packages demo lint test unit integration fuzz bench lab-up lab-down clean libvirt-patched deb

setup: packages $(VENV)/.installed

packages:
	@tools/install-debian-packages $(DEB_PACKAGES)

# Debian's python3-rados/python3-rbd/python3-libvirt are not on PyPI: the venv sees them
# through --system-site-packages.  Reinstalled only when the package metadata changes.
# The editable install is the "compat" kind, a plain path in a .pth file: setuptools' default
# installs an import hook whose loading (pathlib, importlib.util, ...) added ~8 ms to the start
# of every virtrbd command and qemu hook call, which an installed package does not pay.
$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	@test -x $(VPY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(VPY) -m pip install --quiet --disable-pip-version-check --no-build-isolation \
	  --config-settings editable_mode=compat -e '.[test,lint]'
	@$(VPY) -c 'import rados, rbd, libvirt, lxml' || \
	  { echo "the venv cannot import Debian's bindings; remove $(VENV) and run make setup" >&2; exit 1; }
	@touch $@

demo: setup
	$(VENV)/bin/virtrbd demo

# virtrbd_VERSION_all.deb, with Debian's tooling, from the repository's files as they are (copied into
# build/deb/src: the build never writes into the tree); then lintian on it, in build/deb/lintian.txt.
deb:
	@tools/install-debian-packages $(DEB_BUILD_PACKAGES)
	@rm -rf build/deb && mkdir -p build/deb/src
	@git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t build/deb/src
	cd build/deb/src && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage --build=binary --no-sign \
	  > ../build.log 2>&1 || \
	  { tail -40 ../build.log >&2; exit 1; }
	cp build/deb/virtrbd_$(VERSION)_all.deb .
	lintian --info build/deb/virtrbd_$(VERSION)_all.deb > build/deb/lintian.txt 2>&1 || \
	  { cat build/deb/lintian.txt >&2; exit 1; }
	@cat build/deb/lintian.txt
	@echo "built virtrbd_$(VERSION)_all.deb"

# libvirt's rbd storage backend with virtrbd's patches (patches/libvirt-9.0), built from Debian's
# source of the installed libvirt into build/libvirt/out/.  The script rebuilds only when the
# patches, the script or the installed libvirt changed; otherwise it returns in ~20 ms.
libvirt-patched: packages
	@tools/build-libvirt-rbd

# ruff (bugs and uniform files), mypy (types; the public API fully typed) and import-linter (the layers in
# setup.cfg: imports flow downward only, the hook never reaches libvirt, formats never reach librbd).
lint: setup
	$(VENV)/bin/ruff check virtrbd bench tests tools/gen-docs tools/gen-package-files
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: setup lint libvirt-patched
	$(VPY) -m pytest $(PYTEST_ARGS) tests/unit tests/integration

unit: setup
	$(VPY) -m pytest $(PYTEST_ARGS) tests/unit

integration: setup libvirt-patched
	$(VPY) -m pytest $(PYTEST_ARGS) tests/integration

# The backup fuzz test with a long budget and a fresh seed (make test runs 2000 mutants of a fixed seed);
# a failure names the seed and the mutant: VIRTRBD_FUZZ_SEED=N VIRTRBD_FUZZ_MUTANTS=M replays it.
FUZZ_MUTANTS ?= 100000
fuzz: setup
	VIRTRBD_FUZZ_MUTANTS=$(FUZZ_MUTANTS) VIRTRBD_FUZZ_SEED=$${VIRTRBD_FUZZ_SEED:-$$(date +%s)} \
		$(VPY) -m pytest -q -s tests/unit/backup/test_fuzz.py

bench: setup
	$(VPY) -m bench

lab-up: setup
	$(VENV)/bin/virtrbd lab up --with-libvirt

lab-down: setup
	$(VENV)/bin/virtrbd lab down

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
