"""Where the speakers speak: the recording's speech regions, read finer than the decoder reads them.

The decoder's voice activity options keep pauses under 2 s and pad each stretch by 0.4 s, so
that no word is clipped. Diarization wants the opposite: a pause between two speakers is
where one turn ends and the next begins, and padding or a bridged pause would put one
speaker's voice into the other's window. So the same Silero probabilities (the job's, when
it has them) are read again with short pauses and little padding. Non-speech then never
reaches the clustering, where it would otherwise form a "speaker" of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.audio.vad import VadOptions, speech_map, speech_probabilities


@dataclass(frozen=True)
class SpeechOptions:
    threshold: float = 0.5  # Silero speech probability above which a 32 ms frame is speech
    min_silence_s: float = 0.25  # a pause this long ends a region: turns change at such pauses
    pad_s: float = 0.05  # kept on each side of a region, for a word's soft edges
    min_region_s: float = 0.2  # shorter regions are clicks and breaths, not turns


def speech_regions(
    audio: np.ndarray, probs: np.ndarray | None = None, options: SpeechOptions = SpeechOptions()
) -> list[tuple[int, int]]:
    """[(start, end), ...] in samples of `audio` (float32, 16 kHz), in order and disjoint."""
    if probs is None:
        probs = speech_probabilities(audio)
    vad = VadOptions(
        threshold=options.threshold, min_silence_s=options.min_silence_s, speech_pad_s=options.pad_s
    )
    shortest = options.min_region_s * 16000
    return [(start, end) for start, end in speech_map(audio, vad, probs).chunks if end - start >= shortest]
