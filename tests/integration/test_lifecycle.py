"""The package's whole life (issue 23) through the real postroj.pyz: packages the suite builds that each break
one stage (a file left outside dpkg's knowledge, a unit started but not enabled, a daemon that survives remove,
a failing upgrade script) caught at that stage with a reason that names the cause, and a well-behaved one that
passes every stage; real nginx from Debian's mirror and Ubuntu's archive upgraded from the release's version to
the current one, rebooted and purged with nothing left behind; `--upgrade-from archive`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import pytest

import rig

UNIT = "postroj-demo.service"


def version_of(package: str) -> str:
    """A --command that prints the installed version of `package`."""
    return "dpkg-query -W -f '${Version}' %s" % package


class Run(NamedTuple):
    """A probe's exit, its JSON results and its JUnit test cases."""

    proc: subprocess.CompletedProcess
    rows: "list[dict]"
    cases: "dict[tuple[str, str], tuple[str, str]]"  # (suite, test case) -> (status, message)

    def row(self, stage: str, kind: str, target: str = "", image: str = "debian-bookworm") -> dict:
        """The one result of `kind` (and `target`, a package's file name will do) at `stage`."""
        found = [r for r in self.rows if (r["image"], r["stage"], r["kind"]) == (image, stage, kind) and
                 (not target or target in (r["target"], os.path.basename(r["target"])))]
        assert len(found) == 1, "%d results %s: %s %s in %s" % (len(found), stage, kind, target, self.rows)
        return found[0]

    def outline(self, image: str = "debian-bookworm") -> "list[tuple[str, str, str]]":
        """(stage, check, status) of each result of `image`, packages by their file names."""
        return [(r["stage"], check_name(r), r["status"]) for r in self.rows if r["image"] == image]


def check_name(row: dict) -> str:
    target = os.path.basename(row["target"]) if row["kind"] == "package" else row["target"]
    return "%s %s" % (row["kind"], target)


def probe(runner, tmp_path: Path, *args: str, options: "tuple[str, ...]" = (), timeout: float = 900,
          terminal: bool = False) -> Run:
    """`postroj [options] probe ARGS` with its reports in files; every result must be a JUnit test case named
    STAGE: CHECK (CHECK alone where no package is probed) with the same outcome. With `terminal`, on a
    pseudo-terminal as a person runs it: the stdout of the result is what the terminal showed."""
    number = len(list(tmp_path.glob("report-*.json")))  # a test's second run reads its own reports
    report, junit = tmp_path / ("report-%d.json" % number), tmp_path / ("report-%d.xml" % number)
    argv = [*options, "probe", *args, "--json", str(report), "--junit", str(junit)]
    if terminal:
        code, shown, _, _ = rig.on_a_terminal(runner, *argv, timeout=timeout)
        proc = subprocess.CompletedProcess(argv, code, shown, "")
    else:
        proc = runner(*argv, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    rows = json.loads(report.read_text())["results"]
    cases = {}
    for suite in ET.parse(str(junit)).getroot().findall("testsuite"):
        for case in suite.findall("testcase"):
            outcome = [(status, case.find(tag).get("message", "")) for tag, status in
                       (("failure", "fail"), ("error", "fail"), ("skipped", "skip")) if case.find(tag) is not None]
            cases[(suite.get("name"), case.get("name"))] = outcome[0] if outcome else ("pass", "")
    names = []
    for row in rows:
        title = "%s %s" % (row["kind"], row["target"])
        stage = row["stage"] + (" to %s" % row["release"] if row["release"] else "")  # release-upgraded to X
        name = "%s: %s" % (stage, title) if row["stage"] not in ("", "booted") else title
        if row["name"] != name:  # a package by its name and version, where they were read
            assert row["kind"] == "package" and re.fullmatch(r"%s: package \S+ \S+(, \S+ \S+)*" % stage,
                                                             row["name"]), row
            name = row["name"]
        names.append((row["image"], name))
        assert cases.get((row["image"], name), ("missing",))[0] == row["status"], (name, row, sorted(cases))
    assert sorted(names) == sorted(cases), "JUnit and JSON differ: %s\n%s" % (names, sorted(cases))
    return Run(proc, rows, cases)


def demo(directory: Path, **overrides: str) -> Path:
    """The rig's demo package (a unit its scripts enable, start and stop as debhelper's do) in a directory of
    its own, with `overrides` (a script, the version)."""
    directory.mkdir(parents=True, exist_ok=True)
    return rig.build_demo_deb(directory, **overrides)


# ==============================================================================
# A package that gets every stage right
# ==============================================================================


def test_a_well_behaved_package_passes_every_stage_on_two_images(images, tmp_path):
    old = demo(tmp_path / "old", version="1.0")
    new = demo(tmp_path / "new", version="2.0")
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--image", "debian-bullseye", "--jobs", "2",
                "--upgrade-from", str(old), "--package", str(new), "--reboot", "--purge",
                "--check-unit", "postroj-demo", "--check-network", "http://localhost:8080",
                "--expect-body", "hello from postroj-demo", "--command", version_of("postroj-demo"))
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    checks = ["unit postroj-demo", "network http://localhost:8080", "command " + version_of("postroj-demo")]
    expected = (
        [("installed", "package " + old.name, "pass")] + [("installed", c, "pass") for c in checks] +
        [("upgraded", "package " + new.name, "pass")] + [("upgraded", c, "pass") for c in checks] +
        [("rebooted", "reboot the container", "pass")] + [("rebooted", c, "pass") for c in checks] +
        [("removed", "package " + new.name, "pass"), ("removed", "unit postroj-demo", "pass"),
         ("removed", "leftover processes", "pass"), ("removed", "leftover units", "pass")] +
        [("purged", "package " + new.name, "pass"), ("purged", "unit postroj-demo", "pass"),
         ("purged", "leftover files", "pass"), ("purged", "leftover processes", "pass")])
    for image in ("debian-bookworm", "debian-bullseye"):
        assert run.outline(image) == expected, run.outline(image)
        # the upgrade happened, by the package's own scripts, and the unit is as the package left it
        versions = [run.row(stage, "command", image=image)["output"] for stage in ("installed", "upgraded", "rebooted")]
        assert versions == ["1.0", "2.0", "2.0"]
        assert "Unpacking postroj-demo (2.0) over (1.0)" in run.row("upgraded", "package", image=image)["output"]
        assert run.row("rebooted", "unit", image=image)["output"] == "active, enabled"


