"""``imgcls tune`` end to end on tiny generated images: a search runs, prunes, writes what a person
reads and a config ``imgcls train`` takes; it resumes, extends, and shares a study between workers."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import kill_imgcls_once_written, run_imgcls_together
from trainer.config import load_config

pytestmark = pytest.mark.slow

SPACE = """
metric: loss
pruner: median
startup_trials: 1
params:
  optim.lr: {choice: [0.01, 1.0e-7]}
  train.batch_size: {choice: [4, 8]}
  augment.preset: {choice: [none, light]}
"""


@pytest.fixture
def study(tmp_path, make_imagefolder):
    """A config file over tiny images, a space, and the imgcls tune arguments that join them."""
    data = make_imagefolder(classes=2, per_class=24)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"""
data: {{path: {data}, val_fraction: 0.25, test_fraction: 0.25}}
preprocess: {{image_size: 16, resize: 16}}
augment: {{hflip: false}}
train: {{epochs: 3, batch_size: 8, threads: 1}}
runs_dir: {tmp_path / "runs"}
"""
    )
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return tmp_path, ["tune", "--config", str(config), "--space", str(space), "--study", "tiny"]


def _imgcls(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgcls", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _trials(root: Path) -> list[dict]:
    with (root / "runs" / "tiny" / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_search_runs_its_trials_prunes_hopeless_ones_and_writes_a_config_train_takes(study):
    root, args = study
    done = _imgcls(*args, "--trials", "6", "--seed", "0", cwd=root)
    assert done.returncode == 0, done.stderr
    trials = _trials(root)
    assert [t["trial"] for t in trials] == [str(n) for n in range(6)]
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    # a learning rate of 1e-7 cannot keep up with the median of the trials before it
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned and all(t["optim.lr"] == "1e-07" and int(t["epochs"]) < 3 for t in pruned)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(complete, key=lambda t: float(t["val_loss"]))
    assert f"best: trial {best['trial']}, val loss" in done.stdout

    study_dir = root / "runs" / "tiny"
    config = load_config(study_dir / "best.yaml")  # the full recipe, ready for imgcls train --config
    assert config.optim.lr == float(best["optim.lr"]) and config.train.batch_size == int(
        best["train.batch_size"]
    )
    assert config.augment.preset == best["augment.preset"] and config.run_name is None
    assert config.train.early_stopping_metric == "loss"
    for t in complete:  # every trial is a complete run directory of its own
        assert (Path(t["run_dir"]) / "metrics.json").is_file()
    summary = (study_dir / "summary.md").read_text()
    assert "## Parameter importance" in summary and f"| {best['trial']} | COMPLETE |" in summary
    assert (study_dir / "importance.png").stat().st_size > 1000
    assert "Traceback" not in done.stderr


def test_trials_is_the_studys_total_so_a_rerun_runs_only_the_missing_ones(study):
    root, args = study
    assert _imgcls(*args, "--trials", "2", cwd=root).returncode == 0
    more = _imgcls(*args, "--trials", "3", cwd=root)
    assert more.returncode == 0, more.stderr
    assert "2 of 3 trials done" in more.stderr and len(_trials(root)) == 3
    again = _imgcls(*args, "--trials", "3", cwd=root)
    assert "already has 3 of 3 trials; nothing to run" in again.stderr and len(_trials(root)) == 3


def test_a_study_refuses_another_space_under_its_name(study):
    root, args = study
    assert _imgcls(*args, "--trials", "1", cwd=root).returncode == 0
    (root / "space.yaml").write_text(SPACE.replace("[4, 8]", "[2, 4]"))
    refused = _imgcls(*args, "--trials", "2", cwd=root)
    assert refused.returncode == 2
    assert "was started with another space" in refused.stderr and "--study" in refused.stderr


def test_two_workers_share_one_study_and_never_run_a_trial_twice(study):
    root, args = study
    logs = run_imgcls_together([*args, "--trials", "6"], root, 2)
    trials = _trials(root)
    assert len(trials) == 6 and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    ran = [{line.split(":")[0] for line in log.splitlines() if line.startswith("trial ")} for log in logs]
    assert ran[0] and ran[1], "each worker ran trials"
    assert not ran[0] & ran[1], "no trial ran in both workers"
    assert ran[0] | ran[1] == {f"trial {n}" for n in range(6)}
    assert len({t["run_dir"] for t in trials}) == 6


def test_a_killed_search_fails_the_dead_trial_and_reruns_it_when_restarted(study):
    root, args = study
    command = [*args, "--trials", "3", "--heartbeat-s", "1", "--set", "train.epochs=6"]
    # mid-trial, as a node dies
    kill_imgcls_once_written(
        command, root, root / "runs" / "tiny" / "trials" / "trial-0000" / "checkpoints" / "last.pt"
    )
    time.sleep(2.5)  # the dead trial's heartbeat goes stale after twice --heartbeat-s

    resumed = _imgcls(*command, cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(root)
    assert trials[0]["state"] == "FAIL"  # the dead one, never counted
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    # the first trial after the restart retries the dead one's values
    retried = trials[1]
    names = ("optim.lr", "train.batch_size", "augment.preset")
    assert all(retried[n] == trials[0][n] for n in names)
