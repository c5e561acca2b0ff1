"""build_zipapp.py gives the same postroj.pyz for the same source, whatever the file times or the Python that
builds it; the archive runs on every interpreter from 3.8 to 3.13; postroj.py needs only the standard library."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
MINORS = range(8, 14)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """postroj.py and build_zipapp.py copied once, so that every build here sees the same source."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("postroj.py", "build_zipapp.py"):
        shutil.copy2(REPO / name, tree / name)
    return tree


@pytest.fixture(scope="module")
def built(snapshot, tmp_path_factory) -> Path:
    return build(sys.executable, snapshot, tmp_path_factory.mktemp("pyz") / "postroj.pyz")


def build(python: str, tree: Path, output: Path) -> Path:
    proc = subprocess.run([python, str(tree / "build_zipapp.py"), str(output)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(output)
    return output


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def version_of(tree: Path) -> str:
    return re.search(r'^__version__ = "([^"]+)"', (tree / "postroj.py").read_text(), re.M).group(1)


def pyenv_python(minor: int) -> str:
    """$(pyenv root)/versions/3.MINOR.*/bin/python3, or a skip that says why not."""
    root = os.environ.get("PYENV_ROOT", "")
    if not root and shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, text=True, check=False).stdout.strip()
    versions = Path(root) / "versions" if root else None
    if not versions or not versions.is_dir():
        pytest.skip("no pyenv here: cannot check Python 3.%d" % minor)
    found = sorted(p for p in versions.glob("3.%d.*" % minor) if re.match(r"^3\.%d\.\d+$" % minor, p.name)
                   and (p / "bin" / "python3").exists())
    if not found:
        pytest.skip("no Python 3.%d under %s" % (minor, versions))
    return str(found[-1] / "bin" / "python3")


# --- reproducible -----------------------------------------------------------------


def test_same_source_gives_the_same_bytes(snapshot, built, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    again = build(sys.executable, snapshot, tmp_path / "elsewhere" / "again.pyz")
    assert sha256(again) == sha256(built)

    touched = tmp_path / "touched"
    touched.mkdir()
    for name in ("postroj.py", "build_zipapp.py"):
        shutil.copyfile(snapshot / name, touched / name)
    os.utime(touched / "postroj.py", (1_000_000_000, 1_000_000_000))
    os.utime(touched / "build_zipapp.py", (2_000_000_000, 2_000_000_000))
    assert sha256(build(sys.executable, touched, tmp_path / "touched.pyz")) == sha256(built)


def test_other_source_gives_other_bytes(snapshot, built, tmp_path):
    changed = tmp_path / "changed"
    changed.mkdir()
    shutil.copyfile(snapshot / "build_zipapp.py", changed / "build_zipapp.py")
    (changed / "postroj.py").write_text((snapshot / "postroj.py").read_text() + "\n# changed\n")
    assert sha256(build(sys.executable, changed, tmp_path / "changed.pyz")) != sha256(built)


@pytest.mark.parametrize("minor", MINORS, ids=["3.%d" % m for m in MINORS])
def test_every_python_builds_the_same_bytes(snapshot, built, tmp_path, minor):
    python = pyenv_python(minor)
    assert sha256(build(python, snapshot, tmp_path / "postroj.pyz")) == sha256(built)


# --- the archive ------------------------------------------------------------------


def test_archive_layout(snapshot, built, tmp_path):
    assert built.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert built.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in built.parent.iterdir()] == ["postroj.pyz"], "no temporary file is left"
    with zipfile.ZipFile(built) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["__main__.py", "postroj.py"]
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == 0o100644
            assert info.compress_type == zipfile.ZIP_DEFLATED
        assert archive.read("postroj.py") == (snapshot / "postroj.py").read_bytes()
        assert b"raise SystemExit(postroj.main())" in archive.read("__main__.py")


def test_archive_runs_by_itself(snapshot, built):
    if not shutil.which("python3"):
        pytest.skip("no python3 on PATH for the #! line")
    proc = subprocess.run([str(built), "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "postroj %s\n" % version_of(snapshot)), proc.stderr


def run_pyz(python: str, pyz: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, POSTROJ_HOME=str(tmp_path / "home"), POSTROJ_CACHE=str(tmp_path / "cache"))
    return subprocess.run([python, str(pyz), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=60)


@pytest.mark.parametrize("minor", MINORS, ids=["3.%d" % m for m in MINORS])
def test_archive_runs_on_python(snapshot, built, tmp_path, minor):
    python = pyenv_python(minor)
    version = run_pyz(python, built, tmp_path, "--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, "postroj %s\n" % version_of(snapshot), "")
    usage = run_pyz(python, built, tmp_path, "image")  # builds the whole parser; the exit code survives __main__
    assert usage.returncode == 2, usage.stderr
    assert usage.stderr.startswith("error: no image given\nhint: ")
    assert not (tmp_path / "home").exists()


def test_archive_lists_the_catalogue_on_the_oldest_python(built, tmp_path):
    listing = run_pyz(pyenv_python(MINORS[0]), built, tmp_path, "list-images", "--json")
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)["distributions"]) >= 25


# --- standard library only --------------------------------------------------------


def imported_modules(path: Path) -> "set[str]":
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is new in Python 3.10")
@pytest.mark.parametrize("name", ["postroj.py", "build_zipapp.py"])
def test_only_standard_library_imports(snapshot, name):
    modules = imported_modules(snapshot / name)
    assert {"os", "sys"} <= modules, "the walk finds the imports"
    assert sorted(modules - set(sys.stdlib_module_names)) == []


def test_import_does_nothing(snapshot, tmp_path):
    env = dict(os.environ, POSTROJ_HOME=str(tmp_path / "home"), POSTROJ_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", "import postroj; print(postroj.__name__)"], cwd=str(snapshot),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "postroj\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