def test_reboot_without_packages_boots_the_same_overlay_again(images, tmp_path):
    boots = "cat /proc/sys/kernel/random/boot_id >> /var/lib/postroj-boots; cat /var/lib/postroj-boots"
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--reboot", "--command", boots)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    assert run.outline() == [("booted", "command " + boots, "pass"), ("rebooted", "reboot the container", "pass"),
                             ("rebooted", "command " + boots, "pass")]
    first = run.row("booted", "command")["output"].splitlines()
    both = run.row("rebooted", "command")["output"].splitlines()
    assert len(first) == 1 and len(both) == 2 and both[0] == first[0] and both[1] != both[0], both


def test_the_journal_spans_a_reboot(images, tmp_path):
    """The journal is kept in the overlay's /var/log/journal: after --reboot the boot before is in it, as on a
    machine (a failed stage's journal, read since the stage began, holds the shutdown before the reboot)."""
    boots = "journalctl --list-boots --no-pager -q | wc -l"
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--reboot", "--command", boots)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    assert [run.row(stage, "command")["output"].strip() for stage in ("booted", "rebooted")] == ["1", "2"]


# ==============================================================================
# Packages that break one stage each
# ==============================================================================

FORGOTTEN_WANTS = "/etc/systemd/system/multi-user.target.wants/postroj-demo.service"


@pytest.mark.parametrize("overrides,left", [
    ({"postinst": rig.UNIT_POSTINST.format(unit=UNIT) + "echo 1 > /var/lib/postroj-demo.state\n"},
     "/var/lib/postroj-demo.state: left behind"),
    ({"postrm": "if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi\n"},
     FORGOTTEN_WANTS + ": broken link to a unit that is gone"),
], ids=["state-file-of-the-postinst", "wants-link-the-postrm-forgets"])
def test_what_the_scripts_leave_outside_dpkg_fails_the_purge(images, tmp_path, overrides, left):
    deb = demo(tmp_path / "deb", **overrides)
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--purge",
                "--check-unit", "postroj-demo")
    assert run.proc.returncode == 1
    failed = [(r["stage"], check_name(r)) for r in run.rows if r["status"] != "pass"]
    assert failed == [("purged", "leftover files")], run.outline()
    files = run.row("purged", "leftover", "files")
    assert files["reason"].startswith("purged: 1 ") and "path differs from the container before the install" in \
        files["reason"], files
    assert files["output"].splitlines()[0] == left, files["output"]
    assert run.cases[("debian-bookworm", "purged: leftover files")][0] == "fail"


def test_a_unit_started_but_not_enabled_fails_after_the_reboot(images, tmp_path):
    deb = demo(tmp_path / "deb", postinst='if [ "$1" = configure ]; then systemctl daemon-reload; '
                                          'systemctl start %s; fi\n' % UNIT)
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--reboot",
                "--check-unit", "postroj-demo", "--check-network", "http://localhost:8080", "--timeout", "5")
    assert run.proc.returncode == 1
    # the install looks right: the unit runs, and answers
    installed = run.row("installed", "unit")
    assert installed["status"] == "pass" and installed["output"] == "active, disabled", installed
    # said at once, without a reboot to find it out (issue 34, item 7)
    assert installed["warning"] == "unit postroj-demo is active but not enabled: it will not start at the next boot"
    assert "      warning: unit postroj-demo is active but not enabled" in run.proc.stdout
    assert run.row("installed", "network")["status"] == "pass"
    assert run.row("rebooted", "reboot")["status"] == "pass"
    # after the reboot it is gone, and the reason says why
    unit = run.row("rebooted", "unit")
    assert unit["status"] == "fail" and unit["reason"].startswith("inactive, not enabled"), unit
    assert run.row("rebooted", "network")["status"] == "fail"
    assert run.cases[("debian-bookworm", "rebooted: unit postroj-demo")][0] == "fail"


