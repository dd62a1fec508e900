"""Multi-speaker recordings built from ../shared/audio, with the reference of who speaks when.

No recording of several people talking ships with the project's audio, so conversations are
assembled from single-speaker clips: LJSpeech (one woman), three LibriSpeech readers (1089, a
man; 1995 and 2412, women) and JFK. Each speaker's clips are cut into *phrases* at their
pauses (Silero, pauses of 0.3 s and more), brought to one loudness, and laid end to end
in turns; each phrase is one reference span of its speaker. Between turns there is a pause
of 0.2-0.8 s; at 30 % of the changes less than 0.2 s (the next speaker starts without a
pause the detector can hear, so one speech region holds both); at 15 % (meeting) or 10 %
(exchange) an overlap of 0.3-1 s, two voices at once (scored: a diarizer that gives one
speaker at a time misses the other).

- **meeting**: five speakers, turns of 2-10 s (and LJSpeech's 8-30 s), about three minutes;
  each speaker's phrases are used in order and again from the start when they run out
  (LibriSpeech and JFK have 9-21 s each). Two speakers are *known*: an enrolment clip of each
  that the meeting never uses (LJSpeech's LJ050-0240 and LibriSpeech 1089-134686-0000).
- **exchange**: two speakers (LJSpeech and LibriSpeech 2412, both women) alternating in
  turns of 1-3 s, a phrase cut at its quietest 20 ms where it is longer, about a minute.

What this leaves easier than a real meeting: each speaker comes from a different recording,
so the room and microphone differ with the voice; the reference spans come from the same
detector (Silero) that the diarizer uses, so missed and false speech are lower than against
a human's marks. The collar forgives the edges either way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.audio.files import SAMPLE_RATE, load_audio
from engine.audio.vad import VadOptions, speech_map

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
LIBRISPEECH = SHARED_AUDIO / "librispeech"
LJSPEECH = SHARED_AUDIO / "ljspeech" / "wavs"
TARGET_RMS = 0.05  # every phrase at one loudness, so the level never tells speakers apart
PHRASE_VAD = VadOptions(threshold=0.5, min_silence_s=0.3, speech_pad_s=0.05)
SEED = 21  # the number: the recordings are the same on every run
OVERLAP_S = (0.3, 1.0)  # two voices at once where a turn starts before the last one ends
TIGHT_SHARE = 0.3  # turn changes with no pause the detector can hear (under its 0.25 s) ...
TIGHT_GAP_S = (0.0, 0.2)  # ... this long
GAP_S = (0.2, 0.8)  # the other turn changes' pauses
OWN_PAUSE_S = (0.15, 0.35)  # between one speaker's phrases in a turn

LJ_MEETING = [f"LJ050-{n:04d}" for n in range(159, 200)]  # 41 clips, ~4.5 minutes to take turns from
LJ_EXCHANGE = [f"LJ050-{n:04d}" for n in range(200, 215)]
LJ_ENROLMENT = "LJ050-0240"  # 2-10 s, never used in a conversation
L1089_ENROLMENT = "1089-134686-0000"
SOURCES: dict[str, list[Path]] = {
    "lj": [LJSPEECH / f"{clip}.wav" for clip in LJ_MEETING],
    "1089": [LIBRISPEECH / f"{u}.flac" for u in ("1089-134686-0001", "1089-134691-0000", "1089-134691-0001")],
    "1995": [LIBRISPEECH / "1995-1837-0001.wav"],
    "2412": [LIBRISPEECH / "2412-153948-0000.flac"],
    "jfk": [SHARED_AUDIO / "jfk" / "jfk.wav"],
}
ENROLMENT_S = 9.5  # at most: OpenAI's references are 2-10 s (1089-134686-0000 is 10.4 s)
ENROLMENT = {"lj": LJSPEECH / f"{LJ_ENROLMENT}.wav", "1089": LIBRISPEECH / f"{L1089_ENROLMENT}.flac"}


@dataclass(frozen=True)
class Span:
    start: float  # seconds
    end: float
    speaker: str


@dataclass(frozen=True)
class Conversation:
    name: str
    audio: np.ndarray  # float32, 16 kHz, mono
    reference: tuple[Span, ...]  # who speaks when; spans of two speakers overlap where they talk at once
    enrolment: dict[str, np.ndarray]  # known speakers' clips, never heard in `audio`

    @property
    def speakers(self) -> list[str]:
        return sorted({span.speaker for span in self.reference})

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def available() -> bool:
    return (
        all(path.is_file() for paths in SOURCES.values() for path in paths)
        and all(path.is_file() for path in ENROLMENT.values())
        and all((LJSPEECH / f"{clip}.wav").is_file() for clip in LJ_EXCHANGE)
    )


def _level(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    return (audio * (TARGET_RMS / rms)).astype(np.float32)


@functools.cache
def _phrases_of(paths: tuple[Path, ...]) -> tuple[np.ndarray, ...]:
    """The clips' phrases, in order; one detector run over all of them (one call per clip
    would step the network through each clip alone, ten times slower on two cores)."""
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    audio = np.concatenate([part for path in paths for part in (load_audio(path), gap)])
    return tuple(_level(audio[start:end]) for start, end in speech_map(audio, PHRASE_VAD).chunks)


def phrases(paths: Sequence[Path]) -> list[np.ndarray]:
    return list(_phrases_of(tuple(paths)))


def _cut_short(phrase: np.ndarray, shortest: float, longest: float) -> list[np.ndarray]:
    """A phrase in pieces of `shortest`-`longest` s, each cut at the quietest 20 ms in reach."""
    frame = SAMPLE_RATE // 50
    pieces = []
    while len(phrase) > longest * SAMPLE_RATE:
        low, high = int(shortest * SAMPLE_RATE) // frame, int(longest * SAMPLE_RATE) // frame
        energy = [float(np.sum(phrase[i * frame : (i + 1) * frame] ** 2)) for i in range(low, high)]
        cut = (low + int(np.argmin(energy))) * frame + frame // 2
        pieces.append(phrase[:cut])
        phrase = phrase[cut:]
    if len(phrase) >= 0.3 * SAMPLE_RATE:
        pieces.append(phrase)
    return pieces


class _Speaker:
    """A speaker's phrases, handed out in order and again from the start when they run out."""

    def __init__(self, name: str, items: list[np.ndarray]):
        self.name, self.items, self.next = name, items, 0

    def take(self, seconds: float) -> list[np.ndarray]:
        taken, total = [], 0.0
        while total < seconds or not taken:
            item = self.items[self.next % len(self.items)]
            self.next += 1
            taken.append(item)
            total += len(item) / SAMPLE_RATE
        return taken


