"""The host boundary of the autopkgtest testbed (issue 33, items 1, 2 and 8): a testbed is named by something
that cannot be reused, what its tar sends up is data, and a deep tree made in it is only a deep tree.

- Item 1: the testbed powers itself off and a process of the host takes its leader's PID (real PID reuse:
  the server runs in a PID namespace of its own, `ns_last_pid` makes the next process there take the PID);
  the execute prefix autopkgtest got and postroj's own copyup and copydown must not reach that process's namespaces.
- Item 2: links that lead out of a copied-up tree only through other links of the tree (a chain of in-tree
  `top -> ../..` links) reach the host through Debian's real autopkgtest client as no link at all.
- Item 8: a 1,200-level tree made by autopkgtest's --setup-commands, reverted between tests, and a
  1,100-level tree copied up by hand, then reverted: no RecursionError, the testbed and the next run work.

The host-only files live in the test's own tmp_path, which no container can see."""

from __future__ import annotations

import json
import os
import queue
import random
import shlex
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path


import rig
from rig import Postroj, wait_for
from test_autopkgtest import assert_nothing_left, autopkgtest, make_test_package, summary, virt  # noqa: F401
from test_host_safety_testbed import HostFiles, Session, remove_leftover_cgroups

q = urllib.parse.quote


# ==============================================================================
# Helpers
# ==============================================================================


def built_test_package(directory: Path, tests: str, scripts: "dict[str, str]") -> str:
    """A source tree with debian/tests that autopkgtest takes as built (debian/files): nothing is built in the
    testbed, so no build dependency (dpkg-dev) is installed and no network is needed."""
    tree = make_test_package(directory, tests, scripts)
    (tree / "debian" / "files").write_text("")
    return str(tree) + "/"


def remove_deep(path: Path) -> None:
    """Remove a tree deeper than Python's recursion limit (shutil.rmtree recurses), without following links."""
    if os.path.lexists(str(path)):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def clean_up_a_crashed_server(runner: Postroj) -> None:
    """What a server that crashed (the unfixed postroj) leaves: its nspawn, the container's cgroups, the runtime
    directory with a tree too deep for Python's own clean-up. Only this test's POSTROJ_HOME."""
    run = runner.home / "run"
    if not run.is_dir():
        return
    for state in run.glob("*.json"):
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        rig.kill_processes([(int(data.get("nspawn_pid") or 0), "")] if data.get("nspawn_pid") else [])
        remove_leftover_cgroups(list(data.get("cgroups") or []))
    rig.kill_processes(rig.processes_mentioning(str(runner.home)))
    for entry in run.iterdir():
        remove_deep(entry)


def _read(path: Path) -> str:
    """A file's text, or '' when there is none."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def depth_of(top: Path, name: str, leaf: str) -> "tuple[int, bytes]":
    """How many directories `name` are nested below `top`, and the content of `leaf` in the deepest; walked
    with directory handles (the path is longer than the kernel resolves at once), never through a link."""
    fd = os.open(str(top), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    levels = 0
    try:
        while True:
            try:
                below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                break
            os.close(fd)
            fd, levels = below, levels + 1
        try:
            with open(os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as handle:
                return levels, handle.read(4096)
        except FileNotFoundError:
            return levels, b""
    finally:
        os.close(fd)


def deep_tree_script(top: str, levels: int) -> str:
    """sh: a tree of `levels` directories d/d/d/... below `top`, with a file `leaf` in the deepest."""
    return ("mkdir -p %s && cd %s && i=0 && while [ $i -lt %d ]; do mkdir d && cd d && i=$((i+1)); done && "
            "echo deep > leaf" % (top, top, levels))


def deep_leaf_check(top: str, levels: int) -> str:
    """sh: fails unless the tree deep_tree_script made is there, whole."""
    return ('cd %s && i=0 && while [ $i -lt %d ]; do cd d; i=$((i+1)); done && test "$(cat leaf)" = deep'
            % (top, levels))


def links_leading_out(directory: Path) -> "list[str]":
    """Every link below `directory` (walked without following one) that the host's kernel resolves to a path
    outside it."""
    top = os.path.realpath(str(directory))
    found = []
    for parent, dirs, files in os.walk(top):  # links to directories are listed in dirs, never entered
        for name in dirs + files:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target != top and not target.startswith(top + "/"):
                    found.append("%s -> %s (resolves to %s)" % (os.path.relpath(path, top), os.readlink(path), target))
    return sorted(found)


# ==============================================================================
# Item 1: the leader's PID, taken by a process of the host
# ==============================================================================


class NamespacedSession(Session):
    """A Session whose server runs as PID 1 of a PID namespace of its own (`unshare --pid --fork --mount-proc`),
    where the test can make a process take a PID it names. The execute prefix names PIDs of that namespace:
    it is run there too (`in_namespace`)."""

    def __init__(self, runner: Postroj, *args: str) -> None:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--"] + runner.argv("autopkgtest-virt", *args)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=runner.env)
        self.replies: "queue.Queue[str]" = queue.Queue()
        self.errors: "list[str]" = []
        self.prefix: "list[str]" = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.replies.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors.append), daemon=True).start()
        # unshare forks the server: PID 1 of the new namespace, whose namespaces `in_namespace` enters
        children = "/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)
        self.server = int(wait_for(lambda: Path(children).read_text().split() if self.proc.poll() is None else
                                   ["0"], timeout=30, what="the server's start")[0])

    def in_namespace(self) -> "list[str]":
        """An argv prefix that runs a command in the server's PID namespace and its mount namespace (its /proc)."""
        return ["nsenter", "--target=%d" % self.server, "--pid", "--mount", "--"]


