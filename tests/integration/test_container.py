"""`postroj container`: boot, run, stream, exit status, and nothing left behind, whatever happens."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sys
import time

import pytest

import rig
from rig import wait_for


def test_os_release(images):
    proc = images("container", "debian-bookworm", "--", "cat", "/etc/os-release", check=0)
    assert 'VERSION_ID="12"' in proc.stdout and "bookworm" in proc.stdout


def test_streams_and_exit_status(images):
    proc = images("container", "debian-bookworm", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert proc.returncode == 7
    assert proc.stdout == "out\n"
    assert "err\n" in proc.stderr and "out" not in proc.stderr


def test_stdin_reaches_the_command(images):
    proc = images("container", "debian-bookworm", "--", "cat", input="hi\nthere\n", check=0)
    assert proc.stdout == "hi\nthere\n"


def test_arguments_arrive_exactly(images):
    args = ["a b", "$HOME", "'quoted'", "*", ""]
    proc = images("container", "debian-bookworm", "--", "printf", "[%s]\\n", *args, check=0)
    assert proc.stdout.splitlines() == ["[%s]" % a for a in args]


def test_environment_and_working_directory(images):
    proc = images("container", "debian-bookworm", "--setenv", "GREETING=hello world", "--", "sh", "-c",
                  'echo "$GREETING"; pwd; echo "$PATH"', check=0)
    greeting, cwd, path = proc.stdout.splitlines()
    assert greeting == "hello world" and cwd == "/" and "/usr/bin" in path
    assert "POSTROJ_HOME" not in images("container", "debian-bookworm", "--", "env", check=0).stdout


def test_missing_command_exits_127(images):
    proc = images("container", "debian-bookworm", "--", "no-such-command")
    assert proc.returncode == 127
    assert "no-such-command" in proc.stderr


def test_no_command_without_terminal_shows_the_system(images):
    proc = images("container", "debian-bookworm", check=0)
    assert "systemd:" in proc.stdout and "running" in proc.stdout
    assert "Debian GNU/Linux 12" in proc.stdout
    assert "postroj-debian-bookworm" in proc.stdout


def test_writes_never_reach_the_image(images):
    images("container", "debian-bookworm", "--", "sh", "-c", "echo x > /etc/postroj-was-here; rm /bin/ls", check=0)
    root = os.path.realpath(images.home / "images" / "debian-bookworm")
    assert not os.path.exists(os.path.join(root, "etc", "postroj-was-here"))
    assert os.path.exists(os.path.join(root, "bin", "ls")) or os.path.exists(os.path.join(root, "usr", "bin", "ls"))
    proc = images("container", "debian-bookworm", "--", "test", "-e", "/etc/postroj-was-here")
    assert proc.returncode == 1


def test_two_containers_of_one_image_at_once(images):
    procs = [images.popen("container", "debian-bookworm", "--", "sh", "-c", "hostname; sleep 2") for _ in range(2)]
    deadline = time.monotonic() + 30
    machines = []
    while time.monotonic() < deadline and len(machines) < 2:
        machines = json.loads(images("machines", "--json", check=0).stdout)["machines"]
        time.sleep(0.1)
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    names = sorted(out.strip() for out, _ in outputs)
    assert names == ["postroj-debian-bookworm", "postroj-debian-bookworm-2"]
    assert sorted(m["name"] for m in machines) == names
    assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []


def test_containers_at_once_have_cgroups_of_their_own(images):
    """Without machined, nspawn --keep-unit would put every container's systemd into one cgroup tree, where
    each manages (and kills) the other's units: each gets a cgroup of its own, removed when it ends."""
    procs = [images.popen("container", image, "--", "sleep", "4") for image in ("debian-bookworm", "debian-bullseye")]
    try:
        deadline = time.monotonic() + 30
        machines = []
        while time.monotonic() < deadline and len(machines) < 2:
            machines = [m for m in json.loads(images("machines", "--json", check=0).stdout)["machines"] if m["leader"]]
            time.sleep(0.1)
        assert len(machines) == 2, machines
        tops = set()
        for machine in machines:
            assert machine["cgroups"] and all(os.path.isdir(c) for c in machine["cgroups"]), machine
            line = [l for l in open("/proc/%d/cgroup" % machine["leader"]).read().splitlines() if l.startswith("0::")]
            top = line[0][3:].split("/payload")[0]
            assert os.path.basename(top).startswith("postroj.%s." % machine["name"]), line
            assert any(c.endswith(top) for c in machine["cgroups"]), (top, machine["cgroups"])
            tops.add(top)
        assert len(tops) == 2
    finally:
        outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not [c for m in machines for c in m["cgroups"] if os.path.exists(c)], "cgroups outlive the container"


