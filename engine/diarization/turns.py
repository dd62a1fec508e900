"""From labelled windows to speaker turns: who speaks from when to when.

Inside a speech region each 50 ms frame goes to the speaker its covering windows vote for,
a window's vote weighing more near its centre (where it hears the frame in context on both
sides); a region with a single window (shorter than one) is that window's speaker throughout.
A change of speaker inside a region that lasts less than `MIN_TURN_S` is smoothed away,
into the longer neighbour: with windows 1.5 s long such a run is more often a window that
straddles a change than a turn of its own. A short *region* is never smoothed away: a 0.4 s
"Hello?" between two pauses keeps the speaker its own window found. Last, turns of one
speaker separated by less than `MERGE_GAP_S` of silence become one turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.diarization.windows import Window

SAMPLE_RATE = 16000
FRAME_S = 0.05  # resolution of the turns' edges inside a region
MIN_TURN_S = 0.6
MERGE_GAP_S = 0.5


@dataclass(frozen=True)
class SpeakerTurn:
    start: float  # seconds from the start of the recording
    end: float
    speaker: int  # the cluster: 0, 1, ... (names and letters are given later, by assign_speakers)


def turns_from_windows(
    regions: Sequence[tuple[int, int]], windows: Sequence[Window], labels: np.ndarray
) -> list[SpeakerTurn]:
    """Turns in time order; `labels[i]` is the speaker of `windows[i]`."""
    speakers = int(labels.max()) + 1 if len(labels) else 0
    by_region: dict = {}
    for window, label in zip(windows, labels):
        by_region.setdefault(window.region, []).append((window, int(label)))
    turns: list[SpeakerTurn] = []
    for index, (start, end) in enumerate(regions):
        voted = by_region.get(index)
        if voted:
            turns.extend(_region_turns(start, end, voted, speakers))
    return merge_gaps(turns)


def _region_turns(start: int, end: int, voted: list[tuple[Window, int]], speakers: int) -> list[SpeakerTurn]:
    if len({label for _, label in voted}) == 1:
        return [SpeakerTurn(start / SAMPLE_RATE, end / SAMPLE_RATE, voted[0][1])]
    frame = int(FRAME_S * SAMPLE_RATE)
    centres = np.arange(start, end, frame) + frame / 2
    votes = np.zeros((len(centres), speakers))
    for window, label in voted:
        half = (window.end - window.start) / 2
        weight = 1.0 - np.abs(centres - (window.start + half)) / (half + frame)
        votes[:, label] += np.where((centres >= window.start) & (centres < window.end), weight, 0.0)
    frames = votes.argmax(1)
    runs = _smooth(_runs(frames), int(round(MIN_TURN_S / FRAME_S)))
    edges = [start + first * frame for _, first, _ in runs] + [end]
    return [
        SpeakerTurn(edges[i] / SAMPLE_RATE, edges[i + 1] / SAMPLE_RATE, label)
        for i, (label, _, _) in enumerate(runs)
    ]


def _runs(frames: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, first frame, frame count) of each run of equal labels."""
    runs = []
    for index, label in enumerate(frames.tolist()):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((label, index, 1))
    return runs


def _smooth(runs: list[tuple[int, int, int]], shortest: int) -> list[tuple[int, int, int]]:
    """Merge the shortest run under `shortest` frames into its longer neighbour until none is left."""
    runs = list(runs)
    while len(runs) > 1:
        index = min(range(len(runs)), key=lambda i: runs[i][2])
        if runs[index][2] >= shortest:
            break
        neighbours = [i for i in (index - 1, index + 1) if 0 <= i < len(runs)]
        into = max(neighbours, key=lambda i: runs[i][2])
        label = runs[into][0]
        first = min(runs[index][1], runs[into][1])
        runs[min(index, into)] = (label, first, runs[index][2] + runs[into][2])
        del runs[max(index, into)]
        runs = _join_equal(runs)
    return runs


def _join_equal(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    joined: list[tuple[int, int, int]] = []
    for run in runs:
        if joined and joined[-1][0] == run[0]:
            joined[-1] = (run[0], joined[-1][1], joined[-1][2] + run[2])
        else:
            joined.append(run)
    return joined


def merge_gaps(turns: Sequence[SpeakerTurn], gap_s: float = MERGE_GAP_S) -> list[SpeakerTurn]:
    merged: list[SpeakerTurn] = []
    for turn in turns:
        if merged and merged[-1].speaker == turn.speaker and turn.start - merged[-1].end < gap_s:
            merged[-1] = SpeakerTurn(merged[-1].start, max(merged[-1].end, turn.end), turn.speaker)
        else:
            merged.append(turn)
    return merged
