"""`postroj completion bash|zsh`, tried in a real bash: COMP_WORDS and COMP_CWORD set, the completion
function called, COMPREPLY read (issue 17)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import postroj


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "postroj.bash"
    path.write_text(postroj.completion_script("bash"))
    return path


def complete(script, words, home, cwd=None) -> "list[str]":
    """What bash offers for the last of `words` (the word being completed; '' for a new one)."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    program = 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _postroj; ' \
              'printf "%s\\n" "${COMPREPLY[@]}"'
    proc = subprocess.run(["bash", "-c", program, "bash", str(script), *words], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={"POSTROJ_HOME": str(home), "PATH": "/usr/bin:/bin"},
                          cwd=cwd, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_commands_and_aliases(script, tmp_path):
    offered = complete(script, ["postroj", ""], tmp_path)
    for word in ("image", "pull", "container", "run", "probe", "pkgprobe", "report", "vm", "completion", "ls",
                 "autopkgtest-virt", "--help", "--version", "--debug"):
        assert word in offered
    assert complete(script, ["postroj", "pr"], tmp_path) == ["probe"]


def test_options_per_command(script, tmp_path):
    assert sorted(complete(script, ["postroj", "probe", "--check-"], tmp_path)) == ["--check-network",
                                                                                   "--check-unit"]
    assert "--accept-expired" in complete(script, ["postroj", "image", "--"], tmp_path)
    assert "--accept-expired" not in complete(script, ["postroj", "probe", "--"], tmp_path)
    assert complete(script, ["postroj", "vm", "run", "--sh"], tmp_path) == ["--shell"]


def test_image_names_from_the_catalogue_and_the_state_root(script, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "my-own-image").symlink_to(tmp_path)
    offered = complete(script, ["postroj", "probe", "--image", ""], tmp_path)
    assert {"debian-bookworm", "debian-12", "ubuntu-noble", "my-own-image"} <= set(offered)
    assert complete(script, ["postroj", "container", "my-"], tmp_path) == ["my-own-image"]
    assert complete(script, ["postroj", "-v", "image", "ubuntu-n"], tmp_path) == ["ubuntu-noble"]


def test_boxes_machines_and_fixed_words(script, tmp_path):
    assert complete(script, ["postroj", "vm", ""], tmp_path) == ["up", "run", "destroy", "list"]
    assert complete(script, ["postroj", "vm", "up", "windows-"], tmp_path) == ["windows-2019", "windows-2022"]
    assert complete(script, ["postroj", "probe", "--vm", "deb"], tmp_path) == ["debian-12", "debian-11"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "postroj-debian-bookworm.json").write_text("{}")
    (tmp_path / "run" / "postroj-debian-bookworm.lock").write_text("")
    assert complete(script, ["postroj", "stop", ""], tmp_path) == ["postroj-debian-bookworm"]
    assert complete(script, ["postroj", "image", "--via", ""], tmp_path) == ["registry", "bootstrap"]
    assert complete(script, ["postroj", "completion", "z"], tmp_path) == ["zsh"]


def test_file_paths_after_file_options(script, tmp_path):
    (tmp_path / "app_1.0_amd64.deb").write_text("")
    (tmp_path / "apps").mkdir()
    assert sorted(complete(script, ["postroj", "probe", "--package", "ap"], tmp_path, cwd=tmp_path)) == [
        "app_1.0_amd64.deb", "apps"]
    assert complete(script, ["postroj", "probe", "--junit", "app_"], tmp_path, cwd=tmp_path) == ["app_1.0_amd64.deb"]


def test_nothing_after_the_payloads_double_dash(script, tmp_path):
    assert complete(script, ["postroj", "container", "debian-bookworm", "--", "gr"], tmp_path) == []


def test_zsh_script_is_the_bash_one_through_bashcompinit():
    text = postroj.completion_script("zsh")
    assert text.startswith("#compdef postroj")
    assert "bashcompinit" in text and "complete -F _postroj postroj" in text
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n", "-c", text], timeout=30).returncode == 0


def test_the_cli_prints_it(capsys):
    assert postroj.main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == postroj.completion_script("bash")
