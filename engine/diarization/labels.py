"""Speakers onto the transcript: every word labelled, every segment one speaker's.

Each word goes to the turn it overlaps most (or, falling in a pause, to the nearest turn);
a segment whose words change speaker is split there, so no segment, cue or line ever mixes
two voices. The words themselves (text, times, probability) are the transcript's, unchanged,
and a split segment's pieces hold its words in order: joined, their texts are the segment's.
Speakers named by a known speaker's clip get the name; the others are "A", "B", ... in the
order they first speak in the transcript (speakers that say no word come last).

A split piece keeps its segment's decoding statistics (temperature, avg_logprob, ...) and
seek; its `tokens` are re-encoded from its text when `encode` (the tokenizer's) is given, and
its `logprobs` are the segment's cut where the text is cut (each token knows its bytes).
Without word timings a segment cannot be split: it gets the speaker of most of its time.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from engine.diarization.turns import SpeakerTurn
from engine.results import Segment, TokenLogprob, TranscriptionResult, Word

Encode = Callable[[str], list[int]]  # text -> token ids: the job's tokenizer's `encode`


def assign_speakers(
    result: TranscriptionResult,
    turns: Sequence[SpeakerTurn],
    names: Mapping[int, str] | None = None,
    encode: Encode | None = None,
) -> TranscriptionResult:
    """`result` with `speaker` set on every segment and word, segments split where it changes."""
    if not turns:
        return result
    names = dict(names or {})
    ordered = sorted(turns, key=lambda t: t.start)
    pieces = [piece for segment in result.segments for piece in _split(segment, ordered, encode)]
    labels = speaker_labels([speaker for _, speaker, _ in pieces], {t.speaker for t in turns}, names)
    segments = []
    for index, (piece, speaker, word_speakers) in enumerate(pieces):
        words = (
            None
            if piece.words is None
            else [replace(w, speaker=labels[s]) for w, s in zip(piece.words, word_speakers)]
        )
        segments.append(replace(piece, id=index, speaker=labels[speaker], words=words))
    return replace(result, segments=segments)


def speaker_labels(order: Sequence[int], speakers: set, names: Mapping[int, str]) -> dict[int, str]:
    """{cluster: label}: names where known; letters A, B, ... for the rest by first appearance in `order`."""
    seen = list(dict.fromkeys(order)) + sorted(speakers - set(order))
    letters = iter(_letters())
    return {speaker: names[speaker] if speaker in names else next(letters) for speaker in seen}


def _letters():
    """A .. Z, then AA, AB, ...: OpenAI's labels, never running out."""
    yield from string.ascii_uppercase
    for first in string.ascii_uppercase:
        for second in string.ascii_uppercase:
            yield first + second


def speaker_at(start: float, end: float, turns: Sequence[SpeakerTurn]) -> int:
    """The speaker of most of [start, end]; in a pause, of the nearest turn."""
    best, best_overlap = None, 0.0
    for turn in turns:
        overlap = min(end, turn.end) - max(start, turn.start)
        if overlap > best_overlap:
            best, best_overlap = turn.speaker, overlap
    if best is not None:
        return best
    middle = (start + end) / 2
    return min(turns, key=lambda t: max(t.start - middle, middle - t.end, 0.0)).speaker


def _split(
    segment: Segment, turns: Sequence[SpeakerTurn], encode: Encode | None
) -> list[tuple[Segment, int, list[int]]]:
    """The segment as runs of one speaker's words: (piece, its speaker, each word's speaker)."""
    if not segment.words:
        return [(segment, speaker_at(segment.start, segment.end, turns), [])]
    runs: list[tuple[int, list[Word]]] = []
    for word in segment.words:
        speaker = speaker_at(word.start, word.end, turns)
        if runs and runs[-1][0] == speaker:
            runs[-1][1].append(word)
        else:
            runs.append((speaker, [word]))
    if len(runs) == 1:
        return [(segment, runs[0][0], [runs[0][0]] * len(segment.words))]
    texts = ["".join(w.word for w in words) for _, words in runs]
    logprobs = _cut_logprobs(segment.logprobs, texts)
    pieces = []
    for index, ((speaker, words), text) in enumerate(zip(runs, texts)):
        piece = replace(
            segment,
            start=segment.start if index == 0 else words[0].start,
            end=segment.end if index == len(runs) - 1 else words[-1].end,
            text=text,
            tokens=encode(text) if encode is not None else [],
            words=words,
            logprobs=None if logprobs is None else logprobs[index],
        )
        pieces.append((piece, speaker, [speaker] * len(words)))
    return pieces


def _cut_logprobs(logprobs: list[TokenLogprob] | None, texts: list[str]) -> list[list[TokenLogprob]] | None:
    """The tokens' logprobs in one list per text, cut where each text's UTF-8 bytes end."""
    if logprobs is None:
        return None
    ends, total = [], 0
    for text in texts:
        total += len(text.encode("utf-8"))
        ends.append(total)
    cut: list[list[TokenLogprob]] = [[] for _ in texts]
    at, piece = 0, 0
    for token in logprobs:
        while piece < len(ends) - 1 and at >= ends[piece]:
            piece += 1
        cut[piece].append(token)
        at += len(token.bytes)
    return cut
