"""Issue 21, reports: a report path is written in place when it is not a regular file (a device, a link, a
FIFO) and atomically when it is, checked before anything runs; JUnit is XML whatever a result holds; `report`
reads bounded, regular input; time-outs have a ceiling. Through the real command line (`python3 postroj.py
report ...`) wherever an exit code or a file on disk is the point.

/dev/null, /dev/full and /dev/stdout are the real paths the issue names. As root they are a private /dev:
a tmpfs mounted over /dev in a mount namespace of the test's own (`unshare --mount`), holding the same
device nodes (1:3, 1:7) and link (/proc/self/fd/1). A postroj that replaces /dev/null replaces that one, not
the host's."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path

import pytest

import postroj

POSTROJ = Path(__file__).resolve().parents[2] / "postroj.py"
AS_ROOT = os.geteuid() == 0
# as root, only a process without CAP_DAC_OVERRIDE finds a directory of mode 0555 unwritable
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if AS_ROOT else []
MEMORY_LIMIT = 1 << 30  # a postroj that reads /dev/zero to the end runs out of this, not of the host's memory


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args: str, prefix=(), timeout: float = 30) -> subprocess.CompletedProcess:
    """postroj.py with `args`, stdout and stderr as text (invalid UTF-8 shown as \\x escapes)."""
    try:
        proc = subprocess.run([*prefix, sys.executable, str(POSTROJ), *map(str, args)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail("postroj %s did not end within %s s" % (" ".join(map(str, args)), timeout))
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "backslashreplace"),
                                       proc.stderr.decode("utf-8", "backslashreplace"))


def clean_exit(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Exit `code`; for a failure an `error:` and a `hint:` line holding `words`; never a traceback."""
    assert proc.returncode == code, "exit %d, expected %d\nstdout:\n%s\nstderr:\n%s" % (
        proc.returncode, code, proc.stdout[-3000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    if code not in (0, 1) or words:
        lines = proc.stderr.splitlines()
        assert any(line.startswith("error: ") for line in lines), proc.stderr
        assert any(line.startswith("hint: ") for line in lines), "no hint says how to fix it:\n%s" % proc.stderr
    for word in words:
        assert word in proc.stderr, "%r not in:\n%s" % (word, proc.stderr)


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    """A usage error: exit 2 before anything ran, so nothing on stdout (not even the table of results)."""
    clean_exit(proc, 2, *words)
    assert proc.stdout == "", "stdout is for results, and none may be printed:\n%s" % proc.stdout


def row(image="debian-bookworm", kind="command", target="true", status="pass", duration=0.5, reason="",
        output="", details="") -> dict:
    return {"image": image, "kind": kind, "target": target, "status": status, "duration": duration,
            "reason": reason, "output": output, "details": details}


def write_report(path: Path, *rows: dict, schema=1, **top) -> Path:
    """A report as `probe --json` writes it; JSON escapes (\\ud800, \\uffff) for what UTF-8 cannot hold."""
    path.write_text(json.dumps({"schema": schema, "version": postroj.__version__,
                                "passed": all(r["status"] != "fail" for r in rows), "results": list(rows), **top},
                               ensure_ascii=True))
    return path


@pytest.fixture
def shard(tmp_path) -> Path:
    return write_report(tmp_path / "shard.json", row(), row(kind="unit", target="ssh", status="skip",
                                                             reason="not run"))


def listing(directory: Path) -> "list[str]":
    return sorted(p.name for p in directory.iterdir())


# ==============================================================================
# 1. Report paths that are not regular files are written in place
# ==============================================================================

PRIVATE_DEV = r"""
import json, os, stat, subprocess, sys
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "postroj-test-dev", "/dev"], check=True)
for name, minor in (("null", 3), ("full", 7)):
    os.mknod("/dev/" + name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    os.chmod("/dev/" + name, 0o666)
os.symlink("/proc/self/fd/1", "/dev/stdout")
proc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      timeout=60)
kinds = {}
for name in os.listdir("/dev"):
    mode = os.lstat("/dev/" + name).st_mode
    kinds[name] = ("char" if stat.S_ISCHR(mode) else "link" if stat.S_ISLNK(mode) else
                   "file" if stat.S_ISREG(mode) else "other")
json.dump({"code": proc.returncode, "out": proc.stdout.decode("utf-8", "backslashreplace"),
           "err": proc.stderr.decode("utf-8", "backslashreplace"), "dev": kinds}, sys.stdout)
"""


def report_to_dev(*args: str) -> "tuple[subprocess.CompletedProcess, dict[str, str]]":
    """`postroj report ARGS` where /dev/null, /dev/full and /dev/stdout are as on any host; afterwards, what
    /dev holds: name -> char, link, file or other."""
    argv = [sys.executable, str(POSTROJ), "report", *args]
    if not AS_ROOT:  # the real /dev, which a user cannot replace: safe to try
        before = set(os.listdir("/dev"))
        proc = cli("report", *args)
        kinds = {name: "char" if stat.S_ISCHR(os.lstat("/dev/" + name).st_mode) else
                 "link" if os.path.islink("/dev/" + name) else "file" for name in ("null", "full", "stdout")}
        kinds.update({name: "new" for name in set(os.listdir("/dev")) - before})
        return proc, kinds
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", PRIVATE_DEV,
                           *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=90, preexec_fn=limit_memory)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    data = json.loads(done.stdout)
    return subprocess.CompletedProcess(argv, data["code"], data["out"], data["err"]), data["dev"]


def test_report_to_dev_null_leaves_the_device(shard):
    proc, dev = report_to_dev(str(shard), "--json", "/dev/null", "--junit", "/dev/null")
    clean_exit(proc, 0)
    assert dev == {"null": "char", "full": "char", "stdout": "link"}, "/dev/null replaced, or a file left: %s" % dev


def test_report_to_dev_stdout_goes_through_the_link(shard):
    proc, dev = report_to_dev(str(shard), "--json", "/dev/stdout")
    clean_exit(proc, 0)
    assert dev == {"null": "char", "full": "char", "stdout": "link"}, "/dev/stdout replaced, or a file left: %s" % dev
    report = json.loads(proc.stdout)
    assert [r["status"] for r in report["results"]] == ["pass", "skip"]


def test_report_to_dev_full_is_an_error_naming_the_path(shard):
    proc, dev = report_to_dev(str(shard), "--json", "/dev/full")
    clean_exit(proc, 1, "/dev/full", "No space left on device")
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ") and "/dev/full" in line]
    assert dev == {"null": "char", "full": "char", "stdout": "link"}, "/dev/full replaced, or a file left: %s" % dev


@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_report_through_a_symlink_writes_its_target(shard, tmp_path, option):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report").write_text("the old report\n")
    link = tmp_path / "out" / "report"
    link.parent.mkdir()
    link.symlink_to("../elsewhere/report")
    clean_exit(cli("report", shard, option, link), 0)
    assert link.is_symlink() and os.readlink(link) == "../elsewhere/report", "the link was replaced"
    data = (elsewhere / "report").read_bytes()
    if option == "--json":
        assert [r["status"] for r in json.loads(data)["results"]] == ["pass", "skip"]
    else:
        assert ET.fromstring(data).get("tests") == "2"
    assert listing(link.parent) == ["report"] and listing(elsewhere) == ["report"], "a temporary file is left"


def limit_file_size() -> None:
    """Writes past 64 bytes fail with EFBIG (SIGXFSZ ignored), as a full disk would fail them."""
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_a_regular_report_is_replaced_atomically_with_its_mode(shard, tmp_path, option):
    out = tmp_path / "out"
    out.mkdir()
    report = out / "report"
    report.write_text("the old report\n")
    os.chmod(report, 0o640)
    os.link(report, tmp_path / "reader")  # what a reader has open: the old report, whole
    clean_exit(cli("report", shard, option, report), 0)
    assert (tmp_path / "reader").read_text() == "the old report\n", "written in place, not replaced"
    assert stat.S_IMODE(report.stat().st_mode) == 0o640
    assert len(report.read_bytes()) > 64
    assert listing(out) == ["report"], "a temporary file is left"
    proc = subprocess.run([sys.executable, str(POSTROJ), "report", str(shard), option, str(report)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit_file_size)
    clean_exit(proc, 1, str(report), "File too large")
    assert len(report.read_bytes()) > 64, "a failed write left a cut report"
    assert listing(out) == ["report"], "a failed write left a temporary file"


def test_report_into_a_fifo_is_written_into_it(shard, tmp_path):
    fifo = tmp_path / "reports.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader waits, as `cat FIFO` would
    try:
        clean_exit(cli("report", shard, "--json", fifo), 0)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
        data = os.read(reader, 1 << 20)
    finally:
        os.close(reader)
    assert [r["status"] for r in json.loads(data)["results"]] == ["pass", "skip"]
    assert listing(tmp_path) == ["reports.fifo", "shard.json"], "a temporary file is left"


# ==============================================================================
# 5. Report paths are checked before anything runs
# ==============================================================================


@pytest.fixture
def unwritable(tmp_path):
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)


@pytest.mark.parametrize("option", ["--json", "--junit"])
@pytest.mark.parametrize("where", ["missing directory", "a directory", "unwritable directory"])
def test_report_paths_are_checked_before_the_reports_are_read(shard, tmp_path, unwritable, option, where):
    target = {"missing directory": "/nonexistent/postroj-test/report", "a directory": str(tmp_path / "reports"),
              "unwritable directory": str(unwritable / "report")}[where]
    (tmp_path / "reports").mkdir()
    before = listing(tmp_path)
    proc = cli("report", shard, option, target, prefix=UNPRIVILEGED if where == "unwritable directory" else ())
    refused(proc, "cannot write", target)
    assert listing(tmp_path) == before and listing(tmp_path / "reports") == [] and listing(unwritable) == [], \
        "something was written: %s" % listing(tmp_path)


def test_report_path_is_checked_before_a_bad_report_is_read(tmp_path):
    """The path first: a run that would fail at the end must fail at the start."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    refused(cli("report", bad, "--junit", "/nonexistent/postroj-test/r.xml"), "cannot write")


# ==============================================================================
# 7. JUnit is XML, whatever a result holds
# ==============================================================================

# What XML 1.0 cannot carry, even escaped: controls but tab, newline and return; U+FFFE and U+FFFF; and lone
# surrogates, which UTF-8 cannot carry either.
FORBIDDEN = {"NUL": "\x00", "SOH": "\x01", "ESC": "\x1b", "VT": "\x0b", "FF": "\x0c", "US": "\x1f",
             "U+FFFE": "\ufffe", "U+FFFF": "\uffff", "lone high surrogate": "\ud800",
             "lone low surrogate": "\udfff"}


def xml_forbidden(text: str) -> "list[str]":
    return [c for c in text if c in FORBIDDEN.values() or "\ud800" <= c <= "\udfff"]


def every_field(char: str) -> "list[dict]":
    """A failure, a skip and a pass whose every string holds `char`: so every attribute and text of the
    JUnit file does (testsuite name, testcase classname and name, failure message and text, skipped message,
    system-out)."""
    image = "img%sx" % char
    return [row(image, "command", "echo a%sb" % char, "fail", 1.0, "exit status 1 %s" % char, "out%sput" % char,
                "jour%snal" % char),
            row(image, "unit", "u%snit" % char, "skip", 0.0, "not run %s" % char),
            row(image, "network", "http://localhost/%s" % char, "pass", 0.2, output="ans%swer" % char)]


def strings_of(root: ET.Element) -> "list[str]":
    found = []
    for element in root.iter():
        found += list(element.attrib.values()) + [element.text or "", element.tail or ""]
    return found


@pytest.mark.parametrize("char", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_junit_is_well_formed_xml_whatever_a_result_holds(tmp_path, char):
    source = write_report(tmp_path / "in.json", *every_field(char))
    junit, merged = tmp_path / "out.xml", tmp_path / "out.json"
    proc = cli("report", source, "--junit", junit, "--json", merged)
    clean_exit(proc, 1)  # one result failed: `report` exits as probe would
    data = junit.read_bytes()
    parser = xml.parsers.expat.ParserCreate()
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        pytest.fail("expat rejects the JUnit file: %s\n%r" % (exc, data[:2000]))
    root = ET.fromstring(data)
    assert not [s for s in strings_of(root) if xml_forbidden(s)]
    suite = root.find("testsuite")
    assert suite.get("name") in ("img?x", "img\ufffdx"), "the image name is not kept around the character"
    assert [c.get("classname") for c in suite.findall("testcase")] == ["postroj." + suite.get("name")] * 3
    failure = suite.find("testcase/failure")
    assert failure.get("message").startswith("exit status 1 ") and "jour" in failure.text
    assert suite.find("testcase/skipped").get("message").startswith("not run ")
    json.loads(merged.read_bytes().decode("utf-8"))  # strict UTF-8: no surrogate was written as it was
    assert "FAIL" in proc.stdout and "SKIP" in proc.stdout, "the table on stdout"


def test_a_lone_surrogate_does_not_crash_the_table_json_or_junit(tmp_path):
    """The table on stdout, --json to stdout and --junit, in one run: each alone crashed with UnicodeEncodeError."""
    source = write_report(tmp_path / "in.json", *every_field("\ud800"))
    proc = subprocess.run([sys.executable, str(POSTROJ), "report", str(source), "--json", "-", "--junit",
                           str(tmp_path / "out.xml")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 1 and "Traceback" not in err, err
    out = proc.stdout.decode("utf-8")  # strict: what postroj printed is UTF-8
    report = json.loads(out)
    assert [r["status"] for r in report["results"]] == ["fail", "skip", "pass"]
    assert report["results"][0]["image"] in ("img?x", "img\ufffdx")
    xml.parsers.expat.ParserCreate().Parse((tmp_path / "out.xml").read_bytes(), True)


# ==============================================================================
# 8. `report` reads bounded, regular files of one schema, each result once
# ==============================================================================


def test_report_of_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "shard.json"
    os.mkfifo(fifo)
    refused(cli("report", fifo, timeout=20), "not a regular file")


def test_report_of_dev_zero_is_refused_at_once():
    refused(cli("report", "/dev/zero", timeout=20), "not a regular file")


def test_report_larger_than_64_mib_is_refused(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:  # valid JSON: only its size is wrong
        handle.write(b'{"schema": 1, "results": [], "padding": "')
        handle.write(b"x" * (64 << 20))
        handle.write(b'"}')
    try:
        refused(cli("report", path), "too large")
    finally:
        path.unlink()


@pytest.mark.parametrize("depth", [100000])
def test_report_nested_too_deeply_is_refused(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text('{"schema": 1, "results": ' + "[" * depth + "]" * depth + "}")
    refused(cli("report", path), "nested too deeply")


def test_report_of_another_schema_is_refused(tmp_path):
    refused(cli("report", write_report(tmp_path / "future.json", row(), schema=99)), "schema 99")


@pytest.mark.parametrize("duration", ["NaN", "Infinity", "-Infinity", "-1", "-0.5", "1e999"])
def test_report_with_an_impossible_duration_is_refused(tmp_path, duration):
    path = tmp_path / "shard.json"
    path.write_text(json.dumps({"schema": 1, "results": [row(duration=12345.5)]}).replace("12345.5", duration))
    assert duration in path.read_text()
    refused(cli("report", path), "duration")


def test_the_same_report_given_twice_is_refused(shard):
    refused(cli("report", shard, shard), "twice")


def test_the_same_file_under_two_names_is_refused(shard, tmp_path):
    os.link(shard, tmp_path / "again.json")
    refused(cli("report", shard, tmp_path / "again.json"), "twice")


def test_a_result_in_two_reports_is_refused(tmp_path):
    first = write_report(tmp_path / "shard-1.json", row("debian-bookworm"), row("debian-bullseye"))
    second = write_report(tmp_path / "shard-2.json", row("debian-bullseye"))  # shard 1 again, partly
    refused(cli("report", first, second), "twice")


# ==============================================================================
# 9. Time-outs have a ceiling: 7 days
# ==============================================================================

CEILING = 604800


@pytest.mark.parametrize("argv, option", [
    (["probe", "--command", "true", "--timeout"], "--timeout"),
    (["probe", "--command", "true", "--boot-timeout"], "--boot-timeout"),
    (["probe", "--command", "true", "--install-timeout"], "--install-timeout"),
    (["container", "debian-bookworm", "--boot-timeout"], "--boot-timeout"),
])
def test_time_outs_up_to_seven_days_and_no_more(argv, option, usage_error):
    args = postroj.parse_command_line(argv + [str(CEILING)])
    assert getattr(args, option[2:].replace("-", "_")) == CEILING
    for value in ("604800.5", "604801", "1e10", "1e308"):
        error = usage_error(postroj.parse_command_line, argv + [value])
        assert option in error.message and "at most %d" % CEILING in error.message, error.message


@pytest.mark.parametrize("option, unit, most", [("--layer-days", "days", 3650), ("--layer-gb", "GB", 1 << 20)])
def test_gc_bounds_are_named_in_their_own_unit(option, unit, most, usage_error):
    assert getattr(postroj.parse_command_line(["gc", option, str(most)]), option[2:].replace("-", "_")) == most
    error = usage_error(postroj.parse_command_line, ["gc", option, str(most + 1)])
    assert "at most %d %s" % (most, unit) in error.message and "seconds" not in error.message, error.message
    error = usage_error(postroj.parse_command_line, ["gc", option, "0"])
    assert "positive number of %s" % unit in error.message, error.message


# ==============================================================================
# 3. No tree deletion crosses a mount point or follows a link
# ==============================================================================

REMOVE_TREE = r"""
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import postroj
base = Path(sys.argv[2])
shared, tree = base / "host-shm", base / "tree"
for d in (shared, tree / "rootfs" / "dev" / "shm", tree / "rootfs" / "proc", tree / "outside"):
    d.mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "canary", str(shared)], check=True)