# runs outside systemd, as old init scripts' daemons do
DAEMON = "#!/bin/sh\nwhile :; do sleep 1; done\n"


def test_a_daemon_started_outside_systemd_fails_the_remove(images, tmp_path):
    deb = rig.build_deb(tmp_path, "postroj-stray", "a daemon its postinst starts outside systemd",
                        {"usr/sbin/postroj-stray-daemon": (DAEMON, 0o755)},
                        postinst='if [ "$1" = configure ]; then\n'
                                 '  setsid /usr/sbin/postroj-stray-daemon </dev/null >/dev/null 2>&1 &\nfi\n')
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--remove")
    assert run.proc.returncode == 1
    assert run.outline() == [("installed", "package " + deb.name, "pass"), ("removed", "package " + deb.name, "pass"),
                             ("removed", "leftover processes", "fail"), ("removed", "leftover units", "pass")]
    processes = run.row("removed", "leftover", "processes")
    assert processes["reason"].startswith("removed: 1 ") and "of the packages still run" in processes["reason"], \
        processes
    assert "/bin/sh /usr/sbin/postroj-stray-daemon" in processes["output"], processes


def test_a_process_the_postinst_starts_that_survives_the_purge_fails_the_purge(images, tmp_path):
    """A program of the system (sleep), not of the package, started by the postinst outside systemd and
    never stopped: remove's check (the packages' own programs and scripts) passes, purge's (programs running
    that did not before the install) fails and names it."""
    deb = rig.build_deb(tmp_path, "postroj-sleeper", "a postinst that leaves sleep running",
                        {"usr/share/postroj-sleeper/README": ("sleeps\n", 0o644)},
                        postinst='if [ "$1" = configure ]; then\n'
                                 '  setsid sleep 4207 </dev/null >/dev/null 2>&1 &\nfi\n',
                        postrm="true\n")  # dpkg keeps the package until its purge
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--purge")
    assert run.proc.returncode == 1
    assert run.outline() == [("installed", "package " + deb.name, "pass"), ("removed", "package " + deb.name, "pass"),
                             ("removed", "leftover processes", "pass"), ("removed", "leftover units", "pass"),
                             ("purged", "package " + deb.name, "pass"), ("purged", "leftover files", "pass"),
                             ("purged", "leftover processes", "fail")], run.rows
    assert "Purging configuration files for postroj-sleeper" in run.row("purged", "package")["output"]
    processes = run.row("purged", "leftover", "processes")
    assert processes["reason"] == "purged: 1 process still runs", processes
    assert processes["output"] == "/usr/bin/sleep (sleep 4207)", processes
    assert run.cases[("debian-bookworm", "purged: leftover processes")] == ("fail", processes["reason"])


def test_a_system_user_the_purge_keeps_passes_the_purge_and_is_reported(images, tmp_path):
    """The postinst adds a system user and its group, the postrm keeps them (as Debian's policy allows, since
    files may still be owned by them): the purge passes, and its leftover files result names them."""
    deb = rig.build_deb(tmp_path, "postroj-account", "a postinst that adds a system user",
                        {"usr/share/postroj-account/README": ("an account\n", 0o644)},
                        postinst='if [ "$1" = configure ] && ! getent passwd postroj-account >/dev/null; then\n'
                                 '  useradd --system --user-group --no-create-home --home-dir /nonexistent '
                                 '--shell /usr/sbin/nologin postroj-account\nfi\n',
                        postrm="true\n")
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--purge",
                "--command", "id postroj-account")
    assert run.proc.returncode == 0, run.rows
    assert {r["status"] for r in run.rows} == {"pass"}, run.outline()
    assert run.row("installed", "command")["output"].startswith("uid="), run.rows
    files = run.row("purged", "leftover", "files")
    assert files["output"] == "left, as Debian's policy allows: group:postroj-account, user:postroj-account", files
    assert run.row("purged", "leftover", "processes")["output"] == ""


def test_a_unit_the_prerm_does_not_stop_fails_the_remove(images, tmp_path):
    """The unit's file is gone with the package, the service still runs: systemd reports it active and
    not-found. The unit check, the units' and the processes' checks each say so."""
    deb = demo(tmp_path / "deb", prerm="true\n")
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--remove",
                "--check-unit", "postroj-demo")
    assert run.proc.returncode == 1
    unit = run.row("removed", "unit")
    assert unit["status"] == "fail", unit
    assert unit["reason"] == "unit postroj-demo is still active after the packages were removed", unit
    units = run.row("removed", "leftover", "units")
    assert units["status"] == "fail" and units["output"] == UNIT, units
    processes = run.row("removed", "leftover", "processes")
    assert processes["status"] == "fail" and "/usr/bin/postroj-demo-server 8080" in processes["output"], processes


