"""engine.chunking on synthetic audio: window plans, silence detection, stitching at the seams."""
import copy

import numpy as np
import pytest

from engine.chunking import Window, frame_energy, is_silent, plan_windows, stitch_segments
from engine.results import Segment, Word

SR = 16000


def noise(seconds: float, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(seconds * SR))) * amplitude).astype(np.float32)


def bursts_with_gaps(seconds: float, gaps: list) -> np.ndarray:
    """Loud noise (speech stand-in) with near-silent gaps at the given (start_s, end_s)."""
    audio = noise(seconds)
    for gap_start, gap_end in gaps:
        audio[int(gap_start * SR) : int(gap_end * SR)] *= 1e-4
    return audio


def assert_well_formed(windows, total, chunk_s=30.0, overlap_s=2.0):
    """The invariants every plan must satisfy."""
    assert windows[0].start == 0 and windows[-1].end == total
    assert windows[0].keep_from == 0.0 and windows[-1].keep_until == total / SR
    for i, w in enumerate(windows):
        assert w.index == i
        assert 0 < w.end - w.start <= round(chunk_s * SR)
        assert w.keep_from < w.keep_until
        # a window keeps only what it actually heard
        assert w.start_s <= w.keep_from and w.keep_until <= w.end_s
    for a, b in zip(windows, windows[1:]):
        assert a.keep_until == b.keep_from  # keep ranges tile [0, duration]
        cut = a.keep_until * SR
        if a.end == b.start:  # a seam in a pause: the windows meet at the cut
            assert a.end == round(cut)
            continue
        assert a.end - b.start == round(overlap_s * SR)  # overlap exactly; union has no gap
        # the overlap is centred on the cut (to the sample)
        assert abs((a.end - cut) - (cut - b.start)) <= 1


def seams_in_pauses(windows) -> int:
    return sum(a.end == b.start for a, b in zip(windows, windows[1:]))


# --- planning -----------------------------------------------------------------------------


def test_empty_audio_has_no_windows():
    assert plan_windows(np.zeros(0, np.float32)) == []


def test_short_recording_is_one_window():
    audio = noise(7.5)
    (w,) = plan_windows(audio)
    assert (w.start, w.end, w.keep_from, w.keep_until) == (0, len(audio), 0.0, 7.5)
    assert w.duration_s == 7.5


def test_exactly_one_chunk_is_one_window():
    audio = noise(30.0)
    (w,) = plan_windows(audio)
    assert (w.start, w.end) == (0, 30 * SR)


def test_just_over_one_chunk_is_two_windows():
    audio = noise(30.01)
    windows = plan_windows(audio)
    assert len(windows) == 2
    assert_well_formed(windows, len(audio))


def test_long_recording_cuts_inside_silent_gaps():
    # 10 minutes; a 0.6 s gap every 4 s, so every 5 s search range holds a whole gap.
    gaps = [(t, t + 0.6) for t in np.arange(3.0, 600.0, 4.0)]
    audio = bursts_with_gaps(600.0, gaps)
    windows = plan_windows(audio)
    assert_well_formed(windows, len(audio))
    for w in windows[:-1]:
        cut = w.keep_until
        assert any(a + 0.1 <= cut <= b - 0.1 for a, b in gaps), f"cut at {cut:.2f}s is not inside a gap"
    # every cut is in a pause, so no audio is decoded twice: the windows advance 28 s each
    # (the latest gap before 30 s), 600 s in 22 windows; 2 s overlaps would need 24
    assert seams_in_pauses(windows) == len(windows) - 1
    assert len(windows) == 22


def test_a_pause_above_background_noise_is_still_a_pause():
    # Speech stand-in at -10 dBFS over a -45 dBFS hiss; the gap leaves only the hiss.
    audio = bursts_with_gaps(50.0, [(27.0, 27.8)]) + noise(50.0, amplitude=0.0056, seed=1)
    first = plan_windows(audio)[0]
    assert 27.1 <= first.keep_until <= 27.7
    assert first.end == round(first.keep_until * SR)  # no overlap needed


def test_a_dip_that_is_not_a_pause_keeps_the_overlap():
    # Only 10 dB quieter for a moment: a word could run through it, so the windows overlap.
    audio = noise(50.0)
    audio[int(27.0 * SR) : int(27.8 * SR)] *= 0.3
    a, b = plan_windows(audio)
    assert 27.1 <= a.keep_until <= 27.7
    assert a.end - b.start == 2 * SR


