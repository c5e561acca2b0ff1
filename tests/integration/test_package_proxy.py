"""The package proxy a testbed with a network of its own reaches its archives through (issue 26): listening in
a network namespace only, passing requests to the allowed archives only, keeping package files in the package
cache. A real network namespace (unshare) and a real HTTP server on the host's loopback stand for the
container and the archive; test_autopkgtest runs it with real testbeds and Debian's mirror."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import postroj

FETCH = """\
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "http://127.0.0.1:%d"}))
try:
    with opener.open(sys.argv[1], timeout=20) as answer:
        sys.stdout.buffer.write(b"%%d\\n" %% answer.status + answer.read())
except urllib.error.HTTPError as exc:
    sys.stdout.buffer.write(b"%%d\\n" %% exc.code + exc.read())
""" % postroj.PACKAGE_PROXY_PORT


@pytest.fixture
def namespace():
    """A process in a network namespace of its own, with its loopback up: a container's network."""
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 120"])
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "ip", "-o", "addr", "show", "lo"],
                             capture_output=True).stdout.count(b"127.0.0.1") == 0:
            assert time.monotonic() < deadline, "the namespace's loopback never came up"
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def archive(tmp_path):
    """An HTTP server on the host's loopback serving tmp_path/archive: (port, directory, requests seen)."""
    root = tmp_path / "archive"
    (root / "pool").mkdir(parents=True)
    seen = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            seen.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], root, seen
    finally:
        server.shutdown()
        server.server_close()


