"""Word timestamps on real weights (tiny.en), computed for a whole batch in one decoder pass.

Several sections decoded side by side (rows of different lengths in one alignment pass):
every segment's words, joined, give its text; they are in order, inside their segment and
inside the recording. One section gives whisper.transcribe's words exactly
(tests/test_stream.py); here the batch is what is under test.
"""

import itertools

import pytest
import torch
from whisper.timing import median_filter as whisper_median_filter

from conftest import SHARED_AUDIO, fast_settings, shared_audio
from engine import Engine, load_audio
from engine.decoding.median_filter import median_filter

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


@pytest.mark.parametrize("shape", [(8, 90, 750), (8, 3, 10), (2, 5, 4), (1, 1, 7), (5, 40, 1500)])
def test_the_median_filter_gives_whisper_s_values_exactly(shape):
    # attention-like values, rounded ones and 0/1 ones (ties everywhere), edges of every length
    torch.manual_seed(len(shape) + shape[-1])
    for x in (torch.randn(shape), torch.randn(shape).round(), (torch.randn(shape) > 0).float()):
        assert torch.equal(median_filter(x, 7), whisper_median_filter(x, 7))
    with torch.inference_mode():  # as the decode loop runs it
        x = torch.randn(shape)
        assert torch.equal(median_filter(x, 7), whisper_median_filter(x, 7))


def test_the_median_filter_finds_the_middle_of_every_0_1_window():
    # the 0-1 principle: a network of compare-exchanges that is right on every 0/1 input is right
    for bits in itertools.product([0.0, 1.0], repeat=7):
        x = torch.tensor(bits).reshape(1, 1, 7)
        assert torch.equal(median_filter(x, 7), whisper_median_filter(x, 7)), bits


def test_the_median_filter_leaves_nan_short_rows_and_other_widths_to_whisper():
    x = torch.randn(2, 3, 40)
    x[0, 1, 5] = float("nan")
    assert torch.equal(median_filter(x, 7).isnan(), whisper_median_filter(x, 7).isnan())
    short = torch.randn(2, 3, 3)
    assert torch.equal(median_filter(short, 7), short)
    assert torch.equal(median_filter(x.nan_to_num(), 5), whisper_median_filter(x.nan_to_num(), 5))
