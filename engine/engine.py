"""Engine: the one object a front end talks to.

It owns the device plan, the model cache, the worker queue and the GPU monitor, and turns
"this file, these options" into a job whose result is a `TranscriptionResult`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import whisper

from engine.audio.files import AudioInfo, check_audio, check_length
from engine.decoding.decode_loop import BeforeStep, DecodeLoop
from engine.decoding.model_lock import MODEL_LOCK, ModelLock
from engine.device.cpu_threads import in_passing_thread, single_threaded_here
from engine.device.cuda import DevicePlan, apply_alloc_conf, plan_devices
from engine.device.gpu_monitor import GpuMonitor
from engine.errors import ModelNotOffered
from engine.job_options import JobOptions
from engine.job_runner import JobRunner
from engine.models.cache import ModelCache, ModelInfo, ReleaseReport, load_model
from engine.models.names import ModelNames, english_only_by_name
from engine.models.speaker_encoder import is_speaker_model, require_installed
from engine.replicas import DeviceReplica, DeviceRouter, DeviceStatus
from engine.request import AudioInput, TranscriptionRequest, decoding_options, refuse_unsupported
from engine.results import TranscriptionResult
from engine.settings import Settings
from engine.worker import JobHandle, TranscriptionWorker

log = logging.getLogger(__name__)


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
            JobRunner(settings, self.devices, self._leased),
            settings.workers * len(plans),  # per device, so that every GPU of `device_index: all` decodes
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

    def _leased(self, name: str) -> None:
        """A job holds `name` now: the default model is ready again (after a release, say)."""
        if name == self.settings.model:
            self._state = ModelState("ready", name)

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
        model, decoding = self.model_names.resolve(options.model), decoding_options(options, self.settings)
        return TranscriptionRequest(audio, model, options, decoding, name, info)

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
