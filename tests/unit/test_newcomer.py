"""What a newcomer meets (issue 27), where it is a pure function or a small class: JUnit's <testsuites> counts
and wall time, the JSON wall and the summary line, the live status line's drawing and clearing, names in full
on the terminal, --package IMAGE=FILE, did-you-mean, and a network check that does not wait for a unit that
failed. The same features through the real CLI and containers: tests/integration/test_newcomer_cli.py."""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

import postroj
import rig

P = postroj.Probe
R = postroj.ProbeResult

RESULTS = [
    R("debian-bookworm", P("command", "true"), "pass", 1.25),
    R("debian-bookworm", P("unit", "nginx"), "fail", 2.5, reason="unit nginx failed (enabled)"),
    R("debian-bullseye", P("command", "true"), "pass", 0.75),
    R("debian-bullseye", P("command", "false"), "skip", 0.0, reason="not run: --fail-fast"),
]


# --- JUnit, JSON and the summary line: the run's wall time ------------------------------------------------


def test_junit_testsuites_has_every_count_and_the_wall_time():
    root = ET.fromstring(postroj.junit_xml(RESULTS, wall=42.0))
    attributes = {key: root.get(key) for key in ("tests", "failures", "errors", "skipped", "time")}
    assert attributes == {"tests": "4", "failures": "1", "errors": "0", "skipped": "1", "time": "42.000"}


def test_junit_time_is_the_probes_sum_only_where_the_wall_is_not_known():
    # `report` of shards from an older postroj: no wall in their JSON
    assert ET.fromstring(postroj.junit_xml(RESULTS)).get("time") == "4.500"


def test_json_has_the_wall_time():
    assert postroj.results_json(RESULTS, 12.34567)["wall"] == 12.346
    assert postroj.results_json(RESULTS)["wall"] is None


def test_the_summary_line_ends_with_the_total_time(tmp_path, capsys):
    report = tmp_path / "report.json"
    junit = tmp_path / "report.xml"
    code = postroj.finish_report(RESULTS, str(report), str(junit), wall=61.04)
    assert code == postroj.EXIT_FAILURE
    assert capsys.readouterr().err == "2 passed, 1 failed, 1 skipped in 61.0 s\n"
    assert json.loads(report.read_text())["wall"] == 61.04
    assert ET.parse(str(junit)).getroot().get("time") == "61.040"


def test_report_adds_the_shards_walls_and_knows_none_where_one_lacks_it(tmp_path):
    paths = []
    for number, (result, wall) in enumerate([(RESULTS[0], 10.5), (RESULTS[2], 20.25)]):
        path = tmp_path / ("shard-%d.json" % number)
        path.write_text(json.dumps(postroj.results_json([result], wall)))
        paths.append(str(path))
    assert postroj.merge_reports(paths)[1] == 30.75
    old = tmp_path / "old.json"
    old.write_text(json.dumps(dict(postroj.results_json([RESULTS[1]]), wall=None)))
    assert postroj.merge_reports(paths + [str(old)])[1] is None


# --- the live status line ---------------------------------------------------------------------------------


