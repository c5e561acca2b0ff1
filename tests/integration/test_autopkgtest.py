"""postroj as an autopkgtest virtualisation server (issue 13): Debian's real autopkgtest runs real source
packages' own tests in postroj containers, and beside it autopkgtest's unshare backend on the same root
file system; the protocol is also driven by hand for its errors."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.parse
from pathlib import Path

import pytest

import rig
from rig import wait_for

COMPARISON = "autopkgtest-comparison"  # a test property the run prints at its end (tests/conftest.py)


@pytest.fixture(autouse=True)
def needs_autopkgtest():
    if not shutil.which("autopkgtest"):
        pytest.skip("autopkgtest is not installed (make setup)")


@pytest.fixture
def virt(images, tmp_path):
    """`images` with a PATH on which autopkgtest finds postroj as autopkgtest-virt-postroj (a link)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    link = bindir / "autopkgtest-virt-postroj"
    link.symlink_to(images.pyz)  # run by its #! line, as a user's copy would be
    images.extra_env["PATH"] = "%s:%s" % (bindir, os.environ["PATH"])
    # autopkgtest keeps its output directory in TMPDIR: the test's own, not the host's /tmp (also when the
    # test kills it)
    images.extra_env["TMPDIR"] = str(tmp_path)
    return images


def autopkgtest(runner, source, *server: str, options=("--no-built-binaries", "-U"), timeout: float = 900):
    """Run Debian's autopkgtest on `source` with `server` (the words after --); its exit code and output."""
    argv = ["autopkgtest", *options, str(source), "--", *server]
    # autopkgtest keeps its output directory in TMPDIR: the test's own, not the host's /tmp
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(runner.env, TMPDIR=str(runner.home.parent)), timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def summary(output: str) -> "dict[str, str]":
    """Test name -> PASS, FAIL, SKIP... from the summary autopkgtest prints at its end."""
    found = {}
    for line in output.split("@@@@@@@@@@@@@@@@@@@@ summary", 1)[-1].splitlines():
        match = re.match(r"^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|BROKEN|NEUTRAL)\b", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def assert_all_pass(code: int, output: str, tests: "list[str]") -> None:
    assert code == 0, output[-6000:]
    assert summary(output) == {name: "PASS" for name in tests}, output[-6000:]


def assert_nothing_left(runner) -> None:
    wait_for(lambda: not rig.nspawn_of(runner.home), timeout=30, what="the testbed's end")
    run = runner.home / "run"
    assert not run.exists() or sorted(p.name for p in run.iterdir()) == []


# --- real source packages -----------------------------------------------------------


def test_hello_through_the_long_form(virt, record_property):
    started = time.monotonic()
    code, output = autopkgtest(virt, rig.source_package("hello"), sys.executable, str(virt.pyz),
                               "autopkgtest-virt", "debian-bookworm")
    assert_all_pass(code, output, ["command1", "upstream-tests"])
    assert "Testing greeting-1" in output, "upstream-tests runs hello's own test suite from the source tree"
    record_property(COMPARISON, ("hello", "postroj", 2, 0, time.monotonic() - started))
    assert_nothing_left(virt)


def test_a_test_by_source_package_name_as_debci_runs_it(virt):
    """`autopkgtest -B -U hello -- postroj IMAGE`: autopkgtest runs `apt-get source hello` in the testbed, which
    needs the image's deb-src entries (postroj adds them to every apt image it provisions), and the archive's
    binaries are tested, as on Debian's CI."""
    code, output = autopkgtest(virt, "hello", "postroj", "debian-bookworm")
    assert "You must put some 'deb-src' URIs" not in output
    assert_all_pass(code, output, ["command1", "upstream-tests"])
    assert "Testing greeting-1" in output
    assert_nothing_left(virt)


LOCAL_TESTS = """\
Tests: uses-the-local-build
Depends: postroj-local-build
Restrictions: needs-root
"""

LOCAL_SCRIPTS = {"uses-the-local-build": """\
    #!/bin/sh
    set -e
    postroj-local-build
"""}


@pytest.fixture
def local_archive(tmp_path):
    """A developer's repository of fresh builds on the host's loopback: a flat apt archive (apt-ftparchive)
    holding postroj-local-build, served by a real HTTP server; its URL."""
    if not shutil.which("apt-ftparchive"):
        pytest.skip("apt-ftparchive is not installed (make setup)")
    root = tmp_path / "local-archive"
    root.mkdir()
    rig.build_deb(root, "postroj-local-build", "a package only the local archive has", {
        "usr/bin/postroj-local-build": ("#!/bin/sh\necho 'the local build ran'\n", 0o755)})
    shutil.rmtree(root / "postroj-local-build")
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=root, capture_output=True, check=True)
    (root / "Packages").write_bytes(packages.stdout)
    server = rig.HTTPServer(root).start()
    try:
        yield server.url + "/"
    finally:
        server.stop()


