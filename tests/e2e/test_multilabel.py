"""A multilabel dataset end to end: `imgcls train` (task: multilabel) -> bundle -> `imgcls serve`'s app
-> KServe v1 (`labels` beside `top_k`), Open Inference Protocol v2 (sigmoid `probabilities`, the
classification extension) and the real `tritonclient`."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.manifest import load_manifest
from service.settings import BatchingSettings, Settings
from tests.conftest import serve_in_thread

pytestmark = pytest.mark.slow

LABELS = ["red", "green", "blue", "yellow"]


def _image(present: list[int], seed: int) -> Image.Image:
    """Label k present: a bright bar in row band k (channel k % 3), over seeded noise."""
    array = np.random.default_rng(seed).integers(0, 40, size=(20, 20, 3), dtype=np.uint8)
    for k in present:
        array[k * 5 : (k + 1) * 5, :, k % 3] = 230
    return Image.fromarray(array)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def multilabel_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        present = [k for k in range(4) if rng.random() < 0.35]
        _image(present, i).save(root / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", ";".join(LABELS[k] for k in present)))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    overrides = [
        "task=multilabel",
        f"runs_dir={root / 'runs'}",
        f"export.out_dir={root / 'models'}",
        "export.name=tags",
        "export.formats=[torchscript, onnx, onnx-int8]",
        "preprocess.image_size=16",
        "preprocess.resize=16",
        "augment.preset=light",
        "train.epochs=6",
        "train.batch_size=16",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
    ]
    args = ["train", "--data", str(root / "labels.csv"), "--run-name", "tags"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    return root / "models" / "tags" / "1"


def test_training_writes_multilabel_metrics_thresholds_and_report(multilabel_bundle: Path):
    run = multilabel_bundle.parents[2] / "runs" / "tags"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["task"] == "multilabel"
    for key in ("map", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss"):
        assert key in summary["test"]
    assert summary["test"]["map"] > 0.9
    assert set(summary["thresholds"]) == set(LABELS)
    with (run / "split.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "labels", "split"]
    data_report = json.loads((run / "data_report.json").read_text())
    assert sum(c["images"] for c in data_report["label_combinations"]) == 160
    report = json.loads((run / "report" / "metrics.json").read_text())
    assert report["task"] == "multilabel" and len(report["per_label"]) == 4


def test_bundle_says_multilabel_and_int8_parity_compares_label_sets(multilabel_bundle: Path):
    manifest = load_manifest(multilabel_bundle)
    assert manifest.task == "multilabel" and manifest.temperature is None
    assert manifest.thresholds is not None and len(manifest.thresholds) == 4
    for artifact in manifest.artifacts:
        assert artifact.parity.agreement_on == "label_set" and artifact.parity.passed


@pytest.fixture(scope="module")
def server(multilabel_bundle: Path):
    settings = Settings(
        model_repo=multilabel_bundle.parents[1],
        batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=2, max_queue_size=64),
        intra_op_threads=1,
        decode_threads=1,
    )
    with serve_in_thread(settings) as url:
        yield url


CASES = [[0, 2], [1], [], [0, 1, 3]]
IMAGES = [_png(_image(present, 5000 + i)) for i, present in enumerate(CASES)]


def _v1_label_sets(server: str) -> list[list[str]]:
    instances = [{"b64": base64.b64encode(image).decode()} for image in IMAGES]
    response = httpx.post(f"{server}/v1/models/tags:predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    return [sorted(row["label"] for row in p["labels"]) for p in response.json()["predictions"]]


def test_v1_returns_every_label_above_its_threshold(server: str, multilabel_bundle: Path):
    instances = [{"b64": base64.b64encode(image).decode()} for image in IMAGES]
    response = httpx.post(f"{server}/v1/models/tags:predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    manifest = load_manifest(multilabel_bundle)
    thresholds = dict(zip(manifest.labels, manifest.thresholds, strict=True))
    right = 0
    for present, prediction in zip(CASES, response.json()["predictions"], strict=True):
        assert len(prediction["top_k"]) == 4  # top_k still ranks every label by its score
        above = sorted(r["label"] for r in prediction["top_k"] if r["score"] >= thresholds[r["label"]])
        assert sorted(row["label"] for row in prediction["labels"]) == above
        scores = [row["score"] for row in prediction["labels"]]
        assert scores == sorted(scores, reverse=True)
        right += above == sorted(LABELS[k] for k in present)
    assert right >= 3, "the tiny model should get at least three of the four label sets right"
    status = httpx.get(f"{server}/v1/models/tags").json()["versions"][0]
    assert status["task"] == "multilabel" and status["thresholds"] == thresholds


def test_v2_probabilities_are_sigmoid_scores_giving_v1_label_sets(server: str, multilabel_bundle: Path):
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(IMAGES)],
                "data": [base64.b64encode(b).decode() for b in IMAGES],
                "parameters": {"content_type": "base64"},
            }
        ]
    }
    response = httpx.post(f"{server}/v2/models/tags/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    scores = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    manifest = load_manifest(multilabel_bundle)
    thresholds = np.array(manifest.thresholds)
    v2_sets = [sorted(manifest.labels[i] for i in np.flatnonzero(row >= thresholds)) for row in scores]
    assert v2_sets == _v1_label_sets(server)
    assert not np.allclose(scores.sum(axis=1), 1.0)  # not a softmax
    metadata = httpx.get(f"{server}/v2/models/tags").json()
    assert metadata["parameters"]["task"] == "multilabel"
    assert [float(t) for t in metadata["parameters"]["thresholds"].split(",")] == pytest.approx(
        list(manifest.thresholds)
    )


def test_tritonclient_reads_the_sigmoid_scores_and_the_ranked_labels(server: str, multilabel_bundle: Path):
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        images = np.array(IMAGES, dtype=np.object_)
        infer_input = httpclient.InferInput("image", [len(images)], "BYTES")
        infer_input.set_data_from_numpy(images, binary_data=True)
        scores = client.infer("tags", [infer_input]).as_numpy("probabilities")
        manifest = load_manifest(multilabel_bundle)
        thresholds = np.array(manifest.thresholds)
        sets = [sorted(manifest.labels[i] for i in np.flatnonzero(row >= thresholds)) for row in scores]
        assert sets == _v1_label_sets(server)
        ranked_output = httpclient.InferRequestedOutput("probabilities", class_count=2)
        ranked = client.infer("tags", [infer_input], outputs=[ranked_output]).as_numpy("probabilities")
        first = [entry.decode() if isinstance(entry, bytes) else entry for entry in ranked[0]]
        top_two = [manifest.labels[i] for i in np.argsort(-scores[0], kind="stable")[:2]]
        assert [entry.split(":")[2] for entry in first] == top_two
    finally:
        client.close()


def test_evaluate_scores_every_artifact_on_label_sets(multilabel_bundle: Path):
    from benchmarks.evaluate import evaluate_bundle

    run = multilabel_bundle.parents[2] / "runs" / "tags"
    evaluation = evaluate_bundle(multilabel_bundle, run, device="cpu")
    by_runtime = {score.label: score for score in evaluation.scores}
    assert {"eager", "onnxruntime", "onnxruntime-int8"} <= set(by_runtime)
    assert by_runtime["onnxruntime"].agreement_with_eager == 1.0
    assert by_runtime["onnxruntime-int8"].agreement_with_eager >= 0.98
    assert "map" in by_runtime["eager"].metrics
