"""Bad input through the real postroj.pyz, as root, against a state root with images: each case
gets a clear `error:` and `hint:`, exit code 2 (usage) or 1 (runtime), no traceback, and leaves
the state root, the cache and the host as they were. Hostile tarballs carry an /etc/os-release, so that only
their hostile entry is wrong."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

import rig

LONG = "a" * 300
NON_UTF8 = os.fsencode("debian-\udcff\udcfe")  # the bytes 0xff 0xfe, which no UTF-8 text has

# Bookkeeping, not a change: the directories every used state root and cache has, lock files
# (removing a lock file another process may be waiting on would break the lock), and postroj.pyz's
# compiled code, which any run may write.
SKELETON = re.compile(r"images|images/\.versions|locks|tmp|run"  # POSTROJ_HOME
                      r"|downloads|packages|packages/[^/]+|packages/[^/]+/partial|code")  # POSTROJ_CACHE
COMPILED = re.compile(r"code/postroj\.[0-9a-f]+\.[a-z0-9_-]+\.pyc")


def snapshot(home: Path, cache: Path) -> "dict[str, tuple]":
    """Every entry below the state root and the cache (and the top of each active image's version)."""
    found: "dict[str, tuple]" = {}
    roots = [home, cache]
    images = home / "images"
    if images.is_dir():
        roots += [Path(os.path.realpath(p)).parent for p in images.iterdir() if p.is_symlink()]
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if name.endswith(".lock") and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    continue
                if name.startswith(".#") and name.endswith(".lck") and stat.S_ISREG(st.st_mode):
                    continue  # nspawn's lock of an image it runs: a shared image a parallel test boots has it
                if root == cache and COMPILED.fullmatch(os.path.relpath(path, root)):
                    continue
                if stat.S_ISLNK(st.st_mode):
                    found[path] = ("link", os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    if root in (home, cache) and SKELETON.fullmatch(os.path.relpath(path, root)):
                        continue
                    found[path] = ("dir", stat.S_IMODE(st.st_mode))
                else:
                    found[path] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
            if root not in (home, cache):
                dirnames[:] = []  # an image's version: its top only
    return found


entry = rig.tar_entry


OS_RELEASE = entry("etc/os-release", data=b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')


def write_tar(path: Path, *entries) -> Path:
    return rig.write_tar_entries(path, [entry("etc/", tarfile.DIRTYPE), OS_RELEASE, *entries],
                                 "w:gz" if path.name.endswith(".tar.gz") else "w")


class World:
    """Files a case refers to, made in the test's own directory; `outside` stands for the host."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "input"
        self.dir.mkdir()
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.secret = self.outside / "secret"
        self.secret.write_text("a host file\n")

    def make(self, kind: str) -> str:
        d = self.dir
        if kind == "dotdot.tar":
            return str(write_tar(d / kind, entry("../escaped", data=b"x\n")))
        if kind == "absolute.tar":
            return str(write_tar(d / kind, entry(str(self.outside / "absolute"), data=b"x\n")))
        if kind == "symlink-out.tar":
            return str(write_tar(d / kind, entry("escape", tarfile.SYMTYPE, str(self.outside)),
                                 entry("escape/owned", data=b"written through the link\n")))
        if kind == "relative-symlink-out.tar.gz":
            up = "../" * (len(self.outside.parts) + 2)
            return str(write_tar(d / kind, entry("etc/escape", tarfile.SYMTYPE, up + str(self.outside).lstrip("/")),
                                 entry("etc/escape/owned", data=b"written through the link\n")))
        if kind == "hardlink-host.tar":
            return str(write_tar(d / kind, entry("stolen", tarfile.LNKTYPE, str(self.secret))))
        if kind == "hardlink-through-symlink.tar":
            return str(write_tar(d / kind, entry("hostlink", tarfile.SYMTYPE, str(self.outside)),
                                 entry("stolen", tarfile.LNKTYPE, "hostlink/secret")))
        if kind == "chardev.tar":
            return str(write_tar(d / kind, entry("etc/mem", tarfile.CHRTYPE)))
        if kind == "blockdev.tar":
            return str(write_tar(d / kind, entry("sda", tarfile.BLKTYPE)))
        if kind == "empty.tar.xz":
            (d / kind).write_bytes(b"")
            return str(d / kind)
        if kind == "noentries.tar":
            tarfile.open(str(d / kind), "w").close()
            return str(d / kind)
        if kind == "garbage.tar.gz":
            (d / kind).write_bytes(b"this is no tarball\n" * 200)
            return str(d / kind)
        if kind == "text.deb":
            (d / kind).write_text("Package: not really\n")
            return str(d / kind)
        if kind == "empty.deb":
            (d / kind).write_bytes(b"")
            return str(d / kind)
        if kind == "ar-not-deb.deb":
            (d / kind).write_bytes(b"!<arch>\n" + b"not a member header\n" * 20)
            return str(d / kind)
        if kind == "unreadable.tar":
            path = write_tar(d / kind)
            path.chmod(0)
            return str(path)
        if kind == "unreadable.deb":
            path = d / kind
            path.write_bytes(b"!<arch>\n" + b"\0" * 100)
            path.chmod(0)
            return str(path)
        raise KeyError(kind)


def case(args, code, *words, unprivileged=False, outside_untouched=False):
    return pytest.param(args, code, words, unprivileged, outside_untouched,
                        id=" ".join(a if isinstance(a, str) else repr(a) for a in args)[:90])


CASES = [
    # --- image and machine names ------------------------------------------------
    case(["image", "debian-bookworm", "--name", "a/b"], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", ".."], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", "two words"], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", "x;reboot"], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", "$(id)`id`"], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", "line\nbreak"], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", NON_UTF8], 2, "invalid image name"),
    case(["image", "debian-bookworm", "--name", "a" * 49], 2, "invalid image name"),
    case(["image", "debian-bookworm; reboot"], 2, "did you mean debian-bookworm"),
    case(["image", NON_UTF8], 2, "unknown image"),
    case(["image", LONG], 2, "aaaaaaaa"),
    case(["image", "/tmp/%s.tar" % LONG], 2, "aaaaaaaa"),
    case(["container", "../../etc", "--", "true"], 2, "invalid image name"),
    case(["container", "debian-bookworm/../debian-bullseye", "--", "true"], 2, "invalid image name"),
    case(["container", LONG, "--", "true"], 2, "invalid image name"),
    case(["container", "../images/debian-bookworm", "--", "true"], 2, "invalid image name"),
    case(["probe", "--image", "./debian-bookworm", "--command", "true"], 2, "invalid image name"),
    case(["container", "debian-bookworm", "--machine", "two words", "--", "true"], 2, "invalid machine name"),
    case(["container", "debian-bookworm", "--machine", NON_UTF8, "--", "true"], 2, "invalid machine name"),
    case(["probe", "--image", "../debian-bookworm", "--command", "true"], 2, "invalid image name"),
    case(["remove", ".versions"], 2, "invalid image name"),
    case(["remove", "../images"], 2, "invalid image name"),
    case(["stop", "../../run"], 1, "no running postroj machine"),
    # --- URLs ---------------------------------------------------------------------
    case(["image", "http://"], 2, "malformed URL"),
    case(["image", "http:///rootfs.tar.xz"], 2, "malformed URL"),
    case(["image", "http://exa mple.org/rootfs.tar.xz"], 2, "malformed URL"),
    case(["image", "http://127.0.0.1:0/rootfs.tar.xz"], 2, "http://127.0.0.1:0/rootfs.tar.xz"),
    case(["image", "http://127.0.0.1:65536/rootfs.tar.xz"], 2, "65536"),
    case(["image", "file:///srv/rootfs.tar"], 2, "unsupported scheme"),
    case(["image", "http://example.org/"], 2, "does not name a root file system tarball"),
    case(["image", "docker://"], 2, "malformed image reference"),
    case(["image", "docker://registry.example/repo:tag with space"], 2, "malformed image reference"),
    case(["probe", "--check-network", "http://localhost:0/"], 2, "port out of range"),
    case(["probe", "--check-network", "tcp://:80"], 2, "--check-network"),
    case(["probe", "--package", "http://example.org/package"], 2, "does not name a package"),
    # --- files --------------------------------------------------------------------
    case(["image", "/nonexistent/postroj/rootfs.tar.xz"], 2, "does not exist"),
    case(["image", "{unreadable.tar}"], 1, "cannot read", unprivileged=True),
    case(["image", "{empty.tar.xz}"], 1, "empty.tar.xz", "not a tarball"),
    case(["image", "{noentries.tar}"], 1, "noentries.tar is empty"),
    case(["image", "{garbage.tar.gz}"], 1, "garbage.tar.gz", "not a tarball"),
    case(["probe", "--package", "{text.deb}"], 2, "is not a package"),
    case(["probe", "--package", "{empty.deb}"], 2, "is not a package"),
    case(["probe", "--package", "{unreadable.deb}"], 2, "cannot read package", unprivileged=True),
    case(["probe", "--package", "{ar-not-deb.deb}"], 2, "is not a package"),
    case(["container", "debian-bookworm", "--bind", "/etc:/mnt/../etc", "--", "true"], 2, "invalid bind target"),
    case(["probe", "--copy", "/etc/hostname:", "--command", "true"], 2, "invalid --copy"),
    # --- hostile tarballs ---------------------------------------------------------
    case(["image", "{dotdot.tar}"], 1, "'../escaped' would land outside the root", outside_untouched=True),
    case(["image", "{absolute.tar}"], 1, "would land outside the root", outside_untouched=True),
    case(["image", "{symlink-out.tar}"], 1, "'escape/owned' is written through the link 'escape'",
         outside_untouched=True),
    case(["image", "{relative-symlink-out.tar.gz}"], 1, "written through the link 'etc/escape'",
         outside_untouched=True),
    case(["image", "{hardlink-host.tar}"], 1, "hard link 'stolen' points outside the root", outside_untouched=True),
    case(["image", "{hardlink-through-symlink.tar}"], 1, "stolen", "hostlink", "not a safe root file system",
         outside_untouched=True),
    case(["image", "{chardev.tar}"], 1, "device node 'etc/mem' outside /dev"),
    case(["image", "{blockdev.tar}"], 1, "device node 'sda' outside /dev"),
    # --- numbers ------------------------------------------------------------------
    case(["selftest", "--jobs", "0"], 2, "--jobs", "at least 1"),
    case(["probe", "--jobs", "-3", "--command", "true"], 2, "--jobs"),
    case(["container", "debian-bookworm", "--boot-timeout", "-1", "--", "true"], 2, "--boot-timeout"),
    case(["probe", "--timeout", "inf", "--command", "true"], 2, "--timeout"),
    case(["probe", "--timeout", "0", "--command", "true"], 2, "--timeout"),
    case(["probe", "--check-network", "tcp://127.0.0.1:65536"], 2, "port out of range"),
    case(["probe", "--check-network", "http://localhost/", "--expect-status", "600"], 2, "--expect-status"),
    case(["vm", "up", "debian-12", "--cpus", "0"], 2, "--cpus"),
    # --- other options ------------------------------------------------------------
    case(["container", "debian-bookworm", "--setenv", "TWO WORDS=1", "--", "true"], 2, "invalid --setenv"),
    case(["probe", "--check-unit", "nginx\nreboot"], 2, "invalid unit name"),
    # --- issue 21: report paths checked first, time-outs of at most 7 days, what is no image, messages ----
    case(["probe", "--command", "true", "--junit", "/nonexistent/postroj/r.xml"], 2, "cannot write",
         "/nonexistent/postroj/r.xml"),
    case(["probe", "--command", "true", "--json", "/nonexistent/postroj/r.json"], 2, "cannot write",
         "/nonexistent/postroj/r.json"),
    case(["probe", "--timeout", "1e308", "--command", "true"], 2, "--timeout", "at most 604800"),
    case(["probe", "--timeout", "604801", "--command", "true"], 2, "--timeout", "at most 604800"),
    case(["probe", "--install-timeout", "1e10", "--command", "true"], 2, "--install-timeout", "at most 604800"),
    case(["container", "debian-bookworm", "--boot-timeout", "1e10", "--", "true"], 2, "--boot-timeout",
         "at most 604800"),
    case(["image", "/", "--name", "x"], 2, "host's own root"),
    case(["image", "/dev/zero"], 2, "/dev/zero", "not a regular file"),
    case(["probe", "--check-network", "tcp://localhost:22x"], 2, "is not a number"),
    case(["probe", "--check-network", "http://exa mple.com/"], 2, "malformed URL"),
    case(["probe", "--check-network", "http://%00/"], 2, "malformed URL"),
    case(["probe", "--check-unit", "ssh@.service"], 2, "ssh@.service", "template"),
    case(["probe", "--image", "debian-bookworm", "--shard", "99999/99999", "--command", "true"], 2,
         "holds no image"),
    case(["probe", "--shard", "-1/2", "--command", "true"], 2, "--shard", "K/N"),
    case(["autopkgtest-virt", "debian-bookworm", "--private-network", "--host-network"], 2, "not allowed with"),
]


@pytest.mark.parametrize("args, code, words, unprivileged, outside_untouched", CASES)
def test_bad_input(images, tmp_path, args, code, words, unprivileged, outside_untouched):
    world = World(tmp_path)
    argv = [world.make(a[1:-1]) if isinstance(a, str) and a.startswith("{") else a for a in args]
    before = snapshot(images.home, images.cache)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if unprivileged else []
    # as root, only a process without CAP_DAC_OVERRIDE finds a mode-000 file unreadable
    proc = subprocess.run(prefix + images.argv(*argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=images.env, timeout=300)
    out = proc.stdout.decode("utf-8", "backslashreplace")
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == code, "exit %d, expected %d\nstdout:\n%s\nstderr:\n%s" % (proc.returncode, code,
                                                                                         out, err)
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert any(line.startswith("error: ") for line in lines), err
    assert any(line.startswith("hint: ") for line in lines), "no hint says how to fix it:\n%s" % err
    for word in words:
        assert word in err, "%r not in:\n%s" % (word, err)
    assert out == "", "stdout is for data"
    assert snapshot(images.home, images.cache) == before, "the command changed the state root or the cache"
    if outside_untouched:
        assert sorted(p.name for p in world.outside.iterdir()) == ["secret"]
        assert world.secret.read_text() == "a host file\n" and world.secret.stat().st_nlink == 1

