"""`intel-classifier`: the project's one command, with a subcommand per process or job."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.errors import AppError
from shared.logs import configure_logging
from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.classifier.inference import Prediction
    from shared.classifier.model import Classifier, Precision
    from shared.settings import Settings

app = typer.Typer(
    help="Classify scene photos (buildings, forest, glacier, mountain, sea, street).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _plain_help() -> None:
    """--help in words, not Python types: `--server URL`, `PATHS...`, no `<str>` or `{job_id}`.

    Typer renders each parameter's annotation (`<list[Path]>`, `<bool>`) and wraps
    required arguments in braces; its help takes no option for that, so the two
    renderers are replaced here, once, for every command of this program.
    """
    from typer.core import TyperArgument, TyperOption

    def option_type(self: TyperOption, ctx: object) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or (self.name or "value").upper()

    def argument_usage(self: TyperArgument) -> str:
        name = (self.name or "value").upper()
        return name + ("..." if self.nargs != 1 else "") if self.required else f"[{name}]"

    setattr(TyperOption, "display_type_rich", option_type)  # noqa: B010 (a method, replaced)
    setattr(TyperArgument, "display_type_rich", lambda self, ctx: None)  # noqa: B010
    setattr(TyperArgument, "_usage_display_name", argument_usage)  # noqa: B010


_plain_help()


def _register_groups() -> None:
    from client.cli import register
    from intel_classifier.keys import keys_app

    app.add_typer(keys_app, name="keys")
    register(app)


_register_groups()


def main() -> None:
    # TensorFlow's C++ start-up chatter is not for users; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configure_logging(get_settings())
    try:
        app()
    except AppError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise SystemExit(2) from exc


def _progress(description: str, total: int) -> Callable[[int], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance


ModelOption = Annotated[
    Path | None, typer.Option("--model", help="Model folder or .keras file (env MODEL_PATH).")
]


@app.command()
def train(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder with one subfolder of images per class.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")] = Path(
        "artifacts/model"
    ),
    frozen_base: Annotated[
        bool,
        typer.Option(
            "--frozen-base",
            help="The v1 recipe: train only the head on pooled features of a frozen base.",
        ),
    ] = False,
    input_size: int = 299,
    batch_size: Annotated[int | None, typer.Option(help="Default: 32 (16 frozen-base).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Default: 5 (20 frozen-base).")] = None,
    learning_rate: Annotated[float, typer.Option(help="The head's Adam learning rate.")] = 1e-3,
    block_learning_rate: Annotated[
        float, typer.Option(help="Block 14's Adam learning rate (fine-tuning).")
    ] = 1e-4,
    dense_units: int = 100,
    dropout: float = 0.2,
    validation_split: Annotated[
        float | None, typer.Option(help="Default: 0.15 (0.2 frozen-base).")
    ] = None,
    test_split: Annotated[float, typer.Option(help="Held out for the reported figures.")] = 0.15,
    seed: int = 42,
    augment_views: Annotated[
        int, typer.Option(help="Frozen-base only: extra augmented feature views per image.")
    ] = 0,
    zoom: Annotated[float, typer.Option(help="Frozen-base augmentation zoom range.")] = 0.2,
    shear: Annotated[float, typer.Option(help="Frozen-base shear range in degrees.")] = 10.0,
) -> None:
    """Fine-tune Xception's block 14 with the head; write the model folder serving runs.

    Duplicates are dropped, the data split train/validation/test; the base runs once
    per image (its add_11 maps are cached in CACHE_DIR); the epoch and the confidence
    temperature are chosen on validation; the INT8 IR is accepted on the test split.
    """
    if frozen_base:
        _train_frozen_base(
            data_dir,
            output,
            input_size,
            batch_size or 16,
            epochs or 20,
            learning_rate,
            dense_units,
            dropout,
            validation_split or 0.2,
            seed,
            augment_views,
            zoom,
            shear,
        )
        return
    from shared.training.finetune import FineTuneConfig
    from shared.training.metrics import format_report
    from shared.training.release import ReleaseConfig, release

    settings = get_settings()
    config = ReleaseConfig(
        input_size=input_size,
        validation_fraction=validation_split or 0.15,
        test_fraction=test_split,
        map_batch_size=settings.inference_batch_size,
        finetune=FineTuneConfig(
            batch_size=batch_size or 32,
            epochs=epochs or 5,
            block_learning_rate=block_learning_rate,
            head_learning_rate=learning_rate,
            dense_units=dense_units,
            dropout=dropout,
            seed=seed,
        ),
    )
    result = release(
        data_dir,
        output,
        config,
        base_weights=settings.base_weights,
        cache_dir=settings.cache_dir,
        backend=settings.inference_backend,
        max_pixels=settings.max_image_pixels,
        progress=_progress,
    )
    test = result.metrics["test"]
    typer.echo(format_report(test[test["served"]]))
    int8 = result.metrics["int8"]
    verdict = "shipped" if int8["accepted"] else "refused: the fp32 IR ships instead"
    typer.echo(
        f"\nmodel {result.manifest.version} written to {output} in {result.seconds:.0f}s; "
        f"INT8 {int8['int8_accuracy']:.4f} vs fp32 {int8['fp32_accuracy']:.4f} on the test "
        f"split, agreeing on {int8['agreement']:.2%} ({verdict})"
    )


def _train_frozen_base(
    data_dir: Path,
    output: Path,
    input_size: int,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    dense_units: int,
    dropout: float,
    validation_split: float,
    seed: int,
    augment_views: int,
    zoom: float,
    shear: float,
) -> None:
    from shared.training.augment import Augmentation
    from shared.training.frozen_base import TrainConfig
    from shared.training.frozen_base import train as run_training
    from shared.training.metrics import format_report

    settings = get_settings()
    config = TrainConfig(
        input_size=input_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        dense_units=dense_units,
        dropout=dropout,
        validation_fraction=validation_split,
        seed=seed,
        augment_views=augment_views,
        augmentation=Augmentation(zoom=zoom, shear_degrees=shear),
    )
    result = run_training(
        data_dir,
        output,
        config,
        base_weights=settings.base_weights,
        cache_dir=settings.cache_dir,
        backend=settings.inference_backend,
        feature_batch_size=settings.inference_batch_size,
        max_pixels=settings.max_image_pixels,
        progress=_progress,
    )
    typer.echo(format_report(result.report))
    typer.echo(
        f"\nmodel {result.manifest.version} written to {output} in {result.seconds:.0f}s "
        f"({result.images_computed} images through the base, the rest from the cache)"
    )


@app.command()
def evaluate(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder with one subfolder of images per class.")
    ],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics here.")
    ] = None,
    holdout: Annotated[
        bool,
        typer.Option(help="Only the validation split the model was trained with (same seed)."),
    ] = False,
    model: ModelOption = None,
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on a labelled folder."""
    from shared.training.dataset import list_labelled_images
    from shared.training.evaluation import evaluate_images, select_holdout
    from shared.training.metrics import format_report

    settings = get_settings()
    images = list_labelled_images(data_dir)
    classifier = _load(model)
    if holdout:
        images = select_holdout(images, classifier.manifest)
    report = evaluate_images(
        images,
        classifier,
        batch_size=settings.inference_batch_size,
        max_pixels=settings.max_image_pixels,
        progress=_progress,
    )
    typer.echo(format_report(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Images, folders or .zip archives.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV, or JSON if it ends in .json.")
    ] = None,
    model: ModelOption = None,
) -> None:
    """Classify images locally with the same batched inference the workers use."""
    from shared.classifier.inference import predict_stream
    from shared.classifier.report import format_for, write_predictions
    from shared.classifier.sources import count_sources, iter_sources

    settings = get_settings()
    total = count_sources(paths)
    classifier = _load(model)
    advance = _progress("classifying", total)
    failed = 0

    def tracked() -> Iterator[Prediction]:
        nonlocal failed
        for prediction in predict_stream(
            classifier,
            iter_sources(paths),
            batch_size=settings.inference_batch_size,
            max_pixels=settings.max_image_pixels,
            workers=settings.decode_workers,
        ):
            advance(1)
            failed += not prediction.ok
            yield prediction

    if output is None and sys.stderr.isatty() and sys.stdout.isatty():
        # One terminal shows both: the bar ends before the first row, never inside one.
        rows = list(tracked())
        write_predictions(iter(rows), sys.stdout, "csv")
    elif output is None:
        write_predictions(tracked(), sys.stdout, "csv")
    else:
        with output.open("w", newline="") as stream:
            write_predictions(tracked(), stream, format_for(output))
        typer.echo(f"{total - failed} classified, {failed} failed: {output}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def quantize(
    data_dir: Annotated[Path, typer.Argument(help="The labelled folder the model was trained on.")],
    calibration: Annotated[int, typer.Option(help="Training images to calibrate on.")] = 300,
    report: Annotated[Path | None, typer.Option(help="Also write the report here.")] = None,
    model: ModelOption = None,
) -> None:
    """Make the INT8 model (OpenVINO NNCF) and compare it with fp32 on the held-out split.

    It is kept for INFERENCE_PRECISION=auto only if accuracy drops by at most 0.5 points.
    """
    from shared.training.dataset import list_labelled_images
    from shared.training.quantization import quantize_model

    settings = get_settings()
    result = quantize_model(
        list_labelled_images(data_dir),
        model or settings.model_path,
        settings.base_weights,
        settings.cache_dir,
        calibration_size=calibration,
        batch_size=settings.inference_batch_size,
        progress=_progress,
    )
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if report:
        report.write_text(text + "\n")
    if not result["accepted"]:
        typer.secho("INT8 lost too much accuracy: the service keeps fp32", err=True, fg="yellow")


