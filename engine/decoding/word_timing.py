"""Word timestamps for a whole batch of windows in one decoder pass.

Whisper times words by reading where a few cross-attention heads (the model's
`alignment_heads`: whisper's table for named models, `alignment_heads` in a CTranslate2
directory's config.json) look while the decoder re-reads a window's text, then aligning
text and audio frames by dynamic time warping (`whisper.timing`). Its
`add_word_timestamps` does this one window at a time and runs the encoder again for each
(`model(mel, tokens)`). Here the encoder output the decoder just used is reused, and the
rows of a batch are teacher-forced together (right-padded: a causal decoder never lets
padding reach earlier positions); only the alignment heads' weights are kept.
What happens next is whisper's own code: its arithmetic on the weights (`_timings`
follows `find_alignment` line for line) and its `add_word_timestamps` for the rules that
turn timings into words (punctuation merged, over-long words cut at pauses, segment ends).
"""

from __future__ import annotations

import types
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import whisper.timing
from whisper.decoding import DecodingResult
from whisper.model import Whisper, disable_sdpa
from whisper.timing import TOKENS_PER_SECOND, WordTiming, dtw
from whisper.tokenizer import Tokenizer

from engine.decoding.median_filter import median_filter

ROWS_PER_PASS = 8  # bounds the attention weights held at once: rows x heads x tokens x 1500 floats per layer
MEDFILT_WIDTH = 7  # whisper's find_alignment defaults
QK_SCALE = 1.0


@dataclass(frozen=True)
class AlignmentRow:
    features: torch.Tensor  # the window's encoder output (n_audio_ctx, n_audio_state), as the decoder had it
    text_tokens: list[int]  # the window's text tokens, all segments, no timestamps
    num_frames: int  # mel frames of real audio in the window


def align_rows(model: Whisper, tokenizer: Tokenizer, rows: Sequence[AlignmentRow]) -> list[list[WordTiming]]:
    """`whisper.timing.find_alignment` for every row, batched."""
    timings: list[list[WordTiming]] = [[] for _ in rows]
    todo = [index for index, row in enumerate(rows) if row.text_tokens]
    for first in range(0, len(todo), ROWS_PER_PASS):
        group = todo[first : first + ROWS_PER_PASS]
        for index, row_timings in zip(group, _align_group(model, tokenizer, [rows[i] for i in group])):
            timings[index] = row_timings
    return timings


def align_windows(
    model: Whisper, windows: Sequence[tuple[Tokenizer, DecodingResult, int]]
) -> list[list[WordTiming]]:
    """Word timings of decoded windows, each given as (its tokenizer, its decode's result, its
    frames of real audio): batched passes over the encoder outputs the decodes used, one set of
    passes per start-of-transcript sequence (a pass shares one)."""
    timings: list[list[WordTiming]] = [[] for _ in windows]
    by_prompt: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, (tokenizer, _, _) in enumerate(windows):
        by_prompt[tuple(tokenizer.sot_sequence)].append(index)
    for indices in by_prompt.values():
        tokenizer = windows[indices[0]][0]
        rows = [
            AlignmentRow(result.audio_features, text_tokens_of(result.tokens, tokenizer), frames)
            for _, result, frames in (windows[i] for i in indices)
        ]
        for index, row_timings in zip(indices, align_rows(model, tokenizer, rows)):
            timings[index] = row_timings
    return timings


def add_word_timestamps(
    segments: list[dict], alignment: list[WordTiming], tokenizer: Tokenizer, last_speech_timestamp: float
) -> None:
    """whisper.timing.add_word_timestamps on segments whose alignment is already known.

    Whisper's function computes the alignment itself (it calls the module's
    `find_alignment`); the same code runs here with that one name bound to the alignment
    at hand, so every rule after it is whisper's, not a copy to keep in step."""
    original = whisper.timing.add_word_timestamps
    bound = types.FunctionType(
        original.__code__,
        {**original.__globals__, "find_alignment": lambda *args, **kwargs: alignment},
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )
    bound.__kwdefaults__ = original.__kwdefaults__
    bound(
        segments=segments,
        model=None,
        tokenizer=tokenizer,
        mel=None,
        num_frames=0,
        last_speech_timestamp=last_speech_timestamp,
    )


def _align_group(
    model: Whisper, tokenizer: Tokenizer, rows: Sequence[AlignmentRow]
) -> list[list[WordTiming]]:
    prefix = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    sequences = [prefix + row.text_tokens + [tokenizer.eot] for row in rows]
    longest = max(len(s) for s in sequences)
    device = rows[0].features.device
    tokens = torch.tensor([s + [tokenizer.eot] * (longest - len(s)) for s in sequences], device=device)
    features = torch.stack([row.features for row in rows])

    heads_by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in model.alignment_heads.indices().T.tolist():
        heads_by_layer[layer].append(head)
    kept: dict[int, torch.Tensor] = {}

    def keep_alignment_heads(layer: int):
        def hook(_module, _inputs, outputs):
            kept[layer] = outputs[-1][:, heads_by_layer[layer]].float()  # (rows, heads, tokens, frames)

        return hook

    hooks = [
        model.decoder.blocks[layer].cross_attn.register_forward_hook(keep_alignment_heads(layer))
        for layer in heads_by_layer
    ]
    try:
        with torch.no_grad(), disable_sdpa():  # SDPA does not hand out the attention weights
            logits = model.decoder(tokens, features).float()
    finally:
        for hook in hooks:
            hook.remove()
    weights_all = torch.cat([kept[layer] for layer in sorted(heads_by_layer)], dim=1)
    sot = len(tokenizer.sot_sequence)
    return [
        _timings(
            tokenizer,
            row,
            weights_all[index, :, : len(sequences[index])],
            logits[index, sot : len(sequences[index]), : tokenizer.eot],
            sot,
        )
        for index, row in enumerate(rows)
    ]


def _timings(
    tokenizer: Tokenizer, row: AlignmentRow, weights: torch.Tensor, sampled_logits: torch.Tensor, sot: int
) -> list[WordTiming]:
    """The rest of `whisper.timing.find_alignment`, on one row's weights and logits."""
    text_tokens = row.text_tokens
    token_probs = sampled_logits.softmax(dim=-1)
    text_token_probs = token_probs[np.arange(len(text_tokens)), text_tokens].tolist()

    weights = weights[:, :, : row.num_frames // 2]
    weights = (weights * QK_SCALE).softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = (weights - mean) / std
    weights = median_filter(weights, MEDFILT_WIDTH)

    matrix = weights.mean(axis=0)
    matrix = matrix[sot:-1]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    word_probabilities = [
        np.mean(text_token_probs[i:j]) for i, j in zip(word_boundaries[:-1], word_boundaries[1:])
    ]
    return [
        WordTiming(word, tokens, start, end, probability)
        for word, tokens, start, end, probability in zip(
            words, word_tokens, start_times, end_times, word_probabilities
        )
    ]


def text_tokens_of(tokens: Sequence[int], tokenizer: Tokenizer) -> list[int]:
    """What whisper aligns of a decoded window: its text tokens, every segment's, in order."""
    return [token for token in tokens if token < tokenizer.eot]
