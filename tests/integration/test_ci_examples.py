"""The CI examples of the README's "CI and many hosts" section parse as YAML and pass check-jsonschema with
its own GitHub workflow and GitLab CI schemas (issue 14); they shard one package's probes and merge them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent.parent / "README.rst"


def yaml_blocks() -> "list[str]":
    text = README.read_text()
    section = text.split("CI and many hosts\n=================", 1)[1].split("\nautopkgtest\n====", 1)[0]
    blocks = []
    for match in re.finditer(r"\.\. code-block:: yaml\n\n((?:    .*\n|\n)+)", section):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines).strip() + "\n")
    return blocks


@pytest.fixture(scope="module")
def examples():
    blocks = yaml_blocks()
    assert len(blocks) == 2, "the README shows a GitHub workflow and a GitLab CI job"
    return {"github": blocks[0], "gitlab": blocks[1]}


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        pytest.skip("check-jsonschema is not installed (make setup)")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


@pytest.mark.parametrize("kind, schema", [("github", "vendor.github-workflows"), ("gitlab", "vendor.gitlab-ci")])
def test_ci_examples_pass_their_schemas(examples, tmp_path, kind, schema):
    path = tmp_path / ("%s.yml" % kind)
    path.write_text(examples[kind])
    proc = check_jsonschema(schema, path)
    assert proc.returncode == 0, proc.stdout
    assert "ok -- validation done" in proc.stdout


def test_ci_examples_shard_and_merge(examples):
    from ruamel.yaml import YAML

    github = YAML(typ="safe").load(examples["github"])
    probe, report = github["jobs"]["probe"], github["jobs"]["report"]
    assert probe["strategy"]["matrix"]["shard"] == [1, 2]
    assert any("--shard ${{ matrix.shard }}/2" in step.get("run", "") for step in probe["steps"])
    assert report["needs"] == "probe" and any("postroj.pyz report" in step.get("run", "") for step in report["steps"])
    gitlab = YAML(typ="safe").load(examples["gitlab"])
    assert gitlab["probe"]["parallel"] == 2
    assert any("--shard $CI_NODE_INDEX/$CI_NODE_TOTAL" in line for line in gitlab["probe"]["script"])
    assert gitlab["report"]["artifacts"]["reports"]["junit"] == "report.xml"


def test_a_broken_workflow_fails_the_schema(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("name: x\non: push\njobs:\n  probe:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    assert check_jsonschema("vendor.github-workflows", path).returncode != 0
