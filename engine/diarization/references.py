"""Known speakers' reference clips as a durable job carries them.

A job's options are stored as JSON in its row and read back when it runs, possibly after a
restart or on another replica sharing the PostgreSQL queue. So a clip travels *in* the
options, decoded once at the boundary to 16 kHz mono and kept as 16-bit PCM in base64:
10 s is 427 kB of JSON, at most four clips, and nothing beside the recording has to be moved,
found again or deleted with the job (retention deletes the row, and the clips with it).
16-bit samples lose nothing a speaker encoder hears (its mel front end floors far above).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from engine.diarization.options import KnownSpeaker
from engine.errors import SpeakerReferenceError

PCM_SCALE = 32767  # float samples in [-1, 1] as 16-bit integers


@dataclass(frozen=True)
class SpeakerReference:
    name: str  # the label this speaker's turns get instead of a letter
    pcm: str = field(repr=False)  # the clip: 16 kHz mono, 16-bit little-endian PCM, base64

    @classmethod
    def from_audio(cls, name: str, audio: np.ndarray) -> SpeakerReference:
        """A clip from float32 samples (16 kHz mono, as `engine.load_audio` gives them)."""
        samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
        pcm = (samples * PCM_SCALE).round().astype("<i2").tobytes()
        return cls(name, base64.b64encode(pcm).decode("ascii"))

    def audio(self) -> np.ndarray:
        """The clip as float32 samples, 16 kHz mono."""
        try:
            raw = base64.b64decode(self.pcm, validate=True)
        except ValueError:
            raise SpeakerReferenceError(
                f"known_speaker_references: the clip for {self.name!r} is not base64 PCM"
            ) from None
        return np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float32) / PCM_SCALE

    def known_speaker(self) -> KnownSpeaker:
        return KnownSpeaker(self.name, self.audio())
