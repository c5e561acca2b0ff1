"""A failure kept for a look, and "could not test" told apart from "failed" (issue 38, items 4 and 5), with
real containers: --keep-on-failure leaves the failed image's container running, the hint enters that very
container and `postroj stop` ends it; a boot that times out and a repository that does not answer are
ERROR (exit 3, JUnit <error>), not the package's failure."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import xml.etree.ElementTree as ET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_keep_on_failure_keeps_the_failed_container_and_says_how_to_enter_and_end_it(images):
    proc = images("probe", "--image", "debian-bookworm", "--keep-on-failure",
                  "--command", "touch /root/left-for-a-look; false", check=1)
    assert "FAIL  debian-bookworm" in proc.stdout
    lines = proc.stderr.splitlines()
    kept = [line for line in lines if "is kept for a look" in line]
    assert len(kept) == 1, proc.stderr
    machine = kept[0].split("its container ")[1].split()[0]
    enter = [line.split("enter it: ", 1)[1] for line in lines if "enter it: " in line]
    assert ["end it:   postroj stop %s" % machine] == [line.strip() for line in lines if "end it:" in line]
    listed = images("machines", "--json", check=0)
    assert [(m["name"], m["keep"]) for m in json.loads(listed.stdout)["machines"]] == [(machine, True)]
    try:
        # the hint, as printed, enters the container the command failed in
        inside = subprocess.run(shlex.split(enter[0]) + ["-c", "test -e /root/left-for-a-look && echo found"],
                                capture_output=True, text=True, timeout=60)
        assert inside.stdout.strip() == "found", inside.stdout + inside.stderr
    finally:
        images("stop", machine, check=0)
    assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []


def test_keep_on_failure_keeps_nothing_when_the_probes_pass(images):
    proc = images("probe", "--image", "debian-bookworm", "--keep-on-failure", "--command", "true", check=0)
    assert "kept" not in proc.stderr
    assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []


def test_a_boot_that_times_out_is_not_tested_exit_3(images, tmp_path):
    junit = tmp_path / "report.xml"
    proc = images("probe", "--image", "debian-bookworm", "--boot-timeout", "0.2", "--command", "true",
                  "--junit", str(junit), "--json", str(tmp_path / "report.json"), check=3)
    assert "ERROR  debian-bookworm" in proc.stdout and "FAIL" not in proc.stdout
    assert "not tested: debian-bookworm" in proc.stderr
    root = ET.parse(junit).getroot()
    assert (root.get("errors"), root.get("failures")) == ("1", "0")
    assert root.find("testsuite/testcase/error") is not None
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["untested"] == ["debian-bookworm"] and report["results"][0]["status"] == "error"


def test_a_repository_that_does_not_answer_is_not_tested_but_a_package_it_lacks_fails(images, tmp_path):
    """Real apt, a real closed port: the host could not reach the repository, the package was not judged."""
    port = free_port()
    proc = images("probe", "--image", "debian-bookworm", "--install", "postroj-nowhere",
                  "--repo", "deb [trusted=yes] http://127.0.0.1:%d/ ./" % port, "--command", "true", check=3)
    assert "ERROR  debian-bookworm" in proc.stdout, proc.stdout + proc.stderr
    # the same package from the image's own sources, which answer: the sources lack it, the package FAILs
    lacking = images("probe", "--image", "debian-bookworm", "--install", "postroj-nowhere", "--command", "true",
                     check=1)
    assert "FAIL  debian-bookworm" in lacking.stdout and "ERROR" not in lacking.stdout
    assert "do not carry postroj-nowhere" in lacking.stdout
