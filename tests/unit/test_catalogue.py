"""The distribution catalogue, Vagrant boxes and the names postroj accepts for images and machines."""

from __future__ import annotations

import pytest

import postroj

LABELS = [d.label for d in postroj.DISTRIBUTIONS]
ALIASES = [a for d in postroj.DISTRIBUTIONS for a in d.aliases]


# --- distributions ----------------------------------------------------------------


def test_catalogue_covers_at_least_25_distributions():
    assert len(postroj.DISTRIBUTIONS) >= 25
    families = {d.family for d in postroj.DISTRIBUTIONS}
    assert {"debian", "redhat", "suse", "arch"} <= families


def test_labels_are_name_dash_release():
    for dist in postroj.DISTRIBUTIONS:
        assert dist.label == "%s-%s" % (dist.name, dist.release)
        assert dist.fullname == dist.label


def test_labels_and_aliases_are_unique():
    every = LABELS + ALIASES
    duplicates = sorted({name for name in every if every.count(name) > 1})
    assert duplicates == []
    assert postroj.all_labels() == [n for d in postroj.DISTRIBUTIONS for n in (d.label,) + d.aliases]


@pytest.mark.parametrize("name", LABELS + ALIASES)
def test_labels_and_aliases_are_valid_image_names(name):
    assert postroj.check_name(name) == name


@pytest.mark.parametrize("dist", postroj.DISTRIBUTIONS, ids=LABELS)
def test_every_distribution_has_a_known_package_manager_and_source(dist):
    assert dist.package_type in ("deb", "rpm", "pkg")
    assert dist.image.startswith(("docker://", "http://", "https://"))
    name, source = postroj.parse_source(dist.label)
    assert name == dist.label
    assert source.distribution == dist
    assert source.location == dist.image


@pytest.mark.parametrize("alias, label", [
    ("debian-10", "debian-buster"),
    ("debian-12", "debian-bookworm"),
    ("debian-unstable", "debian-sid"),
    ("ubuntu-22.04", "ubuntu-jammy"),
    ("centos-9", "centos-stream9"),
    ("al2023", "amazonlinux-2023"),
    ("tumbleweed", "opensuse-tumbleweed"),
    ("arch", "archlinux-latest"),
    ("ubuntu-26.04", "ubuntu-resolute"),
    ("ubuntu-25.10", "ubuntu-questing"),
    ("debian-14", "debian-forky"),
    ("debian-testing", "debian-forky"),
    ("almalinux-10", "almalinux-10"),
    ("rhel-10", "ubi-10"),
    ("leap-16.0", "opensuse-leap-16.0"),
])
def test_find_distribution_by_alias(alias, label):
    assert postroj.find_distribution(alias).label == label
    assert postroj.parse_source(alias)[0] == label


# --- today's releases and their end of life ----------------------------------------------


# (label, end of life) as their publishers announced them (README: Catalogue); a release added to the
# catalogue gets its line here
ANNOUNCED = {
    "debian-buster": "2024-06-30", "debian-bullseye": "2026-08-31", "debian-bookworm": "2028-06-30",
    "debian-trixie": "2030-06-30", "debian-forky": "", "debian-sid": "",
    "ubuntu-focal": "2025-05-29", "ubuntu-jammy": "2027-06-01", "ubuntu-noble": "2029-05-31",
    "ubuntu-questing": "2026-07-09", "ubuntu-resolute": "2031-05-29", "ubuntu-stonking": "2027-07-15",
    "fedora-40": "2025-05-13", "fedora-41": "2025-12-15", "fedora-42": "2026-05-27", "fedora-43": "2026-12-09",
    "fedora-44": "2027-05-19", "centos-stream9": "2027-05-31", "centos-stream10": "2030-05-31",
    "rocky-8": "2029-05-31", "rocky-9": "2032-05-31", "rocky-10": "2035-05-31",
    "almalinux-8": "2029-05-31", "almalinux-9": "2032-05-31", "almalinux-10": "2035-05-31",
    "amazonlinux-2023": "2029-06-30", "oraclelinux-8": "2029-07", "oraclelinux-9": "2032-06", "oraclelinux-10": "",
    "ubi-8": "2029-05-31", "ubi-9": "2032-05-31", "ubi-10": "2035-05-31",
    "opensuse-leap-15.6": "2026-04-30", "opensuse-leap-16.0": "2027-10-31", "opensuse-tumbleweed": "",
    "sles-15": "2031-07-31", "sles-bci-15": "2031-07-31", "archlinux-latest": "",
}
# rolling releases, development releases, and one whose publisher has not announced a date
NO_END = {"debian-forky", "debian-sid", "opensuse-tumbleweed", "archlinux-latest", "oraclelinux-10"}


