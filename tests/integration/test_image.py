"""`postroj image`: registry (through the mirror), HTTP tarballs, bootstrap; atomic activation."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

import rig
from rig import staging_has, wait_for




def assert_boots(postroj, name: str) -> None:
    proc = postroj("container", name, "--", "systemctl", "is-system-running", timeout=120)
    assert proc.stdout.strip() in ("running", "degraded"), (proc.stdout, proc.stderr)


def test_registry_image_without_systemd_is_provisioned_and_boots(postroj, registries_conf, tmp_path):
    layout = rig.oci_layout()
    listing = subprocess.run(["tar", "-tf", str(rig.rootfs_tarball("bookworm"))], stdout=subprocess.PIPE,
                             text=True, check=True).stdout
    assert "lib/systemd/systemd\n" not in listing, "the registry image must lack systemd, as the real slim images"
    postroj.extra_env["CONTAINERS_REGISTRIES_CONF"] = str(registries_conf)
    proc = postroj("-v", "image", "debian-bookworm", check=0, timeout=600)
    assert "installing systemd" in proc.stderr
    assert list(rig.active_images(postroj.home)) == ["debian-bookworm"]
    meta = json.loads(postroj("list-images", "--json", check=0).stdout)
    (info,) = [i for i in meta["images"] if i["name"] == "debian-bookworm"]
    assert info["source"] == "docker://docker.io/library/debian:bookworm-slim"
    assert info["digest"].startswith("sha256:")
    assert info["os_release"] == "Debian GNU/Linux 12 (bookworm)"
    assert info["packages_downloaded"] > 0
    assert info["size"] > 50_000_000
    assert layout.exists()
    assert_boots(postroj, "debian-bookworm")

    # a second provisioning of the same release finds every package in the cache
    proc = postroj("-v", "image", "debian-bookworm", "--force", check=0, timeout=600)
    assert "provisioning downloaded 0 packages" in proc.stderr, proc.stderr
    meta = json.loads(postroj("list-images", "--json", check=0).stdout)
    (info,) = [i for i in meta["images"] if i["name"] == "debian-bookworm"]
    assert info["packages_downloaded"] == 0
    versions = list((postroj.home / "images" / ".versions").iterdir())
    assert len(versions) == 1, "the replaced version is pruned"
    assert_boots(postroj, "debian-bookworm")


def test_http_tarball_with_sha256sums(postroj, http_server):
    url = "%s/debian-bullseye-minbase.tar.xz" % http_server.url
    postroj("image", url, "--name", "bullseye-http", check=0, timeout=600)
    assert list(rig.active_images(postroj.home)) == ["bullseye-http"]
    info = json.loads(postroj("list-images", "--json", check=0).stdout)["images"][0]
    sums = (http_server.root / "SHA256SUMS").read_text()
    assert info["digest"][len("sha256:"):] in sums
    assert_boots(postroj, "bullseye-http")
    # unchanged on the server: not downloaded again
    before = len([entry for entry in http_server.log if entry[1].endswith(".tar.xz")])
    postroj("image", url, "--name", "bullseye-again", check=0, timeout=600)
    fetches = [entry for entry in http_server.log if entry[1].endswith(".tar.xz")][before:]
    assert len(fetches) == 1 and "If-None-Match" in fetches[0][2]


def test_wrong_checksum_is_refused_and_nothing_activated(postroj, http_server):
    url = "%s/debian-bullseye-minbase.tar.xz" % http_server.url
    proc = postroj("image", url, "--sha256", "0" * 64, timeout=600)
    assert proc.returncode == 1
    assert "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert list(rig.active_images(postroj.home)) == []
    assert not list((postroj.home / "tmp").iterdir())


def test_bootstrap_gives_a_bootable_image(postroj):
    proc = postroj("image", "debian-bullseye", "--via", "bootstrap", check=0, timeout=900)
    assert "bootstrap" in json.loads(postroj("list-images", "--json", check=0).stdout)["images"][0]["source"]
    assert proc.stdout.startswith("debian-bullseye")
    assert_boots(postroj, "debian-bullseye")


def test_unreachable_registry_falls_back_to_bootstrap(postroj, tmp_path):
    dead = rig.Registry(tmp_path / "dead-registry")  # never started: nothing listens on its port
    conf = dead.registries_conf(tmp_path / "registries.conf")
    conf.write_text(conf.read_text().replace('location = "docker.io"', 'location = "%s"' % dead.address))
    postroj.extra_env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    proc = postroj("image", "debian-bookworm", check=0, timeout=900)
    assert "bootstrapping from the package mirror instead" in proc.stderr
    assert_boots(postroj, "debian-bookworm")






@pytest.mark.parametrize("phase", ["download", "unpack", "provisioning"])
def test_sigkill_leaves_no_half_image(postroj, http_server, phase):
    url = "%s/debian-bookworm-minbase.tar.xz" % http_server.url
    if phase == "download":
        http_server.server.throttle = 0.002
    proc = postroj.popen("image", url, "--name", "killed")
    try:
        if phase == "download":
            wait_for(lambda: any(p.name.endswith(".part") and p.stat().st_size > 0
                                 for p in (postroj.cache / "downloads").glob("*")) if (postroj.cache / "downloads")
                     .is_dir() else False)
        elif phase == "unpack":
            wait_for(lambda: [p for p in rig.processes_mentioning("--extract") if p[0] in rig.descendants(proc.pid)]
                     and staging_has(postroj.home, "rootfs/etc"))
        else:
            wait_for(lambda: [p for p in rig.processes_mentioning("apt-get") if str(postroj.home) in p[1]],
                     timeout=300, step=0.02)
    finally:
        http_server.server.throttle = 0.0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # children die with postroj (PR_SET_PDEATHSIG)
    wait_for(lambda: not rig.processes_mentioning(str(postroj.home)), timeout=20)
    assert list(rig.active_images(postroj.home)) == []
    postroj("image", url, "--name", "killed", check=0, timeout=600)
    assert list(rig.active_images(postroj.home)) == ["killed"]
    assert not list((postroj.home / "tmp").iterdir()), "staging of the killed run is cleaned up"
    assert_boots(postroj, "killed")


def test_two_forced_acquisitions_at_once(postroj, http_server):
    url = "%s/debian-bullseye-minbase.tar.xz" % http_server.url
    postroj("image", url, "--name", "twice", check=0, timeout=600)
    procs = [postroj.popen("image", url, "--name", "twice", "--force") for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert list(rig.active_images(postroj.home)) == ["twice"]
    assert len(list((postroj.home / "images" / ".versions").iterdir())) == 1
    assert_boots(postroj, "twice")


def test_remove(postroj, http_server):
    url = "%s/debian-bullseye-minbase.tar.xz" % http_server.url
    postroj("image", url, "--name", "doomed", check=0, timeout=600)
    postroj("remove", "doomed", check=0)
    assert list(rig.active_images(postroj.home)) == []
    assert not list((postroj.home / "images" / ".versions").iterdir())
    proc = postroj("remove", "doomed")  # neither acquired nor in the catalogue: a usage error, as a typo
    assert proc.returncode == 2 and "unknown image 'doomed'" in proc.stderr, proc.stderr


def test_tarball_without_os_is_refused(postroj, tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello").write_text("no os here\n")
    tarball = tmp_path / "empty-os.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
    proc = postroj("image", str(tarball))
    assert proc.returncode == 1 and "os-release" in proc.stderr
    assert list(rig.active_images(postroj.home)) == []


def test_oci_layout_transport(postroj):
    layout = rig.oci_layout()
    postroj("image", "oci:%s:bullseye-slim" % layout, "--name", "from-layout", check=0, timeout=600)
    assert list(rig.active_images(postroj.home)) == ["from-layout"]
    info = json.loads(postroj("list-images", "--json", check=0).stdout)["images"][0]
    assert info["os_release"] == "Debian GNU/Linux 11 (bullseye)" and info["digest"].startswith("sha256:")
    assert_boots(postroj, "from-layout")


def test_a_link_to_a_root_file_system_is_copied_as_the_tree_it_names(images, tmp_path):
    """images/NAME are links to root file systems; so may be what a user gives."""
    link = tmp_path / "link-to-bookworm"
    link.symlink_to(images.home / "images" / "debian-bookworm")
    proc = images("image", str(link), "--name", "copied", check=0, timeout=600)
    assert proc.stdout.startswith("copied\tDebian GNU/Linux 12 (bookworm)")
    copied = images.home / "images" / "copied"
    assert (copied / "usr" / "lib" / "systemd" / "systemd").exists()
    assert not (Path(os.path.realpath(copied))).is_symlink()
    assert_boots(images, "copied")


def test_steps_show_on_a_terminal_with_their_time_and_not_in_a_pipe(images, tmp_path):
    import pty

    source = images.home / "images" / "debian-bookworm"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(images.argv("image", str(source), "--name", "shown"), env=images.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=600)
    finally:
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen
    finished = [line.split("\x1b[K")[-1] for line in screen.replace("\r\n", "\n").split("\n") if line.strip()]
    steps = [line for line in finished if line.startswith("postroj: shown: ")]
    assert [line.split()[2] for line in steps] == ["copy", "provision", "activate"], screen
    for line in steps:
        assert re.fullmatch(r"postroj: shown: \w+ \d+\.\d s\r?", line), line
    # the same in a pipe: no step lines, nothing at all on stderr
    proc = images("image", str(source), "--name", "piped", check=0, timeout=600)
    assert proc.stderr == ""
