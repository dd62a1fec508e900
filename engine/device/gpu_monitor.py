"""Live GPU memory readings for the sidebar and the metrics, with a threshold check.

Three sources, tried in order until one answers with GPUs:

- GPUtil, because the user asked for it. It shells out to `nvidia-smi` (absent in many
  containers) and imports `distutils`, so it cannot always answer.
- NVML (`pynvml`, from nvidia-ml-py): the library `nvidia-smi` itself reads; ships with
  the driver, no subprocess.
- torch's own counters (`torch.cuda.mem_get_info`), the last resort: they only see the GPUs
  this process can see, and only those it already holds a CUDA context on.

Each source is cheap enough to be read every 2 s from a UI timer (one `nvidia-smi` call at
worst). Memory is in MiB, the unit `nvidia-smi` shows, written "MB" here as it does.

GPU numbers follow this process's numbering (`cuda:N`, counted after
`CUDA_VISIBLE_DEVICES`), the same as `device_index` in the settings, so "GPU 0" in the
sidebar is the GPU the model runs on. `nvidia-smi` numbers by PCI bus; CUDA by default puts
the fastest GPU first, so on a machine with mixed GPU models set
`CUDA_DEVICE_ORDER=PCI_BUS_ID` for the two numberings to agree.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from engine.device import MIB

logger = logging.getLogger(__name__)

NO_GPU_REASON = "No NVIDIA GPU: running on the CPU"


@dataclass(frozen=True)
class RawReading:
    """What a source reports for one GPU, before the threshold is applied."""

    index: int  # GPU number in this process's numbering (cuda:N)
    name: str  # e.g. "NVIDIA A100-SXM4-80GB"
    used_mb: float  # memory in use on the GPU by every process, MiB
    total_mb: float
    free_mb: float
    utilization: float | None = None  # 0..100 % busy, None when the source cannot tell
    source: str = ""  # "gputil" | "nvml" | "torch"
    uuid: str = ""  # "GPU-...", used only to match CUDA_VISIBLE_DEVICES entries given as UUIDs


@dataclass(frozen=True)
class GpuReading:
    index: int  # GPU number in this process's numbering (cuda:N)
    name: str
    used_mb: float  # memory in use on the GPU by every process, MiB
    total_mb: float
    free_mb: float
    utilization: float | None  # 0..100 %, None when the source cannot tell
    source: str  # "gputil" | "nvml" | "torch"
    above_threshold: bool  # used_mb > threshold_mb (False when no threshold)


@dataclass(frozen=True)
class GpuSnapshot:
    gpus: list[GpuReading]  # empty when there is no NVIDIA GPU (or none could be read)
    reason: str  # "" when gpus were read; else a plain sentence saying why not
    process_allocated_mb: float  # held by this process's tensors, summed over its GPUs (0 on CPU)
    process_reserved_mb: float  # held by this process's caching allocator (>= allocated)
    threshold_mb: float | None  # per-GPU used-memory warning level; None = no check

    @property
    def above_threshold(self) -> bool:
        return any(gpu.above_threshold for gpu in self.gpus)

    @property
    def warning(self) -> str:
        """One sentence per GPU above the threshold, "" when none is."""
        return "; ".join(
            f"GPU {gpu.index} uses {gpu.used_mb:,.0f} MB of {gpu.total_mb:,.0f} MB, "
            f"above the {self.threshold_mb:,.0f} MB threshold"
            for gpu in self.gpus
            if gpu.above_threshold
        )


Reader = Callable[[], list[RawReading]]


# --- sources ---------------------------------------------------------------------------
# Each returns [] when its source says there is no GPU or is not installed (normal on a CPU
# machine) and raises when the source is there but gave an answer that cannot be used.

_gputil_module = None
_gputil_import_error: str | None = None


def _import_gputil():
    """GPUtil, imported once; None (and the reason logged once) when it cannot be imported."""
    global _gputil_module, _gputil_import_error
    if _gputil_module is None and _gputil_import_error is None:
        try:
            # GPUtil does `from distutils import spawn`: distutils left the standard library
            # in Python 3.12, so there GPUtil imports only when setuptools (which provides a
            # distutils shim) is installed. On 3.11 the import warns that distutils is
            # deprecated, which is GPUtil's business, not the user's.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import GPUtil
            _gputil_module = GPUtil
        except ImportError as exc:
            _gputil_import_error = f"GPUtil cannot be imported ({exc}); on Python >= 3.12 install setuptools"
            logger.info("%s; reading the GPUs through NVML or torch instead", _gputil_import_error)
    return _gputil_module


def read_gputil() -> list[RawReading]:
    GPUtil = _import_gputil()
    if GPUtil is None:
        return []
    # getGPUs() returns [] when nvidia-smi is missing, and raises (ValueError) when
    # nvidia-smi prints an error instead of the table, e.g. when the driver is not loaded.
    readings = []
    for gpu in GPUtil.getGPUs():
        used, total, free = float(gpu.memoryUsed), float(gpu.memoryTotal), float(gpu.memoryFree)
        if any(math.isnan(value) for value in (used, total, free)):
            # nvidia-smi prints "[N/A]" for memory on some setups (MIG instances): useless
            # here, so let NVML answer instead.
            raise ValueError(f"nvidia-smi reports no memory figures for GPU {gpu.id}")
        load = float(gpu.load)
        readings.append(
            RawReading(
                index=int(gpu.id),
                name=str(gpu.name),
                used_mb=used,
                total_mb=total,
                free_mb=free,
                utilization=None if math.isnan(load) else load * 100.0,
                source="gputil",
                uuid=str(gpu.uuid),
            )
        )
    return _to_process_numbering(readings)


_nvml_lock = threading.Lock()
_nvml_ready = False


def read_nvml() -> list[RawReading]:
    try:
        import pynvml
    except ImportError:
        return []
    global _nvml_ready
    with _nvml_lock:
        if not _nvml_ready:
            # Initialised once and never shut down: init costs far more than a reading, and
            # NVML holds nothing on the GPU itself.
            try:
                pynvml.nvmlInit()
            except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded):
                return []
            _nvml_ready = True

    readings = []
    for physical_index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(physical_index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except pynvml.NVMLError:  # not supported on MIG instances and some older boards
            utilization = None
        readings.append(
            RawReading(
                index=physical_index,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                used_mb=memory.used / MIB,
                total_mb=memory.total / MIB,
                free_mb=memory.free / MIB,
                utilization=utilization,
                source="nvml",
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
            )
        )
    return _to_process_numbering(readings)


def read_torch() -> list[RawReading]:
    import torch

    if not torch.cuda.is_available():
        return []
    if not torch.cuda.is_initialized():
        # mem_get_info would create a CUDA context (a few hundred MB on every GPU it asks
        # about) just to read memory: a monitor must not be what fills the GPU.
        raise RuntimeError("CUDA is not initialised in this process yet (no model loaded)")
    # Only GPUs this process already holds a context on, for the same reason.
    has_context = getattr(torch._C, "_cuda_hasPrimaryContext", lambda index: True)
    readings = []
    for index in range(torch.cuda.device_count()):
        if not has_context(index):
            continue
        free, total = torch.cuda.mem_get_info(index)
        readings.append(
            RawReading(
                index=index,
                name=torch.cuda.get_device_name(index),
                used_mb=(total - free) / MIB,
                total_mb=total / MIB,
                free_mb=free / MIB,
                utilization=None,  # torch has no utilisation counter without NVML
                source="torch",
            )
        )
    return readings


DEFAULT_READERS: tuple[Reader, ...] = (read_gputil, read_nvml, read_torch)


def _text(value) -> str:
    # pynvml returns bytes before nvidia-ml-py 11.5 and str after.
    return value.decode() if isinstance(value, bytes) else str(value)


def _to_process_numbering(readings: list[RawReading]) -> list[RawReading]:
    """Keep the GPUs CUDA_VISIBLE_DEVICES lets this process see, numbered as cuda:N.

    nvidia-smi and NVML see every GPU of the machine by physical number; this process sees
    only the GPUs listed in CUDA_VISIBLE_DEVICES, renumbered from 0 in the listed order.
    Entries are physical numbers or "GPU-<uuid>" prefixes; as CUDA does, the list stops at
    the first entry that names no GPU. MIG entries cannot be matched to a whole GPU, so
    with those every GPU is shown by its physical number.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return readings
    entries = [entry.strip() for entry in visible.split(",")]
    if any(entry.startswith("MIG-") for entry in entries):
        return readings
    kept: list[RawReading] = []
    for entry in entries:
        match = next(
            (
                r
                for r in readings
                if (entry.isdigit() and r.index == int(entry))
                or (entry.startswith("GPU-") and r.uuid.startswith(entry))
            ),
            None,
        )
        if match is None or match in kept:
            break
        kept.append(match)
    return [replace(reading, index=position) for position, reading in enumerate(kept)]


