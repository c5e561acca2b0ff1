"""`postroj probe`: probes over a matrix of images, with reports CI reads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import rig

JOURNALD = "systemctl is-active systemd-journald"


def test_journald_command_passes(images):
    proc = images("probe", "--image", "debian-bookworm", "--command", JOURNALD, "--json", "-", check=0)
    report = json.loads(proc.stdout)
    assert report["passed"] is True
    (result,) = report["results"]
    assert result["status"] == "pass" and result["output"] == "active"
    assert "PASS" in proc.stderr and "PASS" not in proc.stdout  # the result lines go to stderr beside --json -


def test_failures_have_readable_reasons(images, tmp_path):
    junit = tmp_path / "report.xml"
    proc = images("probe", "--image", "debian-bookworm", "--command", "false", "--check-unit", "no-such.service",
                  "--command", "echo visible-output; exit 3", "--junit", str(junit), "--timeout", "5")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout
    assert "unit no-such.service does not exist" in proc.stdout
    assert "exit status 1" in proc.stdout and "exit status 3" in proc.stdout
    assert "visible-output" in proc.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "debian-bookworm"
    cases = suite.findall("testcase")
    assert len(cases) == 3 and all(case.find("failure") is not None for case in cases)


@pytest.fixture
def demo_deb(tmp_path):
    return rig.build_demo_deb(tmp_path, port=8080)


def test_package_unit_and_network_on_a_two_image_matrix(images, demo_deb, tmp_path):
    junit = tmp_path / "matrix.xml"
    proc = images("probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--jobs", "2",
                  "--package", str(demo_deb), "--check-unit", "postroj-demo",
                  "--check-network", "http://localhost:8080", "--expect-body", "hello from postroj-demo",
                  "--junit", str(junit), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = ET.parse(junit).getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"debian-bookworm", "debian-bullseye"}
    for suite in suites.values():
        names = [c.get("name") for c in suite.findall("testcase")]
        # a probe with a package names its cases STAGE: CHECK, the package by its name and version (issue 38)
        assert names == ["installed: package postroj-demo 1.0", "installed: unit postroj-demo",
                         "installed: network http://localhost:8080"]
        assert suite.get("failures") == "0"
        assert all(float(c.get("time")) >= 0 for c in suite.findall("testcase"))


def test_package_dependencies_download_although_the_container_network_is_private(images, tmp_path):
    deb = rig.build_demo_deb(tmp_path, port=8081, depends="perl-base, hello")
    proc = images("probe", "--image", "debian-bookworm", "--package", str(deb), "--command", "hello",
                  "--check-unit", "postroj-demo", "--check-network", "tcp://127.0.0.1:8081", "--command", "ip link 2>/dev/null || cat /proc/net/dev",
                  "--json", "-", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert [r["kind"] for r in report["results"]] == ["package", "unit", "network", "command", "command"]
    assert "Hello, world!" in report["results"][3]["output"]
    interfaces = [l.split(":")[0].strip() for l in report["results"][4]["output"].splitlines() if ":" in l]
    assert "lo" in str(interfaces) and not any(i.startswith(("eth", "ens", "host")) for i in interfaces)


def test_the_same_checks_fail_without_the_package(images, tmp_path):
    junit = tmp_path / "without.xml"
    proc = images("probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--jobs", "2",
                  "--check-unit", "postroj-demo", "--check-network", "http://localhost:8080", "--timeout", "3",
                  "--junit", str(junit))
    assert proc.returncode == 1
    root = ET.parse(junit).getroot()
    failures = root.findall("./testsuite/testcase/failure")
    assert len(failures) == 4
    assert any("did not answer" in f.get("message") for f in failures)


def test_tcp_check_and_copy(images, tmp_path):
    payload = tmp_path / "payload.txt"
    payload.write_text("copied in\n")
    proc = images("probe", "--copy", "%s:/opt/payload.txt" % payload, "--command", "grep -q 'copied in' /opt/payload.txt",
                  "--check-network", "tcp://127.0.0.1:9", "--timeout", "1")
    assert proc.returncode == 1
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert [l.split()[0] for l in lines] == ["PASS", "FAIL", "PASS"], proc.stdout


def test_fail_fast_skips_the_rest(images):
    proc = images("probe", "--image", "debian-bookworm", "--jobs", "1", "--fail-fast", "--command", "false",
                  "--command", "true", "--json", "-")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [r["status"] for r in report["results"]] == ["fail", "skip"]


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0", "--command", "true"], "at least 1"),
    (["--check-network", "tcp://localhost:70000"], "port out of range"),
    (["--check-network", "ftp://localhost/"], "unsupported --check-network"),
    (["--image", "debian-bookwrom", "--command", "true"], "debian-bookworm"),
    (["--package", "/nonexistent/x.deb"], "does not exist"),
    (["--timeout", "-5", "--command", "true"], "positive number"),
    ([], "no probe given"),
])
def test_bad_input_before_anything_boots(images, args, message):
    proc = images("probe", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (images.home / "run").exists()


def test_deb_on_an_rpm_image_and_rpm_on_a_deb_image(images, tmp_path):
    rpm = rig.minimal_rpm(tmp_path / "x.rpm")
    proc = images("probe", "--image", "debian-bookworm", "--package", str(rpm))
    assert proc.returncode == 2 and "uses apt" in proc.stderr
    deb = rig.build_demo_deb(tmp_path)
    proc = images("probe", "--image", "fedora-40", "--package", str(deb), "--no-pull")
    assert proc.returncode == 2 and "uses dnf" in proc.stderr
    assert not (images.home / "run").exists()


def test_selftest(images):
    proc = images("selftest", check=0, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PASS")]
    assert len(lines) == 4  # two images x (journald, hostnamectl)


def test_package_from_a_url_is_downloaded_into_the_cache(images, http_server, tmp_path):
    deb = rig.build_demo_deb(tmp_path, port=8082)
    served = http_server.root / "pkg" / deb.name
    served.parent.mkdir(exist_ok=True)
    served.write_bytes(deb.read_bytes())
    url = "%s/pkg/%s" % (http_server.url, deb.name)
    proc = images("probe", "--package", url, "--check-unit", "postroj-demo", "--check-network",
                  "http://localhost:8082/", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cached = list((images.cache / "downloads").glob("*" + deb.name))
    assert len(cached) == 1 and cached[0].read_bytes() == deb.read_bytes()


def test_all_acquired_images(images):
    """--all leaves out bullseye, past its end of life since 2026-08-31; --include-eol takes it too."""
    proc = images("probe", "--all", "--command", "test -d /run/systemd/system", "--json", "-", check=0)
    assert [r["image"] for r in json.loads(proc.stdout)["results"]] == ["debian-bookworm"]
    proc = images("probe", "--all", "--include-eol", "--command", "test -d /run/systemd/system", "--json", "-",
                  check=0)
    report = json.loads(proc.stdout)
    assert sorted(r["image"] for r in report["results"]) == ["debian-bookworm", "debian-bullseye"]
    assert proc.stderr.count("debian-bullseye reached its end of life on 2026-08-31") == 1, proc.stderr


def test_shards_together_are_the_whole_run_and_report_merges_them(images, tmp_path):
    """Two images, two probes each, in two shards (issue 14)."""
    probes = ["--command", "systemctl is-active systemd-journald", "--check-unit", "systemd-journald"]
    matrix = ["--image", "debian-bookworm", "--image", "debian-bullseye"]
    whole = tmp_path / "whole.json"
    images("probe", *matrix, *probes, "--json", str(whole), check=0, timeout=300)
    shards = []
    for number in (1, 2):
        path = tmp_path / ("shard-%d.json" % number)
        images("probe", *matrix, *probes, "--shard", "%d/2" % number, "--json", str(path), check=0, timeout=300)
        shards.append([(r["image"], r["kind"], r["target"], r["status"])
                       for r in json.loads(path.read_text())["results"]])
    assert len(shards[0]) == len(shards[1]) == 2
    assert not set(shards[0]) & set(shards[1]), "the shards overlap"
    assert {r[0] for r in shards[0]} != {r[0] for r in shards[1]}, "an image is split between shards"
    unsharded = [(r["image"], r["kind"], r["target"], r["status"]) for r in json.loads(whole.read_text())["results"]]
    assert sorted(shards[0] + shards[1]) == sorted(unsharded)

    junit = tmp_path / "merged.xml"
    merged = tmp_path / "merged.json"
    proc = images("report", str(tmp_path / "shard-1.json"), str(tmp_path / "shard-2.json"), "--junit", str(junit),
                  "--json", str(merged), check=0)
    assert "4 passed, 0 failed, 0 skipped" in proc.stderr
    root = ET.parse(str(junit)).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "0")
    assert len(root.findall(".//testcase")) == 4
    assert sorted((r["image"], r["kind"], r["target"], r["status"]) for r in json.loads(merged.read_text())["results"]) \
        == sorted(unsharded)

    # one shard that failed makes the merge fail; a missing file is bad input, and so is a missing shard
    failing = tmp_path / "failing.json"
    images("probe", *matrix, "--command", "false", "--shard", "2/2", "--json", str(failing), check=1, timeout=300)
    proc = images("report", str(tmp_path / "shard-1.json"), str(failing), check=1)
    assert "1 failed" in proc.stderr and "FAIL  debian-bullseye" in proc.stdout
    proc = images("report", str(tmp_path / "shard-1.json"), check=2)
    assert "error: shard 2 of 2 is missing" in proc.stderr
    proc = images("report", str(tmp_path / "shard-1.json"), str(tmp_path / "nowhere.json"), check=2)
    assert "nowhere.json does not exist" in proc.stderr and "Traceback" not in proc.stderr


def failing_unit_deb(directory):
    """postroj-fails_1.0_all.deb: a oneshot unit that fails, enabled (not started) by its postinst, so that
    the boot after the install (--reboot: the install runs in the booted container) ends degraded."""
    unit = ("[Unit]\nDescription=fails at boot\n\n[Service]\nType=oneshot\nExecStart=/bin/false\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
    return rig.build_deb(directory, "postroj-fails", "a unit that fails at boot, for postroj's tests",
                         {"lib/systemd/system/postroj-fails.service": (unit, 0o644)},
                         postinst="systemctl enable postroj-fails.service\n")


def test_a_degraded_boot_is_named_beside_the_probes(images, tmp_path):
    # the boot's state is asked at READY=1 and read after the probes: the warning must still come, and
    # name the unit that failed during the boot (the reboot's: the package is installed in the booted container)
    report = tmp_path / "degraded.json"
    proc = images("probe", "--image", "debian-bookworm", "--package", str(failing_unit_deb(tmp_path)), "--reboot",
                  "--command", "systemctl is-enabled postroj-fails.service", "--json", str(report), check=1)
    assert "debian-bookworm is degraded; failed units: postroj-fails.service" in proc.stderr, proc.stderr
    rows = json.loads(report.read_text())["results"]
    stages = [(r["stage"], r["kind"], r["status"]) for r in rows]
    assert ("installed", "package", "pass") in stages, stages
    # the package's own unit failed during the boot: the reboot stage fails, quoting systemd (issue 34)
    [reboot] = [r for r in rows if r["kind"] == "reboot"]
    assert reboot["status"] == "fail" and reboot["reason"].startswith("systemd says: ") and \
        "postroj-fails.service" in reboot["reason"] and reboot["reason"].endswith("(during the rebooted stage)")
    assert "booted degraded" in reboot["output"]
