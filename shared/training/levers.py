"""Model v3's levers, each measured against v2 on v2's own splits (`intel-classifier levers`).

The base runs once per image up to `add_10` (before block 13; cached like v2's maps);
block 13, frozen, then gives block 14's input for the levers that train from there.
Each lever trains with v2's recipe and seed but for the one change it names, picks
its epoch on validation, and is scored once on the test split (fp32, from the maps).
v2 itself is scored the same way, from its shipped weights, so the rows compare.

| lever | what changes |
| --- | --- |
| `v2` | nothing: the shipped weights, scored through the same maps |
| `blocks13` | blocks 13 and 14 train with the head (from the maps before block 13) |
| `smoothing` | label smoothing 0.1 |
| `mixup` | mixup of maps, Beta(0.2, 0.2) |
| `ema` | the weights' exponential moving average (decay 0.99) is what is validated and kept |
| `clean` | training images a confident out-of-fold prediction disagrees with are dropped |
| `ensemble` | v2's top and a second top (seed 7) average their logits over one base pass |
| `combined` | the levers that beat v2 on validation, together |
| `combined_ensemble` | the combined top and a second block 14 + head (seed 7) sharing the rest |

A rerun into the same folder keeps the levers it holds and builds on them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier.engine import make_engine
from shared.classifier.labels import CLASSES
from shared.classifier.network import CUT_LAYERS, Network, base_weights_identity
from shared.training.config import FineTuneConfig, ReleaseConfig
from shared.training.dataset import list_labelled_images, split_images
from shared.training.features import FeatureSpec, compute_features
from shared.training.finetune import fit, logits_of
from shared.training.noisy_labels import contact_sheet, find_suspects, out_of_fold_probabilities

log = logging.getLogger(__name__)

LEVERS = (
    "v2",
    "ensemble",
    "smoothing",
    "mixup",
    "ema",
    "clean",
    "blocks13",
    "combined",
    "combined_ensemble",
)
# Every lever changes one thing of v2's recipe (block 14, no regulariser), whatever
# train's defaults become.
V2_RECIPE = FineTuneConfig(first_block=14, label_smoothing=0.0, mixup_alpha=0.0, ema_decay=0.0)
SUSPECT_CONFIDENCE = 0.9
ENSEMBLE_SEED = 7


@dataclass
class Splits:
    paths: list[Path]
    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class Outcome:
    lever: str
    val_accuracy: float
    test_accuracy: float
    best_epoch: int | None = None
    seconds_per_epoch: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """What every lever reads: the splits, both caches of maps, and where to write."""

    splits: Splits
    maps13: np.ndarray
    maps14: np.ndarray
    base_weights: str
    output_dir: Path
    config: ReleaseConfig
    shipped_top: Path
    logits: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    clean_rows: np.ndarray | None = None  # the training split less the suspect labels

    def network(self, first_block: int = 14) -> Network:
        tuning = self.config.finetune
        return Network(
            self.base_weights,
            self.config.input_size,
            tuning.dense_units,
            tuning.dropout,
            first_block,
        )

    def score(self, lever: str, network: Network, maps: np.ndarray, **extra: Any) -> Outcome:
        split = self.splits
        val = logits_of(network.top, maps[split.val])
        test = logits_of(network.top, maps[split.test])
        self.logits[lever] = (val, test)
        np.savez(self.output_dir / f"{lever}.logits.npz", val=val, test=test)
        return Outcome(
            lever,
            val_accuracy=_accuracy(val, split.labels[split.val]),
            test_accuracy=_accuracy(test, split.labels[split.test]),
            **extra,
        )

    def train(
        self,
        lever: str,
        tuning: FineTuneConfig,
        rows: np.ndarray | None = None,
        maps: np.ndarray | None = None,
        **detail: Any,
    ) -> Outcome:
        network = self.network(tuning.first_block)
        if maps is None:
            maps = self.maps13 if tuning.first_block == 13 else self.maps14
        rows = self.splits.train if rows is None else rows
        labels = self.splits.labels
        fitted = fit(
            network,
            maps[rows],
            labels[rows],
            maps[self.splits.val],
            labels[self.splits.val],
            tuning,
        )
        network.save_top(self.output_dir / f"{lever}.weights.h5")
        return self.score(
            lever,
            network,
            maps,
            best_epoch=fitted.best_epoch,
            seconds_per_epoch=fitted.seconds_per_epoch,
            detail={"history": fitted.history, **detail},
        )


def run_levers(
    data_dir: Path,
    output_dir: Path,
    *,
    base_weights: str,
    cache_dir: Path,
    shipped_top: Path,
    levers: tuple[str, ...] = LEVERS,
    config: ReleaseConfig | None = None,
) -> list[Outcome]:
    config = config or ReleaseConfig()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench = _prepare(data_dir, output_dir, base_weights, cache_dir, config, shipped_top)
    log.info("maps ready in %.0f s", time.perf_counter() - started)
    done = _earlier(bench)  # a rerun builds on the levers this folder already holds
    for lever in levers:
        lever_started = time.perf_counter()
        outcome = RUNS[lever](bench, done)
        outcome.detail["seconds"] = round(time.perf_counter() - lever_started, 1)
        done[lever] = outcome
        log.info("%s: val %.4f test %.4f", lever, outcome.val_accuracy, outcome.test_accuracy)
        _write(output_dir, list(done.values()))
    return [done[lever] for lever in levers]


def _earlier(bench: Bench) -> dict[str, Outcome]:
    table = bench.output_dir / "levers.json"
    if not table.is_file():
        return {}
    done = {row["lever"]: Outcome(**row) for row in json.loads(table.read_text())}
    for logits in bench.output_dir.glob("*.logits.npz"):
        with np.load(logits) as stored:
            bench.logits[logits.name.removesuffix(".logits.npz")] = (stored["val"], stored["test"])
    rows = bench.output_dir / "clean.rows.npy"
    if rows.is_file():
        bench.clean_rows = np.load(rows)
    return done


def _prepare(
    data_dir: Path,
    output_dir: Path,
    base_weights: str,
    cache_dir: Path,
    config: ReleaseConfig,
    shipped_top: Path,
) -> Bench:
    split = split_images(
        list_labelled_images(data_dir),
        config.validation_fraction,
        config.test_fraction,
        V2_RECIPE.seed,
    )
    images = split.images
    labels = np.asarray([image.label for image in images])
    network = Network(
        base_weights, config.input_size, V2_RECIPE.dense_units, V2_RECIPE.dropout, first_block=13
    )
    maps13 = compute_features(
        [image.path for image in images],
        split.hashes,
        FeatureSpec(
            config.input_size,
            base_weights_identity(base_weights),
            layer=CUT_LAYERS[13],
            shape=network.map_shape,
            dtype="float16",
        ),
        engine=lambda: make_engine(network.up_to_cut(), "auto"),
        cache_dir=cache_dir,
        batch_size=config.map_batch_size,
        max_pixels=40_000_000,
    )
    readable = maps13.readable
    splits = Splits(
        [image.path for image in images],
        labels,
        np.asarray([i for i in split.train if readable[i]]),
        np.asarray([i for i in split.validation if readable[i]]),
        np.asarray([i for i in split.test if readable[i]]),
    )
    maps14 = _through(network.through_block_13(), maps13.features)
    return Bench(splits, maps13.features, maps14, base_weights, output_dir, config, shipped_top)


def _through(model: Any, maps: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run a frozen part over cached maps in batches, keeping float16."""
    parts = [
        np.asarray(
            model(maps[start : start + batch_size].astype(np.float32), training=False)
        ).astype(np.float16)
        for start in range(0, len(maps), batch_size)
    ]
    return np.concatenate(parts)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float((logits.argmax(axis=1) == labels).mean()), 4)


