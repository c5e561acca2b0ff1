"""The lifecycle's verdicts, in milliseconds: the real stage loop (live()), its checks and purge's comparison run
against FakeSystem, a scripted machine that implements postroj.System and interprets the commands postroj sends
it (apt-get, dpkg, dpkg-query, systemctl, journalctl, the processes and accounts scripts) as a Debian system with
a booted systemd would. Beside it, the pure parts of the same verdicts: layer keys, the package proxy's
allowlist, and what copyup leaves out of a testbed's tree.

Each test below was seen failing with the line it guards broken (issue 35, item 5)."""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import shlex
import tarfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

import postroj
import rig

EntryKind = postroj.EntryKind
ProbeKind = postroj.ProbeKind
Stage = postroj.Stage
Status = postroj.Status

UNIT_DIR = "/lib/systemd/system/"
WANTS_DIR = "/etc/systemd/system/multi-user.target.wants/"
CACHE_ARCHIVES = postroj.PACKAGE_CACHE_DIR + "/"


def image_info(version: str = "debian-bookworm@0123456789ab") -> postroj.ImageInfo:
    return postroj.ImageInfo(name="debian-bookworm", source="bootstrap:debian-bookworm", digest="sha256:00",
                             os_release="Debian GNU/Linux 12 (bookworm)", os_id="debian", family="debian",
                             package_manager="apt", acquired="2026-01-01T00:00:00+00:00", size=0,
                             path=Path("/var/lib/postroj/versions") / version / "rootfs")


# --- the scripted machine ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FakePackage:
    """A .deb as the fake's dpkg and maintainer scripts handle it: the defaults are what well-behaved scripts do
    (dh_installsystemd's for a unit), each other value one way to misbehave."""

    name: str
    version: str
    files: Tuple[str, ...] = ()  # what dpkg unpacks (dpkg -L lists them with their directories)
    conffiles: Tuple[str, ...] = ()  # kept by remove, deleted by purge
    unit: str = ""  # shipped in /lib/systemd/system/, runs `daemon`
    daemon: str = ""
    enables: bool = True  # dh_installsystemd --no-enable: False
    starts: bool = True  # --no-start: False
    prerm_stops: bool = True  # prerm stops the unit (deb-systemd-invoke stop)
    depends: Tuple[str, ...] = ()  # names in the image's archive
    user: str = ""  # adduser --system in postinst; purge keeps it (Debian's policy)
    state: Tuple[str, ...] = ()  # files its postinst makes (not dpkg's); postrm purge deletes them
    purge_keeps_state: bool = False
    purge_keeps_wants: bool = False  # postrm without deb-systemd-helper purge: the *.wants link stays
    edits: Tuple[str, ...] = ()  # image files its postinst rewrites; postrm purge puts them back
    purge_restores_edits: bool = True
    deletes: Tuple[str, ...] = ()  # image files its postinst deletes, never brought back
    links: Tuple[Tuple[str, str], ...] = ()  # (path, target): its postinst puts a link there, purge leaves it
    dirs: Tuple[str, ...] = ()  # directories its postinst makes, never removed
    postinst_fails: bool = False
    reload_fails: bool = False  # its postinst reloads the unit on upgrade, the reload fails, the script goes on
    crashes: bool = False  # its daemon exits soon after it starts; Restart=on-failure brings it back, again and again

    @property
    def deb(self) -> str:
        return "%s_%s_all.deb" % (self.name, self.version)

    def owned(self) -> List[str]:
        """What dpkg records as the package's: its files, conffiles and unit file."""
        return list(self.files) + list(self.conffiles) + ([UNIT_DIR + self.unit] if self.unit else [])


