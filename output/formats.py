"""Transcripts as txt, srt, vtt, tsv and json, written by openai-whisper's own writers, and rttm.

The writers (`whisper.utils.get_writer`) are the ones the `whisper` command line uses, so
file format, timestamps and escaping are whisper's, not a second implementation to keep in
step. What goes into srt and vtt is laid out first (output.subtitles): cues of at most
`SubtitleOptions.max_lines` lines of `max_line_width` characters and `max_cue_s` seconds,
cut at sentence ends and pauses, handed to the writers as one pseudo-segment per cue.
`SubtitleOptions(per_segment=True)` gives whisper's plain files instead: one cue per
segment, byte for byte what `whisper audio.mp3 --output_format srt` (no word timestamps)
writes for the result. Whisper's own word options (`max_line_width=...`), when a caller
passes them, give whisper's own layout, as its command line does.

A diarized result names its speakers in every format (output.speakers): what goes to the
writers carries the labels, so the files are still whisper's. `rttm` (the speaker turns) is
offered for such a result only; without speakers every file is byte for byte as before.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from whisper.utils import get_writer

from engine.results import TranscriptionResult
from output.speakers import has_speakers, paragraphs, rttm, speaker_turns, srt_label, vtt_voice
from output.subtitles import SubtitleOptions, as_segments, make_cues

FORMATS = ("txt", "srt", "vtt", "tsv", "json")  # every transcript's files
SPEAKER_FORMATS = ("rttm",)  # a diarized transcript's files besides them
ALL_FORMATS = FORMATS + SPEAKER_FORMATS
SUBTITLE_FORMATS = ("srt", "vtt")  # the only writers that read the word-level options
DEFAULT_BASENAME = "transcript"
MAX_BASENAME_CHARS = 120  # leaves room for the extension within the usual 255-byte file name limit


def render(
    result: TranscriptionResult,
    fmt: str,
    *,
    max_line_width: int | None = None,
    max_line_count: int | None = None,
    highlight_words: bool = False,
    max_words_per_line: int | None = None,
    subtitles: SubtitleOptions | None = None,
    file_id: str = DEFAULT_BASENAME,
) -> str:
    """The transcript as text in one of ALL_FORMATS (`file_id`: the recording's name in rttm).

    `subtitles` lays out srt and vtt (None = SubtitleOptions(), the settings' defaults; the
    app passes `settings.subtitles`). The four other keyword options
    are whisper's own (`--max_line_width` and so on): given, they replace that layout with
    whisper's, which reflows words only when every segment carries word timings
    (`Segment.words`) and otherwise follows the segments; `max_line_count` takes effect
    only together with `max_line_width`.
    """
    fmt = _check_format(fmt)
    buffer = io.StringIO()
    _write(
        result,
        fmt,
        buffer,
        _writer_options(max_line_width, max_line_count, highlight_words, max_words_per_line),
        subtitles or SubtitleOptions(),
        file_id,
    )
    return buffer.getvalue()


def write_files(
    result: TranscriptionResult,
    out_dir,
    basename: str,
    formats: Iterable[str] | None = None,
    *,
    max_line_width: int | None = None,
    max_line_count: int | None = None,
    highlight_words: bool = False,
    max_words_per_line: int | None = None,
    subtitles: SubtitleOptions | None = None,
) -> dict[str, Path]:
    """Write one file per format into `out_dir` (created if missing); returns {fmt: path}.
    `formats` None: `formats_for(result)`.

    `basename` may come from a client (an upload's file name), so it is reduced to a plain
    file name that cannot leave `out_dir` (see `safe_basename`); pass it without the audio
    extension ("talk", not "talk.mp3"), or the files are named "talk.mp3.srt". Every format
    is checked before anything is written, so a bad one leaves no partial set behind.
    The keyword options are render()'s.
    """
    formats = [_check_format(fmt) for fmt in (formats_for(result) if formats is None else formats)]
    options = _writer_options(max_line_width, max_line_count, highlight_words, max_words_per_line)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = safe_basename(basename)

    paths: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):  # each format once, in the order asked
        path = directory / f"{stem}.{fmt}"
        # Belt and braces: safe_basename already rules this out.
        if path.resolve().parent != directory.resolve():
            raise ValueError(f"refusing to write outside {directory}: {path}")
        # newline="" keeps whisper's "\n" line ends on every platform, as its own CLI files have.
        with open(path, "w", encoding="utf-8", newline="") as file:
            _write(result, fmt, file, options, subtitles or SubtitleOptions(), stem)
        paths[fmt] = path
    return paths


def formats_for(result: TranscriptionResult, formats: Iterable[str] = FORMATS) -> tuple[str, ...]:
    """`formats`, and rttm when the result has speakers: the downloads a transcript offers."""
    return tuple(formats) + (SPEAKER_FORMATS if has_speakers(result) else ())


def safe_basename(name: str) -> str:
    """A client-supplied name reduced to a harmless file name stem.

    Directories are dropped (both "/" and "\\" separators, so "../../etc/passwd" and
    "C:\\x\\y" give "passwd" and "y"); anything but letters, digits, ".", "-" and "_"
    becomes "_"; leading dots go (no hidden files, no ".."); the length is capped.
    Nothing usable left gives DEFAULT_BASENAME.
    """
    name = re.split(r"[\\/]", str(name))[-1]
    name = re.sub(r"[^\w.\-]+", "_", name)  # \w keeps letters of every script: "Besprechung_März"
    name = name.lstrip(".")[:MAX_BASENAME_CHARS].strip("_ ")
    return name or DEFAULT_BASENAME


def _check_format(fmt: str) -> str:
    normalised = str(fmt).strip().lower().lstrip(".")
    if normalised not in ALL_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(ALL_FORMATS)}")
    return normalised


def _writer_options(
    max_line_width: int | None,
    max_line_count: int | None,
    highlight_words: bool,
    max_words_per_line: int | None,
) -> dict:
    # The `options` dict whisper's writers read, keyed as its command-line flags are.
    return {
        "max_line_width": max_line_width,
        "max_line_count": max_line_count,
        "highlight_words": highlight_words,
        "max_words_per_line": max_words_per_line,
    }


def _write(
    result: TranscriptionResult,
    fmt: str,
    file: TextIO,
    options: dict,
    subtitles: SubtitleOptions,
    file_id: str = DEFAULT_BASENAME,
) -> None:
    if fmt == "rttm":
        file.write(rttm(result, file_id))
        return
    result_dict = result.to_dict()
    speakers = has_speakers(result)
    if fmt in SUBTITLE_FORMATS:
        whisper_layout = options["highlight_words"] or any(
            options[key] is not None for key in ("max_line_width", "max_line_count", "max_words_per_line")
        )
        if whisper_layout:
            result_dict = _for_subtitles(result_dict)
            if speakers:
                result_dict = _labelled(result_dict, fmt)
        elif subtitles.per_segment:
            result_dict = _without_words(result_dict)
            if speakers:
                result_dict = _labelled(result_dict, fmt)
        else:
            cues = make_cues(result, subtitles, label=srt_label if fmt == "srt" and speakers else None)
            segments = as_segments(cues)
            if fmt == "vtt" and speakers:
                for segment, cue in zip(segments, cues):
                    segment["text"] = (
                        vtt_voice(cue.speaker, segment["text"]) if cue.speaker else segment["text"]
                    )
            result_dict = {**result_dict, "segments": segments}
    elif fmt == "txt" and speakers:
        result_dict = paragraphs(result_dict, speaker_turns(result))
    elif fmt == "tsv" and speakers:
        result_dict = _labelled(_without_words(result_dict), "srt")
    # get_writer only uses the directory when a writer is called with an audio path; we
    # hand it the open file instead, so the directory never matters.
    get_writer(fmt, ".").write_result(result_dict, file=file, options=options)


def _for_subtitles(result_dict: dict) -> dict:
    """The result as whisper's subtitle writers expect it.

    They switch to word-level cues when the first segment has a "words" key and then read
    `segment["words"]` of every segment, so a `None` (no word timestamps) or a segment
    without words further on would crash them. Word timings are used only when every
    segment has them; otherwise the key is removed and cues follow the segments.
    """
    if all(segment.get("words") for segment in result_dict["segments"]):
        return result_dict
    return _without_words(result_dict)


def _labelled(result_dict: dict, fmt: str) -> dict:
    """Each segment's text (its first word's, with word timings) labelled with its speaker:
    "[A] " for srt and tsv, a voice tag for vtt (unclosed: it then spans the rest of the cue).
    Whisper's own layout may still join two segments in a cue; ours (make_cues) never does."""

    def label(speaker: str, text: str) -> str:
        return (
            f"<v {speaker.replace('>', '')}>{text.lstrip()}"
            if fmt == "vtt"
            else srt_label(speaker) + text.lstrip()
        )

    segments = []
    for segment in result_dict["segments"]:
        speaker = segment.get("speaker")
        if speaker and segment.get("words"):
            first = {**segment["words"][0], "word": " " + label(speaker, segment["words"][0]["word"])}
            segment = {**segment, "words": [first, *segment["words"][1:]]}
        elif speaker:
            segment = {**segment, "text": label(speaker, segment["text"])}
        segments.append(segment)
    return {**result_dict, "segments": segments}


def _without_words(result_dict: dict) -> dict:
    """The result with no word timings: whisper's writers then write one cue per segment."""
    stripped = [
        {key: value for key, value in segment.items() if key != "words"}
        for segment in result_dict["segments"]
    ]
    return {**result_dict, "segments": stripped}
