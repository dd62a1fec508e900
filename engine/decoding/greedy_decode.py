"""GreedyDecode: a greedy decode of whisper windows whose rows join and leave between token steps.

    decode = GreedyDecode(model, options)
    decode.admit(mels, prompts, tags)      # encode, prefill each prompt, take each first token
    for tag, result in decode.step(): ...  # one token for every row; the rows that ended

The batch's per-row state (tokens, positions, caches) stays on the device; the logit rules are
engine/decoding/logit_rules.py's, the decoder over the caches engine/decoding/cached_decoder.py's.
engine/decoding/fast_decode.py decodes whole batches with it; the decode loop keeps one running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask
from whisper.model import Whisper
from whisper.utils import compression_ratio

from engine.decoding.cached_decoder import CachedDecoder
from engine.decoding.logit_rules import LogitRules

# windows per encoder pass on CPU: larger batches spill activations out of cache (1 and 2 measured
# equal, more slower), and int8's dynamic quantisation scales a pass's activations together: one
# keeps each window's own
CPU_ENCODER_BATCH = 1
# token steps between looks at "which rows are finished" on CUDA (each look stalls the GPU)
CUDA_SYNC_EVERY = 8
COMPACT_FRACTION = 8  # drop finished rows once they are at least 1/8 of the batch (each drop moves some rows)


@dataclass(frozen=True)
class TokenDecodingResult(DecodingResult):
    """whisper's DecodingResult with the log-probability of each of its `tokens`."""

    # of tokens[i], after the logit rules, as chosen
    token_logprobs: list[float] = field(default_factory=list)


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


