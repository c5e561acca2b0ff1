"""The smoke test of `make check`: one real container of a real image boots, runs a probe and is gone."""

from __future__ import annotations

import json


def test_one_container_boots_probes_and_is_gone(images):
    proc = images("probe", "--image", "debian-bookworm", "--command", "systemctl is-active systemd-journald",
                  "--json", "-", check=0, timeout=300)
    report = json.loads(proc.stdout)
    assert [(r["image"], r["status"], r["output"]) for r in report["results"]] == [
        ("debian-bookworm", "pass", "active")]
    assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []
