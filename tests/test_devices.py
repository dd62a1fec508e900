"""Several devices: one model replica and one decode loop each, a job placed on one of them.

Without a GPU here, `cpu_replicas: 2` runs the same routing on the CPU; the CUDA branch of
picking devices is forced with a fake device count."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import FIVE_MIN, JFK, fast_settings, shared_audio
from engine import DeviceError, Engine
from engine.decoding.decode_loop import DecodeLoop
from engine.device.cuda import DevicePlan, plan_devices
from engine.models.cache import ModelCache
from engine.replicas import DeviceReplica, DeviceRouter


def wait_until(condition, timeout=60.0, what="it"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_two_jobs_at_once_run_on_two_replicas_each_with_its_own_model(micro_checkpoint):
    settings = fast_settings(micro_checkpoint, cpu_replicas=2, workers=2, batch_size=2)
    with Engine(settings) as engine:
        assert [d.models for d in engine.status().devices] == [[str(micro_checkpoint)]] * 2  # loaded on both
        jobs = [engine.submit(shared_audio(FIVE_MIN)), engine.submit(shared_audio(FIVE_MIN))]
        wait_until(
            lambda: [d.running_jobs for d in engine.status().devices] == [1, 1], what="one job per replica"
        )
        wait_until(lambda: all(d.live_windows for d in engine.status().devices), what="both loops decoding")
        results = [job.result(timeout=300) for job in jobs]
        assert results[0].text == results[1].text  # the same recording, the same words, wherever it ran
        assert [d.finished_jobs for d in engine.status().devices] == [1, 1]
        # a third job goes where nothing runs; the next one beside it
        assert engine.transcribe(shared_audio(JFK)).text
        report = engine.release()
        assert report.released == [str(micro_checkpoint)] * 2  # every replica's copy is freed
        assert all(not d.models for d in engine.status().devices)


def test_workers_count_per_device_so_every_replica_gets_a_job(micro_checkpoint):
    # One worker per device and three devices: three jobs run at once, one on each. (When
    # `workers` counted the jobs of all devices, `device_index: all` with the default 2 left
    # every GPU past the second without work.)
    settings = fast_settings(micro_checkpoint, cpu_replicas=3, workers=1, batch_size=2)
    with Engine(settings) as engine:
        assert engine.status().workers == 3
        jobs = [engine.submit(shared_audio(FIVE_MIN)) for _ in range(3)]
        wait_until(
            lambda: [d.running_jobs for d in engine.status().devices] == [1, 1, 1],
            what="one job on each of the three replicas",
        )
        for job in jobs:
            job.result(timeout=300)
        assert [d.finished_jobs for d in engine.status().devices] == [1, 1, 1]


def test_one_device_is_the_default_and_its_status_names_it(micro_checkpoint):
    with Engine(fast_settings(micro_checkpoint), load=False) as engine:
        (device,) = engine.status().devices
        assert device.device == "cpu, fp32" and device.running_jobs == 0


@pytest.fixture
def four_gpus(monkeypatch):
    """The CUDA branch of device planning, forced: four visible GPUs named after their index."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(
        torch.cuda, "get_device_name", lambda device: f"Fake GPU {torch.device(device).index}"
    )


def test_device_index_picks_the_gpus_each_in_its_own_plan(four_gpus):
    every = plan_devices("auto", "all", "fp16")
    assert [p.description for p in every] == [f"cuda:{i} (Fake GPU {i}), fp16" for i in range(4)]
    assert [p.device.index for p in plan_devices("cuda", [1, 3], "fp32")] == [1, 3]
    assert [p.device.index for p in plan_devices("auto", 2, "fp16")] == [2]
    with pytest.raises(DeviceError, match="device_index: 5 but only 4 GPU"):
        plan_devices("cuda", [0, 5], "fp16")
    # asked for the CPU, the GPUs are left alone
    assert [p.description for p in plan_devices("cpu", "all", "fp32", cpu_replicas=3)] == ["cpu, fp32"] * 3


def test_a_job_goes_where_fewest_jobs_run_then_where_most_memory_is_free(four_gpus, monkeypatch):
    free = {0: 2 << 30, 1: 9 << 30, 2: 5 << 30}
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda device: (free[torch.device(device).index], 80 << 30)
    )
    replicas = []
    for index in free:
        plan = DevicePlan(torch.device("cuda", index), "fp16", f"cuda:{index}")
        replicas.append(
            DeviceReplica(
                plan.description,
                plan,
                ModelCache(lambda name: None, 1, plan.device),
                DecodeLoop(True, 8),
                None,
            )
        )
    router = DeviceRouter(replicas)
    try:
        with router.place() as first:
            assert first.name == "cuda:1"  # nothing runs anywhere: the most free memory
            with router.place() as second:
                assert second.name == "cuda:2"  # cuda:1 runs a job now
                with router.place() as third:
                    assert third.name == "cuda:0"
            assert [r.running for r in replicas] == [0, 1, 0]
        assert [r.finished for r in replicas] == [1, 1, 1] and all(r.running == 0 for r in replicas)
    finally:
        for replica in replicas:
            replica.loop.close()


def test_a_bad_device_list_is_refused_with_the_setting_named(micro_checkpoint):
    from engine import SettingsError

    for bad in ([], [0, 0], [-1]):
        with pytest.raises(SettingsError, match="device_index"):
            fast_settings(micro_checkpoint, device_index=bad)
