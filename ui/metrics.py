"""Prometheus metrics for GET /metrics, through `prometheus_client`.

Two kinds, because they come from two places:

- Levels (GPU memory, queue length, busy workers, model state) are read from the engine
  when Prometheus scrapes, by a custom collector, so they are never stale and cost nothing
  between scrapes.
- Events (jobs finished, their durations, audio transcribed, model loads and releases) are
  counted as they happen, from the engine's listener callbacks.

Each `Metrics` has its own `CollectorRegistry`, not prometheus_client's global one, so
several apps (tests) can live in one process without "duplicated timeseries" errors.
Memory is exported in bytes and durations in seconds, Prometheus' base units.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from engine import Engine, JobHandle, JobStatus
from jobs import JobManager, disk_space
from ui.openai_compat import ApiError, kind_of

log = logging.getLogger(__name__)

PREFIX = "whisper"
MIB = 1024 * 1024  # the monitor reads MiB; Prometheus wants bytes
# Wall time of one job: from a short clip on a fast GPU to hours of audio on a CPU.
JOB_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))
# Time waiting in the queue: usually nothing, minutes when the server is saturated.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))
# Processing time / audio time: below 0.01 on a big GPU, around 1 on a slow CPU.
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, float("inf"))
MODEL_STATES = ("not loaded", "loading", "ready", "failed", "released")
# Refusal reasons shown at 0 before the first one happens, so rate() and alerts work at once.
COMMON_REFUSALS = (
    "unauthorized",
    "queue_full",
    "too_large",
    "not_audio",
    "too_long",
    "invalid",
    "unsupported",
    "out_of_space",
)


class _EngineCollector:
    """Levels read from the engine at scrape time."""

    def __init__(self, engine: Engine, jobs: JobManager | None):
        self.engine = engine
        self.jobs = jobs

    def collect(self) -> Iterable[Metric]:
        snapshot = self.engine.monitor.snapshot()
        used = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use by all processes", labels=["gpu", "name"]
        )
        total = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_total_bytes", "GPU memory in total", labels=["gpu", "name"]
        )
        above = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_threshold_exceeded",
            "1 when the GPU uses more than gpu_memory_threshold_mb",
            labels=["gpu", "name"],
        )
        for gpu in snapshot.gpus:
            labels = [str(gpu.index), gpu.name]
            used.add_metric(labels, gpu.used_mb * MIB)
            total.add_metric(labels, gpu.total_mb * MIB)
            above.add_metric(labels, 1.0 if gpu.above_threshold else 0.0)
        yield from (used, total, above)
        yield GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_threshold_bytes",
            "Per-GPU warning level (0 = no threshold configured)",
            value=(snapshot.threshold_mb or 0) * MIB,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_process_gpu_memory_allocated_bytes",
            "GPU memory held by this process's tensors",
            value=snapshot.process_allocated_mb * MIB,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_process_gpu_memory_reserved_bytes",
            "GPU memory held by this process's caching allocator",
            value=snapshot.process_reserved_mb * MIB,
        )

        status = self.engine.status()
        waiting = status.queue_length if self.jobs is None else self.jobs.pending_count
        yield GaugeMetricFamily(f"{PREFIX}_queue_length", "Jobs waiting for a worker", value=waiting)
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_capacity", "Jobs allowed to wait (queue_size)", value=status.queue_size
        )
        yield GaugeMetricFamily(f"{PREFIX}_workers_busy", "Workers running a job", value=status.busy_workers)
        yield GaugeMetricFamily(f"{PREFIX}_workers", "Workers in total", value=status.workers)
        state = GaugeMetricFamily(
            f"{PREFIX}_model_state", "1 for the default model's current state", labels=["model", "state"]
        )
        model = self.engine.model_names.public(status.model.model)  # the id, never the configured path
        for name in MODEL_STATES:
            state.add_metric([model, name], 1.0 if status.model.state == name else 0.0)
        yield state
        yield GaugeMetricFamily(
            f"{PREFIX}_models_loaded", "Models resident in memory", value=len(status.loaded)
        )
        # One series per device (device_index list, cpu_replicas): where the jobs are placed.
        running = GaugeMetricFamily(
            f"{PREFIX}_device_jobs_running", "Jobs running on each device", labels=["device"]
        )
        windows = GaugeMetricFamily(
            f"{PREFIX}_device_live_windows", "Sections in each device's decode loop now", labels=["device"]
        )
        finished = GaugeMetricFamily(
            f"{PREFIX}_device_jobs_finished",
            "Jobs that ran on each device since the start",
            labels=["device"],
        )
        for device in status.devices:
            running.add_metric([device.device], device.running_jobs)
            windows.add_metric([device.device], device.live_windows)
            finished.add_metric([device.device], device.finished_jobs)
        yield from (running, windows, finished)
        yield from self._disk()

    def _disk(self) -> Iterable[Metric]:
        data_dir = self.jobs.store.data_dir if self.jobs is not None else Path(self.engine.settings.data_dir)
        try:
            disk = disk_space(data_dir, self.engine.settings.min_free_disk_mb)
        except OSError:  # data_dir not made yet (no job manager) or unreadable: no reading, no failed scrape
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_data_dir_free_bytes", "Disk space free under data_dir", value=disk.free_bytes
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_data_dir_free_threshold_bytes",
            "Warning level for free space under data_dir (min_free_disk_mb; 0 = none)",
            value=disk.min_free_bytes,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_data_dir_low_disk",
            "1 when less than min_free_disk_mb is free under data_dir",
            value=1.0 if disk.low else 0.0,
        )


class Metrics:
    """The app's metrics: `Metrics(engine, jobs)` starts counting; `render()` for /metrics."""

    def __init__(self, engine: Engine, jobs: JobManager | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, jobs))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, ...
        r = self.registry
        self.jobs_total = Counter(f"{PREFIX}_jobs", "Jobs finished, by outcome", ["outcome"], registry=r)
        for outcome in ("done", "failed", "cancelled"):
            self.jobs_total.labels(outcome)  # present at 0 before the first job, so rate() works
        self.jobs_failed = Counter(
            f"{PREFIX}_jobs_failed",
            "Jobs that failed after they were accepted, by error code "
            "(invalid_file_format, out_of_memory, internal_error, ...)",
            ["reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            f"{PREFIX}_requests_refused",
            "HTTP API requests refused, by reason "
            "(unauthorized, queue_full, too_large, not_audio, too_long, invalid, ...)",
            ["reason"],
            registry=r,
        )
        for reason in COMMON_REFUSALS:
            self.requests_refused.labels(reason)
        self.job_seconds = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Wall time of a job, start to finish",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.wait_seconds = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time a job waited in the queue", buckets=WAIT_BUCKETS, registry=r
        )
        self.audio_seconds = Counter(f"{PREFIX}_audio_seconds", "Seconds of audio transcribed", registry=r)
        self.processing_seconds = Counter(
            f"{PREFIX}_processing_seconds", "Seconds spent transcribing (done jobs)", registry=r
        )
        self.realtime_factor = Histogram(
            f"{PREFIX}_realtime_factor",
            "Processing time / audio duration per job (below 1 = faster than real time)",
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.model_loads = Counter(f"{PREFIX}_model_loads", "Models loaded", ["model"], registry=r)
        self.model_releases = Counter(f"{PREFIX}_model_releases", "Models released", ["model"], registry=r)
        self.model_names = engine.model_names
        engine.listeners.callbacks.append(self.on_event)

    def on_event(self, event: str, payload: object) -> None:
        if event == "job_finished" and isinstance(payload, JobHandle):
            self._job_finished(payload)
        elif event == "model_loaded":
            self.model_loads.labels(self._model_id(payload)).inc()
        elif event == "model_released":
            self.model_releases.labels(self._model_id(payload)).inc()

    def _model_id(self, model: object) -> str:
        """A model's label: its public id (the events carry the configured value, maybe a path)."""
        return self.model_names.public(str(model))

    def refused(self, error: ApiError) -> None:
        """An HTTP API request answered with an error (the routes call this); the failures of
        jobs that had been accepted are counted by `jobs_failed` instead."""
        if error.refusal:
            self.requests_refused.labels(error.reason).inc()

    def _job_finished(self, handle: JobHandle) -> None:
        self.jobs_total.labels(handle.status.value).inc()
        if handle.status is JobStatus.FAILED:
            error = handle.exception()
            self.jobs_failed.labels(kind_of(error).code if error is not None else "unknown").inc()
        if handle.queue_wait_s is not None:
            self.wait_seconds.observe(max(0.0, handle.queue_wait_s))
        if handle.started_at is not None and handle.finished_at is not None:
            self.job_seconds.observe(max(0.0, handle.finished_at - handle.started_at))
        if handle.status is JobStatus.DONE:
            result = handle.result()
            self.audio_seconds.inc(max(0.0, result.duration))
            self.processing_seconds.inc(max(0.0, result.processing_s))
            if result.duration > 0:
                self.realtime_factor.observe(result.processing_s / result.duration)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
