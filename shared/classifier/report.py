"""Write predictions as CSV or JSON, chosen by the output file's extension."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from shared.classifier.inference import Prediction
from shared.classifier.labels import CLASSES


def prediction_row(prediction: Prediction) -> dict[str, Any]:
    scores = prediction.scores or {}
    return {
        "path": prediction.name,
        "class": prediction.label,
        "confidence": prediction.confidence,
        **{label: scores.get(label) for label in CLASSES},
        "error": prediction.error,
    }


def write_predictions(predictions: Iterable[Prediction], stream: IO[str], fmt: str) -> None:
    rows = (prediction_row(p) for p in predictions)
    if fmt == "json":
        json.dump(list(rows), stream, indent=1)
        stream.write("\n")
        return
    writer = csv.DictWriter(stream, fieldnames=["path", "class", "confidence", *CLASSES, "error"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})


def format_for(path: Path | None) -> str:
    return "json" if path is not None and path.suffix.lower() == ".json" else "csv"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else value
