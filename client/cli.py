"""`intel-classifier submit | status | results | cancel`: the service from a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer

from client.api import DEFAULT_URL, Client, ClientError
from client.models import Job

ServerOption = Annotated[
    str, typer.Option("--server", envvar="INTEL_CLASSIFIER_URL", help="The service's URL.")
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="INTEL_CLASSIFIER_API_KEY", help="Bearer key, if required."),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write results here: .csv, .json or .jsonl."),
]


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
    app.command()(results)
    app.command()(cancel)


# Exit statuses, the same for every command: 0 done; 1 done, but some items failed;
# 2 a usage error (Click's own, or an argument this command cannot use);
# 3 the service refused the request or could not be reached.
EXIT_SOME_FAILED, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3


@contextmanager
def _connected(server: str, api_key: str | None) -> Iterator[Client]:
    try:
        with Client(server, api_key) as client:
            yield client
    except ClientError as exc:
        typer.secho(f"error: {exc.url}: {exc.message} (HTTP {exc.status})", err=True, fg="red")
        raise typer.Exit(EXIT_REFUSED) from exc
    except httpx.TransportError as exc:
        typer.secho(
            f"error: cannot reach the service at {_url_of(exc, server)} ({exc}); start it with "
            "`make run`, or point --server (INTEL_CLASSIFIER_URL) at it",
            err=True,
            fg="red",
        )
        raise typer.Exit(EXIT_REFUSED) from exc
    except httpx.HTTPError as exc:
        typer.secho(f"error: {_url_of(exc, server)}: {exc}", err=True, fg="red")
        raise typer.Exit(EXIT_REFUSED) from exc
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(EXIT_USAGE) from exc


def _url_of(exc: httpx.HTTPError, server: str) -> str:
    """The URL the failed request was for (the server's own when it is not known)."""
    try:
        return str(exc.request.url)
    except RuntimeError:  # raised before any request was made
        return server


def submit(
    paths: Annotated[list[Path], typer.Argument(help="Images, folders or .zip files.")],
    server: ServerOption = DEFAULT_URL,
    api_key: KeyOption = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job with a progress bar.")] = False,
    output: OutputOption = None,
    webhook_url: Annotated[str | None, typer.Option(help="Called when the job ends.")] = None,
) -> None:
    """Classify files, folders (zipped on the fly) or zips as one job.

    With --wait: a progress bar until the job ends, then the results in --output
    and a count per class. Exit status 1 when any image failed.
    """
    # Everything that can be checked here is, before a byte is uploaded.
    if output is not None and not wait:
        _usage_error("--output needs --wait: the results exist only once the job ends")
    output_format = _format_of(output) if output is not None else None
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        _usage_error(f"--webhook-url must be an http(s) URL, not {webhook_url!r}")
    with _connected(server, api_key) as client:
        with _bar("upload", unit="B", unit_scale=True) as uploaded:
            job = client.submit(paths, webhook_url=webhook_url, on_upload=uploaded)
        typer.echo(f"job {job.id}: {job.total} file(s) {job.status}", err=True)
        if not wait:
            typer.echo(job.id)
            return
        with _bar("classify", unit="img") as progressed:
            job = client.wait(job, on_progress=lambda j: progressed(j.done, j.total, j.failed))
        if output is not None and output_format is not None:
            client.download(job, output, output_format)
            typer.echo(f"wrote {output}", err=True)
        _print_summary(job)
        if job.failed:
            _print_failures(client, job)
    if job.failed or job.status != "succeeded":
        raise typer.Exit(EXIT_SOME_FAILED)


def status(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: ServerOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The job as the API returns it.")] = False,
) -> None:
    """Show a job: status, progress, and the count per class so far."""
    with _connected(server, api_key) as client:
        job = client.job(job_id)
    if as_json:
        typer.echo(json.dumps(job.raw, indent=2))
        return
    typer.echo(f"job {job.id}: {job.status}, {job.done}/{job.total} done")
    _print_summary(job)


def results(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: ServerOption = DEFAULT_URL,
    api_key: KeyOption = None,
    output: OutputOption = None,
) -> None:
    """Download every result: to --output (by its extension), or CSV on stdout."""
    with _connected(server, api_key) as client:
        if output is None:
            client.download(job_id, sys.stdout.buffer, "csv")
            sys.stdout.buffer.flush()
        else:
            client.download(job_id, output, _format_of(output))
            typer.echo(f"wrote {output}", err=True)


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: ServerOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Skip whatever the job has not classified yet; results so far are kept."""
    with _connected(server, api_key) as client:
        job = client.cancel(job_id)
    typer.echo(f"job {job.id}: {job.status} ({job.done}/{job.total} done, {job.skipped} skipped)")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in {"csv", "json", "jsonl"}:
        _usage_error(f"--output must end in .csv, .json or .jsonl, not {path.name}")
    return suffix


def _usage_error(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(EXIT_USAGE)


FAILURES_SHOWN = 20


def _print_failures(client: Client, job: Job) -> None:
    """Which files failed, and why (the first FAILURES_SHOWN; `results` has them all)."""
    typer.echo("failed:", err=True)
    for shown, item in enumerate(client.iter_results(job, status="failed")):
        if shown == FAILURES_SHOWN:
            typer.echo(f"  … and {job.failed - shown} more: intel-classifier results {job.id}",
                       err=True)  # fmt: skip
            return
        typer.echo(f"  {item.filename}: {item.error}", err=True)


def _print_summary(job: Job) -> None:
    rows = sorted(job.summary.items(), key=lambda row: (-row[1], row[0]))
    width = max([len(name) for name, _ in rows] + [7])
    for name, count in rows:
        typer.echo(f"  {name:<{width}} {count:>6}")
    if job.failed:
        typer.echo(f"  {'failed':<{width}} {job.failed:>6}")
    if job.skipped:
        typer.echo(f"  {'skipped':<{width}} {job.skipped:>6}")


@contextmanager
def _bar(label: str, unit: str, unit_scale: bool = False) -> Iterator[Callable[..., None]]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal), fed absolute values."""
    from tqdm import tqdm

    # Progress arrives in jumps (each poll); a low smoothing keeps rate and time left steady.
    bar = tqdm(
        desc=label,
        total=0,
        unit=unit,
        unit_scale=unit_scale,
        file=sys.stderr,
        disable=None,
        smoothing=0.05,
    )

    def update(done: int, total: int, failed: int | None = None) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if failed is not None:
            bar.set_postfix(failed=failed, refresh=False)

    try:
        yield update
    finally:
        bar.close()
