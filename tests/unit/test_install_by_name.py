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


KEY = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


def repositories(tmp_path, *argv):
    args = postroj.build_parser().parse_args(["probe", "--install", "x", *argv])
    return postroj.parse_repositories(args)


def test_a_one_line_entry_keeps_its_signed_by_and_the_key_goes_there(tmp_path):
    (tmp_path / "vendor.asc").write_bytes(KEY)
    [repo] = repositories(tmp_path, "--repo", "deb [arch=amd64 signed-by=/usr/share/keyrings/v.asc] "
                          "https://vendor.example/apt bookworm main", "--repo-key", str(tmp_path / "vendor.asc"))
    assert (repo.url, repo.key_path, repo.deb822, repo.only) == ("https://vendor.example/apt",
                                                                 "/usr/share/keyrings/v.asc", False, "")
    assert repo.entry == "deb [arch=amd64 signed-by=/usr/share/keyrings/v.asc] https://vendor.example/apt bookworm main"
    assert repo.sources_name(1) == "/etc/apt/sources.list.d/postroj-repo-1.list"


def test_an_entry_without_signed_by_trusts_the_key_given_and_nothing_else(tmp_path):
    (tmp_path / "vendor.gpg").write_bytes(b"\x99\x00\x33\x04")  # a public-key packet, old format
    [repo] = repositories(tmp_path, "--repo", "debian-bookworm=deb https://vendor.example/apt bookworm main",
                          "--repo-key", str(tmp_path / "vendor.gpg"))
    assert repo.only == "debian-bookworm" and repo.key_path == "/etc/apt/keyrings/postroj-repo-1.gpg"
    assert repo.entry == "deb [signed-by=/etc/apt/keyrings/postroj-repo-1.gpg] https://vendor.example/apt bookworm main"
    assert "trusted=yes" not in repo.entry


def test_a_deb822_sources_file_is_taken_as_it_is(tmp_path):
    (tmp_path / "vendor.asc").write_bytes(KEY)
    (tmp_path / "vendor.sources").write_text("Types: deb\nURIs: https://vendor.example/apt\nSuites: bookworm\n"
                                              "Components: main\nSigned-By: /etc/apt/keyrings/vendor.asc\n")
    [repo] = repositories(tmp_path, "--repo", str(tmp_path / "vendor.sources"), "--repo-key",
                          str(tmp_path / "vendor.asc"))
    assert repo.deb822 and repo.url == "https://vendor.example/apt" and repo.key_path == "/etc/apt/keyrings/vendor.asc"
    assert repo.sources_name(2) == "/etc/apt/sources.list.d/postroj-repo-2.sources"


@pytest.mark.parametrize("argv, said", [
    (["--repo", "deb https://v.example/apt"], "invalid --repo"),
    (["--repo", "deb [signed-by=../x.gpg] https://v.example/apt bookworm main", "--repo-key", "KEY"],
     "is not a plain absolute path"),
    (["--repo", "deb https://a.example/ x m", "--repo", "deb https://b.example/ x m", "--repo", "deb https://c/ x m",
      "--repo-key", "KEY", "--repo-key", "KEY"], "2 --repo-key for 3 --repo"),
])
def test_bad_repositories_are_usage_errors(tmp_path, argv, said):
    (tmp_path / "k.asc").write_bytes(KEY)
    with pytest.raises(postroj.UsageError) as error:
        repositories(tmp_path, *[str(tmp_path / "k.asc") if a == "KEY" else a for a in argv])
    assert said in error.value.message
