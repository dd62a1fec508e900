"""Diarization of one recording: speech regions, windows, embeddings, speakers, turns, names.

    found = find_speakers(audio, options, encoder)          # who speaks when
    result = assign_speakers(result, found.turns, found.names, encode)   # onto the words

`diarize` does both. The encoder is leased from the model cache on the job's device; the
windows are embedded there, in batches that fit its free memory; clustering and everything
after it run on the CPU (a few hundred windows a minute: milliseconds).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from engine.diarization.clustering import centroids, cluster
from engine.diarization.embedding import embed_windows
from engine.diarization.known import name_speakers, reference_voices
from engine.diarization.labels import Encode, assign_speakers
from engine.diarization.options import DiarizationOptions
from engine.diarization.speech import speech_regions
from engine.diarization.turns import SpeakerTurn, turns_from_windows
from engine.diarization.windows import plan_windows
from engine.models.speaker_encoder import SAMPLE_RATE, SpeakerEncoder
from engine.results import TranscriptionResult

log = logging.getLogger(__name__)

STEP_S = 1.0  # a window starts every this many seconds of speech: the resolution inside a region


@dataclass(frozen=True)
class Diarization:
    turns: tuple[SpeakerTurn, ...]  # in time order; `speaker` is a cluster index
    names: dict[int, str]  # cluster index -> known speaker's name, for those a reference clip matched
    speakers: int  # speakers found
    windows: int  # windows embedded
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage: speech, embed, cluster


def find_speakers(
    audio: np.ndarray,
    options: DiarizationOptions,
    encoder: SpeakerEncoder,
    speech_probs: np.ndarray | None = None,
    threshold_mb: float | None = None,
) -> Diarization:
    """Who speaks when in `audio` (float32, 16 kHz, mono). `speech_probs`: the job's Silero
    probabilities (`engine.audio.vad.speech_probabilities(audio)`) when it has them."""
    seconds = {}
    started = time.perf_counter()
    regions = speech_regions(audio, speech_probs)
    step = int(STEP_S * SAMPLE_RATE)
    windows = plan_windows(regions, encoder.window_samples, step)
    seconds["speech"] = time.perf_counter() - started
    if not windows:
        return Diarization((), {}, 0, 0, seconds)
    started = time.perf_counter()
    embeddings = embed_windows(encoder, audio, windows, threshold_mb)
    references = None
    if options.known_speakers:
        references = reference_voices(encoder, options.known_speakers, step, threshold_mb)
    seconds["embed"] = time.perf_counter() - started
    started = time.perf_counter()
    fewest, most = options.speaker_range
    whole = np.array([w.end - w.start >= encoder.window_samples for w in windows])
    labels = cluster(embeddings, fewest, most, encoder.merge_similarity, encoder.window_similarity, whole)
    turns = tuple(turns_from_windows(regions, windows, labels))
    names = {}
    if references is not None:
        names = name_speakers(
            centroids(embeddings, labels),
            references,
            [speaker.name for speaker in options.known_speakers],
            encoder.match_similarity,
        )
    seconds["cluster"] = time.perf_counter() - started
    found = Diarization(turns, names, int(labels.max()) + 1, len(windows), seconds)
    log.info(
        "Diarization: %d speakers in %.1f s of speech (%d regions, %d windows; %s)",
        found.speakers,
        sum(e - s for s, e in regions) / SAMPLE_RATE,
        len(regions),
        len(windows),
        ", ".join(f"{stage} {s:.2f} s" for stage, s in seconds.items()),
    )
    return found


def diarize(
    audio: np.ndarray,
    result: TranscriptionResult,
    options: DiarizationOptions,
    encoder: SpeakerEncoder,
    speech_probs: np.ndarray | None = None,
    threshold_mb: float | None = None,
    encode: Encode | None = None,
) -> TranscriptionResult:
    """`result` (of the same `audio`, with word timestamps) with a speaker on every segment and
    word, segments split where the speaker changes; its words are unchanged."""
    found = find_speakers(audio, options, encoder, speech_probs, threshold_mb)
    return assign_speakers(result, found.turns, found.names, encode)
