"""The command line through postroj.main(): usage errors are `error:` and `hint:` on stderr with exit code 2
and no traceback; --version, list-images --json and doctor. Nothing here needs root or boots anything."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import pytest

import postroj


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit code, stdout, stderr) of postroj.main(args)."""

    def run(*args: str):
        try:
            code = postroj.main(list(args))
        except SystemExit:
            raise
        except BaseException as exc:
            out, err = capsys.readouterr()
            pytest.fail("postroj %s raised %s: %s instead of printing error: and hint:\nstderr: %s" % (
                shlex.join(args), type(exc).__name__, exc, err))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def text_package(tmp_path) -> str:
    path = tmp_path / "hello.deb"
    path.write_text("not a package\n")
    return str(path)


USAGE_ERRORS = [
    (["probe", "--jobs", "0"], "--jobs"),
    (["probe", "--jobs", "many"], "--jobs"),
    (["probe", "--timeout", "-1"], "--timeout"),
    (["probe", "--timeout", "nan", "--command", "true"], "--timeout"),
    (["probe", "--boot-timeout", "0", "--command", "true"], "--boot-timeout"),
    (["probe", "--check-network", "tcp://x:99999"], "port out of range"),
    (["probe", "--check-network", "tcp://x"], "no port"),
    (["probe", "--check-network", "ftp://x/"], "unsupported --check-network"),
    (["probe", "--command", "true", "--expect-status", "7"], "--expect-status"),
    (["probe", "--check-unit", "nginx; reboot"], "invalid unit name"),
    (["probe", "--copy", "no-colon"], "invalid --copy"),
    (["probe", "--copy", "/etc/hostname:relative"], "invalid --copy"),
    (["probe", "--copy", "/nonexistent/postroj-test:/x"], "does not exist"),
    (["probe", "--package", "ftp://example.org/hello.deb"], "unsupported scheme"),
    (["probe", "--package", "https://example.org/hello.txt"], "does not name a package"),
    (["probe", "--package", "/nonexistent/postroj-test/hello.deb"], "does not exist"),
    (["probe", "--package", "{text_package}"], "is not a package"),
    (["probe"], "no probe given"),
    (["probe", "--image", "Bad Name", "--command", "true"], "invalid image name"),
    (["probe", "--image", "debian-bokworm", "--command", "true"], "debian-bookworm"),
    (["probe", "--vm", "windows-2022", "--check-unit", "nginx"], "Linux guest"),
    (["image"], "no image given"),
    (["image", "bad name"], "bad name"),
    (["image", "ftp://x/y.tar"], "unsupported scheme"),
    (["image", "https://example.org/disk.iso"], "tarball"),
    (["image", "debian-bokworm"], "did you mean debian-bookworm"),
    (["image", "--sha256", "abc", "debian-bookworm"], "invalid --sha256"),
    (["image", "--name", "x", "debian-bookworm", "debian-bullseye"], "--name"),
    (["image", "--via", "bootstrap", "fedora-41"], "bootstrap"),
    (["image", "--via", "magic", "debian-bookworm"], "--via"),
    (["frobnicate"], "invalid choice"),
    (["--no-such-option"], "unrecognized arguments"),
    (["container", "--bind", "/nonexistent-postroj-test", "debian-bookworm"], "does not exist"),
    (["container", "--bind-ro", "/etc:relative", "debian-bookworm"], "invalid bind target"),
    (["container", "--setenv", "NOEQUALS", "debian-bookworm"], "invalid --setenv"),
    (["container"], "required"),
    (["stop"], "required"),
    (["vm"], "required"),
    (["vm", "up", "vagrant:not-a-box"], "malformed box reference"),
    (["vm", "up", "windows-2020"], "windows-20"),
    (["vm", "run", "windows-2022"], "no command given"),
    (["image", "http://[::1/rootfs.tar"], "http://[::1/rootfs.tar"),
    (["probe", "--check-network", "http://[::1"], "http://[::1"),
]


