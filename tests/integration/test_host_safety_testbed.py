"""Nothing of the host is touched (issue 21): the autopkgtest testbed reaches the host only through postroj,
whatever links a hostile test plants in its scratch directory; copies are bounded and leave no half-written
target and no process; a real bootstrap interrupted by real signals leaves no process and no mount, and its
clean-up and `gc` never delete across a mount point; a killed run's cgroups are removed; a container killed
under a probe and SIGHUP are reported as what they are.

The host-only files live in the test's own tmp_path, which no container can see: a link planted in the
testbed that leads there can only be followed on the host side."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import rig
from rig import Postroj, nspawn_of, wait_for
from test_autopkgtest import assert_nothing_left, autopkgtest, make_test_package, virt  # noqa: F401 (a fixture)

SCRATCH = "/var/tmp/autopkgtest"  # the testbed's scratch directory, as `open` replies it
q = urllib.parse.quote


# ==============================================================================
# Helpers
# ==============================================================================


class HostFiles:
    """Host-only files below tmp_path/host: a secret (a file and a directory holding it), a victim file and a
    victim directory. `snapshot()` is everything about them a write could change."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "host"
        self.token = "postroj-host-secret-%s" % os.urandom(8).hex()
        self.secret_dir = self.root / "secret"
        self.secret = self.secret_dir / "secret.txt"
        self.victim = self.root / "victim.txt"
        self.victim_dir = self.root / "victim-dir"
        self.secret_dir.mkdir(parents=True)
        self.secret.write_text(self.token + "\n")
        self.victim.write_text("the host's own file\n")
        self.victim_dir.mkdir()
        (self.victim_dir / "keep.txt").write_text("the host's own directory\n")
        self.before = self.snapshot()

    def snapshot(self) -> "dict[str, tuple]":
        found = {}
        for directory, dirs, files in os.walk(str(self.root)):
            for name in dirs + files:
                path = os.path.join(directory, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    what = ("link", os.readlink(path))
                elif os.path.isdir(path):
                    what = ("dir", st.st_mode)
                else:
                    with open(path, "rb") as handle:
                        what = ("file", st.st_mode, st.st_mtime_ns, handle.read())
                found[os.path.relpath(path, str(self.root))] = what
        return found

    def assert_unchanged(self) -> None:
        after = self.snapshot()
        changed = sorted(k for k in set(after) | set(self.before) if after.get(k) != self.before.get(k))
        assert not changed, "host files outside the output changed: %s" % [
            "%s (%s)" % (k, "gone" if k not in after else "new" if k not in self.before else
                         "now %r" % (after[k][-1][:60],)) for k in changed]

    def assert_not_leaked_to(self, directory: Path) -> None:
        """Neither a copy of the secret nor a link that leads to a host-only file below `directory`."""
        leaks = []
        for top, dirs, files in os.walk(str(directory)):
            for name in dirs + files:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    target = os.path.realpath(path)
                    if target.startswith(str(self.root) + "/"):
                        leaks.append("%s is a link to the host's %s" % (path, target))
                elif os.path.isfile(path):
                    with open(path, "rb") as handle:
                        if self.token.encode() in handle.read():
                            leaks.append("%s holds the host's secret" % path)
        assert leaks == [], "the host's secret reached the output: %s" % leaks


def processes_touching(path: str) -> "list[tuple[int, str]]":
    """Processes whose command line or environment names `path`, or whose working directory or root lies below
    it: mmdebstrap and the apt-get, dpkg and chroots it starts."""
    found = []
    encoded = path.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path("/proc/%s/cmdline" % entry).read_bytes()
            environ = Path("/proc/%s/environ" % entry).read_bytes()
            links = [os.readlink("/proc/%s/%s" % (entry, link)) for link in ("cwd", "root")]
        except OSError:
            continue
        if encoded in cmdline or encoded in environ or any(l == path or l.startswith(path + "/") for l in links):
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()))
    return found


def host_descendants(pid: int, names: "tuple[str, ...]") -> "list[tuple[int, str]]":
    """Descendants of `pid` in this PID namespace (not a container's processes) whose name is one of `names`."""
    parents = {}
    comms = {}
    own_ns = os.readlink("/proc/self/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc/%s/stat" % entry).read_text()
            same_ns = os.readlink("/proc/%s/ns/pid" % entry) == own_ns
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
        comms[int(entry)] = (comm, same_ns)
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                todo.append(child)
                comm, same_ns = comms[child]
                if same_ns and comm in names:
                    found.append((child, comm))
    return found


