"""Speaker diarization (engine/diarization): labels onto words, known speakers, refusals, batch
memory, clustering, and the issue's targets on real speech with real tiny.en and GE2E weights.

The fast tests build their inputs by hand. The real-weight tests build the benchmark's two
conversations (bench/conversations.py) from ../shared/audio and skip, saying why, where that
folder, the tiny.en package or the speaker encoder's package is absent.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

from engine.decoding.memory import GpuMemory
from engine.diarization import DiarizationOptions, KnownSpeaker, SpeakerTurn, assign_speakers, speaker_labels
from engine.diarization.clustering import cluster
from engine.diarization.embedding import embed_windows, fit_window_batch
from engine.diarization.known import name_speakers
from engine.diarization.labels import _cut_logprobs
from engine.diarization.turns import turns_from_windows
from engine.diarization.windows import Window, plan_windows, window_samples
from engine.errors import InvalidRequest, SpeakerReferenceError, WindowTooLarge
from engine.models.speaker_encoder import SpeakerEncoder
from engine.results import Segment, TokenLogprob, TranscriptionResult, Word

SR = 16000


def words(*spec):
    """Words from (text, start, end) triples."""
    return [Word(text, start, end, 0.9) for text, start, end in spec]


def result_of(*segments):
    return TranscriptionResult(
        [
            Segment(
                i,
                s.start,
                s.end,
                s.text,
                tokens=[1, 2, 3],
                words=s.words,
                avg_logprob=-0.2,
                logprobs=s.logprobs,
            )
            for i, s in enumerate(segments)
        ],
        "en",
        20.0,
    )


# --- labels onto the transcript ---------------------------------------------------------------------------
def test_a_segment_is_split_where_the_speaker_changes_and_its_words_are_unchanged():
    first = Segment(
        0,
        0.0,
        4.0,
        " Hello there. Hi, how are you?",
        words=words(
            (" Hello", 0.0, 0.5),
            (" there.", 0.5, 1.0),
            (" Hi,", 1.6, 1.9),
            (" how", 2.0, 2.2),
            (" are", 2.2, 2.4),
            (" you?", 2.4, 3.9),
        ),
    )
    second = Segment(1, 4.0, 6.0, " Fine.", words=words((" Fine.", 4.2, 5.0)))
    result = result_of(first, second)
    turns = [SpeakerTurn(0.0, 1.2, 7), SpeakerTurn(1.5, 4.0, 3), SpeakerTurn(4.1, 5.5, 7)]
    labelled = assign_speakers(result, turns, encode=lambda text: [len(text)])
    assert [(s.id, s.text, s.speaker) for s in labelled.segments] == [
        (0, " Hello there.", "A"),
        (1, " Hi, how are you?", "B"),
        (2, " Fine.", "A"),
    ]
    assert (labelled.segments[0].start, labelled.segments[0].end) == (
        0.0,
        1.0,
    )  # the segment's start, its word's end
    assert (labelled.segments[1].start, labelled.segments[1].end) == (1.6, 4.0)
    assert labelled.text == result.text
    before = [(w.word, w.start, w.end, w.probability) for s in result.segments for w in s.words]
    after = [(w.word, w.start, w.end, w.probability) for s in labelled.segments for w in s.words]
    assert after == before
    for segment in labelled.segments:  # no segment mixes two speakers
        assert {w.speaker for w in segment.words} == {segment.speaker}
    assert labelled.segments[1].tokens == [len(" Hi, how are you?")]  # re-encoded from its text
    assert labelled.segments[2].tokens == [1, 2, 3]  # not split: its own tokens
    assert labelled.segments[1].avg_logprob == -0.2


def test_letters_follow_the_first_speech_and_names_replace_them():
    segment = Segment(
        0, 0.0, 9.0, " a b c", words=words((" a", 0.0, 1.0), (" b", 3.0, 4.0), (" c", 6.0, 7.0))
    )
    turns = [
        SpeakerTurn(0.0, 2.0, 2),
        SpeakerTurn(2.5, 5.0, 0),
        SpeakerTurn(5.5, 8.0, 1),
        SpeakerTurn(8.5, 9.0, 4),
    ]
    labelled = assign_speakers(result_of(segment), turns)
    assert [s.speaker for s in labelled.segments] == ["A", "B", "C"]
    named = assign_speakers(result_of(segment), turns, names={0: "Alice"})
    assert [s.speaker for s in named.segments] == ["A", "Alice", "B"]
    assert speaker_labels([2, 0, 1], {0, 1, 2, 4}, {}) == {2: "A", 0: "B", 1: "C", 4: "D"}  # silent ones last


def test_a_word_in_a_pause_goes_to_the_nearest_turn_and_a_segment_without_words_to_most_of_its_time():
    with_words = Segment(0, 0.0, 3.0, " x y", words=words((" x", 0.2, 0.8), (" y", 2.1, 2.3)))
    without = Segment(1, 3.0, 8.0, " z")
    turns = [SpeakerTurn(0.0, 1.0, 0), SpeakerTurn(2.5, 3.5, 1), SpeakerTurn(4.0, 8.0, 0)]
    labelled = assign_speakers(result_of(with_words, without), turns)
    assert [(s.text, s.speaker) for s in labelled.segments] == [(" x", "A"), (" y", "B"), (" z", "A")]
    assert labelled.segments[2].words is None


def test_no_turns_leave_the_result_as_it_was():
    result = result_of(Segment(0, 0.0, 1.0, " a", words=words((" a", 0.0, 1.0))))
    assert assign_speakers(result, []) is result


def test_logprobs_are_cut_where_the_text_is():
    tokens = [TokenLogprob(t, -0.1, list(t.encode())) for t in (" Hel", "lo", ".", " Hi", "!")]
    cut = _cut_logprobs(tokens, [" Hello.", " Hi!"])
    assert [[t.token for t in piece] for piece in cut] == [[" Hel", "lo", "."], [" Hi", "!"]]


# --- known speakers ---------------------------------------------------------------------------------------
def unit(*values):
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_known_speakers_name_their_best_match_and_unmatched_keep_letters():
    voices = np.array([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])
    references = np.array(
        [unit(0.1, 1, 0), unit(1, 0.1, 0.1), unit(-1, -1, 0)]
    )  # the last one speaks not at all
    assert name_speakers(voices, references, ["Bob", "Ann", "Nobody"], 0.75) == {1: "Bob", 0: "Ann"}
    both_like_one = np.array([unit(1, 0.05, 0), unit(1, 0, 0.05)])
    assert len(name_speakers(voices, both_like_one, ["P", "Q"], 0.75)) == 1  # one name per speaker at most


# --- refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, param",
    [
        (dict(num_speakers=0), "num_speakers"),
        (dict(num_speakers=21), "num_speakers"),
        (dict(num_speakers=2.5), "num_speakers"),
        (dict(num_speakers=True), "num_speakers"),
        (dict(num_speakers=2, max_speakers=3), "num_speakers"),
        (dict(min_speakers=4, max_speakers=2), "min_speakers"),
        (dict(max_speakers=0), "max_speakers"),
    ],
)
def test_bad_speaker_counts_are_refused_naming_the_field(options, param):
    with pytest.raises(InvalidRequest) as refused:
        DiarizationOptions(**options)
    assert refused.value.param == param


@pytest.mark.parametrize(
    "speakers, options, param",
    [
        ([("Ann", 1.0)], {}, "known_speaker_references"),
        ([("Ann", 11.0)], {}, "known_speaker_references"),
        ([("Ann", 3.0), ("Ann", 3.0)], {}, "known_speaker_names"),
        ([(" ", 3.0)], {}, "known_speaker_names"),
        ([(f"P{i}", 3.0) for i in range(5)], {}, "known_speaker_names"),
        ([("Ann", 3.0), ("Bob", 3.0)], dict(num_speakers=1), "known_speaker_names"),
    ],
)
def test_unusable_known_speakers_are_refused(speakers, options, param):
    known = tuple(
        KnownSpeaker(name, np.zeros(int(seconds * SR), dtype=np.float32)) for name, seconds in speakers
    )
    with pytest.raises(SpeakerReferenceError) as refused:
        DiarizationOptions(known_speakers=known, **options)
    assert refused.value.param == param and isinstance(refused.value, InvalidRequest)


def test_a_reference_clip_without_speech_is_refused():
    from engine.diarization.known import reference_voices

    hum = (0.01 * np.sin(2 * np.pi * 50 * np.arange(3 * SR) / SR)).astype(np.float32)
    with pytest.raises(SpeakerReferenceError, match="less than 1 s of speech") as refused:
        reference_voices(TinyEncoder(fits=64), [KnownSpeaker("Ann", hum)], step=SR)
    assert refused.value.param == "known_speaker_references"


def test_a_recording_without_speech_gets_no_speakers():
    from engine.diarization import diarize

    silence = np.zeros(5 * SR, dtype=np.float32)
    result = result_of(Segment(0, 0.0, 1.0, " a", words=words((" a", 0.0, 1.0))))
    assert diarize(silence, result, DiarizationOptions(), TinyEncoder(fits=64)) is result


def test_the_asked_range_reaches_clustering():
    assert DiarizationOptions().speaker_range == (1, 20)
    assert DiarizationOptions(num_speakers=3).speaker_range == (3, 3)
    assert DiarizationOptions(min_speakers=2).speaker_range == (2, 20)
    assert DiarizationOptions(max_speakers=4).speaker_range == (1, 4)


# --- windows, memory, batches -----------------------------------------------------------------------------
def test_windows_stay_inside_their_region_and_a_short_region_is_tiled():
    windows = plan_windows([(0, 4000), (10000, 50000)], window=16000, step=8000)
    assert windows[0] == Window(0, 4000, 0)
    assert [(w.start, w.end) for w in windows[1:]] == [
        (10000, 26000),
        (18000, 34000),
        (26000, 42000),
        (34000, 50000),
    ]
    audio = np.arange(60000, dtype=np.float32)
    samples = window_samples(audio, windows[:1], 16000)
    assert samples.shape == (1, 16000) and samples[0, 4000] == 0.0 and samples[0, 4001] == 1.0


def test_the_window_batch_fits_the_free_gpu_memory():
    cuda = torch.device("cuda")  # only its type is read: the memory comes from `read`

    def memory(free_mb, cached_mb=0.0, total_mb=8000.0):
        return lambda device: GpuMemory(free_mb, total_mb, cached_mb)

    assert fit_window_batch(256, 1.0, cuda, read=memory(256 + 100)) == 100
    assert fit_window_batch(256, 1.0, cuda, read=memory(100, cached_mb=256 + 20)) == 120  # its cache counts
    assert fit_window_batch(256, 1.0, cuda, read=memory(10_000)) == 256  # never above the asked
    assert (
        fit_window_batch(256, 8.0, cuda, read=memory(50)) == 1
    )  # one, to fail clearly if even that does not fit
    assert (
        fit_window_batch(256, 1.0, cuda, threshold_mb=7000, read=memory(4000)) == 256
    )  # 4000 used, 3000 left
    assert fit_window_batch(256, 1.0, cuda, threshold_mb=4300, read=memory(4000)) == 44
    assert fit_window_batch(64, 1.0, torch.device("cpu"), read=memory(0)) == 64


class TinyEncoder(SpeakerEncoder):
    """Embeds a window as (mean, 1) normalised; out of memory above `fits` windows at once."""

    name, window_samples, embedding_dim = "speaker-encoder-test", 1600, 2

    def __init__(self, fits: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.fits, self.batches = fits, []

    def embed(self, windows):
        self.batches.append(len(windows))
        if len(windows) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        raw = torch.stack([windows.mean(1), torch.ones(len(windows))], 1)
        return raw / raw.norm(dim=1, keepdim=True)


def test_out_of_memory_halves_the_window_batch_and_one_window_too_many_is_refused():
    audio = np.ones(SR * 4, dtype=np.float32)
    windows = plan_windows([(0, len(audio))], 1600, 800)
    encoder = TinyEncoder(fits=10)
    embeddings = embed_windows(encoder, audio, windows, max_batch=64)
    assert embeddings.shape == (len(windows), 2) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)
    assert encoder.batches[:4] == [64, 32, 16, 8] and max(encoder.batches[4:]) <= 8
    with pytest.raises(WindowTooLarge):
        embed_windows(TinyEncoder(fits=0), audio, windows, max_batch=4)


# --- clustering and turns ---------------------------------------------------------------------------------
def voices(counts, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 32))
    rows = np.concatenate(
        [
            centre + spread * np.linalg.norm(centre) / np.sqrt(32) * rng.normal(size=(n, 32))
            for centre, n in zip(centres, counts)
        ]
    )
    truth = np.repeat(np.arange(len(counts)), counts)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), truth


def same_partition(a, b) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("counts", [[40, 25, 30], [60], [30, 30, 30, 30, 8], [5, 4]], ids=str)
def test_speakers_are_counted_and_separated(counts):
    embeddings, truth = voices(counts)
    labels = cluster(embeddings, 1, 20, merge_similarity=0.75, window_similarity=0.6)
    assert same_partition(labels, truth)
    given = cluster(embeddings, len(counts), len(counts), merge_similarity=0.75, window_similarity=0.6)
    assert same_partition(given, truth)


def test_a_handful_of_stray_windows_is_no_speaker_of_its_own():
    embeddings, truth = voices([50, 50, 2])
    labels = cluster(embeddings, 1, 20, merge_similarity=0.75, window_similarity=0.6)
    assert labels.max() + 1 == 2 and same_partition(labels[:100], truth[:100])


def test_windows_shorter_than_a_window_join_a_speaker_but_never_form_one():
    embeddings, truth = voices([30, 30, 3])  # the last three: a third voice, heard only in short regions
    whole = np.arange(len(embeddings)) < 60
    labels = cluster(embeddings, 1, 20, merge_similarity=0.75, window_similarity=0.6, whole=whole)
    assert labels.max() + 1 == 2 and same_partition(labels[:60], truth[:60])
    centres = np.array([unit(*embeddings[:60][labels[:60] == c].mean(0)) for c in (0, 1)])
    assert (
        labels[60:].tolist() == (embeddings[60:] @ centres.T).argmax(1).tolist()
    )  # each to its nearest voice


def test_a_short_change_inside_a_region_is_smoothed_but_a_short_region_is_kept():
    # region 0: 6 s, windows 1.5 s every 0.5 s, one window in the middle voting for speaker 1
    windows = plan_windows([(0, 6 * SR), (7 * SR, int(7.4 * SR))], int(1.5 * SR), SR // 2)
    labels = np.zeros(len(windows), dtype=int)
    labels[4] = 1
    labels[-1] = 1  # the 0.4 s region
    turns = turns_from_windows([(0, 6 * SR), (7 * SR, int(7.4 * SR))], windows, labels)
    assert [(t.start, t.end, t.speaker) for t in turns] == [(0.0, 6.0, 0), (7.0, 7.4, 1)]


def test_a_real_change_inside_a_region_is_found_near_where_it_happens():
    region = [(0, 8 * SR)]
    windows = plan_windows(region, int(1.5 * SR), SR // 2)
    labels = np.array([0 if w.end <= 4.5 * SR else 1 for w in windows])  # the change at ~4 s
    turns = turns_from_windows(region, windows, labels)
    assert [t.speaker for t in turns] == [0, 1] and abs(turns[0].end - 4.0) <= 0.5


# --- the benchmark's scoring ------------------------------------------------------------------------------
def test_der_counts_misses_false_alarms_and_confusion_after_the_best_mapping():
    from bench.der import der

    reference = [(0.0, 10.0, "ann"), (10.0, 20.0, "bob"), (18.0, 20.0, "ann")]  # 2 s of overlap
    assert der(reference, [(0.0, 10.0, "x"), (10.0, 20.0, "y"), (18.0, 20.0, "x")], collar=0.0).der == 0.0
    one_at_a_time = der(reference, [(0.0, 10.0, "x"), (10.0, 20.0, "y")], collar=0.0)
    assert one_at_a_time.missed == pytest.approx(100 * 2 / 22, abs=0.1) and one_at_a_time.confusion == 0.0
    swapped = der(reference, [(0.0, 20.0, "x")], collar=0.0)
    assert swapped.confusion == pytest.approx(100 * 8 / 22, abs=0.1)  # x is ann (12 s shared): 10-18 s is bob
    assert swapped.missed == pytest.approx(100 * 2 / 22, abs=0.1)
    late = der([(0.0, 10.0, "ann")], [(0.2, 10.0, "x")], collar=0.25)
    assert late.der == 0.0  # inside the collar
    assert der([(0.0, 10.0, "ann")], [(0.0, 10.0, "x"), (12.0, 13.0, "y")], collar=0.0).false_alarm == 10.0


# --- the speaker model in the model cache -----------------------------------------------------------------
def test_a_speaker_encoder_pushes_no_whisper_model_out_and_is_released_like_one():
    from engine.models.cache import ModelCache

    cache = ModelCache(lambda name: torch.nn.Linear(2, 2), capacity=1, device=torch.device("cpu"))
    with cache.lease("tiny.en"):
        pass
    with cache.lease("speaker-encoder-ge2e"):
        assert cache.is_loaded("tiny.en")
    assert {info.name for info in cache.loaded()} == {"tiny.en", "speaker-encoder-ge2e"}
    with cache.lease("speaker-encoder-ge2e"):
        report = cache.release()
    assert report.released == ["tiny.en"] and report.deferred == ["speaker-encoder-ge2e"]
    assert not cache.loaded()  # the one in use went when its lease returned
    with cache.lease("speaker-encoder-ge2e"):
        pass
    assert cache.release_idle(0.0) == ["speaker-encoder-ge2e"]


# --- real weights -----------------------------------------------------------------------------------------
def ge2e():
    if importlib.util.find_spec("resemblyzer") is None:
        pytest.skip(
            "speaker encoder weights absent: pip install --no-deps resemblyzer==0.1.4 "
            "(requirements-speakers.txt)"
        )
    from engine.device.cuda import plan_device
    from engine.models.cache import load_model

    return load_model("speaker-encoder-ge2e", plan_device("cpu", 0, "fp32"))


def test_the_ge2e_encoder_loads_through_the_model_cache_and_tells_voices_apart():
    from conftest import JFK, SHARED_AUDIO, shared_audio
    from engine import load_audio

    encoder = ge2e()
    assert encoder.name == "speaker-encoder-ge2e" and not encoder.training
    jfk = load_audio(shared_audio(JFK))
    other = load_audio(shared_audio(SHARED_AUDIO / "librispeech" / "2412-153948-0000.flac"))
    windows = torch.from_numpy(
        np.stack(
            [
                jfk[SR : SR + 25600],
                jfk[5 * SR : 5 * SR + 25600],
                other[SR : SR + 25600],
                other[5 * SR : 5 * SR + 25600],
            ]
        )
    )
    with torch.inference_mode():
        e = encoder.embed(windows).numpy()
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > 0.7 and e[2] @ e[3] > 0.7 and max(e[0] @ e[2], e[1] @ e[3]) < 0.6


@pytest.fixture(scope="module")
def diarized(tiny_en_model_dir):
    """Each conversation transcribed (without and with word timestamps, timed) and diarized with GE2E."""
    from bench import conversations
    from bench.speakers import in_job_thread
    from conftest import fast_settings
    from engine import Engine
    from engine.audio.vad import speech_probabilities
    from engine.diarization import find_speakers

    encoder = ge2e()
    if not conversations.available():
        pytest.skip("../shared/audio is absent: the conversations are built from its recordings")
    built = {name: conversations.CONVERSATIONS[name]() for name in ("meeting", "exchange")}
    out = {}
    settings = fast_settings(tiny_en_model_dir, vad=True, max_new_tokens=224)
    with Engine(settings) as engine:
        engine.transcribe(built["exchange"].audio[: 10 * SR], word_timestamps=True)  # numba's DTW compiled
        for name, conversation in built.items():
            started = time.perf_counter()
            engine.transcribe(conversation.audio)
            plain_s = time.perf_counter() - started
            worded = engine.transcribe(conversation.audio, word_timestamps=True)
            probs = speech_probabilities(conversation.audio)  # the job's own, in the engine
            known = tuple(KnownSpeaker(n, a) for n, a in conversation.enrolment.items())
            runs = {}
            for count in ("given", "estimated"):
                options = DiarizationOptions(
                    num_speakers=len(conversation.speakers) if count == "given" else None,
                    known_speakers=known,
                )

                def work(conversation=conversation, options=options, probs=probs, worded=worded):
                    found = find_speakers(conversation.audio, options, encoder, probs)
                    return found, assign_speakers(worded, found.turns, found.names)

                runs[count] = in_job_thread(work)
            out[name] = (conversation, plain_s, worded, runs)
    return out


@pytest.mark.parametrize("name, limit", [("meeting", 8.0), ("exchange", 15.0)])
@pytest.mark.parametrize("count", ["given", "estimated"])
def test_diarization_error_rate_and_speaker_count_on_real_speech(diarized, name, limit, count):
    from bench.der import der

    conversation, _, _, runs = diarized[name]
    (found, _), _ = runs[count]
    score = der(
        [(s.start, s.end, s.speaker) for s in conversation.reference],
        [(t.start, t.end, str(t.speaker)) for t in found.turns],
        collar=0.125,
    )
    print(
        f"{name}, count {count}: DER {score.der:.1f} % (missed {score.missed:.1f}, "
        f"false {score.false_alarm:.1f}, "
        f"confused {score.confusion:.1f}), {found.speakers} speakers of {len(conversation.speakers)}"
    )
    assert score.der <= limit
    assert found.speakers == len(conversation.speakers)


def test_known_speakers_are_named_for_most_of_their_speech(diarized):
    from bench.speakers import named_share

    conversation, _, _, runs = diarized["meeting"]
    for count in ("given", "estimated"):
        (found, labelled), _ = runs[count]
        assert sorted(found.names.values()) == sorted(conversation.enrolment)
        known = [s for s in conversation.speakers if s in conversation.enrolment]
        others = [s for s in conversation.speakers if s not in conversation.enrolment]
        assert named_share(conversation, found.turns, found.names, known) >= 90.0
        assert named_share(conversation, found.turns, found.names, others) <= 5.0
        assert {s.speaker for s in labelled.segments} == {"lj", "1089", "A", "B", "C"}


@pytest.mark.parametrize("name", ["meeting", "exchange"])
def test_the_words_are_the_job_s_own_and_no_segment_mixes_two_speakers(diarized, name):
    _, _, worded, runs = diarized[name]
    (_, labelled), _ = runs["estimated"]

    def word_list(result):
        return [(w.word, w.start, w.end, w.probability) for s in result.segments for w in s.words]

    assert word_list(labelled) == word_list(worded) and labelled.text == worded.text
    assert len(labelled.segments) >= len(worded.segments)
    for segment in labelled.segments:
        assert segment.speaker and {w.speaker for w in segment.words} == {segment.speaker}
    assert [s.id for s in labelled.segments] == list(range(len(labelled.segments)))


@pytest.mark.parametrize("name", ["meeting", "exchange"])
def test_diarization_itself_costs_under_30_percent_of_the_transcription(diarized, name):
    # The word timings diarization needs are the decoder's and are measured by bench.speakers, not here
    _, plain_s, _, runs = diarized[name]
    (_, _), seconds = runs["estimated"]
    print(f"{name}: transcription {plain_s:.1f} s, diarization {seconds:.2f} s")
    assert seconds <= 0.3 * plain_s
