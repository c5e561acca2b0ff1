"""The Vagrantfiles postroj writes pass the real `vagrant validate` (Debian's vagrant; `make setup`).

What cannot run here is stood in for at the narrowest point, so that the rest is vagrant's own check:
- VirtualBox: tests/fakes/virtualbox/VBoxManage answers `--version`, all vagrant asks of it to load and
  validate the virtualbox provider's block;
- the winrm gem, which Debian does not package: vagrant's winrm communicator requires it as soon as a
  machine whose communicator is "winrm" is loaded, so Debian's `vagrant validate` of a Windows
  Vagrantfile dies with `cannot load such file -- winrm (LoadError)` before it checks anything
  (test_windows_vagrantfile_without_the_winrm_gem pins that down). tests/fakes/winrm-gem defines only
  the names the communicator refers to while it loads; with it on RUBYLIB, vagrant checks the winrm.*
  settings, the guest and both providers' blocks for real (test_validation_is_real shows it rejects
  a bad winrm setting).
Each provider's block is checked only when that provider is the one in use, hence every Vagrantfile
is validated once per provider.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import postroj as postroj_module

FAKES = Path(__file__).resolve().parent.parent / "fakes"
PROVIDERS = ("libvirt", "virtualbox")
WINRM_LOAD_ERROR = "cannot load such file -- winrm (LoadError)"
# references `postroj vm up vagrant:OWNER/BOX` accepts: with a long Windows name, odd characters
REFERENCES = ("vagrant:generic/alpine319", "vagrant:gusztavvargadr/windows-server-2022-standard",
              "vagrant:Some_Owner/box.v2", "vagrant:.hidden/box")


@pytest.fixture(scope="module")
def vagrant_bin() -> str:
    path = shutil.which("vagrant")
    if not path or Path(path).resolve().parent == FAKES.resolve():
        if os.environ.get("CI") == "true":
            pytest.fail("vagrant is not installed, but CI must validate the Vagrantfiles: run `make setup`")
        pytest.skip("vagrant is not installed (`make setup` installs Debian's vagrant)")
    return path


@pytest.fixture(scope="module")
def vagrant_home(tmp_path_factory) -> Path:
    """VAGRANT_HOME of these tests' own: nothing of the host's vagrant is read or written."""
    return tmp_path_factory.mktemp("vagrant-home")


@pytest.fixture(scope="module")
def winrm_gem_missing(vagrant_bin, vagrant_home, tmp_path_factory) -> bool:
    """Whether this vagrant lacks the winrm gem (Debian's does): then the stand-in goes on RUBYLIB."""
    directory = write_vagrantfile(tmp_path_factory.mktemp("winrm-probe"), postroj_module.find_box("windows-2022"))
    proc = validate(vagrant_bin, vagrant_home, directory, "libvirt", winrm_stub=False)
    return WINRM_LOAD_ERROR in proc.stderr


def write_vagrantfile(directory: Path, box: postroj_module.Box, text: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Vagrantfile").write_text(text or postroj_module.vagrantfile_text(box))
    return directory


def validate(vagrant_bin: str, home: Path, directory: Path, provider: str, *,
             winrm_stub: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, VAGRANT_HOME=str(home), VAGRANT_DEFAULT_PROVIDER=provider, VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_NO_COLOR="1", PATH="%s:%s" % (FAKES / "virtualbox", os.environ["PATH"]))
    env.pop("VAGRANT_CWD", None)
    if winrm_stub:
        env["RUBYLIB"] = ":".join(p for p in (str(FAKES / "winrm-gem"), os.environ.get("RUBYLIB", "")) if p)
    return subprocess.run([vagrant_bin, "validate"], cwd=str(directory), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def assert_valid(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, "vagrant validate failed:\n%s\n%s" % (proc.stdout, proc.stderr[-3000:])
    assert "Vagrantfile validated successfully." in proc.stdout


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("label", [box.label for box in postroj_module.BOXES])
def test_curated_box_vagrantfile_validates(vagrant_bin, vagrant_home, winrm_gem_missing, tmp_path, label, provider):
    box = postroj_module.find_box(label)
    directory = write_vagrantfile(tmp_path / label, box)
    proc = validate(vagrant_bin, vagrant_home, directory, provider,
                    winrm_stub=box.communicator == "winrm" and winrm_gem_missing)
    assert_valid(proc)


@pytest.mark.parametrize("reference", REFERENCES)
def test_every_box_reference_accepted_gives_a_valid_vagrantfile(vagrant_bin, vagrant_home, winrm_gem_missing,
                                                                tmp_path, reference):
    """A reference postroj takes must not turn into a Vagrantfile vagrant refuses (the hostname is
    derived from it)."""
    box = postroj_module.find_box(reference)
    directory = write_vagrantfile(tmp_path / "box", box)
    proc = validate(vagrant_bin, vagrant_home, directory, "libvirt",
                    winrm_stub=box.communicator == "winrm" and winrm_gem_missing)
    assert_valid(proc)


@pytest.mark.parametrize("reference, words", [("vagrant:___/___", "gives no usable name"),
                                              ("vagrant:a b/c", "malformed box reference")])
def test_box_references_that_give_no_vagrantfile_are_refused_up_front(reference, words):
    with pytest.raises(postroj_module.UsageError) as refused:
        postroj_module.find_box(reference)
    assert words in refused.value.message and "vagrant:OWNER/BOX" in refused.value.hint


def test_windows_vagrantfile_without_the_winrm_gem(vagrant_bin, vagrant_home, tmp_path):
    """What `vagrant validate` does with a Windows Vagrantfile when vagrant has no winrm gem, as on
    Debian: it fails while loading the winrm communicator, before any configuration is checked.
    Where vagrant has the gem (HashiCorp's packages), the file validates without the stand-in."""
    directory = write_vagrantfile(tmp_path / "windows", postroj_module.find_box("windows-2022"))
    proc = validate(vagrant_bin, vagrant_home, directory, "libvirt", winrm_stub=False)
    if proc.returncode == 0:
        assert_valid(proc)
        return
    assert proc.returncode == 1
    assert WINRM_LOAD_ERROR in proc.stderr, proc.stderr[-3000:]
    assert "plugins/communicators/winrm/shell.rb" in proc.stderr
    # the same file with an ssh communicator gets past that point and validates: only winrm is missing
    text = (directory / "Vagrantfile").read_text()
    assert 'config.vm.communicator = "winrm"' in text
    write_vagrantfile(tmp_path / "ssh", None, text.replace('communicator = "winrm"', 'communicator = "ssh"'))
    assert_valid(validate(vagrant_bin, vagrant_home, tmp_path / "ssh", "libvirt", winrm_stub=False))


@pytest.mark.parametrize("label, provider, bad, complaint", [
    ("debian-12", "libvirt", ("v.memory = 1024\n  end\nend", "v.memory = 1024\n    v.no_such_setting = 1\n  end\nend"),
     "Libvirt Provider:\n* The following settings shouldn't exist: no_such_setting"),
    ("debian-12", "virtualbox", ("v.memory = 1024\n  end\n  config.vm.provider \"libvirt\"",
                                 "v.memory = 1024\n    v.no_such_setting = 1\n  end\n  config.vm.provider \"libvirt\""),
     "VirtualBox Provider:\n* The following settings shouldn't exist: no_such_setting"),
    ("windows-2022", "libvirt", ("basic_auth_only = true", "basic_auth_only = \"yes\""),
     "winrm.basic_auth_only must be a boolean."),
    ("ubuntu-22.04", "libvirt", ('hostname = "ubuntu-22-04"', 'hostname = "-ubuntu"'),
     "hostname set for the VM 'default' should only contain letters"),
])
def test_validation_is_real(vagrant_bin, vagrant_home, winrm_gem_missing, tmp_path, label, provider, bad,
                            complaint):
    """The checks above mean something: with the stand-ins in place, vagrant still rejects a bad
    setting in each provider's block and in the winrm settings."""
    box = postroj_module.find_box(label)
    text = postroj_module.vagrantfile_text(box)
    assert bad[0] in text
    directory = write_vagrantfile(tmp_path / label, box, text.replace(bad[0], bad[1]))
    proc = validate(vagrant_bin, vagrant_home, directory, provider,
                    winrm_stub=box.communicator == "winrm" and winrm_gem_missing)
    assert proc.returncode == 1
    assert complaint in proc.stdout + proc.stderr, proc.stdout + proc.stderr[-3000:]


def test_vagrantfile_postroj_vm_up_writes_validates(vagrant_bin, vagrant_home, postroj, tmp_path):
    """The file `postroj vm up --cpus --memory` writes (vagrant itself faked for the `up`) validates."""
    env = {"PATH": "%s:%s" % (FAKES, os.environ["PATH"]), "VAGRANT_FAKE_LOG": str(tmp_path / "calls.jsonl")}
    postroj("vm", "up", "fedora-40", "--cpus", "3", "--memory", "1536", env=env, check=0)
    written = (postroj.home / "vagrant" / "fedora-40" / "Vagrantfile").read_text()
    postroj("vm", "destroy", "fedora-40", env=env, check=0)
    assert written.count("v.cpus = 3") == 2 and written.count("v.memory = 1536") == 2
    # a clean directory: the fake's .vagrant state must not make vagrant look for a machine
    directory = write_vagrantfile(tmp_path / "copy", None, written)
    for provider in PROVIDERS:
        assert_valid(validate(vagrant_bin, vagrant_home, directory, provider, winrm_stub=False))
