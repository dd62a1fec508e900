"""Greedy decoding of a batch of windows: the tokens `whisper.decode` gives, with less work per step.

`whisper.decode` is general (beam search, best-of sampling, prefixes, language detection)
and pays for that generality on every token step: its timestamp rules loop in Python over
the rows of the batch (with a host copy of each row's tokens), the kv-cache grows by
`torch.cat` through forward hooks, and finished rows keep being decoded until the last
one ends. For the case the engine runs most, greedy decoding (temperature 0) of windows
whose language is known, `decode` below does the same arithmetic with:

- the logit rules (suppressed tokens, blank, timestamp pairs and order, the initial
  timestamp limit, "timestamps win when their total probability does") as a few tensor
  operations over the whole batch, no Python loop over rows, no host copies;
- keys and values written into preallocated buffers, cross-attention projected once;
- on CPU, cross-attention as two matmuls over keys stored transposed: for a single query
  per row, PyTorch's CPU SDPA kernel takes about 3x as long (7.4 ms against 2.6 ms per
  layer and step at batch 16, tiny dimensions), and cross-attention is most of a token step;
- finished rows dropped from the batch (on CUDA the host looks every few steps only, so
  the GPU is never stalled waiting for the Python loop);
- on CPU, the encoder run two windows at a time (its activations then stay in cache);
- for `precision: int8`, the 51,865-wide output projection through the int8 copy of the
  embedding that `engine.quantize` attaches.

Each operation is whisper's own (the model's modules, SDPA with the same causal flags,
the same log-softmax comparisons) or, for the CPU cross-attention, the same arithmetic in
another order, so in fp32 the tokens are those of `whisper.decode` on the same window;
tests/test_fast_decode.py holds it to that on a real recording.
Everything else (temperatures above 0, beam search, prefixes, language detection,
word-timing's SDPA switch) goes to `whisper.decode` unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import whisper
from torch import Tensor
from whisper.decoding import (ApplyTimestampRules, DecodingOptions, DecodingResult, DecodingTask, SuppressBlank,
                              SuppressTokens)
from whisper.model import MultiHeadAttention, Whisper
from whisper.utils import compression_ratio

CPU_ENCODER_BATCH = 2  # windows per encoder pass on CPU: larger batches spill activations out of cache (measured: 1-2 best)
CUDA_SYNC_EVERY = 8  # token steps between looks at "which rows are finished" on CUDA (each look stalls the GPU)
COMPACT_FRACTION = 8  # drop finished rows once they are at least 1/8 of the batch (each drop copies the caches)


@dataclass(frozen=True)
class TokenDecodingResult(DecodingResult):
    """whisper's DecodingResult with the log-probability of each of its `tokens`."""

    token_logprobs: List[float] = field(default_factory=list)  # of tokens[i], after the logit rules, as chosen


def supports(options: DecodingOptions) -> bool:
    """Whether `decode` does this itself; otherwise it hands over to `whisper.decode`."""
    return (options.temperature == 0 and options.beam_size is None and options.best_of is None
            and not options.prefix and options.language is not None
            and options.task in ("transcribe", "translate")
            and whisper.model.SDPA_AVAILABLE and MultiHeadAttention.use_sdpa)


@torch.inference_mode()
def decode(model: Whisper, mel: Tensor, options: DecodingOptions = DecodingOptions(), **kwargs):
    """Drop-in for `whisper.decode`: same arguments, same results, faster for greedy batches."""
    if kwargs:
        options = replace(options, **kwargs)
    if not supports(options):
        return whisper.decode(model, mel, options)
    single = mel.ndim == 2
    results = _GreedyBatch(model, options).run(mel[None] if single else mel)
    return results[0] if single else results


@torch.inference_mode()
def decode_rows(model: Whisper, mel: Tensor, options: DecodingOptions,
                prompts: Sequence[Optional[Sequence[int]]]) -> List[DecodingResult]:
    """Decode a batch whose rows each have their own prompt (previous text as tokens, or
    None): row i gives what `whisper.decode(model, mel[i], replace(options, prompt=prompts[i]))`
    gives. This is how the streams of different sections and jobs share one batch while each
    stays conditioned on its own previous text. Greedy rows are decoded together, rows
    with different prompt lengths included; anything `decode` hands to whisper goes there row
    by row (a rare fallback at a higher temperature)."""
    if len(prompts) != len(mel):
        raise ValueError(f"{len(mel)} rows but {len(prompts)} prompts")
    if supports(options):
        return _GreedyBatch(model, options, prompts).run(mel)
    results = [whisper.decode(model, row, replace(options, prompt=list(prompt) if prompt else None))
               for row, prompt in zip(mel, prompts)]
    return _with_token_logprobs(model, mel, options, prompts, results)


