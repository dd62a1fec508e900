"""GPU monitor: the real sources on this machine, and fake readings for the threshold logic."""

import sys
from types import SimpleNamespace

import pytest

from engine.device import gpu_monitor
from engine.device.gpu_monitor import NO_GPU_REASON, GpuMonitor, RawReading


def reading(index=0, used_mb=41230.0, total_mb=81920.0, source="fake", **fields):
    return RawReading(
        index, f"Fake GPU {index}", used_mb, total_mb, total_mb - used_mb, 50.0, source, **fields
    )


def readers_of(*results):
    """Readers that answer with the given lists, or raise the given exceptions."""

    def make(result):
        def fake():
            if isinstance(result, Exception):
                raise result
            return list(result)

        return fake

    return [make(result) for result in results]


def test_real_sources_without_gpu_say_so_plainly():
    # This test machine has no NVIDIA GPU, no nvidia-smi and a CPU-only torch.
    snapshot = GpuMonitor(threshold_mb=1000).snapshot()
    assert snapshot.gpus == []
    assert "No NVIDIA GPU" in snapshot.reason
    assert not snapshot.above_threshold and snapshot.warning == ""


def test_each_real_source_answers_empty_on_cpu():
    assert gpu_monitor.read_gputil() == []
    assert gpu_monitor.read_nvml() == []
    assert gpu_monitor.read_torch() == []


def test_process_memory_is_zero_on_cpu():
    monitor = GpuMonitor()
    assert monitor.process_memory() == (0.0, 0.0)
    snapshot = monitor.snapshot()
    assert (snapshot.process_allocated_mb, snapshot.process_reserved_mb) == (0.0, 0.0)


def test_below_threshold():
    snapshot = GpuMonitor(threshold_mb=50000, readers=readers_of([reading(used_mb=41230)])).snapshot()
    assert snapshot.reason == ""
    assert [gpu.above_threshold for gpu in snapshot.gpus] == [False]
    assert not snapshot.above_threshold and snapshot.warning == ""


def test_above_threshold_warns_with_figures():
    snapshot = GpuMonitor(threshold_mb=40000, readers=readers_of([reading(used_mb=41230)])).snapshot()
    assert snapshot.above_threshold and snapshot.gpus[0].above_threshold
    assert snapshot.warning == "GPU 0 uses 41,230 MB of 81,920 MB, above the 40,000 MB threshold"


def test_threshold_is_strictly_above():
    snapshot = GpuMonitor(threshold_mb=40000, readers=readers_of([reading(used_mb=40000)])).snapshot()
    assert not snapshot.above_threshold


def test_only_gpus_above_are_named():
    gpus = [reading(0, used_mb=1000), reading(1, used_mb=70000)]
    snapshot = GpuMonitor(threshold_mb=40000, readers=readers_of(gpus)).snapshot()
    assert [gpu.above_threshold for gpu in snapshot.gpus] == [False, True]
    assert snapshot.warning.startswith("GPU 1 uses 70,000 MB") and "GPU 0" not in snapshot.warning


def test_no_threshold_is_never_above():
    snapshot = GpuMonitor(threshold_mb=None, readers=readers_of([reading(used_mb=81000)])).snapshot()
    assert snapshot.threshold_mb is None
    assert not snapshot.above_threshold and snapshot.warning == ""


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError):
        GpuMonitor(threshold_mb=-1)


def test_failing_or_empty_reader_falls_through_to_next():
    readers = readers_of(
        RuntimeError("nvidia-smi broke"), [], [reading(source="third")], [reading(source="fourth")]
    )
    snapshot = GpuMonitor(readers=readers).snapshot()
    assert [gpu.source for gpu in snapshot.gpus] == ["third"]
    assert snapshot.reason == ""


def test_all_readers_failing_never_raises_and_gives_the_reason():
    readers = readers_of(RuntimeError("nvidia-smi broke"), ValueError())
    snapshot = GpuMonitor(readers=readers).snapshot()
    assert snapshot.gpus == []
    assert "nvidia-smi broke" in snapshot.reason and "ValueError" in snapshot.reason


