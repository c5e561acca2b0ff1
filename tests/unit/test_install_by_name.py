"""--install [IMAGE=]NAME[=VERSION] (issue 39): a package of the image's own sources, by name, resolved on each
image, named with the version it got, through every stage as a --package file goes; checked at the edge."""

from __future__ import annotations

from pathlib import Path

import pytest

import postroj

P, Kind = postroj.Probe, postroj.ProbeKind


@pytest.mark.parametrize("spec, images, target, only", [
    ("nginx", [], "nginx", ""),
    ("nginx=1.22.1-9", [], "nginx=1.22.1-9", ""),
    ("debian-bookworm=nginx", [], "nginx", "debian-bookworm"),
    ("debian-bookworm=nginx=1:1.22.1-9+deb12u2", [], "nginx=1:1.22.1-9+deb12u2", "debian-bookworm"),
    ("myimage=nginx", ["myimage"], "nginx", "myimage"),
    ("libstdc++6", [], "libstdc++6", ""),
])
def test_an_install_names_a_package_a_version_and_an_image(spec, images, target, only):
    probe = postroj.installed_by_name(spec, images)
    assert (probe.kind, probe.target, probe.only, probe.by_name) == (Kind.PACKAGE, target, only, True)


@pytest.mark.parametrize("spec", ["", "bad name", "-nginx", "nginx=1.0 beta", "a=b=c=d", "nginx=$(id)", "x" * 400])
def test_a_malformed_install_is_a_usage_error(spec):
    with pytest.raises(postroj.UsageError) as error:
        postroj.installed_by_name(spec, [])
    assert error.value.message.startswith("invalid --install") and "e.g. --install nginx" in error.value.hint


def test_files_and_urls_are_not_by_name():
    assert not P(Kind.PACKAGE, "/srv/app_1.0_all.deb").by_name
    assert not P(Kind.PACKAGE, "https://example.org/app_1.0_all.deb").by_name
    assert not P(Kind.COMMAND, "true").by_name


def test_one_package_by_name_and_as_a_file_for_one_image_is_refused(tmp_path):
    import rig

    deb = rig.build_deb(tmp_path, "nginx", "a file of nginx", {"usr/share/doc/nginx/x": ("x\n", 0o644)})
    with pytest.raises(postroj.UsageError) as error:
        postroj.check_package_set([P(Kind.PACKAGE, str(deb)), P(Kind.PACKAGE, "nginx")], [])
    assert "--install nginx are both nginx" in error.value.message
    with pytest.raises(postroj.UsageError):
        postroj.check_package_set([P(Kind.PACKAGE, "nginx"), P(Kind.PACKAGE, "nginx=1.0")], [])
    postroj.check_package_set([P(Kind.PACKAGE, "nginx", only="debian-bookworm"),
                               P(Kind.PACKAGE, "nginx", only="ubuntu-noble")], [])


def run_main(capsys, *argv):
    code = postroj.main(list(argv))
    return code, capsys.readouterr().err


def test_install_with_old_files_or_a_vm_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POSTROJ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTROJ_CACHE", str(tmp_path / "cache"))
    import rig

    old = rig.build_deb(tmp_path, "nginx", "old", {"usr/share/doc/nginx/x": ("x\n", 0o644)}, version="0.1")
    code, err = run_main(capsys, "probe", "--install", "nginx", "--upgrade-from", str(old))
    assert code == 2 and "--install takes its old version from the image's sources" in err
    code, err = run_main(capsys, "probe", "--vm", "debian-12", "--install", "nginx")
    assert code == 2 and "--install is for images" in err
    assert not (tmp_path / "home" / "run").exists()


APT_OUTPUT = """\
postroj-resolving
Reading package lists...
The following NEW packages will be installed:
  libnginx-mod-http-geoip (1.22.1-9+deb12u12)
  nginx (1.22.1-9+deb12u12)
  nginx-common (1.22.1-9+deb12u12)
0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
"""


def test_a_package_by_name_is_downloaded_resolved_and_named_with_the_version_it_got():
    sent = []

    def run_step(argv, what):
        sent.append(argv)
        return 0, APT_OUTPUT

    image = postroj.ImageInfo("debian-bookworm", "", "", "", "debian", "debian", "apt", "", 0, Path("/"))
    probes = (P(Kind.PACKAGE, "nginx"),)
    plan = postroj.ProbePlan(probes)
    packages = postroj.download_packages(run_step, image, postroj.Apt(), plan, probes, [], [], layered=True)
    assert packages.new == ("nginx",) and packages.names == ("nginx",)
    assert packages.labels == {"nginx": "nginx 1.22.1-9+deb12u12"}
    assert packages.versions == {"nginx": "1.22.1-9+deb12u12"}, "the version the install is checked against"
    assert packages.dependencies == ("libnginx-mod-http-geoip=1.22.1-9+deb12u12", "nginx-common=1.22.1-9+deb12u12")
    assert "nginx" in sent[0][-1] and "--download-only" in sent[0][-1]


def test_a_package_the_sources_do_not_carry_is_that_images_failure_in_apts_words():
    def run_step(argv, what):
        return 100, "postroj-resolving\nReading package lists...\nE: Unable to locate package no-such-pkg\n"

    image = postroj.ImageInfo("debian-bookworm", "", "", "", "debian", "debian", "apt", "", 0, Path("/"))
    probes = (P(Kind.PACKAGE, "no-such-pkg"),)
    with pytest.raises(postroj.DownloadFailed) as failed:
        postroj.download_packages(run_step, image, postroj.Apt(), postroj.ProbePlan(probes), probes, [], [])
    assert failed.value.message == "the package sources of debian-bookworm do not carry no-such-pkg"
    assert "E: Unable to locate package no-such-pkg" in failed.value.output
