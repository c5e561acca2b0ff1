"""`postroj vm` and `postroj probe --vm` against tests/fakes/vagrant, a recording vagrant: no
hypervisor runs on these machines, so these tests assert what postroj asks of vagrant and in which
order (up, then ssh or winrm, then destroy), with which Vagrantfile, and what postroj makes of
vagrant's answers and failures."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import postroj as postroj_module
import rig

FAKES = Path(__file__).resolve().parent.parent / "fakes"
LINUX, WINDOWS = "debian-12", "windows-2022"
COMMUNICATOR = {LINUX: "ssh", WINDOWS: "winrm", "windows-2019": "winrm"}
UP_TIMEOUT = "Timed out while waiting for the machine to boot."


class FakeVagrant:
    """The environment that puts tests/fakes/vagrant first on PATH, and what the fake recorded."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def env(self, **settings: object) -> "dict[str, str]":
        """exit_up=1 becomes VAGRANT_FAKE_EXIT_UP=1, and so on (see tests/fakes/vagrant)."""
        env = {"PATH": "%s:%s" % (FAKES, os.environ["PATH"]), "VAGRANT_FAKE_LOG": str(self.log),
               "VAGRANT_FAKE_PLUGINS": "vagrant-libvirt (0.11.2, system)\n"}
        env.update({"VAGRANT_FAKE_%s" % key.upper(): str(value) for key, value in settings.items()})
        return env

    @property
    def calls(self) -> "list[dict]":
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def actions(self) -> "list[dict]":
        """The calls that change or use a machine; queries (plugin list, status, --version) left out."""
        return [c for c in self.calls if c["argv"] and c["argv"][0] in ("up", "ssh", "winrm", "upload", "reload",
                                                                        "destroy")]

    def steps(self) -> "list[str]":
        """The actions, readably: `up`, `ssh: COMMAND`, `winrm: COMMAND`, `upload: SRC -> DST`, `reload`,
        `destroy`."""
        steps = []
        for call in self.actions():
            verb, rest = call["argv"][0], call["argv"][1:]
            if verb in ("ssh", "winrm"):
                steps.append("%s: %s" % (verb, rest[rest.index("--command") + 1]))
            elif verb == "upload":
                steps.append("upload: %s -> %s" % (rest[0], rest[1]))
            else:
                steps.append(verb)
        return steps


def unit_state(active: str, enabled: str = "enabled") -> str:
    """What `systemctl show` says of the guest's unit: up for long (see /proc/uptime), never restarted."""
    return "LoadState=loaded\nActiveState=%s\nSubState=%s\nResult=success\nNRestarts=0\nInvocationID=%s\n" \
           "UnitFileState=%s\nActiveEnterTimestampMonotonic=%d\n" % (
               active, "running" if active == "active" else "dead", "1f" * 16 if active == "active" else "", enabled,
               1000000 if active == "active" else 0)


def debian_guest(path: Path, unit: str = "postroj-demo", **changes: "list[dict]") -> Path:
    """A Debian guest for the fake's ssh (VAGRANT_FAKE_GUEST): apt, the package postroj-demo (1.0, and 0.9 to
    upgrade from) with its unit, started and enabled by its install and stopped by its removal. `changes`
    name rules that go first: what the guest under test does differently."""
    ident = "postroj-package\tpostroj-demo\t1.0\npostroj-package\tpostroj-demo\t0.9\n"
    listing = "d\t/\nd\t/etc\nf\t/etc/hostname\nd\t/usr\nd\t/usr/bin\n"
    rules = [rule for extra in changes.values() for rule in extra] + [
        {"match": r"^for c in apt-get ", "output": "apt-get\n"},
        {"match": r"dpkg-deb --show.*/old/", "output": ident},
        {"match": r"dpkg-deb --show", "output": ident.split("\n")[0] + "\n"},
        {"match": r"systemctl show .*%s$" % unit, "after": r"apt-get .* remove ", "output": unit_state("inactive")},
        {"match": r"systemctl show .*%s$" % unit, "after": r"apt-get .* install ", "output": unit_state("active")},
        {"match": r"systemctl show .*%s$" % unit, "output": unit_state("inactive")},
        {"match": r"cat /proc/uptime$", "output": "5000.00 9000.00\n"},
        {"match": r"dpkg -L postroj-demo", "output": "/usr/bin/postroj-demo-server\n"
                                                   "/lib/systemd/system/postroj-demo.service\n"},
        {"match": r"systemctl is-active postroj-demo.service", "exit": 3, "output": "inactive"},
        # the versions installed, asked after an install or upgrade (0.9 is the --upgrade-from file's)
        {"match": r"dpkg-query -W .*Version", "after": r"install -y /tmp/postroj/packages/",
         "output": "postroj-demo\t1.0\n"},
        {"match": r"dpkg-query -W .*Version", "after": r"install -y /tmp/postroj/old/",
         "output": "postroj-demo\t0.9\n"},
        {"match": r"dpkg-query -W .*Version", "output": "postroj-demo\t1.0\n"},
        {"match": r"dpkg-query", "output": "postroj-demo\n"},
        {"match": r"/proc/\[0-9\]", "output": "1\t/usr/lib/systemd/systemd\t/sbin/init\n"},
        {"match": r"/etc/passwd", "output": "user:root\ngroup:root\n"},
        {"match": r"find / -xdev", "output": listing},
        {"match": r"is-system-running", "output": "running"},
    ]
    path.write_text(json.dumps(rules))
    return path


