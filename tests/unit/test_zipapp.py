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
        assert b"postroj.exit_now(postroj.main())" in archive.read("__main__.py")


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


# --- the compiled code the archive keeps in POSTROJ_CACHE/code ----------------------


def cached_code(cache: Path) -> "list[Path]":
    return sorted((cache / "code").glob("postroj.*.pyc"))


def compiled_from(source: str, filename: str) -> bytes:
    """What __main__.py writes: the interpreter's magic number, then the marshalled module."""
    import importlib.util
    import marshal
    return importlib.util.MAGIC_NUMBER + marshal.dumps(compile(source, filename, "exec", dont_inherit=True))


def test_first_run_compiles_and_keeps_the_code(snapshot, built, tmp_path):
    first = run_pyz(sys.executable, built, tmp_path, "--version")
    assert (first.returncode, first.stderr) == (0, "")
    [pyc] = cached_code(tmp_path / "cache")
    assert pyc.name.endswith(".%s.pyc" % sys.implementation.cache_tag)
    assert (pyc.stat().st_mode & 0o777, pyc.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert sorted(p.name for p in pyc.parent.iterdir()) == [pyc.name], "no temporary file is left"
    assert not (tmp_path / "home").exists()


def test_later_runs_load_the_kept_code(snapshot, built, tmp_path):
    run_pyz(sys.executable, built, tmp_path, "--version")
    [pyc] = cached_code(tmp_path / "cache")
    # the kept code, not the archive's source, decides what runs: give it another version number
    source = (snapshot / "postroj.py").read_text().replace(version_of(snapshot), "9.9.9-from-the-cache")
    pyc.write_bytes(compiled_from(source, str(built / "postroj.py")))
    again = run_pyz(sys.executable, built, tmp_path, "--version")
    assert (again.returncode, again.stdout, again.stderr) == (0, "postroj 9.9.9-from-the-cache\n", "")


@pytest.mark.parametrize("spoil", ["world-writable directory", "foreign directory", "foreign file",
                                   "group-writable file", "symlink", "stale magic", "truncated"])
def test_code_that_is_not_ours_or_is_spoilt_is_not_loaded(snapshot, built, tmp_path, spoil):
    if os.geteuid() != 0 and spoil.startswith("foreign"):
        pytest.skip("giving a file to another user needs root")
    run_pyz(sys.executable, built, tmp_path, "--version")
    [pyc] = cached_code(tmp_path / "cache")
    source = (snapshot / "postroj.py").read_text().replace(version_of(snapshot), "6.6.6-planted")
    planted = compiled_from(source, str(built / "postroj.py"))
    pyc.write_bytes(planted)
    if spoil == "world-writable directory":
        pyc.parent.chmod(0o777)
    elif spoil == "foreign directory":
        os.chown(pyc.parent, 65534, 65534)
    elif spoil == "foreign file":
        os.chown(pyc, 65534, 65534)
    elif spoil == "group-writable file":
        pyc.chmod(0o620)
    elif spoil == "symlink":
        elsewhere = tmp_path / "elsewhere.pyc"
        pyc.rename(elsewhere)
        pyc.symlink_to(elsewhere)
    elif spoil == "stale magic":
        pyc.write_bytes(b"\0\0\0\0" + planted[4:])
    elif spoil == "truncated":
        pyc.write_bytes(planted[:100])
    proc = run_pyz(sys.executable, built, tmp_path, "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "postroj %s\n" % version_of(snapshot), "")


def test_spoilt_code_is_replaced_and_older_builds_code_removed(snapshot, built, tmp_path):
    code = tmp_path / "cache" / "code"
    code.mkdir(parents=True, mode=0o700)
    tag = sys.implementation.cache_tag
    older = code / ("postroj.0123456789abcdef.%s.pyc" % tag)
    other_tag = "cpython-39" if tag == "cpython-38" else "cpython-38"  # another interpreter than this one
    other_python = code / ("postroj.0123456789abcdef.%s.pyc" % other_tag)
    older.write_bytes(b"old")
    other_python.write_bytes(b"old")
    run_pyz(sys.executable, built, tmp_path, "--version")
    [pyc] = [p for p in cached_code(tmp_path / "cache") if p != other_python]
    assert not older.exists() and other_python.exists(), "only this interpreter's older code goes"
    pyc.write_bytes(b"junk")
    run_pyz(sys.executable, built, tmp_path, "--version")
    assert pyc.read_bytes().startswith(compiled_from("", "x")[:4]), "rewritten after a failed load"


def test_no_writable_cache_still_runs(built, tmp_path):
    env = dict(os.environ, POSTROJ_HOME=str(tmp_path / "home"), POSTROJ_CACHE="/proc/postroj-cannot-write-here")
    proc = subprocess.run([sys.executable, str(built), "--version"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("postroj ")


def test_tracebacks_show_the_archive_source(snapshot, tmp_path):
    """Loaded from the cache or compiled, the module's frames name postroj.py in the archive, and --debug's
    traceback quotes its lines."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copyfile(snapshot / "build_zipapp.py", tree / "build_zipapp.py")
    (tree / "postroj.py").write_text((snapshot / "postroj.py").read_text()
                                     + "\n\ndef cmd_list_images(args, settings):\n    die('planted failure')\n")
    pyz = build(sys.executable, tree, tmp_path / "crash.pyz")
    for _ in ("compiled", "cached"):
        proc = run_pyz(sys.executable, pyz, tmp_path, "--debug", "list-images")
        assert proc.returncode == 1, proc.stderr
        assert 'File "%s", line' % (pyz / "postroj.py") in proc.stderr
        assert "    die('planted failure')" in proc.stderr
        assert "error: planted failure" in proc.stderr
    assert len(cached_code(tmp_path / "cache")) == 1


def test_optimized_and_plain_runs_keep_their_own_code(built, tmp_path):
    """Code compiled under -O has no asserts: a plain run must not load it, nor the other way round."""
    for flags in ([], ["-O"], []):
        env = dict(os.environ, POSTROJ_HOME=str(tmp_path / "home"), POSTROJ_CACHE=str(tmp_path / "cache"))
        proc = subprocess.run([sys.executable, *flags, str(built), "--version"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, "")
    tag = sys.implementation.cache_tag
    assert sorted(p.name.split(".", 2)[2] for p in cached_code(tmp_path / "cache")) == sorted(
        ["%s.pyc" % tag, "%s.opt-1.pyc" % tag])
