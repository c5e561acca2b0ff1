"""Root file system tarballs: what check_tar_members refuses, and extract_tarball with the real GNU tar."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import pytest

import postroj
import rig


entry = rig.tar_entry


def check(*entries) -> int:
    return postroj.check_tar_members(iter([info for info, _ in entries]), "rootfs.tar")


def refused(*entries) -> str:
    with pytest.raises(postroj.PostrojError) as error:
        check(*entries)
    assert "not a safe root file system" in error.value.hint
    assert error.value.message.startswith("rootfs.tar: ")
    return error.value.message


def write_tar(path, *entries, mode: str = "w") -> "os.PathLike":
    return rig.write_tar_entries(path, entries, mode)


# A normal Debian-like tree: absolute symlinks inside (alternatives), a merged-/usr link, hard links,
# device nodes in /dev.
NORMAL_TREE = [
    entry("./", tarfile.DIRTYPE),
    entry("./etc/", tarfile.DIRTYPE),
    entry("./etc/os-release", data=b'ID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'),
    entry("./etc/alternatives/", tarfile.DIRTYPE),
    entry("./etc/alternatives/editor", tarfile.SYMTYPE, "/usr/bin/vim.basic"),
    entry("./usr/", tarfile.DIRTYPE),
    entry("./usr/bin/", tarfile.DIRTYPE),
    entry("./usr/bin/vim.basic", data=b"#!/bin/sh\necho vim\n"),
    entry("./usr/bin/vi", tarfile.LNKTYPE, "./usr/bin/vim.basic"),
    entry("./usr/bin/editor", tarfile.SYMTYPE, "/etc/alternatives/editor"),
    entry("./usr/lib/", tarfile.DIRTYPE),
    entry("./lib", tarfile.SYMTYPE, "usr/lib"),
    entry("./etc/localtime", tarfile.SYMTYPE, "../usr/share/zoneinfo/Etc/UTC"),
    entry("./run/", tarfile.DIRTYPE),
    entry("./run/initctl", tarfile.FIFOTYPE),
]
DEVICES = [
    entry("./dev/", tarfile.DIRTYPE),
    entry("./dev/null", tarfile.CHRTYPE),
    entry("./dev/loop0", tarfile.BLKTYPE),
]


# --- check_tar_members ------------------------------------------------------------


def test_normal_tree_with_absolute_symlinks_inside_is_accepted():
    assert check(*NORMAL_TREE, *DEVICES) == len(NORMAL_TREE) + len(DEVICES)


def test_names_without_leading_dot_slash_are_accepted():
    assert check(entry("etc/", tarfile.DIRTYPE), entry("etc/hostname", data=b"x\n"), entry("dev/null", tarfile.CHRTYPE),
                 entry("usr/bin/x", tarfile.LNKTYPE, "etc/hostname")) == 4


@pytest.mark.parametrize("name", ["../evil", "./../evil", "etc/../../evil", "a/b/../../../evil", "..",
                                  "/etc/passwd", "/", "//etc/cron.d/job"])
def test_entries_outside_the_root(name):
    assert "would land outside the root" in refused(entry("etc/", tarfile.DIRTYPE), entry(name, data=b"x"))


@pytest.mark.parametrize("linkname", ["/etc", "../../../../etc", "/", "usr/lib"])
def test_file_written_through_a_symlink(linkname):
    message = refused(
        entry("./etc/", tarfile.DIRTYPE),
        entry("./escape", tarfile.SYMTYPE, linkname),
        entry("./escape/cron.d/job", data=b"* * * * * root sh -c 'id > /tmp/owned'\n"),
    )
    assert "written through the link 'escape'" in message


def test_directory_written_through_a_symlink():
    assert "written through the link" in refused(entry("a/b", tarfile.SYMTYPE, "/"),
                                                 entry("a/b/root/", tarfile.DIRTYPE))


def test_file_written_through_a_hard_link():
    assert "written through the link" in refused(entry("target", tarfile.SYMTYPE, "/etc"),
                                                 entry("hard", tarfile.LNKTYPE, "target"),
                                                 entry("hard/passwd", data=b"root::0:0::/:/bin/sh\n"))


def test_symlink_spelled_differently_is_still_a_link():
    assert "written through the link" in refused(entry("./escape/", tarfile.SYMTYPE, "/etc"),
                                                 entry("escape//./shadow", data=b"x"))


@pytest.mark.parametrize("linkname", ["/etc/shadow", "/", "../../etc/shadow", "usr/../../etc/shadow"])
def test_hard_link_outside_the_root(linkname):
    assert "hard link 'stolen' points outside the root" in refused(entry("stolen", tarfile.LNKTYPE, linkname))


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
@pytest.mark.parametrize("name", ["etc/mem", "./tmp/sda", "devices/null", "usr/dev/null"])
def test_device_node_outside_dev(kind, name):
    assert "device node %r outside /dev" % name in refused(entry(name, kind))


def test_count_of_an_empty_member_list_is_zero():
    assert check() == 0


# --- extract_tarball --------------------------------------------------------------


def test_extract_a_small_tree(tmp_path):
    tarball = write_tar(tmp_path / "rootfs.tar.gz", *NORMAL_TREE, mode="w:gz")
    root = tmp_path / "root"
    postroj.extract_tarball(tarball, root)
    assert (root / "etc" / "os-release").read_text().startswith("ID=debian\n")
    assert os.readlink(root / "etc" / "alternatives" / "editor") == "/usr/bin/vim.basic"
    assert os.readlink(root / "usr" / "bin" / "editor") == "/etc/alternatives/editor"
    assert os.readlink(root / "lib") == "usr/lib"
    assert os.stat(root / "usr" / "bin" / "vi").st_ino == os.stat(root / "usr" / "bin" / "vim.basic").st_ino
    assert (root / "usr" / "bin" / "vim.basic").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:xz", ".tar.xz"), ("w:bz2", ".tar.bz2")])
def test_extract_compressed(tmp_path, mode, suffix):
    tarball = write_tar(tmp_path / ("rootfs" + suffix), *NORMAL_TREE[:3], mode=mode)
    postroj.extract_tarball(tarball, tmp_path / "root")
    assert (tmp_path / "root" / "etc" / "os-release").is_file()


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd is not installed (make setup)")
def test_extract_zstd(tmp_path):
    plain = write_tar(tmp_path / "rootfs.tar", *NORMAL_TREE[:3])
    subprocess.run(["zstd", "-q", "-19", str(plain), "-o", str(tmp_path / "rootfs.tar.zst")], check=True)
    postroj.extract_tarball(tmp_path / "rootfs.tar.zst", tmp_path / "root")
    assert (tmp_path / "root" / "etc" / "os-release").read_text().startswith("ID=debian")


def test_empty_tarball_is_refused(tmp_path):
    tarball = write_tar(tmp_path / "empty.tar")
    with pytest.raises(postroj.PostrojError) as error:
        postroj.extract_tarball(tarball, tmp_path / "root")
    assert error.value.message == "empty.tar is empty"
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("content", [b"", b"this is not a tarball at all\n" * 100])
def test_file_that_is_not_a_tarball(tmp_path, content):
    path = tmp_path / "rootfs.tar.gz"
    path.write_bytes(content)
    with pytest.raises(postroj.PostrojError) as error:
        postroj.extract_tarball(path, tmp_path / "root")
    assert "rootfs.tar.gz" in error.value.message
    assert not (tmp_path / "root").exists()


def test_unsafe_tarball_is_refused_before_anything_is_written(tmp_path):
    outside = tmp_path / "host"
    outside.mkdir()
    tarball = write_tar(tmp_path / "evil.tar",
                        entry("etc/os-release", data=b"ID=evil\n"),
                        entry("escape", tarfile.SYMTYPE, str(outside)),
                        entry("escape/owned", data=b"owned\n"))
    with pytest.raises(postroj.PostrojError) as error:
        postroj.extract_tarball(tarball, tmp_path / "root")
    assert "written through the link" in error.value.message
    assert not (tmp_path / "root").exists()
    assert list(outside.iterdir()) == []


def test_hard_link_through_a_symlink_never_reaches_the_host(tmp_path):
    outside = tmp_path / "host"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("host secret\n")
    tarball = write_tar(tmp_path / "evil.tar",
                        entry("etc/os-release", data=b"ID=evil\n"),
                        entry("hostlink", tarfile.SYMTYPE, str(outside)),
                        entry("stolen", tarfile.LNKTYPE, "hostlink/secret"))
    with pytest.raises(postroj.PostrojError):
        postroj.extract_tarball(tarball, tmp_path / "root")
    assert secret.stat().st_nlink == 1
    assert not (tmp_path / "root" / "stolen").exists()