FAILS_ON = ('if [ "$1" = {arg} ]; then echo "postroj-demo {script}: {words} $2" >&2; '
            'logger -t postroj-demo "{script} fails: {words} $2"; exit 1; fi\n')


@pytest.mark.parametrize("old_scripts,new_scripts,printed", [
    # the new preinst refuses the upgrade
    ({}, {"preinst": FAILS_ON.format(arg="upgrade", script="preinst", words="refusing to upgrade from")},
     ["postroj-demo preinst: refusing to upgrade from 1.0",
      "new postroj-demo package pre-installation script subprocess returned error exit status 1"]),
    # the old prerm fails, and dpkg's way out, the new prerm's failed-upgrade, fails too (were it to succeed,
    # dpkg would go on with the upgrade, rightly)
    ({"prerm": FAILS_ON.format(arg="upgrade", script="prerm", words="cannot stop for the upgrade to") +
      rig.UNIT_PRERM.format(unit=UNIT)},
     {"prerm": FAILS_ON.format(arg="failed-upgrade", script="prerm", words="cannot take over from") +
      rig.UNIT_PRERM.format(unit=UNIT)},
     ["postroj-demo prerm: cannot stop for the upgrade to 2.0",
      "old postroj-demo package pre-removal script subprocess returned error exit status 1",
      "postroj-demo prerm: cannot take over from 1.0",
      "new postroj-demo package pre-removal script subprocess returned error exit status 1"]),
], ids=["new-preinst", "old-prerm"])
def test_a_failing_upgrade_script_fails_the_upgrade_and_skips_the_stages_after_it(images, tmp_path, old_scripts,
                                                                                  new_scripts, printed):
    old = demo(tmp_path / "old", version="1.0", **old_scripts)
    new = demo(tmp_path / "new", version="2.0", **new_scripts)
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--upgrade-from", str(old), "--package", str(new),
                "--reboot", "--purge", "--check-unit", "postroj-demo", "--check-network", "http://localhost:8080",
                "--timeout", "5")
    assert run.proc.returncode == 1
    checks = ["unit postroj-demo", "network http://localhost:8080"]
    assert run.outline() == (
        [("installed", "package " + old.name, "pass")] + [("installed", c, "pass") for c in checks] +
        [("upgraded", "package " + new.name, "fail")] + [("upgraded", c, "skip") for c in checks] +
        [("rebooted", "reboot the container", "skip")] + [("rebooted", c, "skip") for c in checks] +
        [("removed", "package " + new.name, "skip"), ("removed", "unit postroj-demo", "skip"),
         ("removed", "leftover processes", "skip"), ("removed", "leftover units", "skip")] +
        [("purged", "package " + new.name, "skip"), ("purged", "unit postroj-demo", "skip"),
         ("purged", "leftover files", "skip"), ("purged", "leftover processes", "skip")]), run.outline()
    upgrade = run.row("upgraded", "package")
    assert upgrade["reason"].startswith("apt exited with 100"), upgrade
    for line in printed:
        assert line in upgrade["reason"] + upgrade["output"], upgrade["output"]
    # the journal of the stage: what the failing script logged, nothing of the boot before it
    assert "fails: " in upgrade["details"] and "Startup finished" not in upgrade["details"], upgrade["details"]
    # the checks of the stage name the package that failed, the stages after it the stage
    assert new.name in run.row("upgraded", "unit")["reason"]
    later = [r for r in run.rows if r["stage"] in ("rebooted", "removed", "purged")]
    assert {r["reason"] for r in later} == {"not run: the upgraded stage failed (%s)" % new.name}, later
    assert run.cases[("debian-bookworm", "rebooted: reboot the container")] == (
        "skip", "not run: the upgraded stage failed (%s)" % new.name)


def test_a_unit_the_package_neither_enables_nor_starts_fails_unless_start_units(images, tmp_path):
    """postroj starts nothing itself; --start-units, for distributions whose policy leaves that to the
    administrator, enables and starts the checked units."""
    deb = demo(tmp_path / "deb", postinst="if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi\n")
    args = ["--image", "debian-bookworm", "--package", str(deb), "--check-unit", "postroj-demo",
            "--check-network", "http://localhost:8080", "--timeout", "3"]
    run = probe(images, tmp_path, *args)
    assert run.proc.returncode == 1
    unit = run.row("installed", "unit")
    assert (unit["status"], unit["reason"]) == ("fail", "inactive, not enabled: the package neither enabled nor "
                                                         "started it"), unit
    assert run.row("installed", "network")["status"] == "fail"
    started = probe(images, tmp_path, *args, "--start-units", "--reboot")
    assert started.proc.returncode == 0, started.proc.stdout + started.proc.stderr
    assert {r["status"] for r in started.rows} == {"pass"}
    assert started.row("rebooted", "unit")["output"] == "active, enabled"


