"""Reports: the terminal lines, JSON and JUnit XML that CI reads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import postroj

P = postroj.Probe
R = postroj.ProbeResult

RESULTS = [
    R("debian-bookworm", P("command", "hello --version"), "pass", 0.4321, output="hello 2.10"),
    R("debian-bookworm", P("unit", "nginx"), "fail", 30.0, reason="unit nginx failed",
      output="nginx.service - A high performance web server\n   Active: failed", details="journal line 1\njournal 2"),
    R("debian-bookworm", P("package", "/tmp/hello_2.10_amd64.deb"), "pass", 5.5),
    R("fedora-41", P("network", "http://localhost/", 200, "Welcome"), "skip", 0.0, reason="not run: --fail-fast"),
    R("fedora-41", P("command", "hello"), "fail", 0.1, reason="exit status 127",
      output="\x1b[31msh: hello: not found\x1b[0m\x00\x07"),
]


def parse(results) -> ET.Element:
    data = postroj.junit_xml(results)
    assert data.startswith(b"<?xml")
    return ET.fromstring(data)


# --- JUnit XML --------------------------------------------------------------------


def test_junit_one_testsuite_per_image_one_testcase_per_probe():
    root = parse(RESULTS)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == ("5", "2")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["debian-bookworm", "fedora-41"]
    bookworm, fedora = suites
    assert (bookworm.get("tests"), bookworm.get("failures"), bookworm.get("skipped")) == ("3", "1", "0")
    assert (fedora.get("tests"), fedora.get("failures"), fedora.get("skipped")) == ("2", "1", "1")
    assert [c.get("name") for c in bookworm.findall("testcase")] == [
        "command hello --version", "unit nginx", "package /tmp/hello_2.10_amd64.deb"]
    assert {c.get("classname") for c in bookworm.findall("testcase")} == {"postroj.debian-bookworm"}
    assert float(bookworm.get("time")) == pytest.approx(0.4321 + 30.0 + 5.5, abs=0.002)


def test_junit_failures_carry_message_and_output():
    root = parse(RESULTS)
    nginx = root.find("testsuite[@name='debian-bookworm']/testcase[@name='unit nginx']")
    failure = nginx.find("failure")
    assert failure.get("message") == "unit nginx failed"
    assert failure.get("type") == "unit"
    assert "Active: failed" in failure.text and "journal line 1" in failure.text
    passed = root.find("testsuite[@name='debian-bookworm']/testcase[@name='command hello --version']")
    assert passed.find("failure") is None
    assert passed.find("system-out").text == "hello 2.10"


def test_junit_skipped():
    root = parse(RESULTS)
    case = root.find("testsuite[@name='fedora-41']/testcase[@name='network http://localhost/']")
    assert case.find("skipped").get("message") == "not run: --fail-fast"
    assert case.find("failure") is None


def test_junit_control_characters_in_output_are_replaced():
    root = parse(RESULTS)
    failure = root.find("testsuite[@name='fedora-41']/testcase[@name='command hello']/failure")
    assert "sh: hello: not found" in failure.text
    assert "\x1b" not in failure.text and "\x00" not in failure.text


def test_junit_is_well_formed_whatever_the_command_is():
    # The probe's command becomes the testcase name; a control character there must not break the XML.
    result = R("debian-bookworm", P("command", "printf '\x1b[1mbold\x1b[0m'"), "pass", 0.1)
    case = parse([result]).find("testsuite/testcase")
    assert "bold" in case.get("name")


def test_junit_of_no_results():
    root = parse([])
    assert (root.get("tests"), root.get("failures"), root.findall("testsuite")) == ("0", "0", [])


# --- JSON -------------------------------------------------------------------------


def test_results_json():
    data = json.loads(json.dumps(postroj.results_json(RESULTS)))
    assert data["version"] == postroj.__version__
    assert data["passed"] is False
    assert len(data["results"]) == 5
    first, nginx = data["results"][:2]
    assert first == {"image": "debian-bookworm", "kind": "command", "target": "hello --version", "status": "pass",
                     "duration": 0.432, "reason": "", "output": "hello 2.10", "details": "", "stage": "",
                     "release": "", "warning": "", "name": "command hello --version"}
    assert (nginx["status"], nginx["reason"], nginx["details"]) == ("fail", "unit nginx failed",
                                                                   "journal line 1\njournal 2")


def test_results_json_passes_when_nothing_failed():
    assert postroj.results_json([r for r in RESULTS if r.status != "fail"])["passed"] is True
    assert postroj.results_json([])["passed"] is True


def test_write_output_to_a_file_and_to_stdout(tmp_path, capsysbinary):
    target = tmp_path / "results.json"
    postroj.write_output(str(target), b'{"passed": true}\n')
    assert target.read_bytes() == b'{"passed": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    postroj.write_output("-", b"<testsuites/>")
    assert capsysbinary.readouterr().out == b"<testsuites/>"


# --- terminal lines ---------------------------------------------------------------


def test_format_pass_is_one_line():
    line = postroj.format_result(RESULTS[0])
    assert "\n" not in line
    assert line.startswith("PASS  debian-bookworm")
    assert "command hello --version" in line
    assert line.endswith("0.43s")


def test_format_failure_has_reason_output_and_journal():
    text = postroj.format_result(RESULTS[1])
    lines = text.splitlines()
    assert lines[0].startswith("FAIL  debian-bookworm") and "unit nginx" in lines[0]
    assert "      reason: unit nginx failed" in lines
    assert "      output:" in lines
    assert "           Active: failed" in lines
    assert "      journal:" in lines
    assert "        journal line 1" in lines


def test_format_failure_without_output():
    result = R("img", P("command", "false"), "fail", 0.0, reason="exit status 1")
    assert postroj.format_result(result).splitlines()[1:] == ["      reason: exit status 1"]


def test_format_skip_and_color():
    assert postroj.format_result(RESULTS[3]).startswith("SKIP  fedora-41")
    assert postroj.format_result(RESULTS[0], color=True).startswith("\x1b[32mPASS\x1b[0m")
    assert postroj.format_result(RESULTS[1], color=True).startswith("\x1b[31mFAIL\x1b[0m")


def test_names_are_never_cut():
    result = R("img", P("command", "x" * 200), "pass", 1.0)
    assert "command " + "x" * 200 + "   1.00s" in postroj.format_result(result)
    package = R("debian-bookworm", P("package", "/srv/builds/bookworm/prometheus-node-exporter_1.5.0-1+b6_amd64.deb"),
                "pass", 3.0, stage="installed", label="prometheus-node-exporter 1.5.0-1+b6")
    line = postroj.format_result(package)
    assert "installed: package prometheus-node-exporter 1.5.0-1+b6" in line
    # JSON and JUnit keep the path in full
    assert postroj.results_json([package])["results"][0]["target"] == package.probe.target
    assert package.title == "installed: package " + package.probe.target


# --- probes after a failed install, and what a network check answered ---------------


class NoContainer:
    """Stands in for a container in which nothing may run: only its image is there."""

    def __init__(self, image):
        self.image = image

    def __getattr__(self, name):
        raise AssertionError("%s was asked of a container in which nothing may run" % name)


def test_unit_and_network_probes_of_a_failed_install_are_skipped_with_the_reason():
    plan = postroj.ProbePlan(postroj.order_probes([P("package", "/tmp/nginx_1.22_amd64.deb"), P("unit", "nginx"),
                                                   P("network", "http://localhost:80")]))
    installed = [R("debian-bookworm", plan.probes[0], "fail", 2.0, reason="apt exited with 100", stage="installed")]
    image = postroj.ImageInfo("debian-bookworm", "", "", "", "debian", "debian", "apt", "", 0, postroj.Path("/"))
    results = list(installed)
    postroj.run_checks(NoContainer(image), plan, postroj.Stage.INSTALLED, "nginx_1.22_amd64.deb failed",
                       postroj.threading.Event(), results)
    assert [(r.probe.kind, r.status, r.stage) for r in results] == [
        ("package", "fail", "installed"), ("unit", "skip", "installed"), ("network", "skip", "installed")]
    assert {r.reason for r in results[1:]} == {"not run: nginx_1.22_amd64.deb failed"}
    suite = parse(results).find("testsuite")
    assert (suite.get("failures"), suite.get("skipped")) == ("1", "2")
    assert [c.get("name") for c in suite.findall("testcase")] == [
        "installed: package /tmp/nginx_1.22_amd64.deb", "installed: unit nginx",
        "installed: network http://localhost:80"]
    assert [c.find("skipped").get("message") for c in suite.findall("testcase")[1:]] == [
        "not run: nginx_1.22_amd64.deb failed"] * 2
    assert "reason: not run: nginx_1.22_amd64.deb failed" in postroj.format_result(results[1])


def test_nspawn_housekeeping_is_dropped_from_package_output():
    text = ('Setting up nginx (1.22.1-9+deb12u11) ...\n'
            'Attempted to remove disk file system under "/run/systemd/nspawn/propagate/postroj-x", and we can\'t '
            'allow that.\nProcessing triggers for libc-bin\n')
    assert postroj.without_nspawn_noise(text) == "Setting up nginx (1.22.1-9+deb12u11) ...\nProcessing triggers for libc-bin\n"


@pytest.fixture
def http_answer():
    """An HTTP server on loopback that answers every GET with 200 and a fixed body."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the probe test"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/" % server.server_address[1]
    server.shutdown()
    server.server_close()


