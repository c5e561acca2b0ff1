"""postroj on a cgroup v2 host, for real (issue 25): almost every real host has the unified hierarchy (Debian 11+,
Ubuntu 22.04+, GitHub's runners); this machine has the v1 layout. The stand-in: the test host (a Debian container
booted with all capabilities, systemd-container inside) booted with SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1, so that
its /sys/fs/cgroup is cgroup2 (without controllers: the kernel keeps them on v1).

postroj runs in it as a service (`systemd-run --wait --pipe`), as it runs from a CI job or a shell on a real host:
in a cgroup of its own. Containers, probes two at a time, and a SIGKILLed postroj cleaned up by `gc`, in both host
modes: nothing left, no cgroup left."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import rig

CGROUP2 = "63677270"  # cgroup2's magic number, as `stat -fc %t` prints it
MODES = ("nsenter", "machined")

BOOTSTRAP = """\
set -e
cd /root
cp /usr/local/bin/postroj.pyz ./postroj.pyz
./postroj.pyz image /srv/debian-bookworm/rootfs --name debian-bookworm
./postroj.pyz image /srv/debian-bookworm/rootfs --name second
"""


@pytest.fixture(scope="module")
def v2host(pyz, shared_images, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("v2host")
    home = tmp_path / "state"
    home.mkdir()
    version = os.path.dirname(os.path.realpath(shared_images / "images" / "debian-bookworm"))
    with rig.TestHost(rig.testhost_rootfs(), home, pyz, version, tmp_path, unified=True) as host:
        assert host.run("stat", "-fc", "%t", "/sys/fs/cgroup").stdout.strip() == CGROUP2, "not a cgroup v2 host"
        setup = host.run("sh", "-c", BOOTSTRAP)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        yield host


def service(host, mode: str, *args: str, timeout: float = 300):
    """postroj ARGS run as a service of the test host, in a cgroup of its own, in host mode `mode`."""
    if mode == "machined":
        assert host.run("systemctl", "start", "systemd-machined").returncode == 0
    else:
        host.run("systemctl", "stop", "systemd-machined")
    return host.run("systemd-run", "--wait", "--pipe", "--quiet", "--collect", "--service-type=exec",
                    "--setenv=POSTROJ_MODE=%s" % mode, "--working-directory=/root", "/root/postroj.pyz", *args,
                    timeout=timeout)


def nspawns(host) -> "list[str]":
    """The PIDs of the test host's systemd-nspawn processes (it has no procps)."""
    out = host.run("sh", "-c", "grep -lx systemd-nspawn /proc/[0-9]*/comm 2>/dev/null").stdout
    return [path.split("/")[2] for path in out.split()]


def postroj_cgroups(host) -> "list[str]":
    """Every cgroup postroj made that is still there, anywhere in the test host's hierarchy."""
    found = host.run("find", "/sys/fs/cgroup", "-type", "d", "-name", "postroj.*").stdout.split()
    return [path for path in found if "/postroj.run-" in path or "/postroj.postroj-" in path]


def nothing_left(host) -> None:
    deadline = time.monotonic() + 10
    while True:
        nspawn = nspawns(host)
        cgroups = postroj_cgroups(host)
        running = host.run("ls", "/var/lib/postroj/run").stdout.split()
        if not (nspawn or cgroups or running) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not nspawn, "nspawn left running: %s" % nspawn
    assert not cgroups, "cgroups left: %s" % cgroups
    assert not running, "runtime state left: %s" % running
    assert host.run("machinectl", "list", "--no-legend", "--no-pager").stdout.strip() == ""