@pytest.fixture
def vagrant(tmp_path) -> FakeVagrant:
    return FakeVagrant(tmp_path / "vagrant-calls.jsonl")


def vm_dir(postroj, label: str) -> Path:
    return postroj.home / "vagrant" / label


@pytest.fixture
def path_without_vagrant(tmp_path) -> str:
    """PATH with every other program still there: a directory that holds vagrant is replaced by a
    copy of it (symbolic links) without vagrant."""
    dirs = []
    for index, directory in enumerate(d for d in os.environ["PATH"].split(":") if d):
        if os.path.lexists(os.path.join(directory, "vagrant")):
            mirror = tmp_path / ("path-%d" % index)
            mirror.mkdir()
            for entry in os.scandir(directory):
                if entry.name != "vagrant":
                    os.symlink(entry.path, mirror / entry.name)
            directory = str(mirror)
        dirs.append(directory)
    return ":".join(dirs)


def report_lines(stdout: str) -> "list[str]":
    return [line for line in stdout.splitlines() if re.match(r"^(PASS|FAIL|SKIP|ERROR)  ", line)]


def junit(path: Path) -> ET.Element:
    return ET.fromstring(path.read_bytes())


def msi_file(directory: Path) -> Path:
    path = directory / "demo.msi"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    return path


# --- postroj vm up / run / list / destroy -----------------------------------------


def test_vagrant_gets_an_environment_built_from_an_allowlist(postroj, vagrant):
    env = dict(vagrant.env(), POSTROJ_TEST_SECRET="x", CI_JOB_TOKEN="secret", LANG="C.UTF-8", https_proxy="")
    postroj("vm", "up", LINUX, env=env)
    postroj("vm", "destroy", LINUX, env=env)
    names = {name for call in vagrant.calls for name in call["names"]}
    assert vagrant.actions() and not names & {"POSTROJ_TEST_SECRET", "CI_JOB_TOKEN"}, sorted(names)
    assert {"LANG", "https_proxy", "PATH", "VAGRANT_FAKE_LOG"} <= names, sorted(names)


