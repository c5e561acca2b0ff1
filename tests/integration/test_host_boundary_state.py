"""Issue 33 through the real postroj.pyz, as root: postroj's own state is its own, and nothing else. `gc` never
follows a link out of a state directory, and never removes the cgroup of a postroj of another POSTROJ_HOME running
in a PID namespace of its own; existing state directories keep their mode; what a SIGKILLed systemd-nspawn or a
SIGKILLed bootstrap leaves is ended; a dependency layer whose layer.json is not a plain JSON file (`"size":
Infinity`, a FIFO, a link) is a broken layer to probe and gc, never a traceback, a hang or a touched link target;
NUL in a copy path is a protocol failure; report paths that cannot be written (an immutable file, a socket, a FIFO
nobody reads) are known before the run; a machine name that is another machine's state file is refused; a
--setenv PATH does not hide nsenter. What needs no container is in tests/unit/test_host_boundary_inputs.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rig
from postroj import CGROUP_PREFIX, process_cmdline, remove_cgroups, systemd_cgroup_roots
from rig import Postroj, wait_for
from test_autopkgtest import assert_nothing_left
from test_host_safety_input import clean_error, link_images, listing, run, warm_package_lists
from test_host_safety_testbed import SCRATCH, Session, payload, processes_touching, q, remove_leftover_cgroups


# ==============================================================================
# Helpers
# ==============================================================================


def snapshot(root: Path) -> "dict[str, tuple]":
    """Everything below `root` a removal or a write could change: kind, mode, content, link target, mtime."""
    found = {}
    for path, st in sorted((str(p), os.lstat(str(p))) for p in root.rglob("*")):
        if stat.S_ISLNK(st.st_mode):
            found[path] = ("link", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            found[path] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, Path(path).read_bytes())
        else:
            found[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return found


def cgroup_pids(top: Path) -> "set[int]":
    """The processes in a cgroup and below it."""
    found = set()
    for directory, _, _ in os.walk(str(top)):
        with contextlib.suppress(OSError, ValueError):
            found.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
    return found


def run_cgroups_of(pids: "set[int]", roots: "list[Path]") -> "list[Path]":
    """The run cgroups (postroj.run-*) below `roots` that hold one of `pids`."""
    found = []
    for root in roots:
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                if entry.name.startswith(CGROUP_PREFIX + "run-") and cgroup_pids(entry) & pids:
                    found.append(entry)
    return found


@contextlib.contextmanager
def cgroup_of_its_own():
    """A cgroup in each of systemd's hierarchies for the processes of one test (joined with `join`), removed with
    what is left in it: postroj run there sees the cgroups of this test only, never another run's on this host."""
    name = "%stest33-%d-%s" % (CGROUP_PREFIX, os.getpid(), os.urandom(4).hex())
    made = [root / name for root in systemd_cgroup_roots()]
    for cgroup in made:
        cgroup.mkdir()

    def join() -> None:
        for cgroup in made:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    try:
        yield made, join
    finally:
        remove_leftover_cgroups([str(c) for c in made])
        remove_cgroups([str(c) for c in made], kill=True)


def children(pid: int) -> "list[int]":
    with contextlib.suppress(OSError):
        return [int(c) for c in Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()]
    return []


def gone(pid: int) -> bool:
    try:
        data = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return True
    return data[data.rindex(")") + 2] == "Z"


# ==============================================================================
# Item 3: gc never follows a link out of a state directory
# ==============================================================================

# what gc removes in each state directory when it is a directory of postroj's own
STALE = {
    "tmp": {"debian-bookworm.abc123/rootfs/etc/os-release": "ID=debian\n", ".doomed-x@1/rootfs/keep": "x\n"},
    "run": {"ghost.json": "{", "ghost/upper/etc/hostname": "ghost\n", "stray/file": "x\n"},
    "layers": {".making-%s-1/tree/keep" % ("a" * 32): "x\n", "%s/tree/keep" % ("b" * 32): "x\n"},
}


@pytest.mark.parametrize("name", sorted(STALE))
def test_gc_never_removes_what_a_state_directory_link_leads_to(postroj, tmp_path, name):
    victim = tmp_path / "victim"
    for relative, text in STALE[name].items():
        (victim / relative).parent.mkdir(parents=True, exist_ok=True)
        (victim / relative).write_text(text)
    postroj.home.mkdir()
    link = postroj.home / name
    link.symlink_to(victim)
    before = snapshot(victim)
    try:
        proc = run(postroj, "gc", timeout=60)
        # gc warns and goes on, or refuses the link as an error: either way it names the link and removes nothing
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        assert snapshot(victim) == before, "gc removed what %s leads to: %s left of %s" % (
            link, sorted(snapshot(victim)), sorted(before))
        assert link.is_symlink() and os.readlink(str(link)) == str(victim)
        assert str(link) in proc.stderr, "no warning names the link:\n%s" % proc.stderr
    finally:
        link.unlink()  # what the link leads to is the test's, not a leftover of postroj's


