"""Reliability against the real rig: signals in every phase, sources that fail, a full disk, and
commands that run at the same time. After each fault: no process, mount, held lock, staging
directory or machine registration of postroj remains, nothing half-made is activated, and every
active image still boots. Bad input is in test_faults_input.py."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import rig
from rig import active_images, nspawn_of, staging_has, wait_for

URL_TARBALL = "debian-bookworm-minbase.tar"
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


# ==============================================================================
# Helpers
# ==============================================================================






def size_of(path: Path) -> int:
    """The size of a file that may be renamed or removed while we look (0 then)."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def versions(home: Path) -> "list[str]":
    directory = home / "images" / ".versions"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []



def registered_machines_under(path: Path) -> "list[str]":
    """Machines registered with systemd-machined whose root lies below `path`."""
    found = []
    machines = Path("/run/systemd/machines")
    if machines.is_dir():
        for entry in machines.iterdir():
            try:
                text = entry.read_text()
            except OSError:
                continue
            if "ROOT=%s" % path in text:
                found.append(entry.name)
    return found


def postroj_processes(home: Path, *markers: str) -> "list":
    """Processes whose command line names the state root (nspawn, tar, skopeo...) or one of `markers`."""
    found = rig.processes_mentioning(str(home))
    for marker in markers:
        found += rig.processes_mentioning(marker)
    return found


def assert_nothing_left(runner, *markers: str) -> None:
    """No process, mount, held lock, runtime state, staging directory or registration of `runner`'s root."""
    home = runner.home
    try:
        wait_for(lambda: not postroj_processes(home, *markers), timeout=20, step=0.05, what="no processes left")
    except AssertionError:
        left = postroj_processes(home, *markers)
        rig.kill_processes(left)
        raise AssertionError("processes left behind: %s" % left)
    # the state root itself may be a test's own tmpfs; what matters is what is mounted below it
    mounts = [m for m in rig.mounts_mentioning(str(home)) if m.split()[4] != str(home)]
    assert mounts == [], mounts
    for directory in ("run", "tmp"):
        path = home / directory
        assert not path.exists() or sorted(p.name for p in path.iterdir()) == [], \
            "%s left behind: %s" % (directory, sorted(p.name for p in path.iterdir()))
    images = home / "images"
    if images.is_dir():
        stray = [p.name for p in images.iterdir() if p.name.startswith(".") and p.name != ".versions"]
        assert stray == [], "half-made activation links: %s" % stray
    locks = list((home / "locks").glob("*")) if (home / "locks").is_dir() else []
    locks += [Path(v).parent / "image.json" for v in active_images(home).values()]
    held = [str(p) for p in locks if rig.lock_held_by_run_of(p, home)]
    assert held == [], "locks still held: %s" % held
    assert registered_machines_under(home) == []


