"""The test rig: real stand-ins for what these machines cannot reach, built from real parts.

- minimal Debian root file systems (bookworm, bullseye) built with mmdebstrap, cached in
  POSTROJ_RIG_CACHE (default /var/cache/postroj-rig) between runs;
- an OCI layout with library/debian:<suite>-slim images that umoci built from them (no systemd,
  as the real slim images), served by a real Docker registry (Debian's docker-registry) on loopback,
  with a registries.conf that mirrors docker.io to it;
- an HTTP server on loopback serving root file system tarballs with a SHA256SUMS file, and
  faults on demand (404, 500, a connection closed mid-body, a short body).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import io
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RIG_CACHE = Path(os.environ.get("POSTROJ_RIG_CACHE", "/var/cache/postroj-rig"))
SUITES = ("bookworm", "bullseye")


def sh(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a rig command, failing loudly with its output."""
    proc = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError("%s failed with %d:\n%s" % (" ".join(map(str, cmd)), proc.returncode, proc.stdout[-3000:]))
    return proc


@contextlib.contextmanager
def rig_lock(name: str):
    RIG_CACHE.mkdir(parents=True, exist_ok=True)
    with open(RIG_CACHE / (".%s.lock" % name), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def made_once(tmp_path_factory, name: str):
    """A directory of this run that the first of its workers (pytest -n) to ask makes and the others
    reuse: yields the directory and whether the caller is to fill it, under a lock held meanwhile."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the directory the workers' own temporary directories are in
    with open(base / (".%s.lock" % name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory, done = base / name, base / (".%s.done" % name)
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a worker that failed to make it left this
            directory.mkdir()
            yield directory, True
            done.touch()
        else:
            yield directory, False


def with_images_of(images_home: Path, home: Path, pyz: Path, cache: Path, env: "dict[str, str]") -> "Postroj":
    """A runner with state root `home` in which the images active in `images_home` are activated (links to
    their versions): what it makes (layers, runtime state) is its own, whatever a parallel test does with
    the other root."""
    (home / "images").mkdir(parents=True)
    for link in (images_home / "images").iterdir():
        if not link.name.startswith("."):
            os.symlink(os.path.realpath(link), home / "images" / link.name)
    return Postroj(pyz, home, cache, env)


def on_a_terminal(runner, *args: str, stdout_apart: bool = False, timeout: float = 300):
    """Run postroj with stdout and stderr on a pseudo-terminal (each on its own with `stdout_apart`), as a
    person at a terminal does: (exit code, what stdout's terminal showed, what stderr's showed, seconds)."""
    err_master, err_slave = pty.openpty()
    out_master, out_slave = pty.openpty() if stdout_apart else (err_master, err_slave)
    started = time.monotonic()
    proc = subprocess.Popen(runner.argv(*args), stdin=subprocess.DEVNULL, stdout=out_slave, stderr=err_slave,
                            env=runner.env)
    for fd in {out_slave, err_slave}:
        os.close(fd)
    shown = {fd: bytearray() for fd in {out_master, err_master}}
    open_fds = set(shown)
    deadline = started + timeout
    try:
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError("postroj %s did not end within %s s" % (" ".join(args), timeout))
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: every process that had the terminal open has closed it
                    data = b""
                if data:
                    shown[fd] += data
                else:
                    open_fds.discard(fd)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in shown:
            os.close(fd)
    took = time.monotonic() - started
    text = {fd: data.decode("utf-8", "replace").replace("\r\n", "\n") for fd, data in shown.items()}
    return code, text[out_master], text[err_master], took


# a live status line as postroj draws it on a terminal: (image, what it does, seconds)
STATUS_LINE = re.compile(r"\x1b\[Kpostroj: (\S+) +(.+?) (\d+) s\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise RuntimeError("nothing answers on 127.0.0.1:%d" % port)


class Postroj:
    """Runs the built postroj.pyz with a test's own POSTROJ_HOME and POSTROJ_CACHE."""

    def __init__(self, pyz: Path, home: Path, cache: Path, env: "dict[str, str]") -> None:
        self.pyz = pyz
        self.home = home
        self.cache = cache
        self.extra_env = env

    @property
    def env(self) -> "dict[str, str]":
        env = dict(os.environ, POSTROJ_HOME=str(self.home), POSTROJ_CACHE=str(self.cache), **self.extra_env)
        env.pop("POSTROJ_MODE", None)
        return env

    def argv(self, *args: str) -> "list[str]":
        return [sys.executable, str(self.pyz), *args]

    def __call__(self, *args: str, input: "str | None" = None, timeout: float = 600, check: "int | None" = None,
                 env: "dict[str, str] | None" = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, env=dict(self.env, **(env or {})),
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check is not None and proc.returncode != check:
            raise AssertionError("postroj %s exited %d, expected %d\nstdout:\n%s\nstderr:\n%s" % (
                " ".join(args), proc.returncode, check, proc.stdout[-4000:], proc.stderr[-4000:]))
        return proc

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(*args), env=self.env, text=True, **kwargs)


def documentation() -> str:
    """README.rst and docs/*.rst, one after the other: the newcomer's document and the reference it links to."""
    paths = [REPO / "README.rst"] + sorted((REPO / "docs").glob("*.rst"))
    return "\n\n".join(path.read_text() for path in paths)


def documented_fields(output: str) -> "set[str]":
    """The fields the JSON section of the documentation (docs/reference.rst) documents for `output` (e.g.
    "machines --json"), as paths: "schema", "machines", "machines[].name"..."""
    for after in documentation().split("``%s``" % output)[1:]:
        lines = after.splitlines()
        if not any(line.startswith("=") for line in lines[1:3]):
            continue  # named in passing, not the head of its table
        fields = set()
        borders = 0
        for line in lines:
            if line.startswith("="):
                borders += 1
                if borders == 3:  # the table's last line
                    break
            elif borders == 2 and line and not line.startswith(" "):
                fields.add(line.split()[0])
        return fields
    return set()


def json_fields(data, prefix: str = "") -> "set[str]":
    """The field paths of a JSON object as documented_fields writes them; lists of objects as NAME[].FIELD."""
    fields = set()
    for key, value in data.items():
        path = prefix + key
        fields.add(path)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                fields |= json_fields(item, path + "[].")
    return fields


# --- root file systems ----------------------------------------------------------


def rootfs_tarball(suite: str) -> Path:
    """debian-<suite>-minbase.tar, built once with mmdebstrap --variant=minbase."""
    target = RIG_CACHE / ("debian-%s-minbase.tar" % suite)
    with rig_lock("rootfs-" + suite):
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp.tar")
            sh("mmdebstrap", "--variant=minbase", "--quiet", suite, tmp)
            os.replace(tmp, target)
    return target


def rootfs_xz(suite: str) -> Path:
    """The same tarball compressed with xz, for the HTTP server."""
    target = RIG_CACHE / ("debian-%s-minbase.tar.xz" % suite)
    source = rootfs_tarball(suite)
    with rig_lock("xz-" + suite):
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "wb") as out:
                subprocess.run(["xz", "-T0", "-1", "-c", str(source)], stdout=out, check=True)
            os.replace(tmp, target)
    return target