def version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def ancestors(path: str) -> List[str]:
    """/a/b/c -> [/a, /a/b] (parents before children, without /)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


IMAGE_TREE: Dict[str, Tuple[str, str]] = {
    path: ("dir", "") for path in (
        "/", "/bin", "/etc", "/etc/apt", "/etc/apt/apt.conf.d", "/etc/default", "/etc/systemd", "/etc/systemd/system",
        "/etc/systemd/system/multi-user.target.wants", "/lib", "/lib/systemd", "/lib/systemd/system", "/run",
        "/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib/systemd", "/usr/share", "/usr/share/doc",
        "/usr/share/base-files", "/var", "/var/lib", "/var/lib/dpkg", "/var/log", "/var/cache", "/tmp")
}
IMAGE_TREE.update({
    "/bin/sh": ("file", "dash"),
    "/etc/hosts": ("file", "127.0.0.1 localhost\n"),
    "/etc/resolv.conf": ("file", "nameserver 192.0.2.1\n"),
    "/etc/passwd": ("file", "root:x:0:0:root:/root:/bin/bash\n"),
    "/etc/group": ("file", "root:x:0:\n"),
    "/etc/default/locale": ("file", "LANG=C.UTF-8\n"),
    "/usr/share/base-files/motd": ("file", "The programs included with the Debian GNU/Linux system ...\n"),
    "/usr/lib/systemd/systemd": ("file", "systemd"),
    "/usr/lib/systemd/systemd-journald": ("file", "journald"),
    "/var/lib/dpkg/status": ("file", "Package: base-files\n"),
})
IMAGE_PACKAGES = ("base-files", "dpkg", "apt", "systemd", "libc6")
BOOT_PROCESSES = {1: ("/usr/lib/systemd/systemd", "/sbin/init"),
                  25: ("/usr/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")}
APT_FLAGS = ("-q", "-qq", "-y", "-s", "--no-install-recommends", "--autoremove", "--download-only",
             "--allow-downgrades")


class FakeSystem:
    """A booted Debian machine in memory, as postroj.System: its file system over the image's (an overlay: what
    was written since the image is `touched`), dpkg's database, systemd's units and the processes they run, the
    users and groups. run_captured() interprets the argv postroj sends and records each one in `argvs`; an argv
    it does not know is in `unknown` and fails as a missing command would."""

    what = "the container"
    layer: Optional[postroj.Layer] = None

    def __init__(self, staged: Sequence[Tuple[str, FakePackage]] = (), archive: Sequence[FakePackage] = (),
                 listed_whole: bool = False, image: Optional[postroj.ImageInfo] = None) -> None:
        self.image = image or image_info()
        self.listed_whole = listed_whole  # a VM's listing of its whole file system, not an overlay's
        self.manager: postroj.PackageManager = postroj.Apt()
        self.staged = dict(staged)  # a package file's path in the system -> what it holds
        self.archive = {p.name: p for p in archive}  # what the package cache holds, by name
        self.lower = dict(IMAGE_TREE)
        self.fs = dict(IMAGE_TREE)
        self.touched: "set[str]" = set()
        self.dpkg: Dict[str, Tuple[FakePackage, str]] = {}  # name -> (package, ii / rc / iF)
        self.auto: "set[str]" = set()
        self.saved: Dict[str, Tuple[str, str]] = {}  # what a postinst's edit replaced
        self.units: Dict[str, str] = {}  # unit -> active / inactive / failed
        self.unit_pids: Dict[str, int] = {}
        self.unit_since: Dict[str, float] = {}  # ActiveEnterTimestampMonotonic, on clock()'s clock
        self.unit_restarts: Dict[str, int] = {}
        self.crashing: "set[str]" = set()
        self.processes = dict(BOOT_PROCESSES)
        self.next_pid = 100
        self.accounts = {"user:root", "group:root"}
        self.journal: List[str] = ["systemd[1]: Startup finished."]
        self.events: List[Tuple[float, Dict[str, str]]] = []  # PID 1's structured journal entries, timed
        self.argvs: List[List[str]] = []
        self.unknown: List[List[str]] = []
        self.history: List[Tuple[str, str, str]] = []  # (unpacked / removed / purged, name, version)
        self.boots = 1
        # what nspawn and postroj wrote into the overlay before the boot (write_hosts, write_proxy_conf)
        self.write("/etc/hosts", "file", "127.0.0.1 localhost\n127.0.1.1 postroj-debian-bookworm\n")
        self.write("/etc/resolv.conf", "file", "nameserver 192.0.2.53\n")
        self.write("/" + postroj.PACKAGE_PROXY_CONF, "file", 'Acquire::http::Proxy "http://127.0.0.1:31420/";\n')

    # --- the file system --------------------------------------------------------------------------------------

    def write(self, path: str, kind: str, content: str = "") -> None:
        """Make `path` (its missing directories too); overlayfs copies every directory above it up."""
        for parent in ancestors(path):
            if parent not in self.fs:
                self.fs[parent] = ("dir", "")
            self.touched.add(parent)
        self.fs[path] = (kind, content)
        self.touched.add(path)

    def delete(self, path: str) -> None:
        for name in [p for p in self.fs if p == path or p.startswith(path + "/")]:
            del self.fs[name]
            self.touched.add(name)
        for parent in ancestors(path):
            self.touched.add(parent)

    def remove_empty_dirs(self, paths: Sequence[str]) -> None:
        """What dpkg and rmdir do after a removal: the directories above `paths` that were not in the image and
        are empty now go, deepest first."""
        dirs = sorted({d for p in paths for d in ancestors(p) if d not in self.lower}, key=len, reverse=True)
        for directory in dirs:
            if directory in self.fs and not any(p.startswith(directory + "/") for p in self.fs):
                self.delete(directory)

    def entries(self) -> Dict[str, str]:
        if self.listed_whole:
            return {p: EntryKind(kind) for p, (kind, _) in self.fs.items() if p != "/"}
        found: Dict[str, str] = {}
        for path in self.touched:
            if path in self.fs:
                found[path] = EntryKind(self.fs[path][0])
            elif path in self.lower and posixpath.dirname(path) in self.fs:
                found[path] = EntryKind.GONE  # a whiteout
        return found

    def baseline_entries(self) -> Dict[str, str]:
        return self.entries()

    def fingerprints(self) -> Dict[str, postroj.Fingerprint]:
        """What the overlay holds, fingerprinted by its content (a directory: by nothing, as postroj's)."""
        if self.listed_whole:
            return {}
        return {p: (0, 0, 0, 0, 0, 0) if self.fs[p][0] == "dir" else (0, 0, 0, len(self.fs[p][1]),
                                                                      hash(self.fs[p][1]), 0)
                for p in self.touched if p in self.fs}

    def difference(self, path: str, kind: str, against: Optional[Path] = None) -> Optional[str]:
        if self.listed_whole:
            return None
        ours, image = self.fs.get(path), self.lower.get(path)
        if image is None:
            return None
        if kind == EntryKind.GONE or ours is None:
            return "removed"
        if ours[0] != image[0]:
            return "a %s where the image has a %s" % (ours[0], image[0])
        return "" if kind == EntryKind.DIR or image == ours else "content"

    def dangling(self, link: str) -> bool:
        path = link
        for _ in range(40):
            entry = self.fs.get(path)
            if entry is None:
                return True
            if entry[0] != "link":
                return False
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), entry[1]))
        return True

    # --- systemd ----------------------------------------------------------------------------------------------

    def start(self, unit: str) -> Tuple[int, str]:
        entry = self.fs.get(UNIT_DIR + unit)
        if entry is None:
            return 5, "Failed to start %s: Unit %s not found." % (unit, unit)
        if self.units.get(unit) == "active":
            return 0, ""
        daemon = entry[1].split("=", 1)[1]
        if self.fs.get(daemon, ("",))[0] != "file":
            self.units[unit] = "failed"
            self.journal.append("systemd[1]: %s: Failed at step EXEC spawning %s" % (unit, daemon))
            self.log_event(UNIT=unit, JOB_TYPE="start", JOB_RESULT="failed", MESSAGE="Failed to start %s." % unit)
            return 1, "Job for %s failed." % unit
        self.units[unit] = "active"
        self.unit_since[unit] = self.clock()
        self.unit_restarts[unit] = 0
        self.unit_pids[unit] = self.next_pid
        self.processes[self.next_pid] = (daemon, daemon + " --foreground")
        self.next_pid += 1
        self.journal.append("systemd[1]: Started %s." % unit)
        return 0, ""

    def stop(self, unit: str) -> None:
        if self.units.get(unit) == "active":
            self.processes.pop(self.unit_pids.pop(unit, 0), None)
            self.journal.append("systemd[1]: Stopped %s." % unit)
        self.units[unit] = "inactive"

    def log_event(self, **fields: str) -> None:
        self.events.append((time.time(), fields))
        self.journal.append("systemd[1]: %s" % fields["MESSAGE"])

    def show(self, unit: str, properties: List[str]) -> str:
        """systemctl show: a crashing unit has been restarted once more each time it is looked at."""
        state = self.units.get(unit, "inactive")
        if unit in self.crashing and state == "active":
            self.unit_restarts[unit] += 1
            self.unit_since[unit] = self.clock()
        known = UNIT_DIR + unit in self.fs
        values = {"LoadState": "loaded" if known else "not-found", "ActiveState": state,
                  "SubState": {"active": "running", "failed": "failed"}.get(state, "dead"),
                  "Result": "success", "NRestarts": str(self.unit_restarts.get(unit, 0)),
                  "InvocationID": "%032x" % self.unit_restarts.get(unit, 0) if state == "active" else "",
                  "UnitFileState": self.enabled(unit)[1] if known else "",
                  "ActiveEnterTimestampMonotonic": str(int(self.unit_since.get(unit, 0) * 1e6))}
        return "\n".join("%s=%s" % (name, values[name]) for name in reversed(properties))

    def clock(self) -> float:
        return time.monotonic()

    def enabled(self, unit: str) -> Tuple[int, str]:
        if WANTS_DIR + unit in self.fs:
            return 0, "enabled"
        if UNIT_DIR + unit in self.fs:
            return 1, "disabled"
        return 1, "Failed to get unit file state for %s: No such file or directory" % unit

    def systemctl(self, args: List[str]) -> Tuple[int, str]:
        verb, units = args[0], args[1:]
        if verb == "is-active":
            states = [self.units.get(u, "inactive") for u in units]
            return (0 if all(s == "active" for s in states) else 3), "\n".join(states)
        if verb == "is-enabled":
            return self.enabled(units[0])
        if verb == "show" and units[0].startswith("--property="):
            return 0, self.show(units[-1], [u.split("=", 1)[1] for u in units[:-1]])
        if verb == "status":
            unit = units[-1]
            return 3, "* %s\n   Active: %s" % (unit, self.units.get(unit, "inactive"))
        if verb == "enable" and units[0] == "--now":
            for unit in units[1:]:
                self.write(WANTS_DIR + unit, "link", UNIT_DIR + unit)
                self.start(unit)
            return 0, ""
        if verb == "is-system-running":
            return 0, "running"
        return self.missing(["systemctl"] + args)

    # --- dpkg and its maintainer scripts ----------------------------------------------------------------------

    def unpack(self, package: FakePackage) -> None:
        old = self.dpkg.get(package.name)
        if old is not None:
            gone = [p for p in old[0].owned() if p not in package.owned()]
            for path in gone:
                self.delete(path)
            self.remove_empty_dirs(gone)
        for path in package.owned():
            if path == UNIT_DIR + package.unit:
                self.write(path, "file", "ExecStart=%s" % package.daemon)
            elif not (path in package.conffiles and path in self.fs):  # dpkg keeps a conffile there
                self.write(path, "file", "%s %s" % (package.name, package.version))
        self.dpkg[package.name] = (package, "iU")
        self.history.append(("unpacked", package.name, package.version))

    def configure(self, package: FakePackage, upgrade: bool) -> Tuple[int, str]:
        if package.postinst_fails:
            self.dpkg[package.name] = (package, "iF")
            return 1, ("dpkg: error processing package %s (--configure):\n installed %s package post-installation "
                       "script subprocess returned error exit status 1" % (package.name, package.name))
        if package.user:
            self.accounts |= {"user:" + package.user, "group:" + package.user}
            entry = "%s:x:100:100::/nonexistent:/usr/sbin/nologin\n" % package.user
            self.write("/etc/passwd", "file", self.fs["/etc/passwd"][1] + entry)
            self.write("/etc/group", "file", self.fs["/etc/group"][1] + "%s:x:100:\n" % package.user)
        for path in package.state:
            self.write(path, "file", "state of %s" % package.name)
        for path in package.edits:
            self.saved.setdefault(path, self.fs[path])
            self.write(path, "file", self.fs[path][1] + "# added by %s\n" % package.name)
        for path in package.deletes:
            self.delete(path)
        for path, target in package.links:
            self.delete(path)
            self.write(path, "link", target)
        for path in package.dirs:
            self.write(path, "dir")
        if package.unit:
            if package.enables and not upgrade:
                self.write(WANTS_DIR + package.unit, "link", UNIT_DIR + package.unit)
            if package.crashes:
                self.crashing.add(package.unit)
            if upgrade and package.reload_fails and self.units.get(package.unit) == "active":
                self.journal.append("systemd[1]: %s: Control process exited, code=exited, status=203/EXEC"
                                    % package.unit)
                self.log_event(UNIT=package.unit, JOB_TYPE="reload", JOB_RESULT="failed",
                               MESSAGE="Reload failed for %s." % package.unit)
            elif package.starts:
                if upgrade:
                    self.stop(package.unit)
                code, out = self.start(package.unit)
                if code != 0:
                    self.dpkg[package.name] = (package, "iF")
                    return 1, out
        self.dpkg[package.name] = (package, "ii")
        return 0, "Setting up %s (%s) ..." % (package.name, package.version)

    def remove(self, package: FakePackage) -> None:
        if package.unit and package.prerm_stops:
            self.stop(package.unit)
        gone = [p for p in package.owned() if p not in package.conffiles]
        for path in gone:
            self.delete(path)
        self.remove_empty_dirs(gone)
        self.dpkg[package.name] = (package, "rc")
        self.auto.discard(package.name)
        self.history.append(("removed", package.name, package.version))

    def purge(self, package: FakePackage) -> None:
        if self.dpkg[package.name][1] != "rc":
            self.remove(package)
        for path in package.conffiles:
            self.delete(path)
        cleaned = list(package.conffiles)
        if not package.purge_keeps_state:
            for path in package.state:
                self.delete(path)
            cleaned += package.state
        if package.unit and not package.purge_keeps_wants:
            self.delete(WANTS_DIR + package.unit)  # deb-systemd-helper purge
        if package.purge_restores_edits:
            for path in package.edits:
                kind, content = self.saved.pop(path)
                self.write(path, kind, content)
        self.remove_empty_dirs(cleaned)
        del self.dpkg[package.name]
        self.history.append(("purged", package.name, package.version))

    def needed(self) -> "set[str]":
        return {d for package, status in self.dpkg.values() if status == "ii" for d in package.depends}

    # --- apt-get ----------------------------------------------------------------------------------------------

    def apt_get(self, args: List[str]) -> Tuple[int, str]:
        options: Dict[str, str] = {}
        flags: "set[str]" = set()
        words: List[str] = []
        given = iter(args)
        for arg in given:
            if arg == "-o":
                key, _, value = next(given).partition("=")
                options[key] = value
            elif arg in APT_FLAGS:
                flags.add(arg)
            elif arg.startswith("-"):
                return 100, "E: Command line option '%s' is not understood" % arg
            else:
                words.append(arg)
        verb, names = words[0], words[1:]
        if verb in ("install", "remove", "purge") and "-y" not in flags:
            return 1, "Do you want to continue? [Y/n] Abort."
        if verb == "install":
            return self.apt_install(names, options, flags)
        if verb in ("remove", "purge"):
            said = []
            for name in names:
                if name not in self.dpkg or (verb == "remove" and self.dpkg[name][1] == "rc"):
                    said.append("Package '%s' is not installed, so not removed" % name)
                elif verb == "remove":
                    self.remove(self.dpkg[name][0])
                else:
                    self.purge(self.dpkg[name][0])
            if "--autoremove" in flags:
                for name in sorted(self.auto - self.needed()):
                    if verb == "purge":
                        self.purge(self.dpkg[name][0])
                    else:
                        self.remove(self.dpkg[name][0])
            return 0, "\n".join(said)
        return self.missing(["apt-get"] + args)

    def apt_install(self, names: List[str], options: Dict[str, str], flags: "set[str]") -> Tuple[int, str]:
        wanted: List[FakePackage] = []
        for name in names:
            if name.startswith("/"):
                if name not in self.staged:
                    return 100, "E: Unsupported file %s given on commandline" % name
                wanted.append(self.staged[name])
            elif name in self.archive:
                wanted.append(self.archive[name])
            else:
                return 100, "E: Unable to locate package %s" % name
        wanted_names = {p.name for p in wanted}
        needs = [d for p in wanted for d in p.depends
                  if d not in wanted_names and (d not in self.dpkg or self.dpkg[d][1] != "ii")]
        if any(d not in self.archive for d in needs):
            return 100, "E: Unable to correct problems, you have held broken packages."
        pulled = [self.archive[d] for d in needs]
        from_archive = pulled + [p for p in wanted if p.name in self.archive and self.archive[p.name] is p]
        if from_archive and options.get("Dir::Cache::Archives") != CACHE_ARCHIVES:
            return 100, "E: Failed to fetch http://deb.debian.org/debian/pool/main/%s  Temporary failure " \
                        "resolving 'deb.debian.org' (the container's network is its own)" % from_archive[0].deb
        for package in wanted:
            installed = self.dpkg.get(package.name)
            if installed and installed[1] == "ii" and version_key(package.version) < version_key(installed[0].version) \
                    and "--allow-downgrades" not in flags:
                return 100, "E: Packages were downgraded and -y was used without --allow-downgrades."
        said = []
        for log in ("/var/log/apt/history.log", "/var/log/dpkg.log", "/var/cache/debconf/config.dat"):
            self.write(log, "file", self.fs.get(log, ("", ""))[1] + "install %s\n" % " ".join(names))
        for package in pulled + wanted:
            upgrade = package.name in self.dpkg and self.dpkg[package.name][1] != "rc"
            self.unpack(package)
            if package in pulled:
                self.auto.add(package.name)
            code, out = self.configure(package, upgrade)
            said.append(out)
            if code != 0:
                return 100, "\n".join(said + ["E: Sub-process /usr/bin/dpkg returned an error code (1)"])
        return 0, "\n".join(said)

    def dpkg_list(self, names: List[str]) -> Tuple[int, str]:
        lines, code = [], 0
        for name in names:
            if name not in self.dpkg:
                lines.append("dpkg-query: package '%s' is not installed" % name)
                code = 1
                continue
            package, status = self.dpkg[name]
            owned = package.owned() if status != "rc" else list(package.conffiles)
            lines += ["/."] + sorted({d for p in owned for d in ancestors(p)} | set(owned))
        return code, "\n".join(lines)

    # --- run_captured -----------------------------------------------------------------------------------------

    def missing(self, argv: Sequence[str]) -> Tuple[int, str]:
        self.unknown.append(list(argv))
        return 127, "sh: 1: %s: not found" % argv[0]

    def run_captured(self, argv: Sequence[str], timeout: Optional[float] = 30) -> Tuple[int, str]:
        argv = list(argv)
        self.argvs.append(argv)
        if argv[0] == "env":  # env NAME=VALUE... COMMAND: apt as CI runs it
            assert "DEBIAN_FRONTEND=noninteractive" in argv or "LC_ALL=C" in argv, argv
            argv = argv[1:]
            while "=" in argv[0]:
                argv = argv[1:]
        if argv[0] == "apt-get":
            return self.apt_get(argv[1:])
        if argv[:2] == ["dpkg", "-L"]:
            return self.dpkg_list(argv[2:])
        if argv[:3] == self.manager.versions([]):
            found = [(n, self.dpkg[n][0].version) for n in argv[3:] if n in self.dpkg and self.dpkg[n][1] == "ii"]
            return (0 if len(found) == len(argv[3:]) else 1), "".join("%s\t%s\n" % item for item in found)
        if argv == self.manager.installed():
            names = list(IMAGE_PACKAGES) + [n for n, (_, status) in self.dpkg.items()]
            return 0, "\n".join(sorted(names))
        if argv == ["sh", "-c", postroj.PROCESSES_SCRIPT]:
            return 0, "\n".join("%d\t%s\t%s" % (pid, exe, cmd) for pid, (exe, cmd) in sorted(self.processes.items()))
        if argv[:3] == ["sh", "-c", postroj.MISSING_SCRIPT]:
            return 0, "\n".join(link for link in argv[4:] if self.dangling(link))
        if argv[:2] == ["sh", "-c"] and "cut -d: -f1 /etc/passwd" in argv[2]:
            return 0, "\n".join(sorted(self.accounts))
        if argv[0] == "systemctl":
            return self.systemctl(argv[1:])
        if argv[0] == "journalctl" and "json" in argv:
            since = float(argv[argv.index("--since") + 1].lstrip("@"))
            return 0, "\n".join(json.dumps(fields) for at, fields in self.events if at >= since)
        if argv[0] == "journalctl":
            count = int(argv[argv.index("-n") + 1])
            unit = argv[argv.index("-u") + 1] if "-u" in argv else ""
            return 0, "\n".join([line for line in self.journal if unit in line][-count:])
        if argv[:2] == ["/bin/sh", "-c"]:  # a --command check
            program = shlex.split(argv[2])[0]
            if self.fs.get(program, ("",))[0] == "file":
                return 0, self.fs[program][1]
            return 127, "/bin/sh: 1: %s: not found" % program
        return self.missing(argv)

    # --- the rest of System -----------------------------------------------------------------------------------

    def ended(self) -> bool:
        return False

    def journal_tail(self, lines: int = 30, unit: str = "", since: float = 0) -> str:
        return "\n".join([line for line in self.journal if unit in line][-lines:])

    def power_cycle(self) -> None:
        """Power off as a machine does (every unit stops, every process ends), boot again: the enabled units
        start."""
        for unit in list(self.units):
            self.stop(unit)
        self.processes = dict(BOOT_PROCESSES)
        self.boots += 1
        for path in sorted(self.fs):
            if path.startswith(WANTS_DIR):
                self.start(path[len(WANTS_DIR):])

    def boot_state(self) -> str:
        return "running"

    def check(self, probe: postroj.Probe, timeout: float) -> postroj.ProbeResult:
        if probe.kind == ProbeKind.UNIT:
            return postroj.run_unit_probe(self, probe, timeout)
        if probe.kind == ProbeKind.COMMAND:
            return postroj.run_command_probe(self, probe, timeout)  # type: ignore[arg-type]  # uses System's part
        raise AssertionError("FakeSystem runs unit and command checks, not %s" % probe.kind)


