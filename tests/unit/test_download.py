"""download() against the rig's HTTP server on loopback: ETag, Range, resume and faults."""

from __future__ import annotations

import functools
import hashlib
import os
import socket

import pytest

import postroj
import rig


class CuttingHandler(rig.TarballHandler):
    """The rig's handler, which can also drop the connection half-way through one response of a path."""

    def do_GET(self) -> None:
        if self.path not in self.server.cut:  # type: ignore[attr-defined]
            return super().do_GET()
        self.server.cut.discard(self.path)  # type: ignore[attr-defined]
        self.server.log.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        path = self.translate_path(self.path)
        st = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"%x-%x"' % (int(st.st_mtime), len(data)))  # as the rig's handler does
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """rig.HTTPServer whose handler can also break the next response of a path (server.server.cut)."""
    root = tmp_path_factory.mktemp("www")
    server = rig.HTTPServer(root)
    server.server.RequestHandlerClass = functools.partial(CuttingHandler, directory=str(root))
    server.server.cut = set()  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Site:
    """One test's own directory on the shared server, and the requests for it."""

    def __init__(self, server: rig.HTTPServer, name: str) -> None:
        self.server = server
        self.prefix = "/" + name
        self.root = server.root / name
        self.root.mkdir()

    @property
    def url(self) -> str:
        return self.server.url + self.prefix

    def fault_url(self, kind: str, name: str) -> str:
        return "%s/fault/%s%s/%s" % (self.server.url, kind, self.prefix, name)

    def cut(self, name: str) -> None:
        self.server.server.cut.add("%s/%s" % (self.prefix, name))  # type: ignore[attr-defined]

    @property
    def log(self) -> list:
        return [(method, path[len(self.prefix):], headers) for method, path, headers in self.server.log
                if path.startswith(self.prefix + "/")]


@pytest.fixture
def site(server, tmp_path):
    return Site(server, tmp_path.name)


def publish(site, name: str, size: int, seed: int = 1, mtime: int = 1_700_000_000) -> bytes:
    data = bytes((i * 7 + seed) % 251 for i in range(size))
    path = site.root / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return data


def finished(dest) -> list:
    """Files in dest that are downloads, not partial files or their metadata."""
    return sorted(p for p in dest.iterdir() if not p.name.endswith((".part", ".json"))) if dest.exists() else []


def partial_files(dest) -> list:
    return sorted(dest.glob("*.part"))


def test_first_download_fetches_second_is_not_fetched_again(site, tmp_path):
    data = publish(site, "rootfs.tar.xz", 200_000)
    dest = tmp_path / "downloads"
    url = site.url + "/rootfs.tar.xz"
    path = postroj.download(url, dest, timeout=10)
    assert path.read_bytes() == data
    assert finished(dest) == [path] and partial_files(dest) == []
    first = os.stat(path)

    again = postroj.download(url, dest, timeout=10)
    assert again == path
    assert again.read_bytes() == data
    second = os.stat(again)
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns), "the file was written again"
    assert [(m, p) for m, p, _ in site.log] == [("GET", "/rootfs.tar.xz"), ("GET", "/rootfs.tar.xz")]
    assert "If-None-Match" not in site.log[0][2]
    assert site.log[1][2].get("If-None-Match") == '"%x-%x"' % (1_700_000_000, len(data))
    assert "Range" not in site.log[1][2]
    assert site.log[0][2]["User-Agent"] == "postroj/%s" % postroj.__version__


def test_changed_file_is_fetched_again(site, tmp_path):
    dest = tmp_path / "downloads"
    url = site.url + "/rootfs.tar"
    publish(site, "rootfs.tar", 50_000, seed=1)
    postroj.download(url, dest, timeout=10)
    new = publish(site, "rootfs.tar", 60_000, seed=2, mtime=1_700_000_100)
    assert postroj.download(url, dest, timeout=10).read_bytes() == new


def test_interrupted_download_is_resumed_with_a_range_request(site, tmp_path):
    data = publish(site, "rootfs.tar.zst", 300_000)
    dest = tmp_path / "downloads"
    url = site.url + "/rootfs.tar.zst"
    site.cut("rootfs.tar.zst")
    with pytest.raises(postroj.PostrojError) as error:
        postroj.download(url, dest, timeout=10)
    assert url in error.value.message
    assert "again to resume" in error.value.hint
    assert finished(dest) == []
    [part] = partial_files(dest)
    assert part.read_bytes() == data[:150_000]

    path = postroj.download(url, dest, timeout=10)
    assert path.read_bytes() == data
    assert partial_files(dest) == []
    headers = site.log[-1][2]
    assert headers.get("Range") == "bytes=150000-"
    assert headers.get("If-Range") == '"%x-%x"' % (1_700_000_000, len(data))
    assert len(site.log) == 2


