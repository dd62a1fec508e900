"""JobOptions: what a user asks of one job, however it arrived.

The page handler, the OpenAI form and the jobs API each build one at their boundary; the job
manager stores it with the job as JSON (`to_json` / `from_json`) and the engine decodes by it.
Building one checks what can be checked without the server's configuration (a known task and
language, temperatures and token cap in range) and raises InvalidRequest naming the option;
`Engine.prepare` then names the model by its public id and checks what that model can do.
A field left as None takes the server's configured value when the job runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from engine.errors import InvalidRequest
from engine.languages import normalise_language

TASKS = ("transcribe", "translate")
MAX_NEW_TOKENS = 448  # whisper's decoder context: a window cannot hold more


@dataclass(frozen=True)
class JobOptions:
    model: str | None = None  # a model id or an OpenAI alias; None = the default (Engine.prepare: its id)
    language: str | None = None  # a code or an English name, kept as the code; None = detect it
    task: str | None = None  # "transcribe" or "translate" (into English); None = the config's
    initial_prompt: str | None = None  # context text for every window: names, spelling, style
    word_timestamps: bool = False  # per-word times (cross-attention alignment; slower)
    # None = the config's fallback ladder; one value = sample at exactly that temperature
    temperature: tuple[float, ...] | None = None
    max_new_tokens: int | None = None  # cap on the tokens sampled per window; None = the config's
    vad: bool | None = None  # decode only what voice activity detection calls speech; None = the config's
    logprobs: bool = False  # keep each text token's log-probability (the API's include[]=logprobs)

    def __post_init__(self) -> None:
        if self.language is not None:
            try:
                object.__setattr__(self, "language", normalise_language(self.language))
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
        if self.task is not None and self.task not in TASKS:
            raise InvalidRequest(f"task: must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.temperature is not None:
            object.__setattr__(self, "temperature", _temperatures(self.temperature))
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InvalidRequest(f"max_new_tokens: must be between 1 and {MAX_NEW_TOKENS}")
        object.__setattr__(self, "initial_prompt", self.initial_prompt or None)

    def to_json(self) -> dict[str, Any]:
        """The options as the job's row stores them: only what differs from the defaults, so a
        row reads as what the user asked for."""
        defaults = JobOptions()
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in asdict(self).items()
            if value != getattr(defaults, name)
        }

    @classmethod
    def of(cls, options: JobOptions | None, fields: dict[str, Any]) -> JobOptions:
        """What a `submit(audio, options=None, **fields)` was given: the options, or ones built
        from the fields (keywords for short); both at once is a mistake."""
        if options is not None and fields:
            raise TypeError("pass JobOptions or its fields as keywords, not both")
        return options if options is not None else cls(**fields)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobOptions:
        """A stored row's options. Keys this version does not know (a newer version's, after a
        downgrade) are ignored rather than failing the job."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


def _temperatures(value: float | Sequence[float]) -> tuple[float, ...]:
    temperatures = (float(value),) if isinstance(value, (int, float)) else tuple(float(t) for t in value)
    if not temperatures or any(not 0 <= t <= 2 for t in temperatures):
        raise InvalidRequest("temperature: must be between 0 and 2")
    return temperatures