def assert_every_active_image_boots(runner) -> None:
    names = sorted(active_images(runner.home))
    assert names, "no active image to boot"
    proc = runner("probe", "--all", "--include-eol", "--no-pull", "--command", "systemctl is-system-running --wait || true",
                  "--json", "-", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert sorted(r["image"] for r in report["results"]) == names
    assert all(r["output"] in ("running", "degraded") for r in report["results"]), report


def clean_error(proc, *words: str) -> str:
    """A runtime failure: exit 1, an `error:` line, each of `words` on stderr, no traceback."""
    assert proc.returncode == 1, "exit %d\n%s" % (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr
    for word in words:
        assert word in proc.stderr, "%r not in the error:\n%s" % (word, proc.stderr[-3000:])
    return proc.stderr


def share_packages(runner) -> None:
    """Let provisioning read the .debs from the rig's package cache, as the shared images do."""
    runner.cache.mkdir(parents=True, exist_ok=True)
    target = Path(os.environ.get("POSTROJ_RIG_CACHE", str(rig.RIG_CACHE))) / "package-cache" / "packages"
    target.mkdir(parents=True, exist_ok=True)
    if not (runner.cache / "packages").exists():
        os.symlink(target, runner.cache / "packages")


@pytest.fixture(scope="module")
def flaky_server(tmp_path_factory):
    """The rig's HTTP server on a root of its own whose faults can be switched on and off for the same URL:
    `server.server.fault = "404" | "500" | "close" | "short" | ""`."""
    root = tmp_path_factory.mktemp("flaky-www")
    source = rig.rootfs_tarball("bookworm")
    try:
        os.link(source, root / URL_TARBALL)
    except OSError:
        shutil.copyfile(source, root / URL_TARBALL)
    digest = subprocess.run(["sha256sum", str(source)], stdout=subprocess.PIPE, text=True, check=True).stdout.split()[0]
    (root / "SHA256SUMS").write_text("%s  %s\n" % (digest, URL_TARBALL))

    class FlakyHandler(rig.TarballHandler):
        def do_GET(self) -> None:
            fault = self.server.fault  # type: ignore[attr-defined]
            if fault:
                self.server.log.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
                return self.fault(fault, self.path)
            return super().do_GET()

    server = rig.HTTPServer(root)
    server.server.RequestHandlerClass = functools.partial(FlakyHandler, directory=str(root))
    server.server.fault = ""  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ==============================================================================
# Signals
# ==============================================================================


@contextlib.contextmanager
def ended_afterwards(proc: subprocess.Popen):
    """The test's postroj is gone when the block ends, also when the block fails."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def signal_and_wait(proc: subprocess.Popen, signum: int) -> "tuple[str, str]":
    """Send `signum` to a postroj that is still running and wait for it to end: its stdout and stderr."""
    assert proc.poll() is None, "postroj ended before the signal: %s" % (proc.communicate(),)
    proc.send_signal(signum)
    return proc.communicate(timeout=60)






@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["download", "unpack", "provisioning"])
def test_signal_during_acquisition(images, flaky_server, phase, signum):
    """SIGKILL in these phases is test_image.py's; here the ones postroj can catch."""
    share_packages(images)
    before = active_images(images.home)
    url = "%s/%s" % (flaky_server.url, URL_TARBALL)
    downloads = images.cache / "downloads"
    if phase == "download":
        flaky_server.server.throttle = 0.005
    proc = images.popen("image", url, "--name", "victim")
    with ended_afterwards(proc):
        try:
            if phase == "download":
                wait_for(lambda: downloads.is_dir() and any(p.name.endswith(".part") and size_of(p) > 0
                                                            for p in downloads.iterdir()), what="download")
            elif phase == "unpack":
                wait_for(lambda: [p for p in rig.processes_mentioning("--extract") if str(images.home) in p[1]]
                         and staging_has(images.home, "rootfs/etc"), what="unpacking")
            else:
                wait_for(lambda: [p for p in rig.processes_mentioning("apt-get") if str(images.home) in p[1]],
                         timeout=300, what="provisioning")
            _, err = signal_and_wait(proc, signum)
        finally:
            flaky_server.server.throttle = 0.0
    assert proc.returncode == EXIT_STATUS[signum], err
    assert "Traceback" not in err, err
    assert ("interrupted" if signum == signal.SIGINT else "terminated") in err
    assert_nothing_left(images)
    assert active_images(images.home) == before
    assert versions(images.home) == []
    assert_every_active_image_boots(images)


def marker_command(seconds: int = 30) -> str:
    """A command whose processes the test can find by their command line."""
    return "sleep %d.%06d" % (seconds, random.randrange(10 ** 6))


def payload(runner, marker: str) -> "list":
    """Processes running `marker` in a container: nsenter and the command, not postroj (whose argv has it too)."""
    return [p for p in rig.processes_mentioning(marker) if str(runner.pyz) not in p[1]]


# Enough files in the container's overlay that removing them keeps postroj in its teardown for a while.
SLOW_TEARDOWN = "mkdir /junk && cd /junk && seq 1 20000 | xargs touch && touch /teardown-next"


def wait_for_teardown(home: Path) -> None:
    """The payload has finished and nspawn has gone, but postroj is still removing the container's files."""
    run = home / "run"
    wait_for(lambda: any((d / "upper" / "teardown-next").exists() for d in run.iterdir() if d.is_dir())
             if run.is_dir() else False, timeout=120, what="the payload's end")
    wait_for(lambda: not nspawn_of(home), timeout=20, step=0.002, what="nspawn's end")
    assert any(d.is_dir() for d in run.iterdir()), "teardown was over before the signal; make it slower"


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("phase", ["boot", "probe", "teardown"])
def test_signal_to_probe(images, phase, signum):
    marker = marker_command()
    command = {"boot": "true", "probe": marker, "teardown": SLOW_TEARDOWN}[phase]
    before = active_images(images.home)
    proc = images.popen("probe", "--image", "debian-bookworm", "--command", command)
    with ended_afterwards(proc):
        if phase == "boot":
            wait_for(lambda: nspawn_of(images.home), what="nspawn")
        elif phase == "probe":
            wait_for(lambda: payload(images, marker), what="the probe's command")
        else:
            wait_for_teardown(images.home)
        out, err = signal_and_wait(proc, signum)
    assert proc.returncode == EXIT_STATUS[signum], (out, err)
    assert "Traceback" not in err, err
    if signum == signal.SIGKILL:
        # postroj could not clean up; its children ended with it, and gc removes what it left
        wait_for(lambda: not postroj_processes(images.home) and not payload(images, marker), timeout=20,
                 what="children's end")
        assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []
        images("gc", check=0)
    assert_nothing_left(images, marker)
    assert active_images(images.home) == before
    assert_every_active_image_boots(images)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["download", "install"])
def test_signal_while_containers_of_several_images_start(images, tmp_path, phase, signum):
    """--jobs 2: one worker is downloading what a package needs into the package cache (in its container's
    overlay, before the boot), or installing it in its booted container (the postinst runs), when the stop
    lands; the stop must end that work and leave no state, and the worker must not crash (issues 15, 23)."""
    marker = marker_command(300)
    postinst = rig.UNIT_POSTINST.format(unit="postroj-demo.service") + "%s\n" % marker
    deb = rig.build_demo_deb(tmp_path, port=8093, depends="perl-base, hello", postinst=postinst)
    before = active_images(images.home)
    proc = images.popen("probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--jobs", "2",
                        "--package", str(deb), "--check-unit", "postroj-demo")
    with ended_afterwards(proc):
        if phase == "download":
            wait_for(lambda: [p for p in rig.processes_mentioning("--download-only") if str(images.home) in p[1]],
                     timeout=300, what="a package download")
        else:
            wait_for(lambda: payload(images, marker), timeout=300, what="a postinst in a booted container")
        out, err = signal_and_wait(proc, signum)
    assert proc.returncode == EXIT_STATUS[signum], (out, err)
    assert "Traceback" not in err and "FileNotFoundError" not in err, err
    assert_nothing_left(images, marker)
    assert active_images(images.home) == before


def test_repeated_sigterm_does_not_cut_the_clean_up_short(images):
    """mkosi's rule: signals that land during clean-up are ignored, not raised again (issue 15)."""
    proc = images.popen("probe", "--image", "debian-bookworm", "--command", SLOW_TEARDOWN)
    with ended_afterwards(proc):
        wait_for_teardown(images.home)
        proc.send_signal(signal.SIGTERM)
        for _ in range(50):  # 0.5 s of SIGTERMs while postroj removes the container's 20,000 files
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
    # the clean-up ran to its end ("terminated" is printed after it), and the SIGTERMs after the one
    # that ended postroj changed nothing, however late they came
    assert proc.returncode == EXIT_STATUS[signal.SIGTERM], (out, err)
    assert err.rstrip().endswith("terminated"), err
    assert "Traceback" not in err, err
    assert_nothing_left(images)


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_signal_to_container_in_teardown(images, signum):
    """`container` tears down in the main thread, where the signal lands (boot and command: test_container.py)."""
    proc = images.popen("container", "debian-bookworm", "--", "sh", "-c", SLOW_TEARDOWN)
    with ended_afterwards(proc):
        wait_for_teardown(images.home)
        _, err = signal_and_wait(proc, signum)
    assert proc.returncode == EXIT_STATUS[signum], err
    assert "Traceback" not in err, err
    if signum == signal.SIGKILL:
        wait_for(lambda: not postroj_processes(images.home), timeout=20, what="children's end")
        assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []
        images("gc", check=0)
    assert_nothing_left(images)


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_signal_to_the_leader_during_a_probe(images, signum):
    """systemd as PID 1: SIGKILL ends the container and SIGINT reboots it, which ends it too: the probe
    fails at once, not when its timeout runs out. SIGTERM makes systemd re-execute itself: the probe passes."""
    marker = marker_command(4 if signum == signal.SIGTERM else 30)
    proc = images.popen("probe", "--image", "debian-bookworm", "--command", marker, "--timeout", "20", "--json", "-")
    with ended_afterwards(proc):
        wait_for(lambda: payload(images, marker), what="the probe's command")
        (machine,) = json.loads(images("machines", "--json", check=0).stdout)["machines"]
        signalled = time.monotonic()
        os.kill(machine["leader"], signum)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - signalled
    assert "Traceback" not in err, err
    report = json.loads(out)
    (result,) = report["results"]
    if signum == signal.SIGTERM:
        assert proc.returncode == 0 and result["status"] == "pass", (out, err)
    else:
        assert proc.returncode == 1, (out, err)
        assert result["status"] == "fail", result
        assert "timed out" not in result["reason"] and took < 15, \
            "the probe waited %.0f s for a container that had gone: %s" % (took, result["reason"])
    assert_nothing_left(images, marker)
    assert_every_active_image_boots(images)


# ==============================================================================
# Sources that fail
# ==============================================================================


@pytest.mark.parametrize("fault, words", [
    ("404", ["HTTP 404"]),
    ("500", ["HTTP 500"]),
    ("close", ["bytes"]),
    ("short", ["bytes"]),
])
def test_http_fault_then_recovery(postroj, flaky_server, fault, words):
    share_packages(postroj)
    url = "%s/%s" % (flaky_server.url, URL_TARBALL)
    flaky_server.server.fault = fault
    try:
        proc = postroj("image", url, "--name", "flaky", timeout=300)
    finally:
        flaky_server.server.fault = ""
    clean_error(proc, "downloading %s failed" % url, *words)
    assert active_images(postroj.home) == {}
    assert versions(postroj.home) == []
    assert_nothing_left(postroj)

    # the server is well again: the same command succeeds, resuming what was fetched
    requests = len(flaky_server.log)
    proc = postroj("image", url, "--name", "flaky", timeout=600)
    assert proc.returncode == 0, proc.stderr
    fetches = [headers for _, path, headers in flaky_server.log[requests:] if path.endswith(URL_TARBALL)]
    assert len(fetches) == 1
    if fault in ("close", "short"):
        assert fetches[0].get("Range", "").startswith("bytes="), "the partial download was not resumed"
    assert list(active_images(postroj.home)) == ["flaky"]
    info = json.loads(postroj("list-images", "--json", check=0).stdout)["images"][0]
    assert info["digest"][len("sha256:"):] in (flaky_server.root / "SHA256SUMS").read_text()
    assert_nothing_left(postroj)
    assert_every_active_image_boots(postroj)


@pytest.mark.parametrize("reference, words", [
    ("http://no-such-host.invalid/rootfs.tar.xz", ["downloading http://no-such-host.invalid/rootfs.tar.xz failed"]),
    ("docker://no-such-host.invalid/library/debian:bookworm-slim",
     ["docker://no-such-host.invalid/library/debian:bookworm-slim", "no-such-host.invalid"]),
])
def test_dns_does_not_resolve(postroj, reference, words):
    proc = postroj("image", reference, timeout=300)
    clean_error(proc, *words)
    assert active_images(postroj.home) == {}
    assert versions(postroj.home) == []
    assert_nothing_left(postroj)


@pytest.fixture
def own_registry(registry, tmp_path):
    """A registry of this test's own, on a copy (hard links) of the session registry's storage."""
    storage = tmp_path / "registry" / "storage"
    shutil.copytree(registry.storage, storage, copy_function=os.link)
    reg = rig.Registry(storage).start()
    try:
        yield reg
    finally:
        reg.stop()


def test_registry_stops_in_the_middle_of_a_pull(postroj, own_registry, tmp_path):
    share_packages(postroj)
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "%s"\ninsecure = true\n' % own_registry.address)
    postroj.extra_env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    reference = "docker://docker.io/library/debian:bookworm-slim"
    layout = postroj.home / "oci"

    def blob_arriving() -> bool:
        # skopeo writes each blob to a temporary file in the layout, then renames it
        return layout.is_dir() and any(size_of(p) > (4 << 20)
                                       for d in layout.iterdir() if d.is_dir() for p in d.iterdir())

    proc = postroj.popen("image", reference, "--name", "pulled")
    with ended_afterwards(proc):
        wait_for(blob_arriving, step=0.002, what="a blob in transfer")
        own_registry.proc.kill()  # the registry dies, as a crashed or stopped server does
        own_registry.proc.wait()
        own_registry.proc = None
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "error: skopeo copy %s" % reference in err, err
    assert active_images(postroj.home) == {}
    assert versions(postroj.home) == []
    assert_nothing_left(postroj)

    own_registry.start()
    postroj("image", reference, "--name", "pulled", check=0, timeout=600)
    assert list(active_images(postroj.home)) == ["pulled"]
    assert_nothing_left(postroj)
    assert_every_active_image_boots(postroj)


def tarball_with_mirror(tmp_path: Path, mirror: str) -> Path:
    """The rig's Debian minbase tarball (no systemd) whose apt sources name `mirror` only.

    Written anew with tarfile: GNU tar cannot append to an mmdebstrap tarball after a --delete.
    """
    target = tmp_path / "debian-nomirror.tar"
    sources = ("deb %s bookworm main\n" % mirror).encode()
    with tarfile.open(rig.rootfs_tarball("bookworm")) as original, tarfile.open(target, "w",
                                                                               format=tarfile.PAX_FORMAT) as out:
        for member in original:
            name = member.name.lstrip("./")
            if name.startswith("etc/apt/sources.list.d/") and member.isfile():
                continue  # the sources of the mirror this tarball was built from
            if name == "etc/apt/sources.list":
                member.size = len(sources)
                out.addfile(member, io.BytesIO(sources))
            elif member.isfile():
                out.addfile(member, original.extractfile(member))
            else:
                out.addfile(member)
    with tarfile.open(target) as check:
        assert check.extractfile("./etc/apt/sources.list").read() == sources
    return target


def test_package_mirror_unreachable_during_provisioning(postroj, tmp_path):
    # a package cache of its own: apt-get update against the dead mirror would empty the shared lists
    port = rig.free_port()  # nothing listens there
    tarball = tarball_with_mirror(tmp_path, "http://127.0.0.1:%d/debian" % port)
    proc = postroj("image", str(tarball), "--name", "nomirror", timeout=600)
    clean_error(proc, "installing systemd", "127.0.0.1:%d" % port)
    assert active_images(postroj.home) == {}
    assert versions(postroj.home) == []
    assert_nothing_left(postroj)

    shutil.rmtree(postroj.cache / "packages")
    share_packages(postroj)
    postroj("image", str(rig.rootfs_tarball("bookworm")), "--name", "nomirror", check=0, timeout=600)
    assert list(active_images(postroj.home)) == ["nomirror"]
    assert_every_active_image_boots(postroj)


# ==============================================================================
# A full disk
# ==============================================================================


@pytest.fixture
def small_home(postroj):
    """POSTROJ_HOME on a 64 MiB tmpfs, always unmounted afterwards."""
    postroj.home.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(postroj.home)], check=True)
    try:
        yield postroj.home
    finally:
        if subprocess.run(["umount", str(postroj.home)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(postroj.home)], check=True)


