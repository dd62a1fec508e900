"""What a transcription produces: plain dataclasses shared by every engine module and the UI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace


@dataclass
class Word:
    word: str  # the word with its leading space, as whisper emits it
    start: float  # seconds from the start of the recording
    end: float
    probability: float
    speaker: str | None = None  # who says it: "A", "B", ... or a known speaker's name (diarization only)


@dataclass
class TokenLogprob:
    """One text token as OpenAI's `logprobs` give it."""

    token: str  # the token's text (a piece of a character when one is split over tokens: see bytes)
    logprob: float  # natural log of its probability when it was chosen
    bytes: list[int]  # its UTF-8 bytes


@dataclass
class Segment:
    id: int
    start: float  # seconds from the start of the recording (absolute, not window-relative)
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)  # text tokens, no timestamp/special tokens
    temperature: float = 0.0  # temperature of the decode this segment came from
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None  # only with word timestamps
    # mel frame (10 ms) of the recording where the window it came from starts, as in whisper's output
    seek: int = 0
    # per text token, only when asked (TranscribeOptions.logprobs); not in whisper's files
    logprobs: list[TokenLogprob] | None = None
    speaker: str | None = None  # who speaks it: "A", "B", ... or a known speaker's name (diarization only)


@dataclass
class TranscriptionResult:
    segments: list[Segment]
    language: str  # language code used for decoding (given or detected)
    duration: float  # seconds of audio in the recording
    task: str = "transcribe"
    model: str = ""  # model name or checkpoint path that produced it
    windows: int = 0  # windows decoded (silent windows skipped are not counted)
    tokens_decoded: int = 0  # tokens sampled over all windows, timestamps included
    fallbacks: int = 0  # hotter re-decodes of windows that failed a guard (whisper's temperature fallback)
    processing_s: float = 0.0  # wall time from start of work to result

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()

    def to_dict(self) -> dict:
        """The shape openai-whisper's `transcribe()` returns; whisper's writers take it."""
        return {
            "text": self.text,
            # logprobs are the API's, not whisper's: its writers' files stay as whisper writes them;
            # so do files without diarization (no speaker keys)
            "segments": [_whisper_segment(s) for s in self.segments],
            "language": self.language,
            "duration": self.duration,
            "task": self.task,
            "model": self.model,
        }

    @property
    def speakers(self) -> list[str]:
        """The speakers' labels in order of first speech ([] without diarization)."""
        return list(dict.fromkeys(s.speaker for s in self.segments if s.speaker))

    def with_speaker_names(self, names: Mapping[str, str]) -> TranscriptionResult:
        """This result with speakers renamed ({"A": "Ada"}) on segments and words; other labels,
        and every word and time, unchanged. Names are the user's (the page's or the jobs API's
        rename); the stored result keeps the labels diarization gave."""
        names = {old: new.strip() for old, new in names.items() if new and new.strip()}
        if not names:
            return self

        def rename(speaker: str | None) -> str | None:
            return names.get(speaker, speaker) if speaker is not None else None

        segments = [
            replace(
                segment,
                speaker=rename(segment.speaker),
                words=None
                if segment.words is None
                else [replace(word, speaker=rename(word.speaker)) for word in segment.words],
            )
            for segment in self.segments
        ]
        return replace(self, segments=segments)


def _whisper_segment(segment: Segment) -> dict:
    """A segment as whisper's dict, plus `speaker` (on it and its words) where diarization set it."""
    fields = {k: v for k, v in asdict(segment).items() if k != "logprobs"}
    if fields["speaker"] is None:
        del fields["speaker"]
    for word in fields["words"] or ():
        if word["speaker"] is None:
            del word["speaker"]
    return fields
