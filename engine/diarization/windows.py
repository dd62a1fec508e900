"""Short overlapping windows over the speech regions: the units a speaker encoder embeds.

A window is as long as the encoder's training windows (1.6 s for GE2E, 1.5 s for CAM++), so an
embedding hears enough of a voice, and windows start every `step` seconds, so a change of
speaker inside a region is seen to within about a step. Every window lies inside one region:
it never spans a pause, so it never hears two speakers who take turns at a pause. A region
shorter than a window (a 0.4 s "Hello?") still gets one window: its own samples repeated to
the window's length, so the encoder hears that speaker alone and batches keep one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int  # first sample of the recording the window hears
    end: int  # one past its last sample: end - start is the window's length, or the region's when shorter
    region: int  # index of the speech region it lies in


def plan_windows(regions: Sequence[tuple[int, int]], window: int, step: int) -> list[Window]:
    """Windows of `window` samples every `step` samples over each region; the last one of a
    region ends at the region's end, so its whole speech is heard."""
    planned = []
    for index, (start, end) in enumerate(regions):
        if end - start <= window:
            planned.append(Window(start, end, index))
            continue
        starts = list(range(start, end - window + 1, step))
        if starts[-1] + window < end:
            starts.append(end - window)
        planned.extend(Window(s, s + window, index) for s in starts)
    return planned


def window_samples(audio: np.ndarray, windows: Sequence[Window], window: int) -> np.ndarray:
    """(len(windows), window) float32: each window's samples, a short one tiled to the length."""
    out = np.empty((len(windows), window), dtype=np.float32)
    for row, w in enumerate(windows):
        piece = audio[w.start : w.end]
        if len(piece) >= window:
            out[row] = piece[:window]
        elif len(piece) == 0:
            out[row] = 0.0
        else:
            out[row] = np.tile(piece, -(-window // len(piece)))[:window]
    return out