def test_all_readers_empty_means_no_gpu():
    snapshot = GpuMonitor(readers=readers_of([], [])).snapshot()
    assert snapshot.gpus == [] and snapshot.reason == NO_GPU_REASON


def test_device_indices_limit_the_readings():
    gpus = [reading(0), reading(1), reading(2)]
    snapshot = GpuMonitor(readers=readers_of(gpus), device_indices=[1]).snapshot()
    assert [gpu.index for gpu in snapshot.gpus] == [1]


def test_fields_carried_from_the_source():
    gpu = (
        GpuMonitor(threshold_mb=1, readers=readers_of([reading(used_mb=1000, total_mb=4000)]))
        .snapshot()
        .gpus[0]
    )
    assert (gpu.name, gpu.used_mb, gpu.total_mb, gpu.free_mb, gpu.utilization, gpu.source) == (
        "Fake GPU 0",
        1000,
        4000,
        3000,
        50.0,
        "fake",
    )


@pytest.mark.parametrize(
    "visible, expected",
    [
        (None, [(0, "a"), (1, "b"), (2, "c")]),  # unset: every GPU, physical numbers
        ("2,0", [(0, "c"), (1, "a")]),  # renumbered in the listed order, as CUDA does
        ("1,7,2", [(0, "b")]),  # CUDA stops at the first entry that names no GPU
        ("GPU-bbb", [(0, "b")]),  # UUID prefixes
        ("", []),  # nothing visible
        ("MIG-xyz", [(0, "a"), (1, "b"), (2, "c")]),  # cannot map MIG: show physical GPUs
    ],
)
def test_physical_numbers_follow_cuda_visible_devices(monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    physical = [reading(i, uuid=f"GPU-{u * 3}-1234") for i, u in enumerate("abc")]
    mapped = gpu_monitor._to_process_numbering(physical)
    assert [(r.index, r.uuid[4]) for r in mapped] == expected


def test_gputil_figures_are_converted(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nan = float("nan")
    gpu = SimpleNamespace(
        id=0, uuid="GPU-a", name="A100", load=nan, memoryUsed=1000.0, memoryTotal=4000.0, memoryFree=3000.0
    )
    monkeypatch.setattr(gpu_monitor, "_gputil_module", SimpleNamespace(getGPUs=lambda: [gpu]))
    [raw] = gpu_monitor.read_gputil()
    assert (raw.used_mb, raw.total_mb, raw.free_mb, raw.utilization, raw.source) == (
        1000,
        4000,
        3000,
        None,
        "gputil",
    )

    gpu.load, gpu.memoryUsed = 0.25, nan  # nvidia-smi printed [N/A] for memory: let NVML answer
    with pytest.raises(ValueError):
        gpu_monitor.read_gputil()


def test_nvml_figures_are_converted(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    class NVMLError(Exception):
        pass

    mib = 1024 * 1024

    def utilization(handle):
        if handle == 1:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=30)

    fake = SimpleNamespace(
        NVMLError=NVMLError,
        NVMLError_LibraryNotFound=type("LibraryNotFound", (NVMLError,), {}),
        NVMLError_DriverNotLoaded=type("DriverNotLoaded", (NVMLError,), {}),
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(
            used=1000 * mib, total=4000 * mib, free=3000 * mib
        ),
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetName=lambda handle: b"H100" if handle == 0 else "H200",
        nvmlDeviceGetUUID=lambda handle: f"GPU-{handle}",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(gpu_monitor, "_nvml_ready", False)
    readings = gpu_monitor.read_nvml()
    assert [(r.index, r.name, r.used_mb, r.total_mb, r.utilization) for r in readings] == [
        (0, "H100", 1000, 4000, 30.0),
        (1, "H200", 1000, 4000, None),
    ]