def network_check(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", postroj.NETWORK_CHECK, *args], stdout=subprocess.PIPE, text=True,
                          timeout=30)


def test_network_check_names_the_wrong_answer(http_answer):
    proc = network_check(http_answer, "0.3", "418", "")
    assert proc.returncode == postroj.NETWORK_WRONG_ANSWER
    assert proc.stdout.splitlines()[0] == "HTTP 200, expected 418"
    proc = network_check(http_answer, "0.3", "", "goodbye")
    assert proc.returncode == postroj.NETWORK_WRONG_ANSWER
    assert proc.stdout.splitlines()[0] == "HTTP 200, but the body does not contain 'goodbye'"
    assert network_check(http_answer, "0.3", "200", "hello").returncode == 0


def test_network_check_without_an_answer(http_answer):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        proc = network_check("http://127.0.0.1:%d/" % port, "0.3", "", "")
    assert proc.returncode == postroj.NETWORK_NO_ANSWER
    assert "Connection refused" in proc.stdout or "ConnectionRefused" in proc.stdout


# --- shards and merged reports -----------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("images", [["a"], ["a", "b"], list("abcdefghij")])
def test_shards_are_disjoint_complete_and_balanced(images, count):
    shards = [postroj.shard_of(images, (number, count)) for number in range(1, count + 1)]
    flat = [image for shard in shards for image in shard]
    assert sorted(flat) == sorted(images), "every image once"
    assert len(flat) == len(set(flat)), "no image in two shards"
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [postroj.shard_of(images, (n, count)) for n in range(1, count + 1)], "deterministic"


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", "1/2/3"])
def test_bad_shards_are_usage_errors(text, usage_error):
    error = usage_error(postroj.parse_command_line, ["probe", "--command", "true", "--shard", text])
    assert "--shard" in error.message


