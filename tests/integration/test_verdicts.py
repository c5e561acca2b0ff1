"""Verdicts a maintainer can trust (issue 34), on real packages from Debian's mirror beside piuparts 1.1.7's verdicts
on the same files (bench/README.rst has the times), and on packages of the suite's own for what no archive package
shows on demand:

- haproxy's security update from bookworm's own version (not the update itself, which the image's -security source
  carries): the upgrade fails on the reload its postinst asked for (/bin/kill is not in the image; piuparts never
  starts the service and passes);
- haproxy, bind9 and apache2 purged together: haproxy leaves /var/lib/haproxy/dev/log (BindReadOnlyPaths=), bind9
  /var/cache/bind/managed-keys.bind and its journal, which named writes (/var/cache compared), each named with the
  directories that hold it; /var/lib/apache2, which dpkg leaves (bug #316521), is not compared, and said;
- exim4 passes purge: /etc/aliases and /etc/mailname are the mail system's, not compared, said; its dependency
  layer is made (bsd-mailx's MTA is exim4 itself), no apt error in the output, no debconf complaint;
- a unit that crashes and is restarted fails though it reads active between its restarts;
- a purge that changes an image file's mode, deletes another and leaves a log reports each, with its kind;
- one package twice, an --upgrade-from of another package, a cut-short file: refused before anything boots."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import rig
from test_lifecycle import demo, probe, version_of

UNIT = "postroj-demo.service"


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory) -> rig.PrivateApt:
    return rig.PrivateApt(tmp_path_factory.mktemp("verdicts-apt"), rig.DEBIAN_SOURCES["bookworm"])


def current(apt: rig.PrivateApt, packages: "list[str]", dest: Path) -> "list[Path]":
    """The newest version of each of `packages` (bookworm-security's), downloaded into `dest`."""
    return [apt.download(package, dest) for package in packages]


def packaged(paths: "list[Path]") -> "list[str]":
    return [arg for path in paths for arg in ("--package", str(path))]


def failures(run) -> "list[tuple[str, str, str]]":
    return [(r["stage"], "%s %s" % (r["kind"], Path(r["target"]).name if r["kind"] == "package" else r["target"]),
             r["reason"]) for r in run.rows if r["status"] == "fail"]


def test_haproxys_update_from_bookworms_own_version_fails_its_reload(images, bookworm, tmp_path):
    new = current(bookworm, ["haproxy"], tmp_path / "debs")
    released = [v for v, suite in bookworm.versions("haproxy") if suite == "bookworm"]
    assert released and released[0] not in new[0].name, "bookworm's own haproxy is the update: nothing to test"
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--upgrade-from", "archive", *packaged(new),
                "--check-unit", "haproxy", "--reboot", "--purge", "--command", version_of("haproxy"), "--fresh")
    assert run.proc.returncode == 1
    # the old version is bookworm's own, named; the image's -security source would have given the update itself
    installed = run.row("installed", "package")
    assert installed["status"] == "pass" and run.row("installed", "command")["output"] == released[0]
    assert "installed: package haproxy %s " % released[0] in run.proc.stdout
    # the upgrade installed the update, and its postinst's reload failed: the maintainer script went on, apt
    # exited 0, the old daemon kept running
    upgraded = run.row("upgraded", "package")
    assert upgraded["status"] == "fail", upgraded
    assert re.match(r"systemd says: Reload failed for haproxy\.service.* \(during the upgraded stage\)$",
                    upgraded["reason"]), upgraded["reason"]
    assert "/bin/kill" in upgraded["details"] and "Unpacking haproxy" in upgraded["output"]
    assert run.row("rebooted", "reboot")["status"] == "skip"


def test_three_servers_purged_together_haproxy_and_bind9_leave_what_they_wrote_apache2_passes(images, bookworm,
                                                                                            tmp_path):
    """haproxy, bind9 and apache2 in one system, as a server has them, each service running and checked: after the
    purge, haproxy's /var/lib/haproxy/dev/log (its unit's BindReadOnlyPaths=) and what named wrote in /var/cache/bind
    are named with the directories that hold them; /var/lib/apache2 (dpkg bug #316521) is not compared, and said.
    piuparts passes all three: it never starts a service."""
    new = current(bookworm, ["haproxy", "bind9", "bind9-utils", "bind9-libs", "apache2", "apache2-bin",
                             "apache2-data", "apache2-utils"], tmp_path / "debs")
    run = probe(images, tmp_path, "--image", "debian-bookworm", *packaged(new), "--check-unit", "haproxy",
                "--check-unit", "named", "--check-unit", "apache2", "--check-network", "http://localhost:80",
                "--purge", "--fresh")
    assert run.proc.returncode == 1
    assert [f[:2] for f in failures(run)] == [("purged", "leftover files")], failures(run)
    left = run.row("purged", "leftover", "files")["output"].splitlines()
    assert left[:6] == [
        "/var/cache/bind: directory left behind, holding 2 entries",
        "/var/cache/bind/managed-keys.bind: left behind",
        "/var/cache/bind/managed-keys.bind.jnl: left behind",
        "/var/lib/haproxy: directory left behind, holding 1 entry",
        "/var/lib/haproxy/dev: directory left behind, holding 1 entry",
        "/var/lib/haproxy/dev/log: left behind"], left
    said = "\n".join(left[6:])
    assert "not compared: /var/lib/apache2 (directories shared by several packages that dpkg leaves, Debian bug " \
           "#316521" in said, said
    assert "debconf: unable to initialize frontend" not in run.proc.stdout


