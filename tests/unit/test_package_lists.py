"""Before a probe boots: whether apt's package lists need a refresh (each suite's InRelease, fetched from a
server on loopback, against the one apt verified), and what the first install resolves to (apt's lists)."""

from __future__ import annotations

import email.utils
import functools
import os
import http.server
import threading
import time
from pathlib import Path

import pytest

import postroj

RELEASE = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Test\nSuite: %s\n%s\n"


@pytest.fixture
def archive(tmp_path):
    """An archive on loopback with two suites; served requests are in .requests."""
    root = tmp_path / "archive"
    for suite in ("stable", "stable-updates"):
        (root / "dists" / suite).mkdir(parents=True)
        (root / "dists" / suite / "InRelease").write_bytes(RELEASE % (suite.encode(), b""))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.root, server.requests = root, requests
    server.uri = "http://127.0.0.1:%d/" % server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()


def image_with_sources(tmp_path, text):
    """An image version whose apt sources are `text`: its ImageInfo."""
    root = tmp_path / "home" / "images" / ".versions" / "debian-test@0123456789ab" / "rootfs"
    (root / "etc" / "apt").mkdir(parents=True)
    (root / "etc" / "apt" / "sources.list").write_text(text)
    return postroj.ImageInfo("debian-test", "test", "", "", "debian", "debian", "apt", "", 0, root)


def refreshed(archive, cache, image, extra=()):
    """The lists as apt's refresh for `image` leaves them (InRelease as served, a Packages list each), noted."""
    lists = cache / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    for suite in ("stable", "stable-updates"):
        name = "127.0.0.1:%d_dists_%s_" % (archive.server_address[1], suite)
        (lists / (name + "InRelease")).write_bytes((archive.root / "dists" / suite / "InRelease").read_bytes())
        (lists / (name + "main_binary-amd64_Packages")).write_text("Package: %s\n" % suite)
    for name in extra:
        (lists / name).write_text("")
    postroj.note_refresh(cache, image)


@pytest.fixture
def setup(tmp_path, archive):
    image = image_with_sources(tmp_path, "deb %s stable main\ndeb %s stable-updates main\n" % (archive.uri, archive.uri))
    cache = tmp_path / "cache" / "packages" / "debian-12"
    settings = postroj.Settings.from_env()
    refreshed(archive, cache, image)
    return settings, cache, image


def test_lists_as_the_last_refresh_left_them_and_published_the_same_are_current(setup, archive):
    settings, cache, image = setup
    assert postroj.lists_current(settings, cache, image)
    assert sorted(archive.requests) == ["/dists/stable-updates/InRelease", "/dists/stable/InRelease"]


