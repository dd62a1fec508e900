"""Known speakers: a reference clip of each, matched to the speakers clustering found.

A clip's voice is the mean of its windows' embeddings (the same windows and encoder as the
recording's), and a speaker's voice the mean of its windows'. Names go to speakers by the
best one-to-one assignment of similarities (Hungarian), and only where a pair is at least the
encoder's `match_similarity`: a known speaker who does not speak in the recording names
nobody, and a speaker who matches no clip keeps a letter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.diarization.embedding import embed_windows
from engine.diarization.options import KnownSpeaker
from engine.diarization.speech import speech_regions
from engine.diarization.windows import plan_windows
from engine.errors import SpeakerReferenceError
from engine.models.speaker_encoder import SpeakerEncoder

SAMPLE_RATE = 16000
MIN_REFERENCE_SPEECH_S = 1.0  # a clip with less speech than this cannot stand for a voice


def reference_voices(
    encoder: SpeakerEncoder, speakers: Sequence[KnownSpeaker], step: int, threshold_mb: float | None = None
) -> np.ndarray:
    """(len(speakers), embedding_dim): each clip's mean voice, a unit row."""
    voices = []
    for speaker in speakers:
        audio = np.asarray(speaker.audio, dtype=np.float32)
        regions = speech_regions(audio)
        if sum(end - start for start, end in regions) < MIN_REFERENCE_SPEECH_S * SAMPLE_RATE:
            raise SpeakerReferenceError(
                f"known_speaker_references: the clip for {speaker.name!r} holds less than "
                f"{MIN_REFERENCE_SPEECH_S:g} s of speech"
            )
        embeddings = embed_windows(
            encoder, audio, plan_windows(regions, encoder.window_samples, step), threshold_mb
        )
        mean = embeddings.mean(axis=0)
        voices.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.array(voices, dtype=np.float32).reshape(len(speakers), encoder.embedding_dim)


def name_speakers(
    voices: np.ndarray, references: np.ndarray, names: Sequence[str], match_similarity: float
) -> dict[int, str]:
    """{speaker index: name} for the speakers (rows of `voices`) a reference clip matches."""
    if not len(voices) or not len(references):
        return {}
    similarity = voices @ references.T
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize costs 0.16 s at import

    rows, columns = linear_sum_assignment(-similarity)
    return {int(r): names[c] for r, c in zip(rows, columns) if similarity[r, c] >= match_similarity}
