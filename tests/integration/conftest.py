"""Every integration test leaves nothing behind: no process, mount or machine of its state root. The real
distributions' state root, shared by the tests that need it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import rig
from rig import Postroj


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("integration tests run as root")
    for tool in ("systemd-nspawn", "skopeo", "umoci", "mmdebstrap"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed (make setup)" % tool)
    cgroups = rig.container_cgroups()
    yield
    deadline = time.monotonic() + 5
    while True:
        procs = rig.processes_mentioning(str(tmp_path))
        mounts = rig.mounts_mentioning(str(tmp_path))
        # another run on this host may be between its container's end and removing its cgroup: wait
        left_cgroups = rig.container_cgroups() - cgroups
        if not procs and not mounts and not left_cgroups or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    rig.kill_processes(procs)
    assert not procs, "processes left behind: %s" % procs
    assert not mounts, "mounts left behind: %s" % mounts
    assert not left_cgroups, "cgroups left behind: %s" % left_cgroups
    run = tmp_path / "home" / "run"
    if run.is_dir():
        leftovers = [p.name for p in run.iterdir()]
        assert not leftovers, "runtime state left behind: %s" % leftovers


@pytest.fixture(scope="session")
def real(pyz, tmp_path_factory) -> Postroj:
    """A state root with rig.REAL_IMAGES bootstrapped for real from Debian's mirror and Ubuntu's archive (shared
    by test_real_distributions and test_lifecycle); the package downloads are kept in the rig's cache between
    runs."""
    with rig.made_once(tmp_path_factory, "real") as (directory, make):
        runner = Postroj(pyz, directory / "home", rig.RIG_CACHE / "package-cache", {})
        if make:
            runner("image", *rig.REAL_IMAGES, "--via", "bootstrap", check=0, timeout=1800)
    return runner


@pytest.fixture(scope="session")
def current(pyz, tmp_path_factory) -> Postroj:
    """A state root with today's releases bootstrapped from Debian's mirror and Ubuntu's archive, the two
    archives at once. The mirror here serves testing's and sid's Release files past their Valid-Until."""
    with rig.made_once(tmp_path_factory, "current") as (directory, make):
        runner = Postroj(pyz, directory / "home", rig.RIG_CACHE / "package-cache", {})
        if make:
            debian = runner.popen("image", *rig.CURRENT_DEBIAN, "--via", "bootstrap", "--accept-expired")
            ubuntu = runner.popen("image", *rig.CURRENT_UBUNTU, "--via", "bootstrap")
            for proc in (debian, ubuntu):
                out, err = proc.communicate(timeout=1200)
                assert proc.returncode == 0, out + err
    return runner


@pytest.fixture(scope="session")
def nginx(current, tmp_path_factory) -> "dict[str, Path]":
    """nginx of each release, from its own archive (apt-get download with a private apt configuration)."""
    root = tmp_path_factory.mktemp("nginx")
    found = {}
    keyring = rig.ubuntu_keyring(current.cache)
    for label, suite in rig.CURRENT_RELEASES.items():
        if label in rig.CURRENT_DEBIAN:
            sources = ["deb http://deb.debian.org/debian %s main" % suite]
            apt = rig.PrivateApt(root / ("apt-" + suite), sources)
        else:
            sources = ["deb http://archive.ubuntu.com/ubuntu %s%s main" % (suite, pocket) for pocket in
                       ("", "-updates")] + ["deb http://security.ubuntu.com/ubuntu %s-security main" % suite]
            apt = rig.PrivateApt(root / ("apt-" + suite), sources, [keyring])
        found[label] = apt.download("nginx", root / suite)
    return found
