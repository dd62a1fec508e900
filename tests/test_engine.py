"""The engine end to end on random checkpoints and real recordings: structure, never words."""

import subprocess
import time

import numpy as np
import pytest

from conftest import JFK, LONG_11_MIN, SHARED_AUDIO, fast_settings, shared_audio
from engine import (
    AudioTooLong,
    EmptyAudio,
    Engine,
    InvalidRequest,
    JobStatus,
    NotAudio,
    TruncatedAudio,
    load_audio,
)
from engine.audio.sections import plan_sections
from output import FORMATS, write_files

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    with Engine(fast_settings(micro_checkpoint, workers=2, queue_size=4, batch_size=8)) as engine:
        yield engine


def assert_well_formed(result, duration):
    assert result.duration == pytest.approx(duration, abs=0.05)
    previous_end = 0.0
    for i, segment in enumerate(result.segments):
        assert segment.id == i
        assert 0.0 <= segment.start <= segment.end <= result.duration + 1e-6
        assert segment.start >= previous_end - 1e-6, "segments are in order and do not overlap"
        assert segment.text.strip()
        previous_end = segment.end


def test_jfk_end_to_end_with_every_format(engine, tmp_path):
    result = engine.transcribe(shared_audio(JFK))
    assert_well_formed(result, 11.0)
    assert result.segments and result.windows == 1 and result.tokens_decoded > 0
    assert len(result.language) in (2, 3, 5)  # a whisper language code
    files = write_files(result, tmp_path, "jfk")
    assert sorted(files) == sorted(FORMATS) and all(p.stat().st_size > 0 for p in files.values())
    assert engine.status().model.state == "ready"


def test_eleven_minutes_end_to_end_covers_the_audio(engine):
    path = shared_audio(LONG_11_MIN)
    audio = load_audio(path)
    sections = plan_sections(audio, 8)
    job = engine.submit(path)
    seen = []
    while not job.done():
        seen.append(job.progress)
        time.sleep(0.05)
    result = job.result()
    assert_well_formed(result, len(audio) / 16000)
    assert len(sections) == 8 and result.windows >= 23
    assert seen == sorted(seen) and job.progress == 1.0
    assert job.seconds_total == pytest.approx(result.duration, abs=0.1)  # counted in 10 ms mel frames
    assert len(set(seen)) >= 4, "progress moves with every step of the decode loop"
    # Every section contributes text inside its own stretch of the recording.
    for section in sections:
        inside = [
            s for s in result.segments if section.start_s <= s.start < section.start_s + section.duration_s
        ]
        assert inside, f"no text from the section at {section.start_s:.1f} s"
    assert result.segments[0].start < 30 and result.segments[-1].end > result.duration - 30


def test_v3_dimensions_128_mels_and_51866_tokens(v3micro_checkpoint):
    with Engine(fast_settings(v3micro_checkpoint)) as engine:
        result = engine.transcribe(shared_audio(JFK))
    assert_well_formed(result, 11.0)
    assert result.segments


def test_silence_gives_an_empty_transcript_without_decoding(engine, tmp_path):
    result = engine.transcribe(np.zeros(16000 * 75, dtype=np.float32))
    assert result.segments == [] and result.text == "" and result.windows == 0
    hiss = tmp_path / "hiss.wav"  # -70 dBFS noise: silence to a listener
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anoisesrc=a=0.0003:d=20", "-ar", "44100", str(hiss)],
        check=True,
    )
    assert engine.transcribe(hiss).segments == []


def test_language_task_and_prompt_reach_the_decoder(engine):
    path = shared_audio(JFK)
    plain = engine.transcribe(path, language="en")
    assert plain.language == "en" and plain.task == "transcribe"
    assert engine.transcribe(path, language="German").language == "de"
    translated = engine.transcribe(path, task="translate", language="en")
    assert translated.task == "translate"


def test_the_initial_prompt_is_the_first_windows_context(micro_checkpoint, monkeypatch):
    import whisper

    from engine.decoding.greedy_decode import GreedyDecode

    prompts = []
    admit = GreedyDecode.admit

    def admit_and_record(decode, mel, row_prompts, *args, **kwargs):  # the rows joining the running decode
        prompts.extend(row_prompts)
        return admit(decode, mel, row_prompts, *args, **kwargs)

    monkeypatch.setattr(GreedyDecode, "admit", admit_and_record)
    with Engine(fast_settings(micro_checkpoint, language="en")) as engine:
        engine.transcribe(shared_audio(JFK), initial_prompt="Ask not what your country can do")
    expected = whisper.tokenizer.get_tokenizer(True).encode(" Ask not what your country can do")
    assert prompts[0] == expected


def test_word_timestamps_lie_inside_their_segments(engine):
    result = engine.transcribe(shared_audio(JFK), word_timestamps=True)
    words = [w for s in result.segments for w in s.words]
    assert words
    for segment in result.segments:
        for word in segment.words:
            assert segment.start - 0.01 <= word.start <= word.end <= segment.end + 0.01


def test_bad_inputs_are_refused_before_queueing(engine, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 50)
    with pytest.raises(NotAudio):
        engine.submit(text)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudio):
        engine.submit(empty)
    with pytest.raises(InvalidRequest, match="language"):
        engine.submit(shared_audio(JFK), language="klingon")
    with pytest.raises(InvalidRequest, match="model"):
        engine.submit(JFK, model="someone-elses-model")
    with pytest.raises(InvalidRequest, match="task"):
        engine.submit(JFK, task="summarise")
    assert engine.worker.queue_length == 0


def test_too_long_is_refused_from_the_header(micro_checkpoint):
    with Engine(fast_settings(micro_checkpoint, max_audio_duration_s=5)) as engine:
        with pytest.raises(AudioTooLong, match="accepts recordings of up to"):
            engine.submit(shared_audio(JFK))


def test_truncated_file_fails_its_job_with_a_clear_error(engine, tmp_path):
    flac = tmp_path / "cut.flac"
    data = shared_audio(JFK).read_bytes()
    flac.write_bytes(data[: len(data) // 2])
    job = engine.submit(flac)
    with pytest.raises(TruncatedAudio):
        job.result(timeout=60)
    assert job.status is JobStatus.FAILED
    assert engine.transcribe(JFK).segments  # the engine keeps serving


def test_status_reports_device_models_and_queue(engine):
    status = engine.status()
    assert status.device == "cpu, fp32" and status.workers == 2 and status.queue_size == 4
    assert [m.name for m in status.loaded] == [engine.settings.model]
