"""--release-upgrade (issue 36), the parts that need no container: the supported paths and the refusal of the
others, the stages of a plan with release upgrades, what apt's and debconf's output tells, the reports' names of
the stage. The upgrades themselves run for real in tests/integration/test_lifecycle.py."""

from __future__ import annotations

import json

import pytest

import postroj

Stage = postroj.Stage
ProbeKind = postroj.ProbeKind


def dist(label: str) -> postroj.Distribution:
    found = postroj.find_distribution(label)
    assert found is not None
    return found


@pytest.mark.parametrize("label,successors", [
    ("debian-bullseye", ["debian-bookworm"]), ("debian-bookworm", ["debian-trixie"]),
    ("debian-trixie", ["debian-forky"]), ("debian-sid", []), ("ubuntu-jammy", ["ubuntu-noble"]),
    ("ubuntu-noble", ["ubuntu-resolute"]), ("ubuntu-questing", ["ubuntu-resolute"]),
    ("ubuntu-resolute", ["ubuntu-stonking"]), ("fedora-42", []),
])
def test_the_supported_paths_are_the_publishers(label, successors):
    # noble's next release, 24.10, is not in the catalogue: from noble only the next LTS is
    assert [d.label for d in postroj.release_successors(dist(label))] == successors


@pytest.mark.parametrize("image,chain", [
    ("debian-bookworm", ["debian-trixie"]), ("debian-bullseye", ["debian-bookworm", "debian-trixie"]),
    ("ubuntu-jammy", ["ubuntu-noble", "ubuntu-resolute"]), ("debian-12", ["debian-trixie"]),
])
def test_a_supported_chain_is_taken(image, chain):
    postroj.check_release_upgrades([(image, postroj.find_distribution(image))], chain)


@pytest.mark.parametrize("image,chain,said,hint", [
    ("debian-bookworm", ["debian-forky"], "it skips a release", "debian-bookworm upgrades to debian-trixie"),
    ("debian-bookworm", ["ubuntu-noble"], "another distribution", "upgrades to debian-trixie"),
    ("debian-trixie", ["debian-bookworm"], "not a later release", "upgrades to debian-forky"),
    ("debian-trixie", ["debian-trixie"], "not a later release", "upgrades to debian-forky"),
    ("ubuntu-noble", ["ubuntu-questing"], "it skips a release", "upgrades to ubuntu-resolute"),
    ("debian-bookworm", ["debian-trixie", "debian-trixie"], "not a later release", "upgrades to debian-forky"),
    ("debian-sid", ["debian-forky"], "", "debian-sid has no later release"),
])
def test_an_unsupported_path_is_a_usage_error_naming_the_supported_targets(image, chain, said, hint):
    with pytest.raises(postroj.UsageError) as raised:
        postroj.check_release_upgrades([(image, postroj.find_distribution(image))], chain)
    assert said in raised.value.message and hint in raised.value.hint, (raised.value.message, raised.value.hint)


def test_an_image_of_no_known_release_is_refused():
    with pytest.raises(postroj.UsageError) as raised:
        postroj.check_release_upgrades([("mine", None)], ["debian-trixie"])
    assert "not a release of postroj's catalogue" in raised.value.message


def test_the_release_upgrades_come_after_the_install_and_its_upgrade_and_before_the_reboot():
    plan = postroj.ProbePlan((postroj.Probe(ProbeKind.PACKAGE, "/x.deb"),), upgrade_from=("archive",),
                             release_upgrade=("debian-trixie", "debian-forky"), reboot=True, purge=True)
    assert plan.stages() == [(Stage.INSTALLED, ""), (Stage.UPGRADED, ""), (Stage.RELEASE_UPGRADED, "debian-trixie"),
                             (Stage.RELEASE_UPGRADED, "debian-forky"), (Stage.REBOOTED, ""), (Stage.REMOVED, ""),
                             (Stage.PURGED, "")]
    bare = postroj.ProbePlan((postroj.Probe(ProbeKind.UNIT, "ssh"),), release_upgrade=("debian-trixie",))
    assert bare.stages() == [(Stage.BOOTED, ""), (Stage.RELEASE_UPGRADED, "debian-trixie")]


