"""The device-decode pipeline a worker uses, run here on the CPU device: when a version gets one, the
batch staged on its own thread, and each image's error kept for its own caller."""

from __future__ import annotations

import asyncio
import io
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import service.device_pipeline as pipeline_module
import service.device_preprocess as preprocess_module
from imgcls.manifest import PreprocessSpec
from service.device_pipeline import DevicePipeline, StagedBatch, open_device_pipeline
from service.device_preprocess import DevicePreprocessor
from service.errors import BadInputError
from service.preprocess import Preprocessor


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _cpu() -> Preprocessor:
    spec = PreprocessSpec(resize=20, crop_height=16, crop_width=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    return Preprocessor(spec)


def _runtime(device: str, takes_tensors: bool = True) -> SimpleNamespace:
    return SimpleNamespace(device=device, accepts_device_tensors=takes_tensors)


def _open(mode: str, runtime: SimpleNamespace, **kwargs) -> DevicePipeline | None:
    return open_device_pipeline(mode, runtime, _cpu(), name="m", version=1, **kwargs)


def _broken_decoder(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("nvJPEG is not available")

    monkeypatch.setattr(preprocess_module, "decode_jpeg", broken)


@pytest.mark.parametrize(
    ("mode", "runtime"),
    [
        ("off", _runtime("cuda")),
        ("auto", _runtime("cpu")),  # auto is for CUDA only
        ("auto", _runtime("cuda", takes_tensors=False)),  # ONNX Runtime: host arrays only
    ],
)
def test_no_pipeline_unless_the_setting_and_the_runtime_call_for_one(mode, runtime):
    assert _open(mode, runtime) is None


def test_on_opens_a_warmed_up_pipeline_even_on_the_cpu_device():
    pipeline = _open("on", _runtime("cpu", takes_tensors=False))
    assert pipeline is not None and pipeline.device.type == "cpu"
    asyncio.run(pipeline.close())


def test_a_decoder_failing_its_warm_up_fails_the_load_when_on(monkeypatch):
    _broken_decoder(monkeypatch)
    with pytest.raises(RuntimeError, match="nvJPEG is not available"):
        _open("on", _runtime("cpu"))


def test_a_decoder_failing_its_warm_up_is_left_off_with_a_warning_when_auto(monkeypatch, caplog):
    # A CUDA runtime, with the preprocessor made on the CPU device: this machine may have no GPU.
    monkeypatch.setattr(
        pipeline_module, "DevicePreprocessor", lambda cpu, device: DevicePreprocessor(cpu, "cpu")
    )
    _broken_decoder(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="imgcls.worker"):
        assert _open("auto", _runtime("cuda")) is None
    assert (
        "m v1: JPEG decoding on cuda failed its warm-up (RuntimeError: nvJPEG is not available)"
        in caplog.text
    )


def test_a_staged_batch_keeps_each_images_error_for_its_own_caller_and_is_timed():
    timed: list[float] = []
    pipeline = _open("on", _runtime("cpu"), on_staged=timed.append)
    good = _jpeg(1)
    routed = [pipeline.route(good, 0), pipeline.route(good[: len(good) // 2], 1)]  # the second is truncated

    async def scenario() -> StagedBatch:
        try:
            return await pipeline.stage(routed)
        finally:
            await pipeline.close()

    staged = asyncio.run(scenario())
    assert staged.tensor.shape == (2, 3, 16, 16) and len(timed) == 1 and timed[0] >= 0
    assert staged.rows.tolist() == [True, False]
    answers = staged.answers(np.array([[0.25, 0.75], [0.5, 0.5]]))
    np.testing.assert_array_equal(answers[0], [0.25, 0.75])
    assert isinstance(answers[1], BadInputError) and str(answers[1]).startswith("image 1: corrupt")


def test_images_the_device_decoder_refuses_are_decoded_on_the_cpu_and_logged_once(monkeypatch, caplog):
    pipeline = _open("on", _runtime("cpu"))
    _broken_decoder(monkeypatch)  # after the warm-up: the decoder now refuses every JPEG

    async def scenario() -> list[StagedBatch]:
        try:
            return [await pipeline.stage([pipeline.route(_jpeg(seed), 0)]) for seed in (2, 3)]
        finally:
            await pipeline.close()

    with caplog.at_level(logging.WARNING, logger="imgcls.worker"):
        staged = asyncio.run(scenario())
    assert [batch.errors for batch in staged] == [[None], [None]]
    np.testing.assert_array_equal(staged[0].tensor[0].numpy(), _cpu()(_jpeg(2)))
    assert caplog.text.count("the device JPEG decoder refused some images") == 1
