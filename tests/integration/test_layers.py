"""Dependency layers (issue 24) with real packages: nginx from Ubuntu's archive (Debian's exim4 from a layer is
in test_verdicts.py). A probe without a layer (--fresh), the probe that makes the layer and one that
uses it end with the same units and the same `dpkg -l`; a changed dependency makes a new layer, never the
stale one; probes wanting one layer at once make it once; a half-made layer is never used and gc removes it;
the package-cache lock is not held while dpkg installs."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import postroj
import rig
from rig import wait_for

STATE = "dpkg-query -W -f '${Package} ${Version} ${Architecture} ${db:Status-Abbrev}\\n' | sort | sha256sum"
UNITS = "systemctl is-active %s; systemctl is-enabled %s"


def layers(runner) -> "dict[str, dict]":
    """The runner's dependency layers, by key (list-images --json)."""
    proc = runner("list-images", "--json", check=0)
    return {layer["key"]: layer for layer in json.loads(proc.stdout)["layers"]}


def probe(runner, tmp_path: Path, image: str, package: Path, unit: str, *options: str) -> "dict[str, dict]":
    """Probe `package` on `image` with its unit and the final package state; the results by kind."""
    report = tmp_path / ("report-%d.json" % len(list(tmp_path.glob("report-*.json"))))
    proc = runner("probe", "--image", image, "--package", str(package), "--check-unit", unit,
                  "--command", STATE, "--command", UNITS % (unit, unit), *options, "--json", str(report),
                  timeout=900)
    rows = json.loads(report.read_text())["results"]
    failed = ["%s %s: %s\n%s" % (r["kind"], r["target"], r["reason"], r["output"][-3000:]) for r in rows
              if r["status"] != "pass"]
    assert proc.returncode == 0 and not failed, "\n".join(failed) + proc.stderr[-3000:]
    return {("command " + r["target"]) if r["kind"] == "command" else r["kind"]: r for r in rows}


@pytest.fixture(scope="module")
def debs(real, tmp_path_factory) -> "dict[str, Path]":
    """The packages under test, from the archives the images were bootstrapped from."""
    root = tmp_path_factory.mktemp("layer-debs")
    noble = rig.PrivateApt(root / "apt-noble", rig.UBUNTU_SOURCES["noble"], [rig.ubuntu_keyring(real.cache)])
    return {"nginx": noble.download("nginx", root / "noble")}


# mariadb-server on debian-bookworm was a second case (35 s of the suite's 30 minutes); the layer's making and
# use on Debian are in test_verdicts.py (exim4 from a layer) and test_lifecycle.py
@pytest.mark.parametrize("image, package, unit", [
    ("ubuntu-noble", "nginx", "nginx"),
])
def test_a_layer_gives_what_a_fresh_install_gives(real, debs, tmp_path, image, package, unit):
    # the real images in a state root of the test's own: the layers are its own (other tests probe `real`)
    own = rig.with_images_of(real.home, tmp_path / "home", real.pyz, real.cache, real.extra_env)
    before = layers(own)
    fresh = probe(own, tmp_path, image, debs[package], unit, "--fresh")
    assert "from layer" not in fresh["package"]["output"]
    assert layers(own) == before, "--fresh made a layer"
    making = probe(own, tmp_path, image, debs[package], unit)
    made = {k: v for k, v in layers(own).items() if k not in before}
    assert len(made) == 1, made
    key, layer = next(iter(made.items()))
    assert layer["image"] == image and layer["packages"], layer
    assert not any(p.startswith(package + "=") for p in layer["packages"]), "the package under test is in it"
    using = probe(own, tmp_path, image, debs[package], unit)
    assert layers(own).keys() == made.keys() | before.keys(), "the second probe made another layer"
    for run in (making, using):
        assert run["package"]["output"].startswith("%d dependencies from layer %s " % (len(layer["packages"]),
                                                                                        key[:12]))
        assert run["command " + STATE]["output"] == fresh["command " + STATE]["output"]
        assert run["command " + UNITS % (unit, unit)]["output"] == fresh["command " + UNITS % (unit, unit)]["output"]
    assert fresh["command " + UNITS % (unit, unit)]["output"].startswith("active\nenabled")  # or enabled-runtime


