"""The errors a recording can cause, each with a message for the person who sent it.

Kept apart from `engine.audio.files` so front ends can name them without reading the decoding code.
"""
from __future__ import annotations

from typing import Optional

INSTALL_HINT = (
    "Install ffmpeg (it includes ffprobe) and restart the app: "
    "Debian/Ubuntu `sudo apt-get install ffmpeg`; macOS `brew install ffmpeg`; "
    "conda `conda install -c conda-forge ffmpeg`; "
    "Windows `winget install ffmpeg` or `choco install ffmpeg`."
)


class AudioError(Exception):
    """A file that cannot become audio; str(e) is a sentence for the person who sent it."""


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

    def __init__(self, message: str, *, declared_s: Optional[float] = None, decoded_s: Optional[float] = None):
        super().__init__(message)
        self.declared_s = declared_s  # length the file claims, None when it does not say
        self.decoded_s = decoded_s  # length that could actually be decoded


class AudioTooShort(AudioError):
    """Shorter than MIN_DURATION_S: too little to hear a word in, so Whisper could only guess."""


class AudioTooLong(AudioError):
    """Longer than the configured maximum; detected without decoding the whole file."""

    def __init__(self, message: str, *, duration_s: Optional[float] = None, max_duration_s: Optional[float] = None):
        super().__init__(message)
        self.duration_s = duration_s  # declared length, or a lower bound when decoding had to stop
        self.max_duration_s = max_duration_s