def on_screen(monkeypatch) -> io.StringIO:
    """stdout and stderr as one stream, in the order they were written, as a terminal shows them (set in the
    test's body: pytest's capture sets sys.stdout again between a fixture and the test)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


STATUS = re.compile(r"\x1b\[Kpostroj: (\S+) +(.+?) (\d+) s\n")


def test_status_lines_are_drawn_and_cleared_before_a_result_prints(monkeypatch):
    screen = on_screen(monkeypatch)
    status = postroj.LiveStatus(True, sys.stdout)
    status.say("debian-bookworm", "booting")
    status.say("debian-bullseye", "downloading packages")
    drawn = screen.getvalue()
    assert STATUS.findall(drawn)[-2:] == [("debian-bookworm", "booting", "0"),
                                          ("debian-bullseye", "downloading packages", "0")]
    assert drawn.endswith("\x1b[2A"), "the cursor goes back to the first status line"
    status.print("PASS  debian-bookworm  command true")
    after = screen.getvalue()[len(drawn):]
    assert after.startswith("\x1b[JPASS  debian-bookworm  command true\n"), repr(after)
    # drawn again below the result, the image that still runs
    assert STATUS.findall(after) == [("debian-bookworm", "booting", "0"),
                                     ("debian-bullseye", "downloading packages", "0")]
    status.say("debian-bookworm", "")  # done
    last = screen.getvalue()
    assert STATUS.findall(last.rsplit("\x1b[J", 1)[1]) == [("debian-bullseye", "downloading packages", "0")]
    with status:
        pass
    assert screen.getvalue().endswith("\x1b[J"), "nothing of the status is left when the run ends"


def test_the_status_line_keeps_the_time_since_the_image_began(monkeypatch):
    on_screen(monkeypatch)
    status = postroj.LiveStatus(True, sys.stdout)
    status.say("debian-bookworm", "booting")
    since = status.running["debian-bookworm"][1]
    status.say("debian-bookworm", "installing")
    assert status.running["debian-bookworm"] == ("installing", since)


def test_no_status_where_it_is_off(monkeypatch):
    screen = on_screen(monkeypatch)
    status = postroj.LiveStatus(False, sys.stdout)
    with status:
        status.say("debian-bookworm", "booting")
        status.print("PASS  debian-bookworm  command true")
        status.say("debian-bookworm", "")
    assert screen.getvalue() == "PASS  debian-bookworm  command true\n"


# --- names in full ----------------------------------------------------------------------------------------

LONG = "/srv/builds/debian-bookworm/postroj-a-package-whose-name-is-longer-than-fifty-characters_" \
       "1.0.0+really1.0.0~deb12u1_all.deb"


def test_a_package_is_named_by_name_and_version_in_every_stage():
    label = "postroj-a-package-whose-name-is-longer-than-fifty-characters 1.0.0+really1.0.0~deb12u1"
    for stage in ("installed", "upgraded", "removed", "purged"):
        result = R("debian-bookworm", P("package", LONG), "pass", 2.0, stage=stage, label=label)
        line = postroj.format_result(result)
        assert "%s: package %s " % (stage, label) in line and LONG not in line
        assert result.title == "%s: package %s" % (stage, LONG)
    # without a label (the package's name could not be read) the path, whole
    assert LONG in postroj.format_result(R("debian-bookworm", P("package", LONG), "pass", 2.0, stage="installed"))


def test_json_keeps_the_path_and_names_the_package_as_junit_does(tmp_path):
    label = "postroj-a-package-whose-name-is-longer-than-fifty-characters 1.0.0+really1.0.0~deb12u1"
    result = R("debian-bookworm", P("package", LONG), "pass", 2.0, stage="installed", label=label)
    row = postroj.results_json([result])["results"][0]
    assert row["target"] == LONG and row["name"] == "installed: package " + label
    case = ET.fromstring(postroj.junit_xml([result])).find("testsuite/testcase")
    assert case.get("name") == "installed: package " + label, "not the build directory of a CI job"
    # a report merged from JSON names it the same
    report = tmp_path / "r.json"
    report.write_text(postroj.json.dumps(postroj.results_json([result])))
    assert postroj.results_from_json(str(report))[0].heading == "installed: package " + label


# --- --package IMAGE=FILE ----------------------------------------------------------------------------------


def test_a_package_for_one_image_runs_on_that_image_and_its_aliases_only():
    everywhere = P("package", "/tmp/app.deb")
    one = P("package", "/tmp/app.deb", only="debian-12")
    assert everywhere.for_image("debian-bookworm") and everywhere.for_image("fedora-41")
    assert one.for_image("debian-bookworm") and one.for_image("debian-12")
    assert not one.for_image("debian-bullseye") and not one.for_image("debian-13")


@pytest.fixture
def deb(tmp_path):
    """A .deb (of the package app, at the version its name says), to be named on the command line."""

    def make(name: str):
        path = tmp_path / name
        tree = tmp_path / ("tree-" + name)
        (tree / "DEBIAN").mkdir(parents=True)
        version = name.split("_")[1]
        (tree / "DEBIAN" / "control").write_text("Package: app\nVersion: %s\nArchitecture: all\nMaintainer: t <t@t>\n"
                                                 "Description: test\n" % version)
        rig.sh("dpkg-deb", "--root-owner-group", "--build", tree, path)
        return path

    return make


def run_main(capsys, *args: str):
    code = postroj.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_package_for_an_image_not_in_the_run_is_a_usage_error(deb, capsys, tmp_path):
    code, _, err = run_main(capsys, "probe", "--image", "debian-bookworm", "--package",
                            "debian-bullseye=%s" % deb("app_1.0~deb11_all.deb"))
    assert code == 2, err
    assert "debian-bullseye is not probed in this run" in err and "hint: add --image debian-bullseye" in err
    assert not (tmp_path / "home").exists(), "refused before anything was made"


def test_a_package_for_an_alias_of_an_image_in_the_run_is_taken(deb, capsys):
    # debian-12 is debian-bookworm: past the check, the run stops at --no-pull (nothing is acquired here)
    code, _, err = run_main(capsys, "probe", "--image", "debian-bookworm", "--no-pull", "--package",
                            "debian-12=%s" % deb("app_1.0~deb12_all.deb"))
    assert code == 1, err
    assert "debian-bookworm is not acquired and --no-pull was given" in err


def test_a_package_for_an_image_of_another_shard_is_no_usage_error(deb, capsys):
    # CI runs the same command line in each shard; past the check, the run stops at --no-pull
    code, _, err = run_main(capsys, "probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--shard",
                            "1/2", "--no-pull", "--package", "debian-bullseye=%s" % deb("app_1.0~deb11_all.deb"),
                            "--package", "debian-bookworm=%s" % deb("app_1.0~deb12_all.deb"))
    assert code == 1 and "is not acquired and --no-pull was given" in err, err


def test_an_image_that_gets_no_package_while_another_does_is_a_usage_error(deb, capsys):
    # it would be probed without the package, and its unit check fail as if the package were broken
    code, _, err = run_main(capsys, "probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--no-pull",
                            "--package", "debian-bullseye=%s" % deb("app_1.0~deb11_all.deb"), "--check-unit", "app")
    assert code == 2, err
    assert "error: debian-bookworm gets no --package, while debian-bullseye gets one" in err
    assert "hint: give each image its package (--package debian-bookworm=FILE), or drop --image debian-bookworm" in err


def test_a_file_whose_name_has_an_equals_sign_is_a_file(deb, capsys, monkeypatch, tmp_path):
    deb("debian-bullseye=app_1.0_all.deb")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "probe", "--image", "debian-bookworm", "--no-pull", "--package",
                            "debian-bullseye=app_1.0_all.deb")
    assert code == 1 and "not probed in this run" not in err, err


# --- did you mean -----------------------------------------------------------------------------------------


def suggestions(error: postroj.UsageError) -> "list[str]":
    found = re.search(r"did you mean (.*)\?$", error.message)
    assert found, error.message
    return found.group(1).split(", ")


def test_did_you_mean_names_an_acquired_image_that_is_also_a_label_once():
    # an acquired debian-bookworm is also a catalogue label: the candidates hold it twice
    error = postroj.unknown_name_error("image", "debain-bookworm", ["debian-bookworm", "debian-bullseye"]
                                       + postroj.all_labels(), "see `postroj list-images`")
    assert error.exit_code == 2
    names = suggestions(error)
    assert names[0] == "debian-bookworm" and names.count("debian-bookworm") == 1


@pytest.mark.parametrize("typo", ["debian-bookwrom", "debain-bookworm", "debian-trixy"])
def test_did_you_mean_names_each_image_once_not_its_alias_beside_it(typo):
    names = suggestions(postroj.unknown_name_error("image", typo, postroj.all_labels(), "see `postroj list-images`"))
    images = [postroj.canonical_image(name) for name in names]
    assert len(images) == len(set(images)), names


def test_did_you_mean_for_a_box_names_boxes():
    # box labels are not images: debian-12 is a box of its own, not debian-bookworm
    with pytest.raises(postroj.UsageError) as info:
        postroj.find_box("debian-13")
    names = suggestions(info.value)
    assert {"debian-12", "debian-11"} <= set(names), names
    assert set(names) <= {box.label for box in postroj.BOXES}, names


# --- a network check after its unit failed ------------------------------------------------------------------


class FailedUnitContainer:
    """A container whose unit `broken` failed; anything but systemctl and the journal is a test failure (a
    network check that ran would call nsenter through run(), not this object, and wait)."""

    def __init__(self, image):
        self.image = image
        self.leader = 0

    def run_captured(self, argv, timeout=None):
        answers = {"show": "LoadState=loaded\nActiveState=failed\nUnitFileState=enabled\nResult=exit-code",
                   "status": "Active: failed"}
        assert argv[0] == "systemctl", argv
        return 0, answers[argv[1]]

    def journal_tail(self, lines, unit=""):
        return "broken.service: Main process exited, code=exited, status=1/FAILURE"

    def check(self, probe, timeout):
        return postroj.PROBE_RUNNERS[probe.kind].in_container(self, probe, timeout)


def test_a_network_check_after_its_unit_failed_ends_at_once(monkeypatch):
    def no_network_probe(*args, **kwargs):
        raise AssertionError("the network check ran although its unit had failed")

    monkeypatch.setattr(postroj, "run", no_network_probe)
    plan = postroj.ProbePlan(postroj.order_probes([P("network", "tcp://127.0.0.1:8080"), P("unit", "broken")]),
                             timeout=30)
    image = postroj.ImageInfo("debian-bookworm", "", "", "", "debian", "debian", "apt", "", 0, postroj.Path("/"))
    results = []
    postroj.run_checks(FailedUnitContainer(image), plan, postroj.Stage.INSTALLED, "", threading.Event(), results)
    unit, network = results
    assert (unit.status, unit.reason) == ("fail", "unit broken failed (enabled)")
    assert (network.status, network.reason, network.stage) == (
        "fail", "tcp://127.0.0.1:8080 cannot answer: unit broken failed", "installed")
    assert network.duration < 1


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


def test_an_acquisition_step_draws_nothing_over_the_live_status(monkeypatch):
    """probe acquires a missing image while the status lines are drawn: the step logs, it does not draw its own
    line over them (the status line says `acquiring`)."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with postroj.LiveStatus(True, screen):
        with postroj.Step("debian-bookworm", "bootstrap") as step:
            assert not step.shown
        assert "postroj: debian-bookworm: bootstrap" not in screen.getvalue()
    with postroj.Step("debian-bookworm", "bootstrap") as step:  # without the status lines, the step has the line
        assert step.shown
    assert "postroj: debian-bookworm: bootstrap" in screen.getvalue()