def test_a_skipped_release_upgrade_reports_the_release_its_packages_and_the_checks():
    built = postroj.Probe(ProbeKind.PACKAGE, "/new.deb", only="debian-trixie")
    other = postroj.Probe(ProbeKind.PACKAGE, "/newer.deb", only="debian-forky")
    unit = postroj.Probe(ProbeKind.UNIT, "app")
    plan = postroj.ProbePlan((postroj.Probe(ProbeKind.PACKAGE, "/old.deb"), unit),
                             release_upgrade=("debian-trixie", "debian-forky"), release_packages=(built, other))
    assert postroj.stage_probes(plan, Stage.RELEASE_UPGRADED, None, "debian-trixie") == [
        postroj.Probe(ProbeKind.RELEASE, "debian-trixie"), built, unit]


def test_apts_summary_is_read_with_and_without_downgrades():
    assert postroj.upgrade_counts("Calculating upgrade...\n312 upgraded, 41 newly installed, 6 to remove and 0 not "
                                  "upgraded.\n") == (312, 41, 6)
    assert postroj.upgrade_counts("2 upgraded, 0 newly installed, 1 downgraded, 3 to remove and 0 not upgraded.") == \
        (2, 0, 3)
    assert postroj.upgrade_counts("nothing") == (0, 0, 0)


def test_only_the_questions_debconf_would_have_shown_are_reported():
    log = ("debconf (developer): <-- INPUT high tzdata/Areas\n"
           "debconf (developer): --> 30 question skipped\n"
           "debconf (developer): <-- INPUT critical app/restart\n"
           "debconf (developer): --> 0 question will be asked\n"
           "debconf (developer): <-- INPUT low app/detail\n"
           "debconf (developer): --> 0 question will be asked\n")
    assert [q for _, q in postroj.re.findall(postroj.RELEASE_QUESTION, log)] == ["app/restart"]
    assert postroj.without_debconf_log(log + "Setting up app (2.0) ...") == "Setting up app (2.0) ..."


def test_the_configuration_files_dpkg_would_have_asked_about_are_read():
    said = ("Configuration file '/etc/app/app.conf'\n ==> Modified (by you or by a script) since installation.\n"
            " ==> Package distributor has shipped an updated version.\n ==> Keeping old config file as default.\n")
    assert postroj.re.findall(postroj.RELEASE_CONFFILE, said) == ["/etc/app/app.conf"]


def test_the_stage_is_named_with_its_release_in_every_report(tmp_path):
    probe = postroj.Probe(ProbeKind.UNIT, "app")
    result = postroj.ProbeResult("debian-bookworm", probe, postroj.Status.PASS, 1.0, stage=Stage.RELEASE_UPGRADED,
                                 release="debian-trixie")
    assert result.heading == "release-upgraded to debian-trixie: unit app"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(postroj.results_json([result])))
    row = json.loads(path.read_text())["results"][0]
    assert (row["stage"], row["release"], row["name"]) == ("release-upgraded", "debian-trixie", result.heading)
    assert postroj.load_report(str(path))[0] == [result]
    assert b'name="release-upgraded to debian-trixie: unit app"' in postroj.junit_xml([result])


class AgainstReference:
    """The part of postroj.System purge_findings asks after a release upgrade: how a path differs from the image
    (`image`) or from the reference's overlay (`reference`); a path neither has is None."""

    def __init__(self, image: "dict[str, str]", reference: "dict[str, str]") -> None:
        self.image, self.reference = image, reference

    def difference(self, path: str, kind: str, against=None):
        return (self.reference if against is not None else self.image).get(path)