# --- a package's life in it -------------------------------------------------------------------------------------

HOST_DIR = "/srv/packages/"
APP = FakePackage("app", "2.0", files=("/usr/sbin/appd", "/usr/bin/app", "/usr/share/doc/app/copyright"),
                  conffiles=("/etc/app/app.conf",), unit="app.service", daemon="/usr/sbin/appd",
                  depends=("libapp1",), user="app", state=("/var/lib/app/app.db",))
LIBAPP = FakePackage("libapp1", "1.4", files=("/usr/lib/libapp.so.1",))


def life(package: FakePackage = APP, upgrade_from: str = "1.0", *, reboot: bool = True, listed_whole: bool = False,
         ignore: Tuple[str, ...] = (), settle: float = 0.02) -> Tuple[FakeSystem, List[postroj.ProbeResult]]:
    """The whole life of `package` (upgraded from its version `upgrade_from`, '' for none) in a FakeSystem, as
    live() runs it: the system and the results."""
    old = dataclasses.replace(package, version=upgrade_from, postinst_fails=False) if upgrade_from else None
    new_path = "%s/packages/%s" % (postroj.GUEST_RUNTIME, package.deb)
    staged = [(new_path, package)]
    probes = [postroj.Probe(ProbeKind.PACKAGE, HOST_DIR + package.deb)]
    labels = {HOST_DIR + package.deb: "%s %s" % (package.name, package.version)}
    old_paths: Tuple[str, ...] = ()
    if old is not None:
        old_paths = ("%s/old/%s" % (postroj.GUEST_RUNTIME, old.deb),)
        staged.append((old_paths[0], old))
        labels[HOST_DIR + old.deb] = "%s %s" % (old.name, old.version)
    if package.unit:
        probes.append(postroj.Probe(ProbeKind.UNIT, package.unit))
    probes.append(postroj.Probe(ProbeKind.COMMAND, "/usr/bin/app --version"))
    plan = postroj.ProbePlan(tuple(probes), upgrade_from=(HOST_DIR + old.deb,) if old else (), reboot=reboot,
                             purge=True, timeout=0.5, ignore=ignore, settle=settle)
    system = FakeSystem(staged, [LIBAPP], listed_whole=listed_whole)
    packages = postroj.Packages((new_path,), old_paths, (package.name,), tuple(probes[:1]), labels,
                                ("libapp1=1.4",), {package.name: package.version},
                                {old.name: old.version} if old else {})
    results = postroj.live(system, plan, packages, threading.Event())
    assert not system.unknown, "postroj sent commands the fake does not know: %s" % system.unknown
    return system, results


