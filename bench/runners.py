"""One transcription per implementation, measured; runs inside a fresh worker process.

Every implementation gets the same decoded samples (audio decoding is timed separately by
the profile, since each library would otherwise use its own decoder), the same checkpoint,
and equal decoding settings: greedy (temperature 0 only, so no fallback), no
compression-ratio / log-prob / no-speech guards, no conditioning on previous text,
timestamps on, language given, and a cap on sampled tokens per 30 s window. Model loading
and a 30 s warm-up are not timed. Windows and tokens are counted at each library's decode
call, so the table shows how much work each one actually did.
"""
from __future__ import annotations

import gc
import os
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

SAMPLE_RATE = 16000
WARM_UP_S = 30


@dataclass
class Spec:
    impl: str  # a key of RUNNERS
    audio: str  # path of the recording
    checkpoint: str  # openai-whisper .pt
    ct2_dir: str  # the same weights converted for faster-whisper
    device: str  # cpu | cuda
    batch_size: int
    max_new_tokens: int  # tokens per 30 s window for whisper and the engine
    fw_max_new_tokens: int  # the faster-whisper setting that yields the same number (see bench/__main__.py)
    threads: int  # CPU threads for torch and CTranslate2
    memory_threshold_mb: Optional[float] = None  # the engine's gpu_memory_threshold_mb (concurrent-jobs run)


