"""What a job asks of diarization: how many speakers, and whose voices are known by name."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import InvalidRequest, SpeakerReferenceError

SAMPLE_RATE = 16000
MAX_SPEAKERS = 20  # the most speakers clustering looks for when not told: more is rarely one recording
MIN_REFERENCE_S = 2.0  # OpenAI's bounds for known_speaker_references[]: shorter clips say too little
MAX_REFERENCE_S = 10.0
MAX_KNOWN_SPEAKERS = 4  # OpenAI's limit on known_speaker_names[]


@dataclass(frozen=True)
class KnownSpeaker:
    name: str  # the label this speaker's turns get instead of a letter
    audio: np.ndarray = field(repr=False, compare=False)  # 2-10 s of them speaking: float32, 16 kHz, mono


@dataclass(frozen=True)
class DiarizationOptions:
    num_speakers: int | None = None  # exactly this many speakers (None: estimated)
    min_speakers: int | None = None  # at least this many when estimating (None: 1)
    max_speakers: int | None = None  # at most this many when estimating (None: MAX_SPEAKERS)
    known_speakers: tuple[KnownSpeaker, ...] = ()  # voices to label by name; the others keep letters

    def __post_init__(self):
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise InvalidRequest(f"{name}: must be a whole number, got {value!r}")
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise InvalidRequest(f"{name}: must be between 1 and {MAX_SPEAKERS}, got {value}")
        if self.num_speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise InvalidRequest(
                "num_speakers: give either num_speakers or min_speakers / max_speakers, not both"
            )
        if (
            self.min_speakers is not None
            and self.max_speakers is not None
            and self.min_speakers > self.max_speakers
        ):
            raise InvalidRequest(
                f"min_speakers: {self.min_speakers} is more than max_speakers ({self.max_speakers})"
            )
        check_known_speakers(self.known_speakers)
        most = self.num_speakers or self.max_speakers
        if most is not None and len(self.known_speakers) > most:
            raise SpeakerReferenceError(
                f"known_speaker_names: {len(self.known_speakers)} known speakers but at "
                f"most {most} speakers asked for"
            )

    @property
    def speaker_range(self) -> tuple[int, int]:
        """(fewest, most) speakers clustering may find."""
        if self.num_speakers is not None:
            return self.num_speakers, self.num_speakers
        return self.min_speakers or 1, self.max_speakers or MAX_SPEAKERS


def check_known_speakers(speakers: tuple[KnownSpeaker, ...]) -> None:
    """Refuse references that cannot identify anyone, before any audio is decoded."""
    if len(speakers) > MAX_KNOWN_SPEAKERS:
        raise SpeakerReferenceError(
            f"known_speaker_names: at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(speakers)}"
        )
    names = [speaker.name for speaker in speakers]
    if any(not isinstance(name, str) or not name.strip() for name in names):
        raise SpeakerReferenceError("known_speaker_names: every known speaker needs a non-empty name")
    if len(set(names)) != len(names):
        raise SpeakerReferenceError("known_speaker_names: each name may appear once")
    for speaker in speakers:
        seconds = len(speaker.audio) / SAMPLE_RATE
        if not MIN_REFERENCE_S <= seconds <= MAX_REFERENCE_S:
            raise SpeakerReferenceError(
                f"known_speaker_references: the clip for {speaker.name!r} is {seconds:.1f} "
                f"s long; it must be {MIN_REFERENCE_S:g} to {MAX_REFERENCE_S:g} s of speech"
            )