def verdicts(results: Sequence[postroj.ProbeResult]) -> Dict[str, str]:
    """STAGE: KIND TARGET -> pass / fail / skip."""
    return {r.title.replace(HOST_DIR, ""): str(r.status) for r in results}


def result(results: Sequence[postroj.ProbeResult], title: str) -> postroj.ProbeResult:
    found = [r for r in results if r.title.replace(HOST_DIR, "") == title]
    assert len(found) == 1, "%s: %s" % (title, sorted(verdicts(results)))
    return found[0]


def installs(system: FakeSystem) -> List[List[str]]:
    """The package arguments of each apt-get install postroj sent, in order."""
    return [[a for a in argv if a.startswith("/")] for argv in system.argvs
            if "apt-get" in argv and "install" in argv and "--download-only" not in argv]


def test_fake_system_offers_what_the_protocol_declares():
    declared = [name for name in vars(postroj.System) if not name.startswith("_")]
    assert "run_captured" in declared and "difference" in declared and "fingerprints" in declared
    system: postroj.System = FakeSystem()  # mypy checks the fake against the protocol here
    assert [name for name in declared if not hasattr(system, name)] == []


def test_a_well_behaved_package_passes_its_whole_life():
    system, results = life()
    assert verdicts(results) == {
        "installed: package app_1.0_all.deb": "pass", "installed: unit app.service": "pass",
        "installed: command /usr/bin/app --version": "pass",
        "upgraded: package app_2.0_all.deb": "pass", "upgraded: unit app.service": "pass",
        "upgraded: command /usr/bin/app --version": "pass",
        "rebooted: reboot the container": "pass", "rebooted: unit app.service": "pass",
        "rebooted: command /usr/bin/app --version": "pass",
        "removed: package app_2.0_all.deb": "pass", "removed: unit app.service": "pass",
        "removed: leftover processes": "pass", "removed: leftover units": "pass",
        "purged: package app_2.0_all.deb": "pass", "purged: unit app.service": "pass",
        "purged: leftover files": "pass", "purged: leftover processes": "pass"}
    assert [r.stage for r in results if r.probe.kind == ProbeKind.PACKAGE] == ["installed", "upgraded", "removed",
                                                                                 "purged"]
    # the dependency the first install pulled in is purged with the package; the user it added is reported
    assert [h for h in system.history if h[0] == "purged"] == [("purged", "app", "2.0"), ("purged", "libapp1", "1.4")]
    assert "libapp1" not in system.dpkg and "/usr/lib/libapp.so.1" not in system.fs
    assert result(results, "purged: leftover files").output == "left, as Debian's policy allows: group:app, user:app"
    assert system.boots == 2


