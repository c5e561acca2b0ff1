# postroj: `make` builds postroj.pyz; `make setup` installs what postroj needs to run, `make setup-dev` what
# its tests and benchmark need as well; `make test` runs every test; `make check` the unit tests and one real
# container; `make demo` acquires debian-bookworm and probes it.
PYTHON ?= python3
PYZ := postroj.pyz
# what postroj itself needs: nspawn, registries, bootstrapping (util-linux, tar, xz are on every Debian host)
RUN_PACKAGES := systemd-container skopeo umoci mmdebstrap
# what the tests and the benchmark need besides: the rig's registry, autopkgtest, piuparts, vagrant ...
DEV_PACKAGES := debootstrap docker-registry util-linux xz-utils zstd dpkg-dev apt-utils gpg iproute2 python3-pytest \
                python3-pytest-xdist vagrant \
                autopkgtest piuparts
export DEBIAN_FRONTEND := noninteractive
MYPY_VERSION := 2.4.1
# the test processes of `make test`, each file's tests in one of them (their module fixtures are made once)
TEST_JOBS ?= 2

.PHONY: all setup setup-dev test typecheck check unit integration demo bench clean

all: $(PYZ)

$(PYZ): postroj.py build_zipapp.py
	$(PYTHON) build_zipapp.py $(PYZ)

# install the packages of $(1) that are missing, saying which
define install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing:" $$missing; apt-get update -qq && apt-get install -y -qq $$missing; \
	else echo "installed already: $(1)"; fi
endef

setup:
	$(call install_missing,$(RUN_PACKAGES))

setup-dev: setup
	$(call install_missing,$(DEV_PACKAGES))
	@$(PYTHON) -c "import pytest" 2>/dev/null || $(PYTHON) -m pip install -q pytest
	@# the suite runs in two processes (pytest-xdist): most of its time is containers booting and apt waiting
	@$(PYTHON) -c "import xdist" 2>/dev/null || $(PYTHON) -m pip install -q pytest-xdist
	@# development only: the type check of postroj.py, pinned (a newer mypy may find new things to say)
	@$(PYTHON) -m mypy --version 2>/dev/null | grep -q "^mypy $(MYPY_VERSION) " || $(PYTHON) -m pip install -q mypy==$(MYPY_VERSION)
	@# development only: checks the README's CI examples against their schemas
	@$(PYTHON) -c "import check_jsonschema" 2>/dev/null || $(PYTHON) -m pip install -q check-jsonschema
	@# development only: parses README.rst, docs/*.rst and bench/README.rst as docutils renders them
	@$(PYTHON) -c "import docutils" 2>/dev/null || $(PYTHON) -m pip install -q docutils
	@# autopkgtest's unshare backend, which the tests run beside postroj, maps root's ids through these
	@for f in /etc/subuid /etc/subgid; do grep -q '^root:' $$f 2>/dev/null || echo 'root:100000:65536' >> $$f; done

test: setup-dev $(PYZ) typecheck
	$(PYTHON) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=15 tests

# the annotations are checked: postroj.py has no mypy error
typecheck:
	$(PYTHON) -m mypy postroj.py

# the inner loop: the unit tests and one real container, in under two minutes on a warm rig cache
check: $(PYZ)
	$(PYTHON) -m pytest -q tests/unit tests/integration/test_smoke.py

unit: $(PYZ)
	$(PYTHON) -m pytest -q tests/unit

integration: setup-dev $(PYZ)
	$(PYTHON) -m pytest -q tests/integration

demo: setup $(PYZ)
	./$(PYZ) doctor
	./$(PYZ) image debian-bookworm
	./$(PYZ) probe --image debian-bookworm --command "systemctl is-active systemd-journald"

bench: setup-dev $(PYZ)
	$(PYTHON) bench/run.py

clean:
	rm -f $(PYZ)
	rm -rf .pytest_cache tests/__pycache__ tests/*/__pycache__ __pycache__