class GreedyDecode:
    """A greedy decode whose rows may join and leave between token steps.

    `admit` adds windows, each with its own prompt, and takes their first token; `step`
    decodes one more token for every row and returns the rows that ended. A batch decoded
    whole runs as long as its longest window, its rows leaving one by one; the decode loop
    instead refills a row with its stream's next window as soon as the row ends, so the
    steps stay full (11 minutes of real speech, tiny.en, 16 sections, batch 16: 164 steps of
    12.4 rows on average instead of 188 of 10.8). whisper's DecodingTask reads the options, so
    prompts, suppressed tokens and timestamp settings mean exactly what they mean there,
    and each row gets the tokens `whisper.decode` gives its window alone, whenever it joined.

    Per-row state lives in `rows` (name -> tensor, one row per slot, the decoder's caches
    included); a row that ends leaves its slot free for the next window to join in place,
    and free slots are dropped once they are 1/8 of the batch (each drop copies the caches).
    """

    # host-side lists, one entry per slot
    ROW_LISTS = ("tags", "begins", "no_speech", "features", "deadlines")

    def __init__(self, model: Whisper, options: DecodingOptions, forcing: bool = False):
        task = DecodingTask(model, options)
        self.model, self.options, self.tokenizer = model, options, task.tokenizer
        self.sample_len, self.n_ctx = task.sample_len, task.n_ctx
        # rows come with the tokens to take (a sampled decode's), to read their log-probs
        self.forcing = forcing
        device = next(model.parameters()).device
        self.host = reads_back_cheaply(device)
        self.rules = LogitRules(task, model.decoder.token_embedding.weight.shape[0], device, self.host)
        self.decoder = CachedDecoder(model, self.host)
        self.rows: dict[str, Tensor] = {}
        # host-side, one entry per slot
        self.tags: list[object] = []  # the caller's handle of each row, given back with its result
        self.begins: list[int] = []  # where each row's sampled tokens start (after its prompt)
        self.no_speech: list[float] = []
        self.features: list[Tensor] = []  # each row's encoder output, for its result (fallbacks reuse it)
        self.deadlines: list[int] = []  # the step by which each row has surely ended (its token cap)
        self.free: list[int] = []  # slots whose row has ended and been returned
        self.step_count = 0
        self.aligned = False  # every row at one position (admitted together): one offset, no mask
        self.position = 0  # that position, when aligned
        self._since_look = 0

    def __len__(self) -> int:
        """Rows still decoding (not yet returned by `step`)."""
        return len(self.tags) - len(self.free)

    def live_tags(self) -> list[object]:
        """The tags of the rows still decoding, in slot order."""
        free = set(self.free)
        return [tag for slot, tag in enumerate(self.tags) if slot not in free]

    # -- rows joining ------------------------------------------------------------------
    def _initial_tokens(self, prompt: Sequence[int] | None) -> list[int]:
        """[previous text] start-of-transcript, language, task: whisper's own, per prompt."""
        options = replace(self.options, prompt=list(prompt)) if prompt else self.options
        return list(DecodingTask(self.model, options).initial_tokens)

    @torch.inference_mode()
    def admit(
        self,
        mel: Tensor,
        prompts: Sequence[Sequence[int] | None],
        tags: Sequence[object],
        forced: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Add a row per log-mel (or encoder output): encode, prefill its prompt, take its
        first token. `forced` (with `forcing`): each row's tokens to take instead of the likeliest."""
        if len(mel) == 0:
            return
        if len(prompts) != len(mel) or len(tags) != len(mel):
            raise ValueError(f"{len(mel)} rows but {len(prompts)} prompts and {len(tags)} tags")
        model, tokenizer, eot = self.model, self.tokenizer, self.tokenizer.eot
        features = encode(model, mel, self.options.fp16)
        device, count, n_state = features.device, len(features), model.dims.n_text_state
        initial = [self._initial_tokens(prompt) for prompt in prompts]
        begins = [len(tokens) for tokens in initial]
        # whisper stops when the context is full: the last forward pass sees n_ctx tokens
        steps = [min(self.sample_len, self.n_ctx + 1 - begin) for begin in begins]
        # keys and values for the positions the rows will feed (their prompts and all but the last token)
        capacity = min(self.n_ctx, max(begin + row_steps for begin, row_steps in zip(begins, steps)))
        new: dict[str, Tensor] = {}
        for layer, block in enumerate(model.decoder.blocks):
            new[f"cross_k{layer}"], new[f"cross_v{layer}"] = self.decoder.cross_keys_values(
                block.cross_attn, features
            )
            # Rows at different positions attend over slots others have filled and they have
            # not yet: masked out, but a masked 0 times uninitialised NaN is still NaN, so zeros.
            new[f"keys{layer}"] = features.new_zeros(count, capacity, n_state)
            new[f"values{layer}"] = features.new_zeros(count, capacity, n_state)
        # one column past the context: rows that are done keep writing end-of-text there
        tokens = torch.full((count, self.n_ctx + 2), eot, dtype=torch.long, device=device)
        for row, row_initial in enumerate(initial):
            tokens[row, : len(row_initial)] = torch.tensor(row_initial, device=device)
        at = torch.arange(count, device=device)
        begin = torch.tensor(begins, device=device)
        new.update(
            tokens=tokens,
            positions=begin,  # where each row writes its next token
            taken=torch.zeros(count, dtype=torch.long, device=device),  # tokens sampled so far
            row_steps=torch.tensor(steps, device=device),  # each row's cap
            sum_logprobs=torch.zeros(count, device=device),
            # each token's log-probability, kept on the device and read back once per row at the end
            token_logprobs=torch.zeros(count, self.sample_len + 1, device=device),
            finished=torch.zeros(count, dtype=torch.bool, device=device),
            last_ts=torch.zeros(count, dtype=torch.bool, device=device),
            penultimate_ts=torch.ones(count, dtype=torch.bool, device=device),
            latest_ts=torch.full((count,), -1, dtype=torch.long, device=device),  # -1: no timestamp yet
        )
        if self.forcing:
            forced_tokens = torch.full((count, self.sample_len), eot, dtype=torch.long, device=device)
            for row, row_tokens in enumerate(forced or []):
                row_tokens = list(row_tokens)[: self.sample_len]
                forced_tokens[row, : len(row_tokens)] = torch.tensor(
                    row_tokens, dtype=torch.long, device=device
                )
            new["forced"] = forced_tokens

        # every row's start at once (shorter ones padded after their end, which the causal
        # mask keeps out of their view); the logits of each row's last token sample its first
        # one, those at its start-of-transcript give no_speech_prob
        states = self.decoder.forward(new, tokens[:, : max(begins)], 0)
        logits = self.decoder.logits(states[at, begin - 1])
        no_speech = [float("nan")] * count
        if tokenizer.no_speech is not None:
            sots = torch.tensor([row.index(tokenizer.sot) for row in initial], device=device)
            no_speech = (
                self.decoder.logits(states[at, sots]).float().softmax(dim=-1)[:, tokenizer.no_speech].tolist()
            )
        logits.masked_fill_(self.rules.first, -float("inf"))
        self._choose(new, logits, first=True)
        deadlines = [self.step_count + row_steps - 1 for row_steps in steps]
        self._place(new, list(tags), begins, no_speech, list(features), deadlines)

    def _place(
        self,
        new: dict[str, Tensor],
        tags: list[object],
        begins: list[int],
        no_speech: list[float],
        features: list[Tensor],
        deadlines: list[int],
    ) -> None:
        """Put admitted rows into free slots, the rest after the last slot."""
        if len(self) == 0:  # a fresh batch (anything left is ended and returned)
            self.rows, self.tags, self.begins, self.no_speech = new, tags, begins, no_speech
            self.features, self.deadlines, self.free = features, deadlines, []
            self.aligned = len(set(begins)) == 1
            self.position = begins[0] + 1
            return
        self.aligned = False
        for name in [name for name in new if name.startswith(("keys", "values"))]:  # the longer cache wins
            have, need = self.rows[name].shape[1], new[name].shape[1]
            if need > have:
                self.rows[name] = F.pad(self.rows[name], (0, 0, 0, need - have))
            elif have > need:
                new[name] = F.pad(new[name], (0, 0, 0, have - need))
        slots, self.free = self.free[: len(tags)], self.free[len(tags) :]
        if slots:
            index = torch.tensor(slots, device=self.rows["tokens"].device)
            for name, value in new.items():
                self.rows[name].index_copy_(0, index, value[: len(slots)])
            for i, slot in enumerate(slots):
                self.tags[slot], self.begins[slot], self.no_speech[slot] = tags[i], begins[i], no_speech[i]
                self.features[slot], self.deadlines[slot] = features[i], deadlines[i]
        rest = len(slots)
        if rest < len(tags):
            for name, value in new.items():
                self.rows[name] = torch.cat([self.rows[name], value[rest:]])
            self.tags += tags[rest:]
            self.begins += begins[rest:]
            self.no_speech += no_speech[rest:]
            self.features += features[rest:]
            self.deadlines += deadlines[rest:]

    @torch.inference_mode()
    def drop(self, tags: Sequence[object]) -> None:
        """Stop decoding these rows (their job was cancelled); no result comes back for them."""
        slots = [slot for slot, tag in enumerate(self.tags) if tag in tags and slot not in self.free]
        if slots:
            self.rows["finished"][torch.tensor(slots, device=self.rows["finished"].device)] = True
            self.free = sorted(self.free + slots)

    def timestamps_reached(self) -> list[tuple[object, int]]:
        """(tag, index) of each row still decoding: its latest timestamp token as an index into
        its window (1 per 20 ms; -1 before any). Timestamps never decrease, so a row at <|12.40|>
        has decoded its window up to 12.4 s; the decode loop's progress counts that."""
        if len(self) == 0:
            return []
        latest = (self.rows["latest_ts"] - self.tokenizer.timestamp_begin).clamp_(min=-1).tolist()
        free = set(self.free)
        return [(tag, index) for slot, (tag, index) in enumerate(zip(self.tags, latest)) if slot not in free]

    def _choose(self, rows: dict[str, Tensor], logits: Tensor, first: bool) -> None:
        """The rest of whisper's logit filters, the token each row takes, and its bookkeeping."""
        eot = self.tokenizer.eot
        logprobs = self.rules.apply(rows, logits, first)
        taken, finished = rows["taken"], rows["finished"]
        if self.forcing:
            next_tokens = rows["forced"].gather(1, taken.clamp(max=self.sample_len - 1)[:, None])[:, 0]
        else:
            next_tokens = logits.argmax(dim=-1)
        if logprobs is None:
            logprobs = F.log_softmax(logits.float(), dim=-1)
        current = logprobs.gather(1, next_tokens[:, None])[:, 0]
        rows["sum_logprobs"] += current * ~finished
        rows["token_logprobs"].scatter_(1, taken[:, None], current[:, None])  # ended rows: past their tokens
        next_tokens = torch.where(finished, eot, next_tokens)
        rows["tokens"].scatter_(1, rows["positions"][:, None], next_tokens[:, None])
        rows["positions"] = (rows["positions"] + 1).clamp_(max=self.n_ctx + 1)
        rows["taken"] = taken = taken + ~finished
        is_ts = next_tokens >= self.tokenizer.timestamp_begin
        rows["penultimate_ts"] = torch.ones_like(is_ts) if first else rows["last_ts"]
        rows["last_ts"] = is_ts
        rows["latest_ts"] = torch.where(is_ts, next_tokens, rows["latest_ts"])
        rows["finished"] = finished | (next_tokens == eot) | (taken >= rows["row_steps"])

    # -- token steps -------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[object, TokenDecodingResult]]:
        """One token for every row; returns (tag, result) of the rows that ended. On CUDA
        the host looks at which rows ended only every few steps (each look stalls the GPU),
        and whenever a row reaches its cap."""
        if self.free and len(self.free) * COMPACT_FRACTION >= len(self.tags):
            self._compact()
        if len(self) == 0:
            return []
        rows = self.rows
        capacity = rows["keys0"].shape[1]
        if self.aligned and self.position <= capacity:
            p = self.position
            x = self.decoder.forward(rows, rows["tokens"][:, p - 1 : p], p - 1)
            self.position += 1
        else:
            self.aligned = False
            # rows that are done feed their end-of-text from a position still in range
            at = (rows["positions"] - 1).clamp_(max=capacity - 1)
            x = self.decoder.forward(rows, rows["tokens"].gather(1, at[:, None]), 0, at)
        self._choose(rows, self.decoder.logits(x[:, -1]), first=False)
        self.step_count += 1
        self._since_look += 1
        if self.host or self._since_look >= CUDA_SYNC_EVERY or self.step_count >= self._earliest_deadline():
            return self._collect()
        return []

    def _earliest_deadline(self) -> int:
        """The step by which some row still decoding has surely reached its token cap."""
        free = set(self.free)
        return min(d for slot, d in enumerate(self.deadlines) if slot not in free)

    def _collect(self) -> list[tuple[object, TokenDecodingResult]]:
        """The rows that ended since the last look, as results; their slots become free."""
        self._since_look = 0
        ended = [slot for slot in self.rows["finished"].nonzero()[:, 0].tolist() if slot not in self.free]
        results = []
        for slot in ended:
            begin, taken = self.begins[slot], int(self.rows["taken"][slot])
            results.append(
                (
                    self.tags[slot],
                    self._result(
                        self.features[slot],
                        self.rows["tokens"][slot, begin : begin + taken].tolist(),
                        float(self.rows["sum_logprobs"][slot]),
                        self.no_speech[slot],
                        self.rows["token_logprobs"][slot],
                    ),
                )
            )
        self.free = sorted(self.free + ended)
        return results

    def _compact(self) -> None:
        """Drop the free slots: the live rows past the last live count move into the free
        slots below it, and every per-row tensor keeps its leading rows (a view, no copy).
        Copying every row instead (index_select) moved all the cross-attention keys and values
        each time: 1.4 s of an 11-minute run on CPU, most of it as rows ended near its end."""
        live = len(self.tags) - len(self.free)
        holes = [slot for slot in self.free if slot < live]
        free = set(self.free)
        movers = [slot for slot in range(live, len(self.tags)) if slot not in free]
        if holes:
            device = self.rows["tokens"].device
            source, target = (
                torch.tensor(slots, dtype=torch.long, device=device) for slots in (movers, holes)
            )
            for value in self.rows.values():
                value.index_copy_(0, target, value.index_select(0, source))
            for name in self.ROW_LISTS:
                values = getattr(self, name)
                for hole, mover in zip(holes, movers):
                    values[hole] = values[mover]
        self.rows = {name: value[:live] for name, value in self.rows.items()}
        for name in self.ROW_LISTS:
            setattr(self, name, getattr(self, name)[:live])
        self.free = []

    def _result(
        self,
        features: Tensor,
        sampled: list[int],
        sum_logprob: float,
        no_speech_prob: float,
        row_logprobs: Tensor,
    ) -> TokenDecodingResult:
        eot = self.tokenizer.eot
        tokens = sampled[: sampled.index(eot)] if eot in sampled else sampled
        text = self.tokenizer.decode(tokens).strip()
        return TokenDecodingResult(
            audio_features=features,
            language=self.options.language,
            tokens=tokens,
            text=text,
            avg_logprob=sum_logprob / (len(tokens) + 1),
            no_speech_prob=no_speech_prob,
            temperature=self.options.temperature,
            compression_ratio=compression_ratio(text),
            token_logprobs=row_logprobs[: len(tokens)].tolist(),
        )