def test_a_deb822_stanza_of_two_suites_is_current_as_two_lines_are(setup, archive, tmp_path):
    """Registry images write deb822 sources: one stanza names the release and its updates."""
    settings, cache, image = setup
    (image.path / "etc" / "apt" / "sources.list").unlink()
    (image.path / "etc" / "apt" / "sources.list.d").mkdir()
    (image.path / "etc" / "apt" / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: %s\nSuites: stable stable-updates\nComponents: main\n" % archive.uri)
    assert postroj.lists_current(settings, cache, image)
    assert sorted(archive.requests) == ["/dists/stable-updates/InRelease", "/dists/stable/InRelease"]


def test_a_suite_that_published_a_new_inrelease_needs_a_refresh(setup, archive):
    settings, cache, image = setup
    (archive.root / "dists" / "stable-updates" / "InRelease").write_bytes(RELEASE % (b"stable-updates", b"New: 1"))
    assert not postroj.lists_current(settings, cache, image)


def test_without_a_refresh_of_this_image_version_the_lists_are_not_taken_for_current(setup, tmp_path):
    settings, cache, image = setup
    other = image._replace(path=tmp_path / "home" / "images" / ".versions" / "debian-test@ba9876543210" / "rootfs")
    (other.path / "etc" / "apt").mkdir(parents=True)
    (other.path / "etc" / "apt" / "sources.list").write_text((image.path / "etc" / "apt" / "sources.list").read_text())
    assert not postroj.lists_current(settings, cache, other)


@pytest.mark.parametrize("change", ["added", "removed"])
def test_lists_another_refresh_added_or_removed_need_a_refresh(setup, change):
    """Images of a release share the lists; a refresh for other sources (contrib, another suite) changes them."""
    settings, cache, image = setup
    if change == "added":
        (cache / "lists" / "127.0.0.1_dists_stable_contrib_binary-amd64_Packages").write_text("")
    else:
        next((cache / "lists").glob("*stable_main_binary-amd64_Packages")).unlink()
    assert not postroj.lists_current(settings, cache, image)


def test_an_inrelease_past_its_valid_until_needs_a_refresh(setup, archive, tmp_path):
    settings, cache, image = setup
    past = email.utils.formatdate(time.time() - 3600, usegmt=True).encode()
    future = email.utils.formatdate(time.time() + 86400, usegmt=True).encode()
    for until, current in ((future, True), (past, False)):
        (archive.root / "dists" / "stable" / "InRelease").write_bytes(RELEASE % (b"stable", b"Valid-Until: " + until))
        refreshed(archive, cache, image)
        assert postroj.lists_current(settings, cache, image) is current


def test_a_suite_without_inrelease_or_a_source_that_is_not_http_needs_a_refresh(setup, archive, tmp_path):
    settings, cache, image = setup
    inrelease = archive.root / "dists" / "stable" / "InRelease"
    inrelease.rename(inrelease.with_name("Release"))  # Release and Release.gpg only: InRelease is a 404
    assert not postroj.lists_current(settings, cache, image)
    inrelease.with_name("Release").rename(inrelease)
    assert postroj.lists_current(settings, cache, image)
    local = image_with_sources(tmp_path / "other", "deb file:/srv/repo stable main\ndeb %s stable-updates main\n"
                               % archive.uri)
    refreshed(archive, cache, local)
    assert not postroj.lists_current(settings, cache, local)


def test_a_link_among_the_lists_is_not_followed(setup, archive, tmp_path):
    """Containers write the package cache: an InRelease that is a link to a host file is never read."""
    settings, cache, image = setup
    inrelease = next((cache / "lists").glob("*_stable_InRelease"))
    host_file = tmp_path / "host-file"
    host_file.write_bytes(inrelease.read_bytes())
    inrelease.unlink()
    inrelease.symlink_to(host_file)
    assert not postroj.lists_current(settings, cache, image)


def test_the_note_of_refreshes_lives_beside_the_cache_containers_write():
    cache = Path("/var/cache/postroj/packages/debian-12")
    assert postroj.lists_stamp(cache).parent == cache.parent


# --- what the first install resolves to ----------------------------------------------------------------

DOWNLOAD = """\
postroj-package\tmariadb-server\t1:10.11.19-0+deb12u1\r
Reading package lists...\r
The following additional packages will be installed:\r
   galera-4 (26.4.23-0+deb12u1)\r
   libc6 (2.36-9 => 2.36-9+deb12u13)\r
Suggested packages:\r
   gawk-doc\r
   python3:any\r
   mariadb-test (1:10.11.19-0+deb12u1)\r
The following NEW packages will be installed:\r
   galera-4 (26.4.23-0+deb12u1)\r
   libgcc-s1:i386 (12.2.0-14+deb12u1)\r
   mariadb-server (1:10.11.19-0+deb12u1)\r
The following packages will be upgraded:\r
   libc6 (2.36-9 => 2.36-9+deb12u13)\r
1 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.\r
Download complete and in download only mode\r
"""


def test_the_resolution_is_read_from_the_marked_downloads_lists():
    marked = "Reading package lists...\n   other (1.0)\n%s\n%s" % (postroj.RESOLVING, DOWNLOAD)
    assert postroj.resolved(marked) == ("galera-4=26.4.23-0+deb12u1", "libc6=2.36-9+deb12u13",
                                        "libgcc-s1:i386=12.2.0-14+deb12u1", "mariadb-server=1:10.11.19-0+deb12u1")


def test_the_mark_may_open_the_output():
    """--upgrade-from archive: the second run is the resolving download alone."""
    assert postroj.resolved("%s\n%s" % (postroj.RESOLVING, DOWNLOAD))[0] == "galera-4=26.4.23-0+deb12u1"


def test_without_the_mark_nothing_is_resolved():
    assert postroj.resolved(DOWNLOAD) == ()


def test_the_resolving_download_is_the_last_of_the_run():
    """The first install's download comes after the mark, the other download before it."""
    apt = postroj.Apt()
    argv = postroj.chain(apt.download(["new.deb"]), apt.resolve(), apt.download(["old.deb"]))
    script = argv[2]
    assert script.index("new.deb") < script.index(postroj.RESOLVING) < script.index("old.deb")
    assert "APT::Get::Show-Versions=1" in apt.download(["x"]) and "LC_ALL=C" in apt.download(["x"])


# --- what a killed package proxy leaves -----------------------------------------------------------------


def test_gc_removes_a_killed_proxys_staging_a_day_old_and_only_that(tmp_path):
    settings = postroj.Settings.from_env()
    cache = settings.packages / "debian-12"
    cache.mkdir(parents=True)
    old, fresh, package = cache / ".postroj-proxy.abc123", cache / ".postroj-proxy.def456", cache / "hello_2.10-3_amd64.deb"
    link = cache / ".postroj-proxy.link"
    target = tmp_path / "host-file"
    target.write_text("the host's")
    link.symlink_to(target)
    day_ago = time.time() - 86400 - 60
    for path in (old, fresh, package):
        path.write_bytes(b"part of a download")
    for path in (old, package):
        os.utime(str(path), (day_ago, day_ago))
    os.utime(str(link), (day_ago, day_ago), follow_symlinks=False)
    done = postroj.collect_garbage(settings)
    assert sorted(d for d in done if "proxy" in d) == ["package proxy's staging debian-12/.postroj-proxy.abc123",
                                                      "package proxy's staging debian-12/.postroj-proxy.link"]
    assert not old.exists() and not os.path.lexists(str(link)) and fresh.exists() and package.exists()
    assert target.read_text() == "the host's"
