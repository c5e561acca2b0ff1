"""Bootstrapping from the distributions' own archives: the apt sources of the publishers' images, the
archive mirror for retired releases, Ubuntu's pinned keyring, and the mmdebstrap command line."""

from __future__ import annotations

import pytest

import postroj

DIST = postroj.find_distribution


@pytest.mark.parametrize("label, archive, security, components", [
    ("debian-bullseye", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security", "main"),
    ("debian-bookworm", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security", "main"),
    ("debian-trixie", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security", "main"),
    ("ubuntu-focal", "http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu", "main universe"),
    ("ubuntu-jammy", "http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu", "main universe"),
    ("ubuntu-noble", "http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu", "main universe"),
])
def test_releases_get_updates_and_the_security_archive(label, archive, security, components):
    release = label.split("-")[1]
    assert postroj.apt_sources(DIST(label)) == [
        "deb %s %s %s" % (archive, release, components),
        "deb %s %s-updates %s" % (archive, release, components),
        "deb %s %s-security %s" % (security, release, components),
    ]


def test_retired_debian_releases_come_from_the_archive_mirror():
    buster = DIST("debian-buster")
    assert buster.archived
    assert [d.label for d in postroj.DISTRIBUTIONS if d.archived] == ["debian-buster"]
    assert postroj.apt_sources(buster) == [
        "deb http://archive.debian.org/debian buster main",
        "deb http://archive.debian.org/debian buster-updates main",
        "deb http://archive.debian.org/debian-security buster/updates main",  # the old name of the suite
    ]


def test_sid_has_neither_updates_nor_security():
    assert postroj.apt_sources(DIST("debian-sid")) == ["deb http://deb.debian.org/debian sid main"]


def test_mirrors_given_replace_the_archives():
    lines = postroj.apt_sources(DIST("debian-bookworm"), "http://m.example/debian/", "http://s.example/sec")
    assert lines == ["deb http://m.example/debian bookworm main", "deb http://m.example/debian bookworm-updates main",
                     "deb http://s.example/sec bookworm-security main"]
    # the security archive stays the distribution's own unless it is given too
    assert postroj.apt_sources(DIST("ubuntu-noble"), "http://m.example/ubuntu")[2].startswith(
        "deb http://security.ubuntu.com/ubuntu noble-security")


def test_mmdebstrap_command_line(tmp_path):
    dist = DIST("debian-bookworm")
    sources = postroj.apt_sources(dist)
    argv = postroj.bootstrap_argv("mmdebstrap", dist, tmp_path / "rootfs", sources, tmp_path / "cache")
    assert argv[0] == "mmdebstrap"
    assert "--variant=minbase" in argv
    assert "--include=apt,systemd,systemd-sysv,dbus" in argv
    assert argv[-5:] == ["bookworm", str(tmp_path / "rootfs"), *sources]
    assert not [a for a in argv if a.startswith(("--keyring", "--aptopt"))]
    assert "--customize-hook=sync-out /var/cache/apt/archives %s" % (tmp_path / "cache") in argv


def test_mmdebstrap_gets_the_keyring_and_copies_it_into_the_image(tmp_path):
    keyring = tmp_path / "keyrings" / "ubuntu-archive-keyring.gpg"
    dist = DIST("ubuntu-jammy")
    argv = postroj.bootstrap_argv("mmdebstrap", dist, tmp_path / "rootfs", postroj.apt_sources(dist),
                                  tmp_path / "cache", keyring)
    assert "--keyring=%s" % keyring.parent in argv
    assert "--setup-hook=copy-in %s /etc/apt/trusted.gpg.d/" % keyring in argv
    assert argv.index("--setup-hook=mkdir -p \"$1\"/etc/apt/trusted.gpg.d") < argv.index(
        "--setup-hook=copy-in %s /etc/apt/trusted.gpg.d/" % keyring)
    # signature checks are never switched off
    assert not [a for a in argv if "trusted=yes" in a or "AllowInsecure" in a or "allow-insecure" in a]


def test_accept_expired_keeps_the_option_in_the_image(tmp_path):
    dist = DIST("debian-sid")
    argv = postroj.bootstrap_argv("mmdebstrap", dist, tmp_path / "r", postroj.apt_sources(dist), tmp_path / "c",
                                  accept_expired=True)
    assert '--aptopt=Acquire::Check-Valid-Until "false";' in argv


def test_debootstrap_takes_the_first_archive(tmp_path):
    dist = DIST("ubuntu-noble")
    keyring = tmp_path / "k.gpg"
    argv = postroj.bootstrap_argv("debootstrap", dist, tmp_path / "rootfs", postroj.apt_sources(dist),
                                  tmp_path / "cache", keyring)
    assert argv[0] == "debootstrap"
    assert "--keyring=%s" % keyring in argv
    assert argv[-3:] == ["noble", str(tmp_path / "rootfs"), "http://archive.ubuntu.com/ubuntu"]


def test_ubuntu_keyring_is_pinned_and_debian_uses_the_hosts():
    pin = postroj.KEYRINGS["ubuntu"]
    assert pin.package_url.startswith(postroj.UBUNTU_MIRROR + "/pool/main/u/ubuntu-keyring/")
    assert len(pin.package_sha256) == 64 and len(pin.sha256) == 64
    assert pin.member == "usr/share/keyrings/ubuntu-archive-keyring.gpg"
    assert "debian" not in postroj.KEYRINGS


def test_bootstrap_source_carries_the_mirrors(monkeypatch):
    name, source = postroj.parse_source("debian-12", via="bootstrap", mirror="http://m.example/debian",
                                        security="http://s.example/debian-security", accept_expired=True)
    assert (name, source.kind, source.location, source.security, source.accept_expired) == (
        "debian-bookworm", "bootstrap", "http://m.example/debian", "http://s.example/debian-security", True)
    # a registry image falls back to the same bootstrap
    _, registry = postroj.parse_source("debian-12", mirror="http://m.example/debian")
    assert registry.kind == "registry"
    assert registry.fallback.kind == "bootstrap" and registry.fallback.location == "http://m.example/debian"
    assert postroj.parse_source("fedora-41")[1].fallback is None
    # POSTROJ_MIRROR is read once, into the settings, which the commands hand to parse_source
    settings = postroj.Settings.from_env({"POSTROJ_MIRROR": "http://env.example/debian"})
    assert settings.mirror == "http://env.example/debian"
    assert postroj.parse_source("debian-12", via="bootstrap", mirror=settings.mirror)[1].location == settings.mirror
    target = postroj.resolve_image(settings._replace(home=postroj.Path("/nonexistent")), "debian-12", pull=True)
    assert target.source.fallback.location == "http://env.example/debian"


@pytest.mark.parametrize("option, url", [
    ("mirror", "deb.debian.org/debian"),
    ("mirror", "ftp://deb.debian.org/debian"),
    ("mirror", "http://x y/debian"),
    ("security", "http://host/debian' trusted=yes"),
    ("security", "debian-security"),
])
def test_malformed_mirrors_are_usage_errors(usage_error, option, url):
    error = usage_error(postroj.parse_source, "debian-12", via="bootstrap", **{option: url})
    assert "invalid --" in error.message


def test_list_images_json_says_which_releases_are_archived(capsys):
    assert postroj.main(["list-images", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    archived = {d["label"]: d["archived"] for d in data["distributions"]}
    assert archived["debian-buster"] is True and archived["debian-bookworm"] is False


def test_package_manager_errors_keep_what_apt_said():
    text = "Reading package lists...\nE: Release file for http://x/InRelease is expired\nE: failed\nmore\n"
    assert postroj.package_manager_errors(text) == ["E: Release file for http://x/InRelease is expired", "E: failed"]
    assert postroj.package_manager_errors("just\nlines\n") == ["just", "lines"]



@pytest.mark.parametrize("message, falls_back", [
    ("skopeo copy docker://docker.io/library/debian:bookworm-slim returned non-zero exit code 1\n  time=... "
     "pinging container registry registry-1.docker.io: Get ...: dial tcp: lookup registry-1.docker.io: no such host",
     True),
    ("skopeo copy docker://x returned non-zero exit code 1\n  ... dial tcp 127.0.0.1:5: connect: connection refused",
     True),
    ("skopeo copy docker://x returned non-zero exit code 1\n  reading manifest bookworm-slim: manifest unknown", True),
    ("skopeo copy docker://x returned non-zero exit code 1\n  writing blob: write /v/oci/blobs: no space left on "
     "device", False),
    ("umoci raw unpack returned non-zero exit code 1\n  ... not found", False),
    ("skopeo copy docker://x returned non-zero exit code 1\n  invalid layer digest", False),
])
def test_only_an_unreachable_registry_or_a_missing_image_falls_back(message, falls_back):
    assert postroj.registry_unavailable(message) is falls_back