# --- a repository of its own, whose dependency gets a new version -----------------------------


@pytest.fixture
def repository(tmp_path):
    """A signed apt repository on the host's loopback (reached by the download before the boot, with the
    host's network): its port, directory, gpg home and the requests it served as (path, user agent)."""
    root = tmp_path / "repo"
    root.mkdir()
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append((self.path, self.headers.get("User-Agent", "")))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        subprocess.run(["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                        "--quick-gen-key", "postroj test <test@postroj.invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        yield server.server_address[1], root, gnupg, requests
    finally:
        server.shutdown()
        server.server_close()
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False)


def publish(root: Path, gnupg: Path) -> None:
    """Index the repository's package files (a flat repository: Packages, Release and InRelease, signed)."""
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=str(root), check=True,
                              capture_output=True).stdout
    (root / "Packages").write_bytes(packages)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=str(root), check=True,
                             capture_output=True).stdout
    (root / "Release").write_bytes(release)
    subprocess.run(["gpg", "--homedir", str(gnupg), "--batch", "--yes", "--clearsign", "-o", str(root / "InRelease"),
                    str(root / "Release")], check=True, capture_output=True)


def own_bookworm(runner) -> Path:
    """This test's own copy of debian-bookworm (hard links; the shared image stays as it is): its root."""
    link = runner.home / "images" / "debian-bookworm"
    version = Path(os.path.realpath(link)).parent
    copy = runner.home / "images" / ".versions" / version.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(version), str(copy)], check=True)
    link.unlink()
    link.symlink_to(copy / "rootfs")
    return copy / "rootfs"


def trusting_bookworm(images, port: int, gnupg: Path) -> Path:
    """A bookworm of the test's own whose apt sources add the signed repository on `port` (its key trusted)."""
    own = own_bookworm(images)
    keyring = own / "etc" / "apt" / "keyrings" / "postroj-test.gpg"
    keyring.parent.mkdir(parents=True, exist_ok=True)
    keyring.write_bytes(subprocess.run(["gpg", "--homedir", str(gnupg), "--export"], check=True,
                                       capture_output=True).stdout)
    (own / "etc" / "apt" / "sources.list.d" / "postroj-test.list").write_text(
        "deb [signed-by=/etc/apt/keyrings/postroj-test.gpg] http://127.0.0.1:%d/ ./\n" % port)
    return own