def test_the_latest_pause_wins_over_a_deeper_earlier_one():
    # Digital silence at 25 s, a -50 dB pause at 28 s: both are pauses; the later one gives
    # the longer window.
    audio = bursts_with_gaps(50.0, [(28.0, 28.6)])
    audio[int(25.0 * SR) : int(25.6 * SR)] = 0.0
    first = plan_windows(audio)[0]
    assert 28.1 <= first.keep_until <= 28.5


def test_cut_prefers_the_latest_gap_in_the_search_range():
    # Search range of the first window is [25, 30] s; two gaps in it, the later one wins.
    audio = bursts_with_gaps(50.0, [(24.5, 25.3), (27.0, 27.8)])
    first = plan_windows(audio)[0]
    assert 27.1 <= first.keep_until <= 27.7


def test_gap_outside_search_range_is_ignored():
    # A gap at 10 s is too early to help; with no pause in [25, 30] the windows overlap
    # and the cut goes to the latest point that leaves room for it.
    audio = bursts_with_gaps(50.0, [(10.0, 11.0)])
    first = plan_windows(audio)[0]
    assert first.keep_until == 29.0 and first.end == 30 * SR


def test_continuous_loud_audio_cuts_at_latest_allowed_point():
    t = np.arange(int(95.0 * SR)) / SR
    audio = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    windows = plan_windows(audio)
    assert_well_formed(windows, len(audio))
    for w in windows[:-1]:
        assert w.end - w.start == 30 * SR  # every window as long as allowed
        assert w.keep_until * SR == w.end - SR  # cut at window end minus half the overlap


def test_zero_overlap_cuts_exactly_at_window_boundary():
    audio = noise(100.0)
    windows = plan_windows(audio, overlap_s=0.0)
    assert_well_formed(windows, len(audio), overlap_s=0.0)
    for a, b in zip(windows, windows[1:]):
        assert a.end == b.start == a.keep_until * SR


def test_other_chunk_and_overlap_sizes():
    audio = bursts_with_gaps(200.0, [(t, t + 0.5) for t in range(5, 200, 9)])
    windows = plan_windows(audio, chunk_length_s=20.0, overlap_s=3.0, search_s=8.0)
    assert_well_formed(windows, len(audio), chunk_s=20.0, overlap_s=3.0)


def test_silent_recording_plans_full_length_windows():
    audio = np.zeros(int(75.0 * SR), np.float32)
    windows = plan_windows(audio)
    assert_well_formed(windows, len(audio))
    assert all(w.end - w.start == 30 * SR for w in windows[:-1])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(overlap_s=30.0),
        dict(overlap_s=31.0),
        dict(overlap_s=-1.0),
        dict(chunk_length_s=-30.0),
        dict(chunk_length_s=0.0),
        dict(search_s=-1.0),
        dict(sample_rate=0),
        dict(overlap_s=float("nan")),
    ],
)
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        plan_windows(noise(1.0), **kwargs)


def test_stereo_audio_is_rejected():
    with pytest.raises(ValueError):
        plan_windows(np.zeros((2, SR), np.float32))


def test_an_hour_plans_without_copying_windows():
    audio = np.zeros(3600 * SR, np.float32)
    audio[:: 7 * SR] = 0.5  # a click every 7 s, so the energy is not flat everywhere
    windows = plan_windows(audio)
    assert_well_formed(windows, len(audio))
    assert np.shares_memory(windows[5].samples(audio), audio)


# --- energy and silence -------------------------------------------------------------------


def test_frame_energy_is_rms_per_frame_including_partial_tail():
    audio = np.concatenate([np.full(320, 0.5), np.full(320, -0.25), np.full(100, 1.0)]).astype(np.float32)
    np.testing.assert_allclose(frame_energy(audio), [0.5, 0.25, 1.0], rtol=1e-6)
    assert frame_energy(np.zeros(0, np.float32)).shape == (0,)


def test_frame_energy_accepts_int16_without_overflow():
    audio = np.full(640, 30000, np.int16)
    np.testing.assert_allclose(frame_energy(audio), [30000.0, 30000.0], rtol=1e-6)


def test_is_silent():
    assert is_silent(np.zeros(SR, np.float32))
    assert is_silent(np.zeros(0, np.float32))
    assert is_silent(noise(1.0, amplitude=1e-4))  # about -80 dBFS
    t = np.arange(SR) / SR
    speech_level = (0.1 * np.sin(2 * np.pi * 300.0 * t)).astype(np.float32)  # about -23 dBFS
    assert not is_silent(speech_level)
    # one short loud burst in a quiet second still counts as speech
    quiet_with_word = noise(1.0, amplitude=1e-4)
    quiet_with_word[8000:8800] = speech_level[:800]
    assert not is_silent(quiet_with_word)


