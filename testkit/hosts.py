"""Separate hosts on one Linux machine: network, mount and UTS namespaces on a private bridge.

Each `Host` is a network namespace with its own address in the benchmarking
range (198.18.0.0/15), its own hostname, and a mount namespace in which the root
filesystem is read-only and /tmp, /var/tmp and /dev/shm are its own empty tmpfs:
a process on one host cannot see or leave a file another host reads, so a path
shared by accident fails loudly instead of working by luck. The bridge lives in a
namespace of its own too, so no address or route is added to the machine's own
network and the hosts' traffic never leaves the namespaces this module makes.

A long-lived holder process keeps each host's namespaces; every process of the
host enters them with `nsenter`. `Cluster.cut(host)` takes a host's link down
(a partition: its processes live on, its connections stall), `reconnect` brings
it back. Everything is removed on exit. Needs root and iproute2 / util-linux.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testkit.processes import wait_for

SUBNET_PREFIX = "198.18.0."
PRIVATE_MOUNTS = ("/tmp", "/var/tmp", "/dev/shm")
HOST_HOME = "/tmp/host"  # each host's working folder, on its private /tmp
CLONE_NEWNET = 0x40000000


def why_no_namespaces() -> str | None:
    """Why hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "the cluster test makes network namespaces: run it as root"
    for tool in ("ip", "nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"the cluster test needs `{tool}` (iproute2, util-linux)"
    probe = f"icprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this machine refuses network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


@dataclass
class Host:
    name: str
    address: str
    netns: str
    switch_port: str
    holder: subprocess.Popen[bytes]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as run inside this host: its network, mounts, hostname and home folder."""
        return [
            "nsenter",
            f"--target={self.holder.pid}",
            "--mount",
            "--uts",
            "--net",
            "--",
            "env",
            f"--chdir={HOST_HOME}",
            *argv,
        ]

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """A long-running process on this host, its output in `log` (on the test's side)."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.command(argv),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A command on this host, run to its end; its failure raises with its output."""
        done = subprocess.run(
            self.command(argv), env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.name}: {' '.join(argv)} exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        return done

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal a process of this host and everything it started (its session)."""
        if process.poll() is None:
            _signal(process, sig)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.kill(process, signal.SIGTERM)
        self.processes.clear()


class Cluster:
    """Hosts on one bridge; a context manager that removes every namespace it made."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"ic{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._ip("netns", "add", self.switch)
        self._ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        """A new host, `name` its hostname, on the next address of the bridge's /24."""
        index = len(self.hosts) + 2
        netns = f"ic{self.tag}-{name}"
        port = f"p{self.tag}{index}"  # the bridge's side of the host's cable (≤ 15 chars)
        address = f"{SUBNET_PREFIX}{index}"
        self._ip("netns", "add", netns)
        self._ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "eth0",
                 "netns", netns)  # fmt: skip
        self._ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        self._ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        self._ip("-n", netns, "link", "set", "eth0", "up")
        self._ip("-n", netns, "link", "set", "lo", "up")
        holder = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--uts",
             "--propagation", "private", "sh", "-c", _host_setup(name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert holder.stdout is not None
        line = holder.stdout.readline().decode().strip()  # the setup's last word, then it waits
        if line != "ready":
            holder.kill()
            raise RuntimeError(f"host {name} did not come up: {line} {holder.stdout.read()!r}")
        host = Host(name, address, netns, port, holder)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Unplug `host`: its packets go nowhere until `reconnect`."""
        self._ip("-n", self.switch, "link", "set", host.switch_port, "down")

    def reconnect(self, host: Host) -> None:
        self._ip("-n", self.switch, "link", "set", host.switch_port, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_all()
            host.kill(host.holder)
        for netns in [*(h.netns for h in self.hosts.values()), self.switch]:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    """`sig` to the process's session when it leads one (what it started dies too)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getsid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)


def _host_setup(name: str) -> str:
    """The holder's script: private scratch mounts, a read-only root, a hostname; then wait."""
    mounts = " && ".join(f"mount -t tmpfs -o mode=1777 tmpfs {path}" for path in PRIVATE_MOUNTS)
    return (
        f"{mounts} && mount -o remount,bind,ro / && hostname {name} "
        f"&& mkdir -p {HOST_HOME} && echo ready && exec sleep infinity"
    )


@contextmanager
def inside(host: Host) -> Iterator[None]:
    """This thread's sockets open in `host`'s network namespace until the block ends.

    Network namespaces belong to threads, so the test talks to the cluster as a
    client host would, without a process of its own inside.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open(f"/proc/self/task/{ctypes.CDLL(None).gettid()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the client host failed")
        yield
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def reachable(host: Host, address: str, port: int, timeout: float = 30) -> None:
    """Wait until `address:port` accepts a connection from `host`."""
    probe = ["python3", "-c", f"import socket; socket.create_connection(('{address}', {port}), 1)"]

    def answers() -> bool:
        return subprocess.run(host.command(probe), capture_output=True).returncode == 0

    wait_for(answers, timeout, f"{address}:{port} from {host.name}", interval=0.2)
