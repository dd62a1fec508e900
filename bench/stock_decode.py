"""The engine with stock `whisper.decode` in place of its greedy decoder: what GreedyDecode gains.

The engine's decode loop (engine.decoding.decode_loop) keeps a running decode that windows
join and leave; `DecodeLoop.start_decode` makes each one. `use_stock_decode` has it make a
`StockDecode` instead: the engine's WholeDecode (each step decodes the windows that joined,
whole) through openai-whisper's own batched `whisper.decode`. Sections, batching, prompts,
fallback and word timing stay the engine's, so the difference measured is the decoder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from engine.decoding.whole_decode import WholeDecode


def whisper_decode_rows(model, mel, options, prompts: Sequence[Sequence[int] | None]) -> list:
    """openai-whisper's own batched `whisper.decode` in the signature of the engine's
    `engine.decoding.fast_decode.decode_rows`: whisper.decode takes one prompt for a whole batch,
    so the rows are decoded in one call per distinct prompt. Without previous text (random
    weights) every prompt is empty and a step is one batched call; with previous text most
    rows differ and this is row by row."""
    import whisper

    groups: dict = {}
    for row, prompt in enumerate(prompts):
        groups.setdefault(tuple(prompt or ()), []).append(row)
    results: list = [None] * len(prompts)
    for prompt, rows in groups.items():
        decoded = whisper.decode(model, mel[rows], replace(options, prompt=list(prompt) or None))
        for row, result in zip(rows, decoded):
            results[row] = result
    return results


class StockDecode(WholeDecode):
    """Every window's first decode by stock whisper.decode, greedy ones included."""

    decode_rows = staticmethod(whisper_decode_rows)


def use_stock_decode(engine) -> None:
    """From now on, `engine` decodes every window's first decode with stock whisper.decode."""
    engine.loop.start_decode = StockDecode