def test_a_local_archive_on_the_hosts_loopback_is_reached_when_the_server_is_told(virt, tmp_path, local_archive):
    """autopkgtest's --add-apt-source names the local archive; the package proxy reaches it, on the host's
    loopback, only when the server is given it with --archive."""
    tree = make_test_package(tmp_path / "check", LOCAL_TESTS, LOCAL_SCRIPTS)
    source = "--add-apt-source=deb [trusted=yes] %s ./" % local_archive
    code, output = autopkgtest(virt, str(tree) + "/", "postroj", "debian-bookworm", "--archive", local_archive,
                               options=("--no-built-binaries", "-U", source))
    assert_all_pass(code, output, ["uses-the-local-build"])
    assert "the local build ran" in output
    assert_nothing_left(virt)
    # not told, the proxy refuses it (test_package_proxy.py: the archives a testbed's sources name), and apt
    # fails after autopkgtest's three tries 15 s apart: that run is left out of the suite's time


HAPROXY_TESTS = ["cli", "proxy-localhost", "proxy-ssl-termination", "proxy-ssl-pass-through"]


def test_a_ci_like_image_made_once_passes_haproxys_tests_as_debians_ci(virt):
    """`postroj image debian-bookworm --variant ci` runs autopkgtest's setup-testbed once, at acquisition, with
    the image's own sources kept (its -security suite among them) and ca-certificates: every revert starts from
    it. haproxy's TLS tests need /usr/local/share/ca-certificates, which ca-certificates makes."""
    made = virt("image", "debian-bookworm", "--variant", "ci", check=0, timeout=900)
    assert made.stdout.startswith("debian-bookworm-ci\t"), made.stdout + made.stderr
    listed = virt("container", "debian-bookworm-ci", "--", "sh", "-c",
                  "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' eatmydata dbus libpam-systemd dpkg-dev "
                  "ca-certificates; cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -c -- -security; "
                  "ls /var/lib/apt/lists | grep -c _Packages", check=0)
    lines = listed.stdout.splitlines()
    assert sorted(lines[:5]) == ["%s installed" % p for p in ("ca-certificates", "dbus", "dpkg-dev", "eatmydata",
                                                              "libpam-systemd")], listed.stdout
    assert int(lines[5]) >= 1 and int(lines[6]) >= 1, listed.stdout  # the security suite kept; lists made once
    source = rig.source_package("haproxy", "bookworm")  # the mirror here lacks the security archive's sources
    code, output = autopkgtest(virt, source, "postroj", "debian-bookworm-ci", options=("--no-built-binaries",))
    assert_all_pass(code, output, HAPROXY_TESTS)
    assert_nothing_left(virt)
    # in the plain image its TLS tests fail (`Cannot open /usr/local/share/ca-certificates/mycacert.crt`):
    # bench pair 11 runs both, and says so


SETUP_TESTBED = "/usr/share/autopkgtest/setup-commands/setup-testbed"


def test_a_testbed_like_debians_ci_through_autopkgtests_own_setup_testbed(virt):
    """autopkgtest's setup-testbed, which Debian's CI runs when it builds its testbeds, turns a postroj testbed
    into one like them (eatmydata, dbus, libpam-systemd for logind sessions, dpkg-dev): README, autopkgtest."""
    code, output = autopkgtest(virt, rig.source_package("hello"), "postroj", "debian-bookworm", options=(
        "--no-built-binaries", "-U", "--setup-commands=%s" % SETUP_TESTBED,
        "--setup-commands=dpkg-query -W -f '${Package} ${db:Status-Status}\\n' eatmydata dbus libpam-systemd dpkg-dev"))
    assert_all_pass(code, output, ["command1", "upstream-tests"])
    for package in ("eatmydata", "dbus", "libpam-systemd", "dpkg-dev"):
        assert re.search(r"^%s installed$" % package, output, re.M), output[-6000:]
    assert_nothing_left(virt)


