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

import functools
import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

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

BYTES_PER_SAMPLE = 2  # ffmpeg writes signed 16-bit little-endian PCM into the pipe
INT16_SCALE = 32768.0  # int16 -> [-1, 1)

# Decoders legitimately end a little before or after the declared length (mp3 and AAC
# priming, opus pre-skip: tens of milliseconds), so only a clear shortfall means truncation.
TRUNCATION_TOLERANCE_S = 0.5
MIN_DURATION_S = 0.1  # OpenAI's API refuses shorter audio too
TOO_SHORT_TOLERANCE_S = 0.001  # a 0.1 s file may decode to a sample or two less
TRUNCATION_TOLERANCE_FRACTION = 0.01

# WAV writers that stream (ffmpeg into a pipe, some recorders) leave these in the size field
# because they cannot seek back; they mean "unknown", not "4 GiB".
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)

PathLike = str | os.PathLike  # what load_audio and probe accept


@dataclass(frozen=True)
class AudioInfo:
    # length of the first audio track as the file declares it; None when it does not say
    # (browser webm, piped streams) or ffprobe could only guess it from the bitrate
    duration_s: float | None
    sample_rate: int | None  # of the first audio track, before resampling
    channels: int | None  # of the first audio track, before down-mixing
    codec: str | None  # ffprobe's codec_name of the first audio track, e.g. "opus", "pcm_s16le"
    has_audio: bool  # at least one audio track; the first is the one load_audio decodes
    has_video: bool = False  # a moving-picture track (cover art attached to a song does not count)
    container: str = ""  # ffprobe's format_name, e.g. "wav", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"


@functools.cache
def check_ffmpeg() -> None:
    """Raise FfmpegMissing unless both ffmpeg and ffprobe are on PATH.

    lru_cache keeps only the positive answer (a raised exception is never cached), so a
    server that starts before ffmpeg is installed recovers once it is; tests that change
    PATH call `check_ffmpeg.cache_clear()`.
    """
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise _ffmpeg_missing(missing)


def _ffmpeg_missing(tools: list[str]) -> FfmpegMissing:
    verb = "is" if len(tools) == 1 else "are"
    return FfmpegMissing(
        f"This server cannot read audio because {' and '.join(tools)} {verb} not installed "
        f"or not on the PATH. {INSTALL_HINT}"
    )


def probe(path: PathLike) -> AudioInfo:
    """Describe the file with ffprobe, reading only its headers (fast even for hours of audio).

    Raises AudioFileNotFound, EmptyAudio (0 bytes), NotAudio (ffprobe cannot read it),
    TruncatedAudio (an MP4/M4A missing its index) or FfmpegMissing. A readable file without
    an audio track is returned with has_audio=False; load_audio turns that into NotAudio.
    """
    path = _existing_nonempty_file(path)
    check_ffmpeg()
    command = [
        "ffprobe",
        "-hide_banner",
        "-v",
        "warning",
        "-of",
        "json",
        "-show_format",
        "-show_streams",
        _ffmpeg_input(path),
    ]
    result = _run_tool(command)
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.returncode != 0:
        reason = _ffmpeg_reason(stderr, path)
        if "moov atom not found" in stderr:
            raise TruncatedAudio(
                f"'{_name(path)}' is an MP4/M4A file whose index is missing, which is what an interrupted "
                "recording or an unfinished download leaves behind. Upload the complete file again."
            )
        if reason.endswith("End of file"):  # ffmpeg knew the format, then the file ran out
            raise TruncatedAudio(
                f"'{_name(path)}' ends before any sound: the file is cut off. Upload the complete file again."
            )
        raise NotAudio(
            f"'{_name(path)}' is not an audio or video file that ffmpeg can read "
            f"(ffmpeg says: {reason}). {_SUPPORTED_HINT}"
        )
    try:
        described = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError as error:  # should not happen with -of json; still no traceback
        raise NotAudio(f"ffprobe gave an unreadable description of '{_name(path)}' ({error}).") from None

    streams: list[dict] = described.get("streams", [])
    container_info: dict = described.get("format", {})
    container = str(container_info.get("format_name", ""))
    audio_streams = [s for s in streams if s.get("codec_type") == "audio"]
    has_video = any(
        s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic") for s in streams
    ) and not _is_picture_or_text(container)
    if not audio_streams:
        return AudioInfo(None, None, None, None, has_audio=False, has_video=has_video, container=container)

    audio = audio_streams[0]
    duration_s = _declared_duration(
        audio,
        container_info,
        only_stream=len(streams) == 1,
        guessed="Estimating duration from bitrate" in stderr,
    )
    if container == "wav":
        # ffmpeg clamps a WAV's length to what is on disk, which hides truncation; the
        # header's data size is what the writer meant to write.
        duration_s = _wav_declared_duration(path) or duration_s
    return AudioInfo(
        duration_s=duration_s,
        sample_rate=_int_or_none(audio.get("sample_rate")),
        channels=_int_or_none(audio.get("channels")),
        codec=audio.get("codec_name"),
        has_audio=True,
        has_video=has_video,
        container=container,
    )


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
                f"'{_name(path)}' is a video without a sound track, so there is nothing to "
                "transcribe. Upload a file that has sound."
            )
        raise NotAudio(
            f"'{_name(path)}' has no sound track, so there is nothing to transcribe. {_SUPPORTED_HINT}"
        )
    if max_duration_s is not None and info.duration_s is not None and info.duration_s > max_duration_s:
        raise _too_long(os.fspath(path), info.duration_s, max_duration_s, at_least=False)
    if info.duration_s is not None and info.duration_s + TOO_SHORT_TOLERANCE_S < MIN_DURATION_S:
        raise too_short(_name(path), info.duration_s)
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
        _existing_nonempty_file(path)
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
    check_length(audio, _name(path))
    return audio


