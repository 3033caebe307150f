"""The `intel-classifier` Typer app that every command group registers on."""

from __future__ import annotations

import typer

from intel_classifier.cli.help import use_plain_help

app = typer.Typer(
    help="Classify scene photos (buildings, forest, glacier, mountain, sea, street).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
use_plain_help()
