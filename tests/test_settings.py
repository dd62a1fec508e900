"""config.yaml as a typed object: names, comments, one-line errors, overrides."""

import logging
import re

import pytest

from conftest import ROOT
from engine import Settings, SettingsError, load_settings
from engine.device.cuda import plan_device

REQUIRED_KEYS = [
    "model",
    "device",
    "device_index",
    "precision",
    "workers",
    "queue_size",
    "batch_size",
    "condition_on_previous_text",
    "max_new_tokens",
    "language",
    "task",
    "gpu_memory_threshold_mb",
    "idle_release_s",
    "model_cache_size",
]


def test_config_file_has_every_required_key_commented():
    text = (ROOT / "config.yaml").read_text()
    settings = load_settings(ROOT / "config.yaml", environ={})
    assert (
        settings.workers == 2
        and settings.condition_on_previous_text is True
        and settings.model_cache_size == 2
    )
    keys = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+):", line)
        if match:
            keys[match.group(1)] = line
    assert set(REQUIRED_KEYS) <= set(keys)
    assert set(keys) == set(Settings.model_fields), "config.yaml and Settings list the same keys"
    uncommented = [k for k, line in keys.items() if "#" not in line]
    assert not uncommented, f"keys without a comment: {uncommented}"


@pytest.mark.parametrize(
    "values, names",
    [
        ({"wokers": 2}, ["wokers", "workers"]),
        ({"workers": -1}, ["workers"]),
        ({"workers": "two"}, ["workers"]),
        ({"precision": "fp8"}, ["precision", "fp16", "fp32"]),
        ({"device": "tpu"}, ["device", "auto", "cuda", "cpu"]),
        ({"task": "summarise"}, ["task", "transcribe", "translate"]),
        ({"language": "klingon"}, ["language"]),
        ({"condition_on_previous_text": "sometimes"}, ["condition_on_previous_text"]),
        ({"queue_size": 0}, ["queue_size"]),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_key(tmp_path, values, names):
    config = tmp_path / "config.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    with pytest.raises(SettingsError) as error:
        load_settings(config, environ={})
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_missing_file_and_broken_yaml_are_clear(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(SettingsError, match="YAML"):
        load_settings(broken, environ={})


def test_environment_and_flags_override_the_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("workers: 3\nmodel: small\n")
    settings = load_settings(config, environ={"WHISPER_APP_WORKERS": "4", "WHISPER_APP_MODEL": "/m/1.pt"})
    assert settings.workers == 4 and settings.model == "/m/1.pt"
    settings = load_settings(
        config, overrides={"workers": 5, "port": None}, environ={"WHISPER_APP_WORKERS": "4"}
    )
    assert settings.workers == 5 and settings.port == 7860  # an unset flag (None) does not override
    with pytest.raises(SettingsError, match="workers"):
        load_settings(config, environ={"WHISPER_APP_WORKERS": "-2"})


def test_language_names_are_normalised():
    assert load_settings(None, {"language": "English"}, environ={}).language == "English"
    from engine import normalise_language

    assert normalise_language("English") == "en" and normalise_language("auto") is None


def test_auto_device_without_gpu_falls_back_to_fp32_and_says_so(caplog):
    caplog.set_level(logging.INFO)
    plan = plan_device("auto", 0, "fp16")
    assert str(plan.device) == "cpu" and plan.precision == "fp32"
    assert any("No NVIDIA GPU" in r.getMessage() for r in caplog.records)


def test_relative_data_dir_lies_beside_the_config_file_whatever_the_working_directory(tmp_path, monkeypatch):
    """`cd /tmp && python /srv/app/app.py` must find the same jobs database as a start from /srv/app."""
    config = tmp_path / "conf" / "config.yaml"
    config.parent.mkdir()
    config.write_text("data_dir: jobs-data\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_settings(config, environ={}).data_dir == str(config.parent / "jobs-data")
    config.write_text("workers: 1\n")  # the default, "data", too
    assert load_settings(config, environ={}).data_dir == str(config.parent / "data")
    # From the environment or a flag, a relative path means the shell's working directory.
    env = {"WHISPER_APP_DATA_DIR": "mine"}
    assert load_settings(config, environ=env).data_dir == str(elsewhere / "mine")
    assert load_settings(config, {"data_dir": str(tmp_path / "abs")}, environ={}).data_dir == str(
        tmp_path / "abs"
    )


def test_job_store_defaults_to_sqlite_and_takes_a_postgresql_url_from_the_environment(tmp_path):
    defaults = load_settings(None, environ={})
    assert defaults.job_store == "" and defaults.job_lease_s == 30
    # Kept as text (not parsed as YAML) like the other secrets: a password may hold anything.
    url = "postgresql://stt:s3cr%23t:x@db.internal:5432/stt?sslmode=require"
    settings = load_settings(None, environ={"WHISPER_APP_JOB_STORE": url, "WHISPER_APP_JOB_LEASE_S": "12.5"})
    assert settings.job_store == url and settings.job_lease_s == 12.5
    assert load_settings(None, {"job_store": "postgres:///stt?host=/run/postgresql"}, environ={}).job_store


@pytest.mark.parametrize(
    "url",
    [
        "mysql://stt:hunter2@db/stt",
        "postgresql://stt:hunter2@db",
        "postgresql://stt:hunter2@:5432/stt",
        "postgresql://stt:hunter2@db:port/stt",
        "postgresql://stt:hun#ter2@db/stt",
        "db.internal:5432",
    ],
)
def test_a_bad_job_store_url_is_one_line_that_never_shows_its_password(tmp_path, url):
    config = tmp_path / "config.yaml"
    config.write_text(f"job_store: '{url}'\n")
    with pytest.raises(SettingsError) as error:
        load_settings(config, environ={})
    message = str(error.value)
    assert "\n" not in message and "job_store: must be empty" in message
    assert "postgresql://user:password@" in message
    assert "hunter2" not in message and "hun#ter2" not in message and "ter2" not in message


def test_a_lease_must_be_positive():
    with pytest.raises(SettingsError, match="job_lease_s"):
        load_settings(None, {"job_lease_s": 0}, environ={})