def test_isolation_container_tests_run_here_and_are_skipped_by_unshare(virt, record_property):
    """memcached's tests need a container of their own (they start the daemon): postroj runs them,
    autopkgtest's unshare backend, on a tarball of the same root file system, cannot."""
    source = rig.source_package("memcached")
    started = time.monotonic()
    code, output = autopkgtest(virt, source, "postroj", "debian-bookworm")
    postroj_seconds = time.monotonic() - started
    assert_all_pass(code, output, ["daemon", "client.pl"])
    with tarfile.open(str(next(source.parent.glob("*.debian.tar.*")))) as debian:
        control = debian.extractfile("debian/tests/control").read().decode()
    assert "isolation-container" in control
    started = time.monotonic()
    code, output = autopkgtest(virt, source, "unshare", "-t", str(rig.rootfs_tarball("bookworm")))
    unshare_seconds = time.monotonic() - started
    assert code == 8, output[-4000:]  # autopkgtest: no test ran
    assert set(summary(output).values()) == {"SKIP"}, output[-4000:]
    assert 'requires testbed capability "isolation-container"' in output
    record_property(COMPARISON, ("memcached", "postroj", 2, 0, postroj_seconds))
    record_property(COMPARISON, ("memcached", "unshare", 0, 2, unshare_seconds))
    assert_nothing_left(virt)


def test_hello_gives_the_results_of_autopkgtests_own_unshare_backend(virt, record_property):
    """The reference: Debian's unshare backend on a tarball of the same root file system. postroj's results
    for the same source package must be the same, test by test."""
    source = rig.source_package("hello")
    started = time.monotonic()
    code, reference = autopkgtest(virt, source, "unshare", "-t", str(rig.rootfs_tarball("bookworm")))
    unshare_seconds = time.monotonic() - started
    assert code == 0, reference[-4000:]
    code, output = autopkgtest(virt, source, "postroj", "debian-bookworm")
    assert code == 0, output[-4000:]
    assert summary(output) == summary(reference) == {"command1": "PASS", "upstream-tests": "PASS"}
    record_property(COMPARISON, ("hello", "unshare", 2, 0, unshare_seconds))
    assert_nothing_left(virt)


# --- revert and reboot, with a test package of our own ---------------------------------

CONTROL = """\
Source: postroj-testbed-check
Maintainer: postroj <postroj@localhost>
Section: misc
Priority: optional
Standards-Version: 4.6.2

Package: postroj-testbed-check
Architecture: all
Description: checks of postroj as an autopkgtest testbed
 Reverts and reboots.
"""

CHANGELOG = """\
postroj-testbed-check (1.0) unstable; urgency=medium

  * Checks of postroj as an autopkgtest testbed.

 -- postroj <postroj@localhost>  Sun, 29 Nov 2026 00:00:00 +0000
"""

TESTS = """\
Tests: write-marker
Depends:
Restrictions: needs-root, breaks-testbed

Tests: marker-is-gone
Depends:
Restrictions: needs-root

Tests: reboot-keeps-files
Depends:
Restrictions: needs-root, needs-reboot, isolation-container

Tests: reboot-prepared
Depends:
Restrictions: needs-root, needs-reboot, isolation-container
"""