def test_lists_refresh_when_a_suite_publishes_and_a_new_dependency_version_makes_a_new_layer(images, repository,
                                                                                             tmp_path):
    """The lists say postroj-dep 1.1 where a layer holds 1.0: that layer is not used, a new one is made, and
    the container has 1.1. Between, with nothing published, apt's refresh does not run (the suites' InRelease
    are as apt verified them) and the layer is used."""
    port, root, gnupg, requests = repository
    trusting_bookworm(images, port, gnupg)
    for version in ("1.0", "1.1"):
        rig.build_deb(tmp_path / "dep" / version, "postroj-dep", "a dependency of the demo package", {
            "usr/share/postroj-dep/version": (version + "\n", 0o644)}, version=version)
    demo = rig.build_demo_deb(tmp_path / "demo", port=8094, depends="postroj-dep")
    os.link(str(next((tmp_path / "dep" / "1.0").glob("*.deb"))), str(root / "postroj-dep_1.0_all.deb"))
    publish(root, gnupg)
    version = "cat /usr/share/postroj-dep/version"
    apt = lambda: [path for path, agent in requests if agent.startswith("Debian APT")]  # noqa: E731
    first = probe(images, tmp_path, "debian-bookworm", demo, "postroj-demo", "--command", version)
    assert first["command " + version]["output"] == "1.0"
    assert "/./InRelease" in apt(), requests
    old = layers(images)
    assert [layer["packages"] for layer in old.values()] == [["postroj-dep=1.0"]]
    del requests[:]
    again = probe(images, tmp_path, "debian-bookworm", demo, "postroj-demo", "--command", version)
    assert again["command " + version]["output"] == "1.0"
    assert again["package"]["output"].startswith("1 dependencies from layer %s " % next(iter(old))[:12])
    assert apt() == [] and ("/./InRelease", "postroj") in requests, requests
    os.link(str(next((tmp_path / "dep" / "1.1").glob("*.deb"))), str(root / "postroj-dep_1.1_all.deb"))
    publish(root, gnupg)
    second = probe(images, tmp_path, "debian-bookworm", demo, "postroj-demo", "--command", version)
    assert second["command " + version]["output"] == "1.1"
    assert any("Packages" in path for path in apt()), requests
    new = {k: v for k, v in layers(images).items() if k not in old}
    assert [layer["packages"] for layer in new.values()] == [["postroj-dep=1.1"]]
    assert second["package"]["output"].startswith("1 dependencies from layer %s " % next(iter(new))[:12])


# --- at once, killed, collected ----------------------------------------------------------------


def test_probes_that_want_one_layer_at_once_make_it_once(images, tmp_path):
    """Four probes of one release at once: one makes the layer, the others wait for it and use it."""
    deb = rig.build_demo_deb(tmp_path, port=8095, depends="perl-base, hello")
    runs = [images.popen("-v", "probe", "--image", "debian-bookworm", "--package", str(deb), "--check-unit",
                         "postroj-demo", "--json", str(tmp_path / ("r%d.json" % i))) for i in range(4)]
    errs = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, out + err
        errs.append(err)
    made = layers(images)
    assert len(made) == 1, made
    key = next(iter(made))[:12]
    makers = [err for err in errs if "dependency layer %s made in" % key in err]
    assert len(makers) == 1, "%d probes made the layer" % len(makers)
    outputs = [r["output"] for i in range(4) for r in json.loads((tmp_path / ("r%d.json" % i)).read_text())["results"]
               if r["kind"] == "package"]
    assert len(outputs) == 4 and all(o.startswith("1 dependencies from layer %s " % key) for o in outputs), outputs


def test_a_layer_half_made_is_never_used_and_gc_removes_it(images, tmp_path):
    """postroj killed while it installs a layer's dependencies leaves no layer; one killed as it moves the
    layer into place leaves a .making- directory, whole or not, that no probe reads and gc removes."""
    deb = rig.build_demo_deb(tmp_path, port=8096, depends="perl-base, hello")
    proc = images.popen("probe", "--image", "debian-bookworm", "--package", str(deb), "--check-unit", "postroj-demo")
    try:
        wait_for(lambda: [p for p in rig.processes_mentioning(" hello=") if p[0] in rig.descendants(proc.pid)]
                 or proc.poll() is not None, timeout=300,
                 what="a layer's dependencies being installed")
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert layers(images) == {}
    first = probe(images, tmp_path, "debian-bookworm", deb, "postroj-demo")  # makes its own
    (key, layer), = layers(images).items()
    assert first["package"]["output"].startswith("1 dependencies from layer %s " % key[:12])
    half = images.home / "layers" / (".making-%s-1" % key)
    subprocess.run(["cp", "-a", str(images.home / "layers" / key), str(half)], check=True)
    (images.home / "layers" / key / "layer.json").unlink()  # the layer itself: not whole any more
    assert layers(images) == {}
    second = probe(images, tmp_path, "debian-bookworm", deb, "postroj-demo")
    assert "from layer" in second["package"]["output"] and len(layers(images)) == 1
    out = images("gc", check=0).stdout
    assert "removed dependency layer .making-%s-1" % key in out
    assert not half.exists()
    assert len(layers(images)) == 1


