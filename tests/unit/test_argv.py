"""Command lines postroj builds for systemd-nspawn, nsenter, systemd-run and package managers, and the
Vagrantfile it writes. Nothing is booted: the argv lists are checked as data."""

from __future__ import annotations

from pathlib import Path

import pytest

import postroj


def image_info(path: Path, name: str = "debian-bookworm") -> postroj.ImageInfo:
    return postroj.ImageInfo(name=name, source="docker://docker.io/library/debian:bookworm-slim", digest="sha256:00",
                             os_release="Debian GNU/Linux 12 (bookworm)", os_id="debian", family="debian",
                             package_manager="apt", acquired="2024-01-01T00:00:00+00:00", size=0, path=path)


def container(tmp_path: Path, mode: str, home: str = "home", term: str = "", **options) -> postroj.NspawnContainer:
    settings = postroj.Settings(tmp_path / home, tmp_path / "cache", term=term)
    rootfs = settings.versions / "debian-bookworm@0123456789ab" / "rootfs"
    spec = postroj.ContainerSpec(image_info(rootfs), postroj.Host(postroj.HostMode(mode)), **options)
    box = postroj.NspawnContainer(settings, spec)
    box.machine = "postroj-debian-bookworm"
    box.files = postroj.RuntimeFiles(settings.runtime, box.machine)
    box.overlay = postroj.Overlay(spec, box.files.directory, box.machine)
    return box


def boot_argv(box: postroj.NspawnContainer) -> "list[str]":
    return postroj.nspawn_boot_argv(box.spec, box.machine, box.overlay, box.how)


