"""The page's segments view and subtitle fields as plain functions (no server, no browser;
tests/test_transcript_browser.py drives them in Chromium)."""

from __future__ import annotations

import re

import gradio as gr
import pytest

from engine import JobOptions, Segment, TranscriptionResult, Word
from output.subtitles import SubtitleOptions
from ui.page.form import page_options, subtitle_options
from ui.page.render import clock, notice_html, segments_html, word_time


def _result(words: bool) -> TranscriptionResult:
    first_words = [Word(" <b>Hi</b>", 0.5, 0.9, 0.9), Word(" &amp;", 0.9, 1.2, 0.9)] if words else None
    return TranscriptionResult(
        segments=[
            Segment(0, 0.5, 1.2, " <b>Hi</b> &amp;", words=first_words),
            Segment(
                1,
                83.25,
                3725.0,
                ' "quoted" <script>alert(1)</script>',
                words=[
                    Word(' "quoted"', 83.25, 84.0, 0.8),
                    Word(" <script>alert(1)</script>", 84.0, 3725.0, 0.7),
                ]
                if words
                else None,
            ),
        ],
        language="en",
        duration=3726.0,
    )


def test_segments_carry_their_start_and_escape_all_text():
    view = segments_html(_result(words=False))
    assert "<script>" not in view and "<b>" not in view
    assert "&lt;b&gt;Hi&lt;/b&gt; &amp;amp;" in view and "&lt;script&gt;alert(1)&lt;/script&gt;" in view
    assert re.findall(r'class="segment" data-start="([\d.]+)"', view) == ["0.500", "83.250"]
    assert "[00:00:00]" in view and "[00:01:23]" in view
    assert 'class="word"' not in view and "Click a segment to play" in view


def test_words_carry_their_times_escaped():
    view = segments_html(_result(words=True))
    assert "<script>" not in view and "<b>" not in view
    assert re.findall(r'class="word" data-start="([\d.]+)"', view) == ["0.500", "0.900", "83.250", "84.000"]
    assert re.findall(r'class="word-time">([^<]+)<', view) == ["0.5", "0.9", "1:23.2", "1:24.0"]
    assert 'title="00:00.500 – 00:00.900"' in view and "&quot;quoted&quot;" in view
    assert "Click a segment or a word" in view


def test_no_speech_and_no_result():
    assert "No speech detected" in segments_html(TranscriptionResult([], "en", 3.0))
    assert segments_html(None) == ""


def test_clock_and_word_time():
    assert clock(0) == "[00:00:00]" and clock(83.9) == "[00:01:23]" and clock(3725) == "[01:02:05]"
    assert word_time(5.14) == "5.1" and word_time(65.0) == "1:05.0" and word_time(3723.46) == "1:02:03.5"


def test_subtitle_fields_become_options_and_bad_values_are_named():
    defaults = SubtitleOptions(42, 2, 7.0, False)
    assert subtitle_options(defaults) == defaults  # empty fields keep the config's values
    assert subtitle_options(defaults, 20.0, 1, 3.5, True) == SubtitleOptions(20, 1, 3.5, True)
    for args, field in (
        ((5,), "Max characters per line"),
        ((20.5,), "Max characters per line"),
        ((20, 0), "Max lines per cue"),
        ((20, 2, 0.1), "Max seconds per cue"),
        ((20, 2, float("nan")), "Max seconds per cue"),
    ):
        with pytest.raises(gr.Error, match=field):
            subtitle_options(defaults, *args)


def test_the_page_fields_become_options_as_the_http_form_maps_them():
    assert page_options() == JobOptions()
    assert page_options("", "", "", False, None, "  ", 0) == JobOptions()  # empty fields keep the config's
    assert page_options("auto", prompt=" Dr. Nguyen ", temperature=0.4) == JobOptions(
        initial_prompt="Dr. Nguyen", temperature=(0.4,)
    )
    assert page_options("French", "translate", "tiny", True, temperature=1).language == "fr"
    assert page_options(vad=True, configured_vad=True).vad is None  # as configured: the config decides
    assert page_options(vad=False, configured_vad=True).vad is False
    for bad in (1.01, -0.5, float("nan"), "warm"):
        with pytest.raises(gr.Error, match="Temperature: must be a number from 0 to 1"):
            page_options(temperature=bad)


def test_a_refusal_notice_escapes_its_text():
    shown = notice_html("Cannot transcribe this recording", "'<img src=x onerror=alert(1)>.mp3' is not audio")
    assert "<img" not in shown and "&lt;img src=x onerror=alert(1)&gt;.mp3" in shown
    assert 'role="alert"' in shown and "<strong>Cannot transcribe this recording.</strong>" in shown


def test_session_handoffs_are_taken_once_per_session_and_bounded():
    from ui.page.session import SessionHandoff

    views = SessionHandoff()
    views.put("a", "<div>a</div>")
    views.put("b", "")
    assert views.take("a") == "<div>a</div>" and views.take("a") is None
    assert views.take("b") == "" and views.take("nobody") is None
    for k in range(SessionHandoff.MAX_VIEWS + 5):  # gradio_client calls never take theirs
        views.put(f"api-{k}", "x")
    assert views.take("api-0") is None and views.take(f"api-{SessionHandoff.MAX_VIEWS + 4}") == "x"


