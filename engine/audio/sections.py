"""Cut a recording into sections at its longest pauses, one stream per section.

Each section is decoded as `whisper.transcribe` decodes a whole recording (engine.decoding.stream),
so words are lost or repeated only where two sections meet. Sections therefore meet in
pauses, the longest ones near evenly spaced targets: even, so the streams of a job finish
together and the batch stays full to the end; in a long pause, so that no sentence runs
across a seam. As many sections as the batch has rows, none shorter than
`MIN_SECTION_S`: a short recording is one section and gives exactly whisper's transcript.

Pure numpy over the energy that engine.audio.energy computes; no torch, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.audio.energy import FRAME_S, SAMPLE_RATE, pause_level, quietest_cut, smoothed_level_db

# over one window: whisper's seek needs room to carry a sentence over; see settings.min_section_s
MIN_SECTION_S = 42.0
SEARCH_FRACTION = 0.25  # a cut may move this fraction of a section's length from its even target


@dataclass(frozen=True)
class Section:
    start: int  # first sample
    end: int  # one past the last sample
    sample_rate: int = SAMPLE_RATE

    @property
    def start_s(self) -> float:
        return self.start / self.sample_rate

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.sample_rate


def plan_sections(
    audio: np.ndarray,
    sections: int,
    sample_rate: int = SAMPLE_RATE,
    min_section_s: float = MIN_SECTION_S,
    joins: Sequence[int] | None = None,
) -> list[Section]:
    """At most `sections` sections of at least `min_section_s`, tiling `audio` in order.

    `joins` are samples where the voice activity detector removed a stretch without speech
    (engine.audio.vad): a cut there is a seam where nobody speaks, so the join nearest a target
    is taken when one lies within reach, before any pause the energy suggests."""
    total = len(audio)
    count = int(min(max(sections, 1), total / sample_rate // min_section_s)) if total else 0
    if count <= 1:
        return [Section(0, total, sample_rate)] if total else []
    frame_length = int(round(FRAME_S * sample_rate))
    level_db = smoothed_level_db(audio, sample_rate)
    pause_db = pause_level(level_db, frame_length, 0, total)
    quiet = level_db <= pause_db
    length = total / count
    reach = int(length * SEARCH_FRACTION)
    cuts = [0]
    for k in range(1, count):
        target = int(k * length)
        near = [j for j in (joins or ()) if abs(j - target) <= reach and j > cuts[-1]]
        if near:
            cuts.append(min(near, key=lambda j: abs(j - target)))
            continue
        cuts.append(_longest_pause(quiet, level_db, frame_length, target - reach, target + reach, target))
    cuts.append(total)
    return [Section(a, b, sample_rate) for a, b in zip(cuts, cuts[1:]) if b > a]


def _longest_pause(
    quiet: np.ndarray, level_db: np.ndarray, frame_length: int, lo: int, hi: int, target: int
) -> int:
    """The middle of the longest run of quiet frames in [lo, hi] (the one nearest `target`
    among equals); the quietest point there when nothing is quiet (music, unbroken speech)."""
    first, last = max(lo // frame_length, 0), min(hi // frame_length, len(quiet) - 1)
    window = quiet[first : last + 1].astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], window, [0]))))
    starts, ends = edges[::2], edges[1::2]  # runs [start, end) of quiet frames
    if len(starts) == 0:
        return quietest_cut(level_db, frame_length, lo, hi)
    middles = (first + (starts + ends) / 2) * frame_length
    best = np.lexsort((np.abs(middles - target), -(ends - starts)))[0]
    return int(middles[best])