(shared / "canary").write_text("the host's\n")
subprocess.run(["mount", "--bind", str(shared), str(tree / "rootfs" / "dev" / "shm")], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "inner", str(tree / "rootfs" / "proc")], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "deeper", str(tree / "rootfs" / "proc" / ".")], check=True)
(base / "host-file").write_text("host\n")
(tree / "rootfs" / "link-to-host").symlink_to(base / "host-file")
(tree / "rootfs" / "dir-link").symlink_to(base)
mode = sys.argv[3]
error = ""
if mode == "locked":  # mounts inherited into a user namespace are locked: they cannot be unmounted there
    args = ["unshare", "--user", "--map-root-user", "--mount", "--", sys.executable, "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import postroj; from pathlib import Path\n"
            "try:\n    postroj.remove_tree(Path(sys.argv[2]))\nexcept postroj.PostrojError as e:\n"
            "    print(e.args[0])", sys.argv[1], str(tree)]
    error = subprocess.run(args, stdout=subprocess.PIPE, check=True, text=True).stdout
else:
    postroj.remove_tree(tree)
mounted = [line.split()[4] for line in open("/proc/self/mountinfo") if line.split()[4].startswith(str(tree))]
json.dump({"canary": (shared / "canary").read_text() if (shared / "canary").exists() else None,
           "host": (base / "host-file").read_text(), "tree": tree.exists(), "error": error, "mounted": mounted,
           "left": sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) if tree.exists() else []},
          sys.stdout)
