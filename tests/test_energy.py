"""engine.audio.energy and engine.audio.sections on synthetic audio: levels, silence, pauses to cut in."""

import numpy as np

from engine.audio.energy import frame_energy, is_silent
from engine.audio.sections import plan_sections

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


def cut_s(audio) -> float:
    first, second = plan_sections(audio, 2, min_section_s=20)
    assert first.start == 0 and first.end == second.start and second.end == len(audio)
    return first.end / SR


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


def test_empty_and_short_recordings():
    assert plan_sections(np.zeros(0, np.float32), 8) == []
    (one,) = plan_sections(noise(59.0), 8)
    assert (one.start, one.end) == (0, 59 * SR)


def test_a_pause_above_background_noise_is_still_a_pause():
    # Speech stand-in at -10 dBFS over a -45 dBFS hiss; the gap leaves only the hiss.
    audio = bursts_with_gaps(50.0, [(27.0, 27.8)]) + noise(50.0, amplitude=0.0056, seed=1)
    assert 27.1 <= cut_s(audio) <= 27.7


def test_the_longest_pause_near_the_target_wins():
    audio = bursts_with_gaps(50.0, [(22.0, 22.3), (26.0, 27.5), (28.0, 28.4)])
    assert 26.5 <= cut_s(audio) <= 27.0


def test_without_any_pause_the_quietest_point_near_the_target():
    # Only 10 dB quieter for a moment: not a pause, but the least bad place to cut.
    audio = noise(50.0)
    audio[int(27.0 * SR) : int(27.8 * SR)] *= 0.3
    assert 27.0 <= cut_s(audio) <= 27.8


def test_an_hour_is_cut_into_even_sections_in_pauses():
    gaps = [(t, t + 0.4) for t in np.arange(7.0, 3600.0, 9.0)]
    audio = bursts_with_gaps(3600.0, gaps)
    sections = plan_sections(audio, 16)
    assert len(sections) == 16
    lengths = [s.duration_s for s in sections]
    assert max(lengths) - min(lengths) < 3600 / 16 / 2
    for section in sections[1:]:
        assert any(a <= section.start_s <= b for a, b in gaps), (
            f"cut at {section.start_s:.2f} s is not in a pause"
        )