@pytest.mark.parametrize("mode", MODES)
def test_container_on_a_cgroup_v2_host(v2host, mode):
    proc = service(v2host, mode, "-v", "container", "debian-bookworm", "--", "sh", "-c",
                   "stat -fc %t /sys/fs/cgroup; systemctl is-system-running --wait; cat /proc/self/cgroup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == CGROUP2 and lines[1] in ("running", "degraded"), proc.stdout
    assert "mode %s" % mode in proc.stderr, proc.stderr
    nothing_left(v2host)


@pytest.mark.parametrize("mode", MODES)
def test_two_probes_at_once_on_a_cgroup_v2_host(v2host, mode):
    """Two containers at once, each with its own cgroup tree: neither's systemd stops the other's units."""
    proc = service(v2host, mode, "probe", "--image", "debian-bookworm", "--image", "second", "--jobs", "2",
                   "--command", "systemctl is-active systemd-journald", "--command", "sleep 2; systemctl is-system-running",
                   "--json", "-")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert [(r["image"], r["status"]) for r in rows] == [(i, "pass") for i in ("debian-bookworm", "second")
                                                         for _ in (1, 2)], rows
    nothing_left(v2host)


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_then_gc_leaves_nothing_on_a_cgroup_v2_host(v2host, mode):
    """postroj killed by SIGKILL leaves its container running; `gc` ends it and removes its cgroups."""
    unit = "postroj-killed-%s" % mode
    if mode == "machined":
        v2host.run("systemctl", "start", "systemd-machined")
    else:
        v2host.run("systemctl", "stop", "systemd-machined")
    # KillMode=process: when postroj dies, systemd leaves what it started, as a killed shell would
    started = v2host.run("systemd-run", "--unit", unit, "--quiet", "--collect", "--property=KillMode=process",
                         "--setenv=POSTROJ_MODE=%s" % mode, "/root/postroj.pyz", "container", "debian-bookworm",
                         "--", "sleep", "600")
    assert started.returncode == 0, started.stderr
    rig.wait_for(lambda: json.loads(v2host.run("/root/postroj.pyz", "machines", "--json").stdout)["machines"],
                 timeout=60, what="the container to run")
    time.sleep(1)  # past the boot, into the command
    killed = v2host.run("systemctl", "kill", "--signal=SIGKILL", "--kill-whom=main", unit)
    assert killed.returncode == 0, killed.stderr
    rig.wait_for(lambda: v2host.run("systemctl", "is-active", unit).stdout.strip() != "active", timeout=30,
                 what="postroj to die")
    assert nspawns(v2host), "the container did not outlive postroj: the test tests nothing"
    if mode == "nsenter":
        assert postroj_cgroups(v2host), "no cgroup of the killed run: the test tests nothing"
    else:  # machined made the container's scope
        assert v2host.run("machinectl", "list", "--no-legend", "--no-pager").stdout.strip()
    gc = service(v2host, mode, "gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    nothing_left(v2host)


def test_todays_releases_on_a_cgroup_v2_host(pyz, shared_images, current, nginx, tmp_path):
    """forky, sid, Ubuntu 25.10, 26.04 and 26.10 (systemd 257 to 262) on the unified hierarchy: booted, journald
    active, nginx from their own archives installed, active and serving."""
    binds = {}
    for label in rig.CURRENT_RELEASES:
        binds["/srv/%s" % label] = Path(os.path.dirname(os.path.realpath(current.home / "images" / label)))
        binds["/srv/nginx/%s.deb" % label] = nginx[label]
    home = tmp_path / "state"
    home.mkdir()
    version = os.path.dirname(os.path.realpath(shared_images / "images" / "debian-bookworm"))
    with rig.TestHost(rig.testhost_rootfs(), home, pyz, version, tmp_path, unified=True, binds=binds) as host:
        acquire = "cp /usr/local/bin/postroj.pyz /root/postroj.pyz\n" + "".join(
            "/root/postroj.pyz image /srv/%s/rootfs --name %s\n" % (label, label) for label in rig.CURRENT_RELEASES)
        setup = host.run("sh", "-ec", acquire, timeout=900)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        args = ["probe", "--jobs", "2"]
        for label in rig.CURRENT_RELEASES:
            args += ["--image", label, "--package", "%s=/srv/nginx/%s.deb" % (label, label)]
        proc = service(host, "nsenter", *args, "--check-unit", "nginx", "--check-network", "http://localhost:80",
                       "--command", "systemctl is-active systemd-journald", "--json", "-", timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = json.loads(proc.stdout)["results"]
        assert [(r["image"], r["kind"], r["status"]) for r in rows] == [
            (label, kind, "pass") for label in rig.CURRENT_RELEASES for kind in ("package", "unit", "network",
                                                                                 "command")], rows
        nothing_left(host)
