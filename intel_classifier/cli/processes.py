"""Process commands: the API, the workers, and `serve`, which supervises all three.

`serve` prints one ready line once the API answers and a worker holds the model.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from intel_classifier.cli.app import app
from intel_classifier.cli.operations import redacted
from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.unit_of_work import UnitOfWorkFactory


AccessLog = Annotated[
    bool | None,
    typer.Option("--access-log/--no-access-log", help="A line per request (env ACCESS_LOG)."),
]


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT, default 9696).")] = None,
    access_log: AccessLog = None,
) -> None:
    """Run the HTTP API only (any number of API processes may share one database)."""
    _run_api(_with_access_log(get_settings(), access_log), host, port)


def _with_access_log(settings: Settings, access_log: bool | None) -> Settings:
    return (
        settings if access_log is None else settings.model_copy(update={"access_log": access_log})
    )


def _run_api(settings: Settings, host: str | None, port: int | None) -> None:
    import uvicorn

    from intel_classifier.http_server import protocol_with_deadlines

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        http=protocol_with_deadlines(
            settings.request_header_timeout_seconds,
            settings.request_body_timeout_seconds,
            settings.request_body_min_bytes_per_second,
        ),
        log_config=None,  # configure_logging() set up the root logger; uvicorn's propagate
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )


QUIET_HELP = "No Celery banner; once ready, warnings and errors only (unless LOG_LEVEL is set)."


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option(help=QUIET_HELP)] = False,
) -> None:
    """Run one classification worker: loads the model once, then takes batches."""
    import worker.tasks  # noqa: F401  (registers the tasks and the worker signals)
    from shared.queue import QUEUE
    from worker import context
    from worker.celery_app import celery_app, job_queue

    settings = get_settings()
    context.attach(celery_app, context.build(settings, job_queue, "classify"))
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    if quiet:
        _quiet_celery(settings)
    # One pool child holds the model and runs the tasks (run more workers to scale);
    # prefork, because only a pool child can be killed at a task's hard time limit.
    celery_app.worker_main(
        [
            *(["--quiet"] if quiet else []),
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            f"--loglevel={loglevel}",
            "-Q",
            QUEUE,
        ]
    )


def _quiet_celery(settings: Settings) -> None:
    """For serve on a developer's machine: Celery's warning about running as root is for
    servers (the Docker images run as an unprivileged user), and once the worker is ready
    only warnings and errors are news (a failed item still says so); a LOG_LEVEL the user
    set is kept."""
    import warnings

    from celery.exceptions import SecurityWarning
    from celery.signals import worker_process_init, worker_ready

    warnings.filterwarnings("ignore", category=SecurityWarning)
    if "log_level" in settings.model_fields_set:
        return

    def hush(**_: object) -> None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_WarningsAndReady())

    # The main process logs "ready" and each task's arrival; the pool child, the batches.
    worker_ready.connect(hush, weak=False)
    worker_process_init.connect(hush, weak=False)


class _WarningsAndReady(logging.Filter):
    """Warnings and errors, and Celery's ready line (logged just after the ready signal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.msg == "%s ready."


webhooks_app = typer.Typer(
    help="Run a webhook delivery worker (no subcommand), or make a signing secret.",
    invoke_without_command=True,
)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.callback()
def webhooks(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option(help="Deliveries in flight at once.")] = 8,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option(help=QUIET_HELP)] = False,
) -> None:
    """Run one webhook delivery worker (no model; threads, so slow receivers do not block)."""
    if ctx.invoked_subcommand is not None:
        return
    import worker.tasks  # noqa: F401  (registers the tasks and the worker signals)
    from shared.queue import WEBHOOK_QUEUE
    from worker import context
    from worker.celery_app import celery_app, job_queue

    settings = get_settings()
    context.attach(celery_app, context.build(settings, job_queue, "webhooks"))
    if quiet:
        _quiet_celery(settings)
    celery_app.worker_main(
        [
            *(["--quiet"] if quiet else []),
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            "-Q",
            WEBHOOK_QUEUE,
            "-n",
            "webhooks@%h",
        ]
    )


