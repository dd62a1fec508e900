"""Memory-aware batching and out-of-memory recovery, on CPU.

The batch size is chosen from (simulated) free GPU memory and the threshold; a CUDA
out-of-memory error is raised in the running decode (the decode loop's `before_step` hook)
whenever it holds more than N windows: the job must still finish with exactly the segments
of a run without the fault, and with N = 0 fail with WindowTooLarge's message.
"""

import logging

import numpy as np
import pytest
import torch
from whisper.model import ModelDimensions

from checkpoints import DIMS
from conftest import LONG_11_MIN, fast_settings, shared_audio
from engine import Engine, WindowTooLarge, load_audio
from engine.decoding import decode_loop, memory
from engine.decoding.memory import GpuMemory, fit_batch_size, window_cost_mb

LARGE_V3 = ModelDimensions(**DIMS["large-v3"])
CUDA = torch.device("cuda", 0)  # only a label here: the memory reading is injected


def _reading(free_mb, total_mb=80_000, cached_mb=0.0):
    return lambda device: GpuMemory(free_mb, total_mb, cached_mb)


def test_a_large_v3_window_costs_what_its_cross_attention_cache_suggests():
    cost = window_cost_mb(LARGE_V3, dtype_bytes=2, max_new_tokens=224)
    cross = 2 * 32 * 1500 * 1280 * 2 / 2**20  # keys and values of 32 decoder layers
    assert cross < cost < 1.3 * cross  # ~290 MB
    assert window_cost_mb(LARGE_V3, 4, 224) == pytest.approx(2 * cost, rel=0.02)
    assert window_cost_mb(LARGE_V3, 2, 100) < cost


COST = window_cost_mb(LARGE_V3, 2, 224)
HEADROOM = memory.HEADROOM_MB


@pytest.mark.parametrize(
    "free_mb, used_mb, cached_mb, threshold_mb, expected",
    [
        (80_000, 3100, 0, None, 16),  # plenty: the configured batch size
        (HEADROOM + 4.5 * COST, 3100, 0, None, 4),  # room for four windows after the headroom
        (100, 3100, 0, None, 1),  # nothing free: still one window (which then fails clearly if it must)
        (80_000, 3100, 0, 3100 + HEADROOM + 6.5 * COST, 6),  # the threshold, not the device, is the limit
        (HEADROOM + 2.5 * COST, 3100, 5 * COST, None, 7),  # what PyTorch holds unused is usable too
        (80_000, 3100 + 5 * COST, 5 * COST, 3100 + HEADROOM + 6.5 * COST, 6),  # ... also under the threshold
    ],
    ids=["plenty", "four fit", "none fit", "threshold", "cached", "cached under threshold"],
)
def test_batch_size_follows_free_memory_and_threshold(free_mb, used_mb, cached_mb, threshold_mb, expected):
    reading = _reading(free_mb, total_mb=free_mb + used_mb, cached_mb=cached_mb)
    assert fit_batch_size(16, LARGE_V3, CUDA, 2, 224, threshold_mb, read=reading) == expected


def test_on_cpu_the_configured_batch_size_is_used():
    assert fit_batch_size(16, LARGE_V3, torch.device("cpu"), 4, 224, 10.0, read=_reading(0)) == 16


