"""Model commands: train, evaluate, classify, quantize, export.

Each reads the settings once and passes them on; the training modules (and
TensorFlow) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from intel_classifier.cli.app import app
from shared.settings import Settings, get_settings
from shared.training.augment import Augmentation
from shared.training.config import ReleaseConfig, TrainConfig

if TYPE_CHECKING:
    from shared.classifier.inference import Prediction
    from shared.classifier.loaded import Classifier, Precision


def progress_bar(description: str, total: int) -> Callable[[int], None]:
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


# The recipes' own defaults: the options below show and fall back to these.
_V2 = ReleaseConfig()
_V1 = TrainConfig()


def _defaults(v2: object, v1: object) -> str:
    return f"Default: {v2} ({v1} with --frozen-base)."


def _given(**values: object) -> dict[str, Any]:
    """The options the user set: the rest keep the recipe's defaults."""
    return {name: value for name, value in values.items() if value is not None}


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
    input_size: int = _V2.input_size,
    batch_size: Annotated[
        int | None, typer.Option(help=_defaults(_V2.finetune.batch_size, _V1.batch_size))
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help=_defaults(_V2.finetune.epochs, _V1.epochs))
    ] = None,
    learning_rate: Annotated[
        float, typer.Option(help="The head's Adam learning rate.")
    ] = _V2.finetune.head_learning_rate,
    block_learning_rate: Annotated[
        float, typer.Option(help="The fine-tuned blocks' Adam learning rate.")
    ] = _V2.finetune.block_learning_rate,
    dense_units: int = _V2.finetune.dense_units,
    dropout: float = _V2.finetune.dropout,
    validation_split: Annotated[
        float | None,
        typer.Option(help=_defaults(_V2.validation_fraction, _V1.validation_fraction)),
    ] = None,
    test_split: Annotated[
        float, typer.Option(help="Held out for the reported figures.")
    ] = _V2.test_fraction,
    seed: int = _V2.finetune.seed,
    first_block: Annotated[
        int, typer.Option(min=13, max=14, help="The first fine-tuned block: 14, or 13 and 14.")
    ] = _V2.finetune.first_block,
    label_smoothing: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Fine-tuning's label smoothing.")
    ] = _V2.finetune.label_smoothing,
    mixup: Annotated[
        float, typer.Option(min=0.0, help="Mixup of maps, Beta(a, a); 0 is off.")
    ] = _V2.finetune.mixup_alpha,
    ema_decay: Annotated[
        float,
        typer.Option(min=0.0, max=0.9999, help="Keep the weights' moving average; 0 is off."),
    ] = _V2.finetune.ema_decay,
    augment_views: Annotated[
        int, typer.Option(help="Frozen-base only: extra augmented feature views per image.")
    ] = _V1.augment_views,
    zoom: Annotated[
        float, typer.Option(help="Frozen-base augmentation zoom range.")
    ] = _V1.augmentation.zoom,
    shear: Annotated[
        float, typer.Option(help="Frozen-base shear range in degrees.")
    ] = _V1.augmentation.shear_degrees,
) -> None:
    """Fine-tune Xception's block 14 with the head; write the model folder serving runs.

    Duplicates are dropped, the data split train/validation/test; the base runs once
    per image (its add_11 maps are cached in CACHE_DIR); the epoch and the confidence
    temperature are chosen on validation; the INT8 IR is accepted on the test split.
    `--first-block 13 --label-smoothing 0.1` is the v3 candidate (docs/model.md).
    """
    settings = get_settings()
    chosen = _given(batch_size=batch_size, epochs=epochs)
    if frozen_base:
        v1 = replace(
            _V1,
            input_size=input_size,
            learning_rate=learning_rate,
            dense_units=dense_units,
            dropout=dropout,
            seed=seed,
            augment_views=augment_views,
            augmentation=Augmentation(zoom=zoom, shear_degrees=shear),
            **chosen,
            **_given(validation_fraction=validation_split),
        )
        _train_frozen_base(settings, data_dir, output, v1)
        return
    v2 = replace(
        _V2,
        input_size=input_size,
        test_fraction=test_split,
        map_batch_size=settings.inference_batch_size,
        finetune=replace(
            _V2.finetune,
            block_learning_rate=block_learning_rate,
            head_learning_rate=learning_rate,
            dense_units=dense_units,
            dropout=dropout,
            seed=seed,
            first_block=first_block,
            label_smoothing=label_smoothing,
            mixup_alpha=mixup,
            ema_decay=ema_decay,
            **chosen,
        ),
        **_given(validation_fraction=validation_split),
    )
    _release(settings, data_dir, output, v2)