# ==============================================================================
# Item 4: gc of one POSTROJ_HOME, a postroj of another in a PID namespace of its own
# ==============================================================================

# PID 1 of a new PID namespace: makes the next PID the one given, starts postroj with it, passes SIGTERM on
IN_A_PID_NAMESPACE = r"""
import os, signal, subprocess, sys
pid, pidfile = int(sys.argv[1]), sys.argv[2]
with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
    handle.write(str(pid - 1))
proc = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL)
with open(pidfile + ".tmp", "w") as handle:
    handle.write(str(proc.pid))
os.rename(pidfile + ".tmp", pidfile)
signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
sys.exit(proc.wait())
"""


def free_host_pid() -> int:
    """A PID no process of this namespace has: what `gc` here finds gone."""
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    while True:
        pid = random.randrange(limit // 2, limit - 100)
        if not any(os.path.exists("/proc/%d" % p) for p in range(pid - 5, pid + 5)):
            return pid


def test_gc_leaves_the_run_cgroup_of_another_home_whose_postroj_runs_in_its_own_pid_namespace(pyz, tmp_path):
    """postroj B bootstraps an image in a PID namespace of its own, with a PID no process here has; gc of
    POSTROJ_HOME A, here, while mmdebstrap runs in B's run cgroup. Both run in a cgroup of the test's own, so that
    neither sees the cgroups of other runs on this host."""
    mine = Postroj(pyz, tmp_path / "home", tmp_path / "cache", {})
    other = Postroj(pyz, tmp_path / "other-home", tmp_path / "other-cache", {})
    pid = free_host_pid()
    pidfile = tmp_path / "postroj-b.pid"
    with cgroup_of_its_own() as (cgroups, join):
        helper = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--", sys.executable, "-c",
             IN_A_PID_NAMESPACE, str(pid), str(pidfile), *other.argv("image", "debian-bookworm", "--via", "bootstrap")],
            env=other.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=join)
        try:
            wait_for(lambda: helper.poll() is not None or pidfile.exists(), timeout=30, what="postroj B's start")
            assert helper.poll() is None, helper.communicate()
            assert int(pidfile.read_text()) == pid, "postroj B did not get the PID %d: the test proves nothing" % pid

            def b_run_cgroups() -> "list[Path]":
                return run_cgroups_of({p for p, _ in processes_touching(str(other.home))}, cgroups)

            staged = wait_for(lambda: helper.poll() is not None or b_run_cgroups(), timeout=120, step=0.1,
                              what="B's bootstrap in its run cgroup")
            assert helper.poll() is None, "postroj B ended first: %s" % (helper.communicate(),)
            assert staged is not True
            wait_for(lambda: rig.staging_has(other.home, "rootfs"), timeout=60, step=0.1, what="B's staging")
            gc = subprocess.run(mine.argv("gc"), env=mine.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=join)
            assert gc.returncode == 0, gc.stderr
            left = [c for c in staged if not c.is_dir()]
            assert left == [], "gc of %s removed %s, of a postroj of %s:\n%s" % (mine.home, left, other.home, gc.stdout)
            assert helper.poll() is None, "postroj B's bootstrap ended under gc: %s" % (helper.communicate(),)
            assert all(cgroup_pids(c) for c in staged), "gc ended the processes of B's run cgroup"
        finally:
            for child in children(helper.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)  # postroj B ends its bootstrap and cleans up
            try:
                helper.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.communicate()
            rig.kill_processes(processes_touching(str(tmp_path)))


# ==============================================================================
# Item 5: existing state directories keep their mode
# ==============================================================================


@pytest.mark.parametrize("linked", ["POSTROJ_HOME", "POSTROJ_CACHE"])
def test_existing_state_directories_keep_their_mode(images, tmp_path, linked):
    """POSTROJ_HOME and POSTROJ_CACHE that exist at 1777, one reached through a link, the other directly: `image`
    (which takes its lock in POSTROJ_HOME) and autopkgtest-virt (which makes the release's package cache in
    POSTROJ_CACHE) leave them at 1777."""
    home, cache = tmp_path / "shared-home", tmp_path / "shared-cache"
    link_images(home, images.home)
    cache.mkdir()
    for directory in (home, cache):
        os.chmod(str(directory), 0o1777)
    via = tmp_path / "via-link"
    via.symlink_to(home if linked == "POSTROJ_HOME" else cache)
    runner = Postroj(images.pyz, via if linked == "POSTROJ_HOME" else home,
                     via if linked == "POSTROJ_CACHE" else cache, images.extra_env)
    proc = run(runner, "image", "debian-bookworm")
    assert proc.returncode == 0, proc.stderr
    session = subprocess.run(runner.argv("autopkgtest-virt", "debian-bookworm"), input="quit\n", text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=runner.env, timeout=120)
    assert session.returncode == 0 and session.stdout.splitlines()[:1] == ["ok"], session.stderr
    assert (cache / "packages").is_dir(), "autopkgtest-virt made no package cache: the test proves nothing"
    modes = {str(d): oct(stat.S_IMODE(os.stat(str(d)).st_mode)) for d in (home, cache)}
    assert modes == {str(home): "0o1777", str(cache): "0o1777"}, modes
    assert stat.S_IMODE(os.stat(str(home / "locks")).st_mode) == 0o700, "what postroj made is private"


# ==============================================================================
# Item 12: SIGKILL of systemd-nspawn itself; SIGKILL of postroj during a real bootstrap
# ==============================================================================


