"""`imgcls evaluate`: a bundle scored as it is served, on a split of the run it came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.evaluate import evaluate_bundle
from imgcls.cli import main
from imgcls.errors import ConfigError
from service.errors import RuntimeUnavailableError
from trainer.rundir import RunDir


@pytest.fixture(scope="module")
def bundle_with_int8(tiny_run):
    from trainer.export import export_bundle

    result, root = tiny_run
    exported = export_bundle(
        result.run_dir, out_dir=root / "evaluate", name="tiny", formats=("torchscript", "onnx", "onnx-int8")
    )
    return exported.bundle_dir, result


def _split_size(run_dir: Path, split: str) -> int:
    return sum(1 for line in RunDir(run_dir).split.read_text().splitlines() if line.endswith("," + split))


def test_every_artifact_is_scored_beside_the_eager_model_which_reproduces_the_runs_test_accuracy(
    bundle_with_int8,
):
    bundle, result = bundle_with_int8
    evaluation = evaluate_bundle(bundle, result.run_dir, device="cpu", batch_size=3)
    assert evaluation.samples == _split_size(result.run_dir, "test")
    scores = {s.label: s for s in evaluation.scores}
    assert list(scores) == ["eager", "torchscript", "onnxruntime", "onnxruntime-int8"]
    assert scores["eager"].metrics["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    for label in ("torchscript", "onnxruntime"):
        assert scores[label].agreement_with_eager == 1.0 and scores[label].accuracy_change == pytest.approx(0)
    int8 = scores["onnxruntime-int8"]
    assert int8.precision == "int8" and int8.device == "cpu"
    assert int8.accuracy_change == pytest.approx(
        int8.metrics["accuracy"] - scores["eager"].metrics["accuracy"]
    )
    assert evaluation.not_loaded == {}


def test_the_split_can_be_chosen(bundle_with_int8):
    bundle, result = bundle_with_int8
    evaluation = evaluate_bundle(bundle, result.run_dir, split="val", device="cpu")
    assert evaluation.split == "val" and evaluation.samples == _split_size(result.run_dir, "val")


def test_an_artifact_that_cannot_load_here_is_listed_with_the_reason(bundle_with_int8, monkeypatch):
    import service.runtimes.choice as runtimes_module

    def unavailable(*args, **kwargs):
        raise RuntimeUnavailableError("onnxruntime has no provider for this device")

    monkeypatch.setattr(runtimes_module, "OnnxRuntime", unavailable)
    bundle, result = bundle_with_int8
    evaluation = evaluate_bundle(bundle, result.run_dir, device="cpu")
    assert [s.label for s in evaluation.scores] == ["eager", "torchscript"]
    assert evaluation.not_loaded == {
        "onnxruntime": "onnxruntime has no provider for this device",
        "onnxruntime-int8": "onnxruntime has no provider for this device",
    }


def test_a_run_with_other_classes_is_refused(bundle_with_int8, tmp_path):
    bundle, result = bundle_with_int8
    other = tmp_path / "other-run"
    shutil.copytree(result.run_dir, other)
    (other / "labels.json").write_text(json.dumps(["cat", "dog", "bird"]))
    with pytest.raises(ConfigError, match="differ from the bundle's"):
        evaluate_bundle(bundle, other, device="cpu")


def test_cli_finds_the_run_in_the_manifest_prints_a_table_and_writes_json(bundle_with_int8, tmp_path, capsys):
    bundle, result = bundle_with_int8
    report = tmp_path / "evaluation.json"
    assert main(["evaluate", "--bundle", str(bundle), "--device", "cpu", "--json", str(report)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{bundle} on the test split of {result.run_dir}")
    assert lines[1].split() == [
        "runtime",
        "precision",
        "device",
        "accuracy",
        "change",
        "agreement",
        "f1_macro",
    ]
    assert [line.split()[0] for line in lines[2:]] == [
        "eager",
        "torchscript",
        "onnxruntime",
        "onnxruntime-int8",
    ]
    written = json.loads(report.read_text())
    assert written["samples"] == _split_size(result.run_dir, "test") and len(written["scores"]) == 4


def test_cli_rejects_an_unknown_split_and_a_mismatched_run_with_exit_2(bundle_with_int8, tmp_path, capsys):
    bundle, result = bundle_with_int8
    assert main(["evaluate", "--bundle", str(bundle), "--split", "holdout"]) == 2
    assert "not a split" in capsys.readouterr().err
    other = tmp_path / "other-run"
    shutil.copytree(result.run_dir, other)
    (other / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    assert main(["evaluate", "--bundle", str(bundle), "--run", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "the run it was exported from" in err


def test_each_runtime_gets_batches_no_larger_than_it_accepts(bundle_with_int8, monkeypatch):
    import benchmarks.evaluate as evaluate_module

    loaded_every_artifact = evaluate_module.load_every_artifact
    seen: list[int] = []

    def engine_like(*args, **kwargs):
        runtimes, failed = loaded_every_artifact(*args, **kwargs)
        onnx = runtimes["onnxruntime"]
        infer = onnx.infer
        onnx.max_batch_size = 2  # as a TensorRT engine built for batches up to 2

        def recorded(batch):
            seen.append(len(batch))
            return infer(batch)

        onnx.infer = recorded
        return runtimes, failed

    monkeypatch.setattr(evaluate_module, "load_every_artifact", engine_like)
    bundle, result = bundle_with_int8
    evaluation = evaluate_bundle(bundle, result.run_dir, device="cpu", batch_size=5)
    assert seen and max(seen) == 2 and sum(seen) == evaluation.samples
    assert next(s for s in evaluation.scores if s.label == "onnxruntime").agreement_with_eager == 1.0


def test_cli_refuses_a_random_init_bundle_and_an_unknown_device_with_exit_2(
    bundle_with_int8, tmp_path, capsys
):
    assert main(["export", "--random-init", "--model", "simple_cnn", "--num-classes", "3", "--image-size", "16",
                 "--out", str(tmp_path / "models" / "speed" / "1")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", "--bundle", str(tmp_path / "models" / "speed" / "1")]) == 2
    assert "random weights" in capsys.readouterr().err
    bundle, _ = bundle_with_int8
    assert main(["evaluate", "--bundle", str(bundle), "--device", "gpu"]) == 2
    assert "not one of auto, cpu, cuda" in capsys.readouterr().err


def test_cli_writes_the_json_into_a_folder_it_creates(bundle_with_int8, tmp_path, capsys):
    bundle, _ = bundle_with_int8
    report = tmp_path / "new" / "folder" / "evaluation.json"
    assert main(["evaluate", "--bundle", str(bundle), "--device", "cpu", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["split"] == "test"