def test_a_package_dpkg_forgets_at_remove_is_purged(images, tmp_path):
    """No conffiles and no postrm: dpkg forgets the package when it is removed, and apt no longer knows the
    name; its purge is then done, not an error."""
    deb = rig.build_deb(tmp_path, "postroj-plain", "a file and nothing else",
                        {"usr/share/postroj-plain/README": ("plain\n", 0o644)})
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--purge")
    assert run.proc.returncode == 0, run.outline()
    assert {r["status"] for r in run.rows} == {"pass"}, [(r["stage"], r["kind"], r["reason"]) for r in run.rows]


@pytest.mark.parametrize("options", [("--fresh",), ()], ids=["fresh", "layer"])
def test_purge_takes_the_dependencies_of_a_package_remove_took_whole(images, tmp_path, options):
    """jq from bookworm's mirror has neither conffiles nor a postrm: dpkg forgets it at remove. Its purge must
    still take libjq1 and libonig5, installed only for it (`apt purge --autoremove jq` does), as without a
    layer so with one: nothing of them is left behind."""
    apt = rig.PrivateApt(tmp_path / "apt", rig.DEBIAN_SOURCES["bookworm"])
    deb = apt.download("jq", tmp_path / "debs")
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--package", str(deb), "--purge", *options)
    assert ("from layer" in run.row("installed", "package")["output"]) == (options == ()), run.rows
    files = run.row("purged", "leftover", "files")
    assert (files["status"], files["output"]) == ("pass", ""), files
    assert run.proc.returncode == 0, run.outline()


# ==============================================================================
# --upgrade-from archive
# ==============================================================================


def test_upgrade_from_archive_without_the_package_in_the_sources_fails_before_the_boot(images, tmp_path):
    new = demo(tmp_path / "new", version="2.0")
    t0 = time.monotonic()
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--upgrade-from", "archive", "--package", str(new),
                "--reboot", "--purge", "--check-unit", "postroj-demo", options=("-vv",))
    took = time.monotonic() - t0
    assert run.proc.returncode == 1
    failed = [r for r in run.rows if r["status"] == "fail"]
    assert failed and all(r["kind"] == "package" and r["stage"] == "installed" for r in failed), run.rows
    for row in failed:  # the first stage's step fails, with the package manager's own words
        assert "the package sources of debian-bookworm do not carry postroj-demo" in row["reason"], row
        assert "--upgrade-from OLD.deb" in row["reason"], row
        assert "postroj-demo" in row["output"], row
    skipped = [r for r in run.rows if r["status"] != "fail"]
    assert skipped and {r["status"] for r in skipped} == {"skip"}, run.rows
    assert {r["reason"] for r in skipped} == {"not run: --upgrade-from archive"}, run.rows
    assert {r["stage"] for r in run.rows} == {"installed", "upgraded", "rebooted", "removed", "purged"}
    # -vv logs every command: nspawn ran without --boot only (the package's name, the downloads)
    assert "systemd-nspawn" in run.proc.stderr and " --boot" not in run.proc.stderr, run.proc.stderr[-3000:]
    assert took < 30, "took %.1f s" % took


def test_upgrade_from_archive_installs_what_the_image_sources_carry(images, tmp_path):
    """hello from bookworm's sources first, then a hello of the suite's own with a higher version."""
    ours = rig.build_deb(tmp_path, "hello", "postroj's hello, newer than Debian's",
                         {"usr/share/doc/hello/postroj": ("ours\n", 0o644)}, version="100.0")
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--upgrade-from", "archive", "--package", str(ours),
                "--purge", "--command", version_of("hello"))
    assert run.proc.returncode == 0, run.outline()
    assert [(stage, check) for stage, check, _ in run.outline()[:4]] == [
        ("installed", "package archive"), ("installed", "command " + version_of("hello")),
        ("upgraded", "package " + ours.name), ("upgraded", "command " + version_of("hello"))]
    released = run.row("installed", "command")["output"]
    assert released.startswith("2.") and run.row("upgraded", "command")["output"] == "100.0", run.rows
    assert "Unpacking hello (100.0) over (%s)" % released in run.row("upgraded", "package")["output"]


def test_upgrade_from_archive_takes_the_dependencies_of_the_first_install_from_a_layer(images, tmp_path):
    """jq from bookworm's sources first (with libjq1 and libonig5, which the image lacks: they make the layer),
    then a jq of the suite's own."""
    ours = rig.build_deb(tmp_path, "jq", "postroj's jq, newer than Debian's",
                         {"usr/share/doc/jq/postroj": ("ours\n", 0o644)}, version="100.0")
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--upgrade-from", "archive", "--package", str(ours),
                "--command", version_of("jq"))
    assert run.proc.returncode == 0, run.outline()
    first = run.row("installed", "package")["output"]
    assert re.match(r"\d+ dependencies from layer [0-9a-f]{12} ", first), first
    assert run.row("installed", "command")["output"].startswith("1.") and \
        run.row("upgraded", "command")["output"] == "100.0", run.rows


