"""Issue 33, what needs no container: report paths checked before anything is read (a socket, an empty path, one
path for both reports, a dangling link written through, a FIFO nobody reads), report numbers too large for a float,
`report DIR`, machine names that are runtime files of another machine, and dependency layers whose layer.json is
not a plain JSON file (`"size": Infinity`, a FIFO, a link) as list-images reads them. Through the real command line
(`python3 postroj.py ...`): an exit code, a hang or a file on disk is the point. The same through containers is in
tests/integration/test_host_boundary_state.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import postroj

POSTROJ = Path(__file__).resolve().parents[2] / "postroj.py"


def cli(*args: str) -> subprocess.CompletedProcess:
    """postroj.main(args) in this process (POSTROJ_HOME and POSTROJ_CACHE are the test's own): its exit code,
    stdout and stderr. An exception that escapes main() is the traceback a user would see."""
    capture = CAPTURE[0]
    try:
        code = postroj.main([str(a) for a in args])
    except BaseException as exc:
        out, err = capture.readouterr()
        pytest.fail("postroj %s raised %s: %s instead of printing error: and hint:\nstderr: %s" % (
            " ".join(map(str, args)), type(exc).__name__, exc, err))
    out, err = capture.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


CAPTURE: list = []


@pytest.fixture(autouse=True)
def capture(capsys):
    CAPTURE[:] = [capsys]
    yield
    CAPTURE[:] = []


def cli_bounded(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """postroj.py with `args` in a process of its own, for what may block: never a hang."""
    try:
        proc = subprocess.run([sys.executable, str(POSTROJ), *map(str, args)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("postroj %s did not end within %s s" % (" ".join(map(str, args)), timeout))
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "backslashreplace"),
                                       proc.stderr.decode("utf-8", "backslashreplace"))


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    """A usage error (exit 2) with `error:` and `hint:` lines holding `words`; no traceback, nothing on stdout."""
    assert proc.returncode == 2, "exit %d, expected 2\nstdout:\n%s\nstderr:\n%s" % (
        proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert any(line.startswith("error: ") for line in lines), proc.stderr
    assert any(line.startswith("hint: ") for line in lines), "no hint says how to fix it:\n%s" % proc.stderr
    for word in words:
        assert word in proc.stderr, "%r not in:\n%s" % (word, proc.stderr)
    assert proc.stdout == "", "nothing may run before the refusal:\n%s" % proc.stdout


def row(**fields) -> dict:
    found = {"image": "debian-bookworm", "kind": "command", "target": "true", "status": "pass", "duration": 0.5,
             "reason": "", "output": "", "details": ""}
    found.update(fields)
    return found


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "shard.json"
    path.write_text(json.dumps({"schema": 1, "version": postroj.__version__, "passed": True, "results": [row()]}))
    return path


def listing(directory: Path) -> "list[str]":
    return sorted(p.name for p in directory.iterdir())


# ==============================================================================
# Item 16: report paths, checked before anything is read
# ==============================================================================


@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_a_report_to_a_socket_is_refused_before_anything_runs(shard, tmp_path, option):
    """A socket cannot be opened for writing (ENXIO): known before the run, not after it."""
    path = tmp_path / "r.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        refused(cli("report", shard, option, path), str(path))
        assert stat.S_ISSOCK(os.lstat(path).st_mode), "the socket was replaced"
    finally:
        server.close()
    assert listing(tmp_path) == ["r.sock", "shard.json"], "something was written beside it"


@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_an_empty_report_path_is_refused(shard, tmp_path, option):
    """`--json ""` (an unset variable in a CI script) wrote nothing and said nothing."""
    refused(cli("report", shard, option, ""), option)
    assert listing(tmp_path) == ["shard.json"]


def test_one_path_for_both_reports_is_refused(shard, tmp_path):
    """--json X --junit X: one report would silently overwrite the other."""
    target = tmp_path / "report"
    refused(cli("report", shard, "--json", target, "--junit", target), str(target))
    assert not os.path.lexists(str(target)), "a report was written"


@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_a_dangling_link_is_written_through_as_a_redirection_would(shard, tmp_path, option):
    """link.json -> missing: accepted, and the report is written to `missing`, as `> link.json` would."""
    out = tmp_path / "out"
    out.mkdir()
    link = out / "link.json"
    link.symlink_to("missing")
    proc = cli("report", shard, option, link)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert link.is_symlink() and os.readlink(str(link)) == "missing", "the link was replaced"
    data = (out / "missing").read_bytes()
    if option == "--json":
        assert [r["status"] for r in json.loads(data)["results"]] == ["pass"]
    else:
        assert data.startswith(b"<?xml") and b"<testsuites" in data
    assert listing(out) == ["link.json", "missing"], "a temporary file is left"


def test_a_fifo_without_a_reader_is_not_waited_for(shard, tmp_path):
    """Nobody reads the FIFO: postroj says so instead of blocking in open() for ever."""
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    proc = cli_bounded("report", shard, "--json", fifo)
    assert time.monotonic() - started < 15
    assert proc.returncode in (1, 2), "exit %d:\n%s" % (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and str(fifo) in errors[0] and "reads" in errors[0], proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"


# ==============================================================================
# Items 13 and 17: what `report` reads
# ==============================================================================

HUGE = "1" + "0" * 400  # an integer JSON holds and no float does


@pytest.mark.parametrize("field", ["duration", "wall"])
def test_a_report_number_too_large_for_a_float_is_refused(tmp_path, field):
    """(1e400 is infinity to JSON, refused as such since issue 21: test_host_safety.py.)"""
    path = tmp_path / "shard.json"
    top = {"schema": 1, "results": [row(duration=12345.5)]}
    if field == "wall":
        top["wall"] = 54321.5
    text = json.dumps(top).replace("12345.5" if field == "duration" else "54321.5", HUGE)
    path.write_text(text)
    refused(cli("report", path), field)


def test_report_of_a_directory_says_it_is_one(tmp_path):
    directory = tmp_path / "reports"
    directory.mkdir()
    proc = cli("report", directory)
    refused(proc, str(directory), "directory")
    assert "POSTROJ_HOME" not in proc.stderr, \
        "the state directories have nothing to do with it:\n%s" % proc.stderr


# ==============================================================================
# Item 17: a machine name that is another machine's runtime file
# ==============================================================================


@pytest.mark.parametrize("suffix", [".json", ".lock", ".tmp", ".json.tmp"])
def test_a_machine_name_ending_like_a_runtime_file_is_refused(tmp_path, suffix):
    name = "postroj-x" + suffix
    refused(cli("container", "debian-bookworm", "--machine", name, "--", "true"), name)
    assert not (tmp_path / "home").exists() or "run" not in listing(tmp_path / "home")


# ==============================================================================
# Items 13, 14, 15: layer.json that is not a plain JSON file, as list-images reads it
# ==============================================================================

GOOD_KEY = "0" * 32
BAD_KEY = "f" * 32


def layer_json(**fields) -> str:
    data = {"image": "debian-bookworm", "version": "debian-bookworm@1", "root": "/nonexistent", "packages":
            ["hello=2.10-3"], "recommends": False, "before": {}, "accounts": [], "made": "2026-01-01T00:00:00Z",
            "seconds": 1.0, "size": 4096}
    data.update(fields)
    return json.dumps(data)


@pytest.fixture
def layers(tmp_path) -> Path:
    """POSTROJ_HOME/layers with one whole layer (GOOD_KEY) beside the one each test breaks (BAD_KEY)."""
    directory = tmp_path / "home" / "layers"
    for key in (GOOD_KEY, BAD_KEY):
        (directory / key / "tree").mkdir(parents=True)
    (directory / GOOD_KEY / "layer.json").write_text(layer_json())
    return directory


def listed_layers(bounded: bool = False) -> "list[str]":
    """The layers list-images --json shows (in a process of its own with `bounded`); plain list-images works."""
    run = cli_bounded if bounded else cli
    proc = run("list-images", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    text = run("list-images")
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr[-3000:]
    return sorted(layer["key"] for layer in json.loads(proc.stdout)["layers"])


def test_a_layer_of_infinite_size_is_broken(layers):
    (layers / BAD_KEY / "layer.json").write_text(layer_json(size=12345).replace("12345", "Infinity"))
    assert listed_layers() == [GOOD_KEY]


def test_a_layer_json_that_is_a_fifo_is_broken_and_never_waited_for(layers):
    os.mkfifo(layers / BAD_KEY / "layer.json")
    assert listed_layers(bounded=True) == [GOOD_KEY]


def test_a_layer_json_that_is_a_link_is_broken_and_its_target_untouched(layers, tmp_path):
    """A link, even to a whole layer's JSON, is not a layer stamp postroj wrote."""
    target = tmp_path / "elsewhere.json"
    target.write_text(layer_json())
    old = time.time() - 30 * 86400
    os.utime(str(target), (old, old))
    (layers / BAD_KEY / "layer.json").symlink_to(target)
    assert listed_layers() == [GOOD_KEY]
    assert target.stat().st_mtime == old and target.read_text() == layer_json()