def test_every_release_has_its_announced_end_of_life():
    assert {d.label: d.eol for d in postroj.DISTRIBUTIONS} == ANNOUNCED
    assert {d.label for d in postroj.DISTRIBUTIONS if not d.eol} == NO_END


@pytest.mark.parametrize("dist", postroj.DISTRIBUTIONS, ids=LABELS)
def test_end_of_life_dates_are_well_formed(dist):
    import re

    if dist.eol:
        assert re.fullmatch(r"20[2-4]\d-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?", dist.eol), dist.eol


def test_the_releases_supported_on_2026_11_29():
    day = "2026-11-29"
    ended = {d.label for d in postroj.DISTRIBUTIONS if d.ended(day)}
    assert ended == {"debian-buster", "debian-bullseye", "ubuntu-focal", "ubuntu-questing", "fedora-40", "fedora-41",
                     "fedora-42", "opensuse-leap-15.6"}
    for label in ("ubuntu-resolute", "ubuntu-stonking", "debian-forky", "fedora-43", "fedora-44", "almalinux-10",
                  "rocky-10", "oraclelinux-10", "ubi-10", "opensuse-leap-16.0"):
        assert label in LABELS and label not in ended


def test_a_release_ends_after_its_last_day():
    dist = postroj.find_distribution("ubuntu-questing")
    assert not dist.ended("2026-07-09") and dist.ended("2026-07-10")
    month = postroj.find_distribution("oraclelinux-8")  # announced by month: supported through that month
    assert not month.ended("2029-07-31") and month.ended("2029-08-01")
    assert not postroj.find_distribution("debian-sid").ended("2099-01-01")


@pytest.mark.parametrize("label, sources", [
    ("debian-forky", ["deb http://deb.debian.org/debian forky main",
                      "deb http://deb.debian.org/debian forky-updates main",
                      "deb http://deb.debian.org/debian-security forky-security main"]),
    ("ubuntu-resolute", ["deb http://archive.ubuntu.com/ubuntu resolute main universe",
                         "deb http://archive.ubuntu.com/ubuntu resolute-updates main universe",
                         "deb http://security.ubuntu.com/ubuntu resolute-security main universe"]),
    ("debian-sid", ["deb http://deb.debian.org/debian sid main"]),
])
def test_new_releases_bootstrap_from_their_publishers_suites(label, sources):
    assert postroj.apt_sources(postroj.find_distribution(label)) == sources


def test_find_distribution_of_an_unknown_name_is_none():
    assert postroj.find_distribution("debian-9") is None
    assert postroj.find_distribution("Debian-bookworm") is None
    assert postroj.find_distribution("") is None


def test_only_debian_and_ubuntu_bootstrap():
    bootstrappable = {d.name for d in postroj.DISTRIBUTIONS if d.can_bootstrap()}
    assert bootstrappable == {"debian", "ubuntu"}


@pytest.mark.parametrize("typo, expected", [
    ("debian-bokworm", "debian-bookworm"),
    ("ubuntu-jamy", "ubuntu-jammy"),
    ("fedora-04", "fedora-44"),
    ("rocky-11", "rocky-10"),
    ("ubuntu-resolut", "ubuntu-resolute"),
])
def test_unknown_label_lists_the_closest_labels(usage_error, typo, expected):
    error = usage_error(postroj.parse_source, typo)
    assert repr(typo) in error.message
    assert "did you mean" in error.message
    assert expected in error.message
    assert "list-images" in error.hint


def test_unknown_label_without_near_names_still_says_where_to_look(usage_error):
    error = usage_error(postroj.parse_source, "xyzzy")
    assert "unknown image 'xyzzy'" in error.message
    assert "list-images" in error.hint


