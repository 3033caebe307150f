"""A private Docker daemon and a Debian base image, for tests that build and run the images.

`Dockerd` starts Debian's `dockerd` on its own socket, data root and addresses
(198.19.0.0/16, inside the benchmarking range 198.18.0.0/15), lets containers on
its bridges talk to each other (after dockerd starts, iptables' FORWARD chain
drops bridged traffic here), and removes all of it on `close`: containers,
images, volumes, its bridges and its rules. `debian_base_image` builds what the
Dockerfile takes as BASE_IMAGE where no registry is reachable: Debian bookworm
from its own packages (debootstrap), with Python 3.11 in a venv on PATH as
`python` and `pip`, trusting the machine's CA bundle so pip reaches the package
index through whatever proxy the machine uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from testkit.processes import wait_for

ADDRESSES = "198.19.0.0/16"
BRIDGE_ADDRESS = "198.19.0.1/24"
NETWORK_POOL = "base=198.19.16.0/20,size=24"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ("docker.io", "docker-compose", "debootstrap")


def why_no_docker() -> str | None:
    """Why the images cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "the compose test starts its own dockerd: run it as root"
    if shutil.which("apt-get") is None and shutil.which("dockerd") is None:
        return "the compose test installs Docker from Debian's packages: no apt-get here"
    return None


def install_packages() -> None:
    """Debian's docker.io, docker-compose and debootstrap, when any is missing."""
    if all(shutil.which(tool) for tool in ("dockerd", "docker-compose", "debootstrap")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env)


class Dockerd:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.socket = work / "docker.sock"
        self.bridge = f"icbr{os.getpid() % 100000}"
        # The classic builder: Debian ships no buildx plugin, and nothing here needs BuildKit.
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        # dockerd adds chains and rules and sets FORWARD's policy to DROP: put them back after.
        self.rules = _with_empty_tables(
            subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
        )
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", BRIDGE_ADDRESS, "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self.log = (work / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                f"--host=unix://{self.socket}",
                f"--data-root={work / 'data'}",
                f"--exec-root={work / 'exec'}",
                f"--pidfile={work / 'dockerd.pid'}",
                f"--bridge={self.bridge}",
                f"--default-address-pool={NETWORK_POOL}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._answers, 60, "dockerd")
        self._allow_forwarding()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited: {(self.work / 'dockerd.log').read_text()}")
        return self.docker("info", check=False).returncode == 0

    def _allow_forwarding(self) -> None:
        """Let containers on this daemon's bridges reach each other (and be reached)."""
        for side in ("-s", "-d"):
            subprocess.run(
                ["iptables", "-I", "FORWARD", side, ADDRESSES, "-j", "ACCEPT"], check=True
            )

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, check=check
        )

    def stream(self, *args: str, log: Path, cwd: Path | None = None) -> None:
        """A long docker command (a build), its output in `log`; a failure shows its tail."""
        with log.open("ab") as out:
            done = subprocess.run(
                list(args), env=self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{log.read_text()[-4000:]}")

    def image_bytes(self, tag: str) -> int:
        return int(self.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            running = self.docker("ps", "-aq", check=False).stdout.split()
            if running:
                self.docker("rm", "-f", *running, check=False)
            self.docker("system", "prune", "-af", "--volumes", check=False)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        subprocess.run(["iptables-restore"], input=self.rules, text=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        # dockerd leaves its networks' bridges (br-<id>) behind when it stops.
        for link in Path("/sys/class/net").iterdir():
            if link.name.startswith("br-") and _address_of(link.name).startswith("198.19."):
                subprocess.run(["ip", "link", "del", link.name], check=False)
        # dockerd leaves mounts under its roots (its own netns among them) when it stops.
        for mount in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = mount.split()[1]
            if target.startswith(str(self.work)):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def _address_of(link: str) -> str:
    shown = subprocess.run(["ip", "-br", "addr", "show", link], capture_output=True, text=True)
    words = shown.stdout.split()
    return words[2] if len(words) > 2 else ""


def debian_base_image(docker: Dockerd, tag: str) -> str:
    """Debian bookworm with Python 3.11 as `python`/`pip` on PATH, imported as `tag`."""
    rootfs = docker.work / "rootfs"
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(rootfs), DEBIAN_MIRROR],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/python"], check=True)
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/host-ca-bundle.crt")
    for package in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        package.unlink()
    archive = docker.work / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."],
                   check=True)  # fmt: skip
    shutil.rmtree(rootfs)
    docker.docker(
        "import",
        "--change", f"ENV PATH=/opt/python/bin:{SYSTEM_PATH}",
        "--change", "ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt",
        "--change", "CMD [\"bash\"]",
        str(archive), tag,
    )  # fmt: skip
    archive.unlink()
    return tag


# What an absent table held before dockerd: nothing, with ACCEPT policies. Restoring a
# table flushes it and drops its chains, so naming these empties what dockerd made in
# tables that did not exist before it (a machine that never had a rule).
EMPTY_TABLES = {
    "filter": ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
    "nat": (
        ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\n"
    ),
}


def _with_empty_tables(saved: str) -> str:
    """`saved`, plus an empty filter or nat table where it had none, so restoring it
    removes what dockerd adds to them."""
    for table, chains in EMPTY_TABLES.items():
        if f"*{table}\n" not in saved:
            saved += f"*{table}\n{chains}COMMIT\n"
    return saved