def test_partial_file_of_a_file_that_changed_is_not_glued_to_the_new_one(site, tmp_path):
    dest = tmp_path / "downloads"
    url = site.url + "/rootfs.tar"
    publish(site, "rootfs.tar", 100_000, seed=1)
    site.cut("rootfs.tar")
    with pytest.raises(postroj.PostrojError):
        postroj.download(url, dest, timeout=10)
    new = publish(site, "rootfs.tar", 120_000, seed=2, mtime=1_700_000_100)
    assert postroj.download(url, dest, timeout=10).read_bytes() == new
    assert partial_files(dest) == []


def test_partial_file_that_is_already_complete(site, tmp_path):
    data = publish(site, "rootfs.tar", 100_000)
    dest = tmp_path / "downloads"
    url = site.url + "/rootfs.tar"
    site.cut("rootfs.tar")
    with pytest.raises(postroj.PostrojError):
        postroj.download(url, dest, timeout=10)
    [part] = partial_files(dest)
    part.write_bytes(data)  # the server answers 416 to a range that starts at the end
    assert postroj.download(url, dest, timeout=10).read_bytes() == data
    assert site.log[-2][2].get("Range") == "bytes=100000-"
    assert "Range" not in site.log[-1][2]


def test_interrupted_update_is_not_taken_for_the_current_file(site, tmp_path):
    # v1 is downloaded; the server gets v2; fetching v2 breaks half-way. The next download must give v2,
    # not answer "not modified" for v1 because v2's ETag was recorded before v2 arrived.
    dest = tmp_path / "downloads"
    url = site.url + "/rootfs.tar"
    publish(site, "rootfs.tar", 100_000, seed=1)
    postroj.download(url, dest, timeout=10)
    v2 = publish(site, "rootfs.tar", 140_000, seed=2, mtime=1_700_000_100)
    site.cut("rootfs.tar")
    with pytest.raises(postroj.PostrojError):
        postroj.download(url, dest, timeout=10)
    got = postroj.download(url, dest, timeout=10).read_bytes()
    assert len(got) == len(v2), "got %d bytes (v1 has 100000), the server has v2 with %d" % (len(got), len(v2))
    assert got == v2


@pytest.mark.parametrize("fault, words", [
    ("404", "HTTP 404"),
    ("500", "HTTP 500"),
    ("close", "bytes"),
    ("short", "bytes"),
])
def test_faults(site, tmp_path, fault, words):
    publish(site, "rootfs.tar.xz", 100_000)
    dest = tmp_path / "downloads"
    url = site.fault_url(fault, "rootfs.tar.xz")
    with pytest.raises(postroj.PostrojError) as error:
        postroj.download(url, dest, timeout=10)
    assert error.value.exit_code == 1
    assert url in error.value.message
    assert words in error.value.message
    assert error.value.hint
    assert finished(dest) == []


def test_missing_file(site, tmp_path):
    url = site.url + "/no-such-rootfs.tar"
    with pytest.raises(postroj.PostrojError) as error:
        postroj.download(url, tmp_path / "downloads", timeout=10)
    assert "downloading %s failed: HTTP 404" % url in error.value.message
    assert finished(tmp_path / "downloads") == []


def test_nothing_listens(tmp_path):
    url = "http://127.0.0.1:%d/rootfs.tar" % rig.free_port()
    with pytest.raises(postroj.PostrojError) as error:
        postroj.download(url, tmp_path / "downloads", timeout=5)
    assert url in error.value.message
    assert "reached" in error.value.hint
    assert finished(tmp_path / "downloads") == []


def test_published_sha256_beside_the_tarball(site):
    data = publish(site, "rootfs.tar.xz", 1000)
    digest = hashlib.sha256(data).hexdigest()
    (site.root / "SHA256SUMS").write_text("%s  other.tar.xz\n%s  rootfs.tar.xz\n" % ("0" * 64, digest))
    assert postroj.fetch_published_sha256(site.url + "/rootfs.tar.xz") == digest
    assert postroj.fetch_published_sha256(site.url + "/missing.tar.xz") == ""
    (site.root / "SHA256SUMS").unlink()
    assert postroj.fetch_published_sha256(site.url + "/rootfs.tar.xz") == ""
