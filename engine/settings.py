"""The configuration file as one typed, validated object.

Every key lives in `config.yaml` (documented there); environment variables named
`WHISPER_APP_<KEY>` (e.g. `WHISPER_APP_MODEL=/models/large-v3.pt`) and command-line flags
override the file. Anything wrong fails at start-up with one line that names the key and
what it accepts, never with a traceback later.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.audio.sections import MIN_SECTION_S
from engine.errors import SettingsError

ENV_PREFIX = "WHISPER_APP_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- model and device -------------------------------------------------------------
    # a whisper model name (downloaded once to the whisper cache), a .pt checkpoint's path or a
    # faster-whisper (CTranslate2) directory
    model: str = "large-v3"
    # further models users may pick; `model` is always allowed
    models: list[str] = Field(default_factory=list)
    # where named models are downloaded; None = whisper's cache (~/.cache/whisper)
    download_root: str | None = None
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto = cuda when an NVIDIA GPU is visible, else cpu
    # which GPU(s) decode: an index (cuda:N, counted after CUDA_VISIBLE_DEVICES), a list, or "all";
    # each gets a resident model replica and a decode loop of its own
    device_index: int | list[int] | Literal["all"] = 0
    # without a GPU: model replicas on the CPU, each with its decode loop (they share the cores)
    cpu_replicas: int = Field(1, ge=1, le=16)
    precision: Literal["fp16", "fp32", "int8"] = "fp16"  # resident weights; fp16 halves GPU memory
    # PYTORCH_CUDA_ALLOC_CONF unless the environment sets it
    cuda_alloc_conf: str | None = "max_split_size_mb:128"
    # models kept resident at once (LRU); each large-v3 costs ~3.1 GB in fp16
    model_cache_size: int = Field(2, ge=1)
    warm_up: bool = True  # run a tiny decode after loading so the first request is not slow
    idle_release_s: float = Field(0, ge=0)  # free model memory after this many idle seconds; 0 = never
    # release = drop weights; offload = move them to host RAM
    idle_action: Literal["release", "offload"] = "release"
    # the speaker encoder diarization uses, cached beside the Whisper models: GE2E (default; ~0.6 s of
    # CPU per minute of audio) or CAM++ (stronger on similar voices, ~7x the CPU time)
    speaker_model: Literal["speaker-encoder-ge2e", "speaker-encoder-campplus"] = "speaker-encoder-ge2e"

    # --- work queue ---------------------------------------------------------------------
    # jobs processed at once on each device (GPU or CPU replica); their windows share that device's
    # decode loop, audio decoding overlaps
    workers: int = Field(2, ge=1)
    queue_size: int = Field(16, ge=1)  # jobs waiting beyond those running; more are refused with "queue full"

    # --- decoding ------------------------------------------------------------------------
    # 30 s windows decoded together (a recording is cut into this many sections); more = faster,
    # more GPU memory
    batch_size: int = Field(8, ge=1)
    # shortest section a recording is cut into; shorter = more rows of one job side by side, more
    # partly empty windows
    min_section_s: float = Field(MIN_SECTION_S, ge=30)
    # each window sees its section's previous text (whisper's default); false = fewer repetition loops, less
    # consistent style
    condition_on_previous_text: bool = True
    # cap on tokens decoded per window (whisper's default: 224)
    max_new_tokens: int = Field(224, ge=1, le=448)
    language: str | None = None  # language code or name; null = detect from the first window with speech
    # translate = speech in any language to English text
    task: Literal["transcribe", "translate"] = "transcribe"
    # context for the first window of every section (names, spelling, style)
    initial_prompt: str | None = None
    # fallback ladder
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # re-decode a window hotter when its text is this repetitive
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0  # ... or when its average token log-probability is below this
    no_speech_threshold: float | None = 0.6  # treat a window as silent above this no-speech probability
    # windows whose loudest 20 ms is below this dBFS are skipped as silence
    silence_threshold_db: float = -50.0
    # with word timestamps: drop improbable segments with this many seconds of silence around them (whisper's
    # option; drops real words too, so off)
    hallucination_silence_threshold: float | None = Field(None, gt=0)
    # decode only what Silero's voice activity detector calls speech (music, noise, long silences never reach
    # the model)
    vad: bool = True
    vad_threshold: float = Field(0.5, gt=0, lt=1)  # speech probability above which a 32 ms frame is speech
    vad_min_silence_s: float = Field(2.0, ge=0.1)  # gaps without speech shorter than this are decoded anyway
    # audio kept around each stretch of speech, so no word is clipped
    vad_speech_pad_s: float = Field(0.4, ge=0)

    # --- limits and monitoring ----------------------------------------------------------
    # warn when a GPU uses more than this; null = never
    gpu_memory_threshold_mb: float | None = Field(None, gt=0)
    max_audio_duration_s: float = Field(6 * 3600, gt=0)  # longer recordings are refused before decoding
    max_upload_mb: float = Field(1024, gt=0)  # larger uploads are refused (HTTP 413)
    # an upload sending nothing this long is dropped (HTTP 408)
    upload_idle_timeout_s: float = Field(30, gt=0)
    page_files_max_mb: float = Field(8192, gt=0)  # the page's uploads and downloads kept at once; more is 507
    # /healthz, /metrics warn when less is free under data_dir; 0 = never
    min_free_disk_mb: float = Field(1024, ge=0)

    # --- subtitles (srt, vtt; output.subtitles) -----------------------------------------
    # characters per line; only a single longer word exceeds it
    subtitle_max_line_width: int = Field(42, ge=1)
    subtitle_max_lines: int = Field(2, ge=1)  # lines per cue
    subtitle_max_cue_s: float = Field(7.0, gt=0)  # longest time one cue stays on screen
    # true = whisper's plain files: one cue per segment, one line, no limits
    subtitle_per_segment: bool = False

    # --- web page and HTTP --------------------------------------------------------------
    host: str = "127.0.0.1"  # 0.0.0.0 to serve the local network
    port: int = Field(7860, ge=1, le=65535)
    share: bool = False  # ask Gradio for a public *.gradio.live link
    auth: str | None = None  # "user:password" protects the page; env WHISPER_APP_AUTH also works
    # one key, named "default": required as "Authorization: Bearer KEY" on /v1 routes when set
    api_key: str | None = None
    # name -> key; each key sees only the jobs it created
    api_keys: dict[str, str] = Field(default_factory=dict)
    protect_metrics: bool = False  # also require the API key on /metrics and /healthz
    # jobs database and uploaded audio for durable jobs; relative = beside the config file
    data_dir: str = "data"
    # "" = the SQLite database in data_dir (one server); postgresql://user:password@host:port/db = one
    # queue in PostgreSQL that several servers (replicas) share. Messages never show its password.
    job_store: str = ""
    # a replica's claim on a running job: another takes it this long after
    job_lease_s: float = Field(30, gt=0)
    # None = with a PostgreSQL job_store, recordings travel in the database (replicas share nothing
    # else); a folder every replica mounts (NFS, a shared volume) = recordings are kept there instead
    shared_audio_dir: str | None = None
    job_retention_days: float = Field(7, gt=0)  # finished jobs and their files are deleted after this
    # A job the server stopped in (killed, out of memory) this many times is failed at the next
    # start instead of run again, so one that kills the process cannot do it at every start.
    max_attempts: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures: must be a non-empty list of numbers >= 0, e.g. [0.0, 0.2, 0.4]")
        if self.auth is not None and ":" not in self.auth:
            raise ValueError('auth: must look like "user:password"')
        keys = self.named_api_keys
        if any(not name.strip() or not key.strip() for name, key in keys.items()):
            raise ValueError("api_keys: every name and every key must be non-empty text")
        if self.api_key and "default" in self.api_keys:
            raise ValueError('api_keys: the name "default" is taken by api_key; rename that entry')
        if len(set(keys.values())) != len(keys):
            raise ValueError(
                "api_keys: two names share one key; each key must be different (it says whose jobs are whose)"
            )
        indices = [self.device_index] if isinstance(self.device_index, int) else self.device_index
        if indices != "all" and (
            not indices or any(i < 0 for i in indices) or len(set(indices)) != len(indices)
        ):
            raise ValueError(
                'device_index: must be a GPU index (0), a list of different ones ([0, 1]) or "all"'
            )
        if self.job_store:
            check_job_store(self.job_store)
        if self.language is not None:
            from engine.languages import normalise_language

            normalise_language(self.language)  # raises ValueError naming the accepted values
        return self

    @property
    def named_api_keys(self) -> dict[str, str]:
        """Every API key by its owner's name: `api_key` (as "default") and `api_keys`; {} = the
        API is open."""
        return {**({"default": self.api_key} if self.api_key else {}), **self.api_keys}

    @property
    def allowed_models(self) -> list[str]:
        """The default model first, then the others the config lets users pick."""
        return list(dict.fromkeys([self.model, *self.models]))


JOB_STORE_SCHEMES = ("postgresql", "postgres")


def check_job_store(url: str) -> None:
    """A ValueError naming `job_store` unless `url` is a PostgreSQL URL with a host (or a host= socket
    folder) and a database. The message never shows the password: it goes to logs and terminals."""
    parts = urlsplit(url.strip())
    try:
        port_ok = parts.port is None or parts.port > 0  # a port that is not a number raises
    except ValueError:
        port_ok = False
    host = parts.hostname or "host=" in parts.query
    if parts.scheme in JOB_STORE_SCHEMES and host and parts.path.strip("/") and port_ok:
        return
    # Everything between the user's ':' and the last '@' (a password with an unencoded '#' or '/'
    # is not one to urlsplit, but is still a password).
    shown = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):.*@", r"\1:***@", url.strip())
    raise ValueError(
        "job_store: must be empty (SQLite in data_dir) or a PostgreSQL URL with a host and a "
        "database, like postgresql://user:password@host:5432/db, special characters in the "
        f"password percent-encoded (# as %23) (got {shown!r})"
    )


def _describe(error: ValidationError, source: str) -> str:
    """Turn pydantic's report into one line naming the key and what it accepts."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    kind = first["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, Settings.model_fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{key}'{hint}; allowed keys: {', '.join(Settings.model_fields)}"
    message = first["msg"]
    if kind == "value_error":  # our own checks already start with the key's name
        return f"{source}: {message.removeprefix('Value error, ')}"
    if kind == "literal_error":
        field = Settings.model_fields[key].annotation
        allowed = getattr(field, "__args__", ())
        message = "must be one of " + ", ".join(str(a) for a in allowed)
    return f"{source}: {key}: {message} (got {first.get('input')!r})"


