"""The README's commands as written (issue 38): every shell command in README.rst's literal blocks is either
run here exactly as the README has it, from a directory holding postroj.pyz as a reader's checkout does, or
named in NOT_RUN_HERE with why not and which test runs its like. A command added to the README with neither
fails this test; so does an excuse for a command the README no longer has."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent.parent / "README.rst"

# run below, as written (the first probe and putting postroj on PATH)
RUN_HERE = (
    "./postroj.pyz image debian-bookworm",
    "./postroj.pyz container debian-bookworm -- cat /etc/os-release",
    './postroj.pyz probe --image debian-bookworm --command "systemctl is-active systemd-journald"',
    "apt-get download hello",
    './postroj.pyz probe --image debian-bookworm --package ./hello_*.deb --command "hello"',
    "install -m 0755 postroj.pyz /usr/local/bin/postroj",
)

# what is not run here, by the start of the command: why, and where its like runs
NOT_RUN_HERE = {
    "./postroj.pyz probe --image debian-bookworm --image debian-bullseye --package ./app.deb":
        "app.deb is the reader's own package; test_probe.py probes packages of the suite's own this way",
    "./postroj.pyz vm ": "needs a hypervisor, which these machines lack; test_vm.py runs it against a recording vagrant",
    "./postroj.pyz probe --vm windows-2019": "needs a hypervisor; test_vm.py probes a recording vagrant's Windows",
    "make demo": "the README's main job, which .ci/run's `make test` builds on; run on a fresh host by hand",
    "make test": "this very run",
    "postroj probe --image debian-bookworm --image ubuntu-noble \\\n    --upgrade-from archive --package ./app_2.0.deb":
        "app_2.0.deb is the reader's own; test_lifecycle.py runs the whole life with --upgrade-from archive",
    "postroj probe --image debian-bookworm --package ./app_1.0.deb \\\n    --release-upgrade debian-trixie":
        "app_1.0.deb is the reader's own; test_lifecycle.py takes a package of the suite's own and nginx from bookworm "
        "to trixie, and one from noble to resolute",
    "postroj probe --image debian-bookworm --image debian-trixie --image ubuntu-noble \\\n    --install nginx":
        "test_current_releases.py runs --install nginx on today's releases, test_lifecycle.py its whole life",
    "postroj probe --image debian-bookworm --image ubuntu-noble \\\n    --repo":
        "apt.vendor.example stands for a vendor; test_repositories.py runs --repo with a signed repository on "
        "loopback",
    "docker run --privileged": "Docker cannot run containers on these machines; test_ci_container.py runs the "
                               "same non-booted privileged container with systemd-nspawn",
    "podman run --privileged": "podman cannot start containers on these machines (see docker run)",
    "postroj probe --image debian-bookworm --image ubuntu-noble --package ./app.deb \\\n    --check-unit app --shard":
        "app.deb is the reader's own; test_probe.py shards a matrix and merges it with report",
    "postroj report shard-*.json": "merges the shards above; test_reports.py and test_probe.py merge real ones",
    "autopkgtest -U -B hello -- ./postroj.pyz autopkgtest-virt debian-bookworm":
        "test_autopkgtest.py runs hello by name (through the autopkgtest-virt-postroj link, the same server)",
    "sed 's/^Types: deb$/Types: deb-src/'": "changes the host's own apt sources, which a test must not",
    "apt-get update": "refreshes the host's own apt lists, which a test must not",
    "apt-get source --download-only hello": "needs the deb-src entries the two commands above add to the host; "
                                           "tests/rig.py fetches sources with its own apt configuration",
    "autopkgtest -U -B ./hello_*.dsc": "test_autopkgtest.py runs hello's .dsc (rig.source_package)",
    "ln -s /path/to/postroj.pyz /usr/local/bin/autopkgtest-virt-postroj":
        "/path/to is the reader's; test_autopkgtest.py makes the link in a directory on PATH",
    "autopkgtest -U -B ./memcached_*.dsc": "test_autopkgtest.py runs memcached's tests through that link",
    "./postroj.pyz image debian-bookworm --variant ci":
        "test_autopkgtest.py makes the ci variant and runs haproxy's tests in it",
    "apt-get source --download-only haproxy/bookworm": "needs the host's deb-src entries (above); "
                                                       "rig.source_package('haproxy', 'bookworm') is the same",
    "autopkgtest -B ./haproxy_*.dsc": "test_autopkgtest.py runs haproxy's four tests in debian-bookworm-ci",
    "autopkgtest -U -B --add-apt-source='deb [trusted=yes] http://127.0.0.1:8000/ ./' ./app_1.0.dsc":
        "app_1.0.dsc is the reader's; test_autopkgtest.py serves a local archive on loopback with --archive",
}


def readme_commands() -> "list[str]":
    """Every command of the README's shell blocks (`::` and `.. code-block:: sh`, not YAML), a command with its
    continuation lines as one string, comments after `#` dropped."""
    lines = README.read_text().splitlines()
    found: "list[str]" = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not (line.rstrip().endswith("::") and not line.strip().startswith(".. ")) and \
                line.strip() != ".. code-block:: sh":
            continue
        while index < len(lines) and not lines[index].strip():
            index += 1
        block = []
        while index < len(lines) and (not lines[index].strip() or lines[index].startswith("    ")):
            block.append(lines[index][4:])
            index += 1
        command = ""
        for text in block:
            command = (command + "\n" + text) if command else text.split("  #", 1)[0].rstrip()
            if not command.endswith("\\"):
                if command.strip():
                    found.append(command.strip())
                command = ""
    return found


def test_every_readme_command_is_run_here_or_says_why():
    commands = readme_commands()
    assert len(commands) > 20, commands
    unaccounted = [c for c in commands if c not in RUN_HERE and not any(c.startswith(p) for p in NOT_RUN_HERE)]
    assert unaccounted == [], "README commands neither run by this test nor excused in NOT_RUN_HERE"
    stale = [p for p in NOT_RUN_HERE if not any(c.startswith(p) for c in commands)] + \
        [c for c in RUN_HERE if c not in commands]
    assert stale == [], "excuses or runs for commands the README no longer has"


@pytest.fixture
def checkout(images, tmp_path) -> Path:
    """A reader's directory: postroj.pyz in it, nothing else."""
    directory = tmp_path / "checkout"
    directory.mkdir()
    shutil.copy2(str(images.pyz), str(directory / "postroj.pyz"))
    return directory


