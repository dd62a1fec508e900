"""What the decode loop does to a window besides its greedy decode.

Each row is the current window of one stream (a section of some job's recording), decoded
with its own prompt (its section's previous text). The rows that fail one of
whisper.transcribe's guards are decoded again at their next temperature, from the encoder
output already computed, until they pass or the ladder ends (`fall_back`); word timing
aligns the decoded rows in one batched pass (`align_words`). `decode_batch` is the whole of
it for a batch decoded at once (an injected decoder). In fp32 every row gets the tokens
`whisper.decode` gives that window alone (engine.decoding.fast_decode).
"""
from __future__ import annotations

import gc
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper
from whisper.timing import WordTiming

from engine.decoding.fast_decode import decode_rows
from engine.decoding.memory import read_gpu_memory, window_cost_mb
from engine.decoding.options import DecodeOptions, needs_fallback
from engine.decoding.stream import SectionStream, StreamWindow
from engine.decoding.word_timing import AlignmentRow, align_rows, text_tokens_of

# (model, mels or encoder output, options, one prompt per row) -> one result per row
Decoder = Callable[[Whisper, torch.Tensor, DecodingOptions, Sequence[Optional[Sequence[int]]]], List[DecodingResult]]


def decode_batch(model: Whisper, windows: Sequence[StreamWindow], options: Sequence[DecodeOptions], language: str,
                 fp16: bool, decoder: Decoder = decode_rows) -> List[DecodingResult]:
    """Decode every row's window with temperature fallback. All rows share the task, the
    language and the token cap (the decode loop batches only such rows); each has its own
    prompt, temperatures and guards."""
    device = next(model.parameters()).device
    mels = torch.stack([w.mel for w in windows]).to(device).to(torch.float16 if fp16 else torch.float32)
    results: List[Optional[DecodingResult]] = [None] * len(windows)
    _decode_attempt(model, mels, windows, options, language, fp16, decoder, results, list(range(len(windows))), 0)
    return fall_back(model, windows, options, results, language, fp16, decoder)


def fall_back(model: Whisper, windows: Sequence[StreamWindow], options: Sequence[DecodeOptions],
              results: List[DecodingResult], language: str, fp16: bool,
              decoder: Decoder = decode_rows) -> List[DecodingResult]:
    """whisper.transcribe's temperature fallback after a first decode (`results`, in place):
    the rows that fail a guard are decoded again at their next temperature, from the encoder
    output already computed, until they pass or the ladder ends."""
    attempt = 1
    pending = [row for row in range(len(windows)) if _needs_another(results[row], options[row], attempt)]
    features = torch.stack([r.audio_features for r in results]) if pending else None
    while pending:
        _decode_attempt(model, features, windows, options, language, fp16, decoder, results, pending, attempt)
        attempt += 1
        pending = [row for row in pending if _needs_another(results[row], options[row], attempt)]
    return results


def _needs_another(result: DecodingResult, options: DecodeOptions, attempt: int) -> bool:
    return attempt < len(options.temperatures) and needs_fallback(result, options)


def _decode_attempt(model: Whisper, inputs: torch.Tensor, windows: Sequence[StreamWindow],
                    options: Sequence[DecodeOptions], language: str, fp16: bool, decoder: Decoder,
                    results: List[Optional[DecodingResult]], rows: List[int], attempt: int) -> None:
    """Decode `rows` (into `results`) at each one's temperature number `attempt`; `inputs`
    are log-mels or encoder outputs, one per row of the batch."""
    first = options[0]
    by_temperature: Dict[float, List[int]] = defaultdict(list)
    for row in rows:
        by_temperature[options[row].temperatures[attempt]].append(row)
    for temperature, group in by_temperature.items():
        decoding = DecodingOptions(task=first.task, language=language, temperature=temperature,
                                   sample_len=first.max_new_tokens, fp16=fp16)
        for row, result in zip(group, decoder(model, inputs[group], decoding, [windows[r].prompt for r in group])):
            results[row] = result


def align_words(model: Whisper, rows: Sequence[Tuple[SectionStream, StreamWindow]],
                results: Sequence[DecodingResult]) -> List[Optional[List[WordTiming]]]:
    """Word timings of every decoded window whose stream asked for word timestamps, in one
    batched decoder pass over the encoder output the decode used (engine.decoding.word_timing);
    None for the other rows."""
    alignments: List[Optional[List[WordTiming]]] = [None] * len(rows)
    wanted = [i for i, ((stream, _), result) in enumerate(zip(rows, results)) if stream.needs_alignment(result)]
    by_prompt: Dict[Tuple[int, ...], List[int]] = defaultdict(list)  # one start-of-transcript sequence per pass
    for i in wanted:
        by_prompt[tuple(rows[i][0].tokenizer.sot_sequence)].append(i)
    for indices in by_prompt.values():
        tokenizer = rows[indices[0]][0].tokenizer
        timings = align_rows(model, tokenizer, [
            AlignmentRow(results[i].audio_features, text_tokens_of(results[i].tokens, tokenizer), rows[i][1].frames)
            for i in indices])
        for i, timing in zip(indices, timings):
            alignments[i] = timing
    return alignments


def too_large_message(model: Whisper, fp16: bool, max_new_tokens: int) -> str:
    message = ("GPU out of memory while decoding a single 30 s window, so no batch size can work: "
               "free GPU memory (other processes, other models) or use a smaller model")
    device = next(model.parameters()).device
    if device.type == "cuda":
        need = window_cost_mb(model.dims, 2 if fp16 else 4, max_new_tokens)
        message += f" (a window needs about {need:.0f} MB; {read_gpu_memory(device).free_mb:.0f} MB are free)"
    return message


def free_cached_memory() -> None:
    gc.collect()  # a failed decode leaves reference cycles (whisper's kv-cache hooks) behind
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
