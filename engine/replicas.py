"""One model replica and one decode loop per device, and which device a job goes to.

With several GPUs (`device_index: [0, 1]` or `all`) every device keeps its own resident
models (`ModelCache`) and its own `DecodeLoop`, each within that device's memory rules. A job
is placed once, when it starts: on the device running the fewest jobs, then the fewest live
windows, then the most free memory; all of its sections stay there, so its windows batch
with the other jobs of that device. Without a GPU, `cpu_replicas` gives the same routing on
the CPU (the replicas share its cores), which is how the routing is tested here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from engine.decoding.decode_loop import DecodeLoop
from engine.decoding.model_lock import ModelLock
from engine.device.cuda import DevicePlan
from engine.models.cache import ModelCache


@dataclass
class DeviceReplica:
    """One device's share of the engine."""

    name: str  # the device as people read it: "cuda:1 (NVIDIA H100), fp16", "cpu, fp32 #2"
    plan: DevicePlan  # where its models live and in which precision
    models: ModelCache  # its resident models
    loop: DecodeLoop  # the one decode loop the jobs placed here share
    lock: ModelLock  # every forward pass on its models (engine.decoding.model_lock)
    running: int = 0  # jobs placed here and not finished
    finished: int = 0  # jobs that ran here, since the start


@dataclass(frozen=True)
class DeviceStatus:
    """What the sidebar and /metrics show of one device."""

    device: str  # e.g. "cuda:1 (NVIDIA H100), fp16"
    running_jobs: int  # jobs decoding (or about to) on it
    finished_jobs: int  # jobs that ran on it, since the start
    live_windows: int  # sections in its decode loop now
    models: list[str]  # models resident on it


def _free_bytes(plan: DevicePlan) -> int:
    if plan.device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(plan.device)
    return free


class DeviceRouter:
    """Places each job on one replica and counts it there until the job ends."""

    def __init__(self, replicas: list[DeviceReplica]):
        self.replicas = replicas
        self._lock = threading.Lock()

    def _room(self, replica: DeviceReplica) -> tuple:
        return (replica.running, replica.loop.live_streams, -_free_bytes(replica.plan))

    @contextmanager
    def place(self) -> Iterator[DeviceReplica]:
        """The replica a starting job runs on, held for it until the `with` block ends."""
        with self._lock:
            replica = min(self.replicas, key=self._room)
            replica.running += 1
        try:
            yield replica
        finally:
            with self._lock:
                replica.running -= 1
                replica.finished += 1

    def status(self) -> list[DeviceStatus]:
        return [
            DeviceStatus(
                r.name, r.running, r.finished, r.loop.live_streams, [m.name for m in r.models.loaded()]
            )
            for r in self.replicas
        ]
