"""A running decode for the rows GreedyDecode does not take: each step decodes whole windows.

The decode loop (engine.decoding.decode_loop) runs every row in a running decode that rows
join and leave between steps. GreedyDecode, a token at a time, is greedy only; a job whose
first temperature is above 0 samples its windows, so its rows go to a WholeDecode instead:
the same interface, but one step decodes every row that joined since the last one to its
end, through `engine.decoding.fast_decode.decode_rows` (whisper.decode, row by row, where
it samples). The loop's scheduling, cancellation, out-of-memory handling and its
`before_step` hook are the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper

from engine.decoding.fast_decode import decode_rows


class WholeDecode:
    """Rows admitted wait for the next `step`, which decodes them all to their ends."""

    # Rows end at every step, so progress moves as windows end; there is nothing to look at
    # on the device between steps (GreedyDecode's `host`: looking costs nothing).
    host = True
    # (model, log-mels, options, one prompt per row) -> one result per row; the bench puts
    # stock whisper.decode here (bench/stock_decode.py)
    decode_rows = staticmethod(decode_rows)

    def __init__(self, model: Whisper, options: DecodingOptions):
        self.model, self.options = model, options
        self.step_count = 0
        self._mels: list[torch.Tensor] = []
        self._prompts: list[Sequence[int] | None] = []
        self._tags: list[object] = []

    def __len__(self) -> int:
        return len(self._tags)

    def live_tags(self) -> list[object]:
        return list(self._tags)

    def admit(
        self, mel: torch.Tensor, prompts: Sequence[Sequence[int] | None], tags: Sequence[object]
    ) -> None:
        if len(prompts) != len(mel) or len(tags) != len(mel):
            raise ValueError(f"{len(mel)} rows but {len(prompts)} prompts and {len(tags)} tags")
        self._mels.extend(mel)
        self._prompts.extend(prompts)
        self._tags.extend(tags)

    def drop(self, tags: Sequence[object]) -> None:
        """Forget these rows (their job was cancelled); no result comes back for them."""
        keep = [i for i, tag in enumerate(self._tags) if tag not in tags]
        self._mels = [self._mels[i] for i in keep]
        self._prompts = [self._prompts[i] for i in keep]
        self._tags = [self._tags[i] for i in keep]

    def timestamps_reached(self) -> list[tuple[object, int]]:
        return []  # no row is part-way through its window between steps

    def step(self) -> list[tuple[object, DecodingResult]]:
        """Every row decoded to its end: (tag, result) of each."""
        if not self._tags:
            return []
        mels, prompts, tags = torch.stack(self._mels), self._prompts, self._tags
        self._mels, self._prompts, self._tags = [], [], []
        self.step_count += 1
        return list(zip(tags, self.decode_rows(self.model, mels, self.options, prompts)))
