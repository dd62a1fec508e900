"""Word error rate, as the Whisper paper reports it: both texts through whisper's
`EnglishTextNormalizer` (case, punctuation, numbers and spellings made uniform, so "Mr."
against "Mister" or "1963" against "nineteen sixty-three" is not an error), then jiwer's WER.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _normaliser():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    return _normaliser()(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER in percent of the reference's words (substitutions + deletions + insertions)."""
    import jiwer

    truth, guess = normalise(reference), normalise(hypothesis)
    if not truth.split():
        raise ValueError("the reference has no words after normalisation")
    return 100.0 * jiwer.wer(truth, guess)  # an empty transcript: every word deleted, 100 %
