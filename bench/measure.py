"""What one measured run records, and the clocks and memory counters it reads.

Kept apart from bench/runners.py (how each implementation is run) so the report and the
tests can read a measurement without importing any of the implementations.
"""

from __future__ import annotations

import gc
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Measurement:
    impl: str
    wall_s: float  # the timed transcription(s), loading and warm-up excluded
    cpu_s: float  # CPU time (user + system, all threads) of the same span: less sensitive to other load
    audio_s: float  # seconds of audio transcribed (twice the recording for the two-jobs run)
    windows: int  # 30 s windows decoded at temperature 0 (rows of a decode call)
    fallbacks: int  # windows decoded again, hotter, after failing a guard (whisper's temperature fallback)
    tokens: int  # tokens sampled, fallback re-decodes included
    peak_rss_mb: float  # peak resident host memory of the worker process (loading included)
    text: str = ""  # the transcript (the two-jobs run: the first job's)
    wer: float | None = None  # % against the input's reference; None without one (random weights)
    job_wall_s: list[float] | None = None  # concurrent jobs: each job's time from submission to result
    weights_mb: float | None = None  # CUDA: allocated right after loading = resident weights
    peak_allocated_mb: float | None = None  # CUDA, PyTorch's counters (torch implementations)
    peak_reserved_mb: float | None = None
    # CUDA, NVML: the whole process (context, CTranslate2 included)
    gpu_process_peak_mb: float | None = None
    reserved_after_release_mb: float | None = None  # CUDA: reserved after the model is released
    gpu_after_release_mb: float | None = None  # CUDA, NVML, after release
    load: float | None = None  # the machine's 1-minute load average when the run ended
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class DecodeCount:
    """Decode calls counted at each library's decode boundary, so the table shows the work
    each implementation actually did: windows, fallback re-decodes and sampled tokens."""

    windows: int = 0
    fallbacks: int = 0
    tokens: int = 0

    def add(self, rows: int, tokens: int, temperature: float) -> None:
        if temperature > 0:
            self.fallbacks += rows
        else:
            self.windows += rows
        self.tokens += tokens

    def reset(self) -> None:
        self.windows = self.fallbacks = self.tokens = 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. Linux's VmHWM starts afresh at exec;
    getrusage's ru_maxrss does not (it keeps the forking parent's resident size, which for
    the bench's parent, torch imported, is several hundred MB), so it is only the fallback."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class NvmlPeak:
    """This process's GPU memory as NVML sees it (what nvidia-smi shows), sampled every 20 ms."""

    def __init__(self):
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: the column stays empty
            self._nvml = None

    def now_mb(self) -> float | None:
        if self._nvml is None:
            return None
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        used = [p.usedGpuMemory for p in processes if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return sum(used) / 2**20 if used else 0.0

    def __enter__(self) -> NvmlPeak:
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


def timed(run: Callable[[], None], cuda: bool) -> tuple[float, float, NvmlPeak | None]:
    """(wall s, cpu s, NVML sampler or None) of run(); on CUDA PyTorch's peaks are reset first."""
    nvml = NvmlPeak() if cuda else None
    if cuda:
        cuda_reset()
    cpu = cpu_s()
    started = time.perf_counter()
    if nvml is not None:
        with nvml:
            run()
    else:
        run()
    return time.perf_counter() - started, cpu_s() - cpu, nvml


def cuda_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def cuda_allocated_mb() -> float:
    import torch

    return torch.cuda.memory_allocated() / 2**20


def cuda_peaks(m: Measurement) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        m.peak_allocated_mb = torch.cuda.max_memory_allocated() / 2**20
        m.peak_reserved_mb = torch.cuda.max_memory_reserved() / 2**20


def cuda_after_release(m: Measurement, nvml: NvmlPeak) -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        m.reserved_after_release_mb = torch.cuda.memory_reserved() / 2**20
    m.gpu_after_release_mb = nvml.now_mb()
