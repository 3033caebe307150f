"""The Dockerfile's images and docker-compose.yml's stack, built and run for real.

`make compose-test` (root): installs Docker, docker-compose and debootstrap from
Debian when missing, starts a private dockerd (`testkit.dockerd`: its own socket,
addresses in 198.19.0.0/16), builds a Debian base image with debootstrap and
passes it to the Dockerfile as BASE_IMAGE, builds the `api`, `worker` and
`trainer` targets through constraints.txt, and Postgres and Redis images from
Debian's packages (deploy/compose-test). Then it runs the stack as users would,
with only those two images swapped (deploy/compose-test/docker-compose.test.yml):
migrations run, a zip is classified through the API container, a worker
container killed outright is restarted by its policy and works again, and
`--scale worker=2` gives two live workers. It prints the images' sizes and
removes everything it made. Not part of `make test` (it downloads and builds
for minutes); it skips, saying why, where this machine cannot run dockerd.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import PROJECT_ROOT
from shared.training.dataset import list_labelled_images
from testkit.dockerd import Dockerd, debian_base_image, install_packages, why_no_docker
from testkit.processes import wait_for
from testkit.resources import TRAIN_DIR

pytestmark = [
    pytest.mark.compose,
    pytest.mark.skipif((reason := why_no_docker()) is not None, reason=reason or ""),
]

BASE = "intel-compose-test/base:bookworm"
ROLES = ("api", "worker", "trainer")
PROJECT = "intelcomposetest"
OVERRIDE = PROJECT_ROOT / "deploy" / "compose-test" / "docker-compose.test.yml"


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    install_packages()
    work = Path("/var/tmp") / f"intel-compose-test-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    daemon = Dockerd(work)
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def images(docker: Dockerd) -> dict[str, int]:
    """Every image the stack needs, built here; their sizes in bytes."""
    started = time.monotonic()
    debian_base_image(docker, BASE)

    build = ("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}")

    def roles() -> None:  # each on the one before (the Dockerfile's *-deps stages)
        for role in ROLES:
            docker.stream(*build, "--target", role, "-t", f"intel-image-classifier:{role}", ".",
                          log=docker.work / "build-roles.log", cwd=PROJECT_ROOT)  # fmt: skip

    def services() -> None:
        for service in ("postgres", "redis"):
            docker.stream(*build, "-f", f"{service}.Dockerfile", "-t",
                          f"intel-compose-test/{service}", ".",
                          log=docker.work / "build-services.log", cwd=OVERRIDE.parent)  # fmt: skip

    # The roles wait on PyPI, the databases' images on Debian's mirror: side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for built in [pool.submit(roles), pool.submit(services)]:
            built.result()
    tags = [BASE, *(f"intel-image-classifier:{r}" for r in ROLES),
            "intel-compose-test/postgres", "intel-compose-test/redis"]  # fmt: skip
    sizes = {tag: docker.image_bytes(tag) for tag in tags}
    print(f"\nimages built in {time.monotonic() - started:.0f}s:")
    for tag, size in sizes.items():
        print(f"  {tag:40} {size / 1e6:8.0f} MB")
    return sizes


def python_finds(docker: Dockerd, role: str, module: str) -> bool:
    found = docker.docker(
        "run", "--rm", f"intel-image-classifier:{role}", "python", "-c",
        f"import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)",
        check=False,
    )  # fmt: skip
    return found.returncode == 0


def test_each_role_image_holds_only_what_it_runs(docker: Dockerd, images: dict[str, int]) -> None:
    assert not python_finds(docker, "api", "tensorflow")
    assert not python_finds(docker, "api", "openvino")
    assert python_finds(docker, "worker", "openvino")
    assert not python_finds(docker, "worker", "tensorflow")
    assert python_finds(docker, "trainer", "tensorflow")
    # The shipped model is in the worker image; the API image does not need it.
    model = docker.docker("run", "--rm", "intel-image-classifier:worker", "ls", "models/default")
    assert "model.xml" in model.stdout or "metrics.json" in model.stdout, model.stdout
    assert images["intel-image-classifier:api"] < images["intel-image-classifier:worker"]


class Stack:
    def __init__(self, docker: Dockerd) -> None:
        self.docker = docker

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-p", PROJECT, "-f", "docker-compose.yml", "-f", str(OVERRIDE),
             *args],
            env=self.docker.env, cwd=PROJECT_ROOT, capture_output=True, text=True, check=check,
        )  # fmt: skip

    def containers(self, service: str) -> list[dict[str, Any]]:
        ids = self.compose("ps", "-q", service).stdout.split()
        if not ids:
            return []
        shown = self.docker.docker("inspect", *ids).stdout
        return list(json.loads(shown))

    def url(self) -> str:
        (api,) = self.containers("api")
        (network,) = api["NetworkSettings"]["Networks"].values()
        return f"http://{network['IPAddress']}:9696"

    def alive_workers(self) -> int:
        text = httpx.get(self.url() + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith('intel_workers_alive{role="classify"}'):
                return int(float(line.split()[-1]))
        return 0

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", check=False).stdout


def photo_zip(count: int, offset: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for image in list_labelled_images(TRAIN_DIR)[offset::97][:count]:
            archive.write(image.path, f"{image.path.parent.name}/{image.path.name}")
    return buffer.getvalue()


def classify(stack: Stack, key: str, body: bytes, count: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.url(), headers=headers, timeout=60) as client:
        response = client.post("/jobs", files={"file": ("photos.zip", body)})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def done() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
            return job if job["status"] not in ("queued", "running") else None

        job = wait_for(done, 300, f"job {job_id}", interval=1)
    assert (job["status"], job["succeeded"]) == ("succeeded", count), (job, stack.logs())


def test_the_compose_stack_classifies_survives_a_killed_worker_and_scales(
    docker: Dockerd, images: dict[str, int]
) -> None:
    stack = Stack(docker)
    started = time.monotonic()
    try:
        stack.compose("up", "-d", "--no-build")
        (migrate,) = wait_for(lambda: _exited(stack, "migrate"), 180, "the migration")
        assert migrate["State"]["ExitCode"] == 0, stack.logs()
        wait_for(lambda: _healthy(stack, "api"), 120, "the API container")
        wait_for(lambda: stack.alive_workers() == 1, 240, "the worker container's heartbeat")
        ready = time.monotonic()
        created = stack.compose("run", "--rm", "--no-deps", "api", "intel-classifier", "keys",
                                "create", "--name", "compose-test")  # fmt: skip
        key = created.stdout.strip().splitlines()[-1]
        classify(stack, key, photo_zip(24, 0), 24)

        # A worker killed outright (not stopped): its restart policy brings it back.
        (worker,) = stack.containers("worker")
        os.kill(worker["State"]["Pid"], 9)
        wait_for(lambda: _restarted(stack, worker["Id"]), 120, "the worker's restart")
        classify(stack, key, photo_zip(24, 1), 24)

        stack.compose("up", "-d", "--no-build", "--scale", "worker=2")
        assert len(stack.containers("worker")) == 2
        # The killed worker's heartbeat row goes stale; both live ones beat.
        wait_for(lambda: stack.alive_workers() == 2, 240, "two live workers")
        classify(stack, key, photo_zip(48, 2), 48)
        print(
            f"\ncompose: stack ready in {ready - started:.0f}s; 96 photos in 3 jobs; a killed "
            f"worker restarted by its policy; scaled to 2 workers; total "
            f"{time.monotonic() - started:.0f}s"
        )
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)


def _exited(stack: Stack, service: str) -> list[dict[str, Any]]:
    return [c for c in stack.containers(service) if not c["State"]["Running"]]


def _healthy(stack: Stack, service: str) -> bool:
    return any(
        c["State"].get("Health", {}).get("Status") == "healthy" for c in stack.containers(service)
    )


def _restarted(stack: Stack, container_id: str) -> bool:
    shown = json.loads(stack.docker.docker("inspect", container_id).stdout)[0]
    return bool(shown["RestartCount"] >= 1 and shown["State"]["Running"])