def test_gc_removes_layers_long_unused_and_keeps_the_rest(images, tmp_path):
    deb = rig.build_demo_deb(tmp_path, port=8097, depends="perl-base, hello")
    probe(images, tmp_path, "debian-bookworm", deb, "postroj-demo")
    (key, layer), = layers(images).items()
    images("gc", check=0)
    assert key in layers(images), "gc removed a layer used just now"
    stamp = images.home / "layers" / key / "layer.json"
    old = time.time() - 15 * 86400
    os.utime(str(stamp), (old, old))
    out = images("gc", check=0).stdout
    assert "removed dependency layer %s" % key in out
    assert layers(images) == {} and not (images.home / "layers" / key).exists()
    probe(images, tmp_path, "debian-bookworm", deb, "postroj-demo")
    (key, layer), = layers(images).items()
    images("gc", "--layer-gb", "0.000001", check=0)
    assert layers(images) == {}, "a layer beyond the size cap stays"


def test_the_package_cache_lock_is_not_held_while_dpkg_installs(images, tmp_path):
    """Two probes of one release install at the same time: while one's postinst runs, the release's package
    cache is not locked (it was, for the whole transaction, before)."""
    marker = "%d.%06d" % (90, os.getpid() % 1000000)
    postinst = rig.UNIT_POSTINST.format(unit="postroj-demo.service") + "sleep %s\n" % marker
    deb = rig.build_demo_deb(tmp_path, port=8098, depends="perl-base", postinst=postinst)
    proc = images.popen("probe", "--image", "debian-bookworm", "--package", str(deb), "--check-unit", "postroj-demo")
    try:
        wait_for(lambda: rig.processes_mentioning("sleep " + marker) or proc.poll() is not None, timeout=300,
                 what="the postinst")
        assert proc.poll() is None, proc.communicate()
        locks = list((images.cache / "packages").glob("*/.postroj.lock"))
        assert locks and not any(postroj.lock_is_held(lock) for lock in locks), "the package cache is locked"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


# --- purge with a layer: the comparison is with the image as acquired -------------------------


def purge_probe(runner, tmp_path: Path, deb: Path, *options: str) -> "dict[tuple[str, str], dict]":
    """Probe `deb` on debian-bookworm with --purge; the results by (stage, kind target)."""
    report = tmp_path / ("report-%d.json" % len(list(tmp_path.glob("report-*.json"))))
    proc = runner("probe", "--image", "debian-bookworm", "--package", str(deb), "--purge", *options,
                  "--json", str(report), timeout=900)
    assert "Traceback" not in proc.stderr, proc.stderr
    rows = {(r["stage"], "%s %s" % (r["kind"], os.path.basename(r["target"]))): r
            for r in json.loads(report.read_text())["results"]}
    return rows


def failures(rows: "dict[tuple[str, str], dict]") -> "list[str]":
    return ["%s: %s: %s\n%s" % (stage, check, r["reason"], r["output"][-3000:])
            for (stage, check), r in rows.items() if r["status"] != "pass"]


