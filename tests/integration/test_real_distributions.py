"""Real distributions and real packages (issue 12): Debian and Ubuntu bootstrapped from their own archives
with the publishers' apt sources and Ubuntu's pinned keyring, booted, and probed with packages nobody here
wrote, downloaded from Debian's mirror and Ubuntu's archive in the test run."""

from __future__ import annotations

import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import postroj
import rig

REAL = rig.REAL_IMAGES
CODENAMES = {"debian-bookworm": "bookworm", "debian-trixie": "trixie", "ubuntu-jammy": "jammy",
             "ubuntu-noble": "noble"}


@pytest.fixture(scope="session")
def debs(real, tmp_path_factory) -> "dict[str, Path]":
    """nginx from each distribution's archive, fetched with apt-get download (a private apt configuration)."""
    root = tmp_path_factory.mktemp("debs")
    found = {}
    for suite, sources in rig.DEBIAN_SOURCES.items():
        if suite == "bookworm":
            found[suite] = rig.PrivateApt(root / ("apt-" + suite), sources).download("nginx", root / suite)
    keyring = rig.ubuntu_keyring(real.cache)
    for suite, sources in rig.UBUNTU_SOURCES.items():
        found[suite] = rig.PrivateApt(root / ("apt-" + suite), sources, [keyring]).download("nginx", root / suite)
    return found


def results(path: Path) -> "list[dict]":
    return json.loads(path.read_text())["results"]


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


# --- acquisition ----------------------------------------------------------------


@pytest.mark.parametrize("label", REAL)
def test_bootstrapped_images_have_the_publishers_sources(real, label):
    codename = CODENAMES[label]
    lines = (real.home / "images" / label / "etc" / "apt" / "sources.list").read_text().split()
    text = " ".join(lines)
    if label.startswith("debian"):
        expected = ["deb http://deb.debian.org/debian %s main" % codename,
                    "deb http://deb.debian.org/debian %s-updates main" % codename,
                    "deb http://deb.debian.org/debian-security %s-security main" % codename]
    else:
        expected = ["deb http://archive.ubuntu.com/ubuntu %s main universe" % codename,
                    "deb http://archive.ubuntu.com/ubuntu %s-updates main universe" % codename,
                    "deb http://security.ubuntu.com/ubuntu %s-security main universe" % codename]
    for line in expected:
        assert line in text, text
    info = json.loads(real("list-images", "--json", check=0).stdout)
    image = [i for i in info["images"] if i["name"] == label][0]
    assert image["package_manager"] == "apt"
    assert image["source"].startswith("bootstrap:%s " % codename)


def test_ubuntu_keyring_is_the_pinned_one_and_apt_in_the_image_trusts_it(real):
    keyring = rig.ubuntu_keyring(real.cache)
    assert postroj.sha256_of(keyring) == postroj.UBUNTU_KEYRING.sha256
    for label in ("ubuntu-jammy", "ubuntu-noble"):
        inside = real.home / "images" / label / "etc" / "apt" / "trusted.gpg.d" / keyring.name
        assert inside.read_bytes() == keyring.read_bytes()


def test_real_images_boot_and_run_journald(real, tmp_path):
    report = tmp_path / "boot.json"
    args = ["probe"] + [x for label in REAL for x in ("--image", label)]
    real(*args, "--command", "systemctl is-active systemd-journald", "--command", "cat /etc/os-release",
         "--json", str(report), check=0, timeout=600)
    rows = results(report)
    assert [(r["image"], r["status"]) for r in rows] == [(label, "pass") for label in REAL for _ in (1, 2)]
    for row in rows:
        if row["target"] == "cat /etc/os-release":
            assert "VERSION_CODENAME=%s" % CODENAMES[row["image"]] in row["output"]


# --- real packages ----------------------------------------------------------------