def option(argv, name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, "%s given %d times in %s" % (name, len(values), argv)
    return values[0]


# --- systemd-nspawn ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nsenter", "machined"])
def test_nspawn_boots_below_an_overlay(tmp_path, mode):
    box = container(tmp_path, mode)
    upper = box.files.directory / "upper"
    argv = boot_argv(box)
    assert argv[0] == "systemd-nspawn"
    assert all(isinstance(a, str) for a in argv)
    assert "--boot" in argv
    assert option(argv, "--directory") == str(box.image.path)
    assert option(argv, "--overlay") == "%s:%s:/" % (box.image.path, upper)
    assert option(argv, "--machine") == "postroj-debian-bookworm"
    assert option(argv, "--notify-ready") == "yes"
    assert option(argv, "--bind-ro") == "%s:%s" % (box.files.directory / "guest", postroj.GUEST_RUNTIME)


def test_nspawn_in_nsenter_mode_does_not_register(tmp_path):
    argv = boot_argv(container(tmp_path, "nsenter"))
    assert "--register=no" in argv
    assert "--keep-unit" in argv


def test_nspawn_in_machined_mode_registers(tmp_path):
    argv = boot_argv(container(tmp_path, "machined"))
    assert not [a for a in argv if a.startswith("--register")]
    assert "--keep-unit" not in argv


def test_nspawn_network(tmp_path):
    shared = boot_argv(container(tmp_path, "nsenter"))
    assert "--private-network" not in shared
    assert option(shared, "--resolv-conf") == "replace-host"
    private = boot_argv(container(tmp_path, "nsenter", private_network=True))
    assert "--private-network" in private
    assert option(private, "--resolv-conf") == "off"


def test_nspawn_binds_and_environment(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    binds = [postroj.parse_bind(str(src), False), postroj.parse_bind("%s:/opt/data" % src, True)]
    argv = boot_argv(container(tmp_path, "nsenter", binds=tuple(binds), setenv=(("LANG", "C"), ("EMPTY", ""))))
    assert "--bind=%s:%s" % (src, src) in argv
    assert "--bind-ro=%s:/opt/data" % src in argv
    assert "--setenv=LANG=C" in argv
    assert "--setenv=EMPTY=" in argv


def test_nspawn_escapes_colons_in_every_path(tmp_path):
    # nspawn splits --overlay and --bind-ro at colons; a state root with a colon needs \: everywhere.
    box = container(tmp_path, "nsenter", home="state:2024")
    upper = box.files.directory / "upper"
    argv = boot_argv(box)
    escaped = lambda path: str(path).replace(":", "\\:")  # noqa: E731
    assert option(argv, "--overlay") == "%s:%s:/" % (escaped(box.image.path), escaped(upper))
    assert [a for a in argv if a.startswith("--bind-ro=")] == [
        "--bind-ro=%s:%s" % (escaped(box.files.directory / "guest"), postroj.GUEST_RUNTIME)]


def test_nspawn_run_argv_for_provisioning(tmp_path):
    host = postroj.Host(postroj.HostMode.NSENTER)
    argv = postroj.nspawn_run_argv(host, tmp_path / "rootfs", [("/var/cache/x", postroj.PACKAGE_CACHE_DIR)])
    assert argv[0] == "systemd-nspawn"
    assert "--boot" not in argv
    assert "--register=no" in argv and "--keep-unit" in argv
    assert option(argv, "--directory") == str(tmp_path / "rootfs")
    assert "--bind=/var/cache/x:%s" % postroj.PACKAGE_CACHE_DIR in argv
    assert "--setenv=DEBIAN_FRONTEND=noninteractive" in argv
    assert "--private-network" not in argv
    assert "--private-network" in postroj.nspawn_run_argv(host, tmp_path / "rootfs", network=False)
    scoped = postroj.Host(postroj.HostMode.NSENTER, scope=("systemd-run", "--scope", "--"))
    assert postroj.nspawn_run_argv(scoped, tmp_path / "rootfs")[:4] == ["systemd-run", "--scope", "--",
                                                                      "systemd-nspawn"]


# --- commands in the container ----------------------------------------------------


def test_command_through_nsenter(tmp_path):
    """Commands enter the leader through its open /proc directory (ProcessHandle), by nsenter's host path."""
    import subprocess

    box = container(tmp_path, "nsenter")
    child = subprocess.Popen(["sleep", "60"])
    try:
        box.commands.pin(child.pid)
        argv, env = box.how.command(box, ["sh", "-c", "echo hi"], {"PATH": postroj.CONTAINER_PATH})
        handle = "/proc/%d/fd/%d" % (postroj.os.getpid(), box.commands.handle.fd)
        assert argv[0] == postroj.shutil.which("nsenter") and argv[0].startswith("/")
        assert argv[1:] == ["--mount=%s/ns/mnt" % handle, "--uts=%s/ns/uts" % handle, "--ipc=%s/ns/ipc" % handle,
                            "--net=%s/ns/net" % handle, "--pid=%s/ns/pid" % handle,
                            "--cgroup=%s/ns/cgroup" % handle, "--root=%s/root" % handle, "--wd=%s/cwd" % handle,
                            "--", "sh", "-c", "echo hi"]
        assert env == {"PATH": postroj.CONTAINER_PATH}  # nsenter hands its own environment on
        assert box.commands.handle.alive()
    finally:
        child.kill()
        child.wait()
    # the PID may be another process's now: the handle names nothing
    assert not box.commands.handle.alive()
    with pytest.raises(OSError):
        postroj.os.listdir(handle + "/ns")
    box.commands.release()


def test_a_gone_leader_is_never_entered(tmp_path):
    """Without a leader (not booted, or ended), no nsenter argv is made at all."""
    box = container(tmp_path, "nsenter")
    with pytest.raises(postroj.PostrojError, match="not running"):
        box.how.command(box, ["true"], {})


def test_command_through_systemd_run(tmp_path):
    box = container(tmp_path, "machined")
    env = box.commands.environment([("EXTRA", "1")])
    argv, own = box.how.command(box, ["sh", "-c", "echo hi"], env)
    assert own is None  # the environment goes as --setenv
    assert argv[0] == "systemd-run"
    assert "--machine=postroj-debian-bookworm" in argv
    assert "--wait" in argv and "--pipe" in argv
    assert "--setenv=PATH=%s" % postroj.CONTAINER_PATH in argv
    assert "--setenv=EXTRA=1" in argv
    assert argv[argv.index("--"):] == ["--", "sh", "-c", "echo hi"]


def test_container_environment(tmp_path):
    box = container(tmp_path, "nsenter", term="xterm-256color", setenv=(("LANG", "de_DE.UTF-8"),))
    env = box.commands.environment([("A", "b")])
    assert env["PATH"] == postroj.CONTAINER_PATH
    assert env["container"] == "systemd-nspawn"
    assert env["TERM"] == "xterm-256color"
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["A"] == "b"


# --- --bind and --setenv ----------------------------------------------------------


def test_cgroup_entry_prefix_joins_every_cgroup_before_the_command(tmp_path):
    """The wrapper writes its own PID into each cgroup.procs, then becomes the command (same PID)."""
    import subprocess
    cgroups = [tmp_path / "postroj.a b", tmp_path / "postroj.c"]
    for cgroup in cgroups:
        cgroup.mkdir()
    argv = postroj.cgroup_entry_prefix(cgroups) + ["sh", "-c", 'echo $$; printf "%s|" "$@"', "sh", "--", "x y"]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True).stdout.splitlines()
    assert out[1] == "--|x y|", "the command's own arguments arrive untouched, -- included"
    assert [(c / "cgroup.procs").read_text() for c in cgroups] == [out[0] + "\n"] * 2
    assert postroj.cgroup_entry_prefix([]) == []
    (cgroups[1] / "cgroup.procs").unlink()
    cgroups[1].rmdir()  # a cgroup that cannot be joined stops the start
    assert subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 125


def test_cgroups_are_made_where_the_host_can_and_said_once_where_it_cannot(tmp_path, monkeypatch, caplog):
    writable, unwritable = tmp_path / "unified", Path("/proc/postroj-cannot-make-this")
    writable.mkdir()
    monkeypatch.setattr(postroj, "systemd_cgroup_roots", lambda: [unwritable, writable])
    host = postroj.container_host(postroj.Settings(tmp_path / "home", tmp_path / "cache"), "testing", jobs=2)
    assert host.cgroup_roots == (writable,)
    assert postroj.make_cgroups(host, "postroj.m.1") == [writable / "postroj.m.1"]
    assert postroj.make_cgroups(host, "postroj.m.2") == [writable / "postroj.m.2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "--jobs 1" in warnings[0] and str(unwritable) in warnings[0]
    postroj.container_host(postroj.Settings(tmp_path / "home", tmp_path / "cache"), "testing", jobs=1)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1, "one at a time: nothing to say"


def test_remove_cgroups_removes_only_what_postroj_made(tmp_path, monkeypatch):
    """The list comes from a state file: only postroj.* directories inside a cgroup hierarchy, no symlink."""
    hierarchy, elsewhere = tmp_path / "unified", tmp_path / "elsewhere"
    ours = hierarchy / "postroj.m.1"
    (ours / "payload" / "init.scope").mkdir(parents=True)
    other = hierarchy / "x"
    other.mkdir()
    (elsewhere / "postroj.m.2").mkdir(parents=True)
    linked = hierarchy / "postroj.m.3"
    linked.symlink_to(elsewhere / "postroj.m.2")
    monkeypatch.setattr(postroj, "cgroup_mounts", lambda: [("cgroup2", "/", str(hierarchy))])
    postroj.remove_cgroups([str(ours), str(other), str(elsewhere / "postroj.m.2"), str(linked),
                            str(hierarchy / "postroj.gone")])
    assert not ours.exists()
    assert other.is_dir() and (elsewhere / "postroj.m.2").is_dir() and linked.is_symlink()


def test_parse_bind(tmp_path):
    assert postroj.parse_bind(str(tmp_path), False) == postroj.Bind(str(tmp_path), str(tmp_path), False)
    assert postroj.parse_bind("%s:/srv" % tmp_path, True) == postroj.Bind(str(tmp_path), "/srv", True)


def test_bind_option_escapes_colons():
    assert postroj.Bind("/a:b", "/c:d").option() == "--bind=/a\\:b:/c\\:d"
    assert postroj.Bind("/a", "/b", True).option() == "--bind-ro=/a:/b"


@pytest.mark.parametrize("spec, words", [
    ("/nonexistent/postroj-test", "does not exist"),
    ("", "invalid --bind"),
    (":/srv", "invalid --bind"),
    ("{tmp}:relative/path", "invalid bind target"),
    ("{tmp}:/srv/../etc", "invalid bind target"),
])
def test_parse_bind_refuses(usage_error, tmp_path, spec, words):
    assert words in usage_error(postroj.parse_bind, spec.format(tmp=tmp_path), False).message


def test_parse_setenv(usage_error):
    assert postroj.parse_setenv("A=b=c") == ("A", "b=c")
    assert postroj.parse_setenv("_X1=") == ("_X1", "")
    for spec in ("NOEQUALS", "=value", "1A=x", "A-B=x", "A B=x"):
        assert "invalid --setenv" in usage_error(postroj.parse_setenv, spec).message


# --- package managers -------------------------------------------------------------


CACHE = postroj.PACKAGE_CACHE_DIR
PACKAGES = ["systemd", "/run/postroj/packages/hello.deb"]
NAMES = ["nginx", "nginx-common"]
APT = ["apt-get", *postroj.APT_OPTIONS]
# what installs, upgrades, removes and purges run: apt as CI runs it, debconf asking nothing
QUIET_APT = ["env", "DEBIAN_FRONTEND=noninteractive", *APT]
APT_LISTING = ["env", "LC_ALL=C", *APT, "-o", "APT::Get::Show-Versions=1"]  # lists with versions, untranslated
DNF = ["dnf", "-y", "-q", "--setopt=keepcache=1", "--setopt=cachedir=%s" % CACHE]
NO_WEAK = ["--setopt=install_weak_deps=0"]
YUM = ["yum"] + DNF[1:]
MICRODNF = ["microdnf", "-y", "--setopt=keepcache=1", "--nodocs"]
ZYPPER = ["zypper", "--non-interactive", "--quiet", "--pkg-cache-dir=%s" % CACHE]
PACMAN = ["pacman", "--noconfirm", "--noprogressbar", "--cachedir=%s" % CACHE]
RPM_QUERY = ["rpm", "-qp", "--qf", "postroj-package\\t%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n"]
NO_LOCKING = ["-o", "Debug::NoLocking=1"]
# the packages the container has, before the first install and at the purge: one name a line
DPKG_INSTALLED = ["sh", "-c", "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' | "
                              "awk 'substr($1, 2, 1) != \"n\" { print $2 }'"]
RPM_INSTALLED = ["rpm", "-qa", "--qf", "%{NAME}\\n"]
DEB_QUERY = ["sh", "-c", 'for f; do dpkg-deb --show --showformat="postroj-package\\t\\${Package}\\t\\${Version}\\n" '
                         '"$f" || exit; done', "sh", *PACKAGES]

# Every verb of every package manager, as the whole command line: changing a verb (install to remove, dnf's
# install to erase) or an option that answers the questions, keeps the cache or works offline fails here.
VERBS = [
    ("apt", "install", (PACKAGES,), QUIET_APT + ["-q", "install", "-y", *PACKAGES]),
    ("apt", "install", (PACKAGES, False, False), QUIET_APT + ["-q", "install", "-y", "--no-install-recommends",
                                                        *PACKAGES]),
    ("apt", "install", (PACKAGES, True), QUIET_APT + ["-o", "Debug::NoLocking=1", "-q", "install", "-y", *PACKAGES]),
    ("apt", "download", (PACKAGES,), APT_LISTING + ["-q", "install", "-y", "--download-only", *PACKAGES]),
    ("apt", "download", (PACKAGES, False), APT_LISTING + ["-q", "install", "-y", "--download-only",
                                                          "--no-install-recommends", *PACKAGES]),
    ("apt", "refresh", (), APT + ["-qq", "update"]),
    ("apt", "remove", (NAMES,), QUIET_APT + ["-o", "Debug::NoLocking=1", "-q", "remove", "-y", *NAMES]),
    ("apt", "purge", (NAMES,), QUIET_APT + ["-o", "Debug::NoLocking=1", "-q", "purge", "-y", "--autoremove", *NAMES]),
    ("apt", "files", (NAMES,), ["dpkg", "-L", *NAMES]),
    ("apt", "identify", (PACKAGES,), DEB_QUERY),
    ("apt", "installed", (), DPKG_INSTALLED),
    ("apt", "resolve", (), ["echo", "postroj-resolving"]),
    ("apt", "install_without", (PACKAGES, ["libjq1"]), QUIET_APT + NO_LOCKING + [
        "-q", "install", "-y", "--no-install-recommends", *PACKAGES, "libjq1-"]),
    ("apt", "install_without", (PACKAGES, ["libjq1"], True), QUIET_APT + NO_LOCKING + [
        "-q", "-s", "install", "-y", "--no-install-recommends", *PACKAGES, "libjq1-"]),
    ("apt", "installed_as_dependencies", (NAMES,), ["apt-mark", "auto", *NAMES]),
    ("apt", "installed_by_hand", (NAMES,), ["apt-mark", "-q", "manual", *NAMES]),
    ("apt", "versions", (NAMES,), ["dpkg-query", "-W", "-f=${Package}\\t${Version}\\n", *NAMES]),
    ("apt", "available", (NAMES,), ["apt-cache", *postroj.APT_OPTIONS, "madison", *NAMES]),
    ("dnf", "install", (PACKAGES,), DNF + ["install", *PACKAGES]),
    ("dnf", "install", (PACKAGES, True), DNF + ["--cacheonly", "install", *PACKAGES]),
    ("dnf", "install", (PACKAGES, True, False), DNF + NO_WEAK + ["--cacheonly", "install", *PACKAGES]),
    ("dnf", "download", (PACKAGES, False), DNF + NO_WEAK + ["install", "--downloadonly", *PACKAGES]),
    ("dnf", "download", (PACKAGES,), DNF + ["install", "--downloadonly", *PACKAGES]),
    ("dnf", "refresh", (), []),
    ("dnf", "remove", (NAMES,), DNF + ["--cacheonly", "remove", *NAMES]),
    ("dnf", "purge", (NAMES,), DNF + ["--cacheonly", "remove", *NAMES]),
    ("dnf", "identify", (PACKAGES,), RPM_QUERY + PACKAGES),
    ("dnf", "files", (NAMES,), ["rpm", "-ql", *NAMES]),
    ("dnf", "installed", (), RPM_INSTALLED),
    ("dnf", "versions", (NAMES,), ["rpm", "-q", "--qf", "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", *NAMES]),
    ("yum", "install", (PACKAGES,), YUM + ["install", *PACKAGES]),
    ("yum", "remove", (NAMES,), YUM + ["--cacheonly", "remove", *NAMES]),
    ("yum", "install", (PACKAGES, True, False), YUM + NO_WEAK + ["--cacheonly", "install", *PACKAGES]),
    ("yum", "download", (PACKAGES,), YUM + ["install", "--downloadonly", *PACKAGES]),
    ("yum", "refresh", (), []),
    ("yum", "purge", (NAMES,), YUM + ["--cacheonly", "remove", *NAMES]),
    ("yum", "identify", (PACKAGES,), RPM_QUERY + PACKAGES),
    ("yum", "files", (NAMES,), ["rpm", "-ql", *NAMES]),
    ("yum", "installed", (), RPM_INSTALLED),
    ("yum", "versions", (NAMES,), ["rpm", "-q", "--qf", "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", *NAMES]),
    ("microdnf", "install", (PACKAGES,), MICRODNF + ["install", *PACKAGES]),
    ("microdnf", "download", (PACKAGES,), MICRODNF + ["makecache"]),
    ("microdnf", "remove", (NAMES,), MICRODNF + ["--cacheonly", "remove", *NAMES]),
    ("microdnf", "install", (PACKAGES, True, False), MICRODNF + NO_WEAK + ["--cacheonly", "install", *PACKAGES]),
    ("microdnf", "refresh", (), []),
    ("microdnf", "purge", (NAMES,), MICRODNF + ["--cacheonly", "remove", *NAMES]),
    ("microdnf", "identify", (PACKAGES,), RPM_QUERY + PACKAGES),
    ("microdnf", "files", (NAMES,), ["rpm", "-ql", *NAMES]),
    ("microdnf", "installed", (), RPM_INSTALLED),
    ("microdnf", "versions", (NAMES,), ["rpm", "-q", "--qf", "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", *NAMES]),
    ("zypper", "install", (PACKAGES,), ZYPPER + ["install", "--allow-unsigned-rpm", *PACKAGES]),
    ("zypper", "install", (PACKAGES, True, False), ZYPPER + ["--no-refresh", "install", "--no-recommends",
                                                             "--allow-unsigned-rpm", *PACKAGES]),
    ("zypper", "download", (PACKAGES,), ZYPPER + ["install", "--allow-unsigned-rpm", "--download-only", *PACKAGES]),
    ("zypper", "refresh", (), ["zypper", "--non-interactive", "--quiet", "refresh"]),
    ("zypper", "remove", (NAMES,), ZYPPER + ["--no-refresh", "remove", "--clean-deps", *NAMES]),
    ("zypper", "purge", (NAMES,), ZYPPER + ["--no-refresh", "remove", "--clean-deps", *NAMES]),
    ("zypper", "identify", (PACKAGES,), RPM_QUERY + PACKAGES),
    ("zypper", "files", (NAMES,), ["rpm", "-ql", *NAMES]),
    ("zypper", "installed", (), RPM_INSTALLED),
    ("zypper", "versions", (NAMES,), ["rpm", "-q", "--qf", "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n", *NAMES]),
    ("pacman", "install", (NAMES,), PACMAN + ["-Sy", "--needed", *NAMES]),
    ("pacman", "install", (NAMES, True), PACMAN + ["-S", "--needed", *NAMES]),
    ("pacman", "install", (["/run/postroj/packages/a.pkg.tar.zst"],), PACMAN + [
        "-U", "--needed", "/run/postroj/packages/a.pkg.tar.zst"]),
    ("pacman", "download", (NAMES,), PACMAN + ["-Syw", "--needed", *NAMES]),
    ("pacman", "download", (["/run/postroj/packages/a.pkg.tar.zst"],), PACMAN + [
        "-Uw", "--needed", "/run/postroj/packages/a.pkg.tar.zst"]),
    ("pacman", "refresh", (), []),
    ("pacman", "remove", (NAMES,), PACMAN + ["-R", *NAMES]),
    ("pacman", "purge", (NAMES,), PACMAN + ["-Rns", *NAMES]),
    ("pacman", "identify", (["/a.pkg.tar.zst"],), [
        "sh", "-c", 'found=$(pacman -Qp "$@") && printf "%s\\n" "$found" | sed "s/^/postroj-package\\t/; s/ /\\t/"',
        "sh", "/a.pkg.tar.zst"]),
    ("pacman", "files", (NAMES,), ["pacman", "-Qlq", *NAMES]),
    ("pacman", "installed", (), ["pacman", "-Qq"]),
    ("pacman", "versions", (NAMES,), ["sh", "-c", 'pacman -Q "$@" | tr " " "\\t"', "sh", *NAMES]),
]


@pytest.mark.parametrize("manager, verb, args, expected", VERBS,
                         ids=["%s-%s-%d" % (m, v, i) for i, (m, v, _, _) in enumerate(VERBS)])
def test_package_manager_verbs(manager, verb, args, expected):
    assert getattr(postroj.package_manager(manager), verb)(*args) == expected


# what a package manager's kind has that is not a command line of its own
NOT_VERBS = {"on_machine", "base"}


def verbs_of(kind) -> "set[str]":
    """The command lines a package manager's kind builds: its public methods."""
    return {name for name in dir(kind) if not name.startswith("_") and callable(getattr(kind, name))} - NOT_VERBS


# what dependency layers need, which only apt offers (layers are apt's): the others refuse it
APT_ONLY = {"install_without", "installed_as_dependencies", "installed_by_hand", "available"}


@pytest.mark.parametrize("manager", [m for m in ("dnf", "yum", "microdnf", "zypper", "pacman")])
def test_only_apt_makes_dependency_layers_and_names_versions(manager):
    kind = postroj.package_manager(manager)
    assert isinstance(kind, postroj.PackageManager) and not kind.keeps_lists
    assert kind.resolve() == [] and kind.available(NAMES) == []  # --upgrade-from archive: what an install takes
    assert kind.installed_by_hand(NAMES) == []  # no such mark: purge after a release upgrade (apt's) needs none
    for verb in APT_ONLY - {"available", "installed_by_hand"}:
        with pytest.raises(NotImplementedError):
            getattr(kind, verb)(NAMES, *([[]] if verb == "install_without" else []))


def test_every_package_manager_has_every_verb_tested():
    """Every verb of every manager is in VERBS as a whole command line, a verb added later too."""
    shared = {"install", "download", "refresh", "remove", "purge", "identify", "files", "installed", "versions"}
    tested = {(m, v) for m, v, _, _ in VERBS}
    for manager in postroj.ManagerName:
        verbs = verbs_of(postroj.package_manager(manager)) - {"resolve"}
        if manager != postroj.ManagerName.APT:
            verbs -= APT_ONLY
        assert shared <= verbs, "%s lacks %s" % (manager, shared - verbs)
        untested = sorted(v for v in verbs if (str(manager), v) not in tested)
        assert not untested, "%s: no command line of %s in VERBS" % (manager, ", ".join(untested))
    assert {m for m, _ in tested} == {str(m) for m in postroj.ManagerName}


def test_a_whole_machines_apt_locks_and_the_others_are_the_same():
    """A VM's apt (on_machine) takes apt's locks, as other runs of apt may be beside it; the rest is the same."""
    machine = postroj.package_manager("apt").on_machine()
    assert machine.install(PACKAGES, True) == QUIET_APT + ["-q", "install", "-y", *PACKAGES]
    assert machine.remove(NAMES) == QUIET_APT + ["-q", "remove", "-y", *NAMES]
    assert machine.purge(NAMES) == QUIET_APT + ["-q", "purge", "-y", "--autoremove", *NAMES]
    assert machine.install_without(PACKAGES, ["libjq1"]) == QUIET_APT + [
        "-q", "install", "-y", "--no-install-recommends", *PACKAGES, "libjq1-"]
    assert machine.installed() == DPKG_INSTALLED
    for manager in postroj.ManagerName:
        if manager != postroj.ManagerName.APT:
            kind = postroj.package_manager(manager)
            assert kind.on_machine() is kind


FAKE_QUERIES = {
    # each lists what the real one lists: nginx installed, nginx-common removed with its configuration kept
    # (dpkg) or installed, gone purged (dpkg: not-installed); only for its own listing query
    "dpkg-query": '[ "$1 $2" = "-W -f=\\${db:Status-Abbrev} \\${Package}\\n" ] || exit 2\n'
                  'printf "ii  nginx\\nrc  nginx-common\\nun  gone\\n"\n',
    "rpm": '[ "$1 $2 $3" = "-qa --qf %{NAME}\\n" ] || exit 2\nprintf "nginx\\nnginx-common\\n"\n',
    "pacman": '[ "$1" = -Qq ] || exit 2\nprintf "nginx\\nnginx-common\\n"\n',
}


@pytest.mark.parametrize("manager, tool", [("apt", "dpkg-query"), ("dnf", "rpm"), ("yum", "rpm"),
                                           ("microdnf", "rpm"), ("zypper", "rpm"), ("pacman", "pacman")])
def test_installed_prints_the_names_the_package_manager_knows(tmp_path, manager, tool):
    """Run against a fake of the query tool that answers only its listing query (dpkg-query -W, rpm -qa,
    pacman -Qq): another verb in its place (rpm -e, pacman -R) prints no name, and purge would think remove
    took it all and that the installs pulled in nothing."""
    import subprocess
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / tool
    fake.write_text("#!/bin/sh\n" + FAKE_QUERIES[tool])
    fake.chmod(0o755)
    proc = subprocess.run(postroj.package_manager(manager).installed(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={"PATH": "%s:/usr/bin:/bin" % (tmp_path / "bin")})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "nginx\nnginx-common\n", "")


def test_apt_identifies_package_files_through_dpkg_deb(tmp_path):
    import subprocess
    deb = tmp_path / "hello_1.0_all.deb"
    (tmp_path / "p" / "DEBIAN").mkdir(parents=True)
    (tmp_path / "p" / "DEBIAN" / "control").write_text(
        "Package: hello\nVersion: 1.0-2\nArchitecture: all\nMaintainer: x <x@y>\nDescription: d\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tmp_path / "p"), str(deb)], check=True,
                   stdout=subprocess.DEVNULL)
    out = subprocess.run(postroj.package_manager("apt").identify([str(deb), str(deb)]), stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    assert out == "postroj-package\thello\t1.0-2\n" * 2


def test_an_unknown_package_manager_is_an_error():
    with pytest.raises(postroj.PostrojError) as error:
        postroj.package_manager("apk")
    assert "apt" in error.value.hint


def test_provisioning_installs_without_recommendations():
    assert postroj.install_command("apt", PACKAGES) == QUIET_APT + ["-q", "install", "-y",
                                                                   "--no-install-recommends", *PACKAGES]
    assert postroj.install_command("dnf", PACKAGES) == DNF + NO_WEAK + ["install", *PACKAGES]


def test_apt_keeps_its_downloads_in_postrojs_cache():
    assert all(flag == "-o" for flag in postroj.APT_OPTIONS[::2])
    pairs = postroj.APT_OPTIONS[1::2]
    assert "Dir::Cache::Archives=%s/" % CACHE in pairs
    assert "Dir::State::Lists=%s/lists/" % CACHE in pairs
    assert "APT::Keep-Downloaded-Packages=true" in pairs


def test_package_transaction_refreshes_then_installs_in_one_run():
    argv = postroj.package_transaction("apt", PACKAGES, refresh=True)
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("apt-get ") and argv[2].endswith(" update && exec \"$@\"")
    assert argv[3:] == ["sh", *postroj.install_command("apt", PACKAGES)]
    assert postroj.package_transaction("dnf", PACKAGES, refresh=True) == postroj.install_command("dnf", PACKAGES)


def test_order_probes():
    probes = [postroj.Probe("command", "a"), postroj.Probe("network", "tcp://x:1"), postroj.Probe("unit", "u"),
              postroj.Probe("copy", "/a:/b"), postroj.Probe("package", "/p.deb"), postroj.Probe("command", "b")]
    assert [(p.kind, p.target) for p in postroj.order_probes(probes)] == [
        ("package", "/p.deb"), ("copy", "/a:/b"), ("unit", "u"), ("network", "tcp://x:1"), ("command", "a"),
        ("command", "b")]


# --- Vagrant ----------------------------------------------------------------------


def test_vagrantfile_for_windows():
    box = postroj.find_box("windows-2022")
    text = postroj.vagrantfile_text(box)
    assert 'config.vm.box = "StefanScherer/windows_2022"' in text
    assert 'config.vm.communicator = "winrm"' in text
    assert "config.vm.guest = :windows" in text
    assert "v.memory = 4096" in text
    assert 'config.vm.hostname = "windows-2022"' in text


def test_vagrantfile_for_linux():
    text = postroj.vagrantfile_text(postroj.find_box("ubuntu-22.04"), cpus=4, memory=512)
    assert 'config.vm.communicator = "ssh"' in text
    assert ":windows" not in text and "winrm" not in text
    assert 'config.vm.hostname = "ubuntu-22-04"' in text
    assert "v.cpus = 4" in text and "v.memory = 512" in text
    assert text.count("do |") == text.count("\n  end\n") + 1  # every provider block is closed
    assert text.rstrip().endswith("end")


def test_vagrantfile_for_a_vagrant_cloud_windows_box():
    text = postroj.vagrantfile_text(postroj.find_box("vagrant:StefanScherer/windows_2019"))
    assert "config.vm.guest = :windows" in text
    assert 'config.vm.communicator = "winrm"' in text


@pytest.mark.parametrize("raw, clean", [
    ("\x1b[0;32mhello\x1b[0m\r\nworld\r\n", "hello\nworld\n"),
    ("\x1b]0;Administrator: PowerShell\x07PS C:\\> ", "PS C:\\> "),
    ("\x1b[?25l\x1b[2J\x1b[HReady\r\n\x1b[?25h", "Ready\n"),
    ("progress 10%\rprogress 100%\r\n", "progress 10%progress 100%\n"),
    ("plain text\n", "plain text\n"),
])
def test_clean_console(raw, clean):
    assert postroj.clean_console(raw) == clean


@pytest.mark.parametrize("text, outside", [
    ("0::/user.slice/session-1.scope\n", ""),
    ("12:pids:/\n1:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n", ""),
    ("1:name=systemd:/../../payload\n0::/../../payload\n", "1:name=systemd:/../../payload"),
    ("0::/..\n", "0::/.."),
])
def test_a_cgroup_outside_the_namespace_is_found(text, outside):
    assert postroj.cgroup_outside_namespace(text) == outside


def test_outside_the_cgroup_namespace_nspawn_runs_in_a_scope_of_its_own_or_is_refused():
    assert postroj.nspawn_scope_prefix("", scopes=False) == ()
    assert postroj.nspawn_scope_prefix("0::/../payload", scopes=True)[:2] == ("systemd-run", "--scope")
    with pytest.raises(postroj.PostrojError) as info:
        postroj.nspawn_scope_prefix("0::/../payload", scopes=False)
    assert "outside its cgroup namespace" in info.value.message and "nsenter --all" in info.value.hint


def test_stale_run_cgroups_of_a_killed_postroj_are_removed(tmp_path, monkeypatch):
    """A postroj killed by SIGKILL during provisioning leaves its run's cgroup, its lock free; the next run of
    the same POSTROJ_HOME removes it, and leaves a run cgroup whose lock is held, another home's (whatever
    its PID namespace) and a container's."""
    hierarchy = tmp_path / "unified"
    locks = tmp_path / "locks"
    locks.mkdir()
    stale = hierarchy / "postroj.run-0a1b2c3d-11111111"
    (stale / "payload").mkdir(parents=True)
    (locks / "run-11111111.lock").write_text("")
    mine = hierarchy / "postroj.run-0a1b2c3d-22222222"
    others = hierarchy / "postroj.run-99999999-33333333"
    container = hierarchy / "postroj.postroj-debian-bookworm.0a1b2c3d.44444444"
    for path in (mine, others, container):
        path.mkdir()
    monkeypatch.setattr(postroj, "cgroup_mounts", lambda: [("cgroup2", "/", str(hierarchy))])
    monkeypatch.setattr(postroj, "systemd_cgroup_roots", lambda: [hierarchy])
    with postroj.file_lock(locks / "run-22222222.lock"):
        assert postroj.remove_stale_run_cgroups("0a1b2c3d", locks) == [stale.name]
    assert not stale.exists() and mine.is_dir() and others.is_dir() and container.is_dir()
    assert not (locks / "run-11111111.lock").exists()
