"""Output formats through whisper's writers, on hand-built results (formatting, not transcription).

The cue layout itself (line widths, cue lengths, where cues are cut) is tested in test_subtitles.py;
here: the files' format, and which layout srt and vtt get."""

import json
import re

import pytest

from conftest import srt_cues
from engine.results import Segment, TranscriptionResult, Word
from engine.settings import Settings
from output.formats import FORMATS, render, safe_basename, write_files
from output.subtitles import SubtitleOptions

PLAIN = SubtitleOptions(per_segment=True)  # whisper's plain files: one cue per segment


def make_result(segments=None) -> TranscriptionResult:
    if segments is None:
        segments = [
            Segment(id=0, start=1.0, end=3.5, text=" Hello there."),
            Segment(id=1, start=3.5, end=7.25, text=" This is\ta test."),
            Segment(id=2, start=8.0, end=10.0, text=" Goodbye."),
        ]
    return TranscriptionResult(segments=segments, language="en", duration=12.0, model="tiny")


def make_worded_result() -> TranscriptionResult:
    words = [
        Word(" Hello", 1.0, 1.4, 0.9),
        Word(" there", 1.5, 2.0, 0.9),
        Word(" my", 2.1, 2.3, 0.9),
        Word(" friend.", 2.4, 3.0, 0.9),
    ]
    return make_result([Segment(id=0, start=1.0, end=3.0, text=" Hello there my friend.", words=words)])


def test_srt_numbered_cues_with_comma_timestamps():
    srt = render(make_result(), "srt", subtitles=PLAIN)
    cues = srt.strip().split("\n\n")
    assert len(cues) == 3
    assert cues[0].splitlines() == ["1", "00:00:01,000 --> 00:00:03,500", "Hello there."]
    assert cues[1].splitlines()[:2] == ["2", "00:00:03,500 --> 00:00:07,250"]
    assert cues[2].splitlines()[0] == "3"


def test_vtt_header_and_dot_timestamps():
    vtt = render(make_result(), "vtt", subtitles=PLAIN)
    assert vtt.startswith("WEBVTT\n")
    assert "00:01.000 --> 00:03.500\nHello there." in vtt
    assert "," not in "".join(line for line in vtt.splitlines() if "-->" in line)


def test_tsv_integer_milliseconds():
    lines = render(make_result(), "tsv").splitlines()
    assert lines[0] == "start\tend\ttext"
    assert lines[1] == "1000\t3500\tHello there."
    assert lines[2] == "3500\t7250\tThis is a test."  # a tab in the text must not add a column
    assert all(len(line.split("\t")) == 3 for line in lines)


def test_json_round_trips():
    data = json.loads(render(make_result(), "json"))
    assert data["language"] == "en"
    assert data["text"] == "Hello there. This is\ta test. Goodbye."
    assert [(s["start"], s["end"], s["text"]) for s in data["segments"]] == [
        (1.0, 3.5, " Hello there."),
        (3.5, 7.25, " This is\ta test."),
        (8.0, 10.0, " Goodbye."),
    ]


def test_txt_one_line_per_segment():
    assert render(make_result(), "txt").splitlines() == ["Hello there.", "This is\ta test.", "Goodbye."]


def test_hours_render_in_srt():
    result = make_result([Segment(id=0, start=3725.5, end=3727.0, text=" Late.")])
    for subtitles in (PLAIN, SubtitleOptions()):
        assert "01:02:05,500 --> 01:02:07,000" in render(result, "srt", subtitles=subtitles)
        assert "01:02:05.500 --> 01:02:07.000" in render(result, "vtt", subtitles=subtitles)


def test_unknown_format_names_the_choices():
    with pytest.raises(ValueError) as error:
        render(make_result(), "docx")
    for fmt in FORMATS:
        assert fmt in str(error.value)


def test_format_name_is_forgiving_about_case_and_dot():
    assert render(make_result(), ".SRT") == render(make_result(), "srt")


