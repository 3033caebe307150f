"""`intel-classifier`: the project's one command, with a subcommand per process or job.

A module per group of commands: `model` (train, evaluate, classify, quantize,
export), `operations` (migrate, sweep, alive), `processes` (api, worker,
webhooks, serve); `keys` and the client's commands are added as groups.
"""

from __future__ import annotations

import os

import typer

from client.cli import register
from intel_classifier.cli import model, operations, processes  # noqa: F401  (they register)
from intel_classifier.cli.app import app
from intel_classifier.keys import keys_app
from shared.errors import AppError
from shared.logs import configure_logging
from shared.settings import get_settings

app.add_typer(keys_app, name="keys")
register(app)

__all__ = ["app", "main"]


def main() -> None:
    # TensorFlow's C++ start-up chatter is not for users; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configure_logging(get_settings())
    try:
        app()
    except AppError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise SystemExit(2) from exc