def test_install_runs_before_the_upgrade():
    system, results = life()
    old = "%s/old/app_1.0_all.deb" % postroj.GUEST_RUNTIME
    new = "%s/packages/app_2.0_all.deb" % postroj.GUEST_RUNTIME
    assert installs(system) == [[old], [new]]
    assert [h for h in system.history if h[1] == "app"][:2] == [("unpacked", "app", "1.0"), ("unpacked", "app", "2.0")]
    assert result(results, "installed: package app_1.0_all.deb").label == "app 1.0"
    assert result(results, "upgraded: package app_2.0_all.deb").label == "app 2.0"


def test_the_package_commands_are_apts_own_and_run_from_the_cache():
    system, _ = life()
    sent = [argv for argv in system.argvs if argv[:3] == ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]]
    assert [next(a for a in argv if a in ("install", "remove", "purge")) for argv in sent] == [
        "install", "install", "remove", "purge"]
    for argv in sent:
        assert "Dir::Cache::Archives=" + CACHE_ARCHIVES in argv, "everything was downloaded before the boot"
        assert "Debug::NoLocking=1" in argv, "a booted container reads the shared cache without apt's locks"
    assert sent[-1][-3:] == ["--autoremove", "app", "libapp1"]


def test_a_failed_upgrade_skips_the_stages_after_it():
    _, results = life(dataclasses.replace(APP, postinst_fails=True))
    failed = result(results, "upgraded: package app_2.0_all.deb")
    assert failed.status == Status.FAIL and failed.reason == "apt exited with 100"
    assert "post-installation script subprocess returned error exit status 1" in failed.output
    later = [r for r in results if r.stage in ("rebooted", "removed", "purged")]
    assert later and {r.status for r in later} == {Status.SKIP}
    assert later[0].reason == "not run: the upgraded stage failed (app_2.0_all.deb)"


# --- units ------------------------------------------------------------------------------------------------------


def test_a_unit_the_package_neither_started_nor_enabled_fails():
    _, results = life(dataclasses.replace(APP, starts=False, enables=False), upgrade_from="", reboot=False)
    unit = result(results, "installed: unit app.service")
    assert unit.status == Status.FAIL
    assert unit.reason == "inactive, not enabled: the package neither enabled nor started it"


def test_a_unit_started_but_not_enabled_fails_after_the_reboot():
    _, results = life(dataclasses.replace(APP, enables=False), upgrade_from="")
    assert result(results, "installed: unit app.service").status == Status.PASS
    after = result(results, "rebooted: unit app.service")
    assert after.status == Status.FAIL
    assert after.reason.startswith("inactive, not enabled: it did not come back after the reboot")


def test_a_unit_still_active_after_remove_fails():
    _, results = life(dataclasses.replace(APP, prerm_stops=False), upgrade_from="", reboot=False)
    unit = result(results, "removed: unit app.service")
    assert unit.status == Status.FAIL
    assert unit.reason == "unit app.service is still active after the packages were removed"
    assert result(results, "removed: leftover units").output == "app.service"
    processes = result(results, "removed: leftover processes")
    assert processes.status == Status.FAIL and "/usr/sbin/appd (/usr/sbin/appd --foreground)" in processes.output
    assert result(results, "purged: leftover processes").status == Status.FAIL


@pytest.mark.parametrize("state, enabled, expect_active, status", [
    ("active", "enabled", True, Status.PASS),
    ("inactive", "enabled", True, Status.FAIL),
    ("inactive", "disabled", True, Status.FAIL),
    ("failed", "enabled", True, Status.FAIL),
    ("inactive", "disabled", False, Status.PASS),
    ("active", "enabled", False, Status.FAIL),
])
def test_the_unit_verdict(state, enabled, expect_active, status):
    system = FakeSystem([("/app.deb", dataclasses.replace(APP, depends=()))])
    assert system.run_captured(["apt-get", "-y", "install", "/app.deb"])[0] == 0
    if state != "active":
        system.stop("app.service")
        system.units["app.service"] = state
    if enabled == "disabled":
        system.delete(WANTS_DIR + "app.service")
    found = postroj.run_unit_probe(system, postroj.Probe(ProbeKind.UNIT, "app.service"), 0.5, expect_active,
                                   settle=0.05)
    assert found.status == status, found.reason
    if status == Status.PASS:
        assert found.output == "%s, %s" % (state, enabled)


def test_a_unit_is_looked_at_again_once_it_has_been_up_for_the_settle_window():
    system = FakeSystem([("/app.deb", dataclasses.replace(APP, depends=()))])
    assert system.run_captured(["apt-get", "-y", "install", "/app.deb"])[0] == 0
    t0 = time.monotonic()
    found = postroj.run_unit_probe(system, postroj.Probe(ProbeKind.UNIT, "app.service"), 5, settle=0.4)
    assert found.status == Status.PASS and time.monotonic() - t0 >= 0.3
    looked = [a for a in system.argvs if a[:2] == ["systemctl", "show"]]
    assert len(looked) == 2, looked
    system.unit_since["app.service"] -= 10  # up for long: nothing to wait for
    t0 = time.monotonic()
    assert postroj.run_unit_probe(system, postroj.Probe(ProbeKind.UNIT, "app.service"), 5, settle=5).passed
    assert time.monotonic() - t0 < 1


def test_a_unit_that_crashes_and_is_restarted_fails_though_it_reads_active():
    _, results = life(dataclasses.replace(APP, crashes=True))
    for stage in ("installed", "upgraded", "rebooted"):
        unit = result(results, "%s: unit app.service" % stage)
        assert unit.status == Status.FAIL and re.match(r"unit app.service restarts \(\d+ times? in \d+ s\)",
                                                       unit.reason), unit.reason
        assert "app.service" in unit.details, "the unit's journal"