def test_purge_with_a_layer_takes_the_layers_dependencies_and_passes(images, tmp_path):
    """A package of the suite's own that needs jq: jq, libjq1 and libonig5 from bookworm's mirror, which the
    image lacks, come from a layer; purge --autoremove takes them with the package (the layer marked them as
    installed for others' sake). Their files, in the layer and deleted by the probe's overlay, are as in the
    image again: nothing is reported left or deleted, in the probe that makes the layer and in the next, which
    uses it. (The package has a postrm: dpkg keeps it until its purge, which then runs; see
    test_lifecycle's test_purge_takes_the_dependencies_of_a_package_remove_took_whole.)"""
    deb = rig.build_deb(tmp_path, "postroj-needs-jq", "a package that needs jq",
                        {"usr/share/postroj-needs-jq/README": ("needs jq\n", 0o644)}, depends="jq",
                        postrm="true\n")
    before = layers(images)
    making = purge_probe(images, tmp_path, deb, "--command", "jq --version")
    assert not failures(making), "\n".join(failures(making))
    made = {k: v for k, v in layers(images).items() if k not in before}
    assert len(made) == 1, made
    (key, layer), = made.items()
    assert {p.split("=")[0].split(":")[0] for p in layer["packages"]} == {"jq", "libjq1", "libonig5"}, layer
    using = purge_probe(images, tmp_path, deb, "--command", "jq --version")
    assert not failures(using), "\n".join(failures(using))
    assert layers(images).keys() == made.keys() | before.keys(), "the second probe made another layer"
    for run in (making, using):
        assert run[("installed", "package " + deb.name)]["output"].startswith(
            "3 dependencies from layer %s " % key[:12])
        assert run[("installed", "command jq --version")]["output"].startswith("jq-1.")
        purged = run[("purged", "package " + deb.name)]["output"]
        for name in ("jq", "libjq1", "libonig5"):  # the purge took the layer's packages
            assert re.search(r"^Removing %s[: ]" % name, purged, re.M), purged
        assert "Purging configuration files for postroj-needs-jq " in purged, purged
        assert [stage for stage, check in run if check == "leftover files"] == ["purged"]
        assert run[("purged", "leftover files")]["output"] == "", run[("purged", "leftover files")]


def test_what_a_dependency_from_a_layer_leaves_after_the_purge_is_found_as_without_a_layer(images, repository,
                                                                                          tmp_path):
    """postroj-dep's postinst writes a state file and adds a system user, which its purge leaves. Installed
    in the layer, both are in the container before the first install, yet purge's comparison is with the
    image as acquired: the probe with the layer reports the file left behind and the user kept, as --fresh
    does (a comparison with the layer would not)."""
    port, root, gnupg, requests = repository
    trusting_bookworm(images, port, gnupg)
    dep = rig.build_deb(tmp_path / "dep", "postroj-dep", "a dependency whose purge leaves its state", {
        "usr/share/postroj-dep/version": ("1.0\n", 0o644)},
        postinst='if [ "$1" = configure ]; then echo 1 > /var/lib/postroj-dep.state; '
                 'getent passwd postroj-dep >/dev/null || useradd --system --user-group postroj-dep; fi\n')
    os.link(str(dep), str(root / dep.name))
    publish(root, gnupg)
    deb = rig.build_deb(tmp_path / "pkg", "postroj-needs-dep", "a package with a dependency",
                        {"usr/share/postroj-needs-dep/README": ("needs postroj-dep\n", 0o644)},
                        depends="postroj-dep", postrm="true\n")
    left = ("purged", "leftover files")
    fresh = purge_probe(images, tmp_path, deb, "--fresh")
    assert "from layer" not in fresh[("installed", "package " + deb.name)]["output"]
    assert layers(images) == {}, "--fresh made a layer"
    assert [check for check in fresh if fresh[check]["status"] != "pass"] == [left], failures(fresh)
    assert fresh[left]["output"].splitlines() == [
        "/var/lib/postroj-dep.state: left behind",
        "left, as Debian's policy allows: group:postroj-dep, user:postroj-dep"], fresh[left]
    layered = purge_probe(images, tmp_path, deb)
    (key, layer), = layers(images).items()
    assert layer["packages"] == ["postroj-dep=1.0"], layer
    assert layered[("installed", "package " + deb.name)]["output"].startswith(
        "1 dependencies from layer %s " % key[:12])
    assert re.search(r"^Removing postroj-dep\b", layered[("purged", "package " + deb.name)]["output"], re.M)
    assert [check for check in layered if layered[check]["status"] != "pass"] == [left], failures(layered)
    assert (layered[left]["reason"], layered[left]["output"]) == (fresh[left]["reason"], fresh[left]["output"])