def _v2(bench: Bench, done: dict[str, Outcome]) -> Outcome:
    network = bench.network()
    network.load_top(bench.shipped_top)
    return bench.score("v2", network, bench.maps14)


def _ensemble_of(lever: str) -> Callable[[Bench, dict[str, Outcome]], Outcome]:
    """`lever`'s top and a second block 14 + head (another seed), logits averaged.

    The second part shares all that comes before block 14, so the pair costs one more
    block 14 (5.7 % of the network's multiply-adds): where `lever` trained block 13,
    the partner trains on the output of that fine-tuned block 13.
    """

    def run(bench: Bench, done: dict[str, Outcome]) -> Outcome:
        change = dict(done[lever].detail.get("change", {})) if lever in done else {}
        chosen = done[lever].detail.get("chosen", []) if lever in done else []
        rows = bench.clean_rows if "clean" in chosen else None  # as `lever` trained
        maps = bench.maps14
        if change.pop("first_block", 14) == 13:
            trained = bench.network(13)
            trained.load_top(bench.output_dir / f"{lever}.weights.h5")
            maps = _through(trained.through_block_13(), bench.maps13)
        partner = f"{lever}_seed{ENSEMBLE_SEED}"
        tuning = replace(V2_RECIPE, **change, seed=ENSEMBLE_SEED)
        second = bench.train(partner, tuning, rows=rows, maps=maps, change=change)
        first_val, first_test = bench.logits[lever]
        val, test = bench.logits[partner]
        split = bench.splits
        return Outcome(
            f"{lever}_ensemble" if lever != "v2" else "ensemble",
            val_accuracy=_accuracy(first_val + val, split.labels[split.val]),
            test_accuracy=_accuracy(first_test + test, split.labels[split.test]),
            detail={
                "members": [lever, partner],
                "partner": {"val": second.val_accuracy, "test": second.test_accuracy},
            },
        )

    return run


