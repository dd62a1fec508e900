"""whisper's logit filters, as a few tensor operations over every row of a batch at once.

    rules = LogitRules(DecodingTask(model, options), vocab, device, host=True)
    logits.masked_fill_(rules.first, -inf)            # the first sampled token's rules
    logprobs = rules.apply(rows, logits, first=False)  # every later step's; None: compute them anew

`whisper.decode` applies SuppressTokens, SuppressBlank and ApplyTimestampRules by looping in
Python over the rows with a host copy of each row's tokens; here the same rules read the few
per-row facts they need (was the last token a timestamp, the one before it, the latest
timestamp) from `rows`, which GreedyDecode keeps on the device. The masks and comparisons are
whisper's own, so the tokens chosen are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.decoding import ApplyTimestampRules, DecodingTask, SuppressBlank, SuppressTokens


class LogitRules:
    """The logit filters of one DecodingTask. `host`: reading a value back costs nothing (CPU),
    so work no row needs is skipped after a look."""

    def __init__(self, task: DecodingTask, vocab: int, device: torch.device, host: bool):
        self.tokenizer, self.host = task.tokenizer, host
        self.suppress: list[int] = []
        self.blank: list[int] | None = None
        self.timestamps: ApplyTimestampRules | None = None
        for rule in task.logit_filters:
            if isinstance(rule, SuppressBlank):
                self.blank = self.tokenizer.encode(" ") + [self.tokenizer.eot]
            elif isinstance(rule, SuppressTokens):
                self.suppress = list(rule.suppress_tokens)
            elif isinstance(rule, ApplyTimestampRules):
                self.timestamps = rule
            else:  # a rule this module does not know: not ours to guess
                raise NotImplementedError(type(rule).__name__)
        self.ts_columns = torch.arange(self.tokenizer.timestamp_begin, vocab, device=device)
        self.always, self.first = self._static_masks(vocab, device)

    def apply(self, rows: dict[str, Tensor], logits: Tensor, first: bool) -> Tensor | None:
        """The rules applied to `logits` in place (`first`: the first sampled token, whose fixed
        rules the caller applied with `self.first`); returns the log-probs of the filtered
        logits when no later rule changed them, else None."""
        if not first:
            logits.index_fill_(1, self.always, -float("inf"))
        if self.timestamps is None:
            return None
        if not first:
            self._timestamp_rules(logits, rows)
        logprobs, forced = self._prefer_timestamps(logits)
        if not self.host or bool(forced.any()):  # forcing changed the logits: new log-probs
            return None
        return logprobs

    def _static_masks(self, vocab: int, device: torch.device) -> tuple[Tensor, Tensor]:
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
                first[tb + rules.max_initial_timestamp_index + 1 :] = True
        return torch.tensor(sorted(set(always)), dtype=torch.long, device=device), first

    def _timestamp_rules(self, logits: Tensor, rows: dict[str, Tensor]) -> None:
        """ApplyTimestampRules' per-row part, for every row at once (from the second token on).
        Only the timestamp slice and the text slice of the logits are touched."""
        tb, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        last, penultimate, latest = rows["last_ts"], rows["penultimate_ts"], rows["latest_ts"]
        opened = last & ~penultimate  # a segment's first timestamp: its closing one must follow
        # timestamps come in pairs: after an opening one no text, after a pair no timestamp
        if not self.host or bool(opened.any()):  # on CPU, skip a pass over 50k columns when no row needs it
            logits[:, :eot].masked_fill_(opened[:, None], -float("inf"))
        # timestamps never decrease, and a segment has nonzero length (latest = -1: none yet)
        bound = torch.where(opened, latest, latest + 1)
        closed_pair = (last & penultimate)[:, None]
        logits[:, tb:].masked_fill_(closed_pair | (self.ts_columns < bound[:, None]), -float("inf"))

    def _prefer_timestamps(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Rows whose timestamps together outweigh every text token may only sample a
        timestamp. Returns the log-probs before that, and which rows it forced."""
        tb = self.tokenizer.timestamp_begin
        logprobs = F.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[:, tb:].logsumexp(dim=-1)
        max_text_logprob = logprobs[:, :tb].max(dim=-1).values
        forced = timestamp_logprob > max_text_logprob
        logits[:, :tb].masked_fill_(forced[:, None], -float("inf"))
        return logprobs, forced