def testhost_rootfs() -> Path:
    """A Debian root file system with systemd, machined and python3: a fresh test server."""
    target = RIG_CACHE / "testhost-bookworm"
    with rig_lock("testhost"):
        if not (target / "usr" / "bin" / "python3").exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            sh("mmdebstrap", "--variant=minbase", "--quiet",
               "--include=systemd,systemd-sysv,systemd-container,dbus,python3,util-linux,iproute2",
               "bookworm", tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
        hosts = target / "etc" / "hosts"
        if not hosts.exists():  # what an installed server has (mmdebstrap writes none): localhost resolves
            hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    return target


# --- test hosts ---------------------------------------------------------------


class TestHost:
    """A booted Debian container with systemd-container inside; ends with the test."""

    __test__ = False  # a test server, not a test class

    def __init__(self, root, home, pyz, image_version, tmp_path, unified: bool = False,
                 binds: "dict[str, Path] | None" = None) -> None:
        self.tmp_path = tmp_path
        # with the unified hierarchy, a cgroup v2 host (cgroup2 without controllers: the kernel keeps them on v1)
        self.env = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"} if unified else {}
        self.argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--directory=%s" % root,
            "--volatile=overlay",
            "--capability=all",
            "--machine=postroj-testhost-%d" % os.getpid(),
            "--register=no",
            "--keep-unit",
            "--notify-ready=yes",
            "--console=passive",
            "--resolv-conf=off",
            "--link-journal=no",
            "--kill-signal=SIGKILL",
            "--bind=%s:/var/lib/postroj" % home,
            "--bind-ro=%s:/usr/local/bin/postroj.pyz" % pyz,
            "--bind-ro=%s:/srv/debian-bookworm" % image_version,
        ] + ["--bind-ro=%s:%s" % (source, inside) for inside, source in (binds or {}).items()]
        self.proc = None
        self.leader = 0
        self.cgroups: "list[Path]" = []

    def join_cgroups(self) -> None:
        """In the child, before nspawn executes: into the test host's own cgroups."""
        for cgroup in self.cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def __enter__(self) -> "TestHost":
        import postroj

        # a cgroup of its own in each hierarchy, removed with what its systemd made below: a test host that
        # booted in the caller's cgroup would leave its tree there for the next one to see
        name = "postroj.testhost-%d-%s" % (os.getpid(), os.urandom(4).hex())
        self.cgroups = [root / name for root in postroj.systemd_cgroup_roots()]
        for cgroup in self.cgroups:
            cgroup.mkdir()
        path = str(self.tmp_path / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.proc = subprocess.Popen(self.argv, env=dict(os.environ, NOTIFY_SOCKET=path, **self.env),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=self.join_cgroups)
        try:
            ready = False
            while not ready:
                assert select.select([sock], [], [], 60)[0], "the test host did not boot"
                for field in sock.recv(4096).decode().split("\n"):
                    if field.startswith("X_NSPAWN_LEADER_PID="):
                        self.leader = int(field.split("=", 1)[1])
                    ready = ready or field == "READY=1"
        except BaseException:
            self.__exit__()
            raise
        finally:
            sock.close()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        import postroj

        postroj.remove_cgroups([str(c) for c in self.cgroups], kill=True)
        self.cgroups = []

    def run(self, *cmd: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8"}
        return subprocess.run(["nsenter", "--target=%d" % self.leader, "--all", "--root", "--wd", "--", *cmd],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, **kwargs)

    def popen(self, *cmd: str) -> subprocess.Popen:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
        return subprocess.Popen(["nsenter", "--target=%d" % self.leader, "--all", "--root", "--wd", "--", *cmd],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


# --- the registry ---------------------------------------------------------------


def oci_layout() -> Path:
    """An OCI layout holding debian:<suite>-slim for each suite, built with umoci (no systemd inside)."""
    layout = RIG_CACHE / "oci-debian"
    with rig_lock("oci"):
        done = layout / ".complete"
        if not done.exists():
            shutil.rmtree(layout, ignore_errors=True)
            sh("umoci", "init", "--layout", layout)
            for suite in SUITES:
                tag = "%s:%s-slim" % (layout, suite)
                bundle = RIG_CACHE / ("bundle-" + suite)
                shutil.rmtree(bundle, ignore_errors=True)
                sh("umoci", "new", "--image", tag)
                sh("umoci", "unpack", "--image", tag, bundle)
                sh("tar", "-C", bundle / "rootfs", "--numeric-owner", "-xf", rootfs_tarball(suite))
                sh("umoci", "repack", "--image", tag, bundle)
                sh("umoci", "config", "--image", tag, "--config.cmd=bash")
                shutil.rmtree(bundle, ignore_errors=True)
            done.write_text("ok\n")
    return layout


class Registry:
    """A real Docker registry (distribution) on a free loopback port."""

    def __init__(self, storage: Path, port: int = 0) -> None:
        self.storage = storage
        self.port = port or free_port()
        self.proc: "subprocess.Popen | None" = None
        self.config = storage.parent / ("registry-%d.yml" % self.port)

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def start(self) -> "Registry":
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
            "http:\n  addr: %s\n" % (self.storage, self.address))
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def push_debian(self) -> None:
        layout = oci_layout()
        for suite in SUITES:
            sh("skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:%s:%s-slim" % (layout, suite),
               "docker://%s/library/debian:%s-slim" % (self.address, suite))

    def registries_conf(self, path: Path) -> Path:
        """A registries.conf that sends docker.io to this registry, the containers way."""
        path.write_text(
            'unqualified-search-registries = ["docker.io"]\n\n'
            '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
            '[[registry.mirror]]\nlocation = "%s"\ninsecure = true\n' % self.address)
        return path


# --- the HTTP server ------------------------------------------------------------


class TarballHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ETag, Last-Modified and Range, plus faults under /fault/<kind>/."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self.server.log.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        parts = self.path.split("/")
        if len(parts) > 3 and parts[1] == "fault":
            return self.fault(parts[2], "/" + "/".join(parts[3:]))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data_len = path.stat().st_size
        st = path.stat()
        etag = '"%x-%x"' % (int(st.st_mtime), data_len)
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            start = int(rng[6:].split("-")[0])
            if start >= data_len:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, data_len - 1, data_len))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(data_len - start))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
        self.end_headers()
        limit = self.server.throttle  # type: ignore[attr-defined]
        with open(path, "rb") as handle:
            handle.seek(start)
            while True:
                chunk = handle.read(1 << 16)
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if limit:
                    time.sleep(limit)

    def fault(self, kind: str, path: str) -> None:
        if kind in ("404", "500"):
            self.send_error(int(kind))
            return
        real = Path(self.translate_path(path))
        data = real.read_bytes()[: 1 << 20] if real.is_file() else b"x" * (1 << 20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) * 4))
        self.end_headers()
        if kind == "close":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif kind == "short":
            self.wfile.write(data)
            self.close_connection = True


