#!/usr/bin/env python3
"""postroj's benchmark: each pair of commands alternates in one run (A B A B ...) on the same machine,
so that a noisy machine affects both sides alike; the verdict is the ratio of medians.

1. warm probe cycle: postroj probe vs. the hand-written floor ../shared/bench/nspawn_floor.py (where a
   checkout has ../shared; else bench/floor.py); 1b, no target: the same vs. bench/floor.py; 1c, with
   --before OLD.pyz: OLD's probe cycle vs. this build's, with the median of each phase
2. start-up: postroj.pyz --version vs. python3 -c "import argparse, subprocess"
3. cold acquisition through the rig's registry vs. the same steps by hand; warm vs. cold package cache
4. matrix: 2 images x 2 probes with --jobs 1 vs. --jobs 2; the floor on both images, in turn vs. at once
5. peak resident memory of postroj during a probe
6. package probe: nginx's .deb (which needs nginx-common) installed, its unit active, HTTP answered,
   vs. the same steps by hand (bench/floor.py --package), both with a warm apt cache
7. autopkgtest: hello's tests through postroj's virtualisation server vs. autopkgtest's own unshare
   backend on the rig's minbase tarball (the root file system the bench's image is built from);
   7b, once each, no target: memcached's isolation-container tests, which unshare skips
   7c (at most 3 rounds): redis's tests, which both run in full (unshare fails those that set limits)
8. lifecycle: nginx on debian-bookworm installed at bookworm's release version, upgraded to the current one,
   purged, through postroj (which also starts the service, reboots, checks it after every stage and compares
   the file system after purge) vs. piuparts' own install-upgrade-purge test of the same two versions (its
   base tarball made once, outside the timing)
9. dependency layers: mariadb-server's probe with its dependencies from a layer vs --fresh (9a); four
   package probes of one release at once, with layers vs --fresh (9b)
10. against piuparts, package by package (haproxy, apache2, bind9, exim4 at bookworm's newest versions, each
   with the binaries of its source it needs at the same version; at most 3 rounds): postroj's install and
   purge (booted, the service checked; a warm layer and package cache) vs piuparts --no-upgrade-test (10);
   postroj's whole life (--upgrade-from archive, reboot, purge, the service checked) vs piuparts' install-purge
   and upgrade tests of the same files (10b). A package either side fails is timed all the same: each run's
   verdict is recorded beside its time
11. a testbed like Debian's CI: haproxy's own tests (bookworm's source, autopkgtest -U -B, 4 tests) on the image
   made once by `image debian-bookworm --variant ci` vs on the plain image with autopkgtest's setup-testbed as
   its setup command (at least 5 rounds; each run's tests passed recorded beside its time: the ci image must pass
   all 4, the plain one fails the two TLS tests)
12. the persistent journal's boot cost, no target: `container debian-bookworm -- true` with this build vs with
   postroj.pyz built from 2659fa8 (the journal's flush and utmp units masked, the journal volatile; at least 10
   rounds)
13. release upgrades: nginx by name on debian-bookworm, checked, upgraded to debian-trixie, checked after the reboot
   into it, purged, through postroj (--release-upgrade debian-trixie --purge) vs piuparts' dist-upgrade test
   (-d bookworm -d trixie --apt nginx, its merged-/usr base tarball made once, outside the timing), each run's
   verdict recorded: 13, postroj's reference (the upgrade without the package) removed before each of its runs,
   so made in the run; 13b, kept (at most 3 rounds each; a run takes about a minute)

usage: bench/run.py [--rounds N] [--only 1,2,...] [--json FILE] [--before OLD.pyz] [--packages a,b]
Needs root, the packages of `make setup`, and Debian's mirror (for provisioning and pairs 6 to 11).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import rig  # noqa: E402

FLOOR = REPO / "bench" / "floor.py"
SHARED_FLOOR = (REPO.parent / "shared" / "bench" / "nspawn_floor.py").resolve()
BENCH_DIR = Path(os.environ.get("POSTROJ_BENCH_DIR", "/var/tmp/postroj-bench"))
PROBE = "systemctl is-active systemd-journald"
URL = "http://localhost:80"
HELLO_TESTS = ("command1", "upstream-tests")
# autopkgtest's exit codes for runs that tested (bits: 2 some skipped, 4 some failed, 8 none ran); from 12
# up the package, the testbed or autopkgtest itself failed
AUTOPKGTEST_RAN = (0, 2, 4, 6, 8)
# pair 10: package -> (the binaries of its source given with it at the same version, the unit checked)
PIUPARTS_PACKAGES = {
    "haproxy": ((), "haproxy"),
    "apache2": (("apache2-bin", "apache2-data", "apache2-utils"), "apache2"),
    "bind9": (("bind9-utils", "bind9-libs"), "named"),
    "exim4": (("exim4-base", "exim4-config", "exim4-daemon-light"), "exim4"),
}
# pair 11
HAPROXY_TESTS = ("cli", "proxy-localhost", "proxy-ssl-termination", "proxy-ssl-pass-through")
SETUP_TESTBED = "/usr/share/autopkgtest/setup-commands/setup-testbed"
# pair 12: the last commit whose containers masked the journal's flush and the utmp units (1d7ec00 unmasked them)
JOURNAL_BEFORE = "2659fa8"


def timed(cmd: "list[str]", env: "dict[str, str] | None" = None, check: bool = True) -> float:
    """Wall-clock seconds of one run of `cmd`, output discarded."""
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = time.monotonic() - start
    if check and proc.returncode != 0:
        raise SystemExit("%s failed (%d):\n%s" % (" ".join(cmd), proc.returncode, proc.stderr.decode()[-2000:]))
    return elapsed


def host_mirror(release: str = "bookworm") -> str:
    """The Debian mirror the host's apt takes `release` from (/etc/apt/sources.list.d/debian.sources, deb822),
    for piuparts' -m; Debian's own where the host names none."""
    try:
        text = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    except OSError:
        text = ""
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*)$", stanza, re.M))
        if release in fields.get("Suites", "").split() and fields.get("URIs"):
            return fields["URIs"].split()[0]
    return "http://deb.debian.org/debian"


def piuparts_chroots() -> "set[str]":
    """The chroots piuparts unpacked (mkdtemp's directories in /tmp: the bench runs it without TMPDIR) and did
    not remove yet."""
    return {os.path.dirname(marker) for marker in glob.glob("/tmp/tmp*/.piuparts.tmpdir")}


def autopkgtest_results(log: str) -> "dict[str, str]":
    """Test name -> PASS, FAIL, SKIP, ... from the lines after the "@@@@ summary" line of autopkgtest's log.
    autopkgtest 5.28 lists a test skipped for its restrictions twice there: each name counts once."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if "@@@@ summary" in line]
    results = {}
    for line in lines[starts[-1] + 1:] if starts else []:
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("autopkgtest ["):
            results[fields[0]] = fields[1]
    return results


def unshare_roots() -> "set[str]":
    """The root file systems autopkgtest-virt-unshare unpacked (in mkdtemp's directories, where it puts
    them by default; useradd gave each a /home/unshare) and did not remove yet."""
    return {os.path.dirname(os.path.dirname(home))
            for home in glob.glob(os.path.join(tempfile.gettempdir(), "tmp*", "home", "unshare"))}


def summary(samples: "list[float]") -> "dict[str, float]":
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def alternate(rounds: int, a, b) -> "tuple[list[float], list[float]]":
    """Run a() and b() in turn, `rounds` times each; a warm-up round of each is not counted."""
    a(), b()
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return xs, ys


class Bench:
    def __init__(self, rounds: int, packages: "tuple[str, ...]" = tuple(PIUPARTS_PACKAGES)) -> None:
        self.rounds = rounds
        self.packages = packages
        self.pyz = REPO / "postroj.pyz"
        self.python = sys.executable
        self.home = BENCH_DIR / "home"
        self.cache = BENCH_DIR / "cache"
        self.results: "list[dict]" = []
        self.registry: "rig.Registry | None" = None
        self.conf = BENCH_DIR / "registries.conf"

    def env(self, **extra: str) -> "dict[str, str]":
        env = dict(os.environ, POSTROJ_HOME=str(self.home), POSTROJ_CACHE=str(self.cache),
                   CONTAINERS_REGISTRIES_CONF=str(self.conf))
        env.update(extra)
        return env

    def postroj(self, *args: str) -> "list[str]":
        return [self.python, str(self.pyz), *args]

    def floor(self, rootfs: str, *command: str, options: "tuple[str, ...]" = ()) -> "list[str]":
        """bench/floor.py on `rootfs`, its overlay directory in the bench's directory, as postroj's is."""
        return [self.python, str(FLOOR), "--work", str(BENCH_DIR), *options, rootfs, *command]

    def setup(self) -> None:
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([self.python, str(REPO / "build_zipapp.py"), str(self.pyz)], check=True,
                       stdout=subprocess.DEVNULL)
        self.registry = rig.Registry(BENCH_DIR / "registry").start()
        self.registry.push_debian()
        self.registry.registries_conf(self.conf)
        for name in ("debian-bookworm", "debian-bullseye"):
            subprocess.run(self.postroj("image", name), env=self.env(), check=True, stdout=subprocess.DEVNULL)

    def teardown(self) -> None:
        if self.registry:
            self.registry.stop()
            self.registry.config.unlink(missing_ok=True)  # a new one, with a new port, every run

    def record(self, number: "int | str", title: str, a_name: str, a, b_name: str, b, target: str,
               limit: "float | None", higher_is_better: bool = False) -> None:
        # a/b: for "higher is better" pairs that is the speed-up of b over a; no limit: a reference, no verdict
        ratio = statistics.median(a) / statistics.median(b)
        met = None if limit is None else ratio >= limit if higher_is_better else ratio <= limit
        entry = {"number": number, "title": title, "a": dict(summary(a), name=a_name),
                 "b": dict(summary(b), name=b_name), "ratio": ratio, "target": target, "met": met}
        self.results.append(entry)
        print("\n%s. %s" % (number, title))
        for side in ("a", "b"):
            s = entry[side]
            print("   %-58s median %7.3f s  min %7.3f  max %7.3f  (n=%d)" % (
                s["name"], s["median"], s["min"], s["max"], s["n"]))
        print("   ratio %.2f, target %s%s" % (ratio, target, "" if met is None else ": met" if met else ": MISSED"))
        sys.stdout.flush()

    # --- the pairs ---

    def probe_cycle(self) -> None:
        rootfs = os.path.realpath(self.home / "images" / "debian-bookworm")
        a = lambda: timed(self.postroj("probe", "--image", "debian-bookworm", "--command", PROBE), self.env())  # noqa
        own = lambda: timed(self.floor(rootfs, *PROBE.split()))  # noqa: E731
        # the target is set against the shared floor where a checkout has it (../shared/bench), else bench/floor.py
        floors = [("../shared/bench/nspawn_floor.py", lambda: timed([self.python, str(SHARED_FLOOR), rootfs]))
                  ] if SHARED_FLOOR.is_file() else []
        floors.append(("bench/floor.py (hand-written, ours)", own))
        first = len(self.results)
        for i, (name, b) in enumerate(floors):
            xs, ys = alternate(max(self.rounds, 20), a, b)  # a short cycle on a noisy machine: 20 rounds at least
            self.record(1 if i == 0 else "1b", "warm probe cycle" if i == 0 else "reference: the same against "
                        "bench/floor.py", "postroj.pyz probe --command '%s'" % PROBE, xs, name, ys,
                        "postroj <= 0.75 x floor" if i == 0 else "none", 0.75 if i == 0 else None)
        breakdown = subprocess.run(self.postroj("-v", "probe", "--image", "debian-bookworm", "--command", PROBE),
                                   env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        print("   breakdown (-v): %s" % [l for l in breakdown.stderr.splitlines() if "setup" in l])
        self.results[first]["breakdown"] = breakdown.stderr

    def before_after(self, before: Path) -> None:
        """1c, no target: the probe cycle of another build of postroj.pyz (--before, e.g. the last release's)
        against this one's, alternated, with the medians of each phase that `-v` reports."""
        argv = ["-v", "probe", "--image", "debian-bookworm", "--command", PROBE]
        phases: "dict[str, dict[str, list[float]]]" = {"before": {}, "after": {}}

        def cycle(side: str, pyz: Path) -> float:
            start = time.monotonic()
            # a cache of its own for each build: each removes the compiled code other builds left there
            env = self.env(POSTROJ_CACHE=str(BENCH_DIR / "cache-before")) if side == "before" else self.env()
            proc = subprocess.run([self.python, str(pyz), *argv], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
            elapsed = time.monotonic() - start
            line = next(l for l in proc.stderr.splitlines() if "setup" in l)
            for name, seconds in re.findall(r"(\w+) ([0-9.]+) s", line):
                phases[side].setdefault(name, []).append(float(seconds))
            return elapsed

        rounds = max(self.rounds, 20)
        xs, ys = alternate(rounds, lambda: cycle("before", before), lambda: cycle("after", self.pyz))
        self.record("1c", "the probe cycle of %s against this build" % before.name, str(before), xs,
                    "postroj.pyz (this build)", ys, "none", None)
        for side in ("before", "after"):
            medians = {name: statistics.median(v[-rounds:]) for name, v in phases[side].items()}
            self.results[-1][side + "_phases"] = medians
            print("   %-6s %s" % (side, ", ".join("%s %.3f s" % item for item in medians.items())))

    def startup(self) -> None:
        a = lambda: timed([str(self.pyz), "--version"])  # noqa: E731
        b = lambda: timed(["python3", "-c", "import argparse, subprocess"])  # noqa: E731
        xs, ys = alternate(max(self.rounds, 20), a, b)
        self.record(2, "start-up", "./postroj.pyz --version", xs, 'python3 -c "import argparse, subprocess"', ys,
                    "<= 1.5 x", 1.5)

    def by_hand(self) -> float:
        """skopeo copy, umoci unpack, apt-get install systemd dbus in nspawn: what postroj does, typed out."""
        work = Path(tempfile.mkdtemp(dir=str(BENCH_DIR), prefix="by-hand."))
        start = time.monotonic()
        try:
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
            subprocess.run(["skopeo", "--registries-conf=%s" % self.conf, "copy", "--quiet",
                            "docker://docker.io/library/debian:bookworm-slim", "oci:%s/oci:latest" % work], **quiet)
            subprocess.run(["umoci", "unpack", "--image", "%s/oci:latest" % work, str(work / "bundle")], **quiet)
            (work / "archives" / "partial").mkdir(parents=True)
            subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--resolv-conf=replace-host",
                            "--directory=%s" % (work / "bundle" / "rootfs"),
                            "--bind=%s:/var/cache/apt/archives" % (work / "archives"),
                            "sh", "-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                            "--no-install-recommends systemd systemd-sysv dbus"], **quiet)
            return time.monotonic() - start
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def acquisition(self) -> None:
        cold_cache = BENCH_DIR / "cold-cache"

        def cold() -> float:
            shutil.rmtree(cold_cache, ignore_errors=True)
            shutil.rmtree(self.home / "oci" / "debian-bookworm", ignore_errors=True)
            return timed(self.postroj("image", "debian-bookworm", "--force"), self.env(POSTROJ_CACHE=str(cold_cache)))

        def warm() -> float:
            shutil.rmtree(self.home / "oci" / "debian-bookworm", ignore_errors=True)
            return timed(self.postroj("image", "debian-bookworm", "--force"), self.env())

        xs, ys, zs = [], [], []
        for _ in range(self.rounds):
            xs.append(cold())
            ys.append(self.by_hand())
            zs.append(warm())
        shutil.rmtree(cold_cache, ignore_errors=True)
        self.record(3, "cold acquisition through the registry", "postroj.pyz image debian-bookworm --force (cold)",
                    xs, "skopeo copy + umoci unpack + nspawn apt-get install", ys, "<= 1.1 x", 1.1)
        self.record(3, "acquisition with a warm package cache", "postroj.pyz image ... --force (warm cache)", zs,
                    "postroj.pyz image ... --force (cold cache)", xs, "<= 0.6 x", 0.6)

    def matrix(self) -> None:
        base = ["probe", "--image", "debian-bookworm", "--image", "debian-bullseye", "--command", PROBE,
                "--command", "hostnamectl"]
        a = lambda: timed(self.postroj(*base, "--jobs", "1"), self.env())  # noqa: E731
        b = lambda: timed(self.postroj(*base, "--jobs", "2"), self.env())  # noqa: E731
        xs, ys = alternate(self.rounds, a, b)
        self.record(4, "matrix: 2 images x 2 probes", "--jobs 1", xs, "--jobs 2", ys, "--jobs 2 >= 1.6 x faster", 1.6,
                    higher_is_better=True)
        # what two boots at once cost on this machine without postroj: the floor on both images, one
        # after the other against both at once
        roots = [os.path.realpath(self.home / "images" / name) for name in ("debian-bookworm", "debian-bullseye")]
        floors = [self.floor(root, *PROBE.split()) for root in roots]

        def in_turn() -> float:
            start = time.monotonic()
            for cmd in floors:
                timed(cmd)
            return time.monotonic() - start

        def at_once() -> float:
            start = time.monotonic()
            procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) for cmd in floors]
            if any(proc.wait() != 0 for proc in procs):
                raise SystemExit("floor.py failed")
            return time.monotonic() - start

        xs, ys = alternate(self.rounds, in_turn, at_once)
        self.record(4, "reference: the floor on both images", "one after the other", xs, "both at once", ys,
                    "none (what two boots at once gain on this machine)", None, higher_is_better=True)

    def nginx_deb(self) -> Path:
        """nginx's newest .deb of bookworm and its -updates and -security, fetched with apt-get download
        through the rig's private apt configuration (fresh lists, the host's apt state untouched)."""
        apt = rig.PrivateApt(BENCH_DIR / "apt-download", rig.DEBIAN_SOURCES["bookworm"])
        return apt.download("nginx", BENCH_DIR / "debs")

    def package_probe(self) -> None:
        deb = str(self.nginx_deb())
        rootfs = os.path.realpath(self.home / "images" / "debian-bookworm")
        # postroj keeps apt's lists and downloads in POSTROJ_CACHE/packages/debian-12; by hand they get a
        # directory of their own, as warm as postroj's after the warm-up round
        apt_cache = str(BENCH_DIR / "apt-by-hand")
        a = lambda: timed(self.postroj("probe", "--image", "debian-bookworm", "--package", deb,  # noqa: E731
                                       "--check-unit", "nginx", "--check-network", URL), self.env())
        b = lambda: timed(self.floor(rootfs, options=("--private-network", "--package", deb,  # noqa: E731
                                                      "--apt-cache", apt_cache, "--unit", "nginx", "--url", URL)))
        xs, ys = alternate(self.rounds, a, b)
        self.record(6, "package probe: %s, its unit, HTTP" % os.path.basename(deb),
                    "postroj.pyz probe --package --check-unit --check-network", xs,
                    "floor.py --package (nspawn apt-get install, boot, by hand)", ys,
                    "postroj <= 1.0 x by hand", 1.0)

    def autopkgtest(self, dsc: Path, side: str, virt: "list[str]", options: "tuple[str, ...]" = ()
                    ) -> "tuple[float, int, dict[str, str]]":
        """One `autopkgtest -B -U [OPTIONS] DSC -- VIRT...` run: its wall time, exit code and each test's result.
        Its log and artifacts stay in BENCH_DIR/autopkgtest/SIDE until that side's next run; a run that did not
        test, or that leaves a container or an unpacked root file system behind, stops the bench."""
        out = BENCH_DIR / "autopkgtest" / side
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["autopkgtest", "--no-built-binaries", "-o", str(out), "-U", *options, str(dsc), "--", *virt]
        roots = unshare_roots()
        start = time.monotonic()
        proc = subprocess.run(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, check=False)
        elapsed = time.monotonic() - start
        log = out / "log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if proc.returncode not in AUTOPKGTEST_RAN:
            raise SystemExit("%s failed (%d), its log: %s\n%s" % (shlex.join(cmd), proc.returncode, log,
                                                                  text[-3000:]))
        left = ["nspawn %d: %s" % found for found in rig.nspawn_of(self.home)]
        left += [str(p) for p in (self.home / "run").iterdir()] if (self.home / "run").is_dir() else []
        left += sorted(unshare_roots() - roots)
        if left:
            raise SystemExit("%s left behind:\n  %s" % (shlex.join(cmd), "\n  ".join(left)))
        return elapsed, proc.returncode, autopkgtest_results(text)

    def autopkgtest_pair(self) -> None:
        tarball = str(rig.rootfs_tarball("bookworm"))
        backends = (("postroj", [str(self.pyz), "autopkgtest-virt", "debian-bookworm"]),
                    ("unshare", ["unshare", "--tarball", tarball]))
        hello = rig.source_package("hello")

        def side(name: str, virt: "list[str]") -> float:
            elapsed, code, results = self.autopkgtest(hello, name, virt)
            if code != 0 or results != {test: "PASS" for test in HELLO_TESTS}:
                raise SystemExit("%s: hello's tests did not all pass (autopkgtest exit %d): %s; its log: %s" % (
                    name, code, results, BENCH_DIR / "autopkgtest" / name / "log"))
            return elapsed

        xs, ys = alternate(self.rounds, lambda: side(*backends[0]), lambda: side(*backends[1]))
        self.record(7, "autopkgtest: %s's tests (%s)" % (hello.name.split("_")[0], ", ".join(HELLO_TESTS)),
                    "autopkgtest -- postroj.pyz autopkgtest-virt debian-bookworm", xs,
                    "autopkgtest -- unshare --tarball %s" % os.path.basename(tarball), ys,
                    "postroj <= 1.0 x unshare", 1.0)

        # what each backend can test at all: memcached's tests need isolation-container
        memcached = rig.source_package("memcached")
        sides = []
        for name, virt in backends:
            elapsed, code, results = self.autopkgtest(memcached, name + "-memcached", virt)
            passed, skipped = (sum(1 for r in results.values() if r == kind) for kind in ("PASS", "SKIP"))
            sides.append({"name": name, "passed": passed, "skipped": skipped,
                          "failed": len(results) - passed - skipped, "seconds": elapsed, "exit": code,
                          "results": results})
        title = "autopkgtest: %s's tests (isolation-container), one run each" % memcached.name.split("_")[0]
        self.results.append({"number": "7b", "title": title, "sides": sides, "target": None, "met": None})
        print("\n7b. %s\n   %-10s %6s %8s %7s %9s %5s" % (title, "backend", "passed", "skipped", "failed",
                                                            "wall", "exit"))
        for s in sides:
            print("   %-10s %6d %8d %7d %7.1f s %5d" % (s["name"], s["passed"], s["skipped"], s["failed"],
                                                        s["seconds"], s["exit"]))
        sys.stdout.flush()

    def autopkgtest_redis(self) -> None:
        """7c: a package both backends run in full, redis (its tests start the server; unshare runs them too,
        and fails those that set limits in its user namespace): at most 3 rounds, a run takes a minute."""
        tarball = str(rig.rootfs_tarball("bookworm"))
        redis = rig.source_package("redis")
        outcomes: "dict[str, dict[str, str]]" = {}

        def side(name: str, virt: "list[str]") -> float:
            elapsed, code, results = self.autopkgtest(redis, name + "-redis", virt)
            if name == "postroj" and (code != 0 or set(results.values()) != {"PASS"}):
                raise SystemExit("postroj: redis's tests did not all pass (autopkgtest exit %d): %s; its log: %s" % (
                    code, results, BENCH_DIR / "autopkgtest" / (name + "-redis") / "log"))
            outcomes[name] = results
            return elapsed

        xs, ys = alternate(min(self.rounds, 3), lambda: side("postroj", [str(self.pyz), "autopkgtest-virt",
                                                                         "debian-bookworm"]),
                           lambda: side("unshare", ["unshare", "--tarball", tarball]))
        self.record("7c", "autopkgtest: %s's tests, run by both (postroj: %s; unshare: %s)" % (
            redis.name.split("_")[0], ", ".join("%s %s" % kv for kv in sorted(outcomes["postroj"].items())),
            ", ".join("%s %s" % kv for kv in sorted(outcomes["unshare"].items()))),
            "autopkgtest -- postroj.pyz autopkgtest-virt debian-bookworm", xs,
            "autopkgtest -- unshare --tarball %s" % os.path.basename(tarball), ys, "postroj <= 1.0 x unshare", 1.0)

    def ci_image_pair(self) -> None:
        """11: haproxy's own tests (bookworm's source: the mirror here lacks the security archive's) on the image
        `image debian-bookworm --variant ci` made once, against the plain image with autopkgtest's setup-testbed as
        the setup command, which it runs in every testbed it opens or reverts. Both -U -B. The ci image is made
        before the timing. Each run's outcome is kept beside its time: on the ci image all 4 tests must pass (else
        the bench stops); on the plain one the two TLS tests fail (no /usr/local/share/ca-certificates)."""
        start = time.monotonic()
        subprocess.run(self.postroj("image", "debian-bookworm", "--variant", "ci"), env=self.env(), check=True,
                       stdout=subprocess.DEVNULL)
        made = time.monotonic() - start
        print("\n11. debian-bookworm-ci made (or found) in %.1f s, outside the timing" % made)
        haproxy = rig.source_package("haproxy", "bookworm")
        runs: "dict[str, list[dict]]" = {"ci": [], "plain": []}

        def side(name: str, image: str, options: "tuple[str, ...]") -> float:
            elapsed, code, results = self.autopkgtest(
                haproxy, name + "-haproxy", [str(self.pyz), "autopkgtest-virt", image], options)
            passed = sorted(test for test, result in results.items() if result == "PASS")
            runs[name].append({"seconds": elapsed, "exit": code, "passed": len(passed), "tests": len(results),
                               "results": results})
            print("   %-5s %6.1f s  exit %d, %d of %d passed%s" % (
                name, elapsed, code, len(passed), len(results), "".join(
                    "; %s %s" % kv for kv in sorted(results.items()) if kv[1] != "PASS")))
            sys.stdout.flush()
            if name == "ci" and (code != 0 or set(passed) != set(HAPROXY_TESTS)):
                raise SystemExit("debian-bookworm-ci: haproxy's tests did not all pass (autopkgtest exit %d): %s; "
                                 "its log: %s" % (code, results, BENCH_DIR / "autopkgtest" / "ci-haproxy" / "log"))
            return elapsed

        xs, ys = alternate(max(self.rounds, 5), lambda: side("ci", "debian-bookworm-ci", ()),
                           lambda: side("plain", "debian-bookworm", ("--setup-commands=%s" % SETUP_TESTBED,)))
        self.record(11, "a testbed like Debian's CI: %s's 4 tests, -U -B" % haproxy.name,
                    "autopkgtest -- postroj.pyz autopkgtest-virt debian-bookworm-ci", xs,
                    "autopkgtest --setup-commands=setup-testbed -- postroj.pyz autopkgtest-virt debian-bookworm",
                    ys, "ci <= 0.8 x setup-testbed", 0.8)
        # the warm-up's runs first
        self.results[-1].update(ci_image_seconds=made, a_runs=runs["ci"], b_runs=runs["plain"])
        for name in ("ci", "plain"):
            outcomes = ["%d of %d passed" % (r["passed"], r["tests"]) for r in runs[name]]
            print("   %-5s %s" % (name, ", ".join("%d runs %s" % (outcomes.count(o), o)
                                             for o in dict.fromkeys(outcomes))))

    def journal_pair(self) -> None:
        """12: what the persistent journal costs a boot: `container debian-bookworm -- true` with this build (the
        journal's flush and the utmp units run, Storage=persistent) against postroj.pyz built from JOURNAL_BEFORE
        (both masked in each container, the journal in /run), on the same image; each build compiles into
        a code cache of its own (each removes what other builds left in one)."""
        work = BENCH_DIR / "journal-before"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for name in ("postroj.py", "build_zipapp.py"):
            proc = subprocess.run(["git", "-C", str(REPO), "show", "%s:%s" % (JOURNAL_BEFORE, name)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
            if proc.returncode != 0:
                raise SystemExit("pair 12 builds postroj.pyz from commit %s of this repository: git show failed (%s)"
                                 % (JOURNAL_BEFORE, proc.stderr.decode().strip()))
            (work / name).write_bytes(proc.stdout)
        before = work / "postroj.pyz"
        subprocess.run([self.python, str(work / "build_zipapp.py"), str(before)], check=True,
                       stdout=subprocess.DEVNULL)
        argv = ["container", "debian-bookworm", "--", "true"]
        a = lambda: timed(self.postroj(*argv), self.env())  # noqa: E731
        b = lambda: timed([self.python, str(before), *argv],  # noqa: E731
                          self.env(POSTROJ_CACHE=str(BENCH_DIR / "cache-journal-before")))
        try:
            xs, ys = alternate(max(self.rounds, 10), a, b)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.record(12, "the persistent journal's boot cost: container debian-bookworm -- true",
                    "postroj.pyz (this build: journal flush and utmp kept, persistent)", xs,
                    "postroj.pyz of %s (journal flush, utmp masked)" % JOURNAL_BEFORE, ys, "none", None)

    def layers(self) -> None:
        """9: dependency layers. 9a: a repeated package probe of mariadb-server (its dependencies from the
        layer) vs the first run on a test server (no layer, an empty package cache: it downloads, makes the
        layer, installs); 9a', no target: the same vs --fresh with a warm cache (all dependencies unpacked and
        configured, as every probe before layers); 9b: four package probes of one release at once (--jobs 2
        over two images of bookworm, two such runs at once) with layers vs --fresh. Rounds: at most 5."""
        apt = rig.PrivateApt(BENCH_DIR / "apt-download", rig.DEBIAN_SOURCES["bookworm"])
        mariadb = str(apt.download("mariadb-server", BENCH_DIR / "debs"))
        probe = ["probe", "--image", "debian-bookworm", "--package", mariadb, "--check-unit", "mariadb"]
        repeated = lambda: timed(self.postroj(*probe), self.env())  # noqa: E731

        def first() -> float:
            shutil.rmtree(self.home / "layers", ignore_errors=True)
            cold = BENCH_DIR / "cold-cache"
            shutil.rmtree(cold, ignore_errors=True)
            try:
                return timed(self.postroj(*probe), self.env(POSTROJ_CACHE=str(cold)))
            finally:
                shutil.rmtree(cold, ignore_errors=True)

        xs, ys = alternate(min(self.rounds, 5), repeated, first)
        self.record("9a", "package probe of %s (its unit): repeated (a layer) vs the first run" %
                    os.path.basename(mariadb), "postroj probe (the layer, a warm package cache)", xs,
                    "postroj probe, first run (no layer, an empty package cache)", ys, "repeated <= 0.35 x first", 0.35)
        xs, ys = alternate(min(self.rounds, 5), repeated, lambda: timed(self.postroj(*probe, "--fresh"), self.env()))
        self.record("9a'", "the same: dependencies from the layer vs installed by the probe (a warm package cache)",
                    "postroj probe (the layer)", xs, "postroj probe --fresh", ys, "none (what the layer saves)", None)

        tarball = str(rig.rootfs_tarball("bookworm"))
        subprocess.run(self.postroj("image", tarball, "--name", "bookworm-minbase"), env=self.env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        four = ["probe", "--image", "debian-bookworm", "--image", "bookworm-minbase", "--jobs", "2", "--package",
                mariadb, "--check-unit", "mariadb"]

        def at_once(*extra: str) -> float:
            start = time.monotonic()
            procs = [subprocess.Popen(self.postroj(*four, *extra), env=self.env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
            if any(proc.wait() != 0 for proc in procs):
                raise SystemExit("a probe of pair 9b failed: %s" % shlex.join(self.postroj(*four, *extra)))
            return time.monotonic() - start

        xs, ys = alternate(min(self.rounds, 5), at_once, lambda: at_once("--fresh"))
        self.record("9b", "four package probes of mariadb-server on two images of bookworm at once (two runs of --jobs 2)",
                    "postroj probe (layers)", xs, "postroj probe --fresh", ys, "layers <= 0.7 x fresh", 0.7)

    def nginx_versions(self) -> "tuple[list[str], list[str]]":
        """nginx and nginx-common at bookworm's release version (old) and at the newest version of bookworm,
        -updates and -security (new), fetched with apt-get download through the rig's private apt."""
        apt = rig.PrivateApt(BENCH_DIR / "apt-download", rig.DEBIAN_SOURCES["bookworm"])
        release = rig.PrivateApt(BENCH_DIR / "apt-release", rig.DEBIAN_SOURCES["bookworm"][:1])
        new = [str(apt.download(name, BENCH_DIR / "debs-new")) for name in ("nginx-common", "nginx")]
        old = [str(release.download(name, BENCH_DIR / "debs-old")) for name in ("nginx-common", "nginx")]
        if sorted(os.path.basename(p) for p in old) == sorted(os.path.basename(p) for p in new):
            raise SystemExit("bookworm's release and current nginx are the same version: nothing to upgrade")
        return old, new

    def piuparts_base(self, merged_usr: bool = False) -> Path:
        """piuparts' base tarball of bookworm (`piuparts -s`), made once and kept in the bench's directory; with
        `merged_usr` a merged-/usr one (trixie's base-files refuses to upgrade a split /usr)."""
        base = BENCH_DIR / ("piuparts-bookworm%s.tgz" % ("-merged-usr" if merged_usr else ""))
        if not base.exists():
            subprocess.run(["piuparts", "-d", "bookworm", *(["--merged-usr"] if merged_usr else []),
                            "-m", "%s main" % host_mirror(), "-s", str(base),
                            "--no-upgrade-test", "--apt", "hello"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={k: v for k, v in os.environ.items() if k != "TMPDIR"})
        return base

    def lifecycle(self) -> None:
        old, new = self.nginx_versions()
        base = self.piuparts_base()
        upgrade = [w for path in old for w in ("--upgrade-from", path)]
        packages = [w for path in new for w in ("--package", path)]
        a = lambda: timed(self.postroj("probe", "--image", "debian-bookworm", *upgrade, *packages,  # noqa: E731
                                       "--reboot", "--purge", "--check-unit", "nginx", "--check-network", URL),
                          self.env())
        # piuparts installs the packages with apt-get from the archive (bookworm main: the release version),
        # upgrades to the files given, and purges; it also runs its install-purge test of the files first
        b = lambda: timed(["piuparts", "-d", "bookworm", "-m", "%s main" % host_mirror(), "-b", str(base),  # noqa
                           "--skip-logrotatefiles-test", *new], {k: v for k, v in os.environ.items() if k != "TMPDIR"})
        xs, ys = alternate(max(1, self.rounds // 3), a, b)
        self.record(8, "lifecycle: nginx %s -> %s, upgraded and purged" % (
            os.path.basename(old[1]).split("_")[1], os.path.basename(new[1]).split("_")[1]),
            "postroj.pyz probe --upgrade-from --package --reboot --purge --check-unit --check-network", xs,
            "piuparts -b base.tgz NEW.debs (install, upgrade, purge)", ys, "postroj <= 1.0 x piuparts", 1.0)

    def piuparts_files(self, apt: "rig.PrivateApt", name: str) -> "tuple[list[str], str, str, str]":
        """`name`'s newest .deb of bookworm, -updates and -security, and the binaries of its source it is given
        with (PIUPARTS_PACKAGES) at the same version, fetched with apt-get download: (the files, that version,
        the suite it comes from, bookworm's release version, which both sides' upgrade starts from)."""
        versions = apt.versions(name)
        version, suite = versions[0]
        release = [v for v, s in versions if s == "bookworm"]
        if not release or release[0] == version:
            raise SystemExit("%s: bookworm's release version and its newest are the same: nothing to upgrade (%s)" %
                             (name, versions))
        dest = BENCH_DIR / "debs-10" / name
        shutil.rmtree(dest, ignore_errors=True)  # one version per package: apt-get download names no other
        files = [str(apt.download(package, dest, version)) for package in (name, *PIUPARTS_PACKAGES.get(
            name, ((), name))[0])]
        return files, version, suite, release[0]

    def judged(self, cmd: "list[str]", env: "dict[str, str]", log: Path, report: "Path | None",
               verdicts: "list[str]") -> float:
        """One run of a side of pair 10 (postroj when `report`, its --json file, is given; else piuparts): its
        wall time; its verdict (PASS, or FAIL and what failed) appended to `verdicts`. Either may fail the
        package (exit 1) and still be timed; any other exit, a traceback, or a container, a mount or a chroot
        left behind stops the bench."""
        chroots = piuparts_chroots()
        if report:
            report.unlink(missing_ok=True)
        start = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  check=False)
        elapsed = time.monotonic() - start
        text = log.read_text(errors="replace")
        problem = ""
        if proc.returncode not in (0, 1) or "Traceback (most recent call last)" in text:
            problem = "exit %d" % proc.returncode
        elif report:
            results = json.loads(report.read_text())["results"] if report.exists() else None
            if results is None:
                problem = "no --json report"
            else:
                # what failed, with the first paths a purge left; and the stages a failed one kept from running
                failed = ["%s %s %s: %s%s" % (r.get("stage", ""), r["kind"], os.path.basename(r["target"]), " ".join(
                    (r.get("reason") or "").split())[:160], "".join(" (%s)" % line.strip() for line in (
                        r.get("output") or "").splitlines()[:2] if r["kind"] == "leftover"))
                          for r in results if r["status"] == "fail"]
                if bool(failed) != (proc.returncode == 1):
                    problem = "exit %d, but %d probes failed" % (proc.returncode, len(failed))
                stopped = list(dict.fromkeys(r.get("stage", "") for r in results if r["status"] == "skip" and
                                             (r.get("reason") or "").startswith("not run")))
                verdicts.append(("FAIL: " + "; ".join(failed) if failed else "PASS") +
                                (" [%s: not run]" % ", ".join(stopped) if stopped else ""))
        else:
            failed = list(dict.fromkeys(re.findall(r"ERROR: FAIL: (.*)", text)))
            if bool(failed) != (proc.returncode == 1):
                problem = "exit %d, FAIL lines: %s" % (proc.returncode, failed)
            verdicts.append("FAIL: " + "; ".join(f.strip() for f in failed) if failed else "PASS")
        if problem:
            raise SystemExit("%s: %s; its output: %s\n%s" % (shlex.join(cmd), problem, log, text[-3000:]))
        left = ["nspawn %d: %s" % found for found in rig.nspawn_of(self.home)]
        left += [str(p) for p in (self.home / "run").iterdir()] if (self.home / "run").is_dir() else []
        left += ["piuparts chroot %s" % d for d in sorted(piuparts_chroots() - chroots)]
        left += [m for d in sorted(piuparts_chroots() - chroots) for m in rig.mounts_mentioning(d)]
        if left:
            raise SystemExit("%s left behind:\n  %s" % (shlex.join(cmd), "\n  ".join(left)))
        return elapsed

    def piuparts_pair(self) -> None:
        """10: postroj's install and purge (booted, the unit checked) vs piuparts --no-upgrade-test; 10b: postroj's
        whole life (--upgrade-from archive, --reboot, --purge) vs piuparts' install-purge and upgrade tests; the
        same files on both sides, package by package, alternated after a warm-up run of each side (postroj's
        dependency layer and package cache are warm after it). At most 3 rounds: a piuparts run takes 15-25 s."""
        base = self.piuparts_base()
        apt = rig.PrivateApt(BENCH_DIR / "apt-download", rig.DEBIAN_SOURCES["bookworm"])
        packages = [(name, *self.piuparts_files(apt, name)) for name in self.packages]
        piuparts = ["piuparts", "-d", "bookworm", "-m", "%s main" % host_mirror(), "-b", str(base)]
        without_tmpdir = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
        out = BENCH_DIR / "pair10"
        out.mkdir(parents=True, exist_ok=True)
        rounds = min(self.rounds, 3)
        for number, life in (("10", False), ("10b", True)):
            ratios: "dict[str, float]" = {}
            cut_short: "list[str]" = []
            for name, files, version, suite, release in packages:
                unit = PIUPARTS_PACKAGES.get(name, ((), name))[1]
                tag = "%s-%s" % (name, number)
                report = out / ("%s.json" % tag)
                a_cmd = self.postroj("probe", "--image", "debian-bookworm",
                                     *(("--upgrade-from", "archive", "--reboot") if life else ()),
                                     *[w for f in files for w in ("--package", f)], "--check-unit", unit, "--purge",
                                     "--json", str(report))
                b_cmd = piuparts + ([] if life else ["--no-upgrade-test"]) + files
                verdicts: "dict[str, list[str]]" = {"a": [], "b": []}
                xs, ys = alternate(
                    rounds,
                    lambda: self.judged(a_cmd, self.env(), out / ("%s-postroj.log" % tag), report, verdicts["a"]),
                    lambda: self.judged(b_cmd, without_tmpdir, out / ("%s-piuparts.log" % tag), None, verdicts["b"]))
                what = "%s -> %s" % (release, version) if life else version
                self.record(number, "%s %s (%s; %d file%s, unit %s)" % (
                    name, what, suite, len(files), "" if len(files) == 1 else "s", unit),
                    "postroj probe %s--purge --check-unit %s" % ("--upgrade-from archive --reboot " if life else "",
                                                                unit), xs,
                    "piuparts -b base.tgz%s" % ("" if life else " --no-upgrade-test"), ys,
                    "postroj <= 0.8 x piuparts" if life else "none", 0.8 if life else None)
                entry = self.results[-1]
                entry.update(package=name, files=[os.path.basename(f) for f in files], version=version,
                             release_version=release, a_cmd=shlex.join(a_cmd), b_cmd=shlex.join(b_cmd),
                             a_verdicts=verdicts["a"], b_verdicts=verdicts["b"])  # the warm-up's first
                ratios[name] = entry["ratio"]
                # a life a failed stage cut short (the stages after it not run) is no whole life to compare
                if life and any("not run]" in v for v in verdicts["a"][1:]):
                    entry["met"] = None
                    cut_short.append(name)
                    print("   not compared: postroj's life stopped at a failed stage")
                for side, label in (("a", "postroj"), ("b", "piuparts")):
                    for verdict in dict.fromkeys(verdicts[side]):
                        print("   %-8s %d/%d runs %s" % (label, verdicts[side].count(verdict), len(verdicts[side]),
                                                         verdict))
                sys.stdout.flush()
            whole = [r for name, r in ratios.items() if name not in cut_short]
            median, worst = (statistics.median(whole), max(whole)) if whole else (None, None)
            met = None if not life or not whole else median <= 0.5 and worst <= 0.8
            self.results.append({"number": number, "title": "the packages' ratios", "ratios": ratios,
                                 "not_compared": cut_short, "median_ratio": median, "max_ratio": worst,
                                 "target": "median <= 0.5, each <= 0.8" if life else None, "met": met})
            print("\n%s. the packages' ratios: %s%s; median %s, max %s%s" % (
                number, ", ".join("%s %.2f" % kv for kv in ratios.items()),
                " (not compared, cut short: %s)" % ", ".join(cut_short) if cut_short else "",
                "-" if median is None else "%.2f" % median, "-" if worst is None else "%.2f" % worst,
                "" if met is None else ", target median <= 0.5 and each <= 0.8: " + ("met" if met else "MISSED")))
            sys.stdout.flush()

    def release_pair(self) -> None:
        """13 and 13b: nginx through bookworm -> trixie, postroj (service and port checked before and after,
        purge against its reference) vs piuparts' dist-upgrade test; 13 with postroj's reference made in each
        run, 13b with it kept. Alternated after a warm-up run of each side (postroj's package caches are warm
        after it)."""
        base = self.piuparts_base(merged_usr=True)
        out = BENCH_DIR / "pair13"
        out.mkdir(parents=True, exist_ok=True)
        report = out / "postroj.json"
        a_cmd = self.postroj("probe", "--image", "debian-bookworm", "--install", "nginx", "--check-unit", "nginx",
                             "--check-network", URL, "--release-upgrade", "debian-trixie", "--purge",
                             "--json", str(report))
        b_cmd = ["piuparts", "-d", "bookworm", "-d", "trixie", "-m", "%s main" % host_mirror(), "-b", str(base),
                 "--apt", "nginx"]
        without_tmpdir = {k: v for k, v in os.environ.items() if k != "TMPDIR"}

        def references() -> "list[Path]":
            layers = self.home / "layers"
            return [d for d in layers.iterdir() if (d / "layer.json").is_file() and
                    "reference" in json.loads((d / "layer.json").read_text())] if layers.is_dir() else []

        for number, kept in (("13", False), ("13b", True)):
            verdicts: "dict[str, list[str]]" = {"a": [], "b": []}

            def a() -> float:
                if not kept:
                    for reference in references():
                        shutil.rmtree(reference)
                return self.judged(a_cmd, self.env(), out / ("postroj-%s.log" % number), report, verdicts["a"])

            xs, ys = alternate(min(self.rounds, 3), a, lambda: self.judged(
                b_cmd, without_tmpdir, out / ("piuparts-%s.log" % number), None, verdicts["b"]))
            self.record(number, "release upgrade: nginx, debian-bookworm -> debian-trixie, purged; postroj's "
                        "reference %s" % ("kept" if kept else "made in each run"),
                        "postroj probe --install nginx --release-upgrade debian-trixie --purge", xs,
                        "piuparts -d bookworm -d trixie -b base.tgz --apt nginx", ys,
                        "postroj <= %s x piuparts" % ("0.5" if kept else "1.0"), 0.5 if kept else 1.0)
            self.results[-1].update(a_cmd=shlex.join(a_cmd), b_cmd=shlex.join(b_cmd), a_verdicts=verdicts["a"],
                                    b_verdicts=verdicts["b"])
            for side, label in (("a", "postroj"), ("b", "piuparts")):
                for verdict in dict.fromkeys(verdicts[side]):
                    print("   %-8s %d/%d runs %s" % (label, verdicts[side].count(verdict), len(verdicts[side]),
                                                     verdict))
            sys.stdout.flush()

    def memory(self) -> None:
        peaks = []
        for _ in range(self.rounds):
            proc = subprocess.Popen(self.postroj("probe", "--image", "debian-bookworm", "--command", PROBE),
                                    env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peak = 0
            while proc.poll() is None:
                try:
                    for line in Path("/proc/%d/status" % proc.pid).read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
                except OSError:
                    pass
                time.sleep(0.005)
            peaks.append(peak / 1024)
        entry = {"number": 5, "title": "peak resident memory of postroj during a probe", "median_mb":
                 statistics.median(peaks), "max_mb": max(peaks), "target": "< 40 MB", "met": max(peaks) < 40}
        self.results.append(entry)
        print("\n5. %s\n   median %.1f MB, max %.1f MB (VmHWM), target < 40 MB: %s" % (
            entry["title"], entry["median_mb"], entry["max_mb"], "met" if entry["met"] else "MISSED"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="runs of each side (default: 10)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11,12,13",
                        help="which pairs, e.g. 1,2 (7 includes 7b and 7c, 10 10b, 13 13b)")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--before", type=Path, default=None, metavar="PYZ",
                        help="with pair 1: also compare another build's probe cycle, phase by phase (1c)")
    parser.add_argument("--packages", default=",".join(PIUPARTS_PACKAGES), metavar="A,B",
                        help="pair 10's packages (default: %(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark runs containers: run it as root")
    chosen = {int(n) for n in args.only.split(",")}
    bench = Bench(args.rounds, tuple(args.packages.split(",")))
    print("postroj benchmark: %d rounds, %d CPUs, %s" % (args.rounds, os.cpu_count() or 0, time.strftime("%Y-%m-%d")))
    try:
        bench.setup()
        steps = {1: bench.probe_cycle, 2: bench.startup, 3: bench.acquisition, 4: bench.matrix, 5: bench.memory,
                 6: bench.package_probe, 7: bench.autopkgtest_pair, 8: bench.lifecycle, 9: bench.layers,
                 10: bench.piuparts_pair, 11: bench.ci_image_pair, 12: bench.journal_pair, 13: bench.release_pair}
        for number in sorted(chosen):
            steps[number]()
            if number == 7:
                bench.autopkgtest_redis()
            if number == 1 and args.before:
                bench.before_after(args.before.resolve())
    finally:
        bench.teardown()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rounds": args.rounds, "cpus": os.cpu_count(), "results": bench.results},
                                          indent=2))
    print("\nresults: %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
