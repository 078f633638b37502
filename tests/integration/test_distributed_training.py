"""Data-parallel training in real processes on CPU (Gloo): two processes train what one process trains
with the same global batch, and ``imgcls train --nproc 2`` runs, resumes and reports like one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from tests.processes import kill_imgcls_once_written

pytestmark = pytest.mark.slow

SETTINGS = (
    "augment.preset=none",  # no random augmentation: every process sees exactly the pixels one would
    "augment.hflip=false",
    "train.batch_size=8",
    "optim.lr=0.05",
    "optim.warmup_epochs=0",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bn_free_model(classes: int) -> nn.Module:
    # Batch norm normalises over each process's own share (SyncBatchNorm is CUDA only), so the exact
    # comparison uses a model without it; the CLI test below trains simple_cnn, which has it.
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, classes))


def _one_epoch(config, out: Path) -> None:
    """One epoch through the trainer's own pieces, as ``trainer.fit`` runs it; this rank's results to ``out``."""
    from trainer.distributed import join
    from trainer.engine import train_one_epoch
    from trainer.fit import epoch_seed
    from trainer.models import BuiltModel
    from trainer.train import (
        build_loaders,
        build_training_state,
        load_data,
        set_up_compute,
        train_label_counts,
    )

    dist = join("cpu")
    compute = set_up_compute(config, dist)
    data = load_data(config, None)
    built = BuiltModel(_bn_free_model(len(data.class_names)), ("3",), None)
    loaders = build_loaders(config, data, compute, dist)
    state = build_training_state(config, built, train_label_counts(data), loaders, compute, None, None, dist)
    loaders.shuffle_generator.manual_seed(epoch_seed(config.train.seed, 0))
    first_loss = []
    criterion = state.criterion

    def recording(logits, targets):
        loss = criterion(logits, targets)
        first_loss.append(loss.item())
        return loss

    stats = train_one_epoch(
        state.training_model,
        loaders.train,
        state.optimizer,
        state.scheduler,
        recording,
        compute.device,
        compute.precision,
        accumulation_steps=loaders.grad_accumulation_steps,
    )
    steps = loaders.optimizer_steps_per_epoch
    # the first step's loss over the global batch: the mean over its micro-batches on every rank
    first = dist.mean(
        {"loss": sum(first_loss[: loaders.grad_accumulation_steps]) / loaders.grad_accumulation_steps}, 1
    )
    epoch = dist.mean({k: stats[k] for k in ("loss", "accuracy")}, weight=stats["images"])
    torch.save(
        {"model": state.model.state_dict(), "first_loss": first["loss"], "epoch": epoch, "steps": steps},
        out / f"rank{dist.rank}.pt",
    )
    dist.leave()


def _rank_main(rank: int, world_size: int, port: int, config, out: Path) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    _one_epoch(config, out)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_two_processes_train_an_epoch_as_one_process_does_with_the_same_global_batch(
    tiny_config, make_imagefolder, tmp_path, accumulation
):
    data = make_imagefolder(classes=3, per_class=16)
    alone_dir, pair_dir = tmp_path / "alone", tmp_path / "pair"
    alone_dir.mkdir(), pair_dir.mkdir()
    _one_epoch(tiny_config(data, *SETTINGS), alone_dir)
    config = tiny_config(data, *SETTINGS, f"train.grad_accumulation_steps={accumulation}")
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), config, pair_dir), nprocs=2)

    alone = torch.load(alone_dir / "rank0.pt", weights_only=False)
    ranks = [torch.load(pair_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert alone["steps"] == ranks[0]["steps"] >= 2
    for rank in ranks:
        assert rank["first_loss"] == pytest.approx(alone["first_loss"], rel=1e-5)
        assert rank["epoch"]["loss"] == pytest.approx(alone["epoch"]["loss"], rel=1e-4)
        assert rank["epoch"]["accuracy"] == pytest.approx(alone["epoch"]["accuracy"], abs=1e-9)
        for key, value in alone["model"].items():  # after every step of the epoch, the same weights
            torch.testing.assert_close(rank["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)


# --- the command line: imgcls train --nproc 2 ---


def _imgcls(*args: str, cwd: Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgcls", *args], cwd=cwd, capture_output=True, text=True, timeout=600, **popen
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    done = _imgcls("data", "digits", "--out", "data/digits", cwd=root)
    assert done.returncode == 0, done.stderr
    return root


def _train_args(run_name: str, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        str(Path(__file__).parents[2] / "configs" / "digits.yaml"),
        "--run-name",
        run_name,
        "--epochs",
        "4",
        "--no-report",
        "--set",
        "train.threads=1",
        *extra,
    ]


def test_train_nproc_2_records_the_processes_and_lands_in_the_accuracy_band_of_one_process(digits):
    alone = _imgcls(*_train_args("alone"), cwd=digits)
    assert alone.returncode == 0, alone.stderr
    pair = _imgcls(*_train_args("pair", "--nproc", "2"), cwd=digits)
    assert pair.returncode == 0, pair.stderr

    # rank 0 alone reports: one result line, one run, one bundle
    assert pair.stdout.count("test accuracy:") == 1 and "bundle:" in pair.stdout
    assert pair.stderr.count("epoch   4/4") == 1
    recorded = yaml.safe_load((digits / "runs" / "pair" / "config.yaml").read_text())
    assert recorded["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "micro_batch_size": 32,
        "global_batch_size": 64,
    }
    assert recorded["train"]["batch_size"] == 64
    assert (
        yaml.safe_load((digits / "runs" / "alone" / "config.yaml").read_text())["distributed"]["world_size"]
        == 1
    )

    def metrics(name):
        return yaml.safe_load((digits / "runs" / name / "metrics.json").read_text())

    assert metrics("pair")["test"]["accuracy"] > 0.9
    assert abs(metrics("pair")["test"]["accuracy"] - metrics("alone")["test"]["accuracy"]) < 0.05
    # the same data order and global batch: the first epoch's mean training loss differs only by batch
    # norm's statistics over 32 instead of 64 images (and dropout's masks)
    first = [
        float((digits / "runs" / name / "metrics.csv").read_text().splitlines()[1].split(",")[2])
        for name in ("alone", "pair")
    ]
    assert first[1] == pytest.approx(first[0], rel=0.1)
    assert (digits / "models" / "digits").is_dir()


def test_a_killed_two_process_run_continues_with_resume_if_exists_and_ends_as_an_uninterrupted_one(digits):
    args = _train_args("killed", "--nproc", "2", "--resume-if-exists", "--no-export")
    kill_imgcls_once_written(args, digits, digits / "runs" / "killed" / "checkpoints" / "last.pt")
    assert not (digits / "runs" / "killed" / "metrics.json").exists()

    resumed = _imgcls(*args, cwd=digits)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing" in resumed.stderr
    straight = _imgcls(*_train_args("straight", "--nproc", "2", "--no-export"), cwd=digits)
    assert straight.returncode == 0, straight.stderr

    # every rank's RNG state and the data order carried over: bit for bit the same weights at the end
    a, b = (
        torch.load(digits / "runs" / name / "checkpoints" / "last.pt", weights_only=False)
        for name in ("killed", "straight")
    )
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)
    for key, value in a["ema"]["module"].items():
        torch.testing.assert_close(value, b["ema"]["module"][key], rtol=0, atol=0, msg=key)

    def rows(name):  # every epoch's metrics, but its seconds
        lines = (digits / "runs" / name / "metrics.csv").read_text().splitlines()[1:]
        return [float(v) for line in lines for v in line.split(",")[:-2]]

    assert len(rows("killed")) == len(rows("straight")) == 4 * 12
    assert rows("killed") == pytest.approx(rows("straight"), rel=1e-5)

    again = _imgcls(*args, cwd=digits)
    assert again.returncode == 2 and "already finished training" in again.stderr


def test_a_global_batch_that_does_not_divide_over_the_processes_fails_once_with_the_fix(digits):
    done = _imgcls(*_train_args("odd", "--nproc", "2", "--set", "train.batch_size=63"), cwd=digits)
    assert done.returncode == 2
    assert done.stderr.count("train.batch_size=63 is the global batch") == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.cuda
def test_train_nproc_2_on_cuda_runs_nccl_one_gpu_per_process_with_sync_batchnorm(digits):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"two NCCL processes need two GPUs; this machine has {torch.cuda.device_count()}")
    args = _train_args("nccl", "--nproc", "2", "--device", "cuda", "--no-export")
    done = _imgcls(*args, "--set", "train.sync_batchnorm=true", cwd=digits)
    assert done.returncode == 0, done.stderr
    recorded = yaml.safe_load((digits / "runs" / "nccl" / "config.yaml").read_text())
    assert recorded["distributed"]["backend"] == "nccl" and recorded["distributed"]["world_size"] == 2
    metrics = yaml.safe_load((digits / "runs" / "nccl" / "metrics.json").read_text())
    assert metrics["device"] == "cuda:0" and metrics["test"]["accuracy"] > 0.9


def test_nproc_under_torchrun_is_a_usage_error(digits):
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", *_train_args("nested", "--nproc", "2")],
        cwd=digits,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WORLD_SIZE": "2"},
    )
    assert done.returncode == 2 and "already started by torchrun" in done.stderr
