"""Loading whisper models and keeping a few resident: an LRU cache with safe release.

A model in use is never freed under a running job: each job holds a *lease*; releasing a
leased model is deferred until its last lease returns. Freeing means dropping every
reference, `gc.collect()` and `torch.cuda.empty_cache()`, so the memory really goes back
to the GPU, not just to PyTorch's cache.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import whisper
from whisper.model import Whisper

from engine.device import MIB
from engine.device.cuda import DevicePlan, free_cuda_cache, reserved_mb
from engine.errors import ModelLoadError
from engine.models.ct2_weights import Ct2FormatError, is_ct2_model_dir, read_ct2_model
from engine.models.speaker_encoder import is_speaker_model, load_speaker_encoder

log = logging.getLogger(__name__)


def _offline_hint(name: str) -> str:
    return (
        f'download a checkpoint on a machine with internet (python -c "import whisper; '
        f"whisper.load_model('{name}')\" saves it under ~/.cache/whisper/{name}.pt), copy the .pt file here "
        f"and set model: /path/to/{name}.pt in config.yaml (or WHISPER_APP_MODEL=/path/to/{name}.pt)"
    )


def load_model(name: str, plan: DevicePlan, download_root: str | None = None) -> Whisper:
    """Load by official name (downloads once into whisper's cache), by checkpoint path, or from a
    CTranslate2 (faster-whisper) model directory.

    The weights are read to host memory, converted, and only then moved to the GPU, so the
    GPU never holds an fp32 copy: stock `whisper.load_model(..., device="cuda")` keeps fp32
    weights resident and casts per call, twice the memory.

    A speaker encoder's name (`speaker-encoder-ge2e`, ...) loads that encoder instead, in fp32
    (engine.models.speaker_encoder): it lives in the same cache, so Release memory and the idle
    release free it too.
    """
    if is_speaker_model(name):
        return load_speaker_encoder(name, plan.device)
    started = time.perf_counter()
    model = _read_ct2(name) if is_ct2_model_dir(name) else _read_checkpoint(name, download_root)
    model.eval().requires_grad_(False)
    if plan.precision == "fp16":
        model = model.half()
    elif plan.precision == "int8":
        from engine.models.quantize import quantize_int8, quantize_int8_cuda

        model = quantize_int8_cuda(model) if plan.is_cuda else quantize_int8(model)
    model = model.to(plan.device)
    log.info(
        "Loaded %s on %s in %.1f s (%.0f MB of weights)",
        name,
        plan.description,
        time.perf_counter() - started,
        weights_mb(model),
    )
    return model


def _read_ct2(directory: str) -> Whisper:
    """A faster-whisper directory as an openai-whisper model (CPU, fp32); see `engine.models.ct2_weights`."""
    try:
        return read_ct2_model(directory)
    except Ct2FormatError as exc:  # quantised, not Whisper, truncated: the message says which
        raise ModelLoadError(str(exc)) from exc
    except OSError as exc:
        raise ModelLoadError(f"Could not read the CTranslate2 model directory {directory!r}: {exc}") from exc


def _read_checkpoint(name: str, download_root: str | None) -> Whisper:
    """An official model by name (downloaded once) or an openai-whisper .pt file, on the CPU."""
    looks_like_path = os.sep in name or name.endswith((".pt", ".pth", ".bin")) or os.path.exists(name)
    if os.path.isdir(name):
        raise ModelLoadError(
            f"{name!r} is a directory but not a CTranslate2 (faster-whisper) model directory, which holds "
            "model.bin and config.json. Set model: in config.yaml to such a directory, to the path of "
            "a whisper .pt checkpoint, or to a model name such as large-v3"
        )
    if looks_like_path and not os.path.isfile(name):
        raise ModelLoadError(
            f"Checkpoint file {name!r} does not exist. Set model: in config.yaml to the path of a whisper "
            f".pt checkpoint or a CTranslate2 (faster-whisper) model directory, or to a model name such as "
            f"large-v3 ({', '.join(whisper.available_models())})"
        )
    if not looks_like_path and name not in whisper.available_models():
        raise ModelLoadError(
            f"Unknown model {name!r}: use one of {', '.join(whisper.available_models())}, a path to a "
            ".pt checkpoint or a CTranslate2 (faster-whisper) model directory"
        )
    try:
        return whisper.load_model(name, device="cpu", download_root=download_root)
    except (OSError, ConnectionError) as exc:  # urllib's URLError is an OSError
        if looks_like_path:
            raise ModelLoadError(f"Could not read checkpoint {name!r}: {exc}") from exc
        raise ModelLoadError(
            f"Could not download model {name!r} ({exc}). Without internet, {_offline_hint(name)}"
        ) from exc
    except RuntimeError as exc:
        if "SHA256" in str(exc):
            raise ModelLoadError(
                f"The downloaded {name!r} is corrupt ({exc}); delete it and retry, or {_offline_hint(name)}"
            ) from exc
        raise ModelLoadError(
            f"{name!r} is not a valid whisper checkpoint: {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # unpickling errors, missing keys in a foreign file, ...
        raise ModelLoadError(
            f"{name!r} is not a valid whisper checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); "
            "it must be a file saved by openai-whisper with 'dims' and 'model_state_dict'"
        ) from exc


def weights_mb(model: torch.nn.Module) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


@dataclass
class CachedModel:
    name: str
    model: Whisper | None  # None once released
    leases: int = 0  # jobs using it right now
    last_used: float = field(default_factory=time.monotonic)
    release_pending: bool = False  # free it as soon as the last lease returns
    offloaded: bool = False  # weights parked in host memory by the idle timer


@dataclass(frozen=True)
class ModelInfo:
    name: str
    in_use: int  # leases held by running jobs
    offloaded: bool
    weights_mb: float
    idle_s: float


@dataclass(frozen=True)
class ReleaseReport:
    released: list[str]  # models whose memory was freed now
    deferred: list[str]  # models still in use; freed when their jobs finish
    reserved_before_mb: float  # this process's reserved CUDA memory before and after (0 on CPU)
    reserved_after_mb: float

    @property
    def message(self) -> str:
        parts = [f"Released {', '.join(self.released) or 'nothing'}"]
        if self.deferred:
            parts.append(f"in use, freed when their jobs finish: {', '.join(self.deferred)}")
        parts.append(
            f"reserved GPU memory {self.reserved_before_mb:.0f} MB -> {self.reserved_after_mb:.0f} MB"
        )
        return "; ".join(parts)


class ModelCache:
    """At most `capacity` resident models, least recently used evicted first.

    `lease(name)` loads on first use (one load per name even when jobs ask at once) and
    pins the model for the duration of the `with` block.
    """

    def __init__(
        self,
        loader: Callable[[str], Whisper],
        capacity: int,
        device: torch.device,
        on_load: Callable[[str], None] = lambda name: None,
        on_release: Callable[[str], None] = lambda name: None,
    ):
        self._loader = loader
        self._capacity = capacity
        self._device = device
        self._on_load = on_load
        self._on_release = on_release
        self._entries: OrderedDict[str, CachedModel] = OrderedDict()  # oldest first
        self._lock = threading.Condition()
        self._loading: dict[str, threading.Event] = {}

    # -- use ---------------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str) -> Iterator[Whisper]:
        entry = self._acquire(name)
        try:
            yield entry.model
        finally:
            self._return(entry)

    def _acquire(self, name: str) -> CachedModel:
        while True:
            with self._lock:
                entry = self._entries.get(name)
                if entry is not None and entry.model is not None:
                    entry.leases += 1
                    entry.release_pending = False  # a new job wants it: keep it after all
                    self._entries.move_to_end(name)
                    if entry.offloaded:
                        entry.model.to(self._device)
                        entry.offloaded = False
                        log.info("Moved %s back to %s", name, self._device)
                    return entry
                loading = self._loading.get(name)
                if loading is None:
                    loading = self._loading[name] = threading.Event()
                    break  # this thread loads it
            loading.wait()  # another thread is loading it; then look again
        try:
            model = self._loader(name)
        finally:
            with self._lock:
                del self._loading[name]
            loading.set()
        with self._lock:
            entry = CachedModel(name, model, leases=1)
            self._entries[name] = entry
            self._evict_over_capacity()
        self._on_load(name)
        return entry

    def _return(self, entry: CachedModel) -> None:
        with self._lock:
            entry.leases -= 1
            entry.last_used = time.monotonic()
            free_now = entry.leases == 0 and entry.release_pending
            if free_now:
                self._drop(entry)
            self._lock.notify_all()
        if free_now:
            free_cuda_cache()

    # -- release -----------------------------------------------------------------------
    def _evict_over_capacity(self) -> None:
        """Drop least recently used models beyond capacity; busy ones go when their jobs end.
        Speaker encoders (6-28 MB) do not count: one never pushes a Whisper model out."""
        whisper_models = [e for e in self._entries.values() if not is_speaker_model(e.name)]
        excess = len(whisper_models) - self._capacity
        for entry in whisper_models:
            if excess <= 0:
                break
            if entry.leases == 0:
                self._drop(entry)
            else:
                entry.release_pending = True
            excess -= 1

    def _drop(self, entry: CachedModel) -> None:
        """Forget the model (caller holds the lock); memory is returned by `free_cuda_cache`."""
        entry.model = None
        self._entries.pop(entry.name, None)
        log.info("Released model %s", entry.name)
        self._on_release(entry.name)

    def release(
        self, names: list[str] | None = None, wait: bool = False, timeout: float | None = None
    ) -> ReleaseReport:
        """Free models (all by default). Busy ones are freed when their jobs finish; with
        `wait`, block until they are (or `timeout` passes)."""
        before = reserved_mb(self._device)
        released, deferred = [], []
        with self._lock:
            targets = [e for e in self._entries.values() if names is None or e.name in names]
            for entry in targets:
                if entry.leases == 0:
                    self._drop(entry)
                    released.append(entry.name)
                else:
                    entry.release_pending = True
                    deferred.append(entry.name)
            if wait and deferred:
                deadline = None if timeout is None else time.monotonic() + timeout
                while any(e.name in self._entries for e in targets if e.name in deferred):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._lock.wait(remaining)
                freed = [n for n in deferred if n not in self._entries]
                released += freed
                deferred = [n for n in deferred if n not in freed]
        free_cuda_cache()
        return ReleaseReport(released, deferred, before, reserved_mb(self._device))

    def release_idle(self, idle_s: float, action: str = "release") -> list[str]:
        """Release (or offload to host memory) models unused for `idle_s` seconds."""
        now = time.monotonic()
        touched = []
        with self._lock:
            for entry in list(self._entries.values()):
                if entry.leases or entry.offloaded or now - entry.last_used < idle_s:
                    continue
                if action == "offload" and self._device.type == "cuda":
                    entry.model.to("cpu")
                    entry.offloaded = True
                    log.info("Offloaded idle model %s to host memory", entry.name)
                else:
                    self._drop(entry)
                touched.append(entry.name)
        if touched:
            free_cuda_cache()
        return touched

    # -- inspection --------------------------------------------------------------------
    def loaded(self) -> list[ModelInfo]:
        now = time.monotonic()
        with self._lock:
            return [
                ModelInfo(e.name, e.leases, e.offloaded, weights_mb(e.model), now - e.last_used)
                for e in reversed(self._entries.values())
                if e.model is not None
            ]

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._entries