# --- stitching ----------------------------------------------------------------------------


def seg(start, end, text, words=None):
    return Segment(id=99, start=start, end=end, text=text, tokens=[1, 2], words=words)


def two_windows():
    """Windows [0, 30] and [28, 55] s with the cut at 29 s, as plan_windows makes them."""
    return [Window(0, 0, 30 * SR, 0.0, 29.0), Window(1, 28 * SR, 55 * SR, 29.0, 55.0)]


def texts(segments):
    return [s.text for s in segments]


def assert_absolute_and_increasing(segments, duration):
    assert [s.id for s in segments] == list(range(len(segments)))
    previous_end = 0.0
    for s in segments:
        assert 0.0 <= s.start <= s.end <= duration
        assert s.start >= previous_end
        previous_end = s.end


def test_single_window_passes_through():
    window = Window(0, 0, 12 * SR, 0.0, 12.0)
    segments = [seg(0.0, 4.0, " Hello there."), seg(4.0, 11.5, " How are you?")]
    out = stitch_segments([window], [segments], 12.0)
    assert [(s.id, s.start, s.end, s.text) for s in out] == [(0, 0.0, 4.0, " Hello there."), (1, 4.0, 11.5, " How are you?")]


def test_window_relative_times_become_absolute():
    windows = two_windows()
    out = stitch_segments(
        windows,
        [[seg(0.0, 10.0, " a"), seg(10.0, 28.5, " b")], [seg(1.5, 12.0, " c"), seg(12.0, 26.9, " d")]],
        55.0,
    )
    assert texts(out) == [" a", " b", " c", " d"]
    assert [(s.start, s.end) for s in out] == [(0.0, 10.0), (10.0, 28.5), (29.5, 40.0), (40.0, 54.9)]
    assert_absolute_and_increasing(out, 55.0)


def test_seam_inside_a_word_keeps_exactly_one_copy():
    # No pause at the cut (29 s): " straddle" really spans [28.5, 31.0]. Window 0 hears it only
    # up to its end (30 s), window 1 hears all of it; their times differ slightly.
    windows = two_windows()
    first = [seg(20.0, 28.5, " before"), seg(28.5, 30.0, " straddle")]  # midpoint 29.25
    second = [seg(0.0, 0.48, " fore"), seg(0.52, 3.0, " straddle"), seg(3.0, 9.0, " after")]  # 29.76
    out = stitch_segments(windows, [first, second], 55.0)
    assert texts(out) == [" before", " straddle", " after"]
    assert (out[1].start, out[1].end) == (28.52, 31.0)
    assert_absolute_and_increasing(out, 55.0)


def test_straddling_segment_kept_from_whichever_side_holds_its_midpoint():
    # " straddle" really spans [27.0, 29.9]; window 1 hears it only from its start (28 s).
    windows = two_windows()
    first = [seg(27.0, 29.9, " straddle")]  # midpoint 28.45: window 0 keeps it
    second = [seg(0.0, 1.95, " straddle"), seg(1.95, 5.0, " after")]  # midpoint 28.975: dropped
    out = stitch_segments(windows, [first, second], 55.0)
    assert texts(out) == [" straddle", " after"]
    assert (out[0].start, out[0].end) == (27.0, 29.9)
    assert_absolute_and_increasing(out, 55.0)


def test_overlap_with_disagreeing_boundaries_loses_and_repeats_nothing():
    # Speech: "one two three" until 28.6 s, a pause, "four five six" from 29.4 s. The cut is at
    # 29 s. Window 0 hears "four five" cut off by its end; window 1 hears "three" cut off by
    # its start; their timestamps disagree by a few tens of ms.
    windows = two_windows()
    first = [seg(20.0, 24.0, " one two"), seg(24.0, 28.6, " three"), seg(29.4, 30.0, " four five")]
    second = [seg(0.0, 0.64, " three"), seg(1.42, 4.0, " four five six"), seg(4.0, 8.0, " seven")]
    out = stitch_segments(windows, [first, second], 55.0)
    assert "".join(texts(out)) == " one two three four five six seven"
    assert_absolute_and_increasing(out, 55.0)


