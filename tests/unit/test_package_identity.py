"""What a package file says it is, read on the host before anything boots (issue 34, items 6 and 15): a .deb's
control member in each compression dpkg-deb writes, an RPM's header; a file cut short is refused; one package given
twice for one image, or an --upgrade-from file of a package no --package brings, is a usage error (exit 2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import postroj
import rig

P, Kind = postroj.Probe, postroj.ProbeKind


def deb(directory: Path, name: str = "h2ok", version: str = "1.1", compression: str = "xz") -> Path:
    tree = directory / ("%s-%s-%s" % (name, version, compression))
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text("Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: t <t@t>\n"
                                             "Description: test\n" % (name, version))
    (tree / "usr" / "share").mkdir(parents=True)
    (tree / "usr" / "share" / name).write_text("x" * 5000)
    path = directory / ("%s_%s_%s.deb" % (name, version, compression))
    rig.sh("dpkg-deb", "--root-owner-group", "-Z" + compression, "--build", tree, path)
    return path


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_a_debs_name_and_version_in_each_compression(tmp_path, compression):
    path = deb(tmp_path, "h2ok", "1:1.1-2~deb12u1", compression)
    assert postroj.package_identity(path, "deb") == ("h2ok", "1:1.1-2~deb12u1")


def test_a_deb_cut_short_is_refused_naming_the_member(tmp_path):
    path = deb(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    with pytest.raises(postroj.UsageError) as error:
        postroj.package_identity(path, "deb")
    assert "is not a whole package: its member data.tar.xz ends at byte %d, past the file's end" % (
        len(data) - (len(data) % 2)) in error.value.message, error.value.message
    assert error.value.hint


def test_an_rpms_name_and_epoch_version_release(tmp_path):
    assert postroj.package_identity(rig.minimal_rpm(tmp_path / "h2ok.rpm", 300), "rpm") == ("h2ok", "3:1.1-2.fc40")


def test_an_rpm_cut_short_is_refused(tmp_path):
    with pytest.raises(postroj.UsageError) as error:
        postroj.package_identity(rig.minimal_rpm(tmp_path / "h2ok.rpm", 300, cut=10), "rpm")
    assert "past the file's end" in error.value.message


def test_one_package_twice_for_one_image_is_refused(tmp_path):
    one, two = deb(tmp_path, version="1.1"), deb(tmp_path, version="1.0")
    with pytest.raises(postroj.UsageError) as error:
        postroj.check_package_set([P(Kind.PACKAGE, str(one)), P(Kind.PACKAGE, str(two))], [])
    assert "are both h2ok (1.1 and 1.0): one package given twice for every image" in error.value.message
    with pytest.raises(postroj.UsageError):
        postroj.check_package_set([P(Kind.PACKAGE, str(one), only="debian-12"),
                                   P(Kind.PACKAGE, str(two), only="debian-bookworm")], [])
    # one build per release is what IMAGE= is for
    postroj.check_package_set([P(Kind.PACKAGE, str(one), only="debian-bookworm"),
                               P(Kind.PACKAGE, str(two), only="ubuntu-noble")], [])


def test_an_upgrade_from_another_package_is_refused(tmp_path):
    new, other = deb(tmp_path, "h2ok", "1.1"), deb(tmp_path, "other", "1.0")
    with pytest.raises(postroj.UsageError) as error:
        postroj.check_package_set([P(Kind.PACKAGE, str(new))], [str(other)])
    assert "--upgrade-from %s is package other, which no --package brings (h2ok)" % other in error.value.message
    postroj.check_package_set([P(Kind.PACKAGE, str(new))], [str(deb(tmp_path, "h2ok", "1.0"))])


def test_the_command_line_refuses_both_before_anything_boots(tmp_path):
    one, two = deb(tmp_path, version="1.1"), deb(tmp_path, version="1.0")
    proc = subprocess.run([postroj.sys.executable, postroj.__file__, "probe", "--package", str(one), "--package",
                           str(two)], capture_output=True, text=True, env=dict(rig.os.environ,
                                                                              POSTROJ_HOME=str(tmp_path / "h")))
    assert proc.returncode == 2 and "one package given twice" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").iterdir())
