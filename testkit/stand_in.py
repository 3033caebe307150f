"""A stand-in model of a set pace, for the tests of the plumbing around the model.

The shipped IR runs 4 to 90 images a second on the machines CI is given (a CPU
with AVX-512 VNNI runs its INT8 kernels twentyfold faster than one with AVX2
alone), so tests that push hundreds of photos through workers to see how they
are shared, taken back or finished took four times as long on the slow ones.
Those tests are about claims, leases, crashes and queues, not about what the
model says: they run this instead. It is a real OpenVINO IR in a real artifact
folder, loaded by the worker's own code, that takes the shipped one's input and
gives six logits, and whose depth is chosen on this machine so that an image
costs about SECONDS_PER_IMAGE on the throughput engine: the pace the tests'
sizes were chosen for, whatever the CPU. Its answers mean nothing; tests of
what the model says use the shipped IR.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from shared.classifier import artifact
from shared.classifier.runner import compile_throughput
from shared.settings import DEFAULT_MODEL_PATH

SECONDS_PER_IMAGE = 0.02  # about the shipped IR's pace on a CPU with AVX-512 VNNI
WIDTH = 192  # each layer is a (WIDTH x WIDTH) by (WIDTH x WIDTH) product a row
PROBE_LAYERS = 4
PROBE_IMAGES = 48


def build_stand_in(folder: Path, seconds_per_image: float = SECONDS_PER_IMAGE) -> Path:
    """An artifact folder at `folder` whose IR costs about `seconds_per_image` an image here."""
    shipped = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
    assert isinstance(shipped, artifact.FineTunedManifest), "the shipped model serves an IR"
    probe = _write(folder / "probe", PROBE_LAYERS, shipped)
    measured = _seconds_per_image(probe, shipped.input_size)
    shutil.rmtree(probe)
    layers = max(1, round(PROBE_LAYERS * seconds_per_image / measured))
    return _write(folder, layers, shipped)


def _write(folder: Path, layers: int, shipped: artifact.FineTunedManifest) -> Path:
    """The IR, and the shipped manifest with a version and serving form of its own."""
    import openvino as ov
    import openvino.opset13 as ops

    size = shipped.input_size
    rng = np.random.default_rng(layers)
    image = ops.parameter([-1, size, size, 3], np.float32, name="x")
    # Mean colour -> a WIDTH x WIDTH map per image; layers of products keep it there.
    colour = ops.reduce_mean(image, np.array([1, 2]), keep_dims=False)
    spread = rng.normal(size=(3, WIDTH * WIDTH)).astype(np.float32)
    hidden = ops.reshape(ops.matmul(colour, spread, False, False), [-1, WIDTH, WIDTH], False)
    mixing = (rng.normal(size=(WIDTH, WIDTH)) / WIDTH).astype(np.float32)
    for _ in range(layers):
        hidden = ops.tanh(ops.matmul(hidden, ops.constant(mixing), False, False))
    pooled = ops.reduce_mean(hidden, np.array([1]), keep_dims=False)
    head = rng.normal(size=(WIDTH, len(shipped.classes))).astype(np.float32)
    logits = ops.matmul(pooled, head, False, False)
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / artifact.SERVING_XML
    ov.save_model(ov.Model([logits], [image], "stand-in"), xml, compress_to_fp16=False)
    serving = artifact.ServingForm(sha256=artifact.files_sha256(xml, xml.with_suffix(".bin")))
    manifest = shipped.model_copy(
        update={
            "version": f"standin{layers:05d}",
            "serving": serving,
            "training": {"stand_in": f"{layers} layers of {WIDTH}x{WIDTH}; see testkit.stand_in"},
        }
    )
    (folder / artifact.MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return folder


def _seconds_per_image(folder: Path, size: int) -> float:
    """Seconds an image on the throughput engine the workers use, with every request busy."""
    runner = compile_throughput(folder / artifact.SERVING_XML)
    images = list(np.random.default_rng(0).random((PROBE_IMAGES, size, size, 3), np.float32))
    runner.start(images[:4]).wait()  # the first requests pay for their memory
    started = time.perf_counter()
    runner.start(images).wait()
    return (time.perf_counter() - started) / PROBE_IMAGES
