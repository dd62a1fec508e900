"""Set-up that must happen before torch allocates or touches the GPU; imported first by `engine`.

`PYTORCH_CUDA_ALLOC_CONF` is read once, when the caching allocator initialises, so it is set
here at import time: `max_split_size_mb:128` stops large blocks being split into fragments
that a long-running server cannot reuse for the next batch. A value the user exported wins.

`THP_MEM_ALLOC_ENABLE=1` (read at PyTorch's first CPU allocation) puts CPU tensors of 2 MB
and more on transparent huge pages. Decoding on CPU allocates fresh tens of MB per layer and
batch (cross-attention keys and values), and faulting that in 4 KB pages costs more than
the arithmetic on it: a fresh 37 MB tensor takes 8-10 ms to fill on 4 KB pages, 2 ms on
huge pages; the engine's CPU run on the 11-minute recording is 3-5% faster (`python -m
bench --impls engine engine-int8`, with and without). A value the user exported wins
(`THP_MEM_ALLOC_ENABLE=0` turns it off).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
from dataclasses import dataclass

DEFAULT_ALLOC_CONF = "max_split_size_mb:128"
ALLOC_CONF_VAR = "PYTORCH_CUDA_ALLOC_CONF"
USER_SET_ALLOC_CONF = ALLOC_CONF_VAR in os.environ  # remembered so the config never overrides the user
os.environ.setdefault(ALLOC_CONF_VAR, DEFAULT_ALLOC_CONF)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402  (must come after the environment variable)

from engine.device import MIB  # noqa: E402
from engine.errors import DeviceError  # noqa: E402

CUDA_INT8_LIBRARY = "bitsandbytes"  # int8 on a GPU; PyTorch's own int8 is CPU-only


def cuda_int8_available() -> bool:
    return importlib.util.find_spec(CUDA_INT8_LIBRARY) is not None


# TF32 runs fp32 matmuls and convolutions (mel front end, any fp32 fallback) on tensor cores.
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device  # where the model lives
    precision: str  # fp16 | fp32 | int8, after falling back where the device cannot do the asked one
    description: str  # one line for the log and the page, e.g. "cuda:0 (NVIDIA H200), fp16"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def fp16(self) -> bool:
        """Activations in half precision: fp16, and int8 on CUDA (bitsandbytes' int8 layers take fp16)."""
        return self.precision == "fp16" or (self.precision == "int8" and self.is_cuda)


def apply_alloc_conf(conf: str | None) -> None:
    """Use the config's allocator setting, unless the user exported one or CUDA already started."""
    if USER_SET_ALLOC_CONF or conf is None or os.environ.get(ALLOC_CONF_VAR) == conf:
        return
    if torch.cuda.is_initialized():
        log.warning("cuda_alloc_conf=%s ignored: CUDA was initialised before the engine was created", conf)
        return
    os.environ[ALLOC_CONF_VAR] = conf


def plan_device(device: str, device_index: int, precision: str) -> DevicePlan:
    """Pick `cuda:N` or the CPU and the precision that device can run.

    fp16 on the CPU (`device: cpu`, or `device: auto` without a GPU) falls back to fp32, since
    fp16 matmuls are slow or missing there, and says so once in the log: the default config
    asks for fp16, and a CPU user who only sets `device: cpu` should get a working server. int8
    is PyTorch's dynamic quantisation on CPU and bitsandbytes on CUDA; without that library int8
    on a GPU is refused here, at start-up.
    """
    has_gpu = torch.cuda.is_available()
    if device == "cuda" and not has_gpu:
        raise DeviceError("device: cuda was asked for but no CUDA GPU is visible; use device: auto or cpu")
    if device == "cpu" or (device == "auto" and not has_gpu):
        if precision == "fp16":
            reason = "device: cpu" if device == "cpu" else "No NVIDIA GPU detected"
            log.warning(
                "%s: running on CPU in fp32 instead of fp16 (fp16 needs a GPU; set precision: fp32 "
                "or int8 to silence this)",
                reason,
            )
            precision = "fp32"
        plan = DevicePlan(torch.device("cpu"), precision, f"cpu, {precision}")
        log.info("Whisper runs on %s", plan.description)
        return plan

    count = torch.cuda.device_count()
    if device_index >= count:
        raise DeviceError(
            f"device_index: {device_index} but only {count} GPU(s) are visible (0..{count - 1}); "
            "check CUDA_VISIBLE_DEVICES"
        )
    if precision == "int8":
        if not cuda_int8_available():
            raise DeviceError(
                f"precision: int8 on a GPU needs the {CUDA_INT8_LIBRARY} library (pip install "
                f"{CUDA_INT8_LIBRARY}), "
                "which is not installed; use precision: fp16 (already half the memory of fp32), "
                "or device: cpu for PyTorch's own int8"
            )
    cuda = torch.device("cuda", device_index)
    plan = DevicePlan(cuda, precision, f"{cuda} ({torch.cuda.get_device_name(cuda)}), {precision}")
    log.info("Whisper runs on %s", plan.description)
    return plan


def reserved_mb(device: torch.device | None = None) -> float:
    """CUDA memory this process's caching allocator holds (0 on CPU)."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return 0.0
    return torch.cuda.memory_reserved(device) / MIB


def free_cuda_cache() -> None:
    """Hand the memory of tensors nothing uses any more back to the device: after a model is
    released, or a decode ran out of memory."""
    gc.collect()  # whisper's modules and a failed decode's kv-cache hooks hold reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def plan_devices(
    device: str, device_index: int | list[int] | str, precision: str, cpu_replicas: int = 1
) -> list[DevicePlan]:
    """One plan per device the engine decodes on: every GPU `device_index` names (one index, a
    list, or "all" the visible ones), or, without a GPU, the CPU `cpu_replicas` times (each
    plan gets its own model replica and decode loop; on CPU they share the cores)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return [plan_device(device, 0, precision)] * cpu_replicas
    if device_index == "all":
        indices = list(range(torch.cuda.device_count()))
    else:
        indices = [device_index] if isinstance(device_index, int) else list(device_index)
    if not indices:
        raise DeviceError("device_index: all, but no CUDA GPU is visible; check CUDA_VISIBLE_DEVICES")
    return [plan_device(device, index, precision) for index in indices]