class Session:
    """`postroj autopkgtest-virt` driven by hand as autopkgtest drives it: a command a line on stdin, a reply a
    line on stdout; commands run in the testbed through the argv that print-execute-command gives."""

    def __init__(self, runner: Postroj, *args: str) -> None:
        self.proc = subprocess.Popen(runner.argv("autopkgtest-virt", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runner.env)
        self.replies: "queue.Queue[str]" = queue.Queue()
        self.errors: "list[str]" = []
        self.prefix: "list[str]" = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.replies.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors.append), daemon=True).start()

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink("")  # end of the stream

    @property
    def stderr(self) -> str:
        return "\n".join(self.errors)

    def reply(self, timeout: float = 120) -> str:
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no reply within %s s; stderr:\n%s" % (timeout, self.stderr[-3000:]))
        assert line, "the server ended (exit %s); stderr:\n%s" % (self.proc.poll(), self.stderr[-3000:])
        return line

    def send(self, command: str, timeout: float = 120) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def open(self) -> "Session":
        assert self.reply() == "ok"
        assert self.send("open") == "ok " + SCRATCH
        words = self.send("print-execute-command").split()
        assert words[0] == "ok"
        self.prefix = [urllib.parse.unquote(arg) for arg in words[1].split(",")]
        return self

    def run(self, script: str, input: "bytes | None" = None) -> bytes:
        """Run a shell script as root in the testbed; its stdout."""
        proc = subprocess.run(self.prefix + ["sh", "-ec", script], input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60,
                              stdin=None if input is not None else subprocess.DEVNULL)
        assert proc.returncode == 0, (script, proc.stderr)
        return proc.stdout

    def quit(self) -> int:
        assert self.send("quit") == "ok"
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        """A check that failed half-way: the end of stdin closes the testbed (SIGKILL would leave its cgroups)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def plant(session: Session, links: "dict[str, Path | str]") -> None:
    """Links in the testbed's scratch directory that lead to host-only paths, as root in a testbed can make."""
    session.run("; ".join("ln -s %s %s/%s" % (shlex.quote(str(target)), SCRATCH, name)
                          for name, target in links.items()))


def timed(session: Session, command: str) -> "tuple[str, float]":
    started = time.monotonic()
    line = session.send(command)
    return line, time.monotonic() - started


# ==============================================================================
# Item 2: autopkgtest's real client against a hostile test
# ==============================================================================

HOSTILE_TESTS = {
    # the test's stdout and stderr files, which autopkgtest copies up into --output-dir, become links to the secret
    "output-files": ("Tests: plant\nDepends:\nRestrictions: needs-root\n", {"plant": """\
        #!/bin/sh
        set -e
        scratch="$(dirname "$AUTOPKGTEST_TMP")"
        echo "planting links"
        ln -s %(secret)s "$AUTOPKGTEST_TMP/leak"
        ln -s %(secret_dir)s "$AUTOPKGTEST_TMP/leakdir"
        rm -f "$scratch/plant-stdout" "$scratch/plant-stderr"
        ln -s %(secret)s "$scratch/plant-stdout"
        ln -s %(secret)s "$scratch/plant-stderr"
    """}),
    # artifacts that are links to the secret, to its directory, and a relative link that climbs out of the
    # output directory to the secret on the host
    "artifact-links": ("Tests: plant\nDepends:\nRestrictions: needs-root\n", {"plant": """\
        #!/bin/sh
        set -e
        echo "planting links"
        echo fine > "$AUTOPKGTEST_ARTIFACTS/fine.txt"
        ln -s %(secret)s "$AUTOPKGTEST_ARTIFACTS/leak"
        ln -s %(secret_dir)s "$AUTOPKGTEST_ARTIFACTS/leakdir"
        ln -s %(relative_secret)s "$AUTOPKGTEST_ARTIFACTS/climbs"
    """}),
    # the artifacts directory itself becomes a link to the secret's directory
    "artifacts-directory-link": ("Tests: plant\nDepends:\nRestrictions: needs-root\n", {"plant": """\
        #!/bin/sh
        set -e
        echo "planting links"
        rm -rf "$AUTOPKGTEST_ARTIFACTS"
        ln -s %(secret_dir)s "$AUTOPKGTEST_ARTIFACTS"
    """}),
    # the tests' tree becomes a link to a host directory: autopkgtest copies the tree down again for the next
    # test, into whatever the link leads to
    "tree-link": ("Tests: plant\nDepends:\nRestrictions: needs-root\n\n"
                  "Tests: after\nDepends:\nRestrictions: needs-root\n", {"plant": """\
        #!/bin/sh
        set -e
        echo "planting links"
        tree="$(pwd)"
        cd /
        rm -rf "$tree"
        ln -s %(victim_dir)s "$tree"
    """, "after": """\
        #!/bin/sh
        echo "the next test"
    """}),
    # the reboot helper becomes a link to a host file: autopkgtest copies it down again after the reboot
    "reboot-helper-link": ("Tests: plant\nDepends:\nRestrictions: needs-root, needs-reboot, isolation-container\n",
                           {"plant": """\
        #!/bin/sh
        set -e
        scratch="$(dirname "$AUTOPKGTEST_TMP")"
        case "${AUTOPKGTEST_REBOOT_MARK:-}" in
          "")
            echo "planting links"
            cp "$scratch/autopkgtest-reboot" /root/reboot.sh
            rm -f "$scratch/autopkgtest-reboot"
            ln -s %(victim)s "$scratch/autopkgtest-reboot"
            /root/reboot.sh planted
            ;;
          planted)
            echo "rebooted"
            ;;
        esac
    """}),
}


