"""Word timestamps on real weights (tiny.en), computed for a whole batch in one decoder pass.

Several sections decoded side by side (rows of different lengths in one alignment pass):
every segment's words, joined, give its text; they are in order, inside their segment and
inside the recording. One section gives whisper.transcribe's words exactly
(tests/test_stream.py); here the batch is what is under test.
"""

import pytest

from conftest import SHARED_AUDIO, fast_settings, shared_audio
from engine import Engine, load_audio

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"


@pytest.fixture(scope="module")
def result(tiny_en_model_dir):
    audio = load_audio(shared_audio(FIVE_MIN))[: 16000 * 150]
    settings = fast_settings(tiny_en_model_dir, max_new_tokens=224, batch_size=4, min_section_s=30)
    with Engine(settings) as engine:
        return engine.transcribe(audio, word_timestamps=True)


def test_every_segment_s_words_joined_give_its_text(result):
    assert len(result.segments) > 10
    for segment in result.segments:
        assert segment.words, segment
        assert "".join(w.word for w in segment.words).strip() == segment.text.strip()


def test_words_are_in_order_inside_their_segment_and_the_recording(result):
    previous_end = 0.0
    for segment in result.segments:
        for word in segment.words:
            assert word.start <= word.end
            assert word.start >= previous_end - 0.01, (word, previous_end)
            assert segment.start - 0.01 <= word.start and word.end <= segment.end + 0.01, (word, segment)
            assert 0.0 <= word.start and word.end <= result.duration
            assert 0.0 <= word.probability <= 1.0
            previous_end = word.end


def test_the_words_are_the_transcript(result):
    words = "".join(w.word for s in result.segments for w in s.words)
    assert words.split() == result.text.split()
    assert len(words.split()) > 300  # two and a half minutes of read speech, all of it timed