def _lay_out(
    name: str,
    turns: list[tuple[str, list[np.ndarray]]],
    rng: np.random.Generator,
    overlap_share: float,
    enrolment: dict[str, np.ndarray],
) -> Conversation:
    """Turns end to end; between two turns an overlap (`overlap_share` of the changes), no pause to
    speak of (`TIGHT_SHARE`), or a pause; a short pause between a turn's own phrases."""
    placed: list[tuple[int, np.ndarray, str]] = []
    at = int(0.5 * SAMPLE_RATE)
    for index, (speaker, items) in enumerate(turns):
        if index:
            draw = rng.random()
            if draw < overlap_share:
                at -= int(rng.uniform(*OVERLAP_S) * SAMPLE_RATE)
            elif draw < overlap_share + TIGHT_SHARE:
                at += int(rng.uniform(*TIGHT_GAP_S) * SAMPLE_RATE)
            else:
                at += int(rng.uniform(*GAP_S) * SAMPLE_RATE)
        for number, item in enumerate(items):
            if number:
                at += int(rng.uniform(*OWN_PAUSE_S) * SAMPLE_RATE)
            placed.append((max(at, 0), item, speaker))
            at = max(at, 0) + len(item)
    audio = np.zeros(at + SAMPLE_RATE // 2, dtype=np.float32)
    for start, item, _ in placed:
        audio[start : start + len(item)] += item
    reference = tuple(
        Span(start / SAMPLE_RATE, (start + len(item)) / SAMPLE_RATE, speaker)
        for start, item, speaker in placed
    )
    return Conversation(name, audio, reference, enrolment)


def meeting() -> Conversation:
    """Five speakers, turns of a few seconds to tens of seconds, two of them known by a clip."""
    rng = np.random.default_rng(SEED)
    speakers = {name: _Speaker(name, phrases(paths)) for name, paths in SOURCES.items()}
    turns, last = [], None
    for _ in range(26):
        name = str(rng.choice([n for n in speakers if n != last]))
        seconds = rng.uniform(8, 30) if name == "lj" else rng.uniform(2, 10)
        turns.append((name, speakers[name].take(seconds)))
        last = name
    enrolment = {name: load_audio(path)[: int(ENROLMENT_S * SAMPLE_RATE)] for name, path in ENROLMENT.items()}
    return _lay_out("meeting", turns, rng, overlap_share=0.15, enrolment=enrolment)


def _exchange(name: str, other: str, clips: Sequence[Path], seed: int) -> Conversation:
    """LJSpeech and `other` taking turns of 1-3 s."""
    rng = np.random.default_rng(seed)
    lj = [
        p
        for phrase in phrases([LJSPEECH / f"{clip}.wav" for clip in LJ_EXCHANGE])
        for p in _cut_short(phrase, 1.0, 3.0)
    ]
    theirs = [p for phrase in phrases(clips) for p in _cut_short(phrase, 1.0, 3.0)]
    speakers = [_Speaker("lj", lj), _Speaker(other, theirs)]
    turns = [(speakers[i % 2].name, speakers[i % 2].take(0.0)) for i in range(40)]
    return _lay_out(name, turns, rng, overlap_share=0.1, enrolment={})


def exchange() -> Conversation:
    """Two women taking turns of 1-3 s: LJSpeech and LibriSpeech 2412."""
    return _exchange("exchange", "2412", SOURCES["2412"], SEED + 1)


def exchange_close() -> Conversation:
    """The same with LibriSpeech 1995, the voice GE2E finds closest to LJSpeech's (window cosine 0.51
    against 0.46 for 2412); 1995's 8.7 s are heard about five times over. No target: a harder case."""
    return _exchange("exchange-close", "1995", SOURCES["1995"], SEED + 2)


CONVERSATIONS = {"meeting": meeting, "exchange": exchange, "exchange-close": exchange_close}
