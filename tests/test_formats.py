"""Output formats through whisper's writers, on hand-built results (formatting, not transcription)."""
import json
import re

import pytest

from engine.formats import FORMATS, render, safe_basename, write_files
from engine.results import Segment, TranscriptionResult, Word


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
    srt = render(make_result(), "srt")
    cues = srt.strip().split("\n\n")
    assert len(cues) == 3
    assert cues[0].splitlines() == ["1", "00:00:01,000 --> 00:00:03,500", "Hello there."]
    assert cues[1].splitlines()[:2] == ["2", "00:00:03,500 --> 00:00:07,250"]
    assert cues[2].splitlines()[0] == "3"


def test_vtt_header_and_dot_timestamps():
    vtt = render(make_result(), "vtt")
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
    assert "01:02:05,500 --> 01:02:07,000" in render(result, "srt")
    assert "01:02:05.500 --> 01:02:07.000" in render(result, "vtt")


def test_unknown_format_names_the_choices():
    with pytest.raises(ValueError) as error:
        render(make_result(), "docx")
    for fmt in FORMATS:
        assert fmt in str(error.value)


def test_format_name_is_forgiving_about_case_and_dot():
    assert render(make_result(), ".SRT") == render(make_result(), "srt")


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_segments_render_valid_empty_files(fmt):
    text = render(make_result([]), fmt)
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
    plain = render(make_result(), "srt")
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


def test_write_files_subset_and_bad_format_writes_nothing(tmp_path):
    assert set(write_files(make_result(), tmp_path, "a", formats=("srt", "txt"))) == {"srt", "txt"}
    with pytest.raises(ValueError):
        write_files(make_result(), tmp_path / "bad", "b", formats=("srt", "pdf"))
    assert not (tmp_path / "bad" / "b.srt").exists()


@pytest.mark.parametrize(
    "hostile", ["../../etc/passwd", "..\\..\\windows\\system32", "/abs/path/x", "..", "", "a/b/../../..", "~root"]
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