def test_a_unit_started_but_not_enabled_passes_with_a_warning_without_a_reboot():
    _, results = life(dataclasses.replace(APP, enables=False), reboot=False)
    unit = result(results, "installed: unit app.service")
    assert unit.status == Status.PASS
    assert unit.warning == "unit app.service is active but not enabled: it will not start at the next boot"
    assert "\n      warning: unit app.service is active but not enabled" in postroj.format_result(unit)
    assert postroj.results_json([unit])["results"][0]["warning"] == unit.warning
    assert b"warning: unit app.service is active but not enabled" in postroj.junit_xml([unit])
    assert result(life()[1], "installed: unit app.service").warning == ""


def test_every_install_upgrade_remove_and_purge_runs_without_questions():
    system, _ = life()
    apt = [argv for argv in system.argvs if "apt-get" in argv and not {"update", "--download-only"} & set(argv)]
    assert len(apt) == 4 and all(argv[:2] == ["env", "DEBIAN_FRONTEND=noninteractive"] for argv in apt), apt


def test_every_install_and_upgrade_checks_the_version_it_left():
    system, results = life()
    asked = [argv for argv in system.argvs if argv[:2] == ["dpkg-query", "-W"]]
    assert [argv[3:] for argv in asked] == [["app"], ["app"]]


def test_an_upgrade_that_left_the_old_version_fails_naming_both():
    system = FakeSystem([("/app.deb", dataclasses.replace(APP, depends=()))])
    assert system.run_captured(["apt-get", "-y", "install", "/app.deb"])[0] == 0
    step = [postroj.ProbeResult("debian-bookworm", postroj.Probe(ProbeKind.PACKAGE, "/srv/app_2.1.deb"),
                                Status.PASS, 1.0, output="app is already the newest version (2.0).\n0 upgraded")]
    checked = postroj.version_checked(system, system.manager, step, {"app": "2.1"}, Stage.UPGRADED)
    assert [(r.status, r.reason) for r in checked] == [(Status.FAIL, "after the upgraded stage app is 2.0, not 2.1 "
                                                        "(app is already the newest version (2.0).)")]
    assert postroj.version_checked(system, system.manager, step, {"app": "2.0"}, Stage.UPGRADED) == step


MADISON = """\
   haproxy | 2.6.12-1+deb12u4 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
   haproxy | 2.6.12-1+deb12u3 | http://deb.debian.org/debian bookworm/main amd64 Packages
   haproxy | 2.6.12-1+deb12u1 | http://deb.debian.org/debian bookworm-updates/main amd64 Packages
"""


def test_upgrade_from_archive_takes_the_releases_own_version():
    image = image_info()
    assert postroj.release_versions(image, MADISON, {"haproxy": "2.6.12-1+deb12u4"}) == {
        "haproxy": "2.6.12-1+deb12u3"}
    # the release's version is the file's: the oldest older one
    assert postroj.release_versions(image, MADISON, {"haproxy": "2.6.12-1+deb12u3"}) == {
        "haproxy": "2.6.12-1+deb12u1"}
    with pytest.raises(postroj.DownloadFailed) as failed:
        postroj.release_versions(image, MADISON, {"haproxy": "2.6.12-1+deb12u1"})
    assert "carry haproxy at 2.6.12-1+deb12u4, 2.6.12-1+deb12u3, 2.6.12-1+deb12u1, none older than the " \
           "--package file's 2.6.12-1+deb12u1: nothing to upgrade from" in failed.value.message
    with pytest.raises(postroj.DownloadFailed):
        postroj.release_versions(image, MADISON, {"nginx": "1.0"})


@pytest.mark.parametrize("a, b", [("1.0~rc1", "1.0"), ("1.0", "1.0-1"), ("2.6.12-1+deb12u3", "2.6.12-1+deb12u10"),
                                  ("1:0.9", "2:0.1"), ("1.0-1ubuntu0.24.04.1", "1.0-1ubuntu1"), ("9", "10"),
                                  ("1.0a", "1.0+"), ("0~", "0")])
def test_versions_compare_as_dpkg_compares_them(a, b):
    assert postroj.compare_versions(a, b) == -1 and postroj.compare_versions(b, a) == 1
    assert postroj.compare_versions(a, a) == 0
    assert rig.sh("dpkg", "--compare-versions", a, "lt", b, check=False).returncode == 0


def test_one_transactions_time_is_its_first_packages_and_the_others_say_so():
    system = FakeSystem([("/app.deb", dataclasses.replace(APP, depends=())), ("/lib.deb", LIBAPP)])
    probes = [postroj.Probe(ProbeKind.PACKAGE, "/srv/app.deb"), postroj.Probe(ProbeKind.PACKAGE, "/srv/lib.deb")]
    found = postroj.transaction(system, system.image, probes, Stage.INSTALLED,
                                system.manager.install(["/app.deb", "/lib.deb"], cached=True), 30,
                                {"/srv/app.deb": "app 2.0", "/srv/lib.deb": "libapp1 1.4"})
    assert [r.status for r in found] == [Status.PASS, Status.PASS]
    assert found[0].duration > 0 and found[1].duration == 0.0
    assert found[1].output.startswith("(in one apt run with app 2.0, which carries its %.2f s)" % found[0].duration)


def test_skipped_results_name_the_package_by_its_name_and_version():
    _, results = life(dataclasses.replace(APP, postinst_fails=True))
    skipped = result(results, "removed: package app_2.0_all.deb")
    assert skipped.status == Status.SKIP and skipped.heading == "removed: package app 2.0"


def test_no_check_of_a_stage_whose_step_failed_passes():
    _, results = life(dataclasses.replace(APP, postinst_fails=True))
    assert {title: verdict for title, verdict in verdicts(results).items() if title.startswith("upgraded")} == {
        "upgraded: package app_2.0_all.deb": "fail", "upgraded: unit app.service": "skip",
        "upgraded: command /usr/bin/app --version": "skip"}
    assert result(results, "upgraded: command /usr/bin/app --version").reason == "not run: app_2.0_all.deb failed"


def test_each_stages_results_are_emitted_as_the_next_stage_begins():
    system = FakeSystem([("%s/packages/%s" % (postroj.GUEST_RUNTIME, APP.deb), APP)], [LIBAPP])
    probes = (postroj.Probe(ProbeKind.PACKAGE, HOST_DIR + APP.deb), postroj.Probe(ProbeKind.UNIT, "app.service"))
    plan = postroj.ProbePlan(probes, reboot=True, purge=True, timeout=0.5, settle=0.02)
    packages = postroj.Packages(("%s/packages/%s" % (postroj.GUEST_RUNTIME, APP.deb),), (), ("app",), probes[:1], {})
    blocks: List[List[postroj.ProbeResult]] = []
    results = postroj.live(system, plan, packages, threading.Event(), emit=blocks.append)
    assert [{r.stage for r in block} for block in blocks] == [{Stage.INSTALLED}, {Stage.REBOOTED}, {Stage.REMOVED}]
    emitted = [r for block in blocks for r in block]
    assert results[:len(emitted)] == emitted and {r.stage for r in results[len(emitted):]} == {Stage.PURGED}, \
        "the last stage's lines are printed by the caller, once the container is gone"


def test_a_reload_that_fails_in_the_upgrades_maintainer_script_fails_the_upgrade():
    # haproxy's postinst: the reload failed (/bin/kill missing), the old daemon kept running, apt exited 0
    _, results = life(dataclasses.replace(APP, reload_fails=True))
    upgraded = result(results, "upgraded: package app_2.0_all.deb")
    assert upgraded.status == Status.FAIL
    assert upgraded.reason == "systemd says: Reload failed for app.service. (during the upgraded stage)"
    assert "status=203/EXEC" in upgraded.details
    assert result(results, "installed: package app_1.0_all.deb").status == Status.PASS
    assert result(results, "rebooted: reboot the container").status == Status.SKIP


