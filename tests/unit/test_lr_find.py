"""The learning-rate range test: the sweep, fastai's suggestion rules on curves whose answer is known,
the in-place edit of the config file, and the test end to end on generated images and from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from imgcls.cli import main
from imgcls.errors import ConfigError
from trainer.config_edit import format_lr, write_lr_into_config
from trainer.lr_curve import (
    exponential_lrs,
    minimum,
    slide,
    smooth_losses,
    steepest,
    suggestion_window,
    sweep,
    valley,
)
from trainer.lr_find import find_lr, write_outputs

# --- the sweep ---


def test_schedule_is_exponential_from_start_to_end():
    lrs = exponential_lrs(1e-7, 10.0, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7, rel=1e-12)
    assert lrs[-1] == pytest.approx(10.0, rel=1e-12)
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-7) ** (1 / 99), rtol=1e-9)


def test_smoothing_is_a_bias_corrected_moving_average():
    # corrected, a constant loss reads as itself from the first step (uncorrected it starts at 2% of it)
    np.testing.assert_allclose(smooth_losses([3.0] * 5, 0.98), 3.0)
    beta = 0.9
    expected, average = [], 0.0
    for n, loss in enumerate([4.0, 2.0, 1.0], start=1):
        average = beta * average + (1 - beta) * loss
        expected.append(average / (1 - beta**n))
    np.testing.assert_allclose(smooth_losses([4.0, 2.0, 1.0], beta), expected)
    np.testing.assert_allclose(smooth_losses([4.0, 2.0, 1.0], 0.0), [4.0, 2.0, 1.0])


def test_sweep_stops_once_the_smoothed_loss_exceeds_the_factor_times_its_minimum():
    losses = iter([2.0, 1.0, 1.5, 3.9, 4.1, 1.0, 1.0])
    seen: list[float] = []

    def step(lr: float) -> float:
        seen.append(lr)
        return next(losses)

    result = sweep([1, 2, 3, 4, 5, 6, 7], step, diverge_factor=4.0, smoothing=0.0)
    assert result.stop_reason == "diverged"
    assert result.losses == (2.0, 1.0, 1.5, 3.9, 4.1)  # the step that diverged is kept
    assert seen == [1, 2, 3, 4, 5]


def test_sweep_stops_on_a_non_finite_loss():
    losses = iter([1.0, 0.9, math.nan, 0.5])
    result = sweep([1, 2, 3, 4], lambda lr: next(losses), smoothing=0.5)
    assert result.stop_reason == "non_finite"
    assert len(result.losses) == 3


def test_sweep_runs_every_rate_when_the_loss_never_diverges():
    result = sweep(exponential_lrs(1e-3, 1.0, 30), lambda lr: 1.0 - lr / 2)
    assert result.stop_reason == "completed"
    assert len(result.smoothed) == 30


def test_suggestions_read_the_curve_without_its_first_tenth_its_last_five_and_non_finite_values():
    assert suggestion_window(100, [1.0] * 100, 100) == (10, 95)
    assert suggestion_window(60, [1.0] * 59 + [math.inf], 100) == (10, 55)
    assert suggestion_window(40, [1.0] * 30 + [math.nan] * 10, 100) == (10, 30)


# --- fastai's suggestion rules, on curves whose answer is known ---

LRS = exponential_lrs(1e-5, 1.0, 61)  # 12 points a decade: LRS[40] is 10**(-5 + 40/12)


def _valley_curve() -> np.ndarray:
    """A parabola in log(lr) with its minimum at LRS[40]."""
    return (np.log10(LRS) - np.log10(LRS[40])) ** 2


def test_valley_takes_the_rate_half_way_into_the_longest_descent():
    # the descent is points 0..40 (41 long); fastai starts it at -1 and reads 1/3 + 1/6 of the way in
    assert valley(LRS, _valley_curve()) == LRS[-1 + 13 + 6]


def test_valley_ignores_a_short_dip_before_the_long_descent():
    losses = _valley_curve()
    losses[3:6] = [0.1, 0.05, 0.1]  # lower than everything until the long descent's end
    assert LRS[10] < valley(LRS, losses) < LRS[40]


def test_steepest_is_where_the_loss_falls_fastest_per_decade():
    losses = -np.tanh(3 * (np.log10(LRS) + 3))  # falls fastest at 1e-3 = LRS[24]
    assert steepest(LRS, losses) == pytest.approx(LRS[24], rel=0.25)


def test_steepest_reads_the_descent_only_not_a_fall_back_after_divergence():
    losses = -np.tanh(3 * (np.log10(LRS) + 3))
    losses[50:] = np.linspace(50.0, 2.0, 11)  # a spike past the minimum, falling back steeply
    assert steepest(LRS, losses) == pytest.approx(LRS[24], rel=0.25)


def test_minimum_is_a_tenth_of_the_rate_at_the_lowest_loss():
    assert minimum(LRS, _valley_curve()) == pytest.approx(LRS[40] / 10)


def test_slide_lands_in_the_descent_a_window_before_the_rise():
    losses = np.concatenate([2 - 0.01 * np.arange(40), 1.6 + 0.02 * np.arange(1, 22) ** 2])
    index = list(LRS).index(slide(LRS, losses))
    assert 20 <= index <= 40 - 14


def test_slide_has_no_answer_on_a_curve_shorter_than_its_window():
    assert slide(LRS[:15], _valley_curve()[:15]) is None


# --- writing the rate into a config file ---

_CONFIG = """\
# my experiment: keep this comment
data:
  path: data/x # where the images are