# Runs in the server's PID namespace: waits until the leader's PID is free, then makes a `sleep` of the host
# (the host's file system, network and host name) take it; prints its PID; ends it when stdin closes.
TAKE_THE_PID = r"""
import os, subprocess, sys, time
leader, sleep = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 60
while os.path.exists("/proc/%d" % leader):
    if time.monotonic() > deadline:
        print("0 the leader %d did not end" % leader, flush=True)
        sys.exit(1)
    time.sleep(0.02)
taker = None
for attempt in range(200):
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(leader - 1))
    proc = subprocess.Popen(["sleep", sleep], stdin=subprocess.DEVNULL)
    if proc.pid == leader:
        taker = proc
        break
    proc.kill()
    proc.wait()
print("%d after %d attempts" % (taker.pid if taker else 0, attempt + 1), flush=True)
sys.stdin.read()
if taker:
    taker.kill()
    taker.wait()
"""


def test_a_leader_pid_taken_by_a_host_process_is_never_entered(images, tmp_path):
    host = HostFiles(tmp_path)
    reached = host.root / "reached-by-the-testbed"  # only a process on the host can write here
    out = tmp_path / "out"
    out.mkdir()
    sleep = "300.%06d" % random.randrange(10 ** 6)
    problems = []
    with NamespacedSession(images, "debian-bookworm") as session:
        taker = None
        try:
            session.open()
            enter = session.in_namespace()

            def execute(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
                """A command through the execute prefix autopkgtest got, as autopkgtest runs it."""
                return subprocess.run(enter + session.prefix + ["sh", "-c", script], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)

            # the prefix works from the namespace, and reaches the testbed, not the host
            machine = execute("cat /proc/sys/kernel/hostname")
            assert machine.returncode == 0, machine
            assert machine.stdout.strip() != Path("/proc/sys/kernel/hostname").read_text().strip(), machine.stdout
            # the leader's PID as the server knows it (in its namespace), from the testbed's state file
            (state,) = (images.home / "run").glob("*.json")
            leader = int(json.loads(state.read_text())["leader"])
            execute("systemctl poweroff -ff")  # the testbed ends at once, the command with it
            taker = subprocess.Popen(enter + [sys.executable, "-c", TAKE_THE_PID, str(leader), sleep],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = taker.stdout.readline()
            assert line.split()[:1] == [str(leader)], "no process took the leader's PID %d: %r %s" % (
                leader, line, taker.stderr.read() if taker.poll() is not None else "")

            # autopkgtest's next command, through the prefix it got at open
            ran = execute("echo reached > %s; cat /proc/sys/kernel/hostname" % shlex.quote(str(reached)))
            print("the execute prefix: exit %d, %r" % (ran.returncode, ran.stderr.strip()))
            if reached.exists() or ran.returncode != 255 or "is gone" not in ran.stderr:
                problems.append("the execute prefix, with the leader's PID %d now a host process's: exit %d, host "
                                "file written: %s, stdout %r, stderr %r" % (leader, ran.returncode, reached.exists(),
                                                                             ran.stdout, ran.stderr[-500:]))
            # postroj's own copies: up, a file only the host has; down, into a directory only the host has.
            # Either is refused (copy-failed) or the server fails (exit 12, autopkgtest's testbed failure).
            src = tmp_path / "src.txt"
            src.write_text("copied down\n")
            planted = host.root / "planted-by-copydown"
            for command, what, evidence in [
                    ("copyup %s %s" % (q(str(host.secret)), q(str(out / "copied"))), "copyup of the host's file",
                     lambda: host.token in _read(out / "copied") and " (it copied the host's secret)"),
                    ("copydown %s %s" % (q(str(src)), q(str(planted))), "copydown into a host directory",
                     lambda: planted.exists() and " (it wrote the host's %s)" % planted)]:
                if session.proc.poll() is not None:
                    break
                session.proc.stdin.write(command + "\n")
                session.proc.stdin.flush()
                try:
                    line = session.reply()
                except AssertionError:  # the server ended
                    line = "the server's exit %d" % session.proc.wait(timeout=60)
                print("%s: %s" % (what, line))
                if line not in ("copy-failed", "the server's exit 12"):
                    problems.append("%s, with the leader's PID a host process's: %r%s" % (what, line, evidence() or ""))
        except AssertionError:
            if session.proc.poll() is not None:  # the server ended: say how
                time.sleep(0.2)
                raise AssertionError("the server ended (exit %s):\n%s" % (session.proc.returncode,
                                                                        session.stderr[-3000:]))
            raise
        finally:
            if taker is not None:
                taker.stdin.close()
                taker.wait(timeout=30)
        if session.proc.poll() is None:
            session.proc.stdin.write("quit\n")
            session.proc.stdin.flush()
            session.proc.stdin.close()
            session.proc.wait(timeout=60)
        time.sleep(0.2)  # the reader thread takes the last of stderr
    assert problems == [], "the testbed's PID, reused, reached the host:\n" + "\n".join(problems)
    assert "Traceback" not in session.stderr, session.stderr[-3000:]
    host.assert_not_leaked_to(out)
    assert sorted(os.listdir(str(out))) == [], "the copyup left %s" % os.listdir(str(out))
    host.assert_unchanged()
    assert_nothing_left(images)


# ==============================================================================
# Item 2: a chain of in-tree links leads out of a copied-up tree
# ==============================================================================

CHAIN_TESTS = "Tests: chain\nDepends:\nRestrictions: needs-root\n"

# d0/d1/.../d19, every directory from d0/d1 down with `top -> ../..` (inside the tree, as a string); from d19,
# ten `top` lead back to the top of the tree, and 20 `..` from there (as a string still inside: d19 is 20
# deep) lead to the host's /. The links at the top only name that link.
CHAIN_SCRIPT = """\
    #!/bin/sh
    set -e
    cd "$AUTOPKGTEST_ARTIFACTS"
    echo fine > fine.txt
    p=d0
    mkdir d0
    i=1
    while [ $i -le 19 ]; do
        p="$p/d$i"
        mkdir "$p"
        ln -s ../.. "$p/top"
        i=$((i+1))
    done
    ln -s "top/top/top/top/top/top/top/top/top/top/../../../../../../../../../../../../../../../../../../../.." \\
        "$p/host-root"
    ln -s "$p/host-root" host-root
    ln -s "$p/host-root/etc/hostname" host-hostname
    ln -s "$p/host-root"%(secret)s host-secret
    ln -s "$p/host-root"%(secret_dir)s host-secret-dir
    echo "planting links"
    ls -l "$AUTOPKGTEST_ARTIFACTS"
"""


def test_copyup_of_links_that_lead_out_through_in_tree_links(virt, tmp_path):
    host = HostFiles(tmp_path)
    out = tmp_path / "out"
    script = textwrap.dedent(CHAIN_SCRIPT) % {"secret": shlex.quote(str(host.secret)),
                                              "secret_dir": shlex.quote(str(host.secret_dir))}
    tree = built_test_package(tmp_path / "chain", CHAIN_TESTS, {"chain": script})
    code, output = autopkgtest(virt, tree, "postroj", "debian-bookworm",
                               options=("--no-built-binaries", "--output-dir", str(out)), timeout=300)
    assert "planting links" in output, "the hostile test did not run (exit %d):\n%s" % (code, output[-5000:])
    assert "Traceback" not in output, output[-5000:]
    leading_out = links_leading_out(out)
    assert leading_out == [], "links that lead out of the output directory reached the host:\n" + "\n".join(leading_out)
    host.assert_not_leaked_to(out)
    assert not [line for line in output.splitlines() if host.token in line], "autopkgtest's log shows the secret"
    host.assert_unchanged()
    assert_nothing_left(virt)


# ==============================================================================
# Item 8: 1,200 levels through --setup-commands and revert; 1,100 levels in a copyup
# ==============================================================================

DEEP_LEVELS = 1200

DEEP_TESTS = """\
Tests: breaks
Depends:
Restrictions: needs-root, breaks-testbed

Tests: after-revert
Depends:
Restrictions: needs-root
"""

DEEP_SCRIPTS = {
    "breaks": """\
        #!/bin/sh
        set -e
        (%(check)s)
        echo written > /etc/postroj-deep-marker
        echo "the deep tree is there"
    """ % {"check": deep_leaf_check("/root/deep", DEEP_LEVELS)},
    "after-revert": """\
        #!/bin/sh
        set -e
        test ! -e /etc/postroj-deep-marker
        (%(check)s)
        echo "reverted, and the deep tree is there again"
    """ % {"check": deep_leaf_check("/root/deep", DEEP_LEVELS)},
}


def test_a_deep_tree_from_setup_commands_survives_revert_and_the_next_run(virt, tmp_path):
    tree = built_test_package(tmp_path / "deep", DEEP_TESTS, DEEP_SCRIPTS)
    try:
        code, output = autopkgtest(virt, tree, "postroj", "debian-bookworm", options=(
            "--no-built-binaries", "--setup-commands=%s" % deep_tree_script("/root/deep", DEEP_LEVELS)), timeout=300)
        assert "RecursionError" not in output and "Traceback" not in output, output[-5000:]
        assert code == 0 and summary(output) == {"breaks": "PASS", "after-revert": "PASS"}, \
            "exit %d:\n%s" % (code, output[-5000:])
        assert "reverted, and the deep tree is there again" in output
        assert_nothing_left(virt)
        # the next run, and gc, of the same POSTROJ_HOME
        gc = virt("gc", check=0)
        assert "Traceback" not in gc.stderr, gc.stderr
        assert virt("container", "debian-bookworm", "--", "cat", "/etc/debian_version", check=0).stdout.strip()
    except BaseException:
        clean_up_a_crashed_server(virt)
        raise
    assert_nothing_left(virt)


COPYUP_LEVELS = 1100
COPY_TIMEOUT = 30


def test_a_1100_level_tree_in_a_copyup_then_revert(images, tmp_path):
    """The tree comes up whole, or is refused with nothing left; either within --copy-timeout (README: each
    copy has it), not after minutes of checks on ever longer paths; then revert and gc work."""
    out = tmp_path / "out"
    out.mkdir()
    copied = out / "deep"
    try:
        with Session(images, "debian-bookworm", "--copy-timeout", str(COPY_TIMEOUT)) as session:
            session.open()
            session.run(deep_tree_script("/root/deep", COPYUP_LEVELS))
            started = time.monotonic()
            session.proc.stdin.write("copyup /root/deep/ %s/\n" % q(str(copied)))
            session.proc.stdin.flush()
            try:
                line = session.reply(timeout=COPY_TIMEOUT + 15)
            except AssertionError as exc:
                raise AssertionError("the copyup of a %d-level tree did not end within --copy-timeout %d s (+15 s): "
                                     "%s" % (COPYUP_LEVELS, COPY_TIMEOUT, exc)) from None
            took = time.monotonic() - started
            assert line in ("ok", "copy-failed"), "%s\n%s" % (line, session.stderr[-3000:])
            if line == "ok":
                assert depth_of(copied, "d", "leaf") == (COPYUP_LEVELS, b"deep\n"), "the tree came up incomplete"
            else:  # refused (too deep, or the time-out): nothing of it is left
                assert not os.path.lexists(str(copied)), "the refused copyup left %s" % copied
            assert session.send("revert") == "ok /var/tmp/autopkgtest", session.stderr[-3000:]
            usable = "copyup /etc/debian_version %s" % q(str(out / "debian_version"))
            assert session.send(usable) == "ok", session.stderr[-3000:]
            assert session.quit() == 0, session.stderr[-3000:]
        assert "RecursionError" not in session.stderr and "Traceback" not in session.stderr, session.stderr[-3000:]
        print("copyup of %d levels: %s in %.1f s" % (COPYUP_LEVELS, line, took))
        assert_nothing_left(images)
        assert images("gc", check=0).returncode == 0
    except BaseException:
        clean_up_a_crashed_server(images)
        raise
    finally:
        remove_deep(copied)