def test_a_json_report_reads_back_as_it_was_written(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(postroj.results_json(RESULTS)))
    back = postroj.results_from_json(str(path))
    assert [(r.image, r.probe.kind, r.probe.target, r.status, r.reason) for r in back] == [
        (r.image, r.probe.kind, r.probe.target, r.status, r.reason) for r in RESULTS]
    assert postroj.junit_xml(back).count(b"<testcase") == len(RESULTS)


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"results": 3}', 'has no "results" list'),
    ('[1, 2]', 'has no "results" list'),
    ('{"results": [{"image": "x", "kind": "frobnicate", "target": "t", "status": "pass"}]}', "result 1 is malformed"),
    ('{"results": [{"image": "x", "kind": "unit", "target": "t"}]}', "result 1 is malformed"),
])
def test_reports_that_are_not_reports_are_usage_errors(tmp_path, usage_error, content, words):
    path = tmp_path / "shard.json"
    if content is not None:
        path.write_text(content)
    error = usage_error(postroj.results_from_json, str(path))
    assert str(path) in error.message and words in error.message


# --- machine-readable output on stdout ----------------------------------------------------------


@pytest.mark.parametrize("with_junit", [False, True])
def test_report_json_to_stdout_prints_only_the_json(tmp_path, monkeypatch, capsys, with_junit):
    """`report --json -` is piped into jq: the result lines and the summary go to stderr."""
    monkeypatch.setenv("POSTROJ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTROJ_CACHE", str(tmp_path / "cache"))
    shard = tmp_path / "shard.json"
    shard.write_text(json.dumps(postroj.results_json(RESULTS, 12.5)))
    extra = ["--junit", str(tmp_path / "r.xml")] if with_junit else []
    code = postroj.main(["report", str(shard), "--json", "-"] + extra)
    out, err = capsys.readouterr()
    assert code == postroj.EXIT_FAILURE
    assert [r["status"] for r in json.loads(out)["results"]] == [r.status for r in RESULTS]
    assert "FAIL" in err and "2 failed" in err