# ==============================================================================
# Real packages: nginx from its release's version to the current one
# ==============================================================================


def release_and_current(apt: rig.PrivateApt, packages: "list[str]", release: str,
                        dest: Path) -> "tuple[list[Path], list[Path]]":
    """`packages` as the release's own suite has them and as they are now (its -updates or -security), downloaded
    with apt-get download on the host."""
    old, new = [], []
    for package in packages:
        released = [version for version, suite in apt.versions(package) if suite == release]
        assert released, "%s's own suite has no %s: %s" % (release, package, apt.versions(package))
        old.append(apt.download(package, dest / "old", released[0]))
        new.append(apt.download(package, dest / "new"))
        assert old[-1].name != new[-1].name, "no %s newer than %s's: the archive has no update to test" % (
            package, release)
    return old, new


@pytest.fixture(scope="module")
def noble_nginx(real, tmp_path_factory) -> "tuple[list[Path], list[Path]]":
    root = tmp_path_factory.mktemp("nginx-noble")
    apt = rig.PrivateApt(root / "apt", rig.UBUNTU_SOURCES["noble"], [rig.ubuntu_keyring(real.cache)])
    return release_and_current(apt, ["nginx-common", "nginx"], "noble", root)


NGINX = ("nginx", "--check-unit", "nginx", "--check-network", "http://localhost:80", "--expect-body", "Welcome to nginx")


def service_life(runner, tmp_path: Path, image: str, old: "list[Path]", new: "list[Path]",
                 checks: "tuple[str, ...]" = NGINX) -> Run:
    """A service package's whole life on `image`, from the release's version to the current one: every stage
    passes, nothing is left behind. `checks`: the package whose version is checked, then the options."""
    args = ["--image", image]
    for path in old:
        args += ["--upgrade-from", str(path)]
    for path in new:
        args += ["--package", str(path)]
    run = probe(runner, tmp_path, *args, "--reboot", "--purge", *checks[1:], "--command", version_of(checks[0]))
    failed = ["%s: %s: %s\n%s" % (r["stage"], check_name(r), r["reason"], r["output"][-1500:])
              for r in run.rows if r["status"] != "pass"]
    assert not failed, "\n".join(failed)
    assert run.proc.returncode == 0
    assert [stage for stage, check, _ in run.outline(image) if check == "leftover files"] == ["purged"]
    old_version, new_version = (p.name.split("_")[1] for p in (old[-1], new[-1]))
    assert [run.row(stage, "command", image=image)["output"] for stage in ("installed", "upgraded", "rebooted")] == \
        [old_version, new_version, new_version]
    return run


def test_nginx_of_bookworm_by_name_from_its_release_to_its_security_update(images, tmp_path):
    """--install nginx --upgrade-from archive (issue 39): nginx and nginx-common at bookworm's own version, then
    at the image's sources' newest, each named with its version, the service checked in every stage."""
    apt = rig.PrivateApt(tmp_path / "apt", rig.DEBIAN_SOURCES["bookworm"])
    released = [v for v, suite in apt.versions("nginx") if suite == "bookworm"][0]
    newest = apt.versions("nginx")[0][0]
    assert released != newest and "+deb12u" in newest, (released, newest)
    run = probe(images, tmp_path, "--image", "debian-bookworm", "--install", "nginx", "--upgrade-from", "archive",
                "--reboot", "--purge", *NGINX[1:], "--command", version_of("nginx"), "--command",
                version_of("nginx-common"))
    failed = ["%s: %s: %s" % (r["stage"], check_name(r), r["reason"]) for r in run.rows if r["status"] != "pass"]
    assert not failed and run.proc.returncode == 0, "\n".join(failed)
    commands = [r for r in run.rows if r["kind"] == "command"]
    assert [r["output"] for r in commands if r["stage"] == "installed"] == [released, released]
    assert [r["output"] for r in commands if r["stage"] == "upgraded"] == [newest, newest]
    assert "installed: package nginx %s " % released in run.proc.stdout
    assert "upgraded: package nginx %s " % newest in run.proc.stdout
    assert run.row("upgraded", "package")["target"] == "nginx"