def _refusal(
    path: str, info: AudioInfo, decoded_s: float, returncode: int, stderr: str, max_duration_s: float | None
) -> AudioError | None:
    """Why the decoded samples cannot be used, or None; given their length only, so that the
    error, once raised, holds no reference to them."""
    reason = _ffmpeg_reason(stderr, path)

    if returncode != 0 and decoded_s == 0:
        return NotAudio(
            f"ffmpeg could not decode the sound in '{_name(path)}' (ffmpeg says: {reason}). {_SUPPORTED_HINT}"
        )
    if returncode != 0:
        return TruncatedAudio(
            f"'{_name(path)}' is cut off or damaged: ffmpeg stopped after {_describe_seconds(decoded_s)} "
            f"(ffmpeg says: {reason}). Upload the complete file again.",
            declared_s=info.duration_s,
            decoded_s=decoded_s,
        )
    if decoded_s == 0:
        if (info.duration_s or 0) > TRUNCATION_TOLERANCE_S or reason:
            return TruncatedAudio(
                f"'{_name(path)}' is cut off or damaged: no sound could be decoded from it"
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
            f"'{_name(path)}' has an audio track with no sound samples in it. "
            "The recording probably did not start; record or export it again."
        )
    if max_duration_s is not None and decoded_s > max_duration_s:
        return _too_long(path, decoded_s, max_duration_s, at_least=True)
    if info.duration_s is not None and _is_truncated(info.duration_s, decoded_s):
        return TruncatedAudio(
            f"'{_name(path)}' is cut off or damaged: it should last "
            f"{_describe_seconds(info.duration_s)} but only "
            f"{_describe_seconds(decoded_s)} could be read"
            + (f" (ffmpeg says: {reason})" if reason else "")
            + ". The upload or the recording probably did not finish; upload the complete file again.",
            declared_s=info.duration_s,
            decoded_s=decoded_s,
        )
    return None


_SUPPORTED_HINT = "Upload a recording such as WAV, MP3, M4A, FLAC, OGG, WebM, or a video with sound."


