"""postroj inside a CI container (issue 14): a privileged Docker or Podman job has a shell as PID 1, no
systemd, and its root file system on overlayfs, where an overlay's upper directory cannot live. Here the
same shape for real: a non-booted `systemd-nspawn --volatile=overlay --capability=all` around postroj.pyz,
with the test host's root file system (python3, systemd-container), and postroj's state on that overlay."""

from __future__ import annotations

import os
import subprocess

import rig

SCRIPT = """\
set -e
mkdir -p /var/lib/postroj
stat -f -c 'home on %T' /var/lib/postroj
postroj.pyz doctor | grep 'overlay upper'
postroj.pyz image /srv/debian-bookworm/rootfs --name debian-bookworm
postroj.pyz probe --image debian-bookworm --command 'systemctl is-active systemd-journald' \\
    --package /srv/demo.deb --check-unit postroj-demo --check-network tcp://127.0.0.1:8095
echo "left in run/: $(ls -A /var/lib/postroj/run | wc -l)"
"""


def test_probe_in_a_ci_container(pyz, shared_images, tmp_path):
    version = os.path.dirname(os.path.realpath(shared_images / "images" / "debian-bookworm"))
    deb = rig.build_demo_deb(tmp_path, port=8095)
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--volatile=overlay",
        "--capability=all",
        "--console=pipe",  # a CI job's output is a pipe, not a terminal
        "--machine=postroj-ci-%d" % os.getpid(),
        "--directory=%s" % rig.testhost_rootfs(),
        "--bind-ro=%s:/usr/local/bin/postroj.pyz" % pyz,
        "--bind-ro=%s:/srv/debian-bookworm" % version,
        "--bind-ro=%s:/srv/demo.deb" % deb,
        # the package probe's apt needs the rig's package cache no more than a real CI job does; the
        # mirror is reachable from here
        "/bin/sh", "-c", SCRIPT,
    ]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "home on overlayfs", "not the case under test: %s" % lines[0]
    assert "on a tmpfs per container (POSTROJ_HOME is on overlay)" in lines[1]
    results = [line for line in lines if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert len(results) == 4 and all(line.startswith("PASS") for line in results), proc.stdout
    assert lines[-1] == "left in run/: 0", "runtime state left in the CI container"
    assert "Failed to mount overlay" not in proc.stderr
