"""Memory-aware batching and out-of-memory recovery, on CPU.

The batch size is chosen from (simulated) free GPU memory and the threshold; a CUDA
out-of-memory error is injected at the engine's boundary (the `decoder` it calls) whenever
a batch is larger than N windows: the job must still finish with exactly the segments of a
run without the fault, and with N = 0 fail with WindowTooLarge's message.
"""
import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions

from checkpoints import DIMS
from conftest import LONG_11_MIN, fast_settings, shared_audio
from engine import Engine, WindowTooLarge, load_audio
from engine import memory, transcriber
from engine.chunking import plan_windows
from engine.fast_decode import decode as fast_decode
from engine.memory import GpuMemory, fit_batch_size, window_cost_mb
from engine.transcriber import BatchTranscriber, DecodeOptions

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


@pytest.mark.parametrize("free_mb, used_mb, cached_mb, threshold_mb, expected", [
    (80_000, 3100, 0, None, 16),  # plenty: the configured batch size
    (HEADROOM + 4.5 * COST, 3100, 0, None, 4),  # room for four windows after the headroom
    (100, 3100, 0, None, 1),  # nothing free: still one window (which then fails clearly if it must)
    (80_000, 3100, 0, 3100 + HEADROOM + 6.5 * COST, 6),  # the threshold, not the device, is the limit
    (HEADROOM + 2.5 * COST, 3100, 5 * COST, None, 7),  # what PyTorch holds unused is usable too
    (80_000, 3100 + 5 * COST, 5 * COST, 3100 + HEADROOM + 6.5 * COST, 6),  # ... also under the threshold
], ids=["plenty", "four fit", "none fit", "threshold", "cached", "cached under threshold"])
def test_batch_size_follows_free_memory_and_threshold(free_mb, used_mb, cached_mb, threshold_mb, expected):
    reading = _reading(free_mb, total_mb=free_mb + used_mb, cached_mb=cached_mb)
    assert fit_batch_size(16, LARGE_V3, CUDA, 2, 224, threshold_mb, read=reading) == expected


def test_on_cpu_the_configured_batch_size_is_used():
    assert fit_batch_size(16, LARGE_V3, torch.device("cpu"), 4, 224, 10.0, read=_reading(0)) == 16


# -- out-of-memory at the decoder boundary ---------------------------------------------------
class FailAbove:
    """A decoder that runs out of memory whenever a batch has more than `limit` windows."""

    def __init__(self, limit: int, decoder=fast_decode):
        self.limit, self.decoder, self.sizes = limit, decoder, []

    def __call__(self, model, mel, options):
        self.sizes.append(len(mel))
        if len(mel) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.decoder(model, mel, options)


@pytest.fixture(scope="module")
def recording():
    audio = load_audio(shared_audio(LONG_11_MIN))[: 16000 * 200]  # 200 s: 8 windows, enough to halve twice
    return audio, plan_windows(audio)


OPTIONS = DecodeOptions(language="en", temperatures=(0.0,), max_new_tokens=24, compression_ratio_threshold=None,
                        logprob_threshold=None, no_speech_threshold=None, batch_size=8)


def _fields(segments):
    return [(s.start, s.end, s.text, s.tokens, round(s.avg_logprob, 4)) for s in segments]


def _segments(decoded):
    return [[(s.start, s.end, s.tokens) for s in window] for window in decoded.segments]


@pytest.mark.parametrize("decoder", [fast_decode, whisper.decode], ids=["fast_decode", "whisper.decode"])
def test_an_oom_halves_the_batch_and_retries_the_same_windows(micro_checkpoint, recording, decoder):
    audio, windows = recording
    model = whisper.load_model(str(micro_checkpoint), device="cpu")
    with torch.inference_mode():
        clean = BatchTranscriber(model, fp16=False, decoder=decoder).transcribe(audio, windows, OPTIONS)
        failing = FailAbove(2, decoder)
        recovered = BatchTranscriber(model, fp16=False, decoder=failing).transcribe(audio, windows, OPTIONS)
    assert failing.sizes[:3] == [8, 4, 2]  # halved until it fits...
    assert max(failing.sizes[3:]) == 2  # ...and the job keeps the size that fitted
    assert _segments(recovered) == _segments(clean)
    assert recovered.windows_decoded == clean.windows_decoded == len(windows)