def _env_overrides(environ: Mapping[str, str]) -> dict:
    """WHISPER_APP_<KEY>=value, the value parsed as YAML so numbers and lists keep their types."""
    overrides = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            value = yaml.safe_load(raw) if raw.strip() else None
            # A model path or an auth string must stay text even if it looks like a number.
            text = ("model", "auth", "api_key", "initial_prompt", "job_store", "shared_audio_dir")
            overrides[key] = raw if key in text else value
    return overrides


def load_settings(
    path: str | os.PathLike | None = "config.yaml",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the YAML file (None = defaults only), then environment variables, then `overrides`.

    Overrides whose value is None are ignored, so unset command-line flags can be passed as is.

    A relative `data_dir` from the file (or the default) lies beside the file, so the jobs
    database is the same whichever folder the server is started from; one from the
    environment or an override is relative to the working directory, as a shell user means it.
    """
    source = str(path) if path is not None else "settings"
    values: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise SettingsError(f"{source}: configuration file not found")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SettingsError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{source}: must be a mapping of key: value lines")
        values.update(loaded or {})
    from_file_data_dir = values.get("data_dir", Settings.model_fields["data_dir"].default)
    values.update(_env_overrides(os.environ if environ is None else environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, source)) from None
    base = (
        Path(path).resolve().parent
        if path is not None and settings.data_dir == from_file_data_dir
        else Path.cwd()
    )
    return settings.model_copy(update={"data_dir": str(base / Path(settings.data_dir).expanduser())})