class HTTPServer:
    """A threaded HTTP server on loopback serving `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = lambda *a, **k: TarballHandler(*a, directory=str(root), **k)  # noqa: E731
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.requests = []  # type: ignore[attr-defined]
        self.server.log = []  # type: ignore[attr-defined]
        self.server.throttle = 0.0  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    @property
    def log(self) -> list:
        return self.server.log  # type: ignore[attr-defined]

    def start(self) -> "HTTPServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_tarballs(root: Path) -> Path:
    """Put the xz tarballs (hard links) and a SHA256SUMS file into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for suite in SUITES:
        source = rootfs_xz(suite)
        target = root / source.name
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        lines.append("%s  %s" % (digest, target.name))
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return root


# --- processes and mounts -------------------------------------------------------


def processes_mentioning(text: str) -> "list[tuple[int, str]]":
    """(pid, cmdline) of every process whose command line contains `text`."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = Path("/proc/%s/cmdline" % entry).read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry), cmdline.strip()))
    return found


def descendants(pid: int) -> "set[int]":
    """The PIDs (in this PID namespace) of every process below `pid`: what a run of the test's own started,
    whatever else runs on a shared host."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path("/proc/%s/stat" % entry).read_text()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found: "set[int]" = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_for(predicate, timeout: float = 120, step: float = 0.01, what: str = "condition"):
    """Poll until `predicate()` is true; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %s s" % (what, timeout))
        time.sleep(step)


def active_images(home: Path) -> "dict[str, str]":
    """name -> the version directory the image's link points at, for each activated image of `home`."""
    images = home / "images"
    if not images.is_dir():
        return {}
    return {p.name: os.path.realpath(p) for p in sorted(images.iterdir()) if not p.name.startswith(".")}