def test_linux_box_up_run_list_destroy(postroj, vagrant):
    env = vagrant.env()
    directory = vm_dir(postroj, LINUX)
    up = postroj("vm", "up", LINUX, "--provider", "libvirt", "--cpus", "4", "--memory", "3072", env=env, check=0)
    assert up.stdout == "%s is up (%s)\n" % (LINUX, directory)
    [call] = vagrant.actions()
    assert call["argv"][0] == "up" and "--provider=libvirt" in call["argv"]
    assert call["env"]["VAGRANT_CWD"] == str(directory)
    text = call["vagrantfile"]
    assert text == (directory / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    assert 'config.vm.communicator = "ssh"' in text
    assert 'config.vm.synced_folder ".", "/vagrant", disabled: true' in text
    # one block per provider, both with the sizes asked for
    assert text.count("v.cpus = 4") == 2 and text.count("v.memory = 3072") == 2
    assert "winrm" not in text and "config.vm.guest" not in text

    listed = postroj("vm", "list", env=env, check=0)
    assert [line.split() for line in listed.stdout.splitlines()] == [["VM", "STATE"], [LINUX, "running"]]

    run = postroj("vm", "run", LINUX, "--", "sh", "-c", 'echo "a b"', env=env, check=0)
    # argv semantics, as in `postroj container`: quoted for the guest's shell
    assert run.stdout == "ran: sh -c 'echo \"a b\"'\n"

    destroy = postroj("vm", "destroy", LINUX, env=env, check=0)
    assert destroy.stdout == "destroyed %s\n" % LINUX
    assert not directory.exists()
    assert postroj("vm", "list", env=env, check=0).stdout == ""

    assert vagrant.steps() == ["up", "ssh: sh -c 'echo \"a b\"'", "destroy"]
    assert "--force" in vagrant.actions()[-1]["argv"]
    assert {c["env"]["VAGRANT_CWD"] for c in vagrant.actions()} == {str(directory)}


def test_windows_box_up_run_destroy(postroj, vagrant):
    env = vagrant.env(output_winrm="\x1b[1;32mStatus\x1b[0m   Name\r\n------   ----\r\n\x1b[0mRunning  WinRM\r\n",
                      stderr_winrm="\x1b[33mWARNING: the service is slow\x1b[0m\r\n")
    directory = vm_dir(postroj, WINDOWS)
    postroj("vm", "up", WINDOWS, env=env, check=0)
    text = (directory / "Vagrantfile").read_text()
    assert 'config.vm.box = "StefanScherer/windows_2022"' in text
    assert 'config.vm.communicator = "winrm"' in text
    assert "config.vm.guest = :windows" in text
    # the box's own sizes when none are asked for
    assert text.count("v.cpus = 2") == 2 and text.count("v.memory = 4096") == 2

    run = postroj("vm", "run", WINDOWS, "--shell", "powershell", "--", "Get-Service", "WinRM", env=env, check=0)
    assert run.stdout == "Status   Name\n------   ----\nRunning  WinRM\n"
    assert "WARNING: the service is slow\n" in run.stderr
    assert "\x1b" not in run.stdout + run.stderr and "\r" not in run.stdout + run.stderr
    winrm = vagrant.actions()[1]["argv"]
    assert winrm[winrm.index("--shell") + 1] == "powershell"

    postroj("vm", "destroy", WINDOWS, env=env, check=0)
    assert not directory.exists()
    assert vagrant.steps() == ["up", "winrm: Get-Service WinRM", "destroy"]


@pytest.mark.parametrize("box", [LINUX, WINDOWS])
def test_vm_run_passes_output_on_as_it_comes(postroj, vagrant, box):
    """A long command's first lines show while it still runs, cleaned of escape sequences."""
    step = COMMUNICATOR[box]
    postroj("vm", "up", box, env=vagrant.env(), check=0)
    try:
        env = vagrant.env(**{"output_" + step: "\x1b[1mstep 1 of 2\x1b[0m\r\nstep 2 of 2\r\n", "pause_" + step: 20})
        proc = subprocess.Popen(postroj.argv("vm", "run", box, "--", "install"), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(postroj.env, **env))
        try:
            assert select.select([proc.stdout], [], [], 15)[0], "no output while the command runs"
            assert proc.stdout.readline() == b"step 1 of 2\n"
            assert proc.poll() is None
        finally:
            proc.kill()
            proc.communicate()
    finally:
        postroj("vm", "destroy", box, env=vagrant.env(), check=0)


def test_vm_run_on_windows_uses_cmd_and_quotes_arguments_the_windows_way(postroj, vagrant):
    postroj("vm", "up", WINDOWS, env=vagrant.env(), check=0)
    try:
        postroj("vm", "run", WINDOWS, "--", "ver", env=vagrant.env(), check=0)
        postroj("vm", "run", WINDOWS, "--", "dir C:\\Program Files", env=vagrant.env(), check=0)  # as typed
        postroj("vm", "run", WINDOWS, "--", "type", "C:\\Program Files\\a.txt", 'say "hi"', env=vagrant.env(),
                check=0)
        calls = [c["argv"] for c in vagrant.actions() if c["argv"][0] == "winrm"]
        assert [c[c.index("--shell") + 1] for c in calls] == ["cmd"] * 3
        assert [c[c.index("--command") + 1] for c in calls] == [
            "ver", "dir C:\\Program Files", 'type "C:\\Program Files\\a.txt" "say \\"hi\\""']
    finally:
        postroj("vm", "destroy", WINDOWS, env=vagrant.env(), check=0)
    refused = postroj("vm", "run", LINUX, "--shell", "cmd", "--", "true", env=vagrant.env(), check=2)
    assert "--shell is for Windows boxes" in refused.stderr


@pytest.mark.parametrize("box", [LINUX, "windows-2019"])
def test_vm_run_exits_with_the_commands_status(postroj, vagrant, box):
    step = COMMUNICATOR[box]
    postroj("vm", "up", box, env=vagrant.env(), check=0)
    failed = postroj("vm", "run", box, "--", "false", env=vagrant.env(**{"exit_" + step: 3}))
    assert failed.returncode == 3
    assert failed.stdout == "ran: false\n"
    assert "error:" not in failed.stderr
    assert postroj("vm", "run", box, "--", "true", env=vagrant.env()).returncode == 0
    postroj("vm", "destroy", box, env=vagrant.env(), check=0)
    assert vagrant.steps() == ["up", "%s: false" % step, "%s: true" % step, "destroy"]


def test_vm_run_needs_a_machine_that_is_up(postroj, vagrant):
    proc = postroj("vm", "run", LINUX, "--", "true", env=vagrant.env(), check=1)
    assert "error: %s is not up" % LINUX in proc.stderr
    assert "postroj vm up %s" % LINUX in proc.stderr
    assert vagrant.actions() == []


def test_vm_run_needs_a_command(postroj, vagrant):
    proc = postroj("vm", "run", LINUX, env=vagrant.env(), check=2)
    assert "no command given" in proc.stderr
    assert vagrant.actions() == []


@pytest.mark.parametrize("box", [LINUX, WINDOWS])
def test_vm_up_failure_destroys_and_shows_vagrants_last_lines(postroj, vagrant, box):
    proc = postroj("vm", "up", box, env=vagrant.env(exit_up=1), check=1)
    assert "error: vagrant up %s failed with exit code 1" % box in proc.stderr
    assert UP_TIMEOUT in proc.stderr
    assert "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert vagrant.steps() == ["up", "destroy"]
    assert not vm_dir(postroj, box).exists()


def test_vm_up_failure_with_keep_leaves_the_machine(postroj, vagrant):
    proc = postroj("vm", "up", LINUX, "--keep", env=vagrant.env(exit_up=1), check=1)
    assert UP_TIMEOUT in proc.stderr
    assert vagrant.steps() == ["up"]
    assert (vm_dir(postroj, LINUX) / "Vagrantfile").is_file()
    assert LINUX in postroj("vm", "list", env=vagrant.env(), check=0).stdout
    postroj("vm", "destroy", LINUX, env=vagrant.env(), check=0)
    assert vagrant.steps() == ["up", "destroy"]
    assert not vm_dir(postroj, LINUX).exists()


def test_vm_destroy_failure_keeps_the_vagrantfile_for_another_try(postroj, vagrant):
    """A machine vagrant could not destroy still exists: postroj must say so and keep the Vagrantfile
    that is the only handle on it, or the VM leaks out of postroj's sight."""
    postroj("vm", "up", LINUX, env=vagrant.env(), check=0)
    proc = postroj("vm", "destroy", LINUX, env=vagrant.env(exit_destroy=1, stderr_destroy="libvirt: domain is busy\n"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "destroy" in proc.stderr and "libvirt: domain is busy" in proc.stderr
    assert (vm_dir(postroj, LINUX) / "Vagrantfile").is_file()
    assert LINUX in postroj("vm", "list", env=vagrant.env(), check=0).stdout
    postroj("vm", "destroy", LINUX, env=vagrant.env(), check=0)
    assert not vm_dir(postroj, LINUX).exists()
    assert vagrant.steps() == ["up", "destroy", "destroy"]


@pytest.mark.parametrize("argv, near", [
    (["vm", "up", "debian-13"], ["debian-12", "debian-11"]),
    (["vm", "run", "windows-2025", "--", "dir"], ["windows-2022", "windows-2019"]),
    (["vm", "destroy", "freebsd"], ["freebsd-14"]),
    (["probe", "--vm", "ubuntu-24.10", "--command", "true"], ["ubuntu-24.04"]),
])
def test_unknown_box_is_a_usage_error_with_the_closest_names(postroj, vagrant, argv, near):
    proc = postroj(*argv, env=vagrant.env(), check=2)
    match = re.search(r"error: unknown box '[^']+'; did you mean (.*)\?", proc.stderr)
    assert match, proc.stderr
    assert set(near) <= set(match.group(1).split(", "))
    assert "hint:" in proc.stderr
    assert vagrant.calls == []


def test_malformed_box_reference_is_a_usage_error(postroj, vagrant):
    proc = postroj("vm", "up", "vagrant:no-slash", env=vagrant.env(), check=2)
    assert "malformed box reference" in proc.stderr and "vagrant:OWNER/BOX" in proc.stderr
    assert vagrant.calls == []


def test_vm_up_with_a_provider_vagrant_lacks_is_a_usage_error(postroj, vagrant):
    proc = postroj("vm", "up", LINUX, "--provider", "parallels", env=vagrant.env(), check=2)
    assert "no provider 'parallels'" in proc.stderr
    assert "libvirt" in proc.stderr  # what is available
    assert "up" not in vagrant.steps()
    assert not vm_dir(postroj, LINUX).exists()


def test_a_provider_whose_hypervisor_is_missing_names_the_hypervisor(postroj, vagrant):
    """VirtualBox is a program, not a plugin: there is no vagrant-virtualbox to install."""
    assert not any(os.path.exists(os.path.join(d, "VBoxManage")) for d in os.environ["PATH"].split(":") if d)
    proc = postroj("vm", "up", LINUX, "--provider", "virtualbox", env=vagrant.env(), check=2)
    assert "vagrant cannot use the virtualbox provider here" in proc.stderr
    assert "VBoxManage is not on PATH" in proc.stderr and "available: libvirt" in proc.stderr
    assert "vagrant plugin install" not in proc.stderr
    assert "up" not in vagrant.steps() and not vm_dir(postroj, LINUX).exists()


def test_destroying_a_vm_that_was_never_made_says_so(postroj, vagrant):
    proc = postroj("vm", "destroy", LINUX, env=vagrant.env(), check=0)
    assert proc.stdout == "%s has no VM here: nothing to destroy\n" % LINUX
    assert "destroy" not in vagrant.steps()


def test_vm_up_with_a_provider_from_any_vagrant_plugin(postroj, vagrant):
    """Providers come from plugins postroj does not list itself (vagrant-qemu, vagrant-lxc, ...)."""
    env = vagrant.env(plugins="vagrant-libvirt (0.11.2, system)\nvagrant-qemu (0.3.6, global)\n")
    postroj("vm", "up", LINUX, "--provider", "qemu", env=env, check=0)
    assert "--provider=qemu" in vagrant.actions()[0]["argv"]
    postroj("vm", "destroy", LINUX, env=env, check=0)
    assert vagrant.steps() == ["up", "destroy"]


def test_probe_vm_with_a_provider_vagrant_lacks_is_a_usage_error(postroj, vagrant):
    proc = postroj("probe", "--vm", LINUX, "--provider", "parallels", "--command", "true", env=vagrant.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no provider 'parallels'" in proc.stderr
    assert report_lines(proc.stdout) == []
    assert "up" not in vagrant.steps()
    assert not vm_dir(postroj, LINUX).exists()


@pytest.mark.parametrize("argv", [
    ["vm", "up", LINUX],
    ["vm", "run", LINUX, "--", "true"],
    ["vm", "destroy", LINUX],
    ["probe", "--vm", WINDOWS, "--command", "hostname"],
])
def test_vagrant_missing_says_how_to_install_it(postroj, vagrant, path_without_vagrant, argv):
    proc = postroj(*argv, env=dict(vagrant.env(), PATH=path_without_vagrant), check=1)
    assert "error: vagrant not found" in proc.stderr
    assert "apt-get install vagrant (or `make setup-dev`)" in proc.stderr  # make setup does not bring it
    assert "Traceback" not in proc.stderr
    assert not vm_dir(postroj, argv[2] if argv[0] == "vm" else WINDOWS).exists()


def test_doctor_reports_vagrant(postroj, vagrant, path_without_vagrant):
    present = postroj("doctor", env=vagrant.env())
    [row] = [line for line in present.stdout.splitlines() if line.startswith("vagrant ")]
    assert row.split()[1] == "ok"
    assert "Vagrant 2.3.7" in row and "libvirt" in row and "winrm" in row
    absent = postroj("doctor", env=dict(vagrant.env(), PATH=path_without_vagrant))
    [row] = [line for line in absent.stdout.splitlines() if line.startswith("vagrant ")]
    assert row.split()[1] == "optional"
    assert "not found" in row
    [fix] = [line for line in absent.stdout.splitlines() if line.startswith("optional: apt-get install")]
    assert "vagrant" in fix.split()
    # vagrant is optional: whether it is there does not change doctor's verdict
    assert absent.returncode == present.returncode


# --- postroj probe --vm ------------------------------------------------------------


def test_probe_vm_linux_all_pass(postroj, vagrant, tmp_path):
    results, xml = tmp_path / "results.json", tmp_path / "junit.xml"
    guest = tmp_path / "guest.json"
    guest.write_text(json.dumps([{"match": "systemctl show .*nginx$", "output": unit_state("active")},
                                 {"match": r"cat /proc/uptime$", "output": "5000.00 9000.00\n"}]))
    proc = postroj("probe", "--vm", LINUX, "--provider", "libvirt", "--command", "nginx -v", "--check-unit", "nginx",
                   "--check-network", "http://localhost:8080/", "--json", str(results), "--junit", str(xml),
                   env=vagrant.env(guest=guest), check=0)
    lines = report_lines(proc.stdout)
    assert len(lines) == 3
    for line, title in zip(lines, ["unit nginx", "network http://localhost:8080/", "command nginx -v"]):
        assert re.match(r"^PASS  %s\s+%s\s+\d+\.\d\ds$" % (LINUX, re.escape(title)), line), line
    assert "3 passed, 0 failed, 0 skipped" in proc.stderr

    steps = vagrant.steps()
    assert steps[0] == "up" and steps[-1] == "destroy" and len(steps) == 7
    assert "--provider=libvirt" in vagrant.actions()[0]["argv"]
    # the unit as the package left it: asked, never started or enabled; up for long enough on the VM's clock
    show = "ssh: sudo systemctl show %s nginx" % " ".join("--property=%s" % p for p in postroj_module.UNIT_PROPERTIES)
    assert steps[1:4] == [show, "ssh: sudo cat /proc/uptime", show]
    assert steps[4].startswith("ssh: ") and "http://localhost:8080/" in steps[4]
    assert steps[5] == "ssh: nginx -v"
    assert not vm_dir(postroj, LINUX).exists()

    data = json.loads(results.read_text())
    assert data["passed"] is True
    assert [(r["image"], r["kind"], r["status"]) for r in data["results"]] == [
        (LINUX, "unit", "pass"), (LINUX, "network", "pass"), (LINUX, "command", "pass")]
    assert data["results"][2]["output"] == "ran: nginx -v"
    root = junit(xml)
    assert (root.get("tests"), root.get("failures")) == ("3", "0")
    [suite] = root.findall("testsuite")
    assert suite.get("name") == LINUX
    assert [c.get("name") for c in suite.findall("testcase")] == [
        "unit nginx", "network http://localhost:8080/", "command nginx -v"]


@pytest.mark.parametrize("box", [LINUX, WINDOWS])
def test_probe_vm_failing_command_fails_the_run_and_destroys(postroj, vagrant, tmp_path, box):
    step = COMMUNICATOR[box]
    xml = tmp_path / "junit.xml"
    proc = postroj("probe", "--vm", box, "--command", "hostname", "--command", "exit 3", "--junit", str(xml),
                   env=vagrant.env(), check=1)
    lines = report_lines(proc.stdout)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL"]
    assert "command exit 3" in lines[1]
    assert "reason: exit status 3" in proc.stdout
    assert "ran: exit 3" in proc.stdout
    assert "1 passed, 1 failed, 0 skipped" in proc.stderr
    assert vagrant.steps() == ["up", "%s: hostname" % step, "%s: exit 3" % step, "destroy"]
    assert not vm_dir(postroj, box).exists()
    root = junit(xml)
    assert root.get("failures") == "1"
    [failure] = root.iter("failure")
    assert failure.get("message") == "exit status 3"


@pytest.mark.parametrize("box", [LINUX, WINDOWS])
def test_probe_vm_boot_failure_is_not_tested_and_destroys(postroj, vagrant, tmp_path, box):
    """A VM that does not come up: nothing of the package was tested (ERROR, exit 3, JUnit <error>), not failed."""
    xml = tmp_path / "junit.xml"
    proc = postroj("probe", "--vm", box, "--command", "hostname", "--check-network", "tcp://localhost:22",
                   "--junit", str(xml), env=vagrant.env(exit_up=1), check=3)
    lines = report_lines(proc.stdout)
    assert [line.split()[:2] for line in lines] == [["ERROR", box], ["ERROR", box]]
    assert proc.stdout.count("reason: vagrant up %s failed with exit code 1" % box) == 2
    assert UP_TIMEOUT in proc.stdout  # vagrant's last lines
    assert "0 passed, 0 failed, 0 skipped; not tested: %s" % box in proc.stderr
    assert vagrant.steps() == ["up", "destroy"]
    assert not vm_dir(postroj, box).exists()
    root = junit(xml)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "0", "2")


def test_probe_vm_keep_leaves_the_machine_up(postroj, vagrant):
    postroj("probe", "--vm", LINUX, "--command", "hostname", "--keep", env=vagrant.env(), check=0)
    assert vagrant.steps() == ["up", "ssh: hostname"]
    listed = postroj("vm", "list", env=vagrant.env(), check=0)
    assert [LINUX, "running"] in [line.split() for line in listed.stdout.splitlines()]
    postroj("vm", "destroy", LINUX, env=vagrant.env(), check=0)
    assert not vm_dir(postroj, LINUX).exists()


def test_probe_vm_leaves_a_machine_brought_up_before_it(postroj, vagrant):
    """`vm up` then `probe --vm` of the same box: the probes run in the user's VM, which stays up."""
    postroj("vm", "up", LINUX, env=vagrant.env(), check=0)
    proc = postroj("probe", "--vm", LINUX, "--command", "hostname", env=vagrant.env(), check=0)
    assert "%s was up before this run" % LINUX in proc.stderr
    assert vagrant.steps() == ["up", "up", "ssh: hostname"]
    listed = postroj("vm", "list", env=vagrant.env(), check=0)
    assert [LINUX, "running"] in [line.split() for line in listed.stdout.splitlines()]
    postroj("vm", "destroy", LINUX, env=vagrant.env(), check=0)
    # and a probe of a box no one brought up still destroys its own VM
    postroj("probe", "--vm", LINUX, "--command", "hostname", env=vagrant.env(), check=0)
    assert vagrant.steps()[-3:] == ["up", "ssh: hostname", "destroy"]
    assert not vm_dir(postroj, LINUX).exists()


def test_probe_vm_after_a_kept_probe_destroys_the_machine(postroj, vagrant):
    """Only `vm up` makes a VM the user's: one a probe kept (or failed to destroy) goes with the next probe."""
    postroj("probe", "--vm", LINUX, "--command", "hostname", "--keep", env=vagrant.env(), check=0)
    proc = postroj("probe", "--vm", LINUX, "--command", "hostname", env=vagrant.env(), check=0)
    assert "was up before this run" not in proc.stderr
    assert vagrant.steps() == ["up", "ssh: hostname", "up", "ssh: hostname", "destroy"]
    assert not vm_dir(postroj, LINUX).exists()


def test_probe_vm_keep_leaves_a_machine_that_failed_to_boot(postroj, vagrant):
    proc = postroj("probe", "--vm", WINDOWS, "--command", "hostname", "--keep", env=vagrant.env(exit_up=1), check=3)
    assert UP_TIMEOUT in proc.stdout
    assert vagrant.steps() == ["up"]
    assert (vm_dir(postroj, WINDOWS) / "Vagrantfile").is_file()
    postroj("vm", "destroy", WINDOWS, env=vagrant.env(), check=0)
    assert vagrant.steps() == ["up", "destroy"]


def test_probe_vm_windows_output_is_clean_text(postroj, vagrant, tmp_path):
    results = tmp_path / "results.json"
    postroj("probe", "--vm", WINDOWS, "--command", "Get-Service WinRM", "--json", str(results),
            env=vagrant.env(), check=0)
    [result] = json.loads(results.read_text())["results"]
    # the fake answers with an ANSI colour and CRLF, as vagrant winrm does
    assert result["output"] == "ran: Get-Service WinRM"
    assert vagrant.steps() == ["up", "winrm: Get-Service WinRM", "destroy"]
    winrm = vagrant.actions()[1]["argv"]
    assert winrm[winrm.index("--shell") + 1] == "powershell"


@pytest.mark.parametrize("answer, verdict, code", [("True\r\n", "PASS", 0), ("False\r\n", "FAIL", 1)])
def test_probe_vm_windows_network_reads_test_netconnection(postroj, vagrant, answer, verdict, code):
    proc = postroj("probe", "--vm", WINDOWS, "--check-network", "http://localhost:8080/",
                   env=vagrant.env(output_winrm=answer), check=code)
    [line] = report_lines(proc.stdout)
    assert line.split()[0] == verdict
    [step] = [s for s in vagrant.steps() if s.startswith("winrm: ")]
    assert "Test-NetConnection" in step and "localhost" in step and "8080" in step
    assert vagrant.steps()[-1] == "destroy"


@pytest.mark.parametrize("box", [WINDOWS, "freebsd-14"])
def test_probe_vm_check_unit_needs_a_linux_guest(postroj, vagrant, box):
    proc = postroj("probe", "--vm", box, "--check-unit", "nginx", env=vagrant.env(), check=2)
    assert "--check-unit needs a Linux guest" in proc.stderr
    assert vagrant.calls == []


def test_probe_vm_installs_a_deb(postroj, vagrant, tmp_path):
    """As in a container: uploaded, named and downloaded with the guest's own apt and network, then installed
    from its package cache by name of the file, as root."""
    deb = rig.build_demo_deb(tmp_path)
    proc = postroj("probe", "--vm", LINUX, "--package", str(deb), env=vagrant.env(guest=debian_guest(
        tmp_path / "guest.json")), check=0)
    [line] = report_lines(proc.stdout)
    assert line.startswith("PASS  %s" % LINUX) and "installed: package postroj-demo 1.0" in line, line
    steps = vagrant.steps()
    inside = "/tmp/postroj/packages/%s" % deb.name
    assert steps[:3] == ["up", "ssh: for c in apt-get dnf yum microdnf zypper pacman; do command -v $c >/dev/null "
                         "2>&1 && { echo $c; exit 0; }; done; exit 1", "upload: %s -> %s" % (deb, inside)]
    assert steps[3].startswith("ssh: sudo mkdir -p /var/cache/postroj-packages/partial")
    assert steps[4].startswith("ssh: sudo sh -c ") and "dpkg-deb --show" in steps[4] and "update" in steps[4] \
        and "--download-only" in steps[4]
    assert steps[5].startswith("ssh: sudo env DEBIAN_FRONTEND=noninteractive apt-get ") and steps[5].endswith(" install -y %s" % inside), steps[5]
    assert "Debug::NoLocking" not in " ".join(steps), "apt in a VM locks, as unattended-upgrades may run"
    # the units of the package, and whether a job or a unit of theirs failed during the install
    # the version the install left is checked (issue 34), then the package's units are read for its journal
    assert steps[6] == r"ssh: sudo dpkg-query -W '-f=${Package}\t${Version}\n' postroj-demo"
    assert steps[7] == "ssh: sudo dpkg -L postroj-demo"
    assert steps[8].startswith("ssh: sudo journalctl --no-pager -o json --since @") and steps[8].endswith(" _PID=1")
    assert steps[9:] == ["destroy"]


def test_probe_vm_installs_an_msi(postroj, vagrant, tmp_path):
    msi = msi_file(tmp_path)
    postroj("probe", "--vm", WINDOWS, "--package", str(msi), env=vagrant.env(), check=0)
    steps = vagrant.steps()
    assert steps[:2] == ["up", "upload: %s -> C:\\postroj\\demo.msi" % msi]
    assert steps[2].startswith("winrm: ") and "msiexec" in steps[2] and "C:\\postroj\\demo.msi" in steps[2]
    assert steps[3:] == ["destroy"]


def test_probe_vm_upload_failure_is_not_tested_and_destroys(postroj, vagrant, tmp_path):
    """The guest's disk is full: the package was not tested (ERROR, exit 3), not failed."""
    deb = rig.build_demo_deb(tmp_path)
    proc = postroj("probe", "--vm", LINUX, "--package", str(deb), "--command", "hostname",
                   env=vagrant.env(exit_upload=1, stderr_upload="scp: /tmp: No space left on device\n",
                                   guest=debian_guest(tmp_path / "guest.json")), check=3)
    lines = report_lines(proc.stdout)
    assert [line.split()[0] for line in lines] == ["ERROR", "SKIP"]
    assert "reason: uploading %s failed" % deb.name in proc.stdout
    assert "No space left on device" in proc.stdout
    # nothing is installed from a file that did not arrive, nothing is checked of a package that is not there
    steps = vagrant.steps()
    assert steps[2:] == ["upload: %s -> /tmp/postroj/packages/%s" % (deb, deb.name), "destroy"]


def test_probe_vm_package_from_a_url_is_downloaded_first(postroj, vagrant, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    deb = rig.build_demo_deb(www)
    server = rig.HTTPServer(www).start()
    try:
        url = "%s/%s" % (server.url, deb.name)
        proc = postroj("probe", "--vm", LINUX, "--package", url, env=vagrant.env(guest=debian_guest(
            tmp_path / "guest.json")))
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [upload] = [c["argv"] for c in vagrant.actions() if c["argv"][0] == "upload"]
    # vagrant uploads files: the URL's package, downloaded into POSTROJ_CACHE first
    assert upload[1] != url and upload[1].endswith(deb.name)
    assert Path(upload[1]).read_bytes() == deb.read_bytes()


@pytest.mark.parametrize("argv", [
    ["--vm", WINDOWS, "--package", "DEB"],
    ["--vm", LINUX, "--package", "MSI"],
])
def test_probe_vm_package_of_the_wrong_kind_is_a_usage_error(postroj, vagrant, tmp_path, argv):
    files = {"DEB": str(rig.build_demo_deb(tmp_path)), "MSI": str(msi_file(tmp_path))}
    proc = postroj("probe", *[files.get(a, a) for a in argv], env=vagrant.env(), check=2)
    assert "cannot be installed on" in proc.stderr
    assert vagrant.calls == []


def test_probe_vm_command_is_bounded_by_timeout(postroj, vagrant):
    """--timeout is per probe, as in containers: a command that hangs fails, and the VM goes."""
    t0 = time.monotonic()
    proc = postroj("probe", "--vm", LINUX, "--command", "sleep 600", "--timeout", "2",
                   env=vagrant.env(sleep_ssh=20), timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = report_lines(proc.stdout)
    assert line.startswith("FAIL")
    assert elapsed < 15, "probe took %.1f s despite --timeout 2" % elapsed
    assert vagrant.steps() == ["up", "ssh: sleep 600", "destroy"]


def test_probe_several_vms_one_after_another(postroj, vagrant, tmp_path):
    xml = tmp_path / "junit.xml"
    postroj("probe", "--vm", LINUX, "--vm", WINDOWS, "--command", "hostname", "--junit", str(xml),
            env=vagrant.env(), check=0)
    assert vagrant.steps() == ["up", "ssh: hostname", "destroy", "up", "winrm: hostname", "destroy"]
    dirs = [c["env"]["VAGRANT_CWD"] for c in vagrant.actions()]
    assert dirs == [str(vm_dir(postroj, LINUX))] * 3 + [str(vm_dir(postroj, WINDOWS))] * 3
    assert [s.get("name") for s in junit(xml).findall("testsuite")] == [LINUX, WINDOWS]


def test_probe_vm_destroy_failure_is_reported(postroj, vagrant):
    """The probes passed, but the VM may still be running: the run must not look clean."""
    proc = postroj("probe", "--vm", LINUX, "--command", "hostname",
                   env=vagrant.env(exit_destroy=1, stderr_destroy="libvirt: domain is busy\n"))
    assert [line.split()[0] for line in report_lines(proc.stdout)] == ["PASS"]
    assert "libvirt: domain is busy" in proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (vm_dir(postroj, LINUX) / "Vagrantfile").is_file()
    postroj("vm", "destroy", LINUX, env=vagrant.env(), check=0)


# --- the stages of a package's life in a Linux VM -------------------------------------------


def lifecycle(postroj, vagrant, tmp_path, *extra: str, check=0, **changes):
    """probe --vm with every stage on the scripted Debian guest; the JSON rows and the fake's steps."""
    old, new = rig.build_demo_deb(tmp_path / "old"), rig.build_demo_deb(tmp_path / "new")
    report = tmp_path / "r.json"
    proc = postroj("probe", "--vm", LINUX, "--upgrade-from", str(old), "--package", str(new), "--reboot", "--purge",
                   "--check-unit", "postroj-demo", "--command", "true", *extra, "--json", str(report),
                   env=vagrant.env(guest=debian_guest(tmp_path / "guest.json", **changes)), check=check)
    rows = [(r["stage"], r["kind"], r["status"]) for r in json.loads(report.read_text())["results"]]
    return proc, rows, json.loads(report.read_text())["results"], vagrant.steps()


def test_probe_vm_runs_every_stage_of_the_packages_life_as_in_a_container(postroj, vagrant, tmp_path):
    proc, rows, results, steps = lifecycle(postroj, vagrant, tmp_path)
    assert rows == [
        ("installed", "package", "pass"), ("installed", "unit", "pass"), ("installed", "command", "pass"),
        ("upgraded", "package", "pass"), ("upgraded", "unit", "pass"), ("upgraded", "command", "pass"),
        ("rebooted", "reboot", "pass"), ("rebooted", "unit", "pass"), ("rebooted", "command", "pass"),
        ("removed", "package", "pass"), ("removed", "unit", "pass"), ("removed", "leftover", "pass"),
        ("removed", "leftover", "pass"),
        ("purged", "package", "pass"), ("purged", "unit", "pass"), ("purged", "leftover", "pass"),
        ("purged", "leftover", "pass")], proc.stdout
    assert results[6]["target"] == "the VM"
    marks = {"find / -xdev": "listing", " install -y /tmp/postroj/old/": "install old",
             " install -y /tmp/postroj/packages/": "install new", " remove -y postroj-demo": "remove",
             " purge -y --autoremove postroj-demo": "purge"}
    kinds = ["reload" if s == "reload" else word for s in steps for mark, word in marks.items() if mark in s or
             (s == "reload" and mark == "find / -xdev")]
    # the baseline before the first install; the old version, then the new one; the reboot; remove, purge; the
    # comparison
    assert kinds == ["listing", "install old", "install new", "reload", "remove", "purge", "listing"], steps
    assert not [s for s in steps if "systemctl enable" in s or "systemctl start" in s], "a unit was started for it"
    assert "upgraded: package postroj-demo 1.0" in proc.stdout and "installed: package postroj-demo 0.9" in proc.stdout


def test_probe_vm_a_unit_started_but_not_enabled_fails_after_the_reboot(postroj, vagrant, tmp_path):
    proc, rows, results, steps = lifecycle(postroj, vagrant, tmp_path, check=1, enabled_only=[
        {"match": r"systemctl show .*postroj-demo$", "after": r"^reload", "output": unit_state("inactive", "disabled")},
        {"match": r"systemctl show .*postroj-demo$", "after": r"apt-get .* install ",
         "output": unit_state("active", "disabled")}])
    failed = [(r["stage"], r["kind"], r["reason"]) for r in results if r["status"] == "fail"]
    assert failed == [("rebooted", "unit", "inactive, not enabled: it did not come back after the reboot (the package "
                                           "started it but did not enable it)")]
    assert ("upgraded", "unit", "pass") in rows


def test_probe_vm_a_file_left_after_purge_fails_naming_it(postroj, vagrant, tmp_path):
    listing = "d\t/\nd\t/etc\nf\t/etc/hostname\nd\t/usr\nd\t/usr/bin\nf\t/etc/postroj-demo.conf\n"
    proc, rows, results, steps = lifecycle(postroj, vagrant, tmp_path, check=1, leftover=[
        {"match": r"find / -xdev", "after": r"apt-get .* purge ", "output": listing}])
    failed = [(r["stage"], r["target"], r["reason"], r["output"]) for r in results if r["status"] == "fail"]
    assert failed == [("purged", "files", "purged: 1 path differs from the container before the install",
                       "/etc/postroj-demo.conf: left behind")], failed


def test_probe_vm_start_units_starts_and_enables_the_checked_units_after_the_install(postroj, vagrant, tmp_path):
    proc, rows, results, steps = lifecycle(postroj, vagrant, tmp_path, "--start-units")
    started = [s for s in steps if "systemctl enable --now" in s]
    assert started == ["ssh: sudo systemctl enable --now postroj-demo"]  # after the install of --package


def test_probe_vm_lifecycle_on_windows_is_a_usage_error(postroj, vagrant, tmp_path):
    proc = postroj("probe", "--vm", WINDOWS, "--package", str(msi_file(tmp_path)), "--reboot", env=vagrant.env(),
                   check=2)
    assert "run in containers and Linux VMs; windows-2022 is windows" in proc.stderr
    assert vagrant.calls == []
