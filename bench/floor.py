#!/usr/bin/env python3
"""The hand-written floor: what a careful person does with systemd-nspawn alone to run one command in a
booted throw-away container of an image directory, and to probe a package the same way.

One cycle, as one would type it:

1. make an empty overlay directory (in --work DIR);
2. with --package DEB: `apt-get update && apt-get install ./DEB` in a non-booted
   `systemd-nspawn --overlay=ROOTFS:UPPER:/` on the host's network, apt's lists and downloads bound in
   from --apt-cache DIR, which is kept between runs as postroj keeps its package cache;
3. `systemd-nspawn --boot --overlay=ROOTFS:UPPER:/ --register=no --keep-unit --notify-ready=yes`
   (--private-network if asked), learning the container's leader PID and that its systemd has
   finished booting (READY=1) from nspawn's notify messages;
4. with --unit: `systemctl is-active UNIT` through nsenter until it says active; with --url: an HTTP GET
   from inside the container's network namespace (nsenter --net) until it answers 2xx or 3xx;
   then COMMAND, if given, through nsenter;
5. power the container off (SIGRTMIN+4 to its systemd), wait for nspawn to exit, remove the overlay.

Exits with COMMAND's status, 0 without one; when a step fails, says which on stderr and exits 1.

usage: floor.py [--work DIR] [--private-network] ROOTFS COMMAND [ARG...]
       floor.py [--work DIR] --package DEB --apt-cache DIR [--unit UNIT] [--url URL] --private-network ROOTFS
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT = 60
NSPAWN = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--link-journal=no", "--timezone=off"]

# retried in the container's network namespace until it answers or the time is up
HTTP_GET = """
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5).read()
        sys.exit(0)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            sys.exit(0)
        problem = "HTTP %d" % exc.code
    except OSError as exc:
        problem = str(exc)
    if time.monotonic() > deadline:
        sys.exit("%s: %s" % (sys.argv[1], problem))
    time.sleep(0.05)
"""


def overlay(rootfs: str, upper: str) -> str:
    return "--overlay=%s:%s:/" % (rootfs, upper)


def install(rootfs: str, upper: str, deb: str, cache: str) -> None:
    """apt-get install ./DEB into the overlay, before the boot, with the host's network."""
    for sub in ("archives/partial", "lists/partial"):
        os.makedirs(os.path.join(cache, sub), exist_ok=True)
    inner = "/run/floor/" + os.path.basename(deb)
    cmd = NSPAWN + [
        "--directory=%s" % rootfs,
        overlay(rootfs, upper),
        "--resolv-conf=replace-host",
        "--bind=%s:/var/cache/apt/archives" % os.path.join(cache, "archives"),
        "--bind=%s:/var/lib/apt/lists" % os.path.join(cache, "lists"),
        "--bind-ro=%s:/run/floor" % os.path.dirname(os.path.abspath(deb)),
        "--setenv=DEBIAN_FRONTEND=noninteractive",
        "sh", "-c", 'apt-get update -q && apt-get install -y -q --no-install-recommends "$1"', "sh", inner,
    ]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit("installing %s failed (%d):\n%s" % (deb, proc.returncode, proc.stdout.decode()[-3000:]))


def boot(rootfs: str, upper: str, private_network: bool, address: str) -> subprocess.Popen:
    """systemd-nspawn --boot on the overlay, telling its progress to the notify socket at `address`."""
    cmd = NSPAWN + ["--boot", "--directory=%s" % rootfs, overlay(rootfs, upper), "--notify-ready=yes",
                    "--console=passive", "--resolv-conf=off"]
    if private_network:
        cmd.append("--private-network")
    return subprocess.Popen(cmd, env=dict(os.environ, NOTIFY_SOCKET=address), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(nspawn: subprocess.Popen, notify: socket.socket) -> int:
    """The container's leader PID, once its systemd has finished booting (READY=1)."""
    leader, ready = 0, False
    deadline = time.monotonic() + TIMEOUT
    while not ready:
        if nspawn.poll() is not None:
            sys.exit("systemd-nspawn exited with %d while booting" % nspawn.returncode)
        if time.monotonic() > deadline:
            sys.exit("the container did not finish booting within %d s" % TIMEOUT)
        if select.select([notify], [], [], 0.5)[0]:
            for field in notify.recv(4096).decode().split("\n"):
                if field.startswith("X_NSPAWN_LEADER_PID="):
                    leader = int(field.split("=", 1)[1])
                ready = ready or field == "READY=1"
    return leader


def power_off(nspawn: subprocess.Popen, leader: int) -> None:
    """Power the container off and wait for nspawn; kill both when that takes too long."""
    if nspawn.poll() is not None:
        return
    if leader:
        os.kill(leader, signal.SIGRTMIN + 4)  # systemd: poweroff
    else:
        nspawn.terminate()  # not booted yet: nspawn halts the container itself
    try:
        nspawn.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        if leader:
            os.kill(leader, signal.SIGKILL)
        nspawn.kill()
        nspawn.wait()


def wait_active(enter: "list[str]", unit: str) -> bool:
    """Ask systemctl is-active until the unit is active; False when it failed or the time ran out."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        state = subprocess.run(enter + ["systemctl", "is-active", unit], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        if state == "active":
            return True
        if state == "failed" or time.monotonic() > deadline:
            print("%s is %s" % (unit, state or "unknown"), file=sys.stderr)
            return False
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/var/tmp", help="where the overlay directory goes")
    parser.add_argument("--private-network", action="store_true")
    parser.add_argument("--package", help="a .deb to install before the boot")
    parser.add_argument("--apt-cache", help="apt's lists and downloads, kept between runs (with --package)")
    parser.add_argument("--unit", help="a unit that must become active")
    parser.add_argument("--url", help="a URL that must answer inside the container's network")
    parser.add_argument("rootfs")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.package and not args.apt_cache:
        parser.error("--package needs --apt-cache")
    rootfs = os.path.realpath(args.rootfs)
    work = tempfile.mkdtemp(prefix="floor.", dir=args.work)
    nspawn, leader = None, 0
    try:
        upper = os.path.join(work, "upper")
        os.mkdir(upper, 0o755)  # the container's / gets the upper directory's mode
        if args.package:
            install(rootfs, upper, args.package, args.apt_cache)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = os.path.join(work, "notify")
        notify.bind(address)
        nspawn = boot(rootfs, upper, args.private_network, address)
        leader = wait_ready(nspawn, notify)
        enter = ["nsenter", "--target=%d" % leader, "--all"]
        if args.unit and not wait_active(enter, args.unit):
            return 1
        if args.url:
            check = ["nsenter", "--target=%d" % leader, "--net", sys.executable, "-I", "-c", HTTP_GET, args.url,
                     str(TIMEOUT)]
            if subprocess.run(check, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode != 0:
                return 1
        if args.command:
            return subprocess.run(enter + args.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode
        return 0
    finally:
        if nspawn:
            power_off(nspawn, leader)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