@pytest.mark.parametrize("vector", sorted(HOSTILE_TESTS))
def test_autopkgtest_with_a_hostile_test_never_reaches_the_host(virt, tmp_path, vector):
    if not shutil.which("autopkgtest"):
        pytest.skip("autopkgtest is not installed (make setup)")
    host = HostFiles(tmp_path)
    out = tmp_path / "out"
    tests, scripts = HOSTILE_TESTS[vector]
    paths = {"secret": host.secret, "secret_dir": host.secret_dir, "victim": host.victim,
             "victim_dir": host.victim_dir,
             "relative_secret": os.path.relpath(str(host.secret), str(out / "artifacts"))}
    scripts = {name: textwrap.dedent(text) % {k: shlex.quote(str(v)) for k, v in paths.items()}
               for name, text in scripts.items()}
    tree = make_test_package(tmp_path / "hostile", tests, scripts)
    code, output = autopkgtest(virt, str(tree) + "/", "postroj", "debian-bookworm",
                               options=("--no-built-binaries", "-U", "--output-dir", str(out)), timeout=600)
    assert "planting links" in output, "the hostile test did not run (exit %d):\n%s" % (code, output[-5000:])
    shown = [line for line in output.splitlines() if host.token in line]
    assert shown == [], "autopkgtest's log shows the host's secret: %s" % shown[:5]
    host.assert_not_leaked_to(out)
    host.assert_unchanged()
    assert_nothing_left(virt)


# ==============================================================================
# Items 2, 12, 13: the protocol by hand
# ==============================================================================


def test_capabilities_never_advertise_downtmp_host(images):
    with Session(images, "debian-bookworm") as session:
        session.open()
        line = session.send("capabilities")
        assert line.startswith("ok ") and "revert" in line.split()
        assert "downtmp-host" not in line, line
        assert session.quit() == 0, session.stderr
    assert_nothing_left(images)


# (name, links planted in the scratch directory, command given HOST, the host's source file SRC and directory
# SRCDIR and the output directory OUT, the reply expected or None for either)
PLANTED = [
    ("copyup-file-link", {"leak": "secret"}, "copyup %(s)s/leak %(out)s/leak", "copy-failed"),
    ("copyup-directory-link", {"leakdir": "secret_dir"}, "copyup %(s)s/leakdir/ %(out)s/leakdir/", "copy-failed"),
    ("copyup-below-a-directory-link", {"leakdir": "secret_dir"}, "copyup %(s)s/leakdir/secret.txt %(out)s/below",
     "copy-failed"),
    ("copydown-onto-a-file-link", {"w": "victim"}, "copydown %(src)s %(s)s/w", None),
    ("copydown-into-a-directory-link", {"d": "victim_dir"}, "copydown %(srcdir)s/ %(s)s/d/", None),
    ("copydown-below-a-directory-link", {"p": "victim_dir"}, "copydown %(src)s %(s)s/p/planted.txt", None),
]


