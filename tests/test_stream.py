"""A recording short enough to be one section gives exactly whisper.transcribe's segments.

The invariant behind "no lost words": the engine decodes each section as stock
`whisper.transcribe` decodes a recording (seek to the last complete segment, the no-speech
skip, the previous text as the prompt), so on one section it must give the same segments,
text and times, with the same options (greedy). Checked on real tiny.en weights and on lively
random ones, with and without `condition_on_previous_text`. Whisper's own output is only
trimmed where it runs past the audio (segments "heard" in the zero padding are dropped and
ends clipped to the recording, which the engine does on purpose).
"""

import numpy as np
import pytest
import whisper

from conftest import JFK, LONG_11_MIN, fast_settings, shared_audio
from engine import Engine, load_audio
from engine.audio.sections import MIN_SECTION_S, plan_sections

GUARDS = dict(compression_ratio_threshold=2.4, logprob_threshold=-1.0, no_speech_threshold=0.6)


def whisper_segments(model, audio, condition: bool, max_new_tokens=None, words=False, **options):
    options.update(sample_len=max_new_tokens) if max_new_tokens else None
    result = whisper.transcribe(
        model,
        audio,
        temperature=0.0,
        fp16=False,
        condition_on_previous_text=condition,
        word_timestamps=words,
        **GUARDS,
        **options,
    )
    duration = len(audio) / 16000

    def inside(value, segment):  # the engine keeps each word inside its segment (and the recording)
        return round(min(max(value, segment["start"]), min(segment["end"], duration)), 2)

    return [
        (
            s["seek"],
            round(s["start"], 2),
            round(min(s["end"], duration), 2),
            s["text"],
            [(w["word"], inside(w["start"], s), inside(w["end"], s)) for w in s["words"]] if words else None,
        )
        for s in result["segments"]
        if s["text"].strip() and s["start"] < duration
    ]


def engine_segments(engine, audio, words=False):
    return [
        (
            s.seek,
            round(s.start, 2),
            round(s.end, 2),
            s.text,
            [(w.word, round(w.start, 2), round(w.end, 2)) for w in s.words] if words else None,
        )
        for s in engine.transcribe(audio, word_timestamps=words).segments
    ]


@pytest.fixture(scope="module")
def forty_seconds():
    """40 s of read speech: more than one window, the first ending mid-sentence, still one section."""
    audio = load_audio(shared_audio(LONG_11_MIN))[16000 * 100 : 16000 * 140]
    assert len(plan_sections(audio, 8)) == 1 and len(audio) / 16000 < MIN_SECTION_S
    return audio


@pytest.mark.parametrize("condition", [True, False], ids=["conditioned", "unconditioned"])
def test_real_tiny_en_one_section_is_whisper_transcribe(tiny_en_model_dir, forty_seconds, condition):
    settings = fast_settings(
        tiny_en_model_dir, max_new_tokens=224, condition_on_previous_text=condition, **GUARDS
    )
    with Engine(settings) as engine:
        with engine.models.lease(str(tiny_en_model_dir)) as model:
            expected = whisper_segments(model, forty_seconds, condition)
        got = engine_segments(engine, forty_seconds)
    assert len(expected) >= 6 and expected[-1][2] > 35  # the whole clip, in two windows
    assert got == expected


def test_real_tiny_en_word_timestamps_and_their_seek_are_whisper_transcribes(
    tiny_en_model_dir, forty_seconds
):
    """With word timestamps whisper moves seek to the last word's end: the same here."""
    with Engine(fast_settings(tiny_en_model_dir, max_new_tokens=224, **GUARDS)) as engine:
        with engine.models.lease(str(tiny_en_model_dir)) as model:
            expected = whisper_segments(model, forty_seconds, True, words=True)
        got = engine_segments(engine, forty_seconds, words=True)
    assert sum(len(s[4]) for s in expected) > 80  # every word of the 40 s
    assert got == expected


def test_real_tiny_en_hallucination_silence_threshold_is_whisper_transcribes(tiny_en_model_dir):
    """whisper's guard against text invented in silence (word timestamps on): the same
    segments and words as whisper.transcribe(hallucination_silence_threshold=2) on speech,
    20 s of music and speech (one section, no VAD)."""
    from bench.signals import music

    jfk = load_audio(shared_audio(JFK))
    audio = np.concatenate([jfk, music(20.0), jfk[: 16000 * 5]])
    settings = fast_settings(
        tiny_en_model_dir, max_new_tokens=224, hallucination_silence_threshold=2.0, **GUARDS
    )
    with Engine(settings) as engine:
        with engine.models.lease(str(tiny_en_model_dir)) as model:
            expected = whisper_segments(model, audio, True, words=True, hallucination_silence_threshold=2.0)
        got = engine_segments(engine, audio, words=True)
    assert len(expected) >= 3
    assert got == expected


def test_real_tiny_en_jfk_is_whisper_transcribe(tiny_en_model_dir):
    audio = load_audio(shared_audio(JFK))
    with Engine(fast_settings(tiny_en_model_dir, max_new_tokens=224, **GUARDS)) as engine:
        with engine.models.lease(str(tiny_en_model_dir)) as model:
            expected = whisper_segments(model, audio, True)
        assert engine_segments(engine, audio) == expected


@pytest.mark.parametrize("condition", [True, False], ids=["conditioned", "unconditioned"])
def test_lively_random_weights_one_section_is_whisper_transcribe(micro_checkpoint, forty_seconds, condition):
    model = whisper.load_model(str(micro_checkpoint), device="cpu")
    expected = whisper_segments(model, forty_seconds, condition, max_new_tokens=24)
    settings = fast_settings(micro_checkpoint, condition_on_previous_text=condition, **GUARDS)
    with Engine(settings) as engine:
        got = engine_segments(engine, forty_seconds)
    assert len(expected) >= 3
    assert got == expected


def test_sections_meet_in_the_longest_pauses_near_even_targets():
    rng = np.random.default_rng(0)
    speech = lambda s: (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32)  # noqa: E731
    gap = lambda s: np.zeros(int(16000 * s), np.float32)  # noqa: E731
    # 100 s of "speech" with short gaps every 10 s and one long gap near the middle
    parts = []
    for i in range(10):
        parts.append(speech(9.7 if i != 5 else 8.0))
        parts.append(gap(0.3 if i != 5 else 2.0))
    audio = np.concatenate(parts)
    (one,) = plan_sections(audio, 8, min_section_s=60)  # 100 s: too short for two sections of 60 s
    assert one.start == 0 and one.end == len(audio)
    first, second = plan_sections(audio, 2, min_section_s=40)
    cut = first.end / 16000
    assert second.start == first.end and second.end == len(audio)
    assert 58.0 <= cut <= 60.0, f"the cut at {cut:.2f} s is not in the 2 s pause"