def staging_has(home: Path, relative: str) -> bool:
    """True when an acquisition's staging directory in `home` has `relative` already."""
    tmp = home / "tmp"
    return tmp.is_dir() and any((entry / relative).exists() for entry in tmp.iterdir())


def nspawn_of(home: Path) -> "list[tuple[int, str]]":
    """The systemd-nspawn processes of containers of the state root `home`."""
    return [p for p in processes_mentioning(str(home)) if "systemd-nspawn" in p[1]]


def lock_held_by_run_of(path: Path, home: Path) -> bool:
    """Whether a flock on `path` is held by a process of the postroj runs with POSTROJ_HOME `home`: a holder
    /proc/locks names that is gone or does not say (an inherited descriptor) counts as theirs; one whose
    environment names another POSTROJ_HOME is another run's on this host (a shared image another test of a
    parallel run uses)."""
    import postroj

    try:
        st = os.stat(str(path))
    except FileNotFoundError:
        return False
    if not postroj.lock_is_held(path):
        return False
    where = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    holders = [line.split()[4] for line in Path("/proc/locks").read_text().splitlines()
               if len(line.split()) > 5 and line.split()[1] == "FLOCK" and line.split()[5] == where]
    for pid in holders:
        try:
            environ = Path("/proc/%s/environ" % pid).read_bytes().split(b"\0")
        except OSError:
            return True
        if b"POSTROJ_HOME=%s" % str(home).encode() in environ or \
                not any(v.startswith(b"POSTROJ_HOME=") for v in environ):
            return True
    return not holders