@pytest.mark.parametrize("links, command, expected", [case[1:] for case in PLANTED], ids=[c[0] for c in PLANTED])
def test_copies_through_a_planted_link_stay_in_the_testbed(images, tmp_path, links, command, expected):
    host = HostFiles(tmp_path)
    src = tmp_path / "src.txt"
    src.write_text("copied down\n")
    srcdir = tmp_path / "srcdir"
    (srcdir / "sub").mkdir(parents=True)
    (srcdir / "sub" / "planted.txt").write_text("copied down\n")
    out = tmp_path / "out"
    out.mkdir()
    with Session(images, "debian-bookworm") as session:
        session.open()
        plant(session, {name: getattr(host, what) for name, what in links.items()})
        command %= {"s": SCRATCH, "src": q(str(src)), "srcdir": q(str(srcdir)), "out": q(str(out))}
        line = session.send(command)
        host.assert_not_leaked_to(out)
        host.assert_unchanged()
        if expected:
            assert line == expected, "%s: %s\n%s" % (command, line, session.stderr[-3000:])
        assert sorted(os.listdir(str(out))) == [], "the failed copy left %s" % os.listdir(str(out))
        # the testbed is still usable, and a copy of its own file works
        usable = "copyup /etc/debian_version %s" % q(str(out / "debian_version"))
        assert session.send(usable) == "ok", session.stderr[-3000:]
        assert session.quit() == 0, session.stderr
    host.assert_unchanged()
    assert_nothing_left(images)


@pytest.mark.parametrize("kind", ["new-file", "existing-file", "new-directory"])
def test_a_failed_copyup_leaves_no_host_target(images, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "existing"
    existing.write_text("the host's own content\n")
    missing = "/no-such-path-%s" % os.urandom(4).hex()
    command, target = {
        "new-file": ("copyup %s %s/new" % (missing, q(str(out))), out / "new"),
        "existing-file": ("copyup %s %s" % (missing, q(str(existing))), existing),
        "new-directory": ("copyup %s/ %s/newdir/" % (missing, q(str(out))), out / "newdir"),
    }[kind]
    with Session(images, "debian-bookworm") as session:
        session.open()
        assert session.send(command) == "copy-failed", session.stderr[-3000:]
        assert session.quit() == 0, session.stderr
    if kind == "existing-file":
        assert existing.read_text() == "the host's own content\n", "the failed copyup truncated the host's file"
    else:
        assert not os.path.lexists(str(target)), "the failed copyup made %s" % target
    assert sorted(p.name for p in out.iterdir()) == ["existing"]
    assert_nothing_left(images)


def escaping_tarball(path: Path, kind: str, victim_dir: Path, out: Path) -> Path:
    """A tree's tar stream as a hostile testbed's tar can send it: a harmless entry, then one that escapes."""
    good = rig.tar_entry("./good.txt", data=b"fine\n")
    planted = b"written outside the target\n"
    escape = {
        "absolute": [rig.tar_entry(str(victim_dir / "planted-absolute"), data=planted)],
        "dotdot": [rig.tar_entry(os.path.relpath(str(victim_dir / "planted-dotdot"), str(out)), data=planted)],
        "absolute-link": [rig.tar_entry("./lnk", tarfile.SYMTYPE, linkname=str(victim_dir)),
                          rig.tar_entry("./lnk/planted-link", data=planted)],
        "relative-link": [rig.tar_entry("./rlnk", tarfile.SYMTYPE, linkname=os.path.relpath(str(victim_dir), str(out))),
                          rig.tar_entry("./rlnk/planted-relative-link", data=planted)],
    }[kind]
    return rig.write_tar_entries(path, [good] + escape)


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "absolute-link", "relative-link"])
def test_a_tree_with_an_escaping_entry_is_refused(images, tmp_path, kind):
    host = HostFiles(tmp_path)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "tree"
    evil = escaping_tarball(tmp_path / "evil.tar", kind, host.victim_dir, out)
    with Session(images, "debian-bookworm") as session:
        session.open()
        session.run("cat > /root/evil.tar", input=evil.read_bytes())
        # root in the testbed owns its tar: whatever postroj asks it for, it sends the hostile stream
        session.run("mkdir -p /root/tree; mv /usr/bin/tar /usr/bin/tar.real; "
                    "printf '#!/bin/sh\\nexec cat /root/evil.tar\\n' > /usr/bin/tar; chmod 755 /usr/bin/tar")
        line = session.send("copyup /root/tree/ %s/" % q(str(out)))
        assert line == "copy-failed", "%s\n%s" % (line, session.stderr[-3000:])
        assert session.quit() == 0, session.stderr
    host.assert_unchanged()
    assert not os.path.lexists(str(out)), "the refused tree left %s: %s" % (out, sorted(os.listdir(str(out))))
    assert sorted(os.listdir(str(tmp_path / "out"))) == []
    assert_nothing_left(images)