def test_nginx_by_name_on_bookworm_trixie_and_noble_in_one_run(real, tmp_path):
    """--install nginx on three releases at once (issue 39): each image resolves the name by its own sources and
    the result names the version it got; the service runs and answers on each."""
    images = ("debian-bookworm", "debian-trixie", "ubuntu-noble")
    run = probe(real, tmp_path, *[a for image in images for a in ("--image", image)], "--jobs", "2", "--install",
                *NGINX, "--command", version_of("nginx"))
    failed = ["%s: %s: %s" % (r["image"], check_name(r), r["reason"]) for r in run.rows if r["status"] != "pass"]
    assert not failed and run.proc.returncode == 0, "\n".join(failed)
    versions = {image: run.row("installed", "command", image=image)["output"].strip() for image in images}
    assert len(set(versions.values())) == 3, versions  # three releases, three versions of nginx
    for image, version in versions.items():
        assert run.row("installed", "package", image=image)["name"] == "installed: package nginx %s" % version


def test_nginx_of_noble_from_its_release_to_its_update(real, noble_nginx, tmp_path):
    old, new = noble_nginx
    service_life(real, tmp_path, "ubuntu-noble", old, new)


@pytest.fixture(scope="module")
def noble_memcached(real, tmp_path_factory) -> "tuple[list[Path], list[Path]]":
    root = tmp_path_factory.mktemp("memcached-noble")
    apt = rig.PrivateApt(root / "apt", rig.UBUNTU_SOURCES["noble"], [rig.ubuntu_keyring(real.cache)])
    return release_and_current(apt, ["memcached"], "noble", root)


def test_memcached_of_noble_from_its_release_to_its_update(real, noble_memcached, tmp_path):
    """A second real service package on Ubuntu: memcached, its unit and its port, upgraded from noble's own
    version to its update, rebooted and purged. Its install pulls in perl and netbase, which `purge
    --autoremove` alone left installed (87 paths); the purge takes what the installs pulled in, as piuparts
    does, and nothing is left."""
    old, new = noble_memcached
    service_life(real, tmp_path, "ubuntu-noble", old, new,
                 ("memcached", "--check-unit", "memcached", "--check-network", "tcp://localhost:11211"))


# ==============================================================================
# Release upgrades (issue 36)
# ==============================================================================


CODENAME = ". /etc/os-release; echo $VERSION_CODENAME"
# an administrator's change to nginx's configuration, made once (the command runs after every stage)
ADMIN_CHANGE = "grep -q '# changed here' /etc/nginx/nginx.conf || echo '# changed here' >> /etc/nginx/nginx.conf"


def release_outline(run: Run, image: str) -> "list[tuple[str, str, str]]":
    """(stage, check, status) of each result, a release-upgraded stage named with its release."""
    return [(r["stage"] + (" to " + r["release"] if r["release"] else ""), check_name(r), r["status"])
            for r in run.rows if r["image"] == image]


def test_a_service_and_nginx_through_the_release_upgrade_from_bookworm_to_trixie(real, tmp_path):
    """The suite's own service package and nginx from bookworm's archive (by name), installed on bookworm, then
    the system upgraded to trixie as its release notes say and rebooted into it: both units active and both
    ports answering in trixie, nginx upgraded to trixie's by the upgrade itself, and after the purge nothing
    left against the same upgrade without the packages."""
    package = demo(tmp_path / "demo")
    run = probe(real, tmp_path, "--image", "debian-bookworm", "--package", str(package), "--install", "nginx",
                "--check-unit", "postroj-demo", "--check-unit", "nginx", "--check-network", "http://localhost:8080",
                "--check-network", "http://localhost:80", "--command", CODENAME, "--command", version_of("nginx"),
                "--command", ADMIN_CHANGE, "--release-upgrade", "debian-trixie", "--reboot", "--purge", timeout=1800)
    failed = ["%s: %s: %s\n%s" % (r["stage"], check_name(r), r["reason"], r["output"][-1500:])
              for r in run.rows if r["status"] != "pass"]
    assert not failed and run.proc.returncode == 0, "\n".join(failed)
    stages = list(dict.fromkeys(stage for stage, _, _ in release_outline(run, "debian-bookworm")))
    assert stages == ["installed", "release-upgraded to debian-trixie", "rebooted", "removed", "purged"]
    release = run.row("release-upgraded", "release", "debian-trixie")
    assert "rebooted into Debian GNU/Linux 13 (trixie)" in release["output"], release["output"][:2000]
    assert release["name"] == "release-upgraded to debian-trixie: release debian-trixie"
    # the administrator's change to a configuration file trixie's nginx changes too: kept, and what dpkg would
    # have asked is said
    assert release["warning"] == "kept changed configuration files dpkg would have asked about: " \
        "/etc/nginx/nginx.conf", release
    codenames = [run.row(s, "command", CODENAME)["output"].strip() for s in ("installed", "release-upgraded",
                                                                              "rebooted")]
    assert codenames == ["bookworm", "trixie", "trixie"]
    nginx = [run.row(s, "command", version_of("nginx"))["output"].strip() for s in ("installed", "release-upgraded")]
    assert nginx[0].startswith("1.22.") and not nginx[1].startswith("1.22."), nginx  # trixie's nginx now
    # the stages after the upgrade name the version it installed, which they remove and purge
    for stage in ("removed", "purged"):
        assert run.row(stage, "package", "nginx")["name"] == "%s: package nginx %s" % (stage, nginx[1]), run.rows
    for unit in ("postroj-demo", "nginx"):
        assert run.row("release-upgraded", "unit", unit)["output"] == "active, enabled"
    assert ("debian-bookworm", "release-upgraded to debian-trixie: unit nginx") in run.cases


