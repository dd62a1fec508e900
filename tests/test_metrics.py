"""ui.metrics: Prometheus text that parses, levels read at scrape time, events counted as they happen."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import JFK, fast_settings, shared_audio
from engine import Engine, GpuMonitor, NotAudio
from engine.device.gpu_monitor import RawReading
from ui.metrics import MIB, Metrics


def scrape(metrics: Metrics) -> dict:
    """{(sample name, frozenset(labels)): value}, through prometheus_client's own parser."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, metric: str, **labels) -> float:
    return samples[(metric, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    engine = Engine(fast_settings(micro_checkpoint, workers=1, queue_size=3, language="en"))
    yield engine
    engine.close()


def test_levels_are_read_at_scrape_time(engine):
    engine.monitor = GpuMonitor(1000, readers=[lambda: [RawReading(0, "Fake GPU", 1500, 8000, 6500)]])
    samples = scrape(Metrics(engine))
    gpu = {"gpu": "0", "name": "Fake GPU"}
    assert value(samples, "whisper_gpu_memory_used_bytes", **gpu) == 1500 * MIB
    assert value(samples, "whisper_gpu_memory_total_bytes", **gpu) == 8000 * MIB
    assert value(samples, "whisper_gpu_memory_threshold_exceeded", **gpu) == 1
    assert value(samples, "whisper_gpu_memory_threshold_bytes") == 1000 * MIB
    assert value(samples, "whisper_process_gpu_memory_allocated_bytes") == 0  # CPU engine
    assert value(samples, "whisper_queue_length") == 0
    assert value(samples, "whisper_queue_capacity") == 3
    assert value(samples, "whisper_workers_busy") == 0 and value(samples, "whisper_workers") == 1
    assert engine.settings.model.endswith("/micro.pt")  # labelled by its id, never by its path
    assert value(samples, "whisper_model_state", model="micro", state="ready") == 1
    assert value(samples, "whisper_model_state", model="micro", state="failed") == 0
    assert value(samples, "whisper_device_jobs_running", device="cpu, fp32") == 0  # one series per device
    assert value(samples, "whisper_device_live_windows", device="cpu, fp32") == 0
    assert value(samples, "process_resident_memory_bytes") > 0
    engine.monitor = GpuMonitor(None, readers=[])  # a machine without GPUs: no per-GPU series
    samples = scrape(Metrics(engine))
    assert not [key for key in samples if key[0] == "whisper_gpu_memory_used_bytes"]


def test_jobs_durations_audio_and_model_events_are_counted(engine):
    metrics = Metrics(engine)
    other = Metrics(engine)  # separate registries: a second app in the process does not collide
    before = scrape(metrics)
    assert value(before, "whisper_jobs_total", outcome="done") == 0

    engine.release(wait=True)  # counted as a release; the next job loads the model again
    result = engine.transcribe(shared_audio(JFK))
    with pytest.raises(NotAudio):
        engine.submit(__file__)  # refused at submit: never a job, not counted
    samples = scrape(metrics)
    assert value(samples, "whisper_jobs_total", outcome="done") == 1
    assert value(samples, "whisper_jobs_total", outcome="failed") == 0
    assert value(samples, "whisper_audio_seconds_total") == pytest.approx(result.duration)
    assert value(samples, "whisper_processing_seconds_total") == pytest.approx(result.processing_s)
    assert value(samples, "whisper_job_duration_seconds_count") == 1
    assert value(samples, "whisper_queue_wait_seconds_count") == 1
    assert value(samples, "whisper_realtime_factor_count") == 1
    assert value(samples, "whisper_realtime_factor_sum") == pytest.approx(
        result.processing_s / result.duration
    )
    model = "micro"  # the id of .../micro.pt
    assert value(samples, "whisper_model_releases_total", model=model) == 1
    assert value(samples, "whisper_model_loads_total", model=model) == 1
    assert value(scrape(other), "whisper_jobs_total", outcome="done") == 1