@pytest.mark.parametrize("args, words", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors(cli, tmp_path, args, words):
    args = [a.format(text_package=text_package(tmp_path)) for a in args]
    code, out, err = cli(*args)
    assert code == 2, err
    assert out == "", "stdout is for data"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith("error: ")
    assert any(line.startswith("hint: ") for line in lines), err
    assert words in err
    assert not (tmp_path / "home").exists(), "a refused command leaves no state behind"


def test_no_command_prints_help(cli):
    code, out, err = cli()
    assert code == 2
    assert "usage: postroj" in err
    assert out == ""


def test_version(cli):
    code, out, err = cli("--version")
    assert (code, err) == (0, "")
    assert out == "postroj %s\n" % postroj.__version__
    assert re.match(r"^\d+\.\d+\.\d+$", postroj.__version__)


def test_version_after_other_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        postroj.main(["-v", "--version"])
    assert exit_.value.code in (0, None)
    assert capsys.readouterr().out == "postroj %s\n" % postroj.__version__


def test_list_images_json(cli):
    code, out, err = cli("list-images", "--json")
    assert code == 0
    data = json.loads(out)
    labels = [d["label"] for d in data["distributions"]]
    assert len(labels) >= 25
    assert labels == [d.label for d in postroj.DISTRIBUTIONS]
    assert all(d["acquired"] is False for d in data["distributions"])
    bookworm = data["distributions"][labels.index("debian-bookworm")]
    assert bookworm["package_manager"] == "apt"
    assert "debian-12" in bookworm["aliases"]
    assert [b["label"] for b in data["boxes"]] == [b.label for b in postroj.BOXES]
    assert data["images"] == []


def test_list_images_table(cli):
    code, out, err = cli("ls")
    assert code == 0
    assert re.search(r"^debian-bookworm\s+12\s+apt\s+2028-06-30\s+debian-12\s+no$", out, re.M)
    assert re.search(r"^ubuntu-questing\s+25.10\s+apt\s+2026-07-09 \(ended\)\s+ubuntu-25.10\s+no$", out, re.M)
    assert re.search(r"^debian-forky\s+14\s+apt\s+-\s+debian-14, debian-testing\s+no$", out, re.M)
    assert "windows-2022" in out
    assert "none; acquire one with `postroj image debian-bookworm`" in out


def tools_dir(tmp_path, tools) -> str:
    """A PATH of its own with links to just these host tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    return str(bin_dir)


def test_doctor_without_skopeo_and_umoci_exits_0_and_says_what_they_are_for(cli, tmp_path, monkeypatch):
    """Bootstrapped and tarball images need neither: containers can run (README: doctor exits 0)."""
    have = ["systemd-nspawn", "nsenter", "setpriv", "mmdebstrap", "debootstrap", "tar"]
    monkeypatch.setenv("PATH", tools_dir(tmp_path, have))
    code, out, err = cli("doctor")
    assert code == 0, out
    for tool in ("skopeo", "umoci"):
        assert re.search(r"^%s\s+optional\s+not found: needed for images from registries only" % tool, out, re.M), out
    optional = [line.split()[3:] for line in out.splitlines() if line.startswith("optional: apt-get install ")]
    assert optional and {"skopeo", "umoci"} <= set(optional[0]), out
    assert not [line for line in out.splitlines() if line.startswith("to fix:")], out

    code, out, err = cli("doctor", "--json")
    assert code == 0
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["skopeo"]["ok"] is False
    assert checks["skopeo"]["fix"] == "apt-get install skopeo"
    assert checks["skopeo"]["required"] is False


def test_doctor_without_nspawn_exits_1(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", tools_dir(tmp_path, ["nsenter", "setpriv", "skopeo", "umoci", "tar"]))
    code, out, err = cli("doctor")
    assert code == 1
    assert re.search(r"^systemd-nspawn\s+missing", out, re.M)
    assert "to fix: apt-get install systemd-container" in out


def test_doctor_with_empty_path(cli, monkeypatch):
    monkeypatch.setenv("PATH", "")
    code, out, err = cli("doctor")
    assert code == 1
    assert "Traceback" not in err
    assert re.search(r"^skopeo\s+optional", out, re.M)
    assert re.search(r"^systemd-nspawn\s+missing", out, re.M)
    fix = [line for line in out.splitlines() if line.startswith("to fix: apt-get install ")]
    assert len(fix) == 1
    assert set(fix[0].split()[4:]) >= {"systemd-container"} and "skopeo" not in fix[0]


def test_doctor_says_which_guests_get_the_unified_hierarchy_on_this_host(cli):
    """On a host with the v1 layout only guests whose systemd refuses it; on a v2 host every guest."""
    code, out, err = cli("doctor", "--json")
    check = {c["name"]: c for c in json.loads(out)["checks"]}["cgroups"]
    layout = postroj.cgroup_layout()
    assert check["ok"] and check["detail"].startswith(layout), check
    if layout.startswith("unified"):
        assert check["detail"].endswith("every guest gets it"), check
    else:
        assert "guests with systemd >= %d get the unified hierarchy" % postroj.UNIFIED_SINCE_SYSTEMD in check["detail"]
        assert "older ones the host's layout" in check["detail"], check


def test_postrojs_own_options_go_after_the_command_too():
    parser = postroj.build_parser()
    for argv in (["-v", "probe", "--command", "true"], ["probe", "--command", "true", "-v"]):
        args = parser.parse_args(argv)
        assert (args.verbose, args.debug) == (1, False), argv
    args = parser.parse_args(["probe", "--command", "true", "-vv", "--debug"])
    assert (args.verbose, args.debug) == (2, True)
    assert parser.parse_args(["probe", "--command", "true"]).verbose == 0
