"""The errors a recording can cause; they live in engine.errors with the rest of the family and
are re-exported here, beside the audio code that raises them."""

from engine.errors import (  # noqa: F401
    INSTALL_HINT,
    AudioError,
    AudioFileNotFound,
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    FfmpegMissing,
    NotAudio,
    TruncatedAudio,
)