def test_purge_after_a_release_upgrade_compares_with_the_upgrade_without_the_packages(tmp_path):
    FILE, GONE = postroj.EntryKind.FILE, postroj.EntryKind.GONE
    reference = postroj.Baseline(
        entries={"/usr/lib/libssl.so.3": FILE, "/etc/ssl/openssl.cnf": FILE, "/usr/bin/gpgv": FILE,
                 "/usr/bin/old": GONE, "/etc/resolv.conf": FILE, "/etc/motd": FILE},
        executables=set(), accounts=set(), packages=set(),
        fingerprints={"/etc/resolv.conf": (0o100644, 0, 0, 25, 1, 0), "/etc/motd": (0o100644, 0, 0, 10, 1, 0)},
        reference=tmp_path)
    system = AgainstReference(image={"/etc/resolv.conf": "mode 0644, was 0755"},
                              reference={"/usr/lib/libssl.so.3": "", "/etc/ssl/openssl.cnf": "content"})
    now = {"/usr/lib/libssl.so.3": FILE, "/etc/ssl/openssl.cnf": FILE, "/usr/bin/old": GONE,
           "/etc/resolv.conf": FILE, "/etc/app.conf": FILE, "/etc/motd": FILE}
    prints = {"/etc/resolv.conf": (0o100644, 0, 0, 25, 1, 0), "/etc/motd": (0o100644, 0, 0, 12, 2, 0)}
    found = postroj.purge_findings(system, reference, now, prints)
    assert found == {
        # as the upgrade without the packages left it: nothing; changed by the packages' life: said
        "/etc/ssl/openssl.cnf": "differs from the release upgrade without the packages: content",
        # the reference has it, the container no longer: the purge took what the upgrade keeps
        "/usr/bin/gpgv": "removed (the release upgrade without the packages has it)",
        # neither the image nor the reference has it
        "/etc/app.conf": "left behind",
        # changed before the install and since, the reference without it: compared with itself
        "/etc/motd": "changed since before the install: content"}
    # /etc/resolv.conf: changed before the install (postroj's downloads), not since: compared with itself


class Stoppable:
    """What a Fleet closes: a container whose close() ends the work waiting on it."""

    def __init__(self) -> None:
        import threading
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def test_the_reference_is_made_beside_the_probe_and_its_result_or_failure_taken_once_needed():
    import threading
    go = threading.Event()

    def work(fleet):
        go.wait(5)
        return "made"

    maker = postroj.Background(work)
    assert not maker.done()
    go.set()
    assert maker.result() == "made" and maker.done()

    def failing(fleet):
        raise postroj.PostrojError("the release upgrade of debian-bookworm without the packages failed")

    with pytest.raises(postroj.PostrojError, match="without the packages failed"):
        postroj.Background(failing).result()


def test_a_reference_not_needed_is_abandoned_its_container_closed_and_its_thread_never_left_running():
    container = Stoppable()
    ended = []

    def work(fleet):
        fleet.add(container)
        container.closed.wait(30)  # an upgrade in a container, until the container is closed
        ended.append(fleet.closed)
        raise postroj.PostrojError("the container ended")

    maker = postroj.Background(work)
    maker.abandon()
    assert container.closed.is_set() and maker.done() and ended == [True]
    with pytest.raises(postroj.PostrojError):  # what failed is the closing's, kept and never raised unasked
        maker.result()


def test_after_a_release_upgrade_the_packages_are_named_with_the_versions_it_installed():
    labels = {"nginx": "nginx 1.22.1-9+deb12u12", "/x.deb": "app 1.0 from http://127.0.0.1:8080/",
              "archive": "nginx 1.22.1-9, nginx-common 1.22.1-9", "odd": "no-version"}
    assert postroj.relabelled(labels, {"nginx": "1.26.3-3+deb13u2", "app": "1.1", "nginx-common": "1.26.3-3"}) == {
        "nginx": "nginx 1.26.3-3+deb13u2", "/x.deb": "app 1.1 from http://127.0.0.1:8080/",
        "archive": "nginx 1.26.3-3+deb13u2, nginx-common 1.26.3-3", "odd": "no-version"}
    assert postroj.relabelled(labels, {}) == labels  # a package the upgrade removed keeps its name
