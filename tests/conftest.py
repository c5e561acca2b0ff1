"""Fixtures shared by the unit and integration tests: the rig, per-test state roots, and a runner
for the real `postroj.pyz`."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rig  # noqa: E402
from rig import Postroj  # noqa: E402


# The tests send SIGINT as a terminal's Ctrl-C does. A shell without job control starts background
# commands with SIGINT ignored, and an ignored signal stays ignored through exec (postroj keeps it so, as
# a background job should): a handler here makes it the default again in every child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


# (package, backend, tests passed, tests skipped, seconds) of the autopkgtest runs, for the run's summary: the
# tests record them as the property "autopkgtest-comparison", which reaches the run's reports from every worker
COMPARISON: "list[tuple]" = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        COMPARISON.extend(tuple(value) for name, value in report.user_properties if name == "autopkgtest-comparison")


def pytest_terminal_summary(terminalreporter):
    """The same source packages through postroj and through autopkgtest's unshare backend, side by side."""
    if COMPARISON:
        terminalreporter.section("autopkgtest: postroj and unshare")
        for row in sorted(COMPARISON):
            terminalreporter.write_line("%-10s %-8s passed %d, skipped %d, %6.1f s" % row)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped integration test is a failure: CI must run them all."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and "integration" in item.keywords:
        report.outcome = "failed"
        report.longrepr = "skipped integration test under CI=true: %s" % (report.longrepr,)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory) -> Path:
    """postroj.pyz built from this checkout."""
    return rig.build_pyz(tmp_path_factory.mktemp("build") / "postroj.pyz")


@pytest.fixture
def postroj(pyz, tmp_path) -> Postroj:
    """The CLI with a fresh, empty state root of this test's own."""
    return Postroj(pyz, tmp_path / "home", tmp_path / "cache", {})


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real Docker registry on loopback holding library/debian:{bookworm,bullseye}-slim."""
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry is not installed (make setup)")
    storage = tmp_path_factory.mktemp("registry") / "storage"
    reg = rig.Registry(storage).start()
    try:
        reg.push_debian()
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registries_conf(registry, tmp_path_factory) -> Path:
    return registry.registries_conf(tmp_path_factory.mktemp("containers") / "registries.conf")


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """An HTTP server on loopback serving root file system tarballs and SHA256SUMS."""
    root = rig.serve_tarballs(tmp_path_factory.mktemp("www"))
    server = rig.HTTPServer(root).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_images(pyz, registries_conf, tmp_path_factory) -> Path:
    """A state root with debian-bookworm and debian-bullseye acquired through the registry mirror,
    shared (read-only) by the container and probe tests."""
    with rig.made_once(tmp_path_factory, "shared") as (directory, make):
        home = directory / "home"
        if make:
            cache = rig.RIG_CACHE / "package-cache"
            runner = Postroj(pyz, home, cache, {"CONTAINERS_REGISTRIES_CONF": str(registries_conf)})
            runner("image", "debian-bookworm", "debian-bullseye", check=0)
    return home


@pytest.fixture
def images(pyz, shared_images, tmp_path, registries_conf) -> Postroj:
    """The CLI with a state root of this test's own in which the shared images are activated."""
    return rig.with_images_of(shared_images, tmp_path / "home", pyz, tmp_path / "cache",
                              {"CONTAINERS_REGISTRIES_CONF": str(registries_conf)})
