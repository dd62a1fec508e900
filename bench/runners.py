"""One transcription per implementation, measured; runs inside a fresh worker process.

Every implementation gets the same decoded samples (audio decoding is timed separately by
the profile, since each library would otherwise use its own decoder), the same weights, and
each its realistic long-form defaults, made as equal as the libraries allow:

Real weights (`SETTINGS["real"]`): language "en", greedy decoding with whisper's
temperature-fallback ladder (0.0, 0.2, ..., 1.0; one sample per hotter try), the
compression-ratio (2.4), log-prob (-1.0) and no-speech (0.6) guards at whisper's defaults,
timestamps on, whisper's token cap (224 per window; faster-whisper's own cap, a 448-token
context, ends at the same place):

- stock `whisper.transcribe` and the engine: `condition_on_previous_text=True`, whisper's
  default (the engine conditions each section's windows on that section's previous text);
- faster-whisper `WhisperModel`: the same, with `beam_size=1, best_of=1` (its defaults, 5
  and 5, are beam search and best-of-5 sampling, which stock transcribe and the engine do
  not do) and no VAD (its default);
- faster-whisper `BatchedInferencePipeline`: its own defaults except `beam_size=1` and the
  batch size: VAD chunks, no previous text, no timestamps, and the first temperature only
  (the pipeline has no fallback).

Random weights (`SETTINGS["random"]`, the GPU run's large-v3 dimensions): every window
fails every guard and previous text is gibberish, so all implementations decode greedily
at temperature 0 only, guards off, no previous text, timestamps on; every window decodes
to the cap. Their text has no meaning, so there is no WER.

Model loading and a 30 s warm-up are not timed. Windows, fallback re-decodes and tokens
are counted at each library's decode call (bench.measure.DecodeCount).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.measure import (
    DecodeCount,
    Measurement,
    cuda_after_release,
    cuda_allocated_mb,
    cuda_peaks,
    peak_rss_mb,
    timed,
)

SAMPLE_RATE = 16000
WARM_UP_S = 30


@dataclass(frozen=True)
class Decoding:
    """The long-form settings stock whisper and the engine get (faster-whisper's match them)."""

    temperatures: tuple[float, ...]  # fallback ladder, first = greedy
    compression_ratio_threshold: float | None  # above: too repetitive, decode hotter
    logprob_threshold: float | None  # below: too unsure, decode hotter
    no_speech_threshold: float | None  # above (and unsure): the window is silence
    condition_on_previous_text: bool  # previous text as each window's prompt
    without_timestamps_batched: bool  # faster-whisper's batched pipeline: text tokens only


SETTINGS = {
    "real": Decoding((0.0, 0.2, 0.4, 0.6, 0.8, 1.0), 2.4, -1.0, 0.6, True, True),
    "random": Decoding((0.0,), None, None, None, False, False),
}


@dataclass
class Spec:
    impl: str  # a key of RUNNERS
    audio: str  # path of the recording
    model: str  # stock whisper and the engine: a CTranslate2 directory or an openai-whisper .pt
    ct2_dir: str  # faster-whisper: the same weights as a CTranslate2 directory
    device: str  # cpu | cuda
    batch_size: int  # the engine's and faster-whisper's batched pipeline's
    threads: int  # CPU threads for torch and CTranslate2
    weights: str = "real"  # a key of SETTINGS
    reference: str | None = None  # the reference transcript's file; None: no WER
    max_new_tokens: int = 224  # stock and the engine; whisper's default sample_len
    memory_threshold_mb: float | None = None  # the engine's gpu_memory_threshold_mb (concurrent-jobs run)


# -- (a) stock openai-whisper -----------------------------------------------------------------
def load_whisper_model(path: str, device: str):
    """Stock openai-whisper's model: fp32 weights on `device` (stock keeps fp32 on CUDA too
    and computes in fp16). A CTranslate2 directory is read by the engine's reader, which
    rebuilds the same openai-whisper module from its tensors."""
    import whisper

    from engine.models.ct2_weights import is_ct2_model_dir, read_ct2_model

    if is_ct2_model_dir(path):
        return read_ct2_model(path).eval().to(device)
    return whisper.load_model(path, device=device)


def run_whisper(spec: Spec, audio: np.ndarray) -> Measurement:
    import whisper
    from whisper.model import Whisper

    count = DecodeCount()
    original = Whisper.decode

    def counting(self, mel, options=whisper.DecodingOptions(), **kwargs):
        results = original(self, mel, options, **kwargs)
        rows = results if isinstance(results, list) else [results]
        count.add(len(rows), sum(len(r.tokens) for r in rows), kwargs.get("temperature", options.temperature))
        return results

    Whisper.decode = counting  # transcribe calls model.decode once per window and temperature
    cuda = spec.device == "cuda"
    model = load_whisper_model(spec.model, spec.device)
    weights = cuda_allocated_mb() if cuda else None
    d = SETTINGS[spec.weights]
    options = dict(
        language="en",
        temperature=d.temperatures,
        compression_ratio_threshold=d.compression_ratio_threshold,
        logprob_threshold=d.logprob_threshold,
        no_speech_threshold=d.no_speech_threshold,
        condition_on_previous_text=d.condition_on_previous_text,
        fp16=cuda,
        sample_len=spec.max_new_tokens,
        verbose=None,
    )
    whisper.transcribe(model, audio[: WARM_UP_S * SAMPLE_RATE], **options)
    count.reset()
    result = {}
    wall, cpu, nvml = timed(lambda: result.update(whisper.transcribe(model, audio, **options)), cuda)
    m = Measurement(
        spec.impl,
        wall,
        cpu,
        len(audio) / SAMPLE_RATE,
        count.windows,
        count.fallbacks,
        count.tokens,
        0.0,
        text=result["text"].strip(),
        weights_mb=weights,
    )
    if cuda:
        cuda_peaks(m)
        m.gpu_process_peak_mb = nvml.peak_mb
        del model
        cuda_after_release(m, nvml)
    return m


# -- (b) this project's engine -----------------------------------------------------------------
def engine_settings(spec: Spec, precision: str, workers: int = 1):
    from engine import load_settings

    d = SETTINGS[spec.weights]
    return load_settings(
        None,
        dict(
            model=spec.model,
            device=spec.device,
            precision=precision,
            batch_size=spec.batch_size,
            max_new_tokens=spec.max_new_tokens,
            temperatures=list(d.temperatures),
            compression_ratio_threshold=d.compression_ratio_threshold,
            logprob_threshold=d.logprob_threshold,
            no_speech_threshold=d.no_speech_threshold,
            condition_on_previous_text=d.condition_on_previous_text,
            language="en",
            workers=workers,
            warm_up=True,
            gpu_memory_threshold_mb=spec.memory_threshold_mb,
            max_audio_duration_s=4 * 3600,
        ),
        environ={},
    )


def run_engine(
    spec: Spec, audio: np.ndarray, precision: str, stock_decode: bool = False, jobs: int = 1
) -> Measurement:
    """`jobs` > 1: that many copies of the recording submitted at once to one engine with as
    many workers, so the decode loop batches their sections together. `stock_decode`: stock
    whisper.decode in place of the engine's greedy decoder (bench/stock_decode.py)."""
    from bench.stock_decode import use_stock_decode
    from engine import Engine

    count = DecodeCount()  # the work done, from the jobs' results
    cuda = spec.device == "cuda"
    engine = Engine(engine_settings(spec, precision, workers=jobs))
    if stock_decode:
        use_stock_decode(engine)
    weights = cuda_allocated_mb() if cuda else None
    engine.transcribe(audio[: WARM_UP_S * SAMPLE_RATE])
    count.reset()
    handles = []

    def run() -> None:
        handles.extend(engine.submit(audio) for _ in range(jobs))  # at once: the jobs run concurrently
        for handle in handles:
            handle.result()

    wall, cpu, nvml = timed(run, cuda)
    results = [h.result() for h in handles]
    for result in results:  # tokens of the accepted decodes (a failed hotter try's are not kept)
        count.windows += result.windows
        count.fallbacks += result.fallbacks
        count.tokens += result.tokens_decoded
    m = Measurement(
        spec.impl,
        wall,
        cpu,
        jobs * len(audio) / SAMPLE_RATE,
        count.windows,
        count.fallbacks,
        count.tokens,
        0.0,
        text=results[0].text,
        weights_mb=weights,
    )
    if jobs > 1:
        m.job_wall_s = [h.finished_at - h.submitted_at for h in handles]
        if len({r.text for r in results}) > 1:
            m.notes.append("the concurrent jobs' transcripts differ")
    if cuda:
        cuda_peaks(m)
        m.gpu_process_peak_mb = nvml.peak_mb
        report = engine.release(wait=True)
        m.reserved_after_release_mb = report.reserved_after_mb
        m.gpu_after_release_mb = nvml.now_mb()
        if spec.memory_threshold_mb:
            m.notes.append(f"gpu_memory_threshold_mb={spec.memory_threshold_mb:g}")
    engine.close()
    return m


# -- (c) faster-whisper on the same weights ------------------------------------------------------
class _CountingGenerate:
    """Stands in for faster-whisper's CTranslate2 model and counts what `generate` decodes."""

    def __init__(self, inner, count: DecodeCount):
        self._inner = inner
        self.count = count

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def generate(self, *args, **kwargs):
        results = self._inner.generate(*args, **kwargs)
        self.count.add(
            len(results),
            sum(len(r.sequences_ids[0]) for r in results),
            kwargs.get("sampling_temperature", 0.0),
        )
        return results


def faster_whisper_options(weights: str, batched: bool, batch_size: int) -> dict:
    """faster-whisper's arguments for the settings in this module's docstring."""
    d = SETTINGS[weights]
    options = dict(language="en", beam_size=1)
    if batched:
        options["batch_size"] = batch_size
        if weights == "real":
            return options  # its own defaults: VAD chunks, no previous text, no timestamps, first temperature
    else:
        options.update(best_of=1, vad_filter=False)
    return dict(
        options,
        temperature=list(d.temperatures),
        compression_ratio_threshold=d.compression_ratio_threshold,
        log_prob_threshold=d.logprob_threshold,
        no_speech_threshold=d.no_speech_threshold,
        condition_on_previous_text=d.condition_on_previous_text,
        without_timestamps=d.without_timestamps_batched if batched else False,
    )


def run_faster_whisper(spec: Spec, audio: np.ndarray, compute_type: str, batched: bool) -> Measurement:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        spec.ct2_dir, device=spec.device, compute_type=compute_type, cpu_threads=spec.threads
    )
    count = DecodeCount()
    model.model = _CountingGenerate(model.model, count)
    options = faster_whisper_options(spec.weights, batched, spec.batch_size)
    transcriber = BatchedInferencePipeline(model) if batched else model
    texts: list[str] = []

    def transcribe(samples) -> None:
        segments, _ = transcriber.transcribe(samples, **options)
        texts.append("".join(s.text for s in segments).strip())  # segments are generated lazily

    transcribe(audio[: WARM_UP_S * SAMPLE_RATE])
    count.reset()
    cuda = spec.device == "cuda"
    wall, cpu, nvml = timed(lambda: transcribe(audio), cuda)
    m = Measurement(
        spec.impl,
        wall,
        cpu,
        len(audio) / SAMPLE_RATE,
        count.windows,
        count.fallbacks,
        count.tokens,
        0.0,
        text=texts[-1],
    )
    if cuda:
        m.gpu_process_peak_mb = nvml.peak_mb
        del model, transcriber, transcribe  # the closure holds the model too
        cuda_after_release(m, nvml)
    return m


