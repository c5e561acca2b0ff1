"""What the user may type as an image source, checksums, --check-network targets and package files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

import postroj

HEX = "0123456789abcdef" * 4


# --- registries -------------------------------------------------------------------


@pytest.mark.parametrize("reference, name", [
    ("docker://registry.example.org/library/debian:12", "debian-12"),
    ("docker://docker.io/library/ubuntu:24.04", "ubuntu-24.04"),
    ("docker://quay.io/centos/centos:stream9", "centos-stream9"),
    ("docker://localhost:5000/team/app", "app"),
    ("oci:/srv/layouts/debian:bookworm", "debian-bookworm"),
    ("oci-archive:/srv/images/alpine.tar", "alpine"),
    ("docker-archive:/srv/images/fedora.tar", "fedora"),
])
def test_registry_references(reference, name):
    got_name, source = postroj.parse_source(reference)
    assert got_name == name
    assert source == postroj.Source("registry", reference)


@pytest.mark.parametrize("reference", [
    "docker://", "docker:///", "oci:", "oci-archive:", "docker-archive:",
    "docker://registry.example.org/debian :12", "docker://a b",
])
def test_malformed_registry_references(usage_error, reference):
    error = usage_error(postroj.parse_source, reference)
    assert "malformed image reference" in error.message


# --- URLs -------------------------------------------------------------------------


@pytest.mark.parametrize("url, name", [
    ("https://images.example.org/rootfs/alpine-3.20.tar.xz", "alpine-3.20"),
    ("http://127.0.0.1:8080/debian-bookworm-minbase.tar.zst", "debian-bookworm-minbase"),
    ("https://example.org/a/b/rootfs.tgz", "rootfs"),
    ("https://example.org/rootfs.tar?token=abc", "rootfs"),
])
def test_tarball_urls(url, name):
    got_name, source = postroj.parse_source(url, sha256=HEX.upper())
    assert got_name == name
    assert source == postroj.Source("http", url, None, HEX)


@pytest.mark.parametrize("url", [
    "https://example.org/disk.iso", "https://example.org/", "http://example.org/rootfs.tar.xz.sig",
    "https://example.org/rootfs.zip",
])
def test_url_that_is_not_a_tarball_is_refused(usage_error, url):
    error = usage_error(postroj.parse_source, url)
    assert "does not name a root file system tarball" in error.message
    assert ".tar.xz" in error.hint


@pytest.mark.parametrize("url", [
    "http:///rootfs.tar.xz", "https://exa mple.org/rootfs.tar", "https://example.org/root fs.tar",
])
def test_malformed_urls(usage_error, url):
    assert "malformed URL" in usage_error(postroj.parse_source, url).message


@pytest.mark.parametrize("url", ["http://[::1/rootfs.tar", "https://[example.org]/rootfs.tar.xz"])
def test_url_that_urllib_cannot_parse_is_a_usage_error(usage_error, url):
    # urllib.parse raises ValueError for these; postroj must turn it into `error:` + `hint:`.
    usage_error(postroj.parse_source, url)


@pytest.mark.parametrize("reference", [
    "ftp://example.org/rootfs.tar", "s3://bucket/rootfs.tar.xz", "file:///srv/rootfs.tar", "git+ssh://host/repo",
])
def test_unsupported_schemes(usage_error, reference):
    error = usage_error(postroj.parse_source, reference)
    assert "unsupported scheme" in error.message
    assert "docker://" in error.hint and "https://" in error.hint


# --- local paths ------------------------------------------------------------------


def test_local_directory(tmp_path, monkeypatch):
    (tmp_path / "my-rootfs").mkdir()
    monkeypatch.chdir(tmp_path)
    for reference in ("./my-rootfs", "my-rootfs", str(tmp_path / "my-rootfs") + "/"):
        name, source = postroj.parse_source(reference)
        assert name == "my-rootfs"
        assert source == postroj.Source("directory", str(tmp_path / "my-rootfs"))


def test_local_tarball(tmp_path, monkeypatch):
    tarball = tmp_path / "Debian_12.tar.gz"
    tarball.write_bytes(b"not checked here")
    monkeypatch.chdir(tmp_path)
    name, source = postroj.parse_source("./Debian_12.tar.gz", sha256=HEX)
    assert name == "debian_12"
    assert source == postroj.Source("tarball", str(tarball), None, HEX)


@pytest.mark.parametrize("relative", ["missing-dir/", "sub/missing", "./nothing-here", "./rootfs.tar.xz"])
def test_missing_paths(usage_error, tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    error = usage_error(postroj.parse_source, relative)
    assert "does not exist" in error.message
    error = usage_error(postroj.parse_source, str(tmp_path / relative))
    assert "does not exist" in error.message


def test_missing_tarball_in_the_current_directory(usage_error, tmp_path, monkeypatch):
    # A name ending in .tar.xz is a path, not a catalogue label: say it is missing, not "unknown image".
    monkeypatch.chdir(tmp_path)
    error = usage_error(postroj.parse_source, "rootfs.tar.xz")
    assert "does not exist" in error.message


@pytest.mark.parametrize("sha256", ["abc", "g" * 64, HEX[:63], HEX + "0", " " + HEX[1:], "sha256:" + HEX])
def test_bad_sha256(usage_error, tmp_path, sha256):
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"x")
    error = usage_error(postroj.parse_source, str(tarball), sha256=sha256)
    assert "invalid --sha256" in error.message
    assert "64 hex digits" in error.hint


@pytest.mark.parametrize("reference", ["", "debian\n", "debian-bookworm\r", "a\0b", "https://example.org/x.tar\n"],
                         ids=repr)
def test_references_with_control_characters(usage_error, reference):
    assert "invalid image reference" in usage_error(postroj.parse_source, reference).message


# --- derived names ----------------------------------------------------------------


@pytest.mark.parametrize("reference, name", [
    ("docker://registry.example.org/library/debian:12", "debian-12"),
    ("docker://Registry.Example.org:5000/Team/App_Image:V1.2", "app_image-v1.2"),
    ("/srv/images/Fedora_40.tar.zst", "fedora_40"),
    ("/srv/rootfs/", "rootfs"),
    ("oci:/srv/layout", "layout"),
    ("/", "image"),
    ("", "image"),
    ("docker://r/x@sha256:" + HEX, ("x-sha256-" + HEX)[:48]),
])
def test_derive_name(reference, name):
    assert postroj.derive_name(reference) == name


@pytest.mark.parametrize("reference", [
    "docker://registry.example.org/library/debian:12",
    "docker://Registry.Example.org:5000/Team/App_Image:V1.2",
    "docker://r/" + "very-long-repository-name-" * 5 + ":tag",
    "docker://r/x@sha256:" + HEX,
    "/srv/images/--weird--.tar.xz",
    "/srv/images/.hidden.tar",
    "https://example.org/%C3%BCber.tar",
])
def test_derived_names_are_valid_image_names(reference):
    name = postroj.derive_name(reference)
    assert postroj.check_name(name) == name


# --- checksums --------------------------------------------------------------------


def test_parse_sha256sums():
    other = "f" * 64
    text = "\n".join([
        "# SHA256SUMS for the rootfs images",
        "%s  debian-bookworm.tar.xz" % HEX.upper(),
        "%s *ubuntu-noble.tar.xz" % other,
        "%s  ./sub/alpine.tar" % ("1" * 64),
        "%s  short-hash.tar" % ("2" * 63),
        "garbage line",
        "",
    ])
    assert postroj.parse_sha256sums(text, "debian-bookworm.tar.xz") == HEX
    assert postroj.parse_sha256sums(text, "ubuntu-noble.tar.xz") == other
    assert postroj.parse_sha256sums(text, "sub/alpine.tar") == "1" * 64
    assert postroj.parse_sha256sums(text, "short-hash.tar") == ""
    assert postroj.parse_sha256sums(text, "bookworm.tar.xz") == ""
    assert postroj.parse_sha256sums(text, "missing.tar") == ""
    assert postroj.parse_sha256sums("", "debian-bookworm.tar.xz") == ""


def test_verify_sha256(tmp_path):
    path = tmp_path / "rootfs.tar"
    path.write_bytes(b"root file system\n")
    actual = hashlib.sha256(b"root file system\n").hexdigest()
    assert postroj.verify_sha256(path, actual, "rootfs.tar") == actual
    assert postroj.verify_sha256(path, actual.upper(), "rootfs.tar") == actual
    assert postroj.verify_sha256(path, "", "rootfs.tar") == actual
    assert postroj.sha256_of(path) == actual


def test_verify_sha256_mismatch(tmp_path):
    path = tmp_path / "rootfs.tar"
    path.write_bytes(b"tampered\n")
    with pytest.raises(postroj.PostrojError) as info:
        postroj.verify_sha256(path, HEX, "https://example.org/rootfs.tar")
    assert info.value.exit_code == 1
    message = info.value.message
    assert "checksum mismatch for https://example.org/rootfs.tar" in message
    assert HEX in message and hashlib.sha256(b"tampered\n").hexdigest() in message
    assert "--sha256" in info.value.hint


# --- --check-network --------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://localhost", "https://example.org:8443/health", "tcp://127.0.0.1:22", "tcp://[::1]:80",
    "http://x:1/", "http://x:65535/", "tcp://db.internal:5432",
])
def test_network_targets_accepted(url):
    assert postroj.parse_network_target(url) == url


@pytest.mark.parametrize("url, words", [
    ("tcp://localhost", "no port"),
    ("tcp://localhost:", "no port"),
    ("tcp://localhost:0", "port out of range"),
    ("http://localhost:0/", "port out of range"),
    ("tcp://localhost:70000", "port out of range"),
    ("tcp://localhost:99999", "port out of range"),
    ("tcp://localhost:-1", "--check-network 'tcp://localhost:-1'"),
    ("tcp://localhost:http", "the port 'http' in --check-network 'tcp://localhost:http' is not a number"),
    ("ftp://localhost:21", "unsupported --check-network"),
    ("ssh://localhost:22", "unsupported --check-network"),
    ("localhost:80", "unsupported --check-network"),
    ("http://", "unsupported --check-network"),
    ("tcp://:80", "unsupported --check-network"),
])
def test_network_targets_refused(usage_error, url, words):
    assert words in usage_error(postroj.parse_network_target, url).message


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/health", "tcp://[db]:80"])
def test_network_target_that_urllib_cannot_parse_is_a_usage_error(usage_error, url):
    usage_error(postroj.parse_network_target, url)


# --- package files ----------------------------------------------------------------


def test_missing_package(usage_error, tmp_path):
    assert "does not exist" in usage_error(postroj.check_package_file, tmp_path / "hello.deb").message


def test_directory_is_not_a_package(usage_error, tmp_path):
    (tmp_path / "hello.deb").mkdir()
    usage_error(postroj.check_package_file, tmp_path / "hello.deb")


@pytest.mark.parametrize("name, content", [
    ("empty.deb", b""),
    ("text.deb", b"this is not a Debian package\n"),
    ("long-text.deb", b"x" * 4096),
    ("text.rpm", b"#!/bin/sh\necho not an rpm\n"),
    ("text.msi", b"MZ not an msi"),
    ("notes.txt", b"!<arch>\nplausible magic, wrong suffix"),
])
def test_files_that_are_not_packages(usage_error, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert "is not a package" in usage_error(postroj.check_package_file, path).message


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb is not installed (make setup)")
def test_real_deb_is_accepted(tmp_path):
    root = tmp_path / "hello"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: postroj-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: postroj <postroj@example.org>\n"
        "Description: test package\n")
    (root / "usr" / "share" / "postroj-hello").mkdir(parents=True)
    (root / "usr" / "share" / "postroj-hello" / "README").write_text("hello\n")
    deb = tmp_path / "postroj-hello_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert postroj.check_package_file(deb) == "deb"
    upper = tmp_path / "POSTROJ-HELLO.DEB"
    shutil.copyfile(deb, upper)
    assert postroj.check_package_file(upper) == "deb"


def test_rpm_and_msi_are_recognised_by_their_magic(tmp_path):
    rpm = tmp_path / "hello-1.0-1.noarch.rpm"
    rpm.write_bytes(b"\xed\xab\xee\xdb\x03\x00" + b"\0" * 200)
    msi = tmp_path / "hello.msi"
    msi.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 200)
    assert postroj.check_package_file(rpm) == "rpm"
    assert postroj.check_package_file(msi) == "msi"


@pytest.mark.parametrize("name, kind", [
    ("a.deb", "deb"), ("A.DEB", "deb"), ("a.rpm", "rpm"), ("a.msi", "msi"), ("a-1-1-x86_64.pkg.tar.zst", "pkg"),
    ("a.tar.gz", ""), ("deb", ""),
])
def test_package_type(name, kind):
    assert postroj.package_type(name) == kind


def test_package_matches_the_image_package_manager():
    assert postroj.package_matches("deb", "apt")
    assert postroj.package_matches("rpm", "dnf") and postroj.package_matches("rpm", "zypper")
    assert not postroj.package_matches("deb", "dnf")
    assert not postroj.package_matches("rpm", "apt")


# --- deb-src entries (issue 37: tests by source package name) -----------------------------------------------


def test_source_packages_beside_each_one_line_entry_once():
    text = ("deb http://deb.debian.org/debian bookworm main\n# a comment\n"
            "deb [signed-by=/usr/share/keyrings/x.gpg] http://x.example/apt stable main # vendor\n"
            "deb-src http://deb.debian.org/debian bookworm main\n")
    assert postroj.with_source_packages(text, deb822=False) == (
        "deb http://deb.debian.org/debian bookworm main\n# a comment\n"
        "deb [signed-by=/usr/share/keyrings/x.gpg] http://x.example/apt stable main # vendor\n"
        "deb-src [signed-by=/usr/share/keyrings/x.gpg] http://x.example/apt stable main\n"
        "deb-src http://deb.debian.org/debian bookworm main\n")
    done = postroj.with_source_packages(text, deb822=False)
    assert postroj.with_source_packages(done, deb822=False) == done


def test_source_packages_in_each_deb822_stanza():
    text = ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb deb-src\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n")
    changed = postroj.with_source_packages(text, deb822=True)
    assert changed.splitlines()[0] == "Types: deb deb-src"
    assert changed.count("Types: deb deb-src") == 2 and changed.replace("Types: deb deb-src", "Types: deb", 1) == text


def test_source_packages_are_added_in_the_image_only_to_regular_files_inside_it(tmp_path):
    root = tmp_path / "root"
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (root / "etc" / "apt" / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (root / "etc" / "apt" / "sources.list.d" / "debian.sources").write_text("Types: deb\nURIs: http://x/\n")
    outside = tmp_path / "host-sources.list"
    outside.write_text("deb http://host.example/ stable main\n")
    (root / "etc" / "apt" / "sources.list.d" / "escape.list").symlink_to(outside)  # absolute: inside root, not there
    (root / "etc" / "apt" / "sources.list.d" / "fifo.list").mkdir()
    postroj.add_source_packages(root)
    assert (root / "etc" / "apt" / "sources.list").read_text().splitlines()[1] == \
        "deb-src http://deb.debian.org/debian bookworm main"
    assert (root / "etc" / "apt" / "sources.list.d" / "debian.sources").read_text().startswith("Types: deb deb-src")
    assert outside.read_text() == "deb http://host.example/ stable main\n"  # the host's file is never written
