"""The machined mode, for real: a fresh "test host" (a Debian container booted with all
capabilities, running systemd-machined) gets postroj.pyz copied on, and a bootstrap script runs it.

Inside, postroj registers its containers with machined and runs commands with systemd-run; the
test watches `machinectl list` in the test host while the container runs and after it is gone.
"""

from __future__ import annotations

import os
import time

import pytest

import rig


BOOTSTRAP = """\
set -e
# what a bootstrap script on a fresh server does: postroj.pyz was copied on, it needs nothing else
cd /root
cp /usr/local/bin/postroj.pyz ./postroj.pyz
./postroj.pyz doctor || true
./postroj.pyz image /srv/debian-bookworm/rootfs --name debian-bookworm
"""


@pytest.fixture
def testhost(pyz, shared_images, tmp_path):
    root = rig.testhost_rootfs()
    home = tmp_path / "testhost-state"
    home.mkdir()
    version = os.path.dirname(os.path.realpath(shared_images / "images" / "debian-bookworm"))
    with rig.TestHost(root, home, pyz, version, tmp_path) as host:
        started = host.run("systemctl", "start", "systemd-machined")
        assert started.returncode == 0, started.stderr
        setup = host.run("sh", "-c", BOOTSTRAP)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "mode: machined" in setup.stdout, setup.stdout
        yield host


def test_container_in_machined_mode(testhost):
    proc = testhost.popen("/root/postroj.pyz", "-v", "container", "debian-bookworm", "--", "sh", "-c",
                          "cat /etc/os-release; sleep 3")
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "postroj-debian-bookworm" not in seen:
        seen = testhost.run("machinectl", "list", "--no-legend", "--no-pager").stdout
        time.sleep(0.2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'VERSION_ID="12"' in out
    assert "postroj-debian-bookworm" in seen, "the container was not registered with machined"
    assert "mode machined" in err
    after = testhost.run("machinectl", "list", "--no-legend", "--no-pager").stdout
    assert "postroj-debian-bookworm" not in after


def test_streams_exit_status_and_stdin_in_machined_mode(testhost):
    proc = testhost.run("/root/postroj.pyz", "container", "debian-bookworm", "--", "sh", "-c",
                        "echo out; echo err >&2; exit 7")
    assert proc.returncode == 7
    assert proc.stdout == "out\n" and "err" in proc.stderr
    proc = testhost.run("sh", "-c", "echo hi | /root/postroj.pyz container debian-bookworm -- cat")
    assert proc.stdout == "hi\n", proc.stderr
    proc = testhost.run("/root/postroj.pyz", "container", "debian-bookworm", "--", "no-such-command")
    assert proc.returncode == 127


def test_probe_in_machined_mode(testhost):
    proc = testhost.run("/root/postroj.pyz", "probe", "--image", "debian-bookworm", "--command",
                        "systemctl is-active systemd-journald")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    assert testhost.run("machinectl", "list", "--no-legend", "--no-pager").stdout.strip() == ""


def test_entered_from_outside_its_cgroup_namespace(testhost):
    """An admin who enters the test host with `nsenter --all` from outside keeps the outside cgroup, which the
    host's cgroup namespace shows as /../... nspawn cannot make cgroups there: postroj starts each nspawn in a
    scope of its own (issue 14), also without machined's help (POSTROJ_MODE=nsenter)."""
    seen = testhost.run("cat", "/proc/self/cgroup").stdout
    assert "/.." in seen, "not the case under test: %s" % seen
    doctor = testhost.run("/root/postroj.pyz", "doctor")
    assert "nspawn runs in scopes of its own" in doctor.stdout, doctor.stdout
    for mode in ("nsenter", "machined"):
        proc = testhost.run("env", "POSTROJ_MODE=%s" % mode, "/root/postroj.pyz", "probe", "--image",
                            "debian-bookworm", "--command", "systemctl is-active systemd-journald")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Failed to create" not in proc.stderr and "Traceback" not in proc.stderr
    assert testhost.run("ls", "/var/lib/postroj/run").stdout.strip() == ""