def mounts_mentioning(text: str) -> "list[str]":
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def container_cgroups() -> "set[str]":
    """The empty cgroups postroj made for containers: postroj.* below this process's own, in systemd's
    hierarchies (postroj runs below the test). Cgroups with processes in them are running containers,
    maybe another run's on this host; a leftover is an empty one."""
    import postroj

    def empty(path: Path) -> bool:
        try:
            return all(not (Path(d) / "cgroup.procs").read_text().strip() for d, _, _ in os.walk(path))
        except OSError:
            return False  # removed while we looked: not left behind

    return {str(entry) for root in postroj.systemd_cgroup_roots() if root.is_dir()
            for entry in root.iterdir()
            if entry.name.startswith(postroj.CGROUP_PREFIX) and entry.is_dir() and empty(entry)}


def tar_entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"") -> "tuple":
    """(TarInfo, data) for one member of a hand-made tarball; device nodes are 1:3 (/dev/null)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def write_tar_entries(path: Path, entries, mode: str = "w") -> Path:
    """Write (TarInfo, data) pairs as they are, in order, into a tarball."""
    with tarfile.open(str(path), mode) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def kill_processes(found: "list[tuple[int, str]]") -> None:
    for pid, _ in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def build_pyz(target: Path) -> Path:
    sh(sys.executable, REPO / "build_zipapp.py", target)
    return target


# --- real packages from the distributions' archives -----------------------------

DEBIAN_SOURCES = {
    suite: ["deb http://deb.debian.org/debian %s main" % suite,
            "deb http://deb.debian.org/debian %s-updates main" % suite,
            "deb http://deb.debian.org/debian-security %s-security main" % suite]
    for suite in ("bookworm", "trixie")
}
UBUNTU_SOURCES = {
    suite: ["deb http://archive.ubuntu.com/ubuntu %s main" % suite,
            "deb http://archive.ubuntu.com/ubuntu %s-updates main" % suite,
            "deb http://security.ubuntu.com/ubuntu %s-security main" % suite]
    for suite in ("jammy", "noble")
}


# bootstrapped for real from Debian's mirror and Ubuntu's archive by the `real` fixture
REAL_IMAGES = ("debian-bookworm", "debian-trixie", "ubuntu-jammy", "ubuntu-noble")
# today's releases, with systemd 257 to 262, bootstrapped by the `current` fixture: label -> suite
CURRENT_DEBIAN = {"debian-forky": "forky", "debian-sid": "sid"}
CURRENT_UBUNTU = {"ubuntu-questing": "questing", "ubuntu-resolute": "resolute", "ubuntu-stonking": "stonking"}
CURRENT_RELEASES = {**CURRENT_DEBIAN, **CURRENT_UBUNTU}


class PrivateApt:
    """The host's apt-get with a configuration of its own (sources, lists, cache, keyrings), so that tests
    download real packages and source packages without touching the host's apt state."""

    def __init__(self, root: Path, sources: "list[str]", keyrings: "list[Path] | None" = None) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial", "trusted.gpg.d", "sources.list.d",
                    "preferences.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "sources.list").write_text("\n".join(sources) + "\n")
        (root / "status").write_text("")
        trusted = [Path(p) for p in (keyrings or [])] or sorted(Path("/etc/apt/trusted.gpg.d").glob("*"))
        trusted += sorted(Path("/usr/share/keyrings").glob("debian-archive-*.gpg")) if not keyrings else []
        for key in trusted:
            shutil.copyfile(key, root / "trusted.gpg.d" / key.name)
        self.options = [
            "-o", "Dir::Etc::SourceList=%s" % (root / "sources.list"),
            "-o", "Dir::Etc::SourceParts=%s" % (root / "sources.list.d"),
            "-o", "Dir::Etc::TrustedParts=%s" % (root / "trusted.gpg.d"),
            "-o", "Dir::Etc::Trusted=%s" % (root / "trusted.gpg"),
            "-o", "Dir::Etc::Preferences=%s" % (root / "preferences"),
            "-o", "Dir::Etc::PreferencesParts=%s" % (root / "preferences.d"),
            "-o", "Dir::State::Lists=%s" % (root / "lists"),
            "-o", "Dir::State::status=%s" % (root / "status"),
            "-o", "Dir::Cache=%s" % (root / "cache"),
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=true",
            # the mirror reachable here serves testing's and sid's Release files past their Valid-Until
            "-o", "Acquire::Check-Valid-Until=false",
        ]
        sh("apt-get", *self.options, "-qq", "update")

    def download(self, package: str, dest: Path, version: str = "") -> Path:
        """`apt-get download PACKAGE[=VERSION]` into `dest`: the newest version the sources have, or `version`."""
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("%s_*.deb" % package))
        sh("apt-get", *self.options, "-qq", "download", "%s=%s" % (package, version) if version else package,
           cwd=str(dest))
        found = sorted(set(dest.glob("%s_*.deb" % package)) - before) or sorted(dest.glob("%s_*.deb" % package))
        assert found, "apt-get download %s gave no file in %s" % (package, dest)
        return found[-1]

    def versions(self, package: str) -> "list[tuple[str, str]]":
        """(version, suite) of each version of `package` the sources carry, newest first (`apt-cache madison`):
        ("1.22.1-9+deb12u9", "bookworm"), ("1.22.1-9+deb12u11", "bookworm-security")..."""
        out = sh("apt-cache", *self.options, "madison", package).stdout
        found = []
        for line in out.splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) == 3 and fields[0] == package and fields[2].endswith(" Packages"):
                found.append((fields[1], fields[2].split()[1].split("/")[0]))
        assert found, "the sources carry no %s:\n%s" % (package, out)
        return found

    def source(self, package: str, dest: Path) -> Path:
        """`apt-get source --download-only PACKAGE` into `dest`; the .dsc's path."""
        dest.mkdir(parents=True, exist_ok=True)
        sh("apt-get", *self.options, "-qq", "source", "--download-only", package, cwd=str(dest))
        found = sorted(dest.glob("%s_*.dsc" % package.partition("/")[0]))
        assert found, "apt-get source %s gave no .dsc in %s" % (package, dest)
        return found[-1]