def _with_token_logprobs(model: Whisper, mel: Tensor, options: DecodingOptions,
                         prompts: Sequence[Optional[Sequence[int]]], results: List[DecodingResult]) -> List:
    """`results` of a sampled re-decode, each with its own tokens' log-probabilities: one greedy
    pass that takes each row's sampled token instead of the likeliest, through the same logit
    rules, gives the values whisper's sampler saw (it too takes log_softmax of the filtered
    logits, before the temperature). Costs one decode of the rare fallback rows."""
    greedy = replace(options, temperature=0.0)
    if not supports(greedy):  # beam search and other whisper-only paths: without per-token values
        return results
    forced = _GreedyBatch(model, greedy, prompts).run(mel, forced=[list(r.tokens) for r in results])
    return [TokenDecodingResult(**{f.name: getattr(r, f.name) for f in fields(DecodingResult)},
                                token_logprobs=f.token_logprobs) for r, f in zip(results, forced)]


def encode(model: Whisper, mel: Tensor, fp16: bool) -> Tensor:
    """Encoder output for a batch of log-mels (or the features themselves when given)."""
    if fp16:
        mel = mel.half()
    if mel.shape[-2:] == (model.dims.n_audio_ctx, model.dims.n_audio_state):
        return mel
    if mel.device.type != "cpu" or len(mel) <= CPU_ENCODER_BATCH:
        return model.encoder(mel)
    return torch.cat([model.encoder(part) for part in mel.split(CPU_ENCODER_BATCH)])


def reads_back_cheaply(device: torch.device) -> bool:
    """On the CPU, looking at a value (which rows are done) costs nothing; on CUDA it stalls
    the GPU, so the CUDA path looks every few steps and keeps SDPA for cross-attention.
    Tests turn this off on the CPU to run the CUDA path's code."""
    return device.type == "cpu"


def _heads(x: Tensor, n_head: int) -> Tensor:
    """(batch, ctx, state) -> (batch, head, ctx, state / head), as whisper's qkv_attention views it."""
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3)


def _merge(x: Tensor) -> Tensor:
    return x.permute(0, 2, 1, 3).flatten(start_dim=2)


