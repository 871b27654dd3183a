"""A local search's Ray listens on loopback only: nothing it starts answers from another machine.

Listening sockets are read from /proc (what `ss -ltnp` reads), so the test needs no iproute2: a TCP socket in
state LISTEN in /proc/net/tcp{,6}, owned by this process or a process it started (Ray's GCS, raylet, agents,
dashboard and workers are all its descendants), must be bound to a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest
import ray
import ray._private.ray_constants as ray_constants

from tuning.engine import launch

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _listening_inodes() -> dict[str, str]:
    """inode -> local address of every listening TCP socket in this network namespace."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                out[fields[9]] = fields[1]
    return out


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net/tcp's 'IP:PORT' in hex: the IP as 32-bit words in host (little-endian) byte order."""
    ip_hex, port_hex = hex_address.split(":")
    raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # gRPC's dual-stack sockets show 127.0.0.1 as ::ffff:127.0.0.1
    return ip, int(port_hex, 16)


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(text.rpartition(")")[2].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.update(children)
        frontier.extend(children)
    return found


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def ray_listeners() -> list[tuple[str, int, object, int]]:
    """(process name, pid, IP, port) of each listening TCP socket owned by this process or its descendants."""
    inodes = _listening_inodes()
    found = []
    for pid in sorted(_descendants(os.getpid())):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in inodes:
                found.append((_process_name(pid), pid, *_address(inodes[inode])))
    return found


def test_proc_addresses_decode_as_ss_prints_them():
    assert _address("0100007F:1F90") == (ipaddress.ip_address("127.0.0.1"), 8080)
    assert _address("00000000:18EB") == (ipaddress.ip_address("0.0.0.0"), 6379)
    assert _address("0000000000000000FFFF00000100007F:A0C5")[0] == ipaddress.ip_address("127.0.0.1")
    assert _address("00000000000000000000000001000000:0050")[0] == ipaddress.ip_address("::1")
    assert not _address("00000000000000000000000000000000:0050")[0].is_loopback  # [::], every interface


@pytest.mark.parametrize("address, single_node", [(None, True), ("10.0.0.1:6379", False), ("auto", False)])
def test_only_a_ray_started_here_is_told_it_is_single_node(monkeypatch, address, single_node):
    """Ray's single-node switch is on while ray.init() starts a local Ray only; joining a cluster (--address)
    runs as before, and the switch is back to what it was once ray.init() returns."""
    before = ray_constants.ENABLE_RAY_CLUSTER
    seen = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(ray_constants.ENABLE_RAY_CLUSTER))
    launch.start_ray(address, None, None, log=lambda *_: None)
    after = ray_constants.ENABLE_RAY_CLUSTER
    assert seen == [before and not single_node] and after == before


@pytest.fixture
def local_ray():
    launch.start_ray(None, None, None, log=lambda *_: None)
    try:
        yield
    finally:
        ray.shutdown()


def _started(listeners, worker: int) -> bool:
    """Whether the servers that must exist are up: GCS, raylet, a worker and (with ray[default]) the agent."""
    names = {name for name, *_ in listeners}
    agent = launch._dashboard_missing() is not None or any(n.startswith("ray::Dashboard") for n in names)
    return {"gcs_server", "raylet"} <= names and worker in {pid for _, pid, *_ in listeners} and agent


def test_a_local_ray_listens_on_loopback_only(local_ray):
    worker = ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker, with its own gRPC server
    deadline = time.monotonic() + 60  # agents open their ports while they start
    while not _started(listeners := ray_listeners(), worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _started(listeners, worker), listeners
    exposed = [(name, pid, str(ip), port) for name, pid, ip, port in listeners if not ip.is_loopback]
    assert exposed == [], f"listening beyond loopback: {exposed}"