COPY_TIMEOUT = 3


@pytest.mark.parametrize("case", ["copyup-fifo", "copydown-onto-fifo", "copyup-tree-stalls", "copydown-tree-stalls"])
def test_copy_timeout_bounds_each_copy_and_leaves_no_host_process(images, tmp_path, case):
    marker = "stall-%s" % os.urandom(4).hex()  # in every testbed path of this test, and in no other
    stalled = "sleep 600.%06d" % random.randrange(10 ** 6)  # the testbed's tar, which never sends or takes a byte
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "src.txt"
    src.write_text("copied down\n")
    srcdir = tmp_path / ("srcdir-" + marker)
    srcdir.mkdir()
    (srcdir / "big").write_bytes(os.urandom(4 << 20))  # more than a pipe holds: the host's side blocks too
    with Session(images, "debian-bookworm", "--copy-timeout", str(COPY_TIMEOUT)) as session:
        session.open()
        if case == "copyup-fifo":
            # a writer gives some bytes, then holds the FIFO open: cat reads them and waits for ever
            session.run("mkfifo /root/%s; printf '(echo partial; sleep 600) > /root/%s\\n' > /root/writer.sh; "
                        "setsid sh /root/writer.sh </dev/null >/dev/null 2>&1 &" % (marker, marker))
            command, target = "copyup /root/%s %s/copy" % (marker, q(str(out))), out / "copy"
        elif case == "copydown-onto-fifo":
            session.run("mkfifo /root/%s" % marker)
            command, target = "copydown %s /root/%s" % (q(str(src)), marker), None
        else:
            session.run("mkdir -p /root/%s; mv /usr/bin/tar /usr/bin/tar.real; "
                        "printf '#!/bin/sh\\nexec %s\\n' > /usr/bin/tar; chmod 755 /usr/bin/tar" % (marker, stalled))
            if case == "copyup-tree-stalls":
                command, target = "copyup /root/%s/ %s/tree/" % (marker, q(str(out))), out / "tree"
            else:
                command, target = "copydown %s/ /root/%s/tree/" % (q(str(srcdir)), marker), None
        line, took = timed(session, command)
        if case != "copydown-onto-fifo":  # a copy that replaces the FIFO instead of writing into it is fine too
            assert line == "copy-failed", "%s\n%s" % (line, session.stderr[-3000:])
        assert took < COPY_TIMEOUT + 9, "the copy took %.1f s with --copy-timeout %d" % (took, COPY_TIMEOUT)

        def copy_processes() -> "list":
            """The copy's own: tar, cat and nsenter on the host, and in the testbed what the copy started."""
            return (host_descendants(session.proc.pid, ("tar", "cat", "nsenter", "timeout"))
                    + rig.processes_mentioning(marker) + rig.processes_mentioning(stalled))

        try:
            wait_for(lambda: not copy_processes(), timeout=3, step=0.1, what="no copy process")
        except AssertionError:
            raise AssertionError("the timed-out copy left processes: %s" % copy_processes())
        if target is not None:
            assert not os.path.lexists(str(target)), "the timed-out copyup left %s" % target
        # the testbed is still usable
        usable = "copyup /etc/debian_version %s" % q(str(out / "debian_version"))
        assert session.send(usable) == "ok", session.stderr[-3000:]
        assert session.quit() == 0, session.stderr
    assert_nothing_left(images)


# ==============================================================================
# Item 3: a real bootstrap, interrupted by real signals
# ==============================================================================