class _GreedyBatch:
    """One greedy decode of a batch; whisper's DecodingTask reads the options, so prompts,
    suppressed tokens and timestamp settings mean exactly what they mean there."""

    def __init__(self, model: Whisper, options: DecodingOptions,
                 prompts: Optional[Sequence[Optional[Sequence[int]]]] = None):
        task = DecodingTask(model, options)
        self.model, self.options, self.tokenizer = model, options, task.tokenizer
        # Each row's start: [previous text] start-of-transcript, language, task. Rows with
        # prompts of different lengths start sampling at different positions.
        if prompts is None:
            self.initial_tokens = [task.initial_tokens]
        else:
            self.initial_tokens = [task.initial_tokens if not prompt else
                                   DecodingTask(model, replace(options, prompt=list(prompt))).initial_tokens
                                   for prompt in prompts]
        self.sample_begins = [len(tokens) for tokens in self.initial_tokens]
        self.sot_indices = [tokens.index(self.tokenizer.sot) for tokens in self.initial_tokens]
        # whisper stops when the context is full: the last forward pass sees n_ctx tokens
        self.row_steps = [min(task.sample_len, task.n_ctx + 1 - begin) for begin in self.sample_begins]
        self.steps = max(self.row_steps)
        self.suppress: List[int] = []
        self.blank: Optional[List[int]] = None
        self.timestamps: Optional[ApplyTimestampRules] = None
        for rule in task.logit_filters:
            if isinstance(rule, SuppressBlank):
                self.blank = self.tokenizer.encode(" ") + [self.tokenizer.eot]
            elif isinstance(rule, SuppressTokens):
                self.suppress = list(rule.suppress_tokens)
            elif isinstance(rule, ApplyTimestampRules):
                self.timestamps = rule
            else:  # a rule this module does not know: not ours to guess
                raise NotImplementedError(type(rule).__name__)
        self.output_int8 = getattr(model.decoder, "int8_output_projection", None)

    # -- the masks whisper's logit filters apply, as tensors ---------------------------
    def _static_masks(self, vocab: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """Ids set to -inf whatever was sampled: (every step, first step). The every-step ones
        are a short list (index_fill_ touches only those columns), the first step's a mask."""
        always = list(self.suppress)
        if self.timestamps is not None and self.tokenizer.no_timestamps is not None:
            always.append(self.tokenizer.no_timestamps)
        first = torch.zeros(vocab, dtype=torch.bool, device=device)
        first[always] = True
        if self.blank is not None:
            first[self.blank] = True
        rules = self.timestamps
        if rules is not None:
            tb = self.tokenizer.timestamp_begin
            first[:tb] = True  # the first sampled token is a timestamp
            if rules.max_initial_timestamp_index is not None:
                first[tb + rules.max_initial_timestamp_index + 1:] = True
        return torch.tensor(sorted(set(always)), dtype=torch.long, device=device), first

    def _timestamp_rules(self, logits: Tensor, state: Dict[str, Tensor], ts_columns: Tensor) -> None:
        """ApplyTimestampRules' per-row part, for every row at once (from the second step on).
        `ts_columns` are the timestamp tokens' ids; only their slice and the text slice are touched."""
        tb, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        last, penultimate, latest = state["last_ts"], state["penultimate_ts"], state["latest_ts"]
        opened = last & ~penultimate  # a segment's first timestamp: its closing one must follow
        # timestamps come in pairs: after an opening one no text, after a pair no timestamp
        if not self.host or bool(opened.any()):  # on CPU, skip a pass over 50k columns when no row needs it
            logits[:, :eot].masked_fill_(opened[:, None], -float("inf"))
        # timestamps never decrease, and a segment has nonzero length (latest = -1: none yet)
        bound = torch.where(opened, latest, latest + 1)
        closed_pair = (last & penultimate)[:, None]
        logits[:, tb:].masked_fill_(closed_pair | (ts_columns < bound[:, None]), -float("inf"))

    def _prefer_timestamps(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        """Rows whose timestamps together outweigh every text token may only sample a
        timestamp. Returns the log-probs before that, and which rows it forced."""
        tb = self.tokenizer.timestamp_begin
        logprobs = F.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[:, tb:].logsumexp(dim=-1)
        max_text_logprob = logprobs[:, :tb].max(dim=-1).values
        forced = timestamp_logprob > max_text_logprob
        logits[:, :tb].masked_fill_(forced[:, None], -float("inf"))
        return logprobs, forced

    # -- the decoder, with caches this class owns ---------------------------------------
    def _forward(self, tokens: Tensor, offset: int, features_dtype: torch.dtype,
                 positions: Optional[Tensor] = None) -> Tensor:
        """Decoder blocks on `tokens` at positions offset.. (caches filled as it goes);
        returns the final layer-normed states, (batch, len(tokens), state).

        `positions` (one per row) replaces `offset` for a single token per row when the rows
        have prompts of different lengths: each row writes its keys and values at its own
        position and attends only up to it."""
        decoder = self.model.decoder
        n = tokens.shape[1]
        if positions is None:
            x = decoder.token_embedding(tokens) + decoder.positional_embedding[offset:offset + n]
            end, mask, rows = offset + n, None, None
        else:
            x = decoder.token_embedding(tokens) + decoder.positional_embedding[positions][:, None]
            end = int(positions.max()) + 1
            rows = torch.arange(len(positions), device=positions.device)
            mask = (torch.arange(end, device=positions.device) <= positions[:, None])[:, None, None, :]
        x = x.to(features_dtype)
        for block, keys, values, (cross_k, cross_v) in zip(decoder.blocks, self.keys, self.values, self.cross):
            attn, heads = block.attn, block.attn.n_head
            h = block.attn_ln(x)
            q = attn.query(h)
            if rows is None:
                keys[:, offset:end] = attn.key(h)
                values[:, offset:end] = attn.value(h)
            else:
                keys[rows, positions] = attn.key(h)[:, 0]
                values[rows, positions] = attn.value(h)[:, 0]
            a = F.scaled_dot_product_attention(_heads(q, heads), _heads(keys[:, :end], heads),
                                               _heads(values[:, :end], heads), attn_mask=mask,
                                               is_causal=n > 1 and mask is None)
            x = x + attn.out(_merge(a))
            cross = block.cross_attn
            q = _heads(cross.query(block.cross_attn_ln(x)), heads)
            if self.host:  # cross_k is transposed: (batch, head, state / head, audio ctx)
                a = torch.softmax((q * self.cross_scale) @ cross_k, dim=-1) @ cross_v
            else:
                a = F.scaled_dot_product_attention(q, cross_k, cross_v, is_causal=False)
            x = x + cross.out(_merge(a))
            x = x + block.mlp(block.mlp_ln(x))
        return decoder.ln(x)

    def _cross_keys_values(self, cross: MultiHeadAttention, features: Tensor) -> Tuple[Tensor, Tensor]:
        """One block's cross-attention keys and values, computed once per batch. On CPU the
        keys are stored transposed and both contiguous, so each token step's two matmuls read
        them in order (they are most of the memory a step reads)."""
        heads = cross.n_head
        keys, values = _heads(cross.key(features), heads), _heads(cross.value(features), heads)
        if self.host:
            return keys.transpose(-1, -2).contiguous(), values.contiguous()
        return keys, values

    def _logits(self, x: Tensor) -> Tensor:
        if self.output_int8 is not None:
            return self.output_int8(x.float()).float()
        weight = self.model.decoder.token_embedding.weight
        return (x @ torch.transpose(weight.to(x.dtype), 0, 1)).float()

    def _keep(self, rows: Tensor) -> None:
        """Keep only `rows` of the batch in every per-row tensor (finished rows leave)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.cross = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross]

    # -- the loop ----------------------------------------------------------------------
    def run(self, mel: Tensor, forced: Optional[Sequence[Sequence[int]]] = None) -> List[TokenDecodingResult]:
        """Decode the batch. `forced`: each row's tokens to take instead of the likeliest (a
        sampled decode's), to read the log-probabilities they had."""
        model, tokenizer = self.model, self.tokenizer
        features = encode(model, mel, self.options.fp16)
        device, n_audio = features.device, features.shape[0]
        if len(self.initial_tokens) == 1:  # one start for every row
            self.initial_tokens *= n_audio
            self.sample_begins *= n_audio
            self.sot_indices *= n_audio
            self.row_steps *= n_audio
        n_state, heads = model.dims.n_text_state, model.dims.n_text_head
        eot = tokenizer.eot
        length = max(begin + steps for begin, steps in zip(self.sample_begins, self.row_steps))
        uniform = len(set(self.sample_begins)) == 1  # rows advance in lockstep at one position
        self.host = host = reads_back_cheaply(device)
        self.cross = [self._cross_keys_values(block.cross_attn, features) for block in model.decoder.blocks]
        self.cross_scale = (n_state // heads) ** -0.5  # SDPA's default scale
        # Rows at different positions attend over slots others have filled and they have not
        # yet: masked out, but a masked 0 times uninitialised NaN is still NaN, so zeros.
        cache = features.new_empty if uniform else features.new_zeros
        self.keys = [cache(n_audio, length, n_state) for _ in model.decoder.blocks]
        self.values = [cache(n_audio, length, n_state) for _ in model.decoder.blocks]

        # one column past the longest row: rows that are done keep writing end-of-text there
        tokens = torch.full((n_audio, length + 1), eot, dtype=torch.long, device=device)
        for row, initial in enumerate(self.initial_tokens):
            tokens[row, :len(initial)] = torch.tensor(initial, device=device)
        # where each row writes its next token; starts differ when prompts do
        positions = torch.tensor(self.sample_begins, device=device)
        last_step = torch.tensor(self.row_steps, device=device) - 1  # each row's final step
        sum_logprobs = torch.zeros(n_audio, device=device)
        # each step's chosen token's log-probability, kept on the device and read back once per row at the end
        token_logprobs = torch.zeros(n_audio, self.steps, device=device)
        forced_tokens = None
        if forced is not None:
            forced_tokens = torch.full((n_audio, self.steps), eot, dtype=torch.long, device=device)
            for row, row_tokens in enumerate(forced):
                row_tokens = list(row_tokens)[:self.steps]
                forced_tokens[row, :len(row_tokens)] = torch.tensor(row_tokens, dtype=torch.long, device=device)
        finished = torch.zeros(n_audio, dtype=torch.bool, device=device)
        rows = torch.arange(n_audio, device=device)  # original index of each row still decoding
        state = dict(last_ts=torch.zeros_like(finished), penultimate_ts=torch.ones_like(finished),
                     latest_ts=torch.full((n_audio,), -1, dtype=torch.long, device=device))
        vocab = model.decoder.token_embedding.weight.shape[0]
        ts_columns = torch.arange(tokenizer.timestamp_begin, vocab, device=device)
        always, first = self._static_masks(vocab, device)
        done_tokens: Dict[int, Tensor] = {}  # original row -> its tokens, for rows that left
        done_logprobs: Dict[int, float] = {}
        done_token_logprobs: Dict[int, Tensor] = {}
        sync_every = 1 if host else CUDA_SYNC_EVERY
        no_speech_probs = [float("nan")] * n_audio

        for step in range(self.steps):
            if step == 0:
                # every row's start at once (shorter ones padded after their end, which the
                # causal mask keeps out of their view); the logits of each row's last token
                # sample its first one, those at its start-of-transcript give no_speech_prob
                states = self._forward(tokens[:, :max(self.sample_begins)], 0, features.dtype)
                logits = self._logits(states[rows, positions - 1])
                if tokenizer.no_speech is not None:
                    at_sot = self._logits(states[rows, torch.tensor(self.sot_indices, device=device)])
                    no_speech_probs = at_sot.float().softmax(dim=-1)[:, tokenizer.no_speech].tolist()
            elif uniform:
                position = int(positions[0]) if host else self.sample_begins[0] + step
                x = self._forward(tokens[:, position - 1:position], position - 1, features.dtype)
                logits = self._logits(x[:, -1])
            else:
                # rows that are done feed their end-of-text from a position still in range
                at = (positions - 1).clamp_(max=model.dims.n_text_ctx - 1)
                logits = self._logits(self._forward(tokens.gather(1, at[:, None]), 0, features.dtype, at)[:, -1])
            if step == 0:
                logits.masked_fill_(first, -float("inf"))
            else:
                logits.index_fill_(1, always, -float("inf"))
            logprobs = None
            if self.timestamps is not None:
                if step > 0:
                    self._timestamp_rules(logits, state, ts_columns)
                logprobs, forced = self._prefer_timestamps(logits)
                if not host or bool(forced.any()):  # forcing changed the logits: new log-probs
                    logprobs = None

            next_tokens = logits.argmax(dim=-1) if forced_tokens is None else forced_tokens[rows, step]
            if logprobs is None:
                logprobs = F.log_softmax(logits.float(), dim=-1)
            current = logprobs.gather(1, next_tokens[:, None])[:, 0]
            sum_logprobs += current * ~finished
            token_logprobs[:, step] = current
            next_tokens = torch.where(finished, eot, next_tokens)
            tokens.scatter_(1, positions[:, None], next_tokens[:, None])
            positions = (positions + 1).clamp_(max=length)
            is_ts = next_tokens >= tokenizer.timestamp_begin
            state["penultimate_ts"] = state["last_ts"] if step > 0 else torch.ones_like(finished)
            state["last_ts"] = is_ts
            state["latest_ts"] = torch.where(is_ts, next_tokens, state["latest_ts"])
            finished |= (next_tokens == eot) | (last_step <= step)

            if (step + 1) % sync_every == 0 or step == self.steps - 1:
                n_finished = int(finished.sum())
                if n_finished == len(finished):
                    break
                if n_finished and n_finished * COMPACT_FRACTION >= len(finished):
                    for index in finished.nonzero()[:, 0].tolist():
                        done_tokens[int(rows[index])] = tokens[index, :int(positions[index])]
                        done_logprobs[int(rows[index])] = float(sum_logprobs[index])
                        done_token_logprobs[int(rows[index])] = token_logprobs[index]
                    keep = (~finished).nonzero()[:, 0]
                    self._keep(keep)
                    rows, tokens, sum_logprobs, finished = rows[keep], tokens[keep], sum_logprobs[keep], finished[keep]
                    token_logprobs = token_logprobs[keep]
                    positions, last_step = positions[keep], last_step[keep]
                    state = {name: value[keep] for name, value in state.items()}

        for index, row in enumerate(rows.tolist()):
            done_tokens[row] = tokens[index, :int(positions[index])]
            done_logprobs[row] = float(sum_logprobs[index])
            done_token_logprobs[row] = token_logprobs[index]
        return [self._result(features[i], done_tokens[i], done_logprobs[i], no_speech_probs[i], self.sample_begins[i],
                             done_token_logprobs[i]) for i in range(n_audio)]

    def _result(self, features: Tensor, row: Tensor, sum_logprob: float, no_speech_prob: float,
                sample_begin: int, row_logprobs: Tensor) -> TokenDecodingResult:
        sampled = row[sample_begin:].tolist()
        eot = self.tokenizer.eot
        tokens = sampled[:sampled.index(eot)] if eot in sampled else sampled
        text = self.tokenizer.decode(tokens).strip()
        return TokenDecodingResult(
            audio_features=features, language=self.options.language, tokens=tokens, text=text,
            avg_logprob=sum_logprob / (len(tokens) + 1), no_speech_prob=no_speech_prob,
            temperature=self.options.temperature, compression_ratio=compression_ratio(text),
            token_logprobs=row_logprobs[:len(tokens)].tolist(),
        )
