"""Greedy decoding of a batch of windows: the tokens `whisper.decode` gives, with less work per step.

`whisper.decode` is general (beam search, best-of sampling, prefixes, language detection)
and pays for that generality on every token step: its timestamp rules loop in Python over
the rows of the batch (with a host copy of each row's tokens), the kv-cache grows by
`torch.cat` through forward hooks, and finished rows keep being decoded until the last
one ends. For the case the engine runs most, greedy decoding (temperature 0) of windows
whose language is known, `decode` below does the same arithmetic with:

- the logit rules (suppressed tokens, blank, timestamp pairs and order, the initial
  timestamp limit, "timestamps win when their total probability does") as a few tensor
  operations over the whole batch, no Python loop over rows, no host copies
  (engine/decoding/logit_rules.py);
- keys and values written into preallocated buffers, cross-attention projected once, and on
  CPU computed as two matmuls over keys stored transposed (engine/decoding/cached_decoder.py);
- finished rows dropped from the batch, new ones joining in their slots (on CUDA the host
  looks every few steps only, so the GPU is never stalled waiting for the Python loop;
  engine/decoding/greedy_decode.py);
- on CPU, the encoder run one window at a time (its activations then stay in cache, and
  int8's activation scales are each window's own);
- for `precision: int8`, the 51,865-wide output projection through the int8 copy of the
  embedding that `engine.models.quantize` attaches.

Each operation is whisper's own (the model's modules, SDPA with the same causal flags,
the same log-softmax comparisons) or, for the CPU cross-attention, the same arithmetic in
another order, so in fp32 the tokens are those of `whisper.decode` on the same window;
tests/test_fast_decode.py holds it to that on a real recording.
Everything else (temperatures above 0, beam search, prefixes, language detection,
word-timing's SDPA switch) goes to `whisper.decode` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

import torch
import whisper
from torch import Tensor
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import MultiHeadAttention, Whisper

from engine.decoding.greedy_decode import GreedyDecode, TokenDecodingResult


def supports(options: DecodingOptions) -> bool:
    """Whether `decode` does this itself; otherwise it hands over to `whisper.decode`."""
    return (
        options.temperature == 0
        and options.beam_size is None
        and options.best_of is None
        and not options.prefix
        and options.language is not None
        and options.task in ("transcribe", "translate")
        and whisper.model.SDPA_AVAILABLE
        and MultiHeadAttention.use_sdpa
    )


@torch.inference_mode()
def decode(model: Whisper, mel: Tensor, options: DecodingOptions = DecodingOptions(), **kwargs):
    """Drop-in for `whisper.decode`: same arguments, same results, faster for greedy batches."""
    if kwargs:
        options = replace(options, **kwargs)
    if not supports(options):
        return whisper.decode(model, mel, options)
    single = mel.ndim == 2
    results = decode_whole(model, options, mel[None] if single else mel)
    return results[0] if single else results


@torch.inference_mode()
def decode_rows(
    model: Whisper, mel: Tensor, options: DecodingOptions, prompts: Sequence[Sequence[int] | None]
) -> list[DecodingResult]:
    """Decode a batch whose rows each have their own prompt (previous text as tokens, or
    None): row i gives what `whisper.decode(model, mel[i], replace(options, prompt=prompts[i]))`
    gives. This is how the streams of different sections and jobs share one batch while each
    stays conditioned on its own previous text. Greedy rows are decoded together, rows
    with different prompt lengths included; anything `decode` hands to whisper goes there row
    by row (a rare fallback at a higher temperature)."""
    if len(prompts) != len(mel):
        raise ValueError(f"{len(mel)} rows but {len(prompts)} prompts")
    if supports(options):
        return decode_whole(model, options, mel, prompts)
    results = [
        whisper.decode(model, row, replace(options, prompt=list(prompt) if prompt else None))
        for row, prompt in zip(mel, prompts)
    ]
    return _with_token_logprobs(model, mel, options, prompts, results)


def _with_token_logprobs(
    model: Whisper,
    mel: Tensor,
    options: DecodingOptions,
    prompts: Sequence[Sequence[int] | None],
    results: list[DecodingResult],
) -> list:
    """`results` of a sampled re-decode, each with its own tokens' log-probabilities: one greedy
    pass that takes each row's sampled token instead of the likeliest, through the same logit
    rules, gives the values whisper's sampler saw (it too takes log_softmax of the filtered
    logits, before the temperature). Costs one decode of the rare fallback rows."""
    greedy = replace(options, temperature=0.0)
    if not supports(greedy):  # beam search and other whisper-only paths: without per-token values
        return results
    forced = decode_whole(model, greedy, mel, prompts, forced=[list(r.tokens) for r in results])
    return [
        TokenDecodingResult(
            **{f.name: getattr(r, f.name) for f in fields(DecodingResult)}, token_logprobs=f.token_logprobs
        )
        for r, f in zip(results, forced)
    ]


def decode_whole(
    model: Whisper,
    options: DecodingOptions,
    mel: Tensor,
    prompts: Sequence[Sequence[int] | None] | None = None,
    forced: Sequence[Sequence[int]] | None = None,
) -> list[TokenDecodingResult]:
    """Every row of `mel` decoded to its end in one GreedyDecode: one result per row, in order."""
    decode = GreedyDecode(model, options, forcing=forced is not None)
    decode.admit(mel, prompts if prompts is not None else [None] * len(mel), list(range(len(mel))), forced)
    results: dict[int, TokenDecodingResult] = {}
    while len(decode):
        results.update(decode.step())
    return [results[row] for row in range(len(mel))]