DEBIAN_SOURCE_LINES = [line.replace("deb ", "deb-src ", 1) for line in DEBIAN_SOURCES["bookworm"]]


def source_package(name: str, suite: str = "") -> Path:
    """The .dsc of bookworm's source package `name` (with its tarballs; of `suite` alone where given: the
    mirror here lacks the security archive's sources), fetched once with `apt-get source --download-only` and
    kept in the rig's cache."""
    target = RIG_CACHE / "sources" / (name + ("-" + suite if suite else ""))
    with rig_lock("source-" + target.name):
        found = sorted(target.glob("%s_*.dsc" % name))
        if not found:
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            apt = PrivateApt(RIG_CACHE / "sources" / ".apt", DEBIAN_SOURCE_LINES)
            apt.source(name + ("/" + suite if suite else ""), tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
            found = sorted(target.glob("%s_*.dsc" % name))
    return found[-1]


def ubuntu_keyring(cache: Path) -> Path:
    """Ubuntu's archive keyring as postroj verified and kept it in POSTROJ_CACHE (after an Ubuntu bootstrap)."""
    found = sorted((cache / "keyrings").glob("*/ubuntu-archive-keyring.gpg"))
    assert found, "no Ubuntu keyring in %s: bootstrap an Ubuntu image first" % cache
    return found[0]


# --- a package to probe ---------------------------------------------------------

DEMO_SERVER = r"""#!/usr/bin/perl
# postroj-demo: answers every HTTP request with a greeting (perl-base only, no dependencies).
use strict;
use warnings;
use IO::Socket::INET;
my $port = shift || 8080;
my $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 16, ReuseAddr => 1)
    or die "cannot listen on port $port: $!\n";
while (my $client = $server->accept) {
    while (my $line = <$client>) { last if $line =~ /^\r?\n$/; }
    my $body = "hello from postroj-demo\n";
    print $client "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($body) . "\r\n\r\n" . $body;
    close $client;
}
"""

DEMO_UNIT = """[Unit]
Description=postroj demo HTTP service

[Service]
ExecStart=/usr/bin/postroj-demo-server {port}

[Install]
WantedBy=multi-user.target
"""


def build_deb(directory: Path, package: str, description: str, files: "dict[str, tuple[str, int]]",
              depends: str = "", postinst: str = "", prerm: str = "", postrm: str = "", preinst: str = "",
              version: str = "1.0") -> Path:
    """PACKAGE_VERSION_all.deb in `directory`, built with dpkg-deb: `files` maps paths in the package to their
    text and mode; `preinst`, `postinst`, `prerm` and `postrm`, shell scripts' bodies, are its maintainer
    scripts."""
    tree = directory / package
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: postroj <postroj@localhost>\n%s"
        "Description: %s\n" % (package, version, "Depends: %s\n" % depends if depends else "", description))
    scripts = {"preinst": preinst, "postinst": postinst, "prerm": prerm, "postrm": postrm}
    files = dict(files, **{"DEBIAN/" + name: ("#!/bin/sh\nset -e\n" + body, 0o755)
                           for name, body in scripts.items() if body})
    for path, (text, mode) in files.items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    deb = directory / ("%s_%s_all.deb" % (package, version))
    sh("dpkg-deb", "--root-owner-group", "--build", tree, deb)
    return deb