def _two_speakers() -> TranscriptionResult:
    def segment(i, start, text, speaker):
        words = [
            Word(f" {w}", start + n * 0.3, start + n * 0.3 + 0.3, 0.9, speaker) for n, w in enumerate(text)
        ]
        return Segment(
            i, start, start + 0.3 * len(text), "".join(w.word for w in words), words=words, speaker=speaker
        )

    return TranscriptionResult(
        segments=[
            segment(0, 0.0, ["Hello", "there."], "A"),
            segment(1, 1.0, ["Hi."], "B"),
            segment(2, 2.0, ["How", "are"], "A"),
            segment(3, 3.0, ["you?"], "A"),
        ],
        language="en",
        duration=4.0,
    )


def _turns(view: str) -> list[tuple[str, str]]:
    """(colour class, label) of each turn of a segments view."""
    return re.findall(r'class="turn (speaker-\d)"[^>]*><span class="speaker-label">([^<]*)<', view)


def test_each_turn_sits_under_its_speaker_in_the_speaker_s_colour_and_a_renamed_one_keeps_it():
    result = _two_speakers()
    view = segments_html(result)
    assert _turns(view) == [("speaker-0", "A"), ("speaker-1", "B"), ("speaker-0", "A")]
    assert view.count('class="segment"') == 4 and view.count('class="word"') == 6  # every segment still there
    renamed = segments_html(result.with_speaker_names({"A": "<b>Ada</b>"}))
    assert _turns(renamed) == [
        ("speaker-0", "&lt;b&gt;Ada&lt;/b&gt;"),
        ("speaker-1", "B"),
        ("speaker-0", "&lt;b&gt;Ada&lt;/b&gt;"),
    ]
    assert "<b>" not in renamed
    assert 'class="turn' not in segments_html(_result(words=True))  # no speakers, no turns


def test_the_transcript_box_names_each_line_s_speaker_and_a_paragraph_per_turn_without_times():
    from ui.page.render import details_markdown, transcript_text

    result = _two_speakers().with_speaker_names({"A": "Ada"})
    lines = transcript_text(result, timestamps=True).splitlines()
    assert [line.split("]  ", 1)[1] for line in lines] == [
        "Ada: Hello there.",
        "B: Hi.",
        "Ada: How are",
        "Ada: you?",
    ]
    assert transcript_text(result, timestamps=False) == "Ada: Hello there.\n\nB: Hi.\n\nAda: How are you?"
    assert transcript_text(_result(words=False), timestamps=False) == _result(words=False).text
    assert "2 speakers" in details_markdown(result, "tiny.en")


def test_the_speakers_choice_becomes_diarization_options_and_back():
    from ui.page.form import speakers_choice

    assert page_options(speakers="off") == JobOptions() == page_options(speakers=None)
    assert page_options(speakers="auto") == JobOptions(diarize=True)
    assert page_options(speakers="3") == JobOptions(diarize=True, num_speakers=3)
    for bad in ("1", "9", "many", "2.5"):
        with pytest.raises(gr.Error, match="Speakers: choose Off, Automatic or a number from 2 to 8"):
            page_options(speakers=bad)
    assert speakers_choice(JobOptions()) == "off" and speakers_choice(JobOptions(diarize=True)) == "auto"
    assert speakers_choice(JobOptions(diarize=True, num_speakers=3)) == "3"
    assert speakers_choice(JobOptions(diarize=True, num_speakers=12)) == "auto"  # more than the page offers
    assert speakers_choice(JobOptions(diarize=True, min_speakers=2, max_speakers=4)) == "auto"


def test_a_page_without_a_job_store_keeps_names_for_its_recent_results():
    from engine import InvalidRequest
    from ui.page.shown_jobs import MemoryJobs, ShownJob

    shown = MemoryJobs()
    shown.remember(ShownJob("a" * 12, "talk.wav", JobOptions(diarize=True), _two_speakers()))
    job = shown.name_speakers("a" * 12, {"A": " Ada "})
    assert job.speaker_names == {"A": "Ada"} and shown.get("a" * 12).speaker_names == {"A": "Ada"}
    assert [s.speaker for s in job.named.segments] == ["Ada", "B", "Ada", "Ada"]
    assert job.result == _two_speakers()  # the words and labels as transcribed
    with pytest.raises(InvalidRequest, match="no speaker 'C'"):
        shown.name_speakers("a" * 12, {"C": "Cy"})
    assert shown.name_speakers("a" * 12, {"A": None}).speaker_names == {}
    assert shown.name_speakers("f" * 12, {"A": "Ada"}) is None
    for n in range(MemoryJobs.KEEP):
        shown.remember(ShownJob(f"{n:012d}", "x.wav", JobOptions(diarize=True), _two_speakers()))
    assert shown.get("a" * 12) is None  # the oldest goes