def test_when_not_even_one_window_fits_the_job_fails_saying_so(micro_checkpoint, recording):
    audio, windows = recording
    model = whisper.load_model(str(micro_checkpoint), device="cpu")
    with pytest.raises(WindowTooLarge, match="single 30 s window"), torch.inference_mode():
        BatchTranscriber(model, fp16=False, decoder=FailAbove(0)).transcribe(audio, windows, OPTIONS)


def test_the_engine_recovers_and_fails_the_same_way(micro_checkpoint, recording):
    audio, _ = recording
    settings = fast_settings(micro_checkpoint, batch_size=8)
    with Engine(settings) as clean_engine:
        clean = clean_engine.transcribe(audio)
    failing = FailAbove(3)
    with Engine(settings, decoder=failing) as engine:
        recovered = engine.transcribe(audio)
        # the same segments; only float noise from other batch shapes may differ (no_speech_prob)
        assert _fields(recovered.segments) == _fields(clean.segments)
        assert 8 in failing.sizes and max(failing.sizes[failing.sizes.index(2):]) <= 2
    with Engine(settings, decoder=FailAbove(0)) as engine:
        job = engine.submit(audio)
        with pytest.raises(WindowTooLarge, match="single 30 s window"):
            job.result()


def test_the_fitted_size_is_measured_for_every_batch(micro_checkpoint, recording, monkeypatch):
    audio, windows = recording
    model = whisper.load_model(str(micro_checkpoint), device="cpu")
    monkeypatch.setattr(transcriber, "fit_batch_size", lambda requested, *args, **kwargs: min(requested, 3))
    spy = FailAbove(1000)
    with torch.inference_mode():
        BatchTranscriber(model, fp16=False, decoder=spy).transcribe(audio, windows, OPTIONS)
    assert spy.sizes == [3, 3, 2]  # 8 windows cut to what "fits", batch after batch


def test_the_threshold_reaches_the_transcriber(micro_checkpoint, monkeypatch):
    seen = []
    original = memory.fit_batch_size
    monkeypatch.setattr(transcriber, "fit_batch_size",
                        lambda *args, **kwargs: seen.append(args[5]) or original(*args, **kwargs))
    with Engine(fast_settings(micro_checkpoint, gpu_memory_threshold_mb=5200)) as engine:
        engine.transcribe(np.zeros(16000, dtype=np.float32) + 0.01 * np.sin(np.arange(16000, dtype=np.float32)))
    assert seen == [5200]


# -- on a GPU, for real --------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("windows_that_fit, expect_failure", [(3.5, False), (0.3, True)], ids=["halves", "too large"])
def test_a_real_cuda_oom_halves_the_batch_or_fails_clearly(recording, monkeypatch, windows_that_fit, expect_failure):
    """A per-process memory cap leaves room for a few windows of a wide model; the fitter is
    told nothing (so the batch starts too big) and CUDA's own allocator raises."""
    from checkpoints import build_model

    audio, windows = recording
    dims = dict(DIMS["large-v3"], n_audio_layer=4, n_text_layer=4)  # large-v3 width, few layers: fast
    DIMS["wide4"] = dims
    try:
        model = build_model("wide4", lively=False).half().cuda()
    finally:
        del DIMS["wide4"]
    device = torch.device("cuda", torch.cuda.current_device())
    options = DecodeOptions(language="en", temperatures=(0.0,), max_new_tokens=24, compression_ratio_threshold=None,
                            logprob_threshold=None, no_speech_threshold=None, batch_size=8)
    with torch.inference_mode():
        clean = BatchTranscriber(model, fp16=True).transcribe(audio, windows, options)
    monkeypatch.setattr(transcriber, "fit_batch_size", lambda requested, *args, **kwargs: requested)
    torch.cuda.empty_cache()
    cost = window_cost_mb(model.dims, 2, 24) * 2**20
    total = torch.cuda.get_device_properties(device).total_memory
    mels = len(windows) * model.dims.n_mels * 3000 * (4 + 2)  # computed before the decoder, outside its retry
    cap = torch.cuda.memory_allocated(device) + mels + windows_that_fit * cost
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    spy = FailAbove(1000)  # never fails itself: only records the batch sizes
    try:
        with torch.inference_mode():
            if expect_failure:
                with pytest.raises(WindowTooLarge, match="single 30 s window"):
                    BatchTranscriber(model, fp16=True, decoder=spy).transcribe(audio, windows, options)
                return
            recovered = BatchTranscriber(model, fp16=True, decoder=spy).transcribe(audio, windows, options)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    assert spy.sizes[0] == 8 and min(spy.sizes) < 8
    assert _segments(recovered) == _segments(clean)