SCRIPTS = {
    "write-marker": """\
        #!/bin/sh
        set -e
        echo written > /etc/postroj-marker
        echo "marker written"
    """,
    "marker-is-gone": """\
        #!/bin/sh
        set -e
        test ! -e /etc/postroj-marker
        echo "the testbed was reverted"
    """,
    "reboot-keeps-files": """\
        #!/bin/sh
        set -e
        case "${AUTOPKGTEST_REBOOT_MARK:-}" in
          "")
            echo before > /var/lib/postroj-reboot-state
            touch /run/postroj-before-reboot
            # a unit whose stop leaves a mark: a reboot stops units, as a machine's does
            printf '[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\nExecStop=/bin/sh -c "echo stopped > /var/lib/postroj-stopped"\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/postroj-stops.service
            systemctl daemon-reload
            systemctl enable --now postroj-stops.service 2>/dev/null
            echo "the boot before the reboot" | systemd-cat -t postroj-check
            /tmp/autopkgtest-reboot after-reboot
            ;;
          after-reboot)
            test "$(cat /var/lib/postroj-reboot-state)" = before
            test ! -e /run/postroj-before-reboot
            echo "rebooted: /run is new, the overlay kept /var/lib"
            test "$(cat /var/lib/postroj-stopped)" = stopped
            echo "the unit was stopped by the reboot"
            test "$(journalctl --list-boots --no-pager | wc -l)" -ge 2
            journalctl --no-pager -b -1 -t postroj-check | grep -q "the boot before the reboot"
            echo "the journal holds the boot before"
            ;;
        esac
    """,
    "reboot-prepared": """\
        #!/bin/sh
        set -e
        case "${AUTOPKGTEST_REBOOT_MARK:-}" in
          "")
            echo before > /var/lib/postroj-prepared
            /tmp/autopkgtest-reboot-prepare prepared
            echo "prepared; the test reboots the testbed itself"
            # systemctl's call may lose its answer as the system goes down ("Call to Reboot failed:
            # Connection reset by peer", on stderr, which autopkgtest fails); a reboot that does not
            # happen fails below
            reboot 2>&1 || true
            sleep 60
            echo "the testbed did not reboot" >&2
            exit 1
            ;;
          prepared)
            test "$(cat /var/lib/postroj-prepared)" = before
            echo "rebooted by the test itself after reboot-prepare"
            ;;
        esac
    """,
    "sleeps": """\
        #!/bin/sh
        echo "sleeping"
        exec sleep %s
    """,
}


def make_test_package(directory: Path, tests: str = TESTS, scripts: "dict[str, str]" = SCRIPTS) -> Path:
    """An unbuilt source tree with debian/tests: autopkgtest takes a directory ending in /."""
    (directory / "debian" / "tests").mkdir(parents=True)
    (directory / "debian" / "source").mkdir()
    (directory / "debian" / "source" / "format").write_text("3.0 (native)\n")
    (directory / "debian" / "changelog").write_text(CHANGELOG)
    (directory / "debian" / "rules").write_text("#!/usr/bin/make -f\n%:\n\tdh $@\n")
    (directory / "debian" / "rules").chmod(0o755)
    (directory / "debian" / "control").write_text(CONTROL)
    (directory / "debian" / "tests" / "control").write_text(tests)
    for name, text in scripts.items():
        path = directory / "debian" / "tests" / name
        path.write_text(textwrap.dedent(text))
        path.chmod(0o755)
    return directory


def test_revert_between_tests_and_reboot(virt, tmp_path):
    tree = make_test_package(tmp_path / "check")
    code, output = autopkgtest(virt, str(tree) + "/", "postroj", "debian-bookworm")
    assert_all_pass(code, output, ["write-marker", "marker-is-gone", "reboot-keeps-files", "reboot-prepared"])
    assert "the testbed was reverted" in output
    assert "rebooted: /run is new, the overlay kept /var/lib" in output
    assert "the unit was stopped by the reboot" in output and "the journal holds the boot before" in output
    assert "rebooted by the test itself after reboot-prepare" in output
    assert_nothing_left(virt)


LISTENS = """\
Tests: listens
Depends: busybox
Restrictions: needs-root
"""

LISTENS_SCRIPT = """\
    #!/bin/sh
    set -e
    mkdir -p /srv/www
    hostname > /srv/www/index.html
    busybox httpd -p %d -h /srv/www
    busybox wget -q -O- http://localhost:%d/ | grep -qx "$(hostname)"
    echo "listening as $(hostname)"
    sleep 10
    busybox wget -q -O- http://localhost:%d/ | grep -qx "$(hostname)"
    echo "still its own server"
"""


