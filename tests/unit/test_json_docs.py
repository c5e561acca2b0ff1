"""Every --json output carries "schema" and exactly the fields the README's JSON section documents: a renamed
field fails here (issue 17). `machines --json` is checked with a running container (test_container.py)."""

from __future__ import annotations

import json

import pytest

import postroj
import rig


def test_the_readme_documents_each_output():
    for output in ("probe --json", "list-images --json", "machines --json", "doctor --json"):
        fields = rig.documented_fields(output)
        assert "schema" in fields and len(fields) > 3, (output, fields)


def test_probe_json_has_the_documented_fields(tmp_path):
    P, R = postroj.Probe, postroj.ProbeResult
    results = [R("debian-bookworm", P(postroj.ProbeKind.UNIT, "nginx"), postroj.Status.FAIL, 1.0, "failed", "x", "y")]
    data = postroj.results_json(results)
    assert data["schema"] == postroj.JSON_SCHEMA
    assert rig.json_fields(data) == rig.documented_fields("probe --json")


def test_list_images_json_has_the_documented_fields(capsys, tmp_path, monkeypatch):
    rootfs = tmp_path / "home" / "images" / ".versions" / "x@1" / "rootfs"
    rootfs.mkdir(parents=True)
    info = postroj.ImageInfo("x", "tarball", "sha256:0", "Debian", "debian", "debian", "apt", "now", 1, rootfs)
    (rootfs.parent / "image.json").write_text(json.dumps(info.as_json()))
    (tmp_path / "home" / "images" / "x").symlink_to(rootfs)
    layer = tmp_path / "home" / "layers" / ("0" * 32)
    (layer / "tree").mkdir(parents=True)
    (layer / "layer.json").write_text(json.dumps({"image": "x", "version": "x@1", "packages": ["libc6=2.36:amd64"],
                                                  "before": {}, "made": "2026-11-30T00:00:00Z", "size": 0}))
    assert postroj.main(["list-images", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == postroj.JSON_SCHEMA and data["images"] and data["layers"]
    assert rig.json_fields(data) == rig.documented_fields("list-images --json")


def test_doctor_json_has_the_documented_fields(capsys):
    postroj.main(["doctor", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == postroj.JSON_SCHEMA
    assert rig.json_fields(data) == rig.documented_fields("doctor --json")


@pytest.mark.parametrize("stdout_is_a_terminal, expected", [(True, "no postroj containers are running\n"),
                                                            (False, "")])
def test_machines_says_when_none_run(capsys, monkeypatch, stdout_is_a_terminal, expected):
    monkeypatch.setattr(postroj.sys.stdout, "isatty", lambda: stdout_is_a_terminal)
    assert postroj.main(["machines"]) == 0
    assert capsys.readouterr().out == expected
    assert postroj.main(["machines", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"schema": postroj.JSON_SCHEMA, "machines": []}