def used_bytes(path: Path) -> int:
    st = os.statvfs(str(path))
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("source", ["tarball", "registry"])
def test_disk_full_fails_cleanly_and_frees_what_it_wrote(postroj, small_home, registry, source,
                                                         tmp_path):
    share_packages(postroj)
    if source == "tarball":
        reference = str(rig.rootfs_tarball("bookworm"))
    else:
        conf = tmp_path / "registries.conf"
        conf.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "%s"\ninsecure = true\n' % registry.address)
        postroj.extra_env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
        reference = "docker://docker.io/library/debian:bookworm-slim"
    before = used_bytes(small_home)
    proc = postroj("image", reference, "--name", "full", timeout=600)
    clean_error(proc)
    assert "no space left on device" in proc.stderr.lower(), proc.stderr
    assert active_images(postroj.home) == {}
    assert versions(postroj.home) == []
    assert_nothing_left(postroj)
    after = used_bytes(small_home)
    assert after - before < (1 << 20), "%d bytes of the failed acquisition are left on the full disk: %s" % (
        after - before, subprocess.run(["du", "-sh", *map(str, small_home.iterdir())], stdout=subprocess.PIPE,
                                       text=True).stdout)


# ==============================================================================
# At the same time
# ==============================================================================


def test_four_probes_of_one_image_at_once(images):
    procs = [images.popen("probe", "--image", "debian-bookworm", "--command", "hostname; sleep 2", "--json", "-")
             for _ in range(4)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    names = sorted(json.loads(out)["results"][0]["output"] for out, _ in outputs)
    assert names == sorted(["postroj-debian-bookworm"] + ["postroj-debian-bookworm-%d" % n for n in (2, 3, 4)])
    assert_nothing_left(images)


def test_forced_acquisition_while_a_container_of_the_image_runs(postroj, tmp_path):
    share_packages(postroj)
    postroj("image", str(rig.rootfs_tarball("bullseye")), "--name", "swapped", check=0, timeout=600)
    (old,) = versions(postroj.home)
    sync = tmp_path / "sync"
    sync.mkdir()
    # the container waits for the swap, then reads its image again
    script = ("grep VERSION_ID /etc/os-release > /sync/before; while [ ! -e /sync/go ]; do sleep 0.1; done; "
              "dpkg-query -W > /dev/null && grep VERSION_ID /etc/os-release > /sync/after")
    running = postroj.popen("container", "swapped", "--bind", "%s:/sync" % sync, "--", "sh", "-c", script)
    forced = None
    try:
        wait_for(lambda: (sync / "before").exists(), what="the first container")
        forced = postroj.popen("image", str(rig.rootfs_tarball("bookworm")), "--name", "swapped", "--force")
        # gc while the forced acquisition stages its image: neither is disturbed
        wait_for(lambda: staging_has(postroj.home, "rootfs/etc"), what="staging")
        gc = postroj("gc", check=0)
        assert "swapped" not in gc.stdout, gc.stdout
        out, err = forced.communicate(timeout=600)
        assert forced.returncode == 0, err
        assert old in versions(postroj.home)
        assert len(versions(postroj.home)) == 2, "the version in use is kept"
        # the next container boots the new image while the old one still runs
        proc = postroj("container", "swapped", "--", "grep", "VERSION_ID", "/etc/os-release", check=0)
        assert proc.stdout.strip() == 'VERSION_ID="12"'
        (sync / "go").touch()
        _, err = running.communicate(timeout=120)
        assert running.returncode == 0, err
    finally:
        for child in (running, forced):
            if child and child.poll() is None:
                child.kill()
                child.wait()
    assert (sync / "before").read_text() == (sync / "after").read_text() == 'VERSION_ID="11"\n'
    postroj("gc", check=0)
    assert old not in versions(postroj.home) and len(versions(postroj.home)) == 1
    assert_nothing_left(postroj)
    assert_every_active_image_boots(postroj)


def test_gc_while_a_probe_runs(images):
    marker = marker_command(3)
    proc = images.popen("probe", "--image", "debian-bookworm", "--command", marker + " && echo survived",
                        "--json", "-")
    with ended_afterwards(proc):
        wait_for(lambda: payload(images, marker), what="the probe's command")
        (machine,) = json.loads(images("machines", "--json", check=0).stdout)["machines"]
        gc = images("gc", check=0)
        assert machine["name"] not in gc.stdout, gc.stdout
        assert nspawn_of(images.home), "gc ended the live container"
        assert [m["name"] for m in json.loads(images("machines", "--json", check=0).stdout)["machines"]] == [machine["name"]]
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    (result,) = json.loads(out)["results"]
    assert result["output"] == "survived"
    assert_nothing_left(images, marker)
