"""No container engine runs here: check that the deployment files name what exists."""

from __future__ import annotations

import shlex
import tomllib
from typing import Any

import yaml

from intel_classifier.cli import app
from shared.settings import PROJECT_ROOT, Settings

SUBCOMMANDS = {command.name or command.callback.__name__ for command in app.registered_commands} | {  # type: ignore[union-attr]
    group.name for group in app.registered_groups
}
SETTINGS = {name.upper() for name in Settings.model_fields}
AWS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def _check_command(command: list[str]) -> None:
    assert command[0] == "intel-classifier", command
    assert command[1] in SUBCOMMANDS, f"{command[1]} is not a subcommand"


def test_compose_names_services_commands_ports_and_settings_that_exist() -> None:
    compose: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "webhooks"}
    for name in ("migrate", "api", "worker", "webhooks"):
        _check_command(services[name]["command"])
        environment = services[name]["environment"]
        assert set(environment) <= SETTINGS, set(environment) - SETTINGS
        assert environment["DATABASE_URL"].startswith("postgresql://")
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert environment["AUTH_ENABLED"] == "true"  # keys are off only in `serve`
    assert services["api"]["ports"] == ["9696:9696"]
    assert "--port" in services["api"]["command"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "webhooks"):
        assert services[name]["restart"] == "unless-stopped"
    for name, role in (("worker", "classify"), ("webhooks", "webhooks")):
        probe = services[name]["healthcheck"]["test"]
        assert probe[0] == "CMD"
        _check_command(probe[1:])
        assert probe[1:] == ["intel-classifier", "alive", "--role", role]


def test_fly_runs_api_and_worker_as_separate_processes() -> None:
    fly = tomllib.loads((PROJECT_ROOT / "fly.toml").read_text())
    assert set(fly["processes"]) == {"app", "worker", "webhooks"}
    for command in fly["processes"].values():
        _check_command(shlex.split(command))
    _check_command(shlex.split(fly["deploy"]["release_command"]))
    assert fly["http_service"]["internal_port"] == int(fly["env"]["PORT"]) == Settings().port
    assert set(fly["env"]) <= SETTINGS
    assert fly["env"]["AUTH_ENABLED"] == "true"
    assert fly["checks"]["service_ready"]["path"] == "/readyz"
    assert {p for r in fly["restart"] for p in r["processes"]} == set(fly["processes"])


def test_dockerfile_copies_paths_that_exist() -> None:
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), source


def _installs_by_role() -> dict[str, list[str]]:
    """What each role's image installs: the pip installs along its chain of stages."""
    parent: dict[str, str] = {}
    installs: dict[str, list[str]] = {}
    stage = ""
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            words = line.split()
            stage = words[-1]
            parent[stage], installs[stage] = words[1], []
        elif line.startswith("RUN pip install"):
            words = shlex.split(line)
            assert words[3:5] == ["-c", "constraints.txt"], line  # every install is pinned
            installs[stage].append(words[-1])

    def chain(stage: str) -> list[str]:
        above = parent[stage]
        return (chain(above) if above in parent else []) + installs[stage]

    return {role: chain(role) for role in ("api", "worker", "trainer")}


def test_each_role_image_installs_only_what_it_runs() -> None:
    # Each role's dependencies go on top of the last one's: the API's are installed
    # once for all three, and only the trainer adds TensorFlow.
    assert _installs_by_role() == {
        "api": ["."],
        "worker": [".", ".[worker]"],
        "trainer": [".", ".[worker]", ".[train]"],
    }
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("[")[0].split("=")[0] for r in requirements}

    assert not names(project["dependencies"]) & {"tensorflow-cpu", "keras", "openvino"}
    assert names(extras["worker"]) == {"openvino"}
    assert {"tensorflow-cpu", "keras", "nncf"} <= names(extras["train"])
    compose: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    targets = {
        name: s["build"]["target"] for name, s in compose["services"].items() if "build" in s
    }
    assert targets == {"migrate": "api", "api": "api", "worker": "worker", "webhooks": "api"}
    fly = tomllib.loads((PROJECT_ROOT / "fly.toml").read_text())
    assert fly["build"]["build-target"] == "worker"
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert {"openvino", "tensorflow-cpu", "fastapi", "celery"} <= pinned


def _kubernetes() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes, by kind/name."""
    folder = PROJECT_ROOT / "deploy" / "kubernetes"
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            name = document.get("metadata", {}).get("name", path.stem)
            objects[f"{document['kind']}/{name}"] = document
    return objects


def _container(objects: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    spec = objects[key]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return dict(container, terminationGracePeriodSeconds=spec.get("terminationGracePeriodSeconds"))


def test_kubernetes_manifests_run_commands_probes_and_settings_that_exist() -> None:
    from worker.batching import pass_deadline

    objects = _kubernetes()
    kustomization = objects["Kustomization/kustomization"]
    for resource in kustomization["resources"]:
        assert (PROJECT_ROOT / "deploy" / "kubernetes" / resource).is_file(), resource
    config = objects["ConfigMap/intel-classifier"]["data"]
    assert set(config) <= SETTINGS | AWS, set(config) - SETTINGS - AWS
    assert config["AUTH_ENABLED"] == "true"
    for key, image in (
        ("Job/intel-classifier-migrate", "intel-classifier-api:latest"),
        ("Deployment/intel-classifier-api", "intel-classifier-api:latest"),
        ("Deployment/intel-classifier-worker", "intel-classifier-worker:latest"),
        ("Deployment/intel-classifier-webhooks", "intel-classifier-api:latest"),
    ):
        container = (
            objects[key]["spec"]["template"]["spec"]["containers"][0]
            if key.startswith("Job/")
            else _container(objects, key)
        )
        _check_command(container["command"])
        assert container["image"] == image  # only the worker image carries OpenVINO
        assert {
            ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]
        } == {"intel-classifier"}
    api = _container(objects, "Deployment/intel-classifier-api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["ports"][0]["containerPort"] == Settings().port
    for key, role in (
        ("Deployment/intel-classifier-worker", "classify"),
        ("Deployment/intel-classifier-webhooks", "webhooks"),
    ):
        probe = _container(objects, key)["livenessProbe"]["exec"]["command"]
        _check_command(probe)
        assert probe[1:] == ["alive", "--role", role]
    worker = _container(objects, "Deployment/intel-classifier-worker")
    settings = Settings()
    # A scaled-in worker gets long enough to finish the batch in hand.
    assert worker["terminationGracePeriodSeconds"] >= (
        settings.decode_timeout_seconds + pass_deadline(settings)
    )


def test_autoscalers_follow_metrics_the_api_exports() -> None:
    objects = _kubernetes()
    exported = (PROJECT_ROOT / "api" / "routes" / "metrics.py").read_text()
    scaled = objects["ScaledObject/intel-classifier-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "intel-classifier-worker"
    queries = [trigger["metadata"]["query"] for trigger in scaled["triggers"]]
    assert queries == ["max(intel_queue_depth)", "max(intel_oldest_queued_item_age_seconds)"]
    for query in queries:
        assert f'"{query[4:-1]}"' in exported  # the metric's name as /metrics spells it
    hpa = objects["HorizontalPodAutoscaler/intel-classifier-worker"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "intel-classifier-worker"
    [metric] = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "intel_queue_depth"
    for spec in (scaled["advanced"]["horizontalPodAutoscalerConfig"], hpa):
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
