"""The host boundary in probes (issue 33, items 6 to 11): what a package under test leaves in its container is
data, and one image's disaster is that image's FAIL. Real packages the suite builds with dpkg-deb whose
postinst plants device nodes, a FIFO and a socket where the image had files, a 1,200-level tree, or fills the
disk; `--copy` sources that are not files; a testbed that opens 1,500 idle connections to the package proxy.
Each call has a time-out and the hostile probe a memory bound, so that a postroj that blocks or reads a
device for ever fails here instead of hanging the suite or eating the host's memory."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import postroj
import rig
from rig import Postroj
from test_host_safety_testbed import Session

# The address space a hostile probe's postroj gets (prlimit --as, inherited by what it runs): a postroj
# that reads a /dev/zero planted in its container fails with MemoryError instead of taking the host's memory.
PROBE_ADDRESS_SPACE = 3 << 30


# ==============================================================================
# Helpers
# ==============================================================================


def bounded(runner: Postroj, *args: str, timeout: float, address_space: int = 0) -> subprocess.CompletedProcess:
    """`postroj ARGS` that must end within `timeout` s. One that does not is stopped as Ctrl-C would stop it
    (killed if that does not end it), `gc` removes what it left, and the test fails saying it hung."""
    prefix = ["prlimit", "--as=%d" % address_space, "--"] if address_space else []
    proc = subprocess.Popen(prefix + runner.argv(*args), env=runner.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        runner("gc", timeout=300)
        raise AssertionError("postroj %s did not end within %d s:\n%s" % (" ".join(args), timeout, err[-3000:]))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def report_rows(path: Path, proc: subprocess.CompletedProcess) -> "list[dict]":
    """The results of the --json report at `path`, which must have been written."""
    assert path.is_file(), "no JSON report (exit %d):\n%s" % (proc.returncode, proc.stderr[-4000:])
    return json.loads(path.read_text())["results"]


def row(rows: "list[dict]", stage: str, kind: str, target: str = "", image: str = "debian-bookworm") -> dict:
    """The one result of `kind` (and `target`) at `stage` for `image`."""
    found = [r for r in rows if (r["image"], r["stage"], r["kind"]) == (image, stage, kind) and
             (not target or target == r["target"])]
    assert len(found) == 1, "%d results %s: %s %s of %s in %s" % (len(found), stage, kind, target, image, rows)
    return found[0]


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, proc.stderr[-4000:]


def run_dir_empty(home: Path) -> None:
    run = home / "run"
    assert not run.exists() or sorted(p.name for p in run.iterdir()) == [], \
        "runtime state left behind: %s" % sorted(p.name for p in run.iterdir())


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@contextlib.contextmanager
def home_on_tmpfs(runner: Postroj, directory: Path, size: str):
    """A POSTROJ_HOME on a tmpfs of `size` at `directory` in which `runner`'s images are activated (the
    images themselves stay where they are): a postroj that writes without bound fills it, not the host's
    disk. Unmounted afterwards whatever happened, once nothing of it runs any more."""
    directory.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "postroj-test", str(directory)],
                   check=True)
    try:
        (directory / "images").mkdir()
        for link in (runner.home / "images").iterdir():
            if not link.name.startswith("."):
                os.symlink(os.path.realpath(link), directory / "images" / link.name)
        yield Postroj(runner.pyz, directory, runner.cache, dict(runner.extra_env))
    finally:
        with contextlib.suppress(AssertionError):
            rig.wait_for(lambda: not rig.nspawn_of(directory), timeout=60, what="the containers' end")
        unmount(directory)


# ==============================================================================
# Items 6 and 7: device nodes, a FIFO and a socket where the image had files
# ==============================================================================

# Image files nobody reads in a booted container (PAM modules that no service of it is configured with);
# opasswd and environment are empty in the image, so that /dev/null in their place reads as the same bytes.
PLANTED = {
    # c 1 5: /dev/zero, never-ending
    "/etc/security/opasswd": "changed from the image: a device where the image has a file",
    # c 1 3: /dev/null, reads as the empty file it replaced (issue 34, item 5)
    "/etc/environment": "changed from the image: a device where the image has a file",
    "/etc/postroj-hostile-zero": "device node left behind",  # c 1 5 at a path the image does not have
    # nobody writes to it: an open() for reading never returns
    "/etc/security/time.conf": "changed from the image: a fifo where the image has a file",
    "/etc/security/group.conf": "changed from the image: a socket where the image has a file",
}
PLANTING_POSTINST = """if [ "$1" = configure ]; then
  rm -f /etc/security/opasswd /etc/environment /etc/security/time.conf /etc/security/group.conf
  mknod /etc/security/opasswd c 1 5
  mknod /etc/environment c 1 3
  mknod /etc/postroj-hostile-zero c 1 5
  mkfifo /etc/security/time.conf
  perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 1) or die "socket: $!\\n"' \\
    /etc/security/group.conf
