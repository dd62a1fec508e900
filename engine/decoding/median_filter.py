"""whisper.timing.median_filter for word timing on a CPU: the same values, compiled.

Whisper smooths the alignment heads' attention with a median of 7 frames along time
(`find_alignment`'s `medfilt_width`). Its CPU path sorts every window of 7 with torch
(`unfold(...).sort()`), which was most of what word timestamps add to a job on a CPU
(docs/benchmarks.md, "Speaker diarization"). A median only picks one of its inputs, so any
correct way of finding it gives the same floats: here the compare-exchanges of a sorting
network for 7 inputs (Knuth's 16; the 14 that reach the middle one) in numba, which whisper
already depends on (its DTW runs in it). Anything else is whisper's own function: CUDA (its
Triton kernel), other widths, shapes and dtypes, and NaN (min and max order NaNs otherwise
than a sort does).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from whisper.timing import median_filter as whisper_median_filter

WIDTH = 7  # the one width compiled here: find_alignment's medfilt_width


@numba.njit(cache=True)
def _median_of_7(padded: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """out[r, j] = the median of padded[r, j : j + 7], for every row r and frame j."""
    rows, frames = out.shape
    for r in range(rows):
        row, into = padded[r], out[r]
        for j in range(frames):
            v0, v1, v2, v3 = row[j], row[j + 1], row[j + 2], row[j + 3]
            v4, v5, v6 = row[j + 4], row[j + 5], row[j + 6]
            v0, v6 = min(v0, v6), max(v0, v6)
            v2, v3 = min(v2, v3), max(v2, v3)
            v4, v5 = min(v4, v5), max(v4, v5)
            v0, v2 = min(v0, v2), max(v0, v2)
            v1, v4 = min(v1, v4), max(v1, v4)
            v3, v6 = min(v3, v6), max(v3, v6)
            v0, v1 = min(v0, v1), max(v0, v1)
            v2, v5 = min(v2, v5), max(v2, v5)
            v3, v4 = min(v3, v4), max(v3, v4)
            v1, v2 = min(v1, v2), max(v1, v2)
            v4, v6 = min(v4, v6), max(v4, v6)
            v2, v3 = min(v2, v3), max(v2, v3)
            v4, v5 = min(v4, v5), max(v4, v5)
            v1, v2 = min(v1, v2), max(v1, v2)
            v3, v4 = min(v3, v4), max(v3, v4)
            into[j] = v3  # the 4th smallest of 7 (v5, v6 are not needed past here)


def median_filter(x: torch.Tensor, filter_width: int) -> torch.Tensor:
    """whisper.timing.median_filter(x, filter_width): a median of `filter_width` along the last
    dimension, the edges reflected."""
    pad = filter_width // 2
    if (
        filter_width != WIDTH
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or x.ndim != 3
        or x.shape[-1] <= pad
        or bool(torch.isnan(x).any())
    ):
        return whisper_median_filter(x, filter_width)
    padded = F.pad(x, (pad, pad, 0, 0), mode="reflect")  # whisper's own padding
    rows = np.ascontiguousarray(padded.reshape(-1, padded.shape[-1]).numpy())
    out = np.empty((rows.shape[0], x.shape[-1]), dtype=np.float32)
    _median_of_7(rows, out)
    return torch.from_numpy(out).reshape(x.shape)