def test_via_bootstrap(usage_error):
    name, source = postroj.parse_source("debian-12", via=postroj.SourceKind.BOOTSTRAP, mirror="http://mirror.example/debian")
    assert name == "debian-bookworm"
    assert source.kind == "bootstrap"
    assert source.location == "http://mirror.example/debian"
    assert "bootstrap" in usage_error(postroj.parse_source, "fedora-41", via="bootstrap").message
    assert "did you mean" in usage_error(postroj.parse_source, "debian-bokworm", via="bootstrap").message


# --- boxes ------------------------------------------------------------------------


def test_box_labels_are_unique_valid_names():
    labels = [b.label for b in postroj.BOXES]
    assert len(set(labels)) == len(labels)
    for label in labels:
        assert postroj.check_name(label, "box") == label


def test_find_curated_box():
    box = postroj.find_box("windows-2022")
    assert box.box == "StefanScherer/windows_2022"
    assert (box.guest, box.communicator) == ("windows", "winrm")
    debian = postroj.find_box("debian-12")
    assert (debian.box, debian.guest, debian.communicator) == ("debian/bookworm64", "linux", "ssh")


@pytest.mark.parametrize("reference, box, guest, communicator", [
    ("vagrant:generic/alpine319", "generic/alpine319", "linux", "ssh"),
    ("vagrant:StefanScherer/windows_2019", "StefanScherer/windows_2019", "windows", "winrm"),
    ("vagrant:generic/freebsd14", "generic/freebsd14", "bsd", "ssh"),
    ("vagrant:bento/ubuntu-24.04", "bento/ubuntu-24.04", "linux", "ssh"),
])
def test_find_box_from_vagrant_cloud_reference(reference, box, guest, communicator):
    found = postroj.find_box(reference)
    assert (found.box, found.guest, found.communicator) == (box, guest, communicator)
    assert postroj.check_name(found.label, "box label") == found.label


@pytest.mark.parametrize("reference", ["vagrant:_/_", "vagrant:-/-"])
def test_box_label_from_a_reference_is_never_empty(reference):
    # The label is the directory below POSTROJ_HOME/vagrant: an empty one is that directory itself,
    # and `postroj vm destroy` would remove every VM's Vagrantfile.
    # Either a usable label or a usage error; never an empty label.
    try:
        box = postroj.find_box(reference)
    except postroj.UsageError as error:
        assert "no usable name" in error.message
        return
    assert box.label
    assert postroj.check_name(box.label, "box label") == box.label


@pytest.mark.parametrize("reference", [
    "vagrant:", "vagrant:ubuntu", "vagrant:a/b/c", "vagrant:a b/c", "vagrant:owner/box;reboot", "vagrant:/box",
    "vagrant:owner/",
])
def test_malformed_box_reference(usage_error, reference):
    error = usage_error(postroj.find_box, reference)
    assert "malformed box reference" in error.message
    assert "OWNER/BOX" in error.hint


def test_unknown_box_lists_the_closest(usage_error):
    error = usage_error(postroj.find_box, "windows-2020")
    assert "windows-2019" in error.message or "windows-2022" in error.message
    assert "vagrant:OWNER/BOX" in error.hint


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "", "a/b", "/etc", "..", "a..b", "../x", "bad name", " lead", "trail ", "tab\there",
    "semi;colon", "pipe|x", "amp&x", "dollar$x", "back`tick", "less<x", "more>x", "paren(x)", "star*", "what?",
    "bang!", "quote'x", 'dq"x', "back\\slash", "brace{x}", "tilde~x", "hash#x", "colon:x", "at@x",
    "name\n", "\nname", "na\nme", "name\r", "nul\0x",
    "Debian", "DEBIAN-BOOKWORM", "ubuntü", "-leading-dash", ".hidden", "_under",
    "a" * 49, "x" * 300,
], ids=repr)
def test_check_name_refuses(usage_error, name):
    error = usage_error(postroj.check_name, name)
    assert "invalid image name" in error.message
    assert "\n" not in error.message, "the name is shown escaped"
    assert "lower-case" in error.hint


@pytest.mark.parametrize("name", ["a", "0", "my-image", "img_2.1", "a" * 48, "debian-bookworm-2"])
def test_check_name_accepts(name):
    assert postroj.check_name(name) == name


def test_check_name_says_what_was_checked(usage_error):
    assert "invalid machine name" in usage_error(postroj.check_name, "Bad", "machine name").message