@app.command()
def export(
    output: Annotated[Path, typer.Argument(help="Where to write the complete model (.keras).")],
    model: ModelOption = None,
) -> None:
    """Write the fp32 network (base + head) as one .keras file, loadable as MODEL_PATH."""
    classifier = _load(model, precision="fp32")  # the Keras network, not the serving IR
    classifier.save_keras(output)
    typer.echo(f"model {classifier.version} written to {output}")


def _load(model: Path | None, precision: Precision | None = None) -> Classifier:
    from shared.classifier.model import load_classifier

    settings = get_settings()
    return load_classifier(
        model or settings.model_path,
        settings.base_weights,
        settings.inference_backend,
        cache_dir=settings.cache_dir,
        precision=precision or settings.inference_precision,
    )


@app.command()
def migrate() -> None:
    """Apply the database migrations (DATABASE_URL)."""
    from shared.db.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    typer.echo(f"database at head: {_redacted(url)}")


@app.command()
def sweep() -> None:
    """Delete jobs past RETENTION_SECONDS and stored files with no job (workers do this too)."""
    from shared.storage import open_storage
    from worker.maintenance import sweep as sweep_expired

    settings = get_settings()
    report = sweep_expired(settings, open_storage(settings.resolved_storage_url))
    typer.echo(
        f"deleted {report.jobs} expired job(s), {report.orphans} orphaned upload folder(s), "
        f"{report.idempotency_keys} idempotency key(s), {report.batches} batch record(s)"
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT, default 9696).")] = None,
) -> None:
    """Run the HTTP API only (any number of API processes may share one database)."""
    import uvicorn

    from intel_classifier.http_server import protocol_with_deadlines

    settings = get_settings()
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
        timeout_graceful_shutdown=10,
    )


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option(help="Without Celery's start-up banner.")] = False,
) -> None:
    """Run one classification worker: loads the model once, then takes batches."""
    import worker.tasks  # noqa: F401  (registers the tasks and the worker signals)
    from shared.queue import QUEUE
    from worker.celery_app import celery_app

    if get_settings().worker_nice:
        os.nice(get_settings().worker_nice)
    if quiet:
        _quiet_celery()
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