@pytest.mark.parametrize("subtitles", [PLAIN, SubtitleOptions()], ids=["per segment", "cues"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_segments_render_valid_empty_files(fmt, subtitles):
    text = render(make_result([]), fmt, subtitles=subtitles)
    expected = {"txt": "", "srt": "", "vtt": "WEBVTT\n\n", "tsv": "start\tend\ttext\n"}
    if fmt == "json":
        assert json.loads(text)["segments"] == []
    else:
        assert text == expected[fmt]


def test_word_options_shape_subtitles_when_words_exist():
    result = make_worded_result()
    assert render(result, "srt").count("-->") == 1
    split = render(result, "srt", max_words_per_line=2)
    assert split.count("-->") == 2
    assert "00:00:01,000 --> 00:00:02,000\nHello there" in split
    highlighted = render(result, "vtt", highlight_words=True)
    assert "<u>Hello</u> there my friend." in highlighted


def test_word_options_ignored_without_words():
    plain = render(make_result(), "srt", subtitles=PLAIN)
    assert render(make_result(), "srt", highlight_words=True, max_words_per_line=1) == plain


def test_mixed_word_timings_fall_back_to_segments():
    worded = make_worded_result().segments[0]
    later = Segment(id=1, start=4.0, end=5.0, text=" No words here.")
    srt = render(make_result([worded, later]), "srt", highlight_words=True)
    assert srt.count("-->") == 2 and "<u>" not in srt and "No words here." in srt


def test_write_files_creates_one_file_per_format(tmp_path):
    paths = write_files(make_result(), tmp_path / "out", "meeting")
    assert set(paths) == set(FORMATS)
    for fmt, path in paths.items():
        assert path == tmp_path / "out" / f"meeting.{fmt}"
        assert path.read_text(encoding="utf-8") == render(make_result(), fmt)
    narrow = SubtitleOptions(max_line_width=12)
    paths = write_files(make_result(), tmp_path / "narrow", "meeting", ("srt",), subtitles=narrow)
    assert paths["srt"].read_text(encoding="utf-8") == render(make_result(), "srt", subtitles=narrow)


def long_segment_result(words: bool) -> TranscriptionResult:
    """One 12 s segment of 100 characters in three sentences, with or without word timings."""
    text = " The first sentence is here. Then a second one follows it closely. And the third ends it all."
    pieces = text.split(" ")[1:]
    timed = (
        [Word(f" {p}", 0.5 + 0.6 * i, 0.5 + 0.6 * i + 0.5, 0.9) for i, p in enumerate(pieces)]
        if words
        else None
    )
    return make_result([Segment(id=0, start=0.5, end=12.5, text=text, words=timed)])


@pytest.mark.parametrize("words", [True, False], ids=["word timings", "interpolated"])
def test_subtitles_default_to_cues_within_the_limits(words):
    result = long_segment_result(words)
    cues = srt_cues(render(result, "srt"))
    assert len(cues) > 1
    for start, end, lines in cues:
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines) and 0 < end - start <= 7
    assert " ".join(" ".join(lines) for _, _, lines in cues).split() == result.text.split()
    assert all(lines[-1].endswith(".") for _, _, lines in cues)  # cut at sentence ends
    plain = srt_cues(render(result, "srt", subtitles=PLAIN))
    assert plain == [(0.5, 12.5, [result.text])]  # the plain file: the segment as it is


def test_vtt_gets_the_same_cues_as_srt():
    result = long_segment_result(True)
    vtt = render(result, "vtt")
    srt = render(result, "srt")
    assert vtt.count("-->") == srt.count("-->")

    def texts(text):
        return [line for line in text.splitlines() if line and "-->" not in line and not line.isdigit()]

    assert texts(vtt)[1:] == texts(srt) and texts(vtt)[0] == "WEBVTT"


def test_arrow_in_text_is_escaped_as_whisper_does():
    result = make_result([Segment(id=0, start=0.0, end=2.0, text=" a --> b")])
    assert "a -> b" in render(result, "srt") and "a -> b" in render(result, "srt", subtitles=PLAIN)


def test_other_formats_ignore_subtitle_options():
    narrow = SubtitleOptions(max_line_width=5, max_lines=1, max_cue_s=0.5)
    for fmt in ("txt", "tsv", "json"):
        assert render(long_segment_result(True), fmt, subtitles=narrow) == render(
            long_segment_result(True), fmt
        )


def test_settings_defaults_are_the_subtitle_defaults():
    assert SubtitleOptions.from_settings(Settings()) == SubtitleOptions()
    configured = Settings(
        subtitle_max_line_width=30, subtitle_max_lines=1, subtitle_max_cue_s=4.5, subtitle_per_segment=True
    )
    assert SubtitleOptions.from_settings(configured) == SubtitleOptions(30, 1, 4.5, True)


def test_write_files_subset_and_bad_format_writes_nothing(tmp_path):
    assert set(write_files(make_result(), tmp_path, "a", formats=("srt", "txt"))) == {"srt", "txt"}
    with pytest.raises(ValueError):
        write_files(make_result(), tmp_path / "bad", "b", formats=("srt", "pdf"))
    assert not (tmp_path / "bad" / "b.srt").exists()


@pytest.mark.parametrize(
    "hostile",
    ["../../etc/passwd", "..\\..\\windows\\system32", "/abs/path/x", "..", "", "a/b/../../..", "~root"],
)
def test_basename_cannot_leave_out_dir(tmp_path, hostile):
    out_dir = tmp_path / "out"
    paths = write_files(make_result(), out_dir, hostile, formats=("txt",))
    path = paths["txt"]
    assert path.parent == out_dir and path.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [path.name]


def test_safe_basename():
    assert safe_basename("../../etc/passwd") == "passwd"
    assert safe_basename("C:\\Users\\me\\talk") == "talk"
    assert safe_basename("my talk (final)") == "my_talk_final"
    assert safe_basename("Besprechung März") == "Besprechung_März"
    assert safe_basename(".bashrc") == "bashrc"
    assert safe_basename("..") == "transcript"
    assert len(safe_basename("x" * 1000)) <= 120
    assert re.fullmatch(r"[\w.\-]+", safe_basename('a<b>c:"d|e?*f\x00g'))