def _engine_runner(precision: str, stock_decode: bool = False, jobs: int = 1):
    return lambda spec, audio: run_engine(spec, audio, precision, stock_decode, jobs)


def _fw_runner(compute_type: str, batched: bool):
    return lambda spec, audio: run_faster_whisper(spec, audio, compute_type, batched)


# name -> (label for the table, precision shown, runner); the first is the reference (a)
RUNNERS = {
    "whisper": ("openai-whisper `transcribe`", "fp32/fp16", run_whisper),
    "engine": ("engine", "fp32", _engine_runner("fp32")),
    "engine-fp16": ("engine", "fp16", _engine_runner("fp16")),
    "engine-int8": ("engine", "int8", _engine_runner("int8")),
    "engine-whisper-decode": (
        "engine, stock `whisper.decode`",
        "fp32",
        _engine_runner("fp32", stock_decode=True),
    ),
    "engine-whisper-decode-fp16": (
        "engine, stock `whisper.decode`",
        "fp16",
        _engine_runner("fp16", stock_decode=True),
    ),
    "engine-fp16-2jobs": ("engine, two one-hour jobs at once", "fp16", _engine_runner("fp16", jobs=2)),
    "fw-fp32": ("faster-whisper `WhisperModel`", "fp32", _fw_runner("float32", False)),
    "fw-int8": ("faster-whisper `WhisperModel`", "int8", _fw_runner("int8", False)),
    "fw-fp16": ("faster-whisper `WhisperModel`", "fp16", _fw_runner("float16", False)),
    "fw-batched-fp32": ("faster-whisper `BatchedInferencePipeline`", "fp32", _fw_runner("float32", True)),
    "fw-batched-int8": ("faster-whisper `BatchedInferencePipeline`", "int8", _fw_runner("int8", True)),
    "fw-batched-fp16": ("faster-whisper `BatchedInferencePipeline`", "fp16", _fw_runner("float16", True)),
    "fw-batched-int8-fp16": (
        "faster-whisper `BatchedInferencePipeline`",
        "int8_float16",
        _fw_runner("int8_float16", True),
    ),
}


def run(spec: Spec) -> Measurement:
    import torch
    import whisper

    from bench.wer import word_error_rate

    torch.set_num_threads(spec.threads)
    audio = whisper.audio.load_audio(spec.audio)
    started = time.perf_counter()
    measurement = RUNNERS[spec.impl][2](spec, audio)
    if spec.reference:
        measurement.wer = word_error_rate(Path(spec.reference).read_text(), measurement.text)
    measurement.peak_rss_mb = peak_rss_mb()
    measurement.load = os.getloadavg()[0]
    measurement.notes.append(f"{time.perf_counter() - started:.0f} s with loading and warm-up")
    return measurement