# -- out-of-memory in the running decode -------------------------------------------------------
class FailAbove:
    """A `before_step` hook: the step runs out of memory whenever the running decode holds
    more than `limit` windows. `sizes`: the rows of every step tried; `failed`: of those that failed."""

    def __init__(self, limit: int):
        self.limit, self.sizes, self.failed = limit, [], []

    def __call__(self, decode) -> None:
        self.sizes.append(len(decode))
        if len(decode) > self.limit:
            self.failed.append(len(self.sizes) - 1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


@pytest.fixture(scope="module")
def recording():
    """480 s: eight sections (batch 8; 60 s each at least), so the first step's batch has eight
    rows to halve."""
    return load_audio(shared_audio(LONG_11_MIN))[: 16000 * 480]


def _fields(segments):
    return [(s.start, s.end, s.text, s.tokens, round(s.avg_logprob, 4)) for s in segments]


@pytest.fixture(scope="module")
def clean(micro_checkpoint, recording):
    with Engine(fast_settings(micro_checkpoint, batch_size=8)) as engine:
        return engine.transcribe(recording)


def test_an_oom_halves_the_batch_and_retries_the_same_windows(micro_checkpoint, recording, clean):
    """The CUDA branch on the CPU: the running decode is thrown away, the batch limit halved
    and the same windows decoded again (their streams had not moved); the transcript does not
    change. (On a CPU windows join one per step, so the decode fails as its fifth row joins.)"""
    failing = FailAbove(4)
    with Engine(fast_settings(micro_checkpoint, batch_size=8), before_step=failing) as engine:
        recovered = engine.transcribe(recording)
    assert len(failing.failed) == 1, "the halved batch should have fitted"
    failed_at = failing.failed[0]
    assert failing.sizes[failed_at] == 5  # one more than fits...
    assert max(failing.sizes[failed_at + 1 :]) == 2  # ...halved, and the loop keeps the size that fitted
    assert _fields(recovered.segments) == _fields(clean.segments)
    assert recovered.windows == clean.windows


def test_when_not_even_one_window_fits_the_job_fails_saying_so_and_the_engine_goes_on(
    micro_checkpoint, recording
):
    failing = FailAbove(0)
    with Engine(fast_settings(micro_checkpoint, batch_size=8), before_step=failing) as engine:
        with pytest.raises(WindowTooLarge, match="single 30 s window"):
            engine.transcribe(recording)
        failing.limit = 8  # memory is back: the next job runs
        assert engine.transcribe(recording[: 16000 * 20]).text


def test_the_fitted_size_bounds_the_running_decode(micro_checkpoint, recording, monkeypatch):
    monkeypatch.setattr(decode_loop, "fit_batch_size", lambda requested, *args, **kwargs: min(requested, 3))
    spy = FailAbove(1000)
    with Engine(fast_settings(micro_checkpoint, batch_size=8), before_step=spy) as engine:
        engine.transcribe(recording)
    assert max(spy.sizes) == 3  # eight streams, three rows at most


def test_the_threshold_reaches_the_decode_loop(micro_checkpoint, monkeypatch):
    seen = []
    original = memory.fit_batch_size
    monkeypatch.setattr(
        decode_loop,
        "fit_batch_size",
        lambda *args, **kwargs: seen.append(args[5]) or original(*args, **kwargs),
    )
    with Engine(fast_settings(micro_checkpoint, gpu_memory_threshold_mb=5200)) as engine:
        engine.transcribe(
            np.zeros(16000, dtype=np.float32) + 0.01 * np.sin(np.arange(16000, dtype=np.float32))
        )
    assert seen and set(seen) == {5200}


# -- on a GPU, for real --------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "windows_that_fit, expect_failure", [(3.5, False), (0.3, True)], ids=["halves", "too large"]
)
def test_a_real_cuda_oom_halves_the_batch_or_fails_clearly(
    recording, tmp_path, monkeypatch, caplog, windows_that_fit, expect_failure
):
    """A per-process memory cap leaves room for a few windows of a wide model; the fitter is
    told nothing (so the batch starts too big) and CUDA's own allocator raises."""
    from checkpoints import write_checkpoint

    # large-v3 width, few layers: fast
    DIMS["wide4"] = dict(DIMS["large-v3"], n_audio_layer=4, n_text_layer=4)
    try:
        checkpoint = write_checkpoint(tmp_path / "wide4.pt", "wide4", lively=False)
    finally:
        del DIMS["wide4"]
    settings = fast_settings(checkpoint, device="cuda", precision="fp16", batch_size=8)
    with Engine(settings) as engine:
        clean = engine.transcribe(recording)
    monkeypatch.setattr(decode_loop, "fit_batch_size", lambda requested, *args, **kwargs: requested)
    with Engine(settings) as engine:
        with engine.models.lease(str(checkpoint)) as model:
            model_dims = model.dims
        device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.empty_cache()
        cost = window_cost_mb(model_dims, 2, 24) * 2**20
        total = torch.cuda.get_device_properties(device).total_memory
        cap = torch.cuda.memory_allocated(device) + 8 * model_dims.n_mels * 3000 * 6 + windows_that_fit * cost
        torch.cuda.set_per_process_memory_fraction(cap / total, device)
        try:
            if expect_failure:
                with pytest.raises(WindowTooLarge, match="single 30 s window"):
                    engine.transcribe(recording)
                return
            with caplog.at_level(logging.WARNING, logger=decode_loop.__name__):
                recovered = engine.transcribe(recording)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    assert "CUDA out of memory: retrying with batches of" in caplog.text
    assert [s.text for s in recovered.segments] == [s.text for s in clean.segments]