def test_a_unit_of_the_packages_that_fails_to_start_fails_the_install_though_apt_succeeded():
    class Tolerant(FakeSystem):
        def configure(self, package: FakePackage, upgrade: bool) -> Tuple[int, str]:
            super().configure(package, upgrade)  # a postinst that ignores what deb-systemd-invoke said
            self.dpkg[package.name] = (package, "ii")
            return 0, "Setting up %s ..." % package.name

    package = dataclasses.replace(APP, daemon="/usr/sbin/missing", depends=())
    system = Tolerant([("/app.deb", package)])
    plan = postroj.ProbePlan((postroj.Probe(ProbeKind.PACKAGE, "/srv/app.deb"),), timeout=0.5, settle=0.02)
    packages = postroj.Packages(("/app.deb",), (), ("app",), plan.probes, {})
    results = postroj.live(system, plan, packages, threading.Event())
    assert [(r.status, r.reason) for r in results] == [
        (Status.FAIL, "systemd says: Failed to start app.service. (during the installed stage)")]


# --- purge's comparison -----------------------------------------------------------------------------------------


def left_after_purge(results: Sequence[postroj.ProbeResult]) -> List[str]:
    """What purge's comparison found, a line each (without the users and groups it reports)."""
    files = result(results, "purged: leftover files")
    found = [line for line in files.output.splitlines()
             if not line.startswith(("left, as Debian's policy allows", "not compared: "))]
    assert (files.status == Status.FAIL) == bool(found), files
    if found:
        assert files.reason == "purged: %d %s from the container before the install" % (
            len(found), "path differs" if len(found) == 1 else "paths differ")
    return found


def test_purge_reports_what_the_postinst_made_and_purge_left():
    _, results = life(dataclasses.replace(APP, purge_keeps_state=True))
    # the directory is named once, not with what is in it
    assert left_after_purge(results) == ["/var/lib/app: directory left behind, holding 1 entry",
                                         "/var/lib/app/app.db: left behind"]


def test_purge_reports_what_a_package_leaves_in_etc():
    _, results = life(dataclasses.replace(APP, conffiles=(), state=("/etc/app/secret",), purge_keeps_state=True))
    assert left_after_purge(results) == ["/etc/app: directory left behind, holding 1 entry",
                                         "/etc/app/secret: left behind"]


def test_purge_reports_a_wants_link_to_a_unit_that_is_gone():
    _, results = life(dataclasses.replace(APP, purge_keeps_wants=True))
    assert left_after_purge(results) == [WANTS_DIR + "app.service: broken link to a unit that is gone"]


def test_purge_reports_an_image_file_the_package_changed():
    _, results = life(dataclasses.replace(APP, edits=("/usr/share/base-files/motd",), purge_restores_edits=False))
    assert left_after_purge(results) == ["/usr/share/base-files/motd: changed from the image: content"]


def test_purge_passes_an_image_file_put_back_as_it_was():
    system, results = life(dataclasses.replace(APP, edits=("/usr/share/base-files/motd", "/etc/default/locale")))
    assert "/usr/share/base-files/motd" in system.entries(), "the overlay still has its copy"
    assert left_after_purge(results) == []


def test_purge_reports_an_image_file_the_package_deleted():
    _, results = life(dataclasses.replace(APP, deletes=("/etc/default/locale",)))
    assert left_after_purge(results) == ["/etc/default/locale: removed from the image"]


def test_purge_reports_a_file_of_the_container_before_the_install_made_a_link():
    # systemd-resolved's way with /etc/resolv.conf, which nspawn wrote into the overlay before the install
    package = dataclasses.replace(APP, links=(("/etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf"),))
    _, results = life(package)
    assert left_after_purge(results) == ["/etc/resolv.conf: changed from the image: a link where the image has a "
                                         "file (the link is broken)"]


def test_purge_of_a_whole_listing_reports_a_file_the_package_deleted():
    system, results = life(dataclasses.replace(APP, deletes=("/usr/share/base-files/motd",)), listed_whole=True)
    assert left_after_purge(results) == ["/usr/share/base-files/motd: removed from the image"]


def test_purge_of_a_whole_listing_passes_a_well_behaved_package():
    _, results = life(listed_whole=True)
    assert left_after_purge(results) == []


def test_purge_reports_what_the_package_left_in_var_log_and_var_cache():
    # piuparts reports postgresql's /var/log/postgresql and bind9's /var/cache/bind: purge compares both trees
    kept = ("/var/log/app/app.log", "/var/cache/app/keys.bind")
    _, results = life(dataclasses.replace(APP, state=kept, purge_keeps_state=True))
    assert left_after_purge(results) == ["/var/cache/app: directory left behind, holding 1 entry",
                                         "/var/cache/app/keys.bind: left behind",
                                         "/var/log/app: directory left behind, holding 1 entry",
                                         "/var/log/app/app.log: left behind"]


def test_purge_does_not_compare_what_apt_and_dpkg_write_in_var_log_and_var_cache():
    system, results = life()
    assert "/var/log/apt/history.log" in system.entries() and "/var/cache/debconf/config.dat" in system.entries()
    assert left_after_purge(results) == []


def test_purge_says_whether_a_directory_left_behind_is_empty():
    _, results = life(dataclasses.replace(APP, dirs=("/var/lib/app-spool",)))
    assert left_after_purge(results) == ["/var/lib/app-spool: directory left behind, empty"]


def test_purge_does_not_compare_the_directories_of_dpkg_bug_316521_and_says_so():
    _, results = life(dataclasses.replace(APP, dirs=("/var/lib/apache2",)))
    assert left_after_purge(results) == []
    said = result(results, "purged: leftover files").output
    assert "not compared: /var/lib/apache2 (" in said and "#316521" in said


def test_purge_compares_what_is_in_a_directory_of_dpkg_bug_316521():
    _, results = life(dataclasses.replace(APP, state=("/var/lib/apache2/site.db",), purge_keeps_state=True))
    assert left_after_purge(results) == ["/var/lib/apache2/site.db: left behind"]


def test_purge_does_not_compare_the_mail_systems_shared_files_and_says_so():
    _, results = life(dataclasses.replace(APP, state=("/etc/aliases", "/etc/mailname"), purge_keeps_state=True))
    assert left_after_purge(results) == []
    assert "not compared: /etc/aliases, /etc/mailname (the mail system" in result(
        results, "purged: leftover files").output


def test_ignore_leaves_a_path_and_what_is_below_it_uncompared_and_says_so():
    kept = dataclasses.replace(APP, state=("/var/lib/app/app.db", "/var/lib/apprun/x"), purge_keeps_state=True)
    _, results = life(kept, ignore=("/var/lib/app",))
    assert left_after_purge(results) == ["/var/lib/apprun: directory left behind, holding 1 entry",
                                         "/var/lib/apprun/x: left behind"]
    assert "not compared: /var/lib/app, /var/lib/app/app.db (--ignore)" in result(
        results, "purged: leftover files").output


PROXY_CONF = "/" + postroj.PACKAGE_PROXY_CONF


def test_purge_reports_a_file_of_the_container_before_the_install_changed_since():
    _, results = life(dataclasses.replace(APP, edits=(PROXY_CONF,), purge_restores_edits=False))
    assert left_after_purge(results) == ["%s: changed since before the install: content" % PROXY_CONF]


def test_purge_reports_a_file_of_the_container_before_the_install_it_deleted():
    _, results = life(dataclasses.replace(APP, deletes=(PROXY_CONF,)))
    assert left_after_purge(results) == ["%s: removed (it was there before the install)" % PROXY_CONF]


