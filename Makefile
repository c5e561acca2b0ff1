# postroj: `make` builds postroj.pyz; `make setup` installs what postroj and its tests need;
# `make test` runs every test; `make check` the unit tests and one real container; `make demo` acquires
# debian-bookworm and probes it.
PYTHON ?= python3
PYZ := postroj.pyz
APT_PACKAGES := systemd-container skopeo umoci mmdebstrap debootstrap docker-registry \
                util-linux xz-utils zstd dpkg-dev iproute2 python3-pytest vagrant autopkgtest
export DEBIAN_FRONTEND := noninteractive

.PHONY: all setup test check unit integration demo bench clean

all: $(PYZ)

$(PYZ): postroj.py build_zipapp.py
	$(PYTHON) build_zipapp.py $(PYZ)

setup:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi
	@$(PYTHON) -c "import pytest" 2>/dev/null || $(PYTHON) -m pip install -q pytest
	@# development only: checks the README's CI examples against their schemas
	@$(PYTHON) -c "import check_jsonschema" 2>/dev/null || $(PYTHON) -m pip install -q check-jsonschema
	@# autopkgtest's unshare backend, which the tests run beside postroj, maps root's ids through these
	@for f in /etc/subuid /etc/subgid; do grep -q '^root:' $$f 2>/dev/null || echo 'root:100000:65536' >> $$f; done

test: setup $(PYZ)
	$(PYTHON) -m pytest -q --durations=15 tests

# the inner loop: the unit tests and one real container, in under two minutes on a warm rig cache
check: $(PYZ)
	$(PYTHON) -m pytest -q tests/unit tests/integration/test_smoke.py

unit: $(PYZ)
	$(PYTHON) -m pytest -q tests/unit

integration: setup $(PYZ)
	$(PYTHON) -m pytest -q tests/integration

demo: setup $(PYZ)
	./$(PYZ) doctor
	./$(PYZ) image debian-bookworm
	./$(PYZ) probe --image debian-bookworm --command "systemctl is-active systemd-journald"

bench: setup $(PYZ)
	$(PYTHON) bench/run.py

clean:
	rm -f $(PYZ)
	rm -rf .pytest_cache tests/__pycache__ tests/*/__pycache__ __pycache__