def test_exim4_passes_purge_with_the_mail_systems_files_said_and_from_a_layer(images, bookworm, tmp_path):
    new = current(bookworm, ["exim4", "exim4-base", "exim4-config", "exim4-daemon-light"], tmp_path / "debs")
    run = probe(images, tmp_path, "--image", "debian-bookworm", *packaged(new), "--check-unit", "exim4", "--purge")
    assert failures(run) == [] and run.proc.returncode == 0
    said = run.row("purged", "leftover", "files")["output"]
    assert "not compared: /etc/aliases, /etc/mailname (the mail system's shared configuration" in said, said
    # the dependency layer was made: apt was not let to pick another MTA for bsd-mailx
    first = [r for r in run.rows if r["stage"] == "installed" and r["kind"] == "package"]
    assert re.match(r"\d+ dependencies from layer [0-9a-f]{12} ", first[0]["output"]), first[0]["output"][:300]
    assert "Failed to fetch" not in run.proc.stderr and "no dependency layer" not in run.proc.stderr
    assert "debconf: unable to initialize frontend" not in run.proc.stdout
    # one apt run installed the four: its time is the first's, the others say so
    assert first[0]["duration"] > 0 and all(r["duration"] == 0 for r in first[1:])
    assert all(r["output"].startswith("(in one apt run with ") for r in first[1:])


CRASHING_SERVER = "#!/bin/sh\nsleep 1\necho 'crashing on purpose' >&2\nexit 3\n"
CRASHING_UNIT = """[Unit]
Description=postroj's crash-looping service

[Service]
ExecStart=/usr/bin/postroj-demo-server
Restart=on-failure
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def test_a_unit_that_crashes_and_is_restarted_fails_though_it_reads_active(images, tmp_path):
    deb = rig.build_deb(tmp_path, "postroj-demo", "crashes a second after it starts", {
        "usr/bin/postroj-demo-server": (CRASHING_SERVER, 0o755),
        "lib/systemd/system/postroj-demo.service": (CRASHING_UNIT, 0o644)},
        postinst=rig.UNIT_POSTINST.format(unit=UNIT), prerm=rig.UNIT_PRERM.format(unit=UNIT),
        postrm=rig.UNIT_POSTRM.format(unit=UNIT))
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--check-unit",
                "postroj-demo")
    assert run.proc.returncode == 1
    unit = run.row("installed", "unit")
    assert unit["status"] == "fail" and re.match(r"unit postroj-demo restarts \(\d+ times? in \d+ s\)",
                                                 unit["reason"]), unit
    assert "crashing on purpose" in unit["details"]


MESSY_POSTINST = """if [ "$1" = configure ]; then
  chmod 0600 /etc/issue.net
  rm -f /etc/motd
  mkdir -p /var/log/postroj-demo /var/lib/postroj-demo
  echo started > /var/log/postroj-demo/demo.log
  echo state > /var/lib/postroj-demo/state
fi
"""


def test_purge_reports_a_changed_mode_a_deleted_image_file_and_a_log_and_ignore_leaves_a_path(images, tmp_path):
    deb = demo(tmp_path / "deb", postinst=MESSY_POSTINST + rig.UNIT_POSTINST.format(unit=UNIT))
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--purge", "--ignore",
                "/var/lib/postroj-demo")
    left = run.row("purged", "leftover", "files")
    assert left["status"] == "fail" and left["output"].splitlines()[:4] == [
        "/etc/issue.net: changed from the image: mode 0600, was 0644",
        "/etc/motd: removed from the image",
        "/var/log/postroj-demo: directory left behind, holding 1 entry",
        "/var/log/postroj-demo/demo.log: left behind"], left["output"]
    assert "not compared: /var/lib/postroj-demo, /var/lib/postroj-demo/state (--ignore)" in left["output"]


def test_what_would_pass_for_the_wrong_reason_is_refused_before_anything_boots(images, tmp_path):
    new, old = demo(tmp_path / "new", version="1.1"), demo(tmp_path / "old", version="1.0")
    other = rig.build_deb(tmp_path, "other", "another package", {"usr/share/other/x": ("x\n", 0o644)})
    cut = tmp_path / "cut" / old.name
    cut.parent.mkdir()
    cut.write_bytes(old.read_bytes()[:-200])
    for args, said in [
            (["--package", str(new), "--package", str(old)], "are both postroj-demo (1.1 and 1.0): one package given "
                                                           "twice for every image"),
            (["--upgrade-from", str(other), "--package", str(new)], "is package other, which no --package brings"),
            (["--upgrade-from", str(cut), "--package", str(new)], "is not a whole package: its member data.tar")]:
        proc = images("probe", "--image", "debian-bookworm", *args, check=2)
        assert said in proc.stderr and "hint: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (images.home / "run").exists() or not list((images.home / "run").iterdir())
