"""JobOptions: one typed request, built at the boundary, stored as JSON, read back typed."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import JFK, fast_settings, shared_audio
from engine import Engine, InvalidRequest, JobOptions, ModelNotOffered
from engine.audio import ffprobe
from jobs.manager import JobManager
from jobs.sqlite_store import SqliteJobStore


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    with Engine(fast_settings(micro_checkpoint, language="en")) as engine:
        yield engine


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"task": "summarise"}, "task"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": ()}, "temperature"),
        ({"max_new_tokens": 449}, "max_new_tokens"),
        ({"language": "klingon"}, "language"),
    ],
)
def test_a_bad_option_is_refused_when_the_options_are_built_naming_it(fields, param):
    with pytest.raises(InvalidRequest) as refused:
        JobOptions(**fields)
    assert refused.value.param == param and str(refused.value).startswith(f"{param}: ")


def test_options_are_kept_in_one_form_whatever_the_boundary_sent():
    assert JobOptions(language="French").language == "fr"  # a name or a code: the code is kept
    assert JobOptions(temperature=0.4).temperature == (0.4,)  # one value or a ladder: a tuple
    assert JobOptions(initial_prompt="").initial_prompt is None  # an empty prompt is no prompt


def test_stored_options_say_only_what_was_asked_and_read_back_the_same():
    options = JobOptions(model="tiny.en", language="en", temperature=(0.0, 0.5), word_timestamps=True)
    stored = json.loads(json.dumps(options.to_json()))
    assert stored == {
        "model": "tiny.en",
        "language": "en",
        "temperature": [0.0, 0.5],
        "word_timestamps": True,
    }
    assert JobOptions.from_json(stored) == options
    # a row written by a newer version, with an option this one does not know, still runs
    assert JobOptions.from_json({**stored, "speakers": 3}) == options


def test_the_engine_names_the_model_by_its_id_and_fills_the_task(engine):
    default = engine.model_names.default_id
    for asked in (None, "whisper-1", default):  # the default, an OpenAI alias, the id itself
        assert engine.prepare(JobOptions(model=asked)) == JobOptions(model=default, task="transcribe")
    with pytest.raises(ModelNotOffered) as refused:
        engine.prepare(JobOptions(model="/models/secret/large-v3.pt"))
    assert refused.value.param == "model" and "/models/secret" not in str(refused.value)


def test_a_job_is_stored_with_its_prepared_options_and_its_file_is_probed_once(engine, tmp_path, monkeypatch):
    probes = []
    run_tool = ffprobe._run_tool

    def counting(command):
        if command[0] == "ffprobe":
            probes.append(command)
        return run_tool(command)

    monkeypatch.setattr(ffprobe, "_run_tool", counting)
    jobs = JobManager(engine, SqliteJobStore(tmp_path)).start()
    try:
        handle = jobs.submit(
            shared_audio(JFK), JobOptions(model="whisper-1", temperature=0.0), name="jfk.flac"
        )
        result = handle.result(timeout=120)
        assert result.model == engine.model_names.default_id
        assert len(probes) == 1  # at submit; the job reads the file by what that probe said
        row = (
            sqlite3.connect(tmp_path / "jobs.sqlite3")
            .execute("SELECT options FROM jobs WHERE id = ?", (handle.id,))
            .fetchone()
        )
        assert json.loads(row[0]) == {
            "model": engine.model_names.default_id,
            "task": "transcribe",
            "temperature": [0.0],
        }
        assert jobs.get(handle.id).record.options == JobOptions(
            model=engine.model_names.default_id, task="transcribe", temperature=(0.0,)
        )
    finally:
        jobs.close()


def test_diarization_options_survive_the_job_row_and_bad_ones_name_the_field():
    import json

    import numpy as np

    from engine import InvalidRequest, JobOptions, SpeakerReference

    clip = (0.1 * np.sin(np.arange(3 * 16000) * 0.05)).astype(np.float32)
    asked = JobOptions(
        diarize=True, max_speakers=3, known_speakers=(SpeakerReference.from_audio("Ada", clip),)
    )
    stored = JobOptions.from_json(json.loads(json.dumps(asked.to_json())))
    assert stored == asked and stored.known_speakers[0].name == "Ada"
    assert np.abs(stored.known_speakers[0].audio() - clip).max() < 1e-4
    assert JobOptions().to_json() == {}  # a job without diarization stores nothing new
    for fields, param in [
        ({"num_speakers": 2}, "num_speakers"),  # without diarize
        ({"diarize": True, "num_speakers": 0}, "num_speakers"),
        ({"diarize": True, "min_speakers": 5, "max_speakers": 2}, "min_speakers"),
        ({"diarize": True, "known_speakers": (SpeakerReference.from_audio("Ada", clip[:8000]),)}, None),
    ]:
        with pytest.raises(InvalidRequest) as refused:
            JobOptions(**fields)
        assert refused.value.param == (param or "known_speaker_references")