def test_nginx_of_a_security_release_installs_on_bootstrapped_bookworm(real, debs, tmp_path):
    """nginx depends on the very nginx-common of its security update: the image needs -security."""
    nginx = debs["bookworm"]
    assert "+deb12u" in nginx.name
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = real("probe", "--image", "debian-bookworm", "--package", str(nginx), "--check-unit", "nginx",
                "--check-network", "http://localhost:80", "--json", str(report), "--junit", str(junit), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = results(report)
    assert [(r["kind"], r["status"]) for r in rows] == [("package", "pass"), ("unit", "pass"), ("network", "pass")]
    everything = report.read_text() + junit.read_text() + proc.stdout
    # apt's progress lines are gone; its plain lines stay (in the JSON, with an escaped line end)
    plain = everything.replace("Reading package lists...\n", "").replace("Reading package lists...\\n", "")
    assert "0%" not in everything and "Reading package lists..." not in plain
    assert "Attempted to remove disk file system" not in everything


@pytest.mark.parametrize("suite", ["jammy", "noble"])
def test_ubuntu_nginx_from_ubuntus_archive_serves(real, debs, suite, tmp_path):
    report = tmp_path / "r.json"
    proc = real("probe", "--image", "ubuntu-" + suite, "--package", str(debs[suite]), "--check-unit", "nginx",
                "--check-network", "http://localhost:80", "--expect-body", "nginx", "--json", str(report),
                timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["status"] for r in results(report)] == ["pass", "pass", "pass"]


def test_a_dependency_that_cannot_be_met_skips_the_checks_and_ends_in_seconds(real, debs, tmp_path):
    """noble's nginx needs libssl3t64, which jammy does not have."""
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    started = time.monotonic()
    proc = real("probe", "--image", "ubuntu-jammy", "--package", str(debs["noble"]), "--check-unit", "nginx",
                "--check-network", "http://localhost:80", "--json", str(report), "--junit", str(junit), timeout=900)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    no_traceback(proc)
    rows = results(report)
    # the download before the boot is the install's first half: it fails the install stage alone
    assert [(r["stage"], r["kind"], r["status"]) for r in rows] == [
        ("installed", "package", "fail"), ("installed", "unit", "skip"), ("installed", "network", "skip")], rows
    assert "libssl3t64" in rows[0]["reason"] + rows[0]["output"], rows[0]
    assert rows[1]["reason"].startswith("not run: ") and debs["noble"].name in rows[1]["reason"], rows[1]
    assert elapsed < 30, "the skipped checks waited: %.1f s" % elapsed
    suite = ET.parse(str(junit)).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "2")
    assert "0%" not in rows[0]["output"]
    assert "Attempted to remove disk file system" not in rows[0]["output"]


def test_a_wrong_http_status_says_what_came_back(real, debs, tmp_path):
    report = tmp_path / "r.json"
    real("probe", "--image", "ubuntu-noble", "--package", str(debs["noble"]), "--check-network",
         "http://localhost:80/", "--expect-status", "418", "--timeout", "2", "--json", str(report), check=1,
         timeout=900)
    network = results(report)[1]
    assert network["status"] == "fail"
    assert network["reason"] == "http://localhost:80/ answered HTTP 200, expected 418"


# --- releases that cannot be bootstrapped here ---------------------------------------


def test_a_retired_release_bootstraps_from_the_archive_mirror_and_names_it(postroj):
    proc = postroj("image", "debian-buster", "--via", "bootstrap", timeout=600)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "bootstrapping debian-buster from http://archive.debian.org/debian failed" in proc.stderr
    assert "hint: check that this host reaches http://archive.debian.org/debian" in proc.stderr
    assert not (postroj.home / "images" / "debian-buster").exists()
    assert not [p for p in (postroj.home / "tmp").iterdir()]


def test_an_expired_release_file_is_refused_with_the_way_out(postroj):
    """The mirror reachable here serves sid's Release file past its Valid-Until."""
    proc = postroj("image", "debian-sid", "--via", "bootstrap", timeout=600)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "is expired" in proc.stderr
    assert "--accept-expired" in proc.stderr
    assert not (postroj.home / "images" / "debian-sid").exists()


# --- the keyring pin ---------------------------------------------------------------


def tampered_keyring_package(real_package: Path, target: Path) -> Path:
    """The real ubuntu-keyring package with another archive keyring inside: a different .deb."""
    data = real_package.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    return target


def test_a_keyring_package_that_does_not_match_the_pin_is_refused(real, tmp_path):
    pin = postroj.UBUNTU_KEYRING
    genuine = [p for p in (real.cache / "downloads").glob("*-ubuntu-keyring_*_all.deb")][0]
    www = tmp_path / "www"
    www.mkdir()
    name = os.path.basename(pin.package_url)
    tampered_keyring_package(genuine, www / name)
    server = rig.HTTPServer(www).start()
    try:
        settings = postroj.Settings(tmp_path / "home", tmp_path / "cache")
        bad = pin._replace(package_url="%s/%s" % (server.url, name))
        with pytest.raises(postroj.PostrojError) as info:
            postroj.fetch_keyring(settings, bad)
        assert "checksum mismatch" in info.value.message
        # the genuine package with a keyring pin that does not match what it holds
        shutil.copyfile(genuine, www / name)
        wrong = pin._replace(package_url="%s/%s?2" % (server.url, name), sha256="0" * 64)
        with pytest.raises(postroj.PostrojError) as info:
            postroj.fetch_keyring(settings, wrong)
        assert "checksum mismatch for %s" % pin.member in info.value.message
        assert not list((tmp_path / "cache" / "keyrings").rglob("*.gpg"))
        # and the genuine one passes both pins
        good = pin._replace(package_url="%s/%s?3" % (server.url, name))
        assert postroj.sha256_of(postroj.fetch_keyring(settings, good)) == pin.sha256
    finally:
        server.stop()
