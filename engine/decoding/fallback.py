"""Temperature fallback: whisper.transcribe's second try at a window that fails its guards.

A window's first decode is greedy (or at the job's first temperature). A window whose
result is too repetitive or too unsure (`engine.decoding.options.needs_fallback`) is decoded
again at the next temperature of its job's ladder, from the encoder output its first decode
computed, until it passes or the ladder ends; the rows that fail at the same temperature
are decoded together, each with its own prompt. The decode loop calls `fall_back` for the
rows whose window has just ended in the running decode.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper

from engine.decoding.fast_decode import decode_rows
from engine.decoding.options import TranscribeOptions, needs_fallback
from engine.decoding.stream import StreamWindow


def fall_back(
    model: Whisper,
    windows: Sequence[StreamWindow],
    options: Sequence[TranscribeOptions],
    results: list[DecodingResult],
    language: str,
    fp16: bool,
) -> list[DecodingResult]:
    """whisper.transcribe's temperature fallback after a first decode (`results`, in place):
    the rows that fail a guard are decoded again at their next temperature, from the encoder
    output already computed, until they pass or the ladder ends. All rows share the task, the
    language and the token cap (the decode loop batches only such rows)."""
    attempt = 1
    pending = [row for row in range(len(windows)) if _needs_another(results[row], options[row], attempt)]
    features = torch.stack([r.audio_features for r in results]) if pending else None
    while pending:
        _decode_attempt(model, features, windows, options, language, fp16, results, pending, attempt)
        attempt += 1
        pending = [row for row in pending if _needs_another(results[row], options[row], attempt)]
    return results


def _needs_another(result: DecodingResult, options: TranscribeOptions, attempt: int) -> bool:
    return attempt < len(options.temperatures) and needs_fallback(result, options)


def _decode_attempt(
    model: Whisper,
    features: torch.Tensor,
    windows: Sequence[StreamWindow],
    options: Sequence[TranscribeOptions],
    language: str,
    fp16: bool,
    results: list[DecodingResult],
    rows: list[int],
    attempt: int,
) -> None:
    """Decode `rows` (into `results`) at each one's temperature number `attempt`, from their
    encoder outputs (`features`, one per row of the batch)."""
    first = options[0]
    by_temperature: dict[float, list[int]] = defaultdict(list)
    for row in rows:
        by_temperature[options[row].temperatures[attempt]].append(row)
    for temperature, group in by_temperature.items():
        decoding = DecodingOptions(
            task=first.task,
            language=language,
            temperature=temperature,
            sample_len=first.max_new_tokens,
            fp16=fp16,
        )
        decoded = decode_rows(model, features[group], decoding, [windows[r].prompt for r in group])
        for row, result in zip(group, decoded):
            results[row] = result