def test_two_testbeds_serve_one_port_in_networks_of_their_own(virt, tmp_path):
    """Issue 26: a testbed has a network of its own; its test dependency (busybox, not in the image) comes from
    Debian's mirror through postroj's package proxy; two testbeds at once both listen on one port, each
    answered by its own server, and nothing listens on the host: the test holds the port on the host's loopback
    (a free one, chosen now: the host may be shared), so a testbed that shared the host's network could not
    serve it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    tree = make_test_package(tmp_path / "listens", LISTENS, {"listens": LISTENS_SCRIPT % (port, port, port)})
    runs = [subprocess.Popen(["autopkgtest", "--no-built-binaries", "-U", str(tree) + "/", "--", "postroj",
                              "debian-bookworm"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=dict(virt.env, PATH=virt.extra_env["PATH"]))
            for _ in range(2)]
    try:
        outputs = [run.communicate(timeout=900)[0].decode("utf-8", "replace") for run in runs]
    finally:
        holder.close()
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for run, output in zip(runs, outputs):
        assert_all_pass(run.returncode, output, ["listens"])
        assert "still its own server" in output
    assert {re.search(r"listening as (\S+)", o).group(1) for o in outputs} == {
        "postroj-debian-bookworm", "postroj-debian-bookworm-2"}
    assert_nothing_left(virt)


def test_with_host_network_a_testbeds_server_listens_on_the_host(virt, tmp_path):
    """--host-network keeps the behaviour before issue 26: the testbed shares the host's network."""
    port = rig.free_port()
    tree = make_test_package(tmp_path / "listens", LISTENS, {"listens": LISTENS_SCRIPT % (port, port, port)})
    run = subprocess.Popen(["autopkgtest", "--no-built-binaries", "-U", str(tree) + "/", "--", "postroj",
                            "debian-bookworm", "--host-network"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=dict(virt.env, PATH=virt.extra_env["PATH"]))
    try:
        answers = []
        while run.poll() is None:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    answers.append(connection.recv(4096))
            time.sleep(0.2)
        output = run.communicate(timeout=60)[0].decode("utf-8", "replace")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert_all_pass(run.returncode, output, ["listens"])
    assert any(b"postroj-debian-bookworm" in answer for answer in answers), answers[-3:]
    assert_nothing_left(virt)


SLEEPY = """\
Tests: sleeps
Depends:
Restrictions: needs-root
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_autopkgtest_mid_test_leaves_nothing(virt, tmp_path, signum):
    marker = "%d.%06d" % (300, os.getpid() % 1000000)
    tree = make_test_package(tmp_path / "sleepy", SLEEPY, {"sleeps": SCRIPTS["sleeps"] % marker})
    proc = subprocess.Popen(["autopkgtest", "--no-built-binaries", "-U", str(tree) + "/", "--", "postroj",
                             "debian-bookworm"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(virt.env, PATH=virt.extra_env["PATH"]))
    try:
        wait_for(lambda: proc.poll() is not None or rig.processes_mentioning("sleep " + marker), timeout=300,
                 what="the test's sleep")
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        proc.send_signal(signum)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # postroj sees its stdin close, closes the testbed and exits: nothing of it is left
    wait_for(lambda: not rig.processes_mentioning("sleep " + marker), timeout=60, what="the test's end")
    wait_for(lambda: not rig.processes_mentioning(str(tmp_path / "bin" / "autopkgtest-virt-postroj")), timeout=60,
             what="postroj's end")
    assert_nothing_left(virt)


# --- the protocol, by hand ---------------------------------------------------------


def serve(runner, commands: "list[str]", *args: str, timeout: float = 120):
    proc = subprocess.run(runner.argv("autopkgtest-virt", *args), input="".join(c + "\n" for c in commands),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runner.env,
                          timeout=timeout)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def test_a_session_by_hand(images, tmp_path):
    host_file = tmp_path / "script.sh"
    host_file.write_text("#!/bin/sh\necho copied\n")
    host_file.chmod(0o755)
    host_dir = tmp_path / "tree"
    (host_dir / "sub").mkdir(parents=True)
    (host_dir / "sub" / "data").write_text("tree content\n")
    back = tmp_path / "back"
    q = urllib.parse.quote
    code, lines, err = serve(images, [
        "capabilities", "open", "capabilities", "print-execute-command",
        "copydown %s %s" % (q(str(host_file)), q("/usr/local/bin/copied-script")),
        "copydown %s/ %s" % (q(str(host_dir)), q("/opt/tree/")),
        "copyup %s %s/" % (q("/opt/tree/"), q(str(back))),
        "copydown %s %s" % (q(str(host_file)), q("/var/tmp/autopkgtest/in-scratch.sh")),
        "revert", "close", "quit"], "debian-bookworm")
    assert code == 0, err
    assert lines[0] == "ok"
    assert "downtmp-host" not in lines[1]
    assert set(lines[1].split()[1:]) >= {"revert", "revert-full-system", "isolation-container", "root-on-testbed",
                                          "reboot"}
    assert lines[2] == "ok /var/tmp/autopkgtest"
    assert lines[3].startswith("ok ") and "downtmp-host" not in lines[3]  # never: README, Security
    assert lines[4].startswith("ok ") and "nsenter" in lines[4]
    assert lines[5:] == ["ok"] * 4 + ["ok /var/tmp/autopkgtest", "ok", "ok"], lines
    assert (back / "sub" / "data").read_text() == "tree content\n"
    assert_nothing_left(images)


def test_print_execute_command_keeps_streams_status_and_signals(images):
    """Drive a testbed while a second program runs commands through the argv it printed."""
    proc = subprocess.Popen(images.argv("autopkgtest-virt", "debian-bookworm"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=images.env)
    try:
        assert proc.stdout.readline().strip() == "ok"
        proc.stdin.write("open\nprint-execute-command\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("ok /var/tmp/autopkgtest")
        words = proc.stdout.readline().split()
        assert words[0] == "ok"
        prefix = [urllib.parse.unquote(arg) for arg in words[1].split(",")]

        def run(*argv, **kwargs):
            return subprocess.run(prefix + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                                  **kwargs)

        echoed = run("sh", "-c", "cat; echo err >&2; exit 7", input=b"from stdin\n")
        assert (echoed.returncode, echoed.stdout, echoed.stderr) == (7, b"from stdin\n", b"err\n")
        killed = run("sh", "-c", "kill -TERM $$")
        assert killed.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), killed
        assert run("sh", "-c", "test \"$HOME\" = /root && test \"$(id -u)\" = 0").returncode == 0
        proc.stdin.write("quit\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left(images)


@pytest.mark.parametrize("commands, message", [
    (["revert"], "`revert' when not open"),
    (["close"], "`close' when not open"),
    (["print-execute-command"], "`print-execute-command' when not open"),
    (["copydown /a /b"], "copydown when not open"),
    (["open", "open"], "`open' when already open"),
    (["open", "copydown /etc/hostname /tmp/x/"], "copydown paths must agree about directoryness"),
    (["open", "reboot sideways"], "unknown argument `sideways'"),
    (["frobnicate"], "unknown command `frobnicate'"),
    (["capabilities extra"], "too many arguments to command `capabilities'"),
    (["open", "copyup /etc/hostname"], "too few arguments to command `copyup'"),
    (["open"], "end of file - caller quit?"),
])
def test_commands_in_the_wrong_state_get_autopkgtests_error(images, commands, message):
    code, lines, err = serve(images, commands, "debian-bookworm")
    assert code == 12, (lines, err)
    assert "autopkgtest-virt-postroj: failure: %s" % message in err, err
    assert "Traceback" not in err
    assert_nothing_left(images)


def test_bad_images_and_options_are_refused_before_ok(images):
    code, lines, err = serve(images, ["open"], "debian-bokworm")  # a typo: a usage error
    assert (code, lines) == (2, []), err
    assert "unknown image 'debian-bokworm'; did you mean debian-bookworm" in err and "Traceback" not in err
    assert err.count("debian-bookworm,") <= 1, "did you mean names each image once"
    code, lines, err = serve(images, ["open"], "debian-trixie")  # a known image that is not acquired
    assert (code, lines) == (1, []), err
    assert "not acquired" in err and "postroj image debian-trixie" in err
    code, lines, err = serve(images, ["open"], "debian-bookworm", "--frobnicate")
    assert (code, lines) == (2, []), err
    code, lines, err = serve(images, ["open"], "debian-bookworm", "--boot-timeout", "0")
    assert (code, lines) == (2, []), err