# Runs in a mount namespace of its own with a tmpfs at /dev/shm holding a canary: postroj's `image --via
# bootstrap` (the test signals it), then `gc`; records what was left after each, as JSON.
BOOTSTRAP_UNDER_A_CANARY = r"""
import json, os, subprocess, sys, time
pyz, home, result, pidfile = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "postroj-canary", "/dev/shm"], check=True)
with open("/dev/shm/canary", "w") as handle:
    handle.write("canary\n")

def canary():
    try:
        with open("/dev/shm/canary") as handle:
            return handle.read()
    except OSError as exc:
        return str(exc)

def mounts():
    with open("/proc/self/mountinfo") as handle:
        return [line.strip() for line in handle if home in line]

def processes():
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read()
            with open("/proc/%s/environ" % entry, "rb") as handle:
                environ = handle.read()
            links = [os.readlink("/proc/%s/%s" % (entry, link)) for link in ("cwd", "root")]
        except OSError:
            continue
        if home.encode() in cmdline + environ or any(l.startswith(home) for l in links):
            found.append("%s %s" % (entry, cmdline.replace(b"\0", b" ").decode("utf-8", "replace")))
    return found

proc = subprocess.Popen([sys.executable, pyz, "image", "debian-bookworm", "--via", "bootstrap"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
with open(pidfile + ".tmp", "w") as handle:
    handle.write(str(proc.pid))
os.rename(pidfile + ".tmp", pidfile)
out, err = proc.communicate(timeout=900)
deadline = time.monotonic() + 10
while processes() and time.monotonic() < deadline:
    time.sleep(0.2)
state = {"code": proc.returncode, "stdout": out, "stderr": err, "processes": processes(), "mounts": mounts(),
         "canary": canary()}
gc = subprocess.run([sys.executable, pyz, "gc"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, timeout=300)
staging = os.path.join(home, "tmp")
state.update(gc_code=gc.returncode, gc_stderr=gc.stderr, gc_mounts=mounts(), gc_canary=canary(),
             gc_staging=sorted(os.listdir(staging)) if os.path.isdir(staging) else [])
with open(result, "w") as handle:
    json.dump(state, handle)
"""


def bootstrap_mounts(home: Path) -> "list[str]":
    """What is mounted below POSTROJ_HOME/tmp, as any process of the bootstrap sees it (in whichever mount
    namespace it runs)."""
    found = []
    for pid, _ in processes_touching(str(home)):
        try:
            lines = Path("/proc/%d/mountinfo" % pid).read_text().splitlines()
        except OSError:
            continue
        found += [line.split()[4] for line in lines if line.split()[4].startswith(str(home / "tmp") + "/")]
    return found


EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def bootstrap_unpacking(home: Path) -> bool:
    """mmdebstrap is unpacking the essential packages (usr/bin is there) and has mounted nothing yet."""
    tmp = home / "tmp"
    return tmp.is_dir() and any((d / "rootfs" / "usr" / "bin").is_dir() for d in tmp.iterdir()) \
        and not bootstrap_mounts(home)


@pytest.mark.parametrize("signum, when", [
    (signal.SIGTERM, "unpacking"),
    (signal.SIGTERM, "mounted"),
    (signal.SIGINT, "mounted"),
], ids=["SIGTERM-while-unpacking", "SIGTERM-while-mounted", "SIGINT-while-mounted"])
def test_a_signal_during_a_real_bootstrap_leaves_nothing_and_deletes_nothing_across_mounts(postroj, tmp_path,
                                                                                           signum, when):
    result = tmp_path / "result.json"
    pidfile = tmp_path / "postroj.pid"
    helper = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", BOOTSTRAP_UNDER_A_CANARY,
         str(postroj.pyz), str(postroj.home), str(result), str(pidfile)],
        env=postroj.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: helper.poll() is not None or pidfile.exists(), timeout=60, what="postroj's start")
        assert helper.poll() is None, helper.communicate()[0]
        pid = int(pidfile.read_text())
        # a few seconds in: while mmdebstrap unpacks, or once it has mounted proc, sys and dev in the root file
        # system it builds
        phase = bootstrap_unpacking if when == "unpacking" else bootstrap_mounts
        wait_for(lambda: helper.poll() is not None or phase(postroj.home), timeout=300, step=0.05,
                 what="the bootstrap's %s" % when)
        assert helper.poll() is None, "postroj ended before the signal:\n%s\n%s" % (
            helper.communicate()[0], result.read_text() if result.exists() else "")
        os.kill(pid, signum)
        output = helper.communicate(timeout=600)[0]
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        left = processes_touching(str(tmp_path))
        rig.kill_processes(left)
    assert helper.returncode == 0, output
    state = json.loads(result.read_text())
    err = state["stderr"]
    assert state["code"] == EXIT_STATUS[signum], "exit %s:\n%s" % (state["code"], err[-4000:])
    assert "Traceback" not in err, err[-4000:]
    assert ("interrupted" if signum == signal.SIGINT else "terminated") in err, err[-4000:]
    assert state["processes"] == [], "left running after the interrupted bootstrap: %s" % state["processes"]
    assert left == [], "left running: %s" % left
    assert state["mounts"] == [], "mounted below POSTROJ_HOME after the interrupted bootstrap: %s" % state["mounts"]
    assert state["canary"] == "canary\n", "the clean-up deleted the canary in /dev/shm: %s" % state["canary"]
    assert state["gc_code"] == 0, state["gc_stderr"]
    assert state["gc_mounts"] == [], state["gc_mounts"]
    assert state["gc_canary"] == "canary\n", "gc deleted the canary in /dev/shm: %s" % state["gc_canary"]
    assert state["gc_staging"] == [], "the staging directory outlived gc: %s" % state["gc_staging"]


