"""How many 30 s windows to decode at once on the GPU, from the memory actually free.

A batch's GPU memory grows linearly with its windows: each window brings its log-mel, its
encoder output and, while the decoder runs, the cross-attention keys and values of every
decoder layer (for large-v3 in fp16 about 250 MB of the ~290 MB a window costs). So
`fit_batch_size` divides the memory this process may still use by a per-window estimate
derived from the model's dimensions, and never goes above the configured `batch_size`.

"May still use" is the smaller of what the driver reports free (plus what PyTorch's caching
allocator already holds unused, which this process can reuse without asking) and, when
`gpu_memory_threshold_mb` is set, the threshold minus what the whole device uses now. The
estimate is deliberately plain; when it is wrong anyway, the decode loop's out-of-memory
handling halves the batch and retries (engine.decoding.decode_loop), so an estimate only
needs to be roughly right. On CPU the configured `batch_size` is used as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from whisper.audio import N_FRAMES
from whisper.model import ModelDimensions, Whisper

from engine.device import MIB

log = logging.getLogger(__name__)

HEADROOM_MB = 256.0  # left free for cuBLAS workspaces, allocator rounding and the next batch's mels
# live (ctx x state) tensors inside an encoder block: x, norm, q, k, v, out, 4x-wide MLP
ENCODER_ACTIVATIONS = 10
STEP_VOCAB_TENSORS = 4  # float32 (batch x vocab) tensors alive during a token step: logits, log-probs, masks
PROMPT_TOKENS = 4  # start-of-transcript, language, task, and a timestamp: the tokens before the sampled ones


@dataclass(frozen=True)
class GpuMemory:
    free_mb: float  # what the driver says is free on the device (all processes counted)
    total_mb: float
    cached_mb: float  # reserved by this process's caching allocator but not allocated: reusable here


def read_gpu_memory(device: torch.device) -> GpuMemory:
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return GpuMemory(free / MIB, total / MIB, cached / MIB)


def window_cost_mb(
    dims: ModelDimensions, dtype_bytes: int, max_new_tokens: int, prompt_tokens: int = 0
) -> float:
    """GPU memory one window needs while its batch is encoded and decoded (MB)."""
    mel = dims.n_mels * N_FRAMES * (4 + dtype_bytes)  # float32 log-mel and its cast copy
    # encoder output, kept for fallback re-decodes
    features = dims.n_audio_ctx * dims.n_audio_state * dtype_bytes
    encoder = ENCODER_ACTIVATIONS * features  # transient, per block; gone before the decoder starts
    cross = 2 * dims.n_text_layer * dims.n_audio_ctx * dims.n_text_state * dtype_bytes
    text_len = min(dims.n_text_ctx, PROMPT_TOKENS + prompt_tokens + max_new_tokens)
    self_attention = 2 * dims.n_text_layer * text_len * dims.n_text_state * dtype_bytes
    step = STEP_VOCAB_TENSORS * dims.n_vocab * 4
    return (mel + features + max(encoder, cross + self_attention + step)) / MIB


def available_mb(memory: GpuMemory, threshold_mb: float | None) -> float:
    """Memory this process may still fill with batches (MB), before the headroom."""
    available = memory.free_mb + memory.cached_mb
    if threshold_mb is not None:
        used_by_device = memory.total_mb - memory.free_mb  # every process, our cache included
        available = min(available, threshold_mb - used_by_device + memory.cached_mb)
    return available


def fit_batch_size(
    requested: int,
    dims: ModelDimensions,
    device: torch.device,
    dtype_bytes: int,
    max_new_tokens: int,
    threshold_mb: float | None = None,
    prompt_tokens: int = 0,
    read: Callable[[torch.device], GpuMemory] = read_gpu_memory,
) -> int:
    """The batch size to use now: `requested` on CPU; on CUDA at most what fits (at least 1,
    so a window that cannot fit is tried and fails with a clear WindowTooLarge)."""
    if device.type != "cuda":
        return requested
    memory = read(device)
    cost = window_cost_mb(dims, dtype_bytes, max_new_tokens, prompt_tokens)
    budget = available_mb(memory, threshold_mb) - HEADROOM_MB
    fits = max(1, min(requested, int(budget // cost)))
    if fits < requested:
        log.info(
            "Batch of %d windows instead of %d: %.0f MB usable, ~%.0f MB per window%s",
            fits,
            requested,
            max(budget, 0.0),
            cost,
            f" (gpu_memory_threshold_mb={threshold_mb:g})" if threshold_mb else "",
        )
    return fits


def too_large_message(model: Whisper, fp16: bool, max_new_tokens: int) -> str:
    """Why a job fails when CUDA ran out of memory on a batch of one window."""
    message = (
        "GPU out of memory while decoding a single 30 s window, so no batch size can work: "
        "free GPU memory (other processes, other models) or use a smaller model"
    )
    device = next(model.parameters()).device
    if device.type == "cuda":
        need = window_cost_mb(model.dims, 2 if fp16 else 4, max_new_tokens)
        message += f" (a window needs about {need:.0f} MB; {read_gpu_memory(device).free_mb:.0f} MB are free)"
    return message
