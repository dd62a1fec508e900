"""Diarization error rate, as NIST's md-eval scores it, on a 10 ms grid.

    DER = (missed speech + false alarm + speaker confusion) / reference speech

Every 10 ms frame has a set of reference speakers and a set of hypothesis speakers; overlap
is scored (two reference speakers at once count twice, and a hypothesis that gives one of
them misses the other). Hypothesis speakers are mapped one-to-one onto reference speakers by
the assignment that maximises the time they share (Hungarian); then per frame, with R
reference and H hypothesis speakers, C of them mapped pairs present together:

    missed = max(0, R - H)    false alarm = max(0, H - R)    confusion = min(R, H) - C

A collar of `collar` seconds on *each* side of every reference boundary is not scored
(md-eval's `-c 0.25`; pyannote.metrics' `collar=0.5` is the same, as it splits its collar in
two): reference edges are a matter of judgement to within a syllable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

STEP_S = 0.01


@dataclass(frozen=True)
class DerScore:
    der: float  # percent
    missed: float  # percent of reference speech
    false_alarm: float
    confusion: float
    reference_s: float  # scored reference speech, speakers counted apart where they overlap
    mapping: dict[str, str]  # hypothesis speaker -> the reference speaker it was matched to


def _grid(spans: Iterable[tuple[float, float, str]], frames: int) -> tuple[np.ndarray, list]:
    spans = list(spans)
    names = sorted({str(speaker) for _, _, speaker in spans})
    grid = np.zeros((frames, len(names)), dtype=bool)
    for start, end, speaker in spans:
        grid[int(round(start / STEP_S)) : int(round(end / STEP_S)), names.index(str(speaker))] = True
    return grid, names


def der(
    reference: Sequence[tuple[float, float, str]],
    hypothesis: Sequence[tuple[float, float, str]],
    collar: float = 0.25,
) -> DerScore:
    """Spans are (start s, end s, speaker); either list may hold overlapping spans."""
    end = max([e for _, e, _ in reference] + [e for _, e, _ in hypothesis] + [0.0])
    frames = int(np.ceil(end / STEP_S)) + 1
    ref, ref_names = _grid(reference, frames)
    hyp, hyp_names = _grid(hypothesis, frames)
    scored = np.ones(frames, dtype=bool)
    reach = int(round(collar / STEP_S))
    for start, stop, _ in reference:
        for edge in (int(round(start / STEP_S)), int(round(stop / STEP_S))):
            scored[max(0, edge - reach) : edge + reach] = False
    ref, hyp = ref[scored], hyp[scored]
    shared = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # frames each (reference, hypothesis) pair share
    rows, columns = linear_sum_assignment(-shared) if shared.size else ([], [])
    correct = int(sum(shared[r, c] for r, c in zip(rows, columns)))
    r_count, h_count = ref.sum(1), hyp.sum(1)
    total = int(r_count.sum())
    missed = int(np.maximum(0, r_count - h_count).sum())
    false_alarm = int(np.maximum(0, h_count - r_count).sum())
    confusion = int(np.minimum(r_count, h_count).sum()) - correct

    def share(count: int) -> float:
        return 100.0 * count / total if total else 0.0

    return DerScore(
        share(missed + false_alarm + confusion),
        share(missed),
        share(false_alarm),
        share(confusion),
        total * STEP_S,
        {hyp_names[c]: ref_names[r] for r, c in zip(rows, columns)},
    )