# ==============================================================================
# Item 4: SIGKILL, then the next run of the same machine, or gc
# ==============================================================================


def payload(runner: Postroj, marker: str) -> "list":
    """The container's command (and its nsenter), not postroj, whose argv names it too."""
    return [p for p in rig.processes_mentioning(marker) if str(runner.pyz) not in p[1]]


def remove_leftover_cgroups(cgroups: "list[str]") -> None:
    """The test's own clean-up of what a failed check left: the killed container's processes (its systemd
    outlives a SIGKILLed nspawn), then the cgroups, deepest first."""
    deadline = time.monotonic() + 10
    while any(os.path.isdir(c) for c in cgroups) and time.monotonic() < deadline:
        for top in cgroups:
            for directory, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    for pid in Path(directory, "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                    os.rmdir(directory)
                except (OSError, ValueError):
                    pass
        time.sleep(0.05)


def kill_a_run(runner: Postroj, victims: str, kind: str = "container") -> "dict":
    """Start a `container debian-bookworm -- sleep ...`, a probe whose command sleeps, or an autopkgtest-virt
    server with an open testbed; SIGKILL postroj (and, with "postroj-and-nspawn", its nspawn) while the
    container runs; the run's state file as it was."""
    marker = "60.%06d" % random.randrange(10 ** 6)
    if kind == "autopkgtest-virt":
        proc = runner.popen("autopkgtest-virt", "debian-bookworm", stdin=subprocess.PIPE)
    else:
        proc = runner.popen(*{"container": ["container", "debian-bookworm", "--", "sleep", marker],
                              "probe": ["probe", "--image", "debian-bookworm", "--command", "sleep " + marker]}[kind])
    try:
        if kind == "autopkgtest-virt":
            assert proc.stdout.readline() == "ok\n", proc.stderr.read()
            proc.stdin.write("open\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("ok "), proc.stderr.read()
        else:
            wait_for(lambda: proc.poll() is not None or payload(runner, "sleep " + marker), what="the command")
        assert proc.poll() is None, proc.communicate()
        (state_file,) = (runner.home / "run").glob("*.json")
        state = json.loads(state_file.read_text())
        os.kill(proc.pid, signal.SIGKILL)
        if victims == "postroj-and-nspawn":
            os.kill(state["nspawn_pid"], signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not nspawn_of(runner.home), timeout=30, what="nspawn's end")
    state["marker"] = marker
    assert state["cgroups"], "the container had no cgroups of its own: %s" % state
    assert any(os.path.isdir(c) for c in state["cgroups"]), "the kill left no cgroup: the test proves nothing"
    return state


@pytest.mark.parametrize("kind, victims", [("container", "postroj"), ("container", "postroj-and-nspawn"),
                                           ("probe", "postroj-and-nspawn"), ("autopkgtest-virt", "postroj")])
def test_the_next_run_of_a_killed_machine_removes_its_cgroups(images, kind, victims):
    state = kill_a_run(images, victims, kind)
    try:
        proc = images("container", "debian-bookworm", "--", "hostname", check=0)
        assert proc.stdout.strip() == state["machine"], "the next run took another name: the test proves nothing"
        left = [c for c in state["cgroups"] if os.path.isdir(c)]
        assert left == [], "the killed run's cgroups outlived the next run of %s: %s" % (state["machine"], left)
        wait_for(lambda: not payload(images, "sleep " + state["marker"]), timeout=10, what="the killed command's end")
    finally:
        remove_leftover_cgroups(state["cgroups"])
    assert_nothing_left(images)


@pytest.mark.parametrize("kind, state_file", [("container", "intact"), ("container", "corrupt"), ("probe", "intact"),
                                              ("autopkgtest-virt", "intact")])
def test_gc_alone_removes_the_cgroups_of_a_killed_run_and_only_its_homes(images, tmp_path, kind, state_file):
    state = kill_a_run(images, "postroj-and-nspawn", kind)
    try:
        key = hashlib.sha256(str(images.home).encode()).hexdigest()[:8]
        pattern = r"postroj\.%s\.%s\.[0-9a-z]+" % (re.escape(state["machine"]), key)
        unnamed = [c for c in state["cgroups"] if not re.fullmatch(pattern, os.path.basename(c))]
        assert unnamed == [], "not named postroj.<machine>.<home key %s>.<random>: %s" % (key, unnamed)
        if state_file == "corrupt":
            (images.home / "run" / (state["machine"] + ".json")).write_text("{")
        other = Postroj(images.pyz, tmp_path / "other-home", tmp_path / "other-cache", {})
        other("gc", check=0)
        assert all(os.path.isdir(c) for c in state["cgroups"]), "gc of another POSTROJ_HOME removed this one's cgroups"
        images("gc", check=0)
        left = [c for c in state["cgroups"] if os.path.isdir(c)]
        assert left == [], "gc left the killed run's cgroups: %s" % left
        assert not (images.home / "run" / (state["machine"] + ".json")).exists()
        wait_for(lambda: not payload(images, "sleep " + state["marker"]), timeout=10, what="the killed command's end")
    finally:
        if (images.home / "run" / (state["machine"] + ".json")).exists():
            (images.home / "run" / (state["machine"] + ".json")).unlink()  # a check failed before gc ran
            images("gc")
        remove_leftover_cgroups(state["cgroups"])
    assert_nothing_left(images)


# ==============================================================================
# Item 14: a container killed under a probe; SIGHUP
# ==============================================================================


def test_a_probe_whose_container_is_killed_says_the_container_ended(images):
    marker = "sleep 30.%06d" % random.randrange(10 ** 6)
    proc = images.popen("probe", "--image", "debian-bookworm", "--command", marker, "--timeout", "20", "--json", "-")
    try:
        wait_for(lambda: proc.poll() is not None or payload(images, marker), what="the probe's command")
        (machine,) = json.loads(images("machines", "--json", check=0).stdout)["machines"]
        os.kill(machine["leader"], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    (result,) = json.loads(out)["results"]
    assert result["status"] == "fail", result
    assert "the container ended while the command ran" in result["reason"], result["reason"]
    assert "exit status" not in result["reason"], result["reason"]
    assert_nothing_left(images)


@pytest.mark.parametrize("command", ["probe", "container", "autopkgtest-virt"])
def test_sighup_ends_postroj_with_129_and_cleans_up(images, command):
    marker = "sleep 60.%06d" % random.randrange(10 ** 6)
    if command == "autopkgtest-virt":
        with Session(images, "debian-bookworm") as session:
            session.open()
            session.proc.send_signal(signal.SIGHUP)
            code = session.proc.wait(timeout=60)
            time.sleep(0.2)  # the reader thread takes the last of stderr
            err = session.stderr
    else:
        argv = {"probe": ["probe", "--image", "debian-bookworm", "--command", marker],
                "container": ["container", "debian-bookworm", "--", "sh", "-c", marker]}[command]
        proc = images.popen(*argv)
        try:
            wait_for(lambda: proc.poll() is not None or payload(images, marker), what="the command")
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGHUP)
            _, err = proc.communicate(timeout=60)
            code = proc.returncode
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 129, "exit %s:\n%s" % (code, err[-3000:])
    assert "Traceback" not in err, err
    wait_for(lambda: not payload(images, marker), timeout=20, what="the command's end")
    assert_nothing_left(images)