fi
"""


def test_devices_a_fifo_and_a_socket_in_place_of_image_files_are_leftovers_with_their_kind(images, tmp_path):
    """Items 6 and 7: purge's comparison reports each planted node by its kind, opens none of them on the host
    (no endless read of /dev/zero, no open() of the FIFO that blocks for ever), and the run ends in time."""
    deb = rig.build_deb(tmp_path, "postroj-hostile", "plants device nodes, a FIFO and a socket",
                        {"usr/share/doc/postroj-hostile/README": ("plants nodes\n", 0o644)},
                        postinst=PLANTING_POSTINST, postrm="true\n")
    report = tmp_path / "hostile.json"
    # about 10 s when nothing blocks: a postroj blocked in the FIFO's open() is stopped after 120 s
    proc = bounded(images, "probe", "--image", "debian-bookworm", "--package", str(deb), "--purge",
                   "--json", str(report), timeout=120, address_space=PROBE_ADDRESS_SPACE)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = report_rows(report, proc)
    failed = [(r["stage"], r["kind"], r["target"]) for r in rows if r["status"] != "pass"]
    assert failed == [("purged", "leftover", "files")], rows
    files = row(rows, "purged", "leftover", "files")
    listed = files["output"].splitlines()
    for path, kind in PLANTED.items():
        assert "%s: %s" % (path, kind) in listed, "%s is not reported as a %s:\n%s" % (path, kind, files["output"])
    assert files["reason"].startswith("purged: %d " % len(PLANTED)), files
    run_dir_empty(images.home)


# ==============================================================================
# Item 8: a 1,200-level tree from a postinst
# ==============================================================================

DEEP_LEVELS = 1200
DEEP_POSTINST = """if [ "$1" = configure ]; then
  mkdir -p /var/lib/postroj-deep
  cd /var/lib/postroj-deep
  mkdir -p "$(seq -s / %d | sed 's/[0-9][0-9]*/d/g')"
  touch "$(seq -s / %d | sed 's/[0-9][0-9]*/d/g')/bottom"
fi
""" % (DEEP_LEVELS, DEEP_LEVELS)


def test_a_1200_level_tree_from_a_postinst_is_a_leftover_and_the_next_runs_work(images, tmp_path):
    """Item 8: the tree is walked without a recursion limit: results and JSON are written, purge names the
    tree's top once, the container's files are removed, and `gc` and another probe of the image work."""
    deb = rig.build_deb(tmp_path, "postroj-deep", "makes a 1,200-level directory tree",
                        {"usr/share/doc/postroj-deep/README": ("deep\n", 0o644)},
                        postinst=DEEP_POSTINST, postrm="true\n")
    report = tmp_path / "deep.json"
    started = time.monotonic()
    proc = bounded(images, "probe", "--image", "debian-bookworm", "--package", str(deb), "--purge",
                   "--command", "test -f /var/lib/postroj-deep/%s/bottom" % "/".join(["d"] * DEEP_LEVELS),
                   "--json", str(report), timeout=300)
    took = time.monotonic() - started
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = report_rows(report, proc)
    assert row(rows, "installed", "command")["status"] == "pass", rows  # the tree was there, 1,200 deep
    failed = [(r["stage"], r["kind"], r["target"]) for r in rows if r["status"] != "pass"]
    assert failed == [("purged", "leftover", "files")], rows
    files = row(rows, "purged", "leftover", "files")
    listed = files["output"].splitlines()
    assert listed[0] == "/var/lib/postroj-deep: directory left behind, holding 1 entry", listed[:3]
    assert listed[1] == "/var/lib/postroj-deep/d: directory left behind, holding 1 entry", listed[:3]
    # every path of the tree is named (its last, the file at the bottom, too), the output bounded
    assert files["reason"] == "purged: %d paths differ from the container before the install" % (DEEP_LEVELS + 2)
    assert listed[-1] == "... and %d more" % (DEEP_LEVELS + 2 - 100), listed[-1]
    # the same probe without the tree takes about 10 s: reading a guest's tree costs what its size does, not
    # its depth's square or cube
    assert took < 60, "the probe of a package that left a %d-level tree took %.0f s" % (DEEP_LEVELS, took)
    run_dir_empty(images.home)

    gc = bounded(images, "gc", timeout=120)
    no_traceback(gc)
    assert gc.returncode == 0, gc.stderr[-4000:]
    again = tmp_path / "again.json"
    proc = bounded(images, "probe", "--image", "debian-bookworm", "--command", "test ! -e /var/lib/postroj-deep",
                   "--json", str(again), timeout=240)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["status"] for r in report_rows(again, proc)] == ["pass"]
    run_dir_empty(images.home)


# ==============================================================================
# Item 9: a package that fills the disk
# ==============================================================================

# A runaway service (a logger gone wild): started by the postinst as debhelper's scripts start units, it
# writes until the container's file system is full, on bookworm (Debian 12) only, so that bullseye's run of
# the same package shows the matrix goes on. It waits for dpkg to finish: the install itself succeeds, and
# the disk is full for what comes after it (the checks, the reboot).
FILLER = """#!/bin/sh
grep -q '^12' /etc/debian_version || exit 0
sleep 2
mkdir -p /var/lib/postroj-filler
dd if=/dev/zero of=/var/lib/postroj-filler/zeros bs=1M 2>/dev/null
dd if=/dev/zero of=/var/lib/postroj-filler/tail bs=4k 2>/dev/null
exit 0
"""
FILLER_UNIT = """[Unit]
Description=writes until the disk is full

