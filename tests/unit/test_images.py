"""Image state below a POSTROJ_HOME of the test's own: os-release, provisioning decisions, atomic activation,
pruning, locks; and the probe matrix with a stand-in for booting."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import postroj


@pytest.fixture
def settings(tmp_path) -> postroj.Settings:
    settings = postroj.Settings.from_env()
    assert settings.home == tmp_path / "home", "the unit conftest gives every test its own state root"
    for directory in (settings.home, settings.images, settings.versions, settings.locks, settings.tmp):
        postroj.private_dir(directory)
    return settings


def make_version(settings: postroj.Settings, name: str, version_id: str, os_release: str = "Debian") -> Path:
    version = settings.versions / ("%s@%s" % (name, version_id))
    (version / "rootfs" / "etc").mkdir(parents=True)
    (version / "image.json").write_text(json.dumps({
        "name": name, "source": "test", "digest": "", "os_release": os_release, "os_id": "debian",
        "family": "debian", "package_manager": "apt", "acquired": "2024-01-01T00:00:00+00:00", "size": 1,
        "written_by_a_newer_postroj": True}))
    return version


# --- settings ---------------------------------------------------------------------


def test_settings_from_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSTROJ_HOME", "relative-home")
    monkeypatch.setenv("POSTROJ_CACHE", "")
    settings = postroj.Settings.from_env()
    assert settings.home == tmp_path / "relative-home"
    assert settings.cache == Path(postroj.DEFAULT_CACHE)
    assert settings.images == tmp_path / "relative-home" / "images"
    assert settings.downloads == Path(postroj.DEFAULT_CACHE) / "downloads"


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 * 1024, "1.5 MiB"),
                                        (5 * 1024 ** 4, "5120.0 GiB")])
def test_human_size(size, text):
    assert postroj.human_size(size) == text


# --- what is in a root file system ------------------------------------------------


def test_read_os_release(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr" / "lib" / "os-release").write_text(
        '# comment\nID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID=\'12\'\n\nBROKEN LINE\n')
    os.symlink("../usr/lib/os-release", root / "etc" / "os-release")
    fields = postroj.read_os_release(root)
    assert fields == {"ID": "debian", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "VERSION_ID": "12"}
    (root / "etc" / "os-release").unlink()
    os.symlink("/usr/lib/os-release", root / "etc" / "os-release")  # absolute: inside the root, not the host's
    assert postroj.read_os_release(root)["ID"] == "debian"


def test_read_os_release_of_an_empty_tree(tmp_path):
    assert postroj.read_os_release(tmp_path) == {}


@pytest.mark.parametrize("links", [
    # a relative link that climbs out of the root
    [("etc/os-release", "../../../../../../../../../{outside}/os-release")],
    # the usual etc -> usr/lib link, then an absolute link, which nothing may resolve on the host
    [("etc/os-release", "../usr/lib/os-release"), ("usr/lib/os-release", "{outside}/os-release")],
], ids=["relative-link-climbs-out", "absolute-link-behind-a-relative-one"])
def test_read_os_release_does_not_follow_links_out_of_the_root(tmp_path, links):
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "os-release").write_text("ID=host-secret\nPRETTY_NAME=the host\n")
    root = tmp_path / "root"
    for name, target in links:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.format(outside=str(outside).lstrip("/") if target.startswith("..") else outside),
                   root / name)
    assert (root / links[0][0]).read_text().startswith("ID=host-secret"), "the links do reach the host file"
    assert postroj.read_os_release(root).get("ID") != "host-secret"


@pytest.mark.parametrize("fields, family", [
    ({"ID": "debian"}, "debian"),
    ({"ID": "ubuntu", "ID_LIKE": "debian"}, "debian"),
    ({"ID": "linuxmint", "ID_LIKE": "ubuntu debian"}, "debian"),
    ({"ID": "rocky", "ID_LIKE": "rhel centos fedora"}, "redhat"),
    ({"ID": "amzn", "ID_LIKE": "fedora"}, "redhat"),
    ({"ID": "opensuse-leap", "ID_LIKE": "suse opensuse"}, "suse"),
    ({"ID": "sles"}, "suse"),
    ({"ID": "arch"}, "arch"),
    ({"ID": "alpine"}, ""),
    ({}, ""),
])
def test_os_family(fields, family):
    assert postroj.os_family(fields) == family


@pytest.mark.parametrize("path, manager", [
    ("usr/bin/apt-get", "apt"), ("usr/bin/dnf", "dnf"), ("usr/bin/microdnf", "microdnf"), ("bin/yum", "yum"),
    ("usr/bin/zypper", "zypper"), ("usr/bin/pacman", "pacman"), ("usr/bin/apk", ""),
])
def test_detect_package_manager(tmp_path, path, manager):
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text("#!/bin/sh\n")
    assert postroj.detect_package_manager(tmp_path) == manager


def test_has_systemd(tmp_path):
    assert not postroj.has_systemd(tmp_path)
    (tmp_path / "usr" / "lib" / "systemd").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "systemd" / "systemd").write_text("")
    assert postroj.has_systemd(tmp_path)


def test_mask_units(tmp_path):
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "apt-daily.timer").write_text("[Timer]\n")
    postroj.mask_units(tmp_path, "debian")
    for unit in postroj.MASKED_UNITS["all"] + postroj.MASKED_UNITS["debian"]:
        assert os.readlink(units / unit) == "/dev/null", unit
    assert not (units / "dnf-makecache.timer").is_symlink()
    postroj.mask_units(tmp_path, "debian")  # a second time changes nothing
    assert os.readlink(units / "apt-daily.timer") == "/dev/null"


# --- activation -------------------------------------------------------------------


def test_activate_and_read_image(settings):
    version = make_version(settings, "debian-bookworm", "aaaa")
    assert postroj.read_image(settings, "debian-bookworm") is None
    postroj.activate(settings, "debian-bookworm", version)
    link = settings.images / "debian-bookworm"
    assert link.is_symlink() and not os.readlink(link).startswith("/"), "the link is relative"
    info = postroj.read_image(settings, "debian-bookworm")
    assert info.name == "debian-bookworm"
    assert info.path == version / "rootfs"
    assert info.package_manager == "apt"
    assert [i.name for i in postroj.list_images(settings)] == ["debian-bookworm"]
    assert [p.name for p in settings.images.iterdir() if p.name.startswith(".") and p.is_symlink()] == []


def test_activation_swaps_versions_and_prunes_the_old_one(settings):
    old = make_version(settings, "debian-bookworm", "aaaa", "old")
    new = make_version(settings, "debian-bookworm", "bbbb", "new")
    other = make_version(settings, "fedora-41", "cccc")
    postroj.activate(settings, "debian-bookworm", old)
    postroj.activate(settings, "fedora-41", other)
    postroj.activate(settings, "debian-bookworm", new)
    assert postroj.read_image(settings, "debian-bookworm").os_release == "new"
    assert postroj.prune_versions(settings, "debian-bookworm") == [old]
    assert not old.exists() and new.exists() and other.exists()
    assert list(settings.tmp.iterdir()) == []


def test_prune_keeps_a_version_a_container_uses(settings):
    old = make_version(settings, "debian-bookworm", "aaaa")
    new = make_version(settings, "debian-bookworm", "bbbb")
    postroj.activate(settings, "debian-bookworm", new)
    fd = os.open(str(old / "image.json"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a running container holds on its version
        assert postroj.prune_versions(settings) == []
        assert old.exists()
    finally:
        os.close(fd)
    assert postroj.prune_versions(settings) == [old]


def test_remove_image(settings):
    version = make_version(settings, "debian-bookworm", "aaaa")
    postroj.activate(settings, "debian-bookworm", version)
    assert postroj.remove_image(settings, "debian-bookworm") is True
    assert postroj.read_image(settings, "debian-bookworm") is None
    assert not version.exists()
    assert postroj.remove_image(settings, "debian-bookworm") is False


def test_broken_image_json_is_a_broken_image_not_a_missing_one(settings):
    version = make_version(settings, "debian-bookworm", "aaaa")
    postroj.activate(settings, "debian-bookworm", version)
    (version / "image.json").write_text("{not json")
    with pytest.raises(postroj.PostrojError) as raised:
        postroj.read_image(settings, "debian-bookworm")
    assert "image debian-bookworm is broken" in raised.value.message
    assert "postroj image debian-bookworm --force" in raised.value.hint
    assert postroj.list_images(settings) == []  # listed as a warning, not an image


# --- locks ------------------------------------------------------------------------


def test_file_lock(tmp_path):
    path = tmp_path / "locks" / "image-x.lock"
    assert not postroj.lock_is_held(path)
    with postroj.file_lock(path) as got:
        assert got is True
        assert postroj.lock_is_held(path)
        with postroj.file_lock(path, wait=False) as second:
            assert second is False
    assert not postroj.lock_is_held(path)
    with postroj.file_lock(path, shared=True), postroj.file_lock(path, shared=True, wait=False) as both:
        assert both is True


# --- the probe matrix -------------------------------------------------------------


def test_run_matrix_returns_in_image_order_and_reports_each_stage_as_it_ends():
    reported = []

    def probe_one(name, cancel, fleet, emit):
        installed = postroj.ProbeResult(name, postroj.Probe("command", "true"), "pass", 0.0, stage="installed")
        emit([installed])
        assert installed in reported, "a stage's results are printed when the stage ends, not with the image's"
        return [installed, postroj.ProbeResult(name, postroj.Probe("command", "true"), "pass", 0.0, stage="purged")]

    results = postroj.run_matrix(["a", "b", "c", "d"], 3, False, probe_one, reported.extend)
    assert [r.image for r in results] == ["a", "a", "b", "b", "c", "c", "d", "d"]
    assert sorted(reported, key=lambda r: r.image) == results
    for image in "abcd":  # each image's lines in its order
        assert [r.stage for r in reported if r.image == image] == ["installed", "purged"]


PLAN = postroj.ProbePlan((postroj.Probe("command", "true"), postroj.Probe("unit", "nginx")), fail_fast=True)


@pytest.mark.parametrize("jobs", [1, 2])
def test_fail_fast_skips_the_images_after_a_failure_with_and_without_threads(tmp_path, jobs):
    """Image a fails; the others, begun at once (jobs 2) or after it (jobs 1), are reported as skipped by
    probe_image itself, which sees the cancel that run_matrix set."""
    settings = postroj.Settings(tmp_path / "home", tmp_path / "cache")
    host = postroj.Host(postroj.HostMode.NSENTER)

    def probe_one(name, cancel, fleet, emit):
        if name == "a":
            return [postroj.ProbeResult(name, PLAN.probes[0], "fail", 0.0, reason="exit status 1")]
        assert cancel.wait(10), "run_matrix never cancelled the rest"
        return postroj.probe_image(settings, host, postroj.ImageTarget(name), PLAN, cancel=cancel, packages={},
                                   fleet=fleet)

    results = postroj.run_matrix(["a", "b", "c", "d"], jobs, True, probe_one, lambda r: None)
    assert [(r.image, r.probe.kind, r.status) for r in results] == [("a", "command", "fail")] + [
        (name, kind, "skip") for name in "bcd" for kind in ("command", "unit")]
    assert {r.reason for r in results[1:]} == {"not run: --fail-fast"}
    suite = ET.fromstring(postroj.junit_xml(results)).findall("testsuite")[1]
    assert suite.get("skipped") == "2"


class StandIn:
    """Stands in for a container of a probe thread: close() is what the fleet calls."""

    def __init__(self, log=None, signalled=False):
        self.closed = threading.Event()
        self.log = log if log is not None else []
        self.signalled = signalled

    def close(self):
        self.log.append("begun")
        if self.signalled:  # its clean-up is hit by SIGTERM and SIGINT (sent by itself) half-way
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        self.log.append("ended")
        self.closed.set()


def test_an_interrupt_ends_the_containers_of_every_thread():
    """Ctrl-C in the main thread: the containers the other threads run are closed, and one a thread is about
    to start is refused."""
    stand_ins = {name: StandIn() for name in "abc"}
    refused, started = [], []

    def probe_one(name, cancel, fleet, emit):
        started.append(name)
        try:
            fleet.add(stand_ins[name])
        except postroj.PostrojError:
            refused.append(name)
            return []
        if name != "a":
            assert stand_ins[name].closed.wait(10), "the fleet never closed %s" % name
        return [postroj.ProbeResult(name, postroj.Probe("command", "true"), "pass", 0.0)]

    def report(result):
        raise KeyboardInterrupt()  # Ctrl-C as the first result comes in

    with pytest.raises(KeyboardInterrupt):
        postroj.run_matrix(list("abc"), 3, False, probe_one, report)
    assert "a" in started and "a" not in refused
    assert all(s.closed.is_set() or name in refused for name, s in stand_ins.items() if name in started)
    assert all(not s.closed.is_set() for name, s in stand_ins.items() if name not in started)


def test_a_stop_signal_the_kernel_gives_a_worker_thread_ends_the_matrix_at_once():
    """The kernel gives a process's signal to any thread that takes it; Python runs the handler in the main
    thread, which an untimed wait on a worker would keep asleep until that worker ends (a probe: minutes)."""
    def probe_one(name, cancel, fleet, emit):
        if name == "a":
            time.sleep(0.5)  # the main thread waits for the results by now
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # Ctrl-C, delivered to this worker
        cancel.wait(20)
        return []

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        postroj.run_matrix(["a", "b"], 2, False, probe_one, lambda r: None)
    assert time.monotonic() - t0 < 5


def test_display_threads_leave_stop_signals_to_the_main_thread():
    masks = []
    postroj.display_thread(lambda: masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))).join(5)
    assert set(postroj.STOP_SIGNALS) <= set(masks[0])

def test_signals_during_the_clean_up_are_ignored():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, postroj._terminate)
    try:
        log = []
        fleet = postroj.Fleet()
        for _ in range(2):
            fleet.add(StandIn(log, signalled=True))
        fleet.close_all()  # neither Terminated nor KeyboardInterrupt
        assert log == ["begun", "ended", "begun", "ended"]
        assert signal.getsignal(signal.SIGTERM) is postroj._terminate, "the handler is back afterwards"
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_process_gone_for_exited_reaped_and_zombie_processes():
    import subprocess

    assert postroj.process_gone(os.getpid()) is False
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while not postroj.process_gone(child.pid):  # a zombie until reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.wait()
    assert postroj.process_gone(child.pid) is True  # reaped: /proc/PID is gone, no exception


# --- the guest's systemd and the cgroup hierarchy it gets ----------------------------------------


def systemd_root(tmp_path: Path, place: str, library: str) -> Path:
    root = tmp_path / "root"
    (root / place).mkdir(parents=True)
    (root / place / library).write_bytes(b"")
    return root


@pytest.mark.parametrize("place, library, version", [
    ("usr/lib/x86_64-linux-gnu/systemd", "libsystemd-shared-257.so", 257),  # Debian 13, Ubuntu 24.04+
    ("usr/lib/aarch64-linux-gnu/systemd", "libsystemd-shared-262.so", 262),
    ("usr/lib/systemd", "libsystemd-shared-252.so", 252),  # Debian 12
    ("usr/lib64/systemd", "libsystemd-shared-256.11-1.fc41.so", 256),  # Fedora
    ("usr/lib/systemd", "libsystemd-core-255.so", 0),
])
def test_systemd_version_from_the_shared_library_name(tmp_path, place, library, version):
    assert postroj.systemd_version(systemd_root(tmp_path, place, library)) == version


def test_systemd_version_of_a_merged_usr_through_its_links(tmp_path):
    root = systemd_root(tmp_path, "usr/lib/systemd", "libsystemd-shared-258.so")
    os.symlink("usr/lib", root / "lib")
    assert postroj.systemd_version(root) == 258


def test_systemd_version_never_reads_the_hosts_through_a_link(tmp_path):
    """An image's absolute links are resolved inside it: the host's own systemd library is not found."""
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    host_dir = next(p for p in ("/usr/lib/x86_64-linux-gnu/systemd", "/usr/lib/systemd", "/lib/systemd")
                    if any(n.startswith("libsystemd-shared-") for n in os.listdir(p)) if os.path.isdir(p))
    os.symlink(host_dir, root / "usr" / "lib64")
    os.symlink("/usr/lib/systemd/../../..%s" % os.path.dirname(host_dir), root / "lib")
    assert postroj.systemd_version(root) == 0


def image_with_systemd(root: Path, version: int) -> postroj.ImageInfo:
    return postroj.ImageInfo("x", "", "", "", "", "", "", "", 0, root, systemd=version)


@pytest.mark.parametrize("unified, recorded, expected", [
    (False, 262, {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}),  # sid on a cgroup v1 host
    (False, 256, {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}),
    (False, 255, {}),  # noble keeps the host's layout, as always
    (True, 262, {}),  # a cgroup v2 host gives every guest the unified hierarchy by itself
])
def test_guests_that_refuse_cgroup_v1_get_the_unified_hierarchy_on_a_v1_host(tmp_path, unified, recorded, expected):
    host = postroj.Host(postroj.HostMode.NSENTER, unified=unified)
    assert host.cgroup_env(image_with_systemd(tmp_path, recorded)) == expected


def test_an_image_acquired_before_its_systemd_was_recorded_is_read_at_boot(tmp_path):
    root = systemd_root(tmp_path, "usr/lib/x86_64-linux-gnu/systemd", "libsystemd-shared-258.so")
    host = postroj.Host(postroj.HostMode.NSENTER, unified=False)
    assert host.cgroup_env(image_with_systemd(root, 0)) == {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}


# --- end of life ---------------------------------------------------------------------------------


def test_a_release_past_its_end_of_life_is_warned_about_once_and_left_out_of_all(monkeypatch, caplog):
    monkeypatch.setattr(postroj, "today", lambda: "2026-11-29")
    postroj.warn_if_ended("ubuntu-25.10")
    postroj.warn_if_ended("ubuntu-resolute")
    postroj.warn_if_ended("my-own-image")
    assert [r.getMessage() for r in caplog.records] == [
        "ubuntu-questing reached its end of life on 2026-07-09: its publisher no longer fixes it (see "
        "`postroj list-images` for the supported releases)"]
    assert not postroj.include_in_all("ubuntu-questing", False)
    assert postroj.include_in_all("ubuntu-questing", True)
    assert postroj.include_in_all("ubuntu-resolute", False) and postroj.include_in_all("my-own-image", False)
    monkeypatch.setattr(postroj, "today", lambda: "2026-07-09")
    assert postroj.include_in_all("ubuntu-questing", False)


# --- package caches -------------------------------------------------------------------------------


def debian_root(tmp_path: Path, name: str, os_release: str, sources: "dict[str, str]") -> Path:
    root = tmp_path / name
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(os_release)
    for relative, text in sources.items():
        (root / relative).write_text(text)
    return root


TESTING = 'PRETTY_NAME="Debian GNU/Linux forky/sid"\nVERSION_CODENAME=forky\nID=debian\n'


def test_testing_and_sid_keep_their_package_lists_apart(tmp_path):
    """Both say forky/sid and have no VERSION_ID: one cache would let one's apt-get update delete the other's
    lists while it installs (seen: sid's install failed beside forky's)."""
    settings = postroj.Settings(tmp_path / "home", tmp_path / "cache")
    forky = debian_root(tmp_path, "forky", TESTING, {
        "etc/apt/sources.list": "# comment\ndeb http://deb.debian.org/debian forky main\n"})
    sid = debian_root(tmp_path, "sid", TESTING, {"etc/apt/sources.list.d/debian.sources":
                                                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: sid\n"})
    signed = debian_root(tmp_path, "signed", TESTING, {
        "etc/apt/sources.list": "deb [signed-by=/usr/share/keyrings/k.gpg] http://deb.debian.org/debian sid main\n"})
    assert postroj.package_cache_for(settings, forky).name == "debian-forky"
    assert postroj.package_cache_for(settings, sid).name == "debian-sid"
    assert postroj.package_cache_for(settings, signed).name == "debian-sid"
    bookworm = debian_root(tmp_path, "bookworm", 'VERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n',
                           {"etc/apt/sources.list": "deb http://deb.debian.org/debian bookworm main\n"})
    assert postroj.package_cache_for(settings, bookworm).name == "debian-12"


# --- names that resolve: /etc/hosts ------------------------------------------------------------------


def test_hosts_as_debians_installer_writes_it_with_the_machine_name():
    text = postroj.hosts_text("", "postroj-debian-bookworm")
    assert text.splitlines()[:2] == ["127.0.0.1\tlocalhost", "127.0.1.1\tpostroj-debian-bookworm"]
    assert "::1     localhost ip6-localhost ip6-loopback" in text.splitlines()
    assert "127.0.1.1" not in postroj.hosts_text("")  # the image's own: no host name of its own


def test_hosts_keeps_an_images_lines_and_replaces_its_host_name():
    fedora = "127.0.0.1   localhost localhost.localdomain\n::1         localhost localhost.localdomain\n"
    assert postroj.hosts_text(fedora, "m").splitlines() == [
        "127.0.0.1   localhost localhost.localdomain", "127.0.1.1\tm", "::1         localhost localhost.localdomain"]
    built = "127.0.0.1\tlocalhost\n127.0.1.1\tbuildhost.example.org buildhost\n"
    assert postroj.hosts_text(built, "m").splitlines() == ["127.0.0.1\tlocalhost", "127.0.1.1\tm"]
    assert postroj.hosts_text("# empty\n", "m").splitlines() == ["127.0.0.1\tlocalhost", "127.0.1.1\tm", "# empty"]


def test_each_container_gets_its_machine_name_in_its_overlay_and_the_image_is_untouched(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "hosts").write_text(postroj.hosts_text(""))
    upper.mkdir()
    postroj.write_hosts(lower, upper, "postroj-debian-bookworm.1")
    assert "127.0.1.1\tpostroj-debian-bookworm.1" in (upper / "etc" / "hosts").read_text()
    assert "127.0.1.1" not in (lower / "etc" / "hosts").read_text()


def test_an_image_whose_hosts_is_a_link_keeps_it(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    os.symlink("/run/hosts", lower / "etc" / "hosts")
    upper.mkdir()
    postroj.write_hosts(lower, upper, "m")
    assert not (upper / "etc").exists()
