"""What ffprobe says about a file, from its headers alone: AudioInfo, or an error a person can act on.

    info = probe("meeting.m4a")   # AudioInfo(duration_s=3600.0, sample_rate=48000, channels=2, ...)

engine/audio/files.py checks and decodes with it (its docstring gives the rules).
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
from dataclasses import dataclass

from engine.audio.errors import (
    INSTALL_HINT,
    AudioFileNotFound,
    EmptyAudio,
    FfmpegMissing,
    NotAudio,
    TruncatedAudio,
)

PathLike = str | os.PathLike  # what load_audio and probe accept


# WAV writers that stream (ffmpeg into a pipe, some recorders) leave these in the size field
# because they cannot seek back; they mean "unknown", not "4 GiB".
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


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
        raise ffmpeg_missing(missing)


def ffmpeg_missing(tools: list[str]) -> FfmpegMissing:
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
    path = existing_nonempty_file(path)
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
        ffmpeg_input(path),
    ]
    result = _run_tool(command)
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.returncode != 0:
        reason = ffmpeg_reason(stderr, path)
        if "moov atom not found" in stderr:
            raise TruncatedAudio(
                f"'{file_name(path)}' is an MP4/M4A file whose index is missing, which is what an "
                "interrupted recording or an unfinished download leaves behind. Upload the complete "
                "file again."
            )
        if reason.endswith("End of file"):  # ffmpeg knew the format, then the file ran out
            raise TruncatedAudio(
                f"'{file_name(path)}' ends before any sound: the file is cut off. Upload the "
                "complete file again."
            )
        raise NotAudio(
            f"'{file_name(path)}' is not an audio or video file that ffmpeg can read "
            f"(ffmpeg says: {reason}). {SUPPORTED_HINT}"
        )
    try:
        described = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError as error:  # should not happen with -of json; still no traceback
        raise NotAudio(f"ffprobe gave an unreadable description of '{file_name(path)}' ({error}).") from None

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


SUPPORTED_HINT = "Upload a recording such as WAV, MP3, M4A, FLAC, OGG, WebM, or a video with sound."


def existing_nonempty_file(path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioFileNotFound(f"There is no file at '{path}'. Check the path, or upload the file again.")
    if os.path.isdir(path):
        raise NotAudio(f"'{path}' is a folder, not an audio file. Choose a file inside it.")
    if os.path.getsize(path) == 0:
        raise EmptyAudio(
            f"'{file_name(path)}' is empty (0 bytes). The upload or the recording probably failed; "
            "record or upload it again."
        )
    return path


def ffmpeg_input(path: str) -> str:
    # "file:" stops ffmpeg from reading "Meeting 10:30.m4a" as protocol "Meeting 10" and a
    # leading "-" as an option; the absolute path keeps Windows drive letters intact.
    return "file:" + os.path.abspath(path)


def _run_tool(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:  # removed from PATH after check_ffmpeg cached its answer
        check_ffmpeg.cache_clear()
        raise ffmpeg_missing([command[0]]) from None


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


def ffmpeg_reason(stderr: str, path: str) -> str:
    """The last distinct lines of ffmpeg's complaint, short, without addresses or full paths."""
    lines: list[str] = []
    for line in stderr.splitlines():
        line = re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*", "", line.strip())  # "[flac @ 0x55...] "
        line = line.replace("file:" + os.path.abspath(path), file_name(path)).replace(path, file_name(path))
        line = line.removeprefix(file_name(path) + ": ")  # the message already names the file
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


def file_name(path: str) -> str:
    return os.path.basename(path) or path