def test_a_postinst_that_fails_on_the_new_release_fails_at_the_release_upgrade_only(real, tmp_path):
    """The package's 1.1, built for trixie (--package debian-trixie=FILE), has a postinst that assumes bookworm:
    1.0 installs and runs on bookworm, the release upgrade itself passes, and the install of 1.1 after it
    fails with the script's own words; what comes after is skipped."""
    old = demo(tmp_path / "old")
    assumes = rig.UNIT_POSTINST.format(unit=UNIT) + (
        'grep -q "^VERSION_CODENAME=bookworm" /etc/os-release || { echo "postroj-demo: written for bookworm" >&2; '
        'exit 1; }\n')
    new = demo(tmp_path / "new", version="1.1", postinst=assumes)
    run = probe(real, tmp_path, "--image", "debian-bookworm", "--package", str(old), "--package",
                "debian-trixie=%s" % new, "--check-unit", "postroj-demo", "--release-upgrade", "debian-trixie",
                "--reboot", timeout=1800)
    assert run.proc.returncode == 1, run.proc.stdout + run.proc.stderr
    assert release_outline(run, "debian-bookworm") == [
        ("installed", "package " + old.name, "pass"), ("installed", "unit postroj-demo", "pass"),
        ("release-upgraded to debian-trixie", "release debian-trixie", "pass"),
        ("release-upgraded to debian-trixie", "package " + new.name, "fail"),
        ("release-upgraded to debian-trixie", "unit postroj-demo", "skip"),
        ("rebooted", "reboot the container", "skip"), ("rebooted", "unit postroj-demo", "skip")]
    failed = run.row("release-upgraded", "package", new.name)
    assert "postroj-demo: written for bookworm" in failed["output"], failed["output"]
    assert failed["name"] == "release-upgraded to debian-trixie: package postroj-demo 1.1"


def test_a_service_through_the_release_upgrade_from_noble_to_resolute(real, tmp_path):
    """Ubuntu's LTS to its next LTS, through the same apt path (do-release-upgrade needs Canonical's servers)."""
    package = demo(tmp_path / "demo")
    run = probe(real, tmp_path, "--image", "ubuntu-noble", "--package", str(package), "--check-unit",
                "postroj-demo", "--check-network", "http://localhost:8080", "--command", CODENAME,
                "--release-upgrade", "ubuntu-resolute", timeout=1800, terminal=True)
    failed = ["%s: %s: %s\n%s" % (r["stage"], check_name(r), r["reason"], r["output"][-1500:])
              for r in run.rows if r["status"] != "pass"]
    assert not failed and run.proc.returncode == 0, "\n".join(failed)
    assert [run.row(s, "command", CODENAME, "ubuntu-noble")["output"].strip()
            for s in ("installed", "release-upgraded")] == ["noble", "resolute"]
    # the live status counts the packages upgraded of the total as apt goes, up to all of them
    progress = [tuple(map(int, m)) for m in re.findall(r"upgrading to ubuntu-resolute: (\d+) of (\d+) packages",
                                                       "\n".join(d for _, d, _ in rig.STATUS_LINE.findall(
                                                           run.proc.stdout)))]
    assert len({done for done, _ in progress}) >= 3, progress
    assert progress == sorted(progress) and len({total for _, total in progress}) == 1, progress
    assert 0 < progress[-1][0] <= progress[-1][1] and progress[-1][1] > 50, progress
    assert run.row("release-upgraded", "unit", "postroj-demo", "ubuntu-noble")["output"] == "active, enabled"
    assert "rebooted into Ubuntu" in run.row("release-upgraded", "release", "ubuntu-resolute", "ubuntu-noble")["output"]


@pytest.mark.parametrize("image,targets,said", [
    ("debian-bookworm", ["debian-forky"], "it skips a release"),
    ("ubuntu-noble", ["debian-trixie"], "another distribution"),
    ("debian-trixie", ["debian-bookworm"], "not a later release"),
    ("debian-bookworm", ["debian-trixie", "debian-sid"], "debian-trixie has no later release|it skips a release"),
], ids=["skip", "other", "downgrade", "chain"])
def test_an_unsupported_release_upgrade_is_refused_before_anything_boots(postroj, tmp_path, image, targets, said):
    args = [a for t in targets for a in ("--release-upgrade", t)]
    proc = postroj("probe", "--image", image, "--command", "true", *args, check=None)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(said, proc.stderr) and "\nhint: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (postroj.home / "images").exists() and not rig.nspawn_of(postroj.home)

