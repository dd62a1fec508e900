"""Any file ffmpeg can read becomes float32 16 kHz mono, or an error a person can act on.

Uploads and browser microphone recordings (webm/opus or wav, often 48 kHz stereo) arrive in
every shape. `load_audio` decodes them the way `whisper.audio.load_audio` does (ffmpeg
through a pipe, resampled and down-mixed by ffmpeg itself) but, instead of one RuntimeError
for every failure, it raises an `AudioError` subclass whose message says what is wrong with
the file and what to do about it, so the UI can show it as is.

Rules, in the order they are applied:
- path does not exist: `AudioFileNotFound` (both an `AudioError` and a `FileNotFoundError`).
- 0-byte file: `EmptyAudio`.  ffmpeg or ffprobe not on PATH: `FfmpegMissing`.
- ffprobe cannot read it (text, random bytes): `NotAudio`; but an MP4/M4A whose index ("moov
  atom") is missing, or a file ffprobe recognised and then hit "End of file" in, which is
  what an interrupted recording or download leaves behind: `TruncatedAudio`.
- readable but without an audio track (image, text, silent video): `NotAudio`.
- declared length above `max_duration_s`: `AudioTooLong`, from ffprobe alone, before any
  decoding.  When the file does not declare a trustworthy length, decoding stops at
  `max_duration_s + 1` seconds and the same error is raised if that much came out.
- ffmpeg fails after some output, or the decoded length falls short of the declared length
  by more than max(0.5 s, 1 %): `TruncatedAudio`.  Files that do not declare their length
  (ogg, webm from a browser, raw streams) cannot be checked this way; what is there loads.
- no samples at all: `TruncatedAudio` when the file declared a length or ffmpeg reported
  decode errors (damaged), `EmptyAudio` otherwise.
- shorter than `MIN_DURATION_S` (0.1 s, OpenAI's limit), by its header or once decoded:
  `AudioTooShort`; Whisper would answer a click with an invented word.
- silence is not an error: it loads as (near-)zero samples; the engine decides what to do.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np

from engine.audio import SAMPLE_RATE

# The errors live in engine.errors; they are re-exported here, where callers look for them.
from engine.audio.errors import (
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
from engine.audio.ffprobe import (
    SUPPORTED_HINT,
    AudioInfo,
    PathLike,
    check_ffmpeg,
    existing_nonempty_file,
    ffmpeg_input,
    ffmpeg_missing,
    ffmpeg_reason,
    file_name,
    probe,
)

# what callers take from here: this module's functions, ffprobe's and the audio errors
__all__ = [
    "INSTALL_HINT",
    "MIN_DURATION_S",
    "SAMPLE_RATE",
    "AudioError",
    "AudioFileNotFound",
    "AudioInfo",
    "AudioTooLong",
    "AudioTooShort",
    "EmptyAudio",
    "FfmpegMissing",
    "NotAudio",
    "TruncatedAudio",
    "check_audio",
    "check_ffmpeg",
    "check_length",
    "load_audio",
    "probe",
    "too_short",
]

BYTES_PER_SAMPLE = 2  # ffmpeg writes signed 16-bit little-endian PCM into the pipe
INT16_SCALE = 32768.0  # int16 -> [-1, 1)

# Decoders legitimately end a little before or after the declared length (mp3 and AAC
# priming, opus pre-skip: tens of milliseconds), so only a clear shortfall means truncation.
TRUNCATION_TOLERANCE_S = 0.5
MIN_DURATION_S = 0.1  # OpenAI's API refuses shorter audio too
TOO_SHORT_TOLERANCE_S = 0.001  # a 0.1 s file may decode to a sample or two less
TRUNCATION_TOLERANCE_FRACTION = 0.01


def check_audio(path: PathLike, max_duration_s: float | None = None) -> AudioInfo:
    """Everything that can be told from the headers: the file exists, is not empty, has a
    sound track, and (when it declares its length) is not longer than max_duration_s.
    Cheap, so a server can refuse a bad upload before it takes a place in the queue."""
    if max_duration_s is not None and not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive or None, got {max_duration_s!r}")
    info = probe(path)  # also checks that the file exists, is not empty and ffmpeg is there
    if not info.has_audio:
        if info.has_video:
            raise NotAudio(
                f"'{file_name(path)}' is a video without a sound track, so there is nothing to "
                "transcribe. Upload a file that has sound."
            )
        raise NotAudio(
            f"'{file_name(path)}' has no sound track, so there is nothing to transcribe. {SUPPORTED_HINT}"
        )
    if max_duration_s is not None and info.duration_s is not None and info.duration_s > max_duration_s:
        raise _too_long(os.fspath(path), info.duration_s, max_duration_s, at_least=False)
    if info.duration_s is not None and info.duration_s + TOO_SHORT_TOLERANCE_S < MIN_DURATION_S:
        raise too_short(file_name(path), info.duration_s)
    return info


def check_length(audio: np.ndarray, name: str = "the recording") -> None:
    """Refuse samples shorter than MIN_DURATION_S (AudioTooShort), as OpenAI's API does:
    given a click or a tenth of a second, Whisper invents a word ("you")."""
    duration_s = len(audio) / SAMPLE_RATE
    if duration_s + TOO_SHORT_TOLERANCE_S < MIN_DURATION_S:
        raise too_short(name, duration_s)


def too_short(name: str, duration_s: float) -> AudioTooShort:
    return AudioTooShort(
        f"'{name}' is too short: {duration_s:.2f} s of audio, and the minimum is "
        f"{MIN_DURATION_S} s. Record or upload a longer clip."
    )


def load_audio(
    path: PathLike, max_duration_s: float | None = None, info: AudioInfo | None = None
) -> np.ndarray:
    """Decode the first audio track of `path` to float32 mono at SAMPLE_RATE, values in [-1, 1].

    max_duration_s: refuse longer recordings (AudioTooLong) before spending time and memory
    on them; the check uses the declared length, so a 10-hour file is refused in
    milliseconds. None accepts any length (memory: 6 bytes per sample while converting,
    about 350 MB per hour of audio).

    info: what check_audio said of this file already (a job probes its file once, at submit).

    Raises the AudioError subclasses described in this module's docstring.
    """
    path = os.fspath(path)
    if info is None:
        info = check_audio(path, max_duration_s)
    else:  # it may have gone since (a job waits in the queue): the same error as the probe's
        existing_nonempty_file(path)
    # One second past the limit is enough to prove a file too long when it did not say.
    decode_limit_s = None if max_duration_s is None else max_duration_s + 1
    pcm, returncode, stderr = _decode_pcm16(path, decode_limit_s)
    refusal = _refusal(
        path, info, len(pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE, returncode, stderr, max_duration_s
    )
    if refusal is not None:
        # A raised error's traceback keeps this frame alive for as long as the job's error is
        # kept (a waiting client, the job list): without this it would keep hours of samples.
        del pcm
        raise refusal

    # The int16 view shares the pipe's buffer; astype makes the one float32 copy and the
    # division happens in place, so peak memory is one int16 and one float32 recording.
    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    audio /= INT16_SCALE
    check_length(audio, file_name(path))
    return audio


def _refusal(
    path: str, info: AudioInfo, decoded_s: float, returncode: int, stderr: str, max_duration_s: float | None
) -> AudioError | None:
    """Why the decoded samples cannot be used, or None; given their length only, so that the
    error, once raised, holds no reference to them."""
    reason = ffmpeg_reason(stderr, path)

    if returncode != 0 and decoded_s == 0:
        return NotAudio(
            f"ffmpeg could not decode the sound in '{file_name(path)}' (ffmpeg says: {reason}). "
            f"{SUPPORTED_HINT}"
        )
    if returncode != 0:
        return TruncatedAudio(
            f"'{file_name(path)}' is cut off or damaged: ffmpeg stopped after {_describe_seconds(decoded_s)} "
            f"(ffmpeg says: {reason}). Upload the complete file again.",
            declared_s=info.duration_s,
            decoded_s=decoded_s,
        )
    if decoded_s == 0:
        if (info.duration_s or 0) > TRUNCATION_TOLERANCE_S or reason:
            return TruncatedAudio(
                f"'{file_name(path)}' is cut off or damaged: no sound could be decoded from it"
                + (
                    f" although it should last {_describe_seconds(info.duration_s)}"
                    if info.duration_s
                    else ""
                )
                + (f" (ffmpeg says: {reason})" if reason else "")
                + ". Upload the complete file again.",
                declared_s=info.duration_s,
                decoded_s=0.0,
            )
        return EmptyAudio(
            f"'{file_name(path)}' has an audio track with no sound samples in it. "
            "The recording probably did not start; record or export it again."
        )
    if max_duration_s is not None and decoded_s > max_duration_s:
        return _too_long(path, decoded_s, max_duration_s, at_least=True)
    if info.duration_s is not None and _is_truncated(info.duration_s, decoded_s):
        return TruncatedAudio(
            f"'{file_name(path)}' is cut off or damaged: it should last "
            f"{_describe_seconds(info.duration_s)} but only "
            f"{_describe_seconds(decoded_s)} could be read"
            + (f" (ffmpeg says: {reason})" if reason else "")
            + ". The upload or the recording probably did not finish; upload the complete file again.",
            declared_s=info.duration_s,
            decoded_s=decoded_s,
        )
    return None


def _decode_pcm16(path: str, limit_s: float | None) -> tuple[bytearray, int, str]:
    """Run ffmpeg and collect its s16le output; returns (pcm bytes, exit code, stderr text)."""
    check_ffmpeg()
    command = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "0",
        "-i",
        ffmpeg_input(path),
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
    ]  # the first audio track only, so videos work
    if limit_s is not None:
        command += ["-t", f"{limit_s:.3f}"]
    command += ["-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-"]
    # stderr goes to a file, not a pipe: a damaged file can make ffmpeg print an error per
    # frame, and a full stderr pipe would stall it while we wait on stdout.
    with tempfile.TemporaryFile() as stderr_file:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file
            )
        except FileNotFoundError:
            check_ffmpeg.cache_clear()
            raise ffmpeg_missing(["ffmpeg"]) from None
        pcm = bytearray()  # grows in place: no list of chunks joined into a second copy
        assert process.stdout is not None
        with process.stdout:
            while chunk := process.stdout.read(1 << 20):
                pcm += chunk
        returncode = process.wait()
        stderr_file.seek(0, os.SEEK_END)
        stderr_file.seek(max(0, stderr_file.tell() - 65536))  # the end says why it stopped
        stderr = stderr_file.read().decode("utf-8", errors="replace")
    if len(pcm) % BYTES_PER_SAMPLE:
        del pcm[-1]  # a killed ffmpeg can leave half a sample
    return pcm, returncode, stderr


def _is_truncated(declared_s: float, decoded_s: float) -> bool:
    tolerance_s = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared_s)
    return declared_s - decoded_s > tolerance_s


def _too_long(path: str, duration_s: float, max_duration_s: float, at_least: bool) -> AudioTooLong:
    length = ("more than " if at_least else "") + _describe_seconds(duration_s)
    return AudioTooLong(
        f"'{file_name(path)}' lasts {length}; this server accepts recordings of up to "
        f"{_describe_seconds(max_duration_s)}. Split it into shorter parts, or ask the administrator "
        "to raise "
        "the maximum duration.",
        duration_s=duration_s,
        max_duration_s=max_duration_s,
    )


def _describe_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