def _quiet_celery() -> None:
    """For serve on a developer's machine: Celery's warning about running as root is for
    servers (the Docker images run as an unprivileged user)."""
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)


@app.command()
def webhooks(
    concurrency: Annotated[int, typer.Option(help="Deliveries in flight at once.")] = 8,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option(help="Without Celery's start-up banner.")] = False,
) -> None:
    """Run one webhook delivery worker (no model; threads, so slow receivers do not block)."""
    import worker.tasks  # noqa: F401  (registers the tasks and the worker signals)
    from shared.queue import WEBHOOK_QUEUE
    from worker import runtime
    from worker.celery_app import celery_app

    runtime.role = "webhooks"
    if quiet:
        _quiet_celery()
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


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT, default 9696).")] = None,
) -> None:
    """Migrate, then run the API, one worker and one webhook worker (embedded defaults)."""
    from intel_classifier.supervisor import Supervisor
    from shared.db.migrate import upgrade
    from shared.process import die_with_parent

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
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
        f"database {_redacted(settings.resolved_database_url)}; broker "
        f"{'redis' if settings.redis_url else 'embedded (' + str(settings.broker_folder) + ')'}; "
        f"storage {settings.resolved_storage_url}",
        err=True,
    )
    # One machine: inference yields the CPU to the API, so uploads never wait on it.
    worker_env = {"WORKER_NICE": "10", **os.environ}
    supervisor = Supervisor(preexec=die_with_parent)
    command = [sys.executable, "-m", "intel_classifier"]
    supervisor.add(
        "worker",
        [*command, "worker", "--quiet"],
        worker_env,
        stalled=lambda pid: _worker_stalled(settings, pid),
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
        api(host=host, port=port)
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
        typer.echo("stopped: the API and both workers", err=True)


def _worker_stalled(settings: Settings, pid: int) -> bool:
    """The classify worker `pid` of this host beat once, then stopped: it makes no progress."""
    import socket

    from shared import heartbeats
    from shared.unit_of_work import session_scope

    name = f"classify@{socket.gethostname()}:{pid}"
    with session_scope(settings, write=False) as session:
        return heartbeats.stale(session, name, settings.worker_stale_seconds)


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


@app.command()
def alive(
    role: Annotated[str, typer.Option(help="classify or webhooks")] = "classify",
) -> None:
    """Exit 0 if a ROLE worker on this host beat within WORKER_STALE_SECONDS (healthchecks)."""
    import socket

    from shared.heartbeats import alive_on_host
    from shared.unit_of_work import session_scope

    settings = get_settings()
    with session_scope(settings, write=False) as session:
        fine = alive_on_host(session, role, socket.gethostname(), settings.worker_stale_seconds)
    if not fine:
        typer.echo(f"no {role} worker on this host beat in {settings.worker_stale_seconds:g}s")
        raise typer.Exit(1)
    typer.echo("alive")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