def test_bind_and_private_network(images, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    proc = images("container", "debian-bookworm", "--bind", "%s:/mnt/shared" % shared, "--private-network", "--",
                  "sh", "-c", "cat /mnt/shared/in.txt; echo back > /mnt/shared/out.txt; cat /proc/net/dev", check=0)
    assert "from the host" in proc.stdout
    assert (shared / "out.txt").read_text() == "back\n"
    interfaces = [line.split(":")[0].strip() for line in proc.stdout.splitlines() if ":" in line]
    assert interfaces == ["lo"], proc.stdout
    proc = images("container", "debian-bookworm", "--bind-ro", "%s:/mnt/ro" % shared, "--", "sh", "-c",
                  "touch /mnt/ro/x")
    assert proc.returncode != 0 and not (shared / "x").exists()


def test_resolv_conf_is_a_copy_not_a_bind_mount(images):
    proc = images("container", "debian-bookworm", "--", "sh", "-c",
                  "grep -c ' /etc/resolv.conf ' /proc/self/mountinfo; test -f /etc/resolv.conf && echo file")
    assert proc.stdout.split() == ["0", "file"]


def test_keep_and_stop(images):
    proc = images("container", "debian-bookworm", "--keep", "--machine", "kept-one", "--", "true", check=0)
    assert "postroj stop kept-one" in proc.stderr
    try:
        listing = json.loads(images("machines", "--json", check=0).stdout)
        machines = listing["machines"]
        assert [m["name"] for m in machines] == ["kept-one"]
        assert rig.json_fields(listing) == rig.documented_fields("machines --json"), "README's JSON section"
        leader = machines[0]["leader"]
        assert os.path.exists("/proc/%d" % leader)
        # gc does not end a kept container
        images("gc", check=0)
        assert [m["name"] for m in json.loads(images("machines", "--json", check=0).stdout)["machines"]] == ["kept-one"]
        taken = images("container", "debian-bookworm", "--machine", "kept-one", "--", "true")
        assert taken.returncode == 2 and "already taken" in taken.stderr
    finally:
        images("stop", "kept-one", check=0)
    assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []
    assert not os.path.exists("/proc/%d" % leader) or "systemd" not in open("/proc/%d/comm" % leader).read()


def test_bad_input_changes_nothing(images, tmp_path):
    proc = images("container", "debian-bookworm", "--bind", str(tmp_path / "missing"), "--", "true")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = images("container", "debian-trixie", "--", "true")
    assert proc.returncode == 1 and "postroj image debian-trixie" in proc.stderr
    proc = images("container", "debian-bookworm", "--machine", "Bad/Name", "--", "true")
    assert proc.returncode == 2 and "invalid machine name" in proc.stderr
    assert not (images.home / "run").exists() or not list((images.home / "run").iterdir())


def test_interactive_shell_under_a_pty(images):
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, images.argv("container", "debian-bookworm"), images.env)
    output = b""
    try:
        deadline = time.monotonic() + 60
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
            if not sent and (b"#" in output or b"$" in output):
                os.write(fd, b"echo marker-$((6*7)); exit 3\n")
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"marker-42" in output, output[-2000:]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3, status  # os.waitstatus_to_exitcode is 3.9+






@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
@pytest.mark.parametrize("phase", ["boot", "command"])
def test_signals_leave_nothing_behind(images, signum, code, phase):
    proc = images.popen("container", "debian-bookworm", "--", "sh", "-c", "echo started; sleep 60")
    if phase == "boot":
        wait_for(lambda: rig.nspawn_of(images.home))
    else:
        assert proc.stdout.readline() == "started\n"
    proc.send_signal(signum)
    proc.communicate(timeout=30)
    assert proc.returncode == code
    wait_for(lambda: not rig.processes_mentioning(str(images.home)), timeout=20)
    assert not rig.mounts_mentioning(str(images.home))
    if signum == signal.SIGKILL:
        # postroj could not clean its runtime state; gc does, and finds nothing alive
        assert json.loads(images("machines", "--json", check=0).stdout)["machines"] == []
        images("gc", check=0)
    assert not list((images.home / "run").iterdir())


