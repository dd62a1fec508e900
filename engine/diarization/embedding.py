"""Speaker embeddings of many windows, in batches on the job's device that fit its free memory.

The batch is sized like the decoder's (`engine.decoding.memory`): on CUDA, the memory this
process may still use (free plus its allocator's unused cache, and under
`gpu_memory_threshold_mb` when set), less a headroom, divided by what one window costs
(`SpeakerEncoder.window_mb`), never above `MAX_BATCH`; out of memory anyway (another process
took some meanwhile) halves the batch and tries again, down to one window, which fails with
WindowTooLarge. On CPU the batch is `CPU_BATCH`: wide enough to keep a core busy through the
LSTM's sequential time steps, small enough that the STFT's frames (161 x 400 floats a window)
stay under glibc's 32 MB mmap threshold and reuse memory instead of faulting in fresh pages
on every batch (the embeddings are the same to the bit at any batch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from engine.decoding.memory import HEADROOM_MB, GpuMemory, available_mb, read_gpu_memory
from engine.diarization.windows import Window, window_samples
from engine.errors import WindowTooLarge
from engine.models.speaker_encoder import SpeakerEncoder

log = logging.getLogger(__name__)

MAX_BATCH = 256  # windows per pass on CUDA at most: ~250 s of speech at a 1 s step, 26 MB of samples
CPU_BATCH = 64  # windows per pass on CPU: 16 MB of STFT frames


def fit_window_batch(
    requested: int,
    window_mb: float,
    device: torch.device,
    threshold_mb: float | None = None,
    read: Callable[[torch.device], GpuMemory] = read_gpu_memory,
) -> int:
    """Windows to embed at once: on CPU at most CPU_BATCH; on CUDA at most what fits (at least 1)."""
    if device.type != "cuda":
        return min(requested, CPU_BATCH)
    budget = available_mb(read(device), threshold_mb) - HEADROOM_MB
    fits = max(1, min(requested, int(budget // window_mb)))
    if fits < requested:
        log.info(
            "Speaker windows: %d at once instead of %d (%.0f MB usable)", fits, requested, max(budget, 0.0)
        )
    return fits


def embed_windows(
    encoder: SpeakerEncoder,
    audio: np.ndarray,
    windows: Sequence[Window],
    threshold_mb: float | None = None,
    max_batch: int = MAX_BATCH,
    read: Callable[[torch.device], GpuMemory] = read_gpu_memory,
) -> np.ndarray:
    """(len(windows), encoder.embedding_dim) float32 unit rows, on the CPU."""
    device = encoder.device
    out = np.empty((len(windows), encoder.embedding_dim), dtype=np.float32)
    batch = fit_window_batch(max_batch, encoder.window_mb, device, threshold_mb, read)
    done = 0
    while done < len(windows):
        rows = windows[done : done + batch]
        samples = torch.from_numpy(window_samples(audio, rows, encoder.window_samples))
        try:
            with torch.inference_mode():
                out[done : done + len(rows)] = encoder.embed(samples.to(device)).float().cpu().numpy()
        except torch.OutOfMemoryError:
            if batch == 1:
                raise WindowTooLarge(
                    "Not even one speaker window fits in GPU memory; free some (Release "
                    "memory) or lower the other jobs' batch"
                ) from None
            batch = max(1, batch // 2)
            log.warning("Out of GPU memory embedding speaker windows: retrying %d at once", batch)
            torch.cuda.empty_cache()
            continue
        done += len(rows)
    return out
