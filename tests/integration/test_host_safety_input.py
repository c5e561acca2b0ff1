"""Issue 21 through the real postroj.pyz, as root, against the rig's images: reports written in place where the
path is not a regular file and checked before anything boots; an install that never ends bounded by
--install-timeout; broken state directories (a file, a read-only mount, a full tmpfs) and broken state files
(image.json, run/NAME.json) ending in `error:` and `hint:`; directories and files that are no image or package
refused before anything is copied; an unreadable --copy failing its probe only; systemd-nspawn getting an
environment built from an allowlist. Bad input that needs no file of its own is in test_faults_input.py."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import stat
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path

import pytest

import rig
from rig import Postroj, nspawn_of, wait_for
from test_autopkgtest import serve
from test_faults_input import snapshot

# as root, only a process without CAP_DAC_OVERRIDE finds a mode-000 file or directory unreadable or unwritable
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def listing(directory: Path) -> "list[str]":
    return sorted(p.name for p in directory.iterdir())


def run(runner: Postroj, *args: str, prefix=(), timeout: float = 300) -> subprocess.CompletedProcess:
    """`runner` with `args` (under `prefix`, e.g. setpriv); stdout and stderr as text, never a hang."""
    try:
        proc = subprocess.run([*prefix, *runner.argv(*args)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=runner.env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("postroj %s did not end within %s s" % (" ".join(args), timeout))
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "backslashreplace"),
                                       proc.stderr.decode("utf-8", "backslashreplace"))


def clean_error(proc: subprocess.CompletedProcess, code: int, *words: str, stdout: bool = False) -> None:
    """Exit `code` with an `error:` and a `hint:` line, each of `words` on stderr, no traceback; nothing on
    stdout unless `stdout` (autopkgtest's `ok`)."""
    assert proc.returncode == code, "exit %d, expected %d\nstdout:\n%s\nstderr:\n%s" % (
        proc.returncode, code, proc.stdout[-3000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    if code != 12:  # autopkgtest-virt's failures are autopkgtest's own `failure:` lines
        assert any(line.startswith("error: ") for line in lines), proc.stderr
        assert any(line.startswith("hint: ") for line in lines), "no hint says how to fix it:\n%s" % proc.stderr
    for word in words:
        assert word in proc.stderr, "%r not in:\n%s" % (word, proc.stderr[-3000:])
    if not stdout:
        assert proc.stdout == "", "stdout is for data:\n%s" % proc.stdout


def refused(runner: Postroj, args, *words: str, prefix=(), timeout: float = 60) -> subprocess.CompletedProcess:
    """A usage error (exit 2) that changed nothing in the state root or the cache, as test_bad_input checks."""
    before = snapshot(runner.home, runner.cache)
    proc = run(runner, *map(str, args), prefix=prefix, timeout=timeout)
    clean_error(proc, 2, *words)
    assert snapshot(runner.home, runner.cache) == before, "the command changed the state root or the cache"
    return proc


def results(proc: subprocess.CompletedProcess) -> "list[dict]":
    """The results of `probe --json -`, which follows the lines of the table on stdout."""
    assert "{" in proc.stdout, "no JSON report on stdout:\n%s\n%s" % (proc.stdout, proc.stderr[-3000:])
    return json.loads(proc.stdout)["results"]


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str):
    """A tmpfs of `size` at `path`, unmounted afterwards whatever happened."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "postroj-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        unmount(path)


@contextlib.contextmanager
def read_only(path: Path):
    """`path` as a read-only bind mount of itself, unmounted afterwards whatever happened."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        unmount(path)


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(directory: Path) -> None:
    """Write zeros into `directory` until its file system has no block left."""
    with open(directory / "filler", "wb") as handle:
        block = b"\0" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                handle.write(block)
                handle.flush()
    with contextlib.suppress(OSError):  # what the last whole block did not fit
        with open(directory / "filler", "ab") as handle:
            while True:
                handle.write(b"\0")
                handle.flush()
    st = os.statvfs(str(directory))
    assert st.f_bavail == 0, "%d blocks still free" % st.f_bavail


def link_images(home: Path, like: Path) -> None:
    """home/images/NAME -> the versions `like`'s links point at, as the `images` fixture makes them."""
    (home / "images").mkdir(parents=True)
    for link in (like / "images").iterdir():
        if not link.name.startswith("."):
            os.symlink(os.path.realpath(link), home / "images" / link.name)


def warm_package_lists(runner: Postroj, release: str = "debian-12") -> Path:
    """Copy the rig's package lists into the runner's own package cache of `release`: apt-get update is then
    a few conditional requests, and the cache's lock is the test's alone (not the rig's, which other runs share)."""
    rig_lists = rig.RIG_CACHE / "package-cache" / "packages" / release / "lists"
    cache = runner.cache / "packages" / release
    cache.mkdir(parents=True, exist_ok=True)
    if rig_lists.is_dir():
        subprocess.run(["cp", "-a", "--reflink=auto", str(rig_lists), str(cache / "lists")], check=True)
    return cache


def marker(seconds: int) -> str:
    """`sleep SECONDS.RANDOM`: a command whose process the test finds by its command line."""
    return "sleep %d.%06d" % (seconds, random.randrange(10 ** 6))


def running(command: str) -> "list":
    """The processes of `command` itself (in a container), not postroj's or a shell's that name it."""
    return [p for p in rig.processes_mentioning(command) if "postroj" not in p[1] and "sh -c" not in p[1]]


# ==============================================================================
# 1, 5, 7. Probe reports: written in place, checked first, well-formed
# ==============================================================================


def test_probe_reports_through_a_device_and_a_link_are_written_in_place_and_well_formed(images, tmp_path):
    """--json to a character device (1:3, as /dev/null) and --junit through a link; the command prints what
    XML cannot carry (U+FFFF, U+FFFE, a control character)."""
    out = tmp_path / "out"
    out.mkdir()
    null = out / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "junit.xml").write_text("the last run's report\n")
    link = out / "junit.xml"
    link.symlink_to("../reports/junit.xml")
    before = listing(out), listing(reports)
    proc = images("probe", "--image", "debian-bookworm", "--command", r"printf 'a\357\277\277b\357\277\276c\001d\n'",
                  "--json", str(null), "--junit", str(link), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3), \
        "the device was replaced by a regular file"
    assert link.is_symlink() and os.readlink(link) == "../reports/junit.xml", "the link was replaced"
    assert (listing(out), listing(reports)) == before, "a temporary file is left"
    data = (reports / "junit.xml").read_bytes()
    try:
        xml.parsers.expat.ParserCreate().Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        pytest.fail("expat rejects the JUnit file: %s\n%r" % (exc, data[:3000]))
    printed = ET.fromstring(data).find("testsuite/testcase/system-out").text
    assert printed.startswith("a") and printed.rstrip().endswith("d") and all(c in printed for c in "abcd"), \
        repr(printed)
    assert not {"\uffff", "\ufffe", "\x01"} & set(printed), repr(printed)


@pytest.mark.parametrize("option", ["--json", "--junit"])
@pytest.mark.parametrize("where", ["a directory", "an unwritable directory"])
def test_probe_report_paths_are_checked_before_anything_boots(images, tmp_path, option, where):
    """The path first: a run that would end in a traceback after every probe ran ends before the first."""
    directory = tmp_path / "out" / "reports"
    directory.mkdir(parents=True)
    if where == "a directory":
        target, prefix = directory, ()
    else:
        directory.chmod(0o555)  # as root, only a process without CAP_DAC_OVERRIDE cannot write there
        target, prefix = directory / "report", UNPRIVILEGED
    before = listing(directory.parent)
    try:
        t0 = time.monotonic()
        refused(images, ["probe", "--image", "debian-bookworm", "--command", "true", option, target],
                "cannot write", str(target), prefix=prefix, timeout=300)
        assert time.monotonic() - t0 < 30, "took %.1f s: a container booted first" % (time.monotonic() - t0)
    finally:
        directory.chmod(0o755)
    assert listing(directory.parent) == before and listing(directory) == [], "something was written"


# ==============================================================================
# 6. --install-timeout bounds an install; the package cache is held for downloads only, and a probe
#    waiting for it says so
# ==============================================================================


def test_a_postinst_that_never_exits_fails_within_the_install_timeout(images, tmp_path):
    warm_package_lists(images)
    hang = marker(86400)
    deb = rig.build_deb(tmp_path, "postroj-hang", "a postinst that never exits", {}, postinst="exec %s\n" % hang)
    proc = images.popen("probe", "--image", "debian-bookworm", "--package", str(deb), "--check-unit", "postroj-hang",
                        "--check-network", "tcp://127.0.0.1:9", "--timeout", "3", "--install-timeout", "5",
                        "--json", "-")
    try:
        wait_for(lambda: running(hang) or proc.poll() is not None, timeout=120, what="the postinst")
        assert running(hang), "the postinst never ran: %s" % (proc.communicate(),)
        started = time.monotonic()
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "Traceback" not in err, out + err
    assert took < 60, "the install ran %.0f s after its postinst started" % took
    report = results(subprocess.CompletedProcess([], 1, out, err))
    assert [(r["kind"], r["status"]) for r in report] == [("package", "fail"), ("unit", "skip"), ("network", "skip")]
    assert "did not finish within 5" in report[0]["reason"], report[0]
    wait_for(lambda: not running(hang), timeout=20, what="the postinst's end")


def said(lines: "list[str]") -> "list[str]":
    return [line for line in lines if "waiting for" in line and "package cache" in line]


def test_a_postinst_that_takes_its_time_does_not_hold_the_package_cache(images, tmp_path):
    """The installs run in the booted containers from what was downloaded before the boot (issue 23): a second
    probe of the release installs and ends while the first probe's postinst still runs, without waiting."""
    warm_package_lists(images)
    slow = marker(300)
    # ended by the test once the second probe is done: `|| true` lets the postinst succeed then
    first = rig.build_deb(tmp_path / "first", "postroj-slow", "a postinst that takes its time", {},
                          postinst="%s || true\n" % slow)
    second = rig.build_deb(tmp_path / "second", "postroj-quick", "a package that installs at once", {})
    one = images.popen("probe", "--image", "debian-bookworm", "--package", str(first), "--json", "-")
    try:
        wait_for(lambda: running(slow) or one.poll() is not None, timeout=120, what="the first install's postinst")
        assert running(slow), "the first probe's postinst never ran: %s" % (one.communicate(),)
        two = images("-v", "probe", "--image", "debian-bookworm", "--package", str(second), "--json", "-",
                     timeout=120)
        still_running = running(slow)
        rig.kill_processes(still_running)
        out_one, _ = one.communicate(timeout=120)
    finally:
        if one.poll() is None:
            one.kill()
            one.wait()
    assert two.returncode == 0 and not said(two.stderr.splitlines()), two.stdout + two.stderr
    assert still_running, "the second probe ended only after the first one's postinst"
    assert [r["status"] for r in json.loads(two.stdout)["results"]] == ["pass"]
    assert one.returncode == 0
    assert [r["status"] for r in json.loads(out_one)["results"]] == ["pass"]


def test_a_probe_waiting_for_the_package_cache_says_so(images, tmp_path):
    """The release's package cache is locked while a probe downloads into it; a probe that finds it locked says
    that it waits for it (with -v) instead of waiting without a word, and goes on when it is free. The test holds
    the lock itself, as another probe's download would."""
    cache = warm_package_lists(images)
    deb = rig.build_deb(tmp_path, "postroj-quick", "a package that installs at once", {})
    lines: "list[str]" = []
    with open(cache / ".postroj.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = images.popen("-v", "probe", "--image", "debian-bookworm", "--package", str(deb), "--json", "-")
        try:
            reader = threading.Thread(target=lambda: [lines.append(line) for line in proc.stderr], daemon=True)
            reader.start()
            wait_for(lambda: said(lines) or proc.poll() is not None, timeout=60, what="a word from the waiting probe")
            assert proc.poll() is None, "the probe did not wait for the locked cache: %s" % "".join(lines)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        fcntl.flock(lock, fcntl.LOCK_UN)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)
    assert said(lines), "".join(lines)
    assert [r["status"] for r in json.loads(out)["results"]] == ["pass"]


# ==============================================================================
# 10. Broken state directories
# ==============================================================================

COMMANDS = {
    "probe": ["probe", "--image", "debian-bookworm", "--command", "true"],
    "container": ["container", "debian-bookworm", "--", "true"],
    "image": ["image", "{tarball}", "--name", "fresh"],
    "rm": ["rm", "debian-bookworm"],
    "autopkgtest-virt": None,  # `open`, after `ok`, fails: the server exits 12
}


def broken_run(runner: Postroj, command: str) -> subprocess.CompletedProcess:
    if command == "autopkgtest-virt":
        code, lines, err = serve(runner, ["open", "close", "quit"], "debian-bookworm")
        return subprocess.CompletedProcess([], code, "\n".join(lines), err)
    args = [str(rig.rootfs_tarball("bookworm")) if a == "{tarball}" else a for a in COMMANDS[command]]
    return run(runner, *args)


def expected_code(command: str) -> int:
    return 12 if command == "autopkgtest-virt" else 1


# rm reads and writes no POSTROJ_CACHE: it has no case with a broken one
@pytest.mark.parametrize("variable, command", [("POSTROJ_HOME", c) for c in COMMANDS] +
                         [("POSTROJ_CACHE", c) for c in COMMANDS if c != "rm"])
def test_state_directory_that_is_a_file(images, tmp_path, variable, command):
    """autopkgtest-virt refuses this before `ok` (exit 1, as an image that is not there), the way
    test_bad_images_and_options_are_refused_before_ok wants it: it is known before anything starts."""
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    runner = Postroj(images.pyz, path if variable == "POSTROJ_HOME" else images.home,
                     path if variable == "POSTROJ_CACHE" else images.cache, images.extra_env)
    before = snapshot(images.home, tmp_path / "no-cache")
    proc = broken_run(runner, command)
    clean_error(proc, 1, variable, "not a directory")
    assert path.read_text() == "not a directory\n"
    assert snapshot(images.home, tmp_path / "no-cache") == before, "something was half-written in POSTROJ_HOME"


READERS = [["list-images"], ["machines"], ["vm", "list"]]
VM_WRITERS = [["vm", "up", "ubuntu-24.04"], ["vm", "run", "ubuntu-24.04", "--", "true"], ["vm", "destroy", "ubuntu-24.04"]]


@pytest.mark.parametrize("command", READERS + VM_WRITERS, ids=" ".join)
def test_every_other_command_refuses_a_home_that_is_a_file(images, tmp_path, command):
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    proc = run(Postroj(images.pyz, path, images.cache, images.extra_env), *command)
    clean_error(proc, 1, "POSTROJ_HOME", "not a directory")
    assert path.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_commands_that_only_read_work_on_a_read_only_home(images, command):
    with read_only(images.home):
        proc = run(images, *command)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_doctor_names_a_state_directory_that_cannot_serve(images, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    proc = run(Postroj(images.pyz, images.home, path, images.extra_env), "doctor", "--json")
    assert proc.returncode == 1, proc.stderr
    check = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["state directories"]
    assert not check["ok"] and "POSTROJ_CACHE" in check["detail"] and "not a directory" in check["detail"], check
    assert "writable directory" in check["fix"]
    assert {c["name"]: c for c in json.loads(run(images, "doctor", "--json").stdout)["checks"]}[
        "state directories"]["ok"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_read_only_state_root(images, command):
    with read_only(images.home):
        proc = broken_run(images, command)
    clean_error(proc, expected_code(command), stdout=command == "autopkgtest-virt")
    assert "read-only" in proc.stderr or "Read-only file system" in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["probe", "container", "autopkgtest-virt"])
def test_full_state_root_during_boot(images, tmp_path, command):
    """POSTROJ_HOME on a tmpfs that is full before the container starts: its state file cannot be written."""
    with mounted_tmpfs(tmp_path / "full", "2m") as home:
        link_images(home, images.home)
        runner = Postroj(images.pyz, home, images.cache, images.extra_env)
        fill(home)
        proc = broken_run(runner, command)
        left = listing(home / "run") if (home / "run").is_dir() else []
        mounts = [m for m in rig.mounts_mentioning(str(home)) if m.split()[4] != str(home)]
        wait_for(lambda: not nspawn_of(home), timeout=20, what="no nspawn left")
    if command == "probe":  # issue 33: a full disk is that image's, with its reason and a hint; before anything
        # of the package ran, the image was not tested (issue 38: exit 3, ERROR)
        assert proc.returncode == 3 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        assert "ERROR  debian-bookworm" in proc.stdout, proc.stdout
        assert "No space left on device" in proc.stdout + proc.stderr and "hint: " in proc.stdout + proc.stderr
    else:
        clean_error(proc, expected_code(command), stdout=command == "autopkgtest-virt")
    assert left == [], "runtime state left behind: %s" % left
    assert mounts == [], mounts


# ==============================================================================
# 11. Directories and files that are no image
# ==============================================================================


@pytest.mark.parametrize("holds", ["POSTROJ_HOME", "POSTROJ_CACHE"])
def test_image_of_a_directory_holding_the_state_is_refused(images, tmp_path, holds):
    """A small tmpfs: a postroj that copied a directory into itself would fill it, not the host's disk."""
    with mounted_tmpfs(tmp_path / "tree", "16m") as tree:
        (tree / "etc").mkdir()
        (tree / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
        inside = tree / "var" / "lib" / "postroj"
        runner = Postroj(images.pyz, inside if holds == "POSTROJ_HOME" else images.home,
                         inside if holds == "POSTROJ_CACHE" else images.cache, images.extra_env)
        inside.mkdir(parents=True)
        refused(runner, ["image", tree, "--name", "myself"], str(tree))
        assert [n for n in listing(inside) if n != "code"] == [], "something was written into the state directory"


def test_image_of_a_directory_without_os_release_is_refused_before_copying(images, tmp_path):
    tree = tmp_path / "not-a-root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("nothing\n")
    refused(images, ["image", tree, "--name", "nothing"], "no os-release")


def test_image_of_a_fifo_is_refused_at_once(images, tmp_path):
    fifo = tmp_path / "x.tar"
    os.mkfifo(fifo)
    refused(images, ["image", fifo, "--name", "fifo"], "not a regular file", timeout=30)


# ==============================================================================
# 13. Broken state files, an unreadable --copy, the environment of nspawn
# ==============================================================================

CORRUPT = {"truncated": '{"name": "mangled", "os_release": "Deb', "empty": "", "not an object": "[1, 2]"}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_image_json_is_a_broken_image(images, content):
    version = images.home / "images" / ".versions" / "mangled-1"
    (version / "rootfs").mkdir(parents=True)
    (version / "image.json").write_text(content)
    (images.home / "images" / "mangled").symlink_to(".versions/mangled-1/rootfs")
    for args in (["container", "mangled", "--", "true"], ["probe", "--image", "mangled", "--command", "true"]):
        proc = run(images, *args)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, "exit %d\n%s" % (proc.returncode, text)
        assert "Traceback" not in text, text
        assert "image mangled is broken" in text and "not acquired" not in text, text
        assert "postroj image mangled --force" in text or "postroj rm mangled" in text, text
    proc = run(images, "list-images")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "debian-bookworm" in proc.stdout, "the other images are still listed"
    assert "mangled" in proc.stderr, "no warning names the broken image:\n%s" % proc.stderr


CORRUPT_STATE = {"not JSON": "{not json", "not an object": "[]",
                 "wrong types": '{"machine": "postroj-ghost", "nspawn_pid": "twelve", "leader": []}'}


@pytest.mark.parametrize("content", CORRUPT_STATE.values(), ids=CORRUPT_STATE.keys())
def test_gc_removes_a_corrupt_run_state_file(images, content):
    run_dir = images.home / "run"
    run_dir.mkdir()
    (run_dir / "postroj-ghost.json").write_text(content)
    proc = run(images, "machines")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    proc = run(images, "gc")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "removed machine postroj-ghost" in proc.stdout, proc.stdout + proc.stderr
    assert listing(run_dir) == []


def test_an_unreadable_copy_fails_its_probe_and_the_run_goes_on(images):
    """A source that exists and cannot be read, even by root: /proc/PID/mem of a sleeping process, a regular
    file whose first read is EIO. (A mode-000 file under setpriv without CAP_DAC_OVERRIDE, as test_bad_input
    does it, cannot be used here: such a postroj cannot boot a container, whose overlay work directory has
    mode 000.)"""
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        source = "/proc/%d/mem" % sleeper.pid
        proc = run(images, "probe", "--image", "debian-bookworm", "--copy", "%s:/etc/memory" % source,
                   "--command", "true", "--json", "-")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = results(proc)
    assert [(r["kind"], r["status"]) for r in report] == [("copy", "fail"), ("command", "pass")], report
    assert report[0]["reason"].strip(), "a failure says why"


def test_nspawn_gets_an_environment_built_from_an_allowlist(images):
    env = {"POSTROJ_TEST_SECRET": "x", "SYSTEMD_POSTROJ_TEST": "kept", "no_proxy": "postroj.invalid",
           "LANG": "C.UTF-8", "TERM": "dumb"}
    proc = subprocess.Popen(images.argv("container", "debian-bookworm", "--", "sleep", "5"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(images.env, **env))
    seen: "dict[int, dict[str, str]]" = {}

    def nspawn_environments():
        for pid, _ in nspawn_of(images.home):
            with contextlib.suppress(OSError):
                if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == "systemd-nspawn":
                    data = Path("/proc/%d/environ" % pid).read_bytes()
                    seen[pid] = dict(item.split("=", 1) for item in data.decode().split("\0") if "=" in item)
        return seen

    try:
        wait_for(lambda: nspawn_environments() or proc.poll() is not None, timeout=120, step=0.05,
                 what="systemd-nspawn")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert seen, "no systemd-nspawn seen"
    allowed = {k: v for k, v in env.items() if k != "POSTROJ_TEST_SECRET"}
    for environment in seen.values():
        leaked = sorted({"POSTROJ_TEST_SECRET", "POSTROJ_HOME", "POSTROJ_CACHE"} & set(environment))
        assert not leaked, "%s reached systemd-nspawn, whose environment is %s" % (leaked, sorted(environment))
        assert {k: environment.get(k) for k in allowed} == allowed, "allowed variables missing: %s" % (
            sorted(environment))
        assert environment.get("PATH"), sorted(environment)


# ==============================================================================
# 14. Messages that say what is wrong with a --package
# ==============================================================================


def test_a_package_that_is_a_symlink_loop(images, tmp_path):
    loop = tmp_path / "loop.deb"
    loop.symlink_to("loop.deb")
    refused(images, ["probe", "--package", loop, "--command", "true"], "symlink loop")


@pytest.mark.parametrize("name", ["hello.deb", "hello"])
def test_a_package_that_is_a_directory(images, tmp_path, name):
    (tmp_path / name).mkdir()
    refused(images, ["probe", "--package", tmp_path / name, "--command", "true"], "is a directory")