@dataclass
class Measurement:
    impl: str
    wall_s: float  # the timed transcription(s), loading and warm-up excluded
    cpu_s: float  # CPU time (user + system, all threads) of the same span: less sensitive to other load
    audio_s: float  # seconds of audio transcribed (twice the recording for the two-jobs run)
    windows: int  # windows (rows of a decode call) actually decoded
    tokens: int  # tokens actually sampled
    peak_rss_mb: float  # peak resident host memory of the worker process (loading included)
    weights_mb: Optional[float] = None  # CUDA: allocated right after loading = resident weights
    peak_allocated_mb: Optional[float] = None  # CUDA, PyTorch's counters (torch implementations)
    peak_reserved_mb: Optional[float] = None
    gpu_process_peak_mb: Optional[float] = None  # CUDA, NVML: the whole process (context, CTranslate2 included)
    reserved_after_release_mb: Optional[float] = None  # CUDA: reserved after the model is released
    gpu_after_release_mb: Optional[float] = None  # CUDA, NVML, after release
    load: Optional[float] = None  # the machine's 1-minute load average when the run ended
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict:
        return asdict(self)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class NvmlPeak:
    """This process's GPU memory as NVML sees it (what nvidia-smi shows), sampled every 20 ms."""

    def __init__(self):
        self.peak_mb: Optional[float] = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: the column stays empty
            self._nvml = None

    def now_mb(self) -> Optional[float]:
        if self._nvml is None:
            return None
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        used = [p.usedGpuMemory for p in processes if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return sum(used) / 2**20 if used else 0.0

    def __enter__(self) -> "NvmlPeak":
        def sample() -> None:
            while not self._stop.wait(0.02):
                value = self.now_mb()
                if value is not None:
                    self.peak_mb = max(self.peak_mb or 0.0, value)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cuda_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _cuda_peaks(m: Measurement) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        m.peak_allocated_mb = torch.cuda.max_memory_allocated() / 2**20
        m.peak_reserved_mb = torch.cuda.max_memory_reserved() / 2**20


def _cuda_after_release(m: Measurement, nvml: NvmlPeak) -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        m.reserved_after_release_mb = torch.cuda.memory_reserved() / 2**20
    m.gpu_after_release_mb = nvml.now_mb()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(run: Callable[[], None], spec: Spec) -> tuple:
    """(wall s, cpu s, NVML sampler or None) of run()."""
    nvml = NvmlPeak() if spec.device == "cuda" else None
    _cuda_reset() if spec.device == "cuda" else None
    cpu = _cpu_s()
    started = time.perf_counter()
    if nvml is not None:
        with nvml:
            run()
    else:
        run()
    return time.perf_counter() - started, _cpu_s() - cpu, nvml


# -- (a) stock openai-whisper -----------------------------------------------------------------
def run_whisper(spec: Spec, audio: np.ndarray) -> Measurement:
    import torch
    import whisper
    from whisper.model import Whisper

    counts = {"windows": 0, "tokens": 0}
    original = Whisper.decode

    def counting(self, mel, options=whisper.DecodingOptions(), **kwargs):
        results = original(self, mel, options, **kwargs)
        for r in results if isinstance(results, list) else [results]:
            counts["windows"] += 1
            counts["tokens"] += len(r.tokens)
        return results

    Whisper.decode = counting  # transcribe calls model.decode once per window
    model = whisper.load_model(spec.checkpoint, device=spec.device)
    weights = torch.cuda.memory_allocated() / 2**20 if spec.device == "cuda" else None
    options = dict(language="en", temperature=0.0, compression_ratio_threshold=None, logprob_threshold=None,
                   no_speech_threshold=None, condition_on_previous_text=False, fp16=spec.device == "cuda",
                   sample_len=spec.max_new_tokens, verbose=None)
    whisper.transcribe(model, audio[:WARM_UP_S * SAMPLE_RATE], **options)
    counts.update(windows=0, tokens=0)
    wall, cpu, nvml = _timed(lambda: whisper.transcribe(model, audio, **options), spec)
    m = Measurement(spec.impl, wall, cpu, len(audio) / SAMPLE_RATE, counts["windows"], counts["tokens"], 0.0, weights)
    if spec.device == "cuda":
        _cuda_peaks(m)
        m.gpu_process_peak_mb = nvml.peak_mb
        del model
        _cuda_after_release(m, nvml)
    m.notes.append("condition_on_previous_text=False; seeks to the last timestamp as stock does")
    return m


# -- (b) this project's engine -----------------------------------------------------------------
def _engine_settings(spec: Spec, precision: str, workers: int = 1):
    from engine import load_settings

    return load_settings(None, dict(
        model=spec.checkpoint, device=spec.device, precision=precision, batch_size=spec.batch_size,
        max_new_tokens=spec.max_new_tokens, temperatures=[0.0], compression_ratio_threshold=None,
        logprob_threshold=None, no_speech_threshold=None, language="en", workers=workers, warm_up=True,
        gpu_memory_threshold_mb=spec.memory_threshold_mb, max_audio_duration_s=4 * 3600,
    ), environ={})


def run_engine(spec: Spec, audio: np.ndarray, precision: str, decoder=None, jobs: int = 1) -> Measurement:
    import torch

    from engine import Engine

    settings = _engine_settings(spec, precision, workers=jobs)
    engine = Engine(settings) if decoder is None else Engine(settings, decoder=decoder)
    weights = torch.cuda.memory_allocated() / 2**20 if spec.device == "cuda" else None
    engine.transcribe(audio[:WARM_UP_S * SAMPLE_RATE])
    results = []

    def run() -> None:
        handles = [engine.submit(audio) for _ in range(jobs)]  # at once: the jobs run concurrently
        results.extend(h.result() for h in handles)

    wall, cpu, nvml = _timed(run, spec)
    m = Measurement(spec.impl, wall, cpu, jobs * len(audio) / SAMPLE_RATE, sum(r.windows for r in results),
                    sum(r.tokens_decoded for r in results), 0.0, weights)
    if spec.device == "cuda":
        _cuda_peaks(m)
        m.gpu_process_peak_mb = nvml.peak_mb
        report = engine.release(wait=True)
        m.reserved_after_release_mb = report.reserved_after_mb
        m.gpu_after_release_mb = nvml.now_mb()
        if spec.memory_threshold_mb:
            m.notes.append(f"gpu_memory_threshold_mb={spec.memory_threshold_mb:g}")
    engine.close()
    return m


# -- (c) faster-whisper on the converted weights ------------------------------------------------
class _CountingGenerate:
    """Stands in for faster-whisper's CTranslate2 model and counts what `generate` decodes."""

    def __init__(self, inner):
        self._inner = inner
        self.windows = 0
        self.tokens = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def generate(self, *args, **kwargs):
        results = self._inner.generate(*args, **kwargs)
        self.windows += len(results)
        self.tokens += sum(len(r.sequences_ids[0]) for r in results)
        return results


def run_faster_whisper(spec: Spec, audio: np.ndarray, compute_type: str, batched: bool) -> Measurement:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(spec.ct2_dir, device=spec.device, compute_type=compute_type, cpu_threads=spec.threads)
    counter = _CountingGenerate(model.model)
    model.model = counter
    options = dict(language="en", beam_size=1, best_of=1, temperature=0.0, compression_ratio_threshold=None,
                   log_prob_threshold=None, no_speech_threshold=None, condition_on_previous_text=False,
                   without_timestamps=False, max_new_tokens=spec.fw_max_new_tokens)
    if batched:
        pipeline = BatchedInferencePipeline(model)

        def transcribe(samples):
            segments, _ = pipeline.transcribe(samples, batch_size=spec.batch_size, **options)
            list(segments)  # segments are generated lazily
    else:
        def transcribe(samples):
            segments, _ = model.transcribe(samples, vad_filter=False, **options)
            list(segments)

    transcribe(audio[:WARM_UP_S * SAMPLE_RATE])
    counter.windows = counter.tokens = 0
    wall, cpu, nvml = _timed(lambda: transcribe(audio), spec)
    m = Measurement(spec.impl, wall, cpu, len(audio) / SAMPLE_RATE, counter.windows, counter.tokens, 0.0)
    if spec.device == "cuda":
        m.gpu_process_peak_mb = nvml.peak_mb
        m.weights_mb = None
        del model, counter, transcribe  # the closure holds the model too
        if batched:
            del pipeline
        _cuda_after_release(m, nvml)
    m.notes.append(f"max_new_tokens={spec.fw_max_new_tokens}" + ("; VAD chunks (its default)" if batched else ""))
    return m


def _engine_runner(precision: str, decoder: Optional[str] = None, jobs: int = 1):
    def run(spec: Spec, audio: np.ndarray) -> Measurement:
        chosen = None
        if decoder == "whisper.decode":
            import whisper

            chosen = whisper.decode
        return run_engine(spec, audio, precision, chosen, jobs)
    return run


def _fw_runner(compute_type: str, batched: bool):
    return lambda spec, audio: run_faster_whisper(spec, audio, compute_type, batched)


# name -> (label for the table, precision shown, runner); the first is the reference (a)
RUNNERS = {
    "whisper": ("openai-whisper `transcribe`", "fp32/fp16", run_whisper),
    "engine": ("engine", "fp32", _engine_runner("fp32")),
    "engine-fp16": ("engine", "fp16", _engine_runner("fp16")),
    "engine-int8": ("engine", "int8", _engine_runner("int8")),
    "engine-whisper-decode": ("engine, stock `whisper.decode`", "fp32", _engine_runner("fp32", "whisper.decode")),
    "engine-whisper-decode-fp16": ("engine, stock `whisper.decode`", "fp16", _engine_runner("fp16", "whisper.decode")),
    "engine-fp16-2jobs": ("engine, two one-hour jobs at once", "fp16", _engine_runner("fp16", jobs=2)),
    "fw-fp32": ("faster-whisper `WhisperModel`", "fp32", _fw_runner("float32", False)),
    "fw-int8": ("faster-whisper `WhisperModel`", "int8", _fw_runner("int8", False)),
    "fw-fp16": ("faster-whisper `WhisperModel`", "fp16", _fw_runner("float16", False)),
    "fw-batched-fp32": ("faster-whisper `BatchedInferencePipeline`", "fp32", _fw_runner("float32", True)),
    "fw-batched-int8": ("faster-whisper `BatchedInferencePipeline`", "int8", _fw_runner("int8", True)),
    "fw-batched-fp16": ("faster-whisper `BatchedInferencePipeline`", "fp16", _fw_runner("float16", True)),
    "fw-batched-int8-fp16": ("faster-whisper `BatchedInferencePipeline`", "int8_float16", _fw_runner("int8_float16", True)),
}


def run(spec: Spec) -> Measurement:
    import torch
    import whisper

    torch.set_num_threads(spec.threads)
    audio = whisper.audio.load_audio(spec.audio)
    measurement = RUNNERS[spec.impl][2](spec, audio)
    measurement.peak_rss_mb = peak_rss_mb()
    measurement.load = os.getloadavg()[0]
    return measurement
