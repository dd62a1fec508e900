"""Engine: the one object a front end talks to.

It owns the device plan, the model cache, the worker queue and the GPU monitor, and turns
"this file, these options" into a job whose result is a `TranscriptionResult`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES
from whisper.tokenizer import get_tokenizer

from engine.audio.files import SAMPLE_RATE, AudioInfo, check_audio, check_length, load_audio
from engine.audio.sections import plan_sections
from engine.audio.vad import SpeechMap, VadOptions, speech_map, speech_probabilities
from engine.decoding.decode_loop import MODEL_LOCK, BeforeStep, DecodeLoop, ModelLock
from engine.decoding.options import TranscribeOptions
from engine.decoding.stream import SectionStream, log_mel_spectrogram
from engine.device.cpu_threads import in_passing_thread, single_threaded_here
from engine.device.cuda import DevicePlan, apply_alloc_conf, plan_devices
from engine.device.gpu_monitor import GpuMonitor
from engine.diarization import diarize
from engine.errors import InvalidRequest, ModelNotOffered  # raised here; callers import them from here too
from engine.job_options import JobOptions
from engine.languages import LANGUAGES
from engine.models.cache import ModelCache, ModelInfo, ReleaseReport, load_model
from engine.models.names import ModelNames, english_only_by_name
from engine.models.speaker_encoder import is_speaker_model, require_installed
from engine.replicas import DeviceReplica, DeviceRouter, DeviceStatus
from engine.results import TranscriptionResult
from engine.settings import Settings
from engine.worker import JobHandle, TranscriptionWorker

log = logging.getLogger(__name__)

AudioInput = str | os.PathLike | np.ndarray


def completed_in_order(streams: Sequence[SectionStream]) -> list:
    """The segments of `streams` (sections in recording order) that no later decode can precede:
    every segment of each finished section, then those so far of the first unfinished one.
    The job's handle calls it at each progress report, between the decode loop's steps."""
    segments: list = []
    for stream in streams:
        segments.extend(list(stream.segments))
        if not stream.finished:
            break
    return segments


def refuse_unsupported(model_id: str, language: str | None, task: str) -> None:
    """InvalidRequest for what an English-only model cannot do (whisper would silently ignore
    the language and the task and write English anyway)."""
    if task == "translate":
        raise InvalidRequest(
            f"task: {model_id} is an English-only model and cannot translate; its transcript is "
            "English already (use task=transcribe), or choose a multilingual model for speech in "
            "other languages"
        )
    if language not in (None, "en"):
        raise InvalidRequest(
            f"language: {model_id} is an English-only model and cannot transcribe "
            f"{LANGUAGES.get(language, language).title()}; choose a multilingual model, or "
            "language en (or detection)"
        )


@dataclass(frozen=True)
class TranscriptionRequest:
    """One job as the worker runs it."""

    audio: AudioInput  # path to anything ffmpeg reads, or float32 16 kHz mono samples
    model: str  # the configured value (whisper name or path) the model cache loads
    options: JobOptions  # what the user asked for, the model named by its id (Engine.prepare)
    decoding: TranscribeOptions  # `options` with the config's values filled in
    name: str = ""  # file name to show and to name downloads after
    info: AudioInfo | None = None  # the file's probe at submit, so the job does not probe it again


@dataclass(frozen=True)
class ModelState:
    state: str  # "not loaded" | "loading" | "ready" | "failed" | "released"
    model: str  # the default model
    error: str = ""  # why loading failed, and what to do


@dataclass(frozen=True)
class EngineStatus:
    model: ModelState
    device: str  # e.g. "cuda:0 (NVIDIA H200), fp16" or "cpu, fp32"; several joined by "; "
    loaded: list[ModelInfo]  # every device's resident models
    busy_workers: int
    workers: int
    queue_length: int
    queue_size: int
    devices: list[DeviceStatus] = field(default_factory=list)  # each device's jobs and live windows


@dataclass
class _Listeners:
    """Callbacks for metrics and logs: (event, payload)."""

    callbacks: list[Callable[[str, object], None]] = field(default_factory=list)

    def emit(self, event: str, payload: object) -> None:
        for callback in list(self.callbacks):
            try:
                callback(event, payload)
            except Exception:  # an observer must never break a job
                log.exception("listener failed on %s", event)


class Engine:
    """Resident whisper model(s) behind a bounded `TranscriptionWorker`.

    `Engine(settings)` loads and warms the default model before returning; with
    `background=True` it returns at once and `status().model` tells how loading goes.
    `before_step` is for tests: a hook into the running decode (engine.decoding.decode_loop).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        load: bool = True,
        background: bool = False,
        before_step: BeforeStep | None = None,
    ):
        apply_alloc_conf(settings.cuda_alloc_conf)
        self.settings = settings
        plans = plan_devices(
            settings.device, settings.device_index, settings.precision, settings.cpu_replicas
        )
        self.plan: DevicePlan = plans[0]  # the precision and device type every replica shares
        self.monitor = GpuMonitor(settings.gpu_memory_threshold_mb)
        self.listeners = _Listeners()
        self.model_names = ModelNames(settings.allowed_models)  # public ids: names, never server paths
        self._multilingual: dict = {}  # configured model -> model.is_multilingual, learned when it loads
        self._state = ModelState("not loaded", settings.model)
        self.devices = DeviceRouter(
            [self._replica(plan, i, len(plans), before_step) for i, plan in enumerate(plans)]
        )
        on_cpu = self.plan.device.type == "cpu"  # the decode loop's thread alone runs torch on every core
        self.worker = TranscriptionWorker(
            self._run,
            settings.workers,
            settings.queue_size,
            prepare_thread=single_threaded_here if on_cpu else None,
        )
        self._closed = threading.Event()
        if settings.idle_release_s > 0:
            threading.Thread(target=self._release_when_idle, name="idle-release", daemon=True).start()
        if load:
            if background:
                threading.Thread(target=self._load_quietly, name="model-load", daemon=True).start()
            else:
                self.load()

    def _replica(
        self, plan: DevicePlan, index: int, count: int, before_step: BeforeStep | None
    ) -> DeviceReplica:
        s = self.settings
        name = (
            plan.description
            if plan.device.type == "cuda" or count == 1
            else f"{plan.description} #{index + 1}"
        )
        # Each GPU steps on its own; CPU replicas share the cores, and so one lock.
        lock = ModelLock() if plan.device.type == "cuda" and count > 1 else MODEL_LOCK
        models = ModelCache(
            lambda model: self._load_model(model, plan, lock),
            s.model_cache_size,
            plan.device,
            on_load=lambda model: self.listeners.emit("model_loaded", model),
            on_release=self._on_release,
        )
        loop = DecodeLoop(plan.fp16, s.batch_size, s.gpu_memory_threshold_mb, before_step, lock=lock)
        return DeviceReplica(name, plan, models, loop, lock)

    @property
    def models(self) -> ModelCache:
        """The first device's model cache (the only one unless several devices are configured)."""
        return self.devices.replicas[0].models

    @property
    def loop(self) -> DecodeLoop:
        """The first device's decode loop (the only one unless several devices are configured)."""
        return self.devices.replicas[0].loop

    # -- models ----------------------------------------------------------------------------
    def load(self, name: str | None = None) -> None:
        """Load (and warm up) a model now; the default one unless named. Errors are kept in
        `status().model` for the default model and re-raised."""
        name = name or self.settings.model
        is_default = name == self.settings.model
        if is_default:
            self._state = ModelState("loading", name)
        try:
            for replica in self.devices.replicas:
                with replica.models.lease(name):
                    pass
        except Exception as exc:
            if is_default:
                self._state = ModelState("failed", name, str(exc))
            raise
        if is_default:
            self._state = ModelState("ready", name)

    def _load_quietly(self) -> None:
        """Background loading: the failure is kept in status() for the page, logged in one line."""
        try:
            self.load()
        except Exception as exc:
            log.error("Could not load %s: %s", self.settings.model, exc)

    def _load_model(self, name: str, plan: DevicePlan, lock: ModelLock):
        if plan.device.type == "cpu":  # its OpenMP team would outlive it in a thread that stays
            return in_passing_thread(lambda: self._load_and_warm_up(name, plan, lock))
        return self._load_and_warm_up(name, plan, lock)

    def _load_and_warm_up(self, name: str, plan: DevicePlan, lock: ModelLock):
        model = load_model(name, plan, self.settings.download_root)
        if is_speaker_model(name):  # no language to learn, no decoder to warm: its first batch is cheap
            return model
        self._multilingual[name] = model.is_multilingual
        if self.settings.warm_up:
            self._warm_up(model, plan, lock)
        return model

    def _warm_up(self, model, plan: DevicePlan, lock: ModelLock) -> None:
        """One tiny decode, so kernels are compiled and buffers allocated before a user waits."""
        mel = whisper.log_mel_spectrogram(
            torch.zeros(whisper.audio.N_SAMPLES), n_mels=model.dims.n_mels, device=plan.device
        ).to(torch.float16 if plan.fp16 else torch.float32)
        options = whisper.DecodingOptions(language="en", sample_len=2, fp16=plan.fp16)
        with lock, torch.inference_mode():
            whisper.decode(model, mel[None], options)

    def _on_release(self, name: str) -> None:
        if name == self.settings.model and self._state.state == "ready":
            self._state = ModelState("released", name)
        self.listeners.emit("model_released", name)

    def release(self, wait: bool = False, timeout: float | None = None) -> ReleaseReport:
        """Free the GPU memory held by models. A model in use by a job is freed when that job
        finishes (or, with `wait`, before this returns); the next request loads it again."""
        reports = [r.models.release(wait=wait, timeout=timeout) for r in self.devices.replicas]
        report = ReleaseReport(
            [name for r in reports for name in r.released],
            [name for r in reports for name in r.deferred],
            sum(r.reserved_before_mb for r in reports),
            sum(r.reserved_after_mb for r in reports),
        )
        log.info(report.message)
        return report

    def _release_when_idle(self) -> None:
        idle_s = self.settings.idle_release_s
        while not self._closed.wait(min(5.0, idle_s / 4)):
            if self.worker.busy == 0 and self.worker.queue_length == 0:
                for replica in self.devices.replicas:
                    replica.models.release_idle(idle_s, self.settings.idle_action)

    # -- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        audio: AudioInput,
        options: JobOptions | None = None,
        *,
        name: str = "",
        job_id: str | None = None,
        probed: AudioInfo | None = None,
        **fields,
    ) -> JobHandle:
        """Queue a recording; returns at once with a handle (raises QueueFull when full).

        `options` (or, for short, its fields as keywords) says what to do; a None field takes
        the config's value. Options this server cannot honour raise InvalidRequest, and a file
        that is not audio, empty or too long the matching AudioError, here, before the job
        takes a place in the queue. `probed`: what `check_audio` said of this file when the
        caller checked it already (a job stored first, run later), so it is not probed twice.
        """
        request = self._request(audio, JobOptions.of(options, fields), name, probed)
        handle = self.worker.submit(request, job_id)
        handle.add_done_callback(lambda finished: self.listeners.emit("job_finished", finished))
        return handle

    def transcribe(
        self, audio: AudioInput, options: JobOptions | None = None, **fields
    ) -> TranscriptionResult:
        """Submit and wait."""
        return self.submit(audio, JobOptions.of(options, fields)).result()

    def prepare(self, options: JobOptions) -> JobOptions:
        """`options` with the model named by its public id (an alias or None gives the default's)
        and the config's task when none was asked for, checked against what that model can do;
        InvalidRequest otherwise. Boundaries call it to answer a bad request at once; the job
        manager stores what it returns."""
        spec = self.model_names.resolve(options.model)  # an id, an OpenAI alias or None
        if spec is None:
            raise ModelNotOffered(self.model_names.not_offered(options.model))
        model_id = self.model_names.public(spec)
        english_only = english_only_by_name(spec)
        if english_only is None and spec in self._multilingual:
            english_only = not self._multilingual[spec]
        task = options.task or self.settings.task
        if english_only:  # when still unknown (not loaded yet), the job checks once the model is loaded
            refuse_unsupported(model_id, options.language, task)
        if options.diarize:
            require_installed(self.settings.speaker_model)  # SpeakerModelMissing now, not after decoding
        return replace(options, model=model_id, task=task)

    def _request(
        self, audio: AudioInput, options: JobOptions, name: str, probed: AudioInfo | None = None
    ) -> TranscriptionRequest:
        """The job as the worker runs it: options prepared, the file probed (once per job: the
        probe's answer goes on to load_audio), the decoding options filled from the config."""
        options = self.prepare(options)
        info = None
        if isinstance(audio, np.ndarray):
            check_length(audio, name or "the recording")
        else:
            info = probed or check_audio(audio, self.settings.max_audio_duration_s)
            name = name or Path(audio).name
        return TranscriptionRequest(
            audio, self.model_names.resolve(options.model), options, self._decoding(options), name, info
        )

    def _decoding(self, options: JobOptions) -> TranscribeOptions:
        s = self.settings
        return TranscribeOptions(
            task=options.task or s.task,
            language=options.language if options.language is not None else s.language,
            initial_prompt=options.initial_prompt or s.initial_prompt,
            condition_on_previous_text=s.condition_on_previous_text,
            temperatures=options.temperature or tuple(s.temperatures),
            max_new_tokens=options.max_new_tokens or s.max_new_tokens,
            compression_ratio_threshold=s.compression_ratio_threshold,
            logprob_threshold=s.logprob_threshold,
            no_speech_threshold=s.no_speech_threshold,
            word_timestamps=options.word_timestamps or options.diarize,  # speakers are assigned word by word
            logprobs=options.logprobs,
            hallucination_silence_threshold=s.hallucination_silence_threshold,
            silence_threshold_db=s.silence_threshold_db,
            vad=s.vad if options.vad is None else options.vad,
        )

    def _run(self, request: TranscriptionRequest, handle: JobHandle) -> TranscriptionResult:
        started = time.perf_counter()
        s = self.settings
        if isinstance(request.audio, np.ndarray):
            audio = np.asarray(request.audio, dtype=np.float32)
        else:
            audio = load_audio(request.audio, max_duration_s=s.max_audio_duration_s, info=request.info)
        duration = len(audio) / SAMPLE_RATE
        handle.set_progress(0.0, duration)
        handle.checkpoint()
        options = request.decoding
        recording = audio  # diarization reads the whole recording, on its own finer speech regions
        probs = speech_probabilities(audio) if options.vad else None  # the VAD's, reused by diarization
        speech = self._speech(audio, probs) if options.vad else None
        if speech is not None:
            audio = speech.keep(audio)  # only the speech is decoded; times go back through `speech`
        heard = len(audio) / SAMPLE_RATE

        def on_progress(done: float, total: float) -> None:  # in seconds of the recording, VAD or not
            handle.set_progress(done / total * duration if total else duration, duration)

        handle.checkpoint()
        with self.devices.place() as replica:
            with replica.models.lease(request.model) as model:
                if request.model == s.model:
                    self._state = ModelState("ready", request.model)
                sections = plan_sections(
                    audio, s.batch_size, min_section_s=s.min_section_s, joins=speech.joins if speech else None
                )
                language = self._language(model, replica, request.options.model, audio, sections, options)
                tokenizer = get_tokenizer(
                    model.is_multilingual,
                    num_languages=model.num_languages,
                    language=language,
                    task=options.task,
                )
                streams = [
                    SectionStream(
                        audio[section.start : section.end],
                        section.start_s,
                        options,
                        tokenizer,
                        model.dims.n_mels,
                        speech,
                    )
                    for section in sections
                ]
                # for clients that stream the text (a diarized job's segments are final only at its end)
                handle.show_segments(lambda: completed_in_order(streams))
                replica.loop.run(
                    model,
                    streams,
                    options,
                    language,
                    cancelled=handle.cancel_requested,
                    on_progress=on_progress,
                    streaming=handle.streams_text,
                )
            segments = [
                replace(segment, id=i)
                for i, segment in enumerate(segment for stream in streams for segment in stream.segments)
            ]
            result = TranscriptionResult(
                segments=segments,
                language=language,
                duration=duration,
                task=options.task,
                model=request.options.model,
                windows=sum(st.windows_decoded for st in streams),
                tokens_decoded=sum(st.tokens_decoded for st in streams),
                fallbacks=sum(st.fallbacks for st in streams),
            )
            if request.options.diarize:  # the Whisper lease is returned: Release memory may take it now
                handle.checkpoint()
                result = self._diarize(replica, recording, result, request.options, probs, tokenizer.encode)
        result = replace(result, processing_s=time.perf_counter() - started)
        log.info(
            "Job %s: %.1f s of audio (%.1f s of it speech decoded) in %.1f s (%d sections, %d windows, "
            "%d segments)",
            handle.id,
            duration,
            heard,
            result.processing_s,
            len(sections),
            result.windows,
            len(segments),
        )
        return result

    def _diarize(
        self,
        replica: DeviceReplica,
        audio: np.ndarray,
        result: TranscriptionResult,
        options: JobOptions,
        probs: np.ndarray | None,
        encode: Callable[[str], list[int]],
    ) -> TranscriptionResult:
        """`result` with its speakers (engine.diarization), by the speaker encoder leased on the
        job's device: loaded once, kept in the cache, released like the Whisper models."""
        started = time.perf_counter()
        with replica.models.lease(self.settings.speaker_model) as encoder:
            labelled = diarize(
                audio,
                result,
                options.diarization(),
                encoder,
                speech_probs=probs,
                threshold_mb=self.settings.gpu_memory_threshold_mb,
                encode=encode,
            )
        log.info(
            "Diarization: %d speakers, %d segments (from %d) in %.2f s",
            len({seg.speaker for seg in labelled.segments}),
            len(labelled.segments),
            len(result.segments),
            time.perf_counter() - started,
        )
        return labelled

    def _speech(self, audio: np.ndarray, probs: np.ndarray | None = None) -> SpeechMap:
        s = self.settings
        started = time.perf_counter()
        vad = VadOptions(s.vad_threshold, s.vad_min_silence_s, s.vad_speech_pad_s)
        speech = speech_map(audio, vad, probs)
        log.info(
            "Voice activity: %.1f s of speech in %.1f s, %d stretches (%.1f s)",
            speech.speech_samples / SAMPLE_RATE,
            len(audio) / SAMPLE_RATE,
            len(speech.chunks),
            time.perf_counter() - started,
        )
        return speech

    def _language(
        self,
        model,
        replica: DeviceReplica,
        model_id: str,
        audio: np.ndarray,
        sections,
        options: TranscribeOptions,
    ) -> str:
        """The request's language; English for an English-only model; else detected once,
        as whisper.transcribe does, from the first 30 s of the recording."""
        if not model.is_multilingual:  # first loaded by this job: the check `prepare` could not do
            refuse_unsupported(model_id, options.language, options.task)
        if options.language is not None:
            return options.language
        if not model.is_multilingual or not sections:
            return "en"
        first = sections[0]
        mel = log_mel_spectrogram(audio[first.start : first.end], model.dims.n_mels, padding=N_SAMPLES)
        mel = (
            whisper.pad_or_trim(mel, N_FRAMES)
            .to(replica.plan.device)
            .to(torch.float16 if replica.plan.fp16 else torch.float32)
        )
        with replica.lock, torch.inference_mode():
            _, probs = model.detect_language(mel)
        language = max(probs, key=probs.get)
        log.info("Detected language: %s", language)
        return language

    # -- state -------------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        replicas = self.devices.replicas
        return EngineStatus(
            self._state,
            "; ".join(dict.fromkeys(r.plan.description for r in replicas)),
            [info for r in replicas for info in r.models.loaded()],
            self.worker.busy,
            self.worker.workers,
            self.worker.queue_length,
            self.worker.queue_size,
            self.devices.status(),
        )

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs, finish (drain) or fail the accepted ones, free the models."""
        self._closed.set()
        self.worker.shutdown(drain=drain, timeout=timeout)
        for replica in self.devices.replicas:
            replica.loop.close()
            replica.models.release(wait=True, timeout=timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
