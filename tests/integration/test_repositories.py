"""Packages from a vendor's repository (issue 39): a signed apt repository served by the suite on the host's
loopback, made with the suite's own key, added as vendors' instructions say (`--repo 'deb [signed-by=KEY] URL SUITE
main'`, `--repo-key KEY`), its service package installed by name with its unit and port checked, the result naming
the repository; the key armored and binary; a wrong key fails that image with apt's signature error; a release the
repository has no suite for fails that release only."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

import rig

SUITES = ("bookworm",)  # what the vendor publishes: no bullseye


def sign(gnupg: Path, *args: str) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                           "", *args], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    """The repository on loopback: (its URL, its key armored, its key binary, another key armored)."""
    root = tmp_path_factory.mktemp("vendor")
    gnupg, other = root.parent / (root.name + "-gnupg"), root.parent / (root.name + "-other")
    for home in (gnupg, other):
        home.mkdir(mode=0o700)
        sign(home, "--quick-gen-key", "vendor <vendor@postroj.invalid>", "ed25519", "sign", "never")
    pool = root / "pool"
    pool.mkdir()
    rig.build_demo_deb(pool, port=8097)
    for suite in SUITES:
        packages = root / "dists" / suite / "main" / "binary-amd64" / "Packages"
        packages.parent.mkdir(parents=True)
        packages.write_bytes(subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=str(root), check=True,
                                            capture_output=True).stdout)
        release = subprocess.run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Suite=%s" % suite,
                                  "-o", "APT::FTPArchive::Release::Codename=%s" % suite,
                                  "-o", "APT::FTPArchive::Release::Architectures=amd64 all",
                                  "-o", "APT::FTPArchive::Release::Components=main", "release", "dists/%s" % suite],
                                 cwd=str(root), check=True, capture_output=True).stdout
        (root / "dists" / suite / "Release").write_bytes(release)
        sign(gnupg, "--yes", "--clearsign", "-o", str(root / "dists" / suite / "InRelease"),
             str(root / "dists" / suite / "Release"))
    keys = root.parent / (root.name + "-keys")
    keys.mkdir()
    (keys / "vendor.asc").write_bytes(sign(gnupg, "--armor", "--export"))
    (keys / "vendor.gpg").write_bytes(sign(gnupg, "--export"))
    (keys / "other.asc").write_bytes(sign(other, "--armor", "--export"))
    (root / "vendor-archive-keyring.gpg").write_bytes(sign(gnupg, "--export"))  # where instructions curl it from
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(root)))
    server.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield "http://127.0.0.1:%d/" % server.server_address[1], keys
    finally:
        server.shutdown()
        server.server_close()
        for home in (gnupg, other):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def run(images, tmp_path, *args, check):
    report = tmp_path / "report.json"
    proc = images("probe", *args, "--json", str(report), check=check, timeout=600)
    assert "Traceback" not in proc.stderr
    return proc, json.loads(report.read_text())["results"]


def test_a_vendors_service_installs_from_its_signed_repository_and_a_release_it_lacks_fails_alone(images, vendor,
                                                                                                tmp_path):
    url, keys = vendor
    entry = "deb [signed-by=/usr/share/keyrings/vendor.asc] %s %%s main" % url
    proc, rows = run(images, tmp_path, "--image", "debian-bookworm", "--image", "debian-bullseye",
                     "--repo", "debian-bookworm=" + entry % "bookworm", "--repo", "debian-bullseye=" + entry % "bullseye",
                     "--repo-key", str(keys / "vendor.asc"), "--install", "postroj-demo", "--check-unit",
                     "postroj-demo", "--check-network", "http://localhost:8097", check=1)
    bookworm = [(r["kind"], r["status"]) for r in rows if r["image"] == "debian-bookworm"]
    assert bookworm == [("package", "pass"), ("unit", "pass"), ("network", "pass")], rows
    installed = [r for r in rows if r["image"] == "debian-bookworm" and r["kind"] == "package"][0]
    assert installed["name"] == "installed: package postroj-demo 1.0 from %s" % url.rstrip("/"), installed["name"]
    failed = [r for r in rows if r["image"] == "debian-bullseye" and r["status"] == "fail"]
    assert [r["kind"] for r in failed] == ["package"], rows
    assert failed[0]["reason"].startswith("the repository %s on debian-bullseye: " % url), failed[0]["reason"]
    assert "bullseye Release" in failed[0]["reason"] and "Release file" in failed[0]["reason"], failed[0]["reason"]


def test_a_binary_key_from_a_url_the_entry_does_not_place_goes_where_postroj_puts_it(images, vendor, tmp_path):
    url, keys = vendor
    proc, rows = run(images, tmp_path, "--image", "debian-bookworm", "--repo", "deb %s bookworm main" % url,
                     "--repo-key", url + "vendor-archive-keyring.gpg", "--install", "postroj-demo", "--command",
                     "grep -r 'signed-by=/etc/apt/keyrings/postroj-repo-1.gpg' /etc/apt/sources.list.d/", check=0)
    assert [(r["kind"], r["status"]) for r in rows] == [("package", "pass"), ("command", "pass")], rows


def test_a_repository_signed_by_another_key_fails_its_image_with_apts_signature_error(images, vendor, tmp_path):
    url, keys = vendor
    proc, rows = run(images, tmp_path, "--image", "debian-bookworm", "--repo",
                     "deb [signed-by=/usr/share/keyrings/vendor.asc] %s bookworm main" % url,
                     "--repo-key", str(keys / "other.asc"), "--install", "postroj-demo", check=1)
    [failed] = [r for r in rows if r["status"] == "fail"]
    assert failed["reason"].startswith("the repository %s on debian-bookworm: " % url), failed["reason"]
    assert "NO_PUBKEY" in failed["reason"] or "signatures couldn't be verified" in failed["reason"], failed["reason"]


def test_bad_repository_options_are_refused_before_anything_boots(images, vendor, tmp_path):
    url, keys = vendor
    (tmp_path / "not-a-key").write_text("hello\n")
    for args, said in [
            (["--repo", "deb ftp://example.org/ bookworm main"], "must be http:// or https://"),
            (["--repo", "deb [signed-by=x] %s" % url], "invalid --repo"),
            (["--repo", "deb %s bookworm main" % url, "--repo-key", str(tmp_path / "not-a-key")],
             "is not an OpenPGP public key"),
            (["--repo-key", str(keys / "vendor.asc")], "--repo-key without --repo")]:
        proc = images("probe", "--image", "debian-bookworm", "--install", "postroj-demo", *args, check=2)
        assert said in proc.stderr and "hint: " in proc.stderr, proc.stderr
    # a key URL that serves no key: nothing boots
    proc = images("probe", "--image", "debian-bookworm", "--install", "postroj-demo", "--repo",
                  "deb %s bookworm main" % url, "--repo-key", url + "dists/bookworm/Release", check=2)
    assert "is not an OpenPGP public key" in proc.stderr, proc.stderr
    proc = images("probe", "--image", "debian-bookworm", "--install", "postroj-demo", "--repo",
                  "deb %s bookworm main" % url, "--repo-key", url + "missing.gpg", check=1)
    assert "error: " in proc.stderr and "404" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
