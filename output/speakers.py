"""Speakers in the downloads: their labels, their turns, and the files that name them.

A diarized result has a `speaker` on every segment and word (engine.diarization), and no
segment mixes two. Each format names speakers its own way: srt cues start "[A] ", WebVTT
wraps a cue in a voice span "<v A>...</v>", txt starts a paragraph "A: ..." at each change
of speaker, json keeps `speaker` per segment and word, and RTTM (NIST's Rich Transcription
Time Marked, what diarization is scored with) lists the turns. A result without speakers is
written exactly as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from engine.results import TranscriptionResult


@dataclass(frozen=True)
class Turn:
    start: float  # seconds from the start of the recording
    end: float
    speaker: str
    text: str  # the turn's segments' texts joined, without the leading space


def has_speakers(result: TranscriptionResult) -> bool:
    return bool(result.speakers)


def speaker_turns(result: TranscriptionResult) -> list[Turn]:
    """Runs of consecutive segments of one speaker, in order; a segment without one is skipped."""
    turns: list[Turn] = []
    for segment in result.segments:
        if not segment.speaker:
            continue
        if turns and turns[-1].speaker == segment.speaker:
            last = turns[-1]
            turns[-1] = replace(last, end=max(last.end, segment.end), text=last.text + segment.text)
        else:
            turns.append(Turn(segment.start, segment.end, segment.speaker, segment.text))
    return [replace(turn, text=turn.text.strip()) for turn in turns]


def paragraphs(result_dict: dict, turns: list[Turn]) -> dict:
    """whisper's result dict with one pseudo-segment per turn, "A: ...", for its txt writer."""
    segments = [
        {"id": i, "start": t.start, "end": t.end, "text": f"{t.speaker}: {t.text}"}
        for i, t in enumerate(turns)
    ]
    return {**result_dict, "segments": segments}


def srt_label(speaker: str) -> str:
    """What an srt cue (and a tsv row) starts with, as WhisperX's "[SPEAKER_00]: " does."""
    return f"[{speaker}] "


def vtt_voice(speaker: str, text: str) -> str:
    """A WebVTT cue's text in a voice span; ">" cannot be in the annotation, so it is dropped."""
    return f"<v {speaker.replace('>', '')}>{text}</v>"


def rttm(result: TranscriptionResult, file_id: str) -> str:
    """The speaker turns as RTTM lines: SPEAKER <file> 1 <onset> <duration> <NA> <NA> <name> <NA> <NA>.
    Fields are separated by spaces, so spaces inside a file id or a name become "_"."""
    file_id = _field(file_id) or "audio"
    lines = [
        f"SPEAKER {file_id} 1 {t.start:.3f} {max(0.0, t.end - t.start):.3f} <NA> <NA> "
        f"{_field(t.speaker)} <NA> <NA>\n"
        for t in speaker_turns(result)
    ]
    return "".join(lines)


def _field(text: str) -> str:
    return re.sub(r"\s+", "_", text.strip())