def _regulariser(name: str, **change: Any) -> Callable[[Bench, dict[str, Outcome]], Outcome]:
    def run(bench: Bench, done: dict[str, Outcome]) -> Outcome:
        return bench.train(name, replace(V2_RECIPE, **change), change=change)

    return run


def _clean(bench: Bench, done: dict[str, Outcome]) -> Outcome:
    split = bench.splits
    pooled = _through(_pooling(bench), bench.maps14)
    labels = split.labels[split.train]
    probabilities = out_of_fold_probabilities(pooled[split.train].astype(np.float32), labels)
    suspects = find_suspects(probabilities, labels, SUSPECT_CONFIDENCE)
    flagged = split.train[suspects.positions]
    sample = np.random.default_rng(0).permutation(len(flagged))[:48]
    contact_sheet(
        [split.paths[i] for i in flagged[sample]],
        [int(split.labels[i]) for i in flagged[sample]],
        [int(p) for p in suspects.predicted[sample]],
        [float(c) for c in suspects.confidence[sample]],
        bench.output_dir / "suspect_labels.png",
    )
    (bench.output_dir / "suspect_labels.json").write_text(
        json.dumps(
            [
                {
                    "image": f"{split.paths[i].parent.name}/{split.paths[i].name}",
                    "label": CLASSES[split.labels[i]],
                    "predicted": CLASSES[p],
                    "confidence": round(float(c), 3),
                }
                for i, p, c in zip(flagged, suspects.predicted, suspects.confidence, strict=True)
            ],
            indent=1,
        )
        + "\n"
    )
    bench.clean_rows = np.setdiff1d(split.train, flagged)
    np.save(bench.output_dir / "clean.rows.npy", bench.clean_rows)
    return bench.train(
        "clean",
        V2_RECIPE,
        rows=bench.clean_rows,
        dropped=len(flagged),
        of=len(split.train),
        out_of_fold_accuracy=round(suspects.out_of_fold_accuracy, 4),
        pairs=suspects.pairs(labels),
    )


def _pooling(bench: Bench) -> Any:
    """Block 14 and global pooling with ImageNet's weights: the frozen base's 2048 features."""
    import keras

    network = bench.network()
    maps = keras.Input(shape=network.map_shape)
    x = maps
    for layer in network.top.layers[1:-1]:  # block 14's layers and the pooling, not the head
        x = layer(x)
    return keras.Model(maps, x)


def _combined(bench: Bench, done: dict[str, Outcome]) -> Outcome:
    """The levers that beat v2 on validation, together (chosen on validation, not test)."""
    v2 = done["v2"].val_accuracy
    winners = {
        lever: done[lever]
        for lever in ("smoothing", "mixup", "ema", "blocks13", "clean")
        if lever in done and done[lever].val_accuracy > v2
    }
    change: dict[str, Any] = {}
    for outcome in winners.values():
        change |= outcome.detail.get("change", {})
    rows = bench.clean_rows if "clean" in winners else None
    tuning = replace(V2_RECIPE, **change)
    return bench.train("combined", tuning, rows=rows, chosen=list(winners), change=change)


RUNS: dict[str, Callable[[Bench, dict[str, Outcome]], Outcome]] = {
    "v2": _v2,
    "ensemble": _ensemble_of("v2"),
    "smoothing": _regulariser("smoothing", label_smoothing=0.1),
    "mixup": _regulariser("mixup", mixup_alpha=0.2),
    "ema": _regulariser("ema", ema_decay=0.99),
    "clean": _clean,
    "blocks13": _regulariser("blocks13", first_block=13),
    "combined": _combined,
    "combined_ensemble": _ensemble_of("combined"),
}


def _write(output_dir: Path, outcomes: list[Outcome]) -> None:
    (output_dir / "levers.json").write_text(
        json.dumps([asdict(outcome) for outcome in outcomes], indent=1) + "\n"
    )