def fetch(pid: int, url: str) -> "tuple[int, bytes]":
    """GET `url` through the proxy from inside the namespace of `pid`: the status and the body."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", FETCH, url],
                         capture_output=True, timeout=30, check=True).stdout
    status, _, body = out.partition(b"\n")
    return int(status), body


@contextlib.contextmanager
def proxy(pid: int, allowed, cache=None):
    served = postroj.PackageProxy(allowed, "test", cache)
    served.start("/proc/%d" % pid)
    try:
        yield served
    finally:
        served.close()


def test_the_archive_is_reached_from_the_namespace_and_the_proxy_is_not_on_the_host(namespace, archive):
    port, root, _seen = archive
    (root / "dists").mkdir()
    (root / "dists" / "InRelease").write_bytes(b"signed lists\n")
    with proxy(namespace, [("127.0.0.1", port)]):
        assert fetch(namespace, "http://127.0.0.1:%d/dists/InRelease" % port) == (200, b"signed lists\n")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", postroj.PACKAGE_PROXY_PORT), timeout=5).close()
    with pytest.raises(subprocess.CalledProcessError):  # gone with close(): nothing listens any more
        fetch(namespace, "http://127.0.0.1:%d/dists/InRelease" % port)


def test_hosts_and_ports_that_are_not_archives_are_refused(namespace, archive):
    port, root, seen = archive
    (root / "secret").write_bytes(b"not for the testbed\n")
    with proxy(namespace, [("deb.example.org", 80)]):
        status, body = fetch(namespace, "http://127.0.0.1:%d/secret" % port)
    assert status == 403, body
    assert b"127.0.0.1:%d is not one of the testbed's package archives (deb.example.org:80" % port in body
    assert b"--host-network" in body
    assert seen == []


def test_a_package_file_is_kept_in_the_cache_and_served_from_it(namespace, archive, tmp_path):
    port, root, seen = archive
    cache = tmp_path / "cache"
    cache.mkdir()
    (root / "pool" / "hello_2.10-3_amd64.deb").write_bytes(b"!<arch>\npackage\n")
    url = "http://127.0.0.1:%d/pool/hello_2.10-3_amd64.deb" % port
    with proxy(namespace, [("127.0.0.1", port)], cache):
        assert fetch(namespace, url) == (200, b"!<arch>\npackage\n")
        assert (cache / "hello_2.10-3_amd64.deb").read_bytes() == b"!<arch>\npackage\n"
        (root / "pool" / "hello_2.10-3_amd64.deb").unlink()
        assert fetch(namespace, url) == (200, b"!<arch>\npackage\n")
        assert seen == ["/pool/hello_2.10-3_amd64.deb"]  # once: the second came from the cache
        status, _ = fetch(namespace, "http://127.0.0.1:%d/pool/missing_1.0_all.deb" % port)
    assert status == 404
    # an answer that is not a package leaves nothing, staged copies included
    assert sorted(p.name for p in cache.iterdir()) == ["hello_2.10-3_amd64.deb"]


def test_a_link_in_the_cache_is_not_followed(namespace, archive, tmp_path):
    port, root, seen = archive
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "host-file").write_bytes(b"host secret\n")
    (cache / "evil_1.0_all.deb").symlink_to(tmp_path / "host-file")
    (root / "pool" / "evil_1.0_all.deb").write_bytes(b"!<arch>\nreal\n")
    with proxy(namespace, [("127.0.0.1", port)], cache):
        assert fetch(namespace, "http://127.0.0.1:%d/pool/evil_1.0_all.deb" % port) == (200, b"!<arch>\nreal\n")
    assert (tmp_path / "host-file").read_bytes() == b"host secret\n"


def test_the_archives_are_read_from_the_images_apt_sources(tmp_path):
    sources = tmp_path / "etc" / "apt" / "sources.list.d"
    sources.mkdir(parents=True)
    (tmp_path / "etc" / "apt" / "sources.list").write_text(
        "# a comment\ndeb [signed-by=/usr/share/keyrings/k.gpg] http://archive.ubuntu.com/ubuntu noble main\n")
    (sources / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Suites: bookworm-security\nTypes: deb deb-src\nURIs: https://security.debian.org:8443/debian-security\n\n"
        "Types: deb\nURIs: http://off.example.org/debian\nSuites: bookworm\nEnabled: no\n")
    (sources / "old.list.disabled").write_text("deb http://disabled.example.org/ x main\n")
    assert postroj.read_apt_sources(tmp_path) == [
        ("http://archive.ubuntu.com/ubuntu", "noble"), ("http://deb.debian.org/debian", "bookworm"),
        ("http://deb.debian.org/debian", "bookworm-updates"),
        ("https://security.debian.org:8443/debian-security", "bookworm-security")]
    assert postroj.archive_endpoints(tmp_path) == (
        ("archive.ubuntu.com", 80), ("deb.debian.org", 80), ("security.debian.org", 8443))
    assert postroj.apt_suite(tmp_path) == "noble"


def test_a_link_a_container_put_for_partial_is_not_written_through(namespace, archive, tmp_path):
    """The package cache is bound into containers: its partial/ may be a link they made; the proxy stages
    what it keeps elsewhere."""
    port, root, _seen = archive
    cache = tmp_path / "cache"
    cache.mkdir()
    host = tmp_path / "host-dir"
    host.mkdir()
    (cache / "partial").symlink_to(host)
    (root / "pool" / "hello_2.10-3_amd64.deb").write_bytes(b"!<arch>\npackage\n")
    seen = []
    with proxy(namespace, [("127.0.0.1", port)], cache):
        original = os.open

        def watch(path, *args, **kwargs):
            seen.append(os.path.realpath(str(path)))
            return original(path, *args, **kwargs)

        postroj.os.open = watch
        try:
            assert fetch(namespace, "http://127.0.0.1:%d/pool/hello_2.10-3_amd64.deb" % port)[0] == 200
        finally:
            postroj.os.open = original
    assert not [p for p in seen if p.startswith(str(host))], seen
    assert list(host.iterdir()) == []
    assert (cache / "hello_2.10-3_amd64.deb").read_bytes() == b"!<arch>\npackage\n"


def test_an_archive_the_containers_sources_name_is_reached_on_a_public_network_only(namespace, archive, tmp_path):
    """A test's own archive (autopkgtest's --add-apt-source), named in the container's apt sources at the time of
    the request: a public address is reached, at the address checked; one on the host's loopback is refused
    with the option that allows it, and nothing is asked of it."""
    port, root, seen = archive
    (root / "secret").write_bytes(b"the host's own service\n")
    container_root = tmp_path / "container-root"
    (container_root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (container_root / "etc" / "apt" / "sources.list.d" / "test.list").write_text(
        "deb [trusted=yes] http://127.0.0.1:%d/ ./\ndeb http://93.184.216.34:8080/debian bookworm main\n" % port)
    with proxy(namespace, [("deb.example.org", 80)]) as served:
        served.root = str(container_root)  # the container's root file system, as its leader's handle shows it
        status, body = fetch(namespace, "http://127.0.0.1:%d/secret" % port)
        assert status == 403 and b"is on the host's loopback or a private network" in body, body
        assert b"--archive http://127.0.0.1:%d/" % port in body
        assert seen == []
        assert served.target(["GET", "http://93.184.216.34:8080/debian/dists/bookworm/InRelease", "HTTP/1.1"]) == \
            ("93.184.216.34", 8080)
        assert served.target(["CONNECT", "93.184.216.34:8080", "HTTP/1.1"]) == ("93.184.216.34", 8080)
        # not named by the sources: refused, public or not
        assert served.target(["GET", "http://93.184.216.34:8081/x", "HTTP/1.1"]).startswith("403 Forbidden")
        # the sources changed: the archive is no longer reached
        (container_root / "etc" / "apt" / "sources.list.d" / "test.list").write_text("")
        assert served.target(["GET", "http://93.184.216.34:8080/x", "HTTP/1.1"]).startswith("403 Forbidden")


@pytest.mark.parametrize("host, public", [("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False),
                                          ("169.254.1.1", False), ("::1", False), ("100.64.0.1", False),
                                          ("93.184.216.34", True), ("2606:4700::1111", True)])
def test_public_addresses_only(host, public):
    assert postroj.public_address(host, 80) == (host if public else None)