def run_as_written(images, checkout: Path, command: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", "-c", command], cwd=str(checkout), env=images.env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, "%s\n%s" % (command, proc.stdout[-4000:])
    return proc


def test_the_first_probe_as_written(images, checkout):
    """The README's first steps, in its order, in the reader's directory (the image already acquired: the
    suite's own registry stands for Docker Hub, which these machines cannot reach)."""
    outputs = [run_as_written(images, checkout, command).stdout for command in RUN_HERE
               if not command.startswith("install ")]
    assert "VERSION_CODENAME=bookworm" in outputs[1]
    assert re.search(r"^PASS +debian-bookworm +command systemctl is-active systemd-journald", outputs[2], re.M)
    assert list(checkout.glob("hello_*.deb")), "apt-get download hello put hello into the directory"
    assert re.search(r"^PASS +debian-bookworm +installed: package hello ", outputs[4], re.M), outputs[4]
    assert re.search(r"^PASS +debian-bookworm +installed: command hello", outputs[4], re.M), outputs[4]


def test_putting_postroj_on_path_as_written(images, checkout):
    """`install -m 0755 postroj.pyz /usr/local/bin/postroj`, in a mount namespace whose /usr/local/bin is its
    own: the host's stays as it is; then `postroj` is a command."""
    command = [command for command in RUN_HERE if command.startswith("install ")][0]
    script = "mount -t tmpfs postroj-test /usr/local/bin && %s && cd / && postroj --version" % command
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          cwd=str(checkout), env=dict(images.env, PATH="/usr/local/bin:" + os.environ["PATH"]),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("postroj "), proc.stdout
    assert not os.path.exists("/usr/local/bin/postroj") or os.path.realpath("/usr/local/bin/postroj") != \
        str(checkout / "postroj.pyz")
