#!/usr/bin/env python3
"""postroj: prove that a package installs and runs on every Linux distribution it ships to.

postroj fetches operating system root filesystems (OCI registries through skopeo and umoci,
HTTP tarballs, Debian's mirror through mmdebstrap), makes them boot systemd, starts them as
ephemeral systemd-nspawn containers, runs probes inside (install a package, a unit that must be
active, a port that must answer, a command that must succeed), reports in ways CI reads, and
throws the containers away. Full virtual machines (Windows, other kernels) go through Vagrant
and are probed the same way.

Design: images are activated atomically under POSTROJ_HOME/images/NAME (a symlink to a complete
version directory); a container is the image below a throw-away overlay, booted with
`systemd-nspawn --boot`, found ready through nspawn's notify socket, entered with nsenter (or
systemd-run where the host runs machined), and killed with everything it used. Each command resolves
its input once into frozen records and hands only those down: Settings (all it takes from the
environment), Host (how this host runs containers), Source and ImageTarget (where an image comes
from), ContainerSpec (what to boot), ProbePlan (what to check). NspawnContainer is the lifetime of one
ContainerSpec; what differs by host mode is behind ContainerMode, by VM guest in GUESTS. A package's
life (live()) runs against System, a declared interface a booted container (ContainerSystem) and a VM
(VmSystem) implement, with PackageManager's subclasses for the distributions' package managers. What a
guest wrote is data: read with lstat, walked iteratively, opened only when a regular file. Every
process starts through spawn(), which reaps or kills what it started. The sections below follow the
data: settings, errors, records, catalogue, processes, host facts, images, containers, VMs, the
lifecycle engine, probes, garbage collection, reports, the autopkgtest testbed, the command line.

Host tools: systemd-nspawn (systemd-container), nsenter and setpriv (util-linux), skopeo and
umoci for registries, mmdebstrap or debootstrap for bootstrapping, vagrant for VMs.
postroj runs as root.

usage: postroj.pyz probe --image debian-bookworm --command "systemctl is-active systemd-journald"
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import fcntl
import functools
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from typing import (IO, TYPE_CHECKING, Any, Callable, Dict, Generic, Iterable, Iterator, List, NamedTuple, NoReturn,
                    Optional, Protocol, Sequence, Tuple, TypeVar)

# Start-up: socket, tarfile, urllib.request, hashlib, concurrent.futures, difflib, xml and ctypes are imported
# in the functions that use them; imported here they made every command start 21 ms (22 %) later (measured
# 2026-11-29, `postroj.pyz machines`, 40 alternating runs).
if TYPE_CHECKING:  # for type checkers only
    import socket  # noqa: F401
    import tarfile  # noqa: F401
    import urllib.request  # noqa: F401

__version__ = "0.9.0"

log = logging.getLogger("postroj")
T = TypeVar("T")


# ==============================================================================
# Settings and paths
# ==============================================================================

DEFAULT_HOME = "/var/lib/postroj"
DEFAULT_CACHE = "/var/cache/postroj"
DEFAULT_IMAGE = "debian-bookworm"

# The version of every --json output's layout; raised when a field is renamed or removed (README: JSON).
JSON_SCHEMA = 1

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNTESTED = 3  # probe: nothing failed, but an image could not be tested (not acquired, not booted...)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,47}"  # patterns are text: re compiles (and caches) them at first use
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What a child process gets of postroj's environment: the locale, proxies and certificates, systemd's and
# vagrant's own settings. Nothing else (tokens, CI secrets) reaches nspawn, skopeo, mmdebstrap or vagrant.
CHILD_ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "http_proxy",
                   "https_proxy", "ftp_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY",
                   "NO_PROXY", "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "SSH_AUTH_SOCK")

CHILD_ENV_PREFIXES = ("LC_", "SYSTEMD_", "VAGRANT_", "LIBVIRT_", "VBOX_")

# The environment of the tools that need none of the user's (tar, cp, umoci, nsenter): fixed, the same on
# every host.
PLAIN_ENV = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("LANG", "C.UTF-8"))


class Settings(NamedTuple):
    """Everything postroj takes from its environment, read once in main(): where it keeps its state
    (POSTROJ_HOME) and its downloads (POSTROJ_CACHE), the container mode a user forces (POSTROJ_MODE), the
    package mirror to bootstrap from (POSTROJ_MIRROR), skopeo's registries (CONTAINERS_REGISTRIES_CONF), the
    terminal (TERM), and what children get of the environment (an allowlist)."""

    home: Path
    cache: Path
    mode: str = ""
    mirror: str = ""
    registries_conf: str = ""
    term: str = ""
    environment: Tuple[Tuple[str, str], ...] = PLAIN_ENV

    @classmethod
    def from_env(cls, environ: Optional[Dict[str, str]] = None) -> "Settings":
        """The settings of `environ` (postroj's own environment by default)."""
        env = dict(os.environ if environ is None else environ)
        home = env.get("POSTROJ_HOME") or DEFAULT_HOME
        cache = env.get("POSTROJ_CACHE") or DEFAULT_CACHE
        allowed = tuple(sorted((k, v) for k, v in env.items()
                               if k in CHILD_ENV_NAMES or k.startswith(CHILD_ENV_PREFIXES)))
        return cls(Path(home).absolute(), Path(cache).absolute(), env.get("POSTROJ_MODE", ""),
                   env.get("POSTROJ_MIRROR", ""), env.get("CONTAINERS_REGISTRIES_CONF", ""), env.get("TERM", ""),
                   allowed)

    def child_env(self, **extra: str) -> Dict[str, str]:
        """The environment of a tool that needs the user's (nspawn, skopeo, mmdebstrap, vagrant), with `extra`."""
        env = dict(PLAIN_ENV)
        env.update(self.environment)
        env.update(extra)
        return env

    @property
    def proxies(self) -> Dict[str, str]:
        """The proxies of the environment, as urllib's ProxyHandler takes them."""
        found = {}
        for key, value in self.environment:
            if key.lower().endswith("_proxy") and value:
                found[key.lower()[: -len("_proxy")]] = value
        return found

    @property
    def home_key(self) -> str:
        """Eight hex digits that tell this POSTROJ_HOME's cgroups from another's (gc removes its own only)."""
        import hashlib

        return hashlib.sha256(str(self.home).encode()).hexdigest()[:8]

    @property
    def images(self) -> Path:
        """Activated images: NAME links to a version in .versions."""
        return self.home / "images"

    @property
    def versions(self) -> Path:
        """Complete image versions (NAME@ID/rootfs and image.json)."""
        return self.images / ".versions"

    @property
    def archives(self) -> Path:
        """OCI layouts skopeo copied, one per image."""
        return self.home / "oci"

    @property
    def locks(self) -> Path:
        """One lock per image, held while it is acquired or removed."""
        return self.home / "locks"

    @property
    def tmp(self) -> Path:
        """Acquisitions in progress (staging directories) and versions being deleted."""
        return self.home / "tmp"

    @property
    def runtime(self) -> Path:
        """Runtime state of running containers (RuntimeFiles)."""
        return self.home / "run"

    @property
    def layers(self) -> Path:
        """Dependency layers: the dependencies of probed packages installed over an image version, one per
        resolved set (KEY/tree, KEY/layer.json), shared by the probes that need the same."""
        return self.home / "layers"

    @property
    def vagrant(self) -> Path:
        """A directory per VM, with its Vagrantfile."""
        return self.home / "vagrant"

    def state_dirs(self) -> Tuple[Path, ...]:
        """The directories postroj makes in POSTROJ_HOME, which it writes and deletes trees in: never a link
        (state_dir_problem). POSTROJ_CACHE's may be links (a package cache shared by several homes)."""
        return (self.images, self.versions, self.archives, self.locks, self.tmp, self.runtime, self.layers,
                self.vagrant)

    @property
    def downloads(self) -> Path:
        """Files fetched over HTTP(S), with their validators."""
        return self.cache / "downloads"

    @property
    def packages(self) -> Path:
        """Package manager downloads and lists, one directory per OS release."""
        return self.cache / "packages"


def state_dir_problem(settings: Settings, cache: bool = True, write: bool = True) -> Optional[Tuple[str, str]]:
    """Why POSTROJ_HOME (and POSTROJ_CACHE) cannot serve, as (error, hint), or None: not a directory (a file,
    a path that cannot be made) and, when the command writes, a read-only file system or no permission."""
    for name, path in (("POSTROJ_HOME", settings.home), ("POSTROJ_CACHE", settings.cache))[: 2 if cache else 1]:
        hint = "point %s at a writable directory (default: %s)" % (
            name, DEFAULT_HOME if name == "POSTROJ_HOME" else DEFAULT_CACHE)
        existing = path
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        try:
            st = existing.stat()
        except OSError as exc:
            return "%s %s cannot be used: %s" % (name, path, exc.strerror or exc), hint
        if not stat.S_ISDIR(st.st_mode):
            return "%s %s is not a directory (%s is %s)" % (
                name, path, existing, "a file" if stat.S_ISREG(st.st_mode) else "not a directory"), hint
        if write and os.statvfs(str(existing)).f_flag & os.ST_RDONLY:
            return "%s %s is on a read-only file system" % (name, path), hint
        if write and not os.access(str(existing), os.W_OK | os.X_OK):
            return "%s %s cannot be written (%s)" % (name, path, existing), hint
    for directory in settings.state_dirs():
        if os.path.islink(directory):
            return ("%s is a link (to %s): postroj writes and deletes only in directories of its own" % (
                directory, os.readlink(directory)), "remove the link (rm %s); postroj makes the directory itself"
                    % shlex.quote(str(directory)))
    return None


def check_state_dirs(settings: Settings, cache: bool = True, write: bool = True) -> None:
    """Refuse, before anything starts, a POSTROJ_HOME (and POSTROJ_CACHE) the command cannot use (see
    state_dir_problem); commands that only read them (`list-images`, `machines`, `vm list`) pass write=False."""
    problem = state_dir_problem(settings, cache, write)
    if problem:
        die(*problem)


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    """Create a directory (and its parents, without recursion), with `mode` where postroj creates it; one
    that exists keeps its mode (postroj chmods only what it made)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for made in reversed(missing):
        try:
            os.mkdir(made, mode if made == missing[0] else 0o755)
        except FileExistsError:
            if not os.path.isdir(made):
                raise
            continue
        if made == missing[0]:
            os.chmod(made, mode)  # the umask is not ours to apply to state
    return missing[0] if missing else path


def private_dir(path: Path) -> Path:
    """Create a directory only root can enter: state that containers and other users must not see (one
    that exists, the user's own, keeps its mode)."""
    return ensure_dir(path, 0o700)


# A guest's tree is walked iteratively (no recursion limit to hit) and read with lstat only; a path longer
# than this is not read (PATH_MAX is 4096): what lies below it is reported as the directory that holds it.
DEEP_PATH = 3800
READ_MAX = 64 * 1024 * 1024  # a file postroj reads whole (a state file, a layer's JSON): at most this


def walk_tree(top: str) -> Iterator[Tuple[str, os.stat_result]]:
    """Every entry below `top` as (path, lstat result), parents before children, iteratively: links are
    listed, never followed, and directories too deep to name are listed, not entered."""
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue  # gone, or not a directory now: a guest may change its tree while it is read
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield entry.path, st
            if stat.S_ISDIR(st.st_mode) and len(entry.path) < DEEP_PATH:
                pending.append(entry.path)


def open_regular(name: str, dir_fd: Optional[int] = None) -> Optional[int]:
    """A descriptor of the regular file `name`, or None when it is anything else: never follows a link, never
    blocks on a FIFO, never opens a device for reading."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def read_regular(path: str, limit: int = READ_MAX, dir_fd: Optional[int] = None) -> bytes:
    """The bytes of a regular file (at most `limit`, else an OSError): a link, a FIFO, a device or a socket is
    never opened for reading (open_regular), so it cannot block or run without end."""
    import errno

    fd = open_regular(path, dir_fd)
    if fd is None:
        raise OSError(errno.EINVAL, "not a regular file", path)
    with open(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, "larger than %d bytes" % limit, path)
    return data


def tree_size(path: Path) -> int:
    """Bytes used by the regular files below `path` (hard links counted once)."""
    total = 0
    seen = set()
    for _, st in walk_tree(str(path)):
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def human_size(size: int) -> str:
    """`size` bytes for people: B, KiB, MiB or GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return "%.0f %s" % (value, unit) if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024
    return "%d B" % size


def now_iso() -> str:
    """The time now, in UTC, as ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def random_id(length: int) -> str:
    """`length` random hex digits, for names that must not collide."""
    return os.urandom(length).hex()[:length]


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: bool = True, waiting: str = "") -> Iterator[bool]:
    """Hold a flock on `path` for the block; yields False when `wait` is off and it is taken. When another
    process holds it, `waiting` (what is waited for) is logged before the wait."""
    ensure_dir(path.parent, 0o700)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, flags | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if waiting:
                log.info("waiting for %s", waiting)
            fcntl.flock(fd, flags)
        yield True
    finally:
        os.close(fd)


def lock_is_held(path: Path) -> bool:
    """True when some process holds a flock on `path`."""
    try:
        fd = os.open(str(path), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# ==============================================================================
# Errors
# ==============================================================================

class PostrojError(Exception):
    """An expected failure: printed as `error: ...` and `hint: ...`, no traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(PostrojError):
    """The command line asks for something that cannot be: exit code 2."""

    exit_code = EXIT_USAGE


class TimedOut(PostrojError):
    """A step did not finish within its time-out (the step's own result says so, where it has one)."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP so that every `finally` runs; exit code 128 + signal."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


def die(message: str, hint: str = "", usage: bool = False) -> NoReturn:
    """Raise the one error type postroj has: a UsageError (exit 2) with `usage`, else a PostrojError."""
    raise (UsageError if usage else PostrojError)(message, hint)


# ==============================================================================
# Data model
# ==============================================================================

class StrEnum(str, enum.Enum):
    """Kinds that are strings on the wire (JSON, state files, argv): a member is its value, also in
    str() and format() on every Python (enum.StrEnum is 3.11+)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ProbeKind(StrEnum):
    """What a probe checks: a package installs, a copy lands, a unit runs, a port answers, a command succeeds;
    in a package's life also: the container reboots, nothing of the package is left behind."""

    PACKAGE = "package"
    COPY = "copy"
    UNIT = "unit"
    NETWORK = "network"
    COMMAND = "command"
    REBOOT = "reboot"
    LEFTOVER = "leftover"
    RELEASE = "release"  # the release upgrade's own step: the system upgraded to the release and rebooted into it


class Stage(StrEnum):
    """Where in a package's life a result was taken (README: Lifecycle): `booted` where no package is probed."""

    BOOTED = "booted"
    INSTALLED = "installed"
    UPGRADED = "upgraded"
    RELEASE_UPGRADED = "release-upgraded"  # to the release the result names (ProbeResult.release)
    REBOOTED = "rebooted"
    REMOVED = "removed"
    PURGED = "purged"


class Status(StrEnum):
    """How a probe ended."""

    PASS = "pass"
    FAIL = "fail"  # the package's own failure
    SKIP = "skip"
    ERROR = "error"  # could not test: the image, its boot, a download or the host failed before the package did


class Variant(StrEnum):
    """What an image is made into beyond a booting system: `ci`, autopkgtest's setup-testbed run at acquisition
    (a testbed as Debian's CI has it)."""

    CI = "ci"


class SourceKind(StrEnum):
    """Where an image comes from."""

    REGISTRY = "registry"
    HTTP = "http"
    TARBALL = "tarball"
    DIRECTORY = "directory"
    BOOTSTRAP = "bootstrap"


class EntryKind(StrEnum):
    """What a path in a container's overlay (or a VM's listing) is: what purge compares and reports. A device,
    a FIFO or a socket where a file was is a finding of its own, never opened on the host."""

    FILE = "file"
    DIR = "dir"
    LINK = "link"
    GONE = "gone"  # a whiteout: deleted from the image
    DEVICE = "device"
    FIFO = "fifo"
    SOCKET = "socket"

    @classmethod
    def of(cls, st: os.stat_result) -> "EntryKind":
        """The kind of an lstat result (overlayfs marks a deletion with a character device 0/0)."""
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return cls.LINK
        if stat.S_ISDIR(mode):
            return cls.DIR
        if stat.S_ISREG(mode):
            return cls.FILE
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            return cls.GONE
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return cls.DEVICE
        if stat.S_ISFIFO(mode):
            return cls.FIFO
        return cls.SOCKET


# What tells a later change of a path in an overlay (fingerprint()): mode, uid, gid, size, mtime, device
Fingerprint = Tuple[int, int, int, int, int, int]


class BootstrapTool(StrEnum):
    """What builds a root file system from a Debian or Ubuntu mirror: mmdebstrap, else debootstrap."""

    MMDEBSTRAP = "mmdebstrap"
    DEBOOTSTRAP = "debootstrap"


class HostMode(StrEnum):
    """How this host runs containers (README: Container modes)."""

    NSENTER = "nsenter"  # no machined: nspawn --register=no, commands through nsenter
    MACHINED = "machined"  # machines registered with machined, commands through systemd-run


class ManagerName(StrEnum):
    """The package managers postroj drives, as images record them; what each does is in PACKAGE_MANAGERS."""

    APT = "apt"
    DNF = "dnf"
    MICRODNF = "microdnf"
    YUM = "yum"
    ZYPPER = "zypper"
    PACMAN = "pacman"


class Distribution(NamedTuple):
    """A curated operating system release: where its image comes from and how to provision it."""

    family: str
    name: str
    release: str
    version: str
    image: str
    package_manager: str
    checksum: str = ""
    aliases: Tuple[str, ...] = ()
    archived: bool = False  # moved off the mirrors to the archive (Debian's archive.debian.org)
    eol: str = ""  # the last day its publisher supports it (YYYY-MM-DD, or YYYY-MM: that month); '' when none is set

    def ended(self, today: str) -> bool:
        """True when its publisher's support ended before `today` (YYYY-MM-DD)."""
        return bool(self.eol) and self.eol < today[:len(self.eol)]

    @property
    def fullname(self) -> str:
        """NAME-RELEASE, e.g. debian-bookworm."""
        return "%s-%s" % (self.name, self.release)

    @property
    def label(self) -> str:
        """The catalogue's name for it (the full name)."""
        return self.fullname

    @property
    def package_type(self) -> str:
        """The package files its package manager installs: deb, rpm or pkg."""
        return PACKAGE_MANAGERS[ManagerName(self.package_manager)].package_type

    def can_bootstrap(self) -> bool:
        """True when postroj can build it from the publisher's package archive (mmdebstrap)."""
        return self.name in ("debian", "ubuntu")


class Keyring(NamedTuple):
    """An archive's signing keyring the host may lack, taken from the distribution's own keyring
    package and pinned by SHA-256: the package's and the keyring file's."""

    package_url: str
    package_sha256: str
    member: str
    sha256: str


class Guest(StrEnum):
    """The kind of operating system in a VM (how postroj talks to it and works in it: GUESTS)."""

    LINUX = "linux"
    WINDOWS = "windows"
    BSD = "bsd"


class Communicator(StrEnum):
    """How vagrant reaches a VM."""

    SSH = "ssh"
    WINRM = "winrm"


class Box(NamedTuple):
    """A curated Vagrant box: a full virtual machine for what containers cannot do."""

    label: str
    box: str
    guest: Guest
    communicator: Communicator
    cpus: int = 2
    memory: int = 2048


class ImageInfo(NamedTuple):
    """What an activated image is, as recorded when it was acquired."""

    name: str
    source: str
    digest: str
    os_release: str
    os_id: str
    family: str
    package_manager: str
    acquired: str
    size: int
    path: Path
    packages_downloaded: int = 0
    systemd: int = 0  # the version of its systemd (0: unknown, an image acquired before postroj read it)
    variant: str = ""  # a Variant's value ('' for none)

    @property
    def version(self) -> str:
        """The name of its version directory (NAME@ID): what dependency layers and the package lists' refreshes
        are kept for."""
        return Path(self.path).parent.name

    def as_json(self) -> Dict[str, Any]:
        """The image's record as JSON takes it (README: JSON)."""
        data = self._asdict()
        data["path"] = str(self.path)
        return data


class Probe(NamedTuple):
    """One check to run in a container: package, copy, unit, network or command."""

    kind: ProbeKind
    target: str
    expect_status: Optional[int] = None
    expect_body: str = ""
    only: str = ""  # the image a package is for (--package IMAGE=FILE); '' for every image

    @property
    def by_name(self) -> bool:
        """A package named (--install NAME[=VERSION]) for the image's own sources, not a file or a URL."""
        return self.kind == ProbeKind.PACKAGE and not self.target.startswith(("/", "http://", "https://"))

    @property
    def title(self) -> str:
        """KIND TARGET, as reports name the probe."""
        return "%s %s" % (self.kind, self.target)

    def for_image(self, name: str) -> bool:
        """True when the probe runs on the image `name` (a label or an alias of it)."""
        return not self.only or canonical_image(self.only) == canonical_image(name)


class ProbeResult(NamedTuple):
    """The outcome of one probe on one image (or VM)."""

    image: str
    probe: Probe
    status: Status
    duration: float
    reason: str = ""
    output: str = ""
    details: str = ""
    stage: Optional[Stage] = None  # where in a package's life (None: a probe outside one, a VM's)
    label: str = ""  # what people read for the target: a package's name and version
    warning: str = ""  # what a maintainer should see though the probe passed (a unit started but not enabled)
    release: str = ""  # in a release-upgraded stage: the release it upgraded to (a catalogue label)

    @property
    def stage_name(self) -> str:
        """The stage as people read it: `release-upgraded to debian-trixie` names the release."""
        return "%s to %s" % (self.stage, self.release) if self.release else str(self.stage or "")

    @property
    def title(self) -> str:
        """STAGE: KIND TARGET in a package's life, KIND TARGET otherwise (the target in full)."""
        packaged = self.stage and self.stage != Stage.BOOTED
        return "%s: %s" % (self.stage_name, self.probe.title) if packaged else self.probe.title

    @property
    def heading(self) -> str:
        """The title as people read it (the terminal, JUnit's test case, JSON's name): a package by its name and
        version rather than its path."""
        if not self.label:
            return self.title
        named = "%s %s" % (self.probe.kind, self.label)
        return "%s: %s" % (self.stage_name, named) if self.stage and self.stage != Stage.BOOTED else named

    @property
    def passed(self) -> bool:
        """True when the probe passed."""
        return self.status == Status.PASS


def nspawn_escape(path: str) -> str:
    """Colons separate paths in nspawn's --bind and --overlay: escape those inside a path."""
    return path.replace("\\", "\\\\").replace(":", "\\:")


class Bind(NamedTuple):
    """A host path bound into a container (--bind, --bind-ro)."""

    source: str
    target: str
    readonly: bool = False

    def option(self) -> str:
        """The bind as systemd-nspawn's option, colons escaped."""
        return "--%s=%s:%s" % ("bind-ro" if self.readonly else "bind", nspawn_escape(self.source),
                               nspawn_escape(self.target))


# ==============================================================================
# Distribution catalogue
# ==============================================================================

def _debian(release: str, version: str, eol: str, *aliases: str, archived: bool = False) -> Distribution:
    return Distribution("debian", "debian", release, version, "docker://docker.io/library/debian:%s-slim" % release,
                        "apt", aliases=("debian-%s" % version,) + aliases if version else aliases,
                        archived=archived, eol=eol)


def _ubuntu(release: str, version: str, eol: str) -> Distribution:
    return Distribution("debian", "ubuntu", release, version, "docker://docker.io/library/ubuntu:%s" % version,
                        "apt", aliases=("ubuntu-%s" % version,), eol=eol)


def _redhat(name: str, release: str, image: str, eol: str, *aliases: str) -> Distribution:
    return Distribution("redhat", name, release, release.replace("stream", ""), image, "dnf", aliases=aliases, eol=eol)


# The releases their publishers support on 2026-11-29, and the older ones users still test on (acquirable,
# marked as past their end of life). End of life is the end of the publisher's own free security support:
# Debian's LTS, Ubuntu's standard support (ESM is Ubuntu Pro), Fedora's EOL, the end of RHEL's maintenance
# phase for its rebuilds and UBI, SUSE's general support; the dates as announced (README: Catalogue).
DISTRIBUTIONS: Tuple[Distribution, ...] = (
    _debian("buster", "10", "2024-06-30", archived=True),
    _debian("bullseye", "11", "2026-08-31"),
    _debian("bookworm", "12", "2028-06-30"),
    _debian("trixie", "13", "2030-06-30"),
    _debian("forky", "14", "", "debian-testing"),
    _debian("sid", "", "", "debian-unstable"),
    _ubuntu("focal", "20.04", "2025-05-29"),
    _ubuntu("jammy", "22.04", "2027-06-01"),
    _ubuntu("noble", "24.04", "2029-05-31"),
    _ubuntu("questing", "25.10", "2026-07-09"),
    _ubuntu("resolute", "26.04", "2031-05-29"),
    _ubuntu("stonking", "26.10", "2027-07-15"),
    _redhat("fedora", "40", "docker://registry.fedoraproject.org/fedora:40", "2025-05-13"),
    _redhat("fedora", "41", "docker://registry.fedoraproject.org/fedora:41", "2025-12-15"),
    _redhat("fedora", "42", "docker://registry.fedoraproject.org/fedora:42", "2026-05-27"),
    _redhat("fedora", "43", "docker://registry.fedoraproject.org/fedora:43", "2026-12-09"),
    _redhat("fedora", "44", "docker://registry.fedoraproject.org/fedora:44", "2027-05-19"),
    _redhat("centos", "stream9", "docker://quay.io/centos/centos:stream9", "2027-05-31", "centos-9"),
    _redhat("centos", "stream10", "docker://quay.io/centos/centos:stream10", "2030-05-31", "centos-10"),
    _redhat("rocky", "8", "docker://docker.io/rockylinux/rockylinux:8", "2029-05-31", "rockylinux-8"),
    _redhat("rocky", "9", "docker://docker.io/rockylinux/rockylinux:9", "2032-05-31", "rockylinux-9"),
    _redhat("rocky", "10", "docker://docker.io/rockylinux/rockylinux:10", "2035-05-31", "rockylinux-10"),
    _redhat("almalinux", "8", "docker://docker.io/library/almalinux:8", "2029-05-31", "alma-8"),
    _redhat("almalinux", "9", "docker://docker.io/library/almalinux:9", "2032-05-31", "alma-9"),
    _redhat("almalinux", "10", "docker://docker.io/library/almalinux:10", "2035-05-31", "alma-10"),
    _redhat("amazonlinux", "2023", "docker://docker.io/library/amazonlinux:2023", "2029-06-30", "al2023"),
    _redhat("oraclelinux", "8", "docker://docker.io/library/oraclelinux:8", "2029-07", "oracle-8"),
    _redhat("oraclelinux", "9", "docker://docker.io/library/oraclelinux:9", "2032-06", "oracle-9"),
    _redhat("oraclelinux", "10", "docker://docker.io/library/oraclelinux:10", "", "oracle-10"),
    _redhat("ubi", "8", "docker://registry.access.redhat.com/ubi8/ubi", "2029-05-31", "rhel-ubi8", "rhel-8"),
    _redhat("ubi", "9", "docker://registry.access.redhat.com/ubi9/ubi", "2032-05-31", "rhel-ubi9", "rhel-9"),
    _redhat("ubi", "10", "docker://registry.access.redhat.com/ubi10/ubi", "2035-05-31", "rhel-ubi10", "rhel-10"),
    Distribution("suse", "opensuse-leap", "15.6", "15.6", "docker://registry.opensuse.org/opensuse/leap:15.6",
                 "zypper", aliases=("leap-15.6",), eol="2026-04-30"),
    Distribution("suse", "opensuse-leap", "16.0", "16.0", "docker://registry.opensuse.org/opensuse/leap:16.0",
                 "zypper", aliases=("opensuse-leap", "leap-16.0"), eol="2027-10-31"),
    Distribution("suse", "opensuse", "tumbleweed", "", "docker://registry.opensuse.org/opensuse/tumbleweed",
                 "zypper", aliases=("tumbleweed",)),
    Distribution("suse", "sles", "15", "15.7", "docker://registry.suse.com/suse/sle15:15.7", "zypper",
                 aliases=("sles-15.7", "sle-15"), eol="2031-07-31"),
    Distribution("suse", "sles-bci", "15", "15.7", "docker://registry.suse.com/bci/bci-base:15.7", "zypper",
                 aliases=("bci-15", "bci-base"), eol="2031-07-31"),
    Distribution("arch", "archlinux", "latest", "", "docker://docker.io/library/archlinux:latest", "pacman",
                 aliases=("archlinux", "arch")),
)

# Where bootstrapped images get their packages: the same apt sources as the publisher's own image of
# that release (the release, its -updates and its security archive), so that packages built against a
# point or security release install.
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_ARCHIVE_MIRROR = "http://archive.debian.org/debian"
DEBIAN_ARCHIVE_SECURITY_MIRROR = "http://archive.debian.org/debian-security"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
UBUNTU_SECURITY_MIRROR = "http://security.ubuntu.com/ubuntu"
COMPONENTS = {"debian": "main", "ubuntu": "main universe"}

# Debian hosts do not package Ubuntu's archive keyring: postroj fetches the keyring package from
# Ubuntu's archive and checks both pins before apt may trust it (signatures are never switched off).
UBUNTU_KEYRING = Keyring(
    UBUNTU_MIRROR + "/pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb",
    "36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8",
    "usr/share/keyrings/ubuntu-archive-keyring.gpg",
    "80a36b0a6de2f69f49d2df75ef473ccde121e9e190b9ea01d20a4f63778d5c31",
)

KEYRINGS = {"ubuntu": UBUNTU_KEYRING}


def default_mirrors(dist: Distribution) -> Tuple[str, str]:
    """The package archive and the security archive a release of the catalogue bootstraps from."""
    if dist.name == "ubuntu":
        return UBUNTU_MIRROR, UBUNTU_SECURITY_MIRROR
    if dist.archived:
        return DEBIAN_ARCHIVE_MIRROR, DEBIAN_ARCHIVE_SECURITY_MIRROR
    return DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR


def apt_sources(dist: Distribution, mirror: str = "", security: str = "") -> List[str]:
    """sources.list lines as in the publisher's image of `dist`; `mirror` and `security` replace the archives.

    Development releases (sid) have no -updates and no security archive; Debian 10 and older name
    their security suite RELEASE/updates.
    """
    default, default_security = default_mirrors(dist)
    mirror = (mirror or default).rstrip("/")
    security = (security or default_security).rstrip("/")
    components = COMPONENTS[dist.name]
    lines = ["deb %s %s %s" % (mirror, dist.release, components)]
    if dist.name == "debian" and not dist.version:
        return lines
    lines.append("deb %s %s-updates %s" % (mirror, dist.release, components))
    old = dist.name == "debian" and int(dist.version) <= 10
    lines.append("deb %s %s%s %s" % (security, dist.release, "/updates" if old else "-security", components))
    return lines


BOXES: Tuple[Box, ...] = (
    Box("windows-2019", "StefanScherer/windows_2019", Guest.WINDOWS, Communicator.WINRM, 2, 4096),
    Box("windows-2022", "StefanScherer/windows_2022", Guest.WINDOWS, Communicator.WINRM, 2, 4096),
    Box("debian-12", "debian/bookworm64", Guest.LINUX, Communicator.SSH, 2, 1024),
    Box("debian-11", "debian/bullseye64", Guest.LINUX, Communicator.SSH, 2, 1024),
    Box("ubuntu-22.04", "generic/ubuntu2204", Guest.LINUX, Communicator.SSH, 2, 2048),
    Box("ubuntu-24.04", "bento/ubuntu-24.04", Guest.LINUX, Communicator.SSH, 2, 2048),
    Box("fedora-40", "generic/fedora40", Guest.LINUX, Communicator.SSH, 2, 2048),
    Box("freebsd-14", "generic/freebsd14", Guest.BSD, Communicator.SSH, 2, 2048),
)


def today() -> str:
    """The local date, YYYY-MM-DD: what end-of-life dates are compared with."""
    return time.strftime("%Y-%m-%d")


def warn_if_ended(name: str) -> None:
    """A warning (one per image and command) when `name` is a catalogue release past its end of life."""
    dist = find_distribution(name)
    if dist and dist.ended(today()):
        log.warning("%s reached its end of life on %s: its publisher no longer fixes it (see `postroj list-images` "
                    "for the supported releases)", dist.label, dist.eol)


def include_in_all(name: str, include_eol: bool) -> bool:
    """Whether --all takes `name`: releases past their end of life only with --include-eol."""
    dist = find_distribution(name)
    return include_eol or not (dist and dist.ended(today()))


def all_labels() -> List[str]:
    """Every catalogue label and alias, in catalogue order."""
    labels = []
    for dist in DISTRIBUTIONS:
        labels.append(dist.label)
        labels.extend(dist.aliases)
    return labels


def canonical_image(name: str) -> str:
    """The catalogue label of `name` where it is a label or an alias, else `name`."""
    dist = find_distribution(name)
    return dist.label if dist else name


def find_distribution(name: str) -> Optional[Distribution]:
    """The catalogue entry whose label or alias is `name`, or None."""
    for dist in DISTRIBUTIONS:
        if name == dist.label or name in dist.aliases:
            return dist
    return None


def release_successors(dist: Distribution) -> List[Distribution]:
    """The releases of the catalogue that `dist` upgrades to along its publisher's supported paths: Debian's next
    release (stable to stable, the newest stable to testing), Ubuntu's next release (YY.04 to YY.10, YY.10 to
    YY+1.04) and, from an LTS, the next LTS (README: Release upgrades)."""
    if dist.name == "debian" and dist.version.isdigit():
        wanted = [str(int(dist.version) + 1)]
    elif dist.name == "ubuntu" and re.fullmatch(r"\d\d\.(04|10)", dist.version):
        year, month = int(dist.version[:2]), dist.version[3:]
        wanted = ["%02d.10" % year] if month == "04" else ["%02d.04" % (year + 1)]
        wanted += ["%02d.04" % (year + 2)] if month == "04" and year % 2 == 0 else []
    else:
        return []
    return [d for d in DISTRIBUTIONS if d.name == dist.name and d.version in wanted]


def check_release_upgrades(images: Sequence[Tuple[str, Optional[Distribution]]], chain: Sequence[str]) -> None:
    """Refuse, before anything boots, a --release-upgrade chain that some image of the matrix cannot take: each
    target a later release of the image's own distribution, next on its publisher's supported path (no release
    skipped, no other distribution, no downgrade). `images`: each image's name and its catalogue release
    (None: postroj cannot tell which release it is)."""
    for name, dist in images:
        if dist is None:
            die("--release-upgrade: %s is not a release of postroj's catalogue, so its upgrade path is not known"
                % name, "probe a catalogue image (see `postroj list-images --available`)", usage=True)
        current = dist
        for target in chain:
            successors = release_successors(current)
            found = find_distribution(target)
            if found is None or found not in successors:
                if found is None:
                    why = "not a release of postroj's catalogue"
                elif found.name != current.name:
                    why = "another distribution"
                elif found == current or found in DISTRIBUTIONS[:DISTRIBUTIONS.index(current)]:
                    why = "not a later release"
                else:
                    why = "it skips a release: %s supports upgrading only to the next" % current.name.capitalize()
                die("--release-upgrade %s from %s: %s" % (target, current.label, why),
                    "%s upgrades to %s" % (current.label, " or ".join(d.label for d in successors))
                    if successors else "%s has no later release in postroj's catalogue" % current.label,
                    usage=True)
            current = found


def closest(name: str, candidates: Sequence[str]) -> List[str]:
    """Up to four of `candidates` that look like `name` (typos), for a did-you-mean."""
    import difflib

    candidates = list(dict.fromkeys(candidates))  # an acquired image is also a catalogue label
    found = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    if not found:
        found = [c for c in candidates if c.split("-")[0] == name.split("-")[0]][:4]
    return found


def unknown_name_error(kind: str, name: str, candidates: Sequence[str], hint: str) -> UsageError:
    """A usage error for an unknown `kind` of name, with the closest known ones (an image once: by its label,
    not also by its alias)."""
    near = closest(name, candidates)
    if kind == "image":
        near = list(dict.fromkeys(canonical_image(n) for n in near))
    message = "unknown %s %r" % (kind, name)
    if near:
        message += "; did you mean %s?" % ", ".join(near)
    return UsageError(message, hint)


RESERVED_SUFFIXES = (".json", ".lock", ".tmp")  # RuntimeFiles' own endings


def check_name(name: str, what: str = "image name") -> str:
    """Refuse names that cannot be a directory and machine name: only [a-z0-9._-], no `..`."""
    if not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        printable = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        die("invalid %s %r" % (what, printable[:80]),
            "use lower-case letters, digits, '.', '_' and '-', at most 48 characters, starting with a letter or digit",
            usage=True)
    if name.endswith(RESERVED_SUFFIXES):  # postroj-NAME.json would be the state file of machine postroj-NAME
        die("invalid %s %r: it ends like a file of postroj's runtime state (%s)" % (
            what, name, ", ".join(RESERVED_SUFFIXES)), "choose a name without that ending", usage=True)
    return name


# ==============================================================================
# Running programs
# ==============================================================================

TOOL_PACKAGES = {
    "systemd-nspawn": "systemd-container",
    "machinectl": "systemd-container",
    "systemd-run": "systemd",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "mmdebstrap": "mmdebstrap",
    "debootstrap": "debootstrap",
    "tar": "tar",
    "unshare": "util-linux",
    "zstd": "zstd",
    "xz": "xz-utils",
    "vagrant": "vagrant",
    "dpkg-deb": "dpkg",
}


# Tools only some commands need, which `make setup-dev` installs and `make setup` does not (vagrant for `vm`)
DEV_TOOLS = ("vagrant",)


def tool_hint(tool: str) -> str:
    """How to install `tool` on Debian and Ubuntu."""
    package = TOOL_PACKAGES.get(tool, tool)
    return "install it: apt-get install %s (or `make %s`)" % (package, "setup-dev" if tool in DEV_TOOLS else "setup")


def require_tool(tool: str) -> str:
    """The path of `tool` on PATH, or an error that says which package brings it."""
    path = shutil.which(tool)
    if not path:
        die("%s not found" % tool, tool_hint(tool))
    return path


@functools.lru_cache(maxsize=None)
def setpriv_path() -> Optional[str]:
    """setpriv's path, or None where util-linux lacks it."""
    return shutil.which("setpriv")


def die_with_parent_prefix() -> List[str]:
    """`setpriv --pdeathsig SIGTERM`: children end when postroj is killed, even by SIGKILL."""
    setpriv = setpriv_path()
    return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []


@contextlib.contextmanager
def spawn(cmd: Sequence[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = None, stderr: Any = None,
          env: Optional[Dict[str, str]] = None, die_with_parent: bool = True,
          new_session: bool = False) -> Iterator[subprocess.Popen]:
    """Start one external program for the length of a block, as mkosi's spawn does: argv list, stdin from
    /dev/null, the plain environment unless `env` says otherwise, a debug line, a missing program as a clear
    error. The block ends with the program reaped; an exception kills it first (with `new_session`, its whole
    process group, which is also killed and reaped when the program has ended). Every process postroj starts
    goes through here."""
    cmd = [str(c) for c in cmd]
    log.debug("+ %s", shlex.join(cmd))
    argv = (die_with_parent_prefix() if die_with_parent else []) + cmd
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                env=dict(PLAIN_ENV) if env is None else env, start_new_session=new_session)
    except FileNotFoundError:
        die("%s not found" % cmd[0], tool_hint(os.path.basename(cmd[0])))
    released = False
    try:
        yield proc
    except GeneratorExit:  # the block was given up without ending (a container kept running): it runs on
        released = True
        raise
    except BaseException:
        kill_and_wait(proc, group=new_session)
        raise
    finally:
        if not released:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    with contextlib.suppress(OSError):
                        stream.close()
            proc.wait()
            if new_session:  # what it left running in its session (a daemon a maintainer script started) ends
                kill_and_wait(proc, group=True)


def kill_and_wait(proc: subprocess.Popen, group: bool = False) -> None:
    """SIGKILL `proc` if it still runs (with `group`, its whole process group: it was started in a session
    of its own, and postroj is the subreaper of what it leaves), and reap it."""
    lingering = False
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            lingering = True
        except (ProcessLookupError, PermissionError):  # nothing of the group is left: no need to look for it
            pass
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()
    if lingering:
        reap_group(proc.pid)


def stop_process(proc: subprocess.Popen, grace: float, signum: int = signal.SIGTERM) -> bool:
    """The one way postroj stops a program it started: `signum`, up to `grace` s to end, then SIGKILL; reaped
    either way. True when it ended within `grace`, False when it had to be killed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
    ended = wait_exit(proc, grace)
    kill_and_wait(proc)
    return ended


def become_subreaper() -> None:
    """Orphans of postroj's children become postroj's, not init's: a killed process group is then reaped by
    postroj itself (reap_group) before it exits, never left to a PID 1 that reaps late or not at all."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_group(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no process of the killed process group `pgid` is left, reaping those that became ours."""
    deadline = time.monotonic() + timeout
    while True:
        members = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path("/proc/%s/stat" % entry).read_text().rsplit(") ", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[2]) == pgid:  # state, ppid, pgrp
                    members.append((int(entry), int(fields[1])))
        for pid, ppid in members:
            if ppid == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if not members or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def tail(text: str, lines: int = 20) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.splitlines()[-lines:])


def run(cmd: Sequence[str], *, check: bool = True, capture: bool = False, stdin: Any = subprocess.DEVNULL,
        stdout: Any = None, stderr: Any = None, input: Optional[bytes] = None, env: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None, die_with_parent: bool = True, new_session: bool = False,
        what: str = "") -> subprocess.CompletedProcess:
    """Run one external program to its end: argv list, stdin from /dev/null, clear errors.

    With `capture`, stdout and stderr are kept (bytes) and stderr's tail goes into the error.
    """
    cmd = [str(c) for c in cmd]
    if capture:
        stdout = subprocess.PIPE if stdout is None else stdout
        stderr = subprocess.PIPE if stderr is None else stderr
    if input is not None:
        stdin = subprocess.PIPE
    with spawn(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env, die_with_parent=die_with_parent,
               new_session=new_session) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_and_wait(proc, group=new_session)
            die("%s did not finish within %s s" % (what or cmd[0], timeout))
    if check and proc.returncode != 0:
        tail = ""
        if capture and err:
            text = err.decode("utf-8", "replace").strip().splitlines()
            tail = "\n" + "\n".join("  " + line for line in text[-15:])
        die("%s returned non-zero exit code %d%s" % (what or shlex.join(cmd[:3]), proc.returncode, tail))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_exit(proc: subprocess.Popen, timeout: Optional[float]) -> bool:
    """Wait up to `timeout` s (None: as long as it takes) for `proc` to exit; True when it has.

    Popen.wait(timeout) polls with sleeps of up to 50 ms, which a probe cycle would feel twice (the
    probe's command, nspawn's exit); a pidfd (Linux 5.3, Python 3.9) wakes us the moment it exits.
    """
    if proc.poll() is not None:
        return True
    fd = -1
    if hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            fd = os.pidfd_open(proc.pid)  # not reaped yet (poll above): the pid is still proc's
    if fd >= 0:
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return proc.poll() is not None
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def is_root() -> bool:
    """True when postroj runs as root."""
    return os.geteuid() == 0


def require_root(action: str) -> None:
    """Refuse `action` unless postroj runs as root, saying how to run it so."""
    if not is_root():
        die("%s needs root" % action, "run it as root, for example: sudo %s" % shlex.join(sys.argv))


def process_alive(pid: int) -> bool:
    """True while a process `pid` exists (a zombie too)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def process_gone(pid: int) -> bool:
    """True when `pid` has exited: no such process, or a zombie not reaped yet (it may be reaped as we look)."""
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(") ", 1)[-1].startswith(("Z", "X"))
    except OSError:
        return True


class ProcessHandle:
    """A process named by a handle that cannot be reused (README: Security): its /proc directory, opened once
    while it is known to be the process meant. Once it ends, its PID may be another process's; the open
    directory then names nothing (ESRCH), so nothing reached through it (`path`) is another process's."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.open("/proc/%d" % pid, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.start = self.fields()[19]  # field 22 of stat: the start time, in clock ticks after boot
        except (OSError, IndexError):
            os.close(self.fd)
            raise OSError(3, "process %d ended" % pid)

    def fields(self) -> List[str]:
        """The fields of its stat after the command name (the state first)."""
        return read_regular("stat", 4096, dir_fd=self.fd).decode("ascii", "replace").rsplit(") ", 1)[-1].split()

    def alive(self) -> bool:
        """True while it runs (a zombie, and a process that is gone, no longer do)."""
        try:
            return not self.fields()[0].startswith(("Z", "X"))
        except (OSError, IndexError):
            return False

    def comm(self) -> str:
        """Its command name ('' once it has gone)."""
        try:
            return read_regular("comm", 4096, dir_fd=self.fd).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    @property
    def path(self) -> str:
        """Its /proc directory as a path other processes of postroj's may open (nsenter): through postroj's
        own descriptor, valid while the handle is open."""
        return "/proc/%d/fd/%d" % (os.getpid(), self.fd)

    def kill(self, signum: int) -> None:
        """Send `signum` to it, never to a process that took its PID: through a pidfd where Python has one
        (checked against the handle after it is opened), else only while the handle says it runs."""
        if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
            try:
                pidfd = os.pidfd_open(self.pid)
            except OSError:
                return
            try:
                if self.alive():
                    signal.pidfd_send_signal(pidfd, signum)
            except OSError:
                pass
            finally:
                os.close(pidfd)
        elif self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def close(self) -> None:
        """Let the handle go."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


# The namespaces a command enters a container by (nsenter's --all but the user namespace, which a container
# of postroj's shares with the host), and its root and working directory.
ENTERED_NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")


def nsenter_argv(proc_dir: str) -> List[str]:
    """nsenter into the namespaces, root and working directory of the process whose /proc directory is
    `proc_dir` (a ProcessHandle's path, or /proc/self/fd/N of a shell that opened it). nsenter by its path on
    the host: the command's environment (--setenv PATH=...) is the container's."""
    options = ["--%s=%s/ns/%s" % ("mount" if ns == "mnt" else ns, proc_dir, ns) for ns in ENTERED_NAMESPACES]
    return [shutil.which("nsenter", path=CONTAINER_PATH) or "nsenter", *options, "--root=%s/root" % proc_dir,
            "--wd=%s/cwd" % proc_dir]


def process_cmdline(pid: int) -> List[str]:
    """The command line of process `pid`, or [] when it is gone."""
    try:
        return Path("/proc/%d/cmdline" % pid).read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return []


def tool_version(tool: str, args: Sequence[str] = ("--version",)) -> str:
    """The first line `tool --version` prints, '' when the tool is missing."""
    path = shutil.which(tool)
    if not path:
        return ""
    try:
        proc = run([path, *args], check=False, capture=True, stderr=subprocess.STDOUT, timeout=30)
    except (OSError, PostrojError):
        return "unknown version"
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[0].strip() if lines else "unknown version"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignore_stop_signals() -> None:
    """postroj is ending for a stop signal: those that follow change nothing, for the rest of the process."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def display_thread(target: Callable[[], None]) -> threading.Thread:
    """A daemon thread that only redraws the terminal, with the stop signals blocked in it: the kernel may give
    a signal to any thread that takes it, and Python acts on it in the main thread only, when that thread
    runs; a blocked signal goes to the main thread and wakes it."""
    def body() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        target()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def stop_signals_handled_by(handler: Any) -> Iterator[Dict[int, Any]]:
    """SIGINT and SIGTERM go to `handler` in the block (the main thread only: the only one signals reach,
    and the only one that may set handlers); yields the handlers it replaced, which are back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous: Dict[int, Any] = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield previous
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM that land in the block act when it is done: a clean-up that has begun is finished,
    and the signal is not lost."""
    pending: List[int] = []
    with stop_signals_handled_by(lambda signum, frame: pending.append(signum)) as previous:
        yield
    if pending:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)  # raises KeyboardInterrupt or Terminated
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), pending[0])


# ==============================================================================
# Host facts: mounts, cgroups, how containers run
# ==============================================================================

MACHINED_PATHS = ("/usr/lib/systemd/systemd-machined", "/lib/systemd/systemd-machined")


def host_mode(settings: Settings) -> HostMode:
    """`machined` when the host runs systemd with machined, else `nsenter` (doctor's rule); POSTROJ_MODE
    forces one."""
    if settings.mode in tuple(HostMode):
        return HostMode(settings.mode)
    if (os.path.isdir("/run/systemd/system") and any(os.path.exists(p) for p in MACHINED_PATHS)
            and shutil.which("machinectl") and shutil.which("systemd-run")):
        return HostMode.MACHINED
    return HostMode.NSENTER


def cgroup_outside_namespace(text: Optional[str] = None) -> str:
    """The first line of /proc/self/cgroup (or `text`) whose path lies outside postroj's cgroup namespace, or ''.

    A process entered into a container with `nsenter --all` from outside keeps its cgroup, which the
    container's cgroup namespace shows as /../...; nspawn cannot make the container's cgroups below it.
    """
    if text is None:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return ""
    return next((line for line in text.splitlines() if line.split(":", 2)[-1].startswith("/..")), "")


def systemd_scopes_available() -> bool:
    """systemd runs here and `systemd-run --scope` can start a process in a scope of its own."""
    return os.path.isdir("/run/systemd/system") and bool(shutil.which("systemd-run"))


def nspawn_scope_prefix(line: str, scopes: bool) -> Tuple[str, ...]:
    """What systemd-nspawn is started through, given the line of postroj's cgroup outside its namespace
    (cgroup_outside_namespace) and whether systemd can start scopes here: nothing where postroj's cgroup is
    its own; a scope of its own (`systemd-run --scope`) where it lies outside and systemd runs; else a
    refusal."""
    if not line:
        return ()
    if scopes:
        log.info("postroj's cgroup (%s) lies outside its cgroup namespace: each nspawn runs in a scope of its own",
                 line)
        return ("systemd-run", "--scope", "--quiet", "--collect", "--")
    die("postroj runs in a cgroup outside its cgroup namespace (%s in /proc/self/cgroup), where systemd-nspawn "
        "cannot make a container's cgroups" % line,
        "start postroj from a process of this host's own: `nsenter --all` from outside keeps the outside cgroup; "
        "use `machinectl shell`, ssh, or `systemd-run --pipe --wait` instead")


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo: what is mounted where."""

    root: str
    point: str
    fstype: str
    options: str


def mounts() -> List[Mount]:
    """What is mounted where in postroj's mount namespace (/proc/self/mountinfo)."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, _, tail = line.partition(" - ")
            parts, rest = fields.split(), tail.split()
            if len(parts) >= 5 and len(rest) >= 3:
                found.append(Mount(parts[3], parts[4].replace("\\040", " "), rest[0], rest[2]))
    return found


def filesystem_of(path: Path) -> str:
    """The type of the file system `path` is on (the mount with the longest matching mount point)."""
    target = os.path.realpath(str(path))
    while not os.path.exists(target) and target != "/":
        target = os.path.dirname(target)
    inside = [m for m in mounts() if target == m.point or target.startswith(m.point.rstrip("/") + "/")]
    return max(inside, key=lambda m: len(m.point)).fstype if inside else ""


def overlay_upper_on_tmpfs(settings: Settings) -> bool:
    """True where POSTROJ_HOME is on overlayfs (a CI container's root): an overlay's upper directory cannot
    be there, so each container's runtime directory gets a tmpfs of its own."""
    return filesystem_of(settings.runtime) == "overlay"


def overlayfs_available() -> bool:
    """True when the kernel has overlayfs."""
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


def cgroup_layout() -> str:
    """The host's cgroup layout: unified, hybrid or legacy ('' when none is mounted)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "unified (cgroup v2)"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "hybrid (cgroup v1 + v2)"
    if os.path.isdir("/sys/fs/cgroup/systemd"):
        return "legacy (cgroup v1)"
    return ""


def unmount_below(path: Path) -> List[str]:
    """Unmount, deepest first, what is mounted at or below `path` in postroj's mount namespace (what an
    interrupted step of its own left there), each mount of a point stacked on another too; returns the mount
    points that stay mounted."""
    top = os.path.realpath(str(path)).rstrip("/") or "/"

    def below() -> List[str]:
        return [m.point for m in mounts() if m.point == top or m.point.startswith(top + "/")]

    for point in sorted(below(), key=lambda p: (p.count("/"), p), reverse=True):
        unmount(Path(point))
    return list(dict.fromkeys(below()))  # what a failed detach, or none, left: read again, not guessed


def unmount(point: Path) -> bool:
    """Detach what is mounted at `point` (umount2 with MNT_DETACH: also when it is busy); False when it stays."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(str(point)), 2) == 0:
        return True
    log.debug("cannot unmount %s: %s", point, os.strerror(ctypes.get_errno()))
    return False


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree the way `rm -rf --one-file-system` does, and more: what is mounted
    below it is unmounted first (deepest first), links are removed, never followed, and no directory on
    another file system is entered; however deep the tree. A mount that cannot be unmounted stays, with its
    content: an error."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    stuck = unmount_below(path)
    kept = _remove_below(os.path.realpath(str(path)), top.st_dev, set(stuck))
    if not kept:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)
        return
    die("did not delete %s: another file system is mounted there" % ", ".join(kept),
        "unmount it (umount %s), then run `postroj gc`" % shlex.quote(kept[0]))


def _remove_below(top: str, device: int, stuck: "set[str]") -> List[str]:
    """Empty the directory `top` without recursion: directories are emptied children first, a directory too
    deep to name is moved up to `top` (the same file system) and emptied from there; returns the mount points
    that were left, with what holds them."""
    kept: List[str] = []
    holding: "set[str]" = set()  # directories that hold a kept mount point: they stay
    stack: List[Tuple[str, bool]] = [(top, False)]
    while stack:
        directory, emptied = stack.pop()
        if emptied:
            if directory != top and directory not in holding:
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(directory)
            continue
        stack.append((directory, True))
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(entry.path)
                    continue
            except FileNotFoundError:
                continue
            if entry.path in stuck or st.st_dev != device:
                kept.append(entry.path)  # a mount point: what is below it is not ours to delete
                parent = os.path.dirname(entry.path)
                while parent.startswith(top) and parent not in holding:
                    holding.add(parent)
                    parent = os.path.dirname(parent)
                continue
            if len(entry.path) >= DEEP_PATH:
                moved = os.path.join(top, ".postroj-deep-%s" % random_id(12))
                os.rename(entry.path, moved)
                stack.insert(0, (moved, False))  # emptied after the tree it came from
                continue
            stack.append((entry.path, False))
    return kept


# --- an image's root, read from the host without following its links ---------------------


def resolve_in_root(root: Path, relative: str) -> Optional[Path]:
    """The path `relative` names inside `root`, following links as the container would: never out of `root`."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    parts.reverse()  # popped from the end: a deep path costs its depth, not its depth squared
    resolved: List[str] = []
    hops = 0
    top = str(root)
    while parts:
        part = parts.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(top, *resolved, part)
        try:
            st = os.lstat(candidate)
        except OSError:  # not in the image: nothing below it is either, and no link of it leads anywhere
            return root.joinpath(*resolved, part, *reversed(parts))
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts += reversed([p for p in target.split("/") if p not in ("", ".")])
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def read_os_release(root: Path) -> Dict[str, str]:
    """Fields of the image's os-release (in /etc, else /usr/lib), without following links out of `root`."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = resolve_in_root(root, rel)
        if path is None:
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = {}
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                fields[key.strip()] = value.strip().strip("\"'")
        return fields
    return {}


# systemd 256 refuses to boot on cgroup v1 unless told to, and 258 removed it (README: Hosts).
UNIFIED_SINCE_SYSTEMD = 256


def systemd_version(root: Path) -> int:
    """The version of the image's systemd, from the name of its shared library (libsystemd-shared-257.so,
    -256.11-1.fc41.so); 0 when there is none. Nothing of the image runs, and no link leads out of `root`."""
    places = ["usr/lib/systemd", "usr/lib64/systemd", "lib/systemd", "lib64/systemd"]
    lib = resolve_in_root(root, "usr/lib")
    with contextlib.suppress(OSError):
        if lib is not None:  # Debian's and Ubuntu's multiarch directory, usr/lib/x86_64-linux-gnu/systemd
            places += ["usr/lib/%s/systemd" % e for e in os.listdir(lib) if re.fullmatch(r"\w+-linux-gnu\w*", e)]
    found = [0]
    for place in places:
        directory = resolve_in_root(root, place)
        with contextlib.suppress(OSError):
            if directory is not None:
                found += [int(m.group(1)) for m in map(re.compile(r"libsystemd-shared-(\d+)").match,
                                                       os.listdir(directory)) if m]
    return max(found)


# --- cgroups -----------------------------------------------------------------------------


CGROUP_PREFIX = "postroj."


def cgroup_mounts() -> List[Tuple[str, str, str]]:
    """(hierarchy, mount root, mount point) of the cgroup hierarchies a container's systemd manages:
    "cgroup2", and "name=systemd" on hosts with the v1 layout."""
    found = []
    for mount in mounts():
        if mount.fstype == "cgroup2":
            found.append(("cgroup2", mount.root, mount.point))
        elif mount.fstype == "cgroup" and "name=systemd" in mount.options.split(","):
            found.append(("name=systemd", mount.root, mount.point))
    return found


def systemd_cgroup_roots() -> List[Path]:
    """Our own cgroup in each hierarchy a container's systemd manages."""
    own = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if controllers == "name=systemd" or (number == "0" and not controllers):
                own["cgroup2" if number == "0" else "name=systemd"] = path
    roots = []
    for kind, mount_root, mount_point in cgroup_mounts():
        if kind in own:
            relative = own.pop(kind)
            if mount_root != "/" and relative.startswith(mount_root):
                relative = relative[len(mount_root):]
            roots.append(Path(mount_point + "/" + relative.strip("/")))
    return roots


class Host(NamedTuple):
    """How this host runs containers, found once by the command that runs them (container_host): the mode,
    what systemd-nspawn is started through, where containers' own cgroups are made (none: they cannot be),
    and whether an overlay's upper directory needs a tmpfs of its own (POSTROJ_HOME on overlayfs)."""

    mode: HostMode
    scope: Tuple[str, ...] = ()
    cgroup_roots: Tuple[Path, ...] = ()
    upper_on_tmpfs: bool = False
    unified: bool = True  # /sys/fs/cgroup is cgroup v2; False on hosts with the v1 layout (legacy or hybrid)
    home_key: str = "00000000"  # Settings.home_key: which POSTROJ_HOME's cgroups are whose
    locks: Optional[Path] = None  # POSTROJ_HOME/locks: a run cgroup's lock is held while it is in use

    def cgroup_env(self, image: "ImageInfo", unified: bool = False) -> Dict[str, str]:
        """What systemd-nspawn needs to boot `image`: on a host with the v1 layout, a guest whose systemd
        refuses cgroup v1 gets the unified hierarchy in its container (`unified`: whatever its systemd, as a
        release upgrade may bring one that refuses v1). Older guests keep the host's layout, as they always had:
        the unified hierarchy without controllers is untested with them (README: Hosts)."""
        if self.unified:
            return {}
        version = UNIFIED_SINCE_SYSTEMD if unified else image.systemd or systemd_version(Path(image.path))
        return {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"} if version >= UNIFIED_SINCE_SYSTEMD else {}


def container_host(settings: Settings, action: str, jobs: int = 1) -> Host:
    """Root, and a cgroup systemd-nspawn can work below (refused before anything starts): the Host."""
    require_root(action)
    scope = nspawn_scope_prefix(cgroup_outside_namespace(), systemd_scopes_available())
    roots: Tuple[Path, ...] = ()
    if not scope:  # each nspawn in a scope of its own: systemd makes its cgroups
        roots = tuple(systemd_cgroup_roots())
        fixed = tuple(r for r in roots if os.access(str(r), os.W_OK))
        if fixed != roots and jobs > 1:
            log.warning("cannot make cgroups below %s: containers running at once share one cgroup tree and may "
                        "stop each other's units; run them one at a time (--jobs 1), or give postroj a writable "
                        "cgroup file system", ", ".join(str(r) for r in roots if r not in fixed))
        roots = fixed
    return Host(host_mode(settings), scope, roots, overlay_upper_on_tmpfs(settings),
                cgroup_layout().startswith("unified"), settings.home_key, settings.locks)


def make_cgroups(host: Host, name: str) -> List[Path]:
    """A cgroup of its own for one container, in each hierarchy its systemd manages.

    Without machined, nspawn --keep-unit puts every container's systemd into the caller's cgroup
    (as .../payload): two containers at once would share one cgroup tree, and each systemd would
    manage, and kill, the other's units. Empty where the host has no cgroup roots to make them in.
    """
    made: List[Path] = []
    for root in host.cgroup_roots:
        try:
            (root / name).mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning("cannot make a cgroup below %s: %s", root, exc.strerror or exc)
            continue
        made.append(root / name)
    return made


def cgroup_entry_prefix(cgroups: Sequence[Path]) -> List[str]:
    """Runs the command that follows in `cgroups` (a process joins before it executes nspawn)."""
    if not cgroups:
        return []
    script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
    return ["sh", "-c", script, "sh", *[str(c / "cgroup.procs") for c in cgroups], "--"]


def our_cgroups(cgroups: Sequence[str]) -> List[str]:
    """Those of `cgroups` (read from a state file) that are cgroups postroj made: named postroj.*, not a
    symlink, inside a cgroup hierarchy (postroj may have run in another cgroup than this one)."""
    mounts = [mount_point.rstrip("/") + "/" for _kind, _root, mount_point in cgroup_mounts()]
    return [top for top in cgroups if os.path.basename(top).startswith(CGROUP_PREFIX) and not os.path.islink(top)
            and os.path.isdir(top) and any(os.path.realpath(top).startswith(m) for m in mounts)]


def remove_cgroups(cgroups: Sequence[str], kill: bool = False) -> None:
    """Remove a container's cgroups, with what its systemd made below them (however deep); with `kill`, first
    end every process still in them (a container whose nspawn had to be killed, or was killed)."""
    for top in our_cgroups(cgroups):
        deadline = time.monotonic() + (2.0 if kill else 0.5)
        while True:
            below = [path for path, st in walk_tree(top) if stat.S_ISDIR(st.st_mode)]
            if kill:
                for directory in [top] + below:
                    with contextlib.suppress(OSError, ValueError):
                        for pid in read_regular(os.path.join(directory, "cgroup.procs")).split():
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(int(pid), signal.SIGKILL)
            for directory in reversed(below):  # children first
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            try:
                os.rmdir(top)
                break
            except OSError as exc:
                if time.monotonic() > deadline:  # EBUSY: processes still exiting
                    log.warning("cannot remove cgroup %s: %s", top, exc.strerror or exc)
                    break
            time.sleep(0.02)


# Cgroups of single nspawn runs (provisioning, package installs, bootstraps) carry their POSTROJ_HOME's key
# and are held by a lock of that home's while in use: one whose postroj was killed (its lock free) is removed,
# with what still runs in it, by the next run of that home or its gc. A PID would not do: another postroj in
# another PID namespace may have the same.
RUN_CGROUP = r"^%srun-([0-9a-f]{8})-([0-9a-f]{8})$" % re.escape(CGROUP_PREFIX)


def run_cgroup_lock(locks: Path, ident: str) -> Path:
    """The lock a run cgroup's postroj holds while it uses it."""
    return locks / ("run-%s.lock" % ident)


@contextlib.contextmanager
def own_cgroups(host: Host) -> Iterator[List[str]]:
    """A cgroup of its own for one run of a program that is not a booted container (provisioning, a package
    install, a bootstrap): the argv prefix that enters it, removed with whatever is left in it afterwards."""
    if not host.cgroup_roots or host.locks is None:
        yield []
        return
    remove_stale_run_cgroups(host.home_key, host.locks)
    ident = random_id(8)
    lock = run_cgroup_lock(host.locks, ident)
    with file_lock(lock):
        cgroups = make_cgroups(host, "%srun-%s-%s" % (CGROUP_PREFIX, host.home_key, ident))
        try:
            yield cgroup_entry_prefix(cgroups)
        finally:
            remove_cgroups([str(c) for c in cgroups], kill=True)
            with contextlib.suppress(OSError):
                lock.unlink()


def remove_stale_run_cgroups(home_key: str, locks: Path) -> List[str]:
    """Remove this POSTROJ_HOME's run cgroups whose postroj has gone (killed before it could remove them),
    ending what still runs in them (a bootstrap's mmdebstrap)."""
    removed = []
    for root in systemd_cgroup_roots():
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                match = re.match(RUN_CGROUP, entry.name)
                if match and match.group(1) == home_key:
                    lock = run_cgroup_lock(locks, match.group(2))
                    if lock_is_held(lock):
                        continue
                    remove_cgroups([str(entry)], kill=True)
                    with contextlib.suppress(OSError):
                        lock.unlink()
                    removed.append(entry.name)
    return removed


# ==============================================================================
# Runtime state of containers
# ==============================================================================

RUNTIME_SUFFIXES = (".json", ".json.tmp", ".lock")  # a machine's runtime files: NAME.json, ...


class RuntimeFiles(NamedTuple):
    """What a container keeps under POSTROJ_HOME/run: NAME.json (its state, written through NAME.json.tmp),
    NAME.lock (held while a postroj process owns the container) and the directory NAME/ (overlay, guest
    directory, console log). One place knows these names."""

    runtime: Path
    machine: str

    @property
    def state(self) -> Path:
        """NAME.json: the container's state, for machines, stop and gc."""
        return self.runtime / (self.machine + ".json")

    @property
    def lock(self) -> Path:
        """NAME.lock: held while a postroj process owns the container."""
        return self.runtime / (self.machine + ".lock")

    @property
    def directory(self) -> Path:
        """NAME/: the overlay, the guest directory and the console log."""
        return self.runtime / self.machine

    @classmethod
    def machine_of(cls, entry: str) -> str:
        """The machine a runtime entry belongs to: NAME for NAME.json, NAME.json.tmp, NAME.lock and NAME/."""
        for suffix in RUNTIME_SUFFIXES:
            if entry.endswith(suffix):
                return entry[: -len(suffix)]
        return entry

    def write_state(self, state: Dict[str, Any]) -> None:
        """Replace the state file atomically."""
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state)

    def remove(self, keep_lock: bool = False) -> None:
        """Remove what the container kept here (but its lock, with `keep_lock`)."""
        remove_tree(self.directory)
        for suffix in RUNTIME_SUFFIXES:
            if not (keep_lock and suffix == ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    (self.runtime / (self.machine + suffix)).unlink()


def machine_registered(name: str) -> bool:
    """True when machined has a machine of that name."""
    return os.path.exists("/run/systemd/machines/%s" % name)


class Machine(NamedTuple):
    """A running (or leftover) postroj container, from POSTROJ_HOME/run."""

    name: str
    image: str
    leader: int
    nspawn_pid: int
    since: str
    keep: bool
    alive: bool
    version: str
    cgroups: Tuple[str, ...] = ()


def read_machine(path: Path, lock_held: Optional[bool] = None) -> Optional[Machine]:
    """The machine of a state file NAME.json, or None when there is none. Alive: its lock is held (a postroj
    owns it) or it is kept and its nspawn runs. A state file that cannot be read is a dead machine of that
    name (gc removes it). `lock_held` says it when the caller knows."""
    name = path.name[: -len(".json")]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = {}
    try:
        nspawn_pid = int(data.get("nspawn_pid") or 0)
        leader = int(data.get("leader") or 0)
        cgroups = tuple(str(c) for c in data.get("cgroups") or ())
    except (TypeError, ValueError):
        nspawn_pid, leader, cgroups = 0, 0, ()
    held = lock_is_held(path.with_name(name + ".lock")) if lock_held is None else lock_held
    running = nspawn_pid > 0 and process_alive(nspawn_pid) and any(
        "--machine=%s" % name == arg for arg in process_cmdline(nspawn_pid))
    keep = bool(data.get("keep"))
    return Machine(name, str(data.get("image", "")), leader, nspawn_pid, str(data.get("since", "")), keep,
                   held or (keep and running), str(data.get("version", "")), cgroups)


def list_machines(settings: Settings, include_stale: bool = False) -> List[Machine]:
    """The containers of this POSTROJ_HOME that run (with `include_stale`, also those a killed postroj left)."""
    if not settings.runtime.is_dir():
        return []
    found = []
    for path in sorted(settings.runtime.glob("*.json")):
        machine = read_machine(path)
        if machine and (machine.alive or include_stale):
            found.append(machine)
    return found


def end_machine(settings: Settings, machine: Machine, keep_lock: bool = False) -> None:
    """Kill a leftover or kept container and remove its runtime state (but its lock, with `keep_lock`: the
    caller holds it and takes the name)."""
    if machine.nspawn_pid and process_alive(machine.nspawn_pid) and any(
            "--machine=%s" % machine.name == arg for arg in process_cmdline(machine.nspawn_pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(machine.nspawn_pid, signal.SIGTERM)
        for _ in range(200):
            if process_gone(machine.nspawn_pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(machine.nspawn_pid, signal.SIGKILL)
    remove_cgroups(machine.cgroups, kill=True)  # whatever of the container outlived its nspawn
    RuntimeFiles(settings.runtime, machine.name).remove(keep_lock=keep_lock)


def remove_orphan_cgroups(settings: Settings) -> List[str]:
    """Remove the cgroups of this POSTROJ_HOME's containers that no running container owns (their postroj and
    nspawn were killed), killing what is left in them."""
    live = {c for m in list_machines(settings) for c in m.cgroups}
    pattern = r"%s(%s)\.%s\.[0-9a-f]{8}" % (re.escape(CGROUP_PREFIX), NAME_PATTERN, settings.home_key)
    removed = []
    for root in systemd_cgroup_roots():
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                match = re.fullmatch(pattern, entry.name)
                if not match or str(entry) in live:
                    continue
                if lock_is_held(RuntimeFiles(settings.runtime, match.group(1)).lock):
                    continue  # a container that is booting: its state file does not name it yet
                remove_cgroups([str(entry)], kill=True)
                removed.append(entry.name)
    return removed


# ==============================================================================
# Images: sources
# ==============================================================================

TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd")
SKOPEO_TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:")


class Source(NamedTuple):
    """Where an image comes from: kind is registry, http, tarball, directory or bootstrap.

    For bootstrap, `location` and `security` are the package and security archives the user chose
    ('' for the catalogue's), and `accept_expired` lets apt take a Release file past its Valid-Until.
    """

    kind: SourceKind
    location: str
    distribution: Optional[Distribution] = None
    sha256: str = ""
    security: str = ""
    accept_expired: bool = False
    fallback: Optional["Source"] = None  # where a catalogue image comes from when its registry fails


def check_bracketed_host(netloc: str) -> None:
    """A [host] in a URL must be an IPv6 address: Python 3.11+ says so itself, 3.8 to 3.10 let `[db]` through."""
    match = re.search(r"\[([^\]]*)\]", netloc.rpartition("@")[2])
    if match:
        import ipaddress

        try:
            ipaddress.IPv6Address(match.group(1).split("%", 1)[0])
        except ValueError:
            raise ValueError("%r is not an IPv6 address" % match.group(1)) from None


def parse_url(url: str) -> urllib.parse.ParseResult:
    """urlparse, with what it cannot parse (`http://[::1`) as a usage error."""
    try:
        parsed = urllib.parse.urlparse(url)
        check_bracketed_host(parsed.netloc)
        if parsed.port == 0:  # urllib raises for a port above 65535 or not a number, but lets 0 through
            raise ValueError("Port out of range 1-65535")
    except ValueError as exc:
        die("malformed URL %r: %s" % (url, exc), "write SCHEME://HOST[:PORT]/PATH with a port from 1 to 65535",
            usage=True)
    return parsed


def derive_name(reference: str) -> str:
    """A default image name for a reference of the user's own: `docker://r/library/debian:12` → debian-12."""
    ref = reference
    for prefix in SKOPEO_TRANSPORTS:
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    ref = ref.rstrip("/")
    base = ref.rsplit("/", 1)[-1]
    for suffix in TARBALL_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    base = re.sub(r"[^a-z0-9._-]+", "-", base.lower().replace(":", "-")).strip("-._")
    return base[:48] or "image"


def check_mirror(url: str, option: str) -> str:
    """A package archive's URL as apt takes it: http://, https:// or file:///, nothing else."""
    if url and (not re.fullmatch(r"(https?://[^\s/]+|file://)/?\S*", url) or "'" in url or '"' in url):
        die("invalid %s %r" % (option, url[:80]), "give the archive's URL, e.g. %s %s" % (option, DEBIAN_MIRROR),
            usage=True)
    return url


def check_directory_source(settings: Settings, directory: str) -> None:
    """A directory to copy as an image must hold an operating system's root, and neither be the host's own
    root nor hold postroj's state or cache (the copy would copy itself, and /proc and /sys with it)."""
    real = os.path.realpath(directory)
    hint = "give the root file system of another system (a chroot, an unpacked image), not the host's"
    if real == "/":
        die("%s is the host's own root" % directory, hint, usage=True)
    for name, own in (("POSTROJ_HOME", settings.home), ("POSTROJ_CACHE", settings.cache)):
        own_real = os.path.realpath(str(own))
        if own_real == real or own_real.startswith(real.rstrip("/") + "/"):
            die("%s holds %s (%s): the copy would copy itself" % (directory, name, own), hint, usage=True)
    if real.split("/")[1] in ("proc", "sys", "dev"):
        die("%s is part of the host's %s" % (directory, "/" + real.split("/")[1]), hint, usage=True)
    if not read_os_release(Path(real)):
        die("%s has no os-release (etc/os-release or usr/lib/os-release): it is not a root file system" % directory,
            "give the directory that holds the system's /etc and /usr", usage=True)


def parse_source(reference: str, via: Optional[SourceKind] = None, mirror: str = "", sha256: str = "", *,
                 security: str = "", accept_expired: bool = False) -> Tuple[str, Source]:
    """Turn what the user typed into (image name, Source); bad references are usage errors."""
    if not reference or any(ch in reference for ch in "\n\r\0"):
        die("invalid image reference %r" % reference[:80], "give a catalogue label, docker://, http(s):// or a path",
            usage=True)
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        die("invalid --sha256 %r" % sha256[:80], "give the 64 hex digits of the tarball's SHA-256", usage=True)
    mirror = check_mirror(mirror, "--mirror")
    security = check_mirror(security, "--security-mirror")
    dist = find_distribution(reference)
    if dist:
        bootstrapped = Source(SourceKind.BOOTSTRAP, mirror, dist, security=security, accept_expired=accept_expired)
        if via == SourceKind.BOOTSTRAP:
            if not dist.can_bootstrap():
                die("%s cannot be bootstrapped" % dist.label, "only Debian and Ubuntu bootstrap from a mirror; "
                    "omit --via bootstrap", usage=True)
            return dist.label, bootstrapped
        if dist.image.startswith(("http://", "https://")):
            return dist.label, Source(SourceKind.HTTP, dist.image, dist, dist.checksum)
        return dist.label, Source(SourceKind.REGISTRY, dist.image, dist,
                                  fallback=bootstrapped if dist.can_bootstrap() else None)
    if via == SourceKind.BOOTSTRAP:
        raise unknown_name_error("image", reference, all_labels(),
                                 "--via bootstrap works for the Debian and Ubuntu labels of `postroj list-images`")
    if reference.startswith(SKOPEO_TRANSPORTS):
        body = reference.split(":", 1)[1].lstrip("/")
        if not body or any(ch.isspace() for ch in reference):
            die("malformed image reference %r" % reference, "write docker://REGISTRY/REPO:TAG", usage=True)
        return derive_name(reference), Source(SourceKind.REGISTRY, reference)
    parsed = parse_url(reference)
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc or any(ch.isspace() for ch in reference):
            die("malformed URL %r" % reference, "write http(s)://HOST/PATH/ROOTFS.tar.xz", usage=True)
        if not parsed.path.endswith(TARBALL_SUFFIXES):
            die("%s does not name a root file system tarball" % reference,
                "the URL must end in one of %s" % ", ".join(TARBALL_SUFFIXES), usage=True)
        return derive_name(parsed.path), Source(SourceKind.HTTP, reference, None, sha256.lower())
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", reference):
        die("unsupported scheme in %r" % reference,
            "use docker://, oci:, oci-archive:, docker-archive:, http://, https:// or a local path", usage=True)
    path = Path(reference)
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as exc:  # ENAMETOOLONG, for one
        die("invalid image reference %r: %s" % (reference[:80], exc.strerror),
            "give a catalogue label, docker://, http(s):// or a path", usage=True)
    if "/" in reference or exists or reference.endswith(TARBALL_SUFFIXES):
        if is_dir:
            return derive_name(str(path.absolute())), Source(SourceKind.DIRECTORY, str(path.absolute()))
        if exists and not is_file:
            die("%s is not a regular file" % reference, "give a tarball (a regular file) or a directory", usage=True)
        if is_file or reference.endswith(TARBALL_SUFFIXES):
            if not exists:
                die("%s does not exist" % reference, "check the path of the tarball", usage=True)
            return derive_name(path.name), Source(SourceKind.TARBALL, str(path.absolute()), None, sha256.lower())
        if path.is_symlink():
            die("%s is a link that leads nowhere (or a symlink loop)" % reference, "give an existing tarball or "
                "directory", usage=True)
        die("%s does not exist" % reference, "give an existing tarball or directory", usage=True)
    raise unknown_name_error("image", reference, all_labels(), "see `postroj list-images` for the catalogue")

# --- downloads ---------------------------------------------------------------------------


class Step:
    """Which step of a long job runs and for how long, on one line of the terminal; nothing when stderr
    is not a terminal or -v logs the work instead. One step shows at a time per process (the first to take
    the terminal); a download within it shows its progress on its line."""

    terminal = threading.Lock()  # held by the step that shows its line

    def __init__(self, subject: str, name: str) -> None:
        self.subject = subject
        self.name = name
        self.detail = ""
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def line(self) -> str:
        """What the terminal shows of the step now."""
        detail = "  %s" % self.detail if self.detail else ""
        return "postroj: %s: %s %.0f s%s" % (self.subject, self.name, time.monotonic() - self.started, detail)

    def tick(self) -> None:
        """The step's line, once a second until it is done (its own thread)."""
        while not self.done.wait(1.0):
            self.show()

    def show(self) -> None:
        """Write the step's line over the last one."""
        sys.stderr.write("\r\x1b[K" + self.line())
        sys.stderr.flush()

    @property
    def shown(self) -> bool:
        """True when this step has the terminal's line."""
        return self.thread is not None

    def __enter__(self) -> "Step":
        log.info("%s: %s", self.subject, self.name)
        if sys.stderr.isatty() and not log.isEnabledFor(logging.INFO) and Step.terminal.acquire(blocking=False):
            self.show()
            self.thread = display_thread(self.tick)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.thread:
            return
        self.done.set()
        self.thread.join()
        failed = " (failed)" if exc[0] else ""
        sys.stderr.write("\r\x1b[Kpostroj: %s: %s %.1f s%s\n" % (self.subject, self.name,
                                                                time.monotonic() - self.started, failed))
        sys.stderr.flush()
        Step.terminal.release()


class Progress:
    """A download's progress on stderr, only when stderr is a terminal: on its step's line, when it shows one."""

    def __init__(self, label: str, total: int, step: Optional[Step] = None) -> None:
        self.label = label
        self.total = total
        self.step = step if step and step.shown else None
        self.enabled = sys.stderr.isatty() and not self.step and not (step and not step.shown)
        self.last = 0.0

    def update(self, done: int) -> None:
        """`done` bytes of `total` are there."""
        share = " %3d%%" % (100 * done // self.total) if self.total else ""
        if self.step:
            self.step.detail = "%s: %s%s" % (self.label, human_size(done), share)
        if not self.enabled or time.monotonic() - self.last < 0.2:
            return
        self.last = time.monotonic()
        sys.stderr.write("\r%s: %s%s " % (self.label, human_size(done), share))
        sys.stderr.flush()

    def close(self) -> None:
        """The download is over: its line ends (or its step's detail goes)."""
        if self.step:
            self.step.detail = ""
        if self.enabled:
            sys.stderr.write("\n")


def url_opener(proxies: Optional[Dict[str, str]] = None) -> "urllib.request.OpenerDirector":
    """urllib through `proxies` (Settings.proxies; none by default); HTTPS certificates are verified by the
    default context."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies or {}))


def read_json(path: Path) -> Dict[str, Any]:
    """The JSON object in `path`, or {} when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def download(url: str, dest_dir: Path, *, timeout: float = 60, proxies: Optional[Dict[str, str]] = None,
             step: Optional["Step"] = None) -> Path:
    """Fetch `url` into `dest_dir`: resumed when a partial file is there, not fetched again when unchanged.

    The validators (ETag, Last-Modified) of the complete file and of the partial one are kept apart,
    so an interrupted update is never taken for the current file.
    """
    import hashlib
    import http.client
    import urllib.error
    import urllib.request

    private_dir(dest_dir.parent)
    private_dir(dest_dir)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(parse_url(url).path)) or "download"
    target = dest_dir / ("%s-%s" % (key, base))
    partial = target.with_name(target.name + ".part")
    target_meta = target.with_name(target.name + ".json")
    partial_meta = partial.with_name(partial.name + ".json")
    headers = {"User-Agent": "postroj/%s" % __version__}
    offset = partial.stat().st_size if partial.exists() else 0
    if offset:
        headers["Range"] = "bytes=%d-" % offset
        validator = read_json(partial_meta).get("etag") or read_json(partial_meta).get("last_modified")
        if validator:
            headers["If-Range"] = validator
    elif target.exists():
        meta = read_json(target_meta)
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    try:
        response = url_opener(proxies).open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 304 and target.exists():
            log.info("%s has not changed, using %s", url, target)
            return target
        if exc.code == 416 and offset:
            partial.unlink()
            return download(url, dest_dir, timeout=timeout, proxies=proxies, step=step)
        die("downloading %s failed: HTTP %d %s" % (url, exc.code, exc.reason), "check the URL")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        die("downloading %s failed: %s" % (url, reason), "check the URL and that the server can be reached")
    with response:
        if response.status != 206:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else 0
        meta = {"url": url, "etag": response.headers.get("ETag") or "",
                "last_modified": response.headers.get("Last-Modified") or ""}
        partial_meta.write_text(json.dumps(meta))
        progress = Progress(os.path.basename(target.name), total, step)
        done = offset
        try:
            with open(partial, "ab" if offset else "wb") as out:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    progress.update(done)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            die("downloading %s failed after %s: %s" % (url, human_size(done), exc),
                "run the same command again to resume")
        finally:
            progress.close()
    if total and done != total:
        die("downloading %s failed: got %d of %d bytes" % (url, done, total), "run the same command again to resume")
    os.replace(partial, target)
    os.replace(partial_meta, target_meta)
    log.info("downloaded %s (%s)", url, human_size(done))
    return target


def sha256_of(path: Path) -> str:
    """The SHA-256 of the file at `path`, in hex."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_sha256sums(text: str, filename: str) -> str:
    """The checksum of `filename` in a SHA256SUMS file, or ''."""
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]) and parts[1].lstrip("*./") == filename:
            return parts[0].lower()
    return ""


def fetch_published_sha256(url: str, proxies: Optional[Dict[str, str]] = None) -> str:
    """The SHA-256 from a SHA256SUMS file beside `url`, or '' when there is none."""
    import urllib.error
    import urllib.request

    sums_url = urllib.parse.urljoin(url, "SHA256SUMS")
    try:
        with url_opener(proxies).open(urllib.request.Request(sums_url), timeout=30) as response:
            text = response.read(1 << 20).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        log.info("no SHA256SUMS beside %s", url)
        return ""
    return parse_sha256sums(text, os.path.basename(urllib.parse.urlparse(url).path))


def verify_sha256(path: Path, expected: str, what: str) -> str:
    """The file's SHA-256; an error when `expected` is given and differs."""
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        die("checksum mismatch for %s: expected %s, got %s" % (what, expected.lower(), actual),
            "the file is corrupt or was replaced; check the source, or give the right --sha256")
    return actual

# --- tarballs ----------------------------------------------------------------------------


@contextlib.contextmanager
def tar_stream(path: Path) -> Iterator[IO[bytes]]:
    """A readable stream of the uncompressed tar for the block, decompressing zstd with the zstd tool
    (Python's tarfile reads gzip, bzip2 and xz itself)."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"\x28\xb5\x2f\xfd":
            handle.seek(0)
            yield handle
            return
    with spawn([require_tool("zstd"), "-dc", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        yield proc.stdout


def check_tar_members(members: "Iterator[tarfile.TarInfo]", what: str) -> int:
    """Refuse entries that would land outside the root or write through a link; returns the count."""
    links = set()
    count = 0
    for member in members:
        count += 1
        name = member.name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            die("%s: entry %r would land outside the root" % (what, name), "this tarball is not a safe root file system")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                die("%s: entry %r is written through the link %r" % (what, name, "/".join(parts[:i])),
                    "this tarball is not a safe root file system")
        if member.islnk():
            target = [p for p in member.linkname.split("/") if p not in ("", ".")]
            if member.linkname.startswith("/") or ".." in target:
                die("%s: hard link %r points outside the root (%r)" % (what, name, member.linkname),
                    "this tarball is not a safe root file system")
            for i in range(1, len(target)):
                if "/".join(target[:i]) in links:
                    die("%s: hard link %r points through the link %r" % (what, name, "/".join(target[:i])),
                        "this tarball is not a safe root file system")
        if member.issym() or member.islnk():
            links.add("/".join(parts))
        if (member.ischr() or member.isblk()) and not (parts and parts[0] == "dev"):
            die("%s: device node %r outside /dev" % (what, name), "this tarball is not a safe root file system")
    return count


def leads_out(links: Dict[str, str], name: str) -> bool:
    """True when the symlink `name` of a tree (its `links`: name -> link target) leads out of the tree once
    resolved as the kernel would, through the tree's other links: absolute, up past its top with `..`, or a
    chain of more than 40 links."""
    if links[name].startswith("/"):
        return True
    resolved = name.split("/")[:-1]  # the directory that holds the link
    pending = [p for p in links[name].split("/") if p not in ("", ".")]
    hops = 1
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        candidate = "/".join(resolved + [part])
        if candidate in links:
            hops += 1
            if hops > 40 or links[candidate].startswith("/"):
                return True
            pending = [p for p in links[candidate].split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return False


def check_untrusted_tree(members: "Iterator[tarfile.TarInfo]", what: str) -> "set[str]":
    """Refuse a tree from a testbed with an entry outside it, one written through a link, a hard link out of
    it, a device or a FIFO; returns the symlinks that lead out of it once resolved through its other links
    (leads_out), which are left out (with a warning)."""
    links: Dict[str, str] = {}
    files: "set[str]" = set()
    for member in members:
        check_tar_members(iter([member]), what)  # absolute names and ..
        if "\0" in member.name or "\0" in member.linkname:
            die("%s: entry %r has a NUL in its name" % (what, member.name), "")
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        name = "/".join(parts)
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                die("%s: entry %r is written through the link %r" % (what, member.name, "/".join(parts[:i])), "")
        if member.issym():
            links[name] = member.linkname
        elif member.islnk():
            linked = "/".join(p for p in member.linkname.split("/") if p not in ("", "."))
            if linked not in files:
                die("%s: hard link %r leads to %r, which is not a file of the tree" % (what, name, member.linkname),
                    "")
            files.add(name)
        elif member.isfile():
            files.add(name)
        elif not member.isdir():
            die("%s: %r is a device or a FIFO" % (what, member.name), "")
    dropped = {name for name in links if leads_out(links, name)}
    for name in sorted(dropped):
        log.warning("%s: left out %s, a link to %s, which leads outside the tree", what, name, links[name])
    return dropped


def extract_untrusted_tree(spool: IO[bytes], target: Path) -> None:
    """Extract a tar archive a testbed sent into the host directory `target`: the whole archive is checked
    first (check_untrusted_tree), then regular files, directories and links inside the tree are written, with
    no set-id bits and no owners, never through a link. A failure leaves no `target` it made."""
    import tarfile

    what = "the testbed's tree"
    made = not os.path.lexists(str(target))
    try:
        with tarfile.open(fileobj=spool, mode="r|") as tar:
            dropped = check_untrusted_tree(iter(tar), what)
        spool.seek(0)
        ensure_dir(target)
        top = os.path.realpath(str(target))
        made_dirs = {""}  # directories this extraction made: never links (only the host writes here)
        with tarfile.open(fileobj=spool, mode="r|") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if not parts or "/".join(parts) in dropped:
                    continue
                dest = os.path.join(top, *parts)
                if "/".join(parts[:-1]) not in made_dirs and any(
                        os.path.islink(os.path.join(top, *parts[:i])) for i in range(1, len(parts))):
                    die("%s: entry %r is written through a link in %s" % (what, member.name, target), "")
                if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
                    os.unlink(dest)
                if not os.path.isdir(os.path.dirname(dest)):  # a tree without its directories' entries
                    ensure_dir(Path(os.path.dirname(dest)), 0o755)
                if member.isdir():
                    ensure_dir(Path(dest), 0o755)
                    os.chmod(dest, member.mode & 0o777 | 0o700)
                    made_dirs.add("/".join(parts))
                elif member.isfile():
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    with open(fd, "wb") as out:
                        source = tar.extractfile(member)
                        assert source is not None  # a regular file's member always has its data
                        shutil.copyfileobj(source, out)
                    os.chmod(dest, member.mode & 0o777)
                    os.utime(dest, (member.mtime, member.mtime))
                elif member.issym():
                    os.symlink(member.linkname, dest)
                elif member.islnk():
                    os.link(os.path.join(top, *[p for p in member.linkname.split("/") if p not in ("", ".")]), dest)
    except tarfile.TarError as exc:
        if made:
            remove_tree(target)
        die("%s is not a tar archive: %s" % (what, exc), "")
    except BaseException:
        if made:
            remove_tree(target)
        raise


def extract_tarball(path: Path, root: Path) -> None:
    """Check every entry of the tarball, then extract it into the empty directory `root`."""
    import tarfile

    what = path.name
    try:
        with tar_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            count = check_tar_members(iter(tar), what)
    except tarfile.TarError as exc:
        die("%s is not a tarball this postroj can read: %s" % (what, exc), "give a .tar, .tar.gz, .tar.xz or .tar.zst")
    if count == 0:
        die("%s is empty" % what, "give a tarball of a root file system")
    ensure_dir(root)
    tar_cmd = [require_tool("tar"), "--extract", "--file", str(path), "--directory", str(root), "--numeric-owner",
               "--same-permissions", "--xattrs", "--xattrs-include=*", "--no-overwrite-dir"]
    run(tar_cmd, capture=True, what="extracting %s" % what)

# --- registries --------------------------------------------------------------------------


def copy_from_registry(settings: Settings, reference: str, layout: Path, tag: str) -> str:
    """`skopeo copy` the image into an OCI layout, with the registries configuration postroj hands over
    (CONTAINERS_REGISTRIES_CONF); returns the manifest digest."""
    ensure_dir(layout.parent, 0o700)
    cmd = [require_tool("skopeo")]
    if settings.registries_conf:
        cmd.append("--registries-conf=%s" % settings.registries_conf)
    run(cmd + ["copy", "--quiet", reference, "oci:%s:%s" % (layout, tag)], capture=True,
        what="skopeo copy %s" % reference, env=settings.child_env())
    index = json.loads((layout / "index.json").read_text())
    for manifest in index.get("manifests", []):
        if manifest.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return manifest.get("digest", "")
    return ""


# What skopeo says when a registry cannot be reached or does not have the image.
REGISTRY_UNAVAILABLE = (
    r"(?i)connection refused|no such host|network is unreachable|no route to host|i/o timeout|timeout|"
    r"server misbehaving|TLS handshake|manifest unknown|name unknown|not found|requested access to the resource is "
    r"denied|unauthorized|toomanyrequests")


def registry_unavailable(message: str) -> bool:
    """True when `skopeo copy` failed because the registry is out of reach or lacks the image."""
    first = message.split("\n", 1)[0]
    return first.startswith("skopeo copy") and bool(re.search(REGISTRY_UNAVAILABLE, message)) and \
        "no space left on device" not in message.lower()


def unpack_layout(layout: Path, tag: str, rootfs: Path) -> None:
    """Unpack the image's layers into `rootfs` with `umoci raw unpack`.

    Not `umoci unpack`: that also writes an mtree manifest, hashing every file it just wrote, which
    nothing here reads and which takes longer than the unpacking itself.
    """
    remove_tree(rootfs)
    run([require_tool("umoci"), "raw", "unpack", "--image", "%s:%s" % (layout, tag), str(rootfs)], capture=True,
        what="umoci raw unpack")

# --- bootstrapping -----------------------------------------------------------------------


ACCEPT_EXPIRED_OPTION = 'Acquire::Check-Valid-Until "false";'
TRUSTED_PARTS = "/etc/apt/trusted.gpg.d"


def fetch_keyring(settings: Settings, pin: Keyring) -> Path:
    """The pinned keyring, taken from its package once and kept in POSTROJ_CACHE/keyrings."""
    import tarfile

    target = settings.cache / "keyrings" / pin.sha256[:16] / os.path.basename(pin.member)
    if target.is_file() and sha256_of(target) == pin.sha256:
        return target
    package = download(pin.package_url, settings.downloads, proxies=settings.proxies)
    verify_sha256(package, pin.package_sha256, pin.package_url)
    data = None
    try:
        with spawn([require_tool("dpkg-deb"), "--fsys-tarfile", str(package)], stdout=subprocess.PIPE,
                   stderr=subprocess.DEVNULL) as proc, tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.name.lstrip("./") == pin.member:
                    handle = tar.extractfile(member)
                    data = handle.read() if handle else None
                    break
    except tarfile.TarError as exc:
        die("%s is not a package dpkg-deb can read: %s" % (package.name, exc), "remove it and try again")
    if data is None:
        die("%s has no %s" % (pin.package_url, pin.member), "the keyring package changed; update postroj")
    import hashlib

    actual = hashlib.sha256(data).hexdigest()
    if actual != pin.sha256:
        die("checksum mismatch for %s from %s: expected %s, got %s" % (pin.member, pin.package_url, pin.sha256,
                                                                       actual),
            "the keyring is not the one postroj pins; do not trust this archive until that is explained")
    private_dir(target.parent.parent)
    private_dir(target.parent)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def bootstrap_argv(tool: BootstrapTool, dist: Distribution, rootfs: Path, sources: Sequence[str], cache: Path,
                   keyring: Optional[Path] = None, accept_expired: bool = False) -> List[str]:
    """The mmdebstrap (or debootstrap) command that builds a minbase root file system with systemd."""
    # Ubuntu's apt is not part of its minbase (Priority: important); the publisher's image has it
    include = "--include=%s" % ",".join(("apt",) + Apt.systemd)
    if tool == BootstrapTool.DEBOOTSTRAP:  # one mirror only: the other sources are written after it
        cmd = ["debootstrap", "--variant=minbase", include, "--cache-dir=%s" % cache]
        if keyring:
            cmd.append("--keyring=%s" % keyring)
        return cmd + [dist.release, str(rootfs), sources[0].split()[1]]
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        include,
        "--skip=download/empty",
        "--skip=essential/unlink",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
        "--setup-hook=sync-in %s /var/cache/apt/archives/" % cache,
        "--customize-hook=sync-out /var/cache/apt/archives %s" % cache,
    ]
    if keyring:
        # apt in the finished image needs the keyring as much as mmdebstrap does
        cmd += ["--keyring=%s" % keyring.parent,
                "--setup-hook=mkdir -p \"$1\"%s" % TRUSTED_PARTS,
                "--setup-hook=copy-in %s %s/" % (keyring, TRUSTED_PARTS)]
    if accept_expired:
        cmd.append("--aptopt=%s" % ACCEPT_EXPIRED_OPTION)  # kept in the image's apt.conf.d
    return cmd + [dist.release, str(rootfs), *sources]


def package_manager_errors(text: str, lines: int = 15) -> List[str]:
    """What a package manager said was wrong (its E:, W:, Err: lines), else the tail of its output."""
    said = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in said if line.startswith(("E:", "W:", "Err:", "Error:"))]
    return (errors or said)[-lines:]


def bootstrap(settings: Settings, host: Host, source: Source, rootfs: Path) -> str:
    """Build a root file system with systemd from the package archives; returns where it came from."""
    dist = source.distribution
    assert dist is not None
    sources = apt_sources(dist, source.location, source.security)
    mirror = sources[0].split()[1]
    cache = ensure_dir(settings.packages / ("%s-%s" % (dist.name, dist.release)))
    pin = KEYRINGS.get(dist.name)
    keyring = fetch_keyring(settings, pin) if pin else None
    # archived releases get no updates: their Release files may be past Valid-Until for good
    accept_expired = source.accept_expired or (dist.archived and not source.location)
    found = [t for t in BootstrapTool if shutil.which(t.value)]
    if not found:
        die("neither mmdebstrap nor debootstrap found", tool_hint("mmdebstrap"))
    tool = found[0]
    log.info("bootstrapping %s from:\n  %s", dist.label, "\n  ".join(sources))
    # In a mount namespace of its own: what it mounts in the new root (proc, sys, a bind of the host's
    # /dev/shm) goes with its last process, however it ends; in a cgroup and a session of its own, so that
    # an interrupted bootstrap ends with every process it started.
    private_mounts = [require_tool("unshare"), "--mount", "--propagation", "private", "--"]
    become_subreaper()
    # mmdebstrap leaves gpg home directories in TMPDIR: one of postroj's own, beside the root file system in the
    # image's staging directory (which the image's lock keeps from gc), removed after it
    scratch = private_dir(rootfs.parent / "bootstrap-tmp")
    try:
        with own_cgroups(host) as entry:
            proc = run(entry + private_mounts + bootstrap_argv(tool, dist, rootfs, sources, cache, keyring,
                                                               accept_expired),
                       check=False, capture=True, stderr=subprocess.STDOUT, new_session=True,
                       env=settings.child_env(TMPDIR=str(scratch)))
    finally:
        remove_tree(scratch)
    if proc.returncode != 0:
        text = proc.stdout.decode("utf-8", "replace")
        hint = "check that this host reaches %s, or give another archive with --mirror" % mirror
        if re.search(r"is (expired|not valid yet)", text):
            hint = ("the archive serves a Release file past its Valid-Until date (a dated snapshot, or a mirror that "
                    "stopped syncing): accept it with --accept-expired, or give another --mirror")
        die("bootstrapping %s from %s failed with exit code %d:\n%s" % (
            dist.label, mirror, proc.returncode, "\n".join("  " + line for line in package_manager_errors(text))),
            hint)
    if tool == BootstrapTool.DEBOOTSTRAP:
        (rootfs / "etc" / "apt" / "sources.list").write_text("\n".join(sources) + "\n")
        if keyring:
            shutil.copyfile(keyring, rootfs / TRUSTED_PARTS.lstrip("/") / keyring.name)
        if accept_expired:
            (rootfs / "etc" / "apt" / "apt.conf.d" / "99postroj").write_text(ACCEPT_EXPIRED_OPTION + "\n")
    return "bootstrap:%s %s" % (dist.release, mirror)


# ==============================================================================
# Images: provisioning
# ==============================================================================

# Units that stall or fail a container's boot, found by booting each family.
MASKED_UNITS = {
    "all": ["systemd-networkd-wait-online.service", "NetworkManager-wait-online.service",
            "systemd-remount-fs.service", "systemd-firstboot.service", "getty@tty1.service",
            "console-getty.service"],
    # logind runs in Debian's and Ubuntu's containers, as on a machine: user sessions, `loginctl`, what tests
    # expect of a logind session (booted and checked on Debian 11 to 14, sid, Ubuntu 22.04 to 26.10); the
    # families that cannot be booted here keep it masked, as postroj always had it
    "debian": ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service"],
    "redhat": ["dnf-makecache.timer", "sssd.service", "auditd.service", "systemd-logind.service"],
    "suse": ["wickedd.service", "wicked.service", "systemd-logind.service"],
    "arch": ["archlinux-keyring-wkd-sync.timer", "systemd-logind.service"],
}

OS_FAMILIES = {
    "debian": "debian", "ubuntu": "debian", "fedora": "redhat", "centos": "redhat", "rhel": "redhat",
    "rocky": "redhat", "almalinux": "redhat", "amzn": "redhat", "ol": "redhat", "opensuse": "suse",
    "suse": "suse", "sles": "suse", "sle": "suse", "arch": "arch",
}


def os_family(fields: Dict[str, str]) -> str:
    """The family (debian, redhat, suse, arch) of an os-release, by its ID and ID_LIKE."""
    for ident in [fields.get("ID", "")] + fields.get("ID_LIKE", "").split():
        for prefix, family in OS_FAMILIES.items():
            if ident == prefix or ident.startswith(prefix + "-"):
                return family
    return ""


def detect_package_manager(root: Path) -> str:
    """The package manager the root file system has (apt, dnf, microdnf, yum, zypper, pacman), or ''."""
    for name, manager in PACKAGE_MANAGERS.items():
        for bindir in ("usr/bin", "bin", "usr/sbin"):
            if (root / bindir / manager.command).exists():
                return str(name)
    return ""


def has_systemd(root: Path) -> bool:
    """True when the root file system has systemd."""
    return any((root / p).exists() for p in ("usr/lib/systemd/systemd", "lib/systemd/systemd"))


def nspawn_run_argv(host: Host, root: Path, binds: Sequence[Tuple[str, str]] = (), network: bool = True,
                    upper: Optional[Path] = None) -> List[str]:
    """systemd-nspawn running one command in `root`, not booted (provisioning, package installs).

    With `upper`, changes go to that overlay directory instead of `root`.
    """
    cmd = [
        *host.scope,
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--directory=%s" % root,
        "--resolv-conf=replace-host" if network else "--private-network",
        "--timezone=off",
        "--link-journal=no",
        "--setenv=DEBIAN_FRONTEND=noninteractive",
        "--setenv=PATH=%s" % CONTAINER_PATH,
    ]
    if upper:
        cmd.append("--overlay=%s:%s:/" % (nspawn_escape(str(root)), nspawn_escape(str(upper))))
    cmd += [Bind(src, dst).option() for src, dst in binds]
    return cmd


PACKAGE_CACHE_DIR = "/var/cache/postroj-packages"

# apt keeps its package lists and downloads in postroj's cache, shared by the images of one release:
# a warm cache makes `apt-get update` a few conditional requests and the install a download of nothing.
APT_OPTIONS = (
    "-o", "Dir::Cache::Archives=%s/" % PACKAGE_CACHE_DIR,
    "-o", "Dir::State::Lists=%s/lists/" % PACKAGE_CACHE_DIR,
    "-o", "APT::Keep-Downloaded-Packages=true",
    "-o", "APT::Sandbox::User=root",
    "-o", "Dpkg::Use-Pty=0",  # no progress lines ("Reading database ... 45%") in what a failure shows
    # the images' deb-src entries are for tests by source package name: postroj's own apt never fetches them
    "-o", "Acquire::IndexTargets::deb-src::Sources::DefaultEnabled=false",
    # dpkg's fsync after every file buys nothing here: a half-built image is thrown away, a finished one
    # synced once before it is activated, and a probe's container is thrown away
    "-o", "Dpkg::Options::=--force-unsafe-io",
)
# In a booted container the shared cache is read, never written (everything was downloaded before the
# boot): apt's locks on it would make the containers of one release wait for each other.
APT_FROM_CACHE = ("-o", "Debug::NoLocking=1")
# apt as CI runs it: debconf asks nothing and takes each question's default (a package's own prompts, e.g.
# postgresql's "Remove PostgreSQL directories when package is purged?", get their defaults)
APT_NONINTERACTIVE = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get")


def install_command(manager: str, packages: Sequence[str], recommends: bool = False) -> List[str]:
    """The command that installs `packages` (names or paths) with their dependencies (by default without
    recommendations: provisioning installs what makes an image boot, no more)."""
    return package_manager(manager).install(packages, recommends=recommends)


def package_transaction(manager: str, packages: Sequence[str], refresh: bool) -> List[str]:
    """One command that installs `packages`, refreshing the package indexes first when asked."""
    return then_exec(package_manager(manager).refresh() if refresh else [], install_command(manager, packages))


def then_exec(first: Sequence[str], then: Sequence[str]) -> List[str]:
    """One command that runs `first` and, when it succeeded, `then`: one container run instead of two (the
    script is postroj's own, the arguments stay arguments)."""
    if not first:
        return list(then)
    return ["sh", "-c", '%s && exec "$@"' % shlex.join(first), "sh", *then]


SOURCES_MAX = 1 << 20  # an apt sources file postroj reads (a running testbed's are the guest's): at most this


def apt_source_files(root: Path) -> List[str]:
    """The apt sources files of `root` (relative paths), in apt's order: sources.list, then sources.list.d's
    one-line .list and deb822 .sources files (the first 256 of those: a guest's directory is data)."""
    directory = resolve_in_root(root, "etc/apt/sources.list.d")
    names: List[str] = []
    try:
        if directory is not None and directory.is_dir():
            with os.scandir(str(directory)) as entries:  # a directory of a million names: 4096 read, 256 kept
                names = [e.name for _, e in zip(range(4096), entries) if e.name.endswith((".list", ".sources"))]
    except OSError:
        pass
    return ["etc/apt/sources.list"] + ["etc/apt/sources.list.d/" + n for n in sorted(names)[:256]]


def read_apt_sources(root: Path) -> List[Tuple[str, str]]:
    """The image's apt sources as (URI, suite), in apt's order: sources.list, then sources.list.d's one-line
    .list and deb822 .sources files, every suite of a stanza, none of a stanza with `Enabled: no` (read inside
    `root`: links never lead out of it)."""
    found: List[Tuple[str, str]] = []
    for relative in apt_source_files(root):
        path = resolve_in_root(root, relative)
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if path is None:
                continue
            stanza: Dict[str, List[str]] = {}
            for line in read_regular(str(path), SOURCES_MAX).decode("utf-8").splitlines() + [""]:
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()  # deb [signed-by=...] URL SUITE
                if len(words) >= 3 and words[0] == "deb":
                    found.append((words[1], words[2]))
                elif words and words[0].endswith(":"):  # deb822: Types:, URIs:, Suites: ...
                    stanza[words[0]] = words[1:]
                elif not line.strip():  # a deb822 stanza ends
                    if "deb" in stanza.get("Types:", []) and stanza.get("Enabled:", ["yes"]) != ["no"]:
                        found += [(uri, suite) for uri in stanza.get("URIs:", []) for suite in stanza.get("Suites:", [])]
                    stanza = {}
    return found


def with_source_packages(text: str, deb822: bool) -> str:
    """An apt sources file with source packages beside the binary ones, as the distributions' own installers
    and autopkgtest's images have them: a `deb-src` line after each `deb` line that lacks one (one-line
    format), `Types: deb deb-src` (deb822). Comments, options and everything else stay as they were."""
    lines = text.splitlines()
    out: List[str] = []
    if deb822:
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip().lower() == "types" and "deb" in value.split() and "deb-src" not in value.split():
                line = "%s: %s deb-src" % (key, value.strip())
            out.append(line)
    else:
        present = {line.split("#", 1)[0].split(None, 1)[1].strip() for line in lines
                   if line.split("#", 1)[0].split()[:1] == ["deb-src"] and len(line.split("#", 1)[0].split()) > 1}
        for line in lines:
            out.append(line)
            words = line.split("#", 1)[0].split(None, 1)
            if len(words) == 2 and words[0] == "deb" and words[1].strip() not in present:
                out.append("deb-src " + words[1].strip())
    return "\n".join(out) + ("\n" if text.endswith("\n") or not text else "")


def add_source_packages(root: Path) -> None:
    """deb-src entries for the image's own apt sources (with_source_packages), in each sources file that is a
    regular file inside `root`: `apt-get source` works in its containers, as autopkgtest's tests by source
    package name need. The Sources indices are fetched when apt updates in a testbed, never by postroj's own
    apt (APT_OPTIONS), so a probe pays nothing for them."""
    for relative in apt_source_files(root):
        path = resolve_in_root(root, relative)
        if path is None:
            continue
        try:
            text = read_regular(str(path), SOURCES_MAX).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # not a regular file, or not text: left as it is
        changed = with_source_packages(text, relative.endswith(".sources"))
        if changed != text:
            fd = os.open(str(path), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "w", encoding="utf-8") as handle:
                handle.write(changed)


def apt_suite(root: Path) -> str:
    """The suite of the image's first apt source, or ''."""
    sources = read_apt_sources(root)
    return sources[0][1] if sources else ""


def url_endpoint(url: str) -> Optional[Tuple[str, int]]:
    """(host, port) of an http or https URL; None for anything else."""
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            return parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)
    return None


def archive_endpoints(root: Path) -> Tuple[Tuple[str, int], ...]:
    """(host, port) of each package archive in the image's apt sources: what the package proxy lets through."""
    endpoints = [url_endpoint(uri) for uri, _suite in read_apt_sources(root)]
    return tuple(dict.fromkeys(e for e in endpoints if e))


def public_address(host: str, port: int) -> Optional[str]:
    """The address to connect to for `host`, when every address it resolves to is a public one; None when
    one is the host's loopback, a private, link-local or reserved network's, or it does not resolve."""
    import ipaddress
    import socket

    try:
        found = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        if found and all(ipaddress.ip_address(str(a).split("%", 1)[0]).is_global for a in found):
            return str(found[0])
    except (OSError, ValueError, UnicodeError):
        pass
    return None


def package_cache_for(settings: Settings, root: Path) -> Path:
    """Package downloads are shared between images of one OS release: ID-VERSION_ID. Debian's testing and sid
    have no VERSION_ID and one codename (forky/sid) but different package lists: their suite tells them apart."""
    fields = read_os_release(root)
    release = fields.get("VERSION_ID") or (apt_suite(root) if fields.get("ID") == "debian" else "")
    return package_cache_named(settings, "%s-%s" % (fields.get("ID", "unknown"),
                                                    release or fields.get("VERSION_CODENAME") or "rolling"))


def package_cache_named(settings: Settings, key: str) -> Path:
    """The package cache of the release `key` (ID-VERSION_ID), made when there is none."""
    private_dir(settings.cache)
    cache = settings.packages / re.sub(r"[^A-Za-z0-9._-]", "_", key)
    for partial in (cache / "partial", cache / "lists" / "partial"):
        ensure_dir(partial)
    return cache


def list_names(cache: Path) -> List[str]:
    """The names of the package lists in a release's package cache, apt's own lock and directories aside."""
    with contextlib.suppress(OSError):
        return sorted(n for n in os.listdir(cache / "lists") if n not in ("lock", "partial", "auxfiles"))
    return []


def lists_stamp(cache: Path) -> Path:
    """Which lists each image version's last refresh left in `cache`: beside the cache, which containers write."""
    return cache.with_name(".%s.lists.json" % cache.name)


def note_refresh(cache: Path, image: ImageInfo) -> None:
    """Record the lists apt's refresh for the image's version left (the last 32 versions')."""
    stamp = lists_stamp(cache)
    refreshed = {k: v for k, v in read_json(stamp).items() if k != image.version}
    refreshed[image.version] = list_names(cache)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(dict(list(refreshed.items())[-32:])))
    os.replace(tmp, stamp)


def read_list(cache: Path, name: str) -> bytes:
    """A package list's content (not through a link: containers write the cache)."""
    with open(os.open(str(cache / "lists" / name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as handle:
        return handle.read()


def fetch_release(url: str, proxies: Dict[str, str]) -> Optional[bytes]:
    """The InRelease file at `url` (None when it cannot be had), as the host fetches it."""
    import http.client
    import urllib.request

    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
        with url_opener(proxies).open(urllib.request.Request(url, headers={"User-Agent": "postroj"}),
                                      timeout=10) as response:
            return response.read(64 << 20)
    return None


def lists_current(settings: Settings, cache: Path, image: ImageInfo) -> bool:
    """Whether the package lists in `cache` are what `apt-get update` would make of them for the image now,
    so it need not run (it verifies and rewrites every InRelease, about 0.2 s a suite): the last refresh
    for the image's version left the lists that are there (no refresh for other sources removed or added
    any since), and each suite of its sources publishes, fetched from the host now, byte for byte the
    InRelease apt verified then, valid still. Anything else (a source that is not http(s), a suite without
    InRelease, an error): False, and apt refreshes them."""
    import concurrent.futures
    import email.utils

    names = list_names(cache)
    if read_json(lists_stamp(cache)).get(image.version) != names:
        return False
    suites = list(dict.fromkeys(read_apt_sources(Path(image.path))))
    ours = [n for n in names if n.endswith("_InRelease")]
    if not suites or len(ours) != len(suites) or not all(u.startswith(("http://", "https://")) for u, _s in suites):
        return False
    try:
        local = {read_list(cache, name) for name in ours}
    except OSError:
        return False
    urls = ["%s/%s" % (uri.rstrip("/"), suite + "InRelease" if suite.endswith("/") else "dists/%s/InRelease" % suite)
            for uri, suite in suites]
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        published = list(pool.map(lambda url: fetch_release(url, settings.proxies), urls))
    for release in published:
        if release not in local:
            return False
        until = re.search(rb"(?m)^Valid-Until: (.+)$", release)
        try:
            if until and email.utils.parsedate_to_datetime(until.group(1).decode()).timestamp() < time.time():
                return False  # apt's refresh says so
        except (TypeError, ValueError):
            return False
    return True


def package_files(cache: Path) -> "set[str]":
    """The names of the package files in a package cache."""
    return {os.path.basename(path) for path, st in walk_tree(str(cache)) if stat.S_ISREG(st.st_mode) and
            path.endswith((".deb", ".rpm", ".pkg.tar.zst", ".pkg.tar.xz"))}


def mask_units(root: Path, family: str) -> None:
    """Mask, in the image, the units that stall or fail a container's boot."""
    etc = ensure_dir(root / "etc" / "systemd" / "system")
    for unit in MASKED_UNITS["all"] + MASKED_UNITS.get(family, []):
        link = etc / unit
        if link.is_symlink() or link.exists():
            remove_tree(link)
        os.symlink("/dev/null", link)


# /etc/hosts as Debian's and Ubuntu's installers write it; the host's own name on 127.0.1.1 is the container's
# machine name, added to each container's overlay (minimal images have no nss-myhostname to resolve it)
HOSTS = """127.0.0.1\tlocalhost

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""


def hosts_text(existing: str, hostname: str = "") -> str:
    """/etc/hosts with localhost and `hostname` on 127.0.1.1: the image's own lines kept (its 127.0.1.1 line
    replaced), or the installers' file where it has none."""
    lines = [line for line in (existing or HOSTS).splitlines() if not line.split()[:1] == ["127.0.1.1"]]
    if not any(line.split()[:1] == ["127.0.0.1"] and "localhost" in line.split()[1:] for line in lines):
        lines.insert(0, "127.0.0.1\tlocalhost")
    if hostname:
        at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["127.0.0.1"]) + 1
        lines.insert(at, "127.0.1.1\t%s" % hostname)
    return "\n".join(lines) + "\n"


def provision(settings: Settings, host: Host, root: Path) -> Tuple[Dict[str, str], str, int]:
    """Make `root` bootable: install systemd where it lacks it, mask units that stall a container's boot.

    Returns the os-release fields, the package manager and how many packages were downloaded.
    """
    downloaded = 0
    fields = read_os_release(root)
    if not fields:
        die("the image has no /etc/os-release or /usr/lib/os-release: it holds no operating system",
            "give a root file system of a Linux distribution")
    manager = detect_package_manager(root)
    family = os_family(fields)
    if not has_systemd(root):
        if not manager:
            die("%s has no systemd and no package manager postroj knows" % fields.get("PRETTY_NAME", "the image"),
                "use an image with systemd, or with apt, dnf, yum, zypper or pacman")
        cache = package_cache_for(settings, root)
        log.info("installing systemd into %s with %s", fields.get("PRETTY_NAME", "the image"), manager)
        packages = list(package_manager(manager).systemd)
        argv = nspawn_run_argv(host, root, [(str(cache), PACKAGE_CACHE_DIR)])
        # one package manager at a time per cache: apt and dnf do not share a cache directory well
        with file_lock(cache / ".postroj.lock"), own_cgroups(host) as entry:
            before = package_files(cache)
            proc = run(entry + argv + ["--", *package_transaction(manager, packages, refresh=True)], check=False,
                       capture=True, stderr=subprocess.STDOUT, env=settings.child_env())
            downloaded = len(package_files(cache) - before)
        if proc.returncode != 0:
            said = package_manager_errors(proc.stdout.decode("utf-8", "replace"))
            die("installing systemd (%s install %s) failed with exit code %d:\n%s" % (
                manager, " ".join(packages), proc.returncode, "\n".join("  " + line for line in said)),
                "check the image's package sources and that this host reaches them")
        log.info("provisioning downloaded %d packages; the others came from the package cache %s", downloaded, cache)
        if not has_systemd(root):
            die("installing systemd into the image did not give /usr/lib/systemd/systemd",
                "check the image's package sources")
    mask_units(root, family)
    if manager == "apt":
        add_source_packages(root)
    # a container's host name is its machine name, not the name of the host that built the image
    hostname = root / "etc" / "hostname"
    if hostname.is_file() and not hostname.is_symlink():
        hostname.unlink()
    hosts = root / "etc" / "hosts"  # localhost resolves as on an installed system (mmdebstrap writes none)
    if (root / "etc").is_dir() and not (root / "etc").is_symlink() and not os.path.lexists(hosts):
        hosts.write_text(hosts_text(""))
    return fields, manager, downloaded


# ==============================================================================
# Images: activation
# ==============================================================================

def image_link(settings: Settings, name: str) -> Path:
    """The link images/NAME that activates an image."""
    return settings.images / name


def read_image(settings: Settings, name: str) -> Optional[ImageInfo]:
    """The activated image `name`, or None when there is none."""
    if not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        return None  # not an image name, and never a path below images/
    link = image_link(settings, name)
    if not link.is_symlink():
        return None
    rootfs = Path(os.path.realpath(link))
    try:
        meta = json.loads((rootfs.parent / "image.json").read_text())
        fields = set(ImageInfo._fields)
        meta = {k: v for k, v in meta.items() if k in fields}
        meta["path"] = rootfs
        return ImageInfo(**meta)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        problem = getattr(exc, "strerror", None) or exc
        raise PostrojError("image %s is broken: its %s cannot be read (%s)" % (name, rootfs.parent / "image.json",
                                                                               problem),
                           "acquire it again with `postroj image %s --force`, or remove it with `postroj rm %s`"
                           % (name, name)) from None


def list_images(settings: Settings) -> List[ImageInfo]:
    """Every activated image; a broken one is a warning, not an image."""
    if not settings.images.is_dir():
        return []
    found = []
    for entry in sorted(settings.images.iterdir()):
        if not entry.name.startswith("."):
            try:
                info = read_image(settings, entry.name)
            except PostrojError as exc:
                log.warning("%s (hint: %s)", exc.message, exc.hint)
                continue
            if info:
                found.append(info)
    return found


def find_image(settings: Settings, name: str) -> Optional[ImageInfo]:
    """The activated image `name`, or the one of the catalogue label `name` is an alias of, or None."""
    dist = find_distribution(name)
    for candidate in dict.fromkeys([name] + ([dist.label] if dist else [])):
        info = read_image(settings, candidate)
        if info:
            return info
    return None


def remove_stale_staging(settings: Settings, name: str) -> None:
    """Staging directories of `name` left by a killed acquisition (we hold the image's lock)."""
    if settings.tmp.is_dir():
        for entry in settings.tmp.iterdir():
            if entry.name.rpartition(".")[0] == name:
                log.info("removing %s, left by an interrupted acquisition", entry)
                remove_tree(entry)


SETUP_TESTBED = "/usr/share/autopkgtest/setup-commands/setup-testbed"
SETUP_TESTBED_IN_ROOT = "/run/postroj-setup-testbed"
# what Debian's CI testbeds have besides setup-testbed's own: the certificate store (/usr/local/share/ca-certificates
# is where tests put a CA of their own, haproxy's TLS tests among them); run by setup-testbed before its clean-up
SETUP_TESTBED_AFTER = "eatmydata apt-get install -y --no-install-recommends ca-certificates </dev/null"


def setup_testbed(settings: Settings, host: Host, rootfs: Path) -> None:
    """Run autopkgtest's setup-testbed in `rootfs` (nspawn, not booted; the host's network), as Debian's CI runs it
    when it builds its testbeds: eatmydata, dbus, libpam-systemd, dpkg-dev, its apt configuration and package
    lists, and the system upgraded; ca-certificates (SETUP_TESTBED_AFTER). The image's own apt sources are kept
    (its -security suite with them: the sources setup-testbed would write lack it, and apt's own packages came
    from there)."""
    if not os.path.isfile(SETUP_TESTBED):
        die("%s not found: the ci variant runs autopkgtest's setup-testbed" % SETUP_TESTBED,
            "install it: apt-get install autopkgtest (or `make setup-dev`)")
    argv = nspawn_run_argv(host, rootfs) + [
        "--bind-ro=%s:%s" % (nspawn_escape(SETUP_TESTBED), SETUP_TESTBED_IN_ROOT),
        "--setenv=AUTOPKGTEST_KEEP_APT_SOURCES=1",
        "--setenv=AUTOPKGTEST_SETUP_VM_POST_COMMAND=%s" % SETUP_TESTBED_AFTER, "--", "/bin/sh", SETUP_TESTBED_IN_ROOT]
    with own_cgroups(host) as entry:
        proc = run(entry + argv, check=False, capture=True, stderr=subprocess.STDOUT, env=settings.child_env())
    if proc.returncode != 0:
        said = package_manager_errors(proc.stdout.decode("utf-8", "replace"))
        die("autopkgtest's setup-testbed failed in the image with exit code %d:\n%s" % (
            proc.returncode, "\n".join("  " + line for line in said)),
            "check the image's package sources and that this host reaches them")


def build_image(settings: Settings, host: Host, name: str, source: Source, staging: Path,
                variant: Optional[Variant] = None) -> Dict[str, Any]:
    """Fill `staging` with rootfs/ and image.json for `source` (made into `variant`)."""
    rootfs = staging / "rootfs"
    digest = ""
    origin = source.location
    if source.kind == SourceKind.REGISTRY:
        layout = settings.archives / name
        fresh = not layout.exists()
        try:
            with Step(name, "fetch"):
                digest = copy_from_registry(settings, source.location, layout, "latest")
            with Step(name, "unpack"):
                unpack_layout(layout, "latest", rootfs)
        except BaseException as exc:
            if fresh:
                remove_tree(layout)  # the disk may be full
            # only a registry that cannot be reached or lacks the image makes bootstrapping worth it;
            # a full disk or a broken layer would fail the same way from the mirror
            if not (isinstance(exc, PostrojError) and source.fallback and registry_unavailable(exc.message)):
                raise
            remove_tree(rootfs)
            log.warning("%s cannot be fetched from the registry (%s); bootstrapping from the package mirror "
                        "instead", source.location, exc.message.splitlines()[-1].strip())
            source = source.fallback
    if source.kind == SourceKind.BOOTSTRAP:
        with Step(name, "bootstrap"):
            origin = bootstrap(settings, host, source, rootfs)
    elif source.kind in (SourceKind.HTTP, SourceKind.TARBALL):
        if source.kind == SourceKind.HTTP:
            with Step(name, "fetch") as step:
                expected = source.sha256 or fetch_published_sha256(source.location, settings.proxies)
                tarball = download(source.location, settings.downloads, proxies=settings.proxies, step=step)
        else:
            expected = source.sha256
            tarball = Path(source.location)
            if not os.access(tarball, os.R_OK):
                die("cannot read %s" % tarball, "check its permissions")
        if not expected:
            log.warning("no SHA-256 known for %s: not verified", source.location)
        with Step(name, "unpack"):
            digest = "sha256:" + verify_sha256(tarball, expected, source.location)
            extract_tarball(tarball, rootfs)
    elif source.kind == SourceKind.DIRECTORY:
        log.info("copying %s", source.location)
        # SOURCE/. copies what a link to a root file system points at (images/NAME are such links)
        ensure_dir(rootfs)
        with Step(name, "copy"):
            # --one-file-system: what is mounted in a chroot (its /proc, a bind of the host's) is not copied
            run(["cp", "-a", "--reflink=auto", "--one-file-system", "--no-target-directory",
                 os.path.join(source.location, "."),
                 str(rootfs)], capture=True, what="copying the directory")
    with Step(name, "provision"):
        fields, manager, downloaded = provision(settings, host, rootfs)
    if variant == Variant.CI:
        if manager != "apt":
            die("the ci variant is autopkgtest's setup-testbed, for Debian and Ubuntu: %s uses %s" % (
                name, manager or "no package manager postroj knows"), "acquire it without --variant")
        with Step(name, "setup-testbed"):
            setup_testbed(settings, host, rootfs)
    meta = {
        "name": name,
        "source": origin,
        "digest": digest,
        "os_release": fields.get("PRETTY_NAME", fields.get("ID", "")),
        "os_id": fields.get("ID", ""),
        "family": os_family(fields),
        "package_manager": manager,
        "acquired": now_iso(),
        "size": tree_size(rootfs),
        "packages_downloaded": downloaded,
        "systemd": systemd_version(rootfs),
        "variant": str(variant or ""),
    }
    (staging / "image.json").write_text(json.dumps(meta, indent=2))
    os.chmod(staging, 0o755)
    return meta


def activate(settings: Settings, name: str, version: Path) -> None:
    """Point images/NAME at `version` with one rename: readers see the old image or the new one."""
    link = image_link(settings, name)
    tmp_link = settings.images / (".%s.%s.link" % (name, random_id(8)))
    os.symlink(os.path.relpath(version / "rootfs", settings.images), tmp_link)
    os.replace(tmp_link, link)


def prune_versions(settings: Settings, name: Optional[str] = None) -> List[Path]:
    """Delete image versions no link points at and no running container uses."""
    if not settings.versions.is_dir():
        return []
    active = set()
    for entry in settings.images.iterdir():
        if entry.is_symlink():
            active.add(Path(os.path.realpath(entry)).parent.name)
    # kept containers hold no lock once postroj has exited: they are in use all the same
    active.update(Path(m.version).name for m in list_machines(settings))
    removed = []
    for version in settings.versions.iterdir():
        if version.name in active or (name and not version.name.startswith(name + "@")):
            continue
        with file_lock(version / "image.json", wait=False) as free:
            if not free:
                continue
            doomed = settings.tmp / (".doomed-%s" % version.name)
            os.rename(version, doomed)
        remove_tree(doomed)
        removed.append(version)
    return removed


def acquire_image(settings: Settings, host: Host, name: str, source: Source, force: bool = False,
                  variant: Optional[Variant] = None) -> ImageInfo:
    """Fetch, provision and atomically activate the image `name` from `source`; a second caller waits and
    finds it done."""
    for directory in (settings.home, settings.images, settings.versions, settings.locks, settings.tmp):
        private_dir(directory) if directory != settings.images else ensure_dir(directory, 0o700)
    started = time.monotonic()
    with file_lock(settings.locks / ("image-%s.lock" % name)):
        try:
            existing = read_image(settings, name)
        except PostrojError as exc:
            log.warning("%s: acquiring it again", exc.message)
            existing = None
        if existing and not force:
            log.info("image %s is already acquired (%s)", name, existing.source)
            return existing
        remove_stale_staging(settings, name)
        staging = Path(tempfile.mkdtemp(prefix="%s." % name, dir=str(settings.tmp)))
        try:
            build_image(settings, host, name, source, staging, variant)
            with Step(name, "activate"):
                # umoci does not fsync and dpkg ran with --force-unsafe-io: flush the new version before
                # it becomes the image (and the one it replaces goes), so that a host crash cannot leave
                # an active image of empty files. One syncfs costs far less than dpkg's fsync per file.
                if run(["sync", "--file-system", str(staging)], check=False, capture=True).returncode != 0:
                    os.sync()  # coreutils before 8.24
                version = settings.versions / ("%s@%s" % (name, random_id(12)))
                os.rename(staging, version)
                activate(settings, name, version)
        except BaseException:
            try:
                remove_tree(staging)
            except PostrojError as exc:  # what failed first is what the user must see
                log.error("%s", exc.message)
            raise
        prune_versions(settings, name)
    log.info("image %s is ready (%.1f s)", name, time.monotonic() - started)
    result = read_image(settings, name)
    assert result is not None
    return result


def remove_image(settings: Settings, name: str) -> bool:
    """Deactivate `name` and delete its versions and its OCI archive."""
    with file_lock(settings.locks / ("image-%s.lock" % name)):
        link = image_link(settings, name)
        found = link.is_symlink()
        if found:
            link.unlink()
        prune_versions(settings, name)
        if (settings.archives / name).exists():
            remove_tree(settings.archives / name)
            found = True
    return found


class ImageTarget(NamedTuple):
    """An image a command boots, resolved once: activated already (`image`), or acquired first from a
    catalogue `source` (--pull); `name` is what the user called it (results carry it)."""

    name: str
    image: Optional[ImageInfo] = None
    source: Optional[Source] = None


def resolve_image(settings: Settings, name: str, pull: bool = False) -> ImageTarget:
    """The image `name` (or its alias) as a command boots it: activated, or with `pull` a catalogue label to
    acquire first; else an error that says how to get it."""
    info = find_image(settings, name)
    if info:
        return ImageTarget(name, info)
    dist = find_distribution(name)
    if pull and dist:
        return ImageTarget(name, None, parse_source(dist.label, mirror=settings.mirror)[1])
    check_name(name)
    if not dist:  # neither acquired nor in the catalogue: a typo, most likely
        raise unknown_name_error("image", name, [i.name for i in list_images(settings)] + all_labels(),
                                 "see `postroj list-images`")
    raise PostrojError("image %r is not acquired" % name,
                       "acquire it with `postroj image %s`, or pass --pull" % name)


def obtain_image(settings: Settings, host: Host, target: ImageTarget) -> ImageInfo:
    """The target's image, acquired first when it is not activated yet."""
    if target.image:
        return target.image
    assert target.source is not None and target.source.distribution is not None
    return acquire_image(settings, host, target.source.distribution.label, target.source)


# ==============================================================================
# Containers
# ==============================================================================

CONTAINER_ENV = {"PATH": CONTAINER_PATH, "HOME": "/root", "LANG": "C.UTF-8", "container": "systemd-nspawn"}
GUEST_RUNTIME = "/run/postroj"

# Masked in each container's own overlay, never in the image: what a throw-away container does not
# need and what `systemd-analyze blame` and `critical-chain` showed on its boot path (about 0.14 s of
# 0.5 s on Debian 12): generators for disks, encryption and consoles, hugepages and fusectl mounts. The
# journal's flush to /var and the utmp records stay: a reboot keeps both, as on a machine (JOURNAL_CONF).
BOOT_MASKED_GENERATORS = (
    "systemd-cryptsetup-generator", "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator", "systemd-veritysetup-generator", "systemd-getty-generator",
    "systemd-system-update-generator", "systemd-bless-boot-generator",
)

BOOT_MASKED_UNITS = ("dev-hugepages.mount", "sys-fs-fuse-connections.mount", "e2scrub_reap.service")

# journald's configuration in each container's overlay: the journal in /var/log/journal, so that it spans a
# reboot (a test after autopkgtest-reboot, a failed stage's journal after --reboot see the boot before)
JOURNAL_CONF = "etc/systemd/journald.conf.d/00postroj-persistent.conf"

# What systemd-nspawn says about its own housekeeping, which tells a probe's reader nothing.
NSPAWN_NOISE = r"(?m)^Attempted to remove disk file system under .*$\n?"


def without_nspawn_noise(text: str) -> str:
    """`text` without what systemd-nspawn says about its own housekeeping."""
    return re.sub(NSPAWN_NOISE, "", text)


def mask_for_boot(lower: Path, upper: Path) -> None:
    """Mask, in the container's overlay only, what a throw-away container does not need at boot."""
    for rel, names in (("etc/systemd/system-generators", BOOT_MASKED_GENERATORS),
                       ("etc/systemd/system", BOOT_MASKED_UNITS)):
        parts = rel.split("/")
        # a directory in the overlay would hide a link of the image's with the same path
        if any(lower.joinpath(*parts[: i + 1]).is_symlink() for i in range(len(parts))):
            continue
        target = upper / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not os.path.lexists(lower / rel / name):
                os.symlink("/dev/null", target / name)


def write_journal_conf(lower: Path, upper: Path) -> None:
    """The journal kept in /var/log/journal, in the container's overlay (an image whose /etc/systemd is a link
    keeps its own arrangement)."""
    if any((lower / part).is_symlink() for part in ("etc", "etc/systemd", "etc/systemd/journald.conf.d")):
        return
    target = upper / JOURNAL_CONF
    ensure_dir(target.parent)
    target.write_text("# postroj: the journal spans reboots, as on a machine\n[Journal]\nStorage=persistent\n")


def write_hosts(lower: Path, upper: Path, hostname: str) -> None:
    """The container's /etc/hosts, in its overlay: the image's with the machine name (an image whose /etc or
    /etc/hosts is a link keeps its own arrangement)."""
    if (lower / "etc").is_symlink() or (lower / "etc" / "hosts").is_symlink():
        return
    try:
        existing = (lower / "etc" / "hosts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        existing = ""
    ensure_dir(upper / "etc").joinpath("hosts").write_text(hosts_text(existing, hostname))


# The package proxy: a container with a network of its own (autopkgtest's testbed) reaches its package
# archives, and nothing else, through postroj. postroj listens on loopback inside the container's network
# namespace and connects from the host's; apt in the container is told to use it by a file in the overlay.
PACKAGE_PROXY_PORT = 31420  # not a service's port: squid's 3128 and apt-cacher-ng's 3142 are packages under test
PACKAGE_PROXY_CONF = "etc/apt/apt.conf.d/00postroj-package-proxy"
CLONE_NEWNET = 0x40000000


def write_proxy_conf(lower: Path, upper: Path) -> None:
    """apt's configuration for the package proxy, in the container's overlay (not when the image's /etc/apt
    is a link: it keeps its own arrangement, and apt then has no network)."""
    if any((lower / part).is_symlink() for part in ("etc", "etc/apt", "etc/apt/apt.conf.d")):
        return
    url = "http://127.0.0.1:%d/" % PACKAGE_PROXY_PORT
    target = upper / PACKAGE_PROXY_CONF
    ensure_dir(target.parent)
    target.write_text(
        "// postroj: this container's network is its own; its package archives are reached through postroj\n"
        'Acquire::http::Proxy "%s";\nAcquire::https::Proxy "%s";\n'
        '// one request per connection: the proxy answers each and closes\nAcquire::http::Pipeline-Depth "0";\n'
        % (url, url))


def listening_socket_in(proc_dir: str, port: int) -> "socket.socket":
    """A TCP socket listening on 127.0.0.1:`port` in the network namespace of the process whose /proc directory
    is `proc_dir` (a container's leader, ProcessHandle.path):
    made by a thread of its own that enters the namespace and ends, so postroj's others stay in the
    host's (a network namespace is a thread's own, a socket keeps the one it was made in)."""
    import ctypes
    import socket

    made: Dict[str, Any] = {}

    def make() -> None:
        try:
            fd = os.open(proc_dir + "/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(64)
            made["socket"] = listener
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "socket" not in made:
        raise PostrojError("cannot listen on port %d in the container's network: %s" % (
            port, made.get("error", "its namespace could not be entered")), "run the testbed with --host-network")
    return made["socket"]


def pass_bytes(a: "socket.socket", b: "socket.socket", idle: float = 300) -> None:
    """Copy bytes from `a` to `b` and back until both have ended (or nothing moved for `idle` s); with a
    selector, which has no limit on descriptor numbers (select() has: 1024)."""
    import selectors
    import socket

    peers = {a: b, b: a}
    by_fd = {a.fileno(): a, b.fileno(): b}
    with selectors.DefaultSelector() as selector:
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map():
            ready = selector.select(idle)
            if not ready:
                return
            for key, _ in ready:
                sock = by_fd[key.fd]
                data = sock.recv(65536)
                if data:
                    peers[sock].sendall(data)
                else:
                    selector.unregister(sock)
                    with contextlib.suppress(OSError):
                        peers[sock].shutdown(socket.SHUT_WR)


class PackageProxy:
    """For one boot of a container: an HTTP proxy on 127.0.0.1:PACKAGE_PROXY_PORT inside its network namespace
    that connects, from the host's, to the image's package archives (`allowed`: host, port) and nowhere else:
    plain requests to those hosts, CONNECT to their HTTPS ports. One request per connection (apt opens the
    next): a package file comes from the release's package `cache` when it is there, and goes into it when
    it is fetched, so testbeds share downloads without sharing apt's locks.

    What a guest can take of the host is bounded: at most MAX_CLIENTS connections (a thread each) at once; a
    new one at the limit ends the oldest that has not sent its request yet (idle ones cannot starve apt),
    and a request's head must come within HEAD_TIMEOUT s."""

    MAX_CLIENTS = 64
    HEAD_TIMEOUT = 30.0

    def __init__(self, allowed: Sequence[Tuple[str, int]], machine: str, cache: Optional[Path] = None) -> None:
        self.allowed = {(h.lower(), p) for h, p in allowed}
        self.machine = machine
        self.cache = cache
        self.root = ""  # the container's root, through its leader's handle: the apt sources it names now
        self.refused: "set[str]" = set()  # the refusals said in the log
        self.listener: Optional["socket.socket"] = None
        self.lock = threading.Lock()
        self.open: "set[socket.socket]" = set()
        self.clients: "set[socket.socket]" = set()
        self.waiting: Dict["socket.socket", float] = {}  # clients that have not sent a whole request head yet
        self.thread: Optional[threading.Thread] = None

    def start(self, proc_dir: str) -> None:
        """Listen in the network namespace of the process of `proc_dir` (its leader's) and serve until close()."""
        self.listener = listening_socket_in(proc_dir, PACKAGE_PROXY_PORT)
        self.root = os.path.join(proc_dir, "root")
        self.thread = threading.Thread(target=self.serve, args=(self.listener,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop listening and end every connection."""
        import socket

        with self.lock:
            ending, self.open = list(self.open), set()
            listener, self.listener = self.listener, None
        for sock in ending + ([listener] if listener else []):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads that wait on it
            sock.close()
        if self.thread:
            self.thread.join(10)

    def serve(self, listener: "socket.socket") -> None:
        """Accept the container's connections until the listener is closed, each served by a thread, at most
        MAX_CLIENTS at once."""
        import socket

        while True:
            try:
                client, _address = listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                if self.listener is None:
                    client.close()
                    return
                evicted = None
                if len(self.clients) >= self.MAX_CLIENTS:
                    evicted = min(self.waiting, key=self.waiting.__getitem__) if self.waiting else None
                    if evicted is None:  # every one is passing bytes: this one waits for none of them
                        client.close()
                        continue
                    del self.waiting[evicted]
                self.open.add(client)
                self.clients.add(client)
                self.waiting[client] = time.monotonic()
            if evicted is not None:
                log.debug("%s: package proxy: %d connections: ended the longest idle", self.machine, self.MAX_CLIENTS)
                with contextlib.suppress(OSError):
                    evicted.shutdown(socket.SHUT_RDWR)  # its thread wakes and ends it
            threading.Thread(target=self.relay, args=(client,), daemon=True).start()

    def relay(self, client: "socket.socket") -> None:
        """One connection: read its request's head, connect to the host it names, if allowed, and pass bytes
        both ways until either side ends (a package file: from the cache, or into it)."""
        import socket

        upstream = None
        try:
            deadline = time.monotonic() + self.HEAD_TIMEOUT
            head = b""
            while b"\r\n\r\n" not in head:
                client.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = client.recv(65536)
                if not chunk or len(head) > 65536:
                    return
                head += chunk
            with self.lock:
                self.waiting.pop(client, None)
            client.settimeout(60)
            head, rest = head.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            words = lines[0].split()
            target = self.target(words)
            if isinstance(target, str):
                status, why = target.split(": ", 1)
                with self.lock:
                    told, self.refused = why in self.refused, self.refused | {why}
                if not told:  # apt shows only the status; the server's log says why, once
                    log.warning("%s: package proxy: %s", self.machine, why)
                client.sendall(("HTTP/1.1 %s\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                                "postroj: %s\n" % (status, why)).encode())
                return
            name = self.package_file(words)
            if name and self.send_cached(client, name):
                return
            try:
                upstream = socket.create_connection(target, timeout=30)
            except OSError as exc:
                client.sendall(("HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\npostroj: %s:%d: %s\n" % (
                    target[0], target[1], exc.strerror or exc)).encode())
                return
            with self.lock:
                self.open.add(upstream)
            log.debug("%s: package proxy: %s %s", self.machine, words[0], words[1])
            if words[0] == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                upstream.sendall(rest)
                pass_bytes(client, upstream)
                return
            # the request as the archive takes it, and the connection's end after its answer
            parts = urllib.parse.urlsplit(words[1])
            fields = [line for line in lines[1:] if line.split(":", 1)[0].strip().lower() not in (
                "connection", "proxy-connection", "keep-alive", "proxy-authorization")]
            request = "%s %s %s\r\n%s\r\nConnection: close\r\n\r\n" % (
                words[0], urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")), words[2],
                "\r\n".join(fields))
            upstream.sendall(request.encode("latin-1") + rest)
            if name:
                self.fetch_into_cache(client, upstream, name)
            else:
                pass_bytes(client, upstream)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open.discard(client)
                self.clients.discard(client)
                self.waiting.pop(client, None)
                if upstream is not None:
                    self.open.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    def target(self, words: List[str]) -> Any:
        """(host, port) a request line asks for, or the refusal: 'STATUS: why'. Allowed: the image's archives
        and those the server was given (--archive), and any archive the container's apt sources name at the
        time of the request (a test's --add-apt-source, --apt-pocket) where it is on a public network: the
        host's loopback and private networks only when given."""
        if len(words) != 3:
            return "400 Bad Request: not an HTTP request"
        method, where = words[0], words[1]
        if method == "CONNECT":
            host, _, port = where.rpartition(":")
            host = host.strip("[]")
        else:
            parts = urllib.parse.urlsplit(where)
            if parts.scheme != "http" or not parts.hostname:
                return "400 Bad Request: a proxy request names its host (http://HOST/...)"
            host, port = parts.hostname, str(parts.port or 80)
        if not port.isdigit():
            return "403 Forbidden: %s:%s is not a host and port" % (host, port)
        if (host.lower(), int(port)) in self.allowed:
            return (host, int(port))
        if self.root and (host.lower(), int(port)) in archive_endpoints(Path(self.root)):
            address = public_address(host, int(port))
            if address:
                return (address, int(port))  # the address checked, not another the name resolves to next time
            return ("403 Forbidden: %s:%s, an archive the testbed's apt sources name, is on the host's loopback or a "
                    "private network; give it to the server: autopkgtest-virt IMAGE --archive http://%s:%s/" % (
                        host, port, host, port))
        return ("403 Forbidden: %s:%s is not one of the testbed's package archives (%s, and those its apt sources "
                "name); a testbed run with --host-network reaches any host" % (host, port, ", ".join(sorted(
                    "%s:%d" % a for a in self.allowed))))

    def package_file(self, words: List[str]) -> str:
        """The name of the package file a GET asks for, '' for anything else (or without a cache)."""
        if not self.cache or words[0] != "GET":
            return ""
        name = urllib.parse.unquote(urllib.parse.urlsplit(words[1]).path.rsplit("/", 1)[-1])
        return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*\.u?deb", name) else ""

    def send_cached(self, client: "socket.socket", name: str) -> bool:
        """Answer with the cache's copy of package file `name`; False when it has none. apt checks the file's
        hash against its lists, as it does for what an archive sends."""
        assert self.cache is not None
        try:
            fd = os.open(str(self.cache / name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        with open(fd, "rb") as package:
            size = os.fstat(package.fileno()).st_size
            if not stat.S_ISREG(os.fstat(package.fileno()).st_mode):
                return False
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.debian.binary-package\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
            client.sendfile(package)
        log.debug("%s: package proxy: %s from the package cache", self.machine, name)
        return True

    def fetch_into_cache(self, client: "socket.socket", upstream: "socket.socket", name: str) -> None:
        """Pass the archive's answer to the client and keep a copy: a whole 200 answer with its length becomes
        the cache's `name` (renamed in place: a reader sees all of it or none)."""
        assert self.cache is not None
        # staged in the cache directory itself: its partial/ is a containers' (bound into them), and may be a link
        fd, temporary = tempfile.mkstemp(prefix=".postroj-proxy.", dir=str(self.cache))
        try:
            head, headed = b"", False
            with open(fd, "wb") as body:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
                    if headed:
                        body.write(data)
                        continue
                    head += data
                    if b"\r\n\r\n" in head:
                        head, first = head.split(b"\r\n\r\n", 1)
                        body.write(first)
                        headed = True
                size = body.tell()
            lines = head.decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            if headed and lines[0].split()[1:2] == ["200"] and fields.get("content-length") == str(size) \
                    and "transfer-encoding" not in fields:
                os.chmod(temporary, 0o644)
                os.rename(temporary, str(self.cache / name))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def login_shell(root: Path) -> str:
    """root's login shell in the image, /bin/sh when it has none (its passwd read as a bounded regular file,
    its links resolved within the image)."""
    passwd = resolve_in_root(root, "etc/passwd")
    try:
        if passwd is None:
            raise OSError("etc/passwd leads nowhere")
        for line in read_regular(str(passwd), 1 << 20).decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if fields[0] == "root" and len(fields) > 6 and fields[6]:
                return fields[6]
    except OSError:
        pass
    return "/bin/sh"


def format_timings(timings: Dict[str, float]) -> str:
    """Where a container's time went: setup, boot, readiness, probes, teardown."""
    return ", ".join("%s %.3f s" % item for item in timings.items())


class ContainerSpec(NamedTuple):
    """What to boot, resolved once by the command: the image, the host's way of running containers, what is
    bound in, the environment of its commands, its network, its time-outs, and what it is called."""

    image: ImageInfo
    host: "Host"
    binds: Tuple[Bind, ...] = ()
    setenv: Tuple[Tuple[str, str], ...] = ()
    private_network: bool = False
    boot_timeout: float = 30
    keep: bool = False
    machine: str = ""  # the name asked for; '' for postroj-IMAGE (or -2, -3 ...)
    scratch: str = ""  # a path in the container where a writable host directory is bound (autopkgtest's)
    package_proxy: Tuple[Tuple[str, int], ...] = ()  # with private_network: archives apt reaches through postroj
    proxy_cache: str = ""  # where the package proxy keeps package files (the release's package cache)
    unified: bool = False  # the unified cgroup hierarchy on a v1 host whatever the image's systemd (Host.cgroup_env)


class Fleet:
    """The containers of one command that run at once (a probe matrix's threads): when the command ends
    for a signal or another thread's error, close_all() ends those still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: "set[NspawnContainer]" = set()
        self._closed = False

    def add(self, container: "NspawnContainer") -> None:
        """Count `container` in until it is closed; refused once the fleet was closed (postroj is ending)."""
        with self._lock:
            if self._closed:
                raise PostrojError("not started: postroj is ending")
            self._members.add(container)

    def discard(self, container: "NspawnContainer") -> None:
        """`container` was closed (or released, with --keep)."""
        with self._lock:
            self._members.discard(container)

    def close_all(self) -> None:
        """Close every container still counted in, with SIGINT and SIGTERM ignored, as mkosi does: a second
        Ctrl-C must not cut the clean-up short."""
        with self._lock:
            self._closed = True
            members = list(self._members)
        with stop_signals_handled_by(signal.SIG_IGN):
            for container in members:
                container.close()

    @property
    def closed(self) -> bool:
        """close_all() was called: what fails in its containers from then on is its doing."""
        return self._closed


class Background(Generic[T]):
    """`work(fleet)` in a thread of its own from now on (its containers in a fleet of its own): result() waits for
    it and returns what it returned or raises what it raised; abandon() ends its containers and waits for the
    thread, which is never left running."""

    def __init__(self, work: Callable[[Fleet], T]) -> None:
        self.fleet = Fleet()
        self._outcome: List[Tuple[bool, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[Fleet], T]) -> None:
        try:
            self._outcome.append((True, work(self.fleet)))
        except BaseException as exc:  # the caller's, in result()
            self._outcome.append((False, exc))

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> T:
        while self._thread.is_alive():
            self._thread.join(0.2)  # timed: the main thread acts on a stop signal meanwhile
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def abandon(self) -> None:
        if self._thread.is_alive():
            self.fleet.close_all()
        while self._thread.is_alive():
            self._thread.join(0.2)


class ContainerMode:
    """How a host runs containers and commands in them (README: Container modes): one subclass per HostMode,
    in HOST_MODES; NspawnContainer asks its mode and nothing else."""

    mode: HostMode

    def nspawn_options(self) -> List[str]:
        """What nspawn is told about registration and its unit."""
        raise NotImplementedError

    def make_cgroups(self, container: "NspawnContainer") -> List[Path]:
        """The cgroups postroj makes for the container ([]: the host makes them)."""
        raise NotImplementedError

    def command(self, container: "NspawnContainer", argv: Sequence[str],
                env: Dict[str, str]) -> Tuple[List[str], Optional[Dict[str, str]]]:
        """The host command that runs `argv` in the container, and its environment."""
        raise NotImplementedError

    def exit_status(self, code: int, argv: Sequence[str], container: "NspawnContainer") -> int:
        """The status of the command, as the caller gets it."""
        return code

    def exec_prefix(self, container: "NspawnContainer", env: Dict[str, str]) -> List[str]:
        """An argv prefix other programs (autopkgtest) run commands in the container with."""
        raise NotImplementedError

    def shell(self, container: "NspawnContainer") -> Tuple[List[str], Optional[Dict[str, str]]]:
        """The command and environment of an interactive login shell in the container."""
        raise NotImplementedError

    def enter_hint(self, container: "NspawnContainer") -> str:
        """How a user enters a kept container."""
        raise NotImplementedError


class NsenterMode(ContainerMode):
    """Hosts without machined: nspawn --register=no --keep-unit in a cgroup postroj makes, commands through
    nsenter into the container's leader."""

    mode = HostMode.NSENTER

    def nspawn_options(self) -> List[str]:
        """What nspawn is told about registration and its unit."""
        return ["--register=no", "--keep-unit"]

    def make_cgroups(self, container: "NspawnContainer") -> List[Path]:
        """A cgroup of the container's own, in each hierarchy its systemd manages (make_cgroups says why)."""
        return make_cgroups(container.host, "%s%s.%s.%s" % (CGROUP_PREFIX, container.machine,
                                                            container.settings.home_key, random_id(8)))

    def command(self, container: "NspawnContainer", argv: Sequence[str],
                env: Dict[str, str]) -> Tuple[List[str], Optional[Dict[str, str]]]:
        """The host command that runs `argv` in the container, and its environment (nsenter passes its own)."""
        return container.commands.enter_argv() + ["--", *argv], env

    def exec_prefix(self, container: "NspawnContainer", env: Dict[str, str]) -> List[str]:
        """An argv prefix that runs a command in the container: the leader changes when the container reboots,
        the prefix must not, so it reads the leader's PID and start time from the file boot() writes, at every
        use. It opens the leader's /proc directory, checks the start time through it and enters through it
        (a PID taken by another process since is never entered), and closes it before the command runs; when
        the leader is gone it fails with 255, autopkgtest's testbed failure."""
        script = ('{ read pid start < "$0" && exec 3< "/proc/$pid" && [ "$(sed "s/.*) //" /proc/self/fd/3/stat | '
                  'cut -d" " -f20)" = "$start" ]; } 2>/dev/null || { echo "postroj: the container is gone (its '
                  'leader has ended): the command was not run" >&2; exit 255; }; exec %s -- /bin/sh -c '
                  '\'exec "$@" 3<&-\' sh "$@"' % " ".join(nsenter_argv("/proc/self/fd/3")))
        return ["sh", "-c", script, str(container.commands.leader_file()), "/usr/bin/env", "-i"] + [
            "%s=%s" % item for item in env.items()]

    def shell(self, container: "NspawnContainer") -> Tuple[List[str], Optional[Dict[str, str]]]:
        """The command and environment of an interactive login shell in the container."""
        return container.commands.enter_argv() + ["--", login_shell(Path(container.spec.image.path)), "-l"], \
            container.commands.environment()

    def enter_hint(self, container: "NspawnContainer") -> str:
        """How a user enters a kept container."""
        return "nsenter --target=%d --all --root --wd /bin/sh -l" % container.commands.leader


class MachinedMode(ContainerMode):
    """Hosts with machined: containers registered by name, commands through systemd-run --machine."""

    mode = HostMode.MACHINED

    def nspawn_options(self) -> List[str]:
        """What nspawn is told about registration and its unit: it registers, in a scope of its own."""
        return []

    def make_cgroups(self, container: "NspawnContainer") -> List[Path]:
        """None: machined gives each container a scope of its own."""
        return []

    def command(self, container: "NspawnContainer", argv: Sequence[str],
                env: Dict[str, str]) -> Tuple[List[str], Optional[Dict[str, str]]]:
        """The host command that runs `argv` in the container, by machine name (the same after a reboot)."""
        cmd = ["systemd-run", "--machine=%s" % container.machine, "--wait", "--pipe", "--quiet", "--collect",
               "--service-type=exec", "--working-directory=/"]
        cmd += ["--setenv=%s=%s" % (k, v) for k, v in env.items()]
        return cmd + ["--", *argv], None

    def exit_status(self, code: int, argv: Sequence[str], container: "NspawnContainer") -> int:
        """systemd's EXIT_EXEC (203), a command that could not be executed, as the shell's 127."""
        if code == 203:
            sys.stderr.write("postroj: %s: command not found in %s\n" % (argv[0], container.machine))
            return 127
        return code

    def exec_prefix(self, container: "NspawnContainer", env: Dict[str, str]) -> List[str]:
        """An argv prefix that runs a command in the container, by machine name."""
        return self.command(container, [], env)[0]

    def shell(self, container: "NspawnContainer") -> Tuple[List[str], Optional[Dict[str, str]]]:
        """machinectl's login shell."""
        return ["machinectl", "shell", container.machine], container.settings.child_env()

    def enter_hint(self, container: "NspawnContainer") -> str:
        """How a user enters a kept container."""
        return "machinectl shell %s" % container.machine


HOST_MODES: Dict[HostMode, ContainerMode] = {HostMode.NSENTER: NsenterMode(), HostMode.MACHINED: MachinedMode()}


class Overlay:
    """A container's writable side, in its runtime directory: the overlay's upper directory that takes every
    change, the guest directory (read-only at GUEST_RUNTIME inside), autopkgtest's scratch directory, and the
    dependency layer below. What the container changed against its image is read here, on the host, as
    data (overlay_walk, image_difference)."""

    def __init__(self, spec: ContainerSpec, directory: Path, machine: str) -> None:
        self.spec = spec
        self.directory = directory
        self.machine = machine
        self.layer: Optional["Layer"] = None  # a dependency layer below the upper directory (attach)
        self._layer_entries: Dict[str, str] = {}
        self._upper_entries: Dict[str, str] = {}
        self._upper_prints: Dict[str, Fingerprint] = {}

    @property
    def image(self) -> Path:
        """The image's root, the overlay's lowest directory."""
        return Path(self.spec.image.path)

    @property
    def upper(self) -> Path:
        """The overlay directory that takes every change made in the container."""
        return self.directory / "upper"

    @property
    def guest(self) -> Path:
        """A host directory that shows up read-only at /run/postroj in the container."""
        return self.directory / "guest"

    @property
    def scratch(self) -> Path:
        """The host side of the writable directory bound at the spec's scratch path, made afresh with the
        overlay; postroj never reads or writes what is in it (the testbed may have planted links there)."""
        return self.directory / "scratch"

    def mount_tmpfs(self) -> None:
        """A tmpfs of its own for the runtime directory: an overlay's upper cannot be on overlayfs (the caller
        unmounts it)."""
        remove_tree(self.directory)
        private_dir(self.directory)
        run(["mount", "-t", "tmpfs", "-o", "mode=0700", "postroj-%s" % self.machine, str(self.directory)],
            capture=True, what="mounting a tmpfs for %s's overlay" % self.machine)

    def fresh(self) -> None:
        """An empty overlay (and guest directory) over the image, with what a throw-away boot masks."""
        if self.spec.host.upper_on_tmpfs:  # the mount point stays, its content goes
            for entry in list(self.directory.iterdir()):
                remove_tree(entry)
        else:
            remove_tree(self.directory)
            private_dir(self.directory)
        ensure_dir(self.guest)
        if self.spec.scratch:
            os.chmod(ensure_dir(self.scratch), 0o1777)  # as /tmp: tests may run as a normal user
        self._new_upper()

    def renew(self) -> None:
        """An empty upper directory again (the staged files stay): what the container did is gone."""
        remove_tree(self.upper)
        self._new_upper()

    def take(self, to: Path) -> None:
        """Move the upper directory, with what the container did, to `to` (a dependency layer), and start an
        empty one."""
        os.rename(str(self.upper), str(to))
        self._new_upper()

    def attach(self, layer: "Layer") -> None:
        """Put `layer` below the upper directory from now on, stamped as used (gc removes layers long unused)."""
        os.utime(str(layer.stamp), follow_symlinks=False)
        self.layer = layer
        self._layer_entries = overlay_entries(layer.tree)

    def _new_upper(self) -> None:
        os.chmod(ensure_dir(self.upper), 0o755)
        mask_for_boot(self.image, self.upper)
        write_journal_conf(self.image, self.upper)
        write_hosts(self.image, self.upper, self.machine)

    def entries(self) -> Dict[str, str]:
        """What the container changed from the image: path -> EntryKind (overlay_entries), with what its
        dependency layer changed."""
        self._upper_entries, self._upper_prints = overlay_walk(self.upper)
        if not self.layer:
            return self._upper_entries
        return merged_entries(self.image, self._layer_entries, self._upper_entries)

    def baseline_entries(self) -> Dict[str, str]:
        """What the container changed before any install: purge's comparison is with the image as acquired,
        and what making the dependency layer installed is not part of it."""
        entries = self.entries()
        if not self.layer:
            return entries
        return merged_entries(self.image, self.layer.before, self._upper_entries)

    def fingerprints(self) -> Dict[str, Fingerprint]:
        """The fingerprints of what the container itself changed, as the last entries() found them."""
        return dict(self._upper_prints)

    def difference(self, path: str, kind: str, against: Optional[Path] = None) -> Optional[str]:
        """How `path` differs from the image's, or from the overlay directory `against` (image_difference)."""
        holder = self.upper if path in self._upper_entries or not self.layer else self.layer.tree
        return image_difference(against or self.image, path, kind, holder)


def nspawn_boot_argv(spec: ContainerSpec, machine: str, overlay: Overlay, how: ContainerMode) -> List[str]:
    """systemd-nspawn booting the spec's image below `overlay` as `machine`, one option per line."""
    root = str(spec.image.path)
    cmd = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        "--directory=%s" % root,
        "--overlay=%s:/" % ":".join(nspawn_escape(d) for d in (
            root, *([str(overlay.layer.tree)] if overlay.layer else []), str(overlay.upper))),
        "--machine=%s" % machine,
        "--notify-ready=yes",
        "--console=read-only",
        "--kill-signal=SIGKILL",
        "--link-journal=no",
        "--timezone=off",
        "--resolv-conf=%s" % ("off" if spec.private_network else "replace-host"),
        Bind(str(overlay.guest), GUEST_RUNTIME, readonly=True).option(),
        *how.nspawn_options(),
    ]
    if spec.private_network:
        cmd.append("--private-network")
    if spec.scratch:
        cmd.append(Bind(str(overlay.scratch), spec.scratch).option())
    cmd += [bind.option() for bind in spec.binds]
    cmd += ["--setenv=%s=%s" % (k, v) for k, v in spec.setenv]
    return cmd


def console_tail(directory: Path, lines: int = 20) -> str:
    """A container's last console lines (what systemd printed while booting), from its runtime `directory`,
    for an error."""
    try:
        text = read_regular(str(directory / "console.log")).decode("utf-8", "replace")
    except OSError:
        return ""
    # terminal controls systemd sends to a console: CSI, OSC (window title), save and restore cursor
    text = re.sub(r"\x1b(\[[0-9;?!]*[A-Za-z]|\][^\x07\x1b]*(\x07|\x1b\\)|[78])", "", text).replace("\r", "")
    text = without_nspawn_noise(text)
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return ("\nlast console lines:\n" + "\n".join("  " + line for line in tail)) if tail else ""


def boot_failure_hint(image: ImageInfo, console: str) -> str:
    """What to do when nspawn exited while booting `image`, after what its console said."""
    if "unsupported legacy cgroup hierarchy" not in console:
        return "see the console lines above"
    version = image.systemd or systemd_version(Path(image.path))
    return ("the image's systemd no longer boots on cgroup v1, which this host uses, and postroj %s: run postroj "
            "with SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1, or boot the host with systemd.unified_cgroup_hierarchy=1" % (
                "took it for systemd %d" % version if version else "did not find its version"))


def claim_machine_name(settings: Settings, spec: ContainerSpec, hold: Callable[[Path], bool],
                       let_go: Callable[[], None]) -> str:
    """A machine name for a container of `spec`: the one asked for, or postroj-IMAGE (-2, -3 ...), taken when
    `hold` gets its lock and no registered machine or kept container of ours has it (`let_go` drops the
    lock again); what a killed postroj left under the name (its nspawn, its cgroups, its state) is ended."""
    private_dir(settings.runtime)

    def take(name: str) -> bool:
        files = RuntimeFiles(settings.runtime, name)
        if not hold(files.lock):
            return False
        leftover = read_machine(files.state, lock_held=False)
        if machine_registered(name) or (leftover and leftover.keep and leftover.alive):
            let_go()
            return False
        if leftover:
            log.info("ending what a killed postroj left of %s", name)
            end_machine(settings, leftover, keep_lock=True)
        return True

    if spec.machine:
        if not take(check_name(spec.machine, "machine name")):
            die("machine name %s is already taken" % spec.machine,
                "choose another --machine, or end the running one (`postroj machines`)", usage=True)
        return spec.machine
    base = "postroj-%s" % spec.image.name
    for number in range(1, 1000):
        name = base if number == 1 else "%s-%d" % (base, number)
        if take(name):
            return name
    die("no free machine name for %s" % base, "run `postroj gc`")


class HeldLocks:
    """The flocks a container holds until it is closed: its machine name's, its image version's and its
    dependency layer's (shared: gc removes neither while a container uses it)."""

    def __init__(self) -> None:
        self.fds: List[int] = []

    def take(self, path: Path, shared: bool) -> bool:
        """Take a flock on `path` (False when another process has it)."""
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fds.append(fd)
        return True

    def drop_last(self) -> None:
        """Let the last lock taken go."""
        os.close(self.fds.pop())

    def release(self) -> None:
        """Let every lock go."""
        while self.fds:
            os.close(self.fds.pop())


class ContainerCommands:
    """How commands reach one container: its leader, named by a handle that cannot be reused (ProcessHandle,
    taken when nspawn reports it at each boot), the host mode's way in (ContainerMode), and the environment
    a command gets. A command after the leader has gone runs nowhere."""

    def __init__(self, container: "NspawnContainer") -> None:
        self.container = container
        self.how = container.how
        self.leader = 0
        self.handle: Optional[ProcessHandle] = None

    def pin(self, pid: int) -> None:
        """Name the leader nspawn reported by a handle that cannot be reused (ProcessHandle)."""
        self.release()
        try:
            self.handle = ProcessHandle(pid)
        except OSError:
            self.handle = None  # ended already: the boot fails as nspawn exits
        self.leader = pid

    def release(self) -> None:
        """Let the leader's handle go (the boot has ended)."""
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()

    def publish(self) -> None:
        """Write the leader's PID and start time where the execute prefix reads them (leader_file)."""
        if self.handle is not None:
            self.leader_file().write_text("%d %s\n" % (self.leader, self.handle.start))

    def enter_argv(self) -> List[str]:
        """nsenter into every namespace of the container's leader, its root and working directory, through the
        handle that names the leader (never a process that took its PID since: nsenter then fails)."""
        return nsenter_argv(self.leader_path())

    def leader_path(self) -> str:
        """The leader's /proc directory, through the handle that names it (ProcessHandle.path)."""
        if self.handle is None:
            raise PostrojError("container %s is not running" % (self.container.machine or
                                                                self.container.image.name))
        return self.handle.path

    def state_argv(self) -> List[str]:
        """`systemctl is-system-running` in the container: running, degraded, starting..."""
        return self.enter_argv() + ["--", "systemctl", "is-system-running"]

    def exec_prefix(self) -> List[str]:
        """An argv prefix for other programs (autopkgtest) to run a command in the container with postroj's
        environment; the command's status, and its death by a signal, come back as nsenter's own."""
        return self.how.exec_prefix(self.container, self.environment())

    def leader_file(self) -> Path:
        """Where each boot writes the leader's PID and start time (exec_prefix reads them at every use)."""
        return self.container.overlay_of().directory / "leader"

    def environment(self, extra: Sequence[Tuple[str, str]] = ()) -> Dict[str, str]:
        """The environment of a command in the container: postroj's, the user's TERM and --setenv."""
        env = dict(CONTAINER_ENV)
        if self.container.settings.term:
            env["TERM"] = self.container.settings.term
        env.update(self.container.spec.setenv)
        env.update(extra)
        return env

    def execute(self, argv: Sequence[str], *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
                timeout: Optional[float] = None) -> int:
        """Run `argv` in the container with the given streams; returns its exit status (127: not found, 124:
        the time-out or the container's end came first)."""
        cmd, env = self.how.command(self.container, argv, self.environment())
        deadline = None if timeout is None else time.monotonic() + timeout
        # no pdeathsig: the payload's own process, whose exit status and signals are passed on as they are
        with spawn(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env, die_with_parent=False) as proc:
            while not wait_exit(proc, 0.1):
                # a container that shuts down (reboot, poweroff) can leave the command stopped for good
                if self.ended() or (deadline is not None and time.monotonic() > deadline):
                    kill_and_wait(proc)
                    return 124
        return self.how.exit_status(proc.returncode, argv, self.container)

    def ended(self) -> bool:
        """True once nspawn has exited, or the container's systemd has died (killed: a zombie until nspawn
        reaps it) or begun to shut down."""
        nspawn, handle = self.container.proc, self.handle
        if nspawn is None or nspawn.poll() is not None or handle is None or not handle.alive():
            return True
        return handle.comm() in ("", "systemd-shutdow")

    def capture(self, argv: Sequence[str], timeout: Optional[float] = 30) -> str:
        """stdout and stderr of `argv` in the container, together, as text."""
        return self.run_captured(argv, timeout=timeout)[1]

    def run_captured(self, argv: Sequence[str], timeout: Optional[float] = 30) -> Tuple[int, str]:
        """The exit status of `argv` in the container, and its stdout and stderr together, as text (the last
        CAPTURE_MAX bytes: a guest's output is bounded like everything else it gives the host)."""
        with tempfile.TemporaryFile(dir=str(self.container.overlay_of().directory)) as out:
            code = self.execute(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout)
            out.seek(max(0, out.seek(0, os.SEEK_END) - CAPTURE_MAX))
            return code, out.read(CAPTURE_MAX).decode("utf-8", "replace").strip()

    def system_state(self, timeout: float = 30) -> str:
        """`systemctl is-system-running` in the container, within `timeout` s ('' when it takes longer)."""
        try:
            proc = run(self.state_argv(), check=False, capture=True, stderr=subprocess.DEVNULL,
                       env=self.environment(), timeout=timeout)
        except PostrojError:
            return ""
        return proc.stdout.decode().strip()

    def shell(self) -> int:
        """An interactive login shell (the caller's terminal)."""
        cmd, env = self.how.shell(self.container)
        return run(cmd, check=False, stdin=None, env=env).returncode

    def journal_tail(self, lines: int = 30, unit: str = "", since: float = 0) -> str:
        """The container's last journal lines (of `unit`, written since the time `since`), for a failure's
        report."""
        argv = ["journalctl", "--no-pager", "-n", str(lines), "-o", "short-monotonic"]
        if unit:
            argv += ["-u", unit]
        if since:
            argv += ["--since", "@%.3f" % (since - 0.0005)]  # never after `since`
        return self.capture(argv)


CAPTURE_MAX = 16 * 1024 * 1024  # what postroj keeps of one command's output in a container


class NspawnContainer:
    """An image booted with systemd as PID 1 below a throw-away overlay, used and thrown away: the lifetime of
    one ContainerSpec.

    create() takes a machine name, the runtime files and a fresh overlay; boot() starts systemd-nspawn and
    waits until the container is up; execute() runs commands in it; close() releases everything taken, in
    reverse order. Each resource registers its release on an ExitStack the moment it is taken (`taken` for
    create(), `running` for boot()), so a close() that lands half-way (a signal, another thread) releases
    exactly what was taken, and a step after close() refuses to start. Between create() and boot(),
    run_in_overlay() runs a command (a package install) on the overlay. revert() boots a fresh overlay of
    the same image, reboot() the same overlay again. The host mode (HOST_MODES) says how. As a context
    manager: create() on entry, close() on exit, however the block ends."""

    def __init__(self, settings: Settings, spec: ContainerSpec, fleet: Optional[Fleet] = None) -> None:
        self.settings = settings
        self.spec = spec
        self.host = spec.host
        self.how = HOST_MODES[spec.host.mode]
        self.fleet = fleet
        self.machine = ""
        self.files: Optional[RuntimeFiles] = None
        self.commands = ContainerCommands(self)  # how commands reach it, through its leader
        self.state = ""
        self.failed_units: List[str] = []
        self.timings: Dict[str, float] = {}
        self.proc: Optional[subprocess.Popen] = None
        self.cgroups: List[Path] = []
        self._state_query: Optional[subprocess.Popen] = None  # `systemctl is-system-running`, asked at READY=1
        self.overlay: Optional[Overlay] = None  # taken by create()
        self._taken = contextlib.ExitStack()  # what create() took: released by close()
        self._running = contextlib.ExitStack()  # what boot() took: released by shutdown() and close()
        self._locks = HeldLocks()  # released last by close()
        self._forced = False  # nspawn had to be killed: what is left in its cgroups is killed too
        self._closed = False
        # steps take it to check that the container is open and register what they take; close()
        # takes it to mark the container closed: a step never registers after close() released
        self._lock = threading.RLock()

    @property
    def image(self) -> ImageInfo:
        """The image the container boots."""
        return self.spec.image

    @property
    def mode(self) -> HostMode:
        """How this host runs containers (README: Container modes)."""
        return self.host.mode

    def overlay_of(self) -> "Overlay":
        """The container's overlay (taken by create())."""
        if self.overlay is None:
            raise PostrojError("container %s was not created" % self.image.name)
        return self.overlay

    @property
    def layer(self) -> Optional["Layer"]:
        """The dependency layer below the overlay (use_layer), or None."""
        return self.overlay.layer if self.overlay else None

    def attach_layer(self, layer: "Layer") -> None:
        """Boot with `layer` below the overlay from now on; its use is held until close() (gc leaves it)."""
        with self._lock:
            self._check_open()
            if not self._locks.take(layer.stamp, True):
                die("dependency layer %s is being removed" % layer.key, "try again in a moment")
        self.overlay_of().attach(layer)

    def __enter__(self) -> "NspawnContainer":
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise PostrojError("container %s was stopped" % (self.machine or self.image.name))

    def create(self) -> "NspawnContainer":
        """Take a machine name, the runtime files and a fresh overlay of the image; nothing runs yet."""
        t0 = time.monotonic()
        with self._lock:
            self._check_open()
            if self.fleet:
                self.fleet.add(self)
                self._taken.callback(self.fleet.discard, self)
            self._taken.callback(self._locks.release)  # the machine name's lock, taken first, goes last
            self.machine = claim_machine_name(self.settings, self.spec, lambda lock: self._locks.take(lock, False),
                                              self._locks.drop_last)
            if not self._locks.take(Path(self.image.path).parent / "image.json", True):
                die("image %s is being replaced" % self.image.name, "try again in a moment")
            self.files = RuntimeFiles(self.settings.runtime, self.machine)
            self._taken.callback(self.files.remove)
            self.overlay = Overlay(self.spec, self.files.directory, self.machine)
            if self.host.upper_on_tmpfs:
                self.overlay.mount_tmpfs()
                self._taken.callback(unmount, self.files.directory)
            self.overlay.fresh()
        self.timings["setup"] = time.monotonic() - t0
        return self

    def run_in_overlay(self, argv: Sequence[str], binds: Sequence[Tuple[str, str]] = (), timeout: float = 600,
                       what: str = "") -> Tuple[int, str]:
        """Run `argv` in the image below the container's overlay, not booted, with the host's network and the
        guest directory at GUEST_RUNTIME (a package install before boot); returns its status and output."""
        cmd = nspawn_run_argv(self.host, Path(self.image.path), binds, upper=self.overlay_of().upper)
        cmd.append(Bind(str(self.overlay_of().guest), GUEST_RUNTIME, readonly=True).option())
        with own_cgroups(self.host) as entry:
            with self._lock:
                self._check_open()
                proc = self._taken.enter_context(spawn(entry + cmd + ["--", *argv], stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT, env=self.settings.child_env()))
                self._taken.callback(kill_and_wait, proc)  # close() ends it, however long it would run
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(proc, 10)  # nspawn ends the container's processes with it
                raise TimedOut("%s did not finish within %g s" % (what or argv[0], timeout),
                               "raise --install-timeout, or look at what the package's maintainer scripts wait for")
        self._check_open()
        return proc.returncode, without_nspawn_noise(out.decode("utf-8", "replace"))

    def boot(self) -> None:
        """Start systemd-nspawn on the overlay and wait until the container's systemd reports it is up."""
        t0 = time.monotonic()
        import socket  # only containers need it: start-up of other commands is faster without

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
            address = "\0postroj/%s/%d/%s" % (self.machine, os.getpid(), random_id(8))
            notify.bind(address)
            with self._lock:
                self._check_open()
                assert self.files is not None
                self.state, self.failed_units, self._state_query = "", [], None
                self._running.callback(self.commands.release)
                self.cgroups = self.how.make_cgroups(self)
                self._running.callback(self._remove_cgroups, list(self.cgroups))
                self.write_state(nspawn_pid=0)
                if self.spec.package_proxy:  # at the boot: the downloads before it have the host's network
                    write_proxy_conf(self.overlay_of().image, self.overlay_of().upper)
                prefix = list(self.host.scope) + cgroup_entry_prefix(self.cgroups)
                with open(self.files.directory / "console.log", "wb") as console:
                    self.proc = self._running.enter_context(spawn(
                        prefix + nspawn_boot_argv(self.spec, self.machine, self.overlay_of(), self.how),
                        env=self.settings.child_env(
                            NOTIFY_SOCKET="@" + address[1:], **self.host.cgroup_env(self.image, self.spec.unified)),
                        stdout=console, stderr=subprocess.STDOUT, die_with_parent=not self.spec.keep,
                        new_session=True))
                self._running.callback(self._end_nspawn, self.proc)
                self.write_state(nspawn_pid=self.proc.pid)
            self.timings["setup"] = self.timings.get("setup", 0.0) + time.monotonic() - t0
            self.wait_ready(notify)
        if self.spec.package_proxy and self.spec.private_network:
            proxy = PackageProxy(self.spec.package_proxy, self.machine,
                                 Path(self.spec.proxy_cache) if self.spec.proxy_cache else None)
            with self._lock:
                self._check_open()
                proxy.start(self.commands.leader_path())  # in this boot's network namespace: a reboot makes a new one
                self._running.callback(proxy.close)
        self.write_state(nspawn_pid=self.proc.pid)
        with self._lock:
            if not self._closed:
                self.commands.publish()
        log.debug("container %s up in %.3f s (leader %d, mode %s)", self.machine, time.monotonic() - t0,
                  self.commands.leader, self.mode)

    def _end_nspawn(self, proc: subprocess.Popen) -> None:
        """Tell nspawn to end the container (it sends --kill-signal=SIGKILL to it); kill what outlives 10 s."""
        if proc.poll() is None and not stop_process(proc, 10):
            self._forced = True
            if self.commands.handle is not None:
                self.commands.handle.kill(signal.SIGKILL)

    def _remove_cgroups(self, cgroups: List[Path]) -> None:
        # nspawn has ended: whatever is left in its cgroups (the guest's systemd, when nspawn itself was
        # killed) is nobody's, and ends with them
        remove_cgroups([str(c) for c in cgroups], kill=True)
        self.cgroups = []

    def shutdown(self) -> None:
        """End the running container (nspawn, its cgroups); the overlay and the runtime files stay."""
        with self._lock:
            running, self._running = self._running, contextlib.ExitStack()
        running.close()
        self._forced = False

    def reboot(self) -> None:
        """Boot the same overlay again: what a test changed survives, as after a real reboot."""
        self.shutdown()
        self.boot()

    def power_cycle(self) -> None:
        """Reboot as a machine reboots: the container's systemd stops every unit and powers off (within the
        boot time-out, else nspawn ends it), then the same overlay boots again."""
        self.power_off()
        self.boot()

    def power_off(self) -> None:
        """Power off as a machine does: the container's systemd stops every unit (within the boot time-out,
        else nspawn ends it); the overlay stays."""
        assert self.proc is not None
        self.commands.execute(["systemctl", "--no-block", "poweroff"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=self.spec.boot_timeout)
        if not wait_exit(self.proc, self.spec.boot_timeout):
            log.warning("%s did not power off within %s s: ended", self.machine, self.spec.boot_timeout)
        self.shutdown()

    def revert(self) -> None:
        """Boot a fresh overlay of the same image: nothing done in the container survives."""
        self.shutdown()
        with self._lock:
            self._check_open()
            self.overlay_of().fresh()
        self.boot()

    def close(self) -> None:
        """End the container and release all it took, in reverse order; safe to call more than once, from
        another thread, and again when a signal interrupted it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running, self._running = self._running, contextlib.ExitStack()
            taken, self._taken = self._taken, contextlib.ExitStack()
        t0 = time.monotonic()
        with deferred_signals():
            try:
                running.close()
            finally:
                taken.close()
        self.timings["teardown"] = time.monotonic() - t0

    def release(self) -> None:
        """Leave the container running (--keep): postroj exits, the machine and its runtime files stay."""
        self.write_state(nspawn_pid=self.proc.pid if self.proc else 0, keep=True)
        with self._lock:
            self._closed = True
            self._running.pop_all()
            self._taken.pop_all()
        self._locks.release()
        if self.fleet:
            self.fleet.discard(self)

    def wait_ready(self, notify: "socket.socket") -> None:
        """Wait for READY=1 from the container's systemd; poll only when an old guest never sends it."""
        assert self.proc is not None and self.files is not None
        started = time.monotonic()
        deadline = started + self.spec.boot_timeout
        ready = False
        leader_seen = 0.0
        while not ready:
            now = time.monotonic()
            if now > deadline:
                die("%s did not finish booting within %s s%s" % (self.machine, self.spec.boot_timeout,
                                                                 console_tail(self.files.directory)),
                    "raise --boot-timeout, or look at the units above")
            if self.proc.poll() is not None:
                self._check_open()  # ended by close(), not by itself
                console = console_tail(self.files.directory)
                die("systemd-nspawn for %s exited with code %d while booting%s" % (
                    self.machine, self.proc.returncode, console), boot_failure_hint(self.image, console))
            if select.select([notify], [], [], 0.05)[0]:
                for field in notify.recv(4096).decode("utf-8", "replace").split("\n"):
                    if field.startswith("X_NSPAWN_LEADER_PID=") and field.split("=", 1)[1].isdigit():
                        with self._lock:
                            self._check_open()
                            self.commands.pin(int(field.split("=", 1)[1]))
                        leader_seen = time.monotonic()
                    elif field == "READY=1":
                        ready = True
            elif self.commands.leader and time.monotonic() - leader_seen > 2.0:
                state = self.commands.system_state(max(0.1, deadline - time.monotonic()))
                ready = state in ("running", "degraded")
        self.timings["boot"] = time.monotonic() - started
        # the state the boot ended in is asked now and read when first needed (boot_state()): the
        # question runs beside the first probe instead of before it
        with self._lock:
            self._check_open()
            query = self._running.enter_context(spawn(self.commands.state_argv(), stdout=subprocess.PIPE,
                                                      stderr=subprocess.DEVNULL, env=self.commands.environment()))
            self._running.callback(kill_and_wait, query)
        self._state_query = query

    def boot_state(self) -> str:
        """How the boot ended (`systemctl is-system-running` as READY=1 came); warns once about the failed
        units of a degraded boot. Asked in wait_ready(), answered here, where the caller has time for it."""
        query, self._state_query = self._state_query, None
        if query is None:
            return self.state
        t0 = time.monotonic()
        try:
            out, _ = query.communicate(timeout=max(1.0, self.spec.boot_timeout))
            self.state = out.decode("utf-8", "replace").strip()
        except subprocess.TimeoutExpired:
            kill_and_wait(query)
            self.state = ""
        if self.state == "degraded":
            # a container that was powered off since (`container NAME -- poweroff`) has no units to list
            listed = "" if self.commands.ended() else self.commands.capture(
                ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"])
            self.failed_units = [line.split()[0] for line in listed.split("\n") if line.strip()]
            # a unit that failed at boot and runs now (a dependency's, whose program the package under test
            # brings) is not worth a warning
            (log.warning if self.failed_units else log.info)("%s is degraded; failed units: %s", self.machine,
                                                             ", ".join(self.failed_units) or "none now")
        self.timings["readiness"] = time.monotonic() - t0
        return self.state

    def write_state(self, **extra: Any) -> None:
        """The state file `postroj machines`, `stop` and `gc` read; never written once the container is closed.
        It says `keep` once the container is released: one whose postroj was killed before is a leftover."""
        with self._lock:
            if not self.files or self._closed:
                return
            self.files.write_state({
                "machine": self.machine, "image": self.image.name, "version": str(Path(self.image.path).parent),
                "leader": self.commands.leader, "postroj_pid": os.getpid(), "since": now_iso(), "keep": False,
                "mode": self.mode, "cgroups": [str(c) for c in self.cgroups], **extra})

class ContainerSystem:
    """A booted container as the lifecycle works on it (System): the stages, checks and purge comparison of
    live() run its commands and read its overlay; VmSystem is the same for a VM."""

    listed_whole = False  # entries() are what the overlay changed, not the whole file system
    what = "the container"

    def __init__(self, container: NspawnContainer) -> None:
        self.container = container

    @property
    def image(self) -> ImageInfo:
        """The image the container boots."""
        return self.container.image

    @property
    def layer(self) -> Optional["Layer"]:
        """The dependency layer below its overlay, or None."""
        return self.container.layer

    @property
    def manager(self) -> PackageManager:
        """The image's package manager."""
        return package_manager(self.image.package_manager)

    def run_captured(self, argv: Sequence[str], timeout: Optional[float] = 30) -> Tuple[int, str]:
        """The exit status of `argv` in the container, and what it printed."""
        return self.container.commands.run_captured(argv, timeout)

    def ended(self) -> bool:
        """True once the container has ended or begun to shut down."""
        return self.container.commands.ended()

    def journal_tail(self, lines: int = 30, unit: str = "", since: float = 0) -> str:
        """The container's last journal lines (NspawnContainer.journal_tail)."""
        return self.container.commands.journal_tail(lines, unit, since)

    def power_cycle(self) -> None:
        """Reboot as a machine reboots (NspawnContainer.power_cycle)."""
        self.container.power_cycle()

    def boot_state(self) -> str:
        """How the boot ended (NspawnContainer.boot_state)."""
        return self.container.boot_state()

    def clock(self) -> float:
        """The host's monotonic clock: a container has no time namespace of its own, its systemd's timestamps
        are on the host's clock."""
        return time.monotonic()

    def check(self, probe: Probe, timeout: float) -> ProbeResult:
        """Run one check (copy, unit, network, command) in the booted container."""
        return PROBE_RUNNERS[probe.kind].container_runner()(self, probe, timeout)

    def entries(self) -> Dict[str, str]:
        """What the container changed from the image (Overlay.entries)."""
        return self.container.overlay_of().entries()

    def baseline_entries(self) -> Dict[str, str]:
        """What the container changed before any install (Overlay.baseline_entries)."""
        return self.container.overlay_of().baseline_entries()

    def fingerprints(self) -> Dict[str, Fingerprint]:
        """The fingerprints of what the container changed (Overlay.fingerprints)."""
        return self.container.overlay_of().fingerprints()

    def difference(self, path: str, kind: str, against: Optional[Path] = None) -> Optional[str]:
        """How `path` differs from the image's, or from the overlay directory `against` (Overlay.difference)."""
        return self.container.overlay_of().difference(path, kind, against)


# ==============================================================================
# Virtual machines (vagrant)
# ==============================================================================

VAGRANTFILE_TEMPLATE = """\
# Written by postroj {version}; `postroj vm destroy {label}` removes the machine and this file.
Vagrant.configure("2") do |config|
  config.vm.box = "{box}"
  config.vm.hostname = "{hostname}"
  config.vm.communicator = "{communicator}"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.boot_timeout = {boot_timeout}
{guest_lines}
  config.vm.provider "virtualbox" do |v|
    v.cpus = {cpus}
    v.memory = {memory}
  end
  config.vm.provider "libvirt" do |v|
    v.cpus = {cpus}
    v.memory = {memory}
  end
end
"""

WINDOWS_GUEST_LINES = """\
  config.vm.guest = :windows
  config.winrm.transport = :plaintext
  config.winrm.basic_auth_only = true"""

ANSI_ESCAPE = r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])"


def windows_command_line(command: Sequence[str]) -> str:
    """One argument is a command line as typed; several are quoted the way Windows programs split them."""
    return command[0] if len(command) == 1 else subprocess.list2cmdline(command)


def posix_network_check(parsed: urllib.parse.ParseResult, url: str,
                        timeout: float) -> Tuple[str, Callable[[int, str], bool]]:
    """bash's /dev/tcp for tcp://, curl for HTTP: exit status 0 when it answered."""
    if parsed.scheme == "tcp":
        return "timeout %d bash -c 'until exec 3<>/dev/tcp/%s/%d; do sleep 1; done'" % (
            timeout, parsed.hostname, parsed.port or 0), lambda code, output: code == 0
    return "curl -fsS --retry-connrefused --retry 30 --max-time %d %s" % (timeout, shlex.quote(url)), \
        lambda code, output: code == 0


def windows_network_check(parsed: urllib.parse.ParseResult, url: str,
                          timeout: float) -> Tuple[str, Callable[[int, str], bool]]:
    """Test-NetConnection to the port: it says False, with exit status 0, when nothing answers."""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    command = "Test-NetConnection -ComputerName %s -Port %d -InformationLevel Quiet" % (parsed.hostname, port)
    return command, lambda code, output: code == 0 and output.strip().lower() != "false"


class GuestKind(NamedTuple):
    """What differs between kinds of guests: how vagrant reaches them, the Vagrantfile's own lines, where an
    uploaded package goes and what installs it, which packages and probes they take, how `vm run` joins a
    command's words, whether --shell applies, and how a network probe asks."""

    communicator: Communicator
    vagrant_lines: str
    upload_dir: str
    install: str  # a shell command with {path}
    package_types: Tuple[str, ...]
    units: bool
    command_line: Callable[[Sequence[str]], str]
    shells: bool
    network_check: Callable[[urllib.parse.ParseResult, str, float], Tuple[str, Callable[[int, str], bool]]]


POSIX_INSTALL = "sudo apt-get install -y {path} || sudo dnf install -y {path}"
GUESTS: Dict[Guest, GuestKind] = {
    Guest.LINUX: GuestKind(Communicator.SSH, "", "/tmp/", POSIX_INSTALL, ("deb", "rpm"), True, shlex.join, False,
                           posix_network_check),
    Guest.BSD: GuestKind(Communicator.SSH, "", "/tmp/", POSIX_INSTALL, ("deb", "rpm"), False, shlex.join, False,
                         posix_network_check),
    Guest.WINDOWS: GuestKind(Communicator.WINRM, WINDOWS_GUEST_LINES, "C:\\postroj\\",
                             "Start-Process msiexec.exe -Wait -ArgumentList '/i {path} /qn'", ("msi",), False,
                             windows_command_line, True, windows_network_check),
}

# vagrant's arguments that run a command in the VM, by communicator (`shell`: winrm's cmd or powershell)
COMMUNICATORS: Dict[Communicator, Callable[[str, str], List[str]]] = {
    Communicator.SSH: lambda command, shell: ["ssh", "--no-tty", "--command", command],
    Communicator.WINRM: lambda command, shell: ["winrm", "--shell", shell, "--command", command],
}


def find_box(name: str) -> Box:
    """The curated box `name`, or a box made from `vagrant:OWNER/BOX`."""
    for box in BOXES:
        if box.label == name:
            return box
    if name.startswith("vagrant:"):
        ref = name[len("vagrant:"):]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", ref):
            die("malformed box reference %r" % name, "write vagrant:OWNER/BOX, as on Vagrant Cloud", usage=True)
        guest = Guest.WINDOWS if "windows" in ref.lower() else Guest.BSD if "bsd" in ref.lower() else Guest.LINUX
        label = re.sub(r"[^a-z0-9.-]+", "-", ref.lower()).strip("-.")
        if not re.fullmatch(NAME_PATTERN, label) or ".." in label:
            die("box reference %r gives no usable name" % name, "write vagrant:OWNER/BOX with letters or digits",
                usage=True)
        return Box(label, ref, guest, GUESTS[guest].communicator)
    raise unknown_name_error("box", name, [b.label for b in BOXES],
                             "see `postroj list-images` for curated boxes, or use vagrant:OWNER/BOX")


def vagrantfile_text(box: Box, cpus: int = 0, memory: int = 0, boot_timeout: int = 600) -> str:
    """The Vagrantfile postroj writes for `box`."""
    return VAGRANTFILE_TEMPLATE.format(
        version=__version__, label=box.label, box=box.box, hostname=re.sub(r"[^a-z0-9-]", "-", box.label)[:63],
        communicator=box.communicator, cpus=cpus or box.cpus, memory=memory or box.memory, boot_timeout=boot_timeout,
        guest_lines=GUESTS[box.guest].vagrant_lines)


def clean_console(text: str) -> str:
    """Vagrant's and Windows' output without escape sequences, CRLF as LF."""
    return re.sub(ANSI_ESCAPE, "", text).replace("\r\n", "\n").replace("\r", "")


def pump_lines(sinks: Dict[Any, Any], timeout: Optional[float], what: str) -> None:
    """Copy each pipe to its sink a line at a time, as lines come, through clean_console, until all close."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = {pipe: b"" for pipe in sinks}
    while pending:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise TimedOut("%s did not finish within %s s" % (what, timeout))
        for pipe in select.select(list(pending), [], [], wait)[0]:
            chunk = os.read(pipe.fileno(), 65536)
            data = pending[pipe] + chunk
            if chunk:
                lines, newline, pending[pipe] = data.rpartition(b"\n")
                data = lines + newline
            else:
                del pending[pipe]
            if data:
                sink = sinks[pipe]
                sink.write(clean_console(data.decode("utf-8", "replace")))
                if hasattr(sink, "flush"):
                    sink.flush()


VM_UP_MARK = "postroj-vm-up"


def vagrant_tail(proc: subprocess.CompletedProcess, lines: int = 15) -> str:
    """The last lines vagrant printed, indented, without escape sequences."""
    text = clean_console((proc.stdout + proc.stderr).decode("utf-8", "replace")).strip().splitlines()
    return "\n".join("  " + line for line in text[-lines:])


class _StringSink:
    """A write-only text stream that keeps what it got."""

    def __init__(self) -> None:
        self.parts: List[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def text(self) -> str:
        return "".join(self.parts)


class VagrantMachine:
    """A VM brought up through vagrant from a Vagrantfile in POSTROJ_HOME/vagrant/<label>."""

    def __init__(self, settings: Settings, box: Box, provider: str = "", cpus: int = 0, memory: int = 0) -> None:
        self.settings = settings
        self.box = box
        self.provider = provider
        self.cpus = cpus
        self.memory = memory
        self.directory = settings.vagrant / box.label

    def environment(self) -> Dict[str, str]:
        """vagrant's environment: the user's (VAGRANT_*, HOME, proxies), this VM's directory, no colours."""
        return self.settings.child_env(VAGRANT_CWD=str(self.directory), VAGRANT_NO_COLOR="1")

    def vagrant(self, args: Sequence[str], *, check: bool = True, capture: bool = True, stdin: Any = subprocess.DEVNULL,
                what: str = "", timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        """Run vagrant for this VM, to its end."""
        require_tool("vagrant")
        return run(["vagrant", *args], check=check, capture=capture, stdin=stdin, env=self.environment(),
                   timeout=timeout, what=what or "vagrant %s" % " ".join(args[:1]))

    def write_vagrantfile(self) -> Path:
        """Write the VM's Vagrantfile from postroj's template."""
        ensure_dir(self.directory, 0o700)
        path = self.directory / "Vagrantfile"
        path.write_text(vagrantfile_text(self.box, self.cpus, self.memory))
        return path

    def up(self) -> None:
        """Write the Vagrantfile and `vagrant up`; a failed boot shows vagrant's last lines."""
        self.write_vagrantfile()
        args = ["up", "--no-tty"] + (["--provider=%s" % self.provider] if self.provider else [])
        proc = self.vagrant(args, check=False)
        if proc.returncode != 0:
            die("vagrant up %s failed with exit code %d:\n%s" % (self.box.label, proc.returncode, vagrant_tail(proc)),
                "see `vagrant up` in %s" % self.directory)

    def execute(self, command: str, *, stdout: Any = None, stderr: Any = None, stdin: Any = subprocess.DEVNULL,
                timeout: Optional[float] = None, shell: str = "powershell") -> int:
        """Run `command` in the VM (ssh on Linux, winrm and `shell` on Windows); returns its exit status.

        Its output is passed on a line at a time as it comes, without escape sequences: an installer
        that runs for minutes shows its progress.
        """
        args = COMMUNICATORS[self.box.communicator](command, shell)
        started = time.monotonic()
        with spawn([require_tool("vagrant"), *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   env=self.environment()) as proc:
            pump_lines({proc.stdout: stdout or sys.stdout, proc.stderr: stderr or sys.stderr}, timeout,
                       "vagrant %s" % args[0])
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            if not wait_exit(proc, left):
                raise TimedOut("vagrant %s did not finish within %s s" % (args[0], timeout))
        return proc.returncode

    def capture(self, command: str, timeout: Optional[float] = None) -> Tuple[int, str]:
        """The exit status of `command` in the VM, and what it printed."""
        out = _StringSink()
        code = self.execute(command, stdout=out, stderr=out, timeout=timeout)
        return code, out.text().strip()

    def destroy(self) -> None:
        """`vagrant destroy`, then the directory; when vagrant fails, the Vagrantfile stays for another try."""
        if (self.directory / "Vagrantfile").exists():
            proc = self.vagrant(["destroy", "--force"], check=False)
            if proc.returncode != 0:
                die("vagrant destroy %s failed with exit code %d; the machine may still exist:\n%s" % (
                    self.box.label, proc.returncode, vagrant_tail(proc)),
                    "try again with `postroj vm destroy %s`, or see `vagrant destroy` in %s" % (
                        self.box.label, self.directory))
        remove_tree(self.directory)

    def destroy_or_warn(self) -> bool:
        """destroy(), for clean-up paths: a failure is logged, not raised; False when the VM may remain."""
        try:
            self.destroy()
            return True
        except PostrojError as exc:
            log.error("%s (%s)", exc.message, exc.hint)
            return False

    def status(self) -> str:
        """vagrant's state of the VM (running, poweroff, not created...)."""
        if not (self.directory / "Vagrantfile").exists():
            return "not created"
        proc = self.vagrant(["status", "--machine-readable"], check=False)
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            parts = line.split(",")
            if len(parts) >= 4 and parts[2] == "state":
                return parts[3]
        return "unknown"


def list_vms(settings: Settings) -> List[str]:
    """The labels of the VMs postroj has a Vagrantfile for."""
    if not settings.vagrant.is_dir():
        return []
    return sorted(p.name for p in settings.vagrant.iterdir() if (p / "Vagrantfile").exists())


def vagrant_plugins(settings: Settings) -> List[str]:
    """Names of the plugins vagrant has (`vagrant plugin list`), empty when it cannot tell."""
    if not shutil.which("vagrant"):
        return []
    try:
        out = run(["vagrant", "plugin", "list"], check=False, capture=True, timeout=60,
                  env=settings.child_env()).stdout.decode(
            "utf-8", "replace")
    except (OSError, PostrojError):
        return []
    return [line.split()[0] for line in out.splitlines() if line.startswith("vagrant-")]


def vagrant_providers(settings: Settings) -> List[str]:
    """Providers vagrant can use here, from its plugin list and the hypervisors on PATH."""
    found = []
    if shutil.which("VBoxManage"):
        found.append("virtualbox")
    plugins = vagrant_plugins(settings)
    for provider in ("libvirt", "vmware_desktop", "parallels", "hyperv"):
        if "vagrant-" + provider.replace("_", "-") in plugins:
            found.append(provider)
    if "docker" not in found and shutil.which("docker"):
        found.append("docker")
    return found


# Providers that are a hypervisor on PATH, not a plugin: what brings each (the others are vagrant plugins)
PROVIDER_PROGRAMS = {"virtualbox": ("VBoxManage", "VirtualBox (apt-get install virtualbox, from Oracle's or "
                                                  "the distribution's contrib archive)"),
                     "docker": ("docker", "Docker (apt-get install docker.io)")}


def provider_hint(provider: str) -> str:
    """How to make `provider` available: its hypervisor for virtualbox and docker, its plugin for the others."""
    if provider in PROVIDER_PROGRAMS:
        program, what = PROVIDER_PROGRAMS[provider]
        return "the %s provider needs %s, whose %s is not on PATH" % (provider, what, program)
    return "install the plugin: vagrant plugin install vagrant-%s" % provider.replace("_", "-")


def check_provider(settings: Settings, provider: str) -> None:
    """Refuse a --provider vagrant cannot use here, before anything is written or booted."""
    if not provider:
        return
    providers = vagrant_providers(settings)
    if provider in PROVIDER_PROGRAMS and provider not in providers:  # its hypervisor is missing: no plugin helps
        die("vagrant cannot use the %s provider here" % provider,
            "%s%s" % (provider_hint(provider), "; available: %s" % ", ".join(providers) if providers else ""),
            usage=True)
    if providers and provider not in providers and "vagrant-" + provider.replace("_", "-") not in \
            vagrant_plugins(settings):
        die("vagrant has no provider %r here" % provider,
            "available: %s; %s" % (", ".join(providers), provider_hint(provider)), usage=True)


# ==============================================================================
# Lifecycle engine
# ==============================================================================

# A package's life in a system under test, in the order data flows: the plan and its stages, the system
# interface (System), the package managers, the packages of a run, transactions, checks, the baseline and
# purge comparison, dependency layers, and live(), the stage loop (README: Design).


def parse_network_target(url: str) -> str:
    """Check a --check-network URL: tcp://HOST:PORT, http:// or https://, ports 1 to 65535, a host name or
    address without spaces, escapes or controls."""
    try:
        parsed = urllib.parse.urlparse(url)
        check_bracketed_host(parsed.netloc)
        port = parsed.port
    except ValueError as exc:
        if "out of range" in str(exc).lower():
            die("port out of range in --check-network %r" % url, "ports are 1 to 65535", usage=True)
        if "port" in str(exc).lower():
            port_text = urllib.parse.urlparse(url).netloc.rpartition(":")[2]
            die("the port %r in --check-network %r is not a number" % (port_text, url),
                "write tcp://HOST:PORT with a port from 1 to 65535", usage=True)
        die("malformed URL in --check-network %r: %s" % (url, exc), "write tcp://HOST:PORT or "
            "http://HOST[:PORT]/PATH", usage=True)
    if parsed.scheme not in ("tcp", "http", "https") or not parsed.hostname:
        die("unsupported --check-network %r" % url, "use tcp://HOST:PORT, http://HOST[:PORT]/PATH or https://...",
            usage=True)
    if "[" not in parsed.netloc and not re.fullmatch(r"[A-Za-z0-9._-]+", parsed.hostname):  # [IPv6] is checked
        die("malformed URL in --check-network %r: the host is not a name or an address" % url,
            "write tcp://HOST:PORT or http://HOST[:PORT]/PATH, e.g. http://localhost:8080/", usage=True)
    if parsed.scheme == "tcp" and port is None:
        die("no port in %r" % url, "write tcp://HOST:PORT", usage=True)
    if port is not None and not 1 <= port <= 65535:
        die("port out of range in %r" % url, "ports are 1 to 65535", usage=True)
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        die("malformed URL in --check-network %r: it holds a space or a control character" % url,
            "escape spaces in the path as %20", usage=True)
    return url


def package_type(path: str) -> str:
    """The kind of package a file name says: deb, rpm, msi or pkg ('' for none)."""
    lower = path.lower()
    for suffix, kind in ((".deb", "deb"), (".rpm", "rpm"), (".msi", "msi"), (".pkg.tar.zst", "pkg")):
        if lower.endswith(suffix):
            return kind
    return ""


def check_package_file(path: Path) -> str:
    """The kind of a local package file (deb, rpm, msi), refusing what is not one."""
    kind = package_type(path.name)
    try:
        st = path.stat()
    except FileNotFoundError:
        die("package %s does not exist" % path, "check the path", usage=True)
    except OSError as exc:  # ELOOP, ENAMETOOLONG, EACCES on a directory on the way
        problem = "is a symlink loop" if exc.errno == 40 else "cannot be reached: %s" % (exc.strerror or exc)
        die("package %s %s" % (path, problem), "give the path of a package file", usage=True)
    if stat.S_ISDIR(st.st_mode):
        die("package %s is a directory" % path, "give a package file (.deb, .rpm, .msi), not its directory",
            usage=True)
    if not stat.S_ISREG(st.st_mode):
        die("package %s is not a regular file" % path, "give a package file (.deb, .rpm, .msi)", usage=True)
    if not os.access(path, os.R_OK):
        die("cannot read package %s" % path, "check its permissions", usage=True)
    with open(path, "rb") as handle:
        head = handle.read(21)
    magic = {"deb": b"!<arch>\ndebian-binary", "rpm": b"\xed\xab\xee\xdb", "msi": b"\xd0\xcf\x11\xe0"}
    if not kind or (kind in magic and not head.startswith(magic[kind])):
        die("%s is not a package (.deb, .rpm, .msi)" % path, "give a package file built for the image", usage=True)
    return kind


class PackageIdentity(NamedTuple):
    """What a package file says it is: its name and version (EPOCH:VERSION-RELEASE for an RPM)."""

    name: str
    version: str


def package_identity(path: Path, kind: str) -> Optional[PackageIdentity]:
    """The name and version of a local .deb or .rpm, read on the host as data (bounded, nothing run but a zstd
    decompressor for a control member compressed so): None where this host cannot read it (a zstd member
    without zstd, another kind of package); a file that is cut short or malformed is a usage error."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if kind == "deb":
                return deb_identity(handle, size, str(path))
            if kind == "rpm":
                return rpm_identity(handle, size, str(path))
    except (OSError, ValueError, EOFError, KeyError) as exc:
        die("%s is not a whole package: %s" % (path, exc), "give the package file as it was built (a download "
            "cut short, or a file still being written, is refused)", usage=True)
    return None


def deb_identity(handle: IO[bytes], size: int, path: str) -> Optional[PackageIdentity]:
    """A .deb's Package and Version, from the control member of its ar archive; every member must lie whole
    within the file."""
    import io
    import tarfile

    if handle.read(8) != b"!<arch>\n":
        raise ValueError("no ar archive")
    members: Dict[str, Tuple[int, int]] = {}
    offset = 8
    while offset < size:
        handle.seek(offset)
        header = handle.read(60)
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ValueError("a member header at byte %d is cut short" % offset)
        name, length = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
        if offset + 60 + length > size:
            raise ValueError("its member %s ends at byte %d, past the file's end (%d bytes)" % (
                name, offset + 60 + length, size))
        members[name] = (offset + 60, length)
        offset += 60 + length + (length & 1)
    control = [n for n in members if n.startswith("control.tar")]
    if not control or not any(n.startswith("data.tar") for n in members):
        raise ValueError("it has no control or no data member")
    start, length = members[control[0]]
    if length > READ_MAX:
        raise ValueError("its control member is %d bytes" % length)
    handle.seek(start)
    data = handle.read(length)
    suffix = control[0][len("control.tar"):]
    if suffix == ".zst":
        if not shutil.which("zstd"):
            return None
        data = run(["zstd", "-dc"], input=data, capture=True, env=dict(PLAIN_ENV), timeout=60,
                   what="zstd decompressing the control member of %s" % path).stdout
    elif suffix in (".gz", ".xz", ".bz2"):
        import bz2
        import gzip
        import lzma

        data = {".gz": gzip.decompress, ".xz": lzma.decompress, ".bz2": bz2.decompress}[suffix](data)
    elif suffix:
        raise ValueError("its control member is %s" % control[0])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.name in ("./control", "control") and m.isfile())
        extracted = tar.extractfile(member)
        text = extracted.read(READ_MAX).decode("utf-8", "replace") if extracted else ""
    fields = dict(re.findall(r"(?m)^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$", text))
    return PackageIdentity(fields["Package"].strip(), fields["Version"].strip())


def rpm_identity(handle: IO[bytes], size: int, path: str) -> PackageIdentity:
    """An RPM's name and EPOCH:VERSION-RELEASE from its header; the signature's size of header and payload
    must fit in the file."""
    lead = handle.read(96)
    if len(lead) < 96 or lead[:4] != b"\xed\xab\xee\xdb":
        raise ValueError("no RPM lead")

    def header() -> Tuple[Dict[int, Tuple[int, int, int]], bytes]:
        intro = handle.read(16)
        if len(intro) < 16 or intro[:4] != b"\x8e\xad\xe8\x01":
            raise ValueError("a header is cut short")
        count, store = int.from_bytes(intro[8:12], "big"), int.from_bytes(intro[12:16], "big")
        if count > 1 << 16 or store > READ_MAX:
            raise ValueError("a header of %d entries and %d bytes" % (count, store))
        index, data = handle.read(16 * count), handle.read(store)
        if len(index) < 16 * count or len(data) < store:
            raise ValueError("a header is cut short")
        entries = {int.from_bytes(index[i:i + 4], "big"): (int.from_bytes(index[i + 4:i + 8], "big"),
                                                           int.from_bytes(index[i + 8:i + 12], "big"),
                                                           int.from_bytes(index[i + 12:i + 16], "big"))
                   for i in range(0, 16 * count, 16)}
        return entries, data

    signature, signed = header()
    handle.seek((handle.tell() + 7) // 8 * 8)  # the signature is padded to 8 bytes
    after_signature = handle.tell()
    if 1000 in signature:  # RPMSIGTAG_SIZE: the header and the payload
        _, at, _ = signature[1000]
        whole = after_signature + int.from_bytes(signed[at:at + 4], "big")
        if whole > size:
            raise ValueError("its header and payload end at byte %d, past the file's end (%d bytes)" % (whole, size))
    entries, data = header()

    def text(tag: int) -> str:
        _, at, _ = entries[tag]
        return data[at:data.index(b"\0", at)].decode("utf-8", "replace")

    epoch = int.from_bytes(data[entries[1003][1]:entries[1003][1] + 4], "big") if 1003 in entries else 0
    return PackageIdentity(text(1000), "%d:%s-%s" % (epoch, text(1001), text(1002)))


def package_matches(kind: str, manager: str) -> bool:
    """True when a package of `kind` installs with `manager` (.msi: on Windows VMs)."""
    return kind == "msi" or (manager in tuple(ManagerName) and package_manager(manager).package_type == kind)


# What a unit's check reads (systemctl show), and the states it waits out
UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "NRestarts", "InvocationID", "UnitFileState",
                   "ActiveEnterTimestampMonotonic")
UNIT_TRANSITIONS = ("activating", "deactivating", "reloading", "refreshing")
# Seconds a unit must have been active, without a restart, to pass (README: Lifecycle): a service that
# crashes and is restarted (Restart=) reads "active" between its restarts
UNIT_SETTLE = 2.0


class Repository(NamedTuple):
    """A vendor's package repository (--repo, --repo-key), added in each container of an image as its install
    instructions say: its signing key where the entry's signed-by points, the entry in a sources file."""

    entry: str  # a one-line `deb [OPTIONS] URL SUITE COMPONENT...`, or a deb822 stanza
    deb822: bool
    url: str  # its URL, for messages and results
    key: str = ""  # the signing key's path on the host ('' for none: apt must verify it by other keys)
    key_path: str = ""  # where the key goes in the container (its signed-by)
    only: str = ""  # the image it is for ('' for every image)

    def for_image(self, name: str) -> bool:
        """True when the repository is added on the image `name`."""
        return not self.only or canonical_image(self.only) == canonical_image(name)

    def sources_name(self, index: int) -> str:
        """The sources file it is written to in the container."""
        return "/etc/apt/sources.list.d/postroj-repo-%d.%s" % (index, "sources" if self.deb822 else "list")


class ProbePlan(NamedTuple):
    """All probes of a run, in their order, with their timeouts, and the stages of the packages' life:
    `upgrade_from` ("archive", or package files) first, then the packages, then the release upgrades, a reboot,
    remove and purge."""

    probes: Tuple[Probe, ...]
    timeout: float = 30
    boot_timeout: float = 30
    private_network: bool = True
    fail_fast: bool = False
    install_timeout: float = 600
    upgrade_from: Tuple[str, ...] = ()
    reboot: bool = False
    remove: bool = False
    purge: bool = False
    start_units: bool = False
    recommends: bool = True
    fresh: bool = False  # no dependency layer: every dependency installed in the probe's own container
    ignore: Tuple[str, ...] = ()  # paths (with what is below them) purge does not compare: --ignore
    settle: float = UNIT_SETTLE  # seconds a checked unit must have been up without a restart
    repos: Tuple[Repository, ...] = ()  # vendors' repositories added before the downloads (--repo)
    keep_on_failure: bool = False  # a booted container whose probes failed is left running for a look
    release_upgrade: Tuple[str, ...] = ()  # the releases (catalogue labels) the system is upgraded to, in order
    # the packages built for a release of `release_upgrade` (--package TARGET=FILE), installed after it
    release_packages: Tuple[Probe, ...] = ()

    def stages(self) -> List[Tuple[Stage, str]]:
        """The stages of one image, in order, each with the release it upgrades to ('' for any other stage)."""
        packaged = any(p.kind == ProbeKind.PACKAGE for p in self.probes)
        stages = [Stage.INSTALLED, Stage.UPGRADED] if packaged and self.upgrade_from else \
            [Stage.INSTALLED] if packaged else [Stage.BOOTED]
        named = [(stage, "") for stage in stages] + [(Stage.RELEASE_UPGRADED, t) for t in self.release_upgrade]
        stages = [Stage.REBOOTED] if self.reboot else []
        stages += [Stage.REMOVED] if packaged and (self.remove or self.purge) else []
        stages += [Stage.PURGED] if packaged and self.purge else []
        return named + [(stage, "") for stage in stages]

    def packages_for(self, release: str) -> List[Probe]:
        """The packages built for `release` (--package RELEASE=FILE), installed after the upgrade to it."""
        return [p for p in self.release_packages if canonical_image(p.only) == canonical_image(release)]


# What the live status line says an image is doing in each stage
STAGE_DOING = {Stage.BOOTED: "probing", Stage.INSTALLED: "installing", Stage.UPGRADED: "upgrading",
               Stage.RELEASE_UPGRADED: "upgrading the release", Stage.REBOOTED: "rebooting", Stage.REMOVED: "removing", Stage.PURGED: "purging"}


UPGRADE_FROM_ARCHIVE = "archive"


def stage_probes(plan: ProbePlan, stage: Stage, packages: Optional[Packages], release: str = "") -> List[Probe]:
    """What a stage reports on: its step and its checks (for the rows of a stage that is skipped)."""
    if stage == Stage.INSTALLED and plan.upgrade_from:
        found = [Probe(ProbeKind.PACKAGE, s) for s in plan.upgrade_from]
    elif stage == Stage.RELEASE_UPGRADED:
        found = [Probe(ProbeKind.RELEASE, release)] + plan.packages_for(release)
    elif stage == Stage.REBOOTED:
        found = [Probe(ProbeKind.REBOOT, "the container")]
    else:
        found = list(packages.probes) if packages and stage != Stage.BOOTED else []
    installed = stage not in (Stage.REMOVED, Stage.PURGED)
    found += [p for p in plan.probes if p.kind != ProbeKind.PACKAGE and (installed or p.kind == ProbeKind.UNIT)]
    if stage == Stage.REMOVED:
        found += [Probe(ProbeKind.LEFTOVER, "processes"), Probe(ProbeKind.LEFTOVER, "units")]
    elif stage == Stage.PURGED:
        found += [Probe(ProbeKind.LEFTOVER, "files"), Probe(ProbeKind.LEFTOVER, "processes")]
    return found


# --- the system under test, and its package manager --------------------------------------


class System(Protocol):
    """What the lifecycle (live(): its stages, checks and purge comparison) asks of the system under test:
    a booted container (NspawnContainer) or a Linux VM (VmSystem); the unit tests' scripted fake too."""

    @property
    def image(self) -> ImageInfo:
        """The image (or box) it runs."""

    @property
    def layer(self) -> Optional["Layer"]:
        """The dependency layer below it (a container's), or None."""

    @property
    def listed_whole(self) -> bool:
        """entries() list the whole file system (a VM), not what an overlay changed."""

    @property
    def what(self) -> str:
        """What it is, for messages: the container, the VM."""

    @property
    def manager(self) -> PackageManager:
        """Its package manager."""

    def run_captured(self, argv: Sequence[str], timeout: Optional[float] = 30) -> Tuple[int, str]:
        """The exit status of `argv` run as root in it, and what it printed."""

    def ended(self) -> bool:
        """True once it has stopped or begun to."""

    def journal_tail(self, lines: int = 30, unit: str = "", since: float = 0) -> str:
        """Its last journal lines (of `unit`, since the time `since`)."""

    def power_cycle(self) -> None:
        """Reboot as a machine reboots."""

    def boot_state(self) -> str:
        """How its boot ended (systemctl is-system-running)."""

    def clock(self) -> float:
        """Seconds on the clock of its systemd's monotonic timestamps (ActiveEnterTimestampMonotonic)."""

    def check(self, probe: Probe, timeout: float) -> ProbeResult:
        """Run one check (copy, unit, network, command) in it."""

    def entries(self) -> Dict[str, str]:
        """What it changed: path -> EntryKind."""

    def baseline_entries(self) -> Dict[str, str]:
        """What it changed before any install (purge's comparison)."""

    def fingerprints(self) -> Dict[str, Fingerprint]:
        """The fingerprints of what the last entries() listed that it changed itself ({}: none known)."""

    def difference(self, path: str, kind: str, against: Optional[Path] = None) -> Optional[str]:
        """How `path` differs from the image's (or from the overlay directory `against`: a release upgrade's
        reference), in words: None where it has no such path, '' where it has it as it is now."""


# How identify()'s lines start: they share the run's output with the package manager's.
IDENTIFIED = "postroj-package"
# The line before the apt download whose lists say what its install resolves to, and those lists' titles
RESOLVING = "postroj-resolving"
RESOLVED_LISTS = ("The following NEW packages will be installed:", "The following packages will be upgraded:",
                  "The following packages will be DOWNGRADED:")


class PackageManager:
    """What postroj asks of a distribution's package manager, each verb as the argv run in the system under
    test (README: Lifecycle); one subclass per family. A verb that has nothing to do in a family is []."""

    command = ""
    package_type = ""  # the package files it installs: deb, rpm, pkg
    systemd: Tuple[str, ...] = ()  # what provisioning installs for a booted system
    archives = ""  # where it downloads to when autopkgtest runs it in a testbed ('' for none)
    keeps_lists = False  # package lists refreshed once and kept while current (lists_current): apt's

    def on_machine(self) -> "PackageManager":
        """The package manager for a whole machine (a VM): the same, it locks as it always does."""
        return self

    def refresh(self) -> List[str]:
        """Refresh the package lists; [] where installs refresh them themselves."""
        return []

    def resolve(self) -> List[str]:
        """Mark the download that follows as the one resolved() reads; [] where it names no versions."""
        return []

    def install(self, packages: Sequence[str], cached: bool = False, recommends: bool = True) -> List[str]:
        """Install names or package files with their dependencies (`cached`: from the package cache alone)."""
        raise NotImplementedError

    def download(self, packages: Sequence[str], recommends: bool = True) -> List[str]:
        """Download what installing `packages` takes, installing nothing."""
        raise NotImplementedError

    def install_without(self, packages: Sequence[str], without: Sequence[str], simulate: bool = False) -> List[str]:
        """Install `packages` from the cache and nothing else, never `without` (dependency layers: apt's)."""
        raise NotImplementedError

    def installed_as_dependencies(self, names: Sequence[str]) -> List[str]:
        """Mark installed packages as installed for others' sake (dependency layers: apt's)."""
        raise NotImplementedError

    def installed_by_hand(self, names: Sequence[str]) -> List[str]:
        """Mark installed packages as installed by hand, which purge's autoremove keeps; [] where it has no such
        mark."""
        return []

    def remove(self, names: Sequence[str]) -> List[str]:
        """Remove the packages."""
        raise NotImplementedError

    def purge(self, names: Sequence[str]) -> List[str]:
        """Remove the packages with their configuration."""
        raise NotImplementedError

    def identify(self, paths: Sequence[str]) -> List[str]:
        """Print `postroj-package TAB NAME TAB VERSION` for each package file."""
        raise NotImplementedError

    def files(self, names: Sequence[str]) -> List[str]:
        """List the files of installed packages, one a line."""
        raise NotImplementedError

    def installed(self) -> List[str]:
        """Print the name of every installed package."""
        raise NotImplementedError

    def versions(self, names: Sequence[str]) -> List[str]:
        """Print `NAME TAB VERSION` of each installed package of `names` (versions as identify() prints them)."""
        raise NotImplementedError

    def available(self, names: Sequence[str]) -> List[str]:
        """List the versions the package sources carry of `names` with their suites (apt-cache madison); []
        where the family has no such listing (--upgrade-from archive then takes what an install would)."""
        return []


class Apt(PackageManager):
    """Debian's and Ubuntu's apt and dpkg: remove keeps a package's configuration files, purge deletes them."""

    command = "apt-get"
    package_type = "deb"
    systemd = ("systemd", "systemd-sysv", "dbus")
    archives = "/var/cache/apt/archives"  # where apt downloads to when autopkgtest runs it in a testbed
    keeps_lists = True

    def __init__(self, locking: bool = False) -> None:
        # in a booted container the shared cache is only read, without apt's locks (APT_FROM_CACHE); a VM's
        # own apt (unattended-upgrades) may run beside postroj's, so there apt locks as it always does
        self.from_cache = () if locking else APT_FROM_CACHE

    def on_machine(self) -> "Apt":
        """The package manager for a whole machine (a VM), where other runs of it may happen at the same time."""
        return Apt(locking=True)

    def refresh(self) -> List[str]:
        """Refresh the package lists (-qq: errors and warnings only)."""
        return ["apt-get", *APT_OPTIONS, "-qq", "update"]

    def install(self, packages: Sequence[str], cached: bool = False, recommends: bool = True) -> List[str]:
        """Install names or package files with their dependencies, and what they recommend as `apt install`
        does (-q: no progress lines, errors kept); `cached`: from the package cache alone, in a booted
        container."""
        return [*APT_NONINTERACTIVE, *APT_OPTIONS, *(self.from_cache if cached else ()), "-q", "install", "-y",
                *([] if recommends else ["--no-install-recommends"]), *packages]

    def download(self, packages: Sequence[str], recommends: bool = True) -> List[str]:
        """Download what installing `packages` takes into the package cache, installing nothing; apt's lists of
        what the install would bring name each package with its version (resolved() reads them: in apt's
        own words, whatever locale the image sets)."""
        return ["env", "LC_ALL=C", "apt-get", *APT_OPTIONS, "-o", "APT::Get::Show-Versions=1", "-q", "install", "-y",
                "--download-only", *([] if recommends else ["--no-install-recommends"]), *packages]

    def resolve(self) -> List[str]:
        """Mark the output of the download that follows as the one resolved() reads (its simulation, `apt-get
        -s`, would say the same in twice the time: it orders the whole install)."""
        return ["echo", RESOLVING]

    def install_without(self, packages: Sequence[str], without: Sequence[str], simulate: bool = False) -> List[str]:
        """Install `packages` from the package cache and nothing else (no recommends), never `without` (a
        package that needs one of them cannot be installed: apt names it); `simulate`: say what it would do."""
        return [*APT_NONINTERACTIVE, *APT_OPTIONS, *self.from_cache, "-q", *(["-s"] if simulate else []), "install",
                "-y", "--no-install-recommends", *packages, *("%s-" % name for name in without)]

    def installed_as_dependencies(self, names: Sequence[str]) -> List[str]:
        """Mark installed packages as installed for others' sake: apt removes them with the last that needs them."""
        return ["apt-mark", "auto", *names]

    def installed_by_hand(self, names: Sequence[str]) -> List[str]:
        """Mark installed packages as installed by hand: apt's autoremove keeps them."""
        return ["apt-mark", "-q", "manual", *names]

    def remove(self, names: Sequence[str]) -> List[str]:
        """Remove the packages; their configuration files stay."""
        return [*APT_NONINTERACTIVE, *APT_OPTIONS, *self.from_cache, "-q", "remove", "-y", *names]

    def purge(self, names: Sequence[str]) -> List[str]:
        """Purge the packages and what was installed only for them."""
        return [*APT_NONINTERACTIVE, *APT_OPTIONS, *self.from_cache, "-q", "purge", "-y", "--autoremove", *names]

    def identify(self, paths: Sequence[str]) -> List[str]:
        """Print `postroj-package TAB NAME TAB VERSION` for each package file (marked: the lines share their
        output with the package manager's)."""
        script = 'for f; do dpkg-deb --show --showformat="%s\\t\\${Package}\\t\\${Version}\\n" "$f" || exit; done' \
            % IDENTIFIED
        return ["sh", "-c", script, "sh", *paths]

    def files(self, names: Sequence[str]) -> List[str]:
        """List the files of installed packages, one a line."""
        return ["dpkg", "-L", *names]

    def versions(self, names: Sequence[str]) -> List[str]:
        """Print `NAME TAB VERSION` of each installed package of `names`."""
        return ["dpkg-query", "-W", "-f=${Package}\\t${Version}\\n", *names]

    def available(self, names: Sequence[str]) -> List[str]:
        """`NAME | VERSION | URL SUITE/COMPONENT ARCH Packages` of each version the package lists carry."""
        return ["apt-cache", *APT_OPTIONS, "madison", *names]

    def installed(self) -> List[str]:
        """Print the name of every package dpkg knows (installed, or removed with its configuration kept)."""
        return ["sh", "-c", "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' | awk 'substr($1, 2, 1) != \"n\" "
                "{ print $2 }'"]


def resolved(output: str) -> Tuple[str, ...]:
    """NAME=VERSION (NAME:ARCH=VERSION for another architecture's) of each package the apt download after the
    RESOLVING line would install, upgrade or downgrade, from apt's lists of them (Show-Versions: one a line,
    `NAME (VERSION)` or `NAME (OLD => VERSION)`), sorted; () without that line."""
    lines = ("\n" + output.replace("\r\n", "\n")).split("\n%s\n" % RESOLVING, 1)  # nspawn's terminal: CR LF
    found, listing = set(), False
    for line in lines[1].splitlines() if len(lines) == 2 else []:
        if not line.startswith(" "):
            listing = line.startswith(RESOLVED_LISTS)
            continue
        match = re.fullmatch(r"\s+(\S+) \((?:\S+ => )?(\S+)\)", line)
        if listing and match:
            found.add("%s=%s" % match.groups())
    return tuple(sorted(found))


class Rpm(PackageManager):
    """What the RPM families share: rpm queries package files and installed packages."""

    def identify(self, paths: Sequence[str]) -> List[str]:
        """Print `postroj-package TAB NAME TAB EPOCH:VERSION-RELEASE` for each package file."""
        return ["rpm", "-qp", "--qf", IDENTIFIED + "\\t%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", *paths]

    def files(self, names: Sequence[str]) -> List[str]:
        """List the files of installed packages, one a line."""
        return ["rpm", "-ql", *names]

    def versions(self, names: Sequence[str]) -> List[str]:
        """Print `NAME TAB EPOCH:VERSION-RELEASE` of each installed package of `names`."""
        return ["rpm", "-q", "--qf", "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", *names]

    def installed(self) -> List[str]:
        """Print the name of every installed package."""
        return ["rpm", "-qa", "--qf", "%{NAME}\\n"]


class Dnf(Rpm):
    """Fedora's and Red Hat's dnf (and yum, which takes the same options): remove is a purge."""

    command = "dnf"
    package_type = "rpm"
    systemd = ("systemd", "dbus", "procps-ng")
    archives = ""  # autopkgtest installs test dependencies with apt only

    def __init__(self, command: str = "dnf") -> None:
        self.command = command

    def base(self, recommends: bool = True) -> List[str]:
        """The command with the package cache in postroj's cache; weak dependencies as dnf's default, or none."""
        return [self.command, "-y", "-q", "--setopt=keepcache=1", "--setopt=cachedir=%s" % PACKAGE_CACHE_DIR,
                *([] if recommends else ["--setopt=install_weak_deps=0"])]

    def install(self, packages: Sequence[str], cached: bool = False, recommends: bool = True) -> List[str]:
        """Install names or package files with their dependencies (`cached`: from the cache alone)."""
        return self.base(recommends) + (["--cacheonly"] if cached else []) + ["install", *packages]

    def download(self, packages: Sequence[str], recommends: bool = True) -> List[str]:
        """Download what installing `packages` takes, installing nothing."""
        return self.base(recommends) + ["install", "--downloadonly", *packages]

    def remove(self, names: Sequence[str]) -> List[str]:
        """Remove the packages (and what only they needed)."""
        return self.base() + ["--cacheonly", "remove", *names]

    purge = remove


class Microdnf(Dnf):
    """The minimal dnf of UBI and other small images."""

    def __init__(self) -> None:
        super().__init__("microdnf")

    def base(self, recommends: bool = True) -> List[str]:
        """microdnf takes fewer options: the cache is kept where it is."""
        return ["microdnf", "-y", "--setopt=keepcache=1", "--nodocs",
                *([] if recommends else ["--setopt=install_weak_deps=0"])]

    def download(self, packages: Sequence[str], recommends: bool = True) -> List[str]:
        """microdnf downloads as it installs: the metadata only, here."""
        return self.base() + ["makecache"]


class Zypper(Rpm):
    """SUSE's zypper: remove is a purge."""

    command = "zypper"
    package_type = "rpm"
    systemd = ("systemd", "dbus-1", "systemd-sysvinit")
    archives = ""  # autopkgtest installs test dependencies with apt only

    def base(self) -> List[str]:
        """zypper without questions, quiet, with its package cache in postroj's cache."""
        return ["zypper", "--non-interactive", "--quiet", "--pkg-cache-dir=%s" % PACKAGE_CACHE_DIR]

    def refresh(self) -> List[str]:
        """Refresh the repositories' metadata."""
        return ["zypper", "--non-interactive", "--quiet", "refresh"]

    def install(self, packages: Sequence[str], cached: bool = False, recommends: bool = True) -> List[str]:
        """Install names or package files with their dependencies (`cached`: without refreshing)."""
        return self.base() + (["--no-refresh"] if cached else []) + [
            "install", *([] if recommends else ["--no-recommends"]), "--allow-unsigned-rpm", *packages]

    def download(self, packages: Sequence[str], recommends: bool = True) -> List[str]:
        """Download what installing `packages` takes, installing nothing."""
        return self.base() + ["install", *([] if recommends else ["--no-recommends"]), "--allow-unsigned-rpm",
                              "--download-only", *packages]

    def remove(self, names: Sequence[str]) -> List[str]:
        """Remove the packages and what only they needed."""
        return self.base() + ["--no-refresh", "remove", "--clean-deps", *names]

    purge = remove


class Pacman(PackageManager):
    """Arch's pacman: -R keeps configuration files as .pacsave, -Rns removes them with unneeded dependencies."""

    command = "pacman"
    package_type = "pkg"
    systemd = ("systemd", "dbus")
    archives = ""  # autopkgtest installs test dependencies with apt only

    def base(self) -> List[str]:
        """pacman without questions or progress bars, its package cache in postroj's cache."""
        return ["pacman", "--noconfirm", "--noprogressbar", "--cachedir=%s" % PACKAGE_CACHE_DIR]

    def install(self, packages: Sequence[str], cached: bool = False, recommends: bool = True) -> List[str]:
        """Install names (from the repositories) or package files (-U) with their dependencies (pacman has
        no recommendations: optional dependencies are not installed)."""
        files = [p for p in packages if "/" in p]
        if files:
            return self.base() + ["-U", "--needed", *packages]
        return self.base() + (["-S"] if cached else ["-Sy"]) + ["--needed", *packages]

    def download(self, packages: Sequence[str], recommends: bool = True) -> List[str]:
        """Download what installing `packages` takes, installing nothing."""
        files = [p for p in packages if "/" in p]
        return self.base() + (["-Uw"] if files else ["-Syw"]) + ["--needed", *packages]

    def remove(self, names: Sequence[str]) -> List[str]:
        """Remove the packages; their changed configuration files stay as .pacsave."""
        return self.base() + ["-R", *names]

    def purge(self, names: Sequence[str]) -> List[str]:
        """Remove the packages, their configuration and the dependencies nothing else needs."""
        return self.base() + ["-Rns", *names]

    def identify(self, paths: Sequence[str]) -> List[str]:
        """Print `postroj-package TAB NAME TAB VERSION` for each package file."""
        script = 'found=$(pacman -Qp "$@") && printf "%%s\\n" "$found" | sed "s/^/%s\\t/; s/ /\\t/"' % IDENTIFIED
        return ["sh", "-c", script, "sh", *paths]

    def files(self, names: Sequence[str]) -> List[str]:
        """List the files of installed packages, one a line."""
        return ["pacman", "-Qlq", *names]

    def versions(self, names: Sequence[str]) -> List[str]:
        """Print `NAME TAB VERSION` of each installed package of `names`."""
        return ["sh", "-c", 'pacman -Q "$@" | tr " " "\\t"', "sh", *names]

    def installed(self) -> List[str]:
        """Print the name of every installed package."""
        return ["pacman", "-Qq"]


PACKAGE_MANAGERS: Dict[ManagerName, "PackageManager"] = {
    ManagerName.APT: Apt(),
    ManagerName.DNF: Dnf("dnf"),
    ManagerName.YUM: Dnf("yum"),
    ManagerName.MICRODNF: Microdnf(),
    ManagerName.ZYPPER: Zypper(),
    ManagerName.PACMAN: Pacman(),
}


def package_manager(name: str) -> "PackageManager":
    """The behaviour of the package manager `name` (an image's record), or an error that says which postroj
    knows."""
    try:
        return PACKAGE_MANAGERS[ManagerName(name)]
    except ValueError:
        die("no package manager postroj knows in the image (%r)" % name,
            "postroj supports %s" % ", ".join(ManagerName))


# --- the packages of a run, and transactions ---------------------------------------------


def materialize_packages(settings: Settings, probes: Sequence[Probe]) -> Dict[str, Path]:
    """Local paths of the packages: URLs downloaded into POSTROJ_CACHE/downloads first."""
    paths = {}
    for probe in probes:
        if probe.kind == ProbeKind.PACKAGE and not probe.by_name:
            if probe.target.startswith(("http://", "https://")):
                paths[probe.target] = download(probe.target, settings.downloads, proxies=settings.proxies)
                check_package_file(paths[probe.target])
            else:
                paths[probe.target] = Path(probe.target).absolute()
    return paths


# What apt and dnf say when the network, a mirror or the disk failed them (not a package or a source they lack)
UNREACHABLE = ("Could not connect", "Could not resolve", "Temporary failure resolving", "Connection failed",
               "Connection timed out", "Connection refused", "Unable to connect", "Network is unreachable",
               "502  Bad Gateway", "503  Service Unavailable", "504  Gateway Time-out", "Hash Sum mismatch",
               "No space left on device", "Cannot download repomd.xml", "Curl error (6)", "Curl error (7)",
               "Curl error (28)")


class DownloadFailed(PostrojError):
    """What the packages need could not be downloaded before the boot: the package manager's output says why."""

    def __init__(self, message: str, hint: str, output: str) -> None:
        super().__init__(message, hint)
        # what the package manager said, without postroj's own marker lines (RESOLVING, IDENTIFIED)
        self.output = "\n".join(line for line in output.splitlines()
                                 if line.strip() != RESOLVING and not line.startswith(IDENTIFIED + "\t"))
        # a server that did not answer or a full disk, not the package or its sources: the package was not tested
        self.untested = any(words in self.output for words in UNREACHABLE)


class Packages(NamedTuple):
    """The packages of one image's life, staged in the container's guest directory and named: `new` the
    --package files, `old` what --upgrade-from installs first (files, or names from the image's sources),
    `names` the packages' names, `probes` their probes."""

    new: Tuple[str, ...]
    old: Tuple[str, ...]
    names: Tuple[str, ...]
    probes: Tuple[Probe, ...]
    labels: Dict[str, str]  # a probe's target, or an --upgrade-from source -> NAME VERSION
    dependencies: Tuple[str, ...] = ()  # NAME[:ARCH]=VERSION the first install brings with it (apt's resolution)
    versions: Dict[str, str] = {}  # NAME -> the version of its --package file, which the upgrade must install
    old_versions: Dict[str, str] = {}  # NAME -> the version --upgrade-from installs first (a file's, the archive's)
    release_files: Dict[str, str] = {}  # a --package RELEASE=FILE's target -> the file in the container


def stage_files(container: NspawnContainer, directory: str, paths: Sequence[Path]) -> List[str]:
    """Copy package files into the container's guest directory; their paths in the container."""
    staged = ensure_dir(container.overlay_of().guest / directory)
    inner = []
    for path in paths:
        shutil.copyfile(path, staged / path.name)
        os.chmod(staged / path.name, 0o644)
        inner.append("%s/%s/%s" % (GUEST_RUNTIME, directory, path.name))
    return inner


def add_repositories(container: NspawnContainer, repos: Sequence[Repository]) -> List[str]:
    """The command that adds `repos` in the container as their instructions would (key, sources file), run
    inside it before the downloads, so that links of the image are the container's to resolve; [] for none."""
    if not repos:
        return []
    staged = ensure_dir(container.overlay_of().guest / "repos")
    script = ["set -e"]
    for index, repo in enumerate(repos, 1):
        (staged / ("%d.entry" % index)).write_text(repo.entry.rstrip("\n") + "\n")
        script.append('install -D -m 0644 %s/repos/%d.entry %s' % (GUEST_RUNTIME, index,
                                                                   shlex.quote(repo.sources_name(index))))
        if repo.key:
            shutil.copyfile(repo.key, staged / ("%d.key" % index))
            script.append('install -D -m 0644 %s/repos/%d.key %s' % (GUEST_RUNTIME, index,
                                                                     shlex.quote(repo.key_path)))
    return ["sh", "-c", "\n".join(script)]


def chain(*commands: Sequence[str]) -> List[str]:
    """One command that runs `commands` in turn while they succeed: one container run instead of several
    (the script is postroj's own; package paths are quoted)."""
    return ["sh", "-c", " && ".join(shlex.join(c) for c in commands if c)]


def prepare_packages(settings: Settings, image: ImageInfo, container: NspawnContainer, plan: ProbePlan,
                     packages: Dict[str, Path]) -> Packages:
    """Before the boot, with the host's network: stage the package files, read their names, refresh the
    lists and download all the stages install into the package cache. The cache's lock is held while the
    cache is written, and no longer: the installs read it in the booted containers."""
    probes = tuple(p for p in plan.probes if p.kind == ProbeKind.PACKAGE)
    new = stage_files(container, "packages", [packages[p.target] for p in probes if not p.by_name])
    old = stage_files(container, "old", [packages[s] for s in plan.upgrade_from if s != UPGRADE_FROM_ARCHIVE])
    later = stage_files(container, "release", [packages[p.target] for p in plan.release_packages])
    added = add_repositories(container, [r for r in plan.repos if r.for_image(image.name)])
    cache = package_cache_for(settings, Path(image.path))
    binds = [(str(cache), PACKAGE_CACHE_DIR)]
    waiting = "the package cache %s, which another probe of this release is writing" % cache
    with file_lock(cache / ".postroj.lock", waiting=waiting):
        manager = package_manager(image.package_manager)
        apt = manager.keeps_lists
        current = apt and not added and lists_current(settings, cache, image)
        if current:
            log.info("%s: the package lists are current (each suite's InRelease as apt verified it): not "
                     "refreshed", image.name)
        prepared = download_packages(lambda argv, what: container.run_in_overlay(argv, binds, plan.install_timeout,
                                                                               what=what),
                                     image, manager, plan, probes, new, old,
                                     layered=not container.host.upper_on_tmpfs, refresh=not current, added=added)
        if apt and not current and not added:
            note_refresh(cache, image)
        return prepared._replace(release_files={p.target: inner for p, inner in zip(plan.release_packages, later)})


def download_packages(run_step: Callable[[List[str], str], Tuple[int, str]], image: ImageInfo,
                      manager: PackageManager,
                      plan: ProbePlan, probes: Tuple[Probe, ...], new: List[str], old: List[str],
                      layered: bool = False, refresh: bool = True, added: Sequence[str] = ()) -> Packages:
    """Read the names of the staged package files `new` and `old`, refresh the lists (unless `refresh` is off:
    they are current) and download what the stages install, with `manager` and `run_step(argv, what)` (a
    container before its boot, or a VM): the Packages of the image's life; `layered`: with what the first
    install brings (apt's resolution, for a dependency layer). Packages named (--install) are resolved by
    the image's own sources: their versions are what apt would install."""
    named = [p.target for p in probes if p.by_name]
    sources = [p.target for p in probes if not p.by_name] + [s for s in plan.upgrade_from
                                                            if s != UPGRADE_FROM_ARCHIVE]
    wanted = new + named
    # one run: the files' names, then the lists (shared by the images of a release, whose sources may
    # differ), then the downloads, the first install's last: what it resolves to is read from its output
    resolve = manager.resolve() if (layered and not plan.fresh) or named else []
    code, output = run_step(chain(list(added), manager.identify(new + old) if new + old else [],
                                  manager.refresh() if refresh else [],
                                  manager.download(wanted, plan.recommends) if old else [], resolve,
                                  manager.download(old or wanted, plan.recommends)),
                            "downloading what the packages need")
    found = resolved(output)
    identified = [line.split("\t")[1:3] for line in output.splitlines() if line.startswith(IDENTIFIED + "\t")]
    if len(identified) != len(sources):
        die("cannot read the names of %s:\n%s" % (", ".join(os.path.basename(p) for p in new + old),
                                                  tail(output, 10)),
            "give packages the image's package manager installs")
    labels = {source: " ".join(found) for source, found in zip(sources, identified)}
    versions = dict((name, version) for name, version in identified[:len(new)])
    old_versions = dict((name, version) for name, version in identified[len(new):])
    chosen = {}
    for item in found:  # NAME[:ARCH]=VERSION
        name, _, version = item.partition("=")
        chosen[name.split(":", 1)[0]] = version
    for spec in named:  # NAME or NAME=VERSION, at the version apt resolved it to
        name, _, pinned = spec.partition("=")
        versions[name] = pinned or chosen.get(name, "")
        labels[spec] = ("%s %s" % (name, versions[name])).strip()
        if not versions[name]:
            del versions[name]  # not resolved (another package manager): not checked after the install
    names = tuple(dict.fromkeys([name for name, _version in identified[:len(new)]] +
                                [spec.partition("=")[0] for spec in named]))
    repos = [r for r in plan.repos if r.for_image(image.name)]
    said = [line.strip() for line in output.splitlines() if line.startswith(("E:", "W:", "Err:")) and
            any(r.url.rstrip("/") in line for r in repos)]
    if code != 0 and said:  # a repository apt refused: its signature, a suite it lacks for this release
        raise DownloadFailed("the repository %s on %s: %s" % (", ".join(r.url for r in repos), image.name, said[0]),
                             "check the repository's entry and key against its instructions (--repo, --repo-key)",
                             tail(output, 40))
    if code != 0:
        missing = [spec for spec in named if "Unable to locate package %s" % spec.partition("=")[0] in output]
        if missing:
            raise DownloadFailed("the package sources of %s do not carry %s" % (image.name, ", ".join(missing)),
                                 "--install takes a package of the image's own sources; give a file with --package",
                                 tail(output, 40))
        raise DownloadFailed("downloading what %s needs failed with exit code %d" % (", ".join(names), code),
                             "check the image's package sources and that this host reaches them", tail(output, 40))
    if UPGRADE_FROM_ARCHIVE in plan.upgrade_from:
        old = list(names)
        listing = manager.available(names)
        if listing:  # the release's own version: the oldest the sources carry where they carry several
            code, output = run_step(listing, "reading the versions the image's sources carry")
            old_versions = release_versions(image, output, versions)
            old = ["%s=%s" % item for item in old_versions.items()]
        for _attempt in range(6):  # the release's version may need its siblings at theirs (jq: libjq1, nginx:
            # nginx-common): each is pinned to the version of the release's own suite, as apt names them
            code, output = run_step(chain(resolve, manager.download(old, plan.recommends)),
                                    "downloading %s from the image's sources" % ", ".join(old))
            siblings = sorted(set(re.findall(r"(?m)^\s*\S+ : Depends: (\S+) \([<>=]+ \S+\) but \S+ is to be "
                                             r"installed", output)) - {p.partition("=")[0] for p in old})
            if code == 0 or not siblings or not listing:
                break
            _, carried = run_step(manager.available(siblings), "reading the versions the image's sources carry")
            pins = ["%s=%s" % (name, versions[0]) for name, versions in release_suite(carried).items() if versions]
            if not pins:
                break
            old += pins
        found = resolved(output)
        if code != 0:
            raise DownloadFailed("--upgrade-from archive: the package sources of %s do not carry %s" % (
                image.name, ", ".join(old)), "give the version to upgrade from as files: --upgrade-from OLD.deb",
                tail(output, 40))
        labels[UPGRADE_FROM_ARCHIVE] = ", ".join("%s %s" % item for item in old_versions.items())
    if repos and named and manager.available(names):  # which repository the named packages came from
        _, madison = run_step(manager.available([spec.partition("=")[0] for spec in named]),
                              "reading where the packages come from")
        for spec in named:
            name = spec.partition("=")[0]
            urls = [line.split("|")[2].split()[0] for line in madison.splitlines() if line.count("|") == 2 and
                    [f.strip() for f in line.split("|")[:2]] == [name, versions.get(name)]]
            if urls:
                labels[spec] += " from %s" % urls[0]
    dependencies = tuple(d for d in found if d.split("=", 1)[0].split(":", 1)[0] not in names)
    return Packages(tuple(wanted), tuple(old), names, probes, labels, dependencies, versions, old_versions)


def release_versions(image: ImageInfo, madison: str, versions: Dict[str, str]) -> Dict[str, str]:
    """The version --upgrade-from archive installs of each package (`versions`: the --package files'): the one
    of the release's own suite (bookworm, noble: not -updates, -security, -backports), else the oldest the
    sources carry; it must be older than the file's, or there is nothing to upgrade from (DownloadFailed)."""
    carried = madison_versions(madison)
    releases = release_suite(madison)
    chosen = {}
    for name, new in versions.items():
        found = carried.get(name, [])
        if not found:
            raise DownloadFailed("--upgrade-from archive: the package sources of %s do not carry %s" % (
                image.name, name), "give the version to upgrade from as a file: --upgrade-from OLD.deb", madison)
        release = releases.get(name, [])
        oldest = min((v for v, _ in found), key=functools.cmp_to_key(compare_versions))
        version = release[0] if release else oldest
        if compare_versions(version, new) >= 0:
            older = sorted((v for v, _ in found if compare_versions(v, new) < 0),
                           key=functools.cmp_to_key(compare_versions))
            if not older:
                raise DownloadFailed("--upgrade-from archive: the package sources of %s carry %s at %s, none "
                                     "older than the --package file's %s: nothing to upgrade from" % (
                                         image.name, name, ", ".join(v for v, _ in found), new),
                                     "give the version to upgrade from as a file: --upgrade-from OLD.deb", madison)
            version = older[0]
        chosen[name] = version
    return chosen


def madison_versions(madison: str) -> Dict[str, List[Tuple[str, str]]]:
    """NAME -> [(VERSION, SUITE)] of each version `apt-cache madison` listed (NAME | VERSION | URL SUITE/...)."""
    carried: Dict[str, List[Tuple[str, str]]] = {}
    for line in madison.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 3 and fields[2].endswith(" Packages"):
            suite = fields[2].split()[1].split("/")[0] if len(fields[2].split()) > 1 else ""
            carried.setdefault(fields[0], []).append((fields[1], suite))
    return carried


def release_suite(madison: str) -> Dict[str, List[str]]:
    """NAME -> the versions of the release's own suite (bookworm, noble: not -updates, -security, -backports)."""
    return {name: [v for v, suite in found if not re.search(r"-(updates|security|backports|proposed)$", suite)]
            for name, found in madison_versions(madison).items()}


def compare_versions(a: str, b: str) -> int:
    """Debian's version comparison (dpkg's): -1, 0 or 1 as `a` is older than, the same as or newer than `b`."""
    def split(version: str) -> Tuple[int, str, str]:
        epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch) if epoch.isdigit() else 0, upstream, revision

    def order(char: str) -> int:
        return -1 if char == "~" else 0 if not char else ord(char) if char.isalpha() else ord(char) + 256

    def lead(pattern: str, text: str) -> str:
        match = re.match(pattern, text)
        return match.group() if match else ""

    def part(x: str, y: str) -> int:
        while x or y:
            xs, ys = lead(r"\D*", x), lead(r"\D*", y)
            for i in range(max(len(xs), len(ys)) + 1):
                cx, cy = order(xs[i] if i < len(xs) else ""), order(ys[i] if i < len(ys) else "")
                if cx != cy:
                    return -1 if cx < cy else 1
            x, y = x[len(xs):], y[len(ys):]
            xd, yd = lead(r"\d*", x), lead(r"\d*", y)
            if int(xd or 0) != int(yd or 0):
                return -1 if int(xd or 0) < int(yd or 0) else 1
            x, y = x[len(xd):], y[len(yd):]
        return 0

    (ea, ua, ra), (eb, ub, rb) = split(a), split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return part(ua, ub) or part(ra, rb)


def not_downloaded(image: str, plan: ProbePlan, failure: DownloadFailed, duration: float) -> List[ProbeResult]:
    """The results of an image whose packages could not be downloaded: nothing booted; the first stage's step
    fails with the package manager's output, everything after it is skipped."""
    stages = plan.stages()
    first = stages[0][0]
    reason = failure.message + ("\nhint: %s" % failure.hint if failure.hint else "")
    packaged = Packages((), (), (), tuple(p for p in plan.probes if p.kind == ProbeKind.PACKAGE), {})
    status = Status.ERROR if failure.untested else Status.FAIL
    results = [ProbeResult(image, p, status, duration, reason=reason, output=failure.output, stage=first)
               for p in (stage_probes(plan, first, packaged)) if p.kind == ProbeKind.PACKAGE]
    files = ", ".join(os.path.basename(p.target) for p in plan.probes if p.kind == ProbeKind.PACKAGE)
    skipped = "not run: downloading what %s needs failed" % files if failure.message.startswith("downloading") \
        else "not run: %s" % failure.message.split(":")[0]
    for index, (stage, release) in enumerate(stages):
        results += [ProbeResult(image, p, Status.SKIP, 0.0, reason=skipped, stage=stage, release=release)
                    for p in stage_probes(plan, stage, packaged, release)
                    if not (index == 0 and p.kind == ProbeKind.PACKAGE)]
    return results


def transaction(container: System, image: ImageInfo, probes: Sequence[Probe], stage: Stage,
                argv: Sequence[str], timeout: float, labels: Optional[Dict[str, str]] = None) -> List[ProbeResult]:
    """Run the package manager in the booted container, as on a machine: a result per probe, with what it
    printed, and the stage's journal when it failed. The run's time is the first probe's; the others say they
    were in the same run (a sum of the results' times stays the run's)."""
    t0, started = time.monotonic(), time.time()
    code, output = container.run_captured(list(argv), timeout=timeout)
    took = time.monotonic() - t0
    labels = labels or {}
    first = labels.get(probes[0].target) or os.path.basename(probes[0].target)

    def duration(index: int) -> float:
        return took if index == 0 else 0.0

    def said(index: int, text: str) -> str:
        return text if index == 0 else "(in one %s run with %s, which carries its %.2f s)\n%s" % (
            image.package_manager, first, took, text)

    if code == 0:
        return [ProbeResult(image.name, p, Status.PASS, duration(i), output=said(i, tail(output)), stage=stage,
                            label=labels.get(p.target, "")) for i, p in enumerate(probes)]
    reason = "%s did not finish within %g s" % (image.package_manager, timeout) if code == 124 else \
        "%s exited with %d" % (image.package_manager, code)
    if container.ended():
        reason = "the container ended while %s ran" % image.package_manager
    journal = "" if container.ended() else container.journal_tail(30, since=started)
    return [ProbeResult(image.name, p, Status.FAIL, duration(i), reason=reason, output=said(i, tail(output, 40)),
                        details=journal, stage=stage, label=labels.get(p.target, "")) for i, p in enumerate(probes)]


def relabelled(labels: Dict[str, str], versions: Dict[str, str]) -> Dict[str, str]:
    """Labels ("NAME VERSION", several joined by ", ") with each NAME's version from `versions` where it has one
    (what a release upgrade installed)."""
    def one(label: str) -> str:
        named = []
        for pair in label.split(", "):
            name, _, tail = pair.partition(" ")
            version, _, origin = tail.partition(" ")  # a version may be followed by " from URL"
            if not version:
                return label
            named.append(" ".join([name, versions.get(name, version)] + ([origin] if origin else [])))
        return ", ".join(named)

    return {target: one(label) for target, label in labels.items()}


def installed_versions(container: System, manager: PackageManager, names: Sequence[str]) -> Dict[str, str]:
    """NAME -> the version installed, of the packages `names` that are."""
    _, out = container.run_captured(manager.versions(sorted(names)))
    return dict(line.split("\t", 1) for line in out.splitlines() if line.count("\t") == 1)


def version_checked(container: System, manager: PackageManager, step: List[ProbeResult],
                    expected: Dict[str, str], stage: Stage) -> List[ProbeResult]:
    """The stage's step, failed where a package is not installed at the version the stage installs (an
    upgrade apt found nothing to do for: "already the newest version")."""
    if not expected or any(r.status != Status.PASS for r in step):
        return step
    found = installed_versions(container, manager, list(expected))
    wrong = ["%s is %s, not %s" % (name, found.get(name) or "not installed", version)
             for name, version in sorted(expected.items()) if found.get(name) != version]
    if not wrong:
        return step
    said = [line.strip() for r in step for line in r.output.splitlines() if "already the newest version" in line]
    reason = "after the %s stage %s%s" % (stage, "; ".join(wrong), " (%s)" % said[0] if said else "")
    return [r._replace(status=Status.FAIL, reason=reason) for r in step]


def package_step(container: System, plan: ProbePlan, stage: Stage, packages: Packages, manager: PackageManager,
                 baseline: Optional["Baseline"]) -> Tuple[List[ProbeResult], "set[str]"]:
    """The step of a stage of the packages' life (install, upgrade, remove, purge): its results, and for
    remove the packages' files as the package manager listed them before."""
    image = container.image
    files: "set[str]" = set()
    step: List[ProbeResult] = []
    if stage == Stage.INSTALLED and plan.upgrade_from:
        sources = [Probe(ProbeKind.PACKAGE, s) for s in plan.upgrade_from]
        step = transaction(container, image, sources, stage,
                           manager.install(packages.old, cached=True, recommends=plan.recommends),
                           plan.install_timeout, packages.labels)
    elif stage in (Stage.INSTALLED, Stage.UPGRADED):
        step = transaction(container, image, packages.probes, stage,
                           manager.install(packages.new, cached=True, recommends=plan.recommends),
                           plan.install_timeout, packages.labels)
        if plan.start_units:
            units = [p.target for p in plan.probes if p.kind == ProbeKind.UNIT]
            container.run_captured(["systemctl", "enable", "--now", *units], timeout=plan.timeout)
    if stage in (Stage.INSTALLED, Stage.UPGRADED):
        expected = packages.old_versions if stage == Stage.INSTALLED and plan.upgrade_from else packages.versions
        step = version_checked(container, manager, step, expected, stage)
    elif stage == Stage.REMOVED:
        _, listed = container.run_captured(manager.files(packages.names))
        files = {line.strip() for line in listed.splitlines() if line.startswith("/")}
        step = transaction(container, image, packages.probes, stage, manager.remove(packages.names),
                           plan.install_timeout, packages.labels)
    elif stage == Stage.PURGED:
        # the packages the package manager still knows (remove takes some whole) and every package the
        # installs pulled in, as piuparts purges them: apt's autoremove keeps some (memcached's perl on
        # noble), and what was not there before the install must go
        _, listed = container.run_captured(manager.installed())
        known = set(listed.split())
        pulled = sorted(known - baseline.packages - set(packages.names)) if baseline else []
        names = [name for name in packages.names if name in known] + pulled
        kept = manager.installed_by_hand(sorted(known & baseline.packages - set(names))) \
            if baseline and baseline.reference else []
        if kept:  # after a release upgrade: what the upgrade without the packages keeps (its obsolete libraries)
            container.run_captured(kept, timeout=plan.timeout)
        purge = manager.purge(names) if names else []
        step = transaction(container, image, packages.probes, stage, purge,
                           plan.install_timeout, packages.labels) if purge else [
            ProbeResult(image.name, p, Status.PASS, 0.0, output="nothing left to purge: remove took it all",
                        stage=stage, label=packages.labels.get(p.target, "")) for p in packages.probes]
    return step, files


# The release upgrade (README: Release upgrades): the package sources switched to the target release where they
# name the running one (its -updates and -security suites too, the deb822 and the one-line files alike, as the
# release notes' sed does), then apt as the release notes say, non-interactive, keeping changed configuration
# files. debconf's developer log names each question asked (RELEASE_QUESTION); dpkg names each configuration file
# it would have asked about (RELEASE_CONFFILE).
RELEASE_SOURCES_SCRIPT = r'''set -e
. /etc/os-release
from=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  if [ -f "$f" ] && [ ! -L "$f" ] && grep -qw "$from" "$f"; then
    sed -i "s/\\b$from\\b/$1/g" "$f"
    echo "$f: $from -> $1"
  fi
done'''
RELEASE_APT = ("env", "DEBIAN_FRONTEND=noninteractive", "DEBCONF_DEBUG=developer", "UCF_FORCE_CONFFOLD=1",
               "APT_LISTCHANGES_FRONTEND=none", "NEEDRESTART_SUSPEND=1", "LC_ALL=C", "apt-get", "-q", "-y",
               "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
               "-o", "Dpkg::Use-Pty=0", "-o", "Dpkg::Options::=--force-unsafe-io", "-o", "APT::Sandbox::User=root",
               "-o", "Acquire::Languages=none",
               "-o", "Acquire::IndexTargets::deb-src::Sources::DefaultEnabled=false")
RELEASE_QUESTION = r"debconf \(developer\): <-- INPUT (critical|high) (\S+)\s*\ndebconf \(developer\): --> 0 "
RELEASE_CONFFILE = r"Configuration file [`']([^'`]+)'"
# the packages dpkg configured since line $1 of its log, each once (triggers configure some again)
RELEASE_PROGRESS = "tail -n +$(($1 + 1)) /var/log/dpkg.log 2>/dev/null | " \
                   "awk '$3 == \"status\" && $4 == \"installed\" {print $5}' | sort -u | wc -l"
RELEASE_LOG_LINES = "wc -l 2>/dev/null < /var/log/dpkg.log || echo 0"


def upgrade_counts(output: str) -> Tuple[int, int, int]:
    """(upgraded, newly installed, removed) of apt's summary line, (0, 0, 0) without one."""
    found = re.search(r"(\d+) upgraded, (\d+) newly installed, (?:\d+ downgraded, )?(\d+) to remove", output)
    return (int(found.group(1)), int(found.group(2)), int(found.group(3))) if found else (0, 0, 0)


def without_debconf_log(output: str) -> str:
    """apt's output without debconf's developer log (what a failure shows)."""
    return "\n".join(line for line in output.splitlines() if not line.startswith("debconf (developer)"))


def upgrade_release(container: System, plan: ProbePlan, release: str, packages: Optional[Packages],
                    say: Callable[[str], None] = lambda doing: None) -> List[ProbeResult]:
    """The release upgrade's step: the package sources switched to `release`, the system upgraded as its
    release notes say (`apt upgrade --without-new-pkgs`, then `apt full-upgrade`), the container rebooted
    into it; then the packages built for it (--package RELEASE=FILE) installed as upgrades. The first result
    is the release's (ProbeKind.RELEASE), the others the packages'; a failure names the failing packages with
    dpkg's status and the stage's journal."""
    image = container.image.name
    target = find_distribution(release)
    assert target is not None  # check_release_upgrades
    probe = Probe(ProbeKind.RELEASE, release)
    t0, started = time.monotonic(), time.time()
    outputs: List[str] = []

    def failure(reason: str, output: str, code: int = 0) -> List[ProbeResult]:
        _, audit = container.run_captured(["sh", "-c", "dpkg --audit; dpkg-query -W -f='${db:Status-Abbrev} "
                                                       "${Package} ${Version}\\n' | grep -v '^ii ' || true"])
        failing = sorted(set(re.findall(r"(?m)^dpkg: error processing package (\S+)", output)))
        reason += " (%s)" % ", ".join(failing) if failing else ""
        details = ("dpkg's status of what is not installed:\n%s\n\n" % audit.strip() if audit.strip() else "") + \
            ("" if container.ended() else container.journal_tail(30, since=started))
        skipped = [ProbeResult(image, p, Status.SKIP, 0.0, reason="not run: the release upgrade failed",
                               stage=Stage.RELEASE_UPGRADED) for p in plan.packages_for(release)]
        return [ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0, reason=reason,
                            output=tail(without_debconf_log(output), 40), details=details,
                            stage=Stage.RELEASE_UPGRADED)] + skipped

    code, output = container.run_captured(["sh", "-c", RELEASE_SOURCES_SCRIPT, "sh", target.release])
    outputs.append(output)
    if code != 0 or not output.strip():
        return failure("the package sources name no release to upgrade from", output)
    code, output = container.run_captured([*RELEASE_APT, "update"], timeout=plan.install_timeout)
    outputs.append(output)
    if code != 0 or re.search(r"(?m)^(E:|W: Failed to fetch)", output):
        return failure("apt-get update for %s failed with exit code %d" % (release, code), output)
    _, simulated = container.run_captured([*RELEASE_APT, "-s", "full-upgrade"], timeout=plan.install_timeout)
    total = sum(upgrade_counts(simulated)[:2])
    _, counted = container.run_captured(["sh", "-c", RELEASE_LOG_LINES])
    before = counted.strip() if counted.strip().isdigit() else "0"
    done = threading.Event()

    def progress() -> None:  # packages upgraded of the total, while apt runs
        while not done.wait(2):
            _, now = container.run_captured(["sh", "-c", RELEASE_PROGRESS, "sh", before])
            with contextlib.suppress(ValueError):
                say("upgrading to %s: %d of %d packages" % (release, min(int(now), total), total))

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    try:
        for verb in (["upgrade", "--without-new-pkgs"], ["full-upgrade"]):
            code, output = container.run_captured([*RELEASE_APT, *verb], timeout=plan.install_timeout)
            outputs.append(output)
            if code != 0:
                why = "did not finish within %g s" % plan.install_timeout if code == 124 else "exited with %d" % code
                return failure("apt-get %s to %s %s" % (verb[0], release, why), output)
    finally:
        done.set()
        watcher.join()
    said = "\n".join(outputs)
    counts = [upgrade_counts(o) for o in outputs[2:]]
    upgraded, new, removed = (sum(c[i] for c in counts) for i in range(3))
    say("rebooting into %s" % release)
    try:
        container.power_cycle()
    except PostrojError as exc:
        return failure("the container did not come back after the release upgrade: %s" % exc.message, said)
    _, os_release = container.run_captured(["sh", "-c", ". /etc/os-release; echo \"$VERSION_CODENAME|$PRETTY_NAME\""])
    codename, _, pretty = os_release.strip().partition("|")
    if codename != target.release:
        return failure("after the upgrade and the reboot the system is %s, not %s" % (codename or "?", release),
                       said)
    questions = sorted(set(q for _, q in re.findall(RELEASE_QUESTION, said)))
    conffiles = sorted(set(re.findall(RELEASE_CONFFILE, said)))
    prompts = ["kept changed configuration files dpkg would have asked about: %s" % ", ".join(conffiles)] \
        if conffiles else []
    prompts += ["debconf would have asked: %s" % ", ".join(questions)] if questions else []
    warning = "; ".join(prompts)
    summary = "%d upgraded, %d newly installed, %d removed; rebooted into %s (%s)\n" % (
        upgraded, new, removed, pretty or release, container.boot_state() or "?")
    results = [ProbeResult(image, probe, Status.PASS, time.monotonic() - t0, output=summary + tail(
        without_debconf_log(said)), warning=warning, stage=Stage.RELEASE_UPGRADED)]
    built = plan.packages_for(release)
    if built and packages is not None:
        files = [packages.release_files[p.target] for p in built]
        _, identified = container.run_captured(container.manager.identify(files))
        expected = dict(line.split("\t")[1:3] for line in identified.splitlines()
                        if line.startswith(IDENTIFIED + "\t") and line.count("\t") == 2)
        labels = {p.target: " ".join(pair) for p, pair in zip(built, expected.items())}
        step = transaction(container, container.image, built, Stage.RELEASE_UPGRADED,
                           [*RELEASE_APT, "install", *files], plan.install_timeout, labels)
        results += version_checked(container, container.manager, step, expected, Stage.RELEASE_UPGRADED)
    return results


# --- checks ------------------------------------------------------------------------------


NETWORK_CHECK = r"""
import socket, ssl, sys, time, urllib.request, urllib.error
url, timeout, expect_status, expect_body = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + timeout
last, code = "no attempt", 1
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
while True:
    try:
        if url.startswith("tcp://"):
            host, port = url[6:].rstrip("/").rsplit(":", 1)
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            print("connected to %s" % url[6:])
            sys.exit(0)
        try:
            resp = opener.open(url, timeout=5)
            status, body = resp.status, resp.read(1 << 20)
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read(1 << 20)
        text = body.decode("utf-8", "replace")
        ok = (status == int(expect_status)) if expect_status else 200 <= status < 400
        if ok and expect_body and expect_body not in text:
            last, code = "HTTP %d, but the body does not contain %r\n%s" % (status, expect_body, text[:500]), 2
        elif ok:
            print("HTTP %d from %s" % (status, url))
            sys.exit(0)
        else:
            last, code = "HTTP %d, expected %s\n%s" % (status, expect_status or "2xx or 3xx", text[:500]), 2
    except Exception as exc:
        last, code = "%s: %s" % (type(exc).__name__, exc), 1
    if time.monotonic() > deadline:
        print(last)
        sys.exit(code)
    time.sleep(0.1)
"""

NETWORK_NO_ANSWER, NETWORK_WRONG_ANSWER = 1, 2


def run_network_probe(container: ContainerSystem, probe: Probe, timeout: float) -> ProbeResult:
    """Connect from inside the container's network namespace, retrying until the timeout."""
    t0 = time.monotonic()
    image = container.image.name
    cmd = [nsenter_argv("")[0], "--net=%s/ns/net" % container.container.commands.leader_path(), "--", sys.executable,
           "-I", "-c", NETWORK_CHECK,
           probe.target, str(timeout), "" if probe.expect_status is None else str(probe.expect_status),
           probe.expect_body]
    proc = run(cmd, check=False, capture=True, stderr=subprocess.STDOUT, timeout=timeout + 15)
    output = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        return ProbeResult(image, probe, Status.PASS, time.monotonic() - t0, output=output)
    if proc.returncode == NETWORK_WRONG_ANSWER:  # the last answer, not the fact that the time ran out
        reason = "%s answered %s" % (probe.target, output.splitlines()[0] if output else "wrongly")
    else:
        reason = "%s did not answer within %s s" % (probe.target, timeout)
    return ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0, reason=reason, output=output,
                       details=container.journal_tail(20))


def run_command_probe(container: ContainerSystem, probe: Probe, timeout: float) -> ProbeResult:
    """The command must exit 0 within the timeout."""
    t0 = time.monotonic()
    image = container.image.name
    code, output = container.run_captured(["/bin/sh", "-c", probe.target], timeout=timeout)
    if code < 0 or code > 128:
        # killed by a signal: its container's PID 1 may be dying with it (it ends the commands before it
        # becomes a zombie); give it a moment to say so
        deadline = time.monotonic() + 2
        while not container.ended() and time.monotonic() < deadline:
            time.sleep(0.02)
    if code == 0:
        return ProbeResult(image, probe, Status.PASS, time.monotonic() - t0, output=tail(output, 40))
    reason = "timed out after %s s" % timeout if code == 124 else "exit status %d" % code
    if container.ended():
        reason = "the container ended while the command ran (it was shut down, or its PID 1 was killed)"
    return ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0, reason=reason, output=tail(output, 40),
                       details=container.journal_tail(20))


def special_files(directory: str, names: List[str]) -> List[str]:
    """What a --copy of a directory leaves out: devices, FIFOs and sockets (copytree would read a device
    without end, or block on a FIFO)."""
    left = []
    for name in names:
        with contextlib.suppress(OSError):
            kind = EntryKind.of(os.lstat(os.path.join(directory, name)))
            if kind not in (EntryKind.FILE, EntryKind.DIR, EntryKind.LINK):
                log.warning("--copy leaves out %s, a %s", os.path.join(directory, name), kind)
                left.append(name)
    return left


def run_copy_probe(container: ContainerSystem, probe: Probe, timeout: float) -> ProbeResult:
    """Copy a host file or directory into the container (through the read-only guest directory)."""
    t0 = time.monotonic()
    image = container.image.name
    source, _, target = probe.target.rpartition(":")
    staged = container.container.overlay_of().guest / "copy" / random_id(8)
    ensure_dir(staged.parent)
    src = Path(source)
    try:
        if src.is_dir():
            shutil.copytree(src, staged / src.name, symlinks=True, ignore=special_files)
        else:
            ensure_dir(staged)
            shutil.copy2(src, staged / src.name)
    except (OSError, shutil.Error) as exc:
        remove_tree(staged)
        return ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0,
                           reason="cannot copy %s from the host: %s" % (source, exc))
    inner = "%s/copy/%s/%s" % (GUEST_RUNTIME, staged.name, src.name)
    code, output = container.run_captured(["/bin/sh", "-c", 'mkdir -p "$(dirname "$2")" && cp -a "$1" "$2"', "sh",
                                           inner, target])
    remove_tree(staged)
    if code == 0:
        return ProbeResult(image, probe, Status.PASS, time.monotonic() - t0)
    return ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0, reason="copying failed (%d)" % code,
                       output=output)


def unit_state(container: System, unit: str) -> Dict[str, str]:
    """What systemd says of `unit`: UNIT_PROPERTIES by name ('' where it did not say)."""
    _, out = container.run_captured(["systemctl", "show", *("--property=%s" % p for p in UNIT_PROPERTIES), unit])
    said = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: said.get(name, "").strip() for name in UNIT_PROPERTIES}


def restarts(state: Dict[str, str]) -> int:
    """How often systemd restarted the unit since it was last started by hand (NRestarts)."""
    return int(state["NRestarts"]) if state["NRestarts"].isdigit() else 0


def run_unit_probe(container: System, probe: Probe, timeout: float, expect_active: bool = True,
                   settle: float = UNIT_SETTLE) -> ProbeResult:
    """The unit as the package left it, starting and enabling nothing: it must be active and stay so, without a
    restart, until it has been up for `settle` seconds (where the package is installed), or not be active
    (where it was removed). A unit on its way (activating, reloading) gets the time-out to arrive. Active but
    not enabled passes with a warning: it will not come back after a reboot."""
    t0 = time.monotonic()
    image = container.image.name
    unit = probe.target
    deadline = t0 + timeout

    def arrived() -> Dict[str, str]:
        """The unit's state once it is not on its way (activating, a restart's wait) or the time-out is over."""
        while True:
            state = unit_state(container, unit)
            if state["ActiveState"] not in UNIT_TRANSITIONS or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    state = first = arrived()
    if expect_active and state["ActiveState"] == "active":
        since = int(state["ActiveEnterTimestampMonotonic"] or 0) / 1e6 if \
            state["ActiveEnterTimestampMonotonic"].isdigit() else 0.0
        up = container.clock() - since if since else 0.0
        if up < settle:
            time.sleep(settle - up)
        state = arrived()
    active, enabled, load = state["ActiveState"], state["UnitFileState"], state["LoadState"]
    restarted = restarts(state) or (state["InvocationID"] != first["InvocationID"] and active == "active")
    if expect_active and restarted:
        reason = "unit %s restarts (%d times in %.0f s): it exits and systemd starts it again" % (
            unit, max(restarts(state), 1), time.monotonic() - t0 + settle)
    elif active == "active" and expect_active:
        return ProbeResult(image, probe, Status.PASS, time.monotonic() - t0,
                           output="%s, %s" % (active, enabled or "not-found"),
                           warning="unit %s is active but not enabled: it will not start at the next boot" % unit
                           if enabled == "disabled" else "")
    elif not expect_active and active != "active":
        return ProbeResult(image, probe, Status.PASS, time.monotonic() - t0,
                           output="%s, %s" % (active or "unknown", enabled or "not-found"))
    elif not expect_active:
        reason = "unit %s is still %s after the packages were removed" % (unit, active)
    elif load == "not-found":
        reason = "unit %s does not exist" % unit
    elif active == "failed" and first["ActiveState"] == "active":
        reason = "unit %s failed %.0f s after it started (%s)" % (unit, time.monotonic() - t0, state["Result"])
    elif active == "failed":
        reason = "unit %s failed (%s)" % (unit, enabled)
    elif enabled == "enabled":
        reason = "%s, enabled: the unit does not run, though it starts at boot" % (active or "unknown")
    elif active in ("activating", "reloading"):
        reason = "unit %s is still %s after %s s" % (unit, active, timeout)
    else:
        reason = "%s, not enabled: the package neither enabled nor started it" % (active or "unknown")
    _, status = container.run_captured(["systemctl", "status", "--no-pager", "--lines=20", unit])
    journal = container.journal_tail(30, unit if load != "not-found" else "")
    return ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0, reason=reason, output=status,
                       details=journal)


# What PID 1's journal says of a job that did not succeed (JOB_RESULT) and of a unit that failed (UNIT_RESULT)
FAILED_JOB_RESULTS = ("failed", "timeout", "dependency")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount")


def package_units(files: Iterable[str], plan: ProbePlan) -> List[str]:
    """The units of the packages (their unit files, by name; a template's as 'NAME@') and the checked units."""
    units = {os.path.basename(f) for f in files if f.startswith(UNIT_DIRS) and f.endswith(UNIT_SUFFIXES)}
    units |= {p.target if p.target.endswith(UNIT_SUFFIXES) else p.target + ".service"
              for p in plan.probes if p.kind == ProbeKind.UNIT}
    return sorted(u.replace("@.", "@", 1) if "@." in u else u for u in units)


def failed_jobs(container: System, units: Sequence[str], since: float) -> List[str]:
    """What systemd logged, since the time `since`, of a job of `units` (start, restart, reload, stop) that
    failed, or of one of them that failed: its message, a line each (even where a maintainer script went on
    after it)."""
    if not units:
        return []
    _, out = container.run_captured(["journalctl", "--no-pager", "-o", "json", "--since",
                                     "@%.3f" % (since - 0.0005), "_PID=1"])  # never after `since`
    found = []
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        unit = entry.get("UNIT") if isinstance(entry, dict) else None
        if not isinstance(unit, str) or not any(unit == u or (u.endswith("@") and unit.startswith(u))
                                                 for u in units):
            continue
        job, result = entry.get("JOB_RESULT"), entry.get("UNIT_RESULT")
        if job in FAILED_JOB_RESULTS or (isinstance(result, str) and result != "success"):
            message = entry.get("MESSAGE")
            found.append(message if isinstance(message, str) else "%s: %s" % (unit, job or result))
    return list(dict.fromkeys(found))


def failed_during(container: System, step: List[ProbeResult], stage: Stage, units: Sequence[str],
                  since: float) -> List[ProbeResult]:
    """The stage's step, failed where a job or a unit of the packages failed during it (failed_jobs), with the
    journal's lines of those units."""
    if not step or any(r.status != Status.PASS for r in step):
        return step
    failures = failed_jobs(container, units, since)
    if not failures:
        return step
    reason = "systemd says: %s (during the %s stage)" % ("; ".join(failures[:5]), stage)
    journal = "\n".join(container.journal_tail(20, unit, since) for unit in units if "@" not in unit)
    return [r._replace(status=Status.FAIL, reason=reason, details=journal) for r in step]


def reboot(container: System, plan: ProbePlan) -> ProbeResult:
    """Reboot the container as a machine reboots: its systemd stops every unit and powers off, then the same
    overlay boots again."""
    t0 = time.monotonic()
    probe = Probe(ProbeKind.REBOOT, container.what)
    try:
        container.power_cycle()
    except PostrojError as exc:
        return ProbeResult(container.image.name, probe, Status.FAIL, time.monotonic() - t0, reason=exc.message,
                           stage=Stage.REBOOTED)
    return ProbeResult(container.image.name, probe, Status.PASS, time.monotonic() - t0,
                       output="booted %s" % (container.boot_state() or "?"), stage=Stage.REBOOTED)


def run_checks(container: System, plan: ProbePlan, stage: Stage, broken: str,
               cancel: threading.Event, results: List[ProbeResult]) -> None:
    """The checks of `plan` after `stage`: copies, units, ports and commands where the packages are installed;
    units that must not be active where they were removed. `broken`: the stage's own step failed."""
    installed = stage not in (Stage.REMOVED, Stage.PURGED)
    failed_units: List[str] = []  # a port of a unit that failed will not answer: no need to wait for it
    for probe in plan.probes:
        if probe.kind == ProbeKind.PACKAGE or (not installed and probe.kind != ProbeKind.UNIT):
            continue
        if plan.fail_fast and any(r.status == Status.FAIL for r in results):
            cancel.set()
        if cancel.is_set():
            results.append(ProbeResult(container.image.name, probe, Status.SKIP, 0.0, reason="not run: --fail-fast",
                                       stage=stage))
        elif broken:
            # a unit or a port of a package that did not install would only wait out its time-out, and a
            # command's PASS would read as the stage's (the old version a refused downgrade left)
            results.append(ProbeResult(container.image.name, probe, Status.SKIP, 0.0, reason="not run: %s" % broken,
                                       stage=stage))
        elif probe.kind == ProbeKind.UNIT:
            results.append(run_unit_probe(container, probe, plan.timeout, expect_active=installed,
                                          settle=plan.settle)._replace(stage=stage))
            if results[-1].reason.startswith("unit %s failed" % probe.target):
                failed_units.append(probe.target)
        elif probe.kind == ProbeKind.NETWORK and failed_units:
            results.append(ProbeResult(container.image.name, probe, Status.FAIL, 0.0, stage=stage,
                                       reason="%s cannot answer: unit %s failed" % (probe.target,
                                                                                   ", ".join(failed_units))))
        else:
            results.append(container.check(probe, plan.timeout)._replace(stage=stage))
        if probe.kind == ProbeKind.UNIT:
            if stage == Stage.REBOOTED and "neither enabled nor started" in results[-1].reason:
                results[-1] = results[-1]._replace(reason="inactive, not enabled: it did not come back after the "
                                                   "reboot (the package started it but did not enable it)")


# --- the baseline and purge's comparison -------------------------------------------------


def merged_entries(image: Path, lower: Dict[str, str], upper: Dict[str, str]) -> Dict[str, str]:
    """What a container with a layer changed against the image: the layer's entries (`lower`) under the
    container's own (`upper`); a path the layer made that the container deleted is as in the image again."""
    merged = dict(lower)
    deleted = []
    for path, kind in upper.items():
        if kind == EntryKind.GONE and lower.get(path, EntryKind.GONE) != EntryKind.GONE:
            deleted.append(path + "/")
            parent = resolve_in_root(image, os.path.dirname(path))
            if parent is not None and os.path.lexists(str(parent / os.path.basename(path))):
                merged[path] = EntryKind.GONE
            else:
                del merged[path]
        else:
            merged[path] = kind
    if deleted:
        below = tuple(deleted)
        merged = {p: k for p, k in merged.items() if p in upper or not p.startswith(below)}
    return merged


def overlay_entries(upper: Path) -> Dict[str, str]:
    """What the container changed, from its overlay's upper directory, read on the host with lstat only and
    without recursion (walk_tree): path in the container -> its EntryKind."""
    return overlay_walk(upper)[0]


def overlay_walk(upper: Path) -> Tuple[Dict[str, str], Dict[str, Fingerprint]]:
    """overlay_entries, and the fingerprint of each entry (what tells a later change of it)."""
    top = str(upper)
    kinds: Dict[str, str] = {}
    prints: Dict[str, Fingerprint] = {}
    for path, st in walk_tree(top):
        inner = "/" + os.path.relpath(path, top)
        kinds[inner] = EntryKind.of(st)
        target = ""
        if kinds[inner] == EntryKind.LINK:
            with contextlib.suppress(OSError):  # a link's target is read as a string, never followed
                target = os.readlink(path)
        prints[inner] = fingerprint(st, target)
    return kinds, prints


def fingerprint(st: os.stat_result, target: str = "") -> Fingerprint:
    """What tells that a path was changed, from its lstat: mode, owner and group, and for a file its size and
    modification time, for a link its target (`target`: made again the same, it is unchanged), for a
    device its numbers (a directory's change its changed entries tell)."""
    if stat.S_ISDIR(st.st_mode):
        return (st.st_mode, st.st_uid, st.st_gid, 0, 0, 0)
    if stat.S_ISLNK(st.st_mode):
        return (st.st_mode, st.st_uid, st.st_gid, 0, hash(target), 0)  # compared within one run only
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_rdev)


def fingerprint_difference(before: Fingerprint, now: Fingerprint) -> str:
    """What changed between two fingerprints of one path, in words ('' for nothing)."""
    words = []
    if stat.S_IMODE(before[0]) != stat.S_IMODE(now[0]):
        words.append("mode %04o, was %04o" % (stat.S_IMODE(now[0]), stat.S_IMODE(before[0])))
    if before[1:3] != now[1:3]:
        words.append("owner %d:%d, was %d:%d" % (now[1], now[2], before[1], before[2]))
    if before[3:] != now[3:]:
        words.append("content")
    return ", ".join(words)


def open_beneath(root: Path, relative: str) -> int:
    """A descriptor of the directory that holds `relative` below `root`, reached without following a link
    (what a container made may be a link anywhere on the host)."""
    fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [p for p in relative.split("/") if p][:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError:
        os.close(fd)
        raise
    return fd


def same_regular_files(a: int, b: int) -> bool:
    """True when two open regular files have the same bytes (read in bounded pieces)."""
    if os.fstat(a).st_size != os.fstat(b).st_size:
        return False
    while True:
        one, other = os.read(a, 1 << 20), os.read(b, 1 << 20)
        if one != other:
            return False
        if not one:
            return True


def image_difference(lower: Path, path: str, kind: str, upper: Path) -> Optional[str]:
    """How the overlay's `path` differs from the image's, in words: None where the image has no such path, ''
    where it has it as the overlay has it now (a directory with the same mode and owner, whatever changed
    in it; a link to the same place; a file with the same bytes, mode and owner), else what differs: its
    kind, mode, owner, link target or content. A device, a FIFO or a socket is compared by its lstat, never
    opened; links are compared as strings, never followed."""
    parent = resolve_in_root(lower, os.path.dirname(path))  # its own links lead within the image only
    if parent is None:
        return None
    image_path = str(parent / os.path.basename(path))
    name = os.path.basename(path)
    try:
        theirs = os.lstat(image_path)
    except OSError:
        return None
    theirs_kind = EntryKind.of(theirs)
    if kind == EntryKind.GONE:
        return "removed"
    if kind != theirs_kind:
        return "a %s where the image has a %s" % (kind, theirs_kind)
    try:
        fd = open_beneath(upper, path)
    except OSError:
        return "unreadable"
    try:
        ours = os.stat(name, dir_fd=fd, follow_symlinks=False)
        words = [w for w in fingerprint_difference(fingerprint(theirs), fingerprint(ours)).split(", ")
                 if w and w != "content"]
        if kind == EntryKind.LINK and os.readlink(image_path) != os.readlink(name, dir_fd=fd):
            words.append("target %s, was %s" % (os.readlink(name, dir_fd=fd), os.readlink(image_path)))
        elif kind == EntryKind.DEVICE and ours.st_rdev != theirs.st_rdev:
            words.append("device numbers")
        elif kind == EntryKind.FILE and not same_file_content(name, fd, image_path):
            words.append("content")
        return ", ".join(words)
    except OSError as exc:
        return "unreadable (%s)" % (exc.strerror or exc)
    finally:
        os.close(fd)


def same_file_content(name: str, directory: int, image_path: str) -> bool:
    """True when the regular file `name` in the open directory has the bytes of the image's `image_path`."""
    ours_fd = open_regular(name, directory)
    if ours_fd is None:
        return False
    with open(ours_fd, "rb") as ours:
        theirs_fd = open_regular(image_path)
        if theirs_fd is None:
            return False
        with open(theirs_fd, "rb") as image_file:
            return same_regular_files(ours.fileno(), image_file.fileno())


def container_processes(container: System) -> Dict[int, Tuple[str, str]]:
    """The processes in the container: PID -> (executable, command line)."""
    _, out = container.run_captured(["sh", "-c", PROCESSES_SCRIPT])
    found = {}
    for line in out.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3 and fields[0].isdigit():
            found[int(fields[0])] = (fields[1], fields[2].strip())
    return found


def account_names(container: System) -> "set[str]":
    """The users and groups of the container, as user:NAME and group:NAME."""
    _, out = container.run_captured(["sh", "-c", "cut -d: -f1 /etc/passwd | sed s/^/user:/; "
                                                 "cut -d: -f1 /etc/group | sed s/^/group:/"])
    return {line.strip() for line in out.splitlines() if line.strip()}


class Baseline(NamedTuple):
    """The container before the first install, for purge's comparison (piuparts-style): what its overlay
    held, which programs ran, which users and groups it had, which packages it had."""

    entries: Dict[str, str]
    executables: "set[str]"
    accounts: "set[str]"
    packages: "set[str]"
    fingerprints: Dict[str, Fingerprint]
    # after a release upgrade: the overlay directory of the same upgrade without the packages (ReleaseReference)
    reference: Optional[Path] = None

    @classmethod
    def take(cls, container: System) -> "Baseline":
        """The container as it is now, as the image had it: the packages, users and groups a dependency layer
        added are not in it, so that the purge takes those packages and reports what they keep as without a
        layer."""
        layer = container.layer
        accounts = account_names(container) - set(layer.accounts if layer else ())
        _, listed = container.run_captured(container.manager.installed())
        packages = set(listed.split()) - {name.split("=", 1)[0].split(":", 1)[0] for name in
                                          (layer.packages if layer else ())}
        entries = container.baseline_entries()
        return cls(entries, {exe for exe, _ in container_processes(container).values()}, accounts, packages,
                   container.fingerprints())


def leftover_result(image: str, target: str, stage: Stage, found: Sequence[str], what: Tuple[str, str], t0: float,
                    reported: str = "") -> ProbeResult:
    """A leftover check's result: a failure listing what was `found` (`what`: the words for one and for
    several)."""
    probe = Probe(ProbeKind.LEFTOVER, target)
    if not found:
        return ProbeResult(image, probe, Status.PASS, time.monotonic() - t0, output=reported, stage=stage)
    listed = "\n".join(found[:100]) + ("\n... and %d more" % (len(found) - 100) if len(found) > 100 else "")
    return ProbeResult(image, probe, Status.FAIL, time.monotonic() - t0, stage=stage,
                       reason="%s: %d %s" % (stage, len(found), what[0] if len(found) == 1 else what[1]),
                       output=listed + ("\n" + reported if reported else ""))


def check_removed(container: System, files: "set[str]", t0: float) -> List[ProbeResult]:
    """After remove: no process runs a program (or a script) of the packages' files, none of their units is
    active."""
    image = container.image.name
    # a program of the packages, or a script of theirs run by its interpreter
    running = sorted("%d %s (%s)" % (pid, exe, cmd) for pid, (exe, cmd) in container_processes(container).items()
                     if exe in files or any(word in files for word in cmd.split()[:2]))
    units = sorted(os.path.basename(f) for f in files if f.startswith(UNIT_DIRS) and
                   f.endswith((".service", ".socket", ".timer", ".path")))
    active = []
    if units:
        _, out = container.run_captured(["systemctl", "is-active", *units])
        active = [unit for unit, state in zip(units, out.splitlines()) if state.strip() in ("active", "activating")]
    return [leftover_result(image, "processes", Stage.REMOVED, running, ("process of the packages still runs",
                                                                         "processes of the packages still run"), t0),
            leftover_result(image, "units", Stage.REMOVED, active, ("unit of the packages is still active",
                                                                    "units of the packages are still active"), t0)]


def check_purged(container: System, baseline: Baseline, files: "set[str]", t0: float,
                 ignore: Sequence[str] = ()) -> List[ProbeResult]:
    """After purge, against the container before the first install, as piuparts compares (README: Lifecycle):
    paths added, removed and changed (kind, content, mode, owner, link target), each listed, a directory
    left behind with what it holds; broken links, *.wants links to units that are gone; programs still
    running. What PURGE_EXPECTED and `ignore` (--ignore) name is not compared; those of them that matched
    and are not every system's are said, as are users and groups left."""
    image = container.image.name
    now = container.entries()
    if container.listed_whole:  # a VM's listing: what it no longer has was deleted
        now.update((path, EntryKind.GONE) for path in baseline.entries.keys() - now.keys())
    found = purge_findings(container, baseline, now, container.fingerprints())
    expected = PURGE_EXPECTED + ((("--ignore", tuple(p.rstrip("/") + "/" for p in ignore)),) if ignore else ())
    matched: Dict[str, List[str]] = {}
    for path in list(found):
        why = expected_reason(path, expected)
        if why is not None:
            del found[path]
            matched.setdefault(why, []).append(path)
    links = [p for p in found if now.get(p) == EntryKind.LINK]
    if links:
        _, out = container.run_captured(["sh", "-c", MISSING_SCRIPT, "sh", *links])
        for path in {line.strip() for line in out.splitlines()} & set(links):
            found[path] = "broken link to a unit that is gone" if ".wants/" in path else \
                "broken link left behind" if found[path] == PURGE_WORDS[EntryKind.LINK] else \
                found[path] + " (the link is broken)"
    listed = ["%s: %s" % (path, found[path]) for path in sorted(found)]
    # a program that did not run before, or a script of the packages' run by an interpreter that did
    running = sorted("%s (%s)" % (exe, cmd) for exe, cmd in container_processes(container).values()
                     if exe not in baseline.executables or any(word in files for word in cmd.split()[:2]))
    accounts = sorted(account_names(container) - baseline.accounts)
    said = ["not compared: %s (%s)" % (", ".join(sorted(paths)[:10]) + (" ..." if len(paths) > 10 else ""), why)
            for why, paths in matched.items() if why != PURGE_EXPECTED[0][0]]
    said += ["left, as Debian's policy allows: %s" % ", ".join(accounts)] if accounts else []
    before = "the release upgrade without the packages" if baseline.reference else "the container before the install"
    return [leftover_result(image, "files", Stage.PURGED, listed, (
        "path differs from %s" % before, "paths differ from %s" % before), t0, "\n".join(said)),
        leftover_result(image, "processes", Stage.PURGED, running, ("process still runs", "processes still run"), t0)]


PURGE_WORDS = {EntryKind.FILE: "left behind", EntryKind.DIR: "directory left behind",
               EntryKind.LINK: "link left behind", EntryKind.GONE: "removed from the image",
               EntryKind.DEVICE: "device node left behind", EntryKind.FIFO: "FIFO left behind",
               EntryKind.SOCKET: "socket left behind"}


def purge_findings(container: System, baseline: Baseline, now: Dict[str, str],
                   prints: Dict[str, Fingerprint]) -> Dict[str, str]:
    """Every path that differs after the purge from the container before the install: path -> what (added,
    removed, changed and how)."""
    found = {}
    for path, kind in now.items():
        before = baseline.entries.get(path)
        if before == kind and baseline.reference is not None and kind != EntryKind.GONE:
            # the release upgrade without the packages changed it too: is it as that upgrade left it?
            change = container.difference(path, kind, baseline.reference)
            if change:
                found[path] = "differs from the release upgrade without the packages: %s" % change
            if change is not None:
                continue  # else it was changed before the install (the downloads' resolv.conf): since?
        if before == kind:  # changed before the install: changed again since?
            was = baseline.fingerprints.get(path)
            change = fingerprint_difference(was, prints[path]) if was and path in prints else ""
            if change and kind != EntryKind.GONE:
                found[path] = "changed since before the install: %s" % change
            continue
        difference = container.difference(path, kind)
        if difference == "":
            continue
        if difference is None or kind == EntryKind.GONE:
            found[path] = PURGE_WORDS[EntryKind(kind)]
        else:
            found[path] = "changed from the image: %s" % difference
    gone = sorted(p for p, kind in baseline.entries.items() if kind != EntryKind.GONE and p not in now)
    named: List[str] = []
    for path in gone:  # made before the install (by the boot), deleted since: named once, not what it held
        if not any(path.startswith(top + "/") for top in named):
            found[path] = "removed (the release upgrade without the packages has it)" if baseline.reference else \
                "removed (it was there before the install)"
            named.append(path)
    held = {path: 0 for path, what in found.items() if what == PURGE_WORDS[EntryKind.DIR]}
    for path, kind in now.items():  # one pass, however deep the tree: each entry counts for its directory
        parent = path[:path.rfind("/")]
        if parent in held and kind != EntryKind.GONE:
            held[parent] += 1
    for path, count in held.items():
        found[path] += ", empty" if not count else ", holding %d %s" % (count, "entry" if count == 1 else "entries")
    return found


def expected_reason(path: str, expected: Sequence[Tuple[str, Tuple[str, ...]]]) -> Optional[str]:
    """Why purge does not compare `path` (a pattern of `expected` names it: 'DIR/' the directory and all
    below it, otherwise that path alone), or None."""
    for why, patterns in expected:
        for pattern in patterns:
            if path == pattern.rstrip("/") or (pattern.endswith("/") and path.startswith(pattern)):
                return why
    return None


# What purge does not compare, and why (README: Lifecycle): a pattern 'DIR/' is the directory and everything
# below it, any other the path alone (a directory: itself, what is in it is compared). The first group is
# what every booted system and its package managers change, never said; the others are said where they
# matched. Users and groups that remain are reported, not failed: Debian's policy keeps them.
PURGE_EXPECTED: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("what every booted system and its package managers change", (
        "/run/", "/tmp/", "/var/tmp/", "/var/lib/systemd/", "/var/lib/dbus/", "/var/lib/polkit-1/",
        "/var/lib/private", "/var/cache/private", "/var/log/private",
        "/etc/machine-id", "/etc/hosts", "/etc/ld.so.cache",
        "/var/cache/ldconfig/", "/etc/.pwd.lock", "/etc/passwd", "/etc/passwd-", "/etc/group", "/etc/group-",
        "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/subuid", "/etc/subuid-",
        "/etc/subgid", "/etc/subgid-", "/usr/share/info/dir", "/usr/share/info/dir.old",
        "/var/lib/sgml-base/", "/var/lib/xml-core/", "/etc/ca-certificates.conf", "/etc/ssl/certs/",
        "/var/lib/ucf/", "/var/cache/man/", "/var/cache/fontconfig/",
        "/var/log/journal/", "/var/log/wtmp", "/var/log/btmp", "/var/log/lastlog", "/var/log/faillog",
        "/var/log/syslog", "/var/log/messages", "/var/log/auth.log", "/var/log/daemon.log", "/var/log/kern.log",
        "/var/log/user.log", "/var/log/debug",
        "/var/lib/apt/", "/var/lib/dpkg/", "/var/cache/apt/", "/var/cache/debconf/", "/var/log/apt/",
        "/var/log/dpkg.log", "/var/log/alternatives.log", "/var/lib/rpm/", "/var/lib/dnf/", "/var/cache/dnf/",
        "/var/cache/yum/", "/var/log/dnf.log", "/var/log/dnf.librepo.log", "/var/log/dnf.rpm.log",
        "/var/log/hawkey.log", "/var/lib/zypp/", "/var/cache/zypp/", "/var/log/zypper.log", "/var/log/zypp/",
        "/var/lib/pacman/", "/var/cache/pacman/", "/var/log/pacman.log",
        # merged /usr's diversions, made by dpkg when a dependency unpacks into /bin, /sbin or /lib
        "/bin.usr-is-merged/", "/sbin.usr-is-merged/", "/lib.usr-is-merged/")),
    ("the administrator's data, which a purge must not delete; piuparts ignores it too", (
        "/var/www/", "/srv/", "/var/backups/", "/var/mail/")),
    ("directories shared by several packages that dpkg leaves, Debian bug #316521; piuparts ignores them too", (
        "/var/lib/apache2", "/etc/apache2", "/etc/apache2/conf.d", "/etc/clamav", "/etc/cron.d", "/etc/lighttpd",
        "/etc/lighttpd/conf-available", "/etc/modprobe.d", "/etc/network", "/etc/php", "/etc/sgml", "/etc/ssl",
        "/etc/ssl/private", "/etc/xml", "/usr/share/python3", "/usr/share/python3/debpython")),
    ("the mail system's shared configuration, which every MTA reads and none removes; piuparts ignores it too", (
        "/etc/aliases", "/etc/aliases.db", "/etc/mailname")),
)
PROCESSES_SCRIPT = r'''for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null) || continue
  printf '%s\t%s\t%s\n' "${p#/proc/}" "${exe% (deleted)}" "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)"
done'''
MISSING_SCRIPT = 'for f; do [ -e "$f" ] || printf "%s\\n" "$f"; done'
UNIT_DIRS = ("/lib/systemd/system/", "/usr/lib/systemd/system/", "/etc/systemd/system/")


# --- dependency layers -------------------------------------------------------------------


# Dependency layers: the dependencies of the packages under test, installed in a booted container over one
# image version and kept as an overlay directory below the next probes' own, when apt resolves the same set
# for them (README: Dependency layers).
LAYER_FORMAT = 3  # part of every key: a postroj that makes layers differently never uses another's


class Layer(NamedTuple):
    """A dependency layer as a container uses it: KEY/tree below the container's overlay, and from
    KEY/layer.json the dependencies it holds and what its container had changed before they were installed
    (purge's comparison keeps that, and nothing the install did)."""

    key: str
    directory: Path
    packages: Tuple[str, ...]
    before: Dict[str, str]
    made: str
    accounts: Tuple[str, ...] = ()  # the users and groups the dependencies' install added (account_names)
    image: str = ""  # the image's name, and the root of the image version it was made over
    root: str = ""
    size: int = 0  # bytes of its tree
    executables: Tuple[str, ...] = ()  # a release upgrade's reference: the programs that ran in it

    @property
    def tree(self) -> Path:
        """The overlay directory."""
        return self.directory / "tree"

    @property
    def stamp(self) -> Path:
        """layer.json: its modification time is the layer's last use (gc), probes hold a shared lock on it."""
        return self.directory / "layer.json"


def layer_key(image: ImageInfo, dependencies: Sequence[str], recommends: bool) -> str:
    """The key of the layer of `dependencies` (NAME[:ARCH]=VERSION) over the image's version (and so its
    architecture)."""
    import hashlib

    text = json.dumps([LAYER_FORMAT, image.version, recommends, sorted(dependencies)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_layer(directory: Path) -> Optional[Layer]:
    """The complete layer in `directory`, None when there is none (a layer is renamed into place whole)."""
    try:
        data = json.loads(read_regular(str(directory / "layer.json")))  # a link, a FIFO: not a layer
        size = data.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 60:
            raise ValueError("size %r" % size)
        return Layer(directory.name, directory, tuple(data["packages"]), dict(data["before"]), str(data["made"]),
                     tuple(data.get("accounts", ())), str(data.get("image", "")), str(data.get("root", "")), size,
                     tuple(str(e) for e in data.get("executables", ())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


@contextlib.contextmanager
def layer_slot(settings: Settings, key: str, waiting: str) -> Iterator[Optional[Layer]]:
    """The complete layer KEY (None when there is none yet), under the lock its maker holds while it makes it."""
    private_dir(settings.layers)
    with file_lock(settings.layers / (".%s.lock" % key), waiting=waiting):
        yield read_layer(settings.layers / key)


def keep_as_layer(settings: Settings, container: NspawnContainer, key: str, fields: Dict[str, Any],
                  t0: float) -> Optional[Layer]:
    """Make the powered-off container's overlay the layer KEY, with `fields` in its layer.json besides the image,
    the time and the size: staged under a name no probe reads, renamed into place whole."""
    staging = settings.layers / (".making-%s-%d" % (key, os.getpid()))
    remove_tree(staging)
    private_dir(staging)
    container.overlay_of().take(staging / "tree")
    image = container.image
    (staging / "layer.json").write_text(json.dumps(dict(
        {"image": image.name, "version": image.version, "root": str(image.path)}, **fields,
        made=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=round(time.monotonic() - t0, 3),
        size=tree_size(staging / "tree")), indent=1) + "\n")
    remove_tree(settings.layers / key)  # what is there is not a whole layer (read_layer said so): nobody's
    os.rename(str(staging), str(settings.layers / key))
    return read_layer(settings.layers / key)


def use_layer(settings: Settings, container: NspawnContainer, plan: ProbePlan, packages: Packages,
              say: Callable[[str], None]) -> Optional[Layer]:
    """Put the dependency layer of `packages` below the container's overlay, made first when there is none:
    None where layers do not apply (--fresh, nothing to depend on, a package manager other than apt, overlays
    on a tmpfs) or the dependencies would not install on their own (the probe then installs them)."""
    if not packages.dependencies:  # resolved only where layers apply (download_packages' `layered`)
        return None
    key = layer_key(container.image, packages.dependencies, plan.recommends)
    with layer_slot(settings, key, "the dependency layer %s, which another probe is making" % key[:12]) as layer:
        if layer is None:
            say("making a dependency layer")
            layer = make_layer(settings, container, plan, packages, key)
        if layer is not None:
            container.attach_layer(layer)  # before the lock goes: gc never removes a layer in use
    return layer


def make_layer(settings: Settings, container: NspawnContainer, plan: ProbePlan, packages: Packages,
               key: str) -> Optional[Layer]:
    """Boot the container, install the dependencies at their resolved versions (marked as installed for
    others, as apt marks them), power it off as a machine, and make its overlay the layer KEY: staged under
    a name no probe reads, renamed into place whole."""
    t0 = time.monotonic()
    system = ContainerSystem(container)
    manager = system.manager
    held = {d.split("=", 1)[0]: d for d in packages.dependencies}
    container.boot()
    before, accounts = system.entries(), account_names(system)
    # a dependency that needs a package under test (a plugin of it, which it recommends) stays out: apt says
    # which in its simulation, and the probe installs it with the package
    # (a package under test that the image's sources do not carry cannot come in: apt does not know it)
    # what apt would bring besides the set (an alternative the packages under test satisfy in the real install,
    # e.g. an MTA for bsd-mailx when exim4 is under test) is refused too, until the set installs on its own
    code, output = 0, ""
    without = list(packages.names)
    for _attempt in range(12):
        code, output = system.run_captured(manager.install_without(
            list(held.values()), without, simulate=True), timeout=plan.timeout)
        unknown = set(re.findall(r"Unable to locate package (\S+)", output)) & set(without)
        unmet = set(re.findall(r"(?m)^\s*(\S+?)(?::\S+)? : (?:Pre)?Depends: ", output))
        broken = [name for name in held if name.split(":")[0] in unmet]
        extra = sorted(set(re.findall(r"(?m)^Inst (\S+?)(?::\S+)? ", output)) - {n.split(":")[0] for n in held})
        if code == 0 and extra:
            without += [name for name in extra if name not in without]
            continue
        if code == 0 or not (unknown or broken):
            break
        without = [name for name in without if name not in unknown]
        for name in broken:
            del held[name]
    if code == 0 and held:
        code, output = system.run_captured(manager.install_without(
            list(held.values()), without), timeout=plan.install_timeout)
    if code == 0 and held:
        code, output = system.run_captured(manager.installed_as_dependencies(list(held)), timeout=plan.timeout)
        accounts = account_names(system) - accounts
    container.power_off()
    if code != 0 or not held:
        log.warning("%s: no dependency layer: its %d dependencies do not install without the packages under test; "
                    "the probe installs them with the packages", container.image.name, len(packages.dependencies))
        log.info("%s: what apt said of the layer (exit %d):\n%s", container.image.name, code, tail(output, 10))
        container.overlay_of().renew()
        return None
    layer = keep_as_layer(settings, container, key, {
        "packages": sorted(held.values()), "recommends": plan.recommends, "before": before,
        "accounts": sorted(accounts)}, t0)
    log.info("%s: dependency layer %s made in %.1f s (%d packages)", container.image.name, key[:12],
             time.monotonic() - t0, len(held))
    return layer


def release_reference(settings: Settings, spec: ContainerSpec, fleet: Fleet, plan: ProbePlan) -> Baseline:
    """What purge compares with after release upgrades (README: Release upgrades): the same upgrades of the same
    image version without the packages, in a container of its own (in `fleet`), as piuparts compares with its
    upgraded base. Made once and kept as a layer directory (KEY/tree, KEY/layer.json, pruned by gc as layers
    are)."""
    import hashlib

    image = spec.image
    key = hashlib.sha256(json.dumps([LAYER_FORMAT, "release-upgrade", image.version,
                                     list(plan.release_upgrade)]).encode()).hexdigest()[:32]
    with layer_slot(settings, key, "the release upgrade's reference %s, which another probe is making" %
                    key[:12]) as layer:
        if layer is None:
            layer = make_release_reference(settings, spec, fleet, plan, key)
        if layer is None:
            raise PostrojError("the release upgrade of %s without the packages failed: purge has nothing to compare "
                               "with" % image.name, "run the probe without --purge to see the upgrade's own failure")
        os.utime(str(layer.stamp), follow_symlinks=False)  # used now (gc)
        return Baseline(overlay_entries(layer.tree), set(layer.executables), set(layer.accounts),
                        set(layer.packages), {}, layer.tree)


def make_release_reference(settings: Settings, spec: ContainerSpec, fleet: Fleet, plan: ProbePlan,
                           key: str) -> Optional[Layer]:
    """Boot the image, upgrade it along the plan's releases (upgrade_release: rebooted into the last), note its
    processes, users and groups and packages, power it off and make its overlay the reference KEY
    (keep_as_layer); None, and nothing made, when an upgrade fails (said unless the fleet was closed: the
    probe did not need the reference, or postroj is ending)."""
    t0 = time.monotonic()
    with NspawnContainer(settings, spec._replace(keep=False), fleet) as container:
        system = ContainerSystem(container)
        container.boot()
        for release in plan.release_upgrade:
            step = upgrade_release(system, plan._replace(release_packages=()), release, None)
            if step[0].status != Status.PASS:
                if fleet.closed:
                    return None
                log.warning("%s: the release upgrade to %s without the packages failed: %s", spec.image.name,
                            release, step[0].reason)
                return None
        _, listed = system.run_captured(system.manager.installed())
        executables = sorted({exe for exe, _ in container_processes(system).values()})
        accounts = sorted(account_names(system))
        container.power_off()
        layer = keep_as_layer(settings, container, key, {
            "reference": list(plan.release_upgrade), "packages": sorted(listed.split()), "before": {},
            "accounts": accounts, "executables": executables}, t0)
    log.info("%s: release upgrade reference %s made in %.1f s", spec.image.name, key[:12], time.monotonic() - t0)
    return layer


# --- the stage loop ----------------------------------------------------------------------


def live(container: System, plan: ProbePlan, packages: Optional[Packages], cancel: threading.Event,
         say: Callable[[str], None] = lambda doing: None,
         emit: Callable[[List[ProbeResult]], None] = lambda block: None,
         reference: Optional[Callable[[], Baseline]] = None) -> List[ProbeResult]:
    """The stages of the plan in the booted container, in order, each followed by its checks; a stage whose
    step fails skips the stages after it. Each stage's results but the last go to `emit` as the next stage
    begins (they are printed then); the whole list is returned."""
    image = container.image
    manager = container.manager if packages else None
    results: List[ProbeResult] = []
    baseline = Baseline.take(container) if packages and plan.purge else None
    files: "set[str]" = set()
    units = package_units((), plan)
    failed = ""
    emitted: List[ProbeResult] = []
    for stage, release in plan.stages():
        if len(results) > len(emitted):  # the stage before is over: its lines are printed now
            emit(list(results[len(emitted):]))
            emitted = list(results)
        t0, started = time.monotonic(), time.time()
        say(STAGE_DOING[stage] + (" to %s" % release if release else ""))
        if failed:
            labels = packages.labels if packages else {}
            results += [ProbeResult(image.name, p, Status.SKIP, 0.0, reason="not run: %s" % failed, stage=stage,
                                    label=labels.get(p.target, ""), release=release)
                        for p in stage_probes(plan, stage, packages, release)]
            continue
        step: List[ProbeResult] = []
        if stage == Stage.REBOOTED:
            step = [reboot(container, plan)]
        elif stage == Stage.RELEASE_UPGRADED:
            step = upgrade_release(container, plan, release, packages, say)
            if baseline and reference and release == plan.release_upgrade[-1] and step[0].status == Status.PASS:
                # purge compares with the same upgrades without the packages (made meanwhile), and what the
                # container changed before the install (postroj's own downloads) with itself
                upgraded = reference()
                baseline = upgraded._replace(entries=dict(baseline.entries, **upgraded.entries),
                                             fingerprints=baseline.fingerprints)
            if packages is not None and manager is not None:
                _, listed = container.run_captured(manager.files(packages.names))
                units = package_units((line.strip() for line in listed.splitlines()), plan)
                if step[0].status == Status.PASS:  # the stages after it name the versions the upgrade left
                    packages = packages._replace(labels=relabelled(
                        packages.labels, installed_versions(container, manager, packages.names)))
        elif packages is not None and manager is not None:
            step, listed_files = package_step(container, plan, stage, packages, manager, baseline)
            files = listed_files or files
            if stage in (Stage.INSTALLED, Stage.UPGRADED):
                _, listed = container.run_captured(manager.files(packages.names))
                units = package_units((line.strip() for line in listed.splitlines()), plan)
        installed = all(r.status == Status.PASS for r in step)  # the package manager did its part
        step = failed_during(container, step, stage, units, started)
        if stage == Stage.INSTALLED and container.layer:
            said = "%d dependencies from layer %s (made %s)\n" % (len(container.layer.packages),
                                                                  container.layer.key[:12], container.layer.made)
            step = [r._replace(output=said + r.output) if i == 0 else r for i, r in enumerate(step)]
        mark = len(results)
        results += step
        broken = ", ".join(os.path.basename(r.probe.target) for r in step if r.status == Status.FAIL)
        if broken:
            failed = "the %s stage failed (%s)" % (stage if not release else "%s to %s" % (stage, release), broken)
        say("checking after %s" % STAGE_DOING[stage] if stage != Stage.BOOTED else "probing")
        # where only systemd failed the stage (a unit, a job), the packages are there: the checks say more
        run_checks(container, plan, stage, "%s failed" % broken if failed and not installed else "", cancel, results)
        if release:  # the stage's lines name the release it upgraded to
            results[mark:] = [r._replace(release=release) for r in results[mark:]]
        if failed:
            continue
        if stage == Stage.REMOVED:
            results += check_removed(container, files, t0)
        elif stage == Stage.PURGED and baseline:
            results += check_purged(container, baseline, files, t0, plan.ignore)
    return results  # the last stage's lines are the caller's to print, once the container is gone


# ==============================================================================
# Probes: images, VMs and the matrix
# ==============================================================================


# --- probes in virtual machines ----------------------------------------------------------


def vm_probe(vm: VagrantMachine, probe: Probe, command: str, limit: float,
             judge: Callable[[int, str], bool] = lambda code, output: code == 0) -> ProbeResult:
    """Run `command` in the VM for `probe`, within `limit` s; `judge` tells a pass from its status and output."""
    t0 = time.monotonic()
    try:
        code, output = vm.capture(command, timeout=limit)
    except PostrojError as exc:  # a time-out is an error
        return ProbeResult(vm.box.label, probe, Status.FAIL, time.monotonic() - t0, reason=exc.message)
    if judge(code, output):
        return ProbeResult(vm.box.label, probe, Status.PASS, time.monotonic() - t0, output=output)
    return ProbeResult(vm.box.label, probe, Status.FAIL, time.monotonic() - t0, reason="exit status %d" % code,
                       output=output)


def vm_command_probe(vm: VagrantMachine, probe: Probe, timeout: float, packages: Dict[str, Path]) -> ProbeResult:
    """The command must exit 0 in the VM within the time-out."""
    return vm_probe(vm, probe, probe.target, timeout)


def vm_unit_probe(vm: VagrantMachine, probe: Probe, timeout: float, packages: Dict[str, Path]) -> ProbeResult:
    """The unit as the package left it, as in a container: nothing is started or enabled (run_unit_probe)."""
    return run_unit_probe(VmSystem(vm, "", packages), probe, timeout)


def vm_network_probe(vm: VagrantMachine, probe: Probe, timeout: float, packages: Dict[str, Path]) -> ProbeResult:
    """The URL must answer from inside the VM, within the time-out (the guest kind says how it asks)."""
    command, judge = GUESTS[vm.box.guest].network_check(urllib.parse.urlparse(probe.target), probe.target, timeout)
    return vm_probe(vm, probe, command, timeout + 15, judge)


def vm_package_probe(vm: VagrantMachine, probe: Probe, timeout: float, packages: Dict[str, Path]) -> ProbeResult:
    """Upload the package into the VM and install it with the guest's installer."""
    t0 = time.monotonic()
    local = packages[probe.target]
    kind = GUESTS[vm.box.guest]
    path = kind.upload_dir + local.name
    upload = vm.vagrant(["upload", str(local), path], check=False)
    if upload.returncode != 0:
        return ProbeResult(vm.box.label, probe, Status.FAIL, time.monotonic() - t0,
                           reason="uploading %s failed" % local.name,
                           output=clean_console(upload.stderr.decode("utf-8", "replace")))
    return vm_probe(vm, probe, kind.install.format(path=path), max(timeout, 300))


def vm_copy_probe(vm: VagrantMachine, probe: Probe, timeout: float, packages: Dict[str, Path]) -> ProbeResult:
    """Upload a host file or directory into the VM."""
    t0 = time.monotonic()
    source, _, target = probe.target.rpartition(":")
    proc = vm.vagrant(["upload", source, target], check=False)
    if proc.returncode == 0:
        return ProbeResult(vm.box.label, probe, Status.PASS, time.monotonic() - t0)
    return ProbeResult(vm.box.label, probe, Status.FAIL, time.monotonic() - t0, reason="upload failed")

# Where a VM's packages are uploaded, and what its file system listing leaves out besides other file systems
# (-xdev): the kernel's, the runtime's, and what PURGE_EXPECTED does not compare anyway.
VM_UPLOADS = "/tmp/postroj"
VM_LISTING = ("find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp "
              "-o -path /var/log -o -path /var/cache -o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /vagrant "
              "\\) -prune -o -printf '%y\\t%p\\n'")


class VmSystem:
    """A Linux VM as live() works on it: the stages and checks of a booted container, run as root (sudo) through
    vagrant ssh; the reboot is `vagrant reload`; purge compares listings of its file system (README:
    Lifecycle)."""

    listed_whole = True  # entries() list the whole file system: what is gone since the baseline was deleted
    what = "the VM"
    layer = None  # dependency layers are a container's

    def __init__(self, vm: VagrantMachine, manager: str, packages: Dict[str, Path]) -> None:
        self.vm = vm
        self.packages = packages
        self.image = ImageInfo(vm.box.label, vm.box.box, "", "", "", "", manager, "", 0, Path("/"))

    @property
    def manager(self) -> PackageManager:
        """The VM's package manager, locking as it does on a machine."""
        return package_manager(self.image.package_manager).on_machine()

    def run_captured(self, argv: Sequence[str], timeout: Optional[float] = 30) -> Tuple[int, str]:
        """The exit status of `argv` run as root in the VM, and what it printed; 124 when it ran out of time."""
        try:
            return self.vm.capture("sudo " + shlex.join(argv), timeout=timeout)
        except TimedOut as exc:
            return 124, exc.message

    def ended(self) -> bool:
        """A VM is not ended by what runs in it (a failed command says why itself)."""
        return False

    def journal_tail(self, lines: int = 30, unit: str = "", since: float = 0) -> str:
        """The VM's last journal lines (of `unit`), for a failure's report: all of the last, whatever `since`
        says, as the VM's clock is its own."""
        return self.run_captured(["journalctl", "--no-pager", "-n", str(lines), "-o", "short-monotonic"] +
                                 (["-u", unit] if unit else []))[1]

    def power_cycle(self) -> None:
        """Reboot the VM with `vagrant reload`: its systemd stops every unit, the machine boots again."""
        proc = self.vm.vagrant(["reload"], check=False)
        if proc.returncode != 0:
            raise PostrojError("vagrant reload %s failed with exit code %d:\n%s" % (
                self.vm.box.label, proc.returncode, vagrant_tail(proc)))

    def boot_state(self) -> str:
        """What the VM's systemd says it is (running, degraded...)."""
        return self.run_captured(["systemctl", "is-system-running"])[1]

    def clock(self) -> float:
        """The VM's own monotonic clock, as its /proc/uptime reads (0: unknown, the whole window is waited)."""
        code, out = self.run_captured(["cat", "/proc/uptime"])
        try:
            return float(out.split()[0]) if code == 0 else 0.0
        except (IndexError, ValueError):
            return 0.0

    def check(self, probe: Probe, timeout: float) -> ProbeResult:
        """Run one check (copy, unit, network, command) in the VM."""
        if probe.kind == ProbeKind.UNIT:
            return run_unit_probe(self, probe, timeout)
        return PROBE_RUNNERS[probe.kind].vm_runner()(self.vm, probe, timeout, self.packages)

    def entries(self) -> Dict[str, str]:
        """The VM's file system: path -> file, dir or link."""
        code, out = self.vm.capture("sudo " + VM_LISTING, timeout=600)
        if code != 0:
            raise PostrojError("listing the file system of %s failed with exit code %d:\n%s" % (
                self.vm.box.label, code, tail(out, 10)))
        kinds = {"d": EntryKind.DIR, "l": EntryKind.LINK, "p": EntryKind.FIFO, "s": EntryKind.SOCKET,
                 "c": EntryKind.DEVICE, "b": EntryKind.DEVICE}
        return {path: kinds.get(kind, EntryKind.FILE) for kind, _, path in
                (line.partition("\t") for line in out.splitlines()) if path.startswith("/")}

    baseline_entries = entries

    def fingerprints(self) -> Dict[str, Fingerprint]:
        """A VM's listing has no fingerprints: a path is compared by its kind alone."""
        return {}

    def difference(self, path: str, kind: str, against: Optional[Path] = None) -> Optional[str]:
        """Nothing to compare a VM's path with but its listing: as if the image had none."""
        return None

    def upload(self, paths: Sequence[Path], directory: str) -> List[str]:
        """Upload package files into the VM; their paths there."""
        inner = []
        for path in paths:
            target = "%s/%s/%s" % (VM_UPLOADS, directory, path.name)
            proc = self.vm.vagrant(["upload", str(path), target], check=False)
            if proc.returncode != 0:  # the install's first half, as a failed download is in a container
                raise DownloadFailed("uploading %s failed" % path.name, "see vagrant's lines below",
                                     vagrant_tail(proc))
            inner.append(target)
        return inner


def vm_live(vm: VagrantMachine, plan: ProbePlan, packages: Dict[str, Path],
            cancel: threading.Event) -> List[ProbeResult]:
    """The plan in a Linux VM, as in a booted container: its packages uploaded, named and downloaded with its
    own package manager and network, then the stages and their checks (live())."""
    probes = tuple(p for p in plan.probes if p.kind == ProbeKind.PACKAGE)
    if not probes:
        return live(VmSystem(vm, "", packages), plan, None, cancel)
    commands = list(dict.fromkeys(m.command for m in PACKAGE_MANAGERS.values()))
    _, found = vm.capture("for c in %s; do command -v $c >/dev/null 2>&1 && { echo $c; exit 0; }; done; exit 1"
                          % " ".join(commands))
    manager = next((str(name) for name, m in PACKAGE_MANAGERS.items() if m.command == found.strip()), "")
    system = VmSystem(vm, manager, packages)
    if not manager:
        die("%s has none of the package managers postroj knows (%s)" % (vm.box.label, ", ".join(commands)),
            "probe the box without --package")
    t0 = time.monotonic()
    try:
        new = system.upload([packages[p.target] for p in probes], "packages")
        old = system.upload([packages[s] for s in plan.upgrade_from if s != UPGRADE_FROM_ARCHIVE], "old")
        system.run_captured(["mkdir", "-p", PACKAGE_CACHE_DIR + "/partial", PACKAGE_CACHE_DIR + "/lists/partial"])
        prepared = download_packages(lambda argv, what: system.run_captured(argv, plan.install_timeout), system.image,
                                     system.manager, plan, probes, new, old)
    except DownloadFailed as exc:
        return not_downloaded(vm.box.label, plan, exc, time.monotonic() - t0)
    return live(system, plan, prepared, cancel)


# --- the matrix --------------------------------------------------------------------------


class ProbeRunner(NamedTuple):
    """How one kind of probe runs: its rank in a run, in a booted container (None: installed before the
    boot), in a VM. Adding a kind of probe: a ProbeKind, a row here, and its command-line option."""

    rank: int
    in_container: Optional[Callable[[ContainerSystem, Probe, float], ProbeResult]]
    in_vm: Optional[Callable[[VagrantMachine, Probe, float, Dict[str, Path]], ProbeResult]]

    def container_runner(self) -> Callable[[ContainerSystem, Probe, float], ProbeResult]:
        """How the kind runs in a booted container; an error for a kind that is a stage, not a check."""
        if self.in_container is None:
            raise PostrojError("a stage of a package's life is not a check a container runs")
        return self.in_container

    def vm_runner(self) -> Callable[[VagrantMachine, Probe, float, Dict[str, Path]], ProbeResult]:
        """How the kind runs in a VM; an error for a kind that is a stage, not a check."""
        if self.in_vm is None:
            raise PostrojError("a stage of a package's life is not a check a VM runs")
        return self.in_vm


PROBE_RUNNERS: Dict[ProbeKind, ProbeRunner] = {
    ProbeKind.PACKAGE: ProbeRunner(0, None, vm_package_probe),
    ProbeKind.COPY: ProbeRunner(1, run_copy_probe, vm_copy_probe),
    ProbeKind.UNIT: ProbeRunner(2, run_unit_probe, vm_unit_probe),
    ProbeKind.NETWORK: ProbeRunner(3, run_network_probe, vm_network_probe),
    ProbeKind.COMMAND: ProbeRunner(4, run_command_probe, vm_command_probe),
    ProbeKind.REBOOT: ProbeRunner(5, None, None),  # stages of a package's life, not probes one asks for
    ProbeKind.LEFTOVER: ProbeRunner(6, None, None),
}


def order_probes(probes: Sequence[Probe]) -> Tuple[Probe, ...]:
    """Probes in the order of their kinds' ranks, in the order given within a kind."""
    return tuple(sorted(probes, key=lambda p: PROBE_RUNNERS[p.kind].rank))


def release_endpoints(image: ImageInfo, plan: ProbePlan) -> Tuple[Tuple[str, int], ...]:
    """What a container's release upgrades reach through the package proxy: the archives of the image's sources,
    those of each release as its publisher's image has them, and the vendors' repositories (--repo)."""
    releases = [find_distribution(release) for release in plan.release_upgrade]  # checked: in the catalogue
    urls = [line.split()[1] for dist in releases if dist for line in apt_sources(dist)] + \
        [r.url for r in plan.repos if r.for_image(image.name)]
    found = list(archive_endpoints(Path(image.path))) + [url_endpoint(url) for url in urls]
    return tuple(dict.fromkeys(e for e in found if e))


def release_package_cache(settings: Settings, release: str) -> Path:
    """The package cache of a catalogue release (the one its images share: package_cache_for), where the package
    proxy keeps what a release upgrade to it downloads."""
    dist = find_distribution(release)
    assert dist is not None
    numbered = dist.version and not (dist.name == "debian" and "debian-testing" in dist.aliases)
    return package_cache_named(settings, "%s-%s" % (dist.name, dist.version if numbered else dist.release))


def probe_image(settings: Settings, host: Host, target: ImageTarget, plan: ProbePlan, *, cancel: threading.Event,
                packages: Dict[str, Path], fleet: Optional[Fleet] = None,
                say: Callable[[str, str], None] = lambda image, doing: None,
                emit: Callable[[List[ProbeResult]], None] = lambda block: None,
                tell: Callable[[str], None] = lambda text: log.warning("%s", text)) -> List[ProbeResult]:
    """Boot one fresh container of the target's image (acquired first when it is not), run the plan's probes
    in order, and throw it away (with plan.keep_on_failure and a failure, leave it running and `tell` how to
    enter and end it). Each stage's results go to `emit` as it ends; the list returned begins with what was
    emitted (after a failure half-way, the failure's results follow). What fails before the package's life
    begins (the image, its boot, a download the network or the host failed) is ERROR: not tested."""
    t0 = time.monotonic()
    emitted: List[ProbeResult] = []
    judged = False  # the package's life has begun: what fails from here on is the package's

    def stage_ended(block: List[ProbeResult]) -> None:
        emitted.extend(block)
        emit(block)

    name = target.name
    plan = plan._replace(probes=tuple(p for p in plan.probes if p.for_image(name)), release_packages=tuple(
        p for p in plan.probes if p.only and any(p.for_image(release) for release in plan.release_upgrade)))
    if not any(p.kind == ProbeKind.PACKAGE for p in plan.probes):  # its packages are all other images'
        plan = plan._replace(upgrade_from=(), remove=False, purge=False)
    if cancel.is_set():  # --fail-fast: another image failed first; reported as within an image
        return [ProbeResult(name, probe, Status.SKIP, 0.0, reason="not run: --fail-fast") for probe in plan.probes]
    try:
        say(name, "acquiring" if target.image is None else "starting")
        image = obtain_image(settings, host, target)  # package types were checked by cmd_probe
        packaged = any(p.kind == ProbeKind.PACKAGE for p in plan.probes)
        binds: Tuple[Bind, ...] = ()
        if packaged:  # the booted container installs from the cache what was downloaded before it booted
            cache = package_cache_for(settings, Path(image.path))
            binds = (Bind(str(cache), PACKAGE_CACHE_DIR),)
        proxy: Tuple[Tuple[str, int], ...] = ()
        if plan.release_upgrade and plan.private_network:  # the releases' archives, through the package proxy
            proxy = release_endpoints(image, plan)
        spec = ContainerSpec(image, host, binds, private_network=plan.private_network,
                             boot_timeout=plan.boot_timeout, keep=plan.keep_on_failure, package_proxy=proxy,
                             proxy_cache=str(release_package_cache(settings, plan.release_upgrade[-1]))
                             if proxy else "",
                             # the new releases' systemd (Ubuntu 26.04's 259) may refuse cgroup v1 at its upgrade
                             unified=bool(plan.release_upgrade))
        with NspawnContainer(settings, spec, fleet) as container:
            if packaged:
                say(name, "downloading packages")
                try:
                    prepared = prepare_packages(settings, image, container, plan, packages)
                except DownloadFailed as exc:
                    return not_downloaded(name, plan, exc, time.monotonic() - t0)
                use_layer(settings, container, plan, prepared, lambda doing: say(name, doing))
            else:
                prepared = None
            # the same release upgrades without the packages, for purge to compare with: made (once) in a
            # container of its own while this one goes through the stages before
            maker = Background(lambda own: release_reference(settings, spec, own, plan)) \
                if prepared and plan.release_upgrade and plan.purge else None

            def reference() -> Baseline:
                nonlocal judged
                assert maker is not None
                if not maker.done():
                    say(name, "waiting for the release upgrade's reference without the packages")
                try:
                    return maker.result()
                except PostrojError:
                    judged = False  # the upgrade without the packages failed: what is left is not tested
                    raise

            try:
                say(name, "booting")
                container.boot()
                judged = True
                t1 = time.monotonic()
                results = live(ContainerSystem(container), plan, prepared, cancel, lambda doing: say(name, doing),
                               stage_ended, reference if maker else None)
            finally:
                if maker:  # not needed (a stage before failed), or postroj is ending: not made
                    maker.abandon()
            container.timings["probes"] = time.monotonic() - t1
            container.boot_state()
            if plan.keep_on_failure and any(r.status == Status.FAIL for r in results):
                container.release()
                tell("%s failed: its container %s is kept for a look\n  enter it: %s\n  end it:   postroj stop %s" % (
                    name, container.machine, container.how.enter_hint(container), container.machine))
        log.info("%s: %s", name, format_timings(container.timings))
        return results
    except PostrojError as exc:
        if isinstance(exc, UsageError):
            raise
        reason = exc.message + ("\nhint: %s" % exc.hint if exc.hint else "")
        status = Status.FAIL if judged else Status.ERROR
        return emitted + [ProbeResult(name, probe, status, time.monotonic() - t0, reason=reason)
                          for probe in plan.probes]
    except OSError as exc:  # the host's own limits (a full disk): this image's; the others go on
        where = " (%s)" % exc.filename if exc.filename else ""
        reason = "postroj could not go on: %s%s\nhint: check the free space and permissions of POSTROJ_HOME and " \
                 "POSTROJ_CACHE, then run `postroj gc`" % (exc.strerror or exc, where)
        log.error("%s: %s", name, reason)
        # before the package's life: not tested; during it, the package (a service that fills the disk) did it
        status = Status.FAIL if judged else Status.ERROR
        return emitted + [ProbeResult(name, probe, status, time.monotonic() - t0, reason=reason)
                          for probe in plan.probes]


def probe_vm(settings: Settings, box: Box, plan: ProbePlan, *, provider: str, keep: bool,
             packages: Dict[str, Path], report: Callable[[List[ProbeResult]], None],
             keep_on_failure: bool = False) -> Tuple[List[ProbeResult], bool]:
    """The probes in a VM of `box` brought up for them and destroyed after (unless `keep`, or it was up
    before: a VM of `postroj vm up` is the user's); the results, and whether a VM it should end is left running.
    A Linux guest gets the stages of the packages' life as a container does; others, each probe in turn."""
    vm = VagrantMachine(settings, box, provider)
    if not keep and (vm.directory / VM_UP_MARK).exists():
        keep = True
        log.warning("%s was up before this run (`postroj vm up`): probing it, and leaving it up", box.label)
    results: List[ProbeResult] = []
    left_running = False
    t0 = time.monotonic()
    try:
        vm.up()
        if GUESTS[box.guest].units:
            results = vm_live(vm, plan, packages, threading.Event())
            report(results)
        else:
            for probe in plan.probes:
                results.append(PROBE_RUNNERS[probe.kind].vm_runner()(vm, probe, plan.timeout, packages))
                report(results[-1:])
    except PostrojError as exc:
        if results:
            raise
        # the VM did not come up, or could not be reached: nothing of the package was tested
        results = [ProbeResult(box.label, p, Status.ERROR, time.monotonic() - t0, reason=exc.message)
                   for p in plan.probes]
        report(results)
    finally:
        if keep_on_failure and any(r.status in (Status.FAIL, Status.ERROR) for r in results):
            keep = True
            log.warning("%s failed: its VM is kept for a look (`postroj vm run %s`; end it with `postroj vm destroy "
                        "%s`)", box.label, box.label, box.label)
        if not keep:
            left_running = not vm.destroy_or_warn()
    return results, left_running


def run_matrix(images: Sequence[T], jobs: int, fail_fast: bool,
               probe_one: Callable[[T, threading.Event, Fleet, Callable[[List[ProbeResult]], None]],
                                   List[ProbeResult]],
               report: Callable[[List[ProbeResult]], None]) -> List[ProbeResult]:
    """Probe each image, `jobs` at a time, reporting each stage's results as the stage ends (an image's block
    of lines whole, never interleaved with another's). A failure (with `fail_fast`) cancels the images not
    begun; a signal or an error ends the containers of the other threads too. The results are returned in
    the order of the images."""
    cancel = threading.Event()
    fleet = Fleet()
    results: List[ProbeResult] = []
    lock = threading.Lock()

    def one(name: T) -> List[ProbeResult]:
        shown = [0]

        def emit(block: List[ProbeResult]) -> None:
            if block:
                with lock:
                    report(block)
            shown[0] += len(block)

        found = probe_one(name, cancel, fleet, emit)
        emit(found[shown[0]:])  # what was not shown as its stage ended: a failure's results
        if fail_fast and any(r.status in (Status.FAIL, Status.ERROR) for r in found):
            cancel.set()
        return found

    if jobs == 1 or len(images) == 1:
        # no threads where they buy nothing: one image, or one at a time
        for name in images:
            results += one(name)
        return results
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, name) for name in images]
        try:
            for future in futures:
                # waits of 0.2 s: a stop signal the kernel gave a worker (which starts processes, so cannot
                # block it) leaves the main thread asleep in an untimed wait; a timed one wakes and acts on it
                while not future.done():
                    concurrent.futures.wait([future], timeout=0.2)
                results += future.result()
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            fleet.close_all()
            raise
    return results


# ==============================================================================
# Garbage collection
# ==============================================================================


def list_layers(settings: Settings) -> List[Tuple[Layer, float, int]]:
    """The complete dependency layers: each with its last use (a time) and its size, the latest used first."""
    found = []
    if settings.layers.is_dir():
        for entry in settings.layers.iterdir():
            layer = read_layer(entry) if not entry.name.startswith(".") else None
            if layer is not None:
                with contextlib.suppress(OSError):
                    found.append((layer, os.lstat(str(layer.stamp)).st_mtime, layer.size))
    return sorted(found, key=lambda item: -item[1])


def prune_layers(settings: Settings, days: float, gb: float) -> List[str]:
    """Remove half-made layers (their maker gone), layers of image versions that are gone, layers unused for
    `days`, and the longest unused while all of them take more than `gb`; never one a probe uses or makes."""
    removed: List[str] = []
    if not settings.layers.is_dir():
        return removed
    for entry in sorted(settings.layers.iterdir()):
        # half-made: staged by a postroj that was killed, or a layer directory that is not whole
        match = re.match(r"^\.making-([0-9a-f]+)-\d+$", entry.name) or \
            (re.match(r"^([0-9a-f]{32})$", entry.name) if read_layer(entry) is None else None)
        if match:
            with file_lock(settings.layers / (".%s.lock" % match.group(1)), wait=False) as free:
                if free:
                    remove_tree(entry)
                    removed.append(entry.name)
    total = sum(size for _, _, size in list_layers(settings))
    for layer, used, size in reversed(list_layers(settings)):  # the longest unused first
        if layer.root and os.path.isdir(layer.root) and time.time() - used < days * 86400 and total <= gb * 1e9:
            continue
        with file_lock(settings.layers / (".%s.lock" % layer.key), wait=False) as free, \
                file_lock(layer.stamp, wait=False) as unused:
            if free and unused:
                remove_tree(layer.directory)
                removed.append(layer.key)
                total -= size
    return removed


PROXY_STAGING_DAYS = 1  # a package proxy writes its download for minutes at most: older, its postroj was killed


def prune_proxy_staging(settings: Settings) -> List[str]:
    """Remove what package proxies killed in a download left in the package caches (.postroj-proxy.*, a day
    old; links unlinked, never followed): RELEASE/NAME of each."""
    removed = []
    with contextlib.suppress(OSError):
        for cache in os.scandir(settings.packages):
            if not cache.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                for entry in os.scandir(cache.path):
                    if entry.name.startswith(".postroj-proxy.") and not entry.is_dir(follow_symlinks=False) and \
                            entry.stat(follow_symlinks=False).st_mtime < time.time() - PROXY_STAGING_DAYS * 86400:
                        os.unlink(entry.path)
                        removed.append("%s/%s" % (cache.name, entry.name))
    return removed


def collect_garbage(settings: Settings, layer_days: float = 14, layer_gb: float = 20) -> List[str]:
    """End leftover containers, remove stale runtime and staging state, unused image versions, and dependency
    layers unused for `layer_days` or beyond `layer_gb` in all (the longest unused first)."""
    done = []
    for machine in list_machines(settings, include_stale=True):
        if not machine.alive:
            end_machine(settings, machine)
            done.append("machine %s" % machine.name)
    # what killed runs left running (a bootstrap's mmdebstrap, a guest's systemd) ends before their files go
    done += ["cgroup %s" % name for name in sorted(set(remove_stale_run_cgroups(settings.home_key, settings.locks)
                                                       + remove_orphan_cgroups(settings)))]
    if settings.runtime.is_dir():
        for entry in settings.runtime.iterdir():
            files = RuntimeFiles(settings.runtime, RuntimeFiles.machine_of(entry.name) if entry.is_file()
                                 else entry.name)
            if not files.state.exists() and not lock_is_held(files.lock):
                remove_tree(entry)
                done.append("runtime %s" % entry.name)
    if settings.tmp.is_dir():
        for entry in settings.tmp.iterdir():
            name = entry.name.rpartition(".")[0]  # mkdtemp's suffix has no dots; image names may
            if entry.name.startswith(".doomed-") or not lock_is_held(settings.locks / ("image-%s.lock" % name)):
                remove_tree(entry)
                done.append("staging %s" % entry.name)
    done += ["image version %s" % v.name for v in prune_versions(settings)]
    done += ["dependency layer %s" % name for name in prune_layers(settings, layer_days, layer_gb)]
    done += ["package proxy's staging %s" % name for name in prune_proxy_staging(settings)]
    return done


# ==============================================================================
# Reports
# ==============================================================================

class LiveStatus:
    """On a terminal, a line per image that runs: what it does now and for how long, redrawn every second;
    cleared before a result prints and drawn again after it. Off in a pipe, with -v (the log says it) and
    with --json - (stdout is data)."""

    def __init__(self, enabled: bool, out: IO[str]) -> None:
        self.enabled = enabled
        self.out = out  # where results go: stdout, or stderr when stdout carries --json -
        self.lock = threading.Lock()
        self.running: Dict[str, Tuple[str, float]] = {}
        self.drawn = 0
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> "LiveStatus":
        if self.enabled:
            # the status lines hold the terminal: an acquisition's Step logs instead of drawing over them
            self.enabled = Step.terminal.acquire(blocking=False)
        if self.enabled:
            self.thread = display_thread(self.tick)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()
        with self.lock:
            self.clear()
        if self.enabled:
            Step.terminal.release()

    def tick(self) -> None:
        """Redraw once a second, for the elapsed times."""
        while not self.stop.wait(1.0):
            with self.lock:
                self.clear()
                self.draw()

    def say(self, image: str, doing: str) -> None:
        """`image` is now `doing` (acquiring, booting, installing...); '' when it is done."""
        if not self.enabled:
            return
        with self.lock:
            self.clear()
            if doing:
                since = self.running.get(image, ("", time.monotonic()))[1]
                self.running[image] = (doing, since)
            else:
                self.running.pop(image, None)
            self.draw()

    def print(self, text: str, out: Optional[IO[str]] = None) -> None:
        """A result's lines (or, on `out`, a note), below no status line."""
        with self.lock:
            self.clear()
            print(text, file=out or self.out, flush=True)
            self.draw()

    def clear(self) -> None:
        """Erase the status lines, so that a line printed next starts where they were."""
        if self.drawn:
            sys.stderr.write("\x1b[J")  # the cursor is at the top of the status lines: clear to the end
            sys.stderr.flush()
            self.drawn = 0

    def draw(self) -> None:
        """Write a status line per running image below the printed output, the cursor left above them."""
        if not self.enabled or not self.running:
            return
        now = time.monotonic()
        lines = ["postroj: %-20s %s %.0f s" % (image, doing, now - since)
                 for image, (doing, since) in self.running.items()]
        sys.stderr.write("".join("\x1b[K%s\n" % line for line in lines) + "\x1b[%dA" % len(lines))
        sys.stderr.flush()
        self.drawn = len(lines)


STATUS_COLORS = {Status.PASS: 32, Status.FAIL: 31, Status.SKIP: 33, Status.ERROR: 35}  # green, red, yellow, magenta


def format_result(result: ProbeResult, color: bool = False) -> str:
    """One terminal line per image × probe; a failure (or an image not tested) adds its reason, output and
    journal."""
    word = str(result.status).upper()
    if color:
        word = "\x1b[%dm%s\x1b[0m" % (STATUS_COLORS[result.status], word)
    # names in full, never cut: a longer one moves the time to the right
    line = "%s  %-20s %-50s %6.2fs" % (word, result.image, result.heading, result.duration)
    if result.warning:
        line += "\n      warning: %s" % result.warning
    if result.status == Status.SKIP and result.reason:
        return "%s\n      reason: %s" % (line, result.reason)
    if result.status not in (Status.FAIL, Status.ERROR):
        return line
    parts = [line, "      reason: %s" % result.reason.replace("\n", "\n              ")]
    for label, text in (("output", result.output), ("journal", result.details)):
        if text.strip():
            parts.append("      %s:" % label)
            parts.extend("        " + line for line in text.splitlines())
    return "\n".join(parts)


def format_results(results: Sequence[ProbeResult], color: bool = False) -> str:
    """The lines of a block of results: a run of checks of one image skipped for one reason (nothing to check
    after a failed install) is one line naming their stages, not a line each."""
    lines: List[str] = []
    index = 0
    while index < len(results):
        first = results[index]
        end = index + 1
        while end < len(results) and results[end].status == Status.SKIP and first.status == Status.SKIP and \
                (results[end].image, results[end].reason) == (first.image, first.reason):
            end += 1
        if end - index < 3:
            lines += [format_result(r, color) for r in results[index:end]]
        else:
            word = "\x1b[%dmSKIP\x1b[0m" % STATUS_COLORS[Status.SKIP] if color else "SKIP"
            stages = ", ".join(dict.fromkeys(str(r.stage) for r in results[index:end] if r.stage)) or "this run"
            lines.append("%s  %-20s %d checks (%s)\n      reason: %s" % (word, first.image, end - index, stages,
                                                                       first.reason))
        index = end
    return "\n".join(lines)


def results_json(results: Sequence[ProbeResult], wall: Optional[float] = None,
                 shard: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """The results as --json writes them (README: JSON), with the run's wall time where it is known and the
    shard K of N it was."""
    return {
        "schema": JSON_SCHEMA,
        "version": __version__,
        "passed": all(r.status not in (Status.FAIL, Status.ERROR) for r in results),
        "untested": sorted({r.image for r in results if r.status == Status.ERROR}),
        "wall": None if wall is None else round(wall, 3),
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        "results": [{"image": r.image, "kind": r.probe.kind, "target": r.probe.target, "status": r.status,
                     "duration": round(r.duration, 3), "reason": r.reason, "output": r.output, "details": r.details,
                     "stage": str(r.stage or ""), "release": r.release, "warning": r.warning, "name": r.heading}
                    for r in results],
    }


REPORT_MAX_BYTES = 64 << 20  # a report of 10,000 probes with long outputs is a few MiB


def read_report(path: str) -> Dict[str, Any]:
    """The JSON of a `--json` report: a regular file of at most REPORT_MAX_BYTES."""
    hint = "give the --json files of probe runs"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)  # a FIFO must not block
    except FileNotFoundError:
        die("%s does not exist" % path, hint, usage=True)
    except OSError as exc:
        die("cannot read %s: %s" % (path, exc.strerror or exc), "check the path and its permissions", usage=True)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        die("%s is %s, not a report" % (path, "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"),
            hint, usage=True)
    with open(fd, "rb") as handle:
        data = handle.read(REPORT_MAX_BYTES + 1)
    if len(data) > REPORT_MAX_BYTES:
        die("%s is too large for a report (more than %s)" % (path, human_size(REPORT_MAX_BYTES)), hint, usage=True)
    try:
        return json.loads(data.decode("utf-8"))  # NaN and Infinity are refused where they stand (durations)
    except RecursionError:
        die("%s is nested too deeply to be a report" % path, hint, usage=True)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
        die("%s is not JSON: %s" % (path, exc), hint, usage=True)


def results_from_json(path: str) -> List[ProbeResult]:
    """The results of a `--json` report (a shard's, or another run's); what is not one is a usage error."""
    return load_report(path)[0]


def report_shard(data: Dict[str, Any], path: str) -> Optional[Tuple[int, int]]:
    """The shard K of N a report says it is (None for a whole run's), checked."""
    shard = data.get("shard")
    if shard is None:
        return None
    try:
        index, count = shard["index"], shard["count"]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (index, count)) or \
                not 1 <= index <= count <= 10000:
            raise ValueError(shard)
        return index, count
    except (TypeError, KeyError, ValueError):
        die("%s: shard %s is not K of N" % (path, str(shard)[:60]), "give the --json files of probe runs, unchanged",
            usage=True)


def load_report(path: str) -> Tuple[List[ProbeResult], Optional[float], Optional[Tuple[int, int]]]:
    """The results of a `--json` report, the wall time of its run (None where it has none) and its shard."""
    data = read_report(path)
    hint = "give the --json files of probe runs, unchanged"
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        die("%s is not a postroj report: it has no \"results\" list" % path, hint, usage=True)
    schema = data.get("schema", JSON_SCHEMA)
    if schema != JSON_SCHEMA:
        die("%s has schema %s; this postroj reads schema %d" % (path, str(schema)[:20], JSON_SCHEMA),
            "merge reports with the postroj that wrote them", usage=True)
    found = []
    for number, row in enumerate(rows, 1):
        try:
            probe = Probe(ProbeKind(row["kind"]), text_safe(str(row["target"])))
            try:
                duration = float(row.get("duration", 0))
            except OverflowError:
                duration = float("inf")
            if not 0 <= duration < float("inf"):
                raise ValueError("duration %r is not a number of seconds" % row.get("duration"))
            stage = str(row.get("stage") or "")
            reason, output, details, warning = (text_safe(str(row.get(key, ""))) for key in (
                "reason", "output", "details", "warning"))
            named = text_safe(str(row.get("name", "")))
            release = text_safe(str(row.get("release") or ""))
            plain = ProbeResult("", probe, Status.PASS, 0.0, stage=Stage(stage) if stage else None, release=release)
            prefix = plain.heading[:len(plain.heading) - len(probe.target)]  # STAGE: KIND
            label = named[len(prefix):] if probe.kind == ProbeKind.PACKAGE and named.startswith(prefix) and \
                named != plain.heading else ""
            found.append(ProbeResult(text_safe(str(row["image"])), probe, Status(row["status"]), duration, reason,
                                     output, details, Stage(stage) if stage else None, label, warning, release))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            die("%s: result %d is malformed (%s: %s)" % (path, number, type(exc).__name__, exc), hint, usage=True)
    wall = data.get("wall")
    if wall is not None:
        try:
            if isinstance(wall, bool) or not 0 <= float(wall) < float("inf"):
                raise ValueError(wall)
            wall = float(wall)
        except (TypeError, ValueError, OverflowError):
            die("%s: wall %s is not a number of seconds" % (path, str(wall)[:40]), hint, usage=True)
    return found, wall, report_shard(data, path)


def merge_reports(paths: Sequence[str], allow_partial: bool = False) -> Tuple[List[ProbeResult], Optional[float]]:
    """The results of several reports, and the sum of their runs' wall times (None when one has none); a
    file given twice, or one result in two files, is refused: it would be counted twice. Shards' reports
    must be the whole set, each once (unless `allow_partial`: then what is missing is said)."""
    seen_files: Dict[Tuple[int, int], str] = {}
    seen: Dict[Tuple[str, str, str, str], str] = {}
    results = []
    walls: List[Optional[float]] = []
    shards: Dict[str, Optional[Tuple[int, int]]] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen_files:
                die("%s is given twice (also as %s)" % (path, seen_files[(st.st_dev, st.st_ino)]),
                    "give each shard's report once", usage=True)
            seen_files[(st.st_dev, st.st_ino)] = path
        found, wall, shard = load_report(path)
        walls.append(wall)
        shards[path] = shard
        for result in found:
            key = (result.image, str(result.stage or ""), str(result.probe.kind), result.probe.target)
            if seen.get(key, path) != path:
                die("%s and %s both hold %s on %s: a shard given twice would be counted twice" % (
                    seen[key], path, result.probe.title, result.image),
                    "give each shard's report once; merge separate runs with separate `postroj report` calls",
                    usage=True)
            seen[key] = path
            results.append(result)
    check_shards(shards, allow_partial)
    return results, None if None in walls else sum(w for w in walls if w is not None)


def check_shards(shards: Dict[str, Optional[Tuple[int, int]]], allow_partial: bool) -> None:
    """Refuse an incomplete or mixed set of shards' reports (path -> K of N, None for a whole run's): a
    missing shard's images would pass unseen."""
    given = {path: shard for path, shard in shards.items() if shard is not None}
    if not given:
        return
    hint = "give every shard's --json once (or --allow-partial to merge what there is, saying what is missing)"
    whole = [path for path, shard in shards.items() if shard is None]
    counts = {count for _, count in given.values()}
    if whole or len(counts) > 1:
        die("the reports are not shards of one run: %s" % ", ".join(
            "%s (%s)" % (path, "%d of %d" % shard if shard else "a whole run") for path, shard in shards.items()),
            hint, usage=True)
    count = counts.pop()
    by_index: Dict[int, List[str]] = {}
    for path, (index, _) in given.items():
        by_index.setdefault(index, []).append(path)
    doubled = {index: paths for index, paths in by_index.items() if len(paths) > 1}
    if doubled:
        die("shard %s given twice: %s" % (", ".join("%d of %d" % (i, count) for i in sorted(doubled)),
                                           "; ".join(", ".join(p) for p in doubled.values())), hint, usage=True)
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        said = "shard %s of %d %s missing" % (", ".join(map(str, missing)), count, "is" if len(missing) == 1 else
                                               "are")
        if not allow_partial:
            die(said, hint, usage=True)
        log.warning("%s: the merged report holds the other shards' images only", said)


def shard_of(images: Sequence[str], shard: Tuple[int, int]) -> List[str]:
    """The images of shard K of N: every N-th image from the K-th on, so that the N shards are disjoint, hold
    every image once, and differ by one image at most. All probes of an image stay in its shard: one container
    serves them."""
    number, count = shard
    return [image for index, image in enumerate(images) if index % count == number - 1]


def take_shard(images: Sequence[str], shard: Tuple[int, int]) -> List[str]:
    """shard_of(), refusing a shard that holds nothing: a run that probes nothing must not pass."""
    mine = shard_of(images, shard)
    if not mine:
        die("shard %d/%d holds no image: there are %d in all" % (shard[0], shard[1], len(images)),
            "split the run into at most %d shards" % len(images), usage=True)
    log.info("shard %d/%d: %s", shard[0], shard[1], ", ".join(mine))
    return mine


# What XML 1.0 cannot carry, even escaped: controls but tab, newline and return; lone surrogates; U+FFFE, U+FFFF.
XML_FORBIDDEN = "[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]"


def xml_safe(text: str) -> str:
    """`text` as XML can hold it: each character XML 1.0 forbids becomes '?'."""
    return re.sub(XML_FORBIDDEN, "?", str(text))


def text_safe(text: str) -> str:
    """`text` as UTF-8 can hold it: lone surrogates (from JSON's \\ud800) become U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def junit_xml(results: Sequence[ProbeResult], wall: Optional[float] = None) -> bytes:
    """JUnit XML: a testsuite per image, a testcase per probe, failures with message and output; the
    testsuites' time is the run's wall time (`wall`; the probes' sum where it is not known)."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="postroj", tests=str(len(results)),
                        failures=str(sum(r.status == Status.FAIL for r in results)),
                        errors=str(sum(r.status == Status.ERROR for r in results)),
                        skipped=str(sum(r.status == Status.SKIP for r in results)),
                        time="%.3f" % (sum(r.duration for r in results) if wall is None else wall))
    by_image: Dict[str, List[ProbeResult]] = {}
    for result in results:
        by_image.setdefault(result.image, []).append(result)
    for image, items in by_image.items():
        suite = ET.SubElement(suites, "testsuite", name=xml_safe(image), tests=str(len(items)),
                              failures=str(sum(r.status == Status.FAIL for r in items)),
                              errors=str(sum(r.status == Status.ERROR for r in items)),
                              skipped=str(sum(r.status == Status.SKIP for r in items)),
                              time="%.3f" % sum(r.duration for r in items), timestamp=now_iso())
        for r in items:
            case = ET.SubElement(suite, "testcase", classname=xml_safe("postroj.%s" % image),
                                 name=xml_safe(r.heading),
                                 time="%.3f" % r.duration)
            if r.status in (Status.FAIL, Status.ERROR):  # <error>: not tested (the image, its boot, the network)
                failure = ET.SubElement(case, "failure" if r.status == Status.FAIL else "error",
                                        message=xml_safe(r.reason), type=str(r.probe.kind))
                failure.text = xml_safe("\n".join(t for t in (r.output, r.details) if t))
            elif r.status == Status.SKIP:
                ET.SubElement(case, "skipped", message=xml_safe(r.reason))
            if r.output or r.warning:
                said = "\n".join(t for t in ("warning: %s" % r.warning if r.warning else "", r.output) if t)
                ET.SubElement(case, "system-out").text = xml_safe(said)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def check_report_path(target: Optional[str], option: str) -> None:
    """Refuse a report path that cannot be written, before anything runs: an empty one, a missing directory, a
    directory, a socket, a file postroj may not write (immutable, read-only). A link is written through, as a
    shell's redirection writes (to its target, made when it is missing); a FIFO or a terminal in place."""
    if target is None or target == "-":
        return
    hint = "give a file in a directory that exists and can be written, or - for stdout"
    if not target:
        die("%s needs a path" % option, hint, usage=True)
    real = os.path.realpath(target)  # through links, as a redirection goes (for a file: its directory)
    try:
        st: Optional[os.stat_result] = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        die("cannot write the %s report to %s: %s" % (option, target, exc.strerror or exc), hint, usage=True)
    if st is not None and stat.S_ISDIR(st.st_mode):
        die("cannot write the %s report to %s: it is a directory" % (option, target), hint, usage=True)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        die("cannot write the %s report to %s: it is a %s" % (
            option, target, "socket" if stat.S_ISSOCK(st.st_mode) else "block device"), hint, usage=True)
    if st is not None and not stat.S_ISFIFO(st.st_mode):
        try:  # opened for appending, which changes nothing: an immutable or read-only file says so now
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY))
        except OSError as exc:
            die("cannot write the %s report to %s: %s" % (option, target, exc.strerror or exc), hint, usage=True)
        if not stat.S_ISREG(st.st_mode):
            return
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        die("cannot write the %s report to %s: %s is not a directory" % (option, target, parent), hint, usage=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        die("cannot write the %s report to %s: %s is not writable" % (option, target, parent), hint, usage=True)


def check_report_paths(json_path: Optional[str], junit_path: Optional[str]) -> None:
    """check_report_path for --json and --junit, and not both to the same file (one would overwrite the
    other)."""
    check_report_path(json_path, "--json")
    check_report_path(junit_path, "--junit")
    same = bool(json_path and junit_path and json_path != "-" and
                os.path.realpath(json_path) == os.path.realpath(junit_path))
    if same and (os.path.isfile(str(json_path)) or not os.path.exists(str(json_path))):  # not /dev/null
        die("--json and --junit both write %s" % json_path, "give each report a file of its own", usage=True)


def write_output(target: str, data: bytes) -> None:
    """Write a report: `-` to stdout; through a link to what it names (made when missing), as a redirection
    writes; a regular file or a new path atomically (a temporary file beside it, renamed); a FIFO or a
    terminal written in place, never replaced, and a FIFO only when a process reads it (never blocks)."""
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    real = os.path.realpath(target)
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(target)
            if not stat.S_ISREG(st.st_mode):
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
                except OSError as exc:
                    if stat.S_ISFIFO(st.st_mode) and exc.errno == 6:  # ENXIO: nobody has it open for reading
                        die("cannot write the report to %s: no process reads the FIFO" % target,
                            "start its reader before postroj ends, or give a file")
                    raise
                os.set_blocking(fd, True)
                with open(fd, "wb") as out:
                    out.write(data)
                return
        path = Path(real)
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=".%s." % path.name[:64], suffix=".tmp", dir=str(path.parent))
        try:
            with open(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        die("cannot write the report to %s: %s" % (target, exc.strerror or exc),
            "check the path, its directory's permissions and the free space")


def print_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    """Rows under headers, in columns, on stdout."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def finish_report(results: Sequence[ProbeResult], json_path: Optional[str] = None,
                  junit_path: Optional[str] = None, wall: Optional[float] = None,
                  shard: Optional[Tuple[int, int]] = None) -> int:
    """The summary line on stderr (with the run's wall time), the JSON and JUnit reports, and probe's exit
    code: a failure of a package first, then an image that could not be tested."""
    failed = sum(r.status == Status.FAIL for r in results)
    untested = sorted({r.image for r in results if r.status == Status.ERROR})
    took = " in %.1f s" % wall if wall is not None else ""
    print("%d passed, %d failed, %d skipped%s%s" % (
        sum(r.passed for r in results), failed, sum(r.status == Status.SKIP for r in results),
        "; not tested: %s" % ", ".join(untested) if untested else "", took), file=sys.stderr)
    if json_path:
        write_output(json_path, (json.dumps(results_json(results, wall, shard), indent=2) + "\n").encode())
    if junit_path:
        write_output(junit_path, junit_xml(results, wall))
    return EXIT_FAILURE if failed else EXIT_UNTESTED if untested else EXIT_OK


# ==============================================================================
# autopkgtest testbed
# ==============================================================================

AUTOPKGTEST_NAME = "autopkgtest-virt-postroj"

# The testbed's scratch directory: outside /tmp, which systemd may mount a tmpfs over, and the same path after
# revert and reboot, as autopkgtest wants. Its host side is never read or written by a copy: root in the
# testbed can plant links there, which only the container may resolve (README: Security).
AUTOPKGTEST_DOWNTMP = "/var/tmp/autopkgtest"

# autopkgtest's own exit status for a failure of its virtualisation server (VirtSubproc's Quit(12)).
AUTOPKGTEST_FAILURE = 12


class NotOk(NamedTuple):
    """The reply to a command that failed without breaking the testbed (`copy-failed`)."""

    reply: str


class TestbedFailure(Exception):
    """A command autopkgtest may not give now: the server says why on stderr, closes the testbed, exits 12."""


class AutopkgtestTestbed:
    """A virtualisation server for autopkgtest (README.virtualisation-server.rst of Debian's autopkgtest):
    line commands on stdin, `ok ...` replies on stdout, one postroj container per `open`, thrown away by
    `close`, `revert` (a fresh overlay) and at the end, however it ends."""

    CAPABILITIES = ("revert", "revert-full-system", "isolation-container", "root-on-testbed", "reboot")

    def __init__(self, settings: Settings, spec: ContainerSpec, stdin: IO[str], stdout: IO[str],
                 copy_timeout: float = 300) -> None:
        self.settings = settings
        self.spec = spec
        self.copy_timeout = copy_timeout
        self.stdin = stdin
        self.stdout = stdout
        self.container: Optional[NspawnContainer] = None

    # --- the protocol ---

    def serve(self) -> int:
        """Answer commands until `quit` (0), or until a failure or the end of stdin (12)."""
        self.reply("ok")
        try:
            while True:
                line = self.stdin.readline()
                if not line:
                    raise TestbedFailure("end of file - caller quit?")
                words = [urllib.parse.unquote(word) for word in line.split()]
                if not words:
                    raise TestbedFailure("empty commands are not permitted")
                if any("\0" in word for word in words):
                    raise TestbedFailure("`%s': an argument holds a NUL character" % words[0])
                if words == ["quit"]:
                    self.close()
                    self.reply("ok")
                    return EXIT_OK
                handler = getattr(self, "cmd_" + words[0].replace("-", "_"), None)
                if handler is None:
                    raise TestbedFailure("unknown command `%s'" % words[0])
                self.check_arguments(handler, len(words) - 1, words[0])
                try:
                    answer = handler(*words[1:])
                except PostrojError as exc:
                    raise TestbedFailure("%s: %s%s" % (words[0], exc.message,
                                                       "\nhint: %s" % exc.hint if exc.hint else "")) from None
                except OSError as exc:
                    where = " (%s)" % exc.filename if exc.filename else ""
                    raise TestbedFailure("%s: %s%s" % (words[0], exc.strerror or exc, where)) from None
                if isinstance(answer, NotOk):  # a command that failed but leaves the testbed usable
                    self.reply(answer.reply)
                else:
                    self.reply("ok %s" % answer if answer else "ok")
        except TestbedFailure as exc:
            print("%s: failure: %s" % (AUTOPKGTEST_NAME, exc), file=sys.stderr)
            return AUTOPKGTEST_FAILURE
        finally:
            self.close()

    @staticmethod
    def check_arguments(handler: Callable[..., Any], given: int, name: str) -> None:
        """Refuse a command with too few or too many words, as autopkgtest's own servers do."""
        import inspect

        parameters = list(inspect.signature(handler).parameters.values())
        needed = sum(p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD for p in parameters)
        variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
        if given < needed:
            raise TestbedFailure("too few arguments to command `%s'" % name)
        if given > len(parameters) and not variadic:
            raise TestbedFailure("too many arguments to command `%s'" % name)

    def reply(self, line: str) -> None:
        """One reply line to autopkgtest."""
        try:
            self.stdout.write(line + "\n")
            self.stdout.flush()
        except BrokenPipeError:
            # autopkgtest closes its end before it sends `quit`: the reply has no reader, and the
            # interpreter's last flush at exit must not fail on it either
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stdout.fileno())

    def require_open(self, name: str) -> NspawnContainer:
        """The open testbed, or autopkgtest's failure for a command that needs one."""
        if self.container is None:
            raise TestbedFailure("`%s' when not open" % name)
        return self.container

    # --- commands ---

    def cmd_capabilities(self) -> str:
        # never downtmp-host=: autopkgtest would then read and write the scratch directory's host side
        # itself, following the links the testbed planted there
        """What the testbed can do."""
        return " ".join(self.CAPABILITIES)

    def cmd_open(self) -> str:
        """Boot a container of the image; the scratch directory's path."""
        if self.container is not None:
            raise TestbedFailure("`open' when already open")
        check_state_dirs(self.settings)
        container = NspawnContainer(self.settings, self.spec)
        self.container = container
        container.create()
        container.boot()
        container.boot_state()
        return AUTOPKGTEST_DOWNTMP

    def cmd_close(self) -> None:
        """End the container."""
        self.require_open("close")
        self.close()

    def cmd_revert(self) -> str:
        """Boot a fresh overlay of the image: nothing a test did survives."""
        container = self.require_open("revert")
        container.revert()
        container.boot_state()
        return AUTOPKGTEST_DOWNTMP

    def cmd_reboot(self, mode: str = "") -> None:
        """Reboot as a machine reboots: the testbed's systemd stops its units and powers off (ended only past
        the boot time-out, said in the log), and the same overlay boots again. prepare-only
        (autopkgtest-reboot-prepare): the scratch directory is the host's, so there is nothing to save; the
        mark is removed, which lets the test go on and reboot the testbed itself, and the same overlay boots
        again once it is down."""
        container = self.require_open("reboot")
        if mode == "prepare-only":
            container.commands.execute(["rm", "-f", "/run/autopkgtest-reboot-prepare-mark"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            deadline = time.monotonic() + 300
            while not container.commands.ended():
                if time.monotonic() > deadline:
                    raise TestbedFailure("timed out waiting for the testbed to reboot")
                time.sleep(0.1)
            container.reboot()
        elif mode:
            raise TestbedFailure("unknown argument `%s' to command `reboot'" % mode)
        else:
            container.power_cycle()
        container.boot_state()  # autopkgtest takes no scratch path from this reply, whatever the spec says
        return None

    def cmd_print_execute_command(self) -> str:
        """The argv prefix autopkgtest runs commands in the testbed with, URL-quoted."""
        prefix = self.require_open("print-execute-command").commands.exec_prefix()
        return ",".join(urllib.parse.quote(arg) for arg in prefix)

    def cmd_copydown(self, source: str, target: str) -> Optional[NotOk]:
        """Copy a host file or tree into the testbed."""
        return self.copy("copydown", source, target, up=False)

    def cmd_copyup(self, source: str, target: str) -> Optional[NotOk]:
        """Copy a file or tree of the testbed to the host."""
        return self.copy("copyup", source, target, up=True)

    def cmd_auxverb_debug_fail(self) -> None:
        """What autopkgtest asks after a failure, for its log: the testbed's state, on stderr."""
        if self.container is not None:
            log.warning("%s: %s; last journal lines:\n%s", self.container.machine,
                        self.container.commands.system_state(10) or "not running",
                        self.container.commands.journal_tail(15))

    def cmd_shell(self, directory: str, *environment: str) -> None:
        """An interactive shell in the testbed on the caller's terminal (autopkgtest --shell)."""
        container = self.require_open("shell")
        script = "cd %s; %s exec bash -i 2>/dev/null || exec sh -i" % (
            shlex.quote(directory), "".join("export %s; " % shlex.quote(e) for e in environment))
        try:
            with open("/dev/tty", "rb") as tty_in, open("/dev/tty", "wb") as tty_out:
                container.commands.execute(["sh", "-c", script], stdin=tty_in, stdout=tty_out, stderr=tty_out)
        except OSError as exc:
            log.error("cannot run a shell: %s", exc)

    # --- copies ---

    def copy(self, name: str, source: str, target: str, up: bool) -> Optional[NotOk]:
        """copyup/copydown: directories when both paths end in /, files when neither does. The testbed's path
        is resolved in the container only (cat and tar run there); the host's is autopkgtest's own, written
        through a temporary file (a file) or from a checked archive (a tree). Each copy has `copy_timeout`."""
        if self.container is None:
            raise TestbedFailure("%s when not open" % name)  # autopkgtest's wording, without quotes
        container = self.container
        if not source or not target:
            raise TestbedFailure("%s paths must be nonempty" % name)
        directory = source.endswith("/")
        if directory != target.endswith("/"):
            raise TestbedFailure("%s paths must agree about directoryness (presence or absence of trailing /)"
                                 % name)
        host, inside = (target, source) if up else (source, target)
        copier = {(False, False): self.file_down, (False, True): self.file_up, (True, False): self.tree_down,
                  (True, True): self.tree_up}[(directory, up)]
        try:
            copier(container, host, inside)
        except (OSError, PostrojError) as exc:
            log.warning("%s %s %s failed: %s", name, source, target, getattr(exc, "message", exc))
            return NotOk("copy-failed")
        return None

    def in_testbed(self, container: NspawnContainer, script: str, inside: str, **streams: Any) -> None:
        """Run `script` (sh, with the testbed path as $1) in the container, bounded by the copy time-out there
        (what nsenter started must not outlive it) and here."""
        argv = ["timeout", "--signal=KILL", "%.0f" % max(1, self.copy_timeout), "sh", "-ec", script, "sh", inside]
        code = container.commands.execute(argv, timeout=self.copy_timeout + 5, **streams)
        if code != 0:
            raise PostrojError("exit status %d in the testbed%s" % (
                code, " (time-out: %s s)" % self.copy_timeout if code in (124, 137) else ""))

    def file_down(self, container: NspawnContainer, host: str, inside: str) -> None:
        """A host file into the testbed (executable when it is), through cat there."""
        mode = ' && chmod +x -- "$1"' if os.stat(host).st_mode & 0o111 else ""
        with open(host, "rb") as source:
            self.in_testbed(container, 'cat > "$1"' + mode, inside, stdin=source, stdout=subprocess.DEVNULL)

    def file_up(self, container: NspawnContainer, host: str, inside: str) -> None:
        """A testbed file (cat there) to the host through a temporary file beside the target."""
        target = Path(host)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % target.name[:64], suffix=".part", dir=str(target.absolute().parent))
        try:
            with open(fd, "wb") as out:
                self.in_testbed(container, 'exec cat -- "$1"', inside, stdin=subprocess.DEVNULL, stdout=out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def tree_down(self, container: NspawnContainer, host: str, inside: str) -> None:
        """A host tree into the testbed, through tar on both sides."""
        with spawn(["tar", "--directory", host, "--warning=none", "-c", "-f", "-", "."],
                           stdout=subprocess.PIPE) as local:
            self.in_testbed(container, 'mkdir -p -- "$1"; cd "$1"; exec tar --warning=none --preserve-permissions '
                            '--extract --no-same-owner -f -', inside, stdin=local.stdout, stdout=subprocess.DEVNULL)
            assert local.stdout is not None  # spawned with stdout=PIPE
            local.stdout.close()
            if local.wait() != 0:
                raise PostrojError("tar exit status %d on the host" % local.returncode)

    def tree_up(self, container: NspawnContainer, host: str, inside: str) -> None:
        """A testbed tree (tar there) to the host, spooled, checked whole, then extracted."""
        assert container.files is not None
        with tempfile.TemporaryFile(dir=str(container.files.directory)) as spool:
            self.in_testbed(container, 'cd "$1"; exec tar --warning=none -c -f - .', inside,
                            stdin=subprocess.DEVNULL, stdout=spool)
            spool.seek(0)
            extract_untrusted_tree(spool, Path(host))

    def close(self) -> None:
        """End the container, if one is open."""
        container, self.container = self.container, None
        if container is not None:
            container.close()


# ==============================================================================
# Command line
# ==============================================================================

def positive_int(text: str) -> int:
    """A whole number of at least 1 (argparse's type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, not %d" % value)
    return value


def shard_spec(text: str) -> Tuple[int, int]:
    """K/N with 1 <= K <= N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise argparse.ArgumentTypeError("%r is not K/N with 1 <= K <= N, e.g. 2/4" % text)
    return int(match.group(1)), int(match.group(2))


MAX_SECONDS = 7 * 24 * 3600  # a time-out beyond a week is a typo, and beyond what select() and sleep() take


def positive_number(unit: str, most: float, aside: str = "") -> Callable[[str], float]:
    """An argparse type: a number of `unit` above 0 and at most `most` (beyond it, a typo)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a number" % text)
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError("must be a positive number of %s, not %s" % (unit, text))
        if value > most:
            raise argparse.ArgumentTypeError("must be at most %d %s%s, not %s" % (most, unit, aside, text))
        return value
    return parse


positive_float = positive_number("seconds", MAX_SECONDS, " (7 days)")  # time-outs


def parse_bind(spec: str, readonly: bool) -> Bind:
    """`SRC[:DST]` with an existing absolute SRC and an absolute DST."""
    source, _, target = spec.partition(":")
    if not source:
        die("invalid --bind %r" % spec, "write --bind SRC[:DST]", usage=True)
    path = Path(source).absolute()
    if not path.exists():
        die("--bind source %s does not exist" % source, "create it, or fix the path", usage=True)
    target = target or str(path)
    if not target.startswith("/") or ".." in target.split("/"):
        die("invalid bind target %r" % target, "give an absolute path inside the container", usage=True)
    return Bind(str(path), target, readonly)


def parse_setenv(spec: str) -> Tuple[str, str]:
    """`NAME=VALUE` of --setenv, checked."""
    name, sep, value = spec.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        die("invalid --setenv %r" % spec, "write --setenv NAME=VALUE", usage=True)
    return name, value


def container_mounts(args: argparse.Namespace) -> Tuple[Tuple[Bind, ...], Tuple[Tuple[str, str], ...]]:
    """--bind, --bind-ro and --setenv as they are checked and resolved (usage errors before anything runs)."""
    binds = tuple([parse_bind(s, False) for s in args.bind] + [parse_bind(s, True) for s in args.bind_ro])
    return binds, tuple(parse_setenv(s) for s in args.setenv)


def package_source(spec: str, option: str) -> str:
    """A package file or URL as the command line gives it, checked: an absolute path or the URL."""
    if spec.startswith(("http://", "https://")):
        if not package_type(parse_url(spec).path):
            die("%s does not name a package" % spec, "the URL must end in .deb, .rpm or .msi", usage=True)
        return spec
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec):
        die("unsupported scheme in %s %r" % (option, spec), "use a path, http:// or https://", usage=True)
    check_package_file(Path(spec))
    return str(Path(spec).absolute())


def lifecycle(args: argparse.Namespace, probes: Sequence[Probe]) -> Dict[str, Any]:
    """The stages of a package's life the command line asks for (ProbePlan's fields), checked."""
    packaged = any(p.kind == ProbeKind.PACKAGE for p in probes)
    upgrade_from = tuple(s if s == UPGRADE_FROM_ARCHIVE else package_source(s, "--upgrade-from")
                         for s in args.upgrade_from)
    ignore = tuple(ignored_path(path) for path in args.ignore)
    if ignore and not args.purge:
        die("--ignore names paths purge does not compare: it needs --purge", "add --purge, or drop --ignore",
            usage=True)
    for option, given in (("--upgrade-from", upgrade_from), ("--remove", args.remove), ("--purge", args.purge)):
        if given and not packaged:
            die("%s needs --package: it is a stage of the packages' life" % option,
                "add the packages with --package", usage=True)
    if UPGRADE_FROM_ARCHIVE in upgrade_from and len(upgrade_from) > 1:
        die("--upgrade-from archive takes the old version from the image's sources: no files with it",
            "give either archive or the old package files", usage=True)
    if any(p.by_name for p in probes) and upgrade_from and UPGRADE_FROM_ARCHIVE not in upgrade_from:
        die("--install takes its old version from the image's sources: --upgrade-from archive, not files",
            "use --upgrade-from archive with --install, or give the new version as a file with --package",
            usage=True)
    chain = tuple(canonical_image(t) for t in args.release_upgrade)
    # a package built for a release of the chain upgrades the image's own after the release upgrade
    check_package_set([p for p in probes if not p.only or canonical_image(p.only) not in chain],
                      [s for s in upgrade_from if s != UPGRADE_FROM_ARCHIVE])
    for target in chain:
        if find_distribution(target) is None:
            check_name(target)
            raise unknown_name_error("--release-upgrade", target, all_labels(), "give a release of the catalogue, "
                                     "e.g. --release-upgrade debian-trixie")
    if len(set(chain)) != len(chain):
        die("--release-upgrade %s is given twice" % [t for t in chain if chain.count(t) > 1][0],
            "give each release of the chain once, in order", usage=True)
    # no dependency layer below a release upgrade: the layer's packages would be upgraded in every probe
    return {"upgrade_from": upgrade_from, "release_upgrade": chain, "reboot": args.reboot,
            "remove": args.remove or args.purge,
            "purge": args.purge, "start_units": args.start_units, "recommends": not args.no_install_recommends,
            "fresh": args.fresh or bool(chain), "ignore": ignore}


def check_package_set(probes: Sequence[Probe], upgrade_from: Sequence[str]) -> None:
    """Refuse, before anything boots, what would pass for the wrong reason: one package given twice for one
    image (apt installs one of the two), and an --upgrade-from file of a package no --package brings (its
    "upgrade" would install something else beside it). Local files are read as package_identity() reads
    them; URLs are downloaded later and not checked here."""
    def identified(source: str) -> Optional[PackageIdentity]:
        if source.startswith(("http://", "https://")):
            return None
        if not source.startswith("/"):  # --install NAME[=VERSION]: its version is the sources' to say
            return PackageIdentity(source.partition("=")[0], source.partition("=")[2] or "from the sources")
        return package_identity(Path(source), package_type(source))

    new = [(p, identified(p.target)) for p in probes if p.kind == ProbeKind.PACKAGE]
    hint = "give each package once (--package or --install); to test an upgrade from one version to another, use " \
           "--upgrade-from OLD --package NEW"
    for i, (probe, ident) in enumerate(new):
        for other, theirs in new[:i]:
            shared = not probe.only or not other.only or canonical_image(probe.only) == canonical_image(other.only)
            if ident and theirs and ident.name == theirs.name and shared:
                die("%s %s and %s %s are both %s (%s and %s): one package given twice for %s" % (
                    "--install" if other.by_name else "--package", other.target,
                    "--install" if probe.by_name else "--package", probe.target, ident.name, theirs.version,
                    ident.version, probe.only or other.only or "every image"), hint, usage=True)
    old = [(source, identified(source)) for source in upgrade_from]
    for i, (source, ident) in enumerate(old):
        if ident and any(theirs and theirs.name == ident.name for _, theirs in old[:i]):
            die("--upgrade-from %s is %s, given twice" % (source, ident.name), hint, usage=True)
    names = {ident.name for _, ident in new if ident}
    if all(ident for _, ident in new):
        for source, ident in old:
            if ident and ident.name not in names:
                die("--upgrade-from %s is package %s, which no --package brings (%s)" % (
                    source, ident.name, ", ".join(sorted(names))), "--upgrade-from takes an older version of a "
                    "package that --package gives", usage=True)


def ignored_path(path: str) -> str:
    """An --ignore path, checked: absolute, normalized, not the root; the path without a trailing slash."""
    clean = os.path.normpath(path) if path.startswith("/") else ""
    if not clean or clean in ("/", "//") or clean != path.rstrip("/") or any(ch in path for ch in "\0\n\r"):
        die("invalid --ignore %r" % path[:200], "give an absolute path in the container, e.g. --ignore "
            "/var/lib/myapp (it and everything below it are not compared after the purge)", usage=True)
    return clean


def check_copy_source(settings: Settings, source: str) -> Path:
    """A --copy source, checked before anything boots: a regular file or a directory (a device or a FIFO
    would be read without end), neither inside postroj's state nor holding it (a copy of the state into
    itself)."""
    hint = "give a regular file or a directory of your own, outside POSTROJ_HOME and POSTROJ_CACHE"
    try:
        st = os.stat(source)
    except FileNotFoundError:
        die("--copy source %s does not exist" % source, "check the path", usage=True)
    except OSError as exc:
        die("--copy source %s cannot be read: %s" % (source, exc.strerror or exc), hint, usage=True)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        die("--copy source %s is not a regular file or a directory" % source, hint, usage=True)
    real = os.path.realpath(source)
    for name, state in (("POSTROJ_HOME", settings.home), ("POSTROJ_CACHE", settings.cache)):
        top = os.path.realpath(str(state))
        inside = real == top or real.startswith(top.rstrip("/") + "/")
        if inside or top.startswith(real.rstrip("/") + "/"):
            die("--copy source %s %s %s (%s)" % (source, "lies inside" if inside else "holds", name, top), hint,
                usage=True)
    return Path(source).absolute()


def installed_by_name(spec: str, images: Sequence[str]) -> Probe:
    """An --install [IMAGE=]NAME[=VERSION], checked: a package of the image's own sources, by name (IMAGE= when
    the part before the first = is an image of the run or of the catalogue)."""
    parts = spec.split("=")
    image = parts[0] if len(parts) == 3 or (len(parts) == 2 and (
        parts[0] in images or find_distribution(parts[0]) is not None)) else ""
    name, _, version = "=".join(parts[1:] if image else parts).partition("=")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._-]*", name) or not re.fullmatch(r"[A-Za-z0-9.+~:_-]*", version) or \
            (image and not re.fullmatch(NAME_PATTERN, image)) or len(spec) > 300:
        die("invalid --install %r" % spec[:300], "write --install NAME, NAME=VERSION or IMAGE=NAME[=VERSION], "
            "e.g. --install nginx or --install debian-bookworm=nginx=1.22.1-9", usage=True)
    return Probe(ProbeKind.PACKAGE, "%s=%s" % (name, version) if version else name, only=image)


def image_prefixed(spec: str, images: Sequence[str], rest: Callable[[str], bool]) -> Tuple[str, str]:
    """(IMAGE, REST) of an option's `[IMAGE=]REST`: IMAGE where the part before the first = names an image of the
    run or of the catalogue and what follows is `rest`-shaped; ('', spec) otherwise."""
    image, sep, tail_ = spec.partition("=")
    if sep and (image in images or find_distribution(image) is not None) and rest(tail_):
        return image, tail_
    return "", spec


def parse_repositories(args: argparse.Namespace,
                       fetch: Callable[[str], Path] = lambda url: Path(url)) -> Tuple[Repository, ...]:
    """The --repo entries with their --repo-key keys (one key for all, or one a repository, in order), checked
    before anything boots: a one-line `deb ...` entry or a deb822 .sources file, http(s) URLs, keys that are
    OpenPGP keys (armored or binary) in regular files or at http(s) URLs (`fetch` downloads one, as the
    instructions' curl does), signed-by paths absolute in the container."""
    hint = "write --repo 'deb [signed-by=/usr/share/keyrings/vendor.gpg] https://HOST/PATH SUITE COMPONENT' " \
           "(or give a .sources file) and --repo-key KEYFILE"
    keys = [image_prefixed(k, args.image, lambda text: True) for k in args.repo_key]
    if keys and len(keys) not in (1, len(args.repo)):
        die("%d --repo-key for %d --repo" % (len(keys), len(args.repo)), "give one key for every repository, or "
            "one key each, in the order of the --repo options", usage=True)
    repos = []
    for index, spec in enumerate(args.repo):
        only, text = image_prefixed(spec, args.image, lambda t: t.startswith(("deb ", "/", ".")))
        deb822 = not text.startswith("deb ")
        if deb822:
            try:
                text = user_file(text, "--repo", hint, 1 << 20).decode("utf-8")
            except UnicodeDecodeError:
                die("--repo %s is not text" % text, hint, usage=True)
            if not re.search(r"(?mi)^Types:\s*deb\b", text) and text.lstrip().startswith("deb "):
                deb822 = False  # a .list file of one-line entries
        one_line = r"deb \[([^\]]*)\] (\S+) (\S+)(?: \S+)*\s*$" if text.strip().startswith("deb [") else \
            r"deb ()(\S+) (\S+)(?: \S+)*\s*$"  # options, URL, suite, components
        url_match = re.search(r"(?mi)^URIs:\s*(\S+)", text) if deb822 else re.match(one_line, text.strip())
        if url_match is None or "\n" in text.strip() and not deb822 or any(ch in text for ch in "\0\r"):
            die("invalid --repo %r" % spec[:300], hint, usage=True)
        url = url_match.group(1 if deb822 else 2)
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/\S*)?", url):
            die("--repo %r: the repository's URL must be http:// or https://" % spec[:300], hint, usage=True)
        signed = re.search(r"(?mi)^Signed-By:\s*(\S+)\s*$", text) if deb822 else \
            re.search(r"signed-by=([^\s\]]+)", url_match.group(1) or "")
        key, key_path = (keys[index if len(keys) > 1 else 0][1], "") if keys else ("", "")
        if key:
            key = check_key_file(str(fetch(key)) if key.startswith(("http://", "https://")) else key)
            key_path = signed.group(1) if signed else "/etc/apt/keyrings/postroj-repo-%d.%s" % (
                index + 1, "asc" if user_file(key, "--repo-key", hint, 1 << 20).startswith(b"-----BEGIN") else "gpg")
            if not signed and not deb822:  # the key is the one this entry trusts, as instructions write it
                text = re.sub(r"^deb (\[([^\]]*)\] )?", lambda m: "deb [%ssigned-by=%s] " % (
                    (m.group(2) + " ") if m.group(2) else "", key_path), text.strip())
            elif not signed:
                text = text.rstrip("\n") + "\nSigned-By: %s\n" % key_path
        if key_path and (not key_path.startswith("/") or os.path.normpath(key_path) != key_path):
            die("--repo %r: signed-by %s is not a plain absolute path" % (spec[:300], key_path), hint, usage=True)
        repos.append(Repository(text, deb822, url, key, key_path, only))
    if keys and not repos:
        die("--repo-key without --repo", hint, usage=True)
    return tuple(repos)


def user_file(path: str, option: str, hint: str, limit: int) -> bytes:
    """The bytes of a file the command line names (a link to one too), at most `limit`: anything else is a usage
    error naming `option`."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            die("%s %s is not a regular file" % (option, path), hint, usage=True)
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        die("%s %s cannot be read: %s" % (option, path, exc.strerror or exc), hint, usage=True)
    if len(data) > limit:
        die("%s %s is larger than %d bytes" % (option, path, limit), hint, usage=True)
    return data


def check_key_file(path: str) -> str:
    """A --repo-key, checked: a regular file (a key URL downloaded) that holds an OpenPGP public key, armored or
    binary; its absolute path."""
    hint = "give the repository's signing key as a file, armored (-----BEGIN PGP PUBLIC KEY BLOCK-----) or binary"
    head = user_file(path, "--repo-key", hint, 1 << 20)[:64]
    tag = head[0] if head else 0  # a public-key packet (tag 6), in the old format or the new
    if not (head.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") or
            (tag & 0xc0 == 0x80 and (tag >> 2) & 0x0f == 6) or (tag & 0xc0 == 0xc0 and tag & 0x3f == 6)):
        die("--repo-key %s is not an OpenPGP public key" % path, hint, usage=True)
    return os.path.abspath(path)


def image_release(settings: Settings, name: str) -> Optional[Distribution]:
    """The catalogue release an image is: its label's, or for an image acquired under another name the release
    its os-release names (ID and VERSION_ID, or VERSION_CODENAME); None when it is none of the catalogue's."""
    found = find_distribution(name)
    info = find_image(settings, name) if found is None else None
    if info is not None:
        fields = read_os_release(Path(info.path))
        for dist in DISTRIBUTIONS:
            if dist.name == fields.get("ID") and fields.get("VERSION_CODENAME") == dist.release:
                return dist
    return found


def build_probes(args: argparse.Namespace, settings: Settings) -> Tuple[Probe, ...]:
    """The probes of the command line, checked before anything boots."""
    probes = []
    for spec in args.package:
        image, sep, path = spec.partition("=")
        if sep and path and re.fullmatch(NAME_PATTERN, image) and not os.path.lexists(spec):
            probes.append(Probe(ProbeKind.PACKAGE, package_source(path, "--package"), only=image))
        else:
            probes.append(Probe(ProbeKind.PACKAGE, package_source(spec, "--package")))
    probes += [installed_by_name(spec, args.image) for spec in args.install]
    for spec in args.copy:
        source, sep, target = spec.rpartition(":")
        if not sep or not source or not target.startswith("/"):
            die("invalid --copy %r" % spec, "write --copy SRC:/ABSOLUTE/DST", usage=True)
        probes.append(Probe(ProbeKind.COPY, "%s:%s" % (check_copy_source(settings, source), target)))
    probes += [Probe(ProbeKind.UNIT, unit) for unit in args.check_unit]
    probes += [Probe(ProbeKind.NETWORK, parse_network_target(u), args.expect_status, args.expect_body or "")
               for u in args.check_network]
    probes += [Probe(ProbeKind.COMMAND, c) for c in args.command]
    for unit in args.check_unit:
        if not re.fullmatch(r"[A-Za-z0-9@:._\\-]+", unit):
            die("invalid unit name %r" % unit, "give a systemd unit name, e.g. nginx or nginx.service", usage=True)
        if re.search(r"@(\.[a-z]+)?$", unit):
            die("%s is a template unit, which never runs itself" % unit,
                "give an instance of it, e.g. %s" % re.sub(r"@(\.[a-z]+)?$", r"@1\1", unit), usage=True)
    if args.expect_status is not None and not 100 <= args.expect_status <= 599:
        die("--expect-status %d is not an HTTP status" % args.expect_status, "use 100 to 599", usage=True)
    return order_probes(probes)


class Check(NamedTuple):
    """One line of `doctor`: what was checked, whether it is fine, and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def doctor_checks(settings: Settings) -> List[Check]:
    """Everything postroj needs from the host, in the order a reader fixes it."""
    checks = [Check("root", is_root(), "running as uid %d" % os.geteuid(), "run postroj as root (sudo)")]
    nspawn = tool_version("systemd-nspawn")
    checks.append(Check("systemd-nspawn", bool(nspawn), nspawn or "not found", "apt-get install systemd-container"))
    checks.append(Check("nsenter", bool(shutil.which("nsenter")), "util-linux", "apt-get install util-linux"))
    mode = host_mode(settings)
    if mode == HostMode.MACHINED:
        detail = "reachable: containers are registered (mode: machined)"
    else:
        detail = "not running: --register=no, commands through nsenter (mode: nsenter)"
    checks.append(Check("systemd-machined", True, detail, "", required=False))
    checks.append(Check("overlayfs", overlayfs_available(), "in /proc/filesystems" if overlayfs_available()
                        else "not in /proc/filesystems", "modprobe overlay"))
    layout = cgroup_layout()
    if layout.startswith("unified"):
        layout += ": every guest gets it"
    elif layout:
        layout += ": guests with systemd >= %d get the unified hierarchy in their container, older ones the " \
                  "host's layout" % UNIFIED_SINCE_SYSTEMD
    checks.append(Check("cgroups", bool(layout), layout or "no cgroup file system at /sys/fs/cgroup",
                        "mount cgroup2 on /sys/fs/cgroup"))
    problem = state_dir_problem(settings)
    checks.append(Check("state directories", not problem, problem[0] if problem else "POSTROJ_HOME %s, POSTROJ_CACHE "
                        "%s" % (settings.home, settings.cache), problem[1] if problem else ""))
    home_fs = filesystem_of(settings.home) or "unknown"
    checks.append(Check("overlay upper directories", True, "on a tmpfs per container (POSTROJ_HOME is on overlay)"
                        if overlay_upper_on_tmpfs(settings) else "in POSTROJ_HOME (%s)" % home_fs))
    outside = cgroup_outside_namespace()
    scoped = bool(outside) and systemd_scopes_available()
    checks.append(Check("cgroup namespace", not outside or scoped,
                        "postroj's own cgroup" if not outside else "outside it (%s): %s" % (
                            outside, "nspawn runs in scopes of its own" if scoped else "containers cannot start"),
                        "start postroj from a process of this host's own, not `nsenter --all` from outside"))
    for tool in ("skopeo", "umoci"):  # bootstrapped, tarball and directory images need neither
        version = tool_version(tool)
        checks.append(Check(tool, bool(version), version or "not found: needed for images from registries only "
                            "(docker://, oci:); bootstrapped and tarball images work without it",
                            "apt-get install %s" % tool, required=False))
    bootstrap = tool_version("mmdebstrap") or tool_version("debootstrap")
    checks.append(Check("mmdebstrap", bool(bootstrap), bootstrap or "neither mmdebstrap nor debootstrap found",
                        "apt-get install mmdebstrap", required=False))
    vagrant = tool_version("vagrant")
    if vagrant:
        providers = vagrant_providers(settings)
        detail = "%s; providers: %s; winrm boxes need the winrm gem, which Debian does not package" % (
            vagrant, ", ".join(providers) or "none found")
    else:
        detail = "not found (only needed for `postroj vm`)"
    checks.append(Check("vagrant", bool(vagrant), detail, "apt-get install vagrant", required=False))
    return checks


def cmd_list_images(args: argparse.Namespace, settings: Settings) -> int:
    """The catalogue, the VM boxes and the acquired images (or all of it as JSON)."""
    check_state_dirs(settings, cache=False, write=False)
    acquired = {info.name: info for info in list_images(settings)}
    day = today()
    if args.json:
        data = {
            "schema": JSON_SCHEMA,
            "distributions": [dict(d._asdict(), label=d.label, fullname=d.fullname, ended=d.ended(day),
                                   acquired=d.label in acquired) for d in DISTRIBUTIONS],
            "boxes": [b._asdict() for b in BOXES],
            "images": [info.as_json() for info in acquired.values()],
            "layers": [{"key": layer.key, "image": layer.image,
                        "packages": list(layer.packages), "made": layer.made, "size": size,
                        "used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(used))}
                       for layer, used, size in list_layers(settings)],
        }
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print("Distributions:")
    rows = []
    for d in DISTRIBUTIONS:
        info = acquired.get(d.label)
        support = "%s (ended)" % d.eol if d.ended(day) else d.eol or "-"
        rows.append([d.label, d.version or "-", d.package_manager, support, ", ".join(d.aliases) or "-",
                     "yes (%s)" % human_size(info.size) if info else "no"])
    print_table(rows, ["LABEL", "VERSION", "PACKAGES", "SUPPORTED UNTIL", "ALIASES", "ACQUIRED"])
    print("\nVirtual machine boxes (postroj vm):")
    print_table([[b.label, b.box, b.guest, b.communicator, str(b.cpus), str(b.memory)] for b in BOXES],
                ["LABEL", "BOX", "GUEST", "COMMUNICATOR", "CPUS", "MEMORY"])
    print("\nAcquired images (%s):" % settings.images)
    if acquired:
        print_table([[i.name, i.os_release, human_size(i.size), i.acquired, i.digest[:19] or "-", i.source]
                     for i in acquired.values()], ["NAME", "OS", "SIZE", "ACQUIRED", "DIGEST", "SOURCE"])
    else:
        print("  none; acquire one with `postroj image debian-bookworm`")
    layers = list_layers(settings)
    if layers:
        print("\nDependency layers (%s; `postroj gc` removes those long unused):" % settings.layers)
        rows = [[layer.key[:12], layer.image or "?", str(len(layer.packages)),
                 human_size(size), layer.made, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(used))]
                for layer, used, size in layers]
        print_table(rows, ["LAYER", "IMAGE", "PACKAGES", "SIZE", "MADE", "LAST USED"])
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """What postroj needs of this host, found or missing; exit 1 when a required part is missing."""
    checks = doctor_checks(settings)
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, "mode": host_mode(settings), "checks": [c._asdict() for c in checks]},
                         indent=2))
    else:
        rows = [[c.name, "ok" if c.ok else ("missing" if c.required else "optional"), c.detail] for c in checks]
        print_table(rows, ["CHECK", "STATUS", "DETAIL"])
        for required, label in ((True, "to fix"), (False, "optional")):
            packages = sorted({c.fix.split()[-1] for c in checks if not c.ok and c.required == required
                               and c.fix.startswith("apt-get install")})
            if packages:
                print("%s: apt-get install %s" % (label, " ".join(packages)))
        for c in checks:
            if not c.ok and c.fix and not c.fix.startswith("apt-get install"):
                print("to fix %s: %s" % (c.name, c.fix))
    return EXIT_OK if all(c.ok for c in checks if c.required) else EXIT_FAILURE


def cmd_image(args: argparse.Namespace, settings: Settings) -> int:
    """Acquire, provision and activate the images named: every source parsed and checked before any is
    fetched."""
    names = list(args.names)
    if args.all:
        names = [d.label for d in DISTRIBUTIONS if include_in_all(d.label, args.include_eol)]
    if not names:
        die("no image given", "name one, for example `postroj image debian-bookworm`, or pass --all", usage=True)
    if args.name and len(names) > 1:
        die("--name works with one image only", "run postroj image once per image", usage=True)
    sources = []
    for name in names:  # refuse bad input before anything is fetched
        default, source = parse_source(name, SourceKind(args.via) if args.via else None, args.mirror or settings.mirror, args.sha256,
                                       security=args.security_mirror, accept_expired=args.accept_expired)
        if source.kind == SourceKind.DIRECTORY:
            check_directory_source(settings, source.location)
        if args.variant and not args.name:
            default = "%s-%s" % (default, args.variant)  # debian-bookworm-ci beside debian-bookworm
        sources.append((name, check_name(args.name or default), source))
    for name in names:
        warn_if_ended(name)
    host = container_host(settings, "acquiring images")
    check_state_dirs(settings)
    failed = 0
    for name, image_name, source in sources:
        try:
            info = acquire_image(settings, host, image_name, source, force=args.force,
                                 variant=Variant(args.variant) if args.variant else None)
        except PostrojError as exc:
            if len(names) == 1:
                raise
            log.error("%s: %s", name, exc.message)
            failed += 1
            continue
        print("%s\t%s\t%s" % (info.name, info.os_release, info.path))
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Delete images, their versions and their OCI archives."""
    require_root("removing images")
    check_state_dirs(settings, cache=False)
    names = [i.name for i in list_images(settings)] if args.all else args.names
    if not names:
        die("no image given", "name one, or pass --all", usage=True)
    for name in names:  # refused, a typo or not acquired, before anything is removed
        check_name(name)
        if not image_link(settings, name).is_symlink() and not (settings.archives / name).exists():
            if find_distribution(name) is None:
                raise unknown_name_error("image", name, [i.name for i in list_images(settings)] + all_labels(),
                                         "see `postroj list-images`")
            die("image %s is not acquired" % name, "see `postroj list-images`")
    for name in names:
        remove_image(settings, name)
        print("removed %s" % name)
    return EXIT_OK


SHOW_SYSTEM = """\
echo "hostname: $(cat /proc/sys/kernel/hostname)"
echo "systemd:  $(systemctl is-system-running)"
echo
cat /etc/os-release
"""


def cmd_container(args: argparse.Namespace, settings: Settings) -> int:
    """Boot an image, run a command (or a shell) in it, and throw the container away (or keep it)."""
    command = list(args.command)
    binds, setenv = container_mounts(args)
    machine = check_name(args.machine, "machine name") if args.machine else ""
    host = container_host(settings, "running containers")
    check_state_dirs(settings)
    image = obtain_image(settings, host, resolve_image(settings, args.image, pull=args.pull))
    spec = ContainerSpec(image, host, binds, setenv, private_network=args.private_network,
                         boot_timeout=args.boot_timeout, keep=args.keep, machine=machine)
    container = NspawnContainer(settings, spec)
    with container:
        container.boot()
        interactive = not command and sys.stdin.isatty() and sys.stdout.isatty()
        if interactive:  # what the boot ended in, before the shell; otherwise beside the command
            container.boot_state()
        if command:
            code = container.commands.execute(command, stdin=None)
        elif interactive:
            code = container.commands.shell()
        else:
            code = container.commands.execute(["/bin/sh", "-c", SHOW_SYSTEM], stdin=subprocess.DEVNULL)
        log.info("container %s booted %s (leader %d, mode %s)", container.machine, container.boot_state(),
                 container.commands.leader, container.mode)
        if args.keep:
            container.release()
            print("container %s keeps running (leader %d)." % (container.machine, container.commands.leader),
                  file=sys.stderr)
            print("enter it: %s" % container.how.enter_hint(container), file=sys.stderr)
            print("end it:   postroj stop %s" % container.machine, file=sys.stderr)
    log.info("%s: %s", container.machine, format_timings(container.timings))
    return code


def cmd_machines(args: argparse.Namespace, settings: Settings) -> int:
    """The running postroj containers of this POSTROJ_HOME."""
    check_state_dirs(settings, cache=False, write=False)
    machines = list_machines(settings)
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, "machines": [m._asdict() for m in machines]}, indent=2))
    elif machines:
        print_table([[m.name, m.image, str(m.leader), m.since, "kept" if m.keep else ""] for m in machines],
                    ["MACHINE", "IMAGE", "LEADER", "SINCE", ""])
    elif sys.stdout.isatty():  # a person asked; a script reading a pipe gets nothing
        print("no postroj containers are running")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    """End kept containers."""
    require_root("ending containers")
    check_state_dirs(settings, cache=False)
    found = {m.name: m for m in list_machines(settings)}
    for name in args.machines:
        if name not in found:
            die("no running postroj machine %r" % name, "see `postroj machines`")
        end_machine(settings, found[name])
        print("ended %s" % name)
    return EXIT_OK


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    """End leftover containers, remove stale state and unused image versions."""
    require_root("collecting garbage")
    check_state_dirs(settings, cache=False)
    for item in collect_garbage(settings, args.layer_days, args.layer_gb):
        print("removed %s" % item)
    return EXIT_OK


def cmd_probe_vms(args: argparse.Namespace, settings: Settings, plan: ProbePlan,
                  report: Callable[[List[ProbeResult]], None], started: float) -> int:
    """probe --vm: the same probes in each box's VM, one after the other."""
    boxes = [find_box(name) for name in (take_shard(args.vm, args.shard) if args.shard else args.vm)]
    staged = plan.upgrade_from or plan.reboot or plan.remove or plan.start_units
    for box in boxes:
        if staged and not GUESTS[box.guest].units:
            die("the stages of a package's life (--upgrade-from, --reboot, --remove, --purge, --start-units) run in "
                "containers and Linux VMs; %s is %s" % (box.label, box.guest), "probe %s without them" % box.label,
                usage=True)
        for probe in plan.probes:
            if probe.kind == ProbeKind.UNIT and not GUESTS[box.guest].units:
                die("--check-unit needs a Linux guest; %s is %s" % (box.label, box.guest), "drop --check-unit",
                    usage=True)
            if probe.kind == ProbeKind.PACKAGE:
                kind = package_type(probe.target)
                if kind not in GUESTS[box.guest].package_types:
                    die("%s cannot be installed on %s" % (os.path.basename(probe.target), box.label),
                        "use .msi on Windows, .deb or .rpm on Linux", usage=True)
    require_tool("vagrant")
    check_provider(settings, args.provider)
    check_state_dirs(settings)
    packages = materialize_packages(settings, list(plan.probes) + [Probe(ProbeKind.PACKAGE, s) for s in
                                                                  plan.upgrade_from if s != UPGRADE_FROM_ARCHIVE])
    results: List[ProbeResult] = []
    left_running = 0
    for box in boxes:
        found, left = probe_vm(settings, box, plan, provider=args.provider, keep=args.keep, packages=packages,
                               report=report, keep_on_failure=args.keep_on_failure)
        results += found
        left_running += left
    code = finish_report(results, args.json, args.junit, time.monotonic() - started, args.shard)
    return EXIT_FAILURE if left_running else code


def cmd_probe(args: argparse.Namespace, settings: Settings) -> int:
    """Probe every image (or VM) of the matrix; every name, package and report path checked before anything
    boots."""
    started = time.monotonic()
    check_report_paths(args.json, args.junit)
    probes = build_probes(args, settings)
    if not probes:
        die("no probe given", "add --command, --check-unit, --check-network, --package or --copy", usage=True)
    stages = lifecycle(args, probes)
    out = sys.stderr if args.json in ("-", "/dev/stdout") else sys.stdout  # stdout is the JSON's alone
    color = out.isatty()
    status = LiveStatus(sys.stderr.isatty() and not log.isEnabledFor(logging.INFO) and args.json != "-", out)

    def report(block: List[ProbeResult]) -> None:
        status.print(format_results(block, color))

    if args.keep and not args.vm:
        die("--keep is for VMs (--vm): a probe's container is thrown away", "to look at a failed image's "
            "container, use --keep-on-failure; `postroj container IMAGE --keep` keeps a container", usage=True)
    plan = ProbePlan(probes, timeout=args.timeout, boot_timeout=args.boot_timeout,
                     private_network=not args.host_network, fail_fast=args.fail_fast,
                     install_timeout=args.install_timeout,
                     repos=parse_repositories(args, lambda url: download(url, settings.downloads,
                                                                         proxies=settings.proxies)),
                     keep_on_failure=args.keep_on_failure, **stages)
    if args.vm:
        if plan.release_upgrade:
            die("--release-upgrade is for images; a VM is upgraded by its box", "drop --vm, or --release-upgrade",
                usage=True)
        if any(p.by_name for p in probes):
            die("--install is for images; a VM takes package files", "give the package as a file with --package",
                usage=True)
        if any(p.only for p in probes):
            die("--package IMAGE=FILE is for images; VMs take every --package", "drop IMAGE= with --vm",
                usage=True)
        return cmd_probe_vms(args, settings, plan, report, started)
    images = list(args.image)
    if args.all:
        images += [i.name for i in list_images(settings) if include_in_all(i.name, args.include_eol)]
        if not images:
            die("--all, but no image is acquired", "acquire one with `postroj image debian-bookworm`")
    images = images or [DEFAULT_IMAGE]
    images = list(dict.fromkeys(images))
    for probe in probes:  # against the whole matrix: every shard runs the same command line
        if probe.only and not any(probe.for_image(name) for name in list(images) + list(plan.release_upgrade)):
            die("--package %s=%s: %s is not probed in this run" % (probe.only, probe.target, probe.only),
                "add --image %s, or give the package to every image without %s=" % (probe.only, probe.only),
                usage=True)
    if plan.release_upgrade:
        check_release_upgrades([(name, image_release(settings, name)) for name in images], plan.release_upgrade)
    packaged = [p for p in probes if p.kind == ProbeKind.PACKAGE]
    bare = [name for name in images if packaged and not any(p.for_image(name) for p in packaged)]
    if bare:  # it would be probed without a package, and fail as if the package were broken
        die("%s %s no --package, while %s %s" % (
            ", ".join(bare), "gets" if len(bare) == 1 else "get", ", ".join(n for n in images if n not in bare),
            "gets one" if len(images) - len(bare) == 1 else "get theirs"),
            "give each image its package (--package %s=FILE), or drop --image %s" % (bare[0], bare[0]), usage=True)
    if args.shard:
        images = take_shard(images, args.shard)
    targets = []
    for name in images:  # resolved and checked once, here, before anything boots
        info = find_image(settings, name)
        dist = find_distribution(name)
        if info is None and dist is None:
            check_name(name)
            raise unknown_name_error("image", name, all_labels() + [i.name for i in list_images(settings)],
                                     "see `postroj list-images`")
        manager = info.package_manager if info else dist.package_manager if dist else ""
        for probe in list(probes) + [Probe(ProbeKind.PACKAGE, s) for s in stages["upgrade_from"]]:
            kind = package_type(probe.target) if probe.kind == ProbeKind.PACKAGE and probe.for_image(name) else ""
            if kind and manager and not package_matches(kind, manager):
                die("%s is a .%s package, but %s uses %s" % (os.path.basename(probe.target), kind, name, manager),
                    "give a package built for %s" % name, usage=True)
        if info is None and args.no_pull:
            die("image %s is not acquired and --no-pull was given" % name, "acquire it with `postroj image %s`" % name)
        targets.append(ImageTarget(name, info) if info else resolve_image(settings, name, pull=True))
        warn_if_ended(name)
    host = container_host(settings, "probing", args.jobs)
    check_state_dirs(settings)
    packages = materialize_packages(settings, list(probes) + [Probe(ProbeKind.PACKAGE, s) for s in plan.upgrade_from
                                                             if s != UPGRADE_FROM_ARCHIVE])

    def probe_one(target: ImageTarget, cancel: threading.Event, fleet: Fleet,
                  emit: Callable[[List[ProbeResult]], None]) -> List[ProbeResult]:
        try:
            return probe_image(settings, host, target, plan, cancel=cancel, packages=packages, fleet=fleet,
                               say=status.say, emit=emit, tell=lambda text: status.print(text, sys.stderr))
        finally:
            status.say(target.name, "")

    with status:
        results = run_matrix(targets, args.jobs, args.fail_fast, probe_one, report)
    return finish_report(results, args.json, args.junit, time.monotonic() - started, args.shard)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """Merge the --json reports of shards or runs: one summary, JSON and JUnit; exits as probe would."""
    check_report_paths(args.json, args.junit)
    results, wall = merge_reports(args.files, args.allow_partial)
    out = sys.stderr if args.json in ("-", "/dev/stdout") else sys.stdout  # stdout is the JSON's alone
    if results:
        print(format_results(results, out.isatty()), file=out)
    return finish_report(results, args.json, args.junit, wall)


def cmd_selftest(args: argparse.Namespace, settings: Settings) -> int:
    """hostnamectl and systemd-journald on every acquired image: does this host run them?"""
    targets = [ImageTarget(i.name, i) for i in list_images(settings)]
    if not targets:
        die("no image is acquired", "acquire one with `postroj image debian-bookworm`")
    host = container_host(settings, "probing", args.jobs)
    check_state_dirs(settings)
    plan = ProbePlan((Probe(ProbeKind.UNIT, "systemd-journald"), Probe(ProbeKind.COMMAND, "hostnamectl")),
                     boot_timeout=args.boot_timeout)

    def probe_one(target: ImageTarget, cancel: threading.Event, fleet: Fleet,
                  emit: Callable[[List[ProbeResult]], None]) -> List[ProbeResult]:
        return probe_image(settings, host, target, plan, cancel=cancel, packages={}, fleet=fleet, emit=emit)

    results = run_matrix(targets, args.jobs, False, probe_one, lambda b: print(format_results(b), flush=True))
    return finish_report(results)


def archives_given(urls: Sequence[str]) -> Tuple[Tuple[str, int], ...]:
    """(host, port) of each --archive URL: archives the package proxy lets a testbed reach though they are on
    the host's loopback or a private network (a developer's repository of fresh builds)."""
    found = []
    for url in urls:
        endpoint = url_endpoint(url)
        if endpoint is None:
            die("--archive %s is not an http or https URL" % url, "give the archive's URL as apt's sources name "
                "it, e.g. --archive http://127.0.0.1:8000/", usage=True)
        found.append(endpoint)
    return tuple(found)


def cmd_autopkgtest_virt(args: argparse.Namespace, settings: Settings) -> int:
    """The autopkgtest virtualisation server on stdin and stdout (`autopkgtest SRC -- postroj IMAGE`)."""
    binds, setenv = container_mounts(args)
    given = archives_given(args.archive)
    if given and (args.host_network or args.private_network):
        die("--archive is for the testbed's own network, through the package proxy", "drop --archive: with "
            "--host-network the testbed reaches any host, with --private-network none", usage=True)
    host = container_host(settings, "running containers")
    # refused before `ok`, so that autopkgtest reports it as the server's failure to start; a state directory
    # that cannot be written fails `open` (exit 12), as any failure to make a testbed does
    if any(p.exists() and not p.is_dir() for p in (settings.home, settings.cache)):
        check_state_dirs(settings)
    image = obtain_image(settings, host, resolve_image(settings, args.image, pull=args.pull))
    # a network of its own: test services listen in the testbed only; apt reaches the image's archives
    # through postroj's package proxy, which keeps package files in the release's package cache for the
    # next run (none with --private-network; with --host-network the cache is apt's own directory, as
    # for probes: apt locks it, and a second testbed of the release cannot download at the same time)
    endpoints = archive_endpoints(Path(image.path)) + given if not (args.host_network or args.private_network) else ()
    if not (args.host_network or args.private_network or endpoints):
        log.warning("%s names no package archive in its apt sources: the testbed has loopback only "
                    "(--host-network shares the host's network)", image.name)
    archives = package_manager(image.package_manager).archives if image.package_manager else ""
    cache = package_cache_for(settings, Path(image.path)) if archives else None
    if cache and args.host_network:
        binds = (Bind(str(cache), archives),) + binds
    spec = ContainerSpec(image, host, binds, setenv, private_network=not args.host_network,
                         boot_timeout=args.boot_timeout, scratch=AUTOPKGTEST_DOWNTMP, package_proxy=endpoints,
                         proxy_cache=str(cache) if cache and endpoints else "")
    return AutopkgtestTestbed(settings, spec, sys.stdin, sys.stdout, args.copy_timeout).serve()


# What the words after a command complete to: images, machines, boxes, files, or fixed words.
COMPLETE_ARGUMENTS = {
    "image": "images", "pull": "images", "container": "images", "run": "images", "remove": "images",
    "rm": "images", "autopkgtest-virt": "images", "stop": "machines", "report": "files", "completion": "bash zsh",
}

COMPLETE_OPTION_VALUES = {
    "--image": "images", "--vm": "boxes", "--package": "files", "--copy": "files", "--json": "files",
    "--junit": "files", "--bind": "files", "--bind-ro": "files", "--via": "registry bootstrap",
    "--shell": "cmd powershell",
}

BASH_COMPLETION = r"""# postroj completion for bash: `source <(postroj completion bash)`, or save it in /etc/bash_completion.d/
_postroj_words() {
    local home="${POSTROJ_HOME:-@HOME@}" entry
    case "$1" in
        images)
            printf '%s\n' @LABELS@
            for entry in "$home"/images/*; do [ -e "$entry" ] && printf '%s\n' "${entry##*/}"; done ;;
        machines)
            for entry in "$home"/run/*.json; do [ -e "$entry" ] && entry="${entry##*/}" && printf '%s\n' "${entry%.json}"; done ;;
        boxes)
            printf '%s\n' @BOXES@ ;;
        *)
            printf '%s\n' $1 ;;
    esac
}

_postroj_complete() {
    if [ "$1" = files ]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$2"))
    else
        COMPREPLY=($(compgen -W "$(_postroj_words "$1")" -- "$2"))
    fi
}

_postroj() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" sub="" i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            --) return 0 ;;  # the payload's own words
            -*) ;;
            *) case "${COMP_WORDS[i-1]}" in @VALUED@) continue ;; esac
               if [ -z "$cmd" ]; then cmd="$word"; elif [ "$cmd" = vm ] && [ -z "$sub" ]; then sub="$word"; fi ;;
        esac
    done
    case "$prev" in
@OPTION_VALUES@
    esac
    if [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W "@COMMANDS@ @GLOBAL@" -- "$cur"))
        return 0
    fi
    if [ "$cmd" = vm ] && [ -z "$sub" ]; then
        COMPREPLY=($(compgen -W "@VM_ACTIONS@" -- "$cur"))
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        case "$cmd${sub:+ $sub}" in
@OPTIONS@
        esac
        return 0
    fi
    case "$cmd" in
@ARGUMENTS@
        vm) [ "$sub" = list ] || _postroj_complete boxes "$cur" ;;
    esac
}

complete -F _postroj postroj postroj.pyz ./postroj.pyz
"""


def completion_script(shell: str) -> str:
    """The bash (or zsh, through bashcompinit) completion script, made from the parser itself."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    vm = next(a for a in commands.choices["vm"]._actions if isinstance(a, argparse._SubParsersAction))

    def options(command: argparse.ArgumentParser) -> str:
        return " ".join(o for a in command._actions for o in a.option_strings)

    def case(pattern: str, body: str) -> str:
        return "        %s) %s ;;" % (pattern, body)

    option_cases = [case('"%s"' % name, 'COMPREPLY=($(compgen -W "%s" -- "$cur"))' % options(command))
                    for name, command in commands.choices.items() if name != "vm"]
    option_cases += [case('"vm %s"' % name, 'COMPREPLY=($(compgen -W "%s" -- "$cur"))' % options(command))
                     for name, command in vm.choices.items()]
    values = [case(option, '_postroj_complete "%s" "$cur"; return 0' % kind)
              for option, kind in COMPLETE_OPTION_VALUES.items()]
    arguments = [case(name, '_postroj_complete "%s" "$cur"' % kind) for name, kind in COMPLETE_ARGUMENTS.items()]
    valued = [o for name, command in commands.choices.items() for a in command._actions if a.nargs != 0
              for o in a.option_strings]
    script = BASH_COMPLETION
    for key, value in (("@LABELS@", " ".join(all_labels())), ("@BOXES@", " ".join(b.label for b in BOXES)),
                       ("@HOME@", DEFAULT_HOME),
                       ("@COMMANDS@", " ".join(commands.choices)), ("@GLOBAL@", options(parser)),
                       ("@VM_ACTIONS@", " ".join(vm.choices)), ("@OPTION_VALUES@", "\n".join(values)),
                       ("@OPTIONS@", "\n".join(option_cases)), ("@ARGUMENTS@", "\n".join(arguments)),
                       ("@VALUED@", "|".join(sorted(set(valued)) or ["--"]))):
        script = script.replace(key, value)
    if shell == "zsh":
        script = "#compdef postroj postroj.pyz\nautoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def cmd_completion(args: argparse.Namespace, settings: Settings) -> int:
    """Print the shell completion script."""
    sys.stdout.write(completion_script(args.shell))
    return EXIT_OK


def vm_list(args: argparse.Namespace, settings: Settings) -> int:
    """The state of each VM postroj has a Vagrantfile for."""
    check_state_dirs(settings, cache=False, write=False)
    rows = []
    for label in list_vms(settings):
        rows.append([label, VagrantMachine(settings, find_box_by_dir(label)).status()])
    if rows:
        print_table(rows, ["VM", "STATE"])
    elif sys.stdout.isatty():
        print("no postroj VMs; bring one up with `postroj vm up BOX`")
    return EXIT_OK


def vm_up(args: argparse.Namespace, settings: Settings) -> int:
    """Bring a box up (and leave it up for probe --vm), destroying it again when that fails."""
    box = find_box(args.box)
    check_state_dirs(settings, cache=False)
    vm = VagrantMachine(settings, box, args.provider, args.cpus, args.memory)
    require_tool("vagrant")
    check_provider(settings, vm.provider)
    try:
        vm.up()
    except BaseException:
        if not args.keep:
            vm.destroy_or_warn()
        raise
    (vm.directory / VM_UP_MARK).write_text("brought up by `postroj vm up`; probe --vm leaves it up\n")
    print("%s is up (%s)" % (box.label, vm.directory))
    return EXIT_OK


def vm_destroy(args: argparse.Namespace, settings: Settings) -> int:
    """Destroy a box's VM and its Vagrantfile."""
    box = find_box(args.box)
    check_state_dirs(settings, cache=False)
    require_tool("vagrant")
    vm = VagrantMachine(settings, box)
    if not (vm.directory / "Vagrantfile").exists():
        print("%s has no VM here: nothing to destroy" % box.label)
        return EXIT_OK
    vm.destroy()
    print("destroyed %s" % box.label)
    return EXIT_OK


def vm_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a command in a VM that is up; its exit status is postroj's."""
    box = find_box(args.box)
    check_state_dirs(settings, cache=False)
    kind = GUESTS[box.guest]
    command = list(args.command)
    if not command:
        die("no command given", "write postroj vm run BOX -- COMMAND", usage=True)
    if args.shell and not kind.shells:
        die("--shell is for Windows boxes; %s runs commands with ssh in the login shell" % box.label,
            "drop --shell", usage=True)
    require_tool("vagrant")
    vm = VagrantMachine(settings, box)
    if not (vm.directory / "Vagrantfile").exists():
        die("%s is not up" % box.label, "bring it up with `postroj vm up %s`" % box.label)
    return vm.execute(kind.command_line(command), shell=args.shell or "cmd")


def find_box_by_dir(label: str) -> Box:
    """The box of a VM directory: a curated one, or one of vagrant:OWNER/BOX (a Linux guest over ssh)."""
    for box in BOXES:
        if box.label == label:
            return box
    return Box(label, label, Guest.LINUX, Communicator.SSH)


def cmd_vm(args: argparse.Namespace, settings: Settings) -> int:
    """`postroj vm ACTION`: up, run, destroy or list (each subparser sets its function as `vm_action`)."""
    return int(args.vm_action(args, settings))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are postroj's usage errors (exit 2, with a hint)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `--shard -1/2` is a wrong value for --shard, not an unknown option
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+/\d+$")

    def error(self, message: str) -> NoReturn:
        """A usage error (exit 2) with a hint, instead of argparse's exit."""
        raise UsageError(message, "see `%s --help`" % self.prog)


def add_container_options(parser: argparse.ArgumentParser) -> None:
    """--boot-timeout, for the commands that boot containers."""
    parser.add_argument("--boot-timeout", type=positive_float, default=30, metavar="SECONDS",
                        help="how long the container may take to boot (default: 30)")


def add_container_mounts(parser: argparse.ArgumentParser) -> None:
    """--bind, --bind-ro and --setenv, for the commands that boot containers."""
    parser.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]",
                        help="bind a host directory or file into the container (DST defaults to SRC); repeatable")
    parser.add_argument("--bind-ro", action="append", default=[], metavar="SRC[:DST]",
                        help="the same, read-only; repeatable")
    parser.add_argument("--setenv", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for what runs in the container; repeatable")


EXIT_CODES_HELP = """\
exit codes:
  0    success; every probe passed
  1    a runtime failure, or a probe that failed
  2    bad usage: nothing was started or changed
  3    probe: nothing failed, but an image could not be tested (acquired, booted, its downloads)
  12   autopkgtest-virt: a command the testbed cannot take
  129  hung up (SIGHUP)
  130  interrupted (SIGINT)
  143  terminated (SIGTERM)
  N    container and vm run: the command's own status

most used:
  postroj image debian-bookworm
  postroj container debian-bookworm -- cat /etc/os-release
  postroj probe --image debian-bookworm --package ./app.deb --check-unit app --junit report.xml
"""


class Unbuilt:
    """A command the command line does not name (build_parser(only=...)): what is asked of it does nothing,
    so argparse builds no parser for it: parsing one command line takes 0.3 ms instead of 2.4 ms, most of it
    gettext's look-ups (measured 2026-11-29; 2 % of a command's start-up)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class Commands:
    """The subcommands of a parser; with `only`, the one the command line names is the only one built."""

    def __init__(self, action: Any, only: str = "") -> None:
        self.action = action  # argparse's subparsers action (Unbuilt when its parser is)
        self.only = only
        self.built = False

    def add(self, name: str, summary: str, examples: Sequence[str], aliases: Sequence[str] = ()) -> Any:
        """A subcommand whose --help has a one-line description and examples of real use."""
        if isinstance(self.action, Unbuilt) or (self.only and self.only != name and self.only not in aliases):
            return Unbuilt()
        self.built = True
        parser = self.action.add_parser(name, aliases=list(aliases), help=summary,
                                        description=summary[0].upper() + summary[1:] + ".",
                                        epilog="examples:\n" + "\n".join("  " + e for e in examples),
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        # postroj's own options after the command too (`postroj probe ... -v`), as people type them
        parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return parser


def build_parser(only: str = "") -> argparse.ArgumentParser:
    """The command line; every help text of postroj is here (the README's Usage says the same). With `only`,
    the parser knows that command alone (its name or an alias; none: every command)."""
    parser = ArgumentParser(prog="postroj", description="Test packages on many Linux distributions: images, "
                            "ephemeral systemd-nspawn containers, probes, and Vagrant VMs.",
                            epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="postroj %s" % __version__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output on stderr (-vv: commands)")
    parser.add_argument("--debug", action="store_true", help="tracebacks for errors, every command on stderr")
    parser.set_defaults(func=None, debug_server=False)
    sub = Commands(parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=ArgumentParser), only)

    p = sub.add("list-images", "the catalogue and the acquired images", [
        "postroj list-images", "postroj list-images --json | jq -r '.distributions[].label'"], aliases=["ls"])
    p.add_argument("--json", action="store_true", help="as JSON (README: JSON)")
    p.set_defaults(func=cmd_list_images)

    p = sub.add("doctor", "check what postroj needs on this host", [
        "postroj doctor", "postroj doctor --json"])
    p.add_argument("--json", action="store_true", help="as JSON (README: JSON)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add("image", "acquire, provision and activate images", [
        "postroj image debian-bookworm ubuntu-noble",
        "postroj image debian-trixie --via bootstrap --mirror http://deb.debian.org/debian",
        "postroj image https://example.org/rootfs.tar.xz --sha256 HEX --name myos"], aliases=["pull"])
    p.add_argument("names", nargs="*", metavar="NAME", help="catalogue label or alias, docker://..., oci:..., "
                   "http(s)://.../ROOTFS.tar.*, a tarball or a directory")
    p.add_argument("--all", action="store_true", help="every release of the catalogue its publisher supports")
    p.add_argument("--include-eol", action="store_true", help="with --all, also the releases past their end of life")
    p.add_argument("--force", action="store_true", help="acquire afresh and swap atomically")
    p.add_argument("--via", choices=[SourceKind.REGISTRY.value, SourceKind.BOOTSTRAP.value], default="",
                   help="how to get a catalogue image (default: the registry, bootstrapping when it is out of reach)")
    p.add_argument("--mirror", default="", metavar="URL", help="package archive to bootstrap from (default: the "
                   "distribution's own; POSTROJ_MIRROR)")
    p.add_argument("--security-mirror", default="", metavar="URL", help="security archive to bootstrap from "
                   "(default: the distribution's own)")
    p.add_argument("--accept-expired", action="store_true", help="accept a Release file past its Valid-Until "
                   "date (a dated snapshot mirror)")
    p.add_argument("--sha256", default="", metavar="HEX", help="expected SHA-256 of a tarball")
    p.add_argument("--name", default="", help="name of the image (default: derived from the reference)")
    p.add_argument("--variant", choices=[v.value for v in Variant], default="",
                   help="ci: a testbed as Debian's CI has it, autopkgtest's setup-testbed run once at acquisition "
                   "(named IMAGE-ci, e.g. debian-bookworm-ci)")
    p.set_defaults(func=cmd_image)

    p = sub.add("remove", "delete images and their archives", [
        "postroj remove debian-bookworm", "postroj remove --all"], aliases=["rm"])
    p.add_argument("names", nargs="*", metavar="NAME", help="acquired images")
    p.add_argument("--all", action="store_true", help="every acquired image")
    p.set_defaults(func=cmd_remove)

    p = sub.add("container", "boot an image and run a command in it", [
        "postroj container debian-bookworm -- cat /etc/os-release",
        "postroj container ubuntu-noble --bind ./src:/src -- make -C /src check",
        "postroj container debian-bookworm --keep   # then: postroj stop postroj-debian-bookworm"],
        aliases=["run"])
    p.add_argument("image", metavar="NAME", help="an acquired image (or a catalogue label with --pull)")
    p.add_argument("command", nargs="*", metavar="-- COMMAND", help="command and its arguments, after --; without "
                   "one: a shell on a terminal, else what runs")
    add_container_mounts(p)
    p.add_argument("--machine", default="", metavar="NAME", help="machine name (default: postroj-<image>)")
    p.add_argument("--keep", action="store_true", help="leave the container running")
    p.add_argument("--private-network", action="store_true", help="own network namespace, loopback only")
    p.add_argument("--pull", action="store_true", help="acquire the image first when it is not there")
    add_container_options(p)
    p.set_defaults(func=cmd_container)

    p = sub.add("machines", "running postroj containers", ["postroj machines", "postroj machines --json"])
    p.add_argument("--json", action="store_true", help="as JSON (README: JSON)")
    p.set_defaults(func=cmd_machines)

    p = sub.add("stop", "end kept containers", ["postroj stop postroj-debian-bookworm"])
    p.add_argument("machines", nargs="+", metavar="MACHINE", help="names from `postroj machines`")
    p.set_defaults(func=cmd_stop)

    p = sub.add("gc", "end leftover containers, remove stale state, unused image versions and dependency layers",
                ["postroj gc", "postroj gc --layer-days 3 --layer-gb 5"])
    p.add_argument("--layer-days", type=positive_number("days", 3650), default=14, metavar="DAYS", help="remove dependency "
                   "layers no probe used for DAYS (default: 14)")
    p.add_argument("--layer-gb", type=positive_number("GB", 1 << 20), default=20, metavar="GB", help="remove the longest unused "
                   "dependency layers while all of them take more than GB gigabytes (default: 20)")
    p.set_defaults(func=cmd_gc)

    p = sub.add("probe", "run probes over a matrix of images", [
        "postroj probe --image debian-bookworm --command 'systemctl is-active systemd-journald'",
        "postroj probe --image debian-bookworm --image ubuntu-noble --package ./app.deb --check-unit app \\",
        "    --check-network http://localhost:8080 --junit report.xml",
        "postroj probe --all --command true --shard 2/4 --json shard-2.json"], aliases=["pkgprobe"])
    p.add_argument("--image", action="append", default=[], metavar="NAME", help="an image to probe; repeatable "
                   "(default: %s)" % DEFAULT_IMAGE)
    p.add_argument("--all", action="store_true", help="every acquired image but releases past their end of life")
    p.add_argument("--include-eol", action="store_true", help="with --all, also the releases past their end of life")
    p.add_argument("--vm", action="append", default=[], metavar="BOX", help="probe a Vagrant VM instead; repeatable")
    p.add_argument("--package", action="append", default=[], metavar="[IMAGE=]PATH|URL", help="a .deb or .rpm "
                   "(.msi on Windows VMs) to install with its dependencies in the booted container; IMAGE= gives it "
                   "to that image only (one build per release); repeatable")
    p.add_argument("--copy", action="append", default=[], metavar="SRC:DST", help="put a host file or directory "
                   "at the absolute path DST in the container; repeatable")
    p.add_argument("--check-unit", action="append", default=[], metavar="UNIT", help="a systemd unit that must "
                   "be active as the package left it (nothing is started); repeatable")
    p.add_argument("--no-install-recommends", action="store_true", help="install the packages without what "
                   "they recommend (apt; dnf's weak dependencies, zypper's recommends); default: as apt install")
    p.add_argument("--fresh", action="store_true", help="no dependency layer: install every dependency in the "
                   "probe's own container (README: Dependency layers)")
    p.add_argument("--start-units", action="store_true", help="enable and start the checked units after the "
                   "install (where the distribution's policy leaves that to the administrator)")
    p.add_argument("--upgrade-from", action="append", default=[], metavar="archive|PATH|URL",
                   help="install this first and upgrade it with --package: `archive` for what the image's "
                   "package sources carry, or old package files (repeatable)")
    p.add_argument("--release-upgrade", action="append", default=[], metavar="IMAGE", help="after the install, "
                   "upgrade the system to this later release (debian-trixie from debian-bookworm), reboot into it "
                   "and check again; packages built for it: --package IMAGE=FILE (repeatable: a chain, in order)")
    p.add_argument("--reboot", action="store_true", help="reboot the container after the install, then check "
                   "again (a unit started but not enabled fails here)")
    p.add_argument("--remove", action="store_true", help="remove the packages at the end: no unit or process "
                   "of theirs may be left")
    p.add_argument("--purge", action="store_true", help="purge them at the end (implies --remove) and compare "
                   "with the container before the install: nothing may be left behind")
    p.add_argument("--install", action="append", default=[], metavar="[IMAGE=]NAME[=VERSION]", help="a package "
                   "of the image's own sources by name, resolved on each image (the version each got is named); "
                   "as --package in every stage; repeatable")
    p.add_argument("--repo", action="append", default=[], metavar="[IMAGE=]ENTRY|FILE", help="a vendor's apt "
                   "repository: a one-line `deb [signed-by=KEY] URL SUITE COMPONENT...` or a deb822 .sources file, "
                   "added in each container before the downloads; --install takes its packages; repeatable")
    p.add_argument("--repo-key", action="append", default=[], metavar="[IMAGE=]FILE|URL", help="the repository's "
                   "signing key (armored or binary; a URL is downloaded first), put where the entry's signed-by says "
                   "(one for all, or one a --repo, in order)")
    p.add_argument("--ignore", action="append", default=[], metavar="PATH", help="with --purge: a path (and "
                   "what is below it) the purge may leave, not compared and named in the report; repeatable")
    p.add_argument("--check-network", action="append", default=[], metavar="URL", help="tcp://HOST:PORT or "
                   "http(s)://... that must answer from inside the container, within --timeout; repeatable")
    p.add_argument("--expect-status", type=int, default=None, metavar="CODE", help="the HTTP status "
                   "--check-network expects (default: any 2xx or 3xx)")
    p.add_argument("--expect-body", default="", metavar="TEXT", help="text the HTTP answer must contain")
    p.add_argument("--command", action="append", default=[], metavar="CMD", help="a shell command that must exit "
                   "0 in the container; repeatable")
    p.add_argument("--timeout", type=positive_float, default=30, metavar="SECONDS", help="per probe (default: 30)")
    p.add_argument("--install-timeout", type=positive_float, default=600, metavar="SECONDS",
                   help="for installing the packages, maintainer scripts included (default: 600)")
    p.add_argument("--jobs", "-j", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="images probed at once (default: the number of CPUs)")
    p.add_argument("--fail-fast", action="store_true", help="skip the rest after the first failure")
    p.add_argument("--shard", type=shard_spec, default=None, metavar="K/N", help="run the K-th of N parts of the "
                   "image matrix (whole images; the N parts together are the whole run)")
    p.add_argument("--no-pull", action="store_true", help="refuse images that are not acquired")
    p.add_argument("--host-network", action="store_true", help="share the host's network instead of a private one")
    p.add_argument("--json", default=None, metavar="FILE", help="write results as JSON (- for stdout)")
    p.add_argument("--junit", default=None, metavar="FILE", help="write JUnit XML")
    p.add_argument("--keep", action="store_true", help="with --vm: leave the VM running")
    p.add_argument("--keep-on-failure", action="store_true",
                   help="leave a failed image's container (or VM) running for a look, and say how to enter and end it")
    p.add_argument("--provider", default="", help="with --vm: the vagrant provider")
    add_container_options(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add("report", "merge the --json reports of shards or runs into one", [
        "postroj report shard-1.json shard-2.json --junit report.xml",
        "postroj report runs/*.json --json merged.json"])
    p.add_argument("files", nargs="+", metavar="FILE.json", help="reports written by probe --json")
    p.add_argument("--json", default=None, metavar="FILE", help="write the merged results as JSON (- for stdout)")
    p.add_argument("--junit", default=None, metavar="FILE", help="write the merged results as JUnit XML")
    p.add_argument("--allow-partial", action="store_true", help="merge shards' reports though some shards are "
                   "missing (said on stderr)")
    p.set_defaults(func=cmd_report)

    p = sub.add("selftest", "hostnamectl and systemd-journald on every acquired image", [
        "postroj selftest", "postroj selftest --jobs 1 --boot-timeout 60"])
    p.add_argument("--jobs", "-j", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="images probed at once (default: the number of CPUs)")
    add_container_options(p)
    p.set_defaults(func=cmd_selftest)

    p = sub.add("autopkgtest-virt", "serve autopkgtest as its virtualisation server", [
        "autopkgtest -U hello_2.10-3.dsc -- /path/to/postroj.pyz autopkgtest-virt debian-bookworm",
        "ln -s /path/to/postroj.pyz /usr/local/bin/%s" % AUTOPKGTEST_NAME,
        "autopkgtest -U memcached_1.6.18-1+deb12u1.dsc -- postroj debian-bookworm"])
    p.add_argument("image", metavar="IMAGE", help="the image to test in (catalogue label or acquired name)")
    add_container_mounts(p)
    network = p.add_mutually_exclusive_group()
    network.add_argument("--private-network", action="store_true", help="loopback only, without the package "
                         "proxy (test dependencies then cannot be downloaded)")
    network.add_argument("--host-network", action="store_true", help="the host's network: test services listen "
                         "on the host's ports (by default the testbed has a network of its own, and reaches the "
                         "image's package archives through postroj)")
    p.add_argument("--archive", action="append", default=[], metavar="URL",
                   help="an archive on the host's loopback or a private network the testbed's apt may reach through "
                   "the package proxy (a local repository of fresh builds); repeatable. Archives on public networks "
                   "that the testbed's apt sources name are reached without it")
    p.add_argument("--pull", action="store_true", help="acquire the image first when it is not there")
    p.add_argument("--copy-timeout", type=positive_float, default=300, metavar="SECONDS",
                   help="for each copyup and copydown (default: 300, as autopkgtest's own servers)")
    p.add_argument("-d", "--debug-server", action="store_true", help="log every command on stderr")
    add_container_options(p)
    p.set_defaults(func=cmd_autopkgtest_virt, machine="", keep=False)

    p = sub.add("completion", "print a shell completion script", [
        "source <(postroj completion bash)",
        "postroj completion bash > /etc/bash_completion.d/postroj",
        "postroj completion zsh > \"${fpath[1]}/_postroj\""])
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell the script is for")
    p.set_defaults(func=cmd_completion)

    p = sub.add("vm", "full virtual machines through Vagrant", [
        "postroj vm up windows-2019", "postroj vm run windows-2019 -- ver", "postroj vm destroy windows-2019"])
    actions = p.add_subparsers(dest="vm_command", metavar="ACTION", parser_class=ArgumentParser)
    actions.required = True
    vm = Commands(actions)
    q = vm.add("up", "bring a box up", ["postroj vm up debian-12 --cpus 4 --memory 4096"])
    q.add_argument("box", metavar="BOX", help="a curated box (postroj list-images) or vagrant:OWNER/BOX")
    q.add_argument("--provider", default="", help="the vagrant provider (default: vagrant's choice)")
    q.add_argument("--cpus", type=positive_int, default=0, help="CPUs (default: the box's)")
    q.add_argument("--memory", type=positive_int, default=0, metavar="MB", help="memory (default: the box's)")
    q.add_argument("--keep", action="store_true", help="keep the machine when it fails to come up")
    q.set_defaults(vm_action=vm_up)
    q = vm.add("run", "run a command in a VM", [
        "postroj vm run windows-2019 -- ver", "postroj vm run windows-2019 --shell powershell -- Get-Service"])
    q.add_argument("box", metavar="BOX", help="a box that is up, or is brought up for the command")
    q.add_argument("--shell", choices=("cmd", "powershell"), default="",
                   help="Windows: the shell that runs COMMAND (default: cmd, as winrs does)")
    q.add_argument("command", nargs="*", metavar="-- COMMAND", help="command and its arguments, after --")
    q.set_defaults(vm_action=vm_run)
    q = vm.add("destroy", "destroy a VM", ["postroj vm destroy windows-2019"])
    q.add_argument("box", metavar="BOX", help="the box whose VM goes")
    q.set_defaults(vm_action=vm_destroy)
    vm.add("list", "state of each VM", ["postroj vm list"]).set_defaults(vm_action=vm_list)
    p.set_defaults(func=cmd_vm)
    if only and not sub.built:  # no such command: argparse's error names every one there is
        return build_parser()
    return parser


# ==============================================================================
# main
# ==============================================================================

def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """Parse postroj's options; what follows the first `--` is the payload command, passed on verbatim."""
    command: Optional[List[str]] = None
    if "--" in argv:
        at = list(argv).index("--")
        argv, command = list(argv[:at]), list(argv[at + 1:])
    # the first word that is not an option names the command (postroj's own options take no value)
    word = next((arg for arg in argv if not arg.startswith("-")), "")
    args = build_parser(only=word).parse_args(argv)
    if command is not None:
        if not hasattr(args, "command"):
            raise UsageError("unexpected -- %s" % shlex.join(command), "only `container` and `vm run` take a command")
        args.command = list(args.command) + command
    return args


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM and SIGHUP (a closed terminal; autopkgtest's servers clean up on it too): postroj ends,
    cleaning up on the way; stop signals after this one change nothing."""
    ignore_stop_signals()
    raise Terminated(signum)


@contextlib.contextmanager
def command_process() -> Iterator[Callable[[int], None]]:
    """What postroj sets for the length of a command, and sets back: its log handler on stderr, and SIGTERM
    and SIGHUP raising Terminated. Yields the function that sets the log's level. After a stop signal the
    stop signals stay ignored: postroj is ending."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("postroj: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        yield log.setLevel
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for sig, old in previous.items():
            if signal.getsignal(sig) is _terminate:  # not a stop signal: they are ignored from then on
                signal.signal(sig, old)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, run the command, turn expected failures into messages and exit codes."""
    if argv is None and os.path.basename(sys.argv[0]) == AUTOPKGTEST_NAME:
        argv = ["autopkgtest-virt"] + sys.argv[1:]  # autopkgtest ... -- postroj IMAGE
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        print("postroj %s" % __version__)
        return EXIT_OK
    with command_process() as set_level:
        return run_command(argv, set_level)


def run_command(argv: Sequence[str], set_level: Callable[[int], None]) -> int:
    """The command of `argv`, with the settings of postroj's environment; its exit code."""
    debug = False
    try:
        # postroj's own flags as argparse parsed them: what follows `--` is the payload's (grep -v ...)
        args = parse_command_line(argv)
        debug = args.debug
        set_level(logging.DEBUG if debug or args.verbose > 1 or args.debug_server else
                  logging.INFO if args.verbose else logging.WARNING)
        if not args.func:
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        return int(args.func(args, Settings.from_env()))
    except PostrojError as exc:
        if debug:
            log.exception("traceback")
        print("error: %s" % exc.message, file=sys.stderr)
        if exc.hint:
            print("hint: %s" % exc.hint, file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        ignore_stop_signals()
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        print("terminated" if exc.signum == signal.SIGTERM else "hung up", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as exc:  # the host refused: a full disk, a file system gone read-only, a path taken away
        if debug:
            log.exception("traceback")
        where = " (%s)" % exc.filename if exc.filename else ""
        print("error: %s%s" % (exc.strerror or exc, where), file=sys.stderr)
        print("hint: check the free space and permissions of POSTROJ_HOME and POSTROJ_CACHE, then run "
              "`postroj gc`", file=sys.stderr)
        return EXIT_FAILURE


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once main() returned: streams flushed, without the interpreter's own
    clean-up, which frees every object one by one (8 to 10 ms of every command, measured 2026-11-29) and has
    nothing left to do: main() released all it took. Where a thread of ours still runs, the interpreter's
    exit waits for it."""
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as the interpreter's own exit would say
            code = code or EXIT_FAILURE
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
