"""What the page shows of a job: pure functions of its result (or its handle), no Gradio, no state.

The transcript box's text, the clickable segments view, the details line under them and a
refusal's notice under the Transcribe button. Every text that comes from outside (the
transcript, speakers' names, file names in messages) is escaped where it goes into HTML.

A diarized result shows its speakers: the transcript box names the speaker of each line (a
paragraph per turn without timestamps, as the txt download), and the segments view groups
each turn under its speaker's label, in the speaker's colour: `speaker-N`, N the speaker's
place in order of first speech, cycling through SPEAKER_COLOURS palettes that assets/app.css
defines for light and dark themes. A renamed speaker keeps its colour.
"""

from __future__ import annotations

import html
from itertools import groupby

from engine import JobHandle, Segment, TranscriptionResult

SPEAKER_COLOURS = 8  # .speaker-0 ... .speaker-7 in assets/app.css


def format_timestamp(seconds: float) -> str:
    """00:01.500, or 1:02:03.250 past an hour (whisper's own style)."""
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    clock = f"{minutes:02d}:{secs:02d}.{millis:03d}"
    return f"{hours}:{clock}" if hours else clock


def transcript_text(result: TranscriptionResult, timestamps: bool) -> str:
    """The transcript box: one line per segment with its times, or the plain text; with
    speakers, each line starts with its speaker, and the plain text is a paragraph per turn."""
    if not timestamps:
        if not result.speakers:
            return result.text
        return "\n\n".join(
            f"{speaker}: {''.join(s.text for s in turn).strip()}" for speaker, turn in _turns(result)
        )
    return "\n".join(
        f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}]  "
        + (f"{s.speaker}: " if s.speaker else "")
        + s.text.strip()
        for s in result.segments
    )


def _turns(result: TranscriptionResult) -> list[tuple[str | None, list[Segment]]]:
    """Runs of consecutive segments of one speaker (None without diarization)."""
    return [(speaker, list(run)) for speaker, run in groupby(result.segments, key=lambda s: s.speaker)]


def speaker_colours(result: TranscriptionResult) -> dict[str, int]:
    """Each speaker's colour: its place in order of first speech, over SPEAKER_COLOURS."""
    return {speaker: n % SPEAKER_COLOURS for n, speaker in enumerate(result.speakers)}


def clock(seconds: float) -> str:
    """[00:01:23]: a segment's start, to the second, as the segments view shows it."""
    whole = int(max(0.0, seconds))
    return f"[{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}]"


def word_time(seconds: float) -> str:
    """A word's start under it: 5.1, 1:05.1 past a minute, 1:02:03.4 past an hour."""
    tenths = int(round(max(0.0, seconds) * 10))
    minutes, tenths = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    secs = f"{tenths // 10}.{tenths % 10}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:0>4}"
    return f"{minutes}:{secs:0>4}" if minutes else secs


def segments_html(result: TranscriptionResult | None) -> str:
    """The transcript as clickable segments: each with its start time, and, with word
    timestamps, each word with its own time under it; with speakers, each turn's segments in
    a block under its speaker's label (`turn speaker-N`). Every element carries its start in
    `data-start`; the page's script (ui/page/scripts.py SEEK_JS) plays the recording from
    there on a click. All text is escaped: transcripts are user content."""
    if result is None:
        return ""
    if not result.segments:
        return '<div class="segments segments-empty">No speech detected.</div>'
    colours = speaker_colours(result)
    blocks = []
    for speaker, turn in _turns(result):
        rows = "".join(_segment_row(segment) for segment in turn)
        if speaker is None:
            blocks.append(rows)
            continue
        name = html.escape(speaker)
        blocks.append(
            f'<div class="turn speaker-{colours[speaker]}" data-speaker="{html.escape(speaker, quote=True)}">'
            f'<span class="speaker-label">{name}</span>{rows}</div>'
        )
    hint = (
        "Click a segment"
        + (" or a word" if any(s.words for s in result.segments) else "")
        + " to play the recording from there."
    )
    return f'<div class="segments"><div class="segments-hint">{hint}</div>{"".join(blocks)}</div>'


def _segment_row(segment: Segment) -> str:
    """One clickable segment: its start, then its text (each word with its time, where it has words)."""
    if segment.words:
        text = "".join(
            f'<span class="word" data-start="{w.start:.3f}" title="{format_timestamp(w.start)} – '
            f'{format_timestamp(w.end)}"><span class="word-text">{html.escape(w.word.strip())}</span>'
            f'<span class="word-time">{word_time(w.start)}</span></span> '
            for w in segment.words
            if w.word.strip()
        )
    else:
        text = html.escape(segment.text.strip())
    return (
        f'<div class="segment" data-start="{segment.start:.3f}" tabindex="0" role="button" '
        f'title="Play from {format_timestamp(segment.start)}">'
        f'<span class="segment-time">{clock(segment.start)}</span> '
        f'<span class="segment-text">{text.rstrip()}</span></div>'
    )


def details_markdown(result: TranscriptionResult, model_label: str) -> str:
    speed = result.duration / result.processing_s if result.processing_s > 0 else 0.0
    facts = [
        f"Language: **{result.language or 'unknown'}**",
        f"{result.duration:.1f} s of audio",
        f"done in {result.processing_s:.1f} s ({speed:.1f}× real time)",
        f"model {model_label}",
        f"{len(result.segments)} segment{'s' if len(result.segments) != 1 else ''}",
    ]
    if result.speakers:
        speakers = len(result.speakers)
        facts.append(f"{speakers} speaker{'s' if speakers != 1 else ''}")
    line = " · ".join(facts)
    return line if result.segments else line + "\n\n**No speech detected.**"


def cancelled_markdown(handle: JobHandle | None) -> str:
    """The details line of a cancelled job."""
    line = "**Cancelled.** The transcription was stopped"
    if handle is not None and handle.seconds_total:
        line += f" after {handle.seconds_done:.0f} of {handle.seconds_total:.0f} s of audio"
    elif handle is None or handle.started_at is None:
        line += " before it started"
    return line + "; nothing was kept. Press **Transcribe** to start again."


def notice_html(title: str, message: str) -> str:
    """A refusal as the page shows it under the Transcribe button (escaped: messages carry
    file names)."""
    return (
        f'<div class="transcribe-notice notice-error" role="alert">'
        f"<strong>{html.escape(title)}.</strong> {html.escape(message)}</div>"
    )