def test_a_tree_made_before_the_install_and_deleted_since_is_named_once():
    class Booted(FakeSystem):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            for path in ("/var/lib/boot/a/b/c", "/var/lib/boot/a/d"):  # what the boot made
                self.write(path, "file", "boot")

    package = dataclasses.replace(APP, deletes=("/var/lib/boot",))
    old = dataclasses.replace(package, version="1.0")
    system = Booted([("/new.deb", package), ("/old.deb", old)], [LIBAPP])
    plan = postroj.ProbePlan((postroj.Probe(ProbeKind.PACKAGE, "/srv/new.deb"),), upgrade_from=("/srv/old.deb",),
                             purge=True, timeout=0.5, settle=0.02)
    packages = postroj.Packages(("/new.deb",), ("/old.deb",), ("app",), plan.probes, {})
    results = postroj.live(system, plan, packages, threading.Event())
    assert left_after_purge(results) == ["/var/lib/boot: removed (it was there before the install)"]


def test_image_difference_names_a_changed_mode_owner_target_kind_and_content(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for root in (lower, upper):
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "same").write_text("x\n")
        (root / "etc" / "mode").write_text("x\n")
        (root / "etc" / "content").write_text("x\n" if root == lower else "y\n")
        (root / "etc" / "link").symlink_to("a" if root == lower else "b")
    os.chmod(upper / "etc" / "mode", 0o600)
    os.chmod(lower / "etc" / "mode", 0o644)
    os.chown(upper / "etc" / "same", 0, 0)
    (lower / "etc" / "kind").write_text("x\n")
    os.mkfifo(upper / "etc" / "kind")
    os.chown(upper / "etc" / "content", 0, 0)
    diff = postroj.image_difference
    assert diff(lower, "/etc/same", EntryKind.FILE, upper) == ""
    assert diff(lower, "/etc/mode", EntryKind.FILE, upper) == "mode 0600, was 0644"
    assert diff(lower, "/etc/content", EntryKind.FILE, upper) == "content"
    assert diff(lower, "/etc/link", EntryKind.LINK, upper) == "target b, was a"
    assert diff(lower, "/etc/kind", EntryKind.FIFO, upper) == "a fifo where the image has a file"
    assert diff(lower, "/etc/new", EntryKind.FILE, upper) is None
    os.chown(upper / "etc" / "same", 1234, 1234, follow_symlinks=False)
    assert diff(lower, "/etc/same", EntryKind.FILE, upper) == "owner 1234:1234, was 0:0"


def test_purge_ignores_the_user_databases_and_nothing_else_of_etc():
    # adduser changed /etc/passwd and /etc/group: the users stay, as Debian's policy allows, and are reported
    system, results = life()
    assert system.entries()["/etc/passwd"] == EntryKind.FILE and system.difference("/etc/passwd", "file")
    assert left_after_purge(results) == []
    patterns = [p for _, group in postroj.PURGE_EXPECTED for p in group]
    assert not [p for p in patterns if p.rstrip("/") in ("", "/etc", "/usr", "/var", "/var/lib", "/lib", "/var/log",
                                                         "/var/cache")]


# --- dependency layers ------------------------------------------------------------------------------------------


def test_a_layer_key_is_the_image_versions_the_set_and_recommends():
    dependencies = ("libapp1=1.4", "libc6=2.36-9")
    one, other = image_info("debian-bookworm@0123456789ab"), image_info("debian-bookworm@ba9876543210")
    key = postroj.layer_key(one, dependencies, True)
    assert key == postroj.layer_key(one, tuple(reversed(dependencies)), True)
    assert key != postroj.layer_key(other, dependencies, True), "another version of the image has another key"
    assert key != postroj.layer_key(one, dependencies[:1], True)
    assert key != postroj.layer_key(one, ("libapp1=1.5", "libc6=2.36-9"), True)
    assert key != postroj.layer_key(one, dependencies, False)


# --- the package proxy ------------------------------------------------------------------------------------------


@pytest.fixture
def proxy():
    return postroj.PackageProxy([("deb.debian.org", 80), ("Security.Debian.org", 443)], "postroj-test")


def test_the_proxy_passes_the_archives_it_was_given(proxy):
    assert proxy.target(["GET", "http://deb.debian.org/debian/dists/bookworm/InRelease", "HTTP/1.1"]) == (
        "deb.debian.org", 80)
    assert proxy.target(["GET", "http://DEB.debian.org:80/debian/", "HTTP/1.1"]) == ("deb.debian.org", 80)
    assert proxy.target(["CONNECT", "security.debian.org:443", "HTTP/1.1"]) == ("security.debian.org", 443)


@pytest.mark.parametrize("words", [
    ["GET", "http://deb.debian.org:8080/debian/", "HTTP/1.1"],
    ["GET", "http://deb.debian.org:22/", "HTTP/1.1"],
    ["CONNECT", "deb.debian.org:22", "HTTP/1.1"],
    ["CONNECT", "deb.debian.org:443", "HTTP/1.1"],
    ["GET", "http://security.debian.org/", "HTTP/1.1"],
    ["CONNECT", "security.debian.org:8443", "HTTP/1.1"],
    ["GET", "http://example.org/", "HTTP/1.1"],
    ["CONNECT", "deb.debian.org:80x", "HTTP/1.1"],
])
def test_the_proxy_refuses_another_port_of_an_allowed_host(proxy, words):
    refused = proxy.target(words)
    assert isinstance(refused, str) and refused.startswith("403 Forbidden: "), refused


# --- copyup: a testbed's tree -----------------------------------------------------------------------------------


def copied_up(tmp_path: Path, *entries) -> Path:
    tarball = rig.write_tar_entries(tmp_path / "tree.tar", [rig.tar_entry(*e) for e in entries])
    target = tmp_path / "out"
    with open(tarball, "rb") as spool:
        postroj.extract_untrusted_tree(spool, target)
    return target


def test_copyup_leaves_out_an_absolute_link(tmp_path):
    out = copied_up(tmp_path, ("art", tarfile.DIRTYPE), ("art/log", tarfile.REGTYPE, "", b"ok\n"),
                    ("art/passwd", tarfile.SYMTYPE, "/etc/passwd"), ("art/latest", tarfile.SYMTYPE, "log"))
    assert (out / "art/log").read_bytes() == b"ok\n"
    assert (out / "art/latest").is_symlink() and (out / "art/latest").read_text() == "ok\n"
    assert not (out / "art/passwd").is_symlink() and not (out / "art/passwd").exists()


def test_copyup_leaves_out_a_link_that_leads_out_through_an_absolute_one(tmp_path):
    out = copied_up(tmp_path, ("art", tarfile.DIRTYPE), ("art/root", tarfile.SYMTYPE, "/"),
                    ("art/shadow", tarfile.SYMTYPE, "root/etc/shadow"))
    assert sorted(p.name for p in (out / "art").iterdir()) == []


def test_the_tree_check_names_every_link_that_leads_out():
    entries = [rig.tar_entry("a", tarfile.DIRTYPE)[0], rig.tar_entry("a/abs", tarfile.SYMTYPE, "/tmp")[0],
               rig.tar_entry("a/up", tarfile.SYMTYPE, "../../x")[0],
               rig.tar_entry("a/via", tarfile.SYMTYPE, "abs/y")[0],
               rig.tar_entry("a/in", tarfile.SYMTYPE, "../a/./in2")[0],
               rig.tar_entry("a/in2", tarfile.REGTYPE)[0]]
    assert postroj.check_untrusted_tree(iter(entries), "tree") == {"a/abs", "a/up", "a/via"}