[Service]
ExecStart=/usr/lib/postroj-filler/fill

[Install]
WantedBy=multi-user.target
"""
# a check that waits until the service has filled bookworm's file system (and passes at once on bullseye)
UNTIL_FULL = ("grep -q '^11' /etc/debian_version || "
              "timeout 60 sh -c 'until [ \"$(stat -f -c %a /)\" = 0 ]; do sleep 0.2; done'")


def test_a_package_that_fills_the_disk_fails_its_image_and_the_matrix_goes_on(images, tmp_path):
    """Item 9: POSTROJ_HOME (where the containers' overlays are) on a 96 MiB tmpfs that the package's service
    fills on bookworm, before the reboot: bookworm's results FAIL with a reason naming "No space left on
    device", bullseye's, probed after it, all pass, the report (outside the full file system) is written, and
    nothing of the run is left on it."""
    deb = rig.build_deb(tmp_path, "postroj-filler", "a service that fills the disk on Debian 12", {
        "usr/lib/postroj-filler/fill": (FILLER, 0o755),
        "lib/systemd/system/postroj-filler.service": (FILLER_UNIT, 0o644)},
        postinst=rig.UNIT_POSTINST.format(unit="postroj-filler.service"))
    report = tmp_path / "full.json"
    with home_on_tmpfs(images, tmp_path / "small-home", "96m") as small:
        proc = bounded(small, "probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--jobs", "1",
                       "--package", str(deb), "--command", UNTIL_FULL, "--reboot", "--json", str(report),
                       timeout=400)
        no_traceback(proc)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = report_rows(report, proc)
        bookworm = [(r["stage"], r["kind"], r["status"], r["reason"]) for r in rows
                    if r["image"] == "debian-bookworm"]
        bullseye = [(r["stage"], r["kind"], r["status"]) for r in rows if r["image"] == "debian-bullseye"]
        assert any(status == "fail" and "No space left on device" in reason for _, _, status, reason in bookworm), \
            bookworm
        assert bullseye == [("installed", "package", "pass"), ("installed", "command", "pass"),
                            ("rebooted", "reboot", "pass"), ("rebooted", "command", "pass")], bullseye
        run_dir_empty(small.home)


# ==============================================================================
# Item 10: --copy sources that are not files, or hold the state
# ==============================================================================


def copy_source(case: str, runner: Postroj, tmp_path: Path) -> str:
    """A --copy source of the kind `case` names, made here."""
    if case == "fifo":
        os.mkfifo(tmp_path / "fifo")
    elif case == "inside-cache":
        runner.cache.mkdir(parents=True, exist_ok=True)
        (runner.cache / "notes.txt").write_text("in the cache\n")
    elif case == "link-to-home":
        (tmp_path / "link-to-home").symlink_to(runner.home)
    return {
        "dev-zero": "/dev/zero",
        "fifo": str(tmp_path / "fifo"),
        "home": str(runner.home),
        "inside-home": str(runner.home / "images"),
        "containing-home-and-cache": str(tmp_path),
        "inside-cache": str(runner.cache / "notes.txt"),
        "link-to-home": str(tmp_path / "link-to-home"),
    }[case]


@pytest.mark.parametrize("case", ["dev-zero", "fifo", "home", "inside-home", "containing-home-and-cache",
                                  "inside-cache", "link-to-home"])
def test_copy_of_what_is_not_a_file_or_holds_the_state_is_refused_before_anything_boots(images, tmp_path, case):
    """Item 10: exit 2 with error: and hint:, nothing boots. POSTROJ_HOME is a 64 MiB tmpfs: a postroj that
    copied /dev/zero, or the state into itself, would fill that, not the host's disk."""
    with home_on_tmpfs(images, tmp_path / "small-home", "64m") as small:
        source = copy_source(case, small, tmp_path)
        proc = bounded(small, "probe", "--image", "debian-bookworm", "--copy", "%s:/var/tmp/copied" % source,
                       "--command", "true", timeout=120)
        no_traceback(proc)
        assert proc.returncode == 2, "exit %d\n%s%s" % (proc.returncode, proc.stdout[:1500], proc.stderr[-1500:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert errors and any(line.startswith("hint: ") for line in proc.stderr.splitlines()), proc.stderr
        assert source in errors[0] or os.path.realpath(source) in errors[0], errors
        assert not (small.home / "run").exists() or not list((small.home / "run").iterdir())
        assert not rig.nspawn_of(small.home)


# ==============================================================================
# Item 11: 1,500 idle connections to the package proxy
# ==============================================================================

PROXY_PORT = postroj.PACKAGE_PROXY_PORT  # as apt in the testbed is told
IDLE_CONNECTIONS = 1500
HOLD_CONNECTIONS = r"""ulimit -n 4096
i=0
while [ $i -lt %d ]; do
  exec {fd}<>/dev/tcp/127.0.0.1/%d || { echo "connection $i failed"; exit 1; }
  i=$((i + 1))
done
echo "holding $i"
exec sleep 300
""" % (IDLE_CONNECTIONS, PROXY_PORT)


class VirtSession(Session):
    """test_host_safety_testbed's Session, with the server's thread count."""

    def threads(self) -> int:
        """The server's threads now (the package proxy is in it)."""
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads: in /proc/%d/status" % self.proc.pid)


def test_1500_idle_connections_to_the_package_proxy_leave_apt_answered_and_threads_bounded(images):
    """Item 11: a testbed with a network of its own opens 1,500 connections to the package proxy and sends
    nothing on them; while they are open, apt-get update in the testbed is answered through the proxy, and the
    server runs fewer than 150 threads."""
    testbed = VirtSession(images, "debian-bookworm").open()
    holder = None
    try:
        holder = subprocess.Popen(testbed.prefix + ["bash", "-c", HOLD_CONNECTIONS], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        held = queue.Queue()  # type: queue.Queue[str]
        threading.Thread(target=lambda: held.put(holder.stdout.readline()), daemon=True).start()
        try:
            line = held.get(timeout=120)
        except queue.Empty:
            raise AssertionError("the testbed did not open %d connections within 120 s" % IDLE_CONNECTIONS)
        assert line.strip() == "holding %d" % IDLE_CONNECTIONS, line
        counts = [testbed.threads()]
        update = subprocess.run(testbed.prefix + [
            "timeout", "120", "apt-get", "-o", "Acquire::http::Timeout=30", "-o", "Acquire::Retries=0", "update"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
        counts.append(testbed.threads())
        problems = []
        if update.returncode != 0 or "Err:" in update.stdout:
            problems.append("apt-get update was not answered (exit %d):\n%s" % (update.returncode,
                                                                                 update.stdout[-2000:]))
        if max(counts) >= 150:
            problems.append("the server ran %s threads with %d idle connections" % (counts, IDLE_CONNECTIONS))
        assert not problems, "\n".join(problems)
        assert holder.poll() is None, "the idle connections ended early"
        holder.terminate()
        holder.wait(timeout=30)
        assert testbed.quit() == 0, "\n".join(testbed.errors)[-3000:]
    finally:
        if holder is not None and holder.poll() is None:
            holder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                holder.wait(timeout=30)
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        testbed.__exit__()
    rig.wait_for(lambda: not rig.nspawn_of(images.home), timeout=30, what="the testbed's end")
    run_dir_empty(images.home)