def test_report_without_json_to_stdout_prints_the_results_there(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POSTROJ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTROJ_CACHE", str(tmp_path / "cache"))
    shard = tmp_path / "shard.json"
    shard.write_text(json.dumps(postroj.results_json(RESULTS, 12.5)))
    postroj.main(["report", str(shard)])
    out, err = capsys.readouterr()
    assert out.count("FAIL") == 2 and "FAIL" not in err


def test_a_reasons_hint_is_indented_under_it_and_no_marker_of_postrojs_reaches_the_output():
    failure = postroj.DownloadFailed("--upgrade-from archive: the package sources of x do not carry app",
                                     "give the version to upgrade from as files", "postroj-package\tapp\t1.0\n"
                                     "postroj-resolving\nE: Unable to locate package app\n")
    assert failure.output == "E: Unable to locate package app"
    results = postroj.not_downloaded("debian-bookworm", postroj.ProbePlan(
        (postroj.Probe(postroj.ProbeKind.PACKAGE, "/srv/app.deb"),)), failure, 1.0)
    text = postroj.format_result(results[0])
    assert "\n              hint: give the version to upgrade from as files" in text, text
    assert "postroj-resolving" not in text and "postroj-package" not in text


def shard_reports(tmp_path, *shards):
    paths = []
    for index, count in shards:
        results = [r._replace(image="%s-%d-of-%d" % (r.image, index, count)) for r in RESULTS]
        path = tmp_path / ("shard-%d-of-%d-%d.json" % (index, count, len(paths)))
        path.write_text(json.dumps(postroj.results_json(results, 1.0, (index, count))))
        paths.append(str(path))
    return paths


def test_a_shards_report_says_which_of_how_many_it_is():
    assert postroj.results_json(RESULTS, 1.0, (2, 3))["shard"] == {"index": 2, "count": 3}
    assert postroj.results_json(RESULTS)["shard"] is None


def test_report_refuses_a_set_of_shards_with_one_missing_or_doubled(tmp_path):
    results, _ = postroj.merge_reports(shard_reports(tmp_path, (1, 3), (2, 3), (3, 3)))
    assert len(results) == 3 * len(RESULTS)
    with pytest.raises(postroj.UsageError) as error:
        postroj.merge_reports(shard_reports(tmp_path, (1, 3), (3, 3)))
    assert error.value.message == "shard 2 of 3 is missing" and "--allow-partial" in error.value.hint
    with pytest.raises(postroj.UsageError) as error:
        postroj.merge_reports(shard_reports(tmp_path, (1, 2), (1, 2), (2, 2)))
    assert "twice" in error.value.message  # the same results in two files, or the shard named twice
    with pytest.raises(postroj.UsageError) as error:
        postroj.merge_reports(shard_reports(tmp_path, (1, 2), (1, 3)))
    assert "not shards of one run" in error.value.message


def test_report_alone_of_one_shard_exits_2_and_allow_partial_merges_saying_what_is_missing(tmp_path, monkeypatch,
                                                                                          capsys):
    monkeypatch.setenv("POSTROJ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTROJ_CACHE", str(tmp_path / "cache"))
    [one] = shard_reports(tmp_path, (1, 2))
    assert postroj.main(["report", one]) == 2
    assert "error: shard 2 of 2 is missing" in capsys.readouterr().err
    assert postroj.main(["report", one, "--allow-partial"]) == postroj.EXIT_FAILURE  # RESULTS hold failures
    assert "shard 2 of 2 is missing" in capsys.readouterr().err