optim:
    optimizer: adamw
    lr: 0.003 # peak, after warm-up
    weight_decay: 0.05

    # the schedule
    scheduler: cosine
train:
  epochs: 3 # short
"""


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    return [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]


def test_lr_is_formatted_with_three_significant_digits_as_a_yaml_float():
    assert format_lr(0.002512345) == "0.00251"
    assert format_lr(1e-5) == "1.0e-05"
    assert yaml.safe_load(format_lr(1e-5)) == 1e-5
    assert yaml.safe_load(format_lr(2.34e-6)) == pytest.approx(2.34e-6)


def test_writing_the_lr_replaces_its_value_and_keeps_its_comment_and_every_other_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(_CONFIG, encoding="utf-8")
    write_lr_into_config(path, 0.002512345)
    after = path.read_text(encoding="utf-8")
    assert _changed_lines(_CONFIG, after) == [
        ("    lr: 0.003 # peak, after warm-up", "    lr: 0.00251 # peak, after warm-up")
    ]
    assert yaml.safe_load(after)["optim"]["lr"] == 0.00251


def test_writing_the_lr_adds_it_indented_like_its_siblings_when_missing(tmp_path):
    path = tmp_path / "exp.yaml"
    text = _CONFIG.replace("    lr: 0.003 # peak, after warm-up\n", "")
    path.write_text(text, encoding="utf-8")
    write_lr_into_config(path, 0.01)
    after = path.read_text(encoding="utf-8")
    assert after == text.replace("optim:\n", "optim:\n    lr: 0.01\n")


def test_writing_the_lr_adds_the_optim_section_when_missing(tmp_path):
    path = tmp_path / "exp.yaml"
    text = "# only data\ndata:\n  path: data/x # here"  # no newline at the end
    path.write_text(text, encoding="utf-8")
    write_lr_into_config(path, 3e-4)
    assert path.read_text(encoding="utf-8") == text + "\noptim:\n  lr: 0.0003\n"


def test_writing_the_lr_keeps_windows_line_endings(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(_CONFIG.replace("\n", "\r\n").encode())
    write_lr_into_config(path, 0.02)
    assert path.read_bytes() == _CONFIG.replace("lr: 0.003", "lr: 0.02").replace("\n", "\r\n").encode()


def test_writing_the_lr_refuses_a_flow_style_optim_and_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "exp.yaml"
    text = "optim: {lr: 0.1, optimizer: sgd} # inline\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"set optim\.lr by hand"):
        write_lr_into_config(path, 0.01)
    assert path.read_text(encoding="utf-8") == text


# --- end to end: a tiny model on generated images ---


def test_find_lr_suggests_a_rate_inside_the_sweep_and_writes_nothing_under_runs_dir(
    make_imagefolder, tiny_config, tmp_path
):
    config = tiny_config(make_imagefolder(classes=3, per_class=12))
    result = find_lr(config, num_steps=30)
    assert not config.runs_dir.exists()
    assert result.steps == len(result.lrs) == len(result.losses) == len(result.smoothed_losses)
    assert result.lrs[0] == pytest.approx(1e-7)
    assert 1e-7 <= result.suggested_lr <= 10.0
    assert result.suggested_lr == result.suggestions.valley
    paths = write_outputs(result, tmp_path / "out")
    rows = paths["csv"].read_text(encoding="utf-8").splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss"
    assert len(rows) == result.steps + 1
    summary = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert summary["suggested_lr"] == result.suggested_lr
    assert summary["suggestion"] == "valley"
    assert summary["settings"]["num_steps"] == 30
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backbone_groups_keep_their_scale_to_the_head_rate_the_sweep_reports(
    make_imagefolder, tiny_config, monkeypatch
):
    import trainer.lr_find as lr_find

    original, built = lr_find.build_training_state, []

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(lr_find, "build_training_state", recording)
    # a freeze phase means fine-tuning: the backbone's groups get lr * backbone_lr_scale
    config = tiny_config(
        make_imagefolder(), "model.freeze_backbone_epochs=1", "model.backbone_lr_scale=0.25", "optim.lr=0.5"
    )
    result = find_lr(config, start_lr=1e-6, end_lr=1e-2, num_steps=20)
    groups = {g["group_name"]: g["lr"] for g in built[0].optimizer.param_groups}
    assert groups["head"] == pytest.approx(result.lrs[-1])
    assert groups["backbone"] == pytest.approx(0.25 * result.lrs[-1])


def test_a_loss_that_diverges_at_once_asks_for_a_lower_start_lr(make_imagefolder, tiny_config):
    config = tiny_config(make_imagefolder())
    with pytest.raises(ConfigError, match="lower --start-lr"):
        find_lr(config, start_lr=100.0, end_lr=1e6, num_steps=20)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, "must be positive and below --end-lr"),
        ({"num_steps": 5}, "--steps"),
    ],
)
def test_settings_that_cannot_sweep_are_refused_before_any_work(settings, message, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=message):
        find_lr(tiny_config(tmp_path / "no-data-needed"), **settings)


# --- the command line ---


_SHORT_SWEEP = ("--start-lr", "1e-5", "--end-lr", "1", "--steps", "20")


def _config_file(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""\
# a tiny recipe for the lr-find tests
runs_dir: {tmp_path / "runs"}
data:
  path: {data}
  val_fraction: 0.2
  test_fraction: 0.2
preprocess:
  image_size: 16
  resize: 16
optim:
  lr: 0.003 # peak, after warm-up
train:
  batch_size: 8 # small data
""",
        encoding="utf-8",
    )
    return path


