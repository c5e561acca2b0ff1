"""Unit tests run without root, containers or the network, and never touch /var/lib/postroj: every test
gets its own POSTROJ_HOME and POSTROJ_CACHE below tmp_path."""

from __future__ import annotations

import signal

import pytest

import postroj


@pytest.fixture(autouse=True)
def own_state_root(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTROJ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTROJ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("POSTROJ_MODE", raising=False)
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    # main() restores the handlers it installs, except after a stop signal, when postroj is ending and keeps
    # them ignored: a test that sends one gets pytest's own back here.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.fixture
def usage_error():
    """usage_error(call, *args): the UsageError call(*args) raises, checked for exit code 2 and a hint."""

    def check(call, *args, **kwargs):
        with pytest.raises(postroj.UsageError) as info:
            call(*args, **kwargs)
        assert info.value.exit_code == 2
        assert info.value.hint, "a refusal says how to fix it"
        return info.value

    return check