def _reader_name(reader: Reader) -> str:
    name = getattr(reader, "__name__", None) or type(reader).__name__
    return name[len("read_") :] if name.startswith("read_") else name


# --- the monitor -----------------------------------------------------------------------


class GpuMonitor:
    """Reads every GPU's memory on demand and checks it against a threshold.

    `threshold_mb` is the used-memory level (MiB, per GPU) above which a GPU is flagged;
    None turns the check off. `readers` replaces the sources (tests inject fakes);
    `device_indices` limits the readings to those GPUs (cuda:N numbering), None = all.
    """

    def __init__(
        self,
        threshold_mb: float | None = None,
        readers: Sequence[Reader] | None = None,
        device_indices: Sequence[int] | None = None,
    ):
        if threshold_mb is not None and threshold_mb < 0:
            raise ValueError(f"threshold_mb must be >= 0 or None, got {threshold_mb}")
        self.threshold_mb = threshold_mb
        self.readers: tuple[Reader, ...] = tuple(DEFAULT_READERS if readers is None else readers)
        self.device_indices = None if device_indices is None else frozenset(device_indices)
        self._logged_failures: set = set()  # logged once each: snapshot() runs every 2 s

    def snapshot(self) -> GpuSnapshot:
        """Readings from the first source that answers with GPUs. Never raises."""
        failures: list[str] = []
        raw: list[RawReading] = []
        for reader in self.readers:
            try:
                raw = [r for r in reader() if self.device_indices is None or r.index in self.device_indices]
            except Exception as exc:  # any source may break in its own way; the next one may answer
                failure = f"{_reader_name(reader)}: {str(exc) or type(exc).__name__}"
                failures.append(failure)
                self._log_once(failure)
                raw = []
            if raw:
                break

        if raw:
            reason = ""
        elif failures:
            reason = "Could not read GPU memory (" + "; ".join(failures) + ")"
        else:
            reason = NO_GPU_REASON
        allocated_mb, reserved_mb = self.process_memory()
        return GpuSnapshot(
            gpus=[self._apply_threshold(r) for r in raw],
            reason=reason,
            process_allocated_mb=allocated_mb,
            process_reserved_mb=reserved_mb,
            threshold_mb=self.threshold_mb,
        )

    def process_memory(self) -> tuple[float, float]:
        """(allocated, reserved) MiB of this process over its GPUs; (0, 0) on CPU. Never raises.

        Allocated is what live tensors hold; reserved adds what torch's caching allocator
        keeps for reuse, which other processes cannot use until `torch.cuda.empty_cache()`.
        """
        try:
            import torch

            # Not initialised means this process has put nothing on a GPU; asking anyway
            # would create a CUDA context.
            if not torch.cuda.is_initialized():
                return 0.0, 0.0
            devices = range(torch.cuda.device_count())
            allocated = sum(torch.cuda.memory_allocated(d) for d in devices)
            reserved = sum(torch.cuda.memory_reserved(d) for d in devices)
            return allocated / MIB, reserved / MIB
        except Exception as exc:
            self._log_once(f"process memory: {exc}")
            return 0.0, 0.0

    def _apply_threshold(self, raw: RawReading) -> GpuReading:
        return GpuReading(
            index=raw.index,
            name=raw.name,
            used_mb=raw.used_mb,
            total_mb=raw.total_mb,
            free_mb=raw.free_mb,
            utilization=raw.utilization,
            source=raw.source,
            above_threshold=self.threshold_mb is not None and raw.used_mb > self.threshold_mb,
        )

    def _log_once(self, failure: str) -> None:
        if failure not in self._logged_failures:
            self._logged_failures.add(failure)
            logger.warning("GPU reading failed, trying the next source: %s", failure)