def test_postroj_ends_what_a_killed_nspawn_left_in_its_cgroups(images):
    """The guest's systemd, journald... outlive a SIGKILLed nspawn in the container's cgroups: postroj ends them
    and removes the cgroups as it ends."""
    marker = "sleep 60.%06d" % random.randrange(10 ** 6)
    proc = images.popen("container", "debian-bookworm", "--", "sh", "-c", marker)
    state = {"cgroups": []}
    try:
        wait_for(lambda: proc.poll() is not None or payload(images, marker), what="the command")
        assert proc.poll() is None, proc.communicate()
        (state_file,) = (images.home / "run").glob("*.json")
        state = json.loads(state_file.read_text())
        assert state["cgroups"] and all(cgroup_pids(Path(c)) for c in state["cgroups"]), state
        os.kill(state["nspawn_pid"], signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("postroj did not end within 30 s of its nspawn's death; left in its cgroups: %s"
                                 % {c: sorted(cgroup_pids(Path(c))) for c in state["cgroups"] if os.path.isdir(c)})
        assert "Traceback" not in err, err
        left: "dict[str, list]" = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = {c: sorted(cgroup_pids(Path(c))) for c in state["cgroups"] if os.path.isdir(c)}
            if not left:
                break
            time.sleep(0.1)
        assert not left, "postroj ended (exit %d) and left the guest in its cgroups: %s" % (proc.returncode, left)
        try:
            wait_for(lambda: gone(state["leader"]), timeout=5, step=0.05, what="the guest's end")
        except AssertionError:
            raise AssertionError("the guest's systemd (PID %d) outlived postroj" % state["leader"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_leftover_cgroups(state["cgroups"])
        images("gc")  # what a check that failed left in POSTROJ_HOME/run
    wait_for(lambda: not payload(images, marker), timeout=10, what="the command's end")
    assert_nothing_left(images)


def test_gc_after_a_killed_bootstrap_ends_mmdebstrap_and_removes_its_staging(postroj, tmp_path):
    proc = postroj.popen("image", "debian-bookworm", "--via", "bootstrap")
    survivors: "list" = []
    cgroups: "list[Path]" = []
    try:
        # mmdebstrap unpacks the essential packages into the staging root
        wait_for(lambda: proc.poll() is not None or rig.staging_has(postroj.home, "rootfs/usr/bin"), timeout=300,
                 step=0.05, what="the bootstrap's unpacking")
        assert proc.poll() is None, proc.communicate()
        time.sleep(1)
        cgroups = run_cgroups_of({p for p, _ in processes_touching(str(postroj.home))}, systemd_cgroup_roots())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        survivors = processes_touching(str(postroj.home))
        gc = run(postroj, "gc", timeout=120)
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert "Directory not empty" not in gc.stderr and "Traceback" not in gc.stderr, gc.stderr
        try:
            wait_for(lambda: not processes_touching(str(postroj.home)), timeout=10, step=0.1, what="no bootstrap")
        except AssertionError:
            raise AssertionError("gc left the killed bootstrap running: %s (%d survived the kill)" % (
                processes_touching(str(postroj.home)), len(survivors)))
        tmp = postroj.home / "tmp"
        assert not tmp.is_dir() or listing(tmp) == [], "gc left the staging: %s" % listing(tmp)
        assert [c for c in cgroups if c.is_dir()] == [], "gc left the bootstrap's run cgroup"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rig.kill_processes(processes_touching(str(tmp_path)))
        remove_leftover_cgroups([str(c) for c in cgroups])


# ==============================================================================
# Items 13, 14, 15: a layer.json that is not a plain JSON file
# ==============================================================================

BROKEN = ["infinite-size", "fifo", "link"]


def break_layer(directory: Path, how: str, outside: Path) -> Path:
    """Replace the layer's layer.json as `how` says; the link's target (a whole layer's JSON, outside)."""
    stamp = directory / "layer.json"
    data = json.loads(stamp.read_text()) if stamp.is_file() else {}
    stamp.unlink()
    if how == "infinite-size":
        stamp.write_text(json.dumps(dict(data, size=12345)).replace("12345", "Infinity"))
    elif how == "fifo":
        os.mkfifo(str(stamp))
    else:
        outside.write_text(json.dumps(data))
        stamp.symlink_to(outside)
    return outside


def crafted_layer(home: Path, root: Path) -> Path:
    """A whole layer, as make_layer writes it, used a minute ago."""
    directory = home / "layers" / ("c" * 32)
    (directory / "tree").mkdir(parents=True)
    (directory / "layer.json").write_text(json.dumps({
        "image": "debian-bookworm", "version": "debian-bookworm@1", "root": str(root), "packages": ["hello=2.10-3"],
        "recommends": False, "before": {}, "accounts": [], "made": "2026-01-01T00:00:00Z", "seconds": 1.0,
        "size": 4096}))
    return directory


@pytest.mark.parametrize("how", BROKEN)
def test_gc_removes_a_layer_whose_stamp_is_not_a_file_and_never_blocks(postroj, tmp_path, how):
    layer = crafted_layer(postroj.home, tmp_path)  # its image version (root) is there
    outside = break_layer(layer, how, tmp_path / "outside.json")
    recent = time.time() - 60
    if how == "link":
        os.utime(str(outside), (recent, recent))
        before = (outside.stat().st_mtime_ns, outside.read_bytes())
    proc = run(postroj, "gc", timeout=30)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert not os.path.lexists(str(layer)), "gc kept the broken layer: %s" % proc.stdout
    if how == "link":
        assert (outside.stat().st_mtime_ns, outside.read_bytes()) == before, "gc touched the link's target"


@pytest.fixture(scope="module")
def layered(pyz, shared_images, registries_conf, tmp_path_factory) -> "dict":
    """A real dependency layer: the probe of a package that depends on hello made it. Its directory, key and the
    package; each test copies it into a POSTROJ_HOME of its own."""
    root = tmp_path_factory.mktemp("layered")
    runner = Postroj(pyz, root / "home", root / "cache", {"CONTAINERS_REGISTRIES_CONF": str(registries_conf)})
    link_images(runner.home, shared_images)
    warm_package_lists(runner)
    deb = rig.build_deb(root, "postroj-needs-hello", "a package with a dependency", {}, depends="hello")
    proc = runner("probe", "--image", "debian-bookworm", "--package", str(deb), "--json", "-", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (key,) = [layer["key"] for layer in json.loads(runner("list-images", "--json", check=0).stdout)["layers"]]
    return {"directory": runner.home / "layers" / key, "key": key, "deb": deb, "lists": runner.cache}


@pytest.mark.parametrize("how", BROKEN)
def test_a_probe_takes_a_layer_whose_stamp_is_not_a_file_for_broken(images, layered, tmp_path, how):
    """The probe of the package whose layer it is: no traceback, no hang, the layer made again; a link's target is
    neither used nor touched."""
    (images.home / "layers").mkdir()
    layer = images.home / "layers" / layered["key"]
    subprocess.run(["cp", "-a", str(layered["directory"]), str(layer)], check=True)
    warm_package_lists(images)
    outside = break_layer(layer, how, tmp_path / "outside.json")
    if how == "link":
        old = time.time() - 3600
        os.utime(str(outside), (old, old))
        before = (outside.stat().st_mtime_ns, outside.read_bytes())
    proc = run(images, "probe", "--image", "debian-bookworm", "--package", str(layered["deb"]), "--json", "-",
               timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["results"]
    assert rows and all(r["status"] == "pass" for r in rows), rows
    stamp = layer / "layer.json"
    assert stat.S_ISREG(os.lstat(str(stamp)).st_mode), "the broken layer was used as it was"
    if how == "link":
        assert (outside.stat().st_mtime_ns, outside.read_bytes()) == before, "the probe touched the link's target"
    assert_nothing_left(images)


# ==============================================================================
# Item 13: NUL in a copy path
# ==============================================================================


@pytest.mark.parametrize("direction", ["copyup", "copydown"])
def test_a_nul_in_a_copy_path_is_a_protocol_failure(images, tmp_path, direction):
    source = tmp_path / "source.txt"
    source.write_text("copied down\n")
    out = tmp_path / "out"
    out.mkdir()
    command = {"copyup": "copyup /etc/host%%00name %s" % q(str(out / "hostname")),
               "copydown": "copydown %s%%00x %s/nul" % (q(str(source)), SCRATCH)}[direction]
    with Session(images, "debian-bookworm") as session:
        session.open()
        session.proc.stdin.write(command + "\n")
        session.proc.stdin.flush()
        code = session.proc.wait(timeout=60)
        time.sleep(0.2)  # the reader threads take the last lines
        assert "Traceback" not in session.stderr, session.stderr[-3000:]
        assert code == 12, "exit %d:\n%s" % (code, session.stderr[-3000:])
        assert "autopkgtest-virt-postroj: failure:" in session.stderr, session.stderr[-3000:]
    assert listing(out) == []
    assert_nothing_left(images)


# ==============================================================================
# Items 14, 16: report paths a run could not write, known before it
# ==============================================================================


@contextlib.contextmanager
def unwritable_report(tmp_path: Path, kind: str):
    """An immutable regular file (chattr +i) or a listening socket."""
    if kind == "immutable":
        path = tmp_path / "report.json"
        path.write_text("the last run's report\n")
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        assert path.read_text() == "the last run's report\n"
    else:
        path = tmp_path / "r.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        try:
            yield path
        finally:
            server.close()
        assert stat.S_ISSOCK(os.lstat(str(path)).st_mode)


@pytest.mark.parametrize("option", ["--json", "--junit"])
@pytest.mark.parametrize("kind", ["immutable", "socket"])
def test_a_report_path_that_cannot_be_written_is_refused_before_anything_boots(images, tmp_path, kind, option):
    with unwritable_report(tmp_path, kind) as path:
        started = time.monotonic()
        proc = run(images, "probe", "--image", "debian-bookworm", "--command", "true", option, str(path), timeout=120)
        took = time.monotonic() - started
        clean_error(proc, 2, str(path))
        assert took < 15, "took %.1f s: a container booted first" % took
        assert not (images.home / "run").exists() or listing(images.home / "run") == []


def test_a_report_into_a_fifo_nobody_reads_does_not_block(images, tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(str(fifo))
    proc = run(images, "probe", "--image", "debian-bookworm", "--command", "true", "--json", str(fifo), timeout=30)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and str(fifo) in errors[0] and "reads" in errors[0], proc.stderr
    assert stat.S_ISFIFO(os.lstat(str(fifo)).st_mode)
    assert_nothing_left(images)


# ==============================================================================
# Item 17: a machine name that is another machine's state file; --setenv PATH
# ==============================================================================


def test_a_machine_named_like_a_kept_machines_state_file_is_refused_and_the_machine_survives(images):
    name = "postroj-t33-%s" % os.urandom(3).hex()
    state_file = images.home / "run" / (name + ".json")
    kept = images("container", "debian-bookworm", "--machine", name, "--keep", "--", "true", timeout=120)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    try:
        assert kept.returncode == 0 and state, kept.stderr
        proc = run(images, "container", "debian-bookworm", "--machine", name + ".json", "--", "true", timeout=120)
        clean_error(proc, 2, name + ".json")
        assert state_file.is_file() and json.loads(state_file.read_text())["nspawn_pid"] == state["nspawn_pid"], \
            "the kept machine's state file is gone"
        listed = [m["name"] for m in json.loads(images("machines", "--json", check=0).stdout)["machines"]]
        assert name in listed, listed
        assert "ended %s" % name in images("stop", name, check=0).stdout
    finally:
        pid = state.get("nspawn_pid")
        if pid and not gone(pid) and name in " ".join(process_cmdline(pid)):
            os.kill(pid, signal.SIGKILL)  # the state file went: no `stop` can end it
            wait_for(lambda: gone(pid), timeout=10, what="the kept container's end")
        remove_leftover_cgroups(state.get("cgroups", []))
        images("gc")
    assert_nothing_left(images)


def test_a_setenv_path_does_not_hide_nsenter(images):
    proc = images("container", "debian-bookworm", "--setenv", "PATH=/nonexistent", "--", "/bin/sh", "-c",
                  'echo "PATH is $PATH"', timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PATH is /nonexistent" in proc.stdout, proc.stdout + proc.stderr
    assert_nothing_left(images)