@webhooks_app.command("secret")
def webhook_secret() -> None:
    """Print a new signing secret (whsec_ + 32 random bytes, base64) for WEBHOOK_SECRETS."""
    from shared.webhooks.signing import new_secret

    typer.echo(new_secret())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT, default 9696).")] = None,
    access_log: AccessLog = None,
) -> None:
    """Migrate, then run the API, one worker and one webhook worker (embedded defaults)."""
    from intel_classifier.supervisor import Supervisor
    from shared.db.migrate import upgrade
    from shared.process import die_with_parent
    from shared.unit_of_work import UnitOfWorkFactory

    settings = _with_access_log(get_settings(), access_log)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration: not news
    upgrade(settings.resolved_database_url)
    if not settings.auth_enabled:
        typer.secho(
            "API keys are off (AUTH_ENABLED=false): anyone who reaches this port can use the "
            "service. Set AUTH_ENABLED=true and make keys with `intel-classifier keys create` "
            "for anything but your own machine.",
            err=True,
            fg="yellow",
        )
    typer.echo(
        f"database {redacted(settings.resolved_database_url)}; broker "
        f"{'redis' if settings.redis_url else 'embedded (' + str(settings.broker_folder) + ')'}; "
        f"storage {settings.resolved_storage_url}",
        err=True,
    )
    # One machine: inference yields the CPU to the API, so uploads never wait on it.
    worker_env = {"WORKER_NICE": "10", **os.environ}
    supervisor = Supervisor(preexec=die_with_parent)
    units = UnitOfWorkFactory(settings)
    command = [sys.executable, "-m", "intel_classifier"]
    supervisor.add(
        "worker",
        [*command, "worker", "--quiet"],
        worker_env,
        stalled=lambda pid: _worker_stalled(settings, units, pid),
    )
    supervisor.add("webhook worker", [*command, "webhooks", "--quiet"])
    supervisor.run_in_background()  # a worker that dies is started again, with backoff
    bound = host or settings.host
    reachable = "127.0.0.1" if bound in {"0.0.0.0", "::", ""} else bound
    announce_when_ready(settings, f"http://{reachable}:{port or settings.port}")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again
    # with the handlers it found: these make that an ordinary exit, so the workers
    # are stopped below and one line says so (no traceback on Ctrl-C).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The ready line says what uvicorn's start-up lines would; requests are logged
    # once the service is ready (before, they are the ready line's own polls).
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    try:
        _run_api(settings, host, port)
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
        typer.echo("stopped: the API and both workers", err=True)


def _worker_stalled(settings: Settings, units: UnitOfWorkFactory, pid: int) -> bool:
    """The classify worker `pid` of this host beat once, then stopped: it makes no progress."""
    import socket

    from shared import heartbeats

    name = f"classify@{socket.gethostname()}:{pid}"
    with units.scope(write=False) as unit:
        return heartbeats.stale(unit, name, settings.worker_stale_seconds)


def announce_when_ready(settings: Settings, url: str) -> None:
    """Print one line once the API answers and a worker holds the model (from a thread)."""
    import threading
    import time

    import httpx

    from shared.classifier.artifact import FineTunedManifest, read_any_manifest

    def describe_model() -> str:
        try:
            manifest = read_any_manifest(settings.model_path)
        except Exception:
            return str(settings.model_path)
        if isinstance(manifest, FineTunedManifest) and settings.inference_precision != "fp32":
            precision = manifest.serving.precision
            return f"model {manifest.version_for(precision)} (OpenVINO, {precision.upper()})"
        return f"model {manifest.version} ({settings.inference_backend}, fp32)"

    def wait() -> None:
        while True:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                logging.getLogger("uvicorn.access").setLevel(logging.NOTSET)
                typer.secho(
                    f"ready: {url} — {describe_model()}; Ctrl-C stops everything",
                    err=True,
                    fg="green",
                )
                return
            time.sleep(0.5)

    threading.Thread(target=wait, name="ready-line", daemon=True).start()