def _release(settings: Settings, data_dir: Path, output: Path, config: ReleaseConfig) -> None:
    from shared.training.metrics import format_report
    from shared.training.release import release

    result = release(
        data_dir,
        output,
        config,
        base_weights=settings.base_weights,
        cache_dir=settings.cache_dir,
        backend=settings.inference_backend,
        max_pixels=settings.max_image_pixels,
        progress=progress_bar,
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


@app.command()
def levers(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder with one subfolder of images per class.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the table, logits and sheets.")
    ] = Path("artifacts/levers"),
    shipped: Annotated[
        Path, typer.Option(help="The model folder whose weights are the `v2` row.")
    ] = Path("models/default"),
    only: Annotated[
        list[str] | None, typer.Option("--lever", help="Run only these (repeat); default all.")
    ] = None,
) -> None:
    """Measure model v3's candidate changes against v2 on v2's splits (docs/model.md)."""
    from shared.classifier import artifact
    from shared.training.levers import LEVERS, run_levers

    chosen = tuple(only or LEVERS)
    unknown = sorted(set(chosen) - set(LEVERS))
    if unknown:
        raise typer.BadParameter(f"unknown lever(s) {unknown}; choose from {list(LEVERS)}")
    settings = get_settings()
    outcomes = run_levers(
        data_dir,
        output,
        base_weights=settings.base_weights,
        cache_dir=settings.cache_dir,
        shipped_top=shipped / artifact.TOP_WEIGHTS_NAME,
        levers=chosen,
    )
    for outcome in outcomes:
        typer.echo(
            f"{outcome.lever:10} validation {outcome.val_accuracy:.4f}  "
            f"test {outcome.test_accuracy:.4f}"
        )


def _train_frozen_base(
    settings: Settings, data_dir: Path, output: Path, config: TrainConfig
) -> None:
    from shared.training.frozen_base import train as run_training
    from shared.training.metrics import format_report

    result = run_training(
        data_dir,
        output,
        config,
        base_weights=settings.base_weights,
        cache_dir=settings.cache_dir,
        backend=settings.inference_backend,
        feature_batch_size=settings.inference_batch_size,
        max_pixels=settings.max_image_pixels,
        progress=progress_bar,
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
    classifier = _load(settings, model)
    if holdout:
        images = select_holdout(images, classifier.manifest)
    report = evaluate_images(
        images,
        classifier,
        batch_size=settings.inference_batch_size,
        max_pixels=settings.max_image_pixels,
        progress=progress_bar,
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
    classifier = _load(settings, model)
    advance = progress_bar("classifying", total)
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
    from shared.training.frozen_base import quantize_model

    settings = get_settings()
    result = quantize_model(
        list_labelled_images(data_dir),
        model or settings.model_path,
        settings.base_weights,
        settings.cache_dir,
        calibration_size=calibration,
        batch_size=settings.inference_batch_size,
        progress=progress_bar,
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
    # The Keras network, not the serving IR.
    classifier = _load(get_settings(), model, precision="fp32")
    classifier.save_keras(output)
    typer.echo(f"model {classifier.version} written to {output}")


def _load(settings: Settings, model: Path | None, precision: Precision | None = None) -> Classifier:
    from shared.classifier.model import load_classifier

    return load_classifier(
        model or settings.model_path,
        settings.base_weights,
        settings.inference_backend,
        cache_dir=settings.cache_dir,
        precision=precision or settings.inference_precision,
    )