# What debhelper's maintainer scripts do for a unit (dh_installsystemd): enabled at configure, and started
# when systemd runs; stopped before remove; the enablement forgotten at purge.
UNIT_POSTINST = """if [ "$1" = configure ]; then
  systemctl enable {unit} >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; systemctl restart {unit}; fi
fi
"""
UNIT_PRERM = """if [ -d /run/systemd/system ] && [ "$1" = remove ]; then systemctl stop {unit}; fi
"""
UNIT_POSTRM = """if [ "$1" = purge ]; then rm -f /etc/systemd/system/*.wants/{unit}; fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
"""


def build_demo_deb(directory: Path, port: int = 8080, depends: str = "perl-base", **overrides: str) -> Path:
    """postroj-demo_1.0_all.deb: a systemd unit whose service answers HTTP on `port`, enabled and started by its
    maintainer scripts as debhelper's are; `overrides` replace a script (postinst=...) or the version."""
    unit = "postroj-demo.service"
    scripts = {"postinst": UNIT_POSTINST.format(unit=unit), "prerm": UNIT_PRERM.format(unit=unit),
               "postrm": UNIT_POSTRM.format(unit=unit)}
    scripts.update(overrides)
    return build_deb(directory, "postroj-demo", "HTTP greeting service for postroj's tests", {
        "usr/bin/postroj-demo-server": (DEMO_SERVER, 0o755),
        "lib/systemd/system/postroj-demo.service": (DEMO_UNIT.format(port=port), 0o644)}, depends=depends,
        **scripts)


def rpm_header(tags: "dict[int, tuple[int, bytes]]") -> bytes:
    """An RPM header structure holding `tags` (tag -> (type, value))."""
    index, store = b"", b""
    for tag, (kind, value) in tags.items():
        index += struct.pack(">iiii", tag, kind, len(store), 1)
        store += value
    return b"\x8e\xad\xe8\x01\0\0\0\0" + struct.pack(">ii", len(tags), len(store)) + index + store


def minimal_rpm(path: Path, payload: int = 100, cut: int = 0) -> Path:
    """An RPM of the package h2ok 3:1.1-2.fc40 as far as its headers go (the payload is filler), `cut` bytes
    short of whole."""
    main = rpm_header({1000: (6, b"h2ok\0"), 1001: (6, b"1.1\0"), 1002: (6, b"2.fc40\0"), 1003: (4, b"\0\0\0\3")})
    signature = rpm_header({1000: (4, struct.pack(">i", len(main) + payload))})
    signature += b"\0" * (-len(signature) % 8)
    whole = b"\xed\xab\xee\xdb" + b"\0" * 92 + signature + main + b"p" * payload
    path.write_bytes(whole[:len(whole) - cut])
    return path
