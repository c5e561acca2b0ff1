"""Could not test" told apart from "failed" (issue 38, item 5): an image that could not be had, a boot
that timed out, a download the network failed, the host's own limits are ERROR, exit 3, JUnit <error>;
the package's own failures stay FAIL, exit 1. A run of checks skipped for one reason is one line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import postroj

P = postroj.Probe
R = postroj.ProbeResult
PLAN = postroj.ProbePlan((P(postroj.ProbeKind.PACKAGE, "/srv/app_1.0_amd64.deb"), P("unit", "app"),
                          P("command", "app --version")), reboot=True, purge=True)

PASSED = R("debian-bookworm", P("command", "true"), "pass", 1.0)
FAILED = R("debian-trixie", P("unit", "app"), "fail", 2.0, reason="unit app failed")
UNTESTED = R("ubuntu-noble", P("command", "true"), "error", 3.0, reason="the boot timed out after 30 s")


@pytest.mark.parametrize("results, code", [
    ([PASSED], postroj.EXIT_OK),
    ([PASSED, UNTESTED], postroj.EXIT_UNTESTED),
    ([PASSED, FAILED, UNTESTED], postroj.EXIT_FAILURE),  # a defect found is the first thing to say
    ([FAILED], postroj.EXIT_FAILURE),
])
def test_the_exit_code_tells_a_failure_from_an_image_not_tested(results, code, capsys):
    assert postroj.finish_report(results) == code
    summary = capsys.readouterr().err
    assert ("not tested: ubuntu-noble" in summary) == (UNTESTED in results), summary


def test_junit_has_an_error_for_an_image_not_tested_and_a_failure_for_a_package(tmp_path):
    root = ET.fromstring(postroj.junit_xml([PASSED, FAILED, UNTESTED]))
    assert (root.get("failures"), root.get("errors")) == ("1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["ubuntu-noble"].get("errors") == "1" and suites["ubuntu-noble"].get("failures") == "0"
    error = suites["ubuntu-noble"].find("testcase/error")
    assert error is not None and error.get("message") == "the boot timed out after 30 s"
    assert suites["ubuntu-noble"].find("testcase/failure") is None
    assert suites["debian-trixie"].find("testcase/failure") is not None
    assert suites["debian-trixie"].find("testcase/error") is None


def test_json_says_which_images_were_not_tested_and_report_reads_it_back(tmp_path, capsys):
    data = postroj.results_json([PASSED, UNTESTED])
    assert data["passed"] is False and data["untested"] == ["ubuntu-noble"]
    assert [r["status"] for r in data["results"]] == ["pass", "error"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert postroj.main(["report", str(path)]) == postroj.EXIT_UNTESTED
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("ERROR  ubuntu-noble") and "reason: the boot timed out" in out


@pytest.mark.parametrize("said, untested", [
    ("Err:1 http://deb.debian.org/debian bookworm InRelease\n  Could not connect to deb.debian.org:80 "
     "(151.101.2.132), connection timed out\nE: Unable to locate package app", True),
    ("E: Failed to fetch http://127.0.0.1:3142/debian/pool/main/a/app.deb  503  Service Unavailable", True),
    ("Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving 'deb.debian.org'", True),
    ("E: You don't have enough free space in /var/cache/apt/archives/.\nNo space left on device", True),
    ("E: Unable to locate package app", False),  # the sources do not carry it: the package's failure
    ("The following packages have unmet dependencies:\n app : Depends: libfoo2 but it is not installable", False),
    ("E: The repository 'http://127.0.0.1:8080 stable Release' does not have a Release file.", False),
])
def test_a_download_the_network_or_the_disk_failed_is_not_the_packages_failure(said, untested):
    failure = postroj.DownloadFailed("downloading what app needs failed with exit code 100", "check", said)
    assert failure.untested is untested
    results = postroj.not_downloaded("debian-bookworm", PLAN, failure, 1.0)
    assert [r.status for r in results if r.status != "skip"] == ["error" if untested else "fail"]
    assert results[0].probe.kind == postroj.ProbeKind.PACKAGE and results[0].stage == "installed"


def test_a_run_of_checks_skipped_for_one_reason_is_one_line():
    failure = postroj.DownloadFailed("downloading what app needs failed with exit code 100", "check",
                                     "E: Unable to locate package libfoo2")
    results = postroj.not_downloaded("debian-bookworm", PLAN, failure, 1.0)
    assert len(results) > 8  # every check of every stage, in JSON and JUnit
    text = postroj.format_results(results)
    lines = [line for line in text.splitlines() if not line.startswith(" ")]
    assert len(lines) == 2, text  # the package's failure, then one line for the rest
    assert lines[0].startswith("FAIL  debian-bookworm")
    assert lines[1].startswith("SKIP  debian-bookworm")
    assert "%d checks (installed, rebooted, removed, purged)" % (len(results) - 1) in lines[1]
    assert text.count("reason: not run: downloading what app_1.0_amd64.deb needs failed") == 1
    # two skips for different reasons, or a run of two, keep their own lines
    two = [R("a", P("command", "x"), "skip", 0.0, reason="r"), R("a", P("command", "y"), "skip", 0.0, reason="r")]
    assert len([line for line in postroj.format_results(two).splitlines() if not line.startswith(" ")]) == 2


def test_probe_refuses_keep_without_vm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POSTROJ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTROJ_CACHE", str(tmp_path / "cache"))
    assert postroj.main(["probe", "--image", "debian-bookworm", "--command", "true", "--keep"]) == postroj.EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: --keep is for VMs" in err and "hint:" in err and "--keep-on-failure" in err
    assert not Path(tmp_path / "home").exists()