"""


def remove_tree_in_namespace(tmp_path: Path, mode: str) -> dict:
    """remove_tree on a root with proc and a bind of a canary tmpfs (as a bootstrap leaves them), links to
    host files, in a mount namespace of the test's own; what is left."""
    if not AS_ROOT:
        pytest.skip("mounts need root")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c",
                           REMOVE_TREE, str(POSTROJ.parent), str(tmp_path), mode],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return json.loads(done.stdout)


def test_remove_tree_unmounts_deepest_first_and_never_deletes_below_a_mount(tmp_path):
    left = remove_tree_in_namespace(tmp_path, "unmount")
    assert left["canary"] == "the host's\n", "a file in a tmpfs bound into the tree was deleted"
    assert left["host"] == "host\n"
    assert left["mounted"] == [] and not left["tree"], left


def test_a_mount_that_cannot_be_unmounted_keeps_its_content_and_is_named(tmp_path):
    left = remove_tree_in_namespace(tmp_path, "locked")
    assert left["canary"] == "the host's\n", "a file below a mount that stayed was deleted"
    assert left["host"] == "host\n"
    assert "another file system is mounted there" in left["error"] and "rootfs/dev/shm" in left["error"], left
    assert "rootfs/link-to-host" not in left["left"] and "outside" not in left["left"], left


def test_login_shell_reads_the_images_passwd_and_never_a_host_device(tmp_path):
    """root's shell comes from the image's passwd; a passwd that is a link out of the image (to a device the
    host would read without end) gives /bin/sh instead, at once."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert postroj.login_shell(root) == "/bin/bash"
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/dev/zero")
    assert postroj.login_shell(root) == "/bin/sh"