def _existing_nonempty_file(path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioFileNotFound(f"There is no file at '{path}'. Check the path, or upload the file again.")
    if os.path.isdir(path):
        raise NotAudio(f"'{path}' is a folder, not an audio file. Choose a file inside it.")
    if os.path.getsize(path) == 0:
        raise EmptyAudio(
            f"'{_name(path)}' is empty (0 bytes). The upload or the recording probably failed; "
            "record or upload it again."
        )
    return path


def _ffmpeg_input(path: str) -> str:
    # "file:" stops ffmpeg from reading "Meeting 10:30.m4a" as protocol "Meeting 10" and a
    # leading "-" as an option; the absolute path keeps Windows drive letters intact.
    return "file:" + os.path.abspath(path)


def _run_tool(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:  # removed from PATH after check_ffmpeg cached its answer
        check_ffmpeg.cache_clear()
        raise _ffmpeg_missing([command[0]]) from None


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
        _ffmpeg_input(path),
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
            raise _ffmpeg_missing(["ffmpeg"]) from None
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


def _declared_duration(audio: dict, container_info: dict, only_stream: bool, guessed: bool) -> float | None:
    """The audio track's own length, or the container's when the track is all there is."""
    if guessed:  # ffprobe derived it from file size and bitrate: says nothing about truncation
        return None
    for candidate in (audio.get("duration"), _tag(audio, "DURATION")):
        seconds = _seconds(candidate)
        if seconds is not None:
            return seconds
    # A container's length can belong to a longer video track; trust it only when alone.
    return _seconds(container_info.get("duration")) if only_stream else None


def _wav_declared_duration(path: str) -> float | None:
    """Length the RIFF header promises (data size / bytes per second), None if unknown."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(12)
            if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
                return None  # RF64 and friends: leave them to ffprobe
            bytes_per_second = None
            while chunk_header := handle.read(8):
                if len(chunk_header) < 8:
                    return None
                chunk_id, chunk_size = chunk_header[:4], struct.unpack("<I", chunk_header[4:])[0]
                if chunk_id == b"fmt ":
                    fmt = handle.read(chunk_size)
                    if len(fmt) < 12:
                        return None
                    bytes_per_second = struct.unpack("<I", fmt[8:12])[0]
                    handle.seek(chunk_size % 2, os.SEEK_CUR)  # chunks are word-aligned
                elif chunk_id == b"data":
                    if not bytes_per_second or chunk_size in _WAV_UNKNOWN_SIZES:
                        return None
                    return chunk_size / bytes_per_second
                else:
                    handle.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)
    except OSError:
        return None
    return None


def _is_truncated(declared_s: float, decoded_s: float) -> bool:
    tolerance_s = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared_s)
    return declared_s - decoded_s > tolerance_s


def _too_long(path: str, duration_s: float, max_duration_s: float, at_least: bool) -> AudioTooLong:
    length = ("more than " if at_least else "") + _describe_seconds(duration_s)
    return AudioTooLong(
        f"'{_name(path)}' lasts {length}; this server accepts recordings of up to "
        f"{_describe_seconds(max_duration_s)}. Split it into shorter parts, or ask the administrator "
        "to raise "
        "the maximum duration.",
        duration_s=duration_s,
        max_duration_s=max_duration_s,
    )


def _ffmpeg_reason(stderr: str, path: str) -> str:
    """The last distinct lines of ffmpeg's complaint, short, without addresses or full paths."""
    lines: list[str] = []
    for line in stderr.splitlines():
        line = re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*", "", line.strip())  # "[flac @ 0x55...] "
        line = line.replace("file:" + os.path.abspath(path), _name(path)).replace(path, _name(path))
        line = line.removeprefix(_name(path) + ": ")  # the message already names the file
        if line and line not in lines:
            lines.append(line)
    reason = "; ".join(lines[-2:])
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _is_picture_or_text(container: str) -> bool:
    # ffmpeg reads pictures as one-frame "video" (image2, png_pipe, ...) and, through the
    # "tty" demuxer, a .txt file as a video of rendered text; neither is a film without sound.
    return container in ("image2", "tty") or container.endswith("_pipe")


def _tag(stream: dict, key: str) -> str | None:
    tags = stream.get("tags") or {}
    return next((value for name, value in tags.items() if name.upper() == key), None)


def _seconds(value: object) -> float | None:
    """ffprobe durations: "3.000000", or matroska's "00:00:03.008000000" tag; None if absent."""
    if value in (None, "", "N/A"):
        return None
    text = str(value)
    try:
        if ":" in text:
            hours, minutes, seconds = text.split(":")
            result = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        else:
            result = float(text)
    except ValueError:
        return None
    return result if math.isfinite(result) and result >= 0 else None


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _name(path: str) -> str:
    return os.path.basename(path) or path


def _describe_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
