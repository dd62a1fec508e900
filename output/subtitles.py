"""Subtitle cues that fit a screen: short lines, few of them, a few seconds each.

Whisper's segments make poor subtitles: a segment is whatever the model wrote between two
timestamps, often 90 characters or more on one line and sometimes longer than 7 s, and it
starts wherever the previous one stopped, often mid-sentence. Whisper's own writer options
(`max_line_width` + `max_line_count`) reflow the words across segments into lines of a
given width, but they have no cap on a cue's duration and cut wherever a line fills up, not
at the end of a sentence (see `whisper.utils.SubtitlesWriter.iterate_result`).

`make_cues` lays the words of a result out again:

- every cue has at most `max_lines` lines of at most `max_line_width` characters and lasts
  at most `max_cue_s` seconds; lines and cues are only ever cut between words;
- among the layouts that respect those limits it takes the cheapest (dynamic programming
  over the whole transcript): cues end at sentence ends (". ? ! …", "。？！") and pauses
  (>= PAUSE_S) where they can, else at clause ends (", ; :") or whisper's segment ends, else
  at the longest pause inside; short sentences share a cue, and a tiny orphan ("it.") left
  by a forced cut costs more than two balanced halves, and so does a cue cut mid-sentence
  (not at a pause) that would be on screen for less than MIN_FRAGMENT_S;
- lines within a cue are balanced (two lines of 30 rather than 42 and 18), preferring a
  line break after punctuation;
- times come from the word timings: a cue starts with its first word and ends with its
  last, never after the next cue starts and never more than `max_cue_s` after its own start
  (a single word whisper timed longer than that is clamped);
- a single word longer than `max_line_width` (a URL, a long compound) gets a line of its
  own, the one case where a line is wider than the limit: words are never cut.

Without word timestamps (`Segment.words` is None, e.g. the engine's default), each
segment's words are given times interpolated across the segment by character count: every
limit still holds, but the times are approximate (exact with word timestamps). Languages
written without spaces (Chinese, Japanese, Thai, Lao, Burmese, Cantonese) are split per
character then, as whisper itself splits them for word timings.

The cues go to whisper's own srt/vtt writers as pseudo-segments (`as_segments`), so file
format, timestamps and escaping stay whisper's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from engine.results import TranscriptionResult

PAUSE_S = 1.0  # a silence this long between two words is as good a place to cut a cue as a sentence end
MIN_CUE_S = 0.5  # a cue whose words take less is shown this long, if the next cue starts later
MIN_FRAGMENT_S = 1.8  # a cue that ends mid-sentence sooner than this is gone before it is read
NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue")  # whisper's list: words are split per character

_CLOSERS = "'\"”’)]}»」』】〉》"
SENTENCE_END = re.compile(rf"[.?!…。？！][{re.escape(_CLOSERS)}]*$")
CLAUSE_END = re.compile(rf"[,;:，、；：—–][{re.escape(_CLOSERS)}]*$")

# Costs of a layout (lower is better); only their order and rough ratios matter.
CUE_COST = 1.0  # each cue: prefer fewer, fuller cues, so short sentences share one
CLAUSE_BREAK_COST = 2.0  # a cue ends at ", ; :"
SEGMENT_BREAK_COST = 3.0  # ... at the end of a whisper segment without punctuation
WORD_BREAK_COST = 6.0  # ... between two words mid-sentence (less the longer the pause there)
SHORT_CUE_COST = 2.0  # a cue with no text at all; falls to 0 at half a line
# per PAUSE_S of each pause >= PAUSE_S inside a cue: more than a cue costs, so cues split there
INNER_PAUSE_COST = 1.5
STRADDLE_COST = 2.0  # a cue that ends one sentence, starts the next and stops in its middle
# a cue shorter than MIN_FRAGMENT_S cut mid-sentence without a pause ("The Commission recommends")
FRAGMENT_COST = 4.0
# a line break after punctuation may leave lines this fraction of the width less even
PUNCTUATION_LINE_BONUS = 0.25


@dataclass(frozen=True)
class SubtitleOptions:
    """How srt and vtt files are laid out (settings `subtitle_*`)."""

    # characters per line; only a single longer word exceeds it, on a line of its own
    max_line_width: int = 42
    max_lines: int = 2  # lines per cue
    max_cue_s: float = 7.0  # longest time one cue stays on screen, in seconds
    per_segment: bool = False  # true = whisper's plain layout: one cue per segment, one line, no limits

    def __post_init__(self):
        if not (isinstance(self.max_line_width, int) and self.max_line_width > 0):
            raise ValueError(f"max_line_width: must be a whole number > 0, got {self.max_line_width!r}")
        if not (isinstance(self.max_lines, int) and self.max_lines > 0):
            raise ValueError(f"max_lines: must be a whole number > 0, got {self.max_lines!r}")
        if not self.max_cue_s > 0:
            raise ValueError(f"max_cue_s: must be > 0 seconds, got {self.max_cue_s!r}")

    @classmethod
    def from_settings(cls, settings) -> SubtitleOptions:
        """The options a `Settings` object configures (its `subtitle_*` keys)."""
        return cls(
            max_line_width=settings.subtitle_max_line_width,
            max_lines=settings.subtitle_max_lines,
            max_cue_s=settings.subtitle_max_cue_s,
            per_segment=settings.subtitle_per_segment,
        )


@dataclass(frozen=True)
class Cue:
    start: float  # seconds from the start of the recording
    end: float
    lines: tuple[str, ...]  # the text, one string per line, no surrounding spaces

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class _Word:
    text: str  # as whisper writes it: with its leading space in languages that use spaces
    start: float
    end: float
    segment_end: bool  # the last word of a whisper segment


def make_cues(result: TranscriptionResult, options: SubtitleOptions = SubtitleOptions()) -> list[Cue]:
    """The result's words laid out as subtitle cues within `options`' limits (see the module's doc)."""
    words = _words(result)
    if not words:
        return []
    cuts = _best_cuts(words, options)
    spans = list(zip([0, *cuts], [*cuts, len(words)]))
    starts = [words[first].start for first, _ in spans]
    for k in range(1, len(starts)):  # word timings can step back a little across segments
        starts[k] = max(starts[k], starts[k - 1])
    cues = []
    for k, (first, stop) in enumerate(spans):
        start = starts[k]
        next_start = starts[k + 1] if k + 1 < len(starts) else float("inf")
        end = max(max(w.end for w in words[first:stop]), start + MIN_CUE_S)
        end = max(start, min(end, start + options.max_cue_s, next_start))
        texts = [w.text for w in words[first:stop]]
        cues.append(Cue(start, end, tuple(wrap_lines(texts, options.max_line_width))))
    return cues


def as_segments(cues: Sequence[Cue]) -> list[dict]:
    """Cues as the segments whisper's srt/vtt writers read: one cue each, lines joined by "\\n".

    No "words" key, so the writers keep each one as it is (and turn "-->" into "->")."""
    return [{"id": i, "start": cue.start, "end": cue.end, "text": cue.text} for i, cue in enumerate(cues)]


def wrap_lines(texts: Sequence[str], width: int) -> list[str]:
    """Words (with their leading spaces) as the fewest lines of at most `width` characters,
    balanced: the widest line as short as it can be, where a line break that does not follow
    punctuation counts as PUNCTUATION_LINE_BONUS * width characters more. A word longer than
    `width` gets a line of its own. (make_cues only hands it words that fit its line count.)"""
    if not texts:
        return []
    count = _greedy_line_count(texts, width)
    if count == 1:
        return [_line(texts)]
    n = len(texts)
    bonus = PUNCTUATION_LINE_BONUS * width
    after_punctuation = [bool(SENTENCE_END.search(t) or CLAUSE_END.search(t)) for t in texts]
    inf = float("inf")
    # best[k][j][c]: (widest line, line starts) laying texts[:j] out as k lines, c breaks not after
    # punctuation
    best = [[[(inf, ())] * count for _ in range(n + 1)] for _ in range(count + 1)]
    best[0][0][0] = (0, ())
    for k in range(1, count + 1):
        for j in range(k, n + 1):
            plain_break = 0 if k == count or after_punctuation[j - 1] else 1
            for i in range(k - 1, j):
                length = len(_line(texts[i:j]))
                if length > width and j - i > 1:
                    continue
                for c in range(k):
                    widest, starts = best[k - 1][i][c]
                    if widest == inf or c + plain_break >= count:
                        continue
                    candidate = (max(widest, length), starts + (i,))
                    if candidate[0] < best[k][j][c + plain_break][0]:
                        best[k][j][c + plain_break] = candidate
    widest, starts = min((best[count][n][c][0] + bonus * c, best[count][n][c][1]) for c in range(count))
    if widest == inf:  # cannot happen (greedy found `count` lines), but never lose words
        return _greedy_lines(texts, width)
    return [_line(texts[a:b]) for a, b in zip(starts, [*starts[1:], n])]


# --- words ---------------------------------------------------------------------------------------------
def _words(result: TranscriptionResult) -> list[_Word]:
    """Every word of the result with its times; interpolated where a segment has no word timings."""
    no_spaces = result.language in NO_SPACE_LANGUAGES
    words: list[_Word] = []
    for segment in result.segments:
        if segment.words:
            timed = [(w.word, w.start, w.end) for w in segment.words if w.word.strip()]
        else:
            timed = _interpolated(segment.text, segment.start, segment.end, no_spaces)
        for k, (text, start, end) in enumerate(timed):
            words.append(_Word(text, float(start), float(max(end, start)), segment_end=k == len(timed) - 1))
    return words


def _interpolated(text: str, start: float, end: float, no_spaces: bool) -> list[tuple[str, float, float]]:
    """The segment's words, its time shared out by character count (approximate, not measured)."""
    pieces = _split_no_spaces(text) if no_spaces else re.findall(r"\s*\S+", text)
    total = sum(len(p.strip()) for p in pieces)
    if not total:
        return []
    duration, done, timed = max(0.0, end - start), 0, []
    for piece in pieces:
        # a tab or newline in the text is a space on screen
        piece = " " + piece.strip() if piece[0].isspace() else piece
        begin = start + duration * done / total
        done += len(piece.strip())
        timed.append((piece, begin, start + duration * done / total))
    return timed


def _split_no_spaces(text: str) -> list[str]:
    """Characters, each with the spaces before it; punctuation stays with the character before it."""
    pieces: list[str] = []
    for piece in re.findall(r"\s*\S", text):
        if pieces and unicodedata.category(piece[-1]).startswith("P") and not piece[0].isspace():
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return pieces


# --- cues ----------------------------------------------------------------------------------------------
def _best_cuts(words: Sequence[_Word], options: SubtitleOptions) -> list[int]:
    """Indices where cues start (the first, 0, left out): the cheapest layout within the limits."""
    n = len(words)
    half_line = options.max_line_width / 2
    gaps = [max(0.0, words[i + 1].start - words[i].end) for i in range(n - 1)] + [0.0]
    # [i]: seconds of pauses >= PAUSE_S, sentence ends, after words[:i]
    pauses_before, ends_before = [0.0], [0]
    for word, gap in zip(words, gaps):
        pauses_before.append(pauses_before[-1] + (gap if gap >= PAUSE_S else 0.0))
        ends_before.append(ends_before[-1] + bool(SENTENCE_END.search(word.text)))
    cut_cost = [_cut_cost(words[i], gaps[i]) for i in range(n - 1)] + [0.0]

    best = [0.0] + [float("inf")] * n  # best[i]: cheapest layout of words[:i]
    back = [0] * (n + 1)
    for first in range(n):
        if best[first] == float("inf"):
            continue
        line_len, lines, latest_end, chars = 0, 1, words[first].end, 0
        for last in range(first, n):
            text = words[last].text
            latest_end = max(latest_end, words[last].end)
            if last > first:  # does the cue words[first:last + 1] still fit?
                if line_len + len(text) > options.max_line_width:
                    lines, line_len = lines + 1, len(text.strip())
                else:
                    line_len += len(text)
                if lines > options.max_lines or latest_end - words[first].start > options.max_cue_s:
                    break
            else:
                line_len = len(text.strip())
            chars += len(text.strip())
            inner_pauses = pauses_before[last] - pauses_before[first]  # after words[first:last]
            straddles = cut_cost[last] > 0 and ends_before[last] > ends_before[first]
            fragment = (
                last + 1 < n
                and latest_end - words[first].start < MIN_FRAGMENT_S
                and gaps[last] < PAUSE_S
                and not SENTENCE_END.search(text)
            )
            cost = (
                best[first]
                + CUE_COST
                + cut_cost[last]
                + INNER_PAUSE_COST * inner_pauses / PAUSE_S
                + STRADDLE_COST * straddles
                + SHORT_CUE_COST * max(0.0, 1 - chars / half_line)
                + FRAGMENT_COST * fragment
            )
            if cost < best[last + 1]:
                best[last + 1], back[last + 1] = cost, first
    cuts, i = [], n
    while i > 0:
        i = back[i]
        if i:
            cuts.append(i)
    return cuts[::-1]


def _cut_cost(word: _Word, gap: float) -> float:
    """What it costs to end a cue after `word`, followed by `gap` seconds of silence."""
    if gap >= PAUSE_S or SENTENCE_END.search(word.text):
        return 0.0
    by_pause = WORD_BREAK_COST * (1 - gap / PAUSE_S)  # the longer the pause, the better the place
    if CLAUSE_END.search(word.text):
        return min(CLAUSE_BREAK_COST, by_pause)
    if word.segment_end:
        return min(SEGMENT_BREAK_COST, by_pause)
    return by_pause


# --- lines ---------------------------------------------------------------------------------------------
def _line(texts: Sequence[str]) -> str:
    return "".join(texts).strip()


def _greedy_lines(texts: Sequence[str], width: int) -> list[str]:
    lines: list[list[str]] = [[]]
    for text in texts:
        if lines[-1] and len(_line(lines[-1])) + len(text) > width:
            lines.append([])
        lines[-1].append(text)
    return [_line(line) for line in lines]


def _greedy_line_count(texts: Sequence[str], width: int) -> int:
    return len(_greedy_lines(texts, width))
