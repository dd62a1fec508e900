"""Speakers in the downloads (output.speakers, output.formats, output.subtitles): srt labels,
WebVTT voice spans, txt paragraphs, rttm turns, renaming; cues within the layout limits and
never across two speakers. (Without speakers the files are unchanged: tests/test_formats.py.)"""

from __future__ import annotations

from engine.results import Segment, TranscriptionResult, Word
from output import formats_for, render
from output.subtitles import SubtitleOptions, make_cues


def turn(seg_id, speaker, start, text):
    """A segment of one speaker, its words 0.3 s apart."""
    words = [
        Word(" " + w, start + 0.3 * i, start + 0.3 * i + 0.25, 0.9, speaker)
        for i, w in enumerate(text.split())
    ]
    return Segment(seg_id, start, words[-1].end, " " + text, words=words, speaker=speaker)


def conversation():
    return TranscriptionResult(
        [
            turn(
                0, "A", 0.0, "So tell me about the new subtitle layout and what it does with long sentences"
            ),
            turn(1, "Ada Lovelace", 5.0, "It cuts them"),
            turn(2, "A", 6.0, "Good."),
            turn(3, "A", 7.0, "And then?"),
        ],
        "en",
        9.0,
    )


def test_srt_cues_start_with_the_speaker_and_keep_the_layout_limits():
    options = SubtitleOptions(max_line_width=30, max_lines=2, max_cue_s=4.0)
    srt = render(conversation(), "srt", subtitles=options)
    cues = [block.split("\n")[2:] for block in srt.strip().split("\n\n")]
    assert all(lines[0].startswith(("[A] ", "[Ada Lovelace] ")) for lines in cues)
    assert all(len(lines) <= 2 and all(len(line) <= 30 for line in lines) for lines in cues)
    assert sum(lines[0].startswith("[Ada Lovelace] ") for lines in cues) == 1
    for cue in make_cues(conversation(), options):  # the same cues: each one speaker's words
        assert cue.speaker in ("A", "Ada Lovelace") and cue.end - cue.start <= 4.0


def test_a_cue_never_spans_two_speakers_even_where_one_would_fit():
    cues = make_cues(conversation(), SubtitleOptions(max_line_width=80, max_lines=3, max_cue_s=30.0))
    assert [c.speaker for c in cues] == ["A", "Ada Lovelace", "A"]
    assert cues[2].text == "Good. And then?"  # one speaker's turns still share a cue


def test_webvtt_uses_voice_spans_txt_paragraphs_and_rttm_turns():
    vtt = render(conversation(), "vtt")
    assert "<v A>So tell me" in vtt and "<v Ada Lovelace>It cuts them</v>" in vtt
    assert render(conversation(), "txt").splitlines() == [
        "A: So tell me about the new subtitle layout and what it does with long sentences",
        "Ada Lovelace: It cuts them",
        "A: Good. And then?",
    ]
    rttm = render(conversation(), "rttm", file_id="my talk").splitlines()
    assert rttm[1] == "SPEAKER my_talk 1 5.000 0.850 <NA> <NA> Ada_Lovelace <NA> <NA>"
    assert len(rttm) == 3 and all(len(line.split()) == 10 for line in rttm)
    assert formats_for(conversation()) == ("txt", "srt", "vtt", "tsv", "json", "rttm")


def test_a_renamed_speaker_is_named_in_every_download():
    renamed = conversation().with_speaker_names({"A": "Grace"})
    assert {s.speaker for s in renamed.segments} == {"Grace", "Ada Lovelace"}
    assert all(w.speaker == s.speaker for s in renamed.segments for w in s.words)
    assert render(renamed, "txt").startswith("Grace: So tell me")
    assert "[Grace] Good. And then?" in render(renamed, "srt")
    assert render(conversation(), "txt").startswith("A: ")  # the original is unchanged


def test_json_keeps_the_speaker_of_every_segment_and_word():
    import json

    stored = json.loads(render(conversation(), "json"))
    assert [s["speaker"] for s in stored["segments"]] == ["A", "Ada Lovelace", "A", "A"]
    assert all(w["speaker"] == s["speaker"] for s in stored["segments"] for w in s["words"])
