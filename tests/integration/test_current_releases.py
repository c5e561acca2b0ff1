"""Today's releases for real (issue 25): Debian forky and sid, Ubuntu 25.10, 26.04 and 26.10, bootstrapped from
their own archives, booted on this host and probed with nginx from their own archives. Their systemd (257 to 262)
refuses cgroup v1, which this host has: postroj boots them with the unified hierarchy, decided from the version
it read at acquisition, while older guests keep the host's layout."""

from __future__ import annotations

import json
import re

import postroj
import rig

CURRENT = rig.CURRENT_RELEASES
HOST_UNIFIED = postroj.cgroup_layout().startswith("unified")
CGROUP2, TMPFS = "63677270", "1021994"  # the file systems' magic numbers, as `stat -fc %t` prints them


def test_todays_releases_boot_and_serve_nginx_from_their_own_archives(current):
    """One run over the five, each with its own nginx by name (--install nginx, issue 39: resolved on each image by
    its own archive, each result naming the version that image got), two at a time; stdout is the JSON alone."""
    args = ["probe", "--jobs", "2", "--install", "nginx"]
    for label in CURRENT:
        args += ["--image", label]
    proc = current(*args, "--check-unit", "nginx", "--check-network", "http://localhost:80", "--expect-body", "nginx",
                   "--command", "systemctl is-active systemd-journald", "--command", "stat -fc %t /sys/fs/cgroup",
                   "--json", "-", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["results"]
    assert [(r["image"], r["kind"], r["status"]) for r in rows] == [
        (label, kind, "pass") for label in CURRENT for kind in ("package", "unit", "network", "command", "command")]
    for row in rows:
        if row["target"] == "stat -fc %t /sys/fs/cgroup":
            assert row["output"] == CGROUP2, row  # the unified hierarchy, on this host's v1 layout too
        if row["kind"] == "package":
            assert row["target"] == "nginx" and re.fullmatch(r"installed: package nginx \S+", row["name"]), row
    versions = {row["image"]: row["name"].split()[-1] for row in rows if row["kind"] == "package"}
    assert len(set(versions.values())) >= 3, "the releases carry different nginx: %s" % versions
    assert proc.stderr.count("ubuntu-questing reached its end of life on 2026-07-09") == 1, proc.stderr
    assert "debian-forky reached" not in proc.stderr and "ubuntu-resolute reached" not in proc.stderr


def test_the_systemd_version_is_kept_with_the_image_and_the_catalogue_marks_the_ended(current):
    data = json.loads(current("list-images", "--json", check=0).stdout)
    versions = {i["name"]: i["systemd"] for i in data["images"]}
    assert set(versions) == set(CURRENT)
    assert all(v >= postroj.UNIFIED_SINCE_SYSTEMD for v in versions.values()), versions
    dists = {d["label"]: d for d in data["distributions"]}
    assert (dists["ubuntu-questing"]["eol"], dists["ubuntu-questing"]["ended"]) == ("2026-07-09", True)
    assert (dists["ubuntu-resolute"]["eol"], dists["ubuntu-resolute"]["ended"]) == ("2031-05-29", False)
    assert (dists["debian-forky"]["eol"], dists["debian-forky"]["ended"]) == ("", False)
    table = current("list-images", check=0).stdout
    assert "2026-07-09 (ended)" in table and "2031-05-29 (ended)" not in table


def test_all_leaves_out_a_release_past_its_end_of_life_unless_asked(current):
    proc = current("probe", "--all", "--command", "true", "--json", "-", check=0, timeout=600)
    probed = [r["image"] for r in json.loads(proc.stdout)["results"]]
    assert sorted(probed) == sorted(set(CURRENT) - {"ubuntu-questing"})
    assert "end of life" not in proc.stderr
    proc = current("probe", "--all", "--include-eol", "--command", "true", "--json", "-", check=0, timeout=600)
    assert sorted(r["image"] for r in json.loads(proc.stdout)["results"]) == sorted(CURRENT)
    assert proc.stderr.count("reached its end of life") == 1


def test_an_older_guest_keeps_the_hosts_cgroup_layout(images):
    """bookworm's systemd 252 is booted as it always was: the unified hierarchy only where the guest needs it."""
    proc = images("probe", "--image", "debian-bookworm", "--command", "stat -fc %t /sys/fs/cgroup", "--json", "-",
                  check=0)
    (row,) = json.loads(proc.stdout)["results"]
    assert row["output"] == (CGROUP2 if HOST_UNIFIED else TMPFS), row


def test_a_guest_that_still_refuses_cgroup_v1_gets_a_hint_that_names_what_to_do(current):
    """sid's systemd 262 recorded as 252 (as in metadata of an image its systemd was upgraded in): postroj
    boots it with the host's layout, systemd refuses it, and the hint says how to boot it anyway."""
    if HOST_UNIFIED:
        return  # every guest gets the unified hierarchy on such a host: nothing to refuse
    meta = (current.home / "images" / "debian-sid").resolve().parent / "image.json"
    text = meta.read_text()
    data = json.loads(text)
    assert data["systemd"] >= postroj.UNIFIED_SINCE_SYSTEMD, data
    meta.write_text(json.dumps(dict(data, systemd=252)))
    try:
        proc = current("container", "debian-sid", "--", "true")
    finally:
        meta.write_text(text)
    assert proc.returncode == 1, proc.stderr
    assert "unsupported legacy cgroup hierarchy" in proc.stderr, proc.stderr
    assert "took it for systemd 252" in proc.stderr and "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1" in proc.stderr, proc.stderr
    current("container", "debian-sid", "--", "true", check=0)