def test_killing_the_leader_ends_the_run(images):
    proc = images.popen("container", "debian-bookworm", "--", "sh", "-c", "echo started; sleep 60")
    assert proc.stdout.readline() == "started\n"
    (machine,) = json.loads(images("machines", "--json", check=0).stdout)["machines"]
    os.kill(machine["leader"], signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    wait_for(lambda: not rig.processes_mentioning(str(images.home)), timeout=20)
    assert not list((images.home / "run").iterdir())


HANGING_UNIT = """[Unit]
Description=Postroj hangs the boot

[Service]
Type=oneshot
ExecStart=/bin/sleep 600
"""


def unit_at_boot(tmp_path, name: str, text: str) -> "list[str]":
    """Options that make the container start the unit `name` at boot: the file, and a wants link to it."""
    (tmp_path / name).write_text(text)
    wants = tmp_path / "wants"
    wants.mkdir()
    os.symlink("/etc/systemd/system/%s" % name, wants / name)
    return ["--bind-ro", "%s:/etc/systemd/system/%s" % (tmp_path / name, name),
            "--bind-ro", "%s:/etc/systemd/system/multi-user.target.wants" % wants]


def test_boot_timeout_shows_the_last_console_lines(images, tmp_path):
    options = unit_at_boot(tmp_path, "postroj-hangs.service", HANGING_UNIT)
    proc = images("container", "debian-bookworm", "--boot-timeout", "3", *options, "--", "true")
    assert proc.returncode == 1
    assert "did not finish booting within 3.0 s" in proc.stderr
    assert "last console lines" in proc.stderr and "Postroj hangs the boot" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


FAILING_UNIT = """[Unit]
Description=a unit that fails at boot, for postroj's tests

[Service]
Type=oneshot
ExecStart=/bin/false
"""


def test_degraded_counts_as_up_and_names_the_failed_units(images, tmp_path):
    options = unit_at_boot(tmp_path, "postroj-fails.service", FAILING_UNIT)
    proc = images("container", "debian-bookworm", *options, "--", "systemctl", "is-system-running")
    assert proc.stdout.strip() == "degraded"
    assert "degraded; failed units: postroj-fails.service" in proc.stderr


def test_pull_acquires_a_missing_image(postroj, registries_conf):
    postroj.extra_env["CONTAINERS_REGISTRIES_CONF"] = str(registries_conf)
    proc = postroj("container", "debian-bullseye", "--", "true")
    assert proc.returncode == 1 and "postroj image debian-bullseye" in proc.stderr
    proc = postroj("container", "debian-11", "--pull", "--", "cat", "/etc/debian_version", check=0, timeout=900)
    assert proc.stdout.startswith("11.")


def test_the_container_cannot_see_postroj_home(images):
    proc = images("container", "debian-bookworm", "--", "sh", "-c",
                  'test -e "$1" && echo visible || echo hidden', "sh", str(images.home))
    assert proc.stdout.strip() == "hidden"


def test_the_payloads_flags_are_not_postrojs(images):
    """`-- grep -v --debug`: grep's flags, which must not turn on postroj's logging or tracebacks (issue 15)."""
    proc = images("container", "debian-bookworm", "--", "grep", "-v", "--debug", "x", "/nonexistent", timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("grep: "), proc.stderr
    assert "postroj:" not in proc.stderr and "+ systemd-nspawn" not in proc.stderr, proc.stderr
    # postroj's own -v, before the command, still counts
    proc = images("-v", "container", "debian-bookworm", "--", "true", timeout=120)
    assert proc.returncode == 0 and "postroj: container postroj-debian-bookworm" in proc.stderr, proc.stderr


def test_localhost_and_the_machine_name_resolve_as_on_an_installed_system(images):
    """Minimal images have no nss-myhostname: /etc/hosts says what an installer writes, with each container's
    machine name (haproxy's `localhost`, sudo's own host name failed without it)."""
    hosts = (images.home / "images" / "debian-bookworm" / "etc" / "hosts").read_text()
    assert hosts.startswith("127.0.0.1\tlocalhost\n") and "127.0.1.1" not in hosts, hosts
    proc = images("container", "debian-bookworm", "--", "sh", "-c",
                  "getent ahostsv4 localhost | head -1; hostname; getent hosts \"$(hostname)\"", check=0)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[0] == "127.0.0.1", proc.stdout
    assert lines[1].startswith("postroj-debian-bookworm"), proc.stdout
    assert lines[2].split() == ["127.0.1.1", lines[1]], proc.stdout


def test_logind_runs_as_on_a_machine_and_a_users_session_ends_with_it(images):
    """Debian's and Ubuntu's images keep systemd-logind (it was masked in every image): loginctl answers, and a
    user who logged in with su can be deleted right after, as autopkgtest's tests do (issue 26)."""
    proc = images("container", "debian-bookworm", "--", "sh", "-c",
                  "systemctl is-system-running --wait; systemctl is-active systemd-logind; "
                  "loginctl list-sessions --no-legend >/dev/null && echo loginctl-ok; "
                  "useradd -m postroj-test && su - postroj-test -c true && userdel -r postroj-test && echo deleted",
                  check=0)
    assert proc.stdout.split() == ["running", "active", "loginctl-ok", "deleted"], proc.stdout + proc.stderr