def test_cli_writes_the_curve_json_and_plot_and_shows_how_to_use_the_rate(make_imagefolder, tmp_path, capsys):
    config = _config_file(tmp_path, make_imagefolder())
    before = config.read_text(encoding="utf-8")
    out = tmp_path / "lr"
    code = main(["lr-find", "--config", str(config), *_SHORT_SWEEP, "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    suggested = format_lr(json.loads((out / "lr_find.json").read_text(encoding="utf-8"))["suggested_lr"])
    assert f"valley    {suggested:>9}  <- suggested" in stdout
    assert f"--write-config, or train with --set optim.lr={suggested}" in stdout
    assert config.read_text(encoding="utf-8") == before
    assert not (tmp_path / "runs").exists()


def test_cli_with_write_config_sets_the_suggested_lr_in_the_config_file(make_imagefolder, tmp_path, capsys):
    config = _config_file(tmp_path, make_imagefolder())
    before = config.read_text(encoding="utf-8")
    code = main(["lr-find", "-c", str(config), *_SHORT_SWEEP, "--write-config"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    (out,) = (tmp_path / "runs").iterdir()  # the default output folder, and nothing else
    assert out.name.startswith("lr-find-tiny-")
    suggested = format_lr(json.loads((out / "lr_find.json").read_text(encoding="utf-8"))["suggested_lr"])
    assert f"written into {config}: optim.lr={suggested}" in stdout
    assert _changed_lines(before, config.read_text(encoding="utf-8")) == [
        ("  lr: 0.003 # peak, after warm-up", f"  lr: {suggested} # peak, after warm-up")
    ]