def test_back_to_back_seams_around_a_short_window():
    # The middle window keeps only [29, 30.5]: two cuts 1.5 s apart.
    windows = [
        Window(0, 0, 30 * SR, 0.0, 29.0),
        Window(1, 28 * SR, int(31.5 * SR), 29.0, 30.5),
        Window(2, int(29.5 * SR), int(45.0 * SR), 30.5, 45.0),
    ]
    first = [seg(25.0, 28.8, " alpha"), seg(28.8, 30.0, " beta")]  # beta: midpoint 29.4 -> window 1's
    middle = [seg(0.0, 0.8, " alpha"), seg(0.8, 2.0, " beta"), seg(2.2, 3.5, " gamma")]  # gamma: 30.85
    last = [seg(0.0, 0.5, " beta"), seg(0.7, 2.1, " gamma"), seg(2.1, 6.0, " delta")]
    out = stitch_segments(windows, [first, middle, last], 45.0)
    assert texts(out) == [" alpha", " beta", " gamma", " delta"]
    assert_absolute_and_increasing(out, 45.0)


def test_overlapping_times_become_monotonic():
    windows = two_windows()
    first = [seg(25.0, 28.9, " one")]  # midpoint 26.95: kept
    second = [seg(0.7, 3.0, " two")]  # starts at 28.7, before " one" ended; midpoint 29.85
    out = stitch_segments(windows, [first, second], 55.0)
    assert [(s.start, s.end) for s in out] == [(25.0, 28.9), (28.9, 31.0)]


def test_times_clipped_to_window_and_duration():
    windows = [Window(0, 0, 30 * SR, 0.0, 29.0), Window(1, 28 * SR, int(40.5 * SR), 29.0, 40.5)]
    first = [seg(20.0, 29.5, " one")]
    second = [seg(5.0, 14.0, " two"), seg(13.0, 30.0, " invented over the padding")]
    out = stitch_segments(windows, [first, second], 40.5)
    assert texts(out) == [" one", " two"]
    assert out[-1].end == 40.5
    assert_absolute_and_increasing(out, 40.5)


def test_empty_windows_and_blank_text_are_skipped():
    windows = [
        Window(0, 0, 30 * SR, 0.0, 29.0),
        Window(1, 28 * SR, 58 * SR, 29.0, 57.0),  # silent: the engine skipped it
        Window(2, 56 * SR, 70 * SR, 57.0, 70.0),
    ]
    out = stitch_segments(windows, [[seg(1.0, 3.0, " hi"), seg(3.0, 4.0, "  ")], [], [seg(2.0, 5.0, " bye")]], 70.0)
    assert texts(out) == [" hi", " bye"]
    assert (out[1].start, out[1].end) == (58.0, 61.0)
    assert stitch_segments(windows, [[], [], []], 70.0) == []
    assert stitch_segments([], [], 0.0) == []


def test_word_times_shift_with_their_segment():
    windows = two_windows()
    words = [Word(" four", 1.5, 2.0, 0.9), Word(" five", 2.0, 2.6, 0.8)]
    out = stitch_segments(windows, [[], [seg(1.5, 2.6, " four five", words=words)]], 55.0)
    assert [(w.word, w.start, w.end) for w in out[0].words] == [(" four", 29.5, 30.0), (" five", 30.0, 30.6)]


def test_inputs_are_not_mutated():
    windows = two_windows()
    words = [Word(" b", 10.0, 11.0, 0.9)]
    per_window = [[seg(0.0, 10.0, " a"), seg(10.0, 28.5, " b", words=words)], [seg(1.5, 12.0, " c")]]
    before = copy.deepcopy(per_window)
    out = stitch_segments(windows, per_window, 55.0)
    assert per_window == before
    assert all(s is not o for s in out for ws in per_window for o in ws)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        stitch_segments(two_windows(), [[]], 55.0)


def test_planned_windows_stitch_a_synthetic_transcript():
    # End to end on a plan: every window "transcribes" the 1 s words it fully or partly hears.
    audio = noise(125.0)
    windows = plan_windows(audio)
    per_window = []
    for w in windows:
        heard = []
        for second in range(125):
            start, end = max(second, w.start_s), min(second + 1, w.end_s)
            if end > start:
                heard.append(seg(start - w.start_s, end - w.start_s, f" w{second}"))
        per_window.append(heard)
    out = stitch_segments(windows, per_window, 125.0)
    assert texts(out) == [f" w{i}" for i in range(125)]
    assert_absolute_and_increasing(out, 125.0)
